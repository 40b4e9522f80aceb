//! Write sessions with many operations on one open file: blocks written in order are built
//! in memory and uploaded from there, everything else is staged on disk, and a block moves
//! from one to the other when it is written out of order, rewritten after its upload, cut
//! by a truncate or read back. Random sequences of writes, truncates, reads and commits on
//! one descriptor must read as a plain byte vector does, before and after the close; a small
//! write-buffer budget makes both paths run in one session.
//!
//! Reproducible: proptest's seed is fixed by the persistence file; `PROPTEST_CASES` for more.

mod common;

use std::sync::Arc;

use drive::data::{
    BlockCodec, BlockStore, ChunkStore, FaultyChunkStore, MemoryChunkStore, StoreFault, StoreOp,
};
use drive::fs::{Caller, DriveFs, FsConfig, FsErrorKind, OpenFlags};
use drive::model::{MIN_BLOCK_SIZE, SetAttr, View, WorkspaceKind, WorkspaceSpec};
use drive::{MemMetaStore, MetaStore};
use proptest::prelude::*;

type Fs = DriveFs<BlockStore<MemMetaStore>, MemMetaStore>;

const BS: u64 = MIN_BLOCK_SIZE as u64;

#[derive(Debug, Clone)]
enum Op {
    /// Writes at the current end of the file (the in-order case).
    Append {
        len: usize,
        seed: u8,
    },
    /// Writes at an offset of its own.
    WriteAt {
        offset: u64,
        len: usize,
        seed: u8,
    },
    Truncate {
        size: u64,
    },
    Read {
        offset: u64,
        len: u64,
    },
    /// fsync: commits what is written so far; the session goes on.
    Commit,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let len = prop_oneof![
        Just(1usize),
        Just(700),
        Just(4096),
        Just(BS as usize),
        Just(2 * BS as usize + 5),
        1usize..20_000
    ];
    let offset = prop_oneof![Just(0u64), Just(BS - 10), Just(BS), Just(3 * BS), 0u64..4 * BS];
    prop_oneof![
        4 => (len.clone(), any::<u8>()).prop_map(|(len, seed)| Op::Append { len, seed }),
        2 => (offset.clone(), len, any::<u8>()).prop_map(|(offset, len, seed)| Op::WriteAt { offset, len, seed }),
        1 => offset.clone().prop_map(|size| Op::Truncate { size }),
        2 => (offset, 1u64..3 * BS).prop_map(|(offset, len)| Op::Read { offset, len }),
        1 => Just(Op::Commit),
    ]
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn rw() -> OpenFlags {
    OpenFlags {
        read: true,
        write: true,
        ..OpenFlags::default()
    }
}

struct Rig {
    fs: Fs,
    chunks: Arc<FaultyChunkStore>,
    root: u64,
    _tmp: tempfile::TempDir,
}

/// A mount of a fresh workspace with 64 KiB blocks and room for `buffers` blocks in memory.
async fn rig(buffers: u64) -> Rig {
    let meta = MemMetaStore::new();
    let mut spec = WorkspaceSpec::new("sessions", WorkspaceKind::User);
    spec.block_size = MIN_BLOCK_SIZE;
    let ws = meta
        .create_workspace(&common::actor(), &spec)
        .await
        .expect("workspace");
    let chunks = Arc::new(FaultyChunkStore::new(Arc::new(MemoryChunkStore::new())));
    let store: Arc<dyn ChunkStore> = chunks.clone();
    let blocks = BlockStore::new(meta.clone(), store, BlockCodec::plaintext(), None);
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut cfg = FsConfig::new(View::Live, ws.root, tmp.path().join("staging"));
    cfg.write_buffer_bytes = buffers * BS;
    let root = ws.root.0;
    let fs = DriveFs::new(meta, Arc::new(blocks), ws, cfg).expect("mount");
    Rig {
        fs,
        chunks,
        root,
        _tmp: tmp,
    }
}

impl Rig {
    /// Creates `name` in the workspace root, open for reading and writing: (inode, handle).
    async fn create(&self, name: &[u8]) -> (u64, u64) {
        let created = self
            .fs
            .create(self.root, name, 0o644, rw(), Caller::default())
            .await
            .expect("create");
        (created.attr.ino.0, created.fh)
    }
}

async fn read(fs: &Fs, fh: u64, offset: u64, len: u64) -> Vec<u8> {
    fs.read(fh, offset, len as u32).await.expect("read").to_vec()
}

fn expected(model: &[u8], offset: u64, len: u64) -> &[u8] {
    let start = (offset as usize).min(model.len());
    let end = (offset.saturating_add(len) as usize).min(model.len());
    &model[start..end]
}

async fn run(ops: Vec<Op>, buffers: u64) -> Result<(), TestCaseError> {
    let rig = rig(buffers).await;
    let fs = &rig.fs;
    let (ino, fh) = rig.create(b"take.0001.exr").await;
    let mut model: Vec<u8> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Append { len, seed } => {
                let data = bytes(*len, *seed);
                fs.write(fh, model.len() as u64, &data).await.expect("append");
                model.extend_from_slice(&data);
            }
            Op::WriteAt { offset, len, seed } => {
                let data = bytes(*len, *seed);
                fs.write(fh, *offset, &data).await.expect("write");
                let end = *offset as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[*offset as usize..end].copy_from_slice(&data);
            }
            Op::Truncate { size } => {
                let change = SetAttr {
                    size: Some(*size),
                    ..SetAttr::default()
                };
                fs.setattr(ino, change, Caller::default())
                    .await
                    .expect("truncate");
                model.resize(*size as usize, 0);
            }
            Op::Read { offset, len } => {
                let got = read(fs, fh, *offset, *len).await;
                prop_assert_eq!(
                    &got[..],
                    expected(&model, *offset, *len),
                    "step {}: read of {} at {} in the open session",
                    step,
                    len,
                    offset
                );
            }
            Op::Commit => fs.fsync(fh, Caller::default()).await.expect("fsync"),
        }
        prop_assert_eq!(
            fs.getattr(ino).await.expect("getattr").size,
            model.len() as u64,
            "step {}: size",
            step
        );
    }
    fs.flush(fh, Caller::default()).await.expect("close");
    fs.release(fh, Caller::default()).await.expect("release");
    let stored = common::read_file(fs, ino).await.expect("read back");
    prop_assert_eq!(stored.len(), model.len(), "committed size");
    prop_assert!(stored == model, "committed bytes differ from the written ones");
    prop_assert!(rig.chunks.injected() == 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Room for 2 blocks in memory: long appends spill to staging while earlier blocks upload.
    #[test]
    fn one_open_file_reads_as_written_through_memory_and_staging(ops in proptest::collection::vec(op_strategy(), 1..24)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops, 2))?;
    }

    /// No room in memory: every block is staged, as before write buffers existed.
    #[test]
    fn one_open_file_reads_as_written_through_staging_only(ops in proptest::collection::vec(op_strategy(), 1..12)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops, 0))?;
    }
}

/// An upload from memory that fails loses bytes no staging file holds: the close must say so,
/// and the file must read as its last commit, not as a mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_from_memory_fails_the_close_and_keeps_the_committed_content() {
    let rig = rig(8).await;
    let fs = &rig.fs;
    let (ino, fh) = rig.create(b"render.mov").await;
    let first = bytes(BS as usize + 100, 7);
    fs.write(fh, 0, &first).await.expect("write");
    fs.flush(fh, Caller::default()).await.expect("first close");

    rig.chunks.set(StoreOp::Put, StoreFault::Unavailable);
    // Appends past the committed end: built in memory, full blocks uploaded at once.
    let more = bytes(3 * BS as usize, 9);
    let mut failed_write = None;
    for (i, piece) in more.chunks(4096).enumerate() {
        if let Err(e) = fs.write(fh, first.len() as u64 + (i * 4096) as u64, piece).await {
            failed_write = Some(e.kind());
            break;
        }
    }
    let closed = fs.flush(fh, Caller::default()).await;
    assert!(
        failed_write.is_some() || closed.is_err(),
        "bytes whose upload failed were acknowledged by the close"
    );
    assert_eq!(closed.map_err(|e| e.kind()).err(), Some(FsErrorKind::Io));
    let _ = fs.release(fh, Caller::default()).await;
    rig.chunks.clear();
    assert_eq!(
        common::read_file(fs, ino).await.expect("read"),
        first,
        "not the last commit"
    );
}

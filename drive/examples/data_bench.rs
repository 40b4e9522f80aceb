//! Block data path benchmark: write, cold read (from the S3 server) and warm read (from the
//! node cache) through `drive::fs`, next to copying the same bytes between local files, and
//! the CPU cost of hashing + encryption per GB. Rounds alternate A B A B.
//!
//!     cargo run --release -p drive --example data_bench [-- SIZE_MIB [ROUNDS]]
//!
//! Starts its own PostgreSQL and S3 server (s3s-fs on 127.0.0.1); data lives in temp dirs.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use drive::cache::{BlockCache, CacheConfig};
use drive::data::{BlockCodec, BlockStore, DataKey, Kek, S3ChunkStore, S3Config, S3Credentials, codec_for};
use drive::fs::{Caller, DriveFs, FsConfig, OpenFlags, ROOT_INO};
use drive::model::{Actor, View, WorkspaceKind, WorkspaceSpec};
use drive::{MetaConfig, PgMetaStore};
use drive_testkit::pg::PgServer;
use drive_testkit::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use rand::RngCore as _;

const MIB: usize = 1 << 20;

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / MIB as f64 / secs
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    drive_testkit::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    let size_mib: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2);
    let size = size_mib * MIB;
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);

    let pg = PgServer::start()?;
    let db = pg.create_database().await?;
    let meta = PgMetaStore::connect(&MetaConfig::new(pg.url(&db))).await?;
    let server = S3Server::start()?;
    server.create_bucket("bench")?;
    let mut s3 = S3Config::new("bench").with_endpoint(server.endpoint());
    s3.credentials = Some(S3Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    });
    let store: Arc<dyn drive::data::ChunkStore> = Arc::new(S3ChunkStore::connect(&s3).await);
    let tmp = tempfile::tempdir()?;
    let caller = Caller::default();

    println!("data path benchmark: {size_mib} MiB per run, {rounds} rounds (A B A B)");
    println!(
        "{:<8} {:<11} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "round", "mode", "write", "cold", "warm", "local cp", "warm/cp"
    );
    for round in 0..rounds {
        for encrypted in [false, true] {
            let kek = Kek::generate();
            let mut spec = WorkspaceSpec::new(format!("bench-{round}-{encrypted}"), WorkspaceKind::Team);
            if encrypted {
                spec.wrapped_key = Some(DataKey::generate().wrap(&kek));
            }
            let ws = meta.create_workspace(&Actor::system("bench"), &spec).await?;
            let codec = codec_for(&ws, Some(&kek))?;
            let new_fs = |tag: &str| -> anyhow::Result<(DriveFs<BlockStore>, BlockStore)> {
                let mut cache = CacheConfig::new(
                    tmp.path().join(format!("cache-{round}-{encrypted}-{tag}")),
                    64 << 30,
                );
                cache.min_free_ratio = 0.0;
                let blocks = BlockStore::new(
                    meta.clone(),
                    store.clone(),
                    codec.clone(),
                    Some(Arc::new(BlockCache::open(cache)?)),
                );
                let cfg = FsConfig::new(
                    View::Live,
                    ws.root,
                    tmp.path().join(format!("staging-{round}-{encrypted}-{tag}")),
                );
                Ok((
                    DriveFs::new(meta.clone(), Arc::new(blocks.clone()), ws.clone(), cfg)?,
                    blocks,
                ))
            };

            let (writer, _) = new_fs("w")?;
            let t = Instant::now();
            let flags = OpenFlags {
                read: true,
                write: true,
                ..OpenFlags::default()
            };
            let opened = writer.create(ROOT_INO, b"clip.mov", 0o644, flags, caller).await?;
            for (i, chunk) in data.chunks(MIB).enumerate() {
                writer.write(opened.fh, (i * MIB) as u64, chunk).await?;
            }
            writer.release(opened.fh, caller).await?;
            let write = t.elapsed().as_secs_f64();
            let ino = writer.to_ino(opened.attr.ino);

            let (reader, _) = new_fs("r")?;
            let cold = time_read(&reader, ino, size).await?;
            let warm = time_read(&reader, ino, size).await?;
            let local = local_copy(tmp.path(), &data)?;
            println!(
                "{:<8} {:<11} {:>7.0} MB/s {:>5.0} MB/s {:>5.0} MB/s {:>5.0} MB/s {:>7.2}",
                round + 1,
                if encrypted { "encrypted" } else { "plaintext" },
                mbps(size, write),
                mbps(size, cold),
                mbps(size, warm),
                mbps(size, local),
                local / warm,
            );
        }
    }

    // CPU cost of the block codec alone: one thread, so wall time is CPU time.
    let block = Bytes::from(data[..4 * MIB].to_vec());
    // The parts: BLAKE3 alone and a plain copy of the block, for 1 GiB.
    let t = Instant::now();
    for _ in 0..256 {
        std::hint::black_box(blake3::hash(&block));
    }
    let blake = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..256 {
        std::hint::black_box(block.to_vec());
    }
    println!(
        "parts    blake3 {blake:.2} CPU s/GB, memcpy {:.2} CPU s/GB",
        t.elapsed().as_secs_f64()
    );
    for codec in [
        BlockCodec::plaintext(),
        BlockCodec::encrypted(&DataKey::generate()),
    ] {
        let n = 256; // 1 GiB
        let t = Instant::now();
        for _ in 0..n {
            let hash = codec.address(&block);
            std::hint::black_box(codec.encode(&hash, &block));
        }
        let encode = t.elapsed().as_secs_f64();
        let hash = codec.address(&block);
        let stored = codec.encode(&hash, &block);
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(codec.decode(&hash, stored.clone())?);
        }
        let decode = t.elapsed().as_secs_f64();
        println!(
            "codec {:<10} hash+encode {:.2} CPU s/GB, decode+verify {:.2} CPU s/GB",
            if codec.is_encrypted() {
                "encrypted"
            } else {
                "plaintext"
            },
            encode,
            decode
        );
    }
    Ok(())
}

async fn time_read(fs: &DriveFs<BlockStore>, ino: u64, size: usize) -> anyhow::Result<f64> {
    let caller = Caller::default();
    let t = Instant::now();
    let opened = fs
        .open(
            ino,
            OpenFlags {
                read: true,
                ..OpenFlags::default()
            },
            caller,
        )
        .await?;
    let mut done = 0;
    while done < size {
        let chunk = fs.read(opened.fh, done as u64, MIB as u32).await?;
        anyhow::ensure!(!chunk.is_empty(), "short read at {done}");
        done += chunk.len();
    }
    fs.release(opened.fh, caller).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// Copies `data` (first written to a file) to another local file, in 1 MiB requests, through
/// the page cache (no fsync), as `cp` does.
fn local_copy(dir: &std::path::Path, data: &[u8]) -> anyhow::Result<f64> {
    let src = dir.join("local-src");
    std::fs::write(&src, data)?;
    let t = Instant::now();
    let mut input = std::fs::File::open(&src)?;
    let mut output = std::fs::File::create(dir.join("local-dst"))?;
    let mut buf = vec![0u8; MIB];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        output.write_all(&buf[..n])?;
    }
    Ok(t.elapsed().as_secs_f64())
}

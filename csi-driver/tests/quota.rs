//! Quotas through a real FUSE mount: filling a workspace to its quota gives EDQUOT (at write
//! or at close), earlier files read back intact, a file whose commit is refused keeps its
//! previous content, and `df` shows the quota as the size and the usage counters as used.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Mount, Storage, eventually};
use drive::meta::WorkspaceUpdate;
use drive::model::{Actor, WorkspaceKind, WorkspaceSpec};
use drive::{MetaConfig, PgMetaStore};

const MIB: u64 = 1 << 20;
const QUOTA: u64 = 8 * MIB;

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// Opens `path` (created, or truncated with `truncate`), writes `data` and closes it: the
/// errno of the first failure (a write, or the close that commits).
fn write_file(path: &Path, data: &[u8], truncate: bool) -> Result<(), i32> {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .open(path)
        .map_err(errno)?;
    let written = file.write_all(data).map_err(errno);
    // Close explicitly: dropping a File ignores what close(2) reports.
    let closed = nix::unistd::close(file).map_err(|e| e as i32);
    written.and(closed)
}

/// `df -B1` of `dir`: (size, used) in bytes.
fn df(dir: &Path) -> (u64, u64) {
    let out = Command::new("df")
        .args(["-B1", "--output=size,used"])
        .arg(dir)
        .output()
        .expect("run df");
    assert!(
        out.status.success(),
        "df failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let figures: Vec<u64> = text
        .lines()
        .nth(1)
        .expect("df prints a line per file system")
        .split_whitespace()
        .map(|f| f.parse().expect("df figure"))
        .collect();
    (figures[0], figures[1])
}

#[test]
fn filling_a_workspace_to_its_quota_gives_edquot() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let meta = rt.block_on(PgMetaStore::connect(&MetaConfig::new(storage.url.clone())))?;
    let mut spec = WorkspaceSpec::new("quota", WorkspaceKind::User);
    spec.block_size = 64 << 10;
    spec.quota_bytes = Some(QUOTA);
    let ws = rt.block_on(meta.create_workspace(&Actor::system("test"), &spec))?;
    let set_quota = |quota: u64| {
        let update = WorkspaceUpdate {
            quota_bytes: Some(Some(quota)),
            owners: None,
        };
        rt.block_on(meta.update_workspace(&Actor::system("test"), "quota", &update))
            .expect("update quota");
    };
    let m = Mount::new(&storage, &["--workspace", "quota"])?;

    // 1 MiB files until the quota refuses one: eight fit exactly, the ninth does not.
    let mut kept = Vec::new();
    let mut refused = None;
    for i in 0..12u8 {
        let (name, data) = (format!("f{i}"), pattern(MIB, i));
        match write_file(&m.path(&name), &data, true) {
            Ok(()) => kept.push((name, data)),
            Err(errno) => {
                refused = Some((name, errno));
                break;
            }
        }
    }
    assert_eq!(kept.len(), 8, "8 MiB of 1 MiB files fit under an 8 MiB quota");
    let (ninth, errno) = refused.expect("the ninth file is refused");
    assert_eq!(errno, libc::EDQUOT, "{ninth} is refused with EDQUOT");
    assert!(
        fs::metadata(m.path(&ninth)).map_or(true, |md| md.len() == 0),
        "nothing of the refused file is committed"
    );
    for (name, data) in &kept {
        common::assert_bytes(name, &fs::read(m.path(name))?, data);
    }

    // A commit refused at close: the quota is raised, the write goes through, the quota is
    // lowered before the close; the file keeps its previous content.
    set_quota(QUOTA + 2 * MIB);
    let (name, before) = &kept[0];
    let mut file = OpenOptions::new().write(true).open(m.path(name))?;
    file.write_all(&pattern(2 * MIB, 99))?;
    set_quota(QUOTA);
    assert_eq!(nix::unistd::close(file).map_err(|e| e as i32), Err(libc::EDQUOT));
    common::assert_bytes(name, &fs::read(m.path(name))?, before);

    // df: the quota as the size, the usage counters as used (the mount may answer from
    // figures up to a few seconds old).
    let counted = rt.block_on(meta.workspace_usage(ws.id))?;
    assert_eq!(counted.bytes, 8 * MIB);
    assert!(
        eventually(Duration::from_secs(10), || df(&m.dir) == (QUOTA, counted.bytes)),
        "df shows {:?}, the quota and counters say {:?}",
        df(&m.dir),
        (QUOTA, counted.bytes)
    );
    Ok(())
}

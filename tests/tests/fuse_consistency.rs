//! Durability after kill -9, close-to-open across two mounts, and read-only snapshot mounts.

mod common;

use std::fs;
use std::time::Duration;

use common::{Mount, Storage, eventually, is_mounted};

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

#[test]
fn closed_files_survive_kill_9_and_the_dead_mount_is_cleaned() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let holder = tempfile::tempdir()?;
    let dir = holder.path().join("mnt");
    fs::create_dir(&dir)?;
    let mut m = Mount::at(&storage, &dir, &["--block-size", "65536"])?;
    let mut expected = Vec::new();
    for i in 0..20u32 {
        let data = pattern(i, (i as usize) * 37_001);
        fs::write(m.path(&format!("f{i}")), &data)?; // close() returned 0
        expected.push((format!("f{i}"), data));
    }
    m.kill9()?;
    let dead = fs::metadata(&m.dir).unwrap_err();
    assert_eq!(dead.raw_os_error(), Some(libc::ENOTCONN));
    let m2 = Mount::at(&storage, &dir, &[])?;
    assert!(is_mounted(&m2.dir));
    for (name, data) in &expected {
        assert_eq!(&fs::read(m2.path(name))?, data, "{name}");
    }
    Ok(())
}

#[test]
fn a_file_closed_on_one_mount_reads_new_on_the_other() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let a = Mount::new(&storage, &[])?;
    let b = Mount::new(&storage, &[])?;
    fs::write(a.path("shared"), b"version one")?;
    assert!(eventually(Duration::from_secs(5), || fs::read(b.path("shared"))
        .is_ok_and(|d| d == b"version one")));
    // B has it cached now; A rewrites it.
    fs::write(a.path("shared"), b"version two, longer")?;
    assert!(eventually(Duration::from_secs(5), || {
        fs::read(b.path("shared")).is_ok_and(|d| d == b"version two, longer")
    }));
    fs::remove_file(b.path("shared"))?;
    assert!(eventually(Duration::from_secs(5), || !a.path("shared").exists()));
    Ok(())
}

#[test]
fn a_mounted_snapshot_is_read_only_and_shows_the_old_tree() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let live = Mount::new(&storage, &[])?;
    fs::create_dir(live.path("shots"))?;
    fs::write(live.path("shots/a.exr"), b"old")?;
    storage.admin(&["snapshot", "create", "--workspace", "default", "before"])?;
    fs::write(live.path("shots/a.exr"), b"new content")?;
    fs::write(live.path("shots/b.exr"), b"b")?;
    let snap = Mount::new(&storage, &["--snapshot", "before"])?;
    assert_eq!(fs::read(snap.path("shots/a.exr"))?, b"old");
    assert!(!snap.path("shots/b.exr").exists());
    let e = fs::write(snap.path("shots/c.exr"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let e = fs::remove_file(snap.path("shots/a.exr")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(fs::read(live.path("shots/a.exr"))?, b"new content");
    Ok(())
}

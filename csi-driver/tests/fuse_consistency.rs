//! Durability after kill -9, close-to-open across two mounts, and read-only snapshot mounts.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::{Backend as _, Mount, Storage, eventually, is_mounted};

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
fn the_metadata_cache_follows_the_other_mounts_changes() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let a = Mount::new(&storage, &[])?;
    // B's kernel caches nothing, so every answer on B comes from B's metadata cache (kept
    // true by the change feed) or from the store.
    let b = Mount::new(&storage, &["--attr-ttl-ms", "0", "--entry-ttl-ms", "0"])?;
    let soon = Duration::from_secs(5);
    let meta = |p: &str| fs::symlink_metadata(b.path(p));
    fs::create_dir(a.path("d1"))?;
    fs::create_dir(a.path("d2"))?;
    fs::write(a.path("d1/f"), b"frame")?;
    // B learns d1/f, and that d2/g does not exist (a cached negative entry).
    assert!(eventually(soon, || meta("d1/f").is_ok()));
    assert!(meta("d2/g").is_err());
    fs::set_permissions(a.path("d1/f"), fs::Permissions::from_mode(0o600))?;
    assert!(eventually(soon, || meta("d1/f").is_ok_and(|m| m.mode() & 0o777 == 0o600)));
    fs::hard_link(a.path("d1/f"), a.path("d1/h"))?;
    assert!(eventually(soon, || meta("d1/f").is_ok_and(|m| m.nlink() == 2)));
    // A rename drops the old name on B as well as adding the new one.
    fs::rename(a.path("d1/f"), a.path("d2/g"))?;
    assert!(eventually(soon, || meta("d1/f").is_err() && meta("d2/g").is_ok()));
    fs::write(a.path("d2/g"), b"a longer frame")?;
    assert!(eventually(soon, || meta("d2/g").is_ok_and(|m| m.len() == 14)));
    assert_eq!(fs::read(b.path("d2/g"))?, b"a longer frame");
    fs::remove_file(a.path("d2/g"))?;
    assert!(eventually(soon, || meta("d2/g").is_err()));
    assert!(eventually(soon, || meta("d1/h").is_ok_and(|m| m.nlink() == 1)));
    // B's own changes show on B at once.
    fs::write(b.path("d2/new"), b"x")?;
    assert_eq!(meta("d2/new")?.len(), 1);
    fs::remove_file(b.path("d2/new"))?;
    assert_eq!(meta("d2/new").unwrap_err().raw_os_error(), Some(libc::ENOENT));
    Ok(())
}

#[test]
fn write_behind_removals_keep_their_order_and_fsync_of_the_folder_makes_them_durable() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let holder = tempfile::tempdir()?;
    let dir = holder.path().join("mnt");
    fs::create_dir(&dir)?;
    let mut a = Mount::at(&storage, &dir, &[])?;
    let b = Mount::new(&storage, &["--attr-ttl-ms", "0", "--entry-ttl-ms", "0"])?;
    fs::create_dir(a.path("out"))?;
    let names: Vec<String> = (0..300).map(|i| format!("out/frame.{i:04}.exr")).collect();
    for n in &names {
        fs::write(a.path(n), n.as_bytes())?;
    }
    for n in &names {
        fs::remove_file(a.path(n))?;
    }
    // Removed names are gone at once on this mount; a name re-created right after its
    // removal holds the new file (the create waits for the queued removal).
    assert!(names.iter().all(|n| !a.path(n).exists()));
    fs::write(a.path("out/frame.0007.exr"), b"second take")?;
    let listed: Vec<_> = fs::read_dir(a.path("out"))?
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listed, vec![std::ffi::OsString::from("frame.0007.exr")]);
    assert!(eventually(Duration::from_secs(5), || {
        fs::read_dir(b.path("out")).is_ok_and(|d| d.count() == 1)
            && fs::read(b.path("out/frame.0007.exr")).is_ok_and(|d| d == b"second take")
    }));
    // Removals are durable once fsync of the folder returns, even if the mount dies next.
    for i in 0..50 {
        fs::write(a.path(&format!("out/tmp{i}")), b"x")?;
    }
    for i in 0..50 {
        fs::remove_file(a.path(&format!("out/tmp{i}")))?;
    }
    fs::File::open(a.path("out"))?.sync_all()?;
    a.kill9()?;
    let a2 = Mount::at(&storage, &dir, &[])?;
    let listed: Vec<_> = fs::read_dir(a2.path("out"))?
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listed, vec![std::ffi::OsString::from("frame.0007.exr")]);
    Ok(())
}

#[test]
fn a_mounted_snapshot_is_read_only_and_shows_the_old_tree() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let live = Mount::new(&storage, &[])?;
    fs::create_dir(live.path("shots"))?;
    fs::write(live.path("shots/a.exr"), b"old")?;
    storage.run_admin(&["snapshot", "create", "--workspace", "default", "before"])?;
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

//! `studiodrive-csi gc` on the storage of a real mount: a dry run that changes nothing and
//! predicts the real pass, which frees the blocks of overwritten content while every live
//! file still reads back through a fresh mount without caches.

mod common;

use std::path::Path;

use common::{Backend, Mount, Storage};

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| {
            ((i.wrapping_mul(2_654_435_761) >> 24) ^ seed.wrapping_mul(37) ^ (i >> 16).wrapping_mul(101))
                as u8
        })
        .collect()
}

fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() { files_under(&path) } else { 1 }
        })
        .sum()
}

#[test]
fn gc_frees_overwritten_blocks_and_keeps_live_files() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let blocks = storage.dir.path().join("blocks");
    let m = Mount::new(&storage, &["--block-size", "65536"])?;
    let old = pattern(1, 3 * 65536);
    let new = pattern(2, 3 * 65536);
    std::fs::write(m.path("shot.exr"), &old)?;
    std::fs::write(m.path("shot.exr"), &new)?;
    std::fs::write(m.path("kept.exr"), pattern(3, 65536 + 7))?;
    let before = files_under(&blocks);
    assert_eq!(before, 3 + 3 + 2, "one object per distinct block");

    let dry: serde_json::Value =
        serde_json::from_str(&storage.run_admin(&["gc", "--grace", "0s", "--dry-run"])?)?;
    assert_eq!(dry["blocks"]["candidates"], 3, "{dry}");
    assert_eq!(files_under(&blocks), before, "a dry run deletes nothing");

    let real: serde_json::Value = serde_json::from_str(&storage.run_admin(&["gc", "--grace", "0s"])?)?;
    assert_eq!(real["blocks"]["deleted"], dry["blocks"]["candidates"], "{real}");
    assert_eq!(files_under(&blocks), before - 3);

    let fresh = Mount::new(
        &storage,
        &[
            "--block-size",
            "65536",
            "--cache-size",
            "0",
            "--memory-cache-size",
            "0",
        ],
    )?;
    assert_eq!(std::fs::read(fresh.path("shot.exr"))?, new);
    assert_eq!(std::fs::read(fresh.path("kept.exr"))?, pattern(3, 65536 + 7));
    Ok(())
}

#[test]
fn a_folder_removed_through_the_mount_is_restored_from_the_trash_then_purged() -> anyhow::Result<()> {
    let storage = Storage::new()?;
    let blocks = storage.dir.path().join("blocks");
    let m = Mount::new(&storage, &["--block-size", "65536"])?;
    std::fs::create_dir(m.path("shot010"))?;
    std::fs::write(m.path("shot010/comp.0001.exr"), pattern(4, 2 * 65536))?;
    std::fs::write(m.path("shot010/comp.0002.exr"), pattern(5, 65536))?;
    std::fs::write(m.path("kept.exr"), pattern(6, 65536))?;
    let with_shot = files_under(&blocks);
    std::fs::remove_dir_all(m.path("shot010"))?;

    let listed = storage.run_admin(&["trash", "list"])?;
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(
        rows.len(),
        3,
        "the folder and its two files, each removed by rm -r: {listed}"
    );
    let folder = rows
        .iter()
        .find(|r| r.ends_with("\t/shot010"))
        .unwrap_or_else(|| panic!("the folder is listed: {listed}"));
    assert!(folder.contains("\tfolder\t"), "{folder}");
    // rm -r unlinked the files before the folder: restoring the folder brings it back empty,
    // then each file comes back into it.
    let id = |row: &str| row.split('\t').next().unwrap().to_string();
    storage.run_admin(&["trash", "restore", &id(folder)])?;
    for row in rows.iter().filter(|r| r.contains("/shot010/")) {
        storage.run_admin(&["trash", "restore", &id(row)])?;
    }
    let err = storage
        .run_admin(&["trash", "restore", &id(folder)])
        .expect_err("an item is restored once");
    assert!(format!("{err:#}").contains("restored or purged"), "{err:#}");
    let fresh = Mount::new(&storage, &["--block-size", "65536", "--cache-size", "0"])?;
    assert_eq!(
        std::fs::read(fresh.path("shot010/comp.0001.exr"))?,
        pattern(4, 2 * 65536)
    );
    assert_eq!(
        std::fs::read(fresh.path("shot010/comp.0002.exr"))?,
        pattern(5, 65536)
    );
    drop(fresh);

    // Deleted again, a week's retention keeps it; zero purges it and frees its blocks.
    std::fs::remove_dir_all(m.path("shot010"))?;
    let kept: serde_json::Value =
        serde_json::from_str(&storage.run_admin(&["gc", "--grace", "0s", "--purge-deleted-after", "7d"])?)?;
    assert_eq!(kept["purged_entries"], 0, "{kept}");
    let purged: serde_json::Value =
        serde_json::from_str(&storage.run_admin(&["gc", "--grace", "0s", "--purge-deleted-after", "0s"])?)?;
    assert_eq!(purged["purged_entries"], 3, "{purged}");
    assert_eq!(purged["blocks"]["deleted"], 3, "{purged}");
    assert_eq!(files_under(&blocks), with_shot - 3);
    assert_eq!(
        storage.run_admin(&["trash", "list"])?.lines().count(),
        1,
        "only the header"
    );
    assert_eq!(std::fs::read(m.path("kept.exr"))?, pattern(6, 65536));
    Ok(())
}

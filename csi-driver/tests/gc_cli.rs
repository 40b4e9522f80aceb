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
    assert_eq!(dry["candidates"], 3, "{dry}");
    assert_eq!(files_under(&blocks), before, "a dry run deletes nothing");

    let real: serde_json::Value = serde_json::from_str(&storage.run_admin(&["gc", "--grace", "0s"])?)?;
    assert_eq!(real["deleted"], dry["candidates"], "{real}");
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

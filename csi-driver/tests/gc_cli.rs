//! `studiodrive-csi gc` on the storage of a real mount: a dry run that changes nothing and
//! predicts the real pass, which frees the blocks of overwritten content while every live
//! file still reads back through a fresh mount without caches; a pass killed mid-sweep and
//! rerun under its id ends with the totals of an uninterrupted one.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use common::{Backend, Mount, S3Storage, Storage};
use drive::data::{ChunkStore as _, S3ChunkStore, S3Config, S3Credentials, block_key};

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

/// A fresh mount without caches: what it reads comes from the store.
fn uncached_mount(storage: &dyn Backend) -> anyhow::Result<Mount> {
    let no_caches = ["--cache-size", "0", "--memory-cache-size", "0"];
    Mount::new(storage, &[&["--block-size", "65536"][..], &no_caches].concat())
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

    let fresh = uncached_mount(&storage)?;
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

/// Plants `n` unreferenced blocks of 100 bytes last touched two hours ago in `storage`: their
/// objects through the S3 API, their records with psql.
fn plant_garbage(storage: &S3Storage, n: usize) -> anyhow::Result<()> {
    let hashes: Vec<[u8; 32]> = (0..n)
        .map(|i| *blake3::hash(format!("garbage-{i}").as_bytes()).as_bytes())
        .collect();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        drive_testkit::install_crypto_provider();
        let mut cfg = S3Config::new(S3Storage::BUCKET).with_endpoint(storage.s3.endpoint());
        cfg.prefix = S3Storage::PREFIX.into();
        cfg.credentials = Some(S3Credentials {
            access_key_id: drive_testkit::s3::ACCESS_KEY.into(),
            secret_access_key: drive_testkit::s3::SECRET_KEY.into(),
            session_token: None,
        });
        let store = S3ChunkStore::connect(&cfg).await;
        for hash in &hashes {
            store
                .put(&block_key(hash), bytes::Bytes::from(vec![7u8; 100]))
                .await?;
        }
        anyhow::Ok(())
    })?;
    let hex: Vec<String> = hashes
        .iter()
        .map(|h| format!("'{}'", blake3::Hash::from(*h).to_hex()))
        .collect();
    let sql = format!(
        "INSERT INTO blocks (hash, size, stored_size, state, updated_at) \
         SELECT decode(h, 'hex'), 100, 100, 'available', now() - INTERVAL '2 hours' \
         FROM unnest(ARRAY[{}]) AS h",
        hex.join(",")
    );
    let psql = drive_testkit::pg::find_bin_dir()?.join("psql");
    let out = Command::new(psql)
        .args(["-X", "-w", "-v", "ON_ERROR_STOP=1", "-c", &sql, &storage.meta.url])
        .output()
        .context("run psql")?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The totals of a pass report that must not depend on interruptions.
fn totals(report: &serde_json::Value) -> Vec<serde_json::Value> {
    [
        "candidates",
        "candidate_bytes",
        "kept",
        "deleted",
        "deleted_bytes",
        "errors",
        "orphans_seen",
        "orphans_deleted",
    ]
    .iter()
    .map(|k| report[*k].clone())
    .collect()
}

/// `kill -9` of a pass mid-sweep (throttled to 100 deletes/s, killed once 100 of 300 garbage
/// objects are gone), then the same pass id again: the same totals and the same objects left
/// as an uninterrupted pass on identical storage, and the live file reads back.
#[test]
fn a_pass_killed_mid_sweep_resumes_to_the_same_totals() -> anyhow::Result<()> {
    const GARBAGE: usize = 300;
    let live = pattern(1, 3 * 65536);
    let mut outcomes = Vec::new();
    for interrupted in [false, true] {
        let storage = S3Storage::new(3)?;
        let m = Mount::new(&storage, &["--block-size", "65536"])?;
        std::fs::write(m.path("live.exr"), &live)?;
        drop(m);
        plant_garbage(&storage, GARBAGE)?;
        let before = storage.objects()?.len();
        let args = ["gc", "--pass-id", "resumed", "--deletes-per-second", "100"];
        if interrupted {
            let mut pass = common::studiodrive()
                .args(args)
                .args(storage.storage_args())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while before - storage.objects()?.len() < 100 {
                if let Some(status) = pass.try_wait()? {
                    bail!("the pass ended ({status}) before it could be killed");
                }
                assert!(Instant::now() < deadline, "the pass deleted nothing");
                std::thread::sleep(Duration::from_millis(10)); // poll interval
            }
            pass.kill()?; // SIGKILL
            pass.wait()?;
            let deleted = before - storage.objects()?.len();
            assert!(
                deleted < GARBAGE,
                "killed mid-sweep: {deleted} of {GARBAGE} deleted"
            );
        }
        let report: serde_json::Value = serde_json::from_str(&storage.run_admin(&args)?)?;
        let report = &report["blocks"];
        assert_eq!(report["deleted"], GARBAGE, "{report}");
        assert_eq!(storage.objects()?.len(), before - GARBAGE);
        let fresh = uncached_mount(&storage)?;
        assert_eq!(std::fs::read(fresh.path("live.exr"))?, live, "no live block lost");
        outcomes.push(totals(report));
    }
    assert_eq!(outcomes[0], outcomes[1], "uninterrupted, then killed and resumed");
    Ok(())
}

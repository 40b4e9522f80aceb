//! Preload on the node (issue 19 item 2): a volume with the `preload` attribute is published
//! only once this node's run of that preload is done; `preload --node-cache --report-as`
//! fills the workspace's node-shared cache and records its progress; the pod's mount then
//! reads the preloaded frames without an object-store GET (counted on the test S3 server);
//! publications of one workspace share that cache, and unpublishing one leaves it to the
//! others; a failed preload fails publish unless `preloadOptional`; hostile attribute values
//! are refused.

mod common;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use common::{Mount, Plugin, S3Storage, publish_req, unpublish_req};
use drive::meta::{PreloadRun, PreloadState};
use tonic::Code;

const NODE: &str = "node-1";

fn frame_bytes(frame: u32) -> Vec<u8> {
    let len = 40_000 + (frame as usize % 7) * 31_000;
    (0..len)
        .map(|i| (i as u32).wrapping_mul(frame).rotate_left(7) as u8)
        .collect()
}

fn frame_path(frame: u32) -> String {
    format!("shot010/comp/sh010_comp.{frame:04}.exr")
}

/// Writes frames `frames` and `shot010/outside.bin` through a mount of their own.
fn write_shot(storage: &S3Storage, frames: std::ops::RangeInclusive<u32>) -> anyhow::Result<()> {
    let writer = Mount::new(storage, &[])?;
    std::fs::create_dir_all(writer.path("shot010/comp"))?;
    for frame in frames {
        std::fs::write(writer.path(&frame_path(frame)), frame_bytes(frame))?;
    }
    std::fs::write(writer.path("shot010/outside.bin"), vec![7u8; 300_000])?;
    Ok(())
}

/// `preload --node-cache --report-as NAME --node node-1` of `manifest` into the node plugin's
/// cache directory `csi_cache`; (exit code, output).
fn preload(
    storage: &S3Storage,
    csi_cache: &Path,
    name: &str,
    manifest: &str,
) -> anyhow::Result<(i32, String)> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), manifest)?;
    let state = tempfile::tempdir()?;
    let out = common::studiodrive()
        .arg("preload")
        .args(common::Backend::storage_args(storage))
        .arg("--state-dir")
        .arg(state.path())
        .arg("--manifest")
        .arg(file.path())
        .arg("--node-cache")
        .arg("--csi-cache-dir")
        .arg(csi_cache)
        .args(["--report-as", name, "--node", NODE])
        .env("RUST_LOG", "warn")
        .env_remove("STUDIODRIVE_NODE_ID")
        .env_remove("STUDIODRIVE_CACHE_DIR")
        .output()
        .context("run preload")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.code().unwrap_or(-1), text))
}

async fn store(storage: &S3Storage) -> anyhow::Result<drive::PgMetaStore> {
    Ok(drive::PgMetaStore::connect(&drive::MetaConfig::new(storage.meta.url.clone())).await?)
}

fn dirs_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|e| e.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn files_under(dir: &Path) -> usize {
    dirs_in(dir).iter().map(|d| files_under(d)).sum::<usize>()
        + std::fs::read_dir(dir)
            .map(|e| e.flatten().filter(|e| e.path().is_file()).count())
            .unwrap_or(0)
}

// Catches: a publish that does not wait (or waits forever) for its preload, a wait message
// without the progress, a preload that fills a directory the pod's mount does not use (the
// old per-publication cache, a path computed twice differently), preloaded frames fetched
// again or read wrong, a GET counter that cannot fail (a file outside the manifest must GET),
// publications of one workspace with caches of their own, and an unpublish that deletes the
// shared cache under a live publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_waits_for_its_preload_then_reads_the_frames_from_the_node_cache_without_gets()
-> anyhow::Result<()> {
    drive_testkit::install_crypto_provider();
    let storage = S3Storage::create(5).await?;
    write_shot(&storage, 1001..=1200)?;
    let meta = store(&storage).await?;
    let ws = meta.get_workspace("default").await?;

    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let csi_cache = state.path().join("cache");
    let csi_cache_arg = csi_cache.display().to_string();
    let plugin = Plugin::start_on(
        &storage,
        state.path(),
        &["--cache-dir", &csi_cache_arg, "--cache-min-free", "0"],
    )
    .await?;
    let ctx = [("workspace", "default"), ("preload", "shot010")];
    let a = pods.path().join("a");

    // Not started: the pod waits.
    let err = plugin
        .node()
        .node_publish_volume(publish_req("vol-a", &a, &ctx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("waiting for preload shot010 on node node-1"),
        "{}",
        err.message()
    );
    assert!(!common::is_mounted(&a), "mounted before the preload ran");
    // Running: the message says how far it got.
    let mut running = PreloadRun::start("shot010", NODE, "default");
    (running.files, running.done_files) = (200, 120);
    meta.record_preload_run(&running).await?;
    let err = plugin
        .node()
        .node_publish_volume(publish_req("vol-a", &a, &ctx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .ends_with("waiting for preload shot010 on node node-1: 120 of 200 files"),
        "{}",
        err.message()
    );

    // The preload, into the node-shared cache of the workspace.
    let (code, out) = preload(
        &storage,
        &csi_cache,
        "shot010",
        "shot010/comp/sh010_comp.%04d.exr [1001-1200]\n",
    )?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("preloaded 200 of 200 files"), "{out}");
    let run = meta.preload_run("shot010", NODE).await?.context("recorded")?;
    assert_eq!(
        (run.state, run.files, run.done_files, run.failed_files),
        (PreloadState::Done, 200, 200, 0)
    );
    assert_eq!(
        run.done_bytes,
        (1001..=1200).map(|f| frame_bytes(f).len() as u64).sum::<u64>()
    );
    let shared = drive_csi::csi::publish::node_cache_dir(&csi_cache, ws.id);
    assert!(
        files_under(&shared) >= 200,
        "{} entries in {}",
        files_under(&shared),
        shared.display()
    );

    // Published now; the pod reads every frame byte for byte, with no GET.
    plugin
        .node()
        .node_publish_volume(publish_req("vol-a", &a, &ctx))
        .await?;
    let gets = storage.s3.requests().gets();
    for frame in 1001..=1200u32 {
        let got = std::fs::read(a.join(frame_path(frame)))?;
        common::assert_bytes(&format!("frame {frame}"), &got, &frame_bytes(frame));
    }
    assert_eq!(
        storage.s3.requests().gets() - gets,
        0,
        "the pod fetched preloaded frames from the object store"
    );
    // Not preloaded: read through the object store (the counter counts).
    assert_eq!(std::fs::read(a.join("shot010/outside.bin"))?, vec![7u8; 300_000]);
    let after_outside = storage.s3.requests().gets();
    assert!(
        after_outside > gets,
        "a file outside the manifest was read without a GET"
    );

    // A second publication of the workspace shares the cache: what the first fetched, it
    // reads without a GET.
    let b = pods.path().join("b");
    plugin
        .node()
        .node_publish_volume(publish_req("vol-b", &b, &ctx))
        .await?;
    assert_eq!(std::fs::read(b.join("shot010/outside.bin"))?, vec![7u8; 300_000]);
    assert_eq!(
        storage.s3.requests().gets(),
        after_outside,
        "the second publication has a cache of its own"
    );
    assert_eq!(
        dirs_in(&csi_cache),
        vec![csi_cache.join("workspaces")],
        "no per-publication caches"
    );
    assert_eq!(dirs_in(&csi_cache.join("workspaces")), vec![shared.clone()]);

    // Unpublishing one leaves the shared cache and the other's reads.
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("vol-a", &a))
        .await?;
    assert!(!common::is_mounted(&a));
    assert!(files_under(&shared) >= 201, "unpublish removed the shared cache");
    let gets = storage.s3.requests().gets();
    for frame in (1001..=1200u32).step_by(7) {
        let got = std::fs::read(b.join(frame_path(frame)))?;
        common::assert_bytes(&format!("frame {frame} on b"), &got, &frame_bytes(frame));
    }
    assert_eq!(storage.s3.requests().gets(), gets, "b fetched preloaded frames");
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("vol-b", &b))
        .await?;
    assert!(shared.is_dir(), "the last unpublish removed the shared cache");
    Ok(())
}

// Catches: a failed preload that lets pods start on a cold cache (or fails them without
// naming what is missing), preloadOptional ignored, a missing frame recorded as done, and
// attribute values from a pod spec reaching the store or a mount unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_preload_fails_publish_unless_optional_and_bad_values_are_refused() -> anyhow::Result<()> {
    drive_testkit::install_crypto_provider();
    let storage = S3Storage::create(5).await?;
    write_shot(&storage, 1001..=1010)?;
    let meta = store(&storage).await?;
    let state = tempfile::tempdir()?;
    let pods = tempfile::tempdir()?;
    let csi_cache = state.path().join("csi-cache");
    let plugin = Plugin::start_on(&storage, state.path(), &["--cache-min-free", "0"]).await?;

    // Frame 1011 does not exist.
    let (code, out) = preload(
        &storage,
        &csi_cache,
        "shot010",
        "shot010/comp/sh010_comp.%04d.exr [1001-1011]\n",
    )?;
    assert_eq!(code, 2, "{out}");
    let run = meta.preload_run("shot010", NODE).await?.context("recorded")?;
    assert_eq!(
        (run.state, run.files, run.done_files, run.failed_files),
        (PreloadState::Failed, 10, 10, 1)
    );

    let a = pods.path().join("a");
    let err = plugin
        .node()
        .node_publish_volume(publish_req(
            "vol-a",
            &a,
            &[("workspace", "default"), ("preload", "shot010")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("preload shot010 on node node-1 failed")
            && err.message().contains("sh010_comp.1011.exr"),
        "{}",
        err.message()
    );
    assert!(!common::is_mounted(&a));
    plugin
        .node()
        .node_publish_volume(publish_req(
            "vol-a",
            &a,
            &[
                ("workspace", "default"),
                ("preload", "shot010"),
                ("preloadOptional", "true"),
            ],
        ))
        .await?;
    assert_eq!(std::fs::read(a.join(frame_path(1005)))?, frame_bytes(1005));
    plugin
        .node()
        .node_unpublish_volume(unpublish_req("vol-a", &a))
        .await?;

    // A bad manifest is recorded as failed, with its error.
    let (code, out) = preload(&storage, &csi_cache, "shot020", "shot010/comp/x.%04d.exr [9-1]\n")?;
    assert_ne!(code, 0, "{out}");
    let run = meta.preload_run("shot020", NODE).await?.context("recorded")?;
    assert_eq!(run.state, PreloadState::Failed);
    assert!(run.first_errors[0].contains("line 1"), "{:?}", run.first_errors);

    // Hostile values: INVALID_ARGUMENT, nothing mounted, nothing looked up.
    let long = "a".repeat(300);
    for (key, value) in [
        ("preload", ""),
        ("preload", "shot 010"),
        ("preload", "../shot010"),
        ("preload", "shot010'; DROP TABLE preload_runs; --"),
        ("preload", "shot\n010"),
        ("preload", "shot\u{0}010"),
        ("preload", long.as_str()),
        ("preloadOptional", "yes"),
    ] {
        let b = pods.path().join("b");
        let err = plugin
            .node()
            .node_publish_volume(publish_req(
                "vol-b",
                &b,
                &[("workspace", "default"), ("preload", "shot010"), (key, value)],
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{key}={value:?}: {err:?}");
        assert!(!common::is_mounted(&b), "{key}={value:?} mounted");
    }
    // The CLI refuses a bad name before it records anything.
    let (code, out) = preload(&storage, &csi_cache, "bad name", "shot010\n")?;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("preload name"), "{out}");
    assert_eq!(meta.preload_runs("bad name").await?, Vec::new());
    Ok(())
}

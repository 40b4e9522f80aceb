//! Preload runs in a real PostgreSQL (issue 19 item 2): one row per (name, node), updated in
//! place while a run goes, read by (name, node) and by name; bad names change nothing.

mod common;

use drive::ErrorKind;
use drive::meta::{PreloadRun, PreloadState};

// Catches: an upsert that inserts a second row per (name, node) or does not update the
// counters, a restarted run that keeps the old start time, errors kept without a bound,
// reads that mix preloads, and hostile names reaching SQL.
#[tokio::test]
async fn preload_runs_are_recorded_per_name_and_node() {
    let store = common::store().await;
    assert_eq!(store.preload_run("shot010", "node-a").await.unwrap(), None);

    let mut run = PreloadRun::start("shot010", "node-a", "show");
    run.files = 200;
    run.bytes = 2_000;
    store.record_preload_run(&run).await.unwrap();
    run.done_files = 120;
    run.done_bytes = 1_200;
    store.record_preload_run(&run).await.unwrap();
    let got = store.preload_run("shot010", "node-a").await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.files, got.done_files, got.done_bytes),
        (PreloadState::Running, 200, 120, 1_200)
    );
    assert!(got.updated_at >= got.started_at);
    let first_start = got.started_at;

    run.state = PreloadState::Failed;
    run.failed_files = 30;
    run.first_errors = (0..30).map(|i| format!("frame {i}: missing")).collect();
    store.record_preload_run(&run).await.unwrap();
    let got = store.preload_run("shot010", "node-a").await.unwrap().unwrap();
    assert_eq!(got.state, PreloadState::Failed);
    assert_eq!(got.failed_files, 30);
    assert_eq!(got.first_errors.len(), drive::meta::PRELOAD_MAX_ERRORS);
    assert_eq!(got.first_errors[0], "frame 0: missing");
    assert_eq!(got.started_at, first_start, "finishing keeps the start");

    // Another node, another preload.
    store
        .record_preload_run(&PreloadRun::start("shot010", "node-b", "show"))
        .await
        .unwrap();
    store
        .record_preload_run(&PreloadRun::start("shot020", "node-a", "show"))
        .await
        .unwrap();
    let all = store.preload_runs("shot010").await.unwrap();
    let nodes: Vec<&str> = all.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes, ["node-a", "node-b"]);

    // A new run of a finished one starts over.
    store
        .record_preload_run(&PreloadRun::start("shot010", "node-a", "show"))
        .await
        .unwrap();
    let got = store.preload_run("shot010", "node-a").await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.done_files, got.failed_files),
        (PreloadState::Running, 0, 0)
    );
    assert!(got.started_at > first_start, "a new run has a new start");

    for (name, node) in [
        ("", "n"),
        ("a'; DROP TABLE preload_runs; --", "n"),
        ("ok", ""),
        ("ok", "a\nb"),
    ] {
        let err = store
            .record_preload_run(&PreloadRun::start(name, node, "show"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name:?} {node:?}: {err}");
    }
    assert_eq!(store.preload_runs("shot010").await.unwrap().len(), 2);

    // Deleting the preload forgets its runs on every node, and only its own.
    store
        .record_preload_run(&PreloadRun::start("shot020", "node-a", "show"))
        .await
        .unwrap();
    assert_eq!(store.delete_preload_runs("shot010").await.unwrap(), 2);
    assert!(store.preload_runs("shot010").await.unwrap().is_empty());
    assert_eq!(store.preload_runs("shot020").await.unwrap().len(), 1);
    assert_eq!(store.delete_preload_runs("shot010").await.unwrap(), 0);
}

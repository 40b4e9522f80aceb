//! `studiodrive-operator gc`, as a GC Job runs it: a lifecycle pass of `drive::lifecycle` on
//! the storage its environment names, against a real PostgreSQL and a file store.

use std::process::Command;

use drive::data::{ChunkStore, LocalChunkStore, block_key};
use drive::{MetaConfig, PgMetaStore};
use drive_testkit::pg::PgServer;
use operator::store::StudioStore as _;
use operator::store::drive_adapter::MetaStoreAdapter;

fn gc(env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_studiodrive-operator"))
        .args([
            "gc",
            "--policy",
            "nightly",
            "--pass-id",
            "nightly@1",
            "--deletes-per-second",
            "1000",
        ])
        .env_clear()
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run studiodrive-operator gc")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gc_job_sweeps_old_unreferenced_blocks_and_keeps_young_ones() {
    drive_testkit::install_crypto_provider();
    let pg = PgServer::shared();
    let db = pg.create_database().await.expect("database");
    let url = pg.url(&db);
    let meta = PgMetaStore::connect(&MetaConfig::new(url.clone()))
        .await
        .expect("connect");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = LocalChunkStore::open(dir.path()).expect("file store");
    let (old, young) = (
        *blake3::hash(b"old").as_bytes(),
        *blake3::hash(b"young").as_bytes(),
    );
    for hash in [old, young] {
        assert!(!meta.register_block(&hash, 1, 1).await.expect("register"));
        store
            .put(&block_key(&hash), bytes::Bytes::from_static(b"x"))
            .await
            .expect("put");
    }
    let (raw, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw");
    tokio::spawn(conn);
    raw.execute(
        "UPDATE blocks SET updated_at = now() - INTERVAL '2 hours' WHERE hash = $1",
        &[&old.as_slice()],
    )
    .await
    .expect("age one block");

    let missing = gc(&[]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("STUDIODRIVE_METADATA_URL is not set"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    let store_url = format!("file://{}", dir.path().display());
    let out = gc(&[
        ("STUDIODRIVE_METADATA_URL", &url),
        ("STUDIODRIVE_STORE", &store_url),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(
        (
            report["pass_id"].as_str(),
            report["blocks"]["candidates"].as_u64(),
            report["blocks"]["deleted"].as_u64()
        ),
        (Some("nightly@1"), Some(1), Some(1)),
        "{report}"
    );
    // What the operator reads for the policy's status is what the pass printed.
    let adapter = MetaStoreAdapter(meta.clone());
    let stored = adapter
        .pass_report("nightly@1")
        .await
        .expect("read the stored report")
        .expect("the pass stored its report");
    assert_eq!(serde_json::to_value(&stored).expect("json"), report);
    assert_eq!(adapter.pass_report("nightly@2").await.expect("read"), None);
    // A report this operator cannot read is no report, not a stalled policy.
    raw.execute(
        "UPDATE gc_passes SET lifecycle_report = '{\"format\": 99}' WHERE id = 'nightly@1'",
        &[],
    )
    .await
    .expect("replace the report");
    assert_eq!(adapter.pass_report("nightly@1").await.expect("read"), None);
    assert!(
        store.get(&block_key(&old)).await.is_err(),
        "the old block's object is gone"
    );
    assert!(
        store.get(&block_key(&young)).await.is_ok(),
        "the young block stays"
    );
    assert!(meta.block(&old).await.expect("record").is_none());
    assert!(meta.block(&young).await.expect("record").is_some());
}

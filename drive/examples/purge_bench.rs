//! Purge benchmark: how fast a lifecycle pass removes a deleted tree, and what a pass running
//! at the same time costs a client that creates and looks up files (the online database must
//! not suffer from clean-up). Prints figures and ratios against the same client without a
//! pass, measured alternately in one run (alone, during a full-speed pass, during a paced
//! pass: the default `PurgePace`). Starts its own PostgreSQL (testkit).
//!
//!     cargo run --release -p drive --example purge_bench [-- --quick]

use std::sync::Arc;
use std::time::{Duration, Instant};

use drive::data::{ChunkStore, MemoryChunkStore};
use drive::gc::BlockPassOptions;
use drive::lifecycle::{LifecycleOptions, run_pass};
use drive::meta::PurgePace;
use drive::model::*;
use drive::rules::gc::RetentionClass;
use drive::{MetaConfig, PgMetaStore};
use hdrhistogram::Histogram;

fn actor() -> Actor {
    Actor::system("bench")
}

fn name(s: &str) -> Name {
    Name::parse(s).expect("valid name")
}

/// A pass that purges everything deleted, at once, at `pace`.
fn purge_now(id: &str, pace: PurgePace) -> LifecycleOptions {
    let mut blocks = BlockPassOptions::new(id);
    blocks.grace = Duration::ZERO;
    let mut opts = LifecycleOptions::blocks_only(blocks);
    opts.retention = vec![RetentionClass::days(0)];
    opts.purge_pace = pace;
    opts
}

/// Loads a tree of `dirs` x `per_dir` files under `/name` and deletes it (one entry).
async fn deleted_tree(
    store: &PgMetaStore,
    raw: &tokio_postgres::Client,
    ws: &Workspace,
    tree: &str,
    dirs: usize,
    per_dir: usize,
) -> anyhow::Result<()> {
    let dir = store
        .create(
            &actor(),
            ws.id,
            ws.root,
            &name(tree),
            &NewNode::new(NodeKind::Directory, 0o755),
        )
        .await?;
    drive_testkit::bulk::tree(raw, ws.id.0, dir.ino.0 as i64, dirs, per_dir).await?;
    store.delete_path(&actor(), ws.id, &format!("/{tree}")).await?;
    Ok(())
}

/// Creates then looks up `n` files in a folder of its own; returns (ops/s, p99 latency ms).
async fn foreground(store: &PgMetaStore, ws: &Workspace, tag: &str, n: usize) -> anyhow::Result<(f64, f64)> {
    let dir = store
        .create(
            &actor(),
            ws.id,
            ws.root,
            &name(tag),
            &NewNode::new(NodeKind::Directory, 0o755),
        )
        .await?;
    let mut hist = Histogram::<u64>::new(3)?;
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let f = name(&format!("f{i}"));
        store
            .create(&actor(), ws.id, dir.ino, &f, &NewNode::new(NodeKind::File, 0o644))
            .await?;
        store.lookup(View::Live, dir.ino, &f).await?;
        hist.record(t.elapsed().as_micros() as u64)?;
    }
    let rate = (2 * n) as f64 / start.elapsed().as_secs_f64();
    Ok((rate, hist.value_at_quantile(0.99) as f64 / 1000.0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (dirs, per_dir, ops) = if quick { (20, 1000, 500) } else { (100, 1000, 2000) };
    let pg = drive_testkit::pg::PgServer::start()?;
    let db = pg.create_database().await?;
    let mut config = MetaConfig::new(pg.url(&db));
    config.pool_size = 16;
    let store = PgMetaStore::connect(&config).await?;
    let (raw, conn) = tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let objects: Arc<dyn ChunkStore> = Arc::new(MemoryChunkStore::new());
    let ws = store
        .create_workspace(&actor(), &WorkspaceSpec::new("purge", WorkspaceKind::User))
        .await?;
    let nodes = dirs * per_dir + dirs + 1;
    println!("# Studio Drive purge benchmark (PostgreSQL 15 on a Unix socket, this machine)");

    // Purge throughput: a deleted tree of `nodes` nodes, removed by one pass at full speed and
    // at the default pace.
    for (label, pace) in [
        ("full speed", PurgePace::FULL_SPEED),
        ("paced", PurgePace::default()),
    ] {
        let tree = format!("alone-{}", label.replace(' ', "-"));
        deleted_tree(&store, &raw, &ws, &tree, dirs, per_dir).await?;
        let start = Instant::now();
        let report = run_pass(&store, objects.as_ref(), &purge_now(&tree, pace)).await?;
        let took = start.elapsed();
        println!(
            "purge of a deleted tree of {nodes} nodes, {label}: {:.2} s, {:.0} nodes/s (report: {} entries, {} nodes)",
            took.as_secs_f64(),
            report.purged_nodes as f64 / took.as_secs_f64(),
            report.purged_entries,
            report.purged_nodes
        );
    }

    // A client's creates and lookups alone (A), while a full-speed pass purges a tree (B) and
    // while a paced one does (C): A B C A B C.
    println!("foreground: {ops} creates + {ops} lookups, 1 client");
    for round in 0..2 {
        let (alone, alone_p99) = foreground(&store, &ws, &format!("alone{round}"), ops).await?;
        println!("round {round}: alone {alone:.0} ops/s (p99 {alone_p99:.2} ms)");
        for (label, pace) in [
            ("full speed", PurgePace::FULL_SPEED),
            ("paced", PurgePace::default()),
        ] {
            let tag = format!("busy{round}-{}", label.replace(' ', "-"));
            deleted_tree(&store, &raw, &ws, &tag, dirs, per_dir).await?;
            let pass = {
                let (store, objects, id) = (store.clone(), objects.clone(), tag.clone());
                tokio::spawn(async move { run_pass(&store, objects.as_ref(), &purge_now(&id, pace)).await })
            };
            let started = Instant::now();
            let (busy, busy_p99) = foreground(&store, &ws, &format!("{tag}-client"), ops).await?;
            let client_took = started.elapsed();
            let purged = pass.await??;
            let pass_took = started.elapsed();
            println!(
                "round {round}: during a {label} pass {busy:.0} ops/s (p99 {busy_p99:.2} ms), ratio to alone {:.2}; \
                 the pass purged {} nodes in {:.2} s, the client ran {:.2} s of it",
                busy / alone,
                purged.purged_nodes,
                pass_took.as_secs_f64(),
                client_took.as_secs_f64()
            );
        }
    }
    Ok(())
}

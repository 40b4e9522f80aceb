//! Metadata-store benchmark: prints figures and, where a local file system has an equivalent,
//! the ratio against it measured in the same run. Starts its own PostgreSQL (testkit).
//!
//!     cargo run --release -p drive --example meta_bench [-- --quick]
//!
//! Large trees are bulk-loaded with SQL (`drive_testkit::bulk`).

use std::time::{Duration, Instant};

use drive::model::*;
use drive::{MetaConfig, PgMetaStore};
use hdrhistogram::Histogram;

fn actor() -> Actor {
    Actor::system("bench")
}

fn name(s: &str) -> Name {
    Name::parse(s).expect("valid name")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let pg = drive_testkit::pg::PgServer::start()?;
    let db = pg.create_database().await?;
    let mut config = MetaConfig::new(pg.url(&db));
    config.pool_size = 32;
    let store = PgMetaStore::connect(&config).await?;
    let (raw, conn) = tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let local = tempfile::tempdir()?;
    println!("# Studio Drive metadata benchmark (PostgreSQL 15 on a Unix socket, this machine)");

    // Creates per second, 1 and 8 clients, each client in its own folder.
    let creates_per_client = if quick { 300 } else { 2000 };
    for clients in [1usize, 8] {
        let ws = store
            .create_workspace(
                &actor(),
                &WorkspaceSpec::new(format!("creates-{clients}"), WorkspaceKind::User),
            )
            .await?;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let dir = store
                    .create(
                        &actor(),
                        ws.id,
                        ws.root,
                        &name(&format!("c{c}")),
                        &NewNode::new(NodeKind::Directory, 0o755),
                    )
                    .await?;
                for i in 0..creates_per_client {
                    store
                        .create(
                            &actor(),
                            ws.id,
                            dir.ino,
                            &name(&format!("f{i}")),
                            &NewNode::new(NodeKind::File, 0o644),
                        )
                        .await?;
                }
                Ok::<_, drive::MetaError>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let rate = (clients * creates_per_client) as f64 / start.elapsed().as_secs_f64();
        let local_start = Instant::now();
        let ldir = local.path().join(format!("creates-{clients}"));
        std::fs::create_dir(&ldir)?;
        for i in 0..creates_per_client {
            std::fs::File::create(ldir.join(format!("f{i}")))?;
        }
        let local_rate = creates_per_client as f64 / local_start.elapsed().as_secs_f64();
        println!(
            "creates/s, {clients} client(s): {rate:.0}  (local disk, 1 client: {local_rate:.0}; ratio {:.3})",
            rate / local_rate
        );
    }

    // Lookup latency.
    let ws = store.get_workspace("creates-1").await?;
    let dir = store.lookup(View::Live, ws.root, &name("c0")).await?;
    let mut hist = Histogram::<u64>::new(3)?;
    let mut local_hist = Histogram::<u64>::new(3)?;
    let lookups = if quick { 1000 } else { 10_000 };
    for i in 0..lookups {
        let n = format!("f{}", (i * 7919) % creates_per_client);
        let t = Instant::now();
        store.lookup(View::Live, dir.ino, &name(&n)).await?;
        hist.record(t.elapsed().as_micros() as u64)?;
        let t = Instant::now();
        std::fs::metadata(local.path().join("creates-1").join(&n))?;
        local_hist.record(t.elapsed().as_nanos() as u64)?;
    }
    println!(
        "lookup latency: p50 {:.3} ms, p99 {:.3} ms  (local stat p50 {:.4} ms)",
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        local_hist.value_at_quantile(0.5) as f64 / 1e6
    );

    // Readdir of a 100k-entry folder (readdirplus, pages of 1000).
    let big = if quick { 10_000 } else { 100_000 };
    let ws = store
        .create_workspace(&actor(), &WorkspaceSpec::new("readdir", WorkspaceKind::User))
        .await?;
    let folder = store
        .create(
            &actor(),
            ws.id,
            ws.root,
            &name("frames"),
            &NewNode::new(NodeKind::Directory, 0o755),
        )
        .await?;
    drive_testkit::bulk::files(&raw, ws.id.0, folder.ino.0 as i64, big).await?;
    let start = Instant::now();
    let mut after: Option<Name> = None;
    let mut n = 0;
    loop {
        let page = store
            .readdir_plus(View::Live, folder.ino, after.as_ref(), 1000)
            .await?;
        if page.is_empty() {
            break;
        }
        n += page.len();
        after = page.last().map(|e| e.entry.name.clone());
    }
    let took = start.elapsed();
    let ldir = local.path().join("big");
    std::fs::create_dir(&ldir)?;
    for i in 0..big {
        std::fs::File::create(ldir.join(format!("f{i:07}")))?;
    }
    let lstart = Instant::now();
    let mut ln = 0;
    for e in std::fs::read_dir(&ldir)? {
        e?.metadata()?;
        ln += 1;
    }
    let ltook = lstart.elapsed();
    assert_eq!((n, ln), (big, big));
    println!(
        "readdirplus of a {big}-entry folder: {:.0} ms  (local ls -l equivalent {:.0} ms; ratio {:.2})",
        ms(took),
        ms(ltook),
        ms(took) / ms(ltook)
    );

    // Folder move with 100k descendants.
    let tree = store
        .create(
            &actor(),
            ws.id,
            ws.root,
            &name("tree"),
            &NewNode::new(NodeKind::Directory, 0o755),
        )
        .await?;
    drive_testkit::bulk::tree(&raw, ws.id.0, tree.ino.0 as i64, big / 1000, 1000).await?;
    let dest = store
        .create(
            &actor(),
            ws.id,
            ws.root,
            &name("archive"),
            &NewNode::new(NodeKind::Directory, 0o755),
        )
        .await?;
    let mut moves = Vec::new();
    for i in 0..5 {
        let (from, to) = if i % 2 == 0 {
            (ws.root, dest.ino)
        } else {
            (dest.ino, ws.root)
        };
        let t = Instant::now();
        store
            .rename(
                &actor(),
                ws.id,
                from,
                &name("tree"),
                to,
                &name("tree"),
                RenameMode::Replace,
            )
            .await?;
        moves.push(ms(t.elapsed()));
    }
    moves.sort_by(f64::total_cmp);
    println!(
        "move of a folder with {} descendants: median {:.2} ms over 5 moves",
        big + big / 1000,
        moves[2]
    );

    // Snapshot creation on trees of 10k, 100k and 1M nodes.
    let sizes: &[usize] = if quick {
        &[10_000, 100_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    for &size in sizes {
        let ws = store
            .create_workspace(
                &actor(),
                &WorkspaceSpec::new(format!("snap-{size}"), WorkspaceKind::User),
            )
            .await?;
        drive_testkit::bulk::tree(&raw, ws.id.0, ws.root.0 as i64, size / 1000, 1000).await?;
        let mut times = Vec::new();
        for i in 0..5 {
            let t = Instant::now();
            store
                .create_snapshot(&actor(), ws.id, &format!("s{i}"), "/")
                .await?;
            times.push(ms(t.elapsed()));
            // A change between snapshots so each one has something to protect.
            store
                .create(
                    &actor(),
                    ws.id,
                    ws.root,
                    &name(&format!("x{i}")),
                    &NewNode::new(NodeKind::File, 0o644),
                )
                .await?;
        }
        times.sort_by(f64::total_cmp);
        println!(
            "snapshot of a {size}-node tree: median {:.2} ms, max {:.2} ms over 5",
            times[2], times[4]
        );
    }
    let stats = store.stats();
    println!(
        "transactions: {} committed, {} serialization retries",
        stats.commits.load(std::sync::atomic::Ordering::Relaxed),
        stats.retries.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}

//! Change-feed load: many mounts' feed readers against one PostgreSQL, before and after the
//! per-workspace feed. Prints, per run, the database's transactions and rows read per second
//! and its CPU, and the ratio of the per-workspace feed to the whole-log one, runs A B A B.
//!
//!     cargo run --release -p drive --example feed_bench [-- MOUNTS WORKSPACES EVENTS_PER_S SECONDS]
//!
//! Each simulated mount is what a mount's invalidator does: a feed of its workspace polled
//! every 200 ms. The readers share one connection pool (a real mount has its own; what is
//! measured is the database's work, which does not depend on that). One writer creates files
//! round-robin across the workspaces at a fixed rate, one event each.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use drive::meta::{EventFeed, WorkspaceFeed};
use drive::model::*;
use drive::{MetaConfig, MetaError, PgMetaStore};

const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    WholeLog,
    PerWorkspace,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::WholeLog => "whole log (before)",
            Kind::PerWorkspace => "per workspace (after)",
        }
    }
}

enum Reader {
    WholeLog(EventFeed),
    PerWorkspace(WorkspaceFeed),
}

impl Reader {
    async fn start(kind: Kind, store: &PgMetaStore, ws: WorkspaceId) -> Result<Reader, MetaError> {
        Ok(match kind {
            Kind::WholeLog => Reader::WholeLog(EventFeed::from_now(store, Some(ws)).await?),
            Kind::PerWorkspace => Reader::PerWorkspace(WorkspaceFeed::from_now(store, ws).await?),
        })
    }

    async fn poll(&mut self, store: &PgMetaStore) -> Result<usize, MetaError> {
        Ok(match self {
            Reader::WholeLog(feed) => feed.poll(store).await?.len(),
            Reader::PerWorkspace(feed) => feed.poll(store).await?.len(),
        })
    }
}

struct Figures {
    xacts_per_s: f64,
    rows_per_s: f64,
    cpu_percent: f64,
    polls_per_s: f64,
    delivered: u64,
    expected: u64,
}

/// Transactions and rows read so far, over all databases.
async fn server_counters(raw: &tokio_postgres::Client) -> anyhow::Result<(f64, f64)> {
    // Statistics reach pg_stat_database when a backend reports them (at most once a second
    // while busy); the phases run long enough for that to be noise.
    let row = raw
        .query_one(
            "SELECT sum(xact_commit + xact_rollback)::FLOAT8, sum(tup_returned + tup_fetched)::FLOAT8 \
             FROM pg_stat_database",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// The load of one run: mounts reading the feed, events written per second, for how long.
#[derive(Debug, Clone, Copy)]
struct Load {
    mounts: usize,
    events_per_s: u64,
    seconds: u64,
}

async fn run(
    kind: Kind,
    pg: &drive_testkit::pg::PgServer,
    store: &PgMetaStore,
    raw: &tokio_postgres::Client,
    workspaces: &[Workspace],
    load: Load,
) -> anyhow::Result<Figures> {
    let Load {
        mounts,
        events_per_s,
        seconds,
    } = load;
    let stop = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for m in 0..mounts {
        let ws = workspaces[m % workspaces.len()].id;
        let reader = Reader::start(kind, store, ws).await?;
        let (store, stop, polls, delivered) = (store.clone(), stop.clone(), polls.clone(), delivered.clone());
        readers.push(tokio::spawn(async move {
            let mut reader = reader;
            // Spread the readers over the interval, as mounts started at different times are.
            tokio::time::sleep(POLL_INTERVAL.mul_f64(m as f64 / mounts as f64)).await;
            let mut ticks = tokio::time::interval(POLL_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let got = reader.poll(&store).await?;
                polls.fetch_add(1, Ordering::Relaxed);
                delivered.fetch_add(got as u64, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    return Ok::<_, MetaError>(());
                }
            }
        }));
    }
    // Let every reader reach its first poll before measuring.
    tokio::time::sleep(POLL_INTERVAL * 2).await;
    let (xacts0, rows0) = server_counters(raw).await?;
    let cpu0 = pg.cpu_seconds()?;
    let polls0 = polls.load(Ordering::Relaxed);
    let started = Instant::now();
    let actor = Actor::system("feed-bench");
    let mut written = vec![0u64; workspaces.len()];
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / events_per_s as f64));
    let mut n = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        ticks.tick().await;
        let w = n % workspaces.len();
        let ws = &workspaces[w];
        let name = Name::parse(format!("{}-{n}", rand::random::<u64>())).expect("valid name");
        store
            .create(
                &actor,
                ws.id,
                ws.root,
                &name,
                &NewNode::new(NodeKind::File, 0o644),
            )
            .await?;
        written[w] += 1;
        n += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (xacts1, rows1) = server_counters(raw).await?;
    let cpu1 = pg.cpu_seconds()?;
    let polls1 = polls.load(Ordering::Relaxed);
    // Two more polls each so that every written event can be delivered, then stop.
    tokio::time::sleep(POLL_INTERVAL * 3).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await??;
    }
    let expected = (0..mounts).map(|m| written[m % workspaces.len()]).sum();
    Ok(Figures {
        xacts_per_s: (xacts1 - xacts0) / elapsed,
        rows_per_s: (rows1 - rows0) / elapsed,
        cpu_percent: (cpu1 - cpu0) / elapsed * 100.0,
        polls_per_s: (polls1 - polls0) as f64 / elapsed,
        delivered: delivered.load(Ordering::Relaxed),
        expected,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("arguments are MOUNTS WORKSPACES EVENTS_PER_S SECONDS: {e}"))?;
    let arg = |i: usize, default: u64| args.get(i).copied().unwrap_or(default);
    let (mounts, n_workspaces, events_per_s, seconds) =
        (arg(0, 500) as usize, arg(1, 100), arg(2, 200), arg(3, 10));
    anyhow::ensure!(
        mounts > 0 && n_workspaces > 0 && events_per_s > 0 && seconds > 0,
        "arguments must be positive"
    );

    let pg = drive_testkit::pg::PgServer::start()?;
    let db = pg.create_database().await?;
    let mut config = MetaConfig::new(pg.url(&db));
    config.pool_size = 64;
    let store = PgMetaStore::connect(&config).await?;
    let (raw, conn) = tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let actor = Actor::system("feed-bench");
    let mut workspaces = Vec::new();
    for w in 0..n_workspaces {
        workspaces.push(
            store
                .create_workspace(
                    &actor,
                    &WorkspaceSpec::new(format!("feed-{w}"), WorkspaceKind::User),
                )
                .await?,
        );
    }
    println!(
        "# change feed: {mounts} mounts over {n_workspaces} workspaces, {events_per_s} events/s, \
         {seconds} s per run, polls every {} ms",
        POLL_INTERVAL.as_millis()
    );
    println!("| run | feed | DB xacts/s | DB rows read/s | DB CPU % | polls/s | delivered / expected |");
    println!("|---|---|---|---|---|---|---|");
    let mut figures: Vec<(Kind, Figures)> = Vec::new();
    for (i, kind) in [
        Kind::WholeLog,
        Kind::PerWorkspace,
        Kind::WholeLog,
        Kind::PerWorkspace,
    ]
    .into_iter()
    .enumerate()
    {
        let load = Load {
            mounts,
            events_per_s,
            seconds,
        };
        let f = run(kind, &pg, &store, &raw, &workspaces, load).await?;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} / {} |",
            i + 1,
            kind.label(),
            f.xacts_per_s,
            f.rows_per_s,
            f.cpu_percent,
            f.polls_per_s,
            f.delivered,
            f.expected
        );
        figures.push((kind, f));
    }
    let mean = |kind: Kind, pick: fn(&Figures) -> f64| {
        let v: Vec<f64> = figures
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, f)| pick(f))
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    for (what, pick) in [
        (
            "DB rows read/s",
            (|f: &Figures| f.rows_per_s) as fn(&Figures) -> f64,
        ),
        ("DB CPU", |f: &Figures| f.cpu_percent),
        ("DB xacts/s", |f: &Figures| f.xacts_per_s),
    ] {
        println!(
            "ratio per-workspace / whole-log, {what}: {:.3}",
            mean(Kind::PerWorkspace, pick) / mean(Kind::WholeLog, pick)
        );
    }
    Ok(())
}

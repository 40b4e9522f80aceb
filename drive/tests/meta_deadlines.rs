//! The metadata store when PostgreSQL stops answering without closing its connections (a
//! frozen host, a failover behind a load balancer that drops packets): every call must fail
//! as unavailable within the statement timeout, change nothing, and work again once the
//! server answers. The server here is frozen with SIGSTOP: its kernel still accepts and
//! acknowledges every byte, so neither TCP nor keepalives notice anything.

mod common;

use std::time::{Duration, Instant};

use common::{actor, name, workspace};
use drive::model::{NewNode, NodeKind, View, WorkspaceKind};
use drive::{ErrorKind, MetaConfig, PgMetaStore};
use drive_testkit::pg::PgServer;

const TIMEOUT: Duration = Duration::from_millis(800);
/// Far above the deadline, far below the minutes a call without one waits for TCP to give
/// up: a bound on "did the deadline fire at all", not a speed goal.
const GIVE_UP_BY: Duration = Duration::from_secs(10);

// Catches: a statement without a client-side deadline (the call waits as long as the server
// is frozen), a deadline on mutations only (reads hang), a deadline that breaks the pool
// (calls keep failing, or hang on a connection that still waits for a late answer, after the
// server is back), and a timed-out transaction that commits anyway once the server catches
// up on what was sent to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_fails_calls_within_the_statement_timeout_and_they_recover() -> anyhow::Result<()> {
    drive_testkit::init_tracing();
    let pg = PgServer::start()?;
    let db = pg.create_database().await?;
    let mut config = MetaConfig::new(pg.tcp_url(&db));
    config.statement_timeout = TIMEOUT;
    config.pool_size = 4;
    let store = PgMetaStore::connect(&config).await?;
    let ws = workspace(&store, "deadlines", WorkspaceKind::User).await;
    let folder = NewNode::new(NodeKind::Directory, 0o755);
    let before = store
        .create(&actor(), ws.id, ws.root, &name("before"), &folder)
        .await?;

    // Each call is bounded here too, so that a store without a deadline fails this test
    // instead of hanging it (the server stays frozen until the calls return).
    let frozen = pg.freeze()?;
    let started = Instant::now();
    let create = tokio::time::timeout(
        GIVE_UP_BY,
        store.create(&actor(), ws.id, ws.root, &name("during"), &folder),
    )
    .await;
    let create_took = started.elapsed();
    let started = Instant::now();
    let read = tokio::time::timeout(GIVE_UP_BY, store.lookup(View::Live, ws.root, &name("before"))).await;
    let read_took = started.elapsed();
    let ping = tokio::time::timeout(GIVE_UP_BY, store.ping()).await;
    drop(frozen);
    let (create, read, ping) = (
        bounded("create", create),
        bounded("lookup", read),
        bounded("ping", ping),
    );

    for (what, kind, took) in [
        (
            "create",
            create.as_ref().err().map(drive::MetaError::kind),
            create_took,
        ),
        (
            "lookup",
            read.as_ref().err().map(drive::MetaError::kind),
            read_took,
        ),
    ] {
        assert_eq!(kind, Some(ErrorKind::Unavailable), "{what} while frozen");
        assert!(
            took >= TIMEOUT,
            "{what} gave up after {took:?}, before the deadline"
        );
        assert!(
            took < GIVE_UP_BY,
            "{what} took {took:?}: the deadline did not fire"
        );
    }
    let message = create.unwrap_err().to_string();
    assert!(message.contains("did not answer within 800 ms"), "{message}");
    assert_eq!(
        ping.map_err(|e| e.kind()),
        Err(ErrorKind::Unavailable),
        "ping while frozen"
    );

    // Back: every pooled connection serves again (more calls at once than the pool holds, so
    // the connections that timed out are among them), and the timed-out create left nothing.
    let calls = (0..12).map(|i| {
        let store: PgMetaStore = store.clone();
        let folder = folder.clone();
        let (ws, root) = (ws.id, ws.root);
        async move {
            store
                .create(&actor(), ws, root, &name(&format!("after-{i}")), &folder)
                .await
        }
    });
    for (i, result) in futures::future::join_all(calls).await.into_iter().enumerate() {
        result.unwrap_or_else(|e| panic!("create after-{i} once the server is back: {e}"));
    }
    let found = store.lookup(View::Live, ws.root, &name("before")).await?;
    assert_eq!(found.ino, before.ino);
    let during = store.lookup(View::Live, ws.root, &name("during")).await;
    assert_eq!(
        during.map(|a| a.ino).map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "the create that timed out must not have committed"
    );
    Ok(())
}

#[track_caller]
fn bounded<T>(what: &str, result: Result<T, tokio::time::error::Elapsed>) -> T {
    result.unwrap_or_else(|_| panic!("{what} still waits after {GIVE_UP_BY:?}: no deadline"))
}

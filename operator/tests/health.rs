//! The operator's health endpoint over real HTTP, with readiness driven by the real metadata
//! store: `/readyz` follows PostgreSQL going down and coming back, and `/metrics` serves every
//! metric name docs/operator.md documents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drive_testkit::pg::PgServer;
use operator::http::{HealthState, follow_store_health, serve};
use operator::metrics::Metrics;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// `GET path` on `addr`: the status code and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn wait_for_status(addr: std::net::SocketAddr, want: u16, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        if get(addr, "/readyz").await.0 == want {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Catches: readiness set once at start-up and never updated (the ready flag a test sets by
// hand), and a health check that keeps reporting ready while the database is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_metadata_store_down_and_back() {
    let pg = PgServer::start().expect("start PostgreSQL");
    let db = pg.create_database().await.expect("database");
    let mut config = drive::MetaConfig::new(pg.url(&db));
    config.connect_timeout = Duration::from_secs(1);
    let store = drive::PgMetaStore::connect(&config).await.expect("connect");

    let state = Arc::new(HealthState {
        metrics: Arc::new(Metrics::new().expect("metrics")),
        ready: false.into(),
    });
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(serve(listener, state.clone(), shutdown.clone()));
    let pinged = store.clone();
    tokio::spawn(follow_store_health(
        move || {
            let store = pinged.clone();
            async move { store.ping().await.is_ok() }
        },
        state.clone(),
        Duration::from_millis(200),
        shutdown.clone(),
    ));

    assert!(
        wait_for_status(addr, 200, Duration::from_secs(10)).await,
        "/readyz is not 200 while PostgreSQL answers"
    );
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()));

    pg.stop().expect("stop PostgreSQL");
    assert!(
        wait_for_status(addr, 503, Duration::from_secs(20)).await,
        "/readyz stays ready with PostgreSQL down"
    );
    let (_, body) = get(addr, "/readyz").await;
    assert_eq!(body, "metadata store unavailable\n");
    // Liveness is not readiness: the process still serves.
    assert_eq!(get(addr, "/healthz").await.0, 200);

    pg.resume().expect("restart PostgreSQL");
    assert!(
        wait_for_status(addr, 200, Duration::from_secs(30)).await,
        "/readyz does not come back with PostgreSQL"
    );
    shutdown.cancel();
}

// Catches: a ping that hangs keeping the replica ready (no timeout on the check).
#[tokio::test]
async fn a_ping_that_hangs_is_not_ready() {
    let state = Arc::new(HealthState {
        metrics: Arc::new(Metrics::new().expect("metrics")),
        ready: true.into(),
    });
    let shutdown = CancellationToken::new();
    let (answered_tx, mut answered_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let task = tokio::spawn(follow_store_health(
        move || {
            let answered = answered_tx.clone();
            async move {
                let _ = answered.send(());
                std::future::pending::<()>().await;
                true
            }
        },
        state.clone(),
        Duration::from_millis(50),
        shutdown.clone(),
    ));
    // Two pings started: the first one has been given up by then. Without the timeout the
    // second never starts, which the deadline turns into a failure rather than a hang.
    for which in ["first", "second"] {
        tokio::time::timeout(Duration::from_secs(10), answered_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("the {which} ping never started: a hung ping blocks the check"))
            .expect("ping channel");
    }
    assert!(
        !state.ready.load(std::sync::atomic::Ordering::SeqCst),
        "a ping that never answers left the replica ready"
    );
    shutdown.cancel();
    task.await.expect("health task");
}

// Catches: a documented metric that is not registered (renamed, or created lazily and absent
// from a fresh replica's scrape).
#[tokio::test]
async fn metrics_scrape_has_every_documented_name() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operator.md"))
        .expect("docs/operator.md");
    let section = docs
        .split("## Metrics")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Metrics section in docs/operator.md");
    let documented: std::collections::BTreeSet<&str> = section
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("studiodrive_"))
        .collect();
    assert!(documented.len() >= 5, "documented names: {documented:?}");

    let metrics = Arc::new(Metrics::new().expect("metrics"));
    // Labelled families appear once they have a child; a fresh replica records one reconcile.
    metrics.observe("Workspace", 0.01, Some("store_unavailable"));
    let state = Arc::new(HealthState {
        metrics,
        ready: true.into(),
    });
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(serve(listener, state, shutdown.clone()));
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let scraped: std::collections::BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let missing: Vec<&&str> = documented.iter().filter(|n| !scraped.contains(**n)).collect();
    assert!(
        missing.is_empty(),
        "documented but not served: {missing:?}\nserved: {scraped:?}"
    );
    shutdown.cancel();
}

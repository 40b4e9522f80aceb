//! Event delivery end to end: a real mount writes, `studiodrive-csi relay` delivers the change
//! feed to a real nats-server (JetStream) and to a CloudEvents webhook, and the tests compare
//! what arrived with the feed in the metadata store: every event, first deliveries in feed
//! order, paths that are the workload's, through a NATS restart, a relay killed with SIGKILL,
//! a webhook that fails its first deliveries, and beside a sink that never answers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use common::{Backend as _, Mount, Storage, eventually};
use drive::model::Event;
use drive::{MetaConfig, PgMetaStore};
use rand::{Rng as _, SeedableRng as _};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A nats-server with JetStream on a port and store directory that survive restarts.
struct Nats {
    port: u16,
    dir: tempfile::TempDir,
    /// The clients' token, when the server requires one.
    token: Option<String>,
    child: Option<Child>,
}

impl Nats {
    fn start() -> anyhow::Result<Nats> {
        Nats::start_with_token(None)
    }

    fn start_with_token(token: Option<&str>) -> anyhow::Result<Nats> {
        let mut nats = Nats {
            port: free_port()?,
            dir: tempfile::tempdir()?,
            token: token.map(str::to_string),
            child: None,
        };
        nats.launch()?;
        Ok(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path());
        if let Some(token) = &self.token {
            cmd.args(["--auth", token]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start nats-server (Debian package nats-server; ./scripts/test.sh installs it)")?;
        self.child = Some(child);
        let port = self.port;
        if !eventually(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }) {
            bail!("nats-server did not listen on {port}");
        }
        Ok(())
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A `studiodrive-csi relay` process.
struct RelayProcess(Option<Child>);

impl RelayProcess {
    fn start(storage: &Storage, metrics: Option<u16>) -> anyhow::Result<RelayProcess> {
        RelayProcess::start_with(storage, metrics, &[])
    }

    fn start_with(storage: &Storage, metrics: Option<u16>, args: &[&str]) -> anyhow::Result<RelayProcess> {
        let mut cmd = common::studiodrive();
        cmd.arg("relay")
            .args(storage.storage_args())
            .args(args)
            .args(["--lease-secs", "3", "--poll-ms", "50", "--max-backoff-ms", "400"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(port) = metrics {
            cmd.args(["--metrics-addr", &format!("127.0.0.1:{port}")]);
        }
        Ok(RelayProcess(Some(
            cmd.spawn().context("start studiodrive-csi relay")?,
        )))
    }

    fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.0.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The events of workspace `default` above `after`, from the metadata store.
async fn feed(url: &str, after: i64) -> anyhow::Result<Vec<Event>> {
    feed_of(url, "default", after).await
}

/// The events of workspace `workspace` above `after`, from the metadata store.
async fn feed_of(url: &str, workspace: &str, after: i64) -> anyhow::Result<Vec<Event>> {
    let meta = PgMetaStore::connect(&MetaConfig::new(url.to_string())).await?;
    let ws = meta.get_workspace(workspace).await?;
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let page = meta.events_after(Some(ws.id), cursor, 1000).await?;
        let Some(last) = page.last() else { break };
        cursor = last.id;
        out.extend(page);
    }
    Ok(out)
}

/// The position sink `name` started from.
async fn sink_position(url: &str, name: &str) -> anyhow::Result<i64> {
    let meta = PgMetaStore::connect(&MetaConfig::new(url.to_string())).await?;
    Ok(meta.event_sink(name).await?.context("sink exists")?.position)
}

/// A random workload on the mount: folders, files written and appended to, renames within
/// and across folders, removals, mode changes. Returns every path it created. `step` runs
/// before each operation (to break things mid-stream).
fn workload(
    root: &Path,
    ops: usize,
    seed: u64,
    mut step: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<BTreeSet<String>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut dirs = vec![String::new()];
    let mut files: Vec<String> = Vec::new();
    let mut created = BTreeSet::new();
    for i in 0..ops {
        step(i)?;
        let dir = dirs[rng.random_range(0..dirs.len())].clone();
        match rng.random_range(0..10) {
            0 | 1 => {
                let d = format!("{dir}/d{i}");
                std::fs::create_dir(root.join(&d[1..]))?;
                created.insert(d.clone());
                dirs.push(d);
            }
            2..=4 => {
                let f = format!("{dir}/f{i}.exr");
                std::fs::write(root.join(&f[1..]), vec![i as u8; rng.random_range(1..20_000)])?;
                created.insert(f.clone());
                files.push(f);
            }
            5 if !files.is_empty() => {
                use std::io::Write as _;
                let f = &files[rng.random_range(0..files.len())];
                let mut h = std::fs::OpenOptions::new()
                    .append(true)
                    .open(root.join(&f[1..]))?;
                h.write_all(b"more")?;
            }
            6 if !files.is_empty() => {
                let at = rng.random_range(0..files.len());
                let to = format!("{dir}/r{i}.exr");
                std::fs::rename(root.join(&files[at][1..]), root.join(&to[1..]))?;
                created.insert(to.clone());
                files[at] = to;
            }
            7 if !files.is_empty() => {
                let f = files.swap_remove(rng.random_range(0..files.len()));
                std::fs::remove_file(root.join(&f[1..]))?;
            }
            8 if !files.is_empty() => {
                use std::os::unix::fs::PermissionsExt as _;
                let f = &files[rng.random_range(0..files.len())];
                std::fs::set_permissions(root.join(&f[1..]), std::fs::Permissions::from_mode(0o640))?;
            }
            _ => {
                let f = format!("{dir}/g{i}.txt");
                std::fs::write(root.join(&f[1..]), b"x")?;
                created.insert(f.clone());
                files.push(f);
            }
        }
    }
    Ok(created)
}

/// A delivered CloudEvent, as the tests read it.
#[derive(Debug, Clone)]
struct Delivered {
    event_id: i64,
    kind: String,
    subject: Option<String>,
}

fn parse(body: &[u8]) -> anyhow::Result<Delivered> {
    let ce: serde_json::Value = serde_json::from_slice(body)?;
    anyhow::ensure!(ce["specversion"] == "1.0", "not a CloudEvent 1.0: {ce}");
    let event_id = ce["data"]["eventId"].as_i64().context("data.eventId")?;
    let id = ce["id"].as_str().context("id")?;
    anyhow::ensure!(
        id.ends_with(&format!(":{event_id}")),
        "id {id} is not <workspace>:<event id>"
    );
    let kind = ce["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("dev.studiodrive."))
        .context("type dev.studiodrive.<op>")?
        .to_string();
    anyhow::ensure!(ce["data"]["op"] == kind.as_str(), "type and data.op differ: {ce}");
    Ok(Delivered {
        event_id,
        kind,
        subject: ce["subject"].as_str().map(str::to_string),
    })
}

/// Checks `delivered` (in arrival order, redeliveries included) against the feed: every event
/// of `expected` arrived, first arrivals in feed order with the feed's kinds, nothing else,
/// and every path the workload created appears as the subject of an event.
fn check_delivery(
    delivered: &[Delivered],
    expected: &[Event],
    created: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let mut first: Vec<&Delivered> = Vec::new();
    let mut seen = BTreeSet::new();
    for d in delivered {
        if seen.insert(d.event_id) {
            first.push(d);
        }
    }
    let want: Vec<i64> = expected.iter().map(|e| e.id).collect();
    let got: Vec<i64> = first.iter().map(|d| d.event_id).collect();
    let missing: Vec<&i64> = want.iter().filter(|id| !seen.contains(id)).collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{} events never arrived: {missing:?}",
        missing.len()
    );
    anyhow::ensure!(
        got == want,
        "first deliveries are not the feed in order:\n got {got:?}\nwant {want:?}"
    );
    let kinds: BTreeMap<i64, &str> = expected.iter().map(|e| (e.id, e.op.as_str())).collect();
    for d in &first {
        anyhow::ensure!(
            kinds[&d.event_id] == d.kind,
            "event {} arrived as {}",
            d.event_id,
            d.kind
        );
    }
    let subjects: BTreeSet<&str> = first.iter().filter_map(|d| d.subject.as_deref()).collect();
    let unnamed: Vec<&String> = created
        .iter()
        .filter(|p| !subjects.contains(p.as_str()))
        .collect();
    anyhow::ensure!(unnamed.is_empty(), "created paths no event names: {unnamed:?}");
    Ok(())
}

/// Every message of JetStream stream `stream` (subjects `sd.test.<kind>`), in stream order.
async fn stream_messages(url: &str, stream: &str) -> anyhow::Result<Vec<Delivered>> {
    stream_messages_of(async_nats::connect(url).await?, stream).await
}

async fn stream_messages_of(client: async_nats::Client, stream: &str) -> anyhow::Result<Vec<Delivered>> {
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await?;
    let last = s.info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await?;
        let d = parse(&m.payload)?;
        anyhow::ensure!(
            m.subject.as_str() == format!("sd.test.{}", d.kind),
            "event {} published on {}",
            d.event_id,
            m.subject
        );
        out.push(d);
    }
    Ok(out)
}

// Catches: events lost or reordered when the bus restarts or the relay dies (a cursor saved
// before the acknowledgement, an unacknowledged batch skipped, a lease never taken over),
// paths resolved wrongly, a subject that ignores the event kind.
#[test]
fn every_event_reaches_jetstream_in_order_through_a_nats_restart_and_a_killed_relay() -> anyhow::Result<()> {
    let rt = runtime()?;
    let storage = Storage::new()?;
    let m = Mount::new(&storage, &[])?;
    let mut nats = Nats::start()?;
    storage.run_admin(&[
        "sink",
        "put",
        "render-farm",
        "--nats-url",
        &nats.url(),
        "--subject",
        "sd.test",
        "--stream",
        "SDTEST",
    ])?;
    let start = rt.block_on(sink_position(&storage.url, "render-farm"))?;
    let mut relay = RelayProcess::start(&storage, None)?;
    let failures = || {
        rt.block_on(async {
            let meta = PgMetaStore::connect(&MetaConfig::new(storage.url.clone())).await?;
            anyhow::Ok(
                meta.event_sink("render-farm")
                    .await?
                    .map_or(0, |s| s.consecutive_failures),
            )
        })
        .unwrap_or(0)
    };
    let created = workload(&m.dir, 400, 7, |i| {
        match i {
            100 => nats.kill()?,
            // Down long enough for publishes to fail (not only to wait for a reconnect).
            160 => {
                anyhow::ensure!(
                    eventually(Duration::from_secs(60), || failures() > 0),
                    "no delivery failed while nats-server was down"
                );
                nats.launch()?;
            }
            240 => relay.kill9()?,
            280 => relay = RelayProcess::start(&storage, None)?,
            _ => {}
        }
        Ok(())
    })?;
    let expected = rt.block_on(feed(&storage.url, start))?;
    anyhow::ensure!(
        expected.len() > 400,
        "the workload made {} events",
        expected.len()
    );
    let url = nats.url();
    let mut delivered = Vec::new();
    let complete = eventually(Duration::from_secs(90), || {
        delivered = rt.block_on(stream_messages(&url, "SDTEST")).unwrap_or_default();
        let ids: BTreeSet<i64> = delivered.iter().map(|d| d.event_id).collect();
        expected.iter().all(|e| ids.contains(&e.id))
    });
    assert!(
        complete,
        "not every event reached JetStream in 90 s ({} of {} messages)",
        delivered.len(),
        expected.len()
    );
    check_delivery(&delivered, &expected, &created)?;
    Ok(())
}

/// A request a [`Receiver`] accepted: its headers (names in lower case) and body.
type Request = (BTreeMap<String, String>, Vec<u8>);

/// A CloudEvents receiver that answers 503 to its first `fail_first` requests.
struct Receiver {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Vec<Request>>>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    async fn start(fail_first: usize) -> anyhow::Result<Receiver> {
        use http_body_util::BodyExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let got: Arc<Mutex<Vec<Request>>> = Arc::default();
        let requests: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (g, r) = (got.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (g, r) = (g.clone(), r.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let (g, r) = (g.clone(), r.clone());
                            async move {
                                let typed = req.headers().get("content-type").and_then(|v| v.to_str().ok())
                                    == Some("application/cloudevents+json");
                                let headers: BTreeMap<String, String> = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect();
                                let body = req.into_body().collect().await?.to_bytes();
                                let n = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                let status = if !typed {
                                    415
                                } else if n < fail_first {
                                    503
                                } else {
                                    g.lock().unwrap().push((headers, body.to_vec()));
                                    200
                                };
                                let mut resp =
                                    hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, hyper::Error>(resp)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Receiver { addr, got, requests })
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/studio", self.addr)
    }

    fn delivered(&self) -> anyhow::Result<Vec<Delivered>> {
        self.got.lock().unwrap().iter().map(|(_, b)| parse(b)).collect()
    }

    fn accepted(&self) -> Vec<Request> {
        self.got.lock().unwrap().clone()
    }
}

// Catches: a webhook failure that drops the event instead of retrying it, retries that skip
// ahead, a filter that leaks other paths or kinds (or drops wanted ones), a dead sink that
// holds up the others, failures that never reach the sink's record or the metrics.
#[test]
fn webhooks_get_every_event_despite_failures_filters_hold_and_a_dead_sink_blocks_nothing()
-> anyhow::Result<()> {
    let rt = runtime()?;
    let storage = Storage::new()?;
    let m = Mount::new(&storage, &[])?;
    let flaky = rt.block_on(Receiver::start(5))?;
    let filtered = rt.block_on(Receiver::start(0))?;
    let dead = format!("http://127.0.0.1:{}/gone", free_port()?);
    storage.run_admin(&["sink", "put", "flaky", "--webhook-url", &flaky.url()])?;
    storage.run_admin(&[
        "sink",
        "put",
        "keep-creates",
        "--webhook-url",
        &filtered.url(),
        "--path-prefix",
        "/keep",
        "--kind",
        "create",
    ])?;
    storage.run_admin(&["sink", "put", "dead", "--webhook-url", &dead])?;
    let start = rt.block_on(sink_position(&storage.url, "flaky"))?;
    let metrics_port = free_port()?;
    let _relay = RelayProcess::start(&storage, Some(metrics_port))?;

    std::fs::create_dir(m.path("keep"))?;
    std::fs::create_dir(m.path("keeper"))?;
    let mut created = workload(&m.dir, 120, 11, |_| Ok(()))?;
    for i in 0..10 {
        std::fs::write(m.path(&format!("keep/k{i}")), b"k")?;
        std::fs::write(m.path(&format!("keeper/n{i}")), b"n")?;
        created.insert(format!("/keep/k{i}"));
        created.insert(format!("/keeper/n{i}"));
    }
    std::fs::remove_file(m.path("keep/k0"))?;
    created.insert("/keep".into());
    created.insert("/keeper".into());

    let expected = rt.block_on(feed(&storage.url, start))?;
    let complete = eventually(Duration::from_secs(60), || {
        let ids: BTreeSet<i64> = flaky
            .delivered()
            .unwrap_or_default()
            .iter()
            .map(|d| d.event_id)
            .collect();
        expected.iter().all(|e| ids.contains(&e.id))
    });
    assert!(complete, "the flaky webhook did not get every event in 60 s");
    assert!(flaky.requests.load(std::sync::atomic::Ordering::SeqCst) >= expected.len() + 5);
    check_delivery(&flaky.delivered()?, &expected, &created)?;

    // The filtered sink: exactly the creates at or below /keep (not /keeper), in order.
    let want: BTreeSet<String> = (0..10).map(|i| format!("/keep/k{i}")).collect();
    let got_all = eventually(Duration::from_secs(30), || {
        let subjects: BTreeSet<String> = filtered
            .delivered()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|d| d.subject)
            .collect();
        want.iter().all(|p| subjects.contains(p))
    });
    assert!(got_all, "the filtered sink missed creates under /keep");
    for d in filtered.delivered()? {
        let subject = d.subject.clone().unwrap_or_default();
        assert_eq!(d.kind, "create", "{d:?} passed a create-only filter");
        assert!(
            subject == "/keep" || subject.starts_with("/keep/"),
            "{d:?} passed the /keep filter"
        );
    }

    // The dead sink: failing, recorded, measured; the others were delivered meanwhile.
    let record = rt.block_on(async {
        let meta = PgMetaStore::connect(&MetaConfig::new(storage.url.clone())).await?;
        meta.event_sink("dead").await?.context("dead sink")
    })?;
    assert!(record.consecutive_failures >= 1, "{record:?}");
    assert!(record.failing_since.is_some(), "{record:?}");
    assert!(
        record.last_error.contains("127.0.0.1"),
        "error names the endpoint: {}",
        record.last_error
    );
    assert_eq!(record.delivered, 0);
    let metrics = common::scrape(&format!("127.0.0.1:{metrics_port}"))?;
    let failures = common::sample(
        &metrics,
        "studiodrive_event_sink_failures_total",
        &[("sink", "dead")],
    );
    assert!(
        failures.is_some_and(|f| f >= 1.0),
        "failures metric: {failures:?}\n{metrics}"
    );
    let lag = common::sample(
        &metrics,
        "studiodrive_event_sink_lag_seconds",
        &[("sink", "dead")],
    );
    assert!(
        lag.is_some_and(|l| l > 0.0),
        "lag metric of the dead sink: {lag:?}"
    );
    let delivered = common::sample(
        &metrics,
        "studiodrive_event_sink_delivered_total",
        &[("sink", "flaky")],
    );
    assert!(
        delivered.is_some_and(|d| d >= expected.len() as f64),
        "delivered metric of the flaky sink: {delivered:?}"
    );

    // Bad input: a sink with a wrong scheme or a path that is not absolute changes nothing.
    for bad in [
        vec!["sink", "put", "bad", "--webhook-url", "ftp://x/y"],
        vec![
            "sink",
            "put",
            "bad",
            "--webhook-url",
            "http://x/y",
            "--path-prefix",
            "relative",
        ],
        vec![
            "sink",
            "put",
            "bad",
            "--nats-url",
            "nats://x:4222",
            "--subject",
            "a.*",
        ],
        vec!["sink", "put", "bad name", "--webhook-url", "http://x/y"],
    ] {
        assert!(storage.run_admin(&bad).is_err(), "{bad:?} was accepted");
    }
    let listed = storage.run_admin(&["sink", "list"])?;
    // Compare names, not the whole text: relay ids are random hex and may contain "bad".
    let names: Vec<&str> = listed
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        ["dead", "flaky", "keep-creates"],
        "a refused sink was stored, or a sink is missing:\n{listed}"
    );
    Ok(())
}

/// Creates `n` small files in a new folder of the mount; files per second.
fn create_rate(root: &Path, round: &str, n: usize) -> anyhow::Result<f64> {
    let dir = root.join(round);
    std::fs::create_dir(&dir)?;
    let start = std::time::Instant::now();
    for i in 0..n {
        std::fs::write(dir.join(format!("f{i:05}")), b"frame")?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

// Benchmark (scripts/bench-events.sh; figures in docs/benchmarks.md, "Event delivery"): small-file
// creates through a mount with no sink, with a dead sink (a webhook nobody answers, retried
// with backoff) and with a live webhook sink keeping up, rounds interleaved A B C A B C.
#[test]
#[ignore = "benchmark: run by scripts/bench-events.sh"]
fn bench_create_rate_with_a_dead_sink() -> anyhow::Result<()> {
    let files: usize = std::env::var("EVENTS_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let rounds: usize = std::env::var("EVENTS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = runtime()?;
    let storage = Storage::new()?;
    let m = Mount::new(&storage, &[])?;
    let live = rt.block_on(Receiver::start(0))?;
    let dead = format!("http://127.0.0.1:{}/gone", free_port()?);
    let _relay = RelayProcess::start(&storage, None)?;
    let mut results: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for (case, sink) in [("none", None), ("dead", Some(&dead)), ("live", Some(&live.url()))] {
            if let Some(url) = sink {
                storage.run_admin(&["sink", "put", case, "--webhook-url", url])?;
            }
            let rate = create_rate(&m.dir, &format!("{case}-{round}"), files)?;
            if sink.is_some() {
                storage.run_admin(&["sink", "delete", case])?;
            }
            println!("round {round} {case:>4}: {rate:8.0} creates/s");
            results.entry(case).or_default().push(rate);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let none = median(&results["none"]);
    for case in ["none", "dead", "live"] {
        let m = median(&results[case]);
        println!("{case:>4}: median {m:8.0} creates/s, {:.2}x of no sink", m / none);
    }
    Ok(())
}

/// Verifies webhook requests with the Standard Webhooks reference library (PyPI
/// `standardwebhooks`): prints how many verified with `secret`, and how many were refused
/// with a byte of the body changed and with another secret.
const VERIFY_PY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
secret, other, path = sys.argv[1], sys.argv[2], sys.argv[3]
verified = refused = 0
for r in json.load(open(path)):
    Webhook(secret).verify(r["body"], r["headers"])
    verified += 1
    tampered = r["body"].replace('"specversion"', '"specversioN"', 1)
    for s, body in ((secret, tampered), (other, r["body"])):
        try:
            Webhook(s).verify(body, r["headers"])
            sys.exit("a changed request verified")
        except WebhookVerificationError:
            refused += 1
print(verified, refused)
"#;

fn standard_webhooks_verify(secret: &str, requests: &[Request]) -> anyhow::Result<String> {
    let venv = common::pypi_venv("standardwebhooks-venv", "standardwebhooks==1.0.0")?;
    let dir = tempfile::tempdir()?;
    let json: Vec<serde_json::Value> = requests
        .iter()
        .map(|(headers, body)| serde_json::json!({"headers": headers, "body": String::from_utf8_lossy(body)}))
        .collect();
    let path = dir.path().join("requests.json");
    std::fs::write(&path, serde_json::to_vec(&json)?)?;
    let other = format!("whsec_{}", base64_of(&[7u8; 24]));
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", VERIFY_PY, secret, &other])
        .arg(&path)
        .output()
        .context("run python with standardwebhooks")?;
    anyhow::ensure!(
        out.status.success(),
        "standardwebhooks refused a request: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// Catches: a webhook sink's credential stored in clear, a relay without the key sending
// unsigned requests, signatures receivers cannot verify with the standard's own library (or
// that survive a changed body or another secret), an EventSink's Secret never reaching the
// relay, a NATS token ignored.
#[test]
fn sink_credentials_are_sealed_from_the_operator_to_a_relay_that_signs_and_authenticates()
-> anyhow::Result<()> {
    use operator::crd::{EventSink, EventSinkSpec, SecretKeyRef, WebhookSink};
    const WORKSPACE: &str = "studio.shot010";
    let rt = runtime()?;
    let storage = Storage::new()?;
    let m = Mount::new(&storage, &["--workspace", WORKSPACE])?;
    let keys = tempfile::tempdir()?;
    let sealing_key = drive::data::Kek::generate();
    let key_file = keys.path().join("sink-secrets.key");
    std::fs::write(&key_file, sealing_key.to_hex())?;
    let key_arg = key_file.display().to_string();
    let signing_secret = format!("whsec_{}", base64_of(&rand::random::<[u8; 24]>()));

    // The operator records the EventSink, reading its signing Secret over the API.
    let receiver = rt.block_on(Receiver::start(0))?;
    let sink = EventSink {
        metadata: kube::api::ObjectMeta {
            name: Some("review-hook".into()),
            namespace: Some("studio".into()),
            generation: Some(1),
            finalizers: Some(vec![operator::crd::FINALIZER.into()]),
            ..Default::default()
        },
        spec: EventSinkSpec {
            workspace: "shot010".into(),
            nats: None,
            webhook: Some(WebhookSink {
                url: receiver.url(),
                signing_secret_ref: Some(SecretKeyRef {
                    name: "review-hook-signing".into(),
                    key: "secret".into(),
                }),
            }),
            filter: Default::default(),
            start_from: Default::default(),
        },
        status: None,
    };
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "review-hook-signing", "namespace": "studio",
                     "labels": {"studiodrive.dev/event-sink-credential": "true"}},
        "data": {"secret": base64_of(format!("{signing_secret}\n").as_bytes())},
    });
    let meta = rt.block_on(PgMetaStore::connect(&MetaConfig::new(storage.url.clone())))?;
    let setup = common::OperatorSetup {
        sink_secret_key: Some(sealing_key.clone()),
        ..common::OperatorSetup::default()
    };
    let echo = serde_json::to_value(&sink)?;
    let mut calls = Vec::new();
    rt.block_on(common::reconcile_over_mock_api::<
        operator::reconcile::EventSinks,
        _,
    >(
        sink,
        operator::store::drive_adapter::MetaStoreAdapter(meta.clone()),
        &setup,
        |method, uri, _| {
            calls.push(format!("{method} {}", uri.path()));
            match (method, uri.path()) {
                ("GET", p) if p.ends_with("/secrets/review-hook-signing") => secret.clone(),
                ("PATCH", p) if p.ends_with("/status") => echo.clone(),
                ("POST", p) if p.contains("/events") => serde_json::json!({}),
                (method, path) => panic!("unexpected request {method} {path}"),
            }
        },
    ))?;
    assert!(
        calls.contains(&"GET /api/v1/namespaces/studio/secrets/review-hook-signing".to_string()),
        "{calls:?}"
    );
    let recorded = rt
        .block_on(meta.event_sink("studio/review-hook"))?
        .context("the operator recorded the sink")?;
    let sealed = recorded.spec.sealed_secret.clone().context("a sealed secret")?;
    let row = serde_json::to_string(&recorded.spec)?;
    assert!(
        !row.contains(&signing_secret[6..]),
        "the store holds the secret in clear: {row}"
    );
    assert_eq!(
        drive::relay::open_secret(&sealing_key, "studio/review-hook", &sealed)?,
        format!("{signing_secret}\n").as_bytes()
    );
    let start = recorded.position;

    // A NATS server that wants a token, and a sink holding it (put from the command line).
    let token = format!("tok{}", rand::random::<u64>());
    let nats = Nats::start_with_token(Some(&token))?;
    let token_file = keys.path().join("nats-token");
    std::fs::write(&token_file, &token)?;
    let nats_url = nats.url();
    let nats_sink = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "sink",
            "put",
            name,
            "--workspace",
            WORKSPACE,
            "--nats-url",
            &nats_url,
            "--subject",
            "sd.test",
            "--stream",
            "SDTEST",
        ];
        args.extend_from_slice(extra);
        storage.run_admin(&args)
    };
    nats_sink(
        "farm",
        &[
            "--secret-file",
            &token_file.display().to_string(),
            "--sink-secret-key-file",
            &key_arg,
        ],
    )?;
    nats_sink("farm-anonymous", &[])?;

    std::fs::create_dir(m.path("comp"))?;
    for i in 0..12 {
        std::fs::write(m.path(&format!("comp/f{i:04}.exr")), vec![i as u8; 3000])?;
    }
    let expected = rt.block_on(feed_of(&storage.url, WORKSPACE, start))?;
    assert!(expected.len() >= 13, "{} events", expected.len());

    let sink_error = |name: &str| {
        rt.block_on(async {
            let r = meta.event_sink(name).await?.context("sink")?;
            anyhow::Ok(r.last_error)
        })
    };
    // A relay without the key sends nothing unsigned: the sink fails, saying why.
    {
        let _keyless = RelayProcess::start(&storage, None)?;
        assert!(
            eventually(Duration::from_secs(30), || sink_error("studio/review-hook")
                .is_ok_and(|e| e.contains("no sink secrets key"))),
            "the keyless relay's error: {:?}",
            sink_error("studio/review-hook")
        );
    }
    assert_eq!(receiver.requests.load(std::sync::atomic::Ordering::SeqCst), 0);

    // With the key: every event arrives signed, and the standard's library verifies each.
    let _relay = RelayProcess::start_with(&storage, None, &["--sink-secret-key-file", &key_arg])?;
    let complete = eventually(Duration::from_secs(60), || {
        let ids: BTreeSet<i64> = receiver
            .delivered()
            .unwrap_or_default()
            .iter()
            .map(|d| d.event_id)
            .collect();
        expected.iter().all(|e| ids.contains(&e.id))
    });
    assert!(complete, "the signed webhook did not get every event in 60 s");
    let accepted = receiver.accepted();
    for (headers, body) in &accepted {
        let event: serde_json::Value = serde_json::from_slice(body)?;
        assert_eq!(
            headers.get("webhook-id"),
            event["id"].as_str().map(str::to_string).as_ref()
        );
    }
    let n = accepted.len();
    assert_eq!(
        standard_webhooks_verify(&signing_secret, &accepted)?,
        format!("{n} {}", 2 * n)
    );

    // NATS: the sink with the token gets every event; the anonymous one is refused.
    let got_all = eventually(Duration::from_secs(60), || {
        let messages = rt.block_on(async {
            let client = async_nats::ConnectOptions::with_token(token.clone())
                .connect(nats.url())
                .await?;
            stream_messages_of(client, "SDTEST").await
        });
        messages.is_ok_and(|ms| {
            let ids: BTreeSet<i64> = ms.iter().map(|d| d.event_id).collect();
            expected.iter().all(|e| ids.contains(&e.id))
        })
    });
    assert!(got_all, "the NATS sink with the token did not get every event");
    assert!(
        eventually(Duration::from_secs(30), || sink_error("farm-anonymous")
            .is_ok_and(|e| e.to_lowercase().contains("authoriz"))),
        "the anonymous NATS sink's error: {:?}",
        sink_error("farm-anonymous")
    );
    Ok(())
}

//! Shared test support: a `studiodrive-csi mount` process on a temp dir, over the shared test
//! PostgreSQL and a local block directory, unmounted on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use drive_testkit::pg::PgServer;

/// The binary under test: cargo builds it before this package's integration tests, so it is
/// never older than the code the tests were built from.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_studiodrive-csi"))
}

/// A command running [`binary`] with no cache free-space floor: a test machine's disk may
/// sit below the 15% default, where a cache keeps nothing and every test that counts cached
/// blocks would fail for a reason of the host's. Tests of the floor pass `--cache-min-free`,
/// which wins over the variable.
pub fn studiodrive() -> Command {
    let mut cmd = Command::new(binary());
    cmd.env("STUDIODRIVE_CACHE_MIN_FREE", "0");
    cmd
}

/// Fails the test (never passes it) where a FUSE mount cannot work: every test of this tier
/// mounts. `scripts/test.sh` leaves the tier out, saying why, on machines without FUSE.
pub fn require_fuse() {
    let root = nix::unistd::geteuid().is_root();
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse");
    assert!(
        root && fuse.is_ok(),
        "this test mounts FUSE and needs root and a usable /dev/fuse (root: {root}, /dev/fuse: {:?}); \
         ./scripts/test.sh reports the FUSE tier as skipped where they are missing",
        fuse.err()
    );
}

/// Storage shared by the mounts of one test: a database and a block directory.
pub struct Storage {
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl Storage {
    pub fn new() -> anyhow::Result<Storage> {
        Storage::on(PgServer::shared())
    }

    /// [`Storage::new`] for async tests.
    pub async fn create() -> anyhow::Result<Storage> {
        Storage::create_on(PgServer::shared()).await
    }

    /// Storage whose database lives on `pg` (a server of the test's own, e.g. a durable one).
    pub fn on(pg: &PgServer) -> anyhow::Result<Storage> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(Storage::create_on(pg))
    }

    async fn create_on(pg: &PgServer) -> anyhow::Result<Storage> {
        require_fuse();
        let db = pg.create_database().await?;
        Ok(Storage {
            url: pg.url(&db),
            dir: tempfile::tempdir()?,
        })
    }

    pub fn args(&self) -> Vec<String> {
        vec![
            "--metadata-url".into(),
            self.url.clone(),
            "--store".into(),
            format!("file://{}", self.dir.path().join("blocks").display()),
        ]
    }
}

/// A live mount.
pub struct Mount {
    pub dir: PathBuf,
    _holder: Option<tempfile::TempDir>,
    child: Option<Child>,
    pub state: tempfile::TempDir,
}

/// Whether a FUSE mount sits at `dir` (absolute), dead or alive.
pub fn is_mounted(dir: &Path) -> bool {
    drive_csi::mount_table::fuse_mounts_at(dir) > 0
}

impl Mount {
    /// Mounts the workspace of `backend` (a [`Storage`], an [`S3Storage`]) on a fresh temp dir.
    pub fn new(backend: &dyn Backend, extra: &[&str]) -> anyhow::Result<Mount> {
        let holder = tempfile::tempdir()?;
        let dir = holder.path().join("mnt");
        std::fs::create_dir(&dir)?;
        let mut m = Mount::at(backend, &dir, extra)?;
        m._holder = Some(holder);
        Ok(m)
    }

    /// Mounts on `dir`.
    pub fn at(backend: &dyn Backend, dir: &Path, extra: &[&str]) -> anyhow::Result<Mount> {
        let state = tempfile::tempdir()?;
        let mut cmd = studiodrive();
        cmd.arg("mount")
            .args(backend.storage_args())
            .arg("--state-dir")
            .arg(state.path())
            .args(extra)
            .arg("--foreground")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // Not canonicalize(dir): a dead mount point fails stat with ENOTCONN until cleaned.
        let parent = dir.parent().context("mount point has a parent")?;
        let dir = std::fs::canonicalize(parent)?.join(dir.file_name().context("mount point name")?);
        let mut child = cmd.spawn().context("start studiodrive-csi mount")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        // A dead mount left on `dir` (kill -9) is still listed, and the kernel may answer stat
        // from cached attributes; listing the root reaches the file system.
        while !(is_mounted(&dir) && std::fs::read_dir(&dir).is_ok()) {
            if let Some(status) = child.try_wait()? {
                bail!("mount exited early: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("mount did not appear");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Mount {
            dir,
            _holder: None,
            child: Some(child),
            state,
        })
    }

    /// The mount process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// SIGKILL: the kernel mount stays behind, dead.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait: a clean unmount.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("not running")
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(c.wait()?)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        if is_mounted(&self.dir) {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Polls `check` until it returns true or `limit` passes (a deadline, not a sleep-as-sync).
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// Block stores other than the plaintext file store (fuse_stores.rs, metrics.rs): the storage
// flags of a mount behind a trait, an S3 bucket on the test S3 server, and mounts over either.

/// Where a mount's metadata and blocks live: the storage flags `mount` and the admin commands
/// take.
pub trait Backend {
    fn storage_args(&self) -> Vec<String>;

    /// Runs an admin subcommand over this storage and returns its stdout. Logs below warnings
    /// are off: the binary logs to stdout, where they would mix with the output.
    fn run_admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = studiodrive()
            .args(args)
            .args(self.storage_args())
            .env("RUST_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Backend for Storage {
    fn storage_args(&self) -> Vec<String> {
        self.args()
    }
}

/// Blocks in bucket `studio` (prefix `drive`) of an S3 server of the test's own, with fault
/// injection ([`drive_testkit::s3::S3Server::faults`]); metadata in a database of its own.
pub struct S3Storage {
    /// The database (its block directory stays unused).
    pub meta: Storage,
    pub s3: drive_testkit::s3::S3Server,
    /// `--s3-max-attempts`: attempts per S3 request before an operation fails.
    pub max_attempts: u32,
    credentials: PathBuf,
}

impl S3Storage {
    pub const BUCKET: &'static str = "studio";
    pub const PREFIX: &'static str = "drive";

    /// On the shared test PostgreSQL.
    pub fn new(max_attempts: u32) -> anyhow::Result<S3Storage> {
        S3Storage::with(Storage::new()?, max_attempts)
    }

    /// [`S3Storage::new`] for async tests.
    pub async fn create(max_attempts: u32) -> anyhow::Result<S3Storage> {
        S3Storage::with(Storage::create().await?, max_attempts)
    }

    /// With its database on `pg` (a server of the test's own, e.g. one it stops).
    pub fn on(pg: &PgServer, max_attempts: u32) -> anyhow::Result<S3Storage> {
        S3Storage::with(Storage::on(pg)?, max_attempts)
    }

    fn with(meta: Storage, max_attempts: u32) -> anyhow::Result<S3Storage> {
        let s3 = drive_testkit::s3::S3Server::start()?;
        s3.create_bucket(S3Storage::BUCKET)?;
        let credentials = meta.dir.path().join("s3-credentials");
        std::fs::write(
            &credentials,
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                drive_testkit::s3::ACCESS_KEY,
                drive_testkit::s3::SECRET_KEY
            ),
        )?;
        Ok(S3Storage {
            meta,
            s3,
            max_attempts,
            credentials,
        })
    }

    /// The files holding this storage's objects on the S3 server, sorted.
    pub fn objects(&self) -> anyhow::Result<Vec<PathBuf>> {
        self.s3.objects(S3Storage::BUCKET, S3Storage::PREFIX)
    }
}

impl Backend for S3Storage {
    fn storage_args(&self) -> Vec<String> {
        vec![
            "--metadata-url".into(),
            self.meta.url.clone(),
            "--store".into(),
            format!("s3://{}/{}", S3Storage::BUCKET, S3Storage::PREFIX),
            "--s3-endpoint".into(),
            self.s3.endpoint(),
            "--s3-region".into(),
            drive_testkit::s3::REGION.into(),
            "--s3-credentials-file".into(),
            self.credentials.display().to_string(),
            "--s3-max-attempts".into(),
            self.max_attempts.to_string(),
        ]
    }
}

/// The errno of a failed call, or a panic naming what succeeded instead.
pub fn errno_of<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("{what} succeeded ({v:?}); an error was expected"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: {e} has no errno")),
    }
}

/// Asserts `got == want` for file contents without printing megabytes: the lengths and the
/// first differing offset.
#[track_caller]
pub fn assert_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes read, {} expected; first difference at {:?}",
            got.len(),
            want.len(),
            at.or(Some(got.len().min(want.len())))
        );
    }
}

/// The Prometheus text format served at `http://ADDR/metrics`.
pub fn scrape(addr: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("an HTTP response")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET /metrics: {head}");
    Ok(body.to_string())
}

/// One sample line of the Prometheus text format: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition (comments left out).
pub fn samples(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').context("a sample line")?;
        let value: f64 = value.parse().with_context(|| format!("the value of {line}"))?;
        let (name, mut rest) = match series.split_once('{') {
            Some((n, r)) => (n, r.strip_suffix('}').context("labels end with }")?),
            None => (series, ""),
        };
        let mut labels = Vec::new();
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").context("label=\"value\"")?;
            // The value ends at the first quote not escaped by a backslash.
            let mut end = None;
            let mut escaped = false;
            for (i, ch) in after.char_indices() {
                match ch {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end.context("a closed label value")?;
            labels.push((
                key.to_string(),
                after[..end].replace("\\\"", "\"").replace("\\\\", "\\"),
            ));
            rest = after[end + 1..].trim_start_matches(',');
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// The value of the sample `name` with exactly `labels`, in a scrape.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    samples(text).ok()?.into_iter().find_map(|s| {
        let mut got = s.labels.clone();
        got.sort();
        (s.name == name && got == want).then_some(s.value)
    })
}

// The CSI plugin (csi_driver.rs, csi_sanity.rs, metrics.rs).

use tonic::transport::Channel;

/// A running `studiodrive-csi serve`.
pub struct Plugin {
    child: Option<Child>,
    pub state: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    pub channel: Channel,
}

impl Plugin {
    /// `serve` on `storage`. Without a Kubernetes API here, tests run it with
    /// `--authorization none` unless `extra` chooses (`--authorization`, `--kubeconfig`).
    pub async fn start(storage: &Storage, state: &Path, extra: &[&str]) -> anyhow::Result<Plugin> {
        Plugin::start_on(storage, state, extra).await
    }

    /// [`Plugin::start`] over any storage (an S3 bucket as the node's store).
    pub async fn start_on(backend: &dyn Backend, state: &Path, extra: &[&str]) -> anyhow::Result<Plugin> {
        let mut args: Vec<String> = backend.storage_args();
        args.extend([
            "--state-dir".into(),
            state.display().to_string(),
            "--node-id".into(),
            "node-1".into(),
        ]);
        if !extra
            .iter()
            .any(|a| *a == "--authorization" || *a == "--kubeconfig")
        {
            args.extend(["--authorization".into(), "none".into()]);
        }
        args.extend(extra.iter().map(ToString::to_string));
        Plugin::launch(state, args).await
    }

    /// `serve` with exactly `args` (beside the endpoint), state in `state`.
    pub async fn launch(state: &Path, args: Vec<String>) -> anyhow::Result<Plugin> {
        let socket = state.join("csi.sock");
        let log = state.join("plugin.log");
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = studiodrive()
            .arg("serve")
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .args(&args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("start studiodrive-csi serve")?;
        let mut plugin = Plugin {
            child: Some(child),
            state: state.to_path_buf(),
            log,
            args,
            channel: Channel::from_static("http://[::]:1").connect_lazy(),
        };
        let mut ready = false;
        for _ in 0..600 {
            if let Some(status) = plugin.child.as_mut().unwrap().try_wait()? {
                anyhow::bail!(
                    "plugin exited: {status}: {}",
                    std::fs::read_to_string(&plugin.log)?
                );
            }
            if socket.exists() {
                let channel =
                    tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))?
                        .connect()
                        .await;
                if let Ok(channel) = channel {
                    plugin.channel = channel;
                    let probe =
                        drive_csi::csi::proto::identity_client::IdentityClient::new(plugin.channel.clone())
                            .probe(drive_csi::csi::proto::ProbeRequest {})
                            .await?;
                    if probe.into_inner().ready == Some(true) {
                        ready = true;
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::ensure!(
            ready,
            "plugin not ready: {}",
            std::fs::read_to_string(&plugin.log)?
        );
        Ok(plugin)
    }

    /// A new plugin on the same state directory and flags.
    pub async fn restart(&self) -> anyhow::Result<Plugin> {
        Plugin::launch(&self.state, self.args.clone()).await
    }

    pub fn node(&self) -> drive_csi::csi::proto::node_client::NodeClient<Channel> {
        drive_csi::csi::proto::node_client::NodeClient::new(self.channel.clone())
    }

    pub fn controller(&self) -> drive_csi::csi::proto::controller_client::ControllerClient<Channel> {
        drive_csi::csi::proto::controller_client::ControllerClient::new(self.channel.clone())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The plugin's CSI socket.
    pub fn socket(&self) -> PathBuf {
        self.state.join("csi.sock")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.kill9();
    }
}

use drive_csi::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
use drive_csi::csi::proto::{self as csi, VolumeCapability};

/// A mount capability with access mode `mode`.
pub fn mount_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// A NodePublishVolume of `volume` at `target` with volume context `ctx`.
pub fn publish_req(volume: &str, target: &Path, ctx: &[(&str, &str)]) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: volume.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        volume_context: ctx.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

pub fn unpublish_req(volume: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: volume.into(),
        target_path: target.display().to_string(),
    }
}

/// Test storage with a "default" workspace (folder volumes are created in it).
pub async fn storage_with_default_workspace() -> anyhow::Result<Storage> {
    drive_testkit::install_crypto_provider();
    let storage = Storage::create().await?;
    let meta = drive::PgMetaStore::connect(&drive::MetaConfig::new(storage.url.clone())).await?;
    meta.create_workspace(
        &drive::model::Actor::system("test"),
        &drive::model::WorkspaceSpec::new("default", drive::model::WorkspaceKind::User),
    )
    .await?;
    Ok(storage)
}

// Calls as kubelet makes them (csi_driver.rs, access.rs).

use tonic::Code;

/// FUSE mounts exactly at `path`.
pub fn mounts_at(path: &Path) -> usize {
    drive_csi::mount_table::fuse_mounts_at(path)
}

pub fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

// A stand-in Kubernetes API server (access.rs, csi_driver.rs).

/// A pod identity the stand-in API server vouches for.
#[derive(Debug, Clone)]
pub struct Vouched {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// The audience the token was issued for.
    pub audience: String,
}

/// A stand-in Kubernetes API server answering TokenReviews (authentication.k8s.io/v1) from a
/// table of tokens, for a real `studiodrive-csi serve` process (kube's in-process mock
/// service cannot reach another process; this answers the same requests over HTTP). Unknown
/// tokens are not authenticated; [`KubeApi::stop`] makes the API unreachable.
pub struct KubeApi {
    pub kubeconfig: PathBuf,
    tokens: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vouched>>>,
    reviews: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl KubeApi {
    pub async fn start() -> anyhow::Result<KubeApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: stub\n\
                 clusters: [{{name: stub, cluster: {{server: \"http://{addr}\"}}}}]\n\
                 users: [{{name: stub, user: {{token: node-plugin}}}}]\n\
                 contexts: [{{name: stub, context: {{cluster: stub, user: stub}}}}]\n"
            ),
        )?;
        let tokens: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vouched>>> =
            Default::default();
        let reviews: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
        let (t, r) = (tokens.clone(), reviews.clone());
        let server = tokio::spawn(async move {
            // Connections live in this set: aborting the server closes them too.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (t, r) = (t.clone(), r.clone());
                let service = hyper::service::service_fn(move |req| {
                    let (t, r) = (t.clone(), r.clone());
                    async move { Ok::<_, std::convert::Infallible>(answer_review(req, &t, &r).await) }
                });
                connections.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Ok(KubeApi {
            kubeconfig,
            tokens,
            reviews,
            server,
            _dir: dir,
        })
    }

    /// Makes `token` stand for `who`.
    pub fn vouch(&self, token: &str, who: Vouched) {
        self.tokens.lock().unwrap().insert(token.to_string(), who);
    }

    /// TokenReviews answered so far.
    pub fn reviews(&self) -> usize {
        self.reviews.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The API becomes unreachable (connections refused).
    pub fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer_review(
    req: hyper::Request<hyper::body::Incoming>,
    tokens: &std::sync::Mutex<std::collections::HashMap<String, Vouched>>,
    reviews: &std::sync::atomic::AtomicUsize,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt as _;
    let reply = |status: u16, body: serde_json::Value| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
            .unwrap()
    };
    if req.method() != hyper::Method::POST
        || req.uri().path() != "/apis/authentication.k8s.io/v1/tokenreviews"
    {
        return reply(
            404,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not served by the stub"}),
        );
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    reviews.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let token = sent["spec"]["token"].as_str().unwrap_or_default();
    let asked: Vec<String> = serde_json::from_value(sent["spec"]["audiences"].clone()).unwrap_or_default();
    let who = tokens.lock().unwrap().get(token).cloned();
    let status = match who {
        Some(w) if asked.contains(&w.audience) => serde_json::json!({
            "authenticated": true,
            "audiences": [w.audience],
            "user": {
                "username": format!("system:serviceaccount:{}:{}", w.namespace, w.service_account),
                "uid": "sa-uid",
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", w.namespace), "system:authenticated"],
                "extra": {
                    "authentication.kubernetes.io/pod-name": [w.pod_name],
                    "authentication.kubernetes.io/pod-uid": [w.pod_uid]
                }
            }
        }),
        _ => serde_json::json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    reply(
        201,
        serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": sent["spec"], "status": status}),
    )
}

/// How the operator runs in a cross-face test: its Job settings and its clock.
pub struct OperatorSetup {
    pub gc: operator::gc_job::GcJobSettings,
    pub preload: operator::preload_job::PreloadJobSettings,
    pub sink_secret_key: Option<drive::data::Kek>,
    pub clock: fn() -> jiff::Timestamp,
}

impl Default for OperatorSetup {
    fn default() -> OperatorSetup {
        OperatorSetup {
            gc: Default::default(),
            preload: Default::default(),
            sink_secret_key: None,
            clock: jiff::Timestamp::now,
        }
    }
}

/// One reconcile of `obj` by the operator (kind `K`) over the real store `store`, with kube's
/// mock service as the API server: `answer(method, uri, body)` is what the server replies
/// (with 200). Returns when the reconcile does.
pub async fn reconcile_over_mock_api<K, S>(
    obj: K::Resource,
    store: S,
    setup: &OperatorSetup,
    mut answer: impl FnMut(&str, &http::Uri, &[u8]) -> serde_json::Value,
) -> anyhow::Result<()>
where
    K: operator::reconcile::LiveKind,
    S: operator::store::StudioStore,
{
    use http_body_util::BodyExt as _;
    use kube::client::Body;
    use kube::runtime::events::{Recorder, Reporter};
    let (service, mut handle) = tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    let client = kube::Client::new(service, "default");
    let reporter = Reporter {
        controller: "studiodrive-operator".into(),
        instance: Some("test".into()),
    };
    let ctx = std::sync::Arc::new(operator::reconcile::Context {
        client: client.clone(),
        store,
        recorder: Recorder::new(client, reporter),
        metrics: std::sync::Arc::new(operator::metrics::Metrics::new()?),
        clock: setup.clock,
        backoff: operator::reconcile::Backoff::default(),
        gc: setup.gc.clone(),
        preload: setup.preload.clone(),
        sink_secret_key: setup.sink_secret_key.clone(),
    });
    let api = async {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.expect("request body").to_bytes();
            let reply = answer(parts.method.as_str(), &parts.uri, &body);
            let body = Body::from(serde_json::to_vec(&reply).expect("JSON"));
            send.send_response(
                http::Response::builder()
                    .status(200)
                    .body(body)
                    .expect("response"),
            );
        }
    };
    tokio::select! {
        result = operator::reconcile::reconcile::<K, S>(std::sync::Arc::new(obj), ctx) => {
            result.context("reconcile")?;
        }
        () = api => bail!("the mock API closed first"),
    }
    Ok(())
}

/// A virtualenv under the target directory with `requirement` (pinned) installed from PyPI on
/// first use. Returns the virtualenv's directory.
pub fn pypi_venv(name: &str, requirement: &str) -> anyhow::Result<std::path::PathBuf> {
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    // Written once the install succeeded: a half-made virtualenv is made again.
    let done = venv.join(format!(".installed-{requirement}"));
    if !done.exists() {
        let made = std::process::Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .status()?;
        let installed = made.success()
            && std::process::Command::new(venv.join("bin/pip"))
                .args(["install", "-q", requirement])
                .status()?
                .success();
        if !installed {
            anyhow::bail!(
                "could not install {requirement} from PyPI into {}",
                venv.display()
            );
        }
        std::fs::write(&done, b"")?;
    }
    Ok(venv)
}

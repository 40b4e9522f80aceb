//! A real S3 server on 127.0.0.1 for tests and benchmarks (s3s-fs over a temp directory), with
//! fault injection in front of it.
//!
//! Faults are injected at the server's HTTP front, after the request is read and before s3s
//! sees it, so a client experiences exactly what a flaky object store does: error statuses
//! (500, 503 "SlowDown"), slow responses, response bodies that stall part-way, and
//! connections closed without a response. Each object of a bucket is a plain file under
//! `root()/bucket/`, so tests can count and inspect objects directly.
//!
//! s3s-fs keeps every key as a file path, which loses two things file-system clients of S3
//! (s3fs, rclone) rely on; `Store` restores them in front of it:
//! - Folder marker objects (`dir/`, zero bytes, with user metadata). s3s-fs turns one into a
//!   plain directory, so `HEAD dir/` fails (500: it hashes a directory), `HEAD dir` finds the
//!   directory and fails the same way instead of answering 404, and listings never show the
//!   marker. `Store` records each marker under `root/.dir-markers/` (not a valid bucket name,
//!   so never listed as a bucket) and serves HEAD, GET, COPY, DELETE and listings of it.
//! - An empty `delimiter=` means "no delimiter" (rclone's recursive listing sends it); s3s-fs
//!   treated it as a delimiter matching everywhere and listed a one-character prefix per key.
//!
//! `Store` also pages listings itself from the last full listing it read, kept until the next
//! change to any bucket made through the server (s3s-fs re-reads the whole directory for
//! every page). Files a test changes directly under `root()` are listed after the next such
//! change.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::S3 as _;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

/// Access key accepted by every test server.
pub const ACCESS_KEY: &str = "studiodrive-test";
/// Secret key accepted by every test server.
pub const SECRET_KEY: &str = "studiodrive-test-secret";
/// Region the test clients sign for.
pub const REGION: &str = "us-east-1";

/// What to do to a request that matches a fault rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status (500, 503, ...) and an S3 error body.
    Status(u16),
    /// Answer with this HTTP status and S3 error code (403 "InvalidObjectState": a GET of an
    /// object in an archive storage class).
    Error { status: u16, code: &'static str },
    /// Close the connection without answering.
    Drop,
    /// Wait this long, then serve the request normally.
    Delay(Duration),
    /// Serve the request, but stop sending the response body for `stall` after its first
    /// `after` bytes (a download whose connection goes quiet once the headers are through;
    /// then the rest follows).
    StallBody { after: u64, stall: Duration },
}

#[derive(Debug, Clone)]
struct Rule {
    method: Option<hyper::Method>,
    remaining: Option<u64>,
    fault: Fault,
}

/// Faults to inject, shared between the test and the server. Rules are tried in the order
/// added; a rule with a count is used up after that many matching requests.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<VecDeque<Rule>>,
    injected: AtomicU64,
}

impl Faults {
    /// The next `count` requests (of `method`, or of any method) get `fault`.
    pub fn next(&self, method: Option<&str>, count: u64, fault: Fault) {
        self.push(method, Some(count), fault);
    }

    /// Every request (of `method`, or any) gets `fault` until [`Faults::clear`].
    pub fn always(&self, method: Option<&str>, fault: Fault) {
        self.push(method, None, fault);
    }

    /// Removes every rule: the server is healthy again.
    pub fn clear(&self) {
        self.rules.lock().expect("fault rules lock").clear();
    }

    /// How many requests got a fault so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn push(&self, method: Option<&str>, remaining: Option<u64>, fault: Fault) {
        let method = method.map(|m| m.parse().expect("an HTTP method name"));
        self.rules.lock().expect("fault rules lock").push_back(Rule {
            method,
            remaining,
            fault,
        });
    }

    fn take(&self, method: &hyper::Method) -> Option<Fault> {
        let mut rules = self.rules.lock().expect("fault rules lock");
        let pos = rules
            .iter()
            .position(|r| r.method.as_ref().is_none_or(|m| m == method))?;
        let rule = &mut rules[pos];
        let fault = rule.fault;
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                rules.remove(pos);
            }
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(fault)
    }
}

/// Requests the server saw, by method (counted before faults are applied).
#[derive(Debug, Default)]
pub struct RequestCounts {
    pub get: AtomicU64,
    pub put: AtomicU64,
    pub post: AtomicU64,
    pub delete: AtomicU64,
    pub other: AtomicU64,
    /// Uploads whose body was not signed (`x-amz-content-sha256: UNSIGNED-PAYLOAD`).
    pub unsigned: AtomicU64,
    /// Requests being handled now (see [`RequestCounts::in_flight`]).
    active: AtomicU64,
    /// CopyObject requests, in order (s3s-fs keeps no storage class, so tests read the
    /// request instead).
    copies: Mutex<Vec<CopyRequest>>,
}

/// A CopyObject request as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRequest {
    /// The request path ("/bucket/key").
    pub path: String,
    /// `x-amz-copy-source`.
    pub source: String,
    /// `x-amz-storage-class`, if sent.
    pub storage_class: Option<String>,
    /// `x-amz-metadata-directive`, if sent.
    pub metadata_directive: Option<String>,
}

/// Counts a request as in flight until dropped (also when the connection closes and the
/// server drops the handler).
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RequestCounts {
    fn count<B>(&self, req: &hyper::Request<B>) {
        let unsigned = req
            .headers()
            .get("x-amz-content-sha256")
            .is_some_and(|v| v.as_bytes() == b"UNSIGNED-PAYLOAD");
        if unsigned {
            self.unsigned.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(source) = req.headers().get("x-amz-copy-source") {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            self.copies.lock().expect("copy log lock").push(CopyRequest {
                path: req.uri().path().to_string(),
                source: String::from_utf8_lossy(source.as_bytes()).into_owned(),
                storage_class: header("x-amz-storage-class"),
                metadata_directive: header("x-amz-metadata-directive"),
            });
        }
        let counter = match *req.method() {
            hyper::Method::GET => &self.get,
            hyper::Method::PUT => &self.put,
            hyper::Method::POST => &self.post,
            hyper::Method::DELETE => &self.delete,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn enter(&self) -> InFlight<'_> {
        self.active.fetch_add(1, Ordering::SeqCst);
        InFlight(&self.active)
    }

    /// Requests the server is still handling: faults being applied (a delay still running)
    /// and requests being served up to their response head. A PUT counted here may still
    /// write its object, even when its client gave up long ago; once this is 0, every
    /// request received so far has had its full effect on the stored objects.
    pub fn in_flight(&self) -> u64 {
        self.active.load(Ordering::SeqCst)
    }

    /// CopyObject requests so far, in order.
    pub fn copies(&self) -> Vec<CopyRequest> {
        self.copies.lock().expect("copy log lock").clone()
    }

    /// GET requests so far.
    pub fn gets(&self) -> u64 {
        self.get.load(Ordering::Relaxed)
    }

    /// PUT requests so far (single uploads and multipart parts).
    pub fn puts(&self) -> u64 {
        self.put.load(Ordering::Relaxed)
    }
}

/// A running S3 server. Stops (and removes its data, when it owns the directory) on drop.
pub struct S3Server {
    addr: SocketAddr,
    root: PathBuf,
    faults: Arc<Faults>,
    requests: Arc<RequestCounts>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl S3Server {
    /// Starts a server over a fresh temp directory on 127.0.0.1 with a free port.
    pub fn start() -> anyhow::Result<S3Server> {
        let dir = tempfile::Builder::new().prefix("studiodrive-s3-").tempdir()?;
        let root = dir.path().to_path_buf();
        let mut server = S3Server::serve(&root, "127.0.0.1:0".parse()?)?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// Serves the directory `root` (kept on drop) on `addr`.
    pub fn serve(root: &Path, addr: SocketAddr) -> anyhow::Result<S3Server> {
        std::fs::create_dir_all(root)?;
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let fs = s3s_fs::FileSystem::new(root)
            .map_err(|e| anyhow::anyhow!("s3s-fs over {}: {e:?}", root.display()))?;
        let mut builder = S3ServiceBuilder::new(Store::new(fs, root));
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let faults = Arc::new(Faults::default());
        let requests = Arc::new(RequestCounts::default());
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let (f, r) = (faults.clone(), requests.clone());
        // Its own runtime and thread: the server outlives any test's runtime.
        let thread = std::thread::Builder::new()
            .name("s3-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("s3 server runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let http = ConnBuilder::new(TokioExecutor::new());
                    loop {
                        let socket = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((socket, _)) => {
                                    // As S3 and MinIO do: without it a response's head and
                                    // body can wait on Nagle's algorithm and the client's
                                    // delayed ACK, 40 ms per small ranged GET.
                                    let _ = socket.set_nodelay(true);
                                    socket
                                }
                                Err(_) => continue,
                            },
                            _ = &mut rx => break,
                        };
                        let (service, faults, requests) = (service.clone(), f.clone(), r.clone());
                        let handler = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let (service, faults, requests) =
                                (service.clone(), faults.clone(), requests.clone());
                            async move {
                                requests.count(&req);
                                let _in_flight = requests.enter();
                                let mut stall = None;
                                match faults.take(req.method()) {
                                    None => {}
                                    Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
                                    Some(Fault::Drop) => {
                                        return Err(s3s::HttpError::new("injected connection drop".into()));
                                    }
                                    Some(Fault::Status(code)) => {
                                        // Read the request first, as S3 does: answering before
                                        // the body is read makes the client's write race the
                                        // connection's close (a broken pipe, not the status).
                                        drain(req.into_body()).await;
                                        return Ok(error_response(code));
                                    }
                                    Some(Fault::Error { status, code }) => {
                                        drain(req.into_body()).await;
                                        return Ok(error_response_with(
                                            status,
                                            code,
                                            "Injected by the test.",
                                        ));
                                    }
                                    Some(Fault::StallBody { after, stall: d }) => stall = Some((after, d)),
                                }
                                let resp = hyper::service::Service::call(&service, req).await;
                                match stall {
                                    None => resp,
                                    Some((after, d)) => resp.map(|r| {
                                        r.map(|body| s3s::Body::http_body(StalledBody::new(body, after, d)))
                                    }),
                                }
                            }
                        });
                        let conn = http.serve_connection(TokioIo::new(socket), handler).into_owned();
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                });
            })?;
        Ok(S3Server {
            addr,
            root: root.to_path_buf(),
            faults,
            requests,
            shutdown: Some(tx),
            thread: Some(thread),
            _dir: None,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The directory holding the buckets.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates a bucket (a directory, as s3s-fs keeps them).
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.root.join(name))?;
        Ok(())
    }

    /// Fault injection for this server.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Requests seen so far.
    pub fn requests(&self) -> &RequestCounts {
        &self.requests
    }

    /// Paths of the objects stored in `bucket` under `prefix`, sorted.
    pub fn objects(&self, bucket: &str, prefix: &str) -> anyhow::Result<Vec<PathBuf>> {
        let base = self.root.join(bucket);
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    stack.push(path);
                } else if path
                    .strip_prefix(&base)
                    .is_ok_and(|rel| rel.to_string_lossy().starts_with(prefix))
                {
                    out.push(path);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A response body that pauses once, for `stall`, after its first `after` bytes
/// ([`Fault::StallBody`]). Its size hint stays the inner body's, so the declared length is
/// kept and a client that gives up mid-way sees a short body.
struct StalledBody {
    inner: std::pin::Pin<Box<s3s::Body>>,
    after: u64,
    sent: u64,
    stall: Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    stalled: bool,
    /// The part of a frame past `after`, sent once the stall is over.
    held: Option<bytes::Bytes>,
}

impl StalledBody {
    fn new(inner: s3s::Body, after: u64, stall: Duration) -> StalledBody {
        StalledBody {
            inner: Box::pin(inner),
            after,
            sent: 0,
            stall,
            sleep: None,
            stalled: false,
            held: None,
        }
    }
}

impl hyper::body::Body for StalledBody {
    type Data = bytes::Bytes;
    type Error = s3s::StdError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, s3s::StdError>>> {
        use std::future::Future as _;
        use std::task::Poll;
        let this = self.get_mut();
        if this.sent >= this.after && !this.stalled {
            let stall = this.stall;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.stalled = true;
        }
        if let Some(rest) = this.held.take() {
            this.sent += rest.len() as u64;
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(rest))));
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    if !this.stalled && this.sent + data.len() as u64 > this.after {
                        this.held = Some(data.split_off((this.after - this.sent) as usize));
                    }
                    this.sent += data.len() as u64;
                    Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

async fn drain(mut body: hyper::body::Incoming) {
    use hyper::body::Body as _;
    let mut body = std::pin::Pin::new(&mut body);
    while let Some(Ok(_)) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {}
}

fn error_response(code: u16) -> s3s::HttpResponse {
    let (s3_code, message) = match code {
        503 => ("SlowDown", "Please reduce your request rate."),
        500 => (
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        _ => ("InjectedFault", "Injected by the test."),
    };
    error_response_with(code, s3_code, message)
}

fn error_response_with(code: u16, s3_code: &str, message: &str) -> s3s::HttpResponse {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{s3_code}</Code><Message>{message}</Message></Error>"
    );
    let mut resp = hyper::Response::new(s3s::Body::from(body));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    resp
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Marker of an S3 folder object recorded beside s3s-fs's data.
const MARKERS_DIR: &str = ".dir-markers";
/// Name of the record file inside a marker's directory.
const MARKER_FILE: &str = ".marker";
/// ETag of an empty body (MD5 of nothing).
const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// A boxed future as `async_trait` expands it: the methods [`delegate!`] writes are expanded
/// after `#[async_trait]` has run, so they spell it out.
type BoxFut<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = s3s::S3Result<s3s::S3Response<T>>> + Send + 'a>>;

/// s3s-fs plus folder marker objects and S3's empty-delimiter rule (see the module docs).
struct Store {
    inner: s3s_fs::FileSystem,
    root: PathBuf,
    listings: Listings,
}

/// The last full listing, kept for the following pages of the same walk: s3s-fs reads the
/// whole directory for each request, so paging through a 100k-key folder 1,000 keys at a time
/// re-read it 100 times (over ten minutes for one `ls`).
#[derive(Default)]
struct Listings {
    /// Bumped after every change to any bucket; a listing built under an older value is stale.
    generation: AtomicU64,
    last: Mutex<Option<Listing>>,
}

/// One full, sorted listing: objects and rolled-up prefixes by name.
struct Listing {
    generation: u64,
    bucket: String,
    prefix: String,
    delimiter: Option<String>,
    entries: Arc<Vec<(String, ListEntry)>>,
}

enum ListEntry {
    Object(Box<s3s::dto::Object>),
    Prefix,
}

impl Listings {
    /// Held across a change to a bucket: dropping it (once the change is done, whether it
    /// succeeded or not) voids the listings read before, so one read while the change ran is
    /// never kept as current.
    fn change(&self) -> ChangeGuard<'_> {
        ChangeGuard(self)
    }
}

/// See [`Listings::change`].
struct ChangeGuard<'a>(&'a Listings);

impl Drop for ChangeGuard<'_> {
    fn drop(&mut self) {
        self.0.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// A folder marker: its user metadata and content type, and when it was written.
struct Marker {
    content_type: Option<String>,
    metadata: Option<s3s::dto::Metadata>,
    modified: s3s::dto::Timestamp,
}

impl Store {
    fn new(inner: s3s_fs::FileSystem, root: &Path) -> Store {
        Store {
            inner,
            root: root.to_path_buf(),
            listings: Listings::default(),
        }
    }

    /// The record of marker `key` (which ends with `/`), or an error for keys that cannot be
    /// a path (empty, `.` or `..` components).
    fn marker_path(&self, bucket: &str, key: &str) -> s3s::S3Result<PathBuf> {
        let mut path = self.root.join(MARKERS_DIR).join(bucket);
        for part in key.trim_end_matches('/').split('/') {
            if part.is_empty() || part == "." || part == ".." {
                return Err(s3s::s3_error!(InvalidArgument, "unsupported folder key"));
            }
            path.push(part);
        }
        path.push(MARKER_FILE);
        Ok(path)
    }

    fn write_marker(
        &self,
        bucket: &str,
        key: &str,
        content_type: Option<&str>,
        metadata: Option<&s3s::dto::Metadata>,
    ) -> s3s::S3Result<s3s::dto::Timestamp> {
        // One line of content type, then one `name<TAB>value` line per metadata entry.
        let mut text = format!("{}\n", content_type.unwrap_or(""));
        for (k, v) in metadata.into_iter().flatten() {
            if [k, v].iter().any(|s| s.contains(['\n', '\t'])) {
                return Err(s3s::s3_error!(InvalidArgument, "metadata with a tab or newline"));
            }
            text.push_str(&format!("{k}\t{v}\n"));
        }
        let path = self.marker_path(bucket, key)?;
        let io = |e: std::io::Error| s3s::s3_error!(InternalError, "folder marker {}: {e}", path.display());
        std::fs::create_dir_all(path.parent().expect("marker has a parent")).map_err(io)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(s3s::dto::Timestamp::from(std::time::SystemTime::now()))
    }

    fn read_marker(&self, bucket: &str, key: &str) -> s3s::S3Result<Option<Marker>> {
        let path = self.marker_path(bucket, key)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(s3s::s3_error!(
                    InternalError,
                    "folder marker {}: {e}",
                    path.display()
                ));
            }
        };
        let modified = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| std::time::SystemTime::now());
        let mut lines = text.lines();
        let content_type = lines.next().filter(|l| !l.is_empty()).map(str::to_owned);
        let metadata: s3s::dto::Metadata = lines
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(Some(Marker {
            content_type,
            metadata: (!metadata.is_empty()).then_some(metadata),
            modified: s3s::dto::Timestamp::from(modified),
        }))
    }

    fn remove_marker(&self, bucket: &str, key: &str) -> s3s::S3Result<()> {
        let Ok(path) = self.marker_path(bucket, key) else {
            return Ok(());
        };
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(s3s::s3_error!(
                InternalError,
                "folder marker {}: {e}",
                path.display()
            )),
        }
    }

    /// Every marker key of `bucket` that starts with `prefix`, with its time.
    fn markers(&self, bucket: &str, prefix: &str) -> s3s::S3Result<Vec<(String, s3s::dto::Timestamp)>> {
        let base = self.root.join(MARKERS_DIR).join(bucket);
        let mut out = Vec::new();
        let mut stack = vec![(base, String::new())];
        while let Some((dir, key)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(s3s::s3_error!(
                        InternalError,
                        "folder markers {}: {e}",
                        dir.display()
                    ));
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == MARKER_FILE {
                    if !key.is_empty() && key.starts_with(prefix) {
                        let modified = entry
                            .metadata()
                            .and_then(|m| m.modified())
                            .unwrap_or_else(|_| std::time::SystemTime::now());
                        out.push((key.clone(), s3s::dto::Timestamp::from(modified)));
                    }
                } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let child = format!("{key}{name}/");
                    // Descend only where a key under `prefix` can be.
                    if child.starts_with(prefix) || prefix.starts_with(&child) {
                        stack.push((entry.path(), child));
                    }
                }
            }
        }
        Ok(out)
    }

    /// A key without a trailing `/` whose path s3s-fs holds as a directory names no object.
    fn is_directory(&self, bucket: &str, key: &str) -> bool {
        !key.ends_with('/') && self.root.join(bucket).join(key).is_dir()
    }

    /// What a HEAD or GET of `key` answers before s3s-fs is asked: the folder marker for a
    /// `dir/` key, NoSuchKey for a missing marker or a key s3s-fs holds as a directory, and
    /// `None` (ask s3s-fs) otherwise.
    fn marker_for_read(&self, bucket: &str, key: &str) -> s3s::S3Result<Option<Marker>> {
        if key.ends_with('/') {
            return match self.read_marker(bucket, key)? {
                Some(m) => Ok(Some(m)),
                None => Err(s3s::s3_error!(NoSuchKey)),
            };
        }
        if self.is_directory(bucket, key) {
            return Err(s3s::s3_error!(NoSuchKey));
        }
        Ok(None)
    }

    /// ListObjectsV2 with folder markers merged in; pagination is done here over the whole
    /// (sorted) listing, continuing after the last key or common prefix returned.
    async fn list_v2(
        &self,
        req: s3s::S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsV2Output>> {
        use s3s::dto::{CommonPrefix, ListObjectsV2Output};
        let input = req.input.clone();
        let max_keys = usize::try_from(input.max_keys.unwrap_or(1000).clamp(0, 1000)).unwrap_or(1000);
        let after = match (input.continuation_token.as_deref(), input.start_after.as_deref()) {
            (Some(a), Some(b)) => Some(a.max(b).to_owned()),
            (a, b) => a.or(b).map(str::to_owned),
        };
        let all = self.full_listing(req).await?;
        let first = after
            .as_deref()
            .map_or(0, |a| all.partition_point(|(name, _)| name.as_str() <= a));
        let entries = &all[first..];

        let total = entries.len();
        let (mut contents, mut prefixes, mut last) = (Vec::new(), Vec::new(), None);
        for (name, entry) in entries.iter().take(max_keys) {
            match entry {
                ListEntry::Object(o) => contents.push((**o).clone()),
                ListEntry::Prefix => prefixes.push(CommonPrefix {
                    prefix: Some(name.clone()),
                }),
            }
            last = Some(name.clone());
        }
        let returned = contents.len() + prefixes.len();
        let is_truncated = max_keys > 0 && returned < total;
        let output = ListObjectsV2Output {
            key_count: Some(i32::try_from(returned).unwrap_or(i32::MAX)),
            max_keys: Some(i32::try_from(max_keys).unwrap_or(1000)),
            is_truncated: Some(is_truncated),
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            continuation_token: input.continuation_token,
            next_continuation_token: if is_truncated { last } else { None },
            delimiter: input.delimiter,
            encoding_type: input.encoding_type,
            name: Some(input.bucket),
            prefix: input.prefix,
            start_after: input.start_after,
            ..Default::default()
        };
        Ok(s3s::S3Response::new(output))
    }

    /// Every entry under the request's prefix (rolled up at its delimiter), sorted, folder
    /// markers included: the last one built if nothing changed since, else read afresh.
    async fn full_listing(
        &self,
        req: s3s::S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> s3s::S3Result<Arc<Vec<(String, ListEntry)>>> {
        use std::collections::BTreeMap;
        let delimiter = req.input.delimiter.clone().filter(|d| !d.is_empty());
        let bucket = req.input.bucket.clone();
        let prefix = req.input.prefix.clone().unwrap_or_default();
        // Read before listing: a change finishing meanwhile bumps it and voids this listing.
        let generation = self.listings.generation.load(Ordering::SeqCst);
        if let Some(l) = self.listings.last.lock().expect("listing cache lock").as_ref()
            && l.generation == generation
            && l.bucket == bucket
            && l.prefix == prefix
            && l.delimiter == delimiter
        {
            return Ok(l.entries.clone());
        }

        let inner_req = req.map_input(|mut i| {
            i.delimiter = delimiter.clone();
            i.max_keys = Some(i32::MAX);
            i.continuation_token = None;
            i.start_after = None;
            i
        });
        let inner = self.inner.list_objects_v2(inner_req).await?.output;
        let mut entries: BTreeMap<String, ListEntry> = BTreeMap::new();
        for o in inner.contents.into_iter().flatten() {
            if let Some(k) = o.key.clone() {
                entries.insert(k, ListEntry::Object(Box::new(o)));
            }
        }
        for p in inner.common_prefixes.into_iter().flatten() {
            if let Some(k) = p.prefix {
                entries.insert(k, ListEntry::Prefix);
            }
        }
        for (key, modified) in self.markers(&bucket, &prefix)? {
            let rest = &key[prefix.len()..];
            let rolled = delimiter.as_deref().and_then(|d| {
                rest.find(d)
                    .map(|pos| format!("{prefix}{}", &rest[..pos + d.len()]))
            });
            let (name, entry) = match rolled {
                Some(p) => (p, ListEntry::Prefix),
                None => {
                    let object = s3s::dto::Object {
                        key: Some(key.clone()),
                        last_modified: Some(modified),
                        size: Some(0),
                        e_tag: Some(s3s::dto::ETag::Strong(EMPTY_MD5.to_owned())),
                        ..Default::default()
                    };
                    (key, ListEntry::Object(Box::new(object)))
                }
            };
            entries.entry(name).or_insert(entry);
        }
        let entries = Arc::new(entries.into_iter().collect::<Vec<_>>());
        *self.listings.last.lock().expect("listing cache lock") = Some(Listing {
            generation,
            bucket,
            prefix,
            delimiter,
            entries: entries.clone(),
        });
        Ok(entries)
    }
}

/// Plain delegation to s3s-fs for the operations [`Store`] does not change; those marked
/// `[change]` alter what a listing returns.
macro_rules! delegate {
    ($($name:ident($input:ident) -> $output:ident $([$change:ident])?;)*) => {$(
        fn $name<'a, 'b>(&'a self, req: s3s::S3Request<s3s::dto::$input>) -> BoxFut<'b, s3s::dto::$output>
        where
            'a: 'b,
            Self: 'b,
        {
            Box::pin(async move {
                $(let _listings = self.listings.$change();)?
                self.inner.$name(req).await
            })
        }
    )*};
}

#[async_trait::async_trait]
impl s3s::S3 for Store {
    delegate! {
        create_bucket(CreateBucketInput) -> CreateBucketOutput [change];
        delete_bucket(DeleteBucketInput) -> DeleteBucketOutput [change];
        get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
        head_bucket(HeadBucketInput) -> HeadBucketOutput;
        list_buckets(ListBucketsInput) -> ListBucketsOutput;
        create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
        upload_part(UploadPartInput) -> UploadPartOutput;
        upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
        list_parts(ListPartsInput) -> ListPartsOutput;
        complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput [change];
        abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
    }

    async fn put_object(
        &self,
        req: s3s::S3Request<s3s::dto::PutObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
        let _listings = self.listings.change();
        let i = &req.input;
        if !i.key.ends_with('/') {
            return self.inner.put_object(req).await;
        }
        let (bucket, key) = (i.bucket.clone(), i.key.clone());
        let (content_type, metadata) = (i.content_type.clone(), i.metadata.clone());
        self.marker_path(&bucket, &key)?;
        // s3s-fs checks the bucket and the empty body, and creates the directory.
        let out = self.inner.put_object(req).await?;
        self.write_marker(&bucket, &key, content_type.as_deref(), metadata.as_ref())?;
        let mut out = out;
        out.output.e_tag = Some(s3s::dto::ETag::Strong(EMPTY_MD5.to_owned()));
        Ok(out)
    }

    async fn head_object(
        &self,
        req: s3s::S3Request<s3s::dto::HeadObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadObjectOutput>> {
        let Some(m) = self.marker_for_read(&req.input.bucket, &req.input.key)? else {
            return self.inner.head_object(req).await;
        };
        Ok(s3s::S3Response::new(s3s::dto::HeadObjectOutput {
            content_length: Some(0),
            content_type: m.content_type,
            last_modified: Some(m.modified),
            metadata: m.metadata,
            e_tag: Some(s3s::dto::ETag::Strong(EMPTY_MD5.to_owned())),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: s3s::S3Request<s3s::dto::GetObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::GetObjectOutput>> {
        let Some(m) = self.marker_for_read(&req.input.bucket, &req.input.key)? else {
            return self.inner.get_object(req).await;
        };
        Ok(s3s::S3Response::new(s3s::dto::GetObjectOutput {
            body: Some(s3s::dto::StreamingBlob::from(s3s::Body::empty())),
            content_length: Some(0),
            content_type: m.content_type,
            last_modified: Some(m.modified),
            metadata: m.metadata,
            e_tag: Some(s3s::dto::ETag::Strong(EMPTY_MD5.to_owned())),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: s3s::S3Request<s3s::dto::CopyObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CopyObjectOutput>> {
        let _listings = self.listings.change();
        let i = &req.input;
        let s3s::dto::CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            ..
        } = &i.copy_source
        else {
            return self.inner.copy_object(req).await;
        };
        let (src_marker, dst_marker) = (src_key.ends_with('/'), i.key.ends_with('/'));
        if !src_marker && !dst_marker {
            if self.is_directory(src_bucket, src_key) {
                return Err(s3s::s3_error!(NoSuchKey));
            }
            return self.inner.copy_object(req).await;
        }
        if !(src_marker && dst_marker) {
            return Err(s3s::s3_error!(
                NotImplemented,
                "copy between a folder marker and an object"
            ));
        }
        // A folder marker copied (s3fs also updates a folder's mode and times this way).
        let Some(src) = self.read_marker(src_bucket, src_key)? else {
            return Err(s3s::s3_error!(NoSuchKey));
        };
        let replace = i
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == s3s::dto::MetadataDirective::REPLACE);
        let (content_type, metadata) = if replace {
            (i.content_type.clone(), i.metadata.clone())
        } else {
            (src.content_type, src.metadata)
        };
        let dst = self.inner_dir(&i.bucket, &i.key)?;
        std::fs::create_dir_all(&dst).map_err(|e| s3s::s3_error!(InternalError, "{}: {e}", dst.display()))?;
        let modified = self.write_marker(&i.bucket, &i.key, content_type.as_deref(), metadata.as_ref())?;
        Ok(s3s::S3Response::new(s3s::dto::CopyObjectOutput {
            copy_object_result: Some(s3s::dto::CopyObjectResult {
                e_tag: Some(s3s::dto::ETag::Strong(EMPTY_MD5.to_owned())),
                last_modified: Some(modified),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: s3s::S3Request<s3s::dto::DeleteObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::DeleteObjectOutput>> {
        let _listings = self.listings.change();
        if req.input.key.ends_with('/') {
            self.remove_marker(&req.input.bucket, &req.input.key)?;
        } else if self.is_directory(&req.input.bucket, &req.input.key) {
            // No such object: deleting it succeeds and leaves the folder alone.
            return Ok(s3s::S3Response::new(s3s::dto::DeleteObjectOutput::default()));
        }
        self.inner.delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: s3s::S3Request<s3s::dto::DeleteObjectsInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::DeleteObjectsOutput>> {
        let _listings = self.listings.change();
        let bucket = req.input.bucket.clone();
        for o in &req.input.delete.objects {
            if o.key.ends_with('/') {
                self.remove_marker(&bucket, &o.key)?;
            }
        }
        self.inner.delete_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        req: s3s::S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsV2Output>> {
        self.list_v2(req).await
    }

    async fn list_objects(
        &self,
        req: s3s::S3Request<s3s::dto::ListObjectsInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsOutput>> {
        let marker = req.input.marker.clone();
        let v2 = self.list_v2(req.map_input(Into::into)).await?;
        Ok(v2.map_output(|v2| {
            let next_marker = v2.next_continuation_token.clone();
            s3s::dto::ListObjectsOutput {
                contents: v2.contents,
                common_prefixes: v2.common_prefixes,
                delimiter: v2.delimiter,
                encoding_type: v2.encoding_type,
                name: v2.name,
                prefix: v2.prefix,
                max_keys: v2.max_keys,
                is_truncated: v2.is_truncated,
                marker,
                next_marker,
                ..Default::default()
            }
        }))
    }
}

impl Store {
    /// The directory s3s-fs uses for folder key `key` of `bucket`.
    fn inner_dir(&self, bucket: &str, key: &str) -> s3s::S3Result<PathBuf> {
        self.marker_path(bucket, key)?;
        Ok(self.root.join(bucket).join(key.trim_end_matches('/')))
    }
}

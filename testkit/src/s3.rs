//! A real S3 server on 127.0.0.1 for tests and benchmarks (s3s-fs over a temp directory), with
//! fault injection in front of it.
//!
//! Faults are injected at the server's HTTP front, after the request is read and before s3s
//! sees it, so a client experiences exactly what a flaky object store does: error statuses
//! (500, 503 "SlowDown"), slow responses, and connections closed without a response. Each
//! object of a bucket is a plain file under `root()/bucket/`, so tests can count and inspect
//! objects directly.

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
    /// Close the connection without answering.
    Drop,
    /// Wait this long, then serve the request normally.
    Delay(Duration),
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
}

impl RequestCounts {
    fn count(&self, method: &hyper::Method) {
        let counter = match *method {
            hyper::Method::GET => &self.get,
            hyper::Method::PUT => &self.put,
            hyper::Method::POST => &self.post,
            hyper::Method::DELETE => &self.delete,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
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
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs over {}: {e:?}", root.display()))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let faults = Arc::new(Faults::default());
        let requests = Arc::new(RequestCounts::default());
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let (f, r) = (faults.clone(), requests.clone());
        // Its own runtime and thread: the server outlives any test's runtime.
        let thread = std::thread::Builder::new().name("s3-server".into()).spawn(move || {
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
                            Ok((socket, _)) => socket,
                            Err(_) => continue,
                        },
                        _ = &mut rx => break,
                    };
                    let (service, faults, requests) = (service.clone(), f.clone(), r.clone());
                    let handler = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (service, faults, requests) = (service.clone(), faults.clone(), requests.clone());
                        async move {
                            requests.count(req.method());
                            match faults.take(req.method()) {
                                None => {}
                                Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
                                Some(Fault::Drop) => return Err(s3s::HttpError::new("injected connection drop".into())),
                                Some(Fault::Status(code)) => return Ok(error_response(code)),
                            }
                            hyper::service::Service::call(&service, req).await
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

fn error_response(code: u16) -> s3s::HttpResponse {
    let (s3_code, message) = match code {
        503 => ("SlowDown", "Please reduce your request rate."),
        500 => ("InternalError", "We encountered an internal error. Please try again."),
        _ => ("InjectedFault", "Injected by the test."),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{s3_code}</Code><Message>{message}</Message></Error>"
    );
    let mut resp = hyper::Response::new(s3s::Body::from(body));
    *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/xml"));
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

//! `studiodrive-csi api`: serves the HTTP/JSON API (crate::api) for other systems.
//!
//! It is this binary's job, not the operator's: the API needs the engine's store (and, for
//! workspace operations, the same rules the node plugin applies), it scales out as stateless
//! replicas (operations live in the database), and the operator stays a single leader that
//! only reconciles.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::api::tls::ServingCert;
use crate::api::{ApiState, serve};
use crate::cli::StorageArgs;
use crate::cli::serve::kube_client;
use crate::csi::auth::TokenVerifier;
use crate::csi::token_review::KubeTokenReviewer;

#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Address to serve on. Without a certificate it serves plain HTTP, where bearer tokens
    /// cross the network in the clear: an address other than loopback then needs
    /// --plain-http, said on purpose (behind a mesh that encrypts pod traffic, e.g. linkerd).
    #[arg(long, env = "STUDIODRIVE_API_LISTEN", default_value = "127.0.0.1:8480")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM; read again when it changes).
    #[arg(long, env = "STUDIODRIVE_API_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "STUDIODRIVE_API_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address.
    #[arg(long, env = "STUDIODRIVE_API_PLAIN_HTTP", conflicts_with = "tls_cert_file")]
    pub plain_http: bool,
    /// The audience callers' service-account tokens must be issued for.
    #[arg(long, env = "STUDIODRIVE_API_AUDIENCE", default_value = "studiodrive-api")]
    pub audience: String,
    /// Serve Prometheus metrics (requests by route, method and status; latency; in flight)
    /// on this address.
    #[arg(long, env = "STUDIODRIVE_API_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// The largest document a write may carry, in bytes of JSON (at most 512 MiB). A write
    /// holds the parsed document in memory, several times its text, and two such writes may
    /// run at once: size the pod's memory for it.
    #[arg(long, env = "STUDIODRIVE_API_MAX_DOCUMENT_BYTES", default_value_t = 256 << 20,
          value_parser = clap::value_parser!(u64).range(1..=drive::media::MAX_DOCUMENT_BYTES as u64))]
    pub max_document_bytes: u64,
    /// Kubeconfig for the Kubernetes API the tokens are reviewed by (default: in-cluster,
    /// then KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "STUDIODRIVE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some(Arc::new(ServingCert::load(cert, key)?)),
        _ => None,
    };
    if tls.is_none() && !args.listen.ip().is_loopback() && !args.plain_http {
        anyhow::bail!(
            "--listen {}: plain HTTP off loopback sends bearer tokens in the clear; give \
             --tls-cert-file and --tls-key-file, or --plain-http behind a mesh that encrypts",
            args.listen
        );
    }
    let meta = args.storage.meta().await?;
    let (verifier, no_verifier_reason) = match kube_client(args.kubeconfig.as_deref()).await {
        Ok(client) => (
            Some(TokenVerifier::new(
                Arc::new(KubeTokenReviewer::new(client)),
                args.audience.clone(),
            )),
            String::new(),
        ),
        Err(reason) => {
            tracing::error!(%reason, "no Kubernetes API: every API request will be refused");
            (None, format!("no Kubernetes API ({reason})"))
        }
    };
    // Taken before the address is announced: a SIGTERM from then on drains, never kills.
    let shutdown = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // The address on standard output: a caller that asked for port 0 learns the port.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "serving the API on {scheme}://{addr} (audience {})",
        args.audience
    );
    let documents = args.storage.document_store(&meta).await?;
    let metrics = Arc::new(crate::metrics::ApiMetrics::new()?);
    if let Some(addr) = args.metrics_addr {
        let (metrics, stop) = (metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, metrics, stop).await {
                tracing::error!(error = %e, "API: metrics endpoint failed");
            }
        });
    }
    let state = Arc::new(ApiState {
        metrics,
        max_document_bytes: usize::try_from(args.max_document_bytes)?,
        documents,
        large_writes: tokio::sync::Semaphore::new(crate::api::LARGE_WRITES),
        meta,
        verifier,
        no_verifier_reason,
    });
    serve(listener, state, tls, shutdown).await.context("API server")
}

//! `studiodrive-csi serve`: the CSI plugin on a Unix socket.
//!
//! Settings come from flags, then STUDIODRIVE_* environment variables, then a TOML file
//! (`--config`, keys named like the flags: `node-id = "node-1"`), then defaults. With no
//! storage settings it runs on the same embedded defaults as `mount`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;

use crate::cli::StorageArgs;
use crate::csi::auth::{Authenticator, NoAuthorization, NoKubernetesApi, TokenAuthenticator};
use crate::csi::controller::ControllerService;
use crate::csi::identity::IdentityService;
use crate::csi::node::NodeService;
use crate::csi::publish::{Publisher, PublisherConfig};
use crate::csi::token_review::KubeTokenReviewer;
use crate::csi::{MetaSlot, Mode, server, validate};
use crate::metrics::CsiMetrics;

/// Arguments of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// CSI endpoint: unix:///path/to/csi.sock (or the socket path).
    #[arg(long, env = "STUDIODRIVE_CSI_ENDPOINT")]
    pub endpoint: Option<String>,
    /// This node's id, as NodeGetInfo reports it (default: the host name).
    #[arg(long, env = "STUDIODRIVE_NODE_ID")]
    pub node_id: Option<String>,
    /// Services to offer: all, node (DaemonSet) or controller (Deployment). Default: all.
    #[arg(long, value_enum, env = "STUDIODRIVE_CSI_MODE")]
    pub mode: Option<Mode>,
    /// TOML file with settings (keys named like these flags).
    #[arg(long, env = "STUDIODRIVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:9464).
    #[arg(long, env = "STUDIODRIVE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Parent directory of the block caches: one per workspace, shared by its publications
    /// and `preload --node-cache` (default <state-dir>/csi-cache).
    #[arg(long, env = "STUDIODRIVE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Block-cache bytes per published volume, unless its `cacheSize` attribute says
    /// otherwise (default 10 GiB; 0 turns caching off).
    #[arg(long, env = "STUDIODRIVE_CACHE_SIZE")]
    pub cache_size: Option<u64>,
    /// Who may mount what: `kubernetes` (default) verifies each pod's service-account token
    /// with a TokenReview and grants by namespace, owners and Shares; without a reachable
    /// Kubernetes API every publish is then refused. `none` lets every pod mount everything:
    /// only for a single machine without Kubernetes.
    #[arg(long, value_enum, env = "STUDIODRIVE_AUTHORIZATION")]
    pub authorization: Option<Authorization>,
    /// Kubeconfig for the Kubernetes API (default: the in-cluster service account, then
    /// KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "STUDIODRIVE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The audience of the service-account tokens kubelet passes (CSIDriver tokenRequests).
    #[arg(long, env = "STUDIODRIVE_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,
    /// Refuse inline (ephemeral) volumes: pods then get volumes only through claims.
    #[arg(long, env = "STUDIODRIVE_REFUSE_INLINE_VOLUMES")]
    pub refuse_inline_volumes: Option<bool>,
    /// The most block-cache bytes one published volume gets: a larger `cacheSize` attribute
    /// (or default) is cut to this, with a log line (default: no maximum).
    #[arg(long, env = "STUDIODRIVE_MAX_CACHE_SIZE")]
    pub max_cache_size: Option<u64>,
    /// Each volume's cache yields while its file system has less than this fraction free
    /// (default 0.15, above kubelet's 10% eviction threshold).
    #[arg(long, env = "STUDIODRIVE_CACHE_MIN_FREE")]
    pub cache_min_free: Option<f64>,
}

/// How publishes are authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Authorization {
    /// TokenReview of the pod's token, then namespace, owners and Shares (the default).
    Kubernetes,
    /// No checks: every pod may mount every workspace.
    None,
}

/// The default token audience (CSIDriver `tokenRequests`).
pub const DEFAULT_TOKEN_AUDIENCE: &str = "csi.studiodrive.dev";

/// The `--config` file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    endpoint: Option<String>,
    node_id: Option<String>,
    mode: Option<Mode>,
    metrics_addr: Option<SocketAddr>,
    cache_dir: Option<PathBuf>,
    cache_size: Option<u64>,
    authorization: Option<Authorization>,
    token_audience: Option<String>,
    kubeconfig: Option<PathBuf>,
    refuse_inline_volumes: Option<bool>,
    max_cache_size: Option<u64>,
    cache_min_free: Option<f64>,
    state_dir: Option<PathBuf>,
    metadata_url: Option<String>,
    store: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_credentials_file: Option<PathBuf>,
    s3_max_attempts: Option<u32>,
}

const DEFAULT_S3_MAX_ATTEMPTS: u32 = 5;

impl ServeArgs {
    /// Fills settings not given as flags or environment from the `--config` file.
    fn merge_config(&mut self) -> anyhow::Result<()> {
        let Some(path) = &self.config else { return Ok(()) };
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let file: ConfigFile = toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        fn fill<T>(slot: &mut Option<T>, value: Option<T>) {
            if slot.is_none() {
                *slot = value;
            }
        }
        fill(&mut self.endpoint, file.endpoint);
        fill(&mut self.node_id, file.node_id);
        fill(&mut self.mode, file.mode);
        fill(&mut self.metrics_addr, file.metrics_addr);
        fill(&mut self.cache_dir, file.cache_dir);
        fill(&mut self.cache_size, file.cache_size);
        fill(&mut self.authorization, file.authorization);
        fill(&mut self.token_audience, file.token_audience);
        fill(&mut self.kubeconfig, file.kubeconfig);
        fill(&mut self.refuse_inline_volumes, file.refuse_inline_volumes);
        fill(&mut self.max_cache_size, file.max_cache_size);
        fill(&mut self.cache_min_free, file.cache_min_free);
        let s = &mut self.storage;
        fill(&mut s.state_dir, file.state_dir);
        fill(&mut s.metadata_url, file.metadata_url);
        fill(&mut s.store, file.store);
        fill(&mut s.s3_endpoint, file.s3_endpoint);
        fill(&mut s.s3_region, file.s3_region);
        fill(&mut s.s3_credentials_file, file.s3_credentials_file);
        if let Some(n) = file.s3_max_attempts
            && s.s3_max_attempts == DEFAULT_S3_MAX_ATTEMPTS
        {
            s.s3_max_attempts = n;
        }
        Ok(())
    }
}

impl ServeArgs {
    /// The free-space floor of the volumes' caches (given, or the cache's default).
    fn cache_min_free(&self) -> f64 {
        self.cache_min_free
            .unwrap_or(drive::cache::DEFAULT_MIN_FREE_RATIO)
    }
}

/// The socket path of an endpoint.
fn socket_path(endpoint: &str) -> anyhow::Result<PathBuf> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        bail!("--endpoint must be unix:///absolute/path (got {endpoint:?})");
    }
    Ok(PathBuf::from(path))
}

/// Runs `serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("studiodrive-csi")
        .build()?;
    rt.block_on(serve(args))
}

async fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    args.merge_config()?;
    let socket = socket_path(args.endpoint.as_deref().context("--endpoint is required")?)?;
    let mode = args.mode.unwrap_or(Mode::All);
    let node_id = match args.node_id.clone() {
        Some(id) => id,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("read the host name; pass --node-id")?
            .trim()
            .to_string(),
    };
    validate::id("node id", &node_id).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let state_dir = args.storage.state_dir()?;
    let metrics = Arc::new(CsiMetrics::new()?);
    let cancel = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();

    // Connect in the background: Probe answers "not ready" until the store is reachable.
    let meta = Arc::new(MetaSlot::default());
    {
        let (slot, storage, cancel) = (meta.clone(), args.storage.clone(), cancel.clone());
        tasks.spawn(async move {
            let mut wait = Duration::from_millis(500);
            loop {
                match storage.meta().await {
                    Ok(store) => {
                        tracing::info!("metadata store connected");
                        slot.set(store);
                        return;
                    }
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), retry_in = ?wait, "metadata store unreachable"),
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
    }

    let identity = IdentityService {
        mode,
        meta: meta.clone(),
        metrics: metrics.clone(),
    };
    let controller = mode.controller().then(|| ControllerService {
        meta: meta.clone(),
        metrics: metrics.clone(),
    });
    let node = if mode.node() {
        let publisher = Arc::new(Publisher::open(PublisherConfig {
            exe: std::env::current_exe().context("locate the studiodrive-csi binary")?,
            storage_env: args.storage.child_env()?,
            state_dir: state_dir.clone(),
            cache_dir: args
                .cache_dir
                .clone()
                .unwrap_or_else(|| crate::csi::publish::default_cache_dir(&state_dir)),
            cache_min_free: args.cache_min_free(),
            mount_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
        })?);
        metrics.mounts.set(publisher.count() as i64);
        tasks.spawn(
            publisher
                .clone()
                .supervise(Duration::from_secs(1), cancel.clone()),
        );
        let audience = args
            .token_audience
            .clone()
            .unwrap_or_else(|| DEFAULT_TOKEN_AUDIENCE.to_string());
        let authenticator = authenticator(
            args.authorization.unwrap_or(Authorization::Kubernetes),
            args.kubeconfig.as_deref(),
            audience,
        )
        .await;
        Some(NodeService {
            node_id,
            meta: meta.clone(),
            publisher,
            authenticator,
            refuse_inline: args.refuse_inline_volumes.unwrap_or(false),
            metrics: metrics.clone(),
            default_cache_size: args.cache_size.unwrap_or(10 << 30),
            max_cache_size: args.max_cache_size,
        })
    } else {
        None
    };
    if let Some(addr) = args.metrics_addr {
        let (m, c) = (metrics.clone(), cancel.clone());
        tasks.spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, m, c).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    {
        let cancel = cancel.clone();
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tasks.spawn(async move {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            // Published volumes stay mounted: their processes outlive the plugin.
            tracing::info!("stopping; published volumes stay mounted");
            cancel.cancel();
        });
    }
    let served = server::serve(&socket, identity, controller, node, cancel.clone()).await;
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    served.context("CSI server")
}

/// A Kubernetes client from `kubeconfig`, else the in-cluster service account, KUBECONFIG or
/// ~/.kube/config; why not when there is none.
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => match kube::config::Kubeconfig::read_from(path) {
            Ok(file) => kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) => Err(format!("{}: {e}", path.display())),
        },
        None => kube::Config::infer().await.map_err(|e| e.to_string()),
    };
    config.and_then(|c| kube::Client::try_from(c).map_err(|e| e.to_string()))
}

/// The authenticator `mode` asks for. Kubernetes mode without a Kubernetes API still starts
/// (the controller face and probes work) but refuses every publish, saying why.
async fn authenticator(
    mode: Authorization,
    kubeconfig: Option<&std::path::Path>,
    audience: String,
) -> Arc<dyn Authenticator> {
    match mode {
        Authorization::None => {
            tracing::warn!("--authorization none: every pod may mount every workspace");
            Arc::new(NoAuthorization)
        }
        Authorization::Kubernetes => match kube_client(kubeconfig).await {
            Ok(client) => {
                tracing::info!(%audience, "publishes are authorized by TokenReview, namespace, owners and Shares");
                Arc::new(TokenAuthenticator::new(
                    Arc::new(KubeTokenReviewer::new(client)),
                    audience,
                ))
            }
            Err(reason) => {
                tracing::error!(%reason, "no Kubernetes API: every publish will be refused");
                Arc::new(NoKubernetesApi { reason })
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::ServeArgs;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        use clap::Parser as _;
        Cli::try_parse_from(args).unwrap().serve
    }

    #[test]
    fn cache_floor_defaults_to_15_percent_and_the_maximum_to_none() {
        let args = parse(&["serve"]);
        assert_eq!(args.cache_min_free(), 0.15);
        assert_eq!(args.max_cache_size, None);
        let args = parse(&[
            "serve",
            "--cache-min-free",
            "0.2",
            "--max-cache-size",
            "1073741824",
        ]);
        assert_eq!(args.cache_min_free(), 0.2);
        assert_eq!(args.max_cache_size, Some(1 << 30));
    }

    #[test]
    fn cache_limits_come_from_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, "max-cache-size = 1073741824\ncache-min-free = 0.25\n").unwrap();
        let mut args = parse(&["serve", "--config", path.to_str().unwrap()]);
        args.merge_config().unwrap();
        assert_eq!(args.max_cache_size, Some(1 << 30));
        assert_eq!(args.cache_min_free(), 0.25);
    }
}

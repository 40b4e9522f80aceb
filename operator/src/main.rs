//! `studiodrive-operator`: `run` (the controllers), `crds` (print or write the CRD YAML) and
//! `gc` (one GC pass of a LifecyclePolicy, run by the operator as a Job).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::runtime::events::{Recorder, Reporter};
use operator::controllers::{LeaseSettings, run_with_leader_election};
use operator::gc_job::{GcJobSettings, GcPassArgs};
use operator::http::{HealthState, serve};
use operator::metrics::Metrics;
use operator::preload_job::PreloadJobSettings;
use operator::reconcile::{Backoff, Context};
use operator::store::drive_adapter::MetaStoreAdapter;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "studiodrive-operator",
    version,
    about = "Studio Drive Kubernetes operator"
)]
struct Cli {
    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    log: String,
    /// Log format.
    #[arg(long, env = "STUDIODRIVE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (with leader election) and the metrics/health endpoint.
    Run(RunArgs),
    /// Print the CRDs as YAML, or write one file per CRD into a directory.
    Crds {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Run one GC pass of a LifecyclePolicy (started by the operator as a Job).
    Gc(GcPassArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Metadata store URL (libpq string or postgresql:// URL). Mount it from a Secret.
    #[arg(long, env = "STUDIODRIVE_METADATA_URL", hide_env_values = true)]
    metadata_url: String,
    /// Require TLS to the metadata store.
    #[arg(long, env = "STUDIODRIVE_METADATA_TLS", default_value_t = false)]
    metadata_tls: bool,
    /// CA bundle to verify the metadata store's certificate (default: webpki roots).
    #[arg(long, env = "STUDIODRIVE_METADATA_CA_FILE")]
    metadata_ca_file: Option<PathBuf>,
    /// Connections in the metadata store pool.
    #[arg(long, env = "STUDIODRIVE_METADATA_POOL_SIZE", default_value_t = 8)]
    metadata_pool_size: usize,
    /// Milliseconds a metadata statement may go unanswered before the call fails; also the
    /// server's statement_timeout.
    #[arg(long, env = "STUDIODRIVE_METADATA_STATEMENT_TIMEOUT_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    metadata_statement_timeout_ms: u64,
    /// Default object store endpoint for workspaces without an objectStore (recorded for GC Jobs).
    #[arg(long, env = "STUDIODRIVE_OBJECT_STORE_ENDPOINT")]
    object_store_endpoint: Option<String>,
    /// Default object store bucket.
    #[arg(long, env = "STUDIODRIVE_OBJECT_STORE_BUCKET")]
    object_store_bucket: Option<String>,
    /// Default object store region (for GC Jobs).
    #[arg(long, env = "STUDIODRIVE_OBJECT_STORE_REGION")]
    object_store_region: Option<String>,
    /// Address of the metrics and health endpoint.
    #[arg(long, env = "STUDIODRIVE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Namespace of the leader Lease and of GC Jobs.
    #[arg(long, env = "POD_NAMESPACE", default_value = "studiodrive-system")]
    namespace: String,
    /// This replica's identity in leader election.
    #[arg(long, env = "POD_NAME", default_value = "studiodrive-operator")]
    identity: String,
    /// Image for GC Jobs (normally the operator's own image).
    #[arg(
        long,
        env = "STUDIODRIVE_GC_IMAGE",
        default_value = "ghcr.io/studiodrive/studiodrive-operator:latest"
    )]
    gc_image: String,
    /// Secret holding the metadata URL for GC Jobs, as NAME/KEY.
    #[arg(long, env = "STUDIODRIVE_GC_METADATA_SECRET")]
    gc_metadata_secret: Option<String>,
    /// Secret holding an AWS shared-credentials file for GC Jobs, as NAME/KEY (without it
    /// they use the pod's default credential chain: instance role, IRSA).
    #[arg(long, env = "STUDIODRIVE_GC_S3_CREDENTIALS_SECRET")]
    gc_s3_credentials_secret: Option<String>,
    /// Image for preload Jobs: the node plugin's (with `studiodrive-csi`).
    #[arg(
        long,
        env = "STUDIODRIVE_PRELOAD_IMAGE",
        default_value = "ghcr.io/studiodrive/studiodrive-csi:latest"
    )]
    preload_image: String,
    /// The node plugin's cache directory on the hosts (its volumes' caches, which preload
    /// Jobs fill).
    #[arg(
        long,
        env = "STUDIODRIVE_NODE_CACHE_DIR",
        default_value = "/var/cache/studiodrive"
    )]
    node_cache_dir: String,
    /// Cache bytes per workspace on a node (the node plugin's --cache-size).
    #[arg(long, env = "STUDIODRIVE_NODE_CACHE_SIZE", default_value_t = 10 << 30)]
    node_cache_size: u64,
    /// The free-space floor of the nodes' cache file systems (the plugin's --cache-min-free).
    #[arg(long, env = "STUDIODRIVE_NODE_CACHE_MIN_FREE", default_value_t = 0.15)]
    node_cache_min_free: f64,
    /// The sink secrets key (32 raw bytes or 64 hex digits): EventSinks' credentials are
    /// sealed with it in the metadata store, and the relays open them with it. Without it,
    /// EventSinks that name a Secret wait (SinkSecretUnavailable).
    #[arg(long, env = "STUDIODRIVE_SINK_SECRET_KEY_FILE")]
    sink_secret_key_file: Option<std::path::PathBuf>,
    /// CPU request of preload Jobs' containers.
    #[arg(long, env = "STUDIODRIVE_PRELOAD_CPU_REQUEST", default_value = "100m", value_parser = quantity)]
    preload_cpu_request: String,
    /// Memory request of preload Jobs' containers.
    #[arg(long, env = "STUDIODRIVE_PRELOAD_MEMORY_REQUEST", default_value = "128Mi", value_parser = quantity)]
    preload_memory_request: String,
    /// Memory limit of preload Jobs' containers (a preload holds a few blocks at a time).
    #[arg(long, env = "STUDIODRIVE_PRELOAD_MEMORY_LIMIT", default_value = "512Mi", value_parser = quantity)]
    preload_memory_limit: String,
}

/// A Kubernetes resource quantity as the flags take them (`100m`, `0.5`, `128Mi`, `2G`): checked
/// here so a typo stops the operator at start, not every Job at creation.
fn quantity(text: &str) -> Result<String, String> {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let number_ok = !number.is_empty()
        && number.split('.').count() <= 2
        && number.split('.').all(|part| !part.is_empty());
    let suffix_ok = ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix);
    if number_ok && suffix_ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a resource quantity (a decimal number with an optional suffix m, k, M, G, T, Ki, Mi, Gi or Ti)"
        ))
    }
}

fn main() -> anyhow::Result<()> {
    // Exactly one rustls provider in the process; a second install only reports it exists.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    init_tracing(&cli.log, &cli.log_format)?;
    match cli.command {
        Command::Crds { out_dir } => crds(out_dir),
        Command::Gc(pass) => {
            let report = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("build the tokio runtime")?
                .block_on(operator::gc_job::run_pass(&pass))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("build the tokio runtime")?
            .block_on(run(args)),
    }
}

fn init_tracing(filter: &str, format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("parse the log filter")?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("install the log subscriber: {e}"))
}

fn crds(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    match out_dir {
        None => print!("{}", operator::crd::all_yaml()?),
        Some(dir) => {
            for def in operator::crd::all() {
                let path = dir.join(operator::crd::file_name(&def));
                std::fs::write(&path, operator::crd::to_yaml(&def)?)
                    .with_context(|| format!("write {}", path.display()))?;
            }
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::new()?);
    let health = Arc::new(HealthState {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("bind {}", args.metrics_addr))?;
    tokio::spawn(serve(listener, health.clone(), shutdown.clone()));

    let mut config = drive::MetaConfig::new(args.metadata_url.clone());
    config.pool_size = args.metadata_pool_size;
    config.statement_timeout = std::time::Duration::from_millis(args.metadata_statement_timeout_ms);
    if args.metadata_tls {
        config.tls = drive::TlsMode::Require {
            ca_file: args.metadata_ca_file.clone(),
        };
    }
    tracing::info!(
        tls = args.metadata_tls, pool = args.metadata_pool_size, metrics = %args.metrics_addr,
        namespace = %args.namespace, identity = %args.identity,
        object_store_endpoint = ?args.object_store_endpoint, object_store_bucket = ?args.object_store_bucket,
        "starting (metadata URL redacted)"
    );
    let store = drive::PgMetaStore::connect(&config)
        .await
        .context("connect to the metadata store")?;
    health.ready.store(true, Ordering::SeqCst);
    {
        let store = store.clone();
        tokio::spawn(operator::http::follow_store_health(
            move || {
                let store = store.clone();
                async move { store.ping().await.is_ok() }
            },
            health.clone(),
            Duration::from_secs(10),
            shutdown.clone(),
        ));
    }
    let client = kube::Client::try_default()
        .await
        .context("build the Kubernetes client")?;
    let reporter = Reporter {
        controller: "studiodrive-operator".into(),
        instance: Some(args.identity.clone()),
    };
    let secret_key = |value: Option<&str>, flag: &str| {
        value
            .map(|s| {
                s.split_once('/')
                    .filter(|(n, k)| !n.is_empty() && !k.is_empty())
                    .map(|(n, k)| (n.to_string(), k.to_string()))
                    .with_context(|| format!("{flag} is NAME/KEY"))
            })
            .transpose()
    };
    let gc_secret = secret_key(args.gc_metadata_secret.as_deref(), "--gc-metadata-secret")?;
    let gc_s3_credentials = secret_key(
        args.gc_s3_credentials_secret.as_deref(),
        "--gc-s3-credentials-secret",
    )?;
    let sink_secret_key = args
        .sink_secret_key_file
        .as_deref()
        .map(drive::data::Kek::from_file)
        .transpose()
        .context("the sink secrets key (--sink-secret-key-file)")?;
    tracing::info!(sink_secret_key = ?sink_secret_key, "EventSink credentials are sealed with this key");
    let ctx = Arc::new(Context {
        client: client.clone(),
        store: MetaStoreAdapter(store),
        recorder: Recorder::new(client, reporter),
        metrics,
        clock: jiff::Timestamp::now,
        backoff: Backoff::default(),
        preload: PreloadJobSettings {
            image: args.preload_image,
            host_cache_dir: args.node_cache_dir,
            cache_size: args.node_cache_size,
            cache_min_free: args.node_cache_min_free,
            cpu_request: args.preload_cpu_request,
            memory_request: args.preload_memory_request,
            memory_limit: args.preload_memory_limit,
        },
        sink_secret_key,
        gc: GcJobSettings {
            namespace: args.namespace.clone(),
            image: args.gc_image,
            service_account: Some("studiodrive-gc".into()),
            metadata_url_secret: gc_secret,
            s3_credentials_secret: gc_s3_credentials,
            store_env: args
                .object_store_bucket
                .iter()
                .map(|b| ("STUDIODRIVE_STORE".to_string(), format!("s3://{b}")))
                .chain(
                    args.object_store_endpoint
                        .iter()
                        .map(|e| ("STUDIODRIVE_S3_ENDPOINT".to_string(), e.clone())),
                )
                .chain(
                    args.object_store_region
                        .iter()
                        .map(|r| ("STUDIODRIVE_S3_REGION".to_string(), r.clone())),
                )
                .collect(),
        },
    });
    {
        let token = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            token.cancel();
        });
    }
    let lease = LeaseSettings {
        name: "studiodrive-operator".into(),
        namespace: args.namespace,
        identity: args.identity,
        duration_secs: 15,
    };
    run_with_leader_election(ctx, lease, shutdown).await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => drop(ctrl_c.await),
    }
}

#[cfg(test)]
mod tests {
    use super::quantity;

    #[test]
    fn quantities_are_checked_at_start() {
        for ok in ["100m", "0.5", "128Mi", "2G", "1"] {
            assert_eq!(quantity(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "Mi", "1.", ".5", "1..2", "12mb", "-1", "1 Gi"] {
            assert!(quantity(bad).is_err(), "{bad:?}");
        }
    }
}

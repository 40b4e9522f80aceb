//! `sink put|list|delete` (event sinks of a workspace) and `relay` (delivers them).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use drive::data::Kek;
use drive::meta::SinkStart;
use drive::relay::{EventFilter, Relay, RelayConfig, SinkSpec, SinkTarget};
use tokio_util::sync::CancellationToken;

use super::StorageArgs;

#[derive(Debug, clap::Subcommand)]
pub enum SinkCmd {
    /// Creates a sink of the workspace, or changes one (its position is kept).
    Put(SinkPutArgs),
    /// Lists every sink with its position, counts and last error.
    List {
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Deletes a sink (its undelivered events are no longer kept for it).
    Delete {
        #[command(flatten)]
        storage: StorageArgs,
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct SinkPutArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// The sink's name (letters, digits, '-', '.', '_', '/').
    pub name: String,
    /// NATS server (`nats://host:4222`): events go to JetStream subjects `<subject>.<kind>`.
    #[arg(long, conflicts_with = "webhook_url", requires = "subject")]
    pub nats_url: Option<String>,
    #[arg(long)]
    pub subject: Option<String>,
    /// A JetStream stream to create (capturing `<subject>.>`) if it does not exist.
    #[arg(long, requires = "nats_url")]
    pub stream: Option<String>,
    /// An HTTP(S) endpoint that receives each event as a CloudEvents 1.0 JSON POST.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Only events at or below this workspace path (repeatable).
    #[arg(long = "path-prefix")]
    pub path_prefixes: Vec<String>,
    /// Only events of this kind (repeatable: create, write, unlink, rename, ...).
    #[arg(long = "kind")]
    pub kinds: Vec<String>,
    /// Deliver every event retention kept, not only new ones (for a new sink).
    #[arg(long)]
    pub from_beginning: bool,
    /// The sink's credential: a webhook's signing key (`whsec_<base64>` or raw bytes), or a
    /// NATS token or `.creds` file. Stored sealed with the sink secrets key.
    #[arg(long, requires = "sink_secret_key_file")]
    pub secret_file: Option<PathBuf>,
    /// The sink secrets key (32 raw bytes or 64 hex digits), the relays' key.
    #[arg(long, env = SINK_SECRET_KEY_ENV)]
    pub sink_secret_key_file: Option<PathBuf>,
}

const SINK_SECRET_KEY_ENV: &str = "STUDIODRIVE_SINK_SECRET_KEY_FILE";

fn sink_secret_key(path: &Path) -> anyhow::Result<Kek> {
    Kek::from_file(path).context("the sink secrets key")
}

pub async fn sink(cmd: SinkCmd) -> anyhow::Result<()> {
    match cmd {
        SinkCmd::Put(args) => {
            let target = match (args.nats_url, args.subject, args.webhook_url) {
                (Some(url), Some(subject), None) => SinkTarget::Nats {
                    url,
                    subject,
                    stream: args.stream,
                },
                (None, _, Some(url)) => SinkTarget::Webhook { url },
                _ => anyhow::bail!("give --nats-url with --subject, or --webhook-url"),
            };
            let sealed_secret = match (&args.secret_file, &args.sink_secret_key_file) {
                (Some(file), Some(key)) => {
                    let key = sink_secret_key(key)?;
                    let secret = std::fs::read(file)
                        .with_context(|| format!("reading the sink secret {}", file.display()))?;
                    drive::relay::check_secret(&target, &secret)
                        .map_err(|why| anyhow::anyhow!("the sink secret {}: {why}", file.display()))?;
                    Some(
                        drive::relay::seal_secret(&key, &args.name, &secret)
                            .context("sealing the sink secret")?,
                    )
                }
                _ => None,
            };
            let spec = SinkSpec {
                target,
                filter: EventFilter {
                    path_prefixes: args.path_prefixes,
                    kinds: args.kinds,
                },
                sealed_secret,
            };
            spec.validate()?;
            let meta = args.storage.meta().await?;
            let ws = meta.get_workspace(&args.storage.workspace).await?;
            let start = if args.from_beginning {
                SinkStart::Beginning
            } else {
                SinkStart::Now
            };
            let sink = meta.put_event_sink(&args.name, ws.id, &spec, start).await?;
            println!(
                "sink {} of {} -> {} from event {}",
                sink.id,
                ws.name,
                spec.endpoint(),
                sink.position
            );
        }
        SinkCmd::List { storage } => {
            let meta = storage.meta().await?;
            println!("NAME\tWORKSPACE\tENDPOINT\tPOSITION\tDELIVERED\tFILTERED\tFAILURES\tRELAY\tLAST ERROR");
            for s in meta.event_sinks().await? {
                let ws = meta
                    .get_workspace_by_id(s.workspace)
                    .await
                    .map_or_else(|_| s.workspace.0.to_string(), |w| w.name);
                println!(
                    "{}\t{ws}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    s.id,
                    s.spec.endpoint(),
                    s.position,
                    s.delivered,
                    s.filtered,
                    s.consecutive_failures,
                    s.holder.as_deref().unwrap_or("-"),
                    s.last_error
                );
            }
        }
        SinkCmd::Delete { storage, name } => {
            let meta = storage.meta().await?;
            if !meta.delete_event_sink(&name).await? {
                anyhow::bail!("no event sink {name}");
            }
            println!("deleted sink {name}");
        }
    }
    Ok(())
}

/// `relay`: delivers every event sink whose lease it can take, until SIGTERM or SIGINT.
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Serve Prometheus metrics (per sink: delivered, failures, lag) on this address.
    #[arg(long, env = "STUDIODRIVE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Seconds a sink stays with this relay without a renewal (another relay takes it after).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_secs: u64,
    /// Milliseconds between looks for new events when a sink is caught up.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_ms: u64,
    /// Longest wait in milliseconds between attempts on a failing sink.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub max_backoff_ms: u64,
    /// The sink secrets key (32 raw bytes or 64 hex digits) that opens sinks' sealed
    /// credentials; sinks with one fail (Degraded) without it.
    #[arg(long, env = SINK_SECRET_KEY_ENV)]
    pub sink_secret_key_file: Option<PathBuf>,
}

pub async fn relay(args: RelayArgs) -> anyhow::Result<()> {
    let secret_key = args
        .sink_secret_key_file
        .as_deref()
        .map(sink_secret_key)
        .transpose()?;
    let meta = args.storage.meta().await?;
    let defaults = RelayConfig::default();
    let config = RelayConfig {
        lease: Duration::from_secs(args.lease_secs),
        poll_interval: Duration::from_millis(args.poll_ms),
        max_backoff: Duration::from_millis(args.max_backoff_ms),
        min_backoff: defaults
            .min_backoff
            .min(Duration::from_millis(args.max_backoff_ms)),
        rescan_interval: defaults
            .rescan_interval
            .min(Duration::from_secs(args.lease_secs) / 2),
        secret_key,
        ..defaults
    };
    tracing::info!(holder = %config.holder, sink_secret_key = ?config.secret_key, "relay: starting");
    let relay = Relay::new(meta, config);
    let cancel = CancellationToken::new();
    if let Some(addr) = args.metrics_addr {
        let metrics = Arc::new(crate::metrics::RelayMetrics::new(relay.stats())?);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, metrics, cancel).await {
                tracing::error!(error = %e, "relay: metrics endpoint failed");
            }
        });
    }
    let stop = cancel.clone();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
        stop.cancel();
    });
    relay.run(cancel).await;
    Ok(())
}

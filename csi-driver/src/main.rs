//! `studiodrive-csi`: the CSI plugin and the local FUSE mount.

use clap::{Parser, Subcommand};
use drive_csi::cli::{StorageArgs, admin, api, events, meta, mhl, mount, preload, publish, serve, trash};

#[derive(Debug, Parser)]
#[command(
    name = "studiodrive-csi",
    version,
    about = "Studio Drive: CSI driver and FUSE mount"
)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the CSI plugin (Identity, Controller, Node) on a Unix socket.
    Serve(serve::ServeArgs),
    /// Mounts a workspace (or a folder or snapshot of it) with FUSE.
    Mount(mount::MountArgs),
    /// Creates, lists and deletes snapshots.
    #[command(subcommand)]
    Snapshot(admin::SnapshotCmd),
    /// Moves or copies a finished folder into its published place and snapshots it, in one
    /// transaction.
    Publish(publish::PublishArgs),
    /// Gives a folder back its tree at a snapshot or an earlier epoch, in one transaction.
    Revert(publish::RevertArgs),
    /// Prints the frame sequences of a folder.
    Sequences {
        #[command(flatten)]
        storage: StorageArgs,
        path: String,
    },
    /// Returns once the mount at PATH answers (internal: a new mount runs it in a child
    /// process before it sets the kernel's readahead).
    #[command(hide = true)]
    WaitMounted { path: std::path::PathBuf },
    /// Runs one lifecycle pass (purge of deleted data and snapshots, then the block sweep)
    /// and prints its report.
    Gc(admin::GcArgs),
    /// Lists and restores deleted files and folders.
    #[command(subcommand)]
    Trash(trash::TrashCmd),
    /// Writes and checks ASC MHL hash histories of folders.
    #[command(subcommand)]
    Mhl(mhl::MhlCmd),
    /// Media DataStores and documents: schema-checked JSON on files, queries (docs/media.md).
    #[command(subcommand)]
    Meta(meta::MetaCmd),
    /// Serves the HTTP/JSON API (DataStores, documents, queries, workspace operations;
    /// OpenAPI at /openapi.json), authenticated by service-account tokens.
    Api(api::ApiArgs),
    /// Prints the workspace's change feed.
    Events {
        #[command(flatten)]
        storage: StorageArgs,
        /// Keep following new events.
        #[arg(long)]
        follow: bool,
    },
    /// Declares, lists and deletes where the change feed is delivered (NATS JetStream,
    /// CloudEvents webhooks).
    #[command(subcommand)]
    Sink(events::SinkCmd),
    /// Delivers the change feed to every event sink (one relay per sink at a time).
    Relay(events::RelayArgs),
    /// Fetches the files a manifest names into the node's block cache ahead of a job; exits 2
    /// when a named file is missing or failed (the others are fetched).
    Preload(preload::PreloadArgs),
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt().with_env_filter(filter).json().init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    match cli.command {
        Command::Mount(args) => mount::run(args),
        Command::Serve(args) => serve::run(args),
        Command::WaitMounted { path } => mount::wait_mounted(&path),
        Command::Mhl(cmd) => mhl::run(cmd),
        other => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                match other {
                    Command::Snapshot(cmd) => admin::snapshot(cmd).await,
                    Command::Sequences { storage, path } => admin::sequences(storage, path).await,
                    Command::Events { storage, follow } => admin::events(storage, follow).await,
                    Command::Gc(args) => admin::gc(args).await,
                    Command::Trash(cmd) => trash::trash(cmd).await,
                    Command::Sink(cmd) => events::sink(cmd).await,
                    Command::Relay(args) => events::relay(args).await,
                    Command::Preload(args) => {
                        let status = preload::preload(args).await?;
                        if status != 0 {
                            std::process::exit(status);
                        }
                        Ok(())
                    }
                    Command::Publish(args) => publish::publish(args).await,
                    Command::Meta(cmd) => meta::run(cmd).await,
                    Command::Api(args) => api::run(args).await,
                    Command::Revert(args) => publish::revert(args).await,
                    Command::Mount(_) | Command::Serve(_) | Command::WaitMounted { .. } | Command::Mhl(_) => {
                        anyhow::bail!("runs outside this runtime")
                    }
                }
            })
        }
    }
}

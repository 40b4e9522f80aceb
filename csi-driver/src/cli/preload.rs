//! `preload --manifest FILE`: fetches the files a manifest names (paths, globs, frame
//! ranges; see `drive::preload`) into the node's block cache, so the mounts that use that
//! cache read them without object-store requests.
//!
//! With `--node-cache` it fills the node plugin's shared cache of the workspace (the
//! directory the node's publications of that workspace mount with,
//! [`crate::csi::publish::node_cache_dir`]). With `--report-as NAME` it records its progress
//! in the metadata store as preload NAME on this node (about once a second, and at the end),
//! which is what a volume's `preload` attribute makes NodePublishVolume wait for.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use drive::PgMetaStore;
use drive::cache::CacheConfig;
use drive::meta::{PreloadRun, PreloadState};
use drive::mount::{DiskCache, MountPath, MountSpec, MountTarget};
use drive::preload::{Manifest, Progress};
use tokio_util::sync::CancellationToken;

use super::StorageArgs;
use super::mount::{map_cache_entry, workspace_kek, workspace_store};
use crate::csi::publish::{default_cache_dir, node_cache_dir};
use crate::csi::secrets::PublishSecrets;

#[derive(Debug, clap::Args)]
pub struct PreloadArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// The manifest: one workspace path per line, with globs (`*.exr`), `**`, and frame
    /// patterns with ranges (`shot010/comp/sh010_comp.%04d.exr [1001-1240]`).
    #[arg(
        long,
        required_unless_present = "manifest_text",
        conflicts_with = "manifest_text"
    )]
    pub manifest: Option<PathBuf>,
    /// The manifest itself rather than a file of it (how the operator's preload Jobs pass a
    /// Preload's `spec.manifest`).
    #[arg(long, value_name = "TEXT")]
    pub manifest_text: Option<String>,
    /// The cache to fill: the one the node's mounts use (default <state-dir>/cache, as `mount`).
    #[arg(long, conflicts_with = "node_cache")]
    pub cache_dir: Option<PathBuf>,
    /// Fill the node plugin's shared cache of the workspace, the one its publications on
    /// this node use: <csi-cache-dir>/workspaces/<workspace id>.
    #[arg(long)]
    pub node_cache: bool,
    /// The node plugin's cache directory (its `serve --cache-dir`; default
    /// <state-dir>/csi-cache, as the plugin's). Used with --node-cache only.
    #[arg(long, env = "STUDIODRIVE_CACHE_DIR")]
    pub csi_cache_dir: Option<PathBuf>,
    /// Record progress in the metadata store as the run of preload NAME on this node (what a
    /// volume's `preload` attribute waits for).
    #[arg(long, value_name = "NAME")]
    pub report_as: Option<String>,
    /// The node the report is for: the node plugin's node id (default: the host name, as the
    /// plugin's). Used with --report-as only.
    #[arg(long, env = "STUDIODRIVE_NODE_ID")]
    pub node: Option<String>,
    /// Cache size limit in bytes (as the mounts' `--cache-size`; with --node-cache, the
    /// volumes' cacheSize).
    #[arg(long, default_value_t = 10 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_size: u64,
    /// The free-space floor of the cache's file system (as the mounts').
    #[arg(long, env = "STUDIODRIVE_CACHE_MIN_FREE", default_value_t = drive::cache::DEFAULT_MIN_FREE_RATIO)]
    pub cache_min_free: f64,
    /// Key-encryption key file of an encrypted workspace (or STUDIODRIVE_ENCRYPTION_KEY).
    #[arg(long)]
    pub encryption_key_file: Option<PathBuf>,
    /// Publish secrets as the node plugin writes them (key and store credentials).
    #[arg(long)]
    pub secrets_file: Option<PathBuf>,
    /// Blocks fetched at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
}

/// Exit status when some named file is missing or could not be fetched (the rest was).
pub const INCOMPLETE: i32 = 2;

/// How often a running preload writes its progress.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Where a run's progress goes: preload `name` on `node`.
struct Reporter {
    meta: PgMetaStore,
    run: PreloadRun,
}

impl Reporter {
    async fn record(&self) -> anyhow::Result<()> {
        self.meta
            .record_preload_run(&self.run)
            .await
            .with_context(|| format!("record preload {} on node {}", self.run.name, self.run.node))
    }

    /// Records the run as failed for `error` (nothing, or not all, was fetched).
    async fn fail(&mut self, error: String) -> anyhow::Result<()> {
        self.run.state = PreloadState::Failed;
        self.run.failed_files = self.run.failed_files.max(1);
        self.run.first_errors.insert(0, error);
        self.record().await
    }
}

fn host_name() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("read the host name; pass --node")?
        .trim()
        .to_string())
}

pub async fn preload(args: PreloadArgs) -> anyhow::Result<i32> {
    // Names first: bad input records nothing.
    let report_as = match &args.report_as {
        Some(name) => {
            drive::preload::validate_name(name).map_err(anyhow::Error::msg)?;
            let node = match &args.node {
                Some(node) => node.clone(),
                None => host_name()?,
            };
            crate::csi::validate::id("node", &node).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            Some((name.clone(), node))
        }
        None => None,
    };
    let text = match (&args.manifest, &args.manifest_text) {
        (Some(path), _) => {
            std::fs::read_to_string(path).with_context(|| format!("read the manifest {}", path.display()))?
        }
        (None, Some(text)) => text.clone(),
        (None, None) => anyhow::bail!("--manifest FILE or --manifest-text TEXT is required"),
    };
    let parsed = Manifest::parse(&text);
    let meta = args.storage.meta().await?;
    let mut reporter = report_as.map(|(name, node)| Reporter {
        meta: meta.clone(),
        run: PreloadRun::start(&name, &node, &args.storage.workspace),
    });
    if let Some(r) = &reporter {
        r.record().await?;
    }
    match run(&args, &meta, parsed, reporter.as_mut()).await {
        Ok(code) => Ok(code),
        Err(e) => {
            // A run that could not go on says so, or publishes would wait for it forever.
            if let Some(r) = &mut reporter {
                r.fail(format!("{e:#}")).await?;
            }
            Err(e)
        }
    }
}

async fn run(
    args: &PreloadArgs,
    meta: &PgMetaStore,
    parsed: Result<Manifest, drive::preload::ManifestError>,
    mut reporter: Option<&mut Reporter>,
) -> anyhow::Result<i32> {
    // A bad manifest fails before anything is fetched.
    let manifest = parsed?;
    let state = args.storage.state_dir()?;
    let secrets = match &args.secrets_file {
        Some(path) => PublishSecrets::read_file(path)?,
        None => PublishSecrets::default(),
    };
    let target = MountTarget {
        workspace: args.storage.workspace.clone(),
        path: MountPath::FromRoot("/".into()),
        snapshot: None,
    };
    let cache_dir = if args.node_cache {
        let resolved = drive::mount::resolve(meta, &target).await?;
        let csi_cache = args
            .csi_cache_dir
            .clone()
            .unwrap_or_else(|| default_cache_dir(&state));
        node_cache_dir(&csi_cache, resolved.workspace.id)
    } else {
        args.cache_dir.clone().unwrap_or_else(|| state.join("cache"))
    };
    let mut spec = MountSpec::new(target, state.join("staging"));
    spec.read_only = true;
    spec.kek = workspace_kek(&secrets, args.encryption_key_file.as_deref())?;
    let mut cache = CacheConfig::new(cache_dir, args.cache_size);
    cache.min_free_ratio = args.cache_min_free;
    cache.read_entry = map_cache_entry;
    spec.disk_cache = DiskCache::Open(cache);
    let store = workspace_store(&args.storage, meta, &args.storage.workspace, &secrets).await?;
    let opened = drive::mount::open(meta.clone(), store, &spec).await?;
    let resolution = drive::preload::resolve(meta, opened.resolved.root.ino, &manifest).await?;
    let missing: Vec<String> = resolution
        .missing
        .iter()
        .map(|m| format!("missing: line {m}"))
        .collect();
    if let Some(r) = reporter.as_deref_mut() {
        r.run.files = resolution.files.len() as u64;
        r.run.bytes = resolution.files.iter().map(|f| f.size).sum();
        r.run.failed_files = missing.len() as u64;
        r.run.first_errors = missing.clone();
        r.record().await?;
    }
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    // Progress about once a second, from a task of its own; it is stopped (and awaited)
    // before the final record, so a late tick cannot overwrite it.
    let ticker = reporter.as_deref().map(|r| {
        let (meta, mut run, progress, stop) = (r.meta.clone(), r.run.clone(), progress.clone(), stop.clone());
        let missing = missing.len() as u64;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(REPORT_EVERY) => {}
                }
                run.done_files = progress.done_files.load(Ordering::Relaxed);
                run.done_bytes = progress.done_bytes.load(Ordering::Relaxed);
                run.failed_files = missing + progress.failed_files.load(Ordering::Relaxed);
                if let Err(e) = meta.record_preload_run(&run).await {
                    tracing::warn!(error = %e, "could not record preload progress");
                }
            }
        })
    });
    let started = std::time::Instant::now();
    let report = drive::preload::fetch(
        meta,
        &opened.blocks,
        u64::from(opened.resolved.workspace.block_size),
        &resolution.files,
        args.parallel as usize,
        progress.clone(),
    )
    .await;
    stop.cancel();
    if let Some(ticker) = ticker {
        let _ = ticker.await;
    }
    println!(
        "preloaded {} of {} files ({} bytes) in {:.1} s: {} blocks fetched, {} already cached",
        report.done,
        report.files,
        report.bytes,
        started.elapsed().as_secs_f64(),
        report.fetched_blocks,
        report.cached_blocks
    );
    for missing in &resolution.missing {
        println!("missing: line {missing}");
    }
    for failed in &report.failed {
        println!("failed: {failed}");
    }
    let complete = resolution.missing.is_empty() && report.failed.is_empty();
    if let Some(r) = reporter {
        r.run.done_files = report.done;
        r.run.done_bytes = progress.done_bytes.load(Ordering::Relaxed);
        r.run.failed_files = (resolution.missing.len() + report.failed.len()) as u64;
        r.run.first_errors = missing
            .into_iter()
            .chain(report.failed.iter().map(|f| format!("failed: {f}")))
            .take(drive::meta::PRELOAD_MAX_ERRORS)
            .collect();
        r.run.state = if complete {
            PreloadState::Done
        } else {
            PreloadState::Failed
        };
        r.record().await?;
        println!(
            "recorded as preload {} on node {}: {}",
            r.run.name,
            r.run.node,
            r.run.state.as_str()
        );
    }
    Ok(if complete { 0 } else { INCOMPLETE })
}

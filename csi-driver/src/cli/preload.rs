//! `preload --manifest FILE`: fetches the files a manifest names (paths, globs, frame
//! ranges; see `drive::preload`) into the node's block cache, so the mounts that use that
//! cache read them without object-store requests.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use drive::cache::CacheConfig;
use drive::mount::{DiskCache, MountPath, MountSpec, MountTarget};
use drive::preload::{Manifest, Progress};

use super::StorageArgs;
use super::mount::{map_cache_entry, workspace_kek, workspace_store};
use crate::csi::secrets::PublishSecrets;

#[derive(Debug, clap::Args)]
pub struct PreloadArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// The manifest: one workspace path per line, with globs (`*.exr`), `**`, and frame
    /// patterns with ranges (`shot010/comp/sh010_comp.%04d.exr [1001-1240]`).
    #[arg(long)]
    pub manifest: PathBuf,
    /// The cache to fill: the one the node's mounts use (default <state-dir>/cache, as `mount`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Cache size limit in bytes (as the mounts' `--cache-size`).
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

pub async fn preload(args: PreloadArgs) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(&args.manifest)
        .with_context(|| format!("read the manifest {}", args.manifest.display()))?;
    // A bad manifest fails before anything is fetched.
    let manifest = Manifest::parse(&text)?;
    let state = args.storage.state_dir()?;
    let secrets = match &args.secrets_file {
        Some(path) => PublishSecrets::read_file(path)?,
        None => PublishSecrets::default(),
    };
    let mut spec = MountSpec::new(
        MountTarget {
            workspace: args.storage.workspace.clone(),
            path: MountPath::FromRoot("/".into()),
            snapshot: None,
        },
        state.join("staging"),
    );
    spec.read_only = true;
    spec.kek = workspace_kek(&secrets, args.encryption_key_file.as_deref())?;
    let mut cache = CacheConfig::new(
        args.cache_dir.clone().unwrap_or_else(|| state.join("cache")),
        args.cache_size,
    );
    cache.min_free_ratio = args.cache_min_free;
    cache.read_entry = map_cache_entry;
    spec.disk_cache = DiskCache::Open(cache);
    let meta = args.storage.meta().await?;
    let store = workspace_store(&args.storage, &meta, &args.storage.workspace, &secrets).await?;
    let opened = drive::mount::open(meta.clone(), store, &spec).await?;
    let resolution = drive::preload::resolve(&meta, opened.resolved.root.ino, &manifest).await?;
    let started = std::time::Instant::now();
    let report = drive::preload::fetch(
        &meta,
        &opened.blocks,
        u64::from(opened.resolved.workspace.block_size),
        &resolution.files,
        args.parallel as usize,
        Arc::new(Progress::default()),
    )
    .await;
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
    Ok(if resolution.missing.is_empty() && report.failed.is_empty() {
        0
    } else {
        INCOMPLETE
    })
}

//! `studiodrive-csi mount`: one FUSE mount of a workspace (path, snapshot) in this process.
//!
//! Without `--foreground` the command starts itself again in the background and returns once
//! the mount is live. SIGTERM/SIGINT commit open files and unmount; `fusermount3 -u` ends the
//! session the same way. A mount point left dead by a killed mount ("transport endpoint is
//! not connected") is lazily unmounted before mounting again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use drive::cache::CacheConfig;
use drive::data::Kek;
use drive::mount::{DiskCache, MountPath, MountSpec, MountTarget, NewWorkspace, OpenedMount};
use tokio_util::sync::CancellationToken;

use crate::cli::StorageArgs;
use crate::fuse_adapter::{DriveFuse, Ttls, run_invalidator};
use crate::metrics::Metrics;
use crate::mount_table::{clean_stale, fuse_mount_devices_at, is_mounted};

/// Arguments of `mount`.
#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Folder of the workspace to mount as the root.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Mount this snapshot (read-only) instead of the live tree.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Refuse every change (EROFS).
    #[arg(long)]
    pub read_only: bool,
    /// Node-local cache directory (default <state-dir>/cache).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Cache size limit in bytes (0 turns the cache off).
    #[arg(long, default_value_t = 10 << 30)]
    pub cache_size: u64,
    /// Memory for verified block plaintext in bytes: hot blocks are served from here
    /// without reading and verifying them from the disk cache again (0 turns it off).
    #[arg(long, default_value_t = 256 << 20)]
    pub memory_cache_size: u64,
    /// Evict cached blocks while the cache's file system has less than this fraction free
    /// (as `df` counts it: 100% minus its Use%).
    #[arg(long, default_value_t = 0.1)]
    pub cache_min_free: f64,
    /// Block size of a workspace created by this command (1-64 MiB).
    #[arg(long, default_value_t = drive::model::DEFAULT_BLOCK_SIZE)]
    pub block_size: u32,
    /// Key-encryption key file (32 raw bytes or 64 hex digits). A workspace created by this
    /// command is then encrypted; an encrypted workspace needs it (or
    /// STUDIODRIVE_ENCRYPTION_KEY) to mount.
    #[arg(long)]
    pub encryption_key_file: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Stay in the foreground (default: detach once mounted).
    #[arg(long)]
    pub foreground: bool,
    /// Let other users access the mount (FUSE allow_other).
    #[arg(long)]
    pub allow_other: bool,
    /// Let the kernel check permissions from mode bits (FUSE default_permissions).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub default_permissions: bool,
    /// Kernel attribute cache lifetime in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub attr_ttl_ms: u64,
    /// Kernel entry (name) cache lifetime in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub entry_ttl_ms: u64,
    /// Directory entries and attributes kept in the mount's own metadata cache (each), which
    /// the change feed keeps coherent with other mounts (0 turns it off).
    #[arg(long, default_value_t = 200_000)]
    pub metadata_cache_entries: usize,
    /// Bytes of blocks held by open files across the mount: prefetched ahead of sequential
    /// readers (each file's window is at most 64 MiB) and each file's block being read.
    #[arg(long, default_value_t = 192 << 20)]
    pub read_buffer_size: u64,
    /// Milliseconds this mount's file locks (fcntl, flock) outlive its last lease renewal:
    /// how long another mount waits for the locks of a mount that died.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(300..=3_600_000))]
    pub lock_lease_ms: u64,
    /// Kernel readahead of the mount in bytes (its read_ahead_kb in sysfs): with the kernel's
    /// 128 KiB default, sequential reads reach the mount as 256 KiB requests; with 1 MiB or
    /// more, as 1 MiB requests, several in flight (0 keeps the kernel's default).
    #[arg(long, default_value_t = 4 << 20)]
    pub kernel_readahead: u64,
    /// FUSE worker threads (default: number of CPUs, at least 2).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to mount.
    pub mountpoint: PathBuf,
}

/// Runs `mount`.
pub fn run(args: MountArgs) -> anyhow::Result<()> {
    clean_stale(&args.mountpoint)?;
    if !args.foreground {
        return detach(&args);
    }
    tune_allocator();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("studiodrive")
        .build()?;
    rt.block_on(serve(args, rt.handle().clone()))
}

/// Tunes glibc's allocator for block-sized buffers, before any other thread starts. By
/// default each thread may get its own arena and large freed chunks go back to the kernel,
/// so the 4 MiB buffers that move between tokio's blocking threads are faulted in and zeroed
/// again and again: a warm 4 GiB read made about 200,000 page faults and used 4.3 CPU
/// seconds in the mount; with one arena that keeps freed memory (up to 1 GiB at its top),
/// 10,000-16,000 faults and 2.5-3.0 s.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets allocator parameters and is called while this is the only
    // thread; a refused setting (return 0) leaves glibc's default.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// A disk-cache entry mapped read-only instead of read into a buffer: a warm sequential read
/// then costs one copy (into the FUSE reply) instead of two, which halved the mount's CPU time
/// on a 4 GiB re-read (2.5-3.2 s -> 1.2-1.7 s). Pages are mapped up front (`MAP_POPULATE`).
/// The price of not copying: if another process truncated an entry, or the disk failed under
/// a mapped page the kernel had evicted, the access would fault (SIGBUS) instead of becoming
/// a cache miss. Where the file system cannot map files the entry is read instead.
fn map_cache_entry(path: &Path) -> std::io::Result<bytes::Bytes> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(bytes::Bytes::new()); // cannot be mapped; fails the check as damaged
    }
    #[allow(unsafe_code)]
    // SAFETY: the map is read-only, and the cache never writes to or truncates an entry once
    // it is renamed into place (it only unlinks, which leaves the mapping intact); see above
    // for what another process could do.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) };
    match map {
        Ok(map) => Ok(bytes::Bytes::from_owner(map)),
        Err(_) => drive::cache::read_entry_copied(path),
    }
}

/// Sets the readahead of the FUSE mount just made at the absolute path `mountpoint`, in its
/// backing device's sysfs entry (needs root). FUSE's `max_readahead` cannot do it: the kernel
/// offers its 128 KiB default in INIT and takes the smaller value from the reply, so this
/// runs after INIT, which a `stat` of the mount waits for (the session must be running).
///
/// The `stat` runs in a child process (this binary again, `wait-mounted`, so no coreutils are
/// needed in a container image), never in this one: if this process died (SIGTERM, kill -9)
/// after its session thread had taken the GETATTR but before it answered, a thread of ours
/// would wait for its own dead server forever, the process could not finish exiting, and the
/// mount would hang (seen once in CI). A child's `stat` gets ENOTCONN instead.
fn set_kernel_readahead(mountpoint: &Path, bytes: u64) -> anyhow::Result<()> {
    let status = std::process::Command::new("/proc/self/exe")
        .arg("wait-mounted")
        .arg(mountpoint)
        .stdout(std::process::Stdio::null())
        .status()
        .context("run `studiodrive-csi wait-mounted` on the new mount")?;
    anyhow::ensure!(status.success(), "stat of the new mount failed ({status})");
    let dev = fuse_mount_devices_at(mountpoint)
        .pop()
        .context("the new mount is not in /proc/self/mountinfo")?;
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    std::fs::write(&path, (bytes / 1024).max(4).to_string()).with_context(|| format!("write {path}"))?;
    tracing::debug!(%path, bytes, "kernel readahead set");
    Ok(())
}

/// `studiodrive-csi wait-mounted PATH` (internal): returns once the file system at `path`
/// answers a `stat`; [`set_kernel_readahead`] runs it in a child process.
pub fn wait_mounted(path: &Path) -> anyhow::Result<()> {
    std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok(())
}

fn detach(args: &MountArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).arg("--foreground");
    cmd.stdin(std::process::Stdio::null());
    let log = args.storage.state_dir()?.join("mount.log");
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    cmd.stdout(file.try_clone()?).stderr(file);
    let mut child = cmd.spawn().context("start the mount process")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if is_mounted(&args.mountpoint) {
            println!(
                "mounted {} (pid {}, log {})",
                args.mountpoint.display(),
                child.id(),
                log.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the mount process exited with {status}; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the mount did not appear within 120 s; see {}", log.display())
}

/// The front door's settings from the command line: `--path` is below the snapshot's folder
/// when `--snapshot` is given, a missing workspace is created (encrypted with a key file).
fn mount_spec(args: &MountArgs, state: &Path) -> anyhow::Result<MountSpec> {
    let kek = match &args.encryption_key_file {
        Some(path) => Some(Kek::from_file(path)?),
        None => Kek::from_env()?,
    };
    let target = MountTarget {
        workspace: args.storage.workspace.clone(),
        path: MountPath::FromRoot(args.path.clone()),
        snapshot: args.snapshot.clone(),
    };
    let mut spec = MountSpec::new(target, state.join("staging"));
    spec.read_only = args.read_only;
    if args.cache_size > 0 {
        let dir = args.cache_dir.clone().unwrap_or_else(|| state.join("cache"));
        let mut cfg = CacheConfig::new(dir, args.cache_size);
        cfg.min_free_ratio = args.cache_min_free;
        cfg.read_entry = map_cache_entry;
        spec.disk_cache = DiskCache::Open(cfg);
    }
    spec.memory_cache_bytes = args.memory_cache_size;
    spec.read_buffer_bytes = args.read_buffer_size;
    spec.meta_cache_entries = args.metadata_cache_entries;
    spec.lock_lease = Duration::from_millis(args.lock_lease_ms);
    spec.kek = kek;
    // A key file given at creation makes the workspace encrypted.
    spec.create = Some(NewWorkspace {
        block_size: args.block_size,
        encrypted: args.encryption_key_file.is_some(),
    });
    Ok(spec)
}

async fn serve(args: MountArgs, rt: tokio::runtime::Handle) -> anyhow::Result<()> {
    let state = args.storage.state_dir()?;
    let spec = mount_spec(&args, &state)?;
    let meta = args.storage.meta().await?;
    let store = args.storage.open_store().await?;
    let describe = store.describe();
    let OpenedMount {
        fs,
        blocks,
        resolved,
        read_only,
    } = drive::mount::open(meta.clone(), store, &spec).await?;
    let (ws, view) = (resolved.workspace, resolved.view);
    tracing::info!(store = %describe, encrypted = ws.encrypted, "block store");
    let metrics = Arc::new(Metrics::new()?);
    metrics.watch_blocks((*blocks).clone());
    metrics.watch_meta_cache(fs.meta_cache_stats());
    let ttls = Ttls {
        attr: Duration::from_millis(args.attr_ttl_ms),
        entry: Duration::from_millis(args.entry_ttl_ms),
    };

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("studiodrive:{}", ws.name)),
        fuser::MountOption::Subtype("studiodrive".into()),
        fuser::MountOption::NoAtime,
    ];
    if args.default_permissions {
        config.mount_options.push(fuser::MountOption::DefaultPermissions);
    }
    if read_only {
        config.mount_options.push(fuser::MountOption::RO);
    }
    config.acl = if args.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    config.n_threads = Some(args.threads.unwrap_or(cpus).max(2));
    config.clone_fd = true;

    let mountpoint = std::fs::canonicalize(&args.mountpoint)
        .with_context(|| format!("mount point {}", args.mountpoint.display()))?;
    let adapter = DriveFuse::new(fs.clone(), rt.clone(), ttls, metrics.clone());
    let mut session = fuser::Session::new(adapter, &args.mountpoint, &config)
        .with_context(|| format!("mount {}", args.mountpoint.display()))?;
    let notifier = session.notifier();
    let mut unmounter = session.unmount_callable();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let _ = done_tx.send(session.run());
        })?;
    if args.kernel_readahead > 0 {
        let bytes = args.kernel_readahead;
        if let Err(e) = tokio::task::spawn_blocking(move || set_kernel_readahead(&mountpoint, bytes)).await? {
            tracing::warn!(error = %e, "kernel readahead left at the kernel's default");
        }
    }
    tracing::info!(mountpoint = %args.mountpoint.display(), workspace = %ws.name, "mounted");

    let cancel = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    if !view.is_read_only() {
        tasks.spawn(run_invalidator(
            fs.clone(),
            notifier,
            Duration::from_millis(200),
            cancel.clone(),
        ));
        let (fs, c) = (fs.clone(), cancel.clone());
        tasks.spawn(async move { fs.run_removals(c.cancelled()).await });
    }
    {
        let (fs, c) = (fs.clone(), cancel.clone());
        tasks.spawn(async move { fs.run_lock_lease(c.cancelled()).await });
    }
    if let Some(addr) = args.metrics_addr {
        let (m, c) = (metrics.clone(), cancel.clone());
        tasks.spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, m, c).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    {
        let (m, meta, c) = (metrics.clone(), meta.clone(), cancel.clone());
        tasks.spawn(async move {
            loop {
                let s = meta.stats();
                m.meta_commits
                    .set(s.commits.load(std::sync::atomic::Ordering::Relaxed) as i64);
                m.meta_retries
                    .set(s.retries.load(std::sync::atomic::Ordering::Relaxed) as i64);
                tokio::select! {
                    () = c.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ended_by_kernel = tokio::select! {
        _ = sigterm.recv() => false,
        _ = tokio::signal::ctrl_c() => false,
        r = done_rx => {
            if let Ok(Err(e)) = r { tracing::warn!(error = %e, "FUSE session ended with an error"); }
            true
        }
    };
    // Commit whatever open files staged before the kernel connection goes away.
    let flushed = fs.flush_all().await;
    if !ended_by_kernel {
        let mp = args.mountpoint.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = unmounter.unmount() {
                tracing::warn!(error = %e, "unmount failed; detaching lazily");
                let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
            }
        })
        .await?;
    }
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    flushed.context("commit open files at unmount")?;
    tracing::info!("unmounted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::map_cache_entry;
    use drive::cache::{BlockCache, CacheConfig};

    #[tokio::test]
    async fn mapped_cache_entries_read_back_and_damage_is_still_caught() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = CacheConfig::new(dir.path().join("cache"), 64 << 20);
        cfg.min_free_ratio = 0.0;
        cfg.read_entry = map_cache_entry;
        let cache = BlockCache::open(cfg).unwrap();
        let object = bytes::Bytes::from((0..3 << 20).map(|i: u32| (i % 251) as u8).collect::<Vec<_>>());
        let hash = *blake3::hash(&object).as_bytes();
        cache.insert(hash, object.clone()).await;
        let hit = cache.get(&hash).await.expect("a hit");
        assert_eq!(hit, object);

        // The mapping outlives the entry's removal (eviction only unlinks).
        cache.remove(&hash);
        assert_eq!(hit, object);
        assert!(cache.get(&hash).await.is_none());

        // A damaged entry read through a map is caught by its CRC and dropped.
        cache.insert(hash, object.clone()).await;
        let name = blake3::Hash::from_bytes(hash).to_hex().to_string();
        let file = dir.path().join("cache").join(&name[..2]).join(&name);
        assert!(file.exists(), "the entry is at {}", file.display());
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[1000] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        assert!(cache.get(&hash).await.is_none(), "a flipped bit is a miss");
        assert!(!file.exists(), "and the entry is gone");

        // An empty file (cannot be mapped) reads as empty, which no check accepts.
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(map_cache_entry(&empty).unwrap().is_empty());
    }
}

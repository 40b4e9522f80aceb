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
use drive::data::{ChunkStore, Kek, S3ChunkStore, S3Config};
use drive::mount::{DiskCache, MountPath, MountSpec, MountTarget, NewWorkspace, OpenedMount};
use drive::ports::{Clock as _, SystemClock};
use drive::rules::access::{AccessCheck, MountAccess};
use tokio_util::sync::CancellationToken;

use crate::cli::StorageArgs;
use crate::csi::secrets::PublishSecrets;
use crate::fuse_adapter::{DriveFuse, Ttls, run_invalidator};
use crate::metrics::Metrics;
use crate::mount_table::{clean_stale, fuse_mount_devices_at, is_mounted};

/// Arguments of `mount`.
#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Folder to mount as the root: a path of the workspace, or with `--snapshot` a path below
    /// the folder the snapshot was taken of.
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
    /// without reading and verifying them from the disk cache again (0 turns it off). One of
    /// the budgets that add up to the mount's memory bound ([`MEMORY_BOUND`]).
    #[arg(long, default_value_t = 32 << 20)]
    pub memory_cache_size: u64,
    /// Also write full blocks this mount uploads to the cache, so reading back what this
    /// node wrote is served from its disk; without it only small files and the last blocks
    /// of files are, and every other written byte reaches the disk once (in the object
    /// store) instead of twice.
    #[arg(long, env = "STUDIODRIVE_CACHE_LARGE_WRITES")]
    pub cache_large_writes: bool,
    /// Evict cached blocks while the cache's file system has less than this fraction free
    /// (as `df` counts it: 100% minus its Use%). The default, 0.15, stays above kubelet's
    /// 10% eviction threshold.
    #[arg(long, env = "STUDIODRIVE_CACHE_MIN_FREE", default_value_t = drive::cache::DEFAULT_MIN_FREE_RATIO)]
    pub cache_min_free: f64,
    /// Block size of a workspace created by this command (1-64 MiB).
    #[arg(long, default_value_t = drive::model::DEFAULT_BLOCK_SIZE)]
    pub block_size: u32,
    /// Key-encryption key file (32 raw bytes or 64 hex digits). A workspace created by this
    /// command is then encrypted; an encrypted workspace needs it (or
    /// STUDIODRIVE_ENCRYPTION_KEY) to mount.
    #[arg(long)]
    pub encryption_key_file: Option<PathBuf>,
    /// Never create the workspace: a missing (or deleted) workspace fails the mount. The CSI
    /// node plugin passes this to every mount it starts, so a mount its supervisor restarts
    /// after the workspace was deleted fails instead of creating an empty, unencrypted
    /// workspace of the same name that pods would write into. Without it a missing workspace
    /// is created for a mount of its root (local use).
    #[arg(long)]
    pub existing_workspace_only: bool,
    /// A file of publish secrets, as the CSI node plugin writes it (a JSON object with
    /// `encryptionKey`, `accessKeyId`, `secretAccessKey`, each optional; 0600 in a 0700
    /// directory): the workspace's key-encryption key (preferred over
    /// `--encryption-key-file`) and the credentials of the workspace's own object store.
    #[arg(long)]
    pub secrets_file: Option<PathBuf>,
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
    /// Hashes computed while a file is written in order from its start, for its
    /// `user.studiodrive.*` attributes and `mhl create` without a read: a comma-separated list
    /// of md5, sha1, xxh64, sha256, or `none` (others are computed on demand by a read).
    #[arg(long, default_value = "xxh64", value_parser = parse_hash_list)]
    pub hash_on_write: HashList,
    /// After an OpenEXR, DPX or QuickTime/MP4 file is written, read its header in the
    /// background and file its technical metadata (docs/media.md).
    #[arg(long, env = "STUDIODRIVE_TECHNICAL_METADATA", default_value_t = true, action = clap::ArgAction::Set)]
    pub technical_metadata: bool,
    /// Bytes of blocks held by open files across the mount: prefetched ahead of sequential
    /// readers (each file's window is at most 64 MiB, and at most its even share of this
    /// budget among the files read sequentially) and each file's block being read. One of the
    /// budgets that add up to the mount's memory bound ([`MEMORY_BOUND`]).
    #[arg(long, default_value_t = 64 << 20)]
    pub read_buffer_size: u64,
    /// Bytes of blocks write sessions fill in memory across the mount: a block written in
    /// order from its start is built and uploaded from memory while this budget has room, and
    /// staged on local disk otherwise. One of the budgets that add up to the mount's memory
    /// bound ([`MEMORY_BOUND`]).
    #[arg(long, default_value_t = 32 << 20)]
    pub write_buffer_size: u64,
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
    /// Who this mount acts for, recorded with the local uid in every event it causes (the
    /// CSI node plugin passes the pod: "pod:<ns>/<name>,sa:<sa>").
    #[arg(long)]
    pub actor: Option<String>,
    /// The access decision to take again while mounted, as JSON (set by the CSI node plugin
    /// for authorized publishes): a Share deleted or expired lowers the mount to read-only or
    /// refuses lookups and opens.
    #[arg(long, hide = true)]
    pub access_check: Option<String>,
    /// Milliseconds between access rechecks.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub access_recheck_ms: u64,
    /// Where to mount.
    pub mountpoint: PathBuf,
}

/// What a mount on default settings stays under, in resident memory (docs/architecture.md,
/// "Bounded per mount"): its block budgets ([`MountArgs::block_memory`]) plus
/// [`OTHER_MEMORY`]. Each budget is a setting; raising one raises the mount's peak by as much.
pub const MEMORY_BOUND: u64 = 512 << 20;

/// Resident memory a mount uses besides block buffers: the runtime and its threads, FUSE
/// request buffers, directory windows, the metadata cache at its default 200,000 entries
/// (listing 1,000,000 entries through four handles peaked at 96 MiB in all).
pub const OTHER_MEMORY: u64 = 128 << 20;

impl MountArgs {
    /// Block bytes these settings let the mount hold at once, with `block_size` blocks and
    /// `max_uploads` uploads in flight: the memory cache, the read and write buffers, and each
    /// upload's block with its encoded object. What these buffers free goes back to the kernel
    /// ([`tune_allocator`]), so resident memory follows them.
    pub fn block_memory(&self, block_size: u64, max_uploads: usize) -> u64 {
        self.memory_cache_size
            + self.read_buffer_size
            + self.write_buffer_size
            + 2 * block_size * max_uploads as u64
    }
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

/// Buffers of this many bytes or more get a mapping of their own from glibc, returned to the
/// kernel when freed: every buffer of a 4 MiB block (fetched, decrypted, uploaded, encoded)
/// and none of the 1 MiB FUSE requests.
pub const MMAP_THRESHOLD: usize = 2 << 20;

/// Freed heap memory glibc keeps at the top of its heap before giving it back.
pub const TRIM_THRESHOLD: usize = 32 << 20;

/// Tunes glibc's allocator before any other thread starts: one arena (per-thread arenas each
/// kept their own freed memory), block-sized buffers mapped on their own
/// ([`MMAP_THRESHOLD`]), at most [`TRIM_THRESHOLD`] of freed memory kept at the heap's top.
/// Setting the thresholds also stops glibc from raising them as mapped buffers are freed
/// (its default), which moved block buffers into the heap.
///
/// The mount's memory bound rests on this: its budgets (memory cache, read buffers, uploads)
/// bound the block bytes alive, and a freed block buffer must not stay resident. Kept in the
/// heap instead (mmap threshold 64 MiB, trim threshold 1 GiB, until 2026-12), the heap
/// stayed at the high-water mark of everything once alive: 200 open files read round-robin
/// left 473 MiB of anonymous memory resident while the memory cache refilled with mapped
/// disk-cache entries (266 MiB more, file-backed), 818 MiB in all. The price is a page fault
/// per 4 KiB page of each new block buffer (docs/benchmarks.md, "Mount memory").
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets allocator parameters; a refused setting (return 0) leaves
    // glibc's default.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}

/// A disk-cache entry mapped read-only instead of read into a buffer: a warm sequential read
/// then costs one copy (into the FUSE reply) instead of two, which halved the mount's CPU time
/// on a 4 GiB re-read (2.5-3.2 s -> 1.2-1.7 s). Pages are mapped up front (`MAP_POPULATE`).
/// The price of not copying: if another process truncated an entry, or the disk failed under
/// a mapped page the kernel had evicted, the access would fault (SIGBUS) instead of becoming
/// a cache miss. Where the file system cannot map files the entry is read instead.
pub(crate) fn map_cache_entry(path: &Path) -> std::io::Result<bytes::Bytes> {
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
/// when `--snapshot` is given, a missing workspace is created (encrypted with a key file)
/// unless `--existing-workspace-only`.
fn mount_spec(args: &MountArgs, state: &Path, secrets: &PublishSecrets) -> anyhow::Result<MountSpec> {
    let kek = workspace_kek(secrets, args.encryption_key_file.as_deref())?;
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
    spec.cache_large_writes = args.cache_large_writes;
    spec.read_buffer_bytes = args.read_buffer_size;
    spec.write_buffer_bytes = args.write_buffer_size;
    spec.meta_cache_entries = args.metadata_cache_entries;
    spec.hash_on_write = args.hash_on_write.0.clone();
    spec.lock_lease = Duration::from_millis(args.lock_lease_ms);
    spec.kek = kek;
    spec.actor = args.actor.clone();
    // A key file given at creation makes the workspace encrypted.
    spec.create = (!args.existing_workspace_only).then_some(NewWorkspace {
        block_size: args.block_size,
        encrypted: args.encryption_key_file.is_some(),
    });
    Ok(spec)
}

/// Hash algorithms named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashList(pub Vec<drive::mhl::HashAlgo>);

fn parse_hash_list(text: &str) -> Result<HashList, String> {
    if text == "none" {
        return Ok(HashList(Vec::new()));
    }
    let mut algos = Vec::new();
    for name in text.split(',') {
        let algo = drive::mhl::HashAlgo::parse(name.trim()).map_err(|e| e.to_string())?;
        if !algos.contains(&algo) {
            algos.push(algo);
        }
    }
    Ok(HashList(algos))
}

/// The key-encryption key: from the publish secrets, else the key file, else
/// STUDIODRIVE_ENCRYPTION_KEY; none for a plaintext workspace.
pub(crate) fn workspace_kek(
    secrets: &PublishSecrets,
    key_file: Option<&Path>,
) -> anyhow::Result<Option<Kek>> {
    Ok(match (secrets.kek(), key_file) {
        (Some(kek), _) => Some(kek.clone()),
        (None, Some(path)) => Some(Kek::from_file(path)?),
        (None, None) => Kek::from_env()?,
    })
}

/// The object store of `workspace`: the one it records (with the credentials from the
/// secrets, else the AWS default chain), else the node's (`--store`). A workspace that does
/// not exist yet uses the node's: one created by this mount records none.
pub(crate) async fn workspace_store(
    storage: &StorageArgs,
    meta: &drive::PgMetaStore,
    workspace: &str,
    secrets: &PublishSecrets,
) -> anyhow::Result<Arc<dyn ChunkStore>> {
    let location = match meta.get_workspace(workspace).await {
        Ok(ws) => ws.object_store,
        Err(e) if e.kind() == drive::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read workspace {workspace}")),
    };
    let Some(location) = location else {
        return storage.open_store().await;
    };
    let mut cfg = S3Config::at(&location);
    cfg.credentials = secrets.credentials().cloned();
    cfg.max_attempts = storage.s3_max_attempts;
    Ok(Arc::new(S3ChunkStore::connect(&cfg).await))
}

async fn serve(args: MountArgs, rt: tokio::runtime::Handle) -> anyhow::Result<()> {
    let state = args.storage.state_dir()?;
    let secrets = match &args.secrets_file {
        Some(path) => PublishSecrets::read_file(path)?,
        None => PublishSecrets::default(),
    };
    let spec = mount_spec(&args, &state, &secrets)?;
    let access_check: Option<AccessCheck> = args
        .access_check
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--access-check is not a valid access check")?;
    let meta = args.storage.meta().await?;
    let store = workspace_store(&args.storage, &meta, &spec.target.workspace, &secrets).await?;
    let describe = store.describe();
    let OpenedMount {
        fs,
        blocks,
        resolved,
        read_only,
    } = drive::mount::open(meta.clone(), store, &spec).await?;
    let (ws, view) = (resolved.workspace, resolved.view);
    if let Some(check) = &access_check {
        // Decided again before the first request: a mount restarted after its Share was
        // deleted must not serve on the decision of its publish.
        decide_access(&fs, &meta, check).await?;
    }
    if args.technical_metadata && !read_only {
        match drive::media::extract::TechnicalExtractor::start(meta.clone(), blocks.clone(), &ws).await {
            Ok(extractor) => {
                let _ = fs.observe_commits(Arc::new(extractor));
            }
            // The mount works without it: only the documents are missing.
            Err(e) => tracing::warn!(error = %e, "technical metadata extraction is off"),
        }
    }
    tracing::info!(store = %describe, encrypted = ws.encrypted, "block store");
    tracing::info!(
        block_memory = args.block_memory(u64::from(ws.block_size), fs.config().max_uploads),
        "block memory budget (memory cache + read and write buffers + uploads in flight)"
    );
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
    {
        let (fs, c) = (fs.clone(), cancel.clone());
        tasks.spawn(async move { fs.run_block_renewal(c.cancelled()).await });
    }
    {
        let (fs, c) = (fs.clone(), cancel.clone());
        tasks.spawn(async move { fs.run_access_recorder(c.cancelled()).await });
    }
    if let Some(check) = access_check {
        let (fs, meta, c) = (fs.clone(), meta.clone(), cancel.clone());
        let every = Duration::from_millis(args.access_recheck_ms);
        tasks.spawn(async move { recheck_access(&fs, &meta, &check, every, c.cancelled()).await });
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

/// How long a mount keeps its access while the database cannot answer a recheck: past this,
/// an unknown answer is a refusal.
const ACCESS_UNKNOWN_GRACE: Duration = Duration::from_secs(60);

/// Takes the publish's access decision again, from the workspace's grants now.
async fn decide_access<B: drive::fs::BlockIo>(
    fs: &drive::fs::DriveFs<B>,
    meta: &drive::PgMetaStore,
    check: &AccessCheck,
) -> Result<(), drive::MetaError> {
    let facts = meta.access_facts(&fs.workspace().name).await?;
    fs.set_mount_access(check.decide(facts, SystemClock.now()));
    Ok(())
}

/// Takes the publish's access decision again every `every` until `stop`, so a deleted or
/// expired Share stops granting a live mount: it becomes read-only (writes fail with EROFS)
/// when a read grant is left, and refuses lookups and opens (EACCES) when nothing is.
async fn recheck_access<B: drive::fs::BlockIo>(
    fs: &drive::fs::DriveFs<B>,
    meta: &drive::PgMetaStore,
    check: &AccessCheck,
    every: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut last_answer = Instant::now();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(every) => {}
        }
        match decide_access(fs, meta, check).await {
            Ok(()) => last_answer = Instant::now(),
            Err(e) if last_answer.elapsed() > ACCESS_UNKNOWN_GRACE => {
                tracing::error!(error = %e, "access cannot be rechecked; refusing until it can");
                fs.set_mount_access(MountAccess::Denied);
            }
            Err(e) => tracing::warn!(error = %e, "access recheck failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MEMORY_BOUND, MountArgs, OTHER_MEMORY, map_cache_entry, tune_allocator};
    use drive::cache::{BlockCache, CacheConfig};

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        mount: MountArgs,
    }

    #[test]
    fn default_budgets_add_up_under_the_memory_bound() {
        use clap::Parser as _;
        let args = Cli::try_parse_from(["mount", "/mnt"]).unwrap().mount;
        let defaults =
            drive::fs::FsConfig::new(drive::model::View::Live, drive::model::NodeId(1), "/tmp".into());
        assert_eq!(
            args.read_buffer_size, defaults.read_buffer_bytes,
            "one default, two places"
        );
        assert_eq!(
            args.write_buffer_size, defaults.write_buffer_bytes,
            "one default, two places"
        );
        assert_eq!(
            args.cache_min_free, 0.15,
            "the cache's free-space floor stays above kubelet's 10%"
        );
        let blocks = args.block_memory(u64::from(drive::model::DEFAULT_BLOCK_SIZE), defaults.max_uploads);
        assert_eq!(blocks, (32 + 64 + 32 + 12 * 8) << 20);
        assert!(
            blocks + OTHER_MEMORY <= MEMORY_BOUND,
            "default budgets {} MiB + {} MiB over the {} MiB bound",
            blocks >> 20,
            OTHER_MEMORY >> 20,
            MEMORY_BOUND >> 20
        );
    }

    /// Resident anonymous memory of this process, in bytes.
    fn rss_anon() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() << 10
    }

    /// The budgets bound the block buffers alive; this is what keeps freed ones from staying
    /// resident (with glibc's heap keeping them, as before, RSS stayed at the high-water mark).
    #[cfg(target_env = "gnu")]
    #[test]
    fn freed_block_buffers_leave_resident_memory() {
        tune_allocator();
        let blocks: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i + 1; 4 << 20]).collect();
        let held = rss_anon();
        assert_eq!(blocks.iter().map(|b| b[b.len() - 1] as u64).sum::<u64>(), 136);
        drop(blocks);
        let freed = held.saturating_sub(rss_anon());
        assert!(
            freed >= 56 << 20,
            "dropping 64 MiB of blocks freed {} KiB",
            freed >> 10
        );
    }

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

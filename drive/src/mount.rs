//! The front door: one call opens a mount from a [`MountSpec`].
//!
//! [`open`] resolves the workspace (creating it when the spec allows), the snapshot and the
//! folder shown as the root, builds the block codec from the keys, the disk and memory
//! caches and the [`BlockStore`], and returns the [`DriveFs`] with what a caller needs
//! around it. [`resolve`] is the resolution step alone, for a caller that checks a mount
//! before it starts one elsewhere (the CSI node service, before it spawns a mount process).
//! Both apply the same rules:
//!
//! - a snapshot of a folder is rooted there: a [`MountPath::Workspace`] path must lie inside
//!   that folder and is taken relative to it; a [`MountPath::FromRoot`] path already is;
//! - the root must be a folder;
//! - bad input changes nothing: paths are parsed, and a missing workspace is created only
//!   when nothing else can fail for lack of it (no snapshot named, the root path), before
//!   anything is written; refusals come before caches or staging directories are opened.
//!
//! Process edges (FUSE sessions, signals, metrics, background tasks) stay with the caller.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{BlockCache, CacheConfig, MemoryCache};
use crate::data::{BlockCodec, BlockStore, ChunkStore, DataKey, Kek, KeyError, codec_for};
use crate::error::{ErrorKind, MetaError};
use crate::fs::{DriveFs, FsConfig, FsError};
use crate::model::{
    Actor, Attr, NameError, NodeKind, Snapshot, View, Workspace, WorkspaceKind, WorkspacePath, WorkspaceSpec,
};
use crate::ports::MetaStore;

/// Which folder of which workspace a mount shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountTarget {
    /// Workspace name.
    pub workspace: String,
    /// The folder shown as the mount's root.
    pub path: MountPath,
    /// Mount this snapshot (read-only) instead of the live tree.
    pub snapshot: Option<String>,
}

/// How a [`MountTarget`]'s path reads. Without a snapshot both read the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountPath {
    /// A folder of the workspace ("/volumes/pvc-1/renders"); with a snapshot it must lie in
    /// the folder the snapshot was taken of (CSI volume attributes).
    Workspace(String),
    /// A folder below the root of what is mounted: the snapshot's folder, or the workspace
    /// root without a snapshot (`studiodrive-csi mount --path`, [`Resolved::path`]).
    FromRoot(String),
}

impl MountPath {
    fn text(&self) -> &str {
        match self {
            MountPath::Workspace(p) | MountPath::FromRoot(p) => p,
        }
    }
}

/// A workspace to create when the target's is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewWorkspace {
    /// Block size of the new workspace.
    pub block_size: u32,
    /// Encrypt it: a data key is generated and wrapped with the spec's key (which must be
    /// given).
    pub encrypted: bool,
}

/// The node-local disk cache of a mount.
#[derive(Debug, Clone, Default)]
pub enum DiskCache {
    /// No disk cache.
    #[default]
    Off,
    /// Open (or create) a cache with these settings.
    Open(CacheConfig),
    /// A cache the caller has opened (shared with other mounts of the process).
    Opened(Arc<BlockCache>),
}

/// Everything [`open`] needs to open a mount, as plain settings.
#[derive(Debug, Clone)]
pub struct MountSpec {
    /// What to mount.
    pub target: MountTarget,
    /// Refuse every change even on the live tree (a snapshot is always read-only).
    pub read_only: bool,
    /// Where write sessions stage bytes.
    pub staging_dir: PathBuf,
    /// The disk cache of stored block objects.
    pub disk_cache: DiskCache,
    /// Bytes of verified block plaintext kept in memory (0 turns it off).
    pub memory_cache_bytes: u64,
    /// Also copy full blocks this mount uploads into the disk cache (small files and the
    /// tails of files always are): reading back what this node wrote is then warm, at the
    /// cost of a second disk write of every byte written.
    pub cache_large_writes: bool,
    /// Block bytes open files hold at once across the mount ([`FsConfig::read_buffer_bytes`]).
    pub read_buffer_bytes: u64,
    /// Block bytes write sessions fill in memory across the mount
    /// ([`FsConfig::write_buffer_bytes`]).
    pub write_buffer_bytes: u64,
    /// Entries and attributes kept in the mount's metadata cache, each (0 turns it off).
    pub meta_cache_entries: usize,
    /// How long this mount's file locks outlive its last lease renewal.
    pub lock_lease: Duration,
    /// The key-encryption key: needed for an encrypted workspace, and to create one.
    pub kek: Option<Kek>,
    /// Create the workspace when it is missing, like this; `None` refuses (NotFound).
    pub create: Option<NewWorkspace>,
    /// Who the mount acts for beyond the local uid ([`FsConfig::actor`]).
    pub actor: Option<String>,
    /// Hashes computed while files are written in order ([`FsConfig::hash_on_write`]).
    pub hash_on_write: Vec<crate::mhl::HashAlgo>,
}

impl MountSpec {
    /// A writable mount of `target` staging under `staging_dir`, without caches, keys or
    /// creation, with [`FsConfig::new`]'s defaults for the rest.
    pub fn new(target: MountTarget, staging_dir: impl Into<PathBuf>) -> MountSpec {
        let staging_dir = staging_dir.into();
        let fs = FsConfig::new(
            View::Live,
            crate::model::NodeId(crate::fs::ROOT_INO),
            staging_dir.clone(),
        );
        MountSpec {
            target,
            read_only: false,
            staging_dir,
            disk_cache: DiskCache::Off,
            memory_cache_bytes: 0,
            cache_large_writes: false,
            read_buffer_bytes: fs.read_buffer_bytes,
            write_buffer_bytes: fs.write_buffer_bytes,
            meta_cache_entries: fs.meta_cache_entries,
            lock_lease: fs.lock_lease,
            kek: None,
            create: None,
            actor: None,
            hash_on_write: fs.hash_on_write,
        }
    }
}

/// A mount target resolved against the metadata store.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The workspace.
    pub workspace: Workspace,
    /// The snapshot mounted, if any.
    pub snapshot: Option<Snapshot>,
    /// The live tree, or the snapshot's epoch.
    pub view: View,
    /// The folder the mount shows as its root.
    pub root: Attr,
    /// The root's path below the view's root (the snapshot's folder, or the workspace root),
    /// canonical: what [`MountPath::FromRoot`] takes to mount the same folder again.
    pub path: String,
}

/// An opened mount: the file system and what the caller runs around it.
pub struct OpenedMount<M: MetaStore> {
    /// The file system of the mount.
    pub fs: Arc<DriveFs<BlockStore<M>, M>>,
    /// Its block data path (for metrics).
    pub blocks: Arc<BlockStore<M>>,
    /// What was resolved: workspace, snapshot, view, root.
    pub resolved: Resolved,
    /// Whether the mount refuses changes (asked for, or a snapshot).
    pub read_only: bool,
}

impl<M: MetaStore> std::fmt::Debug for OpenedMount<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedMount")
            .field("resolved", &self.resolved)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// Why a mount cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The path is not a valid workspace path.
    #[error("invalid path {path:?}")]
    InvalidPath {
        path: String,
        #[source]
        source: NameError,
    },
    /// The workspace does not exist (never created, or deleted) and the spec does not
    /// create it.
    #[error("workspace {name} does not exist or was deleted")]
    WorkspaceMissing { name: String },
    /// Looking up (or creating) the workspace failed.
    #[error("workspace {name}")]
    Workspace {
        name: String,
        #[source]
        source: MetaError,
    },
    /// Looking up the snapshot failed; NotFound when it does not exist.
    #[error("snapshot {name} of workspace {workspace}")]
    Snapshot {
        workspace: String,
        name: String,
        #[source]
        source: MetaError,
    },
    /// Resolving the root folder failed; NotFound when it does not exist.
    #[error("{path} in workspace {workspace}")]
    Path {
        workspace: String,
        path: String,
        #[source]
        source: MetaError,
    },
    /// The root is not a folder.
    #[error("{path} in workspace {workspace} is not a folder")]
    NotAFolder { workspace: String, path: String },
    /// A workspace path outside the folder the snapshot was taken of.
    #[error("{path} is outside snapshot {snapshot}, which was taken of {taken_of}")]
    OutsideSnapshot {
        path: String,
        snapshot: String,
        taken_of: String,
    },
    /// The workspace's keys: a key is missing, wrong, or the wrapped key is damaged.
    #[error("keys of workspace {workspace}")]
    Key {
        workspace: String,
        #[source]
        source: KeyError,
    },
    /// The disk cache could not be opened.
    #[error("open the block cache in {dir}")]
    Cache {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file system could not start (its staging directory).
    #[error("start the file system")]
    Fs(#[source] FsError),
}

impl MountError {
    /// The class of this error, for an adapter's one mapping (gRPC codes, exit messages).
    /// A path outside the snapshot is NotFound (the snapshot holds no such folder); a root
    /// that is not a folder is NotADirectory; a missing or wrong key is PermissionDenied.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MountError::InvalidPath { source, .. } => MetaError::InvalidName(source.clone()).kind(),
            MountError::Workspace { source, .. }
            | MountError::Snapshot { source, .. }
            | MountError::Path { source, .. } => source.kind(),
            MountError::NotAFolder { .. } => ErrorKind::NotADirectory,
            MountError::WorkspaceMissing { .. } | MountError::OutsideSnapshot { .. } => ErrorKind::NotFound,
            MountError::Key { source, .. } => match source {
                KeyError::KekRequired(_) | KeyError::WrongKek | KeyError::SealedWithOtherKey => {
                    ErrorKind::PermissionDenied
                }
                KeyError::File { .. } | KeyError::Invalid(_) => ErrorKind::InvalidArgument,
                KeyError::Damaged | KeyError::SealDamaged => ErrorKind::Internal,
            },
            MountError::Cache { .. } | MountError::Fs(_) => ErrorKind::Internal,
        }
    }
}

/// A failed lookup of workspace `name`: [`MountError::WorkspaceMissing`] when it does not
/// exist, else the store's error.
fn workspace_error(name: &str, source: MetaError) -> MountError {
    match source.kind() {
        ErrorKind::NotFound => MountError::WorkspaceMissing {
            name: name.to_string(),
        },
        _ => MountError::Workspace {
            name: name.to_string(),
            source,
        },
    }
}

fn parse_path(path: &str) -> Result<WorkspacePath, MountError> {
    WorkspacePath::parse(path).map_err(|source| MountError::InvalidPath {
        path: path.to_string(),
        source,
    })
}

/// Resolves `target` without changing anything: the workspace, the snapshot, and the folder
/// at the root (which must be one).
pub async fn resolve<M: MetaStore>(meta: &M, target: &MountTarget) -> Result<Resolved, MountError> {
    let path = parse_path(target.path.text())?;
    let workspace = meta
        .get_workspace(&target.workspace)
        .await
        .map_err(|source| workspace_error(&target.workspace, source))?;
    resolve_in(meta, workspace, &target.path, path, target.snapshot.as_deref()).await
}

/// The snapshot, view and root of a target in `workspace`; `path` is the target's path parsed.
async fn resolve_in<M: MetaStore>(
    meta: &M,
    workspace: Workspace,
    given: &MountPath,
    path: WorkspacePath,
    snapshot: Option<&str>,
) -> Result<Resolved, MountError> {
    let snapshot = match snapshot {
        Some(name) => {
            Some(
                meta.get_snapshot(workspace.id, name)
                    .await
                    .map_err(|source| MountError::Snapshot {
                        workspace: workspace.name.clone(),
                        name: name.to_string(),
                        source,
                    })?,
            )
        }
        None => None,
    };
    // A snapshot of a folder is rooted there: a workspace path must lie inside it.
    let path = match (&snapshot, given) {
        (Some(snap), MountPath::Workspace(_)) => {
            let taken_of = parse_path(&snap.path)?;
            path.relative_to(&taken_of)
                .ok_or_else(|| MountError::OutsideSnapshot {
                    path: path.to_string(),
                    snapshot: snap.name.clone(),
                    taken_of: taken_of.to_string(),
                })?
        }
        _ => path,
    };
    let (view, from) = match &snapshot {
        Some(snap) => (View::At(snap.epoch), snap.root),
        None => (View::Live, workspace.root),
    };
    let path_error = |source| MountError::Path {
        workspace: workspace.name.clone(),
        path: path.to_string(),
        source,
    };
    let mut root = meta.getattr(view, from).await.map_err(path_error)?;
    for name in path.names() {
        root = meta.lookup(view, root.ino, name).await.map_err(path_error)?;
    }
    if root.kind != NodeKind::Directory {
        return Err(MountError::NotAFolder {
            workspace: workspace.name.clone(),
            path: path.to_string(),
        });
    }
    Ok(Resolved {
        workspace,
        snapshot,
        view,
        root,
        path: path.to_string(),
    })
}

/// The target's workspace; created as `spec.create` says when it is missing and the target
/// is its root folder (a new workspace has no other folder and no snapshot).
async fn workspace<M: MetaStore>(
    meta: &M,
    spec: &MountSpec,
    path: &WorkspacePath,
) -> Result<Workspace, MountError> {
    let name = &spec.target.workspace;
    let failed = |source| MountError::Workspace {
        name: name.clone(),
        source,
    };
    let missing = match meta.get_workspace(name).await {
        Ok(ws) => return Ok(ws),
        Err(e) if e.kind() == ErrorKind::NotFound => e,
        Err(e) => return Err(failed(e)),
    };
    let new = match spec.create {
        Some(new) if spec.target.snapshot.is_none() && path.is_root() => new,
        _ => return Err(workspace_error(name, missing)),
    };
    let mut ws = WorkspaceSpec::new(name.clone(), WorkspaceKind::User);
    ws.block_size = new.block_size;
    if new.encrypted {
        let kek = spec.kek.as_ref().ok_or_else(|| MountError::Key {
            workspace: name.clone(),
            source: KeyError::KekRequired(name.clone()),
        })?;
        ws.wrapped_key = Some(DataKey::generate().wrap(kek));
    }
    match meta.create_workspace(&Actor::system("mount"), &ws).await {
        Ok(ws) => Ok(ws),
        // Another mount created it meanwhile.
        Err(e) if e.kind() == ErrorKind::Exists => meta.get_workspace(name).await.map_err(failed),
        Err(e) => Err(failed(e)),
    }
}

/// The block codec of `ws`: its data key unwrapped with `kek` when it is encrypted. [`open`]
/// calls it before anything is opened; the CSI node service calls it to refuse a publish
/// without the right key before it starts a mount process.
pub fn unlock(ws: &Workspace, kek: Option<&Kek>) -> Result<BlockCodec, MountError> {
    codec_for(ws, kek).map_err(|source| MountError::Key {
        workspace: ws.name.clone(),
        source,
    })
}

/// Opens a mount of `spec.target` with blocks in `store`: resolves it (creating the workspace
/// when allowed), unwraps the workspace's data key, opens the caches and builds the file
/// system. Refusals (missing targets, a file as root, a path outside the snapshot, keys)
/// come before any cache or staging directory is touched.
pub async fn open<M: MetaStore>(
    meta: M,
    store: Arc<dyn ChunkStore>,
    spec: &MountSpec,
) -> Result<OpenedMount<M>, MountError> {
    let path = parse_path(spec.target.path.text())?;
    let ws = workspace(&meta, spec, &path).await?;
    let codec = unlock(&ws, spec.kek.as_ref())?;
    let resolved = resolve_in(
        &meta,
        ws,
        &spec.target.path,
        path,
        spec.target.snapshot.as_deref(),
    )
    .await?;
    let cache = match &spec.disk_cache {
        DiskCache::Off => None,
        DiskCache::Open(cfg) => Some(Arc::new(BlockCache::open(cfg.clone()).map_err(|source| {
            MountError::Cache {
                dir: cfg.dir.clone(),
                source,
            }
        })?)),
        DiskCache::Opened(cache) => Some(cache.clone()),
    };
    let mut blocks = BlockStore::new(meta.clone(), store, codec, cache);
    if !spec.cache_large_writes {
        blocks = blocks.cache_uploads_below(resolved.workspace.block_size.into());
    }
    if spec.memory_cache_bytes > 0 {
        blocks = blocks.with_memory_cache(Arc::new(MemoryCache::new(spec.memory_cache_bytes)));
    }
    let blocks = Arc::new(blocks);
    let read_only = spec.read_only || resolved.view.is_read_only();
    let mut cfg = FsConfig::new(resolved.view, resolved.root.ino, spec.staging_dir.clone());
    cfg.read_only = read_only;
    cfg.meta_cache_entries = spec.meta_cache_entries;
    cfg.read_buffer_bytes = spec.read_buffer_bytes;
    cfg.write_buffer_bytes = spec.write_buffer_bytes;
    cfg.lock_lease = spec.lock_lease;
    cfg.actor = spec.actor.clone();
    cfg.hash_on_write = spec.hash_on_write.clone();
    let fs = DriveFs::new(meta, blocks.clone(), resolved.workspace.clone(), cfg).map_err(MountError::Fs)?;
    Ok(OpenedMount {
        fs: Arc::new(fs),
        blocks,
        resolved,
        read_only,
    })
}

//! Pure domain types: ids, names, node kinds and attributes, workspaces, snapshots, events.
//!
//! Nothing here does I/O; the metadata store and the file-system logic speak these types.

mod name;
mod sequence;

pub use name::{NAME_MAX, Name, NameError, PATH_MAX, WorkspacePath};
pub use sequence::{FrameName, FrameRange, FrameSequence, SequenceKey, summarize};

use std::fmt;

/// A node id: stable for the life of the node, unique across workspaces, and the inode number
/// the FUSE adapter reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A workspace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct WorkspaceId(pub uuid::Uuid);

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A snapshot id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SnapshotId(pub uuid::Uuid);

/// A workspace's version counter. Rows carry `[valid_from, valid_to)`; taking a snapshot at
/// epoch E advances the workspace to E+1 without copying rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub i64);

/// What the tree is read as: the live tree, or the tree as of a snapshot's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The current tree (rows with `valid_to IS NULL`).
    Live,
    /// The tree as of an epoch (rows with `valid_from <= E < valid_to`). Read-only.
    At(Epoch),
}

impl View {
    /// Whether writes are refused in this view.
    pub fn is_read_only(self) -> bool {
        matches!(self, View::At(_))
    }
}

/// The kinds of node the namespace stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum NodeKind {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl NodeKind {
    pub(crate) fn code(self) -> i16 {
        match self {
            NodeKind::File => 1,
            NodeKind::Directory => 2,
            NodeKind::Symlink => 3,
            NodeKind::Fifo => 4,
            NodeKind::Socket => 5,
            NodeKind::CharDevice => 6,
            NodeKind::BlockDevice => 7,
        }
    }

    pub(crate) fn from_code(code: i16) -> Option<NodeKind> {
        Some(match code {
            1 => NodeKind::File,
            2 => NodeKind::Directory,
            3 => NodeKind::Symlink,
            4 => NodeKind::Fifo,
            5 => NodeKind::Socket,
            6 => NodeKind::CharDevice,
            7 => NodeKind::BlockDevice,
            _ => return None,
        })
    }
}

/// Workspace kinds (the CDrive model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceKind {
    /// Personal and mutable.
    User,
    /// Write-once: committed file content cannot be overwritten, truncated or deleted.
    Project,
    /// Shared by a team; access through Shares.
    Team,
}

impl WorkspaceKind {
    /// The lowercase name stored in SQL and used in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceKind::User => "user",
            WorkspaceKind::Project => "project",
            WorkspaceKind::Team => "team",
        }
    }

    /// Parses "user" | "project" | "team".
    pub fn parse(s: &str) -> Option<WorkspaceKind> {
        match s {
            "user" => Some(WorkspaceKind::User),
            "project" => Some(WorkspaceKind::Project),
            "team" => Some(WorkspaceKind::Team),
            _ => None,
        }
    }
}

/// Nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

/// Attributes of a node (an inode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: NodeId,
    pub kind: NodeKind,
    /// Permission bits (and setuid/setgid/sticky), without the file-type bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// Device number for character and block devices.
    pub rdev: u64,
    /// Bumped on every content commit; lets readers keep caches while it is unchanged.
    pub content_version: u64,
}

/// Attributes of a node with times at the epoch, for unit tests.
#[cfg(test)]
pub(crate) fn test_attr(ino: u64, kind: NodeKind, mode: u32, uid: u32, gid: u32, size: u64) -> Attr {
    Attr {
        ino: NodeId(ino),
        kind,
        mode,
        uid,
        gid,
        size,
        nlink: 1,
        atime: Timestamp(0),
        mtime: Timestamp(0),
        ctime: Timestamp(0),
        crtime: Timestamp(0),
        rdev: 0,
        content_version: 0,
    }
}

/// One directory entry, as readdir returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Name,
    pub ino: NodeId,
    pub kind: NodeKind,
}

/// A directory entry with the attributes of its node (readdirplus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntryPlus {
    pub entry: DirEntry,
    pub attr: Attr,
}

/// Who performs a mutation, recorded in the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    /// An actor for a local uid.
    pub fn uid(uid: u32) -> Actor {
        Actor(format!("uid:{uid}"))
    }

    /// A named system component ("operator", "csi", "cli").
    pub fn system(component: &str) -> Actor {
        Actor(format!("system:{component}"))
    }
}

/// Rename flags (Linux `renameat2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RenameMode {
    /// Replace an existing target if POSIX allows it.
    #[default]
    Replace,
    /// Fail with "exists" if the target exists (`RENAME_NOREPLACE`).
    NoReplace,
    /// Atomically swap source and target; both must exist (`RENAME_EXCHANGE`).
    Exchange,
}

/// What copy does when a path already exists at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergeMode {
    /// Abort the whole copy; nothing is written.
    #[default]
    Fail,
    /// Replace the existing file (directories merge).
    Overwrite,
    /// Keep the existing file and skip the source one (directories merge).
    Skip,
}

/// Attribute changes requested by setattr; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
}

/// Parameters of a node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    /// Target of a symlink (required for symlinks, ignored otherwise).
    pub symlink_target: Option<Vec<u8>>,
}

impl NewNode {
    /// A node of `kind` with `mode`, owned by root.
    pub fn new(kind: NodeKind, mode: u32) -> NewNode {
        NewNode {
            kind,
            mode,
            uid: 0,
            gid: 0,
            rdev: 0,
            symlink_target: None,
        }
    }

    /// Sets the owner.
    pub fn owned_by(mut self, uid: u32, gid: u32) -> NewNode {
        self.uid = uid;
        self.gid = gid;
        self
    }
}

/// A workspace as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub name: String,
    pub kind: WorkspaceKind,
    pub block_size: u32,
    pub root: NodeId,
    pub epoch: Epoch,
    pub encrypted: bool,
    /// The workspace data key wrapped by a key-encryption key (only when encrypted).
    pub wrapped_key: Option<Vec<u8>>,
    pub quota_bytes: Option<u64>,
    pub owners: Vec<String>,
    /// Where its blocks live; the mounting node's default object store when `None`.
    /// Recorded at creation and never changed (blocks already stored stay where they are).
    pub object_store: Option<ObjectStoreLocation>,
    pub created_at: Timestamp,
}

/// An S3 bucket and prefix holding one workspace's blocks instead of the node's default
/// store. Only the location: credentials are given to each mount (CSI publish secrets), never
/// stored with the workspace. It is a property of the workspace, so what a pod asks for
/// cannot send a shared workspace's writes elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStoreLocation {
    /// Bucket name ([`valid_bucket_name`]).
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing '/' ("" for none).
    pub prefix: String,
    /// S3-compatible endpoint URL (http or https); AWS when `None`.
    pub endpoint: Option<String>,
    /// Region of the bucket; from the environment, else us-east-1, when `None`.
    pub region: Option<String>,
}

impl ObjectStoreLocation {
    /// What names the store for block addresses: endpoint, bucket and prefix (the region
    /// does not change which objects a key reaches).
    pub fn identity(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.endpoint.as_deref().unwrap_or("aws"),
            self.bucket,
            self.prefix
        )
    }
}

/// Whether `name` is a usable S3 bucket name: 3-63 characters of a-z, 0-9, '-' and '.'.
pub fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Parameters of a workspace to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceSpec {
    pub name: String,
    pub kind: WorkspaceKind,
    pub block_size: u32,
    pub wrapped_key: Option<Vec<u8>>,
    pub quota_bytes: Option<u64>,
    pub owners: Vec<String>,
    /// Where its blocks live; `None` for the mounting node's default store.
    pub object_store: Option<ObjectStoreLocation>,
}

/// Default block size: 4 MiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 4 << 20;
/// Smallest allowed block size: 64 KiB (tests use small blocks; production uses 1-64 MiB).
pub const MIN_BLOCK_SIZE: u32 = 64 << 10;
/// Largest allowed block size: 64 MiB.
pub const MAX_BLOCK_SIZE: u32 = 64 << 20;

impl WorkspaceSpec {
    /// A user workspace with the default block size.
    pub fn new(name: impl Into<String>, kind: WorkspaceKind) -> WorkspaceSpec {
        WorkspaceSpec {
            name: name.into(),
            kind,
            block_size: DEFAULT_BLOCK_SIZE,
            wrapped_key: None,
            quota_bytes: None,
            owners: Vec::new(),
            object_store: None,
        }
    }
}

/// Workspace names follow Kubernetes object names (DNS-1123 subdomain rules, at most 253
/// bytes) so that a Workspace resource can always name its workspace.
pub fn validate_workspace_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 253 {
        return Err(NameError::TooLong(name.len()));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends =
        name.as_bytes()[0].is_ascii_alphanumeric() && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if !ok_chars || !ok_ends {
        return Err(NameError::NotDnsName);
    }
    Ok(())
}

/// A snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub workspace: WorkspaceId,
    pub name: String,
    /// The epoch the snapshot reads the tree at.
    pub epoch: Epoch,
    /// The node the snapshot is rooted at (the workspace root or a folder in it).
    pub root: NodeId,
    /// The path it was taken of ("/" for the whole workspace).
    pub path: String,
    pub created_at: Timestamp,
}

/// One change-feed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the feed; pass it back as the cursor to read what follows.
    pub id: i64,
    pub workspace: WorkspaceId,
    pub at: Timestamp,
    pub actor: String,
    pub op: String,
    pub ino: Option<NodeId>,
    pub parent: Option<NodeId>,
    pub name: Option<Name>,
    /// The old entry of a rename or exchange: its parent and name.
    pub from: Option<(NodeId, Name)>,
    /// The snapshot a `published` event took, or a `reverted` event restored (`None` for a
    /// revert to a bare epoch and for every other event).
    pub snapshot: Option<String>,
    /// The epoch of that snapshot, or the epoch a `reverted` event restored.
    pub epoch: Option<Epoch>,
}

/// File and byte counts of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
}

/// What a workspace's live tree uses, from its usage counters, and its quota. Bytes are the
/// logical sizes of its regular files, each inode once however many names it has; nodes are
/// every file, folder, symlink and special file below the root. Snapshots are not charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkspaceUsage {
    pub bytes: u64,
    pub nodes: u64,
    pub quota_bytes: Option<u64>,
}

/// A share: a permission on a workspace path granted to a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub workspace: WorkspaceId,
    /// The share's own name (unique per workspace), e.g. "namespace/name" of its resource.
    pub name: String,
    pub path: String,
    /// "ServiceAccount:ns/name", "User:alice", "Group:comp".
    pub subjects: Vec<String>,
    pub permission: Permission,
    pub expires_at: Option<Timestamp>,
}

/// Share permission levels, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    Read,
    Write,
    Admin,
}

impl Permission {
    /// The lowercase name stored in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Admin => "admin",
        }
    }

    /// Parses "read" | "write" | "admin".
    pub fn parse(s: &str) -> Option<Permission> {
        match s {
            "read" => Some(Permission::Read),
            "write" => Some(Permission::Write),
            "admin" => Some(Permission::Admin),
            _ => None,
        }
    }
}

/// Fails when a `use` line of `sources` imports I/O, async, a store or the wall clock: the
/// check that keeps the pure core (`model`, `rules`) pure.
#[cfg(test)]
pub(crate) fn assert_imports_pure(what: &str, sources: &[&str]) {
    let forbidden = [
        "tokio",
        "deadpool",
        "postgres",
        "crate::meta",
        "crate::data",
        "crate::cache",
        "crate::fs",
        "std::fs",
        "std::net",
        "SystemTime",
    ];
    for source in sources {
        for line in source.lines().filter(|l| l.trim_start().starts_with("use ")) {
            for f in forbidden {
                assert!(!line.contains(f), "{what} must stay pure, found `{line}`");
            }
        }
    }
}

#[cfg(test)]
mod purity {
    /// The model is the pure core: it must not grow I/O or async dependencies.
    #[test]
    fn model_imports_no_io() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("name.rs"),
            include_str!("sequence.rs"),
        ];
        super::assert_imports_pure("model", &sources);
    }
}

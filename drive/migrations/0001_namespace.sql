-- Namespace: workspaces, inodes and directory entries, epoch-versioned.
-- Every versioned row carries [valid_from, valid_to): the live tree is valid_to IS NULL; the
-- tree as of a snapshot at epoch E is valid_from <= E AND (valid_to IS NULL OR valid_to > E).
-- SQL kept to what both PostgreSQL and CockroachDB accept.

CREATE SEQUENCE node_ids START WITH 1000;
CREATE SEQUENCE event_ids START WITH 1;
CREATE SEQUENCE entry_ids START WITH 1;

CREATE TABLE workspaces (
    id           UUID PRIMARY KEY,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('user', 'project', 'team')),
    block_size   INT8 NOT NULL CHECK (block_size > 0),
    root_ino     INT8 NOT NULL,
    epoch        INT8 NOT NULL DEFAULT 1,
    wrapped_key  BYTEA,
    quota_bytes  INT8,
    owners       JSONB NOT NULL DEFAULT '[]',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at   TIMESTAMPTZ
);
-- One live workspace per name; soft-deleted ones keep their rows until purged.
CREATE UNIQUE INDEX workspaces_live_name ON workspaces (name) WHERE deleted_at IS NULL;

CREATE TABLE inodes (
    ino              INT8 NOT NULL,
    valid_from       INT8 NOT NULL,
    valid_to         INT8,
    workspace_id     UUID NOT NULL,
    kind             INT2 NOT NULL,
    mode             INT8 NOT NULL,
    uid              INT8 NOT NULL,
    gid              INT8 NOT NULL,
    rdev             INT8 NOT NULL DEFAULT 0,
    size             INT8 NOT NULL DEFAULT 0,
    nlink            INT8 NOT NULL,
    atime_ns         INT8 NOT NULL,
    mtime_ns         INT8 NOT NULL,
    ctime_ns         INT8 NOT NULL,
    crtime_ns        INT8 NOT NULL,
    content_version  INT8 NOT NULL DEFAULT 0,
    symlink_target   BYTEA,
    PRIMARY KEY (ino, valid_from)
);
CREATE UNIQUE INDEX inodes_live ON inodes (ino) WHERE valid_to IS NULL;

-- Entries get a surrogate id: a name may be created, deleted (soft) and created again within
-- one epoch, and each of those versions is kept (deleted ones until the lifecycle purge).
CREATE TABLE entries (
    id            INT8 PRIMARY KEY DEFAULT nextval('entry_ids'),
    parent        INT8 NOT NULL,
    name          BYTEA NOT NULL,
    valid_from    INT8 NOT NULL,
    valid_to      INT8,
    workspace_id  UUID NOT NULL,
    ino           INT8 NOT NULL,
    kind          INT2 NOT NULL,
    deleted_at    TIMESTAMPTZ
);
CREATE INDEX entries_versions ON entries (parent, name, valid_from);
-- The unique-path invariant: at most one live entry per (parent, name). Parents belong to
-- exactly one workspace, so this is unique per (workspace, parent, name).
CREATE UNIQUE INDEX entries_live ON entries (parent, name) WHERE valid_to IS NULL;
-- Walking up from a node (cycle checks, path of a node) and finding all names of an inode.
CREATE INDEX entries_live_by_ino ON entries (ino) WHERE valid_to IS NULL;
-- Soft-deleted entries, for lifecycle purges.
CREATE INDEX entries_deleted ON entries (workspace_id, deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE snapshots (
    id            UUID PRIMARY KEY,
    workspace_id  UUID NOT NULL,
    name          TEXT NOT NULL,
    epoch         INT8 NOT NULL,
    root_ino      INT8 NOT NULL,
    path          TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at    TIMESTAMPTZ
);
CREATE UNIQUE INDEX snapshots_live_name ON snapshots (workspace_id, name) WHERE deleted_at IS NULL;

-- Frame sequences per folder. Entry changes only APPEND to sequence_changes (no reads, so
-- concurrent creators never conflict on it); reading a summary folds the pending changes into
-- sequence_runs (one row per run) and removes them, so each change is folded once and a
-- summary never scans one row per frame.
CREATE SEQUENCE sequence_change_ids START WITH 1;
CREATE TABLE sequence_changes (
    id          INT8 PRIMARY KEY DEFAULT nextval('sequence_change_ids'),
    parent      INT8 NOT NULL,
    prefix      BYTEA NOT NULL,
    padding     INT4 NOT NULL,
    suffix      BYTEA NOT NULL,
    frame       INT8 NOT NULL,
    added       BOOL NOT NULL
);
CREATE INDEX sequence_changes_by_parent ON sequence_changes (parent, id);

CREATE TABLE sequence_runs (
    parent      INT8 NOT NULL,
    prefix      BYTEA NOT NULL,
    padding     INT4 NOT NULL,
    suffix      BYTEA NOT NULL,
    first_frame INT8 NOT NULL,
    last_frame  INT8 NOT NULL,
    PRIMARY KEY (parent, prefix, padding, suffix, first_frame)
);

-- Change feed / audit log (outbox): one row per mutation, written in the same transaction.
CREATE TABLE events (
    id            INT8 PRIMARY KEY DEFAULT nextval('event_ids'),
    workspace_id  UUID NOT NULL,
    at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor         TEXT NOT NULL,
    op            TEXT NOT NULL,
    ino           INT8,
    parent        INT8,
    name          BYTEA
);
CREATE INDEX events_by_workspace ON events (workspace_id, id);

CREATE TABLE xattrs (
    ino    INT8 NOT NULL,
    name   BYTEA NOT NULL,
    value  BYTEA NOT NULL,
    PRIMARY KEY (ino, name)
);

CREATE TABLE shares (
    workspace_id  UUID NOT NULL,
    name          TEXT NOT NULL,
    path          TEXT NOT NULL,
    subjects      JSONB NOT NULL,
    permission    TEXT NOT NULL CHECK (permission IN ('read', 'write', 'admin')),
    expires_at    TIMESTAMPTZ,
    PRIMARY KEY (workspace_id, name)
);

-- Blocks: content-addressed objects in the object store. `state` tracks the upload
-- (created -> available | failed); `tier` is the storage class. A block object may be deleted
-- when no file_blocks row of any version references it and it is older than the upload grace
-- period (mark-and-sweep by the GC engine over file_blocks_by_hash).
CREATE TABLE blocks (
    hash         BYTEA PRIMARY KEY,
    size         INT8 NOT NULL,
    stored_size  INT8 NOT NULL,
    tier         TEXT NOT NULL DEFAULT 'standard',
    state        TEXT NOT NULL CHECK (state IN ('created', 'available', 'failed')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A file's block map, epoch-versioned like inodes: index -> block, with the number of valid
-- bytes (`len`); bytes of the block past `len` read as zeros, missing indexes are holes.
CREATE TABLE file_blocks (
    ino         INT8 NOT NULL,
    idx         INT8 NOT NULL,
    valid_from  INT8 NOT NULL,
    valid_to    INT8,
    hash        BYTEA NOT NULL,
    len         INT8 NOT NULL,
    PRIMARY KEY (ino, idx, valid_from)
);
CREATE UNIQUE INDEX file_blocks_live ON file_blocks (ino, idx) WHERE valid_to IS NULL;
CREATE INDEX file_blocks_by_hash ON file_blocks (hash);

-- Expiry, tiering and event-feed retention (issue 17).
-- A coarse last-access time per node: written by mounts at most once per node per interval
-- (an hour by default), never by stat. Kept out of `inodes` on purpose: an inode row is
-- epoch-versioned, so an access written there would create a new version after every
-- snapshot and show in snapshots; this row is neither versioned nor snapshot-visible.
-- The expiry walk and the tiering scan join it by `ino` (its primary key).
CREATE TABLE node_access (
    ino          INT8 PRIMARY KEY,
    workspace_id UUID NOT NULL,
    accessed_at  TIMESTAMPTZ NOT NULL
);

-- Consumers of the change feed that keep a position across restarts (a CLI follower, an
-- exporter): retention never purges an event above the position of one whose lease is live.
CREATE TABLE feed_cursors (
    consumer     TEXT PRIMARY KEY,
    position     INT8 NOT NULL,
    lease_until  TIMESTAMPTZ NOT NULL
);

-- Every event with an id at or below this may have been purged: a reader whose cursor is
-- below it is told so instead of silently missing events.
ALTER TABLE feed_horizon ADD COLUMN purged_through INT8 NOT NULL DEFAULT 0;

-- Purge of soft-deleted data and of history no retained snapshot shows (issue 17).
-- Partial indexes over closed rows only: the write path pays for them only when a row is
-- closed (delete, rename, a write after a snapshot), never on creates or in-place writes.
CREATE INDEX entries_closed ON entries (workspace_id) WHERE valid_to IS NOT NULL;
CREATE INDEX entries_closed_by_ino ON entries (ino) WHERE valid_to IS NOT NULL;
CREATE INDEX inodes_closed ON inodes (workspace_id) WHERE valid_to IS NOT NULL;
CREATE INDEX file_blocks_closed ON file_blocks (ino) WHERE valid_to IS NOT NULL;

-- Nodes that may have lost their last name: each is checked, and purged with its rows when
-- no entry of any version names it. Rows are added in the transaction that removed the
-- entries, so a crash between the two phases loses nothing to purge.
CREATE TABLE purge_queue (
    ino  INT8 PRIMARY KEY
);

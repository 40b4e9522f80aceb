-- Publish and revert (issue 19 item 3).
-- What a `published` or `reverted` event names besides its node: the snapshot the publish
-- took or the revert restored (NULL for a revert to a bare epoch), and that epoch.
ALTER TABLE events ADD COLUMN snapshot TEXT;
ALTER TABLE events ADD COLUMN epoch INT8;

-- A revert to epoch E reads only the rows that changed after E: entries and inodes born after
-- it, and entries ended after it. Epochs only grow, so these indexes are appended at their
-- right end per workspace (cheap to keep), and a revert never scans the unchanged tree.
CREATE INDEX entries_born ON entries (workspace_id, valid_from);
CREATE INDEX entries_ended ON entries (workspace_id, valid_to) WHERE valid_to IS NOT NULL;
CREATE INDEX inodes_born ON inodes (workspace_id, valid_from);

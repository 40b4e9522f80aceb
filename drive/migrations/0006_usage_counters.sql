-- Usage counters per workspace: logical bytes of the regular files that have a link (each
-- inode once, however many names it has) and the number of such nodes besides the root. Mutations
-- only APPEND a signed change here, in their own transaction, and read nothing, so
-- concurrent writers never conflict over the counters; the total is the sum of a
-- workspace's rows. Readers fold many rows into one (see meta/usage.rs). Only a commit that
-- grows a workspace with a quota reads the sum (and so serialises with other such commits).
-- Snapshots are not charged.
CREATE SEQUENCE usage_change_ids START WITH 1;
CREATE TABLE usage_changes (
    workspace_id  UUID NOT NULL,
    id            INT8 NOT NULL DEFAULT nextval('usage_change_ids'),
    bytes         INT8 NOT NULL,
    nodes         INT8 NOT NULL,
    PRIMARY KEY (workspace_id, id)
);

-- Backfill: one row per live workspace, from its live inodes that have a link (the root
-- excepted), as the mutations count them from now on.
INSERT INTO usage_changes (workspace_id, bytes, nodes)
SELECT w.id,
       COALESCE(sum(i.size) FILTER (WHERE i.kind = 1), 0)::INT8,
       count(i.ino)
FROM workspaces w
LEFT JOIN inodes i ON i.workspace_id = w.id AND i.valid_to IS NULL AND i.nlink > 0 AND i.ino <> w.root_ino
WHERE w.deleted_at IS NULL
GROUP BY w.id;

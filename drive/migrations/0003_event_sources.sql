-- Where a renamed or exchanged node came from. The destination stays in (parent, name); the
-- source lets other mounts drop their cached entry for the old name at once instead of
-- waiting for a cache lifetime to pass.
ALTER TABLE events ADD COLUMN from_parent INT8;
ALTER TABLE events ADD COLUMN from_name BYTEA;

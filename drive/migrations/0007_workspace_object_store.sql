-- Where a workspace's blocks live when not in the mounting node's default object store: an S3
-- bucket and prefix, with the endpoint and region to reach it (never credentials). Written
-- when the workspace is created and never updated. NULL bucket: the node's default store.
ALTER TABLE workspaces ADD COLUMN store_bucket TEXT;
ALTER TABLE workspaces ADD COLUMN store_prefix TEXT;
ALTER TABLE workspaces ADD COLUMN store_endpoint TEXT;
ALTER TABLE workspaces ADD COLUMN store_region TEXT;

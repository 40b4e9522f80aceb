-- Provisioned volumes: a named folder (or a whole workspace) created on request, e.g. by the
-- CSI controller for a PersistentVolumeClaim. The name makes provisioning idempotent; the
-- parameters let a repeated request with different parameters be refused.
CREATE TABLE volumes (
    name          TEXT NOT NULL,
    workspace_id  UUID NOT NULL,
    path          TEXT NOT NULL,
    whole_workspace BOOL NOT NULL,
    capacity_bytes INT8 NOT NULL,
    parameters    JSONB NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at    TIMESTAMPTZ
);
CREATE UNIQUE INDEX volumes_live_name ON volumes (name) WHERE deleted_at IS NULL;

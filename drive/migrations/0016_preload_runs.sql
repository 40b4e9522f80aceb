-- Preload runs: what `studiodrive-csi preload --report-as NAME --node NODE` fetched into a
-- node's cache, one row per (preload name, node), overwritten by each run of that pair. The
-- node plugin reads the row of (preload, itself) at NodePublishVolume to make a pod wait for
-- its preload. `first_errors` keeps the first few missing or failed files, not all of them.
CREATE TABLE preload_runs (
    name          TEXT NOT NULL,
    node          TEXT NOT NULL,
    workspace     TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    files         INT8 NOT NULL DEFAULT 0,
    bytes         INT8 NOT NULL DEFAULT 0,
    done_files    INT8 NOT NULL DEFAULT 0,
    done_bytes    INT8 NOT NULL DEFAULT 0,
    failed_files  INT8 NOT NULL DEFAULT 0,
    first_errors  TEXT[] NOT NULL DEFAULT ARRAY[]::TEXT[],
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (name, node)
);

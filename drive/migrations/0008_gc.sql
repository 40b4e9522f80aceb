-- Garbage collection of blocks (issue 17; the rules are in drive/src/rules/gc.rs).
-- A block being deleted by a GC pass is claimed by it: writers that meet the claim wait for
-- the sweep, or take the record over once the pass's lease has run out.
ALTER TABLE blocks ADD COLUMN claimed_by TEXT;

-- One pass at a time per scope; a pass deletes objects only while its lease lasts.
CREATE TABLE gc_leases (
    scope       TEXT PRIMARY KEY,
    pass_id     TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);

-- What mark proposed; sweep deletes only these, each re-checked when claimed.
CREATE TABLE gc_candidates (
    pass_id  TEXT NOT NULL,
    hash     BYTEA NOT NULL,
    PRIMARY KEY (pass_id, hash)
);

-- Objects seen in the store without a block record, and when first seen: deleted by a later
-- pass once older than the grace period and still without a record.
CREATE TABLE gc_orphans (
    key         TEXT PRIMARY KEY,
    first_seen  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Passes and their reports; re-running a pass id resumes it.
CREATE TABLE gc_passes (
    id           TEXT PRIMARY KEY,
    scope        TEXT NOT NULL,
    cutoff       TIMESTAMPTZ NOT NULL,
    dry_run      BOOL NOT NULL,
    marked       BOOL NOT NULL DEFAULT false,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ,
    report       JSONB
);

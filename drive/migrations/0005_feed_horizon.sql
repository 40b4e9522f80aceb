-- The change feed's horizon: every event id at or below `horizon` belongs to a transaction
-- that has committed or is given up as rolled back. Readers of one workspace read that
-- workspace's events above the horizon (indexed) instead of the whole log; one reader at a
-- time (the holder of the lease) advances it by following the whole log with gap tracking.
CREATE TABLE feed_horizon (
    id INT4 PRIMARY KEY CHECK (id = 1),
    horizon INT8 NOT NULL,
    holder TEXT NOT NULL DEFAULT '',
    lease_until TIMESTAMPTZ NOT NULL DEFAULT '1970-01-01 00:00:00+00'
);

-- Starts a little below the end of the log: transactions in flight while this runs may hold
-- ids just below it, and the first holder tracks every missing id above the horizon.
INSERT INTO feed_horizon (id, horizon) SELECT 1, GREATEST(COALESCE(max(id), 0) - 1000, 0) FROM events;

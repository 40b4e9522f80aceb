-- Event sinks: where a workspace's change feed is delivered (NATS JetStream, CloudEvents
-- webhooks). One row per sink, keyed by the name its owner gave it (`namespace/name` for an
-- EventSink resource). `position` is the sink's cursor: every event of the workspace at or
-- below it was delivered (or came before the sink started). One relay at a time delivers a
-- sink: the holder of its lease. Retention never purges above a live sink's position.
CREATE TABLE event_sinks (
    id                 TEXT PRIMARY KEY,
    workspace_id       UUID NOT NULL,
    spec               JSONB NOT NULL,
    position           INT8 NOT NULL,
    holder             TEXT NOT NULL DEFAULT '',
    lease_until        TIMESTAMPTZ NOT NULL DEFAULT '1970-01-01 00:00:00+00',
    delivered          INT8 NOT NULL DEFAULT 0,
    filtered           INT8 NOT NULL DEFAULT 0,
    consecutive_failures INT8 NOT NULL DEFAULT 0,
    failing_since      TIMESTAMPTZ,
    last_error         TEXT NOT NULL DEFAULT '',
    last_delivered_at  TIMESTAMPTZ,
    last_event_at      TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX event_sinks_by_workspace ON event_sinks (workspace_id);

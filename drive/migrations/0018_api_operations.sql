-- Asynchronous operations of the HTTP API (a long query, a large document write): any
-- replica of the API answers a poll of any handle. Only the caller that started an operation
-- may read it (`owner`, the verified user name); finished ones are purged after a day.
CREATE TABLE api_operations (
    id           UUID PRIMARY KEY,
    owner        TEXT NOT NULL,
    kind         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    result       JSONB,
    error        JSONB,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ
);
CREATE INDEX api_operations_by_start ON api_operations (started_at);

-- Media metadata: DataStores and their immutable Media Documents (drive/src/media).
-- A document is attached to a node (file, folder) of a workspace by inode, so it follows its
-- node through renames; `epoch` is the workspace's epoch when it was written, so a snapshot
-- at epoch E sees the documents with epoch <= E. Documents go when their node is purged.
CREATE TABLE media_datastores (
    id               UUID PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    analysis_type    TEXT NOT NULL,
    version          INT8 NOT NULL,
    schema           JSONB NOT NULL,
    media_id_schema  JSONB NOT NULL,
    queryable        TEXT[] NOT NULL DEFAULT ARRAY[]::TEXT[],
    timeline         JSONB NOT NULL DEFAULT '[]',
    -- Readers, writers and admins (subjects); the API grants nothing to anyone else.
    access           JSONB NOT NULL DEFAULT '{}',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE media_documents (
    id            UUID PRIMARY KEY,
    datastore_id  UUID NOT NULL,
    media_key     TEXT NOT NULL,
    media_id      JSONB NOT NULL,
    workspace_id  UUID,
    ino           INT8,
    epoch         INT8,
    body          JSONB NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The documents of a media id, newest last; those of a node (purge, listing).
CREATE INDEX media_documents_by_media ON media_documents (datastore_id, media_key, created_at, id);
CREATE INDEX media_documents_by_node ON media_documents (ino) WHERE ino IS NOT NULL;

-- The newest document of each media id (what "latest" reads): moved forward on each write.
CREATE TABLE media_latest (
    datastore_id  UUID NOT NULL,
    media_key     TEXT NOT NULL,
    doc_id        UUID NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (datastore_id, media_key)
);
CREATE INDEX media_latest_by_doc ON media_latest (doc_id);

-- The index of queryable fields: one row per (document, queryable field present). Filters
-- become INTERSECT / UNION / EXCEPT of index ranges over these rows, never a scan of bodies.
-- Strings are kept as their UTF-8 bytes so both databases order them bytewise.
CREATE TABLE media_fields (
    datastore_id  UUID NOT NULL,
    field         TEXT NOT NULL,
    doc_id        UUID NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('null', 'bool', 'number', 'string', 'other')),
    bool_value    BOOL,
    num           FLOAT8,
    str           BYTEA,
    PRIMARY KEY (doc_id, field)
);
CREATE INDEX media_fields_num ON media_fields (datastore_id, field, num) WHERE kind = 'number';
CREATE INDEX media_fields_str ON media_fields (datastore_id, field, str) WHERE kind = 'string';
CREATE INDEX media_fields_any ON media_fields (datastore_id, field, kind, bool_value);

-- Timeline entities inside documents (events with a time range, regions with a bounding box),
-- one row per entity of a collection the DataStore declares, so a query inside one large
-- document reads index ranges, not the document.
CREATE TABLE media_timeline (
    doc_id      UUID NOT NULL,
    collection  INT4 NOT NULL,
    idx         INT4 NOT NULL,
    t_start     FLOAT8 NOT NULL,
    t_end       FLOAT8 NOT NULL,
    x0          FLOAT8,
    y0          FLOAT8,
    x1          FLOAT8,
    y1          FLOAT8,
    PRIMARY KEY (doc_id, collection, idx)
);
CREATE INDEX media_timeline_by_time ON media_timeline (doc_id, t_start, t_end);

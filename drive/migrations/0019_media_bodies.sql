-- Large media documents (issue 20): a document whose JSON text is over 1 MiB keeps its text in
-- the object store as blocks of the data path, and only its indexed part here (field rows,
-- timeline rows with each item's byte span in the text). `body` is NULL for such a document;
-- `body_size` is the length of its text.
ALTER TABLE media_documents ALTER COLUMN body DROP NOT NULL;
ALTER TABLE media_documents ADD COLUMN body_size INT8;

-- The text's blocks, in order. A block referenced here is live for garbage collection as a
-- block of a file's map is (see `meta::rows::BLOCK_IS_REFERENCED`).
CREATE TABLE media_blocks (
    doc_id  UUID NOT NULL,
    idx     INT8 NOT NULL,
    hash    BYTEA NOT NULL,
    len     INT8 NOT NULL,
    PRIMARY KEY (doc_id, idx)
);
CREATE INDEX media_blocks_by_hash ON media_blocks (hash);

-- Where each timeline item lies in a stored document's text (NULL for documents kept here),
-- so a query reads the blocks holding its hits, not the document.
ALTER TABLE media_timeline ADD COLUMN item_offset INT8;
ALTER TABLE media_timeline ADD COLUMN item_len INT8;

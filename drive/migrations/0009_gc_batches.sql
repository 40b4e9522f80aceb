-- Block passes in bounded batches (issue 17): mark scans the blocks in hash order a batch per
-- transaction and the orphan sweep lists the store a page at a time; where each got to and
-- the report so far are kept with the pass, so a resumed pass goes on from there and ends
-- with the totals of an uninterrupted one.
ALTER TABLE gc_passes ADD COLUMN mark_after BYTEA;
ALTER TABLE gc_passes ADD COLUMN orphans_after TEXT;
ALTER TABLE gc_passes ADD COLUMN orphans_swept BOOL NOT NULL DEFAULT false;

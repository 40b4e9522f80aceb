-- The report of a whole lifecycle pass (namespace phases and the block pass), kept apart from
-- the block pass's running report, which a resumed pass adds to.
ALTER TABLE gc_passes ADD COLUMN lifecycle_report JSONB;

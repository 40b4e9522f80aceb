-- A volume's id, what the CO names it by after creation: its name when that is a safe id (as
-- Kubernetes' pvc-<uid> names are), else the safe name it is stored under. Names stay what
-- makes CreateVolume idempotent.
ALTER TABLE volumes ADD COLUMN volume_id TEXT;
UPDATE volumes SET volume_id = name WHERE volume_id IS NULL;
ALTER TABLE volumes ALTER COLUMN volume_id SET NOT NULL;
CREATE UNIQUE INDEX volumes_live_id ON volumes (volume_id) WHERE deleted_at IS NULL;

-- File locks shared by every mount of a workspace (fcntl record locks, and flock as
-- whole-file locks). A mount's locks count only while its lease is live: a mount that dies
-- loses them when its lease expires, and one that comes back after that finds them gone.
CREATE TABLE mount_leases (
    mount_id TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE file_locks (
    ino INT8 NOT NULL,
    mount_id TEXT NOT NULL,
    owner INT8 NOT NULL,
    start_off INT8 NOT NULL,
    end_off INT8 NOT NULL,
    exclusive BOOL NOT NULL,
    pid INT8 NOT NULL,
    PRIMARY KEY (ino, mount_id, owner, start_off)
);

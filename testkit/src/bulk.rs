//! Bulk-loads large trees straight into the metadata schema with SQL, for benchmarks:
//! creating a million nodes one transaction at a time would measure the loader, not the
//! operation under test. Rows are what the store writes for empty files and folders at
//! epoch 1.

/// Inserts `n` empty files (`f0000001`, ...) into folder `dir` of workspace `ws`.
pub async fn files(c: &tokio_postgres::Client, ws: uuid::Uuid, dir: i64, n: usize) -> anyhow::Result<()> {
    c.execute(
        "WITH new AS (SELECT nextval('node_ids') AS ino, g FROM generate_series(1, $3::INT8) g), \
         ins AS (INSERT INTO inodes (ino, valid_from, workspace_id, kind, mode, uid, gid, nlink, atime_ns, mtime_ns, ctime_ns, crtime_ns) \
                 SELECT ino, 1, $1, 1, 420, 0, 0, 1, 0, 0, 0, 0 FROM new RETURNING ino) \
         INSERT INTO entries (parent, name, valid_from, workspace_id, ino, kind) \
         SELECT $2, convert_to('f' || lpad(g::TEXT, 7, '0'), 'UTF8'), 1, $1, ino, 1 FROM new",
        &[&ws, &dir, &(n as i64)],
    )
    .await?;
    Ok(())
}

/// Inserts `dirs` folders (`d00001`, ...) under `root`, each with `per_dir` files.
pub async fn tree(
    c: &tokio_postgres::Client,
    ws: uuid::Uuid,
    root: i64,
    dirs: usize,
    per_dir: usize,
) -> anyhow::Result<()> {
    let rows = c
        .query(
            "WITH new AS (SELECT nextval('node_ids') AS ino, g FROM generate_series(1, $3::INT8) g), \
             ins AS (INSERT INTO inodes (ino, valid_from, workspace_id, kind, mode, uid, gid, nlink, atime_ns, mtime_ns, ctime_ns, crtime_ns) \
                     SELECT ino, 1, $1, 2, 493, 0, 0, 2, 0, 0, 0, 0 FROM new RETURNING ino) \
             INSERT INTO entries (parent, name, valid_from, workspace_id, ino, kind) \
             SELECT $2, convert_to('d' || lpad(g::TEXT, 5, '0'), 'UTF8'), 1, $1, ino, 2 FROM new RETURNING ino",
            &[&ws, &root, &(dirs as i64)],
        )
        .await?;
    for row in rows {
        files(c, ws, row.get(0), per_dir).await?;
    }
    Ok(())
}

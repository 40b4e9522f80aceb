//! Row mapping and the statements every operation shares: the workspace context of a
//! transaction, versioned inode updates, entry versions, events.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::MetaError;
use crate::meta::pg_error;
use crate::model::{
    Actor, Attr, Epoch, Name, NewNode, NodeId, NodeKind, Timestamp, View, WorkspaceId, WorkspaceKind,
};

pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// The client-side statement deadline, in milliseconds (see `MetaConfig::statement_timeout`).
static STATEMENT_TIMEOUT_MS: AtomicU64 = AtomicU64::new(15_000);

pub(crate) fn set_statement_timeout(limit: Duration) {
    STATEMENT_TIMEOUT_MS.store(limit.as_millis().max(1) as u64, Ordering::Relaxed);
}

/// Awaits one database round trip for at most the statement timeout. A future dropped at
/// the deadline leaves its connection usable: tokio-postgres still reads (and discards) the
/// late answer, and a dropped transaction is rolled back.
pub(crate) async fn timed<T>(
    round_trip: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, MetaError> {
    let limit = Duration::from_millis(STATEMENT_TIMEOUT_MS.load(Ordering::Relaxed));
    match tokio::time::timeout(limit, round_trip).await {
        Ok(result) => result.map_err(pg_error),
        Err(_) => Err(MetaError::Unavailable {
            message: format!("the database did not answer within {} ms", limit.as_millis()),
            source: None,
        }),
    }
}

pub(crate) async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, MetaError> {
    let stmt = timed(c.prepare_cached(sql)).await?;
    timed(c.query(&stmt, params)).await
}

pub(crate) async fn query_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, MetaError> {
    let stmt = timed(c.prepare_cached(sql)).await?;
    timed(c.query_opt(&stmt, params)).await
}

pub(crate) async fn execute<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, MetaError> {
    let stmt = timed(c.prepare_cached(sql)).await?;
    timed(c.execute(&stmt, params)).await
}

/// Runs statements that must execute in the given order, sent together. All are prepared
/// first (from the statement cache, normally no round trip), so that a statement this
/// connection has not prepared yet cannot fall behind a later one while its Parse is in
/// flight. (Statements sent together with `join!` otherwise only keep their order when all are
/// cached, which is fine for independent rows but not for "close the old row, then insert".)
pub(crate) async fn execute_in_order<C: GenericClient>(
    c: &C,
    statements: &[(&str, Params<'_>)],
) -> Result<(), MetaError> {
    let prepared =
        futures::future::join_all(statements.iter().map(|(sql, _)| timed(c.prepare_cached(sql)))).await;
    let mut ready = Vec::with_capacity(prepared.len());
    for p in prepared {
        ready.push(p?);
    }
    let runs = ready
        .iter()
        .zip(statements)
        .map(|(stmt, (_, params))| async move { timed(c.execute(stmt, params)).await.map(drop) });
    first_failure(futures::future::join_all(runs).await)
}

pub(crate) fn to_system_time(t: Timestamp) -> SystemTime {
    if t.0 >= 0 {
        UNIX_EPOCH + Duration::from_nanos(t.0 as u64)
    } else {
        UNIX_EPOCH
    }
}

pub(crate) fn from_system_time(t: SystemTime) -> Timestamp {
    let nanos = t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    Timestamp(i64::try_from(nanos).unwrap_or(i64::MAX))
}

/// What a mutation needs to know about its workspace. [`ws_ctx`] reads it `FOR SHARE`, so a
/// snapshot (which locks the row to bump the epoch) waits for every mutation that read the
/// epoch before it, and mutations that start after it read the new epoch. Reading the row is
/// not enough: SERIALIZABLE may order a mutation that read epoch E before a snapshot of E that
/// commits first, and the snapshot's view would then change after it was returned.
#[derive(Debug, Clone)]
pub(crate) struct WsCtx {
    pub id: WorkspaceId,
    pub epoch: i64,
    pub kind: WorkspaceKind,
    pub root: NodeId,
    pub block_size: u64,
    pub quota_bytes: Option<u64>,
}

pub(crate) async fn ws_ctx<C: GenericClient>(c: &C, ws: WorkspaceId) -> Result<WsCtx, MetaError> {
    let row = query_opt(
        c,
        "SELECT epoch, kind, root_ino, block_size, quota_bytes FROM workspaces \
         WHERE id = $1 AND deleted_at IS NULL FOR SHARE",
        &[&ws.0],
    )
    .await?
    .ok_or_else(|| MetaError::NotFound(format!("workspace {ws}")))?;
    let kind: String = row.get(1);
    Ok(WsCtx {
        id: ws,
        epoch: row.get(0),
        kind: WorkspaceKind::parse(&kind)
            .ok_or_else(|| MetaError::Internal(format!("workspace kind {kind}")))?,
        root: NodeId(row.get::<_, i64>(2) as u64),
        block_size: row.get::<_, i64>(3) as u64,
        quota_bytes: row.get::<_, Option<i64>>(4).map(|q| q as u64),
    })
}

/// One version of an inode.
#[derive(Debug, Clone)]
pub(crate) struct InodeRow {
    pub attr: Attr,
    pub workspace: WorkspaceId,
    pub valid_from: i64,
    pub symlink_target: Option<Vec<u8>>,
}

pub(crate) const INODE_COLUMNS: &str = "ino, kind, mode, uid, gid, rdev, size, nlink, atime_ns, mtime_ns, \
     ctime_ns, crtime_ns, content_version, workspace_id, valid_from, symlink_target";

/// Maps the columns of [`INODE_COLUMNS`] starting at `at`.
pub(crate) fn inode_from_row(row: &Row, at: usize) -> Result<InodeRow, MetaError> {
    let kind: i16 = row.get(at + 1);
    Ok(InodeRow {
        attr: Attr {
            ino: NodeId(row.get::<_, i64>(at) as u64),
            kind: NodeKind::from_code(kind)
                .ok_or_else(|| MetaError::Internal(format!("node kind {kind}")))?,
            mode: row.get::<_, i64>(at + 2) as u32,
            uid: row.get::<_, i64>(at + 3) as u32,
            gid: row.get::<_, i64>(at + 4) as u32,
            rdev: row.get::<_, i64>(at + 5) as u64,
            size: row.get::<_, i64>(at + 6) as u64,
            nlink: row.get::<_, i64>(at + 7) as u32,
            atime: Timestamp(row.get(at + 8)),
            mtime: Timestamp(row.get(at + 9)),
            ctime: Timestamp(row.get(at + 10)),
            crtime: Timestamp(row.get(at + 11)),
            content_version: row.get::<_, i64>(at + 12) as u64,
        },
        workspace: WorkspaceId(row.get(at + 13)),
        valid_from: row.get(at + 14),
        symlink_target: row.get(at + 15),
    })
}

/// The inode as seen in `view`, if it exists there.
pub(crate) async fn inode_in_view<C: GenericClient>(
    c: &C,
    view: View,
    ino: NodeId,
) -> Result<Option<InodeRow>, MetaError> {
    let row = match view {
        View::Live => {
            query_opt(
                c,
                &format!("SELECT {INODE_COLUMNS} FROM inodes WHERE ino = $1 AND valid_to IS NULL"),
                &[&(ino.0 as i64)],
            )
            .await?
        }
        View::At(Epoch(e)) => {
            query_opt(
                c,
                &format!(
                    "SELECT {INODE_COLUMNS} FROM inodes WHERE ino = $1 AND valid_from <= $2 \
                     AND (valid_to IS NULL OR valid_to > $2)"
                ),
                &[&(ino.0 as i64), &e],
            )
            .await?
        }
    };
    row.map(|r| inode_from_row(&r, 0)).transpose()
}

/// The live inode `ino` of workspace `ws`, or NotFound.
pub(crate) async fn live_inode<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    ino: NodeId,
) -> Result<InodeRow, MetaError> {
    checked_live_inode(ws, ino, inode_in_view(c, View::Live, ino).await?)
}

pub(crate) fn checked_live_inode(
    ws: &WsCtx,
    ino: NodeId,
    row: Option<InodeRow>,
) -> Result<InodeRow, MetaError> {
    match row {
        Some(row) if row.workspace == ws.id => Ok(row),
        _ => Err(MetaError::NotFound(format!("node {ino}"))),
    }
}

// Mutations are latency-bound (one round trip per statement), so the reads every one of them
// starts with go out together, pipelined on the transaction's connection. Results are taken
// in statement order, so the first failure is the one reported: a serialization failure
// (40001) that the retry loop looks for, not the "transaction aborted" errors it causes in
// the statements after it.

/// The outcome of statements sent together: the first failure that is not the "transaction
/// aborted" echo of an earlier one (so a unique violation still reads as "exists"), and a
/// serialization failure before anything else, since that is what the retry loop looks for.
pub(crate) fn first_failure(
    results: impl IntoIterator<Item = Result<(), MetaError>>,
) -> Result<(), MetaError> {
    let mut errors: Vec<MetaError> = results.into_iter().filter_map(Result::err).collect();
    if errors.is_empty() {
        return Ok(());
    }
    let pick = errors
        .iter()
        .position(crate::meta::is_serialization_failure)
        .or_else(|| {
            errors
                .iter()
                .position(|e| !crate::meta::is_aborted_transaction(e))
        })
        .unwrap_or(0);
    Err(errors.swap_remove(pick))
}

/// Two results of futures whose statements went out together: both values, or the error
/// [`first_failure`] picks. Taking them in code order is not enough: a statement whose plan is
/// not yet cached on the connection waits for its Parse while a later, cached one executes,
/// so the first error in code order can be the "transaction aborted" echo of a serialization
/// failure the retry loop must see.
pub(crate) fn settle<A, B>(a: Result<A, MetaError>, b: Result<B, MetaError>) -> Result<(A, B), MetaError> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (a, b) => Err(failure_of([a.map(drop), b.map(drop)])),
    }
}

/// [`settle`] for three.
pub(crate) fn settle3<A, B, C>(
    a: Result<A, MetaError>,
    b: Result<B, MetaError>,
    c: Result<C, MetaError>,
) -> Result<(A, B, C), MetaError> {
    match (a, b, c) {
        (Ok(a), Ok(b), Ok(c)) => Ok((a, b, c)),
        (a, b, c) => Err(failure_of([a.map(drop), b.map(drop), c.map(drop)])),
    }
}

/// [`settle`] for any number of results of one kind.
pub(crate) fn settle_all<T>(results: Vec<Result<T, MetaError>>) -> Result<Vec<T>, MetaError> {
    if results.iter().all(Result::is_ok) {
        return Ok(results.into_iter().flatten().collect());
    }
    Err(failure_of(results.into_iter().map(|r| r.map(drop))))
}

/// The error [`first_failure`] picks among results of which at least one failed.
fn failure_of(results: impl IntoIterator<Item = Result<(), MetaError>>) -> MetaError {
    match first_failure(results) {
        Err(e) => e,
        Ok(()) => MetaError::Internal("settle: a failed result vanished".into()),
    }
}

/// The workspace and the live node `ino` of it, read together.
pub(crate) async fn ws_and_inode<C: GenericClient>(
    c: &C,
    ws: WorkspaceId,
    ino: NodeId,
) -> Result<(WsCtx, InodeRow), MetaError> {
    let (ws, row) = tokio::join!(ws_ctx(c, ws), inode_in_view(c, View::Live, ino));
    let (ws, row) = settle(ws, row)?;
    let row = checked_live_inode(&ws, ino, row)?;
    Ok((ws, row))
}

/// The workspace and its live directory `dir`, read together.
pub(crate) async fn ws_and_dir<C: GenericClient>(
    c: &C,
    ws: WorkspaceId,
    dir: NodeId,
) -> Result<(WsCtx, InodeRow), MetaError> {
    let (ws, row) = ws_and_inode(c, ws, dir).await?;
    Ok((ws, as_live_dir(dir, row)?))
}

/// A live directory of the workspace, or NotFound / NotADirectory.
pub(crate) async fn live_dir<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    ino: NodeId,
) -> Result<InodeRow, MetaError> {
    as_live_dir(ino, live_inode(c, ws, ino).await?)
}

/// A live inode that must be a directory still linked into the tree.
fn as_live_dir(ino: NodeId, row: InodeRow) -> Result<InodeRow, MetaError> {
    if row.attr.kind != NodeKind::Directory {
        return Err(MetaError::NotADirectory(format!("node {ino}")));
    }
    if row.attr.nlink == 0 {
        return Err(MetaError::NotFound(format!("directory {ino} was removed")));
    }
    Ok(row)
}

/// Writes `row.attr` as the live version of the inode: in place when the live version was
/// created in the current epoch, otherwise by closing it and inserting a new version, so that
/// snapshots keep seeing the old one.
pub(crate) async fn write_inode<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    row: &InodeRow,
) -> Result<(), MetaError> {
    let a = &row.attr;
    let ino = a.ino.0 as i64;
    if row.valid_from == ws.epoch {
        execute(
            c,
            "UPDATE inodes SET mode = $2, uid = $3, gid = $4, rdev = $5, size = $6, nlink = $7, \
             atime_ns = $8, mtime_ns = $9, ctime_ns = $10, content_version = $11 \
             WHERE ino = $1 AND valid_to IS NULL",
            &[
                &ino,
                &(a.mode as i64),
                &(a.uid as i64),
                &(a.gid as i64),
                &(a.rdev as i64),
                &(a.size as i64),
                &(a.nlink as i64),
                &a.atime.0,
                &a.mtime.0,
                &a.ctime.0,
                &(a.content_version as i64),
            ],
        )
        .await?;
        return Ok(());
    }
    execute(
        c,
        "UPDATE inodes SET valid_to = $2 WHERE ino = $1 AND valid_to IS NULL",
        &[&ino, &ws.epoch],
    )
    .await?;
    insert_inode_row(c, ws, a, row.symlink_target.as_deref()).await
}

async fn insert_inode_row<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    a: &Attr,
    symlink_target: Option<&[u8]>,
) -> Result<(), MetaError> {
    execute(
        c,
        "INSERT INTO inodes (ino, valid_from, workspace_id, kind, mode, uid, gid, rdev, size, nlink, \
         atime_ns, mtime_ns, ctime_ns, crtime_ns, content_version, symlink_target) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        &[
            &(a.ino.0 as i64),
            &ws.epoch,
            &ws.id.0,
            &a.kind.code(),
            &(a.mode as i64),
            &(a.uid as i64),
            &(a.gid as i64),
            &(a.rdev as i64),
            &(a.size as i64),
            &(a.nlink as i64),
            &a.atime.0,
            &a.mtime.0,
            &a.ctime.0,
            &a.crtime.0,
            &(a.content_version as i64),
            &symlink_target,
        ],
    )
    .await?;
    Ok(())
}

/// Allocates an inode number and inserts a new inode; returns its attributes.
pub(crate) async fn insert_inode<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    node: &NewNode,
    now: Timestamp,
) -> Result<Attr, MetaError> {
    let attr = new_inode_attr(next_node_id(c).await?, node, now);
    insert_new_inode(c, ws, node, &attr).await?;
    Ok(attr)
}

/// A fresh inode number (it needs nothing else, so callers can send it with their reads).
pub(crate) async fn next_node_id<C: GenericClient>(c: &C) -> Result<NodeId, MetaError> {
    let row = query_opt(c, "SELECT nextval('node_ids')", &[])
        .await?
        .ok_or_else(|| MetaError::Internal("nextval".into()))?;
    Ok(NodeId(row.get::<_, i64>(0) as u64))
}

/// Inserts the inode `attr` (from [`new_inode_attr`]) describes.
pub(crate) async fn insert_new_inode<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    node: &NewNode,
    attr: &Attr,
) -> Result<(), MetaError> {
    insert_inode_row(c, ws, attr, node.symlink_target.as_deref()).await
}

/// The attributes of a new node numbered `ino`.
pub(crate) fn new_inode_attr(ino: NodeId, node: &NewNode, now: Timestamp) -> Attr {
    let size = match (node.kind, &node.symlink_target) {
        (NodeKind::Symlink, Some(t)) => t.len() as u64,
        _ => 0,
    };
    Attr {
        ino,
        kind: node.kind,
        mode: node.mode & 0o7777,
        uid: node.uid,
        gid: node.gid,
        size,
        nlink: if node.kind == NodeKind::Directory { 2 } else { 1 },
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        rdev: node.rdev,
        content_version: 0,
    }
}

/// A live directory entry.
#[derive(Debug, Clone)]
pub(crate) struct EntryRow {
    pub id: i64,
    pub ino: NodeId,
    pub kind: NodeKind,
}

/// A live entry and the live inode it names, in one statement.
pub(crate) async fn live_entry_and_inode<C: GenericClient>(
    c: &C,
    parent: NodeId,
    name: &Name,
) -> Result<Option<(EntryRow, Option<InodeRow>)>, MetaError> {
    let row = query_opt(
        c,
        &format!(
            "SELECT e.id, e.ino, e.kind, {} FROM entries e \
             LEFT JOIN inodes i ON i.ino = e.ino AND i.valid_to IS NULL \
             WHERE e.parent = $1 AND e.name = $2 AND e.valid_to IS NULL",
            prefixed_inode_columns()
        ),
        &[&(parent.0 as i64), &name.as_bytes()],
    )
    .await?;
    row.map(|r| {
        let entry = entry_from_row(&r)?;
        let node = match r.get::<_, Option<i64>>(3) {
            Some(_) => Some(inode_from_row(&r, 3)?),
            None => None,
        };
        Ok((entry, node))
    })
    .transpose()
}

/// The live entries `(parent, name)` and the live inodes they name, in one statement; names
/// without a live entry are missing from the result.
pub(crate) async fn live_entries_and_inodes<C: GenericClient>(
    c: &C,
    keys: &[(NodeId, &Name)],
) -> Result<HashMap<(NodeId, Name), (EntryRow, Option<InodeRow>)>, MetaError> {
    let parents: Vec<i64> = keys.iter().map(|k| k.0.0 as i64).collect();
    let names: Vec<&[u8]> = keys.iter().map(|k| k.1.as_bytes()).collect();
    let rows = query(
        c,
        &format!(
            "SELECT e.id, e.ino, e.kind, e.parent, e.name, {} \
             FROM unnest($1::INT8[], $2::BYTEA[]) AS k(parent, name) \
             JOIN entries e ON e.parent = k.parent AND e.name = k.name AND e.valid_to IS NULL \
             LEFT JOIN inodes i ON i.ino = e.ino AND i.valid_to IS NULL",
            prefixed_inode_columns()
        ),
        &[&parents, &names],
    )
    .await?;
    rows.iter()
        .map(|r| {
            let entry = entry_from_row(r)?;
            let key = (NodeId(r.get::<_, i64>(3) as u64), Name::from_stored(r.get(4)));
            let node = match r.get::<_, Option<i64>>(5) {
                Some(_) => Some(inode_from_row(r, 5)?),
                None => None,
            };
            Ok((key, (entry, node)))
        })
        .collect()
}

/// [`INODE_COLUMNS`] qualified with the table alias `i`, for joins.
pub(crate) fn prefixed_inode_columns() -> String {
    INODE_COLUMNS
        .split(", ")
        .map(|c| format!("i.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn entry_from_row(r: &Row) -> Result<EntryRow, MetaError> {
    let kind: i16 = r.get(2);
    Ok(EntryRow {
        id: r.get(0),
        ino: NodeId(r.get::<_, i64>(1) as u64),
        kind: NodeKind::from_code(kind).ok_or_else(|| MetaError::Internal(format!("node kind {kind}")))?,
    })
}

pub(crate) async fn live_entry<C: GenericClient>(
    c: &C,
    parent: NodeId,
    name: &Name,
) -> Result<Option<EntryRow>, MetaError> {
    let row = query_opt(
        c,
        "SELECT id, ino, kind FROM entries WHERE parent = $1 AND name = $2 AND valid_to IS NULL",
        &[&(parent.0 as i64), &name.as_bytes()],
    )
    .await?;
    row.map(|r| entry_from_row(&r)).transpose()
}

/// Ends an entry's live version. `deleted` marks a soft delete (unlink, rmdir, subtree delete)
/// as opposed to a move, so that lifecycle purges can find it.
pub(crate) async fn close_entry<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    id: i64,
    deleted: bool,
) -> Result<(), MetaError> {
    let deleted_at = deleted.then(SystemTime::now);
    execute(
        c,
        "UPDATE entries SET valid_to = $2, deleted_at = $3 WHERE id = $1",
        &[&id, &ws.epoch, &deleted_at],
    )
    .await?;
    Ok(())
}

/// Inserts a live entry; a unique violation (the name is taken) becomes `Exists`.
pub(crate) async fn insert_entry<C: GenericClient>(
    c: &C,
    ws: &WsCtx,
    parent: NodeId,
    name: &Name,
    ino: NodeId,
    kind: NodeKind,
) -> Result<(), MetaError> {
    execute(
        c,
        "INSERT INTO entries (parent, name, valid_from, workspace_id, ino, kind) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&(parent.0 as i64), &name.as_bytes(), &ws.epoch, &ws.id.0, &(ino.0 as i64), &kind.code()],
    )
    .await
    .map_err(|e| match e {
        MetaError::Exists(_) => MetaError::Exists(name.to_string_lossy()),
        other => other,
    })?;
    Ok(())
}

/// Appends an event row (the outbox) in the caller's transaction.
pub(crate) async fn record_event<C: GenericClient>(
    c: &C,
    ws: WorkspaceId,
    actor: &Actor,
    op: &str,
    ino: Option<NodeId>,
    parent: Option<NodeId>,
    name: Option<&Name>,
) -> Result<(), MetaError> {
    insert_event(c, ws, actor, op, ino, (parent, name), None, (None, None)).await
}

/// Appends one `op` event per removed entry `(actor, node, parent, name)` in one statement
/// (ids are taken in slice order).
pub(crate) async fn record_removal_events<C: GenericClient>(
    c: &C,
    ws: WorkspaceId,
    op: &str,
    removed: &[(&Actor, NodeId, NodeId, &Name)],
) -> Result<(), MetaError> {
    if removed.is_empty() {
        return Ok(());
    }
    let actors: Vec<&str> = removed.iter().map(|r| r.0.0.as_str()).collect();
    let inos: Vec<i64> = removed.iter().map(|r| r.1.0 as i64).collect();
    let parents: Vec<i64> = removed.iter().map(|r| r.2.0 as i64).collect();
    let names: Vec<&[u8]> = removed.iter().map(|r| r.3.as_bytes()).collect();
    execute(
        c,
        "INSERT INTO events (workspace_id, actor, op, ino, parent, name) \
         SELECT $1, t.actor, $2, t.ino, t.parent, t.name \
         FROM unnest($3::TEXT[], $4::INT8[], $5::INT8[], $6::BYTEA[]) AS t(actor, ino, parent, name)",
        &[&ws.0, &op, &actors, &inos, &parents, &names],
    )
    .await?;
    Ok(())
}

/// Ends the live versions of entries `ids` as soft deletes, in one statement.
pub(crate) async fn close_entries<C: GenericClient>(c: &C, ws: &WsCtx, ids: &[i64]) -> Result<(), MetaError> {
    if ids.is_empty() {
        return Ok(());
    }
    execute(
        c,
        "UPDATE entries SET valid_to = $2, deleted_at = $3 WHERE id = ANY($1)",
        &[&ids, &ws.epoch, &SystemTime::now()],
    )
    .await?;
    Ok(())
}

/// Appends the event of a rename or exchange: the node, its new entry and the one it left.
pub(crate) async fn record_move_event<C: GenericClient>(
    c: &C,
    ws: WorkspaceId,
    actor: &Actor,
    op: &str,
    ino: NodeId,
    from: (NodeId, &Name),
    to: (NodeId, &Name),
) -> Result<(), MetaError> {
    insert_event(
        c,
        ws,
        actor,
        op,
        Some(ino),
        (Some(to.0), Some(to.1)),
        Some(from),
        (None, None),
    )
    .await
}

/// Appends the one event of a publish or a revert: the folder (and, when it has one, its
/// entry and the entry it left), plus the snapshot and epoch the change concerns.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record_snapshot_event<C: GenericClient>(
    c: &C,
    ws: WorkspaceId,
    actor: &Actor,
    op: &str,
    ino: NodeId,
    to: Option<(NodeId, &Name)>,
    from: Option<(NodeId, &Name)>,
    (snapshot, epoch): (Option<&str>, Epoch),
) -> Result<(), MetaError> {
    let entry = (to.map(|t| t.0), to.map(|t| t.1));
    insert_event(
        c,
        ws,
        actor,
        op,
        Some(ino),
        entry,
        from,
        (snapshot, Some(epoch.0)),
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn insert_event<C: GenericClient>(
    c: &C,
    ws: WorkspaceId,
    actor: &Actor,
    op: &str,
    ino: Option<NodeId>,
    (parent, name): (Option<NodeId>, Option<&Name>),
    from: Option<(NodeId, &Name)>,
    (snapshot, epoch): (Option<&str>, Option<i64>),
) -> Result<(), MetaError> {
    execute(
        c,
        "INSERT INTO events (workspace_id, actor, op, ino, parent, name, from_parent, from_name, snapshot, epoch) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &ws.0,
            &actor.0,
            &op,
            &ino.map(|i| i.0 as i64),
            &parent.map(|p| p.0 as i64),
            &name.map(Name::as_bytes),
            &from.map(|(p, _)| p.0 as i64),
            &from.map(|(_, n)| n.as_bytes()),
            &snapshot,
            &epoch,
        ],
    )
    .await?;
    Ok(())
}

/// Whether the workspace refuses changing this node's committed content (project workspaces
/// are write-once).
pub(crate) fn guard_write_once(ws: &WsCtx, attr: &Attr, what: &str) -> Result<(), MetaError> {
    crate::rules::write_once::guard(ws.kind, attr, what)
}

/// SQL, as a literal for `concat!`: whether the block with hash `$hash` (a column or a
/// parameter) is referenced, by a block map of a file (any version: snapshots keep theirs)
/// or by a stored media document. A referenced block is live; garbage collection, the sweep
/// and the forgetting of records all ask this one question.
macro_rules! block_is_referenced {
    ($hash:literal) => {
        concat!(
            "(EXISTS (SELECT 1 FROM file_blocks f WHERE f.hash = ",
            $hash,
            ") OR EXISTS (SELECT 1 FROM media_blocks m WHERE m.hash = ",
            $hash,
            "))"
        )
    };
}
pub(crate) use block_is_referenced;

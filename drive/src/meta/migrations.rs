//! Versioned schema migrations, applied at start-up.
//!
//! Safe when several processes start at once without advisory locks (which CockroachDB lacks):
//! each migration runs in one transaction that first inserts its version into
//! `schema_migrations`. A second runner's insert waits on the first's uncommitted row and then
//! fails with a unique violation, which means "already applied"; it rolls back its DDL.

use tokio_postgres::error::SqlState;

use crate::error::{ErrorKind, MetaError};
use crate::meta::{PgMetaStore, pg_error};

/// (version, SQL) in order. Never edit a released migration; add a new one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_namespace.sql")),
    (2, include_str!("../../migrations/0002_volumes.sql")),
    (3, include_str!("../../migrations/0003_event_sources.sql")),
    (4, include_str!("../../migrations/0004_file_locks.sql")),
    (5, include_str!("../../migrations/0005_feed_horizon.sql")),
    (6, include_str!("../../migrations/0006_usage_counters.sql")),
    (
        7,
        include_str!("../../migrations/0007_workspace_object_store.sql"),
    ),
    (8, include_str!("../../migrations/0008_gc.sql")),
    (9, include_str!("../../migrations/0009_gc_batches.sql")),
    (10, include_str!("../../migrations/0010_access_and_retention.sql")),
    (11, include_str!("../../migrations/0011_purge.sql")),
    (12, include_str!("../../migrations/0012_lifecycle_report.sql")),
    (13, include_str!("../../migrations/0013_volume_ids.sql")),
    (14, include_str!("../../migrations/0014_event_sinks.sql")),
    (15, include_str!("../../migrations/0015_publish_revert.sql")),
    (16, include_str!("../../migrations/0016_preload_runs.sql")),
    (17, include_str!("../../migrations/0017_media.sql")),
    (18, include_str!("../../migrations/0018_api_operations.sql")),
    (19, include_str!("../../migrations/0019_media_bodies.sql")),
];

pub(super) async fn apply(store: &PgMetaStore) -> Result<(), MetaError> {
    let mut client = store.client().await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version INT8 PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .or_else(|e| {
            // Two first-time runners race on the catalog itself; the loser's error names the
            // object the winner created.
            let raced = [
                SqlState::UNIQUE_VIOLATION,
                SqlState::DUPLICATE_OBJECT,
                SqlState::DUPLICATE_TABLE,
            ];
            match e.code() {
                Some(code) if raced.contains(code) => Ok(()),
                _ => Err(pg_error(e)),
            }
        })?;
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await.map_err(pg_error)?;
        let applied = tx
            .query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[version])
            .await
            .map_err(pg_error)?;
        if applied.is_some() {
            continue;
        }
        let claim = tx
            .execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version])
            .await;
        match claim.map_err(pg_error) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Exists => continue,
            Err(e) => return Err(e),
        }
        // A schema change on a large table may take longer than any statement of normal
        // operation: the migration runs without the connection's statement_timeout.
        tx.batch_execute("SET LOCAL statement_timeout = 0")
            .await
            .map_err(pg_error)?;
        tx.batch_execute(sql).await.map_err(pg_error)?;
        match tx.commit().await.map_err(pg_error) {
            Ok(()) => tracing::info!(version, "applied metadata migration"),
            Err(e) if e.kind() == ErrorKind::Exists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

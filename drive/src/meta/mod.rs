//! The metadata store: the namespace in PostgreSQL (CockroachDB-compatible SQL).
//!
//! Invariants every operation here keeps:
//! - every mutation is one SERIALIZABLE transaction, retried on serialization failure
//!   (SQLSTATE 40001 / 40P01) by [`in_txn!`], and appends its event row in that transaction;
//! - at most one live entry per (parent, name), enforced by the `entries_live` unique index;
//! - rows are epoch-versioned: a row older than the workspace's current epoch is closed and a
//!   new version inserted instead of being updated, so snapshots stay O(1) to take;
//! - input is validated before a transaction starts: bad input changes nothing.
//!
//! Split by concern: `migrations` (schema), `rows` (row mapping and shared statements),
//! `workspaces`, `tree` (nodes, rename, delete), `copy`, `snapshots`, `sequences`, `events`,
//! `shares`, `sinks` (event sinks' cursors and leases), `publish` (publish and revert),
//! `preloads` (preload runs per node), `content` (block maps), `usage` (usage counters and
//! the quota check), `access`
//! (last-access times and expiry), `media` and `media_ids` (media DataStores and documents).

mod access;
mod content;
mod copy;
mod events;
mod gc;
mod locks;
mod media;
mod media_ids;
mod memory;
mod migrations;
mod operations;
mod port;
mod preloads;
mod publish;
mod purge;
mod rows;
mod sequences;
mod shares;
mod sinks;
mod snapshots;
mod tls;
mod trash;
mod tree;
mod usage;
mod volumes;
mod workspaces;
pub mod xattrs;

pub use access::ExpireCounts;
pub use content::{BlockChange, BlockRecord, BlockState, FileBlock, InitialContent};
pub use copy::CopyReport;
pub use events::{EventFeed, FeedHorizon, WorkspaceFeed};
pub use gc::{Claim, MarkBatch, OrphanSpan, PassRecord};
pub use locks::{FileLock, LockKind};
pub use media::{
    DataStoreRecord, MAX_QUERY_RESULTS, MediaDocument, MediaHit, StoredBodies, StoredBody, TimelineHit,
    Versions,
};
pub use memory::MemMetaStore;
pub use operations::{OPERATION_DEADLINE, Operation, OperationState};
pub use preloads::{PRELOAD_MAX_ERRORS, PreloadRun, PreloadState};
pub use publish::{PublishMode, PublishOptions, PublishReport, RevertReport, RevertTarget};
pub(crate) use purge::before;
pub use purge::{DeletedEntry, PurgePace};
pub(crate) use rows::new_inode_attr;
pub use sinks::{Delivery, SinkRecord, SinkStart};
pub use trash::TrashItem;
pub use tree::QueuedUnlink;
pub use volumes::{
    MAX_ID_BYTES, Volume, VolumePlacement, VolumeRequest, is_safe_id, storage_name, validate_csi_name,
    volume_id_for,
};
pub use workspaces::WorkspaceUpdate;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;

use crate::error::MetaError;
use crate::model::NodeId;

/// How to reach PostgreSQL.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// A libpq connection string or `postgresql://` URL.
    pub url: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// TLS towards the server.
    pub tls: TlsMode,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Give up on a statement (or BEGIN, COMMIT) that has not answered after this long: the
    /// operation fails as unavailable (EIO through a mount) instead of waiting for a server
    /// that stopped answering. Also sent as the server's `statement_timeout`. One value per
    /// process (the last store connected sets it).
    pub statement_timeout: Duration,
    /// TCP keepalive idle time; probes every half of it, three lost probes close the
    /// connection (a peer gone without a RST is noticed in about twice this).
    pub keepalive_idle: Duration,
}

/// TLS towards PostgreSQL (rustls with the aws-lc-rs provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP or a Unix socket.
    Disable,
    /// TLS with certificate verification against the given CA file, or the webpki roots.
    Require { ca_file: Option<std::path::PathBuf> },
}

impl MetaConfig {
    /// A config for `url` with defaults: 16 connections, no TLS, 10 s connect timeout,
    /// 15 s statement timeout, 10 s keepalive idle.
    pub fn new(url: impl Into<String>) -> MetaConfig {
        MetaConfig {
            url: url.into(),
            pool_size: 16,
            tls: TlsMode::Disable,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(15),
            keepalive_idle: Duration::from_secs(10),
        }
    }
}

/// Counters for the binaries to export.
#[derive(Debug, Default)]
pub struct MetaStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Serialization-failure retries.
    pub retries: AtomicU64,
    /// Transactions that failed for good.
    pub failures: AtomicU64,
}

/// The metadata store: a connection pool over a migrated database.
#[derive(Clone)]
pub struct PgMetaStore {
    pool: Pool,
    stats: Arc<MetaStats>,
    /// Node numbers taken from the sequence in batches for [`PgMetaStore::reserve_node_id`].
    reserved_ids: Arc<std::sync::Mutex<Vec<u64>>>,
    /// What stamps mtime, ctime and creation times.
    clock: Arc<dyn crate::ports::Clock>,
    /// Compiled media DataStores by id, with the `updated_at` they were compiled at: a
    /// schema compiles in milliseconds, and a write needs it every time.
    media_compiled: media::CompiledCache,
}

impl std::fmt::Debug for PgMetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgMetaStore")
            .field("pool", &self.pool.status())
            .finish()
    }
}

/// Node numbers [`PgMetaStore::reserve_node_id`] takes from the sequence at a time.
const NODE_ID_BATCH: i32 = 64;

/// Attempts of one transaction before a serialization conflict is reported to the caller.
const MAX_TXN_ATTEMPTS: u32 = 60;

impl PgMetaStore {
    /// Connects, applies pending migrations and returns the store.
    pub async fn connect(config: &MetaConfig) -> Result<PgMetaStore, MetaError> {
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| MetaError::InvalidArgument(format!("metadata URL: {e}")))?;
        if config.statement_timeout.is_zero() || config.keepalive_idle.is_zero() {
            return Err(MetaError::InvalidArgument(
                "statement timeout and keepalive idle time must be positive".into(),
            ));
        }
        pg.connect_timeout(config.connect_timeout)
            .keepalives(true)
            .keepalives_idle(config.keepalive_idle)
            .keepalives_interval((config.keepalive_idle / 2).max(Duration::from_secs(1)))
            .keepalives_retries(3)
            // Unacknowledged data (a request sent to a host that vanished) closes the
            // connection after this long, without waiting for keepalives.
            .tcp_user_timeout(config.statement_timeout);
        // The server cancels its own side of a statement that runs too long (57014).
        let server_timeout = format!("-c statement_timeout={}", config.statement_timeout.as_millis());
        let options = match pg.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {server_timeout}"),
            _ => server_timeout,
        };
        pg.options(options);
        rows::set_statement_timeout(config.statement_timeout);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &config.tls {
            TlsMode::Disable => Manager::from_config(pg, tokio_postgres::NoTls, manager_config),
            TlsMode::Require { ca_file } => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                Manager::from_config(pg, tls::connector(ca_file.as_deref())?, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| MetaError::Internal(format!("build connection pool: {e}")))?;
        let store = PgMetaStore {
            pool,
            stats: Arc::default(),
            reserved_ids: Arc::default(),
            media_compiled: Arc::default(),
            clock: Arc::new(crate::ports::SystemClock),
        };
        migrations::apply(&store).await?;
        Ok(store)
    }

    /// Stamps times from `clock` instead of the wall clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn crate::ports::Clock>) -> PgMetaStore {
        self.clock = clock;
        self
    }

    /// A node number for a node this client creates later ([`PgMetaStore::create_file`]).
    /// Numbers are taken from the sequence in batches, so most calls need no round trip;
    /// numbers a process never uses are simply skipped, like any sequence value.
    pub async fn reserve_node_id(&self) -> Result<NodeId, MetaError> {
        if let Some(id) = self.take_reserved_id() {
            return Ok(id);
        }
        let client = self.client().await?;
        let rows = rows::query(
            &client,
            "SELECT nextval('node_ids') FROM generate_series(1, $1)",
            &[&NODE_ID_BATCH],
        )
        .await?;
        let mut batch: Vec<u64> = rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
        let id = batch
            .pop()
            .ok_or_else(|| MetaError::Internal("nextval returned no rows".into()))?;
        crate::sync::lock(&self.reserved_ids).extend(batch);
        Ok(NodeId(id))
    }

    fn take_reserved_id(&self) -> Option<NodeId> {
        crate::sync::lock(&self.reserved_ids).pop().map(NodeId)
    }

    /// Transaction counters.
    pub fn stats(&self) -> &MetaStats {
        &self.stats
    }

    /// Checks that the database answers (for readiness probes).
    pub async fn ping(&self) -> Result<(), MetaError> {
        let client = self.client().await?;
        rows::timed(client.simple_query("SELECT 1")).await?;
        Ok(())
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, MetaError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => pg_error(e),
            other => MetaError::unavailable("no database connection", other),
        })
    }

    pub(crate) fn note_commit(&self) {
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_failure(&self) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Sleeps before retry `attempt` of a conflicted transaction (full jitter, capped).
    pub(crate) async fn backoff(&self, attempt: u32) {
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        let cap_ms = (1u64 << attempt.min(7)).min(100);
        let wait = rand::random_range(0..=cap_ms * 1000);
        tokio::time::sleep(Duration::from_micros(wait)).await;
    }
}

/// Runs `$body` inside one SERIALIZABLE transaction, with `$tx` bound to a reference to it,
/// committing on `Ok` and retrying the whole body on a serialization failure. `$body`
/// evaluates to `Result<T, MetaError>` and may use `?` and `.await`.
///
/// BEGIN is awaited on its own. Sending it pipelined ahead of the body's first statements
/// saves a round trip on paper but measured slower on the 2-vCPU test machine (small-file
/// creates 308-321/s against 387-388/s, A B A B), so it is not done.
macro_rules! in_txn {
    ($store:expr, |$tx:ident| $body:block) => {{
        let store: &$crate::meta::PgMetaStore = $store;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let result: Result<_, $crate::error::MetaError> = async {
                let mut client = store.client().await?;
                let transaction = $crate::meta::timed(
                    client
                        .build_transaction()
                        .isolation_level(tokio_postgres::IsolationLevel::Serializable)
                        .start(),
                )
                .await?;
                let $tx = &transaction;
                let body_result: Result<_, $crate::error::MetaError> = $body;
                let value = body_result?;
                $crate::meta::timed(transaction.commit()).await?;
                Ok(value)
            }
            .await;
            match result {
                Ok(value) => {
                    store.note_commit();
                    break Ok(value);
                }
                Err(e)
                    if $crate::meta::is_serialization_failure(&e) && attempt < $crate::meta::MAX_ATTEMPTS =>
                {
                    tracing::debug!(attempt, "serialization conflict; retrying transaction");
                    store.backoff(attempt).await;
                }
                Err(e) => {
                    store.note_failure();
                    break Err(e);
                }
            }
        }
    }};
}
pub(crate) use in_txn;

pub(crate) const MAX_ATTEMPTS: u32 = MAX_TXN_ATTEMPTS;

pub(crate) use rows::timed;

pub(crate) fn is_serialization_failure(e: &MetaError) -> bool {
    matches!(e, MetaError::SerializationFailure(_))
}

/// A statement refused because an earlier one in the transaction failed (pipelined
/// statements after a failure all end like this).
pub(crate) fn is_aborted_transaction(e: &MetaError) -> bool {
    e.sqlstate() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION)
}

/// Maps a PostgreSQL error to the store's error, in one place, by SQLSTATE class.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> MetaError {
    let Some(code) = e.code().cloned() else {
        // No SQLSTATE: the connection itself failed (closed, reset, TLS, I/O).
        return MetaError::unavailable("database unreachable", e);
    };
    if code == SqlState::T_R_SERIALIZATION_FAILURE || code == SqlState::T_R_DEADLOCK_DETECTED {
        return MetaError::SerializationFailure(e);
    }
    if code == SqlState::UNIQUE_VIOLATION {
        let what = e
            .as_db_error()
            .and_then(|d| d.constraint())
            .unwrap_or("unique key")
            .to_string();
        return MetaError::Exists(what);
    }
    match &code.code()[..2] {
        // 08 connection exception, 57 operator intervention (shutdown, cancel, the server's
        // statement_timeout), 53 insufficient resources (disk full, out of memory, too many
        // connections): the database cannot serve now; a later try may succeed.
        "08" | "57" | "53" => {
            MetaError::unavailable(format!("database unavailable (SQLSTATE {})", code.code()), e)
        }
        _ => {
            let message = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string());
            MetaError::Database {
                code,
                message,
                source: e,
            }
        }
    }
}

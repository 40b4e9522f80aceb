//! Event sinks in the metadata store: their specs, cursors, leases and delivery records.
//!
//! A sink's `position` is its cursor over its workspace's change feed: every event of the
//! workspace at or below it was delivered. Only the holder of a sink's live lease moves it
//! (one relay delivers a sink at a time), and retention never purges events above the lowest
//! position of any sink ([`PgMetaStore::purge_events`]): an event a sink has not acknowledged is
//! kept however long the sink stays down.

use std::time::{Duration, SystemTime};

use crate::error::MetaError;
use crate::meta::PgMetaStore;
use crate::meta::rows::{execute, from_system_time, query, query_opt};
use crate::model::{Name, NodeId, Timestamp, WorkspaceId};
use crate::relay::SinkSpec;

/// Where a new sink starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SinkStart {
    /// Events that commit from now on (and any still in flight).
    #[default]
    Now,
    /// The oldest event retention kept.
    Beginning,
}

/// A sink as the store records it.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkRecord {
    pub id: String,
    pub workspace: WorkspaceId,
    pub spec: SinkSpec,
    /// Every event of the workspace at or below this was delivered.
    pub position: i64,
    /// The relay delivering it, if its lease is live.
    pub holder: Option<String>,
    /// Events delivered since the sink was created.
    pub delivered: u64,
    /// Events the sink's filter left out.
    pub filtered: u64,
    /// Delivery attempts that failed since the last success.
    pub consecutive_failures: u64,
    /// When the current run of failures began.
    pub failing_since: Option<Timestamp>,
    pub last_error: String,
    pub last_delivered_at: Option<Timestamp>,
    /// When the newest event delivered was committed.
    pub last_event_at: Option<Timestamp>,
}

/// What one delivery moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    /// The sink's new position (it never moves back).
    pub position: i64,
    pub delivered: u64,
    pub filtered: u64,
    /// Commit time of the newest event delivered.
    pub last_event_at: Option<Timestamp>,
}

const SINK_COLUMNS: &str = "id, workspace_id, spec, position, holder, lease_until > now(), delivered, filtered, \
     consecutive_failures, failing_since, last_error, last_delivered_at, last_event_at";

fn sink_from_row(r: &tokio_postgres::Row) -> Result<SinkRecord, MetaError> {
    let id: String = r.get(0);
    let spec: serde_json::Value = r.get(2);
    let spec = serde_json::from_value(spec)
        .map_err(|e| MetaError::Internal(format!("event sink {id} has an unreadable spec: {e}")))?;
    let time = |i: usize| r.get::<_, Option<SystemTime>>(i).map(from_system_time);
    Ok(SinkRecord {
        workspace: WorkspaceId(r.get(1)),
        spec,
        position: r.get(3),
        holder: r.get::<_, bool>(5).then(|| r.get(4)),
        delivered: r.get::<_, i64>(6).max(0) as u64,
        filtered: r.get::<_, i64>(7).max(0) as u64,
        consecutive_failures: r.get::<_, i64>(8).max(0) as u64,
        failing_since: time(9),
        last_error: r.get(10),
        last_delivered_at: time(11),
        last_event_at: time(12),
        id,
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PgMetaStore {
    /// Creates the sink `id` of workspace `ws`, or replaces the spec of an existing one (its
    /// position is kept: changing a filter neither replays nor skips events). A sink cannot
    /// move to another workspace. The spec is validated first; bad input changes nothing.
    pub async fn put_event_sink(
        &self,
        id: &str,
        ws: WorkspaceId,
        spec: &SinkSpec,
        start: SinkStart,
    ) -> Result<SinkRecord, MetaError> {
        validate_sink_id(id)?;
        spec.validate()
            .map_err(|e| MetaError::InvalidArgument(e.to_string()))?;
        let json = serde_json::to_value(spec).map_err(|e| MetaError::Internal(e.to_string()))?;
        let client = self.client().await?;
        // A sink starting now starts at the horizon: events above it may still be in flight,
        // and one already visible there is delivered again at worst (at least once).
        let start_sql = match start {
            SinkStart::Now => "(SELECT horizon FROM feed_horizon WHERE id = 1)",
            SinkStart::Beginning => "(SELECT purged_through FROM feed_horizon WHERE id = 1)",
        };
        let row = query_opt(
            &client,
            &format!(
                "INSERT INTO event_sinks (id, workspace_id, spec, position) \
                 SELECT $1, w.id, $3, {start_sql} FROM workspaces w WHERE w.id = $2 AND w.deleted_at IS NULL \
                 ON CONFLICT (id) DO UPDATE SET spec = excluded.spec \
                     WHERE event_sinks.workspace_id = excluded.workspace_id \
                 RETURNING {SINK_COLUMNS}"
            ),
            &[&id, &ws.0, &json],
        )
        .await?;
        match row {
            Some(row) => sink_from_row(&row),
            None => match self.event_sink(id).await? {
                Some(existing) => Err(MetaError::Conflict(format!(
                    "event sink {id} belongs to workspace {}; a sink cannot change workspace",
                    existing.workspace.0
                ))),
                None => Err(MetaError::NotFound(format!("workspace {}", ws.0))),
            },
        }
    }

    /// Removes the sink; its position no longer holds retention back. False when there was none.
    pub async fn delete_event_sink(&self, id: &str) -> Result<bool, MetaError> {
        let client = self.client().await?;
        Ok(execute(&client, "DELETE FROM event_sinks WHERE id = $1", &[&id]).await? == 1)
    }

    pub async fn event_sink(&self, id: &str) -> Result<Option<SinkRecord>, MetaError> {
        let client = self.client().await?;
        query_opt(
            &client,
            &format!("SELECT {SINK_COLUMNS} FROM event_sinks WHERE id = $1"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(sink_from_row)
        .transpose()
    }

    /// Every sink, by id.
    pub async fn event_sinks(&self) -> Result<Vec<SinkRecord>, MetaError> {
        let client = self.client().await?;
        query(
            &client,
            &format!("SELECT {SINK_COLUMNS} FROM event_sinks ORDER BY id"),
            &[],
        )
        .await?
        .iter()
        .map(sink_from_row)
        .collect()
    }

    /// Takes (or renews) the lease of sink `id` for `holder` unless another holder's lease is
    /// live; the sink as taken, or `None`.
    pub async fn claim_event_sink(
        &self,
        id: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<Option<SinkRecord>, MetaError> {
        let client = self.client().await?;
        query_opt(
            &client,
            &format!(
                "UPDATE event_sinks SET holder = $2, lease_until = now() + $3::INT8 * INTERVAL '1 millisecond' \
                 WHERE id = $1 AND (holder = $2 OR lease_until <= now()) RETURNING {SINK_COLUMNS}"
            ),
            &[&id, &holder, &millis(lease)],
        )
        .await?
        .as_ref()
        .map(sink_from_row)
        .transpose()
    }

    /// Records a delivery by `holder` and renews its lease: the position moves up (never down),
    /// the counters add, and a run of failures ends. False when `holder` lost the lease (or
    /// the sink was deleted): it must stop delivering.
    pub async fn record_sink_delivery(
        &self,
        id: &str,
        holder: &str,
        delivery: &Delivery,
        lease: Duration,
    ) -> Result<bool, MetaError> {
        let client = self.client().await?;
        let last_event_at = delivery.last_event_at.map(crate::meta::rows::to_system_time);
        let changed = execute(
            &client,
            "UPDATE event_sinks SET position = GREATEST(position, $3), \
                 delivered = delivered + $4, filtered = filtered + $5, \
                 last_event_at = COALESCE($6, last_event_at), \
                 last_delivered_at = CASE WHEN $4 > 0 THEN now() ELSE last_delivered_at END, \
                 consecutive_failures = 0, failing_since = NULL, last_error = '', \
                 lease_until = now() + $7::INT8 * INTERVAL '1 millisecond' \
             WHERE id = $1 AND holder = $2",
            &[
                &id,
                &holder,
                &delivery.position,
                &(delivery.delivered as i64),
                &(delivery.filtered as i64),
                &last_event_at,
                &millis(lease),
            ],
        )
        .await?;
        Ok(changed == 1)
    }

    /// Records a failed delivery attempt by `holder` and renews its lease. False when
    /// `holder` lost the lease.
    pub async fn record_sink_failure(
        &self,
        id: &str,
        holder: &str,
        error: &str,
        lease: Duration,
    ) -> Result<bool, MetaError> {
        let client = self.client().await?;
        // Errors name endpoints and server answers, never credentials; bounded all the same.
        let error: String = error.chars().take(1024).collect();
        let changed = execute(
            &client,
            "UPDATE event_sinks SET consecutive_failures = consecutive_failures + 1, \
                 failing_since = COALESCE(failing_since, now()), last_error = $3, \
                 lease_until = now() + $4::INT8 * INTERVAL '1 millisecond' \
             WHERE id = $1 AND holder = $2",
            &[&id, &holder, &error, &millis(lease)],
        )
        .await?;
        Ok(changed == 1)
    }

    /// Gives up `holder`'s lease of sink `id`, so another relay takes it at once.
    pub async fn release_event_sink(&self, id: &str, holder: &str) -> Result<(), MetaError> {
        let client = self.client().await?;
        execute(
            &client,
            "UPDATE event_sinks SET lease_until = '1970-01-01 00:00:00+00' WHERE id = $1 AND holder = $2",
            &[&id, &holder],
        )
        .await?;
        Ok(())
    }

    /// The newest entry of each of `inos` (its live one, else the last one deleted): where a
    /// node is or was last, `(node, parent, name)`. Nodes purged since have none.
    pub async fn last_entries(&self, inos: &[NodeId]) -> Result<Vec<(NodeId, NodeId, Name)>, MetaError> {
        if inos.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let ids: Vec<i64> = inos.iter().map(|i| i.0 as i64).collect();
        let rows = query(
            &client,
            "SELECT DISTINCT ON (ino) ino, parent, name FROM entries WHERE ino = ANY($1) \
             ORDER BY ino, (valid_to IS NULL) DESC, id DESC",
            &[&ids],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    NodeId(r.get::<_, i64>(0) as u64),
                    NodeId(r.get::<_, i64>(1) as u64),
                    Name::from_stored(r.get::<_, Vec<u8>>(2)),
                )
            })
            .collect())
    }
}

/// Sink ids are names their owners chose (`namespace/name` for an EventSink resource).
fn validate_sink_id(id: &str) -> Result<(), MetaError> {
    let ok = !id.is_empty()
        && id.len() <= 253
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(MetaError::InvalidArgument(format!(
            "event sink id {id:?}: 1 to 253 characters of letters, digits, '-', '.', '_' and '/'"
        )))
    }
}

//! The change feed: event rows written by every mutation in its own transaction (outbox).
//!
//! Event ids come from a sequence, so a transaction that took id 10 can commit after one that
//! took id 11. Reading `id > cursor` alone would then skip 10 for good. [`EventFeed`] keeps the
//! ids it has not seen below its high-water mark as pending gaps and delivers them when they
//! become visible, until `gap_timeout` (longer than any transaction) says the gap is a rolled
//! back transaction. Events are delivered in the order they become visible, each once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use crate::error::MetaError;
use crate::meta::MetaStore;
use crate::meta::rows::{from_system_time, query};
use crate::model::{Event, Name, NodeId, WorkspaceId};

impl MetaStore {
    /// Up to `limit` events with id greater than `after`, in id order; `ws = None` reads all
    /// workspaces.
    pub async fn events_after(
        &self,
        ws: Option<WorkspaceId>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Event>, MetaError> {
        let client = self.client().await?;
        let limit = limit.min(10_000) as i64;
        let rows = match ws {
            Some(ws) => {
                query(
                    &client,
                    "SELECT id, workspace_id, at, actor, op, ino, parent, name, from_parent, from_name FROM events \
                     WHERE workspace_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                    &[&ws.0, &after, &limit],
                )
                .await?
            }
            None => {
                query(
                    &client,
                    "SELECT id, workspace_id, at, actor, op, ino, parent, name, from_parent, from_name FROM events \
                     WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&after, &limit],
                )
                .await?
            }
        };
        Ok(events_from_rows(&rows))
    }

    /// Events with the given ids that are visible now, in id order. By id, not by range: a
    /// range from the lowest id with a row limit would never reach ids far above it.
    async fn events_with_ids(&self, ids: &[i64]) -> Result<Vec<Event>, MetaError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT id, workspace_id, at, actor, op, ino, parent, name, from_parent, from_name FROM events \
             WHERE id = ANY($1) ORDER BY id",
            &[&ids],
        )
        .await?;
        Ok(events_from_rows(&rows))
    }
}

fn events_from_rows(rows: &[tokio_postgres::Row]) -> Vec<Event> {
    rows.iter()
        .map(|r| Event {
            id: r.get(0),
            workspace: WorkspaceId(r.get(1)),
            at: from_system_time(r.get::<_, SystemTime>(2)),
            actor: r.get(3),
            op: r.get(4),
            ino: r.get::<_, Option<i64>>(5).map(|i| NodeId(i as u64)),
            parent: r.get::<_, Option<i64>>(6).map(|i| NodeId(i as u64)),
            name: r.get::<_, Option<Vec<u8>>>(7).map(Name::from_stored),
            from: match (r.get::<_, Option<i64>>(8), r.get::<_, Option<Vec<u8>>>(9)) {
                (Some(parent), Some(name)) => Some((NodeId(parent as u64), Name::from_stored(name))),
                _ => None,
            },
        })
        .collect()
}

/// How far below the end of the log [`EventFeed::from_now`] looks for ids still in flight
/// (more than the transactions open at once on any database this serves).
const FROM_NOW_WINDOW: i64 = 1_000;

/// Most missing ids tracked at once; beyond this a burst of rollbacks is not worth tracking.
const MAX_PENDING: usize = 100_000;

/// A cursor over the change feed that does not lose late-committing events.
#[derive(Debug)]
pub struct EventFeed {
    ws: Option<WorkspaceId>,
    high_water: i64,
    pending: BTreeMap<i64, Instant>,
    gap_timeout: Duration,
}

impl EventFeed {
    /// A feed that starts after event `cursor` (0 for the beginning).
    pub fn new(ws: Option<WorkspaceId>, cursor: i64) -> EventFeed {
        EventFeed {
            ws,
            high_water: cursor,
            pending: BTreeMap::new(),
            gap_timeout: Duration::from_secs(60),
        }
    }

    /// A feed that starts at the current end of the log (only new events). Ids missing in
    /// the last [`FROM_NOW_WINDOW`] below the end may belong to transactions still in flight:
    /// they are tracked as gaps like any other, so those events are delivered when they commit.
    pub async fn from_now(store: &MetaStore, ws: Option<WorkspaceId>) -> Result<EventFeed, MetaError> {
        let client = store.client().await?;
        let row = query(&client, "SELECT COALESCE(max(id), 0) FROM events", &[]).await?;
        let end: i64 = row.first().map_or(0, |r| r.get(0));
        let low = (end - FROM_NOW_WINDOW).max(0);
        let present = query(
            &client,
            "SELECT id FROM events WHERE id > $1 AND id <= $2",
            &[&low, &end],
        )
        .await?;
        let present: std::collections::HashSet<i64> = present.iter().map(|r| r.get(0)).collect();
        let mut feed = EventFeed::new(ws, end);
        let now = Instant::now();
        feed.pending = (low + 1..end)
            .filter(|id| !present.contains(id))
            .map(|id| (id, now))
            .collect();
        Ok(feed)
    }

    /// How long a missing id is waited for before it is taken to be a rolled-back transaction.
    pub fn with_gap_timeout(mut self, timeout: Duration) -> EventFeed {
        self.gap_timeout = timeout;
        self
    }

    /// The position to resume from after a restart: nothing at or below it is pending.
    pub fn resume_cursor(&self) -> i64 {
        self.pending
            .keys()
            .next()
            .map_or(self.high_water, |first| first - 1)
    }

    /// Events that became visible since the last poll.
    pub async fn poll(&mut self, store: &MetaStore) -> Result<Vec<Event>, MetaError> {
        let now = Instant::now();
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            let ids: Vec<i64> = self.pending.keys().copied().collect();
            for event in store.events_with_ids(&ids).await? {
                self.pending.remove(&event.id);
                out.push(event);
            }
            let timeout = self.gap_timeout;
            self.pending
                .retain(|_, since| now.duration_since(*since) < timeout);
        }
        loop {
            // Read the global log: ids are global, so gaps can only be told apart from other
            // workspaces' events there.
            let batch = store.events_after(None, self.high_water, 1000).await?;
            let full = batch.len() == 1000;
            for event in batch {
                if self.pending.len() < MAX_PENDING {
                    for missing in self.high_water + 1..event.id {
                        self.pending.insert(missing, now);
                    }
                }
                self.high_water = event.id;
                out.push(event);
            }
            if !full {
                break;
            }
        }
        if let Some(ws) = self.ws {
            out.retain(|e| e.workspace == ws);
        }
        Ok(out)
    }
}

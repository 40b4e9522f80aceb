//! The change feed: event rows written by every mutation in its own transaction (outbox).
//!
//! Event ids come from a sequence, so a transaction that took id 10 can commit after one that
//! took id 11. Reading `id > cursor` alone would then skip 10 for good. [`EventFeed`] keeps the
//! ids it has not seen below its high-water mark as pending gaps and delivers them when they
//! become visible, until `gap_timeout` (longer than any transaction) says the gap is a rolled
//! back transaction. Events are delivered in the order they become visible, each once.
//!
//! Following the whole log costs every reader all workspaces' traffic. A mount needs one
//! workspace, so it follows a [`WorkspaceFeed`]: the horizon (`feed_horizon`) names the id at
//! or below which no transaction is still in flight, and a workspace reader re-reads only its
//! own workspace's events above the horizon it last saw (an indexed range, a poll interval or
//! two of that workspace's traffic). One reader at a time holds the horizon's lease and
//! advances it with an [`EventFeed`] over the whole log; every workspace reader is a candidate,
//! so the horizon keeps moving while any reader runs, and a reader stays correct (only its
//! re-read window grows) while it does not.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use crate::error::MetaError;
use crate::meta::rows::{execute, from_system_time, query, query_opt};
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{Epoch, Event, Name, NodeId, WorkspaceId};

impl PgMetaStore {
    /// Up to `limit` events with id greater than `after`, in id order; `ws = None` reads all
    /// workspaces. Fails with [`MetaError::FeedPurged`] when retention may have purged
    /// events above `after`.
    pub async fn events_after(
        &self,
        ws: Option<WorkspaceId>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Event>, MetaError> {
        let (purged_through, events) = self.events_page(ws, after, limit).await?;
        check_not_purged(after, purged_through)?;
        Ok(events)
    }

    /// How far retention purged the log, and in the same snapshot up to `limit` events with
    /// id greater than `after`, in id order.
    async fn events_page(
        &self,
        ws: Option<WorkspaceId>,
        after: i64,
        limit: usize,
    ) -> Result<(i64, Vec<Event>), MetaError> {
        let client = self.client().await?;
        let limit = limit.min(10_000) as i64;
        let page = |filter: &str| {
            format!(
                "SELECT h.purged_through, \
                        e.id, e.workspace_id, e.at, e.actor, e.op, e.ino, e.parent, e.name, e.from_parent, e.from_name, e.snapshot, e.epoch \
                 FROM feed_horizon h LEFT JOIN LATERAL ( \
                     SELECT id, workspace_id, at, actor, op, ino, parent, name, from_parent, from_name, snapshot, epoch FROM events \
                     WHERE {filter} id > $1 ORDER BY id LIMIT $2 \
                 ) e ON true \
                 WHERE h.id = 1 ORDER BY e.id"
            )
        };
        let rows = match ws {
            Some(ws) => query(&client, &page("workspace_id = $3 AND"), &[&after, &limit, &ws.0]).await?,
            None => query(&client, &page(""), &[&after, &limit]).await?,
        };
        let purged_through = rows.first().ok_or_else(unmigrated)?.get(0);
        let events = rows
            .iter()
            .filter(|r| r.get::<_, Option<i64>>(1).is_some())
            .map(|r| event_from_row(r, 1))
            .collect();
        Ok((purged_through, events))
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
            "SELECT id, workspace_id, at, actor, op, ino, parent, name, from_parent, from_name, snapshot, epoch FROM events \
             WHERE id = ANY($1) ORDER BY id",
            &[&ids],
        )
        .await?;
        Ok(events_from_rows(&rows))
    }
}

/// Refuses a read after `cursor` when events above it may have been purged.
fn check_not_purged(cursor: i64, purged_through: i64) -> Result<(), MetaError> {
    if cursor < purged_through {
        return Err(MetaError::FeedPurged {
            cursor,
            purged_through,
        });
    }
    Ok(())
}

fn events_from_rows(rows: &[tokio_postgres::Row]) -> Vec<Event> {
    rows.iter().map(|r| event_from_row(r, 0)).collect()
}

/// The event in columns `at..at + 12` of `row` (the column order of the queries above).
fn event_from_row(r: &tokio_postgres::Row, at: usize) -> Event {
    Event {
        id: r.get(at),
        workspace: WorkspaceId(r.get(at + 1)),
        at: from_system_time(r.get::<_, SystemTime>(at + 2)),
        actor: r.get(at + 3),
        op: r.get(at + 4),
        ino: r.get::<_, Option<i64>>(at + 5).map(|i| NodeId(i as u64)),
        parent: r.get::<_, Option<i64>>(at + 6).map(|i| NodeId(i as u64)),
        name: r.get::<_, Option<Vec<u8>>>(at + 7).map(Name::from_stored),
        from: match (
            r.get::<_, Option<i64>>(at + 8),
            r.get::<_, Option<Vec<u8>>>(at + 9),
        ) {
            (Some(parent), Some(name)) => Some((NodeId(parent as u64), Name::from_stored(name))),
            _ => None,
        },
        snapshot: r.get(at + 10),
        epoch: r.get::<_, Option<i64>>(at + 11).map(Epoch),
    }
}

/// The feed horizon as one reader saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedHorizon {
    /// No transaction holding an event id at or below this is still in flight.
    pub horizon: i64,
    /// Who advances it (empty before anyone has).
    pub holder: String,
    /// Whether the holder's lease is live.
    pub live: bool,
}

/// Events read per statement by a [`WorkspaceFeed`].
const WINDOW_BATCH: i64 = 1_000;

impl PgMetaStore {
    /// The feed horizon now.
    pub async fn feed_horizon(&self) -> Result<FeedHorizon, MetaError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT horizon, holder, lease_until > now() FROM feed_horizon WHERE id = 1",
            &[],
        )
        .await?
        .ok_or_else(unmigrated)?;
        Ok(FeedHorizon {
            horizon: row.get(0),
            holder: row.get(1),
            live: row.get(2),
        })
    }

    /// The horizon and, in the same snapshot, up to [`WINDOW_BATCH`] events of `ws` above
    /// `after`, in id order. One statement: every event at or below the horizon it returns is
    /// visible to it. Fails with [`MetaError::FeedPurged`] when retention may have purged
    /// events above `after`.
    async fn horizon_and_window(
        &self,
        ws: WorkspaceId,
        after: i64,
    ) -> Result<(FeedHorizon, Vec<Event>), MetaError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT h.horizon, h.holder, h.lease_until > now(), h.purged_through, \
                    e.id, e.workspace_id, e.at, e.actor, e.op, e.ino, e.parent, e.name, e.from_parent, e.from_name, e.snapshot, e.epoch \
             FROM feed_horizon h LEFT JOIN LATERAL ( \
                 SELECT id, workspace_id, at, actor, op, ino, parent, name, from_parent, from_name, snapshot, epoch FROM events \
                 WHERE workspace_id = $1 AND id > $2 ORDER BY id LIMIT $3 \
             ) e ON true \
             WHERE h.id = 1 ORDER BY e.id",
            &[&ws.0, &after, &WINDOW_BATCH],
        )
        .await?;
        let first = rows.first().ok_or_else(unmigrated)?;
        check_not_purged(after, first.get(3))?;
        let horizon = FeedHorizon {
            horizon: first.get(0),
            holder: first.get(1),
            live: first.get(2),
        };
        let events = rows
            .iter()
            .filter(|r| r.get::<_, Option<i64>>(4).is_some())
            .map(|r| event_from_row(r, 4))
            .collect();
        Ok((horizon, events))
    }

    /// Takes the horizon's lease for `holder` if nobody else holds a live one; the horizon
    /// when taken.
    async fn claim_feed_horizon(&self, holder: &str, lease: Duration) -> Result<Option<i64>, MetaError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "UPDATE feed_horizon SET holder = $1, lease_until = now() + $2::INT8 * INTERVAL '1 millisecond' \
             WHERE id = 1 AND (holder = $1 OR lease_until <= now()) RETURNING horizon",
            &[&holder, &millis(lease)],
        )
        .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Moves the horizon up to `horizon` (never down) and renews `holder`'s lease; false when
    /// `holder` no longer holds it.
    async fn advance_feed_horizon(
        &self,
        holder: &str,
        horizon: i64,
        lease: Duration,
    ) -> Result<bool, MetaError> {
        let client = self.client().await?;
        let changed = execute(
            &client,
            "UPDATE feed_horizon SET horizon = GREATEST(horizon, $2), \
                 lease_until = now() + $3::INT8 * INTERVAL '1 millisecond' \
             WHERE id = 1 AND holder = $1",
            &[&holder, &horizon, &millis(lease)],
        )
        .await?;
        Ok(changed == 1)
    }
}

/// Events deleted per retention transaction.
const PURGE_BATCH: i64 = 5_000;

impl PgMetaStore {
    /// Event retention: deletes the oldest events, in id order, up to the first one at or
    /// after `older_than`, and never above the horizon (ids there may belong to transactions
    /// still in flight) or above the position of a live cursor ([`PgMetaStore::hold_feed_cursor`])
    /// or of any event sink (live or not: a sink's undelivered events wait for it).
    /// Records how far it purged in the same transaction, so a reader below that gets
    /// [`MetaError::FeedPurged`] instead of missing events. Bounded transactions of
    /// [`PURGE_BATCH`] events; returns how many were deleted.
    pub async fn purge_events(&self, older_than: SystemTime) -> Result<u64, MetaError> {
        let mut purged = 0;
        loop {
            let (deleted, done) = in_txn!(self, |tx| {
                async {
                    let row = query_opt(
                        tx,
                        "SELECT h.purged_through, LEAST(h.horizon, \
                             COALESCE((SELECT min(position) FROM feed_cursors WHERE lease_until > now()), h.horizon), \
                             COALESCE((SELECT min(position) FROM event_sinks), h.horizon)) \
                         FROM feed_horizon h WHERE h.id = 1",
                        &[],
                    )
                    .await?
                    .ok_or_else(unmigrated)?;
                    let (from, bound): (i64, i64) = (row.get(0), row.get(1));
                    let rows = query(
                        tx,
                        "SELECT id, at < $2 FROM events WHERE id > $1 AND id <= $3 ORDER BY id LIMIT $4",
                        &[&from, &older_than, &bound, &PURGE_BATCH],
                    )
                    .await?;
                    let old = rows.iter().take_while(|r| r.get::<_, bool>(1)).count();
                    let done = old < rows.len() || (rows.len() as i64) < PURGE_BATCH;
                    let Some(last) = rows[..old].last().map(|r| r.get::<_, i64>(0)) else {
                        return Ok((0, true));
                    };
                    let deleted = execute(
                        tx,
                        "DELETE FROM events WHERE id > $1 AND id <= $2",
                        &[&from, &last],
                    )
                    .await?;
                    execute(
                        tx,
                        "UPDATE feed_horizon SET purged_through = $1 WHERE id = 1",
                        &[&last],
                    )
                    .await?;
                    Ok((deleted, done))
                }
                .await
            })?;
            purged += deleted;
            if done {
                return Ok(purged);
            }
        }
    }

    /// Keeps the events above `position` from retention while `consumer`'s lease lasts
    /// (renew it by calling again; a consumer's position only moves where it says). Fails
    /// with [`MetaError::FeedPurged`] when events above `position` may be purged already.
    pub async fn hold_feed_cursor(
        &self,
        consumer: &str,
        position: i64,
        lease: Duration,
    ) -> Result<(), MetaError> {
        in_txn!(self, |tx| {
            async {
                let row = query_opt(tx, "SELECT purged_through FROM feed_horizon WHERE id = 1", &[])
                    .await?
                    .ok_or_else(unmigrated)?;
                check_not_purged(position, row.get(0))?;
                execute(
                    tx,
                    "INSERT INTO feed_cursors (consumer, position, lease_until) \
                     VALUES ($1, $2, now() + $3::INT8 * INTERVAL '1 millisecond') \
                     ON CONFLICT (consumer) DO UPDATE SET position = excluded.position, \
                         lease_until = excluded.lease_until",
                    &[&consumer, &position, &millis(lease)],
                )
                .await?;
                Ok(())
            }
            .await
        })
    }

    /// Lets retention purge past `consumer`'s position again.
    pub async fn release_feed_cursor(&self, consumer: &str) -> Result<(), MetaError> {
        let client = self.client().await?;
        execute(
            &client,
            "DELETE FROM feed_cursors WHERE consumer = $1",
            &[&consumer],
        )
        .await?;
        Ok(())
    }

    /// How far retention has purged the log: events at or below it may be gone.
    pub async fn feed_purged_through(&self) -> Result<i64, MetaError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT purged_through FROM feed_horizon WHERE id = 1",
            &[],
        )
        .await?
        .ok_or_else(unmigrated)?;
        Ok(row.get(0))
    }
}

fn unmigrated() -> MetaError {
    MetaError::Internal("feed_horizon has no row: the schema is not migrated".into())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
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
    pub async fn from_now(store: &PgMetaStore, ws: Option<WorkspaceId>) -> Result<EventFeed, MetaError> {
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
    pub async fn poll(&mut self, store: &PgMetaStore) -> Result<Vec<Event>, MetaError> {
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
            let (purged_through, batch) = store.events_page(None, self.high_water, 1000).await?;
            // Pending ids below the purged range may have been purged unseen.
            check_not_purged(self.resume_cursor(), purged_through)?;
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

/// How long the horizon's holder keeps it without renewing (it renews on every poll).
const KEEPER_LEASE: Duration = Duration::from_secs(5);

/// A cursor over one workspace's change feed that reads only that workspace's events.
///
/// Invariant: every event of the workspace with id at or below `floor` has been delivered (or
/// came before the feed started), and `delivered` holds the ids above `floor` that have. A
/// poll reads the workspace's events above `floor` with the horizon in one snapshot, delivers
/// the ones not yet delivered, and raises `floor` to that horizon: below it nothing was in
/// flight, so nothing can appear there later. Events are delivered in the order they become
/// visible, each once, and an event above a pending gap is not held back by it.
#[derive(Debug)]
pub struct WorkspaceFeed {
    ws: WorkspaceId,
    floor: i64,
    delivered: BTreeSet<i64>,
    keeper: HorizonKeeper,
}

/// A candidate for advancing the horizon: follows the whole log while it holds the lease.
#[derive(Debug)]
struct HorizonKeeper {
    me: String,
    lease: Duration,
    gap_timeout: Duration,
    log: Option<EventFeed>,
}

impl WorkspaceFeed {
    /// A feed of `ws` that starts after event `cursor` (0 for the beginning).
    pub fn new(ws: WorkspaceId, cursor: i64) -> WorkspaceFeed {
        WorkspaceFeed {
            ws,
            floor: cursor,
            delivered: BTreeSet::new(),
            keeper: HorizonKeeper {
                me: format!("feed:{}", uuid::Uuid::new_v4()),
                lease: KEEPER_LEASE,
                gap_timeout: Duration::from_secs(60),
                log: None,
            },
        }
    }

    /// A feed of `ws` that delivers only events that become visible after it starts.
    pub async fn from_now(store: &PgMetaStore, ws: WorkspaceId) -> Result<WorkspaceFeed, MetaError> {
        let mut feed = WorkspaceFeed::new(ws, 0);
        let start = store.feed_horizon().await?.horizon;
        let (horizon, mut window) = store.horizon_and_window(ws, start).await?;
        feed.floor = horizon.horizon;
        loop {
            let full = window.len() as i64 == WINDOW_BATCH;
            let last = window.last().map(|e| e.id);
            feed.delivered
                .extend(window.iter().map(|e| e.id).filter(|id| *id > feed.floor));
            match last {
                Some(last) if full => {
                    window = store.events_after(Some(ws), last, WINDOW_BATCH as usize).await?
                }
                _ => break,
            }
        }
        Ok(feed)
    }

    /// How long the holder of the horizon waits for a missing id before taking it to be a
    /// rolled-back transaction (applies when this feed becomes the holder).
    pub fn with_gap_timeout(mut self, timeout: Duration) -> WorkspaceFeed {
        self.keeper.gap_timeout = timeout;
        self
    }

    /// How long this feed's claim on the horizon lasts without a poll.
    pub fn with_keeper_lease(mut self, lease: Duration) -> WorkspaceFeed {
        self.keeper.lease = lease;
        self
    }

    /// The position to resume from after a restart: every event at or below it was delivered.
    pub fn resume_cursor(&self) -> i64 {
        self.floor
    }

    /// Whether this feed advanced the horizon at its last poll.
    pub fn keeps_horizon(&self) -> bool {
        self.keeper.log.is_some()
    }

    /// Events of the workspace that became visible since the last poll.
    pub async fn poll(&mut self, store: &PgMetaStore) -> Result<Vec<Event>, MetaError> {
        self.poll_at_most(store, usize::MAX).await
    }

    /// [`WorkspaceFeed::poll`], returning at most `max` events (at least one): a consumer
    /// resuming far behind (a sink started from the beginning of a long log) reads its
    /// backlog page by page instead of all of it at once. The rest follows at the next polls.
    pub async fn poll_at_most(&mut self, store: &PgMetaStore, max: usize) -> Result<Vec<Event>, MetaError> {
        let max = max.max(1);
        let (horizon, mut window) = store.horizon_and_window(self.ws, self.floor).await?;
        let mut out = Vec::new();
        // The id of the last event taken when the window was cut short.
        let mut cut = None;
        'pages: loop {
            let full = window.len() as i64 == WINDOW_BATCH;
            let last = window.last().map(|e| e.id);
            for event in window {
                if out.len() == max {
                    cut = out.last().map(|e: &Event| e.id);
                    break 'pages;
                }
                if self.delivered.insert(event.id) {
                    out.push(event);
                }
            }
            match last {
                Some(last) if full => {
                    window = store
                        .events_after(Some(self.ws), last, WINDOW_BATCH as usize)
                        .await?;
                }
                _ => break,
            }
        }
        // The window holds every visible event above the floor in id order, and none at or
        // below the horizon can still appear: so when it was cut at event L, everything at or
        // below min(horizon, L) was handed out, and the floor may rise that far.
        let settled = cut.map_or(horizon.horizon, |l| horizon.horizon.min(l));
        if settled > self.floor {
            self.floor = settled;
            self.delivered = self.delivered.split_off(&(self.floor + 1));
        }
        // The events are taken: a failure to advance the horizon must not lose them.
        if let Err(e) = self.keeper.step(store, &horizon).await {
            tracing::warn!(error = %e, "could not advance the change feed's horizon");
            self.keeper.log = None;
        }
        Ok(out)
    }
}

impl HorizonKeeper {
    /// Advances the horizon when this keeper holds it, or takes it over when its holder's
    /// lease lapsed. A new holder starts its log at the horizon it took over: everything
    /// below is resolved, and every missing id above is tracked as a gap.
    async fn step(&mut self, store: &PgMetaStore, seen: &FeedHorizon) -> Result<(), MetaError> {
        if seen.live && seen.holder != self.me {
            self.log = None;
            return Ok(());
        }
        match self.log.as_mut() {
            Some(log) if seen.holder == self.me => {
                log.poll(store).await?;
                if !store
                    .advance_feed_horizon(&self.me, log.resume_cursor(), self.lease)
                    .await?
                {
                    self.log = None;
                }
            }
            _ => {
                self.log = store
                    .claim_feed_horizon(&self.me, self.lease)
                    .await?
                    .map(|horizon| EventFeed::new(None, horizon).with_gap_timeout(self.gap_timeout));
            }
        }
        Ok(())
    }
}

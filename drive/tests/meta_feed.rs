//! The change feed against real PostgreSQL, with commits deliberately out of id order: the
//! whole-log feed (`EventFeed`) and the per-workspace feed below the horizon
//! (`WorkspaceFeed`) pass the same scenarios, and the horizon's own rules are tested after.
//!
//! Event ids come from a sequence, so a transaction that took id N can commit after one that
//! took N+1. The tests hold such a transaction open on a raw connection to the store's
//! database: it inserts an event row with the store's own statement (its id from the same
//! `event_ids` sequence) and commits or rolls back only after the feed has polled past it.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{actor, name, raw_client, store_and_url, workspace};
use drive::PgMetaStore;
use drive::meta::{EventFeed, WorkspaceFeed};
use drive::model::*;

/// What the scenarios need of a feed of one workspace.
#[allow(async_fn_in_trait)]
trait Feed: Sized {
    async fn from_now(store: &PgMetaStore, ws: WorkspaceId) -> Self;
    fn resumed(ws: WorkspaceId, cursor: i64) -> Self;
    fn with_gap_timeout(self, timeout: Duration) -> Self;
    async fn poll(&mut self, store: &PgMetaStore) -> Vec<Event>;
    fn resume_cursor(&self) -> i64;
}

impl Feed for EventFeed {
    async fn from_now(store: &PgMetaStore, ws: WorkspaceId) -> Self {
        EventFeed::from_now(store, Some(ws)).await.unwrap()
    }
    fn resumed(ws: WorkspaceId, cursor: i64) -> Self {
        EventFeed::new(Some(ws), cursor)
    }
    fn with_gap_timeout(self, timeout: Duration) -> Self {
        EventFeed::with_gap_timeout(self, timeout)
    }
    async fn poll(&mut self, store: &PgMetaStore) -> Vec<Event> {
        EventFeed::poll(self, store).await.unwrap()
    }
    fn resume_cursor(&self) -> i64 {
        EventFeed::resume_cursor(self)
    }
}

impl Feed for WorkspaceFeed {
    async fn from_now(store: &PgMetaStore, ws: WorkspaceId) -> Self {
        WorkspaceFeed::from_now(store, ws)
            .await
            .unwrap()
            .with_keeper_lease(TEST_KEEPER_LEASE)
    }
    fn resumed(ws: WorkspaceId, cursor: i64) -> Self {
        WorkspaceFeed::new(ws, cursor).with_keeper_lease(TEST_KEEPER_LEASE)
    }
    fn with_gap_timeout(self, timeout: Duration) -> Self {
        WorkspaceFeed::with_gap_timeout(self, timeout)
    }
    async fn poll(&mut self, store: &PgMetaStore) -> Vec<Event> {
        WorkspaceFeed::poll(self, store).await.unwrap()
    }
    fn resume_cursor(&self) -> i64 {
        WorkspaceFeed::resume_cursor(self)
    }
}

/// Runs each scenario against both feeds.
macro_rules! both_feeds {
    ($scenario:ident, $whole_log:ident, $per_workspace:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $whole_log() {
            $scenario::<EventFeed>().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $per_workspace() {
            $scenario::<WorkspaceFeed>().await;
        }
    };
}

/// The lease of a per-workspace feed's claim on the horizon in these tests: short, so that a
/// feed dropped by a test (a restarted follower) hands over quickly.
const TEST_KEEPER_LEASE: Duration = Duration::from_millis(300);

/// Polls until the feed's resume cursor is `cursor`, asserting that nothing is delivered on
/// the way. A per-workspace feed's cursor follows the horizon, which its own polls advance
/// once it holds the horizon's lease (after a dropped holder's lease lapses).
async fn settle_at<F: Feed>(feed: &mut F, store: &PgMetaStore, cursor: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while feed.resume_cursor() != cursor {
        assert!(
            Instant::now() < deadline,
            "the resume cursor stays at {} instead of {cursor}",
            feed.resume_cursor()
        );
        assert_eq!(
            described(&feed.poll(store).await),
            vec![],
            "nothing new while settling"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The id of the newest event of `ws`.
async fn last_event(store: &PgMetaStore, ws: &Workspace) -> i64 {
    let events = store.events_after(Some(ws.id), 0, 10_000).await.unwrap();
    events.last().map_or(0, |e| e.id)
}

/// A transaction that took an event id and has not committed yet.
struct Late {
    client: tokio_postgres::Client,
    id: i64,
    name: String,
}

impl Late {
    /// Opens a transaction that inserts a `create` event for `name` in `ws` the way the store
    /// does (id from `event_ids`), and leaves it open.
    async fn begin(url: &str, ws: &Workspace, name: &str) -> Late {
        let client = raw_client(url).await;
        client
            .batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
            .await
            .unwrap();
        let row = client
            .query_one(
                "INSERT INTO events (workspace_id, actor, op, ino, parent, name, from_parent, from_name) \
                 VALUES ($1, $2, 'create', NULL, $3, $4, NULL, NULL) RETURNING id",
                &[&ws.id.0, &"test:late", &(ws.root.0 as i64), &name.as_bytes()],
            )
            .await
            .unwrap();
        Late {
            client,
            id: row.get(0),
            name: name.to_string(),
        }
    }

    async fn commit(self) -> (i64, String) {
        self.client.batch_execute("COMMIT").await.unwrap();
        (self.id, self.name)
    }

    async fn rollback(self) -> i64 {
        self.client.batch_execute("ROLLBACK").await.unwrap();
        self.id
    }
}

/// Creates file `n` in the workspace root and returns the id of its `create` event.
async fn create(store: &PgMetaStore, ws: &Workspace, n: &str) -> i64 {
    let before = EventFeed::from_now(store, None).await.unwrap().resume_cursor();
    let attr = store
        .create(
            &actor(),
            ws.id,
            ws.root,
            &name(n),
            &NewNode::new(NodeKind::File, 0o644),
        )
        .await
        .unwrap();
    let events = store.events_after(Some(ws.id), before, 10_000).await.unwrap();
    events
        .iter()
        .find(|e| e.op == "create" && e.ino == Some(attr.ino))
        .map(|e| e.id)
        .expect("the create wrote an event")
}

fn event_name(e: &Event) -> String {
    e.name.as_ref().map(Name::to_string_lossy).unwrap_or_default()
}

/// (id, name) of each event, in delivery order.
fn described(events: &[Event]) -> Vec<(i64, String)> {
    events.iter().map(|e| (e.id, event_name(e))).collect()
}

fn pair(id: i64, n: &str) -> (i64, String) {
    (id, n.to_string())
}

// Catches a feed that reads only `id > cursor` (the late event below the cursor is lost) and
// one that delivers a pending event twice (once found, it must leave the pending set).
both_feeds!(
    late_commit_is_delivered_once_after_it_commits,
    whole_log_late_commit_is_delivered_once_after_it_commits,
    workspace_late_commit_is_delivered_once_after_it_commits
);
async fn late_commit_is_delivered_once_after_it_commits<F: Feed>() {
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, "feed-late", WorkspaceKind::User).await;
    let mut feed = F::from_now(&store, ws.id).await;
    let late = Late::begin(&url, &ws, "late").await;
    let a = create(&store, &ws, "a").await;
    let b = create(&store, &ws, "b").await;
    assert!(late.id < a, "the late transaction took the lower id");
    assert_eq!(
        described(&feed.poll(&store).await),
        vec![pair(a, "a"), pair(b, "b")],
        "committed events are delivered; the open one is not"
    );
    assert_eq!(
        described(&feed.poll(&store).await),
        vec![],
        "nothing new while the late transaction is open"
    );
    let (late_id, late_name) = late.commit().await;
    assert_eq!(
        described(&feed.poll(&store).await),
        vec![(late_id, late_name)],
        "the late event is delivered by the first poll after its commit"
    );
    let c = create(&store, &ws, "c").await;
    assert_eq!(
        described(&feed.poll(&store).await),
        vec![pair(c, "c")],
        "the late event is not delivered a second time"
    );
    settle_at(&mut feed, &store, c).await; // no gap left behind
}

// Catches a feed that tracks only one gap (the newest or the oldest) or that loses a gap when
// another one fills, and any duplicate delivery under real concurrent writers.
both_feeds!(
    out_of_order_commits_are_all_delivered_exactly_once,
    whole_log_out_of_order_commits_from_concurrent_writers_are_all_delivered_exactly_once,
    workspace_out_of_order_commits_from_concurrent_writers_are_all_delivered_exactly_once
);
async fn out_of_order_commits_are_all_delivered_exactly_once<F: Feed>() {
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, "feed-many", WorkspaceKind::User).await;
    let mut dirs = Vec::new();
    for w in 0..4 {
        let d = store
            .create(
                &actor(),
                ws.id,
                ws.root,
                &name(&format!("w{w}")),
                &NewNode::new(NodeKind::Directory, 0o755),
            )
            .await
            .unwrap();
        dirs.push(d.ino);
    }
    let start = last_event(&store, &ws).await;
    let mut feed = F::from_now(&store, ws.id).await;
    // Three open transactions with ids interleaved between committed events.
    let late0 = Late::begin(&url, &ws, "late-0").await;
    create(&store, &ws, "between-0").await;
    let late1 = Late::begin(&url, &ws, "late-1").await;
    create(&store, &ws, "between-1").await;
    let late2 = Late::begin(&url, &ws, "late-2").await;
    assert!(late0.id < late1.id && late1.id < late2.id);
    let writers: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(w, dir)| {
            let store = store.clone();
            let dir = *dir;
            tokio::spawn(async move {
                for i in 0..15 {
                    store
                        .create(
                            &actor(),
                            ws.id,
                            dir,
                            &name(&format!("w{w}-f{i:02}")),
                            &NewNode::new(NodeKind::File, 0o644),
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut delivered: Vec<Event> = Vec::new();
    while !writers.iter().all(tokio::task::JoinHandle::is_finished) {
        delivered.extend(feed.poll(&store).await);
    }
    for w in writers {
        w.await.unwrap();
    }
    delivered.extend(feed.poll(&store).await);
    let late_ids = [late0.id, late1.id, late2.id];
    assert!(
        delivered.iter().all(|e| !late_ids.contains(&e.id)),
        "no open transaction's event is delivered before it commits"
    );
    // Commit in an order unrelated to the ids: newest, oldest, middle.
    for late in [late2, late0, late1] {
        let (id, n) = late.commit().await;
        let got = feed.poll(&store).await;
        assert_eq!(
            described(&got),
            vec![(id, n.clone())],
            "the first poll after {n} commits delivers exactly it"
        );
        delivered.extend(got);
    }
    delivered.extend(feed.poll(&store).await);
    let ids: Vec<i64> = delivered.iter().map(|e| e.id).collect();
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "an event was delivered twice: {ids:?}");
    let committed: BTreeSet<i64> = store
        .events_after(Some(ws.id), start, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(unique, committed, "delivered ids equal the committed ones");
    let names: BTreeSet<String> = delivered.iter().map(event_name).collect();
    let mut expected: BTreeSet<String> = (0..4)
        .flat_map(|w| (0..15).map(move |i| format!("w{w}-f{i:02}")))
        .collect();
    expected.extend(["between-0", "between-1", "late-0", "late-1", "late-2"].map(String::from));
    assert_eq!(names, expected);
}

// Catches a gap that never expires (the resume cursor would stay behind it forever) and a
// feed that holds back events above a gap until the gap fills.
both_feeds!(
    rolled_back_gap_is_given_up_without_blocking_later_events,
    whole_log_rolled_back_gap_is_given_up_after_the_gap_timeout_without_blocking_later_events,
    workspace_rolled_back_gap_is_given_up_after_the_gap_timeout_without_blocking_later_events
);
async fn rolled_back_gap_is_given_up_without_blocking_later_events<F: Feed>() {
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, "feed-rollback", WorkspaceKind::User).await;
    let mut feed = F::from_now(&store, ws.id)
        .await
        .with_gap_timeout(Duration::from_secs(2));
    let a = create(&store, &ws, "a").await;
    let doomed = Late::begin(&url, &ws, "never").await;
    let b = create(&store, &ws, "b").await;
    let gap = doomed.rollback().await;
    assert!(a < gap && gap < b);
    assert_eq!(
        described(&feed.poll(&store).await),
        vec![pair(a, "a"), pair(b, "b")],
        "the event above the gap is not held back"
    );
    settle_at(&mut feed, &store, gap - 1).await; // the gap is pending
    let c = create(&store, &ws, "c").await;
    assert_eq!(
        described(&feed.poll(&store).await),
        vec![pair(c, "c")],
        "events keep flowing while the gap is pending"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while feed.resume_cursor() != c {
        assert!(
            Instant::now() < deadline,
            "the rolled-back gap {gap} was never given up (resume cursor {})",
            feed.resume_cursor()
        );
        assert_eq!(described(&feed.poll(&store).await), vec![]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = create(&store, &ws, "d").await;
    assert_eq!(described(&feed.poll(&store).await), vec![pair(d, "d")]);
    settle_at(&mut feed, &store, d).await;
}

// Catches a resume cursor that passes an undelivered gap (the high-water mark, or one below
// only the newest gap), which makes a restarted follower lose the late event for good.
both_feeds!(
    resume_cursor_stays_below_the_oldest_undelivered_gap,
    whole_log_resume_cursor_stays_below_the_oldest_undelivered_gap,
    workspace_resume_cursor_stays_below_the_oldest_undelivered_gap
);
async fn resume_cursor_stays_below_the_oldest_undelivered_gap<F: Feed>() {
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, "feed-resume", WorkspaceKind::User).await;
    let mut feed = F::from_now(&store, ws.id).await;
    let late1 = Late::begin(&url, &ws, "late-1").await;
    let a = create(&store, &ws, "a").await;
    let late2 = Late::begin(&url, &ws, "late-2").await;
    let b = create(&store, &ws, "b").await;
    let (l1, l2) = (late1.id, late2.id);
    assert!(l1 < a && a < l2 && l2 < b);
    assert_eq!(
        described(&feed.poll(&store).await),
        vec![pair(a, "a"), pair(b, "b")]
    );
    settle_at(&mut feed, &store, l1 - 1).await; // two gaps: resume below the older
    late2.commit().await;
    assert_eq!(described(&feed.poll(&store).await), vec![pair(l2, "late-2")]);
    settle_at(&mut feed, &store, l1 - 1).await; // the newer gap filled; the older one holds
    let cursor = feed.resume_cursor();
    drop(feed); // a follower restart
    late1.commit().await;
    let mut resumed = F::resumed(ws.id, cursor);
    assert_eq!(
        described(&resumed.poll(&store).await),
        vec![pair(l1, "late-1"), pair(a, "a"), pair(l2, "late-2"), pair(b, "b")],
        "the resumed feed gets the late event (and replays what followed it)"
    );
    settle_at(&mut resumed, &store, b).await; // no gaps: resume after the last event
    let mut again = F::resumed(ws.id, resumed.resume_cursor());
    assert_eq!(
        described(&again.poll(&store).await),
        vec![],
        "resuming without gaps replays nothing"
    );
}

// Catches a feed that reads its own workspace's rows only: other workspaces' ids would look
// like gaps and hold the resume cursor back (or their events would leak into this feed).
both_feeds!(
    other_workspaces_events_are_filtered_out_but_are_not_gaps,
    whole_log_other_workspaces_events_are_filtered_out_but_are_not_gaps,
    workspace_other_workspaces_events_are_filtered_out_but_are_not_gaps
);
async fn other_workspaces_events_are_filtered_out_but_are_not_gaps<F: Feed>() {
    let (store, _url) = store_and_url().await;
    let mine = workspace(&store, "feed-mine", WorkspaceKind::User).await;
    let other = workspace(&store, "feed-other", WorkspaceKind::User).await;
    let mut feed = F::from_now(&store, mine.id).await;
    let a = create(&store, &mine, "mine-a").await;
    create(&store, &other, "other-a").await;
    let b = create(&store, &mine, "mine-b").await;
    let last_other = create(&store, &other, "other-b").await;
    let got = feed.poll(&store).await;
    assert_eq!(described(&got), vec![pair(a, "mine-a"), pair(b, "mine-b")]);
    assert!(got.iter().all(|e| e.workspace == mine.id));
    // Other workspaces' events are seen, not pending.
    settle_at(&mut feed, &store, last_other).await;
}

// Catches (found by this test, fixed with it): re-reading pending ids as a range from the
// oldest with a row limit, which never reaches a pending id more than 10,000 above an older
// gap; both were first seen in one poll, so they expired together and the late event was lost.
both_feeds!(
    late_event_far_above_an_older_gap_is_delivered,
    whole_log_late_event_far_above_an_older_gap_is_delivered,
    workspace_late_event_far_above_an_older_gap_is_delivered
);
async fn late_event_far_above_an_older_gap_is_delivered<F: Feed>() {
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, "feed-far", WorkspaceKind::User).await;
    let mut feed = F::from_now(&store, ws.id).await;
    let old_gap = Late::begin(&url, &ws, "rolled-back").await.rollback().await;
    let bulk = raw_client(&url).await;
    bulk.execute(
        "INSERT INTO events (workspace_id, actor, op, name) \
         SELECT $1, 'test:bulk', 'setattr', NULL FROM generate_series(1, 10050)",
        &[&ws.id.0],
    )
    .await
    .unwrap();
    let late = Late::begin(&url, &ws, "late-far").await;
    let after = create(&store, &ws, "after").await;
    assert!(late.id - old_gap > 10_000);
    let first = feed.poll(&store).await;
    assert_eq!(first.len(), 10_051, "the bulk events and `after`");
    assert_eq!(first.last().map(|e| e.id), Some(after));
    let (id, n) = late.commit().await;
    assert_eq!(
        described(&feed.poll(&store).await),
        vec![(id, n)],
        "the committed late event is delivered"
    );
}

// Catches (found by this test, fixed with it): `from_now` starting at max(id) with no pending
// ids, so an event with a lower id that commits after the feed started was never delivered
// (the mount's cache invalidator starts this way and missed that change).
both_feeds!(
    feed_from_now_delivers_an_event_in_flight_when_it_started,
    whole_log_feed_from_now_delivers_an_event_in_flight_when_it_started,
    workspace_feed_from_now_delivers_an_event_in_flight_when_it_started
);
async fn feed_from_now_delivers_an_event_in_flight_when_it_started<F: Feed>() {
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, "feed-now", WorkspaceKind::User).await;
    let late = Late::begin(&url, &ws, "in-flight").await;
    create(&store, &ws, "committed").await;
    let mut feed = F::from_now(&store, ws.id).await;
    let (id, n) = late.commit().await;
    assert_eq!(
        described(&feed.poll(&store).await),
        vec![(id, n)],
        "an event that becomes visible after the feed started is new to it"
    );
}

// The horizon's own rules (per-workspace feed).

// Catches a keeper that publishes its high-water mark instead of its resume cursor: a reader
// would then raise its floor past the open transaction and never deliver its event.
#[tokio::test]
async fn horizon_never_passes_an_open_transaction() {
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, "horizon-open", WorkspaceKind::User).await;
    let mut feed = WorkspaceFeed::from_now(&store, ws.id).await.unwrap();
    let late = Late::begin(&url, &ws, "open").await;
    let after = create(&store, &ws, "after").await;
    assert_eq!(
        described(&feed.poll(&store).await.unwrap()),
        vec![pair(after, "after")]
    );
    for _ in 0..3 {
        assert_eq!(described(&feed.poll(&store).await.unwrap()), vec![]);
    }
    assert!(feed.keeps_horizon(), "the only reader holds the horizon");
    let horizon = store.feed_horizon().await.unwrap().horizon;
    assert_eq!(
        horizon,
        late.id - 1,
        "the horizon waits below the open transaction"
    );
    assert_eq!(feed.resume_cursor(), late.id - 1);
    let (id, n) = late.commit().await;
    assert_eq!(described(&feed.poll(&store).await.unwrap()), vec![(id, n)]);
    settle_at(&mut feed, &store, after).await;
    assert_eq!(store.feed_horizon().await.unwrap().horizon, after);
}

// Catches a reader that trusts the horizon to move: while the holder is alive but stalled, the
// horizon stays put, and a second reader must still deliver everything, a late commit included,
// each once. Then the stalled holder's lease lapses and the reader takes the horizon over.
#[tokio::test]
async fn a_stalled_holder_neither_blocks_nor_duplicates_delivery_and_is_taken_over() {
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, "horizon-stalled", WorkspaceKind::User).await;
    let mut holder = WorkspaceFeed::from_now(&store, ws.id)
        .await
        .unwrap()
        .with_keeper_lease(Duration::from_secs(2));
    holder.poll(&store).await.unwrap();
    assert!(holder.keeps_horizon());
    let stuck = store.feed_horizon().await.unwrap();
    // The holder stops polling from here on, its lease still live.
    let mut reader = WorkspaceFeed::from_now(&store, ws.id)
        .await
        .unwrap()
        .with_keeper_lease(TEST_KEEPER_LEASE);
    let late = Late::begin(&url, &ws, "late").await;
    let a = create(&store, &ws, "a").await;
    assert_eq!(described(&reader.poll(&store).await.unwrap()), vec![pair(a, "a")]);
    assert!(!reader.keeps_horizon(), "the holder's lease is live");
    let b = create(&store, &ws, "b").await;
    assert_eq!(described(&reader.poll(&store).await.unwrap()), vec![pair(b, "b")]);
    let (id, n) = late.commit().await;
    assert_eq!(
        described(&reader.poll(&store).await.unwrap()),
        vec![(id, n.clone())]
    );
    assert_eq!(
        described(&reader.poll(&store).await.unwrap()),
        vec![],
        "each once"
    );
    assert_eq!(
        store.feed_horizon().await.unwrap().horizon,
        stuck.horizon,
        "the horizon stood still"
    );
    // Once the holder's lease lapses the reader takes over and the horizon catches up.
    settle_at(&mut reader, &store, b).await;
    assert!(reader.keeps_horizon());
    let now = store.feed_horizon().await.unwrap();
    assert_ne!(now.holder, stuck.holder);
    assert_eq!(now.horizon, b);
    // The old holder finds it lost the horizon at its next poll, and delivers what it missed
    // in id order.
    assert_eq!(
        described(&holder.poll(&store).await.unwrap()),
        vec![(id, n), pair(a, "a"), pair(b, "b")]
    );
    assert!(!holder.keeps_horizon());
}

// Catches: a bounded poll that drops the rest of the page it cut (events lost), that hands
// out more than asked, that raises its floor past events it has not handed out or past a
// transaction still open (a resumed consumer would skip them), and one that never delivers
// the late event once it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bounded_poll_hands_out_a_backlog_in_order_in_batches_and_loses_nothing() {
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, "feed-bounded", WorkspaceKind::User).await;
    let cursor = last_event(&store, &ws).await;
    let mut expected = Vec::new();
    for i in 0..12 {
        expected.push(pair(
            create(&store, &ws, &format!("a{i:02}")).await,
            &format!("a{i:02}"),
        ));
    }
    let late = Late::begin(&url, &ws, "late").await;
    let late_id = late.id;
    for i in 0..13 {
        expected.push(pair(
            create(&store, &ws, &format!("b{i:02}")).await,
            &format!("b{i:02}"),
        ));
    }
    let mut feed = WorkspaceFeed::new(ws.id, cursor).with_keeper_lease(TEST_KEEPER_LEASE);
    let mut got = Vec::new();
    loop {
        let batch = feed.poll_at_most(&store, 10).await.unwrap();
        assert!(
            batch.len() <= 10,
            "{} events from a poll of at most 10",
            batch.len()
        );
        assert!(
            feed.resume_cursor() < late_id,
            "the floor {} passed the open transaction's event {late_id}",
            feed.resume_cursor()
        );
        if batch.is_empty() {
            break;
        }
        got.extend(described(&batch));
    }
    assert_eq!(got, expected, "every committed event once, in id order");

    // A consumer resuming from the floor misses nothing either.
    let mut resumed = WorkspaceFeed::new(ws.id, feed.resume_cursor()).with_keeper_lease(TEST_KEEPER_LEASE);
    let mut again = Vec::new();
    loop {
        let batch = resumed.poll_at_most(&store, 7).await.unwrap();
        if batch.is_empty() {
            break;
        }
        again.extend(described(&batch));
    }
    let from_floor: Vec<_> = expected
        .iter()
        .filter(|(id, _)| *id > feed.resume_cursor())
        .cloned()
        .collect();
    assert_eq!(again, from_floor);

    // The late event, once committed, follows.
    let (id, n) = late.commit().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut late_seen = Vec::new();
    while late_seen.is_empty() {
        assert!(Instant::now() < deadline, "the late event never came");
        late_seen = described(&feed.poll_at_most(&store, 10).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(late_seen, vec![pair(id, &n)]);
}

//! Change-feed retention (issue 17, item 11) against a real PostgreSQL: old events are
//! purged, events a live cursor has not read are kept, and a reader below the purged range
//! is told so instead of silently skipping events.

mod common;

use std::time::{Duration, SystemTime};

use drive::meta::WorkspaceFeed;
use drive::model::{NewNode, NodeKind, Workspace, WorkspaceKind};
use drive::{MetaError, PgMetaStore};

/// `n` events (file creates) in `ws`; their ids in order.
async fn make_events(store: &PgMetaStore, ws: &Workspace, prefix: &str, n: usize) -> Vec<i64> {
    for i in 0..n {
        store
            .create(
                &common::actor(),
                ws.id,
                ws.root,
                &common::name(&format!("{prefix}{i}")),
                &NewNode::new(NodeKind::File, 0o644),
            )
            .await
            .unwrap();
    }
    let events = store.events_after(Some(ws.id), 0, 10_000).await.unwrap();
    events
        .iter()
        .filter(|e| {
            e.name
                .as_ref()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .map(|e| e.id)
        .collect()
}

/// Moves the feed's horizon to the end of the log, as a mount following the feed does.
async fn advance_horizon(store: &PgMetaStore, ws: &Workspace) {
    let mut keeper = WorkspaceFeed::new(ws.id, 0);
    let end = store
        .events_after(None, 0, 10_000)
        .await
        .unwrap()
        .last()
        .unwrap()
        .id;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.feed_horizon().await.unwrap().horizon < end {
        keeper.poll(store).await.unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "the horizon did not reach {end}"
        );
    }
}

/// Makes the events up to `last` `days` old (test-only: events are stamped by the server).
async fn age_events(url: &str, last: i64, days: i32) {
    common::raw_client(url)
        .await
        .execute(
            "UPDATE events SET at = now() - make_interval(days => $2) WHERE id <= $1",
            &[&last, &days],
        )
        .await
        .unwrap();
}

fn assert_purged_error(result: Result<impl std::fmt::Debug, MetaError>, cursor: i64, through: i64) {
    match result {
        Err(MetaError::FeedPurged {
            cursor: c,
            purged_through,
        }) => {
            assert_eq!((c, purged_through), (cursor, through));
        }
        other => panic!("expected the purged-horizon error, got {other:?}"),
    }
}

#[tokio::test]
async fn old_events_are_purged_and_a_reader_below_them_gets_the_horizon_error() {
    let (store, url) = common::store_and_url().await;
    let ws = common::workspace(&store, "feed", WorkspaceKind::Team).await;
    let old = make_events(&store, &ws, "old", 5).await;
    let young = make_events(&store, &ws, "young", 3).await;
    advance_horizon(&store, &ws).await;
    age_events(&url, *old.last().unwrap(), 10).await;
    // A reader that read up to the second old event, not past it.
    let mut behind = WorkspaceFeed::new(ws.id, old[1]);

    let purged = store
        .purge_events(SystemTime::now() - Duration::from_secs(7 * 24 * 3600))
        .await
        .unwrap();
    // The workspace's creation event is older still, and goes too.
    let through = store.feed_purged_through().await.unwrap();
    assert_eq!(through, *old.last().unwrap());
    assert!(purged >= 5, "{purged}");
    let left: Vec<i64> = store
        .events_after(None, through, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(left, young, "young events stay");

    assert_purged_error(behind.poll(&store).await, old[1], through);
    assert_purged_error(store.events_after(None, 0, 10).await, 0, through);
    assert_purged_error(store.events_after(Some(ws.id), old[3], 10).await, old[3], through);
    // A reader at the purged range reads on.
    let mut caught_up = WorkspaceFeed::new(ws.id, through);
    let read: Vec<i64> = caught_up
        .poll(&store)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(read, young);
    // Nothing more is old: a second purge deletes nothing.
    assert_eq!(
        store
            .purge_events(SystemTime::now() - Duration::from_secs(7 * 24 * 3600))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn events_past_a_live_cursor_are_kept_until_it_reads_them_or_lets_go() {
    let (store, url) = common::store_and_url().await;
    let ws = common::workspace(&store, "feed", WorkspaceKind::Team).await;
    let ids = make_events(&store, &ws, "e", 6).await;
    advance_horizon(&store, &ws).await;
    age_events(&url, *ids.last().unwrap(), 30).await;
    store
        .hold_feed_cursor("exporter", ids[2], Duration::from_secs(600))
        .await
        .unwrap();

    let cutoff = SystemTime::now() - Duration::from_secs(24 * 3600);
    store.purge_events(cutoff).await.unwrap();
    assert_eq!(store.feed_purged_through().await.unwrap(), ids[2]);
    let kept: Vec<i64> = store
        .events_after(Some(ws.id), ids[2], 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(kept, ids[3..], "the cursor has not read these");
    // A consumer cannot hold a position below what is purged.
    assert_purged_error(
        store
            .hold_feed_cursor("late", ids[1], Duration::from_secs(600))
            .await,
        ids[1],
        ids[2],
    );

    store.release_feed_cursor("exporter").await.unwrap();
    assert_eq!(store.purge_events(cutoff).await.unwrap(), 3);
    assert_eq!(store.feed_purged_through().await.unwrap(), *ids.last().unwrap());
}

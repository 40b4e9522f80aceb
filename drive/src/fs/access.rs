//! Coarse last-access times (issue 17: expiry and tiering).
//!
//! An access is an `open` of a file, for reading or writing (a write is also seen through
//! the file's mtime). `stat`, `lookup` and `readdir` are not accesses: a scanner or a backup
//! that lists a tree must not keep it alive. The open path only notes the node in memory
//! (one short critical section, no I/O); [`DriveFs::run_access_recorder`] writes what was
//! noted in one statement per flush. A node is noted at most once per
//! `FsConfig::access_interval`, so a file opened all day costs one row write per interval.

use std::collections::HashMap;
use std::time::Duration;

use crate::fs::DriveFs;
use crate::fs::blocks::BlockIo;
use crate::model::{NodeId, Timestamp};
use crate::ports::MetaStore;
use crate::sync::lock;

/// Most nodes whose last recorded access is remembered; beyond it the map is emptied, which
/// only costs one early write per node.
const MAX_REMEMBERED: usize = 100_000;

/// Accesses noted by the open path and not yet written, and when each node was last noted.
#[derive(Debug, Default)]
pub(crate) struct AccessLog {
    noted: std::sync::Mutex<HashMap<NodeId, Timestamp>>,
    pending: std::sync::Mutex<HashMap<NodeId, Timestamp>>,
}

impl AccessLog {
    /// Notes an access of `node` at `now` unless one was noted less than `interval` ago.
    pub(crate) fn note(&self, node: NodeId, now: Timestamp, interval: Duration) {
        let interval = i64::try_from(interval.as_nanos()).unwrap_or(i64::MAX);
        {
            let mut noted = lock(&self.noted);
            if let Some(last) = noted.get(&node)
                && now.0.saturating_sub(last.0) < interval
            {
                return;
            }
            if noted.len() >= MAX_REMEMBERED {
                noted.clear();
            }
            noted.insert(node, now);
        }
        lock(&self.pending).insert(node, now);
    }

    fn take(&self) -> Vec<(NodeId, Timestamp)> {
        lock(&self.pending).drain().collect()
    }
}

impl<B: BlockIo, M: MetaStore> DriveFs<B, M> {
    /// Notes an access of `node` (see the module's doc).
    pub(crate) fn note_access(&self, node: NodeId) {
        self.accesses
            .note(node, self.cfg.clock.now(), self.cfg.access_interval);
    }

    /// Writes the accesses noted so far. A failure is logged and the batch dropped: access
    /// times are coarse, and the next open after the interval notes the node again.
    pub async fn flush_accesses(&self) {
        let batch = self.accesses.take();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.unsettled().record_access(self.ws.id, &batch).await {
            tracing::warn!(error = %e, nodes = batch.len(), "last-access times not recorded");
        }
    }

    /// Writes noted accesses every `FsConfig::access_flush` until `stop` completes, then
    /// what is left.
    pub async fn run_access_recorder(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(self.cfg.access_flush) => self.flush_accesses().await,
            }
        }
        self.flush_accesses().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn minutes(m: i64) -> Timestamp {
        Timestamp(m * 60 * 1_000_000_000)
    }

    #[test]
    fn a_node_is_noted_once_per_interval_and_each_flush_takes_what_is_pending() {
        let log = AccessLog::default();
        let (a, b) = (NodeId(10), NodeId(11));
        for m in 0..60 {
            log.note(a, minutes(m), HOUR);
        }
        log.note(b, minutes(5), HOUR);
        let mut first = log.take();
        first.sort();
        assert_eq!(first, vec![(a, minutes(0)), (b, minutes(5))]);
        assert!(log.take().is_empty(), "taken once");
        log.note(a, minutes(59), HOUR);
        assert!(log.take().is_empty(), "still within the hour");
        log.note(a, minutes(60), HOUR);
        assert_eq!(log.take(), vec![(a, minutes(60))]);
    }
}

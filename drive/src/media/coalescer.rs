//! Per-key coalescing of background work: a burst of requests for one key runs the work once,
//! or once more when requests arrive while it runs (that run sees them), and never twice at
//! once for one key. Each request carries an item (what it is about); a run takes the items
//! requested since the previous run began. At most `capacity` keys are pending; requests for
//! new keys beyond that are refused, so a flood cannot grow the map without bound.
//!
//! Pure bookkeeping behind the caller's lock: the caller spawns one task per
//! [`Request::Start`], which calls [`Coalescer::begin`] before each run and
//! [`Coalescer::finish`] after it, and runs again while `finish` says so.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;

/// What a request for a key asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// Nothing was pending for the key: start a task for it.
    Start,
    /// A pending run takes this request (one waiting to begin, or one more after the
    /// running one).
    Coalesced,
    /// `capacity` keys are pending: the request is dropped.
    Full,
}

/// A pending key.
#[derive(Debug)]
struct Pending<T> {
    /// A run is under way.
    running: bool,
    /// Requested since the last run began: the next run's.
    items: Vec<T>,
}

/// The pending keys, their runs and items.
#[derive(Debug)]
pub(crate) struct Coalescer<K, T> {
    keys: HashMap<K, Pending<T>>,
    capacity: usize,
}

impl<K: Eq + Hash, T> Coalescer<K, T> {
    pub(crate) fn new(capacity: usize) -> Coalescer<K, T> {
        Coalescer {
            keys: HashMap::new(),
            capacity,
        }
    }

    /// Notes that `key`'s work is due for `item`.
    pub(crate) fn request(&mut self, key: K, item: T) -> Request {
        let full = self.keys.len() >= self.capacity;
        match self.keys.entry(key) {
            Entry::Occupied(mut e) => {
                e.get_mut().items.push(item);
                Request::Coalesced
            }
            Entry::Vacant(_) if full => Request::Full,
            Entry::Vacant(e) => {
                e.insert(Pending {
                    running: false,
                    items: vec![item],
                });
                Request::Start
            }
        }
    }

    /// `key`'s task begins a run, which takes the items requested so far (in request order);
    /// requests from now on need another run.
    pub(crate) fn begin(&mut self, key: &K) -> Vec<T> {
        match self.keys.get_mut(key) {
            Some(pending) => {
                pending.running = true;
                std::mem::take(&mut pending.items)
            }
            None => Vec::new(),
        }
    }

    /// `key`'s task finished a run. True when requests came during it: the task runs again
    /// (the key stays pending). False when the key is done and forgotten.
    pub(crate) fn finish(&mut self, key: &K) -> bool {
        match self.keys.get_mut(key) {
            Some(pending) if !pending.items.is_empty() => {
                pending.running = false;
                true
            }
            _ => {
                self.keys.remove(key);
                false
            }
        }
    }

    /// Keys pending (waiting or running).
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.keys.len()
    }

    /// Whether `key`'s run is under way.
    #[cfg(test)]
    fn is_running(&self, key: &K) -> bool {
        self.keys.get(key).is_some_and(|p| p.running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_before_the_run_begins_is_one_run_with_every_item() {
        let mut c = Coalescer::new(8);
        assert_eq!(c.request("a", 0), Request::Start);
        for i in 1..1000 {
            assert_eq!(c.request("a", i), Request::Coalesced);
        }
        assert_eq!(c.begin(&"a"), (0..1000).collect::<Vec<_>>());
        assert!(c.is_running(&"a"));
        assert!(!c.finish(&"a"), "every request came before the run began");
        assert_eq!(c.pending(), 0);
        assert_eq!(c.request("a", 5), Request::Start, "a later request starts afresh");
    }

    #[test]
    fn a_request_during_a_run_makes_exactly_one_more_run_with_its_items() {
        let mut c = Coalescer::new(8);
        assert_eq!(c.request(1, 'a'), Request::Start);
        assert_eq!(c.begin(&1), ['a']);
        assert_eq!(c.request(1, 'b'), Request::Coalesced);
        assert_eq!(c.request(1, 'c'), Request::Coalesced);
        assert!(c.finish(&1), "requests came while it ran");
        assert!(!c.is_running(&1));
        assert_eq!(
            c.request(1, 'd'),
            Request::Coalesced,
            "the next run has not begun"
        );
        assert_eq!(c.begin(&1), ['b', 'c', 'd']);
        assert!(!c.finish(&1));
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn keys_run_independently() {
        let mut c = Coalescer::new(8);
        assert_eq!(c.request("a", ()), Request::Start);
        assert_eq!(c.request("b", ()), Request::Start);
        c.begin(&"a");
        c.begin(&"b");
        assert_eq!(c.request("b", ()), Request::Coalesced);
        assert!(!c.finish(&"a"));
        assert!(c.finish(&"b"));
        assert_eq!(c.pending(), 1);
    }

    #[test]
    fn new_keys_beyond_the_capacity_are_refused_but_pending_ones_coalesce() {
        let mut c = Coalescer::new(2);
        assert_eq!(c.request(1, ()), Request::Start);
        assert_eq!(c.request(2, ()), Request::Start);
        assert_eq!(c.request(3, ()), Request::Full);
        assert_eq!(c.request(1, ()), Request::Coalesced);
        c.begin(&1);
        assert!(!c.finish(&1), "its requests came before the run began");
        c.begin(&2);
        assert!(!c.finish(&2));
        assert_eq!(c.request(3, ()), Request::Start, "room again");
    }
}

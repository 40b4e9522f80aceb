//! Object stores for tests and simulations: [`MemoryChunkStore`] keeps objects in a map, and
//! [`FaultyChunkStore`] wraps any store with failures a test turns on and off (a full store,
//! an unavailable one, a refused request, a slow one), so the data path's error handling is
//! tested in-process, without a server.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::BoxFuture;

use crate::data::store::{ChunkStore, ListedObject, StoreError};
use crate::sync::lock;

/// Objects in memory; lost with the process.
#[derive(Debug, Default)]
pub struct MemoryChunkStore {
    objects: Mutex<HashMap<String, Bytes>>,
}

impl MemoryChunkStore {
    pub fn new() -> MemoryChunkStore {
        MemoryChunkStore::default()
    }

    /// Number of objects held.
    pub fn len(&self) -> usize {
        lock(&self.objects).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// Each call does its work when awaited, not when called, as a real store's futures do (a
// wrapper that decides not to await one must leave the store untouched).
impl ChunkStore for MemoryChunkStore {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            lock(&self.objects).insert(key.to_string(), data);
            Ok(())
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        async move {
            let found = lock(&self.objects).get(key).cloned();
            found.ok_or_else(|| StoreError::NotFound { key: key.to_string() })
        }
        .boxed()
    }

    fn get_range<'a>(&'a self, key: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        async move {
            let found = lock(&self.objects).get(key).cloned();
            let object = found.ok_or_else(|| StoreError::NotFound { key: key.to_string() })?;
            let end = (range.end as usize).min(object.len());
            Ok(object.slice((range.start as usize).min(end)..end))
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            lock(&self.objects).remove(key);
            Ok(())
        }
        .boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            Ok(lock(&self.objects)
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect())
        }
        .boxed()
    }

    fn list_page<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ListedObject>, StoreError>> {
        async move {
            let mut page: Vec<ListedObject> = lock(&self.objects)
                .iter()
                .filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a))
                .map(|(k, v)| ListedObject {
                    key: k.clone(),
                    size: v.len() as u64,
                })
                .collect();
            page.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            page.truncate(limit);
            Ok(page)
        }
        .boxed()
    }

    fn describe(&self) -> String {
        "memory://".into()
    }
}

/// A failure [`FaultyChunkStore`] injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// `StoreError::NoSpace`, as a full disk or a store over quota answers.
    NoSpace,
    /// `StoreError::Unavailable`, as a store that is down after retries.
    Unavailable,
    /// `StoreError::Failed`, as a store refusing the request (permissions).
    Refused,
    /// The request succeeds after this delay.
    Slow(Duration),
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreOp {
    Put,
    Get,
    Delete,
    List,
}

/// Wraps a store with faults per operation; without faults it forwards every call.
#[derive(Debug)]
pub struct FaultyChunkStore {
    inner: Arc<dyn ChunkStore>,
    faults: Mutex<HashMap<StoreOp, StoreFault>>,
    /// Keys a batch delete reports as failed one by one (the request itself succeeds).
    undeletable: Mutex<HashSet<String>>,
    injected: AtomicU64,
    /// GETs running now, and the most that ever ran at once.
    gets_in_flight: AtomicU64,
    most_gets_in_flight: AtomicU64,
    gets: AtomicU64,
}

impl FaultyChunkStore {
    pub fn new(inner: Arc<dyn ChunkStore>) -> FaultyChunkStore {
        FaultyChunkStore {
            inner,
            faults: Mutex::new(HashMap::new()),
            undeletable: Mutex::new(HashSet::new()),
            injected: AtomicU64::new(0),
            gets_in_flight: AtomicU64::new(0),
            most_gets_in_flight: AtomicU64::new(0),
            gets: AtomicU64::new(0),
        }
    }

    /// Applies `fault` to every later `op` until cleared.
    pub fn set(&self, op: StoreOp, fault: StoreFault) {
        lock(&self.faults).insert(op, fault);
    }

    /// Makes batch deletes report each of `keys` as failed (and keep it), as a DeleteObjects
    /// answer with per-key errors does, until cleared.
    pub fn refuse_deletes_of(&self, keys: impl IntoIterator<Item = String>) {
        lock(&self.undeletable).extend(keys);
    }

    /// Removes every fault.
    pub fn clear(&self) {
        lock(&self.faults).clear();
        lock(&self.undeletable).clear();
    }

    /// The most GETs that ran at once so far (prefetch and reads together).
    pub fn most_gets_in_flight(&self) -> u64 {
        self.most_gets_in_flight.load(Ordering::Relaxed)
    }

    /// GETs so far.
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }

    /// Requests that met a fault so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Counts `get` among the GETs, and among those in flight while it runs.
    fn counted_get<'a>(
        &'a self,
        get: BoxFuture<'a, Result<Bytes, StoreError>>,
    ) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        async move {
            self.gets.fetch_add(1, Ordering::Relaxed);
            let now = self.gets_in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            self.most_gets_in_flight.fetch_max(now, Ordering::AcqRel);
            // Counted down on completion and on cancellation (an aborted prefetch) alike.
            struct Done<'s>(&'s AtomicU64);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::AcqRel);
                }
            }
            let _done = Done(&self.gets_in_flight);
            get.await
        }
        .boxed()
    }

    /// Runs `forward` unless a fault for `op` says otherwise.
    fn guarded<'a, T: Send + 'a>(
        &'a self,
        op: StoreOp,
        key: &'a str,
        forward: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        let fault = lock(&self.faults).get(&op).copied();
        if fault.is_some() {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        let op = match op {
            StoreOp::Put => "put",
            StoreOp::Get => "get",
            StoreOp::Delete => "delete",
            StoreOp::List => "list",
        };
        async move {
            let (key, source) = (key.to_string(), None);
            match fault {
                None => forward.await,
                Some(StoreFault::Slow(delay)) => {
                    tokio::time::sleep(delay).await;
                    forward.await
                }
                Some(StoreFault::NoSpace) => Err(StoreError::NoSpace {
                    op,
                    key,
                    message: "injected: no space".into(),
                    source,
                }),
                Some(StoreFault::Unavailable) => Err(StoreError::Unavailable {
                    op,
                    key,
                    message: "injected: unavailable".into(),
                    source,
                }),
                Some(StoreFault::Refused) => Err(StoreError::Failed {
                    op,
                    key,
                    message: "injected: refused".into(),
                    source,
                }),
            }
        }
        .boxed()
    }
}

impl ChunkStore for FaultyChunkStore {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), StoreError>> {
        self.guarded(StoreOp::Put, key, self.inner.put(key, data))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        self.counted_get(self.guarded(StoreOp::Get, key, self.inner.get(key)))
    }

    fn get_range<'a>(&'a self, key: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        self.counted_get(self.guarded(StoreOp::Get, key, self.inner.get_range(key, range)))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.guarded(StoreOp::Delete, key, self.inner.delete(key))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.guarded(StoreOp::List, prefix, self.inner.list(prefix))
    }

    fn has_storage_classes(&self) -> bool {
        self.inner.has_storage_classes()
    }

    fn set_storage_class<'a>(
        &'a self,
        key: &'a str,
        class: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.set_storage_class(key, class)
    }

    fn delete_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, StoreError)>, StoreError>> {
        let what = keys.first().map_or("", String::as_str);
        let forward = async move {
            let (refused, rest): (Vec<String>, Vec<String>) = {
                let undeletable = lock(&self.undeletable);
                keys.iter().cloned().partition(|k| undeletable.contains(k))
            };
            let mut failed = self.inner.delete_many(&rest).await?;
            failed.extend(refused.into_iter().map(|key| {
                let error = StoreError::Failed {
                    op: "delete",
                    key: key.clone(),
                    message: "injected: refused".into(),
                    source: None,
                };
                (key, error)
            }));
            Ok(failed)
        };
        self.guarded(StoreOp::Delete, what, forward.boxed())
    }

    fn list_page<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ListedObject>, StoreError>> {
        self.guarded(StoreOp::List, prefix, self.inner.list_page(prefix, after, limit))
    }

    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
}

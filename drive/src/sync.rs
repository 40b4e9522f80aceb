//! The one way this code base takes a std mutex.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, tolerating poison: a panic in another thread while it held the lock does not
/// make the data unusable here, because every map and counter guarded this way is left
/// consistent at each statement (no multi-step update spans a possible panic).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

//! Locking shared by every double.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// `Mutex::lock` that shrugs off poisoning: a panicking test must not wedge the doubles.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

//! Locking shared by every double.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// `Mutex::lock` that shrugs off poisoning: a panicking test must not wedge the doubles.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a double records, in order, and a wake-up for whoever waits for more: a client can
/// learn of a refusal before the double has recorded it.
pub(crate) struct Records<T> {
    items: Mutex<Vec<T>>,
    added: tokio::sync::Notify,
}

impl<T> Default for Records<T> {
    fn default() -> Self {
        Records {
            items: Mutex::default(),
            added: tokio::sync::Notify::new(),
        }
    }
}

impl<T: Clone> Records<T> {
    pub(crate) fn push(&self, item: T) {
        lock(&self.items).push(item);
        self.added.notify_waiters();
    }

    /// Everything recorded so far.
    pub(crate) fn all(&self) -> Vec<T> {
        lock(&self.items).clone()
    }

    /// Everything recorded once there are at least `count`, or an error naming `what` and how
    /// many there were after `within`.
    pub(crate) async fn reaching(
        &self,
        count: usize,
        within: std::time::Duration,
        what: &str,
    ) -> Result<Vec<T>, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before the check, so a push between the two still wakes it.
            let added = self.added.notified();
            let seen = self.all();
            if seen.len() >= count {
                return Ok(seen);
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return Err(format!(
                    "{what}: {} recorded after {within:?}, expected {count}",
                    seen.len()
                ));
            }
        }
    }
}

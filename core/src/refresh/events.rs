//! Budgets for the events the controller publishes, so that thousands of resources becoming
//! Ready at once do not add thousands of writes to the API server. Warnings are not limited
//! (the event recorder folds repeats into series); a routine refresh is reported at most
//! hourly per resource; every Normal event takes from one controller-wide token bucket.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Which budget an event is subject to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// Always published.
    Unlimited,
    /// Takes from the controller-wide bucket.
    Shared,
    /// A routine refresh: at most once per [`ROUTINE_EVENT_INTERVAL`] per resource, and from
    /// the controller-wide bucket.
    Routine,
}

/// Routine refreshes are reported at most this often per resource.
pub const ROUTINE_EVENT_INTERVAL: Duration = Duration::from_secs(3600);

/// The controller-wide bucket: this many Normal events at once, refilled at this rate.
pub const EVENT_BURST: f64 = 50.0;
pub const EVENTS_PER_SECOND: f64 = 5.0;

/// A token bucket: [`EVENT_BURST`] events at once, refilled at [`EVENTS_PER_SECOND`].
#[derive(Debug)]
pub struct EventBudget {
    tokens: f64,
    last: Instant,
}

impl EventBudget {
    pub fn new(now: Instant) -> Self {
        EventBudget {
            tokens: EVENT_BURST,
            last: now,
        }
    }

    /// Takes one event from the budget if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * EVENTS_PER_SECOND;
        self.tokens = (self.tokens + refill).min(EVENT_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// When each resource last had a routine refresh reported.
#[derive(Debug)]
pub struct Routine<K> {
    last: HashMap<K, Instant>,
}

impl<K: Hash + Eq> Default for Routine<K> {
    fn default() -> Self {
        Routine {
            last: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> Routine<K> {
    /// Whether `key` may have a routine event at `now`.
    pub fn due(&self, key: &K, now: Instant) -> bool {
        self.last
            .get(key)
            .is_none_or(|t| now.saturating_duration_since(*t) >= ROUTINE_EVENT_INTERVAL)
    }

    /// Records that `key` had its routine event at `now`.
    pub fn record(&mut self, key: K, now: Instant) {
        self.last.insert(key, now);
    }

    /// Forgets a deleted resource.
    pub fn forget(&mut self, key: &K) {
        self.last.remove(key);
    }
}

/// The controller's event budgets together.
#[derive(Debug)]
pub struct Budgets<K> {
    pub shared: EventBudget,
    pub routine: Routine<K>,
}

impl<K: Hash + Eq> Budgets<K> {
    pub fn new(now: Instant) -> Self {
        Budgets {
            shared: EventBudget::new(now),
            routine: Routine::default(),
        }
    }

    /// Whether an event of `budget` about `key` may be published at `now`, taking from the
    /// budgets if so.
    pub fn allow(&mut self, budget: Budget, key: K, now: Instant) -> bool {
        match budget {
            Budget::Unlimited => true,
            Budget::Shared => self.shared.allow(now),
            // The hourly turn is spent only when the event is published.
            Budget::Routine => {
                let allowed = self.routine.due(&key, now) && self.shared.allow(now);
                if allowed {
                    self.routine.record(key, now);
                }
                allowed
            }
        }
    }
}

#[cfg(test)]
// The tests drive the clock themselves, from a real starting instant.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_gives_a_burst_then_refills_at_its_rate() {
        let start = Instant::now();
        let mut budget = EventBudget::new(start);
        let burst = (0..100).filter(|_| budget.allow(start)).count();
        assert_eq!(burst, EVENT_BURST as usize);
        assert!(!budget.allow(start));
        // One second refills five events, and never more than the burst.
        let later = start + Duration::from_secs(1);
        assert_eq!((0..10).filter(|_| budget.allow(later)).count(), 5);
        let much_later = later + Duration::from_secs(3600);
        assert_eq!(
            (0..100).filter(|_| budget.allow(much_later)).count(),
            EVENT_BURST as usize
        );
    }

    #[test]
    fn a_routine_refresh_is_reported_hourly_per_resource() {
        let start = Instant::now();
        let mut budgets = Budgets::new(start);
        assert!(budgets.allow(Budget::Routine, "shop/a", start));
        assert!(!budgets.allow(Budget::Routine, "shop/a", start + Duration::from_secs(60)));
        assert!(budgets.allow(Budget::Routine, "shop/b", start + Duration::from_secs(60)));
        assert!(budgets.allow(Budget::Routine, "shop/a", start + ROUTINE_EVENT_INTERVAL));
    }

    #[test]
    fn warnings_are_never_held_back_and_first_issues_share_the_bucket() {
        let start = Instant::now();
        let mut budgets = Budgets::new(start);
        let issued = (0..80)
            .filter(|i| budgets.allow(Budget::Shared, format!("ns/{i}"), start))
            .count();
        assert_eq!(issued, EVENT_BURST as usize);
        assert!(budgets.allow(Budget::Unlimited, "ns/x".to_owned(), start));
        // An exhausted bucket holds routine events back without spending their hourly turn.
        assert!(!budgets.allow(Budget::Routine, "ns/r".to_owned(), start));
        let refilled = start + Duration::from_secs(1);
        assert!(budgets.allow(Budget::Routine, "ns/r".to_owned(), refilled));
    }
}

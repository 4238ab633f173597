//! Leader election over a `coordination.k8s.io` Lease, decided: who may take the Lease, and
//! when a holder must consider itself no longer the leader.
//!
//! As in client-go, expiry is judged by the candidate's own monotonic clock: a Lease record
//! that has not changed for a whole lease duration since this replica first saw it so is
//! expired. The times written in the Lease are never compared with this machine's clock, so a
//! skewed clock on either replica cannot make two leaders.

use std::time::{Duration, Instant};

/// What a replica last saw of the Lease.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The holder, empty when released.
    pub holder: String,
    /// The Lease's `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// The Lease's `renewTime`, as written by the holder: compared only for change.
    pub renew_time: Option<String>,
}

/// A replica's view of the Lease over time.
#[derive(Clone, Debug, Default)]
pub struct Observer {
    seen: Option<(Record, Instant)>,
}

impl Observer {
    /// Notes `record`, read at `now`; the clock starts again only when it changed.
    pub fn observe(&mut self, record: Record, now: Instant) {
        match &self.seen {
            Some((previous, _)) if *previous == record => {}
            _ => self.seen = Some((record, now)),
        }
    }

    /// Whether `identity` may take the Lease at `now`: it is released, or ours, or its record
    /// has not changed for a whole lease duration as measured here.
    pub fn may_acquire(&self, identity: &str, now: Instant) -> bool {
        match &self.seen {
            None => true,
            Some((record, _)) if record.holder.is_empty() || record.holder == identity => true,
            Some((record, since)) => now.saturating_duration_since(*since) >= record.lease_duration,
        }
    }
}

/// A leader's timing: it renews every `retry_period`, and gives up leadership when it has
/// not renewed for `renew_deadline`, which is shorter than the lease duration so that it has
/// stopped before any standby can take over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timing {
    /// client-go's defaults for controllers: 15 s, 10 s, 2 s.
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Whether a leader that last renewed at `renewed` must stop leading at `now`.
    pub fn lost(&self, renewed: Instant, now: Instant) -> bool {
        now.saturating_duration_since(renewed) >= self.renew_deadline
    }

    /// The time a standby waits after the last renewal it saw is at least the lease
    /// duration; a leader stops at the renew deadline: this is the margin between them.
    pub fn fencing_margin(&self) -> Duration {
        self.lease_duration.saturating_sub(self.renew_deadline)
    }
}

#[cfg(test)]
// The tests drive the clock themselves, from a real starting instant.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn record(holder: &str, renewed: &str) -> Record {
        Record {
            holder: holder.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_time: Some(renewed.to_owned()),
        }
    }

    #[test]
    fn a_live_lease_of_another_replica_is_respected_until_it_stops_changing() {
        let start = Instant::now();
        let mut seen = Observer::default();
        seen.observe(record("a", "10:00:00"), start);
        assert!(!seen.may_acquire("b", start + Duration::from_secs(10)));
        assert!(seen.may_acquire("a", start));
        // The holder renews: the clock starts again.
        seen.observe(record("a", "10:00:10"), start + Duration::from_secs(10));
        assert!(!seen.may_acquire("b", start + Duration::from_secs(20)));
        // Then it stops: fifteen seconds after the last change, the Lease can be taken.
        assert!(seen.may_acquire("b", start + Duration::from_secs(25)));
    }

    #[test]
    fn renew_times_are_never_compared_with_this_clock() {
        // A renewTime written by a clock a year behind is live as long as it changes.
        let start = Instant::now();
        let mut seen = Observer::default();
        seen.observe(record("a", "2025-01-01T00:00:00Z"), start);
        assert!(!seen.may_acquire("b", start + Duration::from_secs(14)));
    }

    #[test]
    fn released_or_unseen_leases_can_be_taken() {
        let now = Instant::now();
        assert!(Observer::default().may_acquire("b", now));
        let mut seen = Observer::default();
        seen.observe(record("", "x"), now);
        assert!(seen.may_acquire("b", now));
    }

    #[test]
    fn a_leader_stops_before_a_standby_may_start() {
        let timing = Timing::default();
        let renewed = Instant::now();
        assert!(!timing.lost(renewed, renewed + Duration::from_secs(9)));
        assert!(timing.lost(renewed, renewed + timing.renew_deadline));
        assert_eq!(timing.fencing_margin(), Duration::from_secs(5));
    }
}

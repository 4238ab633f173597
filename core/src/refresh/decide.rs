//! The controller's decisions, as small pure functions over what it observed.
//!
//! Everything here is computed from the resource's status and the Secret as read from the
//! cache, never from memory of earlier reconciles, so a restarted controller makes the same
//! decisions as the one before it and resumes without a burst of exchanges. Times are whole
//! seconds, as status stores them.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::google::truncate;

/// What the controller saw of the Secret it manages.
#[derive(Clone, Debug, PartialEq)]
pub enum SecretState {
    /// No Secret of that name.
    Missing,
    /// A Secret of that name that this resource does not own: never touched.
    ForeignOwner,
    /// Our Secret; `intact` is false when its data no longer matches what we wrote.
    Ours { intact: bool },
}

/// What the last refresh left in status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    /// metadata.generation the status describes.
    pub observed_generation: Option<i64>,
    pub expires_at: Option<Timestamp>,
    pub next_refresh: Option<Timestamp>,
    pub failure_count: i32,
}

/// A failing resource waits out its backoff, so that a failing identity is asked no more
/// often than the schedule allows. Once another resource of the identity has been issued a
/// token (`peer_token`), this one's retry asks Google nothing: it is answered with that token,
/// and waits no longer. Without it, the resources of an identity that came back from an
/// outage would each wait out their own backoff, minutes for some, with a token at hand.
pub fn unless_a_peer_token(decision: Decision, schedule: &Schedule, peer_token: bool) -> Decision {
    match decision {
        Decision::Wait(_) if peer_token && schedule.failure_count > 0 => {
            Decision::Refresh(Trigger::Retry)
        }
        other => other,
    }
}

/// Why a refresh runs; its name lands in events and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    FirstIssue,
    SpecChanged,
    SecretMissing,
    SecretEdited,
    Expired,
    Due,
    Retry,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FirstIssue => "FirstIssue",
            Trigger::SpecChanged => "SpecChanged",
            Trigger::SecretMissing => "SecretMissing",
            Trigger::SecretEdited => "SecretEdited",
            Trigger::Expired => "Expired",
            Trigger::Due => "Due",
            Trigger::Retry => "Retry",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Obtain a token (from the shared cache or a new exchange) and write it.
    Refresh(Trigger),
    /// Nothing to do before this time.
    Wait(Timestamp),
    /// The Secret belongs to someone else; report SecretConflict and leave it alone.
    Conflict,
}

/// One named check of [`decide`]: fires with the trigger it stands for.
type Check = fn(Timestamp, Option<i64>, &Schedule, &SecretState) -> Option<Trigger>;

/// The ordered checks; the first that fires decides.
pub fn decide(
    now: Timestamp,
    generation: Option<i64>,
    schedule: &Schedule,
    secret: &SecretState,
) -> Decision {
    if *secret == SecretState::ForeignOwner {
        return Decision::Conflict;
    }
    let checks: [Check; 5] = [
        spec_changed,
        never_issued,
        secret_missing,
        secret_edited,
        expired,
    ];
    if let Some(trigger) = checks
        .iter()
        .find_map(|check| check(now, generation, schedule, secret))
    {
        // A failing identity is not retried faster because its Secret went missing or its
        // token expired: those wait for the backoff like any retry. A spec change does not.
        let in_backoff =
            schedule.failure_count > 0 && schedule.next_refresh.is_some_and(|t| now < t);
        if in_backoff && trigger != Trigger::SpecChanged {
            return Decision::Wait(schedule.next_refresh.unwrap_or(now));
        }
        return Decision::Refresh(trigger);
    }
    match schedule.next_refresh {
        Some(at) if now < at => Decision::Wait(at),
        _ if schedule.failure_count > 0 => Decision::Refresh(Trigger::Retry),
        _ => Decision::Refresh(Trigger::Due),
    }
}

fn spec_changed(
    _: Timestamp,
    generation: Option<i64>,
    s: &Schedule,
    _: &SecretState,
) -> Option<Trigger> {
    (s.observed_generation.is_some() && generation != s.observed_generation)
        .then_some(Trigger::SpecChanged)
}

fn never_issued(_: Timestamp, _: Option<i64>, s: &Schedule, _: &SecretState) -> Option<Trigger> {
    (s.expires_at.is_none() && s.failure_count == 0).then_some(Trigger::FirstIssue)
}

fn secret_missing(
    _: Timestamp,
    _: Option<i64>,
    s: &Schedule,
    secret: &SecretState,
) -> Option<Trigger> {
    (*secret == SecretState::Missing && s.expires_at.is_some()).then_some(Trigger::SecretMissing)
}

fn secret_edited(
    _: Timestamp,
    _: Option<i64>,
    _: &Schedule,
    secret: &SecretState,
) -> Option<Trigger> {
    (*secret == SecretState::Ours { intact: false }).then_some(Trigger::SecretEdited)
}

fn expired(now: Timestamp, _: Option<i64>, s: &Schedule, _: &SecretState) -> Option<Trigger> {
    s.expires_at
        .is_some_and(|exp| exp <= now)
        .then_some(Trigger::Expired)
}

/// The soonest a token is refreshed after it was issued, whatever its lifetime: a peer that
/// issues one-second tokens must not make a resource refresh in a loop.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// The largest refresh jitter, as a share of the refresh window.
const REFRESH_JITTER: f64 = 0.1;

/// When to refresh a token issued at `issued_at` that expires at `expires_at`: when
/// `renew_before_percentage` of its lifetime is left, minus up to a tenth of that window of
/// jitter (`unit` in [0, 1)) so resources issued together spread out.
pub fn refresh_at(
    issued_at: Timestamp,
    expires_at: Timestamp,
    renew_before_percentage: i32,
    unit: f64,
) -> Timestamp {
    let lifetime = expires_at.duration_since(issued_at).as_secs_f64().max(0.0);
    let window = lifetime * f64::from(renew_before_percentage.clamp(1, 99)) / 100.0;
    let jitter = window * REFRESH_JITTER * unit.clamp(0.0, 1.0);
    let at = expires_at - SignedDuration::from_secs_f64(window + jitter);
    truncate(at.max(issued_at + MIN_REFRESH_INTERVAL))
}

/// The share of a token's lifetime within which [`refresh_at`] may fall due, at the earliest
/// (the window with the largest jitter). A token shared from the cache must have more than
/// that left, or the resource taking it would be due again at once.
pub fn refresh_share(renew_before_percentage: i32) -> f64 {
    (f64::from(renew_before_percentage.clamp(1, 99)) / 100.0 * (1.0 + REFRESH_JITTER)).min(1.0)
}

/// First retry delay after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest delay between retries.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// A still-valid token gets a last retry at least this long before it expires.
pub const LAST_CHANCE: Duration = Duration::from_secs(30);
/// Longest delay between retries once the token in the Secret has expired: the pods using it
/// are failing now, so recovery after an outage must not wait for a long backoff.
pub const EXPIRED_CAP: Duration = Duration::from_secs(30);

/// When to retry after the `failures`-th consecutive failure (1-based): exponential from
/// [`BACKOFF_BASE`], capped at [`BACKOFF_CAP`]. A token that is still valid gets a retry no
/// later than [`LAST_CHANCE`] before it expires and then one every [`BACKOFF_BASE`] until it
/// does; once it has expired, retries come at least every [`EXPIRED_CAP`]. A resource that
/// never had a token (most often a setup error a spec change will fix) keeps the plain backoff.
///
/// Every delay is cut by up to half (`unit` in [0, 1), see [`unit_from`]): resources that an
/// outage made fail together would otherwise retry together, recover together and fall due
/// together again, a wave that outlasts the refresh window when it is short.
pub fn retry_at(
    now: Timestamp,
    failures: i32,
    expires_at: Option<Timestamp>,
    unit: f64,
) -> Timestamp {
    let exponent = (failures.max(1) - 1).min(16) as u32;
    let backoff = BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_CAP);
    // Rounded up to whole seconds, so the shortest delay (5 s) stays at least 3 s.
    let spread = |delay: Duration| {
        let cut = delay.mul_f64(unit.clamp(0.0, 1.0) / 2.0);
        Duration::from_secs((delay - cut).as_secs_f64().ceil().max(1.0) as u64)
    };
    let at = match expires_at {
        Some(exp) if exp > now => {
            let last_chance = exp - LAST_CHANCE;
            if last_chance > now {
                (now + spread(backoff)).min(last_chance)
            } else {
                now + spread(backoff.min(BACKOFF_BASE))
            }
        }
        Some(_) => now + spread(backoff.min(EXPIRED_CAP)),
        None => now + spread(backoff),
    };
    truncate(at)
}

/// A stable number in [0, 1) from `seed`, for jitter that a restarted controller recomputes
/// identically.
pub fn unit_from(seed: &str) -> f64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(seed.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn healthy() -> Schedule {
        Schedule {
            observed_generation: Some(1),
            expires_at: Some(t("2026-01-01T01:00:00Z")),
            next_refresh: Some(t("2026-01-01T00:30:00Z")),
            failure_count: 0,
        }
    }

    const INTACT: SecretState = SecretState::Ours { intact: true };

    #[test]
    fn a_new_resource_is_issued_at_once() {
        let d = decide(
            t("2026-01-01T00:00:00Z"),
            Some(1),
            &Schedule::default(),
            &SecretState::Missing,
        );
        assert_eq!(d, Decision::Refresh(Trigger::FirstIssue));
    }

    #[test]
    fn a_healthy_resource_waits_for_its_refresh_time() {
        let d = decide(t("2026-01-01T00:10:00Z"), Some(1), &healthy(), &INTACT);
        assert_eq!(d, Decision::Wait(t("2026-01-01T00:30:00Z")));
        let d = decide(t("2026-01-01T00:30:00Z"), Some(1), &healthy(), &INTACT);
        assert_eq!(d, Decision::Refresh(Trigger::Due));
    }

    #[test]
    fn spec_change_missing_or_edited_secret_refresh_now() {
        let now = t("2026-01-01T00:10:00Z");
        assert_eq!(
            decide(now, Some(2), &healthy(), &INTACT),
            Decision::Refresh(Trigger::SpecChanged)
        );
        assert_eq!(
            decide(now, Some(1), &healthy(), &SecretState::Missing),
            Decision::Refresh(Trigger::SecretMissing)
        );
        assert_eq!(
            decide(
                now,
                Some(1),
                &healthy(),
                &SecretState::Ours { intact: false }
            ),
            Decision::Refresh(Trigger::SecretEdited)
        );
    }

    #[test]
    fn a_foreign_secret_is_a_conflict_whatever_else_holds() {
        assert_eq!(
            decide(
                t("2026-01-01T00:00:00Z"),
                Some(9),
                &Schedule::default(),
                &SecretState::ForeignOwner
            ),
            Decision::Conflict
        );
    }

    #[test]
    fn failures_wait_for_the_backoff_except_for_spec_changes() {
        let failing = Schedule {
            failure_count: 3,
            next_refresh: Some(t("2026-01-01T00:12:00Z")),
            ..healthy()
        };
        let now = t("2026-01-01T00:10:00Z");
        assert_eq!(
            decide(now, Some(1), &failing, &INTACT),
            Decision::Wait(t("2026-01-01T00:12:00Z"))
        );
        assert_eq!(
            decide(now, Some(1), &failing, &SecretState::Missing),
            Decision::Wait(t("2026-01-01T00:12:00Z"))
        );
        assert_eq!(
            decide(now, Some(2), &failing, &INTACT),
            Decision::Refresh(Trigger::SpecChanged)
        );
        assert_eq!(
            decide(t("2026-01-01T00:12:00Z"), Some(1), &failing, &INTACT),
            Decision::Refresh(Trigger::Retry)
        );
    }

    #[test]
    fn first_issue_failing_is_retried_on_schedule() {
        let failing = Schedule {
            observed_generation: Some(1),
            failure_count: 1,
            next_refresh: Some(t("2026-01-01T00:00:05Z")),
            expires_at: None,
        };
        assert_eq!(
            decide(
                t("2026-01-01T00:00:01Z"),
                Some(1),
                &failing,
                &SecretState::Missing
            ),
            Decision::Wait(t("2026-01-01T00:00:05Z"))
        );
        assert_eq!(
            decide(
                t("2026-01-01T00:00:05Z"),
                Some(1),
                &failing,
                &SecretState::Missing
            ),
            Decision::Refresh(Trigger::Retry)
        );
    }

    #[test]
    fn an_expired_token_is_refreshed() {
        let stale = Schedule {
            next_refresh: Some(t("2026-01-01T02:00:00Z")),
            ..healthy()
        };
        assert_eq!(
            decide(t("2026-01-01T01:00:00Z"), Some(1), &stale, &INTACT),
            Decision::Refresh(Trigger::Expired)
        );
    }

    #[test]
    fn a_token_is_never_refreshed_sooner_than_the_floor_after_it_was_issued() {
        let issued = t("2026-01-01T00:00:00Z");
        // A token that lives 3 s, refreshed when 99 % of it is left.
        let at = refresh_at(issued, t("2026-01-01T00:00:03Z"), 99, 0.0);
        assert_eq!(at, t("2026-01-01T00:00:02Z"));
    }

    #[test]
    fn refresh_time_is_a_share_of_the_lifetime_with_bounded_jitter() {
        let issued = t("2026-01-01T00:00:00Z");
        let exp = t("2026-01-01T01:00:00Z");
        assert_eq!(refresh_at(issued, exp, 50, 0.0), t("2026-01-01T00:30:00Z"));
        assert_eq!(
            refresh_at(issued, exp, 50, 0.999_999),
            t("2026-01-01T00:27:00Z")
        );
        assert_eq!(refresh_at(issued, exp, 10, 0.0), t("2026-01-01T00:54:00Z"));
        let jittered = refresh_at(issued, exp, 50, 0.5);
        assert_eq!(jittered.subsec_nanosecond(), 0, "whole seconds");
        assert!(jittered < t("2026-01-01T00:30:00Z") && jittered > t("2026-01-01T00:27:00Z"));
    }

    #[test]
    fn the_refresh_share_covers_every_jittered_refresh_time() {
        let issued = t("2026-01-01T00:00:00Z");
        let exp = t("2026-01-01T01:00:00Z");
        for percentage in [1, 10, 50, 90, 99] {
            let share = refresh_share(percentage);
            // Refresh times are whole seconds, rounded down.
            let earliest = exp - SignedDuration::from_secs_f64(3600.0 * share + 1.0);
            for i in 0..100 {
                let at = refresh_at(issued, exp, percentage, unit_from(&i.to_string()));
                assert!(at >= earliest, "{percentage} %: {at} before {earliest}");
            }
        }
        assert!((refresh_share(50) - 0.55).abs() < 1e-9);
        assert_eq!(refresh_share(99), 1.0);
    }

    #[test]
    fn backoff_doubles_caps_and_never_outlives_a_valid_token() {
        let now = t("2026-01-01T00:00:00Z");
        assert_eq!(retry_at(now, 1, None, 0.0), t("2026-01-01T00:00:05Z"));
        assert_eq!(retry_at(now, 2, None, 0.0), t("2026-01-01T00:00:10Z"));
        assert_eq!(retry_at(now, 5, None, 0.0), t("2026-01-01T00:01:20Z"));
        assert_eq!(retry_at(now, 30, None, 0.0), t("2026-01-01T00:05:00Z"));
        // Token expires in 2 minutes: the retry comes 30 s before, not 5 minutes later.
        assert_eq!(
            retry_at(now, 30, Some(t("2026-01-01T00:02:00Z")), 0.0),
            t("2026-01-01T00:01:30Z")
        );
        // Expires in 10 s: retries every 5 s until then, not in a tight loop.
        assert_eq!(
            retry_at(now, 30, Some(t("2026-01-01T00:00:10Z")), 0.0),
            t("2026-01-01T00:00:05Z")
        );
        assert_eq!(
            retry_at(now, 1, Some(t("2026-01-01T00:00:20Z")), 0.0),
            t("2026-01-01T00:00:05Z")
        );
        // Already expired: the backoff, but never more than 30 s, however many retries
        // failed before (an outage that outlived the token must not cost minutes more).
        assert_eq!(
            retry_at(now, 2, Some(t("2025-12-31T00:00:00Z")), 0.0),
            t("2026-01-01T00:00:10Z")
        );
        assert_eq!(
            retry_at(now, 14, Some(t("2025-12-31T23:59:58Z")), 0.0),
            t("2026-01-01T00:00:30Z")
        );
    }

    #[test]
    fn an_outage_that_outlives_the_token_is_recovered_from_within_the_expired_cap() {
        // Google is down from 2 minutes before expiry until 10 s after; the controller
        // retries on its schedule; how long after Google is back does it get a token?
        let expiry = t("2026-01-01T00:02:00Z");
        let back = t("2026-01-01T00:02:10Z");
        let jitters: [&dyn Fn(i32) -> f64; 4] = [&|_| 0.0, &|_| 0.5, &|_| 0.999, &|attempt| {
            unit_from(&attempt.to_string())
        }];
        for jitter in jitters {
            let mut now = t("2026-01-01T00:00:00Z");
            let mut failures = 0;
            while now < back {
                failures += 1;
                now = retry_at(now, failures, Some(expiry), jitter(failures));
            }
            assert!(
                now.duration_since(back) <= jiff::SignedDuration::from_secs(30),
                "recovered {} after Google came back",
                now.duration_since(back)
            );
            // Jitter only shortens delays: at most one try per 3 s in the last 30 s.
            assert!(failures <= 20, "{failures} attempts in 2 min 10 s");
        }
    }

    #[test]
    fn retries_of_resources_that_failed_together_spread_out() {
        let now = t("2026-01-01T00:00:00Z");
        let expires = Some(t("2026-01-01T00:10:00Z"));
        for failures in [1, 3, 6] {
            let full = retry_at(now, failures, expires, 0.0).duration_since(now);
            let times: HashSet<Timestamp> = (0..200)
                .map(|i| retry_at(now, failures, expires, unit_from(&format!("uid-{i}/retry"))))
                .collect();
            for at in &times {
                let delay = at.duration_since(now);
                assert!(
                    delay <= full && delay * 2 >= full - SignedDuration::from_secs(1),
                    "failure {failures}: {delay} outside half of {full} to {full}"
                );
            }
            // Whole seconds: a 5 s delay has 3 distinct values (3–5 s), longer ones more.
            assert!(
                times.len() >= 3,
                "failure {failures}: only {} distinct times",
                times.len()
            );
        }
        // Never sooner than a second, even at the shortest delay.
        let soon = retry_at(now, 1, Some(t("2026-01-01T00:00:02Z")), 0.999);
        assert!(soon >= t("2026-01-01T00:00:01Z"), "{soon}");
    }

    #[test]
    fn jitter_units_are_stable_and_in_range() {
        let a = unit_from("uid-1/2026-01-01T01:00:00Z");
        assert_eq!(a, unit_from("uid-1/2026-01-01T01:00:00Z"));
        assert_ne!(a, unit_from("uid-2/2026-01-01T01:00:00Z"));
        for i in 0..1000 {
            let u = unit_from(&i.to_string());
            assert!((0.0..1.0).contains(&u));
        }
    }
}

//! Keeping one FederatedCredential's token fresh, decided: given what the controller observed
//! (the resource with its status, the Secret, the time), [`next`] says whether to wait, to
//! report a conflict, or which token to ask the exchange engine for; once asked, [`issued`] or
//! [`failed`] say what to write (the Secret, the status), which event to publish and when to
//! look again. The controller in the `fedcred` crate carries that out and nothing more.
//!
//! - [`changes`]: which watched resources need a reconcile (new ones and changed specs).
//! - [`decide`]: the ordered checks that say whether a refresh is due, the refresh time with
//!   its jitter, and the retry backoff.
//! - [`objects`]: the Secret and the status as written.
//! - [`events`]: the budgets that keep events from flooding the API server.
//!
//! Everything here is computed from the resource's status and the Secret as read, never from
//! memory of earlier reconciles, so a restarted controller makes the same decisions as the one
//! before it and resumes without a burst of exchanges.

pub mod cached;
pub mod changes;
pub mod decide;
pub mod events;
pub mod objects;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;

use crate::api::{FederatedCredential, FederatedCredentialStatus};
use crate::error::ExchangeError;
use crate::exchange::{Defaults, IdentityKey, Issued, Reuse, plan};
use crate::names::secret_name;
use decide::{Decision, Schedule, SecretState, Trigger};

/// What the controller saw of one resource, at one instant (whole seconds, as status keeps).
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub fc: &'a FederatedCredential,
    pub secret: SecretState,
    pub now: Timestamp,
    /// Whether a token of the resource's identity is held, one its [`identity`] reuse
    /// accepts: asking for it costs no exchange (another resource of the identity was just
    /// issued one).
    pub peer_token: bool,
}

/// What to do about a resource before any token is asked for.
#[derive(Clone, Debug)]
pub enum Next {
    /// Nothing is due before `at`. `seconds_to_expiry` of the token in the Secret, if any.
    Wait {
        at: Timestamp,
        seconds_to_expiry: Option<i64>,
    },
    /// Ask the exchange engine for a token for `key`, accepting a shared one per `reuse`; the
    /// resource's own last failure, if any, is `failed_at`. Then call [`issued`] or [`failed`].
    Refresh {
        trigger: Trigger,
        key: Box<IdentityKey>,
        reuse: Reuse,
        failed_at: Option<Timestamp>,
    },
    /// Nothing to ask for: carry these out (a Secret conflict, or a spec that cannot be
    /// planned).
    Write(Box<Effects>),
}

/// Everything one reconcile writes and publishes, and when it looks again.
#[derive(Clone, Debug)]
pub struct Effects {
    /// The Secret to apply, when there is a token to write.
    pub secret: Option<Secret>,
    /// The status to write (written only when it differs from the one read).
    pub status: FederatedCredentialStatus,
    /// The event to publish, subject to its [`events::Budget`].
    pub event: Option<Note>,
    /// When to reconcile again.
    pub requeue_at: Timestamp,
    /// Seconds until the token in the Secret expires, for the metric; `None` leaves it.
    pub seconds_to_expiry: Option<i64>,
    /// What happened, for the log line.
    pub outcome: Outcome,
}

/// What a reconcile came to, for logs.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Written {
        trigger: Trigger,
        expires_at: Timestamp,
        next_refresh: Timestamp,
    },
    Failed {
        error: ExchangeError,
        failures: i32,
        retry_at: Timestamp,
    },
    Conflict,
    /// The resource asks each pod to exchange for itself: nothing to refresh.
    InPod,
}

/// An event about the resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub message: String,
    pub action: &'static str,
    pub budget: events::Budget,
}

/// How long a resource whose Secret another owner holds waits before looking again.
pub const CONFLICT_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// The schedule the last refresh left in the status.
pub fn schedule_of(status: Option<&FederatedCredentialStatus>) -> Schedule {
    let Some(s) = status else {
        return Schedule::default();
    };
    Schedule {
        observed_generation: s.observed_generation,
        expires_at: s.expires_at.as_ref().map(|t| t.0),
        next_refresh: s.next_refresh_time.as_ref().map(|t| t.0),
        failure_count: s.failure_count,
    }
}

/// What to do about `observed`, before any token is asked for.
pub fn next(observed: &Observed<'_>, defaults: &Defaults) -> Next {
    let fc = observed.fc;
    let now = observed.now;
    if fc.spec.exchanges_in_pod() {
        return Next::Write(Box::new(in_pod(observed)));
    }
    let schedule = schedule_of(fc.status.as_ref());
    let decision = decide::decide(now, fc.metadata.generation, &schedule, &observed.secret);
    let trigger = match decide::unless_a_peer_token(decision, &schedule, observed.peer_token) {
        Decision::Wait(at) => {
            return Next::Wait {
                at,
                seconds_to_expiry: schedule
                    .expires_at
                    .map(|exp| exp.as_second() - now.as_second()),
            };
        }
        Decision::Conflict => return Next::Write(Box::new(conflict(observed))),
        Decision::Refresh(trigger) => trigger,
    };
    match plan(&namespace(fc), &fc.spec, defaults) {
        Ok(key) => Next::Refresh {
            trigger,
            key: Box::new(key),
            reuse: reuse(fc),
            failed_at: fc
                .status
                .as_ref()
                .and_then(|s| s.last_failure_time.as_ref())
                .map(|t| t.0),
        },
        Err(err) => Next::Write(Box::new(failed(observed, None, err))),
    }
}

/// What to write once the engine gave `issued` for `key`.
pub fn issued(
    observed: &Observed<'_>,
    key: &IdentityKey,
    trigger: Trigger,
    issued: &Issued,
) -> Effects {
    let fc = observed.fc;
    let now = observed.now;
    let unit = decide::unit_from(&format!("{}/{}", uid(fc), issued.expires_at));
    let next = decide::refresh_at(issued.issued_at, issued.expires_at, renew_before(fc), unit)
        .max(now + std::time::Duration::from_secs(1));
    let message = format!(
        "Secret {} refreshed ({}); valid until {}",
        secret_name(fc),
        trigger.as_str(),
        issued.expires_at
    );
    Effects {
        secret: Some(objects::desired_secret(fc, issued)),
        status: objects::success_status(fc, key, issued, next, now),
        event: Some(Note {
            warning: false,
            reason: "TokenRefreshed".to_owned(),
            message,
            action: "Refresh",
            budget: if trigger == Trigger::Due {
                events::Budget::Routine
            } else {
                events::Budget::Shared
            },
        }),
        requeue_at: next,
        seconds_to_expiry: Some(issued.expires_at.as_second() - now.as_second()),
        outcome: Outcome::Written {
            trigger,
            expires_at: issued.expires_at,
            next_refresh: next,
        },
    }
}

/// What to write after `err`; `observed.now` is the moment of the failure, not of the
/// reconcile's start: the retry is spaced from it, and the exchange engine tells this
/// resource's next retry its own failure by it.
pub fn failed(observed: &Observed<'_>, key: Option<&IdentityKey>, err: ExchangeError) -> Effects {
    let fc = observed.fc;
    let now = observed.now;
    let previous = schedule_of(fc.status.as_ref());
    let failures = previous.failure_count.saturating_add(1);
    let unit = decide::unit_from(&format!("{}/retry/{failures}", uid(fc)));
    let retry_at = decide::retry_at(now, failures, previous.expires_at, unit);
    Effects {
        secret: None,
        status: objects::failure_status(fc, key, &err, retry_at, now),
        event: Some(Note {
            warning: true,
            reason: err.reason.as_str().to_owned(),
            message: err.to_string(),
            action: "Refresh",
            budget: events::Budget::Unlimited,
        }),
        requeue_at: retry_at,
        seconds_to_expiry: None,
        outcome: Outcome::Failed {
            error: err,
            failures,
            retry_at,
        },
    }
}

/// The Secret's name is taken by a Secret this resource does not own: say so in the status,
/// warn the first time, and look again later.
fn conflict(observed: &Observed<'_>) -> Effects {
    let fc = observed.fc;
    let first = fc.status.as_ref().is_none_or(|s| {
        !s.conditions
            .iter()
            .any(|c| c.reason == objects::SECRET_CONFLICT)
    });
    let name = secret_name(fc);
    Effects {
        secret: None,
        status: objects::conflict_status(fc, observed.now),
        event: first.then(|| Note {
            warning: true,
            reason: objects::SECRET_CONFLICT.to_owned(),
            message: format!("Secret {name} exists and is not owned by this FederatedCredential"),
            action: "WriteSecret",
            budget: events::Budget::Unlimited,
        }),
        requeue_at: observed.now + CONFLICT_RETRY,
        seconds_to_expiry: None,
        outcome: Outcome::Conflict,
    }
}

/// How long a resource whose pods exchange for themselves waits before it is looked at again;
/// a change of its spec wakes the controller sooner.
pub const IN_POD_RECHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// `exchange: Pod`: no token and no Secret here, only a status that says so. A Secret written
/// while the resource exchanged in the controller is left to its owner reference.
fn in_pod(observed: &Observed<'_>) -> Effects {
    let fc = observed.fc;
    let first = fc.status.as_ref().is_none_or(|s| {
        !s.conditions
            .iter()
            .any(|c| c.reason == objects::EXCHANGE_IN_POD)
    });
    Effects {
        secret: None,
        status: objects::in_pod_status(fc, observed.now),
        event: first.then(|| Note {
            warning: false,
            reason: objects::EXCHANGE_IN_POD.to_owned(),
            message: "the exchange happens in each pod that uses this resource; no Secret is \
                      written"
                .to_owned(),
            action: "Validate",
            budget: events::Budget::Unlimited,
        }),
        requeue_at: observed.now + IN_POD_RECHECK,
        seconds_to_expiry: None,
        outcome: Outcome::InPod,
    }
}

/// The identity a resource's token comes from, and which held token of it the resource
/// accepts; `None` for a resource whose exchange happens in its pods or whose spec names no
/// identity (it fails before any exchange).
pub fn identity(fc: &FederatedCredential, defaults: &Defaults) -> Option<(IdentityKey, Reuse)> {
    if fc.spec.exchanges_in_pod() {
        return None;
    }
    let key = plan(&namespace(fc), &fc.spec, defaults).ok()?;
    Some((key, reuse(fc)))
}

fn reuse(fc: &FederatedCredential) -> Reuse {
    Reuse::refresh_within(decide::refresh_share(renew_before(fc)))
}

fn renew_before(fc: &FederatedCredential) -> i32 {
    fc.spec
        .secret
        .as_ref()
        .map(|s| s.renew_before_percentage)
        .unwrap_or(crate::api::DEFAULT_RENEW_BEFORE_PERCENTAGE)
}

fn namespace(fc: &FederatedCredential) -> String {
    fc.metadata.namespace.clone().unwrap_or_default()
}

fn uid(fc: &FederatedCredential) -> &str {
    fc.metadata.uid.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests;

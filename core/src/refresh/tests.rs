//! The refresh sequence as stories: each reconcile observes what the last one wrote.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::error::Reason;
use crate::testing::{at, credential, issued as token};

/// The resource as the next reconcile sees it, once `effects` were carried out.
fn after(fc: &FederatedCredential, effects: &Effects) -> FederatedCredential {
    let mut next = fc.clone();
    next.status = Some(effects.status.clone());
    next
}

fn observe(fc: &FederatedCredential, secret: SecretState, now: Timestamp) -> Next {
    next(
        &Observed {
            fc,
            secret,
            now,
            peer_token: false,
        },
        &Defaults::default(),
    )
}

fn ours() -> SecretState {
    SecretState::Ours { intact: true }
}

fn refresh(next: Next) -> (Trigger, IdentityKey, Option<Timestamp>) {
    match next {
        Next::Refresh {
            trigger,
            key,
            failed_at,
            ..
        } => (trigger, *key, failed_at),
        other => panic!("expected a refresh, got {other:?}"),
    }
}

#[test]
fn a_new_resource_is_issued_a_token_then_waits_until_its_refresh_window() {
    let t0 = at("2026-01-01T00:00:00Z");
    let fc = credential("orders-db").build();

    let (trigger, key, failed_at) = refresh(observe(&fc, SecretState::Missing, t0));
    assert_eq!(trigger, Trigger::FirstIssue);
    assert_eq!(failed_at, None);
    assert_eq!(key.namespace, "shop");

    let observed = Observed {
        fc: &fc,
        secret: SecretState::Missing,
        now: t0,
        peer_token: false,
    };
    let effects = issued(
        &observed,
        &key,
        trigger,
        &token("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"),
    );
    let secret = effects.secret.as_ref().expect("a token is written");
    assert_eq!(secret.metadata.name.as_deref(), Some("orders-db"));
    // Refreshed with half the hour left, less up to a tenth of that window of jitter.
    let half = at("2026-01-01T00:30:00Z");
    assert!(
        effects.requeue_at <= half && effects.requeue_at >= half - SignedDuration::from_mins(3),
        "{}",
        effects.requeue_at
    );
    assert_eq!(effects.seconds_to_expiry, Some(3600));
    let note = effects.event.as_ref().unwrap();
    assert_eq!(
        (note.warning, note.reason.as_str(), note.budget),
        (false, "TokenRefreshed", events::Budget::Shared)
    );

    // The next reconcile, a minute later, only waits.
    let fc = after(&fc, &effects);
    match observe(&fc, ours(), t0 + SignedDuration::from_mins(1)) {
        Next::Wait {
            at,
            seconds_to_expiry,
        } => {
            assert_eq!(at, effects.requeue_at);
            assert_eq!(seconds_to_expiry, Some(3540));
        }
        other => panic!("expected to wait, got {other:?}"),
    }
    // When it is due, it refreshes, and the event is a routine one.
    let (trigger, key, _) = refresh(observe(&fc, ours(), effects.requeue_at));
    assert_eq!(trigger, Trigger::Due);
    let due = issued(
        &Observed {
            fc: &fc,
            secret: ours(),
            now: effects.requeue_at,
            peer_token: false,
        },
        &key,
        trigger,
        &token("2026-01-01T00:29:00Z", "2026-01-01T01:29:00Z"),
    );
    assert_eq!(due.event.unwrap().budget, events::Budget::Routine);
}

#[test]
fn a_failure_keeps_a_valid_token_ready_backs_off_and_retries_with_its_own_time() {
    let now = at("2026-01-01T00:40:00Z");
    let fc = credential("orders-db")
        .ready_until("2026-01-01T01:00:00Z")
        .build();
    let (trigger, key, _) = refresh(observe(&fc, ours(), now));
    assert_eq!(trigger, Trigger::Due);

    let err = ExchangeError::new(Reason::Upstream, "Google STS answered HTTP 503")
        .presented_by(Some("arn:aws:sts::123456789012:assumed-role/shop-orders/s"));
    let effects = failed(
        &Observed {
            fc: &fc,
            secret: ours(),
            now,
            peer_token: false,
        },
        Some(&key),
        err,
    );
    assert!(effects.secret.is_none(), "a failure writes no Secret");
    let status = &effects.status;
    let condition = |t: &str| status.conditions.iter().find(|c| c.type_ == t).unwrap();
    assert_eq!(
        condition("Ready").status,
        "True",
        "the token is still valid"
    );
    assert_eq!(condition("RefreshFailing").reason, "Upstream");
    assert!(
        condition("RefreshFailing")
            .message
            .contains("assumed-role/shop-orders/s")
    );
    assert_eq!(status.failure_count, 1);
    assert_eq!(
        status.aws_principal_arn.as_deref(),
        Some("arn:aws:sts::123456789012:assumed-role/shop-orders/s")
    );
    // The first retry comes 3 to 5 s later.
    let wait = effects.requeue_at.duration_since(now);
    assert!(
        (SignedDuration::from_secs(3)..=SignedDuration::from_secs(5)).contains(&wait),
        "{wait:?}"
    );
    let note = effects.event.as_ref().unwrap();
    assert!(note.warning && note.budget == events::Budget::Unlimited);

    let fc = after(&fc, &effects);
    assert!(matches!(
        observe(&fc, ours(), now + SignedDuration::from_secs(1)),
        Next::Wait { .. }
    ));
    let (trigger, _, failed_at) = refresh(observe(&fc, ours(), effects.requeue_at));
    assert_eq!(trigger, Trigger::Retry);
    assert_eq!(
        failed_at,
        Some(now),
        "the engine learns which failure was ours"
    );
}

#[test]
fn a_lapsed_token_is_not_ready_and_names_what_to_fix() {
    let now = at("2026-01-01T01:00:05Z");
    let fc = credential("orders-db")
        .ready_until("2026-01-01T01:00:00Z")
        .build();
    let (trigger, key, _) = refresh(observe(&fc, ours(), now));
    assert_eq!(trigger, Trigger::Expired);
    let err = ExchangeError::new(
        Reason::AttributeConditionRejected,
        "the provider's attribute condition does not admit this AWS principal",
    );
    let effects = failed(
        &Observed {
            fc: &fc,
            secret: ours(),
            now,
            peer_token: false,
        },
        Some(&key),
        err,
    );
    let ready = effects
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "AttributeConditionRejected")
    );
    // Pods are failing now: retries come at least every 30 s.
    assert!(effects.requeue_at <= now + Duration::from_secs(30));
}

#[test]
fn a_secret_owned_by_someone_else_is_reported_once_and_never_written() {
    let now = at("2026-01-01T00:00:00Z");
    let fc = credential("orders-db").build();
    let Next::Write(effects) = observe(&fc, SecretState::ForeignOwner, now) else {
        panic!("expected a conflict");
    };
    assert!(effects.secret.is_none());
    assert_eq!(effects.outcome, Outcome::Conflict);
    assert_eq!(effects.event.as_ref().unwrap().reason, "SecretConflict");
    assert_eq!(effects.requeue_at, now + CONFLICT_RETRY);

    let fc = after(&fc, &effects);
    let Next::Write(again) = observe(&fc, SecretState::ForeignOwner, now + CONFLICT_RETRY) else {
        panic!("expected a conflict");
    };
    assert!(again.event.is_none(), "the warning is not repeated");
}

#[test]
fn a_resource_whose_pods_exchange_is_reported_ready_without_a_secret_or_a_token() {
    let now = at("2026-01-01T00:00:00Z");
    // The pod's own identity, in a namespace the controller would not lend its own to.
    let fc = credential("orders-db")
        .in_pod(Some("arn:aws:iam::123456789012:role/orders"))
        .region(None)
        .build();
    let Next::Write(effects) = observe(&fc, SecretState::Missing, now) else {
        panic!("expected a status only");
    };
    assert!(effects.secret.is_none(), "no Secret for in-pod exchange");
    assert_eq!(effects.outcome, Outcome::InPod);
    let ready = &effects.status.conditions[0];
    assert_eq!(
        (ready.type_.as_str(), ready.status.as_str()),
        ("Ready", "True")
    );
    assert_eq!(ready.reason, "ExchangeInPod");
    assert!(ready.message.contains("in each pod"), "{}", ready.message);
    assert!(ready.message.contains("role/orders"), "{}", ready.message);
    assert_eq!(effects.status.secret_name, None);
    assert_eq!(effects.status.expires_at, None);
    assert_eq!(
        effects.status.identity.as_deref(),
        Some("in pod, as arn:aws:iam::123456789012:role/orders")
    );
    assert_eq!(effects.event.as_ref().unwrap().reason, "ExchangeInPod");

    // Reported once; the next look writes the same status and publishes nothing.
    let fc = after(&fc, &effects);
    let Next::Write(again) = observe(&fc, SecretState::Missing, now + IN_POD_RECHECK) else {
        panic!("expected a status only");
    };
    assert!(again.event.is_none());
    assert_eq!(again.status, effects.status);
}

#[test]
fn a_spec_the_controller_may_not_serve_fails_without_asking_anyone() {
    let now = at("2026-01-01T00:00:00Z");
    let fc = credential("orders-db").controller_identity(None).build();
    let Next::Write(effects) = observe(&fc, SecretState::Missing, now) else {
        panic!("expected a failure");
    };
    match &effects.outcome {
        Outcome::Failed {
            error, failures, ..
        } => {
            assert_eq!(error.reason, Reason::ControllerIdentityNotAllowed);
            assert_eq!(*failures, 1);
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_spec_change_refreshes_at_once_even_while_backing_off() {
    let now = at("2026-01-01T00:40:00Z");
    let fc = credential("orders-db")
        .ready_until("2026-01-01T01:00:00Z")
        .status(serde_json::json!({"failureCount": 3, "nextRefreshTime": "2026-01-01T00:45:00Z"}))
        .generation(2)
        .build();
    let (trigger, _, _) = refresh(observe(&fc, ours(), now));
    assert_eq!(trigger, Trigger::SpecChanged);
    // Without the spec change it would wait for the backoff.
    let unchanged = credential("orders-db")
        .ready_until("2026-01-01T01:00:00Z")
        .status(serde_json::json!({"failureCount": 3, "nextRefreshTime": "2026-01-01T00:45:00Z"}))
        .build();
    assert!(matches!(
        observe(&unchanged, SecretState::Missing, now),
        Next::Wait { .. }
    ));
}

#[test]
fn a_resource_backing_off_retries_at_once_when_its_identity_holds_a_token_again() {
    let now = at("2026-01-01T00:41:00Z");
    let observe_with = |fc: &FederatedCredential, secret, peer_token| {
        next(
            &Observed {
                fc,
                secret,
                now,
                peer_token,
            },
            &Defaults::default(),
        )
    };
    // Failing, its next retry minutes away: it waits, unless a peer got a token.
    let failing = credential("orders-db")
        .ready_until("2026-01-01T01:00:00Z")
        .status(serde_json::json!({"failureCount": 6, "nextRefreshTime": "2026-01-01T00:45:00Z"}))
        .build();
    assert!(matches!(
        observe_with(&failing, ours(), false),
        Next::Wait { .. }
    ));
    let (trigger, key, failed_at) = refresh(observe_with(&failing, ours(), true));
    assert_eq!(trigger, Trigger::Retry);
    assert_eq!(key.namespace, "shop");
    assert_eq!(failed_at, None);
    // Its Secret gone meanwhile: the same.
    let (trigger, _, _) = refresh(observe_with(&failing, SecretState::Missing, true));
    assert_eq!(trigger, Trigger::Retry);

    // A healthy resource keeps its own schedule: a peer's token does not make it refresh early.
    let healthy = credential("orders-db")
        .ready_until("2026-01-01T01:00:00Z")
        .build();
    let early = Observed {
        fc: &healthy,
        secret: ours(),
        now: at("2026-01-01T00:10:00Z"),
        peer_token: true,
    };
    assert!(matches!(
        next(&early, &Defaults::default()),
        Next::Wait { .. }
    ));
    // A Secret someone else owns is still left alone.
    assert!(matches!(
        observe_with(&failing, SecretState::ForeignOwner, true),
        Next::Write(_)
    ));
}

#[test]
fn the_identity_of_a_resource_is_the_key_its_refresh_asks_for() {
    let fc = credential("orders-db").build();
    let (key, _) = identity(&fc, &Defaults::default()).unwrap();
    let (_, asked, _) = refresh(observe(
        &fc,
        SecretState::Missing,
        at("2026-01-01T00:00:00Z"),
    ));
    assert_eq!(key, asked);
}

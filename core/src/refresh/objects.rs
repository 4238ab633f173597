//! What the controller writes, built as plain data: the Secret, the status, and how a Secret
//! read back from the API compares with what was written. Pure: no clients, no clock.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::decide::SecretState;
use crate::api::{FederatedCredential, FederatedCredentialStatus, READY, REFRESH_FAILING};
use crate::error::ExchangeError;
use crate::exchange::{IdentityKey, Issued};
use crate::names::{CREDENTIAL_LABEL, MANAGED_BY, MANAGED_BY_LABEL, secret_name};

/// Annotation with a digest of the Secret's data as written, to notice edits.
pub const CONTENT_HASH_ANNOTATION: &str = "fedcred.io/content-hash";

/// Reason of a Ready condition when the Secret holds a fresh token.
pub const TOKEN_ISSUED: &str = "TokenIssued";
/// Reason when the Secret's name is taken by a Secret this resource does not own.
pub const SECRET_CONFLICT: &str = "SecretConflict";
/// Reason of a Ready condition when each pod exchanges for itself (`exchange: Pod`).
pub const EXCHANGE_IN_POD: &str = "ExchangeInPod";

/// What the controller keeps of a watched Secret: the uid of the object that controls it and
/// whether its data matched its content hash when it was watched. Never the data, so tokens never
/// sit in the controller's memory, and a few dozen bytes instead of the object: the cache holds
/// one per resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSummary {
    /// uid of the owner reference with `controller: true`, if there is one.
    pub controller_uid: Option<Box<str>>,
    /// The data holds a token and matches [`CONTENT_HASH_ANNOTATION`].
    pub intact: bool,
}

impl SecretSummary {
    pub fn of(secret: &Secret) -> Self {
        let controller_uid = secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .map(|r| r.uid.as_str().into());
        SecretSummary {
            controller_uid,
            intact: data_intact(secret),
        }
    }
}

fn data_intact(secret: &Secret) -> bool {
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let recorded = secret.annotations().get(CONTENT_HASH_ANNOTATION);
    recorded.is_some_and(|h| *h == content_hash(data)) && data.contains_key("access_token")
}

fn put(data: &mut BTreeMap<String, ByteString>, key: &str, value: &str) {
    data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
}

/// Digest of a Secret's data, independent of key order.
pub fn content_hash(data: &BTreeMap<String, ByteString>) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in data {
        hasher.update((k.len() as u64).to_be_bytes());
        hasher.update(k.as_bytes());
        hasher.update((v.0.len() as u64).to_be_bytes());
        hasher.update(&v.0);
    }
    let digest = hasher.finalize();
    crate::encode::hex(&digest)
}

/// The Secret holding `issued`, owned by `fc`, with the keys of DESIGN.md §2.
pub fn desired_secret(fc: &FederatedCredential, issued: &Issued) -> Secret {
    let mut data = BTreeMap::new();
    put(&mut data, "access_token", issued.access_token.expose());
    put(&mut data, "expiry", &issued.expires_at.to_string());
    put(&mut data, "token_type", "Bearer");
    if let Some(sa) = &issued.service_account {
        put(&mut data, "service_account", sa);
    }
    if let Some(user) = &issued.db_user {
        put(&mut data, "db_user", user);
    }
    if let Some(project) = &issued.project_id {
        put(&mut data, "project_id", project);
    }
    if !issued.scopes.is_empty() {
        // Lets the pod's metadata emulator answer `…/default/scopes` exactly.
        put(&mut data, "scopes", &issued.scopes.join(" "));
    }
    let target = fc.spec.secret.clone().unwrap_or_default();
    let mut labels = target.labels;
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    labels.insert(CREDENTIAL_LABEL.to_owned(), fc.name_any());
    let mut annotations = target.annotations;
    annotations.insert(CONTENT_HASH_ANNOTATION.to_owned(), content_hash(&data));
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(fc)),
            namespace: fc.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: fc.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// How the Secret found in the cluster (as the cache summarises it) relates to `fc`.
pub fn secret_state(fc: &FederatedCredential, found: Option<&SecretSummary>) -> SecretState {
    let Some(secret) = found else {
        return SecretState::Missing;
    };
    let uid = fc.uid();
    match (&secret.controller_uid, uid) {
        (Some(owner), Some(uid)) if **owner == *uid => SecretState::Ours {
            intact: secret.intact,
        },
        _ => SecretState::ForeignOwner,
    }
}

/// How a Secret the cache does not hold relates to `fc`, from its metadata as the API server
/// lists it (`None`: there is none). The cache only holds Secrets with fedcred's label, so a
/// Secret of that name without it is someone else's and must not be written over; one that
/// `fc` owns is ours, not yet in the cache, and is treated as missing.
pub fn uncached_secret_state(fc: &FederatedCredential, listed: Option<&ObjectMeta>) -> SecretState {
    match listed {
        Some(meta) if !owned_by(fc, meta) => SecretState::ForeignOwner,
        _ => SecretState::Missing,
    }
}

fn owned_by(fc: &FederatedCredential, meta: &ObjectMeta) -> bool {
    let uid = fc.uid();
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == uid.as_ref())
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

/// Sets condition `type_` in `conditions`, keeping its lastTransitionTime when the status did
/// not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = match previous.map(|i| &conditions[i]) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => time(now),
    };
    let condition = Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// Status after a successful refresh.
pub fn success_status(
    fc: &FederatedCredential,
    key: &IdentityKey,
    issued: &Issued,
    next_refresh: Timestamp,
    now: Timestamp,
) -> FederatedCredentialStatus {
    let previous = fc.status.clone().unwrap_or_default();
    let mut conditions = previous.conditions;
    let generation = fc.metadata.generation;
    set_condition(
        &mut conditions,
        READY,
        true,
        TOKEN_ISSUED,
        format!(
            "Secret {} holds a token valid until {}; next refresh at {next_refresh}",
            secret_name(fc),
            issued.expires_at
        ),
        generation,
        now,
    );
    remove_condition(&mut conditions, REFRESH_FAILING);
    FederatedCredentialStatus {
        conditions,
        observed_generation: generation,
        identity: Some(key.describe()),
        aws_principal_arn: issued.principal_arn.clone(),
        subject: issued.subject.clone(),
        google_service_account: issued.service_account.clone(),
        db_user: issued.db_user.clone(),
        secret_name: Some(secret_name(fc)),
        expires_at: Some(time(issued.expires_at)),
        last_refresh_time: Some(time(issued.issued_at)),
        next_refresh_time: Some(time(next_refresh)),
        failure_count: 0,
        last_failure_time: None,
        last_failure_reason: None,
        injection_hash: previous.injection_hash.clone(),
    }
}

/// Status after a failed refresh. A token that is still valid keeps the resource Ready; the
/// failure shows in the RefreshFailing condition, the failure count and the retry time.
pub fn failure_status(
    fc: &FederatedCredential,
    key: Option<&IdentityKey>,
    err: &ExchangeError,
    retry_at: Timestamp,
    now: Timestamp,
) -> FederatedCredentialStatus {
    let previous = fc.status.clone().unwrap_or_default();
    let mut conditions = previous.conditions.clone();
    let generation = fc.metadata.generation;
    let still_valid = previous.expires_at.as_ref().is_some_and(|t| t.0 > now);
    let reason = err.reason.as_str();
    if still_valid {
        let until = previous
            .expires_at
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        set_condition(
            &mut conditions,
            READY,
            true,
            TOKEN_ISSUED,
            format!(
                "Secret {} holds a token valid until {until}; refreshing it fails, next try at {retry_at}",
                secret_name(fc)
            ),
            generation,
            now,
        );
    } else {
        set_condition(
            &mut conditions,
            READY,
            false,
            reason,
            err.to_string(),
            generation,
            now,
        );
    }
    set_condition(
        &mut conditions,
        REFRESH_FAILING,
        true,
        reason,
        err.to_string(),
        generation,
        now,
    );
    FederatedCredentialStatus {
        conditions,
        // The failure describes this generation: a spec change is not retried as "changed".
        observed_generation: generation,
        identity: key.map(IdentityKey::describe).or(previous.identity),
        // An AWS principal is an ARN; the Kubernetes sources present a subject.
        aws_principal_arn: match &err.principal {
            Some(p) if p.starts_with("arn:") => Some(p.clone()),
            _ => previous.aws_principal_arn,
        },
        subject: match &err.principal {
            Some(p) if !p.starts_with("arn:") => Some(p.clone()),
            // The key says whether the source has a subject at all (an AWS source has none).
            _ => match key {
                Some(key) => key.subject(),
                None => previous.subject,
            },
        },
        google_service_account: previous.google_service_account,
        db_user: previous.db_user,
        secret_name: Some(secret_name(fc)),
        expires_at: previous.expires_at,
        last_refresh_time: previous.last_refresh_time,
        next_refresh_time: Some(time(retry_at)),
        failure_count: previous.failure_count.saturating_add(1),
        last_failure_time: Some(time(now)),
        last_failure_reason: Some(reason.to_owned()),
        injection_hash: previous.injection_hash.clone(),
    }
}

/// Status when the Secret's name is taken by someone else.
pub fn conflict_status(fc: &FederatedCredential, now: Timestamp) -> FederatedCredentialStatus {
    let previous = fc.status.clone().unwrap_or_default();
    let mut conditions = previous.conditions.clone();
    let name = secret_name(fc);
    set_condition(
        &mut conditions,
        READY,
        false,
        SECRET_CONFLICT,
        format!(
            "Secret {name} exists and is not owned by this FederatedCredential; fedcred will not overwrite it. Delete or rename that Secret, or set spec.secret.name to another name"
        ),
        fc.metadata.generation,
        now,
    );
    FederatedCredentialStatus {
        conditions,
        observed_generation: fc.metadata.generation,
        secret_name: Some(name),
        ..previous
    }
}

/// Status of a resource whose exchange happens in each pod (`exchange: Pod`): Ready, since
/// there is nothing for the controller to do, and saying where the tokens come from. Nothing
/// about a token: the controller never sees one, and no Secret is named.
pub fn in_pod_status(fc: &FederatedCredential, now: Timestamp) -> FederatedCredentialStatus {
    let previous = fc.status.clone().unwrap_or_default();
    let mut conditions = previous.conditions;
    let generation = fc.metadata.generation;
    let role = fc
        .spec
        .aws
        .as_ref()
        .and_then(|aws| aws.controller_identity.as_ref())
        .and_then(|c| c.role_arn.as_deref());
    set_condition(
        &mut conditions,
        READY,
        true,
        EXCHANGE_IN_POD,
        format!(
            "the exchange happens in each pod that uses this resource (spec.exchange: Pod): its \
             fedcred agent sidecar presents the pod's own AWS credentials{} to Google and keeps \
             the token in memory; no Secret is written",
            role.map(|r| format!(" chained into {r}"))
                .unwrap_or_default()
        ),
        generation,
        now,
    );
    remove_condition(&mut conditions, REFRESH_FAILING);
    FederatedCredentialStatus {
        conditions,
        observed_generation: generation,
        identity: Some(match role {
            Some(role) => format!("in pod, as {role}"),
            None => "in pod, the pod's own role".to_owned(),
        }),
        injection_hash: previous.injection_hash,
        ..FederatedCredentialStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Reason;
    use crate::exchange::{IdentityKey, IdentitySource};
    use crate::sensitive::Sensitive;

    fn fc() -> FederatedCredential {
        let mut fc: FederatedCredential = serde_json::from_value(serde_json::json!({
            "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
            "metadata": {"name": "orders-db", "namespace": "shop", "uid": "uid-1", "generation": 2},
            "spec": {
                "aws": {"serviceAccount": {"name": "orders-api"}},
                "google": {"audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/aws",
                           "serviceAccount": "orders-api@acme-shop.iam.gserviceaccount.com"},
                "secret": {"labels": {"team": "orders"}, "annotations": {"note": "x"}}
            }
        }))
        .unwrap();
        fc.status = None;
        fc
    }

    fn issued() -> Issued {
        Issued {
            access_token: Sensitive::new("ya29.token"),
            expires_at: "2026-01-01T01:00:00Z".parse().unwrap(),
            issued_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            principal_arn: Some(
                "arn:aws:sts::123456789012:assumed-role/shop/fedcred.shop.orders-api".into(),
            ),
            subject: None,
            service_account: Some("orders-api@acme-shop.iam.gserviceaccount.com".into()),
            db_user: Some("orders-api@acme-shop.iam".into()),
            project_id: Some("acme-shop".into()),
            scopes: vec!["https://www.googleapis.com/auth/cloud-platform".into()],
        }
    }

    fn key() -> IdentityKey {
        IdentityKey {
            namespace: "shop".into(),
            source: IdentitySource::ServiceAccount {
                name: "orders-api".into(),
                role_arn: None,
            },
            region: "us-east-1".into(),
            aws_sts_endpoint: None,
            audience: "aud".into(),
            service_account: None,
            delegates: vec![],
            scopes: vec![],
            lifetime_seconds: 3600,
            sts_url: String::new(),
            iam_credentials_url: String::new(),
        }
    }

    fn text(secret: &Secret, key: &str) -> String {
        String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
    }

    #[test]
    fn the_secret_carries_the_documented_keys_labels_and_owner() {
        let s = desired_secret(&fc(), &issued());
        assert_eq!(s.metadata.name.as_deref(), Some("orders-db"));
        assert_eq!(text(&s, "access_token"), "ya29.token");
        assert_eq!(text(&s, "expiry"), "2026-01-01T01:00:00Z");
        assert_eq!(text(&s, "token_type"), "Bearer");
        assert_eq!(
            text(&s, "service_account"),
            "orders-api@acme-shop.iam.gserviceaccount.com"
        );
        assert_eq!(text(&s, "db_user"), "orders-api@acme-shop.iam");
        assert_eq!(text(&s, "project_id"), "acme-shop");
        assert_eq!(
            text(&s, "scopes"),
            "https://www.googleapis.com/auth/cloud-platform"
        );
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], "fedcred");
        assert_eq!(labels["team"], "orders");
        assert_eq!(s.metadata.annotations.as_ref().unwrap()["note"], "x");
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-1", Some(true))
        );
    }

    #[test]
    fn secret_state_tells_ours_edited_foreign_and_missing_apart() {
        let fc = fc();
        let seen = |s: &Secret| secret_state(&fc, Some(&SecretSummary::of(s)));
        let mut s = desired_secret(&fc, &issued());
        assert_eq!(secret_state(&fc, None), SecretState::Missing);
        assert_eq!(seen(&s), SecretState::Ours { intact: true });
        s.data
            .as_mut()
            .unwrap()
            .insert("access_token".into(), ByteString(b"edited".to_vec()));
        assert_eq!(seen(&s), SecretState::Ours { intact: false });
        let mut emptied = desired_secret(&fc, &issued());
        emptied.data = None;
        assert_eq!(seen(&emptied), SecretState::Ours { intact: false });
        let mut owner = s.metadata.owner_references.clone().unwrap();
        owner[0].controller = None;
        s.metadata.owner_references = Some(owner.clone());
        assert_eq!(seen(&s), SecretState::ForeignOwner, "owned, not controlled");
        owner[0].controller = Some(true);
        owner[0].uid = "uid-2".into();
        s.metadata.owner_references = Some(owner);
        assert_eq!(seen(&s), SecretState::ForeignOwner, "another resource's");
        s.metadata.owner_references = None;
        assert_eq!(seen(&s), SecretState::ForeignOwner);
    }

    #[test]
    fn the_summary_keeps_no_token() {
        let fc = fc();
        let summary = SecretSummary::of(&desired_secret(&fc, &issued()));
        assert_eq!(
            summary,
            SecretSummary {
                controller_uid: Some("uid-1".into()),
                intact: true
            }
        );
        let shown = format!("{summary:?}");
        assert!(!shown.contains(issued().access_token.expose()), "{shown}");
    }

    #[test]
    fn an_unlabelled_secret_of_the_same_name_is_foreign_not_missing() {
        // The cache holds only labelled Secrets; a hand-made Secret named like the resource
        // is found by listing and must be reported, not written over and adopted.
        let fc = fc();
        let foreign = ObjectMeta {
            name: Some("orders-db".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(
            uncached_secret_state(&fc, Some(&foreign)),
            SecretState::ForeignOwner
        );
        assert_eq!(uncached_secret_state(&fc, None), SecretState::Missing);
        let ours = desired_secret(&fc, &issued()).metadata;
        assert_eq!(
            uncached_secret_state(&fc, Some(&ours)),
            SecretState::Missing,
            "our own Secret the cache has not seen yet is written again, as before"
        );
    }

    #[test]
    fn success_then_failure_keeps_ready_while_the_token_lives() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut fc = fc();
        let ok = success_status(
            &fc,
            &key(),
            &issued(),
            "2026-01-01T00:30:00Z".parse().unwrap(),
            now,
        );
        assert_eq!(ok.conditions[0].status, "True");
        assert_eq!(ok.observed_generation, Some(2));
        assert_eq!(ok.identity.as_deref(), Some("ServiceAccount/orders-api"));
        fc.status = Some(ok);
        let later: Timestamp = "2026-01-01T00:31:00Z".parse().unwrap();
        let err = ExchangeError::new(Reason::Upstream, "Google STS answered HTTP 503");
        let failing = failure_status(
            &fc,
            Some(&key()),
            &err,
            "2026-01-01T00:31:05Z".parse().unwrap(),
            later,
        );
        let ready = failing
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.0),
            ("True", now)
        );
        let failing_cond = failing
            .conditions
            .iter()
            .find(|c| c.type_ == REFRESH_FAILING)
            .unwrap();
        assert_eq!(failing_cond.reason, "Upstream");
        assert_eq!(failing.failure_count, 1);
        assert_eq!(failing.expires_at, fc.status.as_ref().unwrap().expires_at);
        fc.status = Some(failing);
        let after_expiry: Timestamp = "2026-01-01T01:00:01Z".parse().unwrap();
        let lapsed = failure_status(&fc, Some(&key()), &err, after_expiry, after_expiry);
        let ready = lapsed.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Upstream")
        );
        assert_eq!(lapsed.failure_count, 2);
    }

    #[test]
    fn first_failure_is_not_ready_and_names_the_principal() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let err = ExchangeError::new(Reason::AttributeConditionRejected, "rejected")
            .presented_by(Some("arn:aws:sts::1:assumed-role/r/s"));
        let st = failure_status(&fc(), Some(&key()), &err, now, now);
        let ready = &st.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "AttributeConditionRejected")
        );
        assert!(ready.message.contains("arn:aws:sts::1:assumed-role/r/s"));
        assert_eq!(
            st.aws_principal_arn.as_deref(),
            Some("arn:aws:sts::1:assumed-role/r/s")
        );
    }

    #[test]
    fn a_kubernetes_subject_lands_in_status_subject_not_in_the_aws_principal() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let subject = "system:serviceaccount:shop:orders-api";
        let key = IdentityKey {
            source: IdentitySource::KubernetesToken {
                name: "orders-api".into(),
                audience: "aud".into(),
                expiration_seconds: 600,
            },
            region: String::new(),
            ..key()
        };
        let err = ExchangeError::new(Reason::AttributeConditionRejected, "rejected")
            .presented_by(Some(subject));
        let st = failure_status(&fc(), Some(&key), &err, now, now);
        assert_eq!(st.subject.as_deref(), Some(subject));
        assert_eq!(st.aws_principal_arn, None);
        assert!(
            st.conditions[0]
                .message
                .starts_with(&format!("principal {subject}: ")),
            "{}",
            st.conditions[0].message
        );
        // Before Google answers at all (the TokenRequest failed), the key names the subject.
        let early = ExchangeError::new(Reason::TokenRequestFailed, "refused");
        let st = failure_status(&fc(), Some(&key), &early, now, now);
        assert_eq!(st.subject.as_deref(), Some(subject));
        let issued = Issued {
            principal_arn: None,
            subject: Some(subject.into()),
            ..issued()
        };
        let ok = success_status(&fc(), &key, &issued, now, now);
        assert_eq!(ok.subject.as_deref(), Some(subject));
        assert_eq!(ok.aws_principal_arn, None);
        assert_eq!(
            ok.identity.as_deref(),
            Some("ServiceAccount/orders-api token")
        );
    }

    #[test]
    fn conflict_says_what_to_do() {
        let st = conflict_status(&fc(), "2026-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(st.conditions[0].reason, SECRET_CONFLICT);
        assert!(st.conditions[0].message.contains("set spec.secret.name"));
    }
}

//! The webhook's TLS material kept in a Secret, so that no cert-manager is needed: a CA and a
//! serving certificate signed by it, renewed before they expire, and the CA kept as the
//! `caBundle` of the MutatingWebhookConfiguration.
//!
//! [`decide`] is pure: from what the Secret holds, the wanted names and the time it says
//! whether to keep the material, renew the serving certificate under the same CA, or renew
//! everything. [`ensure`] applies it. Every write is a create or a replace with the
//! resourceVersion read, so two replicas never overwrite each other: the loser re-reads and
//! uses the winner's material.
//!
//! When each certificate ends is written in annotations when it is issued
//! ([`CA_NOT_AFTER`], [`NOT_AFTER`]), with the names of the serving certificate ([`NAMES`]).
//!
//! The Secret is owned by the MutatingWebhookConfiguration that trusts its CA
//! (`set_owner`): when `helm uninstall` or `kubectl delete` removes the configuration, the
//! garbage collector removes the CA and key nobody trusts any more.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, Resource};

use super::Error;
use super::tls::{
    CertBundle, Issued, ReloadingCert, certified_key, new_ca, sign_serving, trusted_for,
};

/// Key of the CA certificate in the Secret.
pub const CA_CRT: &str = "ca.crt";
/// Key of the CA's private key in the Secret.
pub const CA_KEY: &str = "ca.key";
/// Key of the serving certificate in the Secret.
pub const TLS_CRT: &str = "tls.crt";
/// Key of the serving certificate's private key in the Secret.
pub const TLS_KEY: &str = "tls.key";
/// Annotation: when the CA certificate expires (RFC 3339).
pub const CA_NOT_AFTER: &str = "fedcred.io/ca-not-after";
/// Annotation: when the serving certificate expires (RFC 3339).
pub const NOT_AFTER: &str = "fedcred.io/not-after";
/// Annotation: the serving certificate's names, comma-separated.
pub const NAMES: &str = "fedcred.io/names";

/// The serving certificate is renewed this long before it expires.
pub const SERVING_RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(30 * 24);
/// The CA (and with it everything) is renewed this long before it expires.
pub const CA_RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(90 * 24);
/// How often [`keep_current`] checks the material.
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// How soon [`keep_current`] tries again after a failure.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Attempts at writing before giving up on conflicts.
const ATTEMPTS: usize = 5;

/// Where the material lives and who trusts it.
#[derive(Clone, Debug)]
pub struct CertSettings {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub secret: String,
    /// Name of the MutatingWebhookConfiguration whose `caBundle` is kept.
    pub webhook_configuration: String,
    /// DNS names or IPs of the serving certificate.
    pub names: Vec<String>,
}

/// What to do with the stored material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    /// Issue a new serving certificate with the stored CA.
    RenewServing,
    /// Issue a new CA and serving certificate.
    RenewAll,
}

/// The material read from the Secret: each part only when complete and usable.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub ca: Option<Issued>,
    pub serving: Option<(Issued, Vec<String>)>,
}

impl Stored {
    /// Reads the four keys and the annotations of a Secret.
    pub fn from_data(
        data: &BTreeMap<String, ByteString>,
        annotations: &BTreeMap<String, String>,
    ) -> Self {
        let text = |key: &str| {
            data.get(key)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .filter(|s| !s.trim().is_empty())
        };
        let when = |key: &str| {
            annotations
                .get(key)
                .and_then(|v| v.parse::<Timestamp>().ok())
        };
        let ca = match (text(CA_CRT), text(CA_KEY), when(CA_NOT_AFTER)) {
            (Some(cert_pem), Some(key_pem), Some(not_after))
                if ca_key_matches(&cert_pem, &key_pem) =>
            {
                Some(Issued {
                    cert_pem,
                    key_pem,
                    not_after,
                })
            }
            _ => None,
        };
        let names = annotations.get(NAMES).map(|v| split_names(v));
        let serving = match (text(TLS_CRT), text(TLS_KEY), when(NOT_AFTER), names) {
            (Some(cert_pem), Some(key_pem), Some(not_after), Some(names))
                if certified_key(&cert_pem, &key_pem).is_ok() =>
            {
                Some((
                    Issued {
                        cert_pem,
                        key_pem,
                        not_after,
                    },
                    names,
                ))
            }
            _ => None,
        };
        Stored { ca, serving }
    }

    fn from_secret(secret: &Secret) -> Self {
        Stored::from_data(
            secret.data.as_ref().unwrap_or(&BTreeMap::new()),
            secret
                .metadata
                .annotations
                .as_ref()
                .unwrap_or(&BTreeMap::new()),
        )
    }

    fn bundle(&self) -> Option<CertBundle> {
        let (ca, (serving, _)) = (self.ca.as_ref()?, self.serving.as_ref()?);
        Some(to_serve(ca, serving))
    }
}

/// What is served from a CA and a serving certificate it signed.
fn to_serve(ca: &Issued, serving: &Issued) -> CertBundle {
    CertBundle {
        ca_pem: ca.cert_pem.clone(),
        cert_pem: serving.cert_pem.clone(),
        key_pem: serving.key_pem.clone(),
        not_after: serving.not_after,
        ca_not_after: ca.not_after,
    }
}

/// Whether `key_pem` is the key of the certificate `cert_pem`: the certificate carries the
/// public key's bytes verbatim in its subject public key info.
fn ca_key_matches(cert_pem: &str, key_pem: &str) -> bool {
    use rcgen::PublicKeyData;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let (Ok(cert), Ok(key)) = (
        CertificateDer::from_pem_slice(cert_pem.as_bytes()),
        rcgen::KeyPair::from_pem(key_pem),
    ) else {
        return false;
    };
    let public = key.der_bytes();
    !public.is_empty() && cert.windows(public.len()).any(|w| w == public)
}

fn split_names(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

fn same_names(a: &[String], b: &[String]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

/// Whether `stored` can go on serving `names` at `now`. Pure.
pub fn decide(stored: &Stored, names: &[String], now: Timestamp) -> Decision {
    let Some(ca) = &stored.ca else {
        return Decision::RenewAll;
    };
    if ca
        .not_after
        .checked_sub(CA_RENEW_BEFORE)
        .unwrap_or(ca.not_after)
        <= now
    {
        return Decision::RenewAll;
    }
    match &stored.serving {
        Some((serving, served))
            if serving
                .not_after
                .checked_sub(SERVING_RENEW_BEFORE)
                .unwrap_or(serving.not_after)
                > now
                && same_names(served, names)
                && trusted_for(&ca.cert_pem, &serving.cert_pem, names, now) =>
        {
            Decision::Keep
        }
        // Missing, near its end, for other names, or not one the API server would accept
        // with this CA in the `caBundle` (signed by another CA, the annotations not matching
        // the certificate): a new one under the stored CA.
        _ => Decision::RenewServing,
    }
}

/// New material as `decision` says (not [`Decision::Keep`]), reusing the stored CA for
/// [`Decision::RenewServing`]: what to store, and what to serve.
fn issue(
    decision: Decision,
    stored: &Stored,
    names: &[String],
    now: Timestamp,
) -> Result<(Stored, CertBundle), Error> {
    let ca = match (decision, &stored.ca) {
        (Decision::RenewServing, Some(ca)) => ca.clone(),
        _ => new_ca(now)?,
    };
    let serving = sign_serving(&ca.key_pem, names, now)?;
    let bundle = to_serve(&ca, &serving);
    let fresh = Stored {
        ca: Some(ca),
        serving: Some((serving, names.to_vec())),
    };
    Ok((fresh, bundle))
}

/// Writes `stored` (complete) into `secret`, keeping its other metadata.
fn fill(secret: &mut Secret, stored: &Stored) {
    let (Some(ca), Some((serving, names))) = (&stored.ca, &stored.serving) else {
        return;
    };
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        (CA_CRT, &ca.cert_pem),
        (CA_KEY, &ca.key_pem),
        (TLS_CRT, &serving.cert_pem),
        (TLS_KEY, &serving.key_pem),
    ] {
        data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
    }
    let annotations = secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    annotations.insert(CA_NOT_AFTER.to_owned(), ca.not_after.to_string());
    annotations.insert(NOT_AFTER.to_owned(), serving.not_after.to_string());
    annotations.insert(NAMES.to_owned(), names.join(","));
}

fn api_err(what: &str, source: kube::Error) -> Error {
    Error::Api {
        object: what.to_owned(),
        source,
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// [`ensure_at`] now.
pub async fn ensure(client: &Client, settings: &CertSettings) -> Result<CertBundle, Error> {
    ensure_at(client, settings, Timestamp::now()).await
}

/// Makes the Secret hold usable material for `settings.names` at `now`, renewing what
/// [`decide`] says, then makes the MutatingWebhookConfiguration trust its CA. Returns the
/// material to serve.
pub async fn ensure_at(
    client: &Client,
    settings: &CertSettings,
    now: Timestamp,
) -> Result<CertBundle, Error> {
    let owner = configuration_owner(client, &settings.webhook_configuration).await?;
    let bundle = ensure_secret(client, settings, owner.as_ref(), now).await?;
    sync_ca_bundle(client, &settings.webhook_configuration, &bundle.ca_pem).await?;
    Ok(bundle)
}

/// The owner reference to the MutatingWebhookConfiguration `name`, if it exists.
async fn configuration_owner(client: &Client, name: &str) -> Result<Option<OwnerReference>, Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = api
        .get_opt(name)
        .await
        .map_err(|e| api_err(&format!("MutatingWebhookConfiguration {name}"), e))?;
    // An owner, not the controller, and not blocking the configuration's deletion (which
    // would need more RBAC than `update`).
    Ok(config.and_then(|c| c.owner_ref(&())))
}

/// Makes `owner` the only reference in `meta` to a MutatingWebhookConfiguration of its name
/// (one to an earlier configuration of that name is replaced; references to anything else are
/// kept). Without an owner nothing changes: the configuration may be on its way in. Returns
/// whether `meta` changed. Pure.
fn set_owner(meta: &mut ObjectMeta, owner: Option<&OwnerReference>) -> bool {
    let Some(owner) = owner else {
        return false;
    };
    let references = meta.owner_references.get_or_insert_with(Vec::new);
    let same_object = |r: &OwnerReference| r.kind == owner.kind && r.name == owner.name;
    if references
        .iter()
        .filter(|r| same_object(r))
        .eq(std::iter::once(owner))
    {
        return false;
    }
    references.retain(|r| !same_object(r));
    references.push(owner.clone());
    true
}

async fn ensure_secret(
    client: &Client,
    settings: &CertSettings,
    owner: Option<&OwnerReference>,
    now: Timestamp,
) -> Result<CertBundle, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let what = format!("Secret {}/{}", settings.namespace, settings.secret);
    for _ in 0..ATTEMPTS {
        let existing = api
            .get_opt(&settings.secret)
            .await
            .map_err(|e| api_err(&what, e))?;
        let stored = existing
            .as_ref()
            .map(Stored::from_secret)
            .unwrap_or_default();
        let decision = decide(&stored, &settings.names, now);
        let kept = match (decision, stored.bundle()) {
            (Decision::Keep, Some(bundle)) => Some(bundle),
            _ => None,
        };
        let renewed = kept.is_none();
        let creating = existing.is_none();
        let mut secret = existing.unwrap_or_else(|| Secret {
            metadata: ObjectMeta {
                name: Some(settings.secret.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            ..Secret::default()
        });
        let owner_changed = set_owner(&mut secret.metadata, owner);
        let bundle = match kept {
            Some(bundle) if !owner_changed => return Ok(bundle),
            // Kept material: written again only to point the Secret at its configuration.
            Some(bundle) => bundle,
            None => {
                let (fresh, bundle) = issue(decision, &stored, &settings.names, now)?;
                fill(&mut secret, &fresh);
                bundle
            }
        };
        let params = PostParams::default();
        let written = if creating {
            api.create(&params, &secret).await
        } else {
            api.replace(&settings.secret, &params, &secret).await
        };
        match written {
            Ok(_) => {
                if renewed {
                    tracing::info!(secret = %what, ?decision, "webhook certificates written");
                }
                return Ok(bundle);
            }
            // Another replica wrote first: read and use its material. Or the Secret was
            // deleted since it was read (by the garbage collector, its configuration gone): read
            // again and create it.
            Err(e) if is_conflict(&e) || is_not_found(&e) => continue,
            Err(e) => return Err(api_err(&what, e)),
        }
    }
    Err(Error::Conflict {
        object: what,
        attempts: ATTEMPTS,
    })
}

/// Sets the `caBundle` of every webhook of the MutatingWebhookConfiguration `name` to
/// `ca_pem`. A missing configuration is skipped (the chart creates it). Returns whether it
/// was changed.
pub async fn sync_ca_bundle(client: &Client, name: &str, ca_pem: &str) -> Result<bool, Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let what = format!("MutatingWebhookConfiguration {name}");
    let wanted = ByteString(ca_pem.as_bytes().to_vec());
    for _ in 0..ATTEMPTS {
        let Some(mut config) = api.get_opt(name).await.map_err(|e| api_err(&what, e))? else {
            tracing::warn!(
                configuration = name,
                "no such MutatingWebhookConfiguration: caBundle not set"
            );
            return Ok(false);
        };
        let mut changed = false;
        for webhook in config.webhooks.iter_mut().flatten() {
            if webhook.client_config.ca_bundle.as_ref() != Some(&wanted) {
                webhook.client_config.ca_bundle = Some(wanted.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(false);
        }
        match api.replace(name, &PostParams::default(), &config).await {
            Ok(_) => {
                tracing::info!(configuration = name, "webhook caBundle updated");
                return Ok(true);
            }
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(api_err(&what, e)),
        }
    }
    Err(Error::Conflict {
        object: what,
        attempts: ATTEMPTS,
    })
}

/// Calls [`ensure`] every [`CHECK_EVERY`] (a minute after a failure), and whenever the
/// MutatingWebhookConfiguration appears or changes (created after the controller started, or
/// re-applied without a `caBundle` by `helm upgrade` or a GitOps sync), and serves what it
/// returns through `cert`. Runs until dropped.
pub async fn keep_current(client: Client, settings: CertSettings, cert: Arc<ReloadingCert>) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};

    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let changes = watcher(
        configs,
        watcher::Config::default()
            .fields(&format!("metadata.name={}", settings.webhook_configuration)),
    )
    .default_backoff()
    .applied_objects();
    let mut changes = std::pin::pin!(changes);
    let mut next_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_check) => {}
            change = changes.next() => match change {
                Some(Ok(config)) if !needs_ca_bundle(&config, cert.ca_pem().as_deref()) => continue,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "watching the MutatingWebhookConfiguration");
                    continue;
                }
                None => {}
            },
        }
        let wait = match ensure(&client, &settings).await {
            Ok(bundle) => match cert.set(&bundle) {
                Ok(()) => CHECK_EVERY,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook certificate unusable");
                    RETRY_AFTER
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "keeping webhook certificates current failed");
                RETRY_AFTER
            }
        };
        next_check = tokio::time::Instant::now() + wait;
    }
}

/// Whether some webhook of `config` lacks `ca_pem` as its `caBundle` (always, when the CA
/// is not known yet).
pub fn needs_ca_bundle(config: &MutatingWebhookConfiguration, ca_pem: Option<&str>) -> bool {
    let Some(ca_pem) = ca_pem else {
        return true;
    };
    config.webhooks.iter().flatten().any(|w| {
        w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca_pem.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_needs_the_ca_until_every_webhook_has_it() {
        let config = |bundles: &[Option<&str>]| -> MutatingWebhookConfiguration {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "fedcred"},
                "webhooks": bundles.iter().enumerate().map(|(i, b)| serde_json::json!({
                    "name": format!("w{i}.fedcred.io"),
                    "clientConfig": match b {
                        Some(pem) => serde_json::json!({"url": "https://127.0.0.1:9443/mutate", "caBundle": base64_of(pem)}),
                        None => serde_json::json!({"url": "https://127.0.0.1:9443/mutate"}),
                    },
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                })).collect::<Vec<_>>(),
            }))
            .unwrap()
        };
        let ca = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n";
        assert!(
            needs_ca_bundle(&config(&[None]), Some(ca)),
            "re-applied without it"
        );
        assert!(needs_ca_bundle(&config(&[Some(ca), Some("old")]), Some(ca)));
        assert!(!needs_ca_bundle(&config(&[Some(ca), Some(ca)]), Some(ca)));
        assert!(
            needs_ca_bundle(&config(&[Some(ca)]), None),
            "CA not known yet"
        );
    }

    fn base64_of(text: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| (*n).to_owned()).collect()
    }

    fn fresh(now: Timestamp, list: &[&str]) -> Stored {
        issue(Decision::RenewAll, &Stored::default(), &names(list), now)
            .unwrap()
            .0
    }

    fn days(n: i64) -> SignedDuration {
        SignedDuration::from_hours(24 * n)
    }

    fn round_trip(stored: &Stored) -> Stored {
        let mut secret = Secret::default();
        fill(&mut secret, stored);
        Stored::from_secret(&secret)
    }

    #[test]
    fn nothing_stored_renews_all() {
        let now = Timestamp::now();
        assert_eq!(
            decide(&Stored::default(), &names(&["a.svc"]), now),
            Decision::RenewAll
        );
    }

    #[test]
    fn fresh_material_is_kept_in_any_name_order() {
        let now = Timestamp::now();
        let stored = round_trip(&fresh(now, &["a.svc", "127.0.0.1"]));
        assert!(stored.ca.is_some() && stored.serving.is_some());
        assert_eq!(
            decide(&stored, &names(&["127.0.0.1", "a.svc"]), now),
            Decision::Keep
        );
        // Still kept 300 days on: the CA ends after 365 days, renewed 90 days before.
        assert_eq!(
            decide(&stored, &names(&["a.svc", "127.0.0.1"]), now + days(270)),
            Decision::Keep
        );
    }

    #[test]
    fn changed_names_or_expiring_serving_cert_renews_serving_only() {
        let now = Timestamp::now();
        let mut stored = round_trip(&fresh(now, &["a.svc"]));
        assert_eq!(
            decide(&stored, &names(&["b.svc"]), now),
            Decision::RenewServing
        );
        let ca_end = stored.ca.as_ref().unwrap().not_after;
        stored.ca.as_mut().unwrap().not_after = ca_end + days(365);
        assert_eq!(
            decide(&stored, &names(&["a.svc"]), now + days(340)),
            Decision::RenewServing
        );
        stored.serving = None;
        assert_eq!(
            decide(&stored, &names(&["a.svc"]), now),
            Decision::RenewServing
        );
    }

    #[test]
    fn expiring_or_broken_ca_renews_all() {
        let now = Timestamp::now();
        let stored = round_trip(&fresh(now, &["a.svc"]));
        assert_eq!(
            decide(&stored, &names(&["a.svc"]), now + days(280)),
            Decision::RenewAll
        );
        let mut secret = Secret::default();
        fill(&mut secret, &stored);
        secret
            .data
            .as_mut()
            .unwrap()
            .insert(CA_KEY.to_owned(), ByteString(b"garbage".to_vec()));
        let broken = Stored::from_secret(&secret);
        assert!(broken.ca.is_none());
        // A CA certificate with another CA's key is no CA either.
        let other = fresh(now, &["a.svc"]);
        secret.data.as_mut().unwrap().insert(
            CA_KEY.to_owned(),
            ByteString(other.ca.unwrap().key_pem.into_bytes()),
        );
        assert!(Stored::from_secret(&secret).ca.is_none());
        assert_eq!(decide(&broken, &names(&["a.svc"]), now), Decision::RenewAll);
        secret.metadata.annotations = None;
        assert_eq!(
            decide(&Stored::from_secret(&secret), &names(&["a.svc"]), now),
            Decision::RenewAll
        );
    }

    #[test]
    fn a_serving_certificate_the_ca_did_not_sign_or_not_for_the_names_is_renewed() {
        let now = Timestamp::now();
        let ours = fresh(now, &["a.svc"]);
        let theirs = fresh(now, &["a.svc"]);
        let kept = round_trip(&ours);
        assert_eq!(decide(&kept, &names(&["a.svc"]), now), Decision::Keep);

        // A serving pair from another CA (restored from another cluster's Secret, edited by
        // hand): it makes a TLS configuration, but the API server trusting our CA refuses it.
        let mut secret = Secret::default();
        fill(&mut secret, &ours);
        let (serving, _) = theirs.serving.as_ref().unwrap();
        let data = secret.data.as_mut().unwrap();
        data.insert(
            TLS_CRT.to_owned(),
            ByteString(serving.cert_pem.clone().into_bytes()),
        );
        data.insert(
            TLS_KEY.to_owned(),
            ByteString(serving.key_pem.clone().into_bytes()),
        );
        let foreign = Stored::from_secret(&secret);
        assert!(foreign.ca.is_some() && foreign.serving.is_some());
        assert_eq!(
            decide(&foreign, &names(&["a.svc"]), now),
            Decision::RenewServing
        );

        // Annotations that claim other names, or a later end, than the certificate has.
        let mut secret = Secret::default();
        fill(&mut secret, &fresh(now, &["b.svc"]));
        let annotations = secret.metadata.annotations.as_mut().unwrap();
        annotations.insert(NAMES.to_owned(), "a.svc".to_owned());
        let misnamed = Stored::from_secret(&secret);
        assert_eq!(
            decide(&misnamed, &names(&["a.svc"]), now),
            Decision::RenewServing
        );
        let mut secret = Secret::default();
        fill(&mut secret, &ours);
        let not_after = (now + days(2000)).to_string();
        let annotations = secret.metadata.annotations.as_mut().unwrap();
        annotations.insert(NOT_AFTER.to_owned(), not_after.clone());
        annotations.insert(CA_NOT_AFTER.to_owned(), not_after);
        let overstated = Stored::from_secret(&secret);
        assert_eq!(
            decide(&overstated, &names(&["a.svc"]), now + days(400)),
            Decision::RenewServing,
            "the certificate itself ended after 365 days"
        );
    }

    #[test]
    fn renewing_serving_keeps_the_ca_and_chains_to_it() {
        let now = Timestamp::now();
        let stored = fresh(now, &["a.svc"]);
        let (renewed, new) =
            issue(Decision::RenewServing, &stored, &names(&["b.svc"]), now).unwrap();
        let old = stored.bundle().unwrap();
        assert_eq!(old.ca_pem, new.ca_pem);
        assert_ne!(old.cert_pem, new.cert_pem);
        certified_key(&new.cert_pem, &new.key_pem).unwrap();
        assert!(trusted_for(
            &old.ca_pem,
            &new.cert_pem,
            &names(&["b.svc"]),
            now
        ));
        assert!(!trusted_for(
            &old.ca_pem,
            &new.cert_pem,
            &names(&["a.svc"]),
            now
        ));
        // What is served is what is stored.
        let stored_new = renewed.bundle().unwrap();
        assert_eq!(
            (stored_new.ca_pem, stored_new.cert_pem, stored_new.key_pem),
            (new.ca_pem, new.cert_pem, new.key_pem)
        );
        let (_, all) = issue(Decision::RenewAll, &stored, &names(&["a.svc"]), now).unwrap();
        assert_ne!(all.ca_pem, old.ca_pem);
    }

    fn reference(kind: &str, name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "admissionregistration.k8s.io/v1".to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            ..OwnerReference::default()
        }
    }

    #[test]
    fn the_secret_is_owned_by_the_current_configuration_of_its_name_only() {
        let config: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "fedcred", "uid": "uid-2"},
        }))
        .unwrap();
        let owner = config.owner_ref(&()).unwrap();
        assert_eq!(
            owner,
            reference("MutatingWebhookConfiguration", "fedcred", "uid-2")
        );
        assert_eq!(owner.controller, None, "not its controller");
        assert_eq!(owner.block_owner_deletion, None, "never blocks deletion");
        let unsaved = MutatingWebhookConfiguration::default();
        assert_eq!(unsaved.owner_ref(&()), None, "no uid, no reference");

        // A Secret without owners gets the reference; a second call changes nothing.
        let mut meta = ObjectMeta::default();
        assert!(set_owner(&mut meta, Some(&owner)));
        assert_eq!(meta.owner_references, Some(vec![owner.clone()]));
        assert!(!set_owner(&mut meta, Some(&owner)));

        // A reference to an earlier configuration of the name is replaced; others are kept.
        let other = reference("MutatingWebhookConfiguration", "other", "uid-9");
        let unrelated = reference("ConfigMap", "fedcred", "uid-7");
        let mut meta = ObjectMeta {
            owner_references: Some(vec![
                other.clone(),
                reference("MutatingWebhookConfiguration", "fedcred", "uid-1"),
                unrelated.clone(),
                reference("MutatingWebhookConfiguration", "fedcred", "uid-2"),
            ]),
            ..ObjectMeta::default()
        };
        assert!(set_owner(&mut meta, Some(&owner)));
        assert_eq!(
            meta.owner_references,
            Some(vec![other, unrelated, owner.clone()])
        );

        // No configuration (yet): the references stay as they are.
        let mut meta = ObjectMeta {
            owner_references: Some(vec![reference(
                "MutatingWebhookConfiguration",
                "fedcred",
                "uid-1",
            )]),
            ..ObjectMeta::default()
        };
        assert!(!set_owner(&mut meta, None));
        assert_eq!(meta.owner_references.as_ref().unwrap()[0].uid, "uid-1");
    }
}

//! The exchange engine: FederatedCredential spec in, Google access token out.
//!
//! [`plan`] is pure: it turns a spec and the controller's defaults into an [`IdentityKey`] (what
//! identity is asked for) and checks what only the controller can check (policy, region).
//! [`Engine::token`] runs the plan through the adapters (AWS credentials, subject token, Google
//! STS, impersonation) with single-flight and reuse: concurrent callers for one identity share
//! one exchange, and a cached token with enough life left is handed out again, so Google sees
//! one exchange per identity per refresh rather than one per resource.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jiff::Timestamp;

use crate::api::{ALLOYDB_LOGIN_SCOPE, CLOUD_PLATFORM_SCOPE, FederatedCredentialSpec};
use crate::aws::{Aws, AwsIdentity};
use crate::error::{ExchangeError, Reason};
use crate::google::{self, AccessToken, GoogleClient};
use crate::secret::Secret;
use crate::subject_token::{self, SubjectTokenRequest};

/// Which AWS identity a resource presents.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AwsSource {
    /// IRSA through a ServiceAccount of the resource's namespace.
    ServiceAccount {
        name: String,
        role_arn: Option<String>,
    },
    /// The controller's own identity, optionally chained into a role.
    Controller { role_arn: Option<String> },
}

/// Everything that determines the token; equal keys may share one token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    pub namespace: String,
    pub source: AwsSource,
    pub region: String,
    pub aws_sts_endpoint: Option<String>,
    pub audience: String,
    pub service_account: Option<String>,
    pub delegates: Vec<String>,
    /// Sorted and de-duplicated.
    pub scopes: Vec<String>,
    pub lifetime_seconds: i64,
    pub sts_url: String,
    pub iam_credentials_url: String,
}

impl IdentityKey {
    /// Short description for `kubectl get` and logs, e.g. `ServiceAccount/orders-api`.
    pub fn describe(&self) -> String {
        let role = |arn: &Option<String>| {
            arn.as_deref()
                .and_then(|a| a.rsplit('/').next())
                .map(str::to_owned)
        };
        match &self.source {
            AwsSource::ServiceAccount { name, role_arn } => match role(role_arn) {
                Some(r) => format!("ServiceAccount/{name} as role/{r}"),
                None => format!("ServiceAccount/{name}"),
            },
            AwsSource::Controller { role_arn } => match role(role_arn) {
                Some(r) => format!("controller as role/{r}"),
                None => "controller".to_owned(),
            },
        }
    }
}

/// Which namespaces may use the controller's own AWS identity.
#[derive(Clone, Debug, Default)]
pub struct ControllerIdentityPolicy {
    allowed: BTreeSet<String>,
    all: bool,
}

impl ControllerIdentityPolicy {
    /// `*` allows every namespace; otherwise the listed ones. Empty: none (the default).
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(namespaces: I) -> Self {
        let mut policy = ControllerIdentityPolicy::default();
        for ns in namespaces {
            let ns = ns.into();
            if ns == "*" {
                policy.all = true;
            } else if !ns.is_empty() {
                policy.allowed.insert(ns);
            }
        }
        policy
    }

    pub fn allows(&self, namespace: &str) -> bool {
        self.all || self.allowed.contains(namespace)
    }
}

/// Controller-wide settings the spec falls back to.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Region when the spec names none (environment or instance metadata).
    pub region: Option<String>,
    pub sts_url: String,
    pub iam_credentials_url: String,
    pub controller_identity: ControllerIdentityPolicy,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            region: None,
            sts_url: google::DEFAULT_STS_URL.to_owned(),
            iam_credentials_url: google::DEFAULT_IAM_CREDENTIALS_URL.to_owned(),
            controller_identity: ControllerIdentityPolicy::default(),
        }
    }
}

/// Whether `audience` is a Workload Identity provider's full resource name.
pub fn is_audience(audience: &str) -> bool {
    let Some(rest) = audience.strip_prefix("//iam.googleapis.com/projects/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let id = |s: &str| {
        (4..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    matches!(
        parts.as_slice(),
        [number, "locations", "global", "workloadIdentityPools", pool, "providers", provider]
            if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) && id(pool) && id(provider)
    )
}

/// Whether `email` is a Google service-account email.
pub fn is_service_account_email(email: &str) -> bool {
    let Some((account, domain)) = email.split_once('@') else {
        return false;
    };
    let account_ok = (1..=63).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let domain_ok = domain == "developer.gserviceaccount.com"
        || domain == "appspot.gserviceaccount.com"
        || domain
            .strip_suffix(".iam.gserviceaccount.com")
            .is_some_and(|project| {
                !project.is_empty()
                    && project.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                    })
            });
    account_ok && domain_ok
}

/// The checks the CRD's schema makes, for specs that did not pass an API server (a file given
/// to `fedcred exchange`). Each error names the field.
fn validate(spec: &FederatedCredentialSpec) -> Result<(), ExchangeError> {
    let invalid = |msg: String| Err(ExchangeError::new(Reason::InvalidSpec, msg));
    if !is_audience(&spec.google.audience) {
        return invalid(format!(
            "google.audience {:?} is not //iam.googleapis.com/projects/PROJECT_NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER",
            spec.google.audience
        ));
    }
    if let Some(sa) = spec
        .google
        .service_account
        .as_deref()
        .filter(|sa| !is_service_account_email(sa))
    {
        return invalid(format!(
            "google.serviceAccount {sa:?} is not a service-account email such as app@my-project.iam.gserviceaccount.com"
        ));
    }
    if let Some(d) = spec
        .google
        .delegates
        .iter()
        .find(|d| !is_service_account_email(d))
    {
        return invalid(format!(
            "google.delegates entry {d:?} is not a service-account email"
        ));
    }
    let role_arns = [
        (
            "aws.serviceAccount.roleArn",
            spec.aws
                .service_account
                .as_ref()
                .and_then(|s| s.role_arn.as_deref()),
        ),
        (
            "aws.controllerIdentity.roleArn",
            spec.aws
                .controller_identity
                .as_ref()
                .and_then(|c| c.role_arn.as_deref()),
        ),
    ];
    for (field, arn) in role_arns {
        if let Some(arn) = arn.filter(|a| !crate::aws::is_role_arn(a)) {
            return invalid(format!(
                "{field} {arn:?} is not an IAM role ARN such as arn:aws:iam::123456789012:role/my-role"
            ));
        }
    }
    if !(600..=43200).contains(&spec.google.token_lifetime_seconds) {
        return invalid(format!(
            "google.tokenLifetimeSeconds {} is outside 600..=43200",
            spec.google.token_lifetime_seconds
        ));
    }
    Ok(())
}

/// Resolves a spec into the identity it asks for. Pure.
pub fn plan(
    namespace: &str,
    spec: &FederatedCredentialSpec,
    defaults: &Defaults,
) -> Result<IdentityKey, ExchangeError> {
    validate(spec)?;
    let source = match (&spec.aws.service_account, &spec.aws.controller_identity) {
        (Some(sa), None) => AwsSource::ServiceAccount {
            name: sa.name.clone(),
            role_arn: sa.role_arn.clone(),
        },
        (None, Some(ci)) => {
            if !defaults.controller_identity.allows(namespace) {
                return Err(ExchangeError::new(
                    Reason::ControllerIdentityNotAllowed,
                    format!(
                        "namespace {namespace} may not use the controller's own AWS identity; use aws.serviceAccount (IRSA), or ask the cluster admin to add {namespace} to controllerIdentity.allowedNamespaces"
                    ),
                ));
            }
            AwsSource::Controller {
                role_arn: ci.role_arn.clone(),
            }
        }
        _ => {
            return Err(ExchangeError::new(
                Reason::InvalidSpec,
                "set exactly one of aws.serviceAccount and aws.controllerIdentity",
            ));
        }
    };
    let region = spec.aws.region.clone().or_else(|| defaults.region.clone()).ok_or_else(|| {
        ExchangeError::new(
            Reason::InvalidSpec,
            "no AWS region known: set aws.region, or AWS_REGION in the controller's environment",
        )
    })?;
    if !subject_token::is_region(&region) {
        return Err(ExchangeError::new(
            Reason::InvalidSpec,
            format!("aws.region {region:?} is not an AWS region code"),
        ));
    }
    let mut scopes: BTreeSet<String> = spec.google.scopes.iter().cloned().collect();
    let iam_login = spec
        .alloydb
        .as_ref()
        .is_some_and(|a| a.instances.iter().any(|i| i.auto_iam_authn));
    if iam_login {
        // The AlloyDB Auth Proxy logs in with the token; IAM login needs this scope.
        scopes.insert(ALLOYDB_LOGIN_SCOPE.to_owned());
    }
    let endpoints = spec.google.endpoints.clone().unwrap_or_default();
    Ok(IdentityKey {
        namespace: namespace.to_owned(),
        source,
        region,
        aws_sts_endpoint: spec.aws.sts_endpoint.clone(),
        audience: spec.google.audience.clone(),
        service_account: spec.google.service_account.clone(),
        delegates: spec.google.delegates.clone(),
        scopes: scopes.into_iter().collect(),
        lifetime_seconds: spec.google.token_lifetime_seconds,
        sts_url: endpoints.sts.unwrap_or_else(|| defaults.sts_url.clone()),
        iam_credentials_url: endpoints
            .iam_credentials
            .unwrap_or_else(|| defaults.iam_credentials_url.clone()),
    })
}

/// The AlloyDB IAM database user of a service account: its email without
/// `.gserviceaccount.com` (`app@my-project.iam`).
pub fn db_user(service_account: &str) -> Option<String> {
    service_account
        .strip_suffix(".gserviceaccount.com")
        .map(str::to_owned)
}

/// The project ID in a service-account email, when the email carries one.
pub fn project_id(service_account: &str) -> Option<String> {
    let domain = service_account.split_once('@')?.1;
    let project = domain
        .strip_suffix(".iam.gserviceaccount.com")
        .or_else(|| domain.strip_suffix(".appspot.gserviceaccount.com"))
        .or_else(|| {
            (domain == "appspot.gserviceaccount.com")
                .then(|| service_account.split('@').next().unwrap_or(""))
        })?;
    (!project.is_empty()).then(|| project.to_owned())
}

/// A token and what the resource's status says about it.
#[derive(Clone, Debug)]
pub struct Issued {
    pub access_token: Secret,
    pub expires_at: Timestamp,
    pub issued_at: Timestamp,
    pub principal_arn: Option<String>,
    pub service_account: Option<String>,
    pub db_user: Option<String>,
    pub project_id: Option<String>,
    /// The scopes the token was asked for.
    pub scopes: Vec<String>,
}

/// Whether a token from the shared cache may be handed out again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reuse {
    /// When it has at least this much life left.
    AtLeast(Duration),
    /// For a resource that refreshes within the last `share` (0–1) of a token's lifetime:
    /// when the token has that share plus a quarter of the rest of its own lifetime left, so
    /// a reused token is not due again at once, and a fresh one qualifies for three quarters
    /// of the part before the window (about 20 minutes of an hour-long token at the default
    /// 50 %, 27 s at 90 %). Judged by the lifetime Google gave the token, not the one the
    /// spec asked for: a federated token lives an hour whatever the spec says.
    RefreshWithin(f64),
}

impl Reuse {
    /// The life `issued` must have left to be reused.
    pub fn min_remaining(self, issued: &Issued) -> Duration {
        match self {
            Reuse::AtLeast(d) => d,
            Reuse::RefreshWithin(share) => {
                let lifetime = issued
                    .expires_at
                    .duration_since(issued.issued_at)
                    .as_secs_f64()
                    .max(0.0);
                let window = lifetime * share.clamp(0.0, 1.0);
                Duration::from_secs_f64(window + (lifetime - window) / 4.0)
            }
        }
    }

    /// Whether `issued` may be handed out at `now`.
    pub fn accepts(self, issued: &Issued, now: Timestamp) -> bool {
        issued.expires_at > now
            && issued.expires_at.duration_since(now).unsigned_abs() >= self.min_remaining(issued)
    }
}

/// How long a failed exchange answers later callers before the next one tries again, so a
/// hundred resources of one broken identity cause one call, not a hundred.
const FAILURE_SHARE: Duration = Duration::from_secs(5);

/// Whether a failed exchange recorded at `at` answers a call made at `called` and served at
/// `now`, for a caller whose own last attempt failed at `seen` (kept in whole seconds, as the
/// status keeps it). Pure.
///
/// A failure that was recorded while the call waited for it always answers: it is the
/// freshest word on the identity. An earlier one answers for [`FAILURE_SHARE`], except a
/// retrying caller's own failure (recorded within the second `seen` names): a retry answered
/// with the failure it retries would call nobody, and a resource whose token is about to
/// expire would learn that Google is back only at its retry after next.
fn shares_failure(
    at: Timestamp,
    called: Timestamp,
    now: Timestamp,
    seen: Option<Timestamp>,
) -> bool {
    if at >= called {
        return true;
    }
    if now.duration_since(at).unsigned_abs() >= FAILURE_SHARE {
        return false;
    }
    match seen {
        None => true,
        Some(seen) => at.duration_since(seen) > jiff::SignedDuration::from_secs(1),
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<(Timestamp, Result<Issued, ExchangeError>)>>>;

/// Runs exchanges with single-flight and reuse.
pub struct Engine {
    aws: Aws,
    google: GoogleClient,
    kube: Option<kube::Client>,
    slots: std::sync::Mutex<HashMap<IdentityKey, Slot>>,
}

impl Engine {
    pub fn new(aws: Aws, google: GoogleClient, kube: Option<kube::Client>) -> Self {
        Engine {
            aws,
            google,
            kube,
            slots: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn aws(&self) -> &Aws {
        &self.aws
    }

    /// A token for `key` that `reuse` accepts, exchanging only when no concurrent or recent
    /// exchange for the same identity provides one. `failed_at`: when the caller's own last
    /// attempt failed, if it did: a retry is never answered with its own failure
    /// (`shares_failure`).
    pub async fn token(
        &self,
        key: &IdentityKey,
        reuse: Reuse,
        failed_at: Option<Timestamp>,
    ) -> Result<Issued, ExchangeError> {
        let called = Timestamp::now();
        let slot = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            slots.entry(key.clone()).or_default().clone()
        };
        let mut guard = slot.lock().await;
        let now = Timestamp::now();
        if let Some((at, result)) = guard.as_ref() {
            match result {
                Ok(issued) if reuse.accepts(issued, now) => return Ok(issued.clone()),
                Err(e) if shares_failure(*at, called, now, failed_at) => {
                    return Err(e.clone());
                }
                _ => {}
            }
        }
        let result = self.exchange(key).await;
        *guard = Some((Timestamp::now(), result.clone()));
        result
    }

    /// Forgets identities whose tokens expired long ago; call now and then.
    pub fn prune(&self) {
        let now = Timestamp::now();
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.retain(|_, slot| match slot.try_lock() {
            Ok(guard) => match guard.as_ref() {
                Some((_, Ok(issued))) => issued.expires_at > now,
                Some((at, Err(_))) => now.duration_since(*at).unsigned_abs() < FAILURE_SHARE,
                None => false,
            },
            Err(_) => true, // in flight
        });
    }

    /// One full exchange, no caching.
    pub async fn exchange(&self, key: &IdentityKey) -> Result<Issued, ExchangeError> {
        let identity = self.aws_identity(key).await?;
        let principal = identity.principal_arn.as_deref();
        let subject = subject_token::build(
            &identity.credentials,
            &SubjectTokenRequest {
                region: &key.region,
                audience: &key.audience,
                endpoint: key.aws_sts_endpoint.as_deref(),
                time: SystemTime::now(),
            },
        )
        .map_err(|e| ExchangeError::new(Reason::InvalidSpec, e.to_string()))?;
        // A federated token that is only a step towards impersonation needs cloud-platform to
        // call IAM Credentials; the user's scopes go on the impersonated token.
        let iam_scope = [CLOUD_PLATFORM_SCOPE.to_owned()];
        let sts_scopes: &[String] = if key.service_account.is_some() {
            &iam_scope
        } else {
            &key.scopes
        };
        let federated = self
            .google
            .sts_exchange(&key.sts_url, &key.audience, sts_scopes, &subject)
            .await
            .map_err(|e| e.with_principal(principal))?;
        let token: AccessToken = match &key.service_account {
            None => federated,
            Some(sa) => self
                .google
                .impersonate(
                    &key.iam_credentials_url,
                    &federated.token,
                    sa,
                    &key.scopes,
                    &key.delegates,
                    Duration::from_secs(key.lifetime_seconds.max(0) as u64),
                )
                .await
                .map_err(|e| e.with_principal(principal))?,
        };
        tracing::info!(
            namespace = %key.namespace,
            identity = %key.describe(),
            principal = principal.unwrap_or("unknown"),
            service_account = key.service_account.as_deref().unwrap_or("none"),
            expires_at = %token.expires_at,
            token = %token.token.fingerprint(),
            "exchanged AWS identity for a Google token"
        );
        Ok(Issued {
            access_token: token.token,
            expires_at: token.expires_at,
            issued_at: google::truncate(Timestamp::now()),
            principal_arn: identity.principal_arn,
            service_account: key.service_account.clone(),
            db_user: key.service_account.as_deref().and_then(db_user),
            project_id: key.service_account.as_deref().and_then(project_id),
            scopes: key.scopes.clone(),
        })
    }

    async fn aws_identity(&self, key: &IdentityKey) -> Result<AwsIdentity, ExchangeError> {
        let endpoint = key.aws_sts_endpoint.as_deref();
        match &key.source {
            AwsSource::ServiceAccount { name, role_arn } => {
                let kube = self.kube.as_ref().ok_or_else(|| {
                    ExchangeError::new(
                        Reason::TokenRequestFailed,
                        "aws.serviceAccount needs access to a Kubernetes API server (a kubeconfig or in-cluster config)",
                    )
                })?;
                self.aws
                    .irsa(
                        kube,
                        &key.namespace,
                        name,
                        role_arn.as_deref(),
                        &key.region,
                        endpoint,
                    )
                    .await
            }
            AwsSource::Controller { role_arn } => {
                self.aws
                    .controller(&key.namespace, role_arn.as_deref(), &key.region, endpoint)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_answers_waiters_and_newcomers_but_not_its_own_retry() {
        let t = |s: &str| -> Timestamp { s.parse().unwrap() };
        let at = t("2026-11-29T10:00:03.400Z");
        // Recorded while the call waited: always shared, even with a retry of it.
        let seen = Some(t("2026-11-29T10:00:03Z"));
        assert!(shares_failure(
            at,
            t("2026-11-29T10:00:02Z"),
            t("2026-11-29T10:00:03.5Z"),
            seen
        ));
        // A caller that has not failed: shared for five seconds.
        let called = t("2026-11-29T10:00:06Z");
        assert!(shares_failure(at, called, called, None));
        let late = t("2026-11-29T10:00:08.400Z");
        assert!(!shares_failure(at, late, late, None));
        // The retry of the caller whose failure it is (kept in whole seconds): not shared.
        assert!(!shares_failure(at, called, called, seen));
        // A retry after an older failure of its own: the newer failure of another caller is
        // news, and shared.
        assert!(shares_failure(
            at,
            called,
            called,
            Some(t("2026-11-29T10:00:02Z"))
        ));
        assert!(!shares_failure(
            at,
            called,
            called,
            Some(t("2026-11-29T10:00:02.5Z"))
        ));
    }

    fn spec(extra: serde_json::Value) -> FederatedCredentialSpec {
        let mut base = serde_json::json!({
            "aws": {"serviceAccount": {"name": "orders-api"}},
            "google": {
                "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/aws-shop",
                "serviceAccount": "orders-api@acme-shop.iam.gserviceaccount.com"
            }
        });
        merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        match (base, extra) {
            (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    fn defaults() -> Defaults {
        Defaults {
            region: Some("us-east-1".into()),
            ..Defaults::default()
        }
    }

    #[test]
    fn irsa_plan_uses_defaults_and_adds_the_alloydb_login_scope() {
        let s = spec(
            serde_json::json!({"alloydb": {"instances": [{"uri": "projects/p/locations/r/clusters/c/instances/i"}]}}),
        );
        let key = plan("shop", &s, &defaults()).unwrap();
        assert_eq!(key.region, "us-east-1");
        assert_eq!(
            key.scopes,
            [
                "https://www.googleapis.com/auth/alloydb.login",
                "https://www.googleapis.com/auth/cloud-platform"
            ]
        );
        assert_eq!(key.sts_url, "https://sts.googleapis.com/v1/token");
        assert_eq!(key.describe(), "ServiceAccount/orders-api");
        assert_eq!(key.lifetime_seconds, 3600);
    }

    #[test]
    fn resources_asking_for_the_same_identity_share_a_key() {
        let a = plan(
            "shop",
            &spec(serde_json::json!({"secret": {"name": "a"}})),
            &defaults(),
        )
        .unwrap();
        let b = plan(
            "shop",
            &spec(serde_json::json!({"secret": {"name": "b"}})),
            &defaults(),
        )
        .unwrap();
        assert_eq!(a, b);
        let other_ns = plan("billing", &spec(serde_json::json!({})), &defaults()).unwrap();
        assert_ne!(a, other_ns);
        let other_lifetime = plan(
            "shop",
            &spec(serde_json::json!({"google": {"tokenLifetimeSeconds": 1800}})),
            &defaults(),
        )
        .unwrap();
        assert_ne!(a, other_lifetime);
    }

    #[test]
    fn controller_identity_needs_the_admins_permission() {
        let s = spec(
            serde_json::json!({"aws": {"serviceAccount": null, "controllerIdentity": {"roleArn": "arn:aws:iam::123456789012:role/x"}}}),
        );
        assert_eq!(s.aws.service_account, None);
        let err = plan("analytics", &s, &defaults()).unwrap_err();
        assert_eq!(err.reason, Reason::ControllerIdentityNotAllowed);
        assert!(
            err.message
                .contains("namespace analytics may not use the controller's own AWS identity")
        );
        let allowed = Defaults {
            controller_identity: ControllerIdentityPolicy::new(["analytics"]),
            ..defaults()
        };
        let key = plan("analytics", &s, &allowed).unwrap();
        assert_eq!(key.describe(), "controller as role/x");
        let everyone = Defaults {
            controller_identity: ControllerIdentityPolicy::new(["*"]),
            ..defaults()
        };
        assert!(plan("anything", &s, &everyone).is_ok());
    }

    #[test]
    fn no_region_anywhere_is_explained() {
        let err = plan("shop", &spec(serde_json::json!({})), &Defaults::default()).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidSpec);
        assert!(err.message.contains("set aws.region"), "{}", err.message);
    }

    #[test]
    fn malformed_fields_are_named() {
        let cases = [
            (
                serde_json::json!({"google": {"audience": "//iam.googleapis.com/projects/acme/locations/global/workloadIdentityPools/pool/providers/aws-shop"}}),
                "google.audience",
            ),
            (
                serde_json::json!({"google": {"serviceAccount": "orders-api"}}),
                "google.serviceAccount",
            ),
            (
                serde_json::json!({"google": {"delegates": ["x"]}}),
                "google.delegates",
            ),
            (
                serde_json::json!({"aws": {"serviceAccount": {"name": "a", "roleArn": "arn:aws:iam::1:user/x"}}}),
                "aws.serviceAccount.roleArn",
            ),
            (
                serde_json::json!({"aws": {"region": "Tokyo"}}),
                "aws.region",
            ),
            (
                serde_json::json!({"google": {"tokenLifetimeSeconds": 60}}),
                "google.tokenLifetimeSeconds",
            ),
        ];
        for (change, field) in cases {
            let err = plan("shop", &spec(change), &defaults()).unwrap_err();
            assert_eq!(err.reason, Reason::InvalidSpec);
            assert!(err.message.starts_with(field), "{field}: {}", err.message);
        }
        assert!(is_audience(
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop"
        ));
        assert!(is_service_account_email(
            "a-b@my-project.iam.gserviceaccount.com"
        ));
        assert!(is_service_account_email(
            "123-compute@developer.gserviceaccount.com"
        ));
        assert!(!is_service_account_email("alice@example.com"));
    }

    #[test]
    fn db_user_and_project_come_from_the_email() {
        assert_eq!(
            db_user("orders-api@acme-shop.iam.gserviceaccount.com").as_deref(),
            Some("orders-api@acme-shop.iam")
        );
        assert_eq!(
            project_id("orders-api@acme-shop.iam.gserviceaccount.com").as_deref(),
            Some("acme-shop")
        );
        assert_eq!(
            project_id("acme-shop@appspot.gserviceaccount.com").as_deref(),
            Some("acme-shop")
        );
        assert_eq!(
            project_id("123-compute@developer.gserviceaccount.com"),
            None
        );
        assert_eq!(db_user("alice@example.com"), None);
    }

    fn issued(issued_at: &str, expires_at: &str) -> Issued {
        Issued {
            access_token: Secret::new("ya29.test"),
            expires_at: expires_at.parse().unwrap(),
            issued_at: issued_at.parse().unwrap(),
            principal_arn: None,
            service_account: None,
            db_user: None,
            project_id: None,
            scopes: Vec::new(),
        }
    }

    #[test]
    fn reuse_needs_the_refresh_window_plus_a_quarter_of_the_rest() {
        let hour = issued("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z");
        assert_eq!(
            Reuse::RefreshWithin(0.5).min_remaining(&hour),
            Duration::from_secs(2250)
        );
        assert_eq!(
            Reuse::RefreshWithin(0.9).min_remaining(&hour),
            Duration::from_secs(3330)
        );
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        // 45 min left: enough for a resource refreshing in the last half, not the last 90 %.
        assert!(Reuse::RefreshWithin(0.5).accepts(&hour, at("2026-01-01T00:15:00Z")));
        assert!(!Reuse::RefreshWithin(0.9).accepts(&hour, at("2026-01-01T00:15:00Z")));
        // Just short of the threshold, and expired.
        assert!(!Reuse::RefreshWithin(0.5).accepts(&hour, at("2026-01-01T00:22:31Z")));
        assert!(!Reuse::AtLeast(Duration::ZERO).accepts(&hour, at("2026-01-01T01:00:00Z")));
    }

    #[test]
    fn a_fresh_token_is_reusable_whatever_lifetime_google_gave_it() {
        // The spec may ask for an hour; what counts is the lifetime the token has.
        for (expires, now) in [
            ("2026-01-01T00:01:00Z", "2026-01-01T00:00:01Z"),
            ("2026-01-01T00:10:00Z", "2026-01-01T00:00:05Z"),
            ("2026-01-01T12:00:00Z", "2026-01-01T00:01:00Z"),
        ] {
            let token = issued("2026-01-01T00:00:00Z", expires);
            for share in [0.1, 0.55, 0.9] {
                assert!(
                    Reuse::RefreshWithin(share).accepts(&token, now.parse().unwrap()),
                    "{expires} at {now}, share {share}"
                );
            }
        }
    }
}

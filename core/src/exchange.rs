//! The exchange, decided: which identity a FederatedCredential asks for and when a token
//! obtained for it may be handed out again.
//!
//! [`plan`] turns a spec and the controller's defaults into an [`IdentityKey`] and checks what
//! only the controller can check (its policy, the region). The engine in the `fedcred` crate
//! runs the key through AWS and Google with single-flight: concurrent callers for one key share
//! one exchange, and a token with enough life left ([`Reuse`]) or a fresh failure
//! ([`shares_failure`]) answers later callers, so Google sees one exchange per identity per
//! refresh rather than one per resource.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

use crate::api::{ALLOYDB_LOGIN_SCOPE, FederatedCredentialSpec, SQLSERVICE_LOGIN_SCOPE};
use crate::error::{ExchangeError, Reason};
use crate::google::{DEFAULT_IAM_CREDENTIALS_URL, DEFAULT_STS_URL};
use crate::names::is_region;
use crate::sensitive::Sensitive;

/// Which identity a resource presents.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IdentitySource {
    /// IRSA through a ServiceAccount of the resource's namespace.
    ServiceAccount {
        name: String,
        role_arn: Option<String>,
    },
    /// The controller's own identity, optionally chained into a role.
    Controller { role_arn: Option<String> },
    /// A token of a ServiceAccount of the resource's namespace, sent straight to Google.
    KubernetesToken {
        name: String,
        /// The token's `aud`.
        audience: String,
        expiration_seconds: i64,
    },
    /// A projected ServiceAccount token file on the host, read for every exchange
    /// (`fedcred agent`).
    TokenFile { path: String },
}

impl IdentitySource {
    /// Whether Google receives a JWT rather than a signed AWS request.
    pub fn is_kubernetes(&self) -> bool {
        matches!(
            self,
            IdentitySource::KubernetesToken { .. } | IdentitySource::TokenFile { .. }
        )
    }
}

/// The subject Kubernetes writes into a ServiceAccount token, which Google maps to
/// `google.subject`.
pub fn service_account_subject(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Everything that determines the token; equal keys may share one token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    pub namespace: String,
    pub source: IdentitySource,
    /// The AWS region of the signed request; empty for the Kubernetes sources, which sign
    /// nothing.
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
            IdentitySource::ServiceAccount { name, role_arn } => match role(role_arn) {
                Some(r) => format!("ServiceAccount/{name} as role/{r}"),
                None => format!("ServiceAccount/{name}"),
            },
            IdentitySource::Controller { role_arn } => match role(role_arn) {
                Some(r) => format!("controller as role/{r}"),
                None => "controller".to_owned(),
            },
            IdentitySource::KubernetesToken { name, .. } => format!("ServiceAccount/{name} token"),
            IdentitySource::TokenFile { path } => format!("token file {path}"),
        }
    }

    /// The subject Google will see, when known before asking: for a ServiceAccount token,
    /// `system:serviceaccount:NS:NAME`.
    pub fn subject(&self) -> Option<String> {
        match &self.source {
            IdentitySource::KubernetesToken { name, .. } => {
                Some(service_account_subject(&self.namespace, name))
            }
            _ => None,
        }
    }
}

/// Which namespaces may use the controller's own AWS identity, and into which roles each may
/// chain it. The admin grants either a namespace (`analytics`: the controller's identity as is,
/// or chained into any role it can assume) or a namespace and one role
/// (`analytics=arn:aws:iam::123456789012:role/bq`: only chained into the roles listed for it,
/// each under the session name `fedcred.NAMESPACE`, so the role's trust policy can pin the
/// namespace with a condition on `sts:RoleSessionName`). `*` grants every namespace.
#[derive(Clone, Debug, Default)]
pub struct ControllerIdentityPolicy {
    /// Namespaces granted the identity as is and every role.
    any_role: BTreeSet<String>,
    /// Namespaces granted only the roles listed.
    roles: BTreeMap<String, BTreeSet<String>>,
    all: bool,
}

/// What a [`ControllerIdentityPolicy`] answers for one namespace and role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControllerIdentityGrant {
    Allowed,
    /// The namespace has no grant at all.
    NotAllowed,
    /// The namespace may chain only into these roles.
    OnlyRoles(Vec<String>),
}

impl ControllerIdentityPolicy {
    /// From the admin's entries: `NAMESPACE`, `NAMESPACE=ROLE_ARN` or `*`. Empty: none (the
    /// default).
    pub fn parse<I: IntoIterator<Item = S>, S: AsRef<str>>(entries: I) -> Result<Self, String> {
        let mut policy = ControllerIdentityPolicy::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                policy.all = true;
                continue;
            }
            let (namespace, role) = match entry.split_once('=') {
                Some((ns, role)) => (ns.trim(), Some(role.trim())),
                None => (entry, None),
            };
            if !crate::names::is_dns_label(namespace) {
                return Err(format!(
                    "--allow-controller-identity {entry:?}: {namespace:?} is not a namespace name; write NAMESPACE, NAMESPACE=ROLE_ARN or *"
                ));
            }
            match role {
                None => {
                    policy.any_role.insert(namespace.to_owned());
                }
                Some(role) if crate::names::is_role_arn(role) => {
                    policy
                        .roles
                        .entry(namespace.to_owned())
                        .or_default()
                        .insert(role.to_owned());
                }
                Some(role) => {
                    return Err(format!(
                        "--allow-controller-identity {entry:?}: {role:?} is not an IAM role ARN such as arn:aws:iam::123456789012:role/NAME"
                    ));
                }
            }
        }
        Ok(policy)
    }

    /// Every namespace and every role: for a process that runs with its own identity (`fedcred
    /// agent`, `fedcred exchange`), where nothing is lent.
    pub fn everyone() -> Self {
        ControllerIdentityPolicy {
            all: true,
            ..ControllerIdentityPolicy::default()
        }
    }

    /// Whether `namespace` may use the identity, chained into `role` if given.
    pub fn grant(&self, namespace: &str, role: Option<&str>) -> ControllerIdentityGrant {
        if self.all || self.any_role.contains(namespace) {
            return ControllerIdentityGrant::Allowed;
        }
        match self.roles.get(namespace) {
            None => ControllerIdentityGrant::NotAllowed,
            Some(roles) if role.is_some_and(|r| roles.contains(r)) => {
                ControllerIdentityGrant::Allowed
            }
            Some(roles) => ControllerIdentityGrant::OnlyRoles(roles.iter().cloned().collect()),
        }
    }
}

/// Which endpoints a resource may name in `aws.stsEndpoint` and `google.endpoints.*`: they
/// receive credentials (a ServiceAccount token, a signed GetCallerIdentity, a federated
/// token), so they are the cluster admin's choice, not the resource author's. By default only
/// AWS's own STS hosts and Google's; the admin lists others (`--allow-endpoint`), each as
/// `scheme://host[:port]`, with `*` for any port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// `(scheme, host, port)`; port `None`: any.
    allowed: Vec<(String, String, Option<u16>)>,
    /// Every endpoint: for `fedcred exchange`, run by hand with the caller's own credentials.
    any: bool,
}

/// An endpoint URL's scheme, host (lowercase) and port (the scheme's default when absent).
fn origin(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let default = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            (host, port.parse().ok()?)
        }
        _ => (authority, default),
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// Whether `host` is one of AWS's own STS hosts: global, regional, FIPS, China.
fn is_aws_sts_host(host: &str) -> bool {
    if host == "sts.amazonaws.com" {
        return true;
    }
    let region_of = |h: &str| -> Option<String> {
        let h = h
            .strip_suffix(".amazonaws.com.cn")
            .or_else(|| h.strip_suffix(".amazonaws.com"))?;
        let region = h
            .strip_prefix("sts.")
            .or_else(|| h.strip_prefix("sts-fips."))?;
        Some(region.to_owned())
    };
    region_of(host).is_some_and(|r| is_region(&r))
}

impl EndpointPolicy {
    /// The default policy plus `entries` (`scheme://host[:port]`, `*` for any port). Returns
    /// the entries that could not be read.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(entries: I) -> Result<Self, String> {
        let mut allowed = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            let (any_port, url) = match entry.strip_suffix(":*") {
                Some(base) => (true, base),
                None => (false, entry),
            };
            let (scheme, host, port) = origin(url).ok_or_else(|| {
                format!("--allow-endpoint {entry:?} is not scheme://host[:port] (port `*` for any)")
            })?;
            allowed.push((scheme, host, (!any_port).then_some(port)));
        }
        Ok(EndpointPolicy {
            allowed,
            any: false,
        })
    }

    /// Every endpoint allowed: for a command run by hand, whose user chose the file.
    pub fn any() -> Self {
        EndpointPolicy {
            allowed: Vec::new(),
            any: true,
        }
    }

    /// Whether a resource may send credentials to `url`.
    pub fn allows(&self, url: &str) -> bool {
        if self.any {
            return true;
        }
        let Some((scheme, host, port)) = origin(url) else {
            return false;
        };
        let official = scheme == "https"
            && port == 443
            && (is_aws_sts_host(&host)
                || host == "sts.googleapis.com"
                || host == "iamcredentials.googleapis.com");
        official
            || self
                .allowed
                .iter()
                .any(|(s, h, p)| *s == scheme && *h == host && p.is_none_or(|p| p == port))
    }

    /// Refuses `url` in `field` unless allowed, naming who can allow it.
    pub fn check(&self, field: &str, url: &str) -> Result<(), ExchangeError> {
        if self.allows(url) {
            return Ok(());
        }
        let shown = origin(url)
            .map(|(s, h, p)| format!("{s}://{h}:{p}"))
            .unwrap_or_else(|| url.to_owned());
        Err(ExchangeError::new(
            Reason::EndpointNotAllowed,
            format!(
                "{field} {shown} is not an endpoint this controller sends credentials to; remove {field} to use the official endpoint, or ask the cluster admin to allow it (controller flag --allow-endpoint, chart value endpoints.allowed)"
            ),
        ))
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
    /// Endpoints a resource may name.
    pub endpoints: EndpointPolicy,
    /// Whether `kubernetes.tokenPath` may be read: only by a process on its own host (`fedcred
    /// agent`, `fedcred exchange`), never by the controller.
    pub token_files: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            region: None,
            sts_url: DEFAULT_STS_URL.to_owned(),
            iam_credentials_url: DEFAULT_IAM_CREDENTIALS_URL.to_owned(),
            controller_identity: ControllerIdentityPolicy::default(),
            endpoints: EndpointPolicy::default(),
            token_files: false,
        }
    }
}

/// Resolves a spec into the identity it asks for. The spec is taken as valid (the API
/// server, or [`crate::validate`] for files, checked it).
pub fn plan(
    namespace: &str,
    spec: &FederatedCredentialSpec,
    defaults: &Defaults,
) -> Result<IdentityKey, ExchangeError> {
    if let Some(kubernetes) = &spec.kubernetes {
        return plan_kubernetes(namespace, spec, kubernetes, defaults);
    }
    let Some(aws) = &spec.aws else {
        return Err(ExchangeError::new(
            Reason::InvalidSpec,
            "set exactly one identity source: aws or kubernetes",
        ));
    };
    let source = match (&aws.service_account, &aws.controller_identity) {
        (Some(sa), None) => IdentitySource::ServiceAccount {
            name: sa.name.clone(),
            role_arn: sa.role_arn.clone(),
        },
        (None, Some(ci)) => {
            match defaults
                .controller_identity
                .grant(namespace, ci.role_arn.as_deref())
            {
                ControllerIdentityGrant::Allowed => {}
                ControllerIdentityGrant::NotAllowed => {
                    return Err(ExchangeError::new(
                        Reason::ControllerIdentityNotAllowed,
                        format!(
                            "namespace {namespace} may not use the controller's own AWS identity; use aws.serviceAccount (IRSA), or ask the cluster admin to grant it (chart values controllerIdentity.roles or controllerIdentity.allowedNamespaces)"
                        ),
                    ));
                }
                ControllerIdentityGrant::OnlyRoles(roles) => {
                    let asked = match &ci.role_arn {
                        Some(role) => format!("not into {role}"),
                        None => "not as is".to_owned(),
                    };
                    return Err(ExchangeError::new(
                        Reason::ControllerIdentityNotAllowed,
                        format!(
                            "namespace {namespace} may use the controller's own AWS identity only chained into {}, {asked}: set aws.controllerIdentity.roleArn to one of them, or ask the cluster admin to add the role to controllerIdentity.roles.{namespace}",
                            roles.join(", ")
                        ),
                    ));
                }
            }
            IdentitySource::Controller {
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
    let region = aws.region.clone().or_else(|| defaults.region.clone()).ok_or_else(|| {
        ExchangeError::new(
            Reason::InvalidSpec,
            "no AWS region known: set aws.region, or AWS_REGION in the controller's environment",
        )
    })?;
    if !is_region(&region) {
        return Err(ExchangeError::new(
            Reason::InvalidSpec,
            format!("aws.region {region:?} is not an AWS region code"),
        ));
    }
    google_side(
        namespace,
        spec,
        source,
        region,
        aws.sts_endpoint.clone(),
        defaults,
    )
}

/// The Kubernetes sources: a ServiceAccount of the namespace (in the cluster) or a token file
/// (only where the caller allows files: the agent on its own host, never the controller).
fn plan_kubernetes(
    namespace: &str,
    spec: &FederatedCredentialSpec,
    kubernetes: &crate::api::KubernetesIdentity,
    defaults: &Defaults,
) -> Result<IdentityKey, ExchangeError> {
    let source = match (&kubernetes.service_account, &kubernetes.token_path) {
        (Some(sa), None) => IdentitySource::KubernetesToken {
            name: sa.name.clone(),
            audience: kubernetes
                .audience
                .clone()
                .unwrap_or_else(|| spec.google.audience.clone()),
            expiration_seconds: kubernetes.expiration_seconds,
        },
        (None, Some(path)) if defaults.token_files => {
            IdentitySource::TokenFile { path: path.clone() }
        }
        (None, Some(_)) => {
            return Err(ExchangeError::new(
                Reason::InvalidSpec,
                "kubernetes.tokenPath names a file on a host, which only fedcred agent reads; in a cluster use kubernetes.serviceAccount (the controller never reads files a resource names)",
            ));
        }
        _ => {
            return Err(ExchangeError::new(
                Reason::InvalidSpec,
                "set exactly one of kubernetes.serviceAccount and kubernetes.tokenPath",
            ));
        }
    };
    google_side(namespace, spec, source, String::new(), None, defaults)
}

/// The Google half of the key, common to every source.
fn google_side(
    namespace: &str,
    spec: &FederatedCredentialSpec,
    source: IdentitySource,
    region: String,
    aws_sts_endpoint: Option<String>,
    defaults: &Defaults,
) -> Result<IdentityKey, ExchangeError> {
    let mut scopes: BTreeSet<String> = spec.google.scopes.iter().cloned().collect();
    let iam_login = spec
        .alloydb
        .as_ref()
        .is_some_and(|a| a.instances.iter().any(|i| i.auto_iam_authn));
    if iam_login {
        // The AlloyDB Auth Proxy logs in with the token; IAM login needs this scope.
        scopes.insert(ALLOYDB_LOGIN_SCOPE.to_owned());
    }
    let cloudsql_login = spec
        .cloudsql
        .as_ref()
        .is_some_and(|c| c.instances.iter().any(|i| i.auto_iam_authn));
    if cloudsql_login {
        // The Cloud SQL Auth Proxy asks the metadata server for a token with this scope and
        // sends it with its certificate request; Cloud SQL logs the IAM user in with it.
        scopes.insert(SQLSERVICE_LOGIN_SCOPE.to_owned());
    }
    let endpoints = spec.google.endpoints.clone().unwrap_or_default();
    let named = [
        ("aws.stsEndpoint", aws_sts_endpoint.as_deref()),
        ("google.endpoints.sts", endpoints.sts.as_deref()),
        (
            "google.endpoints.iamCredentials",
            endpoints.iam_credentials.as_deref(),
        ),
    ];
    for (field, url) in named {
        if let Some(url) = url {
            defaults.endpoints.check(field, url)?;
        }
    }
    Ok(IdentityKey {
        namespace: namespace.to_owned(),
        source,
        region,
        aws_sts_endpoint,
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

/// A token and what the resource's status says about it.
#[derive(Clone, Debug)]
pub struct Issued {
    pub access_token: Sensitive,
    pub expires_at: Timestamp,
    pub issued_at: Timestamp,
    pub principal_arn: Option<String>,
    /// The subject Google saw for a Kubernetes source (`system:serviceaccount:NS:NAME`).
    pub subject: Option<String>,
    pub service_account: Option<String>,
    pub db_user: Option<String>,
    pub project_id: Option<String>,
    /// The scopes the token was asked for.
    pub scopes: Vec<String>,
}

/// Whether a token from the shared cache may be handed out again.
///
/// For a resource that refreshes within the last `share` (0–1) of a token's lifetime: when
/// the token has that share plus a quarter of the rest of its own lifetime left, so a reused
/// token is not due again at once, and a fresh one qualifies for three quarters of the part
/// before the window (about 20 minutes of an hour-long token at the default 50 %, 27 s at
/// 90 %). Judged by the lifetime Google gave the token, not the one the spec asked for: a
/// federated token lives an hour whatever the spec says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reuse {
    share: f64,
}

impl Reuse {
    /// For a resource whose refresh falls due within the last `share` of a token's lifetime
    /// (see [`crate::refresh::decide::refresh_share`]).
    pub fn refresh_within(share: f64) -> Self {
        Reuse { share }
    }

    /// The life `issued` must have left to be reused.
    pub fn min_remaining(self, issued: &Issued) -> Duration {
        let lifetime = issued
            .expires_at
            .duration_since(issued.issued_at)
            .as_secs_f64()
            .max(0.0);
        let window = lifetime * self.share.clamp(0.0, 1.0);
        Duration::from_secs_f64(window + (lifetime - window) / 4.0)
    }

    /// Whether `issued` may be handed out at `now`.
    pub fn accepts(self, issued: &Issued, now: Timestamp) -> bool {
        issued.expires_at > now
            && issued.expires_at.duration_since(now).unsigned_abs() >= self.min_remaining(issued)
    }
}

/// How long a failed exchange answers later callers before the next one tries again, so a
/// hundred resources of one broken identity cause one call, not a hundred.
pub const FAILURE_SHARE: Duration = Duration::from_secs(5);

/// Whether a failed exchange recorded at `at` answers a call made at `called` and served at
/// `now`, for a caller whose own last attempt failed at `seen` (kept in whole seconds, as the
/// status keeps it). Pure.
///
/// A failure that was recorded while the call waited for it always answers: it is the
/// freshest word on the identity. An earlier one answers for [`FAILURE_SHARE`], except a
/// retrying caller's own failure (recorded within the second `seen` names): a retry answered
/// with the failure it retries would call nobody, and a resource whose token is about to
/// expire would learn that Google is back only at its retry after next.
pub fn shares_failure(
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

/// Bounds that keep one tenant's slow or hostile peer from stalling the others: every
/// exchange ends by a deadline, a caller waits only briefly for another caller's exchange of
/// the same identity, a namespace runs at most its share of exchanges at once, and a token
/// that lives too short to be worth writing is refused rather than refreshed in a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest one exchange may take, all retries included.
    pub exchange_deadline: Duration,
    /// Longest a caller waits for a concurrent exchange of the same identity before it is told
    /// to come back ([`Reason::Busy`]) instead of holding a worker.
    pub identity_wait: Duration,
    /// Most exchanges one namespace may have in flight at once.
    pub namespace_share: usize,
    /// Shortest token lifetime accepted from Google.
    pub min_token_lifetime: Duration,
}

/// Longest one exchange may take: above the longest legitimate one (a handful of calls that
/// each answer in well under a second, with a few retries), far below any token's lifetime.
pub const EXCHANGE_DEADLINE: Duration = Duration::from_secs(40);
/// Shortest token lifetime accepted by default: Google issues hour-long federated tokens and
/// impersonated tokens of at least several minutes.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

impl Limits {
    /// The limits for a controller running `concurrency` reconciles at once: a namespace may
    /// use a quarter of them (at least one) for exchanges.
    pub fn for_concurrency(concurrency: u16) -> Limits {
        Limits {
            exchange_deadline: EXCHANGE_DEADLINE,
            identity_wait: Duration::from_secs(1),
            namespace_share: (usize::from(concurrency) / 4).max(1),
            min_token_lifetime: MIN_TOKEN_LIFETIME,
        }
    }

    /// Whether a namespace with `in_flight` exchanges running may start another.
    pub fn admits(&self, in_flight: usize) -> bool {
        in_flight < self.namespace_share
    }

    /// The error for a namespace that has used its share.
    pub fn busy(&self, namespace: &str) -> ExchangeError {
        ExchangeError::new(
            Reason::Busy,
            format!(
                "namespace {namespace} already has {} exchanges in flight, its share of the controller; this one waits its turn",
                self.namespace_share
            ),
        )
    }

    /// Refuses a token whose `lifetime`, as Google stated it, is shorter than
    /// [`Limits::min_token_lifetime`]. The stated lifetime, not the time left when the check
    /// runs: a slow exchange on a loaded machine must not turn a 1-second token into one
    /// reported as living 0 s. The message rounds up to whole seconds.
    pub fn check_lifetime(&self, lifetime: Duration) -> Result<(), ExchangeError> {
        let lifetime = lifetime.as_secs_f64();
        // A second of slack: expiry times are kept in whole seconds.
        if lifetime + 1.0 < self.min_token_lifetime.as_secs_f64() {
            return Err(ExchangeError::new(
                Reason::Upstream,
                format!(
                    "Google issued a token that lives {} s, shorter than the {} s fedcred accepts (--min-token-seconds); it is not written",
                    lifetime.ceil(),
                    self.min_token_lifetime.as_secs()
                ),
            ));
        }
        Ok(())
    }
}

impl Default for Limits {
    /// For an engine used on its own (`fedcred exchange`, a library caller): deadlines and the
    /// lifetime floor, but callers of one identity wait for its exchange and no namespace has
    /// a share to exceed; a controller sets [`Limits::for_concurrency`].
    fn default() -> Self {
        Limits {
            identity_wait: EXCHANGE_DEADLINE,
            namespace_share: usize::MAX,
            ..Limits::for_concurrency(32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_official_endpoints_unless_the_admin_lists_more() {
        let none = EndpointPolicy::default();
        for ok in [
            "https://sts.amazonaws.com",
            "https://sts.eu-west-1.amazonaws.com/",
            "https://sts-fips.us-east-1.amazonaws.com",
            "https://sts.cn-north-1.amazonaws.com.cn",
            "https://sts.googleapis.com/v1/token",
            "https://iamcredentials.googleapis.com",
            "HTTPS://STS.GOOGLEAPIS.COM:443/v1/token",
        ] {
            assert!(none.allows(ok), "{ok}");
        }
        for refused in [
            "https://sts.googleapis.com.evil.example/v1/token",
            "https://evil.example/sts.amazonaws.com",
            "https://sts.amazonaws.com@evil.example",
            "http://sts.amazonaws.com",
            "https://sts.googleapis.com:8443",
            "https://sts.not-a-region.amazonaws.com",
            "http://127.0.0.1:5000",
        ] {
            assert!(!none.allows(refused), "{refused}");
        }
        let err = none
            .check("aws.stsEndpoint", "https://evil.example/x")
            .unwrap_err();
        assert_eq!(err.reason, Reason::EndpointNotAllowed);
        assert!(err.message.contains("--allow-endpoint"), "{}", err.message);
        assert!(
            err.message
                .contains("aws.stsEndpoint https://evil.example:443"),
            "{}",
            err.message
        );

        let admin =
            EndpointPolicy::new(["http://127.0.0.1:5000", "https://vpce.example:*"]).unwrap();
        assert!(admin.allows("http://127.0.0.1:5000/"));
        assert!(!admin.allows("http://127.0.0.1:5001/"));
        assert!(!admin.allows("https://127.0.0.1:5000/"));
        assert!(admin.allows("https://vpce.example:9443/v1"));
        assert!(admin.allows("https://vpce.example"));
        assert!(EndpointPolicy::new(["127.0.0.1:5000"]).is_err());
    }

    #[test]
    fn a_namespace_gets_a_quarter_of_the_workers_and_short_tokens_are_refused() {
        let limits = Limits::for_concurrency(32);
        assert_eq!(limits.namespace_share, 8);
        assert!(limits.admits(7));
        assert!(!limits.admits(8));
        assert_eq!(Limits::for_concurrency(2).namespace_share, 1);
        assert_eq!(limits.busy("hostile").reason, Reason::Busy);
        let one = limits.check_lifetime(Duration::from_secs(1)).unwrap_err();
        assert_eq!(one.reason, Reason::Upstream);
        assert!(one.message.contains("lives 1 s"), "{}", one.message);
        // Part of a second still reads as the second it began.
        let part = limits
            .check_lifetime(Duration::from_millis(400))
            .unwrap_err();
        assert!(part.message.contains("lives 1 s"), "{}", part.message);
        assert!(limits.check_lifetime(Duration::from_secs(60)).is_ok());
        assert!(limits.exchange_deadline < Duration::from_secs(60));
    }

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

    use crate::testing::{credential, issued};

    /// The spec of the fixture without a region, for the defaults to fill.
    fn spec(fixture: crate::testing::Credential) -> FederatedCredentialSpec {
        fixture.region(None).spec()
    }

    fn defaults() -> Defaults {
        Defaults {
            region: Some("us-east-1".into()),
            ..Defaults::default()
        }
    }

    #[test]
    fn irsa_plan_uses_defaults_and_adds_the_alloydb_login_scope() {
        let s = spec(credential("orders-db").alloydb_instance(5432));
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
    fn cloudsql_iam_login_adds_the_sqlservice_login_scope() {
        let instance = |auto: bool| {
            credential("orders-db").with(serde_json::json!({"spec": {"cloudsql": {"instances": [{
                "connectionName": "acme-shop:europe-west1:orders-pg", "port": 6432,
                "autoIamAuthn": auto,
            }]}}}))
        };
        let key = plan("shop", &spec(instance(true)), &defaults()).unwrap();
        assert_eq!(
            key.scopes,
            [
                "https://www.googleapis.com/auth/cloud-platform",
                "https://www.googleapis.com/auth/sqlservice.login",
            ]
        );
        let key = plan("shop", &spec(instance(false)), &defaults()).unwrap();
        assert_eq!(
            key.scopes,
            ["https://www.googleapis.com/auth/cloud-platform"]
        );
    }

    #[test]
    fn resources_asking_for_the_same_identity_share_a_key() {
        let a = plan("shop", &spec(credential("a").secret_name("a")), &defaults()).unwrap();
        let b = plan("shop", &spec(credential("b").secret_name("b")), &defaults()).unwrap();
        assert_eq!(a, b);
        let other_ns = plan("billing", &spec(credential("a")), &defaults()).unwrap();
        assert_ne!(a, other_ns);
        let other_lifetime =
            plan("shop", &spec(credential("a").lifetime(1800)), &defaults()).unwrap();
        assert_ne!(a, other_lifetime);
    }

    #[test]
    fn controller_identity_needs_the_admins_permission() {
        let s = spec(credential("a").controller_identity(Some("arn:aws:iam::123456789012:role/x")));
        assert_eq!(s.aws.as_ref().unwrap().service_account, None);
        let err = plan("analytics", &s, &defaults()).unwrap_err();
        assert_eq!(err.reason, Reason::ControllerIdentityNotAllowed);
        assert!(
            err.message
                .contains("namespace analytics may not use the controller's own AWS identity")
        );
        let allowed = Defaults {
            controller_identity: ControllerIdentityPolicy::parse(["analytics"]).unwrap(),
            ..defaults()
        };
        let key = plan("analytics", &s, &allowed).unwrap();
        assert_eq!(key.describe(), "controller as role/x");
        let everyone = Defaults {
            controller_identity: ControllerIdentityPolicy::everyone(),
            ..defaults()
        };
        assert!(plan("anything", &s, &everyone).is_ok());
        assert!(
            plan(
                "anything",
                &s,
                &Defaults {
                    controller_identity: ControllerIdentityPolicy::parse(["*"]).unwrap(),
                    ..defaults()
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn a_namespace_granted_roles_chains_only_into_those() {
        let bq = "arn:aws:iam::123456789012:role/bq";
        let gcs = "arn:aws:iam::123456789012:role/gcs";
        let admin = Defaults {
            controller_identity: ControllerIdentityPolicy::parse([
                format!("analytics={bq}"),
                format!("analytics={gcs}"),
                format!("batch={gcs}"),
            ])
            .unwrap(),
            ..defaults()
        };
        let with = |role: Option<&str>| spec(credential("a").controller_identity(role));
        assert!(plan("analytics", &with(Some(bq)), &admin).is_ok());
        assert!(plan("analytics", &with(Some(gcs)), &admin).is_ok());
        assert!(plan("batch", &with(Some(gcs)), &admin).is_ok());

        // Another namespace's role, and the controller's identity as is (the same principal
        // for every granted namespace), are refused with what is allowed.
        let err = plan("batch", &with(Some(bq)), &admin).unwrap_err();
        assert_eq!(err.reason, Reason::ControllerIdentityNotAllowed);
        assert!(
            err.message
                .contains(&format!("only chained into {gcs}, not into {bq}")),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("controllerIdentity.roles.batch"),
            "{}",
            err.message
        );
        let err = plan("analytics", &with(None), &admin).unwrap_err();
        assert_eq!(err.reason, Reason::ControllerIdentityNotAllowed);
        assert!(
            err.message.contains(&format!("{bq}, {gcs}, not as is")),
            "{}",
            err.message
        );
        let err = plan("shop", &with(Some(bq)), &admin).unwrap_err();
        assert!(
            err.message
                .contains("may not use the controller's own AWS identity")
        );
    }

    #[test]
    fn controller_identity_grants_that_are_not_namespaces_or_roles_are_refused() {
        for (entry, complaint) in [
            ("Analytics", "is not a namespace name"),
            ("a.b", "is not a namespace name"),
            (
                "analytics=arn:aws:iam::123456789012:user/x",
                "is not an IAM role ARN",
            ),
            ("analytics=", "is not an IAM role ARN"),
            (
                "=arn:aws:iam::123456789012:role/x",
                "is not a namespace name",
            ),
        ] {
            let err = ControllerIdentityPolicy::parse([entry]).unwrap_err();
            assert!(err.contains(complaint), "{entry}: {err}");
            assert!(
                err.contains("--allow-controller-identity"),
                "{entry}: {err}"
            );
        }
        assert!(ControllerIdentityPolicy::parse(["", " analytics "]).is_ok());
    }

    #[test]
    fn a_kubernetes_token_goes_to_the_provider_and_needs_no_region() {
        let s = credential("a").kubernetes("orders-api").spec();
        let key = plan("shop", &s, &Defaults::default()).unwrap();
        assert_eq!(
            key.source,
            IdentitySource::KubernetesToken {
                name: "orders-api".into(),
                audience: crate::testing::AUDIENCE.into(),
                expiration_seconds: 600,
            }
        );
        assert_eq!(key.region, "");
        assert_eq!(
            key.subject().as_deref(),
            Some("system:serviceaccount:shop:orders-api")
        );
        assert_eq!(key.describe(), "ServiceAccount/orders-api token");
        // Another namespace's ServiceAccount of the same name is another identity.
        assert_ne!(plan("billing", &s, &Defaults::default()).unwrap(), key);
        let own_audience = credential("a")
            .kubernetes("orders-api")
            .with(serde_json::json!({"spec": {"kubernetes": {"audience": "my-cluster", "expirationSeconds": 900}}}))
            .spec();
        let key = plan("shop", &own_audience, &Defaults::default()).unwrap();
        assert!(matches!(
            key.source,
            IdentitySource::KubernetesToken { ref audience, expiration_seconds: 900, .. } if audience == "my-cluster"
        ));
    }

    #[test]
    fn the_controller_never_reads_a_token_file_a_resource_names() {
        let s = credential("a")
            .token_path("/var/run/secrets/kubernetes.io/serviceaccount/token")
            .spec();
        let err = plan("shop", &s, &Defaults::default()).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidSpec);
        assert!(
            err.message.contains("only fedcred agent reads"),
            "{}",
            err.message
        );
        let agent = Defaults {
            token_files: true,
            ..Defaults::default()
        };
        let key = plan("shop", &s, &agent).unwrap();
        assert_eq!(
            key.source,
            IdentitySource::TokenFile {
                path: "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
            }
        );
        assert_eq!(key.subject(), None);
    }

    #[test]
    fn no_region_anywhere_is_explained() {
        let err = plan("shop", &spec(credential("a")), &Defaults::default()).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidSpec);
        assert!(err.message.contains("set aws.region"), "{}", err.message);
    }

    #[test]
    fn reuse_needs_the_refresh_window_plus_a_quarter_of_the_rest() {
        let hour = issued("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z");
        assert_eq!(
            Reuse::refresh_within(0.5).min_remaining(&hour),
            Duration::from_secs(2250)
        );
        assert_eq!(
            Reuse::refresh_within(0.9).min_remaining(&hour),
            Duration::from_secs(3330)
        );
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        // 45 min left: enough for a resource refreshing in the last half, not the last 90 %.
        assert!(Reuse::refresh_within(0.5).accepts(&hour, at("2026-01-01T00:15:00Z")));
        assert!(!Reuse::refresh_within(0.9).accepts(&hour, at("2026-01-01T00:15:00Z")));
        // Just short of the threshold, and expired.
        assert!(!Reuse::refresh_within(0.5).accepts(&hour, at("2026-01-01T00:22:31Z")));
        assert!(!Reuse::refresh_within(0.0).accepts(&hour, at("2026-01-01T01:00:00Z")));
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
                    Reuse::refresh_within(share).accepts(&token, now.parse().unwrap()),
                    "{expires} at {now}, share {share}"
                );
            }
        }
    }
}

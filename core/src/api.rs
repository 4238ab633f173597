//! The `FederatedCredential` API (`fedcred.io/v1alpha1`).
//!
//! These structs are the single source of truth for the CRD: `fedcred crd` prints the schema
//! derived from them, doc comments become `kubectl explain` text, and every rule the API server
//! can check lives here as a schema bound or a CEL rule whose message says what to fix. Rules
//! that need the outside world (does the ServiceAccount exist, does Google accept the audience)
//! are the controller's job and surface as status conditions.
//!
//! This module owns the shape of the API only; it performs no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every fedcred resource.
pub const GROUP: &str = "fedcred.io";

/// Scope requested when the spec names none: what Google's client libraries ask for by default.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Scope the AlloyDB Auth Proxy needs on top of cloud-platform for automatic IAM login.
pub const ALLOYDB_LOGIN_SCOPE: &str = "https://www.googleapis.com/auth/alloydb.login";

/// The scope Cloud SQL's automatic IAM database login needs, added to the token's scopes when
/// a Cloud SQL instance asks for it.
pub const SQLSERVICE_LOGIN_SCOPE: &str = "https://www.googleapis.com/auth/sqlservice.login";

/// Default token lifetime: one hour, what Google issues when nothing else is asked for.
pub const DEFAULT_TOKEN_LIFETIME_SECONDS: i64 = 3600;

/// Upper bound Google accepts for a federated (not impersonated) access token, in seconds.
pub const MAX_FEDERATED_TOKEN_LIFETIME_SECONDS: i64 = 3600;

/// Condition type: whether the Secret holds a valid token.
pub const READY: &str = "Ready";
/// Condition type: present while refreshing fails, even when the token is still valid.
pub const REFRESH_FAILING: &str = "RefreshFailing";

/// Default share of a token's lifetime left when it is refreshed, in percent.
pub const DEFAULT_RENEW_BEFORE_PERCENTAGE: i32 = 50;

/// Default local port of the first AlloyDB instance, PostgreSQL's own.
pub const DEFAULT_ALLOYDB_PORT: i32 = 5432;

/// A FederatedCredential turns an AWS identity or a Kubernetes ServiceAccount token into a
/// Google Cloud access token through Workload Identity Federation and keeps that token fresh in a Secret of its namespace.
/// Pods labelled `fedcred.io/inject: "true"` and annotated `fedcred.io/credential: <name>`
/// get a local GCE metadata emulator serving the token, and the AlloyDB Auth Proxy for each
/// instance listed under `alloydb`.
// Each printcolumn(...) names its own type_; clippy reads them as one repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fedcred.io",
    version = "v1alpha1",
    kind = "FederatedCredential",
    namespaced,
    shortname = "fedcred",
    category = "fedcred",
    status = "FederatedCredentialStatus",
    derive = "PartialEq",
    doc = "A FederatedCredential exchanges an AWS identity or a Kubernetes ServiceAccount token for a Google Cloud access token through Workload Identity Federation and keeps the token fresh in a Secret of its namespace.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the Secret holds a valid token"
    ),
    printcolumn(
        name = "Identity",
        type_ = "string",
        json_path = ".status.identity",
        description = "The identity presented to Google: ServiceAccount and role, the controller's role, or a ServiceAccount token"
    ),
    printcolumn(
        name = "Google SA",
        type_ = "string",
        json_path = ".spec.google.serviceAccount",
        description = "The Google service account impersonated, if any"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.expiresAt",
        description = "When the token in the Secret expires"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "!has(self.alloydb) || !self.alloydb.instances.exists(i, i.autoIamAuthn) || has(self.google.serviceAccount)"
).message(
    "AlloyDB automatic IAM login needs google.serviceAccount: federated identities cannot log in to AlloyDB; set google.serviceAccount to the service account that has the AlloyDB IAM user, or set autoIamAuthn: false on every instance"
))]
#[x_kube(validation = Rule::new(
    "!has(self.cloudsql) || !self.cloudsql.instances.exists(i, i.autoIamAuthn) || has(self.google.serviceAccount)"
).message(
    "Cloud SQL automatic IAM login needs google.serviceAccount: the IAM database user is the service account's; set google.serviceAccount to the service account that has the Cloud SQL IAM user, or set autoIamAuthn: false on every Cloud SQL instance"
))]
#[x_kube(validation = Rule::new(
    "!has(self.alloydb) || !has(self.cloudsql) || self.cloudsql.instances.all(c, !has(c.port) || self.alloydb.instances.all(a, a.port != c.port))"
).message(
    "each database instance needs its own local port: cloudsql.instances[].port must differ from every alloydb.instances[].port (AlloyDB's default is 5432)"
))]
#[x_kube(validation = Rule::new(
    "!has(self.exchange) || self.exchange != 'Pod' || (has(self.aws) && has(self.aws.controllerIdentity))"
).message(
    "exchange: Pod uses the AWS credentials of each pod (EKS Pod Identity or IRSA), not a ServiceAccount token requested by the controller: set aws.controllerIdentity: {} (with roleArn to chain into a role under a stable session name) instead of aws.serviceAccount"
))]
#[x_kube(validation = Rule::new("has(self.aws) != has(self.kubernetes)").message(
    "set exactly one identity source: aws (an AWS identity whose signed request Google verifies) or kubernetes (a ServiceAccount token of this cluster sent straight to Google)"
))]
#[serde(rename_all = "camelCase")]
pub struct FederatedCredentialSpec {
    /// The AWS identity whose signed GetCallerIdentity request Google accepts as proof. Set
    /// this or `kubernetes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsIdentity>,

    /// The cluster's own ServiceAccount token, sent straight to Google STS as an OIDC token:
    /// for clusters outside AWS, and for EKS without an AWS role. Set this or `aws`. The
    /// provider in `google.audience` must be an OIDC provider trusting this cluster's issuer
    /// (its discovery document, or its JWKS uploaded to the provider); Google sees the
    /// subject `system:serviceaccount:NAMESPACE:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesIdentity>,

    /// Where the exchange happens; see [`Exchange`], whose text `kubectl explain` shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<Exchange>,

    /// The Google side: the Workload Identity Federation provider and, optionally, the
    /// service account to impersonate.
    pub google: GoogleTarget,

    /// The Secret that receives the token. Defaults to a Secret named like this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretTarget>,

    /// AlloyDB instances that injected pods reach through the AlloyDB Auth Proxy, one local
    /// port each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloydb: Option<Box<AlloyDb>>,

    /// Cloud SQL instances (PostgreSQL or MySQL) that injected pods reach through the Cloud
    /// SQL Auth Proxy v2, one local port each. The proxy finds its token at the same metadata
    /// emulator as the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudsql: Option<Box<CloudSql>>,
}

/// Where the AWS identity comes from. Set exactly one of `serviceAccount` (IRSA, the usual
/// EKS setup) or `controllerIdentity`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.serviceAccount) != has(self.controllerIdentity)").message(
    "set exactly one AWS identity source: aws.serviceAccount (IRSA, a ServiceAccount of this namespace) or aws.controllerIdentity (the controller's own identity, if the cluster admin allows this namespace)"
))]
#[serde(rename_all = "camelCase")]
pub struct AwsIdentity {
    /// IRSA: a ServiceAccount in this namespace whose token is exchanged with AWS STS
    /// (AssumeRoleWithWebIdentity) for its IAM role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountIdentity>,

    /// The controller's own AWS identity (EC2 instance role, EKS Pod Identity, ECS task role
    /// or environment credentials), optionally chained into another role. Only namespaces
    /// the cluster admin allows may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_identity: Option<ControllerIdentity>,

    /// AWS region of the STS endpoint that signs the request Google verifies, for example
    /// `us-east-1`. Defaults to the controller's region (AWS_REGION, AWS_DEFAULT_REGION, or
    /// the instance metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(
        "self.matches('^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$')"
    ).message("aws.region must be an AWS region code such as us-east-1 or eu-west-2"))]
    #[schemars(length(max = 32))]
    pub region: Option<String>,

    /// AWS STS endpoint URL override. fedcred calls it and also signs the GetCallerIdentity
    /// request Google forwards to it, so Google must be able to reach it (a VPC endpoint will
    /// not do). Defaults to the regional endpoint `https://sts.REGION.amazonaws.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(
        "isURL(self) && (self.startsWith('https://') || self.matches('^http://(127\\\\.0\\\\.0\\\\.1|localhost|\\\\[::1\\\\])(:[0-9]{1,5})?(/.*)?$'))"
    ).message("aws.stsEndpoint must be an https:// URL (plain http:// is allowed only on loopback, for local testing)"))]
    #[schemars(length(max = 2048))]
    pub sts_endpoint: Option<String>,
}

/// IRSA: a ServiceAccount of the resource's own namespace. References never cross namespaces.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountIdentity {
    /// Name of the ServiceAccount in this namespace.
    #[x_kube(validation = Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')"
    ).message("aws.serviceAccount.name must be the name of a ServiceAccount in this namespace (lowercase letters, digits, '-' and '.')"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// IAM role to assume. Defaults to the ServiceAccount's `eks.amazonaws.com/role-arn`
    /// annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = role_arn_rule("aws.serviceAccount.roleArn"))]
    #[schemars(length(max = 2048))]
    pub role_arn: Option<String>,
}

/// A Kubernetes ServiceAccount token as the identity Google verifies, with the Workload Identity
/// provider in `google.audience` being an OIDC provider that trusts this cluster's issuer
/// (through its discovery document, or the cluster's JWKS uploaded to the provider). Google
/// maps the token's subject, `system:serviceaccount:NAMESPACE:NAME`, to `google.subject`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.serviceAccount) != has(self.tokenPath)").message(
    "set exactly one of kubernetes.serviceAccount (the controller requests a token of a ServiceAccount of this namespace) and kubernetes.tokenPath (fedcred agent reads a projected token file on its host)"
))]
#[serde(rename_all = "camelCase")]
pub struct KubernetesIdentity {
    /// A ServiceAccount of this namespace; the controller asks the API server for a short-lived
    /// token of it (TokenRequest) for every exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountName>,

    /// For `fedcred agent` only: the path of a projected ServiceAccount token file, read again
    /// for every exchange (the kubelet rotates it). The controller refuses it: it never reads
    /// files a resource names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message(
        "kubernetes.tokenPath must be an absolute path such as /var/run/secrets/tokens/google"
    ))]
    #[schemars(length(min = 1, max = 1024))]
    pub token_path: Option<String>,

    /// Audience (`aud`) of the token. Defaults to `google.audience`, the provider's full
    /// resource name, which Google accepts when the provider lists no allowed audiences; set
    /// one of the provider's allowed audiences otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub audience: Option<String>,

    /// Lifetime of the requested ServiceAccount token in seconds, 600 (the API server's
    /// minimum) to 3600. It is used once, for one exchange; the Google token's lifetime is
    /// `google.tokenLifetimeSeconds`.
    #[serde(default = "default_kubernetes_token_seconds")]
    #[schemars(range(min = 600, max = 3600))]
    pub expiration_seconds: i64,
}

/// Lifetime of the ServiceAccount tokens sent to Google: the API server's minimum.
pub const DEFAULT_KUBERNETES_TOKEN_SECONDS: i64 = 600;

fn default_kubernetes_token_seconds() -> i64 {
    DEFAULT_KUBERNETES_TOKEN_SECONDS
}

/// A ServiceAccount of the resource's own namespace, by name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountName {
    /// Name of the ServiceAccount in this namespace.
    #[x_kube(validation = Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')"
    ).message("kubernetes.serviceAccount.name must be the name of a ServiceAccount in this namespace (lowercase letters, digits, '-' and '.')"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The controller's own AWS identity, optionally chained into another role.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ControllerIdentity {
    /// IAM role to assume with the controller's credentials (AssumeRole, with a session name
    /// derived from this namespace and name). Empty: present the controller's identity as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = role_arn_rule("aws.controllerIdentity.roleArn"))]
    #[schemars(length(max = 2048))]
    pub role_arn: Option<String>,
}

/// The role name's characters are spelled out rather than `\w`: the same set in the API
/// server's regular expressions (RE2's `\w` is ASCII), and a small automaton in the Rust
/// validator (the `regex` crate's `\w` is Unicode, and 576 repetitions of it exceed its size
/// limit).
fn role_arn_rule(field: &str) -> kube::core::Rule {
    kube::core::Rule::new("self.matches('^arn:aws(-cn|-us-gov|-iso|-iso-b)?:iam::[0-9]{12}:role/[0-9A-Za-z_+=,.@/-]{1,576}$')")
        .message(kube::core::Message::Message(format!(
            "{field} must be an IAM role ARN such as arn:aws:iam::123456789012:role/my-role"
        )))
}

/// The Google side of the exchange.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(
    "has(self.serviceAccount) || self.tokenLifetimeSeconds <= 3600"
).message(
    "google.tokenLifetimeSeconds above 3600 needs google.serviceAccount: Google STS issues federated tokens for at most one hour, longer lifetimes come only from impersonation"
))]
#[x_kube(validation = Rule::new(
    "has(self.serviceAccount) || !has(self.delegates) || size(self.delegates) == 0"
).message(
    "google.delegates only apply when google.serviceAccount is set"
))]
#[serde(rename_all = "camelCase")]
pub struct GoogleTarget {
    /// Full resource name of the Workload Identity Federation provider:
    /// `//iam.googleapis.com/projects/PROJECT_NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER`.
    #[x_kube(validation = Rule::new(
        "self.matches('^//iam\\\\.googleapis\\\\.com/projects/[0-9]{1,20}/locations/global/workloadIdentityPools/[a-z0-9-]{4,32}/providers/[a-z0-9-]{4,32}$')"
    ).message(
        "google.audience must look like //iam.googleapis.com/projects/PROJECT_NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER (the project number, not its ID; copy it from `gcloud iam workload-identity-pools providers describe`)"
    ))]
    #[schemars(length(max = 512))]
    pub audience: String,

    /// Google service account to impersonate, for example
    /// `app@my-project.iam.gserviceaccount.com`. Needed for AlloyDB IAM login and for
    /// lifetimes above one hour. Empty: the federated token is used directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = sa_email_rule("google.serviceAccount"))]
    #[schemars(length(max = 254))]
    pub service_account: Option<String>,

    /// Delegation chain of service-account emails for impersonation, in order; each needs
    /// roles/iam.serviceAccountTokenCreator on the next.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new(
        "self.all(d, d.matches('^[a-z0-9-]{1,63}@([a-z0-9][a-z0-9.-]*\\\\.iam|developer|appspot)\\\\.gserviceaccount\\\\.com$'))"
    ).message("every entry of google.delegates must be a service-account email such as hop@my-project.iam.gserviceaccount.com"))]
    #[schemars(length(max = 10), inner(length(max = 254)))]
    pub delegates: Vec<String>,

    /// OAuth scopes of the token.
    #[serde(default = "default_scopes")]
    #[x_kube(validation = Rule::new(
        "self.all(s, s.startsWith('https://www.googleapis.com/auth/'))"
    ).message("every entry of google.scopes must be a Google OAuth scope URL such as https://www.googleapis.com/auth/cloud-platform"))]
    #[schemars(length(min = 1, max = 20), inner(length(max = 256)))]
    pub scopes: Vec<String>,

    /// Lifetime of the access token in seconds, 600 (10 min) to 43200 (12 h). Above 3600
    /// needs impersonation and the organization policy
    /// `constraints/iam.allowServiceAccountCredentialLifetimeExtension`.
    #[serde(default = "default_token_lifetime")]
    #[schemars(range(min = 600, max = 43200))]
    pub token_lifetime_seconds: i64,

    /// Endpoint overrides, for private access or other universes. Defaults are Google's
    /// public endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<GoogleEndpoints>,
}

fn sa_email_rule(field: &str) -> kube::core::Rule {
    kube::core::Rule::new(
        "self.matches('^[a-z0-9-]{1,63}@([a-z0-9][a-z0-9.-]*\\\\.iam|developer|appspot)\\\\.gserviceaccount\\\\.com$')",
    )
    .message(kube::core::Message::Message(format!(
        "{field} must be a Google service-account email such as app@my-project.iam.gserviceaccount.com"
    )))
}

fn default_scopes() -> Vec<String> {
    vec![CLOUD_PLATFORM_SCOPE.to_owned()]
}

fn default_token_lifetime() -> i64 {
    DEFAULT_TOKEN_LIFETIME_SECONDS
}

/// Google endpoint overrides.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GoogleEndpoints {
    /// Security Token Service URL. Default `https://sts.googleapis.com/v1/token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = endpoint_rule("google.endpoints.sts"))]
    #[schemars(length(max = 2048))]
    pub sts: Option<String>,

    /// IAM Service Account Credentials base URL. Default `https://iamcredentials.googleapis.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = endpoint_rule("google.endpoints.iamCredentials"))]
    #[schemars(length(max = 2048))]
    pub iam_credentials: Option<String>,
}

/// Written with `startsWith` and `matches` rather than `url(self).getScheme()`: kube-cel reads
/// `http://localhost/…` as a bare path with no scheme, and the API server and fedcred's
/// validator must judge alike.
fn endpoint_rule(field: &str) -> kube::core::Rule {
    kube::core::Rule::new(
        "isURL(self) && (self.startsWith('https://') || self.matches('^http://(127\\\\.0\\\\.0\\\\.1|localhost|\\\\[::1\\\\])(:[0-9]{1,5})?(/.*)?$'))",
    )
    .message(kube::core::Message::Message(format!(
        "{field} must be an https:// URL (plain http:// is allowed only on loopback, for local testing)"
    )))
}

/// The Secret that receives the token, with the keys `access_token`, `expiry`, `token_type`,
/// `service_account`, `db_user` and `project_id`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretTarget {
    /// Name of the Secret in this namespace. Defaults to the FederatedCredential's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')"
    ).message("secret.name must be a valid Secret name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,

    /// Extra labels for the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations for the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// When to refresh, as a share of the token's lifetime counted back from its expiry:
    /// 50 refreshes a one-hour token about 30 minutes before it expires. A little jitter is
    /// added so resources created together do not refresh together.
    #[serde(default = "default_renew_before_percentage")]
    #[schemars(range(min = 10, max = 90))]
    pub renew_before_percentage: i32,
}

fn default_renew_before_percentage() -> i32 {
    DEFAULT_RENEW_BEFORE_PERCENTAGE
}

/// AlloyDB instances reached through the AlloyDB Auth Proxy sidecar.
// A socket's path has at most 107 bytes: /var/run/fedcred-alloydb/ (25), the instance's
// PROJECT.REGION.CLUSTER.INSTANCE (its URI less 38 bytes) and /.s.PGSQL.5432 (14).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new(
    "!(has(self.proxy) && has(self.proxy.unixSocket) && self.proxy.unixSocket) || self.instances.all(i, size(i.uri) <= 106)"
).message(
    "with alloydb.proxy.unixSocket every alloydb.instances[].uri must be at most 106 characters long, or the socket's path exceeds what Linux allows (107 bytes): use TCP ports (unixSocket: false) for this instance"
))]
#[serde(rename_all = "camelCase")]
pub struct AlloyDb {
    /// Instances to connect; each gets its own proxy sidecar on its own local port.
    #[x_kube(validation = Rule::new(
        "self.all(a, self.exists_one(b, b.port == a.port))"
    ).message(
        "each AlloyDB instance needs its own local port: set alloydb.instances[].port so that no two are equal (the default is 5432)"
    ))]
    #[x_kube(validation = env_names_unique_rule())]
    #[schemars(length(min = 1, max = 8))]
    pub instances: Vec<AlloyDbInstance>,

    /// The proxy sidecars: image, resources and flags, the same for every instance's proxy.
    /// Left out, the image is the controller's `--proxy-image` and the proxy runs with its
    /// own defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<AlloyDbProxy>,
}

/// One AlloyDB instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlloyDbInstance {
    /// Instance URI: `projects/PROJECT/locations/REGION/clusters/CLUSTER/instances/INSTANCE`.
    #[x_kube(validation = Rule::new(
        "self.matches('^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/locations/[a-z]+-[a-z]+[0-9]+/clusters/[a-z]([a-z0-9-]{0,61}[a-z0-9])?/instances/[a-z]([a-z0-9-]{0,61}[a-z0-9])?$')"
    ).message(
        "alloydb.instances[].uri must look like projects/PROJECT_ID/locations/REGION/clusters/CLUSTER/instances/INSTANCE (copy it from `gcloud alloydb instances describe --format='value(name)'`)"
    ))]
    #[schemars(length(max = 512))]
    pub uri: String,

    /// How the proxy reaches the instance: `PSC` (Private Service Connect), `PublicIP`, or
    /// `PrivateIP` (VPC peering).
    #[serde(default)]
    pub connectivity: Connectivity,

    /// Log in with the impersonated service account's IAM database user
    /// (`SA@PROJECT.iam`) instead of a password.
    #[serde(default = "default_true")]
    pub auto_iam_authn: bool,

    /// Local port the proxy listens on inside the pod (127.0.0.1). With
    /// `alloydb.proxy.unixSocket` the proxy listens on a Unix socket instead and this port is
    /// not opened.
    #[serde(default = "default_alloydb_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,

    /// Name of the variable that tells the application containers where this instance is
    /// (`127.0.0.1`, or the socket directory with `alloydb.proxy.unixSocket`). Defaults to
    /// `PGHOST` for the first instance; other instances get the variable only when it is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = env_name_rule("alloydb.instances[].hostEnvName"))]
    #[schemars(length(min = 1, max = 128))]
    pub host_env_name: Option<String>,

    /// Name of the variable holding this instance's local port (`5432` with
    /// `alloydb.proxy.unixSocket`, the number in the socket's name). Defaults to `PGPORT` for
    /// the first instance; other instances get the variable only when it is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = env_name_rule("alloydb.instances[].portEnvName"))]
    #[schemars(length(min = 1, max = 128))]
    pub port_env_name: Option<String>,

    /// Name of the variable holding the IAM database user (`SA@PROJECT.iam`), set only with
    /// `autoIamAuthn`. Defaults to `PGUSER` for the first instance; other instances get the
    /// variable only when it is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = env_name_rule("alloydb.instances[].userEnvName"))]
    #[schemars(length(min = 1, max = 128))]
    pub user_env_name: Option<String>,
}

/// The names Kubernetes accepts for a container's variables that every shell and libpq can
/// read too: a C identifier.
fn env_name_rule(field: &str) -> kube::core::Rule {
    kube::core::Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message(
        kube::core::Message::Message(format!(
            "{field} must be an environment variable name: letters, digits and '_', not starting with a digit, such as ORDERS_DB_HOST"
        )),
    )
}

/// No variable named twice across the instances, the first instance's defaults (`PGHOST`,
/// `PGPORT`, `PGUSER`) included: two values for one name would leave the application talking
/// to whichever came last.
fn env_names_unique_rule() -> kube::core::Rule {
    let name = |i: &str, field: &str, default: &str| {
        format!("(has({i}.{field}) ? {i}.{field} : ({i} == self[0] ? '{default}' : ''))")
    };
    let fields = [
        ("hostEnvName", "PGHOST"),
        ("portEnvName", "PGPORT"),
        ("userEnvName", "PGUSER"),
    ];
    // Every (instance, field) name, compared with every other (instance, field) name.
    let mut clauses = Vec::new();
    for (fa, da) in fields {
        for (fb, db) in fields {
            let (a, b) = (name("a", fa, da), name("b", fb, db));
            let same_slot = if fa == fb { "a == b || " } else { "" };
            clauses.push(format!("({same_slot}{a} == '' || {a} != {b})"));
        }
    }
    kube::core::Rule::new(format!(
        "self.all(a, self.all(b, {}))",
        clauses.join(" && ")
    ))
    .message(kube::core::Message::Message(
        "each AlloyDB variable needs its own name: alloydb.instances[].hostEnvName, portEnvName and userEnvName must differ from each other across all instances and from the first instance's defaults PGHOST, PGPORT and PGUSER".to_owned(),
    ))
}

/// Cloud SQL instances reached through the Cloud SQL Auth Proxy v2 sidecar.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.proxy) && has(self.proxy.unixSocket) && self.proxy.unixSocket) || self.instances.all(i, has(i.port))"
).message(
    "cloudsql.instances[].port is required unless cloudsql.proxy.unixSocket is true: set the local port each instance's proxy listens on"
))]
pub struct CloudSql {
    /// Instances to connect; each gets its own proxy sidecar on its own local port (or Unix
    /// socket, with `proxy.unixSocket`). The first PostgreSQL instance gets `PGHOST`, `PGPORT`
    /// and `PGUSER` when the resource has no AlloyDB instance; the first MySQL instance gets
    /// `MYSQL_HOST`, `MYSQL_TCP_PORT` and `MYSQL_USER` (on a Unix socket `MYSQL_UNIX_PORT`
    /// and `MYSQL_USER`); any other instance gets the variables it names.
    #[x_kube(validation = Rule::new(
        "self.all(a, !has(a.port) || self.exists_one(b, has(b.port) && b.port == a.port))"
    ).message(
        "each Cloud SQL instance needs its own local port: set cloudsql.instances[].port so that no two are equal"
    ))]
    #[schemars(length(min = 1, max = 8))]
    pub instances: Vec<CloudSqlInstance>,

    /// The proxy sidecars: image and resources, the same for every instance's proxy. Left
    /// out, the image is the controller's `--cloudsql-proxy-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<CloudSqlProxy>,
}

/// One Cloud SQL instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CloudSqlInstance {
    /// Instance connection name: `PROJECT:REGION:INSTANCE` (copy it from `gcloud sql
    /// instances describe INSTANCE --format='value(connectionName)'`).
    #[x_kube(validation = Rule::new(
        "self.matches('^([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]:[a-z]+-[a-z]+[0-9]+:[a-z]([a-z0-9-]{0,96}[a-z0-9])?$')"
    ).message(
        "cloudsql.instances[].connectionName must look like PROJECT_ID:REGION:INSTANCE (copy it from `gcloud sql instances describe INSTANCE --format='value(connectionName)'`)"
    ))]
    #[schemars(length(max = 256))]
    pub connection_name: String,

    /// The database engine, which names the IAM database user: `PostgreSQL` (`SA@PROJECT.iam`)
    /// or `MySQL` (the service account's name before the `@`).
    #[serde(default)]
    pub engine: DatabaseEngine,

    /// How the proxy reaches the instance: `PublicIP` (the proxy's default), `PrivateIP`
    /// (`--private-ip`) or `PSC` (`--psc`).
    #[serde(default)]
    pub connectivity: CloudSqlConnectivity,

    /// Log in with the impersonated service account's IAM database user instead of a
    /// password (`--auto-iam-authn`).
    #[serde(default = "default_true")]
    pub auto_iam_authn: bool,

    /// Local port the proxy listens on inside the pod (127.0.0.1); required unless
    /// `cloudsql.proxy.unixSocket` is true, when it is not opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: Option<i32>,

    /// Name of the variable that holds this instance's host (`127.0.0.1`); defaults as
    /// `cloudsql.instances` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = env_name_rule("cloudsql.instances[].hostEnvName"))]
    #[schemars(length(min = 1, max = 128))]
    pub host_env_name: Option<String>,

    /// Name of the variable that holds this instance's local port; defaults as
    /// `cloudsql.instances` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = env_name_rule("cloudsql.instances[].portEnvName"))]
    #[schemars(length(min = 1, max = 128))]
    pub port_env_name: Option<String>,

    /// Name of the variable that holds the IAM database user, set only with `autoIamAuthn`;
    /// defaults as `cloudsql.instances` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = env_name_rule("cloudsql.instances[].userEnvName"))]
    #[schemars(length(min = 1, max = 128))]
    pub user_env_name: Option<String>,
}

/// A Cloud SQL instance's engine.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DatabaseEngine {
    /// PostgreSQL: the IAM user is `SA@PROJECT.iam`.
    #[default]
    PostgreSQL,
    /// MySQL: the IAM user is the service account's name before the `@`.
    MySQL,
}

/// How the Cloud SQL Auth Proxy reaches an instance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CloudSqlConnectivity {
    /// The instance's public IP (the proxy's default).
    #[default]
    #[serde(rename = "PublicIP")]
    PublicIp,
    /// The instance's private IP (`--private-ip`).
    #[serde(rename = "PrivateIP")]
    PrivateIp,
    /// Private Service Connect (`--psc`).
    #[serde(rename = "PSC")]
    Psc,
}

/// The Cloud SQL Auth Proxy sidecars.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CloudSqlProxy {
    /// Proxy image, for example `gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.27.0`, or
    /// pinned by digest: `REPOSITORY@sha256:<64 hex digits>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(
        "self.contains('@') ? self.matches('^[!-?A-~]+@sha256:[0-9a-f]{64}$') : self.matches('^[!-?A-~]+$')"
    ).message(
        "cloudsql.proxy.image must be an image reference such as gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.27.0, or one pinned by digest: REPOSITORY@sha256: followed by 64 lowercase hex digits"
    ))]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Compute resources of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Listen on Unix sockets instead of TCP ports (`--unix-socket`). The sockets live in a
    /// shared `emptyDir` volume mounted at `/var/run/fedcred-cloudsql` in the proxies and in
    /// the application's containers. A PostgreSQL instance's socket is
    /// `/var/run/fedcred-cloudsql/PROJECT:REGION:INSTANCE/.s.PGSQL.5432`: its host variable
    /// names that directory and its port variable `5432`, as libpq expects. A MySQL instance's
    /// socket is the file `/var/run/fedcred-cloudsql/PROJECT:REGION:INSTANCE`, which its host
    /// variable names (by default `MYSQL_UNIX_PORT`, read by the MySQL clients); it has no
    /// port variable.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unix_socket: bool,
}

fn default_true() -> bool {
    true
}

fn default_alloydb_port() -> i32 {
    DEFAULT_ALLOYDB_PORT
}

/// Where the exchange happens. `Controller` (the default): the controller exchanges and
/// keeps the token in a Secret that the pods' metadata sidecar serves. `Pod`: each pod
/// exchanges its own AWS credentials (EKS Pod Identity, or IRSA) in its metadata sidecar,
/// `fedcred agent`, and keeps the token in memory; no Secret is written, and
/// `aws.controllerIdentity` then means the pod's own identity, which needs no permission from
/// the cluster admin. Pod Identity session names differ per pod: set
/// `aws.controllerIdentity.roleArn` to present one stable session to Google.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Exchange {
    /// The controller, with a Secret per resource.
    #[default]
    Controller,
    /// Each pod that uses the resource, in its `fedcred agent` sidecar.
    Pod,
}

impl FederatedCredentialSpec {
    /// Whether each pod exchanges its own AWS credentials (`exchange: Pod`).
    pub fn exchanges_in_pod(&self) -> bool {
        self.exchange == Some(Exchange::Pod)
    }
}

/// How the AlloyDB Auth Proxy reaches an instance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Connectivity {
    /// Private Service Connect (`--psc`).
    #[default]
    #[serde(rename = "PSC")]
    Psc,
    /// The instance's public IP (`--public-ip`).
    #[serde(rename = "PublicIP")]
    PublicIp,
    /// The instance's private IP through VPC peering (the proxy's default).
    #[serde(rename = "PrivateIP")]
    PrivateIp,
}

/// The AlloyDB Auth Proxy sidecars: these settings apply to the proxy of every instance.
/// Every setting left out keeps the proxy's own default; changing one rolls the workloads
/// whose pods use this resource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AlloyDbProxy {
    /// Proxy image, for example `gcr.io/alloydb-connectors/alloydb-auth-proxy:1.17.1`, or
    /// pinned by digest: `gcr.io/alloydb-connectors/alloydb-auth-proxy@sha256:<64 hex digits>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(
        "self.contains('@') ? self.matches('^[!-?A-~]+@sha256:[0-9a-f]{64}$') : self.matches('^[!-?A-~]+$')"
    ).message(
        "alloydb.proxy.image must be an image reference such as gcr.io/alloydb-connectors/alloydb-auth-proxy:1.17.1, or one pinned by digest: REPOSITORY@sha256: followed by 64 lowercase hex digits"
    ))]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Compute resources of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Fetch connection info and certificates only when a connection needs them
    /// (`--lazy-refresh`) instead of refreshing them in the background: for pods whose CPU is
    /// throttled, where a background refresh may not run in time.
    #[serde(default, skip_serializing_if = "is_false")]
    pub lazy_refresh: bool,

    /// Serve Prometheus metrics at `/metrics` on the proxy's health-check port
    /// (`--prometheus`), and annotate the pod `prometheus.io/scrape`, `prometheus.io/port`
    /// (the first proxy's port) and `prometheus.io/path` unless the pod sets them itself.
    #[serde(default, skip_serializing_if = "is_false")]
    pub prometheus: bool,

    /// Refuse connections beyond this many open ones per proxy (`--max-connections`); the
    /// proxy's `/readiness` then fails while it is full. Unlimited when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_connections: Option<i64>,

    /// After SIGTERM, how long to wait at most for open connections to close
    /// (`--max-sigterm-delay`), as a duration such as `30s` or `2m`. Keep it below the pod's
    /// `terminationGracePeriodSeconds` (30 s by default), or the kubelet kills the proxy first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = duration_rule("alloydb.proxy.maxSigtermDelay"))]
    #[schemars(length(min = 1, max = 9))]
    pub max_sigterm_delay: Option<String>,

    /// After SIGTERM, how long to keep accepting new connections (`--min-sigterm-delay`), as
    /// a duration such as `10s`: for applications that still open connections while they
    /// stop. Keep it below the pod's `terminationGracePeriodSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = duration_rule("alloydb.proxy.minSigtermDelay"))]
    #[schemars(length(min = 1, max = 9))]
    pub min_sigterm_delay: Option<String>,

    /// Enable the proxy's admin server on localhost with its `/quitquitquit` endpoint
    /// (`--quitquitquit --admin-port`): the first instance's proxy listens on this port, the
    /// next on the port after it, and so on. A Job's application POSTs to
    /// `http://localhost:PORT/quitquitquit` when it is done so the proxy exits with 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub admin_port: Option<i32>,

    /// Listen on a Unix socket instead of a TCP port (`--unix-socket`). The sockets live in
    /// a shared `emptyDir` volume mounted at `/var/run/fedcred-alloydb` in the proxies and in
    /// the application's containers; each instance's socket is
    /// `/var/run/fedcred-alloydb/PROJECT.REGION.CLUSTER.INSTANCE/.s.PGSQL.5432`, and the host
    /// variable (`PGHOST`) names that directory, the port variable (`PGPORT`) `5432`, as libpq
    /// expects.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unix_socket: bool,
}

/// A Go duration as the proxy parses it, in one unit, bounded so that no typo asks for days.
fn duration_rule(field: &str) -> kube::core::Rule {
    kube::core::Rule::new("self.matches('^(0|[0-9]{1,7}ms|[0-9]{1,5}s|[0-9]{1,3}m|[0-9]{1,2}h)$')")
        .message(kube::core::Message::Message(format!(
            "{field} must be a duration in one unit such as 500ms, 30s, 5m or 1h (at most 7 digits of ms, 5 of s, 3 of m, 2 of h)"
        )))
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Observed state. Everything the controller needs to schedule the next refresh is here, so
/// a restarted controller resumes where the last one stopped.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FederatedCredentialStatus {
    /// Standard conditions; `Ready` tells whether the Secret holds a valid token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// A short description of the identity in use, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,

    /// The AWS principal Google saw, for example
    /// `arn:aws:sts::123456789012:assumed-role/ROLE/SESSION`; bind Google IAM to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_principal_arn: Option<String>,

    /// The subject Google saw for a `kubernetes` source, `system:serviceaccount:NS:NAME`
    /// (mapped to `google.subject`); bind Google IAM to
    /// `principal://iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/subject/` + this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,

    /// The Google service account the token belongs to, when impersonating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google_service_account: Option<String>,

    /// The AlloyDB IAM database user of that service account (`SA@PROJECT.iam`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_user: Option<String>,

    /// Name of the Secret holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// When the token in the Secret expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// When the token was last obtained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<Time>,

    /// When the controller will next refresh the token (or retry after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_time: Option<Time>,

    /// Consecutive failed refreshes; reset by a success. Drives the retry backoff.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failure_count: i32,

    /// When the last refresh failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,

    /// Stable reason of the last failure, as in the Ready condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_reason: Option<String>,

    /// Hash of the settings injected into pods (AlloyDB instances and proxy, service
    /// account, Secret name) that workloads were last rolled for. When the spec's hash
    /// differs, the Deployments, StatefulSets and DaemonSets whose pods use this resource get
    /// the new hash in their pod-template annotation `fedcred.io/injection-hash` and roll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection_hash: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// The CRD, with doc comments reflowed so `kubectl explain` wraps them itself.
pub fn crd() -> CustomResourceDefinition {
    let mut value = serde_json::to_value(FederatedCredential::crd())
        .expect("the derived CRD serializes to JSON");
    unwrap_descriptions(&mut value);
    serde_json::from_value(value).expect("reflowing descriptions keeps the CRD valid")
}

/// Joins the hard-wrapped lines of doc comments; blank lines stay paragraph breaks.
fn unwrap_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|para| {
                                para.split('\n')
                                    .map(str::trim)
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(v),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "aws": {"serviceAccount": {"name": "app"}},
            "google": {"audience": "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/aws"}
        })
    }

    #[test]
    fn defaults_fill_in_what_users_leave_out() {
        let spec: FederatedCredentialSpec = serde_json::from_value(minimal()).unwrap();
        assert_eq!(spec.google.scopes, vec![CLOUD_PLATFORM_SCOPE]);
        assert_eq!(spec.google.token_lifetime_seconds, 3600);
        assert_eq!(spec.secret, None);
        let inst: AlloyDbInstance = serde_json::from_value(
            serde_json::json!({"uri": "projects/p/locations/r/clusters/c/instances/i"}),
        )
        .unwrap();
        assert_eq!(inst.connectivity, Connectivity::Psc);
        assert!(inst.auto_iam_authn);
        assert_eq!(inst.port, 5432);
    }

    #[test]
    fn crd_carries_names_subresource_and_columns() {
        let crd = serde_json::to_value(crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "federatedcredentials.fedcred.io");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "fedcred");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            ["Ready", "Identity", "Google SA", "Expires", "Age"]
        );
    }

    #[test]
    fn every_cel_rule_has_a_message() {
        fn walk(v: &serde_json::Value, found: &mut usize) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(rules) = map.get("x-kubernetes-validations") {
                        for rule in rules.as_array().unwrap() {
                            let msg = rule["message"].as_str().unwrap_or_default();
                            assert!(msg.len() > 20, "rule without a helpful message: {rule}");
                            *found += 1;
                        }
                    }
                    map.values().for_each(|v| walk(v, found));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
                _ => {}
            }
        }
        let crd = serde_json::to_value(crd()).unwrap();
        let mut found = 0;
        walk(&crd, &mut found);
        assert!(
            found >= 12,
            "expected the CEL rules of the API, found {found}"
        );
    }
}

//! What the doubles are configured with: the Workload Identity providers (audience, attribute
//! condition, disabled flag), the IAM bindings that allow impersonation, which AWS STS endpoints
//! and keys are trusted, and token lifetimes.
//!
//! Plain data. (De)serializable so the `fedcred-doubles` binary can read it from JSON; every
//! field has a default, durations are whole seconds, e.g.
//!
//! ```json
//! {
//!   "providers": [{"audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/aws-pool/providers/aws-prov",
//!                  "condition": {"aws_role_equals": "arn:aws:sts::123456789012:assumed-role/demo"}}],
//!   "bindings": [{"service_account": "app@proj.iam.gserviceaccount.com",
//!                 "members": ["principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/aws-pool/attribute.aws_role/arn:aws:sts::123456789012:assumed-role/demo"]}],
//!   "aws_sts_endpoints": ["http://127.0.0.1:5000"],
//!   "moto_url": "http://127.0.0.1:5000",
//!   "federated_lifetime": 3600
//! }
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default lifetime of federated (STS) tokens and the default impersonation limit.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The impersonation limit when the org policy
/// `constraints/iam.allowServiceAccountCredentialLifetimeExtension` allows the service account.
pub const EXTENDED_LIFETIME: Duration = Duration::from_secs(43200);

/// Everything the doubles decide with.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Workload Identity providers Google STS knows.
    pub providers: Vec<Provider>,
    /// Who may impersonate which service account.
    pub bindings: Vec<Binding>,
    /// `scheme://host[:port]` of AWS STS endpoints a subject token may point at (real Google:
    /// only AWS's own hosts; in tests, the moto server's URL).
    pub aws_sts_endpoints: Vec<String>,
    /// `(accepted origin, base URL)`: where the GetCallerIdentity call for an accepted endpoint
    /// is really sent, as a hosts-file entry would. Lets a client sign for the real
    /// `https://sts.REGION.amazonaws.com` while moto answers. Unrouted origins are called as they
    /// are.
    pub aws_sts_routes: Vec<(String, String)>,
    /// `(access key id, secret access key)` pairs the signature verifier knows.
    pub static_keys: Vec<(String, String)>,
    /// A moto server whose `/moto-api/data.json` lists the temporary credentials it issued.
    pub moto_url: Option<String>,
    /// Require the `x-goog-cloud-target-resource` header to be among the signed headers.
    /// Google's Python library does not sign it; fedcred does.
    pub require_signed_target: bool,
    /// Lifetime of tokens the STS double issues.
    #[serde(with = "seconds")]
    pub federated_lifetime: Duration,
    /// Longest `lifetime` the IAM Credentials double grants ([`EXTENDED_LIFETIME`] models the
    /// lifetime-extension org policy).
    #[serde(with = "seconds")]
    pub max_impersonation_lifetime: Duration,
    /// Answer STS `expires_in` as a JSON string, as Google sometimes does.
    pub expires_in_as_string: bool,
    /// The AlloyDB Admin API and instance doubles, started by the `fedcred-doubles` binary
    /// when present (see [`crate::alloydb::AlloyDbConfig`]).
    pub alloydb: Option<crate::alloydb::AlloyDbConfig>,
    /// Grant impersonated tokens at most this many seconds, whatever lifetime was asked for.
    /// Google never does this; it compresses time in tests, where the CRD's shortest lifetime
    /// (ten minutes) would be too slow.
    pub impersonated_lifetime_cap_seconds: Option<u64>,
    /// Judge the times of JWT subject tokens as if the clock were this many seconds ahead: a
    /// real, freshly issued ServiceAccount token is then expired for the double.
    pub jwt_clock_offset_seconds: i64,
    /// Lifetime of the ID tokens `generateIdToken` signs (Google: one hour).
    #[serde(with = "seconds")]
    pub id_token_lifetime: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            providers: Vec::new(),
            bindings: Vec::new(),
            aws_sts_endpoints: Vec::new(),
            aws_sts_routes: Vec::new(),
            static_keys: Vec::new(),
            moto_url: None,
            require_signed_target: false,
            federated_lifetime: DEFAULT_LIFETIME,
            max_impersonation_lifetime: DEFAULT_LIFETIME,
            expires_in_as_string: false,
            alloydb: None,
            impersonated_lifetime_cap_seconds: None,
            jwt_clock_offset_seconds: 0,
            id_token_lifetime: DEFAULT_LIFETIME,
        }
    }
}

impl Config {
    /// A config trusting the moto server at `moto_url`, both as the AWS STS endpoint subject
    /// tokens may name and as the source of secret keys.
    pub fn with_moto(moto_url: &str) -> Config {
        Config {
            aws_sts_endpoints: vec![moto_url.to_owned()],
            moto_url: Some(moto_url.to_owned()),
            ..Config::default()
        }
    }

    /// Accepts subject tokens signed for the real regional AWS STS endpoint of `region`
    /// (`https://sts.REGION.amazonaws.com`) and sends their GetCallerIdentity call to
    /// `base_url` (moto) instead.
    pub fn route_aws_region(mut self, region: &str, base_url: &str) -> Config {
        let origin = format!("https://sts.{region}.amazonaws.com");
        self.aws_sts_endpoints.push(origin.clone());
        self.aws_sts_routes.push((origin, base_url.to_owned()));
        self
    }

    /// Adds a provider.
    pub fn provider(mut self, provider: Provider) -> Config {
        self.providers.push(provider);
        self
    }

    /// Adds a binding.
    pub fn binding(mut self, binding: Binding) -> Config {
        self.bindings.push(binding);
        self
    }
}

impl fmt::Debug for Config {
    // Secrets of the static keys never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key_ids: Vec<&str> = self.static_keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Config")
            .field("providers", &self.providers)
            .field("bindings", &self.bindings)
            .field("aws_sts_endpoints", &self.aws_sts_endpoints)
            .field("aws_sts_routes", &self.aws_sts_routes)
            .field("static_keys (ids)", &key_ids)
            .field("moto_url", &self.moto_url)
            .field("require_signed_target", &self.require_signed_target)
            .field("federated_lifetime", &self.federated_lifetime)
            .field(
                "max_impersonation_lifetime",
                &self.max_impersonation_lifetime,
            )
            .field("expires_in_as_string", &self.expires_in_as_string)
            .field("alloydb", &self.alloydb)
            .field(
                "impersonated_lifetime_cap_seconds",
                &self.impersonated_lifetime_cap_seconds,
            )
            .field("jwt_clock_offset_seconds", &self.jwt_clock_offset_seconds)
            .finish()
    }
}

/// A Workload Identity pool provider for AWS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Full resource name, as sent in the STS `audience`:
    /// `//iam.googleapis.com/projects/NUM/locations/global/workloadIdentityPools/POOL/providers/ID`.
    pub audience: String,
    /// The provider's attribute condition.
    #[serde(default)]
    pub condition: Condition,
    /// The provider's attribute mapping as Google takes it: target attribute → CEL expression
    /// over `assertion` (`arn`, `account`). Empty: the mapping of seed 003 (see
    /// [`crate::attributes`]).
    #[serde(default)]
    pub attribute_mapping: std::collections::BTreeMap<String, String>,
    /// A disabled provider answers like a missing one.
    #[serde(default)]
    pub disabled: bool,
    /// An OIDC provider (Kubernetes ServiceAccount tokens) instead of an AWS one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<Oidc>,
}

/// The OIDC side of a provider, as `gcloud iam workload-identity-pools providers create-oidc`
/// sets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oidc {
    /// `--issuer-uri`: the token's `iss` must equal it; without uploaded keys, its discovery
    /// document (`ISSUER/.well-known/openid-configuration`) names the JWKS.
    pub issuer_uri: String,
    /// `--allowed-audiences`; empty: the provider's own resource name.
    #[serde(default)]
    pub allowed_audiences: Vec<String>,
    /// `--jwk-json-path`: an uploaded JWKS (JSON text), for issuers Google cannot reach.
    #[serde(default)]
    pub jwks_json: Option<String>,
    /// PEM of a CA trusted when fetching the discovery document and JWKS. Google trusts public
    /// CAs only; a local API server's certificate comes from its own CA.
    #[serde(default)]
    pub discovery_ca_pem: Option<String>,
}

impl Provider {
    /// An enabled provider without attribute condition.
    pub fn new(audience: &str) -> Provider {
        Provider {
            audience: audience.to_owned(),
            condition: Condition::None,
            attribute_mapping: std::collections::BTreeMap::new(),
            disabled: false,
            oidc: None,
        }
    }

    /// An enabled OIDC provider without attribute condition.
    pub fn oidc(audience: &str, oidc: Oidc) -> Provider {
        Provider {
            oidc: Some(oidc),
            ..Provider::new(audience)
        }
    }

    /// The provider maps attributes with these CEL expressions, as `--attribute-mapping`
    /// sets them.
    pub fn with_mapping(mut self, mapping: &[(&str, &str)]) -> Provider {
        self.attribute_mapping = mapping
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self
    }

    pub fn with_condition(mut self, condition: Condition) -> Provider {
        self.condition = condition;
        self
    }
}

/// An attribute condition, evaluated after the attribute mapping. JSON: `"none"`,
/// `{"arn_contains": "…"}`, `{"aws_role_equals": "…"}`, `{"cel": "…"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// No condition: every verified AWS identity is accepted.
    #[default]
    None,
    /// CEL `assertion.arn.contains(VALUE)`.
    ArnContains(String),
    /// CEL `attribute.aws_role == VALUE` (seed 003's condition).
    AwsRoleEquals(String),
    /// CEL `attribute.namespace == VALUE`, for OIDC providers of Kubernetes clusters.
    NamespaceEquals(String),
    /// Any CEL expression over `assertion`, `google` and `attribute`, as
    /// `--attribute-condition` takes it; it admits when it evaluates to `true`.
    Cel(String),
}

/// An IAM policy binding of `roles/iam.workloadIdentityUser` (or Token Creator) on a service
/// account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The service account's email.
    pub service_account: String,
    /// Members: `principal://…/subject/S`, `principalSet://…/attribute.NAME/V`,
    /// `principalSet://…/*`, `serviceAccount:EMAIL` (see [`crate::names`]).
    pub members: Vec<String>,
}

impl Binding {
    pub fn new(service_account: &str, members: &[String]) -> Binding {
        Binding {
            service_account: service_account.to_owned(),
            members: members.to_vec(),
        }
    }
}

/// Durations as whole seconds in JSON.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_with_defaults() {
        let config: Config = serde_json::from_str(
            r#"{"providers":[{"audience":"a","condition":{"aws_role_equals":"r"}}],
                "static_keys":[["AKID","very-secret"]],"federated_lifetime":600}"#,
        )
        .unwrap();
        assert_eq!(
            config.providers[0].condition,
            Condition::AwsRoleEquals("r".into())
        );
        assert_eq!(config.federated_lifetime, Duration::from_secs(600));
        assert_eq!(config.max_impersonation_lifetime, DEFAULT_LIFETIME);
        assert!(!format!("{config:?}").contains("very-secret"));
        let none: Provider =
            serde_json::from_str(r#"{"audience":"a","condition":"none"}"#).unwrap();
        assert_eq!(none.condition, Condition::None);
        let cel: Provider = serde_json::from_str(
            r#"{"audience":"a","condition":{"cel":"assertion.arn in ['x']"},
                "attribute_mapping":{"google.subject":"assertion.arn"}}"#,
        )
        .unwrap();
        assert_eq!(
            cel.condition,
            Condition::Cel("assertion.arn in ['x']".into())
        );
        assert_eq!(cel.attribute_mapping["google.subject"], "assertion.arn");
    }
}

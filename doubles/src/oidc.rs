//! Workload Identity providers of the OIDC kind, as Google STS applies them to a JWT subject
//! token (`urn:ietf:params:oauth:token-type:jwt`), for Kubernetes ServiceAccount tokens.
//!
//! In Google's order: the token's shape and header, its `iss` against the provider's issuer
//! URI, the keys (the JWKS uploaded to the provider, or the issuer's discovery document and the
//! `jwks_uri` it names, fetched now), the RS256 or ES256 signature with the key the header's
//! `kid` names,
//! `aud` against the allowed audiences (or, when none are listed, the provider's own resource
//! name in either of its two spellings), then the time window (`exp`, `nbf`, `iat`, and a
//! lifetime of at most a day). Then the attribute mapping:
//!
//! ```text
//! google.subject                 = assertion.sub
//! attribute.namespace            = assertion['kubernetes.io']['namespace']
//! attribute.service_account_name = assertion['kubernetes.io']['serviceaccount']['name']
//! ```
//!
//! Nothing about a token is taken on trust because of who sent it: the signature is checked
//! with aws-lc-rs against keys that come from the provider's configuration or the issuer.
//! [`TestKey`] makes keys and tokens of its own, for tests that need a token the provider must
//! refuse.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, KeyPair as _, RsaKeyPair, RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::attributes::MAX_SUBJECT_BYTES;
use crate::config::{Condition, Oidc};

/// Longest lifetime (`exp - iat`) Google accepts for an OIDC token.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Clock skew tolerated on `nbf` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(60);

/// Why a JWT was refused. Each `Display` is the `error_description` Google answers with
/// (`invalid_grant`, except [`OidcError::Unsupported`]), phrased after the answers Google gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OidcError {
    /// Not three base64url parts of JSON.
    Malformed(String),
    /// An algorithm other than RS256 and ES256.
    Unsupported(String),
    /// `iss` is not the provider's issuer URI.
    Issuer { token: String, expected: String },
    /// The discovery document or the JWKS could not be fetched.
    IssuerUnreachable(String),
    /// The discovery document names another issuer.
    DiscoveryIssuer,
    /// No key of the set verifies the signature.
    Signature(String),
    /// `aud` is not accepted.
    Audience { token: Vec<String> },
    /// `exp` has passed.
    Expired { exp: i64, now: i64 },
    /// `nbf` or `iat` lies in the future.
    NotYetValid { at: i64, now: i64 },
    /// `exp - iat` exceeds a day.
    TooLong,
    /// `google.subject` would exceed Google's limit.
    SubjectTooLong(usize),
}

impl std::fmt::Display for OidcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OidcError::Malformed(what) => write!(f, "Unable to parse the ID Token: {what}."),
            OidcError::Unsupported(alg) => write!(
                f,
                "The ID Token's signing algorithm {alg} is not supported; use RS256 or ES256."
            ),
            OidcError::Issuer { token, expected } => write!(
                f,
                "The issuer in ID Token {token} does not match the expected ones: {expected}."
            ),
            OidcError::IssuerUnreachable(problem) => write!(
                f,
                "Error connecting to the given credential's issuer. ({problem})"
            ),
            OidcError::DiscoveryIssuer => f.write_str(
                "`issuer` claim in OIDC discovery document does not match the issuer specified in the request.",
            ),
            OidcError::Signature(kid) => write!(
                f,
                "Invalid ID Token: the signature cannot be verified with the provider's keys (kid {kid})."
            ),
            OidcError::Audience { token } => write!(
                f,
                "The audience in ID Token {token:?} does not match the expected audience."
            ),
            OidcError::Expired { exp, now } => {
                write!(f, "ID Token expired at {exp} (now {now}).")
            }
            OidcError::NotYetValid { at, now } => {
                write!(f, "ID Token is not yet valid: issued for {at}, now {now}.")
            }
            OidcError::TooLong => f.write_str(
                "The ID Token's lifetime (exp - iat) exceeds the 24 hours Google accepts.",
            ),
            OidcError::SubjectTooLong(len) => write!(
                f,
                "The size of mapped attribute google.subject exceeds the {MAX_SUBJECT_BYTES} bytes \
                 limit ({len} bytes)."
            ),
        }
    }
}

/// A JWT split and decoded, not yet verified.
pub struct Jwt {
    pub header: Value,
    pub claims: Value,
    /// `header.payload`, what the signature covers.
    signed: String,
    signature: Vec<u8>,
}

impl Jwt {
    pub fn parse(token: &str) -> Result<Jwt, OidcError> {
        let parts: Vec<&str> = token.split('.').collect();
        let [header, payload, signature] = parts[..] else {
            return Err(OidcError::Malformed("not three dot-separated parts".into()));
        };
        let json = |part: &str, what: &str| -> Result<Value, OidcError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| OidcError::Malformed(format!("the {what} is not base64url")))?;
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|_| OidcError::Malformed(format!("the {what} is not JSON")))?;
            if value.is_object() {
                Ok(value)
            } else {
                Err(OidcError::Malformed(format!("the {what} is not an object")))
            }
        };
        Ok(Jwt {
            header: json(header, "header")?,
            claims: json(payload, "payload")?,
            signed: format!("{header}.{payload}"),
            signature: URL_SAFE_NO_PAD
                .decode(signature)
                .map_err(|_| OidcError::Malformed("the signature is not base64url".into()))?,
        })
    }

    fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    fn claim_time(&self, name: &str) -> Option<i64> {
        self.claims.get(name).and_then(Value::as_i64)
    }

    /// `aud` as a list (a JWT may carry one string or an array).
    fn audiences(&self) -> Vec<String> {
        match self.claims.get("aud") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A verification key of a JWKS document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Jwk {
    /// An RSA key (RS256): modulus and exponent, big-endian.
    Rsa {
        kid: Option<String>,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// A P-256 key (ES256): the uncompressed point `04 || x || y`.
    P256 { kid: Option<String>, point: Vec<u8> },
}

impl Jwk {
    fn kid(&self) -> Option<&str> {
        match self {
            Jwk::Rsa { kid, .. } | Jwk::P256 { kid, .. } => kid.as_deref(),
        }
    }
}

/// The signing keys of a JWKS document that Google can use: RSA, and EC on P-256. Keys for
/// encryption and of other curves are skipped.
pub fn signing_keys(jwks: &Value) -> Vec<Jwk> {
    jwks.get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|k| {
            k.get("use")
                .and_then(Value::as_str)
                .is_none_or(|u| u == "sig")
        })
        .filter_map(|k| {
            let b64 = |name: &str| {
                k.get(name)
                    .and_then(Value::as_str)
                    .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            };
            let kid = k.get("kid").and_then(Value::as_str).map(str::to_owned);
            match k.get("kty").and_then(Value::as_str)? {
                "RSA" => Some(Jwk::Rsa {
                    kid,
                    n: b64("n")?,
                    e: b64("e")?,
                }),
                "EC" if k.get("crv").and_then(Value::as_str) == Some("P-256") => {
                    let (x, y) = (b64("x")?, b64("y")?);
                    if x.len() != 32 || y.len() != 32 {
                        return None;
                    }
                    let mut point = vec![4];
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    Some(Jwk::P256 { kid, point })
                }
                _ => None,
            }
        })
        .collect()
}

/// Checks the header and `iss` of `jwt` for `provider`; the keys come next.
pub fn check_issuer(jwt: &Jwt, provider: &Oidc) -> Result<(), OidcError> {
    match jwt.header.get("alg").and_then(Value::as_str) {
        Some("RS256" | "ES256") => {}
        other => return Err(OidcError::Unsupported(other.unwrap_or("none").to_owned())),
    }
    let iss = jwt.claim_str("iss").unwrap_or_default();
    if iss != provider.issuer_uri {
        return Err(OidcError::Issuer {
            token: iss.to_owned(),
            expected: provider.issuer_uri.clone(),
        });
    }
    Ok(())
}

/// Verifies the signature of `jwt` (RS256 or ES256, as its header says) with the key of `jwks`
/// its `kid` names (any key of the algorithm's type when the header names none).
pub fn verify_signature(jwt: &Jwt, jwks: &Value) -> Result<(), OidcError> {
    let kid = jwt.header.get("kid").and_then(Value::as_str);
    let alg = jwt.header.get("alg").and_then(Value::as_str);
    let message = jwt.signed.as_bytes();
    let verified = signing_keys(jwks)
        .into_iter()
        .filter(|key| kid.is_none() || key.kid() == kid)
        .any(|key| match (alg, key) {
            (Some("RS256"), Jwk::Rsa { n, e, .. }) => RsaPublicKeyComponents { n: &n, e: &e }
                .verify(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    message,
                    &jwt.signature,
                )
                .is_ok(),
            // JWS carries ECDSA signatures as fixed-width r || s.
            (Some("ES256"), Jwk::P256 { point, .. }) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
                    .verify(message, &jwt.signature)
                    .is_ok()
            }
            _ => false,
        });
    if verified {
        Ok(())
    } else {
        Err(OidcError::Signature(kid.unwrap_or("none").to_owned()))
    }
}

/// The audiences Google accepts when the provider lists none: its own resource name, with
/// the `//` or the `https://` prefix.
fn default_audiences(provider_audience: &str) -> Vec<String> {
    let path = provider_audience.trim_start_matches("//");
    vec![provider_audience.to_owned(), format!("https://{path}")]
}

/// Checks `aud`, then the time window at `now`.
pub fn check_claims(
    jwt: &Jwt,
    provider: &Oidc,
    provider_audience: &str,
    now: SystemTime,
) -> Result<(), OidcError> {
    let accepted = if provider.allowed_audiences.is_empty() {
        default_audiences(provider_audience)
    } else {
        provider.allowed_audiences.clone()
    };
    let token = jwt.audiences();
    if !token.iter().any(|a| accepted.contains(a)) {
        return Err(OidcError::Audience { token });
    }
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let leeway = LEEWAY.as_secs() as i64;
    let exp = jwt
        .claim_time("exp")
        .ok_or_else(|| OidcError::Malformed("the exp claim is missing".into()))?;
    if exp <= now {
        return Err(OidcError::Expired { exp, now });
    }
    for name in ["nbf", "iat"] {
        if let Some(at) = jwt.claim_time(name)
            && at > now + leeway
        {
            return Err(OidcError::NotYetValid { at, now });
        }
    }
    let iat = jwt
        .claim_time("iat")
        .ok_or_else(|| OidcError::Malformed("the iat claim is missing".into()))?;
    if exp - iat > MAX_TOKEN_LIFETIME.as_secs() as i64 {
        return Err(OidcError::TooLong);
    }
    Ok(())
}

/// The attribute mapping of a Kubernetes provider.
pub fn map(jwt: &Jwt) -> Result<BTreeMap<String, String>, OidcError> {
    let sub = jwt
        .claim_str("sub")
        .ok_or_else(|| OidcError::Malformed("the sub claim is missing".into()))?;
    if sub.len() > MAX_SUBJECT_BYTES {
        return Err(OidcError::SubjectTooLong(sub.len()));
    }
    let mut attributes = BTreeMap::new();
    attributes.insert("google.subject".to_owned(), sub.to_owned());
    let k8s = &jwt.claims["kubernetes.io"];
    if let Some(ns) = k8s["namespace"].as_str() {
        attributes.insert("attribute.namespace".to_owned(), ns.to_owned());
    }
    if let Some(name) = k8s["serviceaccount"]["name"].as_str() {
        attributes.insert("attribute.service_account_name".to_owned(), name.to_owned());
    }
    Ok(attributes)
}

/// Whether `condition` admits the mapped attributes of a JWT. AWS-only conditions admit no JWT.
pub fn admits(condition: &Condition, attributes: &BTreeMap<String, String>) -> bool {
    match condition {
        Condition::None => true,
        Condition::NamespaceEquals(ns) => {
            attributes.get("attribute.namespace").map(String::as_str) == Some(ns.as_str())
        }
        Condition::ArnContains(_) | Condition::AwsRoleEquals(_) => false,
        // The JWT's claims are behind the mapping: the condition reads the mapped attributes,
        // and `assertion.sub` (the only claim every ServiceAccount token has as a string).
        Condition::Cel(expression) => {
            let sub = attributes
                .get("google.subject")
                .cloned()
                .unwrap_or_default();
            let assertion: std::collections::HashMap<String, String> =
                [("sub".to_owned(), sub)].into_iter().collect();
            crate::attributes::cel_admits(expression, assertion.into(), attributes)
        }
    }
}

/// A signing key of a test's own (RSA or P-256), for tokens a provider must refuse (a key it
/// does not hold) and for JWKS to upload in place of the cluster's (a rotation on the Google
/// side).
pub struct TestKey {
    pair: TestPair,
    pub kid: String,
}

enum TestPair {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
}

impl TestKey {
    /// A 2048-bit RSA key (RS256).
    pub fn generate(kid: &str) -> TestKey {
        TestKey {
            pair: TestPair::Rsa(
                RsaKeyPair::generate(KeySize::Rsa2048).expect("aws-lc-rs generates RSA keys"),
            ),
            kid: kid.to_owned(),
        }
    }

    /// A P-256 key (ES256).
    pub fn generate_p256(kid: &str) -> TestKey {
        TestKey {
            pair: TestPair::P256(
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .expect("aws-lc-rs generates P-256 keys"),
            ),
            kid: kid.to_owned(),
        }
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> Value {
        let key = match &self.pair {
            TestPair::Rsa(pair) => {
                let public = pair.public_key();
                json!({
                    "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                    "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                })
            }
            TestPair::P256(pair) => {
                // The uncompressed point: 04 || x || y.
                let point = pair.public_key().as_ref();
                json!({
                    "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": self.kid,
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                })
            }
        };
        json!({ "keys": [key] })
    }

    /// `claims` signed under this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let alg = match self.pair {
            TestPair::Rsa(_) => "RS256",
            TestPair::P256(_) => "ES256",
        };
        let header = json!({"alg": alg, "kid": self.kid, "typ": "JWT"});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.pair {
            TestPair::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signed.as_bytes(),
                    &mut sig,
                )
                .expect("signing with a fresh key works");
                sig
            }
            TestPair::P256(pair) => pair
                .sign(&rng, signed.as_bytes())
                .expect("signing with a fresh key works")
                .as_ref()
                .to_vec(),
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIENCE: &str = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/k8s/providers/cluster";

    fn provider() -> Oidc {
        Oidc {
            issuer_uri: "https://issuer.example".into(),
            allowed_audiences: Vec::new(),
            jwks_json: None,
            discovery_ca_pem: None,
        }
    }

    fn epoch(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn claims(aud: &str, iat: i64, exp: i64) -> Value {
        json!({"iss": "https://issuer.example", "aud": [aud], "sub": "system:serviceaccount:shop:orders-api",
               "iat": iat, "nbf": iat, "exp": exp,
               "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "orders-api", "uid": "u"}}})
    }

    #[test]
    fn a_token_verifies_only_with_the_key_that_signed_it() {
        let key = TestKey::generate("k1");
        let other = TestKey::generate("k1");
        let jwt = Jwt::parse(&key.sign(&claims(AUDIENCE, 1000, 1600))).unwrap();
        check_issuer(&jwt, &provider()).unwrap();
        verify_signature(&jwt, &key.jwks()).unwrap();
        assert_eq!(
            verify_signature(&jwt, &other.jwks()),
            Err(OidcError::Signature("k1".into()))
        );
        // A flipped claim breaks the signature.
        let token = key.sign(&claims(AUDIENCE, 1000, 1600));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(claims(AUDIENCE, 1000, 99999).to_string());
        let forged = Jwt::parse(&parts.join(".")).unwrap();
        assert!(verify_signature(&forged, &key.jwks()).is_err());
    }

    #[test]
    fn es256_tokens_verify_with_p256_keys_only() {
        let key = TestKey::generate_p256("ec");
        let jwt = Jwt::parse(&key.sign(&claims(AUDIENCE, 1000, 1600))).unwrap();
        check_issuer(&jwt, &provider()).unwrap();
        verify_signature(&jwt, &key.jwks()).unwrap();
        assert!(verify_signature(&jwt, &TestKey::generate_p256("ec").jwks()).is_err());
        // An RSA key of the same kid does not verify an ES256 token, nor the reverse.
        assert!(verify_signature(&jwt, &TestKey::generate("ec").jwks()).is_err());
        let rsa = TestKey::generate("ec");
        let rs256 = Jwt::parse(&rsa.sign(&claims(AUDIENCE, 1000, 1600))).unwrap();
        assert!(verify_signature(&rs256, &key.jwks()).is_err());
    }

    #[test]
    fn audience_and_time_window_are_checked() {
        let key = TestKey::generate("k");
        let check = |c: Value, now: u64| {
            check_claims(
                &Jwt::parse(&key.sign(&c)).unwrap(),
                &provider(),
                AUDIENCE,
                epoch(now),
            )
        };
        check(claims(AUDIENCE, 1000, 1600), 1100).unwrap();
        let https = format!("https://{}", AUDIENCE.trim_start_matches("//"));
        check(claims(&https, 1000, 1600), 1100).unwrap();
        assert!(matches!(
            check(claims("sts.amazonaws.com", 1000, 1600), 1100),
            Err(OidcError::Audience { .. })
        ));
        assert_eq!(
            check(claims(AUDIENCE, 1000, 1600), 1600),
            Err(OidcError::Expired {
                exp: 1600,
                now: 1600
            })
        );
        assert!(matches!(
            check(claims(AUDIENCE, 2000, 2600), 1100),
            Err(OidcError::NotYetValid { .. })
        ));
        assert_eq!(
            check(claims(AUDIENCE, 1000, 1000 + 90000), 1100),
            Err(OidcError::TooLong)
        );
        let listed = Oidc {
            allowed_audiences: vec!["my-cluster".into()],
            ..provider()
        };
        let jwt = Jwt::parse(&key.sign(&claims(AUDIENCE, 1000, 1600))).unwrap();
        assert!(check_claims(&jwt, &listed, AUDIENCE, epoch(1100)).is_err());
    }

    #[test]
    fn maps_subject_and_namespace_and_applies_the_condition() {
        let key = TestKey::generate("k");
        let jwt = Jwt::parse(&key.sign(&claims(AUDIENCE, 1000, 1600))).unwrap();
        let attributes = map(&jwt).unwrap();
        assert_eq!(
            attributes["google.subject"],
            "system:serviceaccount:shop:orders-api"
        );
        assert_eq!(attributes["attribute.namespace"], "shop");
        assert!(admits(
            &Condition::NamespaceEquals("shop".into()),
            &attributes
        ));
        assert!(!admits(
            &Condition::NamespaceEquals("billing".into()),
            &attributes
        ));
        assert!(!admits(&Condition::ArnContains("".into()), &attributes));
    }

    #[test]
    fn other_algorithms_and_issuers_are_refused() {
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims(AUDIENCE, 1, 2).to_string())
        );
        let jwt = Jwt::parse(&none).unwrap();
        assert_eq!(
            check_issuer(&jwt, &provider()),
            Err(OidcError::Unsupported("none".into()))
        );
        let key = TestKey::generate("k");
        let mut c = claims(AUDIENCE, 1, 2);
        c["iss"] = json!("https://elsewhere.example");
        let jwt = Jwt::parse(&key.sign(&c)).unwrap();
        assert!(matches!(
            check_issuer(&jwt, &provider()),
            Err(OidcError::Issuer { .. })
        ));
        assert!(Jwt::parse("a.b").is_err());
    }
}

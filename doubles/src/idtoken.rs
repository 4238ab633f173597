//! ID tokens, as Google issues them for service accounts: IAM Credentials
//! `POST /v1/projects/-/serviceAccounts/{EMAIL}:generateIdToken` answers `{"token"}`, an RS256
//! JWT signed with a key generated when the doubles start, whose public half is published the
//! two ways Google publishes its own: a JWKS at `GET /oauth2/v3/certs` and PEM certificates by
//! key id at `GET /oauth2/v1/certs`. A receiving service verifies with either.
//!
//! The claims are Google's: `iss` `https://accounts.google.com`, `aud` the requested audience,
//! `sub` and `azp` the account's numeric unique id, `iat`, `exp` (an hour later, or
//! [`crate::Config::id_token_lifetime`]) and, with `includeEmail`, `email` and
//! `email_verified`. The caller needs a live token with an IAM-capable scope and a binding
//! on the account (Google's `iam.serviceAccounts.getOpenIdToken`; a service account asking for
//! its own ID token needs that binding on itself too).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{CertificateParams, KeyPair, PKCS_RSA_SHA256, RsaKeySize, SigningKey};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// `iss` of every Google-signed ID token.
pub const ISSUER: &str = "https://accounts.google.com";

/// The signing key, its key id and its published forms.
pub(crate) struct Signer {
    key: KeyPair,
    kid: String,
    jwks: Value,
    pem_certs: Value,
}

impl Signer {
    pub fn generate() -> Result<Signer, String> {
        let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)
            .map_err(|e| format!("generating the ID token signing key failed: {e}"))?;
        let (n, e) = rsa_components(key.public_key_raw())?;
        let kid = hex::encode(&Sha256::digest(key.public_key_raw())[..20]);
        let cert = CertificateParams::new(Vec::<String>::new())
            .and_then(|params| params.self_signed(&key))
            .map_err(|e| format!("self-signing the ID token certificate failed: {e}"))?;
        let jwks = json!({"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e),
        }]});
        let pem_certs = json!({ kid.clone(): cert.pem() });
        Ok(Signer {
            key,
            kid,
            jwks,
            pem_certs,
        })
    }

    /// `GET /oauth2/v3/certs`.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// `GET /oauth2/v1/certs`.
    pub fn pem_certs(&self) -> &Value {
        &self.pem_certs
    }

    /// A signed ID token of `email` for `audience`, issued at `now`.
    pub fn id_token(
        &self,
        email: &str,
        audience: &str,
        include_email: bool,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<String, String> {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let id = unique_id(email);
        let mut claims = json!({
            "iss": ISSUER, "aud": audience, "azp": id, "sub": id,
            "iat": iat, "exp": iat + lifetime.as_secs(),
        });
        if include_email {
            claims["email"] = json!(email);
            claims["email_verified"] = json!(true);
        }
        let header = json!({"alg": "RS256", "kid": self.kid, "typ": "JWT"});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(signing_input.as_bytes())
            .map_err(|e| format!("signing the ID token failed: {e}"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// The numeric unique id Google gives a service account (21 digits), derived from its email so
/// it is stable across runs.
pub fn unique_id(email: &str) -> String {
    let digest = Sha256::digest(email.to_ascii_lowercase().as_bytes());
    let mut n = u128::from_be_bytes(digest[..16].try_into().unwrap_or_default());
    n %= 10u128.pow(20);
    format!("1{n:020}")
}

/// The request body. Proto3 JSON; unknown fields are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct GenerateIdTokenRequest {
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub include_email: Option<bool>,
    #[serde(default)]
    pub delegates: Option<Vec<String>>,
}

/// `(modulus, exponent)` of a PKCS#1 `RSAPublicKey`, big-endian without leading zeros.
fn rsa_components(pkcs1: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    fn element<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0, |a, b| (a << 8) | usize::from(*b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        *input = after;
        Some((tag, contents))
    }
    let strip = |n: &[u8]| {
        n.iter()
            .skip_while(|b| **b == 0)
            .copied()
            .collect::<Vec<_>>()
    };
    let mut input = pkcs1;
    let parsed = element(&mut input).and_then(|(tag, mut seq)| {
        let (ntag, n) = element(&mut seq)?;
        let (etag, e) = element(&mut seq)?;
        (tag == 0x30 && ntag == 0x02 && etag == 0x02).then(|| (strip(n), strip(e)))
    });
    parsed.ok_or_else(|| "the signing key is not an RSA key".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(token: &str) -> Value {
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn tokens_carry_googles_claims_and_the_published_key_id() {
        let signer = Signer::generate().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let sa = "a@p.iam.gserviceaccount.com";
        let token = signer
            .id_token(
                sa,
                "https://svc.example",
                true,
                now,
                Duration::from_secs(3600),
            )
            .unwrap();
        let c = claims(&token);
        assert_eq!(c["iss"], ISSUER);
        assert_eq!(c["aud"], "https://svc.example");
        assert_eq!(c["email"], sa);
        assert_eq!(c["exp"], 1_800_003_600u64);
        assert_eq!(c["sub"], unique_id(sa));
        assert_eq!(unique_id(sa).len(), 21);
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["kid"], signer.jwks()["keys"][0]["kid"]);
        assert!(signer.pem_certs()[signer.kid.as_str()].is_string());
        let bare = signer
            .id_token(sa, "x", false, now, Duration::from_secs(60))
            .unwrap();
        assert!(claims(&bare).get("email").is_none());
    }
}

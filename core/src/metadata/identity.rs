//! ID tokens: `…/service-accounts/{account}/identity?audience=A[&format=full][&licenses=TRUE]`.
//!
//! **Where they are minted.** By the emulator itself (the `fedcred metadata-server` sidecar
//! or `fedcred agent`), on demand, through IAM Credentials `generateIdToken` for the
//! impersonated service account, authenticated with the access token it serves. The token in
//! the Secret is already that service account's, so nothing else has to be held, nothing new
//! travels through the Kubernetes API, and the controller needs no list of audiences. What
//! Google needs for it: the service account holds `iam.serviceAccounts.getOpenIdToken` on
//! itself (`roles/iam.serviceAccountOpenIdTokenCreator`, granted to
//! `serviceAccount:SA` on SA), and the access token carries `cloud-platform` (or `iam`).
//!
//! **Refusals.** A federated token (no `service_account`) cannot be turned into an ID token
//! by IAM Credentials: 404, as GCE answers `identity` on an instance without a service
//! account, with a body naming `spec.google.serviceAccount`. No `audience`: 400, as GCE.
//! No live access token: the same 503 as `token`. Google refusing the permission: 403 naming
//! the role to grant; Google failing: 503 (clients retry it).
//!
//! **Cache.** Per (service account, audience, with email or not), at most [`MAX_AUDIENCES`]
//! entries; an entry is served while it has [`ID_TOKEN_MARGIN`] left and re-minted after, so
//! no client is handed a token about to expire (google-auth refreshes 3 min 45 s before, Go's
//! oauth2 10 s before). The cache evicts expired entries first, then the one expiring
//! soonest. `format=full` asks for the email (`includeEmail`); the `google.compute_engine`
//! claims GCE adds to full tokens do not exist off GCE and are not invented. `licenses` adds
//! license ids GCE knows for its instances; there are none here, so it changes nothing.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::protocol::{Reply, TEXT};
use super::view::SecretView;
use crate::error::{ExchangeError, Reason};
use crate::google::snippet;
use crate::sensitive::Sensitive;

/// Distinct audiences cached at once; beyond it the entry expiring soonest makes room.
pub const MAX_AUDIENCES: usize = 64;

/// Longest audience accepted (GCE's own limit is not documented; URLs beyond this are not
/// service addresses).
pub const MAX_AUDIENCE_LEN: usize = 2048;

/// A cached ID token is re-minted once it has less than this left.
pub const ID_TOKEN_MARGIN: SignedDuration = SignedDuration::from_secs(300);

/// The longest an ID token from Google lives; an answer claiming longer is not trusted.
pub const MAX_ID_TOKEN_LIFETIME: SignedDuration = SignedDuration::from_secs(3600 + 300);

/// `format=`: `standard` (the default) or `full`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Standard,
    Full,
}

/// What an `identity` request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityRequest {
    pub audience: String,
    pub format: Format,
    /// `licenses=TRUE`: accepted, and changes nothing (no licenses exist here).
    pub licenses: bool,
}

impl IdentityRequest {
    /// GCE puts the email into `full` tokens only.
    pub fn include_email(&self) -> bool {
        self.format == Format::Full
    }
}

/// Why an `identity` query is refused before anything is minted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadIdentityQuery {
    MissingAudience,
    AudienceTooLong,
    /// `format` other than `standard` or `full`.
    Format,
    /// `licenses` other than `TRUE` or `FALSE`.
    Licenses,
}

impl BadIdentityQuery {
    pub fn message(&self) -> String {
        match self {
            BadIdentityQuery::MissingAudience => {
                "fedcred: non-empty audience parameter required\n".to_owned()
            }
            BadIdentityQuery::AudienceTooLong => {
                format!("fedcred: the audience is longer than {MAX_AUDIENCE_LEN} bytes\n")
            }
            BadIdentityQuery::Format => {
                "fedcred: format must be \"standard\" or \"full\"\n".to_owned()
            }
            BadIdentityQuery::Licenses => {
                "fedcred: licenses must be \"TRUE\" or \"FALSE\"\n".to_owned()
            }
        }
    }
}

/// Reads the query of an `identity` request.
pub fn parse_query(query: &str) -> Result<IdentityRequest, BadIdentityQuery> {
    let mut audience = String::new();
    let mut format = Format::Standard;
    let mut licenses = false;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "audience" => audience = value.into_owned(),
            "format" => {
                format = match &*value {
                    "standard" | "" => Format::Standard,
                    "full" => Format::Full,
                    _ => return Err(BadIdentityQuery::Format),
                }
            }
            "licenses" => {
                licenses = match value.to_ascii_uppercase().as_str() {
                    "TRUE" => true,
                    "FALSE" | "" => false,
                    _ => return Err(BadIdentityQuery::Licenses),
                }
            }
            _ => {}
        }
    }
    if audience.trim().is_empty() {
        return Err(BadIdentityQuery::MissingAudience);
    }
    if audience.len() > MAX_AUDIENCE_LEN {
        return Err(BadIdentityQuery::AudienceTooLong);
    }
    Ok(IdentityRequest {
        audience,
        format,
        licenses,
    })
}

/// One cache entry's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CacheKey {
    pub service_account: String,
    pub audience: String,
    pub include_email: bool,
}

/// A minted ID token and when it expires (its `exp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdToken {
    pub token: Sensitive,
    pub expires_at: Timestamp,
}

impl IdToken {
    fn servable(&self, now: Timestamp) -> bool {
        self.expires_at.duration_since(now) >= ID_TOKEN_MARGIN
    }
}

/// Minted ID tokens by [`CacheKey`], bounded by [`MAX_AUDIENCES`].
#[derive(Debug, Default)]
pub struct IdTokenCache {
    entries: BTreeMap<CacheKey, IdToken>,
}

impl IdTokenCache {
    /// The cached token for `key` while it has [`ID_TOKEN_MARGIN`] left.
    pub fn get(&self, key: &CacheKey, now: Timestamp) -> Option<&IdToken> {
        self.entries.get(key).filter(|t| t.servable(now))
    }

    /// Keeps `token` for `key`, dropping what expired and, when full, the entry expiring
    /// soonest.
    pub fn insert(&mut self, key: CacheKey, token: IdToken, now: Timestamp) {
        self.entries.retain(|_, t| t.servable(now));
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_AUDIENCES {
            let soonest = self
                .entries
                .iter()
                .min_by_key(|(_, t)| t.expires_at)
                .map(|(k, _)| k.clone());
            if let Some(soonest) = soonest {
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(key, token);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Who an ID token is minted for and with what: the service account and the live access
/// token that authenticates the `generateIdToken` call.
#[derive(Debug)]
pub struct Minter {
    pub service_account: String,
    pub access_token: Sensitive,
}

/// Whether `view` can back an ID token for `account` at `now`, or the answer saying why not.
pub fn minter(view: &SecretView, account: &str, now: Timestamp) -> Result<Minter, Reply> {
    if !view.is_account(account) {
        return Err(Reply::text(
            StatusCode::NOT_FOUND,
            format!("fedcred: no service account {account:?} here\n"),
        ));
    }
    let Some(service_account) = view.service_account.clone() else {
        return Err(Reply::text(
            StatusCode::NOT_FOUND,
            "fedcred: ID tokens are issued for a service account, and this token is federated \
             (the FederatedCredential has no spec.google.serviceAccount); set \
             spec.google.serviceAccount to a service account that holds \
             roles/iam.serviceAccountOpenIdTokenCreator on itself\n",
        ));
    };
    let token = view
        .token(now)
        .map_err(|why| Reply::text(StatusCode::SERVICE_UNAVAILABLE, why.message()))?;
    Ok(Minter {
        service_account,
        access_token: token.access_token.clone(),
    })
}

/// The URL of `generateIdToken` for `service_account` under `iam_base_url`.
pub fn generate_id_token_url(iam_base_url: &str, service_account: &str) -> String {
    format!(
        "{}/v1/projects/-/serviceAccounts/{service_account}:generateIdToken",
        iam_base_url.trim_end_matches('/'),
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateIdTokenRequest<'a> {
    audience: &'a str,
    include_email: bool,
}

/// The body of `generateIdToken`.
pub fn generate_id_token_body(request: &IdentityRequest) -> GenerateIdTokenRequest<'_> {
    GenerateIdTokenRequest {
        audience: &request.audience,
        include_email: request.include_email(),
    }
}

#[derive(Deserialize)]
struct GenerateIdTokenResponse {
    token: String,
}

#[derive(Deserialize)]
struct Claims {
    exp: i64,
}

/// A successful `generateIdToken` answer received at `now`: the JWT and its `exp`. The
/// signature is Google's to vouch for and the receiving service's to check; the emulator only
/// reads `exp` to know how long it may hand the token out, and refuses an answer whose `exp` is
/// missing, already within [`ID_TOKEN_MARGIN`], or further than Google's ID tokens live.
pub fn read_id_token(body: &str, now: Timestamp) -> Result<IdToken, ExchangeError> {
    let upstream = |what: &str| {
        ExchangeError::new(
            Reason::Upstream,
            format!("IAM Credentials generateIdToken {what}"),
        )
    };
    let answer: GenerateIdTokenResponse =
        serde_json::from_str(body).map_err(|_| upstream("answered without a token"))?;
    let mut parts = answer.token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(upstream("answered a token that is not a JWT"));
    };
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| upstream("answered a JWT without a numeric exp"))?;
    let expires_at = Timestamp::from_second(claims.exp)
        .map_err(|_| upstream("answered a JWT whose exp is out of range"))?;
    let left = expires_at.duration_since(now);
    if left < ID_TOKEN_MARGIN {
        return Err(upstream(&format!(
            "answered a token expiring at {expires_at}, too soon to hand out (is this \
             machine's clock right?)"
        )));
    }
    if left > MAX_ID_TOKEN_LIFETIME {
        return Err(upstream(&format!(
            "answered a token expiring at {expires_at}, later than any Google ID token lives"
        )));
    }
    if answer.token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(upstream("answered a token that is not printable ASCII"));
    }
    Ok(IdToken {
        token: Sensitive::new(answer.token),
        expires_at,
    })
}

/// A refused or failed `generateIdToken` call, as an error naming the next step.
pub fn classify(status: u16, body: &str, service_account: &str) -> ExchangeError {
    let detail = snippet(body);
    if status == 403 || status == 404 {
        ExchangeError::new(
            Reason::ImpersonationDenied,
            format!(
                "Google refused an ID token of {service_account}: HTTP {status}: {detail}; grant \
                 roles/iam.serviceAccountOpenIdTokenCreator on {service_account} to \
                 serviceAccount:{service_account} (iam.serviceAccounts.getOpenIdToken), and \
                 keep the cloud-platform scope in spec.google.scopes"
            ),
        )
    } else {
        ExchangeError::new(
            Reason::Upstream,
            format!("IAM Credentials generateIdToken failed: HTTP {status}: {detail}"),
        )
    }
}

/// The answer for a minted token: the JWT as text, as GCE answers it.
pub fn reply(token: &IdToken) -> Reply {
    Reply::text(StatusCode::OK, token.token.expose().to_owned())
}

/// The answer when minting failed: 403 when Google refused the permission (retrying will not
/// help), 503 otherwise (clients retry).
pub fn failed(error: &ExchangeError) -> Reply {
    let status = match error.reason {
        Reason::ImpersonationDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    Reply {
        status,
        content_type: TEXT,
        body: format!("fedcred: {} ({})\n", error.message, error.reason.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    const SA: &str = "orders-api@acme-shop.iam.gserviceaccount.com";

    fn now() -> Timestamp {
        "2026-11-25T15:04:05Z".parse().unwrap()
    }

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn key(audience: &str) -> CacheKey {
        CacheKey {
            service_account: SA.to_owned(),
            audience: audience.to_owned(),
            include_email: true,
        }
    }

    fn token(expires_in: i64) -> IdToken {
        IdToken {
            token: Sensitive::new(format!("jwt-{expires_in}")),
            expires_at: now() + SignedDuration::from_secs(expires_in),
        }
    }

    fn view(pairs: &[(&str, &str)]) -> SecretView {
        let files: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        SecretView::from_files(&files)
    }

    #[test]
    fn the_query_needs_an_audience_and_reads_format_and_licenses() {
        assert_eq!(
            parse_query("audience=https%3A%2F%2Fsvc.run.app&format=full&licenses=TRUE"),
            Ok(IdentityRequest {
                audience: "https://svc.run.app".into(),
                format: Format::Full,
                licenses: true
            })
        );
        let standard = parse_query("audience=x").unwrap();
        assert!(!standard.include_email());
        assert_eq!(
            parse_query("format=full"),
            Err(BadIdentityQuery::MissingAudience)
        );
        assert_eq!(
            parse_query("audience="),
            Err(BadIdentityQuery::MissingAudience)
        );
        assert_eq!(
            parse_query("audience=x&format=minimal"),
            Err(BadIdentityQuery::Format)
        );
        assert_eq!(
            parse_query("audience=x&licenses=yes"),
            Err(BadIdentityQuery::Licenses)
        );
        let long = format!("audience={}", "a".repeat(MAX_AUDIENCE_LEN + 1));
        assert_eq!(parse_query(&long), Err(BadIdentityQuery::AudienceTooLong));
    }

    #[test]
    fn a_cached_token_is_served_until_the_margin_and_never_after() {
        let mut cache = IdTokenCache::default();
        cache.insert(key("a"), token(3600), now());
        assert!(cache.get(&key("a"), now()).is_some());
        let late = now() + SignedDuration::from_secs(3600) - ID_TOKEN_MARGIN;
        assert!(cache.get(&key("a"), late).is_some());
        assert!(
            cache
                .get(&key("a"), late + SignedDuration::from_secs(1))
                .is_none()
        );
        let mut other = key("a");
        other.include_email = false;
        assert!(cache.get(&other, now()).is_none());
        let mut other_account = key("a");
        other_account.service_account = "x@y.iam.gserviceaccount.com".into();
        assert!(cache.get(&other_account, now()).is_none());
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_soonest_expiring() {
        let mut cache = IdTokenCache::default();
        for i in 0..MAX_AUDIENCES {
            cache.insert(key(&format!("aud-{i}")), token(3000 + i as i64), now());
        }
        assert_eq!(cache.len(), MAX_AUDIENCES);
        cache.insert(key("new"), token(3600), now());
        assert_eq!(cache.len(), MAX_AUDIENCES);
        assert!(cache.get(&key("aud-0"), now()).is_none());
        assert!(cache.get(&key("aud-1"), now()).is_some());
        assert!(cache.get(&key("new"), now()).is_some());
        // Expired entries go first, whatever their number.
        let later = now() + SignedDuration::from_secs(3400);
        cache.insert(key("later"), token(7000), later);
        assert!(cache.len() < MAX_AUDIENCES);
    }

    #[test]
    fn a_federated_token_gets_404_naming_the_fix_and_a_lapsed_one_503() {
        let federated = view(&[
            ("access_token", "ya29.f"),
            ("expiry", "2026-11-25T16:04:05Z"),
        ]);
        let refused = minter(&federated, "default", now()).unwrap_err();
        assert_eq!(refused.status, StatusCode::NOT_FOUND);
        assert!(refused.body.contains("spec.google.serviceAccount"));
        let lapsed = view(&[
            ("access_token", "ya29.i"),
            ("expiry", "2026-11-25T15:04:06Z"),
            ("service_account", SA),
        ]);
        let reply = minter(&lapsed, "default", now()).unwrap_err();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!reply.body.contains("ya29"));
        let live = view(&[
            ("access_token", "ya29.i"),
            ("expiry", "2026-11-25T16:04:05Z"),
            ("service_account", SA),
        ]);
        let m = minter(&live, SA, now()).unwrap();
        assert_eq!(m.service_account, SA);
        assert_eq!(
            minter(&live, "x@y.iam.gserviceaccount.com", now())
                .unwrap_err()
                .status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn the_answer_is_read_for_its_exp_and_odd_ones_are_refused() {
        let exp = now().as_second() + 3600;
        let body = json!({"token": jwt(json!({"aud": "a", "exp": exp}))}).to_string();
        let t = read_id_token(&body, now()).unwrap();
        assert_eq!(t.expires_at.as_second(), exp);
        for bad in [
            json!({}),
            json!({"token": "not-a-jwt"}),
            json!({"token": jwt(json!({"aud": "a"}))}),
            json!({"token": jwt(json!({"exp": now().as_second() + 60}))}),
            json!({"token": jwt(json!({"exp": now().as_second() + 86400}))}),
        ] {
            let err = read_id_token(&bad.to_string(), now()).unwrap_err();
            assert_eq!(err.reason, Reason::Upstream, "{bad}");
        }
    }

    #[test]
    fn a_refused_permission_is_403_naming_the_role_and_failures_503() {
        let denied = classify(403, r#"{"error":{"code":403}}"#, SA);
        let reply = failed(&denied);
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert!(
            reply
                .body
                .contains("roles/iam.serviceAccountOpenIdTokenCreator")
        );
        assert_eq!(
            failed(&classify(500, "boom", SA)).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn the_request_body_asks_for_the_email_with_format_full() {
        let full = parse_query("audience=a&format=full").unwrap();
        assert_eq!(
            serde_json::to_value(generate_id_token_body(&full)).unwrap(),
            json!({"audience": "a", "includeEmail": true})
        );
        assert_eq!(
            generate_id_token_url("https://iamcredentials.googleapis.com/", SA),
            format!(
                "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{SA}:generateIdToken"
            )
        );
    }
}

//! Google's side of the exchange, as data: the endpoints, the requests' fields, the retry
//! schedule, and what Google's answers mean. Reading an answer is pure ([`read_sts_token`],
//! [`read_generated_token`], [`classify_sts`], [`classify_iam`]); the HTTP client in the
//! `fedcred` crate sends the requests and hands the bodies here.
//!
//! Every failure maps to a stable [`Reason`] with a message naming the next step. Tokens
//! travel as [`Sensitive`] and never appear in errors.

use std::time::Duration;

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ExchangeError, Reason};
use crate::sensitive::Sensitive;

/// Google STS token endpoint.
pub const DEFAULT_STS_URL: &str = "https://sts.googleapis.com/v1/token";
/// IAM Service Account Credentials base URL.
pub const DEFAULT_IAM_CREDENTIALS_URL: &str = "https://iamcredentials.googleapis.com";

/// `grant_type` of a token exchange.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `requested_token_type` of a token exchange: an access token.
pub const REQUESTED_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// How hard to try before giving up on a transient failure.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Total attempts, the first included.
    pub attempts: u32,
    /// Backoff ceiling of the first retry; doubles per retry.
    pub base_delay: Duration,
    /// Longest single wait. A `Retry-After` beyond it ends the retries.
    pub max_delay: Duration,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0-based), or `None` when retries are exhausted or
    /// the server asked for a longer pause than this policy will wait. `unit` is a uniform
    /// random number in [0, 1) for the jitter.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, unit: f64) -> Option<Duration> {
        if retry + 1 >= self.attempts {
            return None;
        }
        let ceiling = self
            .base_delay
            .saturating_mul(1 << retry.min(16))
            .min(self.max_delay);
        let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
        match retry_after {
            Some(after) if after > self.max_delay => None,
            Some(after) => Some(after.max(jittered)),
            None => Some(jittered),
        }
    }
}

/// An access token and when it expires.
#[derive(Clone, Debug)]
pub struct AccessToken {
    pub token: Sensitive,
    pub expires_at: Timestamp,
    /// How long Google said the token lives: STS's `expires_in`, or IAM Credentials'
    /// `expireTime` less the moment the answer arrived. Unlike `expires_at` (whole seconds,
    /// counted from the request), a slow exchange does not shorten it.
    pub lifetime: Duration,
}

#[derive(Deserialize)]
struct StsResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    expires_in: NumberOrString,
}

/// Google documents `expires_in` as a number but has been seen sending a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(i64),
    String(String),
}

impl NumberOrString {
    fn seconds(&self) -> Option<i64> {
        match self {
            NumberOrString::Number(n) => Some(*n),
            NumberOrString::String(s) => s.trim().parse().ok(),
        }
    }
}

#[derive(Serialize)]
pub struct GenerateAccessTokenRequest<'a> {
    scope: &'a [String],
    lifetime: String,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    delegates: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateAccessTokenResponse {
    access_token: String,
    expire_time: String,
}

/// The body of a Google STS token exchange (DESIGN.md §4): its form fields, in order, as
/// `application/x-www-form-urlencoded`. Sensitive: it carries the subject token.
pub fn sts_form(
    audience: &str,
    scope: &str,
    subject_token_type: &str,
    subject_token: &Sensitive,
) -> Sensitive {
    Sensitive::new(crate::encode::form(&[
        ("grant_type", GRANT_TYPE),
        ("requested_token_type", REQUESTED_TOKEN_TYPE),
        ("audience", audience),
        ("scope", scope),
        ("subject_token_type", subject_token_type),
        ("subject_token", subject_token.expose()),
    ]))
}

/// The URL of `generateAccessToken` for `service_account` under `iam_base_url`.
pub fn generate_access_token_url(iam_base_url: &str, service_account: &str) -> String {
    format!(
        "{}/v1/projects/-/serviceAccounts/{service_account}:generateAccessToken",
        iam_base_url.trim_end_matches('/'),
    )
}

/// The body of `generateAccessToken`.
pub fn generate_access_token_body<'a>(
    scopes: &'a [String],
    delegates: &[String],
    lifetime: Duration,
) -> GenerateAccessTokenRequest<'a> {
    GenerateAccessTokenRequest {
        scope: scopes,
        lifetime: format!("{}s", lifetime.as_secs()),
        delegates: delegates
            .iter()
            .map(|d| format!("projects/-/serviceAccounts/{d}"))
            .collect(),
    }
}

/// The longest any Google access token lives: 12 hours, for impersonated tokens where the
/// organization policy allows it; federated tokens live an hour.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A successful Google STS answer, received at `now`, as a token and its expiry. Refuses what
/// would make the controller write a token that is unusable or trust one longer than it lives:
/// a token type other than Bearer, a token that is empty or not printable ASCII, an
/// `expires_in` that is missing, not positive or longer than [`MAX_TOKEN_LIFETIME`]. Errors
/// never quote the token.
pub fn read_sts_token(body: &str, now: Timestamp) -> Result<AccessToken, ExchangeError> {
    const PEER: &str = "Google STS";
    let upstream = |what: String| upstream(PEER, what);
    let parsed: StsResponse = parse_answer(PEER, body)?;
    if parsed
        .token_type
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return Err(upstream("issued a token that is not a Bearer token".into()));
    }
    let seconds = parsed
        .expires_in
        .seconds()
        .filter(|s| *s > 0)
        .ok_or_else(|| upstream("answered without a usable expires_in".into()))?;
    let lifetime = Duration::from_secs(seconds.unsigned_abs());
    if lifetime > MAX_TOKEN_LIFETIME {
        return Err(upstream(format!(
            "answered expires_in {seconds}, longer than any Google access token lives ({} s); the \
             token's real end is unknown, so it is not used",
            MAX_TOKEN_LIFETIME.as_secs()
        )));
    }
    Ok(AccessToken {
        token: checked_token(parsed.access_token).map_err(|e| upstream(e.into()))?,
        expires_at: truncate(now + lifetime),
        lifetime,
    })
}

/// A successful IAM Credentials `generateAccessToken` answer, received at `now`, as a token
/// and its expiry. Refuses a token that is empty or not printable ASCII and an `expireTime`
/// that is unreadable, already past, or further away than [`MAX_TOKEN_LIFETIME`] (with a
/// minute for clock skew). Errors never quote the token.
pub fn read_generated_token(body: &str, now: Timestamp) -> Result<AccessToken, ExchangeError> {
    const PEER: &str = "IAM Credentials";
    let upstream = |what: String| upstream(PEER, what);
    let parsed: GenerateAccessTokenResponse = parse_answer(PEER, body)?;
    let expires_at: Timestamp = parsed
        .expire_time
        .parse()
        .map_err(|_| upstream("answered with an unreadable expireTime".into()))?;
    if expires_at <= now {
        return Err(upstream(format!(
            "issued a token that had expired already (expireTime {expires_at}, received {now}); \
             check the controller's clock"
        )));
    }
    let latest = now + MAX_TOKEN_LIFETIME + Duration::from_secs(60);
    if expires_at > latest {
        return Err(upstream(format!(
            "answered expireTime {expires_at}, further away than any Google access token lives \
             ({} s); check the controller's clock",
            MAX_TOKEN_LIFETIME.as_secs()
        )));
    }
    Ok(AccessToken {
        token: checked_token(parsed.access_token).map_err(|e| upstream(e.into()))?,
        expires_at: truncate(expires_at),
        lifetime: expires_at.duration_since(now).unsigned_abs(),
    })
}

/// An `Upstream` error: `peer` gave an answer fedcred cannot use.
fn upstream(peer: &str, what: String) -> ExchangeError {
    ExchangeError::new(Reason::Upstream, format!("{peer} {what}"))
}

/// A success body of `peer`, parsed; an error says what was wrong without quoting the body.
fn parse_answer<T: DeserializeOwned>(peer: &str, body: &str) -> Result<T, ExchangeError> {
    serde_json::from_str(body).map_err(|e| {
        upstream(
            peer,
            format!("answered with an unexpected body ({})", json_error(&e)),
        )
    })
}

/// What a [`serde_json::Error`] says, without the input it may quote: a type mismatch quotes
/// the offending value, which may be a token. Missing and duplicate fields name only our own
/// field names, so they are kept.
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("missing field") || text.starts_with("duplicate field") {
        return text;
    }
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "a field of the wrong type",
        serde_json::error::Category::Eof => "cut short",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

/// A token as Google issues them: non-empty printable ASCII without spaces, which is what an
/// `Authorization: Bearer` header and the Secret's readers can carry.
fn checked_token(value: String) -> Result<Sensitive, &'static str> {
    if value.is_empty() {
        return Err("issued an empty access token");
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "issued an access token with characters no token has (spaces, control characters or non-ASCII)",
        );
    }
    Ok(Sensitive::new(value))
}

/// Status keeps whole seconds; so do we, so that comparisons after a round trip agree.
pub fn truncate(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// One line of at most 200 characters of `body`, for messages about answers that are not tokens.
pub fn snippet(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(200).collect()
}

#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Maps a Google STS error answer to a reason and an actionable message.
pub fn classify_sts(status: u16, body: &str) -> ExchangeError {
    let e: OAuthError = serde_json::from_str(body).unwrap_or_default();
    let desc = if e.error_description.is_empty() {
        snippet(body)
    } else {
        e.error_description.clone()
    };
    let lower = desc.to_ascii_lowercase();
    let (reason, next) = match e.error.as_str() {
        _ if lower.contains("attribute condition") => (
            Reason::AttributeConditionRejected,
            "the provider's attribute condition does not admit this AWS principal; update the condition \
             (gcloud iam workload-identity-pools providers update-aws … --attribute-condition=…) or use an \
             identity it admits",
        ),
        "invalid_target" => (
            Reason::ProviderNotFound,
            "the Workload Identity pool or provider in google.audience does not exist or is disabled; check it \
             with `gcloud iam workload-identity-pools providers describe`",
        ),
        "invalid_request" if lower.contains("audience") => (
            Reason::InvalidAudience,
            "google.audience is not a valid provider name; copy it from the provider's `name` field and \
             prefix it with //iam.googleapis.com/",
        ),
        "invalid_grant" | "invalid_request" => (
            Reason::InvalidSubjectToken,
            "Google could not verify the signed AWS request; check the controller's clock, aws.region, and \
             that the provider's AWS account ID is the role's account",
        ),
        "unauthorized_client" => (
            Reason::AttributeConditionRejected,
            "the provider refused this AWS principal; check the provider's attribute condition and AWS account",
        ),
        _ => (Reason::Upstream, "Google STS refused the exchange"),
    };
    ExchangeError::new(
        reason,
        format!(
            "Google STS answered HTTP {status} {}: {desc}; {next}",
            e.error
        ),
    )
}

/// `subject_token_type` of a Kubernetes ServiceAccount token (an OIDC ID token, a JWT).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Maps a Google STS error answer to a ServiceAccount token (an OIDC JWT) to a reason and a
/// message naming the next step: the provider's issuer, keys, audiences, the token's time
/// window, or its condition. What is not specific to OIDC is classified as [`classify_sts`]
/// does.
pub fn classify_jwt_sts(status: u16, body: &str) -> ExchangeError {
    let e: OAuthError = serde_json::from_str(body).unwrap_or_default();
    let desc = if e.error_description.is_empty() {
        snippet(body)
    } else {
        e.error_description.clone()
    };
    let lower = desc.to_ascii_lowercase();
    let grant = e.error == "invalid_grant";
    let found = if lower.contains("attribute condition") {
        Some((
            Reason::AttributeConditionRejected,
            "the provider's attribute condition does not admit this ServiceAccount (the subject above, with its namespace in assertion['kubernetes.io']['namespace']); update the condition (gcloud iam workload-identity-pools providers update-oidc … --attribute-condition=…) or use a ServiceAccount it admits",
        ))
    } else if grant
        && lower.contains("issuer")
        && (lower.contains("connect") || lower.contains("fetch") || lower.contains("reach"))
    {
        Some((
            Reason::IssuerUnreachable,
            "Google cannot fetch the cluster issuer's discovery document or keys; a private issuer cannot be reached from Google: upload the cluster's JWKS to the provider instead (kubectl get --raw /openid/v1/jwks > jwks.json; gcloud iam workload-identity-pools providers update-oidc … --jwk-json-path=jwks.json)",
        ))
    } else if grant && lower.contains("issuer") {
        Some((
            Reason::IssuerNotTrusted,
            "the provider's issuer URI is not the token's issuer; set the provider's --issuer-uri to the cluster's issuer (kubectl get --raw /.well-known/openid-configuration, field issuer)",
        ))
    } else if grant && (lower.contains("signature") || lower.contains("kid")) {
        Some((
            Reason::SignatureNotVerified,
            "the provider's keys do not verify the token's signature: the cluster's signing key changed or the provider holds another cluster's keys; upload the current JWKS (kubectl get --raw /openid/v1/jwks) to the provider",
        ))
    } else if grant && lower.contains("audience") {
        Some((
            Reason::AudienceMismatch,
            "the token's audience is not one the provider accepts; remove kubernetes.audience to use the provider's full resource name, or add it to the provider's --allowed-audiences",
        ))
    } else if grant
        && (lower.contains("expired")
            || lower.contains("stale")
            || lower.contains("not yet valid")
            || lower.contains("future"))
    {
        Some((
            Reason::SubjectTokenExpired,
            "Google judged the ServiceAccount token outside its validity window; check the clocks of the API server and the controller (NTP)",
        ))
    } else if grant {
        Some((
            Reason::InvalidSubjectToken,
            "Google could not verify the ServiceAccount token; check the provider's issuer URI and keys",
        ))
    } else {
        None
    };
    match found {
        Some((reason, next)) => ExchangeError::new(
            reason,
            format!(
                "Google STS answered HTTP {status} {}: {desc}; {next}",
                e.error
            ),
        ),
        None => classify_sts(status, body),
    }
}

#[derive(Deserialize, Default)]
struct GoogleApiError {
    #[serde(default)]
    error: GoogleApiErrorBody,
}

#[derive(Deserialize, Default)]
struct GoogleApiErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
}

/// Maps an IAM Credentials error answer to a reason and an actionable message.
pub fn classify_iam(status: u16, body: &str, service_account: &str) -> ExchangeError {
    let e: GoogleApiError = serde_json::from_str(body).unwrap_or_default();
    let msg = if e.error.message.is_empty() {
        snippet(body)
    } else {
        e.error.message.clone()
    };
    let (reason, next) = match (status, e.error.status.as_str()) {
        (403, _) | (_, "PERMISSION_DENIED") | (404, _) => (
            Reason::ImpersonationDenied,
            format!(
                "grant roles/iam.workloadIdentityUser on {service_account} to this principal \
                 (principal://iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/subject/ARN) \
                 and check that the service account exists"
            ),
        ),
        (400, _) => (
            Reason::InvalidTokenRequest,
            "check google.scopes and google.tokenLifetimeSeconds (above 3600 needs the organization policy \
             constraints/iam.allowServiceAccountCredentialLifetimeExtension)"
                .to_owned(),
        ),
        _ => (Reason::Upstream, "IAM Credentials refused the request".to_owned()),
    };
    ExchangeError::new(
        reason,
        format!(
            "impersonating {service_account} failed: HTTP {status} {}: {msg}; {next}",
            e.error.status
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_form_carries_each_field_once_in_order_and_decodes_to_what_was_given() {
        let subject = Sensitive::new("%7B%22url%22%3A%22https%3A%2F%2Fsts%22%7D");
        let body = sts_form(
            "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/a",
            "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/bigquery",
            crate::subject_token::TOKEN_TYPE,
            &subject,
        );
        let fields: Vec<(String, String)> = url::form_urlencoded::parse(body.expose().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "grant_type",
                "requested_token_type",
                "audience",
                "scope",
                "subject_token_type",
                "subject_token"
            ]
        );
        assert_eq!(fields[0].1, GRANT_TYPE);
        assert_eq!(fields[1].1, REQUESTED_TOKEN_TYPE);
        assert!(
            fields[3].1.contains("cloud-platform https://"),
            "{:?}",
            fields[3]
        );
        assert_eq!(
            fields[5].1,
            subject.expose(),
            "the subject token comes back as given"
        );
        assert!(
            body.expose().contains("subject_token=%257B%2522url"),
            "encoded once more"
        );
    }

    #[test]
    fn backoff_grows_is_jittered_and_bounded() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0, None, 0.999).unwrap().as_millis(), 249);
        assert_eq!(p.delay(1, None, 0.5).unwrap(), Duration::from_millis(250));
        assert_eq!(p.delay(2, None, 0.0).unwrap(), Duration::ZERO);
        assert_eq!(p.delay(3, None, 0.5), None, "four attempts in all");
        let long = RetryPolicy {
            attempts: 30,
            ..p.clone()
        };
        assert!(long.delay(20, None, 0.999).unwrap() <= long.max_delay);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(2)), 0.1).unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(p.delay(0, Some(Duration::from_secs(60)), 0.1), None);
    }

    #[test]
    fn sts_errors_map_to_stable_reasons() {
        let cases = [
            (
                r#"{"error":"unauthorized_client","error_description":"The given credential is rejected by the attribute condition."}"#,
                Reason::AttributeConditionRejected,
            ),
            (
                r#"{"error":"invalid_target","error_description":"The target service indicated by the \"audience\" parameters is invalid."}"#,
                Reason::ProviderNotFound,
            ),
            (
                r#"{"error":"invalid_request","error_description":"Invalid value for \"audience\"."}"#,
                Reason::InvalidAudience,
            ),
            (
                r#"{"error":"invalid_grant","error_description":"AWS request has invalid format."}"#,
                Reason::InvalidSubjectToken,
            ),
            ("<html>bad gateway</html>", Reason::Upstream),
        ];
        for (body, reason) in cases {
            let e = classify_sts(400, body);
            assert_eq!(e.reason, reason, "{body}");
            assert!(e.message.contains("HTTP 400"), "{}", e.message);
        }
        let e = classify_sts(400, cases[0].0);
        assert!(e.message.contains("attribute-condition"), "{}", e.message);
    }

    #[test]
    fn oidc_errors_map_to_stable_reasons() {
        let grant = |d: &str| format!(r#"{{"error":"invalid_grant","error_description":"{d}"}}"#);
        let cases = [
            (
                grant("Error connecting to the given credential's issuer."),
                Reason::IssuerUnreachable,
                "--jwk-json-path",
            ),
            (
                grant("The issuer in ID Token https://a does not match the expected ones: https://b."),
                Reason::IssuerNotTrusted,
                "--issuer-uri",
            ),
            (
                grant("Invalid ID Token: the signature cannot be verified with the provider's keys (kid k1)."),
                Reason::SignatureNotVerified,
                "/openid/v1/jwks",
            ),
            (
                grant("The audience in ID Token [x] does not match the expected audience."),
                Reason::AudienceMismatch,
                "--allowed-audiences",
            ),
            (
                grant("ID Token expired at 1700000000 (now 1700000700)."),
                Reason::SubjectTokenExpired,
                "NTP",
            ),
            (
                r#"{"error":"unauthorized_client","error_description":"The given credential is rejected by the attribute condition."}"#.to_owned(),
                Reason::AttributeConditionRejected,
                "update-oidc",
            ),
            (
                r#"{"error":"invalid_target","error_description":"The target service indicated by the \"audience\" parameters is invalid."}"#.to_owned(),
                Reason::ProviderNotFound,
                "does not exist",
            ),
        ];
        for (body, reason, next) in cases {
            let e = classify_jwt_sts(400, &body);
            assert_eq!(e.reason, reason, "{body}");
            assert!(e.message.contains(next), "{}", e.message);
            // The message lands in a status condition as one line of prose.
            assert!(!e.message.contains("  "), "{}", e.message);
        }
    }

    #[test]
    fn iam_errors_map_to_stable_reasons() {
        let denied = r#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).","status":"PERMISSION_DENIED"}}"#;
        let e = classify_iam(403, denied, "app@p.iam.gserviceaccount.com");
        assert_eq!(e.reason, Reason::ImpersonationDenied);
        assert!(
            e.message
                .contains("roles/iam.workloadIdentityUser on app@p.iam.gserviceaccount.com")
        );
        let bad = r#"{"error":{"code":400,"message":"Lifetime must be between 1s and 3600s","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(
            classify_iam(400, bad, "a@b.iam.gserviceaccount.com").reason,
            Reason::InvalidTokenRequest
        );
        assert_eq!(
            classify_iam(500, "", "a@b.iam.gserviceaccount.com").reason,
            Reason::Upstream
        );
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn an_sts_answer_becomes_a_token_with_its_expiry() {
        let now = at("2026-01-01T00:00:00.7Z");
        let body = r#"{"access_token":"ya29.abc","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3599}"#;
        let token = read_sts_token(body, now).unwrap();
        assert_eq!(token.token.expose(), "ya29.abc");
        assert_eq!(token.expires_at, at("2026-01-01T00:59:59Z"));
        // The stated lifetime is kept whole: the expiry is truncated, the lifetime is not.
        assert_eq!(token.lifetime, Duration::from_secs(3599));
        let short = body.replace("3599", "1");
        assert_eq!(
            read_sts_token(&short, now).unwrap().lifetime,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn sts_answers_that_cannot_be_trusted_are_upstream_errors_without_the_token() {
        let now = at("2026-01-01T00:00:00Z");
        let token = "ya29.SECRET-VALUE";
        for (body, says) in [
            (
                format!(r#"{{"access_token":"{token}","expires_in":9223372036854775807}}"#),
                "longer than any",
            ),
            (
                format!(r#"{{"access_token":"{token}","expires_in":43201}}"#),
                "longer than any",
            ),
            (
                format!(r#"{{"access_token":"{token}","expires_in":0}}"#),
                "usable expires_in",
            ),
            (
                format!(r#"{{"access_token":"{token}","expires_in":"soon"}}"#),
                "usable expires_in",
            ),
            (
                format!(r#"{{"access_token":"{token}"}}"#),
                "missing field `expires_in`",
            ),
            (
                format!(r#"{{"access_token":"{token}","token_type":"MAC","expires_in":60}}"#),
                "not a Bearer",
            ),
            (
                r#"{"access_token":"","expires_in":60}"#.to_owned(),
                "empty access token",
            ),
            (
                r#"{"access_token":"ya29.a b","expires_in":60}"#.to_owned(),
                "characters no token has",
            ),
            (
                r#"{"access_token":"ya29.\u0007","expires_in":60}"#.to_owned(),
                "characters no token has",
            ),
            (
                format!(r#"{{"access_token":{{"v":"{token}"}},"expires_in":60}}"#),
                "wrong type",
            ),
            (
                format!(r#"{{"access_token":"{token}","expires_in":{{"n":"{token}"}}}}"#),
                "wrong type",
            ),
            (format!(r#"{{"access_token":"{token}""#), "cut short"),
            ("<html>".to_owned(), "not JSON"),
        ] {
            let e = read_sts_token(&body, now).unwrap_err();
            assert_eq!(e.reason, Reason::Upstream, "{body}");
            assert!(e.message.contains(says), "{body}: {}", e.message);
            assert!(!e.message.contains("SECRET"), "{body}: {}", e.message);
        }
        // The largest lifetime Google gives is accepted.
        let longest = format!(r#"{{"access_token":"{token}","expires_in":43200}}"#);
        assert!(read_sts_token(&longest, now).is_ok());
    }

    #[test]
    fn a_generated_token_must_expire_in_the_future_and_within_twelve_hours() {
        let now = at("2026-01-01T00:00:00Z");
        let body =
            |expire: &str| format!(r#"{{"accessToken":"ya29.SECRET","expireTime":"{expire}"}}"#);
        let token = read_generated_token(&body("2026-01-01T01:00:00.5Z"), now).unwrap();
        assert_eq!(token.expires_at, at("2026-01-01T01:00:00Z"));
        assert_eq!(token.lifetime, Duration::from_millis(3_600_500));
        assert!(read_generated_token(&body("2026-01-01T12:01:00Z"), now).is_ok());
        for (expire, says) in [
            ("2025-12-31T23:59:59Z", "expired already"),
            ("2026-01-01T00:00:00Z", "expired already"),
            ("2026-01-01T12:01:01Z", "further away"),
            ("9000-01-01T00:00:00Z", "further away"),
            ("tomorrow", "unreadable expireTime"),
        ] {
            let e = read_generated_token(&body(expire), now).unwrap_err();
            assert_eq!(e.reason, Reason::Upstream);
            assert!(e.message.contains(says), "{expire}: {}", e.message);
            assert!(!e.message.contains("SECRET"), "{}", e.message);
        }
        let e = read_generated_token(r#"{"accessToken":"ya29.SECRET"}"#, now).unwrap_err();
        assert!(
            e.message.contains("missing field `expireTime`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn expires_in_may_be_a_string() {
        let a: StsResponse =
            serde_json::from_str(r#"{"access_token":"x","token_type":"Bearer","expires_in":3599}"#)
                .unwrap();
        let b: StsResponse =
            serde_json::from_str(r#"{"access_token":"x","expires_in":"3599"}"#).unwrap();
        assert_eq!(a.expires_in.seconds(), Some(3599));
        assert_eq!(b.expires_in.seconds(), Some(3599));
    }
}

//! The IAM Credentials double:
//! `POST /v1/projects/-/serviceAccounts/{EMAIL}:generateAccessToken` (and `:generateIdToken`,
//! whose tokens [`crate::idtoken`] signs), authenticated by a live
//! token the doubles issued, allowed by the configured bindings hop by hop through `delegates`.
//! Errors are `google.rpc.Status`-shaped `{"error":{"code","message","status"}}`.
//!
//! The permission decision ([`members_of`], [`check_chain`]) and the request checks
//! ([`parse_lifetime`], [`delegate_email`]) are plain functions; the handler wires them up.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::json;

use crate::config::{Binding, DEFAULT_LIFETIME};
use crate::faults::{Fault, Target};
use crate::idtoken::GenerateIdTokenRequest;
use crate::names::{attribute_member, pool_member, principal_member, service_account_member};
use crate::state::{Principal, State, TokenInfo, now};

/// Scopes that let a bearer call IAM Credentials at all.
const IAM_API_SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/iam",
];

/// A `google.rpc.Status` error answer.
#[derive(Debug)]
pub(crate) struct IamError {
    status: StatusCode,
    message: String,
    details: Option<serde_json::Value>,
    retry_after: Option<u64>,
}

/// The canonical `google.rpc.Code` name of an HTTP status.
fn rpc_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "UNKNOWN",
    }
}

impl IamError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        IamError {
            status,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Request had invalid authentication credentials.",
        )
    }

    fn permission_denied() -> Self {
        Self::permission_denied_for("iam.serviceAccounts.getAccessToken")
    }

    fn permission_denied_for(permission: &str) -> Self {
        IamError {
            details: Some(json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "IAM_PERMISSION_DENIED",
                "domain": "iam.googleapis.com",
                "metadata": {"permission": permission},
            }])),
            ..Self::new(
                StatusCode::FORBIDDEN,
                format!("Permission '{permission}' denied on resource (or it may not exist)."),
            )
        }
    }

    pub(crate) fn injected(code: u16, retry_after: Option<u64>) -> Self {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        IamError {
            retry_after,
            ..Self::new(status, format!("Injected fault: HTTP {}.", status.as_u16()))
        }
    }
}

impl IntoResponse for IamError {
    fn into_response(self) -> Response {
        let mut error = json!({
            "code": self.status.as_u16(),
            "message": self.message,
            "status": rpc_status(self.status),
        });
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
            );
        }
        response
    }
}

/// The request body. Proto3 JSON: unknown fields are refused, `null` means absent (google-auth
/// sends `"delegates": null`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateAccessTokenRequest {
    #[serde(default)]
    scope: Option<Vec<String>>,
    #[serde(default)]
    lifetime: Option<String>,
    #[serde(default)]
    delegates: Option<Vec<String>>,
}

/// `POST /v1/projects/{project}/serviceAccounts/{call}` where `call` is
/// `EMAIL:generateAccessToken`.
pub(crate) async fn service_account_call(
    Extract(state): Extract<Arc<State>>,
    Path((_project, call)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (email, method) = match call.rsplit_once(':') {
        Some((email, method @ ("generateAccessToken" | "generateIdToken"))) => (email, method),
        _ => {
            return IamError::new(
                StatusCode::NOT_FOUND,
                format!("Method {call:?} is not served by this double."),
            )
            .into_response();
        }
    };
    let email = percent_decode_str(email).decode_utf8_lossy().into_owned();
    let mut reject = false;
    match state.arrive(Target::Iam) {
        Some(Fault::Status {
            code, retry_after, ..
        }) => {
            eprintln!("[doubles] iam: injected fault: HTTP {code}");
            return IamError::injected(code, retry_after).into_response();
        }
        Some(Fault::Delay { millis, .. }) => {
            eprintln!("[doubles] iam: injected fault: delay {millis} ms");
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
        Some(Fault::Reject { .. }) => reject = true,
        None => {}
    }
    let answered = if method == "generateIdToken" {
        generate_id_token(&state, &email, &headers, &body, reject)
    } else {
        generate_access_token(&state, &email, &headers, &body, reject)
    };
    match answered {
        Ok(answer) => {
            state.succeeded(Target::Iam);
            Json(answer).into_response()
        }
        Err(e) => {
            eprintln!(
                "[doubles] iam: {} for {email}: {}",
                e.status.as_u16(),
                e.message
            );
            e.into_response()
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The live token's holder, refused unless its scopes let it call IAM Credentials.
fn iam_caller(state: &State, headers: &HeaderMap) -> Result<TokenInfo, IamError> {
    let caller = bearer(headers)
        .and_then(|token| state.lookup(token))
        .ok_or_else(IamError::unauthenticated)?;
    if !caller
        .scopes
        .iter()
        .any(|s| IAM_API_SCOPES.contains(&s.as_str()))
    {
        return Err(IamError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Request had insufficient authentication scopes. The bearer token carries \
                 {:?}, calling IAM Credentials needs one of {IAM_API_SCOPES:?}.",
                caller.scopes
            ),
        ));
    }
    Ok(caller)
}

fn generate_access_token(
    state: &State,
    email: &str,
    headers: &HeaderMap,
    body: &[u8],
    reject: bool,
) -> Result<serde_json::Value, IamError> {
    let caller = iam_caller(state, headers)?;
    let request: GenerateAccessTokenRequest = serde_json::from_slice(body)
        .map_err(|e| IamError::invalid_argument(format!("Invalid JSON payload received. {e}")))?;
    let scope = request.scope.unwrap_or_default();
    if scope.is_empty() || scope.iter().any(|s| s.trim().is_empty()) {
        return Err(IamError::invalid_argument(
            "Scope must be a non-empty list of OAuth scopes.",
        ));
    }
    let config = state.config();
    let lifetime = parse_lifetime(
        request.lifetime.as_deref(),
        config.max_impersonation_lifetime,
    )
    .map_err(IamError::invalid_argument)?;
    let lifetime = config
        .impersonated_lifetime_cap_seconds
        .map_or(lifetime, |cap| lifetime.min(Duration::from_secs(cap)));
    let delegates = request
        .delegates
        .unwrap_or_default()
        .iter()
        .map(|d| delegate_email(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(IamError::invalid_argument)?;

    if let Err(denied) = check_chain(&config.bindings, &members_of(&caller), &delegates, email) {
        eprintln!(
            "[doubles] iam: {} may not act as {denied} (chain {delegates:?} → {email})",
            caller.subject()
        );
        return Err(IamError::permission_denied());
    }
    if reject {
        eprintln!("[doubles] iam: injected permission denial for {email}");
        return Err(IamError::permission_denied());
    }

    let expires_at = now() + lifetime;
    let token = state.issue(TokenInfo {
        principal: Principal::ServiceAccount {
            email: email.to_owned(),
        },
        scopes: scope.clone(),
        expires_at,
    });
    eprintln!(
        "[doubles] iam: issued a token of {email} to {}, scopes {:?}, {} s",
        caller.subject(),
        scope,
        lifetime.as_secs()
    );
    Ok(json!({
        "accessToken": token,
        "expireTime": rfc3339(expires_at),
    }))
}

/// `generateIdToken`: an RS256 ID token of `email` for the requested audience
/// ([`crate::idtoken`]), under the same bearer and binding checks as `generateAccessToken`.
fn generate_id_token(
    state: &State,
    email: &str,
    headers: &HeaderMap,
    body: &[u8],
    reject: bool,
) -> Result<serde_json::Value, IamError> {
    let caller = iam_caller(state, headers)?;
    let request: GenerateIdTokenRequest = serde_json::from_slice(body)
        .map_err(|e| IamError::invalid_argument(format!("Invalid JSON payload received. {e}")))?;
    let audience = request.audience.unwrap_or_default();
    if audience.trim().is_empty() {
        return Err(IamError::invalid_argument("audience must not be empty."));
    }
    let delegates = request
        .delegates
        .unwrap_or_default()
        .iter()
        .map(|d| delegate_email(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(IamError::invalid_argument)?;
    let config = state.config();
    if let Err(denied) = check_chain(&config.bindings, &members_of(&caller), &delegates, email) {
        eprintln!(
            "[doubles] iam: {} may not get ID tokens of {denied} (chain {delegates:?} → {email})",
            caller.subject()
        );
        return Err(IamError::permission_denied_for(
            "iam.serviceAccounts.getOpenIdToken",
        ));
    }
    if reject {
        return Err(IamError::permission_denied_for(
            "iam.serviceAccounts.getOpenIdToken",
        ));
    }
    let include_email = request.include_email.unwrap_or(false);
    let token = state
        .signer
        .id_token(
            email,
            &audience,
            include_email,
            now(),
            config.id_token_lifetime,
        )
        .map_err(|e| IamError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    state.record_id_token(&token);
    eprintln!(
        "[doubles] iam: issued an ID token of {email} for audience {audience:?} to {}, \
         include_email {include_email}",
        caller.subject()
    );
    Ok(json!({ "token": token }))
}

/// RFC 3339, UTC, whole seconds: `2026-11-25T16:00:00Z`.
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(i64::MAX))
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The requested lifetime (`"Ns"`, protobuf Duration JSON), 1 s up to `max`; one hour (capped at
/// `max`) when absent.
pub fn parse_lifetime(lifetime: Option<&str>, max: Duration) -> Result<Duration, String> {
    let Some(raw) = lifetime else {
        return Ok(DEFAULT_LIFETIME.min(max));
    };
    let invalid = || {
        format!(
            "Invalid value for lifetime {raw:?}: expected a duration in seconds such as \"3600s\"."
        )
    };
    let number = raw.strip_suffix('s').ok_or_else(invalid)?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || fraction.is_empty()
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let seconds: u64 = whole.parse().map_err(|_| invalid())?;
    if seconds < 1 || seconds > max.as_secs() {
        let hint = if max.as_secs() < crate::config::EXTENDED_LIFETIME.as_secs() {
            " Longer lifetimes need the organization policy \
             constraints/iam.allowServiceAccountCredentialLifetimeExtension."
        } else {
            ""
        };
        return Err(format!(
            "The lifetime {raw} is out of range: it must be between 1s and {}s.{hint}",
            max.as_secs()
        ));
    }
    Ok(Duration::from_secs(seconds))
}

/// The email of a delegate given as `projects/-/serviceAccounts/EMAIL` (or a bare email).
pub fn delegate_email(delegate: &str) -> Result<String, String> {
    let email = match delegate.strip_prefix("projects/") {
        Some(rest) => rest
            .split_once("/serviceAccounts/")
            .map(|(_, email)| email)
            .ok_or_else(|| {
                format!("Delegate {delegate:?} is not projects/-/serviceAccounts/EMAIL.")
            })?,
        None => delegate,
    };
    if !email.contains('@') || email.contains('/') {
        return Err(format!(
            "Delegate {delegate:?} is not projects/-/serviceAccounts/EMAIL."
        ));
    }
    Ok(email.to_owned())
}

/// The IAM members a token's principal matches.
pub fn members_of(info: &TokenInfo) -> Vec<String> {
    match &info.principal {
        Principal::Federated {
            subject,
            audience,
            attributes,
        } => {
            let mut members = vec![principal_member(audience, subject), pool_member(audience)];
            for (name, value) in attributes {
                if let Some(attribute) = name.strip_prefix("attribute.") {
                    members.push(attribute_member(audience, attribute, value));
                }
            }
            members
        }
        Principal::ServiceAccount { email } => vec![service_account_member(email)],
    }
}

/// Whether any binding on `service_account` names one of `members`.
pub fn may_act_as(bindings: &[Binding], members: &[String], service_account: &str) -> bool {
    bindings
        .iter()
        .filter(|b| b.service_account.eq_ignore_ascii_case(service_account))
        .any(|b| b.members.iter().any(|m| members.contains(m)))
}

/// Walks caller → `delegates[0]` → … → `target`; `Err` names the first service account a hop may
/// not act as.
pub fn check_chain(
    bindings: &[Binding],
    caller: &[String],
    delegates: &[String],
    target: &str,
) -> Result<(), String> {
    let mut members = caller.to_vec();
    for hop in delegates.iter().map(String::as_str).chain([target]) {
        if !may_act_as(bindings, &members, hop) {
            return Err(hop.to_owned());
        }
        members = vec![service_account_member(hop)];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;
    use crate::names::role_member;

    const AUDIENCE: &str = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/aws-pool/providers/aws-prov";
    const ARN: &str = "arn:aws:sts::123456789012:assumed-role/demo/ns-a";
    const ROLE: &str = "arn:aws:sts::123456789012:assumed-role/demo";

    fn federated() -> TokenInfo {
        TokenInfo {
            principal: Principal::Federated {
                subject: ARN.to_owned(),
                audience: AUDIENCE.to_owned(),
                attributes: BTreeMap::from([
                    ("google.subject".to_owned(), ARN.to_owned()),
                    ("attribute.aws_role".to_owned(), ROLE.to_owned()),
                ]),
            },
            scopes: vec![],
            expires_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn federated_principals_match_subject_role_and_pool_members() {
        let members = members_of(&federated());
        assert!(members.contains(&principal_member(AUDIENCE, ARN)));
        assert!(members.contains(&role_member(AUDIENCE, ROLE)));
        assert!(members.contains(&pool_member(AUDIENCE)));
        let other_pool = AUDIENCE.replace("aws-pool", "other-pool");
        assert!(!members.contains(&principal_member(&other_pool, ARN)));
    }

    #[test]
    fn delegation_is_checked_hop_by_hop() {
        let caller = members_of(&federated());
        let bindings = vec![
            Binding::new(
                "a@p.iam.gserviceaccount.com",
                &[role_member(AUDIENCE, ROLE)],
            ),
            Binding::new(
                "b@p.iam.gserviceaccount.com",
                &[service_account_member("a@p.iam.gserviceaccount.com")],
            ),
        ];
        assert_eq!(
            check_chain(&bindings, &caller, &[], "a@p.iam.gserviceaccount.com"),
            Ok(())
        );
        assert_eq!(
            check_chain(&bindings, &caller, &[], "b@p.iam.gserviceaccount.com"),
            Err("b@p.iam.gserviceaccount.com".to_owned())
        );
        assert_eq!(
            check_chain(
                &bindings,
                &caller,
                &["a@p.iam.gserviceaccount.com".to_owned()],
                "b@p.iam.gserviceaccount.com"
            ),
            Ok(())
        );
        // The caller itself is not allowed on b, only through a.
        assert_eq!(
            check_chain(
                &bindings,
                &caller,
                &["b@p.iam.gserviceaccount.com".to_owned()],
                "a@p.iam.gserviceaccount.com"
            ),
            Err("b@p.iam.gserviceaccount.com".to_owned())
        );
        assert_eq!(
            check_chain(&bindings, &caller, &[], "unknown@p.iam.gserviceaccount.com"),
            Err("unknown@p.iam.gserviceaccount.com".to_owned())
        );
    }

    #[test]
    fn lifetimes() {
        let max = DEFAULT_LIFETIME;
        assert_eq!(parse_lifetime(None, max), Ok(DEFAULT_LIFETIME));
        assert_eq!(
            parse_lifetime(Some("600s"), max),
            Ok(Duration::from_secs(600))
        );
        assert_eq!(
            parse_lifetime(Some("3600.000s"), max),
            Ok(Duration::from_secs(3600))
        );
        for bad in ["0s", "3601s", "3600", "-5s", "s", "1h", "1.s"] {
            assert!(parse_lifetime(Some(bad), max).is_err(), "{bad}");
        }
        assert!(
            parse_lifetime(Some("7200s"), max)
                .unwrap_err()
                .contains("allowServiceAccountCredentialLifetimeExtension")
        );
        assert_eq!(
            parse_lifetime(Some("43200s"), crate::config::EXTENDED_LIFETIME),
            Ok(Duration::from_secs(43200))
        );
    }

    #[test]
    fn delegates() {
        assert_eq!(
            delegate_email("projects/-/serviceAccounts/a@p.iam.gserviceaccount.com"),
            Ok("a@p.iam.gserviceaccount.com".to_owned())
        );
        assert_eq!(delegate_email("a@p"), Ok("a@p".to_owned()));
        assert!(delegate_email("projects/-/a@p").is_err());
        assert!(delegate_email("nobody").is_err());
    }

    #[test]
    fn expire_times_are_whole_second_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_622_400);
        assert_eq!(rfc3339(t), "2026-11-25T16:00:00Z");
    }
}

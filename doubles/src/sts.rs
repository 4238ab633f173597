//! The Google STS double: `POST /v1/token` exchanging an AWS subject token for a federated access
//! token, in the order Google checks: form parameters, audience and provider, the subject
//! token's shape ([`crate::subject`]), its signature ([`crate::sigv4`] with a secret from
//! `keys`), the caller AWS reports (`aws`), the attribute mapping and condition
//! ([`crate::attributes`]). Errors are OAuth-shaped `{"error","error_description"}`.
//!
//! Logs each decision in one line, never a token, signature or secret.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::attributes::{self, Assertion, MappingError};
use crate::aws::{self, AwsError};
use crate::config::{Config, Oidc, Provider};
use crate::faults::{Fault, Target};
use crate::keys::KeyError;
use crate::names::ProviderName;
use crate::oidc::{self, Jwt, OidcError};
use crate::sigv4::{self, SigV4Error};
use crate::state::{Principal, State, TokenInfo, now};
use crate::subject::{self, CheckedRequest, Expectations};

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const AWS_SUBJECT_TOKEN_TYPE: &str = "urn:ietf:params:aws:token-type:aws4_request";
pub const JWT_SUBJECT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

const INVALID_TARGET: &str = "The target service indicated by the \"audience\" parameters is \
    invalid. This might either be because the pool or provider is disabled or deleted or because \
    it doesn't exist.";
const INVALID_AUDIENCE: &str = "Invalid value for \"audience\". This value should be the full \
    resource name of the Identity Provider. See \
    https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token for the list of \
    possible formats.";
const REJECTED_BY_CONDITION: &str = "The given credential is rejected by the attribute condition.";

/// An OAuth error answer.
#[derive(Debug)]
pub(crate) struct StsError {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after: Option<u64>,
}

impl StsError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        StsError {
            status,
            error,
            description: description.into(),
            retry_after: None,
        }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    fn server_error(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            description,
        )
    }

    /// The answer of an injected `Status` fault.
    pub(crate) fn injected(code: u16, retry_after: Option<u64>) -> Self {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error = match status.as_u16() {
            429 | 503 => "temporarily_unavailable",
            500..=599 => "server_error",
            401 => "invalid_client",
            403 => "access_denied",
            _ => "invalid_request",
        };
        StsError {
            retry_after,
            ..Self::new(
                status,
                error,
                format!("Injected fault: HTTP {}.", status.as_u16()),
            )
        }
    }
}

impl IntoResponse for StsError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// `POST /v1/token`.
pub(crate) async fn token(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut reject = false;
    match state.arrive(Target::Sts) {
        Some(Fault::Status {
            code, retry_after, ..
        }) => {
            eprintln!("[doubles] sts: injected fault: HTTP {code}");
            return StsError::injected(code, retry_after).into_response();
        }
        Some(Fault::Delay { millis, .. }) => {
            eprintln!("[doubles] sts: injected fault: delay {millis} ms");
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
        Some(Fault::Reject { .. }) => reject = true,
        None => {}
    }
    match exchange(&state, &headers, &body, reject).await {
        Ok(answer) => {
            state.succeeded(Target::Sts);
            Json(answer).into_response()
        }
        Err(e) => {
            eprintln!(
                "[doubles] sts: {} {}: {}",
                e.status.as_u16(),
                e.error,
                e.description
            );
            e.into_response()
        }
    }
}

/// The form parameters, each at most once.
fn form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, StsError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(StsError::invalid_request(
            "The request body must be application/x-www-form-urlencoded.",
        ));
    }
    let mut params = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        if params
            .insert(name.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return Err(StsError::invalid_request(format!(
                "Parameter {name:?} is repeated."
            )));
        }
    }
    Ok(params)
}

fn require<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, StsError> {
    match params.get(name).map(String::as_str) {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(StsError::invalid_request(format!(
            "Parameter {name:?} is required."
        ))),
    }
}

fn expect_param(
    params: &HashMap<String, String>,
    name: &str,
    expected: &str,
) -> Result<(), StsError> {
    let value = require(params, name)?;
    if value != expected {
        return Err(StsError::invalid_request(format!(
            "Invalid value for {name:?}: {value:?}; expected {expected:?}."
        )));
    }
    Ok(())
}

/// The form of a token exchange, checked.
struct ExchangeRequest {
    audience: String,
    subject_token: String,
    subject_token_type: String,
    scopes: Vec<String>,
}

/// Form parameters as Google STS requires them for an AWS subject token.
fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<ExchangeRequest, StsError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(StsError::new(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "Workload identity pool exchanges take no client authentication; send no \
             Authorization header.",
        ));
    }
    let params = form(headers, body)?;
    match require(&params, "grant_type")? {
        GRANT_TYPE => {}
        other => {
            return Err(StsError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("Unsupported grant_type {other:?}; expected {GRANT_TYPE:?}."),
            ));
        }
    }
    expect_param(&params, "requested_token_type", ACCESS_TOKEN_TYPE)?;
    let subject_token_type = require(&params, "subject_token_type")?.to_owned();
    if subject_token_type != AWS_SUBJECT_TOKEN_TYPE && subject_token_type != JWT_SUBJECT_TOKEN_TYPE
    {
        return Err(StsError::invalid_request(format!(
            "Invalid value for \"subject_token_type\": {subject_token_type:?}; expected \
             {AWS_SUBJECT_TOKEN_TYPE:?} or {JWT_SUBJECT_TOKEN_TYPE:?}."
        )));
    }
    let subject_token = require(&params, "subject_token")?.to_owned();
    let audience = require(&params, "audience")?.to_owned();
    if ProviderName::parse(&audience).is_none() {
        return Err(StsError::invalid_request(INVALID_AUDIENCE));
    }
    let scopes = params
        .get("scope")
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    Ok(ExchangeRequest {
        audience,
        subject_token,
        subject_token_type,
        scopes,
    })
}

/// The enabled provider named by the audience.
fn find_provider<'a>(config: &'a Config, audience: &str) -> Result<&'a Provider, StsError> {
    config
        .providers
        .iter()
        .find(|p| p.audience == audience && !p.disabled)
        .ok_or_else(|| StsError::new(StatusCode::BAD_REQUEST, "invalid_target", INVALID_TARGET))
}

/// The signature, with the secret of the access key it names. The descriptions are the AWS
/// errors Google would relay.
async fn verify_signature(state: &State, checked: &CheckedRequest) -> Result<(), StsError> {
    let key_id = &checked.authorization.access_key_id;
    // The AWS session token the request carries is a credential: the secrecy scan looks for it.
    for (name, value) in &checked.headers {
        if name.eq_ignore_ascii_case("x-amz-security-token") {
            state.record_received_credential(value);
        }
    }
    let secret = match state.keys.secret(key_id).await {
        Ok(secret) => {
            // So is the secret key that signed it.
            state.record_received_credential(&secret);
            secret
        }
        Err(KeyError::Unknown) => {
            eprintln!("[doubles] sts: access key id {key_id} is unknown");
            return Err(StsError::invalid_grant(
                "Received invalid AWS response of type InvalidClientTokenId with error message: \
                 The security token included in the request is invalid (the signature does not \
                 match any AWS access key known here).",
            ));
        }
        Err(KeyError::Moto(problem)) => {
            return Err(StsError::server_error(format!(
                "The double could not look up the AWS access key: {problem}"
            )));
        }
    };
    match sigv4::verify(&checked.signed(), &secret) {
        Ok(()) => Ok(()),
        Err(SigV4Error::SignatureMismatch) => Err(StsError::invalid_grant(
            "Received invalid AWS response of type SignatureDoesNotMatch with error message: The \
             request signature we calculated does not match the signature you provided. Check \
             your AWS Secret Access Key and signing method.",
        )),
        Err(other) => Err(StsError::invalid_grant(format!(
            "AWS request has invalid format. {other}"
        ))),
    }
}

/// Who AWS says signed the request.
async fn ask_aws(
    state: &State,
    checked: &CheckedRequest,
    routes: &[(String, String)],
) -> Result<Assertion, StsError> {
    aws::get_caller_identity(&state.http, checked, routes)
        .await
        .map_err(|e| match e {
            AwsError::Rejected {
                status,
                code,
                message,
            } => StsError::invalid_grant(format!(
                "AWS rejected the GetCallerIdentity request (HTTP {status}): Received invalid \
                 AWS response of type {code} with error message: {message}"
            )),
            AwsError::Unreachable(problem) => StsError::server_error(format!(
                "Could not reach AWS STS to verify the request: {problem}"
            )),
            AwsError::Unreadable => {
                StsError::server_error("AWS STS answered GetCallerIdentity without an Arn.")
            }
        })
}

/// The attribute mapping, then the provider's condition (or an injected rejection).
fn admit(
    provider: &Provider,
    assertion: &Assertion,
    injected_reject: bool,
) -> Result<BTreeMap<String, String>, StsError> {
    let attributes = attributes::map_with(&provider.attribute_mapping, assertion)
        .map_err(|e: MappingError| StsError::invalid_request(e.to_string()))?;
    if injected_reject || !attributes::admits(&provider.condition, assertion, &attributes) {
        eprintln!(
            "[doubles] sts: {} rejected by the attribute condition{} of {}",
            assertion.arn,
            if injected_reject { " (injected)" } else { "" },
            provider.audience
        );
        return Err(StsError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            REJECTED_BY_CONDITION,
        ));
    }
    Ok(attributes)
}

async fn exchange(
    state: &State,
    headers: &HeaderMap,
    body: &[u8],
    injected_reject: bool,
) -> Result<serde_json::Value, StsError> {
    let request = parse_request(headers, body)?;
    let config = state.config();
    let provider = find_provider(&config, &request.audience)?;
    if let Some(oidc) = &provider.oidc {
        return exchange_jwt(state, &config, provider, oidc, &request, injected_reject).await;
    }
    if request.subject_token_type != AWS_SUBJECT_TOKEN_TYPE {
        return Err(StsError::invalid_request(format!(
            "The provider {} is an AWS provider; subject_token_type must be {AWS_SUBJECT_TOKEN_TYPE:?}.",
            request.audience
        )));
    }
    // The signed request is a bearer credential for its 15 minutes.
    state.record_received_credential(&request.subject_token);
    let checked = subject::check(
        &request.subject_token,
        &Expectations {
            audience: &request.audience,
            endpoints: &config.aws_sts_endpoints,
            require_signed_target: config.require_signed_target,
            now: jiff::Timestamp::now(),
        },
    )
    .map_err(|e| StsError::invalid_grant(e.to_string()))?;
    verify_signature(state, &checked).await?;
    let assertion = ask_aws(state, &checked, &config.aws_sts_routes).await?;
    state.saw_principal(&assertion.arn);
    let attributes = admit(provider, &assertion, injected_reject)?;

    Ok(federated_answer(
        state,
        &config,
        &request,
        &assertion.arn,
        attributes,
    ))
}

/// Issues a federated token for `subject` and answers with it.
fn federated_answer(
    state: &State,
    config: &Config,
    request: &ExchangeRequest,
    subject: &str,
    attributes: BTreeMap<String, String>,
) -> serde_json::Value {
    let lifetime = config.federated_lifetime;
    let token = state.issue(TokenInfo {
        principal: Principal::Federated {
            subject: subject.to_owned(),
            audience: request.audience.clone(),
            attributes,
        },
        scopes: request.scopes.clone(),
        expires_at: now() + lifetime,
    });
    eprintln!(
        "[doubles] sts: issued a federated token for {} via {}, scopes {:?}, {} s",
        subject,
        request.audience,
        request.scopes,
        lifetime.as_secs()
    );
    let expires_in = if config.expires_in_as_string {
        json!(lifetime.as_secs().to_string())
    } else {
        json!(lifetime.as_secs())
    };
    json!({
        "access_token": token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": expires_in,
    })
}

impl From<OidcError> for StsError {
    fn from(e: OidcError) -> Self {
        match e {
            OidcError::Unsupported(_) | OidcError::Malformed(_) => {
                StsError::invalid_request(e.to_string())
            }
            _ => StsError::invalid_grant(e.to_string()),
        }
    }
}

/// A JWT subject token for an OIDC provider: verified against the provider's keys, then
/// mapped and admitted.
async fn exchange_jwt(
    state: &State,
    config: &Config,
    provider: &Provider,
    oidc_config: &Oidc,
    request: &ExchangeRequest,
    injected_reject: bool,
) -> Result<serde_json::Value, StsError> {
    if request.subject_token_type != JWT_SUBJECT_TOKEN_TYPE {
        return Err(StsError::invalid_request(format!(
            "The provider {} is an OIDC provider; subject_token_type must be {JWT_SUBJECT_TOKEN_TYPE:?}.",
            request.audience
        )));
    }
    let jwt = Jwt::parse(&request.subject_token)?;
    // A ServiceAccount token is a credential here: the secrecy scan looks for it too.
    state.record_received_credential(&request.subject_token);
    oidc::check_issuer(&jwt, oidc_config)?;
    let jwks = provider_keys(state, oidc_config).await?;
    oidc::verify_signature(&jwt, &jwks)?;
    let offset = config.jwt_clock_offset_seconds;
    let judged_at = if offset >= 0 {
        std::time::SystemTime::now() + Duration::from_secs(offset.unsigned_abs())
    } else {
        std::time::SystemTime::now() - Duration::from_secs(offset.unsigned_abs())
    };
    oidc::check_claims(&jwt, oidc_config, &provider.audience, judged_at)?;
    let attributes = oidc::map(&jwt)?;
    let subject = attributes["google.subject"].clone();
    state.saw_principal(&subject);
    if injected_reject || !oidc::admits(&provider.condition, &attributes) {
        eprintln!(
            "[doubles] sts: {subject} rejected by the attribute condition{} of {}",
            if injected_reject { " (injected)" } else { "" },
            provider.audience
        );
        return Err(StsError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            REJECTED_BY_CONDITION,
        ));
    }
    Ok(federated_answer(
        state, config, request, &subject, attributes,
    ))
}

/// The provider's keys: the uploaded JWKS, or the issuer's, found through its discovery
/// document now (Google caches them; the double fetches every time, so a rotation shows at
/// once).
async fn provider_keys(state: &State, oidc_config: &Oidc) -> Result<serde_json::Value, OidcError> {
    if let Some(text) = &oidc_config.jwks_json {
        return serde_json::from_str(text).map_err(|_| {
            OidcError::IssuerUnreachable("the provider's uploaded JWKS is not JSON".into())
        });
    }
    let client = match &oidc_config.discovery_ca_pem {
        None => state.http.clone(),
        Some(pem) => {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| OidcError::IssuerUnreachable(format!("discovery CA: {e}")))?;
            reqwest::Client::builder()
                .tls_certs_only([ca])
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| OidcError::IssuerUnreachable(e.to_string()))?
        }
    };
    let fetch = |url: String| {
        let client = client.clone();
        async move {
            let response = client
                .get(&url)
                .send()
                .await
                .map_err(|e| OidcError::IssuerUnreachable(format!("{url}: {e}")))?;
            if !response.status().is_success() {
                return Err(OidcError::IssuerUnreachable(format!(
                    "{url}: HTTP {}",
                    response.status()
                )));
            }
            response
                .json::<serde_json::Value>()
                .await
                .map_err(|e| OidcError::IssuerUnreachable(format!("{url}: {e}")))
        }
    };
    let issuer = oidc_config.issuer_uri.trim_end_matches('/');
    let discovery = fetch(format!("{issuer}/.well-known/openid-configuration")).await?;
    if discovery["issuer"].as_str() != Some(oidc_config.issuer_uri.as_str()) {
        return Err(OidcError::DiscoveryIssuer);
    }
    let jwks_uri = discovery["jwks_uri"]
        .as_str()
        .filter(|u| u.starts_with("https://"))
        .ok_or_else(|| {
            OidcError::IssuerUnreachable("the discovery document names no https jwks_uri".into())
        })?;
    fetch(jwks_uri.to_owned()).await
}

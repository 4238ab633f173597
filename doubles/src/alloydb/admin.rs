//! The AlloyDB Admin API double, the two methods the connectors call over REST:
//!
//! | Route | What |
//! |---|---|
//! | `GET /v1alpha/{instance}/connectionInfo` | `{name, ipAddress, publicIpAddress, pscDnsName, instanceUid}` |
//! | `POST /v1alpha/{cluster}:generateClientCertificate` | `{pemCertificateChain: [client, intermediate, CA], caCert}` |
//!
//! Every request needs a live bearer token from the Google doubles with the cloud-platform
//! scope (401 / 403 otherwise), for a service account allowed on the instances (403), naming an
//! instance or cluster that exists (404). Certificate requests must be proto3 JSON of
//! `GenerateClientCertificateRequest` with a PEM RSA 2048 `publicKey`, a `certDuration` of at
//! most 24 h and `useMetadataExchange: true` (400). Errors are `google.rpc.Status`-shaped.
//! An injected fault ([`super::faults`]) applies before any of these checks.
//! The request checks ([`parse_route`], [`check_certificate_request`]) are plain functions.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::Shared;
use super::config::{is_cluster, split_instance};
use super::faults::Target;
use super::pki::{RsaPublicKey, parse_public_key};
use super::tokens::TokenError;
use crate::faults::Fault;

const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Longest client certificate handed out.
pub const MAX_CERT_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A `google.rpc.Status` error answer.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    reason: Option<&'static str>,
    retry_after: Option<u64>,
    /// The API named in the error details.
    service: &'static str,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            reason: None,
            retry_after: None,
            service: "alloydb.googleapis.com",
        }
    }

    /// The same error as another API's.
    pub(crate) fn of_service(self, service: &'static str) -> Self {
        ApiError { service, ..self }
    }

    pub(crate) fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub(crate) fn unauthenticated(missing: bool) -> Self {
        let message = if missing {
            "Request is missing required authentication credential. Expected OAuth 2 access \
             token, login cookie or other valid authentication credential."
        } else {
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential."
        };
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub(crate) fn insufficient_scopes() -> Self {
        ApiError {
            reason: Some("ACCESS_TOKEN_SCOPE_INSUFFICIENT"),
            ..Self::new(
                StatusCode::FORBIDDEN,
                "Request had insufficient authentication scopes.",
            )
        }
    }

    pub(crate) fn permission_denied(permission: &str, resource: &str) -> Self {
        ApiError {
            reason: Some("IAM_PERMISSION_DENIED"),
            ..Self::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Permission '{permission}' denied on resource '{resource}' (or it may not exist)."
                ),
            )
        }
    }
}

fn rpc_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        405 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        500..=599 => "INTERNAL",
        _ => "UNKNOWN",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({
            "code": self.status.as_u16(),
            "message": self.message,
            "status": rpc_status(self.status),
        });
        if let Some(reason) = self.reason {
            error["details"] = json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": self.service},
            }]);
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

/// Which method a path after `/v1alpha/` names.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `projects/P/locations/R/clusters/C/instances/I/connectionInfo`.
    ConnectionInfo { instance: &'a str },
    /// `projects/P/locations/R/clusters/C:generateClientCertificate`.
    GenerateClientCertificate { cluster: &'a str },
}

pub fn parse_route(path: &str) -> Option<Route<'_>> {
    if let Some(instance) = path.strip_suffix("/connectionInfo") {
        return split_instance(instance).map(|_| Route::ConnectionInfo { instance });
    }
    let cluster = path.strip_suffix(":generateClientCertificate")?;
    is_cluster(cluster).then_some(Route::GenerateClientCertificate { cluster })
}

/// `GenerateClientCertificateRequest` as proto3 JSON (the Go REST client sends `parent` in the
/// body too). Unknown fields are refused, as Google's JSON transcoding does.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertificateRequest {
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    cert_duration: Option<String>,
    #[serde(default)]
    use_metadata_exchange: Option<bool>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    validate_only: Option<bool>,
}

/// A checked certificate request.
#[derive(Debug)]
pub struct CertificateOrder {
    pub key: RsaPublicKey,
    pub duration: Duration,
}

/// Parses a protobuf `Duration` in JSON (`"3600s"`, `"1.5s"`).
pub(crate) fn parse_duration(raw: &str) -> Option<Duration> {
    let number = raw.strip_suffix('s')?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 9
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let seconds: u64 = whole.parse().ok()?;
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().ok()?
    };
    Some(Duration::new(seconds, nanos))
}

/// The body of a `generateClientCertificate` call on `cluster`, checked.
pub fn check_certificate_request(cluster: &str, body: &[u8]) -> Result<CertificateOrder, ApiError> {
    let request: CertificateRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_argument(format!("Invalid JSON payload received. {e}")))?;
    let _ = (&request.request_id, request.validate_only);
    if let Some(parent) = &request.parent
        && parent != cluster
    {
        return Err(ApiError::invalid_argument(format!(
            "parent {parent:?} in the body does not match {cluster:?} in the URL"
        )));
    }
    if request.use_metadata_exchange != Some(true) {
        return Err(ApiError::invalid_argument(
            "use_metadata_exchange must be true: this cluster only accepts connections that \
             begin with the metadata exchange",
        ));
    }
    let pem = request
        .public_key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::invalid_argument("public_key is required"))?;
    let key = parse_public_key(&pem)
        .map_err(|e| ApiError::invalid_argument(format!("Invalid public_key: {e}")))?;
    let duration = match request.cert_duration.as_deref() {
        None => Duration::from_secs(3600),
        Some(raw) => parse_duration(raw)
            .filter(|d| !d.is_zero() && *d <= MAX_CERT_DURATION)
            .ok_or_else(|| {
                ApiError::invalid_argument(format!(
                    "Invalid cert_duration {raw:?}: expected a duration such as \"3600s\" \
                     between 1s and {}s",
                    MAX_CERT_DURATION.as_secs()
                ))
            })?,
    };
    Ok(CertificateOrder { key, duration })
}

/// The bearer token of `Authorization: Bearer T`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1alpha/{*path}", get(get_method).post(post_method))
        .fallback(|| async { ApiError::not_found("Not found.") })
        .with_state(shared)
}

/// The caller's service account, once its token is live, has cloud-platform and is allowed.
async fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    permission: &str,
    resource: &str,
) -> Result<String, ApiError> {
    let token = bearer(headers).ok_or_else(|| ApiError::unauthenticated(true))?;
    let facts = match shared.verifier.check(token).await {
        Ok(facts) => facts,
        Err(TokenError::Invalid) => return Err(ApiError::unauthenticated(false)),
        Err(TokenError::Unavailable(e)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("The token could not be checked: {e}"),
            ));
        }
    };
    if !facts.has_scope(CLOUD_PLATFORM) {
        return Err(ApiError::insufficient_scopes());
    }
    match facts.email {
        Some(email) if shared.config.service_accounts.contains(&email) => Ok(email),
        _ => Err(ApiError::permission_denied(permission, resource)),
    }
}

fn check_alt(query: Option<&str>) -> Result<(), ApiError> {
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (name.as_ref(), value.as_ref()) {
            ("$alt", "json" | "json;enum-encoding=int") => {}
            ("$alt", other) => {
                return Err(ApiError::invalid_argument(format!(
                    "Unsupported $alt {other:?}"
                )));
            }
            // requestId is allowed on connectionInfo and not used.
            ("requestId", _) => {}
            (other, _) => {
                return Err(ApiError::invalid_argument(format!(
                    "Invalid JSON payload received. Unknown name \"{other}\": Cannot bind query \
                     parameter."
                )));
            }
        }
    }
    Ok(())
}

/// Applies the injected fault for this request: an error to answer, or a delay.
async fn injected(shared: &Shared, permission: &str, resource: &str) -> Result<(), ApiError> {
    match shared.take_fault(Target::Admin) {
        None => Ok(()),
        Some(Fault::Delay { millis, .. }) => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            Ok(())
        }
        Some(Fault::Reject { .. }) => Err(ApiError::permission_denied(permission, resource)),
        Some(Fault::Status {
            code, retry_after, ..
        }) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Err(ApiError {
                retry_after,
                ..ApiError::new(status, format!("Injected fault: HTTP {}.", status.as_u16()))
            })
        }
    }
}

async fn get_method(
    Extract(shared): Extract<Arc<Shared>>,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(Route::ConnectionInfo { instance }) = parse_route(&path) else {
        shared.record_admin(&path, StatusCode::NOT_FOUND);
        return Err(ApiError::not_found("Not found."));
    };
    let result = connection_info(&shared, instance, query.as_deref(), &headers).await;
    shared.record_admin(
        "connectionInfo",
        result
            .as_ref()
            .map_or_else(|e| e.status, |_| StatusCode::OK),
    );
    result
}

async fn connection_info(
    shared: &Shared,
    instance: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    injected(shared, "alloydb.instances.connect", instance).await?;
    check_alt(query)?;
    authorize(shared, headers, "alloydb.instances.connect", instance).await?;
    let config = shared
        .config
        .find_instance(instance)
        .ok_or_else(|| ApiError::not_found(format!("Resource '{instance}' was not found")))?;
    let mut body = json!({
        "name": format!("{instance}/connectionInfo"),
        "instanceUid": config.uid,
    });
    for (field, value) in [
        ("ipAddress", &config.ip_address),
        ("publicIpAddress", &config.public_ip_address),
        ("pscDnsName", &config.psc_dns_name),
    ] {
        if let Some(value) = value {
            body[field] = json!(value);
        }
    }
    Ok(Json(body).into_response())
}

async fn post_method(
    Extract(shared): Extract<Arc<Shared>>,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(Route::GenerateClientCertificate { cluster }) = parse_route(&path) else {
        shared.record_admin(&path, StatusCode::NOT_FOUND);
        return Err(ApiError::not_found("Not found."));
    };
    let result = generate_certificate(&shared, cluster, query.as_deref(), &headers, &body).await;
    shared.record_admin(
        "generateClientCertificate",
        result
            .as_ref()
            .map_or_else(|e| e.status, |_| StatusCode::OK),
    );
    result
}

async fn generate_certificate(
    shared: &Shared,
    cluster: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    injected(
        shared,
        "alloydb.clusters.generateClientCertificate",
        cluster,
    )
    .await?;
    check_alt(query)?;
    let email = authorize(
        shared,
        headers,
        "alloydb.clusters.generateClientCertificate",
        cluster,
    )
    .await?;
    if !shared.config.has_cluster(cluster) {
        return Err(ApiError::not_found(format!(
            "Resource '{cluster}' was not found"
        )));
    }
    let order = check_certificate_request(cluster, body)?;
    let chain = shared
        .pki
        .sign_client(&order.key, &email, order.duration)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Signing failed: {e}"),
            )
        })?;
    Ok(Json(json!({
        "pemCertificateChain": chain,
        "caCert": shared.pki.root_pem(),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "projects/p/locations/r/clusters/c";

    #[test]
    fn routes_name_an_instance_or_a_cluster() {
        assert_eq!(
            parse_route("projects/p/locations/r/clusters/c/instances/i/connectionInfo"),
            Some(Route::ConnectionInfo {
                instance: "projects/p/locations/r/clusters/c/instances/i"
            })
        );
        assert_eq!(
            parse_route("projects/p/locations/r/clusters/c:generateClientCertificate"),
            Some(Route::GenerateClientCertificate { cluster: CLUSTER })
        );
        for bad in [
            "projects/p/locations/r/clusters/c/connectionInfo",
            "projects/p/locations/r/clusters/c/instances/i:generateClientCertificate",
            "projects/p/locations/r/clusters/c:getConnectionInfo",
            "projects/p/locations/r/clusters/c/instances/i/connectionInfo/x",
        ] {
            assert_eq!(parse_route(bad), None, "{bad}");
        }
    }

    fn key_pem() -> String {
        // An RSA 2048 public key in PKCS#1: modulus 0x80…01, exponent 65537.
        let mut modulus = vec![0u8; 256];
        modulus[0] = 0x80;
        modulus[255] = 1;
        modulus.insert(0, 0);
        let mut der = vec![0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01];
        der.extend_from_slice(&modulus);
        der.extend_from_slice(&[0x02, 0x03, 0x01, 0x00, 0x01]);
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN RSA PUBLIC KEY-----\n{body}\n-----END RSA PUBLIC KEY-----\n")
    }

    fn request(fields: serde_json::Value) -> Result<CertificateOrder, ApiError> {
        check_certificate_request(CLUSTER, fields.to_string().as_bytes())
    }

    #[test]
    fn a_go_connector_request_is_accepted() {
        let order = request(json!({
            "parent": CLUSTER, "publicKey": key_pem(), "certDuration": "3600s",
            "useMetadataExchange": true,
        }))
        .unwrap();
        assert_eq!(order.duration, Duration::from_secs(3600));
        assert_eq!(order.key.bits(), 2048);
        let order = request(json!({"publicKey": key_pem(), "useMetadataExchange": true,
            "certDuration": "1.5s"}))
        .unwrap();
        assert_eq!(order.duration, Duration::from_millis(1500));
    }

    #[test]
    fn wrong_requests_get_invalid_argument() {
        let cases = [
            json!({"publicKey": key_pem()}),
            json!({"publicKey": key_pem(), "useMetadataExchange": false}),
            json!({"useMetadataExchange": true}),
            json!({"publicKey": "x", "useMetadataExchange": true}),
            json!({"publicKey": key_pem(), "useMetadataExchange": true, "certDuration": "1h"}),
            json!({"publicKey": key_pem(), "useMetadataExchange": true, "certDuration": "0s"}),
            json!({"publicKey": key_pem(), "useMetadataExchange": true, "certDuration": "90000s"}),
            json!({"publicKey": key_pem(), "useMetadataExchange": true, "extra": 1}),
            json!({"parent": "projects/p/locations/r/clusters/other", "publicKey": key_pem(),
                   "useMetadataExchange": true}),
        ];
        for case in cases {
            let error = request(case.clone()).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{case}");
        }
        let error = check_certificate_request(CLUSTER, b"{").unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn errors_have_google_s_shape() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer  "));
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert_eq!(bearer(&headers), Some("t"));
        let response = ApiError::insufficient_scopes().into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(check_alt(Some("%24alt=json%3Benum-encoding%3Dint")).is_ok());
        assert!(check_alt(Some("$alt=proto")).is_err());
        assert!(check_alt(Some("key=x")).is_err());
    }
}

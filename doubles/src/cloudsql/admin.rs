//! The Cloud SQL Admin API double, the two methods the connectors call over REST:
//!
//! | Route | What |
//! |---|---|
//! | `GET /sql/v1beta4/projects/{p}/instances/{i}/connectSettings` | region, `SECOND_GEN`, database version, IP addresses, PSC DNS name, `serverCaCert`, `serverCaMode` |
//! | `POST /sql/v1beta4/projects/{p}/instances/{i}:generateEphemeralCert` | `{ephemeralCert: {cert, expirationTime, …}}` |
//!
//! Every request needs a live bearer token from the Google doubles with the `cloud-platform`
//! or `sqlservice.admin` scope (401 / 403 otherwise), for a service account allowed on the
//! instances (403), naming an instance that exists (404). Certificate requests must be JSON of
//! `GenerateEphemeralCertRequest` with a PEM RSA 2048 `public_key` (400). With an
//! `access_token` (automatic IAM database login) that token must be live, belong to an allowed
//! service account and carry the `sqlservice.login` scope (400 otherwise); the certificate then
//! ends when the token does and stands for that service account. Errors are
//! `google.rpc.Status`-shaped; none carries a token. The request checks ([`parse_route`],
//! [`check_certificate_request`]) are plain functions.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::config::CloudSqlInstance;
use super::{Binding, Shared, digest};
use crate::alloydb::admin::{ApiError, bearer, parse_duration};
use crate::alloydb::pki::{RsaPublicKey, parse_public_key};
use crate::alloydb::tokens::{TokenError, TokenFacts};

const SERVICE: &str = "sqladmin.googleapis.com";
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const SQLSERVICE_ADMIN: &str = "https://www.googleapis.com/auth/sqlservice.admin";
/// The scope an access token needs for automatic IAM database login.
pub const SQLSERVICE_LOGIN: &str = "https://www.googleapis.com/auth/sqlservice.login";

/// Longest ephemeral certificate handed out.
pub const MAX_CERT_DURATION: Duration = Duration::from_secs(3600);

/// Which method a path after `/sql/v1beta4/` names.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `projects/P/instances/I/connectSettings`.
    ConnectSettings { project: &'a str, instance: &'a str },
    /// `projects/P/instances/I:generateEphemeralCert`.
    GenerateEphemeralCert { project: &'a str, instance: &'a str },
}

pub fn parse_route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("projects/")?;
    let (project, rest) = rest.split_once("/instances/")?;
    let fine = |s: &str| !s.is_empty() && !s.contains('/');
    if !fine(project) {
        return None;
    }
    if let Some(instance) = rest.strip_suffix("/connectSettings") {
        return fine(instance).then_some(Route::ConnectSettings { project, instance });
    }
    let instance = rest.strip_suffix(":generateEphemeralCert")?;
    (fine(instance) && !instance.contains(':'))
        .then_some(Route::GenerateEphemeralCert { project, instance })
}

/// `GenerateEphemeralCertRequest` as the Go client sends it (snake_case key fields).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateRequest {
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default, rename = "readTime")]
    read_time: Option<String>,
    #[serde(default, rename = "validDuration")]
    valid_duration: Option<String>,
}

/// A checked certificate request; the access token, if any, is not checked yet.
pub struct CertificateOrder {
    pub key: RsaPublicKey,
    pub duration: Duration,
    access_token: Option<String>,
}

impl std::fmt::Debug for CertificateOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateOrder")
            .field("duration", &self.duration)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl CertificateOrder {
    pub fn wants_iam_login(&self) -> bool {
        self.access_token.is_some()
    }
}

/// The body of a `generateEphemeralCert` call, checked.
pub fn check_certificate_request(body: &[u8]) -> Result<CertificateOrder, ApiError> {
    let invalid = |m: String| ApiError::invalid_argument(m).of_service(SERVICE);
    // serde's messages quote unknown field names, never values.
    let request: CertificateRequest = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("Invalid JSON payload received. {e}")))?;
    let _ = request.read_time;
    let pem = request
        .public_key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| invalid("public_key is required".to_owned()))?;
    let key = parse_public_key(&pem).map_err(|e| invalid(format!("Invalid public_key: {e}")))?;
    let duration = match request.valid_duration.as_deref() {
        None => MAX_CERT_DURATION,
        Some(raw) => parse_duration(raw)
            .filter(|d| !d.is_zero() && *d <= MAX_CERT_DURATION)
            .ok_or_else(|| {
                invalid(format!(
                    "Invalid validDuration {raw:?}: expected a duration such as \"3600s\" \
                     between 1s and {}s",
                    MAX_CERT_DURATION.as_secs()
                ))
            })?,
    };
    let access_token = request.access_token.filter(|t| !t.is_empty());
    Ok(CertificateOrder {
        key,
        duration,
        access_token,
    })
}

/// The Go client's query: `alt=json`, `prettyPrint=false`; nothing else is bound.
fn check_query(query: Option<&str>) -> Result<(), ApiError> {
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (name.as_ref(), value.as_ref()) {
            ("alt", "json") | ("prettyPrint", "true" | "false") | ("readTime", _) => {}
            (other, _) => {
                return Err(ApiError::invalid_argument(format!(
                    "Invalid query parameter \"{other}\""
                ))
                .of_service(SERVICE));
            }
        }
    }
    Ok(())
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/sql/v1beta4/{*path}", get(get_method).post(post_method))
        .fallback(|| async { ApiError::not_found("Not found.").of_service(SERVICE) })
        .with_state(shared)
}

/// Asks the issuer about `token`.
async fn check_token(shared: &Shared, token: &str) -> Result<Option<TokenFacts>, ApiError> {
    match shared.verifier.check(token).await {
        Ok(facts) => Ok(Some(facts)),
        Err(TokenError::Invalid) => Ok(None),
        Err(TokenError::Unavailable(e)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("The token could not be checked: {e}"),
        )
        .of_service(SERVICE)),
    }
}

/// The caller's service account, once its token is live, has an admin scope and is allowed;
/// and the instance it names.
async fn authorize<'a>(
    shared: &'a Shared,
    headers: &HeaderMap,
    project: &str,
    instance: &str,
) -> Result<(String, &'a CloudSqlInstance), ApiError> {
    let token =
        bearer(headers).ok_or_else(|| ApiError::unauthenticated(true).of_service(SERVICE))?;
    let facts = check_token(shared, token)
        .await?
        .ok_or_else(|| ApiError::unauthenticated(false).of_service(SERVICE))?;
    if !facts.has_scope(CLOUD_PLATFORM) && !facts.has_scope(SQLSERVICE_ADMIN) {
        return Err(ApiError::insufficient_scopes().of_service(SERVICE));
    }
    let resource = format!("projects/{project}/instances/{instance}");
    let email = match facts.email {
        Some(email) if shared.config.service_accounts.contains(&email) => email,
        _ => {
            return Err(
                ApiError::permission_denied("cloudsql.instances.connect", &resource)
                    .of_service(SERVICE),
            );
        }
    };
    let found = shared.config.find(project, instance).ok_or_else(|| {
        ApiError::not_found(format!("The Cloud SQL instance {resource} does not exist."))
            .of_service(SERVICE)
    })?;
    Ok((email, found))
}

async fn get_method(
    Extract(shared): Extract<Arc<Shared>>,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(Route::ConnectSettings { project, instance }) = parse_route(&path) else {
        shared.record_admin(&path, StatusCode::NOT_FOUND);
        return Err(ApiError::not_found("Not found.").of_service(SERVICE));
    };
    let result = connect_settings(&shared, project, instance, query.as_deref(), &headers).await;
    shared.record_admin(
        "connectSettings",
        result
            .as_ref()
            .map_or_else(|e| e.status, |_| StatusCode::OK),
    );
    result
}

async fn connect_settings(
    shared: &Shared,
    project: &str,
    instance: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    check_query(query)?;
    let (_, config) = authorize(shared, headers, project, instance).await?;
    Ok(Json(settings(config, &shared.pki.server_ca_pem())).into_response())
}

/// The `ConnectSettings` of `instance`.
pub fn settings(instance: &CloudSqlInstance, server_ca_pem: &str) -> serde_json::Value {
    let parts = instance.parts();
    let mut ip_addresses = Vec::new();
    for (kind, address) in [
        ("PRIMARY", &instance.public_ip_address),
        ("PRIVATE", &instance.private_ip_address),
    ] {
        if let Some(address) = address {
            ip_addresses.push(json!({"type": kind, "ipAddress": address}));
        }
    }
    let mut body = json!({
        "kind": "sql#connectSettings",
        "region": parts.map(|p| p.region),
        "backendType": "SECOND_GEN",
        "databaseVersion": instance.database_version,
        "ipAddresses": ip_addresses,
        "serverCaMode": "GOOGLE_MANAGED_INTERNAL_CA",
        "serverCaCert": {
            "kind": "sql#sslCert",
            "cert": server_ca_pem,
            "commonName": "Google Cloud SQL Server CA",
            "instance": parts.map(|p| p.name),
        },
    });
    if let Some(dns) = &instance.psc_dns_name {
        body["pscEnabled"] = json!(true);
        body["dnsName"] = json!(dns);
        body["dnsNames"] = json!([{
            "name": dns, "connectionType": "PRIVATE_SERVICE_CONNECT", "dnsScope": "INSTANCE",
        }]);
    }
    body
}

async fn post_method(
    Extract(shared): Extract<Arc<Shared>>,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(Route::GenerateEphemeralCert { project, instance }) = parse_route(&path) else {
        shared.record_admin(&path, StatusCode::NOT_FOUND);
        return Err(ApiError::not_found("Not found.").of_service(SERVICE));
    };
    let result = generate(
        &shared,
        project,
        instance,
        query.as_deref(),
        &headers,
        &body,
    )
    .await;
    shared.record_admin(
        "generateEphemeralCert",
        result
            .as_ref()
            .map_or_else(|e| e.status, |_| StatusCode::OK),
    );
    result
}

async fn generate(
    shared: &Shared,
    project: &str,
    instance: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    check_query(query)?;
    let (_, config) = authorize(shared, headers, project, instance).await?;
    let order = check_certificate_request(body)?;
    let invalid = |m: String| ApiError::invalid_argument(m).of_service(SERVICE);
    let mut duration = order.duration;
    let mut iam_user = None;
    let mut token_digest = None;
    if let Some(token) = &order.access_token {
        let facts = check_token(shared, token)
            .await?
            .ok_or_else(|| invalid("access_token is invalid or expired".to_owned()))?;
        let email = facts
            .email
            .clone()
            .filter(|e| shared.config.service_accounts.contains(e))
            .ok_or_else(|| {
                invalid(
                    "access_token does not belong to a service account allowed to log in to \
                     this instance"
                        .to_owned(),
                )
            })?;
        if !facts.has_scope(SQLSERVICE_LOGIN) {
            return Err(invalid(format!(
                "access_token lacks the scope {SQLSERVICE_LOGIN} needed for IAM database login"
            )));
        }
        duration = duration.min(facts.expires_in);
        iam_user = Some(email);
        token_digest = Some(digest(token.as_bytes()));
    }
    let certificate = shared
        .pki
        .sign_ephemeral(&order.key, duration)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Signing failed: {e}"),
            )
            .of_service(SERVICE)
        })?;
    shared.bind(
        &certificate.der,
        Binding {
            instance: config.connection_name.clone(),
            iam_user,
            token_digest,
            not_after: certificate.not_after,
        },
    );
    let expiration = jiff::Timestamp::try_from(certificate.not_after)
        .map(|t| t.to_string())
        .unwrap_or_default();
    Ok(Json(json!({
        "ephemeralCert": {
            "kind": "sql#sslCert",
            "cert": certificate.pem,
            "commonName": "cloudsql-ephemeral",
            "expirationTime": expiration,
            "instance": instance,
        }
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_an_instance_of_a_project() {
        assert_eq!(
            parse_route("projects/p/instances/i/connectSettings"),
            Some(Route::ConnectSettings {
                project: "p",
                instance: "i"
            })
        );
        assert_eq!(
            parse_route("projects/example.com:p/instances/i:generateEphemeralCert"),
            Some(Route::GenerateEphemeralCert {
                project: "example.com:p",
                instance: "i"
            })
        );
        for bad in [
            "projects/p/instances/i",
            "projects/p/instances//connectSettings",
            "projects/p/instances/i/x/connectSettings",
            "projects/p/instances/i:createEphemeral",
            "projects//instances/i/connectSettings",
            "instances/i/connectSettings",
        ] {
            assert_eq!(parse_route(bad), None, "{bad}");
        }
    }

    fn key_pem() -> String {
        // An RSA 2048 key as the Go connector sends it: SubjectPublicKeyInfo under an
        // `RSA PUBLIC KEY` label.
        let mut modulus = vec![0u8; 256];
        modulus[0] = 0x80;
        modulus[255] = 1;
        modulus.insert(0, 0);
        let mut pkcs1 = vec![0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01];
        pkcs1.extend_from_slice(&modulus);
        pkcs1.extend_from_slice(&[0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut spki = vec![0x30, 0x82, 0x01, 0x22, 0x30, 0x0d, 0x06, 0x09];
        spki.extend_from_slice(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]);
        spki.extend_from_slice(&[0x05, 0x00, 0x03, 0x82, 0x01, 0x0f, 0x00]);
        spki.extend_from_slice(&pkcs1);
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD.encode(spki);
        format!("-----BEGIN RSA PUBLIC KEY-----\n{body}\n-----END RSA PUBLIC KEY-----\n")
    }

    #[test]
    fn a_go_connector_request_is_accepted() {
        let body = json!({"public_key": key_pem(), "access_token": "t"}).to_string();
        let order = check_certificate_request(body.as_bytes()).unwrap();
        assert!(order.wants_iam_login());
        assert_eq!(order.duration, MAX_CERT_DURATION);
        assert_eq!(order.key.bits(), 2048);
        assert!(!format!("{order:?}").contains("\"t\""));
        let body = json!({"public_key": key_pem(), "validDuration": "600s"}).to_string();
        let order = check_certificate_request(body.as_bytes()).unwrap();
        assert!(!order.wants_iam_login());
        assert_eq!(order.duration, Duration::from_secs(600));
    }

    #[test]
    fn wrong_requests_get_invalid_argument() {
        for case in [
            json!({}),
            json!({"public_key": ""}),
            json!({"public_key": "x"}),
            json!({"public_key": key_pem(), "validDuration": "7200s"}),
            json!({"public_key": key_pem(), "validDuration": "1h"}),
            json!({"public_key": key_pem(), "publicKey": key_pem()}),
        ] {
            let error = check_certificate_request(case.to_string().as_bytes()).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{case}");
        }
        assert!(check_certificate_request(b"{").is_err());
        assert!(check_query(Some("alt=json&prettyPrint=false")).is_ok());
        assert!(check_query(Some("key=x")).is_err());
    }

    #[test]
    fn settings_report_what_the_connector_reads() {
        let psc = settings(
            &CloudSqlInstance::psc("p:europe-west1:i", "x.sql.goog."),
            "CA",
        );
        assert_eq!(psc["region"], "europe-west1");
        assert_eq!(psc["backendType"], "SECOND_GEN");
        assert_eq!(psc["pscEnabled"], true);
        assert_eq!(
            psc["dnsNames"][0]["connectionType"],
            "PRIVATE_SERVICE_CONNECT"
        );
        assert_eq!(psc["serverCaCert"]["cert"], "CA");
        assert_eq!(psc["ipAddresses"], json!([]));
        let public = settings(&CloudSqlInstance::public("p:r:i", "127.0.0.1"), "CA");
        assert_eq!(
            public["ipAddresses"],
            json!([{"type": "PRIMARY", "ipAddress": "127.0.0.1"}])
        );
        assert!(public.get("pscEnabled").is_none());
    }
}

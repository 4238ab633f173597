//! The HTTP server: one axum router on one loopback port, and [`GoogleDoubles`], the in-process
//! handle that starts it, steers it and stops it on drop.
//!
//! | Route | What |
//! |---|---|
//! | `POST /v1/token` | Google STS token exchange ([`crate::sts`]) |
//! | `POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken` | IAM Credentials ([`crate::iam`]) |
//! | `POST /v1/projects/-/serviceAccounts/EMAIL:generateIdToken` | ID tokens ([`crate::iam`], signed by [`crate::idtoken`]) |
//! | `GET /oauth2/v3/certs`, `GET /oauth2/v1/certs` | the ID token key as a JWKS and as PEM certificates by key id |
//! | `GET /storage/v1/b?project=P` | a Google API: Cloud Storage's bucket list (empty), for a live bearer token with a Cloud scope; every call is recorded ([`GoogleDoubles::api_calls`]) |
//! | `GET /tokeninfo?access_token=T` | `{"email"?,"sub","scope","expires_in","exp"}`, or 400 `{"error":"invalid_token"}` |
//! | `POST /__faults` | queue a fault: `{"target":"sts"\|"iam","kind":"status","code":503,"retry_after":2,"count":1}` (see [`Fault`]) |
//! | `DELETE /__faults` | drop every queued fault |
//! | `GET /__stats` | calls, exchanges and pending faults per target, number of tokens issued, principals seen |
//! | `POST /__condition` | `{"audience":…,"condition":{"arn_contains":…}}` replaces a provider's condition |
//! | `PUT /__bindings` | a JSON list of [`Binding`]s replaces every binding |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{Binding, Condition, Config};
use crate::faults::{Fault, Target};
use crate::names::ProviderName;
use crate::state::{ApiCall, State, TokenInfo};
use crate::{iam, sts};

/// Running Google STS and IAM Credentials doubles. Dropping the handle stops the server.
pub struct GoogleDoubles {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl GoogleDoubles {
    /// Starts the doubles on `127.0.0.1` and a free port. Fails with `InvalidInput` when a
    /// provider's audience is not a well-formed provider name.
    pub async fn start(config: Config) -> std::io::Result<GoogleDoubles> {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts the doubles on `addr`.
    pub async fn start_at(addr: SocketAddr, config: Config) -> std::io::Result<GoogleDoubles> {
        validate(&config)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(std::io::Error::other)?;
        let state = Arc::new(State::new(config, http));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                eprintln!("[doubles] server stopped: {e}");
            }
        });
        eprintln!("[doubles] listening on http://{addr}");
        Ok(GoogleDoubles {
            addr,
            state,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// Stops the server and waits until it has stopped.
    pub async fn shutdown(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The STS token endpoint: base + `/v1/token`.
    pub fn sts_url(&self) -> String {
        format!("{}/v1/token", self.base_url())
    }

    /// The IAM Credentials endpoint root; clients append
    /// `/v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`.
    pub fn iam_credentials_url(&self) -> String {
        self.base_url()
    }

    /// The JWKS of the ID token signing key: `base/oauth2/v3/certs`.
    pub fn jwks_url(&self) -> String {
        format!("{}/oauth2/v3/certs", self.base_url())
    }

    /// The ID token signing key as PEM certificates by key id: `base/oauth2/v1/certs`.
    pub fn pem_certs_url(&self) -> String {
        format!("{}/oauth2/v1/certs", self.base_url())
    }

    /// `base/storage/v1/b?project=PROJECT`: a Google API a client can call with its token.
    pub fn api_url(&self, project: &str) -> String {
        format!("{}/storage/v1/b?project={project}", self.base_url())
    }

    /// Calls to the API double so far, in order.
    pub fn api_calls(&self) -> Vec<ApiCall> {
        self.state.api_calls()
    }

    /// ID tokens `generateIdToken` has signed so far.
    pub fn id_tokens_issued(&self) -> u64 {
        self.state.id_tokens_issued()
    }

    /// `base/tokeninfo`.
    pub fn tokeninfo_url(&self) -> String {
        format!("{}/tokeninfo", self.base_url())
    }

    /// Queues `fault` for the next requests to `target`.
    pub fn inject(&self, target: Target, fault: Fault) {
        self.state.inject(target, fault);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.state.clear_faults();
    }

    /// Faults still queued for `target`, counts as they stand.
    pub fn pending_faults(&self, target: Target) -> Vec<Fault> {
        self.state.pending_faults(target)
    }

    /// Replaces the attribute condition of the provider `audience` (adding an enabled provider
    /// when there is none).
    pub fn set_condition(&self, audience: &str, condition: Condition) {
        self.state
            .update_config(|c| set_condition(c, audience, condition));
    }

    /// Enables or disables the provider `audience`.
    pub fn set_provider_disabled(&self, audience: &str, disabled: bool) {
        self.state.update_config(|c| {
            for p in c.providers.iter_mut().filter(|p| p.audience == audience) {
                p.disabled = disabled;
            }
        });
    }

    /// Replaces the OIDC settings of the provider `audience` (its issuer, allowed audiences,
    /// uploaded keys), as `gcloud … providers update-oidc` does.
    pub fn set_provider_oidc(&self, audience: &str, oidc: crate::config::Oidc) {
        self.state.update_config(|c| {
            for p in c.providers.iter_mut().filter(|p| p.audience == audience) {
                p.oidc = Some(oidc.clone());
            }
        });
    }

    /// Judges JWT times as if the clock were `seconds` ahead.
    pub fn set_jwt_clock_offset(&self, seconds: i64) {
        self.state
            .update_config(|c| c.jwt_clock_offset_seconds = seconds);
    }

    /// Replaces every binding.
    pub fn set_bindings(&self, bindings: Vec<Binding>) {
        self.state.update_config(|c| c.bindings = bindings);
    }

    /// Requests that reached `target` (faulted ones included).
    pub fn calls(&self, target: Target) -> u64 {
        self.state.calls(target)
    }

    /// Requests to `target` that returned a token.
    pub fn exchanges(&self, target: Target) -> u64 {
        self.state.exchanges(target)
    }

    /// Every token value issued so far, expired ones included, to scan logs for leaks.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.issued_tokens()
    }

    /// Every credential the doubles received and listed for the secrecy scan: ServiceAccount
    /// and AWS subject tokens, and the session tokens and secret keys that signed the latter.
    pub fn received_credentials(&self) -> Vec<String> {
        self.state.received_credentials()
    }

    /// Every caller ARN AWS confirmed, in order of first appearance.
    pub fn seen_principals(&self) -> Vec<String> {
        self.state.seen_principals()
    }

    /// What a live token stands for.
    pub fn lookup(&self, token: &str) -> Option<TokenInfo> {
        self.state.lookup(token)
    }
}

impl Drop for GoogleDoubles {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

fn validate(config: &Config) -> std::io::Result<()> {
    for provider in &config.providers {
        if ProviderName::parse(&provider.audience).is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "provider audience {:?} is not \
                     //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER",
                    provider.audience
                ),
            ));
        }
    }
    Ok(())
}

fn set_condition(config: &mut Config, audience: &str, condition: Condition) {
    match config.providers.iter_mut().find(|p| p.audience == audience) {
        Some(provider) => provider.condition = condition,
        None => config
            .providers
            .push(crate::config::Provider::new(audience).with_condition(condition)),
    }
}

fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/token", post(sts::token))
        .route(
            "/v1/projects/{project}/serviceAccounts/{call}",
            post(iam::service_account_call),
        )
        .route("/tokeninfo", get(tokeninfo))
        .route("/storage/v1/b", get(list_buckets))
        .route("/oauth2/v3/certs", get(jwks))
        .route("/oauth2/v1/certs", get(pem_certs))
        .route("/__faults", post(add_fault).delete(clear_faults))
        .route("/__stats", get(stats))
        .route("/__condition", post(change_condition))
        .route("/__bindings", axum::routing::put(replace_bindings))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": {"code": 404, "message": "Not found.", "status": "NOT_FOUND"}})),
    )
        .into_response()
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

/// `GET /storage/v1/b`: Cloud Storage's bucket list, empty, for a live bearer token carrying
/// cloud-platform or a devstorage scope; 401 otherwise, as Google answers.
async fn list_buckets(
    Extract(state): Extract<Arc<State>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let info = bearer.and_then(|token| state.lookup(token));
    let allowed = info.as_ref().is_some_and(|i| {
        i.scopes.iter().any(|s| {
            s == "https://www.googleapis.com/auth/cloud-platform"
                || s.starts_with("https://www.googleapis.com/auth/devstorage.")
        })
    });
    state.record_api_call(ApiCall {
        path: "/storage/v1/b".to_owned(),
        principal: info.as_ref().map(|i| i.subject().to_owned()),
        allowed,
    });
    if !allowed {
        return (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"error": {"code": 401, "message": "Invalid Credentials",
                                  "status": "UNAUTHENTICATED"}}),
            ),
        )
            .into_response();
    }
    Json(json!({"kind": "storage#buckets", "items": []})).into_response()
}

/// `GET /oauth2/v3/certs`: the ID token signing key as a JWKS.
async fn jwks(Extract(state): Extract<Arc<State>>) -> Response {
    Json(state.signer.jwks().clone()).into_response()
}

/// `GET /oauth2/v1/certs`: the ID token signing key as `{kid: PEM certificate}`.
async fn pem_certs(Extract(state): Extract<Arc<State>>) -> Response {
    Json(state.signer.pem_certs().clone()).into_response()
}

/// `GET /tokeninfo?access_token=…`, like Google's OAuth2 token info.
async fn tokeninfo(Extract(state): Extract<Arc<State>>, RawQuery(query): RawQuery) -> Response {
    let token = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "access_token")
        .map(|(_, value)| value.into_owned());
    let Some(info) = token.and_then(|t| state.lookup(&t)) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_token", "error_description": "Invalid Value"})),
        )
            .into_response();
    };
    let now = std::time::SystemTime::now();
    let exp = info
        .expires_at
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut body = json!({
        "sub": info.subject(),
        "scope": info.scopes.join(" "),
        "expires_in": info.expires_in(now).as_secs(),
        "exp": exp,
    });
    if let Some(email) = info.email() {
        body["email"] = json!(email);
    }
    Json(body).into_response()
}

/// `POST /__faults` with `{"target":"sts"|"iam", "kind":…, …}` (see [`Fault`]).
async fn add_fault(Extract(state): Extract<Arc<State>>, body: Bytes) -> Response {
    let mut value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("not JSON: {e}")),
    };
    let target = value
        .as_object_mut()
        .and_then(|o| o.remove("target"))
        .map(serde_json::from_value::<Target>);
    let target = match target {
        Some(Ok(t)) => t,
        _ => return bad_request("\"target\" must be \"sts\" or \"iam\"".to_owned()),
    };
    let fault: Fault = match serde_json::from_value(value) {
        Ok(f) => f,
        Err(e) => return bad_request(format!("not a fault: {e}")),
    };
    if let Fault::Status { code, .. } = fault
        && !(100..=599).contains(&code)
    {
        return bad_request(format!("{code} is not an HTTP status"));
    }
    eprintln!("[doubles] fault queued for {target:?}: {fault:?}");
    state.inject(target, fault);
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE /__faults`.
async fn clear_faults(Extract(state): Extract<Arc<State>>) -> Response {
    state.clear_faults();
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /__stats`: counters and records, never a token value.
async fn stats(Extract(state): Extract<Arc<State>>) -> Response {
    let target = |t: Target| {
        json!({
            "calls": state.calls(t),
            "exchanges": state.exchanges(t),
            "pending_faults": state.pending_faults(t),
        })
    };
    Json(json!({
        "sts": target(Target::Sts),
        "iam": target(Target::Iam),
        "issued_tokens": state.issued_tokens().len(),
        "id_tokens": state.id_tokens_issued(),
        "seen_principals": state.seen_principals(),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionChange {
    audience: String,
    condition: Condition,
}

/// `POST /__condition` with `{"audience":…, "condition":…}`.
async fn change_condition(Extract(state): Extract<Arc<State>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ConditionChange>(&body) {
        Ok(change) => {
            if ProviderName::parse(&change.audience).is_none() {
                return bad_request("audience is not a provider name".to_owned());
            }
            state.update_config(|c| set_condition(c, &change.audience, change.condition));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_request(format!("not a condition change: {e}")),
    }
}

/// `PUT /__bindings` with a JSON list of bindings.
async fn replace_bindings(Extract(state): Extract<Arc<State>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<Binding>>(&body) {
        Ok(bindings) => {
            state.update_config(|c| c.bindings = bindings);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_request(format!("not a list of bindings: {e}")),
    }
}

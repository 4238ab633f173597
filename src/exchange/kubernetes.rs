//! The Kubernetes sources: a ServiceAccount token sent straight to Google STS as an OIDC
//! token (`subject_token_type=urn:ietf:params:oauth:token-type:jwt`).
//!
//! - In the cluster, a TokenRequest for a ServiceAccount of the resource's namespace, with the
//!   provider's full resource name (or the spec's audience) as `aud` and a short lifetime.
//! - On a host (`fedcred agent`), a projected token file, read again for every exchange because
//!   the kubelet rotates it.
//!
//! The token is a credential: it travels as [`Sensitive`] and is never logged.

use std::path::Path;

use fedcred_core::error::{ExchangeError, Reason};
use fedcred_core::sensitive::Sensitive;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;

/// Largest token file read: ServiceAccount tokens are about a kilobyte.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// A fresh token of `namespace/name` for `audience`, valid `expiration_seconds`.
pub async fn service_account_token(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    audience: &str,
    expiration_seconds: i64,
) -> Result<Sensitive, ExchangeError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(kube.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_owned()],
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let issued = match accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
    {
        Ok(issued) => issued,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Err(ExchangeError::new(
                Reason::ServiceAccountNotFound,
                format!(
                    "ServiceAccount {namespace}/{name} does not exist; create it or fix kubernetes.serviceAccount.name"
                ),
            ));
        }
        Err(e) => return Err(token_request_failed(namespace, name, &e)),
    };
    let token = issued.status.map(|s| s.token).unwrap_or_default();
    if token.is_empty() {
        return Err(ExchangeError::new(
            Reason::TokenRequestFailed,
            format!("TokenRequest for ServiceAccount {namespace}/{name} answered without a token"),
        ));
    }
    Ok(Sensitive::new(token))
}

/// A TokenRequest for `namespace/name` that failed with `e`: the API server's own words when
/// it answered, without the client's debug dump of its Status.
pub(crate) fn token_request_failed(namespace: &str, name: &str, e: &kube::Error) -> ExchangeError {
    let what = match e {
        kube::Error::Api(status) => format!(
            "the API server refused the TokenRequest for ServiceAccount {namespace}/{name}: HTTP {} {}: {}",
            status.code, status.reason, status.message
        ),
        other => format!("TokenRequest for ServiceAccount {namespace}/{name} failed: {other}"),
    };
    ExchangeError::new(
        Reason::TokenRequestFailed,
        format!("{what}; the controller needs `create` on serviceaccounts/token"),
    )
}

/// The token in the projected token file at `path`, read now.
pub async fn token_file(path: &str) -> Result<Sensitive, ExchangeError> {
    let unreadable = |what: String| {
        ExchangeError::new(
            Reason::TokenFileUnreadable,
            format!(
                "kubernetes.tokenPath {path}: {what}; mount a projected ServiceAccount token there (audience: the provider's full resource name)"
            ),
        )
    };
    let meta = tokio::fs::metadata(Path::new(path))
        .await
        .map_err(|e| unreadable(format!("cannot be read ({e})")))?;
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        return Err(unreadable(format!(
            "is {} bytes, larger than any ServiceAccount token",
            meta.len()
        )));
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| unreadable(format!("cannot be read ({e})")))?;
    let token = text.trim();
    // A JWT: three base64url parts. Anything else would only be refused by Google, with a
    // message that does not name the file.
    let parts: Vec<&str> = token.split('.').collect();
    let base64url = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if parts.len() != 3 || !parts.iter().all(|p| base64url(p)) {
        return Err(unreadable("does not hold a JWT".to_owned()));
    }
    Ok(Sensitive::new(token))
}

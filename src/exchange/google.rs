//! The HTTP client of Google STS and IAM Credentials, over HTTPS with rustls.
//!
//! Transient failures (5xx, 429, timeouts, connection errors) are retried per
//! [`RetryPolicy`], honouring `Retry-After`; definite answers are handed to the readers in
//! [`fedcred_core::google`], which decide what they mean.

use std::time::Duration;

use fedcred_core::error::{ExchangeError, Reason};
use fedcred_core::google::{
    AccessToken, JWT_TOKEN_TYPE, RetryPolicy, classify_iam, classify_jwt_sts, classify_sts,
    generate_access_token_body, generate_access_token_url, read_generated_token, read_sts_token,
    snippet, sts_form,
};
use fedcred_core::metadata::identity::{self, IdToken, IdentityRequest};
use fedcred_core::sensitive::Sensitive;
use jiff::Timestamp;

/// Client of Google STS and IAM Credentials.
#[derive(Clone)]
pub struct GoogleClient {
    http: reqwest::Client,
    policy: RetryPolicy,
}

/// What one HTTP attempt came to.
enum Attempt {
    Done(reqwest::StatusCode, String),
    Transient(String, Option<Duration>),
    TimedOut,
}

/// Why [`GoogleClient::send`] gave up.
enum GaveUp {
    /// The last attempt got no answer in time.
    TimedOut,
    /// The last attempt failed otherwise; what happened.
    Failed(String),
}

impl GoogleClient {
    pub fn new(policy: RetryPolicy) -> Result<Self, ExchangeError> {
        let http = reqwest::Client::builder()
            .timeout(policy.request_timeout)
            .connect_timeout(policy.request_timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("fedcred/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry a subject token or a federated token to a host nobody
            // allowed; an endpoint that redirects is answered as the failure it is.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                ExchangeError::new(
                    Reason::Upstream,
                    format!("building the HTTP client failed: {e}"),
                )
            })?;
        Ok(GoogleClient { http, policy })
    }

    /// Sends the request built by `build` until it gets a definite answer, retrying transient
    /// failures per the policy. Returns the final status and body.
    async fn send(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, String), ExchangeError> {
        let mut retry = 0;
        loop {
            let attempt = match build().send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    match resp.text().await {
                        Ok(body) if status.is_server_error() || status.as_u16() == 429 => {
                            Attempt::Transient(
                                format!("HTTP {status}: {}", snippet(&body)),
                                retry_after,
                            )
                        }
                        Ok(body) => Attempt::Done(status, body),
                        Err(e) if e.is_timeout() => Attempt::TimedOut,
                        Err(e) => {
                            Attempt::Transient(format!("reading the answer failed: {e}"), None)
                        }
                    }
                }
                Err(e) if e.is_timeout() => Attempt::TimedOut,
                Err(e) => Attempt::Transient(format!("request failed: {}", without_url(&e)), None),
            };
            let (last, retry_after) = match attempt {
                Attempt::Done(status, body) => return Ok((status, body)),
                Attempt::Transient(msg, after) => (GaveUp::Failed(msg), after),
                Attempt::TimedOut => (GaveUp::TimedOut, None),
            };
            if let Some(wait) = self.policy.delay(retry, retry_after, rand::random::<f64>()) {
                tracing::debug!(what, retry, wait_ms = wait.as_millis() as u64, "retrying");
                tokio::time::sleep(wait).await;
                retry += 1;
                continue;
            }
            let attempts = retry + 1;
            let advice = match retry_after {
                Some(after) if after > self.policy.max_delay => {
                    format!(
                        "; Google asked to wait {} s before retrying",
                        after.as_secs()
                    )
                }
                _ => String::new(),
            };
            return Err(match last {
                GaveUp::TimedOut => ExchangeError::new(
                    Reason::Timeout,
                    format!(
                        "{what} failed after {attempts} attempts: no answer within {:?}{advice}",
                        self.policy.request_timeout
                    ),
                ),
                GaveUp::Failed(last) => ExchangeError::new(
                    Reason::Upstream,
                    format!("{what} failed after {attempts} attempts: {last}{advice}"),
                ),
            });
        }
    }

    /// Exchanges a subject token of `subject_token_type` for a federated access token.
    pub async fn sts_exchange(
        &self,
        sts_url: &str,
        audience: &str,
        scopes: &[String],
        subject_token_type: &str,
        subject_token: &Sensitive,
    ) -> Result<AccessToken, ExchangeError> {
        let scope = scopes.join(" ");
        let form = sts_form(audience, &scope, subject_token_type, subject_token);
        let now = Timestamp::now();
        let (status, body) = self
            .send("Google STS token exchange", || {
                self.http
                    .post(sts_url)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form.expose().to_owned())
            })
            .await?;
        if !status.is_success() {
            return Err(if subject_token_type == JWT_TOKEN_TYPE {
                classify_jwt_sts(status.as_u16(), &body)
            } else {
                classify_sts(status.as_u16(), &body)
            });
        }
        read_sts_token(&body, now)
    }

    /// Exchanges a federated token for an access token of `service_account`.
    pub async fn impersonate(
        &self,
        iam_base_url: &str,
        federated: &Sensitive,
        service_account: &str,
        scopes: &[String],
        delegates: &[String],
        lifetime: Duration,
    ) -> Result<AccessToken, ExchangeError> {
        let url = generate_access_token_url(iam_base_url, service_account);
        let body = generate_access_token_body(scopes, delegates, lifetime);
        let (status, text) = self
            .send("IAM Credentials generateAccessToken", || {
                self.http
                    .post(&url)
                    .bearer_auth(federated.expose())
                    .json(&body)
            })
            .await?;
        if !status.is_success() {
            return Err(classify_iam(status.as_u16(), &text, service_account));
        }
        read_generated_token(&text, Timestamp::now())
    }
}

impl GoogleClient {
    /// Mints an ID token of `service_account` for `request`'s audience through IAM Credentials
    /// `generateIdToken`, authenticated with that account's own `access_token`.
    pub async fn generate_id_token(
        &self,
        iam_base_url: &str,
        access_token: &Sensitive,
        service_account: &str,
        request: &IdentityRequest,
    ) -> Result<IdToken, ExchangeError> {
        let url = identity::generate_id_token_url(iam_base_url, service_account);
        let body = identity::generate_id_token_body(request);
        let (status, text) = self
            .send("IAM Credentials generateIdToken", || {
                self.http
                    .post(&url)
                    .bearer_auth(access_token.expose())
                    .json(&body)
            })
            .await?;
        if !status.is_success() {
            return Err(identity::classify(status.as_u16(), &text, service_account));
        }
        identity::read_id_token(&text, Timestamp::now())
    }
}

/// reqwest errors print the URL; keep only the cause.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), "<endpoint>");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

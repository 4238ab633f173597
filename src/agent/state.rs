//! The agent's token, in memory: the last token issued and the last failure, and the metadata
//! view served from them. A token is served only while it has [`EXPIRY_MARGIN`] left; otherwise
//! the answer is a 503 whose body names the reason and the AWS principal, so the log of the
//! application that asked says why.

use std::sync::{Arc, RwLock};

use axum::http::StatusCode;
use fedcred_core::error::ExchangeError;
use fedcred_core::exchange::Issued;
use fedcred_core::metadata::protocol::{Reply, TEXT};
use fedcred_core::metadata::view::{EXPIRY_MARGIN, Expiry, SecretView};
use jiff::Timestamp;

use crate::metadata::TokenSource;

/// The last token and the last failure of one FederatedCredential.
pub struct AgentState {
    label: String,
    service_account: Option<String>,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    issued: Option<Issued>,
    /// The failure since the last success, if any.
    failure: Option<ExchangeError>,
}

impl AgentState {
    pub fn new(label: String, service_account: Option<String>) -> Self {
        AgentState {
            label,
            service_account,
            inner: RwLock::new(Inner::default()),
        }
    }

    pub fn issued(&self, issued: Issued) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.issued = Some(issued);
        inner.failure = None;
    }

    /// Records a failure; the token held so far stays served until it expires.
    pub fn failed(&self, error: ExchangeError) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .failure = Some(error);
    }

    pub fn expires_at(&self) -> Option<Timestamp> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .issued
            .as_ref()
            .map(|i| i.expires_at)
    }

    /// The view to serve at `now`, or the 503 that says why there is none.
    pub fn view(&self, now: Timestamp) -> Result<SecretView, Reply> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        match &inner.issued {
            Some(issued) if issued.expires_at.duration_since(now) >= EXPIRY_MARGIN => {
                Ok(view_of(issued))
            }
            issued => Err(unavailable(
                &self.label,
                self.service_account.as_deref(),
                issued.as_ref().map(|i| i.expires_at),
                inner.failure.as_ref(),
            )),
        }
    }
}

/// What the metadata protocol serves from an issued token.
fn view_of(issued: &Issued) -> SecretView {
    SecretView {
        access_token: Some(issued.access_token.clone()),
        expiry: Expiry::At(issued.expires_at),
        token_type: "Bearer".to_owned(),
        service_account: issued.service_account.clone(),
        project_id: issued.project_id.clone(),
        numeric_project_id: None,
        scopes: Some(issued.scopes.clone()),
        universe_domain: None,
    }
}

/// The 503 body: which credential, why there is no token, and who Google was shown.
fn unavailable(
    label: &str,
    service_account: Option<&str>,
    expired_at: Option<Timestamp>,
    failure: Option<&ExchangeError>,
) -> Reply {
    let account = service_account.unwrap_or("a federated token");
    let mut body = match expired_at {
        None => format!("fedcred agent: no token yet for FederatedCredential {label} ({account})"),
        Some(at) => format!(
            "fedcred agent: the token for FederatedCredential {label} ({account}) expired at {at} \
             (or expires within {}s) and has not been refreshed",
            EXPIRY_MARGIN.as_secs()
        ),
    };
    match failure {
        Some(error) => {
            body.push_str(&format!(": {} ({})", error.message, error.reason));
            if let Some(principal) = &error.principal {
                body.push_str(&format!("; AWS principal {principal}"));
            }
        }
        None if expired_at.is_none() => body.push_str(": the first exchange is in progress"),
        None => {}
    }
    body.push('\n');
    Reply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        content_type: TEXT,
        body,
    }
}

/// The state as the metadata server's token source, and where its ID tokens are minted (the
/// FederatedCredential's IAM Credentials endpoint).
pub struct Served(pub Arc<AgentState>, pub String);

impl TokenSource for Served {
    async fn view(&self) -> Result<SecretView, Reply> {
        self.0.view(Timestamp::now())
    }

    fn iam_credentials_url(&self) -> &str {
        &self.1
    }
}

#[cfg(test)]
mod tests {
    use fedcred_core::error::Reason;
    use fedcred_core::sensitive::Sensitive;

    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn issued(expires_at: &str) -> Issued {
        Issued {
            access_token: Sensitive::new("ya29.agent".to_owned()),
            expires_at: t(expires_at),
            issued_at: t("2026-01-01T00:00:00Z"),
            principal_arn: Some("arn:aws:sts::1:assumed-role/r/fedcred.ns".to_owned()),
            subject: None,
            service_account: Some("sa@p.iam.gserviceaccount.com".to_owned()),
            db_user: None,
            project_id: Some("p".to_owned()),
            scopes: vec!["https://www.googleapis.com/auth/cloud-platform".to_owned()],
        }
    }

    fn state() -> AgentState {
        AgentState::new(
            "ns/bq".to_owned(),
            Some("sa@p.iam.gserviceaccount.com".to_owned()),
        )
    }

    #[test]
    fn before_the_first_exchange_the_answer_says_it_is_in_progress() {
        let reply = state().view(t("2026-01-01T00:00:00Z")).unwrap_err();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            reply.body,
            "fedcred agent: no token yet for FederatedCredential ns/bq \
             (sa@p.iam.gserviceaccount.com): the first exchange is in progress\n"
        );
    }

    #[test]
    fn a_token_is_served_until_the_margin_before_expiry_and_never_after() {
        let s = state();
        s.issued(issued("2026-01-01T01:00:00Z"));
        let view = s.view(t("2026-01-01T00:59:49Z")).unwrap();
        assert_eq!(
            view.token(t("2026-01-01T00:59:49Z")).unwrap().expires_in,
            11
        );
        let reply = s.view(t("2026-01-01T00:59:51Z")).unwrap_err();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            reply.body.contains("expired at 2026-01-01T01:00:00Z"),
            "{}",
            reply.body
        );
    }

    #[test]
    fn a_failure_keeps_the_good_token_and_names_reason_and_principal_once_it_lapses() {
        let s = state();
        s.issued(issued("2026-01-01T01:00:00Z"));
        s.failed(
            ExchangeError::new(Reason::Upstream, "Google STS answered 503")
                .presented_by(Some("arn:aws:sts::1:assumed-role/r/fedcred.ns")),
        );
        assert!(s.view(t("2026-01-01T00:30:00Z")).is_ok());
        let body = s.view(t("2026-01-01T01:00:00Z")).unwrap_err().body;
        assert!(
            body.ends_with(
                "has not been refreshed: Google STS answered 503 (Upstream); AWS principal \
                 arn:aws:sts::1:assumed-role/r/fedcred.ns\n"
            ),
            "{body}"
        );
    }
}

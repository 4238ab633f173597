//! Bearer tokens, checked the way a Google service does: by asking the token issuer (the
//! Google doubles' `/tokeninfo`) what a token stands for. Only live tokens the doubles issued
//! are known there; expired and foreign ones are not.
//!
//! The token value never leaves this module except in the request to the issuer, and errors
//! never carry it (nor the URL that does).

use std::time::Duration;

use serde::Deserialize;

/// What the issuer says about a live token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFacts {
    /// The service account, for impersonated tokens.
    pub email: Option<String>,
    pub scopes: Vec<String>,
    pub expires_in: Duration,
}

impl TokenFacts {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Why a token could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Unknown to the issuer, or expired.
    Invalid,
    /// The issuer could not be asked.
    Unavailable(String),
}

#[derive(Deserialize)]
struct TokenInfo {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    expires_in: u64,
}

/// Asks `tokeninfo_url` about tokens.
#[derive(Clone)]
pub struct Verifier {
    http: reqwest::Client,
    tokeninfo_url: String,
}

impl Verifier {
    pub fn new(tokeninfo_url: &str) -> Result<Self, reqwest::Error> {
        Ok(Verifier {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()?,
            tokeninfo_url: tokeninfo_url.to_owned(),
        })
    }

    pub async fn check(&self, token: &str) -> Result<TokenFacts, TokenError> {
        let unavailable = |e: reqwest::Error| TokenError::Unavailable(e.without_url().to_string());
        let mut url = url::Url::parse(&self.tokeninfo_url)
            .map_err(|e| TokenError::Unavailable(format!("tokeninfo URL: {e}")))?;
        url.query_pairs_mut().append_pair("access_token", token);
        let response = self.http.get(url).send().await.map_err(unavailable)?;
        let status = response.status();
        if status.is_client_error() {
            return Err(TokenError::Invalid);
        }
        if !status.is_success() {
            return Err(TokenError::Unavailable(format!(
                "tokeninfo answered {status}"
            )));
        }
        let info: TokenInfo = response.json().await.map_err(unavailable)?;
        if info.expires_in == 0 {
            return Err(TokenError::Invalid);
        }
        Ok(TokenFacts {
            email: info.email,
            scopes: info.scope.split_whitespace().map(str::to_owned).collect(),
            expires_in: Duration::from_secs(info.expires_in),
        })
    }
}

/// The AlloyDB IAM database user of a service account: its email without
/// `.gserviceaccount.com`.
pub fn iam_db_user(email: &str) -> &str {
    email.strip_suffix(".gserviceaccount.com").unwrap_or(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iam_users_drop_the_service_account_domain() {
        assert_eq!(
            iam_db_user("app@proj.iam.gserviceaccount.com"),
            "app@proj.iam"
        );
        assert_eq!(iam_db_user("someone@example.com"), "someone@example.com");
    }
}

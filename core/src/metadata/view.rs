//! What one reading of the mounted Secret says, as plain data, and whether its token may be
//! handed out. No I/O: the emulator reads the files, this module interprets them.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use crate::sensitive::Sensitive;

/// The Secret keys the emulator reads (DESIGN.md §2), the `scopes` key the controller adds
/// (whitespace-separated), and optional ones honoured when present: `numeric_project_id` and
/// `universe_domain`.
pub const KEYS: &[&str] = &[
    "access_token",
    "expiry",
    "token_type",
    "service_account",
    "project_id",
    "numeric_project_id",
    "scopes",
    "universe_domain",
];

/// The email answered when the Secret names no service account (a federated token).
///
/// Google's libraries only read the email to label the credential and, for real service
/// accounts, to look up regional access boundaries or sign blobs through IAM. A value that is
/// not shaped like `…@….gserviceaccount.com` makes google-auth skip that lookup
/// (`_metadata._is_service_account_email`), and `default` is the alias every client already
/// uses, so it never names an identity that does not exist.
pub const FEDERATED_EMAIL: &str = "default";

/// The scope answered when the Secret has no `scopes` key: what a FederatedCredential asks
/// for unless told otherwise. Clients only use it as a hint; the token has what it has.
pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The universe of Google APIs when the Secret names none.
pub const DEFAULT_UNIVERSE_DOMAIN: &str = "googleapis.com";

/// A token this close to its expiry is refused rather than served: it would likely expire in
/// flight, and Go's oauth2 (10 s expiry delta) and google-auth (3 min 45 s) would treat it as
/// expired at once. The controller refreshes long before this.
pub const EXPIRY_MARGIN: SignedDuration = SignedDuration::from_secs(10);

/// The `expiry` key, interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expiry {
    Missing,
    /// Not RFC 3339; holds the text for the error message.
    Invalid(String),
    At(Timestamp),
}

/// One consistent reading of the Secret's keys. Values are trimmed; empty values count as
/// absent (a file written with a trailing newline still works).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretView {
    pub access_token: Option<Sensitive>,
    pub expiry: Expiry,
    pub token_type: String,
    pub service_account: Option<String>,
    pub project_id: Option<String>,
    pub numeric_project_id: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub universe_domain: Option<String>,
}

impl Default for SecretView {
    fn default() -> Self {
        SecretView::from_files(&BTreeMap::new())
    }
}

/// A token that may be served: it exists and lives at least [`EXPIRY_MARGIN`] longer.
#[derive(Debug, PartialEq, Eq)]
pub struct ServableToken<'a> {
    pub access_token: &'a Sensitive,
    pub expires_in: i64,
    pub token_type: &'a str,
}

/// Why no token is served; each names what the operator should look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    NoToken,
    NoExpiry,
    InvalidExpiry(String),
    Expired(Timestamp),
}

impl Unavailable {
    /// Short stable label for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Unavailable::NoToken => "NoToken",
            Unavailable::NoExpiry => "NoExpiry",
            Unavailable::InvalidExpiry(_) => "InvalidExpiry",
            Unavailable::Expired(_) => "Expired",
        }
    }

    /// The text body of the 503 answer.
    pub fn message(&self) -> String {
        const LOOK: &str =
            "see the FederatedCredential's Ready condition and the controller's events";
        match self {
            Unavailable::NoToken => {
                format!("fedcred: the mounted Secret holds no access_token yet; {LOOK}\n")
            }
            Unavailable::NoExpiry => format!(
                "fedcred: the mounted Secret has an access_token but no expiry, so it cannot be \
                 served safely; {LOOK}\n"
            ),
            Unavailable::InvalidExpiry(text) => format!(
                "fedcred: the mounted Secret's expiry {text:?} is not an RFC 3339 time; {LOOK}\n"
            ),
            Unavailable::Expired(at) => format!(
                "fedcred: the access token expired at {at} (or expires within {}s) and the \
                 controller has not refreshed the Secret; {LOOK}\n",
                EXPIRY_MARGIN.as_secs()
            ),
        }
    }
}

impl SecretView {
    /// Interprets the files of one reading, keyed by Secret key.
    pub fn from_files(files: &BTreeMap<String, String>) -> SecretView {
        let value = |key: &str| {
            files
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let expiry = match value("expiry") {
            None => Expiry::Missing,
            Some(text) => match text.parse::<Timestamp>() {
                Ok(at) => Expiry::At(at),
                Err(_) => Expiry::Invalid(text),
            },
        };
        SecretView {
            access_token: value("access_token").map(Sensitive::new),
            expiry,
            token_type: value("token_type").unwrap_or_else(|| "Bearer".to_owned()),
            service_account: value("service_account"),
            project_id: value("project_id"),
            numeric_project_id: value("numeric_project_id"),
            scopes: value("scopes").map(|s| s.split_whitespace().map(str::to_owned).collect()),
            universe_domain: value("universe_domain"),
        }
    }

    /// The token to serve at `now`, or why there is none.
    pub fn token(&self, now: Timestamp) -> Result<ServableToken<'_>, Unavailable> {
        let access_token = self.access_token.as_ref().ok_or(Unavailable::NoToken)?;
        let expiry = match &self.expiry {
            Expiry::Missing => return Err(Unavailable::NoExpiry),
            Expiry::Invalid(text) => return Err(Unavailable::InvalidExpiry(text.clone())),
            Expiry::At(at) => *at,
        };
        let left = expires_in(expiry, now);
        if left < EXPIRY_MARGIN.as_secs() {
            return Err(Unavailable::Expired(expiry));
        }
        Ok(ServableToken {
            access_token,
            expires_in: left,
            token_type: &self.token_type,
        })
    }

    /// The service account's email, or [`FEDERATED_EMAIL`] for a federated token.
    pub fn email(&self) -> &str {
        self.service_account.as_deref().unwrap_or(FEDERATED_EMAIL)
    }

    /// Whether `name` (a path segment under `service-accounts/`) names the one account here.
    pub fn is_account(&self, name: &str) -> bool {
        name == "default" || self.service_account.as_deref() == Some(name)
    }

    pub fn scopes(&self) -> Vec<String> {
        match &self.scopes {
            Some(scopes) if !scopes.is_empty() => scopes.clone(),
            _ => vec![DEFAULT_SCOPE.to_owned()],
        }
    }

    pub fn universe_domain(&self) -> &str {
        self.universe_domain
            .as_deref()
            .unwrap_or(DEFAULT_UNIVERSE_DOMAIN)
    }
}

/// Whole seconds from `now` until `expiry`, rounded down; negative once expired.
pub fn expires_in(expiry: Timestamp, now: Timestamp) -> i64 {
    let left = expiry.duration_since(now);
    let secs = left.as_secs();
    // as_secs truncates toward zero; round down so 0.5 s overdue counts as -1, not 0.
    if left.subsec_nanos() < 0 {
        secs - 1
    } else {
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn impersonated() -> SecretView {
        SecretView::from_files(&files(&[
            ("access_token", "ya29.impersonated\n"),
            ("expiry", "2026-11-25T16:04:05Z"),
            ("token_type", "Bearer"),
            (
                "service_account",
                "orders-api@acme-shop.iam.gserviceaccount.com",
            ),
            ("db_user", "orders-api@acme-shop.iam"),
            ("project_id", "acme-shop"),
        ]))
    }

    #[test]
    fn reads_the_keys_the_controller_writes() {
        let view = impersonated();
        assert_eq!(
            view.access_token.as_ref().unwrap().expose(),
            "ya29.impersonated"
        );
        assert_eq!(view.expiry, Expiry::At(at("2026-11-25T16:04:05Z")));
        assert_eq!(view.email(), "orders-api@acme-shop.iam.gserviceaccount.com");
        assert_eq!(view.project_id.as_deref(), Some("acme-shop"));
        assert_eq!(view.numeric_project_id, None);
        assert_eq!(view.scopes(), vec![DEFAULT_SCOPE]);
        assert_eq!(view.universe_domain(), "googleapis.com");
    }

    #[test]
    fn a_federated_token_answers_the_default_alias_as_its_email() {
        let view = SecretView::from_files(&files(&[("access_token", "ya29.fed")]));
        assert_eq!(view.email(), "default");
        assert!(view.is_account("default"));
        assert!(!view.is_account("someone@else.iam.gserviceaccount.com"));
        assert!(impersonated().is_account("orders-api@acme-shop.iam.gserviceaccount.com"));
    }

    #[test]
    fn optional_keys_are_honoured_when_present() {
        let view = SecretView::from_files(&files(&[
            (
                "scopes",
                "https://www.googleapis.com/auth/cloud-platform\n https://www.googleapis.com/auth/alloydb.login",
            ),
            ("numeric_project_id", "123456789012"),
            ("universe_domain", "example-universe.test"),
            ("token_type", ""),
        ]));
        assert_eq!(view.scopes().len(), 2);
        assert_eq!(view.numeric_project_id.as_deref(), Some("123456789012"));
        assert_eq!(view.universe_domain(), "example-universe.test");
        assert_eq!(view.token_type, "Bearer");
    }

    #[test]
    fn expires_in_counts_whole_seconds_left() {
        let expiry = at("2026-11-25T16:04:05Z");
        assert_eq!(expires_in(expiry, at("2026-11-25T15:04:05Z")), 3600);
        assert_eq!(expires_in(expiry, at("2026-11-25T15:04:05.9Z")), 3599);
        assert_eq!(expires_in(expiry, expiry), 0);
        assert_eq!(expires_in(expiry, at("2026-11-25T16:04:05.5Z")), -1);
    }

    #[test]
    fn a_live_token_is_served_with_its_seconds_left() {
        let view = impersonated();
        let token = view.token(at("2026-11-25T15:04:05.250Z")).unwrap();
        assert_eq!(token.access_token.expose(), "ya29.impersonated");
        assert_eq!(token.expires_in, 3599);
        assert_eq!(token.token_type, "Bearer");
    }

    #[test]
    fn an_expired_or_nearly_expired_token_is_never_served() {
        let view = impersonated();
        let expiry = at("2026-11-25T16:04:05Z");
        assert_eq!(
            view.token(at("2026-11-25T16:04:06Z")),
            Err(Unavailable::Expired(expiry))
        );
        assert_eq!(
            view.token(at("2026-11-25T16:03:56Z")),
            Err(Unavailable::Expired(expiry))
        );
        assert_eq!(
            view.token(at("2026-11-25T16:03:55Z")).unwrap().expires_in,
            10
        );
    }

    #[test]
    fn a_token_without_a_usable_expiry_is_not_served() {
        let none = SecretView::default();
        assert_eq!(none.token(Timestamp::UNIX_EPOCH), Err(Unavailable::NoToken));
        let no_expiry = SecretView::from_files(&files(&[("access_token", "ya29.x")]));
        assert_eq!(
            no_expiry.token(Timestamp::UNIX_EPOCH),
            Err(Unavailable::NoExpiry)
        );
        let bad = SecretView::from_files(&files(&[
            ("access_token", "ya29.x"),
            ("expiry", "tomorrow"),
        ]));
        let err = bad.token(Timestamp::UNIX_EPOCH).unwrap_err();
        assert_eq!(err, Unavailable::InvalidExpiry("tomorrow".into()));
        assert!(
            err.message()
                .contains("\"tomorrow\" is not an RFC 3339 time")
        );
    }

    #[test]
    fn messages_never_carry_the_token() {
        let view = impersonated();
        let err = view.token(at("2030-01-01T00:00:00Z")).unwrap_err();
        assert!(!err.message().contains("ya29"));
        assert!(!format!("{view:?}").contains("ya29"));
    }
}

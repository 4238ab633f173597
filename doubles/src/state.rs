//! The state of one running set of doubles: the configuration (providers and bindings can change
//! at runtime), the tokens issued and what each stands for, the fault queues, call counters and
//! the records tests inspect (every token value issued, every AWS principal seen).
//!
//! No HTTP here; the endpoints ([`crate::sts`], [`crate::iam`], [`crate::server`]) read and
//! update it. Locks are never held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rand::distr::{Alphanumeric, SampleString};

use crate::config::Config;
use crate::faults::{Fault, Faults, Target};
use crate::keys::KeySource;
use crate::sync::lock;

/// Prefix of every access token the doubles issue.
pub const TOKEN_PREFIX: &str = "ya29.fake-";

/// Who a token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A federated identity from Google STS.
    Federated {
        /// `google.subject`: the caller's ARN.
        subject: String,
        /// The provider's full resource name the token was exchanged for.
        audience: String,
        /// Mapped attributes (`google.subject`, `attribute.aws_role`, `attribute.aws_account`).
        attributes: BTreeMap<String, String>,
    },
    /// A service account, from IAM Credentials.
    ServiceAccount { email: String },
}

/// What an issued access token stands for. Holds no token value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub principal: Principal,
    pub scopes: Vec<String>,
    /// Whole seconds.
    pub expires_at: SystemTime,
}

impl TokenInfo {
    /// The service account email, for impersonated tokens.
    pub fn email(&self) -> Option<&str> {
        match &self.principal {
            Principal::ServiceAccount { email } => Some(email),
            Principal::Federated { .. } => None,
        }
    }

    /// The federated subject (ARN) or the service account email.
    pub fn subject(&self) -> &str {
        match &self.principal {
            Principal::Federated { subject, .. } => subject,
            Principal::ServiceAccount { email } => email,
        }
    }

    /// Time left, zero once expired.
    pub fn expires_in(&self, now: SystemTime) -> Duration {
        self.expires_at.duration_since(now).unwrap_or_default()
    }
}

/// One call to the API double: who the bearer token stood for (`None`: unknown or expired)
/// and whether it was let in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiCall {
    pub path: String,
    pub principal: Option<String>,
    pub allowed: bool,
}

/// Appends `token` to the file named by `FEDCRED_ISSUED_TOKENS`, when set: a test run ends with
/// a scan of everything it left behind for every value listed there (`hack/secrecy-scan.sh`).
/// One `write` of one line to a file opened for appending, so concurrent doubles in other test
/// processes never interleave within a line.
fn record_issued(token: &str) {
    use std::io::Write as _;
    let Some(path) = std::env::var_os("FEDCRED_ISSUED_TOKENS") else {
        return;
    };
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(format!("{token}\n").as_bytes());
    }
}

/// Now, truncated to whole seconds (Google's expiry times have no fractions).
pub(crate) fn now() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[derive(Default)]
struct Counter {
    calls: AtomicU64,
    exchanges: AtomicU64,
}

pub(crate) struct State {
    config: Mutex<Config>,
    pub signer: crate::idtoken::Signer,
    id_tokens: AtomicU64,
    api_calls: Mutex<Vec<ApiCall>>,
    pub keys: KeySource,
    pub http: reqwest::Client,
    tokens: Mutex<HashMap<String, TokenInfo>>,
    issued: Mutex<Vec<String>>,
    /// Credentials received (see [`State::record_received_credential`]).
    received: Mutex<Vec<String>>,
    principals: Mutex<Vec<String>>,
    faults: Mutex<Faults>,
    sts: Counter,
    iam: Counter,
}

impl State {
    pub fn new(config: Config, http: reqwest::Client) -> State {
        State {
            keys: KeySource::new(
                &config.static_keys,
                config.moto_url.as_deref(),
                http.clone(),
            ),
            config: Mutex::new(config),
            signer: crate::idtoken::Signer::generate().expect("an RSA key can be generated"),
            id_tokens: AtomicU64::new(0),
            api_calls: Mutex::default(),
            http,
            tokens: Mutex::default(),
            issued: Mutex::default(),
            received: Mutex::default(),
            principals: Mutex::default(),
            faults: Mutex::default(),
            sts: Counter::default(),
            iam: Counter::default(),
        }
    }

    /// A snapshot of the configuration.
    pub fn config(&self) -> Config {
        lock(&self.config).clone()
    }

    /// Changes the configuration in place.
    pub fn update_config<R>(&self, change: impl FnOnce(&mut Config) -> R) -> R {
        change(&mut lock(&self.config))
    }

    /// Issues a fresh random token standing for `info`.
    pub fn issue(&self, info: TokenInfo) -> String {
        let token = format!(
            "{TOKEN_PREFIX}{}",
            Alphanumeric.sample_string(&mut rand::rng(), 32)
        );
        lock(&self.issued).push(token.clone());
        lock(&self.tokens).insert(token.clone(), info);
        record_issued(&token);
        token
    }

    /// Lists a credential the doubles received (a ServiceAccount token or an AWS subject token
    /// presented to STS, the session token and secret key of its signature) for the secrecy
    /// scan, as issued tokens are: it must not appear anywhere a run leaves behind. Values
    /// shorter than 16 characters (fixed test keys such as `very-secret`) are no real secret and
    /// would match ordinary words, so they are left out.
    pub fn record_received_credential(&self, value: &str) {
        if value.len() >= 16 && !value.contains('\n') {
            lock(&self.received).push(value.to_owned());
            record_issued(value);
        }
    }

    /// Every credential listed by [`State::record_received_credential`], in order.
    pub fn received_credentials(&self) -> Vec<String> {
        lock(&self.received).clone()
    }

    /// What a live token stands for; `None` for unknown or expired tokens.
    pub fn lookup(&self, token: &str) -> Option<TokenInfo> {
        let info = lock(&self.tokens).get(token).cloned()?;
        (info.expires_at > SystemTime::now()).then_some(info)
    }

    /// Counts an ID token issued and records it for the leak scan.
    pub fn record_id_token(&self, token: &str) {
        self.id_tokens.fetch_add(1, Ordering::Relaxed);
        lock(&self.issued).push(token.to_owned());
        record_issued(token);
    }

    pub fn record_api_call(&self, call: ApiCall) {
        lock(&self.api_calls).push(call);
    }

    pub fn api_calls(&self) -> Vec<ApiCall> {
        lock(&self.api_calls).clone()
    }

    pub fn id_tokens_issued(&self) -> u64 {
        self.id_tokens.load(Ordering::Relaxed)
    }

    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.issued).clone()
    }

    /// Records an AWS principal Google would have seen (first sighting order, no repeats).
    pub fn saw_principal(&self, arn: &str) {
        let mut seen = lock(&self.principals);
        if !seen.iter().any(|s| s == arn) {
            seen.push(arn.to_owned());
        }
    }

    pub fn seen_principals(&self) -> Vec<String> {
        lock(&self.principals).clone()
    }

    pub fn inject(&self, target: Target, fault: Fault) {
        lock(&self.faults).push(target, fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    pub fn pending_faults(&self, target: Target) -> Vec<Fault> {
        lock(&self.faults).pending(target)
    }

    /// Counts a request to `target` and returns the fault it must suffer, if any.
    pub fn arrive(&self, target: Target) -> Option<Fault> {
        self.counter(target).calls.fetch_add(1, Ordering::Relaxed);
        lock(&self.faults).take(target)
    }

    /// Counts a successful exchange at `target`.
    pub fn succeeded(&self, target: Target) {
        self.counter(target)
            .exchanges
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn calls(&self, target: Target) -> u64 {
        self.counter(target).calls.load(Ordering::Relaxed)
    }

    pub fn exchanges(&self, target: Target) -> u64 {
        self.counter(target).exchanges.load(Ordering::Relaxed)
    }

    fn counter(&self, target: Target) -> &Counter {
        match target {
            Target::Sts => &self.sts,
            Target::Iam => &self.iam,
        }
    }
}

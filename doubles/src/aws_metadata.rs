//! Fakes of the AWS metadata endpoints a workload learns its own credentials from, for tests of
//! the controller's own identity:
//!
//! - [`Imds`]: EC2's instance metadata service, IMDSv2 only. `PUT /latest/api/token` with
//!   `X-aws-ec2-metadata-token-ttl-seconds` (1–21600) issues a session token; every read must
//!   carry a live one in `X-aws-ec2-metadata-token`, else 401 — so an IMDSv1-style read fails,
//!   as on an instance with `HttpTokens=required`.
//! - [`ContainerCredentials`]: the credentials endpoint of ECS task roles and EKS Pod Identity,
//!   reached through `AWS_CONTAINER_CREDENTIALS_FULL_URI`. Answers only a request whose
//!   `Authorization` header equals the configured token (401 without one, 403 for another).
//!
//! Both insist on the protocol rather than echo what they receive, and serve credentials moto
//! issued (a [`TemporaryCredentials`]) so the Google STS double can verify what is signed with
//! them. Each listens on `127.0.0.1` and a free port and stops when its handle drops. They record
//! method, path and status of every request ([`Seen`]) and never a header value, a token or a
//! secret, in records or in logs.
//!
//! What the AWS SDK for Rust (aws-config 1.13) asks of them: the IMDS credentials provider reads
//! `iam/security-credentials/` for the role name, then `iam/security-credentials/ROLE` (not the
//! newer `security-credentials-extended/`), and needs the TTL header echoed on the token answer;
//! the region provider reads `placement/region`. The container provider sends `Accept:
//! application/json` and the token verbatim as `Authorization`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use jiff::{SignedDuration, Timestamp};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;
use tokio::sync::oneshot;

use crate::moto::TemporaryCredentials;
use crate::sync::lock;

/// Header of the IMDSv2 token request naming the token's lifetime in seconds; echoed on the answer.
pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// Header carrying the IMDSv2 session token on every read.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// Where IMDSv2 issues session tokens.
pub const TOKEN_PATH: &str = "/latest/api/token";
/// The longest session token IMDS issues: six hours.
pub const MAX_TOKEN_TTL_SECONDS: u64 = 21_600;
/// The path the container credentials fake serves, the one the EKS Pod Identity agent uses.
pub const CONTAINER_CREDENTIALS_PATH: &str = "/v1/credentials";

const CREDENTIALS_LISTING: &str = "/latest/meta-data/iam/security-credentials/";
const AVAILABILITY_ZONE: &str = "/latest/meta-data/placement/availability-zone";
const REGION: &str = "/latest/meta-data/placement/region";

/// One request a fake answered. Holds no header value and no body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub status: u16,
}

impl Seen {
    /// Whether the fake turned the request away for breaking the protocol (400, 401, 403, 405),
    /// as opposed to answering it or not knowing the path (404).
    pub fn refused(&self) -> bool {
        matches!(self.status, 400 | 401 | 403 | 405)
    }
}

/// An EC2 instance as IMDS describes it: its instance profile's role and credentials, and where
/// it runs.
#[derive(Clone, Debug)]
pub struct Instance {
    /// The role of the instance profile, listed under `iam/security-credentials/`.
    pub role_name: String,
    pub credentials: TemporaryCredentials,
    /// `us-east-1a` unless changed; the region is this without its last letter.
    pub availability_zone: String,
    /// How long served credentials claim to stay valid. Real instance credentials last hours.
    pub credentials_lifetime: Duration,
}

impl Instance {
    /// An instance in `us-east-1a` whose instance profile role `role_name` has `credentials`.
    pub fn new(role_name: &str, credentials: TemporaryCredentials) -> Instance {
        Instance {
            role_name: role_name.to_owned(),
            credentials,
            availability_zone: "us-east-1a".to_owned(),
            credentials_lifetime: Duration::from_secs(6 * 3600),
        }
    }

    /// The same instance in `availability_zone`.
    pub fn in_zone(mut self, availability_zone: &str) -> Instance {
        self.availability_zone = availability_zone.to_owned();
        self
    }

    /// The availability zone without its zone letter.
    pub fn region(&self) -> &str {
        let zone = self.availability_zone.as_str();
        zone.strip_suffix(|c: char| c.is_ascii_lowercase())
            .unwrap_or(zone)
    }

    /// The text IMDS answers for `path` to an authorised read, credentials last updated at
    /// `updated`; `None` for a path it does not know (404).
    fn answer(&self, path: &str, updated: Timestamp) -> Option<String> {
        if path == CREDENTIALS_LISTING || path == CREDENTIALS_LISTING.trim_end_matches('/') {
            return Some(self.role_name.clone());
        }
        if let Some(role) = path.strip_prefix(CREDENTIALS_LISTING) {
            return (role == self.role_name).then(|| self.credentials_document(updated));
        }
        match path {
            AVAILABILITY_ZONE => Some(self.availability_zone.clone()),
            REGION => Some(self.region().to_owned()),
            _ => None,
        }
    }

    /// The instance profile credentials document, as IMDS formats it.
    fn credentials_document(&self, updated: Timestamp) -> String {
        let creds = &self.credentials;
        let body = json!({
            "Code": "Success",
            "LastUpdated": updated.to_string(),
            "Type": "AWS-HMAC",
            "AccessKeyId": creds.access_key_id,
            "SecretAccessKey": creds.secret_access_key,
            "Token": creds.session_token,
            "Expiration": later(updated, self.credentials_lifetime).to_string(),
        });
        serde_json::to_string_pretty(&body).unwrap_or_default()
    }
}

/// A running IMDSv2 fake. Dropping it stops the server.
pub struct Imds {
    listening: Listening,
    state: Arc<ImdsState>,
}

struct ImdsState {
    instance: Instance,
    updated: Timestamp,
    /// Live session tokens and when each expires.
    tokens: Mutex<HashMap<String, Instant>>,
    journal: Arc<Journal>,
}

impl Imds {
    /// Starts IMDS for `instance` on `127.0.0.1` and a free port.
    pub async fn start(instance: Instance) -> io::Result<Imds> {
        let state = Arc::new(ImdsState {
            instance,
            updated: whole_seconds(Timestamp::now()),
            tokens: Mutex::default(),
            journal: Arc::default(),
        });
        let app = Router::new()
            // Every other method on the token path falls through to the token-checked reads.
            .route(TOKEN_PATH, put(issue_token).fallback(read_metadata))
            .fallback(read_metadata)
            .with_state(state.clone());
        let listening = Listening::start("imds", app, state.journal.clone()).await?;
        Ok(Imds { listening, state })
    }

    /// `http://127.0.0.1:PORT`, the value for `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        self.listening.base_url()
    }

    /// Same as [`Imds::endpoint`].
    pub fn url(&self) -> String {
        self.endpoint()
    }

    pub fn addr(&self) -> SocketAddr {
        self.listening.addr
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.journal.all()
    }

    /// Requests turned away (see [`Seen::refused`]).
    pub fn refused(&self) -> usize {
        self.requests().iter().filter(|s| s.refused()).count()
    }

    /// Session tokens issued.
    pub fn tokens_issued(&self) -> usize {
        self.count(|s| s.method == "PUT" && s.path == TOKEN_PATH && s.status == 200)
    }

    /// Times the credentials document was served.
    pub fn credentials_served(&self) -> usize {
        let path = format!("{CREDENTIALS_LISTING}{}", self.state.instance.role_name);
        self.count(|s| s.method == "GET" && s.path == path && s.status == 200)
    }

    /// Forgets every session token, as IMDS does when they expire.
    pub fn expire_tokens(&self) {
        lock(&self.state.tokens).clear();
    }

    fn count(&self, matches: impl Fn(&Seen) -> bool) -> usize {
        self.requests().iter().filter(|s| matches(s)).count()
    }
}

impl ImdsState {
    /// Whether `presented` is a session token this IMDS issued and that has not expired.
    fn is_live(&self, presented: Option<&HeaderValue>) -> bool {
        let Some(token) = presented.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let now = Instant::now();
        let mut tokens = lock(&self.tokens);
        tokens.retain(|_, expires| *expires > now);
        tokens.contains_key(token)
    }
}

/// Why a token request is refused (400), from the TTL header.
fn token_ttl(value: Option<&HeaderValue>) -> Result<u64, &'static str> {
    let value = value.ok_or("the X-aws-ec2-metadata-token-ttl-seconds header is required")?;
    let seconds: u64 = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or("X-aws-ec2-metadata-token-ttl-seconds is not a whole number of seconds")?;
    if (1..=MAX_TOKEN_TTL_SECONDS).contains(&seconds) {
        Ok(seconds)
    } else {
        Err("X-aws-ec2-metadata-token-ttl-seconds must be between 1 and 21600")
    }
}

/// `PUT /latest/api/token`.
async fn issue_token(State(imds): State<Arc<ImdsState>>, headers: HeaderMap) -> Response {
    // IMDS refuses tokens to requests that went through a proxy, so a token never leaves the
    // instance.
    if headers.contains_key("x-forwarded-for") {
        return (StatusCode::FORBIDDEN, "forwarded requests get no token").into_response();
    }
    let ttl = match token_ttl(headers.get(TOKEN_TTL_HEADER)) {
        Ok(ttl) => ttl,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let token = Alphanumeric.sample_string(&mut rand::rng(), 56);
    lock(&imds.tokens).insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
            (
                header::HeaderName::from_static(TOKEN_TTL_HEADER),
                HeaderValue::from(ttl),
            ),
        ],
        token,
    )
        .into_response()
}

/// Every read: `GET` with a live session token, else refused.
async fn read_metadata(
    State(imds): State<Arc<ImdsState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if !imds.is_live(headers.get(TOKEN_HEADER)) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match imds.instance.answer(uri.path(), imds.updated) {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain")], text).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A running container credentials fake (ECS task role, EKS Pod Identity). Dropping it stops
/// the server.
pub struct ContainerCredentials {
    listening: Listening,
    state: Arc<ContainerState>,
}

struct ContainerState {
    authorization: HeaderValue,
    credentials: TemporaryCredentials,
    expiration: Timestamp,
    journal: Arc<Journal>,
}

impl ContainerCredentials {
    /// Starts the endpoint on `127.0.0.1` and a free port, serving `credentials` to requests
    /// whose `Authorization` header is `authorization`. Fails with `InvalidInput` when
    /// `authorization` cannot be a header value.
    pub async fn start(
        authorization: &str,
        credentials: TemporaryCredentials,
    ) -> io::Result<ContainerCredentials> {
        let authorization = HeaderValue::from_str(authorization).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the authorization token must be visible ASCII, without line breaks",
            )
        })?;
        let state = Arc::new(ContainerState {
            authorization,
            credentials,
            expiration: later(
                whole_seconds(Timestamp::now()),
                Duration::from_secs(6 * 3600),
            ),
            journal: Arc::default(),
        });
        let app = Router::new()
            .route(CONTAINER_CREDENTIALS_PATH, get(container_credentials))
            .with_state(state.clone());
        let listening =
            Listening::start("container-credentials", app, state.journal.clone()).await?;
        Ok(ContainerCredentials { listening, state })
    }

    /// `http://127.0.0.1:PORT/v1/credentials`, the value for
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` (the SDK allows plain HTTP to loopback).
    pub fn url(&self) -> String {
        format!("{}{CONTAINER_CREDENTIALS_PATH}", self.endpoint())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.listening.base_url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.listening.addr
    }

    /// Every request so far, in order. A 200 means the `Authorization` header matched, 401 that
    /// there was none, 403 that it was another.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.journal.all()
    }

    /// Times credentials were served (to a matching `Authorization` header).
    pub fn served(&self) -> usize {
        self.requests().iter().filter(|s| s.status == 200).count()
    }

    /// Requests turned away (see [`Seen::refused`]).
    pub fn refused(&self) -> usize {
        self.requests().iter().filter(|s| s.refused()).count()
    }
}

impl ContainerState {
    /// The credentials document: what the EKS Pod Identity agent and the ECS agent answer.
    fn document(&self) -> serde_json::Value {
        let creds = &self.credentials;
        let mut body = json!({
            "AccessKeyId": creds.access_key_id,
            "SecretAccessKey": creds.secret_access_key,
            "Token": creds.session_token,
            "Expiration": self.expiration.to_string(),
        });
        if let Some((account, role_arn)) = role_of(&creds.arn) {
            body["AccountId"] = json!(account);
            body["RoleArn"] = json!(role_arn);
        }
        body
    }
}

/// `GET /v1/credentials`.
async fn container_credentials(
    State(state): State<Arc<ContainerState>>,
    headers: HeaderMap,
) -> Response {
    let refusal = |status: StatusCode, code: &str, message: &str| {
        (
            status,
            axum::Json(json!({"code": code, "message": message})),
        )
            .into_response()
    };
    match headers.get(header::AUTHORIZATION) {
        None => refusal(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the request has no Authorization header",
        ),
        Some(given) if *given != state.authorization => refusal(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "the Authorization header is not this container's token",
        ),
        Some(_) => axum::Json(state.document()).into_response(),
    }
}

/// The account and role ARN of an assumed-role session ARN
/// (`arn:PARTITION:sts::ACCOUNT:assumed-role/ROLE/SESSION`).
fn role_of(session_arn: &str) -> Option<(String, String)> {
    let mut parts = session_arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("sts"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let (role, _session) = resource.strip_prefix("assumed-role/")?.rsplit_once('/')?;
    Some((
        account.to_owned(),
        format!("arn:{partition}:iam::{account}:role/{role}"),
    ))
}

fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

fn later(t: Timestamp, by: Duration) -> Timestamp {
    SignedDuration::try_from(by)
        .ok()
        .and_then(|by| t.checked_add(by).ok())
        .unwrap_or(t)
}

/// The requests one fake answered.
#[derive(Default)]
struct Journal(Mutex<Vec<Seen>>);

impl Journal {
    fn all(&self) -> Vec<Seen> {
        lock(&self.0).clone()
    }
}

/// Records method, path and status of every request, whichever handler answered it.
async fn record(State(journal): State<Arc<Journal>>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    lock(&journal.0).push(Seen {
        method,
        path,
        status: response.status().as_u16(),
    });
    response
}

/// A server on a loopback port, stopped when dropped.
struct Listening {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Listening {
    async fn start(
        name: &'static str,
        app: Router,
        journal: Arc<Journal>,
    ) -> io::Result<Listening> {
        let app = app.layer(middleware::from_fn_with_state(journal, record));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                eprintln!("[{name}] server stopped: {e}");
            }
        });
        eprintln!("[{name}] listening on http://{addr}");
        Ok(Listening {
            addr,
            shutdown: Some(shutdown),
        })
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moto_credentials() -> TemporaryCredentials {
        TemporaryCredentials {
            access_key_id: "ASIAFAKEFAKEFAKE0001".to_owned(),
            secret_access_key: "fake/secret".to_owned(),
            session_token: "FQoGZXIvYXdzEXAMPLE".to_owned(),
            arn: "arn:aws:sts::123456789012:assumed-role/fedcred-node/i-0123456789abcdef0"
                .to_owned(),
        }
    }

    fn instance() -> Instance {
        Instance::new("fedcred-node", moto_credentials())
    }

    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a client")
    }

    #[test]
    fn token_ttls_are_whole_seconds_up_to_six_hours() {
        let ttl = |v: &'static str| token_ttl(Some(&HeaderValue::from_static(v)));
        assert_eq!(ttl("21600"), Ok(21_600));
        assert_eq!(ttl("1"), Ok(1));
        for bad in ["0", "21601", "-5", "1.5", "", "six hours"] {
            assert!(ttl(bad).is_err(), "{bad:?}");
        }
        assert!(token_ttl(None).is_err());
    }

    #[test]
    fn the_instance_answers_what_ec2_serves() {
        let updated = Timestamp::from_second(1_700_000_000).expect("a time");
        let i = instance().in_zone("eu-west-1b");
        assert_eq!(i.region(), "eu-west-1");
        assert_eq!(
            i.answer("/latest/meta-data/iam/security-credentials/", updated)
                .as_deref(),
            Some("fedcred-node")
        );
        assert_eq!(
            i.answer("/latest/meta-data/placement/availability-zone", updated)
                .as_deref(),
            Some("eu-west-1b")
        );
        assert_eq!(
            i.answer("/latest/meta-data/placement/region", updated)
                .as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            i.answer("/latest/meta-data/iam/security-credentials/other", updated),
            None
        );
        assert_eq!(i.answer("/latest/meta-data/nothing", updated), None);

        let doc = i
            .answer(
                "/latest/meta-data/iam/security-credentials/fedcred-node",
                updated,
            )
            .expect("credentials");
        let doc: serde_json::Value = serde_json::from_str(&doc).expect("JSON");
        assert_eq!(doc["Code"], "Success");
        assert_eq!(doc["Type"], "AWS-HMAC");
        assert_eq!(doc["AccessKeyId"], "ASIAFAKEFAKEFAKE0001");
        assert_eq!(doc["Token"], "FQoGZXIvYXdzEXAMPLE");
        assert_eq!(doc["LastUpdated"], "2023-11-14T22:13:20Z");
        assert_eq!(doc["Expiration"], "2023-11-15T04:13:20Z");
    }

    #[test]
    fn role_arns_come_from_session_arns() {
        assert_eq!(
            role_of("arn:aws:sts::123456789012:assumed-role/app/session"),
            Some((
                "123456789012".to_owned(),
                "arn:aws:iam::123456789012:role/app".to_owned()
            ))
        );
        assert_eq!(role_of("arn:aws:iam::123456789012:user/alice"), None);
        assert_eq!(role_of("not an arn"), None);
    }

    #[tokio::test]
    async fn imds_reads_need_a_live_session_token() {
        let imds = Imds::start(instance()).await.expect("IMDS starts");
        let base = imds.endpoint();
        let http = http();
        let listing = format!("{base}/latest/meta-data/iam/security-credentials/");

        // IMDSv1: no token, no answer.
        let v1 = http.get(&listing).send().await.expect("answers");
        assert_eq!(v1.status(), 401);
        // A token request needs a TTL in range.
        let no_ttl = http
            .put(format!("{base}{TOKEN_PATH}"))
            .send()
            .await
            .expect("answers");
        assert_eq!(no_ttl.status(), 400);
        let proxied = http
            .put(format!("{base}{TOKEN_PATH}"))
            .header(TOKEN_TTL_HEADER, "60")
            .header("x-forwarded-for", "10.0.0.1")
            .send()
            .await
            .expect("answers");
        assert_eq!(proxied.status(), 403);

        let issued = http
            .put(format!("{base}{TOKEN_PATH}"))
            .header(TOKEN_TTL_HEADER, "60")
            .send()
            .await
            .expect("answers");
        assert_eq!(issued.status(), 200);
        assert_eq!(
            issued
                .headers()
                .get(TOKEN_TTL_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("60")
        );
        let token = issued.text().await.expect("a token");

        let wrong = http
            .get(&listing)
            .header(TOKEN_HEADER, "not-a-token")
            .send()
            .await
            .expect("answers");
        assert_eq!(wrong.status(), 401);
        let role = http
            .get(&listing)
            .header(TOKEN_HEADER, &token)
            .send()
            .await
            .expect("answers");
        assert_eq!(role.status(), 200);
        assert_eq!(role.text().await.expect("text"), "fedcred-node");
        let creds = http
            .get(format!("{listing}fedcred-node"))
            .header(TOKEN_HEADER, &token)
            .send()
            .await
            .expect("answers");
        assert_eq!(creds.status(), 200);

        imds.expire_tokens();
        let expired = http
            .get(&listing)
            .header(TOKEN_HEADER, &token)
            .send()
            .await
            .expect("answers");
        assert_eq!(expired.status(), 401);

        assert_eq!(imds.tokens_issued(), 1);
        assert_eq!(imds.credentials_served(), 1);
        assert_eq!(imds.refused(), 5);
        assert_eq!(imds.requests().len(), 8);
    }

    #[tokio::test]
    async fn session_tokens_expire_after_their_ttl() {
        let imds = Imds::start(instance()).await.expect("IMDS starts");
        let http = http();
        let token = http
            .put(format!("{}{TOKEN_PATH}", imds.endpoint()))
            .header(TOKEN_TTL_HEADER, "1")
            .send()
            .await
            .expect("answers")
            .text()
            .await
            .expect("a token");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let late = http
            .get(format!("{}{REGION}", imds.endpoint()))
            .header(TOKEN_HEADER, &token)
            .send()
            .await
            .expect("answers");
        assert_eq!(late.status(), 401);
    }

    #[tokio::test]
    async fn container_credentials_need_the_authorization_token() {
        let fake = ContainerCredentials::start("pod-identity-token", moto_credentials())
            .await
            .expect("starts");
        let http = http();
        let missing = http.get(fake.url()).send().await.expect("answers");
        assert_eq!(missing.status(), 401);
        let wrong = http
            .get(fake.url())
            .header("authorization", "someone-else")
            .send()
            .await
            .expect("answers");
        assert_eq!(wrong.status(), 403);
        let served = http
            .get(fake.url())
            .header("authorization", "pod-identity-token")
            .send()
            .await
            .expect("answers");
        assert_eq!(served.status(), 200);
        let doc: serde_json::Value = served.json().await.expect("JSON");
        assert_eq!(doc["AccessKeyId"], "ASIAFAKEFAKEFAKE0001");
        assert_eq!(doc["SecretAccessKey"], "fake/secret");
        assert_eq!(doc["Token"], "FQoGZXIvYXdzEXAMPLE");
        assert_eq!(doc["AccountId"], "123456789012");
        assert_eq!(
            doc["RoleArn"],
            "arn:aws:iam::123456789012:role/fedcred-node"
        );
        assert!(
            doc["Expiration"]
                .as_str()
                .is_some_and(|t| t.parse::<Timestamp>().is_ok())
        );
        assert_eq!((fake.served(), fake.refused()), (1, 2));

        assert!(
            ContainerCredentials::start("two\nlines", moto_credentials())
                .await
                .is_err()
        );
    }
}

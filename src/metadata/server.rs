//! The HTTP adapter: binds the listener, asks a [`TokenSource`] for the current view per
//! request, and turns [`protocol`] decisions into responses. Two sources exist: the Secret
//! volume of `fedcred metadata-server` ([`VolumeSource`], read per request, so an update the
//! kubelet made is served by the very next request) and the in-memory token of `fedcred agent`.
//!
//! ID tokens (`…/identity?audience=…`) are minted here, on demand, through IAM Credentials
//! `generateIdToken` with the access token the source serves, and cached per audience
//! ([`fedcred_core::metadata::identity`] decides what may be served and for how long). One
//! mint runs at a time, so a burst of requests for a new audience costs one call to Google.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use jiff::Timestamp;

use super::volume;
use crate::exchange::google::GoogleClient;
use fedcred_core::google::{DEFAULT_IAM_CREDENTIALS_URL, RetryPolicy};
use fedcred_core::metadata::identity::{self, CacheKey, IdTokenCache, IdentityRequest};
use fedcred_core::metadata::protocol::{self, FLAVOR, FLAVOR_HEADER, Reply};
use fedcred_core::metadata::view::{Expiry, SecretView};

/// What `fedcred metadata-server` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the FederatedCredential's Secret is mounted.
    pub secret_dir: PathBuf,
    /// Where to listen; loopback unless there is a reason.
    pub listen: SocketAddr,
    /// IAM Credentials base URL, for ID tokens.
    pub iam_credentials_url: String,
}

/// Why the emulator could not start or stopped; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "secret directory {0} does not exist: mount the FederatedCredential's Secret there (the \
         fedcred webhook does) or pass --secret-dir"
    )]
    SecretDirMissing(PathBuf),
    #[error("secret directory {0} is not a directory: pass the directory the Secret is mounted at")]
    NotADirectory(PathBuf),
    #[error("cannot inspect secret directory {dir}: {source}")]
    SecretDirUnreadable {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr}: {source} (is another metadata server using the port? pass \
         another --listen)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving the metadata protocol failed: {0}")]
    Serve(std::io::Error),
}

/// Where the served token and its metadata come from.
pub trait TokenSource: Send + Sync + 'static {
    /// The current view, or the complete answer (a 503 naming why) when there is none to
    /// serve. Called once per request that needs the token or the account.
    fn view(&self) -> impl Future<Output = Result<SecretView, Reply>> + Send;

    /// IAM Credentials base URL, where ID tokens are minted.
    fn iam_credentials_url(&self) -> &str {
        DEFAULT_IAM_CREDENTIALS_URL
    }
}

/// The FederatedCredential's Secret as the kubelet mounts it.
pub struct VolumeSource {
    pub secret_dir: PathBuf,
    pub iam_credentials_url: String,
}

impl TokenSource for VolumeSource {
    async fn view(&self) -> Result<SecretView, Reply> {
        let dir = self.secret_dir.clone();
        // Small local files, but still blocking I/O: keep it off the async workers.
        let files = tokio::task::spawn_blocking(move || volume::read(&dir))
            .await
            .map_err(std::io::Error::other)
            .and_then(|read| read)
            .map_err(|error| {
                tracing::warn!(%error, "cannot read the mounted Secret");
                protocol::unreadable(&error)
            })?;
        Ok(SecretView::from_files(&files))
    }

    fn iam_credentials_url(&self) -> &str {
        &self.iam_credentials_url
    }
}

struct Shared<S> {
    source: S,
    /// The last token state logged, so that changes are logged once, not per request.
    last_state: Mutex<Option<String>>,
    id_tokens: IdTokens,
}

/// Minted ID tokens and the client that mints them.
struct IdTokens {
    /// `None` when the HTTP client could not be built; ID tokens then answer 503 naming why.
    google: Result<GoogleClient, String>,
    cache: Mutex<IdTokenCache>,
    /// Held while minting, so concurrent requests for one audience mint once.
    minting: tokio::sync::Mutex<()>,
}

impl IdTokens {
    fn new() -> IdTokens {
        // A client waits on this answer: a short timeout and one retry.
        let policy = RetryPolicy {
            attempts: 2,
            request_timeout: std::time::Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        IdTokens {
            google: GoogleClient::new(policy).map_err(|e| e.message),
            cache: Mutex::new(IdTokenCache::default()),
            minting: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self, key: &CacheKey) -> Option<Reply> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key, Timestamp::now()).map(identity::reply)
    }

    /// The ID token for `request`, from the cache or minted with `view`'s access token.
    async fn answer(
        &self,
        iam_url: &str,
        view: &SecretView,
        account: &str,
        request: &IdentityRequest,
    ) -> Reply {
        let minter = match identity::minter(view, account, Timestamp::now()) {
            Ok(minter) => minter,
            Err(reply) => return reply,
        };
        let key = CacheKey {
            service_account: minter.service_account.clone(),
            audience: request.audience.clone(),
            include_email: request.include_email(),
        };
        if let Some(reply) = self.cached(&key) {
            return reply;
        }
        let _one_at_a_time = self.minting.lock().await;
        if let Some(reply) = self.cached(&key) {
            return reply;
        }
        let google = match &self.google {
            Ok(google) => google,
            Err(why) => {
                return Reply {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    content_type: protocol::TEXT,
                    body: format!("fedcred: cannot mint ID tokens: {why}\n"),
                };
            }
        };
        match google
            .generate_id_token(
                iam_url,
                &minter.access_token,
                &minter.service_account,
                request,
            )
            .await
        {
            Ok(token) => {
                tracing::info!(
                    service_account = %minter.service_account,
                    audience = %request.audience,
                    fingerprint = %token.token.fingerprint(),
                    expires_at = %token.expires_at,
                    "minted an ID token"
                );
                let reply = identity::reply(&token);
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache.insert(key, token, Timestamp::now());
                reply
            }
            Err(error) => {
                tracing::warn!(
                    service_account = %minter.service_account,
                    audience = %request.audience,
                    reason = error.reason.as_str(),
                    "minting an ID token failed: {}",
                    error.message
                );
                identity::failed(&error)
            }
        }
    }
}

/// Checks that the Secret directory is there; the emulator refuses to start otherwise.
pub fn check_secret_dir(dir: &std::path::Path) -> Result<(), Error> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::NotADirectory(dir.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::SecretDirMissing(dir.to_owned()))
        }
        Err(source) => Err(Error::SecretDirUnreadable {
            dir: dir.to_owned(),
            source,
        }),
    }
}

/// Serves the metadata protocol from the mounted Secret until `shutdown` completes (SIGTERM
/// when the pod stops).
pub async fn serve(
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    check_secret_dir(&options.secret_dir)?;
    let listener = bind(options.listen).await?;
    tracing::info!(
        secret_dir = %options.secret_dir.display(),
        "reading tokens from the mounted Secret"
    );
    let source = VolumeSource {
        secret_dir: options.secret_dir,
        iam_credentials_url: options.iam_credentials_url,
    };
    serve_on(listener, source, shutdown).await
}

/// Binds the metadata listener, so a taken port is reported before anything else starts.
pub async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(Error::Serve)?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening beyond loopback: other hosts can ask for this token");
    }
    Ok(listener)
}

/// Serves the metadata protocol on `listener` from `source` until `shutdown` completes.
pub async fn serve_on<S: TokenSource>(
    listener: tokio::net::TcpListener,
    source: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener.local_addr().map_err(Error::Serve)?;
    let shared = Arc::new(Shared {
        source,
        last_state: Mutex::new(None),
        id_tokens: IdTokens::new(),
    });
    tracing::info!(%addr, "serving the GCE metadata protocol");
    // Log what the source holds at start, before any client asks.
    if let Ok(view) = shared.source.view().await {
        observe(&shared.last_state, &view, Timestamp::now());
    }
    let app = Router::new().fallback(handle::<S>).with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)?;
    tracing::info!("metadata server stopped");
    Ok(())
}

async fn handle<S: TokenSource>(
    State(shared): State<Arc<Shared<S>>>,
    request: Request,
) -> Response {
    let (parts, _body) = request.into_parts();
    let reply = match protocol::route(&parts.method, &parts.uri, &parts.headers) {
        Err(refusal) => {
            tracing::debug!(
                path = parts.uri.path(),
                reason = refusal.reason(),
                "refused"
            );
            protocol::refuse(refusal)
        }
        Ok(served) if !served.needs_secret() => {
            protocol::answer(&served, &SecretView::default(), Timestamp::now())
        }
        Ok(served) => match shared.source.view().await {
            Ok(view) => {
                let now = Timestamp::now();
                observe(&shared.last_state, &view, now);
                match served.identity() {
                    Some((account, request)) => {
                        let iam_url = shared.source.iam_credentials_url();
                        shared
                            .id_tokens
                            .answer(iam_url, &view, account, request)
                            .await
                    }
                    None => protocol::answer(&served, &view, now),
                }
            }
            Err(reply) => reply,
        },
    };
    tracing::debug!(
        method = %parts.method,
        path = parts.uri.path(),
        // Audiences and scopes; never a secret.
        query = parts.uri.query().unwrap_or(""),
        status = reply.status.as_u16(),
        "answered"
    );
    response(reply)
}

/// Logs the token state when it changes: a fingerprint and expiry, never the token.
fn observe(last_state: &Mutex<Option<String>>, view: &SecretView, now: Timestamp) {
    let state = match view.token(now) {
        Ok(_) => format!(
            "serving token {} expiring at {}",
            view.access_token
                .as_ref()
                .map(|t| t.fingerprint())
                .unwrap_or_default(),
            match &view.expiry {
                Expiry::At(at) => at.to_string(),
                _ => String::new(),
            }
        ),
        Err(why) => format!("not serving a token: {}", why.reason()),
    };
    let Ok(mut last) = last_state.lock() else {
        return;
    };
    if last.as_deref() == Some(state.as_str()) {
        return;
    }
    if state.starts_with("serving") {
        tracing::info!(service_account = view.email(), "{state}");
    } else {
        tracing::warn!("{state}");
    }
    *last = Some(state);
}

/// The HTTP response; hyper sends the headers (and the length) but no body to HEAD requests.
fn response(reply: Reply) -> Response {
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(FLAVOR_HEADER, HeaderValue::from_static(FLAVOR));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    // Tokens must not be kept by anything between the client and this server.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if reply.status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

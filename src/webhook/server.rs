//! The HTTPS server: TLS on each accepted connection, then HTTP/1.1 with `POST /mutate` and
//! `GET /healthz`. Each connection runs in its own task, so a slow or hostile client holds up
//! no one else, and no request can stop the server.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use rustls::ServerConfig;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use fedcred_core::admission::{Lookup, allowed, answer, encode, parse};
use fedcred_core::api::FederatedCredential;
use fedcred_core::inject::InjectConfig;
use fedcred_core::refresh::cached::CachedCredential;

use super::Error;
use super::conn::Deadlines;

/// The path the MutatingWebhookConfiguration points at.
pub const MUTATE_PATH: &str = "/mutate";

/// Liveness of the webhook port.
pub const HEALTH_PATH: &str = "/healthz";

/// Largest request body read. The API server caps objects at about 3 MiB; a review carries
/// the pod once (twice for updates, which are not registered).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How long the FederatedCredential lookup may take, well inside the webhook's
/// `timeoutSeconds` so that the pod gets a message rather than a timeout.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a client has to finish the TLS handshake. Then [`Deadlines`] gives it
/// [`HEAD_TIMEOUT`](super::conn::HEAD_TIMEOUT) for each request's head and
/// [`IDLE_TIMEOUT`](super::conn::IDLE_TIMEOUT) between requests.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the whole request body may take to arrive once the head has.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once unless configured (`--webhook-max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Bytes of request bodies held at once unless configured (`--webhook-body-budget-mib`).
pub const DEFAULT_BODY_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// The bytes of request bodies the server may hold at once, shared by every connection. A
/// body is read only once its size is reserved here, so many clients sending large bodies
/// slowly cannot make the server hold them all: those past the budget are told to retry.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
}

impl BodyBudget {
    /// A budget of `bytes`, raised to one body at [`MAX_BODY_BYTES`] if smaller, so that any
    /// body within the limit can be read when nothing else is.
    pub fn new(bytes: usize) -> Self {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(
                bytes.clamp(MAX_BODY_BYTES, Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// Reserves room for a body of the `declared` Content-Length, or of [`MAX_BODY_BYTES`]
    /// when none is declared (a chunked body); `None` when that much is not free now. The
    /// room is given back when the reservation is dropped.
    pub fn try_reserve(&self, declared: Option<u64>) -> Option<OwnedSemaphorePermit> {
        let limit = MAX_BODY_BYTES as u64;
        let wanted = u32::try_from(declared.map_or(limit, |n| n.min(limit))).ok()?;
        self.bytes.clone().try_acquire_many_owned(wanted).ok()
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

impl Default for BodyBudget {
    fn default() -> Self {
        BodyBudget::new(DEFAULT_BODY_BUDGET_BYTES)
    }
}

/// What the handler needs: the API client for lookups, watched caches of
/// FederatedCredentials (one per watched namespace, or one of all), and the injection settings.
#[derive(Clone)]
pub struct Webhook {
    client: kube::Client,
    caches: Vec<Store<CachedCredential>>,
    config: Arc<InjectConfig>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    budget: BodyBudget,
}

impl Webhook {
    /// A webhook that reads each FederatedCredential from the API server.
    pub fn new(client: kube::Client, config: InjectConfig) -> Self {
        Webhook {
            client,
            caches: Vec::new(),
            config: Arc::new(config),
            metrics: None,
            budget: BodyBudget::default(),
        }
    }

    /// Reads bodies only within `budget` (by default [`DEFAULT_BODY_BUDGET_BYTES`]).
    pub fn with_body_budget(mut self, budget: BodyBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Counts and times every answered review in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        // Every result is exported from the start, at 0.
        for result in ["allowed", "denied", "error"] {
            drop(
                metrics
                    .admissions
                    .get_or_create(&crate::metrics::AdmissionLabels { result }),
            );
        }
        for reason in crate::metrics::TURNED_AWAY_REASONS {
            drop(
                metrics
                    .turned_away
                    .get_or_create(&crate::metrics::ReasonLabels { reason }),
            );
        }
        self.metrics = Some(metrics);
        self
    }

    /// Looks resources up in `cache` first (see [`watch_credentials`]), which keeps the API
    /// server out of the admission path. A resource the cache has not seen yet, such as one
    /// created a moment before the pod, is still read from the API server, so a miss is never
    /// answered with a refusal. Called once per watched namespace when the controller watches
    /// several.
    pub fn with_cache(mut self, cache: Store<CachedCredential>) -> Self {
        self.caches.push(cache);
        self
    }

    async fn lookup(&self, namespace: &str, name: &str) -> Lookup {
        if let Some(cached) = self
            .caches
            .iter()
            .find_map(|cache| cache.get(&ObjectRef::new(name).within(namespace)))
        {
            // What the cache packed itself unpacks; if it did not, ask the API server.
            if let Ok(fc) = cached.unpack() {
                return Lookup::Found(Box::new(fc));
            }
        }
        let api: Api<FederatedCredential> = Api::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(Some(fc))) => Lookup::Found(Box::new(fc)),
            Ok(Ok(None)) => Lookup::Missing,
            Ok(Err(e)) => Lookup::Failed(e.to_string()),
            Err(_) => Lookup::Failed(format!(
                "the API server did not answer within {LOOKUP_TIMEOUT:?}"
            )),
        }
    }
}

/// A cache of the FederatedCredentials in `namespace` (all when `None`) for
/// [`Webhook::with_cache`], and the future that keeps it current; run that future for as long
/// as the webhook serves. Each resource is kept packed ([`CachedCredential`]: its spec and
/// status as JSON, its metadata without managed fields, labels or others' annotations, none of
/// which the webhook reads) and unpacked for the review that names it.
pub fn watch_credentials(
    client: kube::Client,
    namespace: Option<&str>,
) -> (
    Store<CachedCredential>,
    impl Future<Output = ()> + Send + use<>,
) {
    let api: Api<CachedCredential> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()).default_backoff(),
    );
    let drive = async move {
        stream
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "watching FederatedCredentials for the webhook");
                }
            })
            .await;
    };
    (store, drive)
}

/// The webhook's routes.
pub fn router(webhook: Webhook) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(mutate))
        .route(HEALTH_PATH, get(|| async { "ok" }))
        .with_state(webhook)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

async fn mutate(State(webhook): State<Webhook>, headers: HeaderMap, body: Body) -> Response {
    let started = std::time::Instant::now();
    let (response, allowed) = review(&webhook, headers, body).await;
    if let Some(metrics) = &webhook.metrics {
        metrics.observe_admission(started.elapsed(), allowed);
    }
    response
}

/// Answers one review; also says whether the pod was allowed (`None`: no review was read).
async fn review(webhook: &Webhook, headers: HeaderMap, body: Body) -> (Response, Option<bool>) {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return (
            error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected Content-Type: application/json",
            ),
            None,
        );
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY_BYTES} bytes or could not be read"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return (too_large(), None);
    }
    // Held until the review is answered; the bytes read are dropped with it.
    let Some(_reserved) = webhook.budget.try_reserve(declared) else {
        if let Some(metrics) = &webhook.metrics {
            metrics.turn_away(crate::metrics::BODY_BUDGET);
        }
        let mut busy = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the webhook is reading as many request bodies as its budget allows \
             (--webhook-body-budget-mib); retry in a second, and raise the budget if this \
             persists with legitimate traffic",
        );
        busy.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return (busy, None);
    };
    // The API server sends a review at once; a body still arriving after this is a client
    // holding the connection and its buffer, not a review.
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES))
        .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return (too_large(), None),
        Err(_) => {
            return (
                error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the body did not arrive within {BODY_TIMEOUT:?}"),
                ),
                None,
            );
        }
    };
    let parsed = match parse(&bytes) {
        Ok(parsed) => parsed,
        Err(bad) => return (error(StatusCode::BAD_REQUEST, bad.0), None),
    };
    let lookup = match parsed.wanted() {
        Some((namespace, name)) => webhook.lookup(namespace, name).await,
        None => Lookup::NotNeeded,
    };
    let reply = answer(&parsed, lookup, &webhook.config);
    let admitted = allowed(&reply);
    tracing::debug!(
        uid = %parsed.uid,
        namespace = parsed.pod.metadata.namespace.as_deref().unwrap_or_default(),
        allowed = admitted,
        dry_run = parsed.dry_run,
        "admission review answered"
    );
    (axum::Json(encode(reply)).into_response(), Some(admitted))
}

/// How [`serve`] shares the process among connections.
#[derive(Clone)]
pub struct ServeOptions {
    /// Connections served at once. With all taken, the server stops accepting until one
    /// ends, and further clients wait in the listening socket's backlog.
    pub max_connections: usize,
    /// Where pauses in accepting are counted.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            metrics: None,
        }
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` completes. Connections in flight
/// at shutdown are dropped; the API server retries or applies the failure policy.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(Semaphore::new(
        options.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    tokio::pin!(shutdown);
    loop {
        // A permit per connection, from before its accept to the end of its task.
        let permit = match connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if let Some(metrics) = &options.metrics {
                    metrics.turn_away(crate::metrics::MAX_CONNECTIONS);
                }
                tracing::debug!(
                    max = options.max_connections,
                    "every webhook connection is taken; accepting again when one ends"
                );
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    permit = connections.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        // Never closed.
                        Err(_) => return Ok(()),
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "webhook TLS handshake timed out");
                    return;
                }
            };
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                // hyper's head timeout would also cut idle kept-alive connections short.
                .header_read_timeout(None)
                .serve_connection(TokioIo::new(Deadlines::new(tls)), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn a_body_reserves_its_declared_length_and_an_undeclared_one_the_limit() {
        let budget = BodyBudget::new(32 * MIB);
        let small = budget.try_reserve(Some(1500)).unwrap();
        assert_eq!(budget.available(), 32 * MIB - 1500);
        let chunked = budget.try_reserve(None).unwrap();
        assert_eq!(budget.available(), 32 * MIB - 1500 - MAX_BODY_BYTES);
        drop((small, chunked));
        assert_eq!(budget.available(), 32 * MIB);
    }

    #[test]
    fn a_spent_budget_refuses_until_a_reservation_is_dropped() {
        let budget = BodyBudget::new(32 * MIB);
        let held: Vec<_> = (0..8)
            .map(|_| budget.try_reserve(Some(4_000_000)).unwrap())
            .collect();
        assert!(budget.try_reserve(Some(4_000_000)).is_none());
        assert!(budget.try_reserve(None).is_none());
        // What is left still takes a review of ordinary size.
        assert!(budget.try_reserve(Some(64 * 1024)).is_some());
        drop(held);
        assert!(budget.try_reserve(Some(4_000_000)).is_some());
    }

    #[test]
    fn a_budget_below_one_body_at_the_limit_is_raised_to_it() {
        let budget = BodyBudget::new(MIB);
        assert_eq!(budget.available(), MAX_BODY_BYTES);
        let whole = budget.try_reserve(None).unwrap();
        assert!(budget.try_reserve(Some(1)).is_none());
        drop(whole);
        // A length over the limit is refused with 413 before reserving; it never asks more.
        assert!(budget.try_reserve(Some(u64::MAX)).is_some());
    }
}

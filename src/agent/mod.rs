//! `fedcred agent`: the exchange where the AWS credentials are (an EC2 instance, an ECS task, a
//! pod with EKS Pod Identity), with no Secret and no Kubernetes. It reads one
//! FederatedCredential from a file ([`crate::manifest`]), takes the host's AWS identity from the
//! standard chain (optionally chained with `AssumeRole` under a deterministic session name),
//! exchanges it through the [`Engine`], keeps the token in memory ([`state`]), refreshes it with
//! the controller's policies ([`fedcred_core::refresh::decide`]) and serves it with the GCE
//! metadata protocol of `fedcred metadata-server` ([`crate::metadata::server`]).
//!
//! This module owns the refresh loop and the process around it; it must not write a token
//! anywhere but memory, nor log one (only fingerprints, in the engine).

pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fedcred_core::api::DEFAULT_RENEW_BEFORE_PERCENTAGE;
use fedcred_core::exchange::{
    ControllerIdentityPolicy, Defaults, EndpointPolicy, IdentityKey, Limits, plan,
};
use fedcred_core::google::RetryPolicy;
use fedcred_core::refresh::decide::{refresh_at, retry_at, unit_from};
use jiff::Timestamp;

use self::state::AgentState;
use crate::exchange::Engine;
use crate::exchange::aws::Aws;
use crate::exchange::google::GoogleClient;
use crate::metrics::Metrics;
use crate::{health, manifest, metadata};

/// What `fedcred agent` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// The manifest holding the FederatedCredential.
    pub manifest: Manifest,
    /// Which FederatedCredential of the file, when it holds several.
    pub name: Option<String>,
    /// Where to serve the metadata protocol; keep it on loopback.
    pub listen: SocketAddr,
    /// Region to sign for when the file names none.
    pub region: Option<String>,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`, if anywhere.
    pub metrics_address: Option<SocketAddr>,
    /// Shortest token lifetime accepted from Google.
    pub min_token_lifetime: Duration,
}

/// Where the manifest comes from.
#[derive(Clone, Debug)]
pub enum Manifest {
    /// A file (`-` for standard input).
    File(PathBuf),
    /// The text itself (`FEDCRED_CREDENTIAL`).
    Text(String),
}

/// Why the agent could not start; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    #[error(
        "FederatedCredential {name} uses aws.serviceAccount, which asks a controller to request \
         a ServiceAccount token from Kubernetes; fedcred agent uses the AWS credentials of the \
         place it runs: set aws.controllerIdentity: {{}} (with roleArn to chain into a role \
         under a stable session name) instead"
    )]
    ServiceAccountSource { name: String },
    #[error(
        "FederatedCredential {name} uses kubernetes.serviceAccount, which asks a controller to \
         request a ServiceAccount token from Kubernetes; fedcred agent reads a projected token \
         file instead: set kubernetes.tokenPath to its path (and remove serviceAccount)"
    )]
    KubernetesServiceAccountSource { name: String },
    #[error("FederatedCredential {name}: {error} ({reason})", reason = .error.reason)]
    Plan {
        name: String,
        error: fedcred_core::error::ExchangeError,
    },
    #[error(transparent)]
    Metadata(#[from] metadata::Error),
    #[error(
        "cannot serve metrics on {addr}: {source} (is the port in use? pass another \
         --metrics-address)"
    )]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the agent serves: the resource and the identity it was resolved to.
pub struct Plan {
    /// `namespace/name` of the FederatedCredential, for logs and messages.
    pub label: String,
    pub key: IdentityKey,
    pub renew_before_percentage: i32,
}

/// Reads and checks the manifest and resolves the identity, without touching the network.
pub fn load(options: &Options) -> Result<Plan, Error> {
    let fc = match &options.manifest {
        Manifest::File(path) => manifest::load(path, options.name.as_deref())?,
        Manifest::Text(text) => {
            manifest::parse("FEDCRED_CREDENTIAL", text, options.name.as_deref())?
        }
    };
    let name = fc.metadata.name.clone().unwrap_or_default();
    let namespace = fc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let label = format!("{namespace}/{name}");
    if fc
        .spec
        .aws
        .as_ref()
        .is_some_and(|aws| aws.service_account.is_some())
    {
        return Err(Error::ServiceAccountSource { name: label });
    }
    if fc
        .spec
        .kubernetes
        .as_ref()
        .is_some_and(|k| k.service_account.is_some())
    {
        return Err(Error::KubernetesServiceAccountSource { name: label });
    }
    let defaults = Defaults {
        region: options
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION")),
        // The agent's own AWS identity is the one the host gave it: nobody else's is lent.
        controller_identity: ControllerIdentityPolicy::everyone(),
        // The file is the host owner's, not a tenant's: the endpoints it names are theirs to
        // choose, as with any AWS or Google tool run on the host.
        endpoints: EndpointPolicy::any(),
        // The token file is on the agent's own host, chosen by whoever configured the host.
        token_files: true,
        ..Defaults::default()
    };
    let key = plan(&namespace, &fc.spec, &defaults).map_err(|error| Error::Plan {
        name: label.clone(),
        error,
    })?;
    Ok(Plan {
        label,
        key,
        renew_before_percentage: fc
            .spec
            .secret
            .as_ref()
            .map_or(DEFAULT_RENEW_BEFORE_PERCENTAGE, |s| {
                s.renew_before_percentage
            }),
    })
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Runs the agent until `shutdown` completes: binds first (a taken port fails before any
/// exchange), then refreshes in the background and serves.
pub async fn run(
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let plan = load(&options)?;
    let listener = metadata::bind(options.listen).await?;
    let metrics = Metrics::shared();
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = options.metrics_address {
        // Bound here, so a taken port is an error at start rather than a log line later.
        let probe =
            std::net::TcpListener::bind(addr).map_err(|source| Error::Metrics { addr, source })?;
        drop(probe);
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            if let Err(error) = health::serve(addr, metrics, ready).await {
                tracing::error!(%addr, %error, "metrics endpoint stopped");
            }
        });
    }
    let state = Arc::new(AgentState::new(
        plan.label.clone(),
        plan.key.service_account.clone(),
    ));
    tracing::info!(
        credential = %plan.label,
        identity = %plan.key.describe(),
        service_account = plan.key.service_account.as_deref().unwrap_or("none"),
        "fedcred agent starting"
    );
    let google = GoogleClient::new(RetryPolicy::default()).map_err(|error| Error::Plan {
        name: plan.label.clone(),
        error,
    })?;
    let engine = Engine::new(Aws::from_env().await, google, None).with_limits(Limits {
        min_token_lifetime: options.min_token_lifetime,
        ..Limits::default()
    });
    let iam_url = plan.key.iam_credentials_url.clone();
    let refresher = tokio::spawn(refresh_loop(engine, plan, state.clone(), metrics, ready));
    let served = metadata::serve_on(listener, state::Served(state, iam_url), shutdown).await;
    refresher.abort();
    served?;
    Ok(())
}

/// Exchanges, keeps the result, and sleeps until the next refresh or retry is due, as the
/// controller decides it: a share of the lifetime before expiry with jitter, and on failure
/// a backoff that still retries before a good token lapses.
async fn refresh_loop(
    engine: Engine,
    plan: Plan,
    state: Arc<AgentState>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) {
    let unit = unit_from(&plan.label);
    let mut failures = 0;
    loop {
        let started = Instant::now();
        let result = engine.exchange(&plan.key).await;
        let now = Timestamp::now();
        let next = match result {
            Ok(issued) => {
                metrics.observe_refresh(started.elapsed(), None);
                failures = 0;
                let next = refresh_at(
                    issued.issued_at,
                    issued.expires_at,
                    plan.renew_before_percentage,
                    unit,
                );
                tracing::info!(
                    credential = %plan.label,
                    principal = issued.principal_arn.as_deref().unwrap_or("unknown"),
                    expires_at = %issued.expires_at,
                    next_refresh = %next,
                    "token refreshed"
                );
                state.issued(issued);
                ready.store(true, Ordering::Relaxed);
                next
            }
            Err(error) => {
                metrics.observe_refresh(started.elapsed(), Some(error.reason.as_str()));
                failures += 1;
                let expires_at = state.expires_at();
                let next = retry_at(
                    now,
                    failures,
                    expires_at,
                    unit_from(&format!("{}/retry/{failures}", plan.label)),
                );
                tracing::warn!(
                    credential = %plan.label,
                    reason = error.reason.as_str(),
                    principal = error.principal.as_deref().unwrap_or("unknown"),
                    failures,
                    retry_at = %next,
                    "exchange failed: {}",
                    error.message
                );
                state.failed(error);
                next
            }
        };
        if let Some(expires_at) = state.expires_at() {
            metrics.set_expiry(
                &plan.key.namespace,
                &plan.label,
                expires_at.duration_since(Timestamp::now()).as_secs(),
            );
        }
        let wait = next.duration_since(Timestamp::now()).as_secs_f64().max(1.0);
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
}

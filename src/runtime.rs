//! The controller process, assembled: health and metrics, the admission webhook with its
//! certificates, leader election, the controller, and shutdown.
//!
//! Every replica serves the webhook and the health endpoints; only the leader reconciles. On
//! SIGTERM everything stops and the Lease is released. When leadership is lost the controller
//! is stopped at once, in-flight reconciles included, well before a standby may take over
//! (see [`fedcred_core::lease::Timing::fencing_margin`]), and the process exits with an error
//! so that a fresh start competes again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fedcred_core::exchange::{ControllerIdentityPolicy, Defaults};
use fedcred_core::google::RetryPolicy;
use fedcred_core::inject::{InjectConfig, native_sidecars_supported};
use fedcred_core::lease::Timing;
use kube::runtime::events::Reporter;
use tokio::sync::watch;

use crate::controller;
use crate::exchange::Engine;
use crate::exchange::aws::Aws;
use crate::exchange::google::GoogleClient;
use crate::leader::{Elector, LeaseSettings};
use crate::metrics::Metrics;
use crate::webhook;

/// Everything `fedcred controller` is configured with.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch only these namespaces (all when empty).
    pub namespaces: Vec<String>,
    /// Roll the workloads that use a resource when what is injected changes.
    pub rollouts: bool,
    pub allow_controller_identity: Vec<String>,
    /// Endpoints besides AWS's and Google's that resources may name.
    pub allow_endpoints: Vec<String>,
    pub metrics_address: SocketAddr,
    /// Elect a leader through the Lease; off, this replica always reconciles.
    pub leader_election: bool,
    /// Where the Lease, the webhook's TLS Secret and events' reporter live.
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease and in events.
    pub identity: String,
    pub google_sts_url: String,
    pub google_iam_credentials_url: String,
    pub concurrency: u16,
    /// Most exchanges one namespace may have in flight; `None`: a quarter of `concurrency`.
    pub namespace_share: Option<u16>,
    /// Shortest token lifetime accepted from Google.
    pub min_token_lifetime: std::time::Duration,
    /// The webhook, when it is served.
    pub webhook: Option<WebhookOptions>,
}

/// The admission webhook's settings.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    pub address: SocketAddr,
    pub dns_names: Vec<String>,
    pub secret: String,
    pub configuration: String,
    pub fedcred_image: String,
    pub proxy_image: String,
    pub cloudsql_proxy_image: String,
    /// `--alloydbadmin-api-endpoint` of the injected AlloyDB proxies, when not Google's.
    pub alloydb_admin_endpoint: Option<String>,
    /// `--sqladmin-api-endpoint` of the injected Cloud SQL proxies, when not Google's.
    pub cloudsql_admin_endpoint: Option<String>,
    /// Connections served at once; more wait in the listening socket's backlog.
    pub max_connections: usize,
    /// Bytes of request bodies read at once; requests past it are answered 503.
    pub body_budget_bytes: usize,
}

/// Why the controller process stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no usable kubeconfig or in-cluster configuration: {0}")]
    Kubeconfig(kube::Error),
    #[error("{0}")]
    Endpoints(String),
    #[error("{0}")]
    ControllerIdentity(String),
    #[error("reading the API server version: {0}")]
    ApiServerVersion(kube::Error),
    #[error(transparent)]
    Webhook(#[from] webhook::Error),
    #[error("webhook address {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("building the Google client: {0}")]
    Google(fedcred_core::error::ExchangeError),
    #[error("lost the leader Lease; exiting so a fresh start can compete again")]
    LostLeadership,
}

/// A shutdown signal many tasks can wait for.
#[derive(Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Runs the controller process until SIGTERM (`Ok`) or lost leadership (`Err`).
pub async fn controller(options: Options, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let client = kube::Client::try_default()
        .await
        .map_err(Error::Kubeconfig)?;
    let aws = Aws::from_env().await;
    let defaults = Defaults {
        region: aws.default_region().map(str::to_owned),
        sts_url: options.google_sts_url.clone(),
        iam_credentials_url: options.google_iam_credentials_url.clone(),
        controller_identity: ControllerIdentityPolicy::parse(&options.allow_controller_identity)
            .map_err(Error::ControllerIdentity)?,
        endpoints: fedcred_core::exchange::EndpointPolicy::new(&options.allow_endpoints)
            .map_err(Error::Endpoints)?,
        // The controller never reads a file a resource names.
        token_files: false,
    };
    let google = GoogleClient::new(RetryPolicy::default()).map_err(Error::Google)?;
    let base = fedcred_core::exchange::Limits::for_concurrency(options.concurrency);
    let limits = fedcred_core::exchange::Limits {
        min_token_lifetime: options.min_token_lifetime,
        namespace_share: options
            .namespace_share
            .map_or(base.namespace_share, usize::from),
        ..base
    };
    let engine = Arc::new(Engine::new(aws, google, Some(client.clone())).with_limits(limits));
    let metrics = Metrics::shared();
    let ready = Arc::new(AtomicBool::new(false));
    let health = tokio::spawn(crate::health::serve(
        options.metrics_address,
        metrics.clone(),
        ready.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop(stop_rx);

    let webhook = match &options.webhook {
        Some(settings) => {
            Some(start_webhook(&client, &options, settings, &stop, metrics.clone()).await?)
        }
        None => None,
    };

    let timing = Timing::default();
    let elector = options.leader_election.then(|| {
        Arc::new(Elector::new(
            client.clone(),
            LeaseSettings {
                namespace: options.lease_namespace.clone(),
                name: options.lease_name.clone(),
                identity: options.identity.clone(),
                timing,
            },
        ))
    });
    ready.store(true, Ordering::Relaxed);
    tokio::pin!(shutdown);
    if let Some(elector) = &elector {
        tokio::select! {
            () = elector.acquire() => {},
            () = &mut shutdown => {
                let _ = stop_tx.send(true);
                health.abort();
                return Ok(());
            }
        }
    }
    // Leading from here on: the Lease is held, or there is no election.
    metrics.set_leader(true);
    let leader_metrics = metrics.clone();
    let lost = async {
        match &elector {
            Some(elector) => elector.hold().await,
            None => std::future::pending().await,
        }
    };
    let reporter = Reporter {
        controller: "fedcred".to_owned(),
        instance: Some(options.identity.clone()),
    };
    let settings = controller::Settings {
        namespaces: options.namespaces.clone(),
        rollouts: options.rollouts,
        defaults,
        reporter,
        concurrency: options.concurrency,
    };
    let run = controller::run(client, engine, metrics, settings, stop.clone().wait());
    let metrics = leader_metrics;
    tokio::pin!(run);
    let outcome = tokio::select! {
        () = &mut run => Ok(()),
        () = &mut shutdown => {
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
            // Reconciles in flight finish; new ones do not start.
            run.await;
            Ok(())
        }
        () = lost => {
            // Fencing: a standby may start once the Lease has not changed for a lease
            // duration; this replica gave up at the renew deadline, and drops its in-flight
            // reconciles now instead of letting them write.
            let _ = stop_tx.send(true);
            Err(Error::LostLeadership)
        }
    };
    metrics.set_leader(false);
    if outcome.is_ok()
        && let Some(elector) = &elector
    {
        elector.release().await;
    }
    let _ = stop_tx.send(true);
    health.abort();
    if let Some(webhook) = webhook {
        webhook.abort();
    }
    outcome
}

/// Starts the webhook server with its certificates and its cache of FederatedCredentials;
/// everything it starts stops with `stop`.
async fn start_webhook(
    client: &kube::Client,
    options: &Options,
    settings: &WebhookOptions,
    stop: &Stop,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<Result<(), webhook::Error>>, Error> {
    let version = client
        .apiserver_version()
        .await
        .map_err(Error::ApiServerVersion)?;
    let mut inject = InjectConfig::new(settings.fedcred_image.clone());
    inject.proxy_image = settings.proxy_image.clone();
    inject.cloudsql_proxy_image = settings.cloudsql_proxy_image.clone();
    inject.alloydb_admin_endpoint = settings.alloydb_admin_endpoint.clone();
    inject.cloudsql_admin_endpoint = settings.cloudsql_admin_endpoint.clone();
    inject.native_sidecars = native_sidecars_supported(&version.major, &version.minor);
    let certs = webhook::CertSettings {
        namespace: options.lease_namespace.clone(),
        secret: settings.secret.clone(),
        webhook_configuration: settings.configuration.clone(),
        names: settings.dns_names.clone(),
    };
    let bundle = webhook::ensure(client, &certs).await?;
    let cert = webhook::ReloadingCert::new(&bundle)?;
    let tls = webhook::reloading_server_config(cert.clone())?;
    spawn_until(
        webhook::keep_current(client.clone(), certs, cert.clone()),
        stop,
    );
    // The certificate's expiry for alerts, read from what is served now.
    let expiry_metrics = metrics.clone();
    spawn_until(
        async move {
            loop {
                let (serving, ca) = cert.not_after();
                expiry_metrics.set_certificate_expiry(serving, ca);
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            }
        },
        stop,
    );
    let listener = tokio::net::TcpListener::bind(settings.address)
        .await
        .map_err(|source| Error::Listen {
            address: settings.address,
            source,
        })?;
    let mut handler = webhook::Webhook::new(client.clone(), inject)
        .with_metrics(metrics.clone())
        .with_body_budget(webhook::BodyBudget::new(settings.body_budget_bytes));
    for namespace in controller::scopes(&options.namespaces) {
        let (cache, watch) = webhook::watch_credentials(client.clone(), namespace);
        spawn_until(watch, stop);
        handler = handler.with_cache(cache);
    }
    let router = webhook::router(handler);
    Ok(tokio::spawn(webhook::serve(
        listener,
        tls,
        router,
        webhook::ServeOptions {
            max_connections: settings.max_connections,
            metrics: Some(metrics),
        },
        stop.clone().wait(),
    )))
}

/// Runs `task` in the background until it ends or `stop` fires.
fn spawn_until(task: impl Future<Output = ()> + Send + 'static, stop: &Stop) {
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            () = stop.wait() => {}
        }
    });
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

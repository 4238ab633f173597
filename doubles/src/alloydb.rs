//! Verifying doubles of an AlloyDB cluster as the AlloyDB Auth Proxy and the connectors see it:
//! the Admin API ([`admin`]: `connectionInfo`, `generateClientCertificate`, plain HTTP on
//! loopback) and the instance's server-side proxy ([`instance`]: TLS 1.3 with client
//! certificates on port 5433, the metadata exchange of [`mdx`], the PostgreSQL startup of
//! [`pg`]), which relays accepted connections to a real PostgreSQL server.
//!
//! Tokens are checked with the issuer, the Google doubles' `/tokeninfo` ([`tokens`]), so only
//! live tokens they issued pass. Certificates come from the doubles' own CA ([`pki`]). What the
//! instance saw is recorded per connection ([`Connection`]); token values are kept only as
//! SHA-256 digests. Faults can be injected per double ([`faults`]).
//!
//! ```no_run
//! # async fn demo(google: &fedcred_doubles::GoogleDoubles) -> std::io::Result<()> {
//! use fedcred_doubles::alloydb::{AlloyDbConfig, AlloyDbDoubles, InstanceConfig};
//! let config = AlloyDbConfig::default()
//!     .instance(InstanceConfig::psc("projects/p/locations/r/clusters/c/instances/i", "localhost"))
//!     .service_account("app@p.iam.gserviceaccount.com");
//! let alloydb = AlloyDbDoubles::start(config, &google.tokeninfo_url()).await?;
//! // proxy: --alloydbadmin-api-endpoint alloydb.admin_url(); it dials alloydb.instance_addr()
//! # Ok(()) }
//! ```

pub mod admin;
pub mod config;
pub mod faults;
pub mod instance;
pub mod mdx;
pub mod pg;
pub mod pki;
pub mod tokens;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{AlloyDbConfig, InstanceConfig, SERVER_PROXY_PORT};
pub use faults::Target;
pub use mdx::AuthType;

use crate::faults::Fault;
use crate::sync::{Records, lock};

/// How a connection to the instance ended its setup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Relayed to PostgreSQL.
    Accepted,
    /// Refused, and why (never containing a token).
    Refused(String),
}

/// One connection the instance double saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub outcome: Outcome,
    /// From the metadata exchange, when it got that far.
    pub auth_type: Option<AuthType>,
    pub user_agent: Option<String>,
    /// The token's service account, once the token was accepted.
    pub service_account: Option<String>,
    /// The `user` of the PostgreSQL startup message.
    pub db_user: Option<String>,
    token_digest: Option<[u8; 32]>,
}

impl Connection {
    /// Whether the metadata exchange carried `token`.
    pub fn used_token(&self, token: &str) -> bool {
        self.token_digest == Some(token_digest(token))
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// One admin API call: method and HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminCall {
    pub method: String,
    pub status: u16,
}

/// State shared by both servers.
pub(crate) struct Shared {
    config: AlloyDbConfig,
    pki: pki::Pki,
    verifier: tokens::Verifier,
    postgres: Mutex<Option<SocketAddr>>,
    connections: Records<Connection>,
    admin_calls: Mutex<Vec<AdminCall>>,
    faults: Mutex<faults::Queues>,
}

impl Shared {
    /// The fault the request arriving now at `target` must suffer, if any.
    fn take_fault(&self, target: Target) -> Option<Fault> {
        lock(&self.faults).take(target)
    }

    fn record_connection(&self, connection: Connection) {
        self.connections.push(connection);
    }

    fn record_admin(&self, method: &str, status: axum::http::StatusCode) {
        lock(&self.admin_calls).push(AdminCall {
            method: method.to_owned(),
            status: status.as_u16(),
        });
    }

    fn postgres(&self) -> Option<SocketAddr> {
        *lock(&self.postgres)
    }
}

/// Running Admin API and instance doubles. Dropping the handle stops both.
pub struct AlloyDbDoubles {
    admin_addr: SocketAddr,
    instance_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    admin: Option<JoinHandle<()>>,
    instance: JoinHandle<()>,
}

impl AlloyDbDoubles {
    /// Starts both servers on the configured addresses, checking tokens with the Google doubles
    /// at `tokeninfo_url`.
    pub async fn start(config: AlloyDbConfig, tokeninfo_url: &str) -> std::io::Result<Self> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        for instance in &config.instances {
            if config::split_instance(&instance.uri).is_none() {
                return Err(invalid(format!(
                    "instance {:?} is not projects/P/locations/R/clusters/C/instances/I",
                    instance.uri
                )));
            }
        }
        let pki = pki::Pki::new(&config.server_names())
            .map_err(|e| invalid(format!("certificates: {e}")))?;
        let tls = pki.server_config().map_err(invalid)?;
        let verifier = tokens::Verifier::new(tokeninfo_url).map_err(std::io::Error::other)?;
        let admin_listener = tokio::net::TcpListener::bind(config.admin_listen).await?;
        let instance_listener = tokio::net::TcpListener::bind(config.instance_listen).await?;
        let admin_addr = admin_listener.local_addr()?;
        let instance_addr = instance_listener.local_addr()?;
        let shared = Arc::new(Shared {
            postgres: Mutex::new(config.postgres),
            config,
            pki,
            verifier,
            connections: Records::default(),
            admin_calls: Mutex::default(),
            faults: Mutex::default(),
        });

        let (shutdown, stopped) = oneshot::channel::<()>();
        let app = admin::router(shared.clone());
        let admin = tokio::spawn(async move {
            let serve = axum::serve(admin_listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                eprintln!("[alloydb] admin API stopped: {e}");
            }
        });
        let instance = tokio::spawn(instance::serve(
            instance_listener,
            tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            shared.clone(),
        ));
        eprintln!("[alloydb] admin API on http://{admin_addr}, instance on {instance_addr}");
        Ok(AlloyDbDoubles {
            admin_addr,
            instance_addr,
            shared,
            shutdown: Some(shutdown),
            admin: Some(admin),
            instance,
        })
    }

    /// `http://127.0.0.1:PORT`, for `--alloydbadmin-api-endpoint`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn instance_addr(&self) -> SocketAddr {
        self.instance_addr
    }

    /// The cluster CA's certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.shared.pki.root_pem()
    }

    /// Where accepted connections are relayed from now on.
    pub fn set_postgres(&self, addr: SocketAddr) {
        *lock(&self.shared.postgres) = Some(addr);
    }

    /// Every connection the instance saw, in order of setup completion.
    pub fn connections(&self) -> Vec<Connection> {
        self.shared.connections.all()
    }

    /// The connections once there are at least `count` (a client can learn of a refusal before
    /// it is recorded), or an error naming what was seen after `within`.
    pub async fn connections_reaching(
        &self,
        count: usize,
        within: std::time::Duration,
    ) -> Result<Vec<Connection>, String> {
        self.shared
            .connections
            .reaching(count, within, "alloydb connections")
            .await
    }

    /// Every Admin API call, in order.
    pub fn admin_calls(&self) -> Vec<AdminCall> {
        lock(&self.shared.admin_calls).clone()
    }

    /// Queues `fault` for the next requests to `target` (see [`faults`]).
    pub fn inject(&self, target: Target, fault: Fault) {
        lock(&self.shared.faults).push(target, fault);
    }

    /// Faults still queued for `target`, counts as they stand.
    pub fn pending_faults(&self, target: Target) -> Vec<Fault> {
        lock(&self.shared.faults).pending(target)
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        *lock(&self.shared.faults) = faults::Queues::default();
    }

    /// Stops both servers and waits for the Admin API to finish.
    pub async fn shutdown(mut self) {
        self.instance.abort();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(admin) = self.admin.take() {
            let _ = admin.await;
        }
    }
}

impl Drop for AlloyDbDoubles {
    fn drop(&mut self) {
        self.instance.abort();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

//! Verifying doubles of Cloud SQL as the Cloud SQL Auth Proxy v2 and the connectors see it:
//! the Admin API ([`admin`]: `connectSettings` and `generateEphemeralCert` of
//! `sql/v1beta4`, plain HTTP on loopback) and each instance's server-side proxy
//! ([`instance`]: TLS 1.3 on port 3307 with the ephemeral client certificate, then the
//! PostgreSQL startup or the MySQL handshake), which relays accepted connections to a real
//! PostgreSQL server, or a MySQL-compatible one (MariaDB) for `MYSQL_*` instances.
//!
//! Automatic IAM database login works as in Cloud SQL: the connector sends an access token
//! with its certificate request; the Admin API checks it with the token issuer (the Google
//! doubles' `/tokeninfo`), binds its service account to the certificate and ends the
//! certificate's validity with the token's. The instance then accepts only the IAM database
//! user of that service account, and only while the certificate is valid.
//!
//! What is not modelled: SQL Server (only `POSTGRES_*` and `MYSQL_*` instances are served),
//! MySQL's own TLS inside the connection (refused; the greeting does not offer it), built-in
//! database users and passwords (a certificate without an IAM identity is refused at
//! login), the metadata exchange newer instances offer (`mdxProtocolSupport` is not reported,
//! so clients do not start it), per-instance server CAs and the CAS-based CA modes (one CA
//! signs every instance's certificate, `serverCaMode` is `GOOGLE_MANAGED_INTERNAL_CA`), the
//! `SQLData` connection type, and fault injection.
//!
//! ```no_run
//! # async fn demo(google: &fedcred_doubles::GoogleDoubles) -> std::io::Result<()> {
//! use fedcred_doubles::cloudsql::{CloudSqlConfig, CloudSqlDoubles, CloudSqlInstance};
//! let config = CloudSqlConfig::default()
//!     .instance(CloudSqlInstance::psc("p:europe-west1:orders", "localhost"))
//!     .service_account("app@p.iam.gserviceaccount.com");
//! let cloudsql = CloudSqlDoubles::start(config, &google.tokeninfo_url()).await?;
//! // proxy: --sqladmin-api-endpoint cloudsql.admin_url(); it dials port 3307
//! # Ok(()) }
//! ```

pub mod admin;
pub mod config;
pub mod instance;
pub mod mysql;
pub mod pki;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{CloudSqlConfig, CloudSqlInstance, SERVER_PROXY_PORT};

use crate::alloydb::tokens::Verifier;
use crate::alloydb::{AdminCall, Outcome};
use crate::sync::{Records, lock};

/// One connection an instance double saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The instance's connection name.
    pub instance: String,
    pub outcome: Outcome,
    /// The service account bound to the client certificate, when it had one.
    pub service_account: Option<String>,
    /// The `user` of the PostgreSQL startup message.
    pub db_user: Option<String>,
    token_digest: Option<[u8; 32]>,
}

impl Connection {
    /// Whether the client certificate was issued for `token`.
    pub fn used_token(&self, token: &str) -> bool {
        self.token_digest == Some(digest(token.as_bytes()))
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What an ephemeral certificate stands for, as `generateEphemeralCert` issued it.
#[derive(Clone, Debug)]
pub(crate) struct Binding {
    /// The connection name of the instance it was issued for.
    instance: String,
    /// The service account of the access token sent with the request (IAM login).
    iam_user: Option<String>,
    token_digest: Option<[u8; 32]>,
    not_after: SystemTime,
}

/// State shared by the Admin API and the instances.
pub(crate) struct Shared {
    config: CloudSqlConfig,
    pki: pki::Pki,
    verifier: Verifier,
    /// Issued certificates by the SHA-256 of their DER.
    bindings: Mutex<HashMap<[u8; 32], Binding>>,
    connections: Records<Connection>,
    admin_calls: Mutex<Vec<AdminCall>>,
}

impl Shared {
    fn record_connection(&self, connection: Connection) {
        self.connections.push(connection);
    }

    fn record_admin(&self, method: &str, status: axum::http::StatusCode) {
        lock(&self.admin_calls).push(AdminCall {
            method: method.to_owned(),
            status: status.as_u16(),
        });
    }

    fn bind(&self, certificate_der: &[u8], binding: Binding) {
        let mut bindings = lock(&self.bindings);
        let now = SystemTime::now();
        bindings.retain(|_, b| b.not_after > now);
        bindings.insert(digest(certificate_der), binding);
    }

    fn binding(&self, certificate_der: &[u8]) -> Option<Binding> {
        lock(&self.bindings).get(&digest(certificate_der)).cloned()
    }
}

/// Running Admin API and instance doubles. Dropping the handle stops them.
pub struct CloudSqlDoubles {
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    admin: Option<JoinHandle<()>>,
    instances: Vec<JoinHandle<()>>,
}

impl CloudSqlDoubles {
    /// Starts the Admin API and one server-side proxy per instance, checking tokens with the
    /// Google doubles at `tokeninfo_url`.
    pub async fn start(config: CloudSqlConfig, tokeninfo_url: &str) -> std::io::Result<Self> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        let mut listens = Vec::new();
        for instance in &config.instances {
            if instance.parts().is_none() {
                return Err(invalid(format!(
                    "instance {:?} is not project:region:instance",
                    instance.connection_name
                )));
            }
            if instance::Engine::of(&instance.database_version).is_none() {
                return Err(invalid(format!(
                    "instance {}: only PostgreSQL and MySQL engines are served, not {}",
                    instance.connection_name, instance.database_version
                )));
            }
            if listens.contains(&instance.listen) {
                return Err(invalid(format!(
                    "two instances listen on {}: give each its own address",
                    instance.listen
                )));
            }
            listens.push(instance.listen);
        }
        let pki = pki::Pki::new().map_err(|e| invalid(format!("certificates: {e}")))?;
        let verifier = Verifier::new(tokeninfo_url).map_err(std::io::Error::other)?;
        let admin_listener = tokio::net::TcpListener::bind(config.admin_listen).await?;
        let admin_addr = admin_listener.local_addr()?;
        let mut servers = Vec::new();
        for instance in &config.instances {
            let tls = pki.server_config(instance).map_err(invalid)?;
            let listener = tokio::net::TcpListener::bind(instance.listen).await?;
            let engine = instance::Engine::of(&instance.database_version)
                .unwrap_or(instance::Engine::PostgreSql);
            servers.push((instance.connection_name.clone(), engine, listener, tls));
        }
        let shared = Arc::new(Shared {
            config,
            pki,
            verifier,
            bindings: Mutex::default(),
            connections: Records::default(),
            admin_calls: Mutex::default(),
        });

        let (shutdown, stopped) = oneshot::channel::<()>();
        let app = admin::router(shared.clone());
        let admin = tokio::spawn(async move {
            let serve = axum::serve(admin_listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                eprintln!("[cloudsql] admin API stopped: {e}");
            }
        });
        let instances = servers
            .into_iter()
            .map(|(name, engine, listener, tls)| {
                eprintln!(
                    "[cloudsql] instance {name} on {}",
                    listener
                        .local_addr()
                        .map_or_else(|e| e.to_string(), |a| a.to_string())
                );
                tokio::spawn(instance::serve(
                    name,
                    engine,
                    listener,
                    tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
                    shared.clone(),
                ))
            })
            .collect();
        eprintln!("[cloudsql] admin API on http://{admin_addr}");
        Ok(CloudSqlDoubles {
            admin_addr,
            shared,
            shutdown: Some(shutdown),
            admin: Some(admin),
            instances,
        })
    }

    /// `http://127.0.0.1:PORT/`, for `--sqladmin-api-endpoint`.
    pub fn admin_url(&self) -> String {
        format!("http://{}/", self.admin_addr)
    }

    /// The server CA's certificate (PEM), `serverCaCert` of every instance.
    pub fn server_ca_pem(&self) -> String {
        self.shared.pki.server_ca_pem()
    }

    /// Every connection the instances saw, in order of setup completion.
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
            .reaching(count, within, "cloudsql connections")
            .await
    }

    /// Every Admin API call, in order.
    pub fn admin_calls(&self) -> Vec<AdminCall> {
        lock(&self.shared.admin_calls).clone()
    }

    /// Stops every server and waits for the Admin API to finish.
    pub async fn shutdown(mut self) {
        for instance in &self.instances {
            instance.abort();
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(admin) = self.admin.take() {
            let _ = admin.await;
        }
    }
}

impl Drop for CloudSqlDoubles {
    fn drop(&mut self) {
        for instance in &self.instances {
            instance.abort();
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

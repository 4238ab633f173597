//! An instance double: the server-side proxy of a Cloud SQL instance on port 3307.
//!
//! Per connection: a TLS 1.3 handshake that requires a valid client certificate from the
//! client CA; the certificate must be one `generateEphemeralCert` issued for this instance,
//! with an IAM identity bound to it; then the PostgreSQL startup, whose `user` must be that
//! service account's IAM database user (`SA@PROJECT.iam`), or for a MySQL instance the
//! server's greeting and the client's handshake response, whose user must be the service
//! account's name before the `@`; then the bytes are relayed to the configured PostgreSQL or
//! MySQL-compatible server. Every connection is recorded with its outcome.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::mysql::{self, Handshake};
use super::{Connection, Shared};
use crate::alloydb::Outcome;
use crate::alloydb::instance::{connect_postgres, postgres_startup};
use crate::alloydb::tokens::iam_db_user;

/// Time allowed from TCP accept to the end of the PostgreSQL startup.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections for `instance` until the task is aborted; dropping the set aborts
/// every connection.
pub(super) async fn serve(
    instance: String,
    engine: Engine,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let acceptor = acceptor.clone();
                    let shared = shared.clone();
                    let instance = instance.clone();
                    connections.spawn(async move {
                        handle(instance, engine, stream, acceptor, shared).await
                    });
                }
                Err(e) => {
                    eprintln!("[cloudsql] accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The instance's database engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    PostgreSql,
    MySql,
}

impl Engine {
    /// The engine of a `databaseVersion` (`POSTGRES_16`, `MYSQL_8_0`), if served here.
    pub fn of(database_version: &str) -> Option<Engine> {
        if database_version.starts_with("POSTGRES_") {
            Some(Engine::PostgreSql)
        } else if database_version.starts_with("MYSQL_") {
            Some(Engine::MySql)
        } else {
            None
        }
    }
}

async fn handle(
    instance: String,
    engine: Engine,
    stream: TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) {
    let mut record = Connection {
        instance: instance.clone(),
        outcome: Outcome::Accepted,
        service_account: None,
        db_user: None,
        token_digest: None,
    };
    let setup = tokio::time::timeout(
        SETUP_TIMEOUT,
        setup(&instance, engine, stream, &acceptor, &shared, &mut record),
    )
    .await
    .unwrap_or_else(|_| Err("the connection setup timed out".to_owned()));
    let relay = match setup {
        Ok(relay) => {
            eprintln!(
                "[cloudsql] {instance}: connection accepted for {}",
                record.db_user.as_deref().unwrap_or("?")
            );
            Some(relay)
        }
        Err(reason) => {
            eprintln!("[cloudsql] {instance}: connection refused: {reason}");
            record.outcome = Outcome::Refused(reason);
            None
        }
    };
    shared.record_connection(record);
    if let Some((mut client, mut upstream)) = relay {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

type Client = tokio_rustls::server::TlsStream<TcpStream>;

/// Everything up to the relay: the two ends, or why the connection was refused.
async fn setup(
    instance: &str,
    engine: Engine,
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    shared: &Shared,
    record: &mut Connection,
) -> Result<(Client, TcpStream), String> {
    let mut tls = acceptor
        .accept(stream)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| "the client presented no certificate".to_owned())?;
    let binding = shared.binding(&certificate).ok_or_else(|| {
        "the client certificate was not issued by generateEphemeralCert".to_owned()
    })?;
    if binding.instance != instance {
        return Err(format!(
            "the client certificate was issued for {}, not {instance}",
            binding.instance
        ));
    }
    if binding.not_after <= SystemTime::now() {
        return Err("the client certificate has expired".to_owned());
    }
    record.token_digest = binding.token_digest;
    let email = binding.iam_user.ok_or_else(|| {
        "the client certificate carries no IAM identity (it was requested without an \
         access_token), and built-in database users are not served here"
            .to_owned()
    })?;
    let upstream = match engine {
        Engine::PostgreSql => {
            let db_user = iam_db_user(&email).to_owned();
            record.service_account = Some(email);
            let packet = postgres_startup(&mut tls, &db_user, &mut record.db_user).await?;
            connect_postgres(&mut tls, shared.config.postgres, &packet).await?
        }
        Engine::MySql => {
            let db_user = email.split('@').next().unwrap_or_default().to_owned();
            record.service_account = Some(email);
            mysql_handshake(&mut tls, &db_user, shared, &mut record.db_user).await?
        }
    };
    Ok((tls, upstream))
}

/// The MySQL handshake between the client and the server at `config.mysql`: the server's
/// greeting (without `CLIENT_SSL`) goes to the client, the client's response must name
/// `db_user` and then goes to the server. The connection to the server, or why not (the client
/// was told).
async fn mysql_handshake(
    tls: &mut Client,
    db_user: &str,
    shared: &Shared,
    seen_user: &mut Option<String>,
) -> Result<TcpStream, String> {
    let refuse = |sequence: u8, message: &str| {
        mysql::error_packet(sequence, mysql::ACCESS_DENIED, "28000", message)
    };
    let Some(server) = shared.config.mysql else {
        let message = "the instance has no database server to relay to";
        let _ = tls.write_all(&refuse(0, message)).await;
        return Err(message.to_owned());
    };
    let mut upstream = TcpStream::connect(server)
        .await
        .map_err(|e| format!("connecting to the MySQL server at {server}: {e}"))?;
    let mut greeting = mysql::read_packet(&mut upstream).await?;
    mysql::without_ssl(&mut greeting.payload)?;
    tls.write_all(&greeting.to_bytes())
        .await
        .map_err(|e| format!("relaying the server greeting: {e}"))?;
    let response = mysql::read_packet(tls).await?;
    let next = response.sequence.wrapping_add(1);
    let refusal = match mysql::parse_handshake_response(&response.payload) {
        Err(e) => Some(e),
        Ok(Handshake::SslRequest) => Some(
            "TLS inside the connection is not offered: the connection is already TLS".to_owned(),
        ),
        Ok(Handshake::Response { user }) => {
            *seen_user = Some(user.clone());
            (user != db_user).then(|| {
                format!(
                    "user {user:?} does not match the IAM database user {db_user:?} of the \
                     authenticated principal"
                )
            })
        }
    };
    if let Some(message) = refusal {
        let _ = tls.write_all(&refuse(next, &message)).await;
        let _ = tls.shutdown().await;
        return Err(message);
    }
    upstream
        .write_all(&response.to_bytes())
        .await
        .map_err(|e| format!("relaying the handshake response: {e}"))?;
    Ok(upstream)
}

//! The instance double: the server-side proxy of an AlloyDB instance on port 5433.
//!
//! Per connection: a TLS 1.3 handshake that requires a client certificate chained to the
//! cluster's CA; the metadata exchange ([`super::mdx`]), accepted only for `AUTO_IAM` with a
//! live token of an allowed service account that carries the `alloydb.login` scope; then the
//! PostgreSQL startup, whose `user` must be that service account's IAM database user; then the
//! bytes are relayed to the configured PostgreSQL server. Every connection is recorded with its
//! outcome. Injected faults ([`super::faults`]) delay or refuse the metadata exchange.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::faults::Target;
use super::mdx::{self, AuthType};
use super::pg::{self, Startup};
use super::tokens::{TokenError, iam_db_user};
use super::{Connection, Outcome, Shared, token_digest};
use crate::faults::Fault;

/// The scope a token needs for automatic IAM database login.
pub const ALLOYDB_LOGIN: &str = "https://www.googleapis.com/auth/alloydb.login";

/// Time allowed from TCP accept to the end of the PostgreSQL startup.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until the task is aborted; dropping the set aborts every connection.
pub(super) async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let acceptor = acceptor.clone();
                    let shared = shared.clone();
                    connections.spawn(async move { handle(stream, acceptor, shared).await });
                }
                Err(e) => {
                    eprintln!("[alloydb] accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// What the setup phase learned, for the record.
#[derive(Default)]
struct Seen {
    auth_type: Option<AuthType>,
    user_agent: Option<String>,
    service_account: Option<String>,
    db_user: Option<String>,
    token_digest: Option<[u8; 32]>,
}

async fn handle(stream: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let mut seen = Seen::default();
    let setup = tokio::time::timeout(SETUP_TIMEOUT, setup(stream, &acceptor, &shared, &mut seen))
        .await
        .unwrap_or_else(|_| Err("the connection setup timed out".to_owned()));
    let (outcome, relay) = match setup {
        Ok(relay) => (Outcome::Accepted, Some(relay)),
        Err(reason) => (Outcome::Refused(reason), None),
    };
    match &outcome {
        Outcome::Accepted => eprintln!(
            "[alloydb] connection accepted for {}",
            seen.db_user.as_deref().unwrap_or("?")
        ),
        Outcome::Refused(reason) => eprintln!("[alloydb] connection refused: {reason}"),
    }
    shared.record_connection(Connection {
        outcome,
        auth_type: seen.auth_type,
        user_agent: seen.user_agent,
        service_account: seen.service_account,
        db_user: seen.db_user,
        token_digest: seen.token_digest,
    });
    if let Some((mut client, mut upstream)) = relay {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

type Client = tokio_rustls::server::TlsStream<TcpStream>;

/// Everything up to the relay: the two ends, or why the connection was refused.
async fn setup(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    shared: &Shared,
    seen: &mut Seen,
) -> Result<(Client, TcpStream), String> {
    let mut tls = acceptor
        .accept(stream)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;

    let message = read_frame(&mut tls).await?;
    let request = match mdx::decode_request(&message) {
        Ok(request) => request,
        Err(e) => {
            let _ = answer(&mut tls, mdx::Response::error(e.to_string())).await;
            return Err(e.to_string());
        }
    };
    seen.auth_type = Some(request.auth_type);
    seen.user_agent = Some(request.user_agent.clone());
    seen.token_digest = Some(token_digest(&request.oauth2_token));
    match shared.take_fault(Target::Instance) {
        Some(Fault::Delay { millis, .. }) => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
        Some(Fault::Reject { .. } | Fault::Status { .. }) => {
            let reason = "injected fault: the instance refuses the connection".to_owned();
            let _ = answer(&mut tls, mdx::Response::error(reason.clone())).await;
            return Err(reason);
        }
        None => {}
    }
    let service_account = match check_exchange(shared, &request).await {
        Ok(email) => email,
        Err(reason) => {
            let _ = answer(&mut tls, mdx::Response::error(reason.clone())).await;
            return Err(reason);
        }
    };
    let db_user = iam_db_user(&service_account).to_owned();
    seen.service_account = Some(service_account);
    answer(&mut tls, mdx::Response::ok()).await?;

    let packet = postgres_startup(&mut tls, &db_user, &mut seen.db_user).await?;
    let upstream = connect_postgres(&mut tls, shared.postgres(), &packet).await?;
    Ok((tls, upstream))
}

/// The PostgreSQL startup on a connection already protected by TLS: encryption requests are
/// declined, the startup message must name `db_user` (what it named goes to `seen_user`). The
/// packet to relay, or why the connection was refused (the client was told).
pub(crate) async fn postgres_startup<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &mut S,
    db_user: &str,
    seen_user: &mut Option<String>,
) -> Result<Vec<u8>, String> {
    loop {
        let mut header = [0u8; 4];
        tls.read_exact(&mut header)
            .await
            .map_err(|e| format!("reading the PostgreSQL startup: {e}"))?;
        let len = pg::startup_length(header)?;
        let mut packet = header.to_vec();
        packet.resize(len, 0);
        tls.read_exact(&mut packet[4..])
            .await
            .map_err(|e| format!("reading the PostgreSQL startup: {e}"))?;
        match pg::parse_startup(&packet)? {
            Startup::Ssl | Startup::GssEnc => {
                tls.write_all(b"N")
                    .await
                    .map_err(|e| format!("answering an encryption request: {e}"))?;
            }
            Startup::Cancel => return Ok(packet),
            Startup::Startup { user, .. } => {
                *seen_user = user.clone();
                if user.as_deref() != Some(db_user) {
                    let message = format!(
                        "user {:?} does not match the IAM database user {db_user:?} of the \
                         authenticated principal",
                        user.as_deref().unwrap_or("")
                    );
                    let _ = tls
                        .write_all(&pg::error_response(pg::INVALID_AUTHORIZATION, &message))
                        .await;
                    let _ = tls.shutdown().await;
                    return Err(message);
                }
                return Ok(packet);
            }
        }
    }
}

/// A connection to the PostgreSQL server at `postgres` with `packet` sent, or why not (the
/// client was told when there is no server).
pub(crate) async fn connect_postgres<S: AsyncWrite + Unpin>(
    tls: &mut S,
    postgres: Option<std::net::SocketAddr>,
    packet: &[u8],
) -> Result<TcpStream, String> {
    let Some(postgres) = postgres else {
        let message = "the instance has no database server to relay to";
        let _ = tls.write_all(&pg::error_response("57P03", message)).await;
        return Err(message.to_owned());
    };
    let mut upstream = TcpStream::connect(postgres)
        .await
        .map_err(|e| format!("connecting to PostgreSQL at {postgres}: {e}"))?;
    upstream
        .write_all(packet)
        .await
        .map_err(|e| format!("relaying the startup to PostgreSQL: {e}"))?;
    Ok(upstream)
}

/// The service account the request's token stands for, once everything checks out.
async fn check_exchange(shared: &Shared, request: &mdx::Request) -> Result<String, String> {
    if request.auth_type != AuthType::AutoIam {
        return Err(format!(
            "auth_type {:?} is not accepted: this instance only allows automatic IAM database \
             authentication (AUTO_IAM)",
            request.auth_type
        ));
    }
    if request.oauth2_token.is_empty() {
        return Err("the request carries no OAuth2 token".to_owned());
    }
    let facts = match shared.verifier.check(&request.oauth2_token).await {
        Ok(facts) => facts,
        Err(TokenError::Invalid) => {
            return Err("the OAuth2 token is invalid or expired".to_owned());
        }
        Err(TokenError::Unavailable(e)) => {
            return Err(format!("the OAuth2 token could not be checked: {e}"));
        }
    };
    let Some(email) = facts.email.clone() else {
        return Err("the OAuth2 token does not belong to a service account".to_owned());
    };
    if !shared.config.service_accounts.contains(&email) {
        return Err(format!(
            "{email} is not allowed to connect to this instance"
        ));
    }
    if !facts.has_scope(ALLOYDB_LOGIN) {
        return Err(format!(
            "the OAuth2 token lacks the scope {ALLOYDB_LOGIN} needed for IAM database login"
        ));
    }
    Ok(email)
}

async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, String> {
    let mut header = [0u8; 4];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| format!("reading the metadata exchange request: {e}"))?;
    let len = u32::from_be_bytes(header) as usize;
    if len > mdx::MAX_MESSAGE {
        return Err(format!(
            "metadata exchange request of {len} bytes exceeds {}",
            mdx::MAX_MESSAGE
        ));
    }
    let mut message = vec![0u8; len];
    stream
        .read_exact(&mut message)
        .await
        .map_err(|e| format!("reading the metadata exchange request: {e}"))?;
    Ok(message)
}

/// Writes a framed response in one write, so the client reads it from one TLS record.
async fn answer(
    stream: &mut (impl AsyncWrite + Unpin),
    response: mdx::Response,
) -> Result<(), String> {
    stream
        .write_all(&mdx::frame(&mdx::encode_response(&response)))
        .await
        .map_err(|e| format!("answering the metadata exchange: {e}"))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("answering the metadata exchange: {e}"))
}

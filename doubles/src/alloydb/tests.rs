//! The doubles over the wire: the Admin API's answers to right and wrong requests, and the
//! instance's handshake, metadata exchange, user check and relay, driven by a rustls client
//! with a certificate from the Admin API. Tokens come from a small stand-in `/tokeninfo`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, State as Extract};
use axum::response::IntoResponse;
use axum::routing::get;
use rcgen::{KeyPair, PKCS_RSA_SHA256, RsaKeySize};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::mdx::{self, AuthType};
use super::{AlloyDbConfig, AlloyDbDoubles, InstanceConfig, Outcome};

const INSTANCE: &str = "projects/p/locations/r/clusters/c/instances/i";
const CLUSTER: &str = "projects/p/locations/r/clusters/c";
const SA: &str = "app@p.iam.gserviceaccount.com";
const CLOUD: &str = "https://www.googleapis.com/auth/cloud-platform";
const LOGIN: &str = "https://www.googleapis.com/auth/alloydb.login";

/// Tokens the stand-in issuer knows: value → (email, scopes).
fn tokens() -> HashMap<String, (Option<&'static str>, String)> {
    HashMap::from([
        ("good".to_owned(), (Some(SA), format!("{CLOUD} {LOGIN}"))),
        ("no-login".to_owned(), (Some(SA), CLOUD.to_owned())),
        ("no-cloud".to_owned(), (Some(SA), LOGIN.to_owned())),
        (
            "stranger".to_owned(),
            (
                Some("other@p.iam.gserviceaccount.com"),
                format!("{CLOUD} {LOGIN}"),
            ),
        ),
        ("federated".to_owned(), (None, format!("{CLOUD} {LOGIN}"))),
    ])
}

async fn tokeninfo_server() -> String {
    type Known = Arc<HashMap<String, (Option<&'static str>, String)>>;
    async fn answer(
        Extract(known): Extract<Known>,
        Query(query): Query<HashMap<String, String>>,
    ) -> axum::response::Response {
        match query.get("access_token").and_then(|t| known.get(t)) {
            Some((email, scope)) => {
                let mut body = json!({"scope": scope, "expires_in": 600});
                if let Some(email) = email {
                    body["email"] = json!(email);
                }
                axum::Json(body).into_response()
            }
            None => (
                axum::http::StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "invalid_token"})),
            )
                .into_response(),
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/tokeninfo", get(answer))
        .with_state(Arc::new(tokens()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/tokeninfo")
}

/// A stand-in database server that records the first bytes it receives and answers `Z`.
async fn upstream() -> (SocketAddr, tokio::sync::oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        stream.write_all(b"Z").await.unwrap();
        let _ = tx.send(buf[..n].to_vec());
    });
    (addr, rx)
}

async fn start(postgres: Option<SocketAddr>) -> AlloyDbDoubles {
    let config = AlloyDbConfig {
        instance_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        postgres,
        ..AlloyDbConfig::default()
    }
    .instance(InstanceConfig::psc(INSTANCE, "localhost"))
    .service_account(SA);
    AlloyDbDoubles::start(config, &tokeninfo_server().await)
        .await
        .unwrap()
}

async fn call(
    doubles: &AlloyDbDoubles,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut request = client.request(
        method,
        format!(
            "{}/v1alpha/{path}?%24alt=json%3Benum-encoding%3Dint",
            doubles.admin_url()
        ),
    );
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn certificate_request(key: &KeyPair) -> Value {
    json!({"parent": CLUSTER, "publicKey": key.public_key_pem(), "certDuration": "3600s",
           "useMetadataExchange": true})
}

#[tokio::test]
async fn the_admin_api_answers_only_what_google_would() {
    let doubles = start(None).await;
    let info = format!("{INSTANCE}/connectionInfo");
    let (status, body) = call(&doubles, reqwest::Method::GET, &info, Some("good"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pscDnsName"], "localhost");
    assert!(body["instanceUid"].is_string());

    for (token, want) in [
        (None, 401),
        (Some("unknown"), 401),
        (Some("no-cloud"), 403),
        (Some("stranger"), 403),
        (Some("federated"), 403),
    ] {
        let (status, body) = call(&doubles, reqwest::Method::GET, &info, token, None).await;
        assert_eq!(status, want, "{token:?}: {body}");
        assert_eq!(body["error"]["code"], want);
        assert!(body["error"]["status"].is_string());
    }
    let missing = "projects/p/locations/r/clusters/c/instances/other/connectionInfo";
    let (status, _) = call(&doubles, reqwest::Method::GET, missing, Some("good"), None).await;
    assert_eq!(status, 404);

    let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap();
    let generate = format!("{CLUSTER}:generateClientCertificate");
    let post = reqwest::Method::POST;
    let (status, body) = call(
        &doubles,
        post.clone(),
        &generate,
        Some("good"),
        Some(certificate_request(&key)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pemCertificateChain"].as_array().unwrap().len(), 3);
    assert_eq!(body["caCert"], doubles.ca_pem());

    let wrong_size = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_3072).unwrap();
    let mut no_mdx = certificate_request(&key);
    no_mdx["useMetadataExchange"] = json!(false);
    for (path, body) in [
        (generate.as_str(), certificate_request(&wrong_size)),
        (generate.as_str(), no_mdx),
    ] {
        let (status, answer) = call(&doubles, post.clone(), path, Some("good"), Some(body)).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["status"], "INVALID_ARGUMENT");
    }
    let other = "projects/p/locations/r/clusters/d:generateClientCertificate";
    let mut body = certificate_request(&key);
    body["parent"] = json!("projects/p/locations/r/clusters/d");
    let (status, _) = call(&doubles, post, other, Some("good"), Some(body)).await;
    assert_eq!(status, 404);
    let calls = doubles.admin_calls();
    assert!(
        calls
            .iter()
            .any(|c| c.method == "generateClientCertificate" && c.status == 200)
    );
}

/// A TLS client of the instance with a certificate from the Admin API.
async fn connect(doubles: &AlloyDbDoubles) -> tokio_rustls::client::TlsStream<TcpStream> {
    let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap();
    let generate = format!("{CLUSTER}:generateClientCertificate");
    let (status, body) = call(
        doubles,
        reqwest::Method::POST,
        &generate,
        Some("good"),
        Some(certificate_request(&key)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let chain: Vec<CertificateDer<'static>> = body["pemCertificateChain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pem| CertificateDer::from_pem_slice(pem.as_str().unwrap().as_bytes()).unwrap())
        .collect();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(doubles.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let tcp = TcpStream::connect(doubles.instance_addr()).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

async fn exchange(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
    auth_type: AuthType,
    token: &str,
) -> mdx::Response {
    let request = mdx::Request {
        user_agent: "test".into(),
        auth_type,
        oauth2_token: token.into(),
    };
    stream
        .write_all(&mdx::frame(&mdx::encode_request(&request)))
        .await
        .unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).await.unwrap();
    mdx::decode_response(&body).unwrap()
}

fn startup(user: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(format!("user\0{user}\0database\0postgres\0\0").as_bytes());
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

#[tokio::test]
async fn the_instance_admits_only_auto_iam_logins_of_the_token_s_iam_user() {
    let (postgres, received) = upstream().await;
    let doubles = start(Some(postgres)).await;

    for (auth_type, token, reason) in [
        (AuthType::DbNative, "good", "AUTO_IAM"),
        (AuthType::AutoIam, "unknown", "invalid or expired"),
        (AuthType::AutoIam, "no-login", "alloydb.login"),
        (AuthType::AutoIam, "stranger", "not allowed"),
    ] {
        let mut stream = connect(&doubles).await;
        let response = exchange(&mut stream, auth_type, token).await;
        assert_eq!(response.response_code, mdx::ResponseCode::Error);
        assert!(response.error.contains(reason), "{}", response.error);
        assert!(!response.error.contains(token) || token == "good");
    }

    // Right token, wrong database user: a PostgreSQL FATAL error.
    let mut stream = connect(&doubles).await;
    let response = exchange(&mut stream, AuthType::AutoIam, "good").await;
    assert_eq!(response, mdx::Response::ok());
    stream.write_all(&startup("postgres")).await.unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    assert_eq!(reply.first(), Some(&b'E'));
    assert!(String::from_utf8_lossy(&reply).contains("28000"));

    // Right everything: an SSLRequest is declined, the startup message is relayed.
    let mut stream = connect(&doubles).await;
    let response = exchange(&mut stream, AuthType::AutoIam, "good").await;
    assert_eq!(response, mdx::Response::ok());
    stream
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut n = [0u8; 1];
    stream.read_exact(&mut n).await.unwrap();
    assert_eq!(&n, b"N");
    stream.write_all(&startup("app@p.iam")).await.unwrap();
    let mut z = [0u8; 1];
    stream.read_exact(&mut z).await.unwrap();
    assert_eq!(&z, b"Z");
    assert_eq!(received.await.unwrap(), startup("app@p.iam"));

    // A client can learn of its refusal before the instance records it.
    let seen = doubles
        .connections_reaching(6, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(seen.len(), 6);
    assert_eq!(
        seen.iter()
            .filter(|c| c.outcome == Outcome::Accepted)
            .count(),
        1
    );
    let accepted = seen
        .iter()
        .find(|c| c.outcome == Outcome::Accepted)
        .unwrap();
    assert_eq!(accepted.auth_type, Some(AuthType::AutoIam));
    assert_eq!(accepted.service_account.as_deref(), Some(SA));
    assert!(accepted.used_token("good"));
    assert!(!accepted.used_token("no-login"));
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_at_the_handshake() {
    let doubles = start(None).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(doubles.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(doubles.instance_addr()).await.unwrap();
    // TLS 1.3 clients learn of the refusal on their first read.
    if let Ok(mut stream) = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    {
        let mut buf = [0u8; 1];
        assert!(!matches!(stream.read(&mut buf).await, Ok(1)));
    }
    let seen = doubles
        .connections_reaching(1, std::time::Duration::from_secs(10))
        .await
        .expect("the refused handshake is recorded");
    assert!(
        matches!(&seen[0].outcome, Outcome::Refused(r) if r.contains("TLS handshake")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn injected_faults_hit_the_next_requests_then_stop() {
    use crate::faults::Fault;

    use super::Target;

    let (postgres, _received) = upstream().await;
    let doubles = start(Some(postgres)).await;
    let info = format!("{INSTANCE}/connectionInfo");
    doubles.inject(
        Target::Admin,
        Fault::Status {
            code: 503,
            retry_after: Some(2),
            count: 1,
        },
    );
    doubles.inject(Target::Admin, Fault::Reject { count: 1 });
    let get = reqwest::Method::GET;
    let (status, body) = call(&doubles, get.clone(), &info, Some("good"), None).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["status"], "UNAVAILABLE");
    let (status, _) = call(&doubles, get.clone(), &info, Some("good"), None).await;
    assert_eq!(status, 403);
    let (status, _) = call(&doubles, get, &info, Some("good"), None).await;
    assert_eq!(status, 200);
    assert!(doubles.pending_faults(Target::Admin).is_empty());

    doubles.inject(Target::Instance, Fault::Reject { count: 1 });
    let mut stream = connect(&doubles).await;
    let response = exchange(&mut stream, AuthType::AutoIam, "good").await;
    assert_eq!(response.response_code, mdx::ResponseCode::Error);
    assert!(response.error.contains("injected"), "{}", response.error);
    let mut stream = connect(&doubles).await;
    let response = exchange(&mut stream, AuthType::AutoIam, "good").await;
    assert_eq!(response, mdx::Response::ok());

    doubles.inject(Target::Instance, Fault::Reject { count: 5 });
    doubles.clear_faults();
    assert!(doubles.pending_faults(Target::Instance).is_empty());
}

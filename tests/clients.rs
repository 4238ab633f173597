//! The client matrix: Google's own libraries, unchanged and used the way their documentation
//! shows, against both servers of the metadata protocol — `fedcred metadata-server` on a Secret
//! volume laid out as the kubelet lays it out, and `fedcred agent` holding the token in memory —
//! with nothing but the environment the webhook injected into an opted-in pod, read back from
//! the real API server (its port pointed at the emulator under test), and an empty HOME.
//!
//! Each client must (1) find application-default credentials, (2) call a Google API double with
//! them, which checks that the bearer token is live and the service account's, and (3) obtain
//! an ID token for an audience, which a receiving service then verifies with google-auth's own
//! verifier against the signer's published certificates (signature, `aud`, `exp`), and whose
//! `email` and `iss` are checked here.
//!
//! The AWS side is moto plus an IMDSv2 fake serving the instance role, as in `tests/agent.rs`;
//! the sidecar's Secret holds the agent's impersonated token, as the controller would write it.
//!
//! Clients: Python google-auth and google-cloud-storage (`$FEDCRED_TEST_VENV`,
//! `hack/install-tools.sh`), Go
//! `golang.org/x/oauth2/google`, `cloud.google.com/go/compute/metadata` and
//! `google.golang.org/api/idtoken` (`tests/go/clients`), Node `google-auth-library`
//! (`tests/node/clients`), Java `google-auth-library-oauth2-http` (`tests/java/clients`), each
//! built or installed from its registry by `hack/build-clients.sh` into the cache.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use fedcred_core::metadata::{injected_env, project_env};
use fedcred_doubles::aws_metadata::Imds;
use fedcred_doubles::{Binding, role_member, service_account_member};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use support::TestNamespace;
use support::cloud::{ASSUMED_ROLE, AUDIENCE, Cloud, ROLE, SA_EMAIL};
use support::free_port;
use support::pod::{SecretVolume, StoredPod, run_with_only, unique, venv_python};
use support::webhook::{Registration, Server as WebhookServer};

const TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
const IDENTITY: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";
/// The role of the instance the agent runs on.
/// Where the services the ID tokens are for live.
const SERVICE: &str = "https://orders-api-abc123-an.a.run.app";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_google_auth_gets_access_and_id_tokens_from_the_sidecar_and_the_agent() {
    let scene = Scene::start().await;
    for (server, listen) in scene.servers() {
        let audience = format!("{SERVICE}/python/{server}");
        let found = run_client(
            Command::new(venv_python())
                .arg(support::repo_root().join("tests/python/id_token_client.py")),
            listen,
            &[scene.cloud.google.api_url("acme-shop"), audience.clone()],
        );
        assert_eq!(
            found["class"], "google.auth.compute_engine.credentials.Credentials",
            "{server}"
        );
        assert_eq!(found["project"], "acme-shop", "{server}");
        assert_eq!(found["storage_project"], "acme-shop", "{server}");
        assert_eq!(found["buckets"], json!([]), "{server}");
        scene.assert_api_call(&found, server);
        scene.assert_id_token(found["id_token"].as_str().unwrap(), &audience, server);
    }
    scene.assert_no_token_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_libraries_get_access_and_id_tokens_from_the_sidecar_and_the_agent() {
    let binary = go_clients();
    let scene = Scene::start().await;
    for (server, listen) in scene.servers() {
        let audience = format!("{SERVICE}/go/{server}");
        let found = run_client(
            &mut Command::new(&binary),
            listen,
            &[scene.cloud.google.api_url("acme-shop"), audience.clone()],
        );
        assert_eq!(found["adc_project"], "acme-shop", "{server}");
        assert_eq!(found["on_gce"], true, "{server}");
        assert_eq!(found["project_id"], "acme-shop", "{server}");
        assert_eq!(found["email"], SA_EMAIL, "{server}");
        assert_eq!(
            found["scopes"],
            json!(["https://www.googleapis.com/auth/cloud-platform"]),
            "{server}"
        );
        // instance/zone is deliberately not defined: Go sees NotDefinedError, not a failure.
        assert_eq!(found["zone_not_defined"], true, "{server}");
        let mut found = found;
        found["token"] = found["adc_token"].clone();
        scene.assert_api_call(&found, server);
        scene.assert_id_token(found["id_token"].as_str().unwrap(), &audience, server);
    }
    scene.assert_no_token_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_google_auth_library_gets_access_and_id_tokens_from_the_sidecar_and_the_agent() {
    let program = node_clients().join("index.js");
    let scene = Scene::start().await;
    for (server, listen) in scene.servers() {
        let audience = format!("{SERVICE}/node/{server}");
        let found = run_client(
            Command::new("node").arg(&program),
            listen,
            &[scene.cloud.google.api_url("acme-shop"), audience.clone()],
        );
        assert_eq!(found["class"], "Compute", "{server}");
        assert_eq!(found["project"], "acme-shop", "{server}");
        assert_eq!(found["email"], SA_EMAIL, "{server}");
        scene.assert_api_call(&found, server);
        scene.assert_id_token(found["id_token"].as_str().unwrap(), &audience, server);
    }
    scene.assert_no_token_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_google_auth_library_gets_access_and_id_tokens_from_the_sidecar_and_the_agent() {
    let lib = java_clients();
    let program = support::repo_root().join("tests/java/clients/Clients.java");
    let scene = Scene::start().await;
    for (server, listen) in scene.servers() {
        let audience = format!("{SERVICE}/java/{server}");
        let found = run_client(
            Command::new("java")
                .arg("-cp")
                .arg(lib.join("*"))
                .arg(&program),
            listen,
            &[scene.cloud.google.api_url("acme-shop"), audience.clone()],
        );
        assert_eq!(
            found["class"], "com.google.auth.oauth2.ComputeEngineCredentials",
            "{server}"
        );
        assert_eq!(found["email"], SA_EMAIL, "{server}");
        scene.assert_api_call(&found, server);
        scene.assert_id_token(found["id_token"].as_str().unwrap(), &audience, server);
    }
    scene.assert_no_token_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_tokens_are_minted_once_per_audience_and_refused_with_the_reason() {
    let scene = Scene::start().await;
    for (server, listen) in scene.servers() {
        let get = |path: &str| raw_get(listen, path);
        let before = scene.cloud.google.id_tokens_issued();
        let path = format!("{IDENTITY}?audience={SERVICE}/cached&format=full");
        let started = Instant::now();
        let first = get(&path);
        let minted = started.elapsed();
        assert_eq!(first.0, 200, "{server}: {first:?}");
        let started = Instant::now();
        for _ in 0..100 {
            let again = get(&path);
            assert_eq!(again, first, "{server}: the cached token is served again");
        }
        // Evidence for BENCHMARKS.md ("ID tokens"), not a timed assertion.
        eprintln!(
            "{server}: first ID token (minted) {minted:?}, cached {:?} per request",
            started.elapsed() / 100
        );
        assert_eq!(
            scene.cloud.google.id_tokens_issued(),
            before + 1,
            "{server}"
        );
        // Another audience, or the same without the email, is another token.
        let standard = get(&format!("{IDENTITY}?audience={SERVICE}/cached"));
        assert_eq!(standard.0, 200, "{server}: {standard:?}");
        assert_ne!(standard.1, first.1);
        assert_eq!(
            scene.cloud.google.id_tokens_issued(),
            before + 2,
            "{server}"
        );
        let claims = scene.verify(&standard.1, &format!("{SERVICE}/cached"));
        assert!(claims.get("email").is_none(), "{server}: {claims}");

        let missing = get(IDENTITY);
        assert_eq!(missing.0, 400, "{server}: {missing:?}");
        assert!(missing.1.contains("audience"), "{server}: {missing:?}");
    }

    // A federated token (no service account) cannot be turned into an ID token.
    let mut federated = SecretVolume::kubelet();
    let token = scene.agent_token();
    federated.publish(&[
        ("access_token", token.as_str()),
        ("expiry", &in_secs(600)),
        ("token_type", "Bearer"),
    ]);
    let sidecar = Server::metadata_server(&federated.dir, &scene.cloud);
    let refused = raw_get(sidecar.listen, &format!("{IDENTITY}?audience={SERVICE}"));
    assert_eq!(refused.0, 404, "{refused:?}");
    assert!(
        refused.1.contains("spec.google.serviceAccount"),
        "{refused:?}"
    );

    // Without the binding of the service account on itself, Google refuses: 403 naming the role.
    scene.cloud.google.set_bindings(vec![Binding::new(
        SA_EMAIL,
        &[role_member(AUDIENCE, ASSUMED_ROLE)],
    )]);
    for (server, listen) in scene.servers() {
        let denied = raw_get(listen, &format!("{IDENTITY}?audience={SERVICE}/denied"));
        assert_eq!(denied.0, 403, "{server}: {denied:?}");
        assert!(
            denied
                .1
                .contains("roles/iam.serviceAccountOpenIdTokenCreator"),
            "{server}: {denied:?}"
        );
        assert!(!denied.1.contains(&token), "{server}: a token in the body");
    }
    scene.assert_no_token_in_logs();
}

// ---- the scene ----

/// Moto, the Google doubles, an IMDSv2 fake, `fedcred agent` exchanging the instance's identity,
/// and `fedcred metadata-server` on a Secret volume holding the agent's token.
struct Scene {
    cloud: Cloud,
    _imds: Imds,
    agent: Server,
    sidecar: Server,
    _volume: SecretVolume,
    dir: PathBuf,
}

impl Scene {
    async fn start() -> Scene {
        let cloud = Cloud::start(|c| c).await;
        // The service account may mint its own ID tokens
        // (roles/iam.serviceAccountOpenIdTokenCreator on itself), as the emulator needs.
        cloud.google.set_bindings(vec![
            Binding::new(SA_EMAIL, &[role_member(AUDIENCE, ASSUMED_ROLE)]),
            Binding::new(SA_EMAIL, &[service_account_member(SA_EMAIL)]),
        ]);
        let imds = cloud.ec2_host().await;
        let dir = unique("clients");
        std::fs::create_dir_all(&dir).unwrap();
        let spec = cloud.spec(json!({"controllerIdentity": {"roleArn": ROLE}}), json!({}));
        let manifest = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
            "metadata": {"name": "orders", "namespace": "shop"}, "spec": spec});
        let file = dir.join("credential.json");
        std::fs::write(&file, manifest.to_string()).unwrap();
        let agent = Server::agent(&file, &imds.endpoint(), &dir);

        // The Secret the controller would write for the same identity.
        let answer = agent.wait_for_token();
        let expires_in = answer["expires_in"].as_i64().unwrap();
        let mut volume = SecretVolume::kubelet();
        volume.publish(&[
            ("access_token", answer["access_token"].as_str().unwrap()),
            ("expiry", &in_secs(expires_in)),
            ("token_type", "Bearer"),
            ("service_account", SA_EMAIL),
            ("project_id", "acme-shop"),
        ]);
        let sidecar = Server::metadata_server(&volume.dir, &cloud);
        Scene {
            cloud,
            _imds: imds,
            agent,
            sidecar,
            _volume: volume,
            dir,
        }
    }

    fn servers(&self) -> [(&'static str, u16); 2] {
        [
            ("metadata-server", self.sidecar.listen),
            ("agent", self.agent.listen),
        ]
    }

    fn agent_token(&self) -> String {
        self.agent.wait_for_token()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The client's token is live and the service account's, and the API double let the
    /// request through for that account.
    fn assert_api_call(&self, found: &Value, server: &str) {
        let token = found["token"].as_str().unwrap();
        let info =
            self.cloud.google.lookup(token).unwrap_or_else(|| {
                panic!("{server}: the client holds a token Google never issued")
            });
        assert_eq!(info.email(), Some(SA_EMAIL), "{server}");
        assert!(info.expires_at > SystemTime::now(), "{server}");
        assert_eq!(found["api_status"], 200, "{server}: {found}");
        let last = self.cloud.google.api_calls().pop().expect("an API call");
        assert!(last.allowed, "{server}: {last:?}");
        assert_eq!(last.principal.as_deref(), Some(SA_EMAIL), "{server}");
    }

    /// Verified as a receiving service would, for `audience` and no other, with the email.
    fn assert_id_token(&self, token: &str, audience: &str, server: &str) {
        let claims = self.verify(token, audience);
        assert_eq!(claims["aud"], audience, "{server}");
        assert_eq!(claims["email"], SA_EMAIL, "{server}");
        assert_eq!(claims["email_verified"], true, "{server}");
        assert_eq!(claims["iss"], "https://accounts.google.com", "{server}");
        let left = claims["exp"].as_i64().unwrap() - Timestamp::now().as_second();
        assert!((300..=3600).contains(&left), "{server}: exp in {left} s");
        let refused = self.verify_output(token, &format!("{SERVICE}/someone-else"));
        assert!(
            !refused.status.success(),
            "{server}: another audience accepted the token"
        );
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("audience"),
            "{server}: {}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }

    fn verify(&self, token: &str, audience: &str) -> Value {
        let out = self.verify_output(token, audience);
        assert!(
            out.status.success(),
            "the ID token does not verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn verify_output(&self, token: &str, audience: &str) -> std::process::Output {
        Command::new(venv_python())
            .arg(support::repo_root().join("tests/python/verify_id_token.py"))
            .args([token, audience, &self.cloud.google.pem_certs_url()])
            .env_remove("GCE_METADATA_HOST")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn assert_no_token_in_logs(&self) {
        let logs = format!("{}{}", self.agent.logs(), self.sidecar.logs());
        for token in self.cloud.google.issued_tokens() {
            assert!(!logs.contains(&token), "a token in the logs");
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // FEDCRED_CLIENTS_LOG=info,fedcred=debug shows every request a library sent.
        if std::thread::panicking() || std::env::var_os("FEDCRED_CLIENTS_LOG").is_some() {
            eprintln!(
                "--- agent ---\n{}\n--- metadata-server ---\n{}",
                self.agent.logs(),
                self.sidecar.logs()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `fedcred agent` or `fedcred metadata-server`; killed when dropped.
struct Server {
    child: Child,
    listen: u16,
    log: PathBuf,
}

impl Server {
    fn agent(file: &Path, imds: &str, dir: &Path) -> Server {
        let listen = free_port();
        let mut command = fedcred(dir);
        command
            .args(["agent", "-f"])
            .arg(file)
            .args([
                "--listen",
                &format!("127.0.0.1:{listen}"),
                "--log-format",
                "text",
            ])
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds)
            .env("AWS_EC2_METADATA_DISABLED", "false");
        Server::spawn(command, listen, dir, "agent")
    }

    fn metadata_server(secret_dir: &Path, cloud: &Cloud) -> Server {
        let listen = free_port();
        let dir = secret_dir.parent().unwrap();
        let mut command = fedcred(dir);
        command
            .arg("metadata-server")
            .arg("--secret-dir")
            .arg(secret_dir)
            .args([
                "--listen",
                &format!("127.0.0.1:{listen}"),
                "--log-format",
                "text",
            ])
            .env(
                "FEDCRED_GOOGLE_IAM_CREDENTIALS_URL",
                cloud.google.iam_credentials_url(),
            );
        let server = Server::spawn(command, listen, dir, "metadata-server");
        let started = Instant::now();
        while raw_get(listen, "/").0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{}",
                server.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn spawn(mut command: Command, listen: u16, dir: &Path, name: &str) -> Server {
        let log = dir.join(format!("{name}-{listen}.log"));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Server { child, listen, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The token answer, once there is one.
    fn wait_for_token(&self) -> Value {
        let started = Instant::now();
        loop {
            let (status, body) = raw_get(self.listen, TOKEN);
            if status == 200 {
                return serde_json::from_str(&body).unwrap();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no token within 20 s: {status} {body}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fedcred` with no inherited AWS or fedcred environment and no `~/.aws`.
fn fedcred(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedcred"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("AWS_") || name.starts_with("FEDCRED_") {
            command.env_remove(name);
        }
    }
    command
        .env("HOME", dir)
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        )
        .env(
            "RUST_LOG",
            std::env::var("FEDCRED_CLIENTS_LOG").unwrap_or_else(|_| "info".to_owned()),
        );
    command
}

/// The application container's environment as the webhook injected it and the API server
/// stored it: an opted-in pod created in a test namespace whose webhook is registered, read
/// back. Once per test binary.
fn stored_env() -> &'static [(String, String)] {
    static ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ENV.get_or_init(|| {
        support::ensure_crd();
        let ns = TestNamespace::new("clients");
        let server = WebhookServer::start("ghcr.io/example/fedcred:clients-test");
        let _registration = Registration::create(&ns, server.port, Some(&server.certs.ca_pem));
        support::create_credential(&ns, "orders-db", true);
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "orders", "labels": {"fedcred.io/inject": "true"},
                         "annotations": {"fedcred.io/credential": "orders-db"}},
            "spec": {"containers": [{"name": "app", "image": "registry.example/orders:1"}]},
        });
        support::wait_until(Duration::from_secs(30), || {
            ns.kubectl(&["create", "-f", "-"], Some(&pod.to_string()))
                .ok
        });
        let env = StoredPod::get(&ns, "orders").env("app");
        // What the webhook decides is the same as the core's functions say.
        let mut expected = injected_env(fedcred_core::metadata::DEFAULT_LISTEN);
        expected.extend(project_env(Some("acme-shop")));
        for pair in &expected {
            assert!(env.contains(pair), "{pair:?} not injected: {env:?}");
        }
        env
    })
}

/// Runs a client with only the stored pod's environment, the emulator's port put in place of
/// the sidecar's, and an empty HOME; returns its JSON output.
fn run_client(command: &mut Command, listen: u16, args: &[String]) -> Value {
    let sidecar = fedcred_core::metadata::DEFAULT_LISTEN;
    let here = format!("127.0.0.1:{listen}");
    let env = stored_env()
        .iter()
        .map(|(name, value)| (name.clone(), value.replace(sidecar, &here)));
    let stdout = run_with_only(command.args(args), env, "the client");
    serde_json::from_slice(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&stdout)))
}

/// The Go client program, built by `hack/build-clients.sh`.
fn go_clients() -> PathBuf {
    let path = std::env::var_os("FEDCRED_GO_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("bin/fedcred-go-clients"));
    assert!(
        path.is_file(),
        "{} is missing: run hack/build-clients.sh (hack/test.sh does), or point \
         FEDCRED_GO_CLIENTS at the built tests/go/clients program",
        path.display()
    );
    path
}

/// The Node client program with its packages, installed by `hack/build-clients.sh`.
fn node_clients() -> PathBuf {
    let path = std::env::var_os("FEDCRED_NODE_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("clients/node"));
    assert!(
        path.join("node_modules/google-auth-library").is_dir(),
        "{} has no google-auth-library: run hack/build-clients.sh (hack/test.sh does), or point \
         FEDCRED_NODE_CLIENTS at an npm-installed copy of tests/node/clients",
        path.display()
    );
    path
}

/// The jars of the Java client program, fetched by `hack/build-clients.sh`.
fn java_clients() -> PathBuf {
    let path = std::env::var_os("FEDCRED_JAVA_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("clients/java"))
        .join("lib");
    assert!(
        path.join("google-auth-library-oauth2-http-1.58.0.jar")
            .is_file(),
        "{} has no google-auth-library-oauth2-http: run hack/build-clients.sh (hack/test.sh \
         does), or point FEDCRED_JAVA_CLIENTS at a directory whose lib/ holds its jars",
        path.display()
    );
    path
}

fn cache_dir() -> PathBuf {
    std::env::var_os("FEDCRED_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/fedcred"))
}

/// A GET with `Metadata-Flavor: Google` over a plain socket: (status, body).
fn raw_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// An RFC 3339 time `secs` seconds from now.
fn in_secs(secs: i64) -> String {
    (Timestamp::now() + SignedDuration::from_secs(secs)).to_string()
}

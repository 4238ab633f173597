//! `fedcred agent` as shipped, end to end: the real binary started from the command line of
//! the shipped systemd unit (EC2, IMDSv2) and of the shipped ECS task definition (container
//! credentials at a full URI with an authorization token file, as ECS and EKS Pod Identity
//! serve them), against moto (AWS STS), the verifying Google doubles, fakes of the AWS metadata
//! endpoints that insist on the real protocol, Python google-auth reading the token unchanged,
//! and seed 003's report job (Google's BigQuery client) against a BigQuery double that takes
//! only live tokens. No Kubernetes.
//!
//! The doubles cap impersonated tokens at 30 s, so a refresh happens within a test: the agent
//! must replace its token before it stops serving it, and never serve one that expired.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fedcred_doubles::aws_metadata::ContainerCredentials;
use fedcred_doubles::{Binding, Provider, Target, role_member};
use serde_json::{Value, json};
use support::bigquery::{BigQuery, Seen, assert_exported_and_downloaded, start_bigquery};
use support::cloud::{ASSUMED_ROLE, AUDIENCE, Cloud, HOST_ROLE, ROLE, SA_EMAIL};
use support::free_port;
use support::pod::{google_auth_adc, unique, venv_python};

const TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// What EKS Pod Identity mounts at AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE.
const CONTAINER_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJlY3MtdGFzayJ9.c2lnbmF0dXJl";
/// The role the host's own credentials belong to (instance profile, task role).
/// Impersonated tokens live this long in these tests.
const LIFETIME_CAP: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_agent_from_the_shipped_unit_serves_google_auth_and_refreshes_before_expiry() {
    let cloud = cloud(AUDIENCE, SA_EMAIL, ASSUMED_ROLE).await;
    let dir = Scratch::new();
    let imds = cloud.ec2_host().await;
    let manifest = manifest("reports", &cloud, json!({"roleArn": ROLE}), json!({}));
    std::fs::write(dir.path.join("credential.yaml"), manifest.to_string()).unwrap();

    let (listen, metrics) = (free_port(), free_port());
    let args = unit_exec_start("deploy/agent/fedcred-agent.service")
        .into_iter()
        .map(|arg| {
            arg.replace("/etc/fedcred", &dir.path.display().to_string())
                .replace("127.0.0.1:8988", &format!("127.0.0.1:{listen}"))
                .replace("127.0.0.1:9988", &format!("127.0.0.1:{metrics}"))
        })
        .collect::<Vec<_>>();
    let agent = Agent::start(&dir, &args, |c| {
        c.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())
            .env("AWS_EC2_METADATA_DISABLED", "false");
    });
    agent.wait_for_token().await;

    let found = google_auth(listen, &[]);
    assert_eq!(
        found["class"],
        "google.auth.compute_engine.credentials.Credentials"
    );
    assert_eq!(found["email"], SA_EMAIL);
    assert_eq!(found["project"], "acme-shop");
    let first = found["token"].as_str().unwrap().to_owned();
    assert_live_for(&cloud, &first, SA_EMAIL);
    // Google saw one stable principal: the chained session, not the instance id.
    let stable = format!("{ASSUMED_ROLE}/fedcred.reports");
    assert_eq!(cloud.google.seen_principals(), vec![stable.clone()]);
    assert_eq!(imds.refused(), 0, "{:#?}", imds.requests());

    // Ask every 250 ms until the first token's lifetime is over: every answer is a 200 with a
    // token Google still honours, and the token changed before the first one expired.
    let deadline = Instant::now() + Duration::from_secs(LIFETIME_CAP + 5);
    let mut tokens = vec![first.clone()];
    while Instant::now() < deadline {
        let (status, body) = agent.get(TOKEN).await;
        assert_eq!(status, 200, "{body}\n{}", agent.logs());
        let answer: Value = serde_json::from_str(&body).unwrap();
        let token = answer["access_token"].as_str().unwrap();
        assert_live_for(&cloud, token, SA_EMAIL);
        assert!(answer["expires_in"].as_i64().unwrap() >= 10, "{body}");
        if tokens.last().map(String::as_str) != Some(token) {
            tokens.push(token.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        tokens.len() >= 2,
        "no refresh within the first token's life"
    );
    assert!(cloud.google.seen_principals().iter().all(|p| *p == stable));

    let scraped = http_get(&format!("http://127.0.0.1:{metrics}/metrics"), false).await;
    assert!(
        scraped
            .1
            .contains("fedcred_token_refreshes_total{result=\"success\",reason=\"\"}"),
        "{}",
        scraped.1
    );
    assert!(!scraped.1.contains(&first), "a token in the metrics");
    let ready = http_get(&format!("http://127.0.0.1:{metrics}/readyz"), false).await;
    assert_eq!(ready.0, 200);
    assert!(!agent.logs().contains(&first), "a token in the logs");
    agent.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_agent_from_the_shipped_task_definition_serves_the_app_container() {
    let shipped = task_definition();
    let containers = shipped["containerDefinitions"].as_array().unwrap();
    let sidecar = containers
        .iter()
        .find(|c| c["name"] == "fedcred-agent")
        .expect("the task definition has the agent sidecar");
    let app = containers.iter().find(|c| c["name"] == "app").unwrap();
    assert_eq!(
        app["dependsOn"],
        json!([{"containerName": "fedcred-agent", "condition": "HEALTHY"}])
    );
    let env = |c: &Value| -> Vec<(String, String)> {
        c["environment"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_owned(),
                    e["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    // The shipped credential, as is, except where its Google and AWS STS calls go.
    let mut credential: Value = serde_json::from_str(
        &env(sidecar)
            .into_iter()
            .find(|(n, _)| n == "FEDCRED_CREDENTIAL")
            .unwrap()
            .1,
    )
    .unwrap();
    let spec = &credential["spec"];
    let audience = spec["google"]["audience"].as_str().unwrap().to_owned();
    let email = spec["google"]["serviceAccount"]
        .as_str()
        .unwrap()
        .to_owned();
    let role = spec["aws"]["controllerIdentity"]["roleArn"]
        .as_str()
        .unwrap()
        .replace(":iam::", ":sts::")
        .replace(":role/", ":assumed-role/");
    let cloud = Arc::new(cloud(&audience, &email, &role).await);
    credential["spec"]["aws"]["stsEndpoint"] = json!(cloud.moto.url());
    credential["spec"]["google"]["endpoints"] = json!({
        "sts": cloud.google.sts_url(), "iamCredentials": cloud.google.iam_credentials_url()
    });

    let dir = Scratch::new();
    // The task role's credentials, served as ECS and Pod Identity serve them.
    let own = cloud
        .moto
        .assume_role_with_web_identity(HOST_ROLE, "4f1c9d2b8e7a4c1d9b3e2f6a7c8d9e0f")
        .await
        .unwrap();
    let endpoint = ContainerCredentials::start(CONTAINER_TOKEN, own)
        .await
        .unwrap();
    let token_file = dir.file("container-token", CONTAINER_TOKEN);
    let listen = free_port();
    let port = |s: &str| s.replace("127.0.0.1:8988", &format!("127.0.0.1:{listen}"));
    let command: Vec<String> = sidecar["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| port(a.as_str().unwrap()))
        .collect();
    let agent = Agent::start(&dir, &command, |c| {
        for (name, value) in env(sidecar) {
            c.env(name, value);
        }
        c.env("FEDCRED_CREDENTIAL", credential.to_string())
            .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url())
            .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file);
    });

    // The shipped health check passes once a token is served; ECS then starts the app.
    let check: Vec<String> = sidecar["healthCheck"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1) // CMD
        .map(|a| port(a.as_str().unwrap()))
        .collect();
    assert_eq!(check[0], "/usr/local/bin/fedcred");
    let healthy = || {
        Command::new(env!("CARGO_BIN_EXE_fedcred"))
            .args(&check[1..])
            .output()
            .unwrap()
    };
    let started = Instant::now();
    while !healthy().status.success() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never healthy: {}\n{}",
            String::from_utf8_lossy(&healthy().stderr),
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let app_env: Vec<(String, String)> = env(app).into_iter().map(|(n, v)| (n, port(&v))).collect();
    let found = google_auth(listen, &app_env);
    assert_eq!(found["email"], email.as_str());
    assert_eq!(found["project"], "acme-analytics");
    assert_live_for(&cloud, found["token"].as_str().unwrap(), &email);

    // Seed 003's job itself: the unchanged report program (Google's BigQuery and Cloud
    // Storage clients, nothing but application-default credentials) with the app container's
    // environment, against a double of both APIs that takes only live tokens of the task's
    // service account: it queries the view, exports the result to Cloud Storage and
    // downloads the export.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let bigquery = start_bigquery(BigQuery {
        cloud: cloud.clone(),
        seen: seen.clone(),
        email: email.clone(),
    })
    .await;
    let mut job_env = app_env.clone();
    job_env.push(("HOME".to_owned(), dir.path.display().to_string()));
    job_env.push(("BIGQUERY_API_ENDPOINT".to_owned(), bigquery.clone()));
    job_env.push(("STORAGE_API_ENDPOINT".to_owned(), bigquery));
    let script = support::repo_root().join("tests/python/bigquery_report.py");
    let job = tokio::task::spawn_blocking(move || {
        Command::new(venv_python())
            .arg(script)
            .env_clear()
            .envs(job_env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&job.stdout);
    assert!(
        job.status.success(),
        "the report job failed:\nstdout: {stdout}\nstderr: {}\nrefused: {:?}\nagent: {}",
        String::from_utf8_lossy(&job.stderr),
        seen.lock().unwrap().refused,
        agent.logs()
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["project"], "acme-analytics");
    assert_eq!(report["bytes_processed"], 2048);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.refused, vec![], "the double refused a request");
        assert_eq!(seen.projects, BTreeSet::from(["acme-analytics".to_owned()]));
        assert_eq!(seen.queries.len(), 1);
        assert_exported_and_downloaded(&report, &seen);
        for token in &seen.accepted {
            assert_live_for(&cloud, token, &email);
        }
        assert!(!seen.accepted.is_empty());
    }

    assert_eq!(
        cloud.google.seen_principals(),
        vec![format!("{role}/fedcred.analytics")]
    );
    assert_eq!(endpoint.refused(), 0);
    agent.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_aws_credentials_the_503_and_the_check_list_every_source_tried() {
    let cloud = cloud(AUDIENCE, SA_EMAIL, ASSUMED_ROLE).await;
    let dir = Scratch::new();
    let file = dir.file(
        "fc.json",
        &manifest("reports", &cloud, json!({}), json!({})).to_string(),
    );
    let listen = free_port();
    let agent = Agent::start(&dir, &agent_args(&file, listen), |_| {});
    let body = agent.wait_for_503_reason("AwsCredentialsUnavailable").await;
    for source in [
        "environment (AWS_ACCESS_KEY_ID)",
        "shared config files",
        "web identity",
        "container (ECS task role or EKS Pod Identity",
        "EC2 instance metadata (IMDSv2)",
    ] {
        assert!(body.contains(source), "{source} not in: {body}");
    }
    let check = Command::new(env!("CARGO_BIN_EXE_fedcred"))
        .args([
            "agent",
            "--check",
            "--listen",
            &format!("127.0.0.1:{listen}"),
        ])
        .output()
        .unwrap();
    assert!(!check.status.success());
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains("HTTP 503"), "{stderr}");
    assert!(stderr.contains("(AwsCredentialsUnavailable)"), "{stderr}");
    assert_eq!(cloud.google.calls(Target::Sts), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_refusing_is_a_503_naming_reason_and_principal() {
    // The service account is bound to another role: impersonation is refused.
    let cloud = cloud(
        AUDIENCE,
        SA_EMAIL,
        "arn:aws:sts::123456789012:assumed-role/someone-else",
    )
    .await;
    let dir = Scratch::new();
    let own = cloud
        .moto
        .assume_role_with_web_identity(HOST_ROLE, "env")
        .await
        .unwrap();
    let file = dir.file(
        "fc.json",
        &manifest("reports", &cloud, json!({"roleArn": ROLE}), json!({})).to_string(),
    );
    let agent = Agent::start(&dir, &agent_args(&file, free_port()), |c| {
        c.env("AWS_ACCESS_KEY_ID", &own.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &own.secret_access_key)
            .env("AWS_SESSION_TOKEN", &own.session_token);
    });
    let body = agent.wait_for_503_reason("ImpersonationDenied").await;
    assert!(
        body.contains(&format!("AWS principal {ASSUMED_ROLE}/fedcred.reports")),
        "{body}"
    );
    assert!(body.contains(SA_EMAIL), "{body}");
}

#[test]
fn bad_input_stops_the_agent_with_the_reason() {
    let dir = Scratch::new();
    let spec = json!({
        "aws": {"region": "Tokyo", "controllerIdentity": {}},
        "google": {"audience": AUDIENCE, "serviceAccount": SA_EMAIL}
    });
    let file = dir.file(
        "invalid.json",
        &json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
                "metadata": {"name": "bq", "namespace": "reports"}, "spec": spec})
        .to_string(),
    );
    let out = run_to_end(&dir, &agent_args(&file, free_port()));
    assert!(
        out.contains("FederatedCredential reports/bq in")
            && out.contains("spec.aws.region: Invalid value"),
        "{out}"
    );

    let irsa = dir.file(
        "irsa.json",
        &json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
                "metadata": {"name": "bq", "namespace": "reports"},
                "spec": {"aws": {"region": "us-east-1", "serviceAccount": {"name": "app"}},
                         "google": {"audience": AUDIENCE, "serviceAccount": SA_EMAIL}}})
        .to_string(),
    );
    let out = run_to_end(&dir, &agent_args(&irsa, free_port()));
    assert!(
        out.contains("reports/bq uses aws.serviceAccount")
            && out.contains("aws.controllerIdentity"),
        "{out}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let valid = dir.file(
        "valid.json",
        &irsa_to_own(&std::fs::read_to_string(&irsa).unwrap()),
    );
    let out = run_to_end(&dir, &agent_args(&valid, port));
    assert!(
        out.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{out}"
    );

    let out = run_to_end(&dir, &["agent".to_owned()]);
    assert!(out.contains("--filename"), "{out}");
}

// ---- helpers ----

/// Moto and the Google doubles with one provider, `email` bound to sessions of `role`, and
/// impersonated tokens capped at LIFETIME_CAP seconds.
async fn cloud(audience: &str, email: &str, role: &str) -> Cloud {
    let (audience, email, role) = (audience.to_owned(), email.to_owned(), role.to_owned());
    Cloud::start(move |mut c| {
        c.impersonated_lifetime_cap_seconds = Some(LIFETIME_CAP);
        c.bindings.clear();
        if audience != AUDIENCE {
            c = c.provider(Provider::new(&audience));
        }
        c.binding(Binding::new(&email, &[role_member(&audience, &role)]))
    })
    .await
}

fn manifest(namespace: &str, cloud: &Cloud, identity: Value, google: Value) -> Value {
    let spec = cloud.spec(json!({"controllerIdentity": identity}), google);
    json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
           "metadata": {"name": "reports-db", "namespace": namespace}, "spec": spec})
}

fn irsa_to_own(text: &str) -> String {
    text.replace(
        "\"serviceAccount\":{\"name\":\"app\"}",
        "\"controllerIdentity\":{}",
    )
}

fn agent_args(file: &Path, port: u16) -> Vec<String> {
    vec![
        "agent".to_owned(),
        "-f".to_owned(),
        file.display().to_string(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
    ]
}

/// The arguments of the unit's ExecStart, the binary's path dropped.
fn unit_exec_start(path: &str) -> Vec<String> {
    let unit = std::fs::read_to_string(support::repo_root().join(path)).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has ExecStart");
    let mut words = line.split_whitespace().map(str::to_owned);
    assert_eq!(
        words.next().as_deref(),
        Some("/usr/local/bin/fedcred-agent")
    );
    words.collect()
}

fn task_definition() -> Value {
    let text =
        std::fs::read_to_string(support::repo_root().join("deploy/agent/ecs-task-definition.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Google's view of `token`: issued, for `email`, and not expired.
fn assert_live_for(cloud: &Cloud, token: &str, email: &str) {
    let info = cloud
        .google
        .lookup(token)
        .unwrap_or_else(|| panic!("the doubles never issued the served token"));
    assert_eq!(info.email(), Some(email));
    assert!(
        info.expires_at > SystemTime::now(),
        "an expired token was served"
    );
}

/// google-auth's application-default credentials with only the metadata environment for
/// `port` and `extra`.
fn google_auth(port: u16, extra: &[(String, String)]) -> Value {
    google_auth_adc(&format!("127.0.0.1:{port}"), extra)
}

async fn http_get(url: &str, flavor: bool) -> (u16, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut request = client.get(url).timeout(Duration::from_secs(5));
    if flavor {
        request = request.header("Metadata-Flavor", "Google");
    }
    match request.send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Runs `fedcred ARGS` with no AWS environment to its end and returns stderr; it must fail.
fn run_to_end(dir: &Scratch, args: &[String]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedcred"));
    isolate(&mut command, dir);
    let out = command.args(args).output().unwrap();
    assert!(!out.status.success(), "fedcred {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// No inherited AWS source: no `AWS_*`, a HOME without `~/.aws`, instance metadata off.
fn isolate(command: &mut Command, dir: &Scratch) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("AWS_") || name.starts_with("FEDCRED_") {
            command.env_remove(name);
        }
    }
    command
        .env("HOME", &dir.path)
        .env("AWS_CONFIG_FILE", dir.path.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path.join("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // The doubles issue 30-second tokens so that a refresh happens within a test.
        .env("FEDCRED_MIN_TOKEN_SECONDS", "5")
        .env("RUST_LOG", "info");
}

/// A running `fedcred agent`, its stderr in a file; killed when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
    base: String,
}

impl Agent {
    fn start(dir: &Scratch, args: &[String], configure: impl FnOnce(&mut Command)) -> Agent {
        let log = dir.path.join(format!("agent-{}.log", free_port()));
        // `fedcred agent ARGS…`, or the agent's own binary (the systemd unit's) when the
        // arguments do not start with the subcommand.
        let binary = match args.first().map(String::as_str) {
            Some("agent") => env!("CARGO_BIN_EXE_fedcred"),
            _ => env!("CARGO_BIN_EXE_fedcred-agent"),
        };
        let mut command = Command::new(binary);
        isolate(&mut command, dir);
        configure(&mut command);
        let listen = args
            .windows(2)
            .find(|w| w[0] == "--listen")
            .map(|w| w[1].clone())
            .expect("--listen is given");
        let child = support::spawn_logging(command.args(args), &log);
        Agent {
            child,
            log,
            base: format!("http://{listen}"),
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http_get(&format!("{}{path}", self.base), true).await
    }

    async fn wait_for_token(&self) {
        let started = Instant::now();
        loop {
            let (status, body) = self.get(TOKEN).await;
            if status == 200 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no token within 20 s: {status} {body}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for a 503 whose body names `reason`; returns the body.
    async fn wait_for_503_reason(&self, reason: &str) -> String {
        let started = Instant::now();
        loop {
            let (status, body) = self.get(TOKEN).await;
            if status == 503 && body.contains(&format!("({reason})")) {
                return body;
            }
            assert_ne!(status, 200, "a token was served");
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no 503 naming {reason}: {status} {body}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM; the agent must exit 0 within 10 s.
    fn stop_cleanly(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status:?}\n{}", self.logs());
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "still running after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory removed when dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let path = unique("fedcred-agent");
        std::fs::create_dir_all(&path).unwrap();
        Scratch { path }
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let file = self.path.join(name);
        std::fs::write(&file, contents).unwrap();
        file
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The long options of a `--help` text, in order.
fn options(help: &str) -> Vec<String> {
    help.lines()
        .filter_map(|l| {
            l.trim_start()
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .map(|w| w.split('=').next().unwrap_or(w).to_owned())
        })
        .collect()
}

#[test]
fn fedcred_agent_is_fedcred_agent_alone_with_the_same_flags() {
    let help = |binary: &str, args: &[&str]| {
        let out = Command::new(binary).args(args).output().unwrap();
        assert!(out.status.success(), "{binary} {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let sub = options(&help(env!("CARGO_BIN_EXE_fedcred"), &["agent", "--help"]));
    let own = options(&help(env!("CARGO_BIN_EXE_fedcred-agent"), &["--help"]));
    assert!(sub.contains(&"--filename".to_owned()), "{sub:?}");
    // The same flags, plus --version on the binary of its own.
    let own_without_version: Vec<&String> = own.iter().filter(|o| *o != "--version").collect();
    assert_eq!(own_without_version, sub.iter().collect::<Vec<_>>());
    // No other command is in it: `controller` is an unexpected argument.
    let out = Command::new(env!("CARGO_BIN_EXE_fedcred-agent"))
        .arg("controller")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unexpected argument"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

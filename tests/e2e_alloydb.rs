//! Seed 000 end to end: an AWS workload reaches AlloyDB with no key. On the real API server,
//! `fedcred controller` keeps a FederatedCredential's Secret fresh (moto and the Google
//! doubles) and its webhook injects a labelled pod. The pod as the API server stored it is then
//! run on this machine the way a kubelet would: its sidecars with exactly their command,
//! arguments and environment (the fedcred metadata emulator on a directory laid out like the
//! mounted Secret, the real `alloydb-auth-proxy`), the only addition being the proxy's Admin
//! API endpoint. `psql` with the app container's injected environment then logs in to a real
//! PostgreSQL through the AlloyDB instance double as the service account's IAM database user,
//! before and after the first token has expired.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fedcred_doubles::alloydb::{AlloyDbConfig, AlloyDbDoubles, AuthType, InstanceConfig, Outcome};
use serde_json::{Value, json};
use support::alloydb::{Node, Postgres, Process, SecretVolume, free_port};
use support::cloud::{Cloud, ROLE, SA_EMAIL};
use support::controller::ControllerProcess;
use support::{INSTANCE, TestNamespace, kubectl};

const FEDCRED_IMAGE: &str = "ghcr.io/example/fedcred:e2e";
const PROXY_IMAGE: &str = "gcr.io/alloydb-connectors/alloydb-auth-proxy:e2e";
const DB_USER: &str = "orders-api@acme-shop.iam";
/// The shortest lifetime the CRD allows; refreshed when 90 % of it is left, so a new token
/// arrives about a minute after the first and the first expires ten minutes after issue.
const LIFETIME_SECONDS: u64 = 600;

/// Polls `check` until it returns `Some`, failing with `what` after `limit`.
async fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The Secret's data, decoded.
fn secret(ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
    use base64::Engine as _;
    let out = kubectl(&["-n", ns, "get", "secret", name, "-o", "json"], None);
    if !out.ok {
        return None;
    }
    let v: Value = serde_json::from_str(&out.stdout).ok()?;
    v["data"]
        .as_object()?
        .iter()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str()?)
                .ok()?;
            Some((k.clone(), String::from_utf8(bytes).ok()?))
        })
        .collect()
}

/// Keeps a [`SecretVolume`] in step with the real Secret, as the kubelet does, until dropped.
struct SecretSync {
    pub dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SecretSync {
    fn start(ns: &str, name: &str, first: &BTreeMap<String, String>) -> SecretSync {
        let mut volume = SecretVolume::new(first);
        let dir = volume.dir.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, name, stopped) = (ns.to_owned(), name.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                if let Some(data) = secret(&ns, &name) {
                    volume.update(&data);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        SecretSync {
            dir,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SecretSync {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A MutatingWebhookConfiguration sending the test namespace's opted-in pods to the
/// controller's webhook on 127.0.0.1; the controller fills in its `caBundle`. Deleted when
/// dropped.
struct Registration {
    name: String,
}

impl Registration {
    fn create(ns: &TestNamespace, port: u16) -> Registration {
        let name = format!("fedcred-e2e-{}", ns.name);
        kubectl(
            &[
                "label",
                "namespace",
                &ns.name,
                &format!("fedcred-test/webhook={}", ns.name),
            ],
            None,
        )
        .success();
        let config = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "pods.fedcred.io",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate")},
                "rules": [{
                    "apiGroups": [""], "apiVersions": ["v1"],
                    "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced",
                }],
                "objectSelector": {"matchLabels": {"fedcred.io/inject": "true"}},
                "namespaceSelector": {"matchLabels": {"fedcred-test/webhook": ns.name}},
                "failurePolicy": "Fail",
                "reinvocationPolicy": "IfNeeded",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }],
        });
        kubectl(&["create", "-f", "-"], Some(&config.to_string())).success();
        Registration { name }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = kubectl(
            &[
                "delete",
                "mutatingwebhookconfiguration",
                &self.name,
                "--ignore-not-found",
            ],
            None,
        );
    }
}

fn pod(name: &str, credential: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"fedcred.io/inject": "true"},
            "annotations": {"fedcred.io/credential": credential},
        },
        "spec": {
            "serviceAccountName": "orders-api",
            "containers": [{
                "name": "app", "image": "registry.example/orders:1",
                // The application's own choice of database; the rest comes from injection.
                "env": [{"name": "PGDATABASE", "value": "postgres"}],
            }],
        },
    })
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {list}"))
}

fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Runs a container's startup probe until it succeeds, as the kubelet does before it starts
/// the next container.
async fn wait_started(node: &Node, container: &Value, process: &mut Process) {
    let probe = &container["startupProbe"];
    let start = Instant::now();
    loop {
        process.assert_running();
        let ok = if let Some(command) = probe["exec"]["command"].as_array() {
            let mut exec = container.clone();
            exec["command"] = json!(command);
            exec["args"] = Value::Null;
            let local = node.resolve(&exec);
            std::process::Command::new(&local.program)
                .args(&local.args)
                .env_clear()
                .envs(local.env.iter().map(|(k, v)| (k, v)))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        } else if let Some(port) = probe["httpGet"]["port"].as_u64() {
            let path = probe["httpGet"]["path"].as_str().unwrap_or("/");
            reqwest::get(format!("http://127.0.0.1:{port}{path}"))
                .await
                .is_ok_and(|r| r.status().is_success())
        } else {
            panic!("unsupported startup probe {probe}");
        };
        if ok {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} did not start within 60 s:\n{}",
            process.name,
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `psql -c 'select current_user'` with the app container's environment.
fn select_current_user(app_env: &BTreeMap<String, String>) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "select current_user"])
        .env_clear()
        .envs(app_env)
        .env("PGCONNECT_TIMEOUT", "20")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("psql runs: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reaches_alloydb_as_its_iam_user_before_and_after_the_first_token_expires() {
    let proxy = support::alloydb::proxy_binary();
    let ns = TestNamespace::new("e2e-alloydb");
    let postgres = Postgres::start(DB_USER);
    let cloud = Cloud::start(|c| c).await;
    let alloydb = AlloyDbDoubles::start(
        AlloyDbConfig {
            postgres: Some(postgres.addr),
            ..AlloyDbConfig::default()
        }
        .instance(InstanceConfig::psc(INSTANCE, "localhost"))
        .service_account(SA_EMAIL),
        &cloud.google.tokeninfo_url(),
    )
    .await
    .expect("the AlloyDB doubles start (is port 5433 free?)");

    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "orders-api", "annotations": {"eks.amazonaws.com/role-arn": ROLE}}});
    ns.kubectl(&["apply", "-f", "-"], Some(&sa.to_string()))
        .success();
    let webhook_port = free_port();
    let registration = Registration::create(&ns, webhook_port);
    let controller = ControllerProcess::start(
        &ns.name,
        &cloud,
        "e2e",
        &[
            "--webhook-address",
            &format!("127.0.0.1:{webhook_port}"),
            "--webhook-dns-names",
            "127.0.0.1",
            "--webhook-configuration",
            &registration.name,
            "--fedcred-image",
            FEDCRED_IMAGE,
            "--proxy-image",
            PROXY_IMAGE,
        ],
    );
    // The API server calls the webhook once the controller has set the caBundle: a dry-run
    // pod naming a missing credential is then refused by the webhook with its name.
    let probe = pod("probe", "no-such-credential");
    eventually("the webhook answering", Duration::from_secs(60), || {
        let out = ns.kubectl(
            &["create", "--dry-run=server", "-f", "-"],
            Some(&probe.to_string()),
        );
        (!out.ok && out.stderr.contains("no-such-credential")).then_some(())
    })
    .await;

    let local_port = free_port();
    let mut spec = serde_json::to_value(cloud.spec(
        json!({"serviceAccount": {"name": "orders-api"}}),
        json!({"tokenLifetimeSeconds": LIFETIME_SECONDS}),
    ))
    .unwrap();
    spec["alloydb"] = json!({"instances": [{
        "uri": INSTANCE, "connectivity": "PSC", "autoIamAuthn": true, "port": local_port,
    }]});
    spec["secret"] = json!({"renewBeforePercentage": 90});
    let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "orders-db"}, "spec": spec});
    ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();
    let first = eventually("the Secret", Duration::from_secs(60), || {
        secret(&ns.name, "orders-db")
    })
    .await;
    let first_token = first["access_token"].clone();
    assert_eq!(first["db_user"], DB_USER);

    // The pod, created for real and read back as the API server stored it.
    let out = ns.kubectl(
        &["create", "-f", "-"],
        Some(&pod("orders", "orders-db").to_string()),
    );
    assert!(out.ok, "{}", out.stderr);
    let stored: Value = serde_json::from_str(
        &ns.kubectl(&["get", "pod", "orders", "-o", "json"], None)
            .success(),
    )
    .unwrap();
    let init = &stored["spec"]["initContainers"];
    let metadata = named(init, "fedcred-metadata");
    let proxy_container = named(init, "alloydb-proxy-0");
    let app_env = env_of(named(&stored["spec"]["containers"], "app"));
    assert_eq!(app_env["PGUSER"], DB_USER);
    assert_eq!(app_env["PGPORT"], local_port.to_string());

    // This machine as the node: images to local binaries, the Secret volume to a directory
    // kept in step with the real Secret.
    let sync = SecretSync::start(&ns.name, "orders-db", &first);
    let volume = stored["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == "orders-db")
        .expect("the Secret volume")["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let fedcred = std::path::PathBuf::from(env!("CARGO_BIN_EXE_fedcred"));
    let node = Node {
        images: BTreeMap::from([
            (
                FEDCRED_IMAGE.to_owned(),
                BTreeMap::from([("/usr/local/bin/fedcred".to_owned(), fedcred)]),
            ),
            (
                PROXY_IMAGE.to_owned(),
                BTreeMap::from([("/alloydb-auth-proxy".to_owned(), proxy)]),
            ),
        ]),
        entrypoints: BTreeMap::from([
            (
                FEDCRED_IMAGE.to_owned(),
                "/usr/local/bin/fedcred".to_owned(),
            ),
            (PROXY_IMAGE.to_owned(), "/alloydb-auth-proxy".to_owned()),
        ]),
        volumes: BTreeMap::from([(volume, sync.dir.clone())]),
    };

    // Native sidecars start in order, each once its startup probe passes.
    let mut emulator = Process::spawn(&node.resolve(metadata));
    wait_started(&node, metadata, &mut emulator).await;
    let mut local_proxy = node.resolve(proxy_container);
    local_proxy.args.push(format!(
        "--alloydbadmin-api-endpoint={}",
        alloydb.admin_url()
    ));
    let mut proxy_process = Process::spawn(&local_proxy);
    wait_started(&node, proxy_container, &mut proxy_process).await;

    let user = tokio::task::block_in_place(|| select_current_user(&app_env));
    assert_eq!(
        user.as_deref(),
        Ok(DB_USER),
        "proxy log:\n{}",
        proxy_process.logs()
    );
    let seen = alloydb.connections();
    let accepted = seen
        .iter()
        .rfind(|c| c.outcome == Outcome::Accepted)
        .expect("the instance accepted a connection");
    assert_eq!(accepted.auth_type, Some(AuthType::AutoIam));
    assert_eq!(accepted.service_account.as_deref(), Some(SA_EMAIL));
    assert_eq!(accepted.db_user.as_deref(), Some(DB_USER));
    assert!(accepted.used_token(&first_token));
    assert!(
        alloydb
            .admin_calls()
            .iter()
            .any(|c| c.method == "generateClientCertificate" && c.status == 200)
    );

    // The controller refreshes long before expiry; wait until the first token is dead.
    let refreshed = eventually("a refreshed token", Duration::from_secs(180), || {
        secret(&ns.name, "orders-db").filter(|d| d["access_token"] != first_token)
    })
    .await;
    assert!(cloud.google.lookup(&refreshed["access_token"]).is_some());
    let expiry: jiff::Timestamp = first["expiry"].parse().unwrap();
    let wait = expiry.duration_since(jiff::Timestamp::now());
    eventually(
        "the first token to expire",
        Duration::from_secs(wait.as_secs().max(0) as u64 + 30),
        || cloud.google.lookup(&first_token).is_none().then_some(()),
    )
    .await;
    proxy_process.assert_running();
    emulator.assert_running();

    let user = tokio::task::block_in_place(|| select_current_user(&app_env));
    assert_eq!(
        user.as_deref(),
        Ok(DB_USER),
        "proxy log:\n{}",
        proxy_process.logs()
    );
    let last = alloydb
        .connections()
        .into_iter()
        .rfind(|c| c.outcome == Outcome::Accepted)
        .unwrap();
    assert_eq!(last.auth_type, Some(AuthType::AutoIam));
    assert_eq!(last.db_user.as_deref(), Some(DB_USER));
    let used = cloud
        .google
        .issued_tokens()
        .into_iter()
        .find(|t| last.used_token(t))
        .expect("the second login used a token the doubles issued");
    assert!(
        used != first_token,
        "the second login used a refreshed token"
    );
    assert!(cloud.google.lookup(&used).is_some());

    // No token in any log.
    let logs = format!(
        "{}{}{}",
        controller.logs(),
        emulator.logs(),
        proxy_process.logs()
    );
    for token in cloud.google.issued_tokens() {
        assert!(!logs.contains(&token), "a token leaked into a log");
    }
    drop(proxy_process);
    drop(emulator);
    drop(sync);
    drop(postgres);
}

//! `spec.alloydb.proxy` and the instances' variable names, run for real: for each setting a pod
//! is injected as the webhook injects it (`fedcred_core::inject::mutate`), the API server
//! accepts the injected pod (server-side dry run), and its sidecars run the way a kubelet runs
//! them: `fedcred metadata-server` on a directory laid out like the mounted Secret, then the
//! real `alloydb-auth-proxy` with exactly the proxy container's arguments and environment. The
//! proxy must accept every flag and pass its startup probe; the application's variables must
//! lead to a listener (a TCP port, or the socket file in the shared directory); `/metrics`
//! must answer where the pod's Prometheus annotations say; `/quitquitquit` on the admin port
//! must make the proxy exit with 0. Cloud SQL instances run the same way with the real
//! `cloud-sql-proxy` v2. Nothing contacts an instance: the flags are the subject.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fedcred_core::api::FederatedCredential;
use fedcred_core::inject::{
    CLOUDSQL_PROXY_CONTAINER_PREFIX, InjectConfig, METADATA_CONTAINER, Outcome,
    PROXY_CONTAINER_PREFIX, SOCKET_DIR, TOKEN_MOUNT_PATH, mutate,
};
use fedcred_core::testing::apply_patch;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use support::alloydb::{cloudsql_proxy_binary, proxy_binary, wait_for_http_probe};
use support::pod::{Process, SecretVolume, map_paths, wait_for_exec_probe};
use support::{INSTANCE, TestNamespace, free_port};

const SA: &str = "orders-api@acme-shop.iam.gserviceaccount.com";
const REPLICA: &str =
    "projects/acme-shop/locations/asia-northeast1/clusters/orders/instances/orders-replica";

/// The proxies' health ports are chosen by the injection from a fixed start, so two cases
/// running at once would collide: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn credential(alloydb: Value) -> FederatedCredential {
    serde_json::from_value(json!({
        "apiVersion": "fedcred.io/v1alpha1",
        "kind": "FederatedCredential",
        "metadata": {"name": "orders-db", "namespace": "shop"},
        "spec": {
            "aws": {"serviceAccount": {"name": "orders-api"}},
            "google": {
                "audience": "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop",
                "serviceAccount": SA
            },
            "alloydb": alloydb
        },
        "status": {"conditions": [{
            "type": "Ready", "status": "True", "reason": "TokenIssued", "message": "ready",
            "lastTransitionTime": "2026-01-01T00:00:00Z"
        }]}
    }))
    .unwrap()
}

fn app_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "orders", "namespace": "shop",
            "labels": {"fedcred.io/inject": "true"},
            "annotations": {"fedcred.io/credential": "orders-db"}
        },
        "spec": {"containers": [{"name": "app", "image": "registry.example/orders:1"}]}
    })
}

/// The pod the webhook makes of [`app_pod`] for `fc`.
fn injected(fc: &FederatedCredential) -> Value {
    let pod: Pod = serde_json::from_value(app_pod()).unwrap();
    let mut config = InjectConfig::new("ghcr.io/example/fedcred:test");
    // The emulator's port is the controller's choice; a free one keeps this host's others.
    config.metadata_port = free_port();
    // A closed port: nothing here reaches an instance, and nothing may reach Google.
    config.alloydb_admin_endpoint = Some("http://127.0.0.1:9".to_owned());
    config.cloudsql_admin_endpoint = Some("http://127.0.0.1:9".to_owned());
    match mutate(&pod, Some(fc), &config) {
        Outcome::Patch { ops, warnings } => {
            assert!(warnings.is_empty(), "{warnings:?}");
            apply_patch(app_pod(), &ops)
        }
        other => panic!("expected a patch, got {other:?}"),
    }
}

/// The API server validates the injected pod as it would the webhook's result. The label is
/// dropped so that no webhook left registered by another test sees it.
fn the_api_server_accepts(pod: &Value) {
    let ns = TestNamespace::new("proxy-settings");
    let mut pod = pod.clone();
    pod["metadata"]["namespace"] = json!(ns.name);
    pod["metadata"]["labels"] = json!({});
    let out = ns.kubectl(
        &["create", "--dry-run=server", "-f", "-"],
        Some(&pod.to_string()),
    );
    assert!(
        out.ok,
        "the API server refused the injected pod: {}",
        out.stderr
    );
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|list| pod["spec"][list].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn env(pod: &Value, name: &str) -> Vec<(String, String)> {
    container(pod, name)["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn var(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// A pod's sidecars running as local processes: the Secret volume and the socket directory
/// are local directories, mapped in arguments and environment.
struct Running {
    pod: Value,
    mounts: Vec<(String, PathBuf)>,
    processes: Vec<Process>,
    _secret: SecretVolume,
    sockets: PathBuf,
}

impl Running {
    /// Starts the sidecars of `pod` in order, each once the last one's startup probe passed.
    fn start(pod: Value) -> Running {
        let fedcred = PathBuf::from(env!("CARGO_BIN_EXE_fedcred"));
        let proxy = proxy_binary();
        let cloudsql_proxy = cloudsql_proxy_binary();
        let expiry = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let secret = SecretVolume::plain(&[
            ("access_token", "ya29.not-a-real-token"),
            ("expiry", &expiry.to_string()),
            ("token_type", "Bearer"),
            ("service_account", SA),
            ("project_id", "acme-shop"),
        ]);
        // About as long as SOCKET_DIR: a socket's path has at most 107 bytes.
        let sockets = PathBuf::from(format!(
            "/tmp/fcs-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().subsec_nanosecond()
        ));
        std::fs::create_dir_all(&sockets).unwrap();
        // The socket directory first: the Secret's mount path is a prefix of it.
        let mounts = vec![
            (SOCKET_DIR.to_owned(), sockets.clone()),
            (TOKEN_MOUNT_PATH.to_owned(), secret.dir.clone()),
        ];
        let mut running = Running {
            pod,
            mounts,
            processes: Vec::new(),
            _secret: secret,
            sockets,
        };
        let sidecars: Vec<String> = running.pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["restartPolicy"] == "Always")
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(sidecars[0], METADATA_CONTAINER);
        for name in &sidecars {
            let c = container(&running.pod, name).clone();
            // Images are the entrypoints; the proxy's may be pinned by digest.
            let program = if name.starts_with(PROXY_CONTAINER_PREFIX) {
                &proxy
            } else if name.starts_with(CLOUDSQL_PROXY_CONTAINER_PREFIX) {
                &cloudsql_proxy
            } else {
                &fedcred
            };
            let mut argv = vec![program.display().to_string()];
            argv.extend(strings(&c["args"]).iter().map(|a| running.map(a)));
            let env: Vec<(String, String)> = env(&running.pod, name)
                .into_iter()
                .map(|(k, v)| (k, running.map(&v)))
                .collect();
            let mut process = Process::start(name, &argv, &env);
            let probe = &c["startupProbe"];
            if probe["exec"].is_object() {
                let entrypoints: &[(&str, &Path)] = &[("/usr/local/bin/fedcred", &fedcred)];
                wait_for_exec_probe(probe, entrypoints, &mut process, Duration::from_secs(30));
            } else {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(wait_for_http_probe(
                        probe,
                        &mut process,
                        Duration::from_secs(30),
                    ));
            }
            running.processes.push(process);
        }
        running
    }

    fn map(&self, value: &str) -> String {
        map_paths(value, &self.mounts)
    }

    /// The application container's environment, paths mapped as for the sidecars.
    fn app_env(&self) -> Vec<(String, String)> {
        env(&self.pod, "app")
            .into_iter()
            .map(|(k, v)| (k, self.map(&v)))
            .collect()
    }

    fn proxy(&mut self, index: usize) -> &mut Process {
        &mut self.processes[index + 1]
    }

    fn proxy_args(&self, index: usize) -> Vec<String> {
        strings(&container(&self.pod, &format!("{PROXY_CONTAINER_PREFIX}{index}"))["args"])
    }

    fn assert_all_running(&mut self) {
        for p in &mut self.processes {
            assert!(p.running(), "{} exited:\n{}", p.name, p.logs());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.processes.clear();
        let _ = std::fs::remove_dir_all(&self.sockets);
    }
}

/// `METHOD path` on 127.0.0.1:`port` over plain HTTP/1.0: the status code and the body.
fn http(method: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// Waits for `process` to exit; its exit code.
fn exit_code(process: &mut Process, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while process.running() {
        assert!(
            start.elapsed() < limit,
            "{} still runs after {limit:?}:\n{}",
            process.name,
            process.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    process.exit_code()
}

/// The application reaches the instance where its host and port variables say: a TCP
/// listener on the port, or libpq's socket `HOST/.s.PGSQL.PORT`.
fn reachable(env: &[(String, String)], host_var: &str, port_var: &str) {
    let host = var(env, host_var).unwrap_or_else(|| panic!("{host_var} not set: {env:?}"));
    let port = var(env, port_var).unwrap_or_else(|| panic!("{port_var} not set: {env:?}"));
    if host.starts_with('/') {
        let socket = Path::new(&host).join(format!(".s.PGSQL.{port}"));
        let meta = std::fs::metadata(&socket)
            .unwrap_or_else(|e| panic!("no socket at {}: {e}", socket.display()));
        assert!(
            meta.file_type().is_socket(),
            "{} is not a socket",
            socket.display()
        );
        UnixStream::connect(&socket).expect("the proxy accepts on its socket");
    } else {
        assert_eq!(host, "127.0.0.1");
        TcpStream::connect((host.as_str(), port.parse::<u16>().unwrap()))
            .expect("the proxy accepts on its port");
    }
}

fn one_instance(proxy: Value) -> Value {
    json!({
        "instances": [{"uri": INSTANCE, "connectivity": "PSC", "port": free_port()}],
        "proxy": proxy
    })
}

#[test]
fn each_proxy_setting_alone_is_accepted_by_the_real_proxy() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for proxy in [
        json!({}),
        json!({"lazyRefresh": true}),
        json!({"prometheus": true}),
        json!({"maxConnections": 3}),
        json!({"maxSigtermDelay": "20s"}),
        json!({"minSigtermDelay": "500ms"}),
        json!({"adminPort": free_port()}),
        json!({"unixSocket": true}),
    ] {
        let pod = injected(&credential(one_instance(proxy.clone())));
        the_api_server_accepts(&pod);
        let mut running = Running::start(pod);
        reachable(&running.app_env(), "PGHOST", "PGPORT");
        std::thread::sleep(Duration::from_millis(300));
        running.assert_all_running();
        eprintln!("accepted: {proxy} as {:?}", running.proxy_args(0));
    }
}

#[test]
fn an_unknown_flag_makes_the_proxy_exit_so_the_checks_can_fail() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pod = injected(&credential(one_instance(json!({}))));
    let mut argv = vec![proxy_binary().display().to_string()];
    argv.extend(strings(&container(&pod, "alloydb-proxy-0")["args"]));
    argv.push("--no-such-setting".to_owned());
    let mut process = Process::start("alloydb-proxy-0", &argv, &[]);
    let code = exit_code(&mut process, Duration::from_secs(20));
    assert_ne!(code, Some(0), "{}", process.logs());
}

#[test]
fn every_setting_at_once_metrics_where_annotated_and_quitquitquit_exits_zero() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let admin = free_port();
    let fc = credential(json!({
        "instances": [
            {"uri": INSTANCE, "connectivity": "PSC", "port": free_port()},
            {"uri": REPLICA, "connectivity": "PrivateIP", "autoIamAuthn": false,
             "port": free_port(), "hostEnvName": "REPLICA_HOST", "portEnvName": "REPLICA_PORT"}
        ],
        "proxy": {
            "image": "gcr.io/alloydb-connectors/alloydb-auth-proxy@sha256:4e1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8",
            "lazyRefresh": true,
            "prometheus": true,
            "maxConnections": 50,
            "maxSigtermDelay": "2s",
            "minSigtermDelay": "1s",
            "adminPort": admin
        }
    }));
    let pod = injected(&fc);
    the_api_server_accepts(&pod);
    let annotations = pod["metadata"]["annotations"].clone();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    let metrics_port: u16 = annotations["prometheus.io/port"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let metrics_path = annotations["prometheus.io/path"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut running = Running::start(pod);
    let app = running.app_env();
    reachable(&app, "PGHOST", "PGPORT");
    reachable(&app, "REPLICA_HOST", "REPLICA_PORT");
    assert_eq!(
        var(&app, "PGUSER").as_deref(),
        Some("orders-api@acme-shop.iam")
    );

    // Prometheus scrapes the pod IP; the health server listens on every address.
    let (status, body) = http("GET", metrics_port, &metrics_path).unwrap();
    assert_eq!(status, 200, "{body}");
    running.assert_all_running();

    // Each proxy has its own admin port; POST /quitquitquit ends it with 0, the other stays.
    let args = running.proxy_args(1);
    assert!(
        args.contains(&format!("--admin-port={}", admin + 1)),
        "{args:?}"
    );
    let (status, _) = http("POST", admin + 1, "/quitquitquit").unwrap();
    assert_eq!(status, 200);
    let code = exit_code(running.proxy(1), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", running.proxy(1).logs());
    assert!(running.proxy(0).running(), "{}", running.proxy(0).logs());
    let (status, _) = http("POST", admin, "/quitquitquit").unwrap();
    assert_eq!(status, 200);
    let code = exit_code(running.proxy(0), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", running.proxy(0).logs());
}

#[test]
fn unix_sockets_appear_where_pghost_points_in_the_shared_directory() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let fc = credential(json!({
        "instances": [
            {"uri": INSTANCE, "connectivity": "PSC"},
            {"uri": REPLICA, "connectivity": "PSC", "port": 5433,
             "hostEnvName": "REPLICA_HOST", "portEnvName": "REPLICA_PORT"}
        ],
        "proxy": {"unixSocket": true}
    }));
    let pod = injected(&fc);
    the_api_server_accepts(&pod);
    // The application and the proxies share the directory.
    for name in ["app", "alloydb-proxy-0", "alloydb-proxy-1"] {
        let mounts = container(&pod, name)["volumeMounts"].clone();
        assert!(
            mounts
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == SOCKET_DIR),
            "{name}: {mounts}"
        );
    }
    let mut running = Running::start(pod);
    let app = running.app_env();
    assert!(
        var(&app, "PGHOST")
            .unwrap()
            .starts_with(&*running.sockets.to_string_lossy())
    );
    reachable(&app, "PGHOST", "PGPORT");
    reachable(&app, "REPLICA_HOST", "REPLICA_PORT");
    running.assert_all_running();
}

#[test]
fn the_shipped_example_is_valid_and_its_proxies_run() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let text =
        std::fs::read_to_string(support::repo_root().join("examples/alloydb-proxy-settings.yaml"))
            .unwrap();
    let document = text
        .split("\n---\n")
        .find(|d| d.contains("kind: FederatedCredential"))
        .unwrap();
    let fc: Value = serde_norway::from_str(document).unwrap();
    fedcred_core::validate::federated_credential(&fc)
        .unwrap_or_else(|e| panic!("the example is invalid: {e}"));
    let mut fc = fc;
    fc["status"] = credential(json!(null))
        .status
        .map(|s| serde_json::to_value(s).unwrap())
        .unwrap();
    let pod = injected(&serde_json::from_value(fc).unwrap());
    the_api_server_accepts(&pod);
    let mut running = Running::start(pod);
    let app = running.app_env();
    reachable(&app, "PGHOST", "PGPORT");
    reachable(&app, "READ_POOL_HOST", "READ_POOL_PORT");
    assert_eq!(
        var(&app, "READ_POOL_USER").as_deref(),
        Some("orders-api@acme-shop.iam")
    );
    // What the example's Job runs when it is done.
    for (index, port) in [(0, 9091), (1, 9092)] {
        let (status, _) = http("POST", port, "/quitquitquit").unwrap();
        assert_eq!(status, 200);
        let code = exit_code(running.proxy(index), Duration::from_secs(30));
        assert_eq!(code, Some(0), "{}", running.proxy(index).logs());
    }
}

#[test]
fn cloudsql_proxies_run_beside_an_alloydb_proxy_from_the_injected_pod() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut fc = credential(one_instance(json!({})));
    fc.spec.cloudsql = Some(
        serde_json::from_value(json!({
            "instances": [
                {"connectionName": "acme-shop:asia-northeast1:orders-pg", "port": free_port(),
                 "hostEnvName": "ORDERS_HOST", "portEnvName": "ORDERS_PORT",
                 "userEnvName": "ORDERS_USER"},
                {"connectionName": "acme-shop:asia-northeast1:legacy", "engine": "MySQL",
                 "connectivity": "PrivateIP", "port": free_port()},
                {"connectionName": "acme-shop:asia-northeast1:reports", "connectivity": "PSC",
                 "autoIamAuthn": false, "port": free_port(), "hostEnvName": "REPORTS_HOST",
                 "portEnvName": "REPORTS_PORT"}
            ]
        }))
        .unwrap(),
    );
    let pod = injected(&fc);
    the_api_server_accepts(&pod);
    let mut running = Running::start(pod);
    let env = running.app_env();
    reachable(&env, "PGHOST", "PGPORT");
    reachable(&env, "ORDERS_HOST", "ORDERS_PORT");
    reachable(&env, "MYSQL_HOST", "MYSQL_TCP_PORT");
    reachable(&env, "REPORTS_HOST", "REPORTS_PORT");
    assert_eq!(
        var(&env, "ORDERS_USER").as_deref(),
        Some("orders-api@acme-shop.iam")
    );
    assert_eq!(var(&env, "MYSQL_USER").as_deref(), Some("orders-api"));
    assert_eq!(
        var(&env, "PGUSER").as_deref(),
        Some("orders-api@acme-shop.iam")
    );
    std::thread::sleep(Duration::from_millis(300));
    running.assert_all_running();
    // The Cloud SQL proxies after the AlloyDB one, each as injected.
    let mysql = strings(&container(&running.pod, "cloudsql-proxy-1")["args"]);
    assert!(mysql.contains(&"--private-ip".to_owned()), "{mysql:?}");
    let reports = strings(&container(&running.pod, "cloudsql-proxy-2")["args"]);
    assert!(
        reports.contains(&"--psc".to_owned()) && !reports.contains(&"--auto-iam-authn".to_owned()),
        "{reports:?}"
    );
}

#[test]
fn an_unknown_flag_makes_the_cloudsql_proxy_exit_so_the_check_can_fail() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut fc = credential(one_instance(json!({})));
    fc.spec.cloudsql = Some(
        serde_json::from_value(json!({"instances": [
            {"connectionName": "acme-shop:asia-northeast1:orders-pg", "port": free_port()}
        ]}))
        .unwrap(),
    );
    let pod = injected(&fc);
    let mut argv = vec![cloudsql_proxy_binary().display().to_string()];
    argv.extend(strings(&container(&pod, "cloudsql-proxy-0")["args"]));
    argv.push("--no-such-setting".to_owned());
    let mut process = Process::start("cloudsql-proxy-0", &argv, &[]);
    let code = exit_code(&mut process, Duration::from_secs(20));
    assert_ne!(code, Some(0), "{}", process.logs());
}

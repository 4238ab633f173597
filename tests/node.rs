//! Pods on a real node: the kubelet and containerd that `hack/controlplane.sh up DIR --node`
//! starts run the pods these tests create, from images written from the repository's own
//! binaries (hack/node/images.py). Nothing here imitates the kubelet: the Secret volume, the
//! native sidecar's startup probe, the security context and the image layout are the real
//! ones.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use fedcred_doubles::Config;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::{Value, json};
use support::cloud::{AUDIENCE, Cloud, SA_EMAIL};
use support::webhook::controller_with_webhook;
use support::{TestNamespace, node_image as image, sha256_hex, wait_until};

/// The names of the pod's native sidecars (init containers that restart always), in order.
fn native_sidecars(pod: &Value) -> Vec<&str> {
    pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["restartPolicy"] == "Always")
        .filter_map(|c| c["name"].as_str())
        .collect()
}

fn phase(ns: &TestNamespace, pod: &str) -> String {
    ns.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"], None)
        .stdout
}

/// Waits until every container of the pod (native sidecars included) is ready; returns how
/// long it took. Fails with the pod's status and events if it does not happen in `limit`.
fn wait_ready(ns: &TestNamespace, pod: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let out = ns.kubectl(&["get", "pod", pod, "-o", "json"], None);
        if out.ok {
            let pod: Value = serde_json::from_str(&out.stdout).unwrap();
            let statuses: Vec<&Value> = ["initContainerStatuses", "containerStatuses"]
                .iter()
                .filter_map(|k| pod["status"][k].as_array())
                .flatten()
                .collect();
            let sidecar_names = native_sidecars(&pod);
            let running = pod["status"]["phase"] == "Running";
            let ready = statuses
                .iter()
                .filter(|s| {
                    sidecar_names.contains(&s["name"].as_str().unwrap_or_default())
                        || pod["spec"]["containers"]
                            .as_array()
                            .is_some_and(|cs| cs.iter().any(|c| c["name"] == s["name"]))
                })
                .all(|s| s["ready"] == true);
            if running && ready && !statuses.is_empty() {
                return start.elapsed();
            }
        }
        if start.elapsed() > limit {
            let describe = ns.kubectl(&["describe", "pod", pod], None).stdout;
            panic!("pod {pod} not ready within {limit:?}:\n{describe}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_pod_runs_on_the_node_and_kubectl_reaches_its_containers() {
    let ns = TestNamespace::new("node");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hello"},
        "spec": {
            "containers": [{
                "name": "app",
                "image": image("client"),
                "command": ["python3", "-c",
                    "import os, time; print('hello from uid', os.getuid(), flush=True); time.sleep(3600)"],
                "securityContext": {
                    "readOnlyRootFilesystem": true, "runAsNonRoot": true,
                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
            "terminationGracePeriodSeconds": 1,
        },
    });
    ns.kubectl(&["create", "-f", "-"], Some(&pod.to_string()))
        .success();
    let took = wait_ready(&ns, "hello", Duration::from_secs(60));
    eprintln!("pod Running and ready {took:?} after create");
    assert_eq!(phase(&ns, "hello"), "Running");

    // The API server reaches the kubelet for logs and exec (node named localhost).
    wait_until(Duration::from_secs(10), || {
        ns.kubectl(&["logs", "hello"], None)
            .stdout
            .contains("hello from uid 65532")
    });
    let out = ns
        .kubectl(
            &[
                "exec",
                "hello",
                "--",
                "python3",
                "-c",
                "import os; open('/tmp/w', 'w').write('x'); print(os.listdir('/var/run/secrets/kubernetes.io/serviceaccount'))",
            ],
            None,
        )
        .success();
    // The ServiceAccount token volume mounted (kube-root-ca.crt published), /tmp writable
    // through its emptyDir.
    assert!(out.contains("token") && out.contains("ca.crt"), "{out}");
    // The root filesystem is read-only, as the security context asks.
    let refused = ns.kubectl(
        &[
            "exec",
            "hello",
            "--",
            "python3",
            "-c",
            "open('/home/nonroot/x', 'w')",
        ],
        None,
    );
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("Read-only file system")
            || refused.stdout.contains("Read-only file system"),
        "{}",
        refused.stderr
    );
}

/// The app of the injected pod: asks the metadata server the injected environment names for
/// a token ten times a second and prints, when it changes, when it saw it and its digest
/// (never the token).
const TOKEN_WATCHER: &str = r#"
import hashlib, json, os, time, urllib.request
url = "http://%s/computeMetadata/v1/instance/service-accounts/default/token" % os.environ["GCE_METADATA_HOST"]
last = None
while True:
    try:
        req = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
        body = json.load(urllib.request.urlopen(req, timeout=2))
        seen = {"token_sha256": hashlib.sha256(body["access_token"].encode()).hexdigest()}
    except Exception as e:
        seen = {"error": type(e).__name__ + ": " + str(e)[:200]}
    if seen != last:
        print(json.dumps(dict(seen, at=time.time())), flush=True)
        last = seen
    time.sleep(0.1)
"#;

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What the app printed: `(seen at, digest)` for tokens, and every error it met.
fn app_log(ns: &TestNamespace, pod: &str) -> (Vec<(f64, String)>, Vec<String>) {
    let out = ns.kubectl(&["logs", pod, "-c", "app"], None).success();
    let mut tokens = Vec::new();
    let mut errors = Vec::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| json!({"error": line}));
        match v["token_sha256"].as_str() {
            Some(d) => tokens.push((v["at"].as_f64().unwrap(), d.to_owned())),
            None => errors.push(v["error"].to_string()),
        }
    }
    (tokens, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_pod_reads_the_token_from_the_kubelet_mounted_secret_and_follows_refreshes() {
    support::ensure_crd();
    let ns = TestNamespace::new("node-inject");
    // Tokens of 40 s refreshed with 30 s left: a new token every ten seconds or so, each
    // still far from the metadata server's 10-second expiry margin when the kubelet delivers
    // it. (With 20-s tokens refreshed with 10 s left the app met 503s: a token must reach
    // the pod before it is within the margin, which real lifetimes leave minutes for.)
    let cloud = Cloud::start(|c| Config {
        impersonated_lifetime_cap_seconds: Some(40),
        ..c
    })
    .await;
    support::cloud::service_account(&ns, "orders-api");
    let (registration, _controller) = controller_with_webhook(&ns, &cloud, "r1", &image("fedcred"));
    registration.wait_for_ca_bundle();
    let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
    "metadata": {"name": "orders"},
    "spec": {
        "aws": {"serviceAccount": {"name": "orders-api"}, "region": "us-east-1", "stsEndpoint": cloud.moto.url()},
        "google": {
            "audience": AUDIENCE,
            "serviceAccount": SA_EMAIL,
            "endpoints": {"sts": cloud.google.sts_url(), "iamCredentials": cloud.google.iam_credentials_url()},
        },
        "secret": {"name": "orders-token", "renewBeforePercentage": 75},
    }});
    ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();

    // Every token the controller writes, with when the API server first had it.
    let secrets: Api<Secret> = Api::namespaced(support::kube_client().await, &ns.name);
    let written: std::sync::Arc<std::sync::Mutex<BTreeMap<String, f64>>> = Default::default();
    let recorder = {
        let written = written.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(secret) = secrets.get("orders-token").await
                    && let Some(token) = secret.data.as_ref().and_then(|d| d.get("access_token"))
                {
                    let digest = sha256_hex(&String::from_utf8_lossy(&token.0));
                    written
                        .lock()
                        .unwrap()
                        .entry(digest)
                        .or_insert_with(|| unix_seconds(SystemTime::now()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    wait_until(Duration::from_secs(60), || {
        !written.lock().unwrap().is_empty()
    });

    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "orders",
            "labels": {"fedcred.io/inject": "true"},
            "annotations": {"fedcred.io/credential": "orders"},
        },
        "spec": {
            "serviceAccountName": "orders-api",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app",
                "image": image("client"),
                "command": ["python3", "-c", TOKEN_WATCHER],
                "securityContext": {"readOnlyRootFilesystem": true, "runAsNonRoot": true,
                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    });
    // The webhook's configuration may take a moment to reach the API server's watch.
    let created = Instant::now();
    wait_until(Duration::from_secs(30), || {
        ns.kubectl(&["create", "-f", "-"], Some(&pod.to_string()))
            .ok
    });
    let stored: Value = serde_json::from_str(
        &ns.kubectl(&["get", "pod", "orders", "-o", "json"], None)
            .success(),
    )
    .unwrap();
    assert_eq!(native_sidecars(&stored), ["fedcred-metadata"]);
    wait_ready(&ns, "orders", Duration::from_secs(90));
    let ready = created.elapsed();
    eprintln!("injected pod ready {ready:?} after create (metadata sidecar startup probe passed)");

    // The sidecar runs the image's binary as 65532, with no shell in the image.
    let version = ns
        .kubectl(
            &[
                "exec",
                "orders",
                "-c",
                "fedcred-metadata",
                "--",
                "/usr/local/bin/fedcred",
                "--version",
            ],
            None,
        )
        .success();
    assert!(version.starts_with("fedcred "), "{version}");
    let shell = ns.kubectl(
        &[
            "exec",
            "orders",
            "-c",
            "fedcred-metadata",
            "--",
            "sh",
            "-c",
            "id",
        ],
        None,
    );
    assert!(!shell.ok, "the fedcred image has a shell: {}", shell.stdout);

    // Watch at least four refreshes reach the app through the kubelet's Secret volume.
    let watch_start = Instant::now();
    loop {
        let (tokens, _) = app_log(&ns, "orders");
        if tokens.len() >= 5 {
            break;
        }
        assert!(
            watch_start.elapsed() < Duration::from_secs(120),
            "only {} tokens reached the app in {:?}; written: {}",
            tokens.len(),
            watch_start.elapsed(),
            written.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    recorder.abort();
    let written = written.lock().unwrap().clone();
    let (tokens, errors) = app_log(&ns, "orders");
    assert!(
        errors.is_empty(),
        "the app met errors asking the metadata server: {errors:?}"
    );
    // Every token the app saw is one the controller wrote, and each came after it was written.
    let mut delays = Vec::new();
    for (i, (seen_at, digest)) in tokens.iter().enumerate() {
        let Some(&written_at) = written.get(digest) else {
            panic!("the app saw a token the Secret never held (digest {digest})");
        };
        // The first token was written before the pod existed; later ones are refreshes.
        if i > 0 {
            assert!(
                *seen_at >= written_at - 0.1,
                "seen before written: {seen_at} < {written_at}"
            );
            delays.push(seen_at - written_at);
        }
    }
    // Tokens written while the pod ran, except the newest (it may still be on its way),
    // all reached the app: none was skipped by the kubelet's sync.
    let first_seen = tokens[0].0;
    let seen: std::collections::BTreeSet<&str> = tokens.iter().map(|(_, d)| d.as_str()).collect();
    let mut missed: Vec<(&String, &f64)> = written
        .iter()
        .filter(|(d, at)| **at > first_seen && !seen.contains(d.as_str()))
        .collect();
    missed.sort_by(|a, b| a.1.total_cmp(b.1));
    missed.pop();
    assert!(
        missed.is_empty(),
        "tokens written that never reached the app: {missed:?}"
    );
    delays.sort_by(f64::total_cmp);
    let median = delays[delays.len() / 2];
    eprintln!(
        "Secret write -> app sees the new token through the kubelet's volume: n={} median {:.2} s, min {:.2} s, max {:.2} s (syncFrequency 3 s): {:?}",
        delays.len(),
        median,
        delays[0],
        delays[delays.len() - 1],
        delays.iter().map(|d| format!("{d:.2}")).collect::<Vec<_>>()
    );
    if let Some(dir) = std::env::var_os("FEDCRED_EVIDENCE_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            std::path::Path::new(&dir).join("node-secret-propagation.txt"),
            format!(
                "injected pod ready after {:.2} s\ndelays (s): {:?}\n",
                ready.as_secs_f64(),
                delays
            ),
        );
    }
}

/// The app of the seed-000 Deployment: logs in with `psql` and the injected `PG*` variables
/// every two seconds and prints, as a JSON line each, the user the server logged in or
/// psql's error (psql runs from Python: the client image has no shell).
const PSQL_LOOP: &str = r#"
import json, os, subprocess, time
while True:
    out = subprocess.run(["psql", "-X", "-A", "-t", "-c", "select current_user"],
                         capture_output=True, text=True,
                         env=dict(os.environ, PGCONNECT_TIMEOUT="30"))
    line = {"at": time.time()}
    if out.returncode == 0:
        line["user"] = out.stdout.strip()
    else:
        line["error"] = out.stderr.strip()[:300]
    print(json.dumps(line), flush=True)
    time.sleep(2)
"#;

/// `(unix seconds, text)` lines an app printed.
type Timed = Vec<(f64, String)>;

/// What the app of `pod` printed: `(at, user)` of each login, and `(at, error)` of each failure.
fn logins(ns: &TestNamespace, pod: &str) -> (Timed, Timed) {
    let out = ns.kubectl(&["logs", pod, "-c", "app"], None);
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for line in out.stdout.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let at = v["at"].as_f64().unwrap_or_default();
        match (v["user"].as_str(), v["error"].as_str()) {
            (Some(user), _) => ok.push((at, user.to_owned())),
            (_, Some(error)) => failed.push((at, error.to_owned())),
            _ => {}
        }
    }
    (ok, failed)
}

/// The pods of the Deployment `app=orders-api` that are not being deleted, as stored.
fn deployment_pods(ns: &TestNamespace) -> Vec<Value> {
    let out = ns
        .kubectl(&["get", "pods", "-l", "app=orders-api", "-o", "json"], None)
        .success();
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

fn proxy_args(pod: &Value) -> Vec<String> {
    pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("alloydb-proxy"))
        })
        .flat_map(|c| c["args"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// Seed 000 on the node, created the way users create it: the example's Deployment → its
/// ReplicaSet → a pod the webhook injects → the kubelet starts the fedcred metadata sidecar and
/// the real AlloyDB Auth Proxy from their images, and the app's `psql` logs in through the proxy
/// (PSC, automatic IAM login) to the AlloyDB instance double in front of a real PostgreSQL, as
/// the service account's IAM database user — and keeps doing so after the first token has
/// expired, the refreshed tokens arriving through the kubelet's Secret volume. Then a change of
/// `spec.alloydb` rolls the Deployment, and the new pod carries the new proxy flag and logs in
/// too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_deployment_logs_in_to_alloydb_through_the_real_proxy_and_rolls_on_change() {
    use fedcred_doubles::alloydb::{AlloyDbConfig, AlloyDbDoubles, InstanceConfig};
    use support::alloydb::Postgres;
    use support::webhook::controller_with_webhook_and;

    const DB_USER: &str = "orders-api@acme-shop.iam";
    support::ensure_crd();
    let host_ip = std::env::var("FEDCRED_TEST_NODE_HOST_IP")
        .expect("FEDCRED_TEST_NODE_HOST_IP is set with the node's env");
    let ns = TestNamespace::new("node-seed000");
    let postgres = Postgres::start(DB_USER);
    // Tokens of 40 s, refreshed with half left: the first expires about a minute into the
    // pod's life.
    let cloud = Cloud::start(|c| Config {
        impersonated_lifetime_cap_seconds: Some(40),
        ..c
    })
    .await;
    // Pods reach the host at the bridge's address; it exists only once the node has networked
    // a pod, so the doubles listen on every address.
    let alloydb = AlloyDbDoubles::start(
        AlloyDbConfig {
            postgres: Some(postgres.addr),
            admin_listen: "0.0.0.0:0".parse().unwrap(),
            instance_listen: "0.0.0.0:5433".parse().unwrap(),
            ..AlloyDbConfig::default()
        }
        .instance(InstanceConfig::psc(support::INSTANCE, &host_ip))
        .service_account(SA_EMAIL),
        &cloud.google.tokeninfo_url(),
    )
    .await
    .expect("the AlloyDB doubles start (is port 5433 free?)");
    let admin = format!("http://{host_ip}:{}", alloydb.admin_addr().port());

    support::cloud::service_account(&ns, "orders-api");
    let (registration, _controller) = controller_with_webhook_and(
        &ns,
        &cloud,
        "seed000",
        &image("fedcred"),
        &[
            "--proxy-image",
            &image("alloydb-auth-proxy"),
            "--alloydb-admin-endpoint",
            &admin,
        ],
    );
    registration.wait_for_ca_bundle();

    let mut fc = serde_json::to_value(cloud.spec(
        json!({"serviceAccount": {"name": "orders-api"}}),
        json!({"tokenLifetimeSeconds": 600}),
    ))
    .unwrap();
    fc["alloydb"] = json!({"instances": [
        {"uri": support::INSTANCE, "connectivity": "PSC", "autoIamAuthn": true, "port": 5432}
    ]});
    let resource = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "orders-db"}, "spec": fc});
    ns.kubectl(&["apply", "-f", "-"], Some(&resource.to_string()))
        .success();
    wait_until(Duration::from_secs(60), || {
        ns.kubectl(
            &[
                "get",
                "secret",
                "orders-db",
                "-o",
                "jsonpath={.data.access_token}",
            ],
            None,
        )
        .stdout
        .len()
            > 10
    });
    support::webhook::wait_for_webhook(
        &ns,
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "probe", "labels": {"fedcred.io/inject": "true"}},
            "spec": {"containers": [{"name": "app", "image": image("client")}]}}),
    );

    // The example's Deployment, with the app replaced by the psql loop.
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "orders-api"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "orders-api"}},
            "template": {
                "metadata": {
                    "labels": {"app": "orders-api", "fedcred.io/inject": "true"},
                    "annotations": {"fedcred.io/credential": "orders-db"},
                },
                "spec": {
                    "serviceAccountName": "orders-api",
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "app",
                        "image": image("client"),
                        "command": ["python3", "-c", PSQL_LOOP],
                        "env": [{"name": "PGDATABASE", "value": "postgres"}],
                        "securityContext": {"readOnlyRootFilesystem": true, "runAsNonRoot": true,
                            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    });
    let created = Instant::now();
    let created_at = unix_seconds(SystemTime::now());
    ns.kubectl(&["apply", "-f", "-"], Some(&deployment.to_string()))
        .success();
    let mut first = None;
    wait_until(Duration::from_secs(60), || {
        first = deployment_pods(&ns).into_iter().next();
        first.is_some()
    });
    let first = first.unwrap();
    let first_name = first["metadata"]["name"].as_str().unwrap().to_owned();
    let sidecars = native_sidecars(&first);
    assert_eq!(
        sidecars.len(),
        2,
        "metadata and proxy sidecars: {sidecars:?}"
    );
    assert!(proxy_args(&first).iter().any(|a| a == "--psc"));
    wait_ready(&ns, &first_name, Duration::from_secs(120));
    let ready = created.elapsed();
    eprintln!(
        "seed-000 pod (Deployment -> ReplicaSet -> injected pod) ready {ready:?} after apply"
    );

    // Logins keep working across the first token's expiry: watch until at least three have
    // succeeded more than 45 s after the first (the first token, issued before the pod,
    // expired by then).
    let limit = Instant::now() + Duration::from_secs(150);
    let (ok, failed) = loop {
        let (ok, failed) = logins(&ns, &first_name);
        if let Some(&(t0, _)) = ok.first()
            && ok.iter().filter(|(at, _)| *at > t0 + 45.0).count() >= 3
        {
            break (ok, failed);
        }
        assert!(
            Instant::now() < limit,
            "the app did not keep logging in: {} logins, errors {failed:?}\nproxy log:\n{}",
            ok.len(),
            ns.kubectl(&["logs", &first_name, "-c", "alloydb-proxy-0"], None)
                .stdout
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    assert!(
        ok.iter().all(|(_, user)| user == DB_USER),
        "logged in as someone else: {ok:?}"
    );
    let t0 = ok[0].0;
    let after_first: Vec<_> = failed.iter().filter(|(at, _)| *at > t0).collect();
    assert!(
        after_first.is_empty(),
        "logins failed after the first success: {after_first:?}"
    );
    let first_login = t0 - created_at;
    eprintln!(
        "first login {first_login:.1} s after apply; {} logins over {:.0} s, {} failures before the first",
        ok.len(),
        ok.last().unwrap().0 - t0,
        failed.len()
    );
    // Every login was the double's IAM login on a certificate issued for a live token.
    assert!(
        alloydb
            .connections()
            .iter()
            .filter(|c| c.db_user.as_deref() == Some(DB_USER)
                && c.outcome == fedcred_doubles::alloydb::Outcome::Accepted)
            .count()
            >= ok.len(),
        "the instance double saw fewer IAM logins than the app reports"
    );

    // A change of spec.alloydb rolls the Deployment: the new pod carries the new flag.
    ns.kubectl(
        &[
            "patch",
            "federatedcredential",
            "orders-db",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"alloydb":{"proxy":{"maxConnections":7}}}}"#,
        ],
        None,
    )
    .success();
    let rolled = Instant::now();
    let mut second = None;
    wait_until(Duration::from_secs(60), || {
        second = deployment_pods(&ns).into_iter().find(|p| {
            p["metadata"]["name"] != first_name.as_str()
                && proxy_args(p).iter().any(|a| a == "--max-connections=7")
        });
        second.is_some()
    });
    let second_name = second.unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_ready(&ns, &second_name, Duration::from_secs(120));
    wait_until(Duration::from_secs(60), || {
        !logins(&ns, &second_name).0.is_empty()
    });
    // The old pod goes once the new one is available.
    wait_until(Duration::from_secs(60), || {
        deployment_pods(&ns)
            .iter()
            .all(|p| p["metadata"]["name"] != first_name.as_str())
    });
    eprintln!(
        "spec.alloydb change -> new pod logged in and old pod gone in {:?}",
        rolled.elapsed()
    );
    let (ok, failed) = logins(&ns, &second_name);
    assert!(ok.iter().all(|(_, u)| u == DB_USER), "{ok:?} {failed:?}");
    if let Some(dir) = std::env::var_os("FEDCRED_EVIDENCE_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            std::path::Path::new(&dir).join("node-seed000.txt"),
            format!(
                "pod ready after apply: {:.2} s\nfirst login after apply: {first_login:.1} s\nrollout to new pod logged in: {:.1} s\n",
                ready.as_secs_f64(),
                rolled.elapsed().as_secs_f64()
            ),
        );
    }
}

/// Reads the token from the metadata server once and prints its digest and the service
/// account the server names.
const TOKEN_ONCE: &str = r#"
import hashlib, json, os, urllib.request
base = "http://%s/computeMetadata/v1/instance/service-accounts/default/" % os.environ["GCE_METADATA_HOST"]
def get(path):
    req = urllib.request.Request(base + path, headers={"Metadata-Flavor": "Google"})
    return urllib.request.urlopen(req, timeout=5).read().decode()
token = json.loads(get("token"))
print(json.dumps({"token_sha256": hashlib.sha256(token["access_token"].encode()).hexdigest(),
                  "email": get("email")}), flush=True)
"#;

/// Uninstalls the release when the test ends, so its cluster-wide objects (the webhook
/// configuration, the ClusterRole) do not outlive it.
struct Release {
    name: String,
    namespace: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::process::Command::new("helm")
            .args(["uninstall", &self.name, "--namespace", &self.namespace])
            .env("KUBECONFIG", support::kubeconfig())
            .output();
    }
}

/// The controller as users run it: `helm install` of the chart puts it on the node as a pod
/// from the fedcred image, with the chart's ServiceAccount, security context and probes. It
/// reaches the API server through in-cluster configuration, the API server calls its webhook
/// at the pod's endpoint, it exchanges through moto and the Google doubles, and a pod it
/// injected reads the token it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_runs_as_a_pod_from_the_chart_and_its_webhook_injects_pods() {
    support::ensure_crd();
    let host_ip = std::env::var("FEDCRED_TEST_NODE_HOST_IP")
        .expect("FEDCRED_TEST_NODE_HOST_IP is set with the node's env");
    // The controller's namespace (its Lease and webhook Secret) and a tenant's.
    let system = TestNamespace::new("node-helm-system");
    let ns = TestNamespace::new("node-helm");

    // Pods reach the host only at the bridge's address, and FederatedCredentials name only
    // https:// endpoints off loopback: moto and the Google doubles are served there over TLS
    // with a certificate from a test CA, which the controller trusts through the chart's
    // extraVolumes and SSL_CERT_FILE, as a private CA is trusted. The doubles accept subject
    // tokens signed for that STS address and send their GetCallerIdentity to moto.
    let certs = fedcred::webhook::tls::generate(std::slice::from_ref(&host_ip)).unwrap();
    let tls = fedcred::webhook::tls::server_config(&certs.cert_pem, &certs.key_pem).unwrap();
    let moto_port = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let google_port = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let moto = format!(
        "https://{host_ip}:{}",
        moto_port.local_addr().unwrap().port()
    );
    let google = format!(
        "https://{host_ip}:{}",
        google_port.local_addr().unwrap().port()
    );
    let routed = std::sync::Arc::new(std::sync::Mutex::new(None));
    let cloud = Cloud::start(|mut c| {
        c.aws_sts_endpoints.push(moto.clone());
        let local = c.moto_url.clone().expect("the cloud's doubles know moto");
        *routed.lock().unwrap() = Some(local.clone());
        c.aws_sts_routes.push((moto.clone(), local));
        c
    })
    .await;
    assert_eq!(
        routed.lock().unwrap().as_deref(),
        Some(cloud.moto.url().as_str())
    );
    support::forward_from_pods(moto_port, tls.clone(), &cloud.moto.url());
    support::forward_from_pods(google_port, tls, &cloud.google.base_url());
    let sts = cloud
        .google
        .sts_url()
        .replace(&cloud.google.base_url(), &google);
    let iam = cloud
        .google
        .iam_credentials_url()
        .replace(&cloud.google.base_url(), &google);
    let ca = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "test-ca"}, "data": {"ca.crt": certs.ca_pem}});
    system
        .kubectl(&["apply", "-f", "-"], Some(&ca.to_string()))
        .success();
    support::cloud::service_account(&ns, "orders-api");

    // In-cluster configuration names the API server by the `kubernetes` Service's address,
    // which nothing routes here (no kube-proxy): the chart's extraEnv points it at the
    // bridge's host address, as clusters without kube-proxy do.
    let kubeconfig = std::fs::read_to_string(support::kubeconfig()).unwrap();
    let api_port = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .expect("the kubeconfig names the API server on loopback")
        .trim()
        .to_owned();
    let fedcred_image = image("fedcred");
    let (repository, tag) = fedcred_image.rsplit_once(':').unwrap();
    let values = json!({
        "replicaCount": 1,
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "watchNamespaces": [ns.name],
        "awsRegion": "us-east-1",
        "endpoints": {"allowed": [moto, google]},
        "webhook": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}}},
        "podDisruptionBudget": {"enabled": false},
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": host_ip},
            {"name": "KUBERNETES_SERVICE_PORT", "value": api_port},
            {"name": "SSL_CERT_FILE", "value": "/etc/fedcred/test-ca/ca.crt"},
        ],
        "extraVolumes": [{"name": "test-ca", "configMap": {"name": "test-ca"}}],
        "extraVolumeMounts": [{"name": "test-ca", "mountPath": "/etc/fedcred/test-ca", "readOnly": true}],
    });
    let values_file = std::env::temp_dir().join(format!("{}-values.json", system.name));
    std::fs::write(&values_file, values.to_string()).unwrap();
    let release = Release {
        name: system.name.clone(),
        namespace: system.name.clone(),
    };
    let started = Instant::now();
    let install = tokio::task::spawn_blocking({
        let (release, namespace, values_file) = (
            release.name.clone(),
            system.name.clone(),
            values_file.clone(),
        );
        move || {
            std::process::Command::new("helm")
                .args(["install", &release])
                .arg(support::repo_root().join("charts/fedcred"))
                .args([
                    "--namespace",
                    &namespace,
                    "--skip-crds",
                    "--wait",
                    "--timeout",
                    "120s",
                ])
                .arg("--values")
                .arg(&values_file)
                .env("KUBECONFIG", support::kubeconfig())
                .output()
                .expect("helm is on PATH (hack/test.sh puts the cached one there)")
        }
    })
    .await
    .unwrap();
    let _ = std::fs::remove_file(&values_file);
    let controller_pods = || {
        let out = system.kubectl(
            &[
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=fedcred",
                "-o",
                "json",
            ],
            None,
        );
        serde_json::from_str::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    assert!(
        install.status.success(),
        "helm install failed: {}\n{}\n{}",
        String::from_utf8_lossy(&install.stderr),
        ns.kubectl(&["describe", "pods"], None).stdout,
        ns.kubectl(
            &[
                "logs",
                "-l",
                "app.kubernetes.io/name=fedcred",
                "--tail",
                "40"
            ],
            None
        )
        .stdout
    );
    let installed = started.elapsed();

    // The pod runs as the chart says: the image, the ServiceAccount, the security context,
    // ready through its probes, not restarted.
    let pods = controller_pods();
    let pod = &pods["items"][0];
    let pod_name = pod["metadata"]["name"].as_str().unwrap();
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], fedcred_image.as_str());
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 65532);
    assert!(container["readinessProbe"].is_object() && container["livenessProbe"].is_object());
    let account = pod["spec"]["serviceAccountName"].as_str().unwrap();
    assert!(
        system.kubectl(&["get", "serviceaccount", account], None).ok,
        "the chart's ServiceAccount {account} exists"
    );
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["restartCount"], 0, "{status}");

    // The API server calls the webhook in the pod (by its endpoint), once the controller has
    // put its CA into the configuration.
    let app = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "orders",
            "labels": {"fedcred.io/inject": "true"},
            "annotations": {"fedcred.io/credential": "orders"},
        },
        "spec": {
            "serviceAccountName": "orders-api",
            "restartPolicy": "Never",
            "containers": [{
                "name": "app",
                "image": image("client"),
                "command": ["python3", "-c", TOKEN_ONCE],
            }],
        },
    });
    support::webhook::wait_for_webhook(&ns, &app);

    // The controller in the pod exchanges and writes the Secret.
    let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
    "metadata": {"name": "orders"},
    "spec": {
        "aws": {"serviceAccount": {"name": "orders-api"}, "region": "us-east-1", "stsEndpoint": moto},
        "google": {
            "audience": AUDIENCE,
            "serviceAccount": SA_EMAIL,
            "endpoints": {"sts": sts, "iamCredentials": iam},
        },
        "secret": {"name": "orders-token"},
    }});
    ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();
    let ready = || {
        ns.kubectl(
            &[
                "get",
                "fedcred",
                "orders",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            None,
        )
        .stdout
            == "True"
    };
    let limit = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(
            Instant::now() < limit,
            "the FederatedCredential is not Ready:\n{}\ncontroller: {}",
            ns.kubectl(&["get", "fedcred", "orders", "-o", "yaml"], None)
                .stdout,
            system
                .kubectl(&["logs", pod_name, "--tail", "40"], None)
                .stdout
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A pod the webhook in the pod injected reads the token the controller in the pod wrote.
    ns.kubectl(&["create", "-f", "-"], Some(&app.to_string()))
        .success();
    let limit = Instant::now() + Duration::from_secs(90);
    while phase(&ns, "orders") != "Succeeded" {
        assert!(
            Instant::now() < limit && phase(&ns, "orders") != "Failed",
            "the app pod did not succeed:\n{}\n{}",
            ns.kubectl(&["describe", "pod", "orders"], None).stdout,
            ns.kubectl(&["logs", "orders", "--all-containers"], None)
                .stdout
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stored: Value = serde_json::from_str(
        &ns.kubectl(&["get", "pod", "orders", "-o", "json"], None)
            .success(),
    )
    .unwrap();
    assert_eq!(native_sidecars(&stored), vec!["fedcred-metadata"]);
    let seen: Value = serde_json::from_str(
        ns.kubectl(&["logs", "orders", "-c", "app"], None)
            .success()
            .trim(),
    )
    .unwrap();
    assert_eq!(seen["email"], SA_EMAIL);
    let secrets: Api<Secret> = Api::namespaced(support::kube_client().await, &ns.name);
    let secret = secrets.get("orders-token").await.unwrap();
    let token = String::from_utf8(secret.data.unwrap()["access_token"].0.clone()).unwrap();
    assert_eq!(seen["token_sha256"], sha256_hex(&token));
    let info = cloud
        .google
        .lookup(&token)
        .expect("the Google doubles issued the token the pod read");
    assert_eq!(info.email(), Some(SA_EMAIL));

    let restarts = &controller_pods()["items"][0]["status"]["containerStatuses"][0]["restartCount"];
    assert_eq!(restarts, 0, "the controller pod restarted");
    if let Some(dir) = std::env::var_os("FEDCRED_EVIDENCE_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            std::path::Path::new(&dir).join("node-helm.txt"),
            format!(
                "helm install --wait: {:.2} s (controller pod Ready)\n",
                installed.as_secs_f64()
            ),
        );
    }
    drop(release);
}

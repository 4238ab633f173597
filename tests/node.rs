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
use sha2::{Digest, Sha256};
use support::cloud::{AUDIENCE, Cloud, SA_EMAIL};
use support::webhook::controller_with_webhook;
use support::{TestNamespace, wait_until};

/// An image the node has, by its name in hack/node/images.py.
fn image(name: &str) -> String {
    let var = format!(
        "FEDCRED_TEST_NODE_IMAGE_{}",
        name.replace('-', "_").to_uppercase()
    );
    std::env::var(&var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: these tests need the node; run them with `hack/test.sh`, or start \
             one with `hack/controlplane.sh up DIR --node` and `source DIR/env`"
        )
    })
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
            let sidecar_names: Vec<&str> = pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["restartPolicy"] == "Always")
                .filter_map(|c| c["name"].as_str())
                .collect();
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

fn sha256_hex(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

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
    let sidecars: Vec<&str> = stored["spec"]["initContainers"]
        .as_array()
        .expect("the webhook injected init containers")
        .iter()
        .filter(|c| c["restartPolicy"] == "Always")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(sidecars, ["fedcred-metadata"]);
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

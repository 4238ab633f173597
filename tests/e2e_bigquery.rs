//! The seed 003 system end to end: a BigQuery report job, written against Google's own client
//! library with application-default credentials and nothing else, runs in a pod that opted in
//! to fedcred. `fedcred controller` (with its admission webhook) runs against the real API
//! server, moto and the Google doubles; the pod the API server stored after mutation is then
//! run as local processes, exactly as stored: the metadata sidecar with its arguments on a
//! directory laid out like the mounted Secret, the app with exactly its environment. The job
//! queries the view, exports the result to Cloud Storage and downloads the export, through a
//! double of both APIs that accepts only live tokens the Google doubles issued to the right
//! service account with a scope covering the API called.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::bigquery::{
    BIGQUERY_SCOPE, BigQuery, Seen, assert_exported_and_downloaded, start_bigquery,
    start_bigquery_at,
};
use support::cloud::{AUDIENCE, Cloud, SA_EMAIL};
use support::pod::{
    Process, SecretVolume, StoredPod, map_paths, secret_data, unique, venv_python,
    wait_for_exec_probe,
};
use support::webhook::controller_with_webhook;
use support::{TestNamespace, wait_until};

const FEDCRED_IMAGE: &str = "ghcr.io/example/fedcred";
const JOB_IMAGE: &str = "registry.example/analytics/bigquery-report";

/// Applies seed 003's FederatedCredential `bigquery-export` (BigQuery scope, the service
/// account the report job runs as, its token in Secret `bigquery-token`) and waits until it is
/// Ready.
fn apply_report_credential(ns: &TestNamespace, cloud: &Cloud) {
    let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
    "metadata": {"name": "bigquery-export"},
    "spec": {
        "aws": {"serviceAccount": {"name": "orders-api"}, "region": "us-east-1", "stsEndpoint": cloud.moto.url()},
        "google": {
            "audience": AUDIENCE,
            "serviceAccount": SA_EMAIL,
            "scopes": [BIGQUERY_SCOPE, "https://www.googleapis.com/auth/devstorage.read_only"],
            "endpoints": {"sts": cloud.google.sts_url(), "iamCredentials": cloud.google.iam_credentials_url()},
        },
        "secret": {"name": "bigquery-token"},
    }});
    ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();
    wait_until(Duration::from_secs(60), || {
        let out = ns.kubectl(
            &[
                "get",
                "fedcred",
                "bigquery-export",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            None,
        );
        out.stdout.trim() == "True"
    });
}

fn report_pod(endpoint: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "bigquery-report",
            "labels": {"app": "bigquery-report", "fedcred.io/inject": "true"},
            "annotations": {"fedcred.io/credential": "bigquery-export"},
        },
        "spec": {
            "serviceAccountName": "orders-api",
            "restartPolicy": "Never",
            "containers": [{
                "name": "report",
                "image": format!("{JOB_IMAGE}:2.0.0"),
                "command": ["python", "/app/bigquery_report.py"],
                "env": [
                    {"name": "BIGQUERY_API_ENDPOINT", "value": endpoint},
                    {"name": "STORAGE_API_ENDPOINT", "value": endpoint},
                ],
            }],
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_bigquery_job_reads_with_the_token_fedcred_keeps() {
    support::ensure_crd();
    let ns = TestNamespace::new("seed003");
    let cloud = Arc::new(Cloud::start(|c| c).await);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let endpoint = start_bigquery(BigQuery {
        cloud: cloud.clone(),
        seen: seen.clone(),
        email: SA_EMAIL.to_owned(),
    })
    .await;

    // The double refuses what Google would refuse.
    let http = reqwest::Client::new();
    let probe = format!("{endpoint}/bigquery/v2/projects/acme-shop/jobs/x");
    let anonymous = http.get(&probe).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let forged = http
        .get(&probe)
        .bearer_auth("ya29.fake-forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    support::cloud::service_account(&ns, "orders-api");

    // The controller, serving its webhook on loopback; it keeps the caBundle current.
    let (registration, _controller) =
        controller_with_webhook(&ns, &cloud, "r1", &format!("{FEDCRED_IMAGE}:e2e"));
    registration.wait_for_ca_bundle();

    apply_report_credential(&ns, &cloud);

    // The pod, created for real; the API server calls the webhook and stores the result.
    // The webhook's configuration may take a moment to reach the API server's watch.
    wait_until(Duration::from_secs(30), || {
        ns.kubectl(
            &["create", "-f", "-"],
            Some(&report_pod(&endpoint).to_string()),
        )
        .ok
    });
    let pod = StoredPod::get(&ns, "bigquery-report");
    let sidecars = pod.sidecars();
    assert_eq!(
        sidecars,
        vec!["fedcred-metadata".to_owned()],
        "no AlloyDB here: the metadata emulator is the only sidecar"
    );

    // The kubelet's part: the Secret volume, then the sidecar, then its startup probe.
    let fedcred = PathBuf::from(env!("CARGO_BIN_EXE_fedcred"));
    let entrypoints: &[(&str, &Path)] = &[
        (FEDCRED_IMAGE, &fedcred),
        ("/usr/local/bin/fedcred", &fedcred),
    ];
    let mut volume = SecretVolume::kubelet();
    // Only the token Secret matters here; the API server also mounts the ServiceAccount's
    // API token into every container, which nothing of fedcred reads.
    let mounts: Vec<(String, PathBuf)> = pod
        .mounts("fedcred-metadata")
        .into_iter()
        .filter(|(_, name)| pod.volume_secret(name).as_deref() == Some("bigquery-token"))
        .map(|(path, _)| (path, volume.dir.clone()))
        .collect();
    assert_eq!(mounts.len(), 1, "the metadata sidecar mounts the Secret");
    assert!(volume.sync(&ns, "bigquery-token"));
    let argv: Vec<String> = pod
        .argv("fedcred-metadata", entrypoints)
        .iter()
        .map(|a| map_paths(a, &mounts))
        .collect();
    let mut metadata = Process::start("fedcred-metadata", &argv, &pod.env("fedcred-metadata"));
    let startup = pod.container("fedcred-metadata")["startupProbe"].clone();
    wait_for_exec_probe(
        &startup,
        entrypoints,
        &mut metadata,
        Duration::from_secs(30),
    );

    // The app: exactly the environment the API server stored for it, plus the empty home
    // directory a fresh container has.
    let env = pod.env("report");
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for wanted in [
        "GCE_METADATA_HOST",
        "GCE_METADATA_IP",
        "GCE_METADATA_ROOT",
        "GOOGLE_CLOUD_PROJECT",
    ] {
        assert!(names.contains(&wanted), "{wanted} not injected: {names:?}");
    }
    let home = unique("report-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut app_env = env.clone();
    app_env.push(("HOME".to_owned(), home.display().to_string()));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/bigquery_report.py");
    let python = venv_python();
    let app_argv: Vec<String> = pod
        .argv("report", &[])
        .into_iter()
        .map(|a| match a.as_str() {
            "python" => python.display().to_string(),
            "/app/bigquery_report.py" => script.display().to_string(),
            _ => a,
        })
        .collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&app_argv[0])
            .args(&app_argv[1..])
            .env_clear()
            .envs(app_env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&home);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the report job failed:\nstdout: {stdout}\nstderr: {stderr}\nrefused: {:?}",
        seen.lock().unwrap().refused
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["project"], "acme-shop");
    assert_eq!(
        report["rows"],
        json!([{"region": "asia-northeast1", "orders": 1204}, {"region": "us-east4", "orders": 877}])
    );
    assert_eq!(report["bytes_processed"], 2048);

    // The double saw exactly the token the controller keeps in the Secret, for the project
    // the Secret names, and the job's query.
    let kept = secret_data(&ns, "bigquery-token").unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.accepted,
        BTreeSet::from([volume.published("access_token").unwrap().to_owned()])
    );
    assert!(
        seen.accepted.contains(&kept["access_token"]),
        "the job used a token that is no longer the Secret's"
    );
    assert_eq!(seen.projects, BTreeSet::from(["acme-shop".to_owned()]));
    assert_eq!(seen.queries.len(), 1);
    assert!(seen.queries[0].contains("sales.daily_orders"));
    assert_exported_and_downloaded(&report, &seen);
    assert_eq!(
        seen.refused,
        vec![(401, "required".to_owned()), (401, "authError".to_owned())],
        "only the two probes above were refused"
    );
}

/// Seed 003 on the real node, as its users run it: a Job whose pod the webhook injects, the
/// kubelet starting the fedcred metadata sidecar from its image and then the report image
/// (Google's BigQuery and Cloud Storage clients and the unchanged program), which queries,
/// exports and downloads through the double with the token the sidecar serves from the
/// kubelet-mounted Secret. The Job
/// completes: the report container exits 0 and the kubelet stops the native sidecar, which
/// would otherwise keep the pod running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_003_job_completes_on_the_node_while_its_native_sidecar_runs() {
    use std::time::Instant;
    support::ensure_crd();
    let host_ip = std::env::var("FEDCRED_TEST_NODE_HOST_IP")
        .expect("FEDCRED_TEST_NODE_HOST_IP is set with the node's env");
    let ns = TestNamespace::new("node-seed003");
    let cloud = Arc::new(Cloud::start(|c| c).await);
    let seen = Arc::new(Mutex::new(Seen::default()));
    // Pods reach the host at the bridge's address, which exists once the node networked a pod.
    let endpoint = start_bigquery_at(
        BigQuery {
            cloud: cloud.clone(),
            seen: seen.clone(),
            email: SA_EMAIL.to_owned(),
        },
        "0.0.0.0",
        &host_ip,
    )
    .await;
    support::cloud::service_account(&ns, "orders-api");
    let (registration, _controller) =
        controller_with_webhook(&ns, &cloud, "seed003", &support::node_image("fedcred"));
    registration.wait_for_ca_bundle();
    apply_report_credential(&ns, &cloud);
    support::webhook::wait_for_webhook(&ns, &report_pod(&endpoint));

    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "bigquery-report"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "labels": {"app": "bigquery-report", "fedcred.io/inject": "true"},
                    "annotations": {"fedcred.io/credential": "bigquery-export"},
                },
                "spec": {
                    "serviceAccountName": "orders-api",
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "report",
                        "image": support::node_image("report"),
                        "env": [
                            {"name": "BIGQUERY_API_ENDPOINT", "value": endpoint},
                            {"name": "STORAGE_API_ENDPOINT", "value": endpoint},
                        ],
                    }],
                },
            },
        },
    });
    let created = Instant::now();
    ns.kubectl(&["apply", "-f", "-"], Some(&job.to_string()))
        .success();
    let job_condition = |kind: &str| {
        ns.kubectl(
            &[
                "get",
                "job",
                "bigquery-report",
                "-o",
                &format!("jsonpath={{.status.conditions[?(@.type==\"{kind}\")].status}}"),
            ],
            None,
        )
        .stdout
        .trim()
            == "True"
    };
    let limit = Instant::now() + Duration::from_secs(120);
    while !job_condition("Complete") {
        let pods = ns.kubectl(&["describe", "pods", "-l", "app=bigquery-report"], None);
        assert!(
            !job_condition("Failed"),
            "the Job failed:\n{}\nrefused: {:?}\nlogs: {}",
            pods.stdout,
            seen.lock().unwrap().refused,
            ns.kubectl(&["logs", "-l", "app=bigquery-report", "-c", "report"], None)
                .stdout
        );
        assert!(
            Instant::now() < limit,
            "the Job did not complete in 120 s:\n{}",
            pods.stdout
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let completed = created.elapsed();
    eprintln!("seed-003 Job complete {completed:?} after apply");

    let pods: Value = serde_json::from_str(
        &ns.kubectl(
            &["get", "pods", "-l", "app=bigquery-report", "-o", "json"],
            None,
        )
        .success(),
    )
    .unwrap();
    let pod = &pods["items"][0];
    let name = pod["metadata"]["name"].as_str().unwrap();
    assert_eq!(pod["status"]["phase"], "Succeeded");
    // The sidecar was a native one, and the kubelet stopped it once the report was done.
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "fedcred-metadata")
        .expect("the webhook injected the metadata sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always");
    let status = |list: &str, container: &str| {
        pod["status"][list]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == container)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        status("containerStatuses", "report")["state"]["terminated"]["exitCode"],
        0
    );
    assert!(
        !status("initContainerStatuses", "fedcred-metadata")["state"]["terminated"].is_null(),
        "the sidecar still runs after the Job completed"
    );

    let logs = ns.kubectl(&["logs", name, "-c", "report"], None).success();
    let report: Value = serde_json::from_str(logs.trim()).unwrap();
    assert_eq!(report["project"], "acme-shop");
    assert_eq!(
        report["rows"],
        json!([{"region": "asia-northeast1", "orders": 1204}, {"region": "us-east4", "orders": 877}])
    );
    let kept = secret_data(&ns, "bigquery-token").unwrap();
    let seen = seen.lock().unwrap();
    assert!(
        seen.accepted.contains(&kept["access_token"]),
        "the job used a token other than the Secret's"
    );
    assert_eq!(seen.accepted.len(), 1);
    assert!(seen.refused.is_empty(), "refused: {:?}", seen.refused);
    assert_eq!(seen.queries.len(), 1);
    assert_exported_and_downloaded(&report, &seen);
    if let Some(dir) = std::env::var_os("FEDCRED_EVIDENCE_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            Path::new(&dir).join("node-seed003.txt"),
            format!(
                "Job complete after apply: {:.2} s\n",
                completed.as_secs_f64()
            ),
        );
    }
}

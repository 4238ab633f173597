//! Stories of the admission webhook on the real API server: the webhook runs in this process
//! on 127.0.0.1 with a fresh CA, and a MutatingWebhookConfiguration scoped to one test
//! namespace sends that namespace's opted-in pods to it.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::webhook::{Registration, Server};
use support::{TestNamespace, ensure_crd, wait_until};

const FEDCRED_IMAGE: &str = "ghcr.io/example/fedcred:webhook-test";

/// Registers `server` for the opted-in pods of `ns` with its CA, and waits until the API
/// server calls it: a dry-run pod naming a missing credential is refused by the webhook.
fn register(server: &Server, ns: &TestNamespace) -> Registration {
    let registration = Registration::create(ns, server.port, Some(&server.certs.ca_pem));
    let probe = pod("probe", Some("no-such-credential"));
    wait_until(Duration::from_secs(30), || {
        let out = ns.kubectl(
            &["create", "--dry-run=server", "-f", "-"],
            Some(&probe.to_string()),
        );
        !out.ok && out.stderr.contains("no-such-credential")
    });
    registration
}

/// A pod with one application container; labelled for injection and annotated with
/// `credential` when one is given.
fn pod(name: &str, credential: Option<&str>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.example/orders:1"}]},
    });
    if let Some(credential) = credential {
        pod["metadata"]["labels"] = json!({"fedcred.io/inject": "true"});
        pod["metadata"]["annotations"] = json!({"fedcred.io/credential": credential});
    }
    pod
}

fn stored_pod(ns: &TestNamespace, name: &str) -> Value {
    let out = ns
        .kubectl(&["get", "pod", name, "-o", "json"], None)
        .success();
    serde_json::from_str(&out).unwrap()
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

fn env_names(container: &Value) -> Vec<String> {
    container["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .filter_map(|e| e["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_opted_in_pod_is_stored_with_its_sidecars_and_environment() {
    ensure_crd();
    let ns = TestNamespace::new("wh-inject");
    let server = Server::start(FEDCRED_IMAGE);
    let _registration = register(&server, &ns);
    support::create_credential(&ns, "orders-db", true);

    let out = ns.kubectl(
        &["create", "-f", "-"],
        Some(&pod("orders", Some("orders-db")).to_string()),
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(!out.stderr.contains("Warning:"), "{}", out.stderr);

    let stored = stored_pod(&ns, "orders");
    let init = &stored["spec"]["initContainers"];
    let metadata = named(init, "fedcred-metadata").expect("the metadata sidecar");
    assert_eq!(metadata["restartPolicy"], "Always");
    assert_eq!(metadata["image"], FEDCRED_IMAGE);
    let proxy = named(init, "alloydb-proxy-0").expect("the proxy sidecar");
    assert_eq!(proxy["restartPolicy"], "Always");
    let names: Vec<_> = init
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fedcred-metadata", "alloydb-proxy-0"]);
    let app = named(&stored["spec"]["containers"], "app").unwrap();
    let env = env_names(app);
    for wanted in ["GCE_METADATA_HOST", "PGHOST", "PGPORT"] {
        assert!(env.iter().any(|e| e == wanted), "{wanted} missing: {env:?}");
    }
    assert!(
        stored["metadata"]["annotations"]["fedcred.io/injected"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
}

#[test]
fn pods_that_do_not_opt_in_are_untouched() {
    ensure_crd();
    let ns = TestNamespace::new("wh-plain");
    let server = Server::start(FEDCRED_IMAGE);
    let _registration = register(&server, &ns);
    support::create_credential(&ns, "orders-db", true);

    // Annotated but not labelled: the objectSelector keeps it from the webhook altogether.
    let mut plain = pod("plain", Some("orders-db"));
    plain["metadata"]["labels"] = json!({"app": "orders"});
    ns.kubectl(&["create", "-f", "-"], Some(&plain.to_string()))
        .success();
    let stored = stored_pod(&ns, "plain");
    assert!(stored["spec"].get("initContainers").is_none());
    let app = named(&stored["spec"]["containers"], "app").unwrap();
    assert!(env_names(app).is_empty());
    assert!(
        stored["metadata"]["annotations"]
            .get("fedcred.io/injected")
            .is_none()
    );
}

#[test]
fn a_pod_naming_a_missing_credential_is_refused_with_its_name() {
    ensure_crd();
    let ns = TestNamespace::new("wh-missing");
    let server = Server::start(FEDCRED_IMAGE);
    let _registration = register(&server, &ns);

    let stderr = ns
        .kubectl(
            &["create", "-f", "-"],
            Some(&pod("orders", Some("orders-dbb")).to_string()),
        )
        .failure();
    assert!(
        stderr.contains(&format!(
            "FederatedCredential {}/orders-dbb not found",
            ns.name
        )),
        "{stderr}"
    );
    assert!(!ns.kubectl(&["get", "pod", "orders"], None).ok);
}

#[test]
fn a_credential_that_is_not_ready_admits_the_pod_with_a_warning() {
    ensure_crd();
    let ns = TestNamespace::new("wh-notready");
    let server = Server::start(FEDCRED_IMAGE);
    let _registration = register(&server, &ns);
    support::create_credential(&ns, "orders-db", false);

    let out = ns.kubectl(
        &["create", "-f", "-"],
        Some(&pod("orders", Some("orders-db")).to_string()),
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stderr.contains("Warning:"), "{}", out.stderr);
    assert!(out.stderr.contains("is not Ready"), "{}", out.stderr);
    let stored = stored_pod(&ns, "orders");
    assert!(named(&stored["spec"]["initContainers"], "fedcred-metadata").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_client_errors_and_the_server_stays_up() {
    let server = Server::start(FEDCRED_IMAGE);
    let ca = reqwest::Certificate::from_pem(server.certs.ca_pem.as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let post = |body: Vec<u8>, content_type: &'static str| {
        client
            .post(server.url("/mutate"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let valid = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0b8c3f0e-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:shop:deployer"},
            "object": pod("plain", None),
        }
    })
    .to_string();
    let mut wrong_kind: Value = serde_json::from_str(&valid).unwrap();
    wrong_kind["request"]["kind"]["kind"] = json!("Secret");
    let mut huge = b"{\"apiVersion\":\"".to_vec();
    huge.resize(5 * 1024 * 1024, b'a');

    let cases: Vec<(&str, Vec<u8>, &'static str, u16)> = vec![
        ("random bytes", random, "application/json", 400),
        (
            "truncated JSON",
            valid.as_bytes()[..valid.len() / 2].to_vec(),
            "application/json",
            400,
        ),
        (
            "wrong kind",
            wrong_kind.to_string().into_bytes(),
            "application/json",
            400,
        ),
        ("empty", Vec::new(), "application/json", 400),
        ("5 MiB", huge, "application/json", 413),
        (
            "wrong content type",
            valid.clone().into_bytes(),
            "text/plain",
            415,
        ),
    ];
    for (what, body, content_type, status) in cases {
        let response = match post(body, content_type).await {
            Ok(response) => response,
            // An oversized body is refused from its Content-Length before it is read; the
            // client may still be sending when the server closes, and then sees the reset
            // instead of the 413. Either way the server refused it (and stays up, below).
            Err(e) if status == 413 && (e.is_request() || e.is_body()) => continue,
            Err(e) => panic!("{what}: {e}"),
        };
        assert_eq!(response.status(), status, "{what}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].is_string(), "{what}: {error}");
    }

    let response = post(valid.into_bytes(), "application/json").await.unwrap();
    assert_eq!(response.status(), 200);
    let review: Value = response.json().await.unwrap();
    let answer = &review["response"];
    assert_eq!(answer["uid"], "0b8c3f0e-0000-4000-8000-000000000001");
    assert_eq!(answer["allowed"], true);
    assert!(
        answer.get("patch").is_none(),
        "a plain pod is not patched: {answer}"
    );

    let plain_http = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", server.port))
        .send()
        .await;
    assert!(plain_http.is_err() || !plain_http.unwrap().status().is_success());
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

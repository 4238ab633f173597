//! The `kubernetes` identity source on the real API server: the controller requests a token of
//! a ServiceAccount of the resource's namespace and sends it straight to the Google STS double,
//! which verifies it as Google does — with the keys the API server publishes
//! (`/.well-known/openid-configuration`, `/openid/v1/jwks`) fetched by the double itself or
//! uploaded to the provider, never because fedcred made the token — and maps
//! `system:serviceaccount:NS:NAME` and the namespace.
//!
//! Also: each refusal with its stable reason, a token signed by another key, and Google's own
//! Python library (`external_account` with a file-sourced token) against the same double.

mod support;

use std::time::Duration;

use fedcred_core::error::Reason;
use fedcred_core::google::{JWT_TOKEN_TYPE, classify_jwt_sts};
use fedcred_doubles::oidc::TestKey;
use fedcred_doubles::{Binding, Condition, Oidc, Provider, attribute_member};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use support::cloud::{Cloud, SA_EMAIL};
use support::controller::ControllerProcess;
use support::oidc::{allow_anonymous_discovery, cluster_issuer};
use support::pod::{secret_data, venv_python};
use support::{TestNamespace, eventually, kube_client, kubectl};

/// The OIDC provider of the cluster in the pool `k8s-pool`.
const OIDC_AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/k8s-pool/providers/onprem";
/// Another provider of the pool, with a condition admitting only another namespace.
const STRICT_AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/k8s-pool/providers/strict";
/// A provider configured with the issuer the cluster accepts but does not write into tokens.
const OTHER_ISSUER_AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/k8s-pool/providers/other-issuer";
/// A provider that must discover the keys but does not trust the cluster's private CA, as
/// Google cannot reach a private issuer.
const PRIVATE_AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/k8s-pool/providers/private";

const LIMIT: Duration = Duration::from_secs(60);

fn service_account(ns: &TestNamespace, name: &str) {
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
    ns.kubectl(&["apply", "-f", "-"], Some(&sa.to_string()))
        .success();
}

/// A FederatedCredential with the `kubernetes` source `kubernetes`, for the provider
/// `audience`, impersonating SA_EMAIL through the doubles.
fn apply(ns: &TestNamespace, cloud: &Cloud, name: &str, audience: &str, kubernetes: Value) {
    let fc = json!({
        "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": name},
        "spec": {
            "kubernetes": kubernetes,
            "google": {
                "audience": audience,
                "serviceAccount": SA_EMAIL,
                "endpoints": {"sts": cloud.google.sts_url(), "iamCredentials": cloud.google.iam_credentials_url()}
            }
        }
    });
    ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();
}

fn status(ns: &TestNamespace, name: &str) -> Value {
    let out = ns.kubectl(&["get", "fedcred", name, "-o", "json"], None);
    if !out.ok {
        return Value::Null;
    }
    serde_json::from_str::<Value>(&out.stdout).unwrap()["status"].clone()
}

fn ready_condition(status: &Value) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
}

async fn ready(ns: &TestNamespace, name: &str) -> Value {
    eventually(&format!("{name} Ready"), LIMIT, || {
        let s = status(ns, name);
        (ready_condition(&s)?["status"] == "True").then_some(s)
    })
    .await
}

/// Waits for `name` to be not Ready for `reason`; returns its status.
async fn refused(ns: &TestNamespace, name: &str, reason: Reason) -> Value {
    eventually(&format!("{name} refused with {reason}"), LIMIT, || {
        let s = status(ns, name);
        let c = ready_condition(&s)?;
        (c["status"] == "False" && c["reason"] == reason.as_str()).then_some(s)
    })
    .await
}

/// [`refused`], its Ready condition's message containing `text`.
async fn refused_saying(ns: &TestNamespace, name: &str, reason: Reason, text: &str) -> Value {
    let s = refused(ns, name, reason).await;
    assert!(
        ready_condition(&s).unwrap()["message"]
            .as_str()
            .unwrap()
            .contains(text),
        "{s}"
    );
    s
}

/// The cloud doubles with one provider for `OIDC_AUDIENCE` trusting `oidc`, bound to `ns`,
/// and the ServiceAccount `orders-api` in `ns`.
async fn trusting(ns: &TestNamespace, oidc: Oidc) -> Cloud {
    let cloud = Cloud::start(|c| {
        c.provider(Provider::oidc(OIDC_AUDIENCE, oidc))
            .binding(bound_to_namespace(&ns.name))
    })
    .await;
    service_account(ns, "orders-api");
    cloud
}

/// A new directory for the files of the test in `ns`.
fn scratch_dir(ns: &TestNamespace) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fedcred-oidc-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A token of `ns/name` for `audience`, from the API server.
async fn request_token(ns: &str, name: &str, audience: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(kube_client().await, ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_owned()],
            expiration_seconds: Some(600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("TokenRequest succeeds")
        .status
        .unwrap()
        .token
}

/// SA_EMAIL may be impersonated by every identity of namespace `ns` of the pool.
fn bound_to_namespace(ns: &str) -> Binding {
    Binding::new(
        SA_EMAIL,
        &[attribute_member(OIDC_AUDIENCE, "namespace", ns)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_becomes_a_google_token_verified_with_the_keys_the_double_discovered()
 {
    support::ensure_crd();
    allow_anonymous_discovery();
    let issuer = cluster_issuer().await;
    let ns = TestNamespace::new("oidc-ready");
    let cloud = trusting(&ns, issuer.discovered()).await;
    let _controller = ControllerProcess::start(&ns.name, &cloud, "o1", &[]);
    apply(
        &ns,
        &cloud,
        "orders-db",
        OIDC_AUDIENCE,
        json!({"serviceAccount": {"name": "orders-api"}}),
    );

    let status = ready(&ns, "orders-db").await;
    let subject = format!("system:serviceaccount:{}:orders-api", ns.name);
    assert_eq!(status["subject"], subject.as_str());
    assert_eq!(status["identity"], "ServiceAccount/orders-api token");
    assert!(status.get("awsPrincipalArn").is_none(), "{status}");
    cloud.secret_with_token(&ns, "orders-db");
    // The STS double saw the subject the API server wrote into the token, and the IAM double
    // admitted it through the namespace attribute mapped from assertion['kubernetes.io'].
    assert_eq!(cloud.google.seen_principals(), [subject]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_each_carry_their_reason_and_name_the_subject_google_saw() {
    support::ensure_crd();
    let issuer = cluster_issuer().await;
    let ns = TestNamespace::new("oidc-refused");
    let other_issuer = Oidc {
        issuer_uri: "https://kubernetes.default.svc.cluster.local".to_owned(),
        ..issuer.uploaded()
    };
    assert_ne!(other_issuer.issuer_uri, issuer.issuer);
    let private = Oidc {
        discovery_ca_pem: None,
        ..issuer.discovered()
    };
    let cloud = Cloud::start(|c| {
        c.provider(Provider::oidc(OIDC_AUDIENCE, issuer.uploaded()))
            .provider(
                Provider::oidc(STRICT_AUDIENCE, issuer.uploaded())
                    .with_condition(Condition::NamespaceEquals("payments".into())),
            )
            .provider(Provider::oidc(OTHER_ISSUER_AUDIENCE, other_issuer))
            .provider(Provider::oidc(PRIVATE_AUDIENCE, private))
            .binding(bound_to_namespace(&ns.name))
    })
    .await;
    for sa in ["orders-api", "late-api", "rotated-api"] {
        service_account(&ns, sa);
    }
    let _controller = ControllerProcess::start(&ns.name, &cloud, "o1", &[]);
    let orders = json!({"serviceAccount": {"name": "orders-api"}});

    // The uploaded JWKS works: the baseline the refusals below differ from.
    apply(&ns, &cloud, "baseline", OIDC_AUDIENCE, orders.clone());
    ready(&ns, "baseline").await;

    apply(
        &ns,
        &cloud,
        "audience",
        OIDC_AUDIENCE,
        json!({"serviceAccount": {"name": "orders-api"}, "audience": "https://kubernetes.default.svc"}),
    );
    apply(&ns, &cloud, "condition", STRICT_AUDIENCE, orders.clone());
    apply(&ns, &cloud, "issuer", OTHER_ISSUER_AUDIENCE, orders.clone());
    apply(&ns, &cloud, "private", PRIVATE_AUDIENCE, orders.clone());
    // A tenant naming a file on the controller's host: never read.
    apply(
        &ns,
        &cloud,
        "file",
        OIDC_AUDIENCE,
        json!({"tokenPath": "/var/run/secrets/kubernetes.io/serviceaccount/token"}),
    );

    let subject = format!("system:serviceaccount:{}:orders-api", ns.name);
    refused_saying(
        &ns,
        "audience",
        Reason::AudienceMismatch,
        "--allowed-audiences",
    )
    .await;
    let s = refused(&ns, "condition", Reason::AttributeConditionRejected).await;
    let message = ready_condition(&s).unwrap()["message"].to_string();
    assert!(
        message.contains(&format!("principal {subject}")),
        "{message}"
    );
    assert_eq!(s["subject"], subject.as_str());
    refused_saying(&ns, "issuer", Reason::IssuerNotTrusted, "--issuer-uri").await;
    refused_saying(&ns, "private", Reason::IssuerUnreachable, "--jwk-json-path").await;

    refused_saying(&ns, "file", Reason::InvalidSpec, "only fedcred agent reads").await;

    // Google's clock ten minutes and a bit ahead: a real token of the API server, valid for
    // ten minutes, has expired.
    cloud.google.set_jwt_clock_offset(700);
    apply(
        &ns,
        &cloud,
        "expired",
        OIDC_AUDIENCE,
        json!({"serviceAccount": {"name": "late-api"}}),
    );
    refused(&ns, "expired", Reason::SubjectTokenExpired).await;
    cloud.google.set_jwt_clock_offset(0);

    // The provider's keys replaced on the Google side: the cluster's tokens no longer verify.
    let stranger = TestKey::generate("rotated");
    cloud.google.set_provider_oidc(
        OIDC_AUDIENCE,
        Oidc {
            jwks_json: Some(stranger.jwks().to_string()),
            ..issuer.uploaded()
        },
    );
    apply(
        &ns,
        &cloud,
        "rotated",
        OIDC_AUDIENCE,
        json!({"serviceAccount": {"name": "rotated-api"}}),
    );
    refused_saying(
        &ns,
        "rotated",
        Reason::SignatureNotVerified,
        "/openid/v1/jwks",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_by_another_key_is_refused_and_the_real_one_is_not() {
    let issuer = cluster_issuer().await;
    let ns = TestNamespace::new("oidc-forged");
    let cloud =
        Cloud::start(|c| c.provider(Provider::oidc(OIDC_AUDIENCE, issuer.uploaded()))).await;
    service_account(&ns, "orders-api");
    let real = request_token(&ns.name, "orders-api", OIDC_AUDIENCE).await;

    // The same claims, under the kid of the cluster's own key, signed by a key of our own.
    let claims: Value = {
        use base64::Engine as _;
        let payload = real.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    let jwks: Value = serde_json::from_str(&issuer.jwks).unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap();
    let forged = TestKey::generate(kid).sign(&claims);

    let http = reqwest::Client::new();
    let exchange = |token: String| {
        let http = http.clone();
        let url = cloud.google.sts_url();
        async move {
            let response = http
                .post(url)
                .form(&[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    (
                        "requested_token_type",
                        "urn:ietf:params:oauth:token-type:access_token",
                    ),
                    ("audience", OIDC_AUDIENCE),
                    ("scope", "https://www.googleapis.com/auth/cloud-platform"),
                    ("subject_token_type", JWT_TOKEN_TYPE),
                    ("subject_token", token.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, body) = exchange(forged).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        classify_jwt_sts(status, &body).reason,
        Reason::SignatureNotVerified,
        "{body}"
    );
    let (status, body) = exchange(real).await;
    assert_eq!(status, 200, "{body}");
    // Tokens of another type for an OIDC provider are refused as a bad request.
    let (status, _) = exchange("not-a-jwt".to_owned()).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_auth_with_a_file_sourced_token_gets_a_token_from_the_same_double() {
    let issuer = cluster_issuer().await;
    let ns = TestNamespace::new("oidc-google-auth");
    let cloud = trusting(&ns, issuer.uploaded()).await;
    let dir = scratch_dir(&ns);
    let token_file = dir.join("token");
    std::fs::write(
        &token_file,
        request_token(&ns.name, "orders-api", OIDC_AUDIENCE).await,
    )
    .unwrap();
    // The configuration `gcloud iam workload-identity-pools create-cred-config
    // --credential-source-file` writes, unchanged.
    let config = json!({
        "type": "external_account",
        "audience": OIDC_AUDIENCE,
        "subject_token_type": JWT_TOKEN_TYPE,
        "token_url": cloud.google.sts_url(),
        "service_account_impersonation_url": format!(
            "{}/v1/projects/-/serviceAccounts/{SA_EMAIL}:generateAccessToken",
            cloud.google.iam_credentials_url()
        ),
        "credential_source": {"file": token_file.to_str().unwrap()}
    });
    let config_file = dir.join("credentials.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let script = r#"
import sys
import google.auth.transport.requests
from google.auth import identity_pool
# from_file, not load_credentials_from_file: the latter also asks Cloud Resource Manager for
# the project, which is not part of the exchange.
credentials = identity_pool.Credentials.from_file(
    sys.argv[1], scopes=["https://www.googleapis.com/auth/cloud-platform"])
credentials.refresh(google.auth.transport.requests.Request())
print(credentials.token)
"#;
    let out = tokio::process::Command::new(venv_python())
        .args(["-c", script, config_file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "google-auth failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let info = cloud
        .google
        .lookup(&token)
        .expect("the IAM double issued the token google-auth got");
    assert_eq!(info.email(), Some(SA_EMAIL));
    assert_eq!(
        cloud.google.seen_principals(),
        [format!("system:serviceaccount:{}:orders-api", ns.name)]
    );
}

#[test]
fn kubectl_explain_describes_the_kubernetes_source() {
    support::ensure_crd();
    let mut last = String::new();
    support::wait_until(LIMIT, || {
        let out = kubectl(&["explain", "federatedcredential.spec.kubernetes"], None);
        // kubectl wraps lines wherever it likes.
        last = format!("{}{}", out.stdout, out.stderr)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        out.ok && last.contains("sent straight to Google STS")
    });
    for says in [
        "for clusters outside AWS",
        "system:serviceaccount:NAMESPACE:NAME",
        "serviceAccount",
        "tokenPath",
        "expirationSeconds",
    ] {
        assert!(last.contains(says), "{says} missing from:\n{last}");
    }
    let flat = |text: String| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let audience = flat(kubectl(&["explain", "fedcred.spec.kubernetes.audience"], None).success());
    assert!(
        audience.contains("Defaults to `google.audience`"),
        "{audience}"
    );
    let subject = flat(kubectl(&["explain", "fedcred.status.subject"], None).success());
    assert!(
        subject.contains("system:serviceaccount:NS:NAME"),
        "{subject}"
    );
}

/// `fedcred agent` serving the metadata protocol from a FederatedCredential file, its stderr
/// in `log`; killed when dropped.
struct Agent {
    child: std::process::Child,
    log: std::path::PathBuf,
    token_url: String,
}

impl Agent {
    fn start(dir: &std::path::Path, manifest: &Value) -> Agent {
        let file = dir.join("credential.json");
        std::fs::write(&file, manifest.to_string()).unwrap();
        let port = support::free_port();
        let log = dir.join("agent.log");
        let child = support::spawn_logging(
            std::process::Command::new(env!("CARGO_BIN_EXE_fedcred"))
                .args(["agent", "-f", file.to_str().unwrap()])
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .env("RUST_LOG", "info")
                .env("AWS_EC2_METADATA_DISABLED", "true"),
            &log,
        );
        Agent {
            child,
            log,
            token_url: format!(
                "http://127.0.0.1:{port}/computeMetadata/v1/instance/service-accounts/default/token"
            ),
        }
    }

    async fn token(&self) -> (u16, String) {
        match reqwest::Client::new()
            .get(&self.token_url)
            .header("Metadata-Flavor", "Google")
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A manifest for the agent: the token file `path`, the federated token of OIDC_AUDIENCE
/// itself, refreshed when 90 % of its life is gone.
fn agent_manifest(cloud: &Cloud, namespace: &str, path: &std::path::Path) -> Value {
    json!({
        "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "host", "namespace": namespace},
        "spec": {
            "kubernetes": {"tokenPath": path.to_str().unwrap()},
            "google": {"audience": OIDC_AUDIENCE, "endpoints": {"sts": cloud.google.sts_url()}},
            "secret": {"renewBeforePercentage": 90}
        }
    })
}

/// Writes `token` to `path` the way the kubelet updates a projected volume: a new file renamed
/// over the old one.
fn replace_file(path: &std::path::Path, token: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, token).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reads_the_projected_token_file_again_for_every_exchange() {
    let issuer = cluster_issuer().await;
    let ns = TestNamespace::new("oidc-agent");
    let cloud = Cloud::start(|mut c| {
        // Short federated tokens, so the agent exchanges again within seconds.
        c.federated_lifetime = Duration::from_secs(80);
        c.provider(Provider::oidc(OIDC_AUDIENCE, issuer.uploaded()))
    })
    .await;
    service_account(&ns, "orders-api");
    service_account(&ns, "batch-api");
    let dir = scratch_dir(&ns);
    let token_file = dir.join("token");
    replace_file(
        &token_file,
        &request_token(&ns.name, "orders-api", OIDC_AUDIENCE).await,
    );
    let agent = Agent::start(&dir, &agent_manifest(&cloud, &ns.name, &token_file));

    let subject_served = || async {
        let (status, body) = agent.token().await;
        if status != 200 {
            return None;
        }
        let token: Value = serde_json::from_str(&body).ok()?;
        let info = cloud.google.lookup(token["access_token"].as_str()?)?;
        Some(info.subject().to_owned())
    };
    let first = eventually_async(LIMIT, &subject_served).await;
    assert_eq!(
        first,
        format!("system:serviceaccount:{}:orders-api", ns.name),
        "{}",
        agent.logs()
    );

    // The kubelet rotates the file; the next exchange presents what it holds now.
    replace_file(
        &token_file,
        &request_token(&ns.name, "batch-api", OIDC_AUDIENCE).await,
    );
    let batch = format!("system:serviceaccount:{}:batch-api", ns.name);
    let started = std::time::Instant::now();
    loop {
        if subject_served().await.as_deref() == Some(batch.as_str()) {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the agent never presented the rotated file: {:?}\n{}",
            cloud.google.seen_principals(),
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_its_token_file_answers_503_with_the_reason() {
    let cloud = Cloud::start(|c| c).await;
    let dir = std::env::temp_dir().join(format!("fedcred-oidc-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let agent = Agent::start(
        &dir,
        &agent_manifest(&cloud, "default", &dir.join("no-such-token")),
    );
    let started = std::time::Instant::now();
    loop {
        let (status, body) = agent.token().await;
        assert_ne!(status, 200, "a token was served");
        if status == 503 && body.contains("(TokenFileUnreadable)") {
            assert!(body.contains("no-such-token"), "{body}");
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "no 503 naming TokenFileUnreadable: {status} {body}\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls the async `check` until it answers, for at most `limit`.
async fn eventually_async<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < limit, "nothing within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_example_is_accepted_by_the_api_server_and_by_fedcreds_own_validator() {
    use serde::Deserialize as _;
    support::ensure_crd();
    let ns = TestNamespace::new("oidc-example");
    let text =
        std::fs::read_to_string(support::repo_root().join("examples/kubernetes-token-gcs.yaml"))
            .unwrap();
    let mut resources = 0;
    for doc in serde_norway::Deserializer::from_str(&text) {
        let mut obj = Value::deserialize(doc).unwrap();
        if obj["kind"] == "Namespace" {
            continue;
        }
        // The example brings its own namespace; its objects go to the test's instead.
        obj["metadata"].as_object_mut().unwrap().remove("namespace");
        if obj["kind"] == "FederatedCredential" {
            fedcred_core::validate::federated_credential(&obj).expect("the validator agrees");
            resources += 1;
        }
        ns.kubectl(&["create", "-f", "-"], Some(&obj.to_string()))
            .success();
    }
    assert_eq!(resources, 1);
    let stored = ns
        .kubectl(&["get", "fedcred", "reports-gcs", "-o", "json"], None)
        .success();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    // The API server filled in the token's lifetime.
    assert_eq!(stored["spec"]["kubernetes"]["expirationSeconds"], 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_resource_refreshes_with_a_fresh_token_through_sts_faults() {
    use fedcred_doubles::Target;
    support::ensure_crd();
    let issuer = cluster_issuer().await;
    let ns = TestNamespace::new("oidc-refresh");
    let cloud = Cloud::start(|mut c| {
        // Eighty-second tokens refreshed when 90 % of their life is gone: a refresh within
        // about eight seconds.
        c.impersonated_lifetime_cap_seconds = Some(80);
        c.provider(Provider::oidc(OIDC_AUDIENCE, issuer.uploaded()))
            .binding(bound_to_namespace(&ns.name))
    })
    .await;
    service_account(&ns, "orders-api");
    let _controller = ControllerProcess::start(&ns.name, &cloud, "o1", &[]);
    let fc = json!({
        "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "orders-db"},
        "spec": {
            "kubernetes": {"serviceAccount": {"name": "orders-api"}},
            "google": {
                "audience": OIDC_AUDIENCE,
                "serviceAccount": SA_EMAIL,
                "endpoints": {"sts": cloud.google.sts_url(), "iamCredentials": cloud.google.iam_credentials_url()}
            },
            "secret": {"renewBeforePercentage": 90}
        }
    });
    ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();
    ready(&ns, "orders-db").await;
    let first = secret_data(&ns, "orders-db").unwrap()["access_token"].clone();
    let sts_before = cloud.google.calls(Target::Sts);

    // Google STS fails twice before the refresh gets through.
    cloud.sts_unavailable(2);
    let second = eventually("a refreshed token", LIMIT, || {
        let token = secret_data(&ns, "orders-db")?["access_token"].clone();
        (token != first).then_some(token)
    })
    .await;
    let info = cloud
        .google
        .lookup(&second)
        .expect("the refreshed token is live");
    assert_eq!(info.email(), Some(SA_EMAIL));
    assert!(
        cloud.google.pending_faults(Target::Sts).is_empty(),
        "both faults were met"
    );
    assert!(
        cloud.google.calls(Target::Sts) >= sts_before + 3,
        "two failed calls and a successful one"
    );
    // Every exchange presented a token of its own: the double saw the subject, verified anew.
    assert_eq!(
        cloud.google.seen_principals(),
        [format!("system:serviceaccount:{}:orders-api", ns.name)]
    );
    assert!(cloud.google.exchanges(Target::Sts) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedcred_exchange_runs_the_kubernetes_source_by_hand() {
    let issuer = cluster_issuer().await;
    let ns = TestNamespace::new("oidc-cli");
    let cloud = trusting(&ns, issuer.uploaded()).await;
    let dir = scratch_dir(&ns);
    let file = dir.join("credential.json");
    let fc = json!({
        "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "orders-db", "namespace": ns.name},
        "spec": {
            "kubernetes": {"serviceAccount": {"name": "orders-api"}},
            "google": {
                "audience": OIDC_AUDIENCE,
                "serviceAccount": SA_EMAIL,
                "endpoints": {"sts": cloud.google.sts_url(), "iamCredentials": cloud.google.iam_credentials_url()}
            }
        }
    });
    std::fs::write(&file, fc.to_string()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fedcred"))
        .args(["exchange", "-f", file.to_str().unwrap()])
        .env("KUBECONFIG", support::kubeconfig())
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = support::exchanged(
        &out,
        &format!("system:serviceaccount:{}:orders-api", ns.name),
    );
    assert!(
        stdout.contains(&format!("service account: {SA_EMAIL}")),
        "{stdout}"
    );
    // The token is not printed unless asked for.
    for token in cloud.google.issued_tokens() {
        assert!(!stdout.contains(&token), "{stdout}");
    }
}

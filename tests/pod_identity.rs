//! EKS Pod Identity pods with `exchange: Pod`, end to end on the real API server: a
//! FederatedCredential asks each pod to exchange for itself; `fedcred controller` reports it
//! Ready without writing a Secret (and without lending its own AWS identity); a pod carrying
//! what EKS's Pod Identity webhook adds (the container-credentials variables and the projected
//! token volume) is admitted through fedcred's webhook; the stored pod's metadata sidecar is
//! then started exactly as stored (its command, arguments and environment), with the Pod
//! Identity endpoint pointed at a container-credentials fake that insists on the projected
//! ServiceAccount token the API server issued for the pod's ServiceAccount; Python google-auth,
//! unchanged and given only the app container's stored environment, gets a token the Google
//! doubles issued to the right service account, through one stable session.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fedcred_doubles::aws_metadata::ContainerCredentials;
use fedcred_doubles::{Binding, role_member};
use serde_json::{Value, json};
use support::cloud::{ASSUMED_ROLE, AUDIENCE, Cloud, ROLE, SA_EMAIL};
use support::pod::{
    Process, StoredPod, google_auth_adc_with, map_paths, unique, wait_for_exec_probe,
};
use support::webhook::controller_with_webhook;
use support::{TestNamespace, free_port, kubectl, wait_until};

const FEDCRED_IMAGE: &str = "ghcr.io/example/fedcred";
/// Where EKS's webhook points Pod Identity pods: the node's EKS Pod Identity Agent.
const POD_IDENTITY_URI: &str = "http://169.254.170.23/v1/credentials";
const TOKEN_DIR: &str = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount";
const TOKEN_FILE: &str =
    "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token";
/// The role of the Pod Identity association; EKS names its sessions after the pod.
const POD_ROLE: &str = "arn:aws:iam::123456789012:role/orders-pods";

/// The pod as EKS's Pod Identity webhook leaves it when it runs before fedcred's.
fn orders_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "orders-report",
            "labels": {"app": "orders-report", "fedcred.io/inject": "true"},
            "annotations": {"fedcred.io/credential": "orders-pods"},
        },
        "spec": {
            "serviceAccountName": "orders-api",
            "restartPolicy": "Never",
            "containers": [{
                "name": "report",
                "image": "registry.example/orders-report:1.0.0",
                "env": [
                    {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"},
                    {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"},
                    {"name": "AWS_REGION", "value": "us-east-1"},
                    {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": POD_IDENTITY_URI},
                    {"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "value": TOKEN_FILE},
                ],
                "volumeMounts": [{
                    "name": "eks-pod-identity-token", "mountPath": TOKEN_DIR, "readOnly": true
                }],
            }],
            "volumes": [{
                "name": "eks-pod-identity-token",
                "projected": {"sources": [{"serviceAccountToken": {
                    "audience": "pods.eks.amazonaws.com",
                    "expirationSeconds": 86400,
                    "path": "eks-pod-identity-token",
                }}]},
            }],
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_identity_pod_exchanges_in_its_agent_sidecar_and_google_auth_gets_a_token() {
    support::ensure_crd();
    let ns = TestNamespace::new("podid");
    let cloud = Cloud::start(|mut c| {
        c.bindings.clear();
        c.binding(Binding::new(
            SA_EMAIL,
            &[role_member(AUDIENCE, ASSUMED_ROLE)],
        ))
    })
    .await;
    let sa =
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "orders-api"}});
    ns.kubectl(&["apply", "-f", "-"], Some(&sa.to_string()))
        .success();

    // The controller, serving its webhook; it is not allowed to lend its own identity to this
    // namespace, and needs not be: the pods use theirs.
    let (registration, controller) =
        controller_with_webhook(&ns, &cloud, "p1", &format!("{FEDCRED_IMAGE}:e2e"));
    wait_until(Duration::from_secs(60), || {
        let out = kubectl(
            &[
                "get",
                "mutatingwebhookconfiguration",
                &registration.name,
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ],
            None,
        );
        out.ok && !out.stdout.trim().is_empty()
    });

    // No region: the pod's AWS_REGION, which EKS sets, is the agent's.
    let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
    "metadata": {"name": "orders-pods"},
    "spec": {
        "exchange": "Pod",
        "aws": {"controllerIdentity": {"roleArn": ROLE}, "stsEndpoint": cloud.moto.url()},
        "google": {
            "audience": AUDIENCE,
            "serviceAccount": SA_EMAIL,
            "endpoints": {"sts": cloud.google.sts_url(), "iamCredentials": cloud.google.iam_credentials_url()},
        },
    }});
    ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();
    let status = support::eventually(
        "the FederatedCredential is reported",
        Duration::from_secs(60),
        || {
            let out = ns.kubectl(&["get", "fedcred", "orders-pods", "-o", "json"], None);
            let fc: Value = serde_json::from_str(&out.stdout).ok()?;
            let ready = fc["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?
                .clone();
            (ready["status"] == "True").then(|| fc["status"].clone())
        },
    )
    .await;
    let ready = &status["conditions"][0];
    assert_eq!(ready["reason"], "ExchangeInPod", "{status}");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("no Secret is written"),
        "{status}"
    );
    assert_eq!(status["identity"], format!("in pod, as {ROLE}"));
    assert!(status.get("secretName").is_none(), "{status}");
    // The only Secret is the webhook's own certificate.
    let secrets = ns
        .kubectl(&["get", "secrets", "-o", "name"], None)
        .success();
    assert_eq!(
        secrets.trim(),
        "secret/fedcred-webhook-tls",
        "a token Secret was written"
    );
    assert_eq!(
        cloud.google.calls(fedcred_doubles::Target::Sts),
        0,
        "the controller exchanged"
    );

    // The pod, created for real; the API server calls the webhook and stores the result.
    wait_until(Duration::from_secs(30), || {
        ns.kubectl(&["create", "-f", "-"], Some(&orders_pod().to_string()))
            .ok
    });
    let pod = StoredPod::get(&ns, "orders-report");
    assert_eq!(pod.sidecars(), vec!["fedcred-metadata".to_owned()]);
    let volumes: Vec<&str> = pod.json["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        !volumes.contains(&"fedcred-token"),
        "a Secret volume with exchange: Pod: {volumes:?}"
    );
    let stored_env = pod.env("fedcred-metadata");
    let names: Vec<&str> = stored_env.iter().map(|(k, _)| k.as_str()).collect();
    for wanted in [
        "FEDCRED_CREDENTIAL",
        "AWS_REGION",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    ] {
        assert!(
            names.contains(&wanted),
            "{wanted} not given to the agent: {names:?}"
        );
    }
    assert!(
        pod.mounts("fedcred-metadata")
            .contains(&(TOKEN_DIR.to_owned(), "eks-pod-identity-token".to_owned())),
        "the agent does not mount the Pod Identity token"
    );

    // The kubelet's part: the projected token, as the API server issues it for the pod's
    // ServiceAccount and audience; EKS's agent on the node, played by the fake, accepts
    // only that token.
    let token_dir = unique("pod-identity-token");
    std::fs::create_dir_all(&token_dir).unwrap();
    let projected = ns
        .kubectl(
            &[
                "create",
                "token",
                "orders-api",
                "--audience",
                "pods.eks.amazonaws.com",
                "--duration",
                "1h",
            ],
            None,
        )
        .success();
    let projected = projected.trim().to_owned();
    std::fs::write(token_dir.join("eks-pod-identity-token"), &projected).unwrap();
    // What EKS's agent hands the pod: credentials of the association's role, in a session
    // named after the pod.
    let own = cloud
        .moto
        .assume_role_with_web_identity(POD_ROLE, "eks-orders-orders-rep-7f1c2a4e")
        .await
        .unwrap();
    let pod_identity = ContainerCredentials::start(&projected, own).await.unwrap();

    // The sidecar as stored, on a free port (the host is shared), its Pod Identity endpoint
    // pointed at the fake and its mount at the token's directory.
    let listen = free_port();
    let local = |s: &str| s.replace("127.0.0.1:8988", &format!("127.0.0.1:{listen}"));
    let fedcred = PathBuf::from(env!("CARGO_BIN_EXE_fedcred"));
    let entrypoints: &[(&str, &Path)] = &[
        (FEDCRED_IMAGE, &fedcred),
        ("/usr/local/bin/fedcred", &fedcred),
    ];
    let mounts = vec![(TOKEN_DIR.to_owned(), token_dir.clone())];
    let argv: Vec<String> = pod
        .argv("fedcred-metadata", entrypoints)
        .iter()
        .map(|a| local(a))
        .collect();
    assert_eq!(argv[1], "agent", "{argv:?}");
    let env: Vec<(String, String)> = stored_env
        .iter()
        .map(|(k, v)| {
            let v = if k == "AWS_CONTAINER_CREDENTIALS_FULL_URI" {
                assert_eq!(v, POD_IDENTITY_URI);
                pod_identity.url()
            } else {
                map_paths(v, &mounts)
            };
            (k.clone(), v)
        })
        .chain([
            // A container has no instance metadata to fall back on here.
            ("AWS_EC2_METADATA_DISABLED".to_owned(), "true".to_owned()),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ])
        .collect();
    let mut agent = Process::start("fedcred-metadata", &argv, &env);
    let mut probe = pod.container("fedcred-metadata")["startupProbe"].clone();
    for arg in probe["exec"]["command"].as_array_mut().unwrap() {
        *arg = json!(local(arg.as_str().unwrap()));
    }
    wait_for_exec_probe(&probe, entrypoints, &mut agent, Duration::from_secs(30));

    // The app: its stored environment only, as a fresh container has it.
    let app_env: Vec<(String, String)> = pod
        .env("report")
        .into_iter()
        .map(|(k, v)| (k, local(&v)))
        .collect();
    let found = google_auth_adc_with(app_env.iter().cloned());
    assert_eq!(
        found["class"],
        "google.auth.compute_engine.credentials.Credentials"
    );
    assert_eq!(found["email"], SA_EMAIL);
    assert_eq!(found["project"], "acme-shop");
    let token = found["token"].as_str().unwrap();
    let info = cloud
        .google
        .lookup(token)
        .expect("the doubles issued the served token");
    assert_eq!(info.email(), Some(SA_EMAIL));
    assert!(info.expires_at > SystemTime::now());
    assert!(
        !agent.logs().contains(token),
        "a token in the sidecar's logs"
    );
    assert!(!controller.logs().contains(token));

    // Google saw one stable principal: the chained session named after the resource, not
    // the per-pod Pod Identity session.
    let principals = cloud.google.seen_principals();
    assert_eq!(principals.len(), 1, "{principals:?}");
    assert!(
        principals[0].starts_with(&format!("{ASSUMED_ROLE}/fedcred.")),
        "{principals:?}"
    );
    assert!(!principals[0].contains("eks-orders"), "{principals:?}");
    assert!(
        pod_identity.served() >= 1,
        "the Pod Identity endpoint was not asked"
    );
    assert_eq!(pod_identity.refused(), 0, "{:#?}", pod_identity.requests());
    let _ = std::fs::remove_dir_all(&token_dir);
}

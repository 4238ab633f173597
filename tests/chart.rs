//! The Helm chart on the real API server with the real helm and kubectl: it lints, renders to
//! objects the API server accepts, and installs, upgrades and uninstalls as Helm users expect.
//! Its RBAC is exactly enough, cluster-wide and with `watchNamespaces`: the controller binary,
//! run outside the cluster with the chart's arguments and authenticated as the chart's
//! ServiceAccount, passes the controller and webhook stories, and `kubectl auth can-i` shows
//! that the ServiceAccount can do nothing more (nothing outside the listed namespaces, no
//! rollouts unless asked for).
//! `deploy/fedcred.yaml` and the chart's `crds/` are checked for drift here too.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::cloud::Cloud;
use support::controller::{ControllerProcess, Launch};
use support::pod::secret_data_in;
use support::{
    INSTANCE, Kubectl, TestNamespace, ensure_crd, eventually, free_port, kubectl, repo_root,
};

const LIMIT: Duration = Duration::from_secs(60);

/// The tests that run the chart's controller take turns: one watching every namespace would
/// otherwise act on the other's resources and blur what each proves.
static CONTROLLER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn chart() -> PathBuf {
    repo_root().join("charts/fedcred")
}

/// Runs the real helm against the test control plane.
fn helm(args: &[&str]) -> Kubectl {
    Command::new("helm")
        .args(args)
        .env("KUBECONFIG", support::kubeconfig())
        .stdin(Stdio::null())
        .output()
        .expect("helm is on PATH (hack/test.sh puts the cached one there)")
        .into()
}

fn chart_arg() -> String {
    chart().to_str().unwrap().to_owned()
}

fn get_json(args: &[&str]) -> Option<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = kubectl(&all, None);
    out.ok.then(|| serde_json::from_str(&out.stdout).unwrap())
}

/// Applies JSON patch `ops` to the chart's MutatingWebhookConfiguration `fullname`.
fn patch_webhook(fullname: &str, ops: Value) {
    kubectl(
        &[
            "patch",
            "mutatingwebhookconfiguration",
            fullname,
            "--type=json",
            "-p",
            &ops.to_string(),
        ],
        None,
    )
    .success();
}

/// Points the chart's webhook configuration `fullname` at a controller on a free loopback port
/// instead of its Service; returns the port.
fn webhook_to_loopback(fullname: &str) -> u16 {
    let port = free_port();
    patch_webhook(
        fullname,
        json!([
            {"op": "remove", "path": "/webhooks/0/clientConfig/service"},
            {"op": "add", "path": "/webhooks/0/clientConfig/url",
             "value": format!("https://127.0.0.1:{port}/mutate")},
        ]),
    );
    port
}

/// Points the webhook configuration back at the chart's Service (a test pointed it at a local
/// controller's URL), as the chart rendered it, so that an upgrade finds it unchanged.
fn webhook_back_to_its_service(fullname: &str, namespace: &str) {
    patch_webhook(
        fullname,
        json!([
            {"op": "remove", "path": "/webhooks/0/clientConfig/url"},
            {"op": "add", "path": "/webhooks/0/clientConfig/service",
             "value": {"name": format!("{fullname}-webhook"), "namespace": namespace,
                       "path": "/mutate", "port": 443}},
        ]),
    );
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(stem: &str, contents: &str) -> TempFile {
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!(
            "fedcred-chart-{stem}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, contents.as_bytes()).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_chart_lints_and_renders_objects_the_api_server_accepts() {
    let lint = helm(&["lint", "--strict", &chart_arg()]);
    assert!(lint.ok, "helm lint: {}{}", lint.stdout, lint.stderr);
    assert!(lint.stdout.contains("0 chart(s) failed"), "{}", lint.stdout);

    let ns = TestNamespace::new("chart-dry");
    ensure_crd();
    let rendered = helm(&[
        "template",
        "dry",
        &chart_arg(),
        "-n",
        &ns.name,
        "--include-crds",
    ])
    .success();
    let out = ns
        .kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered))
        .success();
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/federatedcredentials.fedcred.io",
        "serviceaccount/dry-fedcred",
        "clusterrole.rbac.authorization.k8s.io/dry-fedcred",
        "clusterrolebinding.rbac.authorization.k8s.io/dry-fedcred",
        "role.rbac.authorization.k8s.io/dry-fedcred",
        "rolebinding.rbac.authorization.k8s.io/dry-fedcred",
        "service/dry-fedcred-webhook",
        "service/dry-fedcred-metrics",
        "deployment.apps/dry-fedcred",
        "poddisruptionbudget.policy/dry-fedcred",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/dry-fedcred",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{object} ")) && l.ends_with("(server dry run)")),
            "{object} missing from:\n{out}"
        );
    }
    assert!(!rendered.contains("kind: ServiceMonitor"));
    // The webhook's limits reach the controller; the NetworkPolicy is opt-in.
    assert!(
        rendered.contains("- --webhook-max-connections=256\n"),
        "{rendered}"
    );
    assert!(
        rendered.contains("- --webhook-body-budget-mib=32\n"),
        "{rendered}"
    );
    assert!(!rendered.contains("kind: NetworkPolicy"), "{rendered}");
    assert!(!rendered.contains("ADMIN_ENDPOINT"), "{rendered}");

    // The proxies' Admin API endpoints reach the controller when set, and a value that is not
    // a URL is refused by the chart's schema, naming the field.
    let endpoints = helm(&[
        "template",
        "dry",
        &chart_arg(),
        "--set",
        "alloydbProxy.adminEndpoint=https://alloydb.example.internal",
        "--set",
        "cloudsqlProxy.adminEndpoint=https://sqladmin.example.internal:8443",
    ])
    .success();
    assert!(
        endpoints.contains(
            "- name: FEDCRED_ALLOYDB_ADMIN_ENDPOINT\n              value: \"https://alloydb.example.internal\"\n"
        ),
        "{endpoints}"
    );
    assert!(
        endpoints.contains(
            "- name: FEDCRED_CLOUDSQL_ADMIN_ENDPOINT\n              value: \"https://sqladmin.example.internal:8443\"\n"
        ),
        "{endpoints}"
    );
    let refused = helm(&[
        "template",
        "dry",
        &chart_arg(),
        "--set",
        "alloydbProxy.adminEndpoint=alloydb.example.internal",
    ]);
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("adminEndpoint"),
        "{}",
        refused.stderr
    );

    // Enabled, the NetworkPolicy admits the given peers to the webhook port and the metrics
    // port, and is accepted by the API server.
    let policed = helm(&[
        "template",
        "dry",
        &chart_arg(),
        "-n",
        &ns.name,
        "--set",
        "networkPolicy.enabled=true",
        "--set-json",
        r#"networkPolicy.webhookFrom=[{"ipBlock":{"cidr":"10.0.0.0/8"}}]"#,
        "--set-json",
        r#"networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#,
    ])
    .success();
    let out = ns
        .kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&policed))
        .success();
    assert!(
        out.lines().any(
            |l| l.starts_with("networkpolicy.networking.k8s.io/dry-fedcred ")
                && l.ends_with("(server dry run)")
        ),
        "the NetworkPolicy missing from:\n{out}"
    );
    let policy = policed
        .split("\n---")
        .find(|doc| doc.contains("kind: NetworkPolicy"))
        .expect("a NetworkPolicy when enabled");
    for wanted in [
        "cidr: 10.0.0.0/8",
        "port: 9443",
        "port: 8080",
        "kubernetes.io/metadata.name: monitoring",
        "- Ingress",
    ] {
        assert!(policy.contains(wanted), "{wanted} in {policy}");
    }
    // Each list of peers guards its own port.
    let (before_metrics, metrics_rule) = policy.split_once("port: 8080").expect("the metrics port");
    let (_, webhook_rule) = before_metrics
        .split_once("port: 9443")
        .expect("the webhook port before it");
    assert!(
        webhook_rule.contains("10.0.0.0/8") && !webhook_rule.contains("monitoring"),
        "{policy}"
    );
    assert!(
        metrics_rule.contains("monitoring") && !metrics_rule.contains("10.0.0.0/8"),
        "{policy}"
    );

    // Values change what is rendered.
    let custom = helm(&[
        "template",
        "dry",
        &chart_arg(),
        "-n",
        &ns.name,
        "--set",
        "replicaCount=1",
        "--set",
        "controllerIdentity.allowedNamespaces={analytics,batch}",
        "--set",
        "controllerIdentity.roles.reports={arn:aws:iam::123456789012:role/a,arn:aws:iam::123456789012:role/b}",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "webhook.failurePolicy=Ignore",
        "--set",
        "alloydbProxy.image=registry.example/alloydb-auth-proxy:9",
        "--set",
        "webhook.maxConnections=64",
        "--set",
        "webhook.bodyBudgetMiB=16",
    ])
    .success();
    assert!(
        custom.contains("- --webhook-max-connections=64\n"),
        "{custom}"
    );
    assert!(
        custom.contains("- --webhook-body-budget-mib=16\n"),
        "{custom}"
    );
    assert!(!custom.contains("kind: PodDisruptionBudget"), "{custom}");
    assert!(custom.contains("- --allow-controller-identity=analytics,batch"));
    for role in ["a", "b"] {
        let flag = format!(
            "- --allow-controller-identity=reports=arn:aws:iam::123456789012:role/{role}\n"
        );
        assert!(custom.contains(&flag), "{flag} in {custom}");
    }
    assert!(custom.contains("kind: ServiceMonitor"));
    assert!(custom.contains("failurePolicy: Ignore"));
    assert!(custom.contains("value: \"registry.example/alloydb-auth-proxy:9\""));

    // values.schema.json refuses what the chart cannot honour.
    for (set, complaint) in [
        ("webhook.failurePolicy=Maybe", "/webhook/failurePolicy"),
        ("replicaCount=0", "/replicaCount"),
        ("webhook.timeoutSeconds=60", "/webhook/timeoutSeconds"),
        ("webhook.maxConnections=0", "/webhook/maxConnections"),
        ("webhook.bodyBudgetMiB=2", "/webhook/bodyBudgetMiB"),
        ("networkPolicy.enabled=yes", "/networkPolicy/enabled"),
        (
            "controllerIdentity.allowedNamespaces={Not_A_Namespace}",
            "allowedNamespaces",
        ),
        (
            "controllerIdentity.roles.reports={arn:aws:iam::123456789012:user/a}",
            "/controllerIdentity/roles/reports",
        ),
        (
            "controllerIdentity.roles.Not_A_Namespace={arn:aws:iam::123456789012:role/a}",
            "invalid propertyName 'Not_A_Namespace'",
        ),
        ("replicas=2", "additional properties 'replicas'"),
        ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
    ] {
        let out = helm(&["template", "dry", &chart_arg(), "--set", set]);
        assert!(!out.ok, "{set} was accepted");
        assert!(out.stderr.contains(complaint), "{set}: {}", out.stderr);
    }
}

#[test]
fn the_charts_crd_and_deploy_manifest_match_the_code() {
    let repo = repo_root();
    let printed = Command::new(env!("CARGO_BIN_EXE_fedcred"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(printed.status.success());
    let chart_crd =
        std::fs::read(repo.join("charts/fedcred/crds/fedcred.io_federatedcredentials.yaml"))
            .unwrap();
    assert!(
        chart_crd == printed.stdout,
        "charts/fedcred/crds/ is out of date: run `cargo run -- crd > charts/fedcred/crds/fedcred.io_federatedcredentials.yaml`"
    );

    let rendered = Command::new(repo.join("hack/render-deploy.sh"))
        .arg("-")
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let stored = std::fs::read(repo.join("deploy/fedcred.yaml")).unwrap();
    assert!(
        stored == rendered.stdout,
        "deploy/fedcred.yaml is out of date with the chart: run hack/render-deploy.sh"
    );
    let text = String::from_utf8(stored).unwrap();
    assert!(text.contains("kind: CustomResourceDefinition"));
    assert!(text.contains("kind: Namespace"));
    assert!(text.contains("--webhook-dns-names=fedcred-webhook.fedcred-system.svc"));
}

/// A release of the chart in its own namespace, uninstalled (if still there) when dropped.
struct Release {
    name: String,
    namespace: String,
}

impl Release {
    /// The prefix of the release's objects (the chart's `fedcred.fullname`).
    fn fullname(&self) -> String {
        format!("{}-fedcred", self.name)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm(&["uninstall", &self.name, "-n", &self.namespace]);
    }
}

/// A kubeconfig for the test API server that authenticates with a TokenRequest token of
/// `namespace/service_account`, as the controller's pod would.
fn service_account_kubeconfig(namespace: &str, service_account: &str) -> TempFile {
    let admin: Value = serde_json::from_str(
        &kubectl(&["config", "view", "--raw", "--minify", "-o", "json"], None).success(),
    )
    .unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let ca = match cluster["certificate-authority-data"].as_str() {
        Some(data) => data.to_owned(),
        None => base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(cluster["certificate-authority"].as_str().unwrap()).unwrap()),
    };
    let token = kubectl(
        &[
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            "--duration=1h",
        ],
        None,
    )
    .success();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": cluster["server"], "certificate-authority-data": ca}}],
        "users": [{"name": service_account, "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": service_account}}],
        "current-context": "sa",
    });
    TempFile::new("kubeconfig", &config.to_string())
}

/// `fedcred controller` started with the arguments and environment of the chart's Deployment,
/// except that it listens on loopback (there is no pod network here).
fn start_controller(
    deployment: &Value,
    kubeconfig: &Path,
    cloud: &Cloud,
    webhook_port: u16,
) -> ControllerProcess {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let launch = Launch::new(cloud).kubeconfig(kubeconfig);
    let metrics_port = launch.metrics_port;
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let arg = a.as_str().unwrap();
            match arg.split_once('=') {
                Some(("--webhook-address", _)) => {
                    format!("--webhook-address=127.0.0.1:{webhook_port}")
                }
                Some(("--webhook-dns-names", _)) => "--webhook-dns-names=127.0.0.1".to_owned(),
                Some(("--metrics-address", _)) => {
                    format!("--metrics-address=127.0.0.1:{metrics_port}")
                }
                _ => arg.to_owned(),
            }
        })
        .collect();
    let namespace = deployment["metadata"]["namespace"].as_str().unwrap();
    let replica = "fedcred-replica-0";
    let mut launch = launch.command(replica, args).log_stem("chart-controller");
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.namespace") => namespace,
            Some("metadata.name") => replica,
            Some(other) => panic!("unexpected fieldRef {other}"),
            None => var["value"].as_str().unwrap(),
        };
        launch = launch.env(name, value);
    }
    launch.start()
}

/// `kubectl auth can-i` as `user`: whether the API server's authorizer allows it.
fn can(user: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", "--as", user];
    all.extend_from_slice(args);
    let out = kubectl(&all, None);
    match out.stdout.split_whitespace().next().unwrap_or_default() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {args:?}: {other} {}", out.stderr),
    }
}

fn condition_ready(fc: &Value) -> bool {
    fc["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Waits until the FederatedCredential `name` in `namespace` is Ready.
async fn ready(namespace: &str, name: &str) {
    eventually("the FederatedCredential to be Ready", LIMIT, || {
        get_json(&["fedcred", name, "-n", namespace]).filter(condition_ready)
    })
    .await;
}

fn ca_bundle(configuration: &str) -> Option<String> {
    get_json(&["mutatingwebhookconfiguration", configuration])?["webhooks"][0]["clientConfig"]
        ["caBundle"]
        .as_str()
        .map(str::to_owned)
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_charts_rbac_is_enough_for_the_controller_and_webhook_and_no_more() {
    let _turn = CONTROLLER_TURN.lock().await;
    // The CRD is cluster-wide and other tests share it, so the release does not own it; the
    // chart's copy is checked against the code by the_charts_crd_and_deploy_manifest_match_the_code.
    ensure_crd();
    let system = TestNamespace::new("chart");
    let app = TestNamespace::new("chart-app");

    // Given the chart installed with its defaults, its webhook scoped to the app namespace.
    let release = Release {
        name: system.name.clone(),
        namespace: system.name.clone(),
    };
    let selector = json!({"matchLabels": {"kubernetes.io/metadata.name": app.name}});
    let install = helm(&[
        "install",
        &release.name,
        &chart_arg(),
        "-n",
        &release.namespace,
        "--skip-crds",
        "--set-json",
        &format!("webhook.namespaceSelector={selector}"),
    ]);
    assert!(
        install.ok,
        "helm install: {}{}",
        install.stdout, install.stderr
    );
    assert!(
        install.stdout.contains("STATUS: deployed"),
        "{}",
        install.stdout
    );
    assert!(
        install.stdout.contains("Next step"),
        "NOTES: {}",
        install.stdout
    );

    let fullname = release.fullname();
    let deployment = get_json(&["deployment", &fullname, "-n", &system.name]).unwrap();
    let pod_spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(pod_spec["serviceAccountName"], fullname.as_str());
    assert_eq!(pod_spec["securityContext"]["runAsUser"], 65532);
    let container = &pod_spec["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let image = container["image"].as_str().unwrap().to_owned();
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("--fedcred-image={image}")))
    );
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--rollouts=false")),
        "rollouts are off by default"
    );
    let proxy_image = named(&container["env"], "FEDCRED_PROXY_IMAGE").unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(get_json(&["pdb", &fullname, "-n", &system.name]).is_some());

    // The webhook is reached by URL on loopback instead of through its Service.
    let webhook_port = webhook_to_loopback(&fullname);

    // When the controller runs as the chart's ServiceAccount with the chart's arguments,
    let cloud = Cloud::start(|c| c).await;
    support::cloud::service_account(&app, "orders-api");
    let kubeconfig = service_account_kubeconfig(&system.name, &fullname);
    let mut controller = start_controller(&deployment, kubeconfig.path(), &cloud, webhook_port);

    // then a FederatedCredential in another namespace becomes Ready with its Secret,
    let mut spec = serde_json::to_value(
        cloud.spec(json!({"serviceAccount": {"name": "orders-api"}}), json!({})),
    )
    .unwrap();
    spec["alloydb"] = json!({"instances": [{"uri": INSTANCE}]});
    let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "orders-db"}, "spec": spec});
    app.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();
    ready(&app.name, "orders-db").await;
    let data = secret_data_in(&app.name, "orders-db").expect("the token Secret");
    assert!(
        cloud.google.lookup(&data["access_token"]).is_some(),
        "the Secret holds a token the IAM double issued"
    );
    eventually("a TokenRefreshed event", LIMIT, || {
        let events = get_json(&[
            "events",
            "-n",
            &app.name,
            "--field-selector",
            "involvedObject.name=orders-db",
        ])?;
        events["items"]
            .as_array()?
            .iter()
            .any(|e| e["reason"] == "TokenRefreshed")
            .then_some(())
    })
    .await;
    assert_eq!(controller.get("/readyz").await.0, 200);
    let lease = get_json(&[
        "lease",
        &format!("{fullname}-controller"),
        "-n",
        &system.name,
    ])
    .expect("the leader Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "fedcred-replica-0");

    // and the webhook's certificate is kept in its Secret, its CA in the configuration,
    let tls_secret = format!("{fullname}-webhook-tls");
    let tls = eventually("the webhook TLS Secret", LIMIT, || {
        secret_data_in(&system.name, &tls_secret)
    })
    .await;
    let wanted_ca = base64::engine::general_purpose::STANDARD.encode(&tls["ca.crt"]);
    eventually("the caBundle", LIMIT, || {
        (ca_bundle(&fullname)? == wanted_ca).then_some(())
    })
    .await;

    // and an opted-in pod in the app namespace is stored with its sidecars.
    let pod = |name: &str, credential: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"fedcred.io/inject": "true"},
                "annotations": {"fedcred.io/credential": credential}},
            "spec": {"containers": [{"name": "app", "image": "registry.example/orders:1"}]}})
        .to_string()
    };
    let probe = pod("probe", "no-such-credential");
    eventually("the webhook to answer", LIMIT, || {
        let out = app.kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&probe));
        (!out.ok && out.stderr.contains("no-such-credential")).then_some(())
    })
    .await;
    app.kubectl(&["create", "-f", "-"], Some(&pod("orders", "orders-db")))
        .success();
    let stored = get_json(&["pod", "orders", "-n", &app.name]).unwrap();
    let init = &stored["spec"]["initContainers"];
    assert_eq!(
        named(init, "fedcred-metadata").expect("the metadata sidecar")["image"],
        image.as_str()
    );
    assert_eq!(
        named(init, "alloydb-proxy-0").expect("the proxy sidecar")["image"],
        proxy_image.as_str()
    );

    // The ServiceAccount can do what the controller does, and nothing more.
    let user = format!("system:serviceaccount:{}:{fullname}", system.name);
    let (sys, ns) = (system.name.as_str(), app.name.as_str());
    let own_lease = format!("leases.coordination.k8s.io/{fullname}-controller");
    let own_secret = format!("secrets/{tls_secret}");
    let own_webhook =
        format!("mutatingwebhookconfigurations.admissionregistration.k8s.io/{fullname}");
    let own_clusterrole = format!("clusterroles.rbac.authorization.k8s.io/{fullname}");
    let own_role = format!("roles.rbac.authorization.k8s.io/{fullname}");
    let allowed: &[&[&str]] = &[
        &["watch", "federatedcredentials.fedcred.io", "-A"],
        &["get", "federatedcredentials.fedcred.io", "-n", ns],
        &[
            "patch",
            "federatedcredentials.fedcred.io",
            "--subresource=status",
            "-n",
            ns,
        ],
        &["list", "secrets", "-A"],
        &["patch", "secrets", "-n", ns],
        &["create", "secrets", "-n", ns],
        &["get", "serviceaccounts", "-n", ns],
        &["create", "serviceaccounts", "--subresource=token", "-n", ns],
        &["create", "events.events.k8s.io", "-n", ns],
        &["create", "leases.coordination.k8s.io", "-n", sys],
        &["get", &own_lease, "-n", sys],
        &["update", &own_lease, "-n", sys],
        &["create", "secrets", "-n", sys],
        &["get", &own_secret, "-n", sys],
        &["update", &own_secret, "-n", sys],
        &["get", &own_webhook],
        &["watch", &own_webhook],
        &["update", &own_webhook],
    ];
    for args in allowed {
        assert!(can(&user, args), "{user} should be allowed to {args:?}");
    }
    let denied: &[&[&str]] = &[
        // Rollouts are off unless asked for (the upgrade below turns them on).
        &["list", "deployments.apps", "-n", ns],
        &["patch", "deployments.apps", "-n", ns],
        &["patch", "statefulsets.apps", "-n", ns],
        &["patch", "daemonsets.apps", "-n", ns],
        &["create", "pods", "-n", ns],
        &["create", "pods", "-n", sys],
        &["create", "deployments.apps", "-n", ns],
        &["delete", "deployments.apps", "-n", ns],
        &["update", "deployments.apps", "-n", ns],
        &["patch", "replicasets.apps", "-n", ns],
        &["create", "rolebindings.rbac.authorization.k8s.io", "-n", ns],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["bind", "clusterroles.rbac.authorization.k8s.io"],
        &["escalate", "roles.rbac.authorization.k8s.io", "-n", sys],
        &["update", &own_clusterrole],
        &["update", &own_role, "-n", sys],
        &["impersonate", "serviceaccounts", "-n", ns],
        // Tokens only through TokenRequest, never by reading ServiceAccount token Secrets.
        &["get", "serviceaccounts", "--subresource=token", "-n", ns],
        &["get", "secrets", "-n", ns],
        &["update", "secrets", "-n", ns],
        &["delete", "secrets", "-n", ns],
        &["get", "secrets/other", "-n", sys],
        &["update", "secrets/other", "-n", sys],
        &["create", "serviceaccounts", "-n", ns],
        &["update", "federatedcredentials.fedcred.io", "-n", ns],
        &["patch", "federatedcredentials.fedcred.io", "-n", ns],
        &["delete", "federatedcredentials.fedcred.io", "-n", ns],
        &[
            "update",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/other",
        ],
        &[
            "create",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        ],
        &["delete", &own_webhook],
        &[
            "watch",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        ],
        &[
            "update",
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
        ],
        &["create", "leases.coordination.k8s.io", "-n", ns],
        &["update", "leases.coordination.k8s.io/other", "-n", sys],
        &["create", "customresourcedefinitions.apiextensions.k8s.io"],
        &["*", "*", "-A"],
    ];
    for args in denied {
        assert!(
            !can(&user, args),
            "{user} should not be allowed to {args:?}"
        );
    }

    assert!(controller.terminate(), "{}", controller.logs());

    // helm upgrade: a changed value takes effect and the controller's caBundle survives.
    webhook_back_to_its_service(&fullname, &system.name);
    let upgrade = helm(&[
        "upgrade",
        &release.name,
        &chart_arg(),
        "-n",
        &release.namespace,
        "--reuse-values",
        "--set",
        "replicaCount=3",
        "--set",
        &format!("controllerIdentity.allowedNamespaces={{{}}}", app.name),
        "--set",
        "rollouts.enabled=true",
    ]);
    assert!(
        upgrade.ok,
        "helm upgrade: {}{}",
        upgrade.stdout, upgrade.stderr
    );
    let upgraded = get_json(&["deployment", &fullname, "-n", &system.name]).unwrap();
    assert_eq!(upgraded["spec"]["replicas"], 3);
    let args = &upgraded["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!(format!("--allow-controller-identity={}", app.name))),
        "{args}"
    );
    assert!(
        args.as_array().unwrap().contains(&json!("--rollouts=true")),
        "{args}"
    );
    // Rollouts on: the workloads of every namespace may be listed and their templates patched.
    for args in [
        &["list", "deployments.apps", "-n", ns][..],
        &["patch", "deployments.apps", "-n", ns],
        &["patch", "statefulsets.apps", "-n", ns],
        &["patch", "daemonsets.apps", "-n", ns],
    ] {
        assert!(can(&user, args), "{user} should be allowed to {args:?}");
    }
    assert!(!can(&user, &["update", "deployments.apps", "-n", ns]));
    assert_eq!(ca_bundle(&fullname), Some(wanted_ca));
    let history = helm(&["history", &release.name, "-n", &release.namespace]).success();
    assert_eq!(history.lines().count(), 3, "{history}");

    // helm uninstall removes everything the chart created and keeps the CRD.
    helm(&[
        "uninstall",
        &release.name,
        "-n",
        &release.namespace,
        "--wait",
    ])
    .success();
    for object in [
        format!("deployment/{fullname}"),
        format!("service/{fullname}-webhook"),
        format!("service/{fullname}-metrics"),
        format!("serviceaccount/{fullname}"),
        format!("role/{fullname}"),
        format!("rolebinding/{fullname}"),
        format!("pdb/{fullname}"),
    ] {
        assert!(
            !system.kubectl(&["get", &object], None).ok,
            "{object} survived helm uninstall"
        );
    }
    for object in [
        format!("clusterrole/{fullname}"),
        format!("clusterrolebinding/{fullname}"),
        format!("mutatingwebhookconfiguration/{fullname}"),
    ] {
        assert!(
            !kubectl(&["get", &object], None).ok,
            "{object} survived helm uninstall"
        );
    }
    assert!(kubectl(&["get", "crd", "federatedcredentials.fedcred.io"], None).ok);
    // The webhook's TLS Secret is owned by the configuration that trusted its CA, so the
    // garbage collector removes it; the Lease stays until the namespace goes
    // (docs/upgrading.md).
    eventually(
        "the webhook TLS Secret to be garbage-collected",
        LIMIT,
        || (!system.kubectl(&["get", "secret", &tls_secret], None).ok).then_some(()),
    )
    .await;
    assert!(
        system
            .kubectl(&["get", "lease", &format!("{fullname}-controller")], None)
            .ok
    );
    // The FederatedCredential and its Secret are the user's and stay too.
    assert!(app.kubectl(&["get", "secret", "orders-db"], None).ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_install_grants_the_listed_namespaces_only_and_works_there() {
    let _turn = CONTROLLER_TURN.lock().await;
    ensure_crd();
    let system = TestNamespace::new("chart-ns");
    let orders = TestNamespace::new("chart-orders");
    let billing = TestNamespace::new("chart-billing");
    let unlisted = TestNamespace::new("chart-unlisted");

    // Given the chart installed for two namespaces, with the policy on its token requests,
    let release = Release {
        name: system.name.clone(),
        namespace: system.name.clone(),
    };
    let listed = json!([orders.name, billing.name]);
    let install = helm(&[
        "install",
        &release.name,
        &chart_arg(),
        "-n",
        &release.namespace,
        "--skip-crds",
        "--set-json",
        &format!("watchNamespaces={listed}"),
        "--set",
        "tokenRequestPolicy.enabled=true",
    ]);
    assert!(
        install.ok,
        "helm install: {}{}",
        install.stdout, install.stderr
    );
    let fullname = release.fullname();

    // the controller is told to watch them, rollouts off,
    let deployment = get_json(&["deployment", &fullname, "-n", &system.name]).unwrap();
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    for wanted in [
        format!("--namespace={},{}", orders.name, billing.name),
        "--rollouts=false".to_owned(),
    ] {
        assert!(args.as_array().unwrap().contains(&json!(wanted)), "{args}");
    }
    // the webhook is sent pods of those namespaces only,
    let configuration = get_json(&["mutatingwebhookconfiguration", &fullname]).unwrap();
    let selector = &configuration["webhooks"][0]["namespaceSelector"];
    assert!(
        selector["matchExpressions"].as_array().unwrap().contains(
            &json!({"key": "kubernetes.io/metadata.name", "operator": "In",
                "values": listed})
        ),
        "{selector}"
    );
    // and each listed namespace has its Role and RoleBinding.
    for ns in [&orders, &billing] {
        assert!(ns.kubectl(&["get", "role", &fullname], None).ok);
        assert!(ns.kubectl(&["get", "rolebinding", &fullname], None).ok);
    }
    assert!(!unlisted.kubectl(&["get", "role", &fullname], None).ok);

    // The policy refuses the controller's token requests for another audience or a longer
    // life, which RBAC cannot (the ServiceAccount may create tokens in the listed namespaces).
    let user = format!("system:serviceaccount:{}:{fullname}", system.name);
    for ns in [&orders, &billing] {
        support::cloud::service_account(ns, "app");
    }
    let token_request = |audience: &str, duration: &str| {
        orders.kubectl(
            &[
                "create",
                "token",
                "app",
                "--audience",
                audience,
                "--duration",
                duration,
                "--as",
                &user,
            ],
            None,
        )
    };
    let refused = eventually("the token request policy to refuse", LIMIT, || {
        let out = token_request("https://elsewhere.example", "10m");
        (!out.ok && out.stderr.contains("fedcred may request")).then_some(out.stderr)
    })
    .await;
    assert!(refused.contains("tokenRequestPolicy"), "{refused}");
    let long = token_request("sts.amazonaws.com", "2h");
    assert!(
        !long.ok && long.stderr.contains("an hour at most"),
        "{}",
        long.stderr
    );
    assert!(token_request("sts.amazonaws.com", "10m").ok);
    // Nobody else's requests are looked at.
    assert!(
        orders
            .kubectl(
                &[
                    "create",
                    "token",
                    "app",
                    "--audience",
                    "https://elsewhere.example"
                ],
                None
            )
            .ok
    );

    // When the controller runs as the chart's ServiceAccount with the chart's arguments,
    let webhook_port = webhook_to_loopback(&fullname);
    let cloud = Cloud::start(|c| c).await;
    let kubeconfig = service_account_kubeconfig(&system.name, &fullname);
    let mut controller = start_controller(&deployment, kubeconfig.path(), &cloud, webhook_port);

    // then a FederatedCredential in each listed namespace becomes Ready with its Secret
    // (its token requests pass the policy),
    for ns in [&orders, &billing] {
        let spec = cloud.spec(json!({"serviceAccount": {"name": "app"}}), json!({}));
        let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
            "metadata": {"name": "app-google"}, "spec": spec});
        ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
            .success();
    }
    let elsewhere = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "app-google"},
        "spec": cloud.spec(json!({"serviceAccount": {"name": "app"}}), json!({}))});
    unlisted
        .kubectl(&["apply", "-f", "-"], Some(&elsewhere.to_string()))
        .success();
    for ns in [&orders, &billing] {
        ready(&ns.name, "app-google").await;
        let data = secret_data_in(&ns.name, "app-google").expect("the token Secret");
        assert!(cloud.google.lookup(&data["access_token"]).is_some());
    }
    // written by this controller, while one in a namespace it does not serve is not looked at.
    let untouched = get_json(&["fedcred", "app-google", "-n", &unlisted.name]).unwrap();
    assert!(untouched.get("status").is_none(), "{untouched}");
    assert!(secret_data_in(&unlisted.name, "app-google").is_none());
    let logs = controller.logs();
    for ns in [&orders, &billing] {
        assert!(
            logs.lines()
                .any(|l| l.contains("token written") && l.contains(&ns.name)),
            "{logs}"
        );
    }
    assert!(!logs.contains(&unlisted.name), "{logs}");

    // and an opted-in pod of a listed namespace is stored with its sidecar.
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "labels": {"fedcred.io/inject": "true"},
            "annotations": {"fedcred.io/credential": "app-google"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}})
    .to_string();
    eventually("the webhook to inject", LIMIT, || {
        let out = billing.kubectl(
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            Some(&pod),
        );
        let stored: Value = serde_json::from_str(&out.stdout).ok()?;
        named(&stored["spec"]["initContainers"], "fedcred-metadata").map(|_| ())
    })
    .await;
    assert!(controller.terminate(), "{}", controller.logs());

    // The ServiceAccount can do the controller's work in the listed namespaces,
    let sys = system.name.as_str();
    let own_lease = format!("leases.coordination.k8s.io/{fullname}-controller");
    let own_secret = format!("secrets/{fullname}-webhook-tls");
    let own_webhook =
        format!("mutatingwebhookconfigurations.admissionregistration.k8s.io/{fullname}");
    let work = |ns: &str| -> Vec<Vec<String>> {
        [
            &["watch", "federatedcredentials.fedcred.io"][..],
            &["get", "federatedcredentials.fedcred.io"],
            &[
                "patch",
                "federatedcredentials.fedcred.io",
                "--subresource=status",
            ],
            &["list", "secrets"],
            &["watch", "secrets"],
            &["create", "secrets"],
            &["patch", "secrets"],
            &["get", "serviceaccounts"],
            &["create", "serviceaccounts", "--subresource=token"],
            &["create", "events.events.k8s.io"],
            &["patch", "events.events.k8s.io"],
        ]
        .iter()
        .map(|args| {
            let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            all.extend(["-n".to_owned(), ns.to_owned()]);
            all
        })
        .collect()
    };
    let allowed =
        |args: &[String]| can(&user, &args.iter().map(String::as_str).collect::<Vec<_>>());
    for ns in [&orders.name, &billing.name] {
        for args in work(ns) {
            assert!(allowed(&args), "{user} should be allowed to {args:?}");
        }
    }
    for args in [
        &["create", "leases.coordination.k8s.io", "-n", sys][..],
        &["get", &own_lease, "-n", sys],
        &["update", &own_lease, "-n", sys],
        &["create", "secrets", "-n", sys],
        &["get", &own_secret, "-n", sys],
        &["update", &own_secret, "-n", sys],
        &["get", &own_webhook],
        &["watch", &own_webhook],
        &["update", &own_webhook],
    ] {
        assert!(can(&user, args), "{user} should be allowed to {args:?}");
    }

    // and none of it anywhere else: not in kube-system, not in a namespace it was not given,
    // not cluster-wide.
    for ns in ["kube-system", unlisted.name.as_str()] {
        for args in work(ns) {
            assert!(!allowed(&args), "{user} should not be allowed to {args:?}");
        }
    }
    let (o, b) = (orders.name.as_str(), billing.name.as_str());
    for args in [
        &["list", "secrets", "-A"][..],
        &["watch", "secrets", "-A"],
        &["get", "secrets", "-n", o],
        &["delete", "secrets", "-n", o],
        &["list", "secrets", "-n", sys],
        &["get", "secrets/other", "-n", sys],
        &[
            "create",
            "serviceaccounts",
            "--subresource=token",
            "-n",
            sys,
        ],
        &["list", "federatedcredentials.fedcred.io", "-A"],
        &["create", "events.events.k8s.io", "-n", sys],
        // Rollouts are off unless asked for.
        &["list", "deployments.apps", "-n", o],
        &["patch", "deployments.apps", "-n", o],
        &["patch", "statefulsets.apps", "-n", b],
        &["patch", "daemonsets.apps", "-n", b],
        &[
            "update",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/other",
        ],
        &["delete", &own_webhook],
        &[
            "list",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        ],
        &["create", "customresourcedefinitions.apiextensions.k8s.io"],
        &["*", "*", "-A"],
    ] {
        assert!(
            !can(&user, args),
            "{user} should not be allowed to {args:?}"
        );
    }

    // Rollouts, asked for, are granted in the listed namespaces only.
    webhook_back_to_its_service(&fullname, &system.name);
    let upgrade = helm(&[
        "upgrade",
        &release.name,
        &chart_arg(),
        "-n",
        &release.namespace,
        "--reuse-values",
        "--set",
        "rollouts.enabled=true",
    ]);
    assert!(
        upgrade.ok,
        "helm upgrade: {}{}",
        upgrade.stdout, upgrade.stderr
    );
    let upgraded = get_json(&["deployment", &fullname, "-n", &system.name]).unwrap();
    let args = &upgraded["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array().unwrap().contains(&json!("--rollouts=true")),
        "{args}"
    );
    for ns in [o, b] {
        for verb in ["list", "patch"] {
            for kind in ["deployments.apps", "statefulsets.apps", "daemonsets.apps"] {
                assert!(can(&user, &[verb, kind, "-n", ns]), "{verb} {kind} in {ns}");
            }
        }
        assert!(!can(&user, &["update", "deployments.apps", "-n", ns]));
    }
    for ns in ["kube-system", unlisted.name.as_str(), sys] {
        assert!(
            !can(&user, &["patch", "deployments.apps", "-n", ns]),
            "{ns}"
        );
    }
    assert!(!can(&user, &["patch", "deployments.apps", "-A"]));
}

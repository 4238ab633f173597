//! Golden tests: each case is a pod and a FederatedCredential; the file
//! `tests/golden/inject/<case>.json` holds what was given, the outcome, the patch and the pod
//! after applying the patch.
//!
//! After an intended change, regenerate the files and review their diff:
//!
//! ```text
//! FEDCRED_BLESS=1 cargo test -p fedcred-core --lib inject
//! ```
//!
//! Every patch is also applied here with the `json-patch` crate (RFC 6902), the result must
//! still be a valid `Pod`, and mutating it again must change nothing.
// Golden files are read and (with FEDCRED_BLESS) written by this test module only.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::{InjectConfig, Outcome, mutate};
use crate::api::FederatedCredential;

const BLESS: &str = "FEDCRED_BLESS";

// ---------------------------------------------------------------------------------------------
// Fixtures: manifests as users write them.

fn orders_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "orders-api-5d8f7",
            "namespace": "shop",
            "labels": {"app": "orders-api", "fedcred.io/inject": "true"},
            "annotations": {"fedcred.io/credential": "orders-db"}
        },
        "spec": {
            "serviceAccountName": "orders-api",
            "containers": [{
                "name": "app",
                "image": "registry.example/orders-api:1.4.2",
                "ports": [{"name": "http", "containerPort": 8080}]
            }]
        }
    })
}

fn credential(spec_alloydb: Option<Value>, service_account: Option<&str>) -> Value {
    let mut google = json!({
        "audience": "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/aws-pool/providers/aws-provider"
    });
    if let Some(sa) = service_account {
        google["serviceAccount"] = json!(sa);
    }
    let mut spec = json!({"aws": {"serviceAccount": {"name": "orders-api"}}, "google": google});
    if let Some(alloydb) = spec_alloydb {
        spec["alloydb"] = alloydb;
    }
    json!({
        "apiVersion": "fedcred.io/v1alpha1",
        "kind": "FederatedCredential",
        "metadata": {"name": "orders-db", "namespace": "shop"},
        "spec": spec,
        "status": {
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "TokenIssued",
                "message": "the Secret holds a token valid until 2026-01-01T01:00:00Z",
                "lastTransitionTime": "2026-01-01T00:00:00Z"
            }],
            "secretName": "orders-db"
        }
    })
}

const ORDERS_SA: &str = "orders@acme-shop.iam.gserviceaccount.com";
const PRIMARY: &str = "projects/acme-shop/locations/us-east4/clusters/orders/instances/primary";
const REPLICA: &str = "projects/acme-shop/locations/us-east4/clusters/orders/instances/read-pool";

fn psc_credential() -> Value {
    credential(
        Some(json!({"instances": [{"uri": PRIMARY, "connectivity": "PSC"}]})),
        Some(ORDERS_SA),
    )
}

fn not_ready(mut fc: Value) -> Value {
    fc["status"] = json!({
        "conditions": [{
            "type": "Ready",
            "status": "False",
            "reason": "AttributeConditionRejected",
            "message": "Google STS rejected arn:aws:sts::111122223333:assumed-role/orders/fedcred-shop-orders-db: The given credential is rejected by the attribute condition.",
            "lastTransitionTime": "2026-01-01T00:00:00Z"
        }]
    });
    fc
}

fn config() -> InjectConfig {
    InjectConfig::new("ghcr.io/example/fedcred:0.1.0")
}

// ---------------------------------------------------------------------------------------------
// Cases.

#[test]
fn plain_pod_with_one_psc_instance() {
    check(
        "plain_pod_one_psc_instance",
        "A pod with one container and nothing else gets the volume, the emulator and one PSC proxy \
         as native sidecars, and the full environment.",
        orders_pod(),
        Some(psc_credential()),
        config(),
    );
}

#[test]
fn pod_with_its_own_port_8988_an_init_container_and_pguser() {
    let mut pod = orders_pod();
    pod["spec"]["containers"][0]["ports"] = json!([
        {"name": "http", "containerPort": 8080},
        {"name": "admin", "containerPort": 8988}
    ]);
    pod["spec"]["containers"][0]["env"] = json!([{"name": "PGUSER", "value": "reporting"}]);
    pod["spec"]["initContainers"] = json!([{
        "name": "migrate",
        "image": "registry.example/orders-migrate:1.4.2",
        "env": [{"name": "PGDATABASE", "value": "orders"}]
    }]);
    pod["spec"]["volumes"] = json!([{"name": "config", "configMap": {"name": "orders-api"}}]);
    check(
        "own_port_init_container_and_pguser",
        "The pod declares 8988, so the emulator moves to 8989; the sidecars go before the pod's \
         own init container, which gets the environment too; PGUSER set by the pod stays.",
        pod,
        Some(psc_credential()),
        config(),
    );
}

#[test]
fn two_instances_psc_and_private_ip() {
    let fc = credential(
        Some(json!({"instances": [
            {"uri": PRIMARY, "connectivity": "PSC", "port": 5432},
            {"uri": REPLICA, "connectivity": "PrivateIP", "autoIamAuthn": false, "port": 5433}
        ]})),
        Some(ORDERS_SA),
    );
    let mut config = config();
    config.alloydb_admin_endpoint = Some("https://alloydb.test.example".to_owned());
    check(
        "two_instances_psc_and_private_ip",
        "Two instances: a PSC one with IAM login and a private-IP one without; each proxy gets \
         its own health port; PG* point at the first.",
        orders_pod(),
        Some(fc),
        config,
    );
}

#[test]
fn federated_only_credential() {
    check(
        "federated_only",
        "No AlloyDB and no service account: only the emulator; no PG* variables and no project.",
        orders_pod(),
        Some(credential(None, None)),
        config(),
    );
}

#[test]
fn plain_containers_before_native_sidecars() {
    let mut pod = orders_pod();
    pod["spec"]["initContainers"] = json!([{
        "name": "migrate",
        "image": "registry.example/orders-migrate:1.4.2"
    }]);
    let mut config = config();
    config.native_sidecars = false;
    check(
        "plain_containers",
        "An API server older than 1.29: the sidecars are appended to containers without \
         restartPolicy, and the pod's init container, which runs before them, gets nothing.",
        pod,
        Some(psc_credential()),
        config,
    );
}

#[test]
fn resubmitted_injected_pod_is_unchanged() {
    let fc = psc_credential();
    let Outcome::Patch { ops, .. } = run(&orders_pod(), Some(&fc), &config()) else {
        panic!("the plain pod is patched");
    };
    let mut injected = apply(orders_pod(), &ops);
    // As read back from the API server, which adds defaults and may drop nothing we rely on.
    injected["metadata"]["uid"] = json!("7f1c2a4e-0000-4000-8000-000000000001");
    check(
        "resubmitted",
        "A pod that already went through the webhook (read back and created again, or seen again \
         on reinvocation) gets nothing more.",
        injected,
        Some(fc),
        config(),
    );
}

#[test]
fn missing_credential_is_refused() {
    check(
        "missing_credential",
        "The annotation names a FederatedCredential that does not exist: refused, naming it.",
        orders_pod(),
        None,
        config(),
    );
}

#[test]
fn not_ready_credential_is_admitted_with_a_warning() {
    check(
        "not_ready",
        "The FederatedCredential exists but has no valid token: injected, with a warning that \
         names it and why.",
        orders_pod(),
        Some(not_ready(psc_credential())),
        config(),
    );
}

#[test]
fn proxied_container_gets_loopback_in_no_proxy() {
    let mut pod = orders_pod();
    pod["spec"]["containers"] = json!([
        {
            "name": "app",
            "image": "registry.example/orders-api:1.4.2",
            "env": [
                {"name": "HTTPS_PROXY", "value": "http://proxy.corp.example:3128"},
                {"name": "NO_PROXY", "value": ".corp.example"}
            ]
        },
        {
            "name": "worker",
            "image": "registry.example/orders-worker:1.4.2",
            "env": [{"name": "https_proxy", "value": "http://proxy.corp.example:3128"}],
            "envFrom": [{"configMapRef": {"name": "orders-worker"}}]
        }
    ]);
    check(
        "proxied_containers",
        "Containers behind an HTTP proxy: loopback is merged into an existing NO_PROXY, or \
         NO_PROXY and no_proxy are added, so requests to the emulator and proxy stay local.",
        pod,
        Some(credential(None, Some(ORDERS_SA))),
        config(),
    );
}

/// `fc` with the exchange in each pod, chained into the orders role.
fn in_pod(mut fc: Value) -> Value {
    fc["spec"]["exchange"] = json!("Pod");
    fc["spec"]["aws"] = json!({
        "controllerIdentity": {"roleArn": "arn:aws:iam::111122223333:role/orders"}
    });
    fc["status"] = json!({
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "ExchangeInPod",
            "message": "the exchange happens in each pod that uses this resource",
            "lastTransitionTime": "2026-01-01T00:00:00Z"
        }],
        "identity": "in pod, as arn:aws:iam::111122223333:role/orders"
    });
    fc
}

#[test]
fn in_pod_exchange_after_eks_pod_identity() {
    // As EKS's Pod Identity webhook leaves a pod when it runs before fedcred's.
    let mut pod = orders_pod();
    pod["spec"]["containers"][0]["env"] = json!([
        {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"},
        {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"},
        {"name": "AWS_REGION", "value": "us-east-1"},
        {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"},
        {"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
         "value": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"}
    ]);
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{
        "name": "eks-pod-identity-token",
        "mountPath": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount",
        "readOnly": true
    }]);
    pod["spec"]["volumes"] = json!([{
        "name": "eks-pod-identity-token",
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": "pods.eks.amazonaws.com", "expirationSeconds": 86400,
            "path": "eks-pod-identity-token"
        }}]}
    }]);
    check(
        "in_pod_after_eks_pod_identity",
        "exchange: Pod, and EKS's webhook ran first: no Secret volume; the metadata sidecar runs \
         fedcred agent with the resource in FEDCRED_CREDENTIAL and a copy of the pod's Pod \
         Identity variables and token mount; the proxy and the app get what they get with the \
         emulator.",
        pod,
        Some(in_pod(psc_credential())),
        config(),
    );
}

#[test]
fn in_pod_exchange_before_eks() {
    check(
        "in_pod_before_eks",
        "exchange: Pod on a pod EKS's webhook has not seen yet: the agent gets only its \
         credential; EKS's webhook, which mutates every container and init container, adds the \
         Pod Identity variables and mount to it afterwards.",
        orders_pod(),
        Some(in_pod(credential(None, Some(ORDERS_SA)))),
        config(),
    );
}

/// The proxy's image pinned by digest.
const PROXY_BY_DIGEST: &str = "gcr.io/alloydb-connectors/alloydb-auth-proxy@sha256:\
    4e1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

#[test]
fn every_proxy_option() {
    let fc = credential(
        Some(json!({
            "instances": [
                {"uri": PRIMARY, "connectivity": "PSC", "port": 5432},
                {"uri": REPLICA, "connectivity": "PSC", "port": 5433,
                 "hostEnvName": "REPLICA_HOST", "portEnvName": "REPLICA_PORT", "userEnvName": "REPLICA_USER"}
            ],
            "proxy": {
                "image": PROXY_BY_DIGEST,
                "lazyRefresh": true,
                "prometheus": true,
                "maxConnections": 50,
                "maxSigtermDelay": "20s",
                "minSigtermDelay": "5s",
                "adminPort": 9091
            }
        })),
        Some(ORDERS_SA),
    );
    check(
        "every_proxy_option",
        "Every setting of alloydb.proxy on two instances: the image by digest; each proxy gets \
         --lazy-refresh, --prometheus, --max-connections and both SIGTERM delays, and \
         --quitquitquit on its own admin port (9091, 9092); the pod is annotated for Prometheus \
         at the first proxy's health port; the second instance's variables go by the names it \
         gives.",
        orders_pod(),
        Some(fc),
        config(),
    );
}

#[test]
fn unix_sockets_in_a_shared_volume() {
    let mut pod = orders_pod();
    pod["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "config", "mountPath": "/etc/orders"}]);
    pod["spec"]["volumes"] = json!([{"name": "config", "configMap": {"name": "orders-api"}}]);
    pod["spec"]["initContainers"] = json!([{
        "name": "migrate",
        "image": "registry.example/orders-migrate:1.4.2"
    }]);
    let fc = credential(
        Some(json!({
            "instances": [{"uri": PRIMARY, "connectivity": "PSC"}],
            "proxy": {"unixSocket": true}
        })),
        Some(ORDERS_SA),
    );
    check(
        "unix_socket",
        "alloydb.proxy.unixSocket: an emptyDir shared by the proxy and the pod's containers at \
         /var/run/fedcred-alloydb; the proxy listens there (--unix-socket) instead of on a port, \
         and PGHOST names the instance's socket directory, PGPORT 5432 as in the socket's name.",
        pod,
        Some(fc),
        config(),
    );
}

#[test]
fn custom_variable_names() {
    let fc = credential(
        Some(json!({"instances": [
            {"uri": PRIMARY, "hostEnvName": "ORDERS_DB_HOST", "portEnvName": "ORDERS_DB_PORT",
             "userEnvName": "ORDERS_DB_USER"},
            {"uri": REPLICA, "port": 6432, "hostEnvName": "PGHOST", "portEnvName": "PGPORT"}
        ]})),
        Some(ORDERS_SA),
    );
    check(
        "custom_env_names",
        "Instances that name their variables: the first one's host, port and user go by the \
         names it gives, and the second claims PGHOST and PGPORT (its user is not named, so \
         nothing sets PGUSER).",
        orders_pod(),
        Some(fc),
        config(),
    );
}

/// `fc` with `spec.cloudsql` set to `cloudsql`.
fn with_cloudsql(mut fc: Value, cloudsql: Value) -> Value {
    fc["spec"]["cloudsql"] = cloudsql;
    fc
}

#[test]
fn cloudsql_postgres_and_mysql() {
    let fc = with_cloudsql(
        credential(None, Some(ORDERS_SA)),
        json!({
            "instances": [
                {"connectionName": "acme-shop:europe-west1:orders-pg", "port": 5432},
                {"connectionName": "acme-shop:europe-west1:legacy-mysql", "engine": "MySQL",
                 "connectivity": "PrivateIP", "port": 3306},
                {"connectionName": "acme-shop:europe-west1:reports-pg", "connectivity": "PSC",
                 "port": 5433, "hostEnvName": "REPORTS_HOST", "portEnvName": "REPORTS_PORT",
                 "userEnvName": "REPORTS_USER"}
            ]
        }),
    );
    check(
        "cloudsql_postgres_and_mysql",
        "Three Cloud SQL instances, each with its own Cloud SQL Auth Proxy v2 sidecar finding its \
         token at the emulator: the first PostgreSQL instance over public IP gets PGHOST, PGPORT \
         and PGUSER (SA@PROJECT.iam); the MySQL instance over private IP gets MYSQL_HOST, \
         MYSQL_TCP_PORT and MYSQL_USER (the service account's name); the PSC instance's \
         variables go by the names it gives.",
        orders_pod(),
        Some(fc),
        config(),
    );
}

#[test]
fn cloudsql_beside_alloydb() {
    let fc = with_cloudsql(
        credential(
            Some(json!({"instances": [{"uri": PRIMARY, "connectivity": "PSC"}]})),
            Some(ORDERS_SA),
        ),
        json!({
            "instances": [
                {"connectionName": "acme-shop:europe-west1:orders-pg", "port": 6432,
                 "hostEnvName": "CLOUDSQL_HOST", "portEnvName": "CLOUDSQL_PORT",
                 "userEnvName": "CLOUDSQL_USER"}
            ],
            "proxy": {"image": "registry.example/cloud-sql-proxy:2.27.0"}
        }),
    );
    check(
        "cloudsql_beside_alloydb",
        "One pod using an AlloyDB and a Cloud SQL instance: the AlloyDB instance keeps PGHOST, \
         PGPORT and PGUSER; the Cloud SQL proxy (the image the resource names) gets the next \
         health port and the variables its instance names.",
        orders_pod(),
        Some(fc),
        config(),
    );
}

#[test]
fn cloudsql_unix_sockets() {
    let fc = with_cloudsql(
        credential(None, Some(ORDERS_SA)),
        json!({
            "instances": [
                {"connectionName": "acme-shop:europe-west1:orders-pg", "connectivity": "PSC"},
                {"connectionName": "acme-shop:europe-west1:legacy-mysql", "engine": "MySQL",
                 "port": 3306},
                {"connectionName": "acme-shop:europe-west1:reports-pg",
                 "hostEnvName": "REPORTS_HOST", "portEnvName": "REPORTS_PORT"}
            ],
            "proxy": {"unixSocket": true}
        }),
    );
    check(
        "cloudsql_unix_sockets",
        "cloudsql.proxy.unixSocket: an emptyDir shared by the Cloud SQL proxies and the pod's \
         containers at /var/run/fedcred-cloudsql; each proxy listens there (--unix-socket) \
         instead of on a port (a port given is not opened). PGHOST names the PostgreSQL \
         instance's socket directory PROJECT:REGION:INSTANCE with PGPORT 5432; MYSQL_UNIX_PORT \
         names the MySQL instance's socket file, with no port variable.",
        orders_pod(),
        Some(fc),
        config(),
    );
}

#[test]
fn cloudsql_variable_named_twice() {
    let fc = with_cloudsql(
        credential(
            Some(json!({"instances": [{"uri": PRIMARY, "connectivity": "PSC"}]})),
            Some(ORDERS_SA),
        ),
        json!({
            "instances": [
                {"connectionName": "acme-shop:europe-west1:orders-pg", "port": 6432,
                 "hostEnvName": "PGHOST"}
            ]
        }),
    );
    check(
        "cloudsql_variable_named_twice",
        "A Cloud SQL instance naming PGHOST beside an AlloyDB instance that has it: refused, \
         naming the variable and the fields that rename it.",
        orders_pod(),
        Some(fc),
        config(),
    );
}

// ---------------------------------------------------------------------------------------------
// Harness.

fn run(pod: &Value, fc: Option<&Value>, config: &InjectConfig) -> Outcome {
    let pod: Pod = serde_json::from_value(pod.clone()).expect("the fixture is a valid Pod");
    let fc: Option<FederatedCredential> =
        fc.map(|v| serde_json::from_value(v.clone()).expect("the fixture is a valid resource"));
    mutate(&pod, fc.as_ref(), config)
}

fn check(case: &str, story: &str, pod: Value, fc: Option<Value>, config: InjectConfig) {
    let outcome = run(&pod, fc.as_ref(), &config);
    let mut doc = json!({
        "case": story,
        "given": {
            "config": {
                "fedcredImage": config.fedcred_image,
                "proxyImage": config.proxy_image,
                "metadataPort": config.metadata_port,
                "nativeSidecars": config.native_sidecars,
                "alloydbAdminEndpoint": config.alloydb_admin_endpoint,
            },
            "credential": fc,
            "pod": pod,
        },
    });
    // Cases with Cloud SQL say which proxy image they were given; the others stay as they
    // were written before Cloud SQL.
    if fc
        .as_ref()
        .is_some_and(|fc| fc["spec"].get("cloudsql").is_some())
    {
        doc["given"]["config"]["cloudsqlProxyImage"] = json!(config.cloudsql_proxy_image);
        doc["given"]["config"]["cloudsqlAdminEndpoint"] = json!(config.cloudsql_admin_endpoint);
    }
    match outcome {
        Outcome::Patch { ops, warnings } => {
            let patched = apply(pod, &ops);
            let again = run(&patched, fc.as_ref(), &config);
            assert_eq!(
                again,
                Outcome::Unchanged,
                "{case}: mutating the result again"
            );
            check_invariants(case, &patched);
            doc["outcome"] = json!("Patch");
            doc["warnings"] = json!(warnings);
            doc["patch"] = Value::Array(ops);
            doc["patched"] = patched;
        }
        Outcome::Unchanged => doc["outcome"] = json!("Unchanged"),
        Outcome::Refuse(refusal) => {
            doc["outcome"] = json!("Refuse");
            doc["message"] = json!(refusal.to_string());
        }
    }
    compare(case, &doc);
}

/// What holds for every injected pod, whatever the golden file says.
fn check_invariants(case: &str, patched: &Value) {
    let pod: Pod = serde_json::from_value(patched.clone())
        .unwrap_or_else(|e| panic!("{case}: the patched pod is not a Pod: {e}"));
    let spec = pod.spec.expect("a spec");
    let all: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect();
    let mut ports = Vec::new();
    for c in &all {
        ports.extend(c.ports.iter().flatten().map(|p| p.container_port));
        let args = c.args.clone().unwrap_or_default();
        let flag = |name: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(name).map(|v| v.parse::<i32>().unwrap()))
        };
        if c.name == super::METADATA_CONTAINER {
            let listen = args.last().unwrap();
            ports.push(listen.rsplit(':').next().unwrap().parse().unwrap());
        }
        if c.name.starts_with(super::PROXY_CONTAINER_PREFIX) {
            assert!(
                !args.iter().any(|a| a.starts_with("--token")),
                "{case}: --token"
            );
            ports.extend(flag("--port="));
            ports.extend(flag("--http-port="));
            ports.extend(flag("--admin-port="));
        }
        if c.name == super::METADATA_CONTAINER || c.name.starts_with(super::PROXY_CONTAINER_PREFIX)
        {
            let sc = c.security_context.as_ref().expect("a security context");
            assert_eq!(sc.run_as_non_root, Some(true), "{case}: {}", c.name);
            assert_eq!(
                sc.read_only_root_filesystem,
                Some(true),
                "{case}: {}",
                c.name
            );
            assert_eq!(
                sc.allow_privilege_escalation,
                Some(false),
                "{case}: {}",
                c.name
            );
        }
    }
    let count = ports.len();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), count, "{case}: ports collide: {ports:?}");
}

fn compare(case: &str, doc: &Value) {
    let path = golden_dir().join(format!("{case}.json"));
    let text = serde_json::to_string_pretty(doc).expect("JSON values serialize") + "\n";
    if std::env::var_os(BLESS).is_some_and(|v| v == "1") {
        std::fs::create_dir_all(golden_dir()).expect("create the golden directory");
        std::fs::write(&path, &text).expect("write the golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with {BLESS}=1 cargo test -p fedcred --lib inject",
            path.display()
        )
    });
    if expected != text {
        let line = expected
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(text.lines().count()));
        panic!(
            "{} differs from the outcome, first at line {}:\n  golden: {}\n  now:    {}\n\
             If the change is intended, run {BLESS}=1 cargo test -p fedcred --lib inject and \
             review the diff.",
            path.display(),
            line + 1,
            expected.lines().nth(line).unwrap_or("<end>"),
            text.lines().nth(line).unwrap_or("<end>"),
        );
    }
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject")
}

/// The pod with the patch applied, as the API server applies it (RFC 6902, `json-patch`).
fn apply(mut doc: Value, ops: &[Value]) -> Value {
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops.to_vec())).expect("the operations are RFC 6902");
    json_patch::patch(&mut doc, &patch).expect("the patch applies to the pod it was made for");
    doc
}

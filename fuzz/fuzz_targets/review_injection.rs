//! The whole mutation path, structure-aware: an AdmissionReview of a generated pod (containers,
//! init containers, env, ports, volumes, labels, annotations, hostNetwork) and a generated
//! FederatedCredential (AlloyDB instance URIs, ports, connectivity, proxy image, readiness)
//! through `parse`, `wanted` and `answer`. Checks, besides the AdmissionReview shape: the patch
//! applies to the pod as the API server holds it; the result is a Pod with one metadata sidecar,
//! one proxy per instance whose first argument is the instance URI the CRD admitted, unique
//! container names and ports, every app container pointed at the emulator; and re-submitting
//! the patched pod is admitted unchanged.
#![no_main]

mod common;

use std::collections::BTreeSet;
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use fedcred_core::api::FederatedCredential;
use fedcred_core::inject::{InjectConfig, METADATA_CONTAINER, PROXY_CONTAINER_PREFIX};
use fedcred_core::admission::{Lookup, answer, encode, parse};
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use regex::Regex;
use serde_json::{Value, json};

static URI: LazyLock<Regex> =
    LazyLock::new(|| common::crd_pattern(&["alloydb", "instances", "[]", "uri"]));

const NAMES: &[&str] = &[
    "app",
    "worker",
    "fedcred-metadata",
    "alloydb-proxy-0",
    "alloydb-proxy-x",
    "",
];
const ENV: &[&str] = &[
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "GCE_METADATA_HOST",
    "GCE_METADATA_IP",
    "NO_PROXY",
    "no_proxy",
    "HTTPS_PROXY",
    "GOOGLE_CLOUD_PROJECT",
    "OTHER",
];
const PORTS: &[u16] = &[8988, 8989, 9801, 5432, 5433, 8080, 9090, 65535];
const URIS: &[&str] = &[
    "projects/acme-shop/locations/asia-northeast1/clusters/orders/instances/orders-primary",
    "projects/acme-shop/locations/us-east4/clusters/orders/instances/read-pool",
];
const CREDENTIALS: &[&str] = &["orders-db", " orders-db ", "", "other-db"];
const NAMESPACES: &[&str] = &["shop", "", "other"];

fn pick(known: &[&str], i: u8) -> String {
    known[i as usize % known.len()].to_owned()
}

#[derive(Arbitrary, Debug)]
struct Env {
    name: u8,
    value: Option<String>,
    from_field: bool,
}

#[derive(Arbitrary, Debug)]
struct Container {
    name: u8,
    env: Vec<Env>,
    ports: Vec<(u8, bool)>,
    always: bool,
}

#[derive(Arbitrary, Debug)]
struct Instance {
    uri: Result<u8, String>,
    connectivity: u8,
    iam: bool,
    port: Result<u8, i32>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    operation: u8,
    label: u8,
    credential: Result<u8, String>,
    object_namespace: u8,
    annotations: bool,
    host_network: Option<bool>,
    containers: Vec<Container>,
    init_containers: Option<Vec<Container>>,
    volumes: Option<Vec<bool>>,
    service_account: bool,
    instances: Option<Vec<Instance>>,
    proxy_image: Option<String>,
    ready: bool,
    native: bool,
    metadata_port: u16,
}

fn container(c: &Container, index: usize) -> Value {
    let mut name = pick(NAMES, c.name);
    if name.is_empty() {
        name = format!("c{index}");
    }
    let mut v = json!({"name": name, "image": "registry.example/app:1"});
    if !c.env.is_empty() {
        v["env"] = c
            .env
            .iter()
            .map(|e| {
                let mut env = json!({"name": ENV[e.name as usize % ENV.len()]});
                if e.from_field {
                    env["valueFrom"] = json!({"fieldRef": {"fieldPath": "status.podIP"}});
                } else if let Some(value) = &e.value {
                    env["value"] = json!(value);
                }
                env
            })
            .collect();
    }
    if !c.ports.is_empty() {
        v["ports"] = c
            .ports
            .iter()
            .map(|(p, udp)| {
                let protocol = if *udp { "UDP" } else { "TCP" };
                json!({"containerPort": PORTS[*p as usize % PORTS.len()], "protocol": protocol})
            })
            .collect();
    }
    v
}

fn pod(input: &Input) -> Value {
    let mut metadata = json!({"name": "orders"});
    let label = ["true", "false", "True"].get(input.label as usize % 4);
    if let Some(label) = label {
        metadata["labels"] = json!({"fedcred.io/inject": label, "app": "orders"});
    }
    if input.annotations {
        let credential = match &input.credential {
            Ok(i) => pick(CREDENTIALS, *i),
            Err(s) => s.clone(),
        };
        metadata["annotations"] = json!({"fedcred.io/credential": credential});
    }
    let ns = pick(NAMESPACES, input.object_namespace);
    if !ns.is_empty() {
        metadata["namespace"] = json!(ns);
    }
    let mut spec = json!({
        "containers": input.containers.iter().take(4).enumerate().map(|(i, c)| container(c, i)).collect::<Vec<_>>(),
    });
    if let Some(init) = &input.init_containers {
        spec["initContainers"] = init
            .iter()
            .take(3)
            .enumerate()
            .map(|(i, c)| {
                let mut v = container(c, 10 + i);
                if c.always {
                    v["restartPolicy"] = json!("Always");
                }
                v
            })
            .collect();
    }
    if let Some(volumes) = &input.volumes {
        spec["volumes"] = volumes
            .iter()
            .take(3)
            .enumerate()
            .map(|(i, ours)| {
                let name = if *ours {
                    "fedcred-token".to_owned()
                } else {
                    format!("data-{i}")
                };
                json!({"name": name, "emptyDir": {}})
            })
            .collect();
    }
    if let Some(host) = input.host_network {
        spec["hostNetwork"] = json!(host);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

fn credential(input: &Input) -> Option<FederatedCredential> {
    let mut spec = json!({
        "aws": {"serviceAccount": {"name": "orders-api"}, "region": "ap-northeast-1"},
        "google": {"audience": "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop"},
    });
    if input.service_account {
        spec["google"]["serviceAccount"] = json!("orders-api@acme-shop.iam.gserviceaccount.com");
    }
    if let Some(instances) = &input.instances {
        let list: Vec<Value> = instances
            .iter()
            .take(9)
            .map(|i| {
                let uri = match &i.uri {
                    Ok(k) => pick(URIS, *k),
                    Err(s) => s.clone(),
                };
                let port = match i.port {
                    Ok(k) => i32::from(PORTS[k as usize % PORTS.len()]),
                    Err(p) => p,
                };
                let connectivity = ["PSC", "PublicIP", "PrivateIP"][i.connectivity as usize % 3];
                json!({"uri": uri, "connectivity": connectivity, "autoIamAuthn": i.iam, "port": port})
            })
            .collect();
        spec["alloydb"] = json!({ "instances": list });
        if let Some(image) = &input.proxy_image {
            spec["alloydb"]["proxy"] = json!({"image": image});
        }
    }
    let mut fc = json!({
        "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "orders-db", "namespace": "shop"},
        "spec": spec,
    });
    if input.ready {
        fc["status"] = json!({"conditions": [{"type": "Ready", "status": "True", "reason": "TokenIssued",
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    }
    serde_json::from_value(fc).ok()
}

fn review(pod: &Value, operation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "7d1e0a52-0000-4000-8000-00000000fuzz",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
        }
    }))
    .unwrap()
}

fn names(pod: &Value) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn ports(pod: &Value) -> Vec<u64> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["containerPort"].as_u64())
        .collect()
}

fn unique<T: Ord + Clone>(items: &[T]) -> bool {
    items.iter().cloned().collect::<BTreeSet<_>>().len() == items.len()
}

fuzz_target!(|input: Input| {
    let operation = if input.operation.is_multiple_of(5) {
        "UPDATE"
    } else {
        "CREATE"
    };
    let body = review(&pod(&input), operation);
    let Ok(parsed) = parse(&body) else { return };
    assert_eq!(
        parsed.pod.metadata.namespace.as_deref(),
        Some("shop"),
        "the pod left the request's namespace"
    );
    let fc = credential(&input);
    let mut config = InjectConfig::new("ghcr.io/example/fedcred:fuzz");
    config.native_sidecars = input.native;
    if input.metadata_port >= 1024 {
        config.metadata_port = input.metadata_port;
    }
    let lookup = match (parsed.wanted(), &fc) {
        (None, _) => Lookup::NotNeeded,
        (Some(("shop", "orders-db")), Some(fc)) => Lookup::Found(Box::new(fc.clone())),
        (Some(_), _) => Lookup::Missing,
    };
    let found = matches!(lookup, Lookup::Found(_));
    let reply = answer(&parsed, lookup, &config);
    let ops = common::check_answer(&encode(reply), &parsed.uid);
    if ops.is_empty() {
        return;
    }
    assert!(
        found && operation == "CREATE",
        "a patch without a credential or for an update"
    );

    // The API server patches the object it holds: the typed pod, serialised.
    let before = serde_json::to_value(&parsed.pod).unwrap();
    let after = common::apply_patch(before.clone(), &ops)
        .unwrap_or_else(|e| panic!("the patch does not apply: {e}\n{before}\n{ops:?}"));
    let patched: Pod = serde_json::from_value(after.clone()).expect("the patched pod is a Pod");

    let all = names(&after);
    assert_eq!(
        all.iter().filter(|n| *n == METADATA_CONTAINER).count(),
        1,
        "{all:?}"
    );
    if unique(&names(&before)) {
        assert!(unique(&all), "container names collide: {all:?}");
    }
    if unique(&ports(&before)) {
        assert!(
            unique(&ports(&after)),
            "container ports collide: {:?}",
            ports(&after)
        );
    }
    let fc = fc.unwrap();
    let instances = fc
        .spec
        .alloydb
        .as_ref()
        .map(|a| a.instances.clone())
        .unwrap_or_default();
    let proxies: Vec<Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| after["spec"][k].as_array().cloned().unwrap_or_default())
        .filter(|c| {
            c["name"].as_str().is_some_and(|n| {
                n.starts_with(PROXY_CONTAINER_PREFIX)
                    && n[PROXY_CONTAINER_PREFIX.len()..]
                        .bytes()
                        .all(|b| b.is_ascii_digit())
            })
        })
        .collect();
    assert_eq!(proxies.len(), instances.len(), "one proxy per instance");
    for (proxy, instance) in proxies.iter().zip(&instances) {
        if URI.is_match(&instance.uri) {
            assert_eq!(
                proxy["args"][0].as_str(),
                Some(instance.uri.as_str()),
                "{proxy}"
            );
            let args = proxy["args"].as_array().unwrap();
            assert_eq!(
                args.iter()
                    .filter(|a| a.as_str() == Some(instance.uri.as_str()))
                    .count(),
                1
            );
        }
    }
    for c in after["spec"]["containers"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap_or_default();
        if name == METADATA_CONTAINER || proxies.iter().any(|p| p["name"] == name) {
            continue;
        }
        let env = c["env"].as_array().cloned().unwrap_or_default();
        assert!(
            env.iter().any(|e| e["name"] == "GCE_METADATA_HOST"),
            "container {name} is not pointed at the emulator: {c}"
        );
    }

    // A resubmitted (or reinvoked) pod is admitted as it is.
    let again = parse(&review(&serde_json::to_value(&patched).unwrap(), "CREATE")).expect("parses");
    let reply = answer(&again, Lookup::Found(Box::new(fc)), &config);
    let admitted = fedcred_core::admission::allowed(&reply);
    let ops = common::check_answer(&encode(reply), &again.uid);
    assert!(
        ops.is_empty() && admitted,
        "the injected pod is injected again"
    );
});

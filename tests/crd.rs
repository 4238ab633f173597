//! The FederatedCredential CRD on a real kube-apiserver: it installs, accepts the examples,
//! rejects invalid resources with messages that say what to fix, and explains itself.

mod support;

use fedcred_core::testing::validation_cases;
use serde::Deserialize;
use serde_json::{Value, json};
use support::{TestNamespace, ensure_crd, kubectl, repo_root};

/// A valid resource.
fn valid(name: &str) -> Value {
    support::valid_credential(name)
}

#[test]
fn control_plane_is_a_real_kube_apiserver() {
    let out = kubectl(&["version", "-o", "json"], None).success();
    let version: Value = serde_json::from_str(&out).unwrap();
    let server = &version["serverVersion"];
    let git = server["gitVersion"].as_str().unwrap();
    println!("testing against kube-apiserver {git}");
    let minor: u32 = server["minor"]
        .as_str()
        .unwrap()
        .trim_end_matches('+')
        .parse()
        .unwrap();
    assert_eq!(server["major"], "1");
    assert!(
        minor >= 33,
        "fedcred supports Kubernetes 1.33 and later, got {git}"
    );
}

#[test]
fn crd_installs_and_is_established() {
    ensure_crd();
    let out = kubectl(
        &[
            "get",
            "crd",
            "federatedcredentials.fedcred.io",
            "-o",
            "json",
        ],
        None,
    )
    .success();
    let crd: Value = serde_json::from_str(&out).unwrap();
    let established = crd["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    assert!(established, "CRD not established: {}", crd["status"]);
    assert_eq!(
        crd["status"]["acceptedNames"]["shortNames"],
        json!(["fedcred"])
    );
}

#[test]
fn examples_are_accepted() {
    ensure_crd();
    for example in [
        "irsa-alloydb.yaml",
        "controller-identity-bigquery.yaml",
        "alloydb-proxy-settings.yaml",
        "irsa-cloudsql.yaml",
    ] {
        let ns = TestNamespace::new("example");
        let text = std::fs::read_to_string(repo_root().join("examples").join(example)).unwrap();
        // Each example brings its own namespace; create its objects in the test's instead.
        let mut created = 0;
        for doc in serde_norway::Deserializer::from_str(&text) {
            let mut obj = Value::deserialize(doc).unwrap();
            if obj["kind"] == "Namespace" {
                continue;
            }
            if let Some(meta) = obj["metadata"].as_object_mut() {
                meta.remove("namespace");
            }
            ns.kubectl(&["create", "-f", "-"], Some(&obj.to_string()))
                .success();
            created += 1;
        }
        assert!(created >= 2, "{example} holds no resources");
        let listed = ns
            .kubectl(&["get", "fedcred", "-o", "name"], None)
            .success();
        assert_eq!(listed.lines().count(), 1, "{example}: {listed}");
    }
}

/// `kubectl apply -f examples/` takes the files in name order: every namespaced object must
/// come after its Namespace, and an object two examples share must be the same in both, or the
/// later file silently rewrites the earlier one's.
#[test]
fn the_examples_directory_applies_as_a_whole() {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut namespaces = std::collections::BTreeSet::new();
    let mut seen: std::collections::BTreeMap<String, (String, Value)> = Default::default();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let obj = Value::deserialize(doc).unwrap();
            let kind = obj["kind"].as_str().unwrap().to_owned();
            let meta = &obj["metadata"];
            if kind == "Namespace" {
                namespaces.insert(meta["name"].as_str().unwrap().to_owned());
            }
            if let Some(ns) = meta["namespace"].as_str() {
                assert!(
                    namespaces.contains(ns),
                    "{name}: {kind} {} comes before its Namespace {ns} in `kubectl apply -f examples/`",
                    meta["name"]
                );
            }
            let key = format!("{kind} {}/{}", meta["namespace"], meta["name"]);
            if let Some((first, earlier)) = seen.get(&key) {
                assert_eq!(
                    earlier, &obj,
                    "{name} rewrites {key} of {first}: give it a name of its own"
                );
            }
            seen.insert(key, (name.clone(), obj));
        }
    }
    assert!(seen.len() >= 10, "examples hold {} objects", seen.len());
}

#[test]
fn the_api_server_fills_in_defaults() {
    ensure_crd();
    let ns = TestNamespace::new("defaults");
    ns.kubectl(
        &["create", "-f", "-"],
        Some(&valid("orders-db").to_string()),
    )
    .success();
    let stored: Value = serde_json::from_str(
        &ns.kubectl(&["get", "fedcred", "orders-db", "-o", "json"], None)
            .success(),
    )
    .unwrap();
    let spec = &stored["spec"];
    assert_eq!(
        spec["google"]["scopes"],
        json!(["https://www.googleapis.com/auth/cloud-platform"])
    );
    assert_eq!(spec["google"]["tokenLifetimeSeconds"], 3600);
    let instance = &spec["alloydb"]["instances"][0];
    assert_eq!(instance["connectivity"], "PSC");
    assert_eq!(instance["autoIamAuthn"], true);
    assert_eq!(instance["port"], 5432);
}

/// The table `fedcred_core::validate` is checked against (`core/tests/validation/cases.json`),
/// judged by the API server: the valid cases are stored, the invalid ones are refused naming
/// the same field with the same message, so the validator of `fedcred exchange -f` and
/// `fedcred agent -f` cannot drift from the CRD.
#[test]
fn the_api_server_judges_the_validation_table_as_fedcreds_validator_does() {
    ensure_crd();
    let ns = TestNamespace::new("validation");
    let cases = validation_cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let mut doc = case.resource.clone();
        doc["metadata"]["name"] = json!(format!("case-{i}"));
        let out = ns.kubectl(&["create", "-f", "-"], Some(&doc.to_string()));
        match (&case.refused, out.ok) {
            (None, true) => {}
            (None, false) => {
                failures.push(format!("{}: refused: {}", case.name, out.stderr.trim()))
            }
            (Some((field, _)), true) => {
                failures.push(format!("{}: accepted, expected {field}", case.name))
            }
            (Some((field, says)), false) => {
                // kubectl reports fields with a leading dot for unknown ones.
                let named = out.stderr.contains(&format!("{field}: "))
                    || out.stderr.contains(&format!("\"{field}\""))
                    || out.stderr.contains(&format!(".{field}"));
                if !named || !out.stderr.contains(says.as_str()) {
                    failures.push(format!(
                        "{}: expected {field}: …{says}…\n    got {}",
                        case.name,
                        out.stderr.trim()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases judged otherwise:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
    // Only the valid cases were stored.
    let stored = ns
        .kubectl(&["get", "fedcred", "-o", "name"], None)
        .success();
    let valid = cases.iter().filter(|c| c.refused.is_none()).count();
    assert_eq!(stored.lines().count(), valid, "stored: {stored}");
}

#[test]
fn kubectl_explain_shows_the_doc_comments() {
    ensure_crd();
    // Discovery is cached by kubectl; explain reads the published OpenAPI, which may lag the
    // CRD by a moment.
    let mut last = String::new();
    support::wait_until(std::time::Duration::from_secs(30), || {
        let out = kubectl(&["explain", "federatedcredential.spec"], None);
        last = format!("{}{}", out.stdout, out.stderr);
        out.ok
            && out
                .stdout
                .contains("The AWS identity whose signed GetCallerIdentity request")
    });
    assert!(
        last.contains("The Google side: the Workload Identity Federation provider"),
        "{last}"
    );
    let audience = kubectl(
        &["explain", "federatedcredential.spec.google.audience"],
        None,
    )
    .success();
    assert!(
        audience.contains("workloadIdentityPools/POOL/providers/PROVIDER"),
        "{audience}"
    );
    let lifetime = kubectl(
        &["explain", "fedcred.spec.google.tokenLifetimeSeconds"],
        None,
    )
    .success();
    assert!(
        lifetime.contains("600 (10 min) to 43200 (12 h)"),
        "{lifetime}"
    );
    let sockets = kubectl(&["explain", "fedcred.spec.alloydb.proxy.unixSocket"], None).success();
    assert!(
        sockets.contains("/var/run/fedcred-alloydb/PROJECT.REGION.CLUSTER.INSTANCE/.s.PGSQL.5432"),
        "{sockets}"
    );
}

#[test]
fn kubectl_get_shows_the_printer_columns() {
    ensure_crd();
    let ns = TestNamespace::new("columns");
    ns.kubectl(
        &["create", "-f", "-"],
        Some(&valid("orders-db").to_string()),
    )
    .success();
    // Status is written through the status subresource only; this stands in for the controller.
    let status = json!({"status": {
        "identity": "ServiceAccount/orders-api as role/shop-orders-api",
        "expiresAt": "2030-01-02T03:04:05Z",
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "TokenIssued", "message": "token issued",
            "lastTransitionTime": "2030-01-02T02:04:05Z", "observedGeneration": 1
        }]
    }});
    ns.set_status("orders-db", &status);
    let table = ns.kubectl(&["get", "fedcred", "orders-db"], None).success();
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .split("  ")
        .filter(|s| !s.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "IDENTITY", "GOOGLE SA", "EXPIRES", "AGE"]
    );
    let row = lines.next().unwrap();
    for value in [
        "orders-db",
        "True",
        "ServiceAccount/orders-api as role/shop-orders-api",
        "orders-api@acme-shop.iam.gserviceaccount.com",
        "2030-01-02T03:04:05Z",
    ] {
        assert!(row.contains(value), "{value:?} missing from {row:?}");
    }
    // The short name works too.
    assert!(
        ns.kubectl(&["get", "fedcred"], None)
            .success()
            .contains("orders-db")
    );
}

#[test]
fn status_is_a_subresource_that_spec_writes_cannot_touch() {
    ensure_crd();
    let ns = TestNamespace::new("status");
    let mut doc = valid("orders-db");
    doc["status"] = json!({"identity": "smuggled"});
    ns.kubectl(&["create", "-f", "-"], Some(&doc.to_string()))
        .success();
    let stored: Value = serde_json::from_str(
        &ns.kubectl(&["get", "fedcred", "orders-db", "-o", "json"], None)
            .success(),
    )
    .unwrap();
    assert!(
        stored.get("status").is_none(),
        "status written through the main resource: {}",
        stored["status"]
    );
    assert_eq!(stored["metadata"]["generation"], 1);
}

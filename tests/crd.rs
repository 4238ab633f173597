//! The FederatedCredential CRD on a real kube-apiserver: it installs, accepts the examples,
//! rejects invalid resources with messages that say what to fix, and explains itself.

mod support;

use serde::Deserialize;
use serde_json::{Value, json};
use support::cloud::AUDIENCE;
use support::{INSTANCE, TestNamespace, ensure_crd, kubectl, repo_root};

/// A valid resource; each invalid case below changes one thing about it.
fn valid(name: &str) -> Value {
    support::valid_credential(name)
}

fn set(doc: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent} in the base resource"));
    parent
        .as_object_mut()
        .unwrap()
        .insert(key.to_owned(), value);
}

fn remove(doc: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    doc.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key);
}

struct Invalid {
    what: &'static str,
    change: fn(&mut Value),
    message: &'static str,
}

fn invalid_cases() -> Vec<Invalid> {
    vec![
        Invalid {
            what: "both AWS identity sources",
            change: |d| set(d, "/spec/aws/controllerIdentity", json!({})),
            message: "set exactly one AWS identity source: aws.serviceAccount (IRSA",
        },
        Invalid {
            what: "no AWS identity source",
            change: |d| remove(d, "/spec/aws/serviceAccount"),
            message: "set exactly one AWS identity source",
        },
        Invalid {
            what: "audience with the project ID instead of its number",
            change: |d| {
                set(
                    d,
                    "/spec/google/audience",
                    json!(
                        "//iam.googleapis.com/projects/acme-shop/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop"
                    ),
                )
            },
            message: "google.audience must look like //iam.googleapis.com/projects/PROJECT_NUMBER/",
        },
        Invalid {
            what: "audience given as an https URL",
            change: |d| {
                set(
                    d,
                    "/spec/google/audience",
                    json!(
                        "https://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop"
                    ),
                )
            },
            message: "google.audience must look like",
        },
        Invalid {
            what: "missing audience",
            change: |d| remove(d, "/spec/google/audience"),
            message: "spec.google.audience: Required value",
        },
        Invalid {
            what: "service account that is not an email",
            change: |d| set(d, "/spec/google/serviceAccount", json!("orders-api")),
            message: "google.serviceAccount must be a Google service-account email",
        },
        Invalid {
            what: "service account of a user, not a service account",
            change: |d| set(d, "/spec/google/serviceAccount", json!("alice@example.com")),
            message: "google.serviceAccount must be a Google service-account email",
        },
        Invalid {
            what: "token lifetime below ten minutes",
            change: |d| set(d, "/spec/google/tokenLifetimeSeconds", json!(300)),
            message: "spec.google.tokenLifetimeSeconds: Invalid value: 300: spec.google.tokenLifetimeSeconds in body should be greater than or equal to 600",
        },
        Invalid {
            what: "token lifetime above twelve hours",
            change: |d| set(d, "/spec/google/tokenLifetimeSeconds", json!(86400)),
            message: "should be less than or equal to 43200",
        },
        Invalid {
            what: "two-hour token without impersonation",
            change: |d| {
                remove(d, "/spec/google/serviceAccount");
                remove(d, "/spec/alloydb");
                set(d, "/spec/google/tokenLifetimeSeconds", json!(7200));
            },
            message: "google.tokenLifetimeSeconds above 3600 needs google.serviceAccount",
        },
        Invalid {
            what: "delegates without impersonation",
            change: |d| {
                remove(d, "/spec/google/serviceAccount");
                remove(d, "/spec/alloydb");
                set(
                    d,
                    "/spec/google/delegates",
                    json!(["hop@acme-shop.iam.gserviceaccount.com"]),
                );
            },
            message: "google.delegates only apply when google.serviceAccount is set",
        },
        Invalid {
            what: "a delegate that is not an email",
            change: |d| {
                set(
                    d,
                    "/spec/google/delegates",
                    json!(["projects/-/serviceAccounts/hop"]),
                )
            },
            message: "every entry of google.delegates must be a service-account email",
        },
        Invalid {
            what: "a scope that is not a Google scope URL",
            change: |d| set(d, "/spec/google/scopes", json!(["cloud-platform"])),
            message: "every entry of google.scopes must be a Google OAuth scope URL",
        },
        Invalid {
            what: "Google STS endpoint over plain http to a remote host",
            change: |d| {
                set(
                    d,
                    "/spec/google/endpoints",
                    json!({"sts": "http://sts.example.com/v1/token"}),
                )
            },
            message: "google.endpoints.sts must be an https:// URL",
        },
        Invalid {
            what: "IAM Credentials endpoint that is not a URL",
            change: |d| {
                set(
                    d,
                    "/spec/google/endpoints",
                    json!({"iamCredentials": "iamcredentials"}),
                )
            },
            message: "google.endpoints.iamCredentials must be an https:// URL",
        },
        Invalid {
            what: "IAM user ARN instead of a role ARN",
            change: |d| {
                set(
                    d,
                    "/spec/aws/serviceAccount/roleArn",
                    json!("arn:aws:iam::123456789012:user/alice"),
                )
            },
            message: "aws.serviceAccount.roleArn must be an IAM role ARN",
        },
        Invalid {
            what: "role ARN with a short account number",
            change: |d| {
                remove(d, "/spec/aws/serviceAccount");
                set(
                    d,
                    "/spec/aws/controllerIdentity",
                    json!({"roleArn": "arn:aws:iam::1234:role/x"}),
                );
            },
            message: "aws.controllerIdentity.roleArn must be an IAM role ARN",
        },
        Invalid {
            what: "ServiceAccount name with capitals",
            change: |d| set(d, "/spec/aws/serviceAccount/name", json!("Orders_API")),
            message: "aws.serviceAccount.name must be the name of a ServiceAccount in this namespace",
        },
        Invalid {
            what: "region that is not a region code",
            change: |d| set(d, "/spec/aws/region", json!("Tokyo")),
            message: "aws.region must be an AWS region code",
        },
        Invalid {
            what: "AWS STS endpoint over plain http to a remote host",
            change: |d| {
                set(
                    d,
                    "/spec/aws/stsEndpoint",
                    json!("http://sts.us-east-1.amazonaws.com"),
                )
            },
            message: "aws.stsEndpoint must be an https:// URL",
        },
        Invalid {
            what: "Secret name that Kubernetes would refuse",
            change: |d| set(d, "/spec/secret", json!({"name": "Orders_Token"})),
            message: "secret.name must be a valid Secret name",
        },
        Invalid {
            what: "refresh share outside 10-90 %",
            change: |d| set(d, "/spec/secret", json!({"renewBeforePercentage": 95})),
            message: "spec.secret.renewBeforePercentage in body should be less than or equal to 90",
        },
        Invalid {
            what: "instance URI without its cluster",
            change: |d| {
                set(
                    d,
                    "/spec/alloydb/instances/0/uri",
                    json!("projects/acme-shop/locations/asia-northeast1/instances/orders-primary"),
                )
            },
            message: "alloydb.instances[].uri must look like projects/PROJECT_ID/locations/REGION/clusters/CLUSTER/instances/INSTANCE",
        },
        Invalid {
            what: "unknown connectivity",
            change: |d| set(d, "/spec/alloydb/instances/0/connectivity", json!("VPN")),
            message: "Unsupported value: \"VPN\": supported values: \"PSC\", \"PublicIP\", \"PrivateIP\"",
        },
        Invalid {
            what: "privileged local port",
            change: |d| set(d, "/spec/alloydb/instances/0/port", json!(80)),
            message: "spec.alloydb.instances[0].port in body should be greater than or equal to 1024",
        },
        Invalid {
            what: "two instances on the default port",
            change: |d| {
                set(
                    d,
                    "/spec/alloydb/instances",
                    json!([
                        {"uri": INSTANCE},
                        {"uri": "projects/acme-shop/locations/asia-northeast1/clusters/orders/instances/orders-replica"}
                    ]),
                )
            },
            message: "each AlloyDB instance needs its own local port",
        },
        Invalid {
            what: "AlloyDB section without instances",
            change: |d| set(d, "/spec/alloydb/instances", json!([])),
            message: "spec.alloydb.instances in body should have at least 1 items",
        },
        Invalid {
            what: "automatic IAM login without a service account",
            change: |d| remove(d, "/spec/google/serviceAccount"),
            message: "AlloyDB automatic IAM login needs google.serviceAccount",
        },
        Invalid {
            what: "misspelled field",
            change: |d| set(d, "/spec/google/audiance", json!(AUDIENCE)),
            message: "unknown field \"spec.google.audiance\"",
        },
    ]
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
    for example in ["irsa-alloydb.yaml", "controller-identity-bigquery.yaml"] {
        let ns = TestNamespace::new("example");
        let text = std::fs::read_to_string(repo_root().join("examples").join(example)).unwrap();
        // Each example brings its own namespace; create its objects in the test's instead.
        let mut created = 0;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut obj = Value::deserialize(doc).unwrap();
            if obj["kind"] == "Namespace" {
                continue;
            }
            remove(&mut obj, "/metadata/namespace");
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

#[test]
fn invalid_resources_are_rejected_with_a_message_that_says_what_to_fix() {
    ensure_crd();
    let ns = TestNamespace::new("invalid");
    // The base must be accepted, or every rejection below would prove nothing.
    ns.kubectl(
        &["create", "--dry-run=server", "-f", "-"],
        Some(&valid("base").to_string()),
    )
    .success();

    let cases = invalid_cases();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let mut doc = valid(&format!("invalid-{i}"));
        (case.change)(&mut doc);
        let out = ns.kubectl(&["create", "-f", "-"], Some(&doc.to_string()));
        if out.ok {
            failures.push(format!("{}: accepted", case.what));
        } else if !out.stderr.contains(case.message) {
            failures.push(format!(
                "{}: expected {:?}\n    got {}",
                case.what,
                case.message,
                out.stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
    // Nothing invalid was stored.
    let left = ns
        .kubectl(&["get", "fedcred", "-o", "name"], None)
        .success();
    assert_eq!(left.trim(), "", "invalid resources were stored: {left}");
}

#[test]
fn federated_token_without_impersonation_is_accepted() {
    ensure_crd();
    let ns = TestNamespace::new("federated");
    let mut doc = valid("bigquery");
    remove(&mut doc, "/spec/google/serviceAccount");
    remove(&mut doc, "/spec/alloydb");
    ns.kubectl(&["create", "-f", "-"], Some(&doc.to_string()))
        .success();
}

#[test]
fn loopback_endpoints_are_allowed_for_local_testing() {
    ensure_crd();
    let ns = TestNamespace::new("loopback");
    let mut doc = valid("local");
    set(
        &mut doc,
        "/spec/aws/stsEndpoint",
        json!("http://127.0.0.1:5000"),
    );
    set(
        &mut doc,
        "/spec/google/endpoints",
        json!({"sts": "http://localhost:8080/v1/token", "iamCredentials": "https://iamcredentials.example.com"}),
    );
    ns.kubectl(&["create", "-f", "-"], Some(&doc.to_string()))
        .success();
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
    ns.kubectl(
        &[
            "patch",
            "fedcred",
            "orders-db",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    )
    .success();
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
    set(&mut doc, "/status", json!({"identity": "smuggled"}));
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

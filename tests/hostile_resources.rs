//! Invalid FederatedCredentials beyond the ones tests/crd.rs covers: those the API server
//! rejects from the CRD's schema and rules, each with the message the user sees, and those
//! only the controller can judge (what the resource points at), each reported in the `Ready`
//! condition with a stable reason and a message that says what to fix.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cloud::{Cloud, ROLE};
use support::controller::ControllerProcess;
use support::{INSTANCE, TestNamespace, ensure_crd};

fn set(doc: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    doc.pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent} in the base resource"))
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
        .remove(key)
        .unwrap_or_else(|| panic!("no {pointer} in the base resource"));
}

const ARN_MESSAGE: &str = "aws.serviceAccount.roleArn must be an IAM role ARN such as arn:aws:iam::123456789012:role/my-role";
const AUDIENCE_MESSAGE: &str =
    "google.audience must look like //iam.googleapis.com/projects/PROJECT_NUMBER/";
const SA_MESSAGE: &str = "google.serviceAccount must be a Google service-account email";
const URI_MESSAGE: &str = "alloydb.instances[].uri must look like projects/PROJECT_ID/locations/REGION/clusters/CLUSTER/instances/INSTANCE";
const REGION_MESSAGE: &str = "aws.region must be an AWS region code such as us-east-1";
const STS_MESSAGE: &str = "aws.stsEndpoint must be an https:// URL";
const NAME_MESSAGE: &str =
    "aws.serviceAccount.name must be the name of a ServiceAccount in this namespace";

/// Each case: what it is, the change to a valid resource, and the text the API server's answer
/// must contain.
type Change = Box<dyn Fn(&mut Value)>;

fn rejected_cases() -> Vec<(&'static str, Change, &'static str)> {
    let audience = |v: &'static str| -> Change {
        Box::new(move |d| set(d, "/spec/google/audience", json!(v)))
    };
    let arn = |v: &'static str| -> Change {
        Box::new(move |d| set(d, "/spec/aws/serviceAccount/roleArn", json!(v)))
    };
    let uri = |v: &'static str| -> Change {
        Box::new(move |d| set(d, "/spec/alloydb/instances/0/uri", json!(v)))
    };
    let region = |v: Value| -> Change { Box::new(move |d| set(d, "/spec/aws/region", v.clone())) };
    vec![
        (
            "region in capitals",
            region(json!("US-EAST-1")),
            REGION_MESSAGE,
        ),
        (
            "region with a trailing space",
            region(json!("us-east-1 ")),
            REGION_MESSAGE,
        ),
        (
            "region without its number",
            region(json!("us-east")),
            REGION_MESSAGE,
        ),
        (
            "region longer than 32 characters",
            region(json!("us-east-1".repeat(5))),
            "spec.aws.region: Too long: may not be more than 32",
        ),
        (
            "region as a number",
            region(json!(1)),
            "spec.aws.region: Invalid value: \"integer\": spec.aws.region in body must be of type string",
        ),
        (
            "role ARN of an unknown partition",
            arn("arn:aws-moon:iam::123456789012:role/orders"),
            ARN_MESSAGE,
        ),
        (
            "role ARN with a 13-digit account",
            arn("arn:aws:iam::1234567890123:role/orders"),
            ARN_MESSAGE,
        ),
        (
            "role ARN without a role name",
            arn("arn:aws:iam::123456789012:role/"),
            ARN_MESSAGE,
        ),
        (
            "role ARN with a newline after it",
            arn("arn:aws:iam::123456789012:role/orders\n"),
            ARN_MESSAGE,
        ),
        (
            "role ARN with a wildcard",
            arn("arn:aws:iam::123456789012:role/*"),
            ARN_MESSAGE,
        ),
        (
            "an assumed-role ARN",
            arn("arn:aws:sts::123456789012:assumed-role/orders/session"),
            ARN_MESSAGE,
        ),
        (
            "controller identity with a malformed role",
            Box::new(|d| {
                remove(d, "/spec/aws/serviceAccount");
                set(
                    d,
                    "/spec/aws/controllerIdentity",
                    json!({"roleArn": "role/orders"}),
                );
            }),
            "aws.controllerIdentity.roleArn must be an IAM role ARN",
        ),
        (
            "ServiceAccount name that is empty",
            Box::new(|d| set(d, "/spec/aws/serviceAccount/name", json!(""))),
            "spec.aws.serviceAccount.name: Invalid value: \"\": spec.aws.serviceAccount.name in body should be at least 1 chars long",
        ),
        (
            "ServiceAccount name reaching into another namespace",
            Box::new(|d| {
                set(
                    d,
                    "/spec/aws/serviceAccount/name",
                    json!("../kube-system/admin"),
                )
            }),
            NAME_MESSAGE,
        ),
        (
            "ServiceAccount name of 254 characters",
            Box::new(|d| set(d, "/spec/aws/serviceAccount/name", json!("a".repeat(254)))),
            "spec.aws.serviceAccount.name: Too long: may not be more than 253",
        ),
        (
            "ServiceAccount without a name",
            Box::new(|d| set(d, "/spec/aws/serviceAccount", json!({}))),
            "spec.aws.serviceAccount.name: Required value",
        ),
        (
            "STS endpoint over ftp",
            Box::new(|d| {
                set(
                    d,
                    "/spec/aws/stsEndpoint",
                    json!("ftp://sts.us-east-1.amazonaws.com"),
                )
            }),
            STS_MESSAGE,
        ),
        (
            "STS endpoint on the instance metadata address over http",
            Box::new(|d| {
                set(
                    d,
                    "/spec/aws/stsEndpoint",
                    json!("http://169.254.169.254/latest"),
                )
            }),
            STS_MESSAGE,
        ),
        (
            "STS endpoint that is not a URL",
            Box::new(|d| set(d, "/spec/aws/stsEndpoint", json!("sts us-east-1"))),
            STS_MESSAGE,
        ),
        (
            "audience with a trailing slash",
            audience(
                "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop/",
            ),
            AUDIENCE_MESSAGE,
        ),
        (
            "audience with a 3-character pool id",
            audience(
                "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks/providers/aws-shop",
            ),
            AUDIENCE_MESSAGE,
        ),
        (
            "audience with a capitalised provider",
            audience(
                "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/AWS-shop",
            ),
            AUDIENCE_MESSAGE,
        ),
        (
            "audience in a regional location",
            audience(
                "//iam.googleapis.com/projects/123456789012/locations/us-east1/workloadIdentityPools/eks-pool/providers/aws-shop",
            ),
            AUDIENCE_MESSAGE,
        ),
        ("empty audience", audience(""), AUDIENCE_MESSAGE),
        (
            "no audience",
            Box::new(|d| remove(d, "/spec/google/audience")),
            "spec.google.audience: Required value",
        ),
        (
            "service account in capitals",
            Box::new(|d| {
                set(
                    d,
                    "/spec/google/serviceAccount",
                    json!("Orders-API@acme-shop.iam.gserviceaccount.com"),
                )
            }),
            SA_MESSAGE,
        ),
        (
            "service account on a look-alike domain",
            Box::new(|d| {
                set(
                    d,
                    "/spec/google/serviceAccount",
                    json!("orders-api@acme-shop.iam.gserviceaccount.com.evil.example"),
                )
            }),
            SA_MESSAGE,
        ),
        (
            "eleven delegates",
            Box::new(|d| {
                set(
                    d,
                    "/spec/google/delegates",
                    json!(vec!["hop@acme-shop.iam.gserviceaccount.com"; 11]),
                )
            }),
            "spec.google.delegates: Too many: 11: must have at most 10 items",
        ),
        (
            "no scopes",
            Box::new(|d| set(d, "/spec/google/scopes", json!([]))),
            "spec.google.scopes in body should have at least 1 items",
        ),
        (
            "a scope over plain http",
            Box::new(|d| {
                set(
                    d,
                    "/spec/google/scopes",
                    json!(["http://www.googleapis.com/auth/cloud-platform"]),
                )
            }),
            "every entry of google.scopes must be a Google OAuth scope URL",
        ),
        (
            "twenty-one scopes",
            Box::new(|d| {
                set(
                    d,
                    "/spec/google/scopes",
                    json!(vec!["https://www.googleapis.com/auth/cloud-platform"; 21]),
                )
            }),
            "spec.google.scopes: Too many: 21: must have at most 20 items",
        ),
        (
            "token lifetime one second too long",
            Box::new(|d| set(d, "/spec/google/tokenLifetimeSeconds", json!(43201))),
            "spec.google.tokenLifetimeSeconds in body should be less than or equal to 43200",
        ),
        (
            "token lifetime as a string",
            Box::new(|d| set(d, "/spec/google/tokenLifetimeSeconds", json!("3600"))),
            "spec.google.tokenLifetimeSeconds in body must be of type integer",
        ),
        (
            "renewal at 5 percent",
            Box::new(|d| set(d, "/spec/secret", json!({"renewBeforePercentage": 5}))),
            "spec.secret.renewBeforePercentage in body should be greater than or equal to 10",
        ),
        (
            "Secret name of 254 characters",
            Box::new(|d| set(d, "/spec/secret", json!({"name": "s".repeat(254)}))),
            "spec.secret.name: Too long: may not be more than 253",
        ),
        (
            "instance URI with proxy query options",
            uri(
                "projects/acme-shop/locations/asia-northeast1/clusters/orders/instances/orders-primary?psc=true",
            ),
            URI_MESSAGE,
        ),
        (
            "instance URI that is a proxy flag",
            uri("--token=ya29.smuggled"),
            URI_MESSAGE,
        ),
        (
            "instance URI with a capitalised project",
            uri(
                "projects/Acme-Shop/locations/asia-northeast1/clusters/orders/instances/orders-primary",
            ),
            URI_MESSAGE,
        ),
        (
            "instance URI with a leading slash",
            uri(
                "/projects/acme-shop/locations/asia-northeast1/clusters/orders/instances/orders-primary",
            ),
            URI_MESSAGE,
        ),
        (
            "nine AlloyDB instances",
            Box::new(|d| {
                let instances: Vec<Value> = (0..9)
                    .map(|i| json!({"uri": INSTANCE, "port": 5432 + i}))
                    .collect();
                set(d, "/spec/alloydb/instances", json!(instances));
            }),
            "spec.alloydb.instances: Too many: 9: must have at most 8 items",
        ),
        (
            "AlloyDB port above 65535",
            Box::new(|d| set(d, "/spec/alloydb/instances/0/port", json!(65536))),
            "spec.alloydb.instances[0].port in body should be less than or equal to 65535",
        ),
        (
            "autoIamAuthn as a string",
            Box::new(|d| set(d, "/spec/alloydb/instances/0/autoIamAuthn", json!("yes"))),
            "spec.alloydb.instances[0].autoIamAuthn in body must be of type boolean",
        ),
        (
            "an empty proxy image",
            Box::new(|d| set(d, "/spec/alloydb/proxy", json!({"image": ""}))),
            "spec.alloydb.proxy.image in body should be at least 1 chars long",
        ),
        (
            "the aws section as a string",
            Box::new(|d| set(d, "/spec/aws", json!("irsa"))),
            "spec.aws in body must be of type object",
        ),
        (
            "roleArn one level too high",
            Box::new(|d| set(d, "/spec/aws/roleArn", json!(ROLE))),
            "unknown field \"spec.aws.roleArn\"",
        ),
        (
            "no spec",
            Box::new(|d| remove(d, "/spec")),
            "spec: Required value",
        ),
    ]
}

#[test]
fn the_api_server_rejects_each_invalid_resource_with_its_message() {
    ensure_crd();
    let ns = TestNamespace::new("hostile-crd");
    let cases = rejected_cases();
    let mut failures = Vec::new();
    for (i, (what, change, message)) in cases.iter().enumerate() {
        let mut doc = support::valid_credential(&format!("invalid-{i}"));
        change(&mut doc);
        let out = ns.kubectl(&["create", "-f", "-"], Some(&doc.to_string()));
        if out.ok {
            failures.push(format!("{what}: accepted"));
        } else if !out.stderr.contains(message) {
            failures.push(format!(
                "{what}: expected {message:?}\n    got {}",
                out.stderr.trim()
            ));
        }
    }
    // The valid resource itself is accepted, so each rejection is the change's doing.
    ns.kubectl(
        &["create", "-f", "-"],
        Some(&support::valid_credential("valid").to_string()),
    )
    .success();
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!(
        "hostile resources: {} rejected by the API server with their messages",
        cases.len()
    );
    assert!(cases.len() >= 30);
}

/// The `Ready` condition of `name`, once the controller has written one that is False.
async fn not_ready(ns: &TestNamespace, name: &str) -> Value {
    let start = Instant::now();
    loop {
        let out = ns.kubectl(&["get", "fedcred", name, "-o", "json"], None);
        if out.ok {
            let v: Value = serde_json::from_str(&out.stdout).unwrap();
            let ready = v["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .cloned();
            if let Some(ready) = ready.filter(|r| r["status"] == "False") {
                return ready;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{name} got no Ready=False condition"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn apply(ns: &TestNamespace, doc: &Value) {
    ns.kubectl(&["apply", "-f", "-"], Some(&doc.to_string()))
        .success();
}

fn credential(cloud: &Cloud, name: &str, aws: Value) -> Value {
    let spec = serde_json::to_value(cloud.spec(aws, json!({}))).unwrap();
    json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": name}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_reports_what_only_it_can_judge_in_the_ready_condition() {
    let ns = TestNamespace::new("hostile-ctl");
    let cloud = Cloud::start(|c| c).await;
    let service_account = |name: &str, role: Option<&str>| {
        let mut sa =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        if let Some(role) = role {
            sa["metadata"]["annotations"] = json!({"eks.amazonaws.com/role-arn": role});
        }
        apply(&ns, &sa);
    };
    service_account(
        "malformed-role",
        Some("arn:aws:iam::123456789012:user/alice"),
    );
    service_account(
        "role-in-quotes",
        Some("\"arn:aws:iam::123456789012:role/shop-orders\""),
    );
    service_account("no-role", None);
    service_account("orders-api", Some(ROLE));
    // A Secret of someone else's, named like the resource that would write it.
    apply(
        &ns,
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "taken"},
            "stringData": {"password": "not fedcred's"}}),
    );
    let _controller = ControllerProcess::start(&ns.name, &cloud, "hostile", &[]);

    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "missing-sa",
            credential(
                &cloud,
                "missing-sa",
                json!({"serviceAccount": {"name": "nobody"}}),
            ),
            "ServiceAccountNotFound",
            "does not exist; create it or fix aws.serviceAccount.name",
        ),
        (
            "malformed-role",
            credential(
                &cloud,
                "malformed-role",
                json!({"serviceAccount": {"name": "malformed-role"}}),
            ),
            "InvalidSpec",
            "annotation of ServiceAccount",
        ),
        (
            "role-in-quotes",
            credential(
                &cloud,
                "role-in-quotes",
                json!({"serviceAccount": {"name": "role-in-quotes"}}),
            ),
            "InvalidSpec",
            "not an IAM role ARN",
        ),
        (
            "no-role",
            credential(
                &cloud,
                "no-role",
                json!({"serviceAccount": {"name": "no-role"}}),
            ),
            "RoleArnMissing",
            "has no eks.amazonaws.com/role-arn annotation",
        ),
        (
            "taken",
            credential(
                &cloud,
                "taken",
                json!({"serviceAccount": {"name": "orders-api"}}),
            ),
            "SecretConflict",
            "Secret taken exists and is not owned by this FederatedCredential",
        ),
        (
            "lent-identity",
            credential(&cloud, "lent-identity", json!({"controllerIdentity": {}})),
            "ControllerIdentityNotAllowed",
            "may not use the controller's own AWS identity",
        ),
    ];
    for (name, doc, _, _) in &cases {
        apply(&ns, doc);
        let _ = name;
    }
    let mut failures = Vec::new();
    for (name, _, reason, message) in &cases {
        let ready = not_ready(&ns, name).await;
        if ready["reason"] != *reason {
            failures.push(format!(
                "{name}: reason {} , wanted {reason}: {ready}",
                ready["reason"]
            ));
        }
        if !ready["message"]
            .as_str()
            .unwrap_or_default()
            .contains(message)
        {
            failures.push(format!("{name}: message without {message:?}: {ready}"));
        }
    }
    // The foreign Secret is left as it was.
    let secret = ns
        .kubectl(&["get", "secret", "taken", "-o", "json"], None)
        .success();
    let secret: Value = serde_json::from_str(&secret).unwrap();
    assert!(
        secret["data"].get("access_token").is_none(),
        "the foreign Secret was overwritten"
    );
    assert!(secret["metadata"].get("ownerReferences").is_none());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "hostile resources: {} judged by the controller, each in its Ready condition",
        cases.len()
    );
}

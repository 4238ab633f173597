//! `fedcred doctor` against the real API server: each broken link of a resource's chain is
//! named with its fix and a non-zero exit status, the reason Google gave (through a real
//! controller and the doubles) is explained, the provider's condition is evaluated for the
//! principal, and a healthy resource whose pod the real webhook injected passes.

mod support;

use std::process::Command;
use std::time::Duration;

use fedcred_doubles::{Condition, Provider};
use serde_json::{Value, json};
use support::cloud::{AUDIENCE, Cloud, ROLE};
use support::controller::ControllerProcess;
use support::webhook::{Registration, Server};
use support::{TestNamespace, eventually, kubeconfig};

/// `fedcred doctor ARGS`: (exit code, stdout, stderr). Every run is printed, so that a test
/// run shows what a user sees.
fn doctor(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fedcred"))
        .arg("doctor")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .expect("the fedcred binary runs");
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    eprintln!("$ fedcred doctor {}\n{stdout}{stderr}", args.join(" "));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// The line of `step` in a text report.
fn line<'a>(report: &'a str, step: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(step))
        .unwrap_or_else(|| panic!("no {step} line in\n{report}"))
}

/// The fix printed under `step`.
fn fix<'a>(report: &'a str, step: &str) -> &'a str {
    let mut lines = report
        .lines()
        .skip_while(|l| l.split_whitespace().nth(1) != Some(step));
    lines.next();
    lines
        .next()
        .and_then(|l| l.trim_start().strip_prefix("fix: "))
        .unwrap_or_else(|| panic!("no fix under {step} in\n{report}"))
}

fn credential(ns: &TestNamespace, cloud: Option<&Cloud>) {
    let spec = match cloud {
        Some(cloud) => serde_json::to_value(
            cloud.spec(json!({"serviceAccount": {"name": "orders-api"}}), json!({})),
        )
        .unwrap(),
        None => support::valid_credential("orders-db")["spec"].clone(),
    };
    let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "orders-db"}, "spec": spec});
    ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();
}

fn pod(name: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"fedcred.io/inject": "true"},
            "annotations": {"fedcred.io/credential": "orders-db"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/orders:1"}]}})
    .to_string()
}

#[test]
fn each_broken_link_is_named_with_its_fix() {
    support::ensure_crd();
    let ns = TestNamespace::new("doctor-links");
    let target = format!("{}/orders-db", ns.name);

    // No resource at all.
    let (code, out, err) = doctor(&[&target]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(line(&out, "resource").contains("FAIL"), "{out}");
    assert!(fix(&out, "resource").contains("fedcred setup"), "{out}");
    assert!(err.contains("1 of the resource's checks failed"), "{err}");

    // The resource names a ServiceAccount that does not exist.
    credential(&ns, None);
    let (code, out, _) = doctor(&[&target]);
    assert_eq!(code, 1);
    assert!(line(&out, "resource").starts_with("  ok"), "{out}");
    assert!(
        line(&out, "aws-identity").contains(&format!(
            "ServiceAccount {}/orders-api does not exist",
            ns.name
        )),
        "{out}"
    );
    assert!(fix(&out, "aws-identity").starts_with(&format!(
        "kubectl -n {} create serviceaccount orders-api",
        ns.name
    )));

    // It exists, without its role.
    ns.kubectl(&["create", "serviceaccount", "orders-api"], None)
        .success();
    let (_, out, _) = doctor(&[&target]);
    assert!(
        line(&out, "aws-identity").contains("has no eks.amazonaws.com/role-arn annotation"),
        "{out}"
    );
    assert_eq!(
        fix(&out, "aws-identity"),
        format!(
            "kubectl -n {} annotate serviceaccount orders-api eks.amazonaws.com/role-arn=arn:aws:iam::ACCOUNT:role/ROLE",
            ns.name
        )
    );
    assert!(line(&out, "principal").contains("skip"), "{out}");

    // The fix it printed, run as printed (with a real role), clears that step.
    ns.kubectl(
        &[
            "annotate",
            "serviceaccount",
            "orders-api",
            &format!("eks.amazonaws.com/role-arn={ROLE}"),
        ],
        None,
    )
    .success();
    // A Secret of the resource's name that someone else made, and a pod created while no
    // webhook was there to inject it.
    ns.kubectl(
        &[
            "create",
            "secret",
            "generic",
            "orders-db",
            "--from-literal=note=mine",
        ],
        None,
    )
    .success();
    ns.kubectl(&["create", "-f", "-"], Some(&pod("orders-api-early")))
        .success();
    let (code, out, _) = doctor(&[&target]);
    assert_eq!(code, 1);
    assert!(line(&out, "aws-identity").starts_with("  ok"), "{out}");
    let principal = format!(
        "arn:aws:sts::123456789012:assumed-role/shop-orders/fedcred.{}.orders-api",
        ns.name
    );
    assert!(line(&out, "principal").contains(&principal), "{out}");
    assert!(line(&out, "exchange").contains("no status yet"), "{out}");
    assert!(
        line(&out, "secret").contains("is not owned by the resource"),
        "{out}"
    );
    assert!(
        line(&out, "pods").contains("not injected: orders-api-early"),
        "{out}"
    );
    assert!(fix(&out, "pods").contains("rollout restart"), "{out}");

    // The same as JSON, for scripts; the Secret's data never appears.
    let (code, json_out, _) = doctor(&[&target, "-o", "json"]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&json_out).unwrap();
    let outcomes: Vec<(&str, &str)> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("resource", "pass"),
            ("aws-identity", "pass"),
            ("principal", "pass"),
            ("condition", "skip"),
            ("exchange", "warn"),
            ("try", "skip"),
            ("secret", "fail"),
            ("pods", "fail"),
        ]
    );
    assert!(
        !json_out.contains("mine") && !json_out.contains("bWluZQ"),
        "{json_out}"
    );

    // A name that is no NAMESPACE/NAME is refused with the form to use.
    let (code, _, err) = doctor(&["orders-db"]);
    assert_eq!(code, 1);
    assert!(err.contains("name the resource as NAMESPACE/NAME"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reason_google_gave_is_explained_and_the_condition_evaluated() {
    support::ensure_crd();
    let ns = TestNamespace::new("doctor-google");
    let cloud = Cloud::start(|mut c| {
        c.providers.clear();
        c.provider(Provider::new(AUDIENCE).with_condition(Condition::Cel(
            "assertion.arn.endsWith('/fedcred.prod.orders-api')".into(),
        )))
    })
    .await;
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "orders-api", "annotations": {"eks.amazonaws.com/role-arn": ROLE}}});
    ns.kubectl(&["apply", "-f", "-"], Some(&sa.to_string()))
        .success();
    credential(&ns, Some(&cloud));
    let _controller = ControllerProcess::start(&ns.name, &cloud, "doctor", &[]);
    let target = format!("{}/orders-db", ns.name);

    let out = eventually("the refusal in the status", Duration::from_secs(60), || {
        let (_, out, _) = doctor(&[&target]);
        line(&out, "exchange").contains("FAIL").then_some(out)
    })
    .await;
    assert!(
        line(&out, "exchange").contains("AttributeConditionRejected"),
        "{out}"
    );
    let principal = format!(
        "arn:aws:sts::123456789012:assumed-role/shop-orders/fedcred.{}.orders-api",
        ns.name
    );
    assert!(fix(&out, "exchange").contains(&principal), "{out}");
    assert!(line(&out, "secret").contains("does not exist"), "{out}");

    // The provider's condition, evaluated here for the principal, says the same as Google.
    let refusing = "assertion.arn.endsWith('/fedcred.prod.orders-api')";
    let (code, out, _) = doctor(&[&target, "--condition", refusing]);
    assert_eq!(code, 1);
    assert!(
        line(&out, "condition").contains(&format!("refuses {principal}")),
        "{out}"
    );
    assert!(
        fix(&out, "condition").contains(&format!("assertion.arn in ['{principal}']")),
        "{out}"
    );
    let admitting = format!("assertion.arn in ['{principal}']");
    let (_, out, _) = doctor(&[&target, "--condition", &admitting]);
    assert!(line(&out, "condition").starts_with("  ok"), "{out}");
    let (_, out, _) = doctor(&[&target, "--condition", "assertion.arn in ["]);
    assert!(line(&out, "condition").contains("cannot evaluate"), "{out}");

    // An exchange tried now gets Google's answer of today.
    let (code, out, _) = doctor(&[&target, "--exchange"]);
    assert_eq!(code, 1);
    assert!(line(&out, "try").contains("FAIL"), "{out}");
    assert!(
        line(&out, "try").contains("AttributeConditionRejected"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_resource_with_an_injected_pod_passes() {
    support::ensure_crd();
    let ns = TestNamespace::new("doctor-healthy");
    let cloud = Cloud::start(|c| c).await;
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "orders-api", "annotations": {"eks.amazonaws.com/role-arn": ROLE}}});
    ns.kubectl(&["apply", "-f", "-"], Some(&sa.to_string()))
        .success();
    credential(&ns, Some(&cloud));
    let _controller = ControllerProcess::start(&ns.name, &cloud, "doctor", &[]);
    let server = Server::start("ghcr.io/example/fedcred:doctor-test");
    let _registration = Registration::create(&ns, server.port, Some(&server.certs.ca_pem));
    let target = format!("{}/orders-db", ns.name);
    eventually("Ready", Duration::from_secs(60), || {
        let (code, _, _) = doctor(&[&target]);
        (code == 0).then_some(())
    })
    .await;
    // A pod created now goes through the real webhook.
    ns.kubectl(&["create", "-f", "-"], Some(&pod("orders-api-1")))
        .success();
    let (code, out, _) = doctor(&[&target, "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    for step in report["steps"].as_array().unwrap() {
        let expected = if ["condition", "try"].contains(&step["step"].as_str().unwrap()) {
            "skip"
        } else {
            "pass"
        };
        assert_eq!(step["outcome"], expected, "{step}");
    }
    let (_, text, _) = doctor(&[&target, "--exchange"]);
    assert!(line(&text, "pods").contains("1 pod(s) injected"), "{text}");
    assert!(
        line(&text, "try").contains(
            "AWS and Google answered now: a token of orders-api@acme-shop.iam.gserviceaccount.com"
        ),
        "{text}"
    );
    assert!(
        line(&text, "secret").contains("holds a token valid for"),
        "{text}"
    );
    assert!(text.ends_with("no problem found\n"), "{text}");
}

/// Another provider of the pool, whose condition admits nobody fedcred presents.
const REFUSING: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/refusing";
/// A provider Google does not know.
const UNKNOWN: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/deleted";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_explains_each_status_reason_with_its_fix() {
    support::ensure_crd();
    let ns = TestNamespace::new("doctor-reasons");
    let cloud = Cloud::start(|c| {
        c.provider(Provider::new(REFUSING).with_condition(Condition::Cel("false".into())))
    })
    .await;
    for (name, role) in [("orders-api", Some(ROLE)), ("no-role", None)] {
        let mut sa =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        if let Some(role) = role {
            sa["metadata"]["annotations"] = json!({"eks.amazonaws.com/role-arn": role});
        }
        ns.kubectl(&["apply", "-f", "-"], Some(&sa.to_string()))
            .success();
    }
    // Someone else's Secret, named like a resource.
    ns.kubectl(
        &[
            "create",
            "secret",
            "generic",
            "taken",
            "--from-literal=note=theirs",
        ],
        None,
    )
    .success();
    let irsa = |sa: &str| json!({"serviceAccount": {"name": sa}});
    // (resource, spec.aws, spec.google changes, the reason doctor must report, step)
    let cases = [
        (
            "ghost-sa",
            irsa("ghost"),
            json!({}),
            "ServiceAccountNotFound",
            "exchange",
        ),
        (
            "no-role",
            irsa("no-role"),
            json!({}),
            "RoleArnMissing",
            "exchange",
        ),
        (
            "lent",
            json!({"controllerIdentity": {"roleArn": "arn:aws:iam::123456789012:role/access2bq"}}),
            json!({}),
            "ControllerIdentityNotAllowed",
            "exchange",
        ),
        (
            "refused",
            irsa("orders-api"),
            json!({"audience": REFUSING}),
            "AttributeConditionRejected",
            "exchange",
        ),
        (
            "deleted-provider",
            irsa("orders-api"),
            json!({"audience": UNKNOWN}),
            "ProviderNotFound",
            "exchange",
        ),
        (
            "unbound",
            irsa("orders-api"),
            json!({"serviceAccount": "reports@acme-shop.iam.gserviceaccount.com"}),
            "ImpersonationDenied",
            "exchange",
        ),
        (
            "long-lived",
            irsa("orders-api"),
            json!({"tokenLifetimeSeconds": 7200}),
            "InvalidTokenRequest",
            "exchange",
        ),
        (
            "elsewhere",
            irsa("orders-api"),
            json!({"endpoints": {"sts": "https://sts.example.com"}}),
            "EndpointNotAllowed",
            "exchange",
        ),
        (
            "taken",
            irsa("orders-api"),
            json!({}),
            "SecretConflict",
            "exchange",
        ),
    ];
    for (name, aws, google, _, _) in &cases {
        let spec = serde_json::to_value(cloud.spec(aws.clone(), google.clone())).unwrap();
        let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
            "metadata": {"name": name}, "spec": spec});
        ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
            .success();
    }
    let _controller = ControllerProcess::start(&ns.name, &cloud, "doctor", &[]);
    let evidence = support::controller::log_dir();
    for (name, _, _, reason, step) in cases {
        let target = format!("{}/{name}", ns.name);
        let out = eventually(&format!("{name} to fail"), Duration::from_secs(60), || {
            let (code, out, _) = doctor(&[&target]);
            (code == 1 && line(&out, "exchange").contains("FAIL")).then_some(out)
        })
        .await;
        assert!(
            line(&out, step).contains(&format!("FAIL {step}")) && line(&out, step).contains(reason),
            "{name}: expected {reason} in\n{out}"
        );
        let fixed = fix(&out, step);
        assert!(
            !fixed.is_empty() && !fixed.contains("see docs/troubleshooting.md"),
            "{name}: {fixed}"
        );
        // One screen: the whole report fits in 25 lines.
        assert!(out.lines().count() <= 25, "{out}");
        std::fs::write(evidence.join(format!("doctor-{reason}.txt")), &out).unwrap();
    }
}

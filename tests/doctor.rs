//! `fedcred doctor` against the real API server: each broken link of a resource's chain is
//! named with its fix and a non-zero exit status, the reason Google gave (through a real
//! controller and the doubles) is explained, the provider's condition is evaluated for the
//! principal, and a healthy resource whose pod the real webhook injected passes.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use fedcred_doubles::oidc::TestKey;
use fedcred_doubles::{Condition, Oidc, Provider};
use serde_json::{Value, json};
use support::cloud::{AUDIENCE, Cloud, ROLE, SA_EMAIL};
use support::controller::{ControllerProcess, Launch};
use support::gate::Gate;
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

/// Asserts that the line of `step` in `report` contains `text`.
fn says(report: &str, step: &str, text: &str) {
    assert!(line(report, step).contains(text), "{report}");
}

/// Asserts that the fix under `step` in `report` contains `text`.
fn fix_says(report: &str, step: &str, text: &str) {
    assert!(fix(report, step).contains(text), "{report}");
}

/// Applies the ServiceAccounts `(name, role)` in `ns`, each annotated with its role if any.
fn service_accounts(ns: &TestNamespace, accounts: &[(&str, Option<&str>)]) {
    for (name, role) in accounts {
        let mut sa =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        if let Some(role) = role {
            sa["metadata"]["annotations"] = json!({"eks.amazonaws.com/role-arn": role});
        }
        ns.kubectl(&["apply", "-f", "-"], Some(&sa.to_string()))
            .success();
    }
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
    says(&out, "resource", "FAIL");
    fix_says(&out, "resource", "fedcred setup");
    assert!(err.contains("1 of the resource's checks failed"), "{err}");

    // The resource names a ServiceAccount that does not exist.
    credential(&ns, None);
    let (code, out, _) = doctor(&[&target]);
    assert_eq!(code, 1);
    assert!(line(&out, "resource").starts_with("  ok"), "{out}");
    says(
        &out,
        "aws-identity",
        &format!("ServiceAccount {}/orders-api does not exist", ns.name),
    );
    assert!(fix(&out, "aws-identity").starts_with(&format!(
        "kubectl -n {} create serviceaccount orders-api",
        ns.name
    )));

    // It exists, without its role.
    ns.kubectl(&["create", "serviceaccount", "orders-api"], None)
        .success();
    let (_, out, _) = doctor(&[&target]);
    says(
        &out,
        "aws-identity",
        "has no eks.amazonaws.com/role-arn annotation",
    );
    assert_eq!(
        fix(&out, "aws-identity"),
        format!(
            "kubectl -n {} annotate serviceaccount orders-api eks.amazonaws.com/role-arn=arn:aws:iam::ACCOUNT:role/ROLE",
            ns.name
        )
    );
    says(&out, "principal", "skip");

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
    says(&out, "principal", &principal);
    says(&out, "exchange", "no status yet");
    says(&out, "secret", "is not owned by the resource");
    says(&out, "pods", "not injected: orders-api-early");
    fix_says(&out, "pods", "rollout restart");

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
    support::cloud::service_account(&ns, "orders-api");
    credential(&ns, Some(&cloud));
    let _controller = ControllerProcess::start(&ns.name, &cloud, "doctor", &[]);
    let target = format!("{}/orders-db", ns.name);

    let out = eventually("the refusal in the status", Duration::from_secs(60), || {
        let (_, out, _) = doctor(&[&target]);
        line(&out, "exchange").contains("FAIL").then_some(out)
    })
    .await;
    says(&out, "exchange", "AttributeConditionRejected");
    let principal = format!(
        "arn:aws:sts::123456789012:assumed-role/shop-orders/fedcred.{}.orders-api",
        ns.name
    );
    fix_says(&out, "exchange", &principal);
    says(&out, "secret", "does not exist");

    // The provider's condition, evaluated here for the principal, says the same as Google.
    let refusing = "assertion.arn.endsWith('/fedcred.prod.orders-api')";
    let (code, out, _) = doctor(&[&target, "--condition", refusing]);
    assert_eq!(code, 1);
    says(&out, "condition", &format!("refuses {principal}"));
    fix_says(
        &out,
        "condition",
        &format!("assertion.arn in ['{principal}']"),
    );
    let admitting = format!("assertion.arn in ['{principal}']");
    let (_, out, _) = doctor(&[&target, "--condition", &admitting]);
    assert!(line(&out, "condition").starts_with("  ok"), "{out}");
    let (_, out, _) = doctor(&[&target, "--condition", "assertion.arn in ["]);
    says(&out, "condition", "cannot evaluate");

    // An exchange tried now gets Google's answer of today.
    let (code, out, _) = doctor(&[&target, "--exchange"]);
    assert_eq!(code, 1);
    says(&out, "try", "FAIL");
    says(&out, "try", "AttributeConditionRejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_resource_with_an_injected_pod_passes() {
    support::ensure_crd();
    let ns = TestNamespace::new("doctor-healthy");
    let cloud = Cloud::start(|c| c).await;
    support::cloud::service_account(&ns, "orders-api");
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
    says(&text, "pods", "1 pod(s) injected");
    says(
        &text,
        "try",
        "AWS and Google answered now: a token of orders-api@acme-shop.iam.gserviceaccount.com",
    );
    says(&text, "secret", "holds a token valid for");
    assert!(text.ends_with("no problem found\n"), "{text}");
}

/// Another provider of the pool, whose condition admits nobody fedcred presents.
const REFUSING: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/refusing";
/// A provider Google does not know.
const UNKNOWN: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/deleted";
/// A provider name the CRD's pattern lets through and Google does not take: an ID ends with a
/// hyphen.
const MALFORMED: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop-";

/// An AWS STS endpoint that refuses every AssumeRoleWithWebIdentity as AWS does when the role's
/// trust policy does not admit the caller: 403, `AccessDenied`, in STS's XML error shape.
fn refusing_aws_sts() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            if read_request(&mut stream).is_none() {
                continue;
            }
            let body = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>";
            let _ = write!(
                stream,
                "HTTP/1.1 403 Forbidden\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// Reads one HTTP request (headers, then a body of its content-length).
fn read_request(stream: &mut TcpStream) -> Option<()> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                return Some(());
            }
        }
    }
}

/// An endpoint that accepts connections and never answers, as one behind a dropping firewall.
fn silent_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_explains_each_status_reason_with_its_fix() {
    support::ensure_crd();
    let ns = TestNamespace::new("doctor-reasons");
    let cloud = Cloud::start(|c| {
        c.provider(Provider::new(REFUSING).with_condition(Condition::Cel("false".into())))
    })
    .await;
    service_accounts(&ns, &[("orders-api", Some(ROLE)), ("no-role", None)]);
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
    // AWS STS as the resource's endpoint: refusing the role, down, answering nothing.
    let refusing = refusing_aws_sts();
    let down = Gate::start(cloud.moto.port());
    down.set_down(true);
    let silent = silent_endpoint();
    // AWS STS reached through a host Google does not call: the signed GetCallerIdentity that
    // fedcred presents names it, and Google refuses to verify it there.
    let detour = Gate::start(cloud.moto.port());
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
        (
            "malformed",
            irsa("orders-api"),
            json!({"audience": MALFORMED}),
            "InvalidAudience",
            "exchange",
        ),
        (
            "untrusted-role",
            json!({"serviceAccount": {"name": "orders-api"}, "stsEndpoint": refusing}),
            json!({}),
            "AwsStsDenied",
            "exchange",
        ),
        (
            "aws-down",
            json!({"serviceAccount": {"name": "orders-api"}, "stsEndpoint": down.url()}),
            json!({}),
            "Upstream",
            "exchange",
        ),
        (
            "detour",
            json!({"serviceAccount": {"name": "orders-api"}, "stsEndpoint": detour.url()}),
            json!({}),
            "InvalidSubjectToken",
            "exchange",
        ),
        (
            "aws-silent",
            json!({"serviceAccount": {"name": "orders-api"}, "stsEndpoint": silent}),
            json!({}),
            "Timeout",
            "exchange",
        ),
    ];
    for (name, aws, google, _, _) in &cases {
        let mut spec = serde_json::to_value(cloud.spec(aws.clone(), google.clone())).unwrap();
        if let Some(endpoint) = aws.get("stsEndpoint") {
            spec["aws"]["stsEndpoint"] = endpoint.clone();
        }
        let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
            "metadata": {"name": name}, "spec": spec});
        ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
            .success();
    }
    let _controller = ControllerProcess::start(&ns.name, &cloud, "doctor", &[]);
    for (name, _, _, reason, step) in cases {
        explained(&ns, name, reason, step).await;
    }
}

/// Waits until `fedcred doctor` fails `name` at `step` for `reason`, checks that its fix is
/// specific and that the report fits one screen, keeps it as evidence and returns it.
async fn explained(ns: &TestNamespace, name: &str, reason: &str, step: &str) -> String {
    explained_as(ns, name, reason, step, &format!("doctor-{reason}.txt")).await
}

/// [`explained`], kept as evidence under `file`.
async fn explained_as(
    ns: &TestNamespace,
    name: &str,
    reason: &str,
    step: &str,
    file: &str,
) -> String {
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
    let evidence = support::controller::log_dir();
    std::fs::write(evidence.join(file), &out).unwrap();
    out
}

/// The OIDC provider of the cluster, holding the cluster's keys.
const OIDC: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/k8s-pool/providers/onprem";
/// A provider configured with an issuer the cluster does not write into its tokens.
const OTHER_ISSUER: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/k8s-pool/providers/other-issuer";
/// A provider that must discover the keys but cannot reach the cluster's private issuer.
const PRIVATE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/k8s-pool/providers/private";
/// A provider whose condition admits only the namespace `payments`.
const STRICT: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/k8s-pool/providers/strict";
/// A provider holding another cluster's keys.
const STRANGER: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/k8s-pool/providers/stranger";

/// The failures of a `kubernetes` source, each refused by the STS double for what is wrong on
/// the provider's side, and a resource lending the controller's identity to a controller that
/// has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_explains_the_oidc_reasons_and_a_controller_without_aws_credentials() {
    support::ensure_crd();
    let issuer = support::oidc::cluster_issuer().await;
    let ns = TestNamespace::new("doctor-oidc");
    let uploaded = issuer.uploaded();
    let cloud = Cloud::start(|c| {
        c.provider(Provider::oidc(OIDC, uploaded.clone()))
            .provider(Provider::oidc(
                OTHER_ISSUER,
                Oidc {
                    issuer_uri: "https://kubernetes.default.svc.cluster.local".to_owned(),
                    ..uploaded.clone()
                },
            ))
            // Discovery over HTTPS from a CA Google does not trust.
            .provider(Provider::oidc(
                PRIVATE,
                Oidc {
                    jwks_json: None,
                    ..uploaded.clone()
                },
            ))
            .provider(
                Provider::oidc(STRICT, uploaded.clone())
                    .with_condition(Condition::NamespaceEquals("payments".into())),
            )
            .provider(Provider::oidc(
                STRANGER,
                Oidc {
                    jwks_json: Some(TestKey::generate("another-cluster").jwks().to_string()),
                    ..uploaded.clone()
                },
            ))
    })
    .await;
    for sa in ["orders-api", "late-api"] {
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}});
        ns.kubectl(&["apply", "-f", "-"], Some(&sa.to_string()))
            .success();
    }
    let apply = |name: &str, spec: Value| {
        let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
            "metadata": {"name": name}, "spec": spec});
        ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
            .success();
    };
    let kubernetes = |audience: &str, source: Value| {
        json!({"kubernetes": source, "google": {
            "audience": audience,
            "serviceAccount": SA_EMAIL,
            "endpoints": {"sts": cloud.google.sts_url(), "iamCredentials": cloud.google.iam_credentials_url()}
        }})
    };
    let orders = json!({"serviceAccount": {"name": "orders-api"}});
    // (resource, spec, the reason doctor must report)
    let cases = [
        (
            "other-audience",
            kubernetes(
                OIDC,
                json!({"serviceAccount": {"name": "orders-api"}, "audience": "https://kubernetes.default.svc"}),
            ),
            "AudienceMismatch",
        ),
        (
            "other-issuer",
            kubernetes(OTHER_ISSUER, orders.clone()),
            "IssuerNotTrusted",
        ),
        (
            "private-issuer",
            kubernetes(PRIVATE, orders.clone()),
            "IssuerUnreachable",
        ),
        (
            "stranger-keys",
            kubernetes(STRANGER, orders.clone()),
            "SignatureNotVerified",
        ),
        (
            "host-file",
            kubernetes(
                OIDC,
                json!({"tokenPath": "/var/run/secrets/kubernetes.io/serviceaccount/token"}),
            ),
            "InvalidSpec",
        ),
        (
            "lent",
            serde_json::to_value(
                cloud.spec(json!({"controllerIdentity": {"roleArn": ROLE}}), json!({})),
            )
            .unwrap(),
            "AwsCredentialsUnavailable",
        ),
    ];
    for (name, spec, _) in &cases {
        apply(name, spec.clone());
    }
    let home = std::env::temp_dir().join(format!("fedcred-doctor-home-{}", ns.name));
    std::fs::create_dir_all(&home).unwrap();
    let _controller = Launch::new(&cloud)
        .watching(&ns.name, "doctor")
        .args(&["--allow-controller-identity", &ns.name])
        .without_aws_credentials(&home)
        .start();
    let subject = format!("system:serviceaccount:{}:orders-api", ns.name);
    for (name, _, reason) in &cases {
        let out = explained(&ns, name, reason, "exchange").await;
        match *name {
            "lent" => {}
            "host-file" => assert!(
                fix(&out, "exchange").contains("spec.kubernetes.serviceAccount"),
                "{out}"
            ),
            _ => {
                fix_says(&out, "exchange", "update-oidc");
                says(&out, "principal", &subject);
            }
        }
    }

    // The condition of an OIDC provider refuses the ServiceAccount's namespace.
    apply("payments-only", kubernetes(STRICT, orders.clone()));
    let out = explained_as(
        &ns,
        "payments-only",
        "AttributeConditionRejected",
        "exchange",
        "doctor-AttributeConditionRejected-kubernetes.txt",
    )
    .await;
    let fixed = fix(&out, "exchange");
    assert!(
        fixed.contains(&subject) && fixed.contains("update-oidc"),
        "{out}"
    );

    // Google's clock ten minutes and a bit ahead: the API server's fresh token, valid for ten
    // minutes, has expired for it.
    cloud.google.set_jwt_clock_offset(700);
    apply(
        "late",
        kubernetes(OIDC, json!({"serviceAccount": {"name": "late-api"}})),
    );
    let out = explained(&ns, "late", "SubjectTokenExpired", "exchange").await;
    cloud.google.set_jwt_clock_offset(0);
    fix_says(&out, "exchange", "NTP");
    let _ = std::fs::remove_dir_all(&home);
}

/// A kubeconfig of the test cluster that authenticates as ServiceAccount `ns/name`, written to
/// `path`.
fn service_account_kubeconfig(ns: &TestNamespace, name: &str, path: &std::path::Path) {
    let admin: Value = serde_json::from_str(
        &support::kubectl(&["config", "view", "--raw", "--minify", "-o", "json"], None).success(),
    )
    .unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let ca = match cluster["certificate-authority-data"].as_str() {
        Some(data) => data.to_owned(),
        None => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .encode(std::fs::read(cluster["certificate-authority"].as_str().unwrap()).unwrap())
        }
    };
    let token = ns
        .kubectl(&["create", "token", name, "--duration=1h"], None)
        .success();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": cluster["server"], "certificate-authority-data": ca}}],
        "users": [{"name": name, "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": name}}],
        "current-context": "sa",
    });
    std::fs::write(path, config.to_string()).unwrap();
}

/// A controller whose RBAC lacks `create` on serviceaccounts/token (the chart's rules for one
/// namespace, that one left out): the API server refuses its TokenRequest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_explains_a_token_request_the_api_server_refuses() {
    support::ensure_crd();
    let ns = TestNamespace::new("doctor-rbac");
    let cloud = Cloud::start(|c| c).await;
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
    "metadata": {"name": "fedcred-without-tokens"},
    "rules": [
        {"apiGroups": ["fedcred.io"], "resources": ["federatedcredentials"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["fedcred.io"], "resources": ["federatedcredentials/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch", "create", "patch"]},
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"], "verbs": ["list", "patch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create", "get", "update"]}
    ]});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "fedcred-without-tokens"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fedcred-without-tokens"},
        "subjects": [{"kind": "ServiceAccount", "name": "fedcred", "namespace": ns.name}]});
    service_accounts(&ns, &[("fedcred", None), ("orders-api", Some(ROLE))]);
    for object in [role, binding] {
        ns.kubectl(&["apply", "-f", "-"], Some(&object.to_string()))
            .success();
    }
    let spec = serde_json::to_value(
        cloud.spec(json!({"serviceAccount": {"name": "orders-api"}}), json!({})),
    )
    .unwrap();
    let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "no-token"}, "spec": spec});
    ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();
    let kubeconfig = std::env::temp_dir().join(format!("fedcred-doctor-{}.kubeconfig", ns.name));
    service_account_kubeconfig(&ns, "fedcred", &kubeconfig);
    let _controller = Launch::new(&cloud)
        .watching(&ns.name, "doctor")
        .kubeconfig(&kubeconfig)
        .start();
    let out = explained(&ns, "no-token", "TokenRequestFailed", "exchange").await;
    let _ = std::fs::remove_file(&kubeconfig);
    says(&out, "exchange", "HTTP 403 Forbidden");
    fix_says(&out, "exchange", "serviceaccounts/token");
}

//! `fedcred setup` as a user runs it: on the examples (the output is the core's golden files,
//! with the IRSA role read from the ServiceAccount in the same file), on the cluster
//! (`--from-cluster`), and checked against the Google doubles: the provider condition, the
//! attribute mapping and the workloadIdentityUser binding it prints admit the principal fedcred
//! presents for the resource and refuse a neighbour namespace's — an assumed-role ARN through
//! the controller, and a ServiceAccount token's claims through the OIDC double's mapping.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use fedcred_doubles::oidc::{self, Jwt, TestKey};
use fedcred_doubles::{Binding, Condition, Provider};
use serde_json::{Value, json};
use support::cloud::{AUDIENCE, Cloud, SA_EMAIL};
use support::controller::ControllerProcess;
use support::oidc::cluster_issuer;
use support::{TestNamespace, eventually, kubeconfig, repo_root};

/// Runs `fedcred setup ARGS` with `stdin`: (success, stdout, stderr).
fn setup(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fedcred"))
        .arg("setup")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the fedcred binary runs");
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("core/tests/golden/setup").join(name)).unwrap()
}

/// `bash -n`: the script parses.
fn bash_parses(script: &str) {
    let dir = std::env::temp_dir().join(format!("fedcred-setup-{}.sh", std::process::id()));
    std::fs::write(&dir, script).unwrap();
    let out = Command::new("bash").arg("-n").arg(&dir).output().unwrap();
    let _ = std::fs::remove_file(&dir);
    assert!(
        out.status.success(),
        "bash -n: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_examples_give_the_golden_commands_and_terraform() {
    let issuer =
        "https://oidc.eks.ap-northeast-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE";
    // The example holds the ServiceAccount with its role annotation: no flag names the role.
    let (ok, script, err) = setup(
        &["-f", "examples/irsa-alloydb.yaml", "--oidc-issuer", issuer],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(script, golden("irsa-alloydb.sh"));
    bash_parses(&script);
    let (ok, terraform, err) = setup(
        &[
            "-f",
            "examples/irsa-alloydb.yaml",
            "--oidc-issuer",
            issuer,
            "-o",
            "terraform",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(terraform, golden("irsa-alloydb.tf"));

    let (ok, script, err) = setup(&["-f", "examples/controller-identity-bigquery.yaml"], None);
    assert!(ok, "{err}");
    assert_eq!(script, golden("controller-identity-bigquery.sh"));
    bash_parses(&script);
    // The controller's role was not given: the script refuses to run the AWS part without it.
    assert!(
        script.contains(r#": "${CONTROLLER_ROLE_ARN:?set CONTROLLER_ROLE_ARN"#),
        "{script}"
    );

    // The cluster's own ServiceAccount token: an OIDC provider for the issuer, nothing on AWS.
    let kubernetes = ["-f", "examples/kubernetes-token-gcs.yaml"];
    let issuer = ["--oidc-issuer", "https://k8s.acme-reports.example"];
    let (ok, script, err) = setup(&[&kubernetes[..], &issuer[..]].concat(), None);
    assert!(ok, "{err}");
    assert_eq!(script, golden("kubernetes-token-gcs.sh"));
    bash_parses(&script);
    let (ok, terraform, err) = setup(
        &[&kubernetes[..], &issuer[..], &["-o", "terraform"][..]].concat(),
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(terraform, golden("kubernetes-token-gcs.tf"));
    // Without the issuer there is no provider to print: the error says where to read it.
    let (ok, out, err) = setup(&kubernetes, None);
    assert!(!ok, "{out}");
    assert!(
        err.contains("reports/reports-gcs: kubernetes:")
            && err.contains("--oidc-issuer")
            && err.contains("kubectl get --raw /.well-known/openid-configuration"),
        "{err}"
    );
}

#[test]
fn the_printed_oidc_condition_admits_the_token_fedcred_presents_and_refuses_a_neighbours() {
    // What setup prints for examples/kubernetes-token-gcs.yaml (the test above checks that the
    // binary prints exactly this).
    let script = golden("kubernetes-token-gcs.sh");
    let mapping = flag_values(&script, "attribute-mapping");
    let condition = flag_values(&script, "attribute-condition");
    let members = flag_values(&script, "member");
    // The OIDC double applies this mapping to every token; the printed one must be it.
    assert_eq!(
        mapping,
        [
            "google.subject=assertion.sub,attribute.namespace=assertion['kubernetes.io']['namespace']"
        ]
    );
    let key = TestKey::generate_p256("setup");
    let judged = |namespace: &str, name: &str| {
        let token = key.sign(&json!({
            "iss": "https://k8s.acme-reports.example",
            "aud": ["//iam.googleapis.com/projects/555555555555/locations/global/workloadIdentityPools/k8s-pool/providers/onprem"],
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": "0b0c"}},
            "iat": 1_700_000_000, "exp": 1_700_000_600,
        }));
        let attributes = oidc::map(&Jwt::parse(&token).unwrap()).unwrap();
        let admitted = oidc::admits(&Condition::Cel(condition[0].clone()), &attributes);
        (admitted, attributes["google.subject"].clone())
    };
    let (admitted, subject) = judged("reports", "report-writer");
    assert!(admitted, "{} refuses {subject}", condition[0]);
    // The binding is that principal's, and only its.
    assert_eq!(
        members,
        [format!(
            "principal://iam.googleapis.com/projects/555555555555/locations/global/workloadIdentityPools/k8s-pool/subject/{subject}"
        )]
    );
    for (namespace, name) in [("reports-next", "report-writer"), ("reports", "default")] {
        let (admitted, subject) = judged(namespace, name);
        assert!(!admitted, "{} admits {subject}", condition[0]);
    }
}

#[test]
fn what_setup_cannot_plan_is_named_with_the_fix() {
    let file = "apiVersion: fedcred.io/v1alpha1\nkind: FederatedCredential\nmetadata: {name: orders-db, namespace: shop}\nspec:\n  aws: {serviceAccount: {name: orders-api}, region: us-east-1}\n  google: {audience: '//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool1/providers/prov1'}\n";
    let (ok, out, err) = setup(&["-f", "-"], Some(file));
    assert!(!ok, "{out}");
    assert!(
        err.contains("shop/orders-db: aws.serviceAccount.roleArn: no IAM role known for ServiceAccount orders-api")
            && err.contains("--role-arn shop/orders-api=arn:aws:iam::ACCOUNT:role/NAME"),
        "{err}"
    );
    // The flag it suggests works.
    let (ok, out, err) = setup(
        &[
            "-f",
            "-",
            "--role-arn",
            "shop/orders-api=arn:aws:iam::123456789012:role/orders",
        ],
        Some(file),
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("assumed-role/orders/fedcred.shop.orders-api"),
        "{out}"
    );
    let (ok, _, err) = setup(&["-f", "-", "--role-arn", "orders"], Some(file));
    assert!(!ok);
    assert!(
        err.contains("expected NAMESPACE/SERVICEACCOUNT=arn:aws:iam::ACCOUNT:role/NAME"),
        "{err}"
    );
    // An invalid resource gets the API server's message.
    let (ok, _, err) = setup(&["-f", "-"], Some(&file.replace("us-east-1", "Tokyo")));
    assert!(!ok);
    assert!(
        err.contains("aws.region must be an AWS region code"),
        "{err}"
    );
}

/// The value of `--FLAG="…"` in the script, each occurrence.
fn flag_values(script: &str, flag: &str) -> Vec<String> {
    let prefix = format!("--{flag}=\"");
    script
        .lines()
        .filter_map(|line| {
            let start = line.find(&prefix)? + prefix.len();
            let rest = &line[start..];
            Some(rest[..rest.rfind('"')?].to_owned())
        })
        .collect()
}

/// The doubles configured with exactly what setup printed: `provider` with its mapping
/// (`ATTRIBUTE=EXPRESSION,…`) and condition (CEL, evaluated by the double), and a binding to
/// `members` as the only one on the service account.
async fn configured_as_printed(
    provider: Provider,
    mapping: &str,
    condition: &str,
    members: &[String],
) -> Cloud {
    let pairs: Vec<(&str, &str)> = mapping
        .split(',')
        .map(|kv| kv.split_once('=').expect("ATTRIBUTE=EXPRESSION"))
        .collect();
    let provider = provider
        .with_mapping(&pairs)
        .with_condition(Condition::Cel(condition.to_owned()));
    Cloud::start(|mut c| {
        c.providers.clear();
        c.bindings.clear();
        c.provider(provider)
            .binding(Binding::new(SA_EMAIL, members))
    })
    .await
}

fn service_account(ns: &TestNamespace) {
    support::cloud::service_account(ns, "orders-api");
}

fn apply(ns: &TestNamespace, cloud: &Cloud) {
    let spec = cloud.spec(json!({"serviceAccount": {"name": "orders-api"}}), json!({}));
    let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "orders-db"}, "spec": spec});
    ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();
}

fn status(ns: &TestNamespace) -> Value {
    let out = ns.kubectl(&["get", "fedcred", "orders-db", "-o", "json"], None);
    if !out.ok {
        return Value::Null;
    }
    serde_json::from_str::<Value>(&out.stdout).unwrap()["status"].clone()
}

fn ready_reason(status: &Value) -> Option<(String, String)> {
    let ready = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        ready["status"].as_str()?.to_owned(),
        ready["reason"].as_str()?.to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_condition_and_binding_admit_the_resource_and_refuse_its_neighbour() {
    support::ensure_crd();
    let mine = TestNamespace::new("setup-mine");
    let neighbour = TestNamespace::new("setup-next");
    for ns in [&mine, &neighbour] {
        service_account(ns);
    }

    // What the user runs setup on: the resource of `mine`, read from the cluster, with the role
    // from its ServiceAccount's annotation. (Applied before the cloud exists: setup reads the
    // spec only.)
    let placeholder = Cloud::start(|c| c).await;
    apply(&mine, &placeholder);
    let (ok, script, err) = setup(&["--from-cluster", "-n", &mine.name], None);
    assert!(ok, "{err}");
    let mapping = flag_values(&script, "attribute-mapping");
    let condition = flag_values(&script, "attribute-condition");
    let members = flag_values(&script, "member");
    assert_eq!((mapping.len(), condition.len()), (1, 1), "{script}");
    let principal = format!(
        "arn:aws:sts::123456789012:assumed-role/shop-orders/fedcred.{}.orders-api",
        mine.name
    );
    assert!(condition[0].contains(&principal), "{}", condition[0]);
    assert!(!condition[0].contains(&neighbour.name));
    let wif_members: Vec<String> = members
        .iter()
        .filter(|m| m.starts_with("principal://"))
        .cloned()
        .collect();
    assert_eq!(wif_members.len(), 1, "{members:?}");
    drop(placeholder);

    // The doubles configured with exactly what setup printed: its mapping and condition (CEL,
    // evaluated by the double), and its binding as the only one on the service account.
    let cloud = configured_as_printed(
        Provider::new(AUDIENCE),
        &mapping[0],
        &condition[0],
        &wif_members,
    )
    .await;
    apply(&mine, &cloud);
    apply(&neighbour, &cloud);
    let _mine_controller = ControllerProcess::start(&mine.name, &cloud, "setup-a", &[]);
    let _neighbour_controller = ControllerProcess::start(&neighbour.name, &cloud, "setup-b", &[]);

    let ready = ready(&mine).await;
    assert_eq!(ready["awsPrincipalArn"], principal.as_str());
    let refused = refused_by_the_condition(&neighbour).await;
    assert_eq!(
        refused["awsPrincipalArn"],
        format!(
            "arn:aws:sts::123456789012:assumed-role/shop-orders/fedcred.{}.orders-api",
            neighbour.name
        )
        .as_str()
    );
}

/// The same for the Kubernetes-OIDC source: a new user runs `fedcred setup --from-cluster
/// --oidc-issuer ISSUER` and configures Google with what it printed; the OIDC double (with the
/// cluster's real keys) applies that mapping and condition and that binding, the resource goes
/// Ready, and a neighbour namespace's ServiceAccount of the same name is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_oidc_provider_and_binding_take_a_kubernetes_source_to_ready() {
    const PROVIDER: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/k8s-pool/providers/onprem";
    support::ensure_crd();
    let issuer = cluster_issuer().await;
    let mine = TestNamespace::new("setup-oidc");
    let neighbour = TestNamespace::new("setup-oidc-next");
    let apply_k8s = |ns: &TestNamespace, cloud: &Cloud| {
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "orders-api"}});
        ns.kubectl(&["apply", "-f", "-"], Some(&sa.to_string()))
            .success();
        let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "orders-db"},
        "spec": {
            "kubernetes": {"serviceAccount": {"name": "orders-api"}},
            "google": {"audience": PROVIDER, "serviceAccount": SA_EMAIL,
                "endpoints": {"sts": cloud.google.sts_url(), "iamCredentials": cloud.google.iam_credentials_url()}}
        }});
        ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
            .success();
    };
    let placeholder = Cloud::start(|c| c).await;
    apply_k8s(&mine, &placeholder);
    let (ok, script, err) = setup(
        &[
            "--from-cluster",
            "-n",
            &mine.name,
            "--oidc-issuer",
            &issuer.issuer,
        ],
        None,
    );
    assert!(ok, "{err}");
    bash_parses(&script);
    assert!(script.contains("create-oidc"), "{script}");
    let mapping = flag_values(&script, "attribute-mapping");
    let condition = flag_values(&script, "attribute-condition");
    let subject = format!("system:serviceaccount:{}:orders-api", mine.name);
    assert_eq!((mapping.len(), condition.len()), (1, 1), "{script}");
    assert!(condition[0].contains(&subject), "{}", condition[0]);
    assert!(!condition[0].contains(&neighbour.name));
    let wif_members: Vec<String> = flag_values(&script, "member")
        .into_iter()
        .filter(|m| m.starts_with("principal"))
        .collect();
    assert_eq!(wif_members.len(), 1, "{script}");
    assert!(wif_members[0].ends_with(&subject), "{wif_members:?}");
    drop(placeholder);

    let cloud = configured_as_printed(
        Provider::oidc(PROVIDER, issuer.uploaded()),
        &mapping[0],
        &condition[0],
        &wif_members,
    )
    .await;
    apply_k8s(&mine, &cloud);
    apply_k8s(&neighbour, &cloud);
    let _mine_controller = ControllerProcess::start(&mine.name, &cloud, "setup-oidc-a", &[]);
    let _neighbour_controller =
        ControllerProcess::start(&neighbour.name, &cloud, "setup-oidc-b", &[]);

    let ready = ready(&mine).await;
    assert_eq!(ready["subject"], subject.as_str());
    let refused = refused_by_the_condition(&neighbour).await;
    assert_eq!(
        refused["subject"],
        format!("system:serviceaccount:{}:orders-api", neighbour.name).as_str()
    );
}

/// Waits until the resource in `ns` is Ready; returns its status.
async fn ready(ns: &TestNamespace) -> Value {
    eventually("the resource Ready", LIMIT, || {
        let s = status(ns);
        (ready_reason(&s)?.0 == "True").then_some(s)
    })
    .await
}

/// Waits until the resource in `ns` is refused, which must be for the attribute condition;
/// returns its status.
async fn refused_by_the_condition(ns: &TestNamespace) -> Value {
    let refused = eventually("the neighbour refused", LIMIT, || {
        let s = status(ns);
        let (state, reason) = ready_reason(&s)?;
        // Refused, or (wrongly) admitted: either settles the question.
        (state == "True" || s["lastFailureReason"].is_string()).then_some((reason, s))
    })
    .await;
    assert_eq!(refused.0, "AttributeConditionRejected", "{}", refused.1);
    refused.1
}

/// How long a resource may take to be Ready or refused.
const LIMIT: Duration = Duration::from_secs(60);

/// The policy documents of `aws iam create-role` in a script, by role name.
fn script_policies(script: &str) -> std::collections::BTreeMap<String, Value> {
    let mut policies = std::collections::BTreeMap::new();
    for part in script.split("aws iam create-role --role-name ").skip(1) {
        let name = part.split_whitespace().next().unwrap().to_owned();
        let body = part
            .split_once("<<JSON\n")
            .and_then(|(_, rest)| rest.split_once("\nJSON\n"))
            .map(|(json, _)| json)
            .expect("a heredoc policy");
        let body = body
            .replace("${OIDC_PROVIDER}", "${var.oidc_provider}")
            .replace("${CONTROLLER_ROLE_ARN}", "${var.controller_role_arn}");
        policies.insert(
            name,
            serde_json::from_str(&body).expect("the policy is JSON"),
        );
    }
    policies
}

#[test]
fn the_terraform_parses_and_says_what_the_commands_say() {
    let python = support::pod::venv_python();
    for case in [
        "irsa-alloydb",
        "controller-identity-bigquery",
        "two-namespaces",
        "kubernetes-token-gcs",
        "kubernetes-agent-audience",
    ] {
        let out = Command::new(&python)
            .arg(repo_root().join("tests/python/terraform_summary.py"))
            .arg(repo_root().join(format!("core/tests/golden/setup/{case}.tf")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{case}.tf does not parse as HCL2: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tf: Value = serde_json::from_slice(&out.stdout).unwrap();
        let script = golden(&format!("{case}.sh"));
        bash_parses(&script);

        let mut tf_conditions: Vec<&str> = tf["providers"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p["condition"].as_str().unwrap())
            .collect();
        tf_conditions.sort_unstable();
        let mut sh_conditions = flag_values(&script, "attribute-condition");
        sh_conditions.sort_unstable();
        assert_eq!(tf_conditions, sh_conditions, "{case}");
        // OIDC providers: the same issuer and allowed audiences.
        let mut tf_issuers: Vec<&str> = tf["providers"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|p| p["issuer"].as_str())
            .collect();
        tf_issuers.sort_unstable();
        let mut sh_issuers = flag_values(&script, "issuer-uri");
        sh_issuers.sort_unstable();
        assert_eq!(tf_issuers, sh_issuers, "{case}");
        let mut tf_audiences: Vec<String> = tf["providers"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|p| p["allowed_audiences"].as_array())
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        tf_audiences.sort_unstable();
        let mut sh_audiences = flag_values(&script, "allowed-audiences");
        sh_audiences.sort_unstable();
        assert_eq!(tf_audiences, sh_audiences, "{case}");
        for (_, provider) in tf["providers"].as_object().unwrap() {
            let mapping: Vec<String> = provider["mapping"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                .collect();
            let mut sh_mapping: Vec<String> = flag_values(&script, "attribute-mapping")[0]
                .split(',')
                .map(str::to_owned)
                .collect();
            sh_mapping.sort_unstable();
            assert_eq!(mapping, sh_mapping, "{case}");
        }
        let mut tf_members: Vec<&str> = tf["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        tf_members.sort_unstable();
        let mut sh_members: Vec<String> = flag_values(&script, "member")
            .into_iter()
            .filter(|m| m.starts_with("principal://"))
            .collect();
        sh_members.sort_unstable();
        assert_eq!(tf_members, sh_members, "{case}");

        let tf_roles: std::collections::BTreeMap<String, Value> =
            serde_json::from_value(tf["roles"].clone()).unwrap();
        assert_eq!(tf_roles, script_policies(&script), "{case}");
        let count = |kind: &str| {
            tf["resources"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r.as_str().unwrap().starts_with(kind))
                .count()
        };
        assert_eq!(
            count("google_project_iam_member."),
            script
                .matches("gcloud projects add-iam-policy-binding")
                .count(),
            "{case}"
        );
        assert_eq!(
            count("google_alloydb_user."),
            script.matches("gcloud alloydb users create").count(),
            "{case}"
        );
    }
}

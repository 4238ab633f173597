// Golden files are read and (with FEDCRED_BLESS) written by this test module only.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{Value, json};

use super::render::{commands, terraform};
use super::*;

const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop";
const SA: &str = "orders-api@acme-shop.iam.gserviceaccount.com";
const ROLE: &str = "arn:aws:iam::123456789012:role/shop-orders-api";

fn resource(namespace: &str, name: &str, spec: Value, role: Option<&str>) -> Resource {
    Resource {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        spec: serde_json::from_value(spec).expect("a valid spec"),
        resolved_role_arn: role.map(str::to_owned),
        resolved_subject: None,
    }
}

/// The orders API of `namespace` reaching AlloyDB over PSC with IAM login (examples/irsa-alloydb.yaml).
fn orders_db(namespace: &str) -> Resource {
    resource(
        namespace,
        "orders-db",
        json!({
            "aws": {"serviceAccount": {"name": "orders-api"}, "region": "ap-northeast-1"},
            "google": {"audience": AUDIENCE, "serviceAccount": SA},
            "alloydb": {"instances": [{
                "uri": "projects/acme-shop/locations/asia-northeast1/clusters/orders/instances/orders-primary",
                "connectivity": "PSC", "autoIamAuthn": true, "port": 5432}]}
        }),
        Some(ROLE),
    )
}

/// The nightly BigQuery export with the controller's identity chained into a role
/// (examples/controller-identity-bigquery.yaml).
fn bigquery_export() -> Resource {
    resource(
        "analytics",
        "bigquery-export",
        json!({
            "aws": {"controllerIdentity": {"roleArn": "arn:aws:iam::123456789012:role/access2bq"}, "region": "us-east-1"},
            "google": {
                "audience": "//iam.googleapis.com/projects/987654321098/locations/global/workloadIdentityPools/bq-pool/providers/aws-analytics",
                "serviceAccount": "bq-export@acme-analytics.iam.gserviceaccount.com",
                "scopes": ["https://www.googleapis.com/auth/bigquery", "https://www.googleapis.com/auth/devstorage.read_only"]
            }
        }),
        None,
    )
}

fn golden(case: &str, resources: &[Resource], options: &Options) {
    let setup = plan(resources, options).expect("a plan");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/setup");
    for (ext, text) in [
        ("sh", commands(&setup, options)),
        ("tf", terraform(&setup, options)),
    ] {
        let path = dir.join(format!("{case}.{ext}"));
        if std::env::var_os("FEDCRED_BLESS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; FEDCRED_BLESS=1 cargo test -p fedcred-core --lib setup writes it",
                path.display()
            )
        });
        assert!(
            want == text,
            "{} differs from the output; review and bless (FEDCRED_BLESS=1) if intended:\n{text}",
            path.display()
        );
    }
}

#[test]
fn golden_irsa_alloydb() {
    golden(
        "irsa-alloydb",
        &[orders_db("shop")],
        &Options {
            oidc_issuer: Some(
                "https://oidc.eks.ap-northeast-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
                    .into(),
            ),
            controller_role_arn: None,
        },
    );
}

#[test]
fn golden_controller_identity_bigquery() {
    golden(
        "controller-identity-bigquery",
        &[bigquery_export()],
        &Options::default(),
    );
}

#[test]
fn golden_two_namespaces_and_a_direct_principal() {
    let direct = resource(
        "reports",
        "warehouse",
        json!({
            "aws": {"serviceAccount": {"name": "reporter", "roleArn": "arn:aws:iam::123456789012:role/team/reports"}},
            "google": {"audience": AUDIENCE, "scopes": ["https://www.googleapis.com/auth/bigquery.readonly"]}
        }),
        Some("arn:aws:iam::123456789012:role/team/reports"),
    );
    golden(
        "two-namespaces",
        &[orders_db("shop"), orders_db("shop-staging"), direct],
        &Options {
            oidc_issuer: Some("https://oidc.eks.us-east-1.amazonaws.com/id/CLUSTER1".into()),
            controller_role_arn: Some("arn:aws:iam::123456789012:role/fedcred-controller".into()),
        },
    );
}

#[test]
fn the_condition_admits_exactly_the_principals_fedcred_presents() {
    let setup = plan(
        &[orders_db("shop"), orders_db("shop-staging")],
        &Options::default(),
    )
    .unwrap();
    let provider = &setup.pools[&PoolKey {
        project_number: "123456789012".into(),
        pool: "eks-pool".into(),
    }]
        .providers["aws-shop"];
    let principals: Vec<&str> = provider.principals.iter().map(String::as_str).collect();
    assert_eq!(
        principals,
        [
            "arn:aws:sts::123456789012:assumed-role/shop-orders-api/fedcred.shop-staging.orders-api",
            "arn:aws:sts::123456789012:assumed-role/shop-orders-api/fedcred.shop.orders-api",
        ]
    );
    // The session names are the ones the exchange uses.
    for p in &principals {
        let session = p.rsplit('/').next().unwrap();
        assert!(
            [
                crate::names::session_name("shop", Some("orders-api")),
                crate::names::session_name("shop-staging", Some("orders-api"))
            ]
            .contains(&session.to_owned())
        );
    }
    let condition = provider.condition();
    assert_eq!(
        condition,
        "assertion.arn in ['arn:aws:sts::123456789012:assumed-role/shop-orders-api/fedcred.shop-staging.orders-api', 'arn:aws:sts::123456789012:assumed-role/shop-orders-api/fedcred.shop.orders-api']"
    );
    assert!(!condition.contains('*'));
    let sa = &setup.service_accounts[SA];
    assert_eq!(sa.members.len(), 2);
    assert!(sa.members.iter().all(|m| m.starts_with(
        "principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/subject/arn:aws:sts::123456789012:assumed-role/shop-orders-api/fedcred.shop"
    )));
    let roles: Vec<&str> = sa.roles.keys().copied().collect();
    assert_eq!(
        roles,
        [
            "roles/alloydb.client",
            "roles/alloydb.databaseUser",
            "roles/serviceusage.serviceUsageConsumer"
        ]
    );
    let user = setup.alloydb_users.iter().next().unwrap();
    assert_eq!(user.user, "orders-api@acme-shop.iam");
    let Trust::WebIdentity { subjects } = &setup.roles[ROLE].trust else {
        panic!("IRSA trusts the OIDC provider");
    };
    assert_eq!(
        subjects.iter().collect::<Vec<_>>(),
        [
            "system:serviceaccount:shop-staging:orders-api",
            "system:serviceaccount:shop:orders-api"
        ]
    );
}

#[test]
fn psc_is_what_needs_the_service_usage_role() {
    let mut public = orders_db("shop");
    public.spec.alloydb.as_mut().unwrap().instances[0].connectivity =
        crate::api::Connectivity::PublicIp;
    public.spec.alloydb.as_mut().unwrap().instances[0].auto_iam_authn = false;
    let setup = plan(&[public], &Options::default()).unwrap();
    let roles: Vec<&str> = setup.service_accounts[SA].roles.keys().copied().collect();
    assert_eq!(roles, ["roles/alloydb.client"]);
    assert!(setup.alloydb_users.is_empty());
}

#[test]
fn a_role_path_is_not_part_of_the_assumed_role_arn() {
    assert_eq!(
        assumed_role_arn("arn:aws:iam::123456789012:role/team/reports", "fedcred.r.s").as_deref(),
        Some("arn:aws:sts::123456789012:assumed-role/reports/fedcred.r.s")
    );
    assert_eq!(
        assumed_role_arn("arn:aws-cn:iam::123456789012:role/x", "s").as_deref(),
        Some("arn:aws-cn:sts::123456789012:assumed-role/x/s")
    );
    assert_eq!(assumed_role_arn("arn:aws:iam::123:role/x", "s"), None);
    assert_eq!(
        role_path("arn:aws:iam::123456789012:role/team/a/reports"),
        "/team/a/"
    );
    assert_eq!(role_path("arn:aws:iam::123456789012:role/reports"), "/");
    assert_eq!(
        assumed_role_arn("arn:aws:iam::123456789012:user/x", "s"),
        None
    );
}

#[test]
fn what_cannot_be_planned_names_the_resource_the_field_and_the_fix() {
    let mut unknown_role = orders_db("shop");
    unknown_role.resolved_role_arn = None;
    let mut no_chain = bigquery_export();
    no_chain
        .spec
        .aws
        .as_mut()
        .unwrap()
        .controller_identity
        .as_mut()
        .unwrap()
        .role_arn = None;
    let long_role = format!("arn:aws:iam::123456789012:role/{}", "r".repeat(60));
    let mut long = orders_db("a-namespace-with-a-rather-long-name");
    long.resolved_role_arn = Some(long_role);
    let mut other_account = orders_db("billing");
    other_account.resolved_role_arn = Some("arn:aws:iam::210987654321:role/billing".into());

    let errors = plan(
        &[
            unknown_role,
            no_chain,
            long,
            orders_db("shop"),
            other_account,
        ],
        &Options::default(),
    )
    .unwrap_err();
    let described: Vec<(String, &str)> = errors
        .iter()
        .map(|e| (e.resource.clone(), e.field))
        .collect();
    assert_eq!(
        described,
        [
            ("shop/orders-db".to_owned(), "aws.serviceAccount.roleArn"),
            (
                "analytics/bigquery-export".to_owned(),
                "aws.controllerIdentity.roleArn"
            ),
            (
                "a-namespace-with-a-rather-long-name/orders-db".to_owned(),
                "aws.serviceAccount.roleArn"
            ),
            ("billing/orders-db".to_owned(), "google.audience"),
        ]
    );
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(text[0].contains("--from-cluster"), "{}", text[0]);
    assert!(
        text[1].contains("set aws.controllerIdentity.roleArn"),
        "{}",
        text[1]
    );
    assert!(text[2].contains("127-byte limit"), "{}", text[2]);
    assert!(
        text[3].contains("trusts AWS account 123456789012"),
        "{}",
        text[3]
    );
}

const K8S_AUDIENCE: &str = "//iam.googleapis.com/projects/555555555555/locations/global/workloadIdentityPools/k8s-pool/providers/onprem";
const K8S_SA: &str = "report-writer@acme-reports.iam.gserviceaccount.com";
const ISSUER: &str = "https://k8s.acme-reports.example";

fn with_issuer() -> Options {
    Options {
        oidc_issuer: Some(ISSUER.into()),
        controller_role_arn: None,
    }
}

/// The report job of `namespace` reading Cloud Storage with its own ServiceAccount token
/// (examples/kubernetes-token-gcs.yaml).
fn reports_gcs(namespace: &str) -> Resource {
    resource(
        namespace,
        "reports-gcs",
        json!({
            "kubernetes": {"serviceAccount": {"name": "report-writer"}},
            "google": {
                "audience": K8S_AUDIENCE,
                "serviceAccount": K8S_SA,
                "scopes": ["https://www.googleapis.com/auth/devstorage.read_write"]
            }
        }),
        None,
    )
}

/// `fedcred agent` on a VM reading a projected token of `subject`, minted for `audience`.
fn agent_token_file(subject: Option<&str>, audience: Option<&str>) -> Resource {
    let mut kubernetes = json!({"tokenPath": "/var/run/secrets/tokens/google"});
    if let Some(audience) = audience {
        kubernetes["audience"] = audience.into();
    }
    let mut agent = resource(
        "default",
        "vm-exporter",
        json!({"kubernetes": kubernetes, "google": {"audience": K8S_AUDIENCE, "serviceAccount": K8S_SA}}),
        None,
    );
    agent.resolved_subject = subject.map(str::to_owned);
    agent
}

fn k8s_provider(setup: &Setup) -> &Provider {
    &setup.pools[&PoolKey {
        project_number: "555555555555".into(),
        pool: "k8s-pool".into(),
    }]
        .providers["onprem"]
}

/// What Google does with a ServiceAccount token's claims: the provider's mapping, then its
/// condition, both evaluated as CEL over the claims.
fn google_admits(provider: &Provider, claims: &Value) -> bool {
    let context = |attributes: &BTreeMap<String, String>| {
        let mut context = cel::Context::default();
        context.add_variable_from_value("assertion", cel::to_value(claims).unwrap());
        for prefix in ["google", "attribute"] {
            let values: std::collections::HashMap<String, String> = attributes
                .iter()
                .filter_map(|(k, v)| {
                    Some((k.strip_prefix(&format!("{prefix}."))?.to_owned(), v.clone()))
                })
                .collect();
            context.add_variable_from_value(prefix, values);
        }
        context
    };
    let mut attributes = BTreeMap::new();
    for (attribute, expression) in provider.mapping() {
        let program = cel::Program::compile(expression).expect("the mapping compiles");
        let cel::Value::String(value) = program.execute(&context(&BTreeMap::new())).unwrap() else {
            panic!("{attribute} maps to a string");
        };
        attributes.insert((*attribute).to_owned(), value.to_string());
    }
    let condition = cel::Program::compile(&provider.condition()).expect("the condition compiles");
    matches!(
        condition.execute(&context(&attributes)),
        Ok(cel::Value::Bool(true))
    )
}

/// The claims the API server writes into a token of ServiceAccount `name` of `namespace`.
fn token_claims(namespace: &str, name: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": [K8S_AUDIENCE],
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": "0b0c"}},
        "iat": 1_700_000_000, "exp": 1_700_000_600
    })
}

#[test]
fn golden_kubernetes_token_gcs() {
    golden(
        "kubernetes-token-gcs",
        &[reports_gcs("reports")],
        &with_issuer(),
    );
}

#[test]
fn golden_kubernetes_agent_with_its_own_audience() {
    golden(
        "kubernetes-agent-audience",
        &[
            reports_gcs("reports"),
            agent_token_file(
                Some("system:serviceaccount:exporters:vm-exporter"),
                Some("https://k8s.acme-reports.example/google"),
            ),
        ],
        &with_issuer(),
    );
}

#[test]
fn the_oidc_condition_admits_the_presented_subject_and_refuses_a_neighbour() {
    let setup = plan(&[reports_gcs("reports")], &with_issuer()).unwrap();
    let provider = k8s_provider(&setup);
    assert_eq!(
        provider.trusts,
        Trusts::Kubernetes {
            issuer_uri: ISSUER.into(),
            own_audience: K8S_AUDIENCE.into(),
            audiences: BTreeSet::from([K8S_AUDIENCE.to_owned()]),
        }
    );
    assert_eq!(
        provider.condition(),
        "assertion.sub in ['system:serviceaccount:reports:report-writer']"
    );
    assert!(!provider.condition().contains('*'));
    assert!(provider.allowed_audiences().is_empty());

    assert!(google_admits(
        provider,
        &token_claims("reports", "report-writer")
    ));
    // A neighbour namespace with a ServiceAccount of the same name, and another ServiceAccount
    // of the same namespace, are other principals.
    assert!(!google_admits(
        provider,
        &token_claims("reports-next", "report-writer")
    ));
    assert!(!google_admits(
        provider,
        &token_claims("reports", "default")
    ));

    // The binding names that principal only; the roles are those the scopes ask for.
    let sa = &setup.service_accounts[K8S_SA];
    assert_eq!(
        sa.members.iter().collect::<Vec<_>>(),
        [
            "principal://iam.googleapis.com/projects/555555555555/locations/global/workloadIdentityPools/k8s-pool/subject/system:serviceaccount:reports:report-writer"
        ]
    );
    assert_eq!(sa.project_id.as_deref(), Some("acme-reports"));
    assert!(sa.left_to_user.iter().any(|l| l.contains("Cloud Storage")));
    // The token goes to Google as it is: nothing on the AWS side.
    assert!(setup.roles.is_empty());
    let script = commands(&setup, &with_issuer());
    assert!(!script.contains("aws iam"), "{script}");
}

#[test]
fn a_condition_of_several_namespaces_admits_each_and_only_them() {
    let setup = plan(
        &[reports_gcs("reports"), reports_gcs("reports-staging")],
        &with_issuer(),
    )
    .unwrap();
    let provider = k8s_provider(&setup);
    assert!(google_admits(
        provider,
        &token_claims("reports", "report-writer")
    ));
    assert!(google_admits(
        provider,
        &token_claims("reports-staging", "report-writer")
    ));
    assert!(!google_admits(
        provider,
        &token_claims("reports-dev", "report-writer")
    ));
    assert_eq!(setup.service_accounts[K8S_SA].members.len(), 2);
}

#[test]
fn a_token_file_needs_its_subject_named() {
    let errors = plan(&[agent_token_file(None, None)], &with_issuer()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "kubernetes.tokenPath");
    let text = errors[0].to_string();
    assert!(
        text.contains(
            "--subject default/vm-exporter=system:serviceaccount:NAMESPACE:SERVICEACCOUNT"
        ),
        "{text}"
    );

    // Google's limit on google.subject holds for ServiceAccount subjects too.
    let mut long = reports_gcs("reports");
    long.spec.kubernetes.as_mut().unwrap().service_account = Some(crate::api::ServiceAccountName {
        name: "w".repeat(110),
    });
    let errors = plan(&[long], &with_issuer()).unwrap_err();
    assert_eq!(errors[0].field, "kubernetes.serviceAccount.name");
    assert!(
        errors[0].message.contains("127-byte limit"),
        "{}",
        errors[0]
    );

    let setup = plan(
        &[agent_token_file(
            Some("system:serviceaccount:exporters:vm-exporter"),
            None,
        )],
        &with_issuer(),
    )
    .unwrap();
    let provider = k8s_provider(&setup);
    assert!(google_admits(
        provider,
        &token_claims("exporters", "vm-exporter")
    ));
    assert!(!google_admits(
        provider,
        &token_claims("default", "vm-exporter")
    ));
}

#[test]
fn an_audience_of_its_own_lists_every_audience_of_the_provider() {
    let mine = agent_token_file(
        Some("system:serviceaccount:exporters:vm-exporter"),
        Some("https://k8s.acme-reports.example/google"),
    );
    let setup = plan(std::slice::from_ref(&mine), &with_issuer()).unwrap();
    assert_eq!(
        k8s_provider(&setup).allowed_audiences(),
        ["https://k8s.acme-reports.example/google"]
    );
    // Listing an audience replaces Google's default for everyone: the resources that keep the
    // default need it listed too.
    let setup = plan(&[reports_gcs("reports"), mine], &with_issuer()).unwrap();
    assert_eq!(
        k8s_provider(&setup).allowed_audiences(),
        [K8S_AUDIENCE, "https://k8s.acme-reports.example/google"]
    );
}

#[test]
fn the_oidc_provider_needs_the_clusters_issuer() {
    let errors = plan(
        &[reports_gcs("reports"), reports_gcs("reports-staging")],
        &Options::default(),
    )
    .unwrap_err();
    // One mistake, told once.
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].resource.as_str(), errors[0].field),
        ("reports/reports-gcs", "kubernetes")
    );
    let text = errors[0].to_string();
    assert!(text.contains("pass --oidc-issuer ISSUER"), "{text}");
    assert!(
        text.contains("kubectl get --raw /.well-known/openid-configuration"),
        "{text}"
    );

    let plain = Options {
        oidc_issuer: Some("k8s.acme-reports.example".into()),
        controller_role_arn: None,
    };
    let errors = plan(&[reports_gcs("reports")], &plain).unwrap_err();
    assert!(
        errors[0].message.contains("https:// issuer URI"),
        "{errors:?}"
    );
}

#[test]
fn a_provider_is_either_aws_or_oidc() {
    let mut tokens = reports_gcs("shop");
    tokens.spec.google.audience = AUDIENCE.into();
    let errors = plan(&[orders_db("shop"), tokens], &with_issuer()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].resource.as_str(), errors[0].field),
        ("shop/reports-gcs", "google.audience")
    );
    let text = errors[0].to_string();
    assert!(
        text.contains("shop/orders-db") && text.contains("either AWS or OIDC"),
        "{text}"
    );

    // The other way round names the OIDC provider's resources.
    let mut tokens = reports_gcs("shop");
    tokens.spec.google.audience = AUDIENCE.into();
    let errors = plan(&[tokens, orders_db("shop")], &with_issuer()).unwrap_err();
    assert_eq!(errors[0].resource, "shop/orders-db");
    assert!(
        errors[0].message.contains("shop/reports-gcs") && errors[0].message.contains("spec.aws"),
        "{}",
        errors[0]
    );

    // Both kinds in one file, each with its provider, plan together.
    let setup = plan(&[orders_db("shop"), reports_gcs("reports")], &with_issuer()).unwrap();
    assert_eq!(setup.roles.len(), 1);
    assert_eq!(setup.resources, ["shop/orders-db", "reports/reports-gcs"]);
}

#[test]
fn a_service_account_subject_is_parsed_strictly() {
    assert_eq!(
        parse_subject("system:serviceaccount:reports:report-writer"),
        Some(("reports", "report-writer"))
    );
    for bad in [
        "system:serviceaccount:reports",
        "system:serviceaccount::report-writer",
        "system:serviceaccount:reports:",
        "reports:report-writer",
        "system:serviceaccount:reports:Writer",
        "system:serviceaccount:a:b:c",
    ] {
        assert_eq!(parse_subject(bad), None, "{bad}");
    }
}

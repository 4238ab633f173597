// Golden files are read and (with FEDCRED_BLESS) written by this test module only.
#![allow(clippy::disallowed_methods)]

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
    let setup = plan(resources).expect("a plan");
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
    let setup = plan(&[orders_db("shop"), orders_db("shop-staging")]).unwrap();
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
    let setup = plan(&[public]).unwrap();
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

    let errors = plan(&[
        unknown_role,
        no_chain,
        long,
        orders_db("shop"),
        other_account,
    ])
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

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::testing::{NAMESPACE, ROLE, at, credential};

const NOW: &str = "2026-06-01T12:00:00Z";
const PRINCIPAL: &str =
    "arn:aws:sts::123456789012:assumed-role/shop-orders/fedcred.shop.orders-api";

fn annotated() -> Option<ServiceAccountSeen> {
    Some(ServiceAccountSeen::Found(BTreeMap::from([(
        ROLE_ARN_ANNOTATION.to_owned(),
        ROLE.to_owned(),
    )])))
}

fn fresh_secret() -> Option<SecretSeen> {
    Some(SecretSeen {
        owned: true,
        keys: ["access_token", "expiry", "token_type", "service_account"]
            .map(str::to_owned)
            .into(),
        expiry: Some("2026-06-01T12:45:00Z".to_owned()),
    })
}

/// A healthy resource: Ready, its ServiceAccount annotated, a fresh Secret, one injected pod.
fn healthy() -> Observed {
    Observed {
        namespace: NAMESPACE.to_owned(),
        name: "orders-db".to_owned(),
        resource: Some(
            credential("orders-db")
                .ready_until("2026-06-01T12:45:00Z")
                .build(),
        ),
        service_account: annotated(),
        secret: fresh_secret(),
        pods: vec![PodSeen {
            name: "orders-api-5d8f7".to_owned(),
            opted_in: true,
            injected: true,
        }],
        condition: Some(format!("assertion.arn in ['{PRINCIPAL}']")),
        mapping: None,
        tried: Some(Ok(Tried {
            principal: Some(PRINCIPAL.to_owned()),
            service_account: Some("orders-api@acme-shop.iam.gserviceaccount.com".to_owned()),
            expires_at: "2026-06-01T13:00:00Z".to_owned(),
        })),
        now: at(NOW),
    }
}

fn outcome(report: &Report, name: &str) -> (Outcome, String, Option<String>) {
    let s = report.steps.iter().find(|s| s.step == name).unwrap();
    (s.outcome, s.found.clone(), s.fix.clone())
}

#[test]
fn a_healthy_resource_passes_every_step() {
    let report = diagnose(&healthy());
    let names: Vec<&str> = report.steps.iter().map(|s| s.step).collect();
    assert_eq!(
        names,
        [
            "resource",
            "aws-identity",
            "principal",
            "condition",
            "exchange",
            "try",
            "secret",
            "pods"
        ]
    );
    assert!(
        report.steps.iter().all(|s| s.outcome == Outcome::Pass),
        "{}",
        report.text()
    );
    assert_eq!(report.failures(), 0);
    assert!(report.text().ends_with("no problem found\n"));
    assert!(outcome(&report, "principal").1.contains(PRINCIPAL));
    assert!(outcome(&report, "secret").1.contains("45 more minutes"));
}

#[test]
fn the_condition_is_evaluated_with_cel_for_the_principal() {
    let mapping = crate::setup::mapping_flag(&crate::setup::ATTRIBUTE_MAPPING);
    let pinned = format!("assertion.arn in ['{PRINCIPAL}']");
    assert_eq!(condition_admits(&pinned, &mapping, PRINCIPAL), Ok(true));
    let neighbour = PRINCIPAL.replace("fedcred.shop.", "fedcred.shop-b.");
    assert_eq!(condition_admits(&pinned, &mapping, &neighbour), Ok(false));
    assert_eq!(
        condition_admits(
            "attribute.aws_account == '123456789012'",
            &mapping,
            PRINCIPAL
        ),
        Ok(true)
    );
    assert_eq!(
        condition_admits(
            "google.subject.startsWith('arn:aws:sts::999')",
            &mapping,
            PRINCIPAL
        ),
        Ok(false)
    );
    assert!(condition_admits("assertion.arn in [", &mapping, PRINCIPAL).is_err());
    assert!(condition_admits("assertion.arn", &mapping, PRINCIPAL).is_err());
    assert!(condition_admits("true", "google.subject", PRINCIPAL).is_err());

    let mut refused = healthy();
    refused.condition = Some(format!("assertion.arn in ['{neighbour}']"));
    let (state, found, fix) = outcome(&diagnose(&refused), "condition");
    assert_eq!(state, Outcome::Fail);
    assert!(found.contains("refuses"), "{found}");
    assert!(fix.unwrap().contains(PRINCIPAL));
}

#[test]
fn a_missing_resource_fails_first_and_skips_the_rest() {
    let mut missing = healthy();
    missing.resource = None;
    let report = diagnose(&missing);
    assert_eq!(report.steps[0].outcome, Outcome::Fail);
    assert!(
        report.steps[0]
            .fix
            .as_ref()
            .unwrap()
            .contains("fedcred setup")
    );
    assert!(report.steps[1..].iter().all(|s| s.outcome == Outcome::Skip));
    assert_eq!(report.failures(), 1);
}

#[test]
fn a_service_account_without_role_says_how_to_annotate_it() {
    let mut observed = healthy();
    observed.service_account = Some(ServiceAccountSeen::Found(BTreeMap::new()));
    observed.resource = Some(
        credential("orders-db")
            .not_ready(
                "RoleArnMissing",
                "ServiceAccount shop/orders-api has no role",
            )
            .build(),
    );
    let report = diagnose(&observed);
    let (state, _, fix) = outcome(&report, "aws-identity");
    assert_eq!(state, Outcome::Fail);
    assert_eq!(
        fix.unwrap(),
        "kubectl -n shop annotate serviceaccount orders-api eks.amazonaws.com/role-arn=arn:aws:iam::ACCOUNT:role/ROLE"
    );
    assert_eq!(outcome(&report, "principal").0, Outcome::Skip);
    assert_eq!(outcome(&report, "exchange").0, Outcome::Fail);

    observed.service_account = Some(ServiceAccountSeen::Missing);
    let (state, found, _) = outcome(&diagnose(&observed), "aws-identity");
    assert_eq!(state, Outcome::Fail);
    assert!(found.contains("does not exist"), "{found}");
}

#[test]
fn a_failed_exchange_gives_the_reason_and_its_fix() {
    let mut observed = healthy();
    observed.resource = Some(
        credential("orders-db")
            .not_ready(
                "ImpersonationDenied",
                "Permission 'iam.serviceAccounts.getAccessToken' denied",
            )
            .status(json_status_principal())
            .build(),
    );
    let report = diagnose(&observed);
    let (state, found, fix) = outcome(&report, "exchange");
    assert_eq!(state, Outcome::Fail);
    assert!(
        found.starts_with("ImpersonationDenied: Permission"),
        "{found}"
    );
    assert!(fix.unwrap().contains(&format!("subject/{PRINCIPAL}")));
}

fn json_status_principal() -> serde_json::Value {
    serde_json::json!({"awsPrincipalArn": PRINCIPAL})
}

#[test]
fn an_exchange_tried_now_reports_what_google_answered() {
    let mut observed = healthy();
    observed.tried = Some(Err(crate::error::ExchangeError {
        reason: crate::error::Reason::AwsStsDenied,
        message: "AssumeRoleWithWebIdentity: Not authorized".to_owned(),
        principal: None,
    }));
    let (state, found, fix) = outcome(&diagnose(&observed), "try");
    assert_eq!(state, Outcome::Fail);
    assert_eq!(
        found,
        "AwsStsDenied: AssumeRoleWithWebIdentity: Not authorized"
    );
    assert!(
        fix.unwrap()
            .contains("system:serviceaccount:shop:orders-api")
    );
    observed.tried = None;
    assert_eq!(outcome(&diagnose(&observed), "try").0, Outcome::Skip);
}

#[test]
fn a_changed_role_is_a_warning_about_the_principal() {
    let mut observed = healthy();
    observed.resource = Some(
        credential("orders-db")
            .ready_until("2026-06-01T12:45:00Z")
            .status(serde_json::json!({"awsPrincipalArn": "arn:aws:sts::123456789012:assumed-role/old/fedcred.shop.orders-api"}))
            .build(),
    );
    let (state, found, _) = outcome(&diagnose(&observed), "principal");
    assert_eq!(state, Outcome::Warn);
    assert!(found.contains("assumed-role/old/"), "{found}");
}

#[test]
fn secrets_and_pods_are_checked() {
    let mut observed = healthy();
    observed.secret = Some(SecretSeen {
        expiry: Some("2026-06-01T11:00:00Z".to_owned()),
        ..fresh_secret().unwrap()
    });
    observed.pods.push(PodSeen {
        name: "orders-api-old".to_owned(),
        opted_in: true,
        injected: false,
    });
    let report = diagnose(&observed);
    assert_eq!(outcome(&report, "secret").0, Outcome::Fail);
    let (state, found, fix) = outcome(&report, "pods");
    assert_eq!(state, Outcome::Fail);
    assert!(found.contains("orders-api-old"));
    assert!(fix.unwrap().contains("rollout restart"));
    assert_eq!(report.failures(), 2);
    assert!(
        report.text().ends_with("2 steps failed\n"),
        "{}",
        report.text()
    );

    observed.secret = Some(SecretSeen {
        owned: false,
        keys: BTreeSet::new(),
        expiry: None,
    });
    observed.pods = vec![PodSeen {
        name: "unlabelled".to_owned(),
        opted_in: false,
        injected: false,
    }];
    let report = diagnose(&observed);
    assert!(outcome(&report, "secret").1.contains("not owned"));
    assert_eq!(outcome(&report, "pods").0, Outcome::Warn);
}

#[test]
fn the_json_form_names_each_step_and_outcome() {
    let value = serde_json::to_value(diagnose(&healthy())).unwrap();
    assert_eq!(value["resource"], "shop/orders-db");
    assert_eq!(value["steps"][0]["step"], "resource");
    assert_eq!(value["steps"][0]["outcome"], "pass");
    assert!(value["steps"][0].get("fix").is_none());
}

/// Every reason the controller or the agent writes has a fix of its own.
#[test]
fn every_reason_has_a_specific_fix() {
    use crate::error::Reason;
    for reason in [
        Reason::InvalidSpec,
        Reason::ControllerIdentityNotAllowed,
        Reason::ServiceAccountNotFound,
        Reason::RoleArnMissing,
        Reason::TokenRequestFailed,
        Reason::AwsCredentialsUnavailable,
        Reason::AwsStsDenied,
        Reason::AttributeConditionRejected,
        Reason::InvalidAudience,
        Reason::ProviderNotFound,
        Reason::InvalidSubjectToken,
        Reason::ImpersonationDenied,
        Reason::InvalidTokenRequest,
        Reason::Timeout,
        Reason::Upstream,
        Reason::EndpointNotAllowed,
        Reason::IssuerNotTrusted,
        Reason::SignatureNotVerified,
        Reason::AudienceMismatch,
        Reason::SubjectTokenExpired,
        Reason::IssuerUnreachable,
        Reason::TokenFileUnreadable,
    ] {
        for kubernetes in [false, true] {
            let fix = reason_fix(reason.as_str(), NAMESPACE, None, None, kubernetes);
            assert!(!fix.contains("docs/troubleshooting.md"), "{reason}: {fix}");
        }
    }
}

#[test]
fn a_kubernetes_source_is_fixed_on_its_oidc_provider() {
    let mut observed = healthy();
    observed.service_account = None;
    let refused = |reason: &str, message: &str| {
        credential("orders-db")
            .kubernetes("orders-api")
            .not_ready(reason, message)
            .build()
    };
    let subject = "system:serviceaccount:shop:orders-api";
    for (reason, says) in [
        ("IssuerNotTrusted", "--issuer-uri="),
        ("IssuerNotTrusted", "/.well-known/openid-configuration"),
        ("SignatureNotVerified", "--jwk-json-path=jwks.json"),
        ("SignatureNotVerified", "kubectl get --raw /openid/v1/jwks"),
        ("IssuerUnreachable", "--jwk-json-path=jwks.json"),
        ("AudienceMismatch", "--allowed-audiences="),
        ("AudienceMismatch", "spec.kubernetes.audience"),
        ("SubjectTokenExpired", "NTP"),
        ("AttributeConditionRejected", subject),
        ("AttributeConditionRejected", "update-oidc"),
    ] {
        observed.resource = Some(refused(reason, "Google STS refused it"));
        let report = diagnose(&observed);
        let (state, found, fix) = outcome(&report, "exchange");
        assert_eq!(state, Outcome::Fail, "{reason}");
        assert!(found.starts_with(reason), "{found}");
        let fix = fix.unwrap();
        assert!(fix.contains(says), "{reason}: {says} missing from {fix}");
        if reason != "AttributeConditionRejected" {
            assert!(
                fix.contains("update-oidc") || fix.contains("NTP"),
                "{reason}: {fix}"
            );
        }
        // What Google is shown is the ServiceAccount's subject, known without a status.
        assert_eq!(
            outcome(&report, "principal").1,
            format!("fedcred presents {subject} to Google")
        );
    }
}

#[test]
fn an_oidc_providers_condition_is_evaluated_for_the_serviceaccount_subject() {
    let mapping = crate::setup::mapping_flag(&crate::setup::OIDC_ATTRIBUTE_MAPPING);
    let subject = "system:serviceaccount:shop:orders-api";
    let pinned = format!("assertion.sub in ['{subject}']");
    assert_eq!(oidc_condition_admits(&pinned, &mapping, subject), Ok(true));
    assert_eq!(
        oidc_condition_admits(&pinned, &mapping, "system:serviceaccount:shop-b:orders-api"),
        Ok(false)
    );
    // The mapped namespace attribute comes from the kubernetes.io claim.
    assert_eq!(
        oidc_condition_admits("attribute.namespace == 'shop'", &mapping, subject),
        Ok(true)
    );
    assert_eq!(
        oidc_condition_admits("google.subject.endsWith(':default')", &mapping, subject),
        Ok(false)
    );
    assert!(oidc_condition_admits(&pinned, &mapping, "orders-api").is_err());

    // In the report: the subject the resource presents, pass or fail with the fix.
    let mut observed = healthy();
    observed.service_account = None;
    observed.tried = None;
    observed.resource = Some(
        credential("orders-db")
            .kubernetes("orders-api")
            .ready_until("2026-06-01T12:45:00Z")
            .build(),
    );
    observed.condition = Some(pinned);
    let (state, found, _) = outcome(&diagnose(&observed), "condition");
    assert_eq!(state, Outcome::Pass, "{found}");
    assert!(found.contains(subject), "{found}");
    observed.condition = Some("attribute.namespace == 'billing'".to_owned());
    let (state, found, fix) = outcome(&diagnose(&observed), "condition");
    assert_eq!(state, Outcome::Fail, "{found}");
    assert!(found.contains("refuses"), "{found}");
    assert!(
        fix.unwrap()
            .contains(&format!("assertion.sub in ['{subject}']")),
        "the fix pins the subject"
    );
}

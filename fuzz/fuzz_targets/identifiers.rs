//! The identifier checks and derivations: role ARNs, regions, audiences, service-account
//! emails, STS session names, IAM database users and project ids. Input: two lines of text.
//! Checks: every value the CRD's pattern admits is accepted by the controller's own check (a
//! resource the API server stored must never be refused later as malformed); session names
//! stay within AWS's 64 characters of `[\w+=,.@-]`; derived names are consistent.
#![no_main]

mod common;

use std::sync::LazyLock;

use fedcred_core::names::{is_role_arn, session_name};
use fedcred_core::names::{db_user, is_audience, is_service_account_email, project_id};
use fedcred_core::names::is_region;
use libfuzzer_sys::fuzz_target;
use regex::Regex;

struct Patterns {
    role_arn: Regex,
    controller_role_arn: Regex,
    region: Regex,
    audience: Regex,
    email: Regex,
    delegate: Regex,
    k8s_name: Regex,
}

static CRD: LazyLock<Patterns> = LazyLock::new(|| Patterns {
    role_arn: common::crd_pattern(&["aws", "serviceAccount", "roleArn"]),
    controller_role_arn: common::crd_pattern(&["aws", "controllerIdentity", "roleArn"]),
    region: common::crd_pattern(&["aws", "region"]),
    audience: common::crd_pattern(&["google", "audience"]),
    email: common::crd_pattern(&["google", "serviceAccount"]),
    delegate: {
        // The delegates rule is `self.all(d, d.matches(…))` on the list.
        let crd = serde_json::to_value(fedcred_core::api::crd()).unwrap();
        let rule = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["google"]["properties"]["delegates"]["x-kubernetes-validations"][0]
            ["rule"]
            .as_str()
            .unwrap()
            .to_owned();
        let start = rule.find("matches('").unwrap() + "matches('".len();
        let end = rule[start..].find("')").unwrap() + start;
        regex::RegexBuilder::new(&rule[start..end].replace("\\\\", "\\"))
            .unicode(false)
            .build()
            .unwrap()
    },
    k8s_name: common::crd_pattern(&["aws", "serviceAccount", "name"]),
});

fn session_ok(name: &str) {
    assert!(
        !name.is_empty() && name.len() <= 64,
        "{name:?} is {} long",
        name.len()
    );
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b)),
        "{name:?} has a character STS refuses"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (a, b) = text.split_once('\n').unwrap_or((&text, ""));
    let crd = &*CRD;

    for s in [a, b] {
        if crd.role_arn.is_match(s) || crd.controller_role_arn.is_match(s) {
            assert!(
                is_role_arn(s),
                "the CRD admits role ARN {s:?}, the controller refuses it"
            );
        }
        if crd.region.is_match(s) {
            assert!(
                is_region(s),
                "the CRD admits region {s:?}, the controller refuses it"
            );
        }
        if crd.audience.is_match(s) {
            assert!(
                is_audience(s),
                "the CRD admits audience {s:?}, the controller refuses it"
            );
        }
        if crd.email.is_match(s) || crd.delegate.is_match(s) {
            assert!(
                is_service_account_email(s),
                "the CRD admits service account {s:?}, the controller refuses it"
            );
        }
        if is_service_account_email(s) {
            let user = db_user(s).expect("a service account has a database user");
            assert!(s.starts_with(&user) && user.len() + ".gserviceaccount.com".len() == s.len());
            if s.ends_with(".iam.gserviceaccount.com") {
                let project = project_id(s).expect("a project in the email");
                assert!(s.contains(&format!("@{project}.iam.")), "{s} -> {project}");
            }
        }
        let _ = project_id(s);
        let _ = db_user(s);
    }

    let with_sa = session_name(a, Some(b));
    let without = session_name(a, None);
    session_ok(&with_sa);
    session_ok(&without);
    assert_eq!(
        with_sa,
        session_name(a, Some(b)),
        "session names are deterministic"
    );
    if crd.k8s_name.is_match(a) && crd.k8s_name.is_match(b) {
        let plain = format!("fedcred.{a}.{b}");
        if plain.len() <= 64 {
            assert_eq!(with_sa, plain, "a short name is kept as is");
        } else {
            // 31 readable characters, a dash and 128 bits of hash in hex.
            assert_eq!(with_sa.len(), 64, "{with_sa}");
            assert!(
                with_sa.starts_with(&plain[..31]),
                "{with_sa} keeps a readable prefix"
            );
        }
    }
});

//! A FederatedCredential spec as JSON (what `fedcred exchange -f` and the API server hand the
//! exchange engine) through `exchange::plan`. Checks: a planned identity only carries values
//! the controller's own checks accept; specs whose fields the CRD admits are planned.
#![no_main]

mod common;

use std::sync::LazyLock;

use fedcred::api::FederatedCredentialSpec;
use fedcred::aws::is_role_arn;
use fedcred::exchange::{
    AwsSource, ControllerIdentityPolicy, Defaults, is_audience, is_service_account_email, plan,
};
use fedcred::subject_token::is_region;
use libfuzzer_sys::fuzz_target;
use regex::Regex;

struct Patterns {
    role_arn: Regex,
    region: Regex,
    audience: Regex,
    email: Regex,
}

static CRD: LazyLock<Patterns> = LazyLock::new(|| Patterns {
    role_arn: common::crd_pattern(&["aws", "serviceAccount", "roleArn"]),
    region: common::crd_pattern(&["aws", "region"]),
    audience: common::crd_pattern(&["google", "audience"]),
    email: common::crd_pattern(&["google", "serviceAccount"]),
});

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<FederatedCredentialSpec>(data) else {
        return;
    };
    let crd = &*CRD;
    for namespace in ["shop", "other"] {
        let defaults = Defaults {
            region: Some("us-east-1".to_owned()),
            controller_identity: ControllerIdentityPolicy::new(["shop"]),
            ..Defaults::default()
        };
        match plan(namespace, &spec, &defaults) {
            Ok(key) => {
                assert!(is_audience(&key.audience), "{key:?}");
                assert!(is_region(&key.region), "{key:?}");
                assert!(
                    key.service_account
                        .as_deref()
                        .is_none_or(is_service_account_email)
                );
                assert!(key.delegates.iter().all(|d| is_service_account_email(d)));
                assert!((600..=43200).contains(&key.lifetime_seconds));
                let role = match &key.source {
                    AwsSource::ServiceAccount { role_arn, .. } => role_arn,
                    AwsSource::Controller { role_arn } => {
                        assert_eq!(
                            namespace, "shop",
                            "controller identity outside the allowed namespace"
                        );
                        role_arn
                    }
                };
                assert!(role.as_deref().is_none_or(is_role_arn), "{key:?}");
                let mut sorted = key.scopes.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted, key.scopes, "scopes are sorted and unique");
                let _ = key.describe();
            }
            Err(e) => {
                assert!(!e.message.is_empty());
                let ours = match (&spec.aws.service_account, &spec.aws.controller_identity) {
                    (Some(sa), None) => sa
                        .role_arn
                        .as_deref()
                        .is_none_or(|a| crd.role_arn.is_match(a)),
                    (None, Some(ci)) => {
                        namespace == "shop"
                            && ci
                                .role_arn
                                .as_deref()
                                .is_none_or(|a| crd.role_arn.is_match(a))
                    }
                    _ => false,
                };
                let admitted = ours
                    && crd.audience.is_match(&spec.google.audience)
                    && spec
                        .aws
                        .region
                        .as_deref()
                        .is_none_or(|r| crd.region.is_match(r))
                    && spec
                        .google
                        .service_account
                        .as_deref()
                        .is_none_or(|s| crd.email.is_match(s))
                    && spec.google.delegates.iter().all(|d| crd.email.is_match(d))
                    && (600..=43200).contains(&spec.google.token_lifetime_seconds);
                assert!(!admitted, "a spec the CRD admits is refused: {}", e.message);
            }
        }
    }
});

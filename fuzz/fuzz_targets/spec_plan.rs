//! A FederatedCredential spec as JSON (what `fedcred exchange -f` and the API server hand the
//! exchange engine) through the CRD's own validation (`validate::federated_credential`) and
//! `exchange::plan`. Checks: plan never panics; every spec the validator admits is planned
//! (where its identity source is allowed), and the planned identity only carries values the
//! core's own checks accept.
#![no_main]

use fedcred_core::api::FederatedCredentialSpec;
use fedcred_core::exchange::{IdentitySource, ControllerIdentityPolicy, Defaults, plan};
use fedcred_core::names::{is_audience, is_region, is_role_arn, is_service_account_email};
use fedcred_core::validate;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(spec) = serde_json::from_value::<FederatedCredentialSpec>(raw.clone()) else {
        return;
    };
    let admitted = validate::federated_credential(&json!({ "spec": raw })).is_ok();
    for namespace in ["shop", "other"] {
        let defaults = Defaults {
            region: Some("us-east-1".to_owned()),
            controller_identity: ControllerIdentityPolicy::parse(["shop"]).unwrap(),
            // Endpoint refusals are checked in fedcred-core's tests; here every admitted
            // endpoint is planned.
            endpoints: fedcred_core::exchange::EndpointPolicy::any(),
            ..Defaults::default()
        };
        let allowed = spec
            .aws
            .as_ref()
            .is_none_or(|aws| aws.controller_identity.is_none())
            || namespace == "shop";
        // A token file is read only by the agent, never by the controller planned for here.
        let allowed = allowed
            && spec
                .kubernetes
                .as_ref()
                .is_none_or(|k| k.token_path.is_none());
        match plan(namespace, &spec, &defaults) {
            Ok(key) if admitted => {
                assert!(is_audience(&key.audience), "{key:?}");
                assert!(
                    key.source.is_kubernetes() || is_region(&key.region),
                    "{key:?}"
                );
                assert!(
                    key.service_account
                        .as_deref()
                        .is_none_or(is_service_account_email)
                );
                assert!(key.delegates.iter().all(|d| is_service_account_email(d)));
                assert!((600..=43200).contains(&key.lifetime_seconds));
                let role = match &key.source {
                    IdentitySource::ServiceAccount { role_arn, .. } => role_arn,
                    IdentitySource::Controller { role_arn } => {
                        assert_eq!(
                            namespace, "shop",
                            "controller identity outside the allowed namespace"
                        );
                        role_arn
                    }
                    IdentitySource::KubernetesToken { .. } | IdentitySource::TokenFile { .. } => {
                        &None
                    }
                };
                assert!(role.as_deref().is_none_or(is_role_arn), "{key:?}");
                let mut sorted = key.scopes.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted, key.scopes, "scopes are sorted and unique");
                let _ = key.describe();
            }
            Ok(key) => {
                let _ = key.describe();
            }
            Err(e) => {
                assert!(!e.message.is_empty());
                assert!(
                    !(admitted && allowed),
                    "a spec the CRD admits is refused in {namespace}: {}",
                    e.message
                );
            }
        }
    }
});

//! Raw AdmissionReview bodies through `webhook::review::parse` and, when they parse, `answer`
//! with every kind of lookup result. Checks: a parsed review is a v1 Pod review with a uid in
//! the request's namespace; every answer is a well-formed AdmissionReview for that uid; a
//! refusal never carries a patch; a patch is a JSON array of add/replace operations.
#![no_main]

mod common;

use std::sync::LazyLock;

use fedcred_core::api::FederatedCredential;
use fedcred_core::inject::InjectConfig;
use fedcred_core::admission::{Lookup, answer, encode, parse};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

static CREDENTIAL: LazyLock<FederatedCredential> = LazyLock::new(|| {
    serde_json::from_value(json!({
        "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "orders-db", "namespace": "shop"},
        "spec": {
            "aws": {"serviceAccount": {"name": "orders-api"}, "region": "ap-northeast-1"},
            "google": {
                "audience": "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop",
                "serviceAccount": "orders-api@acme-shop.iam.gserviceaccount.com"
            },
            "alloydb": {"instances": [{"uri": "projects/acme-shop/locations/asia-northeast1/clusters/orders/instances/orders-primary"}]}
        },
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "TokenIssued",
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    }))
    .unwrap()
});

fuzz_target!(|data: &[u8]| {
    let parsed = match parse(data) {
        Ok(parsed) => parsed,
        Err(bad) => {
            assert!(!bad.0.is_empty());
            return;
        }
    };
    // serde_json skips members a struct ignores without checking their UTF-8, so a review
    // may parse while the whole body is not valid JSON text; the fields read are checked.
    let Ok(raw) = serde_json::from_slice::<Value>(data) else {
        assert!(
            std::str::from_utf8(data).is_err(),
            "a parsed review that is not JSON"
        );
        check_answers(&parsed);
        return;
    };
    let request = &raw["request"];
    assert_eq!(raw["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(request["kind"]["kind"], "Pod");
    assert!(!parsed.uid.is_empty());
    assert_eq!(
        parsed.pod.metadata.namespace.as_deref(),
        request["namespace"].as_str(),
        "the pod is looked at in another namespace than the request's"
    );
    if let Some((namespace, name)) = parsed.wanted() {
        assert_eq!(Some(namespace), request["namespace"].as_str());
        assert!(!name.is_empty() && name.trim() == name);
    }
    check_answers(&parsed);
});

fn check_answers(parsed: &fedcred_core::admission::Parsed) {
    let config = InjectConfig::new("ghcr.io/example/fedcred:fuzz");
    for lookup in [
        Lookup::NotNeeded,
        Lookup::Missing,
        Lookup::Failed("the API server did not answer".to_owned()),
        Lookup::Found(Box::new(CREDENTIAL.clone())),
    ] {
        let reply = answer(parsed, lookup, &config);
        common::check_answer(&encode(reply), &parsed.uid);
    }
}

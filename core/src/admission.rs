//! The AdmissionReview exchange as pure functions, on kube's `admission.k8s.io/v1` types:
//! [`parse`] reads a request body, [`Parsed::wanted`] says which FederatedCredential to look
//! up, and [`answer`] turns the pod and what the lookup found into the review to send back.
//! What the pod gets is [`crate::inject`]'s decision alone. No I/O here.

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::api::FederatedCredential;
use crate::inject::{InjectConfig, Outcome, Refusal, mutate};
use crate::names::{is_object_name, requested_credential};

const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";

/// Why a body is not an AdmissionReview this webhook answers; the server replies 400 with
/// the message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

/// A well-formed review of a pod.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// The request without its object, for the response.
    request: AdmissionRequest<Pod>,
    /// Echoed in the response; the API server matches them.
    pub uid: String,
    /// The pod, its namespace filled from the request when the object lacks it (pods that
    /// controllers create usually do).
    pub pod: Pod,
    /// The request is a dry run; the mutation has no side effects, so the answer is the same.
    pub dry_run: bool,
}

/// Reads an AdmissionReview of a pod; anything else is a [`BadReview`].
pub fn parse(body: &[u8]) -> Result<Parsed, BadReview> {
    let bad = |m: &str| BadReview(m.to_owned());
    let review: AdmissionReview<Pod> = serde_json::from_slice(body)
        .map_err(|e| BadReview(format!("the body is not an AdmissionReview of a Pod: {e}")))?;
    if review.types.api_version != API_VERSION || review.types.kind != KIND {
        return Err(bad(
            "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview",
        ));
    }
    let mut request: AdmissionRequest<Pod> = review
        .try_into()
        .map_err(|_| bad("the review has no request"))?;
    if request.uid.is_empty() {
        return Err(bad("the request has no uid"));
    }
    let gvk = &request.kind;
    if !(gvk.group.is_empty() && gvk.version == "v1" && gvk.kind == "Pod") {
        return Err(bad("the request is not about a v1 Pod"));
    }
    let namespace = request
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("the request has no namespace"))?;
    let mut pod = request
        .object
        .take()
        .ok_or_else(|| bad("the request has no object"))?;
    request.old_object = None;
    match pod.metadata.namespace.as_deref() {
        None | Some("") => pod.metadata.namespace = Some(namespace),
        Some(own) if own == namespace => {}
        // The lookup reads the pod's namespace: a pod claiming another one would be injected
        // with that namespace's credential.
        Some(own) => {
            return Err(BadReview(format!(
                "the pod's namespace {own:?} is not the request's namespace {namespace:?}"
            )));
        }
    }
    Ok(Parsed {
        uid: request.uid.clone(),
        dry_run: request.dry_run,
        request,
        pod,
    })
}

impl Parsed {
    /// Whether this is a creation, the only operation the webhook mutates.
    pub fn creates(&self) -> bool {
        matches!(self.request.operation, Operation::Create)
    }

    /// The FederatedCredential to look up, as namespace and name: `None` when the answer does
    /// not depend on one (not a creation, not opted in, no credential named).
    pub fn wanted(&self) -> Option<(&str, &str)> {
        if !self.creates() {
            return None;
        }
        let name = requested_credential(
            self.pod.metadata.labels.as_ref(),
            self.pod.metadata.annotations.as_ref(),
        )?;
        let namespace = self.pod.metadata.namespace.as_deref()?;
        // Only an object name is looked up: the name becomes part of the API request's path,
        // where `orders-db/status` or `x?watch=true` would read something else. Any other
        // name is answered as not found.
        is_object_name(name).then_some((namespace, name))
    }
}

/// What looking up [`Parsed::wanted`] found.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// Nothing was looked up, since [`Parsed::wanted`] was `None`.
    NotNeeded,
    Found(Box<FederatedCredential>),
    Missing,
    /// The API server could not be asked; the pod is refused, since admitting it without its
    /// sidecars would hand it no credentials, silently.
    Failed(String),
}

/// The AdmissionReview to send back for `parsed`, given what the lookup found.
pub fn answer(
    parsed: &Parsed,
    lookup: Lookup,
    config: &InjectConfig,
) -> AdmissionReview<DynamicObject> {
    let outcome = if !parsed.creates() {
        Outcome::Unchanged
    } else {
        match lookup {
            Lookup::Failed(error) => Outcome::Refuse(Refusal::LookupFailed {
                namespace: parsed.pod.metadata.namespace.clone().unwrap_or_default(),
                name: requested_credential(
                    parsed.pod.metadata.labels.as_ref(),
                    parsed.pod.metadata.annotations.as_ref(),
                )
                .unwrap_or_default()
                .to_owned(),
                error,
            }),
            Lookup::Found(fc) => mutate(&parsed.pod, Some(&fc), config),
            Lookup::NotNeeded | Lookup::Missing => mutate(&parsed.pod, None, config),
        }
    };
    response(&parsed.request, outcome).into_review()
}

/// Whether `review` admits the pod.
pub fn allowed(review: &AdmissionReview<DynamicObject>) -> bool {
    review.response.as_ref().is_some_and(|r| r.allowed)
}

fn response(request: &AdmissionRequest<Pod>, outcome: Outcome) -> AdmissionResponse {
    let admitted = AdmissionResponse::from(request);
    match outcome {
        Outcome::Unchanged => admitted,
        Outcome::Patch { ops, warnings } => {
            // The operations are RFC 6902 operations built by `inject`; one that is not
            // refuses the pod rather than admitting it without its sidecars.
            let patch = serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops))
                .map_err(|e| e.to_string())
                .and_then(|patch| {
                    admitted
                        .clone()
                        .with_patch(patch)
                        .map_err(|e| e.to_string())
                });
            match patch {
                Ok(mut r) => {
                    if !warnings.is_empty() {
                        r.warnings = Some(warnings);
                    }
                    r
                }
                Err(e) => forbidden(admitted, format!("fedcred built an unusable patch: {e}")),
            }
        }
        Outcome::Refuse(refusal) => forbidden(admitted, refusal.to_string()),
    }
}

fn forbidden(response: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut denied = response.deny(message);
    denied.result.code = 403;
    denied.result.reason = "Forbidden".to_owned();
    denied.result.status = Some(kube::core::response::StatusSummary::Failure);
    denied
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// The review to send back, as JSON.
    fn reply(parsed: &Parsed, lookup: Lookup, config: &InjectConfig) -> Value {
        serde_json::to_value(answer(parsed, lookup, config)).unwrap()
    }

    fn review(pod: Value) -> Value {
        json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "dryRun": false,
            }
        })
    }

    fn labelled_pod(credential: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": "orders-",
                "labels": {"fedcred.io/inject": "true"},
                "annotations": {"fedcred.io/credential": credential},
            },
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        })
    }

    fn fc(ready: bool) -> FederatedCredential {
        let mut v = json!({
            "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
            "metadata": {"name": "orders-db", "namespace": "shop"},
            "spec": {
                "aws": {"serviceAccount": {"name": "orders-api"}, "region": "ap-northeast-1"},
                "google": {
                    "audience": "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop",
                    "serviceAccount": "orders-api@acme-shop.iam.gserviceaccount.com"
                },
            },
        });
        if ready {
            v["status"] = json!({"conditions": [{"type": "Ready", "status": "True",
                "reason": "TokenIssued", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        }
        serde_json::from_value(v).unwrap()
    }

    fn parse_value(v: &Value) -> Result<Parsed, BadReview> {
        parse(&serde_json::to_vec(v).unwrap())
    }

    fn config() -> InjectConfig {
        InjectConfig::new("ghcr.io/example/fedcred:test")
    }

    fn decoded_patch(response: &Value) -> Vec<Value> {
        // kube writes the patch's bytes as a JSON array of numbers, which the API server
        // reads as its []byte as well as base64.
        let bytes: Vec<u8> = serde_json::from_value(response["patch"].clone()).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn a_labelled_pod_with_a_ready_credential_gets_a_patch_without_warnings() {
        let parsed = parse_value(&review(labelled_pod("orders-db"))).unwrap();
        assert_eq!(parsed.wanted(), Some(("shop", "orders-db")));
        assert_eq!(parsed.pod.metadata.namespace.as_deref(), Some("shop"));
        let out = reply(&parsed, Lookup::Found(Box::new(fc(true))), &config());
        assert_eq!(out["apiVersion"], API_VERSION);
        assert_eq!(out["kind"], KIND);
        let r = &out["response"];
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        assert!(r.get("warnings").is_none());
        let ops = decoded_patch(r);
        assert!(
            ops.iter()
                .any(|op| op["value"].to_string().contains("fedcred-metadata"))
        );
    }

    #[test]
    fn a_credential_that_is_not_ready_admits_with_a_warning() {
        let parsed = parse_value(&review(labelled_pod("orders-db"))).unwrap();
        let r = &reply(&parsed, Lookup::Found(Box::new(fc(false))), &config())["response"];
        assert_eq!(r["allowed"], true);
        assert!(r["warnings"][0].as_str().unwrap().contains("not Ready"));
    }

    #[test]
    fn a_missing_credential_is_refused_with_its_name() {
        let parsed = parse_value(&review(labelled_pod("orders-db"))).unwrap();
        let r = &reply(&parsed, Lookup::Missing, &config())["response"];
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 403);
        let message = r["status"]["message"].as_str().unwrap();
        assert!(message.contains("shop/orders-db"), "{message}");
    }

    #[test]
    fn a_failed_lookup_is_refused_and_says_retry() {
        let parsed = parse_value(&review(labelled_pod("orders-db"))).unwrap();
        let r = &reply(&parsed, Lookup::Failed("timed out".into()), &config())["response"];
        assert_eq!(r["allowed"], false);
        assert!(
            r["status"]["message"]
                .as_str()
                .unwrap()
                .contains("timed out")
        );
    }

    #[test]
    fn an_unlabelled_pod_is_admitted_unchanged_without_a_lookup() {
        let mut pod = labelled_pod("orders-db");
        pod["metadata"]["labels"] = json!({});
        let parsed = parse_value(&review(pod)).unwrap();
        assert_eq!(parsed.wanted(), None);
        let r = &reply(&parsed, Lookup::NotNeeded, &config())["response"];
        assert_eq!(
            (&r["uid"], &r["allowed"]),
            (&json!(parsed.uid), &json!(true))
        );
        assert!(r.get("patch").is_none());
    }

    #[test]
    fn a_labelled_pod_without_the_annotation_is_refused_without_a_lookup() {
        let mut pod = labelled_pod("");
        pod["metadata"]["annotations"] = json!({});
        let parsed = parse_value(&review(pod)).unwrap();
        assert_eq!(parsed.wanted(), None);
        let r = &reply(&parsed, Lookup::NotNeeded, &config())["response"];
        assert_eq!(r["allowed"], false);
    }

    #[test]
    fn updates_are_admitted_unchanged() {
        let mut v = review(labelled_pod("orders-db"));
        v["request"]["operation"] = json!("UPDATE");
        let parsed = parse_value(&v).unwrap();
        assert_eq!(parsed.wanted(), None);
        assert_eq!(
            reply(&parsed, Lookup::NotNeeded, &config())["response"]["allowed"],
            true
        );
    }

    #[test]
    fn a_pod_claiming_another_namespace_than_the_request_is_a_bad_request() {
        let mut pod = labelled_pod("orders-db");
        pod["metadata"]["namespace"] = json!("payments");
        let err = parse_value(&review(pod)).unwrap_err();
        assert!(err.0.contains("\"payments\""), "{err}");
        let mut same = labelled_pod("orders-db");
        same["metadata"]["namespace"] = json!("shop");
        assert_eq!(
            parse_value(&review(same)).unwrap().wanted(),
            Some(("shop", "orders-db"))
        );
    }

    #[test]
    fn a_credential_name_that_is_not_an_object_name_is_refused_without_a_lookup() {
        for name in [
            "orders-db/status",
            "orders-db?watch=true",
            "../../api/v1/namespaces/kube-system/secrets/x",
            "%2e%2e",
            "Orders-DB",
            "-orders",
            "orders..db",
        ] {
            let parsed = parse_value(&review(labelled_pod(name))).unwrap();
            assert_eq!(parsed.wanted(), None, "{name} is looked up");
            let r = &reply(&parsed, Lookup::NotNeeded, &config())["response"];
            assert_eq!(r["allowed"], false, "{name}");
            assert!(r.get("patch").is_none());
        }
        for name in ["orders-db", "orders.db", "a", " orders-db "] {
            let parsed = parse_value(&review(labelled_pod(name))).unwrap();
            assert_eq!(parsed.wanted(), Some(("shop", name.trim())), "{name}");
        }
    }

    #[test]
    fn malformed_reviews_are_bad_requests() {
        assert!(parse(b"").is_err());
        assert!(parse(b"\x00\xff garbage").is_err());
        assert!(parse(b"{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\"").is_err());
        assert!(parse(b"[]").is_err());
        assert!(parse(b"null").is_err());
        let good = review(labelled_pod("orders-db"));
        let broken: [(&str, Value); 8] = [
            ("/apiVersion", json!("admission.k8s.io/v1beta1")),
            ("/kind", json!("Pod")),
            ("/request", Value::Null),
            ("/request/uid", json!("")),
            ("/request/kind/kind", json!("Deployment")),
            ("/request/namespace", Value::Null),
            ("/request/object", json!("a string")),
            ("/request/object/spec", json!({"containers": "none"})),
        ];
        for (pointer, value) in broken {
            let mut v = good.clone();
            *v.pointer_mut(pointer).unwrap() = value;
            assert!(parse_value(&v).is_err(), "{pointer} accepted");
        }
    }
}

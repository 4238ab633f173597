//! The AdmissionReview exchange as pure functions, on kube's `admission.k8s.io/v1` types:
//! [`parse`] reads a request body, [`Parsed::wanted`] says which FederatedCredential to look
//! up, and [`answer`] turns the pod and what the lookup found into the review to send back.
//! What the pod gets is [`crate::inject`]'s decision alone. No I/O here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
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
    request: AdmissionRequest<ReviewedPod>,
    /// Echoed in the response; the API server matches them.
    pub uid: String,
    /// The pod, its namespace filled from the request when the object lacks it (pods that
    /// controllers create usually do).
    pub pod: Pod,
    /// The request is a dry run; the mutation has no side effects, so the answer is the same.
    pub dry_run: bool,
}

/// A pod as a review carries it, read as k8s-openapi reads a [`Pod`] (`apiVersion` and `kind`,
/// when present, must be `v1` and `Pod`; unknown fields are skipped) except for
/// `metadata.managedFields`, which is skipped unread. The field managers' record is the
/// largest part of a pod a controller creates (a tree naming every field it set); injection
/// never reads it, and building it took about a third of the time spent reading a review.
#[derive(Clone, Debug, Default)]
pub struct ReviewedPod(Pod);

impl k8s_openapi::Resource for ReviewedPod {
    const API_VERSION: &'static str = <Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Pod as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for ReviewedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

impl serde::Serialize for ReviewedPod {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for ReviewedPod {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error, Unexpected};

        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct PodIn {
            api_version: Option<String>,
            kind: Option<String>,
            metadata: Option<MetaIn>,
            spec: Option<PodSpec>,
            status: Option<PodStatus>,
        }
        // ObjectMeta's fields but managedFields, which serde skips as an unknown field.
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct MetaIn {
            annotations: Option<BTreeMap<String, String>>,
            creation_timestamp: Option<Time>,
            deletion_grace_period_seconds: Option<i64>,
            deletion_timestamp: Option<Time>,
            finalizers: Option<Vec<String>>,
            generate_name: Option<String>,
            generation: Option<i64>,
            labels: Option<BTreeMap<String, String>>,
            name: Option<String>,
            namespace: Option<String>,
            owner_references: Option<Vec<OwnerReference>>,
            resource_version: Option<String>,
            self_link: Option<String>,
            uid: Option<String>,
        }

        let pod = PodIn::deserialize(deserializer)?;
        if let Some(v) = pod.api_version.as_deref().filter(|v| *v != "v1") {
            return Err(D::Error::invalid_value(Unexpected::Str(v), &"v1"));
        }
        if let Some(k) = pod.kind.as_deref().filter(|k| *k != "Pod") {
            return Err(D::Error::invalid_value(Unexpected::Str(k), &"Pod"));
        }
        let metadata = pod
            .metadata
            .map(|m| ObjectMeta {
                annotations: m.annotations,
                creation_timestamp: m.creation_timestamp,
                deletion_grace_period_seconds: m.deletion_grace_period_seconds,
                deletion_timestamp: m.deletion_timestamp,
                finalizers: m.finalizers,
                generate_name: m.generate_name,
                generation: m.generation,
                labels: m.labels,
                managed_fields: None,
                name: m.name,
                namespace: m.namespace,
                owner_references: m.owner_references,
                resource_version: m.resource_version,
                self_link: m.self_link,
                uid: m.uid,
            })
            .unwrap_or_default();
        Ok(ReviewedPod(Pod {
            metadata,
            spec: pod.spec,
            status: pod.status,
        }))
    }
}

/// Reads an AdmissionReview of a pod; anything else is a [`BadReview`].
pub fn parse(body: &[u8]) -> Result<Parsed, BadReview> {
    let bad = |m: &str| BadReview(m.to_owned());
    let review: AdmissionReview<ReviewedPod> = serde_json::from_slice(body)
        .map_err(|e| BadReview(format!("the body is not an AdmissionReview of a Pod: {e}")))?;
    if review.types.api_version != API_VERSION || review.types.kind != KIND {
        return Err(bad(
            "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview",
        ));
    }
    let mut request: AdmissionRequest<ReviewedPod> = review
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
    let ReviewedPod(mut pod) = request
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

/// The body to send for `review`. kube's types write the patch's bytes as a JSON array of
/// numbers; the API server's Go types write `[]byte` as base64, as the `admission.k8s.io/v1`
/// reference describes the field and other webhooks send it. The API server reads both, but
/// the array is 2.7 times longer (a 3.5 KB patch becomes 9.4 KB) and costs the webhook and the
/// API server a number per byte to write and read.
pub fn encode(mut review: AdmissionReview<DynamicObject>) -> serde_json::Value {
    use base64::Engine as _;
    let patch = review.response.as_mut().and_then(|r| r.patch.take());
    // Serializing kube's review types cannot fail: every map in them has string keys.
    let mut value = serde_json::to_value(&review).unwrap_or_default();
    if let (Some(patch), Some(response)) = (
        patch,
        value.get_mut("response").and_then(|r| r.as_object_mut()),
    ) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(patch);
        response.insert("patch".to_owned(), serde_json::Value::String(encoded));
    }
    value
}

/// Whether `review` admits the pod.
pub fn allowed(review: &AdmissionReview<DynamicObject>) -> bool {
    review.response.as_ref().is_some_and(|r| r.allowed)
}

fn response(request: &AdmissionRequest<ReviewedPod>, outcome: Outcome) -> AdmissionResponse {
    let admitted = AdmissionResponse::from(request);
    match outcome {
        Outcome::Unchanged => admitted,
        Outcome::Patch { ops, warnings } => {
            // The operations are RFC 6902 operations built by `inject`; one that is not
            // refuses the pod rather than admitting it without its sidecars.
            let patch = rfc6902(&ops)
                .and_then(|()| serde_json::to_vec(&ops).map_err(|e| e.to_string()))
                .and_then(|bytes| {
                    // kube sets the patch type only with a patch of its own types; the
                    // operations, already JSON, are written as they are instead of being
                    // read into those types first.
                    let mut r = admitted
                        .clone()
                        .with_patch(json_patch::Patch(Vec::new()))
                        .map_err(|e| e.to_string())?;
                    r.patch = Some(bytes);
                    Ok(r)
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

/// Checks that `ops` is a list of RFC 6902 operations the API server applies: an `op` it
/// knows, a `path` that is a JSON pointer, and a `value` where the operation needs one.
fn rfc6902(ops: &[serde_json::Value]) -> Result<(), String> {
    for op in ops {
        let kind = op.get("op").and_then(|o| o.as_str()).unwrap_or_default();
        let pointer = |key: &str| {
            op.get(key)
                .and_then(|p| p.as_str())
                .is_some_and(|p| p.is_empty() || p.starts_with('/'))
        };
        let valid = pointer("path")
            && match kind {
                "add" | "replace" | "test" => op.get("value").is_some(),
                "remove" => true,
                "move" | "copy" => pointer("from"),
                _ => false,
            };
        if !valid {
            return Err(format!("not an RFC 6902 operation: {op}"));
        }
    }
    Ok(())
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
        encode(answer(parsed, lookup, config))
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
        use base64::Engine as _;
        let encoded = response["patch"]
            .as_str()
            .expect("the patch is a base64 string, as Go writes []byte");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn the_pod_is_read_without_its_managed_fields_and_with_everything_else() {
        let mut pod = labelled_pod("orders-db");
        let meta = json!({
            "name": "orders-1", "generateName": "orders-", "namespace": "shop",
            "uid": "0e8f5d8e-3c51-4a5e-8a7e-2d4f5b6c7d8e", "resourceVersion": "7",
            "generation": 2, "creationTimestamp": "2026-11-20T09:12:45Z",
            "deletionGracePeriodSeconds": 30, "deletionTimestamp": "2026-11-20T09:13:45Z",
            "finalizers": ["example.com/keep"], "selfLink": "/api/v1/namespaces/shop/pods/orders-1",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "orders",
                "uid": "6b0a4a42-90f1-4a5e-9d3b-7f1c2e8d5a10", "controller": true}],
        });
        for (k, v) in meta.as_object().unwrap() {
            pod["metadata"][k] = v.clone();
        }
        pod["status"] = json!({"phase": "Pending"});
        let as_k8s_openapi_reads_it: Pod = serde_json::from_value(pod.clone()).unwrap();
        pod["metadata"]["managedFields"] = json!([{"manager": "kube-controller-manager",
            "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]);
        let parsed = parse_value(&review(pod.clone())).unwrap();
        assert_eq!(parsed.pod, as_k8s_openapi_reads_it);
        assert!(parsed.pod.metadata.managed_fields.is_none());

        // apiVersion and kind are checked as k8s-openapi checks them.
        for (field, value) in [("apiVersion", "v2"), ("kind", "Service")] {
            let mut other = pod.clone();
            other[field] = json!(value);
            let refused = parse_value(&review(other)).unwrap_err();
            assert!(refused.0.contains(value), "{refused}");
        }
        let mut bare = pod;
        bare.as_object_mut().unwrap().remove("apiVersion");
        bare.as_object_mut().unwrap().remove("kind");
        assert!(parse_value(&review(bare)).is_ok());
    }

    #[test]
    fn only_rfc_6902_operations_pass() {
        assert_eq!(rfc6902(&[]), Ok(()));
        for ok in [
            json!({"op": "add", "path": "/spec/volumes/-", "value": {}}),
            json!({"op": "replace", "path": "/metadata/annotations/a", "value": "b"}),
            json!({"op": "remove", "path": "/spec/x"}),
            json!({"op": "copy", "from": "/a", "path": "/b"}),
        ] {
            assert_eq!(rfc6902(std::slice::from_ref(&ok)), Ok(()), "{ok}");
        }
        for bad in [
            json!({"op": "add", "path": "/spec/volumes/-"}),
            json!({"op": "add", "path": "spec", "value": 1}),
            json!({"op": "merge", "path": "/spec", "value": 1}),
            json!({"op": "move", "path": "/a"}),
            json!(["add", "/spec"]),
        ] {
            assert!(rfc6902(std::slice::from_ref(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_patch_is_sent_as_base64_and_nothing_else_changes() {
        let parsed = parse_value(&review(labelled_pod("orders-db"))).unwrap();
        let answered = answer(&parsed, Lookup::Found(Box::new(fc(true))), &config());
        let as_kube_writes_it = serde_json::to_value(&answered).unwrap();
        let sent = encode(answered);
        let patch = decoded_patch(&sent["response"]);
        let bytes: Vec<u8> =
            serde_json::from_value(as_kube_writes_it["response"]["patch"].clone()).unwrap();
        assert_eq!(
            patch,
            serde_json::from_slice::<Vec<Value>>(&bytes).unwrap(),
            "the same operations"
        );
        let (mut a, mut b) = (sent.clone(), as_kube_writes_it);
        a["response"].as_object_mut().unwrap().remove("patch");
        b["response"].as_object_mut().unwrap().remove("patch");
        assert_eq!(a, b, "every other field as kube writes it");
        assert_eq!(sent["response"]["patchType"], "JSONPatch");
        // A review without a patch gains none.
        let unlabelled = parse_value(&review(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        })))
        .unwrap();
        let sent = encode(answer(&unlabelled, Lookup::NotNeeded, &config()));
        assert!(sent["response"].get("patch").is_none(), "{sent}");
        assert_eq!(sent["response"]["allowed"], true);
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

//! Fixtures that read like sentences, shared by the unit tests here and the workspace's
//! integration tests and benchmarks (feature `testing`):
//!
//! ```
//! # use fedcred_core::testing::{credential, pod};
//! let fc = credential("orders-db").alloydb_instance(5432).ready_until("2026-01-01T01:00:00Z");
//! let pod = pod("orders").using("orders-db").declaring_port(8080);
//! # let _ = (fc.build(), pod.build());
//! ```
//!
//! A fixture is a JSON document underneath, so the same fixture can be applied to a real API
//! server (`.json()`) or used as a typed object (`.build()`).

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::api::{FederatedCredential, FederatedCredentialSpec};
use crate::exchange::{Defaults, IdentityKey, Issued, plan};
use crate::names::{CREDENTIAL_ANNOTATION, INJECT_LABEL};
use crate::sensitive::Sensitive;

/// The namespace fixtures live in unless told otherwise.
pub const NAMESPACE: &str = "shop";
/// A Workload Identity provider's full resource name.
pub const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop";
/// The service account fixtures impersonate.
pub const SERVICE_ACCOUNT: &str = "orders-api@acme-shop.iam.gserviceaccount.com";
/// An AlloyDB instance URI.
pub const INSTANCE: &str =
    "projects/acme-shop/locations/asia-northeast1/clusters/orders/instances/orders-primary";
/// An IAM role ARN.
pub const ROLE: &str = "arn:aws:iam::123456789012:role/shop-orders";

/// A time from its RFC 3339 spelling.
pub fn at(rfc3339: &str) -> Timestamp {
    rfc3339.parse().expect("fixture times are RFC 3339")
}

/// Merges `patch` into `doc` as a JSON merge patch (RFC 7386): `null` removes.
pub fn merge(doc: &mut Value, patch: Value) {
    json_patch::merge(doc, &patch);
}

/// `doc` with the RFC 6902 operations `ops` applied, as the API server applies a webhook's
/// patch; panics when they do not apply.
pub fn apply_patch(mut doc: Value, ops: &[Value]) -> Value {
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops.to_vec())).expect("RFC 6902 operations");
    json_patch::patch(&mut doc, &patch).expect("the patch applies");
    doc
}

/// A FederatedCredential fixture.
#[derive(Clone, Debug)]
pub struct Credential {
    doc: Value,
}

/// `name` in [`NAMESPACE`]: IRSA through the ServiceAccount `orders-api`, the provider
/// [`AUDIENCE`], impersonating [`SERVICE_ACCOUNT`], region `us-east-1`, generation 1, no status.
pub fn credential(name: &str) -> Credential {
    Credential {
        doc: json!({
            "apiVersion": "fedcred.io/v1alpha1",
            "kind": "FederatedCredential",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": format!("uid-{name}"), "generation": 1},
            "spec": {
                "aws": {"serviceAccount": {"name": "orders-api"}, "region": "us-east-1"},
                "google": {"audience": AUDIENCE, "serviceAccount": SERVICE_ACCOUNT},
            }
        }),
    }
}

impl Credential {
    /// Any change as a JSON merge patch of the whole object.
    pub fn with(mut self, patch: Value) -> Self {
        merge(&mut self.doc, patch);
        self
    }

    fn spec_patch(self, patch: Value) -> Self {
        self.with(json!({ "spec": patch }))
    }

    pub fn in_namespace(self, namespace: &str) -> Self {
        self.with(json!({"metadata": {"namespace": namespace}}))
    }

    /// Without namespace, uid and generation: as a user writes it in a file.
    pub fn as_written(self) -> Self {
        self.with(json!({"metadata": {"namespace": null, "uid": null, "generation": null}}))
    }

    pub fn generation(self, generation: i64) -> Self {
        self.with(json!({"metadata": {"generation": generation}}))
    }

    /// IRSA through `service_account` of the namespace.
    pub fn irsa(self, service_account: &str) -> Self {
        self.spec_patch(json!({"aws": {"serviceAccount": {"name": service_account}, "controllerIdentity": null}}))
    }

    /// The controller's own identity, chained into `role` when given.
    pub fn controller_identity(self, role: Option<&str>) -> Self {
        let identity = match role {
            Some(role) => json!({"roleArn": role}),
            None => json!({}),
        };
        self.spec_patch(json!({"aws": {"serviceAccount": null, "controllerIdentity": identity}}))
    }

    /// `exchange: Pod` with the pod's own identity, chained into `role` when given.
    pub fn in_pod(self, role: Option<&str>) -> Self {
        self.controller_identity(role)
            .spec_patch(json!({"exchange": "Pod"}))
    }

    /// The cluster's own token of `service_account` sent straight to Google, instead of an
    /// AWS identity.
    pub fn kubernetes(self, service_account: &str) -> Self {
        self.spec_patch(
            json!({"aws": null, "kubernetes": {"serviceAccount": {"name": service_account}}}),
        )
    }

    /// A projected token file on the host (`fedcred agent`), instead of an AWS identity.
    pub fn token_path(self, path: &str) -> Self {
        self.spec_patch(json!({"aws": null, "kubernetes": {"tokenPath": path}}))
    }

    pub fn region(self, region: Option<&str>) -> Self {
        self.spec_patch(json!({"aws": {"region": region}}))
    }

    pub fn sts_endpoint(self, url: &str) -> Self {
        self.spec_patch(json!({"aws": {"stsEndpoint": url}}))
    }

    /// The federated token itself, no impersonation.
    pub fn federated(self) -> Self {
        self.spec_patch(json!({"google": {"serviceAccount": null}}))
    }

    pub fn impersonating(self, service_account: &str) -> Self {
        self.spec_patch(json!({"google": {"serviceAccount": service_account}}))
    }

    pub fn google(self, google: Value) -> Self {
        self.spec_patch(json!({ "google": google }))
    }

    pub fn lifetime(self, seconds: i64) -> Self {
        self.spec_patch(json!({"google": {"tokenLifetimeSeconds": seconds}}))
    }

    pub fn secret_name(self, name: &str) -> Self {
        self.spec_patch(json!({"secret": {"name": name}}))
    }

    pub fn renew_before(self, percentage: i32) -> Self {
        self.spec_patch(json!({"secret": {"renewBeforePercentage": percentage}}))
    }

    /// One AlloyDB instance ([`INSTANCE`]) over PSC with IAM login on `port`.
    pub fn alloydb_instance(self, port: i32) -> Self {
        self.alloydb(json!([{"uri": INSTANCE, "port": port}]))
    }

    /// `spec.alloydb.instances`, as given.
    pub fn alloydb(self, instances: Value) -> Self {
        self.spec_patch(json!({"alloydb": {"instances": instances}}))
    }

    /// A status saying the Secret holds a token valid until `expires_at`, issued an hour
    /// before, due for refresh half-way.
    pub fn ready_until(self, expires_at: &str) -> Self {
        let expires = at(expires_at);
        let issued = expires - jiff::SignedDuration::from_hours(1);
        let next = expires - jiff::SignedDuration::from_mins(30);
        self.with(json!({"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "TokenIssued",
                            "message": "ready", "lastTransitionTime": issued.to_string()}],
            "observedGeneration": 1,
            "expiresAt": expires.to_string(),
            "lastRefreshTime": issued.to_string(),
            "nextRefreshTime": next.to_string(),
        }}))
    }

    /// A status whose Ready condition is False with `reason`.
    pub fn not_ready(self, reason: &str, message: &str) -> Self {
        self.with(json!({"status": {"conditions": [{
            "type": "Ready", "status": "False", "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
    }

    /// The status as given (merged).
    pub fn status(self, status: Value) -> Self {
        self.with(json!({ "status": status }))
    }

    pub fn json(&self) -> Value {
        self.doc.clone()
    }

    pub fn build(&self) -> FederatedCredential {
        serde_json::from_value(self.doc.clone()).expect("the fixture is a FederatedCredential")
    }

    pub fn spec(&self) -> FederatedCredentialSpec {
        self.build().spec
    }

    /// The identity this resource asks for, with the default defaults.
    pub fn key(&self) -> IdentityKey {
        let fc = self.build();
        plan(
            fc.metadata.namespace.as_deref().unwrap_or(NAMESPACE),
            &fc.spec,
            &Defaults::default(),
        )
        .expect("the fixture plans")
    }
}

/// A token issued at `issued_at`, expiring at `expires_at`, for [`SERVICE_ACCOUNT`].
pub fn issued(issued_at: &str, expires_at: &str) -> Issued {
    Issued {
        access_token: Sensitive::new("ya29.fixture"),
        expires_at: at(expires_at),
        issued_at: at(issued_at),
        principal_arn: Some(
            "arn:aws:sts::123456789012:assumed-role/shop-orders/fedcred.shop.orders-api".into(),
        ),
        subject: None,
        service_account: Some(SERVICE_ACCOUNT.into()),
        db_user: Some("orders-api@acme-shop.iam".into()),
        project_id: Some("acme-shop".into()),
        scopes: vec!["https://www.googleapis.com/auth/cloud-platform".into()],
    }
}

/// A Pod fixture.
#[derive(Clone, Debug)]
pub struct PodFixture {
    doc: Value,
}

/// A pod `name` in [`NAMESPACE`] with one container `app` (image `app:1`), not opted in.
pub fn pod(name: &str) -> PodFixture {
    PodFixture {
        doc: json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        }),
    }
}

impl PodFixture {
    /// Any change as a JSON merge patch of the whole object (lists are replaced).
    pub fn with(mut self, patch: Value) -> Self {
        merge(&mut self.doc, patch);
        self
    }

    /// Opted in (the label) and naming `credential` (the annotation).
    pub fn using(self, credential: &str) -> Self {
        self.with(json!({"metadata": {
            "labels": {INJECT_LABEL: "true"},
            "annotations": {CREDENTIAL_ANNOTATION: credential},
        }}))
    }

    /// Without a namespace, as controllers create pods.
    pub fn without_namespace(self) -> Self {
        self.with(json!({"metadata": {"namespace": null}}))
    }

    /// The `app` container declares `port`.
    pub fn declaring_port(mut self, port: u16) -> Self {
        self.doc["spec"]["containers"][0]["ports"] = json!([{"containerPort": port}]);
        self
    }

    /// Another container, appended.
    pub fn container(mut self, container: Value) -> Self {
        self.push("containers", container);
        self
    }

    /// An init container, appended.
    pub fn init_container(mut self, container: Value) -> Self {
        self.push("initContainers", container);
        self
    }

    fn push(&mut self, list: &str, item: Value) {
        let spec = &mut self.doc["spec"];
        match spec.get_mut(list).and_then(Value::as_array_mut) {
            Some(items) => items.push(item),
            None => spec[list] = json!([item]),
        }
    }

    pub fn json(&self) -> Value {
        self.doc.clone()
    }

    pub fn build(&self) -> Pod {
        serde_json::from_value(self.doc.clone()).expect("the fixture is a Pod")
    }
}

/// One case of the validation table: a resource and, when it must be refused, the field and
/// a part of the message.
#[derive(Clone, Debug)]
pub struct Judged {
    pub name: String,
    pub resource: Value,
    pub refused: Option<(String, String)>,
}

/// The table of cases both the API server and [`crate::validate`] must judge alike
/// (`core/tests/validation/cases.json`), each a merge patch of `credential("case")` as
/// written in a file.
pub fn validation_cases() -> Vec<Judged> {
    let table: Value = serde_json::from_str(include_str!("../tests/validation/cases.json"))
        .expect("the table is JSON");
    table["cases"]
        .as_array()
        .expect("the table has cases")
        .iter()
        .map(|case| {
            let mut resource = credential("case").as_written().json();
            merge(&mut resource, case["patch"].clone());
            Judged {
                name: case["case"].as_str().unwrap_or_default().to_owned(),
                resource,
                refused: case["field"].as_str().map(|field| {
                    (
                        field.to_owned(),
                        case["says"].as_str().unwrap_or_default().to_owned(),
                    )
                }),
            }
        })
        .collect()
}

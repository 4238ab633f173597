//! Rollouts: when what the webhook injects from a FederatedCredential changes (its AlloyDB
//! instances and proxy settings, the service account behind `PGUSER`, the Secret's name), the
//! Deployments, StatefulSets and DaemonSets whose pods use it get a new pod-template
//! annotation, so that their own controllers replace the pods with freshly injected ones.
//! Token refreshes change none of these inputs and so never restart anything.
//!
//! The decisions are pure functions; [`roll`] is the adapter that lists and patches workloads.
//! The hash last acted upon is kept in `status.injectionHash`: a resource seen for the first
//! time records its hash without rolling anything, and a controller that stops half-way
//! rolls the rest when it comes back, because the hash is recorded only after every workload
//! has been patched.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::FIELD_MANAGER;
use super::objects::secret_name;
use crate::api::FederatedCredential;
use crate::inject::{CREDENTIAL_ANNOTATION, INJECT_LABEL};

/// Set to `"false"` on a FederatedCredential (none of its workloads) or on a Deployment,
/// StatefulSet or DaemonSet (that workload only) to leave rollouts to the user.
pub const ROLLOUT_ANNOTATION: &str = "fedcred.io/rollout";

/// The pod-template annotation that carries the hash of the injected settings.
pub const TEMPLATE_ANNOTATION: &str = "fedcred.io/injection-hash";

/// Hash of everything the webhook reads from `fc` to build a pod's sidecars and environment.
/// Equal hashes mean identically injected pods.
pub fn injection_hash(fc: &FederatedCredential) -> String {
    let inputs = json!({
        "alloydb": fc.spec.alloydb,
        "serviceAccount": fc.spec.google.service_account,
        "secret": secret_name(fc),
    });
    let digest = Sha256::digest(inputs.to_string().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether pods made from `template` use the FederatedCredential `name` (of the template's
/// own namespace): they opt in with the label and name it in the annotation.
pub fn references(template: &PodTemplateSpec, name: &str) -> bool {
    let Some(meta) = template.metadata.as_ref() else {
        return false;
    };
    let opted_in = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECT_LABEL))
        .is_some_and(|v| v == "true");
    let named = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(CREDENTIAL_ANNOTATION))
        .is_some_and(|v| v == name);
    opted_in && named
}

fn opted_out(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ROLLOUT_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

/// What one workload needs when the injected settings have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Its pods do not use this FederatedCredential.
    Unrelated,
    /// It carries `fedcred.io/rollout: "false"`.
    OptedOut,
    /// Its template already carries the hash: nothing to do.
    Current,
    /// Patch the template annotation.
    Roll,
}

/// The step for one workload with metadata `meta` and pod template `template`.
pub fn step(meta: &ObjectMeta, template: &PodTemplateSpec, name: &str, hash: &str) -> Step {
    if !references(template, name) {
        return Step::Unrelated;
    }
    if opted_out(meta) {
        return Step::OptedOut;
    }
    let current = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(TEMPLATE_ANNOTATION))
        .is_some_and(|v| v == hash);
    if current { Step::Current } else { Step::Roll }
}

/// What the controller does about a FederatedCredential's rollouts this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The recorded hash is current (or rollouts are off and recorded): nothing.
    Nothing,
    /// First sight, or rollouts are off for the resource: record the hash, roll nothing.
    Record(String),
    /// The injected settings changed: roll the workloads, then record the hash.
    Roll(String),
}

/// The plan for `fc`, from its spec and `status.injectionHash`.
pub fn plan(fc: &FederatedCredential) -> Plan {
    let hash = injection_hash(fc);
    let recorded = fc.status.as_ref().and_then(|s| s.injection_hash.as_deref());
    match recorded {
        Some(r) if r == hash => Plan::Nothing,
        Some(_) if !opted_out(fc.meta()) => Plan::Roll(hash),
        _ => Plan::Record(hash),
    }
}

/// The merge patch that sets the template annotation to `hash`.
pub fn template_patch(hash: &str) -> Value {
    json!({"spec": {"template": {"metadata": {"annotations": {TEMPLATE_ANNOTATION: hash}}}}})
}

/// A workload kind that has a pod template.
trait Workload: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
where
    Self: Clone + DeserializeOwned + std::fmt::Debug,
{
    const KIND: &'static str;
    fn template(&self) -> Option<&PodTemplateSpec>;
}

impl Workload for Deployment {
    const KIND: &'static str = "Deployment";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}

impl Workload for StatefulSet {
    const KIND: &'static str = "StatefulSet";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}

impl Workload for DaemonSet {
    const KIND: &'static str = "DaemonSet";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}

/// What [`roll`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rolled {
    /// `Kind/name` of each workload patched.
    pub patched: Vec<String>,
    /// `Kind/name` of each workload left alone because it opted out.
    pub skipped: Vec<String>,
}

/// Patches every Deployment, StatefulSet and DaemonSet in `fc`'s namespace whose pods use it.
/// Stops at the first failure, naming the workload; what was patched stays patched and the
/// next attempt skips it.
pub async fn roll(client: &Client, fc: &FederatedCredential, hash: &str) -> Result<Rolled, String> {
    let mut rolled = Rolled::default();
    roll_kind::<Deployment>(client, fc, hash, &mut rolled).await?;
    roll_kind::<StatefulSet>(client, fc, hash, &mut rolled).await?;
    roll_kind::<DaemonSet>(client, fc, hash, &mut rolled).await?;
    Ok(rolled)
}

async fn roll_kind<W: Workload>(
    client: &Client,
    fc: &FederatedCredential,
    hash: &str,
    rolled: &mut Rolled,
) -> Result<(), String> {
    let namespace = fc.namespace().unwrap_or_default();
    let name = fc.name_any();
    let api: Api<W> = Api::namespaced(client.clone(), &namespace);
    let list = api.list(&ListParams::default()).await.map_err(|e| {
        format!(
            "listing {}s in namespace {namespace} failed: {e}; the controller needs list and patch on them for rollouts",
            W::KIND
        )
    })?;
    for workload in list.items {
        let Some(template) = workload.template() else {
            continue;
        };
        let id = format!("{}/{}", W::KIND, workload.name_any());
        match step(workload.meta(), template, &name, hash) {
            Step::Unrelated | Step::Current => {}
            Step::OptedOut => rolled.skipped.push(id),
            Step::Roll => {
                api.patch(
                    &workload.name_any(),
                    &PatchParams {
                        field_manager: Some(FIELD_MANAGER.to_owned()),
                        ..PatchParams::default()
                    },
                    &Patch::Merge(template_patch(hash)),
                )
                .await
                .map_err(|e| format!("patching {id} in namespace {namespace} failed: {e}"))?;
                rolled.patched.push(id);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(spec: Value) -> FederatedCredential {
        let mut fc: FederatedCredential = serde_json::from_value(json!({
            "apiVersion": "fedcred.io/v1alpha1",
            "kind": "FederatedCredential",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap();
        fc.status = None;
        fc
    }

    fn base_spec() -> Value {
        json!({
            "aws": {"serviceAccount": {"name": "orders-api"}},
            "google": {
                "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/aws",
                "serviceAccount": "orders@acme-shop.iam.gserviceaccount.com",
            },
            "alloydb": {"instances": [{"uri": "projects/acme-shop/locations/us-east4/clusters/orders/instances/primary"}]},
        })
    }

    fn with_recorded(mut fc: FederatedCredential, hash: &str) -> FederatedCredential {
        let mut status = fc.status.take().unwrap_or_default();
        status.injection_hash = Some(hash.to_owned());
        fc.status = Some(status);
        fc
    }

    fn template(labels: Value, annotations: Value) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app"}]},
        }))
        .unwrap()
    }

    fn opted_in(extra: Value) -> PodTemplateSpec {
        let mut annotations = json!({"fedcred.io/credential": "orders"});
        annotations
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        template(json!({"fedcred.io/inject": "true"}), annotations)
    }

    #[test]
    fn the_hash_follows_injected_settings_only() {
        let fc = credential(base_spec());
        let base = injection_hash(&fc);
        assert_eq!(base.len(), 16);
        assert_eq!(base, injection_hash(&credential(base_spec())));

        let mut spec = base_spec();
        spec["google"]["tokenLifetimeSeconds"] = json!(1800);
        spec["google"]["scopes"] = json!(["https://www.googleapis.com/auth/bigquery"]);
        assert_eq!(
            injection_hash(&credential(spec)),
            base,
            "token settings reach pods through the Secret, not the pod spec"
        );

        for change in [
            ("/alloydb/instances/0/connectivity", json!("PublicIP")),
            ("/alloydb/instances/0/port", json!(6543)),
            ("/alloydb/proxy", json!({"image": "proxy:2"})),
            (
                "/google/serviceAccount",
                json!("other@acme-shop.iam.gserviceaccount.com"),
            ),
            ("/secret", json!({"name": "orders-token"})),
        ] {
            let mut spec = base_spec();
            let (path, value) = change;
            let (parent, key) = path.rsplit_once('/').unwrap();
            let target = if parent.is_empty() {
                &mut spec
            } else {
                spec.pointer_mut(parent).unwrap()
            };
            target[key] = value;
            assert_ne!(
                injection_hash(&credential(spec)),
                base,
                "{path} changes pods"
            );
        }
    }

    #[test]
    fn first_sight_records_without_rolling() {
        let fc = credential(base_spec());
        let hash = injection_hash(&fc);
        assert_eq!(plan(&fc), Plan::Record(hash.clone()));
        assert_eq!(plan(&with_recorded(fc.clone(), &hash)), Plan::Nothing);
        assert_eq!(plan(&with_recorded(fc, "0123")), Plan::Roll(hash));
    }

    #[test]
    fn a_credential_can_opt_out_of_rollouts() {
        let mut fc = credential(base_spec());
        fc.metadata.annotations = Some(
            [(ROLLOUT_ANNOTATION.to_owned(), "false".to_owned())]
                .into_iter()
                .collect(),
        );
        let hash = injection_hash(&fc);
        assert_eq!(plan(&with_recorded(fc, "0123")), Plan::Record(hash));
    }

    #[test]
    fn steps_for_workloads() {
        let meta = ObjectMeta::default();
        let hash = "abcd";
        assert_eq!(
            step(&meta, &opted_in(json!({})), "orders", hash),
            Step::Roll
        );
        assert_eq!(
            step(
                &meta,
                &opted_in(json!({TEMPLATE_ANNOTATION: hash})),
                "orders",
                hash
            ),
            Step::Current
        );
        assert_eq!(
            step(&meta, &opted_in(json!({})), "payments", hash),
            Step::Unrelated,
            "another FederatedCredential"
        );
        let not_labelled = template(json!({}), json!({"fedcred.io/credential": "orders"}));
        assert_eq!(step(&meta, &not_labelled, "orders", hash), Step::Unrelated);
        let opted_out_meta = ObjectMeta {
            annotations: Some(
                [(ROLLOUT_ANNOTATION.to_owned(), "False".to_owned())]
                    .into_iter()
                    .collect(),
            ),
            ..ObjectMeta::default()
        };
        assert_eq!(
            step(&opted_out_meta, &opted_in(json!({})), "orders", hash),
            Step::OptedOut
        );
    }

    #[test]
    fn the_patch_touches_only_the_template_annotation() {
        assert_eq!(
            template_patch("abcd"),
            json!({"spec": {"template": {"metadata": {"annotations": {"fedcred.io/injection-hash": "abcd"}}}}})
        );
    }
}

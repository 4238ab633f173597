//! Rollouts, decided: when what the webhook injects from a FederatedCredential changes (see
//! [`crate::inject::Recipe`]: its AlloyDB instances and proxy settings, the service account
//! behind `PGUSER`, the Secret's name), the Deployments, StatefulSets and DaemonSets whose
//! pods use it get a new pod-template annotation, so that their own controllers replace the
//! pods with freshly injected ones. Token refreshes change none of these inputs and so never
//! restart anything.
//!
//! The hash last acted upon is kept in `status.injectionHash`: a resource seen for the first
//! time records its hash without rolling anything, and a controller that stops half-way
//! rolls the rest when it comes back, because the hash is recorded only after every workload
//! has been patched. The `fedcred` crate's controller lists and patches the workloads.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::api::FederatedCredential;
use crate::inject::injection_hash;
use crate::names::{ROLLOUT_ANNOTATION, TEMPLATE_ANNOTATION, requested_credential};

/// Whether pods made from `template` use the FederatedCredential `name` (of the template's
/// own namespace): they opt in with the label and name it in the annotation.
pub fn references(template: &PodTemplateSpec, name: &str) -> bool {
    template.metadata.as_ref().is_some_and(|meta| {
        requested_credential(meta.labels.as_ref(), meta.annotations.as_ref()) == Some(name)
    })
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
        Some(_) if !opted_out(&fc.metadata) => Plan::Roll(hash),
        _ => Plan::Record(hash),
    }
}

/// The merge patch that sets the template annotation to `hash`.
pub fn template_patch(hash: &str) -> Value {
    json!({"spec": {"template": {"metadata": {"annotations": {TEMPLATE_ANNOTATION: hash}}}}})
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::credential;

    fn orders() -> FederatedCredential {
        credential("orders").alloydb_instance(5432).build()
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
    fn first_sight_records_without_rolling() {
        let fc = orders();
        let hash = injection_hash(&fc);
        assert_eq!(plan(&fc), Plan::Record(hash.clone()));
        assert_eq!(plan(&with_recorded(fc.clone(), &hash)), Plan::Nothing);
        assert_eq!(plan(&with_recorded(fc, "0123")), Plan::Roll(hash));
    }

    #[test]
    fn a_credential_can_opt_out_of_rollouts() {
        let mut fc = orders();
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

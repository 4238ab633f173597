//! Rollouts, carried out: lists the Deployments, StatefulSets and DaemonSets of a resource's
//! namespace and patches those [`fedcred_core::rollout`] says to roll.

use fedcred_core::api::FederatedCredential;
use fedcred_core::rollout::{Step, step, template_patch};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::FIELD_MANAGER;

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

/// Why a rollout stopped; the next reconcile tries again, skipping what was patched.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "listing {kind}s in namespace {namespace} failed: {source}; the controller needs list and patch on them for rollouts"
    )]
    List {
        kind: &'static str,
        namespace: String,
        source: kube::Error,
    },
    #[error("patching {workload} in namespace {namespace} failed: {source}")]
    Patch {
        workload: String,
        namespace: String,
        source: kube::Error,
    },
}

/// Patches every Deployment, StatefulSet and DaemonSet in `fc`'s namespace whose pods use it.
/// Stops at the first failure, naming the workload; what was patched stays patched and the
/// next attempt skips it.
pub async fn roll(client: &Client, fc: &FederatedCredential, hash: &str) -> Result<Rolled, Error> {
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
) -> Result<(), Error> {
    let namespace = fc.namespace().unwrap_or_default();
    let name = fc.name_any();
    let api: Api<W> = Api::namespaced(client.clone(), &namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            kind: W::KIND,
            namespace: namespace.clone(),
            source,
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
                .map_err(|source| Error::Patch {
                    workload: id.clone(),
                    namespace: namespace.clone(),
                    source,
                })?;
                rolled.patched.push(id);
            }
        }
    }
    Ok(())
}

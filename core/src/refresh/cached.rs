//! A FederatedCredential as the controller's cache holds it: the metadata that kube's store,
//! its queue and the watch's filter read, and the spec and status packed as their JSON,
//! unpacked for each reconcile.
//!
//! The cache holds every resource the controller watches for as long as it runs, and a
//! resource's spec and status in memory are a tree of optional strings, vectors and maps of
//! about twice the size of their JSON. A reconcile reads them once, so unpacking them then
//! costs a parse per reconcile and saves that difference on every resource at rest.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Serialize};

use super::changes::trim_cached;
use crate::api::{FederatedCredential, FederatedCredentialSpec, FederatedCredentialStatus};

/// A cached FederatedCredential: metadata trimmed as [`trim_cached`] does, spec and status
/// packed. Deserializes from a FederatedCredential, so a watch of this type reads the
/// resources themselves.
#[derive(Clone)]
pub struct CachedCredential {
    metadata: ObjectMeta,
    /// Whether its last refresh failed (`status.failureCount` > 0), readable without unpacking.
    failing: bool,
    /// `{"spec":…,"status":…}`.
    packed: Box<[u8]>,
}

#[derive(Serialize)]
struct PackedRef<'a> {
    spec: &'a FederatedCredentialSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a FederatedCredentialStatus>,
}

#[derive(Deserialize)]
struct Packed {
    spec: FederatedCredentialSpec,
    #[serde(default)]
    status: Option<FederatedCredentialStatus>,
}

impl CachedCredential {
    /// `fc` as the cache keeps it.
    pub fn pack(mut fc: FederatedCredential) -> CachedCredential {
        trim_cached(&mut fc);
        let packed = PackedRef {
            spec: &fc.spec,
            status: fc.status.as_ref(),
        };
        // Serializing plain data of strings, numbers and maps into memory does not fail.
        let packed = serde_json::to_vec(&packed).unwrap_or_default();
        CachedCredential {
            failing: fc.status.as_ref().is_some_and(|s| s.failure_count > 0),
            metadata: fc.metadata,
            packed: packed.into_boxed_slice(),
        }
    }

    /// The resource as it was cached (its metadata trimmed).
    pub fn unpack(&self) -> Result<FederatedCredential, serde_json::Error> {
        let Packed { spec, status } = serde_json::from_slice(&self.packed)?;
        Ok(FederatedCredential {
            metadata: self.metadata.clone(),
            spec,
            status,
        })
    }

    /// Whether the resource's last refresh failed.
    pub fn failing(&self) -> bool {
        self.failing
    }

    /// The bytes of the packed spec and status.
    #[cfg(test)]
    fn packed_len(&self) -> usize {
        self.packed.len()
    }
}

impl std::fmt::Debug for CachedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedCredential")
            .field("namespace", &self.metadata.namespace)
            .field("name", &self.metadata.name)
            .field("generation", &self.metadata.generation)
            .field("failing", &self.failing)
            .field("packed_len", &self.packed.len())
            .finish()
    }
}

impl<'de> Deserialize<'de> for CachedCredential {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        FederatedCredential::deserialize(deserializer).map(CachedCredential::pack)
    }
}

impl Resource for CachedCredential {
    type DynamicType = ();
    type Scope = <FederatedCredential as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        FederatedCredential::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        FederatedCredential::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        FederatedCredential::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        FederatedCredential::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::ROLLOUT_ANNOTATION;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn resource() -> FederatedCredential {
        let mut fc: FederatedCredential = serde_json::from_value(serde_json::json!({
            "apiVersion": "fedcred.io/v1alpha1",
            "kind": "FederatedCredential",
            "metadata": {
                "name": "orders-db",
                "namespace": "shop",
                "uid": "6f1c1c4e-7d2a-4b8e-9c1e-0a7f3c2d5e11",
                "generation": 3,
                "resourceVersion": "4711",
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {
                    ROLLOUT_ANNOTATION: "abc123",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"a\":1}"
                }
            },
            "spec": {
                "aws": {"serviceAccount": {"name": "orders-api"}},
                "google": {
                    "audience": "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop",
                    "serviceAccount": "orders-api@acme-shop.iam.gserviceaccount.com"
                },
                "alloydb": {"instances": [{
                    "uri": "projects/acme-shop/locations/asia-northeast1/clusters/orders/instances/orders-primary"
                }]}
            }
        }))
        .unwrap();
        fc.status = Some(FederatedCredentialStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "GoogleStsRejected".into(),
                message: "Google STS refused the token".into(),
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
                observed_generation: Some(3),
            }],
            observed_generation: Some(3),
            failure_count: 2,
            secret_name: Some("orders-db".into()),
            ..FederatedCredentialStatus::default()
        });
        fc
    }

    #[test]
    fn unpacking_gives_back_the_spec_and_status_and_the_trimmed_metadata() {
        let fc = resource();
        let cached = CachedCredential::pack(fc.clone());
        let unpacked = cached.unpack().unwrap();
        assert_eq!(unpacked.spec, fc.spec);
        assert_eq!(unpacked.status, fc.status);
        let mut trimmed = fc.clone();
        trim_cached(&mut trimmed);
        assert_eq!(unpacked.metadata, trimmed.metadata);
        assert!(unpacked.metadata.labels.is_none());
        assert_eq!(
            unpacked
                .metadata
                .annotations
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            [ROLLOUT_ANNOTATION]
        );
        assert!(cached.failing());
    }

    #[test]
    fn a_resource_without_status_has_none_after_unpacking_and_is_not_failing() {
        let mut fc = resource();
        fc.status = None;
        let cached = CachedCredential::pack(fc.clone());
        assert_eq!(cached.unpack().unwrap().status, None);
        assert!(!cached.failing());
    }

    #[test]
    fn it_reads_what_the_api_server_sends_and_keeps_the_metadata_kube_reads() {
        let json = serde_json::to_vec(&resource()).unwrap();
        let cached: CachedCredential = serde_json::from_slice(&json).unwrap();
        assert_eq!(cached.meta().name.as_deref(), Some("orders-db"));
        assert_eq!(cached.meta().namespace.as_deref(), Some("shop"));
        assert_eq!(cached.meta().generation, Some(3));
        assert_eq!(cached.meta().resource_version.as_deref(), Some("4711"));
        assert_eq!(
            CachedCredential::url_path(&(), Some("shop")),
            FederatedCredential::url_path(&(), Some("shop"))
        );
        // The packed form is smaller than what the API server sent.
        assert!(cached.packed_len() < json.len(), "{}", cached.packed_len());
        assert_eq!(cached.unpack().unwrap().spec, resource().spec);
    }

    #[test]
    fn what_is_not_a_federated_credential_is_refused() {
        let err = serde_json::from_str::<CachedCredential>(r#"{"metadata":{},"spec":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("google"), "{err}");
    }
}

//! What a FederatedCredential contributes to every pod that uses it.
//!
//! [`super::mutate`] reads the resource only through a [`Recipe`], and [`injection_hash`] is a
//! digest of the same recipe, so a setting that reaches pods always changes the hash that rolls
//! their workloads, and a setting that does not (a token refresh, the scopes, the lifetime)
//! never restarts anything.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::{
    AlloyDb, AlloyDbInstance, AlloyDbProxy, CloudSql, CloudSqlInstance, FederatedCredential,
};
use crate::names::{db_user, mysql_db_user, project_id, secret_name};

/// The resource's part of an injection. Its serialized form is what [`injection_hash`]
/// digests: keep the field names and their serialization as they are, or every workload
/// rolls once when the controller is upgraded.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recipe<'a> {
    /// AlloyDB instances and proxy settings.
    pub alloydb: Option<&'a AlloyDb>,
    /// The Secret the metadata sidecar mounts.
    pub secret: String,
    /// The impersonated service account, behind `PGUSER` and `GOOGLE_CLOUD_PROJECT`.
    pub service_account: Option<&'a str>,
    /// With `exchange: Pod`, the resource as the agent sidecar receives it (JSON): any change
    /// of the spec reaches the pods. Absent otherwise, which keeps earlier hashes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_credential: Option<String>,
    /// `spec.google.endpoints.iamCredentials`, where the metadata sidecar mints ID tokens.
    /// Absent from the hash when unset, so resources without it keep their hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iam_credentials: Option<&'a str>,
    /// Cloud SQL instances and proxy settings; absent from the hash when unset, so resources
    /// without them keep their hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloudsql: Option<&'a CloudSql>,
}

impl<'a> Recipe<'a> {
    pub fn of(fc: &'a FederatedCredential) -> Self {
        Recipe {
            alloydb: fc.spec.alloydb.as_deref(),
            secret: secret_name(fc),
            service_account: fc.spec.google.service_account.as_deref(),
            agent_credential: fc.spec.exchanges_in_pod().then(|| agent_credential(fc)),
            iam_credentials: fc
                .spec
                .google
                .endpoints
                .as_ref()
                .and_then(|e| e.iam_credentials.as_deref())
                .filter(|url| !url.is_empty()),
            cloudsql: fc.spec.cloudsql.as_deref(),
        }
    }

    pub fn cloudsql_instances(&self) -> &'a [CloudSqlInstance] {
        self.cloudsql
            .map(|c| c.instances.as_slice())
            .unwrap_or_default()
    }

    pub fn instances(&self) -> &'a [AlloyDbInstance] {
        self.alloydb
            .map(|a| a.instances.as_slice())
            .unwrap_or_default()
    }

    pub fn proxy(&self) -> Option<&'a AlloyDbProxy> {
        self.alloydb.and_then(|a| a.proxy.as_ref())
    }

    fn account(&self) -> Option<&'a str> {
        self.service_account.filter(|s| !s.is_empty())
    }

    /// The IAM database user of the service account.
    pub fn db_user(&self) -> Option<String> {
        self.account().and_then(db_user)
    }

    /// The Cloud SQL for MySQL IAM database user of the service account.
    pub fn mysql_db_user(&self) -> Option<String> {
        self.account().and_then(mysql_db_user)
    }

    /// The project of the service account.
    pub fn project_id(&self) -> Option<String> {
        self.account().and_then(project_id)
    }

    /// 16 hex digits of a digest of the recipe, as canonical JSON (every object's keys
    /// sorted, whatever the order of the fields that make it).
    pub fn hash(&self) -> String {
        // A struct of strings, numbers and options always serializes; going through a `Value`
        // sorts the keys.
        let text = serde_json::to_value(self)
            .expect("a recipe serializes")
            .to_string();
        let digest = Sha256::digest(text.as_bytes());
        crate::encode::hex(&digest[..8])
    }
}

/// The FederatedCredential as `fedcred agent` reads it: kind, name, namespace (the session
/// name comes from them) and spec; no status, no other metadata.
fn agent_credential(fc: &FederatedCredential) -> String {
    serde_json::json!({
        "apiVersion": "fedcred.io/v1alpha1",
        "kind": "FederatedCredential",
        "metadata": {"name": fc.metadata.name, "namespace": fc.metadata.namespace},
        "spec": fc.spec,
    })
    .to_string()
}

/// Hash of everything the webhook reads from `fc` to build a pod's sidecars and environment.
/// Equal hashes mean identically injected pods.
pub fn injection_hash(fc: &FederatedCredential) -> String {
    Recipe::of(fc).hash()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::credential;

    #[test]
    fn the_hash_is_the_one_earlier_controllers_recorded() {
        // The formula of the releases before the recipe existed: an upgrade must not roll
        // every workload.
        let earlier = |fc: &FederatedCredential| {
            let inputs = json!({
                "alloydb": fc.spec.alloydb,
                "serviceAccount": fc.spec.google.service_account,
                "secret": secret_name(fc),
            });
            let digest = Sha256::digest(inputs.to_string().as_bytes());
            crate::encode::hex(&digest[..8])
        };
        for fc in [
            credential("orders-db").build(),
            credential("orders-db").alloydb_instance(5432).build(),
            credential("orders-db")
                .federated()
                .secret_name("other")
                .build(),
            credential("orders-db")
                .alloydb(
                    json!([{"uri": crate::testing::INSTANCE, "connectivity": "PublicIP",
                                 "autoIamAuthn": false, "port": 6000}]),
                )
                .build(),
        ] {
            assert_eq!(injection_hash(&fc), earlier(&fc));
        }
    }

    #[test]
    fn only_what_reaches_pods_changes_the_hash() {
        let base = injection_hash(&credential("orders-db").alloydb_instance(5432).build());
        let same = [
            credential("orders-db")
                .alloydb_instance(5432)
                .lifetime(1800)
                .build(),
            credential("orders-db")
                .alloydb_instance(5432)
                .renew_before(80)
                .ready_until("2026-01-01T01:00:00Z")
                .build(),
        ];
        for fc in same {
            assert_eq!(injection_hash(&fc), base);
        }
        // With the exchange in the pods, the whole spec reaches them: a lifetime too.
        let in_pod = credential("orders-db").alloydb_instance(5432).in_pod(None);
        assert_ne!(
            injection_hash(&in_pod.clone().lifetime(1800).build()),
            injection_hash(&in_pod.build())
        );
        let different = [
            credential("orders-db").alloydb_instance(5433).build(),
            credential("orders-db")
                .alloydb_instance(5432)
                .secret_name("x")
                .build(),
            credential("orders-db")
                .alloydb_instance(5432)
                .impersonating("other@acme-shop.iam.gserviceaccount.com")
                .build(),
            credential("orders-db")
                .alloydb_instance(5432)
                .in_pod(None)
                .build(),
        ];
        for fc in different {
            assert_ne!(injection_hash(&fc), base);
        }
    }

    #[test]
    fn every_proxy_setting_and_variable_name_changes_the_hash() {
        let instance = json!({"uri": crate::testing::INSTANCE});
        let with = |proxy: serde_json::Value, instance: serde_json::Value| {
            let mut fc = credential("orders-db").alloydb(json!([instance])).build();
            fc.spec.alloydb.as_mut().unwrap().proxy = serde_json::from_value(proxy).unwrap();
            injection_hash(&fc)
        };
        let base = with(json!(null), instance.clone());
        // Settings left at their defaults are not serialized: existing resources keep their
        // hash, and their workloads do not roll when the controller is upgraded.
        assert_eq!(
            with(
                json!({"lazyRefresh": false, "prometheus": false, "unixSocket": false}),
                instance.clone()
            ),
            with(json!({}), instance.clone())
        );
        let mut seen = vec![base, with(json!({}), instance.clone())];
        for proxy in [
            json!({"lazyRefresh": true}),
            json!({"prometheus": true}),
            json!({"maxConnections": 10}),
            json!({"maxSigtermDelay": "30s"}),
            json!({"minSigtermDelay": "5s"}),
            json!({"adminPort": 9091}),
            json!({"unixSocket": true}),
            json!({"image": "mirror.example/alloydb-auth-proxy@sha256:0000000000000000000000000000000000000000000000000000000000000000"}),
        ] {
            seen.push(with(proxy, instance.clone()));
        }
        for names in [
            json!({"hostEnvName": "DB_HOST"}),
            json!({"portEnvName": "DB_PORT"}),
            json!({"userEnvName": "DB_USER"}),
        ] {
            let mut named = instance.clone();
            crate::testing::merge(&mut named, names);
            seen.push(with(json!(null), named));
        }
        let count = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), count, "two settings hash alike");
    }

    #[test]
    fn unset_new_settings_leave_the_serialized_spec_as_it_was() {
        let proxy = serde_json::to_value(AlloyDbProxy::default()).unwrap();
        assert_eq!(proxy, json!({}));
        let instance: AlloyDbInstance =
            serde_json::from_value(json!({"uri": crate::testing::INSTANCE})).unwrap();
        let keys: Vec<String> = serde_json::to_value(instance)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["autoIamAuthn", "connectivity", "port", "uri"]);
    }

    #[test]
    fn cloud_sql_instances_change_the_hash_and_their_absence_does_not() {
        let alloydb_only = credential("orders-db").alloydb_instance(5432).build();
        let with = |cloudsql: serde_json::Value| {
            let mut fc = alloydb_only.clone();
            fc.spec.cloudsql = Some(serde_json::from_value(cloudsql).unwrap());
            injection_hash(&fc)
        };
        // Absent, the recipe serializes as before Cloud SQL existed.
        assert!(
            !serde_json::to_string(&Recipe::of(&alloydb_only))
                .unwrap()
                .contains("cloudsql")
        );
        let instance = json!({"connectionName": "acme-shop:us-east4:orders-pg", "port": 6432});
        let mut seen = vec![injection_hash(&alloydb_only)];
        for changed in [
            json!({}),
            json!({"engine": "MySQL"}),
            json!({"connectivity": "PSC"}),
            json!({"autoIamAuthn": false}),
            json!({"port": 6433}),
            json!({"hostEnvName": "ORDERS_HOST"}),
        ] {
            let mut one = instance.clone();
            crate::testing::merge(&mut one, changed);
            seen.push(with(json!({"instances": [one]})));
        }
        seen.push(with(json!({
            "instances": [instance],
            "proxy": {"image": "mirror.example/cloud-sql-proxy:2.27.0"}
        })));
        seen.push(with(json!({
            "instances": [instance],
            "proxy": {"unixSocket": true}
        })));
        let count = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), count, "two settings hash alike");
    }
}

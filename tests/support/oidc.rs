//! The cluster's ServiceAccount token issuer, as Google sees it: its discovery document, its
//! keys and the CA of its serving certificate.

use fedcred_doubles::Oidc;
use serde_json::{Value, json};

use super::{kube_client, kubectl};

/// What the API server publishes about its ServiceAccount token issuer, read as a user would
/// (`kubectl get --raw`), and the CA its serving certificate chains to.
pub struct ClusterIssuer {
    pub issuer: String,
    pub jwks: String,
    pub ca_pem: String,
}

pub async fn cluster_issuer() -> ClusterIssuer {
    let client = kube_client().await;
    let get = |path: &str| http::Request::builder().uri(path).body(Vec::new()).unwrap();
    let discovery: Value = serde_json::from_str(
        &client
            .request_text(get("/.well-known/openid-configuration"))
            .await
            .expect("the API server serves its discovery document"),
    )
    .unwrap();
    let jwks = client
        .request_text(get("/openid/v1/jwks"))
        .await
        .expect("the API server serves its JWKS");
    let kubeconfig = kube::config::Kubeconfig::read_from(super::kubeconfig()).unwrap();
    let ca_path = kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.certificate_authority.clone())
        .expect("the test kubeconfig names its CA file");
    ClusterIssuer {
        issuer: discovery["issuer"].as_str().unwrap().to_owned(),
        jwks,
        ca_pem: std::fs::read_to_string(ca_path).unwrap(),
    }
}

impl ClusterIssuer {
    /// A provider holding the cluster's JWKS, uploaded.
    pub fn uploaded(&self) -> Oidc {
        Oidc {
            issuer_uri: self.issuer.clone(),
            allowed_audiences: Vec::new(),
            jwks_json: Some(self.jwks.clone()),
            discovery_ca_pem: None,
        }
    }

    /// A provider that discovers the keys from the issuer URL.
    pub fn discovered(&self) -> Oidc {
        Oidc {
            issuer_uri: self.issuer.clone(),
            allowed_audiences: Vec::new(),
            jwks_json: None,
            discovery_ca_pem: Some(self.ca_pem.clone()),
        }
    }
}

/// Lets anyone read the issuer's discovery document and keys, as a cluster whose issuer
/// Google discovers must (the role exists in every cluster; by default only ServiceAccounts
/// hold it).
pub fn allow_anonymous_discovery() {
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "fedcred-test-oidc-discovery"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "system:service-account-issuer-discovery"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                      "name": "system:unauthenticated"}]
    });
    kubectl(&["apply", "-f", "-"], Some(&binding.to_string())).success();
}

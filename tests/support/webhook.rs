//! Registering a webhook on 127.0.0.1 with the real API server, for one test namespace.

use serde_json::json;

use super::{TestNamespace, kubectl};

/// A MutatingWebhookConfiguration that sends the opted-in pods of one namespace to
/// `https://127.0.0.1:PORT/mutate`, configured as the chart configures it. Without a `caBundle`
/// the controller serving the webhook fills it in. Deleted when dropped.
pub struct Registration {
    pub name: String,
}

impl Registration {
    pub fn create(ns: &TestNamespace, port: u16, ca_pem: Option<&str>) -> Registration {
        use base64::Engine as _;
        let name = format!("fedcred-test-{}", ns.name);
        kubectl(
            &[
                "label",
                "namespace",
                &ns.name,
                &format!("fedcred-test/webhook={}", ns.name),
            ],
            None,
        )
        .success();
        let mut client = json!({"url": format!("https://127.0.0.1:{port}/mutate")});
        if let Some(ca) = ca_pem {
            client["caBundle"] = json!(base64::engine::general_purpose::STANDARD.encode(ca));
        }
        let config = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "pods.fedcred.io",
                "clientConfig": client,
                "rules": [{
                    "apiGroups": [""], "apiVersions": ["v1"],
                    "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced",
                }],
                "objectSelector": {"matchLabels": {"fedcred.io/inject": "true"}},
                "namespaceSelector": {"matchLabels": {"fedcred-test/webhook": ns.name}},
                "failurePolicy": "Fail",
                "reinvocationPolicy": "IfNeeded",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }],
        });
        kubectl(&["create", "-f", "-"], Some(&config.to_string())).success();
        Registration { name }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = kubectl(
            &[
                "delete",
                "mutatingwebhookconfiguration",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
    }
}

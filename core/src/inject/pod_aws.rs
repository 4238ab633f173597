//! The pod's own AWS credentials, for the `fedcred agent` sidecar of `exchange: Pod`.
//!
//! EKS adds them to a pod at admission through its own mutating webhook: for Pod Identity the
//! variables `AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`
//! and a projected ServiceAccount token volume (`eks-pod-identity-token`, audience
//! `pods.eks.amazonaws.com`) mounted at `/var/run/secrets/pods.eks.amazonaws.com/serviceaccount`;
//! for IRSA `AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE` and the volume `aws-iam-token`; with
//! either, `AWS_REGION`, `AWS_DEFAULT_REGION` and sometimes `AWS_STS_REGIONAL_ENDPOINTS`. It
//! adds them to every container and init container, native sidecars included.
//!
//! The API server calls mutating webhooks in an order fedcred does not control. When EKS's
//! runs after fedcred's, it gives the agent sidecar those variables itself. When it ran
//! before, the pod's own containers carry them and the sidecar, added later, would have none:
//! so the sidecar gets a copy of what the first container that has them carries, the
//! variables as written (values or references) and the volume mounts their files live under.
//! A variable the sidecar already has is not copied twice, and EKS's webhook, reinvoked or
//! not, skips containers that already have its variables.

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, VolumeMount};

/// The variables the AWS SDKs' credential chain and region lookup read, in the order they
/// are copied.
pub(super) const AWS_VARIABLES: [&str; 9] = [
    "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_SESSION_NAME",
];

/// The variables that name a credential source; a container with one of them is the one
/// copied from.
const SOURCES: [&str; 3] = [
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
];

/// Variables that hold a file path whose volume mount is copied too.
const FILES: [&str; 2] = [
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
];

/// What the agent sidecar takes from the pod: environment and mounts.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct PodAws {
    pub env: Vec<EnvVar>,
    pub mounts: Vec<VolumeMount>,
}

/// The AWS credential settings of the first container (then init container) of `spec` that
/// has any, as [`PodAws`]; empty when none has (EKS's webhook has not run yet, or the pod
/// gets its credentials some other way, such as the node's instance role).
pub(super) fn pod_aws(spec: &PodSpec) -> PodAws {
    let has_source = |c: &&Container| {
        c.env
            .iter()
            .flatten()
            .any(|e| SOURCES.contains(&e.name.as_str()))
    };
    let Some(source) = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(has_source)
    else {
        return PodAws::default();
    };
    let env: Vec<EnvVar> = AWS_VARIABLES
        .iter()
        .filter_map(|name| source.env.iter().flatten().find(|e| e.name == *name))
        .cloned()
        .collect();
    let files: Vec<&str> = env
        .iter()
        .filter(|e| FILES.contains(&e.name.as_str()))
        .filter_map(|e| e.value.as_deref())
        .collect();
    let mounts = source
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| files.iter().any(|f| under(f, &m.mount_path)))
        .map(|m| VolumeMount {
            name: m.name.clone(),
            mount_path: m.mount_path.clone(),
            read_only: Some(true),
            ..VolumeMount::default()
        })
        .collect();
    PodAws { env, mounts }
}

/// Whether `file` lies under the directory `dir`.
fn under(file: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    file.strip_prefix(dir)
        .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn pod_identity_settings_are_copied_with_their_token_mount() {
        let s = spec(json!({"containers": [
            {"name": "plain"},
            {"name": "app",
             "env": [
                {"name": "LOG", "value": "1"},
                {"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                 "value": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"},
                {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"},
                {"name": "AWS_REGION", "value": "eu-west-1"}],
             "volumeMounts": [
                {"name": "data", "mountPath": "/data"},
                {"name": "eks-pod-identity-token", "mountPath": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount", "readOnly": true},
                {"name": "lookalike", "mountPath": "/var/run/secrets/pods.eks.amazonaws.com/service"}]}
        ]}));
        let found = pod_aws(&s);
        let names: Vec<&str> = found.env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "AWS_REGION",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
            ]
        );
        let mounts: Vec<&str> = found.mounts.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(mounts, ["eks-pod-identity-token"]);
    }

    #[test]
    fn irsa_settings_from_an_init_container_count_too() {
        let s = spec(json!({
            "containers": [{"name": "app"}],
            "initContainers": [{"name": "migrate", "env": [
                {"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::111122223333:role/orders"},
                {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"}],
             "volumeMounts": [{"name": "aws-iam-token", "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount/"}]}]
        }));
        let found = pod_aws(&s);
        assert_eq!(found.env.len(), 2);
        assert_eq!(found.mounts[0].name, "aws-iam-token");
    }

    #[test]
    fn a_region_alone_is_not_a_credential_source() {
        let s = spec(
            json!({"containers": [{"name": "app", "env": [{"name": "AWS_REGION", "value": "eu-west-1"}]}]}),
        );
        assert_eq!(pod_aws(&s), PodAws::default());
    }
}

//! [`mutate`]: one pod and its FederatedCredential in, an [`Outcome`] out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, SecretVolumeSource, Volume};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::env::{self, EnvEdit};
use super::patch::{add, escape, replace};
use super::pod_aws::pod_aws;
use super::ports::{self, Taken};
use super::recipe::Recipe;
use super::sidecars::{self, ProxySettings};
use super::{
    DEFAULT_HEALTH_PORT, INJECTED_ANNOTATION, InjectConfig, MAX_WARNING_CHARS, METADATA_CONTAINER,
    Outcome, PROXY_CONTAINER_PREFIX, Refusal, TOKEN_VOLUME,
};
use crate::api::{FederatedCredential, READY};
use crate::metadata::{injected_env, project_env};
use crate::names::requested_credential;

/// What `pod` gets from `fc`, the FederatedCredential of the pod's namespace that the pod's
/// annotation names (looked up by the caller; `None` when it does not exist).
///
/// The caller fills `pod.metadata.namespace` from the admission request when the object lacks
/// it (pods created by controllers usually do), so that messages name the right namespace.
pub fn mutate(pod: &Pod, fc: Option<&FederatedCredential>, config: &InjectConfig) -> Outcome {
    let Some(credential_name) = requested_credential(
        pod.metadata.labels.as_ref(),
        pod.metadata.annotations.as_ref(),
    ) else {
        return Outcome::Unchanged;
    };
    let namespace = pod.metadata.namespace.clone();
    if credential_name.is_empty() {
        return Outcome::Refuse(Refusal::NoCredentialNamed { namespace });
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Outcome::Refuse(Refusal::NoSpec);
    };
    match existing_injection(spec) {
        Existing::Injected => return Outcome::Unchanged,
        Existing::NameTaken(what) => return Outcome::Refuse(Refusal::NameTaken { what }),
        Existing::None => {}
    }
    let Some(fc) = fc else {
        return Outcome::Refuse(Refusal::CredentialNotFound {
            namespace,
            name: credential_name.to_owned(),
        });
    };
    if spec.host_network == Some(true) {
        // The node's loopback is shared by every host-network pod on the node: the emulator
        // would hand this pod's token to all of them, and the ports would collide.
        return Outcome::Refuse(Refusal::HostNetwork);
    }
    let credential = fc_id(fc, pod);
    match Injection::plan(pod, &Recipe::of(fc), &credential, config) {
        Ok(injection) => injection.into_outcome(pod, spec, fc),
        Err(refusal) => Outcome::Refuse(refusal),
    }
}

enum Existing {
    None,
    Injected,
    NameTaken(String),
}

/// Whether the pod was injected already. The metadata sidecar decides: every injection adds
/// it, and a pod read back from the API (re-submission) or seen again after other webhooks
/// (reinvocation) has it. Our other names without it are someone else's and would clash.
fn existing_injection(spec: &PodSpec) -> Existing {
    let containers = || {
        spec.init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
    };
    if containers().any(|c| c.name == METADATA_CONTAINER) {
        return Existing::Injected;
    }
    let is_proxy_name = |name: &str| {
        name.strip_prefix(PROXY_CONTAINER_PREFIX)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(c) = containers().find(|c| is_proxy_name(&c.name)) {
        return Existing::NameTaken(format!("a container named {}", c.name));
    }
    if spec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == TOKEN_VOLUME)
    {
        return Existing::NameTaken(format!("a volume named {TOKEN_VOLUME}"));
    }
    Existing::None
}

/// Everything decided for one pod, before it becomes patch operations.
struct Injection {
    native: bool,
    /// The Secret volume; none when the pod exchanges for itself.
    volume: Option<Volume>,
    /// Metadata sidecar first, then the proxies in instance order.
    sidecars: Vec<Container>,
    /// Environment for the pod's own containers and init containers.
    app_env: Vec<(String, String)>,
}

impl Injection {
    /// Everything `recipe` gives `pod`; `credential` (`namespace/name`) names the resource
    /// in refusals.
    fn plan(
        pod: &Pod,
        recipe: &Recipe<'_>,
        credential: &str,
        config: &InjectConfig,
    ) -> Result<Injection, Refusal> {
        let instances = recipe.instances();
        let declared = ports::declared(pod);
        let mut instance_ports = BTreeMap::new();
        for (i, instance) in instances.iter().enumerate() {
            let refusal = |problem| Refusal::InstancePort {
                credential: credential.to_owned(),
                index: i,
                port: instance.port,
                problem,
            };
            let port = u16::try_from(instance.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| refusal(super::PortProblem::NotAPort))?;
            // The user chose this port and the application may rely on it: refuse rather than
            // move it, or the proxy would crash-loop on a port the application holds.
            if let Some(owner) = declared.get(&port) {
                return Err(refusal(super::PortProblem::DeclaredBy(owner.clone())));
            }
            if instance_ports.insert(port, i).is_some() {
                return Err(refusal(super::PortProblem::UsedTwice));
            }
        }
        let mut taken = Taken::new(declared.keys().chain(instance_ports.keys()).copied());
        let no_port = || Refusal::NoFreePort;
        let metadata_port = taken.claim_from(config.metadata_port).ok_or_else(no_port)?;
        let health_ports: Vec<u16> = instances
            .iter()
            .map(|_| taken.claim_from(DEFAULT_HEALTH_PORT))
            .collect::<Option<_>>()
            .ok_or_else(no_port)?;

        let metadata_env = injected_env(&sidecars::listen(metadata_port));
        let mut app_env = metadata_env.clone();
        app_env.extend(project_env(recipe.project_id().as_deref()));
        if let Some(first) = instances.first() {
            app_env.push(("PGHOST".to_owned(), "127.0.0.1".to_owned()));
            app_env.push(("PGPORT".to_owned(), first.port.to_string()));
            // With a password login the user is the application's business.
            if first.auto_iam_authn
                && let Some(user) = recipe.db_user()
            {
                app_env.push(("PGUSER".to_owned(), user));
            }
        }

        let proxy = recipe.proxy();
        let settings = ProxySettings {
            image: proxy
                .and_then(|p| p.image.as_deref())
                .filter(|i| !i.is_empty())
                .unwrap_or(&config.proxy_image),
            resources: proxy.and_then(|p| p.resources.as_ref()),
            metadata_env: &metadata_env,
            admin_endpoint: config.alloydb_admin_endpoint.as_deref(),
        };
        let first = match &recipe.agent_credential {
            Some(credential) => sidecars::agent(
                &config.fedcred_image,
                metadata_port,
                credential,
                &pod_aws(pod.spec.as_ref().ok_or(Refusal::NoSpec)?),
            ),
            None => {
                let mut metadata = sidecars::metadata(&config.fedcred_image, metadata_port);
                if let Some(url) = recipe.iam_credentials {
                    // Where the sidecar mints ID tokens, when the resource names another
                    // endpoint (the agent reads it from the resource itself).
                    metadata.env = Some(vec![sidecars::env_var(
                        "FEDCRED_GOOGLE_IAM_CREDENTIALS_URL",
                        url,
                    )]);
                }
                metadata
            }
        };
        let mut sidecars = vec![first];
        sidecars.extend(
            instances
                .iter()
                .zip(&health_ports)
                .enumerate()
                .map(|(i, (instance, health))| sidecars::proxy(i, instance, *health, &settings)),
        );
        if config.native_sidecars {
            for sidecar in &mut sidecars {
                sidecar.restart_policy = Some("Always".to_owned());
            }
        }
        Ok(Injection {
            native: config.native_sidecars,
            volume: recipe.agent_credential.is_none().then(|| Volume {
                name: TOKEN_VOLUME.to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(recipe.secret.clone()),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            }),
            sidecars,
            app_env,
        })
    }

    /// The operations, in order: annotation, volume, environment of the pod's own containers
    /// (at their original indices, before anything is inserted), then the sidecars.
    fn into_outcome(self, pod: &Pod, spec: &PodSpec, fc: &FederatedCredential) -> Outcome {
        let mut warnings: Vec<String> = readiness_warning(fc, pod).into_iter().collect();
        let mut ops = Vec::new();

        if let Some(volume) = &self.volume {
            let volume = to_value(volume);
            ops.push(match spec.volumes {
                None => add("/spec/volumes".to_owned(), Value::Array(vec![volume])),
                Some(_) => add("/spec/volumes/-".to_owned(), volume),
            });
        }

        let mut own: Vec<(String, &Container, String)> = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let what = format!("container {}", c.name);
                (format!("/spec/containers/{i}"), c, what)
            })
            .collect();
        // Without native sidecars nothing serves the pod's init containers: pointing them at
        // the emulator would only turn "no credentials" into "connection refused".
        if self.native {
            own.extend(
                spec.init_containers
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, c)| {
                        let what = format!("init container {}", c.name);
                        (format!("/spec/initContainers/{i}"), c, what)
                    }),
            );
        }
        for (path, container, what) in own {
            let edits = env::edits(container, &self.app_env, &what, &mut warnings);
            ops.extend(env_ops(&path, container, edits));
        }

        let sidecars: Vec<Value> = self.sidecars.iter().map(to_value).collect();
        if self.native {
            match spec.init_containers {
                None => ops.push(add(
                    "/spec/initContainers".to_owned(),
                    Value::Array(sidecars),
                )),
                // Insert at the front, in order: they run before the pod's own init containers.
                Some(_) => ops.extend(
                    sidecars
                        .into_iter()
                        .enumerate()
                        .map(|(k, c)| add(format!("/spec/initContainers/{k}"), c)),
                ),
            }
        } else {
            ops.extend(
                sidecars
                    .into_iter()
                    .map(|c| add("/spec/containers/-".to_owned(), c)),
            );
        }

        let digest = digest(&ops);
        let annotation = match pod.metadata.annotations {
            None => add(
                "/metadata/annotations".to_owned(),
                serde_json::json!({ INJECTED_ANNOTATION: digest }),
            ),
            // `add` replaces a value copied from another pod.
            Some(_) => add(
                format!("/metadata/annotations/{}", escape(INJECTED_ANNOTATION)),
                Value::String(digest),
            ),
        };
        ops.insert(0, annotation);
        warnings
            .iter_mut()
            .for_each(|w| *w = fit(w, MAX_WARNING_CHARS));
        Outcome::Patch { ops, warnings }
    }
}

fn env_ops(path: &str, container: &Container, edits: Vec<EnvEdit>) -> Vec<Value> {
    let mut appended = Vec::new();
    let mut ops = Vec::new();
    for edit in edits {
        match edit {
            EnvEdit::Append { name, value } => {
                appended.push(to_value(&sidecars::env_var(&name, &value)));
            }
            EnvEdit::SetValue { index, value } => {
                let has_value = container
                    .env
                    .as_ref()
                    .and_then(|env| env.get(index))
                    .is_some_and(|e| e.value.is_some());
                let at = format!("{path}/env/{index}/value");
                ops.push(if has_value {
                    replace(at, Value::String(value))
                } else {
                    add(at, Value::String(value))
                });
            }
        }
    }
    if appended.is_empty() {
        return ops;
    }
    match container.env {
        None => ops.push(add(format!("{path}/env"), Value::Array(appended))),
        Some(_) => ops.extend(
            appended
                .into_iter()
                .map(|v| add(format!("{path}/env/-"), v)),
        ),
    }
    ops
}

/// A warning when the credential has no valid token yet: the pod is still admitted, since the
/// controller may be about to issue one and refusing would only make the workload retry.
fn readiness_warning(fc: &FederatedCredential, pod: &Pod) -> Option<String> {
    let ready = fc
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    let detail = match ready {
        Some(c) if c.status == "True" => return None,
        Some(c) if c.message.is_empty() => c.reason.clone(),
        Some(c) => format!("{}: {}", c.reason, c.message),
        None => "no Ready condition yet: the controller has not reported on it".to_owned(),
    };
    let head = format!("FederatedCredential {} is not Ready (", fc_id(fc, pod));
    let tail = "): the pod is admitted, but its Google calls fail until it is Ready";
    let room = MAX_WARNING_CHARS.saturating_sub(head.chars().count() + tail.chars().count());
    Some(format!("{head}{}{tail}", fit(&detail, room)))
}

fn fc_id(fc: &FederatedCredential, pod: &Pod) -> String {
    let namespace = fc
        .metadata
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("<pod namespace>");
    format!(
        "{namespace}/{}",
        fc.metadata.name.as_deref().unwrap_or_default()
    )
}

/// `text` cut to at most `max` characters, ending in `…` when cut.
fn fit(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `sha256:` and 16 hex digits of the operations' canonical JSON: it changes whenever what
/// was injected changes (images, ports, flags, environment), and not otherwise.
fn digest(ops: &[Value]) -> String {
    // A Vec of JSON values always serializes.
    let bytes = serde_json::to_vec(ops).unwrap_or_default();
    let hash = Sha256::digest(&bytes);
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn to_value<T: serde::Serialize>(object: &T) -> Value {
    // Kubernetes objects built here always serialize.
    serde_json::to_value(object).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use serde_json::json;

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "orders-api-0",
                "namespace": "shop",
                "labels": {"fedcred.io/inject": "true"},
                "annotations": {"fedcred.io/credential": "orders-db"}
            },
            "spec": spec
        }))
        .unwrap()
    }

    fn app() -> Value {
        json!({"containers": [{"name": "app", "image": "app:1"}]})
    }

    fn credential(alloydb: Value) -> FederatedCredential {
        serde_json::from_value(json!({
            "apiVersion": "fedcred.io/v1alpha1",
            "kind": "FederatedCredential",
            "metadata": {"name": "orders-db", "namespace": "shop"},
            "spec": {
                "aws": {"serviceAccount": {"name": "orders-api"}},
                "google": {
                    "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/aws",
                    "serviceAccount": "orders@acme-shop.iam.gserviceaccount.com"
                },
                "alloydb": alloydb
            }
        }))
        .unwrap()
    }

    fn one_instance(port: i32) -> FederatedCredential {
        credential(json!({"instances": [{
            "uri": "projects/acme-shop/locations/us-east4/clusters/orders/instances/primary",
            "port": port
        }]}))
    }

    fn config() -> InjectConfig {
        InjectConfig::new("fedcred:test")
    }

    fn refusal(outcome: Outcome) -> String {
        match outcome {
            Outcome::Refuse(refusal) => refusal.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn patch(outcome: Outcome) -> (Vec<Value>, Vec<String>) {
        match outcome {
            Outcome::Patch { ops, warnings } => (ops, warnings),
            other => panic!("expected a patch, got {other:?}"),
        }
    }

    #[test]
    fn a_pod_without_the_label_is_left_alone() {
        let mut p = pod(app());
        p.metadata.labels = None;
        let fc = one_instance(5432);
        assert_eq!(mutate(&p, Some(&fc), &config()), Outcome::Unchanged);
    }

    #[test]
    fn a_labelled_pod_without_a_credential_name_is_refused() {
        let mut p = pod(app());
        p.annotations_mut()
            .insert("fedcred.io/credential".to_owned(), " ".to_owned());
        let message = refusal(mutate(&p, None, &config()));
        assert!(message.contains("fedcred.io/credential"), "{message}");
        assert!(message.contains("namespace shop"), "{message}");
    }

    #[test]
    fn host_network_pods_are_refused() {
        let p = pod(json!({"hostNetwork": true, "containers": [{"name": "app"}]}));
        let message = refusal(mutate(&p, Some(&one_instance(5432)), &config()));
        assert!(message.contains("hostNetwork"), "{message}");
    }

    #[test]
    fn an_instance_port_the_pod_declares_is_refused_with_the_container() {
        let p = pod(json!({"containers": [
            {"name": "app", "ports": [{"containerPort": 5432}]}
        ]}));
        let message = refusal(mutate(&p, Some(&one_instance(5432)), &config()));
        assert!(
            message.contains("spec.alloydb.instances[0].port"),
            "{message}"
        );
        assert!(message.contains("container app"), "{message}");
        assert!(message.contains("shop/orders-db"), "{message}");
    }

    #[test]
    fn a_foreign_container_with_a_proxy_name_is_refused() {
        let p = pod(json!({"containers": [{"name": "app"}, {"name": "alloydb-proxy-0"}]}));
        let message = refusal(mutate(&p, Some(&one_instance(5432)), &config()));
        assert!(message.contains("alloydb-proxy-0"), "{message}");
        // A name that merely starts alike is the pod's own business.
        let p = pod(json!({"containers": [{"name": "app"}, {"name": "alloydb-proxy-old"}]}));
        patch(mutate(&p, Some(&one_instance(5432)), &config()));
    }

    #[test]
    fn the_sidecar_mints_id_tokens_at_the_resources_iam_endpoint_when_it_names_one() {
        let plain = one_instance(5432);
        let (ops, _) = patch(mutate(&pod(app()), Some(&plain), &config()));
        let text = serde_json::to_string(&ops).unwrap();
        assert!(
            !text.contains("FEDCRED_GOOGLE_IAM_CREDENTIALS_URL"),
            "{text}"
        );
        let mut other = plain.clone();
        other.spec.google.endpoints = Some(crate::api::GoogleEndpoints {
            sts: None,
            iam_credentials: Some("https://iamcredentials.example-universe.test".into()),
        });
        let (ops, _) = patch(mutate(&pod(app()), Some(&other), &config()));
        let text = serde_json::to_string(&ops).unwrap();
        assert!(
            text.contains(
                r#"{"name":"FEDCRED_GOOGLE_IAM_CREDENTIALS_URL","value":"https://iamcredentials.example-universe.test"}"#
            ),
            "{text}"
        );
        // It reaches pods, so it is part of the hash; resources without it keep theirs.
        assert_ne!(
            super::super::injection_hash(&plain),
            super::super::injection_hash(&other)
        );
        let mut sts_only = plain.clone();
        sts_only.spec.google.endpoints = Some(crate::api::GoogleEndpoints {
            sts: Some("https://sts.example-universe.test/v1/token".into()),
            iam_credentials: None,
        });
        assert_eq!(
            super::super::injection_hash(&plain),
            super::super::injection_hash(&sts_only)
        );
    }

    #[test]
    fn the_metadata_port_steps_over_instance_ports() {
        let mut config = config();
        config.metadata_port = 5432;
        let (ops, _) = patch(mutate(&pod(app()), Some(&one_instance(5432)), &config));
        let text = serde_json::to_string(&ops).unwrap();
        assert!(text.contains("127.0.0.1:5433"), "{text}");
    }

    #[test]
    fn an_annotation_copied_without_the_containers_does_not_stop_injection() {
        let mut p = pod(app());
        p.annotations_mut()
            .insert(INJECTED_ANNOTATION.to_owned(), "sha256:0000".to_owned());
        let (ops, _) = patch(mutate(&p, Some(&one_instance(5432)), &config()));
        assert_eq!(ops[0]["path"], "/metadata/annotations/fedcred.io~1injected");
        assert_ne!(ops[0]["value"], "sha256:0000");
    }

    #[test]
    fn the_digest_follows_what_is_injected() {
        let fc = one_instance(5432);
        let digest_of = |config: &InjectConfig| {
            patch(mutate(&pod(app()), Some(&fc), config)).0[0]["value"].clone()
        };
        let mut other = config();
        other.proxy_image = "proxy:other".to_owned();
        assert_eq!(digest_of(&config()), digest_of(&config()));
        assert_ne!(digest_of(&config()), digest_of(&other));
    }

    #[test]
    fn warnings_fit_what_the_api_server_keeps() {
        let mut fc = one_instance(5432);
        fc.status = Some(
            serde_json::from_value(json!({"conditions": [{
                "type": "Ready", "status": "False", "reason": "Upstream",
                "message": "x".repeat(1000), "lastTransitionTime": "2026-01-01T00:00:00Z"
            }]}))
            .unwrap(),
        );
        let (_, warnings) = patch(mutate(&pod(app()), Some(&fc), &config()));
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].chars().count(), MAX_WARNING_CHARS);
        assert!(
            warnings[0]
                .starts_with("FederatedCredential shop/orders-db is not Ready (Upstream: xxx")
        );
        assert!(warnings[0].ends_with("until it is Ready"));
    }

    #[test]
    fn proxy_resources_and_image_come_from_the_credential_when_set() {
        let fc = credential(json!({
            "instances": [{"uri": "projects/acme-shop/locations/us-east4/clusters/orders/instances/primary"}],
            "proxy": {"image": "mirror.example/alloydb-auth-proxy:1.17.1", "resources": {"requests": {"cpu": "1"}}}
        }));
        let (ops, _) = patch(mutate(&pod(app()), Some(&fc), &config()));
        let sidecars = &ops.last().unwrap()["value"];
        assert_eq!(
            sidecars[1]["image"],
            "mirror.example/alloydb-auth-proxy:1.17.1"
        );
        assert_eq!(sidecars[1]["resources"], json!({"requests": {"cpu": "1"}}));
    }

    #[test]
    fn the_emulator_has_an_exec_startup_probe() {
        let probe = sidecars::metadata_startup_probe(8988).unwrap();
        let command = probe.exec.unwrap().command.unwrap();
        assert_eq!(
            command,
            [
                "/usr/local/bin/fedcred",
                "metadata-server",
                "--check",
                "--listen",
                "127.0.0.1:8988"
            ]
        );
        assert_eq!(
            sidecars::metadata("fedcred:test", 8988).startup_probe,
            Some(probe_again())
        );
    }

    fn probe_again() -> k8s_openapi::api::core::v1::Probe {
        sidecars::metadata_startup_probe(8988).unwrap()
    }
}

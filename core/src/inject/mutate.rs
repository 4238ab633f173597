//! [`mutate`]: one pod and its FederatedCredential in, an [`Outcome`] out.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, Pod, PodSpec, SecretVolumeSource, Volume, VolumeMount,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::env::{self, EnvEdit};
use super::patch::{add, escape, replace};
use super::pod_aws::pod_aws;
use super::ports::{self, Taken};
use super::recipe::Recipe;
use super::sidecars::{self, ProxyPorts, ProxySettings};
use super::{
    CLOUDSQL_PROXY_CONTAINER_PREFIX, CLOUDSQL_SOCKET_DIR, CLOUDSQL_SOCKET_VOLUME,
    DEFAULT_HEALTH_PORT, INJECTED_ANNOTATION, InjectConfig, MAX_WARNING_CHARS, METADATA_CONTAINER,
    Outcome, PROMETHEUS_ANNOTATIONS, PROXY_CONTAINER_PREFIX, PortProblem, Refusal, SOCKET_DIR,
    SOCKET_VOLUME, TOKEN_VOLUME,
};
use crate::api::{
    AlloyDbInstance, AlloyDbProxy, CloudSqlInstance, DatabaseEngine, FederatedCredential, READY,
};
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
        [PROXY_CONTAINER_PREFIX, CLOUDSQL_PROXY_CONTAINER_PREFIX]
            .iter()
            .filter_map(|prefix| name.strip_prefix(prefix))
            .any(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(c) = containers().find(|c| is_proxy_name(&c.name)) {
        return Existing::NameTaken(format!("a container named {}", c.name));
    }
    if let Some(v) =
        spec.volumes.iter().flatten().find(|v| {
            [TOKEN_VOLUME, SOCKET_VOLUME, CLOUDSQL_SOCKET_VOLUME].contains(&v.name.as_str())
        })
    {
        return Existing::NameTaken(format!("a volume named {}", v.name));
    }
    Existing::None
}

/// Everything decided for one pod, before it becomes patch operations.
struct Injection {
    native: bool,
    /// The Secret volume (none when the pod exchanges for itself), then the socket volume.
    volumes: Vec<Volume>,
    /// Metadata sidecar first, then the proxies in instance order.
    sidecars: Vec<Container>,
    /// Environment for the pod's own containers and init containers.
    app_env: Vec<(String, String)>,
    /// Volume mounts for the same containers: the socket directory, with Unix sockets.
    app_mounts: Vec<VolumeMount>,
    /// Pod annotations besides [`INJECTED_ANNOTATION`], each added unless the pod sets it.
    annotations: Vec<(String, String)>,
    /// Admission warnings about the pod and the resource together.
    warnings: Vec<String>,
}

/// The kubelet's default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Warnings for SIGTERM delays the pod's grace period cuts short: the kubelet kills the proxy
/// when the period ends, so connections the delay was meant to let finish are cut anyway.
fn grace_period_warnings(pod: &Pod, proxy: Option<&AlloyDbProxy>) -> Vec<String> {
    let Some(proxy) = proxy else {
        return Vec::new();
    };
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    [
        ("maxSigtermDelay", &proxy.max_sigterm_delay),
        ("minSigtermDelay", &proxy.min_sigterm_delay),
    ]
    .into_iter()
    .filter_map(|(field, delay)| {
        let delay = delay.as_deref()?;
        let millis = duration_millis(delay)?;
        (millis >= grace.saturating_mul(1000)).then(|| {
            format!(
                "spec.alloydb.proxy.{field} ({delay}) is not shorter than the pod's \
                 terminationGracePeriodSeconds ({grace}): the kubelet kills the AlloyDB proxy \
                 before the delay ends; raise terminationGracePeriodSeconds or shorten the delay"
            )
        })
    })
    .collect()
}

/// Milliseconds of a duration as the CRD allows it: `0`, or a number and one of `ms`, `s`,
/// `m`, `h`.
fn duration_millis(text: &str) -> Option<i64> {
    if text == "0" {
        return Some(0);
    }
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// Claims a port the user chose (an instance's, or an admin port) in `chosen`, or says why it
/// cannot be used in this pod.
fn claim_chosen(
    port: i32,
    declared: &BTreeMap<u16, String>,
    chosen: &mut BTreeSet<u16>,
) -> Result<u16, PortProblem> {
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(PortProblem::NotAPort)?;
    if let Some(owner) = declared.get(&port) {
        return Err(PortProblem::DeclaredBy(owner.clone()));
    }
    if !chosen.insert(port) {
        return Err(PortProblem::UsedTwice);
    }
    Ok(port)
}

/// Refuses a pod whose own container already mounts something at `dir` ([`SOCKET_DIR`] for
/// `alloydb`, [`CLOUDSQL_SOCKET_DIR`] for `cloudsql`): the API server refuses two mounts at one
/// path, and the application would not see the sockets.
fn socket_mount_free(pod: &Pod, list: &'static str) -> Result<(), Refusal> {
    let dir = if list == "cloudsql" {
        CLOUDSQL_SOCKET_DIR
    } else {
        SOCKET_DIR
    };
    let spec = pod.spec.as_ref().ok_or(Refusal::NoSpec)?;
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for c in containers {
        if c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path.trim_end_matches('/') == dir)
        {
            return Err(Refusal::SocketDirTaken {
                container: c.name.clone(),
                list,
            });
        }
    }
    Ok(())
}

/// Where each instance is, for the application: host, port and (with automatic IAM login) the
/// IAM database user, under the names the instance gives them. The first instance's defaults
/// `PGHOST`, `PGPORT` and `PGUSER` give way to a name another instance sets explicitly.
fn database_env(
    instances: &[AlloyDbInstance],
    unix_socket: bool,
    db_user: Option<String>,
) -> Vec<(String, String)> {
    let explicit: Vec<&str> = instances
        .iter()
        .flat_map(|i| [&i.host_env_name, &i.port_env_name, &i.user_env_name])
        .filter_map(|n| n.as_deref())
        .collect();
    let mut env = Vec::new();
    for (index, instance) in instances.iter().enumerate() {
        let name = |set: &Option<String>, default: &str| match set.as_deref() {
            Some(name) => Some(name.to_owned()),
            None if index == 0 && !explicit.contains(&default) => Some(default.to_owned()),
            None => None,
        };
        let (host, port) = match (unix_socket, sidecars::socket_dir(&instance.uri)) {
            (true, Some(dir)) => (dir, sidecars::SOCKET_PORT.to_string()),
            _ => ("127.0.0.1".to_owned(), instance.port.to_string()),
        };
        if let Some(n) = name(&instance.host_env_name, "PGHOST") {
            env.push((n, host));
        }
        if let Some(n) = name(&instance.port_env_name, "PGPORT") {
            env.push((n, port));
        }
        // With a password login the user is the application's business.
        if instance.auto_iam_authn
            && let Some(user) = &db_user
            && let Some(n) = name(&instance.user_env_name, "PGUSER")
        {
            env.push((n, user.clone()));
        }
    }
    env
}

/// Where each Cloud SQL instance is, for the application. Defaults: the first PostgreSQL
/// instance gets `PGHOST`, `PGPORT` and `PGUSER` unless the resource has AlloyDB instances
/// (whose first instance has those); the first MySQL instance gets `MYSQL_HOST`,
/// `MYSQL_TCP_PORT` (both read by the MySQL client libraries) and `MYSQL_USER`. On Unix
/// sockets a PostgreSQL instance's host is its socket directory and its port 5432; a MySQL
/// instance's host is its socket file, by default in `MYSQL_UNIX_PORT`, with no port.
fn cloudsql_env(
    instances: &[CloudSqlInstance],
    unix_socket: bool,
    with_alloydb: bool,
    postgres_user: Option<String>,
    mysql_user: Option<String>,
) -> Vec<(String, String)> {
    let first_of = |engine: DatabaseEngine| instances.iter().position(|i| i.engine == engine);
    let (first_postgres, first_mysql) = (
        first_of(DatabaseEngine::PostgreSQL).filter(|_| !with_alloydb),
        first_of(DatabaseEngine::MySQL),
    );
    let mut env = Vec::new();
    for (index, instance) in instances.iter().enumerate() {
        let defaults = match instance.engine {
            DatabaseEngine::PostgreSQL if first_postgres == Some(index) => {
                Some(["PGHOST", "PGPORT", "PGUSER"])
            }
            DatabaseEngine::MySQL if first_mysql == Some(index) && unix_socket => {
                Some(["MYSQL_UNIX_PORT", "", "MYSQL_USER"])
            }
            DatabaseEngine::MySQL if first_mysql == Some(index) => {
                Some(["MYSQL_HOST", "MYSQL_TCP_PORT", "MYSQL_USER"])
            }
            _ => None,
        };
        let name = |set: &Option<String>, slot: usize| {
            set.clone()
                .or_else(|| defaults.map(|d| d[slot].to_owned()))
                .filter(|n| !n.is_empty())
        };
        let (host, port) = match (unix_socket, instance.port) {
            (false, Some(port)) => ("127.0.0.1".to_owned(), Some(port.to_string())),
            _ => (
                sidecars::cloudsql_socket(&instance.connection_name),
                (instance.engine == DatabaseEngine::PostgreSQL)
                    .then(|| sidecars::SOCKET_PORT.to_string()),
            ),
        };
        if let Some(n) = name(&instance.host_env_name, 0) {
            env.push((n, host));
        }
        if let Some((n, port)) = name(&instance.port_env_name, 1).zip(port) {
            env.push((n, port));
        }
        let user = match instance.engine {
            DatabaseEngine::PostgreSQL => &postgres_user,
            DatabaseEngine::MySQL => &mysql_user,
        };
        if instance.auto_iam_authn
            && let Some(user) = user
            && let Some(n) = name(&instance.user_env_name, 2)
        {
            env.push((n, user.clone()));
        }
    }
    env
}

/// What tells Prometheus to scrape the proxy's `/metrics` on `port`.
fn prometheus_annotations(port: u16) -> Vec<(String, String)> {
    let [scrape, at, path] = PROMETHEUS_ANNOTATIONS;
    vec![
        (scrape.to_owned(), "true".to_owned()),
        (at.to_owned(), port.to_string()),
        (path.to_owned(), "/metrics".to_owned()),
    ]
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
        let proxy = recipe.proxy();
        let unix_socket = proxy.is_some_and(|p| p.unix_socket);
        let declared = ports::declared(pod);
        // Ports the user chose, which the application may rely on: refuse rather than move
        // them, or the proxy would crash-loop on a port the application holds.
        let mut chosen = BTreeSet::new();
        for (i, instance) in instances.iter().enumerate() {
            // On Unix sockets the instance's port is not opened.
            if unix_socket {
                continue;
            }
            let refusal = |problem| Refusal::InstancePort {
                credential: credential.to_owned(),
                list: "alloydb",
                index: i,
                port: instance.port,
                problem,
            };
            claim_chosen(instance.port, &declared, &mut chosen).map_err(refusal)?;
        }
        let cloudsql = recipe.cloudsql_instances();
        let cloudsql_socket = recipe
            .cloudsql
            .and_then(|c| c.proxy.as_ref())
            .is_some_and(|p| p.unix_socket);
        for (i, instance) in cloudsql.iter().enumerate() {
            // On Unix sockets the instance's port is not opened.
            let Some(port) = instance.port.filter(|_| !cloudsql_socket) else {
                continue;
            };
            claim_chosen(port, &declared, &mut chosen).map_err(|problem| {
                Refusal::InstancePort {
                    credential: credential.to_owned(),
                    list: "cloudsql",
                    index: i,
                    port,
                    problem,
                }
            })?;
        }
        let admin_ports: Vec<Option<u16>> = match proxy.and_then(|p| p.admin_port) {
            None => vec![None; instances.len()],
            Some(first) => (0..instances.len())
                .map(|i| {
                    let port = i32::try_from(i).map_or(i32::MAX, |i| first.saturating_add(i));
                    claim_chosen(port, &declared, &mut chosen)
                        .map(Some)
                        .map_err(|problem| Refusal::AdminPort {
                            credential: credential.to_owned(),
                            index: i,
                            port,
                            problem,
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        let mut taken = Taken::new(declared.keys().chain(&chosen).copied());
        let no_port = || Refusal::NoFreePort;
        let metadata_port = taken.claim_from(config.metadata_port).ok_or_else(no_port)?;
        let proxy_ports: Vec<ProxyPorts> = admin_ports
            .into_iter()
            .map(|admin| {
                let health = taken.claim_from(DEFAULT_HEALTH_PORT)?;
                Some(ProxyPorts { health, admin })
            })
            .collect::<Option<_>>()
            .ok_or_else(no_port)?;
        let cloudsql_health: Vec<u16> = cloudsql
            .iter()
            .map(|_| taken.claim_from(DEFAULT_HEALTH_PORT))
            .collect::<Option<_>>()
            .ok_or_else(no_port)?;
        if unix_socket {
            socket_mount_free(pod, "alloydb")?;
        }
        if cloudsql_socket {
            socket_mount_free(pod, "cloudsql")?;
        }

        let metadata_env = injected_env(&sidecars::listen(metadata_port));
        let mut app_env = metadata_env.clone();
        app_env.extend(project_env(recipe.project_id().as_deref()));
        app_env.extend(database_env(instances, unix_socket, recipe.db_user()));
        app_env.extend(cloudsql_env(
            cloudsql,
            cloudsql_socket,
            !instances.is_empty(),
            recipe.db_user(),
            recipe.mysql_db_user(),
        ));
        let mut named = BTreeSet::new();
        if let Some((name, _)) = app_env
            .iter()
            .find(|(name, _)| !named.insert(name.as_str()))
        {
            return Err(Refusal::EnvNameTwice {
                credential: credential.to_owned(),
                name: name.clone(),
            });
        }

        let settings = ProxySettings {
            image: proxy
                .and_then(|p| p.image.as_deref())
                .filter(|i| !i.is_empty())
                .unwrap_or(&config.proxy_image),
            resources: proxy.and_then(|p| p.resources.as_ref()),
            metadata_env: &metadata_env,
            admin_endpoint: config.alloydb_admin_endpoint.as_deref(),
            options: proxy,
        };
        // Prometheus finds one port per pod: the first proxy's.
        let annotations = match (proxy.is_some_and(|p| p.prometheus), proxy_ports.first()) {
            (true, Some(first)) => prometheus_annotations(first.health),
            _ => Vec::new(),
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
                .zip(&proxy_ports)
                .enumerate()
                .map(|(i, (instance, ports))| sidecars::proxy(i, instance, ports, &settings)),
        );
        let cloudsql_settings = sidecars::CloudSqlSettings {
            image: recipe
                .cloudsql
                .and_then(|c| c.proxy.as_ref())
                .and_then(|p| p.image.as_deref())
                .filter(|i| !i.is_empty())
                .unwrap_or(&config.cloudsql_proxy_image),
            resources: recipe
                .cloudsql
                .and_then(|c| c.proxy.as_ref())
                .and_then(|p| p.resources.as_ref()),
            metadata_env: &metadata_env,
            admin_endpoint: config.cloudsql_admin_endpoint.as_deref(),
            unix_socket: cloudsql_socket,
        };
        sidecars.extend(cloudsql.iter().zip(&cloudsql_health).enumerate().map(
            |(i, (instance, health))| {
                sidecars::cloudsql_proxy(i, instance, *health, &cloudsql_settings)
            },
        ));
        if config.native_sidecars {
            for sidecar in &mut sidecars {
                sidecar.restart_policy = Some("Always".to_owned());
            }
        }
        let mut volumes: Vec<Volume> = recipe
            .agent_credential
            .is_none()
            .then(|| Volume {
                name: TOKEN_VOLUME.to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(recipe.secret.clone()),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            })
            .into_iter()
            .collect();
        let mut app_mounts = Vec::new();
        for (wanted, volume, mount) in [
            (unix_socket, SOCKET_VOLUME, sidecars::socket_mount()),
            (
                cloudsql_socket,
                CLOUDSQL_SOCKET_VOLUME,
                sidecars::cloudsql_socket_mount(),
            ),
        ] {
            if wanted {
                volumes.push(Volume {
                    name: volume.to_owned(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Volume::default()
                });
                app_mounts.push(mount);
            }
        }
        Ok(Injection {
            native: config.native_sidecars,
            volumes,
            sidecars,
            app_env,
            app_mounts,
            annotations,
            warnings: grace_period_warnings(pod, proxy),
        })
    }

    /// The operations, in order: annotation, volume, environment of the pod's own containers
    /// (at their original indices, before anything is inserted), then the sidecars.
    fn into_outcome(self, pod: &Pod, spec: &PodSpec, fc: &FederatedCredential) -> Outcome {
        let mut warnings: Vec<String> = readiness_warning(fc, pod).into_iter().collect();
        warnings.extend(self.warnings.iter().cloned());
        let mut ops = Vec::new();

        let volumes: Vec<Value> = self.volumes.iter().map(to_value).collect();
        match spec.volumes {
            _ if volumes.is_empty() => {}
            None => ops.push(add("/spec/volumes".to_owned(), Value::Array(volumes))),
            Some(_) => ops.extend(
                volumes
                    .into_iter()
                    .map(|v| add("/spec/volumes/-".to_owned(), v)),
            ),
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
            ops.extend(mount_ops(&path, container, &self.app_mounts));
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

        // Annotations the pod sets itself are its own (its application's metrics, say).
        let existing = pod.metadata.annotations.as_ref();
        let mut extra = Vec::new();
        for (key, value) in &self.annotations {
            match existing.and_then(|a| a.get(key)) {
                None => extra.push((key, value)),
                Some(own) if own == value => {}
                Some(own) => warnings.push(format!(
                    "the pod's annotation {key}: {own} is kept, so Prometheus does not find the \
                     AlloyDB proxy's metrics at port {} (set alloydb.proxy.prometheus: false, or \
                     remove the pod's annotation)",
                    self.annotations
                        .iter()
                        .find(|(k, _)| k == PROMETHEUS_ANNOTATIONS[1])
                        .map_or("", |(_, v)| v.as_str())
                )),
            }
        }
        // The digest covers the extra annotations too, in the order they are added.
        let mut annotation_ops: Vec<Value> = extra
            .iter()
            .map(|(key, value)| {
                add(
                    format!("/metadata/annotations/{}", escape(key)),
                    Value::String((*value).clone()),
                )
            })
            .collect();
        let digest = digest(&[annotation_ops.as_slice(), ops.as_slice()].concat());
        match existing {
            None => {
                let mut all = serde_json::Map::new();
                all.insert(INJECTED_ANNOTATION.to_owned(), Value::String(digest));
                for (key, value) in extra {
                    all.insert(key.clone(), Value::String(value.clone()));
                }
                annotation_ops = vec![add("/metadata/annotations".to_owned(), Value::Object(all))];
            }
            // `add` replaces a value copied from another pod.
            Some(_) => annotation_ops.insert(
                0,
                add(
                    format!("/metadata/annotations/{}", escape(INJECTED_ANNOTATION)),
                    Value::String(digest),
                ),
            ),
        }
        annotation_ops.append(&mut ops);
        let ops = annotation_ops;
        warnings
            .iter_mut()
            .for_each(|w| *w = fit(w, MAX_WARNING_CHARS));
        Outcome::Patch { ops, warnings }
    }
}

/// Adds `mounts` to the container at `path`.
fn mount_ops(path: &str, container: &Container, mounts: &[VolumeMount]) -> Vec<Value> {
    let values: Vec<Value> = mounts.iter().map(to_value).collect();
    match container.volume_mounts {
        _ if values.is_empty() => Vec::new(),
        None => vec![add(format!("{path}/volumeMounts"), Value::Array(values))],
        Some(_) => values
            .into_iter()
            .map(|v| add(format!("{path}/volumeMounts/-"), v))
            .collect(),
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
    let hex = crate::encode::hex(&hash[..8]);
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

    fn proxy_with(options: Value) -> FederatedCredential {
        credential(json!({
            "instances": [
                {"uri": "projects/acme-shop/locations/us-east4/clusters/orders/instances/primary"},
                {"uri": "projects/acme-shop/locations/us-east4/clusters/orders/instances/replica",
                 "port": 5433}
            ],
            "proxy": options
        }))
    }

    fn proxy_args(ops: &[Value], index: usize) -> Vec<String> {
        let sidecars = &ops.last().unwrap()["value"];
        serde_json::from_value(sidecars[index + 1]["args"].clone()).unwrap()
    }

    #[test]
    fn each_proxy_gets_its_own_admin_port_counted_from_the_setting() {
        let fc = proxy_with(json!({"adminPort": 9091}));
        let (ops, _) = patch(mutate(&pod(app()), Some(&fc), &config()));
        for (i, port) in [(0, 9091), (1, 9092)] {
            let args = proxy_args(&ops, i);
            assert!(args.contains(&"--quitquitquit".to_owned()), "{args:?}");
            assert!(args.contains(&format!("--admin-port={port}")), "{args:?}");
        }
    }

    #[test]
    fn an_admin_port_the_pod_declares_or_an_instance_uses_is_refused() {
        let p = pod(json!({"containers": [
            {"name": "app", "ports": [{"containerPort": 9092}]}
        ]}));
        let message = refusal(mutate(
            &p,
            Some(&proxy_with(json!({"adminPort": 9091}))),
            &config(),
        ));
        assert!(message.contains("instance 1"), "{message}");
        assert!(message.contains("9092"), "{message}");
        assert!(message.contains("container app"), "{message}");
        let message = refusal(mutate(
            &pod(app()),
            Some(&proxy_with(json!({"adminPort": 5433}))),
            &config(),
        ));
        assert!(message.contains("an instance's port"), "{message}");
        let message = refusal(mutate(
            &pod(app()),
            Some(&proxy_with(json!({"adminPort": 65535}))),
            &config(),
        ));
        assert!(message.contains("not a port"), "{message}");
    }

    #[test]
    fn proxy_options_become_flags_only_when_set() {
        let (ops, _) = patch(mutate(&pod(app()), Some(&proxy_with(json!({}))), &config()));
        let plain = proxy_args(&ops, 0);
        let fc = proxy_with(json!({
            "lazyRefresh": true, "prometheus": true, "maxConnections": 7,
            "maxSigtermDelay": "1m", "minSigtermDelay": "500ms"
        }));
        let (ops, _) = patch(mutate(&pod(app()), Some(&fc), &config()));
        let args = proxy_args(&ops, 1);
        for flag in [
            "--lazy-refresh",
            "--prometheus",
            "--max-connections=7",
            "--max-sigterm-delay=1m",
            "--min-sigterm-delay=500ms",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
            assert!(
                !plain.iter().any(|a| a == flag),
                "{flag} without its setting"
            );
        }
        assert!(!plain.iter().any(|a| a.starts_with("--admin-port")));
    }

    #[test]
    fn prometheus_annotations_point_at_the_first_proxy_unless_the_pod_has_its_own() {
        let fc = proxy_with(json!({"prometheus": true}));
        let about_prometheus = |warnings: Vec<String>| -> Vec<String> {
            warnings
                .into_iter()
                .filter(|w| w.contains("prometheus"))
                .collect()
        };
        let (ops, warnings) = patch(mutate(&pod(app()), Some(&fc), &config()));
        assert_eq!(about_prometheus(warnings), Vec::<String>::new());
        let health = proxy_args(&ops, 0)
            .iter()
            .find_map(|a| a.strip_prefix("--http-port=").map(str::to_owned))
            .unwrap();
        let added: Vec<(String, Value)> = ops
            .iter()
            .filter_map(|op| {
                let path = op["path"].as_str()?;
                let key = path.strip_prefix("/metadata/annotations/")?;
                Some((key.replace("~1", "/"), op["value"].clone()))
            })
            .collect();
        assert!(added.contains(&("prometheus.io/scrape".into(), json!("true"))));
        assert!(added.contains(&("prometheus.io/port".into(), json!(health))));
        assert!(added.contains(&("prometheus.io/path".into(), json!("/metrics"))));

        let mut own = pod(app());
        own.annotations_mut()
            .insert("prometheus.io/port".to_owned(), "8080".to_owned());
        let (ops, warnings) = patch(mutate(&own, Some(&fc), &config()));
        let warnings = about_prometheus(warnings);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("prometheus.io/port: 8080 is kept"));
        assert!(
            !ops.iter()
                .any(|op| op["path"] == "/metadata/annotations/prometheus.io~1port")
        );
    }

    #[test]
    fn unix_sockets_need_the_mount_path_free() {
        let p = pod(json!({"containers": [{"name": "app", "volumeMounts": [
            {"name": "run", "mountPath": "/var/run/fedcred-alloydb/"}
        ]}]}));
        let fc = proxy_with(json!({"unixSocket": true}));
        let message = refusal(mutate(&p, Some(&fc), &config()));
        assert!(message.contains("/var/run/fedcred-alloydb"), "{message}");
        // Without sockets the same pod is fine.
        patch(mutate(&p, Some(&proxy_with(json!({}))), &config()));
    }

    #[test]
    fn cloudsql_unix_sockets_need_their_mount_path_free_and_open_no_port() {
        let fc = |proxy: Value| -> FederatedCredential {
            let mut fc = serde_json::to_value(credential(json!({"instances": [
                {"uri": "projects/acme-shop/locations/us-east4/clusters/orders/instances/primary"}
            ]})))
            .unwrap();
            fc["spec"]["cloudsql"] = json!({
                "instances": [{"connectionName": "acme-shop:europe-west1:orders-pg", "port": 8080}],
                "proxy": proxy
            });
            serde_json::from_value(fc).unwrap()
        };
        let taken = pod(json!({"containers": [{"name": "app", "volumeMounts": [
            {"name": "run", "mountPath": "/var/run/fedcred-cloudsql"}
        ]}]}));
        let message = refusal(mutate(
            &taken,
            Some(&fc(json!({"unixSocket": true}))),
            &config(),
        ));
        assert!(message.contains("/var/run/fedcred-cloudsql"), "{message}");
        assert!(
            message.contains("spec.cloudsql.proxy.unixSocket"),
            "{message}"
        );
        patch(mutate(&taken, Some(&fc(json!({}))), &config()));

        // The port the pod declares is refused on TCP, and not opened on a socket.
        let declaring =
            pod(json!({"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]}));
        let message = refusal(mutate(&declaring, Some(&fc(json!({}))), &config()));
        assert!(message.contains("8080"), "{message}");
        patch(mutate(
            &declaring,
            Some(&fc(json!({"unixSocket": true}))),
            &config(),
        ));
    }

    #[test]
    fn unix_sockets_ignore_instance_ports_the_pod_declares() {
        let p = pod(json!({"containers": [
            {"name": "app", "ports": [{"containerPort": 5432}]}
        ]}));
        let fc = proxy_with(json!({"unixSocket": true}));
        let (ops, _) = patch(mutate(&p, Some(&fc), &config()));
        let args = proxy_args(&ops, 0);
        assert!(args.contains(&"--unix-socket=/var/run/fedcred-alloydb".to_owned()));
        assert!(!args.iter().any(|a| a.starts_with("--port")), "{args:?}");
    }

    #[test]
    fn database_variables_follow_the_names_instances_give() {
        let instances: Vec<AlloyDbInstance> = serde_json::from_value(json!([
            {"uri": "projects/acme-shop/locations/us-east4/clusters/orders/instances/primary"},
            {"uri": "projects/acme-shop/locations/us-east4/clusters/orders/instances/replica",
             "port": 5433, "userEnvName": "PGUSER", "hostEnvName": "REPLICA_HOST"}
        ]))
        .unwrap();
        let env = database_env(&instances, false, Some("orders@acme-shop.iam".to_owned()));
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("PGHOST", "127.0.0.1"),
                ("PGPORT", "5432"),
                ("REPLICA_HOST", "127.0.0.1"),
                ("PGUSER", "orders@acme-shop.iam"),
            ]
        );
        let env = database_env(&instances[..1], true, None);
        assert_eq!(
            env,
            [
                (
                    "PGHOST".to_owned(),
                    "/var/run/fedcred-alloydb/acme-shop.us-east4.orders.primary".to_owned()
                ),
                ("PGPORT".to_owned(), "5432".to_owned()),
            ]
        );
    }

    #[test]
    fn sigterm_delays_the_grace_period_cuts_short_are_warned_about() {
        let fc = proxy_with(json!({"maxSigtermDelay": "30s", "minSigtermDelay": "5s"}));
        let (_, warnings) = patch(mutate(&pod(app()), Some(&fc), &config()));
        let about = |warnings: &[String], field: &str| {
            warnings
                .iter()
                .filter(|w| w.contains(&format!("spec.alloydb.proxy.{field} ")))
                .count()
        };
        assert_eq!(about(&warnings, "maxSigtermDelay"), 1, "{warnings:?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("(30s)") && w.contains("(30)"))
        );
        assert_eq!(about(&warnings, "minSigtermDelay"), 0, "{warnings:?}");
        // A pod that gives itself time is not warned.
        let mut longer = pod(app());
        longer
            .spec
            .as_mut()
            .unwrap()
            .termination_grace_period_seconds = Some(60);
        let (_, warnings) = patch(mutate(&longer, Some(&fc), &config()));
        assert_eq!(about(&warnings, "maxSigtermDelay"), 0, "{warnings:?}");
    }

    #[test]
    fn durations_in_the_crds_units() {
        assert_eq!(duration_millis("0"), Some(0));
        assert_eq!(duration_millis("500ms"), Some(500));
        assert_eq!(duration_millis("30s"), Some(30_000));
        assert_eq!(duration_millis("2m"), Some(120_000));
        assert_eq!(duration_millis("1h"), Some(3_600_000));
        assert_eq!(duration_millis("1m30s"), None);
        assert_eq!(duration_millis("30"), None);
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

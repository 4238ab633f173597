//! The injected containers: the metadata emulator, one AlloyDB Auth Proxy per AlloyDB instance
//! and one Cloud SQL Auth Proxy per Cloud SQL instance.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, ExecAction, HTTPGetAction, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod_aws::PodAws;
use super::{
    AGENT_CREDENTIAL_ENV, CLOUDSQL_PROXY_CONTAINER_PREFIX, CLOUDSQL_SOCKET_DIR,
    CLOUDSQL_SOCKET_VOLUME, FEDCRED_BINARY, METADATA_CONTAINER, PROXY_CONTAINER_PREFIX,
    RUN_AS_USER, SOCKET_DIR, SOCKET_VOLUME, TOKEN_MOUNT_PATH, TOKEN_VOLUME,
};
use crate::api::{
    AlloyDbInstance, AlloyDbProxy, CloudSqlConnectivity, CloudSqlInstance, Connectivity,
};

/// The startup probe of the metadata sidecar: `fedcred metadata-server --check` asks the
/// emulator's root the way Google's libraries ping it.
///
/// Without it the kubelet starts the next container as soon as the emulator's process runs,
/// not when it listens, and a client that asks in that instant is refused (Go's metadata client
/// does not retry a refused connection; Python's ADC then decides it is not on GCE). The
/// emulator listens on loopback only and kubelet `httpGet`/`tcpSocket` probes go to the pod IP,
/// so the probe is an `exec` of the fedcred binary (the image has no shell or curl). Exec probes
/// cost a process per try, which a startup probe pays only until it succeeds.
pub fn metadata_startup_probe(port: u16) -> Option<Probe> {
    Some(Probe {
        exec: Some(ExecAction {
            command: Some(strings([
                FEDCRED_BINARY,
                "metadata-server",
                "--check",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])),
        }),
        period_seconds: Some(1),
        failure_threshold: Some(30),
        timeout_seconds: Some(1),
        ..Probe::default()
    })
}

/// The metadata emulator, reading the Secret volume and listening on `127.0.0.1:port`.
pub(super) fn metadata(image: &str, port: u16) -> Container {
    Container {
        name: METADATA_CONTAINER.to_owned(),
        image: Some(image.to_owned()),
        args: Some(strings([
            "metadata-server",
            "--secret-dir",
            TOKEN_MOUNT_PATH,
            "--listen",
            &listen(port),
        ])),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.to_owned(),
            mount_path: TOKEN_MOUNT_PATH.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        resources: Some(resources("10m", "16Mi", "64Mi")),
        security_context: Some(security_context()),
        startup_probe: metadata_startup_probe(port),
        ..Container::default()
    }
}

/// `fedcred agent` in place of the emulator, for `exchange: Pod`: the same name, place,
/// listen address, probe, resources and security context, but it exchanges the pod's own AWS
/// credentials itself and keeps the token in memory. The FederatedCredential comes in
/// `FEDCRED_CREDENTIAL` (the agent's documented way to take it without a file); the pod's AWS
/// settings follow ([`super::pod_aws`]).
pub(super) fn agent(image: &str, port: u16, credential: &str, aws: &PodAws) -> Container {
    let mut env = vec![env_var(AGENT_CREDENTIAL_ENV, credential)];
    env.extend(aws.env.iter().cloned());
    Container {
        name: METADATA_CONTAINER.to_owned(),
        image: Some(image.to_owned()),
        args: Some(strings(["agent", "--listen", &listen(port)])),
        env: Some(env),
        volume_mounts: (!aws.mounts.is_empty()).then(|| aws.mounts.clone()),
        resources: Some(resources("10m", "16Mi", "64Mi")),
        security_context: Some(security_context()),
        startup_probe: metadata_startup_probe(port),
        ..Container::default()
    }
}

/// What the proxy for one instance needs to know besides the instance.
pub(super) struct ProxySettings<'a> {
    pub image: &'a str,
    pub resources: Option<&'a ResourceRequirements>,
    /// The emulator's `host:port`, for the proxy's own Application Default Credentials.
    pub metadata_env: &'a [(String, String)],
    pub admin_endpoint: Option<&'a str>,
    /// `spec.alloydb.proxy`, when set: the flags every proxy of the resource gets.
    pub options: Option<&'a AlloyDbProxy>,
}

impl ProxySettings<'_> {
    /// Whether the proxies listen on Unix sockets in [`SOCKET_DIR`].
    pub(super) fn unix_socket(&self) -> bool {
        self.options.is_some_and(|o| o.unix_socket)
    }
}

/// The ports one proxy listens on besides the instance's.
pub(super) struct ProxyPorts {
    /// Health checks (and metrics with `prometheus`), on every address.
    pub health: u16,
    /// The localhost admin server with `/quitquitquit`, when asked for.
    pub admin: Option<u16>,
}

/// The directory of the instance's socket inside [`SOCKET_DIR`], as the proxy names it:
/// `PROJECT.REGION.CLUSTER.INSTANCE`, lower case. libpq takes the directory as its host and
/// finds `.s.PGSQL.5432` in it. `None` for a URI that is not an instance URI (the CRD refuses
/// those).
pub(super) fn socket_dir(uri: &str) -> Option<String> {
    let parts = crate::names::instance_uri(uri)?;
    Some(format!(
        "{SOCKET_DIR}/{}",
        [parts.project, parts.region, parts.cluster, parts.instance]
            .join(".")
            .to_ascii_lowercase()
    ))
}

/// The port libpq puts in a socket's name (`.s.PGSQL.5432`), which the proxy always uses.
pub(super) const SOCKET_PORT: u16 = 5432;

/// The AlloyDB Auth Proxy for instance `index`, listening on `127.0.0.1:instance.port` (or on
/// a socket in [`SOCKET_DIR`]) and answering health checks, and metrics when asked, on
/// `ports.health` (on every address, since kubelet probes and Prometheus come to the pod IP). It finds its token through the emulator: never `--token`, which is never
/// refreshed.
pub(super) fn proxy(
    index: usize,
    instance: &AlloyDbInstance,
    ports: &ProxyPorts,
    settings: &ProxySettings<'_>,
) -> Container {
    let health_port = ports.health;
    let mut args = vec![instance.uri.clone()];
    if settings.unix_socket() {
        args.push(format!("--unix-socket={SOCKET_DIR}"));
    } else {
        args.extend([
            "--address=127.0.0.1".to_owned(),
            format!("--port={}", instance.port),
        ]);
    }
    match instance.connectivity {
        Connectivity::Psc => args.push("--psc".to_owned()),
        Connectivity::PublicIp => args.push("--public-ip".to_owned()),
        // Private IP is the proxy's default: no flag.
        Connectivity::PrivateIp => {}
    }
    if instance.auto_iam_authn {
        args.push("--auto-iam-authn".to_owned());
    }
    args.extend(health_flags(health_port));
    // Stopping is not a failure: a Job's pod must not look failed because its proxy got
    // SIGTERM.
    args.extend(strings(["--exit-zero-sigterm", "--structured-logs"]));
    if let Some(options) = settings.options {
        args.extend(option_flags(options));
    }
    if let Some(admin) = ports.admin {
        args.extend(["--quitquitquit".to_owned(), format!("--admin-port={admin}")]);
    }
    if let Some(endpoint) = settings.admin_endpoint {
        args.push(format!("--alloydbadmin-api-endpoint={endpoint}"));
    }
    let mut container = proxy_container(
        format!("{PROXY_CONTAINER_PREFIX}{index}"),
        settings.image,
        args,
        settings.metadata_env,
        settings.resources,
        health_port,
    );
    container.volume_mounts = settings.unix_socket().then(|| vec![socket_mount()]);
    container
}

/// The proxy's health-check server on every address (kubelet probes and Prometheus come to
/// the pod IP); the AlloyDB and Cloud SQL proxies take the same flags.
fn health_flags(port: u16) -> Vec<String> {
    strings([
        "--health-check",
        "--http-address=0.0.0.0",
        &format!("--http-port={port}"),
    ])
}

/// What an AlloyDB or Cloud SQL proxy container is besides its arguments: the image, the
/// emulator's environment for its Application Default Credentials, resources (defaults when the
/// resource names none), the hardened security context, and probes on its health port.
fn proxy_container(
    name: String,
    image: &str,
    args: Vec<String>,
    metadata_env: &[(String, String)],
    resources_set: Option<&ResourceRequirements>,
    health_port: u16,
) -> Container {
    Container {
        name,
        image: Some(image.to_owned()),
        args: Some(args),
        env: Some(
            metadata_env
                .iter()
                .map(|(name, value)| env_var(name, value))
                .collect(),
        ),
        resources: Some(
            resources_set
                .cloned()
                .unwrap_or_else(|| resources("50m", "64Mi", "256Mi")),
        ),
        security_context: Some(security_context()),
        // Native sidecars: the kubelet starts the next container only once this succeeds, so
        // the application finds the port open.
        startup_probe: Some(Probe {
            http_get: Some(http_get("/startup", health_port)),
            period_seconds: Some(1),
            timeout_seconds: Some(1),
            failure_threshold: Some(60),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(http_get("/liveness", health_port)),
            period_seconds: Some(10),
            timeout_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        // No readiness probe: the proxy's /readiness follows the database, and tying the pod's
        // readiness to it would take every replica out of its Services at once.
        ..Container::default()
    }
}

/// What every Cloud SQL proxy of a resource shares.
pub(super) struct CloudSqlSettings<'a> {
    pub image: &'a str,
    pub resources: Option<&'a ResourceRequirements>,
    /// The emulator's `host:port`, for the proxy's own Application Default Credentials.
    pub metadata_env: &'a [(String, String)],
    /// `--sqladmin-api-endpoint`; for tests and other universes.
    pub admin_endpoint: Option<&'a str>,
    /// Listen on Unix sockets in [`CLOUDSQL_SOCKET_DIR`] instead of on ports.
    pub unix_socket: bool,
}

/// The Cloud SQL Auth Proxy v2 for Cloud SQL instance `index`, listening on
/// `127.0.0.1:instance.port` (or on a Unix socket in [`CLOUDSQL_SOCKET_DIR`]) and answering
/// health checks on `health_port` (every address). Like the AlloyDB proxy, it finds its token
/// through the emulator.
pub(super) fn cloudsql_proxy(
    index: usize,
    instance: &CloudSqlInstance,
    health_port: u16,
    settings: &CloudSqlSettings<'_>,
) -> Container {
    let mut args = vec![instance.connection_name.clone()];
    match instance.port {
        Some(port) if !settings.unix_socket => {
            args.extend(["--address=127.0.0.1".to_owned(), format!("--port={port}")]);
        }
        // The CRD requires a port without Unix sockets.
        _ => args.push(format!("--unix-socket={CLOUDSQL_SOCKET_DIR}")),
    }
    match instance.connectivity {
        // Public IP is the proxy's default: no flag.
        CloudSqlConnectivity::PublicIp => {}
        CloudSqlConnectivity::PrivateIp => args.push("--private-ip".to_owned()),
        CloudSqlConnectivity::Psc => args.push("--psc".to_owned()),
    }
    if instance.auto_iam_authn {
        args.push("--auto-iam-authn".to_owned());
    }
    args.extend(health_flags(health_port));
    // Stopping is not a failure (a Job's pod must not look failed).
    args.extend(strings(["--exit-zero-on-sigterm", "--structured-logs"]));
    if let Some(endpoint) = settings.admin_endpoint {
        args.push(format!("--sqladmin-api-endpoint={endpoint}"));
    }
    let mut container = proxy_container(
        format!("{CLOUDSQL_PROXY_CONTAINER_PREFIX}{index}"),
        settings.image,
        args,
        settings.metadata_env,
        settings.resources,
        health_port,
    );
    container.volume_mounts = settings.unix_socket.then(|| vec![cloudsql_socket_mount()]);
    container
}

/// The Cloud SQL socket of an instance, as the proxy names it: for PostgreSQL the directory
/// `CLOUDSQL_SOCKET_DIR/PROJECT:REGION:INSTANCE` (libpq's host, holding `.s.PGSQL.5432`), for
/// MySQL the socket file of that name.
pub(super) fn cloudsql_socket(connection_name: &str) -> String {
    format!("{CLOUDSQL_SOCKET_DIR}/{connection_name}")
}

/// The flags of `spec.alloydb.proxy`'s settings, each only when set, so that a proxy without
/// them runs exactly as before.
fn option_flags(options: &AlloyDbProxy) -> Vec<String> {
    let mut flags = Vec::new();
    if options.lazy_refresh {
        flags.push("--lazy-refresh".to_owned());
    }
    if options.prometheus {
        // Served by the health-check server, on its address and port.
        flags.push("--prometheus".to_owned());
    }
    if let Some(max) = options.max_connections {
        flags.push(format!("--max-connections={max}"));
    }
    if let Some(delay) = options.max_sigterm_delay.as_deref() {
        flags.push(format!("--max-sigterm-delay={delay}"));
    }
    if let Some(delay) = options.min_sigterm_delay.as_deref() {
        flags.push(format!("--min-sigterm-delay={delay}"));
    }
    flags
}

/// The shared socket directory, in a proxy or an application container.
pub(super) fn socket_mount() -> VolumeMount {
    VolumeMount {
        name: SOCKET_VOLUME.to_owned(),
        mount_path: SOCKET_DIR.to_owned(),
        ..VolumeMount::default()
    }
}

pub(super) fn cloudsql_socket_mount() -> VolumeMount {
    VolumeMount {
        name: CLOUDSQL_SOCKET_VOLUME.to_owned(),
        mount_path: CLOUDSQL_SOCKET_DIR.to_owned(),
        ..VolumeMount::default()
    }
}

/// The emulator's listen address.
pub(super) fn listen(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

pub(super) fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

/// Non-root, read-only root filesystem, no privilege escalation, no capabilities, the runtime's
/// seccomp profile: what the `restricted` Pod Security Standard asks, so injection never makes
/// a pod fail its namespace's policy.
fn security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

/// Requests of CPU and memory, and a memory limit; no CPU limit, which would only throttle.
fn resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    let quantity = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity(cpu)),
            ("memory".to_owned(), quantity(memory)),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            quantity(memory_limit),
        )])),
        ..ResourceRequirements::default()
    }
}

fn http_get(path: &str, port: u16) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.to_owned()),
        port: IntOrString::Int(i32::from(port)),
        ..HTTPGetAction::default()
    }
}

fn strings<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.into_iter().map(str::to_owned).collect()
}

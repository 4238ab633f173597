//! What an opted-in pod gets injected (DESIGN.md §2, §5, §6), as a pure function from the pod
//! and its FederatedCredential to an RFC 6902 JSON patch.
//!
//! This module owns the decision only: the names that are interfaces (volume, containers,
//! annotations), the sidecars and their flags, probes, security context and default resources,
//! the choice of pod-local ports, and which environment variables each application container
//! receives. It does no I/O: it does not read the admission request, look up the
//! FederatedCredential or the API server's version, read Secrets or the clock. The webhook
//! adapter does those and passes plain data in; [`mutate`] returns an [`Outcome`].
//!
//! # What a pod gets
//! - The volume [`TOKEN_VOLUME`] of the FederatedCredential's Secret, mounted read-only at
//!   [`TOKEN_MOUNT_PATH`] in the metadata sidecar only: the application reads its token through
//!   the emulator, never from files.
//! - The sidecar [`METADATA_CONTAINER`] running `fedcred metadata-server` on loopback, then one
//!   [`PROXY_CONTAINER_PREFIX`]`N` per AlloyDB instance. As native sidecars (init containers with
//!   `restartPolicy: Always`) they go first among the init containers, so they run before the
//!   pod's own; without native sidecars (API server older than 1.29) they are appended to
//!   `containers`, and the pod's own init containers get no environment since nothing serves
//!   them yet.
//! - In every application container (and, with native sidecars, every own init container):
//!   `GCE_METADATA_HOST`, `GCE_METADATA_IP`, `GCE_METADATA_ROOT`, `GOOGLE_CLOUD_PROJECT` when
//!   the service account names a project, and for each AlloyDB instance its host, port and, with
//!   automatic IAM login, IAM database user, under the names the instance gives them
//!   (`hostEnvName`, `portEnvName`, `userEnvName`; the first instance defaults to `PGHOST`,
//!   `PGPORT` and `PGUSER`).
//! - With `spec.alloydb.proxy.unixSocket`: the `emptyDir` volume [`SOCKET_VOLUME`], mounted at
//!   [`SOCKET_DIR`] in the proxies and in the pod's own containers, the proxies listening there
//!   (`--unix-socket`) instead of on a port, and the host variables naming each instance's
//!   socket directory.
//! - With `spec.cloudsql.proxy.unixSocket`: likewise the `emptyDir` volume
//!   [`CLOUDSQL_SOCKET_VOLUME`] at [`CLOUDSQL_SOCKET_DIR`] for the Cloud SQL proxies.
//! - The annotation [`INJECTED_ANNOTATION`], a digest of what was injected, and with
//!   `spec.alloydb.proxy.prometheus` the [`PROMETHEUS_ANNOTATIONS`] pointing at the first
//!   proxy's metrics (a value the pod sets itself is kept, with a warning).
//!
//! # `exchange: Pod`
//! A FederatedCredential with `spec.exchange: Pod` gets no Secret volume: the sidecar
//! [`METADATA_CONTAINER`] runs `fedcred agent` instead of `fedcred metadata-server`, in the
//! same place, on the same port, with the same probe, and exchanges the pod's own AWS
//! credentials itself. It takes the resource as JSON in [`AGENT_CREDENTIAL_ENV`], and the
//! pod's AWS settings (EKS Pod Identity or IRSA) copied from the pod's containers when EKS's
//! webhook ran first (`pod_aws` says why). The application containers get the same
//! environment as with the emulator.
//!
//! # Environment precedence
//! A variable the container already sets in `env` is left alone, each variable on its own
//! (a container that sets `PGUSER` still gets `PGHOST` and `PGPORT`). `envFrom` cannot be
//! inspected here (the ConfigMap or Secret is not part of the pod), and an `env` entry wins
//! over `envFrom`: a variable that a container takes only from `envFrom` is overridden by the
//! injected one. When a container sets a proxy variable (`HTTP_PROXY`, `HTTPS_PROXY`,
//! `ALL_PROXY`, either case), `127.0.0.1,localhost` is merged into its `NO_PROXY`/`no_proxy`
//! (or both are added), because Python's requests and Node's clients would otherwise send the
//! loopback requests to the proxy, which refuses them; Go never proxies loopback.
//!
//! # Ports
//! The emulator takes the first free port from [`InjectConfig::metadata_port`] up, each proxy's
//! health server the first free one from [`DEFAULT_HEALTH_PORT`] up, skipping every
//! `containerPort` of the pod, the instances' ports, the admin ports and each other. Instance
//! ports and admin ports (`spec.alloydb.proxy.adminPort` plus the instance's index) are the
//! user's choice (the application may rely on them), so a clash with the pod is refused, not
//! moved.
//!
//! # Idempotence
//! A pod that already has the metadata sidecar is [`Outcome::Unchanged`] (reinvocation,
//! re-submission of a pod read back from the API). The annotation alone does not count: a
//! pod template that copied it from a running pod still needs its containers.
//!
//! # Refusals and warnings
//! Refused, with what to do: a labelled pod without the credential annotation, a missing
//! FederatedCredential, a `hostNetwork` pod (the node's loopback would serve its token to every
//! process on the node), an instance port the pod declares, and a pod that already uses one of
//! the injected names without being injected. Admitted with a warning: a FederatedCredential
//! that is not `Ready`, and a proxied container whose `NO_PROXY` comes from a reference.
//! Warnings are cut to [`MAX_WARNING_CHARS`].

mod env;
mod mutate;
mod patch;
mod pod_aws;
mod ports;
mod recipe;
mod sidecars;

#[cfg(test)]
mod golden;

use std::fmt;

pub use mutate::mutate;
pub use recipe::{Recipe, injection_hash};
pub use sidecars::metadata_startup_probe;

use crate::names::{CREDENTIAL_ANNOTATION, INJECT_LABEL};

/// Pod annotation the patch adds: `sha256:` and the first 16 hex digits of a digest of the
/// injected volume, containers and environment.
pub const INJECTED_ANNOTATION: &str = "fedcred.io/injected";

/// The Secret volume.
pub const TOKEN_VOLUME: &str = "fedcred-token";

/// Where the metadata sidecar mounts the Secret.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/fedcred";

/// The `emptyDir` volume of the proxies' Unix sockets (`spec.alloydb.proxy.unixSocket`).
pub const SOCKET_VOLUME: &str = "fedcred-alloydb-sockets";

/// Where the proxies and the application's containers mount [`SOCKET_VOLUME`].
pub const SOCKET_DIR: &str = "/var/run/fedcred-alloydb";

/// The `emptyDir` volume of the Cloud SQL proxies' Unix sockets
/// (`spec.cloudsql.proxy.unixSocket`).
pub const CLOUDSQL_SOCKET_VOLUME: &str = "fedcred-cloudsql-sockets";

/// Where the Cloud SQL proxies and the application's containers mount
/// [`CLOUDSQL_SOCKET_VOLUME`].
pub const CLOUDSQL_SOCKET_DIR: &str = "/var/run/fedcred-cloudsql";

/// Pod annotations that tell Prometheus where the proxy's metrics are
/// (`spec.alloydb.proxy.prometheus`); a value the pod sets itself is kept.
pub const PROMETHEUS_ANNOTATIONS: [&str; 3] = [
    "prometheus.io/scrape",
    "prometheus.io/port",
    "prometheus.io/path",
];

/// The metadata emulator sidecar.
pub const METADATA_CONTAINER: &str = "fedcred-metadata";

/// The variable that hands the `fedcred agent` sidecar its FederatedCredential, as JSON.
pub const AGENT_CREDENTIAL_ENV: &str = "FEDCRED_CREDENTIAL";

/// Where the fedcred image keeps its one binary; the metadata sidecar's startup probe execs it
/// (`fedcred metadata-server --check`), since the image has no shell or curl.
pub const FEDCRED_BINARY: &str = "/usr/local/bin/fedcred";

/// Prefix of the AlloyDB Auth Proxy sidecars: `alloydb-proxy-0`, `alloydb-proxy-1`, …, in the
/// order of `spec.alloydb.instances`.
pub const PROXY_CONTAINER_PREFIX: &str = "alloydb-proxy-";

/// The AlloyDB Auth Proxy image used when the FederatedCredential names none.
pub const DEFAULT_PROXY_IMAGE: &str = "gcr.io/alloydb-connectors/alloydb-auth-proxy:1.17.1";

/// Names of the injected Cloud SQL proxy containers: this prefix and the instance's index.
pub const CLOUDSQL_PROXY_CONTAINER_PREFIX: &str = "cloudsql-proxy-";

/// The Cloud SQL Auth Proxy image unless `spec.cloudsql.proxy.image` or the controller's
/// `--cloudsql-proxy-image` names another.
pub const DEFAULT_CLOUDSQL_PROXY_IMAGE: &str = "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.27.0";

/// First port tried for the metadata emulator; the port of [`crate::metadata::DEFAULT_LISTEN`].
pub const DEFAULT_METADATA_PORT: u16 = 8988;

/// First port tried for the proxies' health-check servers. Not the proxy's own default 9090:
/// that is also Prometheus' and many applications' metrics port, often not declared as a
/// `containerPort`, and undeclared ports cannot be seen here.
pub const DEFAULT_HEALTH_PORT: u16 = 9801;

/// User of every injected container; both images run as this non-root user.
pub const RUN_AS_USER: i64 = 65532;

/// Admission warnings longer than this may be truncated by the API server.
pub const MAX_WARNING_CHARS: usize = 256;

/// How the webhook injects; comes from the controller's flags and the API server's version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectConfig {
    /// Image of the `fedcred` binary (its entrypoint), for the metadata sidecar.
    pub fedcred_image: String,
    /// AlloyDB Auth Proxy image unless `spec.alloydb.proxy.image` names one.
    pub proxy_image: String,
    /// First port tried for the metadata emulator on 127.0.0.1.
    pub metadata_port: u16,
    /// Inject native sidecars (Kubernetes ≥ 1.29, see [`native_sidecars_supported`]) rather
    /// than plain containers.
    pub native_sidecars: bool,
    /// Passed to every proxy as `--alloydbadmin-api-endpoint`; for tests and other universes.
    pub alloydb_admin_endpoint: Option<String>,
    /// Cloud SQL Auth Proxy image unless `spec.cloudsql.proxy.image` names one.
    pub cloudsql_proxy_image: String,
    /// Passed to every Cloud SQL proxy as `--sqladmin-api-endpoint`; for tests and other
    /// universes.
    pub cloudsql_admin_endpoint: Option<String>,
}

impl InjectConfig {
    /// Defaults for everything but the fedcred image: the pinned proxy image, port 8988,
    /// native sidecars, Google's Admin API endpoint.
    pub fn new(fedcred_image: impl Into<String>) -> Self {
        InjectConfig {
            fedcred_image: fedcred_image.into(),
            proxy_image: DEFAULT_PROXY_IMAGE.to_owned(),
            metadata_port: DEFAULT_METADATA_PORT,
            native_sidecars: true,
            alloydb_admin_endpoint: None,
            cloudsql_proxy_image: DEFAULT_CLOUDSQL_PROXY_IMAGE.to_owned(),
            cloudsql_admin_endpoint: None,
        }
    }
}

/// What the webhook answers for one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Admit with this JSON patch (RFC 6902 operations, applied in order) and these admission
    /// warnings.
    Patch {
        ops: Vec<serde_json::Value>,
        warnings: Vec<String>,
    },
    /// Admit as is: not opted in, or already injected.
    Unchanged,
    /// Deny; the refusal's message says what to fix.
    Refuse(Refusal),
}

/// Why a pod is refused. Its `Display` is the message the user sees, naming what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Opted in by the label, but the annotation names no FederatedCredential.
    NoCredentialNamed {
        namespace: Option<String>,
    },
    NoSpec,
    /// The pod uses one of the injection's names without having been injected.
    NameTaken {
        what: String,
    },
    /// The FederatedCredential the annotation names does not exist.
    CredentialNotFound {
        namespace: Option<String>,
        name: String,
    },
    /// The FederatedCredential could not be read; admitting the pod without its sidecars
    /// would hand it no credentials, silently.
    LookupFailed {
        namespace: String,
        name: String,
        error: String,
    },
    /// `hostNetwork` pods share the node's loopback, where the emulator would serve every
    /// process on the node.
    HostNetwork,
    /// An AlloyDB or Cloud SQL instance's local port cannot be used in this pod.
    InstancePort {
        /// `namespace/name` of the FederatedCredential.
        credential: String,
        /// `alloydb` or `cloudsql`: the list the instance is in.
        list: &'static str,
        index: usize,
        port: i32,
        problem: PortProblem,
    },
    /// A proxy's admin port (`spec.alloydb.proxy.adminPort` plus the instance's index) cannot
    /// be used in this pod.
    AdminPort {
        /// `namespace/name` of the FederatedCredential.
        credential: String,
        index: usize,
        port: i32,
        problem: PortProblem,
    },
    /// Two instances would set one environment variable.
    EnvNameTwice {
        /// `namespace/name` of the FederatedCredential.
        credential: String,
        name: String,
    },
    /// With Unix sockets: a container of the pod already mounts something at [`SOCKET_DIR`]
    /// (or [`CLOUDSQL_SOCKET_DIR`]; `list` says which: `alloydb` or `cloudsql`).
    SocketDirTaken {
        container: String,
        list: &'static str,
    },
    NoFreePort,
}

/// What is wrong with an instance's port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortProblem {
    NotAPort,
    /// A container of the pod (named) declares it.
    DeclaredBy(String),
    UsedTwice,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoCredentialNamed { namespace } => write!(
                f,
                "the pod is labelled {INJECT_LABEL}=true but its annotation {CREDENTIAL_ANNOTATION} \
                 is missing or empty: set it to the name of a FederatedCredential in {}, or remove \
                 the label",
                namespace.as_deref().map_or_else(
                    || "the pod's namespace".to_owned(),
                    |ns| format!("namespace {ns}")
                )
            ),
            Refusal::NoSpec => f.write_str("the pod has no spec"),
            Refusal::NameTaken { what } => write!(
                f,
                "the pod already has {what}, a name fedcred's injection uses, but not fedcred's \
                 {METADATA_CONTAINER} sidecar: rename it, or remove the label {INJECT_LABEL}"
            ),
            Refusal::CredentialNotFound { namespace, name } => write!(
                f,
                "FederatedCredential {}/{name} not found (named by the pod's annotation \
                 {CREDENTIAL_ANNOTATION}): create it in that namespace, correct the annotation, or \
                 remove the label {INJECT_LABEL}",
                namespace.as_deref().unwrap_or("<pod namespace>")
            ),
            Refusal::LookupFailed {
                namespace,
                name,
                error,
            } => write!(
                f,
                "could not read FederatedCredential {namespace}/{name} to inject its credentials: \
                 {error}; retry"
            ),
            Refusal::HostNetwork => write!(
                f,
                "the pod uses hostNetwork: fedcred's metadata emulator listens on loopback, which \
                 such a pod shares with the node, so every process on the node could take its Google \
                 token; remove hostNetwork or the label {INJECT_LABEL}"
            ),
            Refusal::InstancePort {
                credential,
                list,
                index,
                port,
                problem,
            } => {
                write!(
                    f,
                    "spec.{list}.instances[{index}].port of FederatedCredential {credential} is {port}"
                )?;
                match problem {
                    PortProblem::NotAPort => f.write_str(", not a port"),
                    PortProblem::DeclaredBy(owner) => write!(
                        f,
                        ", which container {owner} of this pod also declares: give the instance \
                         another port, or change the pod's"
                    ),
                    PortProblem::UsedTwice => f.write_str(", which another instance uses too"),
                }
            }
            Refusal::EnvNameTwice { credential, name } => write!(
                f,
                "two database instances of FederatedCredential {credential} would set the \
                 variable {name}: give one of them another hostEnvName, portEnvName or userEnvName"
            ),
            Refusal::AdminPort {
                credential,
                index,
                port,
                problem,
            } => {
                write!(
                    f,
                    "the admin port of the AlloyDB proxy of instance {index} of FederatedCredential \
                     {credential} is {port} (spec.alloydb.proxy.adminPort + {index})"
                )?;
                match problem {
                    PortProblem::NotAPort => f.write_str(
                        ", not a port: lower spec.alloydb.proxy.adminPort so that every instance's \
                         proxy gets one",
                    ),
                    PortProblem::DeclaredBy(owner) => write!(
                        f,
                        ", which container {owner} of this pod also declares: choose another \
                         spec.alloydb.proxy.adminPort"
                    ),
                    PortProblem::UsedTwice => f.write_str(
                        ", which an instance's port uses too: choose another \
                         spec.alloydb.proxy.adminPort or instance port",
                    ),
                }
            }
            Refusal::SocketDirTaken { container, list } => {
                let (dir, what) = if *list == "cloudsql" {
                    (CLOUDSQL_SOCKET_DIR, "Cloud SQL")
                } else {
                    (SOCKET_DIR, "AlloyDB")
                };
                write!(
                    f,
                    "container {container} of the pod already mounts a volume at {dir}, where \
                     spec.{list}.proxy.unixSocket shares the {what} proxies' sockets: move that \
                     mount, or set unixSocket: false"
                )
            }
            Refusal::NoFreePort => {
                f.write_str("no free port left in the pod for fedcred's sidecars")
            }
        }
    }
}

/// Whether an API server of this version (`major`/`minor` of its `/version`, such as `1` and
/// `29+` on EKS) runs native sidecars: beta and on by default from 1.29.
pub fn native_sidecars_supported(major: &str, minor: &str) -> bool {
    let number = |s: &str| -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (number(major), number(minor)) {
        (Some(major), Some(minor)) => major > 1 || (major == 1 && minor >= 29),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_sidecars_from_1_29() {
        assert!(native_sidecars_supported("1", "29"));
        assert!(native_sidecars_supported("1", "33+"));
        assert!(!native_sidecars_supported("1", "28+"));
        assert!(!native_sidecars_supported("1", ""));
        assert!(native_sidecars_supported("2", "0"));
    }

    #[test]
    fn the_default_metadata_port_is_the_emulators_default() {
        assert_eq!(
            crate::metadata::DEFAULT_LISTEN,
            format!("127.0.0.1:{DEFAULT_METADATA_PORT}")
        );
    }
}

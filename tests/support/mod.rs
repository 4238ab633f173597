//! Test support shared by the integration tests: the real control plane that `hack/test.sh`
//! started, the real kubectl, and one namespace per test.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod alloydb;
pub mod bigquery;
pub mod cloud;
pub mod controller;
pub mod gate;
pub mod metadata;
pub mod oidc;
pub mod pod;
pub mod readers;
pub mod tokens;
pub mod webhook;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The kubeconfig of the control plane `hack/test.sh` started. Tests that claim to work with
/// Kubernetes must run against it; without it they fail and say how to get one.
pub fn kubeconfig() -> PathBuf {
    match std::env::var_os("FEDCRED_TEST_KUBECONFIG") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "FEDCRED_TEST_KUBECONFIG is not set: run the suite with `hack/test.sh`, which starts a \
             real kube-apiserver and etcd, or start one with `hack/controlplane.sh up DIR` and \
             `source DIR/env`"
        ),
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The stdout of a `fedcred exchange` run, which must have succeeded (its output is shown if
/// not) and name `principal` as the principal STS saw.
pub fn exchanged(out: &Output, principal: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("principal:       {principal}")),
        "{stdout}"
    );
    stdout
}

/// Spawns `command` without stdin, its stdout dropped and its stderr written to a new file
/// `log`.
pub fn spawn_logging(command: &mut Command, log: &std::path::Path) -> std::process::Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// What a kubectl invocation returned.
pub struct Kubectl {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    /// Panics with the full output unless the command succeeded.
    pub fn success(self) -> String {
        assert!(
            self.ok,
            "kubectl failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.stdout
    }

    /// Panics unless the command failed; returns stderr.
    pub fn failure(self) -> String {
        assert!(
            !self.ok,
            "kubectl unexpectedly succeeded:\nstdout: {}",
            self.stdout
        );
        self.stderr
    }
}

impl From<Output> for Kubectl {
    fn from(out: Output) -> Self {
        Kubectl {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs the real kubectl against the test control plane, feeding `stdin` if given.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Kubectl {
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig())
        .env("KUBECACHEDIR", discovery_cache())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("kubectl is on PATH (hack/test.sh puts the cached one there)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())
            .expect("kubectl reads its input");
    }
    child.wait_with_output().expect("kubectl runs").into()
}

/// kubectl's discovery cache for this test binary. It is dropped once the CRD is installed, so
/// kubectl learns of the new kind instead of trusting hours-old discovery.
fn discovery_cache() -> PathBuf {
    std::env::temp_dir().join(format!("fedcred-kubectl-cache-{}", std::process::id()))
}

/// Installs the CRD from `crds/` once per test binary and waits until it is Established.
pub fn ensure_crd() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crd = repo_root().join("crds/fedcred.io_federatedcredentials.yaml");
        kubectl(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=fedcred-tests",
                "-f",
                crd.to_str().unwrap(),
            ],
            None,
        )
        .success();
        kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/federatedcredentials.fedcred.io",
            ],
            None,
        )
        .success();
    });
}

/// A namespace that exists for one test and is deleted when the test ends.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates `fedcred-test-<prefix>-<random>`.
    pub fn new(prefix: &str) -> Self {
        let suffix = format!("{:x}", rand_u32());
        let name = format!("t-{prefix}-{suffix}");
        kubectl(&["create", "namespace", &name], None).success();
        // The ServiceAccount admission plugin refuses pods until the namespace's default
        // ServiceAccount exists; kube-controller-manager creates it within a moment.
        wait_until(Duration::from_secs(30), || {
            kubectl(&["-n", &name, "get", "serviceaccount", "default"], None).ok
        });
        TestNamespace { name }
    }

    /// kubectl with `-n <this namespace>` prepended.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Kubectl {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        kubectl(&all, stdin)
    }

    /// Merges `status` (`{"status": {...}}`) into FederatedCredential `name`'s status
    /// subresource, as the controller would write it.
    pub fn set_status(&self, name: &str, status: &serde_json::Value) {
        self.kubectl(
            &[
                "patch",
                "fedcred",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        )
        .success();
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// Polls `check` until it returns `Some`, failing with `what` after `limit`.
pub async fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `check` until it returns true, panicking after `limit`.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A free TCP port on 127.0.0.1 (free now; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn rand_u32() -> u32 {
    // Unique enough for namespace names: time, process and a counter.
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    nanos
        ^ std::process::id().rotate_left(16)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9)
}

/// The AlloyDB instance of the test fixtures.
pub const INSTANCE: &str =
    "projects/acme-shop/locations/asia-northeast1/clusters/orders/instances/orders-primary";

/// A valid FederatedCredential (IRSA, impersonation, one AlloyDB instance) named `name`; tests
/// change one thing about it.
pub fn valid_credential(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "fedcred.io/v1alpha1",
        "kind": "FederatedCredential",
        "metadata": {"name": name},
        "spec": {
            "aws": {"serviceAccount": {"name": "orders-api"}, "region": "ap-northeast-1"},
            "google": {"audience": cloud::AUDIENCE, "serviceAccount": cloud::SA_EMAIL},
            "alloydb": {"instances": [{"uri": INSTANCE}]}
        }
    })
}

/// Creates [`valid_credential`] `name` in `ns`; when `ready`, also writes the Ready status the
/// controller would, so the webhook injects without a controller running.
pub fn create_credential(ns: &TestNamespace, name: &str, ready: bool) {
    ns.kubectl(
        &["create", "-f", "-"],
        Some(&valid_credential(name).to_string()),
    )
    .success();
    if ready {
        ns.set_status(
            name,
            &serde_json::json!({"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "TokenIssued",
                "message": "the Secret holds a valid token",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }]}}),
        );
    }
}

/// An async client of the test control plane, for tests that use kube directly.
pub async fn kube_client() -> kube::Client {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(kubeconfig()).expect("the test kubeconfig is readable");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("the test kubeconfig is usable");
    kube::Client::try_from(config).expect("a client for the test control plane")
}

/// The SHA-256 of `value`, in hex: how tests name a token without printing it.
pub fn sha256_hex(value: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An image the node has (`hack/controlplane.sh up DIR --node`), by its name in
/// hack/node/images.py.
pub fn node_image(name: &str) -> String {
    let var = format!(
        "FEDCRED_TEST_NODE_IMAGE_{}",
        name.replace('-', "_").to_uppercase()
    );
    std::env::var(&var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: these tests need the node; run them with `hack/test.sh`, or start \
             one with `hack/controlplane.sh up DIR --node` and `source DIR/env`"
        )
    })
}

/// Makes a peer on loopback reachable from the node's pods, which reach the host only at the
/// bridge's address, over TLS as a real endpoint is: every connection to `listener` (bound on
/// all addresses) is accepted with `tls` and forwarded in the clear to `to`
/// (`http://127.0.0.1:PORT`).
pub fn forward_from_pods(
    listener: std::net::TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
    to: &str,
) {
    let target = to
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                continue;
            };
            let (target, acceptor) = (target.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(mut inbound) = acceptor.accept(inbound).await else {
                    return;
                };
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

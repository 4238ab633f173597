//! Reading tokens where a pod reads them, on the node: reader pods, opted in and admitted by the
//! webhook of the controller under test, ask their injected metadata sidecar for the token ten
//! times a second through the kubelet's Secret volume; every token they were served is judged
//! against the expiry the doubles gave it.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use super::cloud::Cloud;

/// The app of a reader pod: asks its metadata sidecar for the token ten times a second and
/// prints, per token (by digest, never the token) at least once a second and when it changes,
/// when it first and last saw it; and every error, with when.
pub const READER: &str = r#"
import hashlib, json, os, time, urllib.request
url = "http://%s/computeMetadata/v1/instance/service-accounts/default/token" % os.environ["GCE_METADATA_HOST"]
current, first, last, printed = None, 0.0, 0.0, 0.0
def emit():
    if current is not None:
        print(json.dumps({"token_sha256": current, "first": first, "last": last}), flush=True)
while True:
    now = time.time()
    try:
        req = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
        body = json.load(urllib.request.urlopen(req, timeout=2))
        digest = hashlib.sha256(body["access_token"].encode()).hexdigest()
        if digest != current:
            emit()
            current, first, printed = digest, now, now
        last = now
        if now - printed >= 1.0:
            emit()
            printed = now
    except Exception as e:
        print(json.dumps({"error": type(e).__name__ + ": " + str(e)[:200], "at": now}), flush=True)
    time.sleep(0.1)
"#;

/// Whether a node runs beside the control plane (`hack/controlplane.sh up DIR --node`, as
/// `hack/test.sh` starts it), so reader pods can run.
pub fn on_node() -> bool {
    std::env::var_os("FEDCRED_TEST_NODE_IMAGE_CLIENT").is_some()
}

/// What the reader pods saw, judged against the doubles.
#[derive(Clone, Debug, Default)]
pub struct InPods {
    pub pods: usize,
    /// Distinct tokens served to the pods.
    pub tokens: usize,
    /// Observations (a token seen in a one-second window).
    pub observations: u64,
    /// Tokens a pod was served at or after the expiry the doubles gave them.
    pub expired: u64,
    /// Tokens the doubles never issued (hand edits, until repaired and delivered).
    pub foreign: u64,
    /// Requests the sidecar refused or that failed.
    pub errors: u64,
    /// Closest a served token came to its expiry, seconds.
    pub closest_to_expiry: Option<f64>,
    /// When a pod last read, served or refused (Unix seconds).
    pub last_read: Option<f64>,
}

impl InPods {
    /// Seconds since a pod last read.
    pub fn idle_seconds(&self) -> Option<f64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        self.last_read.map(|at| now - at)
    }
}

/// Every token the doubles issued and still accept, by digest, with its expiry (Unix seconds):
/// the doubles forget a token's expiry once it has passed, so [`Expiries::remember`] runs
/// while they still know it (about once a second is enough for 60-second tokens).
#[derive(Clone, Debug, Default)]
pub struct Expiries {
    by_digest: BTreeMap<String, f64>,
    known: HashSet<String>,
}

impl Expiries {
    pub fn remember(&mut self, cloud: &Cloud) {
        for token in cloud.google.issued_tokens() {
            if self.known.contains(&token) {
                continue;
            }
            if let Some(info) = cloud.google.lookup(&token) {
                let at = info
                    .expires_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64();
                self.by_digest.insert(super::sha256_hex(&token), at);
            }
            self.known.insert(token);
        }
    }
}

/// Creates the reader pod `pod` in `namespace` for the FederatedCredential `credential`, run
/// as `service_account`, retrying while the webhook's configuration reaches the API server.
pub fn create(namespace: &str, pod: &str, credential: &str, service_account: &str) {
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": namespace,
            "labels": {"fedcred.io/inject": "true"},
            "annotations": {"fedcred.io/credential": credential}},
        "spec": {
            "serviceAccountName": service_account,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": super::node_image("client"),
                "command": ["python3", "-c", READER]}],
        },
    });
    super::wait_until(Duration::from_secs(60), || {
        super::kubectl(&["create", "-f", "-"], Some(&manifest.to_string())).ok
    });
}

/// Waits up to two minutes until the app container of `pod` is Ready.
pub fn wait_ready(namespace: &str, pod: &str) {
    super::wait_until(Duration::from_secs(120), || {
        super::kubectl(
            &[
                "-n",
                namespace,
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.containerStatuses[0].ready}",
            ],
            None,
        )
        .stdout
            == "true"
    });
}

/// Reads the reader pods' logs and judges every observation.
pub fn judge(namespace: &str, pods: &[String], expiries: &Expiries) -> InPods {
    let mut seen = InPods {
        pods: pods.len(),
        ..InPods::default()
    };
    let mut tokens = HashSet::new();
    for pod in pods {
        let logs = super::kubectl(&["-n", namespace, "logs", pod, "-c", "app"], None).success();
        for line in logs.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(at) = v["last"].as_f64().or(v["at"].as_f64()) {
                seen.last_read = Some(seen.last_read.map_or(at, |l: f64| l.max(at)));
            }
            if v["error"].is_string() {
                seen.errors += 1;
                continue;
            }
            let (Some(digest), Some(last)) = (v["token_sha256"].as_str(), v["last"].as_f64())
            else {
                continue;
            };
            seen.observations += 1;
            tokens.insert(digest.to_owned());
            match expiries.by_digest.get(digest) {
                None => seen.foreign += 1,
                Some(&expiry) => {
                    let left = expiry - last;
                    seen.closest_to_expiry =
                        Some(seen.closest_to_expiry.map_or(left, |c: f64| c.min(left)));
                    if left <= 0.0 {
                        seen.expired += 1;
                    }
                }
            }
        }
    }
    seen.tokens = tokens.len();
    seen
}

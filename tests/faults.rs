//! The fault suite: `fedcred controller` on the real API server, with moto and the Google doubles,
//! while one peer misbehaves at a time. Every story measures the same figures and prints them as
//! a row of a markdown table (also appended to the file named by `FEDCRED_FAULT_REPORT`):
//!
//! - time to recover: from the moment the peer is healthy again (or the controller was started
//!   again) until the Secret holds a token issued after it and the status shows no failure;
//! - tokens served expired: samples, taken every 100 ms for the whole story, in which the Secret
//!   held a token whose `expiry` had passed or that the doubles no longer accepted (must be 0);
//! - served expired in a pod: with the node, the stories that opt in (`World::with_reader`) also
//!   run a reader pod the controller's webhook injected, which asks its metadata sidecar for the
//!   token ten times a second through the kubelet's Secret volume; the tokens it was served
//!   past the expiry the doubles gave them, of its observations (must be 0);
//! - Secrets lost: Secrets missing once the story is over (must be 0);
//! - exchange calls: requests Google STS and IAM Credentials received during the episode.
//!
//! `hack/faults.sh` collects the rows into RELIABILITY.md.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fedcred::webhook::certs::{self, CertSettings};
use fedcred_core::api::{FederatedCredential, FederatedCredentialSpec};
use fedcred_core::refresh::decide;
use fedcred_doubles::{Config, Fault, Target};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::cloud::{Cloud, ROLE, federated};
use support::controller::{ControllerProcess, Launch};
use support::free_port;
use support::gate::Gate;
use support::readers::{self, Expiries, InPods};
use support::tokens::{Judge, Verdict, decode, report_row};

// ---------------------------------------------------------------------------------------------
// Figures

/// Google STS down, as [`World::break_google_sts`] found the resource.
struct Outage {
    expires_at: Timestamp,
    stale: Option<String>,
    before: (u64, u64),
}

/// One row of the fault table.
struct Figures {
    fault: &'static str,
    recovery: Option<Duration>,
    expired: u64,
    /// Served expired in the reader pod, of its observations; "—" without one.
    in_pod: String,
    lost: u64,
    calls: String,
    notes: String,
}

impl Figures {
    fn row(&self) -> String {
        let recovery = match self.recovery {
            Some(d) => format!("{:.1} s", d.as_secs_f64()),
            None => "n/a".to_owned(),
        };
        format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            self.fault, recovery, self.expired, self.in_pod, self.lost, self.calls, self.notes
        )
    }

    /// Prints the row and appends it to `FEDCRED_FAULT_REPORT` when set.
    fn report(&self) {
        report_row("FEDCRED_FAULT_REPORT", &self.row());
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Watching the Secret

/// What the sampler saw.
#[derive(Clone, Debug, Default)]
struct Samples {
    reads: u64,
    /// The API server did not answer.
    unreachable: u64,
    missing: u64,
    /// The token's `expiry` had passed, or the doubles no longer accepted a token they issued.
    expired: u64,
    /// A value the doubles never issued (a hand edit).
    foreign: u64,
    distinct_tokens: usize,
    /// Fewest seconds to expiry seen in any sample.
    closest_to_expiry: Option<i64>,
    /// Secrets of the story missing once it was over.
    lost: u64,
    /// What the story's reader pod was served, when it had one.
    in_pods: Option<InPods>,
}

impl Samples {
    /// The figures every story reports from its samples; the story adds the rest.
    fn figures(&self, fault: &'static str) -> Figures {
        Figures {
            fault,
            recovery: None,
            expired: self.expired,
            in_pod: match &self.in_pods {
                Some(p) => format!("{} of {} observations", p.expired, p.observations),
                None => "—".to_owned(),
            },
            lost: self.lost,
            calls: String::new(),
            notes: String::new(),
        }
    }
}

/// Reads the Secrets `names` every 100 ms until finished and checks each token against its
/// `expiry` and against the doubles.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Samples>,
}

impl Sampler {
    fn start(secrets: Api<Secret>, names: Vec<String>, cloud: Arc<Cloud>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut s = Samples::default();
            let mut judge = Judge::default();
            let mut seen: HashSet<String> = HashSet::new();
            while !stopped.load(Ordering::Relaxed) {
                for name in &names {
                    s.reads += 1;
                    let read =
                        tokio::time::timeout(Duration::from_secs(2), secrets.get_opt(name)).await;
                    let secret = match read {
                        Ok(Ok(Some(secret))) => secret,
                        Ok(Ok(None)) => {
                            s.missing += 1;
                            continue;
                        }
                        _ => {
                            s.unreachable += 1;
                            continue;
                        }
                    };
                    let verdict = judge.judge(&secret, &cloud);
                    if let Some(left) = verdict.left() {
                        s.closest_to_expiry =
                            Some(s.closest_to_expiry.map_or(left, |c| c.min(left)));
                    }
                    match verdict {
                        Verdict::Fresh { token, .. } => {
                            seen.insert(token);
                        }
                        Verdict::Expired { .. } => s.expired += 1,
                        Verdict::Foreign { .. } => s.foreign += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            s.distinct_tokens = seen.len();
            s
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the sampler ran")
    }
}

// ---------------------------------------------------------------------------------------------
// A story's world

/// One namespace with the ServiceAccount `orders-api` (IRSA role), the cloud, and a client.
struct World {
    client: Client,
    kubeconfig: PathBuf,
    namespace: String,
    cloud: Arc<Cloud>,
    /// The reader pod of a story that has one ([`World::with_reader`], on the node).
    readers: Option<Readers>,
    /// Deletes the namespace of the shared control plane when the story ends.
    _ns: Option<support::TestNamespace>,
}

/// A story's reader pods: the webhook registration the story's first controller serves, the
/// pods it injected, and the expiries of every token the doubles issued, remembered every
/// half second while the doubles still know them.
struct Readers {
    _registration: support::webhook::Registration,
    webhook_args: Vec<String>,
    webhook_taken: AtomicBool,
    pods: Mutex<Vec<String>>,
    expiries: Arc<Mutex<Expiries>>,
    remembering: tokio::task::JoinHandle<()>,
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.remembering.abort();
    }
}

impl World {
    /// On the control plane `hack/test.sh` started.
    async fn shared(prefix: &str, configure: impl FnOnce(Config) -> Config) -> World {
        support::ensure_crd();
        let ns = support::TestNamespace::new(prefix);
        let client = support::kube_client().await;
        let cloud = Arc::new(Cloud::start(configure).await);
        let world = World {
            client,
            kubeconfig: support::kubeconfig(),
            namespace: ns.name.clone(),
            cloud,
            readers: None,
            _ns: Some(ns),
        };
        world.service_account().await;
        world
    }

    /// [`World::shared`] and, on the node, a reader pod for the resource of
    /// [`World::ready_and_sampled`]: the story's first controller also serves the webhook that
    /// injects it.
    async fn with_reader(prefix: &str, configure: impl FnOnce(Config) -> Config) -> World {
        let mut world = World::shared(prefix, configure).await;
        if !readers::on_node() {
            return world;
        }
        let ns = world
            ._ns
            .as_ref()
            .expect("a namespace of the shared control plane");
        let (registration, webhook_args) =
            support::webhook::Registration::for_controller(ns, &support::node_image("fedcred"));
        let expiries: Arc<Mutex<Expiries>> = Arc::default();
        let (remembered, cloud) = (expiries.clone(), world.cloud.clone());
        let remembering = tokio::spawn(async move {
            loop {
                remembered.lock().unwrap().remember(&cloud);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        world.readers = Some(Readers {
            _registration: registration,
            webhook_args,
            webhook_taken: AtomicBool::new(false),
            pods: Mutex::default(),
            expiries,
            remembering,
        });
        world
    }

    async fn service_account(&self) {
        let sa: ServiceAccount = serde_json::from_value(json!({
            "metadata": {"name": "orders-api", "annotations": {"eks.amazonaws.com/role-arn": ROLE}}
        }))
        .unwrap();
        Api::<ServiceAccount>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &sa)
            .await
            .expect("the ServiceAccount is created");
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn credentials(&self) -> Api<FederatedCredential> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// `fedcred controller` watching this namespace, with its log in the evidence directory;
    /// the story's first also serves the webhook of its reader pod, if it has one.
    fn controller(&self, identity: &str, extra: &[&str]) -> ControllerProcess {
        let mut args = extra.to_vec();
        if let Some(r) = &self.readers
            && !r.webhook_taken.swap(true, Ordering::SeqCst)
        {
            args.extend(r.webhook_args.iter().map(String::as_str));
        }
        Launch::new(&self.cloud)
            .watching(&self.namespace, identity)
            .args(&args)
            .kubeconfig(&self.kubeconfig)
            .log_stem(format!("faults-{}-{identity}", self.namespace))
            .start()
    }

    /// A spec for IRSA through `orders-api`; `google` and `top` are merged into it.
    fn spec(&self, google: Value, top: Value) -> FederatedCredentialSpec {
        let base = self
            .cloud
            .spec(json!({"serviceAccount": {"name": "orders-api"}}), google);
        let mut spec = serde_json::to_value(base).unwrap();
        for (k, v) in top.as_object().unwrap() {
            if let (Some(into), Some(from)) = (spec[k].as_object_mut(), v.as_object()) {
                for (kk, vv) in from {
                    into.insert(kk.clone(), vv.clone());
                }
            } else {
                spec[k] = v.clone();
            }
        }
        serde_json::from_value(spec).unwrap()
    }

    async fn apply(&self, name: &str, spec: FederatedCredentialSpec) {
        let fc = FederatedCredential::new(name, spec);
        self.credentials()
            .patch(
                name,
                &PatchParams::apply("fedcred-faults").force(),
                &Patch::Apply(&fc),
            )
            .await
            .expect("the FederatedCredential is applied");
    }

    async fn status(&self, name: &str) -> Value {
        match self.credentials().get_opt(name).await {
            Ok(Some(fc)) => serde_json::to_value(&fc.status).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    async fn token(&self, name: &str) -> Option<String> {
        let secret = self.secrets().get_opt(name).await.ok()??;
        decode(&secret).remove("access_token")
    }

    /// Whether the status shows a valid token and no failure, and the Secret holds a token the
    /// doubles accept that is not `stale`.
    async fn healthy(&self, name: &str, stale: Option<&str>) -> Option<String> {
        let status = self.status(name).await;
        let conditions = status["conditions"].as_array()?;
        let ready = conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let failing = conditions.iter().any(|c| c["type"] == "RefreshFailing");
        let failures = status["failureCount"].as_i64().unwrap_or(0);
        if !ready || failing || failures > 0 {
            return None;
        }
        let token = self.token(name).await?;
        if Some(token.as_str()) == stale {
            return None;
        }
        self.cloud.google.lookup(&token)?;
        Some(token)
    }

    /// Applies `name` with `spec`, waits until it is healthy and starts sampling its Secret
    /// (and, with a reader, reading it in a pod).
    async fn ready_and_sampled(&self, name: &str, spec: FederatedCredentialSpec) -> Sampler {
        self.apply(name, spec).await;
        self.recovered(name, None, READY).await;
        self.read_in_pod(name);
        Sampler::start(self.secrets(), vec![name.into()], self.cloud.clone())
    }

    /// With a reader: starts the reader pod of `name` and waits until it reads.
    fn read_in_pod(&self, name: &str) {
        let Some(r) = &self.readers else {
            return;
        };
        let pod = format!("reader-{name}");
        readers::create(&self.namespace, &pod, name, "orders-api");
        readers::wait_ready(&self.namespace, &pod);
        r.pods.lock().unwrap().push(pod);
    }

    /// What the reader pods were served, judged against the doubles.
    fn judge_pods(&self) -> Option<InPods> {
        let r = self.readers.as_ref()?;
        let pods = r.pods.lock().unwrap().clone();
        if pods.is_empty() {
            return None;
        }
        let mut expiries = r.expiries.lock().unwrap();
        expiries.remember(&self.cloud);
        Some(readers::judge(&self.namespace, &pods, &expiries))
    }

    /// Waits until [`World::healthy`]; returns when it was seen.
    async fn recovered(&self, name: &str, stale: Option<&str>, limit: Duration) -> Instant {
        let start = Instant::now();
        loop {
            if self.healthy(name, stale).await.is_some() {
                return Instant::now();
            }
            assert!(
                start.elapsed() < limit,
                "{name} did not recover within {limit:?}; status: {}",
                self.status(name).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn calls(&self) -> (u64, u64) {
        (
            self.cloud.google.calls(Target::Sts),
            self.cloud.google.calls(Target::Iam),
        )
    }

    fn calls_since(&self, before: (u64, u64)) -> String {
        let (sts, iam) = self.calls();
        format!("STS {}, IAM {}", sts - before.0, iam - before.1)
    }

    /// Reads the expiry and token of `orders-db`, then makes Google STS answer 503 to every
    /// request until [`World::mend_google_sts_at`].
    async fn break_google_sts(&self) -> Outage {
        let status = self.status("orders-db").await;
        let outage = Outage {
            expires_at: status["expiresAt"].as_str().unwrap().parse().unwrap(),
            stale: self.token("orders-db").await,
            before: self.calls(),
        };
        self.cloud.sts_unavailable(100_000);
        outage
    }

    /// Ends the outage at `back`: returns when Google was healthy again, how many STS calls the
    /// outage saw since `before`, and the failures the status counted by then.
    async fn mend_google_sts_at(&self, back: Timestamp, before: (u64, u64)) -> (Instant, u64, i64) {
        tokio::time::sleep(back.duration_since(Timestamp::now()).unsigned_abs()).await;
        let failures = self.status("orders-db").await["failureCount"]
            .as_i64()
            .unwrap_or(0);
        self.cloud.google.clear_faults();
        (Instant::now(), self.calls().0 - before.0, failures)
    }

    /// Waits up to two minutes until `orders-db` holds a token other than `stale`, counts the
    /// calls since `before` and settles `sampler`: when it recovered, the calls and the samples.
    async fn recovery(
        &self,
        sampler: Sampler,
        stale: Option<&str>,
        before: (u64, u64),
    ) -> (Instant, String, Samples) {
        let recovered_at = self
            .recovered("orders-db", stale, Duration::from_secs(120))
            .await;
        let calls = self.calls_since(before);
        let samples = self.settle(sampler).await;
        (recovered_at, calls, samples)
    }

    /// A last second of sampling (the new token must be served too), then what the sampler
    /// saw and whether the story's Secret survived.
    async fn settle(&self, sampler: Sampler) -> Samples {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut samples = sampler.finish().await;
        samples.lost = self.lost(&["orders-db"]).await;
        samples.in_pods = self.judge_pods();
        samples
    }

    /// Reports the story's row, keeps the evidence of `controllers` and checks that no expired
    /// token was served and no Secret lost.
    async fn conclude(
        &self,
        figures: &Figures,
        samples: &Samples,
        controllers: &[&ControllerProcess],
    ) {
        figures.report();
        self.keep_evidence(controllers).await;
        assert_sound(figures, samples);
    }

    async fn lost(&self, names: &[&str]) -> u64 {
        let mut lost = 0;
        for name in names {
            if self.token(name).await.is_none() {
                lost += 1;
            }
        }
        lost
    }

    /// Leaves the namespace's events and statuses and each controller's metrics in the
    /// evidence directory, for the secrecy scan at the end of the run.
    async fn keep_evidence(&self, controllers: &[&ControllerProcess]) {
        let Some(dir) = std::env::var_os("FEDCRED_EVIDENCE_DIR").map(PathBuf::from) else {
            return;
        };
        let _ = std::fs::create_dir_all(&dir);
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), &self.namespace);
        if let Ok(list) = events.list(&ListParams::default()).await {
            let _ = std::fs::write(
                dir.join(format!("faults-{}-events.json", self.namespace)),
                serde_json::to_string(&list.items).unwrap_or_default(),
            );
        }
        if let Ok(list) = self.credentials().list(&ListParams::default()).await {
            let _ = std::fs::write(
                dir.join(format!(
                    "faults-{}-federatedcredentials.json",
                    self.namespace
                )),
                serde_json::to_string(&list.items).unwrap_or_default(),
            );
        }
        for c in controllers {
            let _ = std::fs::write(
                dir.join(format!(
                    "faults-{}-{}-metrics.txt",
                    self.namespace, c.identity
                )),
                c.metrics().await,
            );
        }
    }
}

/// Refreshes when 90 % of the lifetime is left: with 60-second tokens, every few seconds.
fn eager() -> Value {
    json!({"secret": {"renewBeforePercentage": 90}})
}

fn no_impersonation() -> Value {
    json!({"serviceAccount": null})
}

const READY: Duration = Duration::from_secs(60);

/// Polls until the doubles' fault queue of `target` is empty; returns when it was seen.
async fn drained(world: &World, target: Target, limit: Duration) -> Instant {
    let start = Instant::now();
    while !world.cloud.google.pending_faults(target).is_empty() {
        assert!(
            start.elapsed() < limit,
            "the injected faults were not used up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Instant::now()
}

fn assert_sound(figures: &Figures, samples: &Samples) {
    assert_eq!(
        figures.expired, 0,
        "{}: tokens served expired: {samples:?}",
        figures.fault
    );
    assert_eq!(figures.lost, 0, "{}: Secrets lost", figures.fault);
    assert_pod_sound(figures.fault, samples);
}

/// The reader pod, if the story had one, was served tokens, kept reading to the end of the
/// story (it logs at least once a second), and was never served an expired token.
fn assert_pod_sound(fault: &str, samples: &Samples) {
    if let Some(p) = &samples.in_pods {
        assert_eq!(
            p.expired, 0,
            "{fault}: the metadata sidecar served expired tokens to the pod: {p:?}"
        );
        assert!(
            p.observations > 0,
            "{fault}: the reader pod got no token: {p:?}"
        );
        assert!(
            p.idle_seconds().is_some_and(|idle| idle < 5.0),
            "{fault}: the reader pod stopped reading before the story ended: {p:?}"
        );
    }
}

/// A story where Google misbehaves for a while: the resource is Ready with short tokens,
/// `inject` queues faults, and the figures run until it holds a fresh token again.
async fn google_fault(
    fault: &'static str,
    prefix: &str,
    impersonate: bool,
    inject: impl FnOnce(&World),
    target: Target,
    notes: impl FnOnce(&Samples, Duration) -> String,
) -> Figures {
    let world = World::with_reader(prefix, federated(60)).await;
    let controller = world.controller("r1", &[]);
    let google = if impersonate {
        json!({})
    } else {
        no_impersonation()
    };
    let sampler = world
        .ready_and_sampled("orders-db", world.spec(google, eager()))
        .await;
    let before = world.calls();
    let stale = world.token("orders-db").await;
    let start = Instant::now();
    inject(&world);
    let healthy_at = drained(&world, target, Duration::from_secs(120)).await;
    let (recovered_at, calls, samples) = world.recovery(sampler, stale.as_deref(), before).await;
    let figures = Figures {
        recovery: Some(recovered_at.saturating_duration_since(healthy_at)),
        calls,
        notes: notes(&samples, recovered_at - start),
        ..samples.figures(fault)
    };
    world.conclude(&figures, &samples, &[&controller]).await;
    figures
}

// ---------------------------------------------------------------------------------------------
// Google

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_sts_5xx_burst() {
    google_fault(
        "Google STS 5xx burst (8 × 503)",
        "f-5xx",
        false,
        |w| w.cloud.sts_unavailable(8),
        Target::Sts,
        |s, episode| {
            format!(
                "60 s tokens; episode {}; closest approach to expiry {} s",
                secs(episode),
                s.closest_to_expiry.unwrap_or_default()
            )
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_sts_429_with_retry_after() {
    let figures = google_fault(
        "Google STS 429, Retry-After: 2 (3 ×)",
        "f-429",
        false,
        |w| {
            w.cloud.google.inject(
                Target::Sts,
                Fault::Status {
                    code: 429,
                    retry_after: Some(2),
                    count: 3,
                },
            )
        },
        Target::Sts,
        |s, episode| {
            format!(
                "absorbed by the client's retries (≥ 2 s apart); episode {}; closest approach to expiry {} s",
                secs(episode),
                s.closest_to_expiry.unwrap_or_default()
            )
        },
    )
    .await;
    // Three refusals and one success within one refresh: no storm.
    let sts: u64 = figures.calls["STS ".len()..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(sts <= 6, "{}", figures.calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_sts_requests_hang_past_the_client_timeout() {
    google_fault(
        "Google STS hangs 12 s (> 10 s client timeout, 2 ×)",
        "f-hang",
        false,
        |w| {
            w.cloud.google.inject(
                Target::Sts,
                Fault::Delay {
                    millis: 12_000,
                    count: 2,
                },
            )
        },
        Target::Sts,
        |s, episode| {
            format!(
                "episode {}; closest approach to expiry {} s",
                secs(episode),
                s.closest_to_expiry.unwrap_or_default()
            )
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_credentials_denies_then_allows() {
    // Impersonated tokens live at least 600 s, so the refresh is forced by a spec change
    // (new scopes) while IAM Credentials denies; the old token stays valid meanwhile.
    let world = World::with_reader("f-iam", |c| c).await;
    let controller = world.controller("r1", &[]);
    let sampler = world
        .ready_and_sampled("orders-db", world.spec(json!({}), json!({})))
        .await;
    let before = world.calls();
    let stale = world.token("orders-db").await;
    world
        .cloud
        .google
        .inject(Target::Iam, Fault::Reject { count: 2 });
    let start = Instant::now();
    let scopes = json!({"scopes": ["https://www.googleapis.com/auth/bigquery"]});
    world
        .apply("orders-db", world.spec(scopes, json!({})))
        .await;
    let denied = {
        let mut reason = Value::Null;
        for _ in 0..100 {
            let s = world.status("orders-db").await;
            if s["failureCount"].as_i64().unwrap_or(0) >= 1 {
                reason = s["lastFailureReason"].clone();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        reason
    };
    assert_eq!(denied, "ImpersonationDenied", "the denial is explained");
    let healthy_at = drained(&world, Target::Iam, Duration::from_secs(120)).await;
    let (recovered_at, calls, samples) = world.recovery(sampler, stale.as_deref(), before).await;
    let token = world.token("orders-db").await.unwrap();
    let info = world.cloud.google.lookup(&token).unwrap();
    assert_eq!(info.scopes, ["https://www.googleapis.com/auth/bigquery"]);
    let figures = Figures {
        recovery: Some(recovered_at.saturating_duration_since(healthy_at)),
        calls,
        notes: format!(
            "refresh forced by a spec change; old token served meanwhile; episode {}",
            secs(recovered_at - start)
        ),
        ..samples.figures("IAM Credentials denies (2 ×) then allows")
    };
    world.conclude(&figures, &samples, &[&controller]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_sts_down_through_the_last_half_minute_before_expiry() {
    // 60-second tokens refreshed with 30 s left (the default 50 %): the first refresh already
    // falls in the last 30 s, where a failing refresh is retried at least once before expiry.
    let world = World::with_reader("f-last", federated(60)).await;
    let controller = world.controller("r1", &[]);
    let sampler = world
        .ready_and_sampled("orders-db", world.spec(no_impersonation(), json!({})))
        .await;
    let Outage {
        expires_at,
        stale,
        before,
    } = world.break_google_sts().await;
    // Google comes back 8 s before the token would expire.
    let back = expires_at - SignedDuration::from_secs(8);
    let first_call = loop {
        if world.calls().0 > before.0 {
            break Timestamp::now();
        }
        assert!(Timestamp::now() < back, "no refresh was tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (healthy_at, outage_calls, failed) = world.mend_google_sts_at(back, before).await;
    let outage = back.duration_since(first_call).as_secs_f64();
    let recovered_at = world
        .recovered("orders-db", stale.as_deref(), Duration::from_secs(60))
        .await;
    let samples = world.settle(sampler).await;
    let figures = Figures {
        recovery: Some(recovered_at - healthy_at),
        calls: format!("STS {outage_calls} in {outage:.1} s of outage"),
        notes: format!(
            "{:.1} Google calls/s while down; {failed} failed refreshes recorded (a status write and a Warning event each, one per {:.1} s); closest approach to expiry {} s",
            outage_calls as f64 / outage.max(1.0),
            outage / (failed.max(1) as f64),
            samples.closest_to_expiry.unwrap_or_default()
        ),
        ..samples.figures("Google STS down from the refresh until 8 s before expiry (60 s tokens, refresh at 30 s left)")
    };
    world.conclude(&figures, &samples, &[&controller]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_sts_down_until_the_token_has_expired() {
    // An outage longer than the time left at the refresh: the token expires while Google is
    // down. Measured: how long after Google is back the resource gets a token again.
    let world = World::with_reader("f-expire", federated(60)).await;
    let controller = world.controller("r1", &[]);
    world
        .apply("orders-db", world.spec(no_impersonation(), json!({})))
        .await;
    world.recovered("orders-db", None, READY).await;
    world.read_in_pod("orders-db");
    let Outage {
        expires_at,
        stale,
        before,
    } = world.break_google_sts().await;
    // Google comes back 2 s after the token expired.
    let back = expires_at + SignedDuration::from_secs(2);
    let (healthy_at, outage_calls, failures) = world.mend_google_sts_at(back, before).await;
    let status = world.status("orders-db").await;
    let next: Option<Timestamp> = status["nextRefreshTime"]
        .as_str()
        .and_then(|t| t.parse().ok());
    // Watch for up to 40 s after Google is back: retries of an expired token come at least
    // every 30 s, whatever failed before.
    let sampler = Sampler::start(
        world.secrets(),
        vec!["orders-db".into()],
        world.cloud.clone(),
    );
    let mut recovered = None;
    while healthy_at.elapsed() < Duration::from_secs(40) {
        if world.healthy("orders-db", stale.as_deref()).await.is_some() {
            recovered = Some(healthy_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let samples = world.settle(sampler).await;
    // What the controller has scheduled by now.
    let status = world.status("orders-db").await;
    let failures = status["failureCount"].as_i64().unwrap_or(failures);
    let next: Option<Timestamp> = status["nextRefreshTime"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .or(next);
    let waiting = next.map(|n| n.as_second() - Timestamp::now().as_second());
    let in_pod = match &samples.in_pods {
        Some(p) => format!(
            "; the reader pod's requests refused {} times (503) while the only token had expired",
            p.errors
        ),
        None => String::new(),
    };
    let figures = Figures {
        recovery: recovered,
        calls: format!("STS {outage_calls} during the outage"),
        notes: match recovered {
            Some(_) => format!(
                "{failures} failed refreshes before Google was back; expired samples counted from then on{in_pod}"
            ),
            None => format!(
                "not recovered 40 s after Google was back: {failures} failed refreshes pushed the next retry to {} s after the outage; the expired token stays in the Secret until then; expired samples counted from Google's return",
                waiting.map_or("an unknown time".to_owned(), |w| (w + 40).to_string())
            ),
        },
        ..samples.figures(
            "Google STS down until 2 s after the token expired (60 s tokens, refresh at 30 s left)",
        )
    };
    figures.report();
    world.keep_evidence(&[&controller]).await;
    assert_eq!(figures.lost, 0, "the Secret was lost");
    assert_pod_sound(figures.fault, &samples);
    if let Some(p) = &samples.in_pods {
        assert!(
            p.errors > 0,
            "the pod was never refused while its only token had expired: {p:?}"
        );
    }
    assert!(failures >= 1, "the outage was noticed: {status}");
    assert!(
        recovered.is_some_and(|r| r <= decide::EXPIRED_CAP + Duration::from_secs(5)),
        "{}",
        figures.notes
    );
}

// ---------------------------------------------------------------------------------------------
// AWS STS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_sts_down_then_back() {
    // The gate's URL is the STS endpoint of the resource, so the subject token names it; the
    // Google doubles accept it and send their GetCallerIdentity check straight to moto.
    let gate: Arc<Mutex<Option<Gate>>> = Arc::default();
    let slot = gate.clone();
    let world = World::with_reader("f-aws", move |c| {
        let mut c = federated(60)(c);
        *slot.lock().unwrap() = Some(Gate::before_moto(&mut c));
        c
    })
    .await;
    let gate = gate.lock().unwrap().take().unwrap();
    let controller = world.controller("r1", &[]);
    let mut spec = world.spec(no_impersonation(), eager());
    spec.aws.as_mut().expect("an AWS source").sts_endpoint = Some(gate.url());
    let sampler = world.ready_and_sampled("orders-db", spec).await;
    let before = world.calls();
    let stale = world.token("orders-db").await;
    gate.set_down(true);
    let down_for = Duration::from_secs(20);
    tokio::time::sleep(down_for).await;
    let failing = world.status("orders-db").await;
    gate.set_down(false);
    let healthy_at = Instant::now();
    let (recovered_at, calls, samples) = world.recovery(sampler, stale.as_deref(), before).await;
    let figures = Figures {
        recovery: Some(recovered_at - healthy_at),
        calls: format!(
            "{calls}; AWS connections refused {}",
            gate.refused.load(Ordering::Relaxed)
        ),
        notes: format!(
            "failure reason while down: {}; closest approach to expiry {} s",
            failing["lastFailureReason"].as_str().unwrap_or("none"),
            samples.closest_to_expiry.unwrap_or_default()
        ),
        ..samples.figures("AWS STS (moto) down 20 s, then back")
    };
    world.conclude(&figures, &samples, &[&controller]).await;
    assert!(
        failing["failureCount"].as_i64().unwrap_or(0) >= 1,
        "the outage was noticed: {failing}"
    );
}

// ---------------------------------------------------------------------------------------------
// The controller and its replicas

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_killed_in_the_middle_of_a_refresh() {
    let world = World::with_reader("f-kill", federated(60)).await;
    let mut controller = world.controller("r1", &[]);
    let sampler = world
        .ready_and_sampled("orders-db", world.spec(no_impersonation(), eager()))
        .await;
    // Hold the next exchange open, and kill the controller while it waits for the answer.
    world.cloud.google.inject(
        Target::Sts,
        Fault::Delay {
            millis: 8_000,
            count: 1,
        },
    );
    let (calls_at_inject, _) = world.calls();
    let start = Instant::now();
    while world.calls().0 == calls_at_inject {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no refresh began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The token the held refresh would replace: read once that refresh has begun, since the
    // eager schedule may have finished another refresh between the first token and the fault.
    // The one resource's refreshes run one after another, so nothing else writes it now.
    let stale = world.token("orders-db").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    controller.kill();
    let before = world.calls();
    let token_after_kill = world.token("orders-db").await;
    assert_eq!(
        token_after_kill, stale,
        "the refresh in flight wrote nothing"
    );
    let restarted_at = Instant::now();
    let restarted = world.controller("r1", &[]);
    let (recovered_at, calls, samples) = world.recovery(sampler, stale.as_deref(), before).await;
    let figures = Figures {
        recovery: Some(recovered_at - restarted_at),
        calls,
        notes: format!(
            "old token kept through the kill; closest approach to expiry {} s",
            samples.closest_to_expiry.unwrap_or_default()
        ),
        ..samples.figures("controller SIGKILLed during a refresh, restarted")
    };
    world.conclude(&figures, &samples, &[&restarted]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_between_two_replicas() {
    let world = World::with_reader("f-leader", federated(60)).await;
    let mut a = world.controller("replica-a", &[]);
    let mut b = world.controller("replica-b", &[]);
    let sampler = world
        .ready_and_sampled("orders-db", world.spec(no_impersonation(), eager()))
        .await;
    let leases: Api<Lease> = Api::namespaced(world.client.clone(), &world.namespace);
    let holder = leases
        .get("fedcred-controller")
        .await
        .unwrap()
        .spec
        .unwrap();
    let holder = holder.holder_identity.unwrap();
    let (leader, standby) = if holder == "replica-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let before = world.calls();
    let stale = world.token("orders-db").await;
    // SIGKILL: the Lease is not released, so the standby waits for it to expire.
    leader.kill();
    let killed_at = Instant::now();
    let start = Instant::now();
    while !standby.logs().contains("became leader") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the standby did not take over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let takeover = killed_at.elapsed();
    let (recovered_at, calls, samples) = world.recovery(sampler, stale.as_deref(), before).await;
    let figures = Figures {
        recovery: Some(recovered_at - killed_at),
        calls,
        notes: format!(
            "takeover after {} (15 s Lease); 60 s tokens; closest approach to expiry {} s",
            secs(takeover),
            samples.closest_to_expiry.unwrap_or_default()
        ),
        ..samples.figures("leader SIGKILLed, standby replica takes over")
    };
    world.conclude(&figures, &samples, &[standby]).await;
}

/// Fencing: the leader's API server hangs (every request through its connection stalls, the
/// renewal included). It must give up and stop, in-flight reconciles dropped, before the standby
/// may take the Lease over: the standby waits a whole lease duration (15 s) from the last renewal
/// it saw, the leader gives up at its renew deadline (10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_api_server_hangs_stops_before_the_standby_starts() {
    let world = World::shared("f-fence", federated(60)).await;
    // Replica A reaches the API server through a gate that can stall; B directly.
    let config = std::fs::read_to_string(&world.kubeconfig).unwrap();
    let server = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("a server in the kubeconfig")
        .to_owned();
    let port: u16 = server
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let gate = Gate::start(port);
    let gated = std::env::temp_dir().join(format!("fedcred-fence-{}.kubeconfig", world.namespace));
    std::fs::write(
        &gated,
        config.replace(
            &server,
            &format!(
                "https://127.0.0.1:{}",
                gate.url().rsplit(':').next().unwrap()
            ),
        ),
    )
    .unwrap();
    let mut a = Launch::new(&world.cloud)
        .watching(&world.namespace, "replica-a")
        .kubeconfig(&gated)
        .rust_log("info,kube_client=debug")
        .log_stem(format!("faults-{}-replica-a", world.namespace))
        .start();
    let start = Instant::now();
    while !a.logs().contains("became leader") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "replica-a did not lead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = world.controller("replica-b", &[]);
    let sampler = world
        .ready_and_sampled("orders-db", world.spec(no_impersonation(), eager()))
        .await;

    let before = world.calls();
    gate.set_stalled(true);
    let stalled_at = Instant::now();
    let (mut a_gone, mut b_leads) = (None, None);
    while a_gone.is_none() || b_leads.is_none() {
        assert!(
            stalled_at.elapsed() < Duration::from_secs(60),
            "no takeover within 60 s"
        );
        if a_gone.is_none() && !a.alive() {
            a_gone = Some(stalled_at.elapsed());
        }
        if b_leads.is_none() && b.logs().contains("became leader") {
            b_leads = Some(stalled_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (a_gone, b_leads) = (a_gone.unwrap(), b_leads.unwrap());
    let a_log = a.logs();
    assert!(
        a_log.contains("giving up leadership"),
        "replica-a gave up at its renew deadline: {a_log}"
    );
    // The last request replica-a started (kube_client logs each at debug) came before it
    // gave up; its process was gone before replica-b started leading.
    // The timestamp of each JSON log line containing `needle`.
    let times = |log: &str, needle: &str| -> Vec<Timestamp> {
        log.lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["timestamp"].as_str()?.parse().ok())
            .collect()
    };
    let last_request = times(&a_log, "\"requesting\"").into_iter().max();
    let gave_up = *times(&a_log, "giving up leadership")
        .first()
        .expect("the give-up line has a timestamp");
    let b_became = *times(&b.logs(), "became leader")
        .first()
        .expect("the takeover line has a timestamp");
    assert!(
        last_request.is_some_and(|r| r <= gave_up),
        "no request started after giving up: last {last_request:?}, gave up {gave_up}"
    );
    assert!(
        a_gone < b_leads,
        "replica-a stopped ({} s after the stall) before replica-b led ({} s)",
        secs(a_gone),
        secs(b_leads)
    );
    let margin = b_became.duration_since(gave_up);
    assert!(
        margin.as_secs_f64() >= 2.0,
        "at least 2 s between giving up and the takeover, was {margin:?}"
    );
    gate.set_stalled(false);

    let stale = world.token("orders-db").await;
    let (recovered_at, calls, samples) = world.recovery(sampler, stale.as_deref(), before).await;
    let figures = Figures {
        recovery: Some(recovered_at - stalled_at),
        calls,
        notes: format!(
            "leader's API server stalled: it gave up and exited {} later, the standby led {} later ({:.1} s apart by their logs); 60 s tokens",
            secs(a_gone),
            secs(b_leads),
            margin.as_secs_f64()
        ),
        ..samples.figures("leader's API server hangs; it stops, the standby takes over")
    };
    let _ = std::fs::remove_file(&gated);
    world.conclude(&figures, &samples, &[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_deleted_or_edited_by_hand() {
    let world = World::with_reader("f-hand", |c| c).await;
    let controller = world.controller("r1", &[]);
    let sampler = world
        .ready_and_sampled("orders-db", world.spec(json!({}), json!({})))
        .await;

    let before = world.calls();
    world
        .secrets()
        .delete("orders-db", &DeleteParams::default())
        .await
        .unwrap();
    let deleted_at = Instant::now();
    let back_at = world
        .recovered("orders-db", None, Duration::from_secs(60))
        .await;
    let delete_calls = world.calls_since(before);

    let before = world.calls();
    let tamper = json!({"stringData": {"access_token": "edited-by-hand"}});
    world
        .secrets()
        .patch("orders-db", &PatchParams::default(), &Patch::Merge(&tamper))
        .await
        .unwrap();
    let edited_at = Instant::now();
    let restored_at = world
        .recovered("orders-db", Some("edited-by-hand"), Duration::from_secs(60))
        .await;
    let edit_calls = world.calls_since(before);
    let samples = world.settle(sampler).await;
    let deleted = Figures {
        recovery: Some(back_at - deleted_at),
        calls: delete_calls,
        notes: format!(
            "recreated from the cached token; {} samples saw no Secret",
            samples.missing
        ),
        ..samples.figures("Secret deleted by hand")
    };
    let edited = Figures {
        recovery: Some(restored_at - edited_at),
        calls: edit_calls,
        notes: format!(
            "edit undone from the cached token; {} samples saw the edited value{}",
            samples.foreign,
            samples.in_pods.as_ref().map_or(String::new(), |p| match p.foreign {
                0 => ", the reader pod never (an edit undone before the kubelet's next Secret sync never reaches a pod)".to_owned(),
                n => format!(", the reader pod in {n} observations"),
            })
        ),
        ..samples.figures("Secret edited by hand (token overwritten)")
    };
    edited.report();
    world.conclude(&deleted, &samples, &[&controller]).await;
    assert!(
        samples.missing > 0 || samples.foreign > 0,
        "the sampler saw the hand edits"
    );
}

// ---------------------------------------------------------------------------------------------
// kube-apiserver

/// A control plane of this test alone, so that killing its API server disturbs nobody else.
struct PrivatePlane {
    dir: PathBuf,
}

impl PrivatePlane {
    fn up() -> PrivatePlane {
        let dir = std::env::temp_dir().join(format!(
            "fedcred-faults-plane-{}-{}",
            std::process::id(),
            Timestamp::now().as_millisecond()
        ));
        controlplane("up", &dir, &[]);
        PrivatePlane { dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn kubectl(&self, args: &[&str]) {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .stdin(Stdio::null())
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn client(&self) -> Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        Client::try_from(config).unwrap()
    }
}

/// `hack/controlplane.sh COMMAND DIR EXTRA...`, failing the test when it fails.
fn controlplane(command: &str, dir: &Path, extra: &[&str]) {
    let script = support::repo_root().join("hack/controlplane.sh");
    let out = Command::new(script)
        .arg(command)
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("hack/controlplane.sh runs");
    assert!(
        out.status.success(),
        "hack/controlplane.sh {command} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for PrivatePlane {
    fn drop(&mut self) {
        let script = support::repo_root().join("hack/controlplane.sh");
        let _ = Command::new(script)
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
        if let Some(evidence) = std::env::var_os("FEDCRED_EVIDENCE_DIR") {
            let log = self.dir.join("logs/kube-apiserver.log");
            let _ = std::fs::copy(
                log,
                PathBuf::from(evidence).join(format!(
                    "faults-private-kube-apiserver-{}.log",
                    std::process::id()
                )),
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_killed_and_restarted() {
    let plane = tokio::task::spawn_blocking(PrivatePlane::up).await.unwrap();
    let crd = support::repo_root().join("crds/fedcred.io_federatedcredentials.yaml");
    plane.kubectl(&["apply", "--server-side", "-f", crd.to_str().unwrap()]);
    plane.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/federatedcredentials.fedcred.io",
    ]);
    let client = plane.client().await;
    let namespace = "faults-apiserver";
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let world = World {
        client,
        kubeconfig: plane.kubeconfig(),
        namespace: namespace.to_owned(),
        cloud: Arc::new(Cloud::start(federated(60)).await),
        readers: None,
        _ns: None,
    };
    world.service_account().await;
    let mut controller = world.controller("r1", &[]);
    let sampler = world
        .ready_and_sampled("orders-db", world.spec(no_impersonation(), eager()))
        .await;
    let before = world.calls();
    let down = 20;
    let killed_at = Instant::now();
    let dir = plane.dir.clone();
    tokio::task::spawn_blocking(move || {
        controlplane("restart-apiserver", &dir, &[&down.to_string()]);
    })
    .await
    .unwrap();
    let ready_at = Instant::now();
    let stale = world.token("orders-db").await;
    let exited = !controller.alive();
    let mut restarted = None;
    if exited {
        // What the kubelet would do: start the container again.
        restarted = Some(world.controller("r1-restarted", &[]));
    }
    let (recovered_at, calls, samples) = world.recovery(sampler, stale.as_deref(), before).await;
    let figures = Figures {
        recovery: Some(recovered_at - ready_at),
        calls,
        notes: format!(
            "API server back {} after the kill; controller {}; {} reads unanswered; closest approach to expiry {} s",
            secs(ready_at - killed_at),
            if exited {
                "exited (Lease lost) and was started again"
            } else {
                "kept running"
            },
            samples.unreachable,
            samples.closest_to_expiry.unwrap_or_default()
        ),
        ..samples.figures("kube-apiserver SIGKILLed, down 20 s, restarted")
    };
    let last = restarted.as_ref().unwrap_or(&controller);
    world.conclude(&figures, &samples, &[last]).await;
    assert!(samples.unreachable > 0, "the sampler saw the outage");
}

// ---------------------------------------------------------------------------------------------
// The webhook's certificate

/// A MutatingWebhookConfiguration sending pod creations of one namespace to `port`.
fn webhook_configuration(name: &str, namespace: &str, port: u16) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "pods.fedcred.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate")},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "objectSelector": {"matchLabels": {"fedcred.io/inject": "true"}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}]
        }]
    })
}

/// Whether the API server reached the webhook for an opted-in pod (the webhook may admit or
/// refuse it; a TLS or connection failure is what counts as unreachable).
fn admission_reaches_webhook(namespace: &str) -> bool {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probe", "labels": {"fedcred.io/inject": "true"},
                     "annotations": {"fedcred.io/credential": "orders-db"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}});
    let out = support::kubectl(
        &[
            "-n",
            namespace,
            "create",
            "--dry-run=server",
            "-o",
            "name",
            "-f",
            "-",
        ],
        Some(&pod.to_string()),
    );
    !(out.stderr.contains("failed calling webhook") || out.stderr.contains("x509"))
}

/// The DER of the first certificate in `pem`.
fn der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// The certificate the webhook serves, as DER, if a TLS client trusting `ca_pem` accepts it.
async fn served_certificate(port: u16, ca_pem: &str) -> Option<Vec<u8>> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).ok()?;
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .tls_info(true)
        .timeout(Duration::from_secs(3))
        .build()
        .ok()?;
    let resp = client
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .ok()?;
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>()?;
    info.peer_certificate().map(<[u8]>::to_vec)
}

fn secret_text(secret: &Secret, key: &str) -> String {
    decode(secret).remove(key).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_certificate_reaching_rotation() {
    let world = World::shared("f-certs", |c| c).await;
    let configuration = format!("fedcred-faults-{}", world.namespace);
    let port = free_port();
    support::kubectl(
        &["apply", "-f", "-"],
        Some(&webhook_configuration(&configuration, &world.namespace, port).to_string()),
    )
    .success();
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = support::kubectl(
                &[
                    "delete",
                    "mutatingwebhookconfiguration",
                    &self.0,
                    "--ignore-not-found",
                ],
                None,
            );
        }
    }
    let _cleanup = Cleanup(configuration.clone());
    let settings = CertSettings {
        namespace: world.namespace.clone(),
        secret: "fedcred-webhook-tls".to_owned(),
        webhook_configuration: configuration.clone(),
        names: vec!["127.0.0.1".to_owned()],
    };
    let secrets = world.secrets();
    let mark = |key: &'static str, days: i64| {
        let at = Timestamp::now() + SignedDuration::from_hours(24 * days);
        json!({"metadata": {"annotations": {key: at.to_string()}}})
    };

    // 1. The stored serving certificate is 5 days from its end when a replica starts.
    let old = certs::ensure(&world.client, &settings).await.unwrap();
    secrets
        .patch(
            "fedcred-webhook-tls",
            &PatchParams::default(),
            &Patch::Merge(&mark(certs::NOT_AFTER, 5)),
        )
        .await
        .unwrap();
    let args = [
        "--webhook-address",
        &format!("127.0.0.1:{port}"),
        "--webhook-dns-names",
        "127.0.0.1",
        "--webhook-configuration",
        &configuration,
        "--fedcred-image",
        "registry.example/fedcred:faults",
    ];
    let started_at = Instant::now();
    let mut replica = world.controller("r1", &args);
    let (renewed_at, renewed) = loop {
        let stored = secrets.get("fedcred-webhook-tls").await.unwrap();
        let cert = secret_text(&stored, certs::TLS_CRT);
        if cert != old.cert_pem && served_certificate(port, &old.ca_pem).await == Some(der(&cert)) {
            break (Instant::now(), stored);
        }
        assert!(
            started_at.elapsed() < Duration::from_secs(60),
            "the renewed certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        secret_text(&renewed, certs::CA_CRT),
        old.ca_pem,
        "a serving renewal keeps the CA"
    );
    let reached = admission_reaches_webhook(&world.namespace);
    assert!(reached, "the API server trusts the renewed certificate");
    Figures {
        fault: "webhook serving certificate 5 days from its end at start",
        recovery: Some(renewed_at - started_at),
        expired: 0,
        in_pod: "—".into(),
        lost: 0,
        calls: "n/a".into(),
        notes: "renewed under the same CA and served; admission through the API server works"
            .into(),
    }
    .report();

    // 2. The CA reaches its renewal window and another replica renews everything while this
    // one keeps serving the certificate of the old CA.
    secrets
        .patch(
            "fedcred-webhook-tls",
            &PatchParams::default(),
            &Patch::Merge(&mark(certs::CA_NOT_AFTER, 60)),
        )
        .await
        .unwrap();
    let rotated = certs::ensure(&world.client, &settings).await.unwrap();
    assert_ne!(rotated.ca_pem, old.ca_pem, "the CA was renewed");
    let rotated_at = Instant::now();
    let window = Duration::from_secs(10);
    let (mut tried, mut failed) = (0, 0);
    let mut first_success: Option<Duration> = None;
    while rotated_at.elapsed() < window {
        let ns = world.namespace.clone();
        let ok = tokio::task::spawn_blocking(move || admission_reaches_webhook(&ns))
            .await
            .unwrap();
        tried += 1;
        if ok {
            first_success.get_or_insert(rotated_at.elapsed());
        } else {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let serves_new =
        served_certificate(port, &rotated.ca_pem).await == Some(der(&rotated.cert_pem));
    // A restart picks the new material up.
    replica.kill();
    let restarted_at = Instant::now();
    let replica = world.controller("r1-restarted", &args);
    loop {
        if served_certificate(port, &rotated.ca_pem).await == Some(der(&rotated.cert_pem))
            && admission_reaches_webhook(&world.namespace)
        {
            break;
        }
        assert!(
            restarted_at.elapsed() < Duration::from_secs(60),
            "the restarted replica did not serve the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after_restart = restarted_at.elapsed();
    assert!(
        serves_new,
        "the serving replica still served the old CA's certificate {} after the rotation",
        secs(window)
    );
    Figures {
        fault: "webhook CA renewed by another replica while this one serves",
        recovery: if serves_new {
            first_success
        } else {
            Some(after_restart)
        },
        expired: 0,
        in_pod: "—".into(),
        lost: 0,
        calls: format!("admission attempts {tried}, failed {failed} in {}", secs(window)),
        notes: if serves_new {
            "the serving replica followed the rotation".to_owned()
        } else {
            format!(
                "the serving replica kept the old CA's certificate for the whole {} (it re-reads the Secret hourly); time shown is from a restart",
                secs(window)
            )
        },
    }
    .report();
    world.keep_evidence(&[&replica]).await;
}

// ---------------------------------------------------------------------------------------------
// The metadata server

/// A kubelet-like Secret volume: `key -> ..data/key`, `..data -> ..<generation>` swapped by
/// renaming a new symlink over it, the old generation deleted afterwards.
struct Volume {
    dir: PathBuf,
    current: Option<PathBuf>,
}

impl Volume {
    fn publish(&mut self, generation: u32, files: &[(&str, String)]) {
        let name = format!("..gen-{generation:06}");
        let dir = self.dir.join(&name);
        std::fs::create_dir(&dir).unwrap();
        for (key, value) in files {
            std::fs::write(dir.join(key), value).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for (key, _) in files {
            let link = self.dir.join(key);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(format!("..data/{key}"), link).unwrap();
            }
        }
        if let Some(old) = self.current.replace(dir) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Generation `g`'s Secret: its token names `g`, its expiry is `g` hundred seconds past a base
/// an hour ahead, so that both halves of an answer tell which generation they came from. Every
/// tenth generation is already expired.
fn generation_files(base: Timestamp, g: u32) -> Vec<(&'static str, String)> {
    let expiry = if g.is_multiple_of(10) {
        Timestamp::now() - SignedDuration::from_secs(60)
    } else {
        base + SignedDuration::from_secs(100 * i64::from(g))
    };
    vec![
        ("access_token", format!("swap-token-{g:06}")),
        ("expiry", expiry.to_string()),
        ("token_type", "Bearer".to_owned()),
        (
            "service_account",
            "orders-api@acme-shop.iam.gserviceaccount.com".to_owned(),
        ),
        ("project_id", "acme-shop".to_owned()),
    ]
}

/// One GET of the token path: (status, body).
fn get_token(addr: SocketAddr) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!(
        "GET /computeMetadata/v1/instance/service-accounts/default/token HTTP/1.1\r\nHost: {addr}\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

#[test]
fn secret_files_swapped_under_the_metadata_server() {
    let dir = std::env::temp_dir().join(format!(
        "fedcred-faults-volume-{}-{}",
        std::process::id(),
        Timestamp::now().as_nanosecond()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut volume = Volume { dir, current: None };
    let base = Timestamp::now() + SignedDuration::from_secs(3600);
    volume.publish(1, &generation_files(base, 1));
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = support::controller::log_dir().join(format!(
        "fedcred-faults-metadata-{}-{port}.log",
        std::process::id()
    ));
    let mut server = Command::new(env!("CARGO_BIN_EXE_fedcred"))
        .arg("metadata-server")
        .arg("--secret-dir")
        .arg(&volume.dir)
        .args(["--listen", &addr.to_string(), "--log-format", "text"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "no listener");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The generation whose swap completed last, and the one being swapped in: a request may
    // see anything from the first (read before it) to the second (read after it).
    let current = Arc::new(AtomicU32::new(1));
    let publishing = Arc::new(AtomicU32::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let run_for = Duration::from_secs(6);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (current, publishing, stop) = (current.clone(), publishing.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut tally = BTreeMap::<&'static str, u64>::new();
                while !stop.load(Ordering::Relaxed) {
                    let low = current.load(Ordering::SeqCst);
                    let answer = get_token(addr);
                    let high = publishing.load(Ordering::SeqCst);
                    let asked_at = Timestamp::now();
                    let outcome = match answer {
                        None => "transport error",
                        Some((200, body)) => {
                            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                            let g: u32 = v["access_token"]
                                .as_str()
                                .and_then(|t| t.strip_prefix("swap-token-"))
                                .and_then(|n| n.parse().ok())
                                .unwrap_or(0);
                            let left = v["expires_in"].as_i64().unwrap_or(-1);
                            let want = (base + SignedDuration::from_secs(100 * i64::from(g)))
                                .as_second()
                                - asked_at.as_second();
                            if g < low || g > high {
                                "200 from a generation not current"
                            } else if g.is_multiple_of(10) {
                                "200 for an expired token"
                            } else if (left - want).abs() > 3 {
                                "200 mixing generations"
                            } else {
                                "200"
                            }
                        }
                        Some((503, _)) if (low..=high).any(|g| g.is_multiple_of(10)) => {
                            "503 while an expired generation was current"
                        }
                        Some((503, _)) => "503 unexplained",
                        Some(_) => "other status",
                    };
                    *tally.entry(outcome).or_default() += 1;
                }
                tally
            })
        })
        .collect();
    let mut swaps = 0u32;
    let started = Instant::now();
    while started.elapsed() < run_for {
        let g = current.load(Ordering::SeqCst) + 1;
        publishing.store(g, Ordering::SeqCst);
        volume.publish(g, &generation_files(base, g));
        current.store(g, Ordering::SeqCst);
        swaps += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut tally = BTreeMap::<&'static str, u64>::new();
    for client in clients {
        for (k, v) in client.join().unwrap() {
            *tally.entry(k).or_default() += v;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let total: u64 = tally.values().sum();
    let ok = tally.get("200").copied().unwrap_or(0);
    let expired_503 = tally
        .get("503 while an expired generation was current")
        .copied()
        .unwrap_or(0);
    let bad: BTreeMap<_, _> = tally
        .iter()
        .filter(|(k, _)| **k != "200" && **k != "503 while an expired generation was current")
        .collect();
    Figures {
        fault: "Secret files swapped under the metadata server (every 20 ms)",
        recovery: None,
        expired: tally.get("200 for an expired token").copied().unwrap_or(0),
        in_pod: "—".into(),
        lost: 0,
        calls: "n/a".into(),
        notes: format!(
            "{swaps} swaps, {total} requests from 4 clients: {ok} × 200 consistent, {expired_503} × 503 while an expired generation was current, other answers: {bad:?}"
        ),
    }
    .report();
    assert!(swaps > 60 && total > 300, "{swaps} swaps, {total} requests");
    assert!(bad.is_empty(), "unexpected answers during swaps: {tally:?}");
}

// ---------------------------------------------------------------------------------------------
// The secrecy scan

#[test]
fn the_secrecy_scan_fails_on_a_planted_token_and_names_the_file() {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    let dir = std::env::temp_dir().join(format!(
        "fedcred-faults-scan-{}-{}",
        std::process::id(),
        Timestamp::now().as_nanosecond()
    ));
    let evidence = dir.join("evidence");
    std::fs::create_dir_all(evidence.join("nested")).unwrap();
    let n = Timestamp::now().as_nanosecond();
    // One of each kind the doubles list, shaped like the real thing.
    let kinds = [
        ("Google access token", format!("ya29.fake-planted{n}")),
        ("AWS secret key", format!("wJalrXUtnFEMI/K7MDENG+bPxRfi{n}")),
        (
            "AWS session token",
            format!("FwoGZXIvYXdzEBYaD{n}+Lm9/ukhtAb0XqCJ3yMIGc"),
        ),
        (
            "ServiceAccount token",
            format!("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0{n}.c2lnbmF0dXJl"),
        ),
        (
            "AWS subject token",
            format!(
                "%7B%22url%22%3A%22https%3A%2F%2Fsts.amazonaws.com%2F%3FAction%3DGetCallerIdentity{n}%22%7D"
            ),
        ),
    ];
    let tokens = dir.join("issued-tokens");
    let listed: String = kinds.iter().map(|(_, v)| format!("{v}\n")).collect();
    std::fs::write(&tokens, format!("ya29.fake-other\n{listed}")).unwrap();
    std::fs::write(evidence.join("controller.log"), "a clean line\n").unwrap();
    let planted = evidence.join("nested/events.json");
    let scan = || {
        let out = Command::new(support::repo_root().join("hack/secrecy-scan.sh"))
            .arg(&tokens)
            .arg(&evidence)
            .stdin(Stdio::null())
            .output()
            .expect("hack/secrecy-scan.sh runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), said)
    };

    let (code, said) = scan();
    assert_eq!(code, Some(0), "a clean directory passes: {said}");

    for (kind, value) in &kinds {
        // Plainly, and base64-encoded inside a longer encoded text at each alignment (a Secret's
        // data, a dumped object), in both alphabets.
        let mut forms = vec![(
            "plain",
            format!("{{\"message\":\"token {value} written\"}}"),
        )];
        for shift in 0..3 {
            let wrapped = format!("{}{{\"token\":\"{value}\"}}", "x".repeat(shift));
            forms.push(("base64", format!("data: {}\n", STANDARD.encode(&wrapped))));
            forms.push((
                "base64",
                format!("jwt.{}.sig\n", URL_SAFE_NO_PAD.encode(&wrapped)),
            ));
        }
        for (how, content) in forms {
            std::fs::write(&planted, &content).unwrap();
            let (code, said) = scan();
            assert_eq!(code, Some(1), "a planted {kind} ({how}) fails: {said}");
            assert!(
                said.contains("nested/events.json"),
                "names the file: {said}"
            );
            assert!(said.contains(&format!("({how})")), "says how: {said}");
            assert!(!said.contains(value.as_str()), "never prints the {kind}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

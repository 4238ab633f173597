//! The soak: one `fedcred controller` keeping many FederatedCredentials fresh on the real API
//! server, with moto and the Google doubles issuing 60-second tokens, while faults are injected
//! at random (seeded) for the whole run. Time-compressed: a 60-second token is refreshed about
//! every 30 s, so a few minutes here are a day of hour-long tokens.
//!
//! Figures: tokens served expired (every Secret read once a second and checked against its
//! `expiry` and the doubles, must be 0), Secrets lost (must be 0), the worst staleness (longest
//! time a Secret held a token past its refresh point, and the closest approach to expiry), the
//! exchange rate (per resource per minute) and the controller's resident memory.
//!
//! With the node (`hack/controlplane.sh up DIR --node`, as `hack/test.sh` runs it), tokens are
//! also read where a pod reads them: the controller serves its webhook, and reader pods (the
//! first `FEDCRED_SOAK_PODS`, default 2, resources) ask their injected metadata sidecar ten
//! times a second through the kubelet's Secret volume; every token they were served is judged
//! against the expiry the doubles gave it (expired served must be 0), and tokens the doubles
//! never issued and refused requests are counted.
//!
//! Environment: `FEDCRED_SOAK_SECONDS` (default 120), `FEDCRED_SOAK_RESOURCES` (default 200),
//! `FEDCRED_SOAK_IDENTITIES` (ServiceAccounts they share, default 20), `FEDCRED_SOAK_SEED`
//! (default 7); the figures are printed as a markdown table and appended to the file named by
//! `FEDCRED_SOAK_REPORT` when set. `hack/soak.sh [MINUTES]` runs the long version.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fedcred_doubles::{Config, Fault, Target};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::cloud::{Cloud, ROLE};
use support::controller::{ControllerProcess, Launch};
use support::gate::Gate;
use support::readers;
use support::tokens::{Judge, Verdict, report_row};

/// Token lifetime the doubles issue.
const LIFETIME: i64 = 60;
/// `renewBeforePercentage` of every resource: refresh with 30 s left.
const RENEW_PERCENT: i64 = 50;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The one controller of the soak, with its log in the evidence directory; with `webhook`
/// (`--webhook-*` arguments) it also serves the admission webhook the reader pods go through.
fn start_controller(namespace: &str, cloud: &Cloud, webhook: &[String]) -> ControllerProcess {
    let webhook: Vec<&str> = webhook.iter().map(String::as_str).collect();
    Launch::new(cloud)
        .watching(namespace, "soak")
        .args(&webhook)
        .rust_log("info")
        .log_stem(format!("soak-{namespace}"))
        .panic_tail(40)
        .start()
}

// ---------------------------------------------------------------------------------------------
// Watching every Secret

#[derive(Debug, Default)]
struct Watch {
    rounds: u64,
    reads: u64,
    unreachable: u64,
    /// A Secret whose token's `expiry` had passed or that the doubles no longer accepted.
    expired: u64,
    /// Values the doubles never issued (the soak's own hand edits, until repaired).
    foreign: u64,
    /// Resources whose Secret was missing in a round (the soak's own deletions, until repaired).
    missing: u64,
    closest_to_expiry: Option<i64>,
    /// Longest time past a token's refresh point (expiry − 30 s) it was still served.
    worst_staleness: i64,
    peak_rss_kib: u64,
}

/// One round: every Secret of the namespace, checked.
async fn sample(
    secrets: &Api<Secret>,
    names: &[String],
    cloud: &Cloud,
    judge: &mut Judge,
    w: &mut Watch,
) {
    w.rounds += 1;
    let list = tokio::time::timeout(
        Duration::from_secs(5),
        secrets.list(&ListParams::default().labels("app.kubernetes.io/managed-by=fedcred")),
    )
    .await;
    let Ok(Ok(list)) = list else {
        w.unreachable += 1;
        return;
    };
    let now = Timestamp::now();
    let by_name: BTreeMap<String, &Secret> = list
        .items
        .iter()
        .filter_map(|s| Some((s.metadata.name.clone()?, s)))
        .collect();
    for name in names {
        let Some(secret) = by_name.get(name) else {
            w.missing += 1;
            continue;
        };
        w.reads += 1;
        let verdict = judge.judge(secret, cloud);
        if let Some(left) = verdict.left() {
            w.closest_to_expiry = Some(w.closest_to_expiry.map_or(left, |c| c.min(left)));
        }
        match verdict {
            Verdict::Fresh { expiry, .. } => {
                let stale = now.as_second() - (expiry.as_second() - LIFETIME * RENEW_PERCENT / 100);
                w.worst_staleness = w.worst_staleness.max(stale);
            }
            Verdict::Expired { .. } => w.expired += 1,
            Verdict::Foreign { .. } => w.foreign += 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Faults at random

/// What the soak did to its peers, counted.
#[derive(Debug, Default)]
struct Injected(BTreeMap<&'static str, u32>);

impl Injected {
    fn note(&mut self, what: &'static str) {
        *self.0.entry(what).or_default() += 1;
    }

    fn summary(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k} × {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_random_faults() {
    let seconds = env_number("FEDCRED_SOAK_SECONDS", 120);
    let resources = env_number("FEDCRED_SOAK_RESOURCES", 200) as usize;
    let identities = env_number("FEDCRED_SOAK_IDENTITIES", 20).max(1) as usize;
    let seed = env_number("FEDCRED_SOAK_SEED", 7);
    let mut rng = StdRng::seed_from_u64(seed);

    support::ensure_crd();
    let ns = support::TestNamespace::new("soak");
    let gate: Arc<Mutex<Option<Gate>>> = Arc::default();
    let slot = gate.clone();
    let cloud = Arc::new(
        Cloud::start(move |c| {
            let mut c = Config {
                federated_lifetime: Duration::from_secs(LIFETIME as u64),
                ..c
            };
            *slot.lock().unwrap() = Some(Gate::before_moto(&mut c));
            c
        })
        .await,
    );
    let gate = gate.lock().unwrap().take().unwrap();

    // ServiceAccounts and resources in one apply.
    let mut items = Vec::new();
    for i in 0..identities {
        items.push(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": format!("app-{i}"), "annotations": {"eks.amazonaws.com/role-arn": ROLE}}}));
    }
    let names: Vec<String> = (0..resources).map(|i| format!("soak-{i:03}")).collect();
    for (i, name) in names.iter().enumerate() {
        let base = cloud.spec(
            json!({"serviceAccount": {"name": format!("app-{}", i % identities)}}),
            json!({"serviceAccount": null}),
        );
        let mut spec = serde_json::to_value(base).unwrap();
        spec["aws"]["stsEndpoint"] = json!(gate.url());
        spec["secret"] = json!({"renewBeforePercentage": RENEW_PERCENT});
        items.push(
            json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
            "metadata": {"name": name}, "spec": spec}),
        );
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    ns.kubectl(&["apply", "-f", "-"], Some(&list.to_string()))
        .success();

    let client = support::kube_client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    // With the node, the controller also serves the webhook, and reader pods go through it.
    let reader_pods = if readers::on_node() {
        env_number("FEDCRED_SOAK_PODS", 2) as usize
    } else {
        0
    };
    let (_registration, webhook) = if reader_pods > 0 {
        let (registration, args) =
            support::webhook::Registration::for_controller(&ns, &support::node_image("fedcred"));
        (Some(registration), args)
    } else {
        (None, Vec::new())
    };
    let mut controller = start_controller(&ns.name, &cloud, &webhook);
    let setup = Instant::now();
    loop {
        let have = secrets
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=fedcred"))
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        if have == resources {
            break;
        }
        assert!(
            setup.elapsed() < Duration::from_secs(180),
            "only {have} of {resources} Secrets after {:?}",
            setup.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_ready_after = setup.elapsed();

    // Reader pods, one per resource of the first few, injected by the webhook.
    let mut expiries = readers::Expiries::default();
    expiries.remember(&cloud);
    let mut pods = Vec::new();
    for (i, name) in names.iter().take(reader_pods).enumerate() {
        let pod = format!("reader-{i}");
        readers::create(&ns.name, &pod, name, &format!("app-{}", i % identities));
        pods.push(pod);
    }
    for pod in &pods {
        readers::wait_ready(&ns.name, pod);
    }

    let exchanges_before = cloud.google.exchanges(Target::Sts);
    let calls_before = cloud.google.calls(Target::Sts);
    let mut watch = Watch::default();
    let mut judge = Judge::default();
    let mut injected = Injected::default();
    let run = Duration::from_secs(seconds);
    let start = Instant::now();
    let mut next_fault = start + Duration::from_secs(rng.random_range(5..15));
    // Outages stay shorter than the 30 s between a refresh and the token's expiry, as an
    // hour-long token's half hour would outlast most real ones: AWS down 5–12 s, never again
    // within 45 s; hanging STS requests 2–8 s.
    let mut aws_back_at: Option<Instant> = None;
    let mut aws_quiet_until = start;
    let mut restarts_left = seconds / 600;
    // One SIGKILL and restart of the controller at half time in every run, more at random in
    // long runs.
    let mut kill_at = Some(start + run / 2);
    let mut next_round = Instant::now();
    // The STS double looks up every new AWS key in moto's full state dump, which grows with
    // every AssumeRoleWithWebIdentity; resetting moto now and then keeps that lookup fast in
    // long runs. Keys the double already fetched stay known to it.
    let moto_reset_every = Duration::from_secs(env_number("FEDCRED_SOAK_MOTO_RESET_SECONDS", 60));
    let mut next_moto_reset = start + moto_reset_every;
    let http = reqwest::Client::new();
    // Faults stop 40 s before the end so the last refreshes can show recovery.
    let faults_until = start + run.saturating_sub(Duration::from_secs(40));
    while start.elapsed() < run {
        if Instant::now() >= next_round {
            sample(&secrets, &names, &cloud, &mut judge, &mut watch).await;
            expiries.remember(&cloud);
            if let Some(rss) = controller.rss_kib() {
                watch.peak_rss_kib = watch.peak_rss_kib.max(rss);
            }
            next_round += Duration::from_secs(1);
            if watch.rounds.is_multiple_of(60) {
                eprintln!(
                    "soak: {:.0} s, {} STS exchanges, {} expired served, closest to expiry {} s, worst staleness {} s, RSS {} KiB, faults {}",
                    start.elapsed().as_secs_f64(),
                    cloud.google.exchanges(Target::Sts) - exchanges_before,
                    watch.expired,
                    watch.closest_to_expiry.unwrap_or_default(),
                    watch.worst_staleness,
                    watch.peak_rss_kib,
                    injected.summary()
                );
            }
        }
        if Instant::now() >= next_moto_reset {
            next_moto_reset += moto_reset_every;
            let reset = http
                .post(format!("{}/moto-api/reset", cloud.moto.url()))
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            if reset.is_ok_and(|r| r.status().is_success()) {
                injected.note("moto state reset");
            }
        }
        if kill_at.is_some_and(|at| Instant::now() >= at) {
            kill_at = None;
            controller.kill();
            controller = start_controller(&ns.name, &cloud, &webhook);
            injected.note("controller SIGKILL + restart");
        }
        if aws_back_at.is_some_and(|at| Instant::now() >= at) {
            gate.set_down(false);
            aws_back_at = None;
        }
        if Instant::now() >= next_fault && Instant::now() < faults_until {
            match rng.random_range(0..8) {
                0 => {
                    let count = rng.random_range(1..=8);
                    let fault = Fault::Status {
                        code: 503,
                        retry_after: None,
                        count,
                    };
                    cloud.google.inject(Target::Sts, fault);
                    injected.note("STS 503 burst");
                }
                1 => {
                    let fault = Fault::Status {
                        code: 429,
                        retry_after: Some(rng.random_range(1..=3)),
                        count: rng.random_range(1..=4),
                    };
                    cloud.google.inject(Target::Sts, fault);
                    injected.note("STS 429 + Retry-After");
                }
                2 => {
                    let fault = Fault::Delay {
                        millis: rng.random_range(2_000..=8_000),
                        count: rng.random_range(1..=2),
                    };
                    cloud.google.inject(Target::Sts, fault);
                    injected.note("STS hang");
                }
                3 => {
                    if aws_back_at.is_none() && Instant::now() >= aws_quiet_until {
                        gate.set_down(true);
                        let down = Duration::from_secs(rng.random_range(5..=12));
                        aws_back_at = Some(Instant::now() + down);
                        aws_quiet_until = Instant::now() + down + Duration::from_secs(45);
                        injected.note("AWS STS down");
                    }
                }
                4 => {
                    let name = &names[rng.random_range(0..names.len())];
                    let _ = secrets.delete(name, &DeleteParams::default()).await;
                    injected.note("Secret deleted");
                }
                5 => {
                    let name = &names[rng.random_range(0..names.len())];
                    let tamper = json!({"stringData": {"access_token": "edited-by-hand"}});
                    let _ = secrets
                        .patch(name, &PatchParams::default(), &Patch::Merge(&tamper))
                        .await;
                    injected.note("Secret edited");
                }
                6 if restarts_left > 0 => {
                    restarts_left -= 1;
                    controller.kill();
                    controller = start_controller(&ns.name, &cloud, &webhook);
                    injected.note("controller SIGKILL + restart");
                }
                _ => {
                    cloud.google.inject(
                        Target::Sts,
                        Fault::Status {
                            code: 500,
                            retry_after: None,
                            count: rng.random_range(1..=4),
                        },
                    );
                    injected.note("STS 500");
                }
            }
            next_fault = Instant::now() + Duration::from_secs(rng.random_range(5..15));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gate.set_down(false);
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    let exchanges = cloud.google.exchanges(Target::Sts) - exchanges_before;
    let calls = cloud.google.calls(Target::Sts) - calls_before;

    // Every Secret present, every resource Ready, after the faults stopped.
    let settle = Instant::now();
    let lost = loop {
        let have: HashSet<String> = secrets
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=fedcred"))
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter_map(|s| s.metadata.name)
                    .collect()
            })
            .unwrap_or_default();
        let lost = names.iter().filter(|n| !have.contains(*n)).count();
        if lost == 0 || settle.elapsed() > Duration::from_secs(30) {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let statuses = ns
        .kubectl(&["get", "fedcred", "-o", "json"], None)
        .success();
    let statuses: Value = serde_json::from_str(&statuses).unwrap();
    let not_ready: Vec<String> = statuses["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|fc| {
            !fc["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|fc| fc["metadata"]["name"].as_str().unwrap_or("").to_owned())
        .collect();

    expiries.remember(&cloud);
    let in_pods = readers::judge(&ns.name, &pods, &expiries);

    let per_resource = exchanges as f64 / resources as f64 / minutes;
    let per_identity = exchanges as f64 / identities as f64 / minutes;
    let row = format!(
        "| {:.1} min | {resources} ({identities} identities) | {} | {lost} | {} s past the refresh point; {} s to expiry at closest | {per_resource:.3} per resource ({per_identity:.2} per identity) per minute; {calls} STS calls | {:.1} MiB | {} |",
        minutes,
        watch.expired,
        watch.worst_staleness.max(0),
        watch.closest_to_expiry.unwrap_or_default(),
        watch.peak_rss_kib as f64 / 1024.0,
        injected.summary(),
    );
    println!(
        "| duration | resources | tokens served expired | Secrets lost | worst staleness | exchange rate | controller peak RSS | faults injected (seed {seed}) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    report_row("FEDCRED_SOAK_REPORT", &row);
    println!(
        "all {resources} Secrets written {:.1} s after the controller started; {} rounds of reads, {} reads, {} rounds unanswered, {} hand-deleted and {} hand-edited observations",
        all_ready_after.as_secs_f64(),
        watch.rounds,
        watch.reads,
        watch.unreachable,
        watch.missing,
        watch.foreign
    );
    if reader_pods > 0 {
        println!(
            "read where pods read them: {} pods through their metadata sidecars, {} tokens, {} observations (a token in a one-second window), {} expired, {} not issued by the doubles (hand edits delivered before repair), {} refused or failed requests, closest to expiry {:.1} s",
            in_pods.pods,
            in_pods.tokens,
            in_pods.observations,
            in_pods.expired,
            in_pods.foreign,
            in_pods.errors,
            in_pods.closest_to_expiry.unwrap_or_default()
        );
    } else {
        println!("read where pods read them: no node here (FEDCRED_TEST_NODE_IMAGE_CLIENT unset)");
    }
    if let Some(dir) = std::env::var_os("FEDCRED_EVIDENCE_DIR") {
        let _ = std::fs::write(
            PathBuf::from(dir).join(format!("soak-{}-federatedcredentials.json", ns.name)),
            statuses.to_string(),
        );
    }

    assert!(watch.rounds as f64 >= seconds as f64 * 0.5, "{watch:?}");
    assert_eq!(watch.expired, 0, "expired tokens were served: {watch:?}");
    assert_eq!(
        in_pods.expired, 0,
        "pods were served expired tokens by their metadata sidecars: {in_pods:?}"
    );
    if reader_pods > 0 {
        // Every pod kept reading for the whole run: about one observation a second each.
        assert!(
            in_pods.observations as f64 >= seconds as f64 * 0.5 * reader_pods as f64,
            "{in_pods:?}"
        );
    }
    assert_eq!(lost, 0, "Secrets lost");
    assert!(not_ready.is_empty(), "not Ready at the end: {not_ready:?}");
    // A 60-second token refreshed with 30 s left is exchanged about twice a minute per
    // identity: the resources of one identity share a cached token that has their refresh
    // window and a quarter of the rest left. Restarts (an empty cache) and retries under
    // faults add some; exchanging per resource, or a tight loop, would add far more.
    let per_identity_bound = 6.0;
    assert!(
        per_identity <= per_identity_bound,
        "{per_identity:.2} exchanges per identity per minute (over {per_identity_bound})"
    );
    assert!(
        watch.closest_to_expiry.unwrap_or(0) > 0,
        "a token came within a second of expiry: {watch:?}"
    );
}

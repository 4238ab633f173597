//! Controller scale benchmark on the real API server: N FederatedCredentials over M identities.
//!
//! For each size, in each round, on namespaces of the round's own:
//! - floor: a bare client loop writes, for N resources of one namespace, exactly the Secret
//!   and the status the controller would write (server-side apply, same concurrency), with no
//!   exchange, cache or decision in between;
//! - controller: the release `fedcred controller` starts on another namespace holding N
//!   resources and the clock stops when the last one is Ready;
//! - restart: that controller gets SIGTERM and starts again on the same namespace, whose
//!   Secrets hold good tokens; the clock stops when it has looked at every resource, and the
//!   exchanges Google STS saw meanwhile are counted (the goal is none).
//!
//! The floor runs first in even rounds and last in odd ones, so a machine whose load changes
//! during a run favours neither. Reported per phase: time, the ratio to the round's floor, the
//! controller's peak RSS (VmHWM) and CPU, the exchanges Google STS saw, and the CPU seconds and
//! peak RSS of the API server and etcd (`FEDCRED_SCALE_CONTROLPLANE`, the control plane's
//! directory), moto and this process, with the API server's request counts; then the median
//! and range of the ratio per size. With `FEDCRED_SCALE_BASELINE` (the path of another fedcred
//! binary), that binary runs in every round too. Run through `bench/scale.sh`, which starts the
//! control plane.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fedcred_core::api::FederatedCredential;
use fedcred_core::exchange::{ControllerIdentityPolicy, Defaults, Issued, plan};
use fedcred_core::refresh::objects;
use fedcred_core::sensitive::Sensitive as Token;
use fedcred_doubles::moto::Moto;
use fedcred_doubles::{Binding, Config, GoogleDoubles, Provider, Target, role_member};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

#[path = "common.rs"]
mod common;

use common::{
    ASSUMED_ROLE, AUDIENCE, SA_EMAIL, clock_ticks, cpu_seconds, create_namespace, fc_json,
    proc_stat, proc_status_kib,
};

fn log(msg: impl AsRef<str>) {
    eprintln!("[scale] {}", msg.as_ref());
}

fn fc(name: &str, identity: usize, moto: &str) -> FederatedCredential {
    serde_json::from_value(fc_json(name, identity, moto)).unwrap()
}

async fn populate(client: &Client, ns: &str, n: usize, identities: usize, moto: &str) {
    common::populate(
        client,
        ns,
        n,
        identities,
        populate_concurrency(),
        |name, identity| fc(name, identity, moto),
    )
    .await;
}

/// Creates in flight per namespace while populating (`FEDCRED_SCALE_POPULATE_CONCURRENCY`,
/// default 32); every namespace of a round is populated at once.
fn populate_concurrency() -> usize {
    std::env::var("FEDCRED_SCALE_POPULATE_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

/// Time from `start` until every one of the `n` resources in `ns` is Ready, as a watch sees it.
/// Used for the floor and the controller alike, so both are measured the same way.
async fn all_ready(
    client: Client,
    ns: String,
    n: usize,
    start: Instant,
) -> Result<Duration, String> {
    let fcs: Api<FederatedCredential> = Api::namespaced(client, &ns);
    let mut ready = HashSet::new();
    let mut stream = watcher(fcs, watcher::Config::default())
        .applied_objects()
        .boxed();
    let deadline = ready_deadline(n);
    while ready.len() < n {
        let next =
            tokio::time::timeout(deadline.saturating_sub(start.elapsed()), stream.next()).await;
        let Ok(Some(Ok(fc))) = next else {
            return Err(format!(
                "only {} of {n} Ready after {:?}",
                ready.len(),
                start.elapsed()
            ));
        };
        let is_ready = fc.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if is_ready {
            ready.insert(fc.name_any());
        }
        // A refusal will not go away by waiting: stop with its message.
        if let Some(failing) = fc.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "RefreshFailing" && c.status == "True")
        }) {
            return Err(format!(
                "{}/{} failed: {} ({})",
                ns,
                fc.name_any(),
                failing.reason,
                failing.message
            ));
        }
    }
    Ok(start.elapsed())
}

/// The floor: the controller's writes, without the controller.
async fn floor(client: &Client, ns: &str, n: usize, concurrency: usize) -> Duration {
    let fcs: Api<FederatedCredential> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let items = fcs.list(&ListParams::default()).await.expect("list").items;
    let defaults = Defaults {
        region: Some("us-east-1".into()),
        controller_identity: ControllerIdentityPolicy::default(),
        endpoints: fedcred_core::exchange::EndpointPolicy::new(["http://127.0.0.1:*"]).unwrap(),
        ..Defaults::default()
    };
    let start = Instant::now();
    let waiter = tokio::spawn(all_ready(client.clone(), ns.to_owned(), n, start));
    futures::stream::iter(items)
        .map(|fc| {
            let (fcs, secrets, defaults) = (fcs.clone(), secrets.clone(), defaults.clone());
            async move {
                let now = fedcred_core::google::truncate(jiff::Timestamp::now());
                let key = plan(ns, &fc.spec, &defaults).expect("plan");
                let issued = Issued {
                    access_token: Token::new(format!("ya29.floor-{:032x}", rand::random::<u128>())),
                    expires_at: now + Duration::from_secs(3600),
                    issued_at: now,
                    principal_arn: Some(format!("{ASSUMED_ROLE}/fedcred.{ns}.app")),
                    subject: None,
                    service_account: Some(SA_EMAIL.into()),
                    db_user: Some("orders-api@acme-shop.iam".into()),
                    project_id: Some("acme-shop".into()),
                    scopes: key.scopes.clone(),
                };
                let secret = objects::desired_secret(&fc, &issued);
                let pp = PatchParams::apply("fedcred").force();
                secrets.patch(&fc.name_any(), &pp, &Patch::Apply(&secret)).await?;
                let status = objects::success_status(&fc, &key, &issued, now + Duration::from_secs(1800), now);
                let body = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential", "status": status});
                fcs.patch_status(&fc.name_any(), &pp, &Patch::Apply(&body)).await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await
        .expect("floor writes");
    waiter
        .await
        .expect("watch task")
        .expect("floor resources Ready")
}

/// The exchange floor: one exchange per identity, `concurrency` at a time, through the same engine the
/// controller uses, against the same moto and doubles. The controller cannot be Ready sooner.
async fn exchange_floor(
    client: &Client,
    ns: &str,
    identities: usize,
    moto: &str,
    google: &GoogleDoubles,
    concurrency: usize,
) -> Duration {
    use fedcred::exchange::Engine;
    use fedcred::exchange::aws::Aws;
    use fedcred::exchange::google::GoogleClient;
    use fedcred_core::google::RetryPolicy;
    let engine = Engine::new(
        Aws::from_env().await,
        GoogleClient::new(RetryPolicy::default()).unwrap(),
        Some(client.clone()),
    );
    let defaults = Defaults {
        region: Some("us-east-1".into()),
        sts_url: google.sts_url(),
        iam_credentials_url: google.iam_credentials_url(),
        endpoints: fedcred_core::exchange::EndpointPolicy::new(["http://127.0.0.1:*"]).unwrap(),
        ..Defaults::default()
    };
    let keys: Vec<_> = (0..identities)
        .map(|i| plan(ns, &fc(&format!("x-{i}"), i, moto).spec, &defaults).expect("plan"))
        .collect();
    // As many in flight as the controller may have: moto answers 500 at once too slowly.
    let start = Instant::now();
    let failed = futures::stream::iter(keys.iter().map(|k| engine.exchange(k)))
        .buffer_unordered(concurrency)
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    if failed > 0 {
        log(format!("exchanges alone: {failed} of {identities} failed"));
    }
    start.elapsed()
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM:")
}

/// moto's server: the Python child of this process.
fn moto_pid() -> Option<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let fields = proc_stat(pid)?;
        (fields.get(1)? == &me && comm.starts_with("python")).then_some(pid)
    })
}

/// The processes that share the machine with the measured client, watched over each phase.
#[derive(Clone)]
struct Servers {
    ticks: f64,
    /// (label, pid): the API server, etcd, moto, and this process (the floor's client, the
    /// watch and the Google doubles).
    pids: Vec<(&'static str, u32)>,
}

impl Servers {
    fn find() -> Servers {
        let mut pids = Vec::new();
        if let Ok(dir) = std::env::var("FEDCRED_SCALE_CONTROLPLANE") {
            for (label, file) in [("apiserver", "kube-apiserver.pid"), ("etcd", "etcd.pid")] {
                if let Some(pid) = std::fs::read_to_string(format!("{dir}/{file}"))
                    .ok()
                    .and_then(|p| p.trim().parse().ok())
                {
                    pids.push((label, pid));
                }
            }
        }
        if let Some(pid) = moto_pid() {
            pids.push(("moto", pid));
        }
        pids.push(("bench", std::process::id()));
        Servers {
            ticks: clock_ticks(),
            pids,
        }
    }

    fn pid(&self, label: &str) -> Option<u32> {
        self.pids.iter().find(|(l, _)| *l == label).map(|(_, p)| *p)
    }

    /// Starts watching: CPU seconds from here, and the peak of each one's resident memory
    /// (sampled every 250 ms).
    fn meter(&self) -> Meter {
        let cpu0 = self
            .pids
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid, self.ticks).unwrap_or(0.0))
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pids: Vec<u32> = self.pids.iter().map(|(_, p)| *p).collect();
        let sampler = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut peak = vec![0u64; pids.len()];
                loop {
                    for (i, pid) in pids.iter().enumerate() {
                        peak[i] = peak[i].max(proc_status_kib(*pid, "VmRSS:").unwrap_or(0));
                    }
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return peak;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        });
        Meter {
            servers: self.clone(),
            cpu0,
            stop,
            sampler,
        }
    }
}

struct Meter {
    servers: Servers,
    cpu0: Vec<f64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sampler: tokio::task::JoinHandle<Vec<u64>>,
}

/// CPU seconds and peak RSS (MiB) of each watched process over one phase.
struct Usage(Vec<(&'static str, f64, f64)>);

impl Meter {
    async fn finish(self) -> Usage {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = self.sampler.await.unwrap_or_default();
        Usage(
            self.servers
                .pids
                .iter()
                .enumerate()
                .map(|(i, (label, pid))| {
                    let cpu = cpu_seconds(*pid, self.servers.ticks).unwrap_or(0.0) - self.cpu0[i];
                    let rss = peak.get(i).copied().unwrap_or(0) as f64 / 1024.0;
                    (*label, cpu, rss)
                })
                .collect(),
        )
    }
}

impl Usage {
    fn cpu(&self, label: &str) -> f64 {
        self.0
            .iter()
            .find(|(l, _, _)| *l == label)
            .map_or(0.0, |(_, c, _)| *c)
    }

    fn rss(&self, label: &str) -> f64 {
        self.0
            .iter()
            .find(|(l, _, _)| *l == label)
            .map_or(0.0, |(_, _, r)| *r)
    }
}

/// The API server's request counts for FederatedCredentials and Secrets, by resource and verb,
/// from its own metrics.
async fn api_requests(client: &Client) -> std::collections::BTreeMap<String, f64> {
    let mut counts = std::collections::BTreeMap::new();
    let Ok(request) = http::Request::get("/metrics").body(Vec::new()) else {
        return counts;
    };
    let Ok(text) = client.request_text(request).await else {
        return counts;
    };
    let label = |line: &str, name: &str| -> String {
        let key = format!("{name}=\"");
        line.find(&key)
            .map(|i| {
                let rest = &line[i + key.len()..];
                rest[..rest.find('"').unwrap_or(0)].to_owned()
            })
            .unwrap_or_default()
    };
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let resource = label(rest, "resource");
        if resource != "federatedcredentials" && resource != "secrets" {
            continue;
        }
        let resource = if resource == "secrets" {
            "secret"
        } else {
            "fc"
        };
        let sub = label(rest, "subresource");
        let key = format!(
            "{resource}{}{} {}",
            if sub.is_empty() { "" } else { "/" },
            sub,
            label(rest, "verb")
        );
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *counts.entry(key).or_insert(0.0) += value;
    }
    counts
}

fn requests_since(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> String {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d >= 1.0).then(|| format!("{k} {d:.0}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn spawn_controller(
    bin: &str,
    ns: &str,
    google: &GoogleDoubles,
    concurrency: usize,
    metrics_port: u16,
    log_path: &std::path::Path,
) -> std::process::Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    std::process::Command::new(bin)
        .args([
            "controller",
            "--namespace",
            ns,
            "--leader-election=false",
            "--metrics-address",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .args(["--concurrency", &concurrency.to_string()])
        // moto is the resources' aws.stsEndpoint: the admin allows it, as for tests.
        .args(["--allow-endpoint", "http://127.0.0.1:*"])
        // All N resources are in one namespace, the case the namespace share limits most;
        // FEDCRED_SCALE_NAMESPACE_SHARE measures another share (--namespace-share).
        .args(
            std::env::var("FEDCRED_SCALE_NAMESPACE_SHARE")
                .ok()
                .map(|share| vec!["--namespace-share".to_owned(), share])
                .unwrap_or_default(),
        )
        .args([
            "--google-sts-url",
            &google.sts_url(),
            "--google-iam-credentials-url",
            &google.iam_credentials_url(),
        ])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("the controller starts")
}

/// SIGTERM, as a rollout or a node drain would send, then up to 30 s for a clean exit.
async fn terminate(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..300 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    log("the controller did not stop within 30 s of SIGTERM: killed");
    let _ = child.kill();
    let _ = child.wait();
}

/// What one controller run measured.
struct ControllerRun {
    time: Duration,
    rss_kib: u64,
    cpu: f64,
    sts: u64,
    iam: u64,
    usage: Usage,
    requests: String,
    restart: Option<Restart>,
}

/// What the restart on the same namespace measured.
struct Restart {
    /// Until the restarted controller has looked at every resource (its expiry gauge is set
    /// for all N), or `None` if it had not within the deadline.
    resync: Option<Duration>,
    seen: usize,
    sts: u64,
    rss_kib: u64,
    cpu: f64,
    usage: Usage,
    requests: String,
}

/// How many resources the controller's expiry gauge covers: each one it has looked at since
/// it started (the gauge is set whether the token is refreshed or is still good).
async fn resources_seen(http: &reqwest::Client, port: u16) -> Option<usize> {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("fedcred_token_seconds_to_expiry{"))
            .count(),
    )
}

#[allow(clippy::too_many_arguments)]
async fn controller_run(
    client: &Client,
    servers: &Servers,
    ns: &str,
    n: usize,
    google: &GoogleDoubles,
    bin: &str,
    concurrency: usize,
    restart: bool,
) -> ControllerRun {
    let log_path = std::env::temp_dir().join(format!("fedcred-scale-{ns}.log"));
    let _ = std::fs::remove_file(&log_path);
    let (sts0, iam0) = (google.exchanges(Target::Sts), google.calls(Target::Iam));
    let requests0 = api_requests(client).await;
    let meter = servers.meter();
    let start = Instant::now();
    let waiter = tokio::spawn(all_ready(client.clone(), ns.to_owned(), n, start));
    let mut child = spawn_controller(bin, ns, google, concurrency, free_port(), &log_path);
    let result = waiter.await.expect("watch task");
    let rss_kib = peak_rss_kib(child.id()).unwrap_or(0);
    let cpu = cpu_seconds(child.id(), servers.ticks).unwrap_or(0.0);
    let usage = meter.finish().await;
    let requests = requests_since(&requests0, &api_requests(client).await);
    let (sts, iam) = (
        google.exchanges(Target::Sts) - sts0,
        google.calls(Target::Iam) - iam0,
    );
    let time = match result {
        Ok(elapsed) => elapsed,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{e}; controller log: {}", log_path.display())
        }
    };
    terminate(&mut child).await;
    let restart = if restart {
        Some(restart_run(client, servers, ns, n, google, bin, concurrency, &log_path).await)
    } else {
        None
    };
    ControllerRun {
        time,
        rss_kib,
        cpu,
        sts,
        iam,
        usage,
        requests,
        restart,
    }
}

/// The controller starts again on a namespace whose Secrets all hold good tokens: the clock
/// stops when it has looked at every resource, and then `FEDCRED_SCALE_RESTART_SETTLE`
/// seconds (default 10) more pass before the exchanges are counted, so late ones show.
#[allow(clippy::too_many_arguments)]
async fn restart_run(
    client: &Client,
    servers: &Servers,
    ns: &str,
    n: usize,
    google: &GoogleDoubles,
    bin: &str,
    concurrency: usize,
    log_path: &std::path::Path,
) -> Restart {
    let settle = Duration::from_secs(
        std::env::var("FEDCRED_SCALE_RESTART_SETTLE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    );
    let http = reqwest::Client::new();
    let port = free_port();
    let sts0 = google.exchanges(Target::Sts);
    let requests0 = api_requests(client).await;
    let meter = servers.meter();
    let start = Instant::now();
    let mut child = spawn_controller(bin, ns, google, concurrency, port, log_path);
    // Polling the metrics costs the controller a render of N series: every 2 s at most.
    let poll = Duration::from_millis(if n > 10_000 { 2000 } else { 500 });
    let deadline = ready_deadline(n);
    let mut seen = 0;
    let resync = loop {
        if let Some(s) = resources_seen(&http, port).await {
            seen = s;
        }
        if seen >= n {
            break Some(start.elapsed());
        }
        if start.elapsed() > deadline {
            break None;
        }
        tokio::time::sleep(poll).await;
    };
    tokio::time::sleep(settle).await;
    let rss_kib = peak_rss_kib(child.id()).unwrap_or(0);
    let cpu = cpu_seconds(child.id(), servers.ticks).unwrap_or(0.0);
    let usage = meter.finish().await;
    let requests = requests_since(&requests0, &api_requests(client).await);
    let sts = google.exchanges(Target::Sts) - sts0;
    terminate(&mut child).await;
    Restart {
        resync,
        seen,
        sts,
        rss_kib,
        cpu,
        usage,
        requests,
    }
}

/// How long a size may take to be all Ready before the run gives up.
fn ready_deadline(n: usize) -> Duration {
    Duration::from_secs(900.max(n as u64 / 20))
}

/// Sizes to measure: `FEDCRED_SCALE_SIZES="1000:50 50000:500"` (resources:identities, space or
/// comma separated), else `FEDCRED_SCALE_COUNTS` over `FEDCRED_SCALE_IDENTITIES` (default 50).
fn sizes() -> Vec<(usize, usize)> {
    let identities: usize = std::env::var("FEDCRED_SCALE_IDENTITIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    if let Ok(sizes) = std::env::var("FEDCRED_SCALE_SIZES") {
        return sizes
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (n, ids) = s.split_once(':').unwrap_or((s, ""));
                let n = n
                    .trim()
                    .parse()
                    .expect("FEDCRED_SCALE_SIZES holds COUNT:IDENTITIES pairs");
                let ids = if ids.is_empty() {
                    identities
                } else {
                    ids.trim()
                        .parse()
                        .expect("FEDCRED_SCALE_SIZES holds COUNT:IDENTITIES pairs")
                };
                (n, ids)
            })
            .collect();
    }
    std::env::var("FEDCRED_SCALE_COUNTS")
        .unwrap_or_else(|_| "1000,5000".into())
        .split(',')
        .map(|c| {
            let n = c
                .trim()
                .parse()
                .expect("FEDCRED_SCALE_COUNTS is a comma-separated list of numbers");
            (n, identities)
        })
        .collect()
}

fn median_min_max(mut of: Vec<f64>) -> (f64, f64, f64) {
    of.sort_by(f64::total_cmp);
    let median = if of.len() % 2 == 1 {
        of[of.len() / 2]
    } else {
        (of[of.len() / 2 - 1] + of[of.len() / 2]) / 2.0
    };
    (median, of[0], of[of.len() - 1])
}

/// One measured phase of a round, in the order it ran.
enum Phase<'a> {
    Floor,
    Controller(&'a str, &'a str),
}

#[tokio::main]
async fn main() {
    // `cargo bench` runs every bench target with `--bench`; this one needs its environment.
    let Ok(bin) = std::env::var("FEDCRED_BIN") else {
        log("skipped: run bench/scale.sh (it starts the control plane and sets FEDCRED_BIN)");
        return;
    };
    let sizes = sizes();
    let concurrency: usize = std::env::var("FEDCRED_SCALE_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let restart = std::env::var("FEDCRED_SCALE_RESTART").as_deref() != Ok("0");
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG points at the control plane");
    let moto = Moto::start_async().await.expect("moto starts");
    let google = GoogleDoubles::start(
        Config::with_moto(&moto.url())
            .provider(Provider::new(AUDIENCE))
            .binding(Binding::new(
                SA_EMAIL,
                &[role_member(AUDIENCE, ASSUMED_ROLE)],
            )),
    )
    .await
    .expect("doubles start");
    let servers = Servers::find();
    log(format!(
        "watching {}",
        servers
            .pids
            .iter()
            .map(|(l, p)| format!("{l} (pid {p})"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if servers.pid("apiserver").is_none() {
        log("FEDCRED_SCALE_CONTROLPLANE not set: no API server or etcd figures");
    }

    let rounds: usize = std::env::var("FEDCRED_SCALE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    // The first round's number: 1 starts with the floor last (to add such a round to an
    // earlier run's floor-first one at a size where each round takes long).
    let first_round: usize = std::env::var("FEDCRED_SCALE_FIRST_ROUND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // A baseline binary (an earlier fedcred) runs beside the current one in every round, in
    // alternating order, against the same floor: ratios from one machine at one time.
    let baseline = std::env::var("FEDCRED_SCALE_BASELINE")
        .ok()
        .filter(|b| !b.is_empty());
    let mut binaries = vec![("current", bin.as_str())];
    if let Some(baseline) = &baseline {
        binaries.push(("baseline", baseline.as_str()));
    }

    // Rows are printed as each round ends, and again all together at the end.
    let header = "| round | phase | resources | identities | time (s) | controller / write floor | peak RSS (MiB) | STS exchanges | IAM calls | controller CPU (s) | API server CPU (s) | API server peak RSS (MiB) | etcd CPU (s) | etcd peak RSS (MiB) | moto CPU (s) | bench process CPU (s) | API requests (FederatedCredentials, Secrets) |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|";
    let mut rows: Vec<String> = Vec::new();
    let mut ratios: Vec<(usize, &str, f64)> = Vec::new();
    let mut restarts: Vec<(usize, &str, Option<f64>, u64)> = Vec::new();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let last = (sizes.len(), first_round + rounds);
    let moto_url = moto.url();
    for (size_index, &(n, identities)) in sizes.iter().enumerate() {
        for round in first_round..first_round + rounds {
            // Every round has namespaces of its own, and the previous round's are gone before
            // it starts, so it runs on a quiet server.
            let floor_ns = format!("scale-{n}-{round}-floor");
            let mut order: Vec<(Phase, String)> = vec![(Phase::Floor, floor_ns.clone())];
            order.extend(binaries.iter().map(|(label, path)| {
                (
                    Phase::Controller(label, path),
                    format!("scale-{n}-{round}-{label}"),
                )
            }));
            // Round 0 runs the floor first, round 1 last, and so on: a machine that gets
            // busier or quieter during a round favours neither side across rounds.
            if round % 2 == 1 {
                order.reverse();
            }
            log(format!(
                "{n} over {identities} identities, round {round}: creating {n} resources in each of {} namespaces",
                order.len()
            ));
            let populated = Instant::now();
            for (_, ns) in &order {
                create_namespace(&client, ns).await;
            }
            futures::future::join_all(
                order
                    .iter()
                    .map(|(_, ns)| populate(&client, ns, n, identities, &moto_url)),
            )
            .await;
            log(format!(
                "{n}, round {round}: created in {:.1} s",
                populated.elapsed().as_secs_f64()
            ));
            let exchanges_time = exchange_floor(
                &client,
                &floor_ns,
                identities,
                &moto.url(),
                &google,
                concurrency,
            )
            .await;
            log(format!(
                "{n}, round {round}: {identities} exchanges alone {:.2} s",
                exchanges_time.as_secs_f64()
            ));
            let mut floor_result: Option<(Duration, Usage, String)> = None;
            let mut runs: Vec<(&str, ControllerRun)> = Vec::new();
            for (phase, ns) in &order {
                match phase {
                    Phase::Floor => {
                        log(format!("{n}, round {round}: floor loop"));
                        let requests0 = api_requests(&client).await;
                        let meter = servers.meter();
                        let time = floor(&client, ns, n, concurrency).await;
                        let usage = meter.finish().await;
                        let requests = requests_since(&requests0, &api_requests(&client).await);
                        log(format!(
                            "{n}, round {round}: floor {:.2} s",
                            time.as_secs_f64()
                        ));
                        floor_result = Some((time, usage, requests));
                    }
                    Phase::Controller(label, path) => {
                        log(format!("{n}, round {round}: {label} controller"));
                        let run = controller_run(
                            &client,
                            &servers,
                            ns,
                            n,
                            &google,
                            path,
                            concurrency,
                            restart,
                        )
                        .await;
                        log(format!(
                            "{n}, round {round}: {label} controller {:.2} s",
                            run.time.as_secs_f64()
                        ));
                        if let Some(r) = &run.restart {
                            log(format!(
                                "{n}, round {round}: {label} restart: {} of {n} looked at in {}, {} exchanges",
                                r.seen,
                                r.resync.map_or("-".to_owned(), |d| format!(
                                    "{:.1} s",
                                    d.as_secs_f64()
                                )),
                                r.sts
                            ));
                        }
                        runs.push((label, run));
                    }
                }
            }
            let (floor_time, floor_usage, floor_requests) =
                floor_result.expect("every round runs the floor");
            let servers_cols = |u: &Usage| {
                format!(
                    "{:.1} | {:.0} | {:.1} | {:.0} | {:.1} | {:.1}",
                    u.cpu("apiserver"),
                    u.rss("apiserver"),
                    u.cpu("etcd"),
                    u.rss("etcd"),
                    u.cpu("moto"),
                    u.cpu("bench"),
                )
            };
            let mut round_rows = vec![format!(
                "| {round} | write floor{} | {n} | {identities} | {:.2} | | | | | | {} | {floor_requests} |",
                if round % 2 == 1 {
                    " (last)"
                } else {
                    " (first)"
                },
                floor_time.as_secs_f64(),
                servers_cols(&floor_usage),
            )];
            round_rows.push(format!(
                "| {round} | exchanges alone | {n} | {identities} | {:.2} | | | {identities} | | | | | | | | | |",
                exchanges_time.as_secs_f64()
            ));
            for (label, run) in &runs {
                let ratio = run.time.as_secs_f64() / floor_time.as_secs_f64();
                ratios.push((n, label, ratio));
                round_rows.push(format!(
                    "| {round} | {label} controller | {n} | {identities} | {:.2} | {ratio:.2} | {:.1} | {} | {} | {:.1} | {} | {} |",
                    run.time.as_secs_f64(),
                    run.rss_kib as f64 / 1024.0,
                    run.sts,
                    run.iam,
                    run.cpu,
                    servers_cols(&run.usage),
                    run.requests,
                ));
                if let Some(r) = &run.restart {
                    restarts.push((n, label, r.resync.map(|d| d.as_secs_f64()), r.sts));
                    round_rows.push(format!(
                        "| {round} | {label} restart ({} of {n} looked at) | {n} | {identities} | {} | | {:.1} | {} | | {:.1} | {} | {} |",
                        r.seen,
                        r.resync.map_or("not re-synced".to_owned(), |d| format!("{:.2}", d.as_secs_f64())),
                        r.rss_kib as f64 / 1024.0,
                        r.sts,
                        r.cpu,
                        servers_cols(&r.usage),
                        r.requests,
                    ));
                }
            }
            println!("{header}");
            for row in &round_rows {
                println!("{row}");
            }
            println!();
            rows.extend(round_rows);

            // The last round's namespaces go with the control plane.
            if (size_index + 1, round + 1) == last {
                continue;
            }
            let all: Vec<String> = order.into_iter().map(|(_, ns)| ns).collect();
            for ns in &all {
                let _ = namespaces.delete(ns, &DeleteParams::default()).await;
            }
            log(format!(
                "{n}, round {round}: waiting for the namespaces to be deleted"
            ));
            for ns in &all {
                let deadline = Instant::now() + Duration::from_secs(900);
                while namespaces
                    .get_opt(ns)
                    .await
                    .expect("namespace read")
                    .is_some()
                {
                    assert!(
                        Instant::now() < deadline,
                        "namespace {ns} still exists 15 minutes after its deletion"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    println!("All rounds:");
    println!();
    println!("{header}");
    for row in &rows {
        println!("{row}");
    }
    println!();
    println!(
        "| resources | binary | rounds | controller / write floor, median | min | max | restart re-sync (s), median | restart exchanges, total |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut ns_sizes: Vec<usize> = ratios.iter().map(|(n, _, _)| *n).collect();
    ns_sizes.dedup();
    for n in ns_sizes {
        for (label, _) in &binaries {
            let of: Vec<f64> = ratios
                .iter()
                .filter(|(m, l, _)| *m == n && l == label)
                .map(|(_, _, r)| *r)
                .collect();
            let count = of.len();
            let (median, min, max) = median_min_max(of);
            let resyncs: Vec<f64> = restarts
                .iter()
                .filter(|(m, l, _, _)| *m == n && l == label)
                .filter_map(|(_, _, t, _)| *t)
                .collect();
            let exchanges: u64 = restarts
                .iter()
                .filter(|(m, l, _, _)| *m == n && l == label)
                .map(|(_, _, _, s)| *s)
                .sum();
            let resync = if resyncs.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", median_min_max(resyncs).0)
            };
            println!(
                "| {n} | {label} | {count} | {median:.2} | {min:.2} | {max:.2} | {resync} | {exchanges} |"
            );
        }
    }
}

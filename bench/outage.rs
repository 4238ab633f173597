//! Outage economy on the real API server: N FederatedCredentials on a few identities through a
//! Google STS outage that begins when their tokens fall due for refresh.
//!
//! For each (resources, identities) pair, in a namespace of its own:
//! 1. the resources are created with tokens that live long enough for the outage to end before
//!    they expire, refreshed at 80 % of their lifetime left, and the release `fedcred
//!    controller` makes them Ready;
//! 2. just before the first resource falls due, Google STS answers every request with 503 for
//!    `FEDCRED_OUTAGE_SECONDS`; each minute the STS and IAM Credentials calls the doubles saw, the
//!    failed refreshes the resources counted and the controller's CPU time are taken, and every
//!    5 s every Secret's token is judged against the doubles' record of it (and the Secret's own
//!    `expiry`): an expired token served is counted;
//! 3. STS is mended, and the clock runs until every Secret holds a token issued after the outage
//!    and every resource is Ready without RefreshFailing.
//!
//! Run through `bench/outage.sh`, which starts the control plane.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use fedcred_core::api::FederatedCredential;
use fedcred_doubles::moto::Moto;
use fedcred_doubles::{
    Binding, Config, EXTENDED_LIFETIME, Fault, GoogleDoubles, Provider, Target, role_member,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

#[path = "common.rs"]
mod common;

use common::{
    ASSUMED_ROLE, AUDIENCE, SA_EMAIL, clock_ticks, cpu_seconds, create_namespace, fc_json,
    proc_status_kib,
};

/// Refresh when 80 % of the lifetime is left: due 12–20 % of the lifetime after issue (the
/// jitter is up to a tenth of the window), so the outage need not wait long for it.
const RENEW_BEFORE_PERCENTAGE: i32 = 80;
/// Time left on the tokens when the outage ends, at least.
const MARGIN: Duration = Duration::from_secs(180);
/// How often every Secret is judged during the outage and the recovery.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

fn log(msg: impl AsRef<str>) {
    eprintln!("[outage] {}", msg.as_ref());
}

fn list_knob(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name} is a comma-separated list of numbers"))
        })
        .collect()
}

/// The shortest whole-minute lifetime (at least the CRD's 600 s) for which an outage that
/// starts at the earliest refresh (12 % of the lifetime after issue) ends [`MARGIN`] before
/// expiry.
fn token_lifetime(outage: Duration) -> u64 {
    let earliest_due = 1.0 - f64::from(RENEW_BEFORE_PERCENTAGE) / 100.0 * 1.1;
    let needed = (outage + MARGIN).as_secs_f64() / (1.0 - earliest_due);
    ((needed / 60.0).ceil() as u64 * 60).max(600)
}

fn fc(name: &str, identity: usize, moto: &str, lifetime: u64) -> FederatedCredential {
    let mut fc = fc_json(name, identity, moto);
    fc["spec"]["google"]["tokenLifetimeSeconds"] = json!(lifetime);
    fc["spec"]["secret"] = json!({"renewBeforePercentage": RENEW_BEFORE_PERCENTAGE});
    serde_json::from_value(fc).unwrap()
}

async fn populate(client: &Client, ns: &str, n: usize, identities: usize, moto: &str, life: u64) {
    common::populate(client, ns, n, identities, 32, |name, identity| {
        fc(name, identity, moto, life)
    })
    .await;
}

fn condition(fc: &FederatedCredential, type_: &str) -> bool {
    fc.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    })
}

/// Ready, and not failing to refresh.
fn healthy(fc: &FederatedCredential) -> bool {
    condition(fc, "Ready") && !condition(fc, "RefreshFailing")
}

fn failures(fcs: &[FederatedCredential]) -> u64 {
    fcs.iter()
        .filter_map(|fc| fc.status.as_ref())
        .map(|s| s.failure_count.max(0) as u64)
        .sum()
}

/// What the Secrets hold at one moment, judged by the doubles' record of each token.
#[derive(Default)]
struct Judged {
    /// Secrets whose token has expired (by the doubles' record or the Secret's `expiry`).
    expired: HashSet<String>,
    /// Secrets whose token the doubles never issued (or no token at all).
    unknown: HashSet<String>,
    /// Secrets whose token was issued after `before` was taken.
    fresh: usize,
}

async fn judge(
    secrets: &Api<Secret>,
    google: &GoogleDoubles,
    before: Option<&HashSet<String>>,
) -> Judged {
    let mut judged = Judged::default();
    let now = SystemTime::now();
    let list = secrets.list(&ListParams::default()).await.expect("Secrets");
    for secret in list.items {
        let name = secret.name_any();
        let data = secret.data.unwrap_or_default();
        let token = data
            .get("access_token")
            .map(|b| String::from_utf8_lossy(&b.0).into_owned());
        let stated_expiry = data
            .get("expiry")
            .and_then(|b| std::str::from_utf8(&b.0).ok()?.parse::<Timestamp>().ok());
        if stated_expiry.is_some_and(|at| at <= Timestamp::now()) {
            judged.expired.insert(name.clone());
        }
        match token.as_deref().and_then(|t| google.lookup(t)) {
            Some(info) => {
                if info.expires_at <= now {
                    judged.expired.insert(name.clone());
                }
                if before.is_some_and(|b| !b.contains(token.as_deref().unwrap_or_default())) {
                    judged.fresh += 1;
                }
            }
            None => {
                judged.unknown.insert(name);
            }
        }
    }
    judged
}

/// The controller's CPU time (user + system) and its current and peak RSS, from `/proc`.
struct Usage {
    cpu: Duration,
    rss_kib: u64,
    peak_rss_kib: u64,
}

fn usage(pid: u32, ticks: f64) -> Usage {
    Usage {
        cpu: Duration::from_secs_f64(cpu_seconds(pid, ticks).unwrap_or(0.0)),
        rss_kib: proc_status_kib(pid, "VmRSS:").unwrap_or(0),
        peak_rss_kib: proc_status_kib(pid, "VmHWM:").unwrap_or(0),
    }
}

fn start_controller(bin: &str, ns: &str, google: &GoogleDoubles) -> std::process::Child {
    let log_path = std::env::temp_dir().join(format!("fedcred-outage-{ns}.log"));
    let log_file = std::fs::File::create(&log_path).expect("controller log");
    log(format!("controller log: {}", log_path.display()));
    std::process::Command::new(bin)
        .args([
            "controller",
            "--namespace",
            ns,
            "--leader-election=false",
            "--metrics-address",
            "127.0.0.1:0",
        ])
        // moto is the resources' aws.stsEndpoint: the admin allows it, as for tests.
        .args(["--allow-endpoint", "http://127.0.0.1:*"])
        .args([
            "--google-sts-url",
            &google.sts_url(),
            "--google-iam-credentials-url",
            &google.iam_credentials_url(),
        ])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .stdout(log_file.try_clone().expect("controller log"))
        .stderr(log_file)
        .spawn()
        .expect("the controller starts")
}

/// One minute (or the last part of one) of the outage.
struct Minute {
    sts: u64,
    iam: u64,
    failures: u64,
    cpu: Duration,
}

/// One scenario's figures.
struct Run {
    resources: usize,
    identities: usize,
    lifetime: u64,
    minutes: Vec<Minute>,
    expired: usize,
    unknown: usize,
    samples: usize,
    recovery: Option<Duration>,
    /// When the first Secret, and half of them, held a fresh token after the mend.
    first_fresh: Option<Duration>,
    half_fresh: Option<Duration>,
    recovery_calls: (u64, u64),
    outage_cpu: Duration,
    usage: Usage,
}

async fn scenario(
    client: &Client,
    bin: &str,
    moto: &Moto,
    google: &GoogleDoubles,
    (resources, identities, outage): (usize, usize, Duration),
) -> Run {
    let ns = format!("outage-{resources}-{identities}");
    let lifetime = token_lifetime(outage);
    log(format!(
        "{ns}: {resources} resources on {identities} identities, tokens of {lifetime} s"
    ));
    create_namespace(client, &ns).await;
    populate(client, &ns, resources, identities, &moto.url(), lifetime).await;
    let fcs: Api<FederatedCredential> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let ticks = clock_ticks();
    let mut child = start_controller(bin, &ns, google);
    let pid = child.id();

    let started = Instant::now();
    let items = loop {
        let items = fcs.list(&ListParams::default()).await.expect("list").items;
        if items.len() == resources && items.iter().all(healthy) {
            break items;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{ns}: not all Ready after 10 minutes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    log(format!(
        "{ns}: all Ready after {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    // The outage begins 3 s before the first resource falls due.
    let first_due = items
        .iter()
        .filter_map(|fc| fc.status.as_ref()?.next_refresh_time.as_ref())
        .map(|t| t.0)
        .min()
        .expect("a next refresh time");
    let wait = first_due.duration_since(Timestamp::now()).as_secs_f64() - 3.0;
    log(format!(
        "{ns}: the first refresh is due in {:.0} s; Google STS breaks 3 s before it",
        wait + 3.0
    ));
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
    google.inject(
        Target::Sts,
        Fault::Status {
            code: 503,
            retry_after: None,
            count: u32::MAX,
        },
    );
    let broken = Instant::now();
    let mut minutes = Vec::new();
    let mut expired = HashSet::new();
    let mut unknown = HashSet::new();
    let mut samples = 0;
    let mut last = (
        google.calls(Target::Sts),
        google.calls(Target::Iam),
        failures(&items),
        usage(pid, ticks).cpu,
    );
    let outage_cpu_start = last.3;
    let mut minute_end = broken;
    while minute_end < broken + outage {
        minute_end = (minute_end + Duration::from_secs(60)).min(broken + outage);
        while Instant::now() < minute_end {
            let judged = judge(&secrets, google, None).await;
            samples += 1;
            expired.extend(judged.expired);
            unknown.extend(judged.unknown);
            tokio::time::sleep(
                SAMPLE_EVERY.min(minute_end.saturating_duration_since(Instant::now())),
            )
            .await;
        }
        let now = (
            google.calls(Target::Sts),
            google.calls(Target::Iam),
            failures(&fcs.list(&ListParams::default()).await.expect("list").items),
            usage(pid, ticks).cpu,
        );
        minutes.push(Minute {
            sts: now.0 - last.0,
            iam: now.1 - last.1,
            failures: now.2.saturating_sub(last.2),
            cpu: now.3.saturating_sub(last.3),
        });
        log(format!(
            "{ns}: minute {}: {} STS calls, {} IAM calls, {} failed refreshes",
            minutes.len(),
            now.0 - last.0,
            now.1 - last.1,
            now.2.saturating_sub(last.2)
        ));
        last = now;
    }
    let outage_cpu = last.3.saturating_sub(outage_cpu_start);

    // Everything issued so far is from before the outage's end: a fresh token is none of them.
    let before: HashSet<String> = google.issued_tokens().into_iter().collect();
    let calls_at_mend = (google.calls(Target::Sts), google.calls(Target::Iam));
    google.clear_faults();
    let mended = Instant::now();
    log(format!("{ns}: Google STS mended"));
    let deadline = mended + Duration::from_secs(lifetime);
    let (mut first_fresh, mut half_fresh) = (None, None);
    let recovery = loop {
        let judged = judge(&secrets, google, Some(&before)).await;
        samples += 1;
        expired.extend(judged.expired);
        unknown.extend(judged.unknown);
        let items = fcs.list(&ListParams::default()).await.expect("list").items;
        let ready = items.iter().filter(|fc| healthy(fc)).count();
        if judged.fresh > 0 {
            first_fresh.get_or_insert(mended.elapsed());
        }
        if judged.fresh * 2 >= resources {
            half_fresh.get_or_insert(mended.elapsed());
        }
        if judged.fresh == resources && ready == resources {
            break Some(mended.elapsed());
        }
        if Instant::now() > deadline {
            log(format!(
                "{ns}: not recovered: {} fresh tokens, {ready} healthy of {resources}",
                judged.fresh
            ));
            break None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if let Some(d) = recovery {
        log(format!(
            "{ns}: recovered {:.1} s after the mend",
            d.as_secs_f64()
        ));
    }
    let recovery_calls = (
        google.calls(Target::Sts) - calls_at_mend.0,
        google.calls(Target::Iam) - calls_at_mend.1,
    );
    let usage = usage(pid, ticks);
    let _ = child.kill();
    let _ = child.wait();
    drop(before);
    Run {
        resources,
        identities,
        lifetime,
        minutes,
        expired: expired.len(),
        unknown: unknown.len(),
        samples,
        recovery,
        first_fresh,
        half_fresh,
        recovery_calls,
        outage_cpu,
        usage,
    }
}

/// STS calls one identity can cause per minute of outage: each exchange makes up to 4
/// attempts (`RetryPolicy::default`), and a failed exchange answers every caller of its
/// identity for `FAILURE_SHARE` (5 s), so a new one starts at most every 5 s.
fn bound_per_minute(identities: usize) -> u64 {
    let attempts = u64::from(fedcred_core::google::RetryPolicy::default().attempts);
    let per_minute = 60 / fedcred_core::exchange::FAILURE_SHARE.as_secs();
    identities as u64 * attempts * per_minute
}

fn seconds(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.0}", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into())
}

fn print_run(run: &Run, outage: Duration) {
    println!();
    println!(
        "### {} resources, {} identities, {} s outage (tokens of {} s, refreshed at {RENEW_BEFORE_PERCENTAGE} % left)",
        run.resources,
        run.identities,
        outage.as_secs(),
        run.lifetime
    );
    println!();
    println!(
        "| minute | STS calls | IAM calls | failed refreshes (all resources) | controller CPU (s) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for (i, m) in run.minutes.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {:.2} |",
            i + 1,
            m.sts,
            m.iam,
            m.failures,
            m.cpu.as_secs_f64()
        );
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` runs every bench target with `--bench`; this one needs its environment.
    let Ok(bin) = std::env::var("FEDCRED_BIN") else {
        log("skipped: run bench/outage.sh (it starts the control plane and sets FEDCRED_BIN)");
        return;
    };
    let outage = Duration::from_secs(
        std::env::var("FEDCRED_OUTAGE_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    );
    let counts = list_knob("FEDCRED_OUTAGE_RESOURCES", "500");
    let identity_counts = list_knob("FEDCRED_OUTAGE_IDENTITIES", "1");
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG points at the control plane");
    let moto = Moto::start_async().await.expect("moto starts");
    let mut config = Config::with_moto(&moto.url())
        .provider(Provider::new(AUDIENCE))
        .binding(Binding::new(
            SA_EMAIL,
            &[role_member(AUDIENCE, ASSUMED_ROLE)],
        ));
    // Long outages need tokens beyond an hour: the lifetime-extension org policy.
    config.max_impersonation_lifetime = EXTENDED_LIFETIME;
    let google = GoogleDoubles::start(config).await.expect("doubles start");

    let mut runs = Vec::new();
    for &identities in &identity_counts {
        for &resources in &counts {
            let run = scenario(
                &client,
                &bin,
                &moto,
                &google,
                (resources, identities, outage),
            )
            .await;
            print_run(&run, outage);
            runs.push(run);
        }
    }

    println!();
    println!(
        "| resources | identities | outage (s) | STS calls in the outage | STS calls per minute, peak | bound (identities × 4 attempts × 12) | IAM calls in the outage | failed refreshes | Secrets judged × samples | expired tokens served | unknown tokens | first / half / all fresh after the mend (s) | STS/IAM calls in recovery | controller CPU in the outage (s) | RSS at the end / peak (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut by_identities: HashMap<usize, Vec<u64>> = HashMap::new();
    for run in &runs {
        let sts: u64 = run.minutes.iter().map(|m| m.sts).sum();
        let iam: u64 = run.minutes.iter().map(|m| m.iam).sum();
        let failed: u64 = run.minutes.iter().map(|m| m.failures).sum();
        let peak = run.minutes.iter().map(|m| m.sts).max().unwrap_or(0);
        by_identities.entry(run.identities).or_default().push(peak);
        println!(
            "| {} | {} | {} | {sts} | {peak} | {} | {iam} | {failed} | {} × {} | {} | {} | {} / {} / {} | {} / {} | {:.2} | {:.1} / {:.1} |",
            run.resources,
            run.identities,
            outage.as_secs(),
            bound_per_minute(run.identities),
            run.resources,
            run.samples,
            run.expired,
            run.unknown,
            seconds(run.first_fresh),
            seconds(run.half_fresh),
            run.recovery
                .map(|d| format!("{:.1}", d.as_secs_f64()))
                .unwrap_or_else(|| "not recovered".into()),
            run.recovery_calls.0,
            run.recovery_calls.1,
            run.outage_cpu.as_secs_f64(),
            run.usage.rss_kib as f64 / 1024.0,
            run.usage.peak_rss_kib as f64 / 1024.0,
        );
    }
    let within = runs.iter().all(|run| {
        run.minutes
            .iter()
            .all(|m| m.sts <= bound_per_minute(run.identities))
    });
    let clean = runs
        .iter()
        .all(|run| run.expired == 0 && run.recovery.is_some());
    println!();
    println!(
        "every minute within identities × 4 × 12 STS calls: {}; no expired token served and all recovered: {}",
        if within { "yes" } else { "no" },
        if clean { "yes" } else { "no" }
    );
}

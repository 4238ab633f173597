//! Benchmarks of the exchange engine, reported in BENCHMARKS.md ("Exchange engine") and run by
//! `bench/exchange.sh`. Plain `std::time`, no benchmark framework: a warm-up, many timed
//! operations, then median, p90 and throughput.
//!
//! Modes (the first argument; `cargo bench` adds `--bench`, which is ignored):
//!
//! - `inprocess` (the default): the cost of building and signing one subject token, full
//!   exchanges per second through `Engine::exchange` against the Google doubles running in this
//!   process and a moto server (sequential and concurrent, federated and impersonated),
//!   `Engine::token` cache hits for contrast, and the AWS step of a controllerIdentity exchange
//!   alone. Each row also shows this process's CPU time per operation. `--moto URL` uses a
//!   running moto server instead of starting one; `--quick` runs fewer iterations.
//! - `setup --moto URL --out DIR`: writes `DIR/doubles.json` (the config of the
//!   `fedcred-doubles` process of the side-by-side run) and `DIR/setup.json` (the AWS
//!   environment, audience and service account both clients use), so the bench, the doubles
//!   and google-auth share one definition.
//! - `client --impl engine|wire --doubles URL --moto URL --iterations N --warmup W
//!   [--impersonate] [--current-thread]`: one client process of the side-by-side comparison with google-auth
//!   (`bench/side_by_side.py` runs it and measures its CPU and memory from outside). `engine`
//!   is `Engine::exchange` as the controller runs it for `aws.controllerIdentity` (which asks
//!   AWS STS for its own ARN once per set of credentials); `wire` sends exactly the calls
//!   google-auth sends (subject token, STS, optional impersonation). `--current-thread` runs it
//!   on a single-threaded runtime, as the `fedcred` binary does. Prints one JSON line.
//!
//! The AWS credentials are fixed, static test keys the doubles know (`static_keys`); the
//! caller's ARN comes from moto's GetCallerIdentity, which answers `user/moto` for keys it did
//! not issue.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedcred::exchange::Engine;
use fedcred::exchange::aws::Aws;
use fedcred::exchange::google::GoogleClient;
use fedcred_core::api::{CLOUD_PLATFORM_SCOPE, FederatedCredentialSpec};
use fedcred_core::exchange::{ControllerIdentityPolicy, Defaults, IdentityKey, Reuse, plan};
use fedcred_core::google::RetryPolicy;
use fedcred_core::sensitive::Sensitive;
use fedcred_core::sigv4::AwsCredentials;
use fedcred_core::subject_token::{self, SubjectTokenRequest};
use fedcred_doubles::moto::Moto;
use fedcred_doubles::{Binding, Config, GoogleDoubles, Provider, principal_member};
use serde_json::json;

/// Static AWS test credentials (not real): what `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY` hold for every client of the benchmark.
const ACCESS_KEY_ID: &str = "AKIAFEDCREDBENCH0001";
const SECRET_ACCESS_KEY: &str = "fedcred/bench/NOT-A-REAL-SECRET/0000001";
const REGION: &str = "us-east-1";
const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/bench-pool/providers/bench-aws";
const SERVICE_ACCOUNT: &str = "bench@fedcred-bench.iam.gserviceaccount.com";
/// What moto's GetCallerIdentity reports for access keys it did not issue.
const CALLER_ARN: &str = "arn:aws:sts::123456789012:user/moto";
const NAMESPACE: &str = "bench";
/// Set in the environment of the re-executed in-process bench, so it re-executes only once.
const ENV_MARKER: &str = "FEDCRED_BENCH_ENV";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (mode, rest) = match args.split_first() {
        Some((mode, rest)) if !mode.starts_with("--") => (mode.as_str(), rest),
        _ => ("inprocess", &args[..]),
    };
    let result = parse_flags(rest).and_then(|flags| match mode {
        "inprocess" => in_process(&flags),
        "setup" => setup(&flags),
        "client" => client(&flags),
        "help" => Err(USAGE.to_owned()),
        other => Err(format!("unknown mode {other:?}\n{USAGE}")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("exchange bench: {message}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: exchange [inprocess] [--moto URL] [--quick]
       exchange setup --moto URL --out DIR
       exchange client --impl engine|wire --doubles URL --moto URL --iterations N --warmup W [--impersonate] [--current-thread]";

struct Flags(HashMap<String, Option<String>>);

impl Flags {
    fn value(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.as_deref())
    }

    fn required(&self, name: &str) -> Result<&str, String> {
        self.value(name)
            .ok_or_else(|| format!("--{name} is required\n{USAGE}"))
    }

    fn number(&self, name: &str, default: usize) -> Result<usize, String> {
        match self.value(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|_| format!("--{name} {raw:?} is not a number")),
        }
    }

    fn switch(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

const SWITCHES: [&str; 3] = ["quick", "impersonate", "current-thread"];

fn parse_flags(args: &[String]) -> Result<Flags, String> {
    let mut flags = HashMap::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let name = arg
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {arg:?}\n{USAGE}"))?;
        if SWITCHES.contains(&name) {
            flags.insert(name.to_owned(), None);
        } else {
            let value = it
                .next()
                .ok_or_else(|| format!("--{name} needs a value\n{USAGE}"))?;
            flags.insert(name.to_owned(), Some(value.clone()));
        }
    }
    Ok(Flags(flags))
}

// ---------------------------------------------------------------------------------------------
// Shared definitions: the doubles' config, the spec the engine runs, the clients' environment.

/// The doubles trust moto (as the endpoint fedcred signs for and the place to learn callers),
/// accept subject tokens signed for the real `https://sts.us-east-1.amazonaws.com` (google-auth
/// signs for nothing else) by sending their GetCallerIdentity to moto, know the static key, and
/// let the caller impersonate the service account.
fn doubles_config(moto: &str) -> Config {
    let mut config = Config::with_moto(moto)
        .route_aws_region(REGION, moto)
        .provider(Provider::new(AUDIENCE))
        .binding(Binding::new(
            SERVICE_ACCOUNT,
            &[principal_member(AUDIENCE, CALLER_ARN)],
        ));
    config.static_keys = vec![(ACCESS_KEY_ID.to_owned(), SECRET_ACCESS_KEY.to_owned())];
    config
}

/// The environment every client process runs with.
fn client_env() -> [(&'static str, &'static str); 5] {
    [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ("AWS_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("NO_PROXY", "127.0.0.1,localhost"),
    ]
}

/// A FederatedCredential using the controller's own identity (the static keys in the
/// environment), pointed at moto and the doubles.
fn engine_key(moto: &str, doubles: &str, impersonate: bool) -> Result<IdentityKey, String> {
    let mut google = json!({
        "audience": AUDIENCE,
        "endpoints": {"sts": format!("{doubles}/v1/token"), "iamCredentials": doubles},
    });
    if impersonate {
        google["serviceAccount"] = json!(SERVICE_ACCOUNT);
    }
    let spec: FederatedCredentialSpec = serde_json::from_value(json!({
        "aws": {"controllerIdentity": {}, "region": REGION, "stsEndpoint": moto},
        "google": google,
    }))
    .map_err(|e| format!("bench spec: {e}"))?;
    let defaults = Defaults {
        controller_identity: ControllerIdentityPolicy::parse([NAMESPACE]).unwrap(),
        endpoints: fedcred_core::exchange::EndpointPolicy::new(["http://127.0.0.1:*"]).unwrap(),
        ..Defaults::default()
    };
    plan(NAMESPACE, &spec, &defaults).map_err(|e| format!("{} ({})", e.message, e.reason))
}

async fn new_engine() -> Result<Engine, String> {
    let google = GoogleClient::new(RetryPolicy::default()).map_err(|e| e.message)?;
    Ok(Engine::new(Aws::from_env().await, google, None))
}

/// A single-threaded runtime like the `fedcred` binary's, or a multi-threaded one (one worker
/// per core) for contrast.
fn runtime(current_thread: bool) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = if current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
        .enable_all()
        // Blocking-pool threads that exit take their CPU time out of /proc/self/task; keep them.
        .thread_keep_alive(Duration::from_secs(3600))
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// The process's CPU time so far: the sum of its threads' on-CPU nanoseconds from
/// `/proc/self/task/*/schedstat` (`/proc/self/stat` counts 10 ms ticks). The kernel brings a
/// thread's count up to date when it is descheduled, so this thread sleeps briefly first; the
/// other threads are parked at the points where this is read. Threads that exited are not
/// counted, hence the runtime's long keep-alive.
fn process_cpu() -> Option<Duration> {
    std::thread::sleep(Duration::from_micros(50));
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// What one timed loop measured.
struct Timed {
    /// Latency of every operation.
    samples: Vec<Duration>,
    /// Wall time of the whole timed part.
    wall: Duration,
    /// CPU time of this process during the timed part (all threads).
    cpu: Option<Duration>,
}

/// Starts the clocks of a timed part.
struct Clocks {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Clocks {
    fn start() -> Clocks {
        Clocks {
            cpu: process_cpu(),
            wall: Instant::now(),
        }
    }

    fn stop(self, samples: Vec<Duration>) -> Timed {
        let wall = self.wall.elapsed();
        let cpu = self
            .cpu
            .zip(process_cpu())
            .map(|(a, b)| b.saturating_sub(a));
        Timed { samples, wall, cpu }
    }
}

/// One row of a result table.
struct Summary {
    name: String,
    ops: usize,
    median: Duration,
    p90: Duration,
    per_second: f64,
    cpu_per_op: Option<Duration>,
}

impl Summary {
    fn new(name: impl Into<String>, timed: Timed) -> Summary {
        let Timed {
            mut samples,
            wall,
            cpu,
        } = timed;
        samples.sort_unstable();
        let ops = samples.len();
        let at = |q: f64| {
            samples
                .get(((ops as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        Summary {
            name: name.into(),
            ops,
            median: at(0.5),
            p90: at(0.9),
            per_second: ops as f64 / wall.as_secs_f64().max(f64::MIN_POSITIVE),
            cpu_per_op: cpu.map(|c| c / ops.max(1) as u32),
        }
    }
}

fn human(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{:.2} µs", ns as f64 / 1e3)
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.2} ms", ns as f64 / 1e6)
    }
}

fn table(title: &str, cpu_note: &str, rows: &[Summary]) -> String {
    let mut out = format!(
        "\n### {title}\n\n| benchmark | ops | median | p90 | ops/s | CPU/op{cpu_note} |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} | {} |",
            r.name,
            r.ops,
            human(r.median),
            human(r.p90),
            r.per_second,
            r.cpu_per_op.map_or_else(|| "n/a".to_owned(), human),
        );
    }
    out
}

fn progress(what: &str) {
    eprintln!("  bench: {what}");
}

/// Times `op` `n` times after `warmup` untimed runs.
fn time_sync(warmup: usize, n: usize, mut op: impl FnMut()) -> Timed {
    for _ in 0..warmup {
        op();
    }
    let mut samples = Vec::with_capacity(n);
    let clocks = Clocks::start();
    for _ in 0..n {
        let t = Instant::now();
        op();
        samples.push(t.elapsed());
    }
    clocks.stop(samples)
}

/// Times `op` `n` times after `warmup` untimed runs, one after the other.
async fn time_async<F, Fut>(warmup: usize, n: usize, op: F) -> Result<Timed, String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    for _ in 0..warmup {
        op().await?;
    }
    let mut samples = Vec::with_capacity(n);
    let clocks = Clocks::start();
    for _ in 0..n {
        let t = Instant::now();
        op().await?;
        samples.push(t.elapsed());
    }
    Ok(clocks.stop(samples))
}

/// Runs `op` `per_task` times in each of `tasks` tasks at once (after `warmup` runs in each
/// task, behind a barrier) and returns every latency and the wall time of the timed part.
async fn time_concurrent<F, Fut>(
    tasks: usize,
    warmup: usize,
    per_task: usize,
    op: F,
) -> Result<Timed, String>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks + 1));
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let op = op.clone();
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..warmup {
                op().await?;
            }
            barrier.wait().await;
            let mut samples = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let t = Instant::now();
                op().await?;
                samples.push(t.elapsed());
            }
            Ok::<_, String>(samples)
        }));
    }
    barrier.wait().await;
    let clocks = Clocks::start();
    let mut all = Vec::with_capacity(tasks * per_task);
    for handle in handles {
        all.extend(handle.await.map_err(|e| format!("bench task: {e}"))??);
    }
    Ok(clocks.stop(all))
}

// ---------------------------------------------------------------------------------------------
// inprocess

struct Sizes {
    token_ops: usize,
    exchanges: usize,
    tasks: usize,
    per_task: usize,
    cache_ops: usize,
}

fn in_process(flags: &Flags) -> Result<(), String> {
    if std::env::var_os(ENV_MARKER).is_none() {
        return reexec_with_bench_env();
    }
    let sizes = if flags.switch("quick") {
        Sizes {
            token_ops: 2_000,
            exchanges: 30,
            tasks: 8,
            per_task: 5,
            cache_ops: 10_000,
        }
    } else {
        Sizes {
            token_ops: 20_000,
            exchanges: 200,
            tasks: 8,
            per_task: 50,
            cache_ops: 200_000,
        }
    };
    println!(
        "{}",
        table(
            "Subject token: build and sign (pure, no I/O)",
            "",
            &token_bench(&sizes)
        )
    );
    let rt = runtime(false)?;
    let results = rt.block_on(exchange_bench(flags.value("moto"), &sizes))?;
    println!(
        "{}",
        table(
            "Full exchanges through Engine::exchange (in-process doubles + moto, no cache)",
            " (this process: engine + in-process doubles)",
            &results.exchanges
        )
    );
    println!(
        "{}",
        table(
            "Engine::token with a cached token (cache hit)",
            "",
            &results.cached
        )
    );
    println!(
        "{}",
        table(
            "The AWS step of a controllerIdentity exchange alone (GetCallerIdentity on moto)",
            " (client only)",
            &results.aws
        )
    );
    Ok(())
}

/// The engine reads the controller's credentials from the environment, which a Rust 2024
/// program can only set for a child: run this mode again with the benchmark's credentials.
fn reexec_with_bench_env() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut command = std::process::Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env(ENV_MARKER, "1")
        .envs(client_env());
    for other in [
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_STS",
    ] {
        command.env_remove(other);
    }
    let status = command.status().map_err(|e| format!("re-exec: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the benchmark run ended with {status}"))
    }
}

fn token_bench(sizes: &Sizes) -> Vec<Summary> {
    let static_keys = AwsCredentials {
        access_key_id: ACCESS_KEY_ID.to_owned(),
        secret_access_key: Sensitive::new(SECRET_ACCESS_KEY),
        session_token: None,
    };
    // Temporary credentials, as IRSA and AssumeRole give: one more signed header.
    let temporary = AwsCredentials {
        access_key_id: "ASIAFEDCREDBENCH0002".to_owned(),
        secret_access_key: Sensitive::new(SECRET_ACCESS_KEY),
        session_token: Some(Sensitive::new("IQoJb3JpZ2luX2VjEFAKE".repeat(40))),
    };
    let request = |time| SubjectTokenRequest {
        region: REGION,
        audience: AUDIENCE,
        endpoint: None,
        time,
    };
    let warmup = sizes.token_ops / 10;
    let mut rows = Vec::new();

    progress("subject token: signed request JSON");
    let timed = time_sync(warmup, sizes.token_ops, || {
        let json =
            subject_token::signed_request_json(&static_keys, &request(jiff::Timestamp::now()));
        black_box(json.expect("signs"));
    });
    rows.push(Summary::new(
        "sign + JSON (`signed_request_json`), static keys",
        timed,
    ));

    progress("subject token: build (sign + JSON + URL-encode)");
    let timed = time_sync(warmup, sizes.token_ops, || {
        black_box(
            subject_token::build(&static_keys, &request(jiff::Timestamp::now())).expect("signs"),
        );
    });
    rows.push(Summary::new(
        "`build` (sign + JSON + URL-encode), static keys",
        timed,
    ));

    progress("subject token: build with a session token");
    let timed = time_sync(warmup, sizes.token_ops, || {
        black_box(
            subject_token::build(&temporary, &request(jiff::Timestamp::now())).expect("signs"),
        );
    });
    rows.push(Summary::new(
        "`build`, temporary credentials (840-byte session token)",
        timed,
    ));
    rows
}

struct Results {
    exchanges: Vec<Summary>,
    cached: Vec<Summary>,
    aws: Vec<Summary>,
}

async fn exchange_bench(moto_url: Option<&str>, sizes: &Sizes) -> Result<Results, String> {
    // Keep the handle alive for the whole run when this process started moto.
    let (_moto, moto_url) = match moto_url {
        Some(url) => (None, url.trim_end_matches('/').to_owned()),
        None => {
            progress("starting moto");
            let moto = Moto::start_async()
                .await
                .map_err(|e| format!("moto: {e} (run hack/install-tools.sh)"))?;
            let url = moto.url();
            (Some(moto), url)
        }
    };
    let doubles = GoogleDoubles::start(doubles_config(&moto_url))
        .await
        .map_err(|e| format!("doubles: {e}"))?;
    let engine = Arc::new(new_engine().await?);
    let mut exchanges = Vec::new();
    for impersonate in [false, true] {
        let kind = if impersonate {
            "impersonated"
        } else {
            "federated"
        };
        let key = Arc::new(engine_key(&moto_url, &doubles.base_url(), impersonate)?);
        let issued = engine
            .exchange(&key)
            .await
            .map_err(|e| format!("first exchange failed: {} ({})", e.message, e.reason))?;
        if issued.principal_arn.as_deref() != Some(CALLER_ARN) {
            return Err(format!(
                "moto reported {:?}, not {CALLER_ARN}; update CALLER_ARN",
                issued.principal_arn
            ));
        }

        progress(&format!("{kind}: {} sequential exchanges", sizes.exchanges));
        let timed = time_async(50, sizes.exchanges, || {
            let (engine, key) = (engine.clone(), key.clone());
            async move { exchange_once(&engine, &key).await }
        })
        .await?;
        exchanges.push(Summary::new(format!("{kind}, sequential"), timed));

        progress(&format!(
            "{kind}: {} tasks × {} exchanges",
            sizes.tasks, sizes.per_task
        ));
        let timed = time_concurrent(sizes.tasks, 5, sizes.per_task, {
            let (engine, key) = (engine.clone(), key.clone());
            move || {
                let (engine, key) = (engine.clone(), key.clone());
                async move { exchange_once(&engine, &key).await }
            }
        })
        .await?;
        exchanges.push(Summary::new(
            format!("{kind}, {} concurrent tasks", sizes.tasks),
            timed,
        ));
    }

    let mut cached = Vec::new();
    let key = Arc::new(engine_key(&moto_url, &doubles.base_url(), true)?);
    let reuse = Reuse::refresh_within(0.5);
    engine
        .token(&key, reuse, None)
        .await
        .map_err(|e| e.message)?;
    let exchanges_before = doubles.exchanges(fedcred_doubles::Target::Sts);
    progress(&format!("cache hits: {} sequential", sizes.cache_ops));
    let timed = time_async(sizes.cache_ops / 10, sizes.cache_ops, || {
        let (engine, key) = (engine.clone(), key.clone());
        async move { cache_hit(&engine, &key, reuse).await }
    })
    .await?;
    cached.push(Summary::new("cache hit, sequential", timed));
    progress(&format!("cache hits: {} tasks", sizes.tasks));
    let per_task = sizes.cache_ops / sizes.tasks;
    let timed = time_concurrent(sizes.tasks, per_task / 10, per_task, {
        let (engine, key) = (engine.clone(), key.clone());
        move || {
            let (engine, key) = (engine.clone(), key.clone());
            async move { cache_hit(&engine, &key, reuse).await }
        }
    })
    .await?;
    cached.push(Summary::new(
        format!("cache hit, {} concurrent tasks (one identity)", sizes.tasks),
        timed,
    ));
    if doubles.exchanges(fedcred_doubles::Target::Sts) != exchanges_before {
        return Err("a cache-hit benchmark reached Google STS".to_owned());
    }
    doubles.shutdown().await;

    // With the doubles idle, this process's CPU time is the client's own.
    let aws = aws_step_bench(&Aws::from_env().await, &moto_url, sizes.exchanges).await?;
    Ok(Results {
        exchanges,
        cached,
        aws,
    })
}

/// The AWS part of a controllerIdentity exchange alone, as the engine runs it, and the same
/// GetCallerIdentity call on one long-lived AWS SDK client, for comparison.
async fn aws_step_bench(aws: &Aws, moto_url: &str, n: usize) -> Result<Vec<Summary>, String> {
    progress(&format!("AWS step: {n} × Aws::controller"));
    let timed = time_async(50, n, || async {
        let identity = aws
            .controller(NAMESPACE, None, REGION, Some(moto_url))
            .await
            .map_err(|e| e.message)?;
        black_box(identity);
        Ok(())
    })
    .await?;
    let mut rows = vec![Summary::new(
        "`Aws::controller` (what `Engine::exchange` calls: cached client and ARN)",
        timed,
    )];

    progress(&format!("AWS step: {n} × GetCallerIdentity on one client"));
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(moto_url)
        .load()
        .await;
    let sts = aws_sdk_sts::Client::new(&conf);
    let timed = time_async(50, n, || async {
        let who = sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| aws_sdk_sts::error::DisplayErrorContext(&e).to_string())?;
        black_box(who);
        Ok(())
    })
    .await?;
    rows.push(Summary::new(
        "GetCallerIdentity on one reused `aws_sdk_sts::Client`",
        timed,
    ));
    Ok(rows)
}

async fn exchange_once(engine: &Engine, key: &IdentityKey) -> Result<(), String> {
    let issued = engine
        .exchange(key)
        .await
        .map_err(|e| format!("exchange failed: {} ({})", e.message, e.reason))?;
    black_box(issued);
    Ok(())
}

async fn cache_hit(engine: &Engine, key: &IdentityKey, reuse: Reuse) -> Result<(), String> {
    let issued = engine
        .token(key, reuse, None)
        .await
        .map_err(|e| e.message)?;
    black_box(issued);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// setup

fn setup(flags: &Flags) -> Result<(), String> {
    let moto = flags.required("moto")?.trim_end_matches('/');
    let dir = PathBuf::from(flags.required("out")?);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, value: String| {
        let path = dir.join(name);
        std::fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()))
    };
    let config = serde_json::to_string_pretty(&doubles_config(moto))
        .map_err(|e| format!("doubles config: {e}"))?;
    write("doubles.json", config)?;
    let env: serde_json::Map<String, serde_json::Value> = client_env()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let described = json!({
        "env": env,
        "audience": AUDIENCE,
        "service_account": SERVICE_ACCOUNT,
        "scopes": [CLOUD_PLATFORM_SCOPE],
        "lifetime_seconds": 3600,
    });
    write("setup.json", described.to_string())
}

// ---------------------------------------------------------------------------------------------
// client

/// The process's peak resident set size (`VmHWM`) in KiB. Unlike `ru_maxrss` seen by a parent,
/// it starts at zero with `exec`, so the parent's own size does not leak into it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn client(flags: &Flags) -> Result<(), String> {
    let implementation = flags.required("impl")?.to_owned();
    let doubles = flags.required("doubles")?.trim_end_matches('/').to_owned();
    let moto = flags.required("moto")?.trim_end_matches('/').to_owned();
    let iterations = flags.number("iterations", 100)?;
    let warmup = flags.number("warmup", 10)?;
    let impersonate = flags.switch("impersonate");
    let current_thread = flags.switch("current-thread");
    let rt = runtime(current_thread)?;
    let report = rt.block_on(async {
        let exchange: Box<dyn Exchange> = match implementation.as_str() {
            "engine" => Box::new(EngineClient {
                engine: new_engine().await?,
                key: engine_key(&moto, &doubles, impersonate)?,
            }),
            "wire" => Box::new(WireClient::from_env(&doubles, impersonate)?),
            other => return Err(format!("--impl {other:?}: engine or wire")),
        };
        let mut last = Sensitive::new("");
        run(exchange.as_ref(), warmup, &mut last).await?;
        let cpu_start = process_cpu();
        let start = Instant::now();
        run(exchange.as_ref(), iterations, &mut last).await?;
        let wall = start.elapsed();
        let cpu = cpu_start
            .zip(process_cpu())
            .map(|(a, b)| b.saturating_sub(a));
        Ok::<_, String>(json!({
            "client": format!("fedcred-{implementation}"),
            "runtime": if current_thread { "current_thread" } else { "multi_thread" },
            "impersonate": impersonate,
            "warmup": warmup,
            "iterations": iterations,
            "loop_wall_s": wall.as_secs_f64(),
            "loop_cpu_s": cpu.map(|c| c.as_secs_f64()),
            "peak_rss_kib": peak_rss_kib(),
        }))
    })?;
    println!("{report}");
    Ok(())
}

/// Runs `n` exchanges, each of which must bring a token different from the one before.
async fn run(exchange: &dyn Exchange, n: usize, last: &mut Sensitive) -> Result<(), String> {
    for _ in 0..n {
        let token = exchange.once().await?;
        if token == *last {
            return Err("the same token twice: no new exchange happened".to_owned());
        }
        *last = token;
    }
    Ok(())
}

/// One full exchange, whichever way.
trait Exchange {
    fn once(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<Sensitive, String>> + '_>>;
}

struct EngineClient {
    engine: Engine,
    key: IdentityKey,
}

impl Exchange for EngineClient {
    fn once(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<Sensitive, String>> + '_>> {
        Box::pin(async move {
            self.engine
                .exchange(&self.key)
                .await
                .map(|issued| issued.access_token)
                .map_err(|e| format!("{} ({})", e.message, e.reason))
        })
    }
}

/// The calls google-auth makes, with fedcred's parts: subject token for the regional AWS STS
/// URL, Google STS, then impersonation when asked.
struct WireClient {
    google: GoogleClient,
    credentials: AwsCredentials,
    sts_url: String,
    iam_url: String,
    impersonate: bool,
    scopes: Vec<String>,
}

impl WireClient {
    fn from_env(doubles: &str, impersonate: bool) -> Result<WireClient, String> {
        let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
        Ok(WireClient {
            google: GoogleClient::new(RetryPolicy::default()).map_err(|e| e.message)?,
            credentials: AwsCredentials {
                access_key_id: var("AWS_ACCESS_KEY_ID")?,
                secret_access_key: Sensitive::new(var("AWS_SECRET_ACCESS_KEY")?),
                session_token: std::env::var("AWS_SESSION_TOKEN").ok().map(Sensitive::new),
            },
            sts_url: format!("{doubles}/v1/token"),
            iam_url: doubles.to_owned(),
            impersonate,
            scopes: vec![CLOUD_PLATFORM_SCOPE.to_owned()],
        })
    }
}

impl Exchange for WireClient {
    fn once(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<Sensitive, String>> + '_>> {
        Box::pin(async move {
            let subject = subject_token::build(
                &self.credentials,
                &SubjectTokenRequest {
                    region: REGION,
                    audience: AUDIENCE,
                    endpoint: None,
                    time: jiff::Timestamp::now(),
                },
            )
            .map_err(|e| e.to_string())?;
            let federated = self
                .google
                .sts_exchange(
                    &self.sts_url,
                    AUDIENCE,
                    &self.scopes,
                    subject_token::TOKEN_TYPE,
                    &subject,
                )
                .await
                .map_err(|e| e.message)?;
            if !self.impersonate {
                return Ok(federated.token);
            }
            let impersonated = self
                .google
                .impersonate(
                    &self.iam_url,
                    &federated.token,
                    SERVICE_ACCOUNT,
                    &self.scopes,
                    &[],
                    Duration::from_secs(3600),
                )
                .await
                .map_err(|e| e.message)?;
            Ok(impersonated.token)
        })
    }
}

//! Controller scale benchmark on the real API server: N FederatedCredentials over 50 identities.
//!
//! For each N, in the same run:
//! - floor: a bare client loop writes, for N resources of another namespace, exactly the Secret
//!   and the status the controller would write (server-side apply, same concurrency), with no
//!   exchange, cache or decision in between;
//! - controller: the release `fedcred controller` starts on a namespace holding N resources and
//!   the clock stops when the last one is Ready.
//!
//! Reported: both times and their ratio, the controller's peak RSS (VmHWM), and the exchanges
//! Google STS saw; with `FEDCRED_SCALE_ROUNDS` > 1, the median and range of the ratio. With
//! `FEDCRED_SCALE_BASELINE` (the path of another fedcred binary), that binary runs in every
//! round too, in alternating order with the current one, against the same floor. Run through
//! `bench/scale.sh`, which starts the control plane.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fedcred_core::api::FederatedCredential;
use fedcred_core::exchange::{ControllerIdentityPolicy, Defaults, Issued, plan};
use fedcred_core::refresh::objects;
use fedcred_core::sensitive::Sensitive as Token;
use fedcred_doubles::moto::Moto;
use fedcred_doubles::{Binding, Config, GoogleDoubles, Provider, Target, role_member};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop";
const SA_EMAIL: &str = "orders-api@acme-shop.iam.gserviceaccount.com";
const ROLE: &str = "arn:aws:iam::123456789012:role/shop-orders";
const ASSUMED_ROLE: &str = "arn:aws:sts::123456789012:assumed-role/shop-orders";

fn log(msg: impl AsRef<str>) {
    eprintln!("[scale] {}", msg.as_ref());
}

async fn create_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
    // Wait for the default ServiceAccount so the namespace is fully set up.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    for _ in 0..100 {
        if sas.get_opt("default").await.ok().flatten().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fc(name: &str, identity: usize, moto: &str) -> FederatedCredential {
    serde_json::from_value(json!({
        "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": name},
        "spec": {
            "aws": {"serviceAccount": {"name": format!("app-{identity}")}, "region": "us-east-1", "stsEndpoint": moto},
            "google": {"audience": AUDIENCE, "serviceAccount": SA_EMAIL}
        }
    }))
    .unwrap()
}

async fn populate(client: &Client, ns: &str, n: usize, identities: usize, moto: &str) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    for i in 0..identities {
        let sa: ServiceAccount = serde_json::from_value(json!({
            "metadata": {"name": format!("app-{i}"), "annotations": {"eks.amazonaws.com/role-arn": ROLE}}
        }))
        .unwrap();
        sas.create(&PostParams::default(), &sa)
            .await
            .expect("ServiceAccount created");
    }
    let fcs: Api<FederatedCredential> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let fcs = fcs.clone();
            let obj = fc(&format!("cred-{i:05}"), i % identities, moto);
            async move { fcs.create(&PostParams::default(), &obj).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .expect("resources created");
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
    let deadline = Duration::from_secs(900);
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

/// The exchange floor: one exchange per identity, all at once, through the same engine the
/// controller uses, against the same moto and doubles. The controller cannot be Ready sooner.
async fn exchange_floor(
    client: &Client,
    ns: &str,
    identities: usize,
    moto: &str,
    google: &GoogleDoubles,
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
    let start = Instant::now();
    futures::future::try_join_all(keys.iter().map(|k| engine.exchange(k)))
        .await
        .expect("exchanges");
    start.elapsed()
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn controller_run(
    client: &Client,
    ns: &str,
    n: usize,
    google: &GoogleDoubles,
    bin: &str,
    concurrency: usize,
) -> (Duration, u64) {
    let log_path = std::env::temp_dir().join(format!("fedcred-scale-{ns}.log"));
    let log_file = std::fs::File::create(&log_path).unwrap();
    let start = Instant::now();
    let waiter = tokio::spawn(all_ready(client.clone(), ns.to_owned(), n, start));
    let mut child = std::process::Command::new(bin)
        .args([
            "controller",
            "--namespace",
            ns,
            "--leader-election=false",
            "--metrics-address",
            "127.0.0.1:0",
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
        .expect("the controller starts");
    let result = waiter.await.expect("watch task");
    let rss = peak_rss_kib(child.id()).unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    match result {
        Ok(elapsed) => (elapsed, rss),
        Err(e) => panic!("{e}; controller log: {}", log_path.display()),
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` runs every bench target with `--bench`; this one needs its environment.
    let Ok(bin) = std::env::var("FEDCRED_BIN") else {
        log("skipped: run bench/scale.sh (it starts the control plane and sets FEDCRED_BIN)");
        return;
    };
    let counts: Vec<usize> = std::env::var("FEDCRED_SCALE_COUNTS")
        .unwrap_or_else(|_| "1000,5000".into())
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .expect("FEDCRED_SCALE_COUNTS is a comma-separated list of numbers")
        })
        .collect();
    let identities: usize = std::env::var("FEDCRED_SCALE_IDENTITIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let concurrency: usize = std::env::var("FEDCRED_SCALE_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
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

    let rounds: usize = std::env::var("FEDCRED_SCALE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    // A baseline binary (an earlier fedcred) runs beside the current one in every round, in
    // alternating order, against the same floor: ratios from one machine at one time.
    let baseline = std::env::var("FEDCRED_SCALE_BASELINE")
        .ok()
        .filter(|b| !b.is_empty());
    let mut binaries = vec![("current", bin.as_str())];
    if let Some(baseline) = &baseline {
        binaries.push(("baseline", baseline.as_str()));
    }

    println!(
        "| round | binary | resources | identities | write floor (s) | exchanges alone (s) | controller (s) | controller / write floor | peak RSS (MiB) | STS exchanges | IAM calls |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut ratios: Vec<(usize, &str, f64)> = Vec::new();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in counts {
        for round in 0..rounds {
            // Every round has namespaces of its own, and the previous round's are gone before
            // it starts, so it runs on a quiet server.
            let floor_ns = format!("scale-{n}-{round}-floor");
            let mut order: Vec<(&str, &str, String)> = binaries
                .iter()
                .map(|(label, path)| (*label, *path, format!("scale-{n}-{round}-{label}")))
                .collect();
            if round % 2 == 1 {
                order.reverse();
            }
            log(format!(
                "{n}, round {round}: creating {n} resources in each of {} namespaces",
                order.len() + 1
            ));
            create_namespace(&client, &floor_ns).await;
            populate(&client, &floor_ns, n, identities, &moto.url()).await;
            for (_, _, ns) in &order {
                create_namespace(&client, ns).await;
                populate(&client, ns, n, identities, &moto.url()).await;
            }
            log(format!("{n}, round {round}: floor loop"));
            let floor_time = floor(&client, &floor_ns, n, concurrency).await;
            log(format!(
                "{n}, round {round}: floor {:.2} s",
                floor_time.as_secs_f64()
            ));
            let exchanges_time =
                exchange_floor(&client, &floor_ns, identities, &moto.url(), &google).await;
            log(format!(
                "{n}, round {round}: {identities} exchanges alone {:.2} s",
                exchanges_time.as_secs_f64()
            ));
            for (label, path, ns) in &order {
                let (sts0, iam0) = (google.exchanges(Target::Sts), google.calls(Target::Iam));
                let (ctl_time, rss) =
                    controller_run(&client, ns, n, &google, path, concurrency).await;
                let (sts, iam) = (
                    google.exchanges(Target::Sts) - sts0,
                    google.calls(Target::Iam) - iam0,
                );
                let ratio = ctl_time.as_secs_f64() / floor_time.as_secs_f64();
                log(format!(
                    "{n}, round {round}: {label} controller {:.2} s",
                    ctl_time.as_secs_f64()
                ));
                println!(
                    "| {round} | {label} | {n} | {identities} | {:.2} | {:.2} | {:.2} | {ratio:.2} | {:.1} | {sts} | {iam} |",
                    floor_time.as_secs_f64(),
                    exchanges_time.as_secs_f64(),
                    ctl_time.as_secs_f64(),
                    rss as f64 / 1024.0,
                );
                ratios.push((n, label, ratio));
            }
            let mut all = vec![floor_ns];
            all.extend(order.into_iter().map(|(_, _, ns)| ns));
            for ns in &all {
                let _ = namespaces.delete(ns, &DeleteParams::default()).await;
            }
            log(format!(
                "{n}, round {round}: waiting for the namespaces to be deleted"
            ));
            for ns in &all {
                let deadline = Instant::now() + Duration::from_secs(600);
                while namespaces
                    .get_opt(ns)
                    .await
                    .expect("namespace read")
                    .is_some()
                {
                    assert!(
                        Instant::now() < deadline,
                        "namespace {ns} still exists 10 minutes after its deletion"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    println!();
    println!("| resources | binary | rounds | controller / write floor, median | min | max |");
    println!("|---:|---|---:|---:|---:|---:|");
    let mut sizes: Vec<usize> = ratios.iter().map(|(n, _, _)| *n).collect();
    sizes.dedup();
    for n in sizes {
        for (label, _) in &binaries {
            let mut of: Vec<f64> = ratios
                .iter()
                .filter(|(m, l, _)| *m == n && l == label)
                .map(|(_, _, r)| *r)
                .collect();
            of.sort_by(f64::total_cmp);
            let median = if of.len() % 2 == 1 {
                of[of.len() / 2]
            } else {
                (of[of.len() / 2 - 1] + of[of.len() / 2]) / 2.0
            };
            println!(
                "| {n} | {label} | {} | {median:.2} | {:.2} | {:.2} |",
                of.len(),
                of[0],
                of[of.len() - 1]
            );
        }
    }
}

//! What the benchmarks on the real API server share (`bench/scale.rs`, `bench/outage.rs`): the
//! identity every resource names, namespaces and resources created the same way, and a
//! process's CPU time and memory from `/proc`.
#![allow(dead_code)]

use std::time::Duration;

use fedcred_core::api::FederatedCredential;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};

pub const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop";
pub const SA_EMAIL: &str = "orders-api@acme-shop.iam.gserviceaccount.com";
pub const ROLE: &str = "arn:aws:iam::123456789012:role/shop-orders";
pub const ASSUMED_ROLE: &str = "arn:aws:sts::123456789012:assumed-role/shop-orders";

pub async fn create_namespace(client: &Client, name: &str) {
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

/// A FederatedCredential on ServiceAccount `app-IDENTITY` (IRSA through moto at `moto`),
/// impersonating [`SA_EMAIL`], as JSON for a benchmark to add to.
pub fn fc_json(name: &str, identity: usize, moto: &str) -> Value {
    json!({
        "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": name},
        "spec": {
            "aws": {"serviceAccount": {"name": format!("app-{identity}")}, "region": "us-east-1", "stsEndpoint": moto},
            "google": {"audience": AUDIENCE, "serviceAccount": SA_EMAIL}
        }
    })
}

/// `identities` ServiceAccounts `app-I` with the IRSA role, then `n` resources `cred-NNNNN`
/// spread over them round robin, `concurrency` creates in flight; `make` builds resource `i`
/// from its name and identity.
pub async fn populate(
    client: &Client,
    ns: &str,
    n: usize,
    identities: usize,
    concurrency: usize,
    make: impl Fn(&str, usize) -> FederatedCredential,
) {
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
            let obj = make(&format!("cred-{i:05}"), i % identities);
            async move { fcs.create(&PostParams::default(), &obj).await.map(|_| ()) }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await
        .expect("resources created");
}

/// A `kB` field of /proc/PID/status (`VmRSS:`, `VmHWM:`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Clock ticks per second of /proc's CPU times.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces).
pub fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User plus system CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let fields = proc_stat(pid)?;
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

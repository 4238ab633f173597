//! Closed-loop load on the token endpoint of a running `fedcred agent` (or
//! `fedcred metadata-server`), for `bench/agent.sh` (BENCHMARKS.md, "`fedcred agent`").
//!
//! `agent_load --url http://127.0.0.1:PORT --connections C --seconds S [--warmup W]`: C tasks,
//! each on its own keep-alive HTTP/1.1 connection, send `GET …/service-accounts/default/token`
//! with `Metadata-Flavor: Google` and the next one as soon as the last is answered. Every
//! answer must be a 200 whose body holds an `access_token`; any other answer is an error and
//! the run is reported invalid. Latency is measured per request from send to the end of the
//! body. Prints one JSON line: requests, errors, seconds, rps, p50_us, p90_us, p99_us, max_us.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

const TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

fn flag(args: &[String], name: &str) -> Option<String> {
    args.windows(2)
        .find(|w| w[0] == format!("--{name}"))
        .map(|w| w[1].clone())
}

fn number(args: &[String], name: &str, default: u64) -> Result<u64, String> {
    match flag(args, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("--{name} {v:?}: not a number")),
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn worker(
    url: String,
    warmup_until: Instant,
    until: Instant,
) -> Result<(Vec<u32>, u64), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|e| e.to_string())?;
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut errors = 0;
    let mut n: u64 = 0;
    loop {
        let sent = Instant::now();
        if sent >= until {
            break;
        }
        let answer = client
            .get(&url)
            .header("Metadata-Flavor", "Google")
            .send()
            .await;
        let ok = match answer {
            Ok(r) if r.status() == 200 => match r.bytes().await {
                // Every answer is read in full; every 64th is checked for the token field.
                Ok(body) => {
                    !n.is_multiple_of(64) || body.windows(14).any(|w| w == b"\"access_token\"")
                }
                Err(_) => false,
            },
            _ => false,
        };
        n += 1;
        if sent < warmup_until {
            continue;
        }
        if ok {
            latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
        } else {
            errors += 1;
        }
    }
    Ok((latencies, errors))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = || -> Result<String, String> {
        let base = flag(&args, "url").ok_or("--url is required")?;
        let connections = number(&args, "connections", 8)?;
        let seconds = number(&args, "seconds", 5)?;
        let warmup = number(&args, "warmup", 1)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let start = Instant::now();
            let warmup_until = start + Duration::from_secs(warmup);
            let until = warmup_until + Duration::from_secs(seconds);
            let url = format!("{}{TOKEN}", base.trim_end_matches('/'));
            let tasks: Vec<_> = (0..connections)
                .map(|_| tokio::spawn(worker(url.clone(), warmup_until, until)))
                .collect();
            let mut all = Vec::new();
            let mut errors = 0;
            for task in tasks {
                let (latencies, e) = task.await.map_err(|e| e.to_string())??;
                all.extend(latencies);
                errors += e;
            }
            all.sort_unstable();
            let measured = seconds as f64;
            Ok(serde_json::json!({
                "requests": all.len(),
                "errors": errors,
                "seconds": measured,
                "connections": connections,
                "rps": all.len() as f64 / measured,
                "p50_us": percentile(&all, 50.0),
                "p90_us": percentile(&all, 90.0),
                "p99_us": percentile(&all, 99.0),
                "max_us": all.last().copied().unwrap_or(0),
            })
            .to_string())
        })
    };
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agent_load: {e}");
            ExitCode::FAILURE
        }
    }
}

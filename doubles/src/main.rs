//! `fedcred-doubles`: runs the Google STS and IAM Credentials doubles for the demo.
//!
//! ```text
//! fedcred-doubles [--listen 127.0.0.1:PORT] [--config FILE.json]
//! ```
//!
//! Prints the base URL on stdout once listening; runs until SIGTERM or Ctrl-C. With an
//! `alloydb` section in the config it also runs the AlloyDB Admin API and instance doubles
//! (their addresses go to stderr; fix them with `admin_listen` and `instance_listen`).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

use fedcred_doubles::alloydb::AlloyDbDoubles;
use fedcred_doubles::{Config, GoogleDoubles};

const USAGE: &str = "usage: fedcred-doubles [--listen 127.0.0.1:PORT] [--config FILE.json]";

struct Args {
    listen: SocketAddr,
    config: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        config: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--listen" => {
                let raw = value("--listen")?;
                args.listen = raw
                    .parse()
                    .map_err(|_| format!("--listen {raw:?} is not HOST:PORT\n{USAGE}"))?;
            }
            "--config" => args.config = Some(value("--config")?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn read_config(path: Option<&str>) -> Result<Config, String> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path} is not a doubles config: {e}"))
}

async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let config = match read_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("fedcred-doubles: {message}");
            return ExitCode::from(2);
        }
    };
    let alloydb_config = config.alloydb.clone();
    let doubles = match GoogleDoubles::start_at(args.listen, config).await {
        Ok(doubles) => doubles,
        Err(e) => {
            eprintln!("fedcred-doubles: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let alloydb = match alloydb_config {
        Some(config) => match AlloyDbDoubles::start(config, &doubles.tokeninfo_url()).await {
            Ok(alloydb) => Some(alloydb),
            Err(e) => {
                eprintln!("fedcred-doubles: cannot start the AlloyDB doubles: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    println!("{}", doubles.base_url());
    terminated().await;
    if let Some(alloydb) = alloydb {
        alloydb.shutdown().await;
    }
    doubles.shutdown().await;
    ExitCode::SUCCESS
}

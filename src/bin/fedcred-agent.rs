#![forbid(unsafe_code)]
//! `fedcred-agent`: `fedcred agent` alone, for hosts (EC2 instances, ECS tasks) and in-pod
//! sidecars. The same flags, environment and behaviour as `fedcred agent`; the binary links
//! only what the agent runs (no controller, webhook or Kubernetes client), so it is smaller
//! and a running agent maps fewer of its pages (BENCHMARKS.md, "Agent").

use std::process::ExitCode;

use clap::Parser;

/// Exchange the AWS identity of this host (EC2, ECS, a Pod Identity pod) as the
/// FederatedCredential in a file says, keep the token fresh in memory and serve it with the
/// GCE metadata protocol on loopback. No Kubernetes needed.
#[derive(Parser)]
#[command(name = "fedcred-agent", version, about)]
struct Cli {
    #[command(flatten)]
    agent: fedcred::cli::AgentArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match fedcred::cli::agent(Cli::parse().agent).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

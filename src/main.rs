#![forbid(unsafe_code)]
//! The `fedcred` binary: parses the command line and runs it; everything else lives in the
//! library ([`fedcred::cli`]).

use std::process::ExitCode;

use clap::Parser;

// One thread: the work is waiting on the network, and a single-threaded runtime spends about half
// the CPU per exchange of a multi-threaded one (BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match fedcred::cli::Cli::parse().run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

#![forbid(unsafe_code)]
//! The `fedcred` binary: flag parsing and wiring only; the work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use clap::{Parser, Subcommand};
use fedcred::api::FederatedCredential;
use fedcred::aws::Aws;
use fedcred::exchange::{ControllerIdentityPolicy, Defaults, Engine, plan};
use fedcred::google::{GoogleClient, RetryPolicy};
use fedcred::subject_token::{self, SubjectTokenRequest};

/// fedcred: AWS identities to Google Cloud access tokens, kept fresh for Kubernetes workloads.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the FederatedCredential CustomResourceDefinition as YAML.
    Crd,
    /// Print the URL-encoded AWS subject token for the credentials in AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.
    SubjectToken {
        /// AWS region to sign for; defaults to AWS_REGION, then AWS_DEFAULT_REGION.
        #[arg(long)]
        region: Option<String>,
        /// Full resource name of the Workload Identity provider (signed as
        /// x-goog-cloud-target-resource).
        #[arg(long)]
        audience: String,
        /// Signing time (RFC 3339); defaults to now.
        #[arg(long)]
        at: Option<String>,
        /// AWS STS endpoint to sign for instead of the regional one.
        #[arg(long)]
        sts_endpoint: Option<String>,
    },
    /// Run one full exchange for a FederatedCredential manifest and print what Google issued.
    Exchange {
        /// The FederatedCredential manifest (YAML or JSON); `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace for aws.serviceAccount; defaults to the manifest's, then `default`.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Also print the access token.
        #[arg(long)]
        show_token: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Crd => {
            print!("{}", fedcred::api::crd_yaml());
            Ok(())
        }
        Command::SubjectToken {
            region,
            audience,
            at,
            sts_endpoint,
        } => subject_token_command(region, &audience, at.as_deref(), sts_endpoint.as_deref()),
        Command::Exchange {
            file,
            namespace,
            show_token,
        } => exchange_command(&file, namespace, show_token).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn env_credentials() -> Result<Credentials, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let key = var("AWS_ACCESS_KEY_ID")
        .ok_or("AWS_ACCESS_KEY_ID is not set: export the AWS credentials to sign with")?;
    let secret = var("AWS_SECRET_ACCESS_KEY")
        .ok_or("AWS_SECRET_ACCESS_KEY is not set: export the AWS credentials to sign with")?;
    Ok(Credentials::new(
        key,
        secret,
        var("AWS_SESSION_TOKEN"),
        None,
        "environment",
    ))
}

fn env_region() -> Option<String> {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|r| !r.is_empty()))
}

fn subject_token_command(
    region: Option<String>,
    audience: &str,
    at: Option<&str>,
    sts_endpoint: Option<&str>,
) -> Result<(), String> {
    let credentials = env_credentials()?;
    let region = region
        .or_else(env_region)
        .ok_or("no region: pass --region or set AWS_REGION")?;
    let time = match at {
        Some(text) => {
            let ts: jiff::Timestamp = text.parse().map_err(|e| {
                format!("--at {text:?} is not an RFC 3339 time such as 2020-08-11T06:55:22Z: {e}")
            })?;
            SystemTime::from(ts)
        }
        None => SystemTime::now(),
    };
    let token = subject_token::build(
        &credentials,
        &SubjectTokenRequest {
            region: &region,
            audience,
            endpoint: sts_endpoint,
            time,
        },
    )
    .map_err(|e| e.to_string())?;
    println!("{}", token.expose());
    Ok(())
}

async fn exchange_command(
    file: &PathBuf,
    namespace: Option<String>,
    show_token: bool,
) -> Result<(), String> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("reading standard input: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?
    };
    let fc: FederatedCredential = serde_yaml::from_str(&text).map_err(|e| {
        format!(
            "{} is not a FederatedCredential manifest: {e}",
            file.display()
        )
    })?;
    let namespace = namespace
        .or_else(|| fc.metadata.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());

    let aws = Aws::from_env().await;
    let defaults = Defaults {
        region: aws.default_region().map(str::to_owned),
        // Run by hand, the command lends nobody else's identity: the caller's own AWS
        // credentials are used as they would be by any AWS tool.
        controller_identity: ControllerIdentityPolicy::new(["*"]),
        ..Defaults::default()
    };
    let key = plan(&namespace, &fc.spec, &defaults).map_err(|e| e.to_string())?;
    let kube = if fc.spec.aws.service_account.is_some() {
        Some(kube::Client::try_default().await.map_err(|e| {
            format!("aws.serviceAccount needs a Kubernetes API server; no usable kubeconfig or in-cluster config: {e}")
        })?)
    } else {
        None
    };
    let google = GoogleClient::new(RetryPolicy::default()).map_err(|e| e.to_string())?;
    let engine = Engine::new(aws, google, kube);
    let issued = engine
        .exchange(&key)
        .await
        .map_err(|e| format!("{} ({})", e.message, e.reason))?;
    println!("identity:        {}", key.describe());
    println!(
        "principal:       {}",
        issued.principal_arn.as_deref().unwrap_or("unknown")
    );
    println!(
        "service account: {}",
        issued
            .service_account
            .as_deref()
            .unwrap_or("none (federated token)")
    );
    println!(
        "db user:         {}",
        issued.db_user.as_deref().unwrap_or("none")
    );
    println!("scopes:          {}", key.scopes.join(" "));
    println!("expires at:      {}", issued.expires_at);
    if show_token {
        println!("access token:    {}", issued.access_token.expose());
    }
    Ok(())
}

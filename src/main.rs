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
    /// Run the controller: keep every FederatedCredential's Secret fresh.
    Controller(Box<ControllerArgs>),
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
    /// Serve the GCE metadata protocol on loopback from the FederatedCredential Secret mounted
    /// in the pod, so unchanged Google libraries find their token.
    MetadataServer {
        /// Directory where the Secret is mounted (the kubelet keeps it up to date).
        #[arg(long, env = "FEDCRED_SECRET_DIR", required_unless_present = "check")]
        secret_dir: Option<PathBuf>,
        /// Do not serve: ask the emulator at --listen whether it answers, and exit 0 if it
        /// does (the startup probe of the injected sidecar; the image has no shell or curl).
        #[arg(long)]
        check: bool,
        /// Address to listen on; keep it on loopback.
        #[arg(long, env = "FEDCRED_METADATA_LISTEN", default_value = fedcred::metadata::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// Log format: `json` or `text`.
        #[arg(long, env = "FEDCRED_LOG_FORMAT", default_value = "json")]
        log_format: String,
    },
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// Serve the admission webhook (`POST /mutate`, `GET /healthz`) over HTTPS on this address.
    #[arg(long, env = "FEDCRED_WEBHOOK_ADDRESS", requires = "fedcred_image")]
    webhook_address: Option<std::net::SocketAddr>,
    /// DNS names or IPs of the webhook's serving certificate: its Service's names.
    #[arg(
        long,
        env = "FEDCRED_WEBHOOK_DNS_NAMES",
        value_delimiter = ',',
        default_value = "fedcred-webhook.fedcred-system.svc"
    )]
    webhook_dns_names: Vec<String>,
    /// Secret (in the Lease's namespace) holding the webhook's CA and serving certificate,
    /// created and renewed by the controller.
    #[arg(
        long,
        env = "FEDCRED_WEBHOOK_SECRET",
        default_value = "fedcred-webhook-tls"
    )]
    webhook_secret: String,
    /// MutatingWebhookConfiguration whose `caBundle` the controller keeps current.
    #[arg(long, env = "FEDCRED_WEBHOOK_CONFIGURATION", default_value = "fedcred")]
    webhook_configuration: String,
    /// Image of the fedcred binary, injected into pods as the metadata sidecar.
    #[arg(long, env = "FEDCRED_IMAGE")]
    fedcred_image: Option<String>,
    /// AlloyDB Auth Proxy image injected for resources that name none in
    /// `spec.alloydb.proxy.image`.
    #[arg(long, env = "FEDCRED_PROXY_IMAGE", default_value = fedcred::inject::DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "FEDCRED_NAMESPACE")]
    namespace: Option<String>,
    /// Namespaces allowed to use the controller's own AWS identity (comma-separated, `*` for
    /// all). Default: none.
    #[arg(long, env = "FEDCRED_ALLOW_CONTROLLER_IDENTITY", value_delimiter = ',')]
    allow_controller_identity: Vec<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "FEDCRED_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: std::net::SocketAddr,
    /// Elect a leader through a Lease so several replicas can run.
    #[arg(long, env = "FEDCRED_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, then `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "fedcred-controller")]
    lease_name: String,
    /// This replica's identity in the Lease and in events (default: POD_NAME, then the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Google STS endpoint used when a resource names none.
    #[arg(long, env = "FEDCRED_GOOGLE_STS_URL", default_value = fedcred::google::DEFAULT_STS_URL)]
    google_sts_url: String,
    /// IAM Credentials endpoint used when a resource names none.
    #[arg(long, env = "FEDCRED_GOOGLE_IAM_CREDENTIALS_URL", default_value = fedcred::google::DEFAULT_IAM_CREDENTIALS_URL)]
    google_iam_credentials_url: String,
    /// Log format: `json` or `text`.
    #[arg(long, env = "FEDCRED_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Most FederatedCredentials reconciled at once.
    #[arg(long, env = "FEDCRED_CONCURRENCY", default_value_t = 32)]
    concurrency: u16,
}

// One thread: the work is waiting on the network, and a single-threaded runtime spends about half
// the CPU per exchange of a multi-threaded one (BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
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
        Command::Controller(args) => controller_command(*args).await,
        Command::Exchange {
            file,
            namespace,
            show_token,
        } => exchange_command(&file, namespace, show_token).await,
        Command::MetadataServer {
            check: true,
            listen,
            ..
        } => metadata_check(listen).await,
        Command::MetadataServer {
            secret_dir,
            listen,
            log_format,
            ..
        } => match secret_dir {
            Some(secret_dir) => metadata_server_command(secret_dir, listen, &log_format).await,
            None => Err("--secret-dir is required".to_owned()),
        },
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

fn init_logging(format: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().flatten_event(true).init(),
        "text" => builder.init(),
        other => return Err(format!("--log-format {other:?}: use json or text")),
    }
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// One request to the emulator's root, as Google's libraries ping it: success is a 200 that
/// carries `Metadata-Flavor: Google`.
async fn metadata_check(listen: std::net::SocketAddr) -> Result<(), String> {
    let host = fedcred::metadata::injected_env(&listen.to_string())
        .into_iter()
        .find(|(name, _)| name == "GCE_METADATA_HOST")
        .map(|(_, value)| value)
        .unwrap_or_else(|| listen.to_string());
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(1))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(format!("http://{host}/"))
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .map_err(|e| format!("the metadata emulator at {host} does not answer: {e}"))?;
    let flavored = response
        .headers()
        .get("metadata-flavor")
        .is_some_and(|v| v == "Google");
    if response.status().is_success() && flavored {
        Ok(())
    } else {
        Err(format!(
            "{host} answered HTTP {} {}",
            response.status(),
            if flavored {
                ""
            } else {
                "without Metadata-Flavor: Google"
            }
        ))
    }
}

async fn metadata_server_command(
    secret_dir: PathBuf,
    listen: std::net::SocketAddr,
    log_format: &str,
) -> Result<(), String> {
    init_logging(log_format)?;
    let options = fedcred::metadata::Options { secret_dir, listen };
    fedcred::metadata::serve(options, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn controller_command(args: ControllerArgs) -> Result<(), String> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use fedcred::leader::{Elector, LeaseSettings};
    use fedcred::metrics::Metrics;
    use kube::runtime::events::Reporter;

    init_logging(&args.log_format)?;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("no usable kubeconfig or in-cluster configuration: {e}"))?;
    let identity = args
        .identity
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "fedcred".to_owned());
    let aws = Aws::from_env().await;
    let defaults = Defaults {
        region: aws.default_region().map(str::to_owned),
        sts_url: args.google_sts_url,
        iam_credentials_url: args.google_iam_credentials_url,
        controller_identity: ControllerIdentityPolicy::new(args.allow_controller_identity),
    };
    let google = GoogleClient::new(RetryPolicy::default()).map_err(|e| e.to_string())?;
    let engine = Arc::new(Engine::new(aws, google, Some(client.clone())));
    let metrics = Metrics::shared();
    let ready = Arc::new(AtomicBool::new(false));
    let health = tokio::spawn(fedcred::health::serve(
        args.metrics_address,
        metrics.clone(),
        ready.clone(),
    ));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx_for_leader = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    // Every replica serves the webhook, leader or not.
    let webhook = match (args.webhook_address, args.fedcred_image.clone()) {
        (Some(address), Some(image)) => {
            let version = client
                .apiserver_version()
                .await
                .map_err(|e| format!("reading the API server version: {e}"))?;
            let mut inject = fedcred::inject::InjectConfig::new(image);
            inject.proxy_image = args.proxy_image.clone();
            inject.native_sidecars =
                fedcred::inject::native_sidecars_supported(&version.major, &version.minor);
            let settings = fedcred::webhook::CertSettings {
                namespace: args
                    .lease_namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_owned()),
                secret: args.webhook_secret.clone(),
                webhook_configuration: args.webhook_configuration.clone(),
                names: args.webhook_dns_names.clone(),
            };
            let certs = fedcred::webhook::ensure(&client, &settings)
                .await
                .map_err(|e| e.to_string())?;
            let cert = fedcred::webhook::ReloadingCert::new(&certs).map_err(|e| e.to_string())?;
            let tls = fedcred::webhook::reloading_server_config(cert.clone())
                .map_err(|e| e.to_string())?;
            let keeper = fedcred::webhook::keep_current(client.clone(), settings, cert);
            let keeper_stop = stopped(stop_rx.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = keeper => {}
                    () = keeper_stop => {}
                }
            });
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| format!("webhook address {address}: {e}"))?;
            let (cache, watch) =
                fedcred::webhook::watch_credentials(client.clone(), args.namespace.as_deref());
            let watch_stop = stopped(stop_rx.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = watch => {}
                    () = watch_stop => {}
                }
            });
            let router = fedcred::webhook::router(
                fedcred::webhook::Webhook::new(client.clone(), inject).with_cache(cache),
            );
            Some(tokio::spawn(fedcred::webhook::serve(
                listener,
                tls,
                router,
                stopped(stop_rx.clone()),
            )))
        }
        _ => None,
    };

    let elector = args.leader_election.then(|| {
        Elector::new(
            client.clone(),
            LeaseSettings {
                namespace: args
                    .lease_namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_owned()),
                name: args.lease_name.clone(),
                identity: identity.clone(),
                lease_duration: std::time::Duration::from_secs(15),
                renew_every: std::time::Duration::from_secs(5),
            },
        )
    });
    ready.store(true, Ordering::Relaxed);
    if let Some(elector) = &elector {
        tokio::select! {
            _ = elector.acquire() => {},
            _ = stopped(stop_rx.clone()) => { health.abort(); webhook.inspect(|w| w.abort()); return Ok(()); }
        }
    }
    // The controller stops on SIGTERM, or when leadership is lost.
    let lost = Arc::new(AtomicBool::new(false));
    let holder = elector.clone().map(|elector| {
        let lost = lost.clone();
        let stop = stop_tx_for_leader.clone();
        tokio::spawn(async move {
            elector.hold().await;
            lost.store(true, Ordering::Relaxed);
            let _ = stop.send(true);
        })
    });
    let shutdown = stopped(stop_rx.clone());
    let reporter = Reporter {
        controller: "fedcred".to_owned(),
        instance: Some(identity),
    };
    fedcred::controller::run(
        client,
        args.namespace.as_deref(),
        engine,
        defaults,
        metrics,
        reporter,
        args.concurrency,
        shutdown,
    )
    .await;
    if let Some(holder) = holder {
        holder.abort();
    }
    if let Some(elector) = &elector {
        elector.release().await;
    }
    health.abort();
    if let Some(webhook) = webhook {
        webhook.abort();
    }
    if lost.load(Ordering::Relaxed) {
        return Err("lost the leader Lease; exiting so a fresh start can compete again".to_owned());
    }
    Ok(())
}

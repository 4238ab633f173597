//! The `fedcred` command line: its flags, and what each command runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fedcred_core::error::ExchangeError;
use fedcred_core::exchange::{
    ControllerIdentityPolicy, Defaults, EndpointPolicy, IdentitySource, plan,
};
use fedcred_core::google::{DEFAULT_IAM_CREDENTIALS_URL, DEFAULT_STS_URL, RetryPolicy};
use fedcred_core::inject::{DEFAULT_CLOUDSQL_PROXY_IMAGE, DEFAULT_PROXY_IMAGE};
use fedcred_core::metadata::{DEFAULT_LISTEN, injected_env};
use fedcred_core::sensitive::Sensitive;
use fedcred_core::sigv4::AwsCredentials;
use fedcred_core::subject_token::{self, SubjectTokenRequest};

use crate::exchange::Engine;
use crate::exchange::aws::Aws;
use crate::exchange::google::GoogleClient;
use crate::{manifest, runtime};

/// fedcred: AWS identities to Google Cloud access tokens, kept fresh for Kubernetes workloads.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
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
        /// The manifest (YAML or JSON, one or more documents); `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Which FederatedCredential of the file, when it holds several.
        #[arg(long)]
        name: Option<String>,
        /// Namespace for aws.serviceAccount; defaults to the manifest's, then `default`.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Also print the access token.
        #[arg(long)]
        show_token: bool,
    },
    /// Exchange the AWS identity of this host (EC2, ECS, a Pod Identity pod) as the
    /// FederatedCredential in a file says, keep the token fresh in memory and serve it with
    /// the GCE metadata protocol on loopback. No Kubernetes needed.
    Agent(Box<AgentArgs>),
    /// Print what Google Cloud and AWS need for FederatedCredentials, as `gcloud`/`aws iam`
    /// commands or Terraform: pool, provider and condition, bindings, roles, AlloyDB users,
    /// trust policies.
    Setup(Box<crate::setup::Args>),
    /// Walk one FederatedCredential's chain (resource, ServiceAccount and role, principal,
    /// provider condition, last exchange, Secret, pods) and say what holds and what to fix.
    /// Exits 1 when a step fails.
    Doctor(Box<crate::doctor::Args>),
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
        #[arg(long, env = "FEDCRED_METADATA_LISTEN", default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Log format: `json` or `text`.
        #[arg(long, env = "FEDCRED_LOG_FORMAT", default_value = "json")]
        log_format: String,
        /// IAM Credentials base URL, where ID tokens are minted (`…/identity?audience=`).
        #[arg(long, env = "FEDCRED_GOOGLE_IAM_CREDENTIALS_URL", default_value = DEFAULT_IAM_CREDENTIALS_URL)]
        iam_credentials_url: String,
    },
}

/// `fedcred agent` (and the `fedcred-agent` binary): the exchange where the AWS credentials
/// are, served as GCE metadata.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// The manifest holding the FederatedCredential (YAML or JSON, one or more documents).
    #[arg(
        short = 'f',
        long = "filename",
        env = "FEDCRED_CREDENTIAL_FILE",
        required_unless_present_any = ["check", "credential"],
        conflicts_with = "credential"
    )]
    file: Option<PathBuf>,
    /// The manifest itself instead of a file, for places without files such as an ECS task
    /// definition's environment.
    #[arg(long, env = "FEDCRED_CREDENTIAL", hide_env_values = true)]
    credential: Option<String>,
    /// Which FederatedCredential of the file, when it holds several.
    #[arg(long, env = "FEDCRED_CREDENTIAL_NAME")]
    name: Option<String>,
    /// Do not serve: ask the agent at --listen for its token and exit 0 only if it serves one
    /// (a container health check; the image has no shell or curl). Prints no token.
    #[arg(long)]
    check: bool,
    /// Address to serve the metadata protocol on; keep it on loopback.
    #[arg(long, env = "FEDCRED_METADATA_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// AWS region to sign for when the file names none; defaults to AWS_REGION, then
    /// AWS_DEFAULT_REGION.
    #[arg(long, env = "FEDCRED_AWS_REGION")]
    region: Option<String>,
    /// Serve /healthz, /readyz (200 once a token is held) and /metrics on this address.
    #[arg(long, env = "FEDCRED_METRICS_ADDRESS")]
    metrics_address: Option<SocketAddr>,
    /// Log format: `json` or `text`.
    #[arg(long, env = "FEDCRED_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Shortest token lifetime (seconds) accepted from Google; a shorter-lived token is
    /// refused rather than refreshed in a loop.
    #[arg(long, env = "FEDCRED_MIN_TOKEN_SECONDS", default_value_t = 60)]
    min_token_seconds: u64,
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// Serve the admission webhook (`POST /mutate`, `GET /healthz`) over HTTPS on this address.
    #[arg(long, env = "FEDCRED_WEBHOOK_ADDRESS", requires = "fedcred_image")]
    webhook_address: Option<SocketAddr>,
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
    /// Most webhook connections served at once; with all taken, further clients wait in the
    /// listening socket's backlog until one ends.
    #[arg(
        long,
        env = "FEDCRED_WEBHOOK_MAX_CONNECTIONS",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..=65536)
    )]
    webhook_max_connections: u32,
    /// MiB of webhook request bodies read at once (at least 4, one body at the limit); a
    /// request past it is answered 503 with Retry-After.
    #[arg(
        long,
        env = "FEDCRED_WEBHOOK_BODY_BUDGET_MIB",
        default_value_t = 32,
        value_parser = clap::value_parser!(u32).range(4..=65536)
    )]
    webhook_body_budget_mib: u32,
    /// MutatingWebhookConfiguration whose `caBundle` the controller keeps current.
    #[arg(long, env = "FEDCRED_WEBHOOK_CONFIGURATION", default_value = "fedcred")]
    webhook_configuration: String,
    /// Image of the fedcred binary, injected into pods as the metadata sidecar.
    #[arg(long, env = "FEDCRED_IMAGE")]
    fedcred_image: Option<String>,
    /// AlloyDB Auth Proxy image injected for resources that name none in
    /// `spec.alloydb.proxy.image`.
    #[arg(long, env = "FEDCRED_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// Cloud SQL Auth Proxy image injected for resources that name none in
    /// `spec.cloudsql.proxy.image`.
    #[arg(long, env = "FEDCRED_CLOUDSQL_PROXY_IMAGE", default_value = DEFAULT_CLOUDSQL_PROXY_IMAGE)]
    cloudsql_proxy_image: String,
    /// AlloyDB Admin API endpoint the injected AlloyDB proxies use
    /// (`--alloydbadmin-api-endpoint`), for a private or regional endpoint; default Google's.
    #[arg(long, env = "FEDCRED_ALLOYDB_ADMIN_ENDPOINT")]
    alloydb_admin_endpoint: Option<String>,
    /// Cloud SQL Admin API endpoint the injected Cloud SQL proxies use
    /// (`--sqladmin-api-endpoint`), for a private or regional endpoint; default Google's.
    #[arg(long, env = "FEDCRED_CLOUDSQL_ADMIN_ENDPOINT")]
    cloudsql_admin_endpoint: Option<String>,
    /// Watch only these namespaces (comma-separated or repeated; default: all). Its
    /// permissions then need to cover only them (the chart's `watchNamespaces`).
    #[arg(long, env = "FEDCRED_NAMESPACE", value_delimiter = ',')]
    namespace: Vec<String>,
    /// Roll the Deployments, StatefulSets and DaemonSets that use a resource when what is
    /// injected changes (needs list and patch on them). Off, the change is recorded and an
    /// event (`RolloutsOff`) asks for a restart.
    #[arg(long, env = "FEDCRED_ROLLOUTS", default_value_t = true, action = clap::ArgAction::Set)]
    rollouts: bool,
    /// Namespaces allowed to use the controller's own AWS identity (comma-separated):
    /// `NAMESPACE` (as is, or chained into any role), `NAMESPACE=ROLE_ARN` (only chained into
    /// that role; repeat for more), `*` (every namespace). Default: none.
    #[arg(long, env = "FEDCRED_ALLOW_CONTROLLER_IDENTITY", value_delimiter = ',')]
    allow_controller_identity: Vec<String>,
    /// Endpoints resources may name in aws.stsEndpoint and google.endpoints.* besides AWS's
    /// and Google's own (comma-separated `scheme://host[:port]`, port `*` for any). They
    /// receive credentials. Default: none.
    #[arg(long, env = "FEDCRED_ALLOW_ENDPOINTS", value_delimiter = ',')]
    allow_endpoint: Vec<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "FEDCRED_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
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
    #[arg(long, env = "FEDCRED_GOOGLE_STS_URL", default_value = DEFAULT_STS_URL)]
    google_sts_url: String,
    /// IAM Credentials endpoint used when a resource names none.
    #[arg(long, env = "FEDCRED_GOOGLE_IAM_CREDENTIALS_URL", default_value = DEFAULT_IAM_CREDENTIALS_URL)]
    google_iam_credentials_url: String,
    /// Log format: `json` or `text`.
    #[arg(long, env = "FEDCRED_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Most FederatedCredentials reconciled at once (with several --namespace, shared evenly
    /// by them). One namespace may use a quarter of them for exchanges, so a namespace whose
    /// peers hang cannot hold up the others.
    #[arg(long, env = "FEDCRED_CONCURRENCY", default_value_t = 32)]
    concurrency: u16,
    /// Most exchanges one namespace may have in flight at once (default: a quarter of
    /// --concurrency). A cluster with one tenant, or few namespaces with many resources each,
    /// may raise it up to --concurrency; a lower share isolates tenants better.
    #[arg(long, env = "FEDCRED_NAMESPACE_SHARE", value_parser = clap::value_parser!(u16).range(1..))]
    namespace_share: Option<u16>,
    /// Shortest token lifetime (seconds) accepted from Google; a shorter-lived token is
    /// refused rather than refreshed in a loop.
    #[arg(long, env = "FEDCRED_MIN_TOKEN_SECONDS", default_value_t = 60)]
    min_token_seconds: u64,
}

/// Why a command failed; printed as `error: …` with exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is not set: export the AWS credentials to sign with")]
    MissingEnv(&'static str),
    #[error("no region: pass --region or set AWS_REGION")]
    NoRegion,
    #[error("--at {0:?} is not an RFC 3339 time such as 2020-08-11T06:55:22Z")]
    BadTime(String),
    #[error("--log-format {0:?}: use json or text")]
    LogFormat(String),
    #[error(transparent)]
    SubjectToken(#[from] subject_token::SubjectTokenError),
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    #[error("{0} ({reason})", reason = .0.reason)]
    Exchange(ExchangeError),
    #[error(
        "aws.serviceAccount needs a Kubernetes API server; no usable kubeconfig or in-cluster config: {0}"
    )]
    NoKubernetes(kube::Error),
    #[error(transparent)]
    Controller(#[from] runtime::Error),
    #[error(transparent)]
    MetadataServer(#[from] crate::metadata::Error),
    #[error(transparent)]
    Agent(#[from] crate::agent::Error),
    #[error(transparent)]
    Setup(#[from] crate::setup::Error),
    #[error(transparent)]
    Doctor(#[from] crate::doctor::Error),
    #[error("the metadata emulator at {host} does not answer: {problem}")]
    MetadataCheck { host: String, problem: String },
}

impl Cli {
    /// Runs the command.
    pub async fn run(self) -> Result<(), Error> {
        match self.command {
            Command::Crd => {
                print!("{}", crd_yaml());
                Ok(())
            }
            Command::SubjectToken {
                region,
                audience,
                at,
                sts_endpoint,
            } => subject_token(region, &audience, at.as_deref(), sts_endpoint.as_deref()),
            Command::Controller(args) => controller(*args).await,
            Command::Doctor(args) => Ok(crate::doctor::run(*args).await?),
            Command::Setup(args) => {
                print!("{}", crate::setup::run(*args).await?);
                Ok(())
            }
            Command::Exchange {
                file,
                name,
                namespace,
                show_token,
            } => exchange(&file, name.as_deref(), namespace, show_token).await,
            Command::MetadataServer {
                check: true,
                listen,
                ..
            } => metadata_check(listen, "/").await,
            Command::Agent(args) => agent(*args).await,
            Command::MetadataServer {
                secret_dir,
                listen,
                log_format,
                iam_credentials_url,
                ..
            } => {
                init_logging(&log_format)?;
                let options = crate::metadata::Options {
                    // clap requires it unless --check is given.
                    secret_dir: secret_dir.unwrap_or_default(),
                    listen,
                    iam_credentials_url,
                };
                Ok(crate::metadata::serve(options, runtime::shutdown_signal()).await?)
            }
        }
    }
}

/// Runs `fedcred agent` (or `fedcred-agent`) with `args`: serves until SIGTERM, or with
/// `--check` asks a running agent for its token.
pub async fn agent(args: AgentArgs) -> Result<(), Error> {
    if args.check {
        return metadata_check(args.listen, TOKEN_PATH).await;
    }
    init_logging(&args.log_format)?;
    let options = crate::agent::Options {
        // clap requires one of the two unless --check is given.
        manifest: match (args.file, args.credential) {
            (Some(file), _) => crate::agent::Manifest::File(file),
            (None, text) => crate::agent::Manifest::Text(text.unwrap_or_default()),
        },
        name: args.name,
        listen: args.listen,
        region: args.region,
        metrics_address: args.metrics_address,
        min_token_lifetime: Duration::from_secs(args.min_token_seconds),
    };
    Ok(crate::agent::run(options, runtime::shutdown_signal()).await?)
}

/// The CRD as YAML, exactly as `fedcred crd` prints it and `crds/` stores it.
pub fn crd_yaml() -> String {
    // Serializing a value built by kube's own derive cannot fail; a failure here is a bug.
    serde_norway::to_string(&fedcred_core::api::crd()).expect("the derived CRD serializes")
}

fn env(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn subject_token(
    region: Option<String>,
    audience: &str,
    at: Option<&str>,
    sts_endpoint: Option<&str>,
) -> Result<(), Error> {
    let credentials = AwsCredentials {
        access_key_id: env("AWS_ACCESS_KEY_ID").ok_or(Error::MissingEnv("AWS_ACCESS_KEY_ID"))?,
        secret_access_key: Sensitive::new(
            env("AWS_SECRET_ACCESS_KEY").ok_or(Error::MissingEnv("AWS_SECRET_ACCESS_KEY"))?,
        ),
        session_token: env("AWS_SESSION_TOKEN").map(Sensitive::new),
    };
    let region = region
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .ok_or(Error::NoRegion)?;
    let time = match at {
        Some(text) => text.parse().map_err(|_| Error::BadTime(text.to_owned()))?,
        None => jiff::Timestamp::now(),
    };
    let token = subject_token::build(
        &credentials,
        &SubjectTokenRequest {
            region: &region,
            audience,
            endpoint: sts_endpoint,
            time,
        },
    )?;
    println!("{}", token.expose());
    Ok(())
}

async fn exchange(
    file: &std::path::Path,
    name: Option<&str>,
    namespace: Option<String>,
    show_token: bool,
) -> Result<(), Error> {
    let fc = manifest::load(file, name)?;
    let namespace = namespace
        .or_else(|| fc.metadata.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    let aws = Aws::from_env().await;
    let defaults = Defaults {
        region: aws.default_region().map(str::to_owned),
        // Run by hand, the command lends nobody else's identity: the caller's own AWS
        // credentials are used as they would be by any AWS tool.
        controller_identity: ControllerIdentityPolicy::everyone(),
        endpoints: EndpointPolicy::any(),
        // Run by hand on the caller's host: a token file there is the caller's own.
        token_files: true,
        ..Defaults::default()
    };
    let key = plan(&namespace, &fc.spec, &defaults).map_err(Error::Exchange)?;
    let needs_kubernetes = matches!(
        key.source,
        IdentitySource::ServiceAccount { .. } | IdentitySource::KubernetesToken { .. }
    );
    let kube = match needs_kubernetes {
        true => Some(
            kube::Client::try_default()
                .await
                .map_err(Error::NoKubernetes)?,
        ),
        false => None,
    };
    let google = GoogleClient::new(RetryPolicy::default()).map_err(Error::Exchange)?;
    let issued = Engine::new(aws, google, kube)
        .exchange(&key)
        .await
        .map_err(Error::Exchange)?;
    let or = |v: Option<&str>, none: &'static str| v.unwrap_or(none).to_owned();
    println!("identity:        {}", key.describe());
    println!(
        "principal:       {}",
        or(
            issued
                .principal_arn
                .as_deref()
                .or(issued.subject.as_deref()),
            "unknown"
        )
    );
    println!(
        "service account: {}",
        or(issued.service_account.as_deref(), "none (federated token)")
    );
    println!("db user:         {}", or(issued.db_user.as_deref(), "none"));
    println!("scopes:          {}", key.scopes.join(" "));
    println!("expires at:      {}", issued.expires_at);
    if show_token {
        println!("access token:    {}", issued.access_token.expose());
    }
    Ok(())
}

fn init_logging(format: &str) -> Result<(), Error> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().flatten_event(true).init(),
        "text" => builder.init(),
        other => return Err(Error::LogFormat(other.to_owned())),
    }
    Ok(())
}

/// The token path: `fedcred agent --check` passes only when a token is served.
const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// One request to the emulator at `path` (its root, as Google's libraries ping it, or the
/// token): success is a 200 that carries `Metadata-Flavor: Google`. The body of a refusal is
/// part of the message (it names the reason, never a token); a served token is not printed.
async fn metadata_check(listen: SocketAddr, path: &str) -> Result<(), Error> {
    let host = injected_env(&listen.to_string())
        .into_iter()
        .find(|(name, _)| name == "GCE_METADATA_HOST")
        .map(|(_, value)| value)
        .unwrap_or_else(|| listen.to_string());
    let failed = |problem: String| Error::MetadataCheck {
        host: host.clone(),
        problem,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .no_proxy()
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let response = client
        .get(format!("http://{host}{path}"))
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let flavored = response
        .headers()
        .get("metadata-flavor")
        .is_some_and(|v| v == "Google");
    let status = response.status();
    match (status.is_success(), flavored) {
        (true, true) => Ok(()),
        (_, true) => {
            let body = response.text().await.unwrap_or_default();
            Err(failed(format!(
                "it answered HTTP {status}: {}",
                body.trim()
            )))
        }
        _ => Err(failed(format!(
            "it answered HTTP {} without Metadata-Flavor: Google",
            response.status()
        ))),
    }
}

async fn controller(args: ControllerArgs) -> Result<(), Error> {
    init_logging(&args.log_format)?;
    let lease_namespace = args.lease_namespace.unwrap_or_else(|| "default".to_owned());
    let identity = args
        .identity
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "fedcred".to_owned());
    let webhook = match (args.webhook_address, args.fedcred_image) {
        (Some(address), Some(fedcred_image)) => Some(runtime::WebhookOptions {
            address,
            dns_names: args.webhook_dns_names,
            secret: args.webhook_secret,
            configuration: args.webhook_configuration,
            fedcred_image,
            proxy_image: args.proxy_image,
            cloudsql_proxy_image: args.cloudsql_proxy_image,
            alloydb_admin_endpoint: args.alloydb_admin_endpoint,
            cloudsql_admin_endpoint: args.cloudsql_admin_endpoint,
            max_connections: args.webhook_max_connections as usize,
            body_budget_bytes: args.webhook_body_budget_mib as usize * 1024 * 1024,
        }),
        _ => None,
    };
    let options = runtime::Options {
        // `--namespace=` means all namespaces, never one named "".
        namespaces: args
            .namespace
            .into_iter()
            .filter(|ns| !ns.is_empty())
            .collect(),
        rollouts: args.rollouts,
        allow_controller_identity: args.allow_controller_identity,
        allow_endpoints: args.allow_endpoint,
        metrics_address: args.metrics_address,
        leader_election: args.leader_election,
        lease_namespace,
        lease_name: args.lease_name,
        identity,
        google_sts_url: args.google_sts_url,
        google_iam_credentials_url: args.google_iam_credentials_url,
        concurrency: args.concurrency,
        namespace_share: args.namespace_share,
        min_token_lifetime: Duration::from_secs(args.min_token_seconds),
        webhook,
    };
    Ok(runtime::controller(options, runtime::shutdown_signal()).await?)
}

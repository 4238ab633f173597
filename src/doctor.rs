//! `fedcred doctor`: observes one FederatedCredential's chain in the cluster (the resource, its
//! ServiceAccount, its Secret's keys and expiry but never its token, the pods naming it) and
//! prints what [`fedcred_core::doctor::diagnose`] decides, as text or JSON.

use std::path::PathBuf;

use fedcred_core::api::FederatedCredential;
use fedcred_core::doctor::{self, Observed, PodSeen, Report, SecretSeen, ServiceAccountSeen};
use fedcred_core::inject::METADATA_CONTAINER;
use fedcred_core::names::{CREDENTIAL_ANNOTATION, INJECT_LABEL, secret_name};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::ListParams;
use kube::{Api, Resource, ResourceExt};

use fedcred_core::error::ExchangeError;
use fedcred_core::exchange::{ControllerIdentityPolicy, Defaults, EndpointPolicy, plan};
use fedcred_core::google::RetryPolicy;

use crate::exchange::Engine;
use crate::exchange::aws::Aws;
use crate::exchange::google::GoogleClient;
use crate::manifest;

/// How the report is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// `fedcred doctor`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The resource, as NAMESPACE/NAME (or NAME with --namespace).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub target: Option<String>,
    /// Read the resource from this manifest instead (its status, if any, from the cluster).
    #[arg(short = 'f', long = "filename")]
    pub file: Option<PathBuf>,
    /// Which FederatedCredential of the file, when it holds several.
    #[arg(long)]
    pub name: Option<String>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The provider's attribute condition, to evaluate for the principal:
    /// `gcloud iam workload-identity-pools providers describe … --format='value(attributeCondition)'`.
    #[arg(long)]
    pub condition: Option<String>,
    /// The provider's attribute mapping (`google.subject=assertion.arn,…`); defaults to the one
    /// `fedcred setup` prints.
    #[arg(long)]
    pub mapping: Option<String>,
    /// Also try one exchange now, as `fedcred exchange` does, with your own AWS credentials
    /// (and kubeconfig, for the ServiceAccount's token): AWS's, Google STS's and IAM
    /// Credentials' answers today, not at the controller's last refresh.
    #[arg(long)]
    pub exchange: bool,
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Format,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0:?}: name the resource as NAMESPACE/NAME, or NAME with --namespace")]
    Target(String),
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    #[error("no Kubernetes cluster to look at: {0}")]
    Kubernetes(#[source] kube::Error),
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0} of the resource's checks failed (see above)")]
    Failed(usize),
}

fn read_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Read { what, source }
}

/// Looks at the cluster and diagnoses; the report, and whether anything failed.
pub async fn report(args: &Args) -> Result<Report, Error> {
    let from_file = match &args.file {
        Some(file) => Some(manifest::load(file, args.name.as_deref())?),
        None => None,
    };
    let (namespace, name) = match (&args.target, &from_file) {
        (_, Some(fc)) => (
            fc.namespace()
                .or_else(|| args.namespace.clone())
                .unwrap_or_else(|| "default".to_owned()),
            fc.name_any(),
        ),
        (Some(target), None) => match (target.split_once('/'), &args.namespace) {
            (Some((ns, name)), _) if !ns.is_empty() && !name.is_empty() => {
                (ns.to_owned(), name.to_owned())
            }
            (None, Some(ns)) if !target.is_empty() => (ns.clone(), target.clone()),
            _ => return Err(Error::Target(target.clone())),
        },
        (None, None) => return Err(Error::Target(String::new())),
    };
    let client = kube::Client::try_default()
        .await
        .map_err(Error::Kubernetes)?;
    let in_cluster = Api::<FederatedCredential>::namespaced(client.clone(), &namespace)
        .get_opt(&name)
        .await
        .map_err(read_err(format!("FederatedCredential {namespace}/{name}")))?;
    // A resource from a file is judged as written, with the cluster's status when it exists.
    let resource = match (from_file, in_cluster) {
        (Some(mut fc), cluster) => {
            fc.status = cluster.and_then(|c| c.status);
            fc.meta_mut().namespace = Some(namespace.clone());
            Some(fc)
        }
        (None, cluster) => cluster,
    };
    let mut observed = Observed {
        namespace: namespace.clone(),
        name: name.clone(),
        resource: None,
        service_account: None,
        secret: None,
        pods: Vec::new(),
        condition: args.condition.clone(),
        mapping: args.mapping.clone(),
        tried: None,
        now: jiff::Timestamp::now(),
    };
    if let Some(fc) = &resource {
        if args.exchange {
            observed.tried = Some(try_exchange(&namespace, fc, client.clone()).await);
        }
        if let Some(sa) = fc
            .spec
            .aws
            .as_ref()
            .and_then(|aws| aws.service_account.as_ref())
        {
            let found = Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
                .get_opt(&sa.name)
                .await
                .map_err(read_err(format!("ServiceAccount {namespace}/{}", sa.name)))?;
            observed.service_account = Some(match found {
                Some(sa) => ServiceAccountSeen::Found(sa.annotations().clone()),
                None => ServiceAccountSeen::Missing,
            });
        }
        let secret = secret_name(fc);
        let found = Api::<Secret>::namespaced(client.clone(), &namespace)
            .get_opt(&secret)
            .await
            .map_err(read_err(format!("Secret {namespace}/{secret}")))?;
        observed.secret = found.map(|s| secret_seen(&s, fc));
        let pods = Api::<Pod>::namespaced(client, &namespace)
            .list(&ListParams::default())
            .await
            .map_err(read_err(format!("pods of {namespace}")))?;
        observed.pods = pods
            .items
            .iter()
            .filter(|p| {
                p.annotations().get(CREDENTIAL_ANNOTATION).map(|v| v.trim()) == Some(name.as_str())
            })
            .map(pod_seen)
            .collect();
    }
    observed.resource = resource;
    Ok(doctor::diagnose(&observed))
}

/// One exchange for `fc` with the caller's credentials, as `fedcred exchange` runs it; the
/// token is dropped, only what it says about the chain is kept.
async fn try_exchange(
    namespace: &str,
    fc: &FederatedCredential,
    client: kube::Client,
) -> Result<doctor::Tried, ExchangeError> {
    let aws = Aws::from_env().await;
    let defaults = Defaults {
        region: aws.default_region().map(str::to_owned),
        // Run by hand: the caller's own credentials, as any AWS tool would use them.
        controller_identity: ControllerIdentityPolicy::everyone(),
        endpoints: EndpointPolicy::any(),
        ..Defaults::default()
    };
    let key = plan(namespace, &fc.spec, &defaults)?;
    let google = GoogleClient::new(RetryPolicy::default())?;
    let issued = Engine::new(aws, google, Some(client))
        .exchange(&key)
        .await?;
    Ok(doctor::Tried {
        principal: issued.principal_arn.clone(),
        service_account: issued.service_account.clone(),
        expires_at: issued.expires_at.to_string(),
    })
}

/// The Secret's keys and expiry; the token itself is never read into the report.
fn secret_seen(secret: &Secret, fc: &FederatedCredential) -> SecretSeen {
    let uid = fc.meta().uid.as_deref();
    let owned = uid.is_some_and(|uid| secret.owner_references().iter().any(|o| o.uid == uid))
        // A resource read from a file has no uid: any owner of its kind will do.
        || (uid.is_none()
            && secret
                .owner_references()
                .iter()
                .any(|o| o.kind == "FederatedCredential" && o.name == fc.name_any()));
    let data = secret.data.clone().unwrap_or_default();
    SecretSeen {
        owned,
        keys: data.keys().cloned().collect(),
        expiry: data
            .get("expiry")
            .and_then(|v| String::from_utf8(v.0.clone()).ok()),
    }
}

fn pod_seen(pod: &Pod) -> PodSeen {
    let spec = pod.spec.as_ref();
    let injected = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == METADATA_CONTAINER)
    });
    PodSeen {
        name: pod.name_any(),
        opted_in: pod.labels().get(INJECT_LABEL).map(String::as_str) == Some("true"),
        injected,
    }
}

/// Runs `fedcred doctor`: prints the report; an error when a step failed.
pub async fn run(args: Args) -> Result<(), Error> {
    let report = report(&args).await?;
    match args.output {
        Format::Text => print!("{}", report.text()),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
    }
    match report.failures() {
        0 => Ok(()),
        n => Err(Error::Failed(n)),
    }
}

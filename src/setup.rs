//! `fedcred setup`: reads FederatedCredentials from files (or the cluster), resolves each IRSA
//! role from the ServiceAccount that names it (and each token file's ServiceAccount from
//! `--subject`), and prints what [`fedcred_core::setup`] decides both clouds need, as commands
//! or Terraform.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fedcred_core::api::FederatedCredential;
use fedcred_core::names::ROLE_ARN_ANNOTATION;
use fedcred_core::setup::{self, Options, Resource};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::Value;

use crate::manifest;

/// How the plan is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A shell script of `gcloud` and `aws iam` commands.
    Commands,
    /// Terraform for the `google` and `aws` providers.
    Terraform,
}

/// `fedcred setup`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Manifests holding the FederatedCredentials (YAML or JSON, one or more documents each;
    /// `-` reads standard input). ServiceAccounts in them supply IRSA roles.
    #[arg(
        short = 'f',
        long = "filename",
        required_unless_present = "from_cluster"
    )]
    pub files: Vec<PathBuf>,
    /// Read the FederatedCredentials (and their ServiceAccounts' role annotations) from the
    /// cluster of the current kubeconfig instead: all namespaces, or --namespace.
    #[arg(long, conflicts_with = "files")]
    pub from_cluster: bool,
    /// Namespace of resources that name none in a file; with --from-cluster, the only namespace
    /// read.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// What to print.
    #[arg(short, long, value_enum, default_value = "commands")]
    pub output: Format,
    /// The cluster's ServiceAccount token issuer, exactly the tokens' `iss`: the "issuer" of
    /// `kubectl get --raw /.well-known/openid-configuration` (on EKS, `aws eks describe-cluster
    /// --query cluster.identity.oidc.issuer`). IRSA trust policies name it; the OIDC provider of
    /// spec.kubernetes resources needs it.
    #[arg(long)]
    pub oidc_issuer: Option<String>,
    /// The controller's own IAM role, which roles of aws.controllerIdentity.roleArn trust.
    #[arg(long)]
    pub controller_role_arn: Option<String>,
    /// The IAM role of an IRSA ServiceAccount that neither the resource nor a ServiceAccount in
    /// the files names: `NAMESPACE/SERVICEACCOUNT=ARN`; repeatable.
    #[arg(long = "role-arn", value_name = "NAMESPACE/SERVICEACCOUNT=ARN")]
    pub role_arns: Vec<String>,
    /// The ServiceAccount whose token a kubernetes.tokenPath resource (fedcred agent) reads,
    /// which the resource does not name: `NAMESPACE/NAME=system:serviceaccount:NS:SA`, keyed by
    /// the FederatedCredential; repeatable.
    #[arg(
        long = "subject",
        value_name = "NAMESPACE/NAME=system:serviceaccount:NS:SA"
    )]
    pub subjects: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    #[error("--role-arn {0:?}: expected NAMESPACE/SERVICEACCOUNT=arn:aws:iam::ACCOUNT:role/NAME")]
    RoleFlag(String),
    #[error(
        "--subject {0:?}: expected NAMESPACE/NAME=system:serviceaccount:NS:SA (the FederatedCredential, then its token's sub)"
    )]
    SubjectFlag(String),
    #[error("no Kubernetes cluster to read from: {0}")]
    Kubernetes(#[source] kube::Error),
    #[error("listing {what}: {source}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("no FederatedCredential found{0}")]
    Nothing(String),
    #[error(
        "cannot plan for every resource:\n{}",
        .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n")
    )]
    Plan(Vec<setup::SetupError>),
}

/// `(namespace, service account)` → the role its annotation names.
type Roles = BTreeMap<(String, String), String>;

fn roles_from_flags(flags: &[String]) -> Result<Roles, Error> {
    let mut roles = Roles::new();
    for flag in flags {
        let (account, arn) = flag
            .split_once('=')
            .ok_or_else(|| Error::RoleFlag(flag.clone()))?;
        let (namespace, name) = account
            .split_once('/')
            .ok_or_else(|| Error::RoleFlag(flag.clone()))?;
        if setup::parse_role_arn(arn).is_none() || namespace.is_empty() || name.is_empty() {
            return Err(Error::RoleFlag(flag.clone()));
        }
        roles.insert((namespace.to_owned(), name.to_owned()), arn.to_owned());
    }
    Ok(roles)
}

/// `(namespace, FederatedCredential)` → the `sub` of the token file it reads.
type Subjects = BTreeMap<(String, String), String>;

fn subjects_from_flags(flags: &[String]) -> Result<Subjects, Error> {
    let mut subjects = Subjects::new();
    for flag in flags {
        let parsed = flag.split_once('=').and_then(|(resource, subject)| {
            let (namespace, name) = resource.split_once('/')?;
            let valid = !namespace.is_empty()
                && !name.is_empty()
                && setup::parse_subject(subject).is_some();
            valid.then(|| ((namespace.to_owned(), name.to_owned()), subject.to_owned()))
        });
        let (key, subject) = parsed.ok_or_else(|| Error::SubjectFlag(flag.clone()))?;
        subjects.insert(key, subject);
    }
    Ok(subjects)
}

fn roles_from_documents(documents: &[Value], default_namespace: &str) -> Roles {
    documents
        .iter()
        .filter(|v| v["kind"] == "ServiceAccount")
        .filter_map(|v| {
            let meta = &v["metadata"];
            let role = meta["annotations"][ROLE_ARN_ANNOTATION].as_str()?;
            let namespace = meta["namespace"].as_str().unwrap_or(default_namespace);
            Some((
                (namespace.to_owned(), meta["name"].as_str()?.to_owned()),
                role.to_owned(),
            ))
        })
        .collect()
}

/// The resources with their roles resolved: the spec's, else the ServiceAccount's annotation,
/// else the flag's; and the subjects of token files from the flags.
fn resolve(
    credentials: Vec<FederatedCredential>,
    default_namespace: &str,
    annotations: &Roles,
    flags: &Roles,
    subjects: &Subjects,
) -> Vec<Resource> {
    credentials
        .into_iter()
        .map(|fc| {
            let namespace = fc
                .namespace()
                .unwrap_or_else(|| default_namespace.to_owned());
            let resolved_role_arn = fc
                .spec
                .aws
                .as_ref()
                .and_then(|aws| aws.service_account.as_ref())
                .and_then(|sa| {
                    let key = (namespace.clone(), sa.name.clone());
                    sa.role_arn
                        .clone()
                        .or_else(|| annotations.get(&key).cloned())
                        .or_else(|| flags.get(&key).cloned())
                });
            let name = fc.name_any();
            let resolved_subject = fc
                .spec
                .kubernetes
                .as_ref()
                .filter(|k| k.token_path.is_some())
                .and_then(|_| subjects.get(&(namespace.clone(), name.clone())).cloned());
            Resource {
                name,
                namespace,
                spec: fc.spec,
                resolved_role_arn,
                resolved_subject,
            }
        })
        .collect()
}

/// Reads the resources as `args` say and returns what to print.
pub async fn run(args: Args) -> Result<String, Error> {
    let flags = roles_from_flags(&args.role_arns)?;
    let subjects = subjects_from_flags(&args.subjects)?;
    let default_namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let resources = if args.from_cluster {
        let client = kube::Client::try_default()
            .await
            .map_err(Error::Kubernetes)?;
        let (fcs, accounts): (Api<FederatedCredential>, Api<ServiceAccount>) = match &args.namespace
        {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client, ns),
            ),
            None => (Api::all(client.clone()), Api::all(client)),
        };
        let credentials = fcs
            .list(&ListParams::default())
            .await
            .map_err(|source| Error::List {
                what: "FederatedCredentials",
                source,
            })?
            .items;
        if credentials.is_empty() {
            return Err(Error::Nothing(match &args.namespace {
                Some(ns) => format!(" in namespace {ns}"),
                None => " in the cluster".to_owned(),
            }));
        }
        let annotations: Roles = accounts
            .list(&ListParams::default())
            .await
            .map_err(|source| Error::List {
                what: "ServiceAccounts",
                source,
            })?
            .items
            .into_iter()
            .filter_map(|sa| {
                let role = sa.annotations().get(ROLE_ARN_ANNOTATION)?.clone();
                Some(((sa.namespace()?, sa.name_any()), role))
            })
            .collect();
        resolve(
            credentials,
            &default_namespace,
            &annotations,
            &flags,
            &subjects,
        )
    } else {
        let mut resources = Vec::new();
        for file in &args.files {
            let shown = file.display().to_string();
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(file)
            }
            .map_err(|source| manifest::Error::Read {
                path: shown.clone(),
                source,
            })?;
            let (credentials, others) = manifest::parse_all(&shown, &text)?;
            let annotations = roles_from_documents(&others, &default_namespace);
            resources.extend(resolve(
                credentials,
                &default_namespace,
                &annotations,
                &flags,
                &subjects,
            ));
        }
        resources
    };
    let options = Options {
        oidc_issuer: args.oidc_issuer,
        controller_role_arn: args.controller_role_arn,
    };
    let planned = setup::plan(&resources, &options).map_err(Error::Plan)?;
    Ok(match args.output {
        Format::Commands => setup::render::commands(&planned, &options),
        Format::Terraform => setup::render::terraform(&planned, &options),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIENCE: &str =
        "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k";

    fn credential(kubernetes: Value) -> FederatedCredential {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
            "metadata": {"name": "exporter", "namespace": "edge"},
            "spec": {"kubernetes": kubernetes, "google": {"audience": AUDIENCE}}
        }))
        .unwrap()
    }

    #[test]
    fn a_subject_flag_names_the_token_file_of_one_resource() {
        let subjects =
            subjects_from_flags(&["edge/exporter=system:serviceaccount:exporters:vm".to_owned()])
                .unwrap();
        let file = credential(serde_json::json!({"tokenPath": "/var/run/secrets/tokens/google"}));
        // A ServiceAccount resource's subject is its own; the flag does not override it.
        let account = credential(serde_json::json!({"serviceAccount": {"name": "exporter"}}));
        let resolved = resolve(
            vec![file, account],
            "default",
            &Roles::new(),
            &Roles::new(),
            &subjects,
        );
        assert_eq!(
            resolved[0].resolved_subject.as_deref(),
            Some("system:serviceaccount:exporters:vm")
        );
        assert_eq!(resolved[1].resolved_subject, None);
    }

    #[test]
    fn a_malformed_subject_flag_says_the_form() {
        for bad in [
            "edge/exporter",
            "exporter=system:serviceaccount:exporters:vm",
            "edge/exporter=exporters:vm",
            "edge/exporter=system:serviceaccount:exporters",
        ] {
            let err = subjects_from_flags(&[bad.to_owned()]).unwrap_err();
            assert!(
                err.to_string()
                    .contains("expected NAMESPACE/NAME=system:serviceaccount:NS:SA"),
                "{bad}: {err}"
            );
        }
    }
}

//! What both clouds need for a set of FederatedCredentials, decided from the resources alone
//! (`fedcred setup`): the Workload Identity pool and provider with an attribute mapping and a
//! condition that admits exactly the principals fedcred presents, the `workloadIdentityUser`
//! binding of those principals, the service account's roles for what the resource uses, the
//! AlloyDB IAM database users, and the AWS roles' trust policies.
//!
//! [`plan`] gathers the facts; [`render::commands`] and [`render::terraform`] print them as
//! `gcloud`/`aws` commands or Terraform. Everything here is pure: the adapter reads the files
//! (or the cluster) and resolves each IRSA role from its ServiceAccount before calling in.

pub mod render;

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{Connectivity, FederatedCredentialSpec};
use crate::names::session_name;

/// Google's limit on the mapped `google.subject`; an assumed-role ARN longer than this cannot
/// be a principal.
pub const MAX_SUBJECT_BYTES: usize = 127;

/// Google's limit on an attribute condition's length.
pub const MAX_CONDITION_BYTES: usize = 4096;

/// The attribute mapping every generated provider uses: the subject is the caller's ARN, which
/// for an assumed role carries fedcred's deterministic session name, so one principal is one
/// namespace (and ServiceAccount).
pub const ATTRIBUTE_MAPPING: [(&str, &str); 2] = [
    ("google.subject", "assertion.arn"),
    ("attribute.aws_account", "assertion.account"),
];

/// One FederatedCredential as setup sees it.
#[derive(Clone, Debug)]
pub struct Resource {
    pub namespace: String,
    pub name: String,
    pub spec: FederatedCredentialSpec,
    /// The IAM role of an IRSA resource: `spec.aws.serviceAccount.roleArn`, else the
    /// ServiceAccount's `eks.amazonaws.com/role-arn` annotation (read from the cluster), else
    /// what the user passed on the command line.
    pub resolved_role_arn: Option<String>,
}

/// What the resources do not say.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The EKS cluster's OIDC issuer URL (`https://oidc.eks.REGION.amazonaws.com/id/ID`), for
    /// IRSA trust policies. Unknown: the output names a variable to fill in.
    pub oidc_issuer: Option<String>,
    /// The controller's own IAM role, which chained roles (`aws.controllerIdentity.roleArn`)
    /// must trust. Unknown: the output names a variable to fill in.
    pub controller_role_arn: Option<String>,
}

/// A resource setup cannot plan for, with what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {message}")]
pub struct SetupError {
    /// `NAMESPACE/NAME`.
    pub resource: String,
    pub field: &'static str,
    pub message: String,
}

/// Everything both clouds need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Setup {
    /// `NAMESPACE/NAME` of every resource planned for, in order.
    pub resources: Vec<String>,
    pub pools: BTreeMap<PoolKey, Pool>,
    pub service_accounts: BTreeMap<String, ServiceAccount>,
    /// Principals that use their federated token directly (no `google.serviceAccount`).
    pub direct: BTreeMap<String, Direct>,
    pub alloydb_users: BTreeSet<AlloyDbUser>,
    pub roles: BTreeMap<String, AwsRole>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoolKey {
    pub project_number: String,
    pub pool: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pool {
    pub providers: BTreeMap<String, Provider>,
}

/// An AWS provider of a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provider {
    /// The AWS account the provider trusts (Google's provider takes one).
    pub account_id: String,
    /// The ARNs Google will see, one per namespace (and ServiceAccount).
    pub principals: BTreeSet<String>,
    /// `NAMESPACE/NAME` of the resources behind them.
    pub resources: BTreeSet<String>,
}

impl Provider {
    /// The attribute condition: exactly these principals, no wildcard.
    pub fn condition(&self) -> String {
        let quoted: Vec<String> = self.principals.iter().map(|p| format!("'{p}'")).collect();
        format!("assertion.arn in [{}]", quoted.join(", "))
    }

    /// The attribute mapping as `gcloud` takes it.
    pub fn mapping_flag() -> String {
        ATTRIBUTE_MAPPING
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A service account fedcred impersonates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its project, from the email; `None` for the rare email that carries none.
    pub project_id: Option<String>,
    /// `principal://…/subject/ARN` members that get `roles/iam.workloadIdentityUser` on it.
    pub members: BTreeSet<String>,
    /// Project roles it needs, with why.
    pub roles: BTreeMap<&'static str, &'static str>,
    /// Access fedcred cannot infer (BigQuery datasets, buckets), named for the user.
    pub left_to_user: BTreeSet<&'static str>,
    pub resources: BTreeSet<String>,
}

/// A principal that calls Google with the federated token itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Direct {
    pub member: String,
    pub left_to_user: BTreeSet<&'static str>,
    pub resources: BTreeSet<String>,
}

/// An AlloyDB IAM database user of a service account.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AlloyDbUser {
    pub project: String,
    pub region: String,
    pub cluster: String,
    /// `sa@project.iam`.
    pub user: String,
}

/// An AWS role fedcred assumes and who may assume it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsRole {
    pub name: String,
    /// The role's path (`/` unless the ARN has one, as in `role/team/reports`).
    pub path: String,
    pub account_id: String,
    pub trust: Trust,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// IRSA: the cluster's OIDC provider, for these `system:serviceaccount:NS:SA` subjects.
    WebIdentity { subjects: BTreeSet<String> },
    /// The controller's own role, for these session names (one per allowed namespace).
    Chained { sessions: BTreeSet<String> },
}

/// `(account, name)` of `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`; the assumed-role ARN
/// carries the name without the path.
pub fn parse_role_arn(arn: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ["arn", _partition, "iam", "", account, resource] = parts[..] else {
        return None;
    };
    let path = resource.strip_prefix("role/")?;
    let name = path.rsplit('/').next()?;
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return None;
    }
    Some((account.to_owned(), name.to_owned()))
}

/// The path of a role ARN: `/team/` for `…:role/team/reports`, `/` for `…:role/reports`.
pub fn role_path(arn: &str) -> String {
    let resource = arn.splitn(6, ':').nth(5).unwrap_or_default();
    let path = resource.strip_prefix("role/").unwrap_or_default();
    match path.rsplit_once('/') {
        Some((dirs, _)) => format!("/{dirs}/"),
        None => "/".to_owned(),
    }
}

/// The ARN Google sees for a role assumed with `session`.
pub fn assumed_role_arn(role_arn: &str, session: &str) -> Option<String> {
    let partition = role_arn.split(':').nth(1)?;
    let (account, name) = parse_role_arn(role_arn)?;
    Some(format!(
        "arn:{partition}:sts::{account}:assumed-role/{name}/{session}"
    ))
}

/// `(project number, pool, provider)` of a provider's full resource name.
pub fn parse_audience(audience: &str) -> Option<(String, String, String)> {
    let rest = audience.strip_prefix("//iam.googleapis.com/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [
        "projects",
        number,
        "locations",
        "global",
        "workloadIdentityPools",
        pool,
        "providers",
        provider,
    ] = parts[..]
    else {
        return None;
    };
    Some((number.to_owned(), pool.to_owned(), provider.to_owned()))
}

/// The IAM member of the principal whose `google.subject` is `subject`, in `pool`.
pub fn principal_member(key: &PoolKey, subject: &str) -> String {
    format!(
        "principal://iam.googleapis.com/projects/{}/locations/global/workloadIdentityPools/{}/subject/{subject}",
        key.project_number, key.pool
    )
}

/// `(project, region, cluster)` of an instance URI
/// `projects/P/locations/R/clusters/C/instances/I` (query options ignored).
fn parse_instance(uri: &str) -> Option<(String, String, String)> {
    let path = uri.split('?').next()?;
    let parts: Vec<&str> = path.split('/').collect();
    let [
        "projects",
        project,
        "locations",
        region,
        "clusters",
        cluster,
        "instances",
        _,
    ] = parts[..]
    else {
        return None;
    };
    Some((project.to_owned(), region.to_owned(), cluster.to_owned()))
}

/// The principal `resource` presents: the role it assumes and the session name fedcred gives.
/// Also what the AWS side must trust.
fn principal_of(resource: &Resource) -> Result<(String, String, Trust), SetupError> {
    let id = format!("{}/{}", resource.namespace, resource.name);
    let error = |field: &'static str, message: String| SetupError {
        resource: id.clone(),
        field,
        message,
    };
    let Some(aws) = &resource.spec.aws else {
        return Err(error(
            "kubernetes",
            "the kubernetes source needs no AWS role: set up an OIDC provider for this cluster's issuer as docs/setup-oidc.md shows (fedcred setup plans AWS identities only)".to_owned(),
        ));
    };
    let (role_arn, session, trust, field) = match (&aws.service_account, &aws.controller_identity) {
        (Some(sa), None) => {
            let role = resource.resolved_role_arn.clone().ok_or_else(|| {
                error(
                    "aws.serviceAccount.roleArn",
                    format!(
                        "no IAM role known for ServiceAccount {}: set aws.serviceAccount.roleArn, put the ServiceAccount with its eks.amazonaws.com/role-arn annotation in the file (or use --from-cluster), or pass --role-arn {}/{}=arn:aws:iam::ACCOUNT:role/NAME",
                        sa.name, resource.namespace, sa.name
                    ),
                )
            })?;
            let subject = format!("system:serviceaccount:{}:{}", resource.namespace, sa.name);
            (
                role,
                session_name(&resource.namespace, Some(&sa.name)),
                Trust::WebIdentity {
                    subjects: BTreeSet::from([subject]),
                },
                "aws.serviceAccount.roleArn",
            )
        }
        (None, Some(ci)) => {
            let role = ci.role_arn.clone().ok_or_else(|| {
                error(
                    "aws.controllerIdentity.roleArn",
                    "without a role to chain into, Google sees the controller's own identity, whose session name fedcred does not choose (an EC2 instance id, a Pod Identity session); set aws.controllerIdentity.roleArn so that the principal is one per namespace".to_owned(),
                )
            })?;
            let session = session_name(&resource.namespace, None);
            (
                role,
                session.clone(),
                Trust::Chained {
                    sessions: BTreeSet::from([session]),
                },
                "aws.controllerIdentity.roleArn",
            )
        }
        _ => {
            return Err(error(
                "aws",
                "set exactly one of aws.serviceAccount and aws.controllerIdentity".to_owned(),
            ));
        }
    };
    let principal = assumed_role_arn(&role_arn, &session).ok_or_else(|| {
        error(
            field,
            format!(
                "{role_arn:?} is not an IAM role ARN such as arn:aws:iam::123456789012:role/my-role"
            ),
        )
    })?;
    if principal.len() > MAX_SUBJECT_BYTES {
        return Err(error(
            field,
            format!(
                "the principal {principal} is {} bytes, over Google's {MAX_SUBJECT_BYTES}-byte limit on google.subject; use a shorter role name",
                principal.len()
            ),
        ));
    }
    Ok((role_arn, principal, trust))
}

/// What the scopes ask for that fedcred cannot grant by itself.
fn left_to_user(spec: &FederatedCredentialSpec) -> BTreeSet<&'static str> {
    let mut left = BTreeSet::new();
    for scope in &spec.google.scopes {
        let scope = scope.as_str();
        if scope.contains("bigquery") {
            left.insert("BigQuery: roles/bigquery.jobUser on the project and roles/bigquery.dataViewer (or dataEditor) on each dataset it reads");
        }
        if scope.contains("devstorage") {
            left.insert(
                "Cloud Storage: roles/storage.objectViewer (or objectUser) on each bucket it uses",
            );
        }
    }
    left
}

/// Plans both clouds' side for `resources`.
pub fn plan(resources: &[Resource]) -> Result<Setup, Vec<SetupError>> {
    let mut setup = Setup::default();
    let mut errors = Vec::new();
    for resource in resources {
        let id = format!("{}/{}", resource.namespace, resource.name);
        let (role_arn, principal, trust) = match principal_of(resource) {
            Ok(found) => found,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let Some((number, pool, provider_id)) = parse_audience(&resource.spec.google.audience)
        else {
            errors.push(SetupError {
                resource: id,
                field: "google.audience",
                message: "must look like //iam.googleapis.com/projects/PROJECT_NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER".to_owned(),
            });
            continue;
        };
        let Some((account_id, role_name)) = parse_role_arn(&role_arn) else {
            continue; // principal_of refused it already
        };
        let key = PoolKey {
            project_number: number,
            pool,
        };
        let provider = setup
            .pools
            .entry(key.clone())
            .or_default()
            .providers
            .entry(provider_id.clone())
            .or_insert_with(|| Provider {
                account_id: account_id.clone(),
                ..Provider::default()
            });
        if provider.account_id != account_id {
            errors.push(SetupError {
                resource: id,
                field: "google.audience",
                message: format!(
                    "provider {provider_id} already trusts AWS account {} and an AWS provider trusts one account; give the resources of account {account_id} a provider of their own",
                    provider.account_id
                ),
            });
            continue;
        }
        provider.principals.insert(principal.clone());
        provider.resources.insert(id.clone());
        if provider.condition().len() > MAX_CONDITION_BYTES {
            errors.push(SetupError {
                resource: id,
                field: "google.audience",
                message: format!(
                    "the condition of provider {provider_id} would exceed Google's {MAX_CONDITION_BYTES} bytes; split these resources over several providers"
                ),
            });
            continue;
        }
        let member = principal_member(&key, &principal);
        let left = left_to_user(&resource.spec);
        match &resource.spec.google.service_account {
            Some(email) => {
                let sa = setup.service_accounts.entry(email.clone()).or_default();
                sa.project_id = crate::names::project_id(email);
                sa.members.insert(member);
                sa.resources.insert(id.clone());
                sa.left_to_user.extend(left);
                add_alloydb(resource, email, sa, &mut setup.alloydb_users);
            }
            None => {
                let direct = setup.direct.entry(principal.clone()).or_default();
                direct.member = member;
                direct.left_to_user.extend(left);
                direct.resources.insert(id.clone());
            }
        }
        let role = setup.roles.entry(role_arn.clone()).or_insert(AwsRole {
            path: role_path(&role_arn),
            name: role_name,
            account_id,
            trust: match &trust {
                Trust::WebIdentity { .. } => Trust::WebIdentity {
                    subjects: BTreeSet::new(),
                },
                Trust::Chained { .. } => Trust::Chained {
                    sessions: BTreeSet::new(),
                },
            },
        });
        match (&mut role.trust, trust) {
            (Trust::WebIdentity { subjects }, Trust::WebIdentity { subjects: more }) => {
                subjects.extend(more);
            }
            (Trust::Chained { sessions }, Trust::Chained { sessions: more }) => {
                sessions.extend(more);
            }
            _ => errors.push(SetupError {
                resource: id.clone(),
                field: "aws",
                message: format!(
                    "role {role_arn} is used both through IRSA and by the controller's identity; give each its own role"
                ),
            }),
        }
        setup.resources.push(id);
    }
    if errors.is_empty() {
        Ok(setup)
    } else {
        Err(errors)
    }
}

fn add_alloydb(
    resource: &Resource,
    email: &str,
    sa: &mut ServiceAccount,
    users: &mut BTreeSet<AlloyDbUser>,
) {
    let Some(alloydb) = &resource.spec.alloydb else {
        return;
    };
    for instance in &alloydb.instances {
        sa.roles.insert(
            "roles/alloydb.client",
            "the AlloyDB Auth Proxy asks the Admin API for connection info and a client certificate",
        );
        if instance.connectivity == Connectivity::Psc {
            sa.roles.insert(
                "roles/serviceusage.serviceUsageConsumer",
                "Private Service Connect: the proxy's Admin API calls bill the service account's project, which needs serviceusage.services.use",
            );
        }
        if instance.auto_iam_authn {
            sa.roles.insert(
                "roles/alloydb.databaseUser",
                "automatic IAM database login: the proxy logs in as the service account",
            );
            if let (Some((project, region, cluster)), Some(user)) =
                (parse_instance(&instance.uri), crate::names::db_user(email))
            {
                users.insert(AlloyDbUser {
                    project,
                    region,
                    cluster,
                    user,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;

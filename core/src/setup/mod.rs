//! What both clouds need for a set of FederatedCredentials, decided from the resources alone
//! (`fedcred setup`): the Workload Identity pool and provider with an attribute mapping and a
//! condition that admits exactly the principals fedcred presents, the `workloadIdentityUser`
//! binding of those principals, the service account's roles for what the resource uses, the
//! AlloyDB IAM database users, and the AWS roles' trust policies. A resource with
//! `spec.kubernetes` presents the cluster's own ServiceAccount token: its provider is an OIDC
//! provider for the cluster's issuer, its principal the token's `sub`, and AWS needs nothing.
//!
//! [`plan`] gathers the facts; [`render::commands`] and [`render::terraform`] print them as
//! `gcloud`/`aws` commands or Terraform. Everything here is pure: the adapter reads the files
//! (or the cluster) and resolves each IRSA role from its ServiceAccount before calling in.

pub mod render;

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{Connectivity, FederatedCredentialSpec, KubernetesIdentity};
use crate::names::session_name;

/// Google's limit on the mapped `google.subject`; an assumed-role ARN longer than this cannot
/// be a principal.
pub const MAX_SUBJECT_BYTES: usize = 127;

/// Google's limit on an attribute condition's length.
pub const MAX_CONDITION_BYTES: usize = 4096;

/// The attribute mapping every generated AWS provider uses: the subject is the caller's ARN,
/// which for an assumed role carries fedcred's deterministic session name, so one principal is
/// one namespace (and ServiceAccount).
pub const ATTRIBUTE_MAPPING: [(&str, &str); 2] = [
    ("google.subject", "assertion.arn"),
    ("attribute.aws_account", "assertion.account"),
];

/// The attribute mapping every generated OIDC provider uses: the subject is the token's `sub`,
/// `system:serviceaccount:NAMESPACE:NAME`, so one principal is one ServiceAccount; the namespace
/// is kept for the `principalSet://…/attribute.namespace/NS` bindings a user may add.
pub const OIDC_ATTRIBUTE_MAPPING: [(&str, &str); 2] = [
    ("google.subject", "assertion.sub"),
    (
        "attribute.namespace",
        "assertion['kubernetes.io']['namespace']",
    ),
];

/// An attribute mapping as `gcloud` takes it: `ATTRIBUTE=EXPRESSION,…`.
pub fn mapping_flag(mapping: &[(&str, &str)]) -> String {
    mapping
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `sub` of a ServiceAccount token.
pub fn service_account_subject(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// `(namespace, name)` of a ServiceAccount token's `sub`, `system:serviceaccount:NS:NAME`.
pub fn parse_subject(subject: &str) -> Option<(&str, &str)> {
    let (namespace, name) = subject
        .strip_prefix("system:serviceaccount:")?
        .split_once(':')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (valid(namespace) && valid(name)).then_some((namespace, name))
}

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
    /// The `sub` of the token a `kubernetes.tokenPath` resource reads
    /// (`system:serviceaccount:NS:NAME`): the file's ServiceAccount is not in the resource, so
    /// the user names it on the command line.
    pub resolved_subject: Option<String>,
}

/// What the resources do not say.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The cluster's ServiceAccount token issuer, the tokens' `iss`
    /// (`https://oidc.eks.REGION.amazonaws.com/id/ID` on EKS). IRSA trust policies name it
    /// (unknown: the output names a variable to fill in); the OIDC provider of `spec.kubernetes`
    /// resources is created with it, so those cannot be planned without it.
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

/// A provider of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    pub trusts: Trusts,
    /// What Google will see as `google.subject`: ARNs, one per namespace (and ServiceAccount),
    /// or ServiceAccount subjects.
    pub principals: BTreeSet<String>,
    /// `NAMESPACE/NAME` of the resources behind them.
    pub resources: BTreeSet<String>,
}

/// Whom a provider trusts. Google's provider is one or the other, never both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trusts {
    /// An AWS provider, for one AWS account.
    Aws { account_id: String },
    /// An OIDC provider for a cluster's ServiceAccount tokens (`spec.kubernetes`).
    Kubernetes {
        /// The tokens' `iss`, exactly.
        issuer_uri: String,
        /// The provider's own full resource name, which Google accepts as `aud` while the
        /// provider lists no allowed audiences.
        own_audience: String,
        /// The `aud` of each resource's tokens: `kubernetes.audience`, else the provider's name.
        audiences: BTreeSet<String>,
    },
}

impl Provider {
    /// The attribute condition: exactly these principals, no wildcard.
    pub fn condition(&self) -> String {
        let quoted: Vec<String> = self.principals.iter().map(|p| format!("'{p}'")).collect();
        let claim = match self.trusts {
            Trusts::Aws { .. } => "assertion.arn",
            Trusts::Kubernetes { .. } => "assertion.sub",
        };
        format!("{claim} in [{}]", quoted.join(", "))
    }

    /// The attribute mapping.
    pub fn mapping(&self) -> &'static [(&'static str, &'static str)] {
        match self.trusts {
            Trusts::Aws { .. } => &ATTRIBUTE_MAPPING,
            Trusts::Kubernetes { .. } => &OIDC_ATTRIBUTE_MAPPING,
        }
    }

    /// The attribute mapping as `gcloud` takes it.
    pub fn mapping_flag(&self) -> String {
        mapping_flag(self.mapping())
    }

    /// The OIDC provider's allowed audiences: none while every resource asks for the provider's
    /// own name (Google's default), else all of them, the default included, since a listed
    /// audience replaces the default for everyone.
    pub fn allowed_audiences(&self) -> Vec<&str> {
        match &self.trusts {
            Trusts::Kubernetes {
                own_audience,
                audiences,
                ..
            } if audiences.iter().any(|a| a != own_audience) => {
                audiences.iter().map(String::as_str).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// A service account fedcred impersonates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its project, from the email; `None` for the rare email that carries none.
    pub project_id: Option<String>,
    /// `principal://…/subject/ARN` (or `…/subject/system:serviceaccount:NS:NAME`) members that
    /// get `roles/iam.workloadIdentityUser` on it.
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
    let parts = crate::names::instance_uri(uri)?;
    Some((
        parts.project.to_owned(),
        parts.region.to_owned(),
        parts.cluster.to_owned(),
    ))
}

/// What a resource presents to Google.
enum Presented {
    /// An assumed-role ARN, and what the AWS side must trust for fedcred to become it.
    Aws {
        role_arn: String,
        principal: String,
        trust: Trust,
    },
    /// A ServiceAccount token: its `sub` and `aud`.
    Kubernetes { subject: String, audience: String },
}

/// The principal `resource` presents: the role it assumes and the session name fedcred gives,
/// with what the AWS side must trust; or the subject of its ServiceAccount token.
fn principal_of(resource: &Resource) -> Result<Presented, SetupError> {
    let id = format!("{}/{}", resource.namespace, resource.name);
    let error = |field: &'static str, message: String| SetupError {
        resource: id.clone(),
        field,
        message,
    };
    if let Some(kubernetes) = &resource.spec.kubernetes {
        return kubernetes_subject(resource, kubernetes).map_err(|(f, m)| error(f, m));
    }
    let Some(aws) = &resource.spec.aws else {
        return Err(error(
            "aws",
            "set one identity source: aws (an AWS identity) or kubernetes (the cluster's own ServiceAccount token)".to_owned(),
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
            let subject = service_account_subject(&resource.namespace, &sa.name);
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
    Ok(Presented::Aws {
        role_arn,
        principal,
        trust,
    })
}

/// The `sub` and `aud` of the token a `spec.kubernetes` resource presents, or the field and
/// what to change.
fn kubernetes_subject(
    resource: &Resource,
    kubernetes: &KubernetesIdentity,
) -> Result<Presented, (&'static str, String)> {
    if resource.spec.aws.is_some() {
        return Err((
            "kubernetes",
            "set one identity source, aws or kubernetes, not both".to_owned(),
        ));
    }
    let (subject, field) = match (&kubernetes.service_account, &kubernetes.token_path) {
        (Some(sa), None) => (
            service_account_subject(&resource.namespace, &sa.name),
            "kubernetes.serviceAccount.name",
        ),
        // The agent reads whatever token the kubelet projected there: which ServiceAccount it
        // belongs to is the pod's (or the VM's projection's) business, not the resource's. A
        // guess would put a wrong subject into the condition, so the user names it.
        (None, Some(path)) => (
            resource.resolved_subject.clone().ok_or_else(|| {
                (
                    "kubernetes.tokenPath",
                    format!(
                        "the resource does not say which ServiceAccount's token the agent reads at {path}, and the condition must name it: pass --subject {ns}/{name}=system:serviceaccount:NAMESPACE:SERVICEACCOUNT, the ServiceAccount whose token is projected there (the token's sub claim)",
                        ns = resource.namespace,
                        name = resource.name
                    ),
                )
            })?,
            "kubernetes.tokenPath",
        ),
        _ => {
            return Err((
                "kubernetes",
                "set exactly one of kubernetes.serviceAccount and kubernetes.tokenPath".to_owned(),
            ));
        }
    };
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err((
            field,
            format!(
                "the subject {subject} is {} bytes, over Google's {MAX_SUBJECT_BYTES}-byte limit on google.subject; use a ServiceAccount with a shorter name",
                subject.len()
            ),
        ));
    }
    let audience = kubernetes
        .audience
        .clone()
        .unwrap_or_else(|| resource.spec.google.audience.clone());
    Ok(Presented::Kubernetes { subject, audience })
}

/// The issuer an OIDC provider is created with: the flag's value, which must be the tokens'
/// `iss` exactly (Google compares it byte for byte and takes https:// only).
fn issuer_uri(options: &Options) -> Result<String, String> {
    const READ: &str = "the \"issuer\" of `kubectl get --raw /.well-known/openid-configuration` (on EKS, `aws eks describe-cluster --name CLUSTER --query cluster.identity.oidc.issuer --output text`)";
    match options.oidc_issuer.as_deref() {
        None => Err(format!(
            "the OIDC provider for the cluster's ServiceAccount tokens needs the cluster's issuer: pass --oidc-issuer ISSUER, {READ}"
        )),
        Some(issuer) if !issuer.starts_with("https://") => Err(format!(
            "--oidc-issuer {issuer:?}: Google takes an https:// issuer URI, exactly the tokens' iss: {READ}"
        )),
        Some(issuer) => Ok(issuer.to_owned()),
    }
}

/// Adds `trusts` to a provider that may trust something already, or says why it cannot.
fn merge_trust(provider: &mut Provider, trusts: Trusts, provider_id: &str) -> Result<(), String> {
    let others = provider
        .resources
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match (&mut provider.trusts, trusts) {
        (Trusts::Aws { account_id }, Trusts::Aws { account_id: theirs }) => {
            if *account_id == theirs {
                Ok(())
            } else {
                Err(format!(
                    "provider {provider_id} already trusts AWS account {account_id} and an AWS provider trusts one account; give the resources of account {theirs} a provider of their own"
                ))
            }
        }
        (
            Trusts::Kubernetes { audiences, .. },
            Trusts::Kubernetes {
                audiences: theirs, ..
            },
        ) => {
            audiences.extend(theirs);
            Ok(())
        }
        (Trusts::Aws { .. }, Trusts::Kubernetes { .. }) => Err(format!(
            "provider {provider_id} takes the AWS identities of {others} (spec.aws), so it is an AWS provider and cannot also take this resource's ServiceAccount token (spec.kubernetes); a provider is either AWS or OIDC: give the spec.kubernetes resources a provider of their own (another google.audience)"
        )),
        (Trusts::Kubernetes { .. }, Trusts::Aws { .. }) => Err(format!(
            "provider {provider_id} takes the ServiceAccount tokens of {others} (spec.kubernetes), so it is an OIDC provider and cannot also take this resource's AWS identity (spec.aws); a provider is either AWS or OIDC: give the spec.aws resources a provider of their own (another google.audience)"
        )),
    }
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
pub fn plan(resources: &[Resource], options: &Options) -> Result<Setup, Vec<SetupError>> {
    let mut setup = Setup::default();
    let mut errors = Vec::new();
    // A missing or unusable issuer is one mistake, reported once, not once per resource.
    let mut issuer_refused = false;
    for resource in resources {
        let id = format!("{}/{}", resource.namespace, resource.name);
        let presented = match principal_of(resource) {
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
        let (trusts, principal) = match &presented {
            Presented::Aws {
                role_arn,
                principal,
                ..
            } => {
                let Some((account_id, _)) = parse_role_arn(role_arn) else {
                    continue; // principal_of refused it already
                };
                (Trusts::Aws { account_id }, principal.clone())
            }
            Presented::Kubernetes { subject, audience } => {
                let issuer_uri = match issuer_uri(options) {
                    Ok(issuer) => issuer,
                    Err(message) => {
                        if !issuer_refused {
                            errors.push(SetupError {
                                resource: id,
                                field: "kubernetes",
                                message,
                            });
                            issuer_refused = true;
                        }
                        continue;
                    }
                };
                (
                    Trusts::Kubernetes {
                        issuer_uri,
                        own_audience: resource.spec.google.audience.clone(),
                        audiences: BTreeSet::from([audience.clone()]),
                    },
                    subject.clone(),
                )
            }
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
                trusts: trusts.clone(),
                principals: BTreeSet::new(),
                resources: BTreeSet::new(),
            });
        if let Err(message) = merge_trust(provider, trusts, &provider_id) {
            errors.push(SetupError {
                resource: id,
                field: "google.audience",
                message,
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
        // A ServiceAccount token goes to Google as it is: nothing to create on the AWS side.
        if let Presented::Aws {
            role_arn, trust, ..
        } = presented
            && let Err(e) = add_role(&mut setup.roles, &role_arn, trust, &id)
        {
            errors.push(e);
        }
        setup.resources.push(id);
    }
    if errors.is_empty() {
        Ok(setup)
    } else {
        Err(errors)
    }
}

/// Adds what `role_arn` must trust for resource `id`.
fn add_role(
    roles: &mut BTreeMap<String, AwsRole>,
    role_arn: &str,
    trust: Trust,
    id: &str,
) -> Result<(), SetupError> {
    let Some((account_id, role_name)) = parse_role_arn(role_arn) else {
        return Ok(()); // principal_of refused it already
    };
    let role = roles.entry(role_arn.to_owned()).or_insert(AwsRole {
        path: role_path(role_arn),
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
            Ok(())
        }
        (Trust::Chained { sessions }, Trust::Chained { sessions: more }) => {
            sessions.extend(more);
            Ok(())
        }
        _ => Err(SetupError {
            resource: id.to_owned(),
            field: "aws",
            message: format!(
                "role {role_arn} is used both through IRSA and by the controller's identity; give each its own role"
            ),
        }),
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

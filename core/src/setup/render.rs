//! A [`Setup`] as text: a shell script of `gcloud` and `aws iam` commands, or Terraform for the
//! `google` and `aws` providers. Both say, next to each step, why it exists.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{Options, PoolKey, Provider, Setup, Trust, Trusts};

/// The comment that opens both outputs.
fn header(out: &mut String, setup: &Setup, comment: &str) {
    let _ = writeln!(
        out,
        "{comment} Written by `fedcred setup` for {}.",
        setup.resources.join(", ")
    );
    let _ = writeln!(
        out,
        "{comment} Review it, then run it once. It grants exactly what these resources need and admits"
    );
    let _ = writeln!(
        out,
        "{comment} exactly the principals fedcred presents for them: no wildcard."
    );
}

/// The OIDC provider of the cluster as IAM names it (the issuer without `https://`), or the
/// placeholder `placeholder` when unknown.
fn oidc_provider(options: &Options, placeholder: &str) -> String {
    options.oidc_issuer.as_deref().map_or_else(
        || placeholder.to_owned(),
        |issuer| {
            issuer
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_owned()
        },
    )
}

/// The role's trust policy, with `oidc` standing for the cluster's OIDC provider and
/// `controller` for the controller's role.
fn trust_policy(account: &str, trust: &Trust, oidc: &str, controller: &str) -> Value {
    match trust {
        Trust::WebIdentity { subjects } => json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "FedcredIrsa",
                "Effect": "Allow",
                "Principal": {"Federated": format!("arn:aws:iam::{account}:oidc-provider/{oidc}")},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {"StringEquals": {
                    format!("{oidc}:aud"): crate::names::STS_AUDIENCE,
                    format!("{oidc}:sub"): subjects.iter().collect::<Vec<_>>(),
                }}
            }]
        }),
        Trust::Chained { sessions } => json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "FedcredControllerIdentity",
                "Effect": "Allow",
                "Principal": {"AWS": controller},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {
                    "sts:RoleSessionName": sessions.iter().collect::<Vec<_>>(),
                }}
            }]
        }),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn pool_comment(key: &PoolKey) -> String {
    format!(
        "Workload Identity pool {} in project {}: the providers below live in it, and the principals bound to service accounts are named after it.",
        key.pool, key.project_number
    )
}

const MAPPING_WHY: &str = "The mapping makes the caller's ARN the subject. For an assumed role the ARN ends in the session name fedcred chooses (fedcred.NAMESPACE.SERVICEACCOUNT for IRSA, fedcred.NAMESPACE for the controller's identity), so each principal is one namespace.";

const OIDC_MAPPING_WHY: &str = "The mapping makes the token's sub, system:serviceaccount:NAMESPACE:NAME, the subject, so each principal is one ServiceAccount; attribute.namespace allows principalSet bindings per namespace.";

/// Why an OIDC provider is there and how Google finds the cluster's keys, for both outputs.
fn oidc_comment(id: &str, issuer: &str, provider: &Provider, jwks: &str) -> String {
    let resources: Vec<&str> = provider.resources.iter().map(String::as_str).collect();
    format!(
        "# Provider {id} trusts the ServiceAccount tokens of the cluster whose issuer (the tokens' iss) is\n#   {issuer}\n# (spec.kubernetes: the token goes to Google as it is; nothing is created on AWS). Google\n# fetches the cluster's signing keys through {issuer}/.well-known/openid-configuration,\n# which must be public over https. A private issuer: upload the keys instead\n# ({jwks}, from `kubectl get --raw /openid/v1/jwks > jwks.json`), and again\n# whenever the cluster's signing key changes.\n# {OIDC_MAPPING_WHY}\n# The condition admits exactly the ServiceAccounts of {res}; any other ServiceAccount\n# or namespace of the cluster is refused with \"The given credential is rejected by the attribute condition\".\n",
        res = resources.join(", "),
    )
}

/// `providers create-aws`, for the AWS account whose principals the provider admits.
fn aws_provider_command(
    out: &mut String,
    key: &PoolKey,
    id: &str,
    provider: &Provider,
    account: &str,
) {
    let resources: Vec<&str> = provider.resources.iter().map(String::as_str).collect();
    let _ = write!(
        out,
        "\n# Provider {id} trusts AWS account {account}: Google verifies the signed GetCallerIdentity\n# request fedcred sends and learns the caller's ARN.\n# {MAPPING_WHY}\n# The condition admits exactly the principals of {res}; any other role or namespace of\n# the account is refused with \"The given credential is rejected by the attribute condition\".\n# (The provider exists already? Run `providers update-aws` with the same flags.)\ngcloud iam workload-identity-pools providers create-aws {id} \\\n  --project={number} --location=global --workload-identity-pool={pool} \\\n  --account-id={account} \\\n  --attribute-mapping=\"{mapping}\" \\\n  --attribute-condition=\"{condition}\"\n",
        res = resources.join(", "),
        number = key.project_number,
        pool = key.pool,
        mapping = provider.mapping_flag(),
        condition = provider.condition(),
    );
}

/// `providers create-oidc`, for the cluster whose ServiceAccount tokens the provider admits.
fn oidc_provider_command(
    out: &mut String,
    key: &PoolKey,
    id: &str,
    provider: &Provider,
    issuer_uri: &str,
) {
    let audiences = provider.allowed_audiences();
    let allowed = if audiences.is_empty() {
        String::new()
    } else {
        format!(" \\\n  --allowed-audiences=\"{}\"", audiences.join(","))
    };
    let _ = write!(
        out,
        "\n{comment}# (The provider exists already? Run `providers update-oidc` with the same flags.)\ngcloud iam workload-identity-pools providers create-oidc {id} \\\n  --project={number} --location=global --workload-identity-pool={pool} \\\n  --issuer-uri=\"{issuer_uri}\"{allowed} \\\n  --attribute-mapping=\"{mapping}\" \\\n  --attribute-condition=\"{condition}\"\n",
        comment = oidc_comment(id, issuer_uri, provider, "--jwk-json-path=jwks.json"),
        number = key.project_number,
        pool = key.pool,
        mapping = provider.mapping_flag(),
        condition = provider.condition(),
    );
}

/// `gcloud` and `aws iam` commands.
pub fn commands(setup: &Setup, options: &Options) -> String {
    let mut out = String::from("#!/usr/bin/env bash\n");
    header(&mut out, setup, "#");
    out.push_str("set -euo pipefail\n");

    out.push_str("\n########## Google Cloud ##########\n");
    for (key, pool) in &setup.pools {
        let _ = write!(
            out,
            "\n# {}\ngcloud iam workload-identity-pools create {} \\\n  --project={} --location=global \\\n  --display-name=\"fedcred\"\n",
            pool_comment(key),
            key.pool,
            key.project_number
        );
        for (id, provider) in &pool.providers {
            match &provider.trusts {
                Trusts::Aws { account_id } => {
                    aws_provider_command(&mut out, key, id, provider, account_id);
                }
                Trusts::Kubernetes { issuer_uri, .. } => {
                    oidc_provider_command(&mut out, key, id, provider, issuer_uri);
                }
            }
        }
    }
    for (email, sa) in &setup.service_accounts {
        let project = sa.project_id.as_deref().unwrap_or("PROJECT_ID");
        let resources: Vec<&str> = sa.resources.iter().map(String::as_str).collect();
        let _ = write!(
            out,
            "\n# {email} is impersonated for {}: only these principals may mint its tokens\n# (roles/iam.workloadIdentityUser on the service account, not on the project).\n",
            resources.join(", ")
        );
        for member in &sa.members {
            let _ = write!(
                out,
                "gcloud iam service-accounts add-iam-policy-binding {email} \\\n  --project={project} --role=roles/iam.workloadIdentityUser \\\n  --member=\"{member}\"\n"
            );
        }
        for (role, why) in &sa.roles {
            let _ = write!(
                out,
                "# {role}: {why}.\ngcloud projects add-iam-policy-binding {project} \\\n  --member=\"serviceAccount:{email}\" --role={role} --condition=None\n"
            );
        }
        for left in &sa.left_to_user {
            let _ = writeln!(
                out,
                "# Not granted here, the resources to grant on are yours to name: {left}."
            );
        }
    }
    for (principal, direct) in &setup.direct {
        let _ = write!(
            out,
            "\n# {principal} uses its federated token directly (no google.serviceAccount): grant it\n# access on each resource it uses as the member\n#   {}\n",
            direct.member
        );
        for left in &direct.left_to_user {
            let _ = writeln!(out, "# for example {left}.");
        }
    }
    for user in &setup.alloydb_users {
        let _ = write!(
            out,
            "\n# The AlloyDB Auth Proxy logs in as {user} (the service account's email without\n# .gserviceaccount.com); AlloyDB needs the IAM user to exist in cluster {cluster}.\ngcloud alloydb users create {user} \\\n  --cluster={cluster} --region={region} --project={project} --type=IAM_BASED\n# An IAM user starts with no privileges. As a database administrator (psql as postgres), grant\n# what the application needs, for example:\n#   GRANT CONNECT ON DATABASE <database> TO \"{user}\";\n#   GRANT USAGE ON SCHEMA public TO \"{user}\";\n#   GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO \"{user}\";\n",
            user = user.user,
            cluster = user.cluster,
            region = user.region,
            project = user.project,
        );
    }

    out.push_str("\n########## AWS ##########\n");
    if setup.roles.is_empty() {
        out.push_str(
            "\n# Nothing: ServiceAccount tokens (spec.kubernetes) go to Google without AWS.\n",
        );
    }
    let irsa = setup
        .roles
        .values()
        .any(|r| matches!(r.trust, Trust::WebIdentity { .. }));
    let chained = setup
        .roles
        .values()
        .any(|r| matches!(r.trust, Trust::Chained { .. }));
    if irsa {
        let _ = write!(
            out,
            "\n# The cluster's IAM OIDC provider (its issuer without https://), which IRSA roles trust:\n#   aws eks describe-cluster --name CLUSTER --query cluster.identity.oidc.issuer --output text\n# IAM must know it once per cluster (`eksctl utils associate-iam-oidc-provider --cluster CLUSTER --approve`).\nOIDC_PROVIDER=\"{}\"\n",
            oidc_provider(options, "")
        );
        if options.oidc_issuer.is_none() {
            out.push_str(": \"${OIDC_PROVIDER:?set OIDC_PROVIDER to the OIDC issuer of the cluster, without https://}\"\n");
        }
    }
    if chained {
        let _ = write!(
            out,
            "\n# The controller's own role (its ServiceAccount's eks.amazonaws.com/role-arn, or its\n# Pod Identity association), which chained roles trust.\nCONTROLLER_ROLE_ARN=\"{}\"\n",
            options.controller_role_arn.as_deref().unwrap_or("")
        );
        if options.controller_role_arn.is_none() {
            out.push_str(
                ": \"${CONTROLLER_ROLE_ARN:?set CONTROLLER_ROLE_ARN to the IAM role of the fedcred controller}\"\n",
            );
        }
    }
    for (arn, role) in &setup.roles {
        let (why, policy) = match &role.trust {
            Trust::WebIdentity { subjects } => (
                format!(
                    "IRSA: fedcred asks the API server for a token of {} and exchanges it with\n# AssumeRoleWithWebIdentity; the trust policy admits only those ServiceAccounts' tokens.",
                    subjects
                        .iter()
                        .map(|s| s.trim_start_matches("system:serviceaccount:"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                trust_policy(
                    &role.account_id,
                    &role.trust,
                    "${OIDC_PROVIDER}",
                    "${CONTROLLER_ROLE_ARN}",
                ),
            ),
            Trust::Chained { sessions } => (
                format!(
                    "The controller's identity chained into this role (AssumeRole); the trust policy admits\n# only the session names fedcred gives the allowed namespaces: {}.",
                    sessions.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
                trust_policy(
                    &role.account_id,
                    &role.trust,
                    "${OIDC_PROVIDER}",
                    "${CONTROLLER_ROLE_ARN}",
                ),
            ),
        };
        let _ = write!(
            out,
            "\n# {arn}\n# {why}\n# It needs no permission policy: GetCallerIdentity, which Google calls, needs none.\n# (The role exists already? `aws iam update-assume-role-policy --role-name {name} --policy-document ...`.)\naws iam create-role --role-name {name} --path {path} \\\n  --description \"fedcred: Google Workload Identity Federation\" \\\n  --assume-role-policy-document \"$(cat <<JSON\n{policy}\nJSON\n)\"\n",
            name = role.name,
            path = role.path,
            policy = pretty(&policy),
        );
    }
    out
}

/// A Terraform resource name from parts: lowercase letters, digits and underscores.
fn tf_name(parts: &[&str]) -> String {
    let joined = parts.join("_");
    let mut name: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert(0, 'r');
    }
    name
}

/// The `attribute_mapping` map of a provider resource.
fn tf_mapping(provider: &Provider) -> String {
    provider
        .mapping()
        .iter()
        .map(|(k, v)| format!("    \"{k}\" = \"{v}\""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `google_iam_workload_identity_pool_provider` with an `aws` block.
fn aws_provider_terraform(
    out: &mut String,
    key: &PoolKey,
    id: &str,
    provider: &Provider,
    account: &str,
) {
    let resources: Vec<&str> = provider.resources.iter().map(String::as_str).collect();
    let _ = write!(
        out,
        "\n# Provider {id} trusts AWS account {account}.\n# {MAPPING_WHY}\n# The condition admits exactly the principals of {res}.\nresource \"google_iam_workload_identity_pool_provider\" \"{tf}\" {{\n  project                            = \"{number}\"\n  workload_identity_pool_id          = google_iam_workload_identity_pool.{pool_tf}.workload_identity_pool_id\n  workload_identity_pool_provider_id = \"{id}\"\n  attribute_mapping = {{\n{mapping}\n  }}\n  attribute_condition = \"{condition}\"\n  aws {{\n    account_id = \"{account}\"\n  }}\n}}\n",
        res = resources.join(", "),
        tf = tf_name(&[&key.pool, id]),
        pool_tf = tf_name(&[&key.pool]),
        number = key.project_number,
        mapping = tf_mapping(provider),
        condition = provider.condition(),
    );
}

/// A `google_iam_workload_identity_pool_provider` with an `oidc` block.
fn oidc_provider_terraform(
    out: &mut String,
    key: &PoolKey,
    id: &str,
    provider: &Provider,
    issuer_uri: &str,
) {
    let audiences = provider.allowed_audiences();
    let allowed = if audiences.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = audiences.iter().map(|a| format!("\"{a}\"")).collect();
        format!("\n    allowed_audiences = [{}]", quoted.join(", "))
    };
    let _ = write!(
        out,
        "\n{comment}resource \"google_iam_workload_identity_pool_provider\" \"{tf}\" {{\n  project                            = \"{number}\"\n  workload_identity_pool_id          = google_iam_workload_identity_pool.{pool_tf}.workload_identity_pool_id\n  workload_identity_pool_provider_id = \"{id}\"\n  attribute_mapping = {{\n{mapping}\n  }}\n  attribute_condition = \"{condition}\"\n  oidc {{\n    issuer_uri = \"{issuer_uri}\"{allowed}\n    # jwks_json = file(\"jwks.json\")\n  }}\n}}\n",
        comment = oidc_comment(id, issuer_uri, provider, "the jwks_json line below"),
        tf = tf_name(&[&key.pool, id]),
        pool_tf = tf_name(&[&key.pool]),
        number = key.project_number,
        mapping = tf_mapping(provider),
        condition = provider.condition(),
    );
}

/// Terraform for the `google` and `aws` providers.
pub fn terraform(setup: &Setup, options: &Options) -> String {
    let mut out = String::new();
    header(&mut out, setup, "#");
    let irsa = setup
        .roles
        .values()
        .any(|r| matches!(r.trust, Trust::WebIdentity { .. }));
    let chained = setup
        .roles
        .values()
        .any(|r| matches!(r.trust, Trust::Chained { .. }));
    if irsa {
        let default = options
            .oidc_issuer
            .as_ref()
            .map(|_| format!("\n  default     = \"{}\"", oidc_provider(options, "")))
            .unwrap_or_default();
        let _ = write!(
            out,
            "\nvariable \"oidc_provider\" {{\n  description = \"The EKS cluster's OIDC issuer without https:// (aws eks describe-cluster --query cluster.identity.oidc.issuer); IRSA roles trust it.\"\n  type        = string{default}\n}}\n"
        );
    }
    if chained {
        let default = options
            .controller_role_arn
            .as_ref()
            .map(|arn| format!("\n  default     = \"{arn}\""))
            .unwrap_or_default();
        let _ = write!(
            out,
            "\nvariable \"controller_role_arn\" {{\n  description = \"The fedcred controller's own IAM role, which chained roles trust.\"\n  type        = string{default}\n}}\n"
        );
    }
    for (key, pool) in &setup.pools {
        let pool_tf = tf_name(&[&key.pool]);
        let _ = write!(
            out,
            "\n# {}\nresource \"google_iam_workload_identity_pool\" \"{pool_tf}\" {{\n  project                   = \"{}\"\n  workload_identity_pool_id = \"{}\"\n  display_name              = \"fedcred\"\n}}\n",
            pool_comment(key),
            key.project_number,
            key.pool
        );
        for (id, provider) in &pool.providers {
            match &provider.trusts {
                Trusts::Aws { account_id } => {
                    aws_provider_terraform(&mut out, key, id, provider, account_id);
                }
                Trusts::Kubernetes { issuer_uri, .. } => {
                    oidc_provider_terraform(&mut out, key, id, provider, issuer_uri);
                }
            }
        }
    }
    for (email, sa) in &setup.service_accounts {
        let project = sa.project_id.as_deref().unwrap_or("PROJECT_ID");
        let account = email.split('@').next().unwrap_or(email);
        let resources: Vec<&str> = sa.resources.iter().map(String::as_str).collect();
        let _ = write!(
            out,
            "\n# {email} is impersonated for {}: only these principals may mint its tokens.\n",
            resources.join(", ")
        );
        for (i, member) in sa.members.iter().enumerate() {
            let _ = write!(
                out,
                "resource \"google_service_account_iam_member\" \"{}\" {{\n  service_account_id = \"projects/{project}/serviceAccounts/{email}\"\n  role               = \"roles/iam.workloadIdentityUser\"\n  member             = \"{member}\"\n}}\n",
                tf_name(&[account, project, "wif", &i.to_string()])
            );
        }
        for (role, why) in &sa.roles {
            let short = role.trim_start_matches("roles/");
            let _ = write!(
                out,
                "\n# {role}: {why}.\nresource \"google_project_iam_member\" \"{}\" {{\n  project = \"{project}\"\n  role    = \"{role}\"\n  member  = \"serviceAccount:{email}\"\n}}\n",
                tf_name(&[account, project, short])
            );
        }
        for left in &sa.left_to_user {
            let _ = writeln!(
                out,
                "# Not granted here, the resources to grant on are yours to name: {left}."
            );
        }
    }
    for (principal, direct) in &setup.direct {
        let _ = write!(
            out,
            "\n# {principal} uses its federated token directly: grant it access on each resource it uses\n# as the member \"{}\".\n",
            direct.member
        );
    }
    for user in &setup.alloydb_users {
        let _ = write!(
            out,
            "\n# The AlloyDB Auth Proxy logs in as {user}; the IAM user must exist in the cluster. It starts\n# with no privileges: GRANT what the application needs as a database administrator.\nresource \"google_alloydb_user\" \"{tf}\" {{\n  cluster   = \"projects/{project}/locations/{region}/clusters/{cluster}\"\n  user_id   = \"{user}\"\n  user_type = \"ALLOYDB_IAM_USER\"\n}}\n",
            user = user.user,
            tf = tf_name(&[&user.cluster, &user.user]),
            project = user.project,
            region = user.region,
            cluster = user.cluster,
        );
    }
    for (arn, role) in &setup.roles {
        let why = match &role.trust {
            Trust::WebIdentity { .. } => {
                "IRSA: only the named ServiceAccounts' tokens may assume it"
            }
            Trust::Chained { .. } => {
                "the controller's identity, for the session names of the allowed namespaces only"
            }
        };
        let policy = trust_policy(
            &role.account_id,
            &role.trust,
            "${var.oidc_provider}",
            "${var.controller_role_arn}",
        );
        let _ = write!(
            out,
            "\n# {arn}: {why}. No permission policy: GetCallerIdentity needs none.\nresource \"aws_iam_role\" \"{tf}\" {{\n  name               = \"{name}\"\n  path               = \"{path}\"\n  description        = \"fedcred: Google Workload Identity Federation\"\n  assume_role_policy = <<-JSON\n{policy}\n  JSON\n}}\n",
            tf = tf_name(&[&role.name]),
            name = role.name,
            path = role.path,
            policy = pretty(&policy)
                .lines()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    out
}

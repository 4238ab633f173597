//! `fedcred doctor`: walks the chain of one FederatedCredential (the resource, its AWS identity,
//! the principal Google sees, the provider's condition, the last exchange, the Secret, the pods
//! using it) and says for each step what holds, or what is wrong and how to fix it.
//!
//! Pure: the adapter observes the cluster (and takes the provider's condition from the user)
//! and [`diagnose`] decides. The condition is evaluated with the `cel` crate, a maintained CEL
//! implementation, over the attributes the provider's mapping gives.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use serde::Serialize;

use crate::api::{FederatedCredential, READY, REFRESH_FAILING};
use crate::names::{ROLE_ARN_ANNOTATION, secret_name, session_name};
use crate::setup;

/// How one step came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
    /// Not checked: an earlier step failed, or what it needs was not given.
    Skip,
}

/// One step of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Short stable name: `resource`, `aws-identity`, `principal`, `condition`, `exchange`,
    /// `secret`, `pods`.
    pub step: &'static str,
    pub outcome: Outcome,
    /// What was found.
    pub found: String,
    /// What to do, when something is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The steps for one resource, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub resource: String,
    pub steps: Vec<Step>,
}

impl Report {
    /// How many steps failed (the exit status is non-zero when any did).
    pub fn failures(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.outcome == Outcome::Fail)
            .count()
    }

    /// One screen of text.
    pub fn text(&self) -> String {
        let mut out = format!("fedcred doctor {}\n", self.resource);
        for step in &self.steps {
            let mark = match step.outcome {
                Outcome::Pass => "ok  ",
                Outcome::Warn => "WARN",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "skip",
            };
            out.push_str(&format!("  {mark} {:<13}{}\n", step.step, step.found));
            if let Some(fix) = &step.fix {
                for (i, line) in fix.lines().enumerate() {
                    let lead = if i == 0 { "fix: " } else { "     " };
                    out.push_str(&format!("{:20}{lead}{line}\n", ""));
                }
            }
        }
        let failures = self.failures();
        out.push_str(&match failures {
            0 => "no problem found\n".to_owned(),
            1 => "1 step failed\n".to_owned(),
            n => format!("{n} steps failed\n"),
        });
        out
    }
}

/// What the adapter saw of the resource's ServiceAccount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceAccountSeen {
    Missing,
    /// Its annotations.
    Found(BTreeMap<String, String>),
}

/// What the adapter saw of the resource's Secret (never its token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSeen {
    /// Whether the resource owns it (fedcred writes only Secrets it owns).
    pub owned: bool,
    pub keys: BTreeSet<String>,
    /// The `expiry` key's value.
    pub expiry: Option<String>,
}

/// A pod of the namespace that names the resource in `fedcred.io/credential`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSeen {
    pub name: String,
    /// Labelled `fedcred.io/inject: "true"`.
    pub opted_in: bool,
    /// Carries the injected metadata sidecar.
    pub injected: bool,
}

/// What one exchange tried by the doctor itself (`--exchange`) gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tried {
    /// The AWS principal Google was shown.
    pub principal: Option<String>,
    /// The service account impersonated, if any.
    pub service_account: Option<String>,
    pub expires_at: String,
}

/// What [`diagnose`] decides from.
#[derive(Clone, Debug)]
pub struct Observed {
    pub namespace: String,
    pub name: String,
    /// `None`: no such resource.
    pub resource: Option<FederatedCredential>,
    /// `None`: not looked up (the resource uses the controller's identity).
    pub service_account: Option<ServiceAccountSeen>,
    /// `None`: no such Secret.
    pub secret: Option<SecretSeen>,
    pub pods: Vec<PodSeen>,
    /// The provider's attribute condition, as the user gave it.
    pub condition: Option<String>,
    /// The provider's attribute mapping (`google.subject=assertion.arn,…`); default: the one
    /// `fedcred setup` prints.
    pub mapping: Option<String>,
    /// An exchange tried now, when asked for: AWS, Google STS and IAM Credentials answering
    /// the caller's credentials as they answer the controller's.
    pub tried: Option<Result<Tried, crate::error::ExchangeError>>,
    pub now: Timestamp,
}

fn step(step: &'static str, outcome: Outcome, found: impl Into<String>) -> Step {
    Step {
        step,
        outcome,
        found: found.into(),
        fix: None,
    }
}

fn with_fix(mut s: Step, fix: impl Into<String>) -> Step {
    s.fix = Some(fix.into());
    s
}

/// The fix for a status reason (docs/troubleshooting.md has the long form).
/// `service_account` is the resource's Kubernetes ServiceAccount, when it names one;
/// `kubernetes`: the resource's token comes from the API server (`spec.kubernetes`), so its
/// provider is an OIDC one and what Google sees is `system:serviceaccount:NS:NAME`.
pub fn reason_fix(
    reason: &str,
    ns: &str,
    principal: Option<&str>,
    service_account: Option<&str>,
    kubernetes: bool,
) -> String {
    let principal = principal.unwrap_or(if kubernetes {
        "the subject in status.subject"
    } else {
        "the principal in status.awsPrincipalArn"
    });
    let sa = service_account.unwrap_or("NAME");
    // The OIDC provider is changed with one command; only its flag differs per fix.
    let update_oidc = |flag: &str| {
        format!(
            "gcloud iam workload-identity-pools providers update-oidc PROVIDER --location=global --workload-identity-pool=POOL {flag}"
        )
    };
    let upload_jwks = format!(
        "kubectl get --raw /openid/v1/jwks > jwks.json && {}",
        update_oidc("--jwk-json-path=jwks.json")
    );
    let peers = if kubernetes {
        "the API server (TokenRequest), sts.googleapis.com and iamcredentials.googleapis.com"
    } else {
        "sts.REGION.amazonaws.com, sts.googleapis.com and iamcredentials.googleapis.com"
    };
    match reason {
        "SecretConflict" => "a Secret of that name exists and is not this resource's: delete or rename it, or set spec.secret.name to a free name".to_owned(),
        "InvalidSpec" if kubernetes => "correct the field the message names: spec.kubernetes.tokenPath is read by fedcred agent only; the controller needs spec.kubernetes.serviceAccount".to_owned(),
        "InvalidSpec" => "correct the field the message names (for a region: spec.aws.region, or the chart's awsRegion)".to_owned(),
        "ControllerIdentityNotAllowed" => format!("ask the cluster admin to grant {ns} the role (the chart's controllerIdentity.roles.{ns}), or use an IRSA ServiceAccount (spec.aws.serviceAccount)"),
        "ServiceAccountNotFound" if kubernetes => format!("kubectl -n {ns} create serviceaccount {sa} (or fix spec.kubernetes.serviceAccount.name)"),
        "ServiceAccountNotFound" => format!("kubectl -n {ns} create serviceaccount {sa}, annotated with eks.amazonaws.com/role-arn (or fix spec.aws.serviceAccount.name)"),
        "RoleArnMissing" => format!("kubectl -n {ns} annotate serviceaccount {sa} eks.amazonaws.com/role-arn=arn:aws:iam::ACCOUNT:role/ROLE"),
        "TokenRequestFailed" => format!("the controller needs create on serviceaccounts/token in {ns}, which the chart's ClusterRole grants: kubectl auth can-i create serviceaccounts --subresource=token -n {ns} --as=system:serviceaccount:fedcred-system:fedcred (the chart's default names); if it can, check the API server's health"),
        "AwsCredentialsUnavailable" => "give the controller an AWS identity: IRSA through the chart's serviceAccount.annotations, EKS Pod Identity, or an instance profile with IMDSv2 (hop limit 2); or use spec.aws.serviceAccount, which needs none".to_owned(),
        "AwsStsDenied" => format!("the role's trust policy must admit this: `fedcred setup -f FILE` prints it (IRSA: the cluster's OIDC provider, sub system:serviceaccount:{ns}:{sa}, aud sts.amazonaws.com; a chained role: the controller's role as principal)"),
        "AttributeConditionRejected" if kubernetes => format!("the provider's condition must admit {principal} (attribute.namespace {ns}): `fedcred setup -f FILE` prints it; apply it with `{}`", update_oidc("--attribute-condition=CONDITION")),
        "AttributeConditionRejected" => format!("the provider's condition must admit {principal}: `fedcred setup -f FILE` prints the condition; apply it with `gcloud iam workload-identity-pools providers update-aws` (`update-oidc` for a kubernetes source). --condition \"$(gcloud iam workload-identity-pools providers describe PROVIDER --location=global --workload-identity-pool=POOL --format='value(attributeCondition)')\" evaluates the current one here"),
        "InvalidAudience" => "Google does not take spec.google.audience as a provider name: copy it from `gcloud iam workload-identity-pools providers describe PROVIDER --location=global --workload-identity-pool=POOL --format='value(name)'`, prefixed with //iam.googleapis.com/ (the project number; pool and provider IDs of 4-32 lowercase letters, digits and inner hyphens)".to_owned(),
        "ProviderNotFound" => "gcloud iam workload-identity-pools providers describe PROVIDER --location=global --workload-identity-pool=POOL: create, undelete or enable it (`fedcred setup` prints the commands)".to_owned(),
        "InvalidSubjectToken" => "Google could not verify the signed AWS request: check the controller's clock (NTP), spec.aws.region, spec.aws.stsEndpoint (Google calls only AWS's own STS endpoints: remove it, or use https://sts.REGION.amazonaws.com), and that the provider's --account-id is the role's account".to_owned(),
        "IssuerNotTrusted" => format!("the provider's issuer must be the token's iss, `kubectl get --raw /.well-known/openid-configuration` → issuer: `{}`", update_oidc("--issuer-uri=ISSUER")),
        "SignatureNotVerified" => format!("the provider's keys are not the cluster's (stale or another cluster's); upload the current ones: `{upload_jwks}`"),
        "AudienceMismatch" => format!("the token's aud is spec.kubernetes.audience (default: spec.google.audience): remove spec.kubernetes.audience, or allow it: `{}`", update_oidc("--allowed-audiences=AUDIENCE")),
        "SubjectTokenExpired" => "Google judged the ServiceAccount token expired or not yet valid: sync the clocks (NTP) of the API server's hosts and of the controller; spec.kubernetes.expirationSeconds is its lifetime (600 s by default)".to_owned(),
        "IssuerUnreachable" => format!("Google cannot fetch the issuer's discovery document or keys (a private issuer or CA): upload the keys to the provider instead: `{upload_jwks}`"),
        "TokenFileUnreadable" => "mount a projected ServiceAccount token at spec.kubernetes.tokenPath (audience: spec.google.audience); fedcred agent reads it for every exchange".to_owned(),
        "ImpersonationDenied" => format!("grant roles/iam.workloadIdentityUser on the service account to principal://iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/subject/{principal} (`fedcred setup` prints the command), and check spec.google.serviceAccount"),
        "InvalidTokenRequest" => "tokenLifetimeSeconds above 3600 needs the org policy constraints/iam.allowServiceAccountCredentialLifetimeExtension; check spec.google.scopes".to_owned(),
        "Timeout" => format!("a peer did not answer (the message names it): egress from the controller to {peers}, or to spec.aws.stsEndpoint and spec.google.endpoints when set (proxies, NetworkPolicies, VPC endpoints)"),
        "Upstream" => format!("a peer failed or was unreachable (the message has the error, HTTP status and body); retried, so usually transient; if it persists, check egress to {peers}, spec.aws.stsEndpoint and spec.google.endpoints; \"expired already\": the controller's clock (NTP)"),
        "EndpointNotAllowed" => "use AWS's and Google's own endpoints, or ask the admin to add the endpoint to the chart's endpoints.allowed".to_owned(),
        _ => "see docs/troubleshooting.md".to_owned(),
    }
}

/// The role a resource's AWS identity assumes, if known, and the step that says so.
fn aws_identity(
    fc: &FederatedCredential,
    ns: &str,
    seen: Option<&ServiceAccountSeen>,
) -> (Option<String>, Option<String>, Step) {
    const STEP: &str = "aws-identity";
    let Some(aws) = &fc.spec.aws else {
        // The kubernetes source: no AWS identity; Google sees the ServiceAccount token itself.
        let source = match fc
            .spec
            .kubernetes
            .as_ref()
            .and_then(|k| k.service_account.as_ref())
        {
            Some(sa) => format!(
                "no AWS identity: the token of ServiceAccount {ns}/{} goes to Google, which sees system:serviceaccount:{ns}:{}",
                sa.name, sa.name
            ),
            None => "no AWS identity: a token file for fedcred agent (the controller refuses it)"
                .to_owned(),
        };
        return (None, None, step(STEP, Outcome::Skip, source));
    };
    if let Some(sa) = &aws.service_account {
        let session = Some(session_name(ns, Some(&sa.name)));
        match (seen, &sa.role_arn) {
            (Some(ServiceAccountSeen::Missing), _) => (
                None,
                session,
                with_fix(
                    step(
                        STEP,
                        Outcome::Fail,
                        format!("ServiceAccount {ns}/{} does not exist", sa.name),
                    ),
                    format!(
                        "kubectl -n {ns} create serviceaccount {name} && kubectl -n {ns} annotate serviceaccount {name} {ROLE_ARN_ANNOTATION}=arn:aws:iam::ACCOUNT:role/ROLE",
                        name = sa.name
                    ),
                ),
            ),
            (_, Some(role)) => (
                Some(role.clone()),
                session,
                step(
                    STEP,
                    Outcome::Pass,
                    format!(
                        "IRSA: ServiceAccount {}, role {role} (from spec.aws.serviceAccount.roleArn)",
                        sa.name
                    ),
                ),
            ),
            (Some(ServiceAccountSeen::Found(annotations)), None) => {
                match annotations.get(ROLE_ARN_ANNOTATION) {
                    Some(role) if setup::parse_role_arn(role).is_some() => (
                        Some(role.clone()),
                        session,
                        step(
                            STEP,
                            Outcome::Pass,
                            format!("IRSA: ServiceAccount {}, role {role}", sa.name),
                        ),
                    ),
                    Some(role) => (
                        None,
                        session,
                        with_fix(
                            step(
                                STEP,
                                Outcome::Fail,
                                format!(
                                    "ServiceAccount {} names {role:?} in {ROLE_ARN_ANNOTATION}, which is not an IAM role ARN",
                                    sa.name
                                ),
                            ),
                            format!(
                                "kubectl -n {ns} annotate --overwrite serviceaccount {} {ROLE_ARN_ANNOTATION}=arn:aws:iam::ACCOUNT:role/ROLE",
                                sa.name
                            ),
                        ),
                    ),
                    None => (
                        None,
                        session,
                        with_fix(
                            step(
                                STEP,
                                Outcome::Fail,
                                format!(
                                    "ServiceAccount {} has no {ROLE_ARN_ANNOTATION} annotation and the spec names no roleArn",
                                    sa.name
                                ),
                            ),
                            format!(
                                "kubectl -n {ns} annotate serviceaccount {} {ROLE_ARN_ANNOTATION}=arn:aws:iam::ACCOUNT:role/ROLE",
                                sa.name
                            ),
                        ),
                    ),
                }
            }
            (None, None) => (
                None,
                session,
                step(
                    STEP,
                    Outcome::Skip,
                    format!("IRSA: ServiceAccount {} not looked up", sa.name),
                ),
            ),
        }
    } else if let Some(ci) = &aws.controller_identity {
        match &ci.role_arn {
            Some(role) => (
                Some(role.clone()),
                Some(session_name(ns, None)),
                step(
                    STEP,
                    Outcome::Pass,
                    format!(
                        "the controller's identity chained into {role}; the cluster admin must grant the namespace this role (controllerIdentity.roles)"
                    ),
                ),
            ),
            None => (
                None,
                None,
                with_fix(
                    step(
                        STEP,
                        Outcome::Warn,
                        "the controller's own identity, unchained: Google sees the controller's session, which fedcred does not name (an instance id, a Pod Identity session)",
                    ),
                    "set spec.aws.controllerIdentity.roleArn so that Google sees one principal per namespace",
                ),
            ),
        }
    } else {
        (
            None,
            None,
            step(
                STEP,
                Outcome::Fail,
                "neither aws.serviceAccount nor aws.controllerIdentity is set",
            ),
        )
    }
}

/// What Google's STS sees of an AWS caller: `assertion.arn` and `assertion.account`.
fn aws_assertion(arn: &str) -> cel::Value {
    let account = arn.split(':').nth(4).unwrap_or_default().to_owned();
    HashMap::from([
        ("arn".to_owned(), arn.to_owned()),
        ("account".to_owned(), account),
    ])
    .into()
}

/// What Google's STS sees of a Kubernetes ServiceAccount token, as far as the subject tells:
/// `assertion.sub` and the `kubernetes.io` claim's namespace and ServiceAccount name. `None`
/// when `subject` is not `system:serviceaccount:NAMESPACE:NAME`.
fn kubernetes_assertion(subject: &str) -> Option<cel::Value> {
    let rest = subject.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    let service_account: cel::Value =
        HashMap::from([("name".to_owned(), cel::Value::from(name.to_owned()))]).into();
    let claim: cel::Value = HashMap::from([
        (
            "namespace".to_owned(),
            cel::Value::from(namespace.to_owned()),
        ),
        ("serviceaccount".to_owned(), service_account),
    ])
    .into();
    Some(
        HashMap::from([
            ("sub".to_owned(), cel::Value::from(subject.to_owned())),
            ("kubernetes.io".to_owned(), claim),
        ])
        .into(),
    )
}

/// The mapped attributes of `assertion` under `mapping` (`k=expr,…`), evaluated with CEL.
fn map_attributes(
    mapping: &str,
    assertion: &cel::Value,
) -> Result<BTreeMap<String, String>, String> {
    let mut context = cel::Context::default();
    context.add_variable_from_value("assertion", assertion.clone());
    let mut attributes = BTreeMap::new();
    for pair in mapping.split(',').filter(|p| !p.trim().is_empty()) {
        let (key, expression) = pair
            .split_once('=')
            .ok_or_else(|| format!("mapping entry {pair:?} is not ATTRIBUTE=EXPRESSION"))?;
        let program = cel::Program::compile(expression.trim())
            .map_err(|e| format!("mapping of {key}: {e}"))?;
        match program.execute(&context) {
            Ok(cel::Value::String(s)) => {
                attributes.insert(key.trim().to_owned(), s.to_string());
            }
            Ok(other) => return Err(format!("mapping of {key} gives {other:?}, not a string")),
            Err(e) => return Err(format!("mapping of {key}: {e}")),
        }
    }
    Ok(attributes)
}

/// Whether the provider's `condition` admits `arn` after `mapping`: `Ok(bool)`, or why it
/// cannot be evaluated.
pub fn condition_admits(condition: &str, mapping: &str, arn: &str) -> Result<bool, String> {
    evaluate_condition(condition, mapping, &aws_assertion(arn))
}

/// Whether an OIDC provider's `condition` admits the ServiceAccount token of `subject`
/// (`system:serviceaccount:NAMESPACE:NAME`) after `mapping`.
pub fn oidc_condition_admits(
    condition: &str,
    mapping: &str,
    subject: &str,
) -> Result<bool, String> {
    let assertion = kubernetes_assertion(subject).ok_or_else(|| {
        format!(
            "{subject:?} is not a ServiceAccount subject (system:serviceaccount:NAMESPACE:NAME)"
        )
    })?;
    evaluate_condition(condition, mapping, &assertion)
}

fn evaluate_condition(
    condition: &str,
    mapping: &str,
    assertion: &cel::Value,
) -> Result<bool, String> {
    let attributes = map_attributes(mapping, assertion)?;
    let prefixed = |prefix: &str| -> HashMap<String, String> {
        attributes
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_owned(), v.clone())))
            .collect()
    };
    let program = cel::Program::compile(condition).map_err(|e| format!("the condition: {e}"))?;
    let mut context = cel::Context::default();
    context.add_variable_from_value("assertion", assertion.clone());
    context.add_variable_from_value("google", prefixed("google."));
    context.add_variable_from_value("attribute", prefixed("attribute."));
    match program.execute(&context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("the condition gives {other:?}, not a boolean")),
        Err(e) => Err(format!("the condition: {e}")),
    }
}

/// The steps for `observed`, in the order the chain runs.
pub fn diagnose(observed: &Observed) -> Report {
    let ns = observed.namespace.as_str();
    let id = format!("{ns}/{}", observed.name);
    let mut steps = Vec::new();
    let Some(fc) = &observed.resource else {
        steps.push(with_fix(
            step("resource", Outcome::Fail, format!("FederatedCredential {id} does not exist")),
            format!("kubectl -n {ns} get fedcred   (the names there); create it with kubectl apply -f, and `fedcred setup -f FILE` prints what Google Cloud and AWS need for it"),
        ));
        for name in [
            "aws-identity",
            "principal",
            "condition",
            "exchange",
            "secret",
            "pods",
        ] {
            steps.push(step(name, Outcome::Skip, "no resource"));
        }
        return Report {
            resource: id,
            steps,
        };
    };
    let impersonates = fc
        .spec
        .google
        .service_account
        .as_deref()
        .map_or("uses the federated token directly".to_owned(), |sa| {
            format!("impersonates {sa}")
        });
    steps.push(step(
        "resource",
        Outcome::Pass,
        format!(
            "FederatedCredential {id}: provider {}, {impersonates}",
            fc.spec
                .google
                .audience
                .rsplit('/')
                .next()
                .unwrap_or_default()
        ),
    ));

    let (role, session, identity_step) = aws_identity(fc, ns, observed.service_account.as_ref());
    steps.push(identity_step);

    let status = fc.status.clone().unwrap_or_default();
    let kubernetes = fc.spec.aws.is_none();
    let expected = match (&role, &session, &fc.spec.kubernetes) {
        (Some(role), Some(session), _) => setup::assumed_role_arn(role, session),
        // The API server writes this subject into every token of the ServiceAccount.
        (None, None, Some(k8s)) if kubernetes => k8s
            .service_account
            .as_ref()
            .map(|sa| format!("system:serviceaccount:{ns}:{}", sa.name)),
        _ => None,
    };
    let seen = status
        .aws_principal_arn
        .clone()
        .or_else(|| status.subject.clone());
    let principal = expected.clone().or_else(|| seen.clone());
    steps.push(match (&expected, &seen) {
        (Some(expected), Some(seen)) if expected != seen => with_fix(
            step("principal", Outcome::Warn, format!("Google last saw {seen}, but the resource now presents {expected}")),
            "the role changed since the last exchange; bind Google IAM and the condition to the new principal (`fedcred setup`)",
        ),
        (Some(expected), _) => step("principal", Outcome::Pass, format!("fedcred presents {expected} to Google")),
        (None, Some(seen)) => step("principal", Outcome::Pass, format!("Google saw {seen} (from the status)")),
        (None, None) => step("principal", Outcome::Skip, "not known until the AWS identity is fixed"),
    });

    let mapping = observed.mapping.clone().unwrap_or_else(|| {
        setup::mapping_flag(if kubernetes {
            &setup::OIDC_ATTRIBUTE_MAPPING
        } else {
            &setup::ATTRIBUTE_MAPPING
        })
    });
    let admits = |condition: &str, principal: &str| {
        if kubernetes {
            oidc_condition_admits(condition, &mapping, principal)
        } else {
            condition_admits(condition, &mapping, principal)
        }
    };
    let example = |principal: &str| {
        if kubernetes {
            format!("--attribute-condition=\"assertion.sub in ['{principal}']\"")
        } else {
            format!("--attribute-condition=\"assertion.arn in ['{principal}']\"")
        }
    };
    steps.push(match (&observed.condition, &principal) {
        (None, _) => step(
            "condition",
            Outcome::Skip,
            "the provider's condition was not given (--condition)",
        ),
        (Some(_), None) => step("condition", Outcome::Skip, "no principal to evaluate it for"),
        (Some(condition), Some(principal)) => match admits(condition, principal) {
            Ok(true) => step("condition", Outcome::Pass, format!("the provider's condition admits {principal}")),
            Ok(false) => with_fix(
                step("condition", Outcome::Fail, format!("the provider's condition refuses {principal}")),
                format!("add it to the condition, for example {} (`fedcred setup` prints the whole command)", example(principal)),
            ),
            Err(problem) => with_fix(
                step("condition", Outcome::Fail, format!("cannot evaluate the condition: {problem}")),
                "check the condition and mapping given (Google refuses every principal when the condition does not evaluate)",
            ),
        },
    });

    let k8s_sa = match (&fc.spec.aws, &fc.spec.kubernetes) {
        (Some(aws), _) => aws.service_account.as_ref().map(|sa| sa.name.as_str()),
        (None, Some(k8s)) => k8s.service_account.as_ref().map(|sa| sa.name.as_str()),
        (None, None) => None,
    };
    let ready = status.conditions.iter().find(|c| c.type_ == READY);
    let failing = status
        .conditions
        .iter()
        .find(|c| c.type_ == REFRESH_FAILING && c.status == "True");
    steps.push(match (ready, failing) {
        (None, _) => with_fix(
            step("exchange", Outcome::Warn, "no status yet: the controller has not reconciled the resource"),
            "is the controller running and watching this namespace? kubectl -n fedcred-system get pods,lease",
        ),
        (Some(r), _) if r.status != "True" => with_fix(
            step("exchange", Outcome::Fail, format!("{}: {}", r.reason, r.message)),
            reason_fix(&r.reason, ns, principal.as_deref(), k8s_sa, kubernetes),
        ),
        (Some(_), Some(f)) => with_fix(
            step("exchange", Outcome::Warn, format!("the token is still valid, but refreshes fail: {}: {}", f.reason, f.message)),
            reason_fix(&f.reason, ns, principal.as_deref(), k8s_sa, kubernetes),
        ),
        (Some(r), None) => step(
            "exchange",
            Outcome::Pass,
            format!("{}: token expires at {}", r.reason, status.expires_at.as_ref().map(|t| t.0.to_string()).unwrap_or_default()),
        ),
    });

    steps.push(match &observed.tried {
        None => step(
            "try",
            Outcome::Skip,
            "no exchange tried now (--exchange tries one with your credentials)",
        ),
        Some(Ok(tried)) => step(
            "try",
            Outcome::Pass,
            format!(
                "AWS and Google answered now: {} for {}, expires at {}",
                tried
                    .service_account
                    .as_deref()
                    .map_or("a federated token".to_owned(), |sa| format!(
                        "a token of {sa}"
                    )),
                tried.principal.as_deref().unwrap_or("the principal"),
                tried.expires_at
            ),
        ),
        Some(Err(e)) => with_fix(
            step("try", Outcome::Fail, format!("{}: {}", e.reason, e.message)),
            reason_fix(
                e.reason.as_str(),
                ns,
                e.principal.as_deref().or(principal.as_deref()),
                k8s_sa,
                kubernetes,
            ),
        ),
    });

    let secret = secret_name(fc);
    steps.push(match &observed.secret {
        None => with_fix(
            step("secret", Outcome::Fail, format!("Secret {ns}/{secret} does not exist")),
            "it is written after the first successful exchange: fix the step that fails above",
        ),
        Some(s) if !s.owned => with_fix(
            step("secret", Outcome::Fail, format!("Secret {ns}/{secret} is not owned by the resource; fedcred will not overwrite it")),
            reason_fix("SecretConflict", ns, None, None, kubernetes),
        ),
        Some(s) => {
            let missing: Vec<&str> = ["access_token", "expiry", "token_type"]
                .into_iter()
                .filter(|k| !s.keys.contains(*k))
                .collect();
            let expiry = s.expiry.as_deref().and_then(|e| e.parse::<Timestamp>().ok());
            match expiry {
                _ if !missing.is_empty() => with_fix(
                    step("secret", Outcome::Fail, format!("Secret {ns}/{secret} lacks {}", missing.join(", "))),
                    "it was edited by hand: delete it and the controller writes it again",
                ),
                Some(at) if at > observed.now => step(
                    "secret",
                    Outcome::Pass,
                    format!("Secret {ns}/{secret} holds a token valid for {} more minutes", (at.as_second() - observed.now.as_second()) / 60),
                ),
                Some(at) => with_fix(
                    step("secret", Outcome::Fail, format!("the token in Secret {ns}/{secret} expired at {at}")),
                    "fix the failing step above; the next refresh writes a fresh token",
                ),
                None => with_fix(
                    step("secret", Outcome::Fail, format!("Secret {ns}/{secret} has no readable expiry")),
                    "delete it and the controller writes it again",
                ),
            }
        }
    });

    let not_injected: Vec<&str> = observed
        .pods
        .iter()
        .filter(|p| p.opted_in && !p.injected)
        .map(|p| p.name.as_str())
        .collect();
    let unlabelled: Vec<&str> = observed
        .pods
        .iter()
        .filter(|p| !p.opted_in)
        .map(|p| p.name.as_str())
        .collect();
    let injected = observed.pods.iter().filter(|p| p.injected).count();
    steps.push(if !not_injected.is_empty() {
        with_fix(
            step("pods", Outcome::Fail, format!("not injected: {}", not_injected.join(", "))),
            "they were created before the webhook could mutate them (or it was unreachable with failurePolicy Ignore): recreate them (kubectl rollout restart deployment/NAME), and check kubectl get mutatingwebhookconfiguration",
        )
    } else if !unlabelled.is_empty() {
        with_fix(
            step("pods", Outcome::Warn, format!("annotated but not labelled fedcred.io/inject=true: {}", unlabelled.join(", "))),
            "add the label fedcred.io/inject: \"true\" to the pod template; the webhook only sees labelled pods",
        )
    } else if injected == 0 {
        step("pods", Outcome::Pass, format!("no pod uses it yet (annotation fedcred.io/credential: {})", observed.name))
    } else {
        step("pods", Outcome::Pass, format!("{injected} pod(s) injected"))
    });
    Report {
        resource: id,
        steps,
    }
}

#[cfg(test)]
mod tests;

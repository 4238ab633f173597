//! AWS credential sources: the adapters that turn a FederatedCredential's `aws` section into
//! temporary AWS credentials and the principal ARN Google will see.
//!
//! - IRSA: a Kubernetes TokenRequest for the named ServiceAccount (audience
//!   `sts.amazonaws.com`), then `AssumeRoleWithWebIdentity` (unsigned) for its role.
//! - The controller's own identity: environment, web identity, ECS / EKS Pod Identity container
//!   credentials and EC2 IMDSv2, tried in that order, optionally chained with `AssumeRole`.
//!
//! Session names are derived from the namespace (and ServiceAccount), so Google sees one stable
//! principal per namespace identity and IAM can be bound per namespace.
//!
//! This module talks to AWS and to the Kubernetes API; it decides nothing about scheduling.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_config::provider_config::ProviderConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_sts::error::{DisplayErrorContext, SdkError};
use fedcred_core::error::{ExchangeError, Reason};
use fedcred_core::names::{ROLE_ARN_ANNOTATION, STS_AUDIENCE, is_role_arn, session_name};
use fedcred_core::sensitive::Sensitive;
use fedcred_core::sigv4::AwsCredentials;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use tokio::sync::Mutex;

/// Lifetime asked for in TokenRequest; the API server's minimum. The token is used once.
const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 600;

/// Lifetime of assumed-role credentials: AWS's minimum. They only sign one request.
const ASSUMED_ROLE_SECONDS: i32 = 900;

/// Credentials for signing, and the principal Google will see (when known before asking).
#[derive(Clone, Debug)]
pub struct AwsIdentity {
    pub credentials: AwsCredentials,
    pub principal_arn: Option<String>,
}

/// The SDK's credentials as the core's signer takes them.
fn for_signing(credentials: &Credentials) -> AwsCredentials {
    AwsCredentials {
        access_key_id: credentials.access_key_id().to_owned(),
        secret_access_key: Sensitive::new(credentials.secret_access_key()),
        session_token: credentials.session_token().map(Sensitive::new),
    }
}

/// The AWS side's clients and configuration, shared by all resources.
pub struct Aws {
    base: SdkConfig,
    controller: Mutex<Option<Credentials>>,
    /// STS clients by (region, endpoint, access key id of the signing credentials); building
    /// one costs more than the call it makes.
    clients: std::sync::Mutex<HashMap<ClientKey, aws_sdk_sts::Client>>,
    /// The ARN of each set of the controller's own credentials, by the STS client that told
    /// it (region, endpoint, access key id): an endpoint's answer is never taken for another's.
    callers: std::sync::Mutex<HashMap<ClientKey, String>>,
}

/// Region, endpoint override, and access key id of the credentials an STS client signs with.
type ClientKey = (String, Option<String>, Option<String>);

/// Deadlines of every AWS STS call: connect, each attempt, and the call with its retries.
fn sts_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .read_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(15))
        .build()
}

/// Clients kept before the cache starts over (credentials rotate; identities are few).
const MAX_CACHED_CLIENTS: usize = 256;

impl Aws {
    /// Loads region, endpoint overrides (`AWS_ENDPOINT_URL_STS`, …) and retry settings from
    /// the environment the way every AWS SDK does.
    pub async fn from_env() -> Self {
        let base = aws_config::defaults(BehaviorVersion::latest())
            // Credentials are resolved per use below, so each failure can be explained.
            .no_credentials()
            // An endpoint that accepts connections and never answers must not hold a call
            // for longer than this; the SDK alone sets only a connect timeout.
            .timeout_config(sts_timeouts())
            .load()
            .await;
        Aws {
            base,
            controller: Mutex::new(None),
            clients: std::sync::Mutex::new(HashMap::new()),
            callers: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The region from the environment or instance metadata, used when the spec names none.
    pub fn default_region(&self) -> Option<&str> {
        self.base.region().map(Region::as_ref)
    }

    fn sts(
        &self,
        region: &str,
        endpoint: Option<&str>,
        credentials: Option<Credentials>,
    ) -> aws_sdk_sts::Client {
        let key = (
            region.to_owned(),
            endpoint.map(str::to_owned),
            credentials.as_ref().map(|c| c.access_key_id().to_owned()),
        );
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        if clients.len() >= MAX_CACHED_CLIENTS {
            clients.clear();
        }
        let client = Self::build_sts(&self.base, region, endpoint, credentials);
        clients.insert(key, client.clone());
        client
    }

    fn build_sts(
        base: &SdkConfig,
        region: &str,
        endpoint: Option<&str>,
        credentials: Option<Credentials>,
    ) -> aws_sdk_sts::Client {
        let mut conf =
            aws_sdk_sts::config::Builder::from(base).region(Region::new(region.to_owned()));
        if let Some(url) = endpoint {
            conf = conf.endpoint_url(url);
        }
        if let Some(creds) = credentials {
            conf = conf.credentials_provider(creds);
        }
        aws_sdk_sts::Client::from_conf(conf.build())
    }

    /// IRSA: exchanges a fresh token of `namespace/service_account` for the role's credentials.
    pub async fn irsa(
        &self,
        kube: &kube::Client,
        namespace: &str,
        service_account: &str,
        role_override: Option<&str>,
        region: &str,
        sts_endpoint: Option<&str>,
    ) -> Result<AwsIdentity, ExchangeError> {
        let accounts: Api<ServiceAccount> = Api::namespaced(kube.clone(), namespace);
        let sa = match accounts.get_opt(service_account).await {
            Ok(Some(sa)) => sa,
            Ok(None) => {
                return Err(ExchangeError::new(
                    Reason::ServiceAccountNotFound,
                    format!(
                        "ServiceAccount {namespace}/{service_account} does not exist; create it or fix aws.serviceAccount.name"
                    ),
                ));
            }
            Err(e) => {
                return Err(ExchangeError::new(
                    Reason::TokenRequestFailed,
                    format!("reading ServiceAccount {namespace}/{service_account} failed: {e}"),
                ));
            }
        };
        let annotated = sa
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROLE_ARN_ANNOTATION))
            .map(String::as_str);
        let role_arn = match role_override.or(annotated) {
            Some(arn) if is_role_arn(arn) => arn,
            Some(arn) => {
                return Err(ExchangeError::new(
                    Reason::InvalidSpec,
                    format!(
                        "the {ROLE_ARN_ANNOTATION} annotation of ServiceAccount {namespace}/{service_account} is {arn:?}, not an IAM role ARN such as arn:aws:iam::123456789012:role/my-role"
                    ),
                ));
            }
            None => {
                return Err(ExchangeError::new(
                    Reason::RoleArnMissing,
                    format!(
                        "ServiceAccount {namespace}/{service_account} has no {ROLE_ARN_ANNOTATION} annotation; annotate it with the IAM role to assume or set aws.serviceAccount.roleArn"
                    ),
                ));
            }
        };

        let web_identity_token = super::kubernetes::service_account_token(
            kube,
            namespace,
            service_account,
            STS_AUDIENCE,
            SERVICE_ACCOUNT_TOKEN_SECONDS,
        )
        .await?;

        let session = session_name(namespace, Some(service_account));
        let out = self
            .sts(region, sts_endpoint, None)
            .assume_role_with_web_identity()
            .role_arn(role_arn)
            .role_session_name(&session)
            .web_identity_token(web_identity_token.expose())
            .duration_seconds(ASSUMED_ROLE_SECONDS)
            .send()
            .await
            .map_err(|e| sts_error("AssumeRoleWithWebIdentity", role_arn, &e))?;
        assumed(
            out.credentials,
            out.assumed_role_user.map(|u| u.arn),
            role_arn,
        )
    }

    /// The controller's own identity, chained into `role_arn` when given.
    pub async fn controller(
        &self,
        namespace: &str,
        role_arn: Option<&str>,
        region: &str,
        sts_endpoint: Option<&str>,
    ) -> Result<AwsIdentity, ExchangeError> {
        let own = self.own_credentials(region).await?;
        let Some(role_arn) = role_arn else {
            // Google will see the controller's own principal; ask AWS who that is (once per
            // set of credentials), so status and error messages can name it.
            let caller_key = (
                region.to_owned(),
                sts_endpoint.map(str::to_owned),
                Some(own.access_key_id().to_owned()),
            );
            let known = self
                .callers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&caller_key)
                .cloned();
            let arn = match known {
                Some(arn) => Some(arn),
                None => {
                    let who = self
                        .sts(region, sts_endpoint, Some(own.clone()))
                        .get_caller_identity()
                        .send()
                        .await
                        .map_err(|e| {
                            sts_error("GetCallerIdentity", "the controller's own identity", &e)
                        })?;
                    if let Some(arn) = &who.arn {
                        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
                        if callers.len() >= MAX_CACHED_CLIENTS {
                            callers.clear();
                        }
                        callers.insert(caller_key, arn.clone());
                    }
                    who.arn
                }
            };
            return Ok(AwsIdentity {
                credentials: for_signing(&own),
                principal_arn: arn,
            });
        };
        let out = self
            .sts(region, sts_endpoint, Some(own))
            .assume_role()
            .role_arn(role_arn)
            .role_session_name(session_name(namespace, None))
            .duration_seconds(ASSUMED_ROLE_SECONDS)
            .send()
            .await
            .map_err(|e| sts_error("AssumeRole", role_arn, &e))?;
        assumed(
            out.credentials,
            out.assumed_role_user.map(|u| u.arn),
            role_arn,
        )
    }

    /// The controller's credentials from the standard sources, cached until five minutes
    /// before they expire.
    async fn own_credentials(&self, region: &str) -> Result<Credentials, ExchangeError> {
        let mut cached = self.controller.lock().await;
        if let Some(creds) = cached.as_ref() {
            let fresh = creds
                .expiry()
                .is_none_or(|exp| exp > SystemTime::now() + Duration::from_secs(300));
            if fresh {
                return Ok(creds.clone());
            }
        }
        let creds = default_chain(region).await?;
        *cached = Some(creds.clone());
        Ok(creds)
    }
}

fn assumed(
    credentials: Option<aws_sdk_sts::types::Credentials>,
    arn: Option<String>,
    role_arn: &str,
) -> Result<AwsIdentity, ExchangeError> {
    let c = credentials.ok_or_else(|| {
        ExchangeError::new(
            Reason::Upstream,
            format!("AWS STS returned no credentials for {role_arn}"),
        )
    })?;
    Ok(AwsIdentity {
        credentials: AwsCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: Sensitive::new(c.secret_access_key),
            session_token: Some(Sensitive::new(c.session_token)),
        },
        principal_arn: arn,
    })
}

fn sts_error<E, R>(operation: &str, target: &str, err: &SdkError<E, R>) -> ExchangeError
where
    E: std::error::Error + aws_sdk_sts::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown");
            let msg = e.message().unwrap_or("");
            ExchangeError::new(
                Reason::AwsStsDenied,
                format!(
                    "AWS STS refused {operation} for {target}: {code}: {msg}; check the role's trust policy allows this cluster's OIDC provider (IRSA) or the controller's role (sts:AssumeRole)"
                ),
            )
        }
        // A connect or read timeout of the HTTP client is a timeout too, not another failure.
        SdkError::DispatchFailure(failure) if failure.is_timeout() => ExchangeError::new(
            Reason::Timeout,
            format!("AWS STS {operation} for {target} timed out"),
        ),
        SdkError::TimeoutError(_) => ExchangeError::new(
            Reason::Timeout,
            format!("AWS STS {operation} for {target} timed out"),
        ),
        other => ExchangeError::new(
            Reason::Upstream,
            format!(
                "AWS STS {operation} for {target} failed: {}",
                DisplayErrorContext(other)
            ),
        ),
    }
}

/// The standard AWS credential sources, in the order every AWS SDK tries them. Unlike the SDK's
/// own chain, the error lists every source and why it gave nothing.
async fn default_chain(region: &str) -> Result<Credentials, ExchangeError> {
    let conf = ProviderConfig::default().with_region(Some(Region::new(region.to_owned())));
    let sources: [(&str, Box<dyn ProvideCredentials>); 5] = [
        (
            "environment (AWS_ACCESS_KEY_ID)",
            Box::new(aws_config::environment::EnvironmentVariableCredentialsProvider::new()),
        ),
        (
            "shared config files (AWS_PROFILE, ~/.aws/credentials)",
            Box::new(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .configure(&conf)
                    .build(),
            ),
        ),
        (
            "web identity (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN)",
            Box::new(
                aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
                    .configure(&conf)
                    .build(),
            ),
        ),
        (
            "container (ECS task role or EKS Pod Identity, AWS_CONTAINER_CREDENTIALS_*)",
            Box::new(
                aws_config::ecs::EcsCredentialsProvider::builder()
                    .configure(&conf)
                    .build(),
            ),
        ),
        (
            "EC2 instance metadata (IMDSv2)",
            Box::new(
                aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                    .configure(&conf)
                    .build(),
            ),
        ),
    ];
    let mut tried = Vec::new();
    for (name, source) in sources {
        match source.provide_credentials().await {
            Ok(creds) => return Ok(creds),
            Err(e @ CredentialsError::CredentialsNotLoaded(_)) => {
                tried.push(format!("{name}: not configured ({})", causes(&e)));
            }
            Err(e) => {
                tried.push(format!("{name}: {}", causes(&e)));
                break;
            }
        }
    }
    Err(ExchangeError::new(
        Reason::AwsCredentialsUnavailable,
        format!(
            "found no AWS credentials where fedcred runs; tried {}. Give the controller (or the host of fedcred agent) an identity: IRSA or Pod Identity on its ServiceAccount, an ECS task role, or an instance role with IMDSv2 (or, in a cluster, use aws.serviceAccount instead)",
            tried.join("; ")
        ),
    ))
}

/// An error and its causes, each by its `Display`, joined with ": ".
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

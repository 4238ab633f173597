//! The exchange engine: runs an [`IdentityKey`] through the adapters (AWS credentials, the
//! subject token, Google STS, impersonation) with single-flight and reuse, as decided in
//! [`fedcred_core::exchange`]: concurrent callers for one identity share one exchange, and a
//! cached token with enough life left is handed out again.
//!
//! [`aws`] and [`google`] are the two clouds' adapters.

pub mod aws;
pub mod google;
pub mod kubernetes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fedcred_core::api::CLOUD_PLATFORM_SCOPE;
use fedcred_core::error::{ExchangeError, Reason};
use fedcred_core::exchange::{IdentityKey, IdentitySource, Issued, Limits, Reuse, shares_failure};
use fedcred_core::google::{AccessToken, JWT_TOKEN_TYPE, truncate};
use fedcred_core::names::{db_user, project_id};
use fedcred_core::sensitive::Sensitive;
use fedcred_core::subject_token::{self, SubjectTokenRequest};
use jiff::Timestamp;

use self::aws::{Aws, AwsIdentity};
use self::google::GoogleClient;

/// What is shown to Google STS, and who it stands for.
struct Presented {
    token: Sensitive,
    token_type: &'static str,
    principal_arn: Option<String>,
    subject: Option<String>,
}

type Slot = Arc<tokio::sync::Mutex<Option<(Timestamp, Result<Issued, ExchangeError>)>>>;

/// The token `slot` holds, if `reuse` accepts it now and no exchange is running for it.
fn held(slot: &Slot, reuse: Reuse) -> Option<Issued> {
    let guard = slot.try_lock().ok()?;
    match guard.as_ref() {
        Some((_, Ok(issued))) if reuse.accepts(issued, Timestamp::now()) => Some(issued.clone()),
        _ => None,
    }
}

/// Runs exchanges with single-flight and reuse.
pub struct Engine {
    aws: Aws,
    google: GoogleClient,
    kube: Option<kube::Client>,
    slots: std::sync::Mutex<HashMap<IdentityKey, Slot>>,
    limits: Limits,
    /// Calls in [`Engine::token`] per namespace, waiting or exchanging.
    in_flight: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    /// Identities whose exchange succeeded after failing ([`Engine::recoveries`]).
    recovered: tokio::sync::broadcast::Sender<IdentityKey>,
}

/// One call's place in its namespace's share; given back when dropped.
struct Place {
    namespace: String,
    in_flight: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(n) = counts.get_mut(&self.namespace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.namespace);
            }
        }
    }
}

impl Engine {
    pub fn new(aws: Aws, google: GoogleClient, kube: Option<kube::Client>) -> Self {
        Engine {
            aws,
            google,
            kube,
            slots: std::sync::Mutex::new(HashMap::new()),
            limits: Limits::default(),
            in_flight: Arc::default(),
            recovered: tokio::sync::broadcast::channel(64).0,
        }
    }

    /// The identities whose exchange succeeds after their last one failed, as they do: the
    /// other resources of such an identity, backing off, can be answered from its token now.
    /// A receiver that falls behind misses some and is told so.
    pub fn recoveries(&self) -> tokio::sync::broadcast::Receiver<IdentityKey> {
        self.recovered.subscribe()
    }

    /// Whether a token for `key` that `reuse` accepts is held, so that [`Engine::token`] would
    /// answer with it without an exchange.
    pub fn holds(&self, key: &IdentityKey, reuse: Reuse) -> bool {
        let slot = {
            let slots = self
                .slots
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match slots.get(key) {
                Some(slot) => slot.clone(),
                None => return false,
            }
        };
        held(&slot, reuse).is_some()
    }

    /// The same engine under `limits`.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// A place in `namespace`'s share of concurrent calls, or [`Reason::Busy`].
    fn enter(&self, namespace: &str) -> Result<Place, ExchangeError> {
        let mut counts = self
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let n = counts.entry(namespace.to_owned()).or_default();
        if !self.limits.admits(*n) {
            return Err(self.limits.busy(namespace));
        }
        *n += 1;
        Ok(Place {
            namespace: namespace.to_owned(),
            in_flight: self.in_flight.clone(),
        })
    }

    /// A token for `key` that `reuse` accepts, exchanging only when no concurrent or recent
    /// exchange for the same identity provides one. `failed_at`: when the caller's own last
    /// attempt failed, if it did: a retry is never answered with its own failure
    /// (`shares_failure`).
    pub async fn token(
        &self,
        key: &IdentityKey,
        reuse: Reuse,
        failed_at: Option<Timestamp>,
    ) -> Result<Issued, ExchangeError> {
        let called = Timestamp::now();
        let slot = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            slots.entry(key.clone()).or_default().clone()
        };
        // A token already held is answered without a place in the namespace's share: the share
        // bounds callers that wait on peers, and a cache hit waits on none.
        if let Some(issued) = held(&slot, reuse) {
            return Ok(issued);
        }
        // A namespace whose peers hang holds at most its share of the callers.
        let _place = self.enter(&key.namespace)?;
        // Another caller exchanging for this identity: wait briefly for its answer, then come
        // back later rather than hold a worker for as long as that exchange may take.
        let Ok(mut guard) = tokio::time::timeout(self.limits.identity_wait, slot.lock()).await
        else {
            return Err(ExchangeError::new(
                Reason::Busy,
                format!(
                    "another exchange of {} in namespace {} is still running",
                    key.describe(),
                    key.namespace
                ),
            ));
        };
        let now = Timestamp::now();
        if let Some((at, result)) = guard.as_ref() {
            match result {
                Ok(issued) if reuse.accepts(issued, now) => return Ok(issued.clone()),
                Err(e) if shares_failure(*at, called, now, failed_at) => {
                    return Err(e.clone());
                }
                _ => {}
            }
        }
        let result = match tokio::time::timeout(self.limits.exchange_deadline, self.exchange(key))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(ExchangeError::new(
                Reason::Timeout,
                format!(
                    "the exchange of {} took longer than {} s and was abandoned: AWS STS, Google or the Kubernetes API did not answer in time",
                    key.describe(),
                    self.limits.exchange_deadline.as_secs()
                ),
            )),
        };
        let recovered = result.is_ok() && matches!(guard.as_ref(), Some((_, Err(_))));
        *guard = Some((Timestamp::now(), result.clone()));
        drop(guard);
        if recovered {
            // No receiver (no controller) is not an error.
            let _ = self.recovered.send(key.clone());
        }
        result
    }

    /// Forgets identities whose tokens expired long ago; call now and then.
    pub fn prune(&self) {
        let now = Timestamp::now();
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.retain(|_, slot| match slot.try_lock() {
            Ok(guard) => match guard.as_ref() {
                Some((_, Ok(issued))) => issued.expires_at > now,
                Some((at, Err(_))) => {
                    now.duration_since(*at).unsigned_abs() < fedcred_core::exchange::FAILURE_SHARE
                }
                None => false,
            },
            Err(_) => true, // in flight
        });
    }

    /// One full exchange, no caching.
    pub async fn exchange(&self, key: &IdentityKey) -> Result<Issued, ExchangeError> {
        let presented = if key.source.is_kubernetes() {
            let subject = key.subject();
            let token = self
                .kubernetes_token(key)
                .await
                .map_err(|e| e.presented_by(subject.as_deref()))?;
            Presented {
                token,
                token_type: JWT_TOKEN_TYPE,
                principal_arn: None,
                subject,
            }
        } else {
            let identity = self.aws_identity(key).await?;
            let token = subject_token::build(
                &identity.credentials,
                &SubjectTokenRequest {
                    region: &key.region,
                    audience: &key.audience,
                    endpoint: key.aws_sts_endpoint.as_deref(),
                    time: Timestamp::now(),
                },
            )
            .map_err(|e| ExchangeError::new(Reason::InvalidSpec, e.to_string()))?;
            Presented {
                token,
                token_type: subject_token::TOKEN_TYPE,
                principal_arn: identity.principal_arn,
                subject: None,
            }
        };
        let principal = presented
            .principal_arn
            .as_deref()
            .or(presented.subject.as_deref());
        let subject = &presented.token;
        // A federated token that is only a step towards impersonation needs cloud-platform to
        // call IAM Credentials; the user's scopes go on the impersonated token.
        let iam_scope = [CLOUD_PLATFORM_SCOPE.to_owned()];
        let sts_scopes: &[String] = if key.service_account.is_some() {
            &iam_scope
        } else {
            &key.scopes
        };
        let federated = self
            .google
            .sts_exchange(
                &key.sts_url,
                &key.audience,
                sts_scopes,
                presented.token_type,
                subject,
            )
            .await
            .map_err(|e| e.presented_by(principal))?;
        let token: AccessToken = match &key.service_account {
            None => federated,
            Some(sa) => self
                .google
                .impersonate(
                    &key.iam_credentials_url,
                    &federated.token,
                    sa,
                    &key.scopes,
                    &key.delegates,
                    Duration::from_secs(key.lifetime_seconds.max(0) as u64),
                )
                .await
                .map_err(|e| e.presented_by(principal))?,
        };
        // The lifetime Google stated, however long the exchange took.
        self.limits
            .check_lifetime(token.lifetime)
            .map_err(|e| e.presented_by(principal))?;
        tracing::info!(
            namespace = %key.namespace,
            identity = %key.describe(),
            principal = principal.unwrap_or("unknown"),
            service_account = key.service_account.as_deref().unwrap_or("none"),
            expires_at = %token.expires_at,
            token = %token.token.fingerprint(),
            "exchanged an identity for a Google token"
        );
        Ok(Issued {
            access_token: token.token,
            expires_at: token.expires_at,
            issued_at: truncate(Timestamp::now()),
            principal_arn: presented.principal_arn.clone(),
            subject: presented.subject.clone(),
            service_account: key.service_account.clone(),
            db_user: key.service_account.as_deref().and_then(db_user),
            project_id: key.service_account.as_deref().and_then(project_id),
            scopes: key.scopes.clone(),
        })
    }

    /// The ServiceAccount token a Kubernetes source presents.
    async fn kubernetes_token(&self, key: &IdentityKey) -> Result<Sensitive, ExchangeError> {
        match &key.source {
            IdentitySource::KubernetesToken {
                name,
                audience,
                expiration_seconds,
            } => {
                let kube = self.kube.as_ref().ok_or_else(|| {
                    ExchangeError::new(
                        Reason::TokenRequestFailed,
                        "kubernetes.serviceAccount needs access to a Kubernetes API server (a kubeconfig or in-cluster config)",
                    )
                })?;
                kubernetes::service_account_token(
                    kube,
                    &key.namespace,
                    name,
                    audience,
                    *expiration_seconds,
                )
                .await
            }
            IdentitySource::TokenFile { path } => kubernetes::token_file(path).await,
            _ => Err(ExchangeError::new(
                Reason::InvalidSpec,
                "not a Kubernetes identity source",
            )),
        }
    }

    async fn aws_identity(&self, key: &IdentityKey) -> Result<AwsIdentity, ExchangeError> {
        let endpoint = key.aws_sts_endpoint.as_deref();
        match &key.source {
            IdentitySource::ServiceAccount { name, role_arn } => {
                let kube = self.kube.as_ref().ok_or_else(|| {
                    ExchangeError::new(
                        Reason::TokenRequestFailed,
                        "aws.serviceAccount needs access to a Kubernetes API server (a kubeconfig or in-cluster config)",
                    )
                })?;
                self.aws
                    .irsa(
                        kube,
                        &key.namespace,
                        name,
                        role_arn.as_deref(),
                        &key.region,
                        endpoint,
                    )
                    .await
            }
            IdentitySource::Controller { role_arn } => {
                self.aws
                    .controller(&key.namespace, role_arn.as_deref(), &key.region, endpoint)
                    .await
            }
            IdentitySource::KubernetesToken { .. } | IdentitySource::TokenFile { .. } => {
                Err(ExchangeError::new(
                    Reason::InvalidSpec,
                    "a Kubernetes identity source has no AWS identity",
                ))
            }
        }
    }
}

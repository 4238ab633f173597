//! Why an exchange failed, as a short stable reason plus a message that says what to do.
//!
//! The reason is what lands in the `Ready` condition, in events and in metric labels, so its
//! spelling is an interface. The message names the resource's AWS principal when it is known
//! (Google's own errors do not) and the next step.

use std::fmt;

/// Stable failure reasons, one per thing the user would fix differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The spec is valid for the API server but unusable here (for example no region known).
    InvalidSpec,
    /// The namespace may not lend the controller's own AWS identity.
    ControllerIdentityNotAllowed,
    /// The named Kubernetes ServiceAccount does not exist in the namespace.
    ServiceAccountNotFound,
    /// Neither the ServiceAccount annotation nor the spec names an IAM role.
    RoleArnMissing,
    /// Kubernetes refused or failed the ServiceAccount TokenRequest.
    TokenRequestFailed,
    /// No AWS credentials could be found for the controller's own identity.
    AwsCredentialsUnavailable,
    /// AWS STS refused AssumeRole / AssumeRoleWithWebIdentity.
    AwsStsDenied,
    /// Google's attribute condition rejected the AWS principal.
    AttributeConditionRejected,
    /// The audience is malformed.
    InvalidAudience,
    /// The pool or provider does not exist or is disabled.
    ProviderNotFound,
    /// Google could not verify the signed AWS request (clock skew, wrong region, bad signature).
    InvalidSubjectToken,
    /// The federated principal may not impersonate the service account.
    ImpersonationDenied,
    /// The requested lifetime or scopes were refused by IAM Credentials.
    InvalidTokenRequest,
    /// A peer did not answer in time.
    Timeout,
    /// A peer failed in a way not listed above (5xx, unexpected body, network).
    Upstream,
    /// The resource names an endpoint the cluster admin has not allowed.
    EndpointNotAllowed,
    /// Google does not trust the token's issuer: the provider's issuer URI differs from the
    /// token's `iss`, or the issuer's discovery document names another issuer.
    IssuerNotTrusted,
    /// The provider's keys (uploaded JWKS or the issuer's) do not verify the token's signature:
    /// the cluster's signing key changed, or the provider holds another cluster's keys.
    SignatureNotVerified,
    /// The token's audience is neither one of the provider's allowed audiences nor, when it
    /// lists none, the provider's full resource name.
    AudienceMismatch,
    /// Google judged the ServiceAccount token expired or not yet valid (clock skew).
    SubjectTokenExpired,
    /// Google could not fetch the issuer's discovery document or keys.
    IssuerUnreachable,
    /// The projected ServiceAccount token file (`kubernetes.tokenPath`) is missing, unreadable
    /// or holds no token.
    TokenFileUnreadable,
    /// Not tried now: the namespace's share of concurrent exchanges is in use, or another
    /// exchange of the same identity is still running. Retried shortly; never written to status.
    Busy,
}

impl Reason {
    /// The CamelCase spelling used in conditions, events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::ControllerIdentityNotAllowed => "ControllerIdentityNotAllowed",
            Reason::ServiceAccountNotFound => "ServiceAccountNotFound",
            Reason::RoleArnMissing => "RoleArnMissing",
            Reason::TokenRequestFailed => "TokenRequestFailed",
            Reason::AwsCredentialsUnavailable => "AwsCredentialsUnavailable",
            Reason::AwsStsDenied => "AwsStsDenied",
            Reason::AttributeConditionRejected => "AttributeConditionRejected",
            Reason::InvalidAudience => "InvalidAudience",
            Reason::ProviderNotFound => "ProviderNotFound",
            Reason::InvalidSubjectToken => "InvalidSubjectToken",
            Reason::ImpersonationDenied => "ImpersonationDenied",
            Reason::InvalidTokenRequest => "InvalidTokenRequest",
            Reason::Timeout => "Timeout",
            Reason::Upstream => "Upstream",
            Reason::Busy => "Busy",
            Reason::IssuerNotTrusted => "IssuerNotTrusted",
            Reason::SignatureNotVerified => "SignatureNotVerified",
            Reason::AudienceMismatch => "AudienceMismatch",
            Reason::SubjectTokenExpired => "SubjectTokenExpired",
            Reason::IssuerUnreachable => "IssuerUnreachable",
            Reason::TokenFileUnreadable => "TokenFileUnreadable",
            Reason::EndpointNotAllowed => "EndpointNotAllowed",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed exchange: a stable reason, a message for humans that says what to do, and the AWS
/// principal Google was shown when it is known (Google's own errors do not name it). Never
/// carries a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeError {
    pub reason: Reason,
    pub message: String,
    /// The principal (an AWS ARN or `system:serviceaccount:NS:NAME`) the failing step
    /// presented, for status and for the message.
    pub principal: Option<String>,
}

impl ExchangeError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        ExchangeError {
            reason,
            message: message.into(),
            principal: None,
        }
    }

    /// The same failure, attributed to the principal that was presented, when known.
    pub fn presented_by(mut self, principal: Option<&str>) -> Self {
        if let Some(principal) = principal {
            self.principal = Some(principal.to_owned());
        }
        self
    }
}

/// The message, preceded by the principal when known: `AWS principal ARN: message`.
impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.principal {
            Some(principal) if principal.starts_with("arn:") => {
                write!(f, "AWS principal {principal}: {}", self.message)
            }
            Some(principal) => write!(f, "principal {principal}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ExchangeError {}

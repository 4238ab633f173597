//! The mutating admission webhook (DESIGN.md §2, §5, §6): an HTTPS server that answers
//! AdmissionReviews of pod creations with the patch [`fedcred_core::inject::mutate`] decides.
//!
//! This module owns the HTTP and TLS side: [`server`] serves reviews over TLS and looks up the
//! FederatedCredential a pod names ([`fedcred_core::admission`] reads and answers the
//! reviews), [`conn`] keeps each connection's head and idle deadlines, [`tls`] makes the CA
//! and serving certificate, [`certs`] keeps them in a Secret, renews them and keeps the
//! `caBundle` of the MutatingWebhookConfiguration current (it does not create the
//! configuration). What a pod gets is decided in the core alone; this module
//! must not change it.

pub mod certs;
pub mod conn;
pub mod server;
pub mod tls;

pub use certs::{CertSettings, ensure, keep_current};
pub use server::{
    BodyBudget, DEFAULT_BODY_BUDGET_BYTES, DEFAULT_MAX_CONNECTIONS, HEALTH_PATH, LOOKUP_TIMEOUT,
    MAX_BODY_BYTES, MUTATE_PATH, ServeOptions, Webhook, router, serve, watch_credentials,
};
pub use tls::{CertBundle, ReloadingCert, generate, reloading_server_config, server_config};

/// What can go wrong setting up or running the webhook server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate could not be generated or a PEM is unusable: `what` names which.
    #[error("webhook TLS: {what}: {detail}")]
    Certificate { what: &'static str, detail: String },
    /// Reading or writing `object` (the Secret or the MutatingWebhookConfiguration) failed.
    #[error("webhook certificates: {object}: {source}")]
    Api { object: String, source: kube::Error },
    /// Another replica kept writing `object` between our read and write.
    #[error("webhook certificates: {object}: still conflicting after {attempts} attempts")]
    Conflict { object: String, attempts: usize },
    /// The listening socket failed.
    #[error("webhook server: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn certificate(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Error::Certificate {
            what,
            detail: detail.to_string(),
        }
    }
}

//! The mutating admission webhook (DESIGN.md §2, §5, §6): an HTTPS server that answers
//! AdmissionReviews of pod creations with the patch [`crate::inject::mutate`] decides.
//!
//! This module owns the HTTP and TLS side and the AdmissionReview format: [`review`] reads and
//! answers reviews as pure functions, [`server`] serves them over TLS and looks up the
//! FederatedCredential a pod names, [`tls`] makes the CA and serving certificate, [`certs`]
//! keeps them in a Secret, renews them and keeps the `caBundle` of the
//! MutatingWebhookConfiguration current (it does not create the configuration). What a pod
//! gets is [`crate::inject`]'s decision alone; this module must not change it.

pub mod certs;
pub mod review;
pub mod server;
pub mod tls;

pub use certs::{CertSettings, ensure, keep_current};
pub use server::{
    HEALTH_PATH, LOOKUP_TIMEOUT, MAX_BODY_BYTES, MUTATE_PATH, Webhook, router, serve,
    watch_credentials,
};
pub use tls::{CertBundle, ReloadingCert, generate, reloading_server_config, server_config};

/// What can go wrong setting up or running the webhook server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The certificate could not be generated or the PEMs are unusable: check the files
    /// given to the webhook.
    #[error("webhook TLS: {0}")]
    Certificate(String),
    /// Reading or writing the Secret or the MutatingWebhookConfiguration failed.
    #[error("webhook certificates: {0}")]
    Api(String),
    /// The listening socket failed.
    #[error("webhook server: {0}")]
    Io(#[from] std::io::Error),
}

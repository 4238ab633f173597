//! Verifying test doubles of Google STS and IAM Credentials for fedcred's tests and demo.
//!
//! No emulator of Google's token services exists, so these stand in for them — and they check
//! what they receive the way Google does rather than echoing it: the AWS subject token's shape,
//! endpoint, target resource and time window ([`subject`]), its SigV4 signature with an
//! independent verifier ([`sigv4`]) against secrets from a moto server or the config
//! (`keys`), the caller as AWS reports it (`aws`), the provider's attribute mapping and
//! condition ([`attributes`]), bearer tokens and IAM bindings hop by hop ([`iam`]). Faults can be
//! injected per endpoint ([`faults`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use fedcred_doubles::{Binding, Condition, Config, GoogleDoubles, Provider, moto::Moto, role_member};
//! let moto = Moto::start_async().await?;
//! let audience = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/aws-pool/providers/aws-prov";
//! let config = Config::with_moto(&moto.url())
//!     .provider(Provider::new(audience).with_condition(Condition::ArnContains("assumed-role/app/".into())))
//!     .binding(Binding::new("app@p.iam.gserviceaccount.com",
//!         &[role_member(audience, "arn:aws:sts::123456789012:assumed-role/app")]));
//! let google = GoogleDoubles::start(config).await?;
//! // point the client at google.sts_url() and google.iam_credentials_url()
//! # Ok(()) }
//! ```
//!
//! The AlloyDB Admin API and instance doubles live in [`alloydb`], the Cloud SQL ones in
//! [`cloudsql`].
//!
//! Module map: [`config`] (what it decides with), [`server`] (HTTP wiring and the
//! [`GoogleDoubles`] handle), [`sts`] and [`iam`] (the two endpoints), [`state`] (tokens,
//! counters, records), [`moto`] (a real moto server for tests), [`names`] (resource names and
//! IAM member strings).
#![forbid(unsafe_code)]

pub mod alloydb;
pub mod attributes;
mod aws;
pub mod aws_metadata;
pub mod cloudsql;
pub mod config;
pub mod faults;
pub mod iam;
pub mod idtoken;
mod keys;
pub mod moto;
pub mod names;
pub mod oidc;
pub mod server;
pub mod sigv4;
pub mod state;
pub mod sts;
pub mod subject;
mod sync;

pub use config::{Binding, Condition, Config, EXTENDED_LIFETIME, Oidc, Provider};
pub use faults::{Fault, Target};
pub use names::{
    attribute_member, pool_member, principal_member, role_member, service_account_member,
};
pub use server::GoogleDoubles;
pub use state::{ApiCall, Principal, TokenInfo};

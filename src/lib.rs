//! fedcred: turns AWS identities into fresh Google Cloud access tokens through Workload
//! Identity Federation, keeps them in Secrets, and delivers them to pods.
#![forbid(unsafe_code)]

pub mod api;
pub mod aws;
pub mod controller;
pub mod error;
pub mod exchange;
pub mod google;
pub mod health;
pub mod inject;
pub mod leader;
pub mod metadata;
pub mod metrics;
pub mod secret;
pub mod subject_token;
pub mod webhook;

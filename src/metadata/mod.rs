//! `fedcred metadata-server`: a pod-local emulator of the GCE metadata server, answering from
//! the FederatedCredential's Secret as the kubelet mounts it.
//!
//! This module is the adapter around [`fedcred_core::metadata`]: it reads the mounted Secret
//! one consistent generation at a time ([`volume`]) and serves HTTP ([`server`]); what the
//! answers say is decided in the core. It must not talk to the Kubernetes API, refresh or
//! write tokens, or log a token (only its fingerprint).

pub mod server;
pub mod volume;

pub use server::{
    Error, Options, TokenSource, VolumeSource, bind, check_secret_dir, serve, serve_on,
};

//! fedcred: turns AWS identities into fresh Google Cloud access tokens through Workload
//! Identity Federation, keeps them in Secrets, and delivers them to pods.
//!
//! This crate is the adapters around the decisions of [`fedcred_core`]: the two clouds
//! ([`exchange`]), the Kubernetes controller ([`controller`]), the admission webhook
//! ([`webhook`]), the pod-local metadata emulator ([`metadata`]), leader election ([`leader`]),
//! metrics and health ([`metrics`], [`health`]), and the process that assembles them
//! ([`runtime`], run by the commands in [`cli`]).
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod controller;
pub mod doctor;
pub mod exchange;
pub mod health;
pub mod leader;
pub mod manifest;
pub mod metadata;
pub mod metrics;
pub mod runtime;
pub mod setup;
pub mod webhook;

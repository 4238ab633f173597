//! fedcred's core: every decision fedcred makes, as plain functions over plain data.
//!
//! The `fedcred` crate's adapters (AWS, Google, the Kubernetes API, the HTTP servers) observe
//! the world, call into this crate to decide, and carry the decision out. Nothing here does
//! I/O: no Kubernetes client, HTTP client or server, AWS SDK, async runtime, network,
//! filesystem or clock. Time comes in as an argument. `hack/check-core.sh` keeps the
//! dependency tree that way and `clippy.toml` forbids the clock and the filesystem, so the
//! rule holds without anyone remembering it.
//!
//! Following one FederatedCredential through the modules:
//! - [`api`]: the resource as users write it; the CRD is derived from it.
//! - [`validate`]: the CRD's own schema and CEL rules applied outside the API server, with the
//!   API server's messages (for `fedcred exchange -f` and `fedcred agent -f`).
//! - [`names`]: every name derived from a resource (Secret, session, database user, project)
//!   and the pod opt-in rule.
//! - [`exchange`]: the identity a resource asks for ([`exchange::plan`]) and when a token
//!   obtained for it may be shared.
//! - [`subject_token`] and [`sigv4`]: the signed AWS request Google verifies.
//! - [`google`]: reading Google's answers and refusals.
//! - [`refresh`]: when to refresh, what to write in the Secret and the status, which event.
//! - [`inject`]: what an opted-in pod gets, and the hash that rolls workloads when it changes.
//! - [`admission`]: AdmissionReview requests and answers around [`inject`].
//! - [`metadata`]: the GCE metadata protocol the pod-local emulator speaks.
//! - [`rollout`]: which workloads roll when what is injected changes.
//! - [`lease`]: leader-election decisions.
//!
//! [`error`] holds the stable failure reasons; [`sensitive`] the wrapper that keeps
//! credentials out of logs; [`encode`] hex and percent-encoding.
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod doctor;
pub mod encode;
pub mod error;
pub mod exchange;
pub mod google;
pub mod inject;
pub mod lease;
pub mod metadata;
pub mod names;
pub mod refresh;
pub mod rollout;
pub mod sensitive;
pub mod setup;
pub mod sigv4;
pub mod subject_token;
pub mod validate;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

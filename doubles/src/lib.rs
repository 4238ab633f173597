//! Verifying test doubles for fedcred.
#![forbid(unsafe_code)]

//! The FederatedCredential controller.

pub mod decide;

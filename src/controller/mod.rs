//! The FederatedCredential controller.

pub mod decide;
pub mod objects;

//! The shared table of cases (`core/tests/validation/cases.json`), judged by the validator
//! here; `tests/crd.rs` judges the same table with a real API server.

use super::*;
use crate::testing::{Judged, validation_cases};

#[test]
fn the_validator_judges_the_table_as_the_api_server_does() {
    let cases = validation_cases();
    assert!(cases.len() >= 30, "the table lost its cases");
    for Judged {
        name,
        resource,
        refused,
    } in cases
    {
        match (federated_credential(&resource), refused) {
            (Ok(()), None) => {}
            (Err(invalid), Some((field, says))) => assert!(
                invalid
                    .0
                    .iter()
                    .any(|e| e.field == field && e.detail.contains(&says)),
                "{name}: expected {field}: …{says}…, got {invalid}"
            ),
            (Ok(()), Some((field, says))) => panic!("{name}: accepted, expected {field}: {says}"),
            (Err(invalid), None) => panic!("{name}: refused: {invalid}"),
        }
    }
}

#[test]
fn a_missing_spec_is_required() {
    let err =
        federated_credential(&serde_json::json!({"kind": "FederatedCredential"})).unwrap_err();
    assert_eq!(err.to_string(), "spec: Required value");
}

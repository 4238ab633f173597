//! The API server's validation of a FederatedCredential, outside the API server: for files
//! given to `fedcred exchange -f` and `fedcred agent -f`, which no API server has checked.
//!
//! Nothing is written twice: the rules are the CRD's own ([`crate::api::crd`]), its schema
//! bounds checked by [`structural`] and its CEL rules evaluated by kube-rs's CEL library
//! (`kube-cel`, the Kubernetes CEL extensions on the `cel` crate), and the messages are spelled
//! as the API server spells them. One table of cases (`core/tests/validation/cases.json`) runs
//! here and against a real API server, so the two cannot drift apart.

use std::fmt;
use std::sync::OnceLock;

use serde_json::Value;

use crate::api::crd;

/// One thing wrong with one field, as the API server reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, such as `spec.google.audience` or `spec.alloydb.instances[0].port`.
    pub field: String,
    /// What is wrong, such as `Required value` or `Invalid value: "object": set exactly one …`.
    pub detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.detail)
    }
}

/// Everything wrong with a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid(pub Vec<FieldError>);

impl std::error::Error for Invalid {}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.0.iter().map(FieldError::to_string).collect();
        f.write_str(&all.join("; "))
    }
}

/// The CRD's schema of the served version, computed once.
fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = serde_json::to_value(crd()).expect("the derived CRD serializes");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    })
}

/// Checks a FederatedCredential (as JSON: the document of a manifest) the way the API server
/// would: its spec against the schema's bounds, then the CEL rules. `metadata` and `status`
/// are not checked (a file names no status; metadata is the API server's own business).
pub fn federated_credential(object: &Value) -> Result<(), Invalid> {
    let schema = schema();
    let mut errors = Vec::new();
    match object.get("spec") {
        None | Some(Value::Null) => errors.push(FieldError {
            field: "spec".to_owned(),
            detail: "Required value".to_owned(),
        }),
        Some(spec) => structural(&schema["properties"]["spec"], spec, "spec", &mut errors),
    }
    if !errors.is_empty() {
        return Err(Invalid(errors));
    }
    // Only the spec is evaluated, with `status` and `metadata` left out as the API server's
    // spec rules never see them.
    let only_spec = serde_json::json!({ "spec": object["spec"] });
    if let Err(failed) = kube_cel::Validator::new().validate(schema, &only_spec, None) {
        for e in failed.as_slice() {
            let kind = type_at(schema, &e.field_path).unwrap_or("object");
            errors.push(FieldError {
                field: e.field_path.clone(),
                detail: format!("Invalid value: \"{kind}\": {}", e.message),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Invalid(errors))
    }
}

/// The schema type at `path` (`spec.aws`, `spec.alloydb.instances[0]`).
fn type_at<'a>(schema: &'a Value, path: &str) -> Option<&'a str> {
    let mut node = schema;
    for part in path.split('.') {
        let name = part.split('[').next().unwrap_or(part);
        node = &node["properties"][name];
        if part.contains('[') {
            node = &node["items"];
        }
    }
    node["type"].as_str()
}

/// The schema's structural rules under `path`: types, required fields, unknown fields,
/// lengths, ranges, item counts and enums, each reported as the API server reports it.
pub fn structural(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let mut error = |detail: String| {
        errors.push(FieldError {
            field: path.to_owned(),
            detail,
        })
    };
    if value.is_null() {
        if schema["nullable"] != true {
            error(format!(
                "Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                schema["type"].as_str().unwrap_or("object")
            ));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        return;
    }
    let expected = schema["type"].as_str().unwrap_or_default();
    let actual = match value {
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::Null => "null",
    };
    let compatible =
        expected.is_empty() || expected == actual || (expected == "number" && actual == "integer");
    if !compatible {
        error(format!(
            "Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""
        ));
        return;
    }
    match value {
        Value::Object(fields) => {
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap_or_default();
                if !fields.contains_key(name) {
                    errors.push(FieldError {
                        field: format!("{path}.{name}"),
                        detail: "Required value".to_owned(),
                    });
                }
            }
            let properties = schema["properties"].as_object();
            let additional = &schema["additionalProperties"];
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            for (name, field) in fields {
                let child = format!("{path}.{name}");
                match properties.and_then(|p| p.get(name)) {
                    Some(s) => structural(s, field, &child, errors),
                    None if additional.is_object() => structural(additional, field, &child, errors),
                    None if preserve || schema["type"].is_null() => {}
                    None => errors.push(FieldError {
                        field: child.clone(),
                        detail: format!("unknown field \"{child}\""),
                    }),
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                error(format!(
                    "Too many: {}: must have at most {max} items",
                    items.len()
                ));
            }
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                error(format!(
                    "Invalid value: {}: {path} in body should have at least {min} items",
                    items.len()
                ));
            }
            for (i, item) in items.iter().enumerate() {
                structural(&schema["items"], item, &format!("{path}[{i}]"), errors);
            }
        }
        Value::String(text) => {
            // The API server counts characters (runes) for maxLength.
            let length = text.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64()
                && length > max
            {
                error(format!("Too long: may not be more than {max} bytes"));
            }
            if let Some(min) = schema["minLength"].as_u64()
                && length < min
            {
                error(format!(
                    "Invalid value: \"{text}\": {path} in body should be at least {min} chars long"
                ));
            }
            if let Some(allowed) = schema["enum"].as_array()
                && !allowed.iter().any(|a| a == value)
            {
                let supported: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
                error(format!(
                    "Unsupported value: \"{text}\": supported values: {}",
                    supported.join(", ")
                ));
            }
        }
        Value::Number(n) => {
            if let (Some(min), Some(v)) = (schema["minimum"].as_f64(), n.as_f64())
                && v < min
            {
                error(format!(
                    "Invalid value: {n}: {path} in body should be greater than or equal to {min}"
                ));
            }
            if let (Some(max), Some(v)) = (schema["maximum"].as_f64(), n.as_f64())
                && v > max
            {
                error(format!(
                    "Invalid value: {n}: {path} in body should be less than or equal to {max}"
                ));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;

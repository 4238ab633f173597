//! Shared by the fuzz targets: the CRD's own validation patterns (read from `fedcred_core::api::crd`,
//! so the targets compare against what the API server enforces), the RFC 6902 applier the goldens use,
//! and the AdmissionReview checks every review target makes.
#![allow(dead_code)] // each target uses a different part

use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// The `self.matches('…')` pattern of the CRD field at `path` under `spec` (`[]` steps into
/// array items), compiled with RE2's ASCII `\w` as CEL evaluates it.
pub fn crd_pattern(path: &[&str]) -> Regex {
    let crd = serde_json::to_value(fedcred_core::api::crd()).expect("the CRD serialises");
    let mut node = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    for step in path {
        node = if *step == "[]" {
            &node["items"]
        } else {
            &node["properties"][*step]
        };
    }
    let rules = node["x-kubernetes-validations"]
        .as_array()
        .unwrap_or_else(|| panic!("{path:?} has no validation rules"));
    let rule = rules
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .find_map(|r| {
            let start = r.find("matches('")? + "matches('".len();
            let end = r[start..].find("')")? + start;
            Some(r[start..end].to_owned())
        })
        .unwrap_or_else(|| panic!("{path:?} has no matches() rule"));
    // CEL string escapes: `\\` stands for one backslash.
    let pattern = rule.replace("\\\\", "\\");
    RegexBuilder::new(&pattern)
        .unicode(false)
        .build()
        .unwrap_or_else(|e| panic!("{pattern}: {e}"))
}

/// `maxLength` of the CRD field at `path`, when it has one.
pub fn crd_max_length(path: &[&str]) -> Option<usize> {
    let crd = serde_json::to_value(fedcred_core::api::crd()).expect("the CRD serialises");
    let mut node = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    for step in path {
        node = if *step == "[]" {
            &node["items"]
        } else {
            &node["properties"][*step]
        };
    }
    node["maxLength"].as_u64().map(|n| n as usize)
}

/// Applies RFC 6902 operations as the API server does (the `json-patch` crate): the parent
/// must exist, array indexes must be in range, `replace` needs an existing member. `Err`
/// names the broken op.
pub fn apply_patch(mut doc: Value, ops: &[Value]) -> Result<Value, String> {
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops.to_vec())).map_err(|e| e.to_string())?;
    json_patch::patch(&mut doc, &patch).map_err(|e| e.to_string())?;
    Ok(doc)
}

/// What every AdmissionReview answer must be, whatever it was asked: an `admission.k8s.io/v1`
/// AdmissionReview echoing `uid`; a refusal carries a 403 status with a message and never a
/// patch; an admission with a patch says `JSONPatch` and the patch is a JSON array of
/// operations. Returns the decoded operations (empty when there is no patch).
pub fn check_answer<T: serde::Serialize>(answer: &T, uid: &str) -> Vec<Value> {
    use base64::Engine as _;
    // The answer goes back over the wire as JSON.
    let text = serde_json::to_string(answer).expect("the answer serialises");
    let answer: Value = serde_json::from_str(&text).expect("the answer is valid JSON");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
    let response = &answer["response"];
    assert_eq!(response["uid"].as_str(), Some(uid), "{answer}");
    let allowed = response["allowed"]
        .as_bool()
        .unwrap_or_else(|| panic!("allowed is not a bool: {answer}"));
    if !allowed {
        assert!(
            response.get("patch").is_none(),
            "a refusal with a patch: {answer}"
        );
        assert_eq!(response["status"]["code"], 403, "{answer}");
        let message = response["status"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.trim().is_empty(),
            "a refusal without a message: {answer}"
        );
        return Vec::new();
    }
    if let Some(warnings) = response.get("warnings") {
        for w in warnings.as_array().expect("warnings is a list") {
            let w = w.as_str().expect("a warning is a string");
            assert!(
                w.chars().count() <= fedcred_core::inject::MAX_WARNING_CHARS,
                "a warning the API server would cut: {w}"
            );
        }
    }
    let Some(patch) = response.get("patch") else {
        assert!(response.get("patchType").is_none(), "{answer}");
        return Vec::new();
    };
    assert_eq!(response["patchType"], "JSONPatch", "{answer}");
    // Sent as Go writes []byte: base64.
    let encoded = patch.as_str().expect("the patch is a base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("the patch is base64");
    let ops: Value = serde_json::from_slice(&bytes).expect("the patch is JSON");
    let ops = ops.as_array().expect("the patch is a JSON array").clone();
    assert!(!ops.is_empty(), "an empty patch: {answer}");
    for op in &ops {
        assert!(matches!(op["op"].as_str(), Some("add" | "replace")), "{op}");
        assert!(
            op["path"].as_str().is_some_and(|p| p.starts_with('/')),
            "{op}"
        );
    }
    ops
}

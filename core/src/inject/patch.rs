//! RFC 6902 operations as JSON values: small and explicit, no patch library.

use serde_json::{Map, Value};

/// One reference token of an RFC 6901 JSON pointer: `~` becomes `~0`, `/` becomes `~1`
/// (in that order, so a `/` is not turned into `~01`).
pub(super) fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// `add`: creates an object member (or replaces it), or inserts into an array at an index or
/// at its end (`-`). The parent must exist.
pub(super) fn add(path: String, value: Value) -> Value {
    operation("add", path, value)
}

/// `replace`: the member must already exist, which makes a stale index fail loudly.
pub(super) fn replace(path: String, value: Value) -> Value {
    operation("replace", path, value)
}

/// The operation object, built from its parts (`json!` would copy `value` through serde: a
/// whole sidecar container, once more per operation).
fn operation(op: &str, path: String, value: Value) -> Value {
    let mut object = Map::with_capacity(3);
    object.insert("op".to_owned(), Value::String(op.to_owned()));
    object.insert("path".to_owned(), Value::String(path));
    object.insert("value".to_owned(), value);
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_tilde_before_slash() {
        assert_eq!(escape("fedcred.io/injected"), "fedcred.io~1injected");
        assert_eq!(escape("a~b/c"), "a~0b~1c");
        assert_eq!(escape("~/"), "~0~1");
    }
}

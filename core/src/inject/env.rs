//! The environment of the pod's own containers: what to add, and NO_PROXY.

use k8s_openapi::api::core::v1::Container;

/// One change to a container's `env`.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum EnvEdit {
    /// Append this variable with a literal value.
    Append { name: String, value: String },
    /// Set the `value` of the existing entry at this index.
    SetValue { index: usize, value: String },
}

/// Variables that make a client use an HTTP proxy (curl, Python, Node, Go).
const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The two spellings of the proxy exceptions; Python prefers the lower-case one when both are
/// set, curl reads lower case first, Go upper case first.
const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// Where the emulator and the proxies listen.
const LOOPBACK: [&str; 2] = ["127.0.0.1", "localhost"];

/// The edits that give `container` the `wanted` variables it does not set itself, and loopback
/// in its proxy exceptions when it uses a proxy. `what` names the container in warnings.
pub(super) fn edits(
    container: &Container,
    wanted: &[(String, String)],
    what: &str,
    warnings: &mut Vec<String>,
) -> Vec<EnvEdit> {
    let env = container.env.as_deref().unwrap_or_default();
    let sets = |name: &str| env.iter().any(|e| e.name == name);
    let mut edits: Vec<EnvEdit> = wanted
        .iter()
        .filter(|(name, _)| !sets(name))
        .map(|(name, value)| append(name, value))
        .collect();
    if !PROXY_VARS.iter().any(|name| sets(name)) {
        return edits;
    }
    let mut found = false;
    for (index, entry) in env.iter().enumerate() {
        if !NO_PROXY_VARS.contains(&entry.name.as_str()) {
            continue;
        }
        found = true;
        if entry.value_from.is_some() {
            warnings.push(format!(
                "{what} takes {} from a reference that fedcred cannot read: make sure it \
                 includes 127.0.0.1,localhost, or its calls to the metadata emulator and the \
                 AlloyDB proxy go to the HTTP proxy",
                entry.name
            ));
            continue;
        }
        let current = entry.value.as_deref().unwrap_or_default();
        let merged = with_loopback(current);
        if merged != current {
            edits.push(EnvEdit::SetValue {
                index,
                value: merged,
            });
        }
    }
    if !found {
        let value = LOOPBACK.join(",");
        edits.extend(NO_PROXY_VARS.iter().map(|name| append(name, &value)));
    }
    edits
}

fn append(name: &str, value: &str) -> EnvEdit {
    EnvEdit::Append {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

/// `list` with `127.0.0.1` and `localhost` appended where missing; entries are compared
/// trimmed and case-insensitively, and the rest is kept as written.
fn with_loopback(list: &str) -> String {
    let present: Vec<String> = list
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut merged = list.trim_end_matches([',', ' ']).to_owned();
    for host in LOOPBACK {
        if !present.iter().any(|p| p == host) {
            if !merged.trim().is_empty() {
                merged.push(',');
            }
            merged.push_str(host);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(env: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({"name": "app", "env": env})).unwrap()
    }

    fn wanted() -> Vec<(String, String)> {
        vec![
            ("PGHOST".to_owned(), "127.0.0.1".to_owned()),
            ("PGUSER".to_owned(), "orders@acme-shop.iam".to_owned()),
        ]
    }

    fn appended(edits: &[EnvEdit]) -> Vec<(&str, &str)> {
        edits
            .iter()
            .filter_map(|e| match e {
                EnvEdit::Append { name, value } => Some((name.as_str(), value.as_str())),
                EnvEdit::SetValue { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_variable_the_container_sets_is_left_alone() {
        let mut warnings = vec![];
        let c = container(serde_json::json!([{"name": "PGUSER", "value": "reporting"}]));
        let edits = edits(&c, &wanted(), "container app", &mut warnings);
        assert_eq!(appended(&edits), vec![("PGHOST", "127.0.0.1")]);
        assert!(warnings.is_empty());
    }

    #[test]
    fn a_value_from_reference_also_counts_as_set() {
        let c = container(serde_json::json!([
            {"name": "PGHOST", "valueFrom": {"configMapKeyRef": {"name": "db", "key": "host"}}}
        ]));
        let edits = edits(&c, &wanted(), "container app", &mut vec![]);
        assert_eq!(appended(&edits), vec![("PGUSER", "orders@acme-shop.iam")]);
    }

    #[test]
    fn no_proxy_is_untouched_without_a_proxy() {
        let c = container(serde_json::json!([{"name": "NO_PROXY", "value": ".corp"}]));
        assert_eq!(edits(&c, &[], "container app", &mut vec![]), vec![]);
    }

    #[test]
    fn a_proxied_container_gets_loopback_in_both_spellings() {
        let c =
            container(serde_json::json!([{"name": "https_proxy", "value": "http://proxy:3128"}]));
        let edits = edits(&c, &[], "container app", &mut vec![]);
        assert_eq!(
            appended(&edits),
            vec![
                ("NO_PROXY", "127.0.0.1,localhost"),
                ("no_proxy", "127.0.0.1,localhost")
            ]
        );
    }

    #[test]
    fn an_existing_no_proxy_is_merged_in_place() {
        let c = container(serde_json::json!([
            {"name": "HTTP_PROXY", "value": "http://proxy:3128"},
            {"name": "NO_PROXY", "value": ".corp.example, LOCALHOST"},
            {"name": "no_proxy", "value": "127.0.0.1,localhost"}
        ]));
        let edits = edits(&c, &[], "container app", &mut vec![]);
        assert_eq!(
            edits,
            vec![EnvEdit::SetValue {
                index: 1,
                value: ".corp.example, LOCALHOST,127.0.0.1".to_owned()
            }]
        );
    }

    #[test]
    fn a_referenced_no_proxy_gets_a_warning() {
        let mut warnings = vec![];
        let c = container(serde_json::json!([
            {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
            {"name": "NO_PROXY", "valueFrom": {"configMapKeyRef": {"name": "net", "key": "np"}}}
        ]));
        assert_eq!(edits(&c, &[], "container app", &mut warnings), vec![]);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("container app takes NO_PROXY"));
    }

    #[test]
    fn merging_handles_empty_and_trailing_commas() {
        assert_eq!(with_loopback(""), "127.0.0.1,localhost");
        assert_eq!(with_loopback(".corp,"), ".corp,127.0.0.1,localhost");
        assert_eq!(with_loopback("localhost"), "localhost,127.0.0.1");
        assert_eq!(
            with_loopback(" 127.0.0.1 ,localhost"),
            " 127.0.0.1 ,localhost"
        );
    }
}

//! FederatedCredential manifests read from files, as `kubectl apply -f` reads them: YAML or
//! JSON, one or many documents, the FederatedCredential picked out of them and checked with
//! the API server's rules and messages ([`fedcred_core::validate`]).

use std::path::Path;

use fedcred_core::api::{FederatedCredential, GROUP};
use fedcred_core::validate;
use serde::Deserialize;
use serde_json::Value;

/// Why a manifest gave no FederatedCredential; each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not YAML or JSON: {problem}")]
    Syntax { path: String, problem: String },
    #[error(
        "{path} holds no FederatedCredential (it holds {found}); point -f at the file with the resource"
    )]
    None { path: String, found: String },
    #[error("{path} holds {count} FederatedCredentials ({names}); choose one with --name")]
    Several {
        path: String,
        count: usize,
        names: String,
    },
    #[error("{path} holds no FederatedCredential named {name} (it holds {names})")]
    NotFound {
        path: String,
        name: String,
        names: String,
    },
    #[error("FederatedCredential {name} in {path} is invalid: {invalid}")]
    Invalid {
        path: String,
        name: String,
        invalid: validate::Invalid,
    },
}

/// Reads `path` (`-` for standard input) and returns the FederatedCredential in it: the only
/// one, or the one called `name`.
pub fn load(path: &Path, name: Option<&str>) -> Result<FederatedCredential, Error> {
    let shown = path.display().to_string();
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|source| Error::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&shown, &text, name)
}

/// Every FederatedCredential of the manifest `text` (named `path` in messages), each checked
/// as the API server would, and the file's other objects (ServiceAccounts, for example).
pub fn parse_all(path: &str, text: &str) -> Result<(Vec<FederatedCredential>, Vec<Value>), Error> {
    let (credentials, others): (Vec<Value>, Vec<Value>) = documents(path, text)?
        .into_iter()
        .partition(is_federated_credential);
    if credentials.is_empty() {
        return Err(none(path, &others));
    }
    let checked = credentials
        .iter()
        .map(|v| checked(path, v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((checked, others))
}

fn label(v: &Value) -> String {
    let meta = &v["metadata"];
    match (meta["namespace"].as_str(), meta["name"].as_str()) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.to_owned(),
        _ => "<unnamed>".to_owned(),
    }
}

fn none(path: &str, others: &[Value]) -> Error {
    let found: Vec<String> = others
        .iter()
        .map(|v| {
            format!(
                "{} {}",
                v["kind"].as_str().unwrap_or("an object without kind"),
                label(v)
            )
        })
        .collect();
    Error::None {
        path: path.to_owned(),
        found: if found.is_empty() {
            "nothing".to_owned()
        } else {
            found.join(", ")
        },
    }
}

fn documents(path: &str, text: &str) -> Result<Vec<Value>, Error> {
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| Error::Syntax {
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
        match value {
            Value::Null => {}
            // A `kind: List` (what `kubectl get -o yaml` writes) holds its objects in `items`.
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                documents.extend(o["items"].as_array().cloned().unwrap_or_default());
            }
            other => documents.push(other),
        }
    }
    Ok(documents)
}

fn checked(path: &str, chosen: &Value) -> Result<FederatedCredential, Error> {
    validate::federated_credential(chosen).map_err(|invalid| Error::Invalid {
        path: path.to_owned(),
        name: label(chosen),
        invalid,
    })?;
    // Validated against the schema the types derive: deserializing cannot fail on shape.
    serde_json::from_value(chosen.clone()).map_err(|e| Error::Invalid {
        path: path.to_owned(),
        name: label(chosen),
        invalid: validate::Invalid(vec![validate::FieldError {
            field: "spec".to_owned(),
            detail: e.to_string(),
        }]),
    })
}

/// The FederatedCredential of the manifest `text` (named `path` in messages).
pub fn parse(path: &str, text: &str, name: Option<&str>) -> Result<FederatedCredential, Error> {
    let (credentials, others): (Vec<Value>, Vec<Value>) = documents(path, text)?
        .into_iter()
        .partition(is_federated_credential);
    let names = || credentials.iter().map(label).collect::<Vec<_>>().join(", ");
    let chosen = match (name, credentials.len()) {
        (_, 0) => return Err(none(path, &others)),
        (None, 1) => &credentials[0],
        (None, count) => {
            return Err(Error::Several {
                path: path.to_owned(),
                count,
                names: names(),
            });
        }
        (Some(wanted), _) => credentials
            .iter()
            .find(|v| v["metadata"]["name"].as_str() == Some(wanted))
            .ok_or_else(|| Error::NotFound {
                path: path.to_owned(),
                name: wanted.to_owned(),
                names: names(),
            })?,
    };
    checked(path, chosen)
}

fn is_federated_credential(v: &Value) -> bool {
    v["kind"] == "FederatedCredential"
        && v["apiVersion"]
            .as_str()
            .is_some_and(|a| a.split('/').next() == Some(GROUP))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
spec:
  aws: {serviceAccount: {name: orders-api}, region: us-east-1}
  google:
    audience: //iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop
    serviceAccount: orders-api@acme-shop.iam.gserviceaccount.com
"#;

    fn resource(name: &str) -> String {
        format!(
            "apiVersion: fedcred.io/v1alpha1\nkind: FederatedCredential\nmetadata: {{name: {name}, namespace: shop}}{SPEC}"
        )
    }

    #[test]
    fn the_credential_is_picked_out_of_a_file_of_several_kinds() {
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\n{}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: orders-api, namespace: shop}}\n",
            resource("orders-db")
        );
        let fc = parse("x.yaml", &text, None).unwrap();
        assert_eq!(fc.metadata.name.as_deref(), Some("orders-db"));
        assert_eq!(
            fc.spec.google.token_lifetime_seconds, 3600,
            "defaults apply"
        );
    }

    #[test]
    fn several_credentials_need_a_name_and_the_message_lists_them() {
        let text = format!("{}\n---\n{}", resource("a"), resource("b"));
        let err = parse("x.yaml", &text, None).unwrap_err().to_string();
        assert_eq!(
            err,
            "x.yaml holds 2 FederatedCredentials (shop/a, shop/b); choose one with --name"
        );
        let fc = parse("x.yaml", &text, Some("b")).unwrap();
        assert_eq!(fc.metadata.name.as_deref(), Some("b"));
        let err = parse("x.yaml", &text, Some("c")).unwrap_err().to_string();
        assert!(err.contains("no FederatedCredential named c"), "{err}");
    }

    #[test]
    fn a_file_without_one_says_what_it_holds() {
        let err = parse(
            "x.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "x.yaml holds no FederatedCredential (it holds Namespace shop); point -f at the file with the resource"
        );
    }

    #[test]
    fn an_invalid_credential_gets_the_api_servers_message() {
        let text = resource("orders-db").replace("region: us-east-1", "region: Tokyo");
        let err = parse("x.yaml", &text, None).unwrap_err().to_string();
        assert!(
            err.starts_with("FederatedCredential shop/orders-db in x.yaml is invalid: spec.aws.region: Invalid value: \"string\": aws.region must be an AWS region code"),
            "{err}"
        );
    }

    #[test]
    fn broken_yaml_is_named() {
        let err = parse("x.yaml", "kind: [", None).unwrap_err().to_string();
        assert!(err.starts_with("x.yaml is not YAML or JSON"), "{err}");
    }
}

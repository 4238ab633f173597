//! The provider's attribute mapping and attribute condition, as Google applies them to the AWS
//! assertion (`arn`, `account` from GetCallerIdentity).
//!
//! Pure functions over strings. The mapping is the one seed 003 configures (and Google's AWS
//! default):
//!
//! ```text
//! google.subject        = assertion.arn
//! attribute.aws_role    = assertion.arn.contains('assumed-role')
//!                           ? assertion.arn.extract('{account_arn}assumed-role/') + 'assumed-role/'
//!                             + assertion.arn.extract('assumed-role/{role_name}/')
//!                           : assertion.arn
//! attribute.aws_account = assertion.account
//! ```

use std::collections::BTreeMap;

use crate::config::Condition;

/// Google's limit on the mapped `google.subject`.
pub const MAX_SUBJECT_BYTES: usize = 127;

/// What AWS said about the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assertion {
    pub arn: String,
    pub account: String,
}

/// Why mapping failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MappingError {
    SubjectTooLong(usize),
    /// A CEL expression of a configured mapping did not compile or evaluate to a string.
    Invalid {
        attribute: String,
        problem: String,
    },
}

impl std::fmt::Display for MappingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MappingError::SubjectTooLong(len) => write!(
                f,
                "The size of mapped attribute google.subject exceeds the {MAX_SUBJECT_BYTES} bytes \
                 limit ({len} bytes). Either modify your attribute mapping or the incoming \
                 assertion to produce a mapped attribute that is less than {MAX_SUBJECT_BYTES} bytes."
            ),
            MappingError::Invalid { attribute, problem } => {
                write!(f, "Invalid attribute mapping for {attribute}: {problem}")
            }
        }
    }
}

/// Applies the mapping: keys `google.subject`, `attribute.aws_role`, `attribute.aws_account`.
pub fn map(assertion: &Assertion) -> Result<BTreeMap<String, String>, MappingError> {
    if assertion.arn.len() > MAX_SUBJECT_BYTES {
        return Err(MappingError::SubjectTooLong(assertion.arn.len()));
    }
    let mut attributes = BTreeMap::new();
    attributes.insert("google.subject".to_owned(), assertion.arn.clone());
    attributes.insert("attribute.aws_role".to_owned(), aws_role(&assertion.arn));
    attributes.insert(
        "attribute.aws_account".to_owned(),
        assertion.account.clone(),
    );
    Ok(attributes)
}

/// `attribute.aws_role` for `arn`: `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION` →
/// `arn:aws:sts::ACCOUNT:assumed-role/ROLE`; any other ARN unchanged.
pub fn aws_role(arn: &str) -> String {
    if arn.contains("assumed-role") {
        format!(
            "{}assumed-role/{}",
            extract(arn, "", "assumed-role/"),
            extract(arn, "assumed-role/", "/")
        )
    } else {
        arn.to_owned()
    }
}

/// CEL's `extract('PREFIX{var}SUFFIX')`: the text between the first `prefix` and the next
/// `suffix` after it; empty when the template does not match.
fn extract(s: &str, prefix: &str, suffix: &str) -> String {
    let Some(start) = s.find(prefix).map(|i| i + prefix.len()) else {
        return String::new();
    };
    match s[start..].find(suffix) {
        Some(len) => s[start..start + len].to_owned(),
        None => String::new(),
    }
}

/// The CEL variable `assertion`: what AWS said about the caller.
fn assertion_value(assertion: &Assertion) -> cel::Value {
    let fields: std::collections::HashMap<String, String> = [
        ("arn".to_owned(), assertion.arn.clone()),
        ("account".to_owned(), assertion.account.clone()),
    ]
    .into_iter()
    .collect();
    fields.into()
}

/// Applies a mapping configured as Google takes it (target attribute → CEL expression over
/// `assertion`); an empty one is the default [`map`].
pub fn map_with(
    mapping: &BTreeMap<String, String>,
    assertion: &Assertion,
) -> Result<BTreeMap<String, String>, MappingError> {
    if mapping.is_empty() {
        return map(assertion);
    }
    if !mapping.contains_key("google.subject") {
        return Err(MappingError::Invalid {
            attribute: "google.subject".to_owned(),
            problem: "the mapping must set google.subject".to_owned(),
        });
    }
    let mut context = cel::Context::default();
    context.add_variable_from_value("assertion", assertion_value(assertion));
    let mut attributes = BTreeMap::new();
    for (attribute, expression) in mapping {
        let invalid = |problem: String| MappingError::Invalid {
            attribute: attribute.clone(),
            problem,
        };
        let program = cel::Program::compile(expression).map_err(|e| invalid(e.to_string()))?;
        match program.execute(&context) {
            Ok(cel::Value::String(value)) => {
                attributes.insert(attribute.clone(), value.to_string());
            }
            Ok(other) => return Err(invalid(format!("evaluates to {other:?}, not a string"))),
            Err(e) => return Err(invalid(e.to_string())),
        }
    }
    let subject_len = attributes.get("google.subject").map_or(0, String::len);
    if subject_len > MAX_SUBJECT_BYTES {
        return Err(MappingError::SubjectTooLong(subject_len));
    }
    Ok(attributes)
}

/// Evaluates a CEL condition with `assertion`, `google` (the mapped `google.*` attributes) and
/// `attribute` (the mapped `attribute.*`). Anything but `true`, an evaluation error included,
/// refuses, as Google does.
/// Whether a CEL condition over `assertion`, `google` and `attribute` evaluates to `true`; an
/// expression that does not compile admits nothing.
pub(crate) fn cel_admits(
    expression: &str,
    assertion: cel::Value,
    attributes: &BTreeMap<String, String>,
) -> bool {
    let Ok(program) = cel::Program::compile(expression) else {
        return false;
    };
    let prefixed = |prefix: &str| -> cel::Value {
        let values: std::collections::HashMap<String, String> = attributes
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_owned(), v.clone())))
            .collect();
        values.into()
    };
    let mut context = cel::Context::default();
    context.add_variable_from_value("assertion", assertion);
    context.add_variable_from_value("google", prefixed("google."));
    context.add_variable_from_value("attribute", prefixed("attribute."));
    matches!(program.execute(&context), Ok(cel::Value::Bool(true)))
}

/// Whether `condition` admits the mapped identity.
pub fn admits(
    condition: &Condition,
    assertion: &Assertion,
    attributes: &BTreeMap<String, String>,
) -> bool {
    match condition {
        Condition::None => true,
        Condition::ArnContains(needle) => assertion.arn.contains(needle.as_str()),
        Condition::AwsRoleEquals(role) => {
            attributes.get("attribute.aws_role").map(String::as_str) == Some(role.as_str())
        }
        // An AWS identity has no namespace.
        Condition::NamespaceEquals(_) => false,
        Condition::Cel(expression) => {
            cel_admits(expression, assertion_value(assertion), attributes)
        }
    }
}

/// The account field of an ARN (`arn:PARTITION:SERVICE:REGION:ACCOUNT:…`).
pub fn account_of(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|a| !a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assertion(arn: &str) -> Assertion {
        Assertion {
            arn: arn.to_owned(),
            account: account_of(arn).unwrap_or_default().to_owned(),
        }
    }

    #[test]
    fn maps_assumed_roles_to_their_role() {
        let attrs = map(&assertion(
            "arn:aws:sts::123456789012:assumed-role/demo/ns-a.app",
        ))
        .unwrap();
        assert_eq!(
            attrs["google.subject"],
            "arn:aws:sts::123456789012:assumed-role/demo/ns-a.app"
        );
        assert_eq!(
            attrs["attribute.aws_role"],
            "arn:aws:sts::123456789012:assumed-role/demo"
        );
        assert_eq!(attrs["attribute.aws_account"], "123456789012");
    }

    #[test]
    fn maps_other_arns_to_themselves() {
        assert_eq!(
            aws_role("arn:aws:iam::123456789012:user/alice"),
            "arn:aws:iam::123456789012:user/alice"
        );
    }

    #[test]
    fn refuses_subjects_over_127_bytes() {
        let long = format!(
            "arn:aws:sts::123456789012:assumed-role/{}/s",
            "r".repeat(100)
        );
        assert_eq!(
            map(&assertion(&long)),
            Err(MappingError::SubjectTooLong(long.len()))
        );
    }

    #[test]
    fn evaluates_cel_conditions_over_a_configured_mapping() {
        let mapping: BTreeMap<String, String> = [
            ("google.subject", "assertion.arn"),
            ("attribute.aws_account", "assertion.account"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mine = assertion("arn:aws:sts::123456789012:assumed-role/demo/fedcred.shop.app");
        let neighbour = assertion("arn:aws:sts::123456789012:assumed-role/demo/fedcred.shop-b.app");
        let attrs = map_with(&mapping, &mine).unwrap();
        assert_eq!(attrs["google.subject"], mine.arn);
        assert_eq!(attrs["attribute.aws_account"], "123456789012");
        assert!(
            !attrs.contains_key("attribute.aws_role"),
            "only what is mapped"
        );
        let pinned = Condition::Cel(format!("assertion.arn in ['{}']", mine.arn));
        assert!(admits(&pinned, &mine, &attrs));
        let theirs = map_with(&mapping, &neighbour).unwrap();
        assert!(!admits(&pinned, &neighbour, &theirs));
        let by_attribute = Condition::Cel(
            "attribute.aws_account == '123456789012' && google.subject.endsWith('.app')".into(),
        );
        assert!(admits(&by_attribute, &mine, &attrs));
        // A condition that does not evaluate to true refuses, an error included.
        assert!(!admits(
            &Condition::Cel("assertion.nope == 1".into()),
            &mine,
            &attrs
        ));
        assert!(!admits(&Condition::Cel("not CEL (".into()), &mine, &attrs));
        // A mapping without google.subject, or one that is not CEL, is refused.
        let mut bad = mapping.clone();
        bad.remove("google.subject");
        assert!(map_with(&bad, &mine).is_err());
        bad.insert("google.subject".into(), "assertion.arn +".into());
        assert!(map_with(&bad, &mine).is_err());
    }

    #[test]
    fn evaluates_conditions() {
        let a = assertion("arn:aws:sts::123456789012:assumed-role/demo/s");
        let attrs = map(&a).unwrap();
        assert!(admits(&Condition::None, &a, &attrs));
        assert!(admits(
            &Condition::ArnContains("role/demo/".into()),
            &a,
            &attrs
        ));
        assert!(!admits(&Condition::ArnContains("other".into()), &a, &attrs));
        assert!(admits(
            &Condition::AwsRoleEquals("arn:aws:sts::123456789012:assumed-role/demo".into()),
            &a,
            &attrs
        ));
        assert!(!admits(
            &Condition::AwsRoleEquals("arn:aws:sts::123456789012:assumed-role/demo/s".into()),
            &a,
            &attrs
        ));
    }
}

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

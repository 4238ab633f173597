//! Values that must never reach logs, events, status, metrics or panic messages.
//!
//! [`Sensitive`] wraps a credential (a Google access token, an AWS subject token or secret key,
//! a Kubernetes ServiceAccount token). Its `Debug` and `Display` print a redaction marker; the
//! value leaves only through `expose`, which makes every use greppable. (Named apart from the
//! Kubernetes `Secret` object, which is where some of these values end up.) Its memory is
//! overwritten with zeros when it is dropped, so a credential does not linger in freed heap
//! memory (where a core dump would carry it); copies handed to a client library (the AWS SDK,
//! an HTTP body) are that library's and are not covered.

use std::fmt;

use sha2::{Digest, Sha256};

/// A credential value that prints as `<redacted>` and is zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(String);

impl Drop for Sensitive {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Sensitive {
    pub fn new(value: impl Into<String>) -> Self {
        Sensitive(value.into())
    }

    /// The raw value, for the one place that sends or stores it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short, stable fingerprint for correlating log lines without revealing the value.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        crate::encode::hex(&digest[..6])
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Sensitive::new("ya29.very-secret");
        assert_eq!(
            format!("{s:?} {s} {:?}", Some(&s)),
            "<redacted> <redacted> Some(<redacted>)"
        );
        assert_eq!(s.expose(), "ya29.very-secret");
        assert_eq!(s.fingerprint().len(), 12);
        assert!(!s.fingerprint().contains("secret"));
    }
}

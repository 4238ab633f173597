//! What the fault stories and the soak check in every Secret they read: the token against its
//! `expiry` and against the doubles (a token the doubles never issued is a hand edit, one they
//! no longer accept is as good as expired), and how their rows reach the report files.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;

use super::cloud::Cloud;

/// A Secret's data as text.
pub fn decode(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// What one read of a Secret showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A token the doubles issued and still accept, `left` seconds before its `expiry`.
    Fresh {
        token: String,
        expiry: Timestamp,
        left: i64,
    },
    /// Its `expiry` had passed, or the doubles no longer accept it.
    Expired { left: i64 },
    /// No token, no readable expiry, or a value the doubles never issued (`left` when its
    /// `expiry` could be read).
    Foreign { left: Option<i64> },
}

/// Judges Secrets against the doubles, remembering which tokens they issued.
#[derive(Default)]
pub struct Judge {
    issued: HashSet<String>,
}

impl Verdict {
    /// Seconds to `expiry`, when it could be read.
    pub fn left(&self) -> Option<i64> {
        match self {
            Verdict::Fresh { left, .. } | Verdict::Expired { left } => Some(*left),
            Verdict::Foreign { left } => *left,
        }
    }
}

impl Judge {
    pub fn judge(&mut self, secret: &Secret, cloud: &Cloud) -> Verdict {
        let data = decode(secret);
        let (Some(token), Some(expiry)) = (data.get("access_token"), data.get("expiry")) else {
            return Verdict::Foreign { left: None };
        };
        let Ok(expiry) = expiry.parse::<Timestamp>() else {
            return Verdict::Foreign { left: None };
        };
        let now = Timestamp::now();
        let left = expiry.as_second() - now.as_second();
        if !self.issued.contains(token) {
            self.issued.extend(cloud.google.issued_tokens());
        }
        if expiry <= now || (self.issued.contains(token) && cloud.google.lookup(token).is_none()) {
            Verdict::Expired { left }
        } else if !self.issued.contains(token) {
            Verdict::Foreign { left: Some(left) }
        } else {
            Verdict::Fresh {
                token: token.clone(),
                expiry,
                left,
            }
        }
    }
}

/// Prints a markdown row and appends it to the file named by `variable`, when set.
pub fn report_row(variable: &str, row: &str) {
    println!("{row}");
    if let Some(path) = std::env::var_os(variable) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("the report file {path:?} ({variable}) opens: {e}"));
        file.write_all(format!("{row}\n").as_bytes())
            .unwrap_or_else(|e| panic!("the report file {path:?} takes the row: {e}"));
    }
}

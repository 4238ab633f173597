//! Google STS and IAM Credentials success answers through `read_sts_token` and
//! `read_generated_token`. Input: a body, either raw bytes or a JSON object built from fields
//! that may or may not be well formed, and the moment it was received. Checks: a token is handed
//! on only when it is non-empty printable ASCII and expires after the answer arrived and at most
//! 12 hours (plus a minute of clock skew) later, in whole seconds; every refusal is an Upstream
//! error that never quotes the token offered.
#![no_main]

use arbitrary::Arbitrary;
use fedcred_core::error::Reason;
use fedcred_core::google::{MAX_TOKEN_LIFETIME, read_generated_token, read_sts_token};
use jiff::{SignedDuration, Timestamp};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

#[derive(Arbitrary, Debug)]
enum Field {
    Absent,
    Text(String),
    Number(i64),
    Float(f64),
    Null,
    Nested(String),
}

impl Field {
    fn value(&self) -> Option<Value> {
        match self {
            Field::Absent => None,
            Field::Text(s) => Some(json!(s)),
            Field::Number(n) => Some(json!(n)),
            Field::Float(f) => Some(json!(f)),
            Field::Null => Some(Value::Null),
            Field::Nested(s) => Some(json!({ "value": s })),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Body {
    Raw(String),
    Sts {
        token: Field,
        token_type: Field,
        expires_in: Field,
    },
    Iam {
        token: Field,
        /// Seconds from the moment of receipt, as an RFC 3339 `expireTime`.
        expire_in: i64,
        expire_text: Option<String>,
    },
}

const MARK: &str = "MARK-9c1e";

fuzz_target!(|input: (Body, i64)| {
    let (body, received) = input;
    // Any moment of the years a controller runs in.
    let now = Timestamp::from_second(1_600_000_000 + received.rem_euclid(3_000_000_000))
        .expect("in range");
    // The token offered, when the body offers one as a string: it must never be quoted.
    let mut offered: Option<String> = None;
    let text = match &body {
        Body::Raw(s) => s.clone(),
        Body::Sts {
            token,
            token_type,
            expires_in,
        } => {
            let mut o = serde_json::Map::new();
            if let Some(v) = marked(token, &mut offered) {
                o.insert("access_token".into(), v);
            }
            if let Some(v) = token_type.value() {
                o.insert("token_type".into(), v);
            }
            if let Some(v) = expires_in.value() {
                o.insert("expires_in".into(), v);
            }
            Value::Object(o).to_string()
        }
        Body::Iam {
            token,
            expire_in,
            expire_text,
        } => {
            let mut o = serde_json::Map::new();
            if let Some(v) = marked(token, &mut offered) {
                o.insert("accessToken".into(), v);
            }
            let expire = match expire_text {
                Some(t) => t.clone(),
                None => now
                    .checked_add(SignedDuration::from_secs(*expire_in % 100_000))
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            };
            o.insert("expireTime".into(), json!(expire));
            Value::Object(o).to_string()
        }
    };

    let latest = now + MAX_TOKEN_LIFETIME + std::time::Duration::from_secs(60);
    for result in [read_sts_token(&text, now), read_generated_token(&text, now)] {
        match result {
            Ok(token) => {
                let value = token.token.expose();
                assert!(!value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic()));
                assert!(token.expires_at > now - SignedDuration::from_secs(1), "{}", token.expires_at);
                assert!(token.expires_at <= latest, "{}", token.expires_at);
                assert_eq!(token.expires_at.subsec_nanosecond(), 0);
            }
            Err(e) => {
                assert_eq!(e.reason, Reason::Upstream, "{}", e.message);
                assert!(!e.message.is_empty());
                if let Some(token) = &offered {
                    assert!(!e.message.contains(token.as_str()), "{}", e.message);
                }
                assert!(!e.message.contains(MARK), "{}", e.message);
            }
        }
    }
});

/// The token field's value, with a marker that makes it recognisable when it is a string.
fn marked(field: &Field, offered: &mut Option<String>) -> Option<Value> {
    match field {
        Field::Text(s) => {
            let token = format!("{MARK}{s}");
            *offered = Some(token.clone());
            Some(json!(token))
        }
        Field::Nested(s) => Some(json!({ "value": format!("{MARK}{s}") })),
        other => other.value(),
    }
}

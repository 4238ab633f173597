//! The AWS subject token builder with arbitrary credentials, region, audience, endpoint and
//! time. Checks: errors never carry the secret key or session token; a token decodes to the
//! signed request JSON with sorted headers, the audience in its header and signed; the secret
//! key never appears in a token; inputs the CRD admits always yield a token.
#![no_main]

mod common;

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use fedcred_core::sensitive::Sensitive;
use fedcred_core::sigv4::AwsCredentials;
use fedcred_core::subject_token::{self, SubjectTokenRequest, TARGET_RESOURCE_HEADER};
use libfuzzer_sys::fuzz_target;
use regex::Regex;
use serde_json::Value;

static REGION: LazyLock<Regex> = LazyLock::new(|| common::crd_pattern(&["aws", "region"]));
static AUDIENCE: LazyLock<Regex> = LazyLock::new(|| common::crd_pattern(&["google", "audience"]));

const REGIONS: &[&str] = &[
    "us-east-1",
    "ap-northeast-1",
    "cn-north-1",
    "us-gov-west-1",
    "eu-central-2",
];
const AUDIENCES: &[&str] = &[
    "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop",
    "",
];
const ENDPOINTS: &[&str] = &[
    "https://sts.us-east-1.amazonaws.com",
    "http://127.0.0.1:5000/",
    "https://[::1]:8443/sts",
];

const OTHER_SECRET: &str = "fuzz-other-secret-key-0000";

#[derive(Arbitrary, Debug)]
enum Pick {
    Known(u8),
    Any(String),
}

impl Pick {
    fn get(&self, known: &[&str]) -> String {
        match self {
            Pick::Known(i) => known[*i as usize % known.len()].to_owned(),
            Pick::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    key_id: String,
    secret: String,
    session: Option<String>,
    region: Pick,
    audience: Pick,
    endpoint: Option<Pick>,
    seconds: u32,
}

fn token(input: &Input, secret: &str, session: Option<&str>) -> Result<String, String> {
    let region = input.region.get(REGIONS);
    let audience = input.audience.get(AUDIENCES);
    let endpoint = input.endpoint.as_ref().map(|e| e.get(ENDPOINTS));
    let credentials = AwsCredentials {
        access_key_id: input.key_id.clone(),
        secret_access_key: Sensitive::new(secret),
        session_token: session.map(Sensitive::new),
    };
    let req = SubjectTokenRequest {
        region: &region,
        audience: &audience,
        endpoint: endpoint.as_deref(),
        time: jiff::Timestamp::from_second(i64::from(input.seconds)).expect("a u32 of seconds is a time"),
    };
    let built = subject_token::build(&credentials, &req).map(|t| t.expose().to_owned());
    let json =
        subject_token::signed_request_json(&credentials, &req).map(|t| t.expose().to_owned());
    match (built, json) {
        (Ok(built), Ok(json)) => {
            let decoded = percent_encoding::percent_decode_str(&built)
                .decode_utf8()
                .expect("the token decodes to UTF-8");
            assert_eq!(decoded, json, "the token is the URL-encoded JSON");
            assert!(
                built
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)),
                "only unreserved characters and escapes: {built}"
            );
            Ok(json)
        }
        (Err(a), Err(b)) => {
            let (a, b) = (a.to_string(), b.to_string());
            assert_eq!(a, b);
            Err(a)
        }
        (a, b) => panic!("build and signed_request_json disagree: {a:?} / {b:?}"),
    }
}

/// `s` with every ASCII letter and digit replaced by the next one of its kind (z to a, 9 to 0):
/// the same length and character classes, so the same validity, but other text.
fn shifted(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            'a'..='y' | 'A'..='Y' | '0'..='8' => char::from(c as u8 + 1),
            other => other,
        })
        .collect()
}

fn ascii_graphic(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

fuzz_target!(|input: Input| {
    let region = input.region.get(REGIONS);
    let audience = input.audience.get(AUDIENCES);
    let endpoint = input.endpoint.as_ref().map(|e| e.get(ENDPOINTS));
    let outcome = token(&input, &input.secret, input.session.as_deref());
    let session = input.session.clone().unwrap_or_default();

    match &outcome {
        Err(message) => {
            // A message that changes with the credentials must not quote them. It is compared
            // with the message for credentials of the same shape (each letter and digit
            // shifted), which fail the same way, so a secret that happens to spell part of the
            // fixed text ("eate" in "create") is not taken for a quote. A credential without
            // letters or digits has no other of its shape and is not checked.
            let other_session = input.session.as_deref().map(shifted);
            let other = token(&input, &shifted(&input.secret), other_session.as_deref());
            if other.as_ref().err() != Some(message) {
                for secret in [&input.secret, &session] {
                    if secret.len() >= 4 && shifted(secret) != *secret {
                        assert!(
                            !message.contains(secret.as_str()),
                            "a secret in the error: {message}"
                        );
                    }
                }
            }
            // What the CRD admits (with sane credentials) must sign.
            let admitted = REGION.is_match(&region)
                && (audience.is_empty() || AUDIENCE.is_match(&audience))
                && endpoint.is_none()
                && ascii_graphic(&input.key_id)
                && ascii_graphic(&input.secret)
                && input.session.as_deref().is_none_or(ascii_graphic);
            assert!(!admitted, "a CRD-valid request failed to sign: {message}");
        }
        Ok(json) => {
            let doc: Value = serde_json::from_str(json).expect("the token is JSON");
            assert_eq!(doc["method"], "POST");
            let url = doc["url"].as_str().expect("url");
            assert!(
                url.ends_with("?Action=GetCallerIdentity&Version=2011-06-15"),
                "{url}"
            );
            let headers = doc["headers"].as_array().expect("headers");
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|h| {
                    (
                        h["key"].as_str().expect("key"),
                        h["value"].as_str().expect("value"),
                    )
                })
                .collect();
            let mut sorted = pairs.clone();
            sorted.sort();
            assert_eq!(pairs, sorted, "headers are sorted");
            let get = |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            let authorization = get("Authorization").expect("an Authorization header");
            assert!(
                authorization.starts_with("AWS4-HMAC-SHA256 Credential="),
                "{authorization}"
            );
            assert!(
                get("x-amz-date").is_some() && get("host").is_some(),
                "{json}"
            );
            if audience.is_empty() {
                assert!(get(TARGET_RESOURCE_HEADER).is_none());
            } else {
                assert_eq!(get(TARGET_RESOURCE_HEADER), Some(audience.as_str()));
                assert!(
                    authorization.contains(TARGET_RESOURCE_HEADER),
                    "the audience is signed"
                );
            }
            if !session.is_empty() {
                assert_eq!(get("x-amz-security-token"), Some(session.as_str()));
            }
            // The secret key signs; it must never travel. Text that also appears when signing
            // with another key came from the other inputs, not from the secret.
            if input.secret.len() >= 8 && json.contains(&input.secret) {
                let other =
                    token(&input, OTHER_SECRET, input.session.as_deref()).expect("signs again");
                assert!(
                    other.contains(&input.secret),
                    "the secret key is in the token: {json}"
                );
            }
        }
    }
});

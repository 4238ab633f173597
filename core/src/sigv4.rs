//! AWS Signature Version 4 for the one request fedcred signs: a `POST` with an empty body whose
//! signed headers are given (Google STS forwards the signed request to AWS STS, which checks
//! the signature). Pure: credentials, request and time in, headers out.
//!
//! Written here rather than taken from the AWS SDK so that the core has no AWS dependency; it
//! is checked against AWS's published vectors (DESIGN.md §4), botocore's signer
//! (`tests/sigv4_botocore.rs`) and the Google STS double's independent verifier.

use hmac::{Hmac, Mac};
use jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::encode::{Escape, hex, percent_encode};
use crate::sensitive::Sensitive;

/// Temporary or long-term AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Sensitive,
    /// Present for temporary credentials; signed as `x-amz-security-token`.
    pub session_token: Option<Sensitive>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .finish()
    }
}

/// SHA-256 of the empty body, the payload hash of every request signed here.
const EMPTY_PAYLOAD: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What to sign: the parts of an empty-bodied `POST`.
pub struct Request<'a> {
    /// The path, `/` when empty.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    /// Headers to sign besides `x-amz-date` and `x-amz-security-token`; `host` among them.
    pub headers: &'a [(&'a str, &'a str)],
    pub region: &'a str,
    pub service: &'a str,
    pub time: Timestamp,
}

/// The headers signing adds: `x-amz-date`, `x-amz-security-token` for temporary credentials,
/// and `Authorization`, as (lowercase name, value) pairs.
pub fn sign(credentials: &AwsCredentials, req: &Request<'_>) -> Vec<(&'static str, String)> {
    let amz_date = req.time.strftime("%Y%m%dT%H%M%SZ").to_string();
    let date = &amz_date[..8];
    let mut added = vec![("x-amz-date", amz_date.clone())];
    if let Some(token) = &credentials.session_token {
        added.push(("x-amz-security-token", token.expose().to_owned()));
    }

    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .chain(added.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .map(|(k, v)| (k, canonical_value(&v)))
        .collect();
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical_request = format!(
        "POST\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{EMPTY_PAYLOAD}",
        canonical_path(req.path),
        canonical_query(req.query),
    );

    let scope = format!("{date}/{}/{}/aws4_request", req.region, req.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let key = [date, req.region, req.service, "aws4_request"].iter().fold(
        format!("AWS4{}", credentials.secret_access_key.expose()).into_bytes(),
        |key, part| hmac(&key, part.as_bytes()),
    );
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    added.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key_id
        ),
    ));
    added
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Trimmed, with runs of spaces folded into one, as SigV4 canonicalises header values.
fn canonical_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The path, each segment encoded (services other than S3 encode the already-encoded path
/// once more, so percent signs are encoded again).
fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    percent_encode(path, Escape::UnreservedAndSlash)
}

/// Query parameters decoded, re-encoded and sorted by name, then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (
                percent_encode(&decode(k), Escape::Unreserved),
                percent_encode(&decode(v), Escape::Unreserved),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_parts_follow_the_specification() {
        assert_eq!(canonical_path(""), "/");
        assert_eq!(canonical_path("/a b/c"), "/a%20b/c");
        assert_eq!(canonical_query("b=2&a=1&a=0"), "a=0&a=1&b=2");
        assert_eq!(canonical_query("x=%2F y"), "x=%2F%20y");
        assert_eq!(canonical_value("  a   b "), "a b");
    }
}

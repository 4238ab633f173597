//! An independent AWS Signature Version 4 verifier, written from the published algorithm with
//! `hmac` and `sha2` only (deliberately not the `aws-sigv4` crate fedcred signs with, so the two
//! cannot share a bug).
//!
//! Owns: parsing the `Authorization` header, building the canonical request and the string to
//! sign, deriving the signing key and comparing signatures. Pure: no I/O, no clock. It does not
//! decide which requests Google accepts (endpoint, query, time window): that is `subject`'s job.

use std::fmt;

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};
use url::Url;

type HmacSha256 = Hmac<Sha256>;

/// The only algorithm Google accepts in an AWS subject token.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// RFC 3986 unreserved characters stay; everything else is percent-encoded, as SigV4 requires.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Like [`UNRESERVED`] but keeping `/`, for the canonical URI.
const PATH: &AsciiSet = &UNRESERVED.remove(b'/');

/// Why a request does not verify. The messages name the problem, never a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigV4Error {
    /// No `Authorization` header at all.
    MissingAuthorization,
    /// The `Authorization` header is not `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
    MalformedAuthorization(&'static str),
    /// A header named in `SignedHeaders` is not in the request.
    MissingSignedHeader(String),
    /// The same header appears twice (case-insensitively), so what was signed is ambiguous.
    DuplicateHeader(String),
    /// The URL has no host to derive the `host` header from.
    NoHost,
    /// The signature does not match the one computed from the request and the key's secret.
    SignatureMismatch,
}

impl fmt::Display for SigV4Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigV4Error::MissingAuthorization => {
                f.write_str("the AWS request has no Authorization header")
            }
            SigV4Error::MalformedAuthorization(what) => {
                write!(
                    f,
                    "the AWS request's Authorization header is malformed: {what}"
                )
            }
            SigV4Error::MissingSignedHeader(name) => {
                write!(
                    f,
                    "the AWS request signs header {name:?} but does not carry it"
                )
            }
            SigV4Error::DuplicateHeader(name) => {
                write!(f, "the AWS request carries header {name:?} more than once")
            }
            SigV4Error::NoHost => f.write_str("the AWS request URL has no host"),
            SigV4Error::SignatureMismatch => f.write_str(
                "The request signature we calculated does not match the signature you provided.",
            ),
        }
    }
}

impl std::error::Error for SigV4Error {}

/// The parsed `Authorization` header of a SigV4-signed request.
#[derive(Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lowercase header names, in the order given (SigV4 requires them sorted; we check that).
    pub signed_headers: Vec<String>,
    /// The signature bytes (decoded from hex).
    pub signature: Vec<u8>,
}

impl fmt::Debug for Authorization {
    // The signature is not a secret, but it is a bearer credential for 15 minutes: keep it out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorization")
            .field("access_key_id", &self.access_key_id)
            .field("date", &self.date)
            .field("region", &self.region)
            .field("service", &self.service)
            .field("signed_headers", &self.signed_headers)
            .finish_non_exhaustive()
    }
}

impl Authorization {
    /// Parses `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
    /// SignedHeaders=a;b;c, Signature=hex`.
    pub fn parse(value: &str) -> Result<Self, SigV4Error> {
        use SigV4Error::MalformedAuthorization as Bad;
        let (algorithm, rest) = value
            .trim()
            .split_once(' ')
            .ok_or(Bad("expected an algorithm followed by parameters"))?;
        if algorithm != ALGORITHM {
            return Err(Bad("the algorithm is not AWS4-HMAC-SHA256"));
        }
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (name, value) = part
                .trim()
                .split_once('=')
                .ok_or(Bad("a parameter is not NAME=VALUE"))?;
            let slot = match name {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed_headers,
                "Signature" => &mut signature,
                _ => return Err(Bad("unknown parameter")),
            };
            if slot.replace(value).is_some() {
                return Err(Bad("a parameter is repeated"));
            }
        }
        let credential = credential.ok_or(Bad("Credential is missing"))?;
        let signed_headers = signed_headers.ok_or(Bad("SignedHeaders is missing"))?;
        let signature = signature.ok_or(Bad("Signature is missing"))?;

        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, terminator] = scope[..] else {
            return Err(Bad(
                "Credential is not AKID/DATE/REGION/SERVICE/aws4_request",
            ));
        };
        if terminator != "aws4_request" {
            return Err(Bad("the credential scope does not end in aws4_request"));
        }
        if access_key_id.is_empty() || region.is_empty() || service.is_empty() {
            return Err(Bad("the credential scope has an empty part"));
        }
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Bad("the credential scope date is not YYYYMMDD"));
        }
        let signed_headers: Vec<String> = signed_headers.split(';').map(str::to_owned).collect();
        if signed_headers
            .iter()
            .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
        {
            return Err(Bad("SignedHeaders must be non-empty lowercase names"));
        }
        if signed_headers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Bad("SignedHeaders must be sorted and unique"));
        }
        if signature.len() != 64 {
            return Err(Bad("Signature is not 64 hex digits"));
        }
        let signature =
            hex::decode(signature).map_err(|_| Bad("Signature is not 64 hex digits"))?;
        Ok(Authorization {
            access_key_id: access_key_id.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            signed_headers,
            signature,
        })
    }

    /// `DATE/REGION/SERVICE/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }

    /// Whether `name` (lowercase) is among the signed headers.
    pub fn signs(&self, name: &str) -> bool {
        self.signed_headers.iter().any(|h| h == name)
    }
}

/// A request as it arrived, for verification: headers keep their original spelling.
#[derive(Clone, Copy, Debug)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub url: &'a Url,
    pub headers: &'a [(String, String)],
}

impl SignedRequest<'_> {
    /// The value of header `name`, compared case-insensitively; an error when it is repeated.
    pub fn header(&self, name: &str) -> Result<Option<&str>, SigV4Error> {
        let mut found = None;
        for (key, value) in self.headers {
            if key.eq_ignore_ascii_case(name) {
                if found.is_some() {
                    return Err(SigV4Error::DuplicateHeader(name.to_ascii_lowercase()));
                }
                found = Some(value.as_str());
            }
        }
        Ok(found)
    }

    /// The parsed `Authorization` header.
    pub fn authorization(&self) -> Result<Authorization, SigV4Error> {
        Authorization::parse(
            self.header("authorization")?
                .ok_or(SigV4Error::MissingAuthorization)?,
        )
    }

    /// The `host` header as a client derives it from the URL: host, plus the port when it is
    /// not the scheme's default.
    pub fn host_from_url(&self) -> Result<String, SigV4Error> {
        let host = self.url.host_str().ok_or(SigV4Error::NoHost)?;
        Ok(match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        })
    }
}

/// The SigV4 canonical request for `request`, signing `signed_headers` over an empty payload.
pub fn canonical_request(
    request: &SignedRequest<'_>,
    signed_headers: &[String],
) -> Result<String, SigV4Error> {
    let mut out = String::new();
    out.push_str(request.method);
    out.push('\n');
    out.push_str(&canonical_uri(request.url));
    out.push('\n');
    out.push_str(&canonical_query(request.url.query().unwrap_or("")));
    out.push('\n');
    let mut names: Vec<&String> = signed_headers.iter().collect();
    names.sort();
    for name in &names {
        let value = match request.header(name)? {
            Some(value) => value.to_owned(),
            // Clients (botocore among them) sign `host` without listing it: the URL carries it.
            None if name.as_str() == "host" => request.host_from_url()?,
            None => return Err(SigV4Error::MissingSignedHeader((*name).clone())),
        };
        out.push_str(name);
        out.push(':');
        out.push_str(&canonical_header_value(&value));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(
        &names
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(";"),
    );
    out.push('\n');
    out.push_str(&hex::encode(Sha256::digest(b"")));
    Ok(out)
}

/// The path, URI-encoded once more (SigV4 double-encodes for every service but S3); `/` when
/// empty.
fn canonical_uri(url: &Url) -> String {
    let path = url.path();
    if path.is_empty() {
        "/".to_owned()
    } else {
        utf8_percent_encode(path, PATH).to_string()
    }
}

/// Query parameters decoded, re-encoded with the RFC 3986 unreserved set and sorted by name, then
/// value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (encode_component(name), encode_component(value))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode_component(raw: &str) -> String {
    let decoded = percent_decode_str(raw).decode_utf8_lossy();
    utf8_percent_encode(&decoded, UNRESERVED).to_string()
}

/// Trimmed, with runs of spaces collapsed to one, as SigV4 canonicalizes header values.
fn canonical_header_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hex sha256(canonical request)}`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The signing key: HMAC chain `"AWS4" + secret` → date → region → service → `aws4_request`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// Hex signature of `string_to_sign` under `key`.
pub fn signature(key: &[u8], string_to_sign: &str) -> String {
    hex::encode(hmac(key, string_to_sign.as_bytes()))
}

/// Verifies `request`'s SigV4 signature with `secret`, the secret of the access key named in its
/// `Authorization` header. The request time comes from its `x-amz-date` header; whether that
/// time is acceptable is the caller's decision.
pub fn verify(request: &SignedRequest<'_>, secret: &str) -> Result<(), SigV4Error> {
    let auth = request.authorization()?;
    let amz_date = request
        .header("x-amz-date")?
        .ok_or(SigV4Error::MissingSignedHeader("x-amz-date".to_owned()))?;
    let canonical = canonical_request(request, &auth.signed_headers)?;
    let to_sign = string_to_sign(amz_date, &auth.scope(), &canonical);
    let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(to_sign.as_bytes());
    // Constant-time comparison, as a real verifier would do.
    mac.verify_slice(&auth.signature)
        .map_err(|_| SigV4Error::SignatureMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's documented example of the signing key derivation (General Reference, "Examples of how
    // to derive a signing key for Signature Version 4").
    #[test]
    fn signing_key_matches_aws_documentation() {
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex::encode(key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn parses_authorization() {
        let auth = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=AKID/20200811/us-east-2/sts/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=9e722e5b7bfa163447e2a14df118b45ebd283c5aea72019bdf921d6e7dc01a9a",
        )
        .unwrap();
        assert_eq!(auth.access_key_id, "AKID");
        assert_eq!(auth.scope(), "20200811/us-east-2/sts/aws4_request");
        assert_eq!(auth.signed_headers, ["host", "x-amz-date"]);
        assert!(auth.signs("host") && !auth.signs("x-amz-security-token"));
        assert!(!format!("{auth:?}").contains("9e722e5b"));
    }

    #[test]
    fn rejects_malformed_authorization() {
        for bad in [
            "",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA1 Credential=A/20200811/r/sts/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/20200811/r/sts, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/2020081/r/sts/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/20200811/r/sts/aws4_request, SignedHeaders=x;host, Signature=9e722e5b7bfa163447e2a14df118b45ebd283c5aea72019bdf921d6e7dc01a9a",
            "AWS4-HMAC-SHA256 Credential=A/20200811/r/sts/aws4_request, SignedHeaders=host, Signature=zz722e5b7bfa163447e2a14df118b45ebd283c5aea72019bdf921d6e7dc01a9a",
            "AWS4-HMAC-SHA256 Credential=A/20200811/r/sts/aws4_request, Signature=9e722e5b7bfa163447e2a14df118b45ebd283c5aea72019bdf921d6e7dc01a9a",
        ] {
            assert!(
                matches!(
                    Authorization::parse(bad),
                    Err(SigV4Error::MalformedAuthorization(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn canonical_query_sorts_and_encodes() {
        assert_eq!(
            canonical_query("Version=2011-06-15&Action=GetCallerIdentity"),
            "Action=GetCallerIdentity&Version=2011-06-15"
        );
        assert_eq!(canonical_query("b=a%20b&a=x/y"), "a=x%2Fy&b=a%20b");
    }

    #[test]
    fn canonical_header_values_are_trimmed_and_collapsed() {
        assert_eq!(canonical_header_value("  a   b c "), "a b c");
    }
}

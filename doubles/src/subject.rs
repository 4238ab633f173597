//! The AWS subject token (`urn:ietf:params:aws:token-type:aws4_request`) and the checks Google
//! STS applies to it before it looks at the signature: the URL-encoded JSON
//! `{"url","method","headers":[{"key","value"}…]}` must describe a `POST` of
//! `Action=GetCallerIdentity&Version=2011-06-15` to an accepted AWS STS endpoint, carry the
//! audience in `x-goog-cloud-target-resource`, and be signed within 15 minutes of now.
//!
//! Pure: the clock and the accepted endpoints come in as arguments. Signature verification is
//! [`crate::sigv4`]'s; finding the secret and asking AWS who signed are [`crate::sts`]'s.

use std::fmt;

use jiff::{SignedDuration, Timestamp};
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use url::Url;

use crate::sigv4::{Authorization, SigV4Error, SignedRequest};

/// Header carrying the provider's full resource name inside the signed request.
pub const TARGET_RESOURCE_HEADER: &str = "x-goog-cloud-target-resource";

/// How far the signing time may be from now, either way.
pub const TIME_WINDOW: SignedDuration = SignedDuration::from_mins(15);

/// Why Google would refuse the subject token. Every variant is an `invalid_grant`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectError {
    /// Not URL-encoded JSON of the expected shape, or a header that cannot be interpreted.
    InvalidFormat(String),
    /// The signed request is not a `POST`.
    Method(String),
    /// The query is not exactly `Action=GetCallerIdentity&Version=2011-06-15`.
    Query,
    /// The URL does not point at an accepted AWS STS endpoint.
    Endpoint(String),
    /// `x-goog-cloud-target-resource` is missing.
    TargetMissing,
    /// `x-goog-cloud-target-resource` names a different provider than the audience.
    TargetMismatch,
    /// `x-goog-cloud-target-resource` is required to be signed and is not.
    TargetNotSigned,
    /// `x-amz-date` is outside the 15-minute window.
    OutsideWindow {
        signed_at: Timestamp,
        now: Timestamp,
    },
}

impl fmt::Display for SubjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectError::InvalidFormat(detail) => {
                write!(f, "AWS request has invalid format. {detail}")
            }
            SubjectError::Method(method) => write!(
                f,
                "AWS request has invalid format. The method must be POST, not {method:?}."
            ),
            SubjectError::Query => f.write_str(
                "AWS request has invalid format. The URL must call \
                 Action=GetCallerIdentity&Version=2011-06-15 and nothing else.",
            ),
            SubjectError::Endpoint(origin) => write!(
                f,
                "The AWS request URL {origin} is not an AWS STS endpoint this service accepts."
            ),
            SubjectError::TargetMissing => write!(
                f,
                "The AWS request is missing the {TARGET_RESOURCE_HEADER} header."
            ),
            SubjectError::TargetMismatch => write!(
                f,
                "The {TARGET_RESOURCE_HEADER} header of the AWS request does not match the \
                 audience."
            ),
            SubjectError::TargetNotSigned => write!(
                f,
                "The {TARGET_RESOURCE_HEADER} header of the AWS request is not among its signed \
                 headers."
            ),
            SubjectError::OutsideWindow { signed_at, now } => write!(
                f,
                "The AWS request is expired or not yet valid: it was signed at {signed_at}, the \
                 time now is {now}, and requests are accepted for 15 minutes either way."
            ),
        }
    }
}

impl std::error::Error for SubjectError {}

impl From<SigV4Error> for SubjectError {
    fn from(e: SigV4Error) -> Self {
        SubjectError::InvalidFormat(e.to_string())
    }
}

/// What the request must satisfy, apart from its signature.
#[derive(Clone, Copy, Debug)]
pub struct Expectations<'a> {
    /// The STS `audience`.
    pub audience: &'a str,
    /// Accepted `scheme://host[:port]` values.
    pub endpoints: &'a [String],
    pub require_signed_target: bool,
    pub now: Timestamp,
}

/// A subject token that passed every check but the signature.
#[derive(Clone, Debug)]
pub struct CheckedRequest {
    pub method: String,
    pub url: Url,
    /// Headers as received (original spelling and order).
    pub headers: Vec<(String, String)>,
    pub authorization: Authorization,
    pub signed_at: Timestamp,
}

impl CheckedRequest {
    /// The view [`crate::sigv4::verify`] takes.
    pub fn signed(&self) -> SignedRequest<'_> {
        SignedRequest {
            method: &self.method,
            url: &self.url,
            headers: &self.headers,
        }
    }
}

#[derive(Deserialize)]
struct WireRequest {
    url: String,
    method: String,
    headers: Vec<WireHeader>,
    #[serde(default)]
    body: Option<String>,
}

#[derive(Deserialize)]
struct WireHeader {
    key: String,
    value: String,
}

/// Decodes the URL-encoded JSON of a subject token.
fn decode(token: &str) -> Result<WireRequest, SubjectError> {
    let json = percent_decode_str(token)
        .decode_utf8()
        .map_err(|_| SubjectError::InvalidFormat("It is not URL-encoded UTF-8.".to_owned()))?;
    serde_json::from_str(&json).map_err(|e| {
        SubjectError::InvalidFormat(format!(
            "It is not JSON of the form {{\"url\",\"method\",\"headers\":[{{\"key\",\"value\"}}]}} ({}).",
            json_problem(&e)
        ))
    })
}

/// What went wrong in JSON terms, without quoting the input.
fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not valid JSON",
        serde_json::error::Category::Data => "a field is missing or has the wrong type",
        serde_json::error::Category::Io => "unreadable",
    }
}

/// Parses `token` and applies every check but the signature.
pub fn check(token: &str, expect: &Expectations<'_>) -> Result<CheckedRequest, SubjectError> {
    let Shape {
        method,
        url,
        headers,
    } = check_shape(decode(token)?)?;
    check_query(&url)?;
    check_endpoint(&url, expect.endpoints)?;
    let signed = SignedRequest {
        method: &method,
        url: &url,
        headers: &headers,
    };
    // Every header lookup below also refuses repeated headers.
    check_host(&signed)?;
    check_target(signed.header(TARGET_RESOURCE_HEADER)?, expect.audience)?;
    let authorization = check_authorization(&signed, expect.require_signed_target)?;
    let signed_at = check_date(&signed, &authorization, expect.now)?;
    Ok(CheckedRequest {
        method,
        url,
        headers,
        authorization,
        signed_at,
    })
}

/// The request a subject token describes, before its headers are interpreted.
struct Shape {
    method: String,
    url: Url,
    headers: Vec<(String, String)>,
}

/// A `POST` without body to an http(s) URL with a host; headers with names.
fn check_shape(wire: WireRequest) -> Result<Shape, SubjectError> {
    if wire.body.as_deref().is_some_and(|b| !b.is_empty()) {
        return Err(SubjectError::InvalidFormat(
            "GetCallerIdentity is signed over an empty body.".to_owned(),
        ));
    }
    if wire.headers.iter().any(|h| h.key.is_empty()) {
        return Err(SubjectError::InvalidFormat(
            "A header has an empty key.".to_owned(),
        ));
    }
    if wire.method != "POST" {
        return Err(SubjectError::Method(wire.method));
    }
    let url = Url::parse(&wire.url)
        .map_err(|_| SubjectError::InvalidFormat("The url is not a URL.".to_owned()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(SubjectError::InvalidFormat(
            "The url is not an http(s) URL with a host.".to_owned(),
        ));
    }
    let headers = wire.headers.into_iter().map(|h| (h.key, h.value)).collect();
    Ok(Shape {
        method: wire.method,
        url,
        headers,
    })
}

/// A `host` header, when listed, names the URL's host.
fn check_host(signed: &SignedRequest<'_>) -> Result<(), SubjectError> {
    let Some(host) = signed.header("host")? else {
        return Ok(());
    };
    // google-auth (Python) signs the URL's hostname without its port; AWS's own hosts use the
    // default port, where both spellings agree.
    let with_port = signed.host_from_url()?;
    let without_port = signed.url.host_str().unwrap_or_default();
    if host.eq_ignore_ascii_case(&with_port) || host.eq_ignore_ascii_case(without_port) {
        Ok(())
    } else {
        Err(SubjectError::InvalidFormat(
            "The host header does not match the url.".to_owned(),
        ))
    }
}

/// An `Authorization` for the `sts` service that signs `host` and `x-amz-date` (and the target
/// header when required).
fn check_authorization(
    signed: &SignedRequest<'_>,
    require_signed_target: bool,
) -> Result<Authorization, SubjectError> {
    let authorization = signed.authorization()?;
    if authorization.service != "sts" {
        return Err(SubjectError::InvalidFormat(
            "The credential scope is not for the sts service.".to_owned(),
        ));
    }
    for required in ["host", "x-amz-date"] {
        if !authorization.signs(required) {
            return Err(SubjectError::InvalidFormat(format!(
                "The {required} header must be signed."
            )));
        }
    }
    if require_signed_target && !authorization.signs(TARGET_RESOURCE_HEADER) {
        return Err(SubjectError::TargetNotSigned);
    }
    Ok(authorization)
}

/// `x-amz-date`, on the credential scope's day, within [`TIME_WINDOW`] of `now`.
fn check_date(
    signed: &SignedRequest<'_>,
    authorization: &Authorization,
    now: Timestamp,
) -> Result<Timestamp, SubjectError> {
    let amz_date = signed.header("x-amz-date")?.ok_or_else(|| {
        SubjectError::InvalidFormat("The x-amz-date header is missing.".to_owned())
    })?;
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
        SubjectError::InvalidFormat("The x-amz-date header is not YYYYMMDDTHHMMSSZ.".to_owned())
    })?;
    if !amz_date.starts_with(&authorization.date) {
        return Err(SubjectError::InvalidFormat(
            "The credential scope date is not the date of x-amz-date.".to_owned(),
        ));
    }
    if now.duration_since(signed_at).abs() > TIME_WINDOW {
        return Err(SubjectError::OutsideWindow { signed_at, now });
    }
    Ok(signed_at)
}

/// The query must be exactly `Action=GetCallerIdentity` and `Version=2011-06-15`.
fn check_query(url: &Url) -> Result<(), SubjectError> {
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.sort();
    let expected = [
        ("Action".to_owned(), "GetCallerIdentity".to_owned()),
        ("Version".to_owned(), "2011-06-15".to_owned()),
    ];
    if pairs != expected || url.fragment().is_some() {
        return Err(SubjectError::Query);
    }
    Ok(())
}

/// `scheme://host[:port]` of the URL must be one of the accepted endpoints.
fn check_endpoint(url: &Url, endpoints: &[String]) -> Result<(), SubjectError> {
    let origin = url.origin().ascii_serialization();
    let accepted = endpoints.iter().any(|endpoint| {
        Url::parse(endpoint).is_ok_and(|e| e.origin().ascii_serialization() == origin)
    });
    if accepted {
        Ok(())
    } else {
        Err(SubjectError::Endpoint(origin))
    }
}

/// The target header must name the audience, optionally with an `https:` prefix.
fn check_target(target: Option<&str>, audience: &str) -> Result<(), SubjectError> {
    let target = target.ok_or(SubjectError::TargetMissing)?;
    if target.strip_prefix("https:").unwrap_or(target) == audience {
        Ok(())
    } else {
        Err(SubjectError::TargetMismatch)
    }
}

/// Parses `20200811T065522Z`.
pub fn parse_amz_date(value: &str) -> Option<Timestamp> {
    let b = value.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i16> {
        let s = value.get(range)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let dt = jiff::civil::DateTime::new(
        digits(0..4)?,
        i8::try_from(digits(4..6)?).ok()?,
        i8::try_from(digits(6..8)?).ok()?,
        i8::try_from(digits(9..11)?).ok()?,
        i8::try_from(digits(11..13)?).ok()?,
        i8::try_from(digits(13..15)?).ok()?,
        0,
    )
    .ok()?;
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

    const AUDIENCE: &str = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/aws-pool/providers/aws-prov";
    const URL: &str =
        "https://sts.us-east-2.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15";
    const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKID/20200811/us-east-2/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=9e722e5b7bfa163447e2a14df118b45ebd283c5aea72019bdf921d6e7dc01a9a";

    fn token(url: &str, method: &str, headers: &[(&str, &str)]) -> String {
        let headers: Vec<serde_json::Value> = headers
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
            .collect();
        let json = serde_json::json!({"url": url, "method": method, "headers": headers});
        utf8_percent_encode(&json.to_string(), NON_ALPHANUMERIC).to_string()
    }

    fn good_headers() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Authorization", AUTH),
            ("host", "sts.us-east-2.amazonaws.com"),
            ("x-amz-date", "20200811T065522Z"),
            ("x-goog-cloud-target-resource", AUDIENCE),
        ]
    }

    fn expect(now: &str) -> (Vec<String>, Timestamp) {
        (
            vec!["https://sts.us-east-2.amazonaws.com".to_owned()],
            now.parse().unwrap(),
        )
    }

    fn run(
        token: &str,
        now: &str,
        require_signed_target: bool,
    ) -> Result<CheckedRequest, SubjectError> {
        let (endpoints, now) = expect(now);
        check(
            token,
            &Expectations {
                audience: AUDIENCE,
                endpoints: &endpoints,
                require_signed_target,
                now,
            },
        )
    }

    #[test]
    fn accepts_a_well_formed_request() {
        let checked = run(
            &token(URL, "POST", &good_headers()),
            "2020-08-11T07:05:00Z",
            false,
        )
        .unwrap();
        assert_eq!(checked.authorization.access_key_id, "AKID");
        assert_eq!(checked.signed_at, "2020-08-11T06:55:22Z".parse().unwrap());
    }

    #[test]
    fn header_keys_are_case_insensitive_and_unordered() {
        let mut headers = good_headers();
        headers.reverse();
        headers[0].0 = "X-Goog-Cloud-Target-Resource";
        headers[1].0 = "X-Amz-Date";
        assert!(run(&token(URL, "POST", &headers), "2020-08-11T06:55:22Z", false).is_ok());
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "not json", "%7B%7D", "%FF%FE", "%7B%22url%22%3A1%7D"] {
            let err = run(bad, "2020-08-11T06:55:22Z", false).unwrap_err();
            assert!(
                matches!(err, SubjectError::InvalidFormat(_)),
                "{bad}: {err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with("AWS request has invalid format.")
            );
        }
    }

    #[test]
    fn refuses_other_methods_queries_and_endpoints() {
        let now = "2020-08-11T06:55:22Z";
        assert!(matches!(
            run(&token(URL, "GET", &good_headers()), now, false),
            Err(SubjectError::Method(_))
        ));
        for query in [
            "https://sts.us-east-2.amazonaws.com?Action=GetCallerIdentity",
            "https://sts.us-east-2.amazonaws.com?Action=AssumeRole&Version=2011-06-15",
            "https://sts.us-east-2.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15&X=1",
        ] {
            assert_eq!(
                run(&token(query, "POST", &good_headers()), now, false).unwrap_err(),
                SubjectError::Query
            );
        }
        let mut headers = good_headers();
        headers[1].1 = "evil.example.com";
        assert_eq!(
            run(
                &token(
                    "https://evil.example.com?Action=GetCallerIdentity&Version=2011-06-15",
                    "POST",
                    &headers
                ),
                now,
                false
            )
            .unwrap_err(),
            SubjectError::Endpoint("https://evil.example.com".to_owned())
        );
    }

    #[test]
    fn refuses_a_host_header_that_is_not_the_url() {
        let mut headers = good_headers();
        headers[1].1 = "sts.us-west-2.amazonaws.com";
        assert!(matches!(
            run(&token(URL, "POST", &headers), "2020-08-11T06:55:22Z", false),
            Err(SubjectError::InvalidFormat(_))
        ));
    }

    #[test]
    fn checks_the_target_resource() {
        let now = "2020-08-11T06:55:22Z";
        let mut headers = good_headers();
        headers.pop();
        assert_eq!(
            run(&token(URL, "POST", &headers), now, false).unwrap_err(),
            SubjectError::TargetMissing
        );
        let https = format!("https:{AUDIENCE}");
        headers.push(("x-goog-cloud-target-resource", &https));
        assert!(run(&token(URL, "POST", &headers), now, false).is_ok());
        headers.pop();
        headers.push(("x-goog-cloud-target-resource", "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/aws-pool/providers/other"));
        assert_eq!(
            run(&token(URL, "POST", &headers), now, false).unwrap_err(),
            SubjectError::TargetMismatch
        );
        // Signed only host and x-amz-date: fine unless the config requires the target signed.
        assert_eq!(
            run(&token(URL, "POST", &good_headers()), now, true).unwrap_err(),
            SubjectError::TargetNotSigned
        );
    }

    #[test]
    fn refuses_repeated_headers() {
        let mut headers = good_headers();
        headers.push(("X-Amz-Date", "20200811T065522Z"));
        assert!(matches!(
            run(&token(URL, "POST", &headers), "2020-08-11T06:55:22Z", false),
            Err(SubjectError::InvalidFormat(_))
        ));
    }

    #[test]
    fn enforces_the_time_window_both_ways() {
        let t = token(URL, "POST", &good_headers());
        assert!(run(&t, "2020-08-11T07:10:22Z", false).is_ok());
        assert!(run(&t, "2020-08-11T06:40:22Z", false).is_ok());
        for now in ["2020-08-11T07:10:23Z", "2020-08-11T06:40:21Z"] {
            let err = run(&t, now, false).unwrap_err();
            assert!(matches!(err, SubjectError::OutsideWindow { .. }), "{now}");
            assert!(err.to_string().contains("expired or not yet valid"));
        }
    }

    #[test]
    fn parses_amz_dates() {
        assert_eq!(
            parse_amz_date("20200811T065522Z"),
            Some("2020-08-11T06:55:22Z".parse().unwrap())
        );
        for bad in [
            "20200811T065522",
            "2020-08-11T06:55:22Z",
            "20201311T065522Z",
            "2020081xT065522Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }
}

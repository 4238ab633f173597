//! The AWS subject token Google STS accepts for Workload Identity Federation: a SigV4-signed
//! `POST sts.REGION.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15` with no body,
//! serialized as JSON `{"url","method","headers":[{"key","value"},…]}` and URL-encoded.
//!
//! Pure: credentials, region, audience and time in, token out. No I/O, no clock. The
//! signature comes from [`crate::sigv4`].
//!
//! The `x-goog-cloud-target-resource` header (the provider's full resource name) is signed, as
//! Google's STS API recommends and its Go and Java libraries do, so a token minted for one
//! provider cannot be replayed against another.

use jiff::Timestamp;
use serde::Serialize;

use crate::encode::{Escape, percent_encode};
use crate::names::is_region;
use crate::sensitive::Sensitive;
use crate::sigv4::{self, AwsCredentials};

/// Header carrying the audience inside the signed request.
pub const TARGET_RESOURCE_HEADER: &str = "x-goog-cloud-target-resource";

/// `subject_token_type` of an AWS subject token.
pub const TOKEN_TYPE: &str = "urn:ietf:params:aws:token-type:aws4_request";

const QUERY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// What to sign, apart from the credentials.
#[derive(Clone, Debug)]
pub struct SubjectTokenRequest<'a> {
    /// AWS region whose STS endpoint the signature is scoped to.
    pub region: &'a str,
    /// The Workload Identity provider's full resource name; empty leaves the header out.
    pub audience: &'a str,
    /// STS endpoint (scheme and host, optional path); `None` for the regional default.
    pub endpoint: Option<&'a str>,
    /// Signing time; Google accepts tokens signed within the last 15 minutes.
    pub time: Timestamp,
}

#[derive(Debug, thiserror::Error)]
pub enum SubjectTokenError {
    #[error("aws.region {0:?} is not an AWS region code such as us-east-1")]
    InvalidRegion(String),
    #[error("aws.stsEndpoint {0:?} is not an http(s) URL with a host")]
    InvalidEndpoint(String),
}

/// The regional STS URL Google forwards the signed request to.
pub fn regional_url(region: &str) -> String {
    // China regions live under their own top-level domain.
    let domain = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://sts.{region}.{domain}?{QUERY}")
}

fn endpoint_url(endpoint: &str) -> Result<String, SubjectTokenError> {
    let invalid = || SubjectTokenError::InvalidEndpoint(endpoint.to_owned());
    let parsed = url::Url::parse(endpoint).map_err(|_| invalid())?;
    if !matches!(parsed.scheme(), "https" | "http")
        || parsed.host_str().is_none()
        || parsed.query().is_some()
    {
        return Err(invalid());
    }
    Ok(format!("{}?{QUERY}", endpoint))
}

#[derive(Serialize)]
struct SignedRequest<'a> {
    url: &'a str,
    method: &'static str,
    headers: Vec<KeyValue<'a>>,
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'a str,
    value: &'a str,
}

/// Builds the URL-encoded subject token for `credentials`.
pub fn build(
    credentials: &AwsCredentials,
    req: &SubjectTokenRequest<'_>,
) -> Result<Sensitive, SubjectTokenError> {
    let json = signed_request_json(credentials, req)?;
    Ok(Sensitive::new(percent_encode(
        json.expose(),
        Escape::Unreserved,
    )))
}

/// The signed request as JSON, before URL encoding.
pub fn signed_request_json(
    credentials: &AwsCredentials,
    req: &SubjectTokenRequest<'_>,
) -> Result<Sensitive, SubjectTokenError> {
    if !is_region(req.region) {
        return Err(SubjectTokenError::InvalidRegion(req.region.to_owned()));
    }
    let url = match req.endpoint {
        Some(endpoint) => endpoint_url(endpoint)?,
        None => regional_url(req.region),
    };
    let parsed =
        url::Url::parse(&url).map_err(|_| SubjectTokenError::InvalidEndpoint(url.clone()))?;
    let host = parsed
        .host_str()
        .map(|h| match parsed.port() {
            Some(port) => format!("{h}:{port}"),
            None => h.to_owned(),
        })
        .ok_or_else(|| SubjectTokenError::InvalidEndpoint(url.clone()))?;

    let mut unsigned: Vec<(&str, &str)> = vec![("host", &host)];
    if !req.audience.is_empty() {
        unsigned.push((TARGET_RESOURCE_HEADER, req.audience));
    }
    let added = sigv4::sign(
        credentials,
        &sigv4::Request {
            path: parsed.path(),
            query: parsed.query().unwrap_or_default(),
            headers: &unsigned,
            region: req.region,
            service: "sts",
            time: req.time,
        },
    );
    let mut headers: Vec<(String, String)> = unsigned
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (name, value) in added {
        // Google's libraries spell it "Authorization"; the other names stay lowercase.
        let key = if name == "authorization" {
            "Authorization"
        } else {
            name
        };
        headers.push((key.to_owned(), value));
    }
    // Sorted by key, byte-wise, as Google's libraries send them.
    headers.sort();
    let body = SignedRequest {
        url: &url,
        method: "POST",
        headers: headers
            .iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect(),
    };
    // A struct of strings always serialises.
    Ok(Sensitive::new(
        serde_json::to_string(&body).expect("a struct of strings serialises"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(key: &str, secret: &str, token: Option<String>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: key.to_owned(),
            secret_access_key: Sensitive::new(secret),
            session_token: token.map(Sensitive::new),
        }
    }

    fn at(rfc3339: &str) -> Timestamp {
        rfc3339.parse().unwrap()
    }

    fn header<'a>(json: &'a serde_json::Value, key: &str) -> Option<&'a str> {
        json["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["key"] == key)
            .map(|h| h["value"].as_str().unwrap())
    }

    fn signed(creds: &AwsCredentials, audience: &str) -> serde_json::Value {
        let req = SubjectTokenRequest {
            region: "us-east-2",
            audience,
            endpoint: None,
            time: at("2020-08-11T06:55:22Z"),
        };
        serde_json::from_str(signed_request_json(creds, &req).unwrap().expose()).unwrap()
    }

    // Public vectors from Google's auth libraries (DESIGN.md §4): only host and x-amz-date signed.
    #[test]
    fn public_vector_permanent_credentials() {
        let creds = creds(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
        );
        let json = signed(&creds, "");
        assert_eq!(
            header(&json, "Authorization").unwrap(),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20200811/us-east-2/sts/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=9e722e5b7bfa163447e2a14df118b45ebd283c5aea72019bdf921d6e7dc01a9a"
        );
        assert_eq!(header(&json, "x-amz-date"), Some("20200811T065522Z"));
        assert_eq!(header(&json, "host"), Some("sts.us-east-2.amazonaws.com"));
        assert_eq!(
            json["url"],
            "https://sts.us-east-2.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
        );
        assert_eq!(json["method"], "POST");
    }

    #[test]
    fn public_vector_second_key() {
        let creds = creds(
            "ASIARD4OQDT6A77FR3CL",
            "Y8AfSaucF37G4PpvfguKZ3/l7Id4uocLXxX0+VTx",
            None,
        );
        let json = signed(&creds, "");
        assert!(
            header(&json, "Authorization").unwrap().ends_with(
                "Signature=d095ba304919cd0d5570ba8a3787884ee78b860f268ed040ba23831d55536d56"
            ),
            "{json}"
        );
    }

    #[test]
    fn target_resource_and_session_token_are_signed_and_sorted() {
        let creds = creds("ASIAEXAMPLE", "secret", Some("session-token".into()));
        let audience =
            "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x";
        let json = signed(&creds, audience);
        let auth = header(&json, "Authorization").unwrap();
        assert!(
            auth.contains(
                "SignedHeaders=host;x-amz-date;x-amz-security-token;x-goog-cloud-target-resource,"
            ),
            "{auth}"
        );
        assert_eq!(header(&json, TARGET_RESOURCE_HEADER), Some(audience));
        assert_eq!(header(&json, "x-amz-security-token"), Some("session-token"));
        let keys: Vec<&str> = json["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "Authorization",
                "host",
                "x-amz-date",
                "x-amz-security-token",
                TARGET_RESOURCE_HEADER
            ]
        );
    }

    #[test]
    fn url_encoding_round_trips() {
        let creds = creds("AKIDEXAMPLE", "secret", None);
        let req = SubjectTokenRequest {
            region: "eu-west-1",
            audience: "//a/b",
            endpoint: None,
            time: at("2024-01-01T00:00:00Z"),
        };
        let token = build(&creds, &req).unwrap();
        assert!(!token.expose().contains(['{', '"', ' ', '/', ':']));
        let decoded = percent_encoding::percent_decode_str(token.expose())
            .decode_utf8()
            .unwrap();
        assert_eq!(decoded, signed_request_json(&creds, &req).unwrap().expose());
    }

    #[test]
    fn endpoint_override_and_china_regions() {
        assert_eq!(
            regional_url("cn-north-1"),
            "https://sts.cn-north-1.amazonaws.com.cn?Action=GetCallerIdentity&Version=2011-06-15"
        );
        let creds = creds("AKIDEXAMPLE", "secret", None);
        let req = SubjectTokenRequest {
            region: "us-east-1",
            audience: "",
            endpoint: Some("http://127.0.0.1:5000"),
            time: at("2024-01-01T00:00:00Z"),
        };
        let json: serde_json::Value =
            serde_json::from_str(signed_request_json(&creds, &req).unwrap().expose()).unwrap();
        assert_eq!(
            json["url"],
            "http://127.0.0.1:5000?Action=GetCallerIdentity&Version=2011-06-15"
        );
        assert_eq!(header(&json, "host"), Some("127.0.0.1:5000"));
    }

    #[test]
    fn bad_region_and_endpoint_name_the_field() {
        let creds = creds("AKIDEXAMPLE", "secret", None);
        let mut req = SubjectTokenRequest {
            region: "Tokyo",
            audience: "",
            endpoint: None,
            time: Timestamp::UNIX_EPOCH,
        };
        assert!(
            build(&creds, &req)
                .unwrap_err()
                .to_string()
                .starts_with("aws.region \"Tokyo\"")
        );
        req.region = "us-east-1";
        req.endpoint = Some("sts.amazonaws.com");
        assert!(
            build(&creds, &req)
                .unwrap_err()
                .to_string()
                .starts_with("aws.stsEndpoint")
        );
    }
}

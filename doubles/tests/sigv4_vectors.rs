//! The doubles' own SigV4 verifier against the public vectors of Google's auth libraries
//! (DESIGN.md §4) and against requests signed by botocore, an independent signer.

mod support;

use fedcred_doubles::sigv4::{self, SigV4Error, SignedRequest};
use support::{AUDIENCE, Signing, header, set_header};
use url::Url;

const VECTOR_URL: &str =
    "https://sts.us-east-2.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15";

fn vector_headers(key: &str, signature: &str) -> Vec<(String, String)> {
    vec![
        (
            "Authorization".to_owned(),
            format!(
                "AWS4-HMAC-SHA256 Credential={key}/20200811/us-east-2/sts/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature={signature}"
            ),
        ),
        ("host".to_owned(), "sts.us-east-2.amazonaws.com".to_owned()),
        ("x-amz-date".to_owned(), "20200811T065522Z".to_owned()),
    ]
}

fn verify(url: &str, headers: &[(String, String)], secret: &str) -> Result<(), SigV4Error> {
    let url = Url::parse(url).unwrap();
    sigv4::verify(
        &SignedRequest {
            method: "POST",
            url: &url,
            headers,
        },
        secret,
    )
}

/// Changes the last hex digit.
fn one_off(signature: &str) -> String {
    let mut s = signature.to_owned();
    let last = s.pop().unwrap();
    s.push(if last == '0' { '1' } else { '0' });
    s
}

const VECTORS: [(&str, &str, &str); 2] = [
    (
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "9e722e5b7bfa163447e2a14df118b45ebd283c5aea72019bdf921d6e7dc01a9a",
    ),
    (
        "ASIARD4OQDT6A77FR3CL",
        "Y8AfSaucF37G4PpvfguKZ3/l7Id4uocLXxX0+VTx",
        "d095ba304919cd0d5570ba8a3787884ee78b860f268ed040ba23831d55536d56",
    ),
];

#[test]
fn public_vectors_verify() {
    for (key, secret, signature) in VECTORS {
        assert_eq!(
            verify(VECTOR_URL, &vector_headers(key, signature), secret),
            Ok(()),
            "{key}"
        );
    }
}

#[test]
fn a_one_character_change_anywhere_fails() {
    for (key, secret, signature) in VECTORS {
        let mismatch = Err(SigV4Error::SignatureMismatch);
        assert_eq!(
            verify(
                VECTOR_URL,
                &vector_headers(key, &one_off(signature)),
                secret
            ),
            mismatch,
            "signature of {key}"
        );
        assert_eq!(
            verify(
                VECTOR_URL,
                &vector_headers(key, signature),
                &secret.replace('K', "L")
            ),
            mismatch,
            "secret of {key}"
        );
        let mut headers = vector_headers(key, signature);
        headers[2].1 = "20200811T065523Z".to_owned();
        assert_eq!(
            verify(VECTOR_URL, &headers, secret),
            mismatch,
            "date of {key}"
        );
        assert_eq!(
            verify(
                &VECTOR_URL.replace("us-east-2", "us-east-1"),
                &vector_headers(key, signature)
                    .into_iter()
                    .filter(|(k, _)| k != "host")
                    .collect::<Vec<_>>(),
                secret
            ),
            mismatch,
            "host of {key}"
        );
        assert_eq!(
            verify(
                &VECTOR_URL.replace("2011-06-15", "2011-06-16"),
                &vector_headers(key, signature),
                secret
            ),
            mismatch,
            "query of {key}"
        );
    }
}

#[test]
fn the_host_header_may_come_from_the_url() {
    let (key, secret, signature) = VECTORS[0];
    let headers: Vec<(String, String)> = vector_headers(key, signature)
        .into_iter()
        .filter(|(k, _)| k != "host")
        .collect();
    assert_eq!(verify(VECTOR_URL, &headers, secret), Ok(()));
}

#[test]
fn a_signed_header_that_is_missing_fails() {
    let (key, secret, _) = VECTORS[0];
    let mut headers = vector_headers(key, &"0".repeat(64));
    headers[0].1 = headers[0].1.replace(
        "host;x-amz-date",
        "host;x-amz-date;x-goog-cloud-target-resource",
    );
    assert_eq!(
        verify(VECTOR_URL, &headers, secret),
        Err(SigV4Error::MissingSignedHeader(
            "x-goog-cloud-target-resource".to_owned()
        ))
    );
}

/// botocore signs the target resource and the session token too: the verifier agrees with it,
/// and refuses the same request once the signed target header is altered.
#[test]
fn botocore_signatures_with_target_and_session_token_verify() {
    let (key, secret, _) = VECTORS[1];
    for include_host in [true, false] {
        let signing = Signing {
            url: VECTOR_URL.to_owned(),
            region: "us-east-2".to_owned(),
            time: Some("2020-08-11T06:55:22Z".to_owned()),
            include_host,
            ..Signing::new("unused", key, secret)
                .session_token("IQoJb3JpZ2luX2VjEIz//////////wEaCXVzLWVhc3QtMiJGMEQCIH7MHd")
        };
        let token = signing.botocore();
        let authorization = header(&token, "authorization").unwrap();
        assert!(
            authorization.contains(
                "SignedHeaders=host;x-amz-date;x-amz-security-token;x-goog-cloud-target-resource"
            ),
            "{authorization}"
        );
        let headers = |token: &serde_json::Value| -> Vec<(String, String)> {
            token["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h["key"].as_str().unwrap().to_owned(),
                        h["value"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        };
        assert_eq!(verify(VECTOR_URL, &headers(&token), secret), Ok(()));

        let mut altered = token.clone();
        set_header(
            &mut altered,
            "x-goog-cloud-target-resource",
            &AUDIENCE.replace("aws-prov", "evil-prov"),
        );
        assert_eq!(
            verify(VECTOR_URL, &headers(&altered), secret),
            Err(SigV4Error::SignatureMismatch)
        );
        let mut altered = token.clone();
        set_header(&mut altered, "x-amz-security-token", "another-session");
        assert_eq!(
            verify(VECTOR_URL, &headers(&altered), secret),
            Err(SigV4Error::SignatureMismatch)
        );
    }
}

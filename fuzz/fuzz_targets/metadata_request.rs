//! The metadata emulator's request handling (`protocol::route`, then `protocol::answer` over a
//! Secret holding a live token). Input: method, URI and headers. Checks: the token leaves only
//! in the 200 answer to `GET|HEAD …/service-accounts/{default|email}/token` carrying exactly
//! `Metadata-Flavor: Google` and no forwarding header; every path but `/` needs the header;
//! answers that do not need the Secret are the same without it.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use fedcred_core::metadata::protocol::{self, AccountItem, Refusal, Resource};
use fedcred_core::metadata::view::SecretView;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "ya29.fuzz-token-value-7f3a";
const EMAIL: &str = "orders-api@acme-shop.iam.gserviceaccount.com";

const PATHS: &[&str] = &[
    "/computeMetadata/v1/instance/service-accounts/default/token",
    "/computeMetadata/v1/instance/service-accounts/default/",
    "/computeMetadata/v1/instance/service-accounts/orders-api@acme-shop.iam.gserviceaccount.com/token",
    "/computeMetadata/v1/?recursive=true",
    "/computeMetadata/v1/project/project-id",
    "/",
];
const HEADER_NAMES: &[&str] = &[
    "metadata-flavor",
    "x-forwarded-for",
    "forwarded",
    "host",
    "x-real-ip",
];

#[derive(Arbitrary, Debug)]
enum Part {
    Known(u8),
    Any(String),
}

impl Part {
    fn text(&self, known: &[&str]) -> String {
        match self {
            Part::Known(i) => known[*i as usize % known.len()].to_owned(),
            Part::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    head: bool,
    method: Option<String>,
    path: Part,
    suffix: String,
    headers: Vec<(Part, Vec<u8>)>,
}

fn view() -> SecretView {
    let files: BTreeMap<String, String> = [
        ("access_token", TOKEN),
        ("expiry", "2100-01-01T00:00:00Z"),
        ("service_account", EMAIL),
        ("project_id", "acme-shop"),
        ("scopes", "https://www.googleapis.com/auth/cloud-platform"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    SecretView::from_files(&files)
}

fuzz_target!(|input: Input| {
    let method = match &input.method {
        None if input.head => Method::HEAD,
        None => Method::GET,
        Some(m) => match Method::from_bytes(m.as_bytes()) {
            Ok(m) => m,
            Err(_) => return,
        },
    };
    let Ok(uri) = format!("{}{}", input.path.text(PATHS), input.suffix).parse::<Uri>() else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.text(HEADER_NAMES).as_bytes()),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    let view = view();

    let routed = protocol::route(&method, &uri, &headers);
    let reply = match &routed {
        Ok(served) => protocol::answer(served, &view, now),
        Err(refusal) => protocol::refuse(*refusal),
    };
    let flavored = headers
        .get_all("metadata-flavor")
        .iter()
        .next()
        .is_some_and(|v| v.as_bytes() == b"Google");
    let proxied = headers.contains_key("x-forwarded-for") || headers.contains_key("forwarded");

    match &routed {
        Err(refusal) => {
            assert!(
                reply.status.is_client_error(),
                "{refusal:?} -> {}",
                reply.status
            );
            if proxied && matches!(method, Method::GET | Method::HEAD) {
                assert_eq!(*refusal, Refusal::Proxied);
            }
        }
        Ok(served) => {
            assert!(
                method == Method::GET || method == Method::HEAD,
                "{method} served"
            );
            assert!(!proxied, "a proxied request was served");
            if served.resource != Resource::Root {
                assert!(flavored, "{uri} served without Metadata-Flavor: Google");
            }
            if !served.needs_secret() {
                let blind = protocol::answer(served, &SecretView::default(), now);
                assert_eq!(blind, reply, "{uri} depends on the Secret after all");
            }
        }
    }

    let token_request = matches!(
        &routed,
        Ok(served) if matches!(&served.resource, Resource::Account(_, AccountItem::Token))
    );
    if reply.body.contains(TOKEN) {
        assert!(
            token_request,
            "the token answers {method} {uri}: {}",
            reply.body
        );
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.content_type, protocol::JSON);
        let body: serde_json::Value = serde_json::from_str(&reply.body).expect("token JSON");
        assert_eq!(body["access_token"], TOKEN);
        assert!(body["expires_in"].as_i64().is_some_and(|s| s > 0));
    } else if token_request {
        // Only an account this pod does not have is not answered.
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{uri}: {}", reply.body);
    }
});

//! Google STS and IAM Credentials error answers through `classify_sts` and `classify_iam`.
//! Input: a status code and a body. Checks: every answer maps to a reason with a stable label
//! and an actionable message naming the status; a body that is not a Google error is quoted at
//! most 200 characters and on one line, so an unexpected page (or a token an upstream echoed)
//! cannot flood a status condition; text past those 200 characters never appears.
#![no_main]

use arbitrary::Arbitrary;
use fedcred_core::google::{classify_iam, classify_sts};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    status: u16,
    body: String,
    /// Appended past the quoted part of a non-JSON body; must never be shown.
    tail: String,
}

const MARK: &str = "ya29.FUZZ-TOKEN-";

fuzz_target!(|input: Input| {
    let service_account = "app@acme-shop.iam.gserviceaccount.com";
    for body in [input.body.clone(), format!("{{\"error\": {}}}", input.body)] {
        let sts = classify_sts(input.status, &body);
        let iam = classify_iam(input.status, &body, service_account);
        for e in [&sts, &iam] {
            assert!(!e.reason.as_str().is_empty());
            assert!(
                e.message.contains(&format!("HTTP {}", input.status)),
                "{}",
                e.message
            );
        }
        assert!(iam.message.contains(service_account));
    }

    // A body that is not JSON at all: only its first 200 characters, whitespace folded.
    let padded: String = format!("<html>{}", input.body)
        .chars()
        .filter(|c| !c.is_whitespace())
        .chain(std::iter::repeat('x'))
        .take(200)
        .collect();
    let body = format!("{padded}{MARK}{}", input.tail);
    for message in [
        classify_sts(input.status, &body).message,
        classify_iam(input.status, &body, service_account).message,
    ] {
        assert!(
            !message.contains(MARK),
            "text past the snippet is shown: {message}"
        );
        assert!(!message.contains('\n'), "a multi-line message: {message:?}");
    }
});

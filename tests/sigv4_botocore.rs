//! fedcred's subject-token signatures recomputed by an independent signer: botocore's
//! `SigV4Auth`, from PyPI, over the same requests (session tokens, several regions, the
//! target-resource header signed).

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use fedcred_core::sensitive::Sensitive;
use fedcred_core::sigv4::AwsCredentials;
use fedcred_core::subject_token::{SubjectTokenRequest, regional_url, signed_request_json};
use serde_json::{Value, json};

struct Vector {
    key: &'static str,
    secret: &'static str,
    token: Option<&'static str>,
    region: &'static str,
    time: &'static str,
    audience: &'static str,
}

const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop";

fn vectors() -> Vec<Vector> {
    vec![
        Vector {
            key: "AKIAIOSFODNN7EXAMPLE",
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            token: None,
            region: "us-east-2",
            time: "2020-08-11T06:55:22Z",
            audience: "",
        },
        Vector {
            key: "AKIAIOSFODNN7EXAMPLE",
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            token: None,
            region: "us-east-2",
            time: "2020-08-11T06:55:22Z",
            audience: AUDIENCE,
        },
        Vector {
            key: "ASIARD4OQDT6A77FR3CL",
            secret: "Y8AfSaucF37G4PpvfguKZ3/l7Id4uocLXxX0+VTx",
            token: Some("IQoJb3JpZ2luX2VjEIz//////////wEaCXVzLWVhc3QtMSJHMEUCIQDr+sessiontoken=="),
            region: "us-east-1",
            time: "2026-11-25T15:04:05Z",
            audience: AUDIENCE,
        },
        Vector {
            key: "ASIAQEXAMPLEKEY12345",
            secret: "abc/def+ghi=jkl",
            token: Some("short-token"),
            region: "ap-northeast-1",
            time: "2026-01-01T00:00:00Z",
            audience: AUDIENCE,
        },
        Vector {
            key: "ASIAQEXAMPLEKEY12345",
            secret: "abc/def+ghi=jkl",
            token: Some("short-token"),
            region: "eu-west-1",
            time: "2026-12-31T23:59:59Z",
            audience: "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p-1/providers/x-2",
        },
        Vector {
            key: "AKIAGOVEXAMPLE000000",
            secret: "gov/secret",
            token: None,
            region: "us-gov-west-1",
            time: "2025-06-30T12:00:00Z",
            audience: AUDIENCE,
        },
        Vector {
            key: "AKIACNEXAMPLE0000000",
            secret: "cn/secret",
            token: Some("cn-token"),
            region: "cn-north-1",
            time: "2025-06-30T12:00:00Z",
            audience: AUDIENCE,
        },
    ]
}

fn python() -> std::path::PathBuf {
    let venv = std::env::var_os("FEDCRED_TEST_VENV")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cache/fedcred/venv"))
        })
        .expect("FEDCRED_TEST_VENV or HOME is set");
    venv.join("bin/python")
}

#[test]
fn botocore_computes_the_same_signatures() {
    let vectors = vectors();
    let mut ours = Vec::new();
    let mut input = Vec::new();
    for v in &vectors {
        let creds = AwsCredentials {
            access_key_id: v.key.to_owned(),
            secret_access_key: Sensitive::new(v.secret),
            session_token: v.token.map(Sensitive::new),
        };
        let time: jiff::Timestamp = v.time.parse().unwrap();
        let req = SubjectTokenRequest {
            region: v.region,
            audience: v.audience,
            endpoint: None,
            time,
        };
        let signed: Value =
            serde_json::from_str(signed_request_json(&creds, &req).unwrap().expose()).unwrap();
        let auth = signed["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["key"] == "Authorization")
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(signed["url"], regional_url(v.region));
        ours.push(auth);
        input.push(
            json!({"key": v.key, "secret": v.secret, "token": v.token, "region": v.region,
            "url": regional_url(v.region), "time": v.time, "audience": v.audience}),
        );
    }
    let script = support::repo_root().join("tests/python/botocore_sign.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test venv's python runs (hack/install-tools.sh creates it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(input).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "botocore signer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs.len(), ours.len());
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(
            a, b,
            "vector {i} ({} {}) differs",
            vectors[i].region, vectors[i].time
        );
    }
    // The first vector is DESIGN.md's public one; botocore agrees with the published value.
    assert!(
        theirs[0].ends_with(
            "Signature=9e722e5b7bfa163447e2a14df118b45ebd283c5aea72019bdf921d6e7dc01a9a"
        )
    );
    // With the audience, the target header is among the signed ones.
    assert!(theirs[1].contains("SignedHeaders=host;x-amz-date;x-goog-cloud-target-resource,"));
    assert!(theirs[2].contains(
        "SignedHeaders=host;x-amz-date;x-amz-security-token;x-goog-cloud-target-resource,"
    ));
}

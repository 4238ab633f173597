//! ServiceAccount tokens are credentials: the STS double lists every one presented to it in
//! the file the secrecy scan reads (`FEDCRED_ISSUED_TOKENS`), next to the tokens it issues, and
//! `hack/secrecy-scan.sh` then finds one left in a log.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use fedcred_doubles::oidc::TestKey;
use serde_json::json;

const AUDIENCE: &str = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/k8s-pool/providers/cluster";
const ISSUER: &str = "https://issuer.example";

#[tokio::test]
async fn a_presented_service_account_token_is_listed_and_the_scan_finds_it() {
    let dir = std::env::temp_dir().join(format!("fedcred-doubles-received-{}", std::process::id()));
    let evidence = dir.join("evidence");
    std::fs::create_dir_all(&evidence).unwrap();
    let key = TestKey::generate("k1");
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        json!({"providers": [{"audience": AUDIENCE,
                              "oidc": {"issuer_uri": ISSUER, "jwks_json": key.jwks().to_string()}}]})
        .to_string(),
    )
    .unwrap();
    let listed = dir.join("issued-tokens");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fedcred-doubles"))
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("FEDCRED_ISSUED_TOKENS", &listed)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().to_owned();

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = key.sign(&json!({
        "iss": ISSUER, "aud": [AUDIENCE], "sub": "system:serviceaccount:shop:orders-api",
        "iat": now, "nbf": now, "exp": now + 600,
        "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "orders-api"}}
    }));
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair(
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        )
        .append_pair(
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        )
        .append_pair("audience", AUDIENCE)
        .append_pair("scope", "https://www.googleapis.com/auth/cloud-platform")
        .append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")
        .append_pair("subject_token", &token)
        .finish();
    let answer = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{base}/v1/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let recorded = std::fs::read_to_string(&listed).unwrap();
    let lines: Vec<&str> = recorded.lines().collect();
    assert!(
        lines.contains(&token.as_str()),
        "the presented token is listed"
    );
    assert!(
        lines.contains(&answer["access_token"].as_str().unwrap()),
        "the issued token is listed"
    );

    let scan = || {
        Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../hack/secrecy-scan.sh"
        ))
        .arg(&listed)
        .arg(&evidence)
        .stdin(Stdio::null())
        .output()
        .expect("hack/secrecy-scan.sh runs")
    };
    std::fs::write(evidence.join("controller.log"), "a clean line\n").unwrap();
    assert!(scan().status.success(), "a clean directory passes");
    std::fs::write(
        evidence.join("controller.log"),
        format!("{{\"message\":\"presented {token}\"}}\n"),
    )
    .unwrap();
    let dirty = scan();
    let said = String::from_utf8_lossy(&dirty.stderr).into_owned()
        + &String::from_utf8_lossy(&dirty.stdout);
    assert!(
        !dirty.status.success(),
        "the leaked ServiceAccount token is found: {said}"
    );
    assert!(said.contains("controller.log"), "{said}");
    assert!(
        !said.contains(&token),
        "the scan never prints the token: {said}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

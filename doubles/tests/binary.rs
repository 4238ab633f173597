//! The `fedcred-doubles` binary: reads a JSON config, prints its URL, serves, stops on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn serves_until_sigterm() {
    let dir = std::env::temp_dir().join(format!("fedcred-doubles-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        r#"{"providers":[{"audience":"//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/aws-pool/providers/aws-prov","condition":{"arn_contains":"assumed-role/demo/"}}],
            "bindings":[{"service_account":"app@p.iam.gserviceaccount.com","members":["principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/aws-pool/*"]}],
            "federated_lifetime":1800}"#,
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fedcred-doubles"))
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base:?}");

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let stats: serde_json::Value = client
        .get(format!("{base}/__stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["sts"]["calls"], 0);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn refuses_a_bad_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_fedcred-doubles"))
        .args(["--config", "/nonexistent/fedcred-doubles.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fedcred-doubles.json"));
}

//! Google's own Python client library (google-auth, AWS external account credentials) against
//! the doubles: what it sends (unsorted headers, target resource unsigned, its own SigV4 signer)
//! must pass, and what the doubles answer must satisfy it.

mod support;

use std::process::Command;

use fedcred_doubles::moto::{Moto, TemporaryCredentials};
use fedcred_doubles::{
    Binding, Condition, Config, GoogleDoubles, Principal, Provider, Target, role_member,
};
use serde_json::{Value, json};
use support::{AUDIENCE, CLOUD_PLATFORM};

const APP_SA: &str = "app@demo-project.iam.gserviceaccount.com";
const AWS_ROLE: &str = "arn:aws:sts::123456789012:assumed-role/fedcred-demo";

/// Runs the library on a blocking thread: the doubles serve on this test's runtime meanwhile.
async fn google_auth(
    creds: &TemporaryCredentials,
    google: &GoogleDoubles,
    impersonate: Option<&str>,
) -> Value {
    let spec = json!({
        "audience": AUDIENCE,
        "token_url": google.sts_url(),
        "impersonation_url": impersonate.map(|sa| format!(
            "{}/v1/projects/-/serviceAccounts/{sa}:generateAccessToken",
            google.iam_credentials_url()
        )),
        "scopes": [CLOUD_PLATFORM],
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/google_auth_exchange.py"
    );
    let mut command = Command::new(support::python());
    command
        .arg(script)
        .arg(spec.to_string())
        .env_clear()
        .env("AWS_ACCESS_KEY_ID", &creds.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &creds.secret_access_key)
        .env("AWS_SESSION_TOKEN", &creds.session_token)
        .env("AWS_REGION", "us-east-1")
        .env("NO_PROXY", "127.0.0.1");
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run python");
    assert!(
        out.status.success(),
        "google-auth script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("script prints JSON")
}

async fn world(condition: Condition) -> (Moto, GoogleDoubles, TemporaryCredentials) {
    let moto = Moto::start_async().await.expect("moto starts");
    // google-auth signs only for https://sts.REGION.amazonaws.com; the doubles send that call to
    // moto and take secrets from it.
    let config = Config {
        moto_url: Some(moto.url()),
        ..Config::default()
    }
    .route_aws_region("us-east-1", &moto.url())
    .provider(Provider::new(AUDIENCE).with_condition(condition))
    .binding(Binding::new(APP_SA, &[role_member(AUDIENCE, AWS_ROLE)]));
    let google = GoogleDoubles::start(config).await.expect("doubles start");
    let creds = moto
        .assume_role_with_web_identity("arn:aws:iam::123456789012:role/fedcred-demo", "ns-a.app")
        .await
        .expect("credentials");
    (moto, google, creds)
}

#[tokio::test]
async fn google_auth_exchanges_and_impersonates() {
    let (_moto, google, creds) = world(Condition::AwsRoleEquals(AWS_ROLE.into())).await;

    let federated = google_auth(&creds, &google, None).await;
    let token = federated["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{federated}"));
    let info = google
        .lookup(token)
        .expect("a live token of the STS double");
    assert!(
        matches!(info.principal, Principal::Federated { ref subject, .. } if *subject == creds.arn)
    );

    let impersonated = google_auth(&creds, &google, Some(APP_SA)).await;
    let token = impersonated["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{impersonated}"));
    assert_eq!(google.lookup(token).unwrap().email(), Some(APP_SA));
    assert_eq!(google.exchanges(Target::Sts), 2);
    assert_eq!(google.exchanges(Target::Iam), 1);
}

#[tokio::test]
async fn google_auth_reports_the_condition_rejection() {
    let (_moto, google, creds) = world(Condition::ArnContains("assumed-role/other/".into())).await;
    let answer = google_auth(&creds, &google, None).await;
    let error = answer["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(
        error.contains("unauthorized_client")
            && error.contains("The given credential is rejected by the attribute condition."),
        "{error}"
    );
}

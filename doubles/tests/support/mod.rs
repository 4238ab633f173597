//! Shared pieces of the doubles' integration tests: an independent signer (botocore, from the
//! project venv), and small clients for the STS and IAM Credentials endpoints.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::PathBuf;
use std::process::Command;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

pub const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/aws-pool/providers/aws-prov";
pub const OTHER_AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/aws-pool/providers/other-prov";
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const GCI_QUERY: &str = "?Action=GetCallerIdentity&Version=2011-06-15";

/// The venv's Python, which has botocore.
pub fn python() -> PathBuf {
    fedcred_doubles::moto::venv_dir()
        .expect("no Python venv with moto: set FEDCRED_TEST_VENV (hack/install-tools.sh makes one)")
        .join("bin/python")
}

/// What to sign.
#[derive(Clone, Debug)]
pub struct Signing {
    pub url: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
    /// RFC 3339 UTC; `None` for now.
    pub time: Option<String>,
    pub target: Option<String>,
    pub sign_target: bool,
    pub include_host: bool,
}

impl Signing {
    /// A request to `endpoint` for the given credentials, target header = [`AUDIENCE`], signed.
    pub fn new(endpoint: &str, access_key: &str, secret_key: &str) -> Signing {
        Signing {
            url: format!("{endpoint}{GCI_QUERY}"),
            region: "us-east-1".to_owned(),
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            session_token: None,
            time: None,
            target: Some(AUDIENCE.to_owned()),
            sign_target: true,
            include_host: true,
        }
    }

    pub fn session_token(mut self, token: &str) -> Signing {
        self.session_token = Some(token.to_owned());
        self
    }

    /// Signs with botocore's `SigV4Auth` and returns the subject token JSON.
    pub fn botocore(&self) -> Value {
        let spec = json!({
            "url": self.url,
            "region": self.region,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "session_token": self.session_token,
            "time": self.time,
            "target": self.target,
            "sign_target": self.sign_target,
            "include_host": self.include_host,
        });
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/botocore_sign.py"
        );
        let out = Command::new(python())
            .arg(script)
            .arg(spec.to_string())
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "botocore signer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("signer prints JSON")
    }
}

/// The value of header `key` (case-insensitive) in a subject token JSON.
pub fn header(token: &Value, key: &str) -> Option<String> {
    token["headers"]
        .as_array()?
        .iter()
        .find(|h| {
            h["key"]
                .as_str()
                .is_some_and(|k| k.eq_ignore_ascii_case(key))
        })
        .and_then(|h| h["value"].as_str().map(str::to_owned))
}

/// Replaces the value of header `key` (case-insensitive).
pub fn set_header(token: &mut Value, key: &str, value: &str) {
    for h in token["headers"].as_array_mut().expect("headers") {
        if h["key"]
            .as_str()
            .is_some_and(|k| k.eq_ignore_ascii_case(key))
        {
            h["value"] = json!(value);
        }
    }
}

/// URL-encodes the JSON the way Google's libraries do.
pub fn encode(token: &Value) -> String {
    utf8_percent_encode(&token.to_string(), NON_ALPHANUMERIC).to_string()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// The STS form body for `subject_token` (already URL-encoded) and `audience`.
pub fn sts_form(audience: &str, subject_token: &str, scope: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair(
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        )
        .append_pair("audience", audience)
        .append_pair("scope", scope)
        .append_pair(
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        )
        .append_pair("subject_token", subject_token)
        .append_pair(
            "subject_token_type",
            "urn:ietf:params:aws:token-type:aws4_request",
        )
        .finish()
}

/// POSTs a form to the STS double: (status, JSON body).
pub async fn post_form(sts_url: &str, form: String) -> (u16, Value) {
    let response = http()
        .post(sts_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("STS double answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("STS answers JSON"))
}

/// Exchanges `token` (subject token JSON) for `audience` with the cloud-platform scope.
pub async fn exchange(sts_url: &str, audience: &str, token: &Value) -> (u16, Value) {
    post_form(sts_url, sts_form(audience, &encode(token), CLOUD_PLATFORM)).await
}

/// Calls generateAccessToken: (status, Retry-After, JSON body).
pub async fn generate_access_token(
    base: &str,
    email: &str,
    bearer: &str,
    body: Value,
) -> (u16, Option<String>, Value) {
    let response = http()
        .post(format!(
            "{base}/v1/projects/-/serviceAccounts/{email}:generateAccessToken"
        ))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .expect("IAM double answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    (
        status,
        retry_after,
        response.json().await.expect("IAM answers JSON"),
    )
}

/// `GET /tokeninfo?access_token=…`: (status, JSON body).
pub async fn tokeninfo(tokeninfo_url: &str, token: &str) -> (u16, Value) {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("access_token", token)
        .finish();
    let response = http()
        .get(format!("{tokeninfo_url}?{query}"))
        .send()
        .await
        .expect("tokeninfo answers");
    let status = response.status().as_u16();
    (
        status,
        response.json().await.expect("tokeninfo answers JSON"),
    )
}

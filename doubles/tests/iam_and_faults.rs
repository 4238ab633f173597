//! The IAM Credentials double behind a real exchange (moto + botocore + the STS double), its
//! permission decisions, and injected faults on both endpoints.

mod support;

use std::time::{Duration, Instant, SystemTime};

use fedcred_doubles::moto::Moto;
use fedcred_doubles::{
    Binding, Config, Fault, GoogleDoubles, Provider, Target, principal_member, role_member,
    service_account_member,
};
use serde_json::{Value, json};
use support::{AUDIENCE, Signing, exchange, generate_access_token};

const APP_SA: &str = "app@demo-project.iam.gserviceaccount.com";
const DB_SA: &str = "db@demo-project.iam.gserviceaccount.com";
const AWS_ROLE: &str = "arn:aws:sts::123456789012:assumed-role/fedcred-demo";

/// Moto, the doubles, and a federated token (cloud-platform scope) for session `ns-a.app`.
async fn federated(bindings: Vec<Binding>) -> (Moto, GoogleDoubles, String, String) {
    let moto = Moto::start_async().await.expect("moto starts");
    let mut config = Config::with_moto(&moto.url()).provider(Provider::new(AUDIENCE));
    config.bindings = bindings;
    let google = GoogleDoubles::start(config).await.expect("doubles start");
    let creds = moto
        .assume_role_with_web_identity("arn:aws:iam::123456789012:role/fedcred-demo", "ns-a.app")
        .await
        .expect("credentials");
    let token = Signing::new(&moto.url(), &creds.access_key_id, &creds.secret_access_key)
        .session_token(&creds.session_token)
        .botocore();
    let (status, body) = exchange(&google.sts_url(), AUDIENCE, &token).await;
    assert_eq!(status, 200, "{body}");
    let access_token = body["access_token"].as_str().unwrap().to_owned();
    (moto, google, access_token, creds.arn)
}

fn assert_denied(answer: &(u16, Option<String>, Value)) {
    assert_eq!(answer.0, 403, "{}", answer.2);
    assert_eq!(answer.2["error"]["code"], 403);
    assert_eq!(answer.2["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(
        answer.2["error"]["message"],
        "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist)."
    );
}

#[tokio::test]
async fn impersonation_follows_the_bindings() {
    let (_moto, google, sts_token, arn) = federated(vec![Binding::new(
        APP_SA,
        &[role_member(AUDIENCE, AWS_ROLE)],
    )])
    .await;
    let base = google.iam_credentials_url();

    // Allowed: the token lives as long as asked, whole seconds, RFC 3339 UTC.
    let before = SystemTime::now();
    let (status, _, body) = generate_access_token(
        &base,
        APP_SA,
        &sts_token,
        json!({"scope": ["https://www.googleapis.com/auth/alloydb.login"], "lifetime": "600s"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let expire_time: jiff::Timestamp = body["expireTime"].as_str().unwrap().parse().unwrap();
    let text = body["expireTime"].as_str().unwrap();
    assert!(text.ends_with('Z') && !text.contains('.'), "{text}");
    assert_eq!(expire_time.subsec_nanosecond(), 0);
    let lifetime = SystemTime::from(expire_time)
        .duration_since(before)
        .unwrap()
        .as_secs();
    assert!((598..=601).contains(&lifetime), "{lifetime}");
    let sa_token = body["accessToken"].as_str().unwrap();
    assert!(sa_token.starts_with("ya29.fake-"));
    let info = google.lookup(sa_token).unwrap();
    assert_eq!(info.email(), Some(APP_SA));
    assert_eq!(
        info.scopes,
        ["https://www.googleapis.com/auth/alloydb.login"]
    );

    let (status, tokeninfo) = support::tokeninfo(&google.tokeninfo_url(), sa_token).await;
    assert_eq!(status, 200);
    assert_eq!(tokeninfo["email"], APP_SA);
    assert_eq!(tokeninfo["sub"], APP_SA);
    assert_eq!(
        tokeninfo["scope"],
        "https://www.googleapis.com/auth/alloydb.login"
    );
    assert_eq!(
        tokeninfo["exp"].as_u64().unwrap(),
        expire_time.as_second() as u64
    );

    // No binding on the DB account: 403, the same as for an account that does not exist.
    assert_denied(&generate_access_token(&base, DB_SA, &sts_token, json!({"scope": ["s"]})).await);
    assert_denied(
        &generate_access_token(
            &base,
            "ghost@demo-project.iam.gserviceaccount.com",
            &sts_token,
            json!({"scope": ["s"]}),
        )
        .await,
    );

    // A dead or forged bearer: 401.
    let (status, _, body) = generate_access_token(
        &base,
        APP_SA,
        "ya29.fake-not-issued-by-anyone",
        json!({"scope": ["s"]}),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}})
    );

    // Bad arguments: 400 INVALID_ARGUMENT.
    for bad in [
        json!({"scope": []}),
        json!({"scope": ["s"], "lifetime": "7200s"}),
        json!({"scope": ["s"], "lifetime": "soon"}),
        json!({"scope": ["s"], "unexpected": true}),
    ] {
        let (status, _, body) = generate_access_token(&base, APP_SA, &sts_token, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    }

    // Bindings change at runtime: the subject binding on the DB account, then through it a
    // delegation chain app → db.
    google.set_bindings(vec![
        Binding::new(APP_SA, &[principal_member(AUDIENCE, &arn)]),
        Binding::new(DB_SA, &[service_account_member(APP_SA)]),
    ]);
    assert_eq!(
        generate_access_token(&base, APP_SA, &sts_token, json!({"scope": ["s"]}))
            .await
            .0,
        200
    );
    assert_denied(&generate_access_token(&base, DB_SA, &sts_token, json!({"scope": ["s"]})).await);
    let (status, _, body) = generate_access_token(
        &base,
        DB_SA,
        &sts_token,
        json!({"scope": ["s"], "delegates": [format!("projects/-/serviceAccounts/{APP_SA}")]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        google
            .lookup(body["accessToken"].as_str().unwrap())
            .unwrap()
            .email(),
        Some(DB_SA)
    );

    // A token of app itself may impersonate db directly.
    let (_, _, body) = generate_access_token(
        &base,
        APP_SA,
        &sts_token,
        json!({"scope": [support::CLOUD_PLATFORM]}),
    )
    .await;
    let app_token = body["accessToken"].as_str().unwrap();
    assert_eq!(
        generate_access_token(&base, DB_SA, app_token, json!({"scope": ["s"]}))
            .await
            .0,
        200
    );
    assert_eq!(google.calls(Target::Iam), 13);
    assert_eq!(google.exchanges(Target::Iam), 5);
}

#[tokio::test]
async fn a_federated_token_without_an_iam_scope_cannot_impersonate() {
    let moto = Moto::start_async().await.expect("moto starts");
    let config = Config::with_moto(&moto.url())
        .provider(Provider::new(AUDIENCE))
        .binding(Binding::new(APP_SA, &[role_member(AUDIENCE, AWS_ROLE)]));
    let google = GoogleDoubles::start(config).await.unwrap();
    let creds = moto
        .assume_role_with_web_identity("arn:aws:iam::123456789012:role/fedcred-demo", "ns-b")
        .await
        .unwrap();
    let token = Signing::new(&moto.url(), &creds.access_key_id, &creds.secret_access_key)
        .session_token(&creds.session_token)
        .botocore();
    let (status, body) = support::post_form(
        &google.sts_url(),
        support::sts_form(
            AUDIENCE,
            &support::encode(&token),
            "https://www.googleapis.com/auth/bigquery",
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = generate_access_token(
        &google.iam_credentials_url(),
        APP_SA,
        body["access_token"].as_str().unwrap(),
        json!({"scope": ["s"]}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Request had insufficient authentication scopes.")
    );
}

/// Faults need no AWS: they apply before any verification.
#[tokio::test]
async fn status_faults_answer_with_retry_after_and_count_down() {
    let google = GoogleDoubles::start(Config::default().provider(Provider::new(AUDIENCE)))
        .await
        .unwrap();
    google.inject(
        Target::Sts,
        Fault::Status {
            code: 429,
            retry_after: Some(7),
            count: 2,
        },
    );
    let post = || async {
        support::http()
            .post(google.sts_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=nope")
            .send()
            .await
            .unwrap()
    };
    for left in [1, 0] {
        let response = post().await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "7");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string() && body["error_description"].is_string());
        let pending = google.pending_faults(Target::Sts);
        assert_eq!(pending.len(), left);
    }
    // Used up: the request is judged on its merits again.
    let response = post().await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
    assert_eq!(google.calls(Target::Sts), 3);
    assert_eq!(google.exchanges(Target::Sts), 0);

    // Over HTTP, on IAM: a 503 without Retry-After, then the normal 401 for a dead bearer.
    let control = format!("{}/__faults", google.base_url());
    let response = support::http()
        .post(&control)
        .json(&json!({"target": "iam", "kind": "status", "code": 503, "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let base = google.iam_credentials_url();
    let (status, retry_after, body) =
        generate_access_token(&base, APP_SA, "ya29.fake-dead", json!({"scope": ["s"]})).await;
    assert_eq!((status, retry_after), (503, None));
    assert_eq!(body["error"]["status"], "UNAVAILABLE");
    assert_eq!(
        generate_access_token(&base, APP_SA, "ya29.fake-dead", json!({"scope": ["s"]}))
            .await
            .0,
        401
    );

    // DELETE clears what is queued.
    support::http()
        .post(&control)
        .json(&json!({"target": "iam", "kind": "reject", "count": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(google.pending_faults(Target::Iam).len(), 1);
    let response = support::http().delete(&control).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert!(google.pending_faults(Target::Iam).is_empty());

    // Nonsense is refused.
    let response = support::http()
        .post(&control)
        .json(&json!({"target": "gcs", "kind": "reject", "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let stats: Value = support::http()
        .get(format!("{}/__stats", google.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["sts"]["calls"], 3);
    assert_eq!(stats["iam"]["calls"], 2);
    assert_eq!(stats["iam"]["exchanges"], 0);
}

#[tokio::test]
async fn delay_faults_slow_one_request() {
    let google = GoogleDoubles::start(Config::default()).await.unwrap();
    google.inject(
        Target::Iam,
        Fault::Delay {
            millis: 400,
            count: 1,
        },
    );
    let base = google.iam_credentials_url();
    let started = Instant::now();
    let (status, _, _) =
        generate_access_token(&base, APP_SA, "ya29.fake-dead", json!({"scope": ["s"]})).await;
    assert_eq!(status, 401);
    assert!(started.elapsed() >= Duration::from_millis(400));
    let started = Instant::now();
    generate_access_token(&base, APP_SA, "ya29.fake-dead", json!({"scope": ["s"]})).await;
    assert!(started.elapsed() < Duration::from_millis(400));
}

#[tokio::test]
async fn refuses_a_config_with_a_malformed_audience() {
    let err = GoogleDoubles::start(Config::default().provider(Provider::new("aws-pool")))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// Malformed requests get a 4xx JSON answer, never a panic or a plain-text error.
#[tokio::test]
async fn garbage_gets_json_errors() {
    let google = GoogleDoubles::start(Config::default().provider(Provider::new(AUDIENCE)))
        .await
        .unwrap();
    let client = support::http();
    let cases = [
        client.post(google.sts_url()).body(vec![0xff, 0x00, 0x13]),
        client
            .post(google.sts_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body("audience=a&audience=b"),
        client
            .post(google.sts_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", "Basic Zm9vOmJhcg==")
            .body("grant_type=x"),
        client.get(format!("{}?access_token=%FF%FE", google.tokeninfo_url())),
        client.get(google.tokeninfo_url()),
        client.post(format!(
            "{}/v1/projects/-/serviceAccounts/{APP_SA}:signBlob",
            google.base_url()
        )),
        client.get(format!("{}/nowhere", google.base_url())),
        client
            .post(format!("{}/__faults", google.base_url()))
            .body("{\"target\":\"sts\",\"kind\":\"status\",\"code\":99,\"count\":1}"),
    ];
    for request in cases {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{status}");
        let body: Value = response.json().await.expect("a JSON body");
        assert!(body.get("error").is_some(), "{body}");
    }
}

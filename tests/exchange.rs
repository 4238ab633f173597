//! The exchange engine against real peers: TokenRequest on the real kube-apiserver, AWS STS as
//! the real moto server, and the Google doubles that verify the SigV4 signature, the target
//! resource, the time window, the attribute condition and the IAM bindings.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fedcred_core::error::Reason;
use fedcred_core::exchange::{ControllerIdentityPolicy, Defaults, IdentityKey, Reuse, plan};
use fedcred_core::google::RetryPolicy;
use fedcred_doubles::{Condition, Config, Fault, Target};
use serde_json::json;
use support::TestNamespace;
use support::cloud::{ASSUMED_ROLE, AUDIENCE, Cloud, ROLE, SA_EMAIL};

fn defaults() -> Defaults {
    Defaults {
        controller_identity: ControllerIdentityPolicy::everyone(),
        // Moto and the Google doubles listen on loopback.
        endpoints: fedcred_core::exchange::EndpointPolicy::new(["http://127.0.0.1:*"]).unwrap(),
        ..Defaults::default()
    }
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_secs(3),
        request_timeout: Duration::from_secs(2),
    }
}

fn service_account(ns: &TestNamespace, name: &str, role: Option<&str>) {
    let annotations = role
        .map(|r| json!({"eks.amazonaws.com/role-arn": r}))
        .unwrap_or(json!({}));
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "annotations": annotations}});
    ns.kubectl(&["apply", "-f", "-"], Some(&sa.to_string()))
        .success();
}

fn irsa_key(cloud: &Cloud, ns: &TestNamespace) -> IdentityKey {
    service_account(ns, "orders-api", Some(ROLE));
    let spec = cloud.spec(json!({"serviceAccount": {"name": "orders-api"}}), json!({}));
    plan(&ns.name, &spec, &defaults()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irsa_becomes_an_impersonated_token_the_iam_double_accepts() {
    let ns = TestNamespace::new("irsa");
    let cloud = Cloud::start(|c| Config {
        require_signed_target: true,
        ..c
    })
    .await;
    let key = irsa_key(&cloud, &ns);
    let engine = cloud.engine(fast_retries()).await;

    let issued = engine.exchange(&key).await.unwrap();

    let principal = format!("{ASSUMED_ROLE}/fedcred.{}.orders-api", ns.name);
    assert_eq!(issued.principal_arn.as_deref(), Some(principal.as_str()));
    assert_eq!(cloud.google.seen_principals(), vec![principal.clone()]);
    let info = cloud
        .google
        .lookup(issued.access_token.expose())
        .expect("the IAM double knows the token");
    assert_eq!(info.email(), Some(SA_EMAIL));
    assert!(
        info.scopes
            .contains(&"https://www.googleapis.com/auth/cloud-platform".to_owned())
    );
    let lifetime = info.expires_at.duration_since(SystemTime::now()).unwrap();
    assert!(
        lifetime > Duration::from_secs(3500) && lifetime <= Duration::from_secs(3600),
        "{lifetime:?}"
    );
    assert_eq!(issued.db_user.as_deref(), Some("orders-api@acme-shop.iam"));
    assert_eq!(issued.project_id.as_deref(), Some("acme-shop"));
    // The token is the IAM double's, not the federated one.
    assert_eq!(cloud.google.exchanges(Target::Sts), 1);
    assert_eq!(cloud.google.exchanges(Target::Iam), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_role_overrides_the_annotation_and_a_missing_role_is_explained() {
    let ns = TestNamespace::new("irsa-role");
    let cloud = Cloud::start(|c| c).await;
    service_account(&ns, "plain", None);
    let engine = cloud.engine(fast_retries()).await;

    let spec = cloud.spec(json!({"serviceAccount": {"name": "plain"}}), json!({}));
    let err = engine
        .exchange(&plan(&ns.name, &spec, &defaults()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.reason, Reason::RoleArnMissing);
    assert!(
        err.message.contains(&format!(
            "ServiceAccount {}/plain has no eks.amazonaws.com/role-arn",
            ns.name
        )),
        "{}",
        err.message
    );

    let spec = cloud.spec(
        json!({"serviceAccount": {"name": "plain", "roleArn": ROLE}}),
        json!({}),
    );
    let issued = engine
        .exchange(&plan(&ns.name, &spec, &defaults()).unwrap())
        .await
        .unwrap();
    assert!(issued.principal_arn.unwrap().starts_with(ASSUMED_ROLE));

    let spec = cloud.spec(json!({"serviceAccount": {"name": "nobody"}}), json!({}));
    let err = engine
        .exchange(&plan(&ns.name, &spec, &defaults()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.reason, Reason::ServiceAccountNotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_identity_share_one_exchange() {
    let ns = TestNamespace::new("single-flight");
    let cloud = Cloud::start(|c| c).await;
    let key = irsa_key(&cloud, &ns);
    let engine = Arc::new(cloud.engine(fast_retries()).await);

    let tasks: Vec<_> = (0..25)
        .map(|_| {
            let engine = engine.clone();
            let key = key.clone();
            tokio::spawn(async move { engine.token(&key, Reuse::refresh_within(0.5), None).await })
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap().unwrap().access_token.expose().to_owned());
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1, "all callers got the same token");
    assert_eq!(cloud.google.exchanges(Target::Sts), 1);
    assert_eq!(cloud.google.calls(Target::Iam), 1);

    // Reused while it has enough life; a caller refreshing within all of a token's lifetime
    // needs more than any token has once issued, and gets a new one.
    engine
        .token(&key, Reuse::refresh_within(0.5), None)
        .await
        .unwrap();
    assert_eq!(cloud.google.exchanges(Target::Sts), 1);
    engine
        .token(&key, Reuse::refresh_within(1.0), None)
        .await
        .unwrap();
    assert_eq!(cloud.google.exchanges(Target::Sts), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_shared_with_other_callers_but_not_with_its_own_retry() {
    let ns = TestNamespace::new("failure-share");
    let cloud = Cloud::start(|c| c).await;
    let key = irsa_key(&cloud, &ns);
    let engine = cloud.engine(fast_retries()).await;
    let reuse = Reuse::refresh_within(0.5);
    cloud.sts_unavailable(100_000);

    // The first caller's exchange fails after its attempts at Google STS.
    let err = engine.token(&key, reuse, None).await.unwrap_err();
    assert_eq!(err.reason, Reason::Upstream);
    let first = cloud.google.calls(Target::Sts);
    assert!(first >= 1);
    let failed_at = jiff::Timestamp::now();

    // Another resource of the identity that has not failed yet gets the same failure without
    // a call.
    let shared = engine.token(&key, reuse, None).await.unwrap_err();
    assert_eq!(shared.message, err.message);
    assert_eq!(cloud.google.calls(Target::Sts), first);

    // A retry by the caller that failed (its failure kept in whole seconds, as the status
    // keeps it) calls Google again: Google is back, so it gets a token.
    cloud.google.clear_faults();
    let seen = jiff::Timestamp::from_second(failed_at.as_second()).unwrap();
    let issued = engine.token(&key, reuse, Some(seen)).await.unwrap();
    assert!(cloud.google.lookup(issued.access_token.expose()).is_some());
    assert_eq!(cloud.google.exchanges(Target::Sts), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_principal_is_named_in_the_error() {
    let ns = TestNamespace::new("condition");
    let cloud = Cloud::start(|c| c).await;
    cloud.google.set_condition(
        AUDIENCE,
        Condition::ArnContains("assumed-role/payments/".into()),
    );
    let key = irsa_key(&cloud, &ns);
    let err = cloud
        .engine(fast_retries())
        .await
        .exchange(&key)
        .await
        .unwrap_err();
    assert_eq!(err.reason, Reason::AttributeConditionRejected);
    let principal = format!("{ASSUMED_ROLE}/fedcred.{}.orders-api", ns.name);
    assert_eq!(err.principal.as_deref(), Some(principal.as_str()), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("AWS principal {principal}:")),
        "{err}"
    );
    assert!(
        err.message.contains("attribute condition"),
        "{}",
        err.message
    );
    assert_eq!(
        cloud.google.calls(Target::Sts),
        1,
        "a definite rejection is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_provider_and_missing_binding_map_to_their_reasons() {
    let ns = TestNamespace::new("reasons");
    let cloud = Cloud::start(|c| c).await;
    let engine = cloud.engine(fast_retries()).await;
    service_account(&ns, "orders-api", Some(ROLE));

    let other = AUDIENCE.replace("aws-shop", "aws-gone");
    let spec = cloud.spec(
        json!({"serviceAccount": {"name": "orders-api"}}),
        json!({"audience": other}),
    );
    let err = engine
        .exchange(&plan(&ns.name, &spec, &defaults()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.reason, Reason::ProviderNotFound, "{}", err.message);

    let spec = cloud.spec(
        json!({"serviceAccount": {"name": "orders-api"}}),
        json!({"serviceAccount": "billing@acme-shop.iam.gserviceaccount.com"}),
    );
    let err = engine
        .exchange(&plan(&ns.name, &spec, &defaults()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.reason, Reason::ImpersonationDenied, "{}", err.message);
    assert!(
        err.message.contains(
            "roles/iam.workloadIdentityUser on billing@acme-shop.iam.gserviceaccount.com"
        )
    );
    assert!(
        err.principal
            .as_deref()
            .is_some_and(|p| p.contains(ASSUMED_ROLE)),
        "names the principal: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_backoff_and_retry_after() {
    let ns = TestNamespace::new("retries");
    let cloud = Cloud::start(|c| c).await;
    let key = irsa_key(&cloud, &ns);
    let engine = cloud.engine(fast_retries()).await;

    cloud.sts_unavailable(2);
    engine.exchange(&key).await.unwrap();
    assert_eq!(cloud.google.calls(Target::Sts), 3);

    cloud.google.inject(
        Target::Iam,
        Fault::Status {
            code: 429,
            retry_after: Some(1),
            count: 1,
        },
    );
    let started = Instant::now();
    engine.exchange(&key).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(cloud.google.calls(Target::Iam), 3);

    cloud.google.inject(
        Target::Sts,
        Fault::Status {
            code: 500,
            retry_after: None,
            count: 10,
        },
    );
    let err = engine.exchange(&key).await.unwrap_err();
    assert_eq!(err.reason, Reason::Upstream);
    assert!(err.message.contains("after 4 attempts"), "{}", err.message);
    cloud.google.clear_faults();

    cloud.google.inject(
        Target::Sts,
        Fault::Delay {
            millis: 2500,
            count: 10,
        },
    );
    let err = engine.exchange(&key).await.unwrap_err();
    assert_eq!(err.reason, Reason::Timeout, "{}", err.message);
    cloud.google.clear_faults();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_identity_is_chained_into_a_per_namespace_session() {
    let ns = TestNamespace::new("controller-id");
    // Credentials from moto for "the controller", verified by the double through moto's state.
    let cloud = Cloud::start(|c| c).await;
    let own = cloud.controller_credentials().await;
    // The default chain reads the environment; run the CLI as a child with those variables.
    let spec = cloud.spec(json!({"controllerIdentity": {"roleArn": ROLE}}), json!({}));
    let manifest = json!({
        "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "bq", "namespace": ns.name}, "spec": spec
    });
    let dir = tempdir();
    let file = dir.join("fc.yaml");
    std::fs::write(&file, manifest.to_string()).unwrap();
    let exchange = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fedcred"))
            .arg("exchange")
            .args(extra)
            .args(["-f", file.to_str().unwrap()])
            .env("AWS_ACCESS_KEY_ID", &own.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &own.secret_access_key)
            .env("AWS_SESSION_TOKEN", &own.session_token)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap()
    };
    let out = exchange(&[]);
    let stdout = support::exchanged(&out, &format!("{ASSUMED_ROLE}/fedcred.{}", ns.name));
    assert!(
        stdout.contains("db user:         orders-api@acme-shop.iam"),
        "{stdout}"
    );
    for token in cloud.google.issued_tokens() {
        assert!(
            !stdout.contains(&token),
            "the token is printed only with --show-token"
        );
    }
    let shown = exchange(&["--show-token"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        cloud
            .google
            .issued_tokens()
            .iter()
            .any(|t| shown.contains(t.as_str())),
        "{shown}"
    );
}

/// The secrecy scan looks for what the doubles list: here the AWS secret key, the session token
/// and the signed request (the subject token) an exchange presented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doubles_list_every_aws_credential_they_receive_for_the_secrecy_scan() {
    let cloud = Cloud::start(|c| c).await;
    let own = cloud
        .moto
        .assume_role_with_web_identity(ROLE, "listed")
        .await
        .unwrap();
    let spec = cloud.spec(json!({"controllerIdentity": {}}), json!({}));
    let manifest = json!({
        "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "bq", "namespace": "analytics"}, "spec": spec
    });
    let dir = tempdir();
    let file = dir.join("fc.yaml");
    std::fs::write(&file, manifest.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedcred"))
        .args(["exchange", "-f", file.to_str().unwrap()])
        .env("AWS_ACCESS_KEY_ID", &own.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &own.secret_access_key)
        .env("AWS_SESSION_TOKEN", &own.session_token)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(
        cloud.google.calls(Target::Sts) >= 1,
        "the exchange reached STS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let received = cloud.google.received_credentials();
    assert!(
        received.contains(&own.secret_access_key),
        "the secret key is listed"
    );
    assert!(
        received.contains(&own.session_token),
        "the session token is listed"
    );
    assert!(
        received
            .iter()
            .any(|c| c.contains("GetCallerIdentity") && c.contains(&own.access_key_id)),
        "the signed request is listed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_controller_credentials_lists_every_source_tried() {
    let dir = tempdir();
    let manifest = json!({
        "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "bq", "namespace": "analytics"},
        "spec": {"aws": {"controllerIdentity": {}, "region": "us-east-1"}, "google": {"audience": AUDIENCE}}
    });
    let file = dir.join("fc.yaml");
    std::fs::write(&file, manifest.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedcred"))
        .args(["exchange", "-f", file.to_str().unwrap()])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("HOME", &dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for source in [
        "environment",
        "web identity",
        "container",
        "EC2 instance metadata",
        "AwsCredentialsUnavailable",
    ] {
        assert!(stderr.contains(source), "{source} missing from: {stderr}");
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fedcred-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

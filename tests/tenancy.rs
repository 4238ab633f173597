//! One controller, many tenants: what one namespace's resources point at cannot stall,
//! redirect or widen what fedcred does for another namespace. On the real API server, with
//! moto and the Google doubles.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cloud::{Cloud, ROLE, federated, service_account};
use support::controller::{ControllerProcess, Launch};
use support::{TestNamespace, eventually};

fn get_json(ns: &TestNamespace, args: &[&str]) -> Option<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = ns.kubectl(&all, None);
    out.ok.then(|| serde_json::from_str(&out.stdout).unwrap())
}

fn condition(ns: &TestNamespace, name: &str, type_: &str) -> Option<Value> {
    let fc = get_json(ns, &["federatedcredential", name])?;
    fc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

fn is_ready(ns: &TestNamespace, name: &str) -> bool {
    condition(ns, name, "Ready").is_some_and(|c| c["status"] == "True")
}

/// The Secret's `access_token` and `expires_at` (RFC 3339), decoded.
fn token(ns: &TestNamespace, name: &str) -> Option<(String, jiff::Timestamp)> {
    use base64::Engine as _;
    let secret = get_json(ns, &["secret", name])?;
    let field = |key: &str| -> Option<String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(secret["data"][key].as_str()?)
            .ok()?;
        String::from_utf8(bytes).ok()
    };
    Some((field("access_token")?, field("expiry")?.parse().ok()?))
}

/// Applies FederatedCredentials `(name, spec)` in one kubectl call.
fn apply_all(ns: &TestNamespace, items: Vec<(String, Value)>) {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items
        .into_iter()
        .map(|(name, spec)| json!({"apiVersion": "fedcred.io/v1alpha1",
            "kind": "FederatedCredential", "metadata": {"name": name}, "spec": spec}))
        .collect::<Vec<_>>()});
    ns.kubectl(&["apply", "-f", "-"], Some(&list.to_string()))
        .success();
}

/// A TCP server on loopback that accepts every connection, reads nothing and never sends a
/// byte: a request to it waits for an answer forever.
fn black_hole() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

/// A controller of every namespace (the tenants are in several), electing its leader in
/// `lease_namespace`.
fn cluster_wide(cloud: &Cloud, lease_namespace: &str, identity: &str) -> ControllerProcess {
    support::ensure_crd();
    let launch = Launch::new(cloud);
    let metrics = format!("127.0.0.1:{}", launch.metrics_port);
    launch
        .command(
            identity,
            [
                "controller",
                "--lease-namespace",
                lease_namespace,
                "--identity",
                identity,
                "--metrics-address",
                &metrics,
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .log_stem(format!("tenancy-{identity}"))
        .panic_tail(200)
        .start()
}

/// 64 resources in one namespace whose AWS STS endpoint accepts connections and never
/// answers (half of them one shared identity, half each its own role) do not stop another
/// namespace's resource from becoming Ready and staying fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_whose_sts_never_answers_does_not_stall_another_namespace() {
    support::ensure_crd();
    let hostile = TestNamespace::new("hostile");
    let tenant = TestNamespace::new("tenant");
    // Short federated tokens, so the tenant's refreshes happen while the test watches.
    let cloud = Cloud::start(federated(12)).await;
    let hole = format!("http://127.0.0.1:{}", black_hole());
    service_account(&hostile, "orders-api");
    service_account(&tenant, "orders-api");
    let federated = json!({"serviceAccount": null});
    let mut items = Vec::new();
    for i in 0..64 {
        let role = if i % 2 == 0 {
            ROLE.to_owned()
        } else {
            format!("arn:aws:iam::123456789012:role/hostile-{i}")
        };
        let mut spec = serde_json::to_value(cloud.spec(
            json!({"serviceAccount": {"name": "orders-api", "roleArn": role}}),
            federated.clone(),
        ))
        .unwrap();
        spec["aws"]["stsEndpoint"] = json!(hole);
        items.push((format!("stuck-{i}"), spec));
    }
    apply_all(&hostile, items);
    let _controller = cluster_wide(&cloud, &tenant.name, "tenancy");
    // Let the hostile resources take the workers.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let spec = serde_json::to_value(
        cloud.spec(json!({"serviceAccount": {"name": "orders-api"}}), federated),
    )
    .unwrap();
    apply_all(&tenant, vec![("orders".to_owned(), spec)]);
    let applied = Instant::now();
    eventually(
        "the tenant's resource Ready",
        Duration::from_secs(30),
        || is_ready(&tenant, "orders").then_some(()),
    )
    .await;
    eprintln!("tenant Ready {:?} after apply", applied.elapsed());

    // It keeps refreshing: new tokens, and never an expired one in the Secret.
    let mut seen: Vec<String> = Vec::new();
    let mut expired_reads = 0;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(30) {
        if let Some((token, expires_at)) = token(&tenant, "orders") {
            if expires_at <= jiff::Timestamp::now() {
                expired_reads += 1;
            }
            if seen.last() != Some(&token) {
                seen.push(token);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(expired_reads, 0, "reads of an expired token in the Secret");
    assert!(
        seen.len() >= 3,
        "only {} tokens in 30 s of 12-second tokens",
        seen.len()
    );
    // The hostile resources are told why, by their own status.
    let stuck = eventually(
        "a hostile resource's failure",
        Duration::from_secs(90),
        || condition(&hostile, "stuck-1", "Ready").filter(|c| c["status"] == "False"),
    )
    .await;
    assert_eq!(stuck["reason"], "Timeout", "{stuck}");
}

/// A Google that issues one-second tokens does not make a resource refresh in a loop: the
/// token is refused (shorter than the controller's floor), the resource says why, and retries
/// back off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_second_tokens_are_refused_not_refreshed_in_a_loop() {
    support::ensure_crd();
    let ns = TestNamespace::new("blink");
    let cloud = Cloud::start(federated(1)).await;
    service_account(&ns, "orders-api");
    let _controller = ControllerProcess::start(&ns.name, &cloud, "blink", &[]);
    let spec = serde_json::to_value(cloud.spec(
        json!({"serviceAccount": {"name": "orders-api"}}),
        json!({"serviceAccount": null}),
    ))
    .unwrap();
    apply_all(&ns, vec![("blink".to_owned(), spec)]);
    let refused = eventually("the refusal in status", Duration::from_secs(30), || {
        condition(&ns, "blink", "Ready").filter(|c| c["status"] == "False")
    })
    .await;
    assert!(
        refused["message"].as_str().unwrap().contains("lives 1 s"),
        "{refused}"
    );
    let before = cloud.google.exchanges(fedcred_doubles::Target::Sts);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = cloud.google.exchanges(fedcred_doubles::Target::Sts) - before;
    // Backoff from 5 s (cut by up to half), doubling: at most a handful in 20 s; a loop
    // refreshing every 1-2 s would make 10 or more.
    assert!(during <= 6, "{during} STS exchanges in 20 s");
}

/// A resource naming an endpoint the admin did not allow is refused before anything is sent,
/// with a condition that says who can allow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_the_admin_did_not_allow_is_refused_with_the_reason() {
    support::ensure_crd();
    let ns = TestNamespace::new("endpoint");
    let cloud = Cloud::start(|c| c).await;
    service_account(&ns, "orders-api");
    let _controller = ControllerProcess::start(&ns.name, &cloud, "endpoint", &[]);
    let mut spec = serde_json::to_value(
        cloud.spec(json!({"serviceAccount": {"name": "orders-api"}}), json!({})),
    )
    .unwrap();
    spec["aws"]["stsEndpoint"] = json!("https://sts.attacker.example");
    let mut google = spec.clone();
    google["aws"]["stsEndpoint"] = json!(cloud.moto.url());
    // https on loopback: the suite allows only http://127.0.0.1.
    google["google"]["endpoints"]["sts"] = json!("https://127.0.0.1:9/v1/token");
    apply_all(
        &ns,
        vec![("aws".to_owned(), spec), ("google".to_owned(), google)],
    );
    for (name, field) in [
        ("aws", "aws.stsEndpoint https://sts.attacker.example:443"),
        ("google", "google.endpoints.sts https://127.0.0.1:9"),
    ] {
        let refused = eventually("the refusal", Duration::from_secs(30), || {
            condition(&ns, name, "Ready").filter(|c| c["status"] == "False")
        })
        .await;
        assert_eq!(refused["reason"], "EndpointNotAllowed", "{refused}");
        let message = refused["message"].as_str().unwrap();
        assert!(message.contains(field), "{message}");
        assert!(message.contains("--allow-endpoint"), "{message}");
        assert!(message.contains("endpoints.allowed"), "{message}");
    }
    assert_eq!(
        cloud.google.calls(fedcred_doubles::Target::Sts),
        0,
        "nothing reached Google STS"
    );
}

/// A Google endpoint that answers with a redirect to plain http is not followed: the subject
/// token goes nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_an_endpoint_is_not_followed() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
    let elsewhere_port = elsewhere.local_addr().unwrap().port();
    let reached = Arc::new(AtomicUsize::new(0));
    {
        let reached = reached.clone();
        std::thread::spawn(move || {
            for mut stream in elsewhere.incoming().flatten() {
                reached.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(b"HTTP/1.1 500 Nope\r\ncontent-length: 0\r\n\r\n");
            }
        });
    }
    let redirector = TcpListener::bind("127.0.0.1:0").unwrap();
    let redirector_port = redirector.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in redirector.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let _ = stream.read(&mut buf);
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{elsewhere_port}/v1/token\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    let google =
        fedcred::exchange::google::GoogleClient::new(fedcred_core::google::RetryPolicy::default())
            .unwrap();
    let result = google
        .sts_exchange(
            &format!("http://127.0.0.1:{redirector_port}/v1/token"),
            support::cloud::AUDIENCE,
            &["https://www.googleapis.com/auth/cloud-platform".to_owned()],
            fedcred_core::subject_token::TOKEN_TYPE,
            &fedcred_core::sensitive::Sensitive::new("subject-token-that-must-stay"),
        )
        .await;
    let err = result.expect_err("a redirect is no token");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    assert!(
        !err.message.contains("subject-token-that-must-stay"),
        "{}",
        err.message
    );
}

/// A client that sends the webhook a request head and then the body only trickles (or never
/// comes) is answered, or cut off, within the body deadline: a flood of such uploads cannot
/// hold the webhook's memory or connections for long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_body_that_never_arrives_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = support::webhook::Server::start("fedcred:test");
    let mut tls = server.raw_tls().await;
    let head = "POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 4000000\r\n\r\n{\"kind\":";
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the connection was still open 30 s after the head, waiting for the body"
    );
    let text = String::from_utf8_lossy(&answer);
    eprintln!(
        "cut off after {:?}: {}",
        started.elapsed(),
        text.lines().next().unwrap_or("(closed without an answer)")
    );
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

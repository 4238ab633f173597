//! `fedcred metadata-server` as a real process, on a directory laid out exactly like the
//! kubelet's Secret volume (`key -> ..data/key`, `..data -> ..<timestamp>` swapped by rename),
//! asked by a raw HTTP client (so that odd paths reach it unnormalised) and by Python's
//! google-auth, unchanged, with nothing but the environment the webhook would inject.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use support::metadata::{Answer, Emulator};
use support::pod::{SecretVolume, unique};

mod support;

const SA: &str = "orders-api@acme-shop.iam.gserviceaccount.com";
const TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// An RFC 3339 time `secs` seconds from now, as the controller writes `expiry`.
fn in_secs(secs: i64) -> String {
    (Timestamp::now() + SignedDuration::from_secs(secs)).to_string()
}

/// The keys the controller writes for an impersonated service account.
fn impersonated(token: &str, expiry: &str) -> Vec<(&'static str, String)> {
    vec![
        ("access_token", token.to_owned()),
        ("expiry", expiry.to_owned()),
        ("token_type", "Bearer".to_owned()),
        ("service_account", SA.to_owned()),
        ("db_user", "orders-api@acme-shop.iam".to_owned()),
        ("project_id", "acme-shop".to_owned()),
    ]
}

fn pairs<'a>(owned: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    owned.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn serves_the_token_with_the_seconds_left_and_the_rest_of_the_tree() {
    let mut volume = SecretVolume::kubelet();
    volume.publish(&pairs(&impersonated("ya29.first-token", &in_secs(3600))));
    let mut emulator = Emulator::start(&volume.dir);

    let token = emulator.get(TOKEN);
    assert_eq!(token.status, 200, "{token:?}");
    assert_eq!(token.header("metadata-flavor"), Some("Google"));
    let body = token.json();
    assert_eq!(body["access_token"], "ya29.first-token");
    assert_eq!(body["token_type"], "Bearer");
    let left = body["expires_in"].as_i64().unwrap();
    assert!((3590..=3600).contains(&left), "expires_in {left}");
    // Requested scopes change nothing: the token has what it has.
    let scoped = emulator.get(&format!(
        "{TOKEN}?scopes=https://www.googleapis.com/auth/bigquery,https://www.googleapis.com/auth/devstorage.read_only"
    ));
    assert_eq!(scoped.json()["access_token"], "ya29.first-token");

    let account = "/computeMetadata/v1/instance/service-accounts/default";
    assert_eq!(emulator.get(&format!("{account}/email")).body, SA);
    assert_eq!(
        emulator.get(&format!("{account}/scopes")).body,
        "https://www.googleapis.com/auth/cloud-platform\n"
    );
    let info = emulator.get(&format!("{account}/?recursive=true")).json();
    assert_eq!(info["aliases"], serde_json::json!(["default"]));
    assert_eq!(info["email"], SA);
    assert_eq!(
        emulator
            .get("/computeMetadata/v1/instance/service-accounts/")
            .body,
        format!("default/\n{SA}/\n")
    );
    let by_email = emulator.get(&format!(
        "/computeMetadata/v1/instance/service-accounts/{SA}/token"
    ));
    assert_eq!(by_email.json()["access_token"], "ya29.first-token");
    let project = emulator.get("/computeMetadata/v1/project/project-id");
    assert_eq!((project.status, project.body.as_str()), (200, "acme-shop"));
    assert_eq!(
        emulator
            .get("/computeMetadata/v1/project/numeric-project-id")
            .status,
        404
    );
    assert_eq!(
        emulator
            .get("/computeMetadata/v1/universe/universe-domain")
            .body,
        "googleapis.com"
    );
    for root in ["/", "/computeMetadata/v1/", "/computeMetadata/v1/instance"] {
        let answer = emulator.get(root);
        assert_eq!(answer.status, 200, "{root}");
        assert_eq!(answer.header("metadata-flavor"), Some("Google"), "{root}");
    }

    assert!(emulator.terminate().is_some_and(|s| s.success()));
    let logs = emulator.logs();
    assert!(logs.contains("serving token"), "{logs}");
    assert!(
        !logs.contains("ya29.first-token"),
        "the token leaked into the log:\n{logs}"
    );
}

#[test]
fn answers_only_requests_that_carry_the_flavor_header_and_are_not_proxied() {
    let mut volume = SecretVolume::kubelet();
    volume.publish(&pairs(&impersonated("ya29.guarded", &in_secs(3600))));
    let emulator = Emulator::start(&volume.dir);

    let bare = emulator.raw(&format!("GET {TOKEN} HTTP/1.1"));
    assert_eq!(bare.status, 403);
    assert_eq!(bare.header("metadata-flavor"), Some("Google"));
    assert!(!bare.body.contains("ya29"));
    let wrong = emulator.raw(&format!("GET {TOKEN} HTTP/1.1\r\nMetadata-Flavor: google"));
    assert_eq!(wrong.status, 403);

    let proxied = emulator.raw(&format!(
        "GET {TOKEN} HTTP/1.1\r\nMetadata-Flavor: Google\r\nX-Forwarded-For: 203.0.113.7"
    ));
    assert_eq!(proxied.status, 403);
    assert!(!proxied.body.contains("ya29"));
    assert_eq!(proxied.header("metadata-flavor"), Some("Google"));

    // The root answers anyone, as GCE's does; it reveals nothing.
    assert_eq!(emulator.raw("GET / HTTP/1.1").status, 200);
}

#[test]
fn refuses_odd_paths_and_methods() {
    let mut volume = SecretVolume::kubelet();
    volume.publish(&pairs(&impersonated("ya29.paths", &in_secs(3600))));
    let emulator = Emulator::start(&volume.dir);

    for path in [
        "/computeMetadata/v1/instance/service-accounts/default/../default/token",
        "/computeMetadata/v1/instance/service-accounts/default/%2e%2e/default/token",
        "/computeMetadata/v1//instance/service-accounts/default/token",
        "/computeMetadata/v1/instance/service-accounts/default%2Ftoken",
        "/computeMetadata/v1/instance/attributes/ssh-keys",
        "/computeMetadata/v1/instance/cpu-platform",
        "/../../etc/passwd",
    ] {
        let answer = emulator.get(path);
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
        assert_eq!(answer.header("metadata-flavor"), Some("Google"));
    }
    let post = emulator.raw(&format!(
        "POST {TOKEN} HTTP/1.1\r\nMetadata-Flavor: Google\r\nContent-Length: 0"
    ));
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = emulator.raw(&format!("HEAD {TOKEN} HTTP/1.1\r\nMetadata-Flavor: Google"));
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
}

#[test]
fn an_expired_token_is_refused_with_503_until_the_secret_is_refreshed() {
    let mut volume = SecretVolume::kubelet();
    volume.publish(&pairs(&impersonated("ya29.stale", &in_secs(-60))));
    let emulator = Emulator::start(&volume.dir);

    let answer = emulator.get(TOKEN);
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.body.contains("expired"), "{}", answer.body);
    assert!(!answer.body.contains("ya29.stale"));
    assert_eq!(answer.header("metadata-flavor"), Some("Google"));
    // The rest of the tree still answers.
    assert_eq!(
        emulator
            .get("/computeMetadata/v1/project/project-id")
            .status,
        200
    );

    volume.publish(&pairs(&impersonated("ya29.fresh", &in_secs(1800))));
    assert_eq!(emulator.get(TOKEN).json()["access_token"], "ya29.fresh");
}

#[test]
fn no_token_yet_is_503_and_a_plain_directory_is_read_as_is() {
    let volume = SecretVolume::plain(&[("project_id", "acme-shop")]);
    let emulator = Emulator::start(&volume.dir);
    let answer = emulator.get(TOKEN);
    assert_eq!(answer.status, 503);
    assert!(answer.body.contains("no access_token"), "{}", answer.body);

    std::fs::write(volume.dir.join("access_token"), "ya29.plain\n").unwrap();
    std::fs::write(volume.dir.join("expiry"), in_secs(600)).unwrap();
    assert_eq!(emulator.get(TOKEN).json()["access_token"], "ya29.plain");
}

/// Generation `n` of the swap test: its token and an expiry that identifies it.
fn generation_keys(n: i64) -> Vec<(&'static str, String)> {
    impersonated(&format!("ya29.generation-{n}"), &in_secs(1000 + 100 * n))
}

/// Checks that a token answer is one whole generation: the token's number and the
/// expires_in that only that generation's expiry gives. Returns the generation.
fn whole_generation(answer: &Answer) -> i64 {
    let body = answer.json();
    let token = body["access_token"].as_str().unwrap();
    let n: i64 = token
        .strip_prefix("ya29.generation-")
        .unwrap()
        .parse()
        .unwrap();
    let left = body["expires_in"].as_i64().unwrap();
    let expected = 1000 + 100 * n;
    assert!(
        (expected - 30..=expected).contains(&left),
        "token of generation {n} served with expires_in {left}: a mix of two generations"
    );
    n
}

#[test]
fn picks_up_the_kubelets_atomic_swap_at_once_and_never_mixes_generations() {
    let mut volume = SecretVolume::kubelet();
    volume.publish(&pairs(&generation_keys(0)));
    let emulator = Arc::new(Emulator::start(&volume.dir));

    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let emulator = emulator.clone();
            let done = done.clone();
            let reads = reads.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                while !done.load(Ordering::Relaxed) {
                    let answer = emulator.get(TOKEN);
                    assert_eq!(answer.status, 200, "{answer:?}");
                    let n = whole_generation(&answer);
                    assert!(n >= last, "generation {n} served after {last}");
                    last = n;
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    for n in 1..=25 {
        volume.publish(&pairs(&generation_keys(n)));
        // The very next request after the swap sees the new generation.
        assert_eq!(whole_generation(&emulator.get(TOKEN)), n);
        std::thread::sleep(Duration::from_millis(20));
    }
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().expect("a reader saw a mixed or stale answer");
    }
    assert!(reads.load(Ordering::Relaxed) > 25);
}

#[test]
fn refuses_to_start_without_the_secret_directory() {
    let missing = unique("no-such-secret");
    let output = Command::new(env!("CARGO_BIN_EXE_fedcred"))
        .arg("metadata-server")
        .arg("--secret-dir")
        .arg(&missing)
        .args(["--listen", "127.0.0.1:0", "--log-format", "text"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[test]
fn stops_cleanly_on_sigterm() {
    let mut volume = SecretVolume::kubelet();
    volume.publish(&pairs(&impersonated("ya29.bye", &in_secs(3600))));
    let mut emulator = Emulator::start(&volume.dir);
    assert_eq!(emulator.get(TOKEN).status, 200);
    let status = emulator.terminate().expect("exited within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// google-auth's application-default credentials with only what the webhook injects.
fn google_auth_adc(emulator: &Emulator) -> Value {
    support::pod::google_auth_adc(&emulator.addr.to_string(), &[])
}

#[test]
fn python_google_auth_finds_the_emulator_with_only_the_injected_environment() {
    let mut volume = SecretVolume::kubelet();
    volume.publish(&pairs(&impersonated("ya29.for-python", &in_secs(3000))));
    let emulator = Emulator::start(&volume.dir);

    let found = google_auth_adc(&emulator);
    assert_eq!(
        found["class"],
        "google.auth.compute_engine.credentials.Credentials"
    );
    assert_eq!(found["project"], "acme-shop");
    assert_eq!(found["token"], "ya29.for-python");
    assert_eq!(found["email"], SA);
    assert_eq!(found["universe"], "googleapis.com");
    let left = found["seconds_left"].as_i64().unwrap();
    assert!((2950..=3000).contains(&left), "seconds_left {left}");
}

#[test]
fn python_google_auth_accepts_a_federated_token_without_project() {
    let mut volume = SecretVolume::kubelet();
    volume.publish(&[
        ("access_token", "ya29.federated"),
        ("expiry", &in_secs(1200)),
        ("token_type", "Bearer"),
    ]);
    let emulator = Emulator::start(&volume.dir);

    let found = google_auth_adc(&emulator);
    assert_eq!(
        found["class"],
        "google.auth.compute_engine.credentials.Credentials"
    );
    assert_eq!(found["project"], Value::Null);
    assert_eq!(found["token"], "ya29.federated");
    assert_eq!(found["email"], "default");
}

#[test]
fn check_mode_is_the_startup_probe() {
    let mut volume = SecretVolume::kubelet();
    volume.publish(&pairs(&impersonated("ya29.probe-token", &in_secs(3600))));
    let emulator = Emulator::start(&volume.dir);
    let check = |addr: &str| {
        Command::new(env!("CARGO_BIN_EXE_fedcred"))
            .args(["metadata-server", "--check", "--listen", addr])
            .output()
            .unwrap()
    };
    let up = check(&emulator.addr.to_string());
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // Nothing listens on a port just released.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = check(&free.to_string());
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("does not answer"));
}

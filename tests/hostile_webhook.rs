//! The admission webhook under hostile AdmissionReview bodies: the server runs in this process
//! over TLS, as `fedcred controller` runs it, with a real API server behind its lookups. Each
//! body gets a client error (or, where the body is a well-formed review, the AdmissionReview
//! refusal the protocol asks for), the server keeps answering a valid review, and the process's
//! resident memory stays bounded.

mod support;

use std::time::{Duration, Instant};

use fedcred::webhook::MAX_BODY_BYTES;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{Value, json};
use support::webhook::Server;
use support::{TestNamespace, ensure_crd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A field of this process's /proc status (the server and the test alike), in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

/// The most resident memory this process has had since [`reset_peak_rss`], in KiB.
fn peak_rss_kib() -> u64 {
    status_kib("VmHWM")
}

/// Starts the peak of [`peak_rss_kib`] again from the present resident memory (Linux 4.0 and
/// later: writing 5 to clear_refs resets VmHWM).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM through clear_refs");
}

fn pod(namespace: Option<&str>, credential: &str) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "orders",
            "labels": {"fedcred.io/inject": "true", "app": "orders"},
            "annotations": {"fedcred.io/credential": credential},
        },
        "spec": {
            "serviceAccountName": "orders-api",
            "containers": [{
                "name": "app", "image": "registry.example/orders:1",
                "env": [{"name": "LOG_LEVEL", "value": "info"}],
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            }],
        },
    });
    if let Some(ns) = namespace {
        pod["metadata"]["namespace"] = json!(ns);
    }
    pod
}

fn review(namespace: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0b8c3f0e-0000-4000-8000-00000000beef",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:shop:deployer", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

/// How a case must be answered.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// This HTTP client error, with a JSON `error` body when the handler wrote it.
    Status(u16),
    /// 413, or the connection closed before the client read it: the server refuses an
    /// oversized body from its Content-Length (or at the limit) and closes while the client
    /// may still be sending, and the client then sees the reset instead.
    TooLarge,
    /// A well-formed review the protocol answers with `allowed: false` (HTTP 200): the API
    /// server shows the message to whoever created the pod.
    Refused,
}

struct Case {
    what: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    expect: Expect,
}

fn case(what: impl Into<String>, body: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        what: what.into(),
        content_type: Some("application/json"),
        body: body.into(),
        expect,
    }
}

fn with(mut v: Value, pointer: &str, value: Value) -> Vec<u8> {
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer} in the review")) = value;
    serde_json::to_vec(&v).unwrap()
}

fn without(mut v: Value, pointer: &str) -> Vec<u8> {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    v.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap()
        .remove(key)
        .unwrap_or_else(|| panic!("{pointer} in the review"));
    serde_json::to_vec(&v).unwrap()
}

/// Every body of the barrage, with what it must get. `ns` holds the credential `orders-db`;
/// `other` is a namespace without it.
fn cases(ns: &str, other: &str) -> Vec<Case> {
    use Expect::*;
    let valid = review(ns, pod(None, "orders-db"));
    let text = serde_json::to_vec(&valid).unwrap();
    let mut cases = Vec::new();

    // Random bytes, seeded so that a failure reproduces.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_f00d);
    for i in 0..30 {
        let len = rng.random_range(1..=16 * 1024);
        let mut body = vec![0u8; len];
        rng.fill_bytes(&mut body);
        if i % 3 == 0 {
            // Random bytes behind a plausible start.
            body.splice(
                0..0,
                b"{\"apiVersion\":\"admission.k8s.io/v1\",".iter().copied(),
            );
        }
        cases.push(case(
            format!("random bytes #{i} ({len} B)"),
            body,
            Status(400),
        ));
    }

    // The realistic review cut short at 40 points, and empty.
    for k in 0..40 {
        let cut = (text.len() * k / 40).max(1).min(text.len() - 1);
        cases.push(case(
            format!("truncated at {cut} of {}", text.len()),
            text[..cut].to_vec(),
            Status(400),
        ));
    }
    cases.push(case("empty body", Vec::new(), Status(400)));

    // Bodies over the limit: padded JSON, a huge annotation in an otherwise valid review.
    let mut huge = b"{\"apiVersion\":\"".to_vec();
    huge.resize(5 * 1024 * 1024, b'a');
    cases.push(case("5 MiB with Content-Length", huge, TooLarge));
    let mut fat = pod(None, "orders-db");
    fat["metadata"]["annotations"]["pad"] = json!("x".repeat(MAX_BODY_BYTES));
    cases.push(case(
        "valid review with a 4 MiB annotation",
        serde_json::to_vec(&review(ns, fat)).unwrap(),
        TooLarge,
    ));
    // Just under the limit but not a review: read in full, then refused.
    let mut under = b"[\"".to_vec();
    under.resize(MAX_BODY_BYTES - 16, b'b');
    cases.push(case(
        "4 MiB minus 16 B of an unterminated string",
        under,
        Status(400),
    ));

    // Nesting past serde_json's recursion limit, at the top and inside the object.
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    cases.push(case("100000 nested arrays", nested, Status(400)));
    let deep_object = format!(
        "{{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{{\"object\":{}{}}}}}",
        "{\"a\":".repeat(5000),
        "}".repeat(5000)
    );
    cases.push(case(
        "5000 nested objects in request.object",
        deep_object,
        Status(400),
    ));
    let label = String::from_utf8(text.clone()).unwrap().replacen(
        "\"app\":\"orders\"",
        &format!("\"app\":{}{}", "[".repeat(200), "]".repeat(200)),
        1,
    );
    assert!(label.contains("[[[["), "the label is in the review");
    cases.push(case(
        "200 nested arrays as a label value",
        label,
        Status(400),
    ));

    // Wrong kinds and versions.
    for (pointer, value) in [
        ("/apiVersion", json!("admission.k8s.io/v1beta1")),
        ("/apiVersion", json!("v1")),
        ("/apiVersion", json!("")),
        ("/kind", json!("Pod")),
        ("/kind", json!("admissionreview")),
        ("/request/kind/kind", json!("Deployment")),
        ("/request/kind/kind", json!("Secret")),
        ("/request/kind/group", json!("apps")),
        ("/request/kind/version", json!("v2")),
        (
            "/request/kind",
            json!({"group": "", "version": "v1", "kind": "pod"}),
        ),
    ] {
        cases.push(case(
            format!("{pointer} = {value}"),
            with(valid.clone(), pointer, value),
            Status(400),
        ));
    }

    // Missing fields.
    for pointer in [
        "/apiVersion",
        "/kind",
        "/request",
        "/request/uid",
        "/request/kind",
        "/request/namespace",
        "/request/operation",
        "/request/object",
    ] {
        cases.push(case(
            format!("no {pointer}"),
            without(valid.clone(), pointer),
            Status(400),
        ));
    }

    // Wrong types.
    for (pointer, value) in [
        ("/request", json!("a string")),
        ("/request/uid", json!(42)),
        ("/request/uid", json!("")),
        ("/request/namespace", json!(["shop"])),
        ("/request/namespace", json!("")),
        ("/request/operation", json!(true)),
        ("/request/object", json!([1, 2, 3])),
        ("/request/object", json!("a pod")),
        ("/request/object/spec/containers", json!("none")),
        (
            "/request/object/spec/containers/0/ports/0/containerPort",
            json!("eighty"),
        ),
        (
            "/request/object/metadata/labels",
            json!(["fedcred.io/inject"]),
        ),
        (
            "/request/object/metadata/annotations/fedcred.io~1credential",
            json!(7),
        ),
        ("/request/dryRun", json!("yes")),
        ("/request/kind", json!("Pod")),
    ] {
        cases.push(case(
            format!("{pointer} = {value}"),
            with(valid.clone(), pointer, value),
            Status(400),
        ));
    }
    cases.push(case(
        "a JSON array",
        serde_json::to_vec(&json!([valid.clone()])).unwrap(),
        Status(400),
    ));
    cases.push(case("null", "null", Status(400)));
    cases.push(case(
        "a duplicated request member",
        format!(
            "{{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{},\"request\":{}}}",
            valid["request"], valid["request"]
        ),
        Status(400),
    ));

    // The pod claims another namespace than the request: the credential of that namespace
    // must not be looked up or injected.
    cases.push(case(
        "pod of a namespace with the credential, request in another",
        serde_json::to_vec(&review(other, pod(Some(ns), "orders-db"))).unwrap(),
        Status(400),
    ));

    // Non-UTF-8 and other encodings.
    let mut latin1 = text.clone();
    let at = latin1.windows(6).position(|w| w == b"orders").unwrap();
    latin1[at] = 0xf6;
    cases.push(case("a Latin-1 byte in a string", latin1, Status(400)));
    let mut overlong = text.clone();
    overlong.splice(at..at + 1, [0xc0, 0xaf]);
    cases.push(case("an overlong UTF-8 sequence", overlong, Status(400)));
    let utf16: Vec<u8> = String::from_utf8(text.clone())
        .unwrap()
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    cases.push(case("UTF-16LE", utf16, Status(400)));
    let mut bom = vec![0xef, 0xbb, 0xbf];
    bom.extend_from_slice(&text);
    cases.push(case("a UTF-8 byte order mark", bom, Status(400)));
    cases.push(case(
        "a NUL after the review",
        [text.clone(), vec![0]].concat(),
        Status(400),
    ));
    cases.push(case(
        "two reviews back to back",
        [text.clone(), text.clone()].concat(),
        Status(400),
    ));

    // Content types.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json-patch+json"),
        Some("application/jsonx"),
        Some("application/yaml"),
        Some("multipart/form-data; boundary=x"),
    ] {
        cases.push(Case {
            what: format!("Content-Type {content_type:?}"),
            content_type,
            body: text.clone(),
            expect: Status(415),
        });
    }

    // Well-formed reviews the protocol answers with a refusal.
    cases.push(case(
        "a credential that does not exist",
        serde_json::to_vec(&review(ns, pod(None, "no-such-credential"))).unwrap(),
        Refused,
    ));
    for name in [
        "../../../../api/v1/namespaces/kube-system/secrets/x",
        "orders-db/status",
        "orders-db?watch=true",
        "%2e%2e%2forders-db",
        "ORDERS-DB",
        " ",
    ] {
        cases.push(case(
            format!("credential annotation {name:?}"),
            serde_json::to_vec(&review(ns, pod(None, name))).unwrap(),
            Refused,
        ));
    }
    cases.push(case(
        "an opted-in pod without a spec",
        without(valid.clone(), "/request/object/spec"),
        Refused,
    ));
    let mut host = pod(None, "orders-db");
    host["spec"]["hostNetwork"] = json!(true);
    cases.push(case(
        "an opted-in pod on the host network",
        serde_json::to_vec(&review(ns, host)).unwrap(),
        Refused,
    ));
    cases
}

fn tls_client(server: &Server) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(server.certs.ca_pem.as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Sends `head` and then `body` while reading the answer, and returns its status code (`None`
/// when the connection closed without one).
async fn raw_exchange(server: &Server, head: String, body: Vec<u8>) -> Option<u16> {
    let tls = server.raw_tls().await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        for chunk in body.chunks(64 * 1024) {
            if wr.write_all(chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.flush().await;
        // Keep the write half open until the answer is read.
        tokio::time::sleep(Duration::from_secs(20)).await;
        drop(wr);
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    writer.abort();
    assert!(read.is_ok(), "no answer within 30 s");
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Posts a valid review of a pod in `ns` naming `orders-db`.
async fn post_valid_review(
    client: &reqwest::Client,
    server: &Server,
    ns: &str,
) -> reqwest::Response {
    client
        .post(server.url("/mutate"))
        .header("content-type", "application/json")
        .json(&review(ns, pod(None, "orders-db")))
        .send()
        .await
        .unwrap()
}

/// Posts the valid review and checks that it is answered with a patch.
async fn answers_a_valid_review(client: &reqwest::Client, server: &Server, ns: &str) {
    let response = post_valid_review(client, server, ns).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");
}

/// Waits until a valid review of `ns` is allowed (the credential is in the cache), then warms
/// TLS and allocator arenas with 20 more, before the first measurement of memory.
async fn warm_up(client: &reqwest::Client, server: &Server, ns: &str) {
    let start = Instant::now();
    loop {
        let r = post_valid_review(client, server, ns).await;
        let v: Value = r.json().await.unwrap();
        if v["response"]["allowed"] == true {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the credential never showed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..20 {
        answers_a_valid_review(client, server, ns).await;
    }
}

/// The tests of this file measure the memory of the whole process, so they run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_admission_reviews_are_refused_and_the_server_stays_up_with_bounded_memory() {
    let _alone = ONE_AT_A_TIME.lock().await;
    ensure_crd();
    let ns = TestNamespace::new("hostile-wh");
    let other = TestNamespace::new("hostile-wh-other");
    support::create_credential(&ns, "orders-db", true);
    let server = Server::start("ghcr.io/example/fedcred:t");
    let client = tls_client(&server);
    warm_up(&client, &server, &ns.name).await;
    let rss_before = rss_kib();

    let cases = cases(&ns.name, &other.name);
    let mut counted = 0;
    let mut failures = Vec::new();
    for Case {
        what,
        content_type,
        body,
        expect,
    } in cases
    {
        let mut request = client.post(server.url("/mutate")).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        counted += 1;
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if expect == Expect::TooLarge && (e.is_request() || e.is_body()) => continue,
            Err(e) => panic!("{what}: {e}"),
        };
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let short: String = text.chars().take(300).collect();
        let ok = match expect {
            Expect::Status(wanted) => {
                status == wanted
                    && serde_json::from_str::<Value>(&text)
                        .is_ok_and(|error| error["error"].is_string())
            }
            Expect::TooLarge => status == 413,
            Expect::Refused => {
                let answer: Value = serde_json::from_str(&text).unwrap_or_default();
                let r = &answer["response"];
                status == 200
                    && r["allowed"] == false
                    && r.get("patch").is_none()
                    && r["status"]["code"] == 403
            }
        };
        if !ok {
            failures.push(format!("{what}: wanted {expect:?}, got {status}: {short}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // What reqwest will not send: lying or absent lengths, chunked bodies, bare bytes.
    let valid = serde_json::to_vec(&review(&ns.name, pod(None, "orders-db"))).unwrap();
    let huge = vec![b' '; 5 * 1024 * 1024];
    let head = |extra: &str| {
        format!(
            "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\r\n"
        )
    };
    let raw_cases: Vec<(&str, String, Vec<u8>, &[u16])> = vec![
        (
            "5 MiB chunked, no Content-Length",
            head("Transfer-Encoding: chunked\r\n"),
            chunked(&huge),
            &[413],
        ),
        (
            "5 MiB, no length, connection close",
            head("Connection: close\r\n"),
            huge.clone(),
            &[400, 413],
        ),
        (
            "Content-Length of 1 TiB, small body",
            head("Content-Length: 1099511627776\r\n"),
            valid.clone(),
            &[413],
        ),
        (
            "Content-Length overflowing u64",
            head("Content-Length: 99999999999999999999999\r\n"),
            valid.clone(),
            &[400],
        ),
        (
            "two different Content-Lengths",
            head("Content-Length: 10\r\nContent-Length: 20\r\n"),
            valid.clone(),
            &[400],
        ),
        (
            "Content-Length and chunked",
            head(&format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                valid.len()
            )),
            chunked(&valid),
            // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and a server may
            // either reject the message or read it chunked (hyper does); no proxy in front
            // of the webhook could read it differently.
            &[200, 400],
        ),
        (
            "a chunk size that is not hex",
            head("Transfer-Encoding: chunked\r\n"),
            b"zz\r\nabc\r\n0\r\n\r\n".to_vec(),
            // A body that cannot be read is answered like one over the limit.
            &[400, 413],
        ),
        (
            "chunked valid review",
            head("Transfer-Encoding: chunked\r\n"),
            chunked(&valid),
            &[200],
        ),
        (
            "GET /mutate",
            "GET /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_owned(),
            Vec::new(),
            &[405],
        ),
        (
            "PUT /mutate",
            head("Content-Length: 2\r\n").replacen("POST", "PUT", 1),
            b"{}".to_vec(),
            &[405],
        ),
        (
            "POST /mutate/../healthz",
            head("Content-Length: 2\r\n").replacen("/mutate", "/mutate/../healthz", 1),
            b"{}".to_vec(),
            &[404, 405],
        ),
        (
            "a garbage request line",
            "\x16\x03\x01 garbage\r\n\r\n".to_owned(),
            Vec::new(),
            &[400],
        ),
        (
            "HTTP/2 preface over HTTP/1",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned(),
            Vec::new(),
            // hyper's HTTP/1 server recognises the preface and closes without an answer (0).
            &[0, 400, 505],
        ),
        (
            "a 100 KiB header",
            head(&format!("X-Pad: {}\r\n", "p".repeat(100 * 1024))),
            Vec::new(),
            &[400, 431],
        ),
        (
            "1000 headers",
            head(&"X-A: b\r\n".repeat(1000)),
            Vec::new(),
            &[400, 431],
        ),
    ];
    for (what, head, body, allowed) in raw_cases {
        counted += 1;
        let status = raw_exchange(&server, head, body).await;
        match status {
            Some(s) if allowed.contains(&s) => {}
            // Only an oversized body (or a listed 0) may end in a closed connection.
            None if allowed.contains(&413) || allowed.contains(&0) => {}
            other => failures.push(format!("{what}: {other:?}, wanted one of {allowed:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Many concurrent connections: valid reviews and garbage at once, each answered.
    let mut tasks = Vec::new();
    for i in 0..150 {
        counted += 1;
        let client = tls_client(&server);
        let url = server.url("/mutate");
        let body = if i % 2 == 0 {
            valid.clone()
        } else {
            b"{\"garbage\":".to_vec()
        };
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (i, r.status().as_u16())
        }));
    }
    for task in tasks {
        let (i, status) = task.await.unwrap();
        assert_eq!(
            status,
            if i % 2 == 0 { 200 } else { 400 },
            "concurrent request {i}"
        );
    }

    // Slow clients: connections that never finish their headers, or never start TLS, are
    // closed by the server's timeouts while others are served.
    let mut slow = Vec::new();
    for i in 0..20 {
        counted += 1;
        if i % 2 == 0 {
            let mut tls = server.raw_tls().await;
            tls.write_all(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
                .await
                .unwrap();
            tls.flush().await.unwrap();
            slow.push(tokio::spawn(closed_within_25_s(tls)));
        } else {
            let mut tcp = TcpStream::connect(("127.0.0.1", server.port))
                .await
                .unwrap();
            tcp.write_all(b"\x16\x03\x01").await.unwrap();
            slow.push(tokio::spawn(closed_within_25_s(tcp)));
        }
    }
    answers_a_valid_review(&client, &server, &ns.name).await;
    for task in slow {
        let (closed, after) = task.await.unwrap();
        assert!(closed, "a stalled connection was kept open for 25 s");
        assert!(
            after >= Duration::from_secs(5),
            "closed after only {after:?}"
        );
    }

    assert!(counted >= 100, "only {counted} hostile inputs");
    for _ in 0..5 {
        answers_a_valid_review(&client, &server, &ns.name).await;
    }
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let rss_after = rss_kib();
    eprintln!(
        "hostile webhook: {counted} hostile inputs; VmRSS {rss_before} KiB before, {rss_after} KiB after ({:+} KiB)",
        rss_after as i64 - rss_before as i64
    );
    // Generous: a few bodies at the 4 MiB limit may be buffered at once, and freed memory is
    // not always returned to the system.
    assert!(
        rss_after < rss_before + 256 * 1024,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// Reads `stream` until the server closes it, for at most 25 s: whether it closed, and after
/// how long.
async fn closed_within_25_s(mut stream: impl tokio::io::AsyncRead + Unpin) -> (bool, Duration) {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(25), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    (closed.is_ok(), started.elapsed())
}

/// One answer read from a raw connection: its status, head and body; `None` when the
/// connection ended before a whole answer arrived.
async fn read_answer(
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Option<(u16, String, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                let status = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
                return Some((status, head, got[end + 4..end + 4 + length].to_vec()));
            }
        }
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Clients of the flood, each on its own connection.
const FLOOD_CLIENTS: usize = 200;
/// The Content-Length each flood client declares: under the 4 MiB limit, so only a budget of
/// the bytes held at once can refuse it.
const FLOOD_DECLARED: usize = 4_000_000;
/// Most the process's resident memory may rise during the flood, in KiB. Without a budget the
/// server holds every client's body at once (200 × 4 MB).
const FLOOD_PEAK_GROWTH_KIB: u64 = 128 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stalled_uploads_is_turned_away_while_a_valid_review_is_answered_in_bounded_memory()
 {
    let _alone = ONE_AT_A_TIME.lock().await;
    ensure_crd();
    let ns = TestNamespace::new("flood-wh");
    support::create_credential(&ns, "orders-db", true);
    let server = Server::start("ghcr.io/example/fedcred:t");
    let client = tls_client(&server);
    warm_up(&client, &server, &ns.name).await;
    reset_peak_rss();
    let rss_before = rss_kib();

    // Each client sends its head, waits a moment (a client turned away reads the answer there),
    // then sends all of the body but its last 1000 bytes and stalls.
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {FLOOD_DECLARED}\r\n\r\n"
    );
    let chunk: std::sync::Arc<[u8]> = vec![b' '; 64 * 1024].into();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<()>(FLOOD_CLIENTS);
    let flood_started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..FLOOD_CLIENTS {
        let tls = server.raw_tls().await;
        let (head, chunk, answered, sent) = (
            head.clone(),
            chunk.clone(),
            answered.clone(),
            sent_tx.clone(),
        );
        clients.push(tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(tls);
            // Settled: its body sent, or an answer read first (a client turned away).
            let settled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (settled_by_writer, sent_by_writer) = (settled.clone(), sent.clone());
            let writer = tokio::spawn(async move {
                let mut ok =
                    wr.write_all(head.as_bytes()).await.is_ok() && wr.flush().await.is_ok();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut left = FLOOD_DECLARED - 1000;
                while ok && left > 0 {
                    let n = left.min(chunk.len());
                    ok = wr.write_all(&chunk[..n]).await.is_ok();
                    left -= n;
                }
                let _ = wr.flush().await;
                if !settled_by_writer.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    let _ = sent_by_writer.send(()).await;
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(wr);
            });
            let answer = tokio::time::timeout(Duration::from_secs(40), read_answer(&mut rd))
                .await
                .ok()
                .flatten();
            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if !settled.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let _ = sent.send(()).await;
            }
            writer.abort();
            answer
        }));
    }
    drop(sent_tx);
    // Every client has sent its body or been answered.
    let all_sent = tokio::time::timeout(Duration::from_secs(30), async {
        for _ in 0..FLOOD_CLIENTS {
            sent_rx.recv().await;
        }
    })
    .await;
    assert!(
        all_sent.is_ok(),
        "the flood's clients could not send within 30 s"
    );
    let flood_sent = flood_started.elapsed();

    // (a) While the flood stalls, a valid review is answered within a few seconds.
    let asked = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(3),
        answers_a_valid_review(&client, &server, &ns.name),
    )
    .await
    .expect("a valid review was not answered within 3 s during the flood");
    let review_took = asked.elapsed();
    let still_stalled = FLOOD_CLIENTS - answered.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "webhook flood: {FLOOD_CLIENTS} clients sent in {flood_sent:?}; a valid review answered in {review_took:?} with {still_stalled} still stalled"
    );
    assert!(
        still_stalled > 0,
        "every flood client was answered before the valid review: it was not asked during the flood"
    );

    // (c) Clients past the budget are told at once to come back, not held.
    let mut statuses = std::collections::BTreeMap::<Option<u16>, usize>::new();
    let mut turned_away = 0;
    let mut wrong = Vec::new();
    for client in clients {
        let answer = client.await.unwrap();
        *statuses.entry(answer.as_ref().map(|a| a.0)).or_default() += 1;
        match answer {
            Some((503, head, body)) => {
                let retry = head
                    .lines()
                    .any(|l| l.to_ascii_lowercase().replace(' ', "") == "retry-after:1");
                let error = serde_json::from_slice::<Value>(&body)
                    .is_ok_and(|error| error["error"].is_string());
                if retry && error {
                    turned_away += 1;
                } else {
                    wrong.push(format!(
                        "503 without Retry-After: 1 or a JSON error: {head}"
                    ));
                }
            }
            // The body never completes: the clients inside the budget wait out BODY_TIMEOUT.
            Some((408, _, _)) => {}
            other => wrong.push(format!("{:?}", other.map(|a| (a.0, a.1)))),
        }
    }
    let peak = peak_rss_kib();
    eprintln!(
        "webhook flood: answers {statuses:?}; VmRSS {rss_before} KiB before, VmHWM {peak} KiB during ({:+} KiB)",
        peak as i64 - rss_before as i64
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(
        turned_away > 0,
        "no flood client was turned away with 503: {statuses:?}"
    );

    // (b) The bodies held at once are bounded by the budget, not by the number of clients.
    assert!(
        peak < rss_before + FLOOD_PEAK_GROWTH_KIB,
        "resident memory peaked at {peak} KiB during the flood, from {rss_before} KiB"
    );

    // The budget is whole again: a body at the limit is read (and refused as no review).
    let mut under = b"[\"".to_vec();
    under.resize(MAX_BODY_BYTES - 16, b'b');
    let response = client
        .post(server.url("/mutate"))
        .header("content-type", "application/json")
        .body(under)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    answers_a_valid_review(&client, &server, &ns.name).await;
}

/// Connections a server is held to in [`connections_past_the_cap_wait_until_one_ends`].
const CAP: usize = 4;

/// Whether a TLS handshake with `server` completes within `within`.
async fn handshake_within(
    server: &Server,
    within: Duration,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    tokio::time::timeout(within, server.raw_tls()).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_until_one_ends() {
    let _alone = ONE_AT_A_TIME.lock().await;
    ensure_crd();
    let metrics = fedcred::metrics::Metrics::shared();
    let server = Server::start_with(
        "ghcr.io/example/fedcred:t",
        fedcred::webhook::ServeOptions {
            max_connections: CAP,
            metrics: Some(metrics.clone()),
        },
    );
    // CAP clients hold their connections open, idle, after the handshake.
    let mut held = Vec::new();
    for i in 0..CAP {
        held.push(
            handshake_within(&server, Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("connection {i} of {CAP} was not served")),
        );
    }
    // One more: its TCP connection waits in the backlog, and no handshake is answered.
    let server = std::sync::Arc::new(server);
    let waiting = {
        let server = server.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let served = handshake_within(&server, Duration::from_secs(10)).await;
            (served.is_some(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "a connection past the cap of {CAP} was served while {CAP} were held"
    );
    // One ends: the waiting client is served.
    drop(held.pop());
    let (served, after) = waiting.await.unwrap();
    assert!(
        served,
        "the waiting connection was not served after one ended"
    );
    assert!(
        after >= Duration::from_millis(1500),
        "served after {after:?}"
    );
    let turned_away = metrics
        .turned_away
        .get_or_create(&fedcred::metrics::ReasonLabels {
            reason: fedcred::metrics::MAX_CONNECTIONS,
        })
        .get();
    assert!(turned_away >= 1, "no pause at the cap counted");
    drop(held);
}

/// The API server keeps an idle connection to a webhook for 90 s and sends its next review on
/// it. A webhook that closed idle connections after the head's timeout raced those reviews:
/// the API server saw a reset, and the pod a failed admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_idle_past_the_head_timeout_serves_the_next_review() {
    let _alone = ONE_AT_A_TIME.lock().await;
    ensure_crd();
    let ns = TestNamespace::new("idle-wh");
    support::create_credential(&ns, "orders-db", true);
    let server = Server::start("ghcr.io/example/fedcred:t");
    warm_up(&tls_client(&server), &server, &ns.name).await;

    let body = serde_json::to_vec(&review(&ns.name, pod(None, "orders-db"))).unwrap();
    let mut request = format!(
        "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);

    let mut tls = server.raw_tls().await;
    for round in ["first", "after idling"] {
        if round == "after idling" {
            tokio::time::sleep(fedcred::webhook::conn::HEAD_TIMEOUT + Duration::from_secs(2)).await;
        }
        tls.write_all(&request).await.unwrap();
        tls.flush().await.unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(30), read_answer(&mut tls))
            .await
            .unwrap_or_else(|_| panic!("no answer to the review {round} within 30 s"));
        let (status, head, body) =
            answered.unwrap_or_else(|| panic!("the connection was closed {round}"));
        assert_eq!(status, 200, "{round}: {head}");
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{round}: {answer}");
        assert_eq!(
            answer["response"]["patchType"], "JSONPatch",
            "{round}: {answer}"
        );
    }
}

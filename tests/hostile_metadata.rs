//! `fedcred metadata-server` as a real process under hostile requests, sent as raw bytes so
//! that nothing normalises them: missing or wrong `Metadata-Flavor`, forwarding headers, path
//! and query tricks, huge and many headers, odd methods and protocol versions, garbage,
//! pipelining, slow and many clients. Each is refused with a client error (or gets the answer
//! GCE's protocol documents), no answer but the token's own carries the token, and the server
//! serves a valid token afterwards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use support::metadata::{Answer, Emulator};

mod support;

const TOKEN_VALUE: &str = "ya29.hostile-metadata-token-3c9e";
const SA: &str = "orders-api@acme-shop.iam.gserviceaccount.com";
const TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// A plain Secret directory with a token valid for an hour.
struct SecretDir(PathBuf);

impl SecretDir {
    fn new() -> SecretDir {
        let dir = std::env::temp_dir().join(format!(
            "fedcred-hostile-metadata-{}-{}",
            std::process::id(),
            Timestamp::now().as_nanosecond()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let expiry = (Timestamp::now() + SignedDuration::from_secs(3600)).to_string();
        for (key, value) in [
            ("access_token", TOKEN_VALUE),
            ("expiry", expiry.as_str()),
            ("token_type", "Bearer"),
            ("service_account", SA),
            ("project_id", "acme-shop"),
        ] {
            std::fs::write(dir.join(key), value).unwrap();
        }
        SecretDir(dir)
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Emulator {
    /// Sends `bytes` as they are and reads until the server closes (or 15 s pass).
    fn send(&self, bytes: &[u8]) -> Vec<u8> {
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        // The server may answer and close before reading everything (huge headers).
        let _ = stream.write_all(bytes);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        answer
    }

    /// A token request as every client library sends it.
    fn valid_token(&self) -> String {
        let answers = parse_all(&self.send(
            format!("GET {TOKEN} HTTP/1.1\r\nHost: metadata\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        ));
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].status, 200, "{:?}", answers[0]);
        let body: serde_json::Value = serde_json::from_str(&answers[0].body).unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }
}

/// The HTTP answers in `bytes`, in order (pipelined answers carry a Content-Length).
fn parse_all(bytes: &[u8]) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut rest = bytes;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(rest.len() - end - 4);
        let body_end = (end + 4 + length).min(rest.len());
        let body = String::from_utf8_lossy(&rest[end + 4..body_end]).into_owned();
        answers.push(Answer {
            status,
            headers,
            body,
        });
        rest = &rest[body_end..];
    }
    answers
}

/// A request head with `Host` and `Connection: close` added.
fn request(line: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("{line}\r\nHost: 169.254.169.254\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

const FLAVOR: (&str, &str) = ("Metadata-Flavor", "Google");

/// Each hostile request and the statuses it may get. None of them may see the token.
fn cases() -> Vec<(String, Vec<u8>, Vec<u16>)> {
    let mut cases: Vec<(String, Vec<u8>, Vec<u16>)> = Vec::new();
    let get = |path: &str| format!("GET {path} HTTP/1.1");
    let mut add = |what: &str, bytes: Vec<u8>, statuses: &[u16]| {
        cases.push((what.to_owned(), bytes, statuses.to_vec()));
    };

    // The flavor header: missing or not exactly `Google`.
    add("no header", request(&get(TOKEN), &[]), &[403]);
    for value in [
        "google",
        "GOOGLE",
        "Google ,",
        "\"Google\"",
        "Googl",
        "Google, Google",
        "x",
        "Google;q=1",
    ] {
        add(
            &format!("Metadata-Flavor: {value:?}"),
            request(&get(TOKEN), &[("Metadata-Flavor", value)]),
            &[403],
        );
    }
    add(
        "an empty flavor",
        request(&get(TOKEN), &[("Metadata-Flavor", "")]),
        &[403],
    );
    add(
        "Metadata-Flavor twice, Google second",
        request(&get(TOKEN), &[("Metadata-Flavor", "x"), FLAVOR]),
        &[403],
    );
    add(
        "Metadata_Flavor (underscore)",
        request(&get(TOKEN), &[("Metadata_Flavor", "Google")]),
        &[403],
    );
    add(
        "X-Google-Metadata-Request: True (legacy)",
        request(&get(TOKEN), &[("X-Google-Metadata-Request", "True")]),
        &[403],
    );
    add(
        "the flavor on the recursive tree missing",
        request(&get("/computeMetadata/v1/?recursive=true"), &[]),
        &[403],
    );

    // Forwarding headers: a proxy in the pod must not hand the token out.
    for (name, value) in [
        ("X-Forwarded-For", "203.0.113.7"),
        ("x-forwarded-for", "127.0.0.1"),
        ("X-FORWARDED-FOR", ""),
        ("Forwarded", "for=203.0.113.7;proto=http"),
        ("forwarded", "for=\"[2001:db8::1]\""),
    ] {
        add(
            &format!("{name}: {value}"),
            request(&get(TOKEN), &[FLAVOR, (name, value)]),
            &[403],
        );
    }
    add(
        "X-Forwarded-For on the root",
        request("GET / HTTP/1.1", &[("X-Forwarded-For", "203.0.113.7")]),
        &[403],
    );

    // Path tricks.
    for path in [
        "/computeMetadata/v1/instance/service-accounts/default/../default/token",
        "/computeMetadata/v1/instance/service-accounts/default/%2e%2e/default/token",
        "/computeMetadata/v1/instance/service-accounts/default/%2E%2E/default/token",
        "/computeMetadata/v1/instance/service-accounts/default/./token",
        "/computeMetadata/v1/instance/service-accounts/default/%2e/token",
        "/computeMetadata/v1//instance/service-accounts/default/token",
        "//computeMetadata/v1/instance/service-accounts/default/token",
        "/computeMetadata/v1/instance/service-accounts/default%2Ftoken",
        "/computeMetadata/v1/instance/service-accounts/default%5Ctoken",
        "/computeMetadata/v1/instance/service-accounts/default/token%00",
        "/computeMetadata/v1/instance/service-accounts/default/token%0d%0aX-Injected:%201",
        "/computeMetadata/v1/instance/service-accounts/default/token;jsessionid=1",
        "/computeMetadata/v1/instance/service-accounts/default/Token",
        "/computeMetadata/V1/instance/service-accounts/default/token",
        "/computeMetadata/v1/instance/service-accounts/%64efault/token%ff",
        "/computeMetadata/v1/instance/service-accounts/someone@else.iam.gserviceaccount.com/token",
        "/computeMetadata/v1/instance/service-accounts/default/identity",
        "/computeMetadata/v1/instance/service-accounts/default/identity?format=full",
        "/computeMetadata/v1/instance/attributes/ssh-keys?recursive=true&alt=json",
        "/computeMetadata/v1/instance/service-accounts/default/token/extra?recursive=true&alt=json",
        "/computeMetadata/v1/project/attributes/ssh-keys?alt=json",
        "/../../etc/passwd",
        "/computeMetadata/v1/instance/service-accounts/default/%252e%252e/token",
    ] {
        add(
            &format!("path {path}"),
            request(&get(path), &[FLAVOR]),
            &[400, 404],
        );
    }
    let long = format!("/computeMetadata/v1/{}", "a/".repeat(5000));
    add(
        "a 10 KiB path",
        request(&get(&long), &[FLAVOR]),
        &[404, 414],
    );
    let longer = format!("/computeMetadata/v1/instance/{}", "x".repeat(200 * 1024));
    add(
        "a 200 KiB path",
        request(&get(&longer), &[FLAVOR]),
        &[400, 404, 414, 431],
    );
    add(
        "wait_for_change on the token",
        request(
            &get(&format!("{TOKEN}?wait_for_change=true&timeout_sec=3600")),
            &[FLAVOR],
        ),
        &[400],
    );
    add(
        "an unencoded space in the path",
        request(
            "GET /computeMetadata/v1/instance/service-accounts/default/token x HTTP/1.1",
            &[FLAVOR],
        ),
        &[400],
    );
    add(
        "a backslash path",
        request("GET \\computeMetadata\\v1\\instance HTTP/1.1", &[FLAVOR]),
        &[400, 404],
    );

    // Methods and protocol versions.
    for method in [
        "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "get", "PROPFIND",
    ] {
        add(
            &format!("{method} on the token"),
            request(
                &format!("{method} {TOKEN} HTTP/1.1"),
                &[FLAVOR, ("Content-Length", "0")],
            ),
            &[405],
        );
    }
    add(
        "HTTP/1.0 without the flavor",
        request(&format!("GET {TOKEN} HTTP/1.0"), &[]),
        &[403],
    );
    add(
        "HTTP/9.9",
        request(&format!("GET {TOKEN} HTTP/9.9"), &[FLAVOR]),
        &[400, 505],
    );
    // The server speaks HTTP/2 with prior knowledge too (hyper's automatic protocol
    // detection): the preface gets HTTP/2 frames, not an HTTP/1 status line (0 here).
    add(
        "HTTP/2 preface",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        &[0, 400, 505],
    );

    // Garbage request lines.
    add("a bare word", b"GARBAGE\r\n\r\n".to_vec(), &[400]);
    add("a method alone", b"GET\r\n\r\n".to_vec(), &[400]);
    add(
        "a TLS ClientHello",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
        &[400],
    );
    add("NUL bytes", vec![0u8; 512], &[400]);
    add(
        "a header without a colon",
        b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n".to_vec(),
        &[400],
    );
    add(
        "a header name with a space",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n".to_vec(),
        &[400],
    );
    add("an obs-fold continuation", format!("GET {TOKEN} HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Metadata-Flavor: Google\r\nConnection: close\r\n\r\n").into_bytes(), &[400, 403]);

    // Huge and many headers.
    let big = "v".repeat(1024 * 1024);
    add(
        "a 1 MiB header",
        request(&get(TOKEN), &[FLAVOR, ("X-Pad", &big)]),
        &[400, 431],
    );
    let hundred_k = "v".repeat(100 * 1024);
    add(
        "a 100 KiB flavor value",
        request(&get(TOKEN), &[("Metadata-Flavor", &hundred_k)]),
        &[403, 431],
    );
    let many: Vec<(String, String)> = (0..500)
        .map(|i| (format!("X-H{i}"), "1".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = std::iter::once(FLAVOR)
        .chain(many.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect();
    add("500 headers", request(&get(TOKEN), &many), &[400, 431]);
    cases
}

#[test]
fn hostile_requests_are_refused_without_the_token_and_the_server_keeps_serving() {
    let secret = SecretDir::new();
    let mut emulator = Emulator::start(&secret.0);
    assert_eq!(emulator.valid_token(), TOKEN_VALUE);

    let cases = cases();
    let mut counted = 0;
    for (what, bytes, statuses) in &cases {
        counted += 1;
        let raw = emulator.send(bytes);
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains(TOKEN_VALUE), "{what}: the token in {text}");
        let answers = parse_all(&raw);
        let status = match answers.first() {
            Some(a) => Some(a.status),
            None if !raw.is_empty() => Some(0),
            None => None,
        };
        assert!(
            status.is_some_and(|s| statuses.contains(&s)),
            "{what}: answered {status:?}, wanted one of {statuses:?}: {text:.300}"
        );
        if status.is_some_and(|s| (403..=405).contains(&s)) {
            // The handler's own refusals carry the protocol's header; hyper's 4xx do not.
            assert_eq!(
                answers[0].header("metadata-flavor"),
                Some("Google"),
                "{what}"
            );
        }
        assert!(emulator.alive(), "{what}: the server exited");
    }

    // The documented answers that are not refusals, and carry no token either.
    for (what, bytes) in [
        (
            "the root without the flavor",
            request("GET / HTTP/1.1", &[]),
        ),
        (
            "the recursive tree",
            request(
                "GET /computeMetadata/v1/?recursive=true&alt=json HTTP/1.1",
                &[FLAVOR],
            ),
        ),
        (
            "the account directory, recursive",
            request(
                "GET /computeMetadata/v1/instance/service-accounts/default/?recursive=true&alt=text HTTP/1.1",
                &[FLAVOR],
            ),
        ),
        (
            "recursive twice",
            request(
                "GET /computeMetadata/v1/instance/?recursive=true&recursive=false&recursive=true HTTP/1.1",
                &[FLAVOR],
            ),
        ),
        (
            "HEAD of the token",
            request(&format!("HEAD {TOKEN} HTTP/1.1"), &[FLAVOR]),
        ),
    ] {
        counted += 1;
        let raw = emulator.send(&bytes);
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains(TOKEN_VALUE), "{what}: the token in {text}");
        assert_eq!(parse_all(&raw)[0].status, 200, "{what}: {text}");
    }
    // HTTP/1.0 with the header is a valid client (urllib and old curls send it).
    let old = parse_all(
        &emulator
            .send(format!("GET {TOKEN} HTTP/1.0\r\nMetadata-Flavor: Google\r\n\r\n").as_bytes()),
    );
    assert_eq!(old[0].status, 200);
    assert!(old[0].body.contains(TOKEN_VALUE));

    // Pipelined: each answer belongs to its own request; only the flavored one gets the token.
    counted += 1;
    let mut pipelined = Vec::new();
    pipelined.extend_from_slice(format!("GET {TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    pipelined.extend_from_slice(
        format!("GET {TOKEN} HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\n\r\n").as_bytes(),
    );
    pipelined.extend_from_slice(format!("GET {TOKEN} HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n").as_bytes());
    pipelined.extend_from_slice(b"GET /computeMetadata/v1/../v1/ HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n");
    let answers = parse_all(&emulator.send(&pipelined));
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [403, 200, 403, 404], "{answers:?}");
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(
            a.body.contains(TOKEN_VALUE),
            i == 1,
            "pipelined answer {i}: {a:?}"
        );
    }

    // Slow clients: 50 connections stuck in their headers do not hold up others, and a
    // client sending one byte at a time is still answered correctly.
    let stuck: Vec<TcpStream> = (0..50)
        .map(|_| {
            counted += 1;
            let mut s = TcpStream::connect(emulator.addr).unwrap();
            s.write_all(format!("GET {TOKEN} HTTP/1.1\r\nHost: x\r\nMetadata-Fl").as_bytes())
                .unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    assert_eq!(emulator.valid_token(), TOKEN_VALUE);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "held up by slow clients"
    );
    counted += 1;
    let mut trickle = TcpStream::connect(emulator.addr).unwrap();
    trickle
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    for byte in format!("GET {TOKEN} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").bytes() {
        trickle.write_all(&[byte]).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut answer = Vec::new();
    let _ = trickle.read_to_end(&mut answer);
    let answers = parse_all(&answer);
    assert_eq!(answers[0].status, 403, "a slow request without the flavor");
    assert!(!String::from_utf8_lossy(&answer).contains(TOKEN_VALUE));
    drop(stuck);

    // Many clients at once: every one answered.
    let addr = emulator.addr;
    let handles: Vec<_> = (0..200)
        .map(|i| {
            counted += 1;
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                let flavor = if i % 2 == 0 {
                    "Metadata-Flavor: Google\r\n"
                } else {
                    ""
                };
                s.write_all(
                    format!("GET {TOKEN} HTTP/1.1\r\nHost: x\r\n{flavor}Connection: close\r\n\r\n")
                        .as_bytes(),
                )
                .unwrap();
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                let answers = parse_all(&out);
                (
                    i,
                    answers.first().map(|a| a.status),
                    String::from_utf8_lossy(&out).contains(TOKEN_VALUE),
                )
            })
        })
        .collect();
    for h in handles {
        let (i, status, token) = h.join().unwrap();
        if i % 2 == 0 {
            assert_eq!((status, token), (Some(200), true), "client {i}");
        } else {
            assert_eq!((status, token), (Some(403), false), "client {i}");
        }
    }

    // Over HTTP/2 with prior knowledge the same checks hold.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!("http://{}{TOKEN}", emulator.addr);
    for (what, headers, status) in [
        ("HTTP/2 without the flavor", vec![], 403),
        (
            "HTTP/2 through a proxy",
            vec![FLAVOR, ("X-Forwarded-For", "203.0.113.7")],
            403,
        ),
        ("HTTP/2 with the flavor", vec![FLAVOR], 200),
    ] {
        counted += 1;
        let (got, body) = runtime.block_on(async {
            let mut request = h2.get(&url);
            for (k, v) in headers {
                request = request.header(k, v);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.version(), reqwest::Version::HTTP_2, "{what}");
            (response.status().as_u16(), response.text().await.unwrap())
        });
        assert_eq!(got, status, "{what}: {body}");
        assert_eq!(body.contains(TOKEN_VALUE), status == 200, "{what}: {body}");
    }

    assert!(emulator.alive(), "the server exited");
    assert_eq!(emulator.valid_token(), TOKEN_VALUE);
    eprintln!(
        "hostile metadata: {counted} hostile requests, {} listed cases",
        cases.len()
    );
    assert!(counted >= 100, "only {counted} hostile requests");
}

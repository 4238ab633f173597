//! The metadata emulator's Secret reader: arbitrary bytes in the Secret's files, as plain
//! files or as the kubelet's `..data` generation layout, read by `volume::read`, interpreted
//! by `SecretView::from_files` and answered for every path. Checks: what is read is exactly
//! what was written (oversized or non-UTF-8 values are errors, not truncations); a token is
//! served only with a parseable expiry at least 10 s ahead; no answer but the token's own 200
//! depends on the token's value.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use fedcred_core::metadata::protocol;
use fedcred_core::metadata::view::{KEYS, SecretView};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;

static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("fedcred-fuzz-secret-{}", std::process::id()))
});

const PATHS: &[&str] = &[
    "/computeMetadata/v1/instance/service-accounts/default/token",
    "/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
    "/computeMetadata/v1/instance/service-accounts/default/email",
    "/computeMetadata/v1/instance/service-accounts/default/scopes",
    "/computeMetadata/v1/instance/service-accounts/",
    "/computeMetadata/v1/?recursive=true",
    "/computeMetadata/v1/project/?recursive=true",
    "/computeMetadata/v1/project/project-id",
    "/computeMetadata/v1/project/numeric-project-id",
    "/computeMetadata/v1/universe/universe-domain",
];

#[derive(Arbitrary, Debug)]
struct Input {
    files: Vec<(u8, Vec<u8>)>,
    generations: bool,
    oversized: Option<u8>,
    seconds_ahead: i32,
}

fn write(dir: &Path, input: &Input) -> BTreeMap<&'static str, Vec<u8>> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut wanted = BTreeMap::new();
    for (key, bytes) in &input.files {
        wanted.insert(KEYS[*key as usize % KEYS.len()], bytes.clone());
    }
    if let Some(key) = input.oversized {
        wanted.insert(KEYS[key as usize % KEYS.len()], vec![b'a'; 64 * 1024 + 1]);
    }
    let target = if input.generations {
        let generation = dir.join("..2026_01_01_00_00_00.000000001");
        std::fs::create_dir(&generation).unwrap();
        std::os::unix::fs::symlink("..2026_01_01_00_00_00.000000001", dir.join("..data")).unwrap();
        generation
    } else {
        dir.to_owned()
    };
    for (key, bytes) in &wanted {
        std::fs::write(target.join(key), bytes).unwrap();
        if input.generations {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
        }
    }
    wanted
}

fn answers(files: &BTreeMap<String, String>, now: jiff::Timestamp) -> Vec<protocol::Reply> {
    let view = SecretView::from_files(files);
    let mut headers = HeaderMap::new();
    headers.insert("metadata-flavor", HeaderValue::from_static("Google"));
    PATHS
        .iter()
        .map(|path| {
            let uri: Uri = path.parse().unwrap();
            match protocol::route(&Method::GET, &uri, &headers) {
                Ok(served) => protocol::answer(&served, &view, now),
                Err(refusal) => protocol::refuse(refusal),
            }
        })
        .collect()
}

fuzz_target!(|input: Input| {
    let dir = &*DIR;
    let wanted = write(dir, &input);
    let read = fedcred::metadata::volume::read(dir);
    let _ = std::fs::remove_dir_all(dir);

    let bad = wanted
        .values()
        .any(|b| b.len() > 64 * 1024 || std::str::from_utf8(b).is_err());
    let files = match read {
        Err(e) => {
            assert!(bad, "a readable Secret was refused: {e}");
            return;
        }
        Ok(files) => {
            assert!(!bad, "an oversized or non-UTF-8 value was read");
            files
        }
    };
    let expected: BTreeMap<String, String> = wanted
        .iter()
        .map(|(k, v)| ((*k).to_owned(), String::from_utf8(v.clone()).unwrap()))
        .collect();
    assert_eq!(files, expected, "read back what was written");

    let view = SecretView::from_files(&files);
    let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    if let Ok(token) = view.token(now) {
        let expiry: jiff::Timestamp = files["expiry"]
            .trim()
            .parse()
            .expect("a served expiry parses");
        assert!(
            expiry.as_second() - now.as_second() >= 10,
            "served {} s before expiry",
            token.expires_in
        );
        assert!(token.expires_in >= 10);
    }

    // The same Secret with another token value: only the token's 200 may differ.
    let later =
        jiff::Timestamp::from_second(1_800_000_000 + i64::from(input.seconds_ahead)).unwrap_or(now);
    let mut other = files.clone();
    other.insert(
        "access_token".to_owned(),
        "fuzz-replacement-token".to_owned(),
    );
    let token_trimmed = files
        .get("access_token")
        .map(|t| t.trim())
        .unwrap_or_default();
    for (i, (a, b)) in answers(&files, later)
        .iter()
        .zip(answers(&other, later))
        .enumerate()
    {
        if i == 0 && a.status == StatusCode::OK && b.status == StatusCode::OK {
            let body: serde_json::Value = serde_json::from_str(&a.body).expect("token JSON");
            assert_eq!(body["access_token"], token_trimmed);
            continue;
        }
        if !token_trimmed.is_empty() {
            assert_eq!(*a, b, "{} depends on the token value", PATHS[i]);
        }
    }
});

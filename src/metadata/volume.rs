//! Reads the Secret as the kubelet mounts it, one consistent generation at a time.
//!
//! The kubelet's atomic writer keeps each generation in a timestamped directory
//! (`DIR/..2026_11_25_15_04_05.123456789/`), points `DIR/..data` at it, and exposes every key
//! as `DIR/key -> ..data/key`. An update writes a new generation, renames a fresh symlink over
//! `..data`, then deletes the old generation. Opening `DIR/key` one key at a time could mix two
//! generations, so this module resolves `..data` once, reads every key from that directory,
//! and checks that `..data` still points there afterwards; if it moved, it reads again. A
//! directory without `..data` (tests, or files copied by hand) is read as plain files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use fedcred_core::metadata::view::KEYS;

/// A key larger than this is refused: tokens are a few kilobytes, and bodies stay small.
const MAX_VALUE_BYTES: u64 = 64 * 1024;

/// How many times a read is retried when the kubelet swaps generations under it.
const ATTEMPTS: usize = 10;

/// Where one reading comes from.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    /// `..data` points at this generation directory (link target, resolved directory).
    Generation(PathBuf, PathBuf),
    /// No `..data`: the keys are plain files in the directory.
    Plain(PathBuf),
}

impl Source {
    fn dir(&self) -> &Path {
        match self {
            Source::Generation(_, dir) | Source::Plain(dir) => dir,
        }
    }
}

fn resolve(dir: &Path) -> io::Result<Source> {
    let data = dir.join("..data");
    match std::fs::read_link(&data) {
        Ok(target) => {
            let resolved = dir.join(&target);
            Ok(Source::Generation(target, resolved))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Source::Plain(dir.to_owned())),
        // `..data` exists but is not a symlink: a directory some tool created; read it as is.
        Err(e) if e.kind() == io::ErrorKind::InvalidInput && data.is_dir() => {
            Ok(Source::Plain(data))
        }
        Err(e) => Err(e),
    }
}

fn read_value(path: &Path) -> io::Result<Option<String>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_VALUE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_VALUE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {MAX_VALUE_BYTES} bytes", path.display()),
        ));
    }
    String::from_utf8(bytes).map(Some).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not UTF-8 text", path.display()),
        )
    })
}

fn read_keys(dir: &Path) -> io::Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    for key in KEYS {
        if let Some(value) = read_value(&dir.join(key))? {
            files.insert((*key).to_owned(), value);
        }
    }
    Ok(files)
}

/// Reads every key of [`KEYS`] from one generation of the Secret volume at `dir`.
pub fn read(dir: &Path) -> io::Result<BTreeMap<String, String>> {
    for _ in 0..ATTEMPTS {
        let source = resolve(dir)?;
        let files = read_keys(source.dir());
        match (&source, files) {
            (Source::Plain(_), files) => return files,
            // A generation that was current when the read began and still is after it cannot
            // have been deleted or changed in between: the kubelet never rewrites a generation,
            // and deletes one only after `..data` has moved away from it.
            (Source::Generation(..), Ok(files)) if resolve(dir)? == source => return Ok(files),
            // `..data` moved while reading (a deleted generation reads as absent keys): again.
            (Source::Generation(..), Ok(_)) => continue,
            (Source::Generation(..), Err(e)) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{} changed {ATTEMPTS} times while being read",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "fedcred-volume-{name}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn generation(dir: &Path, name: &str, pairs: &[(&str, &str)]) {
        let gen_dir = dir.join(name);
        std::fs::create_dir(&gen_dir).unwrap();
        for (k, v) in pairs {
            std::fs::write(gen_dir.join(k), v).unwrap();
        }
        let tmp = dir.join("..data_tmp");
        symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        for (k, _) in pairs {
            let link = dir.join(k);
            if link.symlink_metadata().is_err() {
                symlink(format!("..data/{k}"), link).unwrap();
            }
        }
    }

    #[test]
    fn reads_the_generation_data_points_at() {
        let dir = TempDir::new("gen");
        generation(
            &dir.0,
            "..2026_11_25_15_04_05.1",
            &[("access_token", "one"), ("expiry", "e1")],
        );
        generation(
            &dir.0,
            "..2026_11_25_15_14_05.2",
            &[("access_token", "two"), ("expiry", "e2")],
        );
        let files = read(&dir.0).unwrap();
        assert_eq!(files["access_token"], "two");
        assert_eq!(files["expiry"], "e2");
        assert!(!files.contains_key("project_id"));
    }

    #[test]
    fn reads_plain_files_when_there_is_no_data_link() {
        let dir = TempDir::new("plain");
        std::fs::write(dir.0.join("access_token"), "plain").unwrap();
        std::fs::write(dir.0.join("unrelated"), "ignored").unwrap();
        let files = read(&dir.0).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files["access_token"], "plain");
    }

    #[test]
    fn refuses_oversized_and_binary_values() {
        let dir = TempDir::new("big");
        std::fs::write(dir.0.join("access_token"), vec![b'a'; 70 * 1024]).unwrap();
        assert_eq!(read(&dir.0).unwrap_err().kind(), io::ErrorKind::InvalidData);
        std::fs::write(dir.0.join("access_token"), [0xff, 0xfe]).unwrap();
        assert_eq!(read(&dir.0).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_dangling_data_link_reads_as_an_empty_secret() {
        let dir = TempDir::new("dangling");
        symlink("..gone", dir.0.join("..data")).unwrap();
        // The link never moved, so the reading is trusted: no token, and the server says 503.
        assert!(read(&dir.0).unwrap().is_empty());
    }

    #[test]
    fn never_mixes_two_generations_while_the_kubelet_swaps() {
        let dir = TempDir::new("swap");
        generation(
            &dir.0,
            "..gen_0",
            &[("access_token", "t0"), ("expiry", "e0")],
        );
        let writer_dir = dir.0.clone();
        let writer = std::thread::spawn(move || {
            for n in 1..300 {
                let name = format!("..gen_{n}");
                let token = format!("t{n}");
                let expiry = format!("e{n}");
                generation(
                    &writer_dir,
                    &name,
                    &[("access_token", &token), ("expiry", &expiry)],
                );
                // Like the kubelet: the old generation goes once `..data` has moved.
                std::fs::remove_dir_all(writer_dir.join(format!("..gen_{}", n - 1))).unwrap();
                // Far faster than any kubelet, yet slow enough for a read to finish.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        let mut reads = 0;
        while !writer.is_finished() {
            let files = read(&dir.0).unwrap();
            let token = &files["access_token"][1..];
            assert_eq!(token, &files["expiry"][1..], "mixed generations: {files:?}");
            reads += 1;
        }
        writer.join().unwrap();
        assert!(reads > 0);
        assert_eq!(read(&dir.0).unwrap()["access_token"], "t299");
    }
}

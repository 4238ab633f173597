//! A pod run as local processes, the way a kubelet would run it: the containers of a pod as
//! the API server stored it, started with exactly their command, arguments and environment,
//! with the Secret volume laid out as the kubelet's atomic writer lays it out.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::TestNamespace;

/// A fresh path under the temporary directory.
pub fn unique(prefix: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "fedcred-{prefix}-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        jiff::Timestamp::now().as_nanosecond()
    ))
}

/// A Secret volume as the kubelet's atomic writer lays it out: `key -> ..data/key`,
/// `..data -> ..<timestamp>`, swapped by renaming a fresh symlink over `..data`.
pub struct SecretVolume {
    pub dir: PathBuf,
    generation: u32,
    current: Option<PathBuf>,
    keys: Vec<String>,
    published: BTreeMap<String, String>,
}

impl SecretVolume {
    pub fn kubelet() -> SecretVolume {
        let dir = unique("secret");
        std::fs::create_dir_all(&dir).unwrap();
        SecretVolume {
            dir,
            generation: 0,
            current: None,
            keys: Vec::new(),
            published: BTreeMap::new(),
        }
    }

    /// A plain directory of files, as a test or a hand-made copy would have it.
    pub fn plain(pairs: &[(&str, &str)]) -> SecretVolume {
        let volume = SecretVolume::kubelet();
        for (key, value) in pairs {
            std::fs::write(volume.dir.join(key), value).unwrap();
        }
        volume
    }

    /// What the kubelet does when the Secret changes: write a new timestamped generation,
    /// point `..data` at it by renaming a fresh symlink over it, fix the key links, then
    /// delete the old generation.
    pub fn publish(&mut self, pairs: &[(&str, &str)]) {
        self.generation += 1;
        let name = format!(
            "..2026_11_25_15_04_05.{:09}",
            self.generation * 1000 + jiff::Timestamp::now().subsec_nanosecond() as u32 % 1000
        );
        let generation = self.dir.join(&name);
        std::fs::create_dir(&generation).unwrap();
        for (key, value) in pairs {
            std::fs::write(generation.join(key), value).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        let keys: Vec<String> = pairs.iter().map(|(k, _)| (*k).to_owned()).collect();
        for key in &keys {
            let link = self.dir.join(key);
            if link.symlink_metadata().is_err() {
                symlink(format!("..data/{key}"), link).unwrap();
            }
        }
        for stale in self.keys.iter().filter(|k| !keys.contains(k)) {
            let _ = std::fs::remove_file(self.dir.join(stale));
        }
        if let Some(old) = self.current.replace(generation) {
            std::fs::remove_dir_all(old).unwrap();
        }
        self.keys = keys;
        self.published = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// Publishes the Secret `name` of `ns` as it is now in the API server, when it differs
    /// from what was published last, as the kubelet's periodic sync does. Returns whether it
    /// published.
    pub fn sync(&mut self, ns: &TestNamespace, name: &str) -> bool {
        let Some(data) = secret_data(ns, name) else {
            return false;
        };
        if data == self.published {
            return false;
        }
        let pairs: Vec<(&str, &str)> = data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.publish(&pairs);
        true
    }

    /// The value of `key` as published last.
    pub fn published(&self, key: &str) -> Option<&str> {
        self.published.get(key).map(String::as_str)
    }
}

impl Drop for SecretVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The data of Secret `name` in `ns`, decoded; `None` while it does not exist.
pub fn secret_data(ns: &TestNamespace, name: &str) -> Option<BTreeMap<String, String>> {
    secret_data_in(&ns.name, name)
}

/// The data of Secret `name` in namespace `namespace`, decoded; `None` while it does not exist.
pub fn secret_data_in(namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
    use base64::Engine as _;
    let out = super::kubectl(
        &["get", "secret", name, "-n", namespace, "-o", "json"],
        None,
    );
    if !out.ok {
        return None;
    }
    let secret: Value = serde_json::from_str(&out.stdout).unwrap();
    Some(
        secret["data"]
            .as_object()?
            .iter()
            .map(|(k, v)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap();
                (k.clone(), String::from_utf8(bytes).unwrap())
            })
            .collect(),
    )
}

/// A pod as the API server stored it.
pub struct StoredPod {
    pub json: Value,
}

impl StoredPod {
    pub fn get(ns: &TestNamespace, name: &str) -> StoredPod {
        let out = ns.kubectl(&["get", "pod", name, "-o", "json"], None);
        StoredPod {
            json: serde_json::from_str(&out.success()).unwrap(),
        }
    }

    /// The init container or container called `name`.
    pub fn container(&self, name: &str) -> &Value {
        let spec = &self.json["spec"];
        ["initContainers", "containers"]
            .iter()
            .filter_map(|list| spec[list].as_array())
            .flatten()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("the stored pod has no container {name}"))
    }

    /// Names of the init containers that run beside the app (native sidecars).
    pub fn sidecars(&self) -> Vec<String> {
        self.json["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["restartPolicy"] == "Always")
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// A container's environment. Only literal values are supported: a `valueFrom` would need
    /// the kubelet's resolution, which nothing fedcred injects relies on.
    pub fn env(&self, container: &str) -> Vec<(String, String)> {
        self.container(container)["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let value = e["value"].as_str().unwrap_or_else(|| {
                    panic!("env {} of {container} is not a literal value", e["name"])
                });
                (e["name"].as_str().unwrap().to_owned(), value.to_owned())
            })
            .collect()
    }

    /// `(mountPath, volume name)` of each of a container's volume mounts.
    pub fn mounts(&self, container: &str) -> Vec<(String, String)> {
        self.container(container)["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["mountPath"].as_str().unwrap().to_owned(),
                    m["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// The Secret a volume of the pod shows; `None` for other kinds of volume.
    pub fn volume_secret(&self, volume: &str) -> Option<String> {
        self.json["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == volume)
            .and_then(|v| v["secret"]["secretName"].as_str())
            .map(str::to_owned)
    }

    /// What the container runs: its `command`, or else the image's entrypoint from
    /// `entrypoints` (image name without tag → local program), followed by its `args`.
    pub fn argv(&self, container: &str, entrypoints: &[(&str, &Path)]) -> Vec<String> {
        let c = self.container(container);
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        };
        let mut argv = strings(&c["command"]);
        if argv.is_empty() {
            let image = c["image"].as_str().unwrap();
            let repository = image.rsplit_once(':').map_or(image, |(r, _)| r);
            let program = entrypoints
                .iter()
                .find(|(r, _)| *r == repository)
                .unwrap_or_else(|| panic!("no local entrypoint for image {image}"))
                .1;
            argv.push(program.display().to_string());
        }
        argv.extend(strings(&c["args"]));
        argv
    }
}

/// Replaces each container path in `mounts` by its local directory in `value`.
pub fn map_paths(value: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut out = value.to_owned();
    for (container_path, local) in mounts {
        out = out.replace(container_path.as_str(), &local.display().to_string());
    }
    out
}

/// A local process standing in for a container; killed when dropped, its output shown when
/// the test fails.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Runs `argv` with exactly `env` (nothing inherited but PATH, as a container has its
    /// image's PATH).
    pub fn start(name: &str, argv: &[String], env: &[(String, String)]) -> Process {
        let log = unique(&format!("{name}-log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot run {}: {e}", argv[0]));
        Process {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the logs unless the process still runs.
    pub fn assert_running(&mut self) {
        assert!(self.running(), "{} exited:\n{}", self.name, self.logs());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The exit code once the process has exited; `None` while it runs or when a signal
    /// ended it.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .and_then(|status| status.code())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.name, self.logs());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs an exec probe's command until it succeeds, as the kubelet does with a startup probe;
/// panics after `limit`.
pub fn wait_for_exec_probe(
    probe: &Value,
    entrypoints: &[(&str, &Path)],
    process: &mut Process,
    limit: Duration,
) {
    let mut argv: Vec<String> = probe["exec"]["command"]
        .as_array()
        .expect("an exec probe")
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    // The probe names the binary by its path in the image.
    if let Some((_, local)) = entrypoints
        .iter()
        .find(|(image_path, _)| *image_path == argv[0])
    {
        argv[0] = local.display().to_string();
    }
    let start = Instant::now();
    loop {
        let ok = Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            // On a shared host another process may answer on the container's port: the probe
            // proves something listens, this proves it is ours.
            std::thread::sleep(Duration::from_millis(200));
            assert!(
                process.running(),
                "{} exited although its probe passed: another process holds its port?\n{}",
                process.name,
                process.logs()
            );
            return;
        }
        process.assert_running();
        assert!(
            start.elapsed() < limit,
            "the startup probe of {} did not pass within {limit:?}:\n{}",
            process.name,
            process.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The Python of the test venv (google-auth and requests), from `FEDCRED_TEST_VENV`.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("FEDCRED_TEST_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("FEDCRED_CACHE").map(|c| PathBuf::from(c).join("venv")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fedcred/venv")))
        .expect("FEDCRED_TEST_VENV or HOME is set");
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no Python venv at {}: run hack/install-tools.sh or set FEDCRED_TEST_VENV",
        venv.display()
    );
    python
}

/// Runs google-auth's application-default credentials (`tests/python/metadata_adc.py`) with
/// ONLY the environment the webhook injects for the metadata server at `addr`, plus `extra`
/// and an empty HOME, as in a fresh container; returns what it found.
pub fn google_auth_adc(addr: &str, extra: &[(String, String)]) -> serde_json::Value {
    let env = fedcred_core::metadata::injected_env(addr)
        .into_iter()
        .chain(extra.iter().cloned());
    google_auth_adc_with(env)
}

/// google-auth's application-default credentials (`tests/python/metadata_adc.py`) with exactly
/// `env` and an empty HOME; returns what it found.
pub fn google_auth_adc_with(env: impl IntoIterator<Item = (String, String)>) -> serde_json::Value {
    let script = super::repo_root().join("tests/python/metadata_adc.py");
    let stdout = run_with_only(Command::new(venv_python()).arg(script), env, "google-auth");
    serde_json::from_slice(&stdout).unwrap()
}

/// Runs `command` with exactly `env` and an empty HOME, as in a fresh container; returns its
/// stdout once it succeeded (`what` failed, with its output, if not).
pub fn run_with_only(
    command: &mut Command,
    env: impl IntoIterator<Item = (String, String)>,
    what: &str,
) -> Vec<u8> {
    let home = unique("home");
    std::fs::create_dir_all(&home).unwrap();
    let output = command
        .env_clear()
        .envs(env)
        .env("HOME", &home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&home);
    assert!(
        output.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

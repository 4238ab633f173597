//! The local stand-ins for what a node gives an injected pod, for the end-to-end AlloyDB run:
//! a real PostgreSQL server from Debian, the real `alloydb-auth-proxy` binary, a directory laid
//! out like the kubelet's Secret volume, and the pod's containers run as local processes with
//! exactly the command, arguments and environment the API server stored.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A free TCP port on 127.0.0.1 (free now; the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn unique_dir(prefix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// The real `alloydb-auth-proxy`: `$FEDCRED_ALLOYDB_PROXY` (exported by `hack/test.sh`), else
/// the one `hack/build-alloydb-proxy.sh` caches.
pub fn proxy_binary() -> PathBuf {
    let candidate = std::env::var_os("FEDCRED_ALLOYDB_PROXY")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("FEDCRED_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fedcred"))
                })?;
            Some(cache.join("bin/alloydb-auth-proxy"))
        });
    match candidate {
        Some(path) if path.is_file() => path,
        other => panic!(
            "the alloydb-auth-proxy binary is missing ({other:?}): build it with \
             hack/build-alloydb-proxy.sh (hack/test.sh does) or point FEDCRED_ALLOYDB_PROXY at it"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The directory of Debian's PostgreSQL server binaries (the newest major version).
fn postgres_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("pg_ctl").is_file())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().expect(
        "PostgreSQL server binaries under /usr/lib/postgresql/*/bin (hack/install-tools.sh \
         installs the Debian package postgresql)",
    )
}

/// A real PostgreSQL server on 127.0.0.1 with trust authentication, stopped when dropped.
/// PostgreSQL refuses to run as root, so as root it runs as the `postgres` system user.
pub struct Postgres {
    pub addr: SocketAddr,
    data: PathBuf,
    root: PathBuf,
    bin: PathBuf,
    as_root: bool,
}

impl Postgres {
    fn command(bin: &Path, as_root: bool, program: &str) -> Command {
        let program = bin.join(program);
        if as_root {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    fn run(cmd: &mut Command, what: &str) {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Initialises a fresh cluster, starts it and creates a login role named `role`.
    pub fn start(role: &str) -> Postgres {
        let bin = postgres_bin();
        let as_root = is_root();
        let root = unique_dir("fedcred-pg");
        let data = root.join("data");
        if as_root {
            Self::run(
                Command::new("chown").args(["postgres:postgres"]).arg(&root),
                "chown of the PostgreSQL directory",
            );
        }
        Self::run(
            Self::command(&bin, as_root, "initdb")
                .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
                .arg(&data),
            "initdb",
        );
        let port = free_port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            root.display()
        );
        Self::run(
            Self::command(&bin, as_root, "pg_ctl")
                .args(["-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(root.join("postgres.log"))
                .args(["-o", &options, "start"]),
            "pg_ctl start",
        );
        let postgres = Postgres {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            data,
            root,
            bin,
            as_root,
        };
        let out = postgres.psql_as_superuser(&format!("CREATE ROLE \"{role}\" LOGIN"));
        assert!(
            out.status.success(),
            "creating the role: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        postgres
    }

    /// Runs `sql` as the superuser over TCP, bypassing every proxy.
    pub fn psql_as_superuser(&self, sql: &str) -> Output {
        Command::new("psql")
            .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-U", "postgres"])
            .args([
                "-p",
                &self.addr.port().to_string(),
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .output()
            .expect("psql runs")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Self::command(&self.bin, self.as_root, "pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() {
            eprintln!("--- postgres log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A directory laid out like the kubelet's Secret volume: one symlink per key into `..data`,
/// itself a symlink to a timestamped directory that is swapped atomically on every change.
pub struct SecretVolume {
    pub dir: PathBuf,
    current: BTreeMap<String, String>,
    generation: u64,
}

impl SecretVolume {
    pub fn new(data: &BTreeMap<String, String>) -> SecretVolume {
        let mut volume = SecretVolume {
            dir: unique_dir("fedcred-secret-volume"),
            current: BTreeMap::new(),
            generation: 0,
        };
        volume.update(data);
        volume
    }

    /// Writes `data` as the kubelet's atomic writer does; a no-op when nothing changed.
    pub fn update(&mut self, data: &BTreeMap<String, String>) {
        use std::os::unix::fs::symlink;
        if *data == self.current && self.generation > 0 {
            return;
        }
        self.generation += 1;
        let stamp = format!(
            "..{}_{:06}",
            jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S"),
            self.generation
        );
        let fresh = self.dir.join(&stamp);
        std::fs::create_dir(&fresh).expect("the timestamped directory");
        for (key, value) in data {
            std::fs::write(fresh.join(key), value).expect("a key's file");
        }
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&stamp, &tmp).expect("the ..data_tmp symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("the atomic ..data swap");
        for key in data.keys() {
            let link = self.dir.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(key), &link).expect("a key's symlink");
            }
        }
        for key in self.current.keys().filter(|k| !data.contains_key(*k)) {
            let _ = std::fs::remove_file(self.dir.join(key));
        }
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(self.dir.join(old));
        }
        self.current = data.clone();
    }
}

impl Drop for SecretVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How images map to local files: each image's entrypoint, and each volume mount path to a
/// local directory.
pub struct Node {
    /// Image reference → the local binary its entrypoint (or a `command[0]` path in it) is.
    pub images: BTreeMap<String, BTreeMap<String, PathBuf>>,
    /// Image reference → the path of its entrypoint inside the image.
    pub entrypoints: BTreeMap<String, String>,
    /// Volume name → local directory.
    pub volumes: BTreeMap<String, PathBuf>,
}

/// One container of the stored pod, resolved to a local command line.
#[derive(Debug)]
pub struct LocalContainer {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Node {
    /// Resolves `container` of the stored pod: its `command` (or the image's entrypoint),
    /// `args` and `env`, with mount paths replaced by the local directories of their volumes.
    pub fn resolve(&self, container: &Value) -> LocalContainer {
        let name = container["name"].as_str().unwrap_or_default().to_owned();
        let image = container["image"]
            .as_str()
            .expect("the container has an image");
        let files = self
            .images
            .get(image)
            .unwrap_or_else(|| panic!("no local files for image {image}"));
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        let mut command = strings(&container["command"]);
        if command.is_empty() {
            command.push(
                self.entrypoints
                    .get(image)
                    .unwrap_or_else(|| panic!("no entrypoint known for image {image}"))
                    .clone(),
            );
        }
        let program = files
            .get(&command[0])
            .unwrap_or_else(|| panic!("{image} has no local file for {}", command[0]))
            .clone();
        let mounts: Vec<(String, PathBuf)> = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            // Volumes without a local directory (the API server's projected service-account
            // token) are not referred to by the sidecars' arguments.
            .filter_map(|m| {
                let local = self.volumes.get(m["name"].as_str()?)?;
                Some((m["mountPath"].as_str()?.to_owned(), local.clone()))
            })
            .collect();
        let map_paths = |s: String| -> String {
            mounts.iter().fold(s, |s, (mount, local)| {
                if s == *mount || s.starts_with(&format!("{mount}/")) {
                    s.replacen(mount.as_str(), &local.display().to_string(), 1)
                } else {
                    s
                }
            })
        };
        let mut args: Vec<String> = command[1..].to_vec();
        args.extend(strings(&container["args"]));
        let env = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let value = e["value"].as_str().unwrap_or_else(|| {
                    panic!("env {} of {name} is not a literal value", e["name"])
                });
                (
                    e["name"].as_str().unwrap().to_owned(),
                    map_paths(value.to_owned()),
                )
            })
            .collect();
        LocalContainer {
            name,
            program,
            args: args.into_iter().map(map_paths).collect(),
            env,
        }
    }
}

/// A container running as a local process with only its own environment, as in a pod.
/// Killed when dropped.
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(container: &LocalContainer) -> Process {
        // In the evidence directory when there is one, so the run's secrecy scan reads it.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let log = super::controller::log_dir().join(format!(
            "container-{}-{}-{nanos}.log",
            container.name,
            std::process::id()
        ));
        let file = std::fs::File::create(&log).expect("a container log");
        let child = Command::new(&container.program)
            .args(&container.args)
            .env_clear()
            .envs(container.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{} ({:?}) runs: {e}", container.name, container.program));
        Process {
            name: container.name.clone(),
            child,
            log,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited with {status}:\n{}", self.name, self.logs());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.logs());
        }
        if std::env::var_os("FEDCRED_EVIDENCE_DIR").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some`, panicking with `what` after `limit`.
pub fn poll<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

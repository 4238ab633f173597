//! `fedcred controller` as a real process against a test control plane and cloud.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::cloud::Cloud;

/// A running `fedcred controller`, SIGKILLed when dropped; a failing test prints its log.
pub struct ControllerProcess {
    child: Option<Child>,
    /// The name it goes by in the Lease.
    pub identity: String,
    pub log: PathBuf,
    /// Port of /healthz, /readyz and /metrics.
    pub metrics_port: u16,
    /// How many of the last log lines a failing test prints; all when `None`.
    panic_tail: Option<usize>,
}

/// How to start a controller: [`Launch::new`], then [`Launch::watching`] or [`Launch::command`],
/// then [`Launch::start`].
pub struct Launch<'a> {
    cloud: &'a Cloud,
    /// The arguments before the Google URLs, starting with the subcommand.
    command: Vec<String>,
    /// The arguments after the Google URLs.
    extra: Vec<String>,
    /// Set before KUBECONFIG, AWS_REGION, AWS_EC2_METADATA_DISABLED and RUST_LOG, which win.
    env: Vec<(String, String)>,
    /// Unset in the controller's environment.
    env_removed: Vec<String>,
    kubeconfig: PathBuf,
    rust_log: String,
    identity: String,
    log_stem: String,
    panic_tail: Option<usize>,
    /// The port the controller is to serve /healthz, /readyz and /metrics on.
    pub metrics_port: u16,
}

impl<'a> Launch<'a> {
    /// A controller of the test control plane using `cloud`, logging at
    /// `info,fedcred=debug`; it has no arguments yet.
    pub fn new(cloud: &'a Cloud) -> Launch<'a> {
        Launch {
            cloud,
            command: Vec::new(),
            extra: Vec::new(),
            env: Vec::new(),
            env_removed: Vec::new(),
            kubeconfig: super::kubeconfig(),
            rust_log: "info,fedcred=debug".to_owned(),
            identity: String::new(),
            log_stem: "controller".to_owned(),
            panic_tail: None,
            metrics_port: super::free_port(),
        }
    }

    /// Watches `namespace` only, electing its leader with a Lease there as `identity`, and
    /// serves metrics on loopback.
    pub fn watching(mut self, namespace: &str, identity: &str) -> Self {
        self.command = [
            "controller",
            "--namespace",
            namespace,
            "--lease-namespace",
            namespace,
            "--identity",
            identity,
            "--metrics-address",
            &format!("127.0.0.1:{}", self.metrics_port),
        ]
        .map(str::to_owned)
        .to_vec();
        self.identity = identity.to_owned();
        self.log_stem = format!("{namespace}-{identity}");
        self
    }

    /// Runs the binary with exactly these arguments (and the Google URLs after them), as a
    /// replica that goes by `identity` in the Lease.
    pub fn command(mut self, identity: &str, args: Vec<String>) -> Self {
        self.command = args;
        self.identity = identity.to_owned();
        self
    }

    /// Arguments after the Google URLs.
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.extra.extend(extra.iter().map(|a| (*a).to_owned()));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A controller with no AWS credentials of its own, as on a node without an instance
    /// role: none of the variables of the SDK's sources, and a home without `~/.aws` (IMDS is
    /// disabled for every controller).
    pub fn without_aws_credentials(mut self, empty_home: &std::path::Path) -> Self {
        self.env_removed.extend(
            [
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
                "AWS_PROFILE",
                "AWS_SHARED_CREDENTIALS_FILE",
                "AWS_CONFIG_FILE",
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_ROLE_ARN",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            ]
            .map(str::to_owned),
        );
        self.env("HOME", &empty_home.to_string_lossy())
    }

    /// Another control plane than the one `hack/test.sh` started.
    pub fn kubeconfig(mut self, path: impl Into<PathBuf>) -> Self {
        self.kubeconfig = path.into();
        self
    }

    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_owned();
        self
    }

    /// The log is `fedcred-<stem>-<pid>-<n>.log`.
    pub fn log_stem(mut self, stem: impl Into<String>) -> Self {
        self.log_stem = stem.into();
        self
    }

    /// A failing test prints only the last `lines` of the log.
    pub fn panic_tail(mut self, lines: usize) -> Self {
        self.panic_tail = Some(lines);
        self
    }

    pub fn start(self) -> ControllerProcess {
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let log = log_dir().join(format!(
            "fedcred-{}-{}-{}.log",
            self.log_stem,
            std::process::id(),
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&log).expect("controller log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_fedcred"));
        for name in &self.env_removed {
            command.env_remove(name);
        }
        let child = command
            .args(&self.command)
            .args(["--google-sts-url", &self.cloud.google.sts_url()])
            .args([
                "--google-iam-credentials-url",
                &self.cloud.google.iam_credentials_url(),
            ])
            // The doubles issue tokens of a few seconds to compress time; the default floor
            // (a minute) would refuse them.
            .args(["--min-token-seconds", "5"])
            // Moto, the Google doubles and the suite's gates all listen on loopback: the
            // admin's allow-list for endpoints that resources name.
            .args(["--allow-endpoint", "http://127.0.0.1:*"])
            .args(&self.extra)
            .envs(self.env)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("the fedcred binary runs");
        ControllerProcess {
            child: Some(child),
            identity: self.identity,
            log,
            metrics_port: self.metrics_port,
            panic_tail: self.panic_tail,
        }
    }
}

impl ControllerProcess {
    /// Starts a controller watching `namespace` only, electing its leader with a Lease there.
    pub fn start(
        namespace: &str,
        cloud: &Cloud,
        identity: &str,
        extra: &[&str],
    ) -> ControllerProcess {
        super::ensure_crd();
        Launch::new(cloud)
            .watching(namespace, identity)
            .args(extra)
            .start()
    }

    /// GET of a path on the metrics port: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics_port);
        match reqwest::get(&url).await {
            Ok(resp) => (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            ),
            Err(e) => (0, e.to_string()),
        }
    }

    /// The body of /metrics; empty when it does not answer.
    pub async fn metrics(&self) -> String {
        match self.get("/metrics").await {
            (0, _) => String::new(),
            (_, body) => body,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// SIGKILL: no chance to clean up, as when a node dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

/// Where controller logs go: `FEDCRED_EVIDENCE_DIR` when set, so that the secrecy scan at the
/// end of a test run reads every one of them; else the temporary directory.
pub fn log_dir() -> PathBuf {
    match std::env::var_os("FEDCRED_EVIDENCE_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            dir
        }
        None => std::env::temp_dir(),
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let logs = self.logs();
            match self.panic_tail {
                None => eprintln!("--- controller {} log ---\n{logs}", self.identity),
                Some(lines) => {
                    let tail: Vec<&str> = logs.lines().rev().take(lines).collect();
                    eprintln!("--- controller {} log (last lines) ---", self.identity);
                    for line in tail.into_iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

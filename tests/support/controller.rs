//! `fedcred controller` as a real process against the test control plane and cloud.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::cloud::Cloud;

pub struct ControllerProcess {
    child: Option<Child>,
    pub identity: String,
    pub log: PathBuf,
    /// Port of /healthz, /readyz and /metrics.
    pub metrics_port: u16,
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
        let log = log_dir().join(format!(
            "fedcred-{namespace}-{identity}-{}-{}.log",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let file = std::fs::File::create(&log).expect("controller log file");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_fedcred"))
            .args([
                "controller",
                "--namespace",
                namespace,
                "--lease-namespace",
                namespace,
                "--identity",
                identity,
            ])
            .args(["--metrics-address", &format!("127.0.0.1:{port}")])
            .args(["--google-sts-url", &cloud.google.sts_url()])
            .args([
                "--google-iam-credentials-url",
                &cloud.google.iam_credentials_url(),
            ])
            .args(extra)
            .env("KUBECONFIG", super::kubeconfig())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "info,fedcred=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("the fedcred binary runs");
        ControllerProcess {
            child: Some(child),
            identity: identity.to_owned(),
            log,
            metrics_port: port,
        }
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

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&mut self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    /// SIGKILL: no chance to clean up, as when a node dies.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        self.signal("-TERM");
        let Some(mut child) = self.child.take() else {
            return false;
        };
        for _ in 0..100 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
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
            eprintln!("--- controller {} log ---\n{}", self.identity, self.logs());
        }
    }
}

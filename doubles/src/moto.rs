//! A real moto server (AWS STS and IAM in Python) for tests: started from the project's Python
//! venv on a free loopback port, killed when the handle drops. moto does not check SigV4
//! signatures, which is why the STS double verifies them itself.
//!
//! The venv is `$FEDCRED_TEST_VENV`, else `$FEDCRED_CACHE/venv`, else
//! `$HOME/.cache/fedcred/venv` (what `hack/install-tools.sh` prepares).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::aws::xml_text;

/// How long moto may take to answer after starting (it imports a lot of Python).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// `moto_server`'s entry point plus a watchdog thread that ends the server when its parent (the
/// test process) is gone, so a test binary killed outright leaves no server behind; `Drop` kills
/// it in every other case.
const WATCHED_MOTO_SERVER: &str = "\
import os, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
sys.exit(main())
";

/// The Python venv holding moto and botocore, if one is found.
pub fn venv_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("FEDCRED_TEST_VENV").map(PathBuf::from),
        std::env::var_os("FEDCRED_CACHE").map(|c| PathBuf::from(c).join("venv")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fedcred/venv")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|venv| venv.join("bin/moto_server").is_file())
}

/// A running `moto_server`. Dropping it kills the process.
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

/// Temporary AWS credentials moto issued. `Debug` shows only the key id and ARN.
#[derive(Clone)]
pub struct TemporaryCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`.
    pub arn: String,
}

impl fmt::Debug for TemporaryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TemporaryCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("arn", &self.arn)
            .finish_non_exhaustive()
    }
}

impl Moto {
    /// Starts moto's server (`moto_server -H 127.0.0.1 -p PORT`, run through the venv's Python
    /// with a parent watchdog) on a free port and blocks until it answers HTTP (up to a minute).
    /// Blocking: from async code use [`Moto::start_async`].
    pub fn start() -> io::Result<Moto> {
        let venv = venv_dir().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no moto_server: set FEDCRED_TEST_VENV to a venv with moto[server] (hack/install-tools.sh \
                 prepares $HOME/.cache/fedcred/venv)",
            )
        })?;
        let mut last_error = None;
        // A free port can be taken between our probe and moto's bind: try a few.
        for _ in 0..3 {
            match Self::start_once(&venv) {
                Ok(moto) => return Ok(moto),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("moto did not start")))
    }

    /// [`Moto::start`] on the blocking thread pool.
    pub async fn start_async() -> io::Result<Moto> {
        tokio::task::spawn_blocking(Moto::start)
            .await
            .map_err(io::Error::other)?
    }

    fn start_once(venv: &std::path::Path) -> io::Result<Moto> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log =
            std::env::temp_dir().join(format!("fedcred-moto-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(venv.join("bin/python"))
            .args([
                "-c",
                WATCHED_MOTO_SERVER,
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()?;
        let mut moto = Moto { child, port, log };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = moto.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "moto_server exited with {status} before answering: {}",
                    moto.log_tail()
                )));
            }
            if moto.answers() {
                return Ok(moto);
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "moto_server did not answer within {STARTUP_TIMEOUT:?}: {}",
                        moto.log_tail()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether moto answers an HTTP request.
    fn answers(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Calls STS `AssumeRoleWithWebIdentity` (unsigned, as the real call is) for `role_arn` and
    /// `session_name`; moto accepts any web identity token.
    pub async fn assume_role_with_web_identity(
        &self,
        role_arn: &str,
        session_name: &str,
    ) -> io::Result<TemporaryCredentials> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRoleWithWebIdentity")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", role_arn)
            .append_pair("RoleSessionName", session_name)
            .append_pair("WebIdentityToken", "fedcred-doubles-test-token")
            .finish();
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(io::Error::other)?
            .post(self.url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(io::Error::other)?;
        let status = response.status();
        let xml = response.text().await.map_err(io::Error::other)?;
        if !status.is_success() {
            return Err(io::Error::other(format!(
                "AssumeRoleWithWebIdentity answered {status}: {}",
                xml_text(&xml, "Message").unwrap_or_default()
            )));
        }
        let field = |tag: &str| {
            xml_text(&xml, tag).ok_or_else(|| {
                io::Error::other(format!("AssumeRoleWithWebIdentity answer has no <{tag}>"))
            })
        };
        Ok(TemporaryCredentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: field("SessionToken")?,
            arn: field("Arn")?,
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

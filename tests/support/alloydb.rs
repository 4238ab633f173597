//! What the end-to-end AlloyDB run needs besides a pod run as local processes
//! ([`super::pod`]): a real PostgreSQL server from Debian (and MariaDB for Cloud SQL for
//! MySQL), the real `alloydb-auth-proxy` and `cloud-sql-proxy` binaries, and the kubelet's
//! `httpGet` startup probe.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fedcred_doubles::GoogleDoubles;
use fedcred_doubles::alloydb::{AlloyDbDoubles, AuthType, Connection, Outcome};
use serde_json::Value;

use super::free_port;
use super::pod::{Process, unique};

/// The real `alloydb-auth-proxy`: `$FEDCRED_ALLOYDB_PROXY` (exported by `hack/test.sh`), else
/// the one `hack/build-alloydb-proxy.sh` caches.
pub fn proxy_binary() -> PathBuf {
    cached_binary(
        "FEDCRED_ALLOYDB_PROXY",
        "alloydb-auth-proxy",
        "build-alloydb-proxy.sh",
    )
}

/// The real Cloud SQL Auth Proxy v2: `$FEDCRED_CLOUDSQL_PROXY` (exported by `hack/test.sh`),
/// else the one `hack/build-cloudsql-proxy.sh` caches.
pub fn cloudsql_proxy_binary() -> PathBuf {
    cached_binary(
        "FEDCRED_CLOUDSQL_PROXY",
        "cloud-sql-proxy",
        "build-cloudsql-proxy.sh",
    )
}

/// `$variable`, else `name` in the cache's `bin/`; panics naming the script that builds it.
fn cached_binary(variable: &str, name: &str, script: &str) -> PathBuf {
    let candidate = std::env::var_os(variable).map(PathBuf::from).or_else(|| {
        let cache = std::env::var_os("FEDCRED_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fedcred"))
            })?;
        Some(cache.join("bin").join(name))
    });
    match candidate {
        Some(path) if path.is_file() => path,
        other => panic!(
            "the {name} binary is missing ({other:?}): build it with hack/{script} \
             (hack/test.sh does) or point {variable} at it"
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
        let root = unique("postgres");
        std::fs::create_dir_all(&root).expect("a directory for PostgreSQL");
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

/// A real MariaDB server from Debian on 127.0.0.1, the MySQL-compatible peer of the Cloud SQL
/// for MySQL double, stopped when dropped. As root it runs with `--user=root`.
pub struct MariaDb {
    pub addr: SocketAddr,
    root: PathBuf,
    server: std::process::Child,
}

impl MariaDb {
    /// Initialises a fresh data directory, starts the server and creates `user`, who logs in
    /// from anywhere without a password (the Cloud SQL instance double has checked who it is).
    pub fn start(user: &str) -> MariaDb {
        let root = unique("mariadb");
        let data = root.join("data");
        std::fs::create_dir_all(&data).expect("a directory for MariaDB");
        let as_root: &[&str] = if is_root() { &["--user=root"] } else { &[] };
        Postgres::run(
            Command::new("mariadb-install-db")
                .args([
                    "--no-defaults",
                    "--skip-test-db",
                    "--auth-root-authentication-method=normal",
                ])
                .arg(format!("--datadir={}", data.display()))
                .args(as_root),
            "mariadb-install-db (hack/install-tools.sh installs the Debian package mariadb-server)",
        );
        let port = free_port();
        let socket = root.join("mysqld.sock");
        let server = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!(
                "--pid-file={}",
                root.join("mariadbd.pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                root.join("mariadbd.log").display()
            ))
            .args([
                &format!("--port={port}"),
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
            ])
            .args(["--innodb-buffer-pool-size=16M", "--skip-name-resolve"])
            .args(as_root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd starts (hack/install-tools.sh installs mariadb-server)");
        let mariadb = MariaDb {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            root,
            server,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = mariadb.as_root(&format!("CREATE USER IF NOT EXISTS '{user}'@'%'"));
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "MariaDB did not accept connections within 60 s: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                mariadb.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        mariadb
    }

    /// Runs `sql` as the server's root over its own socket, bypassing every proxy.
    fn as_root(&self, sql: &str) -> Output {
        Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                self.root.join("mysqld.sock").display()
            ))
            .args(["-u", "root", "-N", "-B", "-e", sql])
            .stdin(Stdio::null())
            .output()
            .expect("the mariadb client runs")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("mariadbd.log")).unwrap_or_default()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        if std::thread::panicking() {
            eprintln!("--- mariadb log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `select current_user()` through the MySQL server at `host:port` as `user`, without a
/// password, with `seconds` to connect: `Ok(user@host)` as the server names the account, or
/// the client's error.
pub fn mysql_current_user(
    host: &str,
    port: &str,
    user: &str,
    seconds: u32,
) -> Result<String, String> {
    let out = Command::new("mariadb")
        .args(["--no-defaults", "--protocol=TCP"])
        .arg(format!("--connect-timeout={seconds}"))
        .args(["-h", host, "-P", port, "-u", user, "-N", "-B"])
        .args(["-e", "select current_user()"])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("the mariadb client runs: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The last connection `alloydb` accepted, checked to have logged in as `db_user` by automatic
/// IAM database authentication.
pub fn last_iam_login(alloydb: &AlloyDbDoubles, db_user: &str) -> Connection {
    let accepted = alloydb
        .connections()
        .into_iter()
        .rfind(|c| c.outcome == Outcome::Accepted)
        .expect("the instance accepted a connection");
    assert_eq!(accepted.auth_type, Some(AuthType::AutoIam));
    assert_eq!(accepted.db_user.as_deref(), Some(db_user));
    accepted
}

/// The token the doubles issued that `login` logged in with, if any.
pub fn issued_token_used(google: &GoogleDoubles, login: &Connection) -> Option<String> {
    google
        .issued_tokens()
        .into_iter()
        .find(|t| login.used_token(t))
}

/// Runs an `httpGet` startup probe against 127.0.0.1 until it answers 2xx, as the kubelet does
/// before it starts the next container; panics when the process exits or after `limit`.
pub async fn wait_for_http_probe(probe: &Value, process: &mut Process, limit: Duration) {
    let port = probe["httpGet"]["port"].as_u64().expect("an httpGet probe");
    let path = probe["httpGet"]["path"].as_str().unwrap_or("/");
    let url = format!("http://127.0.0.1:{port}{path}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let start = Instant::now();
    loop {
        process.assert_running();
        let ok = client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "the startup probe of {} did not pass within {limit:?}:\n{}",
            process.name,
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `psql -c 'select current_user'` with only `env` (libpq's `PG*` variables say where and as
/// whom): the user the server logged in, or psql's error.
pub fn select_current_user(env: &[(String, String)]) -> Result<String, String> {
    select_current_user_within(env, 20)
}

/// [`select_current_user`], with `seconds` for the connection to be set up.
pub fn select_current_user_within(
    env: &[(String, String)],
    seconds: u32,
) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "select current_user"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("PGCONNECT_TIMEOUT", seconds.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("psql runs: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

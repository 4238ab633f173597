//! Seed 000 end to end: an AWS workload reaches AlloyDB with no key. On the real API server,
//! `fedcred controller` keeps a FederatedCredential's Secret fresh (moto and the Google
//! doubles) and its webhook injects a labelled pod. The pod as the API server stored it is then
//! run on this machine the way a kubelet would: its sidecars with exactly their command,
//! arguments and environment (the fedcred metadata emulator on a directory laid out like the
//! mounted Secret, the real `alloydb-auth-proxy`), the only addition being the proxy's Admin
//! API endpoint. `psql` with the app container's injected environment then logs in to a real
//! PostgreSQL through the AlloyDB instance double as the service account's IAM database user,
//! before and after the first token has expired; and, with `alloydb.proxy` asking for Unix
//! sockets, lazy refresh and a connection limit, through the socket the proxy creates in the
//! shared directory where the injected `PGHOST` points (and likewise for Cloud SQL with
//! `cloudsql.proxy.unixSocket`).
//!
//! The same pod also reaches a Cloud SQL for PostgreSQL instance: the real `cloud-sql-proxy`
//! sidecar gets its ephemeral certificate from the Cloud SQL Admin API double with the token
//! the metadata emulator serves, and `psql` logs in through it as the same IAM database user,
//! before and after the first token has expired.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fedcred_core::inject::{
    CLOUDSQL_PROXY_CONTAINER_PREFIX, CLOUDSQL_SOCKET_VOLUME, DEFAULT_CLOUDSQL_PROXY_IMAGE,
    DEFAULT_PROXY_IMAGE, PROXY_CONTAINER_PREFIX, SOCKET_VOLUME,
};
use fedcred_doubles::Config;
use fedcred_doubles::alloydb::{AlloyDbConfig, AlloyDbDoubles, InstanceConfig, Outcome};
use fedcred_doubles::cloudsql::{CloudSqlConfig, CloudSqlDoubles, CloudSqlInstance};
use serde_json::{Value, json};
use support::alloydb::{
    MariaDb, Postgres, cloudsql_proxy_binary, issued_token_used, last_iam_login,
    mysql_current_user, proxy_binary, select_current_user, select_current_user_within,
    wait_for_http_probe,
};
use support::cloud::{Cloud, SA_EMAIL};
use support::controller::ControllerProcess;
use support::pod::{Process, SecretVolume, StoredPod, map_paths, secret_data, wait_for_exec_probe};
use support::webhook::{Registration, controller_with_webhook};
use support::{INSTANCE, TestNamespace, eventually, free_port};

const FEDCRED_IMAGE: &str = "ghcr.io/example/fedcred";
const DB_USER: &str = "orders-api@acme-shop.iam";
/// The Cloud SQL for PostgreSQL instance beside the AlloyDB one.
const CLOUDSQL_INSTANCE: &str = "acme-shop:europe-west1:orders-pg";
/// A Cloud SQL for MySQL instance, reached on its own address.
const MYSQL_INSTANCE: &str = "acme-shop:europe-west1:legacy-mysql";
/// The service account's MySQL IAM user: its name before the `@`.
const MYSQL_USER: &str = "orders-api";
/// The shortest lifetime the CRD allows, asked for by the controller.
const LIFETIME_SECONDS: u64 = 600;
/// What the IAM double grants instead, to compress time: refreshed when half of it is left, so
/// a new token arrives 20 s after the first, and the first expires 40 s after issue.
const GRANTED_SECONDS: u64 = 40;

fn pod(name: &str, credential: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"fedcred.io/inject": "true"},
            "annotations": {"fedcred.io/credential": credential},
        },
        "spec": {
            "serviceAccountName": "orders-api",
            "containers": [{
                "name": "app", "image": "registry.example/orders:1",
                // The application's own choice of database; the rest comes from injection.
                "env": [{"name": "PGDATABASE", "value": "postgres"}],
            }],
        },
    })
}

/// Waits for `check` while doing the kubelet's part for the Secret volume: publishing the
/// Secret whenever it changed.
async fn eventually_synced<T>(
    what: &str,
    limit: Duration,
    ns: &TestNamespace,
    volume: &mut SecretVolume,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    eventually(what, limit, || {
        volume.sync(ns, "orders-db");
        check()
    })
    .await
}

/// Runs `work` (blocking) while doing the kubelet's part for the Secret volume, as
/// [`eventually_synced`] does.
async fn synced_while<T: Send + 'static>(
    ns: &TestNamespace,
    volume: &mut SecretVolume,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let mut done = tokio::task::spawn_blocking(work);
    loop {
        tokio::select! {
            out = &mut done => return out.expect("the blocking work ran to its end"),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                volume.sync(ns, "orders-db");
            }
        }
    }
}

/// The tests of this file one at a time: the AlloyDB instance double listens on port 5433,
/// the Cloud SQL one on 3307, and the injected proxies' health ports are the webhook's, from
/// 9801 up.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The story up to the point where the application would start: the peers, the controller
/// with its webhook, a FederatedCredential with `alloydb` and maybe `cloudsql` (the fields
/// given two free local ports), the Cloud SQL doubles when it has `cloudsql`,
/// its Secret, the pod created through the webhook and read back, and its sidecars running as
/// the kubelet would run them.
struct Scene {
    running: Vec<Process>,
    app_env: Vec<(String, String)>,
    first: std::collections::BTreeMap<String, String>,
    volume: SecretVolume,
    sockets: PathBuf,
    controller: ControllerProcess,
    _registration: Registration,
    alloydb: AlloyDbDoubles,
    cloudsql: Option<CloudSqlDoubles>,
    cloud: Cloud,
    _postgres: Postgres,
    _mariadb: Option<MariaDb>,
    ns: TestNamespace,
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.running.clear();
        let _ = std::fs::remove_dir_all(&self.sockets);
    }
}

async fn scene(name: &str, databases: impl FnOnce(u16, u16) -> Value) -> Scene {
    let proxy = proxy_binary();
    let ns = TestNamespace::new(name);
    let postgres = Postgres::start(DB_USER);
    let cloud = Cloud::start(|c| Config {
        impersonated_lifetime_cap_seconds: Some(GRANTED_SECONDS),
        ..c
    })
    .await;
    let alloydb = AlloyDbDoubles::start(
        AlloyDbConfig {
            postgres: Some(postgres.addr),
            ..AlloyDbConfig::default()
        }
        .instance(InstanceConfig::psc(INSTANCE, "localhost"))
        .service_account(SA_EMAIL),
        &cloud.google.tokeninfo_url(),
    )
    .await
    .expect("the AlloyDB doubles start (is port 5433 free?)");

    support::cloud::service_account(&ns, "orders-api");
    let (registration, controller) =
        controller_with_webhook(&ns, &cloud, "e2e", &format!("{FEDCRED_IMAGE}:e2e"));
    // The API server calls the webhook once the controller has set the caBundle: a dry-run
    // pod naming a missing credential is then refused by the webhook with its name.
    let probe = pod("probe", "no-such-credential");
    eventually("the webhook answering", Duration::from_secs(60), || {
        let out = ns.kubectl(
            &["create", "--dry-run=server", "-f", "-"],
            Some(&probe.to_string()),
        );
        (!out.ok && out.stderr.contains("no-such-credential")).then_some(())
    })
    .await;

    let mut spec = serde_json::to_value(cloud.spec(
        json!({"serviceAccount": {"name": "orders-api"}}),
        json!({"tokenLifetimeSeconds": LIFETIME_SECONDS}),
    ))
    .unwrap();
    let databases = databases(free_port(), free_port());
    for field in ["alloydb", "cloudsql"] {
        if let Some(value) = databases.get(field) {
            spec[field] = value.clone();
        }
    }
    // MariaDB behind the MySQL instance, when the resource uses it.
    let mariadb = databases["cloudsql"]["instances"]
        .as_array()
        .is_some_and(|i| i.iter().any(|i| i["engine"] == "MySQL"))
        .then(|| MariaDb::start(MYSQL_USER));
    // Every address a client may pick leads to the instance double's listener.
    let cloudsql = match databases.get("cloudsql") {
        None => None,
        Some(_) => Some(
            CloudSqlDoubles::start(
                CloudSqlConfig {
                    postgres: Some(postgres.addr),
                    mysql: mariadb.as_ref().map(|m| m.addr),
                    ..CloudSqlConfig::default()
                }
                .instance(CloudSqlInstance {
                    private_ip_address: Some("127.0.0.1".to_owned()),
                    psc_dns_name: Some("localhost".to_owned()),
                    ..CloudSqlInstance::public(CLOUDSQL_INSTANCE, "127.0.0.1")
                })
                .instance(CloudSqlInstance {
                    database_version: "MYSQL_8_0".to_owned(),
                    listen: std::net::SocketAddr::from(([127, 0, 0, 2], 3307)),
                    ..CloudSqlInstance::public(MYSQL_INSTANCE, "127.0.0.2")
                })
                .service_account(SA_EMAIL),
                &cloud.google.tokeninfo_url(),
            )
            .await
            .expect("the Cloud SQL doubles start (is port 3307 free?)"),
        ),
    };
    spec["secret"] = json!({"renewBeforePercentage": 50});
    let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": "orders-db"}, "spec": spec});
    ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();
    let first = eventually("the Secret", Duration::from_secs(60), || {
        secret_data(&ns, "orders-db")
    })
    .await;
    assert_eq!(first["db_user"], DB_USER);

    // The pod, created for real and read back as the API server stored it.
    let out = ns.kubectl(
        &["create", "-f", "-"],
        Some(&pod("orders", "orders-db").to_string()),
    );
    assert!(out.ok, "{}", out.stderr);
    let pod = StoredPod::get(&ns, "orders");
    let sidecars = pod.sidecars();
    let mut expected = vec![
        "fedcred-metadata".to_owned(),
        format!("{PROXY_CONTAINER_PREFIX}0"),
    ];
    let cloudsql_count = databases["cloudsql"]["instances"]
        .as_array()
        .map_or(0, Vec::len);
    expected.extend((0..cloudsql_count).map(|i| format!("{CLOUDSQL_PROXY_CONTAINER_PREFIX}{i}")));
    assert_eq!(sidecars, expected);

    // The kubelet's part: the Secret volume and the socket directory (an emptyDir, as short a
    // path as the pod's: a socket's path has at most 107 bytes), then each native sidecar in
    // order, the next one once the startup probe of the last has passed. Images map to local
    // programs.
    let fedcred = PathBuf::from(env!("CARGO_BIN_EXE_fedcred"));
    let repository = |image: &'static str| image.rsplit_once(':').map_or(image, |(r, _)| r);
    let cloudsql_proxy = if cloudsql.is_some() {
        cloudsql_proxy_binary()
    } else {
        PathBuf::new()
    };
    let entrypoints: &[(&str, &Path)] = &[
        (FEDCRED_IMAGE, &fedcred),
        ("/usr/local/bin/fedcred", &fedcred),
        (repository(DEFAULT_PROXY_IMAGE), &proxy),
        (repository(DEFAULT_CLOUDSQL_PROXY_IMAGE), &cloudsql_proxy),
    ];
    let mut volume = SecretVolume::kubelet();
    assert!(volume.sync(&ns, "orders-db"));
    let sockets = PathBuf::from(format!(
        "/tmp/fce-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().subsec_nanosecond()
    ));
    std::fs::create_dir_all(&sockets).unwrap();
    let local = |pod: &StoredPod, container: &str| -> Vec<(String, PathBuf)> {
        // Only the token Secret and the sockets matter; the API server also mounts the
        // ServiceAccount's API token into every container, which nothing of fedcred reads.
        let mut mounts: Vec<(String, PathBuf)> = pod
            .mounts(container)
            .into_iter()
            .filter_map(|(path, name)| {
                // Both socket volumes in one directory: their sockets' names differ.
                if name == SOCKET_VOLUME || name == CLOUDSQL_SOCKET_VOLUME {
                    Some((path, sockets.clone()))
                } else if pod.volume_secret(&name).as_deref() == Some("orders-db") {
                    Some((path, volume.dir.clone()))
                } else {
                    None
                }
            })
            .collect();
        // Longest first: one mount path may be a prefix of another.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        mounts
    };
    let mut running = Vec::new();
    for name in &sidecars {
        let mounts = local(&pod, name);
        let mut argv: Vec<String> = pod
            .argv(name, entrypoints)
            .iter()
            .map(|a| map_paths(a, &mounts))
            .collect();
        let env: Vec<(String, String)> = pod
            .env(name)
            .into_iter()
            .map(|(k, v)| (k, map_paths(&v, &mounts)))
            .collect();
        // The one addition: the Admin API doubles instead of alloydb.googleapis.com and
        // sqladmin.googleapis.com.
        if name.starts_with(PROXY_CONTAINER_PREFIX) {
            argv.push(format!(
                "--alloydbadmin-api-endpoint={}",
                alloydb.admin_url()
            ));
        }
        if let Some(cloudsql) = cloudsql
            .as_ref()
            .filter(|_| name.starts_with(CLOUDSQL_PROXY_CONTAINER_PREFIX))
        {
            argv.push(format!("--sqladmin-api-endpoint={}", cloudsql.admin_url()));
        }
        let mut process = Process::start(name, &argv, &env);
        let startup = pod.container(name)["startupProbe"].clone();
        if startup["exec"].is_object() {
            tokio::task::block_in_place(|| {
                wait_for_exec_probe(&startup, entrypoints, &mut process, Duration::from_secs(30))
            });
        } else {
            wait_for_http_probe(&startup, &mut process, Duration::from_secs(60)).await;
        }
        running.push(process);
    }
    let app_mounts = local(&pod, "app");
    let app_env = pod
        .env("app")
        .into_iter()
        .map(|(k, v)| (k, map_paths(&v, &app_mounts)))
        .collect();
    Scene {
        running,
        app_env,
        first,
        volume,
        sockets,
        controller,
        _registration: registration,
        alloydb,
        cloudsql,
        cloud,
        _postgres: postgres,
        _mariadb: mariadb,
        ns,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reaches_alloydb_and_cloudsql_as_its_iam_user_before_and_after_the_first_token_expires()
 {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut local_port = 0;
    let Scene {
        running,
        app_env,
        first,
        volume,
        controller,
        alloydb,
        cloudsql,
        cloud,
        ns,
        ..
    } = &mut scene("e2e-alloydb", |port, cloudsql_port| {
        local_port = port;
        json!({
            "alloydb": {"instances": [{
                "uri": INSTANCE, "connectivity": "PSC", "autoIamAuthn": true, "port": port,
            }]},
            "cloudsql": {"instances": [{
                "connectionName": CLOUDSQL_INSTANCE, "connectivity": "PSC", "port": cloudsql_port,
                "hostEnvName": "CLOUDSQL_HOST", "portEnvName": "CLOUDSQL_PORT",
                "userEnvName": "CLOUDSQL_USER",
            }, {
                "connectionName": MYSQL_INSTANCE, "engine": "MySQL", "port": free_port(),
            }]},
        })
    })
    .await;
    let cloudsql = cloudsql.as_ref().unwrap();
    let first_token = first["access_token"].clone();
    let app_var = |name: &str| {
        app_env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(app_var("PGUSER").as_deref(), Some(DB_USER));
    assert_eq!(app_var("PGPORT"), Some(local_port.to_string()));

    let user = tokio::task::block_in_place(|| select_current_user(app_env));
    assert_eq!(user.as_deref(), Ok(DB_USER), "{}", logs(running));
    let accepted = last_iam_login(alloydb, DB_USER);
    assert_eq!(accepted.service_account.as_deref(), Some(SA_EMAIL));
    assert!(accepted.used_token(&first_token));
    assert!(
        alloydb
            .admin_calls()
            .iter()
            .any(|c| c.method == "generateClientCertificate" && c.status == 200)
    );

    // Cloud SQL, through the variables the resource named.
    assert_eq!(app_var("CLOUDSQL_USER").as_deref(), Some(DB_USER));
    let user = tokio::task::block_in_place(|| select_current_user(&cloudsql_env(app_env, None)));
    assert_eq!(user.as_deref(), Ok(DB_USER), "{}", logs(running));
    let accepted = last_cloudsql_login(cloudsql, CLOUDSQL_INSTANCE, DB_USER);
    assert_eq!(accepted.service_account.as_deref(), Some(SA_EMAIL));
    assert!(accepted.used_token(&first_token));
    for method in ["connectSettings", "generateEphemeralCert"] {
        assert!(
            cloudsql
                .admin_calls()
                .iter()
                .any(|c| c.method == method && c.status == 200),
            "{method}: {:?}",
            cloudsql.admin_calls()
        );
    }
    // The instance accepts nobody but the certificate's IAM user.
    let before = cloudsql.connections().len();
    let refused = tokio::task::block_in_place(|| {
        select_current_user(&cloudsql_env(app_env, Some("postgres")))
    });
    assert!(refused.is_err(), "{refused:?}");
    let seen = recorded_after(cloudsql, before).await;
    assert!(
        matches!(seen.last().map(|c| &c.outcome),
            Some(Outcome::Refused(reason)) if reason.contains("IAM database user")),
        "{seen:?}"
    );

    // Cloud SQL for MySQL, through the MySQL variables, as the service account's name.
    assert_eq!(app_var("MYSQL_USER").as_deref(), Some(MYSQL_USER));
    let mysql = |user: &str, seconds: u32| {
        let (host, port) = (
            app_var("MYSQL_HOST").unwrap(),
            app_var("MYSQL_TCP_PORT").unwrap(),
        );
        let user = user.to_owned();
        move || mysql_current_user(&host, &port, &user, seconds)
    };
    let account = tokio::task::block_in_place(mysql(MYSQL_USER, 20));
    assert_eq!(account.as_deref(), Ok("orders-api@%"), "{}", logs(running));
    let accepted = last_cloudsql_login(cloudsql, MYSQL_INSTANCE, MYSQL_USER);
    assert!(accepted.used_token(&first_token));
    let before = cloudsql.connections().len();
    let refused = tokio::task::block_in_place(mysql("root", 20));
    assert!(refused.is_err(), "{refused:?}");
    let seen = recorded_after(cloudsql, before).await;
    assert!(
        matches!(seen.last().map(|c| &c.outcome),
            Some(Outcome::Refused(reason)) if reason.contains("IAM database user \"orders-api\"")),
        "{seen:?}"
    );

    // The controller refreshes long before expiry; wait, keeping the volume in step as the
    // kubelet does, until the first token is dead.
    let refreshed = eventually_synced(
        "a refreshed token",
        Duration::from_secs(180),
        ns,
        volume,
        || secret_data(ns, "orders-db").filter(|d| d["access_token"] != first_token),
    )
    .await;
    assert!(cloud.google.lookup(&refreshed["access_token"]).is_some());
    let expiry: jiff::Timestamp = first["expiry"].parse().unwrap();
    let wait = expiry
        .duration_since(jiff::Timestamp::now())
        .as_secs()
        .max(0) as u64;
    eventually_synced(
        "the first token to expire",
        Duration::from_secs(wait + 30),
        ns,
        volume,
        || cloud.google.lookup(&first_token).is_none().then_some(()),
    )
    .await;
    volume.sync(ns, "orders-db");
    for process in running.iter_mut() {
        process.assert_running();
    }

    let user = tokio::task::block_in_place(|| select_current_user(app_env));
    assert_eq!(user.as_deref(), Ok(DB_USER), "{}", logs(running));
    let last = last_iam_login(alloydb, DB_USER);
    let used = issued_token_used(&cloud.google, &last)
        .expect("the second login used a token the doubles issued");
    assert!(
        used != first_token,
        "the second login used a refreshed token"
    );
    assert!(cloud.google.lookup(&used).is_some());

    // The Cloud SQL proxy's certificate ends with the token it was issued for, and the proxy
    // refreshes at most once per 30 s: with these 40 s tokens, the dial may wait for the next
    // refresh allowed (with one-hour tokens it refreshes 4 minutes before the end).
    // The kubelet keeps the volume in step meanwhile.
    let env = cloudsql_env(app_env, None);
    let user = synced_while(ns, volume, move || select_current_user_within(&env, 60)).await;
    assert_eq!(user.as_deref(), Ok(DB_USER), "{}", logs(running));
    let account = synced_while(ns, volume, mysql(MYSQL_USER, 60)).await;
    assert_eq!(account.as_deref(), Ok("orders-api@%"), "{}", logs(running));
    for (instance, user) in [(CLOUDSQL_INSTANCE, DB_USER), (MYSQL_INSTANCE, MYSQL_USER)] {
        let last = last_cloudsql_login(cloudsql, instance, user);
        let used = cloud
            .google
            .issued_tokens()
            .into_iter()
            .find(|t| last.used_token(t))
            .expect("the Cloud SQL certificate was issued for a token the doubles issued");
        assert!(
            used != first_token,
            "{instance}: the certificate stands for a refreshed token"
        );
        assert!(cloud.google.lookup(&used).is_some());
    }

    // No token in any log.
    let everything = format!("{}{}", controller.logs(), logs(running));
    for token in cloud.google.issued_tokens() {
        assert!(!everything.contains(&token), "a token leaked into a log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reaches_alloydb_and_cloudsql_through_the_unix_sockets_its_variables_name() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scene = scene("e2e-alloydb-socket", |_, _| {
        json!({
            "alloydb": {
                "instances": [{"uri": INSTANCE, "connectivity": "PSC", "autoIamAuthn": true}],
                "proxy": {"unixSocket": true, "lazyRefresh": true, "maxConnections": 5}
            },
            "cloudsql": {
                "instances": [{
                    "connectionName": CLOUDSQL_INSTANCE, "connectivity": "PrivateIP",
                    "hostEnvName": "CLOUDSQL_HOST", "portEnvName": "CLOUDSQL_PORT",
                    "userEnvName": "CLOUDSQL_USER",
                }],
                "proxy": {"unixSocket": true}
            }
        })
    })
    .await;
    let app_var = |name: &str| {
        scene
            .app_env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let host = app_var("PGHOST").unwrap();
    assert!(
        host.starts_with(&*scene.sockets.to_string_lossy()),
        "PGHOST {host} is not in the shared directory"
    );
    assert_eq!(app_var("PGPORT").as_deref(), Some("5432"));
    assert_eq!(app_var("PGUSER").as_deref(), Some(DB_USER));

    let user = tokio::task::block_in_place(|| select_current_user(&scene.app_env));
    assert_eq!(user.as_deref(), Ok(DB_USER), "{}", logs(&scene.running));
    let accepted = last_iam_login(&scene.alloydb, DB_USER);
    assert!(accepted.used_token(&scene.first["access_token"]));

    // The Cloud SQL proxy's socket: a directory named after the connection name, beside the
    // AlloyDB one in the shared volume.
    let host = app_var("CLOUDSQL_HOST").unwrap();
    assert_eq!(
        host,
        format!("{}/{CLOUDSQL_INSTANCE}", scene.sockets.display()),
        "CLOUDSQL_HOST"
    );
    assert_eq!(app_var("CLOUDSQL_PORT").as_deref(), Some("5432"));
    let user =
        tokio::task::block_in_place(|| select_current_user(&cloudsql_env(&scene.app_env, None)));
    assert_eq!(user.as_deref(), Ok(DB_USER), "{}", logs(&scene.running));
    let cloudsql = scene.cloudsql.as_ref().unwrap();
    assert!(
        last_cloudsql_login(cloudsql, CLOUDSQL_INSTANCE, DB_USER)
            .used_token(&scene.first["access_token"])
    );

    let everything = format!("{}{}", scene.controller.logs(), logs(&scene.running));
    for token in scene.cloud.google.issued_tokens() {
        assert!(!everything.contains(&token), "a token leaked into a log");
    }
}

/// The app's environment with the Cloud SQL instance's variables as libpq's, and `user`
/// instead of the injected one when given.
fn cloudsql_env(app_env: &[(String, String)], user: Option<&str>) -> Vec<(String, String)> {
    let value = |name: &str| {
        app_env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the app has no {name}"))
    };
    let mut env: Vec<(String, String)> = app_env
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "PGHOST" | "PGPORT" | "PGUSER"))
        .cloned()
        .collect();
    env.push(("PGHOST".to_owned(), value("CLOUDSQL_HOST")));
    env.push(("PGPORT".to_owned(), value("CLOUDSQL_PORT")));
    env.push((
        "PGUSER".to_owned(),
        user.map_or_else(|| value("CLOUDSQL_USER"), str::to_owned),
    ));
    env
}

/// The instances' connections once one more than `before` is recorded: the client can learn of
/// a refusal before the instance records it.
async fn recorded_after(
    cloudsql: &CloudSqlDoubles,
    before: usize,
) -> Vec<fedcred_doubles::cloudsql::Connection> {
    cloudsql
        .connections_reaching(before + 1, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The last connection Cloud SQL `instance` accepted, which must be an IAM login of the
/// service account as `db_user`.
fn last_cloudsql_login(
    cloudsql: &CloudSqlDoubles,
    instance: &str,
    db_user: &str,
) -> fedcred_doubles::cloudsql::Connection {
    let connections = cloudsql.connections();
    let last = connections
        .iter()
        .rev()
        .find(|c| c.outcome == Outcome::Accepted && c.instance == instance)
        .unwrap_or_else(|| panic!("no accepted connection to {instance}: {connections:?}"));
    assert_eq!(last.db_user.as_deref(), Some(db_user));
    assert_eq!(last.service_account.as_deref(), Some(SA_EMAIL));
    last.clone()
}

fn logs(processes: &[Process]) -> String {
    processes
        .iter()
        .map(|p| format!("--- {} ---\n{}\n", p.name, p.logs()))
        .collect()
}

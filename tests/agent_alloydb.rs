//! Seed 000 with `fedcred agent`, as shipped: an EC2 instance (an IMDSv2 fake serving the
//! instance role, whose session is named after the instance id) runs the agent from the
//! shipped unit's `ExecStart` with the shipped credential file, and the real
//! `alloydb-auth-proxy` from the shipped proxy unit (its `Environment=`, its `ExecStartPre`
//! check, its `ExecStart`); `psql` logs in to a real PostgreSQL through the AlloyDB instance
//! double as the service account's IAM database user, as the docs' last step says, before and
//! after the first token expired. Substituted: paths, ports, the instance URI placeholder, the
//! AWS STS and Google endpoints, and the proxy's Admin API endpoint (the one flag added, as in
//! the in-cluster seed 000 test). Google saw one stable principal, never the instance id.

mod support;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use fedcred_doubles::alloydb::{AlloyDbConfig, AlloyDbDoubles, InstanceConfig};
use fedcred_doubles::aws_metadata::{Imds, Instance};
use fedcred_doubles::{Binding, Config, Provider, role_member};
use serde_json::{Value, json};
use support::alloydb::{Postgres, issued_token_used, last_iam_login, proxy_binary};
use support::cloud::Cloud;
use support::pod::{Process, unique};
use support::{INSTANCE, free_port};

/// Impersonated tokens live this long here, so the first expires within the test.
const LIFETIME_CAP: u64 = 30;
const HOST_ROLE: &str = "arn:aws:iam::123456789012:role/ec2-instance";
const INSTANCE_ID: &str = "i-0123456789abcdef0";

/// The lines of a shipped unit that start with `key=`, the value only.
fn unit_values(path: &str, key: &str) -> Vec<String> {
    let unit = std::fs::read_to_string(support::repo_root().join(path)).unwrap();
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// `psql "host=127.0.0.1 port=PORT user=USER dbname=postgres" -c 'select current_user'`.
fn select_current_user(port: u16, user: &str) -> Result<String, String> {
    let pg = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    support::alloydb::select_current_user(&[
        pg("PGHOST", "127.0.0.1"),
        pg("PGPORT", &port.to_string()),
        pg("PGUSER", user),
        pg("PGDATABASE", "postgres"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_on_ec2_the_shipped_units_log_psql_in_as_the_iam_user_across_a_refresh() {
    let proxy = proxy_binary();
    // The shipped credential file, as is, but for where its AWS STS and Google calls go.
    let shipped =
        std::fs::read_to_string(support::repo_root().join("deploy/agent/credential.yaml")).unwrap();
    let mut credential: Value = serde_norway::from_str(&shipped).unwrap();
    let spec = credential["spec"].clone();
    let audience = spec["google"]["audience"].as_str().unwrap().to_owned();
    let email = spec["google"]["serviceAccount"]
        .as_str()
        .unwrap()
        .to_owned();
    let db_user = email.trim_end_matches(".gserviceaccount.com").to_owned();
    let assumed = spec["aws"]["controllerIdentity"]["roleArn"]
        .as_str()
        .unwrap()
        .replace(":iam::", ":sts::")
        .replace(":role/", ":assumed-role/");
    let stable = format!(
        "{assumed}/fedcred.{}",
        credential["metadata"]["namespace"].as_str().unwrap()
    );

    let postgres = Postgres::start(&db_user);
    let cloud = {
        let (audience, email, assumed) = (audience.clone(), email.clone(), assumed.clone());
        Cloud::start(move |c| {
            let mut c = Config {
                impersonated_lifetime_cap_seconds: Some(LIFETIME_CAP),
                ..c
            };
            c.bindings.clear();
            c.provider(Provider::new(&audience))
                .binding(Binding::new(&email, &[role_member(&audience, &assumed)]))
        })
        .await
    };
    credential["spec"]["aws"]["stsEndpoint"] = json!(cloud.moto.url());
    credential["spec"]["google"]["endpoints"] = json!({
        "sts": cloud.google.sts_url(), "iamCredentials": cloud.google.iam_credentials_url()
    });
    let alloydb = AlloyDbDoubles::start(
        AlloyDbConfig {
            postgres: Some(postgres.addr),
            ..AlloyDbConfig::default()
        }
        .instance(InstanceConfig::psc(INSTANCE, "localhost"))
        .service_account(&email),
        &cloud.google.tokeninfo_url(),
    )
    .await
    .expect("the AlloyDB doubles start (is port 5433 free?)");

    // The instance: its role's session is named after the instance id, as on EC2.
    let own = cloud
        .moto
        .assume_role_with_web_identity(HOST_ROLE, INSTANCE_ID)
        .await
        .unwrap();
    let imds = Imds::start(Instance::new("ec2-instance", own))
        .await
        .unwrap();
    let etc = unique("etc-fedcred");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("credential.yaml"), credential.to_string()).unwrap();

    // The agent unit's ExecStart.
    let (listen, metrics, db_port) = (free_port(), free_port(), free_port());
    let local = |s: &str| {
        s.replace("/etc/fedcred", &etc.display().to_string())
            .replace("127.0.0.1:8988", &format!("127.0.0.1:{listen}"))
            .replace("127.0.0.1:9988", &format!("127.0.0.1:{metrics}"))
    };
    let fedcred = env!("CARGO_BIN_EXE_fedcred");
    let binary = |argv: Vec<String>| -> Vec<String> {
        argv.into_iter()
            .map(|a| match a.as_str() {
                "/usr/local/bin/fedcred" => fedcred.to_owned(),
                "/usr/local/bin/fedcred-agent" => env!("CARGO_BIN_EXE_fedcred-agent").to_owned(),
                "/usr/local/bin/alloydb-auth-proxy" => proxy.display().to_string(),
                _ => local(&a),
            })
            .collect()
    };
    let exec_start = unit_values("deploy/agent/fedcred-agent.service", "ExecStart");
    assert_eq!(exec_start.len(), 1);
    let agent = Process::start(
        "fedcred-agent",
        &binary(words(&exec_start[0])),
        &[
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT".to_owned(),
                imds.endpoint(),
            ),
            // Tokens here live 30 s; the agent's default floor is 60 s.
            ("FEDCRED_MIN_TOKEN_SECONDS".to_owned(), "5".to_owned()),
        ],
    );

    // The proxy unit: its environment, its ExecStartPre until it passes (systemd retries
    // the unit), then its ExecStart.
    let proxy_unit = "deploy/agent/alloydb-auth-proxy.service";
    let env: Vec<(String, String)> = unit_values(proxy_unit, "Environment")
        .iter()
        .map(|e| {
            let (k, v) = e.split_once('=').unwrap();
            (k.to_owned(), local(v))
        })
        .collect();
    assert!(env.iter().any(|(k, _)| k == "GCE_METADATA_HOST"), "{env:?}");
    let pre = binary(words(&unit_values(proxy_unit, "ExecStartPre")[0]));
    let started = Instant::now();
    loop {
        let out = Command::new(&pre[0]).args(&pre[1..]).output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the proxy unit's ExecStartPre never passed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut argv: Vec<String> = binary(words(&unit_values(proxy_unit, "ExecStart")[0]))
        .into_iter()
        .map(|a| {
            if a == "5432" {
                db_port.to_string()
            } else if a.starts_with("projects/PROJECT/") {
                INSTANCE.to_owned()
            } else {
                a
            }
        })
        .collect();
    argv.push(format!(
        "--alloydbadmin-api-endpoint={}",
        alloydb.admin_url()
    ));
    let mut proxy = Process::start("alloydb-auth-proxy", &argv, &env);

    // The docs' last step, retried while the proxy comes up.
    let login = |what: &str| {
        let started = Instant::now();
        loop {
            match select_current_user(db_port, &db_user) {
                Ok(user) => return user,
                Err(e) => assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{what}: psql failed: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let user = tokio::task::block_in_place(|| login("first login"));
    assert_eq!(user, db_user);
    let first = last_iam_login(&alloydb, &db_user);
    let first_token = issued_token_used(&cloud.google, &first)
        .expect("the first login used a token the doubles issued");

    // Until the first token is dead, then again: the proxy takes the refreshed one.
    let expiry = cloud
        .google
        .lookup(&first_token)
        .expect("the first token is live")
        .expires_at;
    let wait = expiry
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs();
    tokio::time::sleep(Duration::from_secs(wait + 2)).await;
    assert!(cloud.google.lookup(&first_token).is_none());
    assert!(proxy.running(), "the proxy exited:\n{}", proxy.logs());
    let user = tokio::task::block_in_place(|| login("login after the first token expired"));
    assert_eq!(user, db_user);
    let last = last_iam_login(&alloydb, &db_user);
    assert!(
        !last.used_token(&first_token),
        "the second login used the expired token"
    );
    let used = issued_token_used(&cloud.google, &last)
        .expect("the second login used a token the doubles issued");
    assert!(cloud.google.lookup(&used).is_some());

    // One stable principal, never the instance id; no token in either log.
    let principals = cloud.google.seen_principals();
    assert!(principals.iter().all(|p| *p == stable), "{principals:?}");
    assert!(!principals.iter().any(|p| p.contains(INSTANCE_ID)));
    assert_eq!(imds.refused(), 0);
    let everything = format!("{}{}", agent.logs(), proxy.logs());
    for token in cloud.google.issued_tokens() {
        assert!(!everything.contains(&token), "a token leaked into a log");
    }
}

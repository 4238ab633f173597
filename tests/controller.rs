//! Stories of `fedcred controller` on the real API server, with moto and the Google doubles:
//! each test runs its own controller process scoped to its own namespace.

mod support;

use std::time::{Duration, Instant};

use fedcred_doubles::{Condition, Target};
use serde_json::{Value, json};
use support::cloud::{ASSUMED_ROLE, AUDIENCE, Cloud, ROLE, SA_EMAIL, federated, service_account};
use support::controller::{ControllerProcess, Launch};
use support::pod::secret_data;
use support::{TestNamespace, eventually};

fn get_json(ns: &TestNamespace, args: &[&str]) -> Option<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = ns.kubectl(&all, None);
    out.ok.then(|| serde_json::from_str(&out.stdout).unwrap())
}

fn status(ns: &TestNamespace, name: &str) -> Value {
    get_json(ns, &["fedcred", name])
        .map(|v| v["status"].clone())
        .unwrap_or(Value::Null)
}

fn condition(status: &Value, type_: &str) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

fn is_ready(ns: &TestNamespace, name: &str) -> Option<Value> {
    let s = status(ns, name);
    (condition(&s, "Ready")?["status"] == "True").then_some(s)
}

fn events(ns: &TestNamespace, name: &str) -> Vec<Value> {
    let v = get_json(
        ns,
        &[
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
        ],
    )
    .unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

/// Applies a FederatedCredential named `name` whose spec is `cloud.spec(aws, google)` plus
/// `extra` at the top of the spec.
fn apply(ns: &TestNamespace, cloud: &Cloud, name: &str, aws: Value, google: Value, extra: Value) {
    let mut spec = serde_json::to_value(cloud.spec(aws, google)).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": name}, "spec": spec});
    ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();
}

fn irsa() -> Value {
    json!({"serviceAccount": {"name": "orders-api"}})
}

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_resource_becomes_ready_with_a_token_the_iam_double_accepts() {
    let ns = TestNamespace::new("ready");
    let cloud = Cloud::start(|c| c).await;
    service_account(&ns, "orders-api");
    let controller = ControllerProcess::start(&ns.name, &cloud, "r1", &[]);
    apply(
        &ns,
        &cloud,
        "orders-db",
        irsa(),
        json!({}),
        json!({"secret": {"labels": {"team": "orders"}}}),
    );

    let status = eventually("Ready", LIMIT, || is_ready(&ns, "orders-db")).await;
    let data = cloud.secret_with_token(&ns, "orders-db");
    assert_eq!(data["token_type"], "Bearer");
    assert_eq!(data["service_account"], SA_EMAIL);
    assert_eq!(data["db_user"], "orders-api@acme-shop.iam");
    assert_eq!(data["project_id"], "acme-shop");
    assert_eq!(status["expiresAt"], data["expiry"].as_str());
    let principal = format!("{ASSUMED_ROLE}/fedcred.{}.orders-api", ns.name);
    assert_eq!(status["awsPrincipalArn"], principal.as_str());
    assert_eq!(status["googleServiceAccount"], SA_EMAIL);
    assert_eq!(status["dbUser"], "orders-api@acme-shop.iam");
    assert_eq!(status["secretName"], "orders-db");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["identity"], "ServiceAccount/orders-api");
    assert!(status["nextRefreshTime"].as_str().unwrap() < status["expiresAt"].as_str().unwrap());

    let meta =
        get_json(&ns, &["secret", "orders-db", "--show-managed-fields"]).unwrap()["metadata"]
            .clone();
    assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "fedcred");
    assert_eq!(meta["labels"]["team"], "orders");
    assert_eq!(meta["ownerReferences"][0]["kind"], "FederatedCredential");
    assert_eq!(meta["ownerReferences"][0]["controller"], true);
    let managers: Vec<&str> = meta["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, ["fedcred"]);
    let refreshed = eventually("a TokenRefreshed event", LIMIT, || {
        events(&ns, "orders-db")
            .into_iter()
            .find(|e| e["reason"] == "TokenRefreshed")
    })
    .await;
    assert!(
        refreshed["message"]
            .as_str()
            .unwrap()
            .contains("FirstIssue")
    );

    // Operations: health, readiness and metrics, none of which carries a token.
    assert_eq!(controller.get("/healthz").await.0, 200);
    assert_eq!(controller.get("/readyz").await.0, 200);
    let (code, metrics) = controller.get("/metrics").await;
    assert_eq!(code, 200);
    let expiry_series = format!(
        "fedcred_token_seconds_to_expiry{{namespace=\"{}\",name=\"orders-db\"}}",
        ns.name
    );
    for family in [
        "fedcred_token_refreshes_total{result=\"success\",reason=\"\"} 1",
        "fedcred_token_refresh_duration_seconds_count 1",
        expiry_series.as_str(),
    ] {
        assert!(
            metrics.contains(family),
            "{family} missing from:\n{metrics}"
        );
    }
    let everything = format!(
        "{metrics}{}{}{}",
        controller.logs(),
        serde_json::to_string(&events(&ns, "orders-db")).unwrap(),
        status
    );
    for token in cloud.google.issued_tokens() {
        assert!(
            !everything.contains(&token),
            "a token leaked into metrics, logs, events or status"
        );
    }
}

/// A new resource costs the API server one status write: the injection hash is recorded with
/// the status the refresh writes, not in a write of its own before it (at thousands of
/// resources that extra write was a third of the controller's requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_resource_gets_its_status_in_one_write() {
    use fedcred_core::api::FederatedCredential;
    use futures::StreamExt;
    use kube::runtime::watcher;

    let ns = TestNamespace::new("onewrite");
    support::ensure_crd();
    let cloud = Cloud::start(|c| c).await;
    service_account(&ns, "orders-api");
    let api: kube::Api<FederatedCredential> =
        kube::Api::namespaced(support::kube_client().await, &ns.name);
    // Every version of the resource the API server announces, from before it exists.
    let mut stream = watcher(
        api,
        watcher::Config::default().fields("metadata.name=orders-db"),
    )
    .boxed();
    let started = tokio::time::timeout(LIMIT, async {
        loop {
            match stream.next().await.expect("the watch goes on") {
                Ok(watcher::Event::InitDone) => break,
                Ok(_) => {}
                Err(e) => panic!("watching FederatedCredentials in {} failed: {e}", ns.name),
            }
        }
    });
    started.await.expect("the watch started within the limit");
    let _controller = ControllerProcess::start(&ns.name, &cloud, "r1", &[]);
    apply(&ns, &cloud, "orders-db", irsa(), json!({}), json!({}));

    let mut statuses = Vec::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("the resource became Ready within the limit")
            .expect("the watch goes on")
            .expect("the watch reads the resource");
        let watcher::Event::Apply(fc) = event else {
            continue;
        };
        let Some(status) = fc.status else { continue };
        let status = serde_json::to_value(status).unwrap();
        let ready = condition(&status, "Ready").is_some_and(|c| c["status"] == "True");
        statuses.push(status);
        if ready {
            break;
        }
    }
    assert_eq!(
        statuses.len(),
        1,
        "the status took more than one write to become Ready: {statuses:#?}"
    );
    assert!(
        statuses[0]["injectionHash"].is_string(),
        "the first status lacks the injection hash: {:#}",
        statuses[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_refreshed_before_they_expire() {
    let ns = TestNamespace::new("short");
    // Federated tokens (no impersonation) that live 6 seconds.
    let cloud = Cloud::start(federated(6)).await;
    service_account(&ns, "orders-api");
    let _controller = ControllerProcess::start(&ns.name, &cloud, "r1", &[]);
    apply(
        &ns,
        &cloud,
        "fast",
        irsa(),
        json!({"serviceAccount": null}),
        json!({}),
    );
    eventually("Ready", LIMIT, || is_ready(&ns, "fast")).await;

    let mut seen: Vec<(String, jiff::Timestamp)> = Vec::new();
    let start = Instant::now();
    while seen.len() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "only {} tokens in 40 s",
            seen.len()
        );
        if let Some(data) = secret_data(&ns, "fast") {
            let token = data["access_token"].clone();
            if seen.last().is_none_or(|(t, _)| *t != token) {
                let now = jiff::Timestamp::now();
                if let Some((_, previous_expiry)) = seen.last() {
                    assert!(
                        now < *previous_expiry,
                        "the previous token expired at {previous_expiry} before the refresh at {now}"
                    );
                }
                seen.push((token, data["expiry"].parse().unwrap()));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(cloud.google.exchanges(Target::Sts) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_edited_secret_is_repaired() {
    let ns = TestNamespace::new("repair");
    let cloud = Cloud::start(|c| c).await;
    service_account(&ns, "orders-api");
    let _controller = ControllerProcess::start(&ns.name, &cloud, "r1", &[]);
    apply(&ns, &cloud, "orders-db", irsa(), json!({}), json!({}));
    eventually("Ready", LIMIT, || is_ready(&ns, "orders-db")).await;
    let original = secret_data(&ns, "orders-db").unwrap();

    ns.kubectl(&["delete", "secret", "orders-db"], None)
        .success();
    let recreated = eventually("the Secret back", LIMIT, || secret_data(&ns, "orders-db")).await;
    assert!(cloud.google.lookup(&recreated["access_token"]).is_some());

    let patch = json!({"stringData": {"access_token": "tampered"}});
    ns.kubectl(
        &[
            "patch",
            "secret",
            "orders-db",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        None,
    )
    .success();
    let restored = eventually("the edit undone", LIMIT, || {
        secret_data(&ns, "orders-db").filter(|d| d["access_token"] != "tampered")
    })
    .await;
    assert!(cloud.google.lookup(&restored["access_token"]).is_some());
    // Repairs reuse the cached token: Google saw one exchange.
    assert_eq!(restored["access_token"], original["access_token"]);
    assert_eq!(cloud.google.exchanges(Target::Sts), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_refreshes_and_advances_observed_generation() {
    let ns = TestNamespace::new("spec");
    let cloud = Cloud::start(|c| c).await;
    service_account(&ns, "orders-api");
    let _controller = ControllerProcess::start(&ns.name, &cloud, "r1", &[]);
    apply(&ns, &cloud, "orders-db", irsa(), json!({}), json!({}));
    eventually("Ready", LIMIT, || is_ready(&ns, "orders-db")).await;
    let before = secret_data(&ns, "orders-db").unwrap();

    let scopes = json!({"scopes": ["https://www.googleapis.com/auth/bigquery"]});
    apply(&ns, &cloud, "orders-db", irsa(), scopes, json!({}));
    let status = eventually("generation 2 observed", LIMIT, || {
        is_ready(&ns, "orders-db").filter(|s| s["observedGeneration"] == 2)
    })
    .await;
    let after = secret_data(&ns, "orders-db").unwrap();
    assert_ne!(before["access_token"], after["access_token"]);
    let info = cloud.google.lookup(&after["access_token"]).unwrap();
    assert_eq!(info.scopes, ["https://www.googleapis.com/auth/bigquery"]);
    assert_eq!(
        condition(&status, "Ready").unwrap()["observedGeneration"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attribute_condition_rejection_is_explained_with_the_principal() {
    let ns = TestNamespace::new("rejected");
    let cloud = Cloud::start(|c| c).await;
    cloud.google.set_condition(
        AUDIENCE,
        Condition::ArnContains("assumed-role/payments/".into()),
    );
    service_account(&ns, "orders-api");
    let _controller = ControllerProcess::start(&ns.name, &cloud, "r1", &[]);
    apply(&ns, &cloud, "orders-db", irsa(), json!({}), json!({}));

    let ready = eventually("Ready=False", LIMIT, || {
        condition(&status(&ns, "orders-db"), "Ready").filter(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(ready["reason"], "AttributeConditionRejected");
    let principal = format!("{ASSUMED_ROLE}/fedcred.{}.orders-api", ns.name);
    assert!(
        ready["message"].as_str().unwrap().contains(&principal),
        "{ready}"
    );
    let status = status(&ns, "orders-db");
    assert_eq!(status["awsPrincipalArn"], principal.as_str());
    assert_eq!(status["lastFailureReason"], "AttributeConditionRejected");
    assert!(status["failureCount"].as_i64().unwrap() >= 1);
    let event = eventually("a warning event", LIMIT, || {
        events(&ns, "orders-db")
            .into_iter()
            .find(|e| e["reason"] == "AttributeConditionRejected")
    })
    .await;
    assert_eq!(event["type"], "Warning");
    assert!(
        secret_data(&ns, "orders-db").is_none(),
        "no Secret without a token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sts_outage_keeps_the_old_token_backs_off_and_recovers_without_a_storm() {
    let ns = TestNamespace::new("outage");
    let cloud = Cloud::start(federated(60)).await;
    service_account(&ns, "orders-api");
    let _controller = ControllerProcess::start(&ns.name, &cloud, "r1", &[]);
    // Refresh when 90 % of the minute is left: about 6 s after issue.
    apply(
        &ns,
        &cloud,
        "orders-db",
        irsa(),
        json!({"serviceAccount": null}),
        json!({"secret": {"renewBeforePercentage": 90}}),
    );
    eventually("Ready", LIMIT, || is_ready(&ns, "orders-db")).await;
    let first = secret_data(&ns, "orders-db").unwrap();
    let calls_before = cloud.google.calls(Target::Sts);
    // Two refreshes' worth of failures (each refresh tries four times).
    cloud.sts_unavailable(8);

    let failing = eventually("the failure in status", LIMIT, || {
        let s = status(&ns, "orders-db");
        (s["failureCount"].as_i64().unwrap_or(0) >= 1).then_some(s)
    })
    .await;
    assert_eq!(
        condition(&failing, "RefreshFailing").unwrap()["reason"],
        "Upstream"
    );
    assert_eq!(
        condition(&failing, "Ready").unwrap()["status"],
        "True",
        "the old token is still valid"
    );
    assert!(failing["nextRefreshTime"].as_str().is_some());
    assert_eq!(
        secret_data(&ns, "orders-db").unwrap()["access_token"],
        first["access_token"],
        "old token kept"
    );

    let recovered = eventually("recovery", LIMIT, || {
        let s = status(&ns, "orders-db");
        (s.get("failureCount").is_none() && condition(&s, "RefreshFailing").is_none()).then_some(s)
    })
    .await;
    assert_eq!(condition(&recovered, "Ready").unwrap()["status"], "True");
    assert_ne!(
        secret_data(&ns, "orders-db").unwrap()["access_token"],
        first["access_token"]
    );
    let episode = cloud.google.calls(Target::Sts) - calls_before;
    assert!(
        episode <= 9,
        "8 failed attempts and 1 success expected, Google saw {episode} calls"
    );
}

/// After an outage, the resources of one identity do not each wait out their own backoff,
/// minutes for some: the first whose retry gets a token through wakes the others, and they are
/// answered with that token, without asking Google again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_identity_s_first_token_serves_its_other_resources_at_once() {
    const N: usize = 8;
    let ns = TestNamespace::new("wake");
    let cloud = Cloud::start(|c| c).await;
    service_account(&ns, "orders-api");
    cloud.sts_unavailable(1_000_000);
    let _controller = ControllerProcess::start(&ns.name, &cloud, "r1", &[]);
    for i in 0..N {
        apply(
            &ns,
            &cloud,
            &format!("app-{i}"),
            irsa(),
            json!({}),
            json!({}),
        );
    }
    let failures = |fc: &Value| fc["status"]["failureCount"].as_i64().unwrap_or(0);
    // Four failures each: the next retries are 20 to 40 s away, spread over the resources.
    eventually("four failures each", Duration::from_secs(150), || {
        let list = get_json(&ns, &["fedcred"])?;
        let items = list["items"].as_array()?;
        (items.len() == N && items.iter().all(|fc| failures(fc) >= 4)).then_some(())
    })
    .await;
    cloud.google.clear_faults();
    let ended = Instant::now();

    let ready =
        |fc: &Value| condition(&fc["status"], "Ready").is_some_and(|c| c["status"] == "True");
    let mut first = None;
    let last = loop {
        let list = get_json(&ns, &["fedcred"]).unwrap();
        let count = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|fc| ready(fc))
            .count();
        if count > 0 && first.is_none() {
            first = Some(ended.elapsed());
        }
        if count == N {
            break ended.elapsed();
        }
        assert!(
            ended.elapsed() < Duration::from_secs(150),
            "{count} of {N} Ready 150 s after the outage ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let first = first.unwrap();
    assert!(
        last - first < Duration::from_secs(8),
        "the first resource was Ready {first:?} after the outage ended, the last {last:?} after"
    );
    assert_eq!(
        cloud.google.exchanges(Target::Sts),
        1,
        "the identity's other resources were answered with its first token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_resumes_without_an_exchange_burst() {
    let ns = TestNamespace::new("restart");
    let cloud = Cloud::start(|c| c).await;
    service_account(&ns, "orders-api");
    let mut controller = ControllerProcess::start(&ns.name, &cloud, "r1", &[]);
    for i in 0..5 {
        apply(
            &ns,
            &cloud,
            &format!("app-{i}"),
            irsa(),
            json!({}),
            json!({}),
        );
    }
    for i in 0..5 {
        eventually("all Ready", LIMIT, || is_ready(&ns, &format!("app-{i}"))).await;
    }
    assert_eq!(
        cloud.google.exchanges(Target::Sts),
        1,
        "five resources of one identity share one exchange"
    );
    let statuses: Vec<Value> = (0..5).map(|i| status(&ns, &format!("app-{i}"))).collect();

    controller.kill();
    let restarted = ControllerProcess::start(&ns.name, &cloud, "r1", &[]);
    eventually("the new process leading", LIMIT, || {
        restarted.logs().contains("became leader").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        cloud.google.calls(Target::Sts),
        1,
        "no exchange after the restart"
    );
    for (i, before) in statuses.iter().enumerate() {
        let s = status(&ns, &format!("app-{i}"));
        assert_eq!(s["expiresAt"], before["expiresAt"]);
        assert_eq!(s["nextRefreshTime"], before["nextRefreshTime"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_writer_and_fail_over() {
    let ns = TestNamespace::new("replicas");
    let cloud = Cloud::start(|c| c).await;
    service_account(&ns, "orders-api");
    let mut a = ControllerProcess::start(&ns.name, &cloud, "replica-a", &[]);
    let mut b = ControllerProcess::start(&ns.name, &cloud, "replica-b", &[]);
    apply(&ns, &cloud, "orders-db", irsa(), json!({}), json!({}));
    eventually("Ready", LIMIT, || is_ready(&ns, "orders-db")).await;

    let lease = get_json(&ns, &["lease", "fedcred-controller"]).unwrap();
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap().to_owned();
    let (leader, standby) = if holder == "replica-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(leader.logs().contains("token written"));
    assert!(
        !standby.logs().contains("token written"),
        "the standby wrote"
    );
    assert!(!standby.logs().contains("became leader"));

    assert!(leader.terminate(), "the leader exits cleanly on SIGTERM");
    eventually("the standby taking over", Duration::from_secs(20), || {
        standby.logs().contains("became leader").then_some(())
    })
    .await;
    ns.kubectl(&["delete", "secret", "orders-db"], None)
        .success();
    eventually("the new leader repairing the Secret", LIMIT, || {
        secret_data(&ns, "orders-db")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_resource_removes_its_secret() {
    let ns = TestNamespace::new("delete");
    let cloud = Cloud::start(|c| c).await;
    service_account(&ns, "orders-api");
    let _controller = ControllerProcess::start(&ns.name, &cloud, "r1", &[]);
    apply(&ns, &cloud, "orders-db", irsa(), json!({}), json!({}));
    eventually("the Secret", LIMIT, || secret_data(&ns, "orders-db")).await;
    ns.kubectl(&["delete", "fedcred", "orders-db"], None)
        .success();
    eventually("the Secret gone", LIMIT, || {
        secret_data(&ns, "orders-db").is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_of_another_namespace_cannot_be_used() {
    let owner = TestNamespace::new("sa-owner");
    let ns = TestNamespace::new("sa-thief");
    let cloud = Cloud::start(|c| c).await;
    service_account(&owner, "orders-api");
    let _controller = ControllerProcess::start(&ns.name, &cloud, "r1", &[]);
    // Names resolve in the resource's own namespace; there is no way to point elsewhere.
    apply(&ns, &cloud, "stolen", irsa(), json!({}), json!({}));
    let ready = eventually("Ready=False", LIMIT, || {
        condition(&status(&ns, "stolen"), "Ready").filter(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(ready["reason"], "ServiceAccountNotFound");
    assert!(ready["message"].as_str().unwrap().contains(&format!(
        "ServiceAccount {}/orders-api does not exist",
        ns.name
    )));
    assert_eq!(cloud.google.calls(Target::Sts), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_identity_is_refused_where_the_admin_did_not_allow_it() {
    let ns = TestNamespace::new("no-lend");
    let cloud = Cloud::start(|c| c).await;
    let _controller = ControllerProcess::start(
        &ns.name,
        &cloud,
        "r1",
        &["--allow-controller-identity", "some-other-namespace"],
    );
    apply(
        &ns,
        &cloud,
        "bq",
        json!({"controllerIdentity": {"roleArn": ROLE}}),
        json!({}),
        json!({}),
    );
    let ready = eventually("Ready=False", LIMIT, || {
        condition(&status(&ns, "bq"), "Ready").filter(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(ready["reason"], "ControllerIdentityNotAllowed");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("controllerIdentity.allowedNamespaces")
    );
    assert_eq!(cloud.google.calls(Target::Sts), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_granted_a_role_chains_only_into_that_role() {
    let ns = TestNamespace::new("lend-role");
    let cloud = Cloud::start(|c| c).await;
    let other = "arn:aws:iam::123456789012:role/another-namespaces-role";
    let grant = format!("{}={ROLE}", ns.name);
    // The controller's own identity: credentials from moto, in its environment.
    let own = cloud.controller_credentials().await;
    support::ensure_crd();
    // At the most verbose level, which must still keep every credential out of the log.
    let controller = Launch::new(&cloud)
        .watching(&ns.name, "r1")
        .rust_log("trace")
        .args(&["--allow-controller-identity", &grant])
        .env("AWS_ACCESS_KEY_ID", &own.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &own.secret_access_key)
        .env("AWS_SESSION_TOKEN", &own.session_token)
        .start();
    apply(
        &ns,
        &cloud,
        "granted",
        json!({"controllerIdentity": {"roleArn": ROLE}}),
        json!({}),
        json!({}),
    );
    apply(
        &ns,
        &cloud,
        "other-role",
        json!({"controllerIdentity": {"roleArn": other}}),
        json!({}),
        json!({}),
    );
    apply(
        &ns,
        &cloud,
        "as-is",
        json!({"controllerIdentity": {}}),
        json!({}),
        json!({}),
    );

    eventually("granted Ready", LIMIT, || {
        condition(&status(&ns, "granted"), "Ready").filter(|c| c["status"] == "True")
    })
    .await;
    for (name, complaint) in [
        (
            "other-role",
            format!("only chained into {ROLE}, not into {other}"),
        ),
        ("as-is", format!("only chained into {ROLE}, not as is")),
    ] {
        let ready = eventually("Ready=False", LIMIT, || {
            condition(&status(&ns, name), "Ready").filter(|c| c["status"] == "False")
        })
        .await;
        assert_eq!(
            ready["reason"], "ControllerIdentityNotAllowed",
            "{name}: {ready}"
        );
        let message = ready["message"].as_str().unwrap();
        assert!(message.contains(&complaint), "{name}: {message}");
        assert!(
            message.contains(&format!("controllerIdentity.roles.{}", ns.name)),
            "{name}: {message}"
        );
    }
    // Only the granted resource reached Google.
    assert_eq!(cloud.google.calls(Target::Sts), 1);

    // The HTTP, signing and SDK libraries log bodies and signed headers at trace; they stay
    // capped, so neither the controller's keys, the chained session, the signed request nor the
    // Google token is in the log.
    let log = controller.logs();
    assert!(log.lines().count() > 50, "a trace log was written");
    let received = cloud.google.received_credentials();
    assert!(
        received.len() >= 3,
        "the doubles listed the exchange's credentials"
    );
    let own_keys = [own.secret_access_key.clone(), own.session_token.clone()];
    for value in received
        .iter()
        .chain(&cloud.google.issued_tokens())
        .chain(&own_keys)
    {
        let encoded = value
            .replace('/', "%2F")
            .replace('+', "%2B")
            .replace('=', "%3D");
        assert!(
            !log.contains(value.as_str()) && !log.contains(&encoded),
            "a credential (sha256 prefix {}) is in the trace log",
            &sha256_hex(value)[..12]
        );
    }
}

fn sha256_hex(value: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A workload whose pods use FederatedCredential `credential`, in `ns`.
fn workload(ns: &TestNamespace, kind: &str, name: &str, credential: &str, annotations: Value) {
    let template = json!({
        "metadata": {
            "labels": {"app": name, "fedcred.io/inject": "true"},
            "annotations": {"fedcred.io/credential": credential},
        },
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    });
    let mut spec = json!({"selector": {"matchLabels": {"app": name}}, "template": template});
    if kind == "StatefulSet" {
        spec["serviceName"] = json!(name);
    }
    let object = json!({"apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name, "annotations": annotations}, "spec": spec});
    ns.kubectl(&["apply", "-f", "-"], Some(&object.to_string()))
        .success();
}

/// The pod-template annotation fedcred sets to roll a workload.
fn template_hash(ns: &TestNamespace, kind: &str, name: &str) -> Option<String> {
    let v = get_json(ns, &[kind, name])?;
    v["spec"]["template"]["metadata"]["annotations"]["fedcred.io/injection-hash"]
        .as_str()
        .map(str::to_owned)
}

/// Applies `orders` with federated tokens (so without IAM database login) for one AlloyDB
/// instance, its proxy on `port` if given.
fn apply_orders_alloydb(ns: &TestNamespace, cloud: &Cloud, port: Option<u16>) {
    let mut instance = json!({"uri": support::INSTANCE, "autoIamAuthn": false});
    if let Some(port) = port {
        instance["port"] = port.into();
    }
    apply(
        ns,
        cloud,
        "orders",
        irsa(),
        json!({"serviceAccount": null}),
        json!({"alloydb": {"instances": [instance]}}),
    );
}

/// The injection hash `orders` records once Ready.
async fn recorded_injection_hash(ns: &TestNamespace) -> String {
    eventually("the injection hash recorded", LIMIT, || {
        is_ready(ns, "orders")?["injectionHash"]
            .as_str()
            .map(str::to_owned)
    })
    .await
}

/// Waits until `orders` records an injection hash other than `first`; returns it.
async fn new_injection_hash(ns: &TestNamespace, first: &str) -> String {
    eventually("a new injection hash", LIMIT, || {
        let hash = status(ns, "orders")["injectionHash"].as_str()?.to_owned();
        (hash != first).then_some(hash)
    })
    .await
}

/// Waits until the Secret of `orders` holds another token than now.
async fn orders_refreshed(ns: &TestNamespace, what: &str) {
    let token = secret_data(ns, "orders").unwrap()["access_token"].clone();
    eventually(what, LIMIT, || {
        let now = secret_data(ns, "orders")?["access_token"].clone();
        (now != token).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_roll_when_injected_settings_change_and_never_on_refresh() {
    support::ensure_crd();
    let ns = TestNamespace::new("rollout");
    // Short tokens, so that refreshes happen while the test watches.
    let cloud = Cloud::start(federated(8)).await;
    service_account(&ns, "orders-api");
    // Federated tokens, so without IAM database login.
    apply_orders_alloydb(&ns, &cloud, None);
    workload(&ns, "Deployment", "api", "orders", json!({}));
    workload(&ns, "StatefulSet", "worker", "orders", json!({}));
    workload(&ns, "DaemonSet", "agent", "orders", json!({}));
    workload(
        &ns,
        "Deployment",
        "pinned",
        "orders",
        json!({"fedcred.io/rollout": "false"}),
    );
    workload(&ns, "Deployment", "other", "payments", json!({}));
    let _controller = ControllerProcess::start(&ns.name, &cloud, "r1", &[]);
    let first = recorded_injection_hash(&ns).await;

    // Several refreshes later, nothing has been rolled.
    orders_refreshed(&ns, "two refreshes").await;
    for (kind, name) in [
        ("deployment", "api"),
        ("statefulset", "worker"),
        ("daemonset", "agent"),
    ] {
        assert_eq!(
            template_hash(&ns, kind, name),
            None,
            "{kind} {name} rolled without a change"
        );
    }

    // The proxy's local port changes: every workload using the resource rolls, except the
    // one that opted out and the one using another resource.
    apply_orders_alloydb(&ns, &cloud, Some(6543));
    let second = new_injection_hash(&ns, &first).await;
    for (kind, name) in [
        ("deployment", "api"),
        ("statefulset", "worker"),
        ("daemonset", "agent"),
    ] {
        assert_eq!(
            template_hash(&ns, kind, name).as_deref(),
            Some(second.as_str()),
            "{kind} {name} was not rolled"
        );
    }
    assert_eq!(template_hash(&ns, "deployment", "pinned"), None);
    assert_eq!(template_hash(&ns, "deployment", "other"), None);
    let rolled = events(&ns, "orders")
        .into_iter()
        .find(|e| e["reason"] == "RolledOut")
        .expect("a RolledOut event");
    let note = rolled["message"].as_str().unwrap();
    assert!(
        note.contains("Deployment/api")
            && note.contains("StatefulSet/worker")
            && note.contains("DaemonSet/agent")
            && note.contains("Deployment/pinned")
            && !note.contains("Deployment/other"),
        "{note}"
    );

    // A later refresh rolls nothing again.
    let generation = |kind: &str, name: &str| {
        get_json(&ns, &[kind, name]).unwrap()["metadata"]["generation"].clone()
    };
    let before = generation("deployment", "api");
    orders_refreshed(&ns, "another refresh").await;
    assert_eq!(generation("deployment", "api"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rollouts_off_no_workload_is_touched_and_an_event_asks_for_a_restart() {
    support::ensure_crd();
    let ns = TestNamespace::new("rollouts-off");
    let cloud = Cloud::start(|c| c).await;
    service_account(&ns, "orders-api");
    apply_orders_alloydb(&ns, &cloud, None);
    workload(&ns, "Deployment", "api", "orders", json!({}));
    let _controller = ControllerProcess::start(&ns.name, &cloud, "r1", &["--rollouts=false"]);
    let first = recorded_injection_hash(&ns).await;

    // What is injected changes: the change is recorded, the Deployment is left alone, and an
    // event says what to do.
    apply_orders_alloydb(&ns, &cloud, Some(6543));
    new_injection_hash(&ns, &first).await;
    let asked = eventually("a RolloutsOff event", LIMIT, || {
        events(&ns, "orders")
            .into_iter()
            .find(|e| e["reason"] == "RolloutsOff")
    })
    .await;
    assert!(
        asked["message"]
            .as_str()
            .unwrap()
            .contains("kubectl rollout restart"),
        "{asked}"
    );
    assert_eq!(template_hash(&ns, "deployment", "api"), None);
    assert!(
        events(&ns, "orders")
            .iter()
            .all(|e| e["reason"] != "RolledOut")
    );
}

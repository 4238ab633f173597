//! The chart's dashboard and alerts against the real Prometheus tools from Debian (`promtool`,
//! `prometheus`, installed by hack/install-tools.sh) and a running `fedcred controller`: the
//! rules parse and their unit tests pass, every query of the dashboard is valid PromQL, every
//! metric a panel or a rule reads is one the controller exports, and a real Prometheus scraping a
//! controller evaluates the rules on its real metrics.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fedcred_doubles::{Condition, Provider};
use serde_json::{Value, json};
use support::cloud::{AUDIENCE, Cloud, service_account};
use support::controller::ControllerProcess;
use support::{TestNamespace, eventually, free_port, repo_root};

fn chart_file(path: &str) -> PathBuf {
    repo_root().join("charts/fedcred").join(path)
}

fn rules_file() -> PathBuf {
    chart_file("files/prometheus-rules.yaml")
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(chart_file("files/grafana-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Runs a Prometheus tool; panics, naming the install script, when it is missing.
fn tool(name: &str, args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(name)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("{name} runs ({e}); hack/install-tools.sh installs Debian's prometheus package")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every PromQL expression of the dashboard's panels, with the panel's title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("each target has an expr");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["definition"].as_str() {
            queries.push((format!("variable {}", variable["name"]), query.to_owned()));
        }
    }
    queries
}

/// Every alert's name and expression in a rule file.
fn rule_queries(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let rules: Value = serde_norway::from_str(&text).expect("the rule file is YAML");
    let mut queries = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
            queries.push((
                name.to_owned(),
                rule["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    queries
}

/// The sample names a text exposition can carry, read from its `# TYPE` lines (a family with
/// no label set yet, such as the webhook's before its first review, has no sample line but is
/// still exported): a counter `x` is sampled as `x_total`, a histogram as `x_bucket`, `x_sum`,
/// `x_count`.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count", "_created"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}

/// The `fedcred_…` metric names an expression reads. Every metric fedcred exports has that
/// prefix; label values and legends never appear in an expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(found) = expr[i..].find("fedcred_") {
        let start = i + found;
        let boundary = start == 0 || {
            let before = bytes[start - 1];
            !(before.is_ascii_alphanumeric() || before == b'_' || before == b'"')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// `(where, metric)` for each metric a query reads that the exposition does not carry.
fn unknown_metrics(
    queries: &[(String, String)],
    exported: &BTreeSet<String>,
) -> Vec<(String, String)> {
    let mut unknown = Vec::new();
    for (place, expr) in queries {
        for name in metric_names(expr) {
            if !exported.contains(&name) {
                unknown.push((place.clone(), name));
            }
        }
    }
    unknown
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = chart_file("");
    let (ok, out) = tool(
        "promtool",
        &["check", "rules", "files/prometheus-rules.yaml"],
        &dir,
    );
    assert!(ok, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");

    // Each alert has a runbook and a severity, and a unit test that makes it fire.
    let tests = std::fs::read_to_string(chart_file("tests/alerts.test.yaml")).unwrap();
    let rules: Value =
        serde_norway::from_str(&std::fs::read_to_string(rules_file()).unwrap()).unwrap();
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let name = rule["alert"].as_str().unwrap();
        assert!(
            rule["annotations"]["runbook"].is_string(),
            "{name} has no runbook"
        );
        assert!(
            rule["labels"]["severity"].is_string(),
            "{name} has no severity"
        );
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .any(|case| case.starts_with(&format!("{name}\n")) && case.contains("exp_labels"));
        assert!(fires, "no unit test makes {name} fire");
    }

    let (ok, out) = tool(
        "promtool",
        &["test", "rules", "tests/alerts.test.yaml"],
        &dir,
    );
    assert!(ok, "promtool test rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_charts_prometheus_rule_carries_the_same_rules() {
    let out = Command::new("helm")
        .args(["template", "obs"])
        .arg(chart_file(""))
        .args([
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.grafanaDashboard.enabled=true",
            "--set",
            "metrics.grafanaDashboard.namespace=monitoring",
        ])
        .output()
        .expect("helm is on PATH (hack/test.sh puts the cached one there)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    let objects: Vec<Value> = rendered
        .split("\n---")
        .filter_map(|doc| serde_norway::from_str::<Value>(doc).ok())
        .filter(|v| v.is_object())
        .collect();
    let rule = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    let file: Value =
        serde_norway::from_str(&std::fs::read_to_string(rules_file()).unwrap()).unwrap();
    assert_eq!(
        rule["spec"], file,
        "the PrometheusRule's spec is the rule file"
    );

    // promtool reads the rendered spec too: nothing in the template mangled an expression.
    let dir = tempdir("rendered-rules");
    let spec = dir.join("rules.yaml");
    std::fs::write(&spec, serde_norway::to_string(&rule["spec"]).unwrap()).unwrap();
    let (ok, out) = tool("promtool", &["check", "rules", "rules.yaml"], &dir);
    assert!(ok, "promtool check rules (rendered):\n{out}");

    let config_map = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a ConfigMap for the Grafana sidecar");
    assert_eq!(config_map["metadata"]["namespace"], "monitoring");
    let shipped: Value =
        serde_json::from_str(config_map["data"]["fedcred.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, dashboard());
}

#[test]
fn the_dashboard_is_laid_out_for_grafana() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "fedcred-overview");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "the data source is a variable, so the dashboard imports into any Grafana"
    );
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [i64; 4])> = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap().to_owned();
        assert!(
            ids.insert(panel["id"].as_i64().unwrap()),
            "{title}: duplicate id"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}"
        );
        let refs: BTreeSet<&str> = panel["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(
            refs.len(),
            panel["targets"].as_array().unwrap().len(),
            "{title}"
        );
        let g = &panel["gridPos"];
        let rect = ["x", "y", "w", "h"].map(|k| g[k].as_i64().unwrap());
        assert!(
            rect[0] >= 0 && rect[2] > 0 && rect[0] + rect[2] <= 24,
            "{title}: {g}"
        );
        for (other, o) in &boxes {
            let apart = rect[0] + rect[2] <= o[0]
                || o[0] + o[2] <= rect[0]
                || rect[1] + rect[3] <= o[1]
                || o[1] + o[3] <= rect[1];
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title, rect));
    }
    // What the issue asks the dashboard to show.
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Seconds to expiry by resource",
        "Refresh rate by result",
        "Refresh errors by reason",
        "Exchange latency",
        "Webhook admissions by result",
        "Webhook latency",
        "Leader",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted}: {titles:?}");
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // promtool parses expressions only in rule files: each query becomes a recording rule.
    // Grafana's label_values() of the namespace variable is not PromQL; its metric is still
    // checked against the exposition below.
    let queries: Vec<(String, String)> = dashboard_queries(&dashboard())
        .into_iter()
        .filter(|(place, _)| !place.starts_with("variable"))
        .collect();
    assert!(queries.len() >= 12, "{queries:?}");
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            // Grafana variables are not PromQL; the namespace filter takes a regex.
            json!({"record": format!("dashboard:query_{i}"), "expr": expr.replace("$namespace", ".*")})
        })
        .collect();
    let dir = tempdir("dashboard-queries");
    std::fs::write(
        dir.join("queries.yaml"),
        serde_norway::to_string(&json!({"groups": [{"name": "dashboard", "rules": rules}]}))
            .unwrap(),
    )
    .unwrap();
    let (ok, out) = tool("promtool", &["check", "rules", "queries.yaml"], &dir);
    assert!(ok, "a dashboard query is not valid PromQL:\n{out}");

    // The check can fail: a broken query is refused.
    std::fs::write(
        dir.join("broken.yaml"),
        "groups: [{name: d, rules: [{record: 'dashboard:broken', expr: 'sum by (le (rate(x[5m]))'}]}]\n",
    )
    .unwrap();
    let (ok, _) = tool("promtool", &["check", "rules", "broken.yaml"], &dir);
    assert!(!ok, "promtool accepted a broken expression");
}

fn apply(ns: &TestNamespace, cloud: &Cloud, name: &str, audience: &str) {
    let spec = cloud.spec(
        json!({"serviceAccount": {"name": "orders-api"}}),
        json!({"audience": audience}),
    );
    let fc = json!({"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
        "metadata": {"name": name}, "spec": spec});
    ns.kubectl(&["apply", "-f", "-"], Some(&fc.to_string()))
        .success();
}

/// A provider whose condition refuses every principal fedcred presents.
const REFUSING: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/refusing";

/// A controller serving the webhook, with one Ready resource (`orders-db`) and one whose
/// refreshes keep failing (`refused`, AttributeConditionRejected).
async fn controller_with_one_good_and_one_failing_resource(
    prefix: &str,
) -> (TestNamespace, Cloud, ControllerProcess, u16) {
    let ns = TestNamespace::new(prefix);
    let cloud = Cloud::start(|c| {
        c.provider(Provider::new(REFUSING).with_condition(Condition::ArnContains("nobody".into())))
    })
    .await;
    service_account(&ns, "orders-api");
    let webhook_port = free_port();
    let address = format!("127.0.0.1:{webhook_port}");
    // No MutatingWebhookConfiguration of this name exists: the controller serves the webhook
    // without one, which is all the reviews posted below need.
    let configuration = format!("fedcred-{}", ns.name);
    let controller = ControllerProcess::start(
        &ns.name,
        &cloud,
        "obs",
        &[
            "--webhook-address",
            &address,
            "--webhook-dns-names",
            "127.0.0.1",
            "--webhook-configuration",
            &configuration,
            "--fedcred-image",
            "registry.example/fedcred:obs",
        ],
    );
    apply(&ns, &cloud, "orders-db", AUDIENCE);
    apply(&ns, &cloud, "refused", REFUSING);
    (ns, cloud, controller, webhook_port)
}

/// Posts to the controller's webhook, as the API server would, a review it allows (a pod
/// naming `orders-db`), one it denies (a pod naming a resource that does not exist) and a body
/// that is no review; returns the HTTP statuses.
async fn admissions(ns: &TestNamespace, port: u16) -> Option<Vec<u16>> {
    let client = reqwest::Client::builder()
        // The webhook's CA is in a Secret the test would have to read; what is checked here
        // is the metrics, not the TLS (tests/webhook_certs.rs checks that).
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let review = |pod: &str, credential: &str| {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": format!("0b8c3f0e-0000-4000-8000-00000000000{}", pod.len() % 10),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": ns.name, "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:shop:deployer"},
                "object": {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": ns.name,
                        "labels": {"fedcred.io/inject": "true"},
                        "annotations": {"fedcred.io/credential": credential}},
                    "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}},
            }
        })
        .to_string()
    };
    let mut statuses = Vec::new();
    for body in [
        review("orders", "orders-db"),
        review("lost", "no-such-credential"),
        "not a review".to_owned(),
    ] {
        let resp = client
            .post(format!("https://127.0.0.1:{port}/mutate"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .ok()?;
        statuses.push(resp.status().as_u16());
    }
    Some(statuses)
}

/// Waits until the webhook answers [`admissions`]; their statuses.
async fn webhook_answers(ns: &TestNamespace, webhook_port: u16) -> Vec<u16> {
    eventually("the webhook to answer", LIMIT, || {
        futures_block(tokio::time::timeout(
            Duration::from_secs(30),
            admissions(ns, webhook_port),
        ))
        .ok()
        .flatten()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_rules_query_only_metrics_the_controller_exports() {
    let (ns, _cloud, controller, webhook_port) =
        controller_with_one_good_and_one_failing_resource("obs-names").await;
    let reviews = webhook_answers(&ns, webhook_port).await;
    assert_eq!(reviews, [200, 200, 400]);
    let exposition = eventually("a token and a failure in /metrics", LIMIT, || {
        let text = futures_block(controller.metrics());
        (text.contains("fedcred_token_expiry_timestamp_seconds{")
            && text.contains(r#"reason="AttributeConditionRejected""#)
            && text.contains("fedcred_webhook_certificate_expiry_timestamp_seconds{"))
        .then_some(text)
    })
    .await;
    let exported = exported_names(&exposition);
    for name in [
        "fedcred_leader",
        "fedcred_webhook_admissions_total",
        "fedcred_webhook_admission_duration_seconds_bucket",
        "fedcred_webhook_certificate_expiry_timestamp_seconds",
        "fedcred_token_refreshes_total",
    ] {
        assert!(exported.contains(name), "{name} missing from\n{exposition}");
    }
    assert!(
        exposition.contains("fedcred_leader 1"),
        "the only replica leads:\n{exposition}"
    );
    for result in ["allowed", "denied", "error"] {
        let sample = format!(r#"fedcred_webhook_admissions_total{{result="{result}"}} 1"#);
        assert!(
            exposition.contains(&sample),
            "{sample} missing from\n{exposition}"
        );
    }

    let mut queries = dashboard_queries(&dashboard());
    queries.extend(rule_queries(&rules_file()));
    let read: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    assert!(read.len() >= 8, "the queries read {read:?}");
    let unknown = unknown_metrics(&queries, &exported);
    assert!(
        unknown.is_empty(),
        "queries read metrics the controller does not export: {unknown:?}\nexported: {exported:?}"
    );

    // The check fails for a panel that reads a metric that does not exist.
    let misspelled = vec![(
        "Refresh rate".to_owned(),
        "sum(rate(fedcred_token_refresh_total[5m])) + fedcred_leader".to_owned(),
    )];
    assert_eq!(
        unknown_metrics(&misspelled, &exported),
        [(
            "Refresh rate".to_owned(),
            "fedcred_token_refresh_total".to_owned()
        )]
    );
}

const LIMIT: Duration = Duration::from_secs(60);

/// Runs a future to completion from synchronous code inside the test's runtime.
fn futures_block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

fn tempdir(stem: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fedcred-{stem}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A real Prometheus server, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(scrape_port: u16) -> Prometheus {
        let dir = tempdir("prometheus");
        std::fs::copy(rules_file(), dir.join("rules.yaml")).unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [rules.yaml]\n\
             scrape_configs:\n  - job_name: fedcred\n    static_configs: [{{targets: ['127.0.0.1:{scrape_port}']}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("prometheus runs; hack/install-tools.sh installs Debian's prometheus package");
        Prometheus { child, port, log }
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let url = url::Url::parse_with_params(
            &format!("http://127.0.0.1:{}/api/v1/{path}", self.port),
            query,
        )
        .ok()?;
        let resp = reqwest::get(url).await.ok()?;
        resp.json().await.ok()
    }

    async fn query(&self, expr: &str) -> Option<Value> {
        self.api("query", &[("query", expr)]).await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_controller_and_evaluates_the_rules() {
    let (ns, _cloud, controller, webhook_port) =
        controller_with_one_good_and_one_failing_resource("obs-prom").await;
    let prometheus = Prometheus::start(controller.metrics_port);
    webhook_answers(&ns, webhook_port).await;

    // The good resource's token, as Prometheus computes its time left.
    let left = eventually("orders-db's time to expiry in Prometheus", LIMIT, || {
        let answer = futures_block(
            prometheus
                .query(r#"fedcred_token_expiry_timestamp_seconds{name="orders-db"} - time()"#),
        )?;
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()?
            .parse::<f64>()
            .ok()?;
        Some(value)
    })
    .await;
    assert!(
        left > 0.0 && left <= 3600.0,
        "seconds to expiry {left} out of the token's lifetime"
    );

    // The failing resource's refreshes make FedcredTokenRefreshFailing pending (it fires only
    // after 15 minutes), with the reason from the controller's metric.
    let alert = eventually("FedcredTokenRefreshFailing pending", LIMIT, || {
        let answer = futures_block(prometheus.api("alerts", &[]))?;
        answer["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "FedcredTokenRefreshFailing")
            .cloned()
    })
    .await;
    assert_eq!(alert["state"], "pending", "{alert}");
    assert_eq!(alert["labels"]["reason"], "AttributeConditionRejected");

    // Every rule evaluates without error on the real series, and the ones about a healthy
    // part stay quiet: one leader, a good token far from expiry.
    let rules = eventually("rules evaluated", LIMIT, || {
        let answer = futures_block(prometheus.api("rules", &[]))?;
        let rules = answer["data"]["groups"][0]["rules"].as_array()?.clone();
        rules
            .iter()
            .all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            })
            .then_some(rules)
    })
    .await;
    assert_eq!(rules.len(), 10);
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        if [
            "FedcredNoLeader",
            "FedcredSeveralLeaders",
            "FedcredTokenNearExpiry",
            "FedcredTokenExpired",
        ]
        .contains(&rule["name"].as_str().unwrap())
        {
            assert_eq!(rule["state"], "inactive", "{rule}");
        }
    }

    // Every dashboard query runs on the real series; the token and leader panels have data.
    for (panel, expr) in dashboard_queries(&dashboard()) {
        let expr = expr.replace("$namespace", ".*");
        let answer = if panel.starts_with("variable") {
            // label_values() is Grafana's; Prometheus answers it through the labels API.
            prometheus
                .api(
                    "label/namespace/values",
                    &[("match[]", "fedcred_token_expiry_timestamp_seconds")],
                )
                .await
        } else {
            prometheus.query(&expr).await
        }
        .unwrap_or_else(|| panic!("{panel}: Prometheus did not answer {expr}"));
        assert_eq!(answer["status"], "success", "{panel}: {expr}: {answer}");
        let empty = answer["data"]["result"]
            .as_array()
            .or(answer["data"].as_array())
            .is_none_or(Vec::is_empty);
        if [
            "Leader",
            "Soonest token expiry",
            "Seconds to expiry by resource",
            "Refresh rate by result",
            "Exchange latency",
            "Webhook admissions by result",
            "Webhook certificate",
        ]
        .contains(&panel.as_str())
            || panel.starts_with("variable")
        {
            assert!(!empty, "{panel}: no data for {expr}: {answer}");
        }
    }
}

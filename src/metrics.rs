//! Prometheus metrics. Labels carry names and stable reasons only, never token values.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExchangeLabels {
    /// `success` or `failure`.
    pub result: &'static str,
    /// Stable failure reason; empty on success.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `allowed`, `denied` (the review refused the pod) or `error` (no review could be read:
    /// a 4xx answer).
    pub result: &'static str,
}

/// Reason of `fedcred_webhook_turned_away_total`: a request answered 503 because the bytes of
/// bodies being read were at the budget.
pub const BODY_BUDGET: &str = "body_budget";

/// Reason of `fedcred_webhook_turned_away_total`: the server stopped accepting because every
/// connection it may serve at once was taken (counted once per pause, not per waiting client).
pub const MAX_CONNECTIONS: &str = "max_connections";

/// Every reason of `fedcred_webhook_turned_away_total`.
pub const TURNED_AWAY_REASONS: [&str; 2] = [BODY_BUDGET, MAX_CONNECTIONS];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// `serving` or `ca`.
    pub certificate: &'static str,
}

/// The controller's metrics.
pub struct Metrics {
    pub registry: Registry,
    /// Token refreshes by result and reason (a refresh served from the shared cache counts).
    pub exchanges: Family<ExchangeLabels, Counter>,
    /// Time to obtain a token, cache hits included.
    pub exchange_duration: Histogram,
    /// Reconciles that ended in an error, by reason.
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    /// When each resource's token expires, written at each scrape as
    /// `token_expiry_timestamp_seconds` and `token_seconds_to_expiry`.
    expiries: Arc<Expiries>,
    /// 1 while this replica holds the leader Lease (or runs without election), else 0.
    pub leader: Gauge,
    /// Admission reviews answered by the webhook, by result.
    pub admissions: Family<AdmissionLabels, Counter>,
    /// Time to answer an admission review, from the request's head to the answer.
    pub admission_duration: Histogram,
    /// When the webhook's serving certificate and its CA expire (Unix seconds).
    pub certificate_expiry: Family<CertificateLabels, Gauge>,
    /// Webhook clients refused or kept waiting to protect the process, by reason
    /// ([`TURNED_AWAY_REASONS`]).
    pub turned_away: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fedcred");
        let exchanges = Family::<ExchangeLabels, Counter>::default();
        registry.register(
            "token_refreshes",
            "Token refreshes by result and reason",
            exchanges.clone(),
        );
        let exchange_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "token_refresh_duration_seconds",
            "Time to obtain a token from the cache or an exchange",
            exchange_duration.clone(),
        );
        let expiries = Arc::new(Expiries::default());
        registry.register_collector(Box::new(expiries.clone()));
        let reconcile_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that ended in an error",
            reconcile_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica is the leader that refreshes tokens",
            leader.clone(),
        );
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "webhook_admissions",
            "Admission reviews answered, by result",
            admissions.clone(),
        );
        // Reviews are answered from a cache in well under a millisecond; a lookup that goes to
        // the API server takes up to the 2 s lookup timeout.
        let admission_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "webhook_admission_duration_seconds",
            "Time to answer an admission review",
            admission_duration.clone(),
        );
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "webhook_certificate_expiry_timestamp_seconds",
            "When the webhook's serving certificate and CA expire, in Unix seconds",
            certificate_expiry.clone(),
        );
        let turned_away = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "webhook_turned_away",
            "Webhook requests answered 503 because the body budget was spent (reason body_budget), \
             and pauses in accepting because every connection was taken (reason max_connections)",
            turned_away.clone(),
        );
        Metrics {
            registry,
            exchanges,
            exchange_duration,
            expiries,
            reconcile_errors,
            leader,
            admissions,
            admission_duration,
            certificate_expiry,
            turned_away,
        }
    }
}

impl Metrics {
    pub fn shared() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    pub fn observe_refresh(&self, elapsed: Duration, failure: Option<&'static str>) {
        self.exchange_duration.observe(elapsed.as_secs_f64());
        let labels = match failure {
            None => ExchangeLabels {
                result: "success",
                reason: "",
            },
            Some(reason) => ExchangeLabels {
                result: "failure",
                reason,
            },
        };
        self.exchanges.get_or_create(&labels).inc();
    }

    /// Records that the token of resource `namespace`/`name` expires in `seconds`.
    pub fn set_expiry(&self, namespace: &str, name: &str, seconds: i64) {
        let at = jiff::Timestamp::now().as_second().saturating_add(seconds);
        self.expiries.set(namespace, name, at);
    }

    /// Drops the expiry series of resource `namespace`/`name`.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.expiries.remove(namespace, name);
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Records one answered admission review: `allowed` is `None` when no review could be read.
    pub fn observe_admission(&self, elapsed: Duration, allowed: Option<bool>) {
        self.admission_duration.observe(elapsed.as_secs_f64());
        let result = match allowed {
            Some(true) => "allowed",
            Some(false) => "denied",
            None => "error",
        };
        self.admissions
            .get_or_create(&AdmissionLabels { result })
            .inc();
    }

    /// Counts one webhook client turned away for `reason` (one of [`TURNED_AWAY_REASONS`]).
    pub fn turn_away(&self, reason: &'static str) {
        self.turned_away
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records when the webhook's serving certificate and CA expire.
    pub fn set_certificate_expiry(&self, serving: jiff::Timestamp, ca: jiff::Timestamp) {
        for (certificate, at) in [("serving", serving), ("ca", ca)] {
            self.certificate_expiry
                .get_or_create(&CertificateLabels { certificate })
                .set(at.as_second());
        }
    }

    /// Keeps only the expiry series of resources for which `exists` holds.
    pub fn retain_resources(&self, exists: impl Fn(&str, &str) -> bool) {
        self.expiries.retain(exists);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Each resource's token expiry (Unix seconds), kept once per resource and written at each
/// scrape as two series: `token_expiry_timestamp_seconds` and `token_seconds_to_expiry`, the
/// seconds left at that moment. Names are kept under their namespace, each string once.
#[derive(Debug, Default)]
struct Expiries(std::sync::Mutex<HashMap<Box<str>, ExpiryByName>>);

/// Expiry (Unix seconds) by resource name, in one namespace.
type ExpiryByName = HashMap<Box<str>, i64>;

impl Expiries {
    fn set(&self, namespace: &str, name: &str, at: i64) {
        let mut namespaces = lock(&self.0);
        match namespaces.get_mut(namespace) {
            Some(names) => match names.get_mut(name) {
                Some(known) => *known = at,
                None => {
                    names.insert(name.into(), at);
                }
            },
            None => {
                namespaces.insert(namespace.into(), HashMap::from([(name.into(), at)]));
            }
        }
    }

    fn remove(&self, namespace: &str, name: &str) {
        let mut namespaces = lock(&self.0);
        if let Some(names) = namespaces.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                namespaces.remove(namespace);
            }
        }
    }

    fn retain(&self, exists: impl Fn(&str, &str) -> bool) {
        let mut namespaces = lock(&self.0);
        namespaces.retain(|namespace, names| {
            names.retain(|name, _| exists(namespace, name));
            !names.is_empty()
        });
    }
}

impl Collector for Expiries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = jiff::Timestamp::now().as_second();
        let namespaces = lock(&self.0);
        for (name, help, left) in [
            (
                "token_seconds_to_expiry",
                "Seconds until the token in each FederatedCredential's Secret expires",
                true,
            ),
            (
                "token_expiry_timestamp_seconds",
                "When the token in each FederatedCredential's Secret expires, in Unix seconds",
                false,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (namespace, names) in namespaces.iter() {
                for (resource, at) in names {
                    let labels = [("namespace", &**namespace), ("name", &**resource)];
                    let value = if left { at.saturating_sub(now) } else { *at };
                    family.encode_family(&labels)?.encode_gauge(&value)?;
                }
            }
        }
        Ok(())
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_resource_loses_its_series_at_housekeeping() {
        let metrics = Metrics::default();
        metrics.set_expiry("shop", "orders-db", 1800);
        metrics.set_expiry("shop", "reports", 1800);
        assert!(metrics.render().contains(r#"name="reports""#));
        metrics.retain_resources(|_, name| name == "orders-db");
        let text = metrics.render();
        assert!(!text.contains(r#"name="reports""#), "{text}");
        assert!(
            text.contains(
                r#"fedcred_token_expiry_timestamp_seconds{namespace="shop",name="orders-db"}"#
            ),
            "{text}"
        );
    }

    /// The value of the series that `series` (name and labels) starts, in `text`.
    fn value(text: &str, series: &str) -> Option<i64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn the_expiry_timestamp_is_now_plus_the_seconds_left() {
        let metrics = Metrics::default();
        let before = jiff::Timestamp::now().as_second();
        metrics.set_expiry("shop", "orders-db", 600);
        let text = metrics.render();
        let labels = r#"{namespace="shop",name="orders-db"}"#;
        let at = value(
            &text,
            &format!("fedcred_token_expiry_timestamp_seconds{labels}"),
        );
        let left = value(&text, &format!("fedcred_token_seconds_to_expiry{labels}"));
        let after = jiff::Timestamp::now().as_second();
        assert!(
            at.is_some_and(|at| (before + 600..=after + 600).contains(&at)),
            "{at:?} vs {before}: {text}"
        );
        assert!(
            left.is_some_and(|left| (599..=600).contains(&left)),
            "{left:?}: {text}"
        );
        assert!(
            text.contains("# TYPE fedcred_token_seconds_to_expiry gauge"),
            "{text}"
        );
    }

    #[test]
    fn the_seconds_left_are_counted_at_each_scrape_and_an_expired_token_shows_below_zero() {
        let metrics = Metrics::default();
        metrics.set_expiry("shop", "stale", -30);
        let text = metrics.render();
        let left = value(
            &text,
            r#"fedcred_token_seconds_to_expiry{namespace="shop",name="stale"}"#,
        );
        assert!(left.is_some_and(|l| (-31..=-30).contains(&l)), "{text}");
    }

    #[test]
    fn each_resource_is_one_series_per_family_and_forgetting_it_drops_both() {
        let metrics = Metrics::default();
        metrics.set_expiry("shop", "orders-db", 1800);
        metrics.set_expiry("shop", "orders-db", 3600);
        metrics.set_expiry("billing", "orders-db", 1800);
        let text = metrics.render();
        let count = |family: &str| {
            text.lines()
                .filter(|l| l.starts_with(&format!("{family}{{")))
                .count()
        };
        assert_eq!(count("fedcred_token_seconds_to_expiry"), 2, "{text}");
        assert_eq!(count("fedcred_token_expiry_timestamp_seconds"), 2, "{text}");
        let left = value(
            &text,
            r#"fedcred_token_seconds_to_expiry{namespace="shop",name="orders-db"}"#,
        );
        assert!(
            left.is_some_and(|l| l > 1800),
            "the later expiry wins: {text}"
        );
        metrics.forget("shop", "orders-db");
        let text = metrics.render();
        assert!(!text.contains(r#"namespace="shop""#), "{text}");
        assert!(text.contains(r#"namespace="billing""#), "{text}");
    }

    #[test]
    fn webhook_clients_turned_away_are_counted_by_reason() {
        let metrics = Metrics::default();
        metrics.turn_away(BODY_BUDGET);
        metrics.turn_away(BODY_BUDGET);
        metrics.turn_away(MAX_CONNECTIONS);
        let text = metrics.render();
        assert!(
            text.contains(r#"fedcred_webhook_turned_away_total{reason="body_budget"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"fedcred_webhook_turned_away_total{reason="max_connections"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn admissions_are_counted_by_result() {
        let metrics = Metrics::default();
        metrics.observe_admission(Duration::from_millis(1), Some(true));
        metrics.observe_admission(Duration::from_millis(1), Some(false));
        metrics.observe_admission(Duration::from_millis(1), None);
        let text = metrics.render();
        for result in ["allowed", "denied", "error"] {
            assert!(
                text.contains(&format!(
                    r#"fedcred_webhook_admissions_total{{result="{result}"}} 1"#
                )),
                "{text}"
            );
        }
        assert!(
            text.contains("fedcred_webhook_admission_duration_seconds_count 3"),
            "{text}"
        );
    }
}

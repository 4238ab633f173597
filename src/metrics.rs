//! Prometheus metrics. Labels carry names and stable reasons only, never token values.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
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
pub struct ResourceLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// The controller's metrics.
pub struct Metrics {
    pub registry: Registry,
    /// Token refreshes by result and reason (a refresh served from the shared cache counts).
    pub exchanges: Family<ExchangeLabels, Counter>,
    /// Time to obtain a token, cache hits included.
    pub exchange_duration: Histogram,
    /// Seconds until each resource's token expires.
    pub seconds_to_expiry: Family<ResourceLabels, Gauge>,
    /// Reconciles that ended in an error, by reason.
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    known_resources: std::sync::Mutex<std::collections::HashSet<ResourceLabels>>,
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
        let seconds_to_expiry = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "token_seconds_to_expiry",
            "Seconds until the token in each FederatedCredential's Secret expires",
            seconds_to_expiry.clone(),
        );
        let reconcile_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that ended in an error",
            reconcile_errors.clone(),
        );
        Metrics {
            registry,
            exchanges,
            exchange_duration,
            seconds_to_expiry,
            reconcile_errors,
            known_resources: std::sync::Mutex::new(std::collections::HashSet::new()),
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

    pub fn set_expiry(&self, namespace: &str, name: &str, seconds: i64) {
        let labels = ResourceLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.seconds_to_expiry.get_or_create(&labels).set(seconds);
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        self.seconds_to_expiry.remove(&ResourceLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
    }

    /// Keeps only the expiry series of resources for which `exists` holds.
    pub fn retain_resources(&self, exists: impl Fn(&str, &str) -> bool) {
        // prometheus-client cannot list a family's label sets; remember them here instead.
        let known: Vec<ResourceLabels> = self
            .known_resources
            .lock()
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default();
        for labels in known {
            if !exists(&labels.namespace, &labels.name) {
                self.forget(&labels.namespace, &labels.name);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

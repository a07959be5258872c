//! Operator metrics (Prometheus, via `prometheus-client`): reconciles, failures by reason,
//! reconcile latency; the Kinde client registers its own under the same registry.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    pub kind: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// All operator metrics.
#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<KindLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    /// Seconds since the current credentials of an app were issued.
    pub credential_issued: Family<AppLabels, Gauge>,
    /// Rotations by result (`succeeded`, `failed`).
    pub rotations: Family<ResultLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            credential_issued: Family::default(),
            rotations: Family::default(),
        };
        registry.register("reconciles", "Reconciles by kind", m.reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Failed reconciles by kind and error reason",
            m.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile latency by kind",
            m.duration.clone(),
        );
        registry.register(
            "credential_issued_timestamp_seconds",
            "Unix time the current credentials of each M2MApplication were issued (credential age = now - this)",
            m.credential_issued.clone(),
        );
        registry.register(
            "rotations",
            "Credential rotations by result",
            m.rotations.clone(),
        );
        m
    }

    pub fn reconciled(&self, kind: &'static str, took: Duration) {
        self.reconciles.get_or_create(&KindLabels { kind }).inc();
        self.duration
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }

    pub fn failed(&self, kind: &'static str, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabels { kind, reason })
            .inc();
    }
}

//! Prometheus metrics of the Kinde client: every call counted and timed by operation and
//! status, plus time spent waiting on the rate limiter and token fetches.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    pub operation: &'static str,
    /// HTTP status code, or `transport` / `timeout` when there was none.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    pub operation: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 12))
}

/// Kinde client metrics; register once, share through the client.
#[derive(Debug, Clone)]
pub struct KindeMetrics {
    calls: Family<CallLabels, Counter>,
    latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    rate_limit_wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pace: Gauge<f64, std::sync::atomic::AtomicU64>,
    waiting: Gauge,
}

impl Default for KindeMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            rate_limit_wait_seconds: Counter::default(),
            pace: Gauge::default(),
            waiting: Gauge::default(),
        }
    }
}

impl KindeMetrics {
    /// Creates the metrics and registers them under `registry` (prefix it as you like).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "kinde_requests",
            "Kinde API calls by operation and HTTP status (or transport/timeout)",
            m.calls.clone(),
        );
        registry.register(
            "kinde_request_duration_seconds",
            "Latency of Kinde API calls by operation",
            m.latency.clone(),
        );
        registry.register(
            "kinde_rate_limit_wait_seconds",
            "Time Kinde calls spent waiting for the client-side rate limit or a 429 reset",
            m.rate_limit_wait_seconds.clone(),
        );
        registry.register(
            "kinde_pace_requests_per_second",
            "The pace the client currently allows itself (the configured rate, lowered by Kinde's 429s and recovering with successes; 0 when unlimited)",
            m.pace.clone(),
        );
        registry.register(
            "kinde_calls_waiting",
            "Kinde calls waiting for the client's pace or a 429 reset",
            m.waiting.clone(),
        );
        m
    }

    /// The limiter's current pace and queue, as last seen.
    pub(crate) fn limiter(&self, pace: Option<f64>, waiting: usize) {
        self.pace.set(pace.unwrap_or(0.0));
        self.waiting.set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    pub(crate) fn observe(&self, operation: &'static str, status: String, elapsed: Duration) {
        self.calls
            .get_or_create(&CallLabels { operation, status })
            .inc();
        self.latency
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn waited(&self, waited: Duration) {
        if !waited.is_zero() {
            self.rate_limit_wait_seconds.inc_by(waited.as_secs_f64());
        }
    }

    /// Calls of `operation` that ended with `status` so far (for tests and diagnostics).
    pub fn calls(&self, operation: &'static str, status: &str) -> u64 {
        self.calls
            .get_or_create(&CallLabels {
                operation,
                status: status.to_owned(),
            })
            .get()
    }

    /// Seconds spent waiting on the limiter so far.
    pub fn rate_limit_wait(&self) -> f64 {
        self.rate_limit_wait_seconds.get()
    }
}

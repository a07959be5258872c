//! Prometheus metrics of the Kinde client: every call counted and timed by operation and
//! status, plus time spent waiting on the rate limiter and token fetches.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    /// The business the call went to: `default` (the flags'), `KindeConnection/<ns>/<name>`
    /// or `ClusterKindeConnection/<name>`.
    pub connection: Arc<str>,
    pub operation: &'static str,
    /// HTTP status code, or `transport` / `timeout` when there was none.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    pub connection: Arc<str>,
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    pub connection: Arc<str>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 12))
}

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Kinde client metrics; register once, then one handle per business
/// ([`KindeMetrics::for_connection`]): the series are shared, the `connection` label is the
/// handle's.
#[derive(Debug, Clone)]
pub struct KindeMetrics {
    connection: Arc<str>,
    calls: Family<CallLabels, Counter>,
    latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    rate_limit_wait_seconds: Family<ConnectionLabels, FloatCounter>,
    pace: Family<ConnectionLabels, FloatGauge>,
    waiting: Family<ConnectionLabels, Gauge>,
}

/// The `connection` label of the flags' business.
pub const DEFAULT_CONNECTION: &str = "default";

impl Default for KindeMetrics {
    fn default() -> Self {
        Self {
            connection: DEFAULT_CONNECTION.into(),
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            rate_limit_wait_seconds: Family::default(),
            pace: Family::default(),
            waiting: Family::default(),
        }
    }
}

impl KindeMetrics {
    /// Creates the metrics and registers them under `registry` (prefix it as you like).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "kinde_requests",
            "Kinde API calls by connection (business), operation and HTTP status (or transport/timeout)",
            m.calls.clone(),
        );
        registry.register(
            "kinde_request_duration_seconds",
            "Latency of Kinde API calls by connection and operation",
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

    /// The same series, labelled `connection` (see [`CallLabels`]).
    pub fn for_connection(&self, connection: &str) -> Self {
        Self {
            connection: connection.into(),
            ..self.clone()
        }
    }

    /// Drops this business's gauges (its connection is gone: a stale pace would read as
    /// a live one). Its counters stay, as counters of a finished job do.
    pub fn forget(&self) {
        let labels = self.connection_labels();
        self.pace.remove(&labels);
        self.waiting.remove(&labels);
    }

    fn connection_labels(&self) -> ConnectionLabels {
        ConnectionLabels {
            connection: self.connection.clone(),
        }
    }

    /// The limiter's current pace and queue, as last seen.
    pub(crate) fn limiter(&self, pace: Option<f64>, waiting: usize) {
        let labels = self.connection_labels();
        self.pace.get_or_create(&labels).set(pace.unwrap_or(0.0));
        self.waiting
            .get_or_create(&labels)
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    pub(crate) fn observe(&self, operation: &'static str, status: String, elapsed: Duration) {
        let connection = self.connection.clone();
        self.latency
            .get_or_create(&OperationLabels {
                connection: connection.clone(),
                operation,
            })
            .observe(elapsed.as_secs_f64());
        self.calls
            .get_or_create(&CallLabels {
                connection,
                operation,
                status,
            })
            .inc();
    }

    pub(crate) fn waited(&self, waited: Duration) {
        if !waited.is_zero() {
            self.rate_limit_wait_seconds
                .get_or_create(&self.connection_labels())
                .inc_by(waited.as_secs_f64());
        }
    }

    /// Calls of `operation` to this business that ended with `status` so far (for tests
    /// and diagnostics).
    pub fn calls(&self, operation: &'static str, status: &str) -> u64 {
        self.calls
            .get_or_create(&CallLabels {
                connection: self.connection.clone(),
                operation,
                status: status.to_owned(),
            })
            .get()
    }

    /// This business's calls waiting for the pace or a 429 reset, as last published.
    pub fn calls_waiting(&self) -> i64 {
        self.waiting.get_or_create(&self.connection_labels()).get()
    }

    /// Seconds this business's calls spent waiting on the limiter so far.
    pub fn rate_limit_wait(&self) -> f64 {
        self.rate_limit_wait_seconds
            .get_or_create(&self.connection_labels())
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).expect("encodes");
        out
    }

    #[test]
    fn each_business_has_its_own_series_and_a_gone_one_loses_its_gauges() {
        let mut registry = Registry::default();
        let default = KindeMetrics::register(&mut registry);
        let staging = default.for_connection("KindeConnection/team-a/staging");
        default.observe("getApplications", "200".into(), Duration::from_millis(20));
        staging.observe("getApplications", "429".into(), Duration::from_millis(20));
        default.limiter(Some(20.0), 0);
        staging.limiter(Some(6.0), 3);
        staging.waited(Duration::from_secs(2));

        assert_eq!(default.calls("getApplications", "200"), 1);
        assert_eq!(default.calls("getApplications", "429"), 0);
        assert_eq!(staging.calls("getApplications", "429"), 1);
        assert!((staging.rate_limit_wait() - 2.0).abs() < 1e-9);
        assert!(default.rate_limit_wait().abs() < 1e-9);
        let out = text(&registry);
        for line in [
            r#"kinde_requests_total{connection="default",operation="getApplications",status="200"} 1"#,
            r#"kinde_requests_total{connection="KindeConnection/team-a/staging",operation="getApplications",status="429"} 1"#,
            r#"kinde_pace_requests_per_second{connection="default"} 20.0"#,
            r#"kinde_pace_requests_per_second{connection="KindeConnection/team-a/staging"} 6.0"#,
            r#"kinde_calls_waiting{connection="KindeConnection/team-a/staging"} 3"#,
        ] {
            assert!(out.contains(line), "{line} not in:\n{out}");
        }

        staging.forget();
        let out = text(&registry);
        assert!(
            !out.contains(
                r#"kinde_pace_requests_per_second{connection="KindeConnection/team-a/staging"}"#
            ),
            "{out}"
        );
        assert!(out.contains(r#"kinde_pace_requests_per_second{connection="default"} 20.0"#));
        // Counters stay.
        assert!(out.contains(r#"connection="KindeConnection/team-a/staging",operation="getApplications",status="429"} 1"#));
    }
}

//! What tests inject and observe around the emulated endpoints: which operation a request
//! is, queued faults, the optional rate limit, and per-operation call counters.
//!
//! Operation names are the spec's `operationId`s (plus `token` for `/oauth2/token`), so a
//! test, a fault and an operator metric all speak of the same thing.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use axum::http::Method;
use serde::{Deserialize, Serialize};

/// The token endpoint's operation name.
pub(crate) const TOKEN: &str = "token";

/// Every operation name a fault can target.
pub(crate) const OPERATIONS: &[&str] = &[
    "createApplication",
    "getApplication",
    "getApplications",
    "updateApplication",
    "deleteApplication",
    "updateApplicationTokens",
    "getApplicationPropertyValues",
    "updateApplicationsProperty",
    "GetProperties",
    "CreateProperty",
    "GetCategories",
    "CreateCategory",
    "addAPIs",
    "getAPI",
    "getAPIs",
    "deleteAPI",
    "getAPIScopes",
    "getAPIScope",
    "addAPIScope",
    "updateAPIScope",
    "deleteAPIScope",
    "updateAPIApplications",
    "addAPIApplicationScope",
    "deleteAPIApplicationScope",
    TOKEN,
];

/// The operation a request addresses, from its method and path; `None` for anything that
/// is not an emulated Kinde operation (control surface, JWKS, unknown routes).
pub(crate) fn classify(method: &Method, path: &str) -> Option<&'static str> {
    if path == "/oauth2/token" {
        return (method == Method::POST).then_some(TOKEN);
    }
    let rest = path.strip_prefix("/api/v1/")?;
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let m = method.as_str();
    let op = match (segs.as_slice(), m) {
        (["applications"], "GET") => "getApplications",
        (["applications"], "POST") => "createApplication",
        (["applications", _], "GET") => "getApplication",
        (["applications", _], "PATCH") => "updateApplication",
        (["applications", _], "DELETE") => "deleteApplication",
        (["applications", _, "tokens"], "PATCH") => "updateApplicationTokens",
        (["applications", _, "properties"], "GET") => "getApplicationPropertyValues",
        (["applications", _, "properties", _], "PUT") => "updateApplicationsProperty",
        (["properties"], "GET") => "GetProperties",
        (["properties"], "POST") => "CreateProperty",
        (["property_categories"], "GET") => "GetCategories",
        (["property_categories"], "POST") => "CreateCategory",
        (["apis"], "GET") => "getAPIs",
        (["apis"], "POST") => "addAPIs",
        (["apis", _], "GET") => "getAPI",
        (["apis", _], "DELETE") => "deleteAPI",
        (["apis", _, "scopes"], "GET") => "getAPIScopes",
        (["apis", _, "scopes"], "POST") => "addAPIScope",
        (["apis", _, "scopes", _], "GET") => "getAPIScope",
        (["apis", _, "scopes", _], "PATCH") => "updateAPIScope",
        (["apis", _, "scopes", _], "DELETE") => "deleteAPIScope",
        (["apis", _, "applications"], "PATCH") => "updateAPIApplications",
        (["apis", _, "applications", _, "scopes", _], "POST") => "addAPIApplicationScope",
        (["apis", _, "applications", _, "scopes", _], "DELETE") => "deleteAPIApplicationScope",
        _ => return None,
    };
    Some(op)
}

/// A fault as posted to `POST /_emulator/faults`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultSpec {
    pub(crate) operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<u16>,
    #[serde(default = "one")]
    pub(crate) times: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) latency_ms: Option<u64>,
    #[serde(default)]
    pub(crate) drop_response: bool,
    /// Finish the call even if the client has given up meanwhile (with `latency_ms`
    /// longer than the client's timeout: a create Kinde completes after the client
    /// reported its outcome unknown).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) detached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) headers: Option<BTreeMap<String, String>>,
}

fn one() -> u32 {
    1
}

impl FaultSpec {
    /// Rejects faults that could never apply or do nothing.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !OPERATIONS.contains(&self.operation.as_str()) {
            return Err(format!(
                "unknown operation {:?}; expected one of {}",
                self.operation,
                OPERATIONS.join(", ")
            ));
        }
        if self.times == 0 {
            return Err("times must be at least 1".into());
        }
        if let Some(status) = self.status
            && !(200..=599).contains(&status)
        {
            return Err("status must be between 200 and 599".into());
        }
        if self.status.is_none() && self.latency_ms.is_none() && !self.drop_response {
            return Err("a fault needs at least one of status, latency_ms, drop_response".into());
        }
        if (self.body.is_some() || self.headers.is_some()) && self.status.is_none() {
            return Err("body and headers need a status".into());
        }
        if let Some(headers) = &self.headers {
            for (name, value) in headers {
                axum::http::HeaderName::try_from(name.as_str())
                    .map_err(|_| format!("invalid header name {name:?}"))?;
                axum::http::HeaderValue::try_from(value.as_str())
                    .map_err(|_| format!("invalid value for header {name:?}"))?;
            }
        }
        Ok(())
    }
}

/// A fixed-window request budget for management calls.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimit {
    pub(crate) requests: u32,
    pub(crate) per_seconds: u64,
}

/// A cap on management calls in flight at once, as Kinde's concurrency limiter: a call
/// arriving while `max_in_flight` are being served gets 429 with `RateLimit-Reset:
/// reset_secs` and is not processed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConcurrencyLimit {
    pub(crate) max_in_flight: u32,
    #[serde(default = "one_second")]
    pub(crate) reset_secs: u64,
}

fn one_second() -> u64 {
    1
}

impl ConcurrencyLimit {
    /// Whether one more call may start while `in_flight` are being served; the refusal
    /// carries the `RateLimit-Reset` seconds.
    pub(crate) fn admit(&self, in_flight: u32) -> Result<(), u64> {
        if in_flight < self.max_in_flight {
            Ok(())
        } else {
            Err(self.reset_secs.max(1))
        }
    }
}

#[derive(Debug)]
struct Window {
    limit: RateLimit,
    started: Instant,
    used: u32,
}

/// Counters of one operation, as `GET /_emulator/calls` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Counter {
    pub(crate) calls: u64,
    pub(crate) writes: u64,
    pub(crate) statuses: BTreeMap<String, u64>,
}

/// Faults, rate limit and counters behind one lock.
#[derive(Debug, Default)]
pub(crate) struct Harness {
    faults: VecDeque<FaultSpec>,
    window: Option<Window>,
    concurrency: Option<ConcurrencyLimit>,
    /// Management calls being served now (counted whether or not a limit is set, so a
    /// limit set mid-flight sees the calls already running).
    in_flight: u32,
    counters: BTreeMap<&'static str, Counter>,
    /// Added to every call (management and token), as the network and Kinde's own
    /// processing add it: benchmarks measure against a realistic round trip.
    latency: Duration,
}

impl Harness {
    pub(crate) fn add_fault(&mut self, fault: FaultSpec) {
        self.faults.push_back(fault);
    }

    pub(crate) fn faults(&self) -> Vec<FaultSpec> {
        self.faults.iter().cloned().collect()
    }

    pub(crate) fn clear_faults(&mut self) -> usize {
        let n = self.faults.len();
        self.faults.clear();
        n
    }

    /// Takes one use of the oldest pending fault for `op`.
    pub(crate) fn take_fault(&mut self, op: &str) -> Option<FaultSpec> {
        let idx = self.faults.iter().position(|f| f.operation == op)?;
        let fault = self.faults.get_mut(idx)?;
        fault.times -= 1;
        let taken = fault.clone();
        if fault.times == 0 {
            self.faults.remove(idx);
        }
        Some(taken)
    }

    pub(crate) fn set_rate_limit(&mut self, limit: Option<RateLimit>) {
        self.window = limit.map(|limit| Window {
            limit,
            started: Instant::now(),
            used: 0,
        });
    }

    pub(crate) fn rate_limit(&self) -> Option<RateLimit> {
        self.window.as_ref().map(|w| w.limit)
    }

    /// Spends one request of the budget, or returns the whole seconds until the window
    /// resets (at least 1) when it is exhausted.
    pub(crate) fn admit(&mut self, now: Instant) -> Result<(), u64> {
        let Some(w) = self.window.as_mut() else {
            return Ok(());
        };
        let period = Duration::from_secs(w.limit.per_seconds);
        if now.duration_since(w.started) >= period {
            w.started = now;
            w.used = 0;
        }
        if w.used < w.limit.requests {
            w.used += 1;
            return Ok(());
        }
        let left = period.saturating_sub(now.duration_since(w.started));
        Err(left.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Back to the initial state (no faults, limits or counters), still counting the calls
    /// in flight so that their end is accounted for.
    pub(crate) fn reset(&mut self) {
        *self = Self {
            in_flight: self.in_flight,
            ..Self::default()
        };
    }

    pub(crate) fn set_concurrency_limit(&mut self, limit: Option<ConcurrencyLimit>) {
        self.concurrency = limit;
    }

    pub(crate) fn concurrency_limit(&self) -> Option<ConcurrencyLimit> {
        self.concurrency
    }

    /// Starts serving one management call, or returns the `RateLimit-Reset` seconds when
    /// the concurrency limit is reached. Every `Ok` must be paired with [`Self::leave`].
    pub(crate) fn enter(&mut self) -> Result<(), u64> {
        if let Some(limit) = &self.concurrency {
            limit.admit(self.in_flight)?;
        }
        self.in_flight = self.in_flight.saturating_add(1);
        Ok(())
    }

    /// One call admitted by [`Self::enter`] is done.
    pub(crate) fn leave(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub(crate) fn set_latency(&mut self, latency: Duration) {
        self.latency = latency;
    }

    pub(crate) fn latency(&self) -> Duration {
        self.latency
    }

    pub(crate) fn count_call(&mut self, op: &'static str) {
        self.counters.entry(op).or_default().calls += 1;
    }

    pub(crate) fn count_write(&mut self, op: &'static str) {
        self.counters.entry(op).or_default().writes += 1;
    }

    pub(crate) fn count_status(&mut self, op: &'static str, status: &str) {
        *self
            .counters
            .entry(op)
            .or_default()
            .statuses
            .entry(status.to_owned())
            .or_default() += 1;
    }

    pub(crate) fn counters(&self) -> BTreeMap<&'static str, Counter> {
        self.counters.clone()
    }

    pub(crate) fn reset_counters(&mut self) {
        self.counters.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_operation() {
        let cases = [
            (Method::GET, "/api/v1/applications", "getApplications"),
            (Method::POST, "/api/v1/applications", "createApplication"),
            (Method::GET, "/api/v1/applications/x", "getApplication"),
            (Method::PATCH, "/api/v1/applications/x", "updateApplication"),
            (
                Method::DELETE,
                "/api/v1/applications/x",
                "deleteApplication",
            ),
            (Method::GET, "/api/v1/apis", "getAPIs"),
            (Method::POST, "/api/v1/apis", "addAPIs"),
            (Method::GET, "/api/v1/apis/x", "getAPI"),
            (Method::DELETE, "/api/v1/apis/x", "deleteAPI"),
            (Method::GET, "/api/v1/apis/x/scopes", "getAPIScopes"),
            (Method::POST, "/api/v1/apis/x/scopes", "addAPIScope"),
            (Method::GET, "/api/v1/apis/x/scopes/s", "getAPIScope"),
            (Method::PATCH, "/api/v1/apis/x/scopes/s", "updateAPIScope"),
            (Method::DELETE, "/api/v1/apis/x/scopes/s", "deleteAPIScope"),
            (
                Method::PATCH,
                "/api/v1/apis/x/applications",
                "updateAPIApplications",
            ),
            (
                Method::POST,
                "/api/v1/apis/x/applications/a/scopes/s",
                "addAPIApplicationScope",
            ),
            (
                Method::DELETE,
                "/api/v1/apis/x/applications/a/scopes/s",
                "deleteAPIApplicationScope",
            ),
            (Method::POST, "/oauth2/token", TOKEN),
        ];
        for (m, p, op) in cases {
            assert_eq!(classify(&m, p), Some(op), "{m} {p}");
            assert!(OPERATIONS.contains(&op));
        }
        assert_eq!(classify(&Method::PUT, "/api/v1/apis/x"), None);
        assert_eq!(classify(&Method::GET, "/api/v1/apis/"), None);
        assert_eq!(classify(&Method::GET, "/_emulator/state"), None);
    }

    #[test]
    fn faults_are_consumed_in_order() {
        let mut h = Harness::default();
        let f = |status, times| FaultSpec {
            operation: "getAPIs".into(),
            status: Some(status),
            times,
            latency_ms: None,
            drop_response: false,
            detached: false,
            body: None,
            headers: None,
        };
        h.add_fault(f(500, 2));
        h.add_fault(f(503, 1));
        assert_eq!(h.take_fault("getAPI").map(|f| f.status), None);
        assert_eq!(h.take_fault("getAPIs").unwrap().status, Some(500));
        assert_eq!(h.take_fault("getAPIs").unwrap().status, Some(500));
        assert_eq!(h.take_fault("getAPIs").unwrap().status, Some(503));
        assert!(h.take_fault("getAPIs").is_none());
    }

    #[test]
    fn fault_validation() {
        let mut f: FaultSpec =
            serde_json::from_str(r#"{"operation":"getAPIs","status":500}"#).unwrap();
        assert_eq!(f.times, 1);
        assert!(f.validate().is_ok());
        f.operation = "getApis".into();
        assert!(f.validate().is_err());
        let f: FaultSpec = serde_json::from_str(r#"{"operation":"getAPIs"}"#).unwrap();
        assert!(f.validate().is_err());
    }

    #[test]
    fn concurrency_limit_counts_calls_in_flight() {
        let limit = ConcurrencyLimit {
            max_in_flight: 2,
            reset_secs: 0,
        };
        assert!(limit.admit(0).is_ok() && limit.admit(1).is_ok());
        assert_eq!(limit.admit(2), Err(1), "reset is at least 1 s");
        let mut h = Harness::default();
        assert!(h.enter().is_ok(), "no limit: always admitted");
        h.set_concurrency_limit(Some(ConcurrencyLimit {
            max_in_flight: 2,
            reset_secs: 3,
        }));
        assert!(h.enter().is_ok());
        assert_eq!(
            h.enter(),
            Err(3),
            "the call running before the limit counts"
        );
        h.leave();
        assert!(h.enter().is_ok());
        let parsed: ConcurrencyLimit = serde_json::from_str(r#"{"max_in_flight":1}"#).unwrap();
        assert_eq!(parsed.reset_secs, 1);
    }

    #[test]
    fn fixed_window_rate_limit() {
        let mut h = Harness::default();
        h.set_rate_limit(Some(RateLimit {
            requests: 2,
            per_seconds: 10,
        }));
        let t0 = Instant::now();
        assert!(h.admit(t0).is_ok());
        assert!(h.admit(t0).is_ok());
        assert_eq!(h.admit(t0 + Duration::from_millis(2500)), Err(8));
        assert!(h.admit(t0 + Duration::from_secs(10)).is_ok());
    }
}

//! Operator metrics (Prometheus, via `prometheus-client`): reconciles, failures by reason,
//! reconcile latency, build info, and per-object series (readiness; for M2MApplications
//! credential age, next rotation, predecessors retiring); the Kinde client registers its
//! own under the same registry.
//!
//! Per-object series are labelled `kind`, `object_namespace`, `object_name`: not
//! `namespace`, which Prometheus' Kubernetes discovery puts on every scraped series (the
//! operator pod's namespace) and would rename to `exported_namespace`. Every per-object
//! series goes when its object goes ([`Metrics::forget`], [`Metrics::forget_missing`]): a
//! deleted object must not keep an alert firing.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
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

/// The labels of every per-object series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ObjectLabels {
    pub kind: &'static str,
    pub object_namespace: String,
    pub object_name: String,
}

impl ObjectLabels {
    pub fn new(kind: &'static str, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            object_namespace: namespace.to_owned(),
            object_name: name.to_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// What an M2MApplication's credentials look like, for its per-object gauges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialGauges {
    /// Unix time the current credentials were issued; `None` before there are any.
    pub issued: Option<i64>,
    /// Unix time of the next scheduled rotation; `None` without a schedule.
    pub next_rotation: Option<i64>,
    /// Predecessors still working after a rotation.
    pub retiring: usize,
}

/// All operator metrics.
#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<KindLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    ready: Family<ObjectLabels, Gauge>,
    credential_issued: Family<ObjectLabels, Gauge>,
    next_rotation: Family<ObjectLabels, Gauge>,
    retiring: Family<ObjectLabels, Gauge>,
    /// Rotations by result (`succeeded`, `failed`).
    pub rotations: Family<ResultLabels, Counter>,
    /// Objects that have per-object series, so the ones whose object is gone can be found.
    known: Arc<Mutex<BTreeSet<ObjectLabels>>>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            ready: Family::default(),
            credential_issued: Family::default(),
            next_rotation: Family::default(),
            retiring: Family::default(),
            rotations: Family::default(),
            known: Arc::default(),
        };
        let build_info: Family<BuildLabels, Gauge> = Family::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "The operator's version (always 1)",
            build_info,
        );
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
            "object_ready",
            "1 when the object's Ready condition is True, else 0",
            m.ready.clone(),
        );
        registry.register(
            "credential_issued_timestamp_seconds",
            "Unix time the current credentials of each M2MApplication were issued (credential age = now - this)",
            m.credential_issued.clone(),
        );
        registry.register(
            "next_rotation_timestamp_seconds",
            "Unix time of each M2MApplication's next scheduled rotation (spec.rotation.every)",
            m.next_rotation.clone(),
        );
        registry.register(
            "retiring_credentials",
            "Predecessor credentials of each M2MApplication still working after a rotation",
            m.retiring.clone(),
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

    fn known(&self) -> std::sync::MutexGuard<'_, BTreeSet<ObjectLabels>> {
        // A panic elsewhere while holding it leaves a set that is still consistent.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records whether an object is Ready.
    pub fn object_ready(&self, object: &ObjectLabels, ready: bool) {
        self.known().insert(object.clone());
        self.ready.get_or_create(object).set(i64::from(ready));
    }

    /// Records an M2MApplication's credential gauges; a gauge without a value has no series.
    pub fn credentials(&self, object: &ObjectLabels, gauges: &CredentialGauges) {
        self.known().insert(object.clone());
        let set = |family: &Family<ObjectLabels, Gauge>, value: Option<i64>| match value {
            Some(v) => {
                family.get_or_create(object).set(v);
            }
            None => {
                family.remove(object);
            }
        };
        set(&self.credential_issued, gauges.issued);
        set(&self.next_rotation, gauges.next_rotation);
        set(
            &self.retiring,
            Some(i64::try_from(gauges.retiring).unwrap_or(i64::MAX)),
        );
    }

    /// Removes every per-object series of `object` (it was deleted).
    pub fn forget(&self, object: &ObjectLabels) {
        self.known().remove(object);
        for family in [
            &self.ready,
            &self.credential_issued,
            &self.next_rotation,
            &self.retiring,
        ] {
            family.remove(object);
        }
    }

    /// After a full list of `kind` in `namespace` (`None`: all namespaces): removes the
    /// series of every object of it that the list no longer has (deleted while the watch
    /// was down, so no delete was seen). `present` holds `(namespace, name)` pairs.
    pub fn forget_missing(
        &self,
        kind: &'static str,
        namespace: Option<&str>,
        present: &BTreeSet<(String, String)>,
    ) {
        let gone: Vec<ObjectLabels> = self
            .known()
            .iter()
            .filter(|o| o.kind == kind)
            .filter(|o| namespace.is_none_or(|ns| o.object_namespace == ns))
            .filter(|o| !present.contains(&(o.object_namespace.clone(), o.object_name.clone())))
            .cloned()
            .collect();
        for object in &gone {
            self.forget(object);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).expect("encodes");
        out
    }

    fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(&format!("kinde_m2m_operator_{name}{{")))
            .collect()
    }

    #[test]
    fn per_object_series_come_and_go_with_their_object() {
        let mut registry = Registry::with_prefix("kinde_m2m_operator");
        let m = Metrics::register(&mut registry);
        let shop = ObjectLabels::new("M2MApplication", "acme", "shop");
        let grant = ObjectLabels::new("ApiGrant", "acme", "shop");
        m.object_ready(&shop, true);
        m.object_ready(&grant, false);
        m.credentials(
            &shop,
            &CredentialGauges {
                issued: Some(1_700_000_000),
                next_rotation: Some(1_700_086_400),
                retiring: 1,
            },
        );
        let text = render(&registry);
        for line in [
            r#"kinde_m2m_operator_object_ready{kind="M2MApplication",object_namespace="acme",object_name="shop"} 1"#,
            r#"kinde_m2m_operator_object_ready{kind="ApiGrant",object_namespace="acme",object_name="shop"} 0"#,
            r#"kinde_m2m_operator_credential_issued_timestamp_seconds{kind="M2MApplication",object_namespace="acme",object_name="shop"} 1700000000"#,
            r#"kinde_m2m_operator_retiring_credentials{kind="M2MApplication",object_namespace="acme",object_name="shop"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert_eq!(series(&text, "object_ready").len(), 2, "{text}");
        assert_eq!(
            series(&text, "credential_issued_timestamp_seconds").len(),
            1
        );
        assert_eq!(series(&text, "next_rotation_timestamp_seconds").len(), 1);
        assert_eq!(series(&text, "retiring_credentials").len(), 1);
        assert!(
            text.contains(r#"kinde_m2m_operator_build_info{version=""#),
            "{text}"
        );
        assert!(
            !text.contains(",namespace=") && !text.contains("{namespace="),
            "{text}"
        );

        // The schedule removed: its series goes, the others stay.
        m.credentials(
            &shop,
            &CredentialGauges {
                issued: Some(1_700_000_000),
                next_rotation: None,
                retiring: 0,
            },
        );
        let text = render(&registry);
        assert!(series(&text, "next_rotation_timestamp_seconds").is_empty());

        // Deleting one object takes its series and no other's (same namespace and name).
        m.forget(&shop);
        let text = render(&registry);
        assert_eq!(
            series(&text, "object_ready"),
            [
                r#"kinde_m2m_operator_object_ready{kind="ApiGrant",object_namespace="acme",object_name="shop"} 0"#
            ]
        );
        for name in [
            "credential_issued_timestamp_seconds",
            "next_rotation_timestamp_seconds",
            "retiring_credentials",
        ] {
            assert!(series(&text, name).is_empty(), "{name}: {text}");
        }
    }

    #[test]
    fn a_relist_forgets_objects_it_no_longer_has() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let a = ObjectLabels::new("ApiGrant", "acme", "a");
        let b = ObjectLabels::new("ApiGrant", "acme", "b");
        let other_ns = ObjectLabels::new("ApiGrant", "globex", "c");
        let other_kind = ObjectLabels::new("M2MApplication", "acme", "x");
        for o in [&a, &b, &other_ns, &other_kind] {
            m.object_ready(o, true);
        }
        let present = BTreeSet::from([("acme".to_owned(), "a".to_owned())]);
        m.forget_missing("ApiGrant", Some("acme"), &present);
        assert!(m.ready.get(&a).is_some());
        assert!(m.ready.get(&b).is_none(), "gone from the list");
        assert!(m.ready.get(&other_ns).is_some(), "another slot's list");
        assert!(m.ready.get(&other_kind).is_some(), "another kind");
        m.forget_missing("ApiGrant", None, &present);
        assert!(m.ready.get(&other_ns).is_none());
        assert_eq!(m.known().len(), 2);
    }
}

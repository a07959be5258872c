//! Kinde businesses: the one of the operator's flags (the default connection) and one per
//! `KindeConnection` / `ClusterKindeConnection`, each with everything the operator keeps
//! per business (its own client, so its own token, rate limiter and pacing: one business
//! answering 429 never slows another), and the pure rule that picks the business an object
//! may use.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::app_directory::AppDirectory;
use super::kinde_state::{ApiSnapshots, AuthorizeBatcher};
use super::ownership::Ownership;
use super::stores::Router;
use crate::conditions::reasons;
use crate::crd::{
    ClusterKindeConnection, ConnectionKind, ConnectionRef, KindeConnection, connection_label,
};
use crate::kinde::KindeClient;

/// One Kinde business and what the operator keeps for it.
pub struct Business {
    pub kinde: KindeClient,
    pub kinde_apis: ApiSnapshots,
    /// The marked Kinde applications (creates look for their marker here).
    pub kinde_apps: AppDirectory,
    /// The owner keys this installation records on the business's applications.
    pub ownership: Ownership,
    pub authorizer: AuthorizeBatcher,
    /// The connection, as `status.connection` records it.
    pub label: String,
    /// Reconciles of each kind working in this business at once.
    slots: HashMap<&'static str, Arc<Semaphore>>,
}

/// How many reconciles of each kind may work in one business at once
/// (`--max-concurrent-reconciles`; grants a multiple). Each business has its own slots, and
/// the controllers themselves run unbounded: a reconcile whose business has no slot free
/// waits for one without holding anything. So a business whose calls wait (its pace is
/// low, or Kinde paused it with a 429) fills only its own slots and never those of
/// another business, however many of its objects are queued.
#[derive(Clone, Debug, Default)]
pub struct SlotLimits(Arc<Vec<(&'static str, usize)>>);

impl SlotLimits {
    pub fn new(limits: Vec<(&'static str, usize)>) -> Self {
        Self(Arc::new(limits))
    }
}

impl Business {
    /// `api_snapshot_ttl`: how long a read of an API's applications serves the grants.
    pub fn new(
        kinde: KindeClient,
        installation: &str,
        api_snapshot_ttl: Duration,
        reference: Option<&ConnectionRef>,
        limits: &SlotLimits,
    ) -> Self {
        Self {
            kinde_apis: ApiSnapshots::new(kinde.clone(), api_snapshot_ttl),
            kinde_apps: AppDirectory::new(kinde.clone()),
            ownership: Ownership::new(installation.to_owned()),
            authorizer: AuthorizeBatcher::new(kinde.clone()),
            kinde,
            label: connection_label(reference),
            slots: limits
                .0
                .iter()
                .map(|(kind, n)| (*kind, Arc::new(Semaphore::new((*n).max(1)))))
                .collect(),
        }
    }

    /// Waits for a slot for a reconcile of `kind` in this business (none to wait for when
    /// the kind has no limit). Held for the reconcile's work; dropped, it frees the slot.
    pub async fn slot(&self, kind: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = self.slots.get(kind)?.clone();
        // Never closed: an error cannot happen, and would mean "no limit".
        semaphore.acquire_owned().await.ok()
    }
}

/// A connection object: its kind, namespace (KindeConnection only) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionKey {
    pub kind: ConnectionKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl ConnectionKey {
    /// The connection `reference` of an object in `namespace` names.
    pub fn of(namespace: &str, reference: &ConnectionRef) -> Self {
        Self {
            kind: reference.kind,
            namespace: (reference.kind == ConnectionKind::KindeConnection)
                .then(|| namespace.to_owned()),
            name: reference.name.clone(),
        }
    }

    /// The `connection` label of its business's Kinde metrics: `KindeConnection/<ns>/<name>`
    /// (tenants in two namespaces may pick one name) or `ClusterKindeConnection/<name>`.
    pub fn metric_label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.kind, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }
}

/// A connection as its controller last saw it.
#[derive(Clone)]
pub struct Connection {
    /// Built once the credentials were read; kept while the connection is not Ready (a
    /// rotation in progress, an outage), so its caches survive.
    pub business: Option<Arc<Business>>,
    /// `Err((reason, message))` while not Ready.
    pub ready: Result<(), (String, String)>,
    /// What its watch last saw of the object.
    pub sighting: Sighting,
}

/// What a connection's watch saw of the object itself: who may use it and whether this
/// installation holds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sighting {
    /// ClusterKindeConnection: which namespaces may use it.
    pub selector: Option<LabelSelector>,
    /// It carries this installation's finalizer. An object creates Kinde objects through
    /// a connection only once it does, so a connection is never deleted under them; an
    /// installation holds only the connections its own objects use, so one that never
    /// uses a connection (or was uninstalled) never keeps it from being deleted.
    pub held: bool,
    /// Its deletion was asked for.
    pub deleting: bool,
}

impl Connection {
    /// A connection seen but not reconciled yet.
    pub fn seen(sighting: Sighting) -> Self {
        Self {
            business: None,
            ready: Err((reasons::CONNECTING.into(), "not checked yet".into())),
            sighting,
        }
    }
}

/// What an object may use, or why not.
pub enum Resolution {
    Use(Arc<Business>),
    /// Not known yet (the connection's watch has not listed it, or its first check runs):
    /// report nothing, look again soon.
    Wait,
    Refuse {
        reason: &'static str,
        message: String,
    },
    /// Ready, but this installation does not hold it yet: its controller is asked to
    /// (see [`Sighting::held`]); look again soon.
    Claim(ConnectionKey),
}

/// Every business the operator reaches.
pub struct Businesses {
    default: Arc<Business>,
    connections: RwLock<HashMap<ConnectionKey, Connection>>,
    /// How many connection watches have listed since start (resolution waits for all).
    listed: watch::Sender<usize>,
    watches: usize,
    wake: ConnectionRouters,
}

/// The wake-ups of the connection controllers, one router per kind.
pub struct ConnectionRouters {
    pub tenant: Router<KindeConnection>,
    pub cluster: Router<ClusterKindeConnection>,
}

impl Businesses {
    /// `watches`: how many connection watches resolution waits to have listed once.
    pub fn new(default: Arc<Business>, watches: usize, wake: ConnectionRouters) -> Self {
        Self {
            default,
            connections: RwLock::default(),
            listed: watch::Sender::new(0),
            watches,
            wake,
        }
    }

    /// Queues a reconcile of the connection (dropped when no watch of this operator covers
    /// it).
    pub fn wake(&self, key: &ConnectionKey) {
        match (&key.namespace, key.kind) {
            (Some(ns), ConnectionKind::KindeConnection) => self.wake.tenant.wake(ns, &key.name),
            (_, ConnectionKind::ClusterKindeConnection) => {
                self.wake.cluster.wake_cluster_scoped(&key.name)
            }
            (None, ConnectionKind::KindeConnection) => {}
        }
    }

    /// The business of the operator's flags.
    pub fn default_business(&self) -> &Arc<Business> {
        &self.default
    }

    /// A connection watch finished a listing.
    pub fn listed(&self) {
        self.listed.send_modify(|n| *n = n.saturating_add(1));
    }

    /// Waits until every connection watch listed once.
    pub async fn wait_listed(&self) {
        let watches = self.watches;
        let mut rx = self.listed.subscribe();
        let _ = rx.wait_for(|n| *n >= watches).await;
    }

    /// Records a connection the watch saw, keeping what the controller learnt of it (what
    /// the watch saw applies at once: a narrowed selector, a finalizer added). True when
    /// that changes who may use it: the connection is new, or its sighting changed.
    pub fn seen(&self, key: ConnectionKey, sighting: Sighting) -> bool {
        let mut map = self.write();
        match map.get_mut(&key) {
            Some(c) if c.sighting == sighting => false,
            Some(c) => {
                c.sighting = sighting;
                true
            }
            None => {
                map.insert(key, Connection::seen(sighting));
                true
            }
        }
    }

    /// Records what the connection's controller learnt (its business and readiness),
    /// keeping what the watch saw.
    pub fn checked(
        &self,
        key: ConnectionKey,
        business: Option<Arc<Business>>,
        ready: Result<(), (String, String)>,
    ) {
        let mut map = self.write();
        let sighting = map
            .get(&key)
            .map(|c| c.sighting.clone())
            .unwrap_or_default();
        map.insert(
            key,
            Connection {
                business,
                ready,
                sighting,
            },
        );
    }

    /// The connection went away: what was known of it.
    pub fn remove(&self, key: &ConnectionKey) -> Option<Connection> {
        self.write().remove(key)
    }

    pub fn get(&self, key: &ConnectionKey) -> Option<Connection> {
        self.connections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Every connection's business (the default first), for metrics and shutdown.
    pub fn all(&self) -> Vec<Arc<Business>> {
        let map = self.connections.read().unwrap_or_else(|p| p.into_inner());
        std::iter::once(self.default.clone())
            .chain(map.values().filter_map(|c| c.business.clone()))
            .collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ConnectionKey, Connection>> {
        self.connections.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a ClusterKindeConnection with `selector` needs the namespace's labels to decide.
pub fn needs_labels(connection: &Connection) -> bool {
    connection.sighting.selector.as_ref().is_some_and(|s| {
        s.match_labels.as_ref().is_some_and(|m| !m.is_empty())
            || s.match_expressions.as_ref().is_some_and(|e| !e.is_empty())
    })
}

/// The business an object in `namespace` referencing `reference` may use (pure): the
/// connection, if it exists, admits the namespace and is Ready. `labels` are the
/// namespace's (needed only when [`needs_labels`]). `first_use`: the object has no Kinde
/// object in the business yet and is not being deleted; it would make its first one, which
/// needs the connection held by this installation and not being deleted.
pub fn decide(
    connection: Option<&Connection>,
    namespace: &str,
    reference: &ConnectionRef,
    labels: &BTreeMap<String, String>,
    first_use: bool,
) -> Resolution {
    let Some(connection) = connection else {
        let where_ = match reference.kind {
            ConnectionKind::KindeConnection => format!(" in namespace {namespace}"),
            ConnectionKind::ClusterKindeConnection => String::new(),
        };
        return Resolution::Refuse {
            reason: reasons::CONNECTION_NOT_FOUND,
            message: format!(
                "spec.connectionRef names {} {}, which does not exist{where_}",
                reference.kind, reference.name
            ),
        };
    };
    if let Some(selector) = &connection.sighting.selector {
        let admitted = Selector::try_from(selector.clone())
            .map(|s| s.matches(labels))
            .unwrap_or(false);
        if !admitted {
            return Resolution::Refuse {
                reason: reasons::CONNECTION_NOT_PERMITTED,
                message: format!(
                    "ClusterKindeConnection {} does not admit namespace {namespace} (its spec.namespaceSelector)",
                    reference.name
                ),
            };
        }
    }
    match (&connection.ready, &connection.business) {
        (Ok(()), Some(_)) if first_use && connection.sighting.deleting => Resolution::Refuse {
            reason: reasons::CONNECTION_NOT_READY,
            message: format!(
                "{} {} is being deleted: it serves the objects already made through it until they are gone, and no new ones",
                reference.kind, reference.name
            ),
        },
        (Ok(()), Some(_)) if first_use && !connection.sighting.held => {
            Resolution::Claim(ConnectionKey::of(namespace, reference))
        }
        (Ok(()), Some(business)) => Resolution::Use(business.clone()),
        (Err((reason, _)), _) if reason == reasons::CONNECTING => Resolution::Wait,
        (Err((reason, message)), _) => Resolution::Refuse {
            reason: reasons::CONNECTION_NOT_READY,
            message: format!(
                "{} {} is not Ready ({reason}): {message}",
                reference.kind, reference.name
            ),
        },
        (Ok(()), None) => Resolution::Wait,
    }
}

/// Which connection an object is bound to: the one recorded in its status once its Kinde
/// object exists (`recorded`; an object bound before connections existed has none recorded
/// and counts as `default`), else its spec's. `Err` with a message when the spec names
/// another one than the recorded: the Kinde object lives in that business, and moving it
/// is not something an edit can do.
pub fn binding(
    spec: Option<&ConnectionRef>,
    recorded: Option<&str>,
    bound: bool,
) -> Result<Option<ConnectionRef>, String> {
    let recorded = match recorded {
        Some(label) => Some(label.to_owned()),
        None if bound => Some(connection_label(None)),
        None => None,
    };
    let wanted = connection_label(spec);
    match recorded {
        Some(recorded) if recorded != wanted => Err(format!(
            "spec.connectionRef says {wanted}, but the Kinde object was made through {recorded}: a Kinde object cannot move between businesses. Restore spec.connectionRef, or delete and re-create the object (adopting the object of the other business with the external-id annotation)"
        )),
        _ => Ok(spec.cloned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(kind: ConnectionKind, name: &str) -> ConnectionRef {
        ConnectionRef {
            kind,
            name: name.into(),
        }
    }

    fn business() -> Arc<Business> {
        let config = crate::kinde::KindeConfig::new(
            "https://acme.kinde.com".parse().expect("url"),
            "id".into(),
            "secret".to_owned().into(),
        );
        let kinde = KindeClient::new(config, Default::default()).expect("client");
        Arc::new(Business::new(
            kinde,
            "default",
            Duration::from_secs(60),
            None,
            &SlotLimits::new(vec![("M2MApplication", 1)]),
        ))
    }

    /// Ready and held by this installation.
    fn ready(selector: Option<LabelSelector>) -> Connection {
        Connection {
            business: Some(business()),
            ready: Ok(()),
            sighting: Sighting {
                selector,
                held: true,
                deleting: false,
            },
        }
    }

    fn sighting(selector: Option<LabelSelector>) -> Sighting {
        Sighting {
            selector,
            ..Default::default()
        }
    }

    fn refused(r: Resolution) -> (&'static str, String) {
        match r {
            Resolution::Refuse { reason, message } => (reason, message),
            Resolution::Use(_) => panic!("used"),
            Resolution::Wait => panic!("waits"),
            Resolution::Claim(_) => panic!("claims"),
        }
    }

    #[test]
    fn a_missing_connection_is_named_with_where_it_was_looked_for() {
        let r = reference(ConnectionKind::KindeConnection, "staging");
        let (reason, message) = refused(decide(None, "tenant-a", &r, &BTreeMap::new(), true));
        assert_eq!(reason, reasons::CONNECTION_NOT_FOUND);
        assert!(message.contains("KindeConnection staging"), "{message}");
        assert!(message.contains("tenant-a"), "{message}");
    }

    #[test]
    fn a_cluster_connection_admits_only_selected_namespaces() {
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("tier".into(), "prod".into())])),
            ..Default::default()
        };
        let c = ready(Some(selector));
        assert!(needs_labels(&c));
        let r = reference(ConnectionKind::ClusterKindeConnection, "prod");
        let prod = BTreeMap::from([("tier".to_owned(), "prod".to_owned())]);
        assert!(matches!(
            decide(Some(&c), "a", &r, &prod, true),
            Resolution::Use(_)
        ));
        let (reason, message) = refused(decide(Some(&c), "b", &r, &BTreeMap::new(), true));
        assert_eq!(reason, reasons::CONNECTION_NOT_PERMITTED);
        assert!(message.contains("namespace b"), "{message}");
        // `{}` admits every namespace.
        let all = ready(Some(LabelSelector::default()));
        assert!(!needs_labels(&all));
        assert!(matches!(
            decide(Some(&all), "b", &r, &BTreeMap::new(), true),
            Resolution::Use(_)
        ));
    }

    #[test]
    fn a_connection_not_ready_is_reported_and_one_not_checked_yet_waits() {
        let r = reference(ConnectionKind::KindeConnection, "staging");
        let mut c = ready(None);
        c.ready = Err(("MissingScopes".into(), "lacks create:apis".into()));
        let (reason, message) = refused(decide(Some(&c), "a", &r, &BTreeMap::new(), true));
        assert_eq!(reason, reasons::CONNECTION_NOT_READY);
        assert!(message.contains("MissingScopes") && message.contains("create:apis"));
        assert!(matches!(
            decide(
                Some(&Connection::seen(Sighting::default())),
                "a",
                &r,
                &BTreeMap::new(),
                true
            ),
            Resolution::Wait
        ));
    }

    #[test]
    fn a_first_use_needs_the_connection_held_and_not_being_deleted() {
        let r = reference(ConnectionKind::ClusterKindeConnection, "prod");
        let mut c = ready(None);
        c.sighting.held = false;
        // Not held yet: the first Kinde object waits for this installation's finalizer.
        match decide(Some(&c), "a", &r, &BTreeMap::new(), true) {
            Resolution::Claim(key) => assert_eq!(key, ConnectionKey::of("a", &r)),
            _ => panic!("a first use of a connection not held went ahead"),
        }
        // An object whose Kinde object is there already (or that is going) goes on.
        assert!(matches!(
            decide(Some(&c), "a", &r, &BTreeMap::new(), false),
            Resolution::Use(_)
        ));
        // Being deleted: no first use, held or not; objects made through it go on.
        for held in [false, true] {
            c.sighting = Sighting {
                held,
                deleting: true,
                ..Default::default()
            };
            let (reason, message) = refused(decide(Some(&c), "a", &r, &BTreeMap::new(), true));
            assert_eq!(reason, reasons::CONNECTION_NOT_READY);
            assert!(message.contains("being deleted"), "{message}");
            assert!(matches!(
                decide(Some(&c), "a", &r, &BTreeMap::new(), false),
                Resolution::Use(_)
            ));
        }
    }

    #[test]
    fn the_binding_is_the_recorded_connection_once_the_kinde_object_exists() {
        let staging = reference(ConnectionKind::KindeConnection, "staging");
        // Not bound yet: the spec decides, and may change.
        assert_eq!(
            binding(Some(&staging), None, false),
            Ok(Some(staging.clone()))
        );
        assert_eq!(binding(None, None, false), Ok(None));
        // Bound through staging: the same reference is fine, another is refused.
        assert_eq!(
            binding(Some(&staging), Some("KindeConnection/staging"), true),
            Ok(Some(staging.clone()))
        );
        let err = binding(None, Some("KindeConnection/staging"), true).expect_err("moved");
        assert!(err.contains("KindeConnection/staging"), "{err}");
        // Bound before connections existed: the default one.
        assert!(binding(Some(&staging), None, true).is_err());
        assert_eq!(binding(None, None, true), Ok(None));
    }

    #[test]
    fn a_kinde_connection_key_is_per_namespace_and_a_cluster_one_is_not() {
        let k = ConnectionKey::of("a", &reference(ConnectionKind::KindeConnection, "x"));
        assert_eq!(k.namespace.as_deref(), Some("a"));
        let c = ConnectionKey::of("a", &reference(ConnectionKind::ClusterKindeConnection, "x"));
        assert_eq!(c.namespace, None);
        assert_eq!(k.metric_label(), "KindeConnection/a/x");
        assert_eq!(c.metric_label(), "ClusterKindeConnection/x");
    }

    #[tokio::test]
    async fn a_business_hands_out_its_own_slots_only() {
        let (a, b) = (business(), business());
        let held = a.slot("M2MApplication").await.expect("a limited kind");
        // a's one slot is taken: a waits, b does not.
        let waited = tokio::time::timeout(Duration::from_millis(50), a.slot("M2MApplication"));
        assert!(waited.await.is_err(), "a handed out a second slot");
        let other = tokio::time::timeout(Duration::from_millis(50), b.slot("M2MApplication"));
        assert!(
            other.await.is_ok_and(|p| p.is_some()),
            "b waited for a's slot"
        );
        drop(held);
        assert!(a.slot("M2MApplication").await.is_some());
        // A kind without a limit is not held back.
        assert!(a.slot("ApiGrant").await.is_none());
    }

    #[test]
    fn seeing_a_connection_says_whether_who_may_use_it_changed() {
        let wake = ConnectionRouters {
            tenant: Router::new(Vec::new()),
            cluster: Router::new(Vec::new()),
        };
        let registry = Businesses::new(business(), 1, wake);
        let key = ConnectionKey::of("a", &reference(ConnectionKind::ClusterKindeConnection, "x"));
        let prod = LabelSelector {
            match_labels: Some(BTreeMap::from([("tier".into(), "prod".into())])),
            ..Default::default()
        };
        assert!(
            registry.seen(key.clone(), sighting(Some(prod.clone()))),
            "new"
        );
        assert!(
            !registry.seen(key.clone(), sighting(Some(prod))),
            "the same again"
        );
        let all = sighting(Some(LabelSelector::default()));
        assert!(registry.seen(key.clone(), all.clone()), "selector changed");
        // What the controller learnt is kept across sightings, and what the watch saw
        // across checks.
        registry.checked(key.clone(), Some(business()), Ok(()));
        assert!(!registry.seen(key.clone(), all.clone()));
        assert!(registry.get(&key).is_some_and(|c| c.business.is_some()));
        let held = Sighting {
            held: true,
            ..all.clone()
        };
        assert!(registry.seen(key.clone(), held.clone()), "finalizer added");
        registry.checked(key.clone(), Some(business()), Ok(()));
        assert!(registry.get(&key).is_some_and(|c| c.sighting == held));
    }
}

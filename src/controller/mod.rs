//! The controllers: one slice per kind (`m2m_application/`, `api_registration/`,
//! `api_grant/`, each with its effects and a pure `decide` module), the [`kernel`] they all
//! run in (which knows no kind), the [`world`] of stores they look at, and the wiring here:
//! watches, stores, and which kind wakes which.

pub mod api_grant;
pub mod api_registration;
pub mod connection;
#[cfg(test)]
mod gitops_status;
pub mod kernel;
pub mod m2m_application;
pub mod world;

use std::collections::BTreeSet;
use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};

use connection::{ClientDefaults, ConnectionContext, ConnectionObject};
use kernel::{
    Business, Businesses, ConnectionRouters, FailureCounts, Recent, ResyncsDue, Router, SlotLimits,
    StoreSet, WrittenVersions, error_policy, reconcile,
};
pub use kernel::{Context, Error, FIELD_MANAGER, FINALIZER, Managed, Result, Shared};
use world::World;

use crate::adoption::AdoptionPolicy;
use crate::crd::{
    ApiGrant, ApiRegistration, ClusterKindeConnection, KindeConnection, M2MApplication,
    MANAGED_BY_LABEL, MANAGED_BY_VALUE,
};
use crate::kinde::KindeClient;
use crate::metrics::Metrics;

/// Which objects changes are worth a reconcile: spec (generation), labels, annotations
/// (pause, rotate, external-id), finalizers and deletion. Status writes are not, which
/// keeps a status update from causing another Kinde read.
fn meaningful_change<K: Resource>(obj: &K) -> Option<u64> {
    let m = obj.meta();
    let mut h = DefaultHasher::new();
    m.generation.hash(&mut h);
    m.labels.hash(&mut h);
    m.annotations.hash(&mut h);
    m.finalizers.hash(&mut h);
    m.deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut h);
    Some(h.finish())
}

/// Where the controllers look: every namespace, or the listed ones.
#[derive(Clone, Debug)]
pub enum Scope {
    All,
    Namespaces(Vec<String>),
}

impl Scope {
    fn slots(&self) -> Vec<Option<String>> {
        match self {
            Scope::All => vec![None],
            Scope::Namespaces(ns) => ns.iter().cloned().map(Some).collect(),
        }
    }
}

pub(crate) fn api_for<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A controller per namespace slot for `K`, reading a predicate-filtered watch.
struct Built<K: Managed> {
    controllers: Vec<Controller<K>>,
    stores: StoreSet<K>,
    router: Router<K>,
}

/// Follows one watch of `K` and removes the per-object series of objects that went away:
/// at their delete event, and, after a relist (a watch that was down saw no deletes), those
/// the new list lacks. The finalizer path removes them too; this covers deletions that
/// bypass it (a finalizer removed by hand, an object deleted while the operator was away).
struct SeriesJanitor {
    metrics: Metrics,
    kind: &'static str,
    namespace: Option<String>,
    listing: Option<BTreeSet<(String, String)>>,
}

impl SeriesJanitor {
    fn see<K: Resource>(&mut self, event: &watcher::Event<K>) {
        let key = |obj: &K| {
            (
                obj.meta().namespace.clone().unwrap_or_default(),
                obj.meta().name.clone().unwrap_or_default(),
            )
        };
        match event {
            watcher::Event::Delete(obj) => {
                let (ns, name) = key(obj);
                self.metrics
                    .forget(&kernel::object_labels(&ns, &name, self.kind));
            }
            watcher::Event::Init => self.listing = Some(BTreeSet::new()),
            watcher::Event::InitApply(obj) => {
                if let Some(listing) = &mut self.listing {
                    listing.insert(key(obj));
                }
            }
            watcher::Event::InitDone => {
                if let Some(listing) = self.listing.take() {
                    self.metrics
                        .forget_missing(self.kind, self.namespace.as_deref(), &listing);
                }
            }
            watcher::Event::Apply(_) => {}
        }
    }
}

/// One wake-up channel per namespace slot: the router that sends into them, and each slot's
/// receiving end (for its controller's `reconcile_on`), in the order of `slots`.
fn wake_channels<K: Resource<DynamicType = ()> + 'static>(
    slots: Vec<Option<String>>,
) -> (Router<K>, Vec<UnboundedReceiver<ObjectRef<K>>>) {
    let (senders, receivers) = slots
        .into_iter()
        .map(|slot| {
            let (tx, rx) = futures::channel::mpsc::unbounded::<ObjectRef<K>>();
            ((slot, tx), rx)
        })
        .unzip();
    (Router::new(senders), receivers)
}

fn build<K>(client: &Client, scope: &Scope, metrics: &Metrics) -> Built<K>
where
    K: Managed,
{
    let mut controllers = Vec::new();
    let mut stores = Vec::new();
    let (router, wake_ups) = wake_channels::<K>(scope.slots());
    for (slot, rx) in scope.slots().into_iter().zip(wake_ups) {
        let (reader, writer) = reflector::store();
        let mut janitor = SeriesJanitor {
            metrics: metrics.clone(),
            kind: K::KIND,
            namespace: slot.clone(),
            listing: None,
        };
        let stream = watcher(
            api_for::<K>(client, &slot),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .modify(strip_for_cache)
        .reflect(writer)
        .map(move |event| {
            if let Ok(event) = &event {
                janitor.see(event);
            }
            event
        })
        .applied_objects()
        .predicate_filter(meaningful_change::<K>, Default::default());
        let controller = Controller::for_stream(stream, reader.clone())
            .reconcile_on(rx)
            .with_config(
                // Unbounded: each business bounds its own reconciles (`SlotLimits`), so
                // one whose calls wait never holds the slots of another.
                kube::runtime::controller::Config::default().debounce(Duration::from_millis(200)),
            );
        controllers.push(controller);
        stores.push((slot, reader));
    }
    Built {
        controllers,
        stores: StoreSet::new(stores),
        router,
    }
}

/// Grants run this many times `--max-concurrent-reconciles` at once (see [`slot_limits`]).
const GRANT_CONCURRENCY_FACTOR: usize = 8;

/// Each business's reconcile slots: `--max-concurrent-reconciles` per kind for every
/// namespace slot watched (as many as the controllers of one watch each ran before the
/// businesses bounded themselves). A grant's reconcile mostly waits for its authorization
/// batch (up to 100 applications a call): with as few grants running as applications,
/// batches held 16 and a fleet of 1,000 took 98 calls where 10 do.
fn slot_limits(max_concurrent_reconciles: u16, namespace_slots: usize) -> SlotLimits {
    let per_kind = usize::from(max_concurrent_reconciles).saturating_mul(namespace_slots.max(1));
    SlotLimits::new(vec![
        (M2MApplication::KIND, per_kind),
        (ApiRegistration::KIND, per_kind),
        (
            ApiGrant::KIND,
            per_kind.saturating_mul(GRANT_CONCURRENCY_FACTOR),
        ),
    ])
}

/// What the controllers run with.
pub struct Settings {
    pub client: Client,
    pub kinde: KindeClient,
    pub events: kernel::events::Events,
    pub metrics: Metrics,
    pub scope: Scope,
    pub resync: Duration,
    /// Share of the Kinde rate the resync's drift reads may take (the period stretches).
    pub resync_read_share: f64,
    pub adoption: AdoptionPolicy,
    pub min_rotation_every: Duration,
    /// This installation's id: part of the owner key recorded on Kinde applications.
    pub installation: String,
    /// Domains a KindeConnection may name (`--kinde-connection-domain`).
    pub connection_domains: Vec<String>,
    /// Reconciles of one kind running at once in one business, per watched namespace slot
    /// (see [`slot_limits`]).
    pub max_concurrent_reconciles: u16,
}

/// Runs all controllers until `shutdown` resolves; calls `ready` once the caches are filled.
pub async fn run(
    settings: Settings,
    ready: impl FnOnce() + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let Settings {
        client,
        kinde,
        events,
        metrics,
        scope,
        resync,
        resync_read_share,
        adoption,
        min_rotation_every,
        installation,
        connection_domains,
        max_concurrent_reconciles,
    } = settings;
    let apps = build::<M2MApplication>(&client, &scope, &metrics);
    let apis = build::<ApiRegistration>(&client, &scope, &metrics);
    let grants = build::<ApiGrant>(&client, &scope, &metrics);
    let slots = slot_limits(max_concurrent_reconciles, scope.slots().len());
    let secrets = secret_triggers(&client, &scope);

    // The cached view of an API's applications serves the grants for half a period.
    let api_snapshot_ttl = resync / 2;
    let default_business = Arc::new(Business::new(
        kinde.clone(),
        &installation,
        api_snapshot_ttl,
        None,
        &slots,
    ));
    // One KindeConnection watch per namespace slot, one ClusterKindeConnection watch.
    let connection_watches = scope.slots().len() + 1;
    let (tenant_router, tenant_wake_ups) = wake_channels::<KindeConnection>(scope.slots());
    let (cluster_router, mut cluster_wake_ups) =
        wake_channels::<ClusterKindeConnection>(vec![None]);
    let routers = ConnectionRouters {
        tenant: tenant_router,
        cluster: cluster_router,
    };
    let ctx = Arc::new(Shared {
        client: client.clone(),
        businesses: Businesses::new(default_business, connection_watches, routers),
        events,
        metrics,
        resync,
        resync_read_share,
        adoption,
        min_rotation_every,
        failures: FailureCounts::default(),
        written: WrittenVersions::default(),
        resyncs_due: ResyncsDue::default(),
        world: World {
            apps: apps.stores.clone(),
            apis: apis.stores.clone(),
            grants: grants.stores.clone(),
            wake_apps: apps.router.clone(),
            wake_apis: apis.router.clone(),
            wake_grants: grants.router.clone(),
            app_reads: Recent::new(resync.mul_f64(0.9)),
        },
    });

    let connection_ctx = Arc::new(ConnectionContext {
        shared: ctx.clone(),
        defaults: ClientDefaults {
            template: kinde.config().clone(),
            metrics: kinde.metrics().clone(),
            installation,
            allowed_domains: connection_domains,
            api_snapshot_ttl,
            slots,
        },
    });
    let mut runs = Vec::new();
    for (slot, wake_ups) in scope.slots().into_iter().zip(tenant_wake_ups) {
        let api = api_for::<KindeConnection>(&client, &slot);
        runs.push(run_connections(api, wake_ups, &connection_ctx, shutdown.clone()).boxed());
    }
    let cluster_api = Api::<ClusterKindeConnection>::all(client.clone());
    if let Some(wake_ups) = cluster_wake_ups.pop() {
        runs.push(
            run_connections(cluster_api, wake_ups, &connection_ctx, shutdown.clone()).boxed(),
        );
    }
    for (c, secret_stream) in apps.controllers.into_iter().zip(secrets) {
        let c = c
            .owns_stream(secret_stream)
            .graceful_shutdown_on(shutdown.clone());
        runs.push(
            drain(c.run(
                reconcile::<M2MApplication>,
                error_policy::<M2MApplication>,
                ctx.clone(),
            ))
            .boxed(),
        );
    }
    for c in apis.controllers {
        let c = c.graceful_shutdown_on(shutdown.clone());
        runs.push(
            drain(c.run(
                reconcile::<ApiRegistration>,
                error_policy::<ApiRegistration>,
                ctx.clone(),
            ))
            .boxed(),
        );
    }
    for c in grants.controllers {
        let c = c.graceful_shutdown_on(shutdown.clone());
        runs.push(
            drain(c.run(reconcile::<ApiGrant>, error_policy::<ApiGrant>, ctx.clone())).boxed(),
        );
    }
    // Ready once every store has seen its first full list.
    let waits = ctx
        .world
        .apps
        .wait_ready()
        .then(|()| ctx.world.apis.wait_ready())
        .then(|()| ctx.world.grants.wait_ready());
    let readiness = async move {
        waits.await;
        ready();
    };
    futures::future::join(futures::future::join_all(runs), readiness).await;
}

/// Runs the controller of one connection watch. The watch itself keeps the registry in step
/// before any reconcile: a connection seen is known (objects naming it wait for its first
/// check instead of reporting it missing), one deleted is gone, and each listing counts
/// towards the start-up wait of the other kinds ([`Businesses::wait_listed`]). A new or
/// deleted connection, a changed selector, or this installation's finalizer added or
/// removed wakes the objects that name it. Objects that want to use a connection this
/// installation does not hold yet wake it (`wake_ups`, see [`Businesses::wake`]).
async fn run_connections<C: ConnectionObject>(
    api: Api<C>,
    wake_ups: UnboundedReceiver<ObjectRef<C>>,
    ctx: &Arc<ConnectionContext>,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let (reader, writer) = reflector::store();
    let registry = ctx.clone();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(strip_for_cache)
        .reflect(writer)
        .map(move |event| {
            let businesses = &registry.shared.businesses;
            let world = &registry.shared.world;
            match &event {
                Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                    let sighting = c.sighting(&registry.defaults.installation);
                    let users_changed = businesses.seen(c.key(), sighting);
                    if users_changed {
                        world::wake_users_of_connection(world, &c.key());
                    }
                }
                Ok(watcher::Event::Delete(c)) => {
                    if let Some(gone) = businesses.remove(&c.key()).and_then(|c| c.business) {
                        gone.kinde.metrics().forget();
                    }
                    world::wake_users_of_connection(world, &c.key());
                }
                Ok(watcher::Event::InitDone) => businesses.listed(),
                _ => {}
            }
            event
        })
        .applied_objects();
    // Unbounded: a connection whose business is slow to answer (a low pace, a 429 pause)
    // must not hold up the checks of the others.
    let controller = Controller::for_stream(stream, reader)
        .reconcile_on(wake_ups)
        .graceful_shutdown_on(shutdown);
    drain(controller.run(
        connection::reconcile::<C>,
        connection::error_policy::<C>,
        ctx.clone(),
    ))
    .await;
}

async fn drain<S, T, E>(stream: S)
where
    S: futures::Stream<Item = std::result::Result<T, E>>,
    E: std::fmt::Display,
{
    stream
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

/// Drops what no decision reads before an object enters the cache: `managedFields` (often
/// larger than the object) and kubectl's last-applied copy of the whole manifest. At a
/// fleet of thousands of objects they were most of the operator's memory.
fn strip_for_cache<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(annotations) = obj.meta_mut().annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Watches of the operator's Secrets, metadata only (their data never sits in memory),
/// one per namespace slot: a deleted or edited Secret wakes its M2MApplication.
fn secret_triggers(
    client: &kube::Client,
    scope: &Scope,
) -> Vec<
    impl Stream<Item = std::result::Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static,
> {
    scope
        .slots()
        .into_iter()
        .map(|slot| {
            let config = watcher::Config::default()
                .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
            watcher(api_for::<PartialObjectMeta<Secret>>(client, &slot), config)
                .default_backoff()
                .touched_objects()
        })
        .collect()
}

//! The three controllers and what they share.
//!
//! Each kind has its own module with `apply` (converge Kinde and Kubernetes to the spec) and
//! `cleanup` (finalizer). They share one [`Context`]: the Kinde client, the reflector stores
//! of all three kinds (a grant looks up its application and API there), a router that wakes
//! dependants (an API turning Ready wakes its grants; a grant turning Ready wakes its
//! application, whose Secret lists the grant's audience), the Kinde API snapshot cache and
//! the authorization batcher.

pub(crate) mod api_grant;
pub mod api_registration;
mod error;
mod kinde_state;
pub(crate) mod m2m_application;
mod rotation;
mod stores;

use std::collections::hash_map::DefaultHasher;
use std::fmt::Debug;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument;

pub use error::{Error, Result};
pub use kinde_state::{ApiSnapshots, AuthorizeBatcher};
pub use stores::{Router, StoreSet};

use crate::adoption::AdoptionPolicy;
use crate::conditions::{self, reasons};
use crate::crd::{ApiGrant, ApiRegistration, KindeAnnotations, M2MApplication, PAUSED_ANNOTATION};
use crate::kinde::KindeClient;
use crate::kinde::types::Authorization;
use crate::metrics::Metrics;

/// Finalizer on all three kinds.
const FINALIZER: &str = "m2m.kinde-operator.io/finalizer";
/// The one field manager for every server-side apply.
const FIELD_MANAGER: &str = "kinde-m2m-operator";

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub kinde: KindeClient,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Base period of the drift-detecting resync (jittered per object).
    pub resync: Duration,
    pub apps: StoreSet<M2MApplication>,
    pub apis: StoreSet<ApiRegistration>,
    pub grants: StoreSet<ApiGrant>,
    pub wake_apps: Router<M2MApplication>,
    pub wake_apis: Router<ApiRegistration>,
    pub wake_grants: Router<ApiGrant>,
    pub kinde_apis: ApiSnapshots,
    pub authorizer: AuthorizeBatcher,
    /// Who may adopt existing Kinde objects (cluster-level, from the flags).
    pub adoption: AdoptionPolicy,
    /// Shortest `spec.rotation.every` accepted.
    pub min_rotation_every: Duration,
    /// Consecutive failures per object (backoff).
    pub failures: FailureCounts,
    /// Status versions written, until the reflector shows them.
    pub written: WrittenVersions,
}

/// A kind this operator reconciles.
pub trait Managed:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    /// Kind name for metrics and logs.
    const KIND: &'static str;
    /// The status subresource.
    type Status: HasConditions + Serialize + PartialEq + Clone + Default + Send + Sync;
    /// The status as last written.
    fn current_status(&self) -> Option<&Self::Status>;
    /// Converge Kinde and Kubernetes to the spec, recording what was found in `status`.
    fn converge(
        &self,
        ctx: &Context,
        status: &mut Self::Status,
    ) -> impl Future<Output = Result<Outcome>> + Send;
    /// Wakes the objects that depend on this one after its status changed.
    fn status_changed(&self, ctx: &Context);
    /// Undo in Kinde what the object stands for, per its deletion policy.
    fn cleanup(obj: Arc<Self>, ctx: Arc<Context>) -> impl Future<Output = Result<Action>> + Send;
}

/// The finalizer's apply: converge, write the status, wake dependants if it changed.
async fn apply<K: Managed>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let mut status = obj.current_status().cloned().unwrap_or_default();
    let outcome = obj.converge(&ctx, &mut status).await;
    let (action, changed) = finish(&ctx, obj.as_ref(), status, outcome).await?;
    if changed {
        obj.status_changed(&ctx);
    }
    Ok(action)
}

/// Deletion waits while the object is paused: no Kinde writes, as for any other change.
fn wait_if_paused(obj: &impl KindeAnnotations) -> Result<()> {
    if obj.is_paused() {
        return Err(Error::Blocked {
            reason: reasons::PAUSED,
            message: "deletion waits until the paused annotation is removed".into(),
        });
    }
    Ok(())
}

/// Reconcile entry point: tracing span, timing, finalizer dispatch, failure Event.
pub async fn reconcile<K: Managed>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let ns = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let name = obj.name_any();
    let span = tracing::info_span!("reconcile", kind = K::KIND, namespace = %ns, name = %name);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let object_ref = obj.object_ref(&());
    let key = object_key::<K>(&ns, &name);
    let obj = current_copy(&ctx.client, &ctx.written, obj, &key).await?;
    let deleting = obj.meta().deletion_timestamp.is_some();
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            FinalizerEvent::Apply(o) => apply(o, ctx.clone()).await,
            FinalizerEvent::Cleanup(o) => cleanup_reporting(o, ctx.clone()).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(K::KIND, started.elapsed());
    match &result {
        Ok(_) => {
            ctx.failures.clear(&key);
            if deleting {
                ctx.written.forget(&key);
            }
        }
        Err(e) => {
            let note = error_note(e);
            tracing::warn!(kind = K::KIND, namespace = %ns, name = %name, reason = e.reason(), error = %note, "reconcile failed");
            // A deletion that cannot finish reports itself (conditions, one Event per
            // change of reason): see `cleanup_reporting`.
            if !deleting {
                publish(
                    &ctx,
                    &object_ref,
                    EventType::Warning,
                    e.reason(),
                    note,
                    "Reconcile",
                )
                .await;
            }
        }
    }
    result
}

/// Runs the kind's cleanup; when it cannot finish, the conditions say why (`Ready=False`,
/// `Synced=False` with the reason and message) and one Event per change of reason tells it:
/// Normal for a wait (paused, in use), Warning for a failure (Kinde refused, unavailable).
async fn cleanup_reporting<K: Managed>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let result = K::cleanup(obj.clone(), ctx.clone()).await;
    if let Err(e) = &result {
        report_unfinished_deletion(&ctx, obj.as_ref(), e).await;
    }
    result
}

async fn report_unfinished_deletion<K: Managed>(ctx: &Context, obj: &K, err: &Error) {
    let old = obj.current_status();
    let (message, event_type) = deletion_report(err);
    let mut status = old.cloned().unwrap_or_default();
    let generation = obj.meta().generation;
    set_conditions(
        status.conditions_mut(),
        generation,
        (false, err.reason(), message.clone()),
        (false, err.reason(), message.clone()),
    );
    status.set_observed_generation(generation);
    if let Err(e) = apply_status(ctx, obj, old, &status).await {
        tracing::warn!(error = %e, "could not write the status of an unfinished deletion");
    }
    // Once per change of what Synced says (a paused object that is then deleted gets its
    // Event: its Synced reason was already `Paused`, the message was the apply's).
    let old_synced = old
        .and_then(|s| conditions::find_condition(s.conditions(), conditions::SYNCED))
        .map(|c| (c.reason.clone(), c.message.clone()));
    if old_synced.as_ref() != Some(&(err.reason().to_owned(), message.clone())) {
        publish(
            ctx,
            &obj.object_ref(&()),
            event_type,
            err.reason(),
            message,
            "Delete",
        )
        .await;
    }
}

/// The condition message and Event type of a deletion that cannot finish.
fn deletion_report(err: &Error) -> (String, EventType) {
    if err.is_wait() {
        (error_note(err), EventType::Normal)
    } else {
        (
            format!("deletion cannot finish: {}", error_note(err)),
            EventType::Warning,
        )
    }
}

/// After a failure: count it and try again later, backing off per object (a thousand
/// broken objects during an outage must not cost a thousand reconciles every 10 s).
fn error_policy<K: Managed>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(K::KIND, err.reason());
    let key = object_key::<K>(&obj.namespace().unwrap_or_default(), &obj.name_any());
    let failures = ctx.failures.bump(&key);
    let after = if err.is_wait() {
        WAIT_RECHECK.min(ctx.resync)
    } else if matches!(err.inner(), Error::InvalidSpec(_)) {
        ctx.resync
    } else {
        failure_backoff(failures, err.retry_after(), ctx.resync)
    };
    Action::requeue(with_jitter(after))
}

/// How often a deletion that waits (paused, in use) looks again.
const WAIT_RECHECK: Duration = Duration::from_secs(30);
/// First retry after a failure; doubled per consecutive failure of the same object.
const FAILURE_BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest retry interval after failures (never longer than a resync either).
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The retry interval after the `failures`-th consecutive failure: 10 s doubling up to
/// 5 min (or the resync period, if shorter), never earlier than Kinde's own reset hint.
fn failure_backoff(failures: u32, retry_after: Option<Duration>, resync: Duration) -> Duration {
    let doubling = FAILURE_BACKOFF_BASE
        .checked_mul(1u32 << failures.saturating_sub(1).min(16))
        .unwrap_or(FAILURE_BACKOFF_MAX);
    let backoff = doubling.min(FAILURE_BACKOFF_MAX).min(resync);
    retry_after.map_or(backoff, |hint| hint.max(backoff))
}

/// The key of an object in the per-object bookkeeping (failures, written versions).
fn object_key<K: Resource<DynamicType = ()>>(ns: &str, name: &str) -> String {
    format!("{}/{ns}/{name}", K::kind(&()))
}

/// The copy of the object to reconcile: the reflector's, unless it lags behind a status this
/// operator wrote itself (status writes are not worth a reconcile, so a reconcile woken by
/// something else, such as the Secret or a dependant just written, can start before the
/// watch delivers that status). Deciding on such a stale copy redoes work already done (a
/// rotation already handled, scopes already granted) and overwrites the newer status
/// (dropping a predecessor from `status.retiring`); then the object is read from the API
/// server (a `list` by name: a quorum read, with the verb the operator already has).
async fn current_copy<K: Managed>(
    client: &Client,
    written_versions: &WrittenVersions,
    cached: Arc<K>,
    key: &str,
) -> Result<Arc<K>> {
    let Some(written) = written_versions.get(key) else {
        return Ok(cached);
    };
    if cached.resource_version().as_deref() == Some(written.as_str()) {
        // The watch has caught up with our write.
        written_versions.forget(key);
        return Ok(cached);
    }
    let ns = cached
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let params =
        kube::api::ListParams::default().fields(&format!("metadata.name={}", cached.name_any()));
    let Some(fresh) = api.list(&params).await?.items.into_iter().next() else {
        written_versions.forget(key);
        return Ok(cached);
    };
    tracing::debug!(
        cached = ?cached.resource_version(),
        current = ?fresh.resource_version(),
        "the cached copy lags behind our own status write; reconciling the current one"
    );
    // Until the watch delivers this version (or ours), the cache is known to be behind.
    if let Some(rv) = fresh.resource_version() {
        written_versions.record(key, rv);
    }
    Ok(Arc::new(fresh))
}

/// The resourceVersion of each object's last status written by this operator, until the
/// reflector has caught up with it (see [`current_copy`]).
#[derive(Default)]
pub struct WrittenVersions(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl WrittenVersions {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, key: &str, resource_version: String) {
        self.lock().insert(key.to_owned(), resource_version);
    }

    fn get(&self, key: &str) -> Option<String> {
        self.lock().get(key).cloned()
    }

    fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// Consecutive failures per object, for the backoff; cleared by a success.
#[derive(Default)]
pub struct FailureCounts(std::sync::Mutex<std::collections::HashMap<String, u32>>);

impl FailureCounts {
    fn bump(&self, key: &str) -> u32 {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.to_owned()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    fn clear(&self, key: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// The message of an error for Events and conditions: its chain, without the finalizer
/// wrapper, at most 1 KiB (the Events API limit).
fn error_note(e: &Error) -> String {
    let inner: &Error = match e {
        Error::Finalizer(f) => match f.as_ref() {
            kube::runtime::finalizer::Error::ApplyFailed(i)
            | kube::runtime::finalizer::Error::CleanupFailed(i) => i,
            _ => e,
        },
        _ => e,
    };
    let mut note = inner.to_string();
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push('…');
    }
    note
}

/// Requeue for the periodic resync, jittered by up to +10% so objects spread out.
pub fn resync(ctx: &Context) -> Action {
    Action::requeue(with_jitter(ctx.resync))
}

fn with_jitter(d: Duration) -> Duration {
    d + d.mul_f64(fastrand::f64() * 0.1)
}

/// Publishes an Event; failures are logged, never fatal (an Event is a courtesy).
pub async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
    action: &str,
) {
    let event = KubeEvent {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, reason, "could not publish Event");
    }
}

/// Writes `status` with server-side apply, only when it differs from `current`: a no-op
/// reconcile makes no Kubernetes write.
async fn apply_status<K: Managed, S: Serialize + PartialEq>(
    ctx: &Context,
    obj: &K,
    current: Option<&S>,
    status: &S,
) -> Result<()> {
    if current == Some(status) {
        return Ok(());
    }
    let ns = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let written = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    if let Some(rv) = written.resource_version() {
        ctx.written
            .record(&object_key::<K>(&ns, &obj.name_any()), rv);
    }
    Ok(())
}

/// Sets Ready and Synced for `generation`; keeps lastTransitionTime where status holds.
fn set_conditions(
    conds: &mut Vec<Condition>,
    generation: Option<i64>,
    ready: (bool, &str, String),
    synced: (bool, &str, String),
) {
    let now = Time(jiff::Timestamp::now());
    conditions::set_condition(
        conds,
        conditions::new_condition(
            conditions::READY,
            ready.0,
            ready.1,
            ready.2,
            generation,
            now.clone(),
        ),
    );
    conditions::set_condition(
        conds,
        conditions::new_condition(
            conditions::SYNCED,
            synced.0,
            synced.1,
            synced.2,
            generation,
            now,
        ),
    );
}

/// Conditions for a reconcile that could not finish: Synced says why; Ready keeps its
/// status unless `not_ready` (the object is not usable, e.g. its Kinde object is gone).
fn set_failure(conds: &mut Vec<Condition>, generation: Option<i64>, err: &Error, not_ready: bool) {
    let now = Time(jiff::Timestamp::now());
    let note = error_note(err);
    let ready_now = conditions::is_true(conds, conditions::READY) && !not_ready;
    if !ready_now {
        conditions::set_condition(
            conds,
            conditions::new_condition(
                conditions::READY,
                false,
                err.reason(),
                note.clone(),
                generation,
                now.clone(),
            ),
        );
    }
    conditions::set_condition(
        conds,
        conditions::new_condition(
            conditions::SYNCED,
            false,
            err.reason(),
            note,
            generation,
            now,
        ),
    );
}

/// The status message for a paused object.
fn paused_conditions(conds: &mut Vec<Condition>, generation: Option<i64>, ready: bool) {
    let msg = format!("{PAUSED_ANNOTATION} is set: no Kinde writes until it is removed");
    let ready_reason = if ready {
        reasons::RECONCILED
    } else {
        reasons::PAUSED
    };
    set_conditions(
        conds,
        generation,
        (
            ready,
            ready_reason,
            if ready { "ready".into() } else { msg.clone() },
        ),
        (false, reasons::PAUSED, msg),
    );
}

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

fn api_for<K>(client: &Client, ns: &Option<String>) -> Api<K>
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

fn build<K>(client: &Client, scope: &Scope) -> Built<K>
where
    K: Managed,
{
    let mut controllers = Vec::new();
    let mut stores = Vec::new();
    let mut senders = Vec::new();
    for slot in scope.slots() {
        let (reader, writer) = reflector::store();
        let stream = watcher(
            api_for::<K>(client, &slot),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(meaningful_change::<K>, Default::default());
        let (tx, rx) = futures::channel::mpsc::unbounded::<ObjectRef<K>>();
        let controller = Controller::for_stream(stream, reader.clone())
            .reconcile_on(rx)
            .with_config(
                kube::runtime::controller::Config::default().debounce(Duration::from_millis(200)),
            );
        controllers.push(controller);
        stores.push((slot.clone(), reader));
        senders.push((slot, tx));
    }
    Built {
        controllers,
        stores: StoreSet::new(stores),
        router: Router::new(senders),
    }
}

/// What the controllers run with.
pub struct Settings {
    pub client: Client,
    pub kinde: KindeClient,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub scope: Scope,
    pub resync: Duration,
    pub adoption: AdoptionPolicy,
    pub min_rotation_every: Duration,
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
        recorder,
        metrics,
        scope,
        resync,
        adoption,
        min_rotation_every,
    } = settings;
    let apps = build::<M2MApplication>(&client, &scope);
    let apis = build::<ApiRegistration>(&client, &scope);
    let grants = build::<ApiGrant>(&client, &scope);
    let secrets = m2m_application::secret_triggers(&client, &scope);

    let ctx = Arc::new(Context {
        client: client.clone(),
        kinde: kinde.clone(),
        recorder,
        metrics,
        resync,
        apps: apps.stores.clone(),
        apis: apis.stores.clone(),
        grants: grants.stores.clone(),
        wake_apps: apps.router.clone(),
        wake_apis: apis.router.clone(),
        wake_grants: grants.router.clone(),
        kinde_apis: ApiSnapshots::new(kinde.clone(), resync / 2),
        authorizer: AuthorizeBatcher::new(kinde),
        adoption,
        min_rotation_every,
        failures: FailureCounts::default(),
        written: WrittenVersions::default(),
    });

    let mut runs = Vec::new();
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
        .apps
        .wait_ready()
        .then(|()| ctx.apis.wait_ready())
        .then(|()| ctx.grants.wait_ready());
    let readiness = async move {
        waits.await;
        ready();
    };
    futures::future::join(futures::future::join_all(runs), readiness).await;
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

/// How a reconcile ended, short of an error.
#[derive(Debug)]
pub enum Outcome {
    /// Converged: Kinde matches the spec.
    Ready,
    /// Converged, with work due within this long (retiring credentials, a scheduled
    /// rotation): requeue then at the latest.
    ReadyFor(Duration),
    /// Paused by annotation; `ready` tells whether the object is usable as it stands.
    Paused { ready: bool },
    /// Cannot converge now: waiting on another object, or refused (bad input); the
    /// reason is a condition reason, the message tells the user what to do.
    NotReady {
        reason: &'static str,
        message: String,
        requeue: Duration,
    },
}

impl Outcome {
    fn not_ready(reason: &'static str, message: impl Into<String>) -> Self {
        Outcome::NotReady {
            reason,
            message: message.into(),
            requeue: Duration::from_secs(60),
        }
    }

    /// An adoption the cluster's policy refuses.
    pub fn refused(refusal: crate::adoption::Refusal) -> Self {
        Outcome::not_ready(refusal.reason, refusal.message)
    }
}

/// Status types with conditions.
pub trait HasConditions {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn set_observed_generation(&mut self, generation: Option<i64>);
}

macro_rules! has_conditions {
    ($($t:ty),*) => {$(
        impl HasConditions for $t {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
            }
        }
    )*};
}
has_conditions!(
    crate::crd::ApiRegistrationStatus,
    crate::crd::M2MApplicationStatus,
    crate::crd::ApiGrantStatus
);

/// Ends an `apply`: sets conditions from the outcome, writes the status if it changed,
/// publishes a Warning when the object turns not-Ready for a new reason, and picks the
/// requeue. Returns whether the status changed, so callers can wake dependants.
pub async fn finish<K: Managed>(
    ctx: &Context,
    obj: &K,
    mut status: K::Status,
    outcome: Result<Outcome>,
) -> Result<(Action, bool)> {
    let generation = obj.meta().generation;
    let old = obj.current_status();
    let old_ready = old
        .and_then(|s| conditions::find_condition(s.conditions(), conditions::READY))
        .map(|c| (c.status.clone(), c.reason.clone()));
    match &outcome {
        Ok(Outcome::Ready | Outcome::ReadyFor(_)) => set_conditions(
            status.conditions_mut(),
            generation,
            (
                true,
                reasons::RECONCILED,
                format!("{} is in sync with Kinde", K::KIND),
            ),
            (true, reasons::RECONCILED, "last reconcile converged".into()),
        ),
        Ok(Outcome::Paused { ready }) => {
            paused_conditions(status.conditions_mut(), generation, *ready)
        }
        Ok(Outcome::NotReady {
            reason, message, ..
        }) => set_conditions(
            status.conditions_mut(),
            generation,
            (false, reason, message.clone()),
            (false, reason, message.clone()),
        ),
        Err(e) => set_failure(status.conditions_mut(), generation, e, false),
    }
    status.set_observed_generation(generation);
    let changed = old != Some(&status);
    apply_status(ctx, obj, old, &status).await?;
    if let Ok(Outcome::NotReady {
        reason, message, ..
    }) = &outcome
        && old_ready != Some((conditions::FALSE.to_owned(), (*reason).to_owned()))
    {
        publish(
            ctx,
            &obj.object_ref(&()),
            EventType::Warning,
            reason,
            message.clone(),
            "Reconcile",
        )
        .await;
    }
    match outcome {
        Ok(Outcome::Ready) | Ok(Outcome::Paused { .. }) => Ok((resync(ctx), changed)),
        Ok(Outcome::ReadyFor(d)) if d < ctx.resync => {
            // A second past the due time, so the work is really due when we look.
            Ok((Action::requeue(d + Duration::from_secs(1)), changed))
        }
        Ok(Outcome::ReadyFor(_)) => Ok((resync(ctx), changed)),
        // Never later than a resync: what a waiting object depends on without watching it
        // (a namespace's labels under a `Selector` grant policy) is re-read at least as often
        // as drift is.
        Ok(Outcome::NotReady {
            requeue, reason, ..
        }) => {
            let requeue = requeue.min(ctx.resync);
            tracing::debug!(reason, ?requeue, "not ready; looking again later");
            Ok((Action::requeue(with_jitter(requeue)), changed))
        }
        Err(e) => Err(e),
    }
}

/// Deletes a Kinde application; `false` when it was already gone (Kinde's not-found counts
/// as done).
async fn delete_kinde_application(ctx: &Context, id: &str) -> Result<bool> {
    match ctx.kinde.delete_application(id).await {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// De-authorizes `client_id` for `api_id` (through the batcher; an application or API
/// already gone counts as done) and keeps the API snapshot cache in step.
async fn deauthorize(ctx: &Context, api_id: &str, client_id: &str) -> Result<()> {
    match ctx
        .authorizer
        .submit(api_id, client_id, Authorization::Deauthorize)
        .await
    {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    ctx.kinde_apis
        .note(api_id, client_id, Authorization::Deauthorize)
        .await;
    Ok(())
}

/// Publishes a Normal Event about a change made in Kinde.
async fn record_change(
    ctx: &Context,
    obj: &impl Resource<DynamicType = ()>,
    reason: &str,
    note: String,
) {
    tracing::info!(reason, "{note}");
    publish(
        ctx,
        &obj.object_ref(&()),
        EventType::Normal,
        reason,
        note,
        reason,
    )
    .await;
}

/// Whether the cluster's adoption policy admits adoption in `obj`'s namespace: the
/// namespace's labels are read only when a selector needs them.
async fn adoption_admitted(
    ctx: &Context,
    obj: &impl Resource,
) -> Result<std::result::Result<(), Outcome>> {
    let ns = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let labels = if ctx.adoption.needs_labels(&ns) {
        namespace_labels(ctx, &ns).await?
    } else {
        Default::default()
    };
    Ok(ctx
        .adoption
        .check_namespace(&ns, &labels)
        .map_err(Outcome::refused))
}

/// The labels of a namespace (empty when it is gone).
async fn namespace_labels(
    ctx: &Context,
    ns: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.client.clone());
    Ok(namespaces
        .get_metadata_opt(ns)
        .await?
        .map(|n| n.labels().clone())
        .unwrap_or_default())
}

/// Older objects win a contest (two grants for one pair, two adoptions of one Kinde
/// object): creation time, then namespace and name.
fn is_older(a: &impl Resource, b: &impl Resource) -> bool {
    let key = |m: &kube::api::ObjectMeta| {
        (
            m.creation_timestamp.clone().map(|t| t.0),
            m.namespace.clone(),
            m.name.clone(),
        )
    };
    key(a.meta()) < key(b.meta())
}

/// The deletion policy in force: the spec's, else `Delete` for objects the operator
/// created and `Orphan` for adopted ones (annotated, or adopted before).
fn effective_deletion_policy(
    spec: Option<crate::crd::DeletionPolicy>,
    adopted: bool,
) -> crate::crd::DeletionPolicy {
    spec.unwrap_or(if adopted {
        crate::crd::DeletionPolicy::Orphan
    } else {
        crate::crd::DeletionPolicy::Delete
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_exponentially_per_object() {
        let resync = Duration::from_secs(600);
        let secs = |n| failure_backoff(n, None, resync).as_secs();
        assert_eq!(
            [secs(1), secs(2), secs(3), secs(4), secs(5)],
            [10, 20, 40, 80, 160]
        );
        assert_eq!(secs(6), 300);
        assert_eq!(secs(u32::MAX), 300, "no overflow, capped");
        assert_eq!(secs(0), 10);
        // Never longer than a resync, never sooner than Kinde's hint.
        assert_eq!(
            failure_backoff(9, None, Duration::from_secs(60)).as_secs(),
            60
        );
        assert_eq!(
            failure_backoff(1, Some(Duration::from_secs(45)), resync).as_secs(),
            45
        );
        assert_eq!(
            failure_backoff(5, Some(Duration::from_secs(45)), resync).as_secs(),
            160
        );
    }

    /// A cached copy behind our own status write is replaced by a quorum read; one that
    /// caught up is used as it is, without any request.
    #[tokio::test]
    async fn a_copy_behind_our_own_write_is_read_again() {
        use crate::crd::{M2MApplication, M2MApplicationSpec};
        let (svc, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((req, send)) = handle.next_request().await {
                seen.push(format!("{} {}", req.method(), req.uri()));
                let list = serde_json::json!({
                    "apiVersion": "m2m.kinde-operator.io/v1alpha1", "kind": "M2MApplicationList",
                    "metadata": {"resourceVersion": "9"},
                    "items": [{"apiVersion": "m2m.kinde-operator.io/v1alpha1", "kind": "M2MApplication",
                               "metadata": {"name": "shop", "namespace": "acme", "resourceVersion": "7"},
                               "spec": {}, "status": {"lastHandledRotateRequest": "B"}}]
                });
                send.send_response(
                    http::Response::builder()
                        .status(200)
                        .body(kube::client::Body::from(list.to_string().into_bytes()))
                        .expect("response"),
                );
            }
            seen
        });
        let client = kube::Client::new(svc, "acme");
        let written = WrittenVersions::default();
        let mut stale = M2MApplication::new("shop", M2MApplicationSpec::default());
        stale.metadata.namespace = Some("acme".into());
        stale.metadata.resource_version = Some("5".into());
        let key = object_key::<M2MApplication>("acme", "shop");

        // Nothing written: the cache is trusted, no request.
        let same = current_copy(&client, &written, Arc::new(stale.clone()), &key)
            .await
            .expect("copy");
        assert_eq!(same.resource_version().as_deref(), Some("5"));

        written.record(&key, "7".into());
        let fresh = current_copy(&client, &written, Arc::new(stale.clone()), &key)
            .await
            .expect("copy");
        assert_eq!(fresh.resource_version().as_deref(), Some("7"));
        assert_eq!(
            fresh
                .status
                .as_ref()
                .and_then(|s| s.last_handled_rotate_request.as_deref()),
            Some("B")
        );

        // The watch delivers version 7: trusted again, and forgotten.
        let mut caught_up = stale;
        caught_up.metadata.resource_version = Some("7".into());
        current_copy(&client, &written, Arc::new(caught_up), &key)
            .await
            .expect("copy");
        assert_eq!(written.get(&key), None);
        drop(client);
        let seen = server.await.expect("server");
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].starts_with(
                "GET /apis/m2m.kinde-operator.io/v1alpha1/namespaces/acme/m2mapplications?"
            ) && seen[0].contains("fieldSelector=metadata.name%3Dshop"),
            "{seen:?}"
        );
    }

    #[test]
    fn failure_counts_are_per_object_and_cleared_by_success() {
        let counts = FailureCounts::default();
        assert_eq!(counts.bump("a"), 1);
        assert_eq!(counts.bump("a"), 2);
        assert_eq!(counts.bump("b"), 1);
        counts.clear("a");
        assert_eq!(counts.bump("a"), 1);
    }

    #[test]
    fn unfinished_deletions_are_normal_when_waiting_and_warnings_when_failing() {
        let wait = Error::Blocked {
            reason: reasons::IN_USE,
            message: "deletion waits: 1 ApiGrant(s) still grant access".into(),
        };
        let (message, kind) = deletion_report(&wait);
        assert_eq!(kind, EventType::Normal);
        assert!(message.starts_with("deletion waits"), "{message}");
        assert!(wait.is_wait());
        let failed = Error::InvalidSpec("x".into());
        let (message, kind) = deletion_report(&failed);
        assert_eq!(kind, EventType::Warning);
        assert!(message.starts_with("deletion cannot finish"), "{message}");
        assert!(!failed.is_wait());
    }
}

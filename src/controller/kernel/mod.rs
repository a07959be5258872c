//! The kernel every kind uses, knowing none of them: the [`Managed`] trait a kind
//! implements, the reconcile shell around it (tracing span, finalizer, status and
//! conditions, Events, error policy), the shared [`Context`] (generic over the world of
//! stores a kind's decisions look at), and the effects every kind needs (Kinde deletes and
//! de-authorizations, Events, status writes). Pure rules live in [`rules`].

mod app_directory;
mod bookkeeping;
pub mod business;
mod error;
pub mod events;
mod kinde_state;
#[cfg(test)]
pub(crate) mod mock_api;
mod outcome;
mod ownership;
mod recent;
pub mod rules;
mod stores;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument;

pub use app_directory::{AppDirectory, KindeApp};
pub use bookkeeping::{FailureCounts, ResyncsDue, WrittenVersions};
use bookkeeping::{current_copy, object_key};
pub use business::{
    Business, Businesses, ConnectionKey, ConnectionRouters, Resolution, SlotLimits,
};
pub use error::{Error, Result};
pub use kinde_state::{ApiSnapshots, AuthorizeBatcher};
pub use outcome::{Outcome, Step, Stop};
pub use ownership::{OwnerRecord, Ownership};
pub use recent::Recent;
use rules::{
    WAIT_RECHECK, deletion_report, failure_backoff, outcome_event, record_outcome, requeue_after,
    set_conditions, with_jitter,
};
pub use rules::{effective_deletion_policy, error_note, is_older, wait_if_paused};
pub use stores::{Router, StoreSet};

use crate::adoption::AdoptionPolicy;
use crate::conditions;
pub use crate::conditions::HasConditions;
use crate::crd::ConnectionRef;
use crate::kinde::types::Authorization;
use crate::metrics::{Metrics, ObjectLabels};

/// Finalizer on all three kinds.
pub const FINALIZER: &str = "m2m.kinde-operator.io/finalizer";

/// The one field manager for every server-side apply.
pub const FIELD_MANAGER: &str = "kinde-m2m-operator";

/// What one reconcile runs with: everything the kinds share, and the Kinde business the
/// object lives in (its connection's, resolved by the reconcile shell).
pub struct Context<W> {
    pub shared: Arc<Shared<W>>,
    pub business: Arc<Business>,
}

impl<W> std::ops::Deref for Context<W> {
    type Target = Shared<W>;

    fn deref(&self) -> &Shared<W> {
        &self.shared
    }
}

/// What every reconcile shares: the Kubernetes client, the businesses, the bookkeeping, and
/// the `world` of stores the kinds' decisions look at (defined above the kernel, so the
/// kernel knows no kind).
pub struct Shared<W> {
    pub client: Client,
    /// The Kinde businesses: the flags' one and one per connection.
    pub businesses: Businesses,
    pub events: events::Events,
    pub metrics: Metrics,
    /// Base period of the drift-detecting resync (see [`resync_period`]).
    pub resync: Duration,
    /// Share of the Kinde rate the resync's drift reads may take.
    pub resync_read_share: f64,
    /// Who may adopt existing Kinde objects (cluster-level, from the flags).
    pub adoption: AdoptionPolicy,
    /// Shortest `spec.rotation.every` accepted.
    pub min_rotation_every: Duration,
    /// Consecutive failures per object (backoff).
    pub failures: FailureCounts,
    /// Status versions written, until the reflector shows them.
    pub written: WrittenVersions,
    /// When each object's resync is due.
    pub resyncs_due: ResyncsDue,
    /// The stores and routers of the kinds.
    pub world: W,
}

/// A status that records the connection its Kinde object was made through.
pub trait Bound {
    /// `status.connection`.
    fn connection(&self) -> Option<&str>;
    fn set_connection(&mut self, label: String);
    /// Whether the Kinde object exists (its id is recorded): from then on the connection
    /// is fixed.
    fn is_bound(&self) -> bool;
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
    /// The stores the kind's decisions look at.
    type World: Fleet + Send + Sync + 'static;
    /// The status subresource.
    type Status: HasConditions + Bound + Serialize + PartialEq + Clone + Default + Send + Sync;
    /// The status as last written.
    fn current_status(&self) -> Option<&Self::Status>;
    /// The connection the spec asks for (a grant: its API's), before the recorded one is
    /// taken into account ([`business::binding`]).
    fn wanted_connection(&self, world: &Self::World) -> Option<ConnectionRef>;
    /// Converge Kinde and Kubernetes to the spec, recording what was found in `status`.
    /// `status` starts as the status last written and is written back whatever the outcome,
    /// also when converge fails: what was found in Kinde before the failure is kept.
    fn converge(
        &self,
        ctx: &Context<Self::World>,
        status: &mut Self::Status,
    ) -> impl Future<Output = Result<Outcome>> + Send;
    /// Wakes the objects that depend on this one; the kernel calls it after the object's
    /// status changed and after its cleanup finished.
    fn wake_dependants(&self, world: &Self::World);
    /// Sets the kind's own per-object metrics from the status just computed (every
    /// per-object series is removed with the object: see [`Metrics::forget`]).
    fn record_metrics(&self, _status: &Self::Status, _metrics: &Metrics, _object: &ObjectLabels) {}
    /// Undo in Kinde what the object stands for, per its deletion policy.
    fn cleanup(
        obj: Arc<Self>,
        ctx: Arc<Context<Self::World>>,
    ) -> impl Future<Output = Result<Action>> + Send;
}

/// The finalizer's apply: converge, record the connection once the Kinde object exists,
/// write the status, wake dependants if it changed.
async fn apply<K: Managed>(obj: Arc<K>, ctx: Arc<Context<K::World>>) -> Result<Action> {
    let mut status = status_of(obj.as_ref());
    let outcome = obj.converge(&ctx, &mut status).await;
    if status.is_bound() && status.connection().is_none() {
        status.set_connection(ctx.business.label.clone());
    }
    let (action, changed) = finish(&ctx, obj.as_ref(), status, outcome).await?;
    if changed {
        obj.wake_dependants(&ctx.world);
    }
    Ok(action)
}

/// Reconcile entry point: tracing span, timing, finalizer dispatch, failure Event.
pub async fn reconcile<K: Managed>(obj: Arc<K>, ctx: Arc<Shared<K::World>>) -> Result<Action> {
    let started = Instant::now();
    let ns = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let object_ref = obj.object_ref(&());
    let key = object_key::<K>(&ns, &name);
    // Every await of the shell is boxed: a reconcile waiting for its slot (a fleet applied
    // at once parks one per object) then keeps its few locals (816 bytes in release),
    // not the largest of these futures (4.5 KB).
    let obj = Box::pin(current_copy(&ctx.client, &ctx.written, obj, &key)).await?;
    let deleting = obj.meta().deletion_timestamp.is_some();
    let connected = Box::pin(connect(&ctx, obj.as_ref(), deleting)).await?;
    let (period, working_in) = match &connected {
        Resolution::Wait => {
            tracing::debug!(kind = K::KIND, namespace = %ns, name = %name, "waiting for the first check of its connection");
            return Ok(Action::requeue(CONNECTION_WAIT));
        }
        Resolution::Claim(connection) => {
            tracing::debug!(kind = K::KIND, namespace = %ns, name = %name, connection = %connection.metric_label(), "waiting for this installation to hold its connection");
            ctx.businesses.wake(connection);
            return Ok(Action::requeue(CONNECTION_WAIT));
        }
        Resolution::Use(business) => (resync_period(&ctx, business), business.clone()),
        Resolution::Refuse { .. } => (ctx.resync, ctx.businesses.default_business().clone()),
    };
    // One of its business's slots for the work (see `SlotLimits`): the controllers run
    // unbounded, the businesses bound themselves.
    let _slot = working_in.slot(K::KIND).await;
    let span = tracing::info_span!("reconcile", kind = K::KIND, namespace = %ns, name = %name);
    let work = Box::pin(
        finalizer(&api, FINALIZER, obj, |event| async {
            match (event, connected) {
                (FinalizerEvent::Apply(o), Resolution::Use(business)) => {
                    apply(o, in_business(&ctx, business)).await
                }
                (FinalizerEvent::Cleanup(o), Resolution::Use(business)) => {
                    cleanup_reporting(o, in_business(&ctx, business)).await
                }
                (FinalizerEvent::Apply(o), Resolution::Refuse { reason, message }) => {
                    let outcome = Ok(Outcome::NotReady {
                        reason,
                        message,
                        requeue: CONNECTION_RECHECK,
                    });
                    // The status is written as the default business's objects' are.
                    let default = in_business(&ctx, working_in.clone());
                    let (action, _) =
                        finish(&default, o.as_ref(), status_of(o.as_ref()), outcome).await?;
                    Ok(action)
                }
                (FinalizerEvent::Cleanup(o), Resolution::Refuse { reason, message }) => {
                    // Nothing was made in Kinde through the connection: nothing to undo.
                    if !status_of(o.as_ref()).is_bound() {
                        return Ok(Action::await_change());
                    }
                    let err = Error::Blocked { reason, message };
                    report_unfinished_deletion(&ctx, o.as_ref(), &err).await;
                    Err(err)
                }
                (_, Resolution::Wait | Resolution::Claim(_)) => {
                    Ok(Action::requeue(CONNECTION_WAIT))
                }
            }
        })
        .instrument(span),
    );
    // The periodic drift check yields its Kinde calls to work a change asked for.
    let result = if !deleting && ctx.resyncs_due.take_due(&key) {
        crate::kinde::in_background(period, work).await
    } else {
        work.await
    }
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(K::KIND, started.elapsed());
    match &result {
        Ok(_) => {
            ctx.failures.clear(&key);
            if deleting {
                // The finalizer is gone, and so is the object: its series go with it.
                ctx.written.forget(&key);
                ctx.resyncs_due.forget(&key);
                ctx.metrics.forget(&object_labels(&ns, &name, K::KIND));
            }
        }
        Err(e) => {
            let note = error_note(e);
            tracing::warn!(kind = K::KIND, namespace = %ns, name = %name, reason = e.reason(), error = %note, "reconcile failed");
            // A deletion that cannot finish reports itself (conditions, one Event per
            // change of reason): see `cleanup_reporting`.
            if !deleting {
                Box::pin(publish(
                    &ctx,
                    &object_ref,
                    EventType::Warning,
                    e.reason(),
                    note,
                    "Reconcile",
                ))
                .await;
            }
        }
    }
    result
}

/// How soon an object whose connection is not known yet, or not held by this installation
/// yet, looks again (no status written).
const CONNECTION_WAIT: Duration = Duration::from_secs(2);
/// How soon an object refused its connection looks again (the connection may appear,
/// turn Ready or admit the namespace; none of them wakes the object).
const CONNECTION_RECHECK: Duration = Duration::from_secs(30);

fn status_of<K: Managed>(obj: &K) -> K::Status {
    obj.current_status().cloned().unwrap_or_default()
}

fn in_business<W>(shared: &Arc<Shared<W>>, business: Arc<Business>) -> Arc<Context<W>> {
    Arc::new(Context {
        shared: shared.clone(),
        business,
    })
}

/// The business `obj` may use ([`business::binding`], then [`business::resolve`]). A
/// deletion goes to the recorded connection whatever the spec says now.
async fn connect<K: Managed>(
    shared: &Shared<K::World>,
    obj: &K,
    deleting: bool,
) -> Result<Resolution> {
    let ns = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let status = obj.current_status();
    let recorded = status.and_then(|s| s.connection());
    let bound = status.is_some_and(|s| s.is_bound());
    let wanted = obj.wanted_connection(&shared.world);
    let reference = match business::binding(wanted.as_ref(), recorded, bound) {
        Ok(reference) => reference,
        Err(_) if deleting => crate::crd::connection_of(recorded, bound, wanted.as_ref()),
        Err(message) => {
            return Ok(Resolution::Refuse {
                reason: conditions::reasons::CONNECTION_CHANGED,
                message,
            });
        }
    };
    let Some(reference) = reference else {
        return Ok(Resolution::Use(
            shared.businesses.default_business().clone(),
        ));
    };
    shared.businesses.wait_listed().await;
    let key = ConnectionKey::of(&ns, &reference);
    let connection = shared.businesses.get(&key);
    let labels = match &connection {
        Some(c) if business::needs_labels(c) => namespace_labels(shared, &ns).await?,
        _ => Default::default(),
    };
    Ok(business::decide(
        connection.as_ref(),
        &ns,
        &reference,
        &labels,
        !bound && !deleting,
    ))
}

/// Runs the kind's cleanup; when it cannot finish, the conditions say why (`Ready=False`,
/// `Synced=False` with the reason and message) and one Event per change of reason tells it:
/// Normal for a wait (paused, in use), Warning for a failure (Kinde refused, unavailable).
async fn cleanup_reporting<K: Managed>(obj: Arc<K>, ctx: Arc<Context<K::World>>) -> Result<Action> {
    let result = K::cleanup(obj.clone(), ctx.clone()).await;
    match &result {
        Ok(_) => obj.wake_dependants(&ctx.world),
        Err(e) => report_unfinished_deletion(&ctx, obj.as_ref(), e).await,
    }
    result
}

async fn report_unfinished_deletion<K: Managed>(ctx: &Shared<K::World>, obj: &K, err: &Error) {
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
    record_object_metrics(ctx, obj, &status);
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

/// After a failure: count it and try again later, backing off per object (a thousand
/// broken objects during an outage must not cost a thousand reconciles every 10 s).
pub fn error_policy<K: Managed>(obj: Arc<K>, err: &Error, ctx: Arc<Shared<K::World>>) -> Action {
    // A deletion that waits (paused, in use) is not a failure.
    if !err.is_wait() {
        ctx.metrics.failed(K::KIND, err.reason());
    }
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

/// What the resync needs to know of a fleet: how many Kinde reads one period of drift
/// checks costs (about one per object the kinds read on resync).
pub trait Fleet {
    fn resync_reads(&self) -> usize;
}

/// The resync period in force: the configured one, stretched for the fleet so its drift
/// reads stay within their share of the Kinde rate ([`rules::resync_period`]).
pub fn resync_period<W: Fleet>(ctx: &Shared<W>, business: &Business) -> Duration {
    rules::resync_period(
        ctx.resync,
        ctx.world.resync_reads(),
        business.kinde.configured_rate(),
        ctx.resync_read_share,
    )
}

/// Requeue for the periodic resync at the object's own slot of the period, so a fleet's
/// drift reads spread evenly ([`rules::until_resync_slot`]).
pub fn resync<K: Managed>(ctx: &Context<K::World>, obj: &K) -> Action {
    let key = object_key::<K>(&obj.namespace().unwrap_or_default(), &obj.name_any());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let after = rules::until_resync_slot(&key, resync_period(ctx, &ctx.business), now);
    ctx.resyncs_due.schedule(&key, Instant::now() + after);
    Action::requeue(after)
}

/// Publishes an Event; failures are logged, never fatal (an Event is a courtesy).
pub async fn publish<W>(
    ctx: &Shared<W>,
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
    if let Err(e) = ctx.events.publish(&event, reference).await {
        tracing::warn!(error = %e, reason, "could not publish Event");
    }
}

/// Writes `status` with server-side apply, only when it differs from `current` (no status
/// counts as an empty one): a no-op reconcile makes no Kubernetes write.
pub async fn apply_status<K: Managed, S: Serialize + PartialEq + Default>(
    ctx: &Shared<K::World>,
    obj: &K,
    current: Option<&S>,
    status: &S,
) -> Result<()> {
    if current.map_or(*status == S::default(), |c| c == status) {
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

/// Ends an `apply`: sets conditions from the outcome, writes the status if it changed,
/// publishes a Warning when the object turns not-Ready for a new reason, and picks the
/// requeue. Returns whether the status changed, so callers can wake dependants.
pub async fn finish<K: Managed>(
    ctx: &Context<K::World>,
    obj: &K,
    mut status: K::Status,
    outcome: Result<Outcome>,
) -> Result<(Action, bool)> {
    let old = obj.current_status();
    let old_ready = old
        .and_then(|s| conditions::find_condition(s.conditions(), conditions::READY))
        .map(|c| (c.status.clone(), c.reason.clone()));
    record_outcome(&mut status, obj.meta().generation, K::KIND, &outcome);
    record_object_metrics(ctx, obj, &status);
    let changed = old.map_or(status != K::Status::default(), |o| *o != status);
    apply_status(ctx, obj, old, &status).await?;
    if let Some((reason, message, kind)) = outcome_event(old_ready.as_ref(), &outcome) {
        publish(
            ctx,
            &obj.object_ref(&()),
            kind,
            reason,
            message.to_owned(),
            "Reconcile",
        )
        .await;
    }
    let outcome = outcome?;
    let action = match requeue_after(&outcome, ctx.resync) {
        Some(after) => Action::requeue(after),
        None => resync(ctx, obj),
    };
    Ok((action, changed))
}

/// The labels of an object's per-object series.
pub fn object_labels(namespace: &str, name: &str, kind: &'static str) -> ObjectLabels {
    ObjectLabels::new(kind, namespace, name)
}

/// Per-object metrics from the status about to be written: readiness, and the kind's own.
fn record_object_metrics<K: Managed>(ctx: &Shared<K::World>, obj: &K, status: &K::Status) {
    let labels = object_labels(
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
        K::KIND,
    );
    ctx.metrics.object_ready(
        &labels,
        conditions::is_true(status.conditions(), conditions::READY),
    );
    obj.record_metrics(status, &ctx.metrics, &labels);
}

/// The current copy of a neighbour read from a store: the cached one unless it lags behind
/// a status this operator wrote (then read from the API server; see `bookkeeping`).
pub async fn current<K: Managed, W>(ctx: &Shared<W>, cached: Arc<K>) -> Result<Arc<K>> {
    let key = object_key::<K>(&cached.namespace().unwrap_or_default(), &cached.name_any());
    current_copy(&ctx.client, &ctx.written, cached, &key).await
}

/// Deletes a Kinde application; `false` when it was already gone (Kinde's not-found counts
/// as done).
pub async fn delete_kinde_application<W>(ctx: &Context<W>, id: &str) -> Result<bool> {
    let deleted = match ctx.business.kinde.delete_application(id).await {
        Ok(()) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(e.into()),
    };
    ctx.business.kinde_apps.gone(id);
    ctx.business.ownership.forget(id);
    Ok(deleted)
}

/// De-authorizes `client_id` for `api_id` (through the batcher; an application or API
/// already gone counts as done) and keeps the API snapshot cache in step.
pub async fn deauthorize<W>(ctx: &Context<W>, api_id: &str, client_id: &str) -> Result<()> {
    match ctx
        .business
        .authorizer
        .submit(api_id, client_id, Authorization::Deauthorize)
        .await
    {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    ctx.business
        .kinde_apis
        .note(api_id, client_id, Authorization::Deauthorize)
        .await;
    Ok(())
}

/// Publishes a Normal Event about a change made in Kinde.
pub async fn record_change<W>(
    ctx: &Shared<W>,
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
pub async fn adoption_admitted<W>(ctx: &Shared<W>, obj: &impl Resource) -> Step<()> {
    let ns = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let labels = if ctx.adoption.needs_labels(&ns) {
        namespace_labels(ctx, &ns).await?
    } else {
        Default::default()
    };
    ctx.adoption
        .check_namespace(&ns, &labels)
        .map_err(|refusal| Outcome::refused(refusal).into())
}

/// The labels of a namespace (empty when it is gone).
pub async fn namespace_labels<W>(
    ctx: &Shared<W>,
    ns: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.client.clone());
    Ok(namespaces
        .get_metadata_opt(ns)
        .await?
        .map(|n| n.labels().clone())
        .unwrap_or_default())
}

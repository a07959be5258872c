//! Reading, waiting on and changing the operator's objects on the cluster, typed: their
//! conditions, deletion, merge patches, annotations, and the Events about them.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kinde_m2m_operator::crd::{
    ApiGrant, ApiGrantStatus, ApiRegistration, ApiRegistrationStatus, ClusterKindeConnection,
    ConnectionStatus, KindeConnection, M2MApplication, M2MApplicationStatus,
};
use kube::Resource;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::object::HasStatus;
use serde_json::{Map, Value, json};

use super::wait_for;

/// How long the helpers here wait for the operator (a bound against hanging, never a
/// measurement: nothing asserts how long anything took).
pub const WAIT: Duration = Duration::from_secs(90);

/// An annotation no controller reads: changing it makes the operator reconcile the object
/// at once (it stands in for a resync, which most tests run at 10 minutes).
pub const POKE_ANNOTATION: &str = "e2e.kinde-operator.io/poke";

/// The operator's three kinds, for helpers that work on any of them.
pub trait Kind:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + HasStatus<Status: KindStatus>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The status, empty when the operator has written none yet.
    fn status_or_default(&self) -> Self::Status {
        self.status().cloned().unwrap_or_default()
    }

    /// Condition `type_` (`Ready`, `Synced`), if the operator has written it.
    fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status()?
            .conditions()
            .iter()
            .find(|c| c.type_ == type_)
    }

    /// The `Ready` condition's message (empty when there is none).
    fn ready_message(&self) -> String {
        self.condition("Ready")
            .map(|c| c.message.clone())
            .unwrap_or_default()
    }

    /// Fails unless the `Ready` message mentions `needle` (a name, a field, a flag: what
    /// the user needs to act on it).
    fn ensure_ready_mentions(&self, needle: &str) -> anyhow::Result<()> {
        let message = self.ready_message();
        anyhow::ensure!(
            message.contains(needle),
            "{} {}: the Ready message does not mention {needle:?}: {message:?}",
            Self::kind(&()),
            self.meta().name.as_deref().unwrap_or_default()
        );
        Ok(())
    }
}

/// What every kind's status has.
pub trait KindStatus: Clone + Default + std::fmt::Debug + Send + Sync {
    fn conditions(&self) -> &[Condition];
    fn observed_generation(&self) -> Option<i64>;

    /// Whether `Ready` is `True` (for whatever generation).
    fn is_ready(&self) -> bool {
        self.conditions()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    }
}

impl Kind for ApiRegistration {}
impl Kind for M2MApplication {}
impl Kind for ApiGrant {}
impl Kind for KindeConnection {}

macro_rules! kind_status {
    ($($status:ty),*) => {$(
        impl KindStatus for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn observed_generation(&self) -> Option<i64> {
                self.observed_generation
            }
        }
    )*};
}
kind_status!(
    ApiRegistrationStatus,
    M2MApplicationStatus,
    ApiGrantStatus,
    ConnectionStatus
);

/// The `Ready` condition of a ClusterKindeConnection (cluster-scoped, so not a [`Kind`]), if
/// the operator has written it.
pub async fn cluster_connection_ready(
    api: &Api<ClusterKindeConnection>,
    name: &str,
) -> anyhow::Result<Option<Condition>> {
    Ok(api
        .get(name)
        .await
        .with_context(|| format!("reading ClusterKindeConnection {name}"))?
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready"))
}

/// `(status, reason)` of a condition, for failure messages.
fn summary(c: Option<&Condition>) -> String {
    c.map_or_else(
        || "absent".to_owned(),
        |c| format!("{} {} ({:?})", c.status, c.reason, c.message),
    )
}

/// Waits until condition `type_` of `name` has `status` and, when given, `reason`; returns
/// the object.
pub async fn wait_condition<K: Kind>(
    api: &Api<K>,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> anyhow::Result<K> {
    let ns = api.namespace().unwrap_or_default();
    wait_for(
        &format!(
            "{} {ns}/{name} {type_}={status} reason {}",
            K::kind(&()),
            reason.unwrap_or("any")
        ),
        WAIT,
        || async {
            let obj = api.get(name).await?;
            match obj.condition(type_) {
                Some(c) if c.status == status && reason.is_none_or(|r| c.reason == r) => {
                    Ok(Some(obj))
                }
                other => Err(anyhow!("{type_}: {}", summary(other))),
            }
        },
    )
    .await
}

/// Waits until `name` has `Ready` with `reason`: `True` for `Reconciled` (and a
/// connection's `Connected`), `False` for any other reason. Returns the object.
pub async fn wait_reason<K: Kind>(api: &Api<K>, name: &str, reason: &str) -> anyhow::Result<K> {
    let status = if reason == "Reconciled" || reason == "Connected" {
        "True"
    } else {
        "False"
    };
    wait_condition(api, name, "Ready", status, Some(reason)).await
}

/// Waits until `name` is `Ready=True` for its current generation (not a Ready left over
/// from before a spec change); returns the object.
pub async fn wait_ready_current<K: Kind>(api: &Api<K>, name: &str) -> anyhow::Result<K> {
    wait_for(&format!("{} {name} Ready", K::kind(&())), WAIT, || async {
        let obj = api.get(name).await?;
        let observed = obj.status().and_then(KindStatus::observed_generation);
        match obj.condition("Ready") {
            Some(c) if c.status == "True" && observed == obj.meta().generation => Ok(Some(obj)),
            other => Err(anyhow!(
                "Ready: {}, observedGeneration {observed:?} of {:?}",
                summary(other),
                obj.meta().generation
            )),
        }
    })
    .await
}

/// `name` as the server returned it, every field included: for checks that something is
/// *not* there (a typed read drops the fields its type does not know).
pub async fn raw<K: Kind>(api: &Api<K>, name: &str) -> anyhow::Result<Value> {
    let client: kube::Client = api.clone().into();
    let resource = ApiResource::erase::<K>(&());
    let dynamic: Api<DynamicObject> = match api.namespace() {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    Ok(serde_json::to_value(dynamic.get(name).await?)?)
}

/// Deletes `name` (the operator's finalizer may keep it a while: see [`wait_gone`]).
pub async fn delete<K: Kind>(api: &Api<K>, name: &str) -> anyhow::Result<()> {
    api.delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting {} {name}", K::kind(&())))?;
    Ok(())
}

/// Waits until `name` is gone (its finalizer removed).
pub async fn wait_gone<K: Kind>(api: &Api<K>, name: &str) -> anyhow::Result<()> {
    let ns = api.namespace().unwrap_or_default();
    wait_for(
        &format!("{} {ns}/{name} to be gone", K::kind(&())),
        WAIT,
        || async {
            match api.get_opt(name).await? {
                None => Ok(Some(())),
                Some(o) => Err(anyhow!("still there; status: {:?}", o.status())),
            }
        },
    )
    .await
}

/// Deletes every one of `names` (all the requests first, as one `kubectl delete` of them
/// would), then waits until they are all gone.
pub async fn delete_all<K: Kind>(api: &Api<K>, names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        delete(api, name).await?;
    }
    for name in names {
        wait_gone(api, name).await?;
    }
    Ok(())
}

/// A JSON merge patch of `name` (any namespaced resource: also Secrets).
pub async fn merge_patch<K>(api: &Api<K>, name: &str, patch: Value) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching {} {name}", K::kind(&())))?;
    Ok(())
}

/// Sets (`Some`) or removes (`None`) annotations of `name`, in one merge patch.
pub async fn annotate<K: Kind>(
    api: &Api<K>,
    name: &str,
    annotations: &[(&str, Option<&str>)],
) -> anyhow::Result<()> {
    let annotations: Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.map_or(Value::Null, Value::from)))
        .collect();
    merge_patch(api, name, json!({"metadata": {"annotations": annotations}})).await
}

/// Changes [`POKE_ANNOTATION`] to a fresh value: the operator reconciles `name` at once.
pub async fn poke<K: Kind>(api: &Api<K>, name: &str) -> anyhow::Result<()> {
    let value = fastrand::u64(..).to_string();
    annotate(api, name, &[(POKE_ANNOTATION, Some(&value))]).await
}

/// The Events (`events.k8s.io`) in `ns` about the `K` named `name`.
pub async fn events_about<K: Kind>(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<Vec<Event>> {
    let kind = K::kind(&());
    Ok(Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.name.as_deref() == Some(name) && r.kind.as_deref() == Some(kind.as_ref())
            })
        })
        .collect())
}

/// The reasons of the Events about the `K` named `name`.
pub async fn event_reasons<K: Kind>(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<Vec<String>> {
    Ok(events_about::<K>(client, ns, name)
        .await?
        .into_iter()
        .filter_map(|e| e.reason)
        .collect())
}

/// Waits until there are Events with every one of `reasons` about the `K` named `name`.
pub async fn wait_events<K: Kind>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    reasons: &[&str],
) -> anyhow::Result<()> {
    wait_for(
        &format!("Events {reasons:?} about {} {ns}/{name}", K::kind(&())),
        WAIT,
        || async {
            let seen = event_reasons::<K>(client, ns, name).await?;
            if reasons.iter().all(|r| seen.iter().any(|s| s == r)) {
                Ok(Some(()))
            } else {
                Err(anyhow!("Events seen: {seen:?}"))
            }
        },
    )
    .await
}

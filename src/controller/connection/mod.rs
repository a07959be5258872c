//! The controller of `KindeConnection` and `ClusterKindeConnection`: reads the
//! connection's credentials Secret (only the Secrets connections name, by name), keeps one
//! [`Business`] per connection in the registry the other kinds resolve from, checks that
//! a management token is obtained with every needed scope, and refuses a deletion while
//! objects still use the connection. Decisions are in [`decide`].

pub mod decide;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::kernel::business::{Connection, Sighting};
use super::kernel::rules::set_conditions;
use super::kernel::{
    Bound, Business, ConnectionKey, Error, FIELD_MANAGER, Managed, Result, Shared, SlotLimits,
    publish,
};
use super::world::{World, concerning, concerns_connection};
use crate::conditions::{self, reasons};
use crate::crd::{
    BusinessSpec, ClusterKindeConnection, ConnectionKind, ConnectionRef, ConnectionStatus, GROUP,
    KindeConnection,
};
use crate::kinde::{KindeClient, KindeConfig, KindeMetrics, Operation};

/// How often a connection re-reads its Secret (a rotated management secret is picked up
/// within this long) and re-checks its token (from the cache: no Kinde call until it
/// expires).
pub const RECHECK: Duration = Duration::from_secs(30);

/// What every connection's client starts from: the operator's flags.
pub struct ClientDefaults {
    /// The flags' client settings (its domain and credentials are not used).
    pub template: KindeConfig,
    /// Shared by every business (calls by operation and status, all businesses together).
    pub metrics: KindeMetrics,
    pub installation: String,
    /// The domains a KindeConnection may name (`--kinde-connection-domain`).
    pub allowed_domains: Vec<String>,
    /// How long a read of an API's applications serves the grants.
    pub api_snapshot_ttl: Duration,
    /// Each business's reconcile slots, the same for every one.
    pub slots: SlotLimits,
}

/// What the connection controllers run with.
pub struct ConnectionContext {
    pub shared: Arc<Shared<World>>,
    pub defaults: ClientDefaults,
}

/// What the controller needs of either connection kind.
pub trait ConnectionObject:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static
{
    const KIND: ConnectionKind;
    fn business(&self) -> &BusinessSpec;
    fn selector(&self) -> Option<LabelSelector>;
    fn connection_status(&self) -> Option<&ConnectionStatus>;
    /// Where its Secret is.
    fn secret_namespace(&self) -> Option<String>;
    /// The API to patch it through.
    fn api(client: &kube::Client, obj: &Self) -> Api<Self>;

    fn key(&self) -> ConnectionKey {
        ConnectionKey {
            kind: Self::KIND,
            namespace: self.namespace(),
            name: self.name_any(),
        }
    }

    fn reference(&self) -> ConnectionRef {
        ConnectionRef {
            kind: Self::KIND,
            name: self.name_any(),
        }
    }

    /// What the operator's registry keeps of the object as its watch sees it.
    fn sighting(&self, installation: &str) -> Sighting {
        Sighting {
            selector: self.selector(),
            held: self.finalizers().contains(&finalizer_name(installation)),
            deleting: self.meta().deletion_timestamp.is_some(),
        }
    }
}

impl ConnectionObject for KindeConnection {
    const KIND: ConnectionKind = ConnectionKind::KindeConnection;
    fn business(&self) -> &BusinessSpec {
        &self.spec.business
    }
    fn selector(&self) -> Option<LabelSelector> {
        None
    }
    fn connection_status(&self) -> Option<&ConnectionStatus> {
        self.status.as_ref()
    }
    fn secret_namespace(&self) -> Option<String> {
        // Its own namespace, whatever the spec says (CEL refuses a namespace there; a
        // server without CEL must not let a tenant read another namespace's Secret).
        self.namespace()
    }
    fn api(client: &kube::Client, obj: &Self) -> Api<Self> {
        Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default())
    }
}

impl ConnectionObject for ClusterKindeConnection {
    const KIND: ConnectionKind = ConnectionKind::ClusterKindeConnection;
    fn business(&self) -> &BusinessSpec {
        &self.spec.business
    }
    fn selector(&self) -> Option<LabelSelector> {
        Some(self.spec.namespace_selector.clone())
    }
    fn connection_status(&self) -> Option<&ConnectionStatus> {
        self.status.as_ref()
    }
    fn secret_namespace(&self) -> Option<String> {
        self.spec.business.credentials.namespace.clone()
    }
    fn api(client: &kube::Client, _obj: &Self) -> Api<Self> {
        Api::all(client.clone())
    }
}

/// How often a connection whose deletion waits on objects made through it looks whether
/// they are gone (each look reads only the operator's stores).
const IN_USE_RECHECK: Duration = Duration::from_secs(5);

/// Reconciles one connection: this installation's finalizer ([`decide::hold`]), then
/// [`apply`], or while it is being deleted, the report of who still uses it.
pub async fn reconcile<C: ConnectionObject>(
    obj: Arc<C>,
    ctx: Arc<ConnectionContext>,
) -> Result<Action> {
    let span = tracing::info_span!("reconcile", kind = %C::KIND, namespace = ?obj.namespace(), name = %obj.name_any());
    async move {
        let world = &ctx.shared.world;
        let finalizer = finalizer_name(&ctx.defaults.installation);
        let ours = obj.finalizers().contains(&finalizer);
        let deleting = obj.meta().deletion_timestamp.is_some();
        // Who uses it is read from the stores, which at start may not have listed yet.
        let users_known = world.apps.is_ready() && world.apis.is_ready();
        let (made_through, wanted) = users(obj.as_ref(), world);
        let in_use = !made_through.is_empty();
        match decide::hold(ours, deleting, wanted, in_use, users_known) {
            decide::Hold::Add => set_finalizer(&ctx, obj.as_ref(), &finalizer, true).await?,
            decide::Hold::Release => set_finalizer(&ctx, obj.as_ref(), &finalizer, false).await?,
            decide::Hold::Keep => {}
        }
        let held_by_any = obj
            .finalizers()
            .iter()
            .any(|f| f.starts_with(&finalizer_name("")));
        match (deleting, ours, in_use, users_known) {
            (false, ..) => apply(obj, &ctx, decide::reports(ours, held_by_any)).await,
            (true, true, true, _) => report_in_use(obj, &ctx, &made_through).await,
            (true, true, false, false) => Ok(Action::requeue(IN_USE_RECHECK)),
            (true, ..) => Ok(Action::await_change()),
        }
    }
    .instrument(span)
    .await
}

/// The finalizer of one installation on a connection, `m2m.kinde-operator.io/<installation>`:
/// several installations in one cluster all see every ClusterKindeConnection, and each
/// holds it only while objects of its own use it (one installation's deletion check must
/// not release a connection another one's objects still use).
pub fn finalizer_name(installation: &str) -> String {
    format!("{GROUP}/{installation}")
}

/// Adds or removes this installation's finalizer, on the version of the object the
/// decision saw (a conflict means it changed: its watch event reconciles it again).
async fn set_finalizer<C: ConnectionObject>(
    ctx: &ConnectionContext,
    obj: &C,
    finalizer: &str,
    held: bool,
) -> Result<()> {
    let mut finalizers: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    if held {
        finalizers.push(finalizer.to_owned());
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": obj.resource_version(), "finalizers": finalizers},
    });
    C::api(&ctx.shared.client, obj)
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// After a failure: try again a little later (soon while a deletion waits on its users).
pub fn error_policy<C: ConnectionObject>(
    obj: Arc<C>,
    err: &Error,
    _ctx: Arc<ConnectionContext>,
) -> Action {
    tracing::warn!(kind = %C::KIND, name = %obj.name_any(), reason = err.reason(), error = %super::kernel::error_note(err), "connection reconcile failed");
    if err.reason() == reasons::IN_USE {
        Action::requeue(IN_USE_RECHECK)
    } else {
        Action::requeue(RECHECK)
    }
}

/// Reads the credentials, builds or updates the connection's business, checks its token and
/// records what was found in the registry, and when this installation `reports` it
/// ([`decide::reports`]), in the status and an Event.
async fn apply<C: ConnectionObject>(
    obj: Arc<C>,
    ctx: &ConnectionContext,
    reports: bool,
) -> Result<Action> {
    let key = obj.key();
    let businesses = &ctx.shared.businesses;
    let known = businesses.get(&key);
    let known_reason = known.as_ref().map(|c| match &c.ready {
        Ok(()) => reasons::CONNECTED.to_owned(),
        Err((reason, _)) => reason.clone(),
    });
    let old = obj.connection_status().cloned().unwrap_or_default();
    let mut status = old.clone();
    let (business, ready) = connect(obj.as_ref(), ctx, known.as_ref(), &mut status).await?;
    businesses.checked(
        key.clone(),
        business.clone(),
        ready
            .clone()
            .map_err(|(reason, message)| (reason.to_owned(), message)),
    );
    if let Some(b) = &business {
        status.rate = Some(decide::rate_status(
            b.kinde.configured_rate(),
            b.kinde.current_pace(),
        ));
    }
    let generation = obj.meta().generation;
    let (ok, reason, message) = match &ready {
        Ok(()) => (
            true,
            reasons::CONNECTED,
            format!("management token obtained from {}", obj.business().domain),
        ),
        Err((reason, message)) => (false, *reason, message.clone()),
    };
    set_conditions(
        &mut status.conditions,
        generation,
        (ok, reason, message.clone()),
        (ok, reason, message.clone()),
    );
    status.observed_generation = generation;
    if known_reason.as_deref() != Some(reason) {
        // This installation's objects waiting for it, or refused by it, learn at once.
        super::world::wake_users_of_connection(&ctx.shared.world, &key);
    }
    if !reports {
        return Ok(Action::requeue(RECHECK));
    }
    write_status(ctx, obj.as_ref(), &old, &status).await?;
    let was = conditions::find_condition(&old.conditions, conditions::READY)
        .map(|c| (c.status.clone(), c.reason.clone()));
    let now = conditions::find_condition(&status.conditions, conditions::READY)
        .map(|c| (c.status.clone(), c.reason.clone()));
    if was != now {
        let kind = if ok {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(
            &ctx.shared,
            &obj.object_ref(&()),
            kind,
            reason,
            message,
            "Connect",
        )
        .await;
    }
    Ok(Action::requeue(RECHECK))
}

/// The connection's business (built once, credentials replaced when the Secret changed)
/// and whether it is Ready; fills `status` with what was found.
async fn connect<C: ConnectionObject>(
    obj: &C,
    ctx: &ConnectionContext,
    known: Option<&Connection>,
    status: &mut ConnectionStatus,
) -> Result<(Option<Arc<Business>>, Result<(), decide::NotReady>)> {
    let kept = known.and_then(|c| c.business.clone());
    let spec = obj.business();
    let domain = spec.domain.trim_end_matches('/');
    if C::KIND == ConnectionKind::KindeConnection
        && !decide::domain_allowed(domain, &ctx.defaults.allowed_domains)
    {
        let message = format!(
            "spec.domain {domain} matches none of the operator's --kinde-connection-domain patterns ({}): ask the platform team to allow it",
            ctx.defaults.allowed_domains.join(", ")
        );
        return Ok((None, Err((reasons::DOMAIN_NOT_ALLOWED, message))));
    }
    if let Some(b) = &kept
        && b.kinde.domain() != domain
    {
        // CEL keeps the domain; without it, the objects made through this connection are
        // in the old business, so the connection keeps serving that one.
        return Ok((
            kept.clone(),
            Err((
                reasons::INVALID_SPEC,
                format!(
                    "spec.domain changed from {} to {domain}: the Kinde objects made through this connection live in the first; restore it, or create another connection",
                    b.kinde.domain()
                ),
            )),
        ));
    }
    let Some(secret_ns) = obj.secret_namespace() else {
        return Ok((
            kept,
            Err((
                reasons::INVALID_SPEC,
                "spec.credentials.namespace is required on a ClusterKindeConnection".into(),
            )),
        ));
    };
    let secret_name = &spec.credentials.name;
    let secrets: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &secret_ns);
    let Some(secret) = secrets.get_opt(secret_name).await? else {
        return Ok((
            kept,
            Err((
                reasons::SECRET_NOT_FOUND,
                format!("Secret {secret_ns}/{secret_name} does not exist"),
            )),
        ));
    };
    let data = secret.data.clone().unwrap_or_default();
    let (client_id, client_secret) =
        match decide::credentials(secret_name, &data, &spec.credentials) {
            Ok(c) => c,
            Err(not_ready) => return Ok((kept, Err(not_ready))),
        };
    let version = secret.resource_version();
    let business = match kept {
        Some(b) => {
            b.kinde
                .replace_credentials(client_id, client_secret)
                .await
                .map_err(Error::from)?;
            b
        }
        None => match new_business(obj, ctx, client_id, client_secret) {
            Ok(b) => b,
            Err(message) => return Ok((None, Err((reasons::INVALID_SPEC, message)))),
        },
    };
    let credentials_changed = status.credentials_version != version;
    status.credentials_version = version;
    let token = business.kinde.management_token_scopes().await;
    let missing = match decide::readiness(&token, &Operation::needed_scopes()) {
        Ok(missing) => missing,
        Err(not_ready) => return Ok((Some(business), Err(not_ready))),
    };
    status.missing_scopes = missing.clone();
    if !missing.is_empty() {
        business.kinde.expire_token().await;
        let message = decide::missing_scopes_message(&missing);
        return Ok((Some(business), Err((reasons::MISSING_SCOPES, message))));
    }
    if status.management_api_id.is_none() || credentials_changed {
        match business.kinde.list_apis(false).await {
            Ok(apis) => {
                status.management_api_id =
                    apis.into_iter().find(|a| a.is_management_api).map(|a| a.id);
            }
            Err(e) => {
                let not_ready = (
                    reasons::BUSINESS_UNREACHABLE,
                    format!("listing the business's APIs: {e}"),
                );
                return Ok((Some(business), Err(not_ready)));
            }
        }
    }
    Ok((Some(business), Ok(())))
}

/// A business for the connection: the flags' client settings, the spec's where it sets
/// them. `Err` names what is wrong with the spec.
fn new_business<C: ConnectionObject>(
    obj: &C,
    ctx: &ConnectionContext,
    client_id: String,
    client_secret: secrecy::SecretString,
) -> std::result::Result<Arc<Business>, String> {
    let spec = obj.business();
    let domain = spec
        .domain
        .parse()
        .map_err(|e| format!("spec.domain {:?} is not a URL: {e}", spec.domain))?;
    // Every setting of the flags' client (write fence included), this business's address
    // and credentials.
    let mut config = ctx.defaults.template.clone();
    config.domain = domain;
    config.client_id = client_id;
    config.client_secret = client_secret;
    if let Some(client) = &spec.client {
        if let Some(rate) = client.requests_per_second {
            config.requests_per_second = rate;
        }
        if let Some(n) = client.max_in_flight {
            config.max_in_flight = n as usize;
        }
    }
    let metrics = ctx
        .defaults
        .metrics
        .for_connection(&obj.key().metric_label());
    let kinde = KindeClient::new(config, metrics).map_err(|e| format!("spec: {e}"))?;
    let reference = obj.reference();
    Ok(Arc::new(Business::new(
        kinde,
        &ctx.defaults.installation,
        ctx.defaults.api_snapshot_ttl,
        Some(&reference),
        &ctx.defaults.slots,
    )))
}

/// This installation's users of the connection: the objects whose Kinde object was made
/// through it (`Kind namespace/name`: their status records it), and whether any object
/// names it or was made through it. An object that only names it holds nothing in its
/// business and does not keep a deletion waiting (it reports `ConnectionNotFound` once the
/// connection is gone), but it does make this installation hold the connection.
fn users<C: ConnectionObject>(obj: &C, world: &World) -> (Vec<String>, bool) {
    let key = obj.key();
    let apps = concerning(&world.apps, world, &key);
    let apis = concerning(&world.apis, world, &key);
    let wanted = !apps.is_empty() || !apis.is_empty();
    let mut made_through = made_through_of(&apps, &key);
    made_through.extend(made_through_of(&apis, &key));
    made_through.sort();
    (made_through, wanted)
}

/// Of the objects that concern the connection, those made through it (`Kind ns/name`).
fn made_through_of<K: Managed>(objects: &[Arc<K>], key: &ConnectionKey) -> Vec<String> {
    objects
        .iter()
        .filter(|o| {
            let recorded = o.current_status().and_then(|s| s.connection());
            concerns_connection(key, o.namespace().as_deref(), None, recorded)
        })
        .map(|o| {
            format!(
                "{} {}/{}",
                K::KIND,
                o.namespace().unwrap_or_default(),
                o.name_any()
            )
        })
        .collect()
}

/// While objects made through the connection remain, its deletion waits: `Ready=False`
/// with reason `InUse` names them.
async fn report_in_use<C: ConnectionObject>(
    obj: Arc<C>,
    ctx: &ConnectionContext,
    users: &[String],
) -> Result<Action> {
    let message = decide::in_use_message(users);
    let old = obj.connection_status().cloned().unwrap_or_default();
    let mut status = old.clone();
    let generation = obj.meta().generation;
    set_conditions(
        &mut status.conditions,
        generation,
        (false, reasons::IN_USE, message.clone()),
        (false, reasons::IN_USE, message.clone()),
    );
    write_status(ctx, obj.as_ref(), &old, &status).await?;
    if old != status {
        publish(
            &ctx.shared,
            &obj.object_ref(&()),
            EventType::Normal,
            reasons::IN_USE,
            message.clone(),
            "Delete",
        )
        .await;
    }
    Err(Error::Blocked {
        reason: reasons::IN_USE,
        message,
    })
}

async fn write_status<C: ConnectionObject>(
    ctx: &ConnectionContext,
    obj: &C,
    old: &ConnectionStatus,
    status: &ConnectionStatus,
) -> Result<()> {
    if old == status {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": C::api_version(&()),
        "kind": C::kind(&()),
        "status": status,
    });
    C::api(&ctx.shared.client, obj)
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

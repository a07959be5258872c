//! M2MApplication: one Kinde M2M application and its credentials Secret.
//!
//! Crash safety: Kinde application names are not unique and a create is not idempotent, so
//! the application is created under a name carrying a marker derived from the object's
//! UID (`<displayName> [kmo:<uid>]`). Before any create the operator lists applications
//! and adopts one carrying the marker (its own, from before a crash or a lost response).
//! Only once the id is in the status is the application renamed to its display name.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use super::rotation;
use super::{
    Context, Error, FIELD_MANAGER, Managed, Outcome, Result, Scope, adoption_admitted, api_for,
    apply_status, delete_kinde_application, effective_deletion_policy, is_older, record_change,
    wait_if_paused,
};
use crate::adoption;
use crate::conditions::{self, reasons};
use crate::crd::{
    ApiGrant, DeletionPolicy, KindeAnnotations, M2MApplication, M2MApplicationStatus,
    MANAGED_BY_LABEL, MANAGED_BY_VALUE,
};
use crate::kinde::KindeError;
use crate::metrics::AppLabels;
use crate::secret;
use crate::validation;

impl Managed for M2MApplication {
    const KIND: &'static str = "M2MApplication";

    type Status = M2MApplicationStatus;

    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn converge(&self, ctx: &Context, status: &mut Self::Status) -> Result<Outcome> {
        converge(self, ctx, status).await
    }

    fn status_changed(&self, ctx: &Context) {
        ctx.wake_grants.wake_all(&grants_of(ctx, self));
    }

    async fn cleanup(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        wait_if_paused(obj.as_ref())?;
        let status = obj.status.clone().unwrap_or_default();
        let adopted = obj.external_id().is_some() || status.adopted_id.is_some();
        let policy = effective_deletion_policy(obj.spec.deletion_policy, adopted);
        if policy == DeletionPolicy::Delete {
            let mut ids = used_application_ids(&status);
            if status.application_id.is_none() || status.unconfirmed_create_since.is_some() {
                // Created but not recorded (crash or lost response), or copies of a create
                // whose outcome was unknown: find them by this object's markers.
                ids.extend(find_all_marked(&ctx, &uid_marker_body(obj.as_ref())?).await?);
            }
            // The adoption policy may keep adopted applications out of reach.
            if let Some(kept) = status
                .adopted_id
                .as_ref()
                .filter(|_| !ctx.adoption.allow_delete)
                && ids.remove(kept)
            {
                record_change(
                    &ctx,
                    obj.as_ref(),
                    "Orphaned",
                    format!(
                        "left adopted Kinde application {kept} in Kinde: the adoption policy does not allow deleting adopted objects"
                    ),
                )
                .await;
            }
            for id in ids {
                if delete_kinde_application(&ctx, &id).await? {
                    record_change(
                        &ctx,
                        obj.as_ref(),
                        "Deleted",
                        format!("deleted Kinde application {id}"),
                    )
                    .await;
                }
            }
        }
        ctx.wake_grants.wake_all(&grants_of(&ctx, &obj));
        Ok(Action::await_change())
    }
}

/// The grants in the application's namespace that name it.
pub(crate) fn grants_of(ctx: &Context, app: &M2MApplication) -> Vec<Arc<ApiGrant>> {
    let (ns, name) = (app.namespace(), app.name_any());
    ctx.grants
        .find(|g| g.namespace() == ns && g.spec.application_ref.name == name)
}

/// Watches of the operator's Secrets, metadata only (their data never sits in memory),
/// one per namespace slot: a deleted or edited Secret wakes its M2MApplication.
pub(super) fn secret_triggers(
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

/// The object's UID, compacted: the stable part of every marker.
fn uid_marker_body(obj: &M2MApplication) -> Result<String> {
    let uid = obj.uid().ok_or(Error::MissingMetadata("uid"))?;
    Ok(uid.chars().filter(|c| *c != '-').take(16).collect())
}

/// The name suffix that identifies the application first created for this object.
fn creation_marker(obj: &M2MApplication) -> Result<String> {
    Ok(format!("[kmo:{}]", uid_marker_body(obj)?))
}

/// Whether a name still carries an operator marker (creation or rotation).
fn is_marked(name: &str) -> bool {
    name.trim_end().ends_with(']') && name.contains(" [kmo:")
}

/// The ids of every application carrying one of this object's markers (creation or
/// rotation: `[kmo:<uid body>...]`).
async fn find_all_marked(ctx: &Context, uid_body: &str) -> Result<Vec<String>> {
    let apps = ctx.kinde.list_applications().await?;
    Ok(apps
        .into_iter()
        .filter(|a| adoption::carries_marker_of(&a.name, uid_body))
        .map(|a| a.id)
        .collect())
}

/// The id of the application whose name carries `marker`, if any.
async fn find_marked(ctx: &Context, marker: &str) -> Result<Option<String>> {
    let apps = ctx.kinde.list_applications().await?;
    Ok(apps
        .into_iter()
        .find(|a| a.name.ends_with(marker))
        .map(|a| a.id))
}

/// What the operator knows of its Kinde application after finding or creating it.
pub(super) struct KindeApp {
    pub id: String,
    pub client_id: String,
    pub name: String,
    pub secret: SecretString,
    /// Kinde's type (`m2m`, `reg`, ...) when known; adoption refuses anything but `m2m`.
    pub app_type: Option<String>,
}

/// Most predecessors retiring at once; a rotation requested beyond that waits for the
/// oldest to retire (`status.retiring` must stay small, and every entry is a live app).
pub(super) const MAX_RETIRING: usize = 5;

/// Checks everything about the spec that can be checked before the first Kinde write (what
/// the schema says, for servers without CEL, and what only the API server would refuse
/// later: the Secret's name, labels and annotations, the object name's length for Events).
///
/// A schedule mints a new authorized Kinde application each time, so `spec.rotation.every`
/// must be at least `min_every` (`--min-rotation-interval`, default 1h) and at least twice
/// the overlap: a tiny interval would fill Kinde (and `status.retiring`) within minutes.
fn validate(
    obj: &M2MApplication,
    status: &M2MApplicationStatus,
    min_every: Duration,
) -> Option<String> {
    let display = obj.display_name();
    if display.trim().is_empty() || display.chars().count() > 64 {
        return Some(format!(
            "the display name {display:?} must be 1-64 characters (spec.displayName, or <namespace>/<name> by default)"
        ));
    }
    let name = obj.name_any();
    if name.len() > validation::MAX_NAME_FOR_EVENTS {
        return Some(format!(
            "metadata.name is {} characters; at most {} are supported (its Events are named <name>.<timestamp>)",
            name.len(),
            validation::MAX_NAME_FOR_EVENTS
        ));
    }
    let overlap = match obj.spec.rotation.overlap() {
        Ok(d) => d,
        Err(e) => return Some(format!("{e:#}")),
    };
    match obj.spec.rotation.every() {
        Err(e) => return Some(format!("{e:#}")),
        Ok(Some(every)) if every < min_every || every < overlap.saturating_mul(2) => {
            return Some(format!(
                "spec.rotation.every must be at least {} and at least twice spec.rotation.overlap ({}), got {}",
                humantime::format_duration(min_every),
                humantime::format_duration(overlap),
                humantime::format_duration(every)
            ));
        }
        Ok(_) => {}
    }
    let secret = obj.secret_name();
    if !validation::is_dns1123_subdomain(&secret) {
        return Some(format!(
            "the Secret name {secret:?} (spec.secret.name, or <name>-credentials by default) is not a valid Kubernetes name (DNS-1123 subdomain, at most 253 characters)"
        ));
    }
    for (field, map) in [
        ("spec.secret.labels", &obj.spec.secret.labels),
        ("spec.secret.annotations", &obj.spec.secret.annotations),
    ] {
        for (k, v) in map.iter().flatten() {
            if !validation::is_qualified_name(k) {
                return Some(format!("{field}: {k:?} is not a valid key"));
            }
            if field == "spec.secret.labels" && !validation::is_label_value(v) {
                return Some(format!(
                    "{field}: the value of {k:?} is not a valid label value"
                ));
            }
        }
    }
    if status.application_id.is_some()
        && let Some(was) = &status.organization_code
        && obj.spec.organization_code.as_ref() != Some(was)
    {
        return Some(format!(
            "spec.organizationCode is immutable: the Kinde application was created in organization {was:?}; re-create the M2MApplication to change it"
        ));
    }
    None
}

async fn converge(
    obj: &M2MApplication,
    ctx: &Context,
    status: &mut M2MApplicationStatus,
) -> Result<Outcome> {
    if let Some(problem) = validate(obj, status, ctx.min_rotation_every) {
        return Ok(Outcome::not_ready(reasons::INVALID_SPEC, problem));
    }
    let paused = obj.is_paused();
    let mut app = match ensure_app(obj, ctx, status, paused).await? {
        Ok(app) => app,
        Err(outcome) => return Ok(outcome),
    };
    if status.organization_code.is_none() && current_adopted(status).is_none() {
        // Recorded from the first reconcile that knows the field: what the app was made with.
        status.organization_code = obj.spec.organization_code.clone();
    }

    // Rotation: a new rotate-requested-at value, or the schedule.
    let now = Timestamp::now();
    let every = obj.spec.rotation.every().ok().flatten();
    let base = status
        .last_rotation_time
        .clone()
        .or_else(|| obj.meta().creation_timestamp.clone());
    status.next_rotation_time = rotation::next_scheduled(every, base.as_ref(), now);
    let due = rotation::due(obj, status, now);
    if !paused {
        // A successor left by a rotation that is no longer wanted (a newer request
        // superseded it) is disconnected and deleted before anything else.
        rotation::discard_stale_successor(obj, ctx, status, due.as_ref()).await?;
    }
    if let Some(due) = due
        && !paused
    {
        if current_adopted(status).is_some()
            && let Err(refusal) = adoption::check_destructive(
                &ctx.adoption,
                "rotating an adopted application (its predecessor is deleted after the overlap)",
            )
        {
            return Ok(Outcome::refused(refusal));
        }
        if let Some(wait) = rotation::deferred(status, now) {
            return Ok(wait);
        }
        let overlap = obj.spec.rotation.overlap().unwrap_or_default();
        app = rotation::rotate(
            obj,
            ctx,
            status,
            &app,
            &due,
            &uid_marker_body(obj)?,
            overlap,
        )
        .await?;
    }
    status.application_id = Some(app.id.clone());
    status.client_id = Some(app.client_id.clone());
    record_credential_issue(ctx, obj, status);

    let secret_name = obj.secret_name();
    if let Err(outcome) = ensure_secret(obj, ctx, &app, &secret_name).await? {
        return Ok(outcome);
    }
    status.secret_name = Some(secret_name);
    // The id must be recorded before the marker leaves the name.
    apply_status(ctx, obj, obj.status.as_ref(), status).await?;

    let display = obj.display_name();
    if app.name != display {
        if paused {
            return Ok(Outcome::Paused { ready: true });
        }
        ctx.kinde.rename_application(&app.id, &display).await?;
        if is_marked(&app.name) {
            tracing::debug!(application = %app.id, "removed the creation marker from the name");
        } else {
            record_change(
                ctx,
                obj,
                "Renamed",
                format!("renamed Kinde application {} to {display:?}", app.id),
            )
            .await;
        }
    }
    if paused {
        return Ok(Outcome::Paused { ready: true });
    }
    let next_sweep = sweep_unconfirmed(obj, ctx, status).await?;
    let next_retire = rotation::retire_due(obj, ctx, status).await?;
    let next_rotation = rotation::until_next(status, Timestamp::now());
    Ok(
        match next_retire
            .into_iter()
            .chain(next_rotation)
            .chain(next_sweep)
            .min()
        {
            Some(d) => Outcome::ReadyFor(d),
            None => Outcome::Ready,
        },
    )
}

/// Credential age for the metric: issued at the last rotation, else at creation.
fn record_credential_issue(ctx: &Context, obj: &M2MApplication, status: &M2MApplicationStatus) {
    let issued = status
        .last_rotation_time
        .as_ref()
        .or(obj.meta().creation_timestamp.as_ref())
        .map(|t| t.0.as_second());
    if let Some(issued) = issued {
        ctx.metrics
            .credential_issued
            .get_or_create(&AppLabels {
                namespace: obj.namespace().unwrap_or_default(),
                name: obj.name_any(),
            })
            .set(issued);
    }
}

/// The Kinde application, read, adopted, found by marker or created; or why there is none.
async fn ensure_app(
    obj: &M2MApplication,
    ctx: &Context,
    status: &mut M2MApplicationStatus,
    paused: bool,
) -> Result<std::result::Result<KindeApp, Outcome>> {
    let external = obj.external_id();
    let adopted = current_adopted(status);
    // Adoption is the platform's to grant: checked before any Kinde call, and again on
    // every reconcile of an adopted application (the policy may have been withdrawn).
    if let Some(id) = external.or(adopted.as_deref()) {
        if let Err(outcome) = adoption_admitted(ctx, obj).await? {
            return Ok(Err(outcome));
        }
        let claims = claims_on(ctx, obj, status, id);
        if let Err(refusal) = adoption::check_app_id(id, ctx.kinde.management_client_id(), &claims)
        {
            return Ok(Err(Outcome::refused(refusal)));
        }
        if obj.spec.deletion_policy == Some(DeletionPolicy::Delete)
            && let Err(refusal) =
                adoption::check_destructive(&ctx.adoption, "spec.deletionPolicy: Delete")
        {
            return Ok(Err(Outcome::refused(refusal)));
        }
    }
    // The recorded application stands unless the annotation names another one (the
    // annotation keeps naming the adopted application after a rotation replaced it).
    let recorded_stands = external.is_none_or(|e| {
        status.application_id.as_deref() == Some(e) || status.adopted_id.as_deref() == Some(e)
    });
    if let Some(id) = status.application_id.clone()
        && recorded_stands
    {
        match read_app(ctx, &id).await {
            Ok(app) => return Ok(Ok(app)),
            Err(e) if e.is_not_found() => {
                if external.is_some() || adopted.is_some() {
                    return Ok(Err(external_gone(&id)));
                }
                record_change(
                    ctx,
                    obj,
                    "Recreating",
                    format!("Kinde application {id} was deleted in Kinde; creating it again"),
                )
                .await;
                status.application_id = None;
                status.client_id = None;
            }
            Err(e) => return Err(e.into()),
        }
    } else if let Some(ext) = external {
        let app = match read_app(ctx, ext).await {
            Ok(app) => app,
            Err(e) if e.is_not_found() || matches!(e, KindeError::InvalidId { .. }) => {
                return Ok(Err(external_gone(ext)));
            }
            Err(e) => return Err(e.into()),
        };
        let facts = adoption::AppFacts {
            id: &app.id,
            client_id: &app.client_id,
            name: &app.name,
            app_type: app.app_type.as_deref(),
        };
        if let Err(refusal) = adoption::check_app(
            &facts,
            ctx.kinde.management_client_id(),
            &uid_marker_body(obj)?,
        ) {
            return Ok(Err(Outcome::refused(refusal)));
        }
        status.adopted_id = Some(app.id.clone());
        record_change(
            ctx,
            obj,
            "Adopted",
            format!("adopted Kinde application {ext}"),
        )
        .await;
        return Ok(Ok(app));
    }

    if paused {
        // Even a marked app left by a crash is only picked up once writes are allowed.
        return Ok(Err(Outcome::Paused { ready: false }));
    }
    Ok(Ok(
        create_marked(obj, ctx, status, &creation_marker(obj)?).await?
    ))
}

/// The adopted application, while it is still the current one (a rotation replaces it
/// with an application of the operator's own).
fn current_adopted(status: &M2MApplicationStatus) -> Option<String> {
    status
        .adopted_id
        .clone()
        .filter(|a| status.application_id.as_deref() == Some(a.as_str()))
}

/// Other M2MApplications' holds on the Kinde application `id`: current, retiring, being
/// created by a rotation, or adopted by an older object.
fn claims_on(
    ctx: &Context,
    obj: &M2MApplication,
    status: &M2MApplicationStatus,
    id: &str,
) -> Vec<adoption::Claim> {
    let we_hold = status.application_id.as_deref() == Some(id);
    ctx.apps
        .find(|other| other.uid() != obj.uid())
        .iter()
        .filter_map(|other| {
            let s = other.status.clone().unwrap_or_default();
            let how = if s.application_id.as_deref() == Some(id) {
                "current"
            } else if s.retiring.iter().any(|r| r.application_id == id) {
                "retiring"
            } else if s
                .pending_successor
                .as_ref()
                .is_some_and(|p| p.application_id == id)
            {
                "creating"
            } else if !we_hold && other.external_id() == Some(id) && is_older(other.as_ref(), obj) {
                "adopted first"
            } else {
                return None;
            };
            Some(adoption::Claim {
                holder: format!(
                    "M2MApplication {}/{}",
                    other.namespace().unwrap_or_default(),
                    other.name_any()
                ),
                how,
            })
        })
        .collect()
}

/// The application carrying `marker` in its name: found (created before a crash or a lost
/// response) or created now. Never creates a second one for the same marker; a create
/// whose outcome is unknown is noted in `status`, so that a copy Kinde makes later is found
/// and deleted ([`sweep_unconfirmed`]).
pub(super) async fn create_marked(
    obj: &M2MApplication,
    ctx: &Context,
    status: &mut M2MApplicationStatus,
    marker: &str,
) -> Result<KindeApp> {
    if let Some(id) = find_marked(ctx, marker).await? {
        let app = read_app(ctx, &id).await?;
        record_change(
            ctx,
            obj,
            "Created",
            format!("created Kinde application {id}"),
        )
        .await;
        return Ok(app);
    }
    let name = format!("{} {marker}", obj.display_name());
    let created = match ctx
        .kinde
        .create_application(&name, obj.spec.organization_code.as_deref())
        .await
    {
        Ok(created) => created,
        Err(e) => {
            if matches!(e, KindeError::OutcomeUnknown { .. }) {
                status.unconfirmed_create_since = Some(Time(Timestamp::now()));
            }
            return Err(e.into());
        }
    };
    record_change(
        ctx,
        obj,
        "Created",
        format!("created Kinde application {}", created.id),
    )
    .await;
    Ok(KindeApp {
        id: created.id,
        client_id: created.client_id,
        name,
        secret: created.client_secret,
        app_type: Some("m2m".into()),
    })
}

/// How long after a create with an unknown outcome the operator keeps looking for a copy
/// that Kinde made late (a request it processed after the client gave up).
const UNCONFIRMED_CREATE_WATCH: Duration = Duration::from_secs(15 * 60);
/// How often it looks meanwhile.
const UNCONFIRMED_CREATE_POLL: Duration = Duration::from_secs(60);

/// After a create whose outcome was unknown: deletes applications that carry one of this
/// object's markers (creation or rotation) but are none of those it uses (current,
/// retiring, pending successor). Runs once the current application is renamed (it no
/// longer carries a marker). Returns when to look again, `None` once the watch is over.
async fn sweep_unconfirmed(
    obj: &M2MApplication,
    ctx: &Context,
    status: &mut M2MApplicationStatus,
) -> Result<Option<Duration>> {
    let Some(since) = status.unconfirmed_create_since.clone() else {
        return Ok(None);
    };
    let body = uid_marker_body(obj)?;
    let in_use = used_application_ids(status);
    for app in ctx.kinde.list_applications().await? {
        let ours = adoption::carries_marker_of(&app.name, &body);
        if ours && !in_use.contains(&app.id) {
            delete_kinde_application(ctx, &app.id).await?;
            record_change(
                ctx,
                obj,
                "DuplicateDeleted",
                format!(
                    "deleted Kinde application {}: a copy Kinde made of a create whose outcome was unknown",
                    app.id
                ),
            )
            .await;
        }
    }
    Ok(match unconfirmed_watch_left(&since, Timestamp::now()) {
        Some(left) => Some(left.min(UNCONFIRMED_CREATE_POLL)),
        None => {
            status.unconfirmed_create_since = None;
            None
        }
    })
}

/// Time left of the watch that began at `since`, `None` once it is over.
fn unconfirmed_watch_left(since: &Time, now: Timestamp) -> Option<Duration> {
    let elapsed = Duration::try_from(now.duration_since(since.0)).unwrap_or_default();
    UNCONFIRMED_CREATE_WATCH
        .checked_sub(elapsed)
        .filter(|d| !d.is_zero())
}

/// Every Kinde application the object currently uses.
fn used_application_ids(status: &M2MApplicationStatus) -> std::collections::BTreeSet<String> {
    status
        .application_id
        .iter()
        .cloned()
        .chain(status.retiring.iter().map(|r| r.application_id.clone()))
        .chain(
            status
                .pending_successor
                .iter()
                .map(|p| p.application_id.clone()),
        )
        .collect()
}

fn external_gone(id: &str) -> Outcome {
    Outcome::not_ready(
        reasons::EXTERNAL_NOT_FOUND,
        format!(
            "no Kinde application with id {id:?} (adopted with the external-id annotation); it is not re-created"
        ),
    )
}

async fn read_app(ctx: &Context, id: &str) -> std::result::Result<KindeApp, KindeError> {
    let app = ctx.kinde.get_application(id).await?;
    let secret = app.client_secret.ok_or_else(|| KindeError::Decode {
        operation: "getApplication",
        detail: "response lacks `application.client_secret`".into(),
    })?;
    Ok(KindeApp {
        id: app.id,
        client_id: app.client_id,
        name: app.name,
        secret,
        app_type: app.app_type,
    })
}

/// Audiences of the application's Ready grants, for `KINDE_AUDIENCE`.
fn audiences(ctx: &Context, obj: &M2MApplication) -> Vec<String> {
    grants_of(ctx, obj)
        .iter()
        .filter(|g| g.meta().deletion_timestamp.is_none())
        .filter_map(|g| g.status.as_ref())
        .filter(|s| conditions::is_true(&s.conditions, conditions::READY))
        .filter_map(|s| s.audience.clone())
        .collect()
}

/// The Event for an update of an existing Secret: what changed, without any secret value.
fn change_note(
    existing: &Secret,
    desired: &Secret,
    app: &KindeApp,
    name: &str,
) -> (&'static str, String) {
    let same_client = secret::key_is(existing, secret::KEY_CLIENT_ID, &app.client_id);
    let same_secret = secret::key_is(
        existing,
        secret::KEY_CLIENT_SECRET,
        app.secret.expose_secret(),
    );
    let want_audience = secret::read_key(desired, secret::KEY_AUDIENCE).unwrap_or_default();
    if same_client && !same_secret {
        (
            "CredentialsUpdated",
            format!(
                "client secret of Kinde application {} changed; Secret {name} updated",
                app.id
            ),
        )
    } else if !same_client {
        (
            "CredentialsUpdated",
            format!(
                "Secret {name} now holds the credentials of Kinde application {}",
                app.id
            ),
        )
    } else if !secret::key_is(existing, secret::KEY_AUDIENCE, &want_audience) {
        (
            "AudienceUpdated",
            format!("Secret {name}: KINDE_AUDIENCE is now {want_audience:?}"),
        )
    } else {
        (
            "SecretRestored",
            format!("Secret {name} was edited or incomplete; restored"),
        )
    }
}

/// The Secret to write the credentials into, with whether it was created just now; `None`
/// when a Secret of that name belongs to someone else. Ownership is checked on metadata
/// first, so a foreign Secret's data is never read; a missing Secret is created as a
/// placeholder (owner and label only), so that one someone else creates at the same moment
/// makes the create fail (409) instead of being taken over by a server-side apply.
async fn owned_secret(
    api: &Api<Secret>,
    name: &str,
    desired: &Secret,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Result<Option<(Secret, bool)>> {
    if let Some(meta) = api.get_metadata_opt(name).await? {
        if !secret::is_owned_by(&meta.metadata, owner) {
            return Ok(None);
        }
        if let Some(found) = api.get_opt(name).await? {
            return Ok(Some((found, false)));
        }
    }
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, &secret::placeholder(desired)).await {
        Ok(created) => Ok(Some((created, true))),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Creates or restores the credentials Secret; refuses to touch a Secret it does not own.
async fn ensure_secret(
    obj: &M2MApplication,
    ctx: &Context,
    app: &KindeApp,
    name: &str,
) -> Result<std::result::Result<(), Outcome>> {
    let ns = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let owner = obj
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let domain = ctx.kinde.domain();
    let token_url = ctx.kinde.token_url();
    let desired = secret::build(
        &secret::Placement {
            name,
            namespace: &ns,
            owner: owner.clone(),
            labels: obj.spec.secret.labels.as_ref(),
            annotations: obj.spec.secret.annotations.as_ref(),
        },
        &secret::Credentials {
            domain: &domain,
            token_url: &token_url,
            application_id: &app.id,
            client_id: &app.client_id,
            client_secret: &app.secret,
            audiences: audiences(ctx, obj),
        },
    );
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let conflict = || {
        Outcome::not_ready(
            reasons::SECRET_CONFLICT,
            format!(
                "Secret {ns}/{name} exists and is not owned by this M2MApplication; delete it or choose another spec.secret.name"
            ),
        )
    };
    let (existing, created) = match owned_secret(&api, name, &desired, &owner).await? {
        Some(found) => found,
        None => return Ok(Err(conflict())),
    };
    // The apply is conditional on the version whose ownership was checked: a Secret
    // replaced meanwhile makes it fail (409) and the next reconcile looks again.
    let mut desired = desired;
    desired.metadata.resource_version = existing.metadata.resource_version.clone();
    let note = if created {
        (
            "SecretCreated",
            format!(
                "wrote credentials of Kinde application {} to Secret {name}",
                app.id
            ),
        )
    } else if !secret::needs_update(&existing, &desired) {
        return Ok(Ok(()));
    } else {
        change_note(&existing, &desired, app, name)
    };
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await?;
    // Server-side apply never removes a key another field manager added (`kubectl edit`,
    // a tool): drop such keys explicitly, or the Secret would differ from the desired one
    // forever and every resync would apply it again, with an Event each time.
    let foreign: serde_json::Map<String, serde_json::Value> = existing
        .data
        .iter()
        .flatten()
        .filter(|(k, _)| secret::read_key(&desired, k).is_none())
        .map(|(k, _)| (k.clone(), serde_json::Value::Null))
        .collect();
    if !foreign.is_empty() {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "data": foreign })),
        )
        .await?;
    }
    record_change(ctx, obj, note.0, note.1).await;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::M2MApplicationSpec;

    const HOUR: Duration = Duration::from_secs(3600);

    fn app(name: &str, spec: serde_json::Value) -> M2MApplication {
        let mut app = M2MApplication::new(
            name,
            serde_json::from_value::<M2MApplicationSpec>(spec).expect("spec"),
        );
        app.metadata.namespace = Some("acme".into());
        app
    }

    fn problem(app: &M2MApplication) -> String {
        validate(app, &M2MApplicationStatus::default(), HOUR).unwrap_or_default()
    }

    #[test]
    fn a_valid_spec_passes() {
        let a = app(
            "shop",
            serde_json::json!({"rotation": {"every": "720h", "overlap": "1h"},
                               "secret": {"labels": {"team": "a"}, "annotations": {"x.io/y": "any value"}}}),
        );
        assert_eq!(validate(&a, &M2MApplicationStatus::default(), HOUR), None);
    }

    #[test]
    fn rotation_interval_is_bounded() {
        for every in ["1s", "59m", "1h30m"] {
            let a = app(
                "shop",
                serde_json::json!({"rotation": {"every": every, "overlap": "1h"}}),
            );
            assert!(
                problem(&a).contains("spec.rotation.every"),
                "{every}: {}",
                problem(&a)
            );
        }
        let a = app(
            "shop",
            serde_json::json!({"rotation": {"every": "2h", "overlap": "1h"}}),
        );
        assert_eq!(problem(&a), "");
        let a = app(
            "shop",
            serde_json::json!({"rotation": {"every": "1h", "overlap": "0s"}}),
        );
        assert_eq!(problem(&a), "");
        // A lower floor (`--min-rotation-interval`) still wants twice the overlap.
        let a = app(
            "shop",
            serde_json::json!({"rotation": {"every": "20s", "overlap": "3s"}}),
        );
        assert_eq!(
            validate(
                &a,
                &M2MApplicationStatus::default(),
                Duration::from_secs(10)
            ),
            None
        );
        let a = app(
            "shop",
            serde_json::json!({"rotation": {"every": "20s", "overlap": "15s"}}),
        );
        assert!(
            validate(
                &a,
                &M2MApplicationStatus::default(),
                Duration::from_secs(10)
            )
            .is_some()
        );
    }

    #[test]
    fn kubernetes_names_are_checked_before_any_kinde_write() {
        let long = "a".repeat(validation::MAX_NAME_FOR_EVENTS + 1);
        let a = app(&long, serde_json::json!({"displayName": "Shop"}));
        assert!(problem(&a).contains("metadata.name"), "{}", problem(&a));
        let ok = "a".repeat(validation::MAX_NAME_FOR_EVENTS);
        assert_eq!(
            problem(&app(&ok, serde_json::json!({"displayName": "Shop"}))),
            ""
        );
        let a = app(
            "shop",
            serde_json::json!({"secret": {"name": "Not_A_Name"}}),
        );
        assert!(problem(&a).contains("Secret name"), "{}", problem(&a));
        let a = app(
            "shop",
            serde_json::json!({"secret": {"labels": {"team": "a b"}}}),
        );
        assert!(
            problem(&a).contains("spec.secret.labels"),
            "{}",
            problem(&a)
        );
        let a = app(
            "shop",
            serde_json::json!({"secret": {"annotations": {"bad key": "v"}}}),
        );
        assert!(
            problem(&a).contains("spec.secret.annotations"),
            "{}",
            problem(&a)
        );
    }

    #[test]
    fn organization_code_is_immutable_once_created() {
        let a = app("shop", serde_json::json!({"organizationCode": "org_b"}));
        let created = M2MApplicationStatus {
            application_id: Some("app1".into()),
            organization_code: Some("org_a".into()),
            ..M2MApplicationStatus::default()
        };
        assert!(
            validate(&a, &created, HOUR)
                .unwrap_or_default()
                .contains("spec.organizationCode is immutable")
        );
        let same = app("shop", serde_json::json!({"organizationCode": "org_a"}));
        assert_eq!(validate(&same, &created, HOUR), None);
        // Before the application exists the code may still change.
        let fresh = M2MApplicationStatus {
            organization_code: Some("org_a".into()),
            ..M2MApplicationStatus::default()
        };
        assert_eq!(validate(&a, &fresh, HOUR), None);
    }

    #[test]
    fn unconfirmed_create_watch_ends() {
        let since = Timestamp::from_second(1_000_000).expect("ts");
        let at = |s| Timestamp::from_second(s).expect("ts");
        assert_eq!(
            unconfirmed_watch_left(&Time(since), at(1_000_000)),
            Some(UNCONFIRMED_CREATE_WATCH)
        );
        assert_eq!(
            unconfirmed_watch_left(&Time(since), at(1_000_060)),
            Some(UNCONFIRMED_CREATE_WATCH - Duration::from_secs(60))
        );
        assert_eq!(unconfirmed_watch_left(&Time(since), at(1_000_900)), None);
        assert_eq!(unconfirmed_watch_left(&Time(since), at(2_000_000)), None);
        // A clock that went backwards keeps watching rather than panicking.
        assert_eq!(
            unconfirmed_watch_left(&Time(since), at(999_000)),
            Some(UNCONFIRMED_CREATE_WATCH)
        );
    }

    #[test]
    fn used_applications_include_retiring_and_pending() {
        let status = M2MApplicationStatus {
            application_id: Some("cur".into()),
            retiring: vec![crate::crd::RetiringCredentials {
                application_id: "old".into(),
                client_id: "old".into(),
                retire_at: Time(Timestamp::from_second(1).expect("ts")),
            }],
            pending_successor: Some(crate::crd::PendingSuccessor {
                application_id: "next".into(),
                client_id: "next".into(),
                rotation: "request:1".into(),
            }),
            ..M2MApplicationStatus::default()
        };
        let ids: Vec<String> = used_application_ids(&status).into_iter().collect();
        assert_eq!(ids, ["cur", "next", "old"]);
    }

    /// A mock API server answering `script` in order; returns what was asked, as
    /// `(method, path, accepts metadata only)`.
    async fn mock_secrets(
        script: Vec<(u16, serde_json::Value)>,
        call: impl AsyncFnOnce(Api<Secret>) -> Option<(Secret, bool)>,
    ) -> (Option<(Secret, bool)>, Vec<(String, String, bool)>) {
        let (svc, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut script = script.into_iter();
            while let Some((req, send)) = handle.next_request().await {
                let meta_only = req
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("PartialObjectMetadata"));
                seen.push((
                    req.method().to_string(),
                    req.uri().path().to_owned(),
                    meta_only,
                ));
                let (status, body) = script.next().unwrap_or((500, serde_json::json!({})));
                send.send_response(
                    http::Response::builder()
                        .status(status)
                        .body(kube::client::Body::from(body.to_string().into_bytes()))
                        .expect("response"),
                );
            }
            seen
        });
        let client = kube::Client::new(svc, "acme");
        let result = call(Api::namespaced(client, "acme")).await;
        let seen = server.await.expect("mock server");
        (result, seen)
    }

    fn owner(uid: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "m2m.kinde-operator.io/v1alpha1".into(),
            kind: "M2MApplication".into(),
            name: "shop".into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        }
    }

    fn metadata_of(uid: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "shop-credentials", "namespace": "acme", "resourceVersion": "7",
                         "ownerReferences": [owner(uid)]}
        })
    }

    fn status_of(code: u16, reason: &str) -> serde_json::Value {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": reason, "code": code, "message": reason})
    }

    fn desired() -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("shop-credentials".into());
        s.metadata.namespace = Some("acme".into());
        s.metadata.owner_references = Some(vec![owner("mine")]);
        s
    }

    #[tokio::test]
    async fn a_foreign_secret_is_checked_on_metadata_and_never_read_or_written() {
        let (result, seen) = mock_secrets(vec![(200, metadata_of("someone-else"))], async |api| {
            owned_secret(&api, "shop-credentials", &desired(), &owner("mine"))
                .await
                .expect("no error")
        })
        .await;
        assert!(result.is_none(), "a foreign Secret counts as a conflict");
        assert_eq!(
            seen,
            [(
                "GET".to_owned(),
                "/api/v1/namespaces/acme/secrets/shop-credentials".to_owned(),
                true
            )],
            "only a metadata read"
        );
    }

    #[tokio::test]
    async fn a_secret_created_meanwhile_by_someone_else_is_not_taken_over() {
        let (result, seen) = mock_secrets(
            vec![
                (404, status_of(404, "NotFound")),
                (409, status_of(409, "AlreadyExists")),
            ],
            async |api| {
                owned_secret(&api, "shop-credentials", &desired(), &owner("mine"))
                    .await
                    .expect("no error")
            },
        )
        .await;
        assert!(result.is_none(), "the lost create race is a conflict");
        let methods: Vec<&str> = seen.iter().map(|(m, _, _)| m.as_str()).collect();
        assert_eq!(
            methods,
            ["GET", "POST"],
            "no apply after the refused create: {seen:?}"
        );
    }

    #[tokio::test]
    async fn an_owned_secret_is_read_whole_and_a_missing_one_created_as_a_placeholder() {
        let full = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": metadata_of("mine")["metadata"].clone(), "data": {"KINDE_CLIENT_ID": "YQ=="}});
        let (result, seen) =
            mock_secrets(vec![(200, metadata_of("mine")), (200, full)], async |api| {
                owned_secret(&api, "shop-credentials", &desired(), &owner("mine"))
                    .await
                    .expect("no error")
            })
            .await;
        let (found, created) = result.expect("owned");
        assert!(!created);
        assert!(found.data.is_some());
        assert_eq!(
            seen.iter().map(|(_, _, m)| *m).collect::<Vec<_>>(),
            [true, false]
        );

        let placeholder = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": metadata_of("mine")["metadata"].clone()});
        let (result, seen) = mock_secrets(
            vec![(404, status_of(404, "NotFound")), (201, placeholder)],
            async |api| {
                owned_secret(&api, "shop-credentials", &desired(), &owner("mine"))
                    .await
                    .expect("no error")
            },
        )
        .await;
        let (made, created) = result.expect("created");
        assert!(
            created && made.data.is_none(),
            "the placeholder carries no data"
        );
        assert_eq!(seen[1].0, "POST");
    }

    #[test]
    fn adopted_application_is_current_until_rotated() {
        let mut status = M2MApplicationStatus {
            application_id: Some("legacy".into()),
            adopted_id: Some("legacy".into()),
            ..M2MApplicationStatus::default()
        };
        assert_eq!(current_adopted(&status).as_deref(), Some("legacy"));
        status.application_id = Some("successor".into());
        assert_eq!(current_adopted(&status), None);
    }
}

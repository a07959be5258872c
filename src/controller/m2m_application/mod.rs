//! M2MApplication: one Kinde M2M application and its credentials Secret.
//!
//! Crash safety: Kinde application names are not unique and a create is not idempotent, so
//! the application is created under a name carrying a marker derived from the object's
//! UID (`<displayName> [kmo:<uid>]`). Before any create the operator looks the marker up
//! in the directory of marked applications (one shared listing, see
//! `kernel::app_directory`) and adopts one carrying it (its own, from before a crash or a
//! lost response).
//! Only once the id is in the status is the application renamed to its display name.

use std::sync::Arc;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

mod decide;
mod kinde_app;
mod rotation;
mod secret;
mod tokens;

pub(crate) use decide::KindeApp;
use decide::{
    creation_marker, current_adopted, external_gone, is_marked, uid_marker_body,
    used_application_ids, validate,
};
use kinde_app::{
    announce_created, create_marked, find_all_marked, read_app, record_owner, recover_owned,
    release_owner, sweep_unconfirmed,
};
use secret::ensure_secret;

use super::kernel::{
    Managed, Outcome, Result, Step, Stop, adoption_admitted, apply_status,
    delete_kinde_application, effective_deletion_policy, is_older, record_change, wait_if_paused,
};
use super::world::{Ctx, World, wake_dependants_of_app};
use crate::adoption;
use crate::conditions::reasons;
use crate::crd::{DeletionPolicy, KindeAnnotations, M2MApplication, M2MApplicationStatus};
use crate::kinde::KindeError;
use crate::metrics::{Metrics, ObjectLabels};

impl Managed for M2MApplication {
    const KIND: &'static str = "M2MApplication";

    type Status = M2MApplicationStatus;
    type World = World;

    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    fn wanted_connection(&self, _world: &World) -> Option<crate::crd::ConnectionRef> {
        self.spec.connection_ref.clone()
    }

    async fn converge(&self, ctx: &Ctx, status: &mut Self::Status) -> Result<Outcome> {
        converge(self, ctx, status).await
    }

    fn wake_dependants(&self, world: &World) {
        wake_dependants_of_app(world, self);
    }

    fn record_metrics(&self, status: &Self::Status, metrics: &Metrics, object: &ObjectLabels) {
        metrics.credentials(object, &decide::credential_gauges(self, status));
    }

    async fn cleanup(obj: Arc<Self>, ctx: Arc<Ctx>) -> Result<Action> {
        wait_if_paused(obj.as_ref())?;
        ctx.world.app_reads.forget(obj.as_ref());
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
        if policy == DeletionPolicy::Orphan
            && let Some(id) = status.owner_recorded_on.as_deref()
        {
            // Left in Kinde, no longer this object's: a later object of the same name
            // creates its own instead of claiming it.
            release_owner(&ctx, id).await?;
        }
        Ok(Action::await_change())
    }
}

async fn converge(
    obj: &M2MApplication,
    ctx: &Ctx,
    status: &mut M2MApplicationStatus,
) -> Result<Outcome> {
    if let Some(problem) = validate(obj, status, ctx.min_rotation_every) {
        return Ok(Outcome::not_ready(reasons::INVALID_SPEC, problem));
    }
    let paused = obj.is_paused();
    let mut app = match ensure_app(obj, ctx, status, paused).await {
        Ok(app) => app,
        Err(stop) => return stop.into_result(),
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
    status.next_rotation_time = decide::next_scheduled(every, base.as_ref(), now);
    let due = decide::due(obj, status, now);
    if app.fresh && due.is_some() {
        // Replaced at once: told now, before the rotation's own Events.
        announce_created(ctx, obj, &app).await;
        app.fresh = false;
    }
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
        if let Some(wait) = decide::deferred(status, now) {
            return Ok(wait);
        }
        let overlap = obj.spec.rotation.overlap().unwrap_or_default();
        ctx.world.app_reads.forget(obj);
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
    if !paused {
        match tokens::ensure_tokens(obj, ctx, status, &app).await {
            Ok(true) => ctx.world.app_reads.forget(obj),
            Ok(false) => {}
            Err(e) => {
                if app.fresh {
                    announce_created(ctx, obj, &app).await;
                }
                return Err(e);
            }
        }
    }

    let secret_name = obj.secret_name();
    let secret = ensure_secret(obj, ctx, &app, &secret_name).await;
    if app.fresh && !matches!(secret, Ok(true)) {
        announce_created(ctx, obj, &app).await;
    }
    if let Err(stop) = secret {
        return stop.into_result();
    }
    status.secret_name = Some(secret_name);
    // The id must be recorded before the marker leaves the name.
    apply_status(ctx, obj, obj.status.as_ref(), status).await?;
    if !paused && current_adopted(status).is_none() {
        record_owner(obj, ctx, status, &app).await?;
    }

    let display = obj.display_name();
    if app.name != display {
        if paused {
            return Ok(Outcome::Paused { ready: true });
        }
        ctx.business
            .kinde
            .rename_application(&app.id, &display)
            .await?;
        ctx.business.kinde_apps.renamed(&app.id, &display);
        ctx.world
            .app_reads
            .update(obj, |read| read.name.clone_from(&display));
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
    let next_rotation = decide::until_next(status, Timestamp::now());
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

/// The Kinde application, read, adopted, found by marker or created; or why there is none.
async fn ensure_app(
    obj: &M2MApplication,
    ctx: &Ctx,
    status: &mut M2MApplicationStatus,
    paused: bool,
) -> Step<KindeApp> {
    let external = obj.external_id();
    let adopted = current_adopted(status);
    // Adoption is the platform's to grant: checked before any Kinde call, and again on
    // every reconcile of an adopted application (the policy may have been withdrawn).
    if let Some(id) = external.or(adopted.as_deref()) {
        adoption_admitted(ctx, obj).await?;
        let claims = claims_on(ctx, obj, status, id);
        if let Err(refusal) =
            adoption::check_app_id(id, &ctx.business.kinde.management_client_id(), &claims)
        {
            return Err(Stop::Outcome(Outcome::refused(refusal)));
        }
        if obj.spec.deletion_policy == Some(DeletionPolicy::Delete)
            && let Err(refusal) =
                adoption::check_destructive(&ctx.adoption, "spec.deletionPolicy: Delete")
        {
            return Err(Stop::Outcome(Outcome::refused(refusal)));
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
        if let Some(app) = ctx.world.app_reads.get(obj).filter(|a| a.id == id) {
            return Ok(app);
        }
        let read_at = tokio::time::Instant::now();
        match read_app(ctx, &id).await {
            Ok(app) => {
                ctx.world.app_reads.put(obj, read_at, app.clone());
                return Ok(app);
            }
            Err(e) if e.is_not_found() => {
                if external.is_some() || adopted.is_some() {
                    return Err(Stop::Outcome(external_gone(&id)));
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
                return Err(Stop::Outcome(external_gone(ext)));
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
            &ctx.business.kinde.management_client_id(),
            &uid_marker_body(obj)?,
        ) {
            return Err(Stop::Outcome(Outcome::refused(refusal)));
        }
        status.adopted_id = Some(app.id.clone());
        record_change(
            ctx,
            obj,
            "Adopted",
            format!("adopted Kinde application {ext}"),
        )
        .await;
        return Ok(app);
    }

    if paused {
        // Even a marked app left by a crash is only picked up once writes are allowed.
        return Err(Stop::Outcome(Outcome::Paused { ready: false }));
    }
    if external.is_none()
        && let Some(app) = recover_owned(obj, ctx, status).await?
    {
        return Ok(app);
    }
    Ok(create_marked(obj, ctx, status, &creation_marker(obj)?).await?)
}

/// Other M2MApplications' holds on the Kinde application `id`: current, retiring, being
/// created by a rotation, or adopted by an older object.
fn claims_on(
    ctx: &Ctx,
    obj: &M2MApplication,
    status: &M2MApplicationStatus,
    id: &str,
) -> Vec<adoption::Claim> {
    let we_hold = status.application_id.as_deref() == Some(id);
    ctx.world
        .apps
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
            Some(adoption::Claim::by(other.as_ref(), how))
        })
        .collect()
}

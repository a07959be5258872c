//! The object's Kinde applications: read, found by marker, created under a marker, and the
//! sweep for copies a create with an unknown outcome left behind.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::decide::{
    KindeApp, UNCONFIRMED_CREATE_POLL, uid_marker_body, unconfirmed_watch_left,
    used_application_ids,
};
use std::collections::HashSet;

use kube::ResourceExt;

use crate::controller::kernel::{OwnerRecord, Result, delete_kinde_application, record_change};
use crate::controller::world::Ctx;
use crate::crd::{M2MApplication, M2MApplicationStatus};
use crate::kinde::KindeError;

/// The ids of every application carrying one of this object's markers (creation or
/// rotation: `[kmo:<uid body>...]`).
pub(super) async fn find_all_marked(ctx: &Ctx, uid_body: &str) -> Result<Vec<String>> {
    Ok(ctx.business.kinde_apps.find_all(uid_body, None).await?)
}

/// The application carrying `marker` in its name, if it still exists (the directory may
/// know of one deleted behind our back).
async fn find_marked(ctx: &Ctx, marker: &str) -> Result<Option<KindeApp>> {
    for id in ctx.business.kinde_apps.find(marker).await? {
        match read_app(ctx, &id).await {
            Ok(app) => return Ok(Some(app)),
            Err(e) if e.is_not_found() => ctx.business.kinde_apps.gone(&id),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// The application carrying `marker` in its name: found (created before a crash or a lost
/// response) or created now; `fresh` (the caller announces it, see [`announce_created`]). Never creates a second one for the same marker; a create
/// whose outcome is unknown is noted in `status`, so that a copy Kinde makes later is found
/// and deleted ([`sweep_unconfirmed`]).
pub(super) async fn create_marked(
    obj: &M2MApplication,
    ctx: &Ctx,
    status: &mut M2MApplicationStatus,
    marker: &str,
) -> Result<KindeApp> {
    if let Some(app) = find_marked(ctx, marker).await? {
        return Ok(KindeApp { fresh: true, ..app });
    }
    let name = format!("{} {marker}", obj.display_name());
    ctx.business.kinde_apps.attempting(marker);
    let sent_at = tokio::time::Instant::now();
    let created = match ctx
        .business
        .kinde
        .create_application(&name, obj.spec.organization_code.as_deref())
        .await
    {
        Ok(created) => created,
        Err(e) => {
            ctx.business.kinde_apps.create_failed(marker, &e);
            if matches!(e, KindeError::OutcomeUnknown { .. }) {
                status.unconfirmed_create_since = Some(Time(Timestamp::now()));
            }
            return Err(e.into());
        }
    };
    ctx.business.kinde_apps.created(marker, &created.id, &name);
    let app = KindeApp {
        id: created.id,
        client_id: created.client_id,
        name,
        secret: created.client_secret,
        app_type: Some("m2m".into()),
        access_token_lifetime: None,
        fresh: false,
    };
    // What the create answered is as good as a read made when it was sent.
    ctx.world.app_reads.put(obj, sent_at, app.clone());
    Ok(KindeApp { fresh: true, ..app })
}

/// After a create whose outcome was unknown: deletes applications that carry one of this
/// object's markers (creation or rotation) but are none of those it uses (current,
/// retiring, pending successor). Runs once the current application is renamed (it no
/// longer carries a marker). Returns when to look again, `None` once the watch is over.
pub(super) async fn sweep_unconfirmed(
    obj: &M2MApplication,
    ctx: &Ctx,
    status: &mut M2MApplicationStatus,
) -> Result<Option<Duration>> {
    let Some(since) = status.unconfirmed_create_since.clone() else {
        return Ok(None);
    };
    let body = uid_marker_body(obj)?;
    let in_use = used_application_ids(status);
    // A copy Kinde makes late only shows in a listing made now.
    let now = tokio::time::Instant::now();
    for id in ctx.business.kinde_apps.find_all(&body, Some(now)).await? {
        if !in_use.contains(&id) {
            delete_kinde_application(ctx, &id).await?;
            record_change(
                ctx,
                obj,
                "DuplicateDeleted",
                format!(
                    "deleted Kinde application {id}: a copy Kinde made of a create whose outcome was unknown"
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

pub(super) async fn read_app(ctx: &Ctx, id: &str) -> std::result::Result<KindeApp, KindeError> {
    let app = ctx.business.kinde.get_application(id).await?;
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
        access_token_lifetime: app.access_token_lifetime,
        fresh: false,
    })
}

/// The Event for an application this reconcile created (or found after a lost create),
/// unless the Secret's Event already told of it.
pub(super) async fn announce_created(ctx: &Ctx, obj: &M2MApplication, app: &KindeApp) {
    record_change(
        ctx,
        obj,
        "Created",
        format!("created Kinde application {}", app.id),
    )
    .await;
}

/// The application this object owned before it lost its status (re-created from the same
/// manifest: a cluster rebuilt from Git, a restore without status): named with its display
/// name, carrying its owner key (see [`crate::identity`]), held by no other object. Its
/// credentials are kept; nothing is created.
pub(super) async fn recover_owned(
    obj: &M2MApplication,
    ctx: &Ctx,
    status: &mut M2MApplicationStatus,
) -> Result<Option<KindeApp>> {
    let ns = obj.namespace().unwrap_or_default();
    let key = ctx.business.ownership.key(&ns, &obj.name_any());
    let held: HashSet<String> = ctx
        .world
        .apps
        .find(|other| other.uid() != obj.uid())
        .iter()
        .filter_map(|other| other.status.as_ref())
        .flat_map(used_application_ids)
        .collect();
    for id in ctx
        .business
        .kinde_apps
        .find_named(&obj.display_name())
        .await?
    {
        if held.contains(&id)
            || ctx
                .business
                .ownership
                .owner_of(&ctx.business.kinde, &id)
                .await?
                .as_deref()
                != Some(key.as_str())
        {
            continue;
        }
        let app = match read_app(ctx, &id).await {
            Ok(app) => app,
            Err(e) if e.is_not_found() => {
                ctx.business.kinde_apps.gone(&id);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        status.owner_recorded_on = Some(id.clone());
        record_change(
            ctx,
            obj,
            "Recovered",
            format!(
                "found Kinde application {id}, made for this object before it lost its status (owner {key}); its credentials are kept"
            ),
        )
        .await;
        return Ok(Some(app));
    }
    Ok(None)
}

/// Records this object's owner key on its current application (once per application), and
/// takes it off the application it replaced (a rotation's predecessor), so only the
/// current one is found after a rebuild. Without the property scopes the object works on,
/// unrecoverable after a rebuild (see [`crate::controller::kernel::Ownership`]).
pub(super) async fn record_owner(
    obj: &M2MApplication,
    ctx: &Ctx,
    status: &mut M2MApplicationStatus,
    app: &KindeApp,
) -> Result<()> {
    if status.owner_recorded_on.as_deref() == Some(app.id.as_str()) {
        return Ok(());
    }
    let ns = obj.namespace().unwrap_or_default();
    let key = ctx.business.ownership.key(&ns, &obj.name_any());
    if ctx
        .business
        .ownership
        .record(&ctx.business.kinde, &app.id, Some(&key))
        .await?
        == OwnerRecord::Refused
    {
        return Ok(());
    }
    if let Some(previous) = status.owner_recorded_on.replace(app.id.clone()) {
        release_owner(ctx, &previous).await?;
    }
    Ok(())
}

/// Takes the owner key off application `id` (it is orphaned or replaced): a later object
/// of the same name must not claim it. An application already gone counts as done.
pub(super) async fn release_owner(ctx: &Ctx, id: &str) -> Result<()> {
    match ctx
        .business
        .ownership
        .record(&ctx.business.kinde, id, None)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

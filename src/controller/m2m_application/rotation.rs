//! Credential rotation by replacement (SPEC section 4): Kinde's Management API cannot
//! rotate a secret, so a successor application is created, authorized like the current one,
//! and swapped into the Secret in one write; the predecessor keeps working for
//! `spec.rotation.overlap`, then is de-authorized and deleted.
//!
//! Every step is idempotent and recorded in Kinde or in status before the next, so a crash
//! anywhere resumes where it stopped:
//! - the successor is created under a marker derived from the object's UID and the request
//!   (`[kmo:<uid>:<request hash>]`), and found again by that marker before any create;
//! - authorizing it is idempotent;
//! - the Secret switch comes before the status write, which records the predecessor in
//!   `status.retiring` and the request as handled: until then the request is still pending
//!   and the same successor is picked up again;
//! - a retiring app leaves `status.retiring` only after Kinde confirmed its deletion.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::decide::KindeApp;
use super::decide::{Due, next_scheduled, successor_marker};
use super::kinde_app::{announce_created, create_marked};
use crate::controller::kernel::{
    Result, apply_status, deauthorize, delete_kinde_application, record_change,
};
use crate::controller::world::Ctx;
use crate::crd::{M2MApplication, M2MApplicationStatus, PendingSuccessor, RetiringCredentials};
use crate::kinde::types::Authorization;
use crate::metrics::ResultLabels;

/// For each API the app's grants name: (api_id, scope ids granted).
fn grant_targets(ctx: &Ctx, obj: &M2MApplication) -> BTreeMap<String, Vec<String>> {
    let mut targets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for grant in ctx.world.grants_of(obj) {
        let Some(status) = grant.status.as_ref() else {
            continue;
        };
        let Some(api_id) = status.api_id.clone() else {
            continue;
        };
        let api_ns = grant.api_namespace().unwrap_or_default();
        let scope_ids: Vec<String> = ctx
            .world
            .apis
            .get(&api_ns, &grant.spec.api_ref.name)
            .and_then(|api| api.status.clone())
            .map(|s| {
                s.scopes
                    .into_iter()
                    .filter(|sc| status.granted_scopes.contains(&sc.key))
                    .map(|sc| sc.id)
                    .collect()
            })
            .unwrap_or_default();
        targets.entry(api_id).or_default().extend(scope_ids);
    }
    targets
}

/// Disconnects and deletes a recorded successor that no rotation wants any more (a newer
/// request superseded the one it was made for, or the request went away), so a rotation
/// that kept failing never leaves an authorized application behind.
pub async fn discard_stale_successor(
    obj: &M2MApplication,
    ctx: &Ctx,
    status: &mut M2MApplicationStatus,
    due: Option<&Due>,
) -> Result<()> {
    let Some(pending) = status.pending_successor.clone() else {
        return Ok(());
    };
    if due.is_some_and(|d| d.key == pending.rotation) {
        return Ok(());
    }
    let targets = grant_targets(ctx, obj);
    disconnect_and_delete(
        ctx,
        targets.keys(),
        &pending.client_id,
        &pending.application_id,
    )
    .await?;
    record_change(
        ctx,
        obj,
        "SuccessorDiscarded",
        format!(
            "deleted Kinde application {}, made for a rotation that was superseded before it finished",
            pending.application_id
        ),
    )
    .await;
    status.pending_successor = None;
    Ok(())
}

/// Performs a due rotation up to the switch: finds or creates the successor, records it as
/// pending (before it gets any access), authorizes it for every API of the app's grants
/// with the same scopes, and records the predecessor as retiring. Returns the successor,
/// which the caller writes into the Secret and status.
pub async fn rotate(
    obj: &M2MApplication,
    ctx: &Ctx,
    status: &mut M2MApplicationStatus,
    current: &KindeApp,
    due: &Due,
    uid_marker_body: &str,
    overlap: Duration,
) -> Result<KindeApp> {
    let marker = successor_marker(uid_marker_body, due);
    let mut successor = match create_marked(obj, ctx, status, &marker).await {
        Ok(app) => app,
        Err(e) => {
            ctx.metrics
                .rotations
                .get_or_create(&ResultLabels { result: "failed" })
                .inc();
            return Err(e);
        }
    };
    if successor.fresh {
        announce_created(ctx, obj, &successor).await;
        successor.fresh = false;
    }
    if status.pending_successor.as_ref().map(|p| &p.application_id) != Some(&successor.id) {
        status.pending_successor = Some(PendingSuccessor {
            application_id: successor.id.clone(),
            client_id: successor.client_id.clone(),
            rotation: due.key.clone(),
        });
        apply_status(ctx, obj, obj.status.as_ref(), status).await?;
    }
    for (api_id, scope_ids) in grant_targets(ctx, obj) {
        ctx.business
            .authorizer
            .submit(&api_id, &successor.client_id, Authorization::Authorize)
            .await?;
        ctx.business
            .kinde_apis
            .note(&api_id, &successor.client_id, Authorization::Authorize)
            .await;
        for scope in scope_ids {
            ctx.business
                .kinde
                .add_api_application_scope(&api_id, &successor.id, &scope)
                .await?;
        }
    }
    // The caller records the successor as current in the same status write.
    status.pending_successor = None;
    let now = Timestamp::now();
    let retire_at = now
        .checked_add(jiff::SignedDuration::try_from(overlap).unwrap_or_default())
        .unwrap_or(now);
    if !status
        .retiring
        .iter()
        .any(|r| r.application_id == current.id)
        && current.id != successor.id
    {
        status.retiring.push(RetiringCredentials {
            application_id: current.id.clone(),
            client_id: current.client_id.clone(),
            retire_at: Time(retire_at),
        });
    }
    status.last_rotation_time = Some(Time(now));
    if let Some(request) = &due.request {
        status.last_handled_rotate_request = Some(request.clone());
    }
    status.next_rotation_time = next_scheduled(
        obj.spec.rotation.every().ok().flatten(),
        Some(&Time(now)),
        now,
    );
    ctx.metrics
        .rotations
        .get_or_create(&ResultLabels {
            result: "succeeded",
        })
        .inc();
    record_change(
        ctx,
        obj,
        "CredentialsRotated",
        format!(
            "rotated to Kinde application {}; {} keeps working until {retire_at}",
            successor.id, current.id
        ),
    )
    .await;
    Ok(successor)
}

/// De-authorizes an application for every API in `api_ids`, then deletes it; `false` when
/// it was already gone. What a superseded successor and a retired predecessor both get.
async fn disconnect_and_delete(
    ctx: &Ctx,
    api_ids: impl Iterator<Item = &String>,
    client_id: &str,
    application_id: &str,
) -> Result<bool> {
    for api_id in api_ids {
        deauthorize(ctx, api_id, client_id).await?;
    }
    delete_kinde_application(ctx, application_id).await
}

/// Retires predecessors whose overlap has ended: de-authorizes them for the app's APIs and
/// deletes them. Returns how long until the next one is due.
pub async fn retire_due(
    obj: &M2MApplication,
    ctx: &Ctx,
    status: &mut M2MApplicationStatus,
) -> Result<Option<Duration>> {
    let now = Timestamp::now();
    let targets = grant_targets(ctx, obj);
    let mut remaining = Vec::new();
    for r in std::mem::take(&mut status.retiring) {
        if r.retire_at.0 > now {
            remaining.push(r);
            continue;
        }
        match disconnect_and_delete(ctx, targets.keys(), &r.client_id, &r.application_id).await {
            Ok(deleted_now) => {
                if deleted_now {
                    record_change(
                        ctx,
                        obj,
                        "PredecessorRetired",
                        format!(
                            "overlap over: de-authorized and deleted Kinde application {}",
                            r.application_id
                        ),
                    )
                    .await;
                }
            }
            Err(e) => {
                // Still retiring: the next reconcile tries again.
                status.retiring.push(r);
                status.retiring.extend(remaining);
                return Err(e);
            }
        }
    }
    status.retiring = remaining;
    Ok(status
        .retiring
        .iter()
        .map(|r| r.retire_at.0.duration_since(now))
        .min()
        .and_then(|d| Duration::try_from(d).ok()))
}

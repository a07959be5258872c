//! ApiGrant: authorizes one application for one API with scopes; deleting it cuts access.
//!
//! Kinde has no read of an application's scopes on an API, so the scopes granted are kept
//! in `status.grantedScopes` and re-applied in full whenever the authorization itself had
//! to be restored (Kinde drops an application's scopes when it is de-authorized).

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

mod decide;

use decide::{scope_plan, still_granted, winner_over};

use super::kernel::{
    Error, Managed, Outcome, Result, Step, Stop, apply_status, current, deauthorize,
    namespace_labels, record_change, wait_if_paused,
};
use super::world::{Ctx, World, wake_dependants_of_grant};
use crate::conditions::reasons;
use crate::crd::{
    ApiGrant, ApiGrantStatus, ApiRegistration, GrantFrom, KindeAnnotations, M2MApplication,
    M2MApplicationStatus,
};
use crate::kinde::types::Authorization;

impl Managed for ApiGrant {
    const KIND: &'static str = "ApiGrant";

    type Status = ApiGrantStatus;
    type World = World;

    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    /// The API's: a grant's calls go to the business its API lives in.
    fn wanted_connection(&self, world: &World) -> Option<crate::crd::ConnectionRef> {
        world.api_connection(self)
    }

    async fn converge(&self, ctx: &Ctx, status: &mut Self::Status) -> Result<Outcome> {
        converge(self, ctx, status).await
    }

    fn wake_dependants(&self, world: &World) {
        wake_dependants_of_grant(world, self);
    }

    async fn cleanup(obj: Arc<Self>, ctx: Arc<Ctx>) -> Result<Action> {
        wait_if_paused(obj.as_ref())?;
        let status = obj.status.clone().unwrap_or_default();
        if let (Some(api_id), Some(app_id)) = (&status.api_id, &status.application_id) {
            // Every credential of the application is cut: the one this grant recorded, the
            // application's current one (a rotation the grant has not caught up with yet,
            // e.g. while it was paused, already authorized the successor), and the
            // predecessors still in their overlap.
            let mut clients = vec![app_id.clone()];
            clients.extend(all_clients(&ctx, &obj));
            let mut seen = BTreeSet::new();
            for client in clients {
                if seen.insert(client.clone()) {
                    revoke(&ctx, obj.as_ref(), api_id, &client).await?;
                }
            }
        }
        Ok(Action::await_change())
    }
}

/// De-authorizes `app_id` for `api_id` (Kinde app ids are their client ids).
async fn revoke(ctx: &Ctx, grant: &ApiGrant, api_id: &str, app_id: &str) -> Result<()> {
    deauthorize(ctx, api_id, app_id).await?;
    record_change(
        ctx,
        grant,
        "Revoked",
        format!("de-authorized application {app_id} for Kinde API {api_id}"),
    )
    .await;
    Ok(())
}

/// Client IDs of the referenced application's predecessors still in their overlap.
fn retiring_clients(ctx: &Ctx, grant: &ApiGrant) -> Vec<String> {
    app_status(ctx, grant)
        .retiring
        .into_iter()
        .map(|r| r.client_id)
        .collect()
}

/// Every client ID the referenced application may have authorized for a grant's API: its
/// current one, the predecessors in their overlap, and a rotation's successor not switched
/// to yet (the rotation may already have authorized it).
fn all_clients(ctx: &Ctx, grant: &ApiGrant) -> Vec<String> {
    let status = app_status(ctx, grant);
    status
        .client_id
        .into_iter()
        .chain(status.retiring.into_iter().map(|r| r.client_id))
        .chain(status.pending_successor.map(|p| p.client_id))
        .collect()
}

/// The referenced application's status as the store has it (empty when it is gone).
fn app_status(ctx: &Ctx, grant: &ApiGrant) -> M2MApplicationStatus {
    ctx.world
        .app_of(grant)
        .and_then(|app| app.status.clone())
        .unwrap_or_default()
}

/// The referenced objects, once they are usable; or why the grant must wait.
struct Resolved {
    app: Arc<M2MApplication>,
    api: Arc<ApiRegistration>,
    app_id: String,
    api_id: String,
    audience: String,
    /// Scope ids to grant, by key.
    scopes: Vec<(String, String)>,
}

async fn resolve(grant: &ApiGrant, ctx: &Ctx) -> Step<Resolved> {
    let ns = grant
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let api_ns = grant.api_namespace().unwrap_or_else(|| ns.clone());
    let app = ctx.world.app_of(grant);
    let api = ctx.world.apis.get(&api_ns, &grant.spec.api_ref.name);
    let app_seen = app.is_some();
    let unreported_age = decide::unreported_age(grant, jiff::Timestamp::now());
    let (Some(app), Some(api)) = (app, api) else {
        let watched = ctx.world.apis.covers(&api_ns);
        return Err(Stop::Outcome(decide::missing_reference(
            grant,
            app_seen,
            watched,
            unreported_age,
        )));
    };
    // The application or API may have just woken this grant with a status its store does
    // not show yet: decide on their current copies, not stale ones (a grant deciding
    // "not Ready yet" on a stale copy would wait a whole requeue for a change it was woken
    // for).
    let app = current(ctx, app).await?;
    let api = current(ctx, api).await?;
    let facts = decide::ReferenceFacts {
        permitted: permitted(ctx, &api, &api_ns, &ns).await?,
        winner: winner_over(grant, &ctx.world.conflicting(grant)).map(|g| g.name_any()),
        unreported_age,
    };
    let refs = decide::references(grant, &app, &api, &facts)?;
    Ok(Resolved {
        app,
        api,
        app_id: refs.app_id,
        api_id: refs.api_id,
        audience: refs.audience,
        scopes: refs.scopes,
    })
}

/// Whether the API's grant policy admits grants from `grant_ns`.
async fn permitted(ctx: &Ctx, api: &ApiRegistration, api_ns: &str, grant_ns: &str) -> Result<bool> {
    let policy = &api.spec.grant_policy;
    let labels = if policy.from == GrantFrom::Selector {
        namespace_labels(ctx, grant_ns).await?
    } else {
        Default::default()
    };
    Ok(policy.permits(api_ns, grant_ns, &labels))
}

async fn converge(grant: &ApiGrant, ctx: &Ctx, status: &mut ApiGrantStatus) -> Result<Outcome> {
    let r = match resolve(grant, ctx).await {
        Ok(r) => r,
        Err(Stop::Failed(e)) => return Err(e),
        Err(Stop::Outcome(outcome)) => {
            // The API's grant policy no longer admits this namespace (policy tightened or
            // namespace label removed): the platform team withdrew the permission, so the
            // access goes too (unless paused). Re-admitting authorizes afresh.
            if let Outcome::NotReady {
                reason: reasons::REF_NOT_PERMITTED,
                ..
            } = &outcome
                && !grant.is_paused()
                && let (Some(api_id), Some(app_id)) =
                    (status.api_id.clone(), status.application_id.clone())
            {
                revoke(ctx, grant, &api_id, &app_id).await?;
                status.api_id = None;
                status.application_id = None;
                status.audience = None;
                status.granted_scopes.clear();
                status.granted_scope_ids.clear();
            }
            // Access granted under a reference that no longer resolves (a missing or
            // not-Ready object) stays until the reference is fixed or the grant deleted;
            // status keeps what was granted.
            return Ok(outcome);
        }
    };
    let paused = grant.is_paused();

    // The reference moved to another application or API: cut the old pair first.
    if let (Some(old_api), Some(old_app)) = (status.api_id.clone(), status.application_id.clone())
        && (old_api != r.api_id || old_app != r.app_id)
    {
        if paused {
            return Ok(Outcome::Paused { ready: false });
        }
        // A rotation's predecessor keeps its access for the overlap; the application's
        // controller retires it.
        let rotated = old_api == r.api_id && retiring_clients(ctx, grant).contains(&old_app);
        if rotated {
            // The rotation authorized the successor with the scopes this grant recorded:
            // carry them over instead of granting them again.
            status.application_id = Some(r.app_id.clone());
        } else {
            revoke(ctx, grant, &old_api, &old_app).await?;
            status.api_id = None;
            status.application_id = None;
            status.granted_scopes.clear();
            status.granted_scope_ids.clear();
        }
    }

    let snapshot = match ctx.business.kinde_apis.get(&r.api_id).await {
        Ok(s) => s,
        Err(e) if e.is_not_found() => {
            // Deleted in Kinde: the ApiRegistration re-creates it; wait for that.
            ctx.business.kinde_apis.forget(&r.api_id).await;
            ctx.world
                .wake_apis
                .wake(&r.api.namespace().unwrap_or_default(), &r.api.name_any());
            return Ok(Outcome::not_ready(
                reasons::WAITING_FOR_API,
                format!(
                    "Kinde API {} is gone; waiting for it to be re-created",
                    r.api_id
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let authorized = snapshot.authorized_client_ids().any(|id| id == r.app_id);
    let applied: BTreeSet<String> =
        if authorized && status.application_id.as_deref() == Some(r.app_id.as_str()) {
            still_granted(status, &r.scopes)
        } else {
            BTreeSet::new()
        };
    let (to_add, to_remove) = scope_plan(&r.scopes, &applied);
    if paused {
        let in_sync = authorized && to_add.is_empty() && to_remove.is_empty();
        return Ok(Outcome::Paused { ready: in_sync });
    }

    let mut changes = Vec::new();
    status.application_id = Some(r.app_id.clone());
    status.api_id = Some(r.api_id.clone());
    status.audience = Some(r.audience.clone());
    if !authorized {
        // Record the pair before authorizing: a crash after the authorization (before the
        // final status) would otherwise leave deletion nothing to revoke.
        apply_status(ctx, grant, grant.status.as_ref(), status).await?;
        ctx.business
            .authorizer
            .submit(&r.api_id, &r.app_id, Authorization::Authorize)
            .await?;
        ctx.business
            .kinde_apis
            .note(&r.api_id, &r.app_id, Authorization::Authorize)
            .await;
        changes.push(format!(
            "authorized application {} for Kinde API {}",
            r.app_id, r.api_id
        ));
    }
    for (key, id) in &to_add {
        ctx.business
            .kinde
            .add_api_application_scope(&r.api_id, &r.app_id, id)
            .await?;
        changes.push(format!("granted {key}"));
    }
    for key in &to_remove {
        // The scope id comes from the API's status; a scope removed there is gone in Kinde.
        let id = r
            .api
            .status
            .as_ref()
            .and_then(|s| s.scopes.iter().find(|s| &&s.key == key))
            .map(|s| s.id.clone());
        if let Some(id) = id {
            match ctx
                .business
                .kinde
                .remove_api_application_scope(&r.api_id, &r.app_id, &id)
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        changes.push(format!("withdrew {key}"));
    }
    // Sorted, as Kinde and `kubectl get` show them.
    let keys: BTreeSet<String> = r.scopes.iter().map(|(k, _)| k.clone()).collect();
    status.granted_scopes = keys.into_iter().collect();
    status.granted_scope_ids = r.scopes.iter().map(|(_, id)| id.clone()).collect();
    if !changes.is_empty() {
        record_change(
            ctx,
            grant,
            "Granted",
            format!("{} ({})", changes.join(", "), r.app.name_any()),
        )
        .await;
    }
    Ok(Outcome::Ready)
}

//! ApiRegistration: a Kinde API (audience) and its scopes.
//!
//! Crash safety: audiences are unique in Kinde, so the audience is the idempotency key.
//! Before creating, the audience is written to `status.audience` (with no `apiId`); a
//! restart that finds that audience in Kinde with this marker set knows the API is its own
//! and adopts it as created, while an audience found without the marker is someone
//! else's (`AudienceInUse`).

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

mod decide;

pub(crate) use decide::scope_changes;
use decide::{audience_in_use, refuse_management, validate};

use super::kernel::{
    Error, Managed, Outcome, Result, Step, Stop, adoption_admitted, apply_status,
    effective_deletion_policy, is_older, record_change, wait_if_paused,
};
use super::world::{Ctx, World, wake_dependants_of_api};
use crate::adoption;
use crate::conditions::reasons;
use crate::crd::{
    ApiGrant, ApiRegistration, ApiRegistrationStatus, DeletionPolicy, KindeAnnotations, ScopeStatus,
};
use crate::kinde::KindeError;
use crate::kinde::types::ApiScope as KindeScope;

impl Managed for ApiRegistration {
    const KIND: &'static str = "ApiRegistration";

    type Status = ApiRegistrationStatus;
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
        wake_dependants_of_api(world, self);
    }

    async fn cleanup(obj: Arc<Self>, ctx: Arc<Ctx>) -> Result<Action> {
        let status = obj.status.clone().unwrap_or_default();
        let adopted = obj.external_id().is_some() || status.adopted_id.is_some();
        let mut policy = effective_deletion_policy(obj.spec.deletion_policy, adopted);
        let api_id = status.api_id.clone();
        if policy == DeletionPolicy::Delete && adopted && !ctx.adoption.allow_delete {
            // The adoption policy keeps adopted APIs out of reach, whatever the spec says.
            policy = DeletionPolicy::Orphan;
            record_change(
                &ctx,
                obj.as_ref(),
                "Orphaned",
                format!(
                    "left adopted Kinde API {} in Kinde: the adoption policy does not allow deleting adopted objects",
                    api_id.as_deref().unwrap_or("(none recorded)")
                ),
            )
            .await;
        }
        if policy == DeletionPolicy::Delete
            && let Some(id) = &api_id
        {
            let users = holders(&ctx, &obj, id);
            if !users.is_empty() {
                let names: Vec<String> = users
                    .iter()
                    .map(|g| format!("{}/{}", g.namespace().unwrap_or_default(), g.name_any()))
                    .collect();
                let message = format!(
                    "deletion waits: {} ApiGrant(s) still grant access to this API: {}",
                    names.len(),
                    names.join(", ")
                );
                return Err(Error::Blocked {
                    reason: reasons::IN_USE,
                    message,
                });
            }
        }
        wait_if_paused(obj.as_ref())?;
        let api_id = match api_id {
            Some(id) => Some(id),
            None if policy == DeletionPolicy::Delete => unrecorded_api(&ctx, &obj).await?,
            None => None,
        };
        if let (DeletionPolicy::Delete, Some(id)) = (policy, api_id) {
            match ctx.business.kinde.delete_api(&id).await {
                Ok(()) => {
                    record_change(
                        &ctx,
                        obj.as_ref(),
                        "Deleted",
                        format!("deleted Kinde API {id}"),
                    )
                    .await
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            ctx.business.kinde_apis.forget(&id).await;
        }
        Ok(Action::await_change())
    }
}

/// The grants that hold access to the Kinde API `api_id` through this ApiRegistration
/// (their status records the API): only they keep its deletion waiting. A grant the
/// `grantPolicy` refuses never records it, so no namespace can pin a platform API by
/// merely naming it.
fn holders(ctx: &Ctx, api: &ApiRegistration, api_id: &str) -> Vec<Arc<ApiGrant>> {
    ctx.world
        .grants_referencing(api)
        .into_iter()
        .filter(|g| {
            g.status
                .as_ref()
                .is_some_and(|s| s.api_id.as_deref() == Some(api_id))
        })
        .collect()
}

/// The API created for this object whose id never reached the status (a crash or a lost
/// response after the create): the status marks the intent with the audience, and an API
/// with that audience is then ours. No grant can use it yet (grants wait for `apiId`).
async fn unrecorded_api(ctx: &Ctx, obj: &ApiRegistration) -> Result<Option<String>> {
    let audience = obj.spec.audience.as_str();
    let marked = obj.status.as_ref().and_then(|s| s.audience.as_deref()) == Some(audience);
    if !marked || obj.external_id().is_some() {
        return Ok(None);
    }
    let apis = ctx.business.kinde.list_apis(false).await?;
    Ok(apis
        .into_iter()
        .find(|a| a.audience == audience && !a.is_management_api)
        .map(|a| a.id))
}

async fn converge(
    obj: &ApiRegistration,
    ctx: &Ctx,
    status: &mut ApiRegistrationStatus,
) -> Result<Outcome> {
    if let Some(problem) = validate(obj, status) {
        return Ok(Outcome::not_ready(reasons::INVALID_SPEC, problem));
    }
    let audience = obj.spec.audience.as_str();
    if audience.trim_end_matches('/') == ctx.business.kinde.management_audience() {
        return Ok(refuse_management(audience));
    }
    let paused = obj.is_paused();

    // Find, adopt or create the Kinde API. A second pass handles an API deleted in Kinde.
    let mut recreated = false;
    let (api_id, kinde_scopes) = loop {
        let api_id = match ensure_api(obj, ctx, status, paused).await {
            Ok(id) => id,
            Err(stop) => return stop.into_result(),
        };
        match ctx.business.kinde.list_api_scopes(&api_id).await {
            Ok(scopes) => break (api_id, scopes),
            Err(e) if e.is_not_found() && !recreated => {
                if obj.external_id().is_some() {
                    return Ok(Outcome::not_ready(
                        reasons::EXTERNAL_NOT_FOUND,
                        format!("the adopted Kinde API {api_id} no longer exists in Kinde"),
                    ));
                }
                record_change(
                    ctx,
                    obj,
                    "Recreating",
                    format!("Kinde API {api_id} was deleted in Kinde; creating it again"),
                )
                .await;
                ctx.business.kinde_apis.forget(&api_id).await;
                status.api_id = None;
                status.scopes.clear();
                recreated = true;
            }
            Err(e) => return Err(e.into()),
        }
    };

    let scopes = converge_scopes(obj, ctx, &api_id, kinde_scopes, paused).await?;
    status.scopes = obj
        .spec
        .scopes
        .iter()
        .filter_map(|want| {
            scopes
                .iter()
                .find(|s| s.key == want.key)
                .map(|s| ScopeStatus {
                    key: s.key.clone(),
                    id: s.id.clone(),
                })
        })
        .collect();
    let complete = status.scopes.len() == obj.spec.scopes.len();
    Ok(if paused {
        Outcome::Paused { ready: complete }
    } else {
        Outcome::Ready
    })
}

/// The id of the Kinde API, found, adopted or created; or why there is none.
async fn ensure_api(
    obj: &ApiRegistration,
    ctx: &Ctx,
    status: &mut ApiRegistrationStatus,
    paused: bool,
) -> Step<String> {
    let audience = obj.spec.audience.as_str();
    let external = obj.external_id();
    let adopted = status
        .adopted_id
        .clone()
        .filter(|a| status.api_id.as_deref() == Some(a.as_str()));
    // Adoption is the platform's to grant: checked before any Kinde call, and again on
    // every reconcile of an adopted API (the policy may have been withdrawn).
    if let Some(id) = external.or(adopted.as_deref()) {
        adoption_admitted(ctx, obj).await?;
        if let Err(refusal) =
            adoption::check_claims("Kinde API", id, &claims_on(ctx, obj, status, id, None))
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
    if let Some(id) = status.api_id.clone()
        && external.is_none_or(|e| e == id)
    {
        return Ok(id);
    }
    if let Some(ext) = external {
        let api = match ctx.business.kinde_apis.refresh(ext).await {
            Ok(api) => api,
            Err(e) if e.is_not_found() || matches!(e, KindeError::InvalidId { .. }) => {
                return Err(Stop::Outcome(Outcome::not_ready(
                    reasons::EXTERNAL_NOT_FOUND,
                    format!("no Kinde API with id {ext:?} (from the external-id annotation)"),
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let facts = adoption::ApiFacts {
            id: &api.id,
            audience: &api.audience,
            is_management_api: api.is_management_api,
        };
        let claims = claims_on(ctx, obj, status, ext, Some(&api.audience));
        if let Err(refusal) =
            adoption::check_api(&facts, &ctx.business.kinde.management_audience(), &claims)
        {
            return Err(Stop::Outcome(Outcome::refused(refusal)));
        }
        if api.audience != audience {
            return Err(Stop::Outcome(Outcome::not_ready(
                reasons::INVALID_SPEC,
                format!(
                    "Kinde API {ext} has audience {:?} but spec.audience is {audience:?}",
                    api.audience
                ),
            )));
        }
        status.api_id = Some(ext.to_owned());
        status.audience = Some(audience.to_owned());
        status.adopted_id = Some(ext.to_owned());
        apply_status(ctx, obj, obj.status.as_ref(), status).await?;
        record_change(
            ctx,
            obj,
            "Adopted",
            format!("adopted Kinde API {ext} ({audience})"),
        )
        .await;
        return Ok(ext.to_owned());
    }

    let existing = ctx.business.kinde.list_apis(false).await?;
    if let Some(found) = existing.iter().find(|a| a.audience == audience) {
        if found.is_management_api {
            return Err(Stop::Outcome(refuse_management(audience)));
        }
        // Our intent record makes an API with this audience ours, unless another
        // ApiRegistration holds it (its create won; ours was refused or is stale).
        let held_elsewhere = !claims_on(ctx, obj, status, &found.id, None).is_empty();
        if !held_elsewhere
            && status.audience.as_deref() != Some(audience)
            && obj.adopts_or_creates()
        {
            // Asked to take an existing API as its own (a rebuilt cluster): where the
            // platform allows adoption in this namespace.
            adoption_admitted(ctx, obj).await?;
            status.audience = Some(audience.to_owned());
            status.api_id = Some(found.id.clone());
            apply_status(ctx, obj, obj.status.as_ref(), status).await?;
            record_change(
                ctx,
                obj,
                "Recovered",
                format!(
                    "took existing Kinde API {} for {audience} as this object's own (adoption-policy: adopt-or-create)",
                    found.id
                ),
            )
            .await;
            return Ok(found.id.clone());
        }
        if status.audience.as_deref() != Some(audience) || held_elsewhere {
            if held_elsewhere {
                status.audience = None;
            }
            return Err(Stop::Outcome(audience_in_use(audience, &found.id)));
        }
        // Our own create from before a crash or a lost response.
        status.api_id = Some(found.id.clone());
        apply_status(ctx, obj, obj.status.as_ref(), status).await?;
        record_change(
            ctx,
            obj,
            "Created",
            format!("created Kinde API {} for {audience}", found.id),
        )
        .await;
        return Ok(found.id.clone());
    }
    if paused {
        return Err(Stop::Outcome(Outcome::Paused { ready: false }));
    }
    // Mark the intent first: a crash after the create is recognised as ours.
    status.audience = Some(audience.to_owned());
    status.api_id = None;
    apply_status(ctx, obj, obj.status.as_ref(), status).await?;
    let id = match ctx
        .business
        .kinde
        .create_api(&obj.display_name(), audience)
        .await
    {
        Ok(id) => id,
        Err(e) => {
            if e.created_nothing() {
                // Kinde made nothing (e.g. another namespace's ApiRegistration registered
                // the audience first): an API found with this audience later is not ours.
                status.audience = None;
            }
            return Err(e.into());
        }
    };
    status.api_id = Some(id.clone());
    let marked = ApiRegistrationStatus {
        audience: Some(audience.to_owned()),
        api_id: None,
        ..status.clone()
    };
    apply_status(ctx, obj, Some(&marked), status).await?;
    record_change(
        ctx,
        obj,
        "Created",
        format!("created Kinde API {id} for {audience}"),
    )
    .await;
    Ok(id)
}

/// Other ApiRegistrations' holds on the Kinde API `id` (or, with `audience`, on an API of
/// that audience they are creating): current, creating, or adopted by an older object.
fn claims_on(
    ctx: &Ctx,
    obj: &ApiRegistration,
    status: &ApiRegistrationStatus,
    id: &str,
    audience: Option<&str>,
) -> Vec<adoption::Claim> {
    let we_hold = status.api_id.as_deref() == Some(id);
    ctx.world
        .apis
        .find(|other| other.uid() != obj.uid())
        .iter()
        .filter_map(|other| {
            let s = other.status.clone().unwrap_or_default();
            let how = if s.api_id.as_deref() == Some(id) {
                "current"
            } else if s.api_id.is_none() && audience.is_some() && s.audience.as_deref() == audience
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

/// Adds, updates and removes Kinde scopes to match the spec (see
/// [`decide::scope_changes`]); returns the resulting scopes.
async fn converge_scopes(
    obj: &ApiRegistration,
    ctx: &Ctx,
    api_id: &str,
    mut kinde: Vec<KindeScope>,
    paused: bool,
) -> Result<Vec<KindeScope>> {
    let diff = scope_changes(&obj.spec.scopes, &kinde);
    if paused || diff.is_empty() {
        return Ok(kinde);
    }
    let mut changes = Vec::new();
    for (key, description) in &diff.add {
        let id = ctx
            .business
            .kinde
            .create_api_scope(api_id, key, description)
            .await?;
        kinde.push(KindeScope {
            id,
            key: key.clone(),
            description: Some(description.clone()),
        });
        changes.push(format!("added scope {key}"));
    }
    for (id, key, description) in &diff.describe {
        ctx.business
            .kinde
            .update_api_scope(api_id, id, description)
            .await?;
        if let Some(have) = kinde.iter_mut().find(|s| &s.id == id) {
            have.description = Some(description.clone());
        }
        changes.push(format!("updated description of scope {key}"));
    }
    for (id, key) in &diff.remove {
        match ctx.business.kinde.delete_api_scope(api_id, id).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        kinde.retain(|k| &k.id != id);
        changes.push(format!("removed scope {key}"));
    }
    record_change(
        ctx,
        obj,
        "ScopesUpdated",
        format!("Kinde API {api_id}: {}", changes.join(", ")),
    )
    .await;
    Ok(kinde)
}

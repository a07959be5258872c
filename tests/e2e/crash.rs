//! Crash safety: the real operator binary is SIGKILLed at each step of creating and
//! deleting Kinde objects, a fresh operator is started, and the Kinde objects are counted.
//! Whatever point the operator died at, there must be exactly one Kinde application and one
//! Kinde API per object (none after deletion), with the ids in status and the live
//! credentials in the Secret.
//!
//! Each crash window is hit deterministically, never by timing luck:
//! - a call that must not take effect is held by the emulator (`latency_ms`, then a 503
//!   without processing it): once the emulator has counted the call, the operator is
//!   blocked inside it, and it is killed there;
//! - a write that must take effect with the operator unaware of it uses `drop_response`
//!   (the write happens, the connection closes unanswered); a retry-safe call is retried by
//!   the client, so a held fault follows it to pin the operator down before the kill.
//!
//! The emulator is its own process, so its state survives the kills. Each test prints a
//! row (window, Kinde applications, Kinde APIs after the restart); the run prints them all
//! as a table at the end.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use k8s_openapi::api::core::v1::Namespace;
use kinde_m2m_operator::crd::{
    ApiGrant, ApiGrantStatus, ApiRegistration, ApiRegistrationStatus, DeletionPolicy,
    M2MApplication, M2MApplicationStatus, ScopeStatus,
};
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};

use crate::support::fixtures::{
    ApiFixture as _, AppFixture as _, GrantFixture as _, api_grant, api_registration,
    m2m_application,
};
use crate::support::{
    self, Credentials, Ctx, E2eTest, Emulator, Kind, Operator, kinde_apis_of, kinde_apps_of,
    merge_patch, strings, wait_for,
};

pub fn tests() -> Vec<E2eTest> {
    vec![
        // M2MApplication creation.
        support::test(
            "crash::app_create_killed_before_kinde",
            app_create_killed_before_kinde,
        ),
        support::test(
            "crash::app_create_killed_after_kinde_before_status",
            app_create_killed_after_kinde_before_status,
        ),
        support::test(
            "crash::app_create_killed_before_marker_rename",
            app_create_killed_before_marker_rename,
        ),
        support::test("crash::app_create_lost_response", app_create_lost_response),
        // ApiRegistration creation.
        support::test(
            "crash::api_create_killed_after_kinde_before_status",
            api_create_killed_after_kinde_before_status,
        ),
        support::test(
            "crash::api_create_killed_mid_scopes",
            api_create_killed_mid_scopes,
        ),
        support::test("crash::api_create_lost_response", api_create_lost_response),
        support::test("crash::api_scope_lost_response", api_scope_lost_response),
        // ApiGrant creation.
        support::test(
            "crash::grant_killed_after_authorize_before_status",
            grant_killed_after_authorize_before_status,
        ),
        support::test(
            "crash::grant_killed_after_scope_adds",
            grant_killed_after_scope_adds,
        ),
        // Deletion.
        support::test("crash::app_delete_killed_after_kinde", |ctx| {
            app_delete_killed_after_kinde(ctx, &[])
        }),
        support::test("crash::api_delete_killed_after_kinde", |ctx| {
            api_delete_killed_after_kinde(ctx, &[])
        }),
        // The same, with "not found" (the retried delete's answer) as 404.
        support::test(
            &format!(
                "crash::app_delete_killed_after_kinde{}",
                support::NOT_FOUND_404_SUFFIX
            ),
            |ctx| app_delete_killed_after_kinde(ctx, support::NOT_FOUND_404),
        ),
        support::test(
            &format!(
                "crash::api_delete_killed_after_kinde{}",
                support::NOT_FOUND_404_SUFFIX
            ),
            |ctx| api_delete_killed_after_kinde(ctx, support::NOT_FOUND_404),
        ),
        support::test(
            "crash::grant_delete_killed_after_kinde",
            grant_delete_killed_after_kinde,
        ),
        support::test(
            "crash::app_deleted_while_down_create_unrecorded",
            app_deleted_while_down_create_unrecorded,
        ),
        support::test(
            "crash::api_deleted_while_down_create_unrecorded",
            api_deleted_while_down_create_unrecorded,
        ),
        support::test(
            "crash::grant_deleted_while_down_authorize_unrecorded",
            grant_deleted_while_down_authorize_unrecorded,
        ),
        // Moves, drift and deletions behind the operator's back.
        support::test(
            "crash::grant_api_ref_moved_killed_before_authorize",
            grant_api_ref_moved_killed_before_authorize,
        ),
        support::test(
            "crash::api_recreated_after_kinde_delete_killed_in_create",
            api_recreated_after_kinde_delete_killed_in_create,
        ),
        support::test(
            "crash::api_scope_drift_killed_mid_correction",
            api_scope_drift_killed_mid_correction,
        ),
        support::test(
            "crash::api_scope_deleted_in_kinde_granted_again",
            api_scope_deleted_in_kinde_granted_again,
        ),
        support::test(
            "crash::namespace_deleted_while_down",
            namespace_deleted_while_down,
        ),
        support::test("crash::crds_deleted_while_down", crds_deleted_while_down),
    ]
}

const APP: &str = "app";
const API: &str = "api";
const GRANT: &str = "grant";
const DISPLAY_NAME: &str = "Crash Test App";
const AUDIENCE: &str = "https://crash.example.com";
const API_SCOPES: [&str; 2] = ["read:users", "write:flags"];
/// A second ApiRegistration (a grant's `apiRef` moves to it).
const API2: &str = "api2";
const AUDIENCE2: &str = "https://crash-moved.example.com";
const APP_CRD: &str = "m2mapplications.m2m.kinde-operator.io";
const API_CRD: &str = "apiregistrations.m2m.kinde-operator.io";
const GRANT_CRD: &str = "apigrants.m2m.kinde-operator.io";
/// How long a held call stays in the emulator: far beyond the kill.
const HOLD_MS: u64 = 300_000;
/// Waiting for convergence (an unknown outcome is retried after ~10 s).
const CONVERGE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------
// Creation windows
// ---------------------------------------------------------------------------------------

/// (a) Killed while `createApplication` is in flight and before it takes effect.
async fn app_create_killed_before_kinde(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.fault(json!({"operation": "createApplication", "latency_ms": HOLD_MS, "status": 503}))
        .await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.wait_calls("createApplication", 1).await?;
    f.kill();
    ensure!(
        f.kinde_apps().await?.is_empty(),
        "the held create must not have reached Kinde"
    );
    f.start()?;
    f.converged("app create: killed before Kinde", &API_SCOPES)
        .await
}

/// (b) Killed after `createApplication` happened in Kinde, before status recorded the id.
async fn app_create_killed_after_kinde_before_status(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.fault(json!({"operation": "createApplication", "drop_response": true}))
        .await?;
    f.start()?;
    // The application alone until the kill: a grant's status change would wake it at once
    // (its dependants do), and that reconcile could record the id before the kill.
    f.create_app().await?;
    f.wait_kinde("the created application in Kinde", |s| {
        !kinde_apps_of(s).is_empty()
    })
    .await?;
    f.kill();
    let status = f.app_status().await?;
    ensure!(
        status.application_id.is_none(),
        "the id must not be in status yet (window missed): {status:?}"
    );
    ensure!(
        marked(&f.kinde_apps().await?) == 1,
        "expected one marked application in Kinde"
    );
    f.apply(&[&api(API, AUDIENCE, &API_SCOPES), &grant(&API_SCOPES)])
        .await?;
    f.start()?;
    f.converged("app create: killed after Kinde, before status", &API_SCOPES)
        .await
}

/// (c) Killed after status recorded the id, before the marker is removed from the name.
async fn app_create_killed_before_marker_rename(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.fault(json!({"operation": "updateApplication", "latency_ms": HOLD_MS, "status": 503}))
        .await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.wait_calls("updateApplication", 1).await?;
    f.kill();
    let status = f.app_status().await?;
    let apps = f.kinde_apps().await?;
    ensure!(
        apps.len() == 1 && marked(&apps) == 1,
        "expected one application still carrying its marker: {apps:?}"
    );
    ensure!(
        status.application_id.as_deref() == apps[0]["id"].as_str(),
        "the id must be in status before the rename: {status:?}"
    );
    f.start()?;
    f.converged("app create: killed before marker rename", &API_SCOPES)
        .await
}

/// (d) The create's response is lost, no kill: the operator finds its application by
/// marker instead of creating a second one.
async fn app_create_lost_response(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.fault(json!({"operation": "createApplication", "drop_response": true}))
        .await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.converged("app create: lost response (no kill)", &API_SCOPES)
        .await?;
    let creates = f.emu.call_count("createApplication").await?;
    ensure!(
        creates == 1,
        "a create with an unknown outcome must not be repeated: {creates} creates"
    );
    Ok(())
}

/// Killed after `addAPIs` happened in Kinde, before status recorded the API id.
async fn api_create_killed_after_kinde_before_status(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.fault(json!({"operation": "addAPIs", "drop_response": true}))
        .await?;
    f.start()?;
    // The API alone until the kill: a grant's status change (its application getting
    // Ready) wakes the API at once, and that reconcile found the API by its audience and
    // recorded the id before the kill (seen on a loaded machine).
    f.create_api(&API_SCOPES).await?;
    f.wait_kinde("the created API in Kinde", |s| !kinde_apis_of(s).is_empty())
        .await?;
    f.kill();
    let status = f.api_status().await?;
    ensure!(
        status.api_id.is_none() && status.audience.as_deref() == Some(AUDIENCE),
        "expected the audience marked and no apiId in status (window missed): {status:?}"
    );
    f.apply(&[&app(), &grant(&API_SCOPES)]).await?;
    f.start()?;
    f.converged("api create: killed after Kinde, before status", &API_SCOPES)
        .await
}

/// Killed between two scope creations: the first scope is in Kinde, the second held.
async fn api_create_killed_mid_scopes(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    // Faults for one operation apply in order: the first scope passes, the second is held.
    f.fault(json!({"operation": "addAPIScope", "latency_ms": 1}))
        .await?;
    f.fault(json!({"operation": "addAPIScope", "latency_ms": HOLD_MS, "status": 503}))
        .await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.wait_calls("addAPIScope", 2).await?;
    f.kill();
    let apis = f.kinde_apis().await?;
    ensure!(
        apis.len() == 1 && apis[0]["scopes"].as_array().map(Vec::len) == Some(1),
        "expected one API with one scope at the kill: {apis:?}"
    );
    f.start()?;
    f.converged("api create: killed between scope creations", &API_SCOPES)
        .await
}

/// The `addAPIs` response is lost, no kill: the API is adopted by its audience.
async fn api_create_lost_response(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.fault(json!({"operation": "addAPIs", "drop_response": true}))
        .await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.converged("api create: lost response (no kill)", &API_SCOPES)
        .await?;
    let creates = f.emu.call_count("addAPIs").await?;
    ensure!(
        creates == 1,
        "a create with an unknown outcome must not be repeated: {creates} creates"
    );
    Ok(())
}

/// An `addAPIScope` response is lost, no kill: the scope is found, not created twice.
async fn api_scope_lost_response(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.fault(json!({"operation": "addAPIScope", "drop_response": true}))
        .await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.converged("api scope: lost response (no kill)", &API_SCOPES)
        .await?;
    let creates = f.emu.call_count("addAPIScope").await?;
    ensure!(
        creates == API_SCOPES.len() as u64,
        "a scope create with an unknown outcome must not be repeated: {creates} creates"
    );
    Ok(())
}

/// Killed after `updateAPIApplications` authorized the app, before status (the first
/// per-app scope add is held).
async fn grant_killed_after_authorize_before_status(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.fault(json!({"operation": "addAPIApplicationScope", "latency_ms": HOLD_MS, "status": 503}))
        .await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.wait_calls("addAPIApplicationScope", 1).await?;
    f.kill();
    ensure!(
        f.authorized_scopes().await?.is_some(),
        "the application must be authorized at the kill"
    );
    let status = f.grant_status().await?;
    ensure!(
        status.granted_scopes.is_empty(),
        "no scope may be recorded as granted yet (window missed): {status:?}"
    );
    f.start()?;
    f.converged("grant: killed after authorize, before status", &API_SCOPES)
        .await
}

/// Killed after both per-app scope adds happened, before status records them.
async fn grant_killed_after_scope_adds(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    // First add passes; the second is performed but its answer lost; the client's retry of
    // it (the call is retry-safe) is held.
    f.fault(json!({"operation": "addAPIApplicationScope", "latency_ms": 1}))
        .await?;
    f.fault(json!({"operation": "addAPIApplicationScope", "drop_response": true}))
        .await?;
    f.fault(json!({"operation": "addAPIApplicationScope", "latency_ms": HOLD_MS, "status": 503}))
        .await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.wait_calls("addAPIApplicationScope", 3).await?;
    f.kill();
    let granted = f.authorized_scopes().await?.unwrap_or_default();
    ensure!(
        granted.len() == 2,
        "both scopes must be granted in Kinde at the kill: {granted:?}"
    );
    let status = f.grant_status().await?;
    ensure!(
        status.granted_scopes.is_empty(),
        "no scope may be recorded as granted yet (window missed): {status:?}"
    );
    f.start()?;
    f.converged("grant: killed after per-app scope adds", &API_SCOPES)
        .await
}

// ---------------------------------------------------------------------------------------
// Deletion windows
// ---------------------------------------------------------------------------------------

/// A delete performed in Kinde whose answer is lost; the client's retry is held, and the
/// operator killed there: the Kinde object is gone, the finalizer still on.
async fn lose_delete_then_hold(f: &Rig, operation: &str) -> anyhow::Result<()> {
    f.fault(json!({"operation": operation, "drop_response": true}))
        .await?;
    f.fault(json!({"operation": operation, "latency_ms": HOLD_MS, "status": 503}))
        .await
}

/// M2MApplication deletion killed after `deleteApplication` happened in Kinde.
async fn app_delete_killed_after_kinde(
    ctx: Ctx,
    emulator_args: &'static [&'static str],
) -> anyhow::Result<()> {
    let mut f = Rig::new_with(ctx, emulator_args).await?;
    f.start()?;
    f.create_app().await?;
    f.wait_ready::<M2MApplication>(APP).await?;
    lose_delete_then_hold(&f, "deleteApplication").await?;
    f.delete::<M2MApplication>(APP).await?;
    f.wait_calls("deleteApplication", 2).await?;
    f.kill();
    ensure!(
        f.kinde_apps().await?.is_empty(),
        "the application must be gone from Kinde at the kill"
    );
    ensure!(
        f.exists::<M2MApplication>(APP).await?,
        "the finalizer must still hold the object at the kill"
    );
    f.start()?;
    f.gone::<M2MApplication>(APP).await?;
    f.no_failures().await?;
    // The restarted operator's delete met the object already gone in Kinde.
    f.emu.ensure_not_found_answered(emulator_args).await?;
    f.counted("app delete: killed after Kinde delete", 0, 0)
        .await
}

/// ApiRegistration deletion killed after `deleteAPI` happened in Kinde.
async fn api_delete_killed_after_kinde(
    ctx: Ctx,
    emulator_args: &'static [&'static str],
) -> anyhow::Result<()> {
    let mut f = Rig::new_with(ctx, emulator_args).await?;
    f.start()?;
    f.create_api(&API_SCOPES).await?;
    f.wait_ready::<ApiRegistration>(API).await?;
    lose_delete_then_hold(&f, "deleteAPI").await?;
    f.delete::<ApiRegistration>(API).await?;
    f.wait_calls("deleteAPI", 2).await?;
    f.kill();
    ensure!(
        f.kinde_apis().await?.is_empty(),
        "the API must be gone from Kinde at the kill"
    );
    ensure!(
        f.exists::<ApiRegistration>(API).await?,
        "the finalizer must still hold the object at the kill"
    );
    f.start()?;
    f.gone::<ApiRegistration>(API).await?;
    f.no_failures().await?;
    // The restarted operator's delete met the object already gone in Kinde.
    f.emu.ensure_not_found_answered(emulator_args).await?;
    f.counted("api delete: killed after Kinde delete", 0, 0)
        .await
}

/// ApiGrant deletion killed after the de-authorization happened in Kinde.
async fn grant_delete_killed_after_kinde(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.converged_quietly(&API_SCOPES).await?;
    let creds = f.credentials().await?;
    lose_delete_then_hold(&f, "updateAPIApplications").await?;
    let before = f.emu.call_count("updateAPIApplications").await?;
    f.delete::<ApiGrant>(GRANT).await?;
    f.wait_calls("updateAPIApplications", before + 2).await?;
    f.kill();
    ensure!(
        f.authorized_scopes().await?.is_none(),
        "the application must be de-authorized in Kinde at the kill"
    );
    ensure!(
        f.exists::<ApiGrant>(GRANT).await?,
        "the finalizer must still hold the grant at the kill"
    );
    f.start()?;
    f.gone::<ApiGrant>(GRANT).await?;
    f.no_failures().await?;
    ensure!(
        f.authorized_scopes().await?.is_none(),
        "the application must stay de-authorized"
    );
    let refused = f.emu.scp(&creds, AUDIENCE).await?.is_err();
    ensure!(
        refused,
        "a token for {AUDIENCE} must be refused after the grant's deletion"
    );
    f.counted("grant delete: killed after de-authorize", 1, 1)
        .await
}

/// Killed after `createApplication` happened, before status; the M2MApplication is
/// deleted while the operator is down: the restarted operator finds it by marker.
async fn app_deleted_while_down_create_unrecorded(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.fault(json!({"operation": "createApplication", "drop_response": true}))
        .await?;
    f.start()?;
    f.create_app().await?;
    f.wait_kinde("the created application in Kinde", |s| {
        !kinde_apps_of(s).is_empty()
    })
    .await?;
    f.kill();
    ensure!(
        f.app_status().await?.application_id.is_none(),
        "the id must not be in status (window missed)"
    );
    f.delete::<M2MApplication>(APP).await?;
    f.start()?;
    f.gone::<M2MApplication>(APP).await?;
    f.counted("app delete while down: create unrecorded", 0, 0)
        .await
}

/// Killed after `addAPIs` happened, before status recorded its id; the ApiRegistration is
/// deleted while the operator is down: the restarted operator finds the API by audience.
async fn api_deleted_while_down_create_unrecorded(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.fault(json!({"operation": "addAPIs", "drop_response": true}))
        .await?;
    f.start()?;
    f.create_api(&API_SCOPES).await?;
    f.wait_kinde("the created API in Kinde", |s| !kinde_apis_of(s).is_empty())
        .await?;
    f.kill();
    ensure!(
        f.api_status().await?.api_id.is_none(),
        "the id must not be in status (window missed)"
    );
    f.delete::<ApiRegistration>(API).await?;
    f.start()?;
    f.gone::<ApiRegistration>(API).await?;
    f.counted("api delete while down: create unrecorded", 0, 0)
        .await
}

/// Killed after the authorization happened, before the grant's status recorded anything
/// granted; the grant is deleted while the operator is down: no authorization may remain.
async fn grant_deleted_while_down_authorize_unrecorded(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.fault(json!({"operation": "addAPIApplicationScope", "latency_ms": HOLD_MS, "status": 503}))
        .await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.wait_calls("addAPIApplicationScope", 1).await?;
    f.kill();
    ensure!(
        f.authorized_scopes().await?.is_some(),
        "the application must be authorized at the kill"
    );
    f.delete::<ApiGrant>(GRANT).await?;
    f.start()?;
    f.gone::<ApiGrant>(GRANT).await?;
    ensure!(
        f.authorized_scopes().await?.is_none(),
        "the deleted grant left the application authorized for the API in Kinde"
    );
    f.counted("grant delete while down: authorize unrecorded", 1, 1)
        .await
}

// ---------------------------------------------------------------------------------------
// Moves, drift and deletions behind the operator's back
// ---------------------------------------------------------------------------------------

/// An ApiGrant's `spec.apiRef` moves to another ApiRegistration; the operator is killed
/// between de-authorizing the old pair (the first `updateAPIApplications`, which passes)
/// and authorizing the new one (the second, held). After the restart the application holds
/// the grant's scopes on the new API only.
async fn grant_api_ref_moved_killed_before_authorize(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.converged_quietly(&API_SCOPES).await?;
    f.apply(&[&api(API2, AUDIENCE2, &API_SCOPES)]).await?;
    let api2_id = f
        .wait_ready::<ApiRegistration>(API2)
        .await?
        .status_or_default()
        .api_id;
    ensure!(api2_id.is_some(), "no apiId for {API2}");
    let creds = f.credentials().await?;
    f.fault(json!({"operation": "updateAPIApplications", "latency_ms": 1}))
        .await?;
    f.fault(json!({"operation": "updateAPIApplications", "latency_ms": HOLD_MS, "status": 503}))
        .await?;
    let before = f.emu.call_count("updateAPIApplications").await?;
    f.merge::<ApiGrant>(GRANT, json!({"spec": {"apiRef": {"name": API2}}}))
        .await?;
    f.wait_calls("updateAPIApplications", before + 2).await?;
    f.kill();
    ensure!(
        f.scopes_on(AUDIENCE).await?.is_none(),
        "the old pair must be de-authorized in Kinde at the kill"
    );
    ensure!(
        f.scopes_on(AUDIENCE2).await?.is_none(),
        "the held authorization must not have reached Kinde"
    );
    let status = f.grant_status().await?;
    ensure!(
        status.api_id == api2_id,
        "the new pair must be recorded before it is authorized (window missed): {status:?}"
    );
    f.start()?;
    let r = async {
        let grant = f.wait_ready::<ApiGrant>(GRANT).await?.status_or_default();
        f.wait_ready::<M2MApplication>(APP).await?;
        f.wait_ready::<ApiRegistration>(API).await?;
        f.wait_ready::<ApiRegistration>(API2).await?;
        let apps = f.kinde_apps().await?;
        ensure!(
            apps.len() == 1 && marked(&apps) == 0 && apps[0]["name"] == DISPLAY_NAME,
            "expected one unmarked Kinde application: {apps:?}"
        );
        ensure!(
            grant.api_id == api2_id && grant.audience.as_deref() == Some(AUDIENCE2),
            "the grant's status must name the new API: {grant:?}"
        );
        let want = support::sorted(&API_SCOPES);
        let mut on_new = f
            .scopes_on(AUDIENCE2)
            .await?
            .context("the application is not authorized for the new API")?;
        on_new.sort();
        ensure!(
            on_new == want,
            "scopes on the new API {on_new:?}, expected {want:?}"
        );
        ensure!(
            f.scopes_on(AUDIENCE).await?.is_none(),
            "the application is still authorized for the old API"
        );
        let scp = f
            .emu
            .scp(&creds, AUDIENCE2)
            .await?
            .map_err(|e| anyhow!("token for the new audience refused: {e}"))?;
        ensure!(scp == want, "token scopes {scp:?}, expected {want:?}");
        ensure!(
            f.emu.scp(&creds, AUDIENCE).await?.is_err(),
            "a token for the old audience {AUDIENCE} must be refused"
        );
        // The application's Secret follows the grant to the new audience.
        wait_for("KINDE_AUDIENCE to name the new API", CONVERGE, || async {
            let audience = f.credentials().await?.audience;
            Ok((audience == AUDIENCE2).then_some(()))
        })
        .await
    }
    .await;
    f.explain(r)?;
    f.no_failures().await?;
    f.counted("grant apiRef moved: killed before authorize", 1, 2)
        .await
}

/// The API is deleted in Kinde behind the operator's back; the operator is killed while it
/// re-creates it (`addAPIs` held). After the restart there is one API again (a new id), with
/// its scopes, and the grant authorizes the application on it.
async fn api_recreated_after_kinde_delete_killed_in_create(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.converged_quietly(&API_SCOPES).await?;
    let old_id = f.api_status().await?.api_id.unwrap_or_default();
    // The hold first: a reconcile that notices the deletion before the poke (a late wake
    // from the setup) is held too.
    f.fault(json!({"operation": "addAPIs", "latency_ms": HOLD_MS, "status": 503}))
        .await?;
    let before = f.emu.call_count("addAPIs").await?;
    f.emu.mgmt_delete(&format!("/api/v1/apis/{old_id}")).await?;
    f.poke::<ApiRegistration>(API).await?;
    f.wait_calls("addAPIs", before + 1).await?;
    f.kill();
    ensure!(
        f.kinde_apis().await?.is_empty(),
        "the held re-create must not have reached Kinde"
    );
    let status = f.api_status().await?;
    ensure!(
        status.api_id.is_none() && status.audience.as_deref() == Some(AUDIENCE),
        "expected the intent marked (audience, no apiId) at the kill (window missed): {status:?}"
    );
    f.start()?;
    // Ready is still True from before the deletion (only an annotation changed since), and
    // the new id is recorded right after the create, before the scopes exist: wait for the
    // new id with every scope recorded before checking the rest.
    let r = wait_for("a new apiId and its scopes in status", CONVERGE, || async {
        let status = f.api_status().await?;
        let id = status.api_id.unwrap_or_default();
        let scopes = status.scopes.len();
        Ok((!id.is_empty() && id != old_id && scopes == API_SCOPES.len()).then_some(()))
    })
    .await;
    f.explain(r)?;
    f.converged(
        "api re-created after Kinde delete: killed in addAPIs",
        &API_SCOPES,
    )
    .await
}

/// Scope drift: in Kinde, one of the API's scopes is deleted and a foreign one added while
/// the operator is down (done while it runs, a reconcile could correct it before the hold is
/// in place). The restarted operator is killed while it re-creates the missing scope
/// (`addAPIScope` held), restarted, killed again while it deletes the foreign one
/// (`deleteAPIScope` held), and restarted: the API ends with exactly its declared scopes,
/// status names their Kinde ids, the grant's scopes are granted (the re-created scope has a
/// new id, and deleting a scope in Kinde took it from the application) and a token carries
/// them.
async fn api_scope_drift_killed_mid_correction(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.converged_quietly(&API_SCOPES).await?;
    f.kill();
    let status = f.api_status().await?;
    let api_id = status.api_id.clone().unwrap_or_default();
    let dropped = API_SCOPES[1];
    let dropped_id = scope_id(&status.scopes, dropped).context("no scope id in status")?;
    f.emu
        .mgmt_delete(&format!("/api/v1/apis/{api_id}/scopes/{dropped_id}"))
        .await?;
    f.emu
        .mgmt(
            reqwest::Method::POST,
            &format!("/api/v1/apis/{api_id}/scopes"),
            Some(json!({"key": "foreign:scope", "description": "added in Kinde"})),
        )
        .await?;

    f.fault(json!({"operation": "addAPIScope", "latency_ms": HOLD_MS, "status": 503}))
        .await?;
    let adds = f.emu.call_count("addAPIScope").await?;
    f.start()?;
    f.wait_calls("addAPIScope", adds + 1).await?;
    f.kill();
    let keys = f.kinde_scope_keys().await?;
    ensure!(
        keys == ["foreign:scope", API_SCOPES[0]],
        "expected the drifted scopes at the first kill: {keys:?}"
    );

    f.fault(json!({"operation": "deleteAPIScope", "latency_ms": HOLD_MS, "status": 503}))
        .await?;
    let deletes = f.emu.call_count("deleteAPIScope").await?;
    f.start()?;
    f.wait_calls("deleteAPIScope", deletes + 1).await?;
    f.kill();
    let keys = f.kinde_scope_keys().await?;
    ensure!(
        keys == ["foreign:scope", API_SCOPES[0], API_SCOPES[1]],
        "expected the missing scope back and the foreign one still there at the second kill: {keys:?}"
    );

    f.start()?;
    // Ready is still True from before (no status was written since): wait until status
    // names the re-created scope's new id before checking the rest.
    let r = wait_for("status to name the re-created scope", CONVERGE, || async {
        let ids: Vec<String> = f
            .api_status()
            .await?
            .scopes
            .into_iter()
            .filter(|s| s.key == dropped)
            .map(|s| s.id)
            .collect();
        Ok((ids.len() == 1 && ids[0] != dropped_id).then_some(()))
    })
    .await;
    f.explain(r)?;
    let r = async {
        f.wait_ready::<ApiRegistration>(API).await?;
        f.wait_ready::<M2MApplication>(APP).await?;
        f.wait_ready::<ApiGrant>(GRANT).await?;
        let keys = f.kinde_scope_keys().await?;
        ensure!(
            keys == API_SCOPES,
            "the API must end with exactly its declared scopes: {keys:?}"
        );
        let apis = f.kinde_apis().await?;
        let mut kinde = kinde_scope_pairs(&apis[0]);
        let mut recorded = scope_pairs(&f.api_status().await?.scopes);
        kinde.sort();
        recorded.sort();
        ensure!(
            kinde == recorded,
            "API scopes in Kinde {kinde:?} vs status {recorded:?}"
        );
        let apps = f.kinde_apps().await?;
        ensure!(
            apps.len() == 1 && marked(&apps) == 0,
            "expected one unmarked application: {apps:?}"
        );
        Ok(())
    }
    .await;
    f.explain(r)?;
    f.no_failures().await?;
    // The grant's side of a re-created scope is `api_scope_deleted_in_kinde_granted_again`.
    f.counted("api scope drift: killed in add, then in delete", 1, 1)
        .await
}

/// A scope deleted in Kinde is re-created by the ApiRegistration with a new id; Kinde took
/// the deleted scope from every application, so the grant must grant the new one again: a
/// token with the Secret's credentials carries every scope of the grant. (No kill: this is
/// the end state the crash windows above rely on.)
async fn api_scope_deleted_in_kinde_granted_again(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.converged_quietly(&API_SCOPES).await?;
    let status = f.api_status().await?;
    let api_id = status.api_id.clone().unwrap_or_default();
    let dropped = API_SCOPES[1];
    let dropped_id = scope_id(&status.scopes, dropped).context("no scope id in status")?;
    f.emu
        .mgmt_delete(&format!("/api/v1/apis/{api_id}/scopes/{dropped_id}"))
        .await?;
    f.poke::<ApiRegistration>(API).await?;
    let r = wait_for("status to name the re-created scope", CONVERGE, || async {
        let ids: Vec<String> = f
            .api_status()
            .await?
            .scopes
            .into_iter()
            .filter(|s| s.key == dropped)
            .map(|s| s.id)
            .collect();
        Ok((ids.len() == 1 && ids[0] != dropped_id).then_some(()))
    })
    .await;
    f.explain(r)?;
    // The grant's Ready is still True from before: wait for what it must bring about.
    let creds = f.credentials().await?;
    let r = f.emu.wait_scp(&creds, AUDIENCE, &API_SCOPES).await;
    f.explain(r)?;
    f.converged("api scope re-created: granted again (no kill)", &API_SCOPES)
        .await
}

/// The namespace is deleted while the operator is down: the namespace controller marks the
/// three objects deleted, and their finalizers hold them (and the namespace). After the
/// restart the operator cleans up per deletion policy (the API, `Delete`, is deleted in
/// Kinde once the grant is gone; the application, `Orphan`, stays) and the namespace
/// finishes deleting.
async fn namespace_deleted_while_down(ctx: Ctx) -> anyhow::Result<()> {
    let mut f = Rig::new(ctx).await?;
    f.start()?;
    f.apply(&[
        &api(API, AUDIENCE, &API_SCOPES),
        &app().with_deletion_policy(DeletionPolicy::Orphan),
        &grant(&API_SCOPES),
    ])
    .await?;
    f.converged_quietly(&API_SCOPES).await?;
    let app_id = f.app_status().await?.application_id;
    let creds = f.credentials().await?;
    f.kill();

    let namespaces = Api::<Namespace>::all(f.ctx.client.clone());
    namespaces
        .delete(&f.ctx.ns, &DeleteParams::background())
        .await?;
    let r = wait_for(
        "the namespace controller to mark all three objects deleted",
        CONVERGE,
        || async {
            let mut pending = Vec::new();
            for (kind, deleting) in [
                ("M2MApplication", f.deleting::<M2MApplication>(APP).await?),
                ("ApiRegistration", f.deleting::<ApiRegistration>(API).await?),
                ("ApiGrant", f.deleting::<ApiGrant>(GRANT).await?),
            ] {
                if !deleting.with_context(|| format!("{kind} gone while the operator is down"))? {
                    pending.push(kind);
                }
            }
            if pending.is_empty() {
                Ok(Some(()))
            } else {
                Err(anyhow!("not marked deleted yet: {pending:?}"))
            }
        },
    )
    .await;
    f.explain(r)?;
    ensure!(
        f.scopes_on(AUDIENCE).await?.is_some(),
        "nothing may change in Kinde while the operator is down"
    );

    f.start()?;
    let r = wait_for("the namespace to finish deleting", CONVERGE, || async {
        match namespaces.get_opt(&f.ctx.ns).await? {
            None => Ok(Some(())),
            Some(n) => Err(anyhow!("still there: {:?}", n.status)),
        }
    })
    .await;
    f.explain(r)?;
    let apps = f.kinde_apps().await?;
    ensure!(
        apps.len() == 1 && apps[0]["id"].as_str() == app_id.as_deref() && marked(&apps) == 0,
        "the orphaned application must stay in Kinde, unmarked: {apps:?}"
    );
    ensure!(
        f.emu.scp(&creds, AUDIENCE).await?.is_err(),
        "a token for {AUDIENCE} must be refused once the API is deleted"
    );
    f.counted("namespace deleted while down", 1, 0).await
}

/// CRDs deleted while the operator is down, on a private control plane (the shared one's
/// CRDs serve every other test).
///
/// What must happen: a CRD's deletion waits for its objects, and their finalizers hold them
/// until the operator has undone them in Kinde. So (1) with the ApiGrant CRD deleted, the
/// restarted operator revokes the grant (token refused), its finalizer goes, the CRD
/// finishes deleting, and the operator keeps working for the other kinds (a rename still
/// reaches Kinde). (2) When the remaining CRDs are gone for good before the restart (their
/// objects' finalizers removed by hand), the operator has nothing to act on: it refuses to
/// start with an error naming the missing kind (no panic), and writes nothing to Kinde
/// (what the released objects stood for stays there, no duplicates).
async fn crds_deleted_while_down(ctx: Ctx) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    let dir = ctx
        .harness
        .run_dir
        .join(format!("cp-crash-crds-{}", fastrand::u32(..)));
    let cp = tokio::task::spawn_blocking(move || {
        support::ControlPlane::start(&dir, Some(std::process::id()))
    })
    .await??;
    let client = cp.client().await?;
    let crds_dir = support::repo_path("crds");
    let out = tokio::process::Command::new(ctx.harness.kubectl_bin()?)
        .args(["apply", "--validate=false", "-f"])
        .arg(&crds_dir)
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "installing the CRDs on the private control plane: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = [APP_CRD, API_CRD, GRANT_CRD].map(String::from);
    support::wait_crds_established(&client, &names, CONVERGE).await?;
    let ns = support::create_namespace(&client, &ctx.test_name, &[]).await?;
    let private = Ctx {
        client: client.clone(),
        ns,
        ..ctx.clone()
    };
    let mut f = Rig::new(private).await?;
    f.kubeconfig = Some(cp.kubeconfig.clone());
    f.start()?;
    f.create_all(&API_SCOPES).await?;
    f.converged_quietly(&API_SCOPES).await?;
    let creds = f.credentials().await?;
    let app_id = f.app_status().await?.application_id;
    f.kill();

    // (1) The ApiGrant CRD.
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.delete(GRANT_CRD, &DeleteParams::background()).await?;
    let r = wait_for(
        "the ApiGrant marked deleted with its CRD",
        CONVERGE,
        || async {
            let deleting = f.deleting::<ApiGrant>(GRANT).await?.context("grant gone")?;
            Ok(deleting.then_some(()))
        },
    )
    .await;
    f.explain(r)?;
    f.start()?;
    let r = wait_for("the ApiGrant CRD to finish deleting", CONVERGE, || async {
        Ok(crds.get_opt(GRANT_CRD).await?.is_none().then_some(()))
    })
    .await;
    f.explain(r)?;
    ensure!(
        f.scopes_on(AUDIENCE).await?.is_none(),
        "the deleted grant left the application authorized in Kinde"
    );
    ensure!(
        f.emu.scp(&creds, AUDIENCE).await?.is_err(),
        "a token for {AUDIENCE} must be refused once the grant is gone"
    );
    f.merge::<M2MApplication>(
        APP,
        json!({"spec": {"displayName": "Renamed After CRD Loss"}}),
    )
    .await?;
    let r = f
        .wait_kinde("the rename to reach Kinde", |s| {
            kinde_apps_of(s)
                .iter()
                .any(|a| a["name"] == "Renamed After CRD Loss")
        })
        .await;
    f.explain(r)?;
    f.wait_ready::<M2MApplication>(APP).await?;
    f.wait_ready::<ApiRegistration>(API).await?;
    ensure!(
        f.running(),
        "the operator exited after the ApiGrant CRD went"
    );
    f.counted("ApiGrant CRD deleted while down", 1, 1).await?;

    // (2) The other CRDs, gone for good before the restart.
    f.kill();
    for crd in [APP_CRD, API_CRD] {
        crds.delete(crd, &DeleteParams::background()).await?;
    }
    let r = wait_for(
        "the objects released by hand and the CRDs gone",
        CONVERGE,
        || async {
            // Removing the finalizers is what an administrator does to force a deletion;
            // it leaves the Kinde objects behind, by definition.
            for (name, kind_crd) in [(APP, APP_CRD), (API, API_CRD)] {
                let unfinalize = json!({"metadata": {"finalizers": null}});
                let _ = match kind_crd {
                    APP_CRD => f.merge::<M2MApplication>(name, unfinalize).await,
                    _ => f.merge::<ApiRegistration>(name, unfinalize).await,
                };
            }
            let left: Vec<&str> = {
                let mut left = Vec::new();
                for crd in [APP_CRD, API_CRD] {
                    if crds.get_opt(crd).await?.is_some() {
                        left.push(crd);
                    }
                }
                left
            };
            if left.is_empty() {
                Ok(Some(()))
            } else {
                Err(anyhow!("CRDs still there: {left:?}"))
            }
        },
    )
    .await;
    f.explain(r)?;
    let writes = f.emu.total_writes().await?;
    f.start()?;
    // It checks its CRDs before starting the controllers: it must exit with an error that
    // names the missing kind (a crash-looping pod with a clear message), not panic.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let status = loop {
        if let Some(status) = f.exit_status() {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            return f.explain(Err(anyhow!(
                "the operator is still running after {CONVERGE:?} without its CRDs"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        !status.success(),
        "the operator exited successfully without its CRDs"
    );
    let text = std::fs::read_to_string(f.logs.last().context("no operator log")?)?;
    ensure!(
        missing_crd_reported(&text) && !text.contains("panicked"),
        "expected a clear error naming the missing CRDs, and no panic:\n{}",
        f.log_tail()
    );
    ensure!(
        f.emu.total_writes().await? == writes,
        "the operator wrote to Kinde without its CRDs"
    );
    let apps = f.kinde_apps().await?;
    ensure!(
        apps.len() == 1 && apps[0]["id"].as_str() == app_id.as_deref(),
        "expected the one application left behind: {apps:?}"
    );
    f.counted("all CRDs deleted while down", 1, 1).await
}

/// Whether an operator log says that a kind cannot be queried and points at the CRDs.
fn missing_crd_reported(log: &str) -> bool {
    log.lines().any(|l| {
        ["ApiRegistration", "M2MApplication", "ApiGrant"]
            .iter()
            .any(|k| l.contains(&format!("{k} not queryable")))
            && l.contains("CRDs")
    })
}

// ---------------------------------------------------------------------------------------
// Rig
// ---------------------------------------------------------------------------------------

/// The application of every crash test.
fn app() -> M2MApplication {
    m2m_application(APP).with_display_name(DISPLAY_NAME)
}

/// An ApiRegistration `name` for `audience` with `scopes`.
fn api(name: &str, audience: &str, scopes: &[&str]) -> ApiRegistration {
    scopes.iter().fold(
        api_registration(name, audience).with_display_name("Crash Test API"),
        |api, k| api.with_scope(k, &format!("scope {k}")),
    )
}

/// The grant of `scopes` on [`API`] to [`APP`].
fn grant(scopes: &[&str]) -> ApiGrant {
    api_grant(GRANT, APP, API).with_scopes(scopes)
}

/// One test's emulator, operator and objects.
struct Rig {
    ctx: Ctx,
    emu: Emulator,
    operator: Option<Operator>,
    /// Every operator started so far, for failure messages.
    logs: Vec<std::path::PathBuf>,
    /// Another control plane to run the operator against (default: the run's).
    kubeconfig: Option<std::path::PathBuf>,
}

impl Rig {
    async fn new(ctx: Ctx) -> anyhow::Result<Self> {
        Self::new_with(ctx, &[]).await
    }

    /// A rig whose emulator gets `emulator_args` (e.g. [`support::NOT_FOUND_404`]).
    async fn new_with(ctx: Ctx, emulator_args: &[&str]) -> anyhow::Result<Self> {
        ctx.harness.ensure_crds().await?;
        let emu = ctx.own_emulator_with(emulator_args)?;
        Ok(Self {
            ctx,
            emu,
            operator: None,
            logs: Vec::new(),
            kubeconfig: None,
        })
    }

    /// Starts a fresh operator (the previous one must have been killed).
    fn start(&mut self) -> anyhow::Result<()> {
        let op = match &self.kubeconfig {
            None => self.ctx.run_operator(&self.emu, &[], "10m", &[])?,
            Some(kubeconfig) => Operator::start_in(
                self.ctx.harness,
                &self.ctx.test_name,
                kubeconfig,
                &self.emu.url,
                &[
                    "run",
                    "--leader-election=false",
                    "--listen",
                    "127.0.0.1:0",
                    "--resync-period",
                    "10m",
                    "--namespace",
                    &self.ctx.ns,
                ],
            )?,
        };
        self.logs.push(op.log.clone());
        self.operator = Some(op);
        Ok(())
    }

    /// The current operator's exit status, once it has exited.
    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.operator.as_mut().and_then(Operator::exit_status)
    }

    /// Whether the current operator is still running.
    fn running(&mut self) -> bool {
        self.operator.as_mut().is_some_and(Operator::is_running)
    }

    /// SIGKILLs the running operator.
    fn kill(&mut self) {
        if let Some(mut op) = self.operator.take() {
            op.kill();
        }
    }

    fn log_tail(&self) -> String {
        self.logs
            .iter()
            .enumerate()
            .map(|(i, log)| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(25)..].join("\n");
                format!("--- operator #{} ({}):\n{tail}", i + 1, log.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Adds context (operator logs) to a failure.
    fn explain<T>(&self, r: anyhow::Result<T>) -> anyhow::Result<T> {
        r.map_err(|e| e.context(format!("operator logs:\n{}", self.log_tail())))
    }

    async fn fault(&self, fault: Value) -> anyhow::Result<()> {
        self.emu.fault(fault).await
    }

    // --- objects ----------------------------------------------------------------------

    async fn apply(&self, objects: &[&dyn support::fixtures::Apply]) -> anyhow::Result<()> {
        self.ctx.apply(objects).await
    }

    async fn create_app(&self) -> anyhow::Result<()> {
        self.apply(&[&app()]).await
    }

    async fn create_api(&self, scopes: &[&str]) -> anyhow::Result<()> {
        self.apply(&[&api(API, AUDIENCE, scopes)]).await
    }

    /// The application, the API with `scopes`, and a grant of all of them.
    async fn create_all(&self, scopes: &[&str]) -> anyhow::Result<()> {
        self.apply(&[&api(API, AUDIENCE, scopes), &app(), &grant(scopes)])
            .await
    }

    async fn get<K: Kind>(&self, name: &str) -> anyhow::Result<Option<K>> {
        Ok(self.ctx.api::<K>().get_opt(name).await?)
    }

    /// Whether the object is being deleted (`None` when it is gone).
    async fn deleting<K: Kind>(&self, name: &str) -> anyhow::Result<Option<bool>> {
        Ok(self
            .get::<K>(name)
            .await?
            .map(|o| o.meta().deletion_timestamp.is_some()))
    }

    async fn status<K: Kind>(&self, name: &str) -> anyhow::Result<K::Status> {
        let obj = self
            .get::<K>(name)
            .await?
            .with_context(|| format!("{} {name} does not exist", K::kind(&())))?;
        Ok(obj.status_or_default())
    }

    async fn app_status(&self) -> anyhow::Result<M2MApplicationStatus> {
        self.status::<M2MApplication>(APP).await
    }

    async fn api_status(&self) -> anyhow::Result<ApiRegistrationStatus> {
        self.status::<ApiRegistration>(API).await
    }

    async fn grant_status(&self) -> anyhow::Result<ApiGrantStatus> {
        self.status::<ApiGrant>(GRANT).await
    }

    async fn exists<K: Kind>(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.get::<K>(name).await?.is_some())
    }

    /// A JSON merge patch of the object.
    async fn merge<K: Kind>(&self, name: &str, patch: Value) -> anyhow::Result<()> {
        merge_patch(&self.ctx.api::<K>(), name, patch).await
    }

    /// Changes an annotation the operator does not read: an immediate reconcile (it stands
    /// in for the drift-detecting resync, which the tests run at 10 minutes).
    async fn poke<K: Kind>(&self, name: &str) -> anyhow::Result<()> {
        support::poke(&self.ctx.api::<K>(), name).await
    }

    async fn delete<K: Kind>(&self, name: &str) -> anyhow::Result<()> {
        support::delete(&self.ctx.api::<K>(), name).await
    }

    /// Waits for `Ready=True` for the current generation.
    async fn wait_ready<K: Kind>(&self, name: &str) -> anyhow::Result<K> {
        let r = support::wait_ready_current(&self.ctx.api::<K>(), name).await;
        self.explain(r)
    }

    /// Waits until the object is gone from Kubernetes (finalizer removed).
    async fn gone<K: Kind>(&self, name: &str) -> anyhow::Result<()> {
        let r = support::wait_gone(&self.ctx.api::<K>(), name).await;
        self.explain(r)
    }

    // --- Kinde ------------------------------------------------------------------------

    async fn kinde_apps(&self) -> anyhow::Result<Vec<Value>> {
        self.emu.kinde_apps().await
    }

    async fn kinde_apis(&self) -> anyhow::Result<Vec<Value>> {
        self.emu.kinde_apis().await
    }

    /// The scope keys of the (only) application on the Kinde API for `audience`, `None`
    /// when it is not authorized there (or either is missing).
    async fn scopes_on(&self, audience: &str) -> anyhow::Result<Option<Vec<String>>> {
        let state = self.emu.state().await?;
        let apps = kinde_apps_of(&state);
        let apis = kinde_apis_of(&state);
        let (Some(api), Some(app)) = (
            apis.iter().find(|a| a["audience"] == audience),
            apps.first(),
        ) else {
            return Ok(None);
        };
        Ok(scopes_of(api, app))
    }

    /// The scope keys of the (only) Kinde API, sorted.
    async fn kinde_scope_keys(&self) -> anyhow::Result<Vec<String>> {
        let apis = self.kinde_apis().await?;
        ensure!(apis.len() == 1, "expected one Kinde API: {apis:?}");
        Ok(support::scope_keys(&apis[0]))
    }

    /// The scopes the (only) application holds on the (only) API, `None` when it is not
    /// authorized (or either is missing).
    async fn authorized_scopes(&self) -> anyhow::Result<Option<Vec<String>>> {
        let apis = self.kinde_apis().await?;
        let apps = self.kinde_apps().await?;
        let (Some(api), Some(app)) = (apis.first(), apps.first()) else {
            return Ok(None);
        };
        Ok(scopes_of(api, app))
    }

    /// Waits until the emulator has counted `n` calls of `operation` (a held call counts on
    /// arrival: the operator is then blocked inside it).
    async fn wait_calls(&self, operation: &str, n: u64) -> anyhow::Result<()> {
        let r = self.emu.wait_calls(operation, n).await;
        self.explain(r)
    }

    /// Waits until the emulator's state satisfies `pred`.
    async fn wait_kinde(&self, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<()> {
        let r = wait_for(what, support::WAIT, || async {
            Ok(pred(&self.emu.state().await?).then_some(()))
        })
        .await;
        self.explain(r)
    }

    /// The credentials in the app's Secret.
    async fn credentials(&self) -> anyhow::Result<Credentials> {
        self.ctx.credentials(APP).await
    }

    /// No reconcile of the latest operator failed (no error loop after a restart).
    async fn no_failures(&self) -> anyhow::Result<()> {
        let log = self.logs.last().context("no operator started")?;
        let text = std::fs::read_to_string(log)?;
        let failures: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("reconcile failed"))
            .collect();
        ensure!(
            failures.is_empty(),
            "the restarted operator failed reconciles:\n{}",
            failures.join("\n")
        );
        Ok(())
    }

    // --- assertions -------------------------------------------------------------------

    /// Everything converged after the restart: all three objects Ready, exactly one Kinde
    /// application (display name, no marker) and one API (audience, scopes) whose ids are
    /// in status, the application authorized with the grant's scopes, and the Secret's
    /// credentials good for a token for the audience. Records the table row.
    async fn converged(&self, window: &str, grant_scopes: &[&str]) -> anyhow::Result<()> {
        let r = self.check_converged(grant_scopes).await;
        self.explain(r)?;
        self.counted(window, 1, 1).await
    }

    /// Like [`Rig::converged`], without a table row (a deletion test's setup).
    async fn converged_quietly(&self, grant_scopes: &[&str]) -> anyhow::Result<()> {
        let r = self.check_converged(grant_scopes).await;
        self.explain(r)
    }

    async fn check_converged(&self, grant_scopes: &[&str]) -> anyhow::Result<()> {
        let app_status = self
            .wait_ready::<M2MApplication>(APP)
            .await?
            .status_or_default();
        let api_status = self
            .wait_ready::<ApiRegistration>(API)
            .await?
            .status_or_default();
        let grant_status = self
            .wait_ready::<ApiGrant>(GRANT)
            .await?
            .status_or_default();

        let apps = self.kinde_apps().await?;
        ensure!(
            apps.len() == 1,
            "expected exactly one Kinde application, found {}: {apps:?}",
            apps.len()
        );
        let app = &apps[0];
        ensure!(
            app["name"] == DISPLAY_NAME && marked(&apps) == 0,
            "the application's name must be its display name without marker: {app}"
        );
        ensure!(
            app_status.application_id.as_deref() == app["id"].as_str(),
            "status.applicationId {:?} is not the Kinde application {}",
            app_status.application_id,
            app["id"]
        );

        let apis = self.kinde_apis().await?;
        ensure!(
            apis.len() == 1,
            "expected exactly one Kinde API, found {}: {apis:?}",
            apis.len()
        );
        let api = &apis[0];
        ensure!(api["audience"] == AUDIENCE, "unexpected API: {api}");
        ensure!(
            api_status.api_id.as_deref() == api["id"].as_str(),
            "status.apiId {:?} is not the Kinde API {}",
            api_status.api_id,
            api["id"]
        );
        let mut kinde_scopes = kinde_scope_pairs(api);
        let mut status_scopes = scope_pairs(&api_status.scopes);
        kinde_scopes.sort();
        status_scopes.sort();
        ensure!(
            kinde_scopes == status_scopes && kinde_scopes.len() == API_SCOPES.len(),
            "API scopes in Kinde {kinde_scopes:?} vs status {status_scopes:?}"
        );

        let mut granted = self
            .authorized_scopes()
            .await?
            .context("the application is not authorized for the API in Kinde")?;
        granted.sort();
        let want = support::sorted(grant_scopes);
        ensure!(
            granted == want,
            "scopes granted in Kinde {granted:?}, expected {want:?}"
        );
        ensure!(
            grant_status.application_id.as_deref() == app["id"].as_str()
                && grant_status.api_id.as_deref() == api["id"].as_str(),
            "grant status does not name the Kinde objects: {grant_status:?}"
        );

        let creds = self.credentials().await?;
        ensure!(
            app_status.client_id.as_deref() == Some(creds.client_id.as_str()),
            "the Secret's client id {} is not status.clientId {:?}",
            creds.client_id,
            app_status.client_id
        );
        let scp = self
            .emu
            .scp(&creds, AUDIENCE)
            .await?
            .map_err(|e| anyhow!("token request with the Secret's credentials refused: {e}"))?;
        ensure!(scp == want, "token scopes {scp:?}, expected {want:?}");
        Ok(())
    }

    /// Checks and records the counts of Kinde applications and APIs.
    async fn counted(&self, window: &str, apps: usize, apis: usize) -> anyhow::Result<()> {
        let (got_apps, got_apis) = (
            self.kinde_apps().await?.len(),
            self.kinde_apis().await?.len(),
        );
        record(window, got_apps, got_apis);
        ensure!(
            (got_apps, got_apis) == (apps, apis),
            "{window}: expected {apps} application(s) and {apis} API(s) in Kinde, found {got_apps} and {got_apis}"
        );
        Ok(())
    }
}

/// The scopes `app` holds on Kinde API `api` (both from the emulator's state), `None` when
/// it is not authorized there.
fn scopes_of(api: &Value, app: &Value) -> Option<Vec<String>> {
    api["applications"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["id"] == app["id"])
        .map(|a| strings(&a["scopes"]))
}

/// The id status records for scope `key`.
fn scope_id(scopes: &[ScopeStatus], key: &str) -> Option<String> {
    scopes.iter().find(|s| s.key == key).map(|s| s.id.clone())
}

/// `(key, id)` of the scopes status records.
fn scope_pairs(scopes: &[ScopeStatus]) -> Vec<(String, String)> {
    scopes
        .iter()
        .map(|s| (s.key.clone(), s.id.clone()))
        .collect()
}

/// `(key, id)` of a Kinde API's scopes.
fn kinde_scope_pairs(api: &Value) -> Vec<(String, String)> {
    let field = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    api["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (field(&s["key"]), field(&s["id"])))
        .collect()
}

/// How many applications still carry a creation marker.
fn marked(apps: &[Value]) -> usize {
    apps.iter()
        .filter(|a| a["name"].as_str().is_some_and(|n| n.contains("[kmo:")))
        .count()
}

// ---------------------------------------------------------------------------------------
// Summary table
// ---------------------------------------------------------------------------------------

static ROWS: Mutex<Vec<(String, usize, usize)>> = Mutex::new(Vec::new());

fn record(window: &str, apps: usize, apis: usize) {
    eprintln!("crash: {window:<48} apps={apps} apis={apis}");
    ROWS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((window.to_owned(), apps, apis));
}

/// Prints the windows tested with the Kinde counts found after the restart (if any ran).
pub fn print_summary() {
    let mut rows = ROWS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if rows.is_empty() {
        return;
    }
    rows.sort();
    eprintln!("\ncrash windows (Kinde objects after the restart):");
    eprintln!("  {:<48} {:>5} {:>5}", "window", "apps", "APIs");
    for (window, apps, apis) in rows {
        eprintln!("  {window:<48} {apps:>5} {apis:>5}");
    }
}

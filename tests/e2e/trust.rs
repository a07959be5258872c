//! Trust boundaries and bad input, end to end: what a hostile or careless tenant can try with
//! the three kinds (adopting another tenant's or the operator's own Kinde objects, pinning or
//! shadowing a platform API, specs that would break after the first Kinde write), and the
//! timings that used to leave a second Kinde object behind. Each test counts Kinde objects
//! and writes in the emulator, and reads what landed in Kubernetes.

use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kinde_m2m_operator::crd::{
    ApiGrant, ApiRegistration, DeletionPolicy, GrantFrom, M2MApplication, PAUSED_ANNOTATION,
    ROTATE_REQUESTED_AT_ANNOTATION,
};
use kube::api::Api;
use serde_json::{Value, json};

use crate::support::fixtures::{
    ApiFixture as _, AppFixture as _, GrantFixture as _, Meta as _, api_grant, api_registration,
    m2m_application,
};
use crate::support::{
    self, Ctx, E2eTest, Kind as _, WAIT, annotate, events_about, merge_patch, poke, scope_keys,
    wait_for, wait_gone, wait_reason,
};

pub fn tests() -> Vec<E2eTest> {
    vec![
        support::test(
            "trust::tenant_cannot_adopt_foreign_applications",
            tenant_cannot_adopt_foreign_applications,
        ),
        support::test(
            "trust::tenant_cannot_adopt_platform_api",
            tenant_cannot_adopt_platform_api,
        ),
        support::test(
            "trust::adoption_by_namespace_label_keeps_adopted_objects",
            adoption_by_namespace_label_keeps_adopted_objects,
        ),
        support::test(
            "trust::one_audience_in_two_namespaces",
            one_audience_in_two_namespaces,
        ),
        support::test(
            "trust::refused_grant_does_not_pin_api",
            refused_grant_does_not_pin_api,
        ),
        support::test(
            "trust::specs_checked_before_kinde",
            specs_checked_before_kinde,
        ),
        support::test(
            "trust::immutable_fields_rechecked",
            immutable_fields_rechecked,
        ),
        support::test(
            "trust::refused_deletion_says_why",
            refused_deletion_says_why,
        ),
        support::test(
            "trust::superseded_rotation_leaves_nothing_behind",
            superseded_rotation_leaves_nothing_behind,
        ),
        support::test("trust::late_create_is_swept", late_create_is_swept),
        support::test(
            "trust::failures_back_off_per_object",
            failures_back_off_per_object,
        ),
        support::test(
            "trust::waiting_deletions_report_themselves",
            waiting_deletions_report_themselves,
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// An M2MApplication with a display name.
fn app(name: &str, display_name: &str) -> M2MApplication {
    m2m_application(name).with_display_name(display_name)
}

/// A grant of `scopes` on `api` in `api_ns` to `app`.
fn grant(name: &str, app: &str, api: &str, api_ns: &str, scopes: &[&str]) -> ApiGrant {
    api_grant(name, app, api)
        .with_api_namespace(api_ns)
        .with_scopes(scopes)
}

/// A status field the operator must have written.
fn required(field: Option<String>, what: &str) -> anyhow::Result<String> {
    field.with_context(|| format!("{what} missing from the status"))
}

async fn secret_exists(ctx: &Ctx, ns: &str, name: &str) -> anyhow::Result<bool> {
    Ok(ctx.api_in::<Secret>(ns).get_opt(name).await?.is_some())
}

// ---------------------------------------------------------------------------------------
// Adoption
// ---------------------------------------------------------------------------------------

/// Tenant A annotates its M2MApplication with tenant B's application id (client ids are not
/// secret), and with the operator's own management client id: neither lands in A's Secret,
/// B's app is not renamed, and deleting A's objects (even with `deletionPolicy: Delete`)
/// leaves B's app. A namespace the adoption policy does not admit is refused before any
/// Kinde call.
async fn tenant_cannot_adopt_foreign_applications(ctx: Ctx) -> anyhow::Result<()> {
    let victim_ns = ctx.extra_namespace(&[]).await?;
    let outsider_ns = ctx.extra_namespace(&[]).await?;
    let (emulator, op) = ctx
        .own_emulator_and_operator(
            &[&victim_ns, &outsider_ns],
            "10m",
            &["--adoption-namespace", &ctx.ns],
        )
        .await?;
    let apps = ctx.api::<M2MApplication>();
    let result = async {
        ctx.apply_in(&victim_ns, &[&app("victim", "Victim")])
            .await?;
        let victim_apps = ctx.api_in::<M2MApplication>(&victim_ns);
        let victim = wait_reason(&victim_apps, "victim", "Reconciled").await?;
        let victim_id = required(victim.status_or_default().application_id, "applicationId")?;

        let thieves = [
            ("thief", victim_id.as_str(), "AdoptionRefused"),
            ("mgmt-thief", support::KINDE_CLIENT_ID, "AdoptionRefused"),
        ];
        for (name, target, _) in thieves {
            ctx.apply(&[&app(name, "Stolen")
                .adopting(target)
                .with_deletion_policy(DeletionPolicy::Delete)])
                .await?;
        }
        ctx.apply_in(
            &outsider_ns,
            &[&app("thief", "Stolen").adopting(&victim_id)],
        )
        .await?;
        for (name, target, reason) in thieves {
            let obj = wait_reason(&apps, name, reason).await?;
            obj.ensure_ready_mentions(target)?;
        }
        let outsider = wait_reason(
            &ctx.api_in::<M2MApplication>(&outsider_ns),
            "thief",
            "AdoptionNotPermitted",
        )
        .await?;
        outsider.ensure_ready_mentions(&outsider_ns)?;
        for (ns, name) in [
            (&ctx.ns, "thief"),
            (&ctx.ns, "mgmt-thief"),
            (&outsider_ns, "thief"),
        ] {
            ensure!(
                !secret_exists(&ctx, ns, &format!("{name}-credentials")).await?,
                "{ns}/{name} got a credentials Secret"
            );
            let status = ctx
                .api_in::<M2MApplication>(ns)
                .get(name)
                .await?
                .status_or_default();
            ensure!(
                status.application_id.is_none() && status.client_id.is_none(),
                "{ns}/{name} recorded a foreign application: {status:?}"
            );
        }
        // The refusals made no Kinde write; B's app keeps its name.
        let kinde_apps = emulator.kinde_apps().await?;
        ensure!(kinde_apps.len() == 1, "Kinde applications: {kinde_apps:?}");
        ensure!(
            kinde_apps[0]["name"] == "Victim",
            "victim renamed: {}",
            kinde_apps[0]
        );

        support::delete_all(&apps, &["thief", "mgmt-thief"]).await?;
        let kinde_apps = emulator.kinde_apps().await?;
        ensure!(
            kinde_apps.iter().any(|a| a["id"] == victim_id.as_str()),
            "deleting the refused adopter deleted the victim's app: {kinde_apps:?}"
        );
        let state = emulator.state().await?;
        ensure!(
            state["applications"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["is_management_client"] == true),
            "the management client was deleted"
        );
        wait_reason(&victim_apps, "victim", "Reconciled").await?;
        Ok(())
    }
    .await;
    op.with_log(result)
}

/// A tenant's ApiRegistration annotated with the platform API's id (and its audience) is
/// refused: the platform's scopes and grant policy stay in force.
async fn tenant_cannot_adopt_platform_api(ctx: Ctx) -> anyhow::Result<()> {
    let platform_ns = ctx.extra_namespace(&[]).await?;
    let (emulator, op) = ctx
        .own_emulator_and_operator(&[&platform_ns], "10m", &["--adoption-namespace", &ctx.ns])
        .await?;
    let platform_apis = ctx.api_in::<ApiRegistration>(&platform_ns);
    let result = async {
        let audience = "https://orders.platform.example";
        ctx.apply_in(
            &platform_ns,
            &[&api_registration("orders", audience)
                .with_scope("read", "Read")
                .with_scope("write", "Write")],
        )
        .await?;
        let orders = wait_reason(&platform_apis, "orders", "Reconciled").await?;
        let api_id = required(orders.status_or_default().api_id, "apiId")?;
        ctx.apply(&[&api_registration("copy", audience)
            .adopting(&api_id)
            .with_grant_from(GrantFrom::All)])
            .await?;
        let copy = wait_reason(&ctx.api::<ApiRegistration>(), "copy", "AdoptionRefused").await?;
        copy.ensure_ready_mentions(&platform_ns)?;
        let copy_status = copy.status_or_default();
        ensure!(copy_status.api_id.is_none(), "{copy_status:?}");
        // A grant through the copy finds nothing to grant.
        ctx.apply(&[
            &app("client", "Client"),
            &grant("via-copy", "client", "copy", &ctx.ns, &[]),
        ])
        .await?;
        wait_reason(&ctx.api::<ApiGrant>(), "via-copy", "WaitingForApi").await?;
        let kinde = emulator
            .kinde_api(&api_id)
            .await?
            .context("platform API gone")?;
        ensure!(
            scope_keys(&kinde) == ["read", "write"],
            "the platform API's scopes changed: {kinde}"
        );
        ensure!(
            kinde["applications"].as_array().is_none_or(Vec::is_empty),
            "an application was authorized on the platform API: {kinde}"
        );
        wait_reason(&platform_apis, "orders", "Reconciled").await?;
        Ok(())
    }
    .await;
    op.with_log(result)
}

/// Adoption permitted by a namespace label: a dashboard-made app is adopted (its secret read
/// back), `deletionPolicy: Delete` on it is refused without `--adoption-allow-delete`, and
/// deleting the object leaves the app in Kinde. Removing the label withdraws the permission.
async fn adoption_by_namespace_label_keeps_adopted_objects(ctx: Ctx) -> anyhow::Result<()> {
    let label = "trust.e2e.kinde-operator.io/adopt";
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    merge_patch(
        &namespaces,
        &ctx.ns,
        json!({"metadata": {"labels": {label: "yes"}}}),
    )
    .await?;
    let selector = format!("{label}=yes");
    let (emulator, op) = ctx
        .own_emulator_and_operator(&[], "10m", &["--adoption-namespace-selector", &selector])
        .await?;
    let apps = ctx.api::<M2MApplication>();
    let result = async {
        let legacy = kinde_app_id(&emulator.create_kinde_app("Legacy").await?)?;
        let doomed = kinde_app_id(&emulator.create_kinde_app("Doomed").await?)?;
        ctx.apply(&[
            &app("legacy", "Legacy").adopting(&legacy),
            &app("doomed", "Doomed")
                .adopting(&doomed)
                .with_deletion_policy(DeletionPolicy::Delete),
        ])
        .await?;
        let obj = wait_reason(&apps, "legacy", "Reconciled").await?;
        let status = obj.status_or_default();
        ensure!(
            required(status.application_id.clone(), "applicationId")? == legacy,
            "{status:?}"
        );
        ensure!(
            secret_exists(&ctx, &ctx.ns, "legacy-credentials").await?,
            "no Secret for the adopted app"
        );
        let obj = wait_reason(&apps, "doomed", "AdoptionRefused").await?;
        obj.ensure_ready_mentions("--adoption-allow-delete")?;

        support::delete_all(&apps, &["legacy", "doomed"]).await?;
        let ids: Vec<Value> = emulator
            .kinde_apps()
            .await?
            .into_iter()
            .map(|a| a["id"].clone())
            .collect();
        ensure!(
            ids.contains(&json!(legacy)) && ids.contains(&json!(doomed)),
            "an adopted application was deleted: {ids:?}"
        );

        // The platform withdraws the permission: the next reconcile refuses.
        ctx.apply(&[&app("again", "Legacy").adopting(&legacy)])
            .await?;
        wait_reason(&apps, "again", "Reconciled").await?;
        merge_patch(
            &namespaces,
            &ctx.ns,
            json!({"metadata": {"labels": {label: null}}}),
        )
        .await?;
        poke(&apps, "again").await?;
        wait_reason(&apps, "again", "AdoptionNotPermitted").await?;
        Ok(())
    }
    .await;
    op.with_log(result)
}

/// The id of an application [`Emulator::create_kinde_app`] made.
fn kinde_app_id(app: &Value) -> anyhow::Result<String> {
    app["id"]
        .as_str()
        .map(str::to_owned)
        .context("no application id")
}

// ---------------------------------------------------------------------------------------
// Shadowing and pinning platform APIs
// ---------------------------------------------------------------------------------------

/// Two ApiRegistrations with one audience in two namespaces, created together (both creates
/// in flight at once): one API in Kinde, one object Ready, the other `AudienceInUse`; deleting
/// the loser leaves the winner's API.
async fn one_audience_in_two_namespaces(ctx: Ctx) -> anyhow::Result<()> {
    let other_ns = ctx.extra_namespace(&[]).await?;
    let (emulator, op) = ctx
        .own_emulator_and_operator(&[&other_ns], "10m", &[])
        .await?;
    let result = async {
        // Both creates are in flight together: the second reaches Kinde after the first.
        emulator
            .fault(json!({"operation": "addAPIs", "latency_ms": 1500, "times": 2}))
            .await?;
        let audience = "https://contested.example.com";
        let contested = api_registration("contested", audience);
        ctx.apply(&[&contested]).await?;
        ctx.apply_in(&other_ns, &[&contested]).await?;
        let settled = wait_for("one Ready and one AudienceInUse", WAIT, || async {
            let mut reasons = Vec::new();
            for ns in [&ctx.ns, &other_ns] {
                let obj = ctx.api_in::<ApiRegistration>(ns).get("contested").await?;
                let reason = obj.condition("Ready").map(|c| c.reason.clone());
                reasons.push((ns.clone(), reason, obj));
            }
            let ready: Vec<_> = reasons
                .iter()
                .filter(|(_, r, _)| r.as_deref() == Some("Reconciled"))
                .collect();
            let in_use: Vec<_> = reasons
                .iter()
                .filter(|(_, r, _)| r.as_deref() == Some("AudienceInUse"))
                .collect();
            if ready.len() == 1 && in_use.len() == 1 {
                return Ok(Some((
                    ready[0].0.clone(),
                    ready[0].2.clone(),
                    in_use[0].0.clone(),
                )));
            }
            Err(anyhow!(
                "reasons: {:?}",
                reasons.iter().map(|(n, r, _)| (n, r)).collect::<Vec<_>>()
            ))
        })
        .await?;
        let (winner_ns, winner, loser_ns) = settled;
        let api_id = required(winner.status_or_default().api_id, "apiId")?;
        let state = emulator.state().await?;
        let with_audience = state["apis"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["audience"] == audience)
            .count();
        ensure!(
            with_audience == 1,
            "APIs with the audience: {with_audience}"
        );
        let loser_apis = ctx.api_in::<ApiRegistration>(&loser_ns);
        let loser = loser_apis.get("contested").await?.status_or_default();
        ensure!(loser.api_id.is_none(), "loser: {loser:?}");

        support::delete(&loser_apis, "contested").await?;
        wait_gone(&loser_apis, "contested").await?;
        ensure!(
            emulator.kinde_api(&api_id).await?.is_some(),
            "deleting the loser deleted the winner's API"
        );
        wait_reason(
            &ctx.api_in::<ApiRegistration>(&winner_ns),
            "contested",
            "Reconciled",
        )
        .await?;
        Ok(())
    }
    .await;
    op.with_log(result)
}

/// A grant the API's `grantPolicy` refuses does not keep the API's deletion waiting.
async fn refused_grant_does_not_pin_api(ctx: Ctx) -> anyhow::Result<()> {
    let platform_ns = ctx.extra_namespace(&[]).await?;
    let (emulator, op) = ctx
        .own_emulator_and_operator(&[&platform_ns], "10m", &[])
        .await?;
    let platform_apis = ctx.api_in::<ApiRegistration>(&platform_ns);
    let result = async {
        ctx.apply_in(
            &platform_ns,
            &[
                &api_registration("internal", "https://internal.example.com")
                    .with_deletion_policy(DeletionPolicy::Delete)
                    .with_scope("read", "Read"),
            ],
        )
        .await?;
        let api = wait_reason(&platform_apis, "internal", "Reconciled").await?;
        let api_id = required(api.status_or_default().api_id, "apiId")?;
        ctx.apply(&[
            &app("pinner", "Pinner"),
            &grant("pin", "pinner", "internal", &platform_ns, &["read"]),
        ])
        .await?;
        wait_reason(&ctx.api::<ApiGrant>(), "pin", "RefNotPermitted").await?;
        support::delete(&platform_apis, "internal").await?;
        wait_gone(&platform_apis, "internal").await?;
        ensure!(
            emulator.kinde_api(&api_id).await?.is_none(),
            "the Kinde API survived its deletion"
        );
        Ok(())
    }
    .await;
    op.with_log(result)
}

// ---------------------------------------------------------------------------------------
// Bad specs
// ---------------------------------------------------------------------------------------

/// Specs that would break after the first Kinde write are refused before it: an object name
/// too long for its Events (and its default Secret name), an invalid Secret label, a
/// rotation interval of a second or shorter than twice the overlap.
async fn specs_checked_before_kinde(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, op) = ctx.own_emulator_and_operator(&[], "10m", &[]).await?;
    let apps = ctx.api::<M2MApplication>();
    let result = async {
        let long = "a".repeat(245);
        let cases = [
            (
                m2m_application(&long).with_display_name("Long"),
                "metadata.name",
            ),
            (
                m2m_application("badlabel").with_secret_label("team", "a b"),
                "spec.secret.labels",
            ),
            (
                m2m_application("fast").with_rotation_every("1s"),
                "spec.rotation.every",
            ),
            (
                m2m_application("short")
                    .with_rotation_every("1h")
                    .with_overlap("1h"),
                "spec.rotation.every",
            ),
        ];
        for (app, _) in &cases {
            ctx.apply(&[app]).await?;
        }
        for (app, field) in &cases {
            let name = app.metadata.name.as_deref().unwrap_or_default();
            let obj = wait_reason(&apps, name, "InvalidSpec").await?;
            obj.ensure_ready_mentions(field)?;
        }
        let calls = emulator.calls().await?;
        ensure!(
            emulator.total_writes().await? == 0,
            "Kinde writes for refused specs: {calls}"
        );
        Ok(())
    }
    .await;
    op.with_log(result)
}

/// Immutable fields edited on a server without CEL (the test server is v1.20) are refused
/// by the operator, not silently ignored.
async fn immutable_fields_rechecked(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, op) = ctx.own_emulator_and_operator(&[], "10m", &[]).await?;
    let (apis, apps) = (ctx.api::<ApiRegistration>(), ctx.api::<M2MApplication>());
    let result = async {
        ctx.apply(&[
            &api_registration("fixed", "https://fixed.example.com"),
            &app("org-app", "Org app").with_organization_code("org_a"),
        ])
        .await?;
        let api = wait_reason(&apis, "fixed", "Reconciled").await?;
        let api_id = required(api.status_or_default().api_id, "apiId")?;
        wait_reason(&apps, "org-app", "Reconciled").await?;
        merge_patch(
            &apis,
            "fixed",
            json!({"spec": {"audience": "https://moved.example.com"}}),
        )
        .await?;
        merge_patch(
            &apps,
            "org-app",
            json!({"spec": {"organizationCode": "org_b"}}),
        )
        .await?;
        let obj = wait_reason(&apis, "fixed", "InvalidSpec").await?;
        obj.ensure_ready_mentions("spec.audience is immutable")?;
        let obj = wait_reason(&apps, "org-app", "InvalidSpec").await?;
        obj.ensure_ready_mentions("spec.organizationCode is immutable")?;
        let kinde = emulator.kinde_api(&api_id).await?.context("API gone")?;
        ensure!(kinde["audience"] == "https://fixed.example.com", "{kinde}");
        ensure!(
            emulator.call_count("addAPIs").await? == 1,
            "a second API was created: {}",
            emulator.calls().await?
        );
        Ok(())
    }
    .await;
    op.with_log(result)
}

// ---------------------------------------------------------------------------------------
// Deletion and rotation under failure
// ---------------------------------------------------------------------------------------

/// A deletion Kinde refuses (the management client lacks `delete:applications`) shows in the
/// conditions with the reason, and finishes once the scope is back.
async fn refused_deletion_says_why(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, op) = ctx.own_emulator_and_operator(&[], "10m", &[]).await?;
    let apps = ctx.api::<M2MApplication>();
    let result = async {
        ctx.apply(&[&app("stuck", "Stuck")]).await?;
        wait_reason(&apps, "stuck", "Reconciled").await?;
        let scopes = emulator
            .control(reqwest::Method::GET, "management-client/scopes", None)
            .await?;
        let all = support::strings(&scopes["scopes"]);
        let without: Vec<&String> = all.iter().filter(|s| *s != "delete:applications").collect();
        emulator
            .control(
                reqwest::Method::PUT,
                "management-client/scopes",
                Some(json!({"scopes": without})),
            )
            .await?;
        emulator
            .control(reqwest::Method::POST, "tokens/revoke", Some(json!({})))
            .await?;
        support::delete(&apps, "stuck").await?;
        let obj = wait_reason(&apps, "stuck", "KindeForbidden").await?;
        obj.ensure_ready_mentions("delete:applications")?;
        let synced = obj.condition("Synced");
        ensure!(
            synced.is_some_and(|c| c.status == "False" && c.reason == "KindeForbidden"),
            "Synced: {synced:?}"
        );
        emulator
            .control(
                reqwest::Method::PUT,
                "management-client/scopes",
                Some(json!({"scopes": all})),
            )
            .await?;
        emulator
            .control(reqwest::Method::POST, "tokens/revoke", Some(json!({})))
            .await?;
        wait_for(
            "the deletion to finish",
            Duration::from_secs(400),
            || async { Ok(apps.get_opt("stuck").await?.is_none().then_some(())) },
        )
        .await?;
        ensure!(emulator.kinde_apps().await?.is_empty(), "the app survived");
        Ok(())
    }
    .await;
    op.with_log(result)
}

/// A rotation that keeps failing (its successor cannot be authorized) and is then superseded
/// by a new request leaves no authorized application behind: the first successor is
/// disconnected and deleted, the second becomes current.
async fn superseded_rotation_leaves_nothing_behind(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, op) = ctx.own_emulator_and_operator(&[], "10m", &[]).await?;
    let apps = ctx.api::<M2MApplication>();
    let result = async {
        ctx.apply(&[
            &api_registration("svc", "https://svc.example.com").with_scope("read", "Read"),
            &app("rot", "Rot").with_overlap("1h"),
            &grant("rot-svc", "rot", "svc", &ctx.ns, &["read"]),
        ])
        .await?;
        wait_reason(&ctx.api::<ApiGrant>(), "rot-svc", "Reconciled").await?;
        let first = wait_reason(&apps, "rot", "Reconciled").await?;
        let original = required(first.status_or_default().application_id, "applicationId")?;

        // Authorizing any successor fails from now on.
        emulator
            .fault(json!({"operation": "updateAPIApplications", "status": 500, "times": 1000}))
            .await?;
        let rotate = |v: &'static str| {
            let apps = &apps;
            async move { annotate(apps, "rot", &[(ROTATE_REQUESTED_AT_ANNOTATION, Some(v))]).await }
        };
        rotate("r1").await?;
        // The first rotation records its successor, then fails to authorize it.
        let pending = wait_for("the first rotation to fail", WAIT, || async {
            let obj = apps.get("rot").await?;
            let synced_false = obj.condition("Synced").is_some_and(|c| c.status == "False");
            Ok(obj
                .status_or_default()
                .pending_successor
                .map(|p| p.application_id)
                .filter(|_| synced_false))
        })
        .await?;
        rotate("r2").await?;
        emulator.clear_faults().await?;
        let done = wait_for(
            "the second rotation to finish",
            Duration::from_secs(400),
            || async {
                let obj = apps.get("rot").await?;
                let ready = obj.condition("Ready").is_some_and(|c| c.status == "True");
                let handled = obj.status_or_default().last_handled_rotate_request;
                Ok((ready && handled.as_deref() == Some("r2")).then_some(obj))
            },
        )
        .await?;
        let status = done.status_or_default();
        let current = required(status.application_id.clone(), "applicationId")?;
        ensure!(
            current != original && current != pending,
            "current {current}"
        );
        let kinde_apps = emulator.kinde_apps().await?;
        let ids: Vec<&str> = kinde_apps.iter().filter_map(|a| a["id"].as_str()).collect();
        ensure!(
            !ids.contains(&pending.as_str()),
            "the superseded successor {pending} is still in Kinde: {kinde_apps:?}"
        );
        ensure!(
            ids.len() == 2 && ids.contains(&original.as_str()) && ids.contains(&current.as_str()),
            "expected the retiring original and the current app: {kinde_apps:?}"
        );
        ensure!(status.pending_successor.is_none(), "{status:?}");
        Ok(())
    }
    .await;
    op.with_log(result)
}

/// A create Kinde completes after the client gave up (timeout: outcome unknown) lands after
/// the operator, finding nothing, created the application again: the late copy carries the
/// object's marker and is found and deleted, leaving exactly one application.
async fn late_create_is_swept(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, op) = ctx
        .own_emulator_and_operator(&[], "10m", &["--kinde-timeout", "2s"])
        .await?;
    let apps = ctx.api::<M2MApplication>();
    let result = async {
        // The first create is answered never and performed 15 s later: after the client's
        // timeout and after the retry (10 s backoff) has created the application again.
        emulator
            .fault(json!({"operation": "createApplication", "latency_ms": 15000, "detached": true}))
            .await?;
        ctx.apply(&[&app("late", "Late")]).await?;
        let obj = wait_reason(&apps, "late", "Reconciled").await?;
        let status = obj.status_or_default();
        let id = required(status.application_id.clone(), "applicationId")?;
        ensure!(
            status.unconfirmed_create_since.is_some(),
            "the unknown outcome was not noted: {status:?}"
        );
        wait_for("the late copy to land", Duration::from_secs(60), || async {
            Ok((emulator.call_count("createApplication").await? == 2
                && emulator.calls().await?["createApplication"]["writes"] == 2)
                .then_some(()))
        })
        .await?;
        let kinde_apps = wait_for(
            "exactly one application",
            Duration::from_secs(180),
            || async {
                let kinde_apps = emulator.kinde_apps().await?;
                Ok((kinde_apps.len() == 1).then_some(kinde_apps))
            },
        )
        .await?;
        ensure!(
            kinde_apps[0]["id"] == id.as_str(),
            "the wrong one survived: {kinde_apps:?}"
        );
        ensure!(kinde_apps[0]["name"] == "Late", "name: {}", kinde_apps[0]);
        wait_reason(&apps, "late", "Reconciled").await?;
        Ok(())
    }
    .await;
    op.with_log(result)
}

/// During a Kinde outage a failing object is retried with exponential backoff (10 s, 20 s,
/// 40 s, ...), not every 10 s: over a 75 s outage its create is tried about 4 times (0, 10,
/// 30, 70 s) where a fixed 10 s retry tried 8 times. A slow machine only lowers the count.
async fn failures_back_off_per_object(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, op) = ctx.own_emulator_and_operator(&[], "10m", &[]).await?;
    let result = async {
        emulator
            .fault(json!({"operation": "createApplication", "status": 500, "times": 1000}))
            .await?;
        ctx.apply(&[&app("broken", "Broken")]).await?;
        wait_for("the first attempt", WAIT, || async {
            Ok((emulator.call_count("createApplication").await? >= 1).then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(75)).await;
        let attempts = emulator.call_count("createApplication").await?;
        println!("createApplication attempts over a 75 s outage: {attempts} (fixed 10 s retry: 8)");
        ensure!(
            (2..=5).contains(&attempts),
            "{attempts} create attempts in 75 s: expected 10 s, 20 s, 40 s backoff (3-5)"
        );
        emulator.clear_faults().await?;
        Ok(())
    }
    .await;
    op.with_log(result)
}

/// Events about the `K` named `name` with `reason`: `<type>x<count>` of each (a repeated
/// Event is one object with a growing series count).
async fn event_counts<K: support::Kind>(
    ctx: &Ctx,
    name: &str,
    reason: &str,
) -> anyhow::Result<Vec<String>> {
    Ok(events_about::<K>(&ctx.client, &ctx.ns, name)
        .await?
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| {
            let count = e.series.as_ref().map_or(1, |s| s.count);
            format!("{}x{count}", e.type_.unwrap_or_default())
        })
        .collect())
}

/// A deletion that waits (paused, in use) ends the way apply does: Ready=False and Synced
/// with the reason and message, one Normal Event (not one per retry), and no reconcile
/// failure counted.
async fn waiting_deletions_report_themselves(ctx: Ctx) -> anyhow::Result<()> {
    ctx.harness.ensure_crds().await?;
    let emulator = ctx.own_emulator()?;
    let port = support::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let op = ctx.run_operator_listening(&emulator, &listen, &[], "10m", &[])?;
    let (apis, apps) = (ctx.api::<ApiRegistration>(), ctx.api::<M2MApplication>());
    let result = async {
        ctx.apply(&[
            &api_registration("held", "https://held.example.com").with_scope("read", "Read"),
            &app("frozen", "Frozen"),
            &grant("holder", "frozen", "held", &ctx.ns, &["read"]),
        ])
        .await?;
        wait_reason(&ctx.api::<ApiGrant>(), "holder", "Reconciled").await?;
        annotate(&apps, "frozen", &[(PAUSED_ANNOTATION, Some("true"))]).await?;
        support::delete(&apps, "frozen").await?;
        support::delete(&apis, "held").await?;
        let app = wait_for("the paused deletion to report itself", WAIT, || async {
            let obj = apps.get("frozen").await?;
            let synced = obj.condition("Synced");
            Ok(synced
                .is_some_and(|c| c.reason == "Paused" && c.message.contains("deletion waits"))
                .then_some(obj.clone()))
        })
        .await?;
        let ready = app.condition("Ready");
        ensure!(
            ready.is_some_and(|c| c.status == "False" && c.reason == "Paused"),
            "Ready of the paused deletion: {ready:?}"
        );
        let api = wait_reason(&apis, "held", "InUse").await?;
        api.ensure_ready_mentions("holder")?;
        // Both retry every 30 s: after two retries still one Event each, and no failure.
        tokio::time::sleep(Duration::from_secs(65)).await;
        let frozen = event_counts::<M2MApplication>(&ctx, "frozen", "Paused").await?;
        ensure!(
            frozen == ["Normalx1"],
            "Events Paused about frozen: {frozen:?}"
        );
        let held = event_counts::<ApiRegistration>(&ctx, "held", "InUse").await?;
        ensure!(held == ["Normalx1"], "Events InUse about held: {held:?}");
        let metrics = reqwest::get(format!("http://{listen}/metrics"))
            .await?
            .text()
            .await?;
        let failures: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("kinde_m2m_operator_reconcile_failures_total"))
            .filter(|l| l.contains("Paused") || l.contains("InUse"))
            .collect();
        ensure!(
            failures.is_empty(),
            "waits counted as failures: {failures:?}"
        );
        Ok(())
    }
    .await;
    op.with_log(result)
}

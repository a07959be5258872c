//! ApiGrant end to end: the real operator binary on the real control plane against its own
//! Kinde emulator per test. Authorization is checked where it matters: the token endpoint,
//! with the credentials the operator wrote into the application's Secret.

use anyhow::{Context as _, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::Namespace;
use kinde_m2m_operator::crd::{
    ApiGrant, ApiGrantStatus, ApiRegistration, GrantFrom, M2MApplication, PAUSED_ANNOTATION,
};
use kube::api::Api;
use serde_json::json;

use crate::support::fixtures::{
    ApiFixture as _, AppFixture as _, GrantFixture as _, Meta as _, api_grant, api_registration,
    m2m_application,
};
use crate::support::{
    self, Ctx, E2eTest, Emulator, Kind as _, WAIT, annotate, merge_patch, wait_condition,
    wait_events, wait_for, wait_gone, wait_reason,
};

pub fn tests() -> Vec<E2eTest> {
    vec![
        support::test("grants::authorize_and_revoke", authorize_and_revoke),
        support::test("grants::batched_authorizations", batched_authorizations),
        support::test("grants::scopes_converge", scopes_converge),
        support::test("grants::policy_same_then_all", policy_same_then_all),
        support::test("grants::policy_selector_label", policy_selector_label),
        support::test("grants::conflict_older_wins", conflict_older_wins),
        support::test("grants::waits_then_converges", waits_then_converges),
        support::test(
            "grants::bad_input_never_reaches_kinde",
            bad_input_never_reaches_kinde,
        ),
        support::test("grants::paused_grant", paused_grant),
        support::test("grants::api_ref_change", api_ref_change),
    ]
}

/// Operations through which a grant writes to Kinde.
const GRANT_OPS: [&str; 3] = [
    "updateAPIApplications",
    "addAPIApplicationScope",
    "deleteAPIApplicationScope",
];

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// An ApiRegistration with `scopes` (grant policy `Same`).
fn api(name: &str, audience: &str, scopes: &[&str]) -> ApiRegistration {
    api_registration(name, audience).with_scopes(scopes)
}

/// An M2MApplication displayed under its own name.
fn app(name: &str) -> M2MApplication {
    m2m_application(name).with_display_name(name)
}

/// Checks kstatus's view of `kind name` in the test's namespace: its status is for the
/// current generation, and `holds` (`Reconciling` or `Stalled`) is True with Ready's reason
/// and message while the other is False; with `None` (a Ready object), both are False.
async fn kstatus_conditions<K: support::Kind>(
    ctx: &Ctx,
    name: &str,
    holds: Option<&str>,
) -> anyhow::Result<()> {
    let obj = serde_json::to_value(ctx.api::<K>().get(name).await?)?;
    let observed = obj["status"]["observedGeneration"].as_i64();
    let generation = obj["metadata"]["generation"].as_i64();
    ensure!(
        observed == generation && observed.is_some(),
        "{name}: status.observedGeneration {observed:?}, generation {generation:?}"
    );
    // All from the one read above, so the conditions are from one status write.
    let find = |type_: &str| {
        obj["status"]["conditions"]
            .as_array()
            .and_then(|conds| conds.iter().find(|c| c["type"] == type_))
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("status"), s("reason"), s("message"))
            })
    };
    let ready = find("Ready").with_context(|| format!("{name}: no Ready"))?;
    for type_ in ["Reconciling", "Stalled"] {
        let status = if holds == Some(type_) {
            "True"
        } else {
            "False"
        };
        let want = (status.to_owned(), ready.1.clone(), ready.2.clone());
        let found = find(type_);
        ensure!(
            found.as_ref() == Some(&want),
            "{name}: {type_} is {found:?}, want {want:?}"
        );
    }
    Ok(())
}

/// A grant of `scopes` on `api` (in the grant's namespace) to `app`.
fn grant(name: &str, app: &str, api: &str, scopes: &[&str]) -> ApiGrant {
    api_grant(name, app, api).with_scopes(scopes)
}

/// Waits until grant `name` (in the test's namespace) has Ready `reason`; returns its
/// Ready message.
async fn grant_reason(ctx: &Ctx, name: &str, reason: &str) -> anyhow::Result<String> {
    Ok(wait_reason(&ctx.api::<ApiGrant>(), name, reason)
        .await?
        .ready_message())
}

/// The status of grant `name` in the test's namespace.
async fn grant_status(ctx: &Ctx, name: &str) -> anyhow::Result<ApiGrantStatus> {
    Ok(ctx.api::<ApiGrant>().get(name).await?.status_or_default())
}

/// Waits until `name` (in the test's namespace) is Ready.
async fn ready<K: support::Kind>(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    wait_reason(&ctx.api::<K>(), name, "Reconciled")
        .await
        .map(drop)
}

/// Waits until `name` (in the test's namespace) reports `Synced=False` `Paused`.
async fn wait_paused<K: support::Kind>(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    wait_condition(&ctx.api::<K>(), name, "Synced", "False", Some("Paused"))
        .await
        .map(drop)
}

/// Waits for an Event with `reason` about grant `name` in the test's namespace.
async fn grant_event(ctx: &Ctx, name: &str, reason: &str) -> anyhow::Result<()> {
    wait_events::<ApiGrant>(&ctx.client, &ctx.ns, name, &[reason]).await
}

/// Waits until the app's Secret has `KINDE_AUDIENCE` equal to `audiences` (any order).
async fn wait_audience(ctx: &Ctx, app: &str, audiences: &[&str]) -> anyhow::Result<()> {
    let mut want: Vec<&str> = audiences.to_vec();
    want.sort_unstable();
    wait_for(
        &format!("KINDE_AUDIENCE of {app} to be {want:?}"),
        WAIT,
        || async {
            let creds = ctx.credentials(app).await?;
            if creds.audiences() == want {
                Ok(Some(()))
            } else {
                Err(anyhow!("KINDE_AUDIENCE is {:?}", creds.audience))
            }
        },
    )
    .await
}

/// Writes through the grant operations so far.
async fn grant_writes(emulator: &Emulator) -> anyhow::Result<u64> {
    let calls = emulator.calls().await?;
    Ok(GRANT_OPS
        .iter()
        .map(|op| calls[*op]["writes"].as_u64().unwrap_or(0))
        .sum())
}

/// Sets or removes the paused annotation of `name` in namespace `ns`.
async fn set_paused<K: support::Kind>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    value: Option<&str>,
) -> anyhow::Result<()> {
    annotate(&ctx.api_in::<K>(ns), name, &[(PAUSED_ANNOTATION, value)]).await
}

async fn delete_grant(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let grants = ctx.api::<ApiGrant>();
    support::delete(&grants, name).await?;
    wait_gone(&grants, name).await
}

fn aud(tag: &str) -> String {
    format!("https://{tag}.example.com")
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// Grant Ready → token with the grant's scopes, KINDE_AUDIENCE lists the audience; deleting
/// the grant cuts access and empties KINDE_AUDIENCE; the app and its other grant stay.
async fn authorize_and_revoke(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = ctx.own_emulator_and_operator(&[], "10m", &[]).await?;
    let (a1, a2) = (aud("one"), aud("two"));
    ctx.apply(&[
        &api("one", &a1, &["read:users", "write:users"]),
        &api("two", &a2, &["read:flags"]),
        &app("acme"),
        &grant("acme-one", "acme", "one", &["read:users"]),
        &grant("acme-two", "acme", "two", &["read:flags"]),
    ])
    .await?;
    let r = async {
        grant_reason(&ctx, "acme-one", "Reconciled").await?;
        grant_reason(&ctx, "acme-two", "Reconciled").await?;
        let creds = ctx.credentials("acme").await?;
        emulator.wait_scp(&creds, &a1, &["read:users"]).await?;
        emulator.wait_scp(&creds, &a2, &["read:flags"]).await?;
        wait_audience(&ctx, "acme", &[&a1, &a2]).await?;
        let status = grant_status(&ctx, "acme-one").await?;
        ensure!(
            status.granted_scopes == ["read:users"] && status.audience.as_deref() == Some(&*a1),
            "status of acme-one: {status:?}"
        );
        grant_event(&ctx, "acme-one", "Granted").await?;

        delete_grant(&ctx, "acme-one").await?;
        let refusal = emulator.wait_refused(&creds, &a1).await?;
        eprintln!("grants::authorize_and_revoke: refused after delete: {refusal}");
        wait_audience(&ctx, "acme", &[&a2]).await?;
        // The app and the other grant are untouched.
        emulator.wait_scp(&creds, &a2, &["read:flags"]).await?;
        ready::<M2MApplication>(&ctx, "acme").await?;
        grant_reason(&ctx, "acme-two", "Reconciled").await?;
        let state = emulator.state().await?;
        let id = ctx.credentials("acme").await?.client_id;
        ensure!(
            state.to_string().contains(&id),
            "application {id} gone from Kinde: {state}"
        );

        delete_grant(&ctx, "acme-two").await?;
        emulator.wait_refused(&creds, &a2).await?;
        wait_audience(&ctx, "acme", &[]).await
    }
    .await;
    operator.with_log(r)
}

/// Three apps and three grants for one API in one apply: the authorizations are batched
/// into fewer `updateAPIApplications` calls than grants.
async fn batched_authorizations(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = ctx.own_emulator_and_operator(&[], "10m", &[]).await?;
    let a = aud("batch");
    let the_api = api("api", &a, &["read"]);
    let pairs: Vec<(M2MApplication, ApiGrant)> = (1..=3)
        .map(|i| {
            let name = format!("app{i}");
            (
                app(&name),
                grant(&format!("grant{i}"), &name, "api", &["read"]),
            )
        })
        .collect();
    let mut objects: Vec<&dyn support::fixtures::Apply> = vec![&the_api];
    for (app, grant) in &pairs {
        objects.extend([app as &dyn support::fixtures::Apply, grant]);
    }
    ctx.apply(&objects).await?;
    let r = async {
        for i in 1..=3 {
            grant_reason(&ctx, &format!("grant{i}"), "Reconciled").await?;
        }
        for i in 1..=3 {
            let creds = ctx.credentials(&format!("app{i}")).await?;
            emulator.wait_scp(&creds, &a, &["read"]).await?;
        }
        let n = emulator.call_count("updateAPIApplications").await?;
        eprintln!("grants::batched_authorizations: 3 grants, {n} updateAPIApplications call(s)");
        ensure!(
            n < 3,
            "3 authorizations took {n} updateAPIApplications calls (not batched)"
        );
        Ok(())
    }
    .await;
    operator.with_log(r)
}

/// Adding a scope to the grant adds it to the token; removing one removes it.
async fn scopes_converge(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = ctx.own_emulator_and_operator(&[], "10m", &[]).await?;
    let a = aud("scopes");
    ctx.apply(&[
        &api("api", &a, &["read", "write", "admin"]),
        &app("app"),
        &grant("grant", "app", "api", &["read"]),
    ])
    .await?;
    let r = async {
        grant_reason(&ctx, "grant", "Reconciled").await?;
        let creds = ctx.credentials("app").await?;
        emulator.wait_scp(&creds, &a, &["read"]).await?;
        ctx.apply(&[&grant("grant", "app", "api", &["read", "write"])])
            .await?;
        emulator.wait_scp(&creds, &a, &["read", "write"]).await?;
        ctx.apply(&[&grant("grant", "app", "api", &["write"])])
            .await?;
        emulator.wait_scp(&creds, &a, &["write"]).await?;
        wait_for("grantedScopes [write]", WAIT, || async {
            let s = grant_status(&ctx, "grant").await?;
            Ok((s.granted_scopes == ["write"]).then_some(()))
        })
        .await
    }
    .await;
    operator.with_log(r)
}

/// `from: Same` refuses a grant from another namespace (no Kinde write, Event); switching the
/// API to `from: All` admits it without a poke.
async fn policy_same_then_all(ctx: Ctx) -> anyhow::Result<()> {
    let platform = ctx.extra_namespace(&[]).await?;
    let (emulator, operator) = ctx
        .own_emulator_and_operator(&[&platform], "10m", &[])
        .await?;
    let a = aud("policy");
    ctx.apply_in(&platform, &[&api("api", &a, &["read"])])
        .await?;
    let r = async {
        wait_reason(
            &ctx.api_in::<ApiRegistration>(&platform),
            "api",
            "Reconciled",
        )
        .await?;
        ctx.apply(&[&app("app")]).await?;
        ready::<M2MApplication>(&ctx, "app").await?;
        let before = emulator.total_writes().await?;
        ctx.apply(&[&grant("grant", "app", "api", &["read"]).with_api_namespace(&platform)])
            .await?;
        grant_reason(&ctx, "grant", "RefNotPermitted").await?;
        grant_event(&ctx, "grant", "RefNotPermitted").await?;
        let after = emulator.total_writes().await?;
        ensure!(
            after == before,
            "a refused grant wrote to Kinde: {before} → {after} writes"
        );
        let creds = ctx.credentials("app").await?;
        emulator.wait_refused(&creds, &a).await?;

        merge_patch(
            &ctx.api_in::<ApiRegistration>(&platform),
            "api",
            json!({"spec": {"grantPolicy": {"from": GrantFrom::All}}}),
        )
        .await?;
        grant_reason(&ctx, "grant", "Reconciled").await?;
        emulator.wait_scp(&creds, &a, &["read"]).await
    }
    .await;
    operator.with_log(r)
}

/// `from: Selector` admits exactly the labelled namespaces; labelling a namespace admits
/// its grant at the next resync, without a poke.
async fn policy_selector_label(ctx: Ctx) -> anyhow::Result<()> {
    let platform = ctx.extra_namespace(&[]).await?;
    let labelled = ctx.extra_namespace(&[("team", "blue")]).await?;
    let (emulator, operator) = ctx
        .own_emulator_and_operator(&[&platform, &labelled], "5s", &[])
        .await?;
    let a = aud("selector");
    ctx.apply_in(
        &platform,
        &[&api("api", &a, &["read"]).with_grant_selector(&[("team", "blue")])],
    )
    .await?;
    let (the_app, the_grant) = (
        app("app"),
        grant("grant", "app", "api", &["read"]).with_api_namespace(&platform),
    );
    ctx.apply(&[&the_app, &the_grant]).await?;
    ctx.apply_in(&labelled, &[&the_app, &the_grant]).await?;
    let r = async {
        wait_reason(&ctx.api_in::<ApiGrant>(&labelled), "grant", "Reconciled").await?;
        grant_reason(&ctx, "grant", "RefNotPermitted").await?;
        grant_event(&ctx, "grant", "RefNotPermitted").await?;
        ready::<M2MApplication>(&ctx, "app").await?;
        let creds = ctx.credentials("app").await?;
        emulator.wait_refused(&creds, &a).await?;

        // Label the test's namespace: admitted at a resync, no poke.
        let namespaces = Api::<Namespace>::all(ctx.client.clone());
        merge_patch(
            &namespaces,
            &ctx.ns,
            json!({"metadata": {"labels": {"team": "blue"}}}),
        )
        .await?;
        grant_reason(&ctx, "grant", "Reconciled").await?;
        emulator.wait_scp(&creds, &a, &["read"]).await?;
        wait_audience(&ctx, "app", &[&a]).await?;

        // Removing the label withdraws the permission, and with it the access.
        merge_patch(
            &namespaces,
            &ctx.ns,
            json!({"metadata": {"labels": {"team": null}}}),
        )
        .await?;
        grant_reason(&ctx, "grant", "RefNotPermitted").await?;
        emulator.wait_refused(&creds, &a).await?;
        wait_audience(&ctx, "app", &[]).await?;
        // The labelled namespace's grant is untouched.
        wait_reason(&ctx.api_in::<ApiGrant>(&labelled), "grant", "Reconciled").await?;
        Ok(())
    }
    .await;
    operator.with_log(r)
}

/// A second grant for the same app and API reports Conflict and leaves Kinde alone; deleting
/// the older one lets the newer take over by itself.
async fn conflict_older_wins(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = ctx.own_emulator_and_operator(&[], "10m", &[]).await?;
    let a = aud("conflict");
    ctx.apply(&[
        &api("api", &a, &["read", "write"]),
        &app("app"),
        &grant("older", "app", "api", &["read"]),
    ])
    .await?;
    let r = async {
        grant_reason(&ctx, "older", "Reconciled").await?;
        let creds = ctx.credentials("app").await?;
        emulator.wait_scp(&creds, &a, &["read"]).await?;
        let before = emulator.total_writes().await?;
        ctx.apply(&[&grant("newer", "app", "api", &["write"])])
            .await?;
        let msg = grant_reason(&ctx, "newer", "Conflict").await?;
        ensure!(
            msg.contains("older"),
            "Conflict message names no winner: {msg}"
        );
        grant_event(&ctx, "newer", "Conflict").await?;
        let after = emulator.total_writes().await?;
        ensure!(
            after == before,
            "the losing grant wrote to Kinde: {before} → {after}"
        );
        emulator.wait_scp(&creds, &a, &["read"]).await?;
        grant_reason(&ctx, "older", "Reconciled").await?;

        delete_grant(&ctx, "older").await?;
        grant_reason(&ctx, "newer", "Reconciled").await?;
        emulator.wait_scp(&creds, &a, &["write"]).await?;
        wait_audience(&ctx, "app", &[&a]).await
    }
    .await;
    operator.with_log(r)
}

/// Created before what it references, a grant reports each missing piece in turn and
/// converges by itself once the application and API exist and are Ready.
async fn waits_then_converges(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = ctx.own_emulator_and_operator(&[], "10m", &[]).await?;
    let a = aud("waits");
    let r = async {
        ctx.apply(&[&grant("grant", "app", "api", &["read", "write"])])
            .await?;
        grant_reason(&ctx, "grant", "ApplicationNotFound").await?;
        grant_event(&ctx, "grant", "ApplicationNotFound").await?;

        ctx.apply(&[&app("app")]).await?;
        grant_reason(&ctx, "grant", "ApiNotFound").await?;
        grant_event(&ctx, "grant", "ApiNotFound").await?;

        // The API without the grant's second scope.
        ctx.apply(&[&api("api", &a, &["read"])]).await?;
        grant_reason(&ctx, "grant", "ScopeNotFound").await?;
        grant_event(&ctx, "grant", "ScopeNotFound").await?;
        ready::<ApiRegistration>(&ctx, "api").await?;
        ensure!(
            grant_writes(&emulator).await? == 0,
            "a grant with a missing scope wrote to Kinde: {}",
            emulator.calls().await?
        );

        // Pause the API, then declare the scope: the API cannot make it Ready in Kinde.
        set_paused::<ApiRegistration>(&ctx, &ctx.ns, "api", Some("true")).await?;
        wait_paused::<ApiRegistration>(&ctx, "api").await?;
        ctx.apply(&[&api("api", &a, &["read", "write"])]).await?;
        grant_reason(&ctx, "grant", "WaitingForApi").await?;
        grant_event(&ctx, "grant", "WaitingForApi").await?;
        ensure!(
            grant_writes(&emulator).await? == 0,
            "a waiting grant wrote to Kinde: {}",
            emulator.calls().await?
        );

        // Resume: the API creates the scope, the grant converges without a poke.
        set_paused::<ApiRegistration>(&ctx, &ctx.ns, "api", None).await?;
        grant_reason(&ctx, "grant", "Reconciled").await?;
        let creds = ctx.credentials("app").await?;
        emulator.wait_scp(&creds, &a, &["read", "write"]).await?;
        wait_audience(&ctx, "app", &[&a]).await
    }
    .await;
    operator.with_log(r)
}

/// Bad input never reaches Kinde and never crashes the operator: each bad grant (and the
/// Management API as an ApiRegistration) gets its reason and an Event; zero Kinde writes.
async fn bad_input_never_reaches_kinde(ctx: Ctx) -> anyhow::Result<()> {
    let other = ctx.extra_namespace(&[]).await?;
    let (emulator, mut operator) = ctx.own_emulator_and_operator(&[&other], "10m", &[]).await?;
    let a = aud("bad");
    ctx.apply(&[&api("api", &a, &["read"]), &app("app"), &app("paused-app")])
        .await?;
    ctx.apply_in(&other, &[&api("foreign", &aud("foreign"), &["read"])])
        .await?;
    let r = async {
        ready::<ApiRegistration>(&ctx, "api").await?;
        ready::<M2MApplication>(&ctx, "app").await?;
        ready::<M2MApplication>(&ctx, "paused-app").await?;
        wait_reason(
            &ctx.api_in::<ApiRegistration>(&other),
            "foreign",
            "Reconciled",
        )
        .await?;
        // Settle: the apps' post-create rename is done once they are Ready.
        let before = emulator.total_writes().await?;

        let management = format!("{}/api", emulator.url);
        ctx.apply(&[
            &grant("no-app", "ghost", "api", &["read"]),
            &grant("no-api", "app", "ghost", &["read"]),
            &grant("no-scope", "app", "api", &["read", "delete:everything"]),
            &grant("refused", "app", "foreign", &["read"]).with_api_namespace(&other),
            &api("management", &management, &["read"]),
            &grant("to-management", "app", "management", &["read"]),
            // A paused new application is not created in Kinde, so never Ready.
            &app("frozen").paused(),
            &grant("to-frozen", "frozen", "api", &["read"]),
        ])
        .await?;
        // With kstatus's condition: refusals stall, waits reconcile (README's table).
        for (grant, reason, holds) in [
            ("no-app", "ApplicationNotFound", "Reconciling"),
            ("no-api", "ApiNotFound", "Reconciling"),
            ("no-scope", "ScopeNotFound", "Stalled"),
            ("refused", "RefNotPermitted", "Stalled"),
            ("to-management", "WaitingForApi", "Reconciling"),
            ("to-frozen", "WaitingForApplication", "Reconciling"),
        ] {
            grant_reason(&ctx, grant, reason).await?;
            grant_event(&ctx, grant, reason).await?;
            kstatus_conditions::<ApiGrant>(&ctx, grant, Some(holds)).await?;
        }
        kstatus_conditions::<ApiRegistration>(&ctx, "api", None).await?;
        wait_reason(
            &ctx.api::<ApiRegistration>(),
            "management",
            "ManagementApiRefused",
        )
        .await?;
        wait_events::<ApiRegistration>(
            &ctx.client,
            &ctx.ns,
            "management",
            &["ManagementApiRefused"],
        )
        .await?;
        kstatus_conditions::<ApiRegistration>(&ctx, "management", Some("Stalled")).await?;

        // A paused grant for a valid pair: Paused, no writes.
        ctx.apply(&[&grant("paused", "paused-app", "api", &["read"]).paused()])
            .await?;
        wait_paused::<M2MApplication>(&ctx, "frozen").await?;
        wait_paused::<ApiGrant>(&ctx, "paused").await?;

        let after = emulator.total_writes().await?;
        ensure!(
            after == before,
            "bad input reached Kinde: {before} → {after} writes; calls {}",
            emulator.calls().await?
        );
        ensure!(operator.is_running(), "the operator exited");
        // The emulator's own Management API has that audience; no other API may.
        let state = emulator.state().await?;
        ensure!(
            emulator.kinde_api_by_audience(&management).await?.is_none(),
            "the Management API's audience reached Kinde as another API: {state}"
        );
        let paused_app = ctx.credentials("paused-app").await?;
        emulator.wait_refused(&paused_app, &a).await?;

        // Unpausing resumes and converges.
        set_paused::<ApiGrant>(&ctx, &ctx.ns, "paused", None).await?;
        grant_reason(&ctx, "paused", "Reconciled").await?;
        emulator.wait_scp(&paused_app, &a, &["read"]).await?;
        set_paused::<M2MApplication>(&ctx, &ctx.ns, "frozen", None).await?;
        grant_reason(&ctx, "to-frozen", "Reconciled").await?;
        let frozen = ctx.credentials("frozen").await?;
        emulator.wait_scp(&frozen, &a, &["read"]).await?;
        wait_audience(&ctx, "frozen", &[&a]).await?;
        ensure!(operator.is_running(), "the operator exited");
        Ok(())
    }
    .await;
    operator.with_log(r)
}

/// Pausing a Ready grant: scope changes and deletion wait (no Kinde writes) and status says
/// Paused; removing the annotation applies them.
async fn paused_grant(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = ctx.own_emulator_and_operator(&[], "10m", &[]).await?;
    let a = aud("paused");
    ctx.apply(&[
        &api("api", &a, &["read", "write"]),
        &app("app"),
        &grant("grant", "app", "api", &["read"]),
    ])
    .await?;
    let grants = ctx.api::<ApiGrant>();
    let r = async {
        grant_reason(&ctx, "grant", "Reconciled").await?;
        let creds = ctx.credentials("app").await?;
        emulator.wait_scp(&creds, &a, &["read"]).await?;
        set_paused::<ApiGrant>(&ctx, &ctx.ns, "grant", Some("true")).await?;
        wait_paused::<ApiGrant>(&ctx, "grant").await?;
        let before = emulator.total_writes().await?;
        merge_patch(
            &grants,
            "grant",
            json!({"spec": {"scopes": ["read", "write"]}}),
        )
        .await?;
        let generation = grants.get("grant").await?.metadata.generation;
        let synced = wait_for(
            "the paused grant to observe its new generation",
            WAIT,
            || async {
                let g = grants.get("grant").await?;
                Ok((g.status_or_default().observed_generation == generation).then_some(g))
            },
        )
        .await?;
        let reason = synced
            .condition("Synced")
            .map(|c| c.reason.clone())
            .ok_or_else(|| anyhow!("no Synced"))?;
        ensure!(reason == "Paused", "Synced reason {reason} while paused");
        // Deleting a paused grant waits too.
        support::delete(&grants, "grant").await?;
        grant_event(&ctx, "grant", "Paused").await?;
        ensure!(
            emulator.total_writes().await? == before,
            "a paused grant wrote to Kinde: {}",
            emulator.calls().await?
        );
        emulator.wait_scp(&creds, &a, &["read"]).await?;

        // Resume: the deletion proceeds and cuts access.
        set_paused::<ApiGrant>(&ctx, &ctx.ns, "grant", None).await?;
        wait_gone(&grants, "grant").await?;
        emulator.wait_refused(&creds, &a).await?;
        wait_audience(&ctx, "app", &[]).await
    }
    .await;
    operator.with_log(r)
}

/// Moving a grant to another API de-authorizes the old pair and authorizes the new one.
async fn api_ref_change(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = ctx.own_emulator_and_operator(&[], "10m", &[]).await?;
    let (a1, a2) = (aud("old"), aud("new"));
    ctx.apply(&[
        &api("old", &a1, &["read"]),
        &api("new", &a2, &["read"]),
        &app("app"),
        &grant("grant", "app", "old", &["read"]),
    ])
    .await?;
    let r = async {
        grant_reason(&ctx, "grant", "Reconciled").await?;
        ready::<ApiRegistration>(&ctx, "new").await?;
        let creds = ctx.credentials("app").await?;
        emulator.wait_scp(&creds, &a1, &["read"]).await?;
        ctx.apply(&[&grant("grant", "app", "new", &["read"])])
            .await?;
        emulator.wait_scp(&creds, &a2, &["read"]).await?;
        emulator.wait_refused(&creds, &a1).await?;
        wait_audience(&ctx, "app", &[&a2]).await?;
        let status = grant_status(&ctx, "grant").await?;
        ensure!(
            status.audience.as_deref() == Some(&*a2),
            "status: {status:?}"
        );
        let state = emulator.state().await?;
        let old_api = emulator
            .kinde_api_by_audience(&a1)
            .await?
            .ok_or_else(|| anyhow!("old API not in Kinde: {state}"))?;
        if old_api.to_string().contains(&creds.client_id) {
            bail!("the app is still listed on the old API: {old_api}");
        }
        Ok(())
    }
    .await;
    operator.with_log(r)
}

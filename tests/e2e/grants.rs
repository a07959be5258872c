//! ApiGrant end to end: the real operator binary on the real control plane against its own
//! Kinde emulator per test. Authorization is checked where it matters: the token endpoint,
//! with the credentials the operator wrote into the application's Secret.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use crate::support::{self, Ctx, E2eTest, Emulator, Operator, wait_for};

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

const WAIT: Duration = Duration::from_secs(60);
const PAUSED: &str = "m2m.kinde-operator.io/paused";
/// Operations through which a grant writes to Kinde.
const GRANT_OPS: [&str; 3] = [
    "updateAPIApplications",
    "addAPIApplicationScope",
    "deleteAPIApplicationScope",
];

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A fresh emulator and an operator watching the test's namespace plus `extra`.
async fn start(ctx: &Ctx, extra: &[&str], resync: &str) -> anyhow::Result<(Emulator, Operator)> {
    ctx.harness.ensure_crds().await?;
    let emulator = ctx.own_emulator()?;
    let operator = ctx.run_operator(&emulator, extra, resync, &[])?;
    Ok((emulator, operator))
}

fn api_yaml(name: &str, audience: &str, scopes: &[&str], policy: &str) -> String {
    let scopes: String = scopes
        .iter()
        .map(|s| format!("\n    - key: {s}\n      description: {s}"))
        .collect();
    format!(
        "apiVersion: m2m.kinde-operator.io/v1alpha1\nkind: ApiRegistration\nmetadata:\n  name: {name}\nspec:\n  audience: {audience}\n  scopes:{scopes}\n  grantPolicy:\n{policy}\n---\n"
    )
}

fn same() -> String {
    "    from: Same".into()
}

fn app_yaml(name: &str) -> String {
    format!(
        "apiVersion: m2m.kinde-operator.io/v1alpha1\nkind: M2MApplication\nmetadata:\n  name: {name}\nspec:\n  displayName: {name}\n---\n"
    )
}

fn grant_yaml(name: &str, app: &str, api: &str, api_ns: Option<&str>, scopes: &[&str]) -> String {
    let ns = api_ns
        .map(|n| format!("\n    namespace: {n}"))
        .unwrap_or_default();
    let scopes: String = scopes.iter().map(|s| format!("\n    - {s}")).collect();
    format!(
        "apiVersion: m2m.kinde-operator.io/v1alpha1\nkind: ApiGrant\nmetadata:\n  name: {name}\nspec:\n  applicationRef:\n    name: {app}\n  apiRef:\n    name: {api}{ns}\n  scopes:{scopes}\n---\n"
    )
}

/// `yaml` (one object) with the paused annotation set.
fn with_paused(yaml: &str) -> String {
    yaml.replacen(
        "metadata:\n",
        &format!("metadata:\n  annotations:\n    {PAUSED}: \"true\"\n"),
        1,
    )
}

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "m2m.kinde-operator.io",
        "v1alpha1",
        kind,
    ))
}

fn dyn_api(ctx: &Ctx, ns: &str, kind: &str) -> Api<DynamicObject> {
    let plural = match kind {
        "ApiGrant" => "apigrants",
        "ApiRegistration" => "apiregistrations",
        _ => "m2mapplications",
    };
    let mut ar = resource(kind);
    ar.plural = plural.into();
    Api::namespaced_with(ctx.client.clone(), ns, &ar)
}

/// `(status, reason, message)` of a condition of `ns/name`, if present.
async fn condition(
    ctx: &Ctx,
    ns: &str,
    kind: &str,
    name: &str,
    type_: &str,
) -> anyhow::Result<Option<(String, String, String)>> {
    let obj = dyn_api(ctx, ns, kind).get_opt(name).await?;
    Ok(obj.and_then(|o| condition_of(&o, type_)))
}

/// `(status, reason, message)` of a condition of `obj`, if present.
fn condition_of(obj: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    let conds = obj.data["status"]["conditions"].as_array()?;
    conds.iter().find(|c| c["type"] == type_).map(|c| {
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
        (s("status"), s("reason"), s("message"))
    })
}

/// Waits until `kind ns/name` has `Ready` with `reason` (and `status` matching `Ready`
/// True for `Reconciled`, else False).
async fn wait_reason(
    ctx: &Ctx,
    ns: &str,
    kind: &str,
    name: &str,
    reason: &str,
) -> anyhow::Result<String> {
    let want_status = if reason == "Reconciled" {
        "True"
    } else {
        "False"
    };
    wait_for(
        &format!("{kind} {ns}/{name} Ready={want_status} reason {reason}"),
        WAIT,
        || async {
            match condition(ctx, ns, kind, name, "Ready").await? {
                Some((s, r, m)) if s == want_status && r == reason => Ok(Some(m)),
                other => Err(anyhow!("Ready condition: {other:?}")),
            }
        },
    )
    .await
}

/// Checks kstatus's view of `kind name` in the test's namespace: its status is for the
/// current generation, and `holds` (`Reconciling` or `Stalled`) is True with Ready's reason
/// and message while the other is False; with `None` (a Ready object), both are False.
async fn kstatus_conditions(
    ctx: &Ctx,
    kind: &str,
    name: &str,
    holds: Option<&str>,
) -> anyhow::Result<()> {
    let obj = dyn_api(ctx, &ctx.ns, kind).get(name).await?;
    let observed = obj.data["status"]["observedGeneration"].as_i64();
    ensure!(
        observed == obj.metadata.generation && observed.is_some(),
        "{kind} {name}: status.observedGeneration {observed:?}, generation {:?}",
        obj.metadata.generation
    );
    // All from the one read above, so the conditions are from one status write.
    let find = |type_: &str| condition_of(&obj, type_);
    let ready = find("Ready").with_context(|| format!("{kind} {name}: no Ready"))?;
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
            "{kind} {name}: {type_} is {found:?}, want {want:?}"
        );
    }
    Ok(())
}

async fn grant_reason(ctx: &Ctx, name: &str, reason: &str) -> anyhow::Result<String> {
    wait_reason(ctx, &ctx.ns, "ApiGrant", name, reason).await
}

async fn ready(ctx: &Ctx, kind: &str, name: &str) -> anyhow::Result<()> {
    wait_reason(ctx, &ctx.ns, kind, name, "Reconciled")
        .await
        .map(drop)
}

/// The grant's status as JSON.
async fn grant_status(ctx: &Ctx, name: &str) -> anyhow::Result<Value> {
    Ok(dyn_api(ctx, &ctx.ns, "ApiGrant").get(name).await?.data["status"].clone())
}

/// Client id, client secret and `KINDE_AUDIENCE` from an application's Secret.
async fn credentials(ctx: &Ctx, app: &str) -> anyhow::Result<(String, String, String)> {
    let secret = ctx
        .api::<Secret>()
        .get(&format!("{app}-credentials"))
        .await
        .with_context(|| format!("Secret of {app}"))?;
    let data = secret.data.unwrap_or_default();
    let key = |k: &str| -> String {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    let id = key("KINDE_CLIENT_ID");
    ensure!(!id.is_empty(), "no KINDE_CLIENT_ID in the Secret of {app}");
    Ok((id, key("KINDE_CLIENT_SECRET"), key("KINDE_AUDIENCE")))
}

/// The `scp` claim of a token for `app` on `audience`, or the refusal.
async fn scp(
    ctx: &Ctx,
    emulator: &Emulator,
    app: &str,
    audience: &str,
) -> anyhow::Result<Result<Vec<String>, String>> {
    let (id, secret, _) = credentials(ctx, app).await?;
    Ok(emulator
        .token_claims(&id, &secret, audience)
        .await?
        .map(|claims| {
            let mut v: Vec<String> = claims["scp"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            v.sort();
            v
        }))
}

/// Waits until a token for `app` on `audience` carries exactly `scopes`.
async fn wait_scp(
    ctx: &Ctx,
    emulator: &Emulator,
    app: &str,
    audience: &str,
    scopes: &[&str],
) -> anyhow::Result<()> {
    let mut want: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_for(
        &format!("a token for {app} on {audience} with scp {want:?}"),
        WAIT,
        || async {
            match scp(ctx, emulator, app, audience).await? {
                Ok(got) if got == want => Ok(Some(())),
                other => Err(anyhow!("token: {other:?}")),
            }
        },
    )
    .await
}

/// Waits until a token request for `app` on `audience` is refused.
async fn wait_refused(
    ctx: &Ctx,
    emulator: &Emulator,
    app: &str,
    audience: &str,
) -> anyhow::Result<String> {
    wait_for(
        &format!("the token request of {app} for {audience} to be refused"),
        WAIT,
        || async {
            match scp(ctx, emulator, app, audience).await? {
                Err(refusal) => Ok(Some(refusal)),
                Ok(scp) => Err(anyhow!("still granted, scp {scp:?}")),
            }
        },
    )
    .await
}

/// Waits until the app's Secret has `KINDE_AUDIENCE` equal to `audiences` (any order).
async fn wait_audience(ctx: &Ctx, app: &str, audiences: &[&str]) -> anyhow::Result<()> {
    let mut want: Vec<&str> = audiences.to_vec();
    want.sort();
    wait_for(
        &format!("KINDE_AUDIENCE of {app} to be {want:?}"),
        WAIT,
        || async {
            let (_, _, aud) = credentials(ctx, app).await?;
            let mut got: Vec<&str> = aud.split_whitespace().collect();
            got.sort();
            if got == want {
                Ok(Some(()))
            } else {
                Err(anyhow!("KINDE_AUDIENCE is {aud:?}"))
            }
        },
    )
    .await
}

/// Waits for an Event with `reason` about `kind ns/name`.
async fn wait_event(
    ctx: &Ctx,
    ns: &str,
    kind: &str,
    name: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let events = Api::<Event>::namespaced(ctx.client.clone(), ns);
    wait_for(
        &format!("an Event {reason} about {kind} {ns}/{name}"),
        WAIT,
        || async {
            let list = events.list(&ListParams::default()).await?;
            let seen: Vec<String> = list
                .items
                .iter()
                .filter(|e| {
                    e.regarding.as_ref().is_some_and(|r| {
                        r.name.as_deref() == Some(name) && r.kind.as_deref() == Some(kind)
                    })
                })
                .filter_map(|e| e.reason.clone())
                .collect();
            if seen.iter().any(|r| r == reason) {
                Ok(Some(()))
            } else {
                Err(anyhow!("Events seen: {seen:?}"))
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

async fn annotate(
    ctx: &Ctx,
    ns: &str,
    kind: &str,
    name: &str,
    value: Option<&str>,
) -> anyhow::Result<()> {
    let patch = json!({"metadata": {"annotations": {PAUSED: value}}});
    dyn_api(ctx, ns, kind)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn merge_patch(
    ctx: &Ctx,
    ns: &str,
    kind: &str,
    name: &str,
    patch: Value,
) -> anyhow::Result<()> {
    dyn_api(ctx, ns, kind)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn delete_grant(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let api = dyn_api(ctx, &ctx.ns, "ApiGrant");
    api.delete(name, &DeleteParams::default()).await?;
    wait_for(&format!("ApiGrant {name} to be gone"), WAIT, || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

fn aud(tag: &str) -> String {
    format!("https://{tag}.example.com")
}

/// Fails with the operator's log tail when `result` is an error.
fn with_log<T>(operator: &Operator, result: anyhow::Result<T>) -> anyhow::Result<T> {
    result.map_err(|e| {
        anyhow!(
            "{e:#}\n--- operator log tail ---\n{}",
            operator.log_tail(40)
        )
    })
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// Grant Ready → token with the grant's scopes, KINDE_AUDIENCE lists the audience; deleting
/// the grant cuts access and empties KINDE_AUDIENCE; the app and its other grant stay.
async fn authorize_and_revoke(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = start(&ctx, &[], "10m").await?;
    let (a1, a2) = (aud("one"), aud("two"));
    let yaml = [
        api_yaml("one", &a1, &["read:users", "write:users"], &same()),
        api_yaml("two", &a2, &["read:flags"], &same()),
        app_yaml("acme"),
        grant_yaml("acme-one", "acme", "one", None, &["read:users"]),
        grant_yaml("acme-two", "acme", "two", None, &["read:flags"]),
    ]
    .concat();
    ctx.apply_yaml(&yaml).await?;
    let r = async {
        grant_reason(&ctx, "acme-one", "Reconciled").await?;
        grant_reason(&ctx, "acme-two", "Reconciled").await?;
        wait_scp(&ctx, &emulator, "acme", &a1, &["read:users"]).await?;
        wait_scp(&ctx, &emulator, "acme", &a2, &["read:flags"]).await?;
        wait_audience(&ctx, "acme", &[&a1, &a2]).await?;
        let status = grant_status(&ctx, "acme-one").await?;
        ensure!(
            status["grantedScopes"] == json!(["read:users"]) && status["audience"] == json!(a1),
            "status of acme-one: {status}"
        );
        wait_event(&ctx, &ctx.ns, "ApiGrant", "acme-one", "Granted").await?;

        delete_grant(&ctx, "acme-one").await?;
        let refusal = wait_refused(&ctx, &emulator, "acme", &a1).await?;
        eprintln!("grants::authorize_and_revoke: refused after delete: {refusal}");
        wait_audience(&ctx, "acme", &[&a2]).await?;
        // The app and the other grant are untouched.
        wait_scp(&ctx, &emulator, "acme", &a2, &["read:flags"]).await?;
        ready(&ctx, "M2MApplication", "acme").await?;
        grant_reason(&ctx, "acme-two", "Reconciled").await?;
        let state = emulator.state().await?;
        let (id, _, _) = credentials(&ctx, "acme").await?;
        ensure!(
            state.to_string().contains(&id),
            "application {id} gone from Kinde: {state}"
        );

        delete_grant(&ctx, "acme-two").await?;
        wait_refused(&ctx, &emulator, "acme", &a2).await?;
        wait_audience(&ctx, "acme", &[]).await
    }
    .await;
    with_log(&operator, r)
}

/// Three apps and three grants for one API in one `kubectl apply`: the authorizations are
/// batched into fewer `updateAPIApplications` calls than grants.
async fn batched_authorizations(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = start(&ctx, &[], "10m").await?;
    let a = aud("batch");
    let mut yaml = api_yaml("api", &a, &["read"], &same());
    for i in 1..=3 {
        yaml.push_str(&app_yaml(&format!("app{i}")));
        yaml.push_str(&grant_yaml(
            &format!("grant{i}"),
            &format!("app{i}"),
            "api",
            None,
            &["read"],
        ));
    }
    ctx.apply_yaml(&yaml).await?;
    let r = async {
        for i in 1..=3 {
            grant_reason(&ctx, &format!("grant{i}"), "Reconciled").await?;
        }
        for i in 1..=3 {
            wait_scp(&ctx, &emulator, &format!("app{i}"), &a, &["read"]).await?;
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
    with_log(&operator, r)
}

/// Adding a scope to the grant adds it to the token; removing one removes it.
async fn scopes_converge(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = start(&ctx, &[], "10m").await?;
    let a = aud("scopes");
    let yaml = [
        api_yaml("api", &a, &["read", "write", "admin"], &same()),
        app_yaml("app"),
        grant_yaml("grant", "app", "api", None, &["read"]),
    ]
    .concat();
    ctx.apply_yaml(&yaml).await?;
    let r = async {
        grant_reason(&ctx, "grant", "Reconciled").await?;
        wait_scp(&ctx, &emulator, "app", &a, &["read"]).await?;
        ctx.apply_yaml(&grant_yaml("grant", "app", "api", None, &["read", "write"]))
            .await?;
        wait_scp(&ctx, &emulator, "app", &a, &["read", "write"]).await?;
        ctx.apply_yaml(&grant_yaml("grant", "app", "api", None, &["write"]))
            .await?;
        wait_scp(&ctx, &emulator, "app", &a, &["write"]).await?;
        wait_for("grantedScopes [write]", WAIT, || async {
            let s = grant_status(&ctx, "grant").await?;
            Ok((s["grantedScopes"] == json!(["write"])).then_some(()))
        })
        .await
    }
    .await;
    with_log(&operator, r)
}

/// `from: Same` refuses a grant from another namespace (no Kinde write, Event); switching the
/// API to `from: All` admits it without a poke.
async fn policy_same_then_all(ctx: Ctx) -> anyhow::Result<()> {
    let platform = ctx.extra_namespace(&[]).await?;
    let (emulator, operator) = start(&ctx, &[&platform], "10m").await?;
    let a = aud("policy");
    ctx.kubectl_stdin(
        &["apply", "-n", &platform, "-f", "-"],
        &api_yaml("api", &a, &["read"], &same()),
    )
    .await?
    .success()?;
    let r = async {
        wait_reason(&ctx, &platform, "ApiRegistration", "api", "Reconciled").await?;
        ctx.apply_yaml(&app_yaml("app")).await?;
        ready(&ctx, "M2MApplication", "app").await?;
        let before = emulator.total_writes().await?;
        ctx.apply_yaml(&grant_yaml(
            "grant",
            "app",
            "api",
            Some(&platform),
            &["read"],
        ))
        .await?;
        grant_reason(&ctx, "grant", "RefNotPermitted").await?;
        wait_event(&ctx, &ctx.ns, "ApiGrant", "grant", "RefNotPermitted").await?;
        let after = emulator.total_writes().await?;
        ensure!(
            after == before,
            "a refused grant wrote to Kinde: {before} → {after} writes"
        );
        wait_refused(&ctx, &emulator, "app", &a).await?;

        merge_patch(
            &ctx,
            &platform,
            "ApiRegistration",
            "api",
            json!({"spec": {"grantPolicy": {"from": "All"}}}),
        )
        .await?;
        grant_reason(&ctx, "grant", "Reconciled").await?;
        wait_scp(&ctx, &emulator, "app", &a, &["read"]).await
    }
    .await;
    with_log(&operator, r)
}

/// `from: Selector` admits exactly the labelled namespaces; labelling a namespace admits
/// its grant at the next resync, without a poke.
async fn policy_selector_label(ctx: Ctx) -> anyhow::Result<()> {
    let platform = ctx.extra_namespace(&[]).await?;
    let labelled = ctx.extra_namespace(&[("team", "blue")]).await?;
    let (emulator, operator) = start(&ctx, &[&platform, &labelled], "5s").await?;
    let a = aud("selector");
    let policy =
        "    from: Selector\n    namespaceSelector:\n      matchLabels:\n        team: blue";
    ctx.kubectl_stdin(
        &["apply", "-n", &platform, "-f", "-"],
        &api_yaml("api", &a, &["read"], policy),
    )
    .await?
    .success()?;
    let both = [
        app_yaml("app"),
        grant_yaml("grant", "app", "api", Some(&platform), &["read"]),
    ]
    .concat();
    ctx.apply_yaml(&both).await?;
    ctx.kubectl_stdin(&["apply", "-n", &labelled, "-f", "-"], &both)
        .await?
        .success()?;
    let r = async {
        wait_reason(&ctx, &labelled, "ApiGrant", "grant", "Reconciled").await?;
        grant_reason(&ctx, "grant", "RefNotPermitted").await?;
        wait_event(&ctx, &ctx.ns, "ApiGrant", "grant", "RefNotPermitted").await?;
        ready(&ctx, "M2MApplication", "app").await?;
        wait_refused(&ctx, &emulator, "app", &a).await?;

        // Label the test's namespace: admitted at a resync, no poke.
        let patch = json!({"metadata": {"labels": {"team": "blue"}}});
        Api::<Namespace>::all(ctx.client.clone())
            .patch(&ctx.ns, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        grant_reason(&ctx, "grant", "Reconciled").await?;
        wait_scp(&ctx, &emulator, "app", &a, &["read"]).await?;
        wait_audience(&ctx, "app", &[&a]).await?;

        // Removing the label withdraws the permission, and with it the access.
        let patch = json!({"metadata": {"labels": {"team": null}}});
        Api::<Namespace>::all(ctx.client.clone())
            .patch(&ctx.ns, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        grant_reason(&ctx, "grant", "RefNotPermitted").await?;
        wait_refused(&ctx, &emulator, "app", &a).await?;
        wait_audience(&ctx, "app", &[]).await?;
        // The labelled namespace's grant is untouched.
        wait_reason(&ctx, &labelled, "ApiGrant", "grant", "Reconciled").await?;
        Ok(())
    }
    .await;
    with_log(&operator, r)
}

/// A second grant for the same app and API reports Conflict and leaves Kinde alone; deleting
/// the older one lets the newer take over by itself.
async fn conflict_older_wins(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = start(&ctx, &[], "10m").await?;
    let a = aud("conflict");
    let yaml = [
        api_yaml("api", &a, &["read", "write"], &same()),
        app_yaml("app"),
        grant_yaml("older", "app", "api", None, &["read"]),
    ]
    .concat();
    ctx.apply_yaml(&yaml).await?;
    let r = async {
        grant_reason(&ctx, "older", "Reconciled").await?;
        wait_scp(&ctx, &emulator, "app", &a, &["read"]).await?;
        let before = emulator.total_writes().await?;
        ctx.apply_yaml(&grant_yaml("newer", "app", "api", None, &["write"]))
            .await?;
        let msg = grant_reason(&ctx, "newer", "Conflict").await?;
        ensure!(
            msg.contains("older"),
            "Conflict message names no winner: {msg}"
        );
        wait_event(&ctx, &ctx.ns, "ApiGrant", "newer", "Conflict").await?;
        let after = emulator.total_writes().await?;
        ensure!(
            after == before,
            "the losing grant wrote to Kinde: {before} → {after}"
        );
        wait_scp(&ctx, &emulator, "app", &a, &["read"]).await?;
        grant_reason(&ctx, "older", "Reconciled").await?;

        delete_grant(&ctx, "older").await?;
        grant_reason(&ctx, "newer", "Reconciled").await?;
        wait_scp(&ctx, &emulator, "app", &a, &["write"]).await?;
        wait_audience(&ctx, "app", &[&a]).await
    }
    .await;
    with_log(&operator, r)
}

/// Created before what it references, a grant reports each missing piece in turn and
/// converges by itself once the application and API exist and are Ready.
async fn waits_then_converges(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = start(&ctx, &[], "10m").await?;
    let a = aud("waits");
    let r = async {
        ctx.apply_yaml(&grant_yaml("grant", "app", "api", None, &["read", "write"]))
            .await?;
        grant_reason(&ctx, "grant", "ApplicationNotFound").await?;
        wait_event(&ctx, &ctx.ns, "ApiGrant", "grant", "ApplicationNotFound").await?;

        ctx.apply_yaml(&app_yaml("app")).await?;
        grant_reason(&ctx, "grant", "ApiNotFound").await?;
        wait_event(&ctx, &ctx.ns, "ApiGrant", "grant", "ApiNotFound").await?;

        // The API without the grant's second scope.
        ctx.apply_yaml(&api_yaml("api", &a, &["read"], &same()))
            .await?;
        grant_reason(&ctx, "grant", "ScopeNotFound").await?;
        wait_event(&ctx, &ctx.ns, "ApiGrant", "grant", "ScopeNotFound").await?;
        ready(&ctx, "ApiRegistration", "api").await?;
        ensure!(
            grant_writes(&emulator).await? == 0,
            "a grant with a missing scope wrote to Kinde: {}",
            emulator.calls().await?
        );

        // Pause the API, then declare the scope: the API cannot make it Ready in Kinde.
        annotate(&ctx, &ctx.ns, "ApiRegistration", "api", Some("true")).await?;
        wait_for("the API to report Paused", WAIT, || async {
            let c = condition(&ctx, &ctx.ns, "ApiRegistration", "api", "Synced").await?;
            Ok(c.filter(|(_, r, _)| r == "Paused").map(drop))
        })
        .await?;
        ctx.apply_yaml(&api_yaml("api", &a, &["read", "write"], &same()))
            .await?;
        grant_reason(&ctx, "grant", "WaitingForApi").await?;
        wait_event(&ctx, &ctx.ns, "ApiGrant", "grant", "WaitingForApi").await?;
        ensure!(
            grant_writes(&emulator).await? == 0,
            "a waiting grant wrote to Kinde: {}",
            emulator.calls().await?
        );

        // Resume: the API creates the scope, the grant converges without a poke.
        annotate(&ctx, &ctx.ns, "ApiRegistration", "api", None).await?;
        grant_reason(&ctx, "grant", "Reconciled").await?;
        wait_scp(&ctx, &emulator, "app", &a, &["read", "write"]).await?;
        wait_audience(&ctx, "app", &[&a]).await
    }
    .await;
    with_log(&operator, r)
}

/// Bad input never reaches Kinde and never crashes the operator: each bad grant (and the
/// Management API as an ApiRegistration) gets its reason and an Event; zero Kinde writes.
async fn bad_input_never_reaches_kinde(ctx: Ctx) -> anyhow::Result<()> {
    let other = ctx.extra_namespace(&[]).await?;
    let (emulator, mut operator) = start(&ctx, &[&other], "10m").await?;
    let a = aud("bad");
    let yaml = [
        api_yaml("api", &a, &["read"], &same()),
        app_yaml("app"),
        app_yaml("paused-app"),
    ]
    .concat();
    ctx.apply_yaml(&yaml).await?;
    ctx.kubectl_stdin(
        &["apply", "-n", &other, "-f", "-"],
        &api_yaml("foreign", &aud("foreign"), &["read"], &same()),
    )
    .await?
    .success()?;
    let r = async {
        ready(&ctx, "ApiRegistration", "api").await?;
        ready(&ctx, "M2MApplication", "app").await?;
        ready(&ctx, "M2MApplication", "paused-app").await?;
        wait_reason(&ctx, &other, "ApiRegistration", "foreign", "Reconciled").await?;
        // Settle: the apps' post-create rename is done once they are Ready.
        let before = emulator.total_writes().await?;

        let management = format!("{}/api", emulator.url);
        let bad = [
            grant_yaml("no-app", "ghost", "api", None, &["read"]),
            grant_yaml("no-api", "app", "ghost", None, &["read"]),
            grant_yaml(
                "no-scope",
                "app",
                "api",
                None,
                &["read", "delete:everything"],
            ),
            grant_yaml("refused", "app", "foreign", Some(&other), &["read"]),
            api_yaml("management", &management, &["read"], &same()),
            grant_yaml("to-management", "app", "management", None, &["read"]),
            // A paused new application is not created in Kinde, so never Ready.
            with_paused(&app_yaml("frozen")),
            grant_yaml("to-frozen", "frozen", "api", None, &["read"]),
        ]
        .concat();
        ctx.apply_yaml(&bad).await?;
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
            wait_event(&ctx, &ctx.ns, "ApiGrant", grant, reason).await?;
            kstatus_conditions(&ctx, "ApiGrant", grant, Some(holds)).await?;
        }
        kstatus_conditions(&ctx, "ApiRegistration", "api", None).await?;
        wait_reason(
            &ctx,
            &ctx.ns,
            "ApiRegistration",
            "management",
            "ManagementApiRefused",
        )
        .await?;
        wait_event(
            &ctx,
            &ctx.ns,
            "ApiRegistration",
            "management",
            "ManagementApiRefused",
        )
        .await?;
        kstatus_conditions(&ctx, "ApiRegistration", "management", Some("Stalled")).await?;

        // A paused grant for a valid pair: Paused, no writes.
        let paused = with_paused(&grant_yaml("paused", "paused-app", "api", None, &["read"]));
        ctx.apply_yaml(&paused).await?;
        wait_for("the paused application to report Paused", WAIT, || async {
            let c = condition(&ctx, &ctx.ns, "M2MApplication", "frozen", "Synced").await?;
            Ok(c.filter(|(s, r, _)| s == "False" && r == "Paused")
                .map(drop))
        })
        .await?;
        wait_for("the paused grant to report Paused", WAIT, || async {
            let c = condition(&ctx, &ctx.ns, "ApiGrant", "paused", "Synced").await?;
            Ok(c.filter(|(s, r, _)| s == "False" && r == "Paused")
                .map(drop))
        })
        .await?;

        let after = emulator.total_writes().await?;
        ensure!(
            after == before,
            "bad input reached Kinde: {before} → {after} writes; calls {}",
            emulator.calls().await?
        );
        ensure!(operator.is_running(), "the operator exited");
        // The emulator's own Management API has that audience; no other API may.
        let state = emulator.state().await?;
        let apis = state["apis"].as_array().cloned().unwrap_or_default();
        ensure!(
            !apis.iter().any(|api| api["audience"] == json!(management)
                && api["is_management_api"] != json!(true)),
            "the Management API's audience reached Kinde as another API: {state}"
        );
        wait_refused(&ctx, &emulator, "paused-app", &a).await?;

        // Unpausing resumes and converges.
        annotate(&ctx, &ctx.ns, "ApiGrant", "paused", None).await?;
        grant_reason(&ctx, "paused", "Reconciled").await?;
        wait_scp(&ctx, &emulator, "paused-app", &a, &["read"]).await?;
        annotate(&ctx, &ctx.ns, "M2MApplication", "frozen", None).await?;
        grant_reason(&ctx, "to-frozen", "Reconciled").await?;
        wait_scp(&ctx, &emulator, "frozen", &a, &["read"]).await?;
        wait_audience(&ctx, "frozen", &[&a]).await?;
        ensure!(operator.is_running(), "the operator exited");
        Ok(())
    }
    .await;
    with_log(&operator, r)
}

/// Pausing a Ready grant: scope changes and deletion wait (no Kinde writes) and status says
/// Paused; removing the annotation applies them.
async fn paused_grant(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = start(&ctx, &[], "10m").await?;
    let a = aud("paused");
    let yaml = [
        api_yaml("api", &a, &["read", "write"], &same()),
        app_yaml("app"),
        grant_yaml("grant", "app", "api", None, &["read"]),
    ]
    .concat();
    ctx.apply_yaml(&yaml).await?;
    let r = async {
        grant_reason(&ctx, "grant", "Reconciled").await?;
        wait_scp(&ctx, &emulator, "app", &a, &["read"]).await?;
        annotate(&ctx, &ctx.ns, "ApiGrant", "grant", Some("true")).await?;
        wait_for("the grant to report Paused", WAIT, || async {
            let c = condition(&ctx, &ctx.ns, "ApiGrant", "grant", "Synced").await?;
            Ok(c.filter(|(s, r, _)| s == "False" && r == "Paused")
                .map(drop))
        })
        .await?;
        let before = emulator.total_writes().await?;
        merge_patch(
            &ctx,
            &ctx.ns,
            "ApiGrant",
            "grant",
            json!({"spec": {"scopes": ["read", "write"]}}),
        )
        .await?;
        let generation = dyn_api(&ctx, &ctx.ns, "ApiGrant")
            .get("grant")
            .await?
            .metadata
            .generation;
        wait_for(
            "the paused grant to observe its new generation",
            WAIT,
            || async {
                let s = grant_status(&ctx, "grant").await?;
                Ok((s["observedGeneration"].as_i64() == generation).then_some(()))
            },
        )
        .await?;
        let (_, reason, _) = condition(&ctx, &ctx.ns, "ApiGrant", "grant", "Synced")
            .await?
            .context("no Synced")?;
        ensure!(reason == "Paused", "Synced reason {reason} while paused");
        // Deleting a paused grant waits too.
        dyn_api(&ctx, &ctx.ns, "ApiGrant")
            .delete("grant", &DeleteParams::default())
            .await?;
        wait_event(&ctx, &ctx.ns, "ApiGrant", "grant", "Paused").await?;
        ensure!(
            emulator.total_writes().await? == before,
            "a paused grant wrote to Kinde: {}",
            emulator.calls().await?
        );
        wait_scp(&ctx, &emulator, "app", &a, &["read"]).await?;

        // Resume: the deletion proceeds and cuts access.
        annotate(&ctx, &ctx.ns, "ApiGrant", "grant", None).await?;
        wait_for("the grant to be gone", WAIT, || async {
            Ok(dyn_api(&ctx, &ctx.ns, "ApiGrant")
                .get_opt("grant")
                .await?
                .is_none()
                .then_some(()))
        })
        .await?;
        wait_refused(&ctx, &emulator, "app", &a).await?;
        wait_audience(&ctx, "app", &[]).await
    }
    .await;
    with_log(&operator, r)
}

/// Moving a grant to another API de-authorizes the old pair and authorizes the new one.
async fn api_ref_change(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, operator) = start(&ctx, &[], "10m").await?;
    let (a1, a2) = (aud("old"), aud("new"));
    let yaml = [
        api_yaml("old", &a1, &["read"], &same()),
        api_yaml("new", &a2, &["read"], &same()),
        app_yaml("app"),
        grant_yaml("grant", "app", "old", None, &["read"]),
    ]
    .concat();
    ctx.apply_yaml(&yaml).await?;
    let r = async {
        grant_reason(&ctx, "grant", "Reconciled").await?;
        ready(&ctx, "ApiRegistration", "new").await?;
        wait_scp(&ctx, &emulator, "app", &a1, &["read"]).await?;
        ctx.apply_yaml(&grant_yaml("grant", "app", "new", None, &["read"]))
            .await?;
        wait_scp(&ctx, &emulator, "app", &a2, &["read"]).await?;
        wait_refused(&ctx, &emulator, "app", &a1).await?;
        wait_audience(&ctx, "app", &[&a2]).await?;
        let status = grant_status(&ctx, "grant").await?;
        ensure!(status["audience"] == json!(a2), "status: {status}");
        let state = emulator.state().await?;
        let old_api = state["apis"]
            .as_array()
            .and_then(|apis| apis.iter().find(|x| x["audience"] == json!(a1)))
            .cloned()
            .ok_or_else(|| anyhow!("old API not in Kinde: {state}"))?;
        let (id, _, _) = credentials(&ctx, "app").await?;
        if old_api.to_string().contains(&id) {
            bail!("the app is still listed on the old API: {old_api}");
        }
        Ok(())
    }
    .await;
    with_log(&operator, r)
}

//! ApiRegistration and M2MApplication end to end: the real operator binary against the real
//! control plane and a Kinde emulator of each test's own (isolated state and counters).
//! Drift (things changed in Kinde behind the operator's back) and economy (what a no-op
//! resync costs) included.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kinde_m2m_operator::crd::{
    ApiGrant, ApiRegistration, DeletionPolicy, EXTERNAL_ID_ANNOTATION, M2MApplication,
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, ScopeStatus,
};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::support::fixtures::{
    ApiFixture as _, AppFixture as _, GrantFixture as _, Meta as _, api_grant, api_registration,
    m2m_application,
};
use crate::support::{
    self, Ctx, E2eTest, Emulator, Kind as _, Operator, events_about, merge_patch, poke,
    secret_value, wait_for, wait_gone, wait_reason,
};

pub fn tests() -> Vec<E2eTest> {
    vec![
        app_test(
            "apps::api_create_and_scopes_converge",
            "10m",
            api_create_and_scopes_converge,
        ),
        app_test(
            "apps::api_adopt_and_deletion_policies",
            "10m",
            api_adopt_and_deletion_policies,
        ),
        app_test(
            "apps::api_management_guard_and_audience_in_use",
            "10m",
            api_management_guard_and_audience_in_use,
        ),
        app_test(
            "apps::api_deletion_waits_for_grants",
            "10m",
            api_deletion_waits_for_grants,
        ),
        app_test(
            "apps::app_create_secret_and_delete",
            "10m",
            app_create_secret_and_delete,
        ),
        app_test("apps::app_secret_conflict", "10m", app_secret_conflict),
        app_test(
            "apps::app_adopt_and_deletion_policies",
            "10m",
            app_adopt_and_deletion_policies,
        ),
        app_test(
            "apps::app_rotated_secret_written_through",
            "3s",
            app_rotated_secret_written_through,
        ),
        app_test(
            "apps::drift_api_deleted_in_kinde",
            "3s",
            drift_api_deleted_in_kinde,
        ),
        app_test(
            "apps::drift_app_and_authorization",
            "3s",
            drift_app_and_authorization,
        ),
        app_test(
            "apps::economy_noop_resync",
            RESYNC_ECONOMY,
            economy_noop_resync,
        ),
        app_test(
            "apps::economy_lifecycle_calls",
            "10m",
            economy_lifecycle_calls,
        ),
        // Objects deleted in Kinde, again with "not found" answered as 404.
        app_test_404(
            "apps::app_adopt_and_deletion_policies",
            "10m",
            app_adopt_and_deletion_policies,
        ),
        app_test_404(
            "apps::drift_api_deleted_in_kinde",
            "3s",
            drift_api_deleted_in_kinde,
        ),
        app_test_404(
            "apps::drift_app_and_authorization",
            "3s",
            drift_app_and_authorization,
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// Per-test environment
// ---------------------------------------------------------------------------------------

/// A test's emulator and operator (watching `ctx.ns`).
struct Env {
    ctx: Ctx,
    emu: Emulator,
    op: Operator,
}

/// A test with its own emulator and an operator resyncing every `resync`; on failure the
/// operator's log tail is added to the error.
fn app_test<F, Fut>(name: &str, resync: &'static str, body: F) -> E2eTest
where
    F: FnOnce(Arc<Env>) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + 'static,
{
    app_test_with(name, resync, &[], body)
}

/// [`app_test`] against an emulator answering "not found" with 404, registered as `name`
/// + [`support::NOT_FOUND_404_SUFFIX`].
fn app_test_404<F, Fut>(name: &str, resync: &'static str, body: F) -> E2eTest
where
    F: FnOnce(Arc<Env>) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + 'static,
{
    let name = format!("{name}{}", support::NOT_FOUND_404_SUFFIX);
    app_test_with(&name, resync, support::NOT_FOUND_404, body)
}

fn app_test_with<F, Fut>(
    name: &str,
    resync: &'static str,
    emulator_args: &'static [&'static str],
    body: F,
) -> E2eTest
where
    F: FnOnce(Arc<Env>) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + 'static,
{
    support::test(name, move |ctx| async move {
        ctx.harness.ensure_crds().await?;
        let emu = ctx.own_emulator_with(emulator_args)?;
        // Adoption is refused unless the cluster's policy admits the namespace; these tests
        // adopt in their own namespace (tests/e2e/trust.rs covers the refusals).
        let ns = ctx.ns.clone();
        let op = ctx.run_operator(&emu, &[], resync, &["--adoption-namespace", &ns])?;
        let env = Arc::new(Env { ctx, emu, op });
        let mut result = body(env.clone()).await;
        if result.is_ok() && !emulator_args.is_empty() {
            result = env.emu.ensure_not_found_answered(emulator_args).await;
        }
        env.op.with_log(result)
    })
}

impl Env {
    fn ns(&self) -> &str {
        &self.ctx.ns
    }

    fn apis(&self) -> Api<ApiRegistration> {
        self.ctx.api()
    }

    fn apps(&self) -> Api<M2MApplication> {
        self.ctx.api()
    }

    fn grants(&self) -> Api<ApiGrant> {
        self.ctx.api()
    }

    fn secrets(&self) -> Api<Secret> {
        self.ctx.api()
    }

    async fn secret(&self, name: &str) -> anyhow::Result<Secret> {
        self.secrets()
            .get(name)
            .await
            .with_context(|| format!("Secret {name}"))
    }

    /// Waits until Kinde application `id` is named `name`; returns it.
    async fn wait_kinde_name(&self, what: &str, id: &str, name: &str) -> anyhow::Result<Value> {
        wait_for(what, support::WAIT, || async {
            let a = self.emu.kinde_app(id).await?.context("Kinde app missing")?;
            if a["name"] == name {
                Ok(Some(a))
            } else {
                Err(anyhow!("Kinde app: {a}"))
            }
        })
        .await
    }

    /// Waits until the garbage collector has deleted Secret `name` (its owner is gone).
    async fn wait_secret_collected(&self, name: &str) -> anyhow::Result<()> {
        wait_for(
            "the Secret to be garbage collected",
            support::WAIT,
            || async { Ok(self.secrets().get_opt(name).await?.is_none().then_some(())) },
        )
        .await
    }

    /// Events about the `K` named `name` with `reason`.
    async fn events<K: support::Kind>(
        &self,
        name: &str,
        reason: &str,
    ) -> anyhow::Result<Vec<Event>> {
        Ok(events_about::<K>(&self.ctx.client, self.ns(), name)
            .await?
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect())
    }
}

/// A status field the operator must have written.
fn required(field: Option<String>, what: &str) -> anyhow::Result<String> {
    field.with_context(|| format!("{what} missing from the status"))
}

/// A string field of an object the emulator answered with.
fn str_at<'a>(v: &'a Value, pointer: &str) -> anyhow::Result<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .with_context(|| format!("no {pointer} in {v}"))
}

/// `(key, description)` pairs of a Kinde API's scopes in the emulator state, sorted.
fn kinde_scopes(api: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = api["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["key"].as_str().unwrap_or_default().to_string(),
                s["description"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = p
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

/// Status scopes `key -> id` must match the Kinde scopes' ids, key for key, in spec order.
fn check_status_scopes(
    status: &[ScopeStatus],
    kinde_api: &Value,
    keys: &[&str],
) -> anyhow::Result<()> {
    let status: Vec<(String, String)> = status
        .iter()
        .map(|s| (s.key.clone(), s.id.clone()))
        .collect();
    let want: Vec<(String, String)> = keys
        .iter()
        .map(|k| {
            let id = kinde_api["scopes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["key"] == *k)
                .and_then(|s| s["id"].as_str())
                .unwrap_or("<missing in Kinde>");
            (k.to_string(), id.to_string())
        })
        .collect();
    ensure!(
        status == want,
        "status.scopes {status:?}, want {want:?} (Kinde: {})",
        kinde_api["scopes"]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// ApiRegistration
// ---------------------------------------------------------------------------------------

/// Create → the API and its scopes exist in Kinde, status carries the ids; scopes added,
/// removed and re-described converge; deleting a created API deletes it in Kinde.
async fn api_create_and_scopes_converge(env: Arc<Env>) -> anyhow::Result<()> {
    let audience = "https://orders.example.com";
    env.ctx
        .apply(&[&api_registration("orders", audience)
            .with_scope("read:orders", "Read orders")
            .with_scope("write:orders", "Write orders")])
        .await?;
    let status = wait_reason(&env.apis(), "orders", "Reconciled")
        .await?
        .status_or_default();
    let api_id = required(status.api_id.clone(), "apiId")?;
    ensure!(
        status.audience.as_deref() == Some(audience),
        "status.audience: {status:?}"
    );
    let kinde = env
        .emu
        .kinde_api(&api_id)
        .await?
        .with_context(|| format!("Kinde API {api_id} (status.apiId) does not exist"))?;
    ensure!(kinde["audience"] == audience, "Kinde API: {kinde}");
    ensure!(
        kinde["name"] == "orders",
        "Kinde API name (default metadata.name): {kinde}"
    );
    ensure!(
        kinde_scopes(&kinde)
            == pairs(&[
                ("read:orders", "Read orders"),
                ("write:orders", "Write orders")
            ]),
        "Kinde scopes: {}",
        kinde["scopes"]
    );
    check_status_scopes(&status.scopes, &kinde, &["read:orders", "write:orders"])?;

    // Add one, remove one, change a description.
    merge_patch(
        &env.apis(),
        "orders",
        json!({"spec": {"scopes": [
            {"key": "read:orders", "description": "Read every order"},
            {"key": "admin:orders", "description": "Administer orders"},
        ]}}),
    )
    .await?;
    let want = pairs(&[
        ("admin:orders", "Administer orders"),
        ("read:orders", "Read every order"),
    ]);
    let kinde = wait_for(
        "Kinde scopes to match the new spec",
        support::WAIT,
        || async {
            let k = env
                .emu
                .kinde_api(&api_id)
                .await?
                .context("Kinde API gone")?;
            if kinde_scopes(&k) == want {
                Ok(Some(k))
            } else {
                Err(anyhow!("Kinde scopes: {}", k["scopes"]))
            }
        },
    )
    .await?;
    wait_for("status.scopes to follow", support::WAIT, || async {
        let obj = env.apis().get("orders").await?;
        let status = obj.status_or_default();
        check_status_scopes(&status.scopes, &kinde, &["read:orders", "admin:orders"])?;
        let ready = obj.condition("Ready");
        ensure!(
            ready.is_some_and(|c| c.status == "True" && c.reason == "Reconciled"),
            "Ready {ready:?}"
        );
        ensure!(
            status.observed_generation == obj.metadata.generation,
            "observedGeneration {:?} vs generation {:?}",
            status.observed_generation,
            obj.metadata.generation
        );
        Ok(Some(()))
    })
    .await?;

    // Created by the operator, no deletionPolicy: Delete.
    support::delete(&env.apis(), "orders").await?;
    wait_gone(&env.apis(), "orders").await?;
    ensure!(
        env.emu.kinde_api(&api_id).await?.is_none(),
        "Kinde API {api_id} survived the deletion of the ApiRegistration it was created for"
    );
    Ok(())
}

/// Waits until ApiRegistration `name` is Ready with the adopted Kinde API `id` in its
/// status; returns that Kinde API.
async fn adopted_api(env: &Env, name: &str, id: &str) -> anyhow::Result<Value> {
    let status = wait_reason(&env.apis(), name, "Reconciled")
        .await?
        .status_or_default();
    ensure!(
        status.api_id.as_deref() == Some(id),
        "{name} did not adopt the Kinde API {id}: status {status:?}"
    );
    env.emu
        .kinde_api(id)
        .await?
        .with_context(|| format!("the adopted Kinde API {id} is gone"))
}

/// Adoption by `external-id`; the default deletion policy orphans adopted APIs and deletes
/// created ones; an explicit `Orphan` keeps a created one.
async fn api_adopt_and_deletion_policies(env: Arc<Env>) -> anyhow::Result<()> {
    let legacy_id = env
        .emu
        .create_kinde_api("Legacy", "https://legacy.example.com")
        .await?;
    env.ctx
        .apply(&[
            &api_registration("legacy", "https://legacy.example.com")
                .with_scope("read:legacy", "Read legacy")
                .adopting(&legacy_id),
            &api_registration("kept", "https://kept.example.com")
                .with_deletion_policy(DeletionPolicy::Orphan),
            &api_registration("gone", "https://gone.example.com"),
        ])
        .await?;

    let kinde = adopted_api(&env, "legacy", &legacy_id).await?;
    ensure!(
        kinde_scopes(&kinde) == pairs(&[("read:legacy", "Read legacy")]),
        "adopted API's scopes in Kinde: {}",
        kinde["scopes"]
    );
    let kept = wait_reason(&env.apis(), "kept", "Reconciled").await?;
    let kept_id = required(kept.status_or_default().api_id, "apiId")?;
    let gone = wait_reason(&env.apis(), "gone", "Reconciled").await?;
    let gone_id = required(gone.status_or_default().api_id, "apiId")?;
    ensure!(
        env.emu
            .kinde_api_by_audience("https://legacy.example.com")
            .await?
            .is_some_and(|a| a["id"] == legacy_id.as_str()),
        "adopting created a second API for the audience"
    );

    support::delete_all(&env.apis(), &["legacy", "kept", "gone"]).await?;
    ensure!(
        env.emu.kinde_api(&legacy_id).await?.is_some(),
        "the adopted Kinde API was deleted (default policy for adopted objects is Orphan)"
    );
    ensure!(
        env.emu.kinde_api(&kept_id).await?.is_some(),
        "the Kinde API of a deletionPolicy: Orphan ApiRegistration was deleted"
    );
    ensure!(
        env.emu.kinde_api(&gone_id).await?.is_none(),
        "the created Kinde API survived (default policy for created objects is Delete)"
    );
    Ok(())
}

/// The Management API's audience is refused without any Kinde write; an audience already in
/// Kinde is `AudienceInUse` naming the API id, and adopting that id makes it Ready.
async fn api_management_guard_and_audience_in_use(env: Arc<Env>) -> anyhow::Result<()> {
    let writes_before = env.emu.total_writes().await?;
    let management = format!("{}/api", env.emu.url);
    env.ctx
        .apply(&[&api_registration("mgmt", &management)])
        .await?;
    let obj = wait_reason(&env.apis(), "mgmt", "ManagementApiRefused").await?;
    obj.ensure_ready_mentions(&management)?;
    let status = obj.status_or_default();
    ensure!(
        status.api_id.is_none(),
        "status.apiId set for a refused API: {status:?}"
    );

    let taken_id = env
        .emu
        .create_kinde_api("Taken", "https://taken.example.com")
        .await?;
    env.ctx
        .apply(
            &[&api_registration("taken", "https://taken.example.com").with_scope("read", "Read")],
        )
        .await?;
    let obj = wait_reason(&env.apis(), "taken", "AudienceInUse").await?;
    obj.ensure_ready_mentions(&taken_id)?;
    let writes = env.emu.total_writes().await?;
    ensure!(
        writes == writes_before + 1,
        "Kinde writes: {writes_before} before, {writes} after (only the test's own addAPIs expected): {}",
        env.emu.calls().await?
    );
    ensure!(
        env.events::<ApiRegistration>("mgmt", "ManagementApiRefused")
            .await?
            .len()
            == 1,
        "expected one Warning Event ManagementApiRefused"
    );

    merge_patch(
        &env.apis(),
        "taken",
        json!({"metadata": {"annotations": {EXTERNAL_ID_ANNOTATION: taken_id}}}),
    )
    .await?;
    let kinde = adopted_api(&env, "taken", &taken_id).await?;
    ensure!(
        kinde_scopes(&kinde) == pairs(&[("read", "Read")]),
        "scopes of the adopted API: {}",
        kinde["scopes"]
    );
    // Still nothing written for the refused one.
    let ready = env.apis().get("mgmt").await?.condition("Ready").cloned();
    ensure!(
        ready
            .as_ref()
            .is_some_and(|c| c.status == "False" && c.reason == "ManagementApiRefused"),
        "mgmt: {ready:?}"
    );
    Ok(())
}

/// Deleting an ApiRegistration (policy Delete) waits with `InUse` while a grant references
/// it, and completes once the grant is gone.
async fn api_deletion_waits_for_grants(env: Arc<Env>) -> anyhow::Result<()> {
    let audience = "https://shared.example.com";
    env.ctx
        .apply(&[
            &api_registration("shared", audience).with_scope("read", "Read"),
            &m2m_application("client"),
            &api_grant("client-shared", "client", "shared").with_scopes(&["read"]),
        ])
        .await?;
    let api = wait_reason(&env.apis(), "shared", "Reconciled").await?;
    let api_id = required(api.status_or_default().api_id, "apiId")?;
    wait_reason(&env.grants(), "client-shared", "Reconciled").await?;

    support::delete(&env.apis(), "shared").await?;
    let obj = wait_reason(&env.apis(), "shared", "InUse").await?;
    obj.ensure_ready_mentions("client-shared")?;
    ensure!(
        env.emu.kinde_api(&api_id).await?.is_some(),
        "Kinde API deleted while a grant references it"
    );

    support::delete(&env.grants(), "client-shared").await?;
    wait_gone(&env.grants(), "client-shared").await?;
    let t = std::time::Instant::now();
    wait_gone(&env.apis(), "shared").await?;
    eprintln!(
        "api_deletion_waits_for_grants: ApiRegistration gone {:?} after its last grant",
        t.elapsed()
    );
    ensure!(
        env.emu.kinde_api(&api_id).await?.is_none(),
        "Kinde API {api_id} still exists after the ApiRegistration was deleted"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// M2MApplication
// ---------------------------------------------------------------------------------------

/// Create with an organization code: the Kinde app (type m2m, `<ns>/<name>` once the marker
/// is gone, `org_code`), the Secret per SPEC section 3 written with the status; Secret
/// deleted → recreated, edited → restored; displayName → rename; delete → Kinde app deleted
/// and the Secret garbage collected.
async fn app_create_secret_and_delete(env: Arc<Env>) -> anyhow::Result<()> {
    env.ctx
        .apply(&[&m2m_application("acme").with_organization_code("org_acme")])
        .await?;
    // The Secret is written in the reconcile that learns the secret, before the status
    // records the application: once the id shows, the Secret must be there.
    let app_id = wait_for("status.applicationId", support::WAIT, || async {
        Ok(env
            .apps()
            .get("acme")
            .await?
            .status_or_default()
            .application_id)
    })
    .await?;
    let secret = env
        .secrets()
        .get_opt("acme-credentials")
        .await?
        .context("status.applicationId is set but Secret acme-credentials does not exist")?;
    let obj = wait_reason(&env.apps(), "acme", "Reconciled").await?;
    let status = obj.status_or_default();
    let client_id = required(status.client_id.clone(), "clientId")?;
    ensure!(
        status.secret_name.as_deref() == Some("acme-credentials"),
        "status: {status:?}"
    );
    // Read raw: a typed read would drop a field its type does not declare.
    let raw_status = support::raw(&env.apps(), "acme").await?["status"].clone();
    ensure!(
        raw_status.get("clientSecret").is_none()
            && !raw_status.to_string().contains(
                &secret_value(&secret, "KINDE_CLIENT_SECRET").unwrap_or_else(|| "-".into())
            ),
        "status carries the secret"
    );

    let display = format!("{}/acme", env.ns());
    let kinde = env
        .wait_kinde_name(
            "the Kinde app to lose its creation marker",
            &app_id,
            &display,
        )
        .await?;
    ensure!(kinde["type"] == "m2m", "Kinde app type: {kinde}");
    ensure!(
        kinde["org_code"] == "org_acme",
        "Kinde app org_code: {kinde}"
    );

    // The Secret, per SPEC section 3.
    let secret = env.secret("acme-credentials").await?;
    check_secret_shape(&env, &secret, &obj)?;
    ensure!(
        secret_value(&secret, "KINDE_CLIENT_ID").as_deref() == Some(client_id.as_str()),
        "KINDE_CLIENT_ID differs from status.clientId"
    );
    let client_secret = secret_value(&secret, "KINDE_CLIENT_SECRET").context("no secret")?;
    // The credentials work (and carry the organization): authorize the app on an API
    // behind the operator's back and ask for a token.
    let probe = env
        .emu
        .create_kinde_api("Probe", "https://probe.example.com")
        .await?;
    env.emu
        .mgmt(
            reqwest::Method::PATCH,
            &format!("/api/v1/apis/{probe}/applications"),
            Some(json!({"applications": [{"id": client_id}]})),
        )
        .await?;
    let claims = env
        .emu
        .token_claims(&client_id, &client_secret, "https://probe.example.com")
        .await?
        .map_err(|e| anyhow!("token request with the Secret's credentials refused: {e}"))?;
    ensure!(claims["org_code"] == "org_acme", "token claims: {claims}");

    // Deleted → recreated.
    let old_uid = secret.uid();
    env.secrets()
        .delete("acme-credentials", &Default::default())
        .await?;
    let recreated = wait_for("the Secret to be recreated", support::WAIT, || async {
        Ok(env
            .secrets()
            .get_opt("acme-credentials")
            .await?
            // A recreated Secret is a placeholder (owner and label only) until it is filled.
            .filter(|s| s.uid() != old_uid && secret_value(s, "KINDE_CLIENT_ID").is_some()))
    })
    .await?;
    ensure!(
        secret_value(&recreated, "KINDE_CLIENT_SECRET").as_deref() == Some(client_secret.as_str())
            && secret_value(&recreated, "KINDE_CLIENT_ID").as_deref() == Some(client_id.as_str()),
        "recreated Secret has other credentials"
    );
    check_secret_shape(&env, &recreated, &obj)?;

    // Edited → restored.
    merge_patch(
        &env.secrets(),
        "acme-credentials",
        json!({"stringData": {"KINDE_CLIENT_SECRET": "tampered", "KINDE_DOMAIN": "https://evil.example.com"}}),
    )
    .await?;
    wait_for(
        "the edited Secret to be restored",
        support::WAIT,
        || async {
            let s = env.secret("acme-credentials").await?;
            let got = secret_value(&s, "KINDE_CLIENT_SECRET");
            let domain = secret_value(&s, "KINDE_DOMAIN");
            if got.as_deref() == Some(client_secret.as_str())
                && domain.as_deref() == Some(env.emu.url.as_str())
            {
                Ok(Some(()))
            } else {
                Err(anyhow!(
                    "KINDE_DOMAIN {domain:?}, secret restored: {}",
                    got.as_deref() == Some(client_secret.as_str())
                ))
            }
        },
    )
    .await?;

    // displayName → rename in Kinde, same app.
    merge_patch(
        &env.apps(),
        "acme",
        json!({"spec": {"displayName": "Acme Corp"}}),
    )
    .await?;
    env.wait_kinde_name("the Kinde app to be renamed", &app_id, "Acme Corp")
        .await?;
    ensure!(
        env.events::<M2MApplication>("acme", "Renamed").await?.len() == 1,
        "expected one Renamed Event"
    );

    // Delete (created, no policy: Delete) → Kinde app gone, Secret garbage collected.
    support::delete(&env.apps(), "acme").await?;
    wait_gone(&env.apps(), "acme").await?;
    ensure!(
        env.emu.kinde_app(&app_id).await?.is_none(),
        "Kinde app {app_id} survived the deletion of its M2MApplication"
    );
    env.wait_secret_collected("acme-credentials").await
}

/// SPEC section 3: keys, label, controller ownerReference to `app`, type Opaque.
fn check_secret_shape(env: &Env, s: &Secret, app: &M2MApplication) -> anyhow::Result<()> {
    ensure!(s.type_.as_deref() == Some("Opaque"), "type {:?}", s.type_);
    ensure!(
        s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE),
        "labels {:?}",
        s.labels()
    );
    let owners = s.owner_references();
    ensure!(
        owners.len() == 1
            && owners[0].controller == Some(true)
            && owners[0].kind == "M2MApplication"
            && Some(&owners[0].uid) == app.meta().uid.as_ref(),
        "ownerReferences {owners:?}"
    );
    let keys: Vec<&String> = s
        .data
        .as_ref()
        .map(|d| d.keys().collect())
        .unwrap_or_default();
    for k in [
        "KINDE_DOMAIN",
        "KINDE_CLIENT_ID",
        "KINDE_CLIENT_SECRET",
        "KINDE_TOKEN_URL",
        "KINDE_AUDIENCE",
    ] {
        ensure!(
            keys.iter().any(|x| *x == k),
            "Secret lacks {k}: keys {keys:?}"
        );
    }
    ensure!(
        secret_value(s, "KINDE_DOMAIN").as_deref() == Some(env.emu.url.as_str()),
        "KINDE_DOMAIN {:?}",
        secret_value(s, "KINDE_DOMAIN")
    );
    ensure!(
        secret_value(s, "KINDE_TOKEN_URL") == Some(format!("{}/oauth2/token", env.emu.url)),
        "KINDE_TOKEN_URL {:?}",
        secret_value(s, "KINDE_TOKEN_URL")
    );
    Ok(())
}

/// A Secret of that name owned by someone else: `SecretConflict`, and it is left untouched.
async fn app_secret_conflict(env: Arc<Env>) -> anyhow::Result<()> {
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("foreign-credentials".into()),
            labels: Some(BTreeMap::from([("owner".into(), "someone-else".into())])),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("password".into(), "hunter2".into())])),
        ..Default::default()
    };
    let before = env
        .secrets()
        .create(&PostParams::default(), &foreign)
        .await?;
    env.ctx.apply(&[&m2m_application("foreign")]).await?;
    let obj = wait_reason(&env.apps(), "foreign", "SecretConflict").await?;
    obj.ensure_ready_mentions("foreign-credentials")?;
    let after = env.secret("foreign-credentials").await?;
    ensure!(
        after.resource_version() == before.resource_version()
            && after.data == before.data
            && after.owner_references().is_empty(),
        "the foreign Secret was modified: {:?} -> {:?}",
        before.metadata,
        after.metadata
    );
    Ok(())
}

/// Adoption by `external-id` reads the secret back from Kinde into the Secret; adopted →
/// orphaned on delete by default; explicit `Orphan` keeps a created app.
async fn app_adopt_and_deletion_policies(env: Arc<Env>) -> anyhow::Result<()> {
    let created = env.emu.create_kinde_app("Legacy app").await?;
    let legacy_id = str_at(&created, "/id")?.to_string();
    let legacy_client = str_at(&created, "/client_id")?.to_string();
    let legacy_secret = str_at(&created, "/client_secret")?.to_string();
    env.ctx
        .apply(&[
            &m2m_application("legacy")
                .with_display_name("Legacy app")
                .adopting(&legacy_id),
            &m2m_application("kept").with_deletion_policy(DeletionPolicy::Orphan),
        ])
        .await?;

    let legacy = wait_reason(&env.apps(), "legacy", "Reconciled").await?;
    let status = legacy.status_or_default();
    ensure!(
        status.application_id.as_deref() == Some(legacy_id.as_str()),
        "status {status:?}"
    );
    let secret = env.secret("legacy-credentials").await?;
    ensure!(
        secret_value(&secret, "KINDE_CLIENT_ID").as_deref() == Some(legacy_client.as_str())
            && secret_value(&secret, "KINDE_CLIENT_SECRET").as_deref()
                == Some(legacy_secret.as_str()),
        "the adopted app's credentials were not read back into the Secret"
    );
    check_secret_shape(&env, &secret, &legacy)?;
    let kept = wait_reason(&env.apps(), "kept", "Reconciled").await?;
    let kept_id = required(kept.status_or_default().application_id, "applicationId")?;
    let apps = env.emu.kinde_apps().await?;
    ensure!(
        apps.len() == 2,
        "expected 2 applications in Kinde (no duplicate on adoption): {apps:?}"
    );

    // An adopted app deleted in Kinde is reported, not re-created (a reconcile is forced
    // with an annotation; the resync is long here).
    poke(&env.apps(), "legacy").await?;
    let vanishing = env.emu.create_kinde_app("Vanishing").await?;
    let vanishing_id = str_at(&vanishing, "/id")?.to_string();
    env.ctx
        .apply(&[&m2m_application("vanishing")
            .with_display_name("Vanishing")
            .adopting(&vanishing_id)])
        .await?;
    wait_reason(&env.apps(), "vanishing", "Reconciled").await?;
    env.emu
        .mgmt_delete(&format!("/api/v1/applications/{vanishing_id}"))
        .await?;
    poke(&env.apps(), "vanishing").await?;
    wait_reason(&env.apps(), "vanishing", "ExternalNotFound").await?;
    let apps = env.emu.state().await?["applications"].clone();
    ensure!(
        !apps.to_string().contains("Vanishing"),
        "the adopted app was re-created: {apps}"
    );

    support::delete_all(&env.apps(), &["legacy", "kept", "vanishing"]).await?;
    ensure!(
        env.emu.kinde_app(&legacy_id).await?.is_some(),
        "the adopted Kinde app was deleted (default for adopted objects is Orphan)"
    );
    ensure!(
        env.emu.kinde_app(&kept_id).await?.is_some(),
        "the Kinde app of a deletionPolicy: Orphan M2MApplication was deleted"
    );
    Ok(())
}

/// A secret rotated in the Kinde dashboard is written through at the next resync, with an
/// Event `CredentialsUpdated`.
async fn app_rotated_secret_written_through(env: Arc<Env>) -> anyhow::Result<()> {
    env.ctx.apply(&[&m2m_application("rotated")]).await?;
    let obj = wait_reason(&env.apps(), "rotated", "Reconciled").await?;
    let app_id = required(obj.status_or_default().application_id, "applicationId")?;
    let rotated = env
        .emu
        .control(
            reqwest::Method::POST,
            &format!("applications/{app_id}/rotate-secret"),
            Some(json!({})),
        )
        .await?;
    let new_secret = str_at(&rotated, "/client_secret")?.to_string();
    wait_for(
        "the rotated secret in the Secret",
        support::WAIT,
        || async {
            let s = env.secret("rotated-credentials").await?;
            Ok(
                (secret_value(&s, "KINDE_CLIENT_SECRET").as_deref() == Some(new_secret.as_str()))
                    .then_some(()),
            )
        },
    )
    .await?;
    wait_for("an Event CredentialsUpdated", support::WAIT, || async {
        Ok((!env
            .events::<M2MApplication>("rotated", "CredentialsUpdated")
            .await?
            .is_empty())
        .then_some(()))
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Drift
// ---------------------------------------------------------------------------------------

/// An API deleted in Kinde is re-created; an adopted one is reported, not re-created.
async fn drift_api_deleted_in_kinde(env: Arc<Env>) -> anyhow::Result<()> {
    let adopted_id = env
        .emu
        .create_kinde_api("Adopted", "https://adopted.example.com")
        .await?;
    env.ctx
        .apply(&[
            &api_registration("adopted", "https://adopted.example.com").adopting(&adopted_id),
            &api_registration("mine", "https://mine.example.com").with_scope("read", "Read"),
            // A grant on it: after the re-creation the application is authorized on the new
            // API.
            &m2m_application("client"),
            &api_grant("client-mine", "client", "mine").with_scopes(&["read"]),
        ])
        .await?;
    let mine = wait_reason(&env.apis(), "mine", "Reconciled").await?;
    let mine_id = required(mine.status_or_default().api_id, "apiId")?;
    wait_reason(&env.apis(), "adopted", "Reconciled").await?;
    wait_reason(&env.grants(), "client-mine", "Reconciled").await?;

    for id in [&mine_id, &adopted_id] {
        env.emu.mgmt_delete(&format!("/api/v1/apis/{id}")).await?;
    }
    let new_id = wait_for(
        "the deleted API to be re-created",
        support::WAIT,
        || async {
            let obj = env.apis().get("mine").await?;
            let status = obj.status_or_default();
            let id = status.api_id.clone().unwrap_or_default();
            let ready = obj.condition("Ready").is_some_and(|c| c.status == "True");
            ensure!(
                id != mine_id && !id.is_empty() && ready,
                "status {status:?}"
            );
            let k = env.emu.kinde_api(&id).await?.context("not in Kinde")?;
            ensure!(k["audience"] == "https://mine.example.com", "{k}");
            ensure!(kinde_scopes(&k) == pairs(&[("read", "Read")]), "{k}");
            check_status_scopes(&status.scopes, &k, &["read"])?;
            Ok(Some(id))
        },
    )
    .await?;
    wait_for(
        "the grant to authorize the app on the re-created API",
        support::WAIT,
        || async {
            let s = env.secret("client-credentials").await?;
            let id = secret_value(&s, "KINDE_CLIENT_ID").context("no client id")?;
            let secret = secret_value(&s, "KINDE_CLIENT_SECRET").context("no secret")?;
            let grant = env.grants().get("client-mine").await?.status_or_default();
            ensure!(
                grant.api_id.as_deref() == Some(new_id.as_str()),
                "grant status {grant:?}"
            );
            match env
                .emu
                .token_claims(&id, &secret, "https://mine.example.com")
                .await?
            {
                Ok(claims) if claims["scp"] == json!(["read"]) => Ok(Some(())),
                Ok(claims) => Err(anyhow!("token claims {claims}")),
                Err(e) => Err(anyhow!("token refused: {e}")),
            }
        },
    )
    .await?;
    let obj = wait_reason(&env.apis(), "adopted", "ExternalNotFound").await?;
    ensure!(
        env.emu
            .kinde_api_by_audience("https://adopted.example.com")
            .await?
            .is_none(),
        "the adopted API was re-created: {:?}",
        obj.status
    );
    Ok(())
}

/// App deleted in Kinde → re-created (new client id in the Secret, grant follows);
/// authorization removed in Kinde → restored; app renamed in Kinde → renamed back.
async fn drift_app_and_authorization(env: Arc<Env>) -> anyhow::Result<()> {
    let audience = "https://drift.example.com";
    env.ctx
        .apply(&[
            &api_registration("drift", audience).with_scope("read", "Read"),
            &m2m_application("client").with_display_name("Client"),
            &api_grant("client-drift", "client", "drift").with_scopes(&["read"]),
        ])
        .await?;
    wait_reason(&env.grants(), "client-drift", "Reconciled").await?;
    let api = wait_reason(&env.apis(), "drift", "Reconciled").await?;
    let api_id = required(api.status_or_default().api_id, "apiId")?;
    let app = wait_reason(&env.apps(), "client", "Reconciled").await?;
    let app_id = required(app.status_or_default().application_id, "applicationId")?;
    let token_works = |env: Arc<Env>| async move {
        let s = env.secret("client-credentials").await?;
        let id = secret_value(&s, "KINDE_CLIENT_ID").context("no client id")?;
        let secret = secret_value(&s, "KINDE_CLIENT_SECRET").context("no secret")?;
        match env.emu.token_claims(&id, &secret, audience).await? {
            Ok(claims) if claims["scp"] == json!(["read"]) => Ok(Some(id)),
            Ok(claims) => Err(anyhow!("token claims {claims}")),
            Err(e) => Err(anyhow!("token refused: {e}")),
        }
    };
    wait_for(
        "a token with the Secret's credentials",
        support::WAIT,
        || token_works(env.clone()),
    )
    .await?;

    // Authorization removed in Kinde → restored (with its scopes).
    env.emu
        .mgmt(
            reqwest::Method::PATCH,
            &format!("/api/v1/apis/{api_id}/applications"),
            Some(json!({"applications": [{"id": app_id, "operation": "delete"}]})),
        )
        .await?;
    let s = env.secret("client-credentials").await?;
    let refused = env
        .emu
        .token_claims(
            &secret_value(&s, "KINDE_CLIENT_ID").unwrap_or_default(),
            &secret_value(&s, "KINDE_CLIENT_SECRET").unwrap_or_default(),
            audience,
        )
        .await?;
    ensure!(
        refused.is_err(),
        "de-authorizing in Kinde did not cut access"
    );
    wait_for("the authorization to be restored", support::WAIT, || {
        token_works(env.clone())
    })
    .await?;

    // Renamed in Kinde → renamed back.
    env.emu
        .mgmt(
            reqwest::Method::PATCH,
            &format!("/api/v1/applications/{app_id}"),
            Some(json!({"name": "hijacked"})),
        )
        .await?;
    env.wait_kinde_name("the rename in Kinde to be undone", &app_id, "Client")
        .await?;

    // Deleted in Kinde → re-created; the Secret and the grant follow.
    env.emu
        .mgmt_delete(&format!("/api/v1/applications/{app_id}"))
        .await?;
    let new_client = wait_for(
        "the re-created app's credentials to work for the API",
        support::WAIT,
        || {
            let env = env.clone();
            let app_id = app_id.clone();
            async move {
                let id = token_works(env).await?;
                match id {
                    Some(id) if id != app_id => Ok(Some(id)),
                    _ => Err(anyhow!(
                        "the Secret still holds the deleted app's client id"
                    )),
                }
            }
        },
    )
    .await?;
    let status = wait_reason(&env.apps(), "client", "Reconciled")
        .await?
        .status_or_default();
    ensure!(
        status.client_id.as_deref() == Some(new_client.as_str()),
        "status {status:?} vs Secret client id {new_client}"
    );
    let kinde = env
        .emu
        .kinde_app(&new_client)
        .await?
        .context("new app missing")?;
    ensure!(kinde["name"] == "Client", "re-created app: {kinde}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Economy
// ---------------------------------------------------------------------------------------

const RESYNC_ECONOMY: &str = "2s";
const RESYNC_ECONOMY_SECS: f64 = 2.0;
/// Resync periods the no-op window lasts.
const NOOP_PERIODS: u32 = 5;

/// `operation -> calls` from the emulator's counters.
async fn call_counts(emu: &Emulator) -> anyhow::Result<BTreeMap<String, u64>> {
    let calls = emu.calls().await?;
    Ok(calls
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v["calls"].as_u64().unwrap_or(0)))
        .collect())
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// resourceVersions of every object the operator writes in the namespace (CRs, Secrets,
/// Events).
async fn k8s_versions(env: &Env) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    versions_of(&env.apis(), &mut out).await?;
    versions_of(&env.apps(), &mut out).await?;
    versions_of(&env.grants(), &mut out).await?;
    versions_of(&env.secrets(), &mut out).await?;
    versions_of(&env.ctx.api::<Event>(), &mut out).await?;
    Ok(out)
}

/// Adds `<kind>/<name> -> resourceVersion` of every object of `api` to `out`.
async fn versions_of<K>(api: &Api<K>, out: &mut BTreeMap<String, String>) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for o in api.list(&ListParams::default()).await? {
        out.insert(
            format!("{}/{}", K::kind(&()), o.name_any()),
            o.resource_version().unwrap_or_default(),
        );
    }
    Ok(())
}

type Counts = Arc<std::sync::Mutex<BTreeMap<String, u64>>>;

/// Counts the watch events (= writes) of `api` from now on, as `<kind> <EVENT>`.
async fn count_writes<K>(
    api: Api<K>,
    kind: &'static str,
    counts: Counts,
) -> anyhow::Result<tokio::task::JoinHandle<()>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::TryStreamExt as _;
    use kube::api::{WatchEvent, WatchParams};
    let rv = api
        .list_metadata(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let stream = api.watch(&WatchParams::default().timeout(290), &rv).await?;
    Ok(tokio::spawn(async move {
        let mut stream = Box::pin(stream);
        while let Ok(Some(ev)) = stream.try_next().await {
            let what = match ev {
                WatchEvent::Added(_) => "ADDED",
                WatchEvent::Modified(_) => "MODIFIED",
                WatchEvent::Deleted(_) => "DELETED",
                _ => continue,
            };
            *counts
                .lock()
                .unwrap()
                .entry(format!("{kind} {what}"))
                .or_default() += 1;
        }
    }))
}

fn take_counts(counts: &Counts) -> BTreeMap<String, u64> {
    std::mem::take(&mut *counts.lock().unwrap())
}

fn fmt_counts(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// API `api` (scopes read, write) for `audience`, application `buyer` and grant
/// `buyer-<api>` of `read`; waits until all three are Ready and the Secret lists the
/// audience.
async fn buyer_ready(env: &Env, api: &str, audience: &str) -> anyhow::Result<()> {
    env.ctx
        .apply(&[
            &api_registration(api, audience)
                .with_scope("read", "Read")
                .with_scope("write", "Write"),
            &m2m_application("buyer"),
            &api_grant(&format!("buyer-{api}"), "buyer", api).with_scopes(&["read"]),
        ])
        .await?;
    wait_reason(&env.apis(), api, "Reconciled").await?;
    wait_reason(&env.grants(), &format!("buyer-{api}"), "Reconciled").await?;
    wait_reason(&env.apps(), "buyer", "Reconciled").await?;
    wait_for(
        "KINDE_AUDIENCE to list the grant",
        support::WAIT,
        || async {
            let s = env.secret("buyer-credentials").await?;
            Ok((secret_value(&s, "KINDE_AUDIENCE").as_deref() == Some(audience)).then_some(()))
        },
    )
    .await
}

/// After everything is Ready, a no-op resync makes no Kinde and no Kubernetes writes, and
/// reads what README "Economy" promises. Prints the measured counts.
async fn economy_noop_resync(env: Arc<Env>) -> anyhow::Result<()> {
    let audience = "https://economy.example.com";
    buyer_ready(&env, "economy", audience).await?;

    // Someone else adds a key and a label to the Secret: corrected once (the data is the
    // operator's), not on every resync.
    merge_patch(
        &env.secrets(),
        "buyer-credentials",
        json!({
            "metadata": {"labels": {"backup": "daily"}},
            "stringData": {"EXTRA_SETTING": "added by another tool"},
        }),
    )
    .await?;
    // The data is the operator's alone: the extra key goes (once), the label stays.
    wait_for(
        "the extra key to be removed from the Secret",
        support::WAIT,
        || async {
            let s = env.secret("buyer-credentials").await?;
            ensure!(
                s.labels().get("backup").map(String::as_str) == Some("daily"),
                "the other tool's label was removed"
            );
            Ok(secret_value(&s, "EXTRA_SETTING").is_none().then_some(()))
        },
    )
    .await?;
    // Let in-flight follow-ups (wakes after the last status writes) settle: one period.
    tokio::time::sleep(Duration::from_secs_f64(RESYNC_ECONOMY_SECS * 1.5)).await;
    let settled = call_counts(&env.emu).await?;
    let writes0 = env.emu.total_writes().await?;
    let k8s0 = k8s_versions(&env).await?;
    // The no-op window: nothing changes, so only the periodic resyncs run. Its length is
    // the point of the test (absence of writes), hence a sleep rather than a poll.
    let window = RESYNC_ECONOMY_SECS * f64::from(NOOP_PERIODS);
    tokio::time::sleep(Duration::from_secs_f64(window)).await;
    let writes1 = env.emu.total_writes().await?;
    let k8s1 = k8s_versions(&env).await?;
    let after = call_counts(&env.emu).await?;
    let noop = delta(&settled, &after);

    eprintln!(
        "economy: no-op window of {window}s = {NOOP_PERIODS} resync periods ({RESYNC_ECONOMY}, jitter +0-10%): Kinde calls {} ; Kinde writes {} ; Kubernetes objects changed {}",
        fmt_counts(&noop),
        writes1 - writes0,
        k8s0.iter()
            .filter(|(k, v)| k8s1.get(*k) != Some(*v))
            .count()
            + k8s1.keys().filter(|k| !k8s0.contains_key(*k)).count()
    );

    ensure!(
        writes1 == writes0,
        "Kinde writes during no-op resyncs: {} ({})",
        writes1 - writes0,
        fmt_counts(&noop)
    );
    let changed: Vec<String> = k8s1
        .iter()
        .filter(|(k, v)| k8s0.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k} ({:?} -> {v})", k8s0.get(k)))
        .chain(
            k8s0.keys()
                .filter(|k| !k8s1.contains_key(*k))
                .map(|k| format!("{k} (gone)")),
        )
        .collect();
    ensure!(
        changed.is_empty(),
        "Kubernetes writes during no-op resyncs: {changed:?}"
    );
    // Per resync and object: 1 getApplication per app, 1 getAPIScopes per API, at most one
    // getAPI per API (shared by its grants). Nothing else.
    let n = u64::from(NOOP_PERIODS);
    let get = |op: &str| noop.get(op).copied().unwrap_or(0);
    ensure!(
        get("getApplication") >= 2,
        "no resync observed in the no-op window: {}",
        fmt_counts(&noop)
    );
    for (op, per_resync) in [("getApplication", 1), ("getAPIScopes", 1), ("getAPI", 1)] {
        ensure!(
            get(op) <= per_resync * n + 1,
            "{op}: {} calls over {n} resync periods (at most {} expected): {}",
            get(op),
            per_resync * n + 1,
            fmt_counts(&noop)
        );
    }
    let others: Vec<(&String, &u64)> = noop
        .iter()
        .filter(|(k, _)| {
            !["getApplication", "getAPIScopes", "getAPI", "token"].contains(&k.as_str())
        })
        .collect();
    ensure!(
        others.is_empty(),
        "unexpected Kinde calls in no-op resyncs: {others:?}"
    );

    Ok(())
}

/// Kinde calls and Kubernetes writes of one lifecycle, create → Ready → delete, of an
/// ApiRegistration (2 scopes), an M2MApplication and an ApiGrant, without resyncs in the
/// way; printed, and checked for duplicates (one create of each Kinde object).
async fn economy_lifecycle_calls(env: Arc<Env>) -> anyhow::Result<()> {
    let start = call_counts(&env.emu).await?;
    let writes: Counts = Arc::default();
    let watches = vec![
        count_writes(env.apis(), "ApiRegistration", writes.clone()).await?,
        count_writes(env.apps(), "M2MApplication", writes.clone()).await?,
        count_writes(env.grants(), "ApiGrant", writes.clone()).await?,
        count_writes(env.secrets(), "Secret", writes.clone()).await?,
        count_writes(env.ctx.api::<Event>(), "Event", writes.clone()).await?,
    ];
    let audience = "https://lifecycle.example.com";
    buyer_ready(&env, "lifecycle", audience).await?;
    let ready = call_counts(&env.emu).await?;
    let k8s_created = take_counts(&writes);
    let created = delta(&start, &ready);
    eprintln!(
        "lifecycle: create -> Ready: Kinde calls {} ; Kinde writes {}",
        fmt_counts(&created),
        env.emu.total_writes().await?
    );
    eprintln!(
        "lifecycle: create -> Ready: Kubernetes writes (watch events; the 3 ADDED CRs are the test's own) {}",
        fmt_counts(&k8s_created)
    );
    for (op, want) in [("addAPIs", 1), ("createApplication", 1), ("addAPIScope", 2)] {
        ensure!(
            created.get(op).copied().unwrap_or(0) == want,
            "{op}: {:?} calls, {want} expected ({})",
            created.get(op),
            fmt_counts(&created)
        );
    }

    let writes_ready = env.emu.total_writes().await?;
    support::delete(&env.grants(), "buyer-lifecycle").await?;
    wait_gone(&env.grants(), "buyer-lifecycle").await?;
    support::delete(&env.apps(), "buyer").await?;
    support::delete(&env.apis(), "lifecycle").await?;
    wait_gone(&env.apps(), "buyer").await?;
    wait_gone(&env.apis(), "lifecycle").await?;
    let end = call_counts(&env.emu).await?;
    // The garbage collector deletes the Secret after its owner is gone.
    env.wait_secret_collected("buyer-credentials").await?;
    eprintln!(
        "lifecycle: delete: Kubernetes writes (watch events; one MODIFIED per CR is the test's delete setting deletionTimestamp, the Secret DELETED is the garbage collector's) {}",
        fmt_counts(&take_counts(&writes))
    );
    for w in watches {
        w.abort();
    }
    eprintln!(
        "lifecycle: delete (grant, then application and API): Kinde calls {} ; Kinde writes {}",
        fmt_counts(&delta(&ready, &end)),
        env.emu.total_writes().await? - writes_ready
    );
    eprintln!(
        "lifecycle: create -> Ready -> delete: Kinde calls {}",
        fmt_counts(&delta(&start, &end))
    );
    let state = env.emu.state().await?;
    ensure!(
        state["apis"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|a| a["audience"] != audience),
        "API left in Kinde: {state}"
    );
    ensure!(
        state["applications"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|a| a["is_management_client"] == true),
        "application left in Kinde: {state}"
    );
    Ok(())
}

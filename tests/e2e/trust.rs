//! Trust boundaries and bad input, end to end: what a hostile or careless tenant can try with
//! the three kinds (adopting another tenant's or the operator's own Kinde objects, pinning or
//! shadowing a platform API, specs that would break after the first Kinde write), and the
//! timings that used to leave a second Kinde object behind. Each test counts Kinde objects
//! and writes in the emulator, and reads what landed in Kubernetes.

use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kinde_m2m_operator::crd::{ApiRegistration, EXTERNAL_ID_ANNOTATION, M2MApplication};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use crate::support::{self, Ctx, E2eTest, Emulator, Operator, wait_for};

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

const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

async fn start(
    ctx: &Ctx,
    extra_ns: &[&str],
    args: &[&str],
) -> anyhow::Result<(Emulator, Operator)> {
    ctx.harness.ensure_crds().await?;
    let emulator = ctx.own_emulator()?;
    let operator = ctx.run_operator(&emulator, extra_ns, "10m", args)?;
    Ok((emulator, operator))
}

fn dyn_api<K: kube::Resource<DynamicType = ()>>(ctx: &Ctx, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), ns, &ApiResource::erase::<K>(&()))
}

/// Applies `yaml` (one or more objects) into `ns`.
async fn apply_in(ctx: &Ctx, ns: &str, yaml: &str) -> anyhow::Result<()> {
    support::kubectl(
        ctx.harness,
        &["--namespace", ns, "apply", "-f", "-"],
        Some(yaml),
    )
    .await?
    .success()
    .map(drop)
}

fn app_yaml(name: &str, annotations: &[(&str, &str)], spec: &str) -> String {
    format!(
        "apiVersion: m2m.kinde-operator.io/v1alpha1\nkind: M2MApplication\nmetadata:\n  name: {name}\n{}spec:\n{spec}\n---\n",
        annotations_yaml(annotations)
    )
}

fn api_yaml(name: &str, annotations: &[(&str, &str)], spec: &str) -> String {
    format!(
        "apiVersion: m2m.kinde-operator.io/v1alpha1\nkind: ApiRegistration\nmetadata:\n  name: {name}\n{}spec:\n{spec}\n---\n",
        annotations_yaml(annotations)
    )
}

fn grant_yaml(name: &str, app: &str, api: &str, api_ns: &str, scopes: &[&str]) -> String {
    let scopes: String = scopes.iter().map(|s| format!("\n    - {s}")).collect();
    format!(
        "apiVersion: m2m.kinde-operator.io/v1alpha1\nkind: ApiGrant\nmetadata:\n  name: {name}\nspec:\n  applicationRef:\n    name: {app}\n  apiRef:\n    name: {api}\n    namespace: {api_ns}\n  scopes:{scopes}\n---\n"
    )
}

fn annotations_yaml(annotations: &[(&str, &str)]) -> String {
    if annotations.is_empty() {
        return String::new();
    }
    let lines: String = annotations
        .iter()
        .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
        .collect();
    format!("  annotations:\n{lines}")
}

/// `(status, reason, message)` of the Ready condition.
fn ready_of(obj: &DynamicObject) -> Option<(String, String, String)> {
    let conds = obj.data["status"]["conditions"].as_array()?;
    conds.iter().find(|c| c["type"] == "Ready").map(|c| {
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
        (s("status"), s("reason"), s("message"))
    })
}

/// Waits until `ns/name` of kind `K` has `Ready` with `reason`; returns the object.
async fn wait_reason<K: kube::Resource<DynamicType = ()>>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    reason: &str,
) -> anyhow::Result<DynamicObject> {
    let want = if reason == "Reconciled" {
        "True"
    } else {
        "False"
    };
    let api = dyn_api::<K>(ctx, ns);
    wait_for(
        &format!("{} {ns}/{name} Ready={want} {reason}", K::kind(&())),
        WAIT,
        || async {
            let obj = api.get(name).await?;
            match ready_of(&obj) {
                Some((s, r, _)) if s == want && r == reason => Ok(Some(obj)),
                other => Err(anyhow!("Ready condition: {other:?}")),
            }
        },
    )
    .await
}

fn message(obj: &DynamicObject) -> String {
    ready_of(obj).map(|(_, _, m)| m).unwrap_or_default()
}

fn status_str(obj: &DynamicObject, field: &str) -> anyhow::Result<String> {
    obj.data["status"][field]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("status.{field} missing: {}", obj.data["status"]))
}

async fn kinde_api(emulator: &Emulator, id: &str) -> anyhow::Result<Option<Value>> {
    let state = emulator.state().await?;
    Ok(state["apis"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["id"] == id)
        .cloned())
}

fn scope_keys(api: &Value) -> Vec<String> {
    let mut keys: Vec<String> = api["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["key"].as_str().map(str::to_owned))
        .collect();
    keys.sort();
    keys
}

async fn secret_exists(ctx: &Ctx, ns: &str, name: &str) -> anyhow::Result<bool> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api.get_opt(name).await?.is_some())
}

/// Creates an M2M app directly in Kinde (a dashboard-made app); returns its id.
async fn kinde_create_app(emulator: &Emulator, name: &str) -> anyhow::Result<String> {
    let created = mgmt(
        emulator,
        reqwest::Method::POST,
        "/api/v1/applications",
        Some(json!({"name": name, "type": "m2m"})),
    )
    .await?;
    created["application"]["id"]
        .as_str()
        .map(str::to_owned)
        .context("no application id")
}

/// A Management API call with the operator's own credentials.
async fn mgmt(
    emulator: &Emulator,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{}/oauth2/token", emulator.url))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", support::KINDE_CLIENT_ID),
            ("client_secret", support::KINDE_CLIENT_SECRET),
            ("audience", &format!("{}/api", emulator.url)),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = token["access_token"].as_str().context("no access_token")?;
    let mut req = http
        .request(method, format!("{}{path}", emulator.url))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    ensure!(status.is_success(), "{path}: HTTP {status}: {text}");
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn delete_obj<K: kube::Resource<DynamicType = ()>>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
) -> anyhow::Result<()> {
    dyn_api::<K>(ctx, ns)
        .delete(name, &DeleteParams::default())
        .await?;
    Ok(())
}

async fn wait_gone<K: kube::Resource<DynamicType = ()>>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
) -> anyhow::Result<()> {
    let api = dyn_api::<K>(ctx, ns);
    wait_for(&format!("{ns}/{name} to be gone"), WAIT, || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

async fn merge_patch<K: kube::Resource<DynamicType = ()>>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    patch: Value,
) -> anyhow::Result<()> {
    dyn_api::<K>(ctx, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

fn with_log<T>(result: anyhow::Result<T>, op: &Operator) -> anyhow::Result<T> {
    result.map_err(|e| e.context(format!("operator log tail:\n{}", op.log_tail(40))))
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
    let (emulator, op) = start(
        &ctx,
        &[&victim_ns, &outsider_ns],
        &["--adoption-namespace", &ctx.ns],
    )
    .await?;
    let result = async {
        apply_in(
            &ctx,
            &victim_ns,
            &app_yaml("victim", &[], "  displayName: Victim"),
        )
        .await?;
        let victim =
            wait_reason::<M2MApplication>(&ctx, &victim_ns, "victim", "Reconciled").await?;
        let victim_id = status_str(&victim, "applicationId")?;

        let thieves = [
            ("thief", victim_id.as_str(), "AdoptionRefused"),
            ("mgmt-thief", support::KINDE_CLIENT_ID, "AdoptionRefused"),
        ];
        for (name, target, _) in thieves {
            apply_in(
                &ctx,
                &ctx.ns,
                &app_yaml(
                    name,
                    &[(EXTERNAL_ID_ANNOTATION, target)],
                    "  displayName: Stolen\n  deletionPolicy: Delete",
                ),
            )
            .await?;
        }
        apply_in(
            &ctx,
            &outsider_ns,
            &app_yaml(
                "thief",
                &[(EXTERNAL_ID_ANNOTATION, &victim_id)],
                "  displayName: Stolen",
            ),
        )
        .await?;
        for (name, target, reason) in thieves {
            let obj = wait_reason::<M2MApplication>(&ctx, &ctx.ns, name, reason).await?;
            ensure!(
                message(&obj).contains(target),
                "{name}: the message does not name {target}: {}",
                message(&obj)
            );
        }
        let outsider =
            wait_reason::<M2MApplication>(&ctx, &outsider_ns, "thief", "AdoptionNotPermitted")
                .await?;
        ensure!(
            message(&outsider).contains(&outsider_ns),
            "message: {}",
            message(&outsider)
        );
        for (ns, name) in [
            (&ctx.ns, "thief"),
            (&ctx.ns, "mgmt-thief"),
            (&outsider_ns, "thief"),
        ] {
            ensure!(
                !secret_exists(&ctx, ns, &format!("{name}-credentials")).await?,
                "{ns}/{name} got a credentials Secret"
            );
            let obj = dyn_api::<M2MApplication>(&ctx, ns).get(name).await?;
            ensure!(
                obj.data["status"]["applicationId"].is_null()
                    && obj.data["status"]["clientId"].is_null(),
                "{ns}/{name} recorded a foreign application: {}",
                obj.data["status"]
            );
        }
        // The refusals made no Kinde write; B's app keeps its name.
        let apps = emulator.kinde_apps().await?;
        ensure!(apps.len() == 1, "Kinde applications: {apps:?}");
        ensure!(apps[0]["name"] == "Victim", "victim renamed: {}", apps[0]);

        for name in ["thief", "mgmt-thief"] {
            delete_obj::<M2MApplication>(&ctx, &ctx.ns, name).await?;
            wait_gone::<M2MApplication>(&ctx, &ctx.ns, name).await?;
        }
        let apps = emulator.kinde_apps().await?;
        ensure!(
            apps.iter().any(|a| a["id"] == victim_id.as_str()),
            "deleting the refused adopter deleted the victim's app: {apps:?}"
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
        wait_reason::<M2MApplication>(&ctx, &victim_ns, "victim", "Reconciled").await?;
        Ok(())
    }
    .await;
    with_log(result, &op)
}

/// A tenant's ApiRegistration annotated with the platform API's id (and its audience) is
/// refused: the platform's scopes and grant policy stay in force.
async fn tenant_cannot_adopt_platform_api(ctx: Ctx) -> anyhow::Result<()> {
    let platform_ns = ctx.extra_namespace(&[]).await?;
    let (emulator, op) = start(&ctx, &[&platform_ns], &["--adoption-namespace", &ctx.ns]).await?;
    let result = async {
        let audience = "https://orders.platform.example";
        apply_in(
            &ctx,
            &platform_ns,
            &api_yaml(
                "orders",
                &[],
                &format!(
                    "  audience: {audience}\n  scopes:\n    - key: read\n      description: Read\n    - key: write\n      description: Write"
                ),
            ),
        )
        .await?;
        let orders = wait_reason::<ApiRegistration>(&ctx, &platform_ns, "orders", "Reconciled").await?;
        let api_id = status_str(&orders, "apiId")?;
        apply_in(
            &ctx,
            &ctx.ns,
            &api_yaml(
                "copy",
                &[(EXTERNAL_ID_ANNOTATION, &api_id)],
                &format!("  audience: {audience}\n  grantPolicy:\n    from: All"),
            ),
        )
        .await?;
        let copy = wait_reason::<ApiRegistration>(&ctx, &ctx.ns, "copy", "AdoptionRefused").await?;
        ensure!(
            message(&copy).contains(&platform_ns),
            "the message does not name the holder: {}",
            message(&copy)
        );
        ensure!(copy.data["status"]["apiId"].is_null(), "{}", copy.data["status"]);
        // A grant through the copy finds nothing to grant.
        apply_in(&ctx, &ctx.ns, &app_yaml("client", &[], "  displayName: Client")).await?;
        apply_in(
            &ctx,
            &ctx.ns,
            &grant_yaml("via-copy", "client", "copy", &ctx.ns, &[]),
        )
        .await?;
        wait_reason::<kinde_m2m_operator::crd::ApiGrant>(&ctx, &ctx.ns, "via-copy", "WaitingForApi")
            .await?;
        let kinde = kinde_api(&emulator, &api_id).await?.context("platform API gone")?;
        ensure!(
            scope_keys(&kinde) == ["read", "write"],
            "the platform API's scopes changed: {kinde}"
        );
        ensure!(
            kinde["applications"].as_array().is_none_or(Vec::is_empty),
            "an application was authorized on the platform API: {kinde}"
        );
        wait_reason::<ApiRegistration>(&ctx, &platform_ns, "orders", "Reconciled").await?;
        Ok(())
    }
    .await;
    with_log(result, &op)
}

/// Adoption permitted by a namespace label: a dashboard-made app is adopted (its secret read
/// back), `deletionPolicy: Delete` on it is refused without `--adoption-allow-delete`, and
/// deleting the object leaves the app in Kinde. Removing the label withdraws the permission.
async fn adoption_by_namespace_label_keeps_adopted_objects(ctx: Ctx) -> anyhow::Result<()> {
    let label = "trust.e2e.kinde-operator.io/adopt";
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    namespaces
        .patch(
            &ctx.ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {label: "yes"}}})),
        )
        .await?;
    let selector = format!("{label}=yes");
    let (emulator, op) = start(&ctx, &[], &["--adoption-namespace-selector", &selector]).await?;
    let result = async {
        let legacy = kinde_create_app(&emulator, "Legacy").await?;
        let doomed = kinde_create_app(&emulator, "Doomed").await?;
        apply_in(
            &ctx,
            &ctx.ns,
            &app_yaml(
                "legacy",
                &[(EXTERNAL_ID_ANNOTATION, &legacy)],
                "  displayName: Legacy",
            ),
        )
        .await?;
        apply_in(
            &ctx,
            &ctx.ns,
            &app_yaml(
                "doomed",
                &[(EXTERNAL_ID_ANNOTATION, &doomed)],
                "  displayName: Doomed\n  deletionPolicy: Delete",
            ),
        )
        .await?;
        let obj = wait_reason::<M2MApplication>(&ctx, &ctx.ns, "legacy", "Reconciled").await?;
        ensure!(
            status_str(&obj, "applicationId")? == legacy,
            "{}",
            obj.data["status"]
        );
        ensure!(
            secret_exists(&ctx, &ctx.ns, "legacy-credentials").await?,
            "no Secret for the adopted app"
        );
        let obj = wait_reason::<M2MApplication>(&ctx, &ctx.ns, "doomed", "AdoptionRefused").await?;
        ensure!(
            message(&obj).contains("--adoption-allow-delete"),
            "message: {}",
            message(&obj)
        );

        for name in ["legacy", "doomed"] {
            delete_obj::<M2MApplication>(&ctx, &ctx.ns, name).await?;
            wait_gone::<M2MApplication>(&ctx, &ctx.ns, name).await?;
        }
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
        apply_in(
            &ctx,
            &ctx.ns,
            &app_yaml(
                "again",
                &[(EXTERNAL_ID_ANNOTATION, &legacy)],
                "  displayName: Legacy",
            ),
        )
        .await?;
        wait_reason::<M2MApplication>(&ctx, &ctx.ns, "again", "Reconciled").await?;
        namespaces
            .patch(
                &ctx.ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {label: null}}})),
            )
            .await?;
        merge_patch::<M2MApplication>(
            &ctx,
            &ctx.ns,
            "again",
            json!({"metadata": {"annotations": {"poke": "1"}}}),
        )
        .await?;
        wait_reason::<M2MApplication>(&ctx, &ctx.ns, "again", "AdoptionNotPermitted").await?;
        Ok(())
    }
    .await;
    with_log(result, &op)
}

// ---------------------------------------------------------------------------------------
// Shadowing and pinning platform APIs
// ---------------------------------------------------------------------------------------

/// Two ApiRegistrations with one audience in two namespaces, created together (both creates
/// in flight at once): one API in Kinde, one object Ready, the other `AudienceInUse`; deleting
/// the loser leaves the winner's API.
async fn one_audience_in_two_namespaces(ctx: Ctx) -> anyhow::Result<()> {
    let other_ns = ctx.extra_namespace(&[]).await?;
    let (emulator, op) = start(&ctx, &[&other_ns], &[]).await?;
    let result = async {
        // Both creates are in flight together: the second reaches Kinde after the first.
        emulator
            .fault(json!({"operation": "addAPIs", "latency_ms": 1500, "times": 2}))
            .await?;
        let audience = "https://contested.example.com";
        let spec = format!("  audience: {audience}");
        apply_in(&ctx, &ctx.ns, &api_yaml("contested", &[], &spec)).await?;
        apply_in(&ctx, &other_ns, &api_yaml("contested", &[], &spec)).await?;
        let settled = wait_for("one Ready and one AudienceInUse", WAIT, || async {
            let mut reasons = Vec::new();
            for ns in [&ctx.ns, &other_ns] {
                let obj = dyn_api::<ApiRegistration>(&ctx, ns)
                    .get("contested")
                    .await?;
                reasons.push((ns.clone(), ready_of(&obj).map(|(_, r, _)| r), obj));
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
        let api_id = status_str(&winner, "apiId")?;
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
        let loser = dyn_api::<ApiRegistration>(&ctx, &loser_ns)
            .get("contested")
            .await?;
        ensure!(
            loser.data["status"]["apiId"].is_null(),
            "loser: {}",
            loser.data["status"]
        );

        delete_obj::<ApiRegistration>(&ctx, &loser_ns, "contested").await?;
        wait_gone::<ApiRegistration>(&ctx, &loser_ns, "contested").await?;
        ensure!(
            kinde_api(&emulator, &api_id).await?.is_some(),
            "deleting the loser deleted the winner's API"
        );
        wait_reason::<ApiRegistration>(&ctx, &winner_ns, "contested", "Reconciled").await?;
        Ok(())
    }
    .await;
    with_log(result, &op)
}

/// A grant the API's `grantPolicy` refuses does not keep the API's deletion waiting.
async fn refused_grant_does_not_pin_api(ctx: Ctx) -> anyhow::Result<()> {
    let platform_ns = ctx.extra_namespace(&[]).await?;
    let (emulator, op) = start(&ctx, &[&platform_ns], &[]).await?;
    let result = async {
        apply_in(
            &ctx,
            &platform_ns,
            &api_yaml(
                "internal",
                &[],
                "  audience: https://internal.example.com\n  deletionPolicy: Delete\n  scopes:\n    - key: read\n      description: Read",
            ),
        )
        .await?;
        let api = wait_reason::<ApiRegistration>(&ctx, &platform_ns, "internal", "Reconciled").await?;
        let api_id = status_str(&api, "apiId")?;
        apply_in(&ctx, &ctx.ns, &app_yaml("pinner", &[], "  displayName: Pinner")).await?;
        apply_in(
            &ctx,
            &ctx.ns,
            &grant_yaml("pin", "pinner", "internal", &platform_ns, &["read"]),
        )
        .await?;
        wait_reason::<kinde_m2m_operator::crd::ApiGrant>(&ctx, &ctx.ns, "pin", "RefNotPermitted")
            .await?;
        delete_obj::<ApiRegistration>(&ctx, &platform_ns, "internal").await?;
        wait_gone::<ApiRegistration>(&ctx, &platform_ns, "internal").await?;
        ensure!(
            kinde_api(&emulator, &api_id).await?.is_none(),
            "the Kinde API survived its deletion"
        );
        Ok(())
    }
    .await;
    with_log(result, &op)
}

// ---------------------------------------------------------------------------------------
// Bad specs
// ---------------------------------------------------------------------------------------

/// Specs that would break after the first Kinde write are refused before it: an object name
/// too long for its Events (and its default Secret name), an invalid Secret label, a
/// rotation interval of a second or shorter than twice the overlap.
async fn specs_checked_before_kinde(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, op) = start(&ctx, &[], &[]).await?;
    let result = async {
        let long = "a".repeat(245);
        let cases = [
            (long.as_str(), "  displayName: Long", "metadata.name"),
            (
                "badlabel",
                "  secret:\n    labels:\n      team: \"a b\"",
                "spec.secret.labels",
            ),
            ("fast", "  rotation:\n    every: 1s", "spec.rotation.every"),
            (
                "short",
                "  rotation:\n    every: 1h\n    overlap: 1h",
                "spec.rotation.every",
            ),
        ];
        for (name, spec, _) in &cases {
            apply_in(&ctx, &ctx.ns, &app_yaml(name, &[], spec)).await?;
        }
        for (name, _, field) in &cases {
            let obj = wait_reason::<M2MApplication>(&ctx, &ctx.ns, name, "InvalidSpec").await?;
            ensure!(message(&obj).contains(field), "{name}: {}", message(&obj));
        }
        let calls = emulator.calls().await?;
        ensure!(
            emulator.total_writes().await? == 0,
            "Kinde writes for refused specs: {calls}"
        );
        Ok(())
    }
    .await;
    with_log(result, &op)
}

/// Immutable fields edited on a server without CEL (the test server is v1.20) are refused
/// by the operator, not silently ignored.
async fn immutable_fields_rechecked(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, op) = start(&ctx, &[], &[]).await?;
    let result = async {
        apply_in(
            &ctx,
            &ctx.ns,
            &api_yaml("fixed", &[], "  audience: https://fixed.example.com"),
        )
        .await?;
        apply_in(
            &ctx,
            &ctx.ns,
            &app_yaml(
                "org-app",
                &[],
                "  displayName: Org app\n  organizationCode: org_a",
            ),
        )
        .await?;
        let api = wait_reason::<ApiRegistration>(&ctx, &ctx.ns, "fixed", "Reconciled").await?;
        let api_id = status_str(&api, "apiId")?;
        wait_reason::<M2MApplication>(&ctx, &ctx.ns, "org-app", "Reconciled").await?;
        merge_patch::<ApiRegistration>(
            &ctx,
            &ctx.ns,
            "fixed",
            json!({"spec": {"audience": "https://moved.example.com"}}),
        )
        .await?;
        merge_patch::<M2MApplication>(
            &ctx,
            &ctx.ns,
            "org-app",
            json!({"spec": {"organizationCode": "org_b"}}),
        )
        .await?;
        let obj = wait_reason::<ApiRegistration>(&ctx, &ctx.ns, "fixed", "InvalidSpec").await?;
        ensure!(
            message(&obj).contains("spec.audience is immutable"),
            "{}",
            message(&obj)
        );
        let obj = wait_reason::<M2MApplication>(&ctx, &ctx.ns, "org-app", "InvalidSpec").await?;
        ensure!(
            message(&obj).contains("spec.organizationCode is immutable"),
            "{}",
            message(&obj)
        );
        let kinde = kinde_api(&emulator, &api_id).await?.context("API gone")?;
        ensure!(kinde["audience"] == "https://fixed.example.com", "{kinde}");
        ensure!(
            emulator.call_count("addAPIs").await? == 1,
            "a second API was created: {}",
            emulator.calls().await?
        );
        Ok(())
    }
    .await;
    with_log(result, &op)
}

// ---------------------------------------------------------------------------------------
// Deletion and rotation under failure
// ---------------------------------------------------------------------------------------

/// A deletion Kinde refuses (the management client lacks `delete:applications`) shows in the
/// conditions with the reason, and finishes once the scope is back.
async fn refused_deletion_says_why(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, op) = start(&ctx, &[], &[]).await?;
    let result = async {
        apply_in(
            &ctx,
            &ctx.ns,
            &app_yaml("stuck", &[], "  displayName: Stuck"),
        )
        .await?;
        wait_reason::<M2MApplication>(&ctx, &ctx.ns, "stuck", "Reconciled").await?;
        let scopes = emulator
            .control(reqwest::Method::GET, "management-client/scopes", None)
            .await?;
        let all: Vec<String> = scopes["scopes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
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
        delete_obj::<M2MApplication>(&ctx, &ctx.ns, "stuck").await?;
        let obj = wait_reason::<M2MApplication>(&ctx, &ctx.ns, "stuck", "KindeForbidden").await?;
        ensure!(
            message(&obj).contains("delete:applications"),
            "the condition does not name the missing scope: {}",
            message(&obj)
        );
        let synced = obj.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Synced")
            .cloned()
            .unwrap_or_default();
        ensure!(
            synced["status"] == "False" && synced["reason"] == "KindeForbidden",
            "Synced: {synced}"
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
            || async {
                Ok(dyn_api::<M2MApplication>(&ctx, &ctx.ns)
                    .get_opt("stuck")
                    .await?
                    .is_none()
                    .then_some(()))
            },
        )
        .await?;
        ensure!(emulator.kinde_apps().await?.is_empty(), "the app survived");
        Ok(())
    }
    .await;
    with_log(result, &op)
}

/// A rotation that keeps failing (its successor cannot be authorized) and is then superseded
/// by a new request leaves no authorized application behind: the first successor is
/// disconnected and deleted, the second becomes current.
async fn superseded_rotation_leaves_nothing_behind(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, op) = start(&ctx, &[], &[]).await?;
    let result = async {
        apply_in(
            &ctx,
            &ctx.ns,
            &api_yaml(
                "svc",
                &[],
                "  audience: https://svc.example.com\n  scopes:\n    - key: read\n      description: Read",
            ),
        )
        .await?;
        apply_in(&ctx, &ctx.ns, &app_yaml("rot", &[], "  displayName: Rot\n  rotation:\n    overlap: 1h")).await?;
        apply_in(&ctx, &ctx.ns, &grant_yaml("rot-svc", "rot", "svc", &ctx.ns, &["read"])).await?;
        wait_reason::<kinde_m2m_operator::crd::ApiGrant>(&ctx, &ctx.ns, "rot-svc", "Reconciled").await?;
        let first = wait_reason::<M2MApplication>(&ctx, &ctx.ns, "rot", "Reconciled").await?;
        let original = status_str(&first, "applicationId")?;

        // Authorizing any successor fails from now on.
        emulator
            .fault(json!({"operation": "updateAPIApplications", "status": 500, "times": 1000}))
            .await?;
        let rotate = |v: &'static str| {
            json!({"metadata": {"annotations": {"m2m.kinde-operator.io/rotate-requested-at": v}}})
        };
        merge_patch::<M2MApplication>(&ctx, &ctx.ns, "rot", rotate("r1")).await?;
        // The first rotation records its successor, then fails to authorize it.
        let pending = wait_for("the first rotation to fail", WAIT, || async {
            let obj = dyn_api::<M2MApplication>(&ctx, &ctx.ns).get("rot").await?;
            let synced_false = obj.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Synced" && c["status"] == "False");
            Ok(obj.data["status"]["pendingSuccessor"]["applicationId"]
                .as_str()
                .filter(|_| synced_false)
                .map(str::to_owned))
        })
        .await?;
        merge_patch::<M2MApplication>(&ctx, &ctx.ns, "rot", rotate("r2")).await?;
        emulator
            .control(reqwest::Method::DELETE, "faults", None)
            .await?;
        let done = wait_for("the second rotation to finish", Duration::from_secs(400), || async {
            let obj = dyn_api::<M2MApplication>(&ctx, &ctx.ns).get("rot").await?;
            let ready = ready_of(&obj).is_some_and(|(s, _, _)| s == "True");
            Ok((ready && obj.data["status"]["lastHandledRotateRequest"] == "r2").then_some(obj))
        })
        .await?;
        let current = status_str(&done, "applicationId")?;
        ensure!(current != original && current != pending, "current {current}");
        let apps = emulator.kinde_apps().await?;
        let ids: Vec<&str> = apps.iter().filter_map(|a| a["id"].as_str()).collect();
        ensure!(
            !ids.contains(&pending.as_str()),
            "the superseded successor {pending} is still in Kinde: {apps:?}"
        );
        ensure!(
            ids.len() == 2 && ids.contains(&original.as_str()) && ids.contains(&current.as_str()),
            "expected the retiring original and the current app: {apps:?}"
        );
        ensure!(
            done.data["status"]["pendingSuccessor"].is_null(),
            "{}",
            done.data["status"]
        );
        Ok(())
    }
    .await;
    with_log(result, &op)
}

/// A create Kinde completes after the client gave up (timeout: outcome unknown) lands after
/// the operator, finding nothing, created the application again: the late copy carries the
/// object's marker and is found and deleted, leaving exactly one application.
async fn late_create_is_swept(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, op) = start(&ctx, &[], &["--kinde-timeout", "2s"]).await?;
    let result = async {
        // The first create is answered never and performed 15 s later: after the client's
        // timeout and after the retry (10 s backoff) has created the application again.
        emulator
            .fault(json!({"operation": "createApplication", "latency_ms": 15000, "detached": true}))
            .await?;
        apply_in(&ctx, &ctx.ns, &app_yaml("late", &[], "  displayName: Late")).await?;
        let obj = wait_reason::<M2MApplication>(&ctx, &ctx.ns, "late", "Reconciled").await?;
        let id = status_str(&obj, "applicationId")?;
        ensure!(
            !obj.data["status"]["unconfirmedCreateSince"].is_null(),
            "the unknown outcome was not noted: {}",
            obj.data["status"]
        );
        wait_for("the late copy to land", Duration::from_secs(60), || async {
            Ok((emulator.call_count("createApplication").await? == 2
                && emulator.calls().await?["createApplication"]["writes"] == 2)
                .then_some(()))
        })
        .await?;
        let apps = wait_for(
            "exactly one application",
            Duration::from_secs(180),
            || async {
                let apps = emulator.kinde_apps().await?;
                Ok((apps.len() == 1).then_some(apps))
            },
        )
        .await?;
        ensure!(
            apps[0]["id"] == id.as_str(),
            "the wrong one survived: {apps:?}"
        );
        ensure!(apps[0]["name"] == "Late", "name: {}", apps[0]);
        wait_reason::<M2MApplication>(&ctx, &ctx.ns, "late", "Reconciled").await?;
        Ok(())
    }
    .await;
    with_log(result, &op)
}

/// During a Kinde outage a failing object is retried with exponential backoff (10 s, 20 s,
/// 40 s, ...), not every 10 s: over a 75 s outage its create is tried about 4 times (0, 10,
/// 30, 70 s) where a fixed 10 s retry tried 8 times. A slow machine only lowers the count.
async fn failures_back_off_per_object(ctx: Ctx) -> anyhow::Result<()> {
    let (emulator, op) = start(&ctx, &[], &[]).await?;
    let result = async {
        emulator
            .fault(json!({"operation": "createApplication", "status": 500, "times": 1000}))
            .await?;
        apply_in(
            &ctx,
            &ctx.ns,
            &app_yaml("broken", &[], "  displayName: Broken"),
        )
        .await?;
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
        emulator
            .control(reqwest::Method::DELETE, "faults", None)
            .await?;
        Ok(())
    }
    .await;
    with_log(result, &op)
}

/// Events about `name` with `reason`: `(type, count)` of each (a repeated Event is one
/// object with a growing series count).
async fn events_about(ctx: &Ctx, name: &str, reason: &str) -> anyhow::Result<Vec<String>> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(ctx.client.clone(), &ctx.ns);
    Ok(events
        .list(&kube::api::ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(name))
                && e.reason.as_deref() == Some(reason)
        })
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
    let result = async {
        apply_in(
            &ctx,
            &ctx.ns,
            &api_yaml(
                "held",
                &[],
                "  audience: https://held.example.com\n  scopes:\n    - key: read\n      description: Read",
            ),
        )
        .await?;
        apply_in(&ctx, &ctx.ns, &app_yaml("frozen", &[], "  displayName: Frozen")).await?;
        apply_in(&ctx, &ctx.ns, &grant_yaml("holder", "frozen", "held", &ctx.ns, &["read"])).await?;
        wait_reason::<kinde_m2m_operator::crd::ApiGrant>(&ctx, &ctx.ns, "holder", "Reconciled")
            .await?;
        merge_patch::<M2MApplication>(
            &ctx,
            &ctx.ns,
            "frozen",
            json!({"metadata": {"annotations": {"m2m.kinde-operator.io/paused": "true"}}}),
        )
        .await?;
        delete_obj::<M2MApplication>(&ctx, &ctx.ns, "frozen").await?;
        delete_obj::<ApiRegistration>(&ctx, &ctx.ns, "held").await?;
        let app = wait_for("the paused deletion to report itself", WAIT, || async {
            let obj = dyn_api::<M2MApplication>(&ctx, &ctx.ns).get("frozen").await?;
            let synced = obj.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Synced")
                .cloned()
                .unwrap_or_default();
            Ok((synced["reason"] == "Paused"
                && synced["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("deletion waits")))
            .then_some(obj))
        })
        .await?;
        ensure!(
            ready_of(&app).is_some_and(|(s, r, _)| s == "False" && r == "Paused"),
            "Ready of the paused deletion: {:?}",
            ready_of(&app)
        );
        let api = wait_reason::<ApiRegistration>(&ctx, &ctx.ns, "held", "InUse").await?;
        ensure!(message(&api).contains("holder"), "{}", message(&api));
        // Both retry every 30 s: after two retries still one Event each, and no failure.
        tokio::time::sleep(Duration::from_secs(65)).await;
        for (name, reason) in [("frozen", "Paused"), ("held", "InUse")] {
            let seen = events_about(&ctx, name, reason).await?;
            ensure!(seen == ["Normalx1"], "Events {reason} about {name}: {seen:?}");
        }
        let metrics = reqwest::get(format!("http://{listen}/metrics")).await?.text().await?;
        let failures: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("kinde_m2m_operator_reconcile_failures_total"))
            .filter(|l| l.contains("Paused") || l.contains("InUse"))
            .collect();
        ensure!(failures.is_empty(), "waits counted as failures: {failures:?}");
        Ok(())
    }
    .await;
    with_log(result, &op)
}

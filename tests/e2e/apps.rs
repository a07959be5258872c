//! ApiRegistration and M2MApplication end to end: the real operator binary against the real
//! control plane and a Kinde emulator of each test's own (isolated state and counters).
//! Drift (things changed in Kinde behind the operator's back) and economy (what a no-op
//! resync costs) included.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use kinde_m2m_operator::crd::{ApiGrant, ApiRegistration, M2MApplication};

use crate::support::{self, Ctx, E2eTest, Emulator, Operator, wait_for};

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

const TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Per-test environment
// ---------------------------------------------------------------------------------------

/// A test's emulator and operator (watching `ctx.ns`).
struct Env {
    ctx: Ctx,
    emu: Emulator,
    op: std::sync::Mutex<Operator>,
}

/// A test with its own emulator and an operator resyncing every `resync`; on failure the
/// operator's log tail is added to the error.
fn app_test<F, Fut>(name: &str, resync: &'static str, body: F) -> E2eTest
where
    F: FnOnce(Arc<Env>) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    app_test_with(name, resync, &[], body)
}

/// [`app_test`] against an emulator answering "not found" with 404, registered as `name`
/// + [`support::NOT_FOUND_404_SUFFIX`].
fn app_test_404<F, Fut>(name: &str, resync: &'static str, body: F) -> E2eTest
where
    F: FnOnce(Arc<Env>) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
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
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    support::test(name, move |ctx| async move {
        ctx.harness.ensure_crds().await?;
        let emu = ctx.own_emulator_with(emulator_args)?;
        // Adoption is refused unless the cluster's policy admits the namespace; these tests
        // adopt in their own namespace (tests/e2e/trust.rs covers the refusals).
        let ns = ctx.ns.clone();
        let op = ctx.run_operator(&emu, &[], resync, &["--adoption-namespace", &ns])?;
        let env = Arc::new(Env {
            ctx,
            emu,
            op: std::sync::Mutex::new(op),
        });
        let mut result = body(env.clone()).await;
        if result.is_ok() && !emulator_args.is_empty() {
            result = env.emu.ensure_not_found_answered(emulator_args).await;
        }
        result.map_err(|e| {
            let tail = env.op.lock().unwrap().log_tail(40);
            e.context(format!("operator log tail:\n{tail}"))
        })
    })
}

impl Env {
    fn ns(&self) -> &str {
        &self.ctx.ns
    }

    fn dynamic<K: Resource<DynamicType = ()>>(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.ctx.client.clone(),
            &self.ctx.ns,
            &ApiResource::erase::<K>(&()),
        )
    }

    fn apis(&self) -> Api<DynamicObject> {
        self.dynamic::<ApiRegistration>()
    }

    fn apps(&self) -> Api<DynamicObject> {
        self.dynamic::<M2MApplication>()
    }

    fn grants(&self) -> Api<DynamicObject> {
        self.dynamic::<ApiGrant>()
    }

    fn secrets(&self) -> Api<Secret> {
        self.ctx.api::<Secret>()
    }

    async fn create_api(&self, name: &str, spec: Value, annotations: Value) -> anyhow::Result<()> {
        create(
            &self.apis(),
            json!({
                "apiVersion": "m2m.kinde-operator.io/v1alpha1",
                "kind": "ApiRegistration",
                "metadata": {"name": name, "annotations": annotations},
                "spec": spec,
            }),
        )
        .await
    }

    async fn create_app(&self, name: &str, spec: Value, annotations: Value) -> anyhow::Result<()> {
        create(
            &self.apps(),
            json!({
                "apiVersion": "m2m.kinde-operator.io/v1alpha1",
                "kind": "M2MApplication",
                "metadata": {"name": name, "annotations": annotations},
                "spec": spec,
            }),
        )
        .await
    }

    async fn create_grant(
        &self,
        name: &str,
        app: &str,
        api: &str,
        scopes: &[&str],
    ) -> anyhow::Result<()> {
        create(
            &self.grants(),
            json!({
                "apiVersion": "m2m.kinde-operator.io/v1alpha1",
                "kind": "ApiGrant",
                "metadata": {"name": name},
                "spec": {
                    "applicationRef": {"name": app},
                    "apiRef": {"name": api},
                    "scopes": scopes,
                },
            }),
        )
        .await
    }

    /// A management API call with a token of the operator's own management client.
    async fn mgmt(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let http = reqwest::Client::new();
        let token: Value = http
            .post(format!("{}/oauth2/token", self.emu.url))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", support::KINDE_CLIENT_ID),
                ("client_secret", support::KINDE_CLIENT_SECRET),
                ("audience", &format!("{}/api", self.emu.url)),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = token["access_token"].as_str().context("no access_token")?;
        let url = format!("{}{path}", self.emu.url);
        let mut req = http.request(method, &url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        ensure!(status.is_success(), "{url}: HTTP {status}: {text}");
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a Kinde API behind the operator's back; returns its id.
    async fn kinde_create_api(&self, name: &str, audience: &str) -> anyhow::Result<String> {
        let v = self
            .mgmt(
                reqwest::Method::POST,
                "/api/v1/apis",
                Some(json!({"name": name, "audience": audience})),
            )
            .await?;
        Ok(v["api"]["id"].as_str().context("no api.id")?.to_string())
    }

    /// The Kinde API with `audience`, from the emulator's state.
    async fn kinde_api_by_audience(&self, audience: &str) -> anyhow::Result<Option<Value>> {
        let state = self.emu.state().await?;
        Ok(state["apis"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["audience"] == audience)
            .cloned())
    }

    async fn kinde_api(&self, id: &str) -> anyhow::Result<Option<Value>> {
        let state = self.emu.state().await?;
        Ok(state["apis"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["id"] == id)
            .cloned())
    }

    async fn kinde_app(&self, id: &str) -> anyhow::Result<Option<Value>> {
        let state = self.emu.state().await?;
        Ok(state["applications"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["id"] == id)
            .cloned())
    }

    /// Waits for condition `Ready` with `status` and `reason`; returns the object.
    async fn wait_ready(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        status: &str,
        reason: &str,
    ) -> anyhow::Result<Value> {
        wait_for(
            &format!("{} {name}: Ready={status} reason {reason}", kind_of(api)),
            TIMEOUT,
            || async {
                let obj = to_json(&api.get(name).await?)?;
                let (s, r, _) = condition(&obj, "Ready");
                if s == status && r == reason {
                    Ok(Some(obj))
                } else {
                    Err(anyhow!("conditions: {}", obj["status"]["conditions"]))
                }
            },
        )
        .await
    }

    async fn wait_gone(&self, api: &Api<DynamicObject>, name: &str) -> anyhow::Result<()> {
        wait_for(
            &format!("{} {name} to be gone", kind_of(api)),
            TIMEOUT,
            || async {
                match api.get_opt(name).await? {
                    None => Ok(Some(())),
                    Some(o) => Err(anyhow!("still there; status: {}", to_json(&o)?["status"])),
                }
            },
        )
        .await
    }

    async fn secret(&self, name: &str) -> anyhow::Result<Secret> {
        self.secrets()
            .get(name)
            .await
            .with_context(|| format!("Secret {name}"))
    }

    /// Events about the object `name` with `reason`.
    async fn events(&self, name: &str, reason: &str) -> anyhow::Result<Vec<Event>> {
        let all = self.ctx.api::<Event>().list(&ListParams::default()).await?;
        Ok(all
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object.name.as_deref() == Some(name)
                    && e.reason.as_deref() == Some(reason)
            })
            .collect())
    }
}

async fn create(api: &Api<DynamicObject>, v: Value) -> anyhow::Result<()> {
    let obj: DynamicObject = serde_json::from_value(v)?;
    api.create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("creating {} {}", kind_of(api), obj.name_any()))?;
    Ok(())
}

async fn merge(api: &Api<DynamicObject>, name: &str, patch: Value) -> anyhow::Result<()> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching {} {name}", kind_of(api)))?;
    Ok(())
}

async fn delete(api: &Api<DynamicObject>, name: &str) -> anyhow::Result<()> {
    api.delete(name, &DeleteParams::background())
        .await
        .with_context(|| format!("deleting {} {name}", kind_of(api)))?;
    Ok(())
}

fn kind_of(api: &Api<DynamicObject>) -> String {
    api.resource_url()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn to_json(obj: &DynamicObject) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(obj)?)
}

/// `(status, reason, message)` of condition `type_` (empty strings when absent).
fn condition(obj: &Value, type_: &str) -> (String, String, String) {
    let c = obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_);
    let field = |k: &str| {
        c.and_then(|c| c[k].as_str())
            .unwrap_or_default()
            .to_string()
    };
    (field("status"), field("reason"), field("message"))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> anyhow::Result<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .with_context(|| format!("no {pointer} in {v}"))
}

fn secret_key(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
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
fn check_status_scopes(obj: &Value, kinde_api: &Value, keys: &[&str]) -> anyhow::Result<()> {
    let status: Vec<(String, String)> = obj["status"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["key"].as_str().unwrap_or_default().to_string(),
                s["id"].as_str().unwrap_or_default().to_string(),
            )
        })
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
    env.create_api(
        "orders",
        json!({
            "audience": audience,
            "scopes": [
                {"key": "read:orders", "description": "Read orders"},
                {"key": "write:orders", "description": "Write orders"},
            ],
        }),
        json!({}),
    )
    .await?;
    let obj = env
        .wait_ready(&env.apis(), "orders", "True", "Reconciled")
        .await?;
    let api_id = str_at(&obj, "/status/apiId")?.to_string();
    ensure!(
        obj["status"]["audience"] == audience,
        "status.audience: {}",
        obj["status"]
    );
    let kinde = env
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
    check_status_scopes(&obj, &kinde, &["read:orders", "write:orders"])?;

    // Add one, remove one, change a description.
    merge(
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
    let kinde = wait_for("Kinde scopes to match the new spec", TIMEOUT, || async {
        let k = env.kinde_api(&api_id).await?.context("Kinde API gone")?;
        if kinde_scopes(&k) == want {
            Ok(Some(k))
        } else {
            Err(anyhow!("Kinde scopes: {}", k["scopes"]))
        }
    })
    .await?;
    wait_for("status.scopes to follow", TIMEOUT, || async {
        let obj = to_json(&env.apis().get("orders").await?)?;
        check_status_scopes(&obj, &kinde, &["read:orders", "admin:orders"])?;
        let (s, r, _) = condition(&obj, "Ready");
        ensure!(s == "True" && r == "Reconciled", "Ready {s} {r}");
        ensure!(
            obj["status"]["observedGeneration"] == obj["metadata"]["generation"],
            "observedGeneration {} vs generation {}",
            obj["status"]["observedGeneration"],
            obj["metadata"]["generation"]
        );
        Ok(Some(()))
    })
    .await?;

    // Created by the operator, no deletionPolicy: Delete.
    delete(&env.apis(), "orders").await?;
    env.wait_gone(&env.apis(), "orders").await?;
    ensure!(
        env.kinde_api(&api_id).await?.is_none(),
        "Kinde API {api_id} survived the deletion of the ApiRegistration it was created for"
    );
    Ok(())
}

/// Adoption by `external-id`; the default deletion policy orphans adopted APIs and deletes
/// created ones; an explicit `Orphan` keeps a created one.
async fn api_adopt_and_deletion_policies(env: Arc<Env>) -> anyhow::Result<()> {
    let legacy_id = env
        .kinde_create_api("Legacy", "https://legacy.example.com")
        .await?;
    env.create_api(
        "legacy",
        json!({
            "audience": "https://legacy.example.com",
            "scopes": [{"key": "read:legacy", "description": "Read legacy"}],
        }),
        json!({"m2m.kinde-operator.io/external-id": legacy_id}),
    )
    .await?;
    env.create_api(
        "kept",
        json!({"audience": "https://kept.example.com", "deletionPolicy": "Orphan"}),
        json!({}),
    )
    .await?;
    env.create_api(
        "gone",
        json!({"audience": "https://gone.example.com"}),
        json!({}),
    )
    .await?;

    let legacy = env
        .wait_ready(&env.apis(), "legacy", "True", "Reconciled")
        .await?;
    ensure!(
        str_at(&legacy, "/status/apiId")? == legacy_id,
        "adopted API: status {}",
        legacy["status"]
    );
    let kinde = env
        .kinde_api(&legacy_id)
        .await?
        .context("legacy API gone")?;
    ensure!(
        kinde_scopes(&kinde) == pairs(&[("read:legacy", "Read legacy")]),
        "adopted API's scopes in Kinde: {}",
        kinde["scopes"]
    );
    let kept = env
        .wait_ready(&env.apis(), "kept", "True", "Reconciled")
        .await?;
    let kept_id = str_at(&kept, "/status/apiId")?.to_string();
    let gone = env
        .wait_ready(&env.apis(), "gone", "True", "Reconciled")
        .await?;
    let gone_id = str_at(&gone, "/status/apiId")?.to_string();
    ensure!(
        env.kinde_api_by_audience("https://legacy.example.com")
            .await?
            .is_some_and(|a| a["id"] == legacy_id.as_str()),
        "adopting created a second API for the audience"
    );

    for name in ["legacy", "kept", "gone"] {
        delete(&env.apis(), name).await?;
    }
    for name in ["legacy", "kept", "gone"] {
        env.wait_gone(&env.apis(), name).await?;
    }
    ensure!(
        env.kinde_api(&legacy_id).await?.is_some(),
        "the adopted Kinde API was deleted (default policy for adopted objects is Orphan)"
    );
    ensure!(
        env.kinde_api(&kept_id).await?.is_some(),
        "the Kinde API of a deletionPolicy: Orphan ApiRegistration was deleted"
    );
    ensure!(
        env.kinde_api(&gone_id).await?.is_none(),
        "the created Kinde API survived (default policy for created objects is Delete)"
    );
    Ok(())
}

/// The Management API's audience is refused without any Kinde write; an audience already in
/// Kinde is `AudienceInUse` naming the API id, and adopting that id makes it Ready.
async fn api_management_guard_and_audience_in_use(env: Arc<Env>) -> anyhow::Result<()> {
    let writes_before = env.emu.total_writes().await?;
    let management = format!("{}/api", env.emu.url);
    env.create_api("mgmt", json!({"audience": management}), json!({}))
        .await?;
    let obj = env
        .wait_ready(&env.apis(), "mgmt", "False", "ManagementApiRefused")
        .await?;
    let (_, _, message) = condition(&obj, "Ready");
    ensure!(message.contains(&management), "message: {message}");
    ensure!(
        obj["status"]["apiId"].is_null(),
        "status.apiId set for a refused API: {}",
        obj["status"]
    );

    let taken_id = env
        .kinde_create_api("Taken", "https://taken.example.com")
        .await?;
    env.create_api(
        "taken",
        json!({"audience": "https://taken.example.com", "scopes": [{"key": "read", "description": "Read"}]}),
        json!({}),
    )
    .await?;
    let obj = env
        .wait_ready(&env.apis(), "taken", "False", "AudienceInUse")
        .await?;
    let (_, _, message) = condition(&obj, "Ready");
    ensure!(
        message.contains(&taken_id),
        "AudienceInUse message does not name the Kinde API {taken_id}: {message}"
    );
    let writes = env.emu.total_writes().await?;
    ensure!(
        writes == writes_before + 1,
        "Kinde writes: {writes_before} before, {writes} after (only the test's own addAPIs expected): {}",
        env.emu.calls().await?
    );
    ensure!(
        env.events("mgmt", "ManagementApiRefused").await?.len() == 1,
        "expected one Warning Event ManagementApiRefused"
    );

    merge(
        &env.apis(),
        "taken",
        json!({"metadata": {"annotations": {"m2m.kinde-operator.io/external-id": taken_id}}}),
    )
    .await?;
    let obj = env
        .wait_ready(&env.apis(), "taken", "True", "Reconciled")
        .await?;
    ensure!(
        str_at(&obj, "/status/apiId")? == taken_id,
        "status after adoption: {}",
        obj["status"]
    );
    let kinde = env.kinde_api(&taken_id).await?.context("taken API gone")?;
    ensure!(
        kinde_scopes(&kinde) == pairs(&[("read", "Read")]),
        "scopes of the adopted API: {}",
        kinde["scopes"]
    );
    // Still nothing written for the refused one.
    let (s, r, _) = condition(&to_json(&env.apis().get("mgmt").await?)?, "Ready");
    ensure!(s == "False" && r == "ManagementApiRefused", "mgmt: {s} {r}");
    Ok(())
}

/// Deleting an ApiRegistration (policy Delete) waits with `InUse` while a grant references
/// it, and completes once the grant is gone.
async fn api_deletion_waits_for_grants(env: Arc<Env>) -> anyhow::Result<()> {
    let audience = "https://shared.example.com";
    env.create_api(
        "shared",
        json!({"audience": audience, "scopes": [{"key": "read", "description": "Read"}]}),
        json!({}),
    )
    .await?;
    env.create_app("client", json!({}), json!({})).await?;
    env.create_grant("client-shared", "client", "shared", &["read"])
        .await?;
    let api = env
        .wait_ready(&env.apis(), "shared", "True", "Reconciled")
        .await?;
    let api_id = str_at(&api, "/status/apiId")?.to_string();
    env.wait_ready(&env.grants(), "client-shared", "True", "Reconciled")
        .await?;

    delete(&env.apis(), "shared").await?;
    let obj = env
        .wait_ready(&env.apis(), "shared", "False", "InUse")
        .await?;
    let (_, _, message) = condition(&obj, "Ready");
    ensure!(
        message.contains("client-shared"),
        "InUse message does not name the grant: {message}"
    );
    ensure!(
        env.kinde_api(&api_id).await?.is_some(),
        "Kinde API deleted while a grant references it"
    );

    delete(&env.grants(), "client-shared").await?;
    env.wait_gone(&env.grants(), "client-shared").await?;
    let t = std::time::Instant::now();
    env.wait_gone(&env.apis(), "shared").await?;
    eprintln!(
        "api_deletion_waits_for_grants: ApiRegistration gone {:?} after its last grant",
        t.elapsed()
    );
    ensure!(
        env.kinde_api(&api_id).await?.is_none(),
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
    env.create_app("acme", json!({"organizationCode": "org_acme"}), json!({}))
        .await?;
    // The Secret is written in the reconcile that learns the secret, before the status
    // records the application: once the id shows, the Secret must be there.
    let app_id = wait_for("status.applicationId", TIMEOUT, || async {
        let obj = to_json(&env.apps().get("acme").await?)?;
        Ok(obj["status"]["applicationId"].as_str().map(str::to_string))
    })
    .await?;
    let secret = env
        .secrets()
        .get_opt("acme-credentials")
        .await?
        .context("status.applicationId is set but Secret acme-credentials does not exist")?;
    let obj = env
        .wait_ready(&env.apps(), "acme", "True", "Reconciled")
        .await?;
    let client_id = str_at(&obj, "/status/clientId")?.to_string();
    ensure!(
        obj["status"]["secretName"] == "acme-credentials",
        "status: {}",
        obj["status"]
    );
    ensure!(
        obj["status"].get("clientSecret").is_none()
            && !obj["status"].to_string().contains(
                &secret_key(&secret, "KINDE_CLIENT_SECRET").unwrap_or_else(|| "-".into())
            ),
        "status carries the secret"
    );

    let display = format!("{}/acme", env.ns());
    let kinde = wait_for(
        "the Kinde app to lose its creation marker",
        TIMEOUT,
        || async {
            let a = env.kinde_app(&app_id).await?.context("Kinde app missing")?;
            if a["name"] == display.as_str() {
                Ok(Some(a))
            } else {
                Err(anyhow!("Kinde app: {a}"))
            }
        },
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
        secret_key(&secret, "KINDE_CLIENT_ID").as_deref() == Some(client_id.as_str()),
        "KINDE_CLIENT_ID differs from status.clientId"
    );
    let client_secret = secret_key(&secret, "KINDE_CLIENT_SECRET").context("no secret")?;
    // The credentials work (and carry the organization): authorize the app on an API
    // behind the operator's back and ask for a token.
    let probe = env
        .kinde_create_api("Probe", "https://probe.example.com")
        .await?;
    env.mgmt(
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
        .delete("acme-credentials", &DeleteParams::default())
        .await?;
    let recreated = wait_for("the Secret to be recreated", TIMEOUT, || async {
        Ok(env
            .secrets()
            .get_opt("acme-credentials")
            .await?
            .filter(|s| s.uid() != old_uid))
    })
    .await?;
    ensure!(
        secret_key(&recreated, "KINDE_CLIENT_SECRET").as_deref() == Some(client_secret.as_str())
            && secret_key(&recreated, "KINDE_CLIENT_ID").as_deref() == Some(client_id.as_str()),
        "recreated Secret has other credentials"
    );
    check_secret_shape(&env, &recreated, &obj)?;

    // Edited → restored.
    env.secrets()
        .patch(
            "acme-credentials",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"KINDE_CLIENT_SECRET": "tampered", "KINDE_DOMAIN": "https://evil.example.com"}})),
        )
        .await?;
    wait_for("the edited Secret to be restored", TIMEOUT, || async {
        let s = env.secret("acme-credentials").await?;
        let got = secret_key(&s, "KINDE_CLIENT_SECRET");
        let domain = secret_key(&s, "KINDE_DOMAIN");
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
    })
    .await?;

    // displayName → rename in Kinde, same app.
    merge(
        &env.apps(),
        "acme",
        json!({"spec": {"displayName": "Acme Corp"}}),
    )
    .await?;
    wait_for("the Kinde app to be renamed", TIMEOUT, || async {
        let a = env.kinde_app(&app_id).await?.context("Kinde app missing")?;
        if a["name"] == "Acme Corp" {
            Ok(Some(()))
        } else {
            Err(anyhow!("Kinde app: {a}"))
        }
    })
    .await?;
    ensure!(
        env.events("acme", "Renamed").await?.len() == 1,
        "expected one Renamed Event"
    );

    // Delete (created, no policy: Delete) → Kinde app gone, Secret garbage collected.
    delete(&env.apps(), "acme").await?;
    env.wait_gone(&env.apps(), "acme").await?;
    ensure!(
        env.kinde_app(&app_id).await?.is_none(),
        "Kinde app {app_id} survived the deletion of its M2MApplication"
    );
    wait_for("the Secret to be garbage collected", TIMEOUT, || async {
        Ok(env
            .secrets()
            .get_opt("acme-credentials")
            .await?
            .is_none()
            .then_some(()))
    })
    .await
}

/// SPEC section 3: keys, label, controller ownerReference to `app`, type Opaque.
fn check_secret_shape(env: &Env, s: &Secret, app: &Value) -> anyhow::Result<()> {
    ensure!(s.type_.as_deref() == Some("Opaque"), "type {:?}", s.type_);
    ensure!(
        s.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("kinde-m2m-operator"),
        "labels {:?}",
        s.labels()
    );
    let owners = s.owner_references();
    ensure!(
        owners.len() == 1
            && owners[0].controller == Some(true)
            && owners[0].kind == "M2MApplication"
            && owners[0].uid == app["metadata"]["uid"].as_str().unwrap_or_default(),
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
        secret_key(s, "KINDE_DOMAIN").as_deref() == Some(env.emu.url.as_str()),
        "KINDE_DOMAIN {:?}",
        secret_key(s, "KINDE_DOMAIN")
    );
    ensure!(
        secret_key(s, "KINDE_TOKEN_URL") == Some(format!("{}/oauth2/token", env.emu.url)),
        "KINDE_TOKEN_URL {:?}",
        secret_key(s, "KINDE_TOKEN_URL")
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
    env.create_app("foreign", json!({}), json!({})).await?;
    let obj = env
        .wait_ready(&env.apps(), "foreign", "False", "SecretConflict")
        .await?;
    let (_, _, message) = condition(&obj, "Ready");
    ensure!(
        message.contains("foreign-credentials"),
        "message does not name the Secret: {message}"
    );
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
    let created = env
        .mgmt(
            reqwest::Method::POST,
            "/api/v1/applications",
            Some(json!({"name": "Legacy app", "type": "m2m"})),
        )
        .await?;
    let legacy_id = str_at(&created, "/application/id")?.to_string();
    let legacy_client = str_at(&created, "/application/client_id")?.to_string();
    let legacy_secret = str_at(&created, "/application/client_secret")?.to_string();
    env.create_app(
        "legacy",
        json!({"displayName": "Legacy app"}),
        json!({"m2m.kinde-operator.io/external-id": legacy_id}),
    )
    .await?;
    env.create_app("kept", json!({"deletionPolicy": "Orphan"}), json!({}))
        .await?;

    let legacy = env
        .wait_ready(&env.apps(), "legacy", "True", "Reconciled")
        .await?;
    ensure!(
        str_at(&legacy, "/status/applicationId")? == legacy_id,
        "status {}",
        legacy["status"]
    );
    let secret = env.secret("legacy-credentials").await?;
    ensure!(
        secret_key(&secret, "KINDE_CLIENT_ID").as_deref() == Some(legacy_client.as_str())
            && secret_key(&secret, "KINDE_CLIENT_SECRET").as_deref()
                == Some(legacy_secret.as_str()),
        "the adopted app's credentials were not read back into the Secret"
    );
    check_secret_shape(&env, &secret, &legacy)?;
    let kept = env
        .wait_ready(&env.apps(), "kept", "True", "Reconciled")
        .await?;
    let kept_id = str_at(&kept, "/status/applicationId")?.to_string();
    let apps = env.emu.state().await?["applications"].clone();
    let non_mgmt = apps
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["is_management_client"] != true)
        .count();
    ensure!(
        non_mgmt == 2,
        "expected 2 applications in Kinde (no duplicate on adoption): {apps}"
    );

    // An adopted app deleted in Kinde is reported, not re-created (a reconcile is forced
    // with an annotation; the resync is long here).
    merge(
        &env.apps(),
        "legacy",
        json!({"metadata": {"annotations": {"e2e/poke": "1"}}}),
    )
    .await?;
    let vanishing = env
        .mgmt(
            reqwest::Method::POST,
            "/api/v1/applications",
            Some(json!({"name": "Vanishing", "type": "m2m"})),
        )
        .await?;
    let vanishing_id = str_at(&vanishing, "/application/id")?.to_string();
    env.create_app(
        "vanishing",
        json!({"displayName": "Vanishing"}),
        json!({"m2m.kinde-operator.io/external-id": vanishing_id}),
    )
    .await?;
    env.wait_ready(&env.apps(), "vanishing", "True", "Reconciled")
        .await?;
    env.mgmt(
        reqwest::Method::DELETE,
        &format!("/api/v1/applications/{vanishing_id}"),
        None,
    )
    .await?;
    merge(
        &env.apps(),
        "vanishing",
        json!({"metadata": {"annotations": {"e2e/poke": "1"}}}),
    )
    .await?;
    env.wait_ready(&env.apps(), "vanishing", "False", "ExternalNotFound")
        .await?;
    let apps = env.emu.state().await?["applications"].clone();
    ensure!(
        !apps.to_string().contains("Vanishing"),
        "the adopted app was re-created: {apps}"
    );

    for name in ["legacy", "kept", "vanishing"] {
        delete(&env.apps(), name).await?;
    }
    for name in ["legacy", "kept", "vanishing"] {
        env.wait_gone(&env.apps(), name).await?;
    }
    ensure!(
        env.kinde_app(&legacy_id).await?.is_some(),
        "the adopted Kinde app was deleted (default for adopted objects is Orphan)"
    );
    ensure!(
        env.kinde_app(&kept_id).await?.is_some(),
        "the Kinde app of a deletionPolicy: Orphan M2MApplication was deleted"
    );
    Ok(())
}

/// A secret rotated in the Kinde dashboard is written through at the next resync, with an
/// Event `CredentialsUpdated`.
async fn app_rotated_secret_written_through(env: Arc<Env>) -> anyhow::Result<()> {
    env.create_app("rotated", json!({}), json!({})).await?;
    let obj = env
        .wait_ready(&env.apps(), "rotated", "True", "Reconciled")
        .await?;
    let app_id = str_at(&obj, "/status/applicationId")?.to_string();
    let rotated = env
        .emu
        .control(
            reqwest::Method::POST,
            &format!("applications/{app_id}/rotate-secret"),
            Some(json!({})),
        )
        .await?;
    let new_secret = str_at(&rotated, "/client_secret")?.to_string();
    wait_for("the rotated secret in the Secret", TIMEOUT, || async {
        let s = env.secret("rotated-credentials").await?;
        Ok(
            (secret_key(&s, "KINDE_CLIENT_SECRET").as_deref() == Some(new_secret.as_str()))
                .then_some(()),
        )
    })
    .await?;
    wait_for("an Event CredentialsUpdated", TIMEOUT, || async {
        Ok((!env
            .events("rotated", "CredentialsUpdated")
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
        .kinde_create_api("Adopted", "https://adopted.example.com")
        .await?;
    env.create_api(
        "adopted",
        json!({"audience": "https://adopted.example.com"}),
        json!({"m2m.kinde-operator.io/external-id": adopted_id}),
    )
    .await?;
    env.create_api(
        "mine",
        json!({"audience": "https://mine.example.com", "scopes": [{"key": "read", "description": "Read"}]}),
        json!({}),
    )
    .await?;
    // A grant on it: after the re-creation the application is authorized on the new API.
    env.create_app("client", json!({}), json!({})).await?;
    env.create_grant("client-mine", "client", "mine", &["read"])
        .await?;
    let mine = env
        .wait_ready(&env.apis(), "mine", "True", "Reconciled")
        .await?;
    let mine_id = str_at(&mine, "/status/apiId")?.to_string();
    env.wait_ready(&env.apis(), "adopted", "True", "Reconciled")
        .await?;
    env.wait_ready(&env.grants(), "client-mine", "True", "Reconciled")
        .await?;

    for id in [&mine_id, &adopted_id] {
        env.mgmt(reqwest::Method::DELETE, &format!("/api/v1/apis/{id}"), None)
            .await?;
    }
    let new_id = wait_for("the deleted API to be re-created", TIMEOUT, || async {
        let obj = to_json(&env.apis().get("mine").await?)?;
        let id = obj["status"]["apiId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (s, _, _) = condition(&obj, "Ready");
        ensure!(
            id != mine_id && !id.is_empty() && s == "True",
            "status {}",
            obj["status"]
        );
        let k = env.kinde_api(&id).await?.context("not in Kinde")?;
        ensure!(k["audience"] == "https://mine.example.com", "{k}");
        ensure!(kinde_scopes(&k) == pairs(&[("read", "Read")]), "{k}");
        check_status_scopes(&obj, &k, &["read"])?;
        Ok(Some(id))
    })
    .await?;
    wait_for(
        "the grant to authorize the app on the re-created API",
        TIMEOUT,
        || async {
            let s = env.secret("client-credentials").await?;
            let id = secret_key(&s, "KINDE_CLIENT_ID").context("no client id")?;
            let secret = secret_key(&s, "KINDE_CLIENT_SECRET").context("no secret")?;
            let grant = to_json(&env.grants().get("client-mine").await?)?;
            ensure!(
                grant["status"]["apiId"] == new_id.as_str(),
                "grant status {}",
                grant["status"]
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
    let obj = env
        .wait_ready(&env.apis(), "adopted", "False", "ExternalNotFound")
        .await?;
    ensure!(
        env.kinde_api_by_audience("https://adopted.example.com")
            .await?
            .is_none(),
        "the adopted API was re-created: {}",
        obj["status"]
    );
    Ok(())
}

/// App deleted in Kinde → re-created (new client id in the Secret, grant follows);
/// authorization removed in Kinde → restored; app renamed in Kinde → renamed back.
async fn drift_app_and_authorization(env: Arc<Env>) -> anyhow::Result<()> {
    let audience = "https://drift.example.com";
    env.create_api(
        "drift",
        json!({"audience": audience, "scopes": [{"key": "read", "description": "Read"}]}),
        json!({}),
    )
    .await?;
    env.create_app("client", json!({"displayName": "Client"}), json!({}))
        .await?;
    env.create_grant("client-drift", "client", "drift", &["read"])
        .await?;
    env.wait_ready(&env.grants(), "client-drift", "True", "Reconciled")
        .await?;
    let api = env
        .wait_ready(&env.apis(), "drift", "True", "Reconciled")
        .await?;
    let api_id = str_at(&api, "/status/apiId")?.to_string();
    let app = env
        .wait_ready(&env.apps(), "client", "True", "Reconciled")
        .await?;
    let app_id = str_at(&app, "/status/applicationId")?.to_string();
    let token_works = |env: Arc<Env>| async move {
        let s = env.secret("client-credentials").await?;
        let id = secret_key(&s, "KINDE_CLIENT_ID").context("no client id")?;
        let secret = secret_key(&s, "KINDE_CLIENT_SECRET").context("no secret")?;
        match env.emu.token_claims(&id, &secret, audience).await? {
            Ok(claims) if claims["scp"] == json!(["read"]) => Ok(Some(id)),
            Ok(claims) => Err(anyhow!("token claims {claims}")),
            Err(e) => Err(anyhow!("token refused: {e}")),
        }
    };
    wait_for("a token with the Secret's credentials", TIMEOUT, || {
        token_works(env.clone())
    })
    .await?;

    // Authorization removed in Kinde → restored (with its scopes).
    env.mgmt(
        reqwest::Method::PATCH,
        &format!("/api/v1/apis/{api_id}/applications"),
        Some(json!({"applications": [{"id": app_id, "operation": "delete"}]})),
    )
    .await?;
    let s = env.secret("client-credentials").await?;
    let refused = env
        .emu
        .token_claims(
            &secret_key(&s, "KINDE_CLIENT_ID").unwrap_or_default(),
            &secret_key(&s, "KINDE_CLIENT_SECRET").unwrap_or_default(),
            audience,
        )
        .await?;
    ensure!(
        refused.is_err(),
        "de-authorizing in Kinde did not cut access"
    );
    wait_for("the authorization to be restored", TIMEOUT, || {
        token_works(env.clone())
    })
    .await?;

    // Renamed in Kinde → renamed back.
    env.mgmt(
        reqwest::Method::PATCH,
        &format!("/api/v1/applications/{app_id}"),
        Some(json!({"name": "hijacked"})),
    )
    .await?;
    wait_for("the rename in Kinde to be undone", TIMEOUT, || async {
        let a = env.kinde_app(&app_id).await?.context("Kinde app missing")?;
        if a["name"] == "Client" {
            Ok(Some(()))
        } else {
            Err(anyhow!("Kinde app: {a}"))
        }
    })
    .await?;

    // Deleted in Kinde → re-created; the Secret and the grant follow.
    env.mgmt(
        reqwest::Method::DELETE,
        &format!("/api/v1/applications/{app_id}"),
        None,
    )
    .await?;
    let new_client = wait_for(
        "the re-created app's credentials to work for the API",
        TIMEOUT,
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
    let app = env
        .wait_ready(&env.apps(), "client", "True", "Reconciled")
        .await?;
    ensure!(
        app["status"]["clientId"] == new_client.as_str(),
        "status {} vs Secret client id {new_client}",
        app["status"]
    );
    let kinde = env
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
    for (kind, api) in [
        ("ApiRegistration", env.apis()),
        ("M2MApplication", env.apps()),
        ("ApiGrant", env.grants()),
    ] {
        for o in api.list(&ListParams::default()).await? {
            out.insert(
                format!("{kind}/{}", o.name_any()),
                o.resource_version().unwrap_or_default(),
            );
        }
    }
    for s in env.secrets().list(&ListParams::default()).await? {
        out.insert(
            format!("Secret/{}", s.name_any()),
            s.resource_version().unwrap_or_default(),
        );
    }
    for e in env.ctx.api::<Event>().list(&ListParams::default()).await? {
        out.insert(
            format!("Event/{}", e.name_any()),
            e.resource_version().unwrap_or_default(),
        );
    }
    Ok(out)
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

/// After everything is Ready, a no-op resync makes no Kinde and no Kubernetes writes, and
/// reads what README "Economy" promises. Prints the measured counts.
async fn economy_noop_resync(env: Arc<Env>) -> anyhow::Result<()> {
    let audience = "https://economy.example.com";
    env.create_api(
        "economy",
        json!({"audience": audience, "scopes": [
            {"key": "read", "description": "Read"},
            {"key": "write", "description": "Write"},
        ]}),
        json!({}),
    )
    .await?;
    env.create_app("buyer", json!({}), json!({})).await?;
    env.create_grant("buyer-economy", "buyer", "economy", &["read"])
        .await?;
    env.wait_ready(&env.apis(), "economy", "True", "Reconciled")
        .await?;
    env.wait_ready(&env.grants(), "buyer-economy", "True", "Reconciled")
        .await?;
    env.wait_ready(&env.apps(), "buyer", "True", "Reconciled")
        .await?;
    wait_for("KINDE_AUDIENCE to list the grant", TIMEOUT, || async {
        let s = env.secret("buyer-credentials").await?;
        Ok((secret_key(&s, "KINDE_AUDIENCE").as_deref() == Some(audience)).then_some(()))
    })
    .await?;

    // Someone else adds a key and a label to the Secret: corrected once (the data is the
    // operator's), not on every resync.
    env.secrets()
        .patch(
            "buyer-credentials",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"labels": {"backup": "daily"}},
                "stringData": {"EXTRA_SETTING": "added by another tool"},
            })),
        )
        .await?;
    // The data is the operator's alone: the extra key goes (once), the label stays.
    wait_for(
        "the extra key to be removed from the Secret",
        TIMEOUT,
        || async {
            let s = env.secret("buyer-credentials").await?;
            ensure!(
                s.labels().get("backup").map(String::as_str) == Some("daily"),
                "the other tool's label was removed"
            );
            Ok(secret_key(&s, "EXTRA_SETTING").is_none().then_some(()))
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
    env.create_api(
        "lifecycle",
        json!({"audience": audience, "scopes": [
            {"key": "read", "description": "Read"},
            {"key": "write", "description": "Write"},
        ]}),
        json!({}),
    )
    .await?;
    env.create_app("buyer", json!({}), json!({})).await?;
    env.create_grant("buyer-lifecycle", "buyer", "lifecycle", &["read"])
        .await?;
    for (api, name) in [
        (env.apis(), "lifecycle"),
        (env.grants(), "buyer-lifecycle"),
        (env.apps(), "buyer"),
    ] {
        env.wait_ready(&api, name, "True", "Reconciled").await?;
    }
    wait_for("KINDE_AUDIENCE to list the grant", TIMEOUT, || async {
        let s = env.secret("buyer-credentials").await?;
        Ok((secret_key(&s, "KINDE_AUDIENCE").as_deref() == Some(audience)).then_some(()))
    })
    .await?;
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
    delete(&env.grants(), "buyer-lifecycle").await?;
    env.wait_gone(&env.grants(), "buyer-lifecycle").await?;
    delete(&env.apps(), "buyer").await?;
    delete(&env.apis(), "lifecycle").await?;
    env.wait_gone(&env.apps(), "buyer").await?;
    env.wait_gone(&env.apis(), "lifecycle").await?;
    let end = call_counts(&env.emu).await?;
    // The garbage collector deletes the Secret after its owner is gone.
    wait_for("the Secret to be garbage collected", TIMEOUT, || async {
        Ok(env
            .secrets()
            .get_opt("buyer-credentials")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
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

//! The harness's own promises: what later e2e tests rely on from the control plane.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Resource as _;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use crate::support::{self, Ctx, E2eTest, wait_for};

pub fn tests() -> Vec<E2eTest> {
    vec![
        support::test("harness::namespace_per_test", namespace_per_test),
        support::test("harness::owner_reference_gc", owner_reference_gc),
        support::test("harness::namespace_deletion", namespace_deletion),
        support::test(
            "harness::emulator_issues_management_token",
            emulator_issues_management_token,
        ),
    ]
}

/// Each test gets its own labelled, active namespace; kubectl talks to the same cluster.
async fn namespace_per_test(ctx: Ctx) -> anyhow::Result<()> {
    let ns = Api::<Namespace>::all(ctx.client.clone())
        .get(&ctx.ns)
        .await?;
    let labels = ns.metadata.labels.unwrap_or_default();
    ensure!(
        labels.get(support::E2E_LABEL).map(String::as_str) == Some("harness--namespace-per-test"),
        "unexpected labels on {}: {labels:?}",
        ctx.ns
    );
    let out = ctx
        .kubectl(&[
            "get",
            "namespace",
            &ctx.ns,
            "-o",
            "jsonpath={.status.phase}",
        ])
        .await?
        .success()?;
    ensure!(out == "Active", "namespace phase via kubectl: {out:?}");
    Ok(())
}

/// kube-controller-manager's garbage collector deletes dependents of a deleted owner.
async fn owner_reference_gc(ctx: Ctx) -> anyhow::Result<()> {
    let api = ctx.api::<ConfigMap>();
    let owner = api
        .create(&PostParams::default(), &config_map("owner", None))
        .await?;
    let owner_ref = owner
        .controller_owner_ref(&())
        .context("owner reference of the owner")?;
    api.create(
        &PostParams::default(),
        &config_map("dependent", Some(owner_ref)),
    )
    .await?;
    api.delete("owner", &DeleteParams::background()).await?;
    wait_for(
        "the dependent ConfigMap to be garbage collected",
        Duration::from_secs(60),
        || async { Ok(api.get_opt("dependent").await?.is_none().then_some(())) },
    )
    .await
}

/// Deleting a namespace removes it together with its contents (namespace controller).
async fn namespace_deletion(ctx: Ctx) -> anyhow::Result<()> {
    let extra = ctx.extra_namespace(&[("purpose", "deletion")]).await?;
    let cms = Api::<ConfigMap>::namespaced(ctx.client.clone(), &extra);
    cms.create(&PostParams::default(), &config_map("content", None))
        .await?;
    let namespaces = Api::<Namespace>::all(ctx.client.clone());
    namespaces.delete(&extra, &DeleteParams::default()).await?;
    wait_for(
        &format!("namespace {extra} to be gone"),
        Duration::from_secs(60),
        || async { Ok(namespaces.get_opt(&extra).await?.is_none().then_some(())) },
    )
    .await
}

fn config_map(
    name: &str,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    }
}

/// The emulator subprocess is up and knows the operator's credentials: a client-credentials
/// token for the Management API audience is issued for them and refused for a wrong secret.
async fn emulator_issues_management_token(ctx: Ctx) -> anyhow::Result<()> {
    let emulator = ctx.harness.emulator()?;
    let http = reqwest::Client::new();
    let token = |secret: &'static str| {
        http.post(format!("{}/oauth2/token", emulator.url))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", support::KINDE_CLIENT_ID),
                ("client_secret", secret),
                ("audience", &format!("{}/api", emulator.url)),
            ])
            .send()
    };
    let ok = token(support::KINDE_CLIENT_SECRET).await?;
    let status = ok.status();
    let body: serde_json::Value = ok.json().await?;
    ensure!(
        status == 200 && body["access_token"].is_string(),
        "token request with the harness credentials: {status} {body}"
    );
    let refused = token("wrong-secret").await?.status();
    ensure!(refused.is_client_error(), "wrong secret gave {refused}");
    Ok(())
}

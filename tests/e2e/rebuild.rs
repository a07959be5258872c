//! A cluster rebuilt from the same manifests (new UIDs, no status) against the same Kinde
//! business keeps every customer's credentials, and a second installation on the business
//! keeps its hands off the first's applications (SPEC: identity; README "Moving to a new
//! cluster").

use std::collections::BTreeMap;

use anyhow::ensure;
use k8s_openapi::api::core::v1::Secret;
use kinde_m2m_operator::crd::{
    ADOPT_OR_CREATE, ADOPTION_POLICY_ANNOTATION, ApiGrant, ApiRegistration, M2MApplication,
};
use serde_json::json;

use crate::support::fixtures::{
    ApiFixture as _, AppFixture as _, Apply, GrantFixture as _, Meta as _, api_grant,
    api_registration, m2m_application,
};
use crate::support::{
    self, Ctx, E2eTest, Emulator, WAIT, delete_all, merge_patch, wait_for, wait_gone,
    wait_ready_current,
};

pub fn tests() -> Vec<E2eTest> {
    vec![
        support::test(
            "rebuild::same_manifests_keep_every_credential",
            same_manifests_keep_every_credential,
        ),
        support::test(
            "rebuild::restore_without_status_keeps_every_credential",
            restore_without_status_keeps_every_credential,
        ),
        support::test(
            "rebuild::another_installation_keeps_its_hands_off",
            another_installation_keeps_its_hands_off,
        ),
    ]
}

const CUSTOMERS: [&str; 3] = ["acme", "globex", "initech"];

/// The platform's API and three customers, as they sit in Git.
fn manifests() -> Vec<Box<dyn Apply>> {
    let mut objects: Vec<Box<dyn Apply>> = vec![Box::new(
        api_registration("orders", "https://rebuild.example")
            .with_scopes(&["read", "write"])
            .with_annotation(ADOPTION_POLICY_ANNOTATION, ADOPT_OR_CREATE),
    )];
    for customer in CUSTOMERS {
        objects.push(Box::new(
            m2m_application(customer).with_display_name(&format!("Customer {customer}")),
        ));
        objects.push(Box::new(
            api_grant(customer, customer, "orders").with_scopes(&["read"]),
        ));
    }
    objects
}

async fn apply_manifests(ctx: &Ctx) -> anyhow::Result<()> {
    let objects = manifests();
    let refs: Vec<&dyn Apply> = objects.iter().map(|o| o.as_ref() as &dyn Apply).collect();
    ctx.apply(&refs).await
}

/// Every grant Ready; the customers' credentials, by customer.
async fn converged(ctx: &Ctx) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    wait_ready_current(&ctx.api::<ApiRegistration>(), "orders").await?;
    let mut credentials = BTreeMap::new();
    for customer in CUSTOMERS {
        wait_ready_current(&ctx.api::<ApiGrant>(), customer).await?;
        wait_ready_current(&ctx.api::<M2MApplication>(), customer).await?;
        let c = ctx.credentials(customer).await?;
        credentials.insert(customer.to_owned(), (c.client_id, c.client_secret));
    }
    Ok(credentials)
}

/// The cluster is lost with the operator: every object and Secret is gone from the API
/// server, nothing was deleted in Kinde (the finalizers are taken off by hand, as a fresh
/// etcd would have none).
async fn lose_the_cluster(ctx: &Ctx) -> anyhow::Result<()> {
    let names: Vec<&str> = CUSTOMERS.to_vec();
    strip_and_delete(&ctx.api::<ApiGrant>(), &names).await?;
    strip_and_delete(&ctx.api::<M2MApplication>(), &names).await?;
    strip_and_delete(&ctx.api::<ApiRegistration>(), &["orders"]).await?;
    for customer in CUSTOMERS {
        delete_secret(ctx, &format!("{customer}-credentials")).await?;
    }
    Ok(())
}

/// Deletes a Secret (garbage collection may have taken it already) and waits until it is gone.
async fn delete_secret(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let secrets = ctx.api::<Secret>();
    let _ = secrets.delete(name, &Default::default()).await;
    wait_for(&format!("Secret {name} to be gone"), WAIT, || async {
        Ok(secrets.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

async fn strip_and_delete<K>(api: &kube::Api<K>, names: &[&str]) -> anyhow::Result<()>
where
    K: support::Kind,
{
    for name in names {
        merge_patch(api, name, json!({"metadata": {"finalizers": null}})).await?;
    }
    delete_all(api, names).await?;
    for name in names {
        wait_gone(api, name).await?;
    }
    Ok(())
}

fn kinde_counts(state: &serde_json::Value) -> (usize, usize) {
    (
        support::kinde_apps_of(state).len(),
        support::kinde_apis_of(state).len(),
    )
}

/// (1) and (2) of the identity issue: the same manifests on a new cluster, the same Kinde
/// business: 0 new Kinde objects, every customer's client ID and secret unchanged, the API
/// taken back (adopt-or-create) instead of `AudienceInUse`.
async fn same_manifests_keep_every_credential(ctx: Ctx) -> anyhow::Result<()> {
    let adoption = ["--adoption-namespace", ctx.ns.as_str()];
    let (emu, op) = ctx.own_emulator_and_operator(&[], "30s", &adoption).await?;
    apply_manifests(&ctx).await?;
    let before = op.with_log(converged(&ctx).await)?;
    let api_id = ctx
        .api::<ApiRegistration>()
        .get("orders")
        .await?
        .status
        .and_then(|s| s.api_id);
    let kinde_before = kinde_counts(&emu.state().await?);
    drop(op);

    lose_the_cluster(&ctx).await?;
    apply_manifests(&ctx).await?;
    let op = ctx.run_operator(&emu, &[], "30s", &adoption)?;
    let after = op.with_log(converged(&ctx).await)?;

    let kinde_after = kinde_counts(&emu.state().await?);
    ensure!(
        kinde_after == kinde_before,
        "Kinde held {kinde_before:?} (applications, APIs) before the rebuild and {kinde_after:?} after"
    );
    let kept = CUSTOMERS
        .iter()
        .filter(|c| before.get(**c) == after.get(**c))
        .count();
    println!(
        "rebuild: Kinde (applications, APIs) {kinde_before:?} -> {kinde_after:?}; {kept} of {} customers kept their client ID and secret",
        CUSTOMERS.len()
    );
    ensure!(
        kept == CUSTOMERS.len(),
        "customers' credentials changed across the rebuild"
    );
    let api_after = ctx
        .api::<ApiRegistration>()
        .get("orders")
        .await?
        .status
        .and_then(|s| s.api_id);
    ensure!(
        api_after == api_id,
        "the API is {api_after:?}, was {api_id:?}"
    );
    Ok(())
}

/// What a backup tool (Velero's default) keeps of an object: everything but its status and
/// what the API server assigns; owner references stay, pointing at UIDs that will be gone.
fn as_backed_up<K: serde::Serialize + serde::de::DeserializeOwned>(obj: &K) -> anyhow::Result<K> {
    let mut value = serde_json::to_value(obj)?;
    if let Some(o) = value.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = value["metadata"].as_object_mut() {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
            "finalizers",
        ] {
            meta.remove(field);
        }
    }
    Ok(serde_json::from_value(value)?)
}

async fn back_up<K>(api: &kube::Api<K>, names: &[String]) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let mut kept = Vec::new();
    for name in names {
        kept.push(as_backed_up(&api.get(name).await?)?);
    }
    Ok(kept)
}

async fn restore<K>(api: &kube::Api<K>, objects: &[K]) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    for object in objects {
        api.create(&Default::default(), object).await?;
    }
    Ok(())
}

/// (2) A restore from a backup that dropped `status` (and the UIDs with it), Secrets
/// included and restored first, as Velero orders them: 0 new Kinde objects, every
/// customer's credentials unchanged, every Secret owned by the restored M2MApplication
/// (taken back, or re-created by the operator once the garbage collector removed it for
/// its stale owner; both happen, depending on who gets there first).
async fn restore_without_status_keeps_every_credential(ctx: Ctx) -> anyhow::Result<()> {
    let adoption = ["--adoption-namespace", ctx.ns.as_str()];
    let (emu, op) = ctx.own_emulator_and_operator(&[], "30s", &adoption).await?;
    apply_manifests(&ctx).await?;
    let before = op.with_log(converged(&ctx).await)?;
    let kinde_before = kinde_counts(&emu.state().await?);
    let customers: Vec<String> = CUSTOMERS.iter().map(|c| (*c).to_owned()).collect();
    let secret_names: Vec<String> = CUSTOMERS
        .iter()
        .map(|c| format!("{c}-credentials"))
        .collect();
    let secrets = back_up(&ctx.api::<Secret>(), &secret_names).await?;
    let apis = back_up(&ctx.api::<ApiRegistration>(), &["orders".to_owned()]).await?;
    let apps = back_up(&ctx.api::<M2MApplication>(), &customers).await?;
    let grants = back_up(&ctx.api::<ApiGrant>(), &customers).await?;
    drop(op);

    lose_the_cluster(&ctx).await?;
    restore(&ctx.api::<Secret>(), &secrets).await?;
    restore(&ctx.api::<ApiRegistration>(), &apis).await?;
    restore(&ctx.api::<M2MApplication>(), &apps).await?;
    restore(&ctx.api::<ApiGrant>(), &grants).await?;
    let op = ctx.run_operator(&emu, &[], "30s", &adoption)?;
    let after = op.with_log(converged(&ctx).await)?;

    let kinde_after = kinde_counts(&emu.state().await?);
    let kept = CUSTOMERS
        .iter()
        .filter(|c| before.get(**c) == after.get(**c))
        .count();
    let mut taken_back = 0;
    for customer in CUSTOMERS {
        let app_uid = ctx
            .api::<M2MApplication>()
            .get(customer)
            .await?
            .metadata
            .uid;
        let secret = ctx
            .api::<Secret>()
            .get(&format!("{customer}-credentials"))
            .await?;
        let controllers: Vec<_> = secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.controller == Some(true))
            .map(|r| Some(r.uid.clone()))
            .collect();
        ensure!(
            controllers == [app_uid.clone()],
            "Secret {customer}-credentials is controlled by {controllers:?}, not the restored M2MApplication {app_uid:?}"
        );
        let reasons =
            support::event_reasons::<M2MApplication>(&ctx.client, &ctx.ns, customer).await?;
        if reasons.iter().any(|r| r == "SecretTakenBack") {
            taken_back += 1;
        }
    }
    println!(
        "restore: Kinde (applications, APIs) {kinde_before:?} -> {kinde_after:?}; {kept} of {} customers kept their client ID and secret; {taken_back} restored Secrets taken back, the others re-created",
        CUSTOMERS.len()
    );
    ensure!(
        kinde_after == kinde_before,
        "Kinde held {kinde_before:?} (applications, APIs) before the restore and {kinde_after:?} after"
    );
    ensure!(
        kept == CUSTOMERS.len(),
        "customers' credentials changed across the restore"
    );
    Ok(())
}

/// (2) A second installation (another `--installation-id`) on the same business, with an
/// object of the same namespace and name, creates its own application and touches none of
/// the first's.
async fn another_installation_keeps_its_hands_off(ctx: Ctx) -> anyhow::Result<()> {
    ctx.harness.ensure_crds().await?;
    let emu: Emulator = ctx.own_emulator()?;
    let blue = ctx.run_operator(&emu, &[], "30s", &["--installation-id", "blue"])?;
    let app = m2m_application("shop").with_display_name("Shop");
    ctx.apply(&[&app]).await?;
    blue.with_log(wait_ready_current(&ctx.api::<M2MApplication>(), "shop").await)?;
    let first = ctx.credentials("shop").await?;
    drop(blue);
    let names = ["shop"];
    strip_and_delete(&ctx.api::<M2MApplication>(), &names).await?;
    delete_secret(&ctx, "shop-credentials").await?;
    let apps_before = emu.kinde_apps().await?;

    let green = ctx.run_operator(&emu, &[], "30s", &["--installation-id", "green"])?;
    ctx.apply(&[&app]).await?;
    green.with_log(wait_ready_current(&ctx.api::<M2MApplication>(), "shop").await)?;
    let second = ctx.credentials("shop").await?;
    ensure!(
        second.client_id != first.client_id,
        "installation green took installation blue's application {}",
        first.client_id
    );
    let apps_after = emu.kinde_apps().await?;
    ensure!(
        apps_after.len() == apps_before.len() + 1,
        "expected one new Kinde application, found {} before and {} after",
        apps_before.len(),
        apps_after.len()
    );
    let blue_app = apps_after
        .iter()
        .find(|a| a["id"].as_str() == Some(first.client_id.as_str()));
    // Still there, still named so, still blue's (its secret is not in the emulator's
    // state view; nothing could have changed it but a rotation, which only blue would run).
    let blue_owner = format!("kmo/blue/{}/shop", ctx.ns);
    ensure!(
        blue_app.is_some_and(
            |a| a["name"] == "Shop" && a["properties"]["kmo_owner"] == blue_owner.as_str()
        ),
        "installation blue's application changed: {blue_app:?}"
    );
    let green_app = apps_after
        .iter()
        .find(|a| a["id"].as_str() == Some(second.client_id.as_str()));
    let green_owner = format!("kmo/green/{}/shop", ctx.ns);
    ensure!(
        green_app.is_some_and(|a| a["properties"]["kmo_owner"] == green_owner.as_str()),
        "installation green's application does not carry its owner key: {green_app:?}"
    );
    Ok(())
}

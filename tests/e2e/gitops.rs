//! `export` and `plan` against a business made "in the dashboard" (issue: GitOps-grade
//! lifecycle, items 6-7): export writes adoptable manifests, applying them keeps every
//! credential and writes nothing to Kinde beyond scope grants, `plan` then says no
//! changes; `plan` on manifests Kinde has never seen says what it would create; bad input
//! names the file and field and exits 1. Neither command writes to Kinde.

use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use kinde_m2m_operator::crd::{ApiGrant, ApiRegistration, M2MApplication};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    self, Ctx, E2eTest, Emulator, KINDE_CLIENT_ID, KINDE_CLIENT_SECRET, wait_ready_current,
};

pub fn tests() -> Vec<E2eTest> {
    vec![support::test(
        "gitops::export_apply_then_plan_says_no_changes",
        export_apply_then_plan_says_no_changes,
    )]
}

/// `kinde-m2m-operator ARGS` pointed at `emu` (no cluster); `(exit code, stdout, stderr)`.
async fn cli(emu: &Emulator, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = tokio::process::Command::new(support::operator_bin())
        .args(args)
        .env("KINDE_M2M_DOMAIN", &emu.url)
        .env("KINDE_M2M_CLIENT_ID", KINDE_CLIENT_ID)
        .env("KINDE_M2M_CLIENT_SECRET", KINDE_CLIENT_SECRET)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Writes per operation so far.
async fn writes(emu: &Emulator) -> anyhow::Result<BTreeMap<String, u64>> {
    let calls = emu.calls().await?;
    Ok(calls
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(op, v)| {
                    v["writes"]
                        .as_u64()
                        .filter(|w| *w > 0)
                        .map(|w| (op.clone(), w))
                })
                .collect()
        })
        .unwrap_or_default())
}

fn id_of(v: &Value, field: &str) -> anyhow::Result<String> {
    v[field]["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {field}.id in {v}"))
}

/// What a team clicked together in the dashboard: an API with two scopes, two M2M
/// applications authorized for it, the first granted `read`. Returns the applications'
/// (name, client id, client secret).
async fn dashboard(emu: &Emulator, suffix: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    let api = emu
        .mgmt(Method::POST, "/api/v1/apis", Some(json!({"name": "Orders API", "audience": format!("https://orders-{suffix}.example")})))
        .await?;
    let api_id = id_of(&api, "api")?;
    let mut scope_ids = Vec::new();
    for (key, description) in [("read", "Read orders"), ("write", "Write orders")] {
        let scope = emu
            .mgmt(
                Method::POST,
                &format!("/api/v1/apis/{api_id}/scopes"),
                Some(json!({"key": key, "description": description})),
            )
            .await?;
        scope_ids.push(id_of(&scope, "scope")?);
    }
    let mut apps = Vec::new();
    for name in [format!("Acme {suffix}"), format!("Globex {suffix}")] {
        let app = emu
            .mgmt(
                Method::POST,
                "/api/v1/applications",
                Some(json!({"name": name, "type": "m2m"})),
            )
            .await?;
        let a = &app["application"];
        apps.push((
            a["id"].as_str().context("id")?.to_owned(),
            a["client_id"].as_str().context("client_id")?.to_owned(),
            a["client_secret"]
                .as_str()
                .context("client_secret")?
                .to_owned(),
        ));
    }
    let entries: Vec<Value> = apps.iter().map(|(id, _, _)| json!({"id": id})).collect();
    emu.mgmt(
        Method::PATCH,
        &format!("/api/v1/apis/{api_id}/applications"),
        Some(json!({"applications": entries})),
    )
    .await?;
    emu.mgmt(
        Method::POST,
        &format!(
            "/api/v1/apis/{api_id}/applications/{}/scopes/{}",
            apps[0].0, scope_ids[0]
        ),
        None,
    )
    .await?;
    Ok(apps)
}

async fn export_apply_then_plan_says_no_changes(ctx: Ctx) -> anyhow::Result<()> {
    ctx.harness.ensure_crds().await?;
    let emu = ctx.own_emulator()?;
    // The test namespace's random tail: the exported namespaces are named after the
    // applications, and must not meet another test's.
    let suffix = ctx.ns.rsplit('-').next().unwrap_or_default().to_owned();
    let platform = ctx.ns.clone();
    let apps = dashboard(&emu, &suffix).await?;
    let before = writes(&emu).await?;

    let out_dir = ctx.harness.run_dir.join(format!("export-{suffix}"));
    let out = out_dir.to_str().context("path")?;
    let (code, stdout, stderr) = cli(
        &emu,
        &["export", "--out", out, "--platform-namespace", &platform],
    )
    .await?;
    ensure!(code == 0, "export failed ({code}): {stdout}\n{stderr}");
    let mut exported = String::new();
    for file in support::yaml_files(&out_dir)? {
        exported.push_str(&std::fs::read_to_string(&file)?);
    }
    for (_, _, secret) in &apps {
        ensure!(
            !exported.contains(secret.as_str())
                && !stdout.contains(secret.as_str())
                && !stderr.contains(secret.as_str()),
            "export showed a client secret"
        );
    }
    let customers: Vec<String> = ["acme", "globex"]
        .iter()
        .map(|c| format!("{c}-{suffix}"))
        .collect();
    let grant_file = out_dir.join(format!(
        "customers/{0}/api-grant-orders-api.yaml",
        customers[0]
    ));
    let grant_text = std::fs::read_to_string(&grant_file)
        .with_context(|| format!("{}", grant_file.display()))?;
    ensure!(
        grant_text.starts_with("# Kinde does not report which scopes")
            && grant_text.contains("- read"),
        "the exported grant does not say where its scopes come from:\n{grant_text}"
    );

    // Plan before applying: everything is matched by id, and the scopes are those held.
    let (code, stdout, stderr) = cli(&emu, &["plan", "-f", out]).await?;
    ensure!(
        code == 0,
        "plan on the export exits {code}, not 0:\n{stdout}\n{stderr}"
    );
    ensure!(
        writes(&emu).await? == before,
        "export or plan wrote to Kinde"
    );

    // Apply with kubectl, as a team would; the operator may adopt in the exported namespaces.
    let applied = support::kubectl(ctx.harness, &["apply", "-k", out], None)
        .await?
        .success()?;
    let selector = format!(
        "{}={}",
        kinde_m2m_operator::export::ADOPTION_LABEL.0,
        kinde_m2m_operator::export::ADOPTION_LABEL.1
    );
    let extra: Vec<&str> = customers.iter().map(String::as_str).collect();
    let op = ctx.run_operator(
        &emu,
        &extra,
        "30s",
        &["--adoption-namespace-selector", &selector],
    )?;
    op.with_log(wait_ready_current(&ctx.api::<ApiRegistration>(), "orders-api").await)
        .with_context(|| format!("kubectl apply said:\n{applied}"))?;
    for (customer, (_, client_id, secret)) in customers.iter().zip(&apps) {
        op.with_log(wait_ready_current(&ctx.api_in::<M2MApplication>(customer), customer).await)?;
        op.with_log(
            wait_ready_current(
                &ctx.api_in::<ApiGrant>(customer),
                &format!("{customer}-orders-api"),
            )
            .await,
        )?;
        let got =
            support::credentials(&ctx.api_in(customer), &format!("{customer}-credentials")).await?;
        ensure!(
            got.client_id == *client_id && got.client_secret == *secret,
            "customer {customer} got other credentials than its dashboard application's"
        );
    }
    let after = writes(&emu).await?;
    let mut added: BTreeMap<String, u64> = BTreeMap::new();
    for (op_name, n) in &after {
        let extra = n - before.get(op_name).copied().unwrap_or(0);
        if extra > 0 {
            added.insert(op_name.clone(), extra);
        }
    }
    println!("gitops: Kinde writes from export, plan, apply and convergence: {added:?}");
    ensure!(
        added.keys().all(|op| op == "addAPIApplicationScope"),
        "writes beyond scope grants: {added:?}"
    );

    let (code, stdout, stderr) = cli(&emu, &["plan", "-f", out]).await?;
    ensure!(
        code == 0 && stdout.contains("No changes"),
        "plan after convergence exits {code}:\n{stdout}\n{stderr}"
    );

    // Manifests Kinde has never seen: exit 2, with what would be created.
    let fresh = out_dir.join("fresh.yaml");
    std::fs::write(
        &fresh,
        format!(
            "apiVersion: m2m.kinde-operator.io/v1alpha1\nkind: M2MApplication\nmetadata: {{name: initech, namespace: {platform}}}\nspec: {{displayName: Initech}}\n"
        ),
    )?;
    let (code, stdout, _) = cli(&emu, &["plan", "-f", fresh.to_str().context("path")?]).await?;
    ensure!(
        code == 2 && stdout.contains("+ create Kinde M2M application \"Initech\""),
        "plan on a new object exits {code}:\n{stdout}"
    );
    // Bad input: the file and the field are named, exit 1.
    let bad = out_dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: m2m.kinde-operator.io/v1alpha1\nkind: ApiGrant\nmetadata: {name: g}\nspec: {scopes: read}\n",
    )?;
    let (code, _, stderr) = cli(&emu, &["plan", "-f", bad.to_str().context("path")?]).await?;
    ensure!(
        code == 1 && stderr.contains("bad.yaml (document 1): g: field spec"),
        "plan on a bad file exits {code}: {stderr}"
    );
    ensure!(writes(&emu).await? == after, "plan wrote to Kinde");
    Ok(())
}

//! Two replicas electing a leader on one Lease: the standby takes over from a leader that
//! dies, and a leader cut off from the API server (its connection frozen by a proxy that
//! keeps the sockets open, so nothing but its own timers can tell) steps down by itself
//! before the standby takes over, so one M2MApplication still makes one Kinde application.
//!
//! Nothing here measures time: the bounds of the waits only stop a test that hangs.

use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kinde_m2m_operator::crd::{ApiRegistration, M2MApplication};
use serde_json::json;

use crate::support::fixtures::{AppFixture as _, api_registration, m2m_application};
use crate::support::proxy::{FreezableProxy, kubeconfig_server, kubeconfig_via};
use crate::support::wait_ready_current;
use crate::support::{self, Ctx, E2eTest, Emulator, Operator, wait_for};

pub fn tests() -> Vec<E2eTest> {
    vec![
        support::test("failover::leader_killed", leader_killed),
        support::test(
            "failover::frozen_leader_steps_down",
            frozen_leader_steps_down,
        ),
    ]
}

const LEASE: &str = "failover";
/// Generous bounds on waiting (a takeover needs the 15 s lease duration to pass).
const WAIT: Duration = Duration::from_secs(90);

/// The exit status of a replica that lost leadership (`run::EXIT_LOST_LEADERSHIP`).
const EXIT_LOST_LEADERSHIP: i32 = kinde_m2m_operator::run::EXIT_LOST_LEADERSHIP;

/// A candidate whose identity starts with `who` (its `POD_NAME`).
fn candidate(
    ctx: &Ctx,
    emu: &Emulator,
    who: &str,
    kubeconfig: Option<&std::path::Path>,
) -> anyhow::Result<Operator> {
    // A long Kinde timeout: a call the emulator holds must stay in flight, not fail.
    ctx.run_operator_electing(
        emu,
        LEASE,
        kubeconfig,
        &[("POD_NAME", who)],
        &["--kinde-timeout", "120s"],
    )
}

async fn holder(ctx: &Ctx) -> anyhow::Result<Option<String>> {
    Ok(ctx
        .api::<Lease>()
        .get_opt(LEASE)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

/// Waits until the Lease is held by the candidate started as `who`.
async fn wait_leader(ctx: &Ctx, who: &str, op: &Operator) -> anyhow::Result<()> {
    let prefix = format!("{who}-");
    let r = wait_for(&format!("{who} to hold the Lease"), WAIT, || async {
        let h = holder(ctx).await?;
        Ok(h.filter(|h| h.starts_with(&prefix)).map(drop))
    })
    .await;
    op.with_log(r)
}

/// Waits until `op` reports that it waits for leadership (it is up and a standby).
async fn wait_standby(op: &Operator) -> anyhow::Result<()> {
    let r = wait_for("the standby to wait for leadership", WAIT, || async {
        Ok(op
            .log_text()
            .contains("waiting for leadership")
            .then_some(()))
    })
    .await;
    op.with_log(r)
}

async fn create_app(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    ctx.apply(&[&m2m_application(name).with_display_name(&format!("Failover {name}"))])
        .await
}

/// Waits until `name` is Ready with its Kinde id in status and its Secret written;
/// returns the id.
async fn converged(ctx: &Ctx, name: &str, op: &Operator) -> anyhow::Result<String> {
    let apps = ctx.api::<M2MApplication>();
    let secrets = ctx.api::<Secret>();
    let r = wait_for(&format!("M2MApplication {name} Ready"), WAIT, || async {
        let app = apps.get(name).await?;
        let generation = app.metadata.generation;
        let Some(status) = app.status else {
            return Ok(None);
        };
        let ready = kinde_m2m_operator::conditions::is_ready_for(&status.conditions, generation);
        let (true, Some(id)) = (ready, status.application_id) else {
            return Ok(None);
        };
        let secret = secrets.get_opt(&format!("{name}-credentials")).await?;
        Ok(secret.map(|_| id))
    })
    .await;
    op.with_log(r)
}

/// Exactly one Kinde application per object, each the one its status names.
async fn one_app_each(emu: &Emulator, ids: &[&str]) -> anyhow::Result<()> {
    let apps = emu.kinde_apps().await?;
    let mut found: Vec<&str> = apps.iter().filter_map(|a| a["id"].as_str()).collect();
    found.sort_unstable();
    let mut want = ids.to_vec();
    want.sort_unstable();
    ensure!(
        found == want,
        "expected exactly the Kinde applications {want:?} (one per M2MApplication), found {apps:#?}"
    );
    Ok(())
}

/// (a) The leader is SIGKILLed: the standby takes the Lease once it expires, keeps what the
/// old leader made (no second Kinde application) and converges new objects.
async fn leader_killed(ctx: Ctx) -> anyhow::Result<()> {
    ctx.harness.ensure_crds().await?;
    let emu = ctx.own_emulator()?;
    let mut a = candidate(&ctx, &emu, "op-a", None)?;
    wait_leader(&ctx, "op-a", &a).await?;
    let b = candidate(&ctx, &emu, "op-b", None)?;
    wait_standby(&b).await?;

    create_app(&ctx, "before").await?;
    let before = converged(&ctx, "before", &a).await?;
    ensure!(
        !b.log_text().contains("became leader"),
        "the standby acted as leader while the leader was alive:\n{}",
        b.log_tail(40)
    );

    a.kill();
    wait_leader(&ctx, "op-b", &b).await?;
    create_app(&ctx, "after").await?;
    let after = converged(&ctx, "after", &b).await?;
    // The new leader reconciled "before" as well on its start: adopted, not duplicated.
    let still = converged(&ctx, "before", &b).await?;
    ensure!(
        still == before,
        "the Kinde id of `before` changed: {before} -> {still}"
    );
    one_app_each(&emu, &[&before, &after]).await
}

/// (b) The leader's API-server connection freezes (a proxy stops forwarding and keeps the
/// sockets open) while it is inside the reconcile of a new M2MApplication, its Kinde list
/// held by the emulator. It must exit by itself (its renew deadline passed) before the
/// standby, which counts the lease duration from its own sighting of the last renewal,
/// takes over; the standby then creates the application, and Kinde has exactly one.
/// Without fencing, the frozen leader stays up and creates a second one once its list
/// returns.
async fn frozen_leader_steps_down(ctx: Ctx) -> anyhow::Result<()> {
    ctx.harness.ensure_crds().await?;
    let emu = ctx.own_emulator()?;
    let kubeconfig = &ctx.harness.control_plane.kubeconfig;
    let proxy = FreezableProxy::start(kubeconfig_server(kubeconfig)?).await?;
    let proxied = ctx
        .harness
        .run_dir
        .join(format!("kubeconfig-{}-proxied", ctx.ns));
    kubeconfig_via(kubeconfig, proxy.addr, &proxied)?;

    let mut a = candidate(&ctx, &emu, "op-a", Some(&proxied))?;
    wait_leader(&ctx, "op-a", &a).await?;
    let b = candidate(&ctx, &emu, "op-b", None)?;
    wait_standby(&b).await?;
    // The leader works through the proxy (an API: no application is listed yet).
    ctx.apply(&[&api_registration("warmup", "https://failover.example")])
        .await?;
    let r = wait_ready_current(&ctx.api::<ApiRegistration>(), "warmup").await;
    a.with_log(r)?;

    // The leader's first application list (its directory of marked applications, read
    // before its first create) is held 30 s in the emulator; then the leader's link
    // freezes while it waits for the answer.
    let lists = emu.call_count("getApplications").await?;
    emu.fault(json!({"operation": "getApplications", "latency_ms": 30_000}))
        .await?;
    create_app(&ctx, "raced").await?;
    let r = emu.wait_calls("getApplications", lists + 1).await;
    a.with_log(r)?;
    proxy.freeze();

    let r = wait_for("the frozen leader to exit", WAIT, || {
        let status = a.exit_status();
        async move { Ok(status) }
    })
    .await;
    let status = a.with_log(r)?;
    ensure!(
        status.code() == Some(EXIT_LOST_LEADERSHIP),
        "the frozen leader ended with {status}, not as a leader that stepped down:\n{}",
        a.log_tail(40)
    );
    ensure!(
        a.log_text().contains("stepping down"),
        "the frozen leader did not say why it exited:\n{}",
        a.log_tail(40)
    );

    wait_leader(&ctx, "op-b", &b).await?;
    let raced = converged(&ctx, "raced", &b).await?;
    // The old leader is gone, so nothing can add an application after this count.
    one_app_each(&emu, &[&raced])
        .await
        .map_err(|e| anyhow!("{e:#}\nfrozen leader:\n{}", a.log_tail(60)))
        .context("one Kinde application per M2MApplication after the failover")
}

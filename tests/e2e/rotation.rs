//! Credential rotation end to end (SPEC section 4): the real operator binary on the real
//! control plane, each test with its own Kinde emulator. What rotation promises is checked
//! where it matters: the token endpoint, with the credentials read from the Secret.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kinde_m2m_operator::crd::{
    ApiGrant, DeletionPolicy, M2MApplication, M2MApplicationStatus, PAUSED_ANNOTATION,
    ROTATE_REQUESTED_AT_ANNOTATION,
};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use crate::support::fixtures::{
    ApiFixture as _, AppFixture as _, GrantFixture as _, api_grant, api_registration,
    m2m_application,
};
use crate::support::{
    self, Credentials, Ctx, E2eTest, Emulator, Kind as _, KindStatus as _, Operator,
    POKE_ANNOTATION, annotate, event_reasons, metric, poke, wait_condition, wait_events, wait_for,
    wait_gone,
};

pub fn tests() -> Vec<E2eTest> {
    vec![
        support::test("rotation::annotation_rotates_once", annotation_rotates_once),
        support::test("rotation::cli_rotate", cli_rotate),
        support::test("rotation::scheduled", scheduled),
        support::test("rotation::grants_during_overlap", grants_during_overlap),
        support::test(
            "rotation::grant_deleted_before_it_saw_rotation",
            grant_deleted_before_it_saw_rotation,
        ),
        support::test("rotation::delete_during_overlap", delete_during_overlap),
        support::test(
            "rotation::revoke_batched_with_gone_app",
            revoke_batched_with_gone_app,
        ),
        support::test("rotation::second_request_queued", second_request_queued),
        support::test("rotation::pause_and_resume", pause_and_resume),
        support::test(
            "rotation::crash_after_successor_create",
            crash_after_successor_create,
        ),
        support::test(
            "rotation::crash_after_secret_switch",
            crash_after_secret_switch,
        ),
        support::test(
            "rotation::crash_after_status_write",
            crash_after_status_write,
        ),
        support::test("rotation::crash_during_retirement", crash_during_retirement),
        support::test("rotation::lost_create_response", lost_create_response),
        support::test("rotation::zero_downtime", zero_downtime),
        support::test("rotation::zero_overlap_cuts_old", zero_overlap_cuts_old),
    ]
}

const WAIT: Duration = Duration::from_secs(90);
const AUDIENCE: &str = "https://orders.example.com";
const BILLING: &str = "https://billing.example.com";
const APP_CRD: &str = "m2mapplications.m2m.kinde-operator.io";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// An operator with `/metrics` on a port we know.
struct Running {
    op: Operator,
    metrics: String,
}

/// Starts an operator on `emulator` for the test's namespace, `/metrics` on a free port.
fn operator(ctx: &Ctx, emulator: &Emulator) -> anyhow::Result<Running> {
    let addr = format!("127.0.0.1:{}", support::free_port()?);
    // Scheduled rotations here run every few seconds (`scheduled`): below the 1h floor an
    // installation enforces by default.
    let op = ctx.run_operator_listening(
        emulator,
        &addr,
        &[],
        "10m",
        &["--min-rotation-interval", "10s"],
    )?;
    Ok(Running {
        op,
        metrics: format!("http://{addr}/metrics"),
    })
}

async fn start(ctx: &Ctx) -> anyhow::Result<(Emulator, Running)> {
    ctx.harness.ensure_crds().await?;
    let emulator = ctx.own_emulator()?;
    let running = operator(ctx, &emulator)?;
    Ok((emulator, running))
}

async fn reconciles(r: &Running) -> anyhow::Result<f64> {
    Ok(metric(
        &r.metrics,
        "kinde_m2m_operator_reconciles_total",
        &[("kind", "M2MApplication")],
    )
    .await?
    .unwrap_or(0.0))
}

/// Waits until the operator has reconciled an M2MApplication more than `before` times: the
/// barrier before checking that something did *not* happen.
async fn wait_reconciled(r: &Running, before: f64) -> anyhow::Result<()> {
    wait_for("another M2MApplication reconcile", WAIT, || async {
        Ok((reconciles(r).await? > before).then_some(()))
    })
    .await
}

/// An M2MApplication displayed under its own name, rotated with `overlap`.
fn rotating(name: &str, overlap: &str) -> M2MApplication {
    m2m_application(name)
        .with_display_name(name)
        .with_overlap(overlap)
}

/// A grant of `scopes` on `api` to `app`.
fn grant_for(name: &str, app: &str, api: &str, scopes: &[&str]) -> ApiGrant {
    api_grant(name, app, api).with_scopes(scopes)
}

async fn status(ctx: &Ctx, app: &str) -> anyhow::Result<M2MApplicationStatus> {
    Ok(ctx
        .api::<M2MApplication>()
        .get(app)
        .await?
        .status_or_default())
}

/// The APIs (audience -> scope keys) an application is authorized on, per the emulator.
async fn kinde_grants(
    emulator: &Emulator,
    app_id: &str,
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let app = emulator
        .kinde_app(app_id)
        .await?
        .with_context(|| format!("no application {app_id} in the emulator"))?;
    Ok(app["apis"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let mut scopes = support::strings(&a["scopes"]);
            scopes.sort();
            (
                a["audience"].as_str().unwrap_or_default().to_owned(),
                scopes,
            )
        })
        .collect())
}

/// API `orders` (read/write), application `app`, a grant of both scopes; waits until the
/// Secret's credentials get a token with both. Returns them.
async fn setup(ctx: &Ctx, emulator: &Emulator, app: M2MApplication) -> anyhow::Result<Credentials> {
    let name = app.metadata.name.clone().unwrap_or_default();
    ctx.apply(&[
        &api_registration("orders", AUDIENCE).with_scopes(&["read:orders", "write:orders"]),
        &app,
        &grant_for(
            &format!("{name}-orders"),
            &name,
            "orders",
            &["read:orders", "write:orders"],
        ),
    ])
    .await?;
    let c = wait_for(
        &format!("the Secret of {name} with KINDE_AUDIENCE"),
        WAIT,
        || async {
            let c = ctx.credentials(&name).await?;
            Ok((c.audience == AUDIENCE).then_some(c))
        },
    )
    .await?;
    emulator
        .wait_scp(&c, AUDIENCE, &["read:orders", "write:orders"])
        .await?;
    wait_for(&format!("{name} Ready"), WAIT, || async {
        Ok(status(ctx, &name).await?.is_ready().then_some(()))
    })
    .await?;
    Ok(c)
}

async fn request_rotation(ctx: &Ctx, app: &str, value: &str) -> anyhow::Result<()> {
    annotate(
        &ctx.api::<M2MApplication>(),
        app,
        &[(ROTATE_REQUESTED_AT_ANNOTATION, Some(value))],
    )
    .await
}

/// Waits until `status.lastHandledRotateRequest` is `value` and the app is Ready.
async fn wait_handled(ctx: &Ctx, app: &str, value: &str) -> anyhow::Result<M2MApplicationStatus> {
    wait_for(
        &format!("{app} to handle rotation request {value:?}"),
        WAIT,
        || async {
            let s = status(ctx, app).await?;
            if s.last_handled_rotate_request.as_deref() == Some(value) && s.is_ready() {
                Ok(Some(s))
            } else {
                Err(anyhow!(
                    "lastHandledRotateRequest {:?}, conditions {:?}",
                    s.last_handled_rotate_request,
                    s.conditions
                ))
            }
        },
    )
    .await
}

/// Waits until no predecessor is left: `status.retiring` empty and the emulator holds
/// exactly one application for this object, the current one, under its display name. Returns
/// the final status.
async fn wait_retired(
    ctx: &Ctx,
    emulator: &Emulator,
    app: &str,
    others: usize,
) -> anyhow::Result<M2MApplicationStatus> {
    wait_for(
        &format!("{app}'s predecessors to be retired"),
        WAIT,
        || async {
            let s = status(ctx, app).await?;
            let apps = emulator.kinde_app_names().await?;
            let current = s.application_id.clone().unwrap_or_default();
            let done = s.retiring.is_empty()
                && apps.len() == 1 + others
                && apps.get(&current).map(String::as_str) == Some(app);
            if done {
                Ok(Some(s))
            } else {
                Err(anyhow!(
                    "retiring {:?}, current {current}, Kinde apps {apps:?}",
                    s.retiring
                ))
            }
        },
    )
    .await
}

/// Waits for Events with `reasons` about M2MApplication `app`.
async fn wait_app_events(ctx: &Ctx, app: &str, reasons: &[&str]) -> anyhow::Result<()> {
    wait_events::<M2MApplication>(&ctx.client, &ctx.ns, app, reasons).await
}

/// Per-operation call counts (`calls`) between two `/_emulator/calls` snapshots.
fn call_delta(before: &Value, after: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Some(m) = after.as_object() {
        for (op, v) in m {
            let n = v["calls"].as_u64().unwrap_or(0) - before[op]["calls"].as_u64().unwrap_or(0);
            if n > 0 && op != "token" {
                out.insert(op.clone(), n);
            }
        }
    }
    out
}

fn writes_of(calls: &Value, op: &str) -> u64 {
    calls[op]["writes"].as_u64().unwrap_or(0)
}

/// After a crash and restart: the rotation `request` completes with exactly one successor,
/// the Secret holds its credentials (a token works with the granted scopes), and the
/// predecessor is retired. `creates_before` is createApplication's write count before the
/// rotation.
async fn finishes_cleanly(
    ctx: &Ctx,
    emulator: &Emulator,
    app: &str,
    request: &str,
    old: &Credentials,
    creates_before: u64,
) -> anyhow::Result<()> {
    let s = wait_handled(ctx, app, request).await?;
    ensure!(
        s.client_id.as_deref() != Some(old.client_id.as_str()),
        "still the old client id after the rotation: {s:?}"
    );
    let s = wait_retired(ctx, emulator, app, 0).await?;
    let c = ctx.credentials(app).await?;
    ensure!(
        Some(&c.client_id) == s.client_id.as_ref(),
        "Secret holds {} but status says {:?}",
        c.client_id,
        s.client_id
    );
    emulator
        .wait_scp(&c, AUDIENCE, &["read:orders", "write:orders"])
        .await?;
    emulator.wait_refused(old, AUDIENCE).await?;
    let creates = writes_of(&emulator.calls().await?, "createApplication") - creates_before;
    ensure!(
        creates == 1,
        "{creates} applications created for one rotation (want 1)"
    );
    let lrt = s.last_rotation_time.context("no lastRotationTime")?;
    ensure!(
        s.next_rotation_time.is_none(),
        "unexpected nextRotationTime without a schedule"
    );
    let _ = lrt;
    Ok(())
}

/// Every (client id, client secret) a Secret held, in order.
type SeenPairs = Arc<Mutex<Vec<(String, String)>>>;

/// Watches the Secret and records every (client id, client secret) it ever holds.
fn watch_secret(ctx: &Ctx, name: &str) -> (SeenPairs, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let api = ctx.api::<Secret>();
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(s)) = stream.next().await {
            let c = Credentials::of(&s);
            let mut v = sink.lock().unwrap();
            if v.last() != Some(&(c.client_id.clone(), c.client_secret.clone())) {
                v.push((c.client_id, c.client_secret));
            }
        }
    });
    (seen, task)
}

// ---------------------------------------------------------------------------------------
// Triggers and the rotation itself
// ---------------------------------------------------------------------------------------

/// The annotation rotates once per new value: successor created and authorized like the
/// predecessor, Secret switched in one write, predecessor kept for the overlap then retired;
/// status, Events and metrics tell. The same value again does nothing. Prints the Kinde
/// calls one rotation costs.
async fn annotation_rotates_once(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, op) = start(&ctx).await?;
    let app = "acme";
    let old = setup(&ctx, &emu, rotating(app, "20s")).await?;
    let s0 = status(&ctx, app).await?;
    let old_app_id = s0.application_id.clone().context("applicationId")?;
    ensure!(
        s0.last_rotation_time.is_none() && s0.retiring.is_empty(),
        "{s0:?}"
    );
    let (seen, watch) = watch_secret(&ctx, &format!("{app}-credentials"));
    wait_for("the Secret watch to start", WAIT, || async {
        Ok((!seen.lock().unwrap().is_empty()).then_some(()))
    })
    .await?;

    let calls0 = emu.calls().await?;
    request_rotation(&ctx, app, "r1").await?;
    let s1 = wait_handled(&ctx, app, "r1").await?;
    let new_id = s1.client_id.clone().context("clientId")?;
    ensure!(
        new_id != old.client_id,
        "client id unchanged after the rotation"
    );
    ensure!(s1.application_id.as_deref() == Some(new_id.as_str()));
    let lrt = s1.last_rotation_time.clone().context("lastRotationTime")?;
    ensure!(s1.retiring.len() == 1, "retiring: {:?}", s1.retiring);
    let r = &s1.retiring[0];
    ensure!(
        r.application_id == old_app_id && r.client_id == old.client_id,
        "retiring entry {r:?} is not the predecessor {old_app_id}"
    );
    let overlap = r.retire_at.0.duration_since(lrt.0).as_secs_f64();
    ensure!(
        (19.0..=21.0).contains(&overlap),
        "retireAt is {overlap}s after lastRotationTime (overlap 20s)"
    );

    // The Secret now holds the successor, and it works with the same scopes.
    let new = ctx.credentials(app).await?;
    ensure!(
        new.client_id == new_id,
        "Secret holds {} not {new_id}",
        new.client_id
    );
    ensure!(new.audience == AUDIENCE);
    ensure!(
        emu.scp(&new, AUDIENCE).await? == Ok(support::sorted(&["read:orders", "write:orders"])),
        "successor token scopes differ"
    );
    let grants = kinde_grants(&emu, &new_id).await?;
    ensure!(
        grants.get(AUDIENCE) == Some(&support::sorted(&["read:orders", "write:orders"])),
        "successor grants in Kinde: {grants:?}"
    );
    // The predecessor keeps working during the overlap.
    ensure!(
        emu.scp(&old, AUDIENCE).await?.is_ok(),
        "predecessor refused during the overlap"
    );
    // The successor loses its marker once recorded.
    wait_for(
        "the successor renamed to its display name",
        WAIT,
        || async {
            let apps = emu.kinde_app_names().await?;
            Ok((apps.get(&new_id).map(String::as_str) == Some(app)).then_some(()))
        },
    )
    .await?;
    let calls_switched = emu.calls().await?;
    wait_app_events(
        &ctx,
        app,
        &["Created", "CredentialsRotated", "CredentialsUpdated"],
    )
    .await?;

    // Metrics.
    let ok = metric(
        &op.metrics,
        "kinde_m2m_operator_rotations_total",
        &[("result", "succeeded")],
    )
    .await?;
    ensure!(ok == Some(1.0), "rotations_total{{succeeded}} = {ok:?}");
    let issued = metric(
        &op.metrics,
        "kinde_m2m_operator_credential_issued_timestamp_seconds",
        &[("object_namespace", &ctx.ns), ("object_name", app)],
    )
    .await?;
    ensure!(
        issued == Some(lrt.0.as_second() as f64),
        "credential_issued_timestamp_seconds {issued:?}, lastRotationTime {}",
        lrt.0
    );

    // Retirement after the overlap.
    let s2 = wait_retired(&ctx, &emu, app, 0).await?;
    ensure!(s2.client_id.as_deref() == Some(new_id.as_str()));
    emu.wait_refused(&old, AUDIENCE).await?;
    wait_app_events(&ctx, app, &["PredecessorRetired"]).await?;
    let calls_retired = emu.calls().await?;

    // No intermediate Secret: every state it held is the old or the new pair, old then new.
    watch.abort();
    let seen = seen.lock().unwrap().clone();
    let pairs = [
        (old.client_id.clone(), old.client_secret.clone()),
        (new.client_id.clone(), new.client_secret.clone()),
    ];
    ensure!(
        seen == pairs,
        "the Secret went through {} states (client ids {:?}), want exactly old then new",
        seen.len(),
        seen.iter().map(|p| &p.0).collect::<Vec<_>>()
    );

    // The same value again does nothing (an unrelated annotation forces a reconcile).
    let creates = emu.call_count("createApplication").await?;
    let before = reconciles(&op).await?;
    let poke_value = fastrand::u64(..).to_string();
    annotate(
        &ctx.api::<M2MApplication>(),
        app,
        &[
            (ROTATE_REQUESTED_AT_ANNOTATION, Some("r1")),
            (POKE_ANNOTATION, Some(&poke_value)),
        ],
    )
    .await?;
    wait_reconciled(&op, before).await?;
    let s3 = status(&ctx, app).await?;
    ensure!(
        emu.call_count("createApplication").await? == creates
            && s3.client_id.as_deref() == Some(new_id.as_str())
            && s3.retiring.is_empty(),
        "the same request value rotated again: {s3:?}"
    );

    let whole = call_delta(&calls0, &calls_retired);
    ensure!(
        whole.get("addAPIApplicationScope") == Some(&2),
        "the successor's two scopes took {:?} addAPIApplicationScope calls",
        whole.get("addAPIApplicationScope")
    );
    let rotation = call_delta(&calls0, &calls_switched);
    let retirement = call_delta(&calls_switched, &calls_retired);
    println!(
        "Kinde calls per rotation: rotation {rotation:?} ({} calls), retirement {retirement:?} ({} calls)",
        rotation.values().sum::<u64>(),
        retirement.values().sum::<u64>()
    );
    Ok(())
}

/// `kinde-m2m-operator rotate` sets the annotation; with `--wait` it returns once rotated.
async fn cli_rotate(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, _op) = start(&ctx).await?;
    let app = "cli";
    let old = setup(&ctx, &emu, rotating(app, "1h")).await?;
    let rotate = |wait: bool| {
        let mut cmd = tokio::process::Command::new(support::operator_bin());
        cmd.args(["rotate", app, "-n", &ctx.ns])
            .env("KUBECONFIG", &ctx.harness.control_plane.kubeconfig)
            .env("LOG_FORMAT", "text")
            .kill_on_drop(true);
        if wait {
            cmd.args(["--wait", "--timeout", "90s"]);
        }
        cmd
    };
    let out = rotate(false).output().await?;
    ensure!(
        out.status.success(),
        "rotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let obj = ctx.api::<M2MApplication>().get(app).await?;
    let value = obj
        .metadata
        .annotations
        .unwrap_or_default()
        .get(ROTATE_REQUESTED_AT_ANNOTATION)
        .cloned()
        .context("rotate set no annotation")?;
    let s1 = wait_handled(&ctx, app, &value).await?;
    ensure!(s1.client_id.as_deref() != Some(old.client_id.as_str()));

    let out = rotate(true).output().await?;
    ensure!(
        out.status.success(),
        "rotate --wait failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Right when it returns, the rotation is done.
    let obj = ctx.api::<M2MApplication>().get(app).await?;
    let value2 = obj
        .metadata
        .annotations
        .unwrap_or_default()
        .get(ROTATE_REQUESTED_AT_ANNOTATION)
        .cloned()
        .context("annotation")?;
    let s2 = obj.status.unwrap_or_default();
    ensure!(value2 != value, "rotate reused the value {value}");
    ensure!(
        s2.last_handled_rotate_request.as_deref() == Some(value2.as_str()) && s2.is_ready(),
        "rotate --wait returned before the rotation: {s2:?}"
    );
    ensure!(
        s2.client_id != s1.client_id && s2.retiring.len() == 2,
        "{s2:?}"
    );
    let c = ctx.credentials(app).await?;
    ensure!(Some(&c.client_id) == s2.client_id.as_ref());
    emu.wait_scp(&c, AUDIENCE, &["read:orders", "write:orders"])
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains(&c.client_id),
        "rotate --wait printed {stdout:?}"
    );
    Ok(())
}

/// `spec.rotation.every`: `status.nextRotationTime` announces it, and it happens when due.
async fn scheduled(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, _op) = start(&ctx).await?;
    let app = "sched";
    let old = setup(&ctx, &emu, rotating(app, "3s").with_rotation_every("20s")).await?;
    let obj = ctx.api::<M2MApplication>().get(app).await?;
    let created = obj.metadata.creation_timestamp.clone().context("created")?;
    let s0 = obj.status.unwrap_or_default();
    let next = s0
        .next_rotation_time
        .clone()
        .context("no nextRotationTime")?;
    ensure!(
        next.0.duration_since(created.0).as_secs() == 20,
        "nextRotationTime {} is not creation {} + 20s",
        next.0,
        created.0
    );
    let s1 = wait_for("the scheduled rotation", WAIT, || async {
        let s = status(&ctx, app).await?;
        Ok((s.last_rotation_time.is_some() && s.is_ready()).then_some(s))
    })
    .await?;
    ensure!(
        s1.client_id.as_deref() != Some(old.client_id.as_str()),
        "{s1:?}"
    );
    ensure!(s1.last_handled_rotate_request.is_none());
    let lrt = s1.last_rotation_time.clone().context("lrt")?;
    ensure!(
        lrt.0 >= next.0,
        "rotated at {} before it was due at {}",
        lrt.0,
        next.0
    );
    let next2 = s1
        .next_rotation_time
        .clone()
        .context("next after rotation")?;
    ensure!(
        next2.0.duration_since(lrt.0).as_secs() == 20,
        "next {} is not last {} + 20s",
        next2.0,
        lrt.0
    );
    // Stop the schedule: nextRotationTime goes away; nothing leaks.
    ctx.api::<M2MApplication>()
        .patch(
            app,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"rotation": {"every": null}}})),
        )
        .await?;
    wait_for("nextRotationTime removed", WAIT, || async {
        Ok(status(&ctx, app)
            .await?
            .next_rotation_time
            .is_none()
            .then_some(()))
    })
    .await?;
    let s = wait_retired(&ctx, &emu, app, 0).await?;
    let c = ctx.credentials(app).await?;
    ensure!(Some(&c.client_id) == s.client_id.as_ref());
    emu.wait_scp(&c, AUDIENCE, &["read:orders", "write:orders"])
        .await?;
    emu.wait_refused(&old, AUDIENCE).await.map(drop)
}

// ---------------------------------------------------------------------------------------
// Interactions
// ---------------------------------------------------------------------------------------

/// During an overlap: a new grant applies to the successor; deleting a grant cuts the
/// predecessor and the successor.
async fn grants_during_overlap(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, _op) = start(&ctx).await?;
    let app = "ovl";
    ctx.apply(&[&api_registration("billing", BILLING).with_scopes(&["read:billing"])])
        .await?;
    let old = setup(&ctx, &emu, rotating(app, "1h")).await?;
    request_rotation(&ctx, app, "r1").await?;
    let s = wait_handled(&ctx, app, "r1").await?;
    ensure!(s.retiring.len() == 1);
    let new = ctx.credentials(app).await?;

    ctx.apply(&[&grant_for("ovl-billing", app, "billing", &["read:billing"])])
        .await?;
    emu.wait_scp(&new, BILLING, &["read:billing"]).await?;
    wait_for("KINDE_AUDIENCE with both audiences", WAIT, || async {
        let c = ctx.credentials(app).await?;
        let mut a: Vec<&str> = c.audience.split(' ').collect();
        a.sort();
        Ok((a == [BILLING, AUDIENCE]).then_some(()))
    })
    .await?;
    ensure!(
        emu.scp(&old, AUDIENCE).await?.is_ok(),
        "predecessor refused during the overlap"
    );

    let grants = ctx.api::<ApiGrant>();
    support::delete(&grants, "ovl-orders").await?;
    wait_gone(&grants, "ovl-orders").await?;
    emu.wait_refused(&new, AUDIENCE).await?;
    emu.wait_refused(&old, AUDIENCE).await?;
    // The other grant is untouched.
    emu.wait_scp(&new, BILLING, &["read:billing"]).await
}

/// A grant deleted before it caught up with a rotation (it was paused meanwhile, so its
/// status still names the predecessor) cuts the successor too, not only the predecessor.
async fn grant_deleted_before_it_saw_rotation(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, _op) = start(&ctx).await?;
    let app = "gs";
    let grant = "gs-orders";
    let old = setup(&ctx, &emu, rotating(app, "1h")).await?;
    let grants = ctx.api::<ApiGrant>();
    annotate(&grants, grant, &[(PAUSED_ANNOTATION, Some("true"))]).await?;
    wait_condition(&grants, grant, "Synced", "False", Some("Paused")).await?;
    request_rotation(&ctx, app, "r1").await?;
    wait_handled(&ctx, app, "r1").await?;
    let new = ctx.credentials(app).await?;
    emu.wait_scp(&new, AUDIENCE, &["read:orders", "write:orders"])
        .await?;
    let g = grants.get(grant).await?.status_or_default();
    ensure!(
        g.application_id.as_deref() == Some(old.client_id.as_str()),
        "the paused grant moved to the successor: {g:?}"
    );
    // Deleted while paused, then resumed: the deletion runs on the grant's old status.
    support::delete(&grants, grant).await?;
    annotate(&grants, grant, &[(PAUSED_ANNOTATION, None)]).await?;
    wait_gone(&grants, grant).await?;
    emu.wait_refused(&old, AUDIENCE).await?;
    emu.wait_refused(&new, AUDIENCE).await.map(drop)
}

/// Kinde refuses a whole authorization batch when one application in it is unknown (a
/// predecessor deleted before a crash let the status say so, an app deleted in the
/// dashboard). A revoke for another application that shares the batch must not be taken
/// as done: two grants deleted together, one of whose application is already gone from
/// Kinde, both cut.
async fn revoke_batched_with_gone_app(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, _op) = start(&ctx).await?;
    let a = setup(&ctx, &emu, rotating("ga", "1h")).await?;
    ctx.apply(&[
        &rotating("gb", "1h"),
        &grant_for("gb-orders", "gb", "orders", &["read:orders"]),
    ])
    .await?;
    let b = wait_for("the Secret of gb", WAIT, || async {
        let c = ctx.credentials("gb").await?;
        Ok((c.audience == AUDIENCE).then_some(c))
    })
    .await?;
    emu.wait_scp(&b, AUDIENCE, &["read:orders"]).await?;
    // ga's application disappears from Kinde behind the operator's back.
    emu.mgmt_delete(&format!("/api/v1/applications/{}", a.client_id))
        .await?;
    // Both grants deleted together (without waiting in between).
    support::delete_all(&ctx.api::<ApiGrant>(), &["ga-orders", "gb-orders"]).await?;
    emu.wait_refused(&b, AUDIENCE).await.map(drop)
}

/// Deleting the M2MApplication during an overlap: policy Delete removes the current and the
/// retiring application from Kinde; Orphan keeps both.
async fn delete_during_overlap(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, _op) = start(&ctx).await?;
    let old_d = setup(
        &ctx,
        &emu,
        rotating("del", "1h").with_deletion_policy(DeletionPolicy::Delete),
    )
    .await?;
    ctx.apply(&[
        &rotating("orph", "1h").with_deletion_policy(DeletionPolicy::Orphan),
        &grant_for("orph-orders", "orph", "orders", &["read:orders"]),
    ])
    .await?;
    let old_o = wait_for("the Secret of orph", WAIT, || async {
        let c = ctx.credentials("orph").await?;
        Ok((c.audience == AUDIENCE).then_some(c))
    })
    .await?;
    let mut ids = BTreeMap::new();
    for (app, old) in [("del", &old_d), ("orph", &old_o)] {
        request_rotation(&ctx, app, "r1").await?;
        let s = wait_handled(&ctx, app, "r1").await?;
        ensure!(s.retiring.len() == 1, "{app}: {s:?}");
        let cur = s.application_id.clone().context("id")?;
        let prev = s.retiring[0].application_id.clone();
        ensure!(s.retiring[0].client_id == old.client_id);
        ids.insert(app, (prev, cur));
    }
    let apps = emu.kinde_app_names().await?;
    ensure!(apps.len() == 4, "Kinde apps before deletion: {apps:?}");
    let api = ctx.api::<M2MApplication>();
    support::delete_all(&api, &["del", "orph"]).await?;
    let apps = emu.kinde_app_names().await?;
    let (dp, dc) = &ids["del"];
    let (op_, oc) = &ids["orph"];
    ensure!(
        !apps.contains_key(dp) && !apps.contains_key(dc),
        "policy Delete left {apps:?}"
    );
    ensure!(
        apps.contains_key(op_) && apps.contains_key(oc) && apps.len() == 2,
        "policy Orphan should keep both: {apps:?}"
    );
    Ok(())
}

/// A second request while a rotation is under way is queued, not lost.
async fn second_request_queued(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, op) = start(&ctx).await?;
    let app = "twice";
    let old = setup(&ctx, &emu, rotating(app, "15s")).await?;
    let creates0 = writes_of(&emu.calls().await?, "createApplication");
    // Hold rotation A at the successor's authorization.
    let patches = emu.call_count("updateAPIApplications").await?;
    emu.fault(json!({"operation": "updateAPIApplications", "latency_ms": 4000}))
        .await?;
    request_rotation(&ctx, app, "A").await?;
    emu.wait_calls("updateAPIApplications", patches + 1).await?;
    request_rotation(&ctx, app, "B").await?;
    let s = wait_handled(&ctx, app, "B").await?;
    let ok = metric(
        &op.metrics,
        "kinde_m2m_operator_rotations_total",
        &[("result", "succeeded")],
    )
    .await?;
    ensure!(ok == Some(2.0), "rotations_total{{succeeded}} = {ok:?}");
    let created = writes_of(&emu.calls().await?, "createApplication") - creates0;
    ensure!(created == 2, "{created} successors for two requests");
    ensure!(
        s.retiring.len() == 2 && s.retiring[0].client_id == old.client_id,
        "retiring should hold the original and A's successor: {:?}",
        s.retiring
    );
    let a_id = s.retiring[1].client_id.clone();
    ensure!(Some(&a_id) != s.client_id.as_ref());
    wait_app_events(&ctx, app, &["CredentialsRotated"]).await?;
    let rotated = event_reasons::<M2MApplication>(&ctx.client, &ctx.ns, app)
        .await?
        .iter()
        .filter(|r| *r == "CredentialsRotated")
        .count();
    ensure!(rotated >= 1);
    let s = wait_retired(&ctx, &emu, app, 0).await?;
    ensure!(s.last_handled_rotate_request.as_deref() == Some("B"));
    let c = ctx.credentials(app).await?;
    emu.wait_scp(&c, AUDIENCE, &["read:orders", "write:orders"])
        .await?;
    emu.wait_refused(&old, AUDIENCE).await.map(drop)
}

/// Paused: a request does nothing in Kinde; resuming performs it. Paused during the
/// overlap: the predecessor is not retired; resuming retires it.
///
/// The pause must reach the operator within the overlap, between the rotation's status
/// write and `retireAt`: 20 s, checked from the `Paused` condition's transition time (a
/// 5 s overlap was too short on a loaded CI machine, and the predecessor was rightly
/// retired before the pause arrived).
async fn pause_and_resume(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, op) = start(&ctx).await?;
    let app = "pz";
    let old = setup(&ctx, &emu, rotating(app, "20s")).await?;
    let apps = ctx.api::<M2MApplication>();
    let paused = |on: bool| {
        let apps = &apps;
        async move { annotate(apps, app, &[(PAUSED_ANNOTATION, on.then_some("true"))]).await }
    };
    let wait_paused = || wait_condition(&apps, app, "Synced", "False", Some("Paused"));
    paused(true).await?;
    wait_paused().await?;
    let writes = emu.total_writes().await?;
    let before = reconciles(&op).await?;
    request_rotation(&ctx, app, "r1").await?;
    wait_reconciled(&op, before).await?;
    let s = status(&ctx, app).await?;
    ensure!(
        emu.total_writes().await? == writes,
        "Kinde writes while paused"
    );
    ensure!(
        s.last_handled_rotate_request.is_none()
            && s.client_id.as_deref() == Some(old.client_id.as_str()),
        "rotated while paused: {s:?}"
    );
    ensure!(
        ctx.credentials(app).await? == old,
        "Secret changed while paused"
    );

    paused(false).await?;
    let s = wait_handled(&ctx, app, "r1").await?;
    paused(true).await?;
    let paused_at = wait_paused()
        .await?
        .condition("Synced")
        .context("no Synced condition")?
        .last_transition_time
        .0;
    let retire_at = s
        .retiring
        .first()
        .context("no retiring entry")?
        .retire_at
        .clone();
    ensure!(
        paused_at < retire_at.0,
        "precondition: the pause reached the operator at {paused_at}, after retireAt {}",
        retire_at.0
    );
    // Past retireAt (the operator requeues for it), the predecessor is still there.
    wait_for("a reconcile after retireAt", WAIT, || async {
        let before = reconciles(&op).await?;
        let now = jiff::Timestamp::now();
        if now <= retire_at.0 + jiff::SignedDuration::from_secs(1) {
            return Ok(None);
        }
        poke(&apps, app).await?;
        wait_reconciled(&op, before).await?;
        Ok(Some(()))
    })
    .await?;
    let s2 = status(&ctx, app).await?;
    ensure!(s2.retiring.len() == 1, "retired while paused: {s2:?}");
    ensure!(
        emu.scp(&old, AUDIENCE).await?.is_ok(),
        "predecessor cut while paused"
    );
    paused(false).await?;
    wait_retired(&ctx, &emu, app, 0).await?;
    emu.wait_refused(&old, AUDIENCE).await.map(drop)
}

// ---------------------------------------------------------------------------------------
// Crash safety
// ---------------------------------------------------------------------------------------

/// SIGKILL after the successor was created, while its authorization is in flight.
async fn crash_after_successor_create(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, mut op) = start(&ctx).await?;
    let app = "ca";
    let old = setup(&ctx, &emu, rotating(app, "3s")).await?;
    let creates = writes_of(&emu.calls().await?, "createApplication");
    let patches = emu.call_count("updateAPIApplications").await?;
    emu.fault(json!({"operation": "updateAPIApplications", "latency_ms": 30000}))
        .await?;
    request_rotation(&ctx, app, "r1").await?;
    emu.wait_calls("updateAPIApplications", patches + 1).await?;
    op.op.kill();
    emu.clear_faults().await?;
    ensure!(
        emu.kinde_app_names().await?.len() == 2,
        "successor not created"
    );
    ensure!(ctx.credentials(app).await? == old, "Secret switched early");
    let _op = operator(&ctx, &emu)?;
    finishes_cleanly(&ctx, &emu, app, "r1", &old, creates).await
}

/// SIGKILL after the Secret switch, before the status write. Nothing Kinde-side sits
/// between the two, so the status write is made to fail: the CRD's schema briefly refuses
/// `lastHandledRotateRequest` values with `!`, and the request is `hold!`.
async fn crash_after_secret_switch(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, mut op) = start(&ctx).await?;
    let app = "cs";
    let old = setup(&ctx, &emu, rotating(app, "3s")).await?;
    let creates = writes_of(&emu.calls().await?, "createApplication");
    let crds = Api::<CustomResourceDefinition>::all(ctx.client.clone());
    let path = "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/lastHandledRotateRequest/pattern";
    let crd = crds.get(APP_CRD).await?;
    ensure!(
        crd.spec.versions[0].name == "v1alpha1",
        "unexpected CRD version order"
    );
    crds.patch(
        APP_CRD,
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(json!([
            {"op": "add", "path": path, "value": "^[^!]*$"}
        ]))?),
    )
    .await?;
    let result = async {
        // A probe in an unwatched namespace tells when the apiserver enforces the pattern.
        let probe_ns = ctx.extra_namespace(&[]).await?;
        let probes = Api::<M2MApplication>::namespaced(ctx.client.clone(), &probe_ns);
        ctx.apply_in(&probe_ns, &[&m2m_application("probe")])
            .await?;
        wait_for("the CRD pattern to be enforced", WAIT, || async {
            let r = probes
                .patch_status(
                    "probe",
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": {"lastHandledRotateRequest": "probe!"}})),
                )
                .await;
            Ok(r.is_err().then_some(()))
        })
        .await?;
        let failures = || async {
            Ok::<_, anyhow::Error>(
                metric(
                    &op.metrics,
                    "kinde_m2m_operator_reconcile_failures_total",
                    &[("kind", "M2MApplication")],
                )
                .await?
                .unwrap_or(0.0),
            )
        };
        let failed_before = failures().await?;
        request_rotation(&ctx, app, "hold!").await?;
        let switched = wait_for("the Secret switch", WAIT, || async {
            let c = ctx.credentials(app).await?;
            Ok((c.client_id != old.client_id).then_some(c))
        })
        .await?;
        // The status write was refused: the reconcile failed after the switch.
        wait_for("the failed status write", WAIT, || async {
            Ok((failures().await? > failed_before).then_some(()))
        })
        .await?;
        op.op.kill();
        let s = status(&ctx, app).await?;
        ensure!(
            s.client_id.as_deref() == Some(old.client_id.as_str()) && s.retiring.is_empty(),
            "status was written after all: {s:?}"
        );
        anyhow::Ok((switched, probes))
    }
    .await;
    crds.patch(
        APP_CRD,
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(json!([
            {"op": "remove", "path": path}
        ]))?),
    )
    .await?;
    let (switched, probes) = result?;
    wait_for("the CRD pattern to be lifted", WAIT, || async {
        let r = probes
            .patch_status(
                "probe",
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"lastHandledRotateRequest": "probe!"}})),
            )
            .await;
        Ok(r.is_ok().then_some(()))
    })
    .await?;
    let _op = operator(&ctx, &emu)?;
    finishes_cleanly(&ctx, &emu, app, "hold!", &old, creates).await?;
    ensure!(
        ctx.credentials(app).await?.client_id == switched.client_id,
        "a different successor than the one switched to before the crash"
    );
    Ok(())
}

/// SIGKILL after the status write, while the successor's marker rename is in flight.
async fn crash_after_status_write(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, mut op) = start(&ctx).await?;
    let app = "cst";
    let old = setup(&ctx, &emu, rotating(app, "3s")).await?;
    let creates = writes_of(&emu.calls().await?, "createApplication");
    let renames = emu.call_count("updateApplication").await?;
    emu.fault(json!({"operation": "updateApplication", "latency_ms": 30000}))
        .await?;
    request_rotation(&ctx, app, "r1").await?;
    emu.wait_calls("updateApplication", renames + 1).await?;
    op.op.kill();
    emu.clear_faults().await?;
    let s = status(&ctx, app).await?;
    ensure!(
        s.last_handled_rotate_request.as_deref() == Some("r1"),
        "status not written before the rename: {s:?}"
    );
    let cur = s.application_id.clone().context("id")?;
    let name = emu
        .kinde_app_names()
        .await?
        .get(&cur)
        .cloned()
        .unwrap_or_default();
    ensure!(
        name.contains("[kmo:"),
        "successor already renamed: {name:?}"
    );
    let _op = operator(&ctx, &emu)?;
    finishes_cleanly(&ctx, &emu, app, "r1", &old, creates).await
}

/// SIGKILL during retirement, after Kinde deleted the predecessor but before the status
/// recorded it (the delete's response is lost and its retry held).
async fn crash_during_retirement(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, mut op) = start(&ctx).await?;
    let app = "cr";
    let old = setup(&ctx, &emu, rotating(app, "3s")).await?;
    let creates = writes_of(&emu.calls().await?, "createApplication");
    emu.fault(json!({"operation": "deleteApplication", "drop_response": true}))
        .await?;
    emu.fault(json!({"operation": "deleteApplication", "latency_ms": 30000}))
        .await?;
    request_rotation(&ctx, app, "r1").await?;
    let s = wait_handled(&ctx, app, "r1").await?;
    let prev = s
        .retiring
        .first()
        .context("retiring")?
        .application_id
        .clone();
    wait_for("Kinde to delete the predecessor", WAIT, || async {
        Ok((!emu.kinde_app_names().await?.contains_key(&prev)).then_some(()))
    })
    .await?;
    op.op.kill();
    emu.clear_faults().await?;
    let s = status(&ctx, app).await?;
    ensure!(
        s.retiring.len() == 1,
        "retirement recorded before the crash: {s:?}"
    );
    let _op = operator(&ctx, &emu)?;
    finishes_cleanly(&ctx, &emu, app, "r1", &old, creates).await
}

/// The successor's create response is lost (the app exists in Kinde), then SIGKILL: the
/// restarted operator finds it by its marker instead of creating another.
async fn lost_create_response(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, mut op) = start(&ctx).await?;
    let app = "lc";
    let old = setup(&ctx, &emu, rotating(app, "3s")).await?;
    let creates = writes_of(&emu.calls().await?, "createApplication");
    emu.fault(json!({"operation": "createApplication", "drop_response": true}))
        .await?;
    request_rotation(&ctx, app, "r1").await?;
    wait_for("the dropped create", WAIT, || async {
        let calls = emu.calls().await?;
        Ok((calls["createApplication"]["statuses"]["dropped"].as_u64() == Some(1)).then_some(()))
    })
    .await?;
    op.op.kill();
    ensure!(
        emu.kinde_app_names().await?.len() == 2,
        "successor not created"
    );
    let _op = operator(&ctx, &emu)?;
    finishes_cleanly(&ctx, &emu, app, "r1", &old, creates).await
}

// ---------------------------------------------------------------------------------------
// Zero downtime
// ---------------------------------------------------------------------------------------

/// A consumer re-reads the Secret and requests a token every 100 ms across a rotation with a
/// 30 s overlap, past the predecessor's retirement: not one request fails.
async fn zero_downtime(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, _op) = start(&ctx).await?;
    let app = "zd";
    let old = setup(&ctx, &emu, rotating(app, "30s")).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let consumer = {
        let (stop, made, failures) = (stop.clone(), made.clone(), failures.clone());
        let secrets = ctx.api::<Secret>();
        let http = reqwest::Client::new();
        let token_url = format!("{}/oauth2/token", emu.url);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                made.fetch_add(1, Ordering::SeqCst);
                let outcome = async {
                    let c = Credentials::of(&secrets.get(&format!("{app}-credentials")).await?);
                    let resp = http
                        .post(&token_url)
                        .form(&[
                            ("grant_type", "client_credentials"),
                            ("client_id", c.client_id.as_str()),
                            ("client_secret", c.client_secret.as_str()),
                            ("audience", c.audience.as_str()),
                        ])
                        .send()
                        .await?;
                    let status = resp.status();
                    if !status.is_success() {
                        bail!(
                            "client {}: HTTP {status}: {}",
                            c.client_id,
                            resp.text().await?
                        );
                    }
                    anyhow::Ok(())
                }
                .await;
                if let Err(e) = outcome {
                    failures.lock().unwrap().push(format!("{e:#}"));
                }
            }
        })
    };
    let result = async {
        wait_for("the consumer to start", WAIT, || async {
            Ok((made.load(Ordering::SeqCst) >= 5).then_some(()))
        })
        .await?;
        request_rotation(&ctx, app, "r1").await?;
        wait_handled(&ctx, app, "r1").await?;
        wait_retired(&ctx, &emu, app, 0).await?;
        emu.wait_refused(&old, AUDIENCE).await?;
        // And a little longer on the successor alone.
        let n = made.load(Ordering::SeqCst);
        wait_for("more consumer requests", WAIT, || async {
            Ok((made.load(Ordering::SeqCst) >= n + 10).then_some(()))
        })
        .await
    }
    .await;
    stop.store(true, Ordering::SeqCst);
    consumer.await?;
    result?;
    let failures = failures.lock().unwrap().clone();
    println!(
        "zero downtime: {} token requests across the rotation (30s overlap), {} failed",
        made.load(Ordering::SeqCst),
        failures.len()
    );
    ensure!(failures.is_empty(), "failed requests: {failures:?}");
    Ok(())
}

/// `overlap: 0s`: the pre-rotation credentials are refused right after the switch.
async fn zero_overlap_cuts_old(ctx: Ctx) -> anyhow::Result<()> {
    let (emu, _op) = start(&ctx).await?;
    let app = "zo";
    let old = setup(&ctx, &emu, rotating(app, "0s")).await?;
    request_rotation(&ctx, app, "r1").await?;
    let new = wait_for("the Secret switch", WAIT, || async {
        let c = ctx.credentials(app).await?;
        Ok((c.client_id != old.client_id).then_some(c))
    })
    .await?;
    wait_for(
        "the old credentials refused soon after the switch",
        Duration::from_secs(10),
        || async {
            match emu.scp(&old, AUDIENCE).await? {
                Err(r) => Ok(Some(r)),
                Ok(_) => Ok(None),
            }
        },
    )
    .await?;
    emu.wait_scp(&new, AUDIENCE, &["read:orders", "write:orders"])
        .await?;
    let s = wait_retired(&ctx, &emu, app, 0).await?;
    ensure!(s.last_handled_rotate_request.as_deref() == Some("r1"));
    Ok(())
}

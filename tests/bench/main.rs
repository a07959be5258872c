//! Fleet benchmark: the real operator binary on the real control plane against the Kinde
//! emulator with a rate limit and a latency, N customers (one M2MApplication and one ApiGrant
//! each, in a namespace of their own) applied at once. It prints what it measured next to
//! the bound it is judged by, and asserts no time: it fails only when the fleet does not
//! converge (or tear down) at all, or the measurement itself breaks.
//!
//! `cargo test --test bench` runs it at a small N (what CI does, so it keeps working);
//! `scripts/bench --customers 1000` runs it with a release binary at fleet size. Flags:
//!
//! ```text
//! --customers N        customers (default 20)
//! --rate R             emulator rate limit, management calls per second (default 20)
//! --latency-ms L       latency the emulator adds to every call (default 50)
//! --operator-rate R    --kinde-requests-per-second given to the operator (default: R)
//! --resync S           operator resync period in seconds, one steady period is measured (default 20)
//! --timeout S          give up converging after S seconds (default 1800)
//! ```
//!
//! The lower bound is the minimum number of Kinde management calls a perfect operator needs,
//! divided by the rate: per customer one `createApplication`, one `updateApplicationsProperty`
//! (the owner key that lets a rebuilt cluster find the application again), one
//! `updateApplication` (the crash-safe create names the application with a marker, taken
//! out once its id is recorded: without it a create whose response was lost could not be
//! found again) and one `addAPIApplicationScope` per scope of its grant; one
//! `updateAPIApplications` per 100 applications (Kinde's bulk cap); the API and each of its
//! scopes once, and the owner property's definition once (list properties, list
//! categories, create the category, create the property).
#![allow(clippy::unwrap_used)]

// The e2e harness; the benchmark uses a part of it.
#[allow(unused_imports)]
#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// The fleet's API.
const AUDIENCE: &str = "https://orders.bench.example";

/// Scopes of the benchmark's API, and how many of them each grant asks for.
const API_SCOPES: [&str; 3] = ["read:orders", "write:orders", "read:invoices"];
const GRANT_SCOPES: usize = 2;
/// Kinde's cap on applications in one `updateAPIApplications`.
const BULK_CAP: u64 = 100;
const PLATFORM_NS: &str = "bench-platform";
const GROUP: &str = "m2m.kinde-operator.io";
const VERSION: &str = "v1alpha1";
/// The operator's user agent towards the API server: how the audit log tells its writes.
const OPERATOR_AGENT: &str = "kinde-m2m-operator/";

#[derive(Debug, Clone)]
struct Options {
    customers: u64,
    rate: u64,
    latency_ms: u64,
    operator_rate: Option<f64>,
    resync: u64,
    timeout: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            customers: 20,
            rate: 20,
            latency_ms: 50,
            operator_rate: None,
            resync: 20,
            timeout: 1800,
        }
    }
}

/// What the command line asks for: a run, a listing (`--list`, as cargo's test runner
/// asks), or nothing (a test filter that does not match this benchmark).
enum Invocation {
    Run(Options),
    List,
    FilteredOut,
}

fn parse_args(args: &[String]) -> anyhow::Result<Invocation> {
    let mut o = Options::default();
    let mut filters = Vec::new();
    let mut list = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<String> {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String| -> anyhow::Result<u64> {
            v.parse::<u64>()
                .with_context(|| format!("{name}: {v:?} is not a whole number"))
        };
        match arg.as_str() {
            "--customers" => o.customers = number(arg, value(arg)?)?,
            "--rate" => o.rate = number(arg, value(arg)?)?,
            "--latency-ms" => o.latency_ms = number(arg, value(arg)?)?,
            "--resync" => o.resync = number(arg, value(arg)?)?,
            "--timeout" => o.timeout = number(arg, value(arg)?)?,
            "--operator-rate" => {
                let v = value(arg)?;
                o.operator_rate = Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|r| r.is_finite() && *r >= 0.0)
                        .with_context(|| format!("--operator-rate: {v:?} is not a rate"))?,
                );
            }
            "--list" => list = true,
            // What cargo's test runner may pass to every test binary.
            "--test-threads" | "--skip" | "--format" | "--color" => {
                value(arg)?;
            }
            "--nocapture" | "--quiet" | "-q" | "--exact" | "--ignored" | "--include-ignored"
            | "--show-output" => {}
            other if other.starts_with('-') => {
                bail!("unknown flag {other} (see tests/bench/main.rs)")
            }
            filter => filters.push(filter.to_owned()),
        }
    }
    ensure!(o.customers >= 1, "--customers must be at least 1");
    ensure!(o.rate >= 1, "--rate must be at least 1");
    ensure!(o.resync >= 10, "--resync must be at least 10 (seconds)");
    if list {
        return Ok(Invocation::List);
    }
    if !filters.is_empty() && !filters.iter().any(|f| "bench".contains(f.as_str())) {
        return Ok(Invocation::FilteredOut);
    }
    Ok(Invocation::Run(o))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(Invocation::Run(o)) => o,
        Ok(Invocation::List) => {
            println!("bench: test");
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::FilteredOut) => {
            println!("bench: filtered out");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = run(&options);
    support::shutdown_harness();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(o: &Options) -> anyhow::Result<()> {
    let audit = prepare_audit()?;
    let audit_args = format!(
        "--audit-policy-file={} --audit-log-path={} --audit-log-maxsize=0",
        audit.policy.display(),
        audit.log.display()
    );
    let harness = support::harness_with_env(&[("APISERVER_EXTRA_ARGS", &audit_args)])
        .map_err(anyhow::Error::msg)?;
    harness.runtime.block_on(bench(harness, o, &audit))
}

struct Audit {
    policy: PathBuf,
    log: PathBuf,
}

fn prepare_audit() -> anyhow::Result<Audit> {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let policy = dir.join("audit-policy.yaml");
    // Writes only, metadata only: what the operator writes to Kubernetes, counted per object.
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n  verbs: [create, update, patch, delete]\n  resources:\n  - group: m2m.kinde-operator.io\n  - group: \"\"\n    resources: [secrets, events]\n  - group: events.k8s.io\n- level: None\n",
    )?;
    Ok(Audit {
        policy,
        log: dir.join("audit.log"),
    })
}

/// The operator's writes to Kubernetes as the audit log recorded them.
#[derive(Debug, Default, Clone)]
struct KubeWrites {
    /// Status writes per object (`kind/namespace/name`).
    status: BTreeMap<String, u64>,
    /// Events per namespace.
    events: BTreeMap<String, u64>,
    /// Every write, by `verb resource[/subresource]`.
    by_kind: BTreeMap<String, u64>,
}

impl KubeWrites {
    fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }
}

/// The audit log with the files the API server rotated out of it (`audit-<time>.log` beside
/// it: v1.20 rotates at 100 MB whatever `--audit-log-maxsize` says, which a fleet of 10,000
/// passes during onboarding).
fn audit_files(log: &Path) -> Vec<std::path::PathBuf> {
    let (Some(dir), Some(stem)) = (log.parent(), log.file_stem().and_then(|s| s.to_str())) else {
        return vec![log.to_owned()];
    };
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{stem}-")) && n.ends_with(".log"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.push(log.to_owned());
    files
}

fn read_audit(log: &Path) -> anyhow::Result<KubeWrites> {
    let mut text = String::new();
    for file in audit_files(log) {
        text.push_str(&std::fs::read_to_string(file).unwrap_or_default());
        text.push('\n');
    }
    let mut w = KubeWrites::default();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if e["stage"] != "ResponseComplete"
            || !e["userAgent"]
                .as_str()
                .is_some_and(|a| a.starts_with(OPERATOR_AGENT))
            || !e["responseStatus"]["code"]
                .as_u64()
                .is_some_and(|c| (200..300).contains(&c))
        {
            continue;
        }
        let r = &e["objectRef"];
        let resource = r["resource"].as_str().unwrap_or_default();
        let sub = r["subresource"].as_str().unwrap_or_default();
        let ns = r["namespace"].as_str().unwrap_or_default();
        let name = r["name"].as_str().unwrap_or_default();
        let verb = e["verb"].as_str().unwrap_or_default();
        let key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        *w.by_kind.entry(key).or_default() += 1;
        if sub == "status" {
            *w.status
                .entry(format!("{resource}/{ns}/{name}"))
                .or_default() += 1;
        }
        if resource == "events" && verb == "create" {
            *w.events.entry(ns.to_owned()).or_default() += 1;
        }
    }
    Ok(w)
}

/// Management calls by operation, 429s and writes, from the emulator's counters.
#[derive(Debug, Default, Clone)]
struct KindeCalls {
    by_op: BTreeMap<String, u64>,
    throttled: u64,
    writes: u64,
}

impl KindeCalls {
    fn management(&self) -> u64 {
        self.by_op
            .iter()
            .filter(|(op, _)| op.as_str() != "token")
            .map(|(_, n)| n)
            .sum()
    }
}

async fn kinde_calls(emulator: &support::Emulator) -> anyhow::Result<KindeCalls> {
    let calls = emulator.calls().await?;
    let mut c = KindeCalls::default();
    for (op, v) in calls.as_object().into_iter().flatten() {
        c.by_op.insert(op.clone(), v["calls"].as_u64().unwrap_or(0));
        c.throttled += v["statuses"]["429"].as_u64().unwrap_or(0);
        c.writes += v["writes"].as_u64().unwrap_or(0);
    }
    Ok(c)
}

/// Resident memory and CPU time of a process, from `/proc`.
#[derive(Debug, Clone, Copy)]
struct Usage {
    peak_rss_mib: f64,
    rss_mib: f64,
    cpu_secs: f64,
}

fn usage(pid: u32) -> anyhow::Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), 1-based from `state` = 3.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    // utime and stime are fields 14 and 15: indices 11 and 12 after the state field.
    let clock = 100.0;
    Ok(Usage {
        peak_rss_mib: kib("VmHWM:") / 1024.0,
        rss_mib: kib("VmRSS:") / 1024.0,
        cpu_secs: (ticks(11) + ticks(12)) / clock,
    })
}

fn customer_ns(i: u64) -> String {
    format!("bench-c{i:05}")
}

fn platform_objects() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PLATFORM_NS}}),
        json!({
            "apiVersion": format!("{GROUP}/{VERSION}"), "kind": "ApiRegistration",
            "metadata": {"name": "orders", "namespace": PLATFORM_NS},
            "spec": {
                "audience": AUDIENCE,
                "scopes": API_SCOPES.iter().map(|k| json!({"key": k, "description": k})).collect::<Vec<_>>(),
                "grantPolicy": {"from": "All"},
            },
        }),
    ]
}

fn customer_objects(i: u64) -> Vec<Value> {
    let ns = customer_ns(i);
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({
            "apiVersion": format!("{GROUP}/{VERSION}"), "kind": "M2MApplication",
            "metadata": {"name": "app", "namespace": ns},
            "spec": {"displayName": format!("Customer {i}")},
        }),
        json!({
            "apiVersion": format!("{GROUP}/{VERSION}"), "kind": "ApiGrant",
            "metadata": {"name": "orders", "namespace": ns},
            "spec": {
                "applicationRef": {"name": "app"},
                "apiRef": {"name": "orders", "namespace": PLATFORM_NS},
                "scopes": API_SCOPES[..GRANT_SCOPES],
            },
        }),
    ]
}

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, VERSION, kind))
}

/// Server-side applies `objects` (namespaces first), 32 at a time: the fleet arrives at
/// once, as from one `kubectl apply` (which would be slower than the operator under test).
async fn apply_all(client: &kube::Client, objects: Vec<Value>) -> anyhow::Result<()> {
    let (namespaces, rest): (Vec<Value>, Vec<Value>) =
        objects.into_iter().partition(|o| o["kind"] == "Namespace");
    for batch in [namespaces, rest] {
        futures::stream::iter(batch.into_iter().map(|obj| apply_one(client, obj)))
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
    }
    Ok(())
}

async fn apply_one(client: &kube::Client, obj: Value) -> anyhow::Result<()> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pp = PatchParams::apply("kinde-bench").force();
    if kind == "Namespace" {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        api.patch(&name, &pp, &Patch::Apply(&obj)).await?;
    } else {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource(&kind));
        api.patch(&name, &pp, &Patch::Apply(&obj))
            .await
            .with_context(|| format!("applying {kind} {ns}/{name}"))?;
    }
    Ok(())
}

fn is_ready(obj: &DynamicObject) -> bool {
    let generation = obj.metadata.generation;
    obj.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            c["type"] == "Ready"
                && c["status"] == "True"
                && c["observedGeneration"].as_i64() == generation
        })
}

/// How many of the operator's Secrets in the customer namespaces list the API's audience
/// (metadata and data of the operator's Secrets only: the listing is by its label).
async fn secrets_listing_audience(client: &kube::Client) -> anyhow::Result<usize> {
    use k8s_openapi::api::core::v1::Secret;
    use kinde_m2m_operator::crd::{DEFAULT_KEY_AUDIENCE, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
    let api: Api<Secret> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|s| {
            s.metadata
                .namespace
                .as_deref()
                .is_some_and(|n| n.starts_with("bench-c"))
        })
        .filter(|s| {
            s.data
                .as_ref()
                .and_then(|d| d.get(DEFAULT_KEY_AUDIENCE))
                .is_some_and(|v| String::from_utf8_lossy(&v.0).contains(AUDIENCE))
        })
        .count())
}

/// How many objects of `kind` in the customer namespaces are Ready, of how many.
async fn ready_count(client: &kube::Client, kind: &str) -> anyhow::Result<(usize, usize)> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(kind));
    let list = api.list(&ListParams::default()).await?;
    let ours: Vec<&DynamicObject> = list
        .items
        .iter()
        .filter(|o| {
            o.metadata
                .namespace
                .as_deref()
                .is_some_and(|n| n.starts_with("bench-c"))
        })
        .collect();
    Ok((ours.iter().filter(|o| is_ready(o)).count(), ours.len()))
}

async fn wait_all_ready(
    client: &kube::Client,
    expected: usize,
    timeout: Duration,
    operator: &support::Operator,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let (apps, _) = ready_count(client, "M2MApplication").await?;
        let (grants, _) = ready_count(client, "ApiGrant").await?;
        // Done for a customer once its Secret lists the audience: what it uses. (Listed
        // once the objects are Ready: a thousand Secrets a second would load the server.)
        let secrets = if apps >= expected && grants >= expected {
            secrets_listing_audience(client).await?
        } else {
            0
        };
        if apps >= expected && grants >= expected && secrets >= expected {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!(
                "after {:.0?}: {apps}/{expected} applications and {grants}/{expected} grants Ready, {secrets}/{expected} Secrets list the audience; operator log tail:\n{}",
                start.elapsed(),
                operator.log_tail(40)
            );
        }
        if last_print.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "bench: {:>5.0?} {apps}/{expected} applications, {grants}/{expected} grants Ready, {secrets}/{expected} Secrets list the audience",
                start.elapsed()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

/// The minimum management calls for `n` customers, with the API: see the module docs.
fn minimum_calls(n: u64) -> u64 {
    n * (PER_CUSTOMER_CALLS + GRANT_SCOPES as u64)
        + n.div_ceil(BULK_CAP)
        + 1
        + API_SCOPES.len() as u64
        + OWNER_PROPERTY_SETUP
}

/// A customer's own calls besides its scopes: its create, its owner key and the rename
/// that takes the creation marker out.
const PER_CUSTOMER_CALLS: u64 = 3;
/// Defining the owner property in a business that has none: list properties, list
/// categories, create the category, create the property.
const OWNER_PROPERTY_SETUP: u64 = 4;

async fn bench(h: &'static support::Harness, o: &Options, audit: &Audit) -> anyhow::Result<()> {
    h.ensure_crds().await?;
    let client = h.client.clone();
    let emulator = support::Emulator::start(&h.run_dir)?;
    emulator
        .control(
            reqwest::Method::PUT,
            "rate-limit",
            Some(json!({"requests": o.rate, "per_seconds": 1})),
        )
        .await?;
    emulator
        .control(
            reqwest::Method::PUT,
            "latency",
            Some(json!({"ms": o.latency_ms})),
        )
        .await?;
    let operator_rate = o.operator_rate.unwrap_or(o.rate as f64).to_string();
    let resync = format!("{}s", o.resync);
    let port = support::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let operator = support::Operator::start_env(
        h,
        "bench",
        &emulator.url,
        &[
            "run",
            "--leader-election=false",
            "--listen",
            &listen,
            "--resync-period",
            &resync,
            "--kinde-requests-per-second",
            &operator_rate,
        ],
        &[("RUST_LOG", "info")],
    )?;
    let binary = support::operator_bin();
    println!(
        "bench: {} customers; emulator {} calls/s, +{} ms per call; operator {} (rate {operator_rate}/s, resync {resync})",
        o.customers,
        o.rate,
        o.latency_ms,
        binary.display()
    );

    // Onboarding: the API, then every customer at once.
    let mut objects = platform_objects();
    for i in 0..o.customers {
        objects.extend(customer_objects(i));
    }
    let applied = Instant::now();
    apply_all(&client, objects).await?;
    let apply_took = applied.elapsed();
    let expected = usize::try_from(o.customers)?;
    let timeout = Duration::from_secs(o.timeout);
    wait_all_ready(
        &client,
        expected,
        timeout.saturating_sub(applied.elapsed()),
        &operator,
    )
    .await?;
    let ready_after = applied.elapsed();
    let onboard_calls = kinde_calls(&emulator).await?;
    let onboard_usage = usage(operator.pid())?;
    let onboard_writes = read_audit(&audit.log)?;

    let minimum = minimum_calls(o.customers);
    let bound = minimum as f64 / o.rate as f64;
    let made = onboard_calls.management();
    println!(
        "\n== onboarding {} customers (applied in {apply_took:.1?})",
        o.customers
    );
    println!(
        "all Ready after        {:>9.1} s",
        ready_after.as_secs_f64()
    );
    println!(
        "lower bound            {bound:>9.1} s   = {minimum} calls / {} per s  ({} x (1 create + 1 owner key + 1 marker rename + {GRANT_SCOPES} scope grants) + {} bulk authorizations + 1 API + {} API scopes + {OWNER_PROPERTY_SETUP} owner property setup)",
        o.rate,
        o.customers,
        o.customers.div_ceil(BULK_CAP),
        API_SCOPES.len()
    );
    println!(
        "time ratio             {:>9.2}     (judged: <= 1.25)",
        ready_after.as_secs_f64() / bound
    );
    println!(
        "Kinde calls            {made:>9}     minimum {minimum}, ratio {:.3} (judged: <= 1.15)",
        made as f64 / minimum as f64
    );
    println!(
        "429s                   {:>9}     {:.2}% of calls (judged: < 1%)",
        onboard_calls.throttled,
        100.0 * onboard_calls.throttled as f64 / made.max(1) as f64
    );
    println!("calls by operation:");
    print_rows(&onboard_calls.by_op);
    println!(
        "operator               peak RSS {:.1} MiB, RSS {:.1} MiB, CPU {:.1} s",
        onboard_usage.peak_rss_mib, onboard_usage.rss_mib, onboard_usage.cpu_secs
    );
    print_kube_writes(&onboard_writes, o.customers);

    // Steady state: one resync period (plus its 10% jitter) with nothing changing.
    emulator
        .control(reqwest::Method::DELETE, "calls", None)
        .await?;
    let before = read_audit(&audit.log)?;
    let period = Duration::from_secs(o.resync + o.resync / 10 + 5);
    tokio::time::sleep(period).await;
    let steady = kinde_calls(&emulator).await?;
    let after = read_audit(&audit.log)?;
    let steady_usage = usage(operator.pid())?;
    println!(
        "\n== steady state, one resync period ({:.0?} observed)",
        period
    );
    println!(
        "Kinde calls            {:>9}     writes {}, 429s {} (judged: 0 writes, 0 429s)",
        steady.management(),
        steady.writes,
        steady.throttled
    );
    print_rows(&steady.by_op);
    println!(
        "Kubernetes writes      {:>9}     (judged: 0)",
        after.total().saturating_sub(before.total())
    );
    for (k, n) in &after.by_kind {
        let was = before.by_kind.get(k).copied().unwrap_or(0);
        if *n > was {
            println!("  {k:<30} {:>8}", n - was);
        }
    }
    println!(
        "operator               peak RSS {:.1} MiB, steady RSS {:.1} MiB, CPU {:.1} s (judged: peak <= 64 MiB at 1,000, <= 256 MiB at 10,000)",
        steady_usage.peak_rss_mib, steady_usage.rss_mib, steady_usage.cpu_secs
    );

    // The next customer: what one more costs on a fleet of N.
    emulator
        .control(reqwest::Method::DELETE, "calls", None)
        .await?;
    let next = o.customers;
    let t = Instant::now();
    apply_all(&client, customer_objects(next)).await?;
    wait_all_ready(&client, expected + 1, timeout, &operator).await?;
    let next_calls = kinde_calls(&emulator).await?;
    // The fleet's resync goes on meanwhile: its reads are `getApplication`s, which the new
    // customer itself does not need (its create answers with what a read would).
    let fleet_reads = next_calls.by_op.get("getApplication").copied().unwrap_or(0);
    println!("\n== customer N+1");
    println!(
        "Ready after            {:>9.1} s   Kinde calls {} (minimum {}: 1 create + 1 owner key + 1 marker rename + {GRANT_SCOPES} scopes + 1 authorization), besides {fleet_reads} getApplication of the fleet's resync meanwhile",
        t.elapsed().as_secs_f64(),
        next_calls.management() - fleet_reads,
        PER_CUSTOMER_CALLS + 1 + GRANT_SCOPES as u64
    );
    print_rows(&next_calls.by_op);

    // Teardown: grants first (access cut), then applications (deleted in Kinde).
    emulator
        .control(reqwest::Method::DELETE, "calls", None)
        .await?;
    let t = Instant::now();
    delete_all(&client, "ApiGrant", o.customers + 1).await?;
    wait_gone(&client, "ApiGrant", timeout).await?;
    ensure_no_authorizations(&emulator).await?;
    let grants_cut = t.elapsed();
    let t = Instant::now();
    delete_all(&client, "M2MApplication", o.customers + 1).await?;
    wait_gone(&client, "M2MApplication", timeout).await?;
    let left = emulator.kinde_apps().await?.len();
    ensure!(
        left == 0,
        "{left} Kinde applications left after every M2MApplication was deleted"
    );
    let apps_deleted = t.elapsed();
    let teardown = kinde_calls(&emulator).await?;
    println!("\n== teardown");
    println!("grants cut             {:>9.1} s", grants_cut.as_secs_f64());
    println!(
        "applications deleted   {:>9.1} s",
        apps_deleted.as_secs_f64()
    );
    println!(
        "Kinde calls            {:>9}     429s {}",
        teardown.management(),
        teardown.throttled
    );
    print_rows(&teardown.by_op);
    drop(operator);
    Ok(())
}

/// One indented `name count` row per entry.
fn print_rows(rows: &BTreeMap<String, u64>) {
    for (name, n) in rows {
        println!("  {name:<30} {n:>8}");
    }
}

fn print_kube_writes(w: &KubeWrites, customers: u64) {
    let counts = |m: &BTreeMap<String, u64>, prefix: &str| -> Vec<u64> {
        m.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, n)| *n)
            .collect()
    };
    let grant_status = counts(&w.status, "apigrants/");
    let app_status = counts(&w.status, "m2mapplications/");
    let events = counts(&w.events, "bench-c");
    let stats = |v: &[u64]| -> String {
        let max = v.iter().max().copied().unwrap_or(0);
        let mean = v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
        format!("mean {mean:.2}, max {max}")
    };
    println!(
        "Kubernetes writes      {:>9}     by the operator",
        w.total()
    );
    println!(
        "  status per grant     {}  per application {}  (judged: <= 2 per object)",
        stats(&grant_status),
        stats(&app_status)
    );
    println!(
        "  Events per customer  {}  over {} of {customers} namespaces (judged: <= 3)",
        stats(&events),
        events.len()
    );
    print_rows(&w.by_kind);
}

async fn delete_all(client: &kube::Client, kind: &str, customers: u64) -> anyhow::Result<()> {
    let names = (0..customers).map(|i| (customer_ns(i), kind));
    futures::stream::iter(names.map(|(ns, kind)| async move {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource(kind));
        let list = api.list(&ListParams::default()).await?;
        for obj in list.items {
            let name = obj.metadata.name.unwrap_or_default();
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("deleting {ns}/{name}")));
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

async fn wait_gone(client: &kube::Client, kind: &str, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let (_, total) = ready_count(client, kind).await?;
        if total == 0 {
            return Ok(());
        }
        ensure!(
            start.elapsed() < timeout,
            "{total} {kind} objects still there after {:.0?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

async fn ensure_no_authorizations(emulator: &support::Emulator) -> anyhow::Result<()> {
    let state = emulator.state().await?;
    let names: BTreeMap<&str, &str> = state["applications"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a["id"].as_str()?, a["name"].as_str()?)))
        .collect();
    let left: Vec<String> = state["apis"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|api| api["is_management_api"] != true)
        .flat_map(|api| api["applications"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            let id = a["id"].as_str().unwrap_or_default();
            format!(
                "{} ({id}, scopes {})",
                names.get(id).unwrap_or(&"?"),
                a["scopes"]
            )
        })
        .collect();
    ensure!(
        left.is_empty(),
        "{} authorizations left after every grant was deleted: {left:?}",
        left.len()
    );
    Ok(())
}

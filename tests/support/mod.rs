//! End-to-end test harness: one real control plane (etcd + kube-apiserver +
//! kube-controller-manager, see `scripts/control-plane`) per test run, a fresh namespace per
//! test, the Kinde emulator as a subprocess of the real binary, and helpers.
//!
//! Include it from an e2e test binary (`harness = false`) with
//! `#[path = "../support/mod.rs"] mod support;` and hand the tests to [`run`]:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     support::run([support::test("crds_install", |ctx| async move {
//!         ctx.kubectl(&["get", "ns"]).await?;
//!         Ok(())
//!     })])
//! }
//! ```
//!
//! Lifecycle: the control plane starts lazily at the first test that needs it (so
//! `--list` or a filter matching nothing costs nothing) and is stopped when [`run`] returns,
//! whether tests passed, failed or panicked; on Ctrl-C/SIGTERM; and, should the test process
//! be killed outright, by the control plane's own watchdog (it watches our pid). A later run
//! also stops anything a crashed run left recorded under `CARGO_TARGET_TMPDIR/e2e`.
//!
//! Environment knobs:
//! - `E2E_KEEP=1`: leave the control plane running after the run (prints how to use/stop it).
//! - `E2E_TEST_TIMEOUT` (seconds, default 180): per-test timeout.
//! - `KUBECTL`: kubectl binary (default: `scripts/fetch-tools`, cached).
//! - `AUTHZ`, `CONTROL_PLANE_BIN`: passed through to `scripts/control-plane`.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use libtest_mimic::{Arguments, Failed, Trial};

pub mod fixtures;
mod kinde;
mod objects;
pub mod proxy;

pub use kinde::{
    Credentials, credentials, kinde_apis_of, kinde_apps_of, scope_keys, secret_value, sorted,
    strings,
};
pub use objects::{
    Kind, KindStatus, POKE_ANNOTATION, WAIT, annotate, cluster_connection_ready, delete,
    delete_all, event_reasons, events_about, merge_patch, poke, raw, wait_condition, wait_events,
    wait_gone, wait_ready_current, wait_reason,
};

/// Repository root (the crate's manifest dir).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A path relative to the repository root.
pub fn repo_path(rel: &str) -> PathBuf {
    repo_root().join(rel)
}

/// The operator binary under test, built by cargo for this test run.
pub const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_kinde-m2m-operator");

/// The operator binary the harness runs: `$E2E_OPERATOR_BIN` when set, else
/// [`OPERATOR_BIN`]. Worktrees sharing one `CARGO_TARGET_DIR` overwrite each other's
/// `target/debug/kinde-m2m-operator` (cargo uplifts the last one built), so a run can pick
/// up another checkout's binary; point this at a private copy to be sure.
pub fn operator_bin() -> PathBuf {
    std::env::var_os("E2E_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(OPERATOR_BIN))
}

/// Credentials the emulator accepts for the operator's management client.
pub const KINDE_CLIENT_ID: &str = "e2e-operator-client";
pub const KINDE_CLIENT_SECRET: &str = "e2e-operator-secret-0123456789abcdef";

/// Label put on every namespace the harness creates.
pub const E2E_LABEL: &str = "e2e.kinde-operator.io/test";

// ---------------------------------------------------------------------------------------
// Running tests
// ---------------------------------------------------------------------------------------

// Test futures run with `block_on` on the test's own thread: they need not be `Send`.
type TestFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>>>>;

/// One e2e test: a name and an async body that gets its own [`Ctx`].
pub struct E2eTest {
    name: String,
    body: Box<dyn FnOnce(Ctx) -> TestFuture + Send>,
}

/// Declares an e2e test. The body runs on the harness's tokio runtime with a fresh namespace
/// (`ctx.ns`), deleted afterwards.
pub fn test<F, Fut>(name: &str, body: F) -> E2eTest
where
    F: FnOnce(Ctx) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + 'static,
{
    E2eTest {
        name: name.to_string(),
        body: Box::new(move |ctx| Box::pin(body(ctx))),
    }
}

/// Runs the tests with libtest-mimic (all its flags work: filters, `--list`,
/// `--test-threads`, ...) and stops every process the harness started before returning.
pub fn run(tests: impl IntoIterator<Item = E2eTest>) -> ExitCode {
    let mut args = Arguments::from_args();
    // The tests mostly wait on the API server: run more of them than there are cores.
    if args.test_threads.is_none() {
        args.test_threads = Some(8);
    }
    let _guard = ShutdownGuard;
    install_signal_handler();
    let trials = tests
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            let body = t.body;
            Trial::test(t.name, move || run_one(&name, body)).with_kind("e2e")
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    shutdown();
    conclusion.exit_code()
}

fn run_one(name: &str, body: Box<dyn FnOnce(Ctx) -> TestFuture + Send>) -> Result<(), Failed> {
    static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let h = harness().map_err(|e| {
        // The full story (with the control plane's log tails) once, a pointer to it after.
        if REPORTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let first = e.lines().next().unwrap_or_default();
            Failed::from(format!(
                "e2e harness unavailable (details in another failure): {first}"
            ))
        } else {
            Failed::from(format!("e2e harness unavailable: {e}"))
        }
    })?;
    let timeout = std::env::var("E2E_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(180));
    h.runtime.block_on(async {
        let ctx = Ctx::new(h, name)
            .await
            .map_err(|e| format!("creating the test namespace: {e:#}"))?;
        let ns = ctx.ns.clone();
        let client = ctx.client.clone();
        let result = tokio::time::timeout(timeout, body(ctx)).await;
        // Best effort: do not wait for the namespace to go (that needs the namespace
        // controller to empty it, and whatever else the test left behind may block it).
        let _ = Api::<Namespace>::all(client)
            .delete(&ns, &DeleteParams::background())
            .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failed::from(format!("{e:#}\n(namespace {ns})"))),
            Err(_) => Err(Failed::from(format!(
                "timed out after {timeout:?} (E2E_TEST_TIMEOUT) (namespace {ns})"
            ))),
        }
    })
}

// ---------------------------------------------------------------------------------------
// The shared harness
// ---------------------------------------------------------------------------------------

/// What all tests of one run share.
pub struct Harness {
    pub runtime: tokio::runtime::Runtime,
    pub control_plane: ControlPlane,
    /// Admin client for the control plane (bearer token, created on `runtime`).
    pub client: kube::Client,
    pub run_dir: PathBuf,
    emulator: OnceLock<Result<Emulator, String>>,
    tools: OnceLock<Result<PathBuf, String>>,
    crds: tokio::sync::OnceCell<Vec<String>>,
}

static HARNESS: OnceLock<Result<Harness, String>> = OnceLock::new();

/// The run's harness, started on first use (concurrent callers wait for the first).
pub fn harness() -> Result<&'static Harness, String> {
    harness_with_env(&[])
}

/// Like [`harness`], with extra environment for `scripts/control-plane` when this call
/// starts it (e.g. `APISERVER_EXTRA_ARGS` for an audit log); ignored once it runs.
pub fn harness_with_env(env: &[(&str, &str)]) -> Result<&'static Harness, String> {
    HARNESS
        .get_or_init(|| Harness::start(env).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(Clone::clone)
}

/// Stops everything the harness started, for binaries that do not go through [`run`].
pub fn shutdown_harness() {
    shutdown();
}

struct ShutdownGuard;
impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        shutdown();
    }
}

/// Stops everything the harness started. Idempotent.
fn shutdown() {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Some(Ok(h)) = HARNESS.get() else { return };
    if DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    if let Some(Ok(e)) = h.emulator.get() {
        e.stop();
    }
    if std::env::var_os("E2E_KEEP").is_some() {
        eprintln!(
            "E2E_KEEP: control plane left running (the next e2e run stops it).\n  export KUBECONFIG={}\n  scripts/control-plane stop {}",
            h.control_plane.kubeconfig.display(),
            h.control_plane.dir.display()
        );
        return;
    }
    h.control_plane.stop();
    let _ = std::fs::remove_dir_all(&h.run_dir);
}

fn install_signal_handler() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        std::thread::spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                let terminated = async {
                    match term.as_mut() {
                        Some(t) => {
                            t.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminated => {}
                }
            });
            eprintln!("e2e: interrupted, stopping the control plane");
            shutdown();
            std::process::exit(130);
        });
    });
}

impl Harness {
    fn start(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e");
        std::fs::create_dir_all(&base)?;
        reap_stale_runs(&base);
        let run_dir = base.join(format!("run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)?;
        std::fs::write(run_dir.join("owner"), std::process::id().to_string())?;

        // With E2E_KEEP the control plane must outlive us: no watchdog.
        let keep = std::env::var_os("E2E_KEEP").is_some();
        let owner = (!keep).then(std::process::id);
        let control_plane = ControlPlane::start_with_env(&run_dir.join("cp"), owner, env)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let client = runtime.block_on(control_plane.client())?;
        eprintln!(
            "e2e: control plane ready in {:.1?} (KUBECONFIG={}, repo {})",
            t0.elapsed(),
            control_plane.kubeconfig.display(),
            repo_root().display()
        );
        Ok(Self {
            runtime,
            control_plane,
            client,
            run_dir,
            emulator: OnceLock::new(),
            tools: OnceLock::new(),
            crds: tokio::sync::OnceCell::new(),
        })
    }

    /// The Kinde emulator of this run, started on first use.
    pub fn emulator(&self) -> anyhow::Result<&Emulator> {
        self.emulator
            .get_or_init(|| Emulator::start(&self.run_dir).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("starting the Kinde emulator: {e}"))
    }

    /// Directory holding the fetched `kubectl` and `helm` (`scripts/fetch-tools`).
    pub fn tools_dir(&self) -> anyhow::Result<&Path> {
        self.tools
            .get_or_init(|| {
                let out = Command::new(repo_path("scripts/fetch-tools"))
                    .stderr(Stdio::inherit())
                    .output()
                    .map_err(|e| format!("running scripts/fetch-tools: {e}"))?;
                if !out.status.success() {
                    return Err(format!("scripts/fetch-tools failed: {}", out.status));
                }
                Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
            })
            .as_deref()
            .map_err(|e| anyhow!("{e}"))
    }

    /// The kubectl binary (`$KUBECTL`, else the fetched one; never the machine's).
    pub fn kubectl_bin(&self) -> anyhow::Result<PathBuf> {
        match std::env::var_os("KUBECTL") {
            Some(k) => Ok(PathBuf::from(k)),
            None => Ok(self.tools_dir()?.join("kubectl")),
        }
    }

    /// The helm binary (`$HELM`, else the fetched one).
    pub fn helm_bin(&self) -> anyhow::Result<PathBuf> {
        match std::env::var_os("HELM") {
            Some(k) => Ok(PathBuf::from(k)),
            None => Ok(self.tools_dir()?.join("helm")),
        }
    }

    /// Installs `crds/` once per run (`kubectl apply --validate=false -f crds/`) and waits
    /// until every CRD is `Established`; returns the CRD names. Concurrent callers wait for
    /// the first; a failure is reported to every caller.
    pub async fn ensure_crds(&self) -> anyhow::Result<&[String]> {
        self.crds
            .get_or_try_init(|| async {
                let names = install_crds(self).await?;
                wait_crds_established(&self.client, &names, Duration::from_secs(60)).await?;
                Ok::<_, anyhow::Error>(names)
            })
            .await
            .map(Vec::as_slice)
    }
}

/// Stops control planes recorded by earlier runs whose test process is gone.
fn reap_stale_runs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        // `run-<pid of the test process>`: the name says whose it is, so a run being set up
        // right now by a concurrent test process is never mistaken for a leftover.
        let owner = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("run-"))
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(owner) = owner else { continue };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        eprintln!(
            "e2e: stopping leftovers of a previous run in {}",
            dir.display()
        );
        let _ = Command::new(repo_path("scripts/control-plane"))
            .arg("stop")
            .arg(dir.join("cp"))
            .status();
        kill_recorded_children(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Records a subprocess (emulator, operator) in the run dir, so that a later run can kill it
/// should this one die without cleaning up (SIGKILL).
fn record_child(run_dir: &Path, pid: u32) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("children"))
    {
        let _ = writeln!(f, "{pid}");
    }
}

/// Kills the recorded subprocesses of a dead run that still run the operator binary.
fn kill_recorded_children(run_dir: &Path) {
    let pids = std::fs::read_to_string(run_dir.join("children")).unwrap_or_default();
    for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if argv0 == OPERATOR_BIN.as_bytes() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Control plane
// ---------------------------------------------------------------------------------------

/// A control plane started by `scripts/control-plane start DIR`.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

impl ControlPlane {
    /// Starts a control plane in `dir`. With `owner`, it stops itself when that pid exits.
    pub fn start(dir: &Path, owner: Option<u32>) -> anyhow::Result<Self> {
        Self::start_with_env(dir, owner, &[])
    }

    /// Like [`ControlPlane::start`], with extra environment for `scripts/control-plane`,
    /// e.g. `[("AUTHZ", "RBAC")]` for a second, RBAC-enforcing control plane (the run's
    /// shared one uses `AlwaysAllow` unless `AUTHZ` is set for the whole run).
    pub fn start_with_env(
        dir: &Path,
        owner: Option<u32>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new(repo_path("scripts/control-plane"));
        cmd.arg("start").arg(dir).stdin(Stdio::null());
        cmd.envs(env.iter().copied());
        if let Some(pid) = owner {
            cmd.env("CONTROL_PLANE_OWNER_PID", pid.to_string());
        }
        let out = cmd.output().context("running scripts/control-plane")?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let summary = stderr
                .lines()
                .find(|l| l.starts_with("control-plane: "))
                .unwrap_or("see below");
            bail!(
                "scripts/control-plane start {} failed ({}): {summary}\n{stderr}",
                dir.display(),
                out.status,
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            kubeconfig: dir.join("kubeconfig"),
        })
    }

    /// Stops it (idempotent).
    pub fn stop(&self) {
        match Command::new(repo_path("scripts/control-plane"))
            .arg("stop")
            .arg(&self.dir)
            .status()
        {
            Ok(s) if s.success() => {}
            other => eprintln!("e2e: stopping the control plane: {other:?}"),
        }
    }

    /// A new client from the kubeconfig (create it on the runtime that will use it).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The tail of one of its logs (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        log_tail(&self.dir.join(format!("{name}.log")), lines)
    }
}

/// A control plane a test started itself is stopped when it goes out of scope (the run's
/// shared one lives in a static and is stopped by [`run`]).
impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Kinde emulator
// ---------------------------------------------------------------------------------------

/// Emulator flags answering "no such application / API / scope" with 404 instead of 400
/// `*_NOT_FOUND`, as Kinde may: drift and deletion tests run in both modes.
pub const NOT_FOUND_404: &[&str] = &["--not-found-status", "404"];

/// Suffix of the registered name of a test's 404-mode variant.
pub const NOT_FOUND_404_SUFFIX: &str = "_404";

/// The Kinde emulator, `kinde-m2m-operator emulator --listen 127.0.0.1:0`, as a subprocess.
pub struct Emulator {
    /// Base URL, e.g. `http://127.0.0.1:41234` (what it printed as `KINDE_EMULATOR_URL=`).
    pub url: String,
    pub log: PathBuf,
    child: Mutex<Child>,
}

impl Emulator {
    /// Starts an emulator logging to `dir/emulator-<random>.log` (pass the run dir: its pid is
    /// recorded there for leftover cleanup). Waits (30 s at most) for its
    /// `KINDE_EMULATOR_URL=` line.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, &[])
    }

    /// Like [`Emulator::start`], with more `kinde-m2m-operator emulator` flags (e.g.
    /// [`NOT_FOUND_404`]).
    pub fn start_with(dir: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        let stderr_path = dir.join(format!("emulator-{}.log", fastrand::u32(..)));
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut child = Command::new(operator_bin())
            .args(["emulator", "--listen", "127.0.0.1:0"])
            .args(extra_args)
            .env("KINDE_CLIENT_ID", KINDE_CLIENT_ID)
            .env("KINDE_CLIENT_SECRET", KINDE_CLIENT_SECRET)
            .env("LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning the emulator")?;
        record_child(dir, child.id());
        let stdout = child.stdout.take().context("emulator stdout")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let log_path = stderr_path.clone();
        // Reads the URL line, then keeps draining stdout into the log so the emulator never
        // blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("KINDE_EMULATOR_URL=")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.trim().to_string());
                    continue;
                }
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log_path) {
                    let _ = writeln!(f, "[stdout] {line}");
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => Ok(Self {
                url,
                log: stderr_path,
                child: Mutex::new(child),
            }),
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the emulator printed no KINDE_EMULATOR_URL= line (exit status: {status:?}); log tail:\n{}",
                    log_tail(&stderr_path, 30)
                )
            }
        }
    }

    /// Kills it (idempotent).
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Emulator {
    /// Calls the emulator's control surface (`/_emulator/<path>`); returns the JSON answer.
    pub async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}/_emulator/{}", self.url, path.trim_start_matches('/'));
        let mut req = reqwest::Client::new().request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("calling {url}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{url}: HTTP {status}: {text}");
        }
        Ok(if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    /// `GET /_emulator/calls`: `{operation: {calls, writes, statuses}}`.
    pub async fn calls(&self) -> anyhow::Result<serde_json::Value> {
        self.control(reqwest::Method::GET, "calls", None).await
    }

    /// Calls made of `operation` so far.
    pub async fn call_count(&self, operation: &str) -> anyhow::Result<u64> {
        Ok(self.calls().await?[operation]["calls"]
            .as_u64()
            .unwrap_or(0))
    }

    /// Answers with HTTP `status` (e.g. `"404"`) so far, all operations together.
    pub async fn status_total(&self, status: &str) -> anyhow::Result<u64> {
        let calls = self.calls().await?;
        Ok(calls
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| v["statuses"][status].as_u64())
                    .sum()
            })
            .unwrap_or(0))
    }

    /// Checks that the emulator started with `emulator_args` answered "not found" at
    /// least once with its mode's status (404 under [`NOT_FOUND_404`]), so that a test's
    /// 404 variant really went through a 404.
    pub async fn ensure_not_found_answered(&self, emulator_args: &[&str]) -> anyhow::Result<()> {
        let status = if emulator_args == NOT_FOUND_404 {
            "404"
        } else {
            "400"
        };
        let n = self.status_total(status).await?;
        anyhow::ensure!(
            n > 0,
            "the emulator never answered {status}: the test did not reach a not-found answer"
        );
        Ok(())
    }

    /// Mutations performed so far, all operations together.
    pub async fn total_writes(&self) -> anyhow::Result<u64> {
        let calls = self.calls().await?;
        Ok(calls
            .as_object()
            .map(|m| m.values().filter_map(|v| v["writes"].as_u64()).sum())
            .unwrap_or(0))
    }

    /// A Kinde Management API call (`path` like `/api/v1/apis`) with a token of the
    /// operator's management client: changes made in Kinde behind the operator's back.
    /// Fails on a non-2xx answer; returns the JSON body (`Null` when there is none).
    pub async fn mgmt(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let http = reqwest::Client::new();
        let token: serde_json::Value = http
            .post(format!("{}/oauth2/token", self.url))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", KINDE_CLIENT_ID),
                ("client_secret", KINDE_CLIENT_SECRET),
                ("audience", &format!("{}/api", self.url)),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = token["access_token"].as_str().context("no access_token")?;
        let url = format!("{}{path}", self.url);
        let mut req = http.request(method, &url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{url}: HTTP {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// `GET /_emulator/state`: applications and APIs (no secrets).
    pub async fn state(&self) -> anyhow::Result<serde_json::Value> {
        self.control(reqwest::Method::GET, "state", None).await
    }

    /// The Kinde applications in the emulator's state other than the management client.
    pub async fn kinde_apps(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(kinde_apps_of(&self.state().await?))
    }

    /// Injects a fault: `{operation, status?, times?, latency_ms?, drop_response?, body?}`.
    pub async fn fault(&self, fault: serde_json::Value) -> anyhow::Result<()> {
        self.control(reqwest::Method::POST, "faults", Some(fault))
            .await
            .map(drop)
    }

    /// Requests a client-credentials token; `Ok(claims)` on 200, `Err` with Kinde's answer.
    pub async fn token_claims(
        &self,
        client_id: &str,
        client_secret: &str,
        audience: &str,
    ) -> anyhow::Result<std::result::Result<serde_json::Value, String>> {
        let resp = reqwest::Client::new()
            .post(format!("{}/oauth2/token", self.url))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", client_secret),
                ("audience", audience),
            ])
            .send()
            .await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            return Ok(Err(format!("HTTP {status}: {body}")));
        }
        let token = body["access_token"].as_str().context("no access_token")?;
        let payload = token.split('.').nth(1).context("not a JWT")?;
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
        Ok(Ok(serde_json::from_slice(&bytes)?))
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// Per-test context
// ---------------------------------------------------------------------------------------

/// What one test gets: its own namespace, a client, and helpers bound to both.
#[derive(Clone)]
pub struct Ctx {
    pub harness: &'static Harness,
    /// This test's namespace (created for it, deleted after it).
    pub ns: String,
    pub client: kube::Client,
    pub test_name: String,
}

impl Ctx {
    async fn new(harness: &'static Harness, test_name: &str) -> anyhow::Result<Self> {
        let ns = create_namespace(&harness.client, test_name, &[]).await?;
        Ok(Self {
            harness,
            ns,
            client: harness.client.clone(),
            test_name: test_name.to_string(),
        })
    }

    /// A namespaced API in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// A namespaced API in namespace `ns` (another of this test's namespaces).
    pub fn api_in<K>(&self, ns: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Server-side applies fixtures ([`fixtures`]) into this test's namespace, in order.
    pub async fn apply(&self, objects: &[&dyn fixtures::Apply]) -> anyhow::Result<()> {
        fixtures::apply(&self.client, &self.ns, objects).await
    }

    /// Like [`Ctx::apply`], into namespace `ns`.
    pub async fn apply_in(&self, ns: &str, objects: &[&dyn fixtures::Apply]) -> anyhow::Result<()> {
        fixtures::apply(&self.client, ns, objects).await
    }

    /// The credentials in the Secret of M2MApplication `app` (`<app>-credentials`, the
    /// default name) in this test's namespace; fails while it has no client id.
    pub async fn credentials(&self, app: &str) -> anyhow::Result<Credentials> {
        credentials(&self.api(), &format!("{app}-credentials")).await
    }

    /// Creates another namespace for this test (e.g. for cross-namespace references),
    /// labelled like the test's own plus `labels`. Deleted with the control plane only:
    /// delete it in the test if it matters.
    pub async fn extra_namespace(&self, labels: &[(&str, &str)]) -> anyhow::Result<String> {
        create_namespace(&self.client, &self.test_name, labels).await
    }

    /// `kubectl --namespace <ns> ARGS` with the control plane's kubeconfig.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<KubectlOutput> {
        let mut full = vec!["--namespace", self.ns.as_str()];
        full.extend_from_slice(args);
        kubectl(self.harness, &full, None).await
    }

    /// Like [`Ctx::kubectl`], with `stdin` fed to the command (e.g. `apply -f -`).
    pub async fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<KubectlOutput> {
        let mut full = vec!["--namespace", self.ns.as_str()];
        full.extend_from_slice(args);
        kubectl(self.harness, &full, Some(stdin)).await
    }

    /// Starts `kinde-m2m-operator ARGS` (e.g. `["run", "--namespace", &ctx.ns]`) against
    /// this run's control plane and emulator; killed when the handle drops.
    pub fn start_operator(&self, args: &[&str]) -> anyhow::Result<Operator> {
        Operator::start(self.harness, &self.test_name, args)
    }

    /// A Kinde emulator of this test's own (isolated state and call counters).
    pub fn own_emulator(&self) -> anyhow::Result<Emulator> {
        Emulator::start(&self.harness.run_dir)
    }

    /// Like [`Ctx::own_emulator`], with more emulator flags (e.g. [`NOT_FOUND_404`]).
    pub fn own_emulator_with(&self, extra_args: &[&str]) -> anyhow::Result<Emulator> {
        Emulator::start_with(&self.harness.run_dir, extra_args)
    }

    /// Installs the CRDs (once per run), starts a Kinde emulator of this test's own and an
    /// operator on it ([`Ctx::run_operator`]).
    pub async fn own_emulator_and_operator(
        &self,
        extra_namespaces: &[&str],
        resync: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<(Emulator, Operator)> {
        self.harness.ensure_crds().await?;
        let emulator = self.own_emulator()?;
        let operator = self.run_operator(&emulator, extra_namespaces, resync, extra_args)?;
        Ok((emulator, operator))
    }

    /// `kinde-m2m-operator run` against `emulator`, watching this test's namespace plus
    /// `extra_namespaces`, without leader election, metrics on a free port, resync
    /// `resync`; `extra_args` are appended. Killed when the handle drops.
    pub fn run_operator(
        &self,
        emulator: &Emulator,
        extra_namespaces: &[&str],
        resync: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Operator> {
        self.run_operator_listening(
            emulator,
            "127.0.0.1:0",
            extra_namespaces,
            resync,
            extra_args,
        )
    }

    /// Like [`Ctx::run_operator`], with `/healthz`, `/readyz` and `/metrics` on `listen`
    /// (clap refuses a second `--listen` in `extra_args`).
    pub fn run_operator_listening(
        &self,
        emulator: &Emulator,
        listen: &str,
        extra_namespaces: &[&str],
        resync: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Operator> {
        let mut args = vec![
            "run",
            "--leader-election=false",
            "--listen",
            listen,
            "--resync-period",
            resync,
            "--namespace",
            self.ns.as_str(),
        ];
        for ns in extra_namespaces {
            args.extend(["--namespace", ns]);
        }
        args.extend_from_slice(extra_args);
        Operator::start_with(self.harness, &self.test_name, &emulator.url, &args)
    }

    /// `kinde-m2m-operator run` against `emulator` watching this test's namespace, as a
    /// leader-election candidate for the Lease `lease` in this namespace. `kubeconfig`
    /// replaces the run's (e.g. one through a [`proxy::FreezableProxy`]); `env` is added
    /// (e.g. `POD_NAME`, the start of the candidate's identity). Killed when dropped.
    pub fn run_operator_electing(
        &self,
        emulator: &Emulator,
        lease: &str,
        kubeconfig: Option<&Path>,
        env: &[(&str, &str)],
        extra_args: &[&str],
    ) -> anyhow::Result<Operator> {
        let mut args = vec![
            "run",
            "--leader-election=true",
            "--lease-namespace",
            self.ns.as_str(),
            "--lease-name",
            lease,
            "--listen",
            "127.0.0.1:0",
            "--namespace",
            self.ns.as_str(),
        ];
        args.extend_from_slice(extra_args);
        let kubeconfig = kubeconfig.unwrap_or(&self.harness.control_plane.kubeconfig);
        Operator::spawn_with(
            self.harness,
            &self.test_name,
            Some(&emulator.url),
            &args,
            kubeconfig,
            env,
        )
    }
}

/// Creates a uniquely named namespace for `test_name`, labelled `E2E_LABEL=<test>` + `labels`.
pub async fn create_namespace(
    client: &kube::Client,
    test_name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<String> {
    let slug: String = test_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let slug = slug.trim_matches('-');
    let slug = &slug[..slug.len().min(40)];
    let suffix: String = (0..5).map(|_| fastrand::lowercase()).collect();
    let name = format!("e2e-{}-{suffix}", slug.trim_end_matches('-'));
    let mut all_labels = std::collections::BTreeMap::new();
    all_labels.insert(E2E_LABEL.to_string(), label_value(slug));
    for (k, v) in labels {
        all_labels.insert(k.to_string(), v.to_string());
    }
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(all_labels),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(name)
}

fn label_value(s: &str) -> String {
    let v: String = s.chars().take(63).collect();
    v.trim_matches('-').to_string()
}

// ---------------------------------------------------------------------------------------
// kubectl
// ---------------------------------------------------------------------------------------

/// Result of a kubectl run.
#[derive(Debug)]
pub struct KubectlOutput {
    pub command: String,
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    /// Stdout when kubectl succeeded, else an error with the command and its stderr.
    pub fn success(self) -> anyhow::Result<String> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            bail!(
                "`{}` failed ({}):\n{}{}",
                self.command,
                self.status,
                self.stderr,
                self.stdout
            )
        }
    }

    /// Stderr when kubectl failed, else an error (for commands that must be refused).
    pub fn failure(self) -> anyhow::Result<String> {
        if self.status.success() {
            bail!(
                "`{}` succeeded but was expected to fail; stdout:\n{}",
                self.command,
                self.stdout
            )
        } else {
            Ok(self.stderr)
        }
    }
}

/// `kubectl ARGS` with the run's kubeconfig (no namespace added).
pub async fn kubectl(
    harness: &Harness,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<KubectlOutput> {
    use tokio::io::AsyncWriteExt;
    let bin = harness.kubectl_bin()?;
    let mut child = tokio::process::Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", &harness.control_plane.kubeconfig)
        .env_remove("KUBECTL_EXTERNAL_DIFF")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("kubectl stdin")?;
        pipe.write_all(input.as_bytes()).await?;
        drop(pipe);
    }
    let out = child.wait_with_output().await?;
    Ok(KubectlOutput {
        command: format!("kubectl {}", args.join(" ")),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/// A port on 127.0.0.1 that was free a moment ago (for a listener started next).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The sum of the samples `name{labels...}` (other labels free) on the Prometheus text
/// page at `url` (an operator's `/metrics`), if there is any.
pub async fn metric(url: &str, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Option<f64>> {
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').context("metric line")?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            *sum.get_or_insert(0.0) += value.parse::<f64>()?;
        }
    }
    Ok(sum)
}

/// Polls `check` (every 200 ms) until it returns `Ok(Some(v))`, then returns `v`.
/// `Ok(None)` and `Err(_)` both mean "not yet"; on timeout the error names `what` and
/// carries the last error or "still not" state, so a failure says what was observed.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(match last {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// CRDs
// ---------------------------------------------------------------------------------------

/// The CRD manifests shipped in `crds/`, sorted.
pub fn crd_files() -> anyhow::Result<Vec<PathBuf>> {
    yaml_files(&repo_path("crds"))
}

/// `*.yaml`/`*.yml` files under `dir` (recursively), sorted.
pub fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Installs `crds/` the way the README tells v1.20 users to,
/// `kubectl apply --validate=false -f crds/`, and returns the CRD names.
///
/// Not server-side apply: v1.20's SSA refuses a CRD that carries `x-kubernetes-validations`
/// ("field not declared in schema"), while a plain create/update drops the field.
async fn install_crds(h: &Harness) -> anyhow::Result<Vec<String>> {
    let dir = repo_path("crds");
    ensure_nonempty(&crd_files()?, &dir)?;
    let out = kubectl(
        h,
        &[
            "apply",
            "--validate=false",
            "-f",
            &dir.to_string_lossy(),
            "-o",
            "name",
        ],
        None,
    )
    .await?
    .success()?;
    Ok(out
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("customresourcedefinition.apiextensions.k8s.io/")
        })
        .map(str::to_string)
        .collect())
}

fn ensure_nonempty(files: &[PathBuf], dir: &Path) -> anyhow::Result<()> {
    if files.is_empty() {
        bail!("no CRD manifests in {}", dir.display());
    }
    Ok(())
}

/// Waits until every named CRD has `Established=True`.
pub async fn wait_crds_established(
    client: &kube::Client,
    names: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for name in names {
        wait_for(&format!("CRD {name} Established"), timeout, || async {
            let crd = api.get(name).await?;
            let conds = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            let established = conds
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                Ok(Some(()))
            } else {
                Err(anyhow!("conditions: {conds:?}"))
            }
        })
        .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The operator (for later issues: `kinde-m2m-operator run` is not written yet)
// ---------------------------------------------------------------------------------------

/// A running `kinde-m2m-operator` subprocess; killed on drop. Logs go to
/// `<run dir>/operator-<test>-<n>.log`.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
}

impl Operator {
    /// Starts `kinde-m2m-operator ARGS` with `KUBECONFIG` set to the run's control plane and,
    /// when the first argument is `run`, `KINDE_DOMAIN`/`KINDE_CLIENT_ID`/`KINDE_CLIENT_SECRET`
    /// pointing at the run's emulator.
    pub fn start(harness: &Harness, test_name: &str, args: &[&str]) -> anyhow::Result<Self> {
        let url = if args.first() == Some(&"run") {
            Some(harness.emulator()?.url.clone())
        } else {
            None
        };
        Self::spawn(harness, test_name, url.as_deref(), args)
    }

    /// Like [`Operator::start`], with the operator pointed at `emulator_url`.
    pub fn start_with(
        harness: &Harness,
        test_name: &str,
        emulator_url: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(harness, test_name, Some(emulator_url), args)
    }

    /// Like [`Operator::start_with`], with `env` added last (it overrides the defaults,
    /// e.g. `RUST_LOG`).
    pub fn start_env(
        harness: &Harness,
        test_name: &str,
        emulator_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let kubeconfig = harness.control_plane.kubeconfig.clone();
        Self::spawn_with(
            harness,
            test_name,
            Some(emulator_url),
            args,
            &kubeconfig,
            env,
        )
    }

    /// Like [`Operator::start_with`], against another control plane (`kubeconfig`), e.g.
    /// a private one a test may break (delete CRDs) without touching the shared one.
    pub fn start_in(
        harness: &Harness,
        test_name: &str,
        kubeconfig: &Path,
        emulator_url: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn_in(harness, test_name, kubeconfig, Some(emulator_url), args)
    }

    fn spawn(
        harness: &Harness,
        test_name: &str,
        emulator_url: Option<&str>,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let kubeconfig = harness.control_plane.kubeconfig.clone();
        Self::spawn_with(harness, test_name, emulator_url, args, &kubeconfig, &[])
    }

    fn spawn_in(
        harness: &Harness,
        test_name: &str,
        kubeconfig: &Path,
        emulator_url: Option<&str>,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn_with(harness, test_name, emulator_url, args, kubeconfig, &[])
    }

    fn spawn_with(
        harness: &Harness,
        test_name: &str,
        emulator_url: Option<&str>,
        args: &[&str],
        kubeconfig: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log = harness
            .run_dir
            .join(format!("operator-{test_name}-{}.log", fastrand::u32(..)));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(operator_bin());
        cmd.args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        if let Some(url) = emulator_url {
            cmd.env("KINDE_DOMAIN", url)
                .env("KINDE_CLIENT_ID", KINDE_CLIENT_ID)
                .env("KINDE_CLIENT_SECRET", KINDE_CLIENT_SECRET)
                .env("RUST_LOG", "info,kinde_m2m_operator=debug");
        }
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().context("spawning the operator")?;
        record_child(&harness.run_dir, child.id());
        Ok(Self { child, log })
    }

    /// The last `lines` lines of its log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// `result`, with the tail of this operator's log added to an error.
    pub fn with_log<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        result.map_err(|e| e.context(format!("operator log tail:\n{}", self.log_tail(40))))
    }
}

impl Operator {
    /// SIGKILLs the operator (crash tests) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How it ended, once it has (reaped here); `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id (for SIGTERM tests).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

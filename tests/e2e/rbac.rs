//! The chart's RBAC, end to end: a control plane of its own with RBAC authorization (plus
//! audit logging and the `OwnerReferencesPermissionEnforcement` admission plugin, as on
//! clusters that enforce ownerReference permissions), the chart
//! installed with helm (CRDs included), and the operator binary run locally with a
//! kubeconfig holding the chart ServiceAccount's token: the very identity its pod would
//! have (the control plane has no kubelet). Every controller behaviour is exercised; then
//! the audit log shows the operator was never refused and used every verb it is granted,
//! and a table of `kubectl auth can-i --as=<the ServiceAccount>` answers pins what it may
//! and may not do. Once cluster-wide (`watchNamespaces` empty), once namespaced.
//!
//! With `OwnerReferencesPermissionEnforcement` on, setting `blockOwnerDeletion` on the
//! Secret's ownerReference would need `update` on `m2mapplications/finalizers`; the operator
//! does not set it and the chart does not grant it, so this run proves both stay in step.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt as _;
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::{Value, json};

use kinde_m2m_operator::crd::{
    ApiGrant, ApiRegistration, ClusterKindeConnection, KindeConnection, M2MApplication,
    ROTATE_REQUESTED_AT_ANNOTATION,
};

use crate::chart::{self, CHART};
use crate::support::fixtures::{GrantFixture as _, api_grant, m2m_application};
use crate::support::{
    self, Credentials, Ctx, E2eTest, Emulator, KubectlOutput, annotate, wait_condition, wait_for,
    wait_gone,
};

const RELEASE: &str = "kmo";
const RELEASE_NS: &str = "kinde-system";
const SA: &str = "kmo-kinde-m2m-operator";
const SA_USER: &str = "system:serviceaccount:kinde-system:kmo-kinde-m2m-operator";
const AUDIENCE: &str = "https://api.example.com";
const LEASE: &str = "kinde-m2m-operator";
const POD_NAME: &str = "rbac-e2e";
/// Namespaced install: the example namespaces plus one whose grants the API refuses.
const WATCHED: [&str; 4] = ["platform", "acme", "globex", "initech"];
const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    ClusterWide,
    Namespaced,
}

impl Mode {
    fn slug(self) -> &'static str {
        match self {
            Mode::ClusterWide => "cluster-wide",
            Mode::Namespaced => "namespaced",
        }
    }
}

pub fn tests() -> Vec<E2eTest> {
    vec![
        support::test("rbac::cluster_wide_install", cluster_wide_install),
        support::test("rbac::namespaced_install", namespaced_install),
    ]
}

// ---------------------------------------------------------------------------------------
// A control plane of this test's own, with RBAC
// ---------------------------------------------------------------------------------------

/// `scripts/control-plane` in `dir` with `AUTHZ=RBAC`; stopped on drop (also when the test
/// fails or times out), and by the script's watchdog should the test process die.
struct RbacCluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    audit_log: PathBuf,
    client: kube::Client,
    kubectl: PathBuf,
}

impl RbacCluster {
    async fn start(h: &support::Harness, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let policy = dir.join("audit-policy.yaml");
        std::fs::write(
            &policy,
            format!(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n    users: [\"{SA_USER}\"]\n  - level: None\n"
            ),
        )?;
        let audit_log = dir.join("audit.jsonl");
        let extra = format!(
            "--audit-policy-file={} --audit-log-path={} --audit-log-format=json \
             --enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            policy.display(),
            audit_log.display()
        );
        let out = tokio::process::Command::new(support::repo_path("scripts/control-plane"))
            .arg("start")
            .arg(dir)
            .env("AUTHZ", "RBAC")
            .env("APISERVER_EXTRA_ARGS", extra)
            .env("CONTROL_PLANE_OWNER_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .output()
            .await
            .context("running scripts/control-plane")?;
        let kubeconfig = dir.join("kubeconfig");
        // From here on, Drop stops whatever was started.
        let stopper = Stopper(dir.to_path_buf());
        if !out.status.success() {
            bail!(
                "scripts/control-plane start {} failed ({}):\n{}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &Default::default(),
        )
        .await?;
        let client = kube::Client::try_from(config)?;
        std::mem::forget(stopper);
        Ok(Self {
            dir: dir.to_path_buf(),
            kubeconfig,
            audit_log,
            client,
            kubectl: h.kubectl_bin()?,
        })
    }

    /// `kubectl ARGS` as the cluster's admin.
    async fn kubectl(&self, args: &[&str]) -> anyhow::Result<KubectlOutput> {
        let out = tokio::process::Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await?;
        Ok(KubectlOutput {
            command: format!("kubectl {}", args.join(" ")),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn server(&self) -> anyhow::Result<String> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        kc.clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .context("no server in the kubeconfig")
    }
}

impl Drop for RbacCluster {
    fn drop(&mut self) {
        Stopper(self.dir.clone()).stop();
    }
}

struct Stopper(PathBuf);

impl Stopper {
    fn stop(&self) {
        let _ = Command::new(support::repo_path("scripts/control-plane"))
            .arg("stop")
            .arg(&self.0)
            .stdin(Stdio::null())
            .status();
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// The operator, as the chart's ServiceAccount
// ---------------------------------------------------------------------------------------

/// `kinde-m2m-operator run` with the ServiceAccount's kubeconfig; killed on drop.
struct OperatorProcess {
    child: Child,
    log: PathBuf,
    health: String,
}

impl OperatorProcess {
    /// For failure messages: the last warnings, errors and panics, then the last lines.
    fn log_excerpt(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let notable: Vec<&str> = all
            .iter()
            .copied()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
            .collect();
        format!(
            "last warnings/errors:\n{}\nlast lines:\n{}",
            notable[notable.len().saturating_sub(8)..].join("\n"),
            all[all.len().saturating_sub(12)..].join("\n")
        )
    }

    /// Fails once the process has exited (it must run until told to stop).
    fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("the operator exited ({status})"),
        }
    }

    /// SIGTERM, then waits for a clean exit.
    async fn terminate(&mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await?;
        ensure!(status.success(), "kill -TERM {pid}: {status}");
        let child = &mut self.child;
        let exit = wait_for("the operator to exit after SIGTERM", WAIT, || {
            let r = child.try_wait().map_err(anyhow::Error::from);
            async move { r }
        })
        .await?;
        ensure!(exit.success(), "operator exit status after SIGTERM: {exit}");
        Ok(())
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

async fn cluster_wide_install(ctx: Ctx) -> anyhow::Result<()> {
    run(ctx, Mode::ClusterWide).await
}

async fn namespaced_install(ctx: Ctx) -> anyhow::Result<()> {
    run(ctx, Mode::Namespaced).await
}

async fn run(ctx: Ctx, mode: Mode) -> anyhow::Result<()> {
    let h = ctx.harness;
    let dir = h.run_dir.join(format!("rbac-{}", mode.slug()));
    let t0 = Instant::now();
    let cp = RbacCluster::start(h, &dir).await?;
    let t_cp = t0.elapsed();
    eprintln!(
        "rbac[{}]: RBAC control plane ready in {t_cp:.1?}",
        mode.slug()
    );
    let result = scenario(&ctx, &cp, mode).await;
    eprintln!(
        "rbac[{}]: total {:.1?} (control plane {t_cp:.1?})",
        mode.slug(),
        t0.elapsed()
    );
    drop(cp);
    result
}

async fn scenario(ctx: &Ctx, cp: &RbacCluster, mode: Mode) -> anyhow::Result<()> {
    let tag = mode.slug();
    let c = &cp.client;
    let watched: Vec<&str> = match mode {
        Mode::ClusterWide => vec![],
        Mode::Namespaced => WATCHED.to_vec(),
    };

    // Namespaces first (a namespaced install puts Roles in them).
    for file in [
        "examples/platform/namespace.yaml",
        "examples/customers/acme/namespace.yaml",
        "examples/customers/globex/namespace.yaml",
    ] {
        let path = support::repo_path(file);
        cp.kubectl(&["apply", "-f", &path.to_string_lossy()])
            .await?
            .success()?;
    }
    let namespaces = Api::<Namespace>::all(c.clone());
    for ns in [RELEASE_NS, "initech", "outsider"] {
        namespaces
            .create(&PostParams::default(), &namespace(ns))
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
    }
    let crds = Api::<CustomResourceDefinition>::all(c.clone());
    for name in chart::crd_names() {
        ensure!(
            crds.get_opt(&name).await?.is_none(),
            "{name} exists before the install"
        );
    }
    // The operator's own Kinde credentials, as the chart expects them.
    create_credentials_secret(
        c,
        RELEASE_NS,
        "kinde-operator-credentials",
        ("KINDE_CLIENT_ID", "KINDE_CLIENT_SECRET"),
    )
    .await?;
    let emulator = Emulator::start(&cp.dir)?;

    // helm install (CRDs from the chart's crds/).
    let domain = format!("kinde.domain={}", emulator.url);
    let watch = format!("watchNamespaces={{{}}}", watched.join(","));
    let mut args = vec![
        "install",
        RELEASE,
        CHART,
        "--namespace",
        RELEASE_NS,
        "--server-side=false",
        "--set",
        &domain,
        "--set",
        "kinde.existingSecret=kinde-operator-credentials",
    ];
    if mode == Mode::Namespaced {
        args.extend(["--set", &watch]);
    }
    let t0 = Instant::now();
    chart::helm(ctx.harness, Some(&cp.kubeconfig), &args)
        .await?
        .success()?;
    support::wait_crds_established(c, &chart::crd_names(), WAIT).await?;
    eprintln!(
        "rbac[{tag}]: helm install + CRDs Established in {:.1?}",
        t0.elapsed()
    );

    // The ServiceAccount's token (v1.20: the token controller's Secret).
    let sa_kubeconfig = cp.dir.join("sa-kubeconfig");
    let token = sa_token(c).await?;
    std::fs::write(
        &sa_kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    insecure-skip-tls-verify: true\nusers:\n- name: {SA}\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: {SA}\ncurrent-context: c\n",
            cp.server()?
        ),
    )?;

    // The operator, as that ServiceAccount, leader election on, Lease in the release ns.
    let t0 = Instant::now();
    let mut op = start_operator(&cp.dir, &sa_kubeconfig, &emulator, &watched)?;
    let ready = wait_operator_ready(c, &mut op).await;
    let outcome = match ready {
        Ok(()) => {
            eprintln!(
                "rbac[{tag}]: operator Ready (leader) in {:.1?}",
                t0.elapsed()
            );
            behaviours(cp, &emulator, &mut op, mode).await
        }
        Err(e) => Err(e),
    };
    outcome.map_err(|e| {
        e.context(format!(
            "operator log {}:\n{}",
            op.log.display(),
            op.log_excerpt()
        ))
    })?;

    let t0 = Instant::now();
    audit(cp, mode).await?;
    can_i_table(cp, mode).await?;
    tenant_can_i_tables(cp, tag).await?;
    eprintln!("rbac[{tag}]: audit + can-i checks in {:.1?}", t0.elapsed());
    Ok(())
}

/// Secret `ns/name` holding the emulator's management client ID and secret under `keys`.
async fn create_credentials_secret(
    c: &kube::Client,
    ns: &str,
    name: &str,
    (id_key, secret_key): (&str, &str),
) -> anyhow::Result<()> {
    let data = [
        (id_key, support::KINDE_CLIENT_ID),
        (secret_key, support::KINDE_CLIENT_SECRET),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(data.into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| format!("creating Secret {ns}/{name}"))?;
    Ok(())
}

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn sa_token(c: &kube::Client) -> anyhow::Result<String> {
    let sas = Api::<ServiceAccount>::namespaced(c.clone(), RELEASE_NS);
    let secrets = Api::<Secret>::namespaced(c.clone(), RELEASE_NS);
    wait_for("the ServiceAccount's token Secret", WAIT, || async {
        let sa = sas.get(SA).await?;
        let Some(name) = sa
            .secrets
            .unwrap_or_default()
            .into_iter()
            .find_map(|r| r.name)
        else {
            return Ok(None);
        };
        let s = secrets.get(&name).await?;
        Ok(s.data
            .and_then(|d| d.get("token").cloned())
            .map(|t| String::from_utf8_lossy(&t.0).into_owned()))
    })
    .await
}

fn start_operator(
    dir: &Path,
    kubeconfig: &Path,
    emulator: &Emulator,
    watched: &[&str],
) -> anyhow::Result<OperatorProcess> {
    let port = support::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let log = dir.join(format!("operator-{}.log", fastrand::u32(..)));
    let file = std::fs::File::create(&log)?;
    let mut args = vec![
        "run",
        "--listen",
        &listen,
        "--leader-election=true",
        "--lease-namespace",
        RELEASE_NS,
        "--lease-name",
        LEASE,
        "--resync-period",
        "10m",
        // The connections here point at the emulator (loopback), not at *.kinde.com.
        "--kinde-connection-domain",
        "http://127.0.0.1:*",
    ];
    for ns in watched {
        args.extend(["--namespace", ns]);
    }
    let child = Command::new(support::OPERATOR_BIN)
        .args(&args)
        .env("KUBECONFIG", kubeconfig)
        .env("KINDE_DOMAIN", &emulator.url)
        .env("KINDE_CLIENT_ID", support::KINDE_CLIENT_ID)
        .env("KINDE_CLIENT_SECRET", support::KINDE_CLIENT_SECRET)
        .env("LOG_FORMAT", "text")
        .env("RUST_LOG", "info,kinde_m2m_operator=debug")
        .env("POD_NAME", POD_NAME)
        .env("RUST_BACKTRACE", "0")
        .env_remove("POD_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("spawning the operator")?;
    Ok(OperatorProcess {
        child,
        log,
        health: format!("http://{listen}"),
    })
}

/// Leader (its Lease, in the release namespace) and `/readyz` OK (caches filled).
async fn wait_operator_ready(c: &kube::Client, op: &mut OperatorProcess) -> anyhow::Result<()> {
    let leases = Api::<Lease>::namespaced(c.clone(), RELEASE_NS);
    let exited = std::sync::Mutex::new(op);
    wait_for("the operator to hold the Lease", WAIT, || async {
        if let Err(e) = exited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check_running()
        {
            // Not worth waiting for.
            return Ok(Some(Err(e)));
        }
        let holder = leases
            .get_opt(LEASE)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity);
        Ok(holder.filter(|h| h.starts_with(POD_NAME)).map(|_| Ok(())))
    })
    .await??;
    let op = exited.into_inner().unwrap_or_else(|p| p.into_inner());
    let url = format!("{}/readyz", op.health);
    wait_for("/readyz to answer 200", WAIT, || async {
        let resp = reqwest::get(&url).await?;
        Ok(resp.status().is_success().then_some(()))
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Controller behaviours
// ---------------------------------------------------------------------------------------

/// Waits for Ready with `status` (and `reason`, if given) of `ns/name`.
async fn wait_ready<K: support::Kind>(
    c: &kube::Client,
    ns: &str,
    name: &str,
    status: &str,
    reason: Option<&str>,
) -> anyhow::Result<K> {
    wait_condition(
        &Api::namespaced(c.clone(), ns),
        name,
        "Ready",
        status,
        reason,
    )
    .await
}

async fn behaviours(
    cp: &RbacCluster,
    emulator: &Emulator,
    op: &mut OperatorProcess,
    mode: Mode,
) -> anyhow::Result<()> {
    let c = &cp.client;
    let tag = mode.slug();
    let t0 = Instant::now();

    // The examples: one API (grantPolicy Selector), two customers.
    for dir in [
        "examples/platform",
        "examples/customers/acme",
        "examples/customers/globex",
    ] {
        let path = support::repo_path(dir);
        cp.kubectl(&["apply", "-k", &path.to_string_lossy()])
            .await?
            .success()?;
    }
    wait_ready::<ApiRegistration>(c, "platform", "example-api", "True", None).await?;
    for ns in ["acme", "globex"] {
        wait_ready::<M2MApplication>(c, ns, ns, "True", None).await?;
        wait_ready::<ApiGrant>(c, ns, &format!("{ns}-example-api"), "True", None).await?;
    }
    eprintln!("rbac[{tag}]: examples Ready in {:.1?}", t0.elapsed());

    // Credentials from a customer Secret work, with the granted scopes.
    let acme_secrets = Api::<Secret>::namespaced(c.clone(), "acme");
    let acme = wait_for("acme's Secret to list the audience", WAIT, || async {
        let cr = support::credentials(&acme_secrets, "acme-credentials").await?;
        Ok((cr.audience == AUDIENCE).then_some(cr))
    })
    .await?;
    let claims = emulator
        .token_claims(&acme.client_id, &acme.client_secret, AUDIENCE)
        .await?
        .map_err(|e| anyhow!("acme's token request refused: {e}"))?;
    ensure!(
        claims["scp"] == json!(["read:users"]),
        "acme's scopes: {}",
        claims["scp"]
    );
    let globex = wait_for("globex's Secret to list the audience", WAIT, || async {
        let cr =
            support::credentials(&Api::namespaced(c.clone(), "globex"), "globex-kinde").await?;
        Ok((cr.audience == AUDIENCE).then_some(cr))
    })
    .await?;
    emulator
        .token_claims(&globex.client_id, &globex.client_secret, AUDIENCE)
        .await?
        .map_err(|e| anyhow!("globex's token request refused: {e}"))?;

    // Events recorded (events.k8s.io) by the operator.
    let events = Api::<Event>::namespaced(c.clone(), "acme");
    wait_for("a Created Event in acme", WAIT, || async {
        let list = events.list(&Default::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Created")
                    && e.reporting_controller.as_deref() == Some("kinde-m2m-operator")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("acme")
            })
            .then_some(()))
    })
    .await?;

    // grantPolicy Selector: a namespace without the label is refused (its labels were read).
    support::fixtures::apply(
        c,
        "initech",
        &[
            &m2m_application("initech"),
            &api_grant("initech-example-api", "initech", "example-api")
                .with_api_namespace("platform")
                .with_scopes(&["read:users"]),
        ],
    )
    .await?;
    wait_ready::<ApiGrant>(
        c,
        "initech",
        "initech-example-api",
        "False",
        Some("RefNotPermitted"),
    )
    .await?;

    // Deleting a grant cuts access.
    let globex_grants = Api::<ApiGrant>::namespaced(c.clone(), "globex");
    support::delete(&globex_grants, "globex-example-api").await?;
    wait_for("globex's token request to be refused", WAIT, || async {
        Ok(emulator
            .token_claims(&globex.client_id, &globex.client_secret, AUDIENCE)
            .await?
            .err()
            .map(drop))
    })
    .await?;
    wait_gone(&globex_grants, "globex-example-api").await?;

    // A deleted Secret is recreated.
    let old_uid = acme_secrets.get("acme-credentials").await?.uid();
    acme_secrets
        .delete("acme-credentials", &Default::default())
        .await?;
    let recreated = wait_for("acme-credentials to be recreated", WAIT, || async {
        // A recreated Secret is a placeholder (owner and label only) until it is filled.
        let s = acme_secrets.get("acme-credentials").await?;
        let creds = Credentials::of(&s);
        Ok((s.uid() != old_uid && !creds.client_id.is_empty()).then_some(creds))
    })
    .await?;
    ensure!(
        recreated.client_id == acme.client_id,
        "the recreated Secret holds other credentials"
    );

    // Rotation on request.
    let request = format!("rbac-{}", fastrand::u32(..));
    let apps = Api::<M2MApplication>::namespaced(c.clone(), "acme");
    annotate(
        &apps,
        "acme",
        &[(ROTATE_REQUESTED_AT_ANNOTATION, Some(&request))],
    )
    .await?;
    wait_for("the rotation to be handled", WAIT, || async {
        let app = apps.get("acme").await?;
        let status = app.status.unwrap_or_default();
        Ok((status.last_handled_rotate_request.as_deref() == Some(request.as_str())).then_some(()))
    })
    .await?;
    let rotated = wait_for("acme's Secret to hold the successor", WAIT, || async {
        let cr = support::credentials(&acme_secrets, "acme-credentials").await?;
        Ok((cr.client_id != acme.client_id).then_some(cr))
    })
    .await?;
    emulator
        .token_claims(&rotated.client_id, &rotated.client_secret, AUDIENCE)
        .await?
        .map_err(|e| anyhow!("the successor's token request refused: {e}"))?;

    // ApiRegistration deletion waits while grants reference it, then completes.
    let apis = Api::<ApiRegistration>::namespaced(c.clone(), "platform");
    support::delete(&apis, "example-api").await?;
    wait_ready::<ApiRegistration>(c, "platform", "example-api", "False", Some("InUse")).await?;
    ensure!(
        apis.get_opt("example-api").await?.is_some(),
        "example-api went while grants reference it"
    );
    for (ns, name) in [
        ("acme", "acme-example-api"),
        ("initech", "initech-example-api"),
    ] {
        support::delete(&Api::<ApiGrant>::namespaced(c.clone(), ns), name).await?;
    }
    wait_gone(&apis, "example-api").await?;
    let state = emulator.state().await?;
    ensure!(
        !state["apis"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["audience"] == AUDIENCE),
        "the Kinde API is still there: {}",
        state["apis"]
    );

    connections(c, emulator).await?;
    eprintln!("rbac[{tag}]: connections done in {:.1?}", t0.elapsed());

    // Graceful stop releases the Lease (an update, in the release namespace).
    op.terminate().await?;
    let holder = Api::<Lease>::namespaced(c.clone(), RELEASE_NS)
        .get(LEASE)
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    ensure!(
        holder.is_empty(),
        "Lease still held by {holder:?} after SIGTERM"
    );
    let log = std::fs::read_to_string(&op.log)?;
    for bad in ["Forbidden", "forbidden", "could not publish Event"] {
        ensure!(!log.contains(bad), "the operator log mentions {bad:?}");
    }
    eprintln!("rbac[{tag}]: behaviours done in {:.1?}", t0.elapsed());
    Ok(())
}

/// A tenant's KindeConnection and a ClusterKindeConnection (to the same emulator, as a
/// second business would be): each reads its Secret, connects and reports it in status;
/// an application on each makes the installation hold it (its finalizer, a patch), and
/// once they are gone each deletion finishes.
async fn connections(c: &kube::Client, emulator: &Emulator) -> anyhow::Result<()> {
    create_credentials_secret(
        c,
        "platform",
        "partner-mgmt",
        ("client-id", "client-secret"),
    )
    .await?;
    let tenant: KindeConnection = serde_json::from_value(json!({
        "apiVersion": "m2m.kinde-operator.io/v1alpha1",
        "kind": "KindeConnection",
        "metadata": {"name": "partner"},
        "spec": {"domain": emulator.url, "credentials": {"name": "partner-mgmt"}},
    }))?;
    let tenants = Api::<KindeConnection>::namespaced(c.clone(), "platform");
    tenants.create(&PostParams::default(), &tenant).await?;
    let shared: ClusterKindeConnection = serde_json::from_value(json!({
        "apiVersion": "m2m.kinde-operator.io/v1alpha1",
        "kind": "ClusterKindeConnection",
        "metadata": {"name": "rbac-shared"},
        "spec": {
            "domain": emulator.url,
            "credentials": {"name": "partner-mgmt", "namespace": "platform"},
            "namespaceSelector": {"matchLabels": {"kinde-m2m-operator.io/customer": "true"}},
        },
    }))?;
    let cluster = Api::<ClusterKindeConnection>::all(c.clone());
    cluster.create(&PostParams::default(), &shared).await?;

    wait_ready::<KindeConnection>(c, "platform", "partner", "True", Some("Connected")).await?;
    wait_for(
        "ClusterKindeConnection rbac-shared to connect",
        WAIT,
        || async {
            Ok(support::cluster_connection_ready(&cluster, "rbac-shared")
                .await?
                .filter(|r| r.status == "True" && r.reason == "Connected")
                .map(drop))
        },
    )
    .await?;
    // Its Event: in kube-system, naming the object as it is (without a namespace).
    let system_events = Api::<Event>::namespaced(c.clone(), "kube-system");
    wait_for("a Connected Event about rbac-shared", WAIT, || async {
        let list = system_events.list(&Default::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Connected")
                    && e.regarding.as_ref().is_some_and(|r| {
                        r.name.as_deref() == Some("rbac-shared") && r.namespace.is_none()
                    })
            })
            .then_some(()))
    })
    .await?;
    // An application on each: the connection is held while it is there.
    let users = [
        ("platform", "on-partner", "KindeConnection", "partner"),
        ("acme", "on-shared", "ClusterKindeConnection", "rbac-shared"),
    ];
    for (ns, name, kind, connection) in users {
        let mut app = m2m_application(name);
        app.spec.connection_ref = Some(serde_json::from_value(
            json!({"kind": kind, "name": connection}),
        )?);
        let apps = Api::<M2MApplication>::namespaced(c.clone(), ns);
        apps.create(&PostParams::default(), &app).await?;
        wait_ready::<M2MApplication>(c, ns, name, "True", Some("Reconciled")).await?;
    }
    let held = [
        tenants.get("partner").await?.finalizers().to_vec(),
        cluster.get("rbac-shared").await?.finalizers().to_vec(),
    ];
    ensure!(
        held.iter().all(|f| f.len() == 1),
        "each connection in use is held by this installation only: {held:?}"
    );
    for (ns, name, _, _) in users {
        let apps = Api::<M2MApplication>::namespaced(c.clone(), ns);
        support::delete(&apps, name).await?;
        wait_gone(&apps, name).await?;
    }
    support::delete(&tenants, "partner").await?;
    wait_gone(&tenants, "partner").await?;
    cluster.delete("rbac-shared", &Default::default()).await?;
    wait_for("ClusterKindeConnection rbac-shared to go", WAIT, || async {
        Ok(cluster
            .get_opt("rbac-shared")
            .await?
            .is_none()
            .then_some(()))
    })
    .await
}

// ---------------------------------------------------------------------------------------
// What the operator did (audit log) against what it may do (its roles)
// ---------------------------------------------------------------------------------------

/// Granted, but never seen as a request verb in the audit log, by design.
const GRANTED_NOT_A_REQUEST: [&str; 1] = [
    // An apply that creates a Secret is a PATCH request the API server also authorizes as
    // create (without it a deleted Secret is never recreated: verified).
    "|secrets|create",
];

/// The operator's cluster-scoped kinds: read and written whatever it watches (a namespaced
/// install still serves the ClusterKindeConnections that select its namespaces).
const CLUSTER_SCOPED_KINDS: [&str; 1] = ["clusterkindeconnections"];
const CLUSTER_SCOPED: &str = "(cluster-scoped kind)";

async fn audit(cp: &RbacCluster, mode: Mode) -> anyhow::Result<()> {
    let tag = mode.slug();
    let text = std::fs::read_to_string(&cp.audit_log)
        .with_context(|| format!("reading {}", cp.audit_log.display()))?;
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut refused = Vec::new();
    for line in text.lines() {
        let ev: Value = serde_json::from_str(line)?;
        if ev["user"]["username"] != SA_USER {
            continue;
        }
        let code = ev["responseStatus"]["code"].as_i64().unwrap_or(0);
        let uri = ev["requestURI"].as_str().unwrap_or_default();
        if code == 401 || code == 403 {
            refused.push(format!("{} {uri} -> {code}", ev["verb"]));
        }
        let o = &ev["objectRef"];
        if o.is_null() {
            continue; // non-resource URL
        }
        let base = o["resource"].as_str().unwrap_or_default();
        let mut resource = base.to_string();
        if let Some(sub) = o["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let key = format!(
            "{}|{resource}|{}",
            o["apiGroup"].as_str().unwrap_or_default(),
            ev["verb"].as_str().unwrap_or_default()
        );
        let place = o["namespace"]
            .as_str()
            .map(String::from)
            .or_else(|| {
                CLUSTER_SCOPED_KINDS
                    .contains(&base)
                    .then(|| CLUSTER_SCOPED.into())
            })
            .or_else(|| o["name"].as_str().map(|n| format!("(cluster) {n}")))
            .unwrap_or_else(|| "(all namespaces)".into());
        used.entry(key).or_default().insert(place);
    }
    eprintln!("rbac[{tag}]: requests of {SA_USER} (audit log):");
    for (k, places) in &used {
        eprintln!("    {k:<62} {places:?}");
    }
    ensure!(refused.is_empty(), "requests refused: {refused:#?}");

    // Where: only watched namespaces (and the Lease's), when namespaced.
    if mode == Mode::Namespaced {
        let allowed: BTreeSet<String> = WATCHED
            .iter()
            .map(|n| n.to_string())
            .chain([RELEASE_NS.to_string()])
            .chain(WATCHED.iter().map(|n| format!("(cluster) {n}")))
            .chain([CLUSTER_SCOPED.to_string()])
            .collect();
        for (k, places) in &used {
            // Events about cluster-scoped objects land in namespace kube-system.
            let events = k.starts_with("events.k8s.io|events|");
            let outside: Vec<_> = places
                .difference(&allowed)
                .filter(|p| !(events && p.as_str() == "kube-system"))
                .collect();
            ensure!(
                outside.is_empty(),
                "{k} used outside the watched namespaces: {outside:?}"
            );
        }
    }

    // Every verb granted was needed.
    let granted = granted_rules(&cp.client, mode).await?;
    let used_keys: BTreeSet<String> = used.keys().cloned().collect();
    let unused: Vec<&String> = granted
        .iter()
        .filter(|g| !used_keys.contains(*g) && !GRANTED_NOT_A_REQUEST.contains(&g.as_str()))
        .collect();
    ensure!(
        unused.is_empty(),
        "granted but never used: {unused:?} (used: {used_keys:?})"
    );
    let beyond: Vec<&String> = used_keys.difference(&granted).collect();
    ensure!(beyond.is_empty(), "used without a rule (?): {beyond:?}");
    Ok(())
}

/// `group|resource|verb` of every rule bound to the ServiceAccount by the chart.
async fn granted_rules(c: &kube::Client, mode: Mode) -> anyhow::Result<BTreeSet<String>> {
    let strip = |s: String| s.splitn(4, '|').take(3).collect::<Vec<_>>().join("|");
    let mut out = BTreeSet::new();
    let cr = Api::<ClusterRole>::all(c.clone()).get(SA).await?;
    out.extend(chart::rule_set(&serde_json::to_value(&cr.rules)?));
    let mut roles = vec![(RELEASE_NS.to_string(), format!("{SA}-leader-election"))];
    if mode == Mode::Namespaced {
        roles.extend(WATCHED.iter().map(|n| (n.to_string(), SA.to_string())));
        roles.push(("kube-system".into(), format!("{SA}-cluster-events")));
    }
    for (ns, name) in roles {
        let role = Api::<Role>::namespaced(c.clone(), &ns).get(&name).await?;
        out.extend(chart::rule_set(&serde_json::to_value(&role.rules)?));
    }
    Ok(out.into_iter().map(strip).collect())
}

// ---------------------------------------------------------------------------------------
// kubectl auth can-i
// ---------------------------------------------------------------------------------------

struct Check {
    allowed: bool,
    verb: &'static str,
    resource: &'static str,
    namespace: Option<&'static str>,
    subresource: Option<&'static str>,
}

const fn yes(verb: &'static str, resource: &'static str, ns: Option<&'static str>) -> Check {
    Check {
        allowed: true,
        verb,
        resource,
        namespace: ns,
        subresource: None,
    }
}

const fn no(verb: &'static str, resource: &'static str, ns: Option<&'static str>) -> Check {
    Check {
        allowed: false,
        verb,
        resource,
        namespace: ns,
        subresource: None,
    }
}

const fn sub(mut c: Check, subresource: &'static str) -> Check {
    c.subresource = Some(subresource);
    c
}

/// `namespace: Some("*")` = `--all-namespaces`.
const ALL: Option<&str> = Some("*");

fn checks(mode: Mode) -> Vec<Check> {
    const APPS: &str = "m2mapplications.m2m.kinde-operator.io";
    const APIS: &str = "apiregistrations.m2m.kinde-operator.io";
    const GRANTS: &str = "apigrants.m2m.kinde-operator.io";
    const CONNS: &str = "kindeconnections.m2m.kinde-operator.io";
    const CLUSTER_CONNS: &str = "clusterkindeconnections.m2m.kinde-operator.io";
    const EVENTS: &str = "events.events.k8s.io";
    const LEASES: &str = "leases.coordination.k8s.io";
    const CRDS: &str = "customresourcedefinitions.apiextensions.k8s.io";
    const CLUSTERROLES: &str = "clusterroles.rbac.authorization.k8s.io";
    let acme = Some("acme");
    let sys = Some(RELEASE_NS);
    let mut v = vec![
        // What the controllers need.
        yes("get", "secrets", acme),
        yes("list", "secrets", acme),
        yes("watch", "secrets", acme),
        yes("create", "secrets", acme),
        yes("patch", "secrets", acme),
        yes("list", APPS, acme),
        yes("watch", APIS, Some("platform")),
        yes("patch", GRANTS, acme),
        sub(yes("patch", APPS, acme), "status"),
        sub(yes("patch", APIS, Some("platform")), "status"),
        yes("watch", CONNS, Some("platform")),
        sub(yes("patch", CONNS, Some("platform")), "status"),
        yes("list", CLUSTER_CONNS, None),
        yes("patch", CLUSTER_CONNS, None),
        sub(yes("patch", CLUSTER_CONNS, None), "status"),
        yes("create", EVENTS, acme),
        yes("patch", EVENTS, acme),
        yes("get", "namespaces/acme", None),
        yes("get", LEASES, sys),
        yes("create", LEASES, sys),
        yes("update", LEASES, sys),
        // What it must never do.
        no("delete", "secrets", acme),
        no("update", "secrets", acme),
        no("deletecollection", "secrets", acme),
        no("get", "pods", acme),
        no("create", "pods", sys),
        sub(no("create", "pods", acme), "exec"),
        no("create", "deployments.apps", sys),
        no("get", "configmaps", acme),
        no("get", "configmaps", sys),
        no("create", CRDS, None),
        no("update", CRDS, None),
        no("delete", CRDS, None),
        no("create", CLUSTERROLES, None),
        no("escalate", CLUSTERROLES, None),
        no("bind", CLUSTERROLES, None),
        no("create", "rolebindings.rbac.authorization.k8s.io", acme),
        no("list", "namespaces", None),
        no("watch", "namespaces", None),
        no("update", "namespaces/acme", None),
        no("delete", "namespaces/acme", None),
        no("delete", APPS, acme),
        no("create", APPS, acme),
        no("update", APPS, acme),
        no("get", APPS, acme),
        // The Secret's ownerReference does not set blockOwnerDeletion.
        sub(no("update", APPS, acme), "finalizers"),
        no("delete", APIS, Some("platform")),
        no("create", CONNS, Some("platform")),
        no("delete", CONNS, Some("platform")),
        no("create", CLUSTER_CONNS, None),
        no("delete", CLUSTER_CONNS, None),
        no("update", CLUSTER_CONNS, None),
        no("deletecollection", GRANTS, acme),
        no("patch", "nodes", None),
        no("list", LEASES, sys),
        no("delete", LEASES, sys),
        no("update", LEASES, Some("default")),
        no("create", LEASES, Some("kube-system")),
        sub(no("create", "serviceaccounts", sys), "token"),
        no("impersonate", "users", None),
        no("impersonate", "serviceaccounts", sys),
        no("create", "events", acme),
    ];
    match mode {
        Mode::Namespaced => v.extend([
            no("list", "secrets", Some("outsider")),
            no("get", "secrets", Some("outsider")),
            no("list", "secrets", ALL),
            no("get", "secrets", sys),
            no("patch", "secrets", Some("kube-system")),
            no("list", APPS, ALL),
            no("list", APPS, Some("outsider")),
            no("list", CONNS, Some("outsider")),
            no("create", EVENTS, Some("outsider")),
            // Events about ClusterKindeConnections, and nothing else there.
            yes("create", EVENTS, Some("kube-system")),
            no("get", "secrets", Some("kube-system")),
            no("list", APPS, Some("kube-system")),
            no("get", "namespaces/outsider", None),
            no("get", "namespaces/kube-system", None),
        ]),
        // Cluster-wide is what it says (the reason namespaced installs exist).
        Mode::ClusterWide => v.extend([
            yes("list", "secrets", ALL),
            yes("list", "secrets", Some("outsider")),
            yes("list", APPS, ALL),
            yes("get", "namespaces/outsider", None),
            no("delete", "secrets", Some("outsider")),
        ]),
    }
    v
}

async fn can_i_table(cp: &RbacCluster, mode: Mode) -> anyhow::Result<()> {
    let groups = vec![
        "--as-group=system:serviceaccounts".to_string(),
        format!("--as-group=system:serviceaccounts:{RELEASE_NS}"),
        "--as-group=system:authenticated".to_string(),
    ];
    can_i(cp, mode.slug(), SA_USER, &groups, checks(mode)).await
}

/// A namespace editor and a namespace viewer of a customer namespace (the built-in `edit`
/// and `view` roles, bound there): the chart's aggregated roles let the editor manage
/// M2MApplications and ApiGrants and read ApiRegistrations, the viewer read them, neither
/// touch status or another namespace.
async fn tenant_can_i_tables(cp: &RbacCluster, tag: &str) -> anyhow::Result<()> {
    const APPS: &str = "m2mapplications.m2m.kinde-operator.io";
    const APIS: &str = "apiregistrations.m2m.kinde-operator.io";
    const GRANTS: &str = "apigrants.m2m.kinde-operator.io";
    for (user, role) in [("alice", "edit"), ("bob", "view")] {
        cp.kubectl(&[
            "create",
            "rolebinding",
            &format!("{user}-{role}"),
            "-n",
            "acme",
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ])
        .await?
        .success()?;
    }
    // The aggregation controller folds the chart's roles into edit/view asynchronously.
    wait_for("the chart's roles aggregated into edit", WAIT, || async {
        let out = cp
            .kubectl(&["auth", "can-i", "create", APPS, "--as=alice", "-n", "acme"])
            .await?;
        Ok((out.stdout.trim() == "yes").then_some(()))
    })
    .await?;
    let groups = vec!["--as-group=system:authenticated".to_string()];
    let acme = Some("acme");
    let mut editor = Vec::new();
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        editor.push(yes(verb, APPS, acme));
        editor.push(yes(verb, GRANTS, acme));
    }
    editor.extend([
        yes("get", APIS, acme),
        yes("list", APIS, acme),
        no("create", APIS, acme),
        no("patch", APIS, acme),
        no("delete", APIS, acme),
        sub(no("patch", APPS, acme), "status"),
        sub(no("update", GRANTS, acme), "status"),
        no("create", APPS, Some("globex")),
        no("list", APPS, ALL),
        no("create", APIS, Some("platform")),
    ]);
    can_i(cp, tag, "alice", &groups, editor).await?;
    let viewer = vec![
        yes("get", APPS, acme),
        yes("list", GRANTS, acme),
        yes("watch", APIS, acme),
        no("create", APPS, acme),
        no("delete", GRANTS, acme),
        no("get", APPS, Some("globex")),
    ];
    can_i(cp, tag, "bob", &groups, viewer).await
}

async fn can_i(
    cp: &RbacCluster,
    tag: &str,
    user: &str,
    groups: &[String],
    checks: Vec<Check>,
) -> anyhow::Result<()> {
    let results: Vec<(String, bool, anyhow::Result<bool>)> = futures::stream::iter(checks)
        .map(|check| {
            let groups = groups.to_vec();
            async move {
                let mut args: Vec<String> = vec![
                    "auth".into(),
                    "can-i".into(),
                    check.verb.into(),
                    check.resource.into(),
                    format!("--as={user}"),
                ];
                args.extend(groups);
                let mut label = format!("{} {}", check.verb, check.resource);
                if let Some(s) = check.subresource {
                    args.push(format!("--subresource={s}"));
                    label.push_str(&format!(" --subresource={s}"));
                }
                match check.namespace {
                    Some("*") => {
                        args.push("--all-namespaces".into());
                        label.push_str(" --all-namespaces");
                    }
                    Some(ns) => {
                        args.extend(["-n".into(), ns.into()]);
                        label.push_str(&format!(" -n {ns}"));
                    }
                    None => {}
                }
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                let answer = match cp.kubectl(&argv).await {
                    Ok(out) => match out.stdout.trim() {
                        "yes" => Ok(true),
                        "no" => Ok(false),
                        _ => Err(anyhow!("`{}`: {}\n{}", out.command, out.stdout, out.stderr)),
                    },
                    Err(e) => Err(e),
                };
                (label, check.allowed, answer)
            }
        })
        .buffered(6)
        .collect()
        .await;
    eprintln!("rbac[{tag}]: kubectl auth can-i --as={user}");
    let mut wrong = Vec::new();
    for (label, want, got) in &results {
        let got = match got {
            Ok(g) => *g,
            Err(e) => bail!("{label}: {e:#}"),
        };
        let mark = if got == *want { "ok " } else { "BAD" };
        eprintln!("    {mark} {:<3} {label}", if got { "yes" } else { "no" });
        if got != *want {
            wrong.push(format!(
                "{label}: {} (expected {})",
                if got { "yes" } else { "no" },
                if *want { "yes" } else { "no" }
            ));
        }
    }
    ensure!(wrong.is_empty(), "can-i answers differ: {wrong:#?}");
    Ok(())
}

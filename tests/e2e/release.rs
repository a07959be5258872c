//! The release artifacts, built and used here as a platform team would: the operator image
//! built from Debian packages (`scripts/build-image`, no base image pulled) and the packaged
//! chart, both pushed to a local OCI registry (`docker-registry`); the chart installed from
//! `oci://`; the operator run from that image (podman, host network) with the arguments and
//! environment of the Deployment the chart installed, until the objects are Ready.
//!
//! The control plane has no kubelet, so podman plays it: it pulls the Deployment's image from
//! the registry and runs its container spec (read-only root, the image's non-root user).

use std::process::Stdio;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kinde_m2m_operator::crd::{ApiGrant, ApiRegistration, M2MApplication};
use kube::api::{Api, PostParams};

use crate::chart::{CHART_NAME, helm};
use crate::support::fixtures::{
    ApiFixture as _, Apply, GrantFixture as _, api_grant, api_registration, m2m_application,
};
use crate::support::{
    self, Ctx, E2eTest, KINDE_CLIENT_ID, KINDE_CLIENT_SECRET, wait_ready_current,
};

pub fn tests() -> Vec<E2eTest> {
    vec![support::test(
        "release::image_and_chart_from_an_oci_registry",
        image_and_chart_from_an_oci_registry,
    )]
}

/// A local OCI registry; stopped on drop.
struct Registry {
    child: std::process::Child,
    addr: String,
}

impl Registry {
    fn start(dir: &std::path::Path) -> anyhow::Result<Self> {
        let port = support::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(dir)?;
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )?;
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log"))?)
            .spawn()
            .context("docker-registry (apt-get install docker-registry) could not start")?;
        Ok(Self { child, addr })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` with `env`, as root: buildah and podman need it for vfs storage and runc (a
/// rootless setup needs subordinate ids a CI machine may not have). Through `sudo -n` when
/// the tests do not run as root (CI installs the tools with sudo too).
fn as_root(program: &std::ffi::OsStr, env: &[(&str, &std::ffi::OsStr)]) -> std::process::Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        let mut cmd = std::process::Command::new(program);
        cmd.envs(env.iter().map(|(k, v)| (*k, *v)));
        cmd
    } else {
        let mut cmd = std::process::Command::new("sudo");
        cmd.args(["-n", "env"]);
        for (k, v) in env {
            let mut kv = std::ffi::OsString::from(format!("{k}="));
            kv.push(v);
            cmd.arg(kv);
        }
        cmd.arg(program);
        cmd
    }
}

/// podman as the README runs it here: vfs storage, runc, cgroupfs, no default ulimits.
fn podman(conf: &std::path::Path) -> std::process::Command {
    let mut cmd = as_root("podman".as_ref(), &[("CONTAINERS_CONF", conf.as_os_str())]);
    cmd.args([
        "--storage-driver",
        "vfs",
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
    ]);
    cmd
}

/// A running container; removed on drop.
struct Container {
    name: String,
    conf: std::path::PathBuf,
}

impl Container {
    fn logs(&self) -> String {
        podman(&self.conf)
            .args(["logs", "--tail", "40", &self.name])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&self.conf)
            .args(["rm", "-f", "-t", "2", &self.name])
            .output();
    }
}

async fn run_ok(cmd: &mut std::process::Command, what: &str) -> anyhow::Result<String> {
    let out =
        tokio::process::Command::from(std::mem::replace(cmd, std::process::Command::new("true")))
            .output()
            .await
            .with_context(|| format!("{what}: could not start"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn image_and_chart_from_an_oci_registry(ctx: Ctx) -> anyhow::Result<()> {
    let h = ctx.harness;
    h.ensure_crds().await?;
    let emu = ctx.own_emulator()?;
    let dir = h
        .run_dir
        .join(format!("release-{}", &ctx.ns[ctx.ns.len() - 5..]));
    let registry = Registry::start(&dir)?;
    let helm_bin = h.helm_bin()?;

    // Build and push, as a release would.
    let (config_home, cache_home) = (dir.join("helm-config"), dir.join("helm-cache"));
    let script = support::repo_path("scripts/build-image");
    let mut build = as_root(
        script.as_os_str(),
        &[
            ("HELM", helm_bin.as_os_str()),
            ("HELM_CONFIG_HOME", config_home.as_os_str()),
            ("HELM_CACHE_HOME", cache_home.as_os_str()),
        ],
    );
    build.args(["--binary"]).arg(support::operator_bin()).args([
        "--push",
        &registry.addr,
        "--plain-http",
    ]);
    let local_image = run_ok(&mut build, "scripts/build-image").await?;
    let version = local_image
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();

    // Install the chart from the registry.
    let secrets: Api<Secret> = ctx.api();
    let creds = "kinde-operator-credentials";
    let mut secret = Secret::default();
    secret.metadata.name = Some(creds.into());
    secret.string_data = Some(
        [
            ("client-id", KINDE_CLIENT_ID),
            ("client-secret", KINDE_CLIENT_SECRET),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into(),
    );
    secrets.create(&PostParams::default(), &secret).await?;
    let release = format!("oci-{}", &ctx.ns[ctx.ns.len() - 5..]);
    let chart = format!("oci://{}/charts/{CHART_NAME}", registry.addr);
    let metrics_port = support::free_port()?.to_string();
    let sets = [
        format!("kinde.domain={}", emu.url),
        format!("kinde.existingSecret={creds}"),
        "kinde.clientIdKey=client-id".to_owned(),
        "kinde.clientSecretKey=client-secret".to_owned(),
        format!("image.repository={}/kinde-m2m-operator", registry.addr),
        format!("watchNamespaces={{{}}}", ctx.ns),
        format!("metrics.port={metrics_port}"),
    ];
    let mut args = vec![
        "install",
        release.as_str(),
        chart.as_str(),
        "--version",
        version.as_str(),
        "--plain-http",
        "--namespace",
        ctx.ns.as_str(),
        "--server-side=false",
    ];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    helm(h, Some(&h.control_plane.kubeconfig), &args)
        .await?
        .success()?;

    // Play the kubelet: the Deployment's container, from the registry, with its args and env.
    let deployment = Api::<Deployment>::namespaced(ctx.client.clone(), &ctx.ns)
        .get(&format!("{release}-{CHART_NAME}"))
        .await?;
    let container = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().next())
        .context("the Deployment has no container")?;
    let image = container.image.clone().context("no image")?;
    ensure!(
        image == format!("{}/kinde-m2m-operator:{version}", registry.addr),
        "the chart runs image {image}, not the one pushed"
    );
    let conf = dir.join("containers.conf");
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n")?;
    // Readable by the image's non-root user.
    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(&h.control_plane.kubeconfig, &kubeconfig)?;
    std::fs::set_permissions(
        &kubeconfig,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    let name = format!("kmo-{release}");
    let mut run = podman(&conf);
    run.args([
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--tls-verify=false",
    ])
    .arg("-v")
    .arg(format!("{}:/etc/kubeconfig:ro", kubeconfig.display()))
    .args(["-e", "KUBECONFIG=/etc/kubeconfig"]);
    for env in container.env.iter().flatten() {
        let value = match (&env.value, &env.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) if from.secret_key_ref.is_some() => {
                let r = from.secret_key_ref.as_ref().context("ref")?;
                let s = secrets.get(&r.name).await?;
                let bytes = s
                    .data
                    .and_then(|d| d.get(&r.key).cloned())
                    .context("secret key")?;
                String::from_utf8(bytes.0)?
            }
            (None, Some(from))
                if from
                    .field_ref
                    .as_ref()
                    .is_some_and(|f| f.field_path == "metadata.namespace") =>
            {
                ctx.ns.clone()
            }
            (None, Some(_)) => name.clone(),
            (None, None) => String::new(),
        };
        run.args(["-e", &format!("{}={value}", env.name)]);
    }
    run.arg(&image).args(container.args.iter().flatten());
    let started = run_ok(&mut run, "podman run").await?;
    let running = Container {
        name: name.clone(),
        conf: conf.clone(),
    };
    let _ = started;

    let api = api_registration("orders", "https://release.example").with_scopes(&["read"]);
    let app = m2m_application("shop");
    let grant = api_grant("shop", "shop", "orders").with_scopes(&["read"]);
    let objects: [&dyn Apply; 3] = [&api, &app, &grant];
    ctx.apply(&objects).await?;
    let ready = async {
        wait_ready_current(&ctx.api::<ApiRegistration>(), "orders").await?;
        wait_ready_current(&ctx.api::<M2MApplication>(), "shop").await?;
        wait_ready_current(&ctx.api::<ApiGrant>(), "shop").await
    }
    .await;
    if let Err(e) = ready {
        bail!("{e:#}\ncontainer log:\n{}", running.logs());
    }
    let credentials = ctx.credentials("shop").await?;
    ensure!(
        !credentials.client_id.is_empty(),
        "no client id in the Secret"
    );
    drop(running);
    helm(
        h,
        Some(&h.control_plane.kubeconfig),
        &["uninstall", &release, "--namespace", &ctx.ns],
    )
    .await?
    .success()?;
    Ok(())
}

//! `kinde-m2m-operator rotate <name> -n <namespace>`: asks the operator to rotate an
//! M2MApplication's credentials now by setting `m2m.kinde-operator.io/rotate-requested-at`
//! (like `cmctl renew`), optionally waiting until the operator has handled it.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use kube::api::{Api, Patch, PatchParams};

use crate::conditions;
use crate::crd::{M2MApplication, ROTATE_REQUESTED_AT_ANNOTATION};

/// Options of `kinde-m2m-operator rotate`.
#[derive(Args, Debug, Clone)]
pub struct RotateArgs {
    /// Name of the M2MApplication.
    pub name: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, env = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Wait until the operator has rotated and the application is Ready again.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Sets the annotation; with `--wait`, polls until `status.lastHandledRotateRequest` echoes it.
pub async fn run(args: RotateArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration")?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<M2MApplication> = Api::namespaced(client, &namespace);
    api.get(&args.name)
        .await
        .with_context(|| format!("M2MApplication {namespace}/{}", args.name))?;
    let value = jiff::Timestamp::now().to_string();
    let patch =
        serde_json::json!({"metadata": {"annotations": {ROTATE_REQUESTED_AT_ANNOTATION: value}}});
    api.patch(&args.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    println!(
        "rotation of {namespace}/{} requested ({ROTATE_REQUESTED_AT_ANNOTATION}={value})",
        args.name
    );
    if !args.wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        let app = api.get(&args.name).await?;
        let status = app.status.unwrap_or_default();
        if status.last_handled_rotate_request.as_deref() == Some(value.as_str())
            && conditions::is_true(&status.conditions, conditions::READY)
        {
            println!(
                "rotated: client ID {} now in Secret {}",
                status.client_id.unwrap_or_default(),
                status.secret_name.unwrap_or_default()
            );
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the operator has not handled the rotation within {:?}",
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

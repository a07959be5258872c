//! `kinde-m2m-operator rotate`: asks the operator to rotate M2MApplications' credentials
//! now by setting `m2m.kinde-operator.io/rotate-requested-at` (like `cmctl renew`): named
//! ones, `--all` in a namespace, those matching `-l <selector>`, across namespaces with
//! `-A`; optionally waiting until the operator has handled each.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::conditions;
use crate::crd::{M2MApplication, ROTATE_REQUESTED_AT_ANNOTATION};

/// Options of `kinde-m2m-operator rotate`.
#[derive(Args, Debug, Clone)]
pub struct RotateArgs {
    /// Names of the M2MApplications (or `--all`, or `-l`).
    pub names: Vec<String>,
    /// Their namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, env = "KINDE_M2M_NAMESPACE")]
    pub namespace: Option<String>,
    /// Every M2MApplication in the namespace (with `-A`: in every namespace).
    #[arg(long)]
    pub all: bool,
    /// The M2MApplications matching this label selector (`team=payments,tier!=free`).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Look in every namespace (with `--all` or `-l`).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Wait until the operator has rotated each and it is Ready again.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits (for all of them together).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Which objects the flags select.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    Names(Vec<String>),
    All,
    Selector(String),
}

impl RotateArgs {
    /// What to rotate; the error names the flags that do not go together.
    pub fn selection(&self) -> anyhow::Result<Selection> {
        let chosen = [!self.names.is_empty(), self.all, self.selector.is_some()]
            .iter()
            .filter(|c| **c)
            .count();
        if chosen != 1 {
            bail!(
                "name the M2MApplications to rotate, or pass --all, or -l/--selector: exactly one of them"
            );
        }
        if self.all_namespaces && self.namespace.is_some() {
            bail!("-A/--all-namespaces and -n/--namespace do not go together");
        }
        if self.all_namespaces && !self.names.is_empty() {
            bail!("-A/--all-namespaces needs --all or -l/--selector, not names");
        }
        Ok(match (&self.selector, self.all) {
            (Some(s), _) if s.trim().is_empty() => bail!("-l/--selector is empty"),
            (Some(s), _) => Selection::Selector(s.clone()),
            (None, true) => Selection::All,
            (None, false) => Selection::Names(self.names.clone()),
        })
    }
}

/// Sets the annotation on each selected object; with `--wait`, polls until each one's
/// `status.lastHandledRotateRequest` echoes it and it is Ready.
pub async fn run(args: RotateArgs) -> anyhow::Result<()> {
    let selection = args.selection()?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration")?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let scope = if args.all_namespaces {
        "all namespaces".to_owned()
    } else {
        format!("namespace {namespace}")
    };
    let list_api: Api<M2MApplication> = if args.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &namespace)
    };
    let targets: Vec<(String, String)> = match &selection {
        Selection::Names(names) => {
            let api: Api<M2MApplication> = Api::namespaced(client.clone(), &namespace);
            let mut found = Vec::new();
            for name in names {
                api.get(name)
                    .await
                    .with_context(|| format!("M2MApplication {namespace}/{name}"))?;
                found.push((namespace.clone(), name.clone()));
            }
            found
        }
        Selection::All | Selection::Selector(_) => {
            let params = match &selection {
                Selection::Selector(s) => ListParams::default().labels(s),
                _ => ListParams::default(),
            };
            let listed = list_api
                .list(&params)
                .await
                .with_context(|| match &selection {
                    Selection::Selector(s) => {
                        format!("listing M2MApplications with -l {s:?} in {scope}")
                    }
                    _ => format!("listing M2MApplications in {scope}"),
                })?;
            listed
                .items
                .iter()
                .map(|a| (a.namespace().unwrap_or_default(), a.name_any()))
                .collect()
        }
    };
    if targets.is_empty() {
        bail!(
            "no M2MApplication {} in {scope}: nothing rotated",
            match &selection {
                Selection::Selector(s) => format!("matches -l {s:?}"),
                _ => "exists".to_owned(),
            }
        );
    }
    let value = jiff::Timestamp::now().to_string();
    let patch =
        serde_json::json!({"metadata": {"annotations": {ROTATE_REQUESTED_AT_ANNOTATION: value}}});
    for (ns, name) in &targets {
        let api: Api<M2MApplication> = Api::namespaced(client.clone(), ns);
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("requesting the rotation of M2MApplication {ns}/{name}"))?;
        println!("rotation of {ns}/{name} requested ({ROTATE_REQUESTED_AT_ANNOTATION}={value})");
    }
    if !args.wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut waiting = targets;
    loop {
        let mut still = Vec::new();
        for (ns, name) in waiting {
            let api: Api<M2MApplication> = Api::namespaced(client.clone(), &ns);
            let status = api.get(&name).await?.status.unwrap_or_default();
            if status.last_handled_rotate_request.as_deref() == Some(value.as_str())
                && conditions::is_true(&status.conditions, conditions::READY)
            {
                println!(
                    "rotated {ns}/{name}: client ID {} now in Secret {}",
                    status.client_id.unwrap_or_default(),
                    status.secret_name.unwrap_or_default()
                );
            } else {
                still.push((ns, name));
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let names: Vec<String> = still.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
            bail!(
                "the operator has not handled the rotation of {} within {:?} (--timeout)",
                names.join(", "),
                args.timeout
            );
        }
        waiting = still;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        rotate: RotateArgs,
    }

    fn selection(args: &[&str]) -> Result<Selection, String> {
        let cli = Cli::try_parse_from(std::iter::once("rotate").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.rotate.selection().map_err(|e| e.to_string())
    }

    #[test]
    fn one_way_of_choosing_at_a_time() {
        assert_eq!(
            selection(&["a", "b"]),
            Ok(Selection::Names(vec!["a".into(), "b".into()]))
        );
        assert_eq!(selection(&["--all"]), Ok(Selection::All));
        assert_eq!(selection(&["--all", "-A"]), Ok(Selection::All));
        assert_eq!(
            selection(&["-l", "team=a", "-A"]),
            Ok(Selection::Selector("team=a".into()))
        );
        for (bad, names) in [
            (&[][..], "--all"),
            (&["a", "--all"][..], "--all"),
            (&["--all", "-l", "x=y"][..], "--selector"),
            (&["-A"][..], "--all"),
            (&["a", "-A"][..], "-A"),
            (&["--all", "-A", "-n", "x"][..], "--namespace"),
            (&["-l", " "][..], "--selector"),
        ] {
            let err = selection(bad).expect_err("refused");
            assert!(err.contains(names), "{bad:?}: {err}");
        }
    }
}

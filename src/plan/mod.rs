//! `kinde-m2m-operator plan -f <file|dir>`: what applying manifests would do in Kinde,
//! read from the manifests and Kinde alone (no cluster), writing nothing anywhere. Exits 0
//! when nothing would change, 2 when something would, 1 when the operator would refuse an
//! object or the input cannot be used (`terraform plan -detailed-exitcode`).
//!
//! `export` shares the reading of Kinde ([`snapshot`]).

pub mod decide;
pub mod manifests;
pub mod snapshot;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::kinde::{KindeClient, KindeMetrics};
use crate::run::KindeArgs;

/// Options of `kinde-m2m-operator plan`.
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    #[command(flatten)]
    pub kinde: KindeArgs,
    /// A manifest file or a directory of them (recursively); repeat for several.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Namespace of objects that name none (as kubectl's `--namespace`).
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The installation id the operator runs with (`run --installation-id`): applications
    /// are matched by the owner key it records.
    #[arg(long, env = "KINDE_M2M_INSTALLATION_ID", default_value = crate::identity::DEFAULT_INSTALLATION, value_parser = crate::identity::parse_installation)]
    pub installation_id: String,
    /// Treat the manifests as all there is in their namespaces: show this installation's
    /// applications there that no manifest declares (deleted once their objects are
    /// pruned), and authorizations no grant declares, as removals.
    #[arg(long)]
    pub prune: bool,
}

/// Runs the plan; returns the exit code.
pub async fn run(args: PlanArgs) -> anyhow::Result<u8> {
    let manifests = manifests::load(&args.files, &args.namespace)?;
    if manifests.is_empty() {
        anyhow::bail!(
            "no ApiRegistration, M2MApplication or ApiGrant in {}",
            args.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let kinde =
        KindeClient::new(args.kinde.config()?, KindeMetrics::default()).context("Kinde client")?;
    let setting = decide::Setting {
        installation: args.installation_id.clone(),
        management_audience: kinde.management_audience(),
        prune: args.prune,
    };
    let with_owners = args.prune
        || manifests.iter().any(|m| {
            matches!(&m.object, manifests::Desired::App(a)
                if crate::crd::KindeAnnotations::external_id(a.as_ref()).is_none())
        });
    let mut kinde_now = snapshot::read(&kinde, with_owners)
        .await
        .context("reading Kinde")?;
    let pairs = decide::pairs_to_read(&manifests, &kinde_now, &setting);
    snapshot::read_held(&kinde, &mut kinde_now, &pairs)
        .await
        .context("reading the scopes applications hold")?;
    let entries = decide::plan(&manifests, &kinde_now, &setting);
    print!("{}", decide::render(&entries));
    Ok(decide::exit_code(&entries))
}

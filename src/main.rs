//! The `kinde-m2m-operator` binary: a thin command-line shell over the library.
#![forbid(unsafe_code)]

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use kinde_emulator as emulator;
use kinde_m2m_operator::{check, cli_env, crd, export, plan, rotate, run, status, telemetry};

#[derive(Parser, Debug)]
#[command(name = "kinde-m2m-operator", version, about)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "KINDE_M2M_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    log_format: telemetry::LogFormat,
    /// Log filter, `RUST_LOG` syntax.
    #[arg(
        long,
        env = "KINDE_M2M_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator.
    Run(Box<run::RunArgs>),
    /// Rotate M2MApplications' credentials now (sets their rotate-requested-at annotation).
    Rotate(rotate::RotateArgs),
    /// Check the operator's Kinde credentials and management scopes; fails when one is
    /// missing (an init container, a CI step).
    Check(check::CheckArgs),
    /// Show an object: conditions, Kinde ids, Secret, rotation, recent Events.
    Status(status::StatusArgs),
    /// Show what applying manifests would create, change, authorize, disconnect or delete
    /// in Kinde; reads Kinde and the files only, writes nothing. Exit code 0: no changes,
    /// 2: changes, 1: refused or unusable input.
    Plan(plan::PlanArgs),
    /// Write manifests (the examples/ layout) for a Kinde business's APIs, M2M
    /// applications and authorizations, marked for adoption; reads Kinde only.
    Export(export::ExportArgs),
    /// Print a shell completion script (`source <(kinde-m2m-operator completion bash)`).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Run the Kinde emulator as an HTTP server.
    Emulator(emulator::EmulatorArgs),
    /// Print the CustomResourceDefinitions as a multi-document YAML stream, or write one
    /// file per CRD into each `--out-dir`.
    Crdgen {
        /// Write `<plural>.<group>.yaml` files into this directory instead of printing
        /// (repeatable).
        #[arg(long, value_name = "DIR")]
        out_dir: Vec<std::path::PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = parse_cli();
    telemetry::init(cli.log_format, &cli.log_level);
    match cli.command {
        Command::Run(mut args) => {
            // Kept alive for as long as the operator runs.
            let _emulator = if args.kinde_emulator {
                Some(start_embedded_emulator(&mut args).await?)
            } else {
                None
            };
            run::run(*args).await
        }
        Command::Rotate(args) => rotate::run(args).await,
        Command::Check(args) => check::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Plan(args) => {
            let code = plan::run(args).await?;
            if code != 0 {
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                std::process::exit(i32::from(code));
            }
            Ok(())
        }
        Command::Export(args) => export::run(args).await,
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "kinde-m2m-operator",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Emulator(args) => emulator::run(args).await,
        Command::Crdgen { out_dir } if out_dir.is_empty() => {
            print!("{}", crd::crds_yaml()?);
            Ok(())
        }
        Command::Crdgen { out_dir } => {
            for dir in out_dir {
                for path in crd::write_crd_files(&dir)? {
                    eprintln!("wrote {}", path.display());
                }
            }
            Ok(())
        }
    }
}

/// The command line, with the environment variables' old names as fallbacks
/// (`cli_env`).
fn parse_cli() -> Cli {
    let command = cli_env::with_aliases(Cli::command(), &|name| std::env::var_os(name));
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// `run --kinde-emulator`: starts the emulator in-process and points the operator at it.
/// The wiring lives here so that the operator library never depends on the emulator.
async fn start_embedded_emulator(
    args: &mut run::RunArgs,
) -> anyhow::Result<emulator::RunningEmulator> {
    use secrecy::ExposeSecret;
    let defaults = emulator::EmulatorConfig::default();
    let client_id = args
        .kinde
        .kinde_client_id
        .get_or_insert(defaults.management_client_id)
        .clone();
    let secret = args
        .kinde
        .kinde_client_secret
        .get_or_insert_with(|| defaults.management_client_secret.into())
        .expose_secret()
        .to_owned();
    let running = emulator::spawn(emulator::EmulatorConfig {
        listen: args.kinde_emulator_listen,
        domain: None,
        management_client_id: client_id,
        management_client_secret: secret,
        state_file: None,
        ..emulator::EmulatorConfig::default()
    })
    .await?;
    args.kinde.kinde_domain = Some(running.domain().parse()?);
    tracing::info!(url = running.base_url(), "embedded Kinde emulator started");
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variable the operator's commands read is `KINDE_M2M_`-prefixed; the emulator
    /// subcommand keeps its own names (a separate tool: `KINDE_EMULATOR_*`, and the
    /// management client it serves as `KINDE_CLIENT_ID`/`KINDE_CLIENT_SECRET`).
    #[test]
    fn env_names_are_prefixed() {
        fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
            for arg in cmd.get_arguments() {
                if let Some(env) = arg.get_env() {
                    out.push((path.to_owned(), env.to_string_lossy().into_owned()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut envs = Vec::new();
        walk(&Cli::command(), "kinde-m2m-operator", &mut envs);
        assert!(envs.len() > 20, "{envs:?}");
        for (path, env) in envs {
            if path.ends_with(" emulator") {
                continue;
            }
            assert!(env.starts_with("KINDE_M2M_"), "{path}: {env}");
            // Names that came after the prefix have no old name to alias.
            let born_prefixed = [
                "KINDE_M2M_NAMESPACE",
                "KINDE_M2M_INSTALLATION_ID",
                "KINDE_M2M_RESYNC_READ_SHARE",
                "KINDE_M2M_MAX_CONCURRENT_RECONCILES",
                "KINDE_M2M_LEASE_DURATION",
                "KINDE_M2M_LEASE_RENEW_DEADLINE",
                "KINDE_M2M_LEASE_RETRY_PERIOD",
                "KINDE_M2M_CONNECTION_DOMAINS",
            ];
            assert!(
                cli_env::alias_of(&env).is_some() || born_prefixed.contains(&env.as_str()),
                "{path}: {env} has no alias"
            );
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}

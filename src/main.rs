//! The `kinde-m2m-operator` binary: a thin command-line shell over the library.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use kinde_emulator as emulator;
use kinde_m2m_operator::{crd, rotate, run, telemetry};

#[derive(Parser, Debug)]
#[command(name = "kinde-m2m-operator", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t, global = true)]
    log_format: telemetry::LogFormat,
    /// Log filter, `RUST_LOG` syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator.
    Run(Box<run::RunArgs>),
    /// Rotate an M2MApplication's credentials now (sets its rotate-requested-at annotation).
    Rotate(rotate::RotateArgs),
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
    let cli = Cli::parse();
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

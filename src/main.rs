//! The `kinde-m2m-operator` binary: a thin command-line shell over the library.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use kinde_m2m_operator::{crd, emulator, telemetry};

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

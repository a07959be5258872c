//! Kinde emulator (placeholder until the emulator lands).

/// Command-line options of `kinde-m2m-operator emulator`.
#[derive(clap::Args, Debug)]
pub struct EmulatorArgs {}

/// Runs the emulator until interrupted.
pub async fn run(_args: EmulatorArgs) -> anyhow::Result<()> {
    anyhow::bail!("the emulator is not built yet")
}

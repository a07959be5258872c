//! Kinde emulator: an in-memory HTTP emulation of the parts of the Kinde Management API
//! and the OAuth2 token endpoint that the operator uses, for tests, local trial without a
//! Kinde account, and users' CI.
//!
//! It is an independent implementation of the contract (`management-api.yaml`), written
//! without looking at the operator's client, so that a misreading on either side shows up
//! as a failing test. Its own crate: it depends on nothing of the operator, and of the
//! operator only the binary (`src/main.rs`) and the tests import it
//! (`tests/boundaries.rs`). Its public surface is what those use: [`spawn`], [`run`],
//! [`EmulatorConfig`], [`EmulatorArgs`], [`RunningEmulator`] and the default credentials.
//!
//! - `state`: the business (applications, APIs, scopes, grants) and its operations.
//! - `tokens`: the signing key, JWT minting/verification, revocation.
//! - `management`: `/api/v1/...`; `oauth`: `/oauth2/token` and the JWKS.
//! - `control`: the `/_emulator/...` control surface for tests (faults, rate limit, ...).
//! - `faults`: operation names, fault queue, rate limiter, call counters.
//! - `server`: shared state, persistence, router and middleware.
//!
//! User documentation: `docs/emulator.md`.

mod control;
mod faults;
mod management;
mod oauth;
mod pipeline;
mod server;
mod state;
mod tokens;

use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use server::{ConnInfo, KillableListener, Shared};

/// Management client id used when none is configured (development only).
pub const DEFAULT_CLIENT_ID: &str = "emulator-management-client";
/// Management client secret used when none is configured (development only).
pub const DEFAULT_CLIENT_SECRET: &str = "emulator-management-secret";
/// Default listen address of `kinde-m2m-operator emulator`.
const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// How long a shutdown waits for in-flight requests before cutting connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Command-line options of `kinde-m2m-operator emulator`.
#[derive(clap::Args, Debug)]
pub struct EmulatorArgs {
    /// Address to listen on (port 0 picks a free port; the actual URL is printed).
    #[arg(long, env = "KINDE_EMULATOR_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Public base URL of the emulated business: token issuer, and `<domain>/api` is the
    /// management audience. Default: the emulator's own URL.
    #[arg(long, env = "KINDE_EMULATOR_DOMAIN")]
    domain: Option<String>,
    /// Client id of the pre-authorized management M2M application.
    #[arg(long, env = "KINDE_CLIENT_ID", default_value = DEFAULT_CLIENT_ID)]
    client_id: String,
    /// Client secret of the management application.
    #[arg(long, env = "KINDE_CLIENT_SECRET", default_value = DEFAULT_CLIENT_SECRET, hide_default_value = true, hide_env_values = true)]
    client_secret: String,
    /// JSON file to keep state (including the signing key) across restarts; written
    /// atomically after every change.
    #[arg(long, env = "KINDE_EMULATOR_STATE_FILE")]
    state_file: Option<PathBuf>,
    /// Status of "no such application / API / scope" answers: 400 (with a `*_NOT_FOUND`
    /// code, as the spec documents) or 404 (same body), as other Kinde endpoints answer.
    #[arg(long, env = "KINDE_EMULATOR_NOT_FOUND_STATUS", default_value_t = 400, value_parser = parse_not_found_status)]
    not_found_status: u16,
    /// Status of a missing, expired or revoked management token: 401 (as Kinde) or 403
    /// (the emulator's earlier answer, `TOKEN_INVALID`).
    #[arg(long, env = "KINDE_EMULATOR_TOKEN_INVALID_STATUS", default_value_t = 401, value_parser = parse_token_invalid_status)]
    token_invalid_status: u16,
}

fn parse_not_found_status(s: &str) -> Result<u16, String> {
    let status = s.parse::<u16>().map_err(|e| e.to_string())?;
    server::check_not_found_status(status)
}

fn parse_token_invalid_status(s: &str) -> Result<u16, String> {
    let status = s.parse::<u16>().map_err(|e| e.to_string())?;
    server::check_token_invalid_status(status)
}

/// Configuration of an emulator started in-process with [`spawn`].
#[derive(Clone)]
pub struct EmulatorConfig {
    /// Address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Token issuer / business URL; `None` = the emulator's own base URL.
    pub domain: Option<String>,
    pub management_client_id: String,
    pub management_client_secret: String,
    /// Persist state here (loaded at start, rewritten after every change).
    pub state_file: Option<PathBuf>,
    /// 400 (default) or 404: status of "no such application / API / scope".
    pub not_found_status: u16,
    /// 401 (default) or 403: status of a refused management token.
    pub token_invalid_status: u16,
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("listen", &self.listen)
            .field("domain", &self.domain)
            .field("management_client_id", &self.management_client_id)
            .field("management_client_secret", &"<redacted>")
            .field("state_file", &self.state_file)
            .field("not_found_status", &self.not_found_status)
            .field("token_invalid_status", &self.token_invalid_status)
            .finish()
    }
}

impl Default for EmulatorConfig {
    /// Loopback on a free port, development credentials, no state file, Kinde's answers.
    fn default() -> Self {
        let modes = server::Modes::default();
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            domain: None,
            management_client_id: DEFAULT_CLIENT_ID.to_owned(),
            management_client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            state_file: None,
            not_found_status: modes.not_found_status,
            token_invalid_status: modes.token_invalid_status,
        }
    }
}

impl From<EmulatorArgs> for EmulatorConfig {
    fn from(args: EmulatorArgs) -> Self {
        Self {
            listen: args.listen,
            domain: args.domain,
            management_client_id: args.client_id,
            management_client_secret: args.client_secret,
            state_file: args.state_file,
            not_found_status: args.not_found_status,
            token_invalid_status: args.token_invalid_status,
        }
    }
}

/// A running emulator. Stops on [`RunningEmulator::shutdown`] or when dropped.
pub struct RunningEmulator {
    base_url: String,
    domain: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningEmulator")
            .field("base_url", &self.base_url)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl RunningEmulator {
    /// Where to reach the emulator, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The emulated business's domain: token issuer; `<domain>/api` is the management
    /// audience.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The management API audience, `<domain>/api`.
    pub fn management_audience(&self) -> String {
        state::management_audience(&self.domain)
    }

    /// Stops accepting, lets in-flight requests finish (up to a few seconds), and waits.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Trims and checks a configured domain: an absolute http(s) URL without path.
fn normalize_domain(domain: &str) -> anyhow::Result<String> {
    let trimmed = domain.trim().trim_end_matches('/');
    let url = url::Url::parse(trimmed).with_context(|| format!("invalid domain {domain:?}"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https") && url.host().is_some(),
        "the domain must be an http(s) URL, got {domain:?}"
    );
    anyhow::ensure!(
        url.path() == "/" && url.query().is_none() && url.fragment().is_none(),
        "the domain must not have a path, query or fragment, got {domain:?}"
    );
    Ok(trimmed.to_owned())
}

/// Binds and starts serving in the background.
pub async fn spawn(config: EmulatorConfig) -> anyhow::Result<RunningEmulator> {
    let domain_override = config.domain.as_deref().map(normalize_domain).transpose()?;
    let modes = server::Modes {
        not_found_status: server::check_not_found_status(config.not_found_status)
            .map_err(anyhow::Error::msg)?,
        token_invalid_status: server::check_token_invalid_status(config.token_invalid_status)
            .map_err(anyhow::Error::msg)?,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let local_addr = listener.local_addr().context("reading the bound address")?;
    // A wildcard bind is reached locally through loopback.
    let reachable = match local_addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, local_addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, local_addr.port())),
        _ => local_addr,
    };
    let base_url = format!("http://{reachable}");
    let domain = domain_override.unwrap_or_else(|| base_url.clone());
    let shared = Arc::new(
        Shared::load_or_init(
            domain.clone(),
            config.management_client_id.clone(),
            config.management_client_secret.clone(),
            config.state_file.clone(),
            modes,
        )
        .await?,
    );
    let app = pipeline::router(shared);
    let (stop, stopped) = oneshot::channel::<()>();
    let serve = axum::serve(
        KillableListener(listener),
        app.into_make_service_with_connect_info::<ConnInfo>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stopped.await;
    });
    let task = tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "emulator server failed");
        }
    });
    tracing::info!(%base_url, %domain, "Kinde emulator listening");
    Ok(RunningEmulator {
        base_url,
        domain,
        stop: Some(stop),
        task: Some(task),
    })
}

/// Runs the emulator until Ctrl-C or SIGTERM. Prints `KINDE_EMULATOR_URL=<base url>` as
/// the only line on stdout once listening (the test harness waits for it).
pub async fn run(args: EmulatorArgs) -> anyhow::Result<()> {
    let config = EmulatorConfig::from(args);
    let client_id = config.management_client_id.clone();
    let using_dev_secret = config.management_client_secret == DEFAULT_CLIENT_SECRET;
    let emulator = spawn(config).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "KINDE_EMULATOR_URL={}", emulator.base_url())?;
        stdout.flush()?;
    }
    tracing::info!(
        management_client_id = %client_id,
        token_url = %format!("{}/oauth2/token", emulator.base_url()),
        audience = %emulator.management_audience(),
        "management client ready"
    );
    if using_dev_secret {
        tracing::warn!(
            "using the built-in development client secret; set KINDE_CLIENT_SECRET for anything shared"
        );
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    emulator.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalized() {
        assert_eq!(
            normalize_domain("https://biz.kinde.com/").ok().as_deref(),
            Some("https://biz.kinde.com")
        );
        assert!(normalize_domain("biz.kinde.com").is_err());
        assert!(normalize_domain("https://biz.kinde.com/x").is_err());
        assert!(normalize_domain("ftp://biz").is_err());
    }
}

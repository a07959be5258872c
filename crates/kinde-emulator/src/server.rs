//! The HTTP server: shared state, persistence, the router, and the middleware that applies
//! rate limits and faults and counts calls for every emulated Kinde operation.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::connect_info::Connected;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::faults::Harness;
use super::state::Store;
use super::tokens::{SigningKey, TokenLedger};

/// Default access-token lifetime, as Kinde's default for M2M apps.
const DEFAULT_TOKEN_TTL_SECS: i64 = 3600;

/// Answers where the emulator can behave as Kinde does now or as it did before (kept for
/// clients that must handle both): set at start (`EmulatorConfig`, CLI flags) and through
/// `PUT /_emulator/config`; `POST /_emulator/reset` restores the start values. Not
/// persisted: the configuration of each start wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Modes {
    /// Status of "no such application / API / scope": 400 (`*_NOT_FOUND` code, the
    /// default, as the spec documents) or 404 (same body).
    pub(crate) not_found_status: u16,
    /// Status of a missing, malformed, expired or revoked management token: 401 (as Kinde
    /// answers, the default) or 403 (the emulator's earlier answer).
    pub(crate) token_invalid_status: u16,
}

impl Default for Modes {
    fn default() -> Self {
        Self {
            not_found_status: 400,
            token_invalid_status: 401,
        }
    }
}

/// Checks a `not_found_status` value.
pub(crate) fn check_not_found_status(status: u16) -> Result<u16, String> {
    match status {
        400 | 404 => Ok(status),
        other => Err(format!("not_found_status must be 400 or 404, got {other}")),
    }
}

/// Checks a `token_invalid_status` value.
pub(crate) fn check_token_invalid_status(status: u16) -> Result<u16, String> {
    match status {
        401 | 403 => Ok(status),
        other => Err(format!(
            "token_invalid_status must be 401 or 403, got {other}"
        )),
    }
}

/// Everything the handlers share.
pub(crate) struct Shared {
    pub(crate) domain: String,
    pub(crate) key: SigningKey,
    pub(crate) management_client_id: String,
    pub(crate) management_client_secret: String,
    inner: Mutex<Inner>,
    harness: Mutex<Harness>,
    modes: Mutex<Modes>,
    initial_modes: Modes,
    persister: Option<Persister>,
}

/// The mutable business state plus what is persisted with it.
pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) ledger: TokenLedger,
    pub(crate) token_ttl_secs: i64,
    version: u64,
}

/// On-disk format of the state file, as read.
#[derive(Deserialize)]
struct PersistedState {
    format: u32,
    signing_key_pem: String,
    store: Store,
    ledger: TokenLedger,
    token_ttl_secs: i64,
}

/// On-disk format of the state file, as written (borrowing, so saving copies nothing).
#[derive(Serialize)]
struct PersistedStateRef<'a> {
    format: u32,
    signing_key_pem: &'a str,
    store: &'a Store,
    ledger: &'a TokenLedger,
    token_ttl_secs: i64,
}

const STATE_FORMAT: u32 = 1;

/// Writes snapshots atomically (temp file + rename), never an older one over a newer.
struct Persister {
    path: PathBuf,
    written: tokio::sync::Mutex<u64>,
}

impl Shared {
    /// Loads the state file if there is one, else starts fresh with a new key.
    pub(crate) async fn load_or_init(
        domain: String,
        client_id: String,
        client_secret: String,
        state_file: Option<PathBuf>,
        modes: Modes,
    ) -> anyhow::Result<Self> {
        let existing = match &state_file {
            Some(path) => match tokio::fs::read(path).await {
                Ok(bytes) => Some(
                    serde_json::from_slice::<PersistedState>(&bytes)
                        .with_context(|| format!("reading state file {}", path.display()))?,
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("reading state file {}", path.display()));
                }
            },
            None => None,
        };
        let (key, store, ledger, ttl) = match existing {
            Some(p) => {
                anyhow::ensure!(
                    p.format == STATE_FORMAT,
                    "unsupported state file format {}",
                    p.format
                );
                let key = SigningKey::from_pem(&p.signing_key_pem)?;
                let mut store = p.store;
                store.ensure_management_client(&domain, &client_id, &client_secret);
                (key, store, p.ledger, p.token_ttl_secs)
            }
            None => {
                let key = tokio::task::spawn_blocking(SigningKey::generate)
                    .await
                    .context("key generation task")??;
                let store = Store::new(&domain, &client_id, &client_secret);
                (key, store, TokenLedger::default(), DEFAULT_TOKEN_TTL_SECS)
            }
        };
        let shared = Self {
            domain,
            key,
            management_client_id: client_id,
            management_client_secret: client_secret,
            inner: Mutex::new(Inner {
                store,
                ledger,
                token_ttl_secs: ttl,
                version: 1,
            }),
            harness: Mutex::new(Harness::default()),
            modes: Mutex::new(modes),
            initial_modes: modes,
            persister: state_file.map(|path| Persister {
                path,
                written: tokio::sync::Mutex::new(0),
            }),
        };
        // Write once at start so the file exists (and holds the key) from now on.
        shared.persist().await?;
        Ok(shared)
    }

    /// The business state. Poisoning is recovered from: every mutation keeps the store
    /// consistent before it can panic, so the data is still usable.
    pub(crate) fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn harness(&self) -> MutexGuard<'_, Harness> {
        self.harness.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn modes(&self) -> Modes {
        *self.modes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_modes(&self, modes: Modes) {
        *self.modes.lock().unwrap_or_else(|e| e.into_inner()) = modes;
    }

    /// Issuer of tokens (the domain).
    pub(crate) fn issuer(&self) -> &str {
        &self.domain
    }

    /// Saves the current state to the state file, if configured.
    pub(crate) async fn persist(&self) -> anyhow::Result<()> {
        let Some(persister) = &self.persister else {
            return Ok(());
        };
        let (version, bytes) = {
            let mut inner = self.inner();
            inner.version += 1;
            let snapshot = PersistedStateRef {
                format: STATE_FORMAT,
                signing_key_pem: self.key.pem(),
                store: &inner.store,
                ledger: &inner.ledger,
                token_ttl_secs: inner.token_ttl_secs,
            };
            (inner.version, serde_json::to_vec_pretty(&snapshot)?)
        };
        let mut written = persister.written.lock().await;
        if *written >= version {
            return Ok(());
        }
        let mut tmp = persister.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        write_private(&tmp, &bytes)
            .await
            .with_context(|| format!("writing {}", tmp.display()))?;
        tokio::fs::rename(&tmp, &persister.path)
            .await
            .with_context(|| format!("replacing {}", persister.path.display()))?;
        *written = version;
        Ok(())
    }

    /// Back to the initial state, keeping the signing key, the management client's
    /// credentials, the management API's id and the revocation ledger (a revoked token
    /// stays revoked).
    pub(crate) fn reset(&self) {
        {
            let mut inner = self.inner();
            inner.store = inner.store.reset(
                &self.domain,
                &self.management_client_id,
                &self.management_client_secret,
            );
            inner.token_ttl_secs = DEFAULT_TOKEN_TTL_SECS;
        }
        self.set_modes(self.initial_modes);
        self.harness().reset();
    }
}

/// The state file holds the signing key and client secrets: owner-only on Unix.
async fn write_private(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).await?;
    tokio::io::AsyncWriteExt::write_all(&mut file, bytes).await?;
    file.sync_all().await
}

/// Parses a JSON request body; an empty or blank body counts as `{}` (a PATCH or POST
/// without a body).
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::from_slice(b"{}")
    } else {
        serde_json::from_slice(body)
    }
}

/// Marker a handler puts in its response extensions when it changed state; `write` says
/// whether it was a business mutation (counted in `writes`) rather than bookkeeping such
/// as recording an issued token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Changed {
    pub(crate) write: bool,
}

/// Adds the [`Changed`] marker to a response.
pub(crate) fn changed(mut response: Response, write: bool) -> Response {
    response.extensions_mut().insert(Changed { write });
    response
}

pub(crate) type AppState = Arc<Shared>;

/// Marker a handler puts in the extensions of a "no such application / API / scope"
/// answer, so the not-found mode can set its status.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NotFoundAnswer;

// ---- connections that a fault can cut ----

/// Set to make the connection fail its next write, i.e. close without a response.
type KillSwitch = Arc<AtomicBool>;

/// Per-connection info handed to the middleware.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) kill: KillSwitch,
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP listener whose connections can be aborted from inside a request, so a fault can
/// lose the response after the write happened, as a network failure would.
pub(crate) struct KillableListener(pub TcpListener);

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let kill = KillSwitch::default();
                    return (
                        KillableStream {
                            inner: stream,
                            kill: kill.clone(),
                        },
                        ConnInfo { peer, kill },
                    );
                }
                Err(e) => {
                    // As axum does: back off on transient errors such as EMFILE.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(ConnInfo {
            peer: self.0.local_addr()?,
            kill: KillSwitch::default(),
        })
    }
}

pub(crate) struct KillableStream {
    inner: TcpStream,
    kill: KillSwitch,
}

impl KillableStream {
    fn killed(&self) -> bool {
        self.kill.load(Ordering::SeqCst)
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "response dropped by fault",
    )
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

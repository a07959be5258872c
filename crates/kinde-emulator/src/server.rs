//! The HTTP server: shared state, persistence, the router, and the middleware that applies
//! rate limits and faults and counts calls for every emulated Kinde operation.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::faults::{FaultSpec, Harness, TOKEN};
use super::state::Store;
use super::tokens::{SigningKey, TokenLedger};
use super::{control, management, oauth};

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
    async fn persist(&self) -> anyhow::Result<()> {
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
struct Changed {
    pub(crate) write: bool,
}

/// Adds the [`Changed`] marker to a response.
pub(crate) fn changed(mut response: Response, write: bool) -> Response {
    response.extensions_mut().insert(Changed { write });
    response
}

pub(crate) type AppState = Arc<Shared>;

pub(crate) fn router(shared: AppState) -> Router {
    Router::new()
        .merge(management::routes())
        .merge(oauth::routes())
        .nest("/_emulator", control::routes())
        .fallback(management::route_not_found)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            observe,
        ))
        .with_state(shared)
}

/// Rate limit, faults, counters and persistence around every request.
async fn observe(
    State(shared): State<AppState>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    request: Request,
    next: Next,
) -> Response {
    let Some(op) = super::faults::classify(request.method(), request.uri().path()) else {
        let response = next.run(request).await;
        return persist_if_changed(&shared, response).await;
    };
    let (fault, in_flight) = {
        let mut harness = shared.harness();
        harness.count_call(op);
        let mut in_flight = None;
        if op != TOKEN {
            let admitted = harness.admit(Instant::now()).and_then(|()| harness.enter());
            if let Err(reset) = admitted {
                harness.count_status(op, "429");
                drop(harness);
                tracing::debug!(operation = op, "rate limited");
                return rate_limited(reset);
            }
            in_flight = Some(InFlight(shared.clone()));
        }
        (harness.take_fault(op), in_flight)
    };
    // A detached call is finished even when the client gives up meanwhile (Kinde completing a
    // request the client timed out on): the work runs in a task of its own.
    let detached = fault.as_ref().is_some_and(|f| f.detached);
    let work = process(shared, op, fault, conn, in_flight, request, next);
    if detached {
        tokio::spawn(work)
            .await
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    } else {
        work.await
    }
}

/// The rest of an emulated call after admission: the fault's latency and status, the
/// handler, the not-found mode, persistence and counting.
async fn process(
    shared: AppState,
    op: &'static str,
    fault: Option<FaultSpec>,
    conn: ConnInfo,
    in_flight: Option<InFlight>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(fault) = &fault
        && let Some(ms) = fault.latency_ms
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let fault = match fault {
        Some(f) if f.status.is_some() && !f.drop_response => {
            let response = fault_response(op, &f);
            shared
                .harness()
                .count_status(op, response.status().as_str());
            tracing::debug!(operation = op, status = %response.status(), "injected fault");
            return response;
        }
        other => other,
    };
    let mut response = next.run(request).await;
    if response.extensions().get::<NotFoundAnswer>().is_some() {
        response = not_found_as(response, shared.modes().not_found_status);
    }
    let wrote = response
        .extensions()
        .get::<Changed>()
        .is_some_and(|c| c.write);
    let response = persist_if_changed(&shared, response).await;
    let response = count_and_finish(&shared, op, fault, &conn, wrote, response);
    // The call is over only now (the guard locks the harness, so not while it is held).
    drop(in_flight);
    response
}

/// Counts the answer of a processed call and applies a fault's `drop_response`.
fn count_and_finish(
    shared: &Shared,
    op: &'static str,
    fault: Option<FaultSpec>,
    conn: &ConnInfo,
    wrote: bool,
    response: Response,
) -> Response {
    let mut harness = shared.harness();
    if wrote && response.status().is_success() {
        harness.count_write(op);
    }
    match fault {
        Some(f) if f.drop_response => match f.status {
            Some(_) => {
                let response = fault_response(op, &f);
                harness.count_status(op, response.status().as_str());
                tracing::debug!(operation = op, "response replaced after the write");
                response
            }
            None => {
                harness.count_status(op, "dropped");
                conn.kill.store(true, Ordering::SeqCst);
                tracing::debug!(operation = op, "connection closed after the write");
                response
            }
        },
        _ => {
            harness.count_status(op, response.status().as_str());
            tracing::debug!(operation = op, status = %response.status(), peer = %conn.peer, "handled");
            response
        }
    }
}

/// Marks a management call counted as in flight for the concurrency limit until dropped.
struct InFlight(AppState);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.harness().leave();
    }
}

/// Marker a handler puts in the extensions of a "no such application / API / scope"
/// answer, so the not-found mode can set its status.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NotFoundAnswer;

/// A not-found answer (400 `*_NOT_FOUND` as built) with the status of the current mode.
fn not_found_as(mut response: Response, status: u16) -> Response {
    if let Ok(status) = StatusCode::from_u16(status) {
        *response.status_mut() = status;
    }
    response
}

async fn persist_if_changed(shared: &Shared, response: Response) -> Response {
    if response.extensions().get::<Changed>().is_none() {
        return response;
    }
    match shared.persist().await {
        Ok(()) => response,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "could not save the emulator state file");
            management::error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "STATE_NOT_SAVED",
                "The emulator could not save its state file",
            )
        }
    }
}

fn rate_limited(reset_secs: u64) -> Response {
    let mut response = management::error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_REQUESTS",
        "Too many requests. Request was throttled.",
    );
    response
        .headers_mut()
        .insert("ratelimit-reset", HeaderValue::from(reset_secs));
    response
}

/// The response an injected fault answers with. Without an explicit body: an
/// `error_response` (management) or OAuth2 error (token) suiting the status; without
/// explicit headers, a 429 carries `RateLimit-Reset: 1`.
fn fault_response(op: &str, fault: &FaultSpec) -> Response {
    let status = fault
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = match &fault.body {
        Some(body) => {
            let mut r = Response::new(Body::from(body.clone()));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            r
        }
        None if op == TOKEN => {
            let error = if status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE
            {
                "temporarily_unavailable"
            } else {
                "server_error"
            };
            (
                status,
                axum::Json(serde_json::json!({
                    "error": error,
                    "error_description": "Fault injected by the Kinde emulator",
                })),
            )
                .into_response()
        }
        None => {
            let code = match status.as_u16() {
                429 => "TOO_MANY_REQUESTS",
                500..=599 => "INTERNAL_SERVER_ERROR",
                _ => "EMULATED_FAULT",
            };
            management::error_response(status, code, "Fault injected by the Kinde emulator")
        }
    };
    match &fault.headers {
        Some(headers) => {
            for (name, value) in headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::try_from(name.as_str()),
                    HeaderValue::try_from(value.as_str()),
                ) {
                    response.headers_mut().insert(n, v);
                }
            }
        }
        None if status == StatusCode::TOO_MANY_REQUESTS => {
            response
                .headers_mut()
                .insert("ratelimit-reset", HeaderValue::from_static("1"));
        }
        None => {}
    }
    response
}

// ---- connections that a fault can cut ----

/// Set to make the connection fail its next write, i.e. close without a response.
type KillSwitch = Arc<AtomicBool>;

/// Per-connection info handed to the middleware.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    kill: KillSwitch,
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

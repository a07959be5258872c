//! The request pipeline around every emulated call: routes, then the rate and
//! concurrency limits, injected faults, the not-found mode, persistence and call counters.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::faults::{FaultSpec, TOKEN};
use super::server::{AppState, Changed, ConnInfo, NotFoundAnswer, Shared};
use super::{control, management, oauth};

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
    let (fault, in_flight, latency) = {
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
        (harness.take_fault(op), in_flight, harness.latency())
    };
    // A detached call is finished even when the client gives up meanwhile (Kinde completing a
    // request the client timed out on): the work runs in a task of its own.
    let detached = fault.as_ref().is_some_and(|f| f.detached);
    let work = async move {
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        process(shared, op, fault, conn, in_flight, request, next).await
    };
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

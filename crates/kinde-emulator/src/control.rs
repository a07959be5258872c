//! The emulator's control surface, under `/_emulator/`: no authentication, JSON in and
//! out, errors as `{"error": "..."}` with 400 (bad input) or 404 (unknown id). Not part of
//! Kinde: tests and local users drive and inspect the emulator with it.
//!
//! - `POST /_emulator/faults` `{operation, status?, times? (1), latency_ms?, drop_response?,
//!   detached?, body?, headers?}` → 201 `{"fault": ...}`. The next `times` calls of `operation` (a
//!   spec operationId, or `token`) get the fault: `latency_ms` delays the call (then
//!   normal handling unless another field says otherwise); `status` answers with that
//!   status without processing the request (body: `body` verbatim, else an
//!   `error_response`/OAuth2 error; headers: `headers`, else `RateLimit-Reset: 1` for a
//!   429); `drop_response: true` processes the request (the write happens) and then closes
//!   the connection without any response, or, with `status`, answers with that fault
//!   response instead of the real one; `detached: true` finishes the call (the write
//!   happens) even after the client gave up, e.g. a `latency_ms` beyond its timeout. `GET` → `{"faults":[...]}` (pending, with the
//!   remaining `times`); `DELETE` → `{"cleared": n}`.
//! - `PUT /_emulator/rate-limit` `{requests, per_seconds}`: fixed window over management
//!   calls (not `/oauth2/token`); beyond it: 429 `error_response` with `RateLimit-Reset:
//!   <seconds until the window ends>`, request not processed. `GET` shows it, `DELETE`
//!   removes it.
//! - `PUT /_emulator/concurrency-limit` `{max_in_flight, reset_secs? (1)}`: a management
//!   call arriving while `max_in_flight` are being served gets 429 with `RateLimit-Reset:
//!   reset_secs`, not processed. `GET` shows it, `DELETE` removes it.
//! - `PUT /_emulator/latency` `{ms}`: added to every call (management and token) after
//!   admission, before any fault's own latency; `GET` shows it, `DELETE` sets it back to 0.
//! - `POST /_emulator/applications/{id}/rotate-secret` `{retain_old?: bool}` → `{client_id,
//!   client_secret}`: new secret as the dashboard's "Rotate" (reg and m2m apps only, else
//!   400); the previous one keeps working only with `retain_old`, until `DELETE
//!   /_emulator/applications/{id}/previous-secret` (the dashboard's "Delete previous client
//!   secret"); rotating while it is retained is refused with 409.
//! - `GET|PUT /_emulator/management-client/scopes` `{scopes:[...]}`: the management
//!   client's scopes on the Kinde Management API (new tokens only).
//! - `POST /_emulator/tokens/revoke` → `{revoked: n}`: every token issued so far stops
//!   working on the management API.
//! - `GET|PUT /_emulator/config` `{token_ttl_secs? (default 3600, 1..=86400),
//!   not_found_status? (400|404), token_invalid_status? (401|403)}`.
//! - `GET /_emulator/calls` → `{operation: {calls, writes, statuses: {"200": n, ...}}}`
//!   (`writes`: mutations actually performed; a connection closed by a fault counts as
//!   status `"dropped"`); `DELETE` resets the counters.
//! - `GET /_emulator/state`: applications (no secrets) and APIs with their grants.
//! - `POST /_emulator/reset`: initial state (keeps the signing key, the management
//!   client's credentials and revoked tokens; clears faults, rate and concurrency limits,
//!   counters; the modes go back to their start values).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::faults::{ConcurrencyLimit, FaultSpec, RateLimit};
use super::server::{
    AppState, Modes, changed, check_not_found_status, check_token_invalid_status, json_body,
};
use super::state::RotateRefusal;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/faults",
            post(add_fault).get(list_faults).delete(clear_faults),
        )
        .route(
            "/rate-limit",
            put(set_rate_limit)
                .get(get_rate_limit)
                .delete(clear_rate_limit),
        )
        .route(
            "/concurrency-limit",
            put(set_concurrency_limit)
                .get(get_concurrency_limit)
                .delete(clear_concurrency_limit),
        )
        .route(
            "/latency",
            put(set_latency).get(get_latency).delete(clear_latency),
        )
        .route("/applications/{id}/rotate-secret", post(rotate_secret))
        .route(
            "/applications/{id}/previous-secret",
            axum::routing::delete(delete_previous_secret),
        )
        .route(
            "/management-client/scopes",
            put(set_management_scopes).get(get_management_scopes),
        )
        .route("/tokens/revoke", post(revoke_tokens))
        .route("/config", put(set_config).get(get_config))
        .route("/calls", get(get_calls).delete(reset_calls))
        .route("/state", get(dump_state))
        .route("/reset", post(reset))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    json_body(body)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, format!("invalid body: {e}"))))
}

async fn add_fault(State(shared): State<AppState>, body: Bytes) -> Response {
    let fault: FaultSpec = match parse(&body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    if let Err(e) = fault.validate() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    shared.harness().add_fault(fault.clone());
    (StatusCode::CREATED, axum::Json(json!({"fault": fault}))).into_response()
}

async fn list_faults(State(shared): State<AppState>) -> Response {
    axum::Json(json!({"faults": shared.harness().faults()})).into_response()
}

async fn clear_faults(State(shared): State<AppState>) -> Response {
    axum::Json(json!({"cleared": shared.harness().clear_faults()})).into_response()
}

async fn set_rate_limit(State(shared): State<AppState>, body: Bytes) -> Response {
    let limit: RateLimit = match parse(&body) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    if limit.per_seconds == 0 {
        return error(StatusCode::BAD_REQUEST, "per_seconds must be at least 1");
    }
    shared.harness().set_rate_limit(Some(limit));
    axum::Json(json!({"rate_limit": limit})).into_response()
}

async fn get_rate_limit(State(shared): State<AppState>) -> Response {
    axum::Json(json!({"rate_limit": shared.harness().rate_limit()})).into_response()
}

async fn clear_rate_limit(State(shared): State<AppState>) -> Response {
    shared.harness().set_rate_limit(None);
    axum::Json(json!({"rate_limit": null})).into_response()
}

async fn set_concurrency_limit(State(shared): State<AppState>, body: Bytes) -> Response {
    let limit: ConcurrencyLimit = match parse(&body) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    shared.harness().set_concurrency_limit(Some(limit));
    axum::Json(json!({"concurrency_limit": limit})).into_response()
}

async fn get_concurrency_limit(State(shared): State<AppState>) -> Response {
    axum::Json(json!({"concurrency_limit": shared.harness().concurrency_limit()})).into_response()
}

async fn clear_concurrency_limit(State(shared): State<AppState>) -> Response {
    shared.harness().set_concurrency_limit(None);
    axum::Json(json!({"concurrency_limit": null})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyBody {
    ms: u64,
}

/// Longest latency accepted: beyond it every client times out, which a fault says better.
const MAX_LATENCY_MS: u64 = 60_000;

async fn set_latency(State(shared): State<AppState>, body: Bytes) -> Response {
    let latency: LatencyBody = match parse(&body) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    if latency.ms > MAX_LATENCY_MS {
        return error(
            StatusCode::BAD_REQUEST,
            format!("ms must be at most {MAX_LATENCY_MS}"),
        );
    }
    shared
        .harness()
        .set_latency(std::time::Duration::from_millis(latency.ms));
    axum::Json(json!({"ms": latency.ms})).into_response()
}

async fn get_latency(State(shared): State<AppState>) -> Response {
    let ms = u64::try_from(shared.harness().latency().as_millis()).unwrap_or(u64::MAX);
    axum::Json(json!({"ms": ms})).into_response()
}

async fn clear_latency(State(shared): State<AppState>) -> Response {
    shared.harness().set_latency(std::time::Duration::ZERO);
    axum::Json(json!({"ms": 0})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    retain_old: bool,
}

async fn rotate_secret(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let body: RotateBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let rotated = shared.inner().store.rotate_secret(&id, body.retain_old);
    match rotated {
        Ok(secret) => changed(
            axum::Json(json!({"client_id": id, "client_secret": secret})).into_response(),
            false,
        ),
        Err(RotateRefusal::NoSuchApplication) => {
            error(StatusCode::NOT_FOUND, format!("no application {id:?}"))
        }
        Err(RotateRefusal::PreviousSecretRetained) => error(
            StatusCode::CONFLICT,
            format!(
                "application {id:?} still has a previous client secret retained; as in the Kinde dashboard, delete it first (DELETE /_emulator/applications/{id}/previous-secret), then rotate"
            ),
        ),
        Err(RotateRefusal::NotRotatable(t)) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "application {id:?} is of type {}: only back-end (reg) and m2m applications have a client secret to rotate",
                t.as_str()
            ),
        ),
    }
}

/// The dashboard's "Delete previous client secret".
async fn delete_previous_secret(
    State(shared): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    let deleted = shared.inner().store.delete_previous_secret(&id);
    match deleted {
        Ok(deleted) => changed(
            axum::Json(json!({"client_id": id, "deleted": deleted})).into_response(),
            false,
        ),
        Err(_) => error(StatusCode::NOT_FOUND, format!("no application {id:?}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopesBody {
    scopes: Vec<String>,
}

async fn set_management_scopes(State(shared): State<AppState>, body: Bytes) -> Response {
    let body: ScopesBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if let Some(bad) = body
        .scopes
        .iter()
        .find(|s| s.is_empty() || s.chars().any(char::is_whitespace))
    {
        return error(StatusCode::BAD_REQUEST, format!("invalid scope {bad:?}"));
    }
    let scopes = {
        let mut inner = shared.inner();
        inner.store.set_management_scopes(&body.scopes);
        inner.store.management_scopes()
    };
    changed(axum::Json(json!({"scopes": scopes})).into_response(), false)
}

async fn get_management_scopes(State(shared): State<AppState>) -> Response {
    axum::Json(json!({"scopes": shared.inner().store.management_scopes()})).into_response()
}

async fn revoke_tokens(State(shared): State<AppState>) -> Response {
    let now = jiff::Timestamp::now().as_second();
    let revoked = shared.inner().ledger.revoke_all(now);
    changed(
        axum::Json(json!({"revoked": revoked})).into_response(),
        false,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    token_ttl_secs: Option<i64>,
    not_found_status: Option<u16>,
    token_invalid_status: Option<u16>,
}

fn config_json(ttl: i64, modes: Modes) -> Value {
    json!({
        "token_ttl_secs": ttl,
        "not_found_status": modes.not_found_status,
        "token_invalid_status": modes.token_invalid_status,
    })
}

/// Validates every field before changing anything, so a refused body changes nothing.
async fn set_config(State(shared): State<AppState>, body: Bytes) -> Response {
    let body: ConfigBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if let Some(ttl) = body.token_ttl_secs
        && !(1..=86_400).contains(&ttl)
    {
        return error(StatusCode::BAD_REQUEST, "token_ttl_secs must be 1..=86400");
    }
    let mut modes = shared.modes();
    if let Some(status) = body.not_found_status {
        match check_not_found_status(status) {
            Ok(s) => modes.not_found_status = s,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        }
    }
    if let Some(status) = body.token_invalid_status {
        match check_token_invalid_status(status) {
            Ok(s) => modes.token_invalid_status = s,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        }
    }
    shared.set_modes(modes);
    let mut inner = shared.inner();
    if let Some(ttl) = body.token_ttl_secs {
        inner.token_ttl_secs = ttl;
    }
    let ttl = inner.token_ttl_secs;
    drop(inner);
    changed(axum::Json(config_json(ttl, modes)).into_response(), false)
}

async fn get_config(State(shared): State<AppState>) -> Response {
    let ttl = shared.inner().token_ttl_secs;
    axum::Json(config_json(ttl, shared.modes())).into_response()
}

async fn get_calls(State(shared): State<AppState>) -> Response {
    axum::Json(json!(shared.harness().counters())).into_response()
}

async fn reset_calls(State(shared): State<AppState>) -> Response {
    shared.harness().reset_counters();
    axum::Json(json!({})).into_response()
}

/// Applications (without secrets) with the APIs they are authorized on, and APIs with
/// their scopes and authorized applications; scopes are given by key.
async fn dump_state(State(shared): State<AppState>) -> Response {
    let inner = shared.inner();
    let store = &inner.store;
    let applications: Vec<Value> = store
        .sorted_applications(super::state::AppSort::Created)
        .into_iter()
        .map(|app| {
            let apis: Vec<Value> = store
                .sorted_apis()
                .into_iter()
                .filter_map(|api| {
                    api.grants.get(&app.id).map(|ids| {
                        json!({"id": api.id, "audience": api.audience, "scopes": api.scope_keys(ids)})
                    })
                })
                .collect();
            json!({
                "id": app.id,
                "name": app.name,
                "type": app.app_type.as_str(),
                "org_code": app.org_code,
                "is_management_client": app.id == store.management_client_id,
                "previous_secret_retained": !app.retained_secrets.is_empty(),
                "access_token_lifetime": app.access_token_lifetime,
                "properties": app.properties,
                "apis": apis,
            })
        })
        .collect();
    let apis: Vec<Value> = store
        .sorted_apis()
        .into_iter()
        .map(|api| {
            let scopes: Vec<Value> = api
                .scopes
                .iter()
                .map(|s| json!({"id": s.id, "key": s.key, "description": s.description}))
                .collect();
            let apps: Vec<Value> = api
                .grants
                .iter()
                .map(|(id, ids)| json!({"id": id, "scopes": api.scope_keys(ids)}))
                .collect();
            json!({
                "id": api.id,
                "name": api.name,
                "audience": api.audience,
                "is_management_api": api.is_management_api,
                "scopes": scopes,
                "applications": apps,
            })
        })
        .collect();
    axum::Json(json!({
        "domain": shared.domain,
        "management_client_id": store.management_client_id,
        "applications": applications,
        "apis": apis,
    }))
    .into_response()
}

async fn reset(State(shared): State<AppState>) -> Response {
    shared.reset();
    changed(axum::Json(json!({"reset": true})).into_response(), false)
}

//! The emulator's control surface, under `/_emulator/`: no authentication, JSON in and
//! out, errors as `{"error": "..."}` with 400 (bad input) or 404 (unknown id). Not part of
//! Kinde: tests and local users drive and inspect the emulator with it.
//!
//! - `POST /_emulator/faults` `{operation, status?, times? (1), latency_ms?, drop_response?,
//!   body?, headers?}` → 201 `{"fault": ...}`. The next `times` calls of `operation` (a
//!   spec operationId, or `token`) get the fault: `latency_ms` delays the call (then
//!   normal handling unless another field says otherwise); `status` answers with that
//!   status without processing the request (body: `body` verbatim, else an
//!   `error_response`/OAuth2 error; headers: `headers`, else `RateLimit-Reset: 1` for a
//!   429); `drop_response: true` processes the request (the write happens) and then closes
//!   the connection without any response, or, with `status`, answers with that fault
//!   response instead of the real one. `GET` → `{"faults":[...]}` (pending, with the
//!   remaining `times`); `DELETE` → `{"cleared": n}`.
//! - `PUT /_emulator/rate-limit` `{requests, per_seconds}`: fixed window over management
//!   calls (not `/oauth2/token`); beyond it: 429 `error_response` with `RateLimit-Reset:
//!   <seconds until the window ends>`, request not processed. `GET` shows it, `DELETE`
//!   removes it.
//! - `POST /_emulator/applications/{id}/rotate-secret` `{retain_old?: bool}` → `{client_id,
//!   client_secret}`: new secret as the dashboard's "Rotate"; the previous one keeps
//!   working only with `retain_old` (one retained secret at a time).
//! - `GET|PUT /_emulator/management-client/scopes` `{scopes:[...]}`: the management
//!   client's scopes on the Kinde Management API (new tokens only).
//! - `POST /_emulator/tokens/revoke` → `{revoked: n}`: every token issued so far stops
//!   working on the management API.
//! - `GET|PUT /_emulator/config` `{token_ttl_secs}` (default 3600, 1..=86400).
//! - `GET /_emulator/calls` → `{operation: {calls, writes, statuses: {"200": n, ...}}}`
//!   (`writes`: mutations actually performed; a connection closed by a fault counts as
//!   status `"dropped"`); `DELETE` resets the counters.
//! - `GET /_emulator/state`: applications (no secrets) and APIs with their grants.
//! - `POST /_emulator/reset`: initial state (keeps the signing key, the management
//!   client's credentials and revoked tokens; clears faults, rate limit, counters).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::faults::{FaultSpec, RateLimit};
use super::server::{AppState, changed, json_body};

pub fn routes() -> Router<AppState> {
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
        .route("/applications/{id}/rotate-secret", post(rotate_secret))
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
}

async fn set_config(State(shared): State<AppState>, body: Bytes) -> Response {
    let body: ConfigBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let mut inner = shared.inner();
    if let Some(ttl) = body.token_ttl_secs {
        if !(1..=86_400).contains(&ttl) {
            return error(StatusCode::BAD_REQUEST, "token_ttl_secs must be 1..=86400");
        }
        inner.token_ttl_secs = ttl;
    }
    let ttl = inner.token_ttl_secs;
    drop(inner);
    changed(
        axum::Json(json!({"token_ttl_secs": ttl})).into_response(),
        false,
    )
}

async fn get_config(State(shared): State<AppState>) -> Response {
    axum::Json(json!({"token_ttl_secs": shared.inner().token_ttl_secs})).into_response()
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

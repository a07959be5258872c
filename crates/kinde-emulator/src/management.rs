//! The emulated Kinde Management API (`/api/v1/...`): applications, APIs, API scopes,
//! application authorization and per-application scopes.
//!
//! Bodies, status codes and `code`/`message` values follow `management-api.yaml`
//! (v0.19.0); where the spec is silent the choice is documented on the item and in
//! `docs/emulator.md`. Every call needs a bearer token minted by `/oauth2/token` for the
//! management audience whose `scp` holds the operation's scope (the spec's `x-scope`, or
//! the scope named in the description where `x-scope` is missing).

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::server::{AppState, NotFoundAnswer, Shared, changed, json_body};
use super::state::{AppSort, AppType, KindeError, Property, SortKey, management_audience};

/// Largest accepted `page_size` (NOTES: `PAGE_SIZE_LIMIT_EXCEEDED`, "cannot be greater than 100").
const MAX_PAGE_SIZE: usize = 100;
const DEFAULT_PAGE_SIZE: usize = 10;
/// Docs cap bulk writes at 100 objects per request.
const MAX_BULK: usize = 100;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/applications",
            get(get_applications).post(create_application),
        )
        .route(
            "/api/v1/applications/{application_id}",
            get(get_application)
                .patch(update_application)
                .delete(delete_application),
        )
        .route(
            "/api/v1/applications/{application_id}/tokens",
            patch(update_application_tokens),
        )
        .route(
            "/api/v1/applications/{application_id}/properties",
            get(get_application_property_values),
        )
        .route(
            "/api/v1/applications/{application_id}/properties/{property_key}",
            put(update_applications_property),
        )
        .route(
            "/api/v1/properties",
            get(get_properties).post(create_property),
        )
        .route(
            "/api/v1/property_categories",
            get(get_categories).post(create_category),
        )
        .route("/api/v1/apis", get(get_apis).post(add_apis))
        .route("/api/v1/apis/{api_id}", get(get_api).delete(delete_api))
        .route(
            "/api/v1/apis/{api_id}/scopes",
            get(get_api_scopes).post(add_api_scope),
        )
        .route(
            "/api/v1/apis/{api_id}/scopes/{scope_id}",
            get(get_api_scope)
                .patch(update_api_scope)
                .delete(delete_api_scope),
        )
        .route(
            "/api/v1/apis/{api_id}/applications",
            patch(update_api_applications),
        )
        .route(
            "/api/v1/apis/{api_id}/applications/{application_id}/scopes/{scope_id}",
            post(add_api_application_scope).delete(delete_api_application_scope),
        )
        .method_not_allowed_fallback(route_not_found)
}

/// Unknown routes and methods: the spec's `not_found_response` (note: `errors` is an
/// object there, not an array).
pub(crate) async fn route_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"errors": {"code": "ROUTE_NOT_FOUND", "message": "The requested API route does not exist"}})),
    )
        .into_response()
}

/// The spec's `error_response`: `{"errors":[{"code","message"}]}`.
pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errors": [{"code": code, "message": message}]})),
    )
        .into_response()
}

/// A failed management call, rendered as an `error_response`.
struct ApiError(KindeError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = error_response(status, self.0.code, &self.0.message);
        if is_not_found_code(self.0.code) {
            // The not-found mode (400 or 404) is applied by the middleware, which knows it.
            response.extensions_mut().insert(NotFoundAnswer);
        }
        response
    }
}

/// "No such application / API / scope" answers (`APPLICATION_NOT_FOUND`, ...), which the
/// not-found mode answers as 400 or 404.
fn is_not_found_code(code: &str) -> bool {
    code.ends_with("_NOT_FOUND")
}

impl From<KindeError> for ApiError {
    fn from(e: KindeError) -> Self {
        Self(e)
    }
}

fn forbidden(code: &'static str, message: String) -> ApiError {
    ApiError(KindeError {
        status: 403,
        code,
        message,
    })
}

fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
    KindeError::bad_request(code, message).into()
}

type ApiResult = Result<Response, ApiError>;

fn ok(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

// ---- authentication and scopes ----

/// Scopes that satisfy an operation. The two operations without `x-scope` name typo'd
/// scopes in their descriptions (`delete:apis_scopes`, `delete:apis_application_scopes`);
/// both the corrected and the spec spelling are accepted.
fn required_scopes(op: &str) -> &'static [&'static str] {
    match op {
        "createApplication" => &["create:applications"],
        "getApplication" | "getApplications" => &["read:applications"],
        "updateApplication" => &["update:applications"],
        "deleteApplication" => &["delete:applications"],
        "updateApplicationTokens" => &["update:application_tokens"],
        "getApplicationPropertyValues" => &["read:application_properties"],
        "updateApplicationsProperty" => &["update:application_properties"],
        "GetProperties" => &["read:properties"],
        "CreateProperty" => &["create:properties"],
        "GetCategories" => &["read:property_categories"],
        "CreateCategory" => &["create:property_categories"],
        "addAPIs" => &["create:apis"],
        "getAPI" | "getAPIs" => &["read:apis"],
        "deleteAPI" => &["delete:apis"],
        "updateAPIApplications" => &["update:apis"],
        "getAPIScopes" | "getAPIScope" => &["read:api_scopes"],
        "addAPIScope" => &["create:api_scopes"],
        "updateAPIScope" => &["update:api_scopes"],
        "deleteAPIScope" => &["delete:api_scopes", "delete:apis_scopes"],
        "addAPIApplicationScope" => &["create:api_application_scopes"],
        "deleteAPIApplicationScope" => &[
            "delete:api_application_scopes",
            "delete:apis_application_scopes",
        ],
        _ => &[],
    }
}

/// A refused management token: 401 by default (Kinde's troubleshooting page: "401
/// Unauthorized: missing or expired token, malformed Authorization header"), 403 in the
/// earlier mode. The body is an `error_response` with code `TOKEN_INVALID` (a guess: the
/// spec documents no 401).
fn token_invalid(status: u16, message: &str) -> ApiError {
    ApiError(KindeError {
        status,
        code: "TOKEN_INVALID",
        message: message.to_owned(),
    })
}

/// Kinde's answer to a valid token without the operation's scope: 403 `SCOPE_MISSING`,
/// "Scope is missing: <scope>".
fn scope_missing(scope: &str) -> ApiError {
    forbidden("SCOPE_MISSING", format!("Scope is missing: {scope}"))
}

/// Checks the bearer token (signature, `exp`, `iss`, `aud` = management audience, not
/// revoked) and that its `scp` allows `op`: [`token_invalid`] for the token itself,
/// [`scope_missing`] for a missing scope.
fn authorize(shared: &Shared, headers: &HeaderMap, op: &str) -> Result<(), ApiError> {
    let status = shared.modes().token_invalid_status;
    let raw = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| token_invalid(status, "Missing bearer token"))?;
    let token = match raw.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(token_invalid(
                status,
                "Authorization header is not a bearer token",
            ));
        }
    };
    let audience = management_audience(&shared.domain);
    let claims = shared
        .key
        .verify(token, shared.issuer(), &audience)
        .map_err(|e| token_invalid(status, &format!("Invalid access token: {e}")))?;
    if shared.inner().ledger.is_revoked(&claims.jti) {
        return Err(token_invalid(status, "Access token has been revoked"));
    }
    let needed = required_scopes(op);
    if !needed.iter().any(|s| claims.scp.iter().any(|c| c == s)) {
        return Err(scope_missing(needed.first().copied().unwrap_or_default()));
    }
    Ok(())
}

// ---- request parsing ----

/// Parses a JSON body, answering 400 `INVALID_REQUEST_BODY` instead of axum's plain-text
/// rejection.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    json_body(body)
        .map_err(|e| bad_request("INVALID_REQUEST_BODY", format!("Invalid request body: {e}")))
}

fn parse_query(raw: Option<String>) -> Result<HashMap<String, String>, ApiError> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(raw.as_deref().unwrap_or(""))
        .map(|pairs| pairs.into_iter().collect())
        .map_err(|_| bad_request("INVALID_QUERY", "Malformed query string"))
}

/// A required string field, trimmed check only (the stored value is kept as sent).
fn required(value: Option<String>, field: &str, code: &'static str) -> Result<String, ApiError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(bad_request(code, format!("The {field} is required"))),
    }
}

fn check_len(value: &str, field: &str, code: &'static str) -> Result<(), ApiError> {
    let n = value.chars().count();
    if (1..=64).contains(&n) {
        Ok(())
    } else {
        Err(bad_request(
            code,
            format!("The {field} must be 1-64 characters"),
        ))
    }
}

/// Paging parameters shared by the list endpoints.
struct Paging {
    page_size: usize,
    after: Option<Cursor>,
}

/// `next_token`: base64url JSON of the sort key of the last item returned, so pages stay
/// consistent when items are added or deleted between calls.
#[derive(Serialize, Deserialize, PartialEq)]
struct Cursor {
    s: String,
    k: SortKey,
}

fn paging(q: &HashMap<String, String>, sort: &str) -> Result<Paging, ApiError> {
    let page_size = match q.get("page_size").map(String::as_str) {
        None | Some("") => DEFAULT_PAGE_SIZE,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n > MAX_PAGE_SIZE as i64 => {
                return Err(bad_request(
                    "PAGE_SIZE_LIMIT_EXCEEDED",
                    "Page size cannot be greater than 100",
                ));
            }
            Ok(n) if n >= 1 => n as usize,
            _ => {
                return Err(bad_request(
                    "INVALID_PAGE_SIZE",
                    "Page size must be a positive integer",
                ));
            }
        },
    };
    let after = match q.get("next_token").map(String::as_str) {
        None | Some("") => None,
        Some(token) => {
            let cursor = URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|b| serde_json::from_slice::<Cursor>(&b).ok())
                .filter(|c| c.s == sort)
                .ok_or_else(|| bad_request("INVALID_NEXT_TOKEN", "The next_token is invalid"))?;
            Some(cursor)
        }
    };
    Ok(Paging { page_size, after })
}

/// One page of `items` (already in order, with their sort keys) and the token for the
/// next page, if there are more items.
fn page<T>(
    items: Vec<(T, SortKey)>,
    paging: &Paging,
    sort: &str,
    descending: bool,
) -> (Vec<T>, Option<String>) {
    let mut rest: Vec<(T, SortKey)> = match &paging.after {
        None => items,
        Some(c) => items
            .into_iter()
            .filter(|(_, k)| if descending { *k < c.k } else { *k > c.k })
            .collect(),
    };
    let more = rest.len() > paging.page_size;
    rest.truncate(paging.page_size);
    let next = if more {
        rest.last().and_then(|(_, k)| {
            serde_json::to_vec(&Cursor {
                s: sort.to_owned(),
                k: k.clone(),
            })
            .ok()
            .map(|b| URL_SAFE_NO_PAD.encode(b))
        })
    } else {
        None
    };
    (rest.into_iter().map(|(t, _)| t).collect(), next)
}

// ---- applications ----

#[derive(Deserialize)]
struct CreateApplicationBody {
    name: Option<String>,
    #[serde(rename = "type")]
    app_type: Option<String>,
    org_code: Option<String>,
}

/// `createApplication`: 201 `create_application_response`. `org_code` is only accepted for
/// `m2m` apps (400 `APPLICATION_TYPE_NOT_SUPPORTED`) and must be non-empty without
/// whitespace (400 `INVALID_ORG_CODE`); the emulator has no organizations to check it against.
async fn create_application(
    State(shared): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    authorize(&shared, &headers, "createApplication")?;
    let body: CreateApplicationBody = parse_body(&body)?;
    let name = required(body.name, "name", "NAME_REQUIRED")?;
    let app_type = required(body.app_type, "type", "TYPE_REQUIRED")?;
    let app_type = AppType::parse(&app_type).ok_or_else(|| {
        bad_request(
            "INVALID_APPLICATION_TYPE",
            "The type must be one of reg, spa, m2m, device",
        )
    })?;
    if let Some(org) = &body.org_code {
        if app_type != AppType::M2m {
            return Err(bad_request(
                "APPLICATION_TYPE_NOT_SUPPORTED",
                "Only m2m applications can be scoped to an organization",
            ));
        }
        if org.is_empty() || org.chars().any(char::is_whitespace) {
            return Err(bad_request("INVALID_ORG_CODE", "The org_code is invalid"));
        }
    }
    let app = shared
        .inner()
        .store
        .create_application(name, app_type, body.org_code);
    Ok(changed(
        ok(
            StatusCode::CREATED,
            json!({
                "code": "APPLICATION_CREATED",
                "message": "Application successfully created",
                "application": {
                    "id": app.id,
                    "client_id": app.id,
                    "client_secret": app.client_secret,
                }
            }),
        ),
        true,
    ))
}

/// `getApplication`: 200 `get_application_response`, including the client secret. The
/// emulator only models what an M2M app has; browser-flow settings are fixed defaults.
async fn get_application(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&shared, &headers, "getApplication")?;
    let inner = shared.inner();
    let app = inner.store.application(&id)?;
    Ok(ok(
        StatusCode::OK,
        json!({
            "code": "OK",
            "message": "Success",
            "application": {
                "id": app.id,
                "name": app.name,
                "type": app.app_type.as_str(),
                "client_id": app.id,
                "client_secret": app.client_secret,
                "has_cancel_button": false,
                "is_access_control_enabled": false,
                "is_allow_faceless_auth": false,
                "is_ask_for_name": false,
                "has_marketing_consent": false,
                "has_sign_in_link_on_sign_up_page": true,
                "has_register_link_on_sign_in_page": true,
                "has_sign_in_with_sso_button": false,
                "use_gravatar_fallback": false,
            }
        }),
    ))
}

/// `getApplications`: 200 `get_applications_response`, `sort` = `name_asc`|`name_desc`
/// (default: creation order), `page_size` 1..=100 (default 10), opaque `next_token`
/// (absent on the last page).
async fn get_applications(
    State(shared): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult {
    authorize(&shared, &headers, "getApplications")?;
    let q = parse_query(query)?;
    let (sort, sort_name) = match q.get("sort").map(String::as_str) {
        None | Some("") => (AppSort::Created, "created"),
        Some("name_asc") => (AppSort::NameAsc, "name_asc"),
        Some("name_desc") => (AppSort::NameDesc, "name_desc"),
        Some(_) => {
            return Err(bad_request(
                "INVALID_SORT",
                "The sort must be name_asc or name_desc",
            ));
        }
    };
    let paging = paging(&q, sort_name)?;
    let inner = shared.inner();
    let items = inner
        .store
        .sorted_applications(sort)
        .into_iter()
        .map(|a| {
            (
                json!({"id": a.id, "name": a.name, "type": a.app_type.as_str()}),
                a.sort_key(sort),
            )
        })
        .collect();
    let (apps, next) = page(items, &paging, sort_name, sort == AppSort::NameDesc);
    let mut body = json!({"code": "OK", "message": "Success", "applications": apps});
    if let Some(next) = next {
        body["next_token"] = json!(next);
    }
    Ok(ok(StatusCode::OK, body))
}

#[derive(Deserialize)]
struct UpdateApplicationBody {
    name: Option<String>,
}

/// `updateApplication`: only `name` is modelled (other settings in the spec's body are
/// accepted and ignored: they do not apply to M2M apps). 200 with
/// `{"code":"APPLICATION_UPDATED",...}` (the spec declares no body).
async fn update_application(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    authorize(&shared, &headers, "updateApplication")?;
    let body: UpdateApplicationBody = parse_body(&body)?;
    if let Some(name) = &body.name
        && name.trim().is_empty()
    {
        return Err(bad_request("NAME_REQUIRED", "The name cannot be empty"));
    }
    let wrote = shared.inner().store.rename_application(&id, body.name)?;
    let response = ok(
        StatusCode::OK,
        json!({"code": "APPLICATION_UPDATED", "message": "Application successfully updated"}),
    );
    Ok(if wrote {
        changed(response, true)
    } else {
        response
    })
}

/// `deleteApplication`: 200 `success_response`; the app's grants go with it.
async fn delete_application(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&shared, &headers, "deleteApplication")?;
    shared.inner().store.delete_application(&id)?;
    Ok(changed(
        ok(
            StatusCode::OK,
            json!({"code": "APPLICATION_DELETED", "message": "Application successfully deleted"}),
        ),
        true,
    ))
}

/// The body of `updateApplicationTokens`: lifetimes in seconds. Only
/// `access_token_lifetime` is modelled (M2M tokens are access tokens); the others are
/// type-checked and otherwise ignored.
#[derive(Deserialize)]
struct UpdateApplicationTokensBody {
    access_token_lifetime: Option<i64>,
    refresh_token_lifetime: Option<i64>,
    id_token_lifetime: Option<i64>,
    authenticated_session_lifetime: Option<i64>,
    is_hasura_mapping_enabled: Option<bool>,
}

/// Longest lifetime the emulator accepts: a year (the spec gives no bound; an `i64` of
/// seconds past that would overflow token expiry arithmetic long before it made sense).
const MAX_TOKEN_LIFETIME_SECS: i64 = 365 * 86_400;

/// `updateApplicationTokens`: 200 `success_response` (`APPLICATION_TOKENS_UPDATED`); 400
/// `NO_FIELDS_TO_UPDATE` for a body without any setting (the spec's example code for an
/// empty update), `INVALID_TOKEN_LIFETIME` for a lifetime that is not 1 s to a year. The
/// new access-token lifetime applies to tokens issued from then on (`expires_in`, `exp`).
async fn update_application_tokens(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    authorize(&shared, &headers, "updateApplicationTokens")?;
    let body: UpdateApplicationTokensBody = parse_body(&body)?;
    let lifetimes = [
        ("access_token_lifetime", body.access_token_lifetime),
        ("refresh_token_lifetime", body.refresh_token_lifetime),
        ("id_token_lifetime", body.id_token_lifetime),
        (
            "authenticated_session_lifetime",
            body.authenticated_session_lifetime,
        ),
    ];
    if lifetimes.iter().all(|(_, v)| v.is_none()) && body.is_hasura_mapping_enabled.is_none() {
        return Err(bad_request("NO_FIELDS_TO_UPDATE", "No fields to update"));
    }
    if let Some((field, _)) = lifetimes
        .iter()
        .find(|(_, v)| v.is_some_and(|s| !(1..=MAX_TOKEN_LIFETIME_SECS).contains(&s)))
    {
        return Err(bad_request(
            "INVALID_TOKEN_LIFETIME",
            format!("The {field} must be a number of seconds from 1 to {MAX_TOKEN_LIFETIME_SECS}"),
        ));
    }
    let mut inner = shared.inner();
    let wrote = match body.access_token_lifetime {
        Some(seconds) => inner.store.set_access_token_lifetime(&id, seconds)?,
        // Still a 404-style answer for an unknown application.
        None => inner.store.application(&id).map(|_| false)?,
    };
    drop(inner);
    let response = ok(
        StatusCode::OK,
        json!({"code": "APPLICATION_TOKENS_UPDATED", "message": "Application tokens successfully updated"}),
    );
    Ok(if wrote {
        changed(response, true)
    } else {
        response
    })
}

// ---- properties ----

/// A `context` filter: absent, or one of `usr`, `org`, `app`.
fn context_filter(query: &HashMap<String, String>) -> Result<Option<String>, ApiError> {
    match query.get("context").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(c @ ("usr" | "org" | "app")) => Ok(Some(c.to_owned())),
        Some(_) => Err(bad_request(
            "INVALID_CONTEXT",
            "context must be one of usr, org, app",
        )),
    }
}

/// `GetProperties`: 200 `get_properties_response` (one page, `has_more` false: the
/// emulator's businesses hold a handful of properties), filtered by `context`.
async fn get_properties(
    State(shared): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult {
    authorize(&shared, &headers, "GetProperties")?;
    let query = parse_query(query)?;
    let context = context_filter(&query)?;
    let inner = shared.inner();
    let properties: Vec<Value> = inner
        .store
        .properties
        .iter()
        .filter(|p| context.as_deref().is_none_or(|c| c == p.context))
        .map(|p| {
            json!({"id": p.id, "key": p.key, "name": p.name, "is_private": p.is_private,
                   "description": p.description, "is_kinde_property": false})
        })
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!({"code": "OK", "message": "Success", "properties": properties, "has_more": false}),
    ))
}

#[derive(Deserialize)]
struct CreatePropertyBody {
    name: Option<String>,
    description: Option<String>,
    key: Option<String>,
    #[serde(rename = "type")]
    property_type: Option<String>,
    context: Option<String>,
    is_private: Option<bool>,
    category_id: Option<String>,
}

/// `CreateProperty`: 201 `create_property_response`; every field but `description` is
/// required (the spec's `required`), `type` is `single_line_text` or `multi_line_text`,
/// keys are unique (400 `PROPERTY_KEY_ALREADY_EXISTS`).
async fn create_property(
    State(shared): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    authorize(&shared, &headers, "CreateProperty")?;
    let body: CreatePropertyBody = parse_body(&body)?;
    let name = required(body.name, "name", "NAME_REQUIRED")?;
    let key = required(body.key, "key", "KEY_REQUIRED")?;
    let property_type = required(body.property_type, "type", "TYPE_REQUIRED")?;
    if !matches!(
        property_type.as_str(),
        "single_line_text" | "multi_line_text"
    ) {
        return Err(bad_request(
            "INVALID_TYPE",
            "type must be single_line_text or multi_line_text",
        ));
    }
    let context = required(body.context, "context", "CONTEXT_REQUIRED")?;
    let category_id = required(body.category_id, "category_id", "CATEGORY_ID_REQUIRED")?;
    let is_private = body
        .is_private
        .ok_or_else(|| bad_request("IS_PRIVATE_REQUIRED", "is_private is required"))?;
    let id = shared.inner().store.create_property(Property {
        id: String::new(),
        key,
        name,
        description: body.description.unwrap_or_default(),
        context,
        is_private,
        category_id,
    })?;
    Ok(changed(
        ok(
            StatusCode::CREATED,
            json!({"code": "PROPERTY_CREATED", "message": "Property successfully created", "property": {"id": id}}),
        ),
        true,
    ))
}

/// `GetCategories`: 200 `get_categories_response` (one page), filtered by `context`.
async fn get_categories(
    State(shared): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult {
    authorize(&shared, &headers, "GetCategories")?;
    let query = parse_query(query)?;
    let context = context_filter(&query)?;
    let inner = shared.inner();
    let categories: Vec<Value> = inner
        .store
        .categories
        .iter()
        .filter(|c| context.as_deref().is_none_or(|x| x == c.context))
        .map(|c| json!({"id": c.id, "name": c.name}))
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!({"code": "OK", "message": "Success", "categories": categories, "has_more": false}),
    ))
}

#[derive(Deserialize)]
struct CreateCategoryBody {
    name: Option<String>,
    context: Option<String>,
}

/// `CreateCategory`: 201 `create_category_response`; `name` and `context` required.
async fn create_category(
    State(shared): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    authorize(&shared, &headers, "CreateCategory")?;
    let body: CreateCategoryBody = parse_body(&body)?;
    let name = required(body.name, "name", "NAME_REQUIRED")?;
    let context = required(body.context, "context", "CONTEXT_REQUIRED")?;
    let id = shared.inner().store.create_category(&name, &context)?;
    Ok(changed(
        ok(
            StatusCode::CREATED,
            json!({"code": "CATEGORY_CREATED", "message": "Category successfully created", "category": {"id": id}}),
        ),
        true,
    ))
}

/// `getApplicationPropertyValues`: 200 `get_property_values_response`: every `app`
/// property with the application's value (`null` where it has none).
async fn get_application_property_values(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&shared, &headers, "getApplicationPropertyValues")?;
    let inner = shared.inner();
    let app = inner.store.application(&id)?;
    let values: Vec<Value> = inner
        .store
        .properties
        .iter()
        .filter(|p| p.context == "app")
        .map(|p| {
            json!({"id": p.id, "name": p.name, "description": p.description, "key": p.key,
                   "value": app.properties.get(&p.key)})
        })
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!({"code": "OK", "message": "Success", "properties": values}),
    ))
}

#[derive(Deserialize)]
struct UpdatePropertyBody {
    value: Option<Value>,
}

/// `updateApplicationsProperty`: 200 `success_response`; `value` is a string or a boolean
/// (kept as its text); 400 `PROPERTY_NOT_FOUND` for a key that is no `app` property.
async fn update_applications_property(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path((id, key)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    authorize(&shared, &headers, "updateApplicationsProperty")?;
    let body: UpdatePropertyBody = parse_body(&body)?;
    let value = match body.value {
        Some(Value::String(s)) => s,
        Some(Value::Bool(b)) => b.to_string(),
        _ => {
            return Err(bad_request(
                "INVALID_VALUE",
                "value is required: a string or a boolean",
            ));
        }
    };
    let wrote = shared
        .inner()
        .store
        .set_application_property(&id, &key, value)?;
    Ok(changed(
        ok(
            StatusCode::OK,
            json!({"code": "PROPERTY_UPDATED", "message": "Property successfully updated"}),
        ),
        wrote,
    ))
}

// ---- APIs ----

#[derive(Deserialize)]
struct AddApiBody {
    name: Option<String>,
    audience: Option<String>,
}

/// `addAPIs`: 200 (not 201) `create_apis_response`. A duplicate audience is 400
/// `API_AUDIENCE_ALREADY_EXISTS`.
async fn add_apis(State(shared): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    authorize(&shared, &headers, "addAPIs")?;
    let body: AddApiBody = parse_body(&body)?;
    let name = required(body.name, "name", "NAME_REQUIRED")?;
    check_len(&name, "name", "INVALID_NAME")?;
    let audience = required(body.audience, "audience", "AUDIENCE_REQUIRED")?;
    check_len(&audience, "audience", "INVALID_AUDIENCE")?;
    let id = shared.inner().store.create_api(name, audience)?;
    Ok(changed(
        ok(
            StatusCode::OK,
            json!({"code": "OK", "message": "Success", "api": {"id": id}}),
        ),
        true,
    ))
}

/// `getAPI`: 200 `get_api_response`; `applications` lists every application of the
/// business (by name), `is_active` true for those authorized on this API.
async fn get_api(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&shared, &headers, "getAPI")?;
    let inner = shared.inner();
    let api = inner.store.api(&id)?;
    let applications: Vec<Value> = inner
        .store
        .sorted_applications(AppSort::NameAsc)
        .into_iter()
        .map(|a| {
            json!({
                "id": a.id,
                "name": a.name,
                "type": a.app_type.label(),
                "is_active": api.grants.contains_key(&a.id),
            })
        })
        .collect();
    let scopes: Vec<Value> = api
        .scopes
        .iter()
        .map(|s| json!({"id": s.id, "key": s.key}))
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!({
            "code": "OK",
            "message": "success_response",
            "api": {
                "id": api.id,
                "name": api.name,
                "audience": api.audience,
                "is_management_api": api.is_management_api,
                "scopes": scopes,
                "applications": applications,
            }
        }),
    ))
}

/// `getAPIs`: 200 `get_apis_response`, sorted by name, `expand=scopes` adds `scopes`.
/// Paged with `page_size`/`next_token` like applications although the spec declares no
/// query parameters here (its response does carry `next_token`).
async fn get_apis(
    State(shared): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult {
    authorize(&shared, &headers, "getAPIs")?;
    let q = parse_query(query)?;
    let expand_scopes = match q.get("expand").map(String::as_str) {
        None | Some("") => false,
        Some("scopes") => true,
        Some(_) => {
            return Err(bad_request(
                "INVALID_EXPAND",
                "The expand parameter only allows \"scopes\"",
            ));
        }
    };
    let paging = paging(&q, "name")?;
    let inner = shared.inner();
    let items = inner
        .store
        .sorted_apis()
        .into_iter()
        .map(|api| {
            let mut item = json!({
                "id": api.id,
                "name": api.name,
                "audience": api.audience,
                "is_management_api": api.is_management_api,
            });
            if expand_scopes {
                item["scopes"] = api
                    .scopes
                    .iter()
                    .map(|s| json!({"id": s.id, "key": s.key}))
                    .collect();
            }
            (item, api.sort_key())
        })
        .collect();
    let (apis, next) = page(items, &paging, "name", false);
    let mut body = json!({"code": "OK", "message": "Success", "apis": apis});
    if let Some(next) = next {
        body["next_token"] = json!(next);
    }
    Ok(ok(StatusCode::OK, body))
}

/// `deleteAPI`: 200 `delete_api_response`. The Kinde Management API cannot be deleted
/// (400 `MANAGEMENT_API_NOT_MODIFIABLE`).
async fn delete_api(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&shared, &headers, "deleteAPI")?;
    shared.inner().store.delete_api(&id)?;
    Ok(changed(
        ok(
            StatusCode::OK,
            json!({"code": "API_DELETED", "message": "API successfully deleted"}),
        ),
        true,
    ))
}

// ---- API scopes ----

/// `getAPIScopes`: 200 `get_api_scopes_response`, in creation order.
async fn get_api_scopes(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path(api_id): Path<String>,
) -> ApiResult {
    authorize(&shared, &headers, "getAPIScopes")?;
    let inner = shared.inner();
    let api = inner.store.api(&api_id)?;
    let scopes: Vec<Value> = api
        .scopes
        .iter()
        .map(|s| json!({"id": s.id, "key": s.key, "description": s.description}))
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!({"code": "OK", "message": "success_response", "scopes": scopes}),
    ))
}

/// `getAPIScope`: 200 `get_api_scope_response`.
async fn get_api_scope(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path((api_id, scope_id)): Path<(String, String)>,
) -> ApiResult {
    authorize(&shared, &headers, "getAPIScope")?;
    let inner = shared.inner();
    let s = inner.store.scope(&api_id, &scope_id)?;
    Ok(ok(
        StatusCode::OK,
        json!({
            "code": "OK",
            "message": "success_response",
            "scope": {"id": s.id, "key": s.key, "description": s.description},
        }),
    ))
}

#[derive(Deserialize)]
struct AddScopeBody {
    key: Option<String>,
    description: Option<String>,
}

/// `addAPIScope`: 200 `create_api_scopes_response`. Key 1-64 characters without
/// whitespace (400 `INVALID_KEY`), unique per API (400 `API_SCOPE_ALREADY_EXISTS`).
async fn add_api_scope(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path(api_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    authorize(&shared, &headers, "addAPIScope")?;
    let body: AddScopeBody = parse_body(&body)?;
    let key = required(body.key, "key", "KEY_REQUIRED")?;
    check_len(&key, "key", "INVALID_KEY")?;
    if key.chars().any(char::is_whitespace) {
        return Err(bad_request(
            "INVALID_KEY",
            "The key cannot contain white space",
        ));
    }
    let id =
        shared
            .inner()
            .store
            .create_scope(&api_id, key, body.description.unwrap_or_default())?;
    Ok(changed(
        ok(
            StatusCode::OK,
            json!({"code": "OK", "message": "Success", "scope": {"id": id}}),
        ),
        true,
    ))
}

#[derive(Deserialize)]
struct UpdateScopeBody {
    description: Option<String>,
}

/// `updateAPIScope`: description only (the key is immutable). 200
/// `{"code":"API_SCOPE_UPDATED",...}` (the spec declares no body).
async fn update_api_scope(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path((api_id, scope_id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    authorize(&shared, &headers, "updateAPIScope")?;
    let body: UpdateScopeBody = parse_body(&body)?;
    let wrote = shared
        .inner()
        .store
        .update_scope(&api_id, &scope_id, body.description)?;
    let response = ok(
        StatusCode::OK,
        json!({"code": "API_SCOPE_UPDATED", "message": "API scope successfully updated"}),
    );
    Ok(if wrote {
        changed(response, true)
    } else {
        response
    })
}

/// `deleteAPIScope`: 200 `{"code":"API_SCOPE_DELETED",...}` (no body in the spec); the
/// scope is also taken from every application that had it.
async fn delete_api_scope(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path((api_id, scope_id)): Path<(String, String)>,
) -> ApiResult {
    authorize(&shared, &headers, "deleteAPIScope")?;
    shared.inner().store.delete_scope(&api_id, &scope_id)?;
    Ok(changed(
        ok(
            StatusCode::OK,
            json!({"code": "API_SCOPE_DELETED", "message": "API scope successfully deleted"}),
        ),
        true,
    ))
}

// ---- authorization ----

#[derive(Deserialize)]
struct UpdateApiApplicationsBody {
    applications: Option<Vec<ApplicationOp>>,
}

#[derive(Deserialize)]
struct ApplicationOp {
    id: Option<String>,
    operation: Option<String>,
}

/// `updateAPIApplications`: authorize (no `operation`) or de-authorize
/// (`"operation":"delete"`) up to 100 applications, all or nothing. Unknown application:
/// 400 `APPLICATION_NOT_FOUND`; another `operation` value: 400 `INVALID_OPERATION`.
/// `applications_connected`/`_disconnected` echo the requested ids per operation,
/// whether or not their state changed.
async fn update_api_applications(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path(api_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    authorize(&shared, &headers, "updateAPIApplications")?;
    let body: UpdateApiApplicationsBody = parse_body(&body)?;
    let entries = body
        .applications
        .ok_or_else(|| bad_request("APPLICATIONS_REQUIRED", "The applications are required"))?;
    if entries.len() > MAX_BULK {
        return Err(bad_request(
            "TOO_MANY_APPLICATIONS",
            "No more than 100 applications can be updated per request",
        ));
    }
    let mut ops = Vec::with_capacity(entries.len());
    for entry in entries {
        let id = required(entry.id, "application id", "APPLICATION_ID_REQUIRED")?;
        let delete = match entry.operation.as_deref() {
            None => false,
            Some("delete") => true,
            Some(other) => {
                return Err(bad_request(
                    "INVALID_OPERATION",
                    format!("Unknown operation {other:?}: only \"delete\" is allowed"),
                ));
            }
        };
        ops.push((id, delete));
    }
    let change = shared
        .inner()
        .store
        .update_api_applications(&api_id, &ops)?;
    let response = ok(
        StatusCode::OK,
        json!({
            "code": "API_APPLICATIONS_UPDATED",
            "message": "API applications updated",
            "applications_connected": change.connected,
            "applications_disconnected": change.disconnected,
        }),
    );
    Ok(if change.changed {
        changed(response, true)
    } else {
        response
    })
}

/// `addAPIApplicationScope`: 200 `{"code":"API_APPLICATION_SCOPE_ADDED",...}`. The
/// application must be authorized on the API first (400 `APPLICATION_NOT_AUTHORIZED`);
/// adding a scope it already has is a no-op.
async fn add_api_application_scope(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path((api_id, app_id, scope_id)): Path<(String, String, String)>,
) -> ApiResult {
    authorize(&shared, &headers, "addAPIApplicationScope")?;
    let wrote = shared
        .inner()
        .store
        .add_application_scope(&api_id, &app_id, &scope_id)?;
    let response = ok(
        StatusCode::OK,
        json!({"code": "API_APPLICATION_SCOPE_ADDED", "message": "API scope successfully added to API application"}),
    );
    Ok(if wrote {
        changed(response, true)
    } else {
        response
    })
}

/// `deleteAPIApplicationScope`: 200 `{"code":"API_APPLICATION_SCOPE_DELETED",...}`;
/// removing a scope the application does not have is a no-op.
async fn delete_api_application_scope(
    State(shared): State<AppState>,
    headers: HeaderMap,
    Path((api_id, app_id, scope_id)): Path<(String, String, String)>,
) -> ApiResult {
    authorize(&shared, &headers, "deleteAPIApplicationScope")?;
    let wrote = shared
        .inner()
        .store
        .remove_application_scope(&api_id, &app_id, &scope_id)?;
    let response = ok(
        StatusCode::OK,
        json!({"code": "API_APPLICATION_SCOPE_DELETED", "message": "API scope successfully deleted"}),
    );
    Ok(if wrote {
        changed(response, true)
    } else {
        response
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(i: usize) -> (String, String, String) {
        (format!("{i:03}"), String::new(), String::new())
    }

    #[test]
    fn paging_walks_all_items_once() {
        let items: Vec<(usize, _)> = (0..25).map(|i| (i, key(i))).collect();
        let mut q = HashMap::new();
        q.insert("page_size".to_owned(), "10".to_owned());
        let mut seen = Vec::new();
        loop {
            let p = paging(&q, "name").map_err(|_| "paging").unwrap();
            let (got, next) = page(items.clone(), &p, "name", false);
            seen.extend(got);
            match next {
                Some(t) => {
                    q.insert("next_token".to_owned(), t);
                }
                None => break,
            }
        }
        assert_eq!(seen, (0..25).collect::<Vec<_>>());
    }

    #[test]
    fn page_size_limits() {
        let q = |v: &str| HashMap::from([("page_size".to_owned(), v.to_owned())]);
        assert!(paging(&q("100"), "x").is_ok());
        assert!(paging(&q("101"), "x").is_err());
        assert!(paging(&q("0"), "x").is_err());
        assert!(paging(&q("abc"), "x").is_err());
        let bad_token = HashMap::from([("next_token".to_owned(), "nope".to_owned())]);
        assert!(paging(&bad_token, "x").is_err());
    }

    #[test]
    fn refusals_render_as_kinde_does() {
        let r = scope_missing("read:apis").into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.extensions().get::<NotFoundAnswer>().is_none());
        assert_eq!(token_invalid(401, "x").into_response().status(), 401);
        assert_eq!(token_invalid(403, "x").into_response().status(), 403);
        let missing: ApiError = KindeError::bad_request("API_NOT_FOUND", "API not found").into();
        let r = missing.into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.extensions().get::<NotFoundAnswer>().is_some());
        assert!(!is_not_found_code("API_AUDIENCE_ALREADY_EXISTS"));
    }

    #[test]
    fn every_operation_has_a_scope() {
        for op in super::super::faults::OPERATIONS {
            if *op != super::super::faults::TOKEN {
                assert!(!required_scopes(op).is_empty(), "{op}");
            }
        }
    }
}

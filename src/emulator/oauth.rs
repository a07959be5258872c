//! `POST /oauth2/token` (client-credentials grant), the JWKS, and a minimal OpenID
//! discovery document.
//!
//! Enforces what Kinde enforces for M2M tokens: a known client with a matching (current
//! or retained) secret, an M2M application, authorized for the requested audience, and
//! only scopes it was granted there. Errors are RFC 6749 bodies
//! (`{"error","error_description"}`): 401 `invalid_client` for bad credentials (with
//! `WWW-Authenticate` when HTTP Basic was used), 400 for everything else.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::server::{AppState, changed};
use super::state::AppType;
use super::tokens::Claims;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
}

async fn jwks(State(shared): State<AppState>) -> Response {
    axum::Json(shared.key.jwks()).into_response()
}

async fn discovery(State(shared): State<AppState>) -> Response {
    let d = &shared.domain;
    axum::Json(json!({
        "issuer": d,
        "token_endpoint": format!("{d}/oauth2/token"),
        "jwks_uri": format!("{d}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
    .into_response()
}

/// An OAuth2 error response.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    basic_auth: bool,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        let status = if error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        Self {
            status,
            error,
            description: description.into(),
            basic_auth: false,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        no_store(&mut response);
        if self.status == StatusCode::UNAUTHORIZED && self.basic_auth {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"kinde\""),
            );
        }
        response
    }
}

fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Token request parameters from a form or JSON body.
fn parse_params(headers: &HeaderMap, body: &Bytes) -> Result<HashMap<String, String>, OAuthError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/json") {
        let value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
            .map_err(|_| {
                OAuthError::new("invalid_request", "The request body is not a JSON object")
            })?;
        let mut params = HashMap::new();
        for (k, v) in value {
            match v {
                serde_json::Value::String(s) => {
                    params.insert(k, s);
                }
                serde_json::Value::Null => {}
                _ => {
                    return Err(OAuthError::new(
                        "invalid_request",
                        format!("The parameter {k} must be a string"),
                    ));
                }
            }
        }
        Ok(params)
    } else {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|_| OAuthError::new("invalid_request", "Malformed form body"))?;
        let mut params = HashMap::new();
        for (k, v) in pairs {
            if params.insert(k.clone(), v).is_some() {
                return Err(OAuthError::new(
                    "invalid_request",
                    format!("The parameter {k} is repeated"),
                ));
            }
        }
        Ok(params)
    }
}

/// Client credentials from `Authorization: Basic` (RFC 6749 2.3.1: form-urlencoded parts).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let invalid = || {
        let mut e = OAuthError::new(
            "invalid_client",
            "Malformed HTTP Basic client authentication",
        );
        e.basic_auth = true;
        e
    };
    let value = value.to_str().map_err(|_| invalid())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(invalid());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::new(
            "invalid_request",
            "Only HTTP Basic client authentication is supported in the Authorization header",
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| invalid())?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(invalid)?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    match (unescape(id), unescape(secret)) {
        (Some(id), Some(secret)) => Ok(Some((id, secret))),
        _ => Err(invalid()),
    }
}

/// `POST /oauth2/token`, operation `token`.
async fn token(State(shared): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match issue(&shared, &headers, &body) {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(error = e.error, description = %e.description, "token request refused");
            e.into_response()
        }
    }
}

fn issue(
    shared: &super::server::Shared,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, OAuthError> {
    let mut params = parse_params(headers, body)?;
    let basic = basic_credentials(headers)?;
    let grant_type = params
        .remove("grant_type")
        .ok_or_else(|| OAuthError::new("invalid_request", "Missing parameter grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(OAuthError::new(
            "unsupported_grant_type",
            format!("Grant type {grant_type:?} is not supported"),
        ));
    }
    let body_id = params.remove("client_id");
    let body_secret = params.remove("client_secret");
    let basic_used = basic.is_some();
    let (client_id, secret) = match (basic, body_id, body_secret) {
        (Some(_), _, Some(_)) => {
            return Err(OAuthError::new(
                "invalid_request",
                "Use only one client authentication method",
            ));
        }
        (Some((id, secret)), body_id, None) => {
            if body_id.as_ref().is_some_and(|b| *b != id) {
                return Err(OAuthError::new(
                    "invalid_request",
                    "client_id does not match the Authorization header",
                ));
            }
            (id, secret)
        }
        (None, Some(id), Some(secret)) => (id, secret),
        (None, None, _) => {
            return Err(OAuthError::new(
                "invalid_request",
                "Missing parameter client_id",
            ));
        }
        (None, Some(_), None) => {
            return Err(OAuthError::new(
                "invalid_request",
                "Missing parameter client_secret",
            ));
        }
    };
    let audience = params
        .remove("audience")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| OAuthError::new("invalid_request", "Missing parameter audience"))?;
    let requested: Option<Vec<String>> = params
        .remove("scope")
        .map(|s| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|s| !s.is_empty());

    let now = jiff::Timestamp::now().as_second();
    let mut inner = shared.inner();
    let client_error = |description: &str| {
        let mut e = OAuthError::new("invalid_client", description);
        e.basic_auth = basic_used;
        e
    };
    let app = inner
        .store
        .applications
        .get(&client_id)
        .ok_or_else(|| client_error("Client authentication failed"))?;
    if !app.secret_matches(&secret) {
        return Err(client_error("Client authentication failed"));
    }
    if app.app_type != AppType::M2m {
        return Err(OAuthError::new(
            "unauthorized_client",
            "Only machine-to-machine applications can use the client_credentials grant",
        ));
    }
    let org_code = app.org_code.clone();
    let api = inner.store.api_by_audience(&audience).ok_or_else(|| {
        OAuthError::new(
            "unauthorized_client",
            "The application is not authorized for the requested audience",
        )
    })?;
    let granted_ids = api.grants.get(&client_id).ok_or_else(|| {
        OAuthError::new(
            "unauthorized_client",
            "The application is not authorized for the requested audience",
        )
    })?;
    let granted = api.scope_keys(granted_ids);
    let scopes = match requested {
        None => granted,
        Some(requested) => {
            if let Some(bad) = requested.iter().find(|s| !granted.contains(s)) {
                return Err(OAuthError::new(
                    "invalid_scope",
                    format!(
                        "The scope {bad:?} is not granted to this application for this audience"
                    ),
                ));
            }
            let mut unique: Vec<String> = Vec::new();
            for s in requested {
                if !unique.contains(&s) {
                    unique.push(s);
                }
            }
            unique
        }
    };
    let ttl = inner.token_ttl_secs;
    let claims = Claims::new(
        shared.issuer(),
        &audience,
        &client_id,
        scopes,
        org_code,
        now,
        ttl,
    );
    let access_token = shared.key.sign(&claims).map_err(|e| {
        tracing::error!(error = %format!("{e:#}"), "could not sign token");
        let mut err = OAuthError::new("server_error", "Could not sign the token");
        err.status = StatusCode::INTERNAL_SERVER_ERROR;
        err
    })?;
    inner.ledger.record(&claims, now);
    drop(inner);
    let mut response = axum::Json(json!({
        "access_token": access_token,
        "expires_in": ttl,
        "scope": claims.scope,
        "token_type": "Bearer",
    }))
    .into_response();
    no_store(&mut response);
    // Recording the token id is persisted (so revocation survives a restart) but is
    // not a business write.
    Ok(changed(response, false))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn basic(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let encoded = STANDARD.encode("my%20id:s%3Acret+x");
        let creds = basic_credentials(&basic(&format!("Basic {encoded}"))).unwrap();
        assert_eq!(creds, Some(("my id".to_owned(), "s:cret x".to_owned())));
        assert!(basic_credentials(&HeaderMap::new()).unwrap().is_none());
        let e = basic_credentials(&basic("Basic !!!")).err().unwrap();
        assert_eq!(
            (e.error, e.status),
            ("invalid_client", StatusCode::UNAUTHORIZED)
        );
        let e = basic_credentials(&basic("Bearer abc")).err().unwrap();
        assert_eq!(e.error, "invalid_request");
    }

    #[test]
    fn params_from_form_and_json() {
        let form = parse_params(&HeaderMap::new(), &Bytes::from_static(b"a=1&b=x+y")).unwrap();
        assert_eq!(form["b"], "x y");
        let repeated = parse_params(&HeaderMap::new(), &Bytes::from_static(b"a=1&a=2"));
        assert!(repeated.is_err());
        let mut json = HeaderMap::new();
        json.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let p = parse_params(&json, &Bytes::from_static(br#"{"a":"1","n":null}"#)).unwrap();
        assert_eq!(p.len(), 1);
        assert!(parse_params(&json, &Bytes::from_static(br#"{"a":1}"#)).is_err());
    }
}

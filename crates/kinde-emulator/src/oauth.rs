//! `POST /oauth2/token` (client-credentials grant), the JWKS, and a minimal OpenID
//! discovery document.
//!
//! Kinde's token endpoint is Ory Fosite's, so this one follows Fosite
//! (`access_request_handler.go`, `client_authentication.go`,
//! `handler/oauth2/flow_client_credentials.go`, `audience_strategy.go`, `errors.go`):
//! the same checks in the same order, the same `error` names, statuses and
//! `error_description` texts (Fosite's description, a space, its hint). Only form bodies
//! are read, as Go's `ParseForm` reads them (a JSON body is an empty form). On top of
//! Fosite's checks, what Kinde enforces for M2M tokens: the app must be authorized for the
//! requested audience and gets only the scopes it was granted there.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::server::{AppState, changed};
use super::state::AppType;
use super::tokens::Claims;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/oauth2/token", post(token).fallback(token_wrong_method))
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

/// The RFC 6749 errors Fosite answers the token endpoint with (`errors.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    InvalidRequest,
    InvalidClient,
    InvalidScope,
    InvalidGrant,
    UnauthorizedClient,
    ServerError,
}

impl ErrorKind {
    fn name(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::ServerError => "server_error",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::InvalidClient => StatusCode::UNAUTHORIZED,
            Self::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Fosite's `DescriptionField`.
    fn description(self) -> &'static str {
        match self {
            Self::InvalidRequest => {
                "The request is missing a required parameter, includes an invalid parameter value, includes a parameter more than once, or is otherwise malformed."
            }
            Self::InvalidClient => {
                "Client authentication failed (e.g., unknown client, no client authentication included, or unsupported authentication method)."
            }
            Self::InvalidScope => "The requested scope is invalid, unknown, or malformed.",
            Self::InvalidGrant => {
                "The provided authorization grant (e.g., authorization code, resource owner credentials) or refresh token is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client."
            }
            Self::UnauthorizedClient => {
                "The client is not authorized to request a token using this method."
            }
            Self::ServerError => {
                "The authorization server encountered an unexpected condition that prevented it from fulfilling the request."
            }
        }
    }

    /// Fosite's default `HintField`, used when an error is returned without its own hint.
    fn default_hint(self) -> Option<&'static str> {
        match self {
            Self::InvalidRequest => Some(
                "Make sure that the various parameters are correct, be aware of case sensitivity and trim your parameters. Make sure that the client you are using has exactly whitelisted the redirect_uri you specified.",
            ),
            Self::UnauthorizedClient => Some(
                "Make sure that client id and secret are correctly specified and that the client exists.",
            ),
            _ => None,
        }
    }
}

/// A token endpoint refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OAuthError {
    kind: ErrorKind,
    /// `None`: Fosite's default hint for the kind (`ErrX` returned as is); `Some`: the
    /// hint of `ErrX.WithHint(...)`.
    hint: Option<String>,
    /// Fosite's `WithHint("")`-less errors that carry debug text only (`ErrInvalidClient
    /// .WithDebug(...)`): the debug text is not sent to clients, so no hint at all.
    no_hint: bool,
}

impl OAuthError {
    /// `ErrX` as Fosite defines it (with its default hint, if any).
    fn plain(kind: ErrorKind) -> Self {
        Self {
            kind,
            hint: None,
            no_hint: false,
        }
    }

    /// `ErrX.WithHint(hint)`.
    fn hint(kind: ErrorKind, hint: impl Into<String>) -> Self {
        Self {
            kind,
            hint: Some(hint.into()),
            no_hint: false,
        }
    }

    /// `ErrX.WithWrap(err).WithDebug(...)`: the description alone reaches the client.
    fn bare(kind: ErrorKind) -> Self {
        Self {
            kind,
            hint: None,
            no_hint: true,
        }
    }

    /// Fosite's `GetDescription`: description, a space and the hint, with `"` turned into `'`.
    fn error_description(&self) -> String {
        let hint = match (&self.hint, self.no_hint) {
            (_, true) => None,
            (Some(h), false) => Some(h.as_str()),
            (None, false) => self.kind.default_hint(),
        };
        let mut text = self.kind.description().to_owned();
        if let Some(h) = hint.filter(|h| !h.is_empty()) {
            text.push(' ');
            text.push_str(h);
        }
        text.replace('"', "'")
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        fosite_json(
            self.kind.status(),
            &json!({"error": self.kind.name(), "error_description": self.error_description()}),
        )
    }
}

/// A JSON answer with the headers Fosite sets on token responses and errors.
fn fosite_json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A parsed form body: every `(name, value)` in order; Go's `Values.Get` takes the first.
#[derive(Debug, Default, PartialEq, Eq)]
struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Go's `url.QueryUnescape`: `+` is a space, `%` must start two hex digits. Invalid UTF-8
/// is kept lossily (Go keeps the bytes; no Kinde id or secret contains any).
fn query_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `url.ParseQuery`: `&`-separated pairs; a `;` or a bad escape is an error (Go keeps
/// parsing and reports the first error, which makes Fosite refuse the whole body).
fn parse_query(body: &str) -> Result<Form, ()> {
    let mut pairs = Vec::new();
    let mut failed = false;
    for piece in body.split('&') {
        if piece.contains(';') {
            failed = true;
            continue;
        }
        if piece.is_empty() {
            continue;
        }
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        match (query_unescape(k), query_unescape(v)) {
            (Some(k), Some(v)) => pairs.push((k, v)),
            _ => failed = true,
        }
    }
    if failed { Err(()) } else { Ok(Form(pairs)) }
}

/// The body as Fosite reads it through Go's `ParseMultipartForm`: only an
/// `application/x-www-form-urlencoded` body is parsed; any other content type (JSON
/// included) or none yields an empty form. Multipart bodies, which Go would also parse,
/// are not emulated (they read as empty too).
fn read_form(headers: &HeaderMap, body: &[u8]) -> Result<Form, OAuthError> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if essence != "application/x-www-form-urlencoded" {
        return Ok(Form::default());
    }
    let unparsable = || {
        OAuthError::hint(
            ErrorKind::InvalidRequest,
            "Unable to parse HTTP body, make sure to send a properly formatted form request body.",
        )
    };
    let text = std::str::from_utf8(body).map_err(|_| unparsable())?;
    parse_query(text).map_err(|()| unparsable())
}

/// Go's `Request.BasicAuth`: `Basic ` (any case) and base64 of `id:secret`; anything else
/// is "no Basic credentials" (the body's are used then).
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let prefix = value.get(..6)?;
    if !prefix.eq_ignore_ascii_case("basic ") {
        return None;
    }
    let decoded = STANDARD.decode(value.get(6..)?).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// Fosite's `clientCredentialsFromRequest`: HTTP Basic (form-decoded parts) if present,
/// else `client_id`/`client_secret` from the body.
fn client_credentials(headers: &HeaderMap, form: &Form) -> Result<(String, String), OAuthError> {
    if let Some((id, secret)) = basic_auth(headers) {
        let id = query_unescape(&id).ok_or_else(|| {
            OAuthError::hint(
                ErrorKind::InvalidRequest,
                "The client id in the HTTP authorization header could not be decoded from 'application/x-www-form-urlencoded'.",
            )
        })?;
        let secret = query_unescape(&secret).ok_or_else(|| {
            OAuthError::hint(
                ErrorKind::InvalidRequest,
                "The client secret in the HTTP authorization header could not be decoded from 'application/x-www-form-urlencoded'.",
            )
        })?;
        return Ok((id, secret));
    }
    let id = form.get("client_id").unwrap_or_default();
    if id.is_empty() {
        return Err(OAuthError::hint(
            ErrorKind::InvalidRequest,
            "Client credentials missing or malformed in both HTTP Authorization header and HTTP POST body.",
        ));
    }
    Ok((
        id.to_owned(),
        form.get("client_secret").unwrap_or_default().to_owned(),
    ))
}

/// Space-separated values without empty ones (Fosite's `RemoveEmpty(strings.Split(v, " "))`).
fn split_spaces(value: &str) -> Vec<String> {
    value
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Fosite's `GetAudiences`: repeated `audience` parameters, or one space-separated value.
fn audiences(form: &Form) -> Vec<String> {
    match form.all("audience").as_slice() {
        [] => Vec::new(),
        [one] => split_spaces(one),
        many => many
            .iter()
            .filter(|a| !a.is_empty())
            .map(|a| (*a).to_owned())
            .collect(),
    }
}

/// Front-end and device apps are public clients in Kinde: no secret is checked, and
/// Fosite refuses them the client-credentials grant.
fn is_public(app_type: AppType) -> bool {
    matches!(app_type, AppType::Spa | AppType::Device)
}

/// Any method but POST: Fosite's first check.
async fn token_wrong_method(method: Method) -> Response {
    OAuthError::hint(
        ErrorKind::InvalidRequest,
        format!("HTTP method is '{method}', expected 'POST'."),
    )
    .into_response()
}

/// `POST /oauth2/token`, operation `token`.
async fn token(State(shared): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match issue(&shared, &headers, &body) {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(error = e.kind.name(), description = %e.error_description(), "token request refused");
            e.into_response()
        }
    }
}

/// Fosite's `NewAccessRequest` + client-credentials handler, in their order: body, grant
/// type, client authentication, scopes, audience, public client, allowed grant.
fn issue(
    shared: &super::server::Shared,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, OAuthError> {
    let form = read_form(headers, body)?;
    if form.is_empty() {
        return Err(OAuthError::hint(
            ErrorKind::InvalidRequest,
            "The POST body can not be empty.",
        ));
    }
    let requested = split_spaces(form.get("scope").unwrap_or_default());
    let audiences = audiences(&form);
    let grant_types = split_spaces(form.get("grant_type").unwrap_or_default());
    if grant_types.is_empty() {
        return Err(OAuthError::hint(
            ErrorKind::InvalidRequest,
            "Request parameter 'grant_type' is missing",
        ));
    }
    let credentials = client_credentials(headers, &form);
    // No handler takes any other grant: Fosite answers a bare ErrInvalidRequest (before it
    // looks at the client).
    if grant_types != ["client_credentials"] {
        return Err(OAuthError::plain(ErrorKind::InvalidRequest));
    }
    let (client_id, secret) = credentials?;

    let now = jiff::Timestamp::now().as_second();
    let mut inner = shared.inner();
    let store = &inner.store;
    let app = store
        .applications
        .get(&client_id)
        .ok_or_else(|| OAuthError::bare(ErrorKind::InvalidClient))?;
    if !is_public(app.app_type) && !app.secret_matches(&secret) {
        return Err(OAuthError::bare(ErrorKind::InvalidClient));
    }
    // Fosite checks the requested scopes against every scope of the client first, then
    // the audience.
    let all_granted: Vec<String> = store
        .sorted_apis()
        .into_iter()
        .filter_map(|api| api.grants.get(&client_id).map(|ids| api.scope_keys(ids)))
        .flatten()
        .collect();
    let not_allowed = |scope: &str| {
        OAuthError::hint(
            ErrorKind::InvalidScope,
            format!("The OAuth 2.0 Client is not allowed to request scope '{scope}'."),
        )
    };
    if let Some(bad) = requested.iter().find(|s| !all_granted.contains(s)) {
        return Err(not_allowed(bad));
    }
    let audience = match audiences.as_slice() {
        [one] => one.clone(),
        // Kinde's documentation lists a missing audience among the `invalid_request`
        // causes; the hint is the emulator's.
        [] => {
            return Err(OAuthError::hint(
                ErrorKind::InvalidRequest,
                "Request parameter 'audience' is missing",
            ));
        }
        _ => {
            return Err(OAuthError::hint(
                ErrorKind::InvalidRequest,
                "The Kinde emulator issues tokens for one audience per request.",
            ));
        }
    };
    let not_whitelisted = || {
        OAuthError::hint(
            ErrorKind::InvalidRequest,
            format!(
                "Requested audience '{audience}' has not been whitelisted by the OAuth 2.0 Client."
            ),
        )
    };
    let api = store
        .api_by_audience(&audience)
        .ok_or_else(not_whitelisted)?;
    let granted_ids = api.grants.get(&client_id).ok_or_else(not_whitelisted)?;
    let granted = api.scope_keys(granted_ids);
    // Kinde binds scopes to an API: one granted on another API is not granted here.
    if let Some(bad) = requested.iter().find(|s| !granted.contains(s)) {
        return Err(not_allowed(bad));
    }
    if is_public(app.app_type) {
        return Err(OAuthError::hint(
            ErrorKind::InvalidGrant,
            "The OAuth 2.0 Client is marked as public and is thus not allowed to use authorization grant 'client_credentials'.",
        ));
    }
    if app.app_type != AppType::M2m {
        return Err(OAuthError::hint(
            ErrorKind::UnauthorizedClient,
            "The OAuth 2.0 Client is not allowed to use authorization grant 'client_credentials'.",
        ));
    }
    let org_code = app.org_code.clone();
    // The application's own lifetime (`updateApplicationTokens`), else the emulator's.
    let ttl = app.access_token_lifetime.unwrap_or(inner.token_ttl_secs);
    let scopes = if requested.is_empty() {
        granted
    } else {
        let mut unique: Vec<String> = Vec::new();
        for s in requested {
            if !unique.contains(&s) {
                unique.push(s);
            }
        }
        unique
    };
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
        OAuthError::plain(ErrorKind::ServerError)
    })?;
    inner.ledger.record(&claims, now);
    drop(inner);
    // Fosite's `token_type` is `bearer`, lowercase.
    let response = fosite_json(
        StatusCode::OK,
        &json!({
            "access_token": access_token,
            "expires_in": ttl,
            "scope": claims.scope,
            "token_type": "bearer",
        }),
    );
    // Recording the token id is persisted (so revocation survives a restart) but is
    // not a business write.
    Ok(changed(response, false))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    fn form_headers() -> HeaderMap {
        with(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
    }

    #[test]
    fn forms_are_read_as_go_reads_them() {
        let f = read_form(&form_headers(), b"a=1&b=x+y%21&a=2&&c").unwrap();
        assert_eq!(f.get("a"), Some("1"), "the first value wins");
        assert_eq!(f.all("a"), ["1", "2"]);
        assert_eq!(f.get("b"), Some("x y!"));
        assert_eq!(f.get("c"), Some(""));
        for bad in [&b"a=1;b=2"[..], b"a=%zz", b"a=%4", b"%=1"] {
            let e = read_form(&form_headers(), bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidRequest, "{bad:?}");
            assert!(e.error_description().contains("Unable to parse HTTP body"));
        }
        let json = with(header::CONTENT_TYPE, "application/json");
        assert!(
            read_form(&json, br#"{"grant_type":"client_credentials"}"#)
                .unwrap()
                .is_empty()
        );
        assert!(read_form(&HeaderMap::new(), b"a=1").unwrap().is_empty());
    }

    #[test]
    fn descriptions_are_fosites() {
        assert_eq!(
            OAuthError::bare(ErrorKind::InvalidClient).error_description(),
            "Client authentication failed (e.g., unknown client, no client authentication included, or unsupported authentication method)."
        );
        let plain = OAuthError::plain(ErrorKind::InvalidRequest).error_description();
        assert!(plain.starts_with("The request is missing a required parameter"));
        assert!(plain.ends_with("whitelisted the redirect_uri you specified."));
        assert_eq!(
            OAuthError::hint(ErrorKind::InvalidScope, "Scope \"x\".").error_description(),
            "The requested scope is invalid, unknown, or malformed. Scope 'x'."
        );
        assert_eq!(ErrorKind::InvalidClient.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(ErrorKind::InvalidGrant.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn client_credentials_basic_first_then_body() {
        let encoded = STANDARD.encode("my%20id:s%3Acret+x");
        let basic = with(header::AUTHORIZATION, &format!("basic {encoded}"));
        let body = Form(vec![
            ("client_id".into(), "other".into()),
            ("client_secret".into(), "y".into()),
        ]);
        assert_eq!(
            client_credentials(&basic, &body).unwrap(),
            ("my id".to_owned(), "s:cret x".to_owned())
        );
        // Not Basic (or not decodable): the body's credentials.
        for h in ["Bearer abc", "Basic !!!"] {
            let h = with(header::AUTHORIZATION, h);
            assert_eq!(client_credentials(&h, &body).unwrap().0, "other");
        }
        let e = client_credentials(&HeaderMap::new(), &Form::default()).unwrap_err();
        assert!(e.error_description().contains("Client credentials missing"));
        let bad = with(
            header::AUTHORIZATION,
            &format!("Basic {}", STANDARD.encode("a%zz:b")),
        );
        let e = client_credentials(&bad, &body).unwrap_err();
        assert!(
            e.error_description()
                .contains("client id in the HTTP authorization header")
        );
    }

    #[test]
    fn audiences_as_fosite_reads_them() {
        let f = |pairs: &[(&str, &str)]| {
            Form(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        assert_eq!(audiences(&f(&[("audience", "a b ")])), ["a", "b"]);
        assert_eq!(audiences(&f(&[("audience", "a"), ("audience", "")])), ["a"]);
        assert!(audiences(&f(&[])).is_empty());
        assert_eq!(split_spaces(" read  write"), ["read", "write"]);
    }
}

//! Contract test: the emulator's real responses, success and error, for every operation it
//! serves, validated against `management-api.yaml` (the schema for that operation and
//! status) with a strict validator (`support_openapi`), plus the success status codes.
//!
//! Known deviations (the spec documents no body, or no such status, for these; each is
//! validated against the closest schema the spec has):
//! - `200` of `updateApplication`, `updateAPIScope`, `deleteAPIScope`,
//!   `addAPIApplicationScope`, `deleteAPIApplicationScope`: documented without content;
//!   the emulator answers `{code, message}`, validated against `success_response`.
//! - Unknown route (`404 ROUTE_NOT_FOUND`): no operation documents 404; validated against
//!   the spec's `not_found_response`.
//! - Not found is `400` with `error_response` (`*_NOT_FOUND`): documented as 400
//!   `bad_request` for every operation used, so no deviation there. In the emulator's
//!   404 mode the same bodies come with `404`, which these operations do not document:
//!   validated against `error_response`.
//! - A refused token is `401` (as Kinde answers; the spec documents only 403): validated
//!   against `error_response`.
//! - `getAPIs` with `page_size`: the spec declares no query parameters for it.
//! - `token` (`/oauth2/token`) is not in the management spec: validated against RFC 6749
//!   §5.1/§5.2 bodies written below in the same schema language.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_kinde;
mod support_openapi;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kinde_emulator as emulator;
use kinde_m2m_operator::kinde::types::{ApplicationType, CreateApplicationRequest};
use reqwest::Method;
use serde_json::{Value, json};
use support_kinde::Emu;
use support_openapi::Spec;

/// Every management operation the emulator serves, by `operationId`.
const OPERATIONS: [&str; 17] = [
    "createApplication",
    "getApplications",
    "getApplication",
    "updateApplication",
    "deleteApplication",
    "addAPIs",
    "getAPIs",
    "getAPI",
    "deleteAPI",
    "getAPIScopes",
    "addAPIScope",
    "getAPIScope",
    "updateAPIScope",
    "deleteAPIScope",
    "updateAPIApplications",
    "addAPIApplicationScope",
    "deleteAPIApplicationScope",
];

/// Operations whose only 400 is "not found" (nothing else in their input to get wrong).
const NO_OTHER_BAD_REQUEST: [&str; 5] = [
    "getApplication",
    "deleteApplication",
    "getAPI",
    "getAPIScopes",
    "getAPIScope",
];

/// Operations without an id in the path (no "not found").
const NO_NOT_FOUND: [&str; 4] = ["createApplication", "getApplications", "addAPIs", "getAPIs"];

/// Documented without a body; the emulator sends `{code, message}`.
const BODY_NOT_DOCUMENTED: [&str; 5] = [
    "updateApplication",
    "updateAPIScope",
    "deleteAPIScope",
    "addAPIApplicationScope",
    "deleteAPIApplicationScope",
];

/// RFC 6749 token responses, in the validator's schema language.
const OAUTH_SCHEMAS: &str = r#"
components:
  schemas:
    token:
      type: object
      additionalProperties: false
      required: [access_token, token_type, expires_in]
      properties:
        access_token: { type: string }
        token_type: { type: string, enum: [bearer, Bearer] }
        expires_in: { type: integer }
        scope: { type: string }
    error:
      type: object
      additionalProperties: false
      required: [error]
      properties:
        error:
          type: string
          enum: [invalid_request, invalid_client, invalid_grant, unauthorized_client,
                 unsupported_grant_type, invalid_scope, server_error, temporarily_unavailable]
        error_description: { type: string }
        error_uri: { type: string }
"#;

/// `../shared/kinde/management-api.yaml` next to the checkout (every dev and CI machine has
/// it), or wherever `KINDE_MANAGEMENT_API_SPEC` points.
fn spec_path() -> PathBuf {
    std::env::var_os("KINDE_MANAGEMENT_API_SPEC").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/kinde/management-api.yaml"),
        PathBuf::from,
    )
}

fn load_spec() -> Spec {
    let path = spec_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the Kinde Management API spec is required for the contract test and could not be read at {} (set KINDE_MANAGEMENT_API_SPEC to its path): {e}",
            path.display()
        )
    });
    Spec::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Ctx {
    env: Emu,
    spec: Spec,
    oauth: Spec,
    full: String,
    violations: Vec<String>,
    /// operation -> kinds of responses validated (`success`, `400 not found`, ...).
    covered: BTreeMap<String, BTreeSet<String>>,
}

enum Token<'a> {
    Full,
    Bad,
    Raw(&'a str),
}

impl Ctx {
    fn note(&mut self, op: &str, kind: &str) {
        self.covered
            .entry(op.to_owned())
            .or_default()
            .insert(kind.to_owned());
    }

    fn check(&mut self, what: &str, spec: &Spec, schema: &Value, body: &Value) {
        let mut validator = spec.validator();
        validator.deny_unknown_properties = true;
        match validator.validate(schema, body) {
            Ok(errors) => self
                .violations
                .extend(errors.into_iter().map(|e| format!("{what}: {e} in {body}"))),
            Err(e) => panic!("{what}: the validator cannot check this schema: {e}"),
        }
    }

    /// Sends a management call, checks the status, validates the body; returns the body.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &mut self,
        op: &str,
        kind: &str,
        token: Token<'_>,
        method: Method,
        path: &str,
        body: Option<Value>,
        expect: u16,
    ) -> Value {
        // The path and method must be the operation's own.
        let (spec_method, spec_path, _) = self.spec.operation(op).unwrap();
        assert_eq!(method.as_str(), spec_method, "{op}");
        let route = path.split('?').next().unwrap();
        let pattern: Vec<&str> = spec_path.split('/').collect();
        let actual: Vec<&str> = route.split('/').collect();
        assert!(
            pattern.len() == actual.len()
                && pattern
                    .iter()
                    .zip(&actual)
                    .all(|(p, a)| p.starts_with('{') || p == a),
            "{op}: {route} is not {spec_path}"
        );
        if expect < 300
            && let (Some(b), Some(schema)) = (&body, self.spec.request_schema(op).unwrap())
        {
            let schema = schema.clone();
            let spec = std::mem::replace(&mut self.spec, Spec { doc: Value::Null });
            self.check(&format!("{op} request body"), &spec, &schema, b);
            self.spec = spec;
        }
        let mut req = self.env.http.request(method.clone(), self.env.url(path));
        req = match token {
            Token::Full => req.bearer_auth(&self.full),
            Token::Bad => req.bearer_auth("not-a-token"),
            Token::Raw(t) => req.bearer_auth(t),
        };
        if let Some(b) = &body {
            req = req.json(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let rate_limit_reset = r.headers().get("ratelimit-reset").is_some();
        let text = r.text().await.unwrap();
        let what = format!("{op} {kind} ({method} {path} -> {status})");
        assert_eq!(status, expect, "{what}: {text}");
        if status == 429 {
            assert!(rate_limit_reset, "{what}: no RateLimit-Reset header");
        }
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            assert!(
                content_type
                    .as_deref()
                    .is_some_and(|c| c.starts_with("application/json")),
                "{what}: content type {content_type:?}"
            );
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"))
        };
        if (200..300).contains(&status) {
            assert_eq!(
                self.spec.success_statuses(op).unwrap(),
                vec![status],
                "{what}: not the spec's success status"
            );
        }
        let schema = match self.spec.response_schema(op, status) {
            Ok(Some(s)) => s.clone(),
            Ok(None) if BODY_NOT_DOCUMENTED.contains(&op) => {
                self.spec.component("success_response").unwrap().clone()
            }
            Ok(None) => {
                assert!(
                    value.is_null(),
                    "{what}: body where the spec documents none"
                );
                Value::Null
            }
            // Known deviations (see the top of the file): undocumented statuses.
            Err(_) if status == 401 || status == 404 => {
                self.spec.component("error_response").unwrap().clone()
            }
            Err(e) => panic!("{what}: {e}"),
        };
        if !schema.is_null() {
            let spec = std::mem::replace(&mut self.spec, Spec { doc: Value::Null });
            self.check(&what, &spec, &schema, &value);
            self.spec = spec;
        }
        self.note(op, kind);
        value
    }

    async fn token_call(&mut self, kind: &str, form: &[(&str, &str)], expect: u16) -> Value {
        let r = self
            .env
            .http
            .post(self.env.url("/oauth2/token"))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        let what = format!("token {kind} (-> {status})");
        assert_eq!(status, expect, "{what}: {body}");
        let name = if status == 200 { "token" } else { "error" };
        let oauth = std::mem::replace(&mut self.oauth, Spec { doc: Value::Null });
        let schema = oauth.component(name).unwrap().clone();
        self.check(&what, &oauth, &schema, &body);
        self.oauth = oauth;
        self.note("token", kind);
        body
    }
}

async fn token(env: &Emu, scope: Option<&str>) -> String {
    let audience = env.emu.management_audience();
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", emulator::DEFAULT_CLIENT_ID),
        ("client_secret", emulator::DEFAULT_CLIENT_SECRET),
        ("audience", audience.as_str()),
    ];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    let r = env
        .http
        .post(env.url("/oauth2/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    b["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn emulator_responses_match_the_spec() {
    let spec = load_spec();
    let oauth = Spec::from_yaml(OAUTH_SCHEMAS).unwrap();
    let env = Emu::start().await;
    let full = token(&env, None).await;
    let mut c = Ctx {
        env,
        spec,
        oauth,
        full,
        violations: Vec::new(),
        covered: BTreeMap::new(),
    };
    use Method as M;
    use Token::Full;

    // ---- success, every operation ----
    let b = c
        .call(
            "createApplication",
            "success",
            Full,
            M::POST,
            "/api/v1/applications",
            Some(json!({"name": "contract app", "type": "m2m"})),
            201,
        )
        .await;
    let app = b["application"]["id"].as_str().unwrap().to_owned();
    let b = c
        .call(
            "createApplication",
            "success",
            Full,
            M::POST,
            "/api/v1/applications",
            Some(json!({"name": "other app", "type": "m2m", "org_code": null})),
            201,
        )
        .await;
    let other = b["application"]["id"].as_str().unwrap().to_owned();
    let b = c
        .call(
            "getApplications",
            "success",
            Full,
            M::GET,
            "/api/v1/applications?page_size=1&sort=name_asc",
            None,
            200,
        )
        .await;
    let next = b["next_token"]
        .as_str()
        .expect("a next_token with page_size=1")
        .to_owned();
    c.call(
        "getApplications",
        "success",
        Full,
        M::GET,
        &format!("/api/v1/applications?page_size=1&sort=name_asc&next_token={next}"),
        None,
        200,
    )
    .await;
    c.call(
        "getApplications",
        "success",
        Full,
        M::GET,
        "/api/v1/applications",
        None,
        200,
    )
    .await;
    c.call(
        "getApplication",
        "success",
        Full,
        M::GET,
        &format!("/api/v1/applications/{app}"),
        None,
        200,
    )
    .await;
    c.call(
        "updateApplication",
        "success",
        Full,
        M::PATCH,
        &format!("/api/v1/applications/{app}"),
        Some(json!({"name": "contract app 2"})),
        200,
    )
    .await;
    let b = c
        .call(
            "addAPIs",
            "success",
            Full,
            M::POST,
            "/api/v1/apis",
            Some(json!({"name": "Contract API", "audience": "https://contract.example.com"})),
            200,
        )
        .await;
    let api = b["api"]["id"].as_str().unwrap().to_owned();
    let b = c
        .call(
            "addAPIScope",
            "success",
            Full,
            M::POST,
            &format!("/api/v1/apis/{api}/scopes"),
            Some(json!({"key": "read:contracts", "description": "Read contracts"})),
            200,
        )
        .await;
    let scope = b["scope"]["id"].as_str().unwrap().to_owned();
    c.call(
        "addAPIScope",
        "success",
        Full,
        M::POST,
        &format!("/api/v1/apis/{api}/scopes"),
        Some(json!({"key": "write:contracts"})),
        200,
    )
    .await;
    c.call(
        "getAPIs",
        "success",
        Full,
        M::GET,
        "/api/v1/apis",
        None,
        200,
    )
    .await;
    c.call(
        "getAPIs",
        "success",
        Full,
        M::GET,
        "/api/v1/apis?expand=scopes",
        None,
        200,
    )
    .await;
    c.call(
        "getAPIs",
        "success",
        Full,
        M::GET,
        "/api/v1/apis?page_size=1",
        None,
        200,
    )
    .await;
    c.call(
        "getAPIScopes",
        "success",
        Full,
        M::GET,
        &format!("/api/v1/apis/{api}/scopes"),
        None,
        200,
    )
    .await;
    c.call(
        "getAPIScope",
        "success",
        Full,
        M::GET,
        &format!("/api/v1/apis/{api}/scopes/{scope}"),
        None,
        200,
    )
    .await;
    c.call(
        "updateAPIScope",
        "success",
        Full,
        M::PATCH,
        &format!("/api/v1/apis/{api}/scopes/{scope}"),
        Some(json!({"description": "Read all contracts"})),
        200,
    )
    .await;
    c.call(
        "updateAPIApplications",
        "success",
        Full,
        M::PATCH,
        &format!("/api/v1/apis/{api}/applications"),
        Some(json!({"applications": [{"id": app}, {"id": other}]})),
        200,
    )
    .await;
    c.call(
        "addAPIApplicationScope",
        "success",
        Full,
        M::POST,
        &format!("/api/v1/apis/{api}/applications/{app}/scopes/{scope}"),
        None,
        200,
    )
    .await;
    // With authorized apps and scopes in it.
    c.call(
        "getAPI",
        "success",
        Full,
        M::GET,
        &format!("/api/v1/apis/{api}"),
        None,
        200,
    )
    .await;
    c.call(
        "deleteAPIApplicationScope",
        "success",
        Full,
        M::DELETE,
        &format!("/api/v1/apis/{api}/applications/{app}/scopes/{scope}"),
        None,
        200,
    )
    .await;
    c.call(
        "updateAPIApplications",
        "success",
        Full,
        M::PATCH,
        &format!("/api/v1/apis/{api}/applications"),
        Some(json!({"applications": [{"id": other, "operation": "delete"}]})),
        200,
    )
    .await;
    c.call(
        "getAPI",
        "success",
        Full,
        M::GET,
        &format!("/api/v1/apis/{api}"),
        None,
        200,
    )
    .await;

    // ---- 400: not found ----
    let missing = [
        (
            "getApplication",
            M::GET,
            "/api/v1/applications/app_missing".to_owned(),
            None,
        ),
        (
            "updateApplication",
            M::PATCH,
            "/api/v1/applications/app_missing".to_owned(),
            Some(json!({"name": "x"})),
        ),
        (
            "deleteApplication",
            M::DELETE,
            "/api/v1/applications/app_missing".to_owned(),
            None,
        ),
        (
            "getAPI",
            M::GET,
            "/api/v1/apis/api_missing".to_owned(),
            None,
        ),
        (
            "deleteAPI",
            M::DELETE,
            "/api/v1/apis/api_missing".to_owned(),
            None,
        ),
        (
            "getAPIScopes",
            M::GET,
            "/api/v1/apis/api_missing/scopes".to_owned(),
            None,
        ),
        (
            "addAPIScope",
            M::POST,
            "/api/v1/apis/api_missing/scopes".to_owned(),
            Some(json!({"key": "k"})),
        ),
        (
            "getAPIScope",
            M::GET,
            format!("/api/v1/apis/{api}/scopes/scope_missing"),
            None,
        ),
        (
            "updateAPIScope",
            M::PATCH,
            format!("/api/v1/apis/{api}/scopes/scope_missing"),
            Some(json!({"description": "d"})),
        ),
        (
            "deleteAPIScope",
            M::DELETE,
            format!("/api/v1/apis/{api}/scopes/scope_missing"),
            None,
        ),
        (
            "updateAPIApplications",
            M::PATCH,
            format!("/api/v1/apis/{api}/applications"),
            Some(json!({"applications": [{"id": "app_missing"}]})),
        ),
        (
            "addAPIApplicationScope",
            M::POST,
            format!("/api/v1/apis/{api}/applications/{app}/scopes/scope_missing"),
            None,
        ),
        (
            "deleteAPIApplicationScope",
            M::DELETE,
            format!("/api/v1/apis/api_missing/applications/{app}/scopes/{scope}"),
            None,
        ),
    ];
    for (op, method, path, body) in missing.clone() {
        let b = c
            .call(op, "400 not found", Full, method, &path, body, 400)
            .await;
        let code = b["errors"][0]["code"].as_str().unwrap_or_default();
        assert!(code.ends_with("_NOT_FOUND"), "{op}: {b}");
    }
    c.env
        .control(M::PUT, "/config", Some(json!({"not_found_status": 404})))
        .await;
    for (op, method, path, body) in missing {
        let b = c
            .call(
                op,
                "404 not found (404 mode)",
                Full,
                method,
                &path,
                body,
                404,
            )
            .await;
        let code = b["errors"][0]["code"].as_str().unwrap_or_default();
        assert!(code.ends_with("_NOT_FOUND"), "{op}: {b}");
    }
    c.env
        .control(M::PUT, "/config", Some(json!({"not_found_status": 400})))
        .await;

    // ---- 400: other bad requests ----
    let state = c.env.state().await;
    let mgmt_api = state["apis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["is_management_api"] == true)
        .unwrap();
    let mgmt_api_id = mgmt_api["id"].as_str().unwrap().to_owned();
    let mgmt_scope = mgmt_api["scopes"][0]["id"].as_str().unwrap().to_owned();
    let bad = [
        (
            "createApplication",
            M::POST,
            "/api/v1/applications".to_owned(),
            Some(json!({"type": "m2m"})),
        ),
        (
            "createApplication",
            M::POST,
            "/api/v1/applications".to_owned(),
            Some(json!({"name": "x", "type": "robot"})),
        ),
        (
            "getApplications",
            M::GET,
            "/api/v1/applications?page_size=1000".to_owned(),
            None,
        ),
        (
            "getApplications",
            M::GET,
            "/api/v1/applications?sort=sideways".to_owned(),
            None,
        ),
        (
            "updateApplication",
            M::PATCH,
            format!("/api/v1/applications/{app}"),
            Some(json!({"name": 5})),
        ),
        (
            "addAPIs",
            M::POST,
            "/api/v1/apis".to_owned(),
            Some(json!({"name": "No audience"})),
        ),
        (
            "addAPIs",
            M::POST,
            "/api/v1/apis".to_owned(),
            Some(json!({"name": "Dup", "audience": "https://contract.example.com"})),
        ),
        (
            "getAPIs",
            M::GET,
            "/api/v1/apis?expand=everything".to_owned(),
            None,
        ),
        (
            "deleteAPI",
            M::DELETE,
            format!("/api/v1/apis/{mgmt_api_id}"),
            None,
        ),
        (
            "addAPIScope",
            M::POST,
            format!("/api/v1/apis/{api}/scopes"),
            Some(json!({"key": "has space"})),
        ),
        (
            "updateAPIScope",
            M::PATCH,
            format!("/api/v1/apis/{api}/scopes/{scope}"),
            Some(json!({"description": 5})),
        ),
        (
            "deleteAPIScope",
            M::DELETE,
            format!("/api/v1/apis/{mgmt_api_id}/scopes/{mgmt_scope}"),
            None,
        ),
        (
            "updateAPIApplications",
            M::PATCH,
            format!("/api/v1/apis/{api}/applications"),
            Some(json!({})),
        ),
        (
            "updateAPIApplications",
            M::PATCH,
            format!("/api/v1/apis/{api}/applications"),
            Some(json!({"applications": [{"id": app, "operation": "explode"}]})),
        ),
        (
            "addAPIApplicationScope",
            M::POST,
            format!("/api/v1/apis/{api}/applications/{other}/scopes/{scope}"),
            None,
        ),
        (
            "deleteAPIApplicationScope",
            M::DELETE,
            format!("/api/v1/apis/{api}/applications/app_missing/scopes/{scope}"),
            None,
        ),
    ];
    for (op, method, path, body) in bad {
        c.call(op, "400 bad request", Full, method, &path, body, 400)
            .await;
    }

    // ---- 401: bad token; 403: a valid token without the operation's scope ----
    let read_apis_only = token(&c.env, Some("read:apis")).await;
    let read_apps_only = token(&c.env, Some("read:applications")).await;
    let every = vec![
        (
            "createApplication",
            M::POST,
            "/api/v1/applications".to_owned(),
            Some(json!({"name": "x", "type": "m2m"})),
        ),
        (
            "getApplications",
            M::GET,
            "/api/v1/applications".to_owned(),
            None,
        ),
        (
            "getApplication",
            M::GET,
            format!("/api/v1/applications/{app}"),
            None,
        ),
        (
            "updateApplication",
            M::PATCH,
            format!("/api/v1/applications/{app}"),
            Some(json!({"name": "y"})),
        ),
        (
            "deleteApplication",
            M::DELETE,
            format!("/api/v1/applications/{app}"),
            None,
        ),
        (
            "addAPIs",
            M::POST,
            "/api/v1/apis".to_owned(),
            Some(json!({"name": "n", "audience": "https://n"})),
        ),
        ("getAPIs", M::GET, "/api/v1/apis".to_owned(), None),
        ("getAPI", M::GET, format!("/api/v1/apis/{api}"), None),
        ("deleteAPI", M::DELETE, format!("/api/v1/apis/{api}"), None),
        (
            "getAPIScopes",
            M::GET,
            format!("/api/v1/apis/{api}/scopes"),
            None,
        ),
        (
            "addAPIScope",
            M::POST,
            format!("/api/v1/apis/{api}/scopes"),
            Some(json!({"key": "k"})),
        ),
        (
            "getAPIScope",
            M::GET,
            format!("/api/v1/apis/{api}/scopes/{scope}"),
            None,
        ),
        (
            "updateAPIScope",
            M::PATCH,
            format!("/api/v1/apis/{api}/scopes/{scope}"),
            Some(json!({"description": "d"})),
        ),
        (
            "deleteAPIScope",
            M::DELETE,
            format!("/api/v1/apis/{api}/scopes/{scope}"),
            None,
        ),
        (
            "updateAPIApplications",
            M::PATCH,
            format!("/api/v1/apis/{api}/applications"),
            Some(json!({"applications": [{"id": app}]})),
        ),
        (
            "addAPIApplicationScope",
            M::POST,
            format!("/api/v1/apis/{api}/applications/{app}/scopes/{scope}"),
            None,
        ),
        (
            "deleteAPIApplicationScope",
            M::DELETE,
            format!("/api/v1/apis/{api}/applications/{app}/scopes/{scope}"),
            None,
        ),
    ];
    for (op, method, path, body) in every.clone() {
        let b = c
            .call(
                op,
                "401 bad token",
                Token::Bad,
                method.clone(),
                &path,
                body.clone(),
                401,
            )
            .await;
        assert_eq!(b["errors"][0]["code"], "TOKEN_INVALID", "{op}: {b}");
        let other_scope =
            if op.ends_with("Applications") || op.ends_with("Application") && !op.contains("API") {
                &read_apis_only
            } else {
                &read_apps_only
            };
        let b = c
            .call(
                op,
                "403 missing scope",
                Token::Raw(other_scope),
                method,
                &path,
                body,
                403,
            )
            .await;
        assert_eq!(b["errors"][0]["code"], "SCOPE_MISSING", "{op}: {b}");
        assert!(
            b["errors"][0]["message"]
                .as_str()
                .unwrap()
                .starts_with("Scope is missing: "),
            "{op}: names no scope: {b}"
        );
    }

    // ---- 429 ----
    c.env
        .control(
            M::PUT,
            "/rate-limit",
            Some(json!({"requests": 0, "per_seconds": 60})),
        )
        .await;
    for (op, method, path, body) in every {
        c.call(op, "429", Full, method, &path, body, 429).await;
    }
    c.env.control(M::DELETE, "/rate-limit", None).await;

    // ---- deletes last ----
    c.call(
        "deleteAPIScope",
        "success",
        Full,
        M::DELETE,
        &format!("/api/v1/apis/{api}/scopes/{scope}"),
        None,
        200,
    )
    .await;
    c.call(
        "deleteApplication",
        "success",
        Full,
        M::DELETE,
        &format!("/api/v1/applications/{other}"),
        None,
        200,
    )
    .await;
    c.call(
        "deleteAPI",
        "success",
        Full,
        M::DELETE,
        &format!("/api/v1/apis/{api}"),
        None,
        200,
    )
    .await;

    // ---- unknown route: the spec's not_found_response (documented nowhere for these) ----
    let r = c
        .env
        .http
        .get(c.env.url("/api/v1/nothing-here"))
        .bearer_auth(&c.full)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let b: Value = r.json().await.unwrap();
    let schema = c.spec.component("not_found_response").unwrap().clone();
    let spec = std::mem::replace(&mut c.spec, Spec { doc: Value::Null });
    c.check("unknown route 404", &spec, &schema, &b);
    c.spec = spec;

    // ---- token endpoint ----
    let audience = c.env.emu.management_audience();
    let id = emulator::DEFAULT_CLIENT_ID;
    let secret = emulator::DEFAULT_CLIENT_SECRET;
    let base = [
        ("grant_type", "client_credentials"),
        ("client_id", id),
        ("client_secret", secret),
        ("audience", audience.as_str()),
    ];
    c.token_call("success", &base, 200).await;
    c.token_call(
        "success with scope",
        &[&base[..], &[("scope", "read:apis")]].concat(),
        200,
    )
    .await;
    c.token_call("400 missing grant", &base[1..], 400).await;
    c.token_call(
        "400 unsupported grant",
        &[("grant_type", "password"), base[1], base[2], base[3]],
        400,
    )
    .await;
    c.token_call(
        "400 unknown audience",
        &[base[0], base[1], base[2], ("audience", "https://nowhere")],
        400,
    )
    .await;
    c.token_call(
        "400 invalid scope",
        &[&base[..], &[("scope", "launch:rockets")]].concat(),
        400,
    )
    .await;
    c.token_call(
        "401 wrong secret",
        &[base[0], base[1], ("client_secret", "wrong"), base[3]],
        401,
    )
    .await;
    c.env
        .fault(json!({"operation": "token", "status": 429}))
        .await;
    c.token_call("429", &base, 429).await;
    c.env
        .fault(json!({"operation": "token", "status": 500}))
        .await;
    c.token_call("500", &base, 500).await;

    // ---- coverage: every operation, every response kind that applies ----
    for op in OPERATIONS {
        let mut kinds = vec!["success", "401 bad token", "403 missing scope", "429"];
        if !NO_NOT_FOUND.contains(&op) {
            kinds.extend(["400 not found", "404 not found (404 mode)"]);
        }
        if !NO_OTHER_BAD_REQUEST.contains(&op) {
            kinds.push("400 bad request");
        }
        let seen = c.covered.get(op).cloned().unwrap_or_default();
        for k in kinds {
            assert!(seen.contains(k), "{op}: no `{k}` response was checked");
        }
    }
    assert!(c.covered["token"].len() >= 8);

    assert!(
        c.violations.is_empty(),
        "{} contract violation(s):\n{}",
        c.violations.len(),
        c.violations.join("\n")
    );
}

/// The spec must describe every operation the emulator serves, with one success status,
/// and every schema involved must be one the validator fully understands.
#[test]
fn spec_covers_the_emulated_operations() {
    let spec = load_spec();
    let v = spec.validator();
    let expected: BTreeMap<&str, u16> = OPERATIONS
        .iter()
        .map(|op| (*op, if *op == "createApplication" { 201 } else { 200 }))
        .collect();
    for (op, status) in expected {
        assert_eq!(spec.success_statuses(op).unwrap(), vec![status], "{op}");
        for s in [status, 400, 403, 429] {
            if let Some(schema) = spec.response_schema(op, s).unwrap() {
                v.lint(schema, op, 0)
                    .unwrap_or_else(|e| panic!("{op} {s}: {e}"));
            }
        }
        if let Some(schema) = spec.request_schema(op).unwrap() {
            v.lint(schema, op, 0)
                .unwrap_or_else(|e| panic!("{op} request: {e}"));
        }
    }
}

/// What the client sends for a create matches the spec's request body (the one request
/// type the library exports; the others are crate-private and covered by the emulator's
/// own body parsing in `tests/kinde_client.rs`).
#[test]
fn client_create_application_request_matches_the_spec() {
    let spec = load_spec();
    let schema = spec
        .request_schema("createApplication")
        .unwrap()
        .unwrap()
        .clone();
    let mut v = spec.validator();
    v.deny_unknown_properties = true;
    for org in [None, Some("org_123")] {
        let body = serde_json::to_value(CreateApplicationRequest {
            name: "n",
            app_type: ApplicationType::M2m,
            org_code: org,
        })
        .unwrap();
        assert_eq!(
            v.validate(&schema, &body).unwrap(),
            Vec::<String>::new(),
            "{body}"
        );
    }
}

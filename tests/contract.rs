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

use kinde_m2m_operator::emulator;
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

/// The extract of Kinde's spec in the repository (`tests/data/kinde-management-api`, made by
/// `scripts/vendor-kinde-spec`), or the full spec wherever `KINDE_MANAGEMENT_API_SPEC` points.
const VENDORED_SPEC: &str = "tests/data/kinde-management-api/management-api.yaml";

fn vendored_spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(VENDORED_SPEC)
}

fn spec_path() -> PathBuf {
    std::env::var_os("KINDE_MANAGEMENT_API_SPEC").map_or_else(vendored_spec_path, PathBuf::from)
}

fn load_spec() -> Spec {
    let path = spec_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the Kinde Management API spec could not be read at {}: {e}",
            path.display()
        )
    });
    Spec::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of `# <key>: <value>` in the vendored file's header.
fn header<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix("# ")?.strip_prefix(key)?.strip_prefix(": "))
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

/// Who a call authenticates as.
#[derive(Clone, Copy)]
enum Tok {
    /// The default app's token with every management scope.
    Full,
    /// Not a token at all.
    Bad,
    /// A valid token with only `read:apis`.
    ReadApisOnly,
    /// A valid token with only `read:applications`.
    ReadAppsOnly,
}

/// What an error body must say beyond matching its schema.
#[derive(Clone, Copy)]
enum Says {
    Nothing,
    /// `errors[0].code` ends with `_NOT_FOUND`.
    NotFound,
    /// `errors[0].code` is `TOKEN_INVALID`.
    TokenInvalid,
    /// `errors[0].code` is `SCOPE_MISSING` and the message names the scope.
    ScopeMissing,
}

/// One management call of the table: `{var}` in `path` and in the body's strings stand for
/// ids learnt from earlier responses (`save`).
struct Call {
    op: &'static str,
    kind: &'static str,
    tok: Tok,
    method: Method,
    path: String,
    body: Option<Value>,
    status: u16,
    /// `(var, JSON pointer)`: remember this field of the response as `{var}`.
    save: Option<(&'static str, &'static str)>,
    says: Says,
}

fn call(
    op: &'static str,
    kind: &'static str,
    method: Method,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Call {
    Call {
        op,
        kind,
        tok: Tok::Full,
        method,
        path: path.to_owned(),
        body,
        status,
        save: None,
        says: Says::Nothing,
    }
}

impl Call {
    fn save(mut self, var: &'static str, pointer: &'static str) -> Self {
        self.save = Some((var, pointer));
        self
    }
}

/// One step of the contract run, in order (later calls use what earlier ones created).
enum Step {
    Call(Call),
    /// A call to the emulator's control surface (`/_emulator...`).
    Control(Method, &'static str, Option<Value>),
    /// Inject a fault.
    Fault(Value),
    /// Learn the management API's id and one of its scopes as `{mgmt_api}`, `{mgmt_scope}`.
    LearnManagementApi,
    /// An unknown route: the spec's `not_found_response` (documented nowhere for these).
    UnknownRoute,
    /// A token request; `{client_id}`, `{client_secret}`, `{audience}` are filled in.
    Token {
        kind: &'static str,
        form: Vec<(&'static str, &'static str)>,
        status: u16,
    },
}

type Input = (&'static str, Method, &'static str, Option<Value>);

/// Calls whose id does not exist (one per operation with an id in the path).
fn missing() -> Vec<Input> {
    use Method as M;
    vec![
        (
            "getApplication",
            M::GET,
            "/api/v1/applications/app_missing",
            None,
        ),
        (
            "updateApplication",
            M::PATCH,
            "/api/v1/applications/app_missing",
            Some(json!({"name": "x"})),
        ),
        (
            "deleteApplication",
            M::DELETE,
            "/api/v1/applications/app_missing",
            None,
        ),
        ("getAPI", M::GET, "/api/v1/apis/api_missing", None),
        ("deleteAPI", M::DELETE, "/api/v1/apis/api_missing", None),
        (
            "getAPIScopes",
            M::GET,
            "/api/v1/apis/api_missing/scopes",
            None,
        ),
        (
            "addAPIScope",
            M::POST,
            "/api/v1/apis/api_missing/scopes",
            Some(json!({"key": "k"})),
        ),
        (
            "getAPIScope",
            M::GET,
            "/api/v1/apis/{api}/scopes/scope_missing",
            None,
        ),
        (
            "updateAPIScope",
            M::PATCH,
            "/api/v1/apis/{api}/scopes/scope_missing",
            Some(json!({"description": "d"})),
        ),
        (
            "deleteAPIScope",
            M::DELETE,
            "/api/v1/apis/{api}/scopes/scope_missing",
            None,
        ),
        (
            "updateAPIApplications",
            M::PATCH,
            "/api/v1/apis/{api}/applications",
            Some(json!({"applications": [{"id": "app_missing"}]})),
        ),
        (
            "addAPIApplicationScope",
            M::POST,
            "/api/v1/apis/{api}/applications/{app}/scopes/scope_missing",
            None,
        ),
        (
            "deleteAPIApplicationScope",
            M::DELETE,
            "/api/v1/apis/api_missing/applications/{app}/scopes/{scope}",
            None,
        ),
    ]
}

/// Requests that are wrong in some other way than a missing id.
fn bad_requests() -> Vec<Input> {
    use Method as M;
    vec![
        (
            "createApplication",
            M::POST,
            "/api/v1/applications",
            Some(json!({"type": "m2m"})),
        ),
        (
            "createApplication",
            M::POST,
            "/api/v1/applications",
            Some(json!({"name": "x", "type": "robot"})),
        ),
        (
            "getApplications",
            M::GET,
            "/api/v1/applications?page_size=1000",
            None,
        ),
        (
            "getApplications",
            M::GET,
            "/api/v1/applications?sort=sideways",
            None,
        ),
        (
            "updateApplication",
            M::PATCH,
            "/api/v1/applications/{app}",
            Some(json!({"name": 5})),
        ),
        (
            "addAPIs",
            M::POST,
            "/api/v1/apis",
            Some(json!({"name": "No audience"})),
        ),
        (
            "addAPIs",
            M::POST,
            "/api/v1/apis",
            Some(json!({"name": "Dup", "audience": "https://contract.example.com"})),
        ),
        ("getAPIs", M::GET, "/api/v1/apis?expand=everything", None),
        ("deleteAPI", M::DELETE, "/api/v1/apis/{mgmt_api}", None),
        (
            "addAPIScope",
            M::POST,
            "/api/v1/apis/{api}/scopes",
            Some(json!({"key": "has space"})),
        ),
        (
            "updateAPIScope",
            M::PATCH,
            "/api/v1/apis/{api}/scopes/{scope}",
            Some(json!({"description": 5})),
        ),
        (
            "deleteAPIScope",
            M::DELETE,
            "/api/v1/apis/{mgmt_api}/scopes/{mgmt_scope}",
            None,
        ),
        (
            "updateAPIApplications",
            M::PATCH,
            "/api/v1/apis/{api}/applications",
            Some(json!({})),
        ),
        (
            "updateAPIApplications",
            M::PATCH,
            "/api/v1/apis/{api}/applications",
            Some(json!({"applications": [{"id": "{app}", "operation": "explode"}]})),
        ),
        (
            "addAPIApplicationScope",
            M::POST,
            "/api/v1/apis/{api}/applications/{other}/scopes/{scope}",
            None,
        ),
        (
            "deleteAPIApplicationScope",
            M::DELETE,
            "/api/v1/apis/{api}/applications/app_missing/scopes/{scope}",
            None,
        ),
    ]
}

/// A valid request for every operation (for the 401, 403 and 429 answers).
fn every_operation() -> Vec<Input> {
    use Method as M;
    vec![
        (
            "createApplication",
            M::POST,
            "/api/v1/applications",
            Some(json!({"name": "x", "type": "m2m"})),
        ),
        ("getApplications", M::GET, "/api/v1/applications", None),
        ("getApplication", M::GET, "/api/v1/applications/{app}", None),
        (
            "updateApplication",
            M::PATCH,
            "/api/v1/applications/{app}",
            Some(json!({"name": "y"})),
        ),
        (
            "deleteApplication",
            M::DELETE,
            "/api/v1/applications/{app}",
            None,
        ),
        (
            "addAPIs",
            M::POST,
            "/api/v1/apis",
            Some(json!({"name": "n", "audience": "https://n"})),
        ),
        ("getAPIs", M::GET, "/api/v1/apis", None),
        ("getAPI", M::GET, "/api/v1/apis/{api}", None),
        ("deleteAPI", M::DELETE, "/api/v1/apis/{api}", None),
        ("getAPIScopes", M::GET, "/api/v1/apis/{api}/scopes", None),
        (
            "addAPIScope",
            M::POST,
            "/api/v1/apis/{api}/scopes",
            Some(json!({"key": "k"})),
        ),
        (
            "getAPIScope",
            M::GET,
            "/api/v1/apis/{api}/scopes/{scope}",
            None,
        ),
        (
            "updateAPIScope",
            M::PATCH,
            "/api/v1/apis/{api}/scopes/{scope}",
            Some(json!({"description": "d"})),
        ),
        (
            "deleteAPIScope",
            M::DELETE,
            "/api/v1/apis/{api}/scopes/{scope}",
            None,
        ),
        (
            "updateAPIApplications",
            M::PATCH,
            "/api/v1/apis/{api}/applications",
            Some(json!({"applications": [{"id": "{app}"}]})),
        ),
        (
            "addAPIApplicationScope",
            M::POST,
            "/api/v1/apis/{api}/applications/{app}/scopes/{scope}",
            None,
        ),
        (
            "deleteAPIApplicationScope",
            M::DELETE,
            "/api/v1/apis/{api}/applications/{app}/scopes/{scope}",
            None,
        ),
    ]
}

/// The whole run, in order.
fn steps() -> Vec<Step> {
    use Method as M;
    let mut steps: Vec<Step> = Vec::new();
    let mut push = |c: Call| steps.push(Step::Call(c));
    let ok = "success";

    // ---- success, every operation ----
    push(
        call(
            "createApplication",
            ok,
            M::POST,
            "/api/v1/applications",
            Some(json!({"name": "contract app", "type": "m2m"})),
            201,
        )
        .save("app", "/application/id"),
    );
    push(
        call(
            "createApplication",
            ok,
            M::POST,
            "/api/v1/applications",
            Some(json!({"name": "other app", "type": "m2m", "org_code": null})),
            201,
        )
        .save("other", "/application/id"),
    );
    // page_size=1 with two apps: there must be a next page.
    push(
        call(
            "getApplications",
            ok,
            M::GET,
            "/api/v1/applications?page_size=1&sort=name_asc",
            None,
            200,
        )
        .save("next", "/next_token"),
    );
    push(call(
        "getApplications",
        ok,
        M::GET,
        "/api/v1/applications?page_size=1&sort=name_asc&next_token={next}",
        None,
        200,
    ));
    push(call(
        "getApplications",
        ok,
        M::GET,
        "/api/v1/applications",
        None,
        200,
    ));
    push(call(
        "getApplication",
        ok,
        M::GET,
        "/api/v1/applications/{app}",
        None,
        200,
    ));
    push(call(
        "updateApplication",
        ok,
        M::PATCH,
        "/api/v1/applications/{app}",
        Some(json!({"name": "contract app 2"})),
        200,
    ));
    push(
        call(
            "addAPIs",
            ok,
            M::POST,
            "/api/v1/apis",
            Some(json!({"name": "Contract API", "audience": "https://contract.example.com"})),
            200,
        )
        .save("api", "/api/id"),
    );
    push(
        call(
            "addAPIScope",
            ok,
            M::POST,
            "/api/v1/apis/{api}/scopes",
            Some(json!({"key": "read:contracts", "description": "Read contracts"})),
            200,
        )
        .save("scope", "/scope/id"),
    );
    push(call(
        "addAPIScope",
        ok,
        M::POST,
        "/api/v1/apis/{api}/scopes",
        Some(json!({"key": "write:contracts"})),
        200,
    ));
    push(call("getAPIs", ok, M::GET, "/api/v1/apis", None, 200));
    push(call(
        "getAPIs",
        ok,
        M::GET,
        "/api/v1/apis?expand=scopes",
        None,
        200,
    ));
    push(call(
        "getAPIs",
        ok,
        M::GET,
        "/api/v1/apis?page_size=1",
        None,
        200,
    ));
    push(call(
        "getAPIScopes",
        ok,
        M::GET,
        "/api/v1/apis/{api}/scopes",
        None,
        200,
    ));
    push(call(
        "getAPIScope",
        ok,
        M::GET,
        "/api/v1/apis/{api}/scopes/{scope}",
        None,
        200,
    ));
    push(call(
        "updateAPIScope",
        ok,
        M::PATCH,
        "/api/v1/apis/{api}/scopes/{scope}",
        Some(json!({"description": "Read all contracts"})),
        200,
    ));
    push(call(
        "updateAPIApplications",
        ok,
        M::PATCH,
        "/api/v1/apis/{api}/applications",
        Some(json!({"applications": [{"id": "{app}"}, {"id": "{other}"}]})),
        200,
    ));
    push(call(
        "addAPIApplicationScope",
        ok,
        M::POST,
        "/api/v1/apis/{api}/applications/{app}/scopes/{scope}",
        None,
        200,
    ));
    // With authorized apps and scopes in it.
    push(call("getAPI", ok, M::GET, "/api/v1/apis/{api}", None, 200));
    push(call(
        "deleteAPIApplicationScope",
        ok,
        M::DELETE,
        "/api/v1/apis/{api}/applications/{app}/scopes/{scope}",
        None,
        200,
    ));
    push(call(
        "updateAPIApplications",
        ok,
        M::PATCH,
        "/api/v1/apis/{api}/applications",
        Some(json!({"applications": [{"id": "{other}", "operation": "delete"}]})),
        200,
    ));
    push(call("getAPI", ok, M::GET, "/api/v1/apis/{api}", None, 200));

    // ---- 400: not found; then the same in the emulator's 404 mode ----
    for (op, method, path, body) in missing() {
        let mut c = call(op, "400 not found", method, path, body, 400);
        c.says = Says::NotFound;
        push(c);
    }
    steps.push(Step::Control(
        M::PUT,
        "/config",
        Some(json!({"not_found_status": 404})),
    ));
    let mut push = |c: Call| steps.push(Step::Call(c));
    for (op, method, path, body) in missing() {
        let mut c = call(op, "404 not found (404 mode)", method, path, body, 404);
        c.says = Says::NotFound;
        push(c);
    }
    steps.push(Step::Control(
        M::PUT,
        "/config",
        Some(json!({"not_found_status": 400})),
    ));

    // ---- 400: other bad requests ----
    steps.push(Step::LearnManagementApi);
    for (op, method, path, body) in bad_requests() {
        steps.push(Step::Call(call(
            op,
            "400 bad request",
            method,
            path,
            body,
            400,
        )));
    }

    // ---- 401: bad token; 403: a valid token without the operation's scope ----
    for (op, method, path, body) in every_operation() {
        let mut c = call(op, "401 bad token", method.clone(), path, body.clone(), 401);
        c.tok = Tok::Bad;
        c.says = Says::TokenInvalid;
        steps.push(Step::Call(c));
        let mut c = call(op, "403 missing scope", method, path, body, 403);
        let application_op =
            op.ends_with("Applications") || op.ends_with("Application") && !op.contains("API");
        c.tok = if application_op {
            Tok::ReadApisOnly
        } else {
            Tok::ReadAppsOnly
        };
        c.says = Says::ScopeMissing;
        steps.push(Step::Call(c));
    }

    // ---- 429 ----
    steps.push(Step::Control(
        M::PUT,
        "/rate-limit",
        Some(json!({"requests": 0, "per_seconds": 60})),
    ));
    for (op, method, path, body) in every_operation() {
        steps.push(Step::Call(call(op, "429", method, path, body, 429)));
    }
    steps.push(Step::Control(M::DELETE, "/rate-limit", None));

    // ---- deletes last ----
    let mut push = |c: Call| steps.push(Step::Call(c));
    push(call(
        "deleteAPIScope",
        ok,
        M::DELETE,
        "/api/v1/apis/{api}/scopes/{scope}",
        None,
        200,
    ));
    push(call(
        "deleteApplication",
        ok,
        M::DELETE,
        "/api/v1/applications/{other}",
        None,
        200,
    ));
    push(call(
        "deleteAPI",
        ok,
        M::DELETE,
        "/api/v1/apis/{api}",
        None,
        200,
    ));

    steps.push(Step::UnknownRoute);

    // ---- token endpoint ----
    let grant = ("grant_type", "client_credentials");
    let id = ("client_id", "{client_id}");
    let secret = ("client_secret", "{client_secret}");
    let audience = ("audience", "{audience}");
    let mut token = |kind, form: Vec<(&'static str, &'static str)>, status| {
        steps.push(Step::Token { kind, form, status })
    };
    token("success", vec![grant, id, secret, audience], 200);
    token(
        "success with scope",
        vec![grant, id, secret, audience, ("scope", "read:apis")],
        200,
    );
    token("400 missing grant", vec![id, secret, audience], 400);
    token(
        "400 unsupported grant",
        vec![("grant_type", "password"), id, secret, audience],
        400,
    );
    token(
        "400 unknown audience",
        vec![grant, id, secret, ("audience", "https://nowhere")],
        400,
    );
    token(
        "400 invalid scope",
        vec![grant, id, secret, audience, ("scope", "launch:rockets")],
        400,
    );
    token(
        "401 wrong secret",
        vec![grant, id, ("client_secret", "wrong"), audience],
        401,
    );
    steps.push(Step::Fault(json!({"operation": "token", "status": 429})));
    steps.push(Step::Token {
        kind: "429",
        form: vec![grant, id, secret, audience],
        status: 429,
    });
    steps.push(Step::Fault(json!({"operation": "token", "status": 500})));
    steps.push(Step::Token {
        kind: "500",
        form: vec![grant, id, secret, audience],
        status: 500,
    });
    steps
}

/// `{var}` replaced by its value; an unknown `{var}` is a mistake in the table.
fn fill(template: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    assert!(!out.contains('{'), "unfilled placeholder in {out}");
    out
}

fn fill_json(v: &Value, vars: &BTreeMap<&str, String>) -> Value {
    match v {
        Value::String(s) => Value::String(fill(s, vars)),
        Value::Array(a) => Value::Array(a.iter().map(|x| fill_json(x, vars)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), fill_json(x, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[tokio::test]
async fn emulator_responses_match_the_spec() {
    let spec = load_spec();
    let oauth = Spec::from_yaml(OAUTH_SCHEMAS).unwrap();
    let env = Emu::start().await;
    let full = token(&env, None).await;
    let read_apis_only = token(&env, Some("read:apis")).await;
    let read_apps_only = token(&env, Some("read:applications")).await;
    let mut vars: BTreeMap<&str, String> = BTreeMap::from([
        ("client_id", emulator::DEFAULT_CLIENT_ID.to_owned()),
        ("client_secret", emulator::DEFAULT_CLIENT_SECRET.to_owned()),
        ("audience", env.emu.management_audience()),
    ]);
    let mut c = Ctx {
        env,
        spec,
        oauth,
        full,
        violations: Vec::new(),
        covered: BTreeMap::new(),
    };

    for step in steps() {
        match step {
            Step::Call(call) => {
                let token = match call.tok {
                    Tok::Full => Token::Full,
                    Tok::Bad => Token::Bad,
                    Tok::ReadApisOnly => Token::Raw(&read_apis_only),
                    Tok::ReadAppsOnly => Token::Raw(&read_apps_only),
                };
                let path = fill(&call.path, &vars);
                let body = call.body.as_ref().map(|b| fill_json(b, &vars));
                let op = call.op;
                let b = c
                    .call(op, call.kind, token, call.method, &path, body, call.status)
                    .await;
                if let Some((var, pointer)) = call.save {
                    let value = b
                        .pointer(pointer)
                        .and_then(Value::as_str)
                        .unwrap_or_else(|| {
                            panic!("{op}: no {pointer} to remember as {{{var}}}: {b}")
                        });
                    vars.insert(var, value.to_owned());
                }
                match call.says {
                    Says::Nothing => {}
                    Says::NotFound => {
                        let code = b["errors"][0]["code"].as_str().unwrap_or_default();
                        assert!(code.ends_with("_NOT_FOUND"), "{op}: {b}");
                    }
                    Says::TokenInvalid => {
                        assert_eq!(b["errors"][0]["code"], "TOKEN_INVALID", "{op}: {b}");
                    }
                    Says::ScopeMissing => {
                        assert_eq!(b["errors"][0]["code"], "SCOPE_MISSING", "{op}: {b}");
                        assert!(
                            b["errors"][0]["message"]
                                .as_str()
                                .unwrap()
                                .starts_with("Scope is missing: "),
                            "{op}: names no scope: {b}"
                        );
                    }
                }
            }
            Step::Control(method, path, body) => {
                c.env.control(method, path, body).await;
            }
            Step::Fault(fault) => c.env.fault(fault).await,
            Step::LearnManagementApi => {
                let state = c.env.state().await;
                let mgmt_api = state["apis"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["is_management_api"] == true)
                    .unwrap();
                vars.insert("mgmt_api", mgmt_api["id"].as_str().unwrap().to_owned());
                vars.insert(
                    "mgmt_scope",
                    mgmt_api["scopes"][0]["id"].as_str().unwrap().to_owned(),
                );
            }
            Step::UnknownRoute => {
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
            }
            Step::Token { kind, form, status } => {
                let form: Vec<(&str, String)> =
                    form.into_iter().map(|(k, v)| (k, fill(v, &vars))).collect();
                let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
                c.token_call(kind, &form, status).await;
            }
        }
    }

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

/// The vendored extract is what `scripts/vendor-kinde-spec` wrote: its body still has the hash
/// its header records (a hand edit fails here), it names its source, and it holds exactly the
/// operations this test checks. With `KINDE_MANAGEMENT_API_SPEC` set to the full spec, the
/// script is run on it and must reproduce the vendored file byte for byte.
#[test]
fn vendored_spec_is_what_the_script_made() {
    use sha2::{Digest, Sha256};
    let text = std::fs::read_to_string(vendored_spec_path()).unwrap();
    let body_start = text
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|i| !text[*i..].starts_with('#'))
        .unwrap();
    let body = &text[body_start..];
    let recorded = header(&text, "body-sha256").expect("no body-sha256 in the header");
    assert_eq!(
        format!("{:x}", Sha256::digest(body.as_bytes())),
        recorded,
        "{VENDORED_SPEC} was edited by hand: regenerate it with scripts/vendor-kinde-spec"
    );
    assert!(
        header(&text, "source").is_some_and(|s| s.contains("v0.19.0")),
        "no source note"
    );
    let source_sha = header(&text, "source-sha256").expect("no source-sha256 in the header");
    assert_eq!(source_sha.len(), 64, "{source_sha}");

    let spec = Spec::from_yaml(body).unwrap();
    let mut ops: Vec<&str> = spec.doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    ops.sort_unstable();
    let mut expected = OPERATIONS.to_vec();
    expected.sort_unstable();
    assert_eq!(ops, expected);

    if let Some(full) = std::env::var_os("KINDE_MANAGEMENT_API_SPEC") {
        let full_text = std::fs::read(&full).unwrap();
        assert_eq!(
            format!("{:x}", Sha256::digest(&full_text)),
            source_sha,
            "KINDE_MANAGEMENT_API_SPEC is not the spec the extract was made from"
        );
        let out = std::env::temp_dir().join(format!("vendored-spec-{}.yaml", std::process::id()));
        let status = std::process::Command::new(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/vendor-kinde-spec"),
        )
        .arg(&full)
        .arg(&out)
        .status()
        .expect("scripts/vendor-kinde-spec could not be started (python3 with PyYAML)");
        assert!(status.success(), "scripts/vendor-kinde-spec failed");
        let regenerated = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert!(
            regenerated == text,
            "scripts/vendor-kinde-spec no longer reproduces {VENDORED_SPEC}"
        );
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

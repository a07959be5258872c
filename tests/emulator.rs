//! The Kinde emulator over real HTTP, with plain reqwest (never the operator's client):
//! every management operation's success and error paths, scopes, the token endpoint, JWT
//! verification against the JWKS, paging, faults, rate limit, rotation, revocation,
//! persistence across a restart, and the binary's stdout contract.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use kinde_emulator::{EmulatorConfig, RunningEmulator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Env {
    emu: RunningEmulator,
    http: reqwest::Client,
    token: String,
}

async fn start_with(config: EmulatorConfig) -> Env {
    let emu = kinde_emulator::spawn(config)
        .await
        .expect("emulator starts");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut env = Env {
        emu,
        http,
        token: String::new(),
    };
    env.token = env.management_token().await;
    env
}

async fn start() -> Env {
    start_with(EmulatorConfig::default()).await
}

impl Env {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emu.base_url())
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url("/oauth2/token"))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    async fn management_token(&self) -> String {
        let audience = self.emu.management_audience();
        let (status, body) = self
            .token_request(&[
                ("grant_type", "client_credentials"),
                ("client_id", kinde_emulator::DEFAULT_CLIENT_ID),
                ("client_secret", kinde_emulator::DEFAULT_CLIENT_SECRET),
                ("audience", &audience),
            ])
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn call_with(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_with(Some(&self.token), method, path, body).await
    }

    async fn control(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_with(None, method, &format!("/_emulator{path}"), body)
            .await
    }

    async fn create_app(&self, name: &str) -> (String, String) {
        let (s, b) = self
            .call(
                Method::POST,
                "/api/v1/applications",
                Some(json!({"name": name, "type": "m2m"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        (
            b["application"]["id"].as_str().unwrap().to_owned(),
            b["application"]["client_secret"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    }

    async fn create_api(&self, name: &str, audience: &str) -> String {
        let (s, b) = self
            .call(
                Method::POST,
                "/api/v1/apis",
                Some(json!({"name": name, "audience": audience})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b["api"]["id"].as_str().unwrap().to_owned()
    }

    async fn create_scope(&self, api: &str, key: &str) -> String {
        let (s, b) = self
            .call(
                Method::POST,
                &format!("/api/v1/apis/{api}/scopes"),
                Some(json!({"key": key, "description": format!("{key} scope")})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b["scope"]["id"].as_str().unwrap().to_owned()
    }

    async fn authorize(&self, api: &str, app: &str) {
        let (s, b) = self
            .call(
                Method::PATCH,
                &format!("/api/v1/apis/{api}/applications"),
                Some(json!({"applications": [{"id": app}]})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }

    async fn grant_scope(&self, api: &str, app: &str, scope: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/api/v1/apis/{api}/applications/{app}/scopes/{scope}"),
            None,
        )
        .await
    }

    async fn calls(&self, op: &str) -> Value {
        let (_, b) = self.control(Method::GET, "/calls", None).await;
        b[op].clone()
    }

    async fn app_token(&self, id: &str, secret: &str, audience: &str) -> (StatusCode, Value) {
        self.token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
            ("audience", audience),
        ])
        .await
    }
}

fn error_code(body: &Value) -> &str {
    body["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error_response: {body}"))
}

/// Decodes and verifies a token with the JWKS the emulator serves.
async fn verify(env: &Env, token: &str, audience: &str) -> Value {
    let jwks: Value = env
        .http
        .get(env.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    let kid = header.kid.expect("kid header");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("kid in JWKS");
    let key =
        DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap())
            .unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[env.emu.domain()]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("token verifies")
        .claims
}

#[tokio::test]
async fn applications_lifecycle_and_errors() {
    let env = start().await;
    let (s, b) = env
        .call(
            Method::POST,
            "/api/v1/applications",
            Some(json!({"name": "billing", "type": "m2m"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = b["application"]["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    assert_eq!(b["application"]["client_id"], id.as_str());
    let secret = b["application"]["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(secret.len() >= 40 && secret.chars().all(|c| c.is_ascii_alphanumeric()));
    assert!(b["code"].is_string() && b["message"].is_string());

    let (s, b) = env
        .call(Method::GET, &format!("/api/v1/applications/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let app = &b["application"];
    assert_eq!(app["name"], "billing");
    assert_eq!(app["type"], "m2m");
    assert_eq!(app["client_id"], id.as_str());
    assert_eq!(app["client_secret"], secret.as_str());
    assert!(app.get("org_code").is_none());

    let (s, _) = env
        .call(
            Method::PATCH,
            &format!("/api/v1/applications/{id}"),
            Some(json!({"name": "billing v2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = env
        .call(Method::GET, &format!("/api/v1/applications/{id}"), None)
        .await;
    assert_eq!(b["application"]["name"], "billing v2");

    let (s, b) = env.call(Method::GET, "/api/v1/applications", None).await;
    assert_eq!(s, StatusCode::OK);
    let listed = b["applications"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|a| a["id"] == id.as_str() && a["type"] == "m2m")
    );
    assert!(listed.iter().all(|a| a.get("client_secret").is_none()));

    let (s, b) = env
        .call(Method::DELETE, &format!("/api/v1/applications/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(b["code"].is_string());
    for method in [Method::GET, Method::DELETE, Method::PATCH] {
        let (s, b) = env
            .call(
                method.clone(),
                &format!("/api/v1/applications/{id}"),
                Some(json!({"name": "x"})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method}");
        assert_eq!(error_code(&b), "APPLICATION_NOT_FOUND");
    }

    for (body, code) in [
        (json!({"type": "m2m"}), "NAME_REQUIRED"),
        (json!({"name": "x"}), "TYPE_REQUIRED"),
        (
            json!({"name": "x", "type": "robot"}),
            "INVALID_APPLICATION_TYPE",
        ),
        (
            json!({"name": "x", "type": "spa", "org_code": "org_1"}),
            "APPLICATION_TYPE_NOT_SUPPORTED",
        ),
        (json!({"name": 5, "type": "m2m"}), "INVALID_REQUEST_BODY"),
    ] {
        let (s, b) = env
            .call(Method::POST, "/api/v1/applications", Some(body))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(error_code(&b), code);
    }
    assert_eq!(env.calls("createApplication").await["writes"], 1);
}

#[tokio::test]
async fn application_paging_and_sorting() {
    let env = start().await;
    for i in 0..24 {
        env.create_app(&format!("app-{:02}", 23 - i)).await;
    }
    // 24 created + the management client.
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/api/v1/applications?page_size=10&sort=name_asc".to_owned();
        if let Some(t) = &next {
            path.push_str(&format!("&next_token={t}"));
        }
        let (s, b) = env.call(Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        pages += 1;
        seen.extend(
            b["applications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["name"].as_str().unwrap().to_owned()),
        );
        match b.get("next_token").and_then(Value::as_str) {
            Some(t) => next = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort_by_key(|n| n.to_lowercase());
    assert_eq!(seen, sorted);

    let (_, b) = env
        .call(
            Method::GET,
            "/api/v1/applications?sort=name_desc&page_size=1",
            None,
        )
        .await;
    assert_eq!(
        b["applications"][0]["name"],
        "Kinde emulator management client"
    );
    let (_, b) = env.call(Method::GET, "/api/v1/applications", None).await;
    assert_eq!(
        b["applications"].as_array().unwrap().len(),
        10,
        "default page size"
    );

    let (s, b) = env
        .call(Method::GET, "/api/v1/applications?page_size=101", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&b), "PAGE_SIZE_LIMIT_EXCEEDED");
    let (s, _) = env
        .call(Method::GET, "/api/v1/applications?page_size=100", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = env
        .call(Method::GET, "/api/v1/applications?next_token=garbage", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&b), "INVALID_NEXT_TOKEN");
    let (s, b) = env
        .call(Method::GET, "/api/v1/applications?sort=age", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&b), "INVALID_SORT");
}

#[tokio::test]
async fn apis_scopes_and_errors() {
    let env = start().await;
    let api = env.create_api("Orders", "https://orders.example.com").await;
    assert_eq!(api.len(), 32);
    env.create_api("billing", "https://billing.example.com")
        .await;

    let (s, b) = env
        .call(
            Method::POST,
            "/api/v1/apis",
            Some(json!({"name": "dup", "audience": "https://orders.example.com"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&b), "API_AUDIENCE_ALREADY_EXISTS");
    for (body, code) in [
        (json!({"audience": "a"}), "NAME_REQUIRED"),
        (json!({"name": "a"}), "AUDIENCE_REQUIRED"),
        (
            json!({"name": "x".repeat(65), "audience": "a"}),
            "INVALID_NAME",
        ),
        (
            json!({"name": "a", "audience": "x".repeat(65)}),
            "INVALID_AUDIENCE",
        ),
    ] {
        let (s, b) = env.call(Method::POST, "/api/v1/apis", Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(error_code(&b), code);
    }

    // Scopes.
    let read = env.create_scope(&api, "read:orders").await;
    assert!(read.starts_with("api_scope_"));
    let write = env.create_scope(&api, "write:orders").await;
    for (key, code) in [
        ("read:orders", "API_SCOPE_ALREADY_EXISTS"),
        ("has space", "INVALID_KEY"),
        (&"k".repeat(65) as &str, "INVALID_KEY"),
    ] {
        let (s, b) = env
            .call(
                Method::POST,
                &format!("/api/v1/apis/{api}/scopes"),
                Some(json!({"key": key})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{key}");
        assert_eq!(error_code(&b), code);
    }
    let (s, _) = env
        .call(
            Method::PATCH,
            &format!("/api/v1/apis/{api}/scopes/{write}"),
            Some(json!({"description": "Write orders"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = env
        .call(
            Method::GET,
            &format!("/api/v1/apis/{api}/scopes/{write}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["scope"]["description"], "Write orders");
    let (s, b) = env
        .call(Method::GET, &format!("/api/v1/apis/{api}/scopes"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let keys: Vec<&str> = b["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["read:orders", "write:orders"]);
    let (s, _) = env
        .call(
            Method::DELETE,
            &format!("/api/v1/apis/{api}/scopes/{write}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let (s, b) = env
            .call(
                method,
                &format!("/api/v1/apis/{api}/scopes/{write}"),
                Some(json!({})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(error_code(&b), "API_SCOPE_NOT_FOUND");
    }

    // Get one API, list all.
    let (app, _) = env.create_app("consumer").await;
    env.authorize(&api, &app).await;
    let (s, b) = env
        .call(Method::GET, &format!("/api/v1/apis/{api}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let a = &b["api"];
    assert_eq!(a["audience"], "https://orders.example.com");
    assert_eq!(a["is_management_api"], false);
    assert_eq!(a["scopes"], json!([{"id": read, "key": "read:orders"}]));
    let apps = a["applications"].as_array().unwrap();
    assert_eq!(apps.len(), 2, "every application of the business");
    let consumer = apps.iter().find(|x| x["id"] == app.as_str()).unwrap();
    assert_eq!(consumer["is_active"], true);
    assert_eq!(consumer["type"], "Machine to machine (M2M)");
    assert!(apps.iter().any(|x| x["is_active"] == false));

    let (s, b) = env.call(Method::GET, "/api/v1/apis", None).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = b["apis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["billing", "Kinde Management API", "Orders"]);
    assert!(b["apis"][0].get("scopes").is_none());
    let mgmt = b["apis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["is_management_api"] == true)
        .unwrap()
        .clone();
    assert_eq!(mgmt["audience"], env.emu.management_audience().as_str());
    let (_, b) = env
        .call(Method::GET, "/api/v1/apis?expand=scopes&page_size=2", None)
        .await;
    assert_eq!(b["apis"].as_array().unwrap().len(), 2);
    assert!(b["apis"][0]["scopes"].is_array());
    let next = b["next_token"].as_str().unwrap();
    let (_, b) = env
        .call(
            Method::GET,
            &format!("/api/v1/apis?page_size=2&next_token={next}"),
            None,
        )
        .await;
    assert_eq!(b["apis"].as_array().unwrap().len(), 1);
    assert!(b.get("next_token").is_none());

    // The management API is read-only.
    let mgmt_id = mgmt["id"].as_str().unwrap();
    let (s, b) = env
        .call(Method::DELETE, &format!("/api/v1/apis/{mgmt_id}"), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&b), "MANAGEMENT_API_NOT_MODIFIABLE");
    let (s, _) = env
        .call(
            Method::POST,
            &format!("/api/v1/apis/{mgmt_id}/scopes"),
            Some(json!({"key": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Delete.
    let (s, b) = env
        .call(Method::DELETE, &format!("/api/v1/apis/{api}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        b,
        json!({"code": "API_DELETED", "message": "API successfully deleted"})
    );
    for (method, path) in [
        (Method::GET, format!("/api/v1/apis/{api}")),
        (Method::DELETE, format!("/api/v1/apis/{api}")),
        (Method::GET, format!("/api/v1/apis/{api}/scopes")),
        (Method::PATCH, format!("/api/v1/apis/{api}/applications")),
    ] {
        let (s, b) = env
            .call(method, &path, Some(json!({"applications": []})))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(error_code(&b), "API_NOT_FOUND");
    }

    let (s, b) = env.call(Method::GET, "/api/v1/nothing-here", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(b["errors"]["code"], "ROUTE_NOT_FOUND");
}

#[tokio::test]
async fn authorization_and_application_scopes() {
    let env = start().await;
    let api = env.create_api("Orders", "https://orders").await;
    let read = env.create_scope(&api, "read:orders").await;
    let write = env.create_scope(&api, "write:orders").await;
    let (a, a_secret) = env.create_app("a").await;
    let (b_app, _) = env.create_app("b").await;

    let (s, b) = env.grant_scope(&api, &a, &read).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&b), "APPLICATION_NOT_AUTHORIZED");

    let (s, b) = env
        .call(
            Method::PATCH,
            &format!("/api/v1/apis/{api}/applications"),
            Some(json!({"applications": [{"id": a}, {"id": b_app}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["code"], "API_APPLICATIONS_UPDATED");
    assert_eq!(b["applications_connected"], json!([a, b_app]));
    assert_eq!(b["applications_disconnected"], json!([]));

    assert_eq!(env.grant_scope(&api, &a, &read).await.0, StatusCode::OK);
    assert_eq!(env.grant_scope(&api, &a, &write).await.0, StatusCode::OK);
    let (s, b) = env.grant_scope(&api, &a, "api_scope_nope").await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::BAD_REQUEST, "API_SCOPE_NOT_FOUND")
    );
    let (s, b) = env.grant_scope(&api, "nope", &read).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::BAD_REQUEST, "APPLICATION_NOT_FOUND")
    );
    let (s, b) = env.grant_scope("nope", &a, &read).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::BAD_REQUEST, "API_NOT_FOUND")
    );

    let (s, body) = env.app_token(&a, &a_secret, "https://orders").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "read:orders write:orders");

    let (s, _) = env
        .call(
            Method::DELETE,
            &format!("/api/v1/apis/{api}/applications/{a}/scopes/{write}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, body) = env.app_token(&a, &a_secret, "https://orders").await;
    assert_eq!(body["scope"], "read:orders");

    // De-authorizing drops the scopes: re-authorized, the app starts with none.
    let (s, b) = env
        .call(
            Method::PATCH,
            &format!("/api/v1/apis/{api}/applications"),
            Some(json!({"applications": [{"id": a, "operation": "delete"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["applications_disconnected"], json!([a]));
    let (s, body) = env.app_token(&a, &a_secret, "https://orders").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "Fosite: the audience is not whitelisted for the client"
    );
    env.authorize(&api, &a).await;
    let (_, body) = env.app_token(&a, &a_secret, "https://orders").await;
    assert_eq!(body["scope"], "");

    // Refusals of the batch call, which are all-or-nothing.
    let many: Vec<Value> = (0..101).map(|_| json!({"id": a})).collect();
    for (body, code) in [
        (json!({"applications": many}), "TOO_MANY_APPLICATIONS"),
        (
            json!({"applications": [{"id": b_app, "operation": "delete"}, {"id": "nope"}]}),
            "APPLICATION_NOT_FOUND",
        ),
        (
            json!({"applications": [{"id": a, "operation": "remove"}]}),
            "INVALID_OPERATION",
        ),
        (json!({}), "APPLICATIONS_REQUIRED"),
    ] {
        let (s, b) = env
            .call(
                Method::PATCH,
                &format!("/api/v1/apis/{api}/applications"),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(error_code(&b), code);
    }
    let (_, state) = env.control(Method::GET, "/state", None).await;
    let orders = state["apis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == api.as_str())
        .unwrap();
    let ids: HashSet<&str> = orders["applications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        HashSet::from([a.as_str(), b_app.as_str()]),
        "failed batch changed nothing"
    );
    assert!(
        state.to_string().find(&a_secret).is_none(),
        "state dump leaks no secrets"
    );
}

#[tokio::test]
async fn management_auth_is_enforced() {
    let env = start().await;
    let (s, b) = env.call_with(None, Method::GET, "/api/v1/apis", None).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::UNAUTHORIZED, "TOKEN_INVALID")
    );
    let (s, b) = env
        .call_with(Some("not.a.jwt"), Method::GET, "/api/v1/apis", None)
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::UNAUTHORIZED, "TOKEN_INVALID")
    );

    // A valid token for another audience is refused.
    let api = env.create_api("Orders", "https://orders").await;
    let (app, secret) = env.create_app("a").await;
    env.authorize(&api, &app).await;
    let (_, t) = env.app_token(&app, &secret, "https://orders").await;
    let (s, b) = env
        .call_with(
            t["access_token"].as_str(),
            Method::GET,
            "/api/v1/apis",
            None,
        )
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::UNAUTHORIZED, "TOKEN_INVALID")
    );

    // Missing scope: Kinde's 403 SCOPE_MISSING naming the scope; only new tokens see scope
    // changes.
    let (s, _) = env
        .control(
            Method::PUT,
            "/management-client/scopes",
            Some(json!({"scopes": ["read:apis"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = env.call(Method::GET, "/api/v1/applications", None).await;
    assert_eq!(s, StatusCode::OK, "old token keeps its scopes");
    let limited = env.management_token().await;
    let (s, b) = env
        .call_with(Some(&limited), Method::GET, "/api/v1/applications", None)
        .await;
    assert_eq!(
        b,
        json!({"errors": [{"code": "SCOPE_MISSING", "message": "Scope is missing: read:applications"}]})
    );
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = env
        .call_with(Some(&limited), Method::GET, "/api/v1/apis", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(env.calls("getApplications").await["statuses"]["403"], 1);

    // Both spellings of the typo'd delete scopes are accepted.
    env.control(
        Method::PUT,
        "/management-client/scopes",
        Some(json!({"scopes": ["delete:apis_scopes"]})),
    )
    .await;
    let typo = env.management_token().await;
    let scope = env.create_scope(&api, "x").await;
    let (s, _) = env
        .call_with(
            Some(&typo),
            Method::DELETE,
            &format!("/api/v1/apis/{api}/scopes/{scope}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // Revocation.
    let (s, b) = env.control(Method::POST, "/tokens/revoke", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(b["revoked"].as_u64().unwrap() >= 3);
    let (s, b) = env.call(Method::GET, "/api/v1/apis", None).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::UNAUTHORIZED, "TOKEN_INVALID")
    );

    // Expiry.
    env.control(
        Method::PUT,
        "/management-client/scopes",
        Some(json!({"scopes": ["read:apis"]})),
    )
    .await;
    let (s, b) = env
        .control(Method::PUT, "/config", Some(json!({"token_ttl_secs": 1})))
        .await;
    assert_eq!((s, &b["token_ttl_secs"]), (StatusCode::OK, &json!(1)));
    let short = env.management_token().await;
    let (s, _) = env
        .call_with(Some(&short), Method::GET, "/api/v1/apis", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    // exp = iat + 1 s, whole seconds: refused within 2 s. Poll rather than sleep the max.
    let deadline = Instant::now() + Duration::from_secs(3);
    let (s, b) = loop {
        let (s, b) = env
            .call_with(Some(&short), Method::GET, "/api/v1/apis", None)
            .await;
        if s != StatusCode::OK || Instant::now() > deadline {
            break (s, b);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::UNAUTHORIZED, "TOKEN_INVALID")
    );
}

#[tokio::test]
async fn token_endpoint_issues_kinde_shaped_tokens() {
    let env = start().await;
    // Management token: claims and JWKS verification.
    let audience = env.emu.management_audience();
    let claims = verify(&env, &env.token, &audience).await;
    assert_eq!(claims["azp"], kinde_emulator::DEFAULT_CLIENT_ID);
    assert_eq!(claims["aud"], json!([audience]));
    assert_eq!(claims["gty"], json!(["client_credentials"]));
    assert_eq!(claims["iss"], env.emu.domain());
    let scp: HashSet<&str> = claims["scp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(scp.contains("create:applications") && scp.contains("delete:api_application_scopes"));
    assert_eq!(
        claims["scope"].as_str().unwrap().split(' ').count(),
        scp.len()
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    assert!(claims["jti"].is_string());
    assert!(claims.get("org_code").is_none());

    // An org-scoped M2M app, with a subset of its scopes, via the form and via Basic auth.
    let api = env.create_api("Orders", "https://orders").await;
    let read = env.create_scope(&api, "read:orders").await;
    let write = env.create_scope(&api, "write:orders").await;
    let (s, b) = env
        .call(
            Method::POST,
            "/api/v1/applications",
            Some(json!({"name": "tenant", "type": "m2m", "org_code": "org_abc123"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = b["application"]["id"].as_str().unwrap().to_owned();
    let secret = b["application"]["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    env.authorize(&api, &id).await;
    env.grant_scope(&api, &id, &read).await;
    env.grant_scope(&api, &id, &write).await;

    let r = env
        .http
        .post(env.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
            ("audience", "https://orders"),
            ("scope", "write:orders"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["pragma"], "no-cache");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer", "Fosite's token_type");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "write:orders");
    let claims = verify(
        &env,
        body["access_token"].as_str().unwrap(),
        "https://orders",
    )
    .await;
    assert_eq!(claims["scp"], json!(["write:orders"]));
    assert_eq!(claims["scope"], "write:orders");
    assert_eq!(claims["org_code"], "org_abc123");
    assert_eq!(claims["azp"], id.as_str());

    let r = env
        .http
        .post(env.url("/oauth2/token"))
        .basic_auth(&id, Some(&secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", "https://orders"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["scope"], "read:orders write:orders");
    let r = env
        .http
        .post(env.url("/oauth2/token"))
        .basic_auth(&id, Some("wrong"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", "https://orders"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        !r.headers().contains_key("www-authenticate"),
        "Fosite sets no WWW-Authenticate"
    );

    // Every refusal.
    let (spa_status, spa) = env
        .call(
            Method::POST,
            "/api/v1/applications",
            Some(json!({"name": "web", "type": "spa"})),
        )
        .await;
    assert_eq!(spa_status, StatusCode::CREATED);
    let spa_id = spa["application"]["id"].as_str().unwrap();
    let spa_secret = spa["application"]["client_secret"].as_str().unwrap();
    env.authorize(&api, spa_id).await;
    let (unauth, unauth_secret) = env.create_app("not authorized").await;
    let cc = "client_credentials";
    type Case<'a> = (Vec<(&'a str, &'a str)>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("client_id", &id),
                ("client_secret", &secret),
                ("audience", "https://orders"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "password"),
                ("client_id", &id),
                ("client_secret", &secret),
                ("audience", "https://orders"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", cc),
                ("client_secret", &secret),
                ("audience", "https://orders"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", cc),
                ("client_id", &id),
                ("audience", "https://orders"),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", cc),
                ("client_id", &id),
                ("client_secret", &secret),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", cc),
                ("client_id", "unknown"),
                ("client_secret", &secret),
                ("audience", "https://orders"),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", cc),
                ("client_id", &id),
                ("client_secret", "wrong"),
                ("audience", "https://orders"),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", cc),
                ("client_id", &unauth),
                ("client_secret", &unauth_secret),
                ("audience", "https://orders"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", cc),
                ("client_id", &id),
                ("client_secret", &secret),
                ("audience", "https://unknown"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", cc),
                ("client_id", &id),
                ("client_secret", &secret),
                ("audience", &audience),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", cc),
                ("client_id", spa_id),
                ("client_secret", spa_secret),
                ("audience", "https://orders"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", cc),
                ("client_id", &id),
                ("client_secret", &secret),
                ("audience", "https://orders"),
                ("scope", "read:orders admin"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
    ];
    for (form, status, error) in cases {
        let (s, b) = env.token_request(&form).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (status, Some(error)),
            "{form:?}: {b}"
        );
        assert!(b["error_description"].is_string());
    }
    let token_calls = env.calls("token").await;
    assert_eq!(
        token_calls["statuses"]["401"], 4,
        "no secret, unknown client, wrong secret, wrong Basic secret"
    );
}

#[tokio::test]
async fn faults_status_latency_and_lost_responses() {
    let env = start().await;
    // Status fault: not processed, answered as configured, consumed `times` times.
    let (s, b) = env
        .control(
            Method::POST,
            "/faults",
            Some(json!({"operation": "createApplication", "status": 503, "times": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (_, b) = env.control(Method::GET, "/faults", None).await;
    assert_eq!(b["faults"][0]["times"], 2);
    for _ in 0..2 {
        let (s, b) = env
            .call(
                Method::POST,
                "/api/v1/applications",
                Some(json!({"name": "x", "type": "m2m"})),
            )
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(b["errors"][0]["code"].is_string());
    }
    let c = env.calls("createApplication").await;
    assert_eq!(
        (c["calls"].as_u64(), c["writes"].as_u64()),
        (Some(2), Some(0))
    );
    env.create_app("after faults").await;

    // Custom body and headers (malformed JSON).
    env.control(
        Method::POST,
        "/faults",
        Some(json!({"operation": "getAPIs", "status": 500, "body": "{not json", "headers": {"x-test": "1"}})),
    )
    .await;
    let r = env
        .http
        .get(env.url("/api/v1/apis"))
        .bearer_auth(&env.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.headers()["x-test"], "1");
    assert_eq!(r.text().await.unwrap(), "{not json");

    // 429 fault carries RateLimit-Reset by default.
    env.control(
        Method::POST,
        "/faults",
        Some(json!({"operation": "getAPIs", "status": 429})),
    )
    .await;
    let r = env
        .http
        .get(env.url("/api/v1/apis"))
        .bearer_auth(&env.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["ratelimit-reset"], "1");

    // Latency only: slow, then normal handling.
    env.control(
        Method::POST,
        "/faults",
        Some(json!({"operation": "getAPIs", "latency_ms": 300})),
    )
    .await;
    let t = Instant::now();
    let (s, _) = env.call(Method::GET, "/api/v1/apis", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(300));

    // Lost response: the write happens, the connection closes without a response.
    env.control(
        Method::POST,
        "/faults",
        Some(json!({"operation": "addAPIs", "drop_response": true})),
    )
    .await;
    let r = env
        .http
        .post(env.url("/api/v1/apis"))
        .bearer_auth(&env.token)
        .json(&json!({"name": "lost", "audience": "https://lost"}))
        .send()
        .await;
    assert!(r.is_err(), "expected a transport error, got {r:?}");
    let (_, b) = env.call(Method::GET, "/api/v1/apis", None).await;
    assert!(
        b["apis"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["audience"] == "https://lost")
    );
    let c = env.calls("addAPIs").await;
    assert_eq!(
        (c["writes"].as_u64(), c["statuses"]["dropped"].as_u64()),
        (Some(1), Some(1))
    );

    // Lost response reported as a gateway error.
    env.control(
        Method::POST,
        "/faults",
        Some(json!({"operation": "addAPIs", "drop_response": true, "status": 502})),
    )
    .await;
    let (s, _) = env
        .call(
            Method::POST,
            "/api/v1/apis",
            Some(json!({"name": "gw", "audience": "https://gw"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    let (s, b) = env
        .call(
            Method::POST,
            "/api/v1/apis",
            Some(json!({"name": "gw", "audience": "https://gw"})),
        )
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::BAD_REQUEST, "API_AUDIENCE_ALREADY_EXISTS")
    );

    // Token endpoint faults use OAuth2 bodies.
    env.control(
        Method::POST,
        "/faults",
        Some(json!({"operation": "token", "status": 500})),
    )
    .await;
    let audience = env.emu.management_audience();
    let (s, b) = env
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", kinde_emulator::DEFAULT_CLIENT_ID),
            ("client_secret", kinde_emulator::DEFAULT_CLIENT_SECRET),
            ("audience", &audience),
        ])
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("server_error"))
    );

    // Invalid faults, list and clear.
    for bad in [
        json!({"operation": "getApis", "status": 500}),
        json!({"operation": "getAPIs"}),
        json!({"operation": "getAPIs", "status": 500, "times": 0}),
        json!({"operation": "getAPIs", "status": 500, "bogus": 1}),
    ] {
        let (s, b) = env.control(Method::POST, "/faults", Some(bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(b["error"].is_string());
    }
    env.control(
        Method::POST,
        "/faults",
        Some(json!({"operation": "getAPI", "status": 500, "times": 5})),
    )
    .await;
    let (_, b) = env.control(Method::DELETE, "/faults", None).await;
    assert_eq!(b["cleared"], 1);
    let (_, b) = env.control(Method::GET, "/faults", None).await;
    assert_eq!(b["faults"], json!([]));
}

#[tokio::test]
async fn rate_limit_throttles_management_calls() {
    let env = start().await;
    let (s, _) = env
        .control(
            Method::PUT,
            "/rate-limit",
            Some(json!({"requests": 2, "per_seconds": 30})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    env.create_app("one").await;
    env.create_app("two").await;
    let r = env
        .http
        .post(env.url("/api/v1/applications"))
        .bearer_auth(&env.token)
        .json(&json!({"name": "three", "type": "m2m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let reset: u64 = r.headers()["ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&reset), "{reset}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "TOO_MANY_REQUESTS");
    // The token endpoint is not throttled; the throttled call was not processed.
    env.management_token().await;
    let (_, state) = env.control(Method::GET, "/state", None).await;
    assert!(
        !state["applications"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "three")
    );
    let c = env.calls("createApplication").await;
    assert_eq!(
        (
            c["calls"].as_u64(),
            c["writes"].as_u64(),
            c["statuses"]["429"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );

    env.control(Method::DELETE, "/rate-limit", None).await;
    env.create_app("three").await;
}

/// A base latency delays every call, the token endpoint's too; a nonsensical one is refused.
#[tokio::test]
async fn base_latency_delays_every_call() {
    let env = start().await;
    let (s, body) = env
        .control(Method::PUT, "/latency", Some(json!({"ms": 250})))
        .await;
    assert_eq!((s, body), (StatusCode::OK, json!({"ms": 250})));
    let t = Instant::now();
    let (s, _) = env.call(Method::GET, "/api/v1/apis", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(250));
    let t = Instant::now();
    env.management_token().await;
    assert!(t.elapsed() >= Duration::from_millis(250));

    let (s, body) = env
        .control(Method::PUT, "/latency", Some(json!({"ms": 600_000})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (_, body) = env.control(Method::GET, "/latency", None).await;
    assert_eq!(body, json!({"ms": 250}), "a refused value changes nothing");
    let (s, _) = env.control(Method::DELETE, "/latency", None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, body) = env.control(Method::GET, "/latency", None).await;
    assert_eq!(body, json!({"ms": 0}));
}

#[tokio::test]
async fn rotate_secret_with_and_without_retain() {
    let env = start().await;
    let api = env.create_api("Orders", "https://orders").await;
    let (id, first) = env.create_app("a").await;
    env.authorize(&api, &id).await;

    let (s, b) = env
        .control(
            Method::POST,
            &format!("/applications/{id}/rotate-secret"),
            Some(json!({"retain_old": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let second = b["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    assert_eq!(
        env.app_token(&id, &first, "https://orders").await.0,
        StatusCode::OK
    );
    assert_eq!(
        env.app_token(&id, &second, "https://orders").await.0,
        StatusCode::OK
    );
    let (_, b) = env
        .call(Method::GET, &format!("/api/v1/applications/{id}"), None)
        .await;
    assert_eq!(b["application"]["client_secret"], second.as_str());

    // As in the dashboard, no second rotation while a previous secret is retained: it
    // must be deleted first.
    for retain in [true, false] {
        let (s, b) = env
            .control(
                Method::POST,
                &format!("/applications/{id}/rotate-secret"),
                Some(json!({"retain_old": retain})),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{b}");
        let message = b["error"].as_str().unwrap();
        assert!(
            message.contains("previous client secret") && message.contains("delete it first"),
            "{message}"
        );
    }
    for secret in [&first, &second] {
        assert_eq!(
            env.app_token(&id, secret, "https://orders").await.0,
            StatusCode::OK,
            "a refused rotation changes nothing"
        );
    }
    let (_, state) = env.control(Method::GET, "/state", None).await;
    let app = state["applications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(app["previous_secret_retained"], true);
    let (s, b) = env
        .control(
            Method::DELETE,
            &format!("/applications/{id}/previous-secret"),
            None,
        )
        .await;
    assert_eq!((s, &b["deleted"]), (StatusCode::OK, &json!(true)));
    let (s, b) = env.app_token(&id, &first, "https://orders").await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client")),
        "the deleted previous secret is refused"
    );
    let (s, b) = env
        .control(
            Method::DELETE,
            &format!("/applications/{id}/previous-secret"),
            None,
        )
        .await;
    assert_eq!((s, &b["deleted"]), (StatusCode::OK, &json!(false)));

    let (_, b) = env
        .control(
            Method::POST,
            &format!("/applications/{id}/rotate-secret"),
            None,
        )
        .await;
    let third = b["client_secret"].as_str().unwrap().to_owned();
    for old in [&first, &second] {
        let (s, b) = env.app_token(&id, old, "https://orders").await;
        assert_eq!(
            (s, b["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_client"))
        );
    }
    assert_eq!(
        env.app_token(&id, &third, "https://orders").await.0,
        StatusCode::OK
    );

    let (s, _) = env
        .control(Method::POST, "/applications/nope/rotate-secret", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = env
        .control(Method::DELETE, "/applications/nope/previous-secret", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Front-end apps have no secret to rotate (the dashboard offers it for back-end and
    // M2M apps only).
    let (s, b) = env
        .call(
            Method::POST,
            "/api/v1/applications",
            Some(json!({"name": "web", "type": "spa"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let spa = b["application"]["id"].as_str().unwrap();
    let (s, b) = env
        .control(
            Method::POST,
            &format!("/applications/{spa}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
}

#[tokio::test]
async fn state_dump_and_reset() {
    let env = start().await;
    let api = env.create_api("Orders", "https://orders").await;
    let scope = env.create_scope(&api, "read:orders").await;
    let (s, b) = env
        .call(
            Method::POST,
            "/api/v1/applications",
            Some(json!({"name": "t", "type": "m2m", "org_code": "org_1"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = b["application"]["id"].as_str().unwrap().to_owned();
    env.authorize(&api, &id).await;
    env.grant_scope(&api, &id, &scope).await;
    let (s, state) = env.control(Method::GET, "/state", None).await;
    assert_eq!(s, StatusCode::OK);
    let app = state["applications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap();
    assert_eq!(app["org_code"], "org_1");
    assert_eq!(
        app["apis"],
        json!([{"id": api, "audience": "https://orders", "scopes": ["read:orders"]}])
    );
    assert!(app.get("client_secret").is_none());
    let orders = state["apis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == api.as_str())
        .unwrap();
    assert_eq!(
        orders["applications"],
        json!([{"id": id, "scopes": ["read:orders"]}])
    );

    env.control(
        Method::PUT,
        "/rate-limit",
        Some(json!({"requests": 100, "per_seconds": 1})),
    )
    .await;
    let (s, _) = env.control(Method::POST, "/reset", None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, state) = env.control(Method::GET, "/state", None).await;
    assert_eq!(state["applications"].as_array().unwrap().len(), 1);
    assert_eq!(state["apis"].as_array().unwrap().len(), 1);
    let (_, rl) = env.control(Method::GET, "/rate-limit", None).await;
    assert_eq!(rl["rate_limit"], Value::Null);
    // The key and management client survive: the old token still works.
    let (s, _) = env.call(Method::GET, "/api/v1/apis", None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, calls) = env.control(Method::GET, "/calls", None).await;
    assert_eq!(calls["getAPIs"]["calls"], 1);
    let (s, _) = env.control(Method::DELETE, "/calls", None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, calls) = env.control(Method::GET, "/calls", None).await;
    assert_eq!(calls, json!({}));
}

#[tokio::test]
async fn state_file_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!(
        "kinde-emulator-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("state.json");
    let config = EmulatorConfig {
        state_file: Some(file.clone()),
        domain: Some("https://example.kinde.test".to_owned()),
        ..EmulatorConfig::default()
    };
    let env = start_with(config.clone()).await;
    let api = env.create_api("Orders", "https://orders").await;
    let scope = env.create_scope(&api, "read:orders").await;
    let (id, secret) = env.create_app("persisted").await;
    env.authorize(&api, &id).await;
    env.grant_scope(&api, &id, &scope).await;
    let (_, t) = env.app_token(&id, &secret, "https://orders").await;
    let app_token = t["access_token"].as_str().unwrap().to_owned();
    let mgmt_token = env.token.clone();
    let (_, b) = env.call(Method::GET, "/.well-known/jwks.json", None).await;
    let kid = b["keys"][0]["kid"].clone();
    assert!(file.exists());
    env.emu.shutdown().await;

    let emu = kinde_emulator::spawn(config).await.unwrap();
    let env2 = Env {
        emu,
        http: env.http.clone(),
        token: mgmt_token,
    };
    // Old management token still verifies (same key) and the state is back.
    let (s, b) = env2
        .call(Method::GET, &format!("/api/v1/apis/{api}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["api"]["scopes"][0]["key"], "read:orders");
    let (_, b) = env2.call(Method::GET, "/.well-known/jwks.json", None).await;
    assert_eq!(b["keys"][0]["kid"], kid);
    let claims = verify(&env2, &app_token, "https://orders").await;
    assert_eq!(claims["scp"], json!(["read:orders"]));
    let (s, b) = env2.app_token(&id, &secret, "https://orders").await;
    assert_eq!((s, &b["scope"]), (StatusCode::OK, &json!("read:orders")));

    // Revocation is persisted too.
    env2.control(Method::POST, "/tokens/revoke", None).await;
    env2.emu.shutdown().await;
    let emu = kinde_emulator::spawn(EmulatorConfig {
        state_file: Some(file.clone()),
        domain: Some("https://example.kinde.test".to_owned()),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let env3 = Env {
        emu,
        http: env.http.clone(),
        token: env2.token.clone(),
    };
    let (s, b) = env3.call(Method::GET, "/api/v1/apis", None).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::UNAUTHORIZED, "TOKEN_INVALID")
    );
    env3.emu.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn binary_prints_its_url_on_stdout() {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kinde-m2m-operator"))
        .args(["emulator", "--listen", "127.0.0.1:0"])
        .env_remove("KINDE_EMULATOR_STATE_FILE")
        .env_remove("KINDE_EMULATOR_DOMAIN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let read = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(60), read).await;
    let line = match line {
        Ok(Ok(Ok(line))) => line,
        other => {
            let _ = child.kill();
            panic!("no URL line: {other:?}");
        }
    };
    let result = async {
        let url = line
            .trim_end()
            .strip_prefix("KINDE_EMULATOR_URL=")
            .filter(|u| u.starts_with("http://127.0.0.1:"))
            .ok_or_else(|| format!("unexpected stdout line {line:?}"))?
            .to_owned();
        let port: u16 = url["http://127.0.0.1:".len()..]
            .parse()
            .map_err(|e| format!("bad port: {e}"))?;
        assert!(port > 0);
        let jwks: Value = reqwest::get(format!("{url}/.well-known/jwks.json"))
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(jwks)
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(result.unwrap()["keys"][0]["kty"], "RSA");
}

#[tokio::test]
async fn token_invalid_status_403_keeps_the_earlier_answer() {
    let env = start_with(EmulatorConfig {
        token_invalid_status: 403,
        ..EmulatorConfig::default()
    })
    .await;
    let (s, b) = env
        .call_with(Some("not.a.jwt"), Method::GET, "/api/v1/apis", None)
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::FORBIDDEN, "TOKEN_INVALID")
    );
    // Switched at run time through the control surface, and back by reset.
    let (s, b) = env
        .control(
            Method::PUT,
            "/config",
            Some(json!({"token_invalid_status": 401})),
        )
        .await;
    assert_eq!(
        (s, &b["token_invalid_status"]),
        (StatusCode::OK, &json!(401))
    );
    let (s, _) = env.call_with(None, Method::GET, "/api/v1/apis", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    env.control(Method::POST, "/reset", None).await;
    let (_, b) = env.control(Method::GET, "/config", None).await;
    assert_eq!(
        b["token_invalid_status"], 403,
        "reset restores the start value"
    );
    let (s, _) = env.call_with(None, Method::GET, "/api/v1/apis", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A missing scope is SCOPE_MISSING in either mode.
    env.control(
        Method::PUT,
        "/management-client/scopes",
        Some(json!({"scopes": ["read:apis"]})),
    )
    .await;
    let limited = env.management_token().await;
    let (s, b) = env
        .call_with(Some(&limited), Method::GET, "/api/v1/applications", None)
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::FORBIDDEN, "SCOPE_MISSING")
    );
}

#[tokio::test]
async fn not_found_mode_404() {
    let env = start_with(EmulatorConfig {
        not_found_status: 404,
        ..EmulatorConfig::default()
    })
    .await;
    let api = env.create_api("Orders", "https://orders").await;
    let (app, _) = env.create_app("a").await;
    for (method, path, code) in [
        (
            Method::GET,
            "/api/v1/applications/nope".to_owned(),
            "APPLICATION_NOT_FOUND",
        ),
        (
            Method::DELETE,
            "/api/v1/applications/nope".to_owned(),
            "APPLICATION_NOT_FOUND",
        ),
        (Method::GET, "/api/v1/apis/nope".to_owned(), "API_NOT_FOUND"),
        (
            Method::DELETE,
            "/api/v1/apis/nope".to_owned(),
            "API_NOT_FOUND",
        ),
        (
            Method::GET,
            format!("/api/v1/apis/{api}/scopes/api_scope_nope"),
            "API_SCOPE_NOT_FOUND",
        ),
        (
            Method::POST,
            format!("/api/v1/apis/{api}/applications/{app}/scopes/api_scope_nope"),
            "API_SCOPE_NOT_FOUND",
        ),
    ] {
        let (s, b) = env.call(method.clone(), &path, None).await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::NOT_FOUND, code),
            "{method} {path}"
        );
        assert!(b["errors"][0]["message"].is_string());
    }
    // Other refusals keep their status; an unknown route is still ROUTE_NOT_FOUND.
    let (s, b) = env
        .call(Method::POST, "/api/v1/apis", Some(json!({"name": "x"})))
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::BAD_REQUEST, "AUDIENCE_REQUIRED")
    );
    let (s, b) = env.call(Method::GET, "/api/v1/nothing-here", None).await;
    assert_eq!(
        (s, &b["errors"]["code"]),
        (StatusCode::NOT_FOUND, &json!("ROUTE_NOT_FOUND"))
    );
    assert_eq!(env.calls("getApplication").await["statuses"]["404"], 1);

    // Switched back at run time; bad values are refused and change nothing.
    for bad in [
        json!({"not_found_status": 410}),
        json!({"token_invalid_status": 400}),
        json!({"not_found_status": 400, "token_ttl_secs": 0}),
    ] {
        let (s, b) = env.control(Method::PUT, "/config", Some(bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    }
    let (_, b) = env.control(Method::GET, "/config", None).await;
    assert_eq!(
        b,
        json!({"token_ttl_secs": 3600, "not_found_status": 404, "token_invalid_status": 401})
    );
    env.control(
        Method::PUT,
        "/config",
        Some(json!({"not_found_status": 400})),
    )
    .await;
    let (s, b) = env
        .call(Method::GET, "/api/v1/applications/nope", None)
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::BAD_REQUEST, "APPLICATION_NOT_FOUND")
    );
    let bad = kinde_emulator::spawn(EmulatorConfig {
        not_found_status: 418,
        ..EmulatorConfig::default()
    })
    .await;
    assert!(
        bad.is_err(),
        "an unknown not-found status is refused at start"
    );
}

#[tokio::test]
async fn concurrency_limit_refuses_calls_beyond_the_cap() {
    let env = start().await;
    let (s, b) = env
        .control(
            Method::PUT,
            "/concurrency-limit",
            Some(json!({"max_in_flight": 1, "reset_secs": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // One call held in the emulator (counted as started), a second one meanwhile.
    env.control(
        Method::POST,
        "/faults",
        Some(json!({"operation": "getAPIs", "latency_ms": 60_000})),
    )
    .await;
    let held = {
        let http = env.http.clone();
        let url = env.url("/api/v1/apis");
        let token = env.token.clone();
        tokio::spawn(async move { http.get(url).bearer_auth(token).send().await })
    };
    while env.calls("getAPIs").await["calls"] != 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = env
        .http
        .post(env.url("/api/v1/applications"))
        .bearer_auth(&env.token)
        .json(&json!({"name": "crowded", "type": "m2m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["ratelimit-reset"], "2");
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "TOO_MANY_REQUESTS");
    let c = env.calls("createApplication").await;
    assert_eq!(
        (c["writes"].as_u64(), c["statuses"]["429"].as_u64()),
        (Some(0), Some(1))
    );
    // The token endpoint is not limited.
    env.management_token().await;
    let (_, b) = env.control(Method::GET, "/concurrency-limit", None).await;
    assert_eq!(
        b["concurrency_limit"],
        json!({"max_in_flight": 1, "reset_secs": 2})
    );

    // Once the held call is gone, calls pass again.
    held.abort();
    let _ = held.await;
    env.control(Method::DELETE, "/faults", None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = env.call(Method::GET, "/api/v1/apis", None).await;
        if s == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the aborted call never left the emulator"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.control(Method::DELETE, "/concurrency-limit", None)
        .await;
    let (_, b) = env.control(Method::GET, "/concurrency-limit", None).await;
    assert_eq!(b["concurrency_limit"], Value::Null);
}

/// `/oauth2/token` as Fosite answers: form bodies only, Fosite's checks and texts.
#[tokio::test]
async fn token_endpoint_speaks_fosite() {
    let env = start().await;
    let api = env.create_api("Orders", "https://orders").await;
    let read = env.create_scope(&api, "read:orders").await;
    let other_api = env.create_api("Billing", "https://billing").await;
    let bill = env.create_scope(&other_api, "read:bills").await;
    let (id, secret) = env.create_app("svc").await;
    env.authorize(&api, &id).await;
    env.grant_scope(&api, &id, &read).await;
    env.authorize(&other_api, &id).await;
    env.grant_scope(&other_api, &id, &bill).await;
    let invalid_request = "The request is missing a required parameter, includes an invalid parameter value, includes a parameter more than once, or is otherwise malformed.";

    // JSON is not read: the body counts as empty.
    let r = env
        .http
        .post(env.url("/oauth2/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": id,
                      "client_secret": secret, "audience": "https://orders"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.headers()["content-type"],
        "application/json;charset=UTF-8"
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        b,
        json!({"error": "invalid_request", "error_description": format!("{invalid_request} The POST body can not be empty.")})
    );
    let raw = |content_type: Option<&'static str>, body: &'static str| {
        let mut req = env.http.post(env.url("/oauth2/token")).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status();
            let b: Value = r.json().await.unwrap();
            (status, b)
        }
    };
    let (s, b) = raw(None, "grant_type=client_credentials").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .ends_with("The POST body can not be empty.")
    );
    let (s, b) = raw(Some("application/x-www-form-urlencoded"), "grant_type=%zz").await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    assert!(b["error_description"].as_str().unwrap().ends_with(
        "Unable to parse HTTP body, make sure to send a properly formatted form request body."
    ));
    let r = env.http.get(env.url("/oauth2/token")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let b: Value = r.json().await.unwrap();
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .ends_with("HTTP method is 'GET', expected 'POST'.")
    );

    let described = |form: Vec<(&str, String)>| {
        let req = env.http.post(env.url("/oauth2/token")).form(&form);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status();
            let b: Value = r.json().await.unwrap();
            (
                status,
                b["error"].as_str().unwrap_or("").to_owned(),
                b["error_description"].as_str().unwrap_or("").to_owned(),
                b,
            )
        }
    };
    let base = |audience: &str| {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", id.clone()),
            ("client_secret", secret.clone()),
            ("audience", audience.to_owned()),
        ]
    };
    let (s, e, d, _) = described(base("https://nowhere")).await;
    assert_eq!(
        (s, e.as_str(), d),
        (
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "{invalid_request} Requested audience 'https://nowhere' has not been whitelisted by the OAuth 2.0 Client."
            )
        )
    );
    let mut with_scope = base("https://orders");
    with_scope.push(("scope", "read:orders launch:rockets".to_owned()));
    let (s, e, d, _) = described(with_scope).await;
    assert_eq!(
        (s, e.as_str(), d.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "The requested scope is invalid, unknown, or malformed. The OAuth 2.0 Client is not allowed to request scope 'launch:rockets'."
        )
    );
    // A scope granted on another API is not granted for this audience.
    let mut elsewhere = base("https://orders");
    elsewhere.push(("scope", "read:bills".to_owned()));
    let (_, e, d, _) = described(elsewhere).await;
    assert_eq!(e, "invalid_scope");
    assert!(
        d.ends_with("not allowed to request scope 'read:bills'."),
        "{d}"
    );
    let mut wrong = base("https://orders");
    wrong[2].1 = "wrong".to_owned();
    let (s, e, d, _) = described(wrong).await;
    assert_eq!(
        (s, e.as_str(), d.as_str()),
        (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed (e.g., unknown client, no client authentication included, or unsupported authentication method)."
        )
    );
    let (s, e, d, _) = described(vec![("grant_type", "client_credentials".to_owned())]).await;
    assert_eq!(
        (s, e.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    assert!(d.ends_with("Client credentials missing or malformed in both HTTP Authorization header and HTTP POST body."));
    let (_, e, d, _) = described(vec![("client_id", id.clone())]).await;
    assert_eq!(e, "invalid_request");
    assert!(
        d.ends_with("Request parameter 'grant_type' is missing"),
        "{d}"
    );
    // An unsupported grant is refused before the client is looked at.
    let (s, e, d, _) = described(vec![
        ("grant_type", "password".to_owned()),
        ("client_id", "nobody".to_owned()),
    ])
    .await;
    assert_eq!(
        (s, e.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    assert!(
        d.ends_with("has exactly whitelisted the redirect_uri you specified."),
        "{d}"
    );
    // A back-end app may not use the client-credentials grant.
    let (s, b) = env
        .call(
            Method::POST,
            "/api/v1/applications",
            Some(json!({"name": "backend", "type": "reg"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let reg = b["application"]["id"].as_str().unwrap().to_owned();
    let reg_secret = b["application"]["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    env.authorize(&api, &reg).await;
    let (s, e, d, _) = described(vec![
        ("grant_type", "client_credentials".to_owned()),
        ("client_id", reg),
        ("client_secret", reg_secret),
        ("audience", "https://orders".to_owned()),
    ])
    .await;
    assert_eq!(
        (s, e.as_str(), d.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "The client is not authorized to request a token using this method. The OAuth 2.0 Client is not allowed to use authorization grant 'client_credentials'."
        )
    );

    // Repeated parameters: the first wins (Go's Values.Get). HTTP Basic wins over the body.
    let mut repeated = base("https://orders");
    repeated.push(("grant_type", "password".to_owned()));
    let (s, _, _, b) = described(repeated).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["token_type"], "bearer");
    let r = env
        .http
        .post(env.url("/oauth2/token"))
        .basic_auth(&id, Some(&secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "someone-else"),
            ("client_secret", "wrong"),
            ("audience", "https://orders"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "application/json;charset=UTF-8"
    );
}

/// Spawns the binary's `emulator` with `args`; returns its URL once printed, or `None`
/// when it exits (or prints nothing) first.
async fn spawn_binary(args: &[&str]) -> (std::process::Child, Option<String>) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kinde-m2m-operator"))
        .args(["emulator", "--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("KINDE_EMULATOR_STATE_FILE")
        .env_remove("KINDE_EMULATOR_DOMAIN")
        .env_remove("KINDE_EMULATOR_NOT_FOUND_STATUS")
        .env_remove("KINDE_EMULATOR_TOKEN_INVALID_STATUS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let read = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    let url = match tokio::time::timeout(Duration::from_secs(60), read).await {
        Ok(Ok(Ok(line))) => line
            .trim_end()
            .strip_prefix("KINDE_EMULATOR_URL=")
            .map(str::to_owned),
        _ => None,
    };
    (child, url)
}

#[tokio::test]
async fn binary_flags_set_the_answer_modes() {
    let (mut child, url) =
        spawn_binary(&["--not-found-status", "404", "--token-invalid-status", "403"]).await;
    let config: Result<Value, String> = async {
        let url = url.ok_or("no URL line")?;
        reqwest::get(format!("{url}/_emulator/config"))
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let config = config.unwrap();
    assert_eq!(
        (&config["not_found_status"], &config["token_invalid_status"]),
        (&json!(404), &json!(403))
    );
    let (mut child, url) = spawn_binary(&["--not-found-status", "418"]).await;
    let status = child.wait().unwrap();
    assert!(url.is_none() && !status.success(), "418 is refused");
}

//! Shared by the Kinde client tests: an in-process emulator, plain-HTTP access to its
//! control surface, and `KindeClient`s configured for fast tests (short timeouts and
//! backoffs, no client-side rate limit).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kinde_emulator::{EmulatorConfig, RunningEmulator};
use kinde_m2m_operator::kinde::{KindeClient, KindeConfig, KindeMetrics};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};

pub struct Emu {
    pub emu: RunningEmulator,
    pub http: reqwest::Client,
}

impl Emu {
    pub async fn start() -> Self {
        Self::start_with(EmulatorConfig::default()).await
    }

    pub async fn start_with(config: EmulatorConfig) -> Self {
        let emu = kinde_emulator::spawn(config)
            .await
            .expect("emulator starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self { emu, http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emu.base_url())
    }

    /// A client config for the default management credentials, tuned for tests.
    pub fn config(&self) -> KindeConfig {
        self.config_with(
            kinde_emulator::DEFAULT_CLIENT_ID,
            kinde_emulator::DEFAULT_CLIENT_SECRET,
        )
    }

    pub fn config_with(&self, client_id: &str, client_secret: &str) -> KindeConfig {
        let mut c = KindeConfig::new(
            url::Url::parse(self.emu.base_url()).unwrap(),
            client_id.to_owned(),
            SecretString::from(client_secret.to_owned()),
        );
        c.request_timeout = Duration::from_secs(5);
        c.requests_per_second = 0.0;
        c.max_in_flight = 8;
        c.max_attempts = 4;
        c.base_backoff = Duration::from_millis(5);
        c.max_backoff = Duration::from_secs(2);
        c
    }

    pub fn client(&self) -> KindeClient {
        self.client_with(self.config())
    }

    pub fn client_with(&self, config: KindeConfig) -> KindeClient {
        KindeClient::new(config, KindeMetrics::default()).expect("client")
    }

    /// A control-surface call that must succeed; returns its JSON body.
    pub async fn control(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), self.url(&format!("/_emulator{path}")));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let value: Value = r.json().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value
    }

    pub async fn fault(&self, fault: Value) {
        self.control(Method::POST, "/faults", Some(fault)).await;
    }

    pub async fn calls(&self) -> Value {
        self.control(Method::GET, "/calls", None).await
    }

    pub async fn reset_calls(&self) {
        self.control(Method::DELETE, "/calls", None).await;
    }

    /// Requests of `op` the emulator received (including faulted and throttled ones).
    pub async fn calls_of(&self, op: &str) -> u64 {
        self.calls().await[op]["calls"].as_u64().unwrap_or(0)
    }

    pub async fn writes_of(&self, op: &str) -> u64 {
        self.calls().await[op]["writes"].as_u64().unwrap_or(0)
    }

    /// Answers of `op` with `status` (`"200"`, `"429"`, `"dropped"`, ...).
    pub async fn status_count(&self, op: &str, status: &str) -> u64 {
        self.calls().await[op]["statuses"][status]
            .as_u64()
            .unwrap_or(0)
    }

    pub async fn state(&self) -> Value {
        self.control(Method::GET, "/state", None).await
    }

    pub async fn set_management_scopes(&self, scopes: &[&str]) {
        self.control(
            Method::PUT,
            "/management-client/scopes",
            Some(json!({ "scopes": scopes })),
        )
        .await;
    }

    /// A client-credentials token request made with plain HTTP, as an application would.
    pub async fn app_token(
        &self,
        client_id: &str,
        client_secret: &str,
        audience: &str,
    ) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url("/oauth2/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", client_secret),
                ("audience", audience),
            ])
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    /// Verifies a JWT with the JWKS the emulator serves; returns its claims.
    pub async fn verify_jwt(&self, token: &str, audience: &str) -> Value {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let jwks: Value = self
            .http
            .get(self.url("/.well-known/jwks.json"))
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
        let key = DecodingKey::from_rsa_components(
            jwk["n"].as_str().unwrap(),
            jwk["e"].as_str().unwrap(),
        )
        .unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[self.emu.domain()]);
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .expect("token verifies")
            .claims
    }
}

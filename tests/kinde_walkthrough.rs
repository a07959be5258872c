//! Kinde's M2M walk-through, through the operator's client: a management token, register
//! an API with scopes, create an M2M app, authorize it with one scope, the app's own token
//! request (plain HTTP, as the app would make it) gets a verifiable JWT with that scope,
//! then de-authorize and the same request is refused.
//!
//! Second test: the same walk-through plus failing calls and retries under a TRACE-level
//! subscriber that captures every log line (including reqwest's `log` records), then no
//! secret, token or encoding of one may appear in the logs or in any error's Debug/Display.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_kinde;

use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use kinde_emulator::EmulatorConfig;
use kinde_m2m_operator::kinde::types::Authorization;
use kinde_m2m_operator::kinde::{KindeClient, KindeError, Operation};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::json;
use support_kinde::Emu;

const AUDIENCE: &str = "https://api.example.com";

struct Walk {
    api: String,
    client_id: String,
    client_secret: String,
    app_token: String,
}

/// The walk-through; returns what it made so callers can look for leaks.
async fn walkthrough(env: &Emu, client: &KindeClient) -> Walk {
    // 1. Register the API and its scopes (the management token is fetched on first use).
    let api = client.create_api("Example API", AUDIENCE).await.unwrap();
    let read_users = client
        .create_api_scope(&api, "read:users", "Read users")
        .await
        .unwrap();
    client
        .create_api_scope(&api, "write:flags", "Write feature flags")
        .await
        .unwrap();
    assert_eq!(env.status_count("token", "200").await, 1);

    // 2. Create the M2M application.
    let app = client
        .create_application("Example M2M app", None)
        .await
        .unwrap();
    let client_id = app.client_id.clone();
    let client_secret = app.client_secret.expose_secret().to_owned();

    // Before authorization the app cannot get a token for the API.
    let (status, body) = env.app_token(&client_id, &client_secret, AUDIENCE).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // 3. Authorize it for the API with `read:users`.
    client
        .update_api_applications(&api, &[(&client_id, Authorization::Authorize)])
        .await
        .unwrap();
    client
        .add_api_application_scope(&api, &client_id, &read_users)
        .await
        .unwrap();

    // 4. The app's own token request.
    let (status, body) = env.app_token(&client_id, &client_secret, AUDIENCE).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["token_type"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("bearer")
    );
    let app_token = body["access_token"].as_str().unwrap().to_owned();
    let claims = env.verify_jwt(&app_token, AUDIENCE).await;
    assert_eq!(claims["scp"], json!(["read:users"]));
    assert_eq!(claims["azp"], client_id.as_str());
    assert_eq!(claims["aud"], json!([AUDIENCE]));
    assert_eq!(claims["gty"], json!(["client_credentials"]));

    // 5. De-authorize: the same request is refused.
    client
        .update_api_applications(&api, &[(&client_id, Authorization::Deauthorize)])
        .await
        .unwrap();
    let (status, body) = env.app_token(&client_id, &client_secret, AUDIENCE).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Fosite's answer: the audience is not whitelisted for the client.
    assert_eq!(body["error"], "invalid_request");
    assert!(body.get("access_token").is_none());

    // Still one management token for everything.
    assert_eq!(
        env.status_count("token", "200").await,
        2,
        "1 management + 1 app token"
    );
    Walk {
        api,
        client_id,
        client_secret,
        app_token,
    }
}

#[tokio::test]
async fn kinde_m2m_walkthrough() {
    let env = Emu::start().await;
    let client = env.client();
    walkthrough(&env, &client).await;
    assert_eq!(client.metrics().calls("token", "200"), 1);
}

// ---- no secrets in logs or errors ----

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One process-wide TRACE subscriber (all targets; `log` records bridged), writing into
/// a buffer. Global, so the emulator's and hyper's tasks on any thread are captured.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("global subscriber");
        capture
    })
}

/// The forms a secret could take on its way out: raw, form/percent-encoded, base64 (as in
/// HTTP Basic `id:secret` too), JSON-escaped.
fn encodings(secret: &str, client_id: Option<&str>) -> Vec<String> {
    let mut forms = vec![
        secret.to_owned(),
        url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
        STANDARD.encode(secret),
        URL_SAFE.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        serde_json::to_string(secret)
            .unwrap()
            .trim_matches('"')
            .to_owned(),
    ];
    if let Some(id) = client_id {
        forms.push(STANDARD.encode(format!("{id}:{secret}")));
    }
    forms.sort();
    forms.dedup();
    forms
}

fn assert_clean(what: &str, text: &str, secrets: &[(String, Vec<String>)]) {
    for (name, forms) in secrets {
        for form in forms {
            assert!(
                !text.contains(form.as_str()),
                "{what} contains {name} (as {form:?})"
            );
        }
    }
    // Any JWT (a management token the test never sees) starts with base64url of `{"`.
    assert!(
        !text.contains("eyJ"),
        "{what} contains something JWT-shaped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_or_errors() {
    let capture = capture();
    let mgmt_secret = "Mgmt S3cret+/=&%?:ünïcode";
    let env = Emu::start_with(EmulatorConfig {
        management_client_secret: mgmt_secret.to_owned(),
        ..EmulatorConfig::default()
    })
    .await;
    let mut config = env.config_with(kinde_emulator::DEFAULT_CLIENT_ID, mgmt_secret);
    config.request_timeout = Duration::from_millis(2000);
    let client = env.client_with(config);

    let mut errors: Vec<KindeError> = Vec::new();
    let mut debugs: Vec<String> = Vec::new();

    // Faults along the way: a token 503 (retried), a 429, 5xx on reads (retried).
    env.fault(json!({"operation": "token", "status": 503}))
        .await;
    env.fault(json!({"operation": "addAPIs", "status": 429}))
        .await;
    env.fault(json!({"operation": "addAPIScope", "status": 500}))
        .await;
    errors.push(
        client
            .create_api_scope("api_missing", "x", "y")
            .await
            .unwrap_err(),
    );
    let walk = walkthrough(&env, &client).await;
    env.fault(json!({"operation": "getAPI", "status": 502, "times": 2}))
        .await;
    let api = client.get_api(&walk.api).await.unwrap();
    debugs.push(format!("{api:?}"));

    // The app secret is readable through the API: it must still not leak.
    let app = client.get_application(&walk.client_id).await.unwrap();
    assert_eq!(
        app.client_secret.as_ref().map(|s| s.expose_secret()),
        Some(walk.client_secret.as_str())
    );
    debugs.push(format!("{app:?}"));
    let created = client.create_application("second", None).await.unwrap();
    let second_secret = created.client_secret.expose_secret().to_owned();
    debugs.push(format!("{created:?}"));

    // Failing calls, one per error class.
    env.fault(json!({"operation": "createApplication", "drop_response": true}))
        .await;
    errors.push(client.create_application("lost", None).await.unwrap_err());
    env.fault(json!({"operation": "createApplication", "latency_ms": 3000}))
        .await;
    errors.push(client.create_application("slow", None).await.unwrap_err());
    // A malformed 200 whose bytes hold the secret: the decode error must not quote it.
    env.fault(json!({
        "operation": "getApplication", "status": 200,
        "body": format!("{{\"application\":{{\"client_secret\":\"{}\"", walk.client_secret),
    }))
    .await;
    errors.push(client.get_application(&walk.client_id).await.unwrap_err());
    env.fault(json!({"operation": "getApplications", "status": 500, "times": 10}))
        .await;
    errors.push(client.list_applications().await.unwrap_err());
    env.control(Method::DELETE, "/faults", None).await;
    env.fault(
        json!({"operation": "getAPIs", "status": 429, "headers": {"ratelimit-reset": "120"}}),
    )
    .await;
    errors.push(client.list_apis(true).await.unwrap_err());
    errors.push(client.get_application("app_missing").await.unwrap_err());
    errors.push(client.get_application("bad/id").await.unwrap_err());
    // Revoked token: refreshed once, then fine.
    env.control(Method::POST, "/tokens/revoke", None).await;
    client.list_api_scopes(&walk.api).await.unwrap();
    // Missing scope.
    let scopes: Vec<&str> = Operation::required_scopes()
        .into_iter()
        .filter(|s| *s != "delete:applications")
        .collect();
    env.set_management_scopes(&scopes).await;
    env.control(Method::POST, "/tokens/revoke", None).await;
    errors.push(client.delete_application(&created.id).await.unwrap_err());
    // Wrong and rotated management credentials.
    let wrong_secret = "Wr0ng/Secret+value";
    let wrong = env.client_with(env.config_with(kinde_emulator::DEFAULT_CLIENT_ID, wrong_secret));
    errors.push(wrong.list_apis(false).await.unwrap_err());
    let rotated = env
        .control(
            Method::POST,
            &format!(
                "/applications/{}/rotate-secret",
                kinde_emulator::DEFAULT_CLIENT_ID
            ),
            Some(json!({})),
        )
        .await;
    let rotated_secret = rotated["client_secret"].as_str().unwrap().to_owned();
    env.control(Method::POST, "/tokens/revoke", None).await;
    errors.push(client.get_api(&walk.api).await.unwrap_err());

    let kinds: Vec<_> = errors.iter().map(|e| e.kind().as_str()).collect();
    for expected in [
        "KindeNotFound",
        "KindeUnauthorized",
        "KindeForbidden",
        "KindeRateLimited",
        "KindeUnavailable",
        "KindeOutcomeUnknown",
        "KindeRejected",
        "KindeBadResponse",
    ] {
        assert!(
            kinds.contains(&expected),
            "no {expected} produced: {kinds:?}"
        );
    }

    let id = kinde_emulator::DEFAULT_CLIENT_ID;
    let secrets = vec![
        (
            "the management secret".to_owned(),
            encodings(mgmt_secret, Some(id)),
        ),
        (
            "a wrong management secret".to_owned(),
            encodings(wrong_secret, Some(id)),
        ),
        (
            "the rotated management secret".to_owned(),
            encodings(&rotated_secret, Some(id)),
        ),
        (
            "the app secret".to_owned(),
            encodings(&walk.client_secret, Some(&walk.client_id)),
        ),
        (
            "the second app secret".to_owned(),
            encodings(&second_secret, Some(&created.client_id)),
        ),
        (
            "the app's access token".to_owned(),
            encodings(&walk.app_token, None),
        ),
    ];
    for e in &errors {
        assert_clean("an error's Display", &e.to_string(), &secrets);
        assert_clean("an error's Debug", &format!("{e:?}"), &secrets);
    }
    for d in &debugs {
        assert_clean("a returned value's Debug", d, &secrets);
    }
    assert_clean("the client's Debug", &format!("{client:?}"), &secrets);

    env.emu.shutdown().await;
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    // The capture really holds everything: our client's, the emulator's and reqwest's lines.
    for expected in [
        "Kinde call",
        "retrying Kinde call",
        "injected fault",
        "starting new connection",
    ] {
        assert!(
            logs.contains(expected),
            "logs lack {expected:?}: capture is broken"
        );
    }
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"));
    assert_clean("the logs", &logs, &secrets);
    let _ = std::io::stderr().flush();
}

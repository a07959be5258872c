//! The real `KindeClient` against the in-process Kinde emulator over HTTP: every operation,
//! every fault the emulator can inject, token caching and metrics. Behaviour is asserted
//! through the emulator's call counters and the client's metrics, never through timing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_kinde;

use std::time::Duration;

use kinde_emulator::EmulatorConfig;
use kinde_m2m_operator::kinde::types::Authorization;
use kinde_m2m_operator::kinde::{KindeError, Operation, Transient};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use support_kinde::Emu;

fn apps_named<'a>(state: &'a Value, name: &str) -> Vec<&'a Value> {
    state["applications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == name)
        .collect()
}

fn api_in_state<'a>(state: &'a Value, id: &str) -> &'a Value {
    state["apis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .expect("API in state")
}

/// Every status the emulator answered equals what the client's metrics recorded.
async fn assert_metrics_match(env: &Emu, client: &kinde_m2m_operator::kinde::KindeClient) {
    let calls = env.calls().await;
    let mut checked = 0;
    for op in Operation::ALL {
        let Some(statuses) = calls[op.name()]["statuses"].as_object() else {
            continue;
        };
        for (status, n) in statuses {
            assert_eq!(
                client.metrics().calls(op.name(), status),
                n.as_u64().unwrap(),
                "metric for {} {status}",
                op.name()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 16,
        "only {checked} (operation, status) pairs seen"
    );
}

#[tokio::test]
async fn applications_lifecycle() {
    let env = Emu::start().await;
    let client = env.client();

    let created = client.create_application("billing", None).await.unwrap();
    assert!(!created.id.is_empty() && !created.client_id.is_empty());
    assert!(!created.client_secret.expose_secret().is_empty());

    let app = client.get_application(&created.id).await.unwrap();
    assert_eq!(app.name, "billing");
    assert_eq!(app.app_type.as_deref(), Some("m2m"));
    assert_eq!(app.client_id, created.client_id);
    assert_eq!(
        app.client_secret.as_ref().map(|s| s.expose_secret()),
        Some(created.client_secret.expose_secret())
    );

    client
        .rename_application(&created.id, "billing-v2")
        .await
        .unwrap();
    assert_eq!(
        client.get_application(&created.id).await.unwrap().name,
        "billing-v2"
    );
    let listed = client.list_applications().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|a| a.id == created.id && a.name == "billing-v2")
    );
    assert!(
        listed
            .iter()
            .any(|a| a.id == kinde_emulator::DEFAULT_CLIENT_ID)
    );

    // Org-scoped creation reaches Kinde with the org code.
    let org = client
        .create_application("org-app", Some("org_123"))
        .await
        .unwrap();
    let state = env.state().await;
    assert_eq!(apps_named(&state, "org-app")[0]["org_code"], "org_123");
    assert_eq!(apps_named(&state, "org-app")[0]["id"], org.id.as_str());

    client.delete_application(&created.id).await.unwrap();
    let gone = client.get_application(&created.id).await.unwrap_err();
    assert!(gone.is_not_found(), "{gone:?}");
    let again = client.delete_application(&created.id).await.unwrap_err();
    assert!(again.is_not_found(), "{again:?}");
    let renamed = client
        .rename_application(&created.id, "x")
        .await
        .unwrap_err();
    assert!(renamed.is_not_found(), "{renamed:?}");

    // An id that would change the path is refused before any request.
    let before = env.calls_of("getApplication").await;
    let bad = client.get_application("../apis").await.unwrap_err();
    assert!(matches!(bad, KindeError::InvalidId { .. }), "{bad:?}");
    assert_eq!(env.calls_of("getApplication").await, before);

    // One token for the whole sequence.
    assert_eq!(env.calls_of("token").await, 1);
    assert_eq!(client.metrics().calls("token", "200"), 1);
}

#[tokio::test]
async fn paging_and_bulk_authorization_over_100() {
    let env = Emu::start().await;
    let client = env.client();
    let mut client_ids = Vec::new();
    for i in 0..101 {
        let app = client
            .create_application(&format!("bulk-{i:03}"), None)
            .await
            .unwrap();
        client_ids.push(app.client_id);
    }
    env.reset_calls().await;
    // 101 apps + the management client = 102: two pages of at most 100.
    let listed = client.list_applications().await.unwrap();
    assert_eq!(listed.len(), 102);
    let unique: std::collections::HashSet<_> = listed.iter().map(|a| &a.id).collect();
    assert_eq!(unique.len(), 102, "no duplicates across pages");
    assert_eq!(env.calls_of("getApplications").await, 2);
    assert_eq!(client.metrics().calls("getApplications", "200"), 2);

    let api = client
        .create_api("Bulk", "https://bulk.example.com")
        .await
        .unwrap();
    let changes: Vec<(&str, Authorization)> = client_ids
        .iter()
        .map(|id| (id.as_str(), Authorization::Authorize))
        .collect();
    let outcome = client
        .update_api_applications(&api, &changes)
        .await
        .unwrap();
    assert_eq!(outcome.applications_connected.len(), 101);
    assert_eq!(env.calls_of("updateAPIApplications").await, 2);
    assert_eq!(env.writes_of("updateAPIApplications").await, 2);
    let got = client.get_api(&api).await.unwrap();
    assert_eq!(got.authorized_client_ids().count(), 101);

    let revoke: Vec<(&str, Authorization)> = client_ids
        .iter()
        .map(|id| (id.as_str(), Authorization::Deauthorize))
        .collect();
    let outcome = client.update_api_applications(&api, &revoke).await.unwrap();
    assert_eq!(outcome.applications_disconnected.len(), 101);
    assert_eq!(env.calls_of("updateAPIApplications").await, 4);
    assert_eq!(
        client
            .get_api(&api)
            .await
            .unwrap()
            .authorized_client_ids()
            .count(),
        0
    );
    assert!(
        api_in_state(&env.state().await, &api)["applications"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn apis_scopes_authorization_and_app_scopes() {
    let env = Emu::start().await;
    let client = env.client();

    let api = client
        .create_api("Orders", "https://orders.example.com")
        .await
        .unwrap();
    let got = client.get_api(&api).await.unwrap();
    assert_eq!(
        (
            got.name.as_str(),
            got.audience.as_str(),
            got.is_management_api
        ),
        ("Orders", "https://orders.example.com", false)
    );
    assert!(got.scopes.is_empty());

    // Scopes: create, list, update description, delete.
    let read = client
        .create_api_scope(&api, "read:orders", "Read orders")
        .await
        .unwrap();
    let write = client
        .create_api_scope(&api, "write:orders", "Write orders")
        .await
        .unwrap();
    let scopes = client.list_api_scopes(&api).await.unwrap();
    assert_eq!(scopes.len(), 2);
    let r = scopes.iter().find(|s| s.id == read).unwrap();
    assert_eq!(
        (r.key.as_str(), r.description.as_deref()),
        ("read:orders", Some("Read orders"))
    );
    client
        .update_api_scope(&api, &read, "Read all orders")
        .await
        .unwrap();
    let scopes = client.list_api_scopes(&api).await.unwrap();
    assert_eq!(
        scopes
            .iter()
            .find(|s| s.id == read)
            .unwrap()
            .description
            .as_deref(),
        Some("Read all orders")
    );

    // List with and without expand=scopes.
    let plain = client.list_apis(false).await.unwrap();
    let ours = plain.iter().find(|a| a.id == api).unwrap();
    assert!(ours.scopes.is_empty(), "no scopes without expand");
    assert!(plain.iter().any(|a| a.is_management_api));
    let expanded = client.list_apis(true).await.unwrap();
    let ours = expanded.iter().find(|a| a.id == api).unwrap();
    let mut keys: Vec<_> = ours.scopes.iter().map(|s| s.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["read:orders", "write:orders"]);

    // Authorize an app, give it a scope, take it away, de-authorize.
    let app = client
        .create_application("orders-worker", None)
        .await
        .unwrap();
    let out = client
        .update_api_applications(&api, &[(&app.client_id, Authorization::Authorize)])
        .await
        .unwrap();
    assert_eq!(out.applications_connected, vec![app.client_id.clone()]);
    assert_eq!(
        client
            .get_api(&api)
            .await
            .unwrap()
            .authorized_client_ids()
            .collect::<Vec<_>>(),
        vec![app.client_id.as_str()]
    );
    client
        .add_api_application_scope(&api, &app.client_id, &read)
        .await
        .unwrap();
    let state = env.state().await;
    let grants = &api_in_state(&state, &api)["applications"];
    assert_eq!(
        grants,
        &json!([{"id": app.client_id, "scopes": ["read:orders"]}])
    );
    client
        .remove_api_application_scope(&api, &app.client_id, &read)
        .await
        .unwrap();
    let state = env.state().await;
    assert_eq!(
        api_in_state(&state, &api)["applications"],
        json!([{"id": app.client_id, "scopes": []}])
    );
    let out = client
        .update_api_applications(&api, &[(&app.client_id, Authorization::Deauthorize)])
        .await
        .unwrap();
    assert_eq!(out.applications_disconnected, vec![app.client_id.clone()]);
    assert_eq!(
        client
            .get_api(&api)
            .await
            .unwrap()
            .authorized_client_ids()
            .count(),
        0
    );
    // Per-app scope on an app that is not authorized: rejected, not "not found".
    let err = client
        .add_api_application_scope(&api, &app.client_id, &read)
        .await
        .unwrap_err();
    assert!(
        matches!(err, KindeError::Invalid { status: 400, .. }),
        "{err:?}"
    );

    client.delete_api_scope(&api, &write).await.unwrap();
    assert_eq!(client.list_api_scopes(&api).await.unwrap().len(), 1);
    let err = client.delete_api_scope(&api, &write).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");

    // A duplicate audience is a rejection.
    let dup = client
        .create_api("Orders again", "https://orders.example.com")
        .await
        .unwrap_err();
    assert!(
        matches!(dup, KindeError::Invalid { status: 400, .. }),
        "{dup:?}"
    );

    client.delete_api(&api).await.unwrap();
    assert!(client.get_api(&api).await.unwrap_err().is_not_found());
    assert!(client.delete_api(&api).await.unwrap_err().is_not_found());
    assert!(
        client
            .list_api_scopes(&api)
            .await
            .unwrap_err()
            .is_not_found()
    );

    assert_eq!(env.calls_of("token").await, 1);
    assert_metrics_match(&env, &client).await;
}

// ---- faults ----

#[tokio::test]
async fn server_errors_are_retried_for_idempotent_calls_only() {
    let env = Emu::start().await;
    let client = env.client();
    let app = client.create_application("target", None).await.unwrap();
    env.reset_calls().await;

    // Two 503s, then success: three calls.
    env.fault(json!({"operation": "getApplication", "status": 503, "times": 2}))
        .await;
    let got = client.get_application(&app.id).await.unwrap();
    assert_eq!(got.name, "target");
    assert_eq!(env.calls_of("getApplication").await, 3);
    assert_eq!(env.status_count("getApplication", "503").await, 2);
    assert_eq!(client.metrics().calls("getApplication", "503"), 2);
    assert_eq!(client.metrics().calls("getApplication", "200"), 1);

    // 5xx on every attempt: Retryable after max_attempts (4) calls.
    env.reset_calls().await;
    env.fault(json!({"operation": "deleteApplication", "status": 500, "times": 10}))
        .await;
    let err = client.delete_application(&app.id).await.unwrap_err();
    match &err {
        KindeError::Retryable {
            reason: Transient::Server(500),
            attempts: 4,
            ..
        } => {}
        other => panic!("expected Retryable after 4 attempts, got {other:?}"),
    }
    assert!(err.is_transient());
    assert_eq!(env.calls_of("deleteApplication").await, 4);
    assert_eq!(env.writes_of("deleteApplication").await, 0);
    env.control(Method::DELETE, "/faults", None).await;

    // 5xx on a create: not retried, the outcome is unknown.
    env.reset_calls().await;
    for op in ["createApplication", "addAPIs", "addAPIScope"] {
        env.fault(json!({"operation": op, "status": 500})).await;
    }
    let err = client.create_application("never", None).await.unwrap_err();
    assert!(
        matches!(
            err,
            KindeError::OutcomeUnknown {
                reason: Transient::Server(500),
                ..
            }
        ),
        "{err:?}"
    );
    let err = client
        .create_api("Never", "https://never.example.com")
        .await
        .unwrap_err();
    assert!(matches!(err, KindeError::OutcomeUnknown { .. }), "{err:?}");
    let api = client
        .create_api("Real", "https://real.example.com")
        .await
        .unwrap();
    let err = client.create_api_scope(&api, "k", "d").await.unwrap_err();
    assert!(matches!(err, KindeError::OutcomeUnknown { .. }), "{err:?}");
    assert_eq!(env.calls_of("createApplication").await, 1);
    assert_eq!(env.calls_of("addAPIs").await, 2);
    assert_eq!(env.calls_of("addAPIScope").await, 1);
    assert_eq!(env.writes_of("createApplication").await, 0);
}

#[tokio::test]
async fn lost_responses() {
    let env = Emu::start().await;
    let client = env.client();
    client.list_apis(false).await.unwrap(); // token fetched
    env.reset_calls().await;

    // A create whose response is lost: OutcomeUnknown, the app exists exactly once.
    env.fault(json!({"operation": "createApplication", "drop_response": true}))
        .await;
    let err = client
        .create_application("lost-app", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            KindeError::OutcomeUnknown {
                reason: Transient::Transport,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(env.calls_of("createApplication").await, 1);
    assert_eq!(env.status_count("createApplication", "dropped").await, 1);
    assert_eq!(apps_named(&env.state().await, "lost-app").len(), 1);
    assert_eq!(client.metrics().calls("createApplication", "transport"), 1);

    // Lost create reported by a gateway (write happened, 502 answered): same outcome.
    env.fault(json!({"operation": "addAPIs", "drop_response": true, "status": 502}))
        .await;
    let err = client
        .create_api("Gw", "https://gw.example.com")
        .await
        .unwrap_err();
    assert!(matches!(err, KindeError::OutcomeUnknown { .. }), "{err:?}");
    let apis: Vec<_> = client
        .list_apis(false)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.audience == "https://gw.example.com")
        .collect();
    assert_eq!(apis.len(), 1);

    // An idempotent write whose response is lost is simply retried.
    let app = apps_named(&env.state().await, "lost-app")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.fault(json!({"operation": "updateApplication", "drop_response": true}))
        .await;
    client.rename_application(&app, "found-app").await.unwrap();
    assert_eq!(env.calls_of("updateApplication").await, 2);
    assert_eq!(env.writes_of("updateApplication").await, 1);
    assert_eq!(apps_named(&env.state().await, "found-app").len(), 1);
}

#[tokio::test]
async fn rate_limit_reset_is_honoured() {
    let env = Emu::start().await;
    let client = env.client();
    client.list_apis(false).await.unwrap();
    env.reset_calls().await;

    // One 429 (RateLimit-Reset: 1): the client waits it out and retries once.
    env.fault(json!({"operation": "getAPIs", "status": 429}))
        .await;
    client.list_apis(false).await.unwrap();
    assert_eq!(env.status_count("getAPIs", "429").await, 1);
    assert_eq!(env.status_count("getAPIs", "200").await, 1);
    assert_eq!(client.metrics().calls("getAPIs", "429"), 1);
    assert!(client.metrics().rate_limit_wait() >= 0.9);

    // Retry-After works as well when Kinde sends it instead.
    env.fault(json!({"operation": "getAPIs", "status": 429, "headers": {"retry-after": "1"}}))
        .await;
    client.list_apis(false).await.unwrap();
    assert_eq!(env.status_count("getAPIs", "429").await, 2);

    // A create that was throttled is repeated: Kinde did not process it.
    env.fault(json!({"operation": "createApplication", "status": 429}))
        .await;
    client.create_application("throttled", None).await.unwrap();
    assert_eq!(env.calls_of("createApplication").await, 2);
    assert_eq!(apps_named(&env.state().await, "throttled").len(), 1);

    // A reset longer than the client will block for: returned at once, one call.
    env.reset_calls().await;
    env.fault(json!({"operation": "getAPIs", "status": 429, "headers": {"ratelimit-reset": "60"}}))
        .await;
    let err = client.list_apis(false).await.unwrap_err();
    match &err {
        KindeError::RateLimited { retry_after, .. } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(60)))
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
    assert_eq!(env.calls_of("getAPIs").await, 1);
}

#[tokio::test]
async fn rate_limit_window_is_not_hammered() {
    let env = Emu::start().await;
    let client = env.client();
    client.list_apis(false).await.unwrap();
    env.control(
        Method::PUT,
        "/rate-limit",
        Some(json!({"requests": 2, "per_seconds": 1})),
    )
    .await;
    env.reset_calls().await;
    // Five calls through a window of two per second: each exhaustion costs exactly one
    // 429, then the client waits for RateLimit-Reset (1 s) before trying again.
    for _ in 0..5 {
        client.list_apis(false).await.unwrap();
    }
    assert_eq!(env.status_count("getAPIs", "200").await, 5);
    assert_eq!(env.status_count("getAPIs", "429").await, 2);
    assert_eq!(env.calls_of("getAPIs").await, 7);
    assert_eq!(client.metrics().calls("getAPIs", "429"), 2);
}

/// A call waiting for the pace counts in `kinde_calls_waiting` while it waits, even when it
/// is the only one.
#[tokio::test]
async fn a_call_waiting_for_the_pace_is_counted_while_it_waits() {
    let env = Emu::start().await;
    let mut config = env.config();
    config.requests_per_second = 0.5;
    config.burst = 1;
    let client = env.client_with(config);
    client.list_apis(false).await.unwrap();
    // The token and the first call took the burst: the next call waits about two seconds.
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.list_apis(false).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.metrics().calls_waiting(), 1);
    waiting.await.unwrap().unwrap();
    assert_eq!(client.metrics().calls_waiting(), 0);
}

/// Kinde answers a refused token with 401; the emulator's earlier 403 `TOKEN_INVALID`
/// (its `token_invalid_status: 403` mode) is handled the same way.
#[tokio::test]
async fn expired_or_revoked_token_is_refreshed_once() {
    for status in [401, 403] {
        refreshed_once(status).await;
    }
}

async fn refreshed_once(token_invalid_status: u16) {
    let env = Emu::start_with(EmulatorConfig {
        token_invalid_status,
        ..EmulatorConfig::default()
    })
    .await;
    let client = env.client();
    client.list_apis(false).await.unwrap();
    assert_eq!(env.calls_of("token").await, 1);

    // Revoked: 401 (or 403) TOKEN_INVALID, one new token, success.
    env.control(Method::POST, "/tokens/revoke", None).await;
    env.reset_calls().await;
    client.list_apis(false).await.unwrap();
    assert_eq!(env.calls_of("token").await, 1);
    let refused = token_invalid_status.to_string();
    assert_eq!(env.status_count("getAPIs", &refused).await, 1);
    assert_eq!(env.status_count("getAPIs", "200").await, 1);
    assert_eq!(client.metrics().calls("token", "200"), 2);

    // Expired: tokens live 1 s; once a token minted after the client's has expired,
    // the client's has too. The next call gets a new token and succeeds.
    env.control(Method::PUT, "/config", Some(json!({"token_ttl_secs": 1})))
        .await;
    let short = env.client();
    short.list_apis(false).await.unwrap();
    let (_, mine) = env
        .app_token(
            kinde_emulator::DEFAULT_CLIENT_ID,
            kinde_emulator::DEFAULT_CLIENT_SECRET,
            &env.emu.management_audience(),
        )
        .await;
    let mine = mine["access_token"].as_str().unwrap().to_owned();
    loop {
        let r = env
            .http
            .get(env.url("/api/v1/apis"))
            .bearer_auth(&mine)
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == token_invalid_status {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.reset_calls().await;
    short.list_apis(false).await.unwrap();
    assert_eq!(env.calls_of("token").await, 1, "exactly one refresh");
    assert_eq!(env.status_count("getAPIs", "200").await, 1);
    assert_eq!(short.metrics().calls("token", "200"), 2);
}

#[tokio::test]
async fn http_401_gets_one_new_token() {
    let env = Emu::start().await;
    let client = env.client();
    client.list_apis(false).await.unwrap();
    env.reset_calls().await;
    // Kinde's docs mention 401 for expired tokens: one refresh, then success.
    env.fault(json!({"operation": "getAPIs", "status": 401}))
        .await;
    client.list_apis(false).await.unwrap();
    assert_eq!(env.calls_of("token").await, 1);
    assert_eq!(env.calls_of("getAPIs").await, 2);
    // Refused again with the new token: Unauthorized, and no second refresh.
    env.reset_calls().await;
    env.fault(json!({"operation": "getAPIs", "status": 401, "times": 5}))
        .await;
    let err = client.list_apis(false).await.unwrap_err();
    assert!(
        matches!(err, KindeError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(env.calls_of("token").await, 1);
    assert_eq!(env.calls_of("getAPIs").await, 2);
}

#[tokio::test]
async fn every_kinde_error_shape_is_understood() {
    let env = Emu::start().await;
    let client = env.client();
    client.list_apis(false).await.unwrap();
    // Not found as 404 (what real Kinde may send), as the object-shaped
    // not_found_response, and as a bare {code, message}.
    for (status, body) in [
        (
            404,
            r#"{"errors":[{"code":"APPLICATION_NOT_FOUND","message":"gone"}]}"#,
        ),
        (
            400,
            r#"{"errors":{"code":"APPLICATION_NOT_FOUND","message":"gone"}}"#,
        ),
        (400, r#"{"code":"APPLICATION_NOT_FOUND","message":"gone"}"#),
        (404, ""),
    ] {
        env.fault(json!({"operation": "getApplication", "status": status, "body": body}))
            .await;
        let err = client.get_application("app_x").await.unwrap_err();
        assert!(err.is_not_found(), "{status} {body}: {err:?}");
    }
    // A wrong URL (ROUTE_NOT_FOUND) says nothing about the object: a delete must not
    // count it as done.
    let app = client.create_application("still here", None).await.unwrap();
    env.fault(json!({"operation": "deleteApplication", "status": 404,
        "body": r#"{"errors":{"code":"ROUTE_NOT_FOUND","message":"no such route"}}"#}))
        .await;
    let err = client.delete_application(&app.id).await.unwrap_err();
    assert!(
        matches!(err, KindeError::Invalid { status: 404, .. }),
        "{err:?}"
    );
    assert!(!err.is_not_found());
    assert_eq!(apps_named(&env.state().await, "still here").len(), 1);

    env.fault(json!({"operation": "getApplication", "status": 400,
        "body": r#"{"errors":[{"code":"INVALID_THING","message":"nope"}]}"#}))
        .await;
    match client.get_application("app_x").await.unwrap_err() {
        KindeError::Invalid {
            status: 400, body, ..
        } => {
            assert_eq!(body.code.as_deref(), Some("INVALID_THING"));
            assert_eq!(body.message.as_deref(), Some("nope"));
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn refused_credentials_are_unauthorized() {
    let env = Emu::start().await;

    // Wrong secret: 401 from the token endpoint, not retried, no management call.
    let wrong =
        env.client_with(env.config_with(kinde_emulator::DEFAULT_CLIENT_ID, "not-the-secret"));
    let err = wrong.list_apis(false).await.unwrap_err();
    assert!(
        matches!(err, KindeError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(env.calls_of("token").await, 1);
    assert_eq!(env.calls_of("getAPIs").await, 0);

    // Unknown client.
    let unknown = env.client_with(env.config_with("no-such-client", "x"));
    let err = unknown.get_api("api_x").await.unwrap_err();
    assert!(matches!(err, KindeError::Unauthorized { .. }), "{err:?}");

    // Credentials revoked while the client holds a token: the token is refused, the
    // refresh is refused, the caller sees Unauthorized.
    let client = env.client();
    client.list_apis(false).await.unwrap();
    env.control(
        Method::POST,
        &format!(
            "/applications/{}/rotate-secret",
            kinde_emulator::DEFAULT_CLIENT_ID
        ),
        Some(json!({})),
    )
    .await;
    env.control(Method::POST, "/tokens/revoke", None).await;
    env.reset_calls().await;
    let err = client.list_apis(false).await.unwrap_err();
    assert!(
        matches!(err, KindeError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(env.calls_of("getAPIs").await, 1);
    assert_eq!(env.calls_of("token").await, 1);
}

#[tokio::test]
async fn missing_scope_is_forbidden_without_a_new_token() {
    let env = Emu::start().await;
    let all = Operation::required_scopes();
    let without: Vec<&str> = all
        .iter()
        .copied()
        .filter(|s| *s != "delete:apis")
        .collect();
    env.set_management_scopes(&without).await;
    let client = env.client();
    let api = client
        .create_api("Keep", "https://keep.example.com")
        .await
        .unwrap();
    let err = client.delete_api(&api).await.unwrap_err();
    match &err {
        KindeError::Forbidden { scope, .. } => assert_eq!(*scope, "delete:apis"),
        other => panic!("expected Forbidden, got {other:?}"),
    }
    assert!(err.to_string().contains("delete:apis"), "{err}");
    assert_eq!(env.calls_of("token").await, 1, "no extra token fetch");
    assert_eq!(env.calls_of("deleteAPI").await, 1, "not retried");
    assert_eq!(client.metrics().calls("deleteAPI", "403"), 1);
    // Everything else still works with the same token.
    client.get_api(&api).await.unwrap();
    assert_eq!(env.calls_of("token").await, 1);
}

#[tokio::test]
async fn malformed_success_bodies_are_decode_errors() {
    let env = Emu::start().await;
    let client = env.client();
    let app = client.create_application("decoded", None).await.unwrap();
    env.reset_calls().await;
    env.fault(json!({"operation": "getApplication", "status": 200, "body": "{\"application\": {\"id\": "}))
        .await;
    let err = client.get_application(&app.id).await.unwrap_err();
    assert!(matches!(err, KindeError::Decode { .. }), "{err:?}");
    assert_eq!(env.calls_of("getApplication").await, 1, "not retried");

    // Well-formed JSON without the object the contract promises.
    env.fault(json!({"operation": "addAPIs", "status": 200, "body": "{\"code\":\"OK\"}"}))
        .await;
    let err = client
        .create_api("Half", "https://half.example.com")
        .await
        .unwrap_err();
    assert!(matches!(err, KindeError::Decode { .. }), "{err:?}");

    // A malformed token response.
    let fresh = env.client();
    env.fault(json!({"operation": "token", "status": 200, "body": "[]"}))
        .await;
    let err = fresh.list_apis(false).await.unwrap_err();
    assert!(matches!(err, KindeError::Decode { .. }), "{err:?}");
}

#[tokio::test]
async fn slow_responses_time_out() {
    let env = Emu::start().await;
    let mut config = env.config();
    config.request_timeout = Duration::from_millis(1500);
    let client = env.client_with(config);
    client.list_apis(false).await.unwrap();
    env.reset_calls().await;

    // Idempotent: the first attempt times out, the retry succeeds.
    env.fault(json!({"operation": "getAPIs", "latency_ms": 4000}))
        .await;
    client.list_apis(false).await.unwrap();
    assert_eq!(env.calls_of("getAPIs").await, 2);
    assert_eq!(client.metrics().calls("getAPIs", "timeout"), 1);
    assert_eq!(client.metrics().calls("getAPIs", "200"), 2);

    // A create that times out: outcome unknown, not repeated.
    env.fault(json!({"operation": "createApplication", "latency_ms": 4000}))
        .await;
    let err = client.create_application("slow", None).await.unwrap_err();
    assert!(
        matches!(
            err,
            KindeError::OutcomeUnknown {
                reason: Transient::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(env.calls_of("createApplication").await, 1);
    assert_eq!(client.metrics().calls("createApplication", "timeout"), 1);
}

#[tokio::test]
async fn token_faults_are_retried() {
    let env = Emu::start().await;
    env.fault(json!({"operation": "token", "status": 503, "times": 2}))
        .await;
    let client = env.client();
    client.list_apis(false).await.unwrap();
    assert_eq!(env.calls_of("token").await, 3);
    assert_eq!(client.metrics().calls("token", "503"), 2);
    assert_eq!(client.metrics().calls("token", "200"), 1);

    let other = env.client();
    env.fault(json!({"operation": "token", "drop_response": true}))
        .await;
    other.list_apis(false).await.unwrap();
    assert_eq!(env.calls_of("token").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_token() {
    let env = Emu::start().await;
    let client = env.client();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.list_apis(false).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(env.calls_of("token").await, 1);
    assert_eq!(env.calls_of("getAPIs").await, 20);
    assert_eq!(client.metrics().calls("token", "200"), 1);
    assert_eq!(client.metrics().calls("getAPIs", "200"), 20);

    // All 20 find the shared token revoked: still one refresh between them.
    env.control(Method::POST, "/tokens/revoke", None).await;
    env.reset_calls().await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.list_apis(false).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(env.calls_of("token").await, 1);
    assert_eq!(env.status_count("getAPIs", "200").await, 20);
}

// ---- hostile answers (the client must neither panic nor trust them) ----

#[tokio::test]
async fn absurd_rate_limit_hints_are_clamped() {
    let env = Emu::start().await;
    let client = env.client();
    client.list_apis(false).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The five-minute ceiling the client puts on any hint.
    let ceiling = Duration::from_secs(300);
    for (reset, expected) in [
        // `Duration::from_secs_f64` panicked on these two.
        ("1e300".to_owned(), Some(ceiling)),
        (u64::MAX.to_string(), Some(ceiling)),
        // A unix time far ahead (here: milliseconds since the epoch).
        ((now * 1000).to_string(), Some(ceiling)),
        // The reset as a unix time 4 s ahead: read as "in about 4 s", longer than the
        // test client's 2 s max_backoff, so returned to the caller.
        ((now + 4).to_string(), None),
    ] {
        env.reset_calls().await;
        env.fault(
            json!({"operation": "getAPIs", "status": 429, "headers": {"ratelimit-reset": reset}}),
        )
        .await;
        let err = client.list_apis(false).await.unwrap_err();
        let after = err.retry_after();
        match expected {
            Some(d) => assert_eq!(after, Some(d), "reset {reset}: {err:?}"),
            None => assert!(
                after.is_some_and(|a| a > Duration::from_secs(2) && a <= Duration::from_secs(4)),
                "reset {reset}: {err:?}"
            ),
        }
        assert_eq!(
            env.calls_of("getAPIs").await,
            1,
            "reset {reset}: not retried"
        );
    }

    // `RateLimit-Reset: 0` is waited out for the floor (1 s), not retried at once.
    env.reset_calls().await;
    let fresh = env.client();
    fresh.list_apis(false).await.unwrap();
    env.fault(json!({"operation": "getAPIs", "status": 429, "headers": {"ratelimit-reset": "0"}}))
        .await;
    fresh.list_apis(false).await.unwrap();
    assert_eq!(env.status_count("getAPIs", "429").await, 1);
    assert!(
        fresh.metrics().rate_limit_wait() >= 0.9,
        "waited {}s after a 0 reset",
        fresh.metrics().rate_limit_wait()
    );
}

#[tokio::test]
async fn absurd_token_lifetime_does_not_panic() {
    let env = Emu::start().await;
    // A token "valid" for u64::MAX seconds: `Instant + Duration` overflowed and panicked.
    // Its value is not a real token, so the management API refuses it and the client
    // fetches a real one.
    env.fault(json!({"operation": "token", "status": 200,
        "body": format!(r#"{{"access_token":"bogus","token_type":"bearer","expires_in":{}}}"#, u64::MAX)}))
        .await;
    let client = env.client();
    client.list_apis(false).await.unwrap();
    assert_eq!(env.calls_of("token").await, 2);
    assert_eq!(env.status_count("getAPIs", "200").await, 1);
}

#[tokio::test]
async fn the_token_is_taken_after_the_rate_limit_wait() {
    let env = Emu::start().await;
    env.control(Method::PUT, "/config", Some(json!({"token_ttl_secs": 2})))
        .await;
    let mut config = env.config();
    config.max_backoff = Duration::from_secs(5);
    let client = env.client_with(config);
    client.list_apis(false).await.unwrap();
    env.reset_calls().await;
    // A 429 asking for 3 s: longer than the 2 s token lives. The retry must go out with
    // a token fetched after the wait, not the one held before it.
    env.fault(json!({"operation": "getAPIs", "status": 429, "headers": {"ratelimit-reset": "3"}}))
        .await;
    client.list_apis(false).await.unwrap();
    let calls = env.calls().await;
    println!(
        "getAPIs statuses after the pause: {}",
        calls["getAPIs"]["statuses"]
    );
    assert_eq!(env.status_count("getAPIs", "429").await, 1);
    assert_eq!(
        env.status_count("getAPIs", "403").await,
        0,
        "an expired token was sent"
    );
    assert_eq!(env.status_count("getAPIs", "200").await, 1);
    assert_eq!(env.calls_of("token").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_does_not_release_every_waiter_at_once() {
    let env = Emu::start().await;
    // The production defaults (10/s, burst 10, 4 in flight) against a Kinde that allows
    // 10 calls per 2 s: the client is faster than Kinde and must learn from the 429s.
    let mut config = env.config();
    config.requests_per_second = 10.0;
    config.burst = 10;
    config.max_in_flight = 4;
    config.max_attempts = 5;
    config.max_backoff = Duration::from_secs(5);
    let client = env.client_with(config);
    client.list_apis(false).await.unwrap();
    const WINDOW: u64 = 10;
    env.control(
        Method::PUT,
        "/rate-limit",
        Some(json!({"requests": WINDOW, "per_seconds": 2})),
    )
    .await;
    env.reset_calls().await;
    const CALLERS: u64 = 20;
    const CALLS_EACH: u64 = 2;
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move {
                for _ in 0..CALLS_EACH {
                    c.list_apis(false).await?;
                }
                Ok::<_, KindeError>(())
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            println!("caller failed: {e}");
            failed += 1;
        }
    }
    let ok = env.status_count("getAPIs", "200").await;
    let throttled = env.status_count("getAPIs", "429").await;
    println!(
        "{CALLERS} callers x {CALLS_EACH} calls: {ok} x 200, {throttled} x 429, {failed} callers failed"
    );
    assert_eq!(failed, 0);
    assert_eq!(ok, CALLERS * CALLS_EACH);
    // Paced after each pause, every window costs about one 429 (the call that finds it
    // spent); released all at once, every waiter beyond the window draws one.
    let windows = (CALLERS * CALLS_EACH).div_ceil(WINDOW);
    assert!(
        throttled <= windows + 1,
        "{throttled} 429s for {windows} windows"
    );
}

/// With the emulator answering "no such object" as 404 (its `not_found_status: 404`
/// mode), every not-found path is still `NotFound`, and a wrong route is not.
#[tokio::test]
async fn not_found_as_404_is_not_found() {
    let env = Emu::start_with(EmulatorConfig {
        not_found_status: 404,
        ..EmulatorConfig::default()
    })
    .await;
    let client = env.client();
    let app = client.create_application("gone", None).await.unwrap();
    let api = client
        .create_api("Gone", "https://gone.example.com")
        .await
        .unwrap();
    let scope = client.create_api_scope(&api, "read:x", "").await.unwrap();
    client.delete_api_scope(&api, &scope).await.unwrap();
    client.delete_application(&app.id).await.unwrap();
    client.delete_api(&api).await.unwrap();
    for err in [
        client.get_application(&app.id).await.unwrap_err(),
        client.delete_application(&app.id).await.unwrap_err(),
        client.get_api(&api).await.unwrap_err(),
        client.delete_api(&api).await.unwrap_err(),
        client.delete_api_scope(&api, &scope).await.unwrap_err(),
    ] {
        assert!(err.is_not_found(), "{err:?}");
    }
    assert_eq!(env.status_count("getApplication", "404").await, 1);
    assert_eq!(env.status_count("deleteAPI", "404").await, 1);
}

/// A closed write fence (leadership lapsed, e.g. after the process was paused) stops every
/// write before it is sent; reads still go out.
#[tokio::test]
async fn a_closed_write_fence_sends_no_write() {
    let env = Emu::start().await;
    let fence = std::sync::Arc::new(kinde_m2m_operator::kinde::WriteFence::closed());
    let mut config = env.config();
    config.write_fence = fence.clone();
    let client = env.client_with(config);
    client.list_apis(false).await.unwrap();
    let err = client.create_application("fenced", None).await.unwrap_err();
    assert!(matches!(err, KindeError::Fenced { .. }), "{err:?}");
    assert_eq!(err.kind().as_str(), "NotLeader");
    assert_eq!(
        env.calls_of("createApplication").await,
        0,
        "the write was sent"
    );
    // A won term opens it.
    fence.allow_until(tokio::time::Instant::now() + Duration::from_secs(60));
    client.create_application("allowed", None).await.unwrap();
    assert_eq!(env.calls_of("createApplication").await, 1);
}

/// `updateApplicationTokens` sets the lifetime of the access tokens the application gets
/// from then on (`expires_in` and `exp - iat`); an unknown application is not found.
#[tokio::test]
async fn access_token_lifetime_applies_to_new_tokens() {
    let env = Emu::start().await;
    let client = env.client();
    let api = client
        .create_api("Lifetimes", "https://lifetimes.example.com")
        .await
        .unwrap();
    let app = client
        .create_application("short-lived", None)
        .await
        .unwrap();
    client
        .update_api_applications(&api, &[(&app.client_id, Authorization::Authorize)])
        .await
        .unwrap();
    let lifetime = |secs: i64| {
        let env = &env;
        let app = &app;
        async move {
            let (status, body) = env
                .app_token(
                    &app.client_id,
                    app.client_secret.expose_secret(),
                    "https://lifetimes.example.com",
                )
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["expires_in"], secs, "{body}");
            let claims = env
                .verify_jwt(
                    body["access_token"].as_str().unwrap(),
                    "https://lifetimes.example.com",
                )
                .await;
            assert_eq!(
                claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
                secs
            );
        }
    };
    lifetime(3600).await;
    client
        .update_application_tokens(&app.id, 600)
        .await
        .unwrap();
    lifetime(600).await;
    assert_eq!(env.writes_of("updateApplicationTokens").await, 1);
    // The same value again changes nothing.
    client
        .update_application_tokens(&app.id, 600)
        .await
        .unwrap();
    assert_eq!(env.writes_of("updateApplicationTokens").await, 1);
    let err = client
        .update_application_tokens("app_missing", 600)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    // Without the scope: Forbidden, naming it.
    let scopes: Vec<&str> = Operation::required_scopes()
        .into_iter()
        .filter(|s| *s != "update:application_tokens")
        .collect();
    env.set_management_scopes(&scopes).await;
    env.control(Method::POST, "/tokens/revoke", None).await;
    let err = client
        .update_application_tokens(&app.id, 900)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("update:application_tokens"),
        "{err}"
    );
}

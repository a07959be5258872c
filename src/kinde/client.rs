//! The HTTP client: authentication, throttling, retries, error classification, metrics.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode, header::HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use url::Url;

use super::error::{KindeError, KindeErrorBody, Transient};
use super::metrics::KindeMetrics;
use super::ratelimit::Limiter;
use super::token::{Lease, TokenCache};
use super::types::*;
use super::{Operation, Result};

/// Kinde caps bulk writes at 100 objects per request, and some list endpoints at 100 a page.
pub const MAX_BATCH: usize = 100;
/// Guard against a server that keeps handing out next tokens.
const MAX_PAGES: usize = 1000;

/// How to reach Kinde and how hard to push it.
#[derive(Clone, Debug)]
pub struct KindeConfig {
    /// `https://<business>.kinde.com` or a custom domain; the management API's audience is
    /// `<domain>/api` and the token endpoint `<domain>/oauth2/token`.
    pub domain: Url,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Process-wide request rate; `<= 0` disables it.
    pub requests_per_second: f64,
    pub burst: u32,
    /// Process-wide cap on calls in flight.
    pub max_in_flight: usize,
    /// Attempts per call for retryable failures (1 = no retry).
    pub max_attempts: u32,
    /// First backoff; doubles per attempt, with jitter.
    pub base_backoff: Duration,
    /// Longest single wait; a 429 asking for longer is returned to the caller instead.
    pub max_backoff: Duration,
}

impl KindeConfig {
    /// Defaults that suit a Kinde business shared with other tools.
    pub fn new(domain: Url, client_id: String, client_secret: SecretString) -> Self {
        Self {
            domain,
            client_id,
            client_secret,
            request_timeout: Duration::from_secs(15),
            requests_per_second: 10.0,
            burst: 10,
            max_in_flight: 4,
            max_attempts: 5,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The Kinde Management API client. Cheap to clone; clones share token, limiter and metrics.
#[derive(Clone, Debug)]
pub struct KindeClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    config: KindeConfig,
    token: TokenCache,
    limiter: Limiter,
    metrics: KindeMetrics,
}

/// One request, described without its credentials.
struct Call {
    op: Operation,
    method: Method,
    url: Url,
    body: Option<Vec<u8>>,
}

/// What came back from one attempt.
enum Attempt {
    Done(Vec<u8>),
    /// Retry after the given delay (or the default backoff).
    Retry {
        error: KindeError,
        after: Option<Duration>,
    },
    /// The token was refused: fetch a new one and try again once.
    RefreshToken {
        error: KindeError,
    },
    Fail(KindeError),
}

impl KindeClient {
    /// Builds a client; `metrics` should be registered with the process registry.
    pub fn new(config: KindeConfig, metrics: KindeMetrics) -> Result<Self> {
        if config.domain.cannot_be_a_base() || !matches!(config.domain.scheme(), "http" | "https") {
            return Err(KindeError::Config(format!(
                "domain must be an http(s) URL, got `{}`",
                config.domain
            )));
        }
        if config.client_id.trim().is_empty() {
            return Err(KindeError::Config(
                "the management client ID is empty".into(),
            ));
        }
        if config.client_secret.expose_secret().is_empty() {
            return Err(KindeError::Config(
                "the management client secret is empty".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("kinde-m2m-operator/", env!("CARGO_PKG_VERSION")))
            // A redirect would turn a POST create into a GET and hide where calls go.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| KindeError::Config(format!("HTTP client: {e}")))?;
        let limiter = Limiter::new(
            config.requests_per_second,
            config.burst,
            config.max_in_flight,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                config,
                token: TokenCache::default(),
                limiter,
                metrics,
            }),
        })
    }

    /// The Kinde domain (no trailing slash), as written into credentials Secrets.
    pub fn domain(&self) -> String {
        self.inner
            .config
            .domain
            .as_str()
            .trim_end_matches('/')
            .to_owned()
    }

    /// The audience of the Kinde Management API itself: `<domain>/api`.
    pub fn management_audience(&self) -> String {
        format!("{}/api", self.domain())
    }

    /// The client ID of the operator's own management application (never adoptable).
    pub fn management_client_id(&self) -> &str {
        &self.inner.config.client_id
    }

    /// The OAuth2 token endpoint for client-credentials: `<domain>/oauth2/token`.
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.domain())
    }

    pub fn metrics(&self) -> &KindeMetrics {
        &self.inner.metrics
    }

    // ---- applications ----

    /// Creates an M2M application (org-scoped when `org_code` is set). Never retried after
    /// an unknown outcome: see [`KindeError::OutcomeUnknown`].
    pub async fn create_application(
        &self,
        name: &str,
        org_code: Option<&str>,
    ) -> Result<CreatedApplication> {
        let body = CreateApplicationRequest {
            name,
            app_type: ApplicationType::M2m,
            org_code,
        };
        let op = Operation::CreateApplication;
        let resp: CreateApplicationResponse = self
            .json(
                op,
                Method::POST,
                &["api", "v1", "applications"],
                &[],
                Some(&body),
            )
            .await?;
        resp.application.ok_or_else(|| missing(op, "application"))
    }

    /// Reads an application, including its current client secret.
    pub async fn get_application(&self, id: &str) -> Result<Application> {
        let op = Operation::GetApplication;
        let resp: GetApplicationResponse = self
            .json(
                op,
                Method::GET,
                &["api", "v1", "applications", id],
                &[],
                None::<&()>,
            )
            .await?;
        resp.application.ok_or_else(|| missing(op, "application"))
    }

    /// Every application of the business, following `next_token` through all pages.
    pub async fn list_applications(&self) -> Result<Vec<ApplicationSummary>> {
        let op = Operation::ListApplications;
        self.paged(
            op,
            &["api", "v1", "applications"],
            &[],
            |r: ListApplicationsResponse| (r.applications, r.next_token),
        )
        .await
    }

    /// Renames an application.
    pub async fn rename_application(&self, id: &str, name: &str) -> Result<()> {
        let body = UpdateApplicationRequest { name };
        self.send(
            Operation::UpdateApplication,
            Method::PATCH,
            &["api", "v1", "applications", id],
            &[],
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// Deletes an application. A `NotFound` error means it was already gone.
    pub async fn delete_application(&self, id: &str) -> Result<()> {
        self.send(
            Operation::DeleteApplication,
            Method::DELETE,
            &["api", "v1", "applications", id],
            &[],
            None::<&()>,
        )
        .await
        .map(drop)
    }

    // ---- APIs ----

    /// Registers an API; returns its id. Never retried after an unknown outcome.
    pub async fn create_api(&self, name: &str, audience: &str) -> Result<String> {
        let op = Operation::CreateApi;
        let resp: CreateApiResponse = self
            .json(
                op,
                Method::POST,
                &["api", "v1", "apis"],
                &[],
                Some(&CreateApiRequest { name, audience }),
            )
            .await?;
        resp.api.map(|a| a.id).ok_or_else(|| missing(op, "api.id"))
    }

    /// Reads an API with its scopes and which applications are authorized.
    pub async fn get_api(&self, id: &str) -> Result<Api> {
        let op = Operation::GetApi;
        let resp: GetApiResponse = self
            .json(
                op,
                Method::GET,
                &["api", "v1", "apis", id],
                &[],
                None::<&()>,
            )
            .await?;
        resp.api.ok_or_else(|| missing(op, "api"))
    }

    /// Every API of the business (with scope ids when `with_scopes`), all pages.
    pub async fn list_apis(&self, with_scopes: bool) -> Result<Vec<ApiSummary>> {
        let query: &[(&str, &str)] = if with_scopes {
            &[("expand", "scopes")]
        } else {
            &[]
        };
        self.paged(
            Operation::ListApis,
            &["api", "v1", "apis"],
            query,
            |r: ListApisResponse| (r.apis, r.next_token),
        )
        .await
    }

    /// Deletes an API. A `NotFound` error means it was already gone.
    pub async fn delete_api(&self, id: &str) -> Result<()> {
        self.send(
            Operation::DeleteApi,
            Method::DELETE,
            &["api", "v1", "apis", id],
            &[],
            None::<&()>,
        )
        .await
        .map(drop)
    }

    // ---- API scopes ----

    pub async fn list_api_scopes(&self, api_id: &str) -> Result<Vec<ApiScope>> {
        let resp: ListApiScopesResponse = self
            .json(
                Operation::ListApiScopes,
                Method::GET,
                &["api", "v1", "apis", api_id, "scopes"],
                &[],
                None::<&()>,
            )
            .await?;
        Ok(resp.scopes)
    }

    /// Adds a scope to an API; returns its id. Never retried after an unknown outcome.
    pub async fn create_api_scope(
        &self,
        api_id: &str,
        key: &str,
        description: &str,
    ) -> Result<String> {
        let op = Operation::CreateApiScope;
        let body = CreateApiScopeRequest { key, description };
        let resp: CreateApiScopeResponse = self
            .json(
                op,
                Method::POST,
                &["api", "v1", "apis", api_id, "scopes"],
                &[],
                Some(&body),
            )
            .await?;
        resp.scope
            .map(|s| s.id)
            .ok_or_else(|| missing(op, "scope.id"))
    }

    pub async fn update_api_scope(
        &self,
        api_id: &str,
        scope_id: &str,
        description: &str,
    ) -> Result<()> {
        let body = UpdateApiScopeRequest { description };
        let path = ["api", "v1", "apis", api_id, "scopes", scope_id];
        self.send(
            Operation::UpdateApiScope,
            Method::PATCH,
            &path,
            &[],
            Some(&body),
        )
        .await
        .map(drop)
    }

    pub async fn delete_api_scope(&self, api_id: &str, scope_id: &str) -> Result<()> {
        let path = ["api", "v1", "apis", api_id, "scopes", scope_id];
        self.send(
            Operation::DeleteApiScope,
            Method::DELETE,
            &path,
            &[],
            None::<&()>,
        )
        .await
        .map(drop)
    }

    // ---- authorization ----

    /// Authorizes or de-authorizes applications (by client ID) for an API, in batches of
    /// at most [`MAX_BATCH`]; returns what Kinde reports connected and disconnected.
    pub async fn update_api_applications(
        &self,
        api_id: &str,
        changes: &[(&str, Authorization)],
    ) -> Result<AuthorizeOutcome> {
        let mut outcome = AuthorizeOutcome::default();
        for chunk in changes.chunks(MAX_BATCH) {
            let body = AuthorizeRequest {
                applications: chunk
                    .iter()
                    .map(|(id, change)| AuthorizeEntry {
                        id,
                        operation: (*change == Authorization::Deauthorize).then_some("delete"),
                    })
                    .collect(),
            };
            let path = ["api", "v1", "apis", api_id, "applications"];
            let part: AuthorizeOutcome = self
                .json(
                    Operation::UpdateApiApplications,
                    Method::PATCH,
                    &path,
                    &[],
                    Some(&body),
                )
                .await?;
            outcome
                .applications_connected
                .extend(part.applications_connected);
            outcome
                .applications_disconnected
                .extend(part.applications_disconnected);
        }
        Ok(outcome)
    }

    /// Grants an authorized application one scope of an API.
    pub async fn add_api_application_scope(
        &self,
        api_id: &str,
        application_id: &str,
        scope_id: &str,
    ) -> Result<()> {
        let op = Operation::AddApiApplicationScope;
        self.application_scope(op, Method::POST, api_id, application_id, scope_id)
            .await
    }

    /// Takes one scope of an API away from an application.
    pub async fn remove_api_application_scope(
        &self,
        api_id: &str,
        application_id: &str,
        scope_id: &str,
    ) -> Result<()> {
        let op = Operation::DeleteApiApplicationScope;
        self.application_scope(op, Method::DELETE, api_id, application_id, scope_id)
            .await
    }

    async fn application_scope(
        &self,
        op: Operation,
        method: Method,
        api_id: &str,
        application_id: &str,
        scope_id: &str,
    ) -> Result<()> {
        let path = [
            "api",
            "v1",
            "apis",
            api_id,
            "applications",
            application_id,
            "scopes",
            scope_id,
        ];
        self.send(op, method, &path, &[], None::<&()>)
            .await
            .map(drop)
    }

    // ---- plumbing ----

    fn url(&self, op: Operation, segments: &[&str], query: &[(&str, &str)]) -> Result<Url> {
        if let Some(bad) = segments.iter().find(|s| !is_plain_id(s)) {
            return Err(KindeError::InvalidId {
                operation: op.name(),
                id: (*bad).to_owned(),
            });
        }
        let mut url = self.inner.config.domain.clone();
        {
            // Segments are percent-encoded one by one: an id can never add a path level.
            let mut path = url
                .path_segments_mut()
                .map_err(|()| KindeError::Config("domain cannot carry a path".into()))?;
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    async fn json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        op: Operation,
        method: Method,
        path: &[&str],
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<T> {
        let bytes = self.send(op, method, path, query, body).await?;
        decode(op, &bytes)
    }

    async fn send<B: serde::Serialize>(
        &self,
        op: Operation,
        method: Method,
        path: &[&str],
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<Vec<u8>> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| KindeError::Decode {
                operation: op.name(),
                detail: format!("request body: {e}"),
            })?;
        let call = Call {
            op,
            method,
            url: self.url(op, path, query)?,
            body,
        };
        self.execute(&call).await
    }

    async fn paged<R, T>(
        &self,
        op: Operation,
        path: &[&str],
        query: &[(&str, &str)],
        split: impl Fn(R) -> (Vec<T>, Option<String>),
    ) -> Result<Vec<T>>
    where
        R: DeserializeOwned,
    {
        let page_size = MAX_BATCH.to_string();
        let mut items = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut q: Vec<(&str, &str)> = query.to_vec();
            q.push(("page_size", &page_size));
            if let Some(token) = next.as_deref() {
                q.push(("next_token", token));
            }
            let page: R = self.json(op, Method::GET, path, &q, None::<&()>).await?;
            let (mut batch, token) = split(page);
            let progressed = !batch.is_empty();
            items.append(&mut batch);
            match token.filter(|t| !t.is_empty()) {
                Some(t) if progressed && next.as_deref() != Some(t.as_str()) => next = Some(t),
                _ => return Ok(items),
            }
        }
        Err(KindeError::Decode {
            operation: op.name(),
            detail: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// Runs one call with authentication, throttling and the retry policy.
    async fn execute(&self, call: &Call) -> Result<Vec<u8>> {
        let cfg = &self.inner.config;
        let mut attempts = 0;
        let mut refreshed = false;
        loop {
            attempts += 1;
            let lease = self.token().await?;
            let outcome = self.attempt(call, &lease).await;
            let (error, after) = match outcome {
                Attempt::Done(body) => return Ok(body),
                Attempt::Fail(e) => return Err(e),
                Attempt::RefreshToken { error } => {
                    if refreshed {
                        return Err(error);
                    }
                    refreshed = true;
                    self.inner.token.invalidate(lease.generation).await;
                    attempts -= 1;
                    continue;
                }
                Attempt::Retry { error, after } => (error, after),
            };
            if attempts >= cfg.max_attempts {
                return Err(match error {
                    KindeError::Retryable {
                        operation, reason, ..
                    } => KindeError::Retryable {
                        operation,
                        reason,
                        attempts,
                    },
                    other => other,
                });
            }
            let delay =
                after.unwrap_or_else(|| backoff(cfg.base_backoff, cfg.max_backoff, attempts));
            if delay > cfg.max_backoff {
                // Kinde asks for a longer pause than we block a reconcile for.
                return Err(error);
            }
            tracing::debug!(operation = call.op.name(), attempt = attempts, delay_ms = delay.as_millis() as u64, error = %error, "retrying Kinde call");
            if after.is_some() {
                self.inner.limiter.pause_until(Instant::now() + delay);
            } else {
                tokio::time::sleep(delay).await;
            }
        }
    }

    async fn attempt(&self, call: &Call, lease: &Lease) -> Attempt {
        let op = call.op;
        let (_permit, waited) = self.inner.limiter.acquire().await;
        self.inner.metrics.waited(waited);
        let mut req = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            .bearer_auth(lease.token.expose_secret());
        if let Some(body) = &call.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let started = Instant::now();
        let result = match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                resp.bytes().await.map(|b| (status, headers, b.to_vec()))
            }
            Err(e) => Err(e),
        };
        let elapsed = started.elapsed();
        match result {
            Ok((status, headers, body)) => {
                self.inner
                    .metrics
                    .observe(op.name(), status.as_u16().to_string(), elapsed);
                tracing::debug!(
                    operation = op.name(),
                    status = status.as_u16(),
                    elapsed_ms = elapsed.as_millis() as u64,
                    "Kinde call"
                );
                classify(op, status, &headers, &body)
            }
            Err(e) => {
                let (label, reason) = if e.is_timeout() {
                    ("timeout", Transient::Timeout)
                } else {
                    ("transport", Transient::Transport)
                };
                self.inner
                    .metrics
                    .observe(op.name(), label.to_owned(), elapsed);
                tracing::debug!(
                    operation = op.name(),
                    error = label,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "Kinde call failed"
                );
                // A refused connection never reached Kinde; anything later may have.
                if op.retry_safe() || e.is_connect() {
                    Attempt::Retry {
                        error: KindeError::Retryable {
                            operation: op.name(),
                            reason,
                            attempts: 1,
                        },
                        after: None,
                    }
                } else {
                    Attempt::Fail(KindeError::OutcomeUnknown {
                        operation: op.name(),
                        reason,
                    })
                }
            }
        }
    }

    /// The management token from the cache, fetched when missing or about to expire.
    async fn token(&self) -> Result<Lease> {
        self.inner.token.get(|| self.fetch_token()).await
    }

    async fn fetch_token(&self) -> Result<(SecretString, Duration)> {
        let cfg = &self.inner.config;
        let op = Operation::Token;
        let audience = self.management_audience();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", cfg.client_id.as_str()),
            ("client_secret", cfg.client_secret.expose_secret()),
            ("audience", audience.as_str()),
        ];
        let url = Url::parse(&self.token_url())
            .map_err(|e| KindeError::Config(format!("token URL: {e}")))?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (_permit, waited) = self.inner.limiter.acquire().await;
            self.inner.metrics.waited(waited);
            let started = Instant::now();
            let sent = self.inner.http.post(url.clone()).form(&form).send().await;
            let result = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    resp.bytes().await.map(|b| (status, headers, b.to_vec()))
                }
                Err(e) => Err(e),
            };
            let elapsed = started.elapsed();
            let (error, after) = match result {
                Ok((status, headers, body)) => {
                    self.inner
                        .metrics
                        .observe(op.name(), status.as_u16().to_string(), elapsed);
                    if status.is_success() {
                        let token: TokenResponse = decode(op, &body)?;
                        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(3600).max(1));
                        tracing::debug!(
                            expires_in_s = lifetime.as_secs(),
                            "fetched Kinde management token"
                        );
                        return Ok((token.access_token, lifetime));
                    }
                    let parsed = KindeErrorBody::parse(&body);
                    match status {
                        StatusCode::TOO_MANY_REQUESTS => (
                            KindeError::RateLimited {
                                operation: op.name(),
                                retry_after: reset_after(&headers),
                            },
                            reset_after(&headers),
                        ),
                        s if s.is_server_error() => (
                            KindeError::Retryable {
                                operation: op.name(),
                                reason: Transient::Server(s.as_u16()),
                                attempts,
                            },
                            None,
                        ),
                        s => {
                            return Err(KindeError::Unauthorized {
                                operation: op.name(),
                                status: s.as_u16(),
                                body: parsed,
                            });
                        }
                    }
                }
                Err(e) => {
                    let (label, reason) = if e.is_timeout() {
                        ("timeout", Transient::Timeout)
                    } else {
                        ("transport", Transient::Transport)
                    };
                    self.inner
                        .metrics
                        .observe(op.name(), label.to_owned(), elapsed);
                    (
                        KindeError::Retryable {
                            operation: op.name(),
                            reason,
                            attempts,
                        },
                        None,
                    )
                }
            };
            let delay =
                after.unwrap_or_else(|| backoff(cfg.base_backoff, cfg.max_backoff, attempts));
            if attempts >= cfg.max_attempts || delay > cfg.max_backoff {
                return Err(error);
            }
            if after.is_some() {
                // Kinde's reset applies to every caller, not just this one.
                self.inner.limiter.pause_until(Instant::now() + delay);
            } else {
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Maps a response to success, retry, token refresh or a classified error.
fn classify(op: Operation, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Attempt {
    if status.is_success() {
        return Attempt::Done(body.to_vec());
    }
    let parsed = KindeErrorBody::parse(body);
    let name = op.name();
    match status {
        StatusCode::TOO_MANY_REQUESTS => {
            // Kinde does not process throttled requests, so even creates may be repeated.
            let after = reset_after(headers);
            Attempt::Retry {
                error: KindeError::RateLimited {
                    operation: name,
                    retry_after: after,
                },
                after,
            }
        }
        StatusCode::UNAUTHORIZED => Attempt::RefreshToken {
            error: KindeError::Unauthorized {
                operation: name,
                status: 401,
                body: parsed,
            },
        },
        StatusCode::FORBIDDEN if is_token_problem(&parsed) => Attempt::RefreshToken {
            error: KindeError::Unauthorized {
                operation: name,
                status: 403,
                body: parsed,
            },
        },
        StatusCode::FORBIDDEN => Attempt::Fail(KindeError::Forbidden {
            operation: name,
            scope: op.scope(),
            body: parsed,
        }),
        StatusCode::NOT_FOUND if !parsed.is_route_not_found() => {
            Attempt::Fail(KindeError::NotFound {
                operation: name,
                body: parsed,
            })
        }
        StatusCode::BAD_REQUEST if parsed.is_not_found_code() => {
            Attempt::Fail(KindeError::NotFound {
                operation: name,
                body: parsed,
            })
        }
        s if s.is_server_error() => {
            let reason = Transient::Server(s.as_u16());
            if op.retry_safe() {
                Attempt::Retry {
                    error: KindeError::Retryable {
                        operation: name,
                        reason,
                        attempts: 1,
                    },
                    after: None,
                }
            } else {
                // The server may have created the object before failing.
                Attempt::Fail(KindeError::OutcomeUnknown {
                    operation: name,
                    reason,
                })
            }
        }
        s => Attempt::Fail(KindeError::Invalid {
            operation: name,
            status: s.as_u16(),
            body: parsed,
        }),
    }
}

/// Kinde answers 403 both for a bad token and for a missing scope; the code tells them
/// apart. Only token problems are worth a new token (each one is billable).
fn is_token_problem(body: &KindeErrorBody) -> bool {
    body.code.as_deref().is_some_and(|c| {
        let c = c.to_ascii_uppercase();
        c.contains("TOKEN") || c == "UNAUTHORIZED" || c == "INVALID_CREDENTIALS"
    })
}

/// The wait a 429 asks for: `RateLimit-Reset` (Kinde's header) or `Retry-After`, seconds.
fn reset_after(headers: &HeaderMap) -> Option<Duration> {
    ["ratelimit-reset", "retry-after"].iter().find_map(|name| {
        let value = headers.get(*name)?.to_str().ok()?.trim();
        let secs: f64 = value.parse().ok()?;
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
    })
}

/// Exponential backoff with jitter: a random wait in [d/2, d], d = base * 2^(attempt-1).
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let d = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    let half = d / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Kinde ids are letters, digits, `_` and `-`; anything else (a `/`, `..`, `?`) would
/// change which endpoint a request hits, so it is refused before any request is made.
fn is_plain_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn decode<T: DeserializeOwned>(op: Operation, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| KindeError::Decode {
        operation: op.name(),
        // serde_json's message names the position and expectation, never the content.
        detail: format!("invalid JSON: {e}"),
    })
}

fn missing(op: Operation, field: &str) -> KindeError {
    KindeError::Decode {
        operation: op.name(),
        detail: format!("response lacks `{field}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn reset_header_wins_then_retry_after() {
        assert_eq!(
            reset_after(&headers(&[("ratelimit-reset", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            reset_after(&headers(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            reset_after(&headers(&[(
                "retry-after",
                "Wed, 21 Oct 2015 07:28:00 GMT"
            )])),
            None
        );
        assert_eq!(reset_after(&headers(&[])), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for attempt in 1..10 {
            let d = backoff(base, max, attempt);
            let full = base.saturating_mul(1 << (attempt - 1)).min(max);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
    }

    #[test]
    fn classification() {
        let h = HeaderMap::new();
        let not_found = br#"{"errors":[{"code":"APPLICATION_NOT_FOUND","message":"x"}]}"#;
        assert!(matches!(
            classify(
                Operation::GetApplication,
                StatusCode::BAD_REQUEST,
                &h,
                not_found
            ),
            Attempt::Fail(KindeError::NotFound { .. })
        ));
        assert!(matches!(
            classify(Operation::GetApplication, StatusCode::NOT_FOUND, &h, b""),
            Attempt::Fail(KindeError::NotFound { .. })
        ));
        let route = br#"{"errors":{"code":"ROUTE_NOT_FOUND","message":"x"}}"#;
        assert!(matches!(
            classify(
                Operation::DeleteApplication,
                StatusCode::NOT_FOUND,
                &h,
                route
            ),
            Attempt::Fail(KindeError::Invalid { status: 404, .. })
        ));
        assert!(matches!(
            classify(
                Operation::CreateApplication,
                StatusCode::INTERNAL_SERVER_ERROR,
                &h,
                b""
            ),
            Attempt::Fail(KindeError::OutcomeUnknown { .. })
        ));
        assert!(matches!(
            classify(Operation::GetApplication, StatusCode::BAD_GATEWAY, &h, b""),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify(
                Operation::CreateApplication,
                StatusCode::TOO_MANY_REQUESTS,
                &h,
                b""
            ),
            Attempt::Retry { .. }
        ));
        let token = br#"{"errors":[{"code":"TOKEN_INVALID","message":"x"}]}"#;
        assert!(matches!(
            classify(Operation::GetApi, StatusCode::FORBIDDEN, &h, token),
            Attempt::RefreshToken { .. }
        ));
        let scope = br#"{"errors":[{"code":"FORBIDDEN","message":"x"}]}"#;
        match classify(Operation::DeleteApi, StatusCode::FORBIDDEN, &h, scope) {
            Attempt::Fail(e @ KindeError::Forbidden { .. }) => {
                assert!(e.to_string().contains("delete:apis"))
            }
            _ => panic!("expected Forbidden"),
        }
        assert!(matches!(
            classify(
                Operation::CreateApi,
                StatusCode::BAD_REQUEST,
                &h,
                br#"{"errors":[{"code":"AUDIENCE_EXISTS"}]}"#
            ),
            Attempt::Fail(KindeError::Invalid { status: 400, .. })
        ));
    }

    #[test]
    fn config_is_checked_and_debug_redacts_the_secret() {
        let url = Url::parse("https://biz.kinde.com").expect("url");
        let cfg = KindeConfig::new(
            url.clone(),
            "cid".into(),
            SecretString::from("s3cr3t-value"),
        );
        assert!(!format!("{cfg:?}").contains("s3cr3t-value"));
        let client = KindeClient::new(cfg, KindeMetrics::default()).expect("client");
        assert!(!format!("{client:?}").contains("s3cr3t-value"));
        assert_eq!(client.management_audience(), "https://biz.kinde.com/api");
        assert_eq!(client.token_url(), "https://biz.kinde.com/oauth2/token");
        let empty = KindeConfig::new(url, "cid".into(), SecretString::from(""));
        assert!(matches!(
            KindeClient::new(empty, KindeMetrics::default()),
            Err(KindeError::Config(_))
        ));
    }

    #[test]
    fn ids_cannot_escape_their_path_segment() {
        let url = Url::parse("https://biz.kinde.com/").expect("url");
        let client = KindeClient::new(
            KindeConfig::new(url, "c".into(), SecretString::from("s")),
            KindeMetrics::default(),
        )
        .expect("client");
        for bad in ["..", ".", "", "../apis", "a/b", "x?y=1", "a%2F"] {
            let err = client.url(
                Operation::GetApplication,
                &["api", "v1", "applications", bad],
                &[],
            );
            assert!(
                matches!(err, Err(KindeError::InvalidId { .. })),
                "{bad:?} accepted"
            );
        }
        let ok = client.url(
            Operation::GetApi,
            &["api", "v1", "apis", "api_scope_0193-ab"],
            &[("a", "b c")],
        );
        assert_eq!(
            ok.expect("url").as_str(),
            "https://biz.kinde.com/api/v1/apis/api_scope_0193-ab?a=b+c"
        );
    }
}

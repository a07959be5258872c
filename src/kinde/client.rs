//! The HTTP client: authentication, throttling, retries, error classification, metrics.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode, header::HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio::sync::SemaphorePermit;
use tokio::time::Instant;
use url::Url;

use super::error::{KindeError, KindeErrorBody, Transient};
use super::fence::WriteFence;
use super::metrics::KindeMetrics;
use super::ratelimit::Limiter;
use super::token::{self, Lease, TokenCache};
use super::types::*;
use super::{Operation, Result};

/// Kinde caps bulk writes at 100 objects per request, and some list endpoints at 100 a page.
const MAX_BATCH: usize = 100;
/// Guard against a server that keeps handing out next tokens.
const MAX_PAGES: usize = 1000;
/// Most items a listing collects: [`MAX_PAGES`] full pages. A server that ignores
/// `page_size` could otherwise fill memory with up to [`MAX_PAGES`] bodies of the body cap.
const MAX_ITEMS: usize = MAX_PAGES * MAX_BATCH;

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
    /// Writes are sent only while this allows them (leader election's term).
    pub write_fence: Arc<WriteFence>,
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
            burst: 1,
            max_in_flight: 4,
            max_attempts: 5,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            write_fence: Arc::new(WriteFence::open()),
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
    /// The management credentials in use: the config's, until a connection's Secret
    /// changes them ([`KindeClient::replace_credentials`]).
    credentials: std::sync::RwLock<Credentials>,
    token: TokenCache,
    limiter: Limiter,
    metrics: KindeMetrics,
}

/// A management application's client ID and secret. Not `Debug`-printable beyond the ID.
#[derive(Clone)]
struct Credentials {
    client_id: String,
    client_secret: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

fn check_credentials(client_id: &str, client_secret: &SecretString) -> Result<()> {
    if client_id.trim().is_empty() {
        return Err(KindeError::Config(
            "the management client ID is empty".into(),
        ));
    }
    if client_secret.expose_secret().is_empty() {
        return Err(KindeError::Config(
            "the management client secret is empty".into(),
        ));
    }
    Ok(())
}

/// One request; management calls get the token added per attempt. Deliberately not
/// `Debug`: the token request's body holds the client secret.
struct Call {
    op: Operation,
    method: Method,
    url: Url,
    body: Option<Body>,
    /// Sent with the management token (every call but the token request itself).
    bearer: bool,
}

struct Body {
    content_type: &'static str,
    bytes: Vec<u8>,
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
        check_credentials(&config.client_id, &config.client_secret)?;
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
        let credentials = std::sync::RwLock::new(Credentials {
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
        });
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                config,
                credentials,
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
    pub fn management_client_id(&self) -> String {
        self.credentials().client_id
    }

    fn credentials(&self) -> Credentials {
        self.inner
            .credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Uses these management credentials from now on (a connection's Secret changed): the
    /// cached token is dropped, so the next call mints one with them. `false` when they
    /// are the ones in use already.
    pub async fn replace_credentials(
        &self,
        client_id: String,
        client_secret: SecretString,
    ) -> Result<bool> {
        check_credentials(&client_id, &client_secret)?;
        {
            let mut current = self
                .inner
                .credentials
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if current.client_id == client_id
                && current.client_secret.expose_secret() == client_secret.expose_secret()
            {
                return Ok(false);
            }
            *current = Credentials {
                client_id,
                client_secret,
            };
        }
        self.inner.token.expire().await;
        Ok(true)
    }

    /// Drops the cached management token: the next call mints one (after the management
    /// application's scopes were found lacking, so a fix in the dashboard is seen).
    pub async fn expire_token(&self) {
        self.inner.token.expire().await;
    }

    /// The pace the limiter keeps to now (below the configured rate after a 429), `None`
    /// when unlimited.
    pub fn current_pace(&self) -> Option<f64> {
        self.inner.limiter.pace()
    }

    /// The OAuth2 token endpoint for client-credentials: `<domain>/oauth2/token`.
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.domain())
    }

    /// The configuration the client was built with (its credentials may have been
    /// replaced since).
    pub fn config(&self) -> &KindeConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &KindeMetrics {
        &self.inner.metrics
    }

    // ---- diagnostics (`kinde-m2m-operator check`) ----

    /// The scopes the management token carries (its `scp` claim, else its `scope`), read
    /// from the token's payload without verifying it: Kinde just handed it out, and the
    /// answer is only shown, never trusted for a decision. `None` when the token is not a
    /// JWT with either claim.
    pub async fn management_token_scopes(&self) -> Result<Option<Vec<String>>> {
        let lease = self.token().await?;
        Ok(token_scopes(lease.token.expose_secret()))
    }

    /// One page of one application: proves `read:applications` without listing them all.
    pub async fn probe_list_applications(&self) -> Result<()> {
        let _: ListApplicationsResponse = self
            .json(
                Operation::ListApplications,
                Method::GET,
                &["api", "v1", "applications"],
                &[("page_size", "1")],
                None::<&()>,
            )
            .await?;
        Ok(())
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

    /// The configured request rate (the pace's ceiling), `None` when unlimited.
    pub fn configured_rate(&self) -> Option<f64> {
        let rate = self.inner.config.requests_per_second;
        (rate.is_finite() && rate > 0.0).then_some(rate)
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

    /// Sets the lifetime (seconds) of the access tokens Kinde issues for an application.
    pub async fn update_application_tokens(
        &self,
        id: &str,
        access_token_lifetime: u64,
    ) -> Result<()> {
        let body = UpdateApplicationTokensRequest {
            access_token_lifetime,
        };
        self.send(
            Operation::UpdateApplicationTokens,
            Method::PATCH,
            &["api", "v1", "applications", id, "tokens"],
            &[],
            Some(&body),
        )
        .await
        .map(drop)
    }

    // ---- application properties (the owner key) ----

    /// The value of the application property `key` on application `id` (`None` when the
    /// application has none).
    pub async fn application_property(&self, id: &str, key: &str) -> Result<Option<String>> {
        let resp: PropertyValuesResponse = self
            .json(
                Operation::GetApplicationProperties,
                Method::GET,
                &["api", "v1", "applications", id, "properties"],
                &[],
                None::<&()>,
            )
            .await?;
        Ok(resp
            .properties
            .into_iter()
            .find(|p| p.key == key)
            .and_then(|p| p.value)
            .filter(|v| !v.is_empty()))
    }

    /// Sets the application property `key` of application `id` to `value`.
    pub async fn set_application_property(&self, id: &str, key: &str, value: &str) -> Result<()> {
        self.send(
            Operation::UpdateApplicationProperty,
            Method::PUT,
            &["api", "v1", "applications", id, "properties", key],
            &[],
            Some(&UpdatePropertyRequest { value }),
        )
        .await
        .map(drop)
    }

    /// Makes sure the business has the application property `key` (private, single line),
    /// in the category `category` (created if missing). Finds before it creates; a create
    /// that lost its response and is repeated is refused as a duplicate key, which counts
    /// as done.
    pub async fn ensure_application_property(
        &self,
        key: &str,
        name: &str,
        description: &str,
        category: &str,
    ) -> Result<()> {
        let existing: PropertiesResponse = self
            .json(
                Operation::ListProperties,
                Method::GET,
                &["api", "v1", "properties"],
                &[("context", "app"), ("page_size", "100")],
                None::<&()>,
            )
            .await?;
        if existing
            .properties
            .iter()
            .any(|p| p.key.as_deref() == Some(key))
        {
            return Ok(());
        }
        let categories: CategoriesResponse = self
            .json(
                Operation::ListPropertyCategories,
                Method::GET,
                &["api", "v1", "property_categories"],
                &[("context", "app"), ("page_size", "100")],
                None::<&()>,
            )
            .await?;
        let category_id = match categories
            .categories
            .into_iter()
            .find(|c| c.name.as_deref() == Some(category))
        {
            Some(c) => c.id,
            None => {
                let created: CreateCategoryResponse = self
                    .json(
                        Operation::CreatePropertyCategory,
                        Method::POST,
                        &["api", "v1", "property_categories"],
                        &[],
                        Some(&serde_json::json!({"name": category, "context": "app"})),
                    )
                    .await?;
                created.category.id
            }
        };
        let body = serde_json::json!({
            "name": name, "description": description, "key": key,
            "type": "single_line_text", "context": "app", "is_private": true,
            "category_id": category_id,
        });
        match self
            .json::<_, serde::de::IgnoredAny>(
                Operation::CreateProperty,
                Method::POST,
                &["api", "v1", "properties"],
                &[],
                Some(&body),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(KindeError::Invalid { body, .. })
                if body.code.as_deref() == Some("PROPERTY_KEY_ALREADY_EXISTS") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
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
            })?
            .map(|bytes| Body {
                content_type: "application/json",
                bytes,
            });
        let call = Call {
            op,
            method,
            url: self.url(op, path, query)?,
            body,
            bearer: true,
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
            if items.len() > MAX_ITEMS {
                return Err(KindeError::Decode {
                    operation: op.name(),
                    detail: format!("more than {MAX_ITEMS} items"),
                });
            }
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

    /// The retry engine: runs one call (a management call or the token request) with
    /// throttling, authentication and the retry policy. The only place that retries, waits
    /// out a 429 or refreshes a refused token.
    async fn execute(&self, call: &Call) -> Result<Vec<u8>> {
        let cfg = &self.inner.config;
        let mut attempts: u32 = 0;
        let mut refreshed = false;
        loop {
            attempts = attempts.saturating_add(1);
            let (outcome, generation) = self.attempt(call).await;
            let (error, after) = match outcome {
                Attempt::Done(body) => {
                    self.inner.limiter.succeeded();
                    self.publish_pace();
                    return Ok(body);
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::RefreshToken { error } => {
                    let Some(generation) = generation.filter(|_| !refreshed) else {
                        return Err(error);
                    };
                    refreshed = true;
                    self.inner.token.invalidate(generation).await;
                    attempts = attempts.saturating_sub(1);
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
            if matches!(error, KindeError::RateLimited { .. }) {
                self.inner.limiter.throttled(Instant::now());
                self.publish_pace();
            }
            match after.and_then(|d| Instant::now().checked_add(d)) {
                // Kinde's reset applies to every caller, not just this one.
                Some(until) => self.inner.limiter.pause_until(until),
                None => tokio::time::sleep(delay).await,
            }
        }
    }

    fn publish_pace(&self) {
        let limiter = &self.inner.limiter;
        self.inner
            .metrics
            .limiter(limiter.pace(), limiter.waiting());
    }

    /// A limiter slot, then (for management calls) the token. The token is taken after
    /// the wait: a caller parked behind a long 429 pause would otherwise send a token that
    /// expired while it waited.
    async fn slot(&self, call: &Call) -> Result<(SemaphorePermit<'_>, Option<Lease>)> {
        let limiter = &self.inner.limiter;
        // Counted as waiting from here (the limiter counts it only once inside `acquire`);
        // the publication after the wait corrects it.
        self.inner
            .metrics
            .limiter(limiter.pace(), limiter.waiting().saturating_add(1));
        let (permit, waited) = limiter.acquire().await;
        self.inner.metrics.waited(waited);
        self.publish_pace();
        if !call.bearer {
            return Ok((permit, None));
        }
        if let Some(lease) = self.inner.token.current() {
            return Ok((permit, Some(lease)));
        }
        // The token request needs a slot of its own: holding this one while it runs would
        // deadlock with `max_in_flight = 1`.
        drop(permit);
        let fetched = self.token().await?;
        let (permit, waited) = limiter.acquire().await;
        self.inner.metrics.waited(waited);
        Ok((permit, Some(self.inner.token.current().unwrap_or(fetched))))
    }

    /// One attempt; also returns the generation of the token it sent, for a refresh.
    async fn attempt(&self, call: &Call) -> (Attempt, Option<u64>) {
        let op = call.op;
        let (permit, lease) = match self.slot(call).await {
            Ok(slot) => slot,
            // The token request has been through this engine already: nothing to retry.
            Err(e) => return (Attempt::Fail(e), None),
        };
        // A management write (the token request changes nothing in Kinde) is sent only
        // while the leadership term lasts; lapsed (e.g. the process was paused): not sent.
        let is_write = call.bearer && call.method != Method::GET;
        if is_write && !self.inner.config.write_fence.allows(Instant::now()) {
            drop(permit);
            return (
                Attempt::Fail(KindeError::Fenced {
                    operation: op.name(),
                }),
                None,
            );
        }
        let mut req = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone());
        if let Some(lease) = &lease {
            req = req.bearer_auth(lease.token.expose_secret());
        }
        if let Some(body) = &call.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, body.content_type)
                .body(body.bytes.clone());
        }
        let started = Instant::now();
        let result = match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                read_capped(resp, body_cap(status))
                    .await
                    .map(|b| (status, headers, b))
            }
            Err(e) => Err(e),
        };
        drop(permit);
        let elapsed = started.elapsed();
        let generation = lease.map(|l| l.generation);
        let outcome = match result {
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
                match body {
                    Some(body) => classify(op, status, &headers, &body),
                    // An error body is only read for Kinde's code and message: the status
                    // decides on its own.
                    None if !status.is_success() => classify(op, status, &headers, b""),
                    None => Attempt::Fail(KindeError::Decode {
                        operation: op.name(),
                        detail: format!(
                            "the response body exceeds the {} KiB limit",
                            MAX_BODY_BYTES / 1024
                        ),
                    }),
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
        };
        (outcome, generation)
    }

    /// The management token from the cache, fetched when missing or about to expire.
    async fn token(&self) -> Result<Lease> {
        self.inner.token.get(|| self.fetch_token()).await
    }

    /// Mints a management token (client credentials) through the retry engine.
    async fn fetch_token(&self) -> Result<(SecretString, Duration)> {
        let credentials = self.credentials();
        let token = self
            .client_credentials(
                &credentials.client_id,
                &credentials.client_secret,
                &self.management_audience(),
            )
            .await?;
        let lifetime = token::lifetime(token.expires_in);
        tracing::debug!(
            expires_in_s = lifetime.as_secs(),
            "fetched Kinde management token"
        );
        Ok((token.access_token, lifetime))
    }

    /// The scopes a token of application `client_id` for `audience` carries: what Kinde
    /// has granted the application on that API (Kinde offers no other way to read them).
    /// `None` when the token names none. Mints one token, which is then dropped.
    pub async fn application_scopes_for(
        &self,
        client_id: &str,
        client_secret: &SecretString,
        audience: &str,
    ) -> Result<Option<Vec<String>>> {
        let token = self
            .client_credentials(client_id, client_secret, audience)
            .await?;
        Ok(token_scopes(token.access_token.expose_secret()))
    }

    /// One client-credentials token request through the retry engine.
    async fn client_credentials(
        &self,
        client_id: &str,
        client_secret: &SecretString,
        audience: &str,
    ) -> Result<TokenResponse> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", client_id)
            .append_pair("client_secret", client_secret.expose_secret())
            .append_pair("audience", audience)
            .finish();
        let call = Call {
            op: Operation::Token,
            method: Method::POST,
            url: Url::parse(&self.token_url())
                .map_err(|e| KindeError::Config(format!("token URL: {e}")))?,
            body: Some(Body {
                content_type: "application/x-www-form-urlencoded",
                bytes: form.into_bytes(),
            }),
            bearer: false,
        };
        // Boxed: the engine asks for the token, and the token request runs in the engine.
        let body = Box::pin(self.execute(&call)).await?;
        decode(Operation::Token, &body)
    }
}

/// The `scp` (list) or `scope` (space-separated) claim of a JWT's payload.
fn token_scopes(jwt: &str) -> Option<Vec<String>> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    if let Some(list) = claims.get("scp").and_then(|v| v.as_array()) {
        return Some(
            list.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
        );
    }
    claims
        .get("scope")
        .and_then(|v| v.as_str())
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
}

/// Maps a response to success, retry, token refresh or a classified error.
fn classify(op: Operation, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Attempt {
    if status.is_success() {
        return Attempt::Done(body.to_vec());
    }
    let parsed = KindeErrorBody::parse(body);
    let name = op.name();
    if op == Operation::Token
        && status != StatusCode::TOO_MANY_REQUESTS
        && !status.is_server_error()
    {
        // The token endpoint refusing is about the credentials, not a token to refresh.
        return Attempt::Fail(KindeError::Unauthorized {
            operation: name,
            status: status.as_u16(),
            body: parsed,
        });
    }
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

/// Largest success body read, in bytes. The biggest legitimate answers (a page of 100
/// applications, an API listing its authorized applications) are tens of KiB; 4 MiB is far
/// above that and, times `max_in_flight`, far below the chart's 256 MiB memory limit.
/// Anything bigger is a misbehaving server: stop reading instead of buffering it.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Error bodies are only parsed for Kinde's short `code` and `message`.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// How much of a response with `status` is read.
fn body_cap(status: StatusCode) -> usize {
    if status.is_success() {
        MAX_BODY_BYTES
    } else {
        MAX_ERROR_BODY_BYTES
    }
}

/// Reads the body chunk by chunk; `None` (without reading further) once it is, or its
/// `Content-Length` announces it to be, longer than `cap`.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> reqwest::Result<Option<Vec<u8>>> {
    if resp
        .content_length()
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > cap))
    {
        return Ok(None);
    }
    let mut body = CappedBody::new(cap);
    while let Some(chunk) = resp.chunk().await? {
        if !body.push(&chunk) {
            return Ok(None);
        }
    }
    Ok(Some(body.into_inner()))
}

/// A body that refuses to grow past its cap.
struct CappedBody {
    bytes: Vec<u8>,
    cap: usize,
}

impl CappedBody {
    fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            cap,
        }
    }

    /// Appends `chunk`; false (and nothing appended) when that would pass the cap.
    fn push(&mut self, chunk: &[u8]) -> bool {
        match self.bytes.len().checked_add(chunk.len()) {
            Some(n) if n <= self.cap => {
                self.bytes.extend_from_slice(chunk);
                true
            }
            _ => false,
        }
    }

    fn into_inner(self) -> Vec<u8> {
        self.bytes
    }
}

/// Shortest wait a 429 is given: `RateLimit-Reset: 0` (or a reset in the past) would
/// otherwise retry at once, a hot loop against a server that keeps saying 429.
const MIN_HINT: Duration = Duration::from_secs(1);
/// Longest wait a 429 hint is believed for: Kinde's windows are seconds to a minute. A
/// longer hint is returned to the controller as `retry_after` and used to requeue the
/// object, so an absurd one (a misread header) would park it until someone edits it.
const MAX_HINT: Duration = Duration::from_secs(300);
/// Hints at or above this many seconds are read as unix timestamps (some servers send
/// the reset time, not the delay): as a delay it would be 31 years, as a time it is
/// September 2001, so no plausible delay is mistaken for a time or the other way round.
const EPOCH_HINT: f64 = 1e9;

/// The wait a 429 asks for: `RateLimit-Reset` (Kinde's header) or `Retry-After`, seconds.
fn reset_after(headers: &HeaderMap) -> Option<Duration> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    reset_after_at(headers, now)
}

/// [`reset_after`] with the current unix time given, for tests.
fn reset_after_at(headers: &HeaderMap, now_unix: Duration) -> Option<Duration> {
    ["ratelimit-reset", "retry-after"].iter().find_map(|name| {
        let value = headers.get(*name)?.to_str().ok()?.trim();
        hint_delay(value.parse().ok()?, now_unix)
    })
}

/// A hint in seconds as a wait, clamped to [`MIN_HINT`]..=[`MAX_HINT`]: a delay, or from
/// [`EPOCH_HINT`] on, a unix time (a past one waits [`MIN_HINT`], a far one [`MAX_HINT`]).
/// `None` for what is not a time at all (negative, NaN, infinite).
fn hint_delay(secs: f64, now_unix: Duration) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    let delay = if secs >= EPOCH_HINT {
        secs - now_unix.as_secs_f64()
    } else {
        secs
    };
    Some(if delay <= MIN_HINT.as_secs_f64() {
        MIN_HINT
    } else {
        Duration::try_from_secs_f64(delay).map_or(MAX_HINT, |d| d.min(MAX_HINT))
    })
}

/// Exponential backoff with jitter: a random wait in [d/2, d], d = base * 2^(attempt-1).
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let d = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    let half = d / 2;
    let jitter = Duration::try_from_secs_f64(half.as_secs_f64() * fastrand::f64()).unwrap_or(half);
    half.saturating_add(jitter.min(half))
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
    fn token_scopes_are_read_from_scp_or_scope() {
        use base64::Engine as _;
        let jwt = |claims: serde_json::Value| {
            let enc = |v: &serde_json::Value| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
            };
            format!(
                "{}.{}.sig",
                enc(&serde_json::json!({"alg": "RS256"})),
                enc(&claims)
            )
        };
        assert_eq!(
            token_scopes(&jwt(
                serde_json::json!({"scp": ["read:apis", "create:apis"]})
            )),
            Some(vec!["read:apis".to_owned(), "create:apis".to_owned()])
        );
        assert_eq!(
            token_scopes(&jwt(serde_json::json!({"scope": "read:apis  create:apis"}))),
            Some(vec!["read:apis".to_owned(), "create:apis".to_owned()])
        );
        assert_eq!(token_scopes(&jwt(serde_json::json!({"sub": "x"}))), None);
        assert_eq!(token_scopes("opaque-token"), None);
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

    const NOW: Duration = Duration::from_secs(1_767_225_000);

    #[test]
    fn hints_are_clamped_and_never_panic() {
        let at = |v: &str| reset_after_at(&headers(&[("ratelimit-reset", v)]), NOW);
        // `Duration::from_secs_f64` panicked on these.
        assert_eq!(at("1e300"), Some(MAX_HINT));
        assert_eq!(at("18446744073709551615"), Some(MAX_HINT));
        assert_eq!(at("999999999"), Some(MAX_HINT), "31 years is not a delay");
        // 0 and fractions below the floor would retry at once.
        assert_eq!(at("0"), Some(MIN_HINT));
        assert_eq!(at("0.2"), Some(MIN_HINT));
        assert_eq!(at("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(at("300"), Some(MAX_HINT));
        // Not a time at all: no hint, the default backoff applies.
        assert_eq!(at("-5"), None);
        assert_eq!(at("NaN"), None);
        assert_eq!(at("inf"), None);
        assert_eq!(at("soon"), None);
        // A garbage RateLimit-Reset does not hide a usable Retry-After.
        assert_eq!(
            reset_after_at(
                &headers(&[("ratelimit-reset", "-1"), ("retry-after", "4")]),
                NOW
            ),
            Some(Duration::from_secs(4))
        );
    }

    #[test]
    fn epoch_hints_are_read_as_times() {
        let at = |v: u64| hint_delay(v as f64, NOW);
        // The reset in 30 s, sent as a unix time.
        assert_eq!(at(NOW.as_secs() + 30), Some(Duration::from_secs(30)));
        // In the past (clock skew): wait the floor, not a hot loop.
        assert_eq!(at(NOW.as_secs() - 600), Some(MIN_HINT));
        assert_eq!(at(NOW.as_secs()), Some(MIN_HINT));
        // A time far ahead (or milliseconds since the epoch): the ceiling.
        assert_eq!(at(NOW.as_secs() + 86_400), Some(MAX_HINT));
        assert_eq!(at(NOW.as_secs() * 1000), Some(MAX_HINT));
    }

    #[test]
    fn backoff_never_panics_on_extreme_config() {
        for attempt in [0, 1, 17, u32::MAX] {
            let d = backoff(Duration::MAX, Duration::MAX, attempt);
            assert!(d >= Duration::MAX / 2);
            assert_eq!(
                backoff(Duration::ZERO, Duration::MAX, attempt),
                Duration::ZERO
            );
        }
    }

    #[test]
    fn capped_body_stops_at_the_cap() {
        let mut body = CappedBody::new(10);
        assert!(body.push(b"12345"));
        assert!(body.push(b"67890"));
        assert!(!body.push(b"x"), "one byte over");
        assert_eq!(body.into_inner(), b"1234567890");
        let mut body = CappedBody::new(usize::MAX);
        assert!(body.push(b"a"));
        assert!(body_cap(StatusCode::OK) > body_cap(StatusCode::BAD_GATEWAY));
    }

    #[test]
    fn the_token_endpoint_refusing_is_unauthorized_not_a_refresh() {
        let h = HeaderMap::new();
        let oauth = br#"{"error":"invalid_client","error_description":"no"}"#;
        for status in [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::BAD_REQUEST,
        ] {
            assert!(matches!(
                classify(Operation::Token, status, &h, oauth),
                Attempt::Fail(KindeError::Unauthorized { .. })
            ));
        }
        assert!(matches!(
            classify(Operation::Token, StatusCode::TOO_MANY_REQUESTS, &h, b""),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify(Operation::Token, StatusCode::SERVICE_UNAVAILABLE, &h, b""),
            Attempt::Retry { .. }
        ));
    }
}

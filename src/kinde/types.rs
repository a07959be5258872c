//! Request and response bodies of the Kinde Management API, as in `management-api.yaml`.
//!
//! Responses are parsed leniently (every field defaults) because Kinde omits fields freely;
//! the client checks the fields it relies on and reports a decode error naming them.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Kinde's application types (`type` on create).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplicationType {
    Reg,
    Spa,
    M2m,
    Device,
}

/// Body of `POST /api/v1/applications`.
#[derive(Clone, Debug, Serialize)]
pub struct CreateApplicationRequest<'a> {
    pub name: &'a str,
    #[serde(rename = "type")]
    pub app_type: ApplicationType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_code: Option<&'a str>,
}

/// What a create returns: the only moment besides `get` that the secret is visible.
#[derive(Debug, Deserialize)]
pub struct CreatedApplication {
    pub id: String,
    pub client_id: String,
    pub client_secret: SecretString,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CreateApplicationResponse {
    pub application: Option<CreatedApplication>,
}

/// `GET /api/v1/applications/{id}`: the fields the operator uses.
#[derive(Debug, Deserialize)]
pub struct Application {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub app_type: Option<String>,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    /// Not in the spec's `get_application_response`: read if Kinde sends it, so drift of
    /// the lifetime is seen where it can be.
    #[serde(default)]
    pub access_token_lifetime: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct GetApplicationResponse {
    pub application: Option<Application>,
}

/// One entry of `GET /api/v1/applications` (no credentials in lists).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ApplicationSummary {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub app_type: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListApplicationsResponse {
    #[serde(default)]
    pub applications: Vec<ApplicationSummary>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// Body of `PATCH /api/v1/applications/{id}`: only what matters for an M2M app.
#[derive(Debug, Serialize)]
pub(crate) struct UpdateApplicationRequest<'a> {
    pub name: &'a str,
}

/// Body of `PATCH /api/v1/applications/{id}/tokens`: only the access-token lifetime (the
/// other lifetimes concern user sign-in, which M2M applications have none of).
#[derive(Debug, Serialize)]
pub(crate) struct UpdateApplicationTokensRequest {
    pub access_token_lifetime: u64,
}

/// Body of `PUT /api/v1/applications/{id}/properties/{key}`.
#[derive(Debug, Serialize)]
pub(crate) struct UpdatePropertyRequest<'a> {
    pub value: &'a str,
}

/// One entry of `getApplicationPropertyValues`.
#[derive(Debug, Deserialize)]
pub(crate) struct PropertyValue {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// `getApplicationPropertyValues`.
#[derive(Debug, Deserialize)]
pub(crate) struct PropertyValuesResponse {
    #[serde(default)]
    pub properties: Vec<PropertyValue>,
}

/// One entry of `GetProperties` or `GetCategories`: what the operator looks for.
#[derive(Debug, Deserialize)]
pub(crate) struct Named {
    pub id: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// `GetProperties`.
#[derive(Debug, Deserialize)]
pub(crate) struct PropertiesResponse {
    #[serde(default)]
    pub properties: Vec<Named>,
}

/// `GetCategories`.
#[derive(Debug, Deserialize)]
pub(crate) struct CategoriesResponse {
    #[serde(default)]
    pub categories: Vec<Named>,
}

/// `CreateCategory` / `CreateProperty`: the new object's id.
#[derive(Debug, Deserialize)]
pub(crate) struct CreatedId {
    pub id: String,
}

/// `CreateCategory`.
#[derive(Debug, Deserialize)]
pub(crate) struct CreateCategoryResponse {
    pub category: CreatedId,
}

/// Body of `POST /api/v1/apis`.
#[derive(Debug, Serialize)]
pub(crate) struct CreateApiRequest<'a> {
    pub name: &'a str,
    pub audience: &'a str,
}

#[derive(Debug, Deserialize)]
pub struct IdOnly {
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CreateApiResponse {
    pub api: Option<IdOnly>,
}

/// A scope as APIs list it (`{id, key}`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ScopeRef {
    pub id: String,
    pub key: String,
}

/// An API in `GET /api/v1/apis` (scopes present with `expand=scopes`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ApiSummary {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub audience: String,
    #[serde(default)]
    pub is_management_api: bool,
    #[serde(default)]
    pub scopes: Vec<ScopeRef>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListApisResponse {
    #[serde(default)]
    pub apis: Vec<ApiSummary>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// An application as `GET /api/v1/apis/{id}` lists it; `is_active` = authorized.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ApiApplication {
    /// The application's client ID.
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub app_type: Option<String>,
    #[serde(default)]
    pub is_active: Option<bool>,
}

/// `GET /api/v1/apis/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Api {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub audience: String,
    #[serde(default)]
    pub is_management_api: bool,
    #[serde(default)]
    pub scopes: Vec<ScopeRef>,
    #[serde(default)]
    pub applications: Vec<ApiApplication>,
}

impl Api {
    /// Client IDs of the applications authorized for this API.
    pub fn authorized_client_ids(&self) -> impl Iterator<Item = &str> {
        self.applications
            .iter()
            .filter(|a| a.is_active == Some(true))
            .map(|a| a.id.as_str())
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct GetApiResponse {
    pub api: Option<Api>,
}

/// A scope of an API with its description.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ApiScope {
    pub id: String,
    pub key: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListApiScopesResponse {
    #[serde(default)]
    pub scopes: Vec<ApiScope>,
}

#[derive(Debug, Serialize)]
pub(crate) struct CreateApiScopeRequest<'a> {
    pub key: &'a str,
    pub description: &'a str,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CreateApiScopeResponse {
    pub scope: Option<IdOnly>,
}

#[derive(Debug, Serialize)]
pub(crate) struct UpdateApiScopeRequest<'a> {
    pub description: &'a str,
}

/// Whether a `PATCH /api/v1/apis/{id}/applications` entry connects or disconnects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authorization {
    Authorize,
    Deauthorize,
}

/// One entry of the authorize batch: `{id}` or `{id, operation: "delete"}`.
#[derive(Debug, Serialize)]
pub(crate) struct AuthorizeEntry<'a> {
    pub id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AuthorizeRequest<'a> {
    pub applications: Vec<AuthorizeEntry<'a>>,
}

/// What Kinde reports after an authorize batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AuthorizeOutcome {
    #[serde(default)]
    pub applications_connected: Vec<String>,
    #[serde(default)]
    pub applications_disconnected: Vec<String>,
}

/// The OAuth2 client-credentials token response.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: SecretString,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

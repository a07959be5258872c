//! The emulated Kinde business: applications, APIs, scopes and grants, plus the pure
//! operations on them.
//!
//! Everything here is synchronous and free of HTTP so it can be unit-tested directly and
//! serialised to the state file as is. Operations return [`KindeError`] carrying the
//! status code and `error_response` code the management API answers with.

use std::collections::{BTreeMap, BTreeSet};

use rsa::rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

/// Name of the always-present Kinde Management API.
const MANAGEMENT_API_NAME: &str = "Kinde Management API";

/// Every management scope the emulator knows, i.e. the scope list of the Kinde Management
/// API. Includes the two spellings that only appear (typo'd) in the spec's descriptions.
const MANAGEMENT_SCOPE_CATALOGUE: &[&str] = &[
    "read:applications",
    "create:applications",
    "update:applications",
    "delete:applications",
    "read:apis",
    "create:apis",
    "update:apis",
    "delete:apis",
    "read:api_scopes",
    "create:api_scopes",
    "update:api_scopes",
    "delete:api_scopes",
    "delete:apis_scopes",
    "create:api_application_scopes",
    "delete:api_application_scopes",
    "delete:apis_application_scopes",
    "update:application_tokens",
    "read:properties",
    "create:properties",
    "read:property_categories",
    "create:property_categories",
    "read:application_properties",
    "update:application_properties",
];

/// The spec's typo'd spellings (from the descriptions of `deleteAPIScope` and
/// `deleteAPIApplicationScope`): accepted, but not granted by default.
const TYPO_SCOPES: &[&str] = &["delete:apis_scopes", "delete:apis_application_scopes"];

/// Scopes granted to the management client in the initial state: everything the operator
/// needs, i.e. the catalogue with the corrected spelling of the two typo'd scopes.
fn default_management_scopes() -> Vec<String> {
    MANAGEMENT_SCOPE_CATALOGUE
        .iter()
        .filter(|s| !TYPO_SCOPES.contains(s))
        .map(|s| (*s).to_owned())
        .collect()
}

/// A management API failure: HTTP status plus the `errors[0]` code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KindeError {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl KindeError {
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            code,
            message: message.into(),
        }
    }

    fn app_not_found() -> Self {
        Self::bad_request("APPLICATION_NOT_FOUND", "Application not found")
    }

    fn api_not_found() -> Self {
        Self::bad_request("API_NOT_FOUND", "API not found")
    }

    fn scope_not_found() -> Self {
        Self::bad_request("API_SCOPE_NOT_FOUND", "API scope not found")
    }

    fn management_api_read_only() -> Self {
        Self::bad_request(
            "MANAGEMENT_API_NOT_MODIFIABLE",
            "The Kinde Management API cannot be modified or deleted",
        )
    }
}

/// Why a dashboard rotation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RotateRefusal {
    NoSuchApplication,
    /// A previous secret is still retained: the dashboard asks to delete it first.
    PreviousSecretRetained,
    /// Front-end and device apps have no client secret to rotate.
    NotRotatable(AppType),
}

/// Application types as the create/get endpoints spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AppType {
    Reg,
    Spa,
    M2m,
    Device,
}

impl AppType {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "reg" => Some(Self::Reg),
            "spa" => Some(Self::Spa),
            "m2m" => Some(Self::M2m),
            "device" => Some(Self::Device),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Reg => "reg",
            Self::Spa => "spa",
            Self::M2m => "m2m",
            Self::Device => "device",
        }
    }

    /// The human-readable label `GET /api/v1/apis/{id}` uses in `applications[].type`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Reg => "Back-end web",
            Self::Spa => "Front-end and mobile",
            Self::M2m => "Machine to machine (M2M)",
            Self::Device => "Device and IoT",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Application {
    pub(crate) id: String,
    pub(crate) name: String,
    #[serde(rename = "type")]
    pub(crate) app_type: AppType,
    pub(crate) org_code: Option<String>,
    pub(crate) client_secret: String,
    /// Secrets kept working by a dashboard-style rotation with "retain old secret".
    #[serde(default)]
    pub(crate) retained_secrets: Vec<String>,
    /// Lifetime of the access tokens issued to this client, seconds
    /// (`updateApplicationTokens`); unset: the emulator's `token_ttl_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) access_token_lifetime: Option<i64>,
    /// Values of application properties (`updateApplicationsProperty`), by property key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) properties: BTreeMap<String, String>,
    /// Creation order; the default (unsorted) listing order.
    pub(crate) seq: u64,
}

impl Application {
    /// Position in a listing sorted by `sort` (ascending; `NameDesc` reverses it).
    pub(crate) fn sort_key(&self, sort: AppSort) -> SortKey {
        match sort {
            AppSort::Created => (format!("{:020}", self.seq), String::new(), self.id.clone()),
            AppSort::NameAsc | AppSort::NameDesc => name_sort_key(&self.name, &self.id),
        }
    }

    /// Whether `secret` authenticates this client (current or retained secret).
    pub(crate) fn secret_matches(&self, secret: &str) -> bool {
        constant_time_eq(&self.client_secret, secret)
            || self
                .retained_secrets
                .iter()
                .any(|s| constant_time_eq(s, secret))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ApiScope {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Api {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) audience: String,
    pub(crate) is_management_api: bool,
    pub(crate) scopes: Vec<ApiScope>,
    /// Authorized applications (by id) and the scope ids each was given on this API.
    pub(crate) grants: BTreeMap<String, BTreeSet<String>>,
    pub(crate) seq: u64,
}

impl Api {
    /// Position in the name-sorted listing.
    pub(crate) fn sort_key(&self) -> SortKey {
        name_sort_key(&self.name, &self.id)
    }

    /// Keys of the given scope ids, in the API's scope order.
    pub(crate) fn scope_keys(&self, ids: &BTreeSet<String>) -> Vec<String> {
        self.scopes
            .iter()
            .filter(|s| ids.contains(&s.id))
            .map(|s| s.key.clone())
            .collect()
    }
}

/// A property definition (`CreateProperty`): what users, organizations or applications
/// (`context` `usr`/`org`/`app`) may carry a value of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Property {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) context: String,
    pub(crate) is_private: bool,
    pub(crate) category_id: String,
}

/// A property category (`CreateCategory`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Category {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) context: String,
}

/// The whole business. Serialised verbatim into the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Store {
    pub(crate) applications: BTreeMap<String, Application>,
    pub(crate) apis: BTreeMap<String, Api>,
    #[serde(default)]
    pub(crate) properties: Vec<Property>,
    #[serde(default)]
    pub(crate) categories: Vec<Category>,
    pub(crate) management_client_id: String,
    pub(crate) management_api_id: String,
    next_seq: u64,
}

/// Outcome of `PATCH /api/v1/apis/{id}/applications`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct AuthorizationChange {
    pub(crate) connected: Vec<String>,
    pub(crate) disconnected: Vec<String>,
    pub(crate) changed: bool,
}

/// Sort orders of `GET /api/v1/applications`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum AppSort {
    Created,
    NameAsc,
    NameDesc,
}

impl Store {
    /// The initial state: the Kinde Management API, and the management client authorized
    /// on it with the default scopes.
    pub(crate) fn new(domain: &str, client_id: &str, client_secret: &str) -> Self {
        let mut store = Self {
            applications: BTreeMap::new(),
            apis: BTreeMap::new(),
            properties: Vec::new(),
            categories: Vec::new(),
            management_client_id: client_id.to_owned(),
            management_api_id: String::new(),
            next_seq: 0,
        };
        let api_id = random_hex(32);
        let seq = store.seq();
        let scopes = MANAGEMENT_SCOPE_CATALOGUE
            .iter()
            .map(|key| ApiScope {
                id: new_scope_id(),
                key: (*key).to_owned(),
                description: String::new(),
            })
            .collect();
        store.apis.insert(
            api_id.clone(),
            Api {
                id: api_id.clone(),
                name: MANAGEMENT_API_NAME.to_owned(),
                audience: management_audience(domain),
                is_management_api: true,
                scopes,
                grants: BTreeMap::new(),
                seq,
            },
        );
        store.management_api_id = api_id;
        store.ensure_management_client(domain, client_id, client_secret);
        store
    }

    /// A fresh initial state that keeps the management API's id (clients may have
    /// cached it).
    pub(crate) fn reset(&self, domain: &str, client_id: &str, client_secret: &str) -> Self {
        let mut fresh = Self::new(domain, client_id, client_secret);
        let new_id =
            std::mem::replace(&mut fresh.management_api_id, self.management_api_id.clone());
        if let Some(mut api) = fresh.apis.remove(&new_id) {
            api.id = self.management_api_id.clone();
            fresh.apis.insert(api.id.clone(), api);
        }
        fresh
    }

    /// Makes a loaded store agree with the current configuration: the management API's
    /// audience follows the domain, and the configured management client exists with the
    /// configured secret (keeping its grants if it already existed).
    pub(crate) fn ensure_management_client(&mut self, domain: &str, client_id: &str, secret: &str) {
        let audience = management_audience(domain);
        let mgmt_api_id = self.management_api_id.clone();
        if let Some(api) = self.apis.get_mut(&mgmt_api_id) {
            api.audience = audience;
        }
        self.management_client_id = client_id.to_owned();
        if let Some(app) = self.applications.get_mut(client_id) {
            app.client_secret = secret.to_owned();
            return;
        }
        let seq = self.seq();
        self.applications.insert(
            client_id.to_owned(),
            Application {
                id: client_id.to_owned(),
                name: "Kinde emulator management client".to_owned(),
                app_type: AppType::M2m,
                org_code: None,
                client_secret: secret.to_owned(),
                retained_secrets: Vec::new(),
                access_token_lifetime: None,
                properties: BTreeMap::new(),
                seq,
            },
        );
        self.set_management_scopes(&default_management_scopes());
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn management_api(&self) -> Option<&Api> {
        self.apis.get(&self.management_api_id)
    }

    /// Replaces the management client's scopes on the management API (authorizing it if
    /// needed). Unknown keys are added to the management API's scope list first.
    pub(crate) fn set_management_scopes(&mut self, keys: &[String]) {
        let client = self.management_client_id.clone();
        let Some(api) = self.apis.get_mut(&self.management_api_id) else {
            return;
        };
        let mut ids = BTreeSet::new();
        for key in keys {
            let id = match api.scopes.iter().find(|s| &s.key == key) {
                Some(s) => s.id.clone(),
                None => {
                    let id = new_scope_id();
                    api.scopes.push(ApiScope {
                        id: id.clone(),
                        key: key.clone(),
                        description: String::new(),
                    });
                    id
                }
            };
            ids.insert(id);
        }
        api.grants.insert(client, ids);
    }

    pub(crate) fn management_scopes(&self) -> Vec<String> {
        self.management_api()
            .and_then(|api| {
                api.grants
                    .get(&self.management_client_id)
                    .map(|ids| api.scope_keys(ids))
            })
            .unwrap_or_default()
    }

    // ---- applications ----

    pub(crate) fn create_application(
        &mut self,
        name: String,
        app_type: AppType,
        org_code: Option<String>,
    ) -> Application {
        let id = random_hex(32);
        let seq = self.seq();
        let app = Application {
            id: id.clone(),
            name,
            app_type,
            org_code,
            client_secret: random_alnum(48),
            retained_secrets: Vec::new(),
            access_token_lifetime: None,
            properties: BTreeMap::new(),
            seq,
        };
        self.applications.insert(id, app.clone());
        app
    }

    pub(crate) fn application(&self, id: &str) -> Result<&Application, KindeError> {
        self.applications
            .get(id)
            .ok_or_else(KindeError::app_not_found)
    }

    /// Renames; returns whether anything changed.
    pub(crate) fn rename_application(
        &mut self,
        id: &str,
        name: Option<String>,
    ) -> Result<bool, KindeError> {
        let app = self
            .applications
            .get_mut(id)
            .ok_or_else(KindeError::app_not_found)?;
        match name {
            Some(name) if name != app.name => {
                app.name = name;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Creates a property category (`CreateCategory`); names are unique per context.
    pub(crate) fn create_category(
        &mut self,
        name: &str,
        context: &str,
    ) -> Result<String, KindeError> {
        if !matches!(context, "org" | "usr" | "app") {
            return Err(KindeError::bad_request(
                "INVALID_CONTEXT",
                "context must be one of org, usr, app",
            ));
        }
        if self
            .categories
            .iter()
            .any(|c| c.name == name && c.context == context)
        {
            return Err(KindeError::bad_request(
                "CATEGORY_ALREADY_EXISTS",
                "A category with this name already exists",
            ));
        }
        let id = format!("cat_{}", random_hex(32));
        self.categories.push(Category {
            id: id.clone(),
            name: name.to_owned(),
            context: context.to_owned(),
        });
        Ok(id)
    }

    /// Creates a property definition (`CreateProperty`); keys are unique in the business.
    pub(crate) fn create_property(&mut self, property: Property) -> Result<String, KindeError> {
        if !matches!(property.context.as_str(), "org" | "usr" | "app") {
            return Err(KindeError::bad_request(
                "INVALID_CONTEXT",
                "context must be one of org, usr, app",
            ));
        }
        if !self.categories.iter().any(|c| c.id == property.category_id) {
            return Err(KindeError::bad_request(
                "CATEGORY_NOT_FOUND",
                "Category not found",
            ));
        }
        if self.properties.iter().any(|p| p.key == property.key) {
            return Err(KindeError::bad_request(
                "PROPERTY_KEY_ALREADY_EXISTS",
                "A property with this key already exists",
            ));
        }
        let id = format!("prop_{}", random_hex(32));
        self.properties.push(Property {
            id: id.clone(),
            ..property
        });
        Ok(id)
    }

    /// Sets an application's value of the `app` property `key`; `true` when it changed.
    pub(crate) fn set_application_property(
        &mut self,
        id: &str,
        key: &str,
        value: String,
    ) -> Result<bool, KindeError> {
        if !self
            .properties
            .iter()
            .any(|p| p.key == key && p.context == "app")
        {
            return Err(KindeError::bad_request(
                "PROPERTY_NOT_FOUND",
                "Property not found",
            ));
        }
        let app = self
            .applications
            .get_mut(id)
            .ok_or_else(KindeError::app_not_found)?;
        Ok(app.properties.insert(key.to_owned(), value.clone()) != Some(value))
    }

    /// Sets the access-token lifetime of an application; `true` when it changed.
    pub(crate) fn set_access_token_lifetime(
        &mut self,
        id: &str,
        seconds: i64,
    ) -> Result<bool, KindeError> {
        let app = self
            .applications
            .get_mut(id)
            .ok_or_else(KindeError::app_not_found)?;
        let changed = app.access_token_lifetime != Some(seconds);
        app.access_token_lifetime = Some(seconds);
        Ok(changed)
    }

    /// Deletes the application and every grant it had.
    pub(crate) fn delete_application(&mut self, id: &str) -> Result<(), KindeError> {
        self.applications
            .remove(id)
            .ok_or_else(KindeError::app_not_found)?;
        for api in self.apis.values_mut() {
            api.grants.remove(id);
        }
        Ok(())
    }

    /// Applications in the requested order.
    pub(crate) fn sorted_applications(&self, sort: AppSort) -> Vec<&Application> {
        let mut apps: Vec<&Application> = self.applications.values().collect();
        apps.sort_by_cached_key(|a| a.sort_key(sort));
        if sort == AppSort::NameDesc {
            apps.reverse();
        }
        apps
    }

    /// Rotates the client secret as the dashboard does; returns the new secret. As in the
    /// dashboard (docs: "Rotate client secret"), only back-end (`reg`) and M2M apps have a
    /// secret to rotate, and while a previous secret is retained it must be deleted first
    /// ([`Self::delete_previous_secret`]) before another rotation.
    pub(crate) fn rotate_secret(
        &mut self,
        id: &str,
        retain_old: bool,
    ) -> Result<String, RotateRefusal> {
        let app = self
            .applications
            .get_mut(id)
            .ok_or(RotateRefusal::NoSuchApplication)?;
        if !matches!(app.app_type, AppType::Reg | AppType::M2m) {
            return Err(RotateRefusal::NotRotatable(app.app_type));
        }
        if !app.retained_secrets.is_empty() {
            return Err(RotateRefusal::PreviousSecretRetained);
        }
        let new_secret = random_alnum(48);
        let old = std::mem::replace(&mut app.client_secret, new_secret.clone());
        if retain_old {
            app.retained_secrets = vec![old];
        }
        Ok(new_secret)
    }

    /// The dashboard's "Delete previous client secret": the retained secret stops working.
    /// Returns whether there was one.
    pub(crate) fn delete_previous_secret(&mut self, id: &str) -> Result<bool, KindeError> {
        let app = self
            .applications
            .get_mut(id)
            .ok_or_else(KindeError::app_not_found)?;
        let had = !app.retained_secrets.is_empty();
        app.retained_secrets.clear();
        Ok(had)
    }

    // ---- APIs ----

    pub(crate) fn create_api(
        &mut self,
        name: String,
        audience: String,
    ) -> Result<String, KindeError> {
        if self.apis.values().any(|a| a.audience == audience) {
            return Err(KindeError::bad_request(
                "API_AUDIENCE_ALREADY_EXISTS",
                format!("An API with audience \"{audience}\" already exists"),
            ));
        }
        let id = random_hex(32);
        let seq = self.seq();
        self.apis.insert(
            id.clone(),
            Api {
                id: id.clone(),
                name,
                audience,
                is_management_api: false,
                scopes: Vec::new(),
                grants: BTreeMap::new(),
                seq,
            },
        );
        Ok(id)
    }

    pub(crate) fn api(&self, id: &str) -> Result<&Api, KindeError> {
        self.apis.get(id).ok_or_else(KindeError::api_not_found)
    }

    pub(crate) fn api_by_audience(&self, audience: &str) -> Option<&Api> {
        self.apis.values().find(|a| a.audience == audience)
    }

    /// An API that the management API may change (exists and is not the management API).
    fn modifiable_api(&mut self, id: &str) -> Result<&mut Api, KindeError> {
        let api = self
            .apis
            .get_mut(id)
            .ok_or_else(KindeError::api_not_found)?;
        if api.is_management_api {
            return Err(KindeError::management_api_read_only());
        }
        Ok(api)
    }

    pub(crate) fn delete_api(&mut self, id: &str) -> Result<(), KindeError> {
        self.modifiable_api(id)?;
        self.apis.remove(id);
        Ok(())
    }

    /// APIs sorted by name (then id, for a stable order among equal names).
    pub(crate) fn sorted_apis(&self) -> Vec<&Api> {
        let mut apis: Vec<&Api> = self.apis.values().collect();
        apis.sort_by_cached_key(|a| a.sort_key());
        apis
    }

    pub(crate) fn create_scope(
        &mut self,
        api_id: &str,
        key: String,
        description: String,
    ) -> Result<String, KindeError> {
        let api = self.modifiable_api(api_id)?;
        if api.scopes.iter().any(|s| s.key == key) {
            return Err(KindeError::bad_request(
                "API_SCOPE_ALREADY_EXISTS",
                format!("A scope with key \"{key}\" already exists on this API"),
            ));
        }
        let id = new_scope_id();
        api.scopes.push(ApiScope {
            id: id.clone(),
            key,
            description,
        });
        Ok(id)
    }

    pub(crate) fn scope(&self, api_id: &str, scope_id: &str) -> Result<&ApiScope, KindeError> {
        self.api(api_id)?
            .scopes
            .iter()
            .find(|s| s.id == scope_id)
            .ok_or_else(KindeError::scope_not_found)
    }

    /// Updates the description; returns whether anything changed.
    pub(crate) fn update_scope(
        &mut self,
        api_id: &str,
        scope_id: &str,
        description: Option<String>,
    ) -> Result<bool, KindeError> {
        let api = self.modifiable_api(api_id)?;
        let scope = api
            .scopes
            .iter_mut()
            .find(|s| s.id == scope_id)
            .ok_or_else(KindeError::scope_not_found)?;
        match description {
            Some(d) if d != scope.description => {
                scope.description = d;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Deletes the scope and removes it from every application's grant on the API.
    pub(crate) fn delete_scope(&mut self, api_id: &str, scope_id: &str) -> Result<(), KindeError> {
        let api = self.modifiable_api(api_id)?;
        let before = api.scopes.len();
        api.scopes.retain(|s| s.id != scope_id);
        if api.scopes.len() == before {
            return Err(KindeError::scope_not_found());
        }
        for ids in api.grants.values_mut() {
            ids.remove(scope_id);
        }
        Ok(())
    }

    /// Authorizes (`delete == false`) or de-authorizes applications, all or nothing:
    /// every id is checked before anything changes. De-authorizing drops the app's
    /// scopes on the API.
    pub(crate) fn update_api_applications(
        &mut self,
        api_id: &str,
        ops: &[(String, bool)],
    ) -> Result<AuthorizationChange, KindeError> {
        self.api(api_id)?;
        for (app_id, _) in ops {
            self.application(app_id)?;
        }
        let api = self
            .apis
            .get_mut(api_id)
            .ok_or_else(KindeError::api_not_found)?;
        let mut change = AuthorizationChange::default();
        for (app_id, delete) in ops {
            if *delete {
                change.changed |= api.grants.remove(app_id).is_some();
                change.disconnected.push(app_id.clone());
            } else {
                if !api.grants.contains_key(app_id) {
                    api.grants.insert(app_id.clone(), BTreeSet::new());
                    change.changed = true;
                }
                change.connected.push(app_id.clone());
            }
        }
        Ok(change)
    }

    /// Gives an authorized application a scope on an API; returns whether it changed.
    pub(crate) fn add_application_scope(
        &mut self,
        api_id: &str,
        app_id: &str,
        scope_id: &str,
    ) -> Result<bool, KindeError> {
        self.scope(api_id, scope_id)?;
        self.application(app_id)?;
        let api = self
            .apis
            .get_mut(api_id)
            .ok_or_else(KindeError::api_not_found)?;
        let grant = api.grants.get_mut(app_id).ok_or_else(|| {
            KindeError::bad_request(
                "APPLICATION_NOT_AUTHORIZED",
                "The application is not authorized for this API",
            )
        })?;
        Ok(grant.insert(scope_id.to_owned()))
    }

    /// Takes a scope away from an application on an API; returns whether it changed.
    /// Removing a scope the application does not have (or from an application not
    /// authorized for the API) is a successful no-op.
    pub(crate) fn remove_application_scope(
        &mut self,
        api_id: &str,
        app_id: &str,
        scope_id: &str,
    ) -> Result<bool, KindeError> {
        self.scope(api_id, scope_id)?;
        self.application(app_id)?;
        let api = self
            .apis
            .get_mut(api_id)
            .ok_or_else(KindeError::api_not_found)?;
        Ok(api
            .grants
            .get_mut(app_id)
            .is_some_and(|grant| grant.remove(scope_id)))
    }
}

/// Audience of the Kinde Management API for a domain.
pub(crate) fn management_audience(domain: &str) -> String {
    format!("{}/api", domain.trim_end_matches('/'))
}

/// Where an item sits in a listing, compared as a tuple; a `next_token` carries the key
/// of the last item of a page.
pub(crate) type SortKey = (String, String, String);

/// Name order: case-insensitive, then exact name, then id (so equal names are stable).
fn name_sort_key(name: &str, id: &str) -> SortKey {
    (name.to_lowercase(), name.to_owned(), id.to_owned())
}

fn new_scope_id() -> String {
    format!("api_scope_{}", random_hex(32))
}

/// `len` lowercase hex characters from the OS RNG.
pub(crate) fn random_hex(len: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    random_from(HEX, len)
}

/// `len` alphanumeric characters from the OS RNG (client secrets).
fn random_alnum(len: usize) -> String {
    const ALNUM: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    random_from(ALNUM, len)
}

fn random_from(alphabet: &[u8], len: usize) -> String {
    // Rejection sampling keeps the distribution uniform.
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        OsRng.fill_bytes(&mut buf);
        for b in buf {
            if (b as usize) < limit && out.len() < len {
                out.push(char::from(alphabet[b as usize % alphabet.len()]));
            }
        }
    }
    out
}

/// Comparison whose time does not depend on where the strings differ.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::new("http://kinde.test", "mgmt", "secret")
    }

    #[test]
    fn initial_state_has_management_api_and_client() {
        let s = store();
        let api = s.management_api().unwrap();
        assert_eq!(api.audience, "http://kinde.test/api");
        assert!(api.is_management_api);
        let mut scopes = s.management_scopes();
        scopes.sort();
        let mut expected = default_management_scopes();
        expected.sort();
        assert_eq!(scopes, expected);
        assert_eq!(scopes.len(), 21);
        assert!(scopes.contains(&"update:application_tokens".to_owned()));
        assert!(scopes.contains(&"delete:api_scopes".to_owned()));
        assert!(!scopes.contains(&"delete:apis_scopes".to_owned()));
        assert!(s.application("mgmt").unwrap().secret_matches("secret"));
    }

    #[test]
    fn ids_and_secrets_have_kinde_shapes() {
        let mut s = store();
        let app = s.create_application("a".into(), AppType::M2m, None);
        assert_eq!(app.id.len(), 32);
        assert!(
            app.id
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(app.client_secret.len(), 48);
        assert!(app.client_secret.chars().all(|c| c.is_ascii_alphanumeric()));
        let api = s.create_api("x".into(), "https://x".into()).unwrap();
        let scope = s.create_scope(&api, "read".into(), String::new()).unwrap();
        assert!(scope.starts_with("api_scope_"));
    }

    #[test]
    fn management_api_is_read_only() {
        let mut s = store();
        let id = s.management_api_id.clone();
        assert_eq!(
            s.delete_api(&id).unwrap_err().code,
            "MANAGEMENT_API_NOT_MODIFIABLE"
        );
        assert_eq!(
            s.create_scope(&id, "k".into(), String::new())
                .unwrap_err()
                .code,
            "MANAGEMENT_API_NOT_MODIFIABLE"
        );
    }

    #[test]
    fn duplicate_audience_and_scope_key_are_refused() {
        let mut s = store();
        let api = s.create_api("x".into(), "aud".into()).unwrap();
        assert_eq!(
            s.create_api("y".into(), "aud".into()).unwrap_err().code,
            "API_AUDIENCE_ALREADY_EXISTS"
        );
        s.create_scope(&api, "k".into(), String::new()).unwrap();
        assert_eq!(
            s.create_scope(&api, "k".into(), String::new())
                .unwrap_err()
                .code,
            "API_SCOPE_ALREADY_EXISTS"
        );
    }

    #[test]
    fn deauthorizing_drops_scopes_and_is_atomic() {
        let mut s = store();
        let app = s.create_application("a".into(), AppType::M2m, None).id;
        let api = s.create_api("x".into(), "aud".into()).unwrap();
        let scope = s.create_scope(&api, "k".into(), String::new()).unwrap();
        assert_eq!(
            s.add_application_scope(&api, &app, &scope)
                .unwrap_err()
                .code,
            "APPLICATION_NOT_AUTHORIZED"
        );
        let err = s
            .update_api_applications(&api, &[(app.clone(), false), ("nope".into(), false)])
            .unwrap_err();
        assert_eq!(err.code, "APPLICATION_NOT_FOUND");
        assert!(s.api(&api).unwrap().grants.is_empty());
        let change = s
            .update_api_applications(&api, &[(app.clone(), false)])
            .unwrap();
        assert!(change.changed);
        assert!(s.add_application_scope(&api, &app, &scope).unwrap());
        assert!(!s.add_application_scope(&api, &app, &scope).unwrap());
        s.update_api_applications(&api, &[(app.clone(), true)])
            .unwrap();
        s.update_api_applications(&api, &[(app.clone(), false)])
            .unwrap();
        assert!(s.api(&api).unwrap().grants[&app].is_empty());
    }

    #[test]
    fn rotate_secret_retains_only_when_asked() {
        let mut s = store();
        let app = s.create_application("a".into(), AppType::M2m, None);
        let new = s.rotate_secret(&app.id, false).unwrap();
        let stored = s.application(&app.id).unwrap();
        assert!(stored.secret_matches(&new) && !stored.secret_matches(&app.client_secret));
        let newer = s.rotate_secret(&app.id, true).unwrap();
        let stored = s.application(&app.id).unwrap();
        assert!(stored.secret_matches(&newer) && stored.secret_matches(&new));
    }

    #[test]
    fn rotation_waits_for_the_previous_secret_to_be_deleted() {
        let mut s = store();
        let app = s.create_application("a".into(), AppType::M2m, None);
        let retained_from = s.rotate_secret(&app.id, true).unwrap();
        for retain in [true, false] {
            assert_eq!(
                s.rotate_secret(&app.id, retain),
                Err(RotateRefusal::PreviousSecretRetained)
            );
        }
        let stored = s.application(&app.id).unwrap();
        assert!(stored.secret_matches(&retained_from) && stored.secret_matches(&app.client_secret));
        assert_eq!(s.delete_previous_secret(&app.id), Ok(true));
        assert!(
            !s.application(&app.id)
                .unwrap()
                .secret_matches(&app.client_secret)
        );
        assert_eq!(s.delete_previous_secret(&app.id), Ok(false));
        assert!(s.rotate_secret(&app.id, true).is_ok());
        assert_eq!(
            s.rotate_secret("nope", false),
            Err(RotateRefusal::NoSuchApplication)
        );
        let spa = s.create_application("web".into(), AppType::Spa, None);
        assert_eq!(
            s.rotate_secret(&spa.id, false),
            Err(RotateRefusal::NotRotatable(AppType::Spa))
        );
        let reg = s.create_application("backend".into(), AppType::Reg, None);
        assert!(s.rotate_secret(&reg.id, false).is_ok());
    }

    #[test]
    fn reset_keeps_management_api_id() {
        let mut s = store();
        s.create_application("a".into(), AppType::M2m, None);
        let r = s.reset("http://kinde.test", "mgmt", "secret");
        assert_eq!(r.management_api_id, s.management_api_id);
        assert_eq!(r.management_api().unwrap().id, s.management_api_id);
        assert_eq!(r.applications.len(), 1);
        assert_eq!(
            r.management_scopes().len(),
            default_management_scopes().len()
        );
    }

    #[test]
    fn sorting_by_name() {
        let mut s = Store::new("d", "m", "s");
        s.create_application("b".into(), AppType::M2m, None);
        s.create_application("A".into(), AppType::M2m, None);
        let names: Vec<_> = s
            .sorted_applications(AppSort::NameAsc)
            .iter()
            .map(|a| a.name.clone())
            .collect();
        assert_eq!(names, ["A", "b", "Kinde emulator management client"]);
        let created: Vec<_> = s
            .sorted_applications(AppSort::Created)
            .iter()
            .map(|a| a.name.clone())
            .collect();
        assert_eq!(created, ["Kinde emulator management client", "b", "A"]);
    }
}

//! Kinde Management API client: the one code path to Kinde, whether the other side is
//! Kinde itself or the emulator.
//!
//! `KindeClient` does the HTTP, authentication (cached management token), throttling,
//! retries and metrics. Controllers use it directly; tests point it at the emulator
//! (`crates/kinde-emulator`) rather than swapping it for a fake.

mod client;
mod error;
mod fence;
mod metrics;
mod ratelimit;
mod token;
pub mod types;

pub use client::{KindeClient, KindeConfig};
pub use error::{ErrorKind, KindeError, KindeErrorBody, Transient};
pub use fence::WriteFence;
pub use metrics::KindeMetrics;
pub use ratelimit::{Limiter, in_background};

/// Result of a Kinde call.
pub type Result<T, E = KindeError> = std::result::Result<T, E>;

/// The Kinde operations the operator uses, named by their `operationId` in
/// `management-api.yaml` (the emulator's fault injection and counters use the same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Token,
    CreateApplication,
    GetApplication,
    ListApplications,
    UpdateApplication,
    DeleteApplication,
    UpdateApplicationTokens,
    GetApplicationProperties,
    UpdateApplicationProperty,
    ListProperties,
    CreateProperty,
    ListPropertyCategories,
    CreatePropertyCategory,
    CreateApi,
    GetApi,
    ListApis,
    DeleteApi,
    ListApiScopes,
    CreateApiScope,
    UpdateApiScope,
    DeleteApiScope,
    UpdateApiApplications,
    AddApiApplicationScope,
    DeleteApiApplicationScope,
}

impl Operation {
    /// The spec's `operationId`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Token => "token",
            Operation::CreateApplication => "createApplication",
            Operation::GetApplication => "getApplication",
            Operation::ListApplications => "getApplications",
            Operation::UpdateApplication => "updateApplication",
            Operation::DeleteApplication => "deleteApplication",
            Operation::UpdateApplicationTokens => "updateApplicationTokens",
            Operation::GetApplicationProperties => "getApplicationPropertyValues",
            Operation::UpdateApplicationProperty => "updateApplicationsProperty",
            Operation::ListProperties => "GetProperties",
            Operation::CreateProperty => "CreateProperty",
            Operation::ListPropertyCategories => "GetCategories",
            Operation::CreatePropertyCategory => "CreateCategory",
            Operation::CreateApi => "addAPIs",
            Operation::GetApi => "getAPI",
            Operation::ListApis => "getAPIs",
            Operation::DeleteApi => "deleteAPI",
            Operation::ListApiScopes => "getAPIScopes",
            Operation::CreateApiScope => "addAPIScope",
            Operation::UpdateApiScope => "updateAPIScope",
            Operation::DeleteApiScope => "deleteAPIScope",
            Operation::UpdateApiApplications => "updateAPIApplications",
            Operation::AddApiApplicationScope => "addAPIApplicationScope",
            Operation::DeleteApiApplicationScope => "deleteAPIApplicationScope",
        }
    }

    /// The management scope the call needs. Two are spelled wrongly in the spec's
    /// descriptions (`delete:apis_scopes`, `delete:apis_application_scopes`); these are the
    /// names Kinde's scope list uses.
    pub fn scope(self) -> &'static str {
        match self {
            Operation::Token => "",
            Operation::CreateApplication => "create:applications",
            Operation::GetApplication | Operation::ListApplications => "read:applications",
            Operation::UpdateApplication => "update:applications",
            Operation::DeleteApplication => "delete:applications",
            Operation::UpdateApplicationTokens => "update:application_tokens",
            Operation::GetApplicationProperties => "read:application_properties",
            Operation::UpdateApplicationProperty => "update:application_properties",
            Operation::ListProperties => "read:properties",
            Operation::CreateProperty => "create:properties",
            Operation::ListPropertyCategories => "read:property_categories",
            Operation::CreatePropertyCategory => "create:property_categories",
            Operation::CreateApi => "create:apis",
            Operation::GetApi | Operation::ListApis => "read:apis",
            Operation::DeleteApi => "delete:apis",
            Operation::UpdateApiApplications => "update:apis",
            Operation::ListApiScopes => "read:api_scopes",
            Operation::CreateApiScope => "create:api_scopes",
            Operation::UpdateApiScope => "update:api_scopes",
            Operation::DeleteApiScope => "delete:api_scopes",
            Operation::AddApiApplicationScope => "create:api_application_scopes",
            Operation::DeleteApiApplicationScope => "delete:api_application_scopes",
        }
    }

    /// The feature that alone needs this operation, for scopes an installation may leave
    /// out when it does not use it (`check` reports them as optional).
    pub fn only_for(self) -> Option<&'static str> {
        match self {
            Operation::UpdateApplicationTokens => Some("spec.tokens"),
            Operation::GetApplicationProperties
            | Operation::UpdateApplicationProperty
            | Operation::ListProperties
            | Operation::CreateProperty
            | Operation::ListPropertyCategories
            | Operation::CreatePropertyCategory => {
                Some("recovering applications after a cluster rebuild (owner property)")
            }
            _ => None,
        }
    }

    /// Whether repeating the request after an unknown outcome is harmless. Creates are not:
    /// names are not unique in Kinde, so a blind retry of a lost create makes a duplicate.
    fn retry_safe(self) -> bool {
        !matches!(
            self,
            Operation::CreateApplication | Operation::CreateApi | Operation::CreateApiScope
        )
    }

    /// Every operation, for documentation and tests.
    pub const ALL: [Operation; 24] = [
        Operation::Token,
        Operation::CreateApplication,
        Operation::GetApplication,
        Operation::ListApplications,
        Operation::UpdateApplication,
        Operation::DeleteApplication,
        Operation::UpdateApplicationTokens,
        Operation::GetApplicationProperties,
        Operation::UpdateApplicationProperty,
        Operation::ListProperties,
        Operation::CreateProperty,
        Operation::ListPropertyCategories,
        Operation::CreatePropertyCategory,
        Operation::CreateApi,
        Operation::GetApi,
        Operation::ListApis,
        Operation::DeleteApi,
        Operation::ListApiScopes,
        Operation::CreateApiScope,
        Operation::UpdateApiScope,
        Operation::DeleteApiScope,
        Operation::UpdateApiApplications,
        Operation::AddApiApplicationScope,
        Operation::DeleteApiApplicationScope,
    ];

    /// The management scopes the operator's own Kinde app needs.
    pub fn required_scopes() -> Vec<&'static str> {
        let mut s: Vec<_> = Self::ALL
            .iter()
            .map(|o| o.scope())
            .filter(|s| !s.is_empty())
            .collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// The scopes a complete installation needs outright: those of every operation that
    /// no optional feature alone needs (what a connection must carry to be Ready).
    pub fn needed_scopes() -> std::collections::BTreeSet<&'static str> {
        Self::ALL
            .iter()
            .filter(|o| o.only_for().is_none())
            .map(|o| o.scope())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

//! `KindeConnection` (namespaced) and `ClusterKindeConnection` (cluster-scoped): a Kinde
//! business (its domain and the management credentials to reach it) that ApiRegistrations
//! and M2MApplications name in `spec.connectionRef`, in the style of cert-manager's
//! Issuer/ClusterIssuer and External Secrets' SecretStore/ClusterSecretStore.
//!
//! Objects without `spec.connectionRef` use the business configured by the operator's flags
//! (`--kinde-domain`, ...): every manifest written before connections existed works
//! unchanged.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default key of the management client ID in a connection's Secret.
pub const DEFAULT_KEY_MANAGEMENT_CLIENT_ID: &str = "client-id";
/// Default key of the management client secret in a connection's Secret.
pub const DEFAULT_KEY_MANAGEMENT_CLIENT_SECRET: &str = "client-secret";

/// A Kinde business usable by the ApiRegistrations and M2MApplications of its own
/// namespace.
// Every `printcolumn(...)` repeats `type_ = ..`: not a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "m2m.kinde-operator.io",
    version = "v1alpha1",
    kind = "KindeConnection",
    namespaced,
    status = "ConnectionStatus",
    derive = "PartialEq",
    shortname = "kconn",
    category = "kinde",
    doc = "A Kinde business (domain and management credentials) for the ApiRegistrations and M2MApplications of its namespace.",
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.domain"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Synced",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Synced")].status"#,
        priority = 1
    ),
    printcolumn(
        name = "Stalled",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Stalled")].status"#,
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.credentials.__namespace__)").message(
    "spec.credentials.namespace must not be set: a KindeConnection reads its Secret from its own namespace"
))]
#[serde(rename_all = "camelCase")]
pub struct KindeConnectionSpec {
    #[serde(flatten)]
    pub business: BusinessSpec,
}

/// A Kinde business usable by the ApiRegistrations and M2MApplications of the namespaces
/// its `namespaceSelector` admits.
// Every `printcolumn(...)` repeats `type_ = ..`: not a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "m2m.kinde-operator.io",
    version = "v1alpha1",
    kind = "ClusterKindeConnection",
    status = "ConnectionStatus",
    derive = "PartialEq",
    shortname = "ckconn",
    category = "kinde",
    doc = "A Kinde business (domain and management credentials) for the ApiRegistrations and M2MApplications of the namespaces its namespaceSelector admits.",
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.domain"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Synced",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Synced")].status"#,
        priority = 1
    ),
    printcolumn(
        name = "Stalled",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Stalled")].status"#,
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.credentials.__namespace__)").message(
    "spec.credentials.namespace is required: a ClusterKindeConnection has no namespace of its own"
))]
#[serde(rename_all = "camelCase")]
pub struct ClusterKindeConnectionSpec {
    #[serde(flatten)]
    pub business: BusinessSpec,

    /// Which namespaces' objects may use this connection. Required: `{}` admits every
    /// namespace, so that admitting them all is written down.
    pub namespace_selector: LabelSelector,
}

/// What both connection kinds say about the business.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BusinessSpec {
    /// The business's domain, `https://<business>.kinde.com` or its custom domain. The
    /// management API is `<domain>/api`, tokens come from `<domain>/oauth2/token`.
    /// Immutable: the Kinde objects made through a connection live in its business.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^https?://[^\s/]+/?$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "spec.domain is immutable (the Kinde objects made through this connection live in that business): create another connection"
    ))]
    pub domain: String,

    /// The Secret holding the management application's client ID and secret (an M2M
    /// application authorized for the Kinde Management API with the scopes the operator
    /// needs: `kinde-m2m-operator check` lists them). Re-read when it changes.
    pub credentials: CredentialsRef,

    /// How hard the operator may push this business. Unset fields take the operator's
    /// flags (`--kinde-requests-per-second`, `--kinde-max-in-flight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientSettings>,
}

/// Where a connection's management credentials are.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = crate::crd::DNS1123_SUBDOMAIN_PATTERN))]
    pub name: String,

    /// Namespace of the Secret: required on a ClusterKindeConnection, not allowed on a
    /// KindeConnection (its own namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = crate::crd::DNS1123_LABEL_PATTERN))]
    pub namespace: Option<String>,

    /// Key of the client ID. Defaults to `client-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_id_key: Option<String>,

    /// Key of the client secret. Defaults to `client-secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_secret_key: Option<String>,
}

impl CredentialsRef {
    pub fn client_id_key(&self) -> &str {
        self.client_id_key
            .as_deref()
            .unwrap_or(DEFAULT_KEY_MANAGEMENT_CLIENT_ID)
    }

    pub fn client_secret_key(&self) -> &str {
        self.client_secret_key
            .as_deref()
            .unwrap_or(DEFAULT_KEY_MANAGEMENT_CLIENT_SECRET)
    }
}

/// Client settings of one connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientSettings {
    /// Management calls per second this connection may make (its business's own budget;
    /// other connections are not slowed by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.1, max = 1000.0))]
    pub requests_per_second: Option<f64>,

    /// Management calls in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_in_flight: Option<u32>,
}

/// Status of both connection kinds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    /// `Ready`: a management token was obtained and it carries every management scope the
    /// operator needs (else the reason says what is wrong and `missingScopes` which).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` the status was last computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Kinde's id of the business's Kinde Management API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_api_id: Option<String>,

    /// Management scopes the operator needs that the token lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_scopes: Vec<String>,

    /// The request rate in force for this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateStatus>,

    /// `resourceVersion` of the credentials Secret last read (never its content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_version: Option<String>,
}

/// A connection's request rate: what it may use and the pace it holds to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateStatus {
    /// Calls per second configured (`spec.client.requestsPerSecond` or the operator's flag).
    pub configured_per_second: String,
    /// The pace the client keeps to now: below the configured rate after Kinde answered
    /// 429 at it, climbing back as calls succeed (see the README, fleet scale).
    pub current_per_second: String,
}

/// Which connection kind `spec.connectionRef` names.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum ConnectionKind {
    /// A `KindeConnection` in the object's own namespace.
    KindeConnection,
    /// A `ClusterKindeConnection` whose `namespaceSelector` admits the object's namespace.
    ClusterKindeConnection,
}

/// `spec.connectionRef` of an ApiRegistration or M2MApplication: the Kinde business its
/// Kinde object lives in. Unset: the business of the operator's flags. Once the Kinde object
/// exists, the connection is recorded in `status.connection` and an edit of the reference is
/// refused (`ConnectionChanged`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRef {
    /// `KindeConnection` or `ClusterKindeConnection`.
    pub kind: ConnectionKind,
    /// Name of the connection (a KindeConnection in the object's own namespace).
    #[schemars(length(min = 1, max = 253), regex(pattern = crate::crd::DNS1123_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// The recorded name of the flag-configured business in `status.connection`.
pub const DEFAULT_CONNECTION: &str = "default";

impl fmt::Display for ConnectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectionKind::KindeConnection => "KindeConnection",
            ConnectionKind::ClusterKindeConnection => "ClusterKindeConnection",
        })
    }
}

/// How `status.connection` names a connection: `default`, `KindeConnection/<name>` or
/// `ClusterKindeConnection/<name>`.
pub fn connection_label(reference: Option<&ConnectionRef>) -> String {
    match reference {
        None => DEFAULT_CONNECTION.to_owned(),
        Some(r) => format!("{}/{}", r.kind, r.name),
    }
}

/// The inverse of [`connection_label`]; `None` for a label it does not make.
pub fn parse_connection_label(label: &str) -> Option<Option<ConnectionRef>> {
    if label == DEFAULT_CONNECTION {
        return Some(None);
    }
    let (kind, name) = label.split_once('/')?;
    let kind = match kind {
        "KindeConnection" => ConnectionKind::KindeConnection,
        "ClusterKindeConnection" => ConnectionKind::ClusterKindeConnection,
        _ => return None,
    };
    (!name.is_empty()).then(|| {
        Some(ConnectionRef {
            kind,
            name: name.to_owned(),
        })
    })
}

/// The connection an object is on: the one recorded in its status (an object bound before
/// connections existed: the default one), else its spec's.
pub fn connection_of(
    recorded: Option<&str>,
    bound: bool,
    spec: Option<&ConnectionRef>,
) -> Option<ConnectionRef> {
    match recorded {
        Some(label) => parse_connection_label(label).flatten(),
        None if bound => None,
        None => spec.cloned(),
    }
}

impl super::M2MApplication {
    /// The connection this application is on ([`connection_of`]).
    pub fn connection(&self) -> Option<ConnectionRef> {
        let s = self.status.as_ref();
        connection_of(
            s.and_then(|s| s.connection.as_deref()),
            s.is_some_and(|s| s.application_id.is_some()),
            self.spec.connection_ref.as_ref(),
        )
    }
}

impl super::ApiRegistration {
    /// The connection this API is on ([`connection_of`]).
    pub fn connection(&self) -> Option<ConnectionRef> {
        let s = self.status.as_ref();
        connection_of(
            s.and_then(|s| s.connection.as_deref()),
            s.is_some_and(|s| s.api_id.is_some()),
            self.spec.connection_ref.as_ref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        for reference in [
            None,
            Some(ConnectionRef {
                kind: ConnectionKind::KindeConnection,
                name: "staging".into(),
            }),
            Some(ConnectionRef {
                kind: ConnectionKind::ClusterKindeConnection,
                name: "prod.eu".into(),
            }),
        ] {
            let label = connection_label(reference.as_ref());
            assert_eq!(parse_connection_label(&label), Some(reference), "{label}");
        }
        assert_eq!(parse_connection_label("Issuer/x"), None);
        assert_eq!(parse_connection_label("KindeConnection/"), None);
    }
}

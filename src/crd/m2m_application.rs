//! `M2MApplication` (short name `m2mapp`): one Kinde machine-to-machine application and its
//! credentials Secret.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Rule;
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DeletionPolicy;

/// Default of `spec.rotation.overlap`.
pub const DEFAULT_ROTATION_OVERLAP: &str = "1h";

/// One Kinde machine-to-machine application and the Secret holding its credentials.
// Every `printcolumn(...)` repeats `type_ = ..`: not a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "m2m.kinde-operator.io",
    version = "v1alpha1",
    kind = "M2MApplication",
    namespaced,
    status = "M2MApplicationStatus",
    derive = "PartialEq",
    shortname = "m2mapp",
    category = "kinde",
    doc = "A Kinde machine-to-machine application; its credentials are written to a Secret in the same namespace.",
    printcolumn(name = "Client ID", type_ = "string", json_path = ".status.clientId"),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Synced",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Synced")].status"#
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
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#,
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "has(self.organizationCode) == has(oldSelf.organizationCode) && (!has(self.organizationCode) || self.organizationCode == oldSelf.organizationCode)"
).message("spec.organizationCode is immutable: delete and re-create the M2MApplication to change it"))]
#[serde(rename_all = "camelCase")]
pub struct M2MApplicationSpec {
    /// Name of the application in the Kinde dashboard (1-64 characters). Defaults to
    /// `<namespace>/<name>`. Changing it renames the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub display_name: Option<String>,

    /// Code of the Kinde organization to create an organization-scoped M2M application in.
    /// Immutable (1-128 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub organization_code: Option<String>,

    /// The Secret the credentials are written to.
    #[serde(default)]
    pub secret: SecretSpec,

    /// Credential rotation settings.
    #[serde(default)]
    pub rotation: RotationSpec,

    /// Token settings of the Kinde application (Kinde's `updateApplicationTokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokensSpec>,

    /// What happens to the Kinde application when this resource is deleted. When unset:
    /// `Delete` for an application the operator created, `Orphan` for an adopted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// The Kinde business this object's Kinde object lives in: a `KindeConnection` of this
    /// namespace or a `ClusterKindeConnection` admitting it. Unset: the operator's own
    /// (`--kinde-domain`). Fixed once the Kinde object exists (`status.connection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<crate::crd::ConnectionRef>,
}

/// The credentials Secret (keys `KINDE_DOMAIN`, `KINDE_CLIENT_ID`, `KINDE_CLIENT_SECRET`,
/// `KINDE_TOKEN_URL`, `KINDE_AUDIENCE` unless renamed in `keys`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretSpec {
    /// Name of the Secret (a DNS-1123 subdomain). Defaults to `<metadata.name>-credentials`.
    /// The operator never overwrites a Secret it does not own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = crate::crd::DNS1123_SUBDOMAIN_PATTERN)
    )]
    pub name: Option<String>,

    /// Extra labels for the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,

    /// Extra annotations for the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,

    /// Names of the Secret's keys, for consumers that expect others (Envoy Gateway and
    /// oauth2-proxy read `client-id` and `client-secret`). Unset keys keep their default
    /// name; `omit` leaves `tokenUrl` and `audience` out.
    #[serde(default, skip_serializing_if = "SecretKeys::is_default")]
    pub keys: SecretKeys,
}

/// Default names of the Secret's keys.
pub const DEFAULT_KEY_DOMAIN: &str = "KINDE_DOMAIN";
pub const DEFAULT_KEY_CLIENT_ID: &str = "KINDE_CLIENT_ID";
pub const DEFAULT_KEY_CLIENT_SECRET: &str = "KINDE_CLIENT_SECRET";
pub const DEFAULT_KEY_TOKEN_URL: &str = "KINDE_TOKEN_URL";
pub const DEFAULT_KEY_AUDIENCE: &str = "KINDE_AUDIENCE";

/// A Secret data key as the API server accepts it (`[-._a-zA-Z0-9]+`, not `.`, not
/// starting with `..`), written without look-ahead: the schema's regex dialect has none.
pub const SECRET_KEY_PATTERN: &str = r"^([-_a-zA-Z0-9]|\.[-_a-zA-Z0-9])[-._a-zA-Z0-9]*$";

/// The effective key names as CEL expressions, `''` for an omitted key (never a valid
/// key: the pattern wants one character at least).
fn effective_keys_cel() -> [String; 5] {
    let key =
        |field: &str, default: &str| format!("(has(self.{field}) ? self.{field} : '{default}')");
    let optional = |field: &str, default: &str| {
        format!(
            "(has(self.omit) && '{field}' in self.omit ? '' : {})",
            key(field, default)
        )
    };
    [
        key("domain", DEFAULT_KEY_DOMAIN),
        key("clientId", DEFAULT_KEY_CLIENT_ID),
        key("clientSecret", DEFAULT_KEY_CLIENT_SECRET),
        optional("tokenUrl", DEFAULT_KEY_TOKEN_URL),
        optional("audience", DEFAULT_KEY_AUDIENCE),
    ]
}

/// CEL: no two keys of the Secret share a name (defaults included). Pairwise, without
/// comprehensions (cheap, and checkable by static analysis); only the two optional keys
/// can both be `''`.
fn distinct_keys_rule() -> Rule {
    let keys = effective_keys_cel();
    let mut pairs = Vec::new();
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            pairs.push(format!("({a} == '' || {a} != {b})"));
        }
    }
    Rule::new(pairs.join(" && "))
        .message("spec.secret.keys: two keys of the Secret have the same name")
}

/// Keys of the Secret that `spec.secret.keys.omit` may leave out.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum OptionalKey {
    /// `KINDE_TOKEN_URL` (or its `tokenUrl` name).
    TokenUrl,
    /// `KINDE_AUDIENCE` (or its `audience` name).
    Audience,
}

/// Names of the credentials Secret's keys (each `[-._a-zA-Z0-9]+`, at most 253 characters,
/// all different).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(validation = distinct_keys_rule(), validation = Rule::new(
    "!has(self.omit) || !(('tokenUrl' in self.omit && has(self.tokenUrl)) || ('audience' in self.omit && has(self.audience)))"
).message("spec.secret.keys.omit: a key cannot be both renamed and omitted"))]
#[serde(rename_all = "camelCase")]
pub struct SecretKeys {
    /// Key of the Kinde domain. Default `KINDE_DOMAIN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub domain: Option<String>,
    /// Key of the client ID. Default `KINDE_CLIENT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub client_id: Option<String>,
    /// Key of the client secret. Default `KINDE_CLIENT_SECRET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub client_secret: Option<String>,
    /// Key of the token endpoint URL. Default `KINDE_TOKEN_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub token_url: Option<String>,
    /// Key of the space-separated audiences of the app's Ready grants. Default
    /// `KINDE_AUDIENCE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub audience: Option<String>,
    /// Keys left out of the Secret: `tokenUrl`, `audience`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub omit: Vec<OptionalKey>,
}

impl SecretKeys {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Settings of the tokens Kinde issues for the application.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokensSpec {
    /// Lifetime of the access tokens Kinde issues with these credentials, as a Go duration
    /// in whole seconds, from `1m` to `24h` (`15m`, `1h`). Unset: Kinde's setting is left
    /// as it is. Removing it later also leaves the last value in Kinde.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::crd::DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(
        "duration(self) >= duration('1m') && duration(self) <= duration('24h')"
    ).message("spec.tokens.accessTokenLifetime must be from 1m to 24h"))]
    pub access_token_lifetime: Option<String>,
}

/// Shortest `spec.tokens.accessTokenLifetime`: every token is a client-credentials request
/// (Kinde bills M2M tokens), so a tiny lifetime multiplies them.
pub const MIN_ACCESS_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);
/// Longest `spec.tokens.accessTokenLifetime`: Kinde advises against access tokens living
/// longer than a day.
pub const MAX_ACCESS_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(86_400);

impl TokensSpec {
    /// `accessTokenLifetime` in seconds, `None` when unset; an error names the field.
    pub fn access_token_lifetime(&self) -> anyhow::Result<Option<u64>> {
        let Some(text) = &self.access_token_lifetime else {
            return Ok(None);
        };
        let field = "spec.tokens.accessTokenLifetime";
        let d = super::parse_duration(text).map_err(|e| e.context(field))?;
        anyhow::ensure!(
            d.subsec_nanos() == 0,
            "{field} must be whole seconds (Kinde takes seconds), got {text:?}"
        );
        anyhow::ensure!(
            (MIN_ACCESS_TOKEN_LIFETIME..=MAX_ACCESS_TOKEN_LIFETIME).contains(&d),
            "{field} must be from 1m to 24h, got {text:?}"
        );
        Ok(Some(d.as_secs()))
    }
}

/// Credential rotation. Rotation replaces the Kinde application by a successor (Kinde has no
/// secret-rotation call); the predecessor keeps working for `overlap`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RotationSpec {
    /// How long the previous credentials keep working after a rotation, as a Go duration
    /// (`30m`, `1h`, `0s` for none). Defaults to `1h`.
    #[serde(default = "default_overlap")]
    #[schemars(regex(pattern = crate::crd::DURATION_PATTERN))]
    pub overlap: String,

    /// Rotate on a schedule, this long after the previous rotation (or creation), as a Go
    /// duration (`720h`). Unset: rotate only on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::crd::DURATION_PATTERN))]
    pub every: Option<String>,
}

fn default_overlap() -> String {
    DEFAULT_ROTATION_OVERLAP.to_owned()
}

impl Default for RotationSpec {
    fn default() -> Self {
        Self {
            overlap: default_overlap(),
            every: None,
        }
    }
}

impl RotationSpec {
    /// `overlap` parsed; an error names the field.
    pub fn overlap(&self) -> anyhow::Result<std::time::Duration> {
        super::parse_duration(&self.overlap).map_err(|e| e.context("spec.rotation.overlap"))
    }

    /// `every` parsed, `None` when unset; an error names the field. A zero interval is an
    /// error (it would rotate continuously).
    pub fn every(&self) -> anyhow::Result<Option<std::time::Duration>> {
        let Some(every) = &self.every else {
            return Ok(None);
        };
        let every = super::parse_duration(every).map_err(|e| e.context("spec.rotation.every"))?;
        anyhow::ensure!(
            !every.is_zero(),
            "spec.rotation.every must be greater than zero"
        );
        Ok(Some(every))
    }
}

/// Observed state of an M2MApplication. Never holds the client secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct M2MApplicationStatus {
    /// `Ready` and `Synced` conditions, with reason, message and observedGeneration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` the status was last computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Id of the current Kinde application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_id: Option<String>,

    /// Client ID of the current Kinde application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,

    /// Name of the Secret holding the current credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// When the credentials were last rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,

    /// The value of the `m2m.kinde-operator.io/rotate-requested-at` annotation that was last
    /// handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_rotate_request: Option<String>,

    /// Predecessor applications still working after a rotation, until `retireAt`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring: Vec<RetiringCredentials>,

    /// When the next scheduled rotation is due (only with `spec.rotation.every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Time>,

    /// Id of the Kinde application this object adopted (`external-id`), kept after the
    /// annotation is removed: an adopted application is never deleted unless the cluster's
    /// adoption policy allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_id: Option<String>,

    /// `spec.organizationCode` the application was created with (immutable: a changed spec
    /// is refused, also on servers without CEL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_code: Option<String>,

    /// A rotation's successor created but not yet switched to: recorded before it is
    /// authorized, so a rotation that keeps failing (or is superseded by a new request)
    /// never leaves an authorized application behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_successor: Option<PendingSuccessor>,

    /// The token settings last applied to the current application
    /// (`updateApplicationTokens`): Kinde's `getApplication` does not return them, so this
    /// record is how the operator knows they are in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_tokens: Option<AppliedTokens>,

    /// The connection the Kinde object was made through (`default`,
    /// `KindeConnection/<name>` or `ClusterKindeConnection/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,

    /// Since when a create of this object's Kinde application had an unknown outcome
    /// (timeout, lost response): Kinde may still process it later, so until this is
    /// cleared the operator keeps looking for, and deletes, applications carrying this
    /// object's marker that it does not use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed_create_since: Option<Time>,

    /// The Kinde application on which this object's owner key
    /// (`kmo/<installation>/<namespace>/<name>`, Kinde application property `kmo_owner`)
    /// is recorded: how the object finds its application again when it is re-created
    /// from the same manifest without status (a cluster rebuilt from Git, a restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_recorded_on: Option<String>,
}

/// Token settings applied in Kinde, and to which application.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppliedTokens {
    /// Id of the Kinde application they were applied to.
    pub application_id: String,
    /// The access-token lifetime applied, in seconds.
    pub access_token_lifetime_seconds: u64,
}

/// A rotation's successor application, recorded before it is authorized.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingSuccessor {
    /// Id of the successor Kinde application.
    pub application_id: String,
    /// Client ID of the successor Kinde application.
    pub client_id: String,
    /// The rotation it was created for (its marker key).
    pub rotation: String,
}

/// A predecessor Kinde application kept working after a rotation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetiringCredentials {
    /// Id of the predecessor Kinde application.
    pub application_id: String,
    /// Client ID of the predecessor Kinde application.
    pub client_id: String,
    /// When the predecessor is disconnected and deleted.
    pub retire_at: Time,
}

impl M2MApplication {
    /// The Kinde display name: `spec.displayName`, defaulting to `<namespace>/<name>`.
    pub fn display_name(&self) -> String {
        self.spec
            .display_name
            .clone()
            .unwrap_or_else(|| match self.namespace() {
                Some(ns) => format!("{ns}/{}", self.name_any()),
                None => self.name_any(),
            })
    }

    /// Name of the credentials Secret: `spec.secret.name`, defaulting to
    /// `<metadata.name>-credentials`.
    pub fn secret_name(&self) -> String {
        self.spec
            .secret
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-credentials", self.name_any()))
    }

    /// The rotate request not handled yet: the `rotate-requested-at` annotation when set,
    /// not blank, and different from `status.lastHandledRotateRequest`.
    pub fn pending_rotate_request(&self) -> Option<&str> {
        let requested = self
            .annotations()
            .get(super::ROTATE_REQUESTED_AT_ANNOTATION)
            .filter(|v| !v.trim().is_empty())?;
        let handled = self
            .status
            .as_ref()
            .and_then(|s| s.last_handled_rotate_request.as_ref());
        (handled != Some(requested)).then_some(requested.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let mut app = M2MApplication::new("acme", M2MApplicationSpec::default());
        app.metadata.namespace = Some("customers".into());
        assert_eq!(app.display_name(), "customers/acme");
        assert_eq!(app.secret_name(), "acme-credentials");
        assert_eq!(
            app.spec.rotation.overlap().unwrap(),
            std::time::Duration::from_secs(3600)
        );
        assert_eq!(app.spec.rotation.every().unwrap(), None);

        app.spec.display_name = Some("Acme Corp".into());
        app.spec.secret.name = Some("kinde".into());
        assert_eq!(app.display_name(), "Acme Corp");
        assert_eq!(app.secret_name(), "kinde");
    }

    #[test]
    fn rotation_parsing() {
        let spec: M2MApplicationSpec =
            serde_json::from_value(serde_json::json!({"rotation": {"every": "720h"}})).unwrap();
        assert_eq!(spec.rotation.overlap, "1h");
        assert_eq!(
            spec.rotation.every().unwrap(),
            Some(std::time::Duration::from_secs(720 * 3600))
        );
        let zero = RotationSpec {
            overlap: "0s".into(),
            every: Some("0s".into()),
        };
        assert_eq!(zero.overlap().unwrap(), std::time::Duration::ZERO);
        let err = zero.every().unwrap_err();
        assert!(err.to_string().contains("spec.rotation.every"), "{err}");
        let bad = RotationSpec {
            overlap: "1d".into(),
            every: None,
        };
        assert!(format!("{:#}", bad.overlap().unwrap_err()).contains("spec.rotation.overlap"));
    }

    #[test]
    fn pending_rotate_request() {
        let mut app = M2MApplication::new("acme", M2MApplicationSpec::default());
        assert_eq!(app.pending_rotate_request(), None);
        app.annotations_mut().insert(
            super::super::ROTATE_REQUESTED_AT_ANNOTATION.into(),
            " ".into(),
        );
        assert_eq!(app.pending_rotate_request(), None);
        app.annotations_mut().insert(
            super::super::ROTATE_REQUESTED_AT_ANNOTATION.into(),
            "2026-01-01".into(),
        );
        assert_eq!(app.pending_rotate_request(), Some("2026-01-01"));
        app.status = Some(M2MApplicationStatus {
            last_handled_rotate_request: Some("2026-01-01".into()),
            ..Default::default()
        });
        assert_eq!(app.pending_rotate_request(), None);
    }
}

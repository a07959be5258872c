//! `M2MApplication` (short name `m2mapp`): one Kinde machine-to-machine application and its
//! credentials Secret.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema, ResourceExt};
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

    /// What happens to the Kinde application when this resource is deleted. When unset:
    /// `Delete` for an application the operator created, `Orphan` for an adopted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// The credentials Secret (keys `KINDE_DOMAIN`, `KINDE_CLIENT_ID`, `KINDE_CLIENT_SECRET`,
/// `KINDE_TOKEN_URL`, `KINDE_AUDIENCE`).
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

    /// Since when a create of this object's Kinde application had an unknown outcome
    /// (timeout, lost response): Kinde may still process it later, so until this is
    /// cleared the operator keeps looking for, and deletes, applications carrying this
    /// object's marker that it does not use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed_create_since: Option<Time>,
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

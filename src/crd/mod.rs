//! The operator's custom resources: `ApiRegistration`, `M2MApplication` and `ApiGrant`
//! (group [`GROUP`], version [`VERSION`]).
//!
//! The Rust types are the single source of truth for the CRDs: `kinde-m2m-operator crdgen`
//! renders [`crds()`] into `crds/` and `charts/kinde-m2m-operator/crds/` (see
//! `scripts/generate-crds`), and `tests/crd_drift.rs` fails when the committed YAML drifts.
//!
//! Schema validation (lengths, patterns, enums, unique list keys) and CEL
//! `x-kubernetes-validations` (immutability, cross-field rules) live on the types, so the
//! apiserver rejects bad specs before the operator sees them. Kubernetes v1.20 ignores
//! (and its kubectl refuses) `x-kubernetes-validations`: apply the CRDs with
//! `--validate=false` there. The operator re-checks everything regardless.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, Resource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod api_grant;
mod api_registration;
mod connection;
mod m2m_application;

pub use api_grant::{ApiGrant, ApiGrantSpec, ApiGrantStatus, ApiReference, ApplicationReference};
pub use api_registration::{
    ApiRegistration, ApiRegistrationSpec, ApiRegistrationStatus, ApiScope, GrantFrom, GrantPolicy,
    ScopeStatus,
};
pub use connection::{
    BusinessSpec, ClientSettings, ClusterKindeConnection, ClusterKindeConnectionSpec,
    ConnectionKind, ConnectionRef, ConnectionStatus, CredentialsRef, DEFAULT_CONNECTION,
    KindeConnection, KindeConnectionSpec, RateStatus, connection_label, connection_of,
    parse_connection_label,
};
pub use m2m_application::{
    AppliedTokens, DEFAULT_KEY_AUDIENCE, DEFAULT_KEY_CLIENT_ID, DEFAULT_KEY_CLIENT_SECRET,
    DEFAULT_KEY_DOMAIN, DEFAULT_KEY_TOKEN_URL, DEFAULT_ROTATION_OVERLAP, M2MApplication,
    M2MApplicationSpec, M2MApplicationStatus, MAX_ACCESS_TOKEN_LIFETIME, MIN_ACCESS_TOKEN_LIFETIME,
    OptionalKey, PendingSuccessor, RetiringCredentials, RotationSpec, SecretKeys, SecretSpec,
    TokensSpec,
};

/// API group of every resource of the operator.
pub const GROUP: &str = "m2m.kinde-operator.io";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every resource of the operator.
pub const API_VERSION: &str = "m2m.kinde-operator.io/v1alpha1";
/// `kubectl get kinde` lists all three kinds.
pub const CATEGORY: &str = "kinde";

/// Annotation: adopt the existing Kinde application or API with this id instead of creating one.
pub const EXTERNAL_ID_ANNOTATION: &str = "m2m.kinde-operator.io/external-id";
/// Annotation (ApiRegistration): `adopt-or-create` takes an existing Kinde API with the
/// spec's audience as this object's own (as if it had created it) instead of refusing it as
/// `AudienceInUse`: how a cluster rebuilt from Git gets its APIs back. Only where the
/// cluster's adoption policy admits the namespace; never the Management API, never an API
/// another ApiRegistration holds.
pub const ADOPTION_POLICY_ANNOTATION: &str = "m2m.kinde-operator.io/adoption-policy";
/// The [`ADOPTION_POLICY_ANNOTATION`] value that adopts or creates.
pub const ADOPT_OR_CREATE: &str = "adopt-or-create";
/// Annotation: `"true"` stops all Kinde writes for the object until removed.
pub const PAUSED_ANNOTATION: &str = "m2m.kinde-operator.io/paused";
/// Annotation (M2MApplication): any new value requests a rotation; echoed in
/// `status.lastHandledRotateRequest` once handled.
pub const ROTATE_REQUESTED_AT_ANNOTATION: &str = "m2m.kinde-operator.io/rotate-requested-at";
/// Label key put on everything the operator creates in Kubernetes (the credentials Secret).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "kinde-m2m-operator";

/// Go `time.ParseDuration` syntax (positive, at least one unit), as accepted by
/// `spec.rotation.overlap` and `spec.rotation.every`. Parse with [`parse_duration`].
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";
/// A Kubernetes object name (DNS-1123 subdomain).
pub const DNS1123_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A namespace name (DNS-1123 label).
pub const DNS1123_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A Kinde scope key: no whitespace.
pub const SCOPE_KEY_PATTERN: &str = r"^\S+$";

/// What happens to the Kinde object when this resource is deleted: `Delete` it or leave it
/// (`Orphan`). When unset: `Delete` for objects the operator created, `Orphan` for adopted
/// ones (annotation `m2m.kinde-operator.io/external-id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the Kinde object.
    Delete,
    /// Leave the Kinde object as it is.
    Orphan,
}

/// Annotation helpers shared by the three kinds.
pub trait KindeAnnotations: Resource {
    /// The Kinde id from [`EXTERNAL_ID_ANNOTATION`], if set and not blank.
    fn external_id(&self) -> Option<&str> {
        annotation(self, EXTERNAL_ID_ANNOTATION)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// Whether [`ADOPTION_POLICY_ANNOTATION`] asks for [`ADOPT_OR_CREATE`].
    fn adopts_or_creates(&self) -> bool {
        annotation(self, ADOPTION_POLICY_ANNOTATION).is_some_and(|v| v.trim() == ADOPT_OR_CREATE)
    }

    /// Whether [`PAUSED_ANNOTATION`] is `"true"` (case-insensitive).
    fn is_paused(&self) -> bool {
        annotation(self, PAUSED_ANNOTATION).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }
}

impl KindeAnnotations for ApiRegistration {}
impl KindeAnnotations for M2MApplication {}
impl KindeAnnotations for ApiGrant {}

fn annotation<'a, K: Resource + ?Sized>(obj: &'a K, key: &str) -> Option<&'a str> {
    obj.meta()
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Parse a Go-style duration (`"1h"`, `"90m"`, `"1h30m"`, `"0s"`, `"1.5h"`), the syntax of
/// [`DURATION_PATTERN`]. Negative durations are refused.
pub fn parse_duration(s: &str) -> anyhow::Result<std::time::Duration> {
    let parsed: kube::core::Duration = s
        .parse()
        .with_context(|| format!("invalid duration {s:?}"))?;
    anyhow::ensure!(!parsed.is_negative(), "negative duration {s:?}");
    Ok(parsed.into())
}

/// Every CRD of the operator, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        ApiRegistration::crd(),
        M2MApplication::crd(),
        ApiGrant::crd(),
        KindeConnection::crd(),
        ClusterKindeConnection::crd(),
    ]
}

const GENERATED_HEADER: &str = "# Generated by `kinde-m2m-operator crdgen` (scripts/generate-crds) from src/crd/. Do not edit.\n";

/// One YAML file per CRD: `(file name, content)`, file name `<plural>.<group>.yaml`.
pub fn crd_files() -> anyhow::Result<BTreeMap<String, String>> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().context("CRD without a name")?;
            let yaml =
                serde_yaml::to_string(&crd).with_context(|| format!("serializing CRD {name}"))?;
            Ok((format!("{name}.yaml"), format!("{GENERATED_HEADER}{yaml}")))
        })
        .collect()
}

/// Every CRD of the operator as one multi-document YAML stream.
pub fn crds_yaml() -> anyhow::Result<String> {
    Ok(crd_files()?
        .into_values()
        .map(|yaml| format!("---\n{yaml}"))
        .collect::<String>())
}

/// Write [`crd_files()`] into `dir` (created if missing); returns the written paths.
pub fn write_crd_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crd_files()?
        .into_iter()
        .map(|(name, yaml)| {
            let path = dir.join(name);
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        let cases = [
            ("0s", 0),
            ("1h", 3600),
            ("90m", 5400),
            ("1h30m", 5400),
            ("1.5h", 5400),
        ];
        for (input, secs) in cases {
            assert_eq!(
                parse_duration(input).unwrap(),
                std::time::Duration::from_secs(secs),
                "{input}"
            );
        }
        assert_eq!(
            parse_duration("250ms").unwrap(),
            std::time::Duration::from_millis(250)
        );
        assert!(parse_duration("-1h").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn annotations_are_read() {
        let mut app = M2MApplication::new("acme", M2MApplicationSpec::default());
        assert!(!app.is_paused());
        assert_eq!(app.external_id(), None);
        app.metadata.annotations = Some(BTreeMap::from([
            (PAUSED_ANNOTATION.to_owned(), "True".to_owned()),
            (EXTERNAL_ID_ANNOTATION.to_owned(), " abc123 ".to_owned()),
        ]));
        assert!(app.is_paused());
        assert_eq!(app.external_id(), Some("abc123"));
    }

    #[test]
    fn crd_names_and_files() {
        let files = crd_files().unwrap();
        let names: Vec<_> = files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "apigrants.m2m.kinde-operator.io.yaml",
                "apiregistrations.m2m.kinde-operator.io.yaml",
                "clusterkindeconnections.m2m.kinde-operator.io.yaml",
                "kindeconnections.m2m.kinde-operator.io.yaml",
                "m2mapplications.m2m.kinde-operator.io.yaml",
            ]
        );
        for crd in crds() {
            assert_eq!(crd.spec.group, GROUP);
            let cluster_scoped = crd.spec.names.kind == "ClusterKindeConnection";
            assert_eq!(
                crd.spec.scope,
                if cluster_scoped {
                    "Cluster"
                } else {
                    "Namespaced"
                }
            );
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(&[CATEGORY.to_owned()][..])
            );
            assert_eq!(crd.spec.versions.len(), 1);
            assert_eq!(crd.spec.versions[0].name, VERSION);
        }
    }
}

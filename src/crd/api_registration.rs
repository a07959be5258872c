//! `ApiRegistration` (short name `kapi`): a Kinde API (resource server) and its scopes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{
    CustomResource, KubeSchema, ResourceExt,
    core::{Selector, SelectorExt},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DeletionPolicy;

/// A Kinde API (resource server) and its scopes.
///
/// `audience` and `displayName` are immutable (Kinde cannot update an API): changing them
/// needs a delete and re-create of the resource.
// Every `printcolumn(...)` repeats `type_ = ..`: not a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "m2m.kinde-operator.io",
    version = "v1alpha1",
    kind = "ApiRegistration",
    namespaced,
    status = "ApiRegistrationStatus",
    derive = "PartialEq",
    shortname = "kapi",
    category = "kinde",
    doc = "A Kinde API (resource server) and its scopes, and which namespaces' ApiGrants may use it.",
    printcolumn(name = "Audience", type_ = "string", json_path = ".spec.audience"),
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
    "has(self.displayName) == has(oldSelf.displayName) && (!has(self.displayName) || self.displayName == oldSelf.displayName)"
).message("spec.displayName is immutable (Kinde cannot rename an API): delete and re-create the ApiRegistration to change it"))]
#[serde(rename_all = "camelCase")]
pub struct ApiRegistrationSpec {
    /// Name of the API in the Kinde dashboard (1-64 characters). Defaults to
    /// `metadata.name`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub display_name: Option<String>,

    /// The API's audience (Kinde "API identifier"), e.g. `https://api.example.com`: the
    /// `aud` of the tokens Kinde issues for it (1-64 characters, unique in Kinde). Immutable.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "spec.audience is immutable (Kinde cannot change an API's audience): delete and re-create the ApiRegistration to change it"
    ))]
    pub audience: String,

    /// The API's scopes, unique by `key`. Adding, removing and changing descriptions
    /// converge in Kinde.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["key".into()]))]
    pub scopes: Vec<ApiScope>,

    /// Which namespaces' ApiGrants may reference this API. Defaults to `from: Same`.
    #[serde(default)]
    pub grant_policy: GrantPolicy,

    /// What happens to the Kinde API when this resource is deleted. When unset: `Delete` for
    /// an API the operator created, `Orphan` for an adopted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// The Kinde business this object's Kinde object lives in: a `KindeConnection` of this
    /// namespace or a `ClusterKindeConnection` admitting it. Unset: the operator's own
    /// (`--kinde-domain`). Fixed once the Kinde object exists (`status.connection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<crate::crd::ConnectionRef>,
}

/// One scope (permission) of a Kinde API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiScope {
    /// The scope key as it appears in tokens' `scope` claim, e.g. `read:users`
    /// (1-64 characters, no whitespace).
    #[schemars(length(min = 1, max = 64), regex(pattern = crate::crd::SCOPE_KEY_PATTERN))]
    pub key: String,

    /// Human-readable description shown in the Kinde dashboard. Defaults to empty.
    // No schema default: kube-apiserver v1.20 rejects `default: ""` ("must be of type string").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Which namespaces' ApiGrants may reference an ApiRegistration (in the style of Gateway API
/// `allowedRoutes`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new(
    "(has(self.from) && self.from == 'Selector') == has(self.namespaceSelector)"
).message("spec.grantPolicy.namespaceSelector must be set when spec.grantPolicy.from is Selector, and only then"))]
#[serde(rename_all = "camelCase")]
pub struct GrantPolicy {
    /// `Same` (default): only ApiGrants in this ApiRegistration's namespace. `All`: ApiGrants
    /// in any namespace. `Selector`: ApiGrants in namespaces matching `namespaceSelector`.
    #[serde(default)]
    pub from: GrantFrom,

    /// Labels of the namespaces whose ApiGrants may reference this API. Required when
    /// `from` is `Selector`, forbidden otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// Namespaces admitted by a [`GrantPolicy`].
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GrantFrom {
    /// Only the ApiRegistration's own namespace.
    #[default]
    Same,
    /// Every namespace.
    All,
    /// Namespaces matching `namespaceSelector`.
    Selector,
}

/// Observed state of an ApiRegistration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiRegistrationStatus {
    /// `Ready` and `Synced` conditions, with reason, message and observedGeneration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` the status was last computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Id of the Kinde API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_id: Option<String>,

    /// Audience of the Kinde API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,

    /// The API's scopes as they exist in Kinde, with their Kinde ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<ScopeStatus>,

    /// Id of the Kinde API this object adopted (`external-id`), kept after the annotation
    /// is removed: an adopted API stays adopted (never deleted unless the cluster's
    /// adoption policy allows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_id: Option<String>,

    /// The connection the Kinde object was made through (`default`,
    /// `KindeConnection/<name>` or `ClusterKindeConnection/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
}

/// A scope as it exists in Kinde.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScopeStatus {
    /// The scope key.
    pub key: String,
    /// Kinde's id of the scope.
    pub id: String,
}

impl ApiRegistration {
    /// The Kinde display name: `spec.displayName`, defaulting to `metadata.name`.
    pub fn display_name(&self) -> String {
        self.spec
            .display_name
            .clone()
            .unwrap_or_else(|| self.name_any())
    }

    /// The spec's scope keys, in spec order.
    pub fn scope_keys(&self) -> impl Iterator<Item = &str> {
        self.spec.scopes.iter().map(|s| s.key.as_str())
    }

    /// Whether the spec declares a scope with this key.
    pub fn has_scope(&self, key: &str) -> bool {
        self.scope_keys().any(|k| k == key)
    }
}

impl GrantPolicy {
    /// Whether an ApiGrant in `grant_namespace` (whose labels are `grant_namespace_labels`)
    /// may reference an ApiRegistration living in `api_namespace`.
    ///
    /// An invalid selector, or `Selector` without one, admits nothing (fail closed); the CEL
    /// rule keeps the latter from being stored on servers that enforce it.
    pub fn permits(
        &self,
        api_namespace: &str,
        grant_namespace: &str,
        grant_namespace_labels: &BTreeMap<String, String>,
    ) -> bool {
        match self.from {
            GrantFrom::Same => api_namespace == grant_namespace,
            GrantFrom::All => true,
            GrantFrom::Selector => self
                .namespace_selector
                .clone()
                .and_then(|s| Selector::try_from(s).ok())
                .is_some_and(|s| s.matches(grant_namespace_labels)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn display_name_defaults_to_metadata_name() {
        let mut api = ApiRegistration::new("example-api", ApiRegistrationSpec::default());
        assert_eq!(api.display_name(), "example-api");
        api.spec.display_name = Some("Example".into());
        assert_eq!(api.display_name(), "Example");
    }

    #[test]
    fn grant_policy_same_all_selector() {
        let same = GrantPolicy::default();
        assert!(same.permits("platform", "platform", &labels(&[])));
        assert!(!same.permits("platform", "acme", &labels(&[])));

        let all = GrantPolicy {
            from: GrantFrom::All,
            namespace_selector: None,
        };
        assert!(all.permits("platform", "acme", &labels(&[])));

        let selector = GrantPolicy {
            from: GrantFrom::Selector,
            namespace_selector: Some(LabelSelector {
                match_labels: Some(labels(&[("kinde-m2m-operator.io/customer", "true")])),
                ..Default::default()
            }),
        };
        assert!(selector.permits(
            "platform",
            "acme",
            &labels(&[("kinde-m2m-operator.io/customer", "true")])
        ));
        assert!(!selector.permits(
            "platform",
            "acme",
            &labels(&[("kinde-m2m-operator.io/customer", "no")])
        ));
        // The selector decides, even for the API's own namespace.
        assert!(!selector.permits("platform", "platform", &labels(&[])));

        let missing = GrantPolicy {
            from: GrantFrom::Selector,
            namespace_selector: None,
        };
        assert!(!missing.permits("platform", "acme", &labels(&[])));
    }

    #[test]
    fn grant_policy_defaults_when_omitted() {
        let spec: ApiRegistrationSpec =
            serde_json::from_value(serde_json::json!({"audience": "a"})).unwrap();
        assert_eq!(spec.grant_policy.from, GrantFrom::Same);
        assert!(spec.scopes.is_empty());
    }
}

//! `ApiGrant` (short name `apigrant`): authorizes one M2MApplication for one
//! ApiRegistration with scopes. Deleting it cuts access.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema, ResourceExt, runtime::reflector::ObjectRef};

use super::{ApiRegistration, M2MApplication};
use serde::{Deserialize, Serialize};

/// Authorizes one M2MApplication for one ApiRegistration with scopes.
// Every `printcolumn(...)` repeats `type_ = ..`: not a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "m2m.kinde-operator.io",
    version = "v1alpha1",
    kind = "ApiGrant",
    namespaced,
    status = "ApiGrantStatus",
    derive = "PartialEq",
    shortname = "apigrant",
    category = "kinde",
    doc = "Authorizes an M2MApplication for an ApiRegistration with scopes; deleting it cuts access.",
    printcolumn(
        name = "Application",
        type_ = "string",
        json_path = ".spec.applicationRef.name"
    ),
    printcolumn(name = "API", type_ = "string", json_path = ".spec.apiRef.name"),
    printcolumn(name = "Audience", type_ = "string", json_path = ".status.audience"),
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
#[serde(rename_all = "camelCase")]
pub struct ApiGrantSpec {
    /// The M2MApplication to authorize, in the grant's namespace.
    pub application_ref: ApplicationReference,

    /// The ApiRegistration to authorize the application for. Another namespace is allowed
    /// only where the ApiRegistration's `grantPolicy` admits the grant's namespace.
    pub api_ref: ApiReference,

    /// Scope keys to grant; each must exist on the ApiRegistration. Adding and removing
    /// converge in Kinde.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 64), regex(pattern = crate::crd::SCOPE_KEY_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub scopes: Vec<String>,
}

/// Reference to an M2MApplication in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationReference {
    /// Name of the M2MApplication.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = crate::crd::DNS1123_SUBDOMAIN_PATTERN)
    )]
    pub name: String,
}

/// Reference to an ApiRegistration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiReference {
    /// Name of the ApiRegistration.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = crate::crd::DNS1123_SUBDOMAIN_PATTERN)
    )]
    pub name: String,

    /// Namespace of the ApiRegistration. Defaults to the grant's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = crate::crd::DNS1123_LABEL_PATTERN)
    )]
    pub namespace: Option<String>,
}

/// Observed state of an ApiGrant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiGrantStatus {
    /// `Ready` and `Synced` conditions, with reason, message and observedGeneration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` the status was last computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Id of the authorized Kinde application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_id: Option<String>,

    /// Id of the Kinde API the application is authorized for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_id: Option<String>,

    /// Audience of the Kinde API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,

    /// Scope keys currently granted in Kinde.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted_scopes: Vec<String>,

    /// Kinde ids of the scopes granted (a scope re-created in Kinde under a new id must be
    /// granted again: Kinde dropped the application's grant of the old one with it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted_scope_ids: Vec<String>,

    /// The connection the Kinde object was made through (`default`,
    /// `KindeConnection/<name>` or `ClusterKindeConnection/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
}

impl ApiGrant {
    /// The referenced M2MApplication (in the grant's namespace).
    pub fn application_object_ref(&self) -> ObjectRef<M2MApplication> {
        let r = ObjectRef::new(&self.spec.application_ref.name);
        match self.namespace() {
            Some(ns) => r.within(&ns),
            None => r,
        }
    }

    /// The referenced ApiRegistration (namespace resolved by [`Self::api_namespace`]).
    pub fn api_object_ref(&self) -> ObjectRef<ApiRegistration> {
        let r = ObjectRef::new(&self.spec.api_ref.name);
        match self.api_namespace() {
            Some(ns) => r.within(&ns),
            None => r,
        }
    }

    /// Namespace of the referenced ApiRegistration: `spec.apiRef.namespace`, defaulting to
    /// the grant's own namespace (`None` only for an object without a namespace).
    pub fn api_namespace(&self) -> Option<String> {
        self.spec
            .api_ref
            .namespace
            .clone()
            .or_else(|| self.namespace())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn api_namespace_defaults_to_own() {
        let mut grant = ApiGrant::new(
            "acme-example-api",
            ApiGrantSpec {
                application_ref: ApplicationReference {
                    name: "acme".into(),
                },
                api_ref: ApiReference {
                    name: "example-api".into(),
                    namespace: None,
                },
                scopes: vec!["read:users".into()],
            },
        );
        grant.metadata.namespace = Some("acme".into());
        assert_eq!(grant.api_namespace().as_deref(), Some("acme"));
        assert_eq!(
            grant.api_object_ref(),
            ObjectRef::new("example-api").within("acme")
        );
        assert_eq!(
            grant.application_object_ref(),
            ObjectRef::new("acme").within("acme")
        );
        grant.spec.api_ref.namespace = Some("platform".into());
        assert_eq!(grant.api_namespace().as_deref(), Some("platform"));
        assert_eq!(
            grant.api_object_ref(),
            ObjectRef::new("example-api").within("platform")
        );
    }
}

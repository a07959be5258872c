//! Fixtures: the operator's three kinds built from the crate's own CR types
//! (`kinde_m2m_operator::crd`) and its annotation constants, never from re-typed YAML or
//! JSON, and one way to put them on a cluster ([`apply`], server-side apply).
//!
//! ```ignore
//! use crate::support::fixtures::{ApiFixture as _, AppFixture as _, GrantFixture as _, Meta as _};
//! use crate::support::fixtures::{api_grant, api_registration, m2m_application};
//!
//! ctx.apply(&[
//!     &api_registration("orders", "https://orders.example.com").with_scopes(&["read"]),
//!     &m2m_application("shop").with_display_name("Shop").paused(),
//!     &api_grant("shop-orders", "shop", "orders").with_scopes(&["read"]),
//! ])
//! .await?;
//! ```
//!
//! A field the types cannot express (an unknown enum value, a missing required field) is
//! what only a test of the schema itself sends: such a test keeps raw JSON for exactly the
//! broken field and says so (`tests/e2e/crds.rs`).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kinde_m2m_operator::crd::{
    ApiGrant, ApiGrantSpec, ApiReference, ApiRegistration, ApiRegistrationSpec, ApiScope,
    ApplicationReference, DeletionPolicy, EXTERNAL_ID_ANNOTATION, GrantFrom, GrantPolicy,
    M2MApplication, M2MApplicationSpec, PAUSED_ANNOTATION, ROTATE_REQUESTED_AT_ANNOTATION,
};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt as _};

use super::Kind;

/// The field manager of every fixture the tests apply.
pub const FIELD_MANAGER: &str = "e2e-tests";

// ---------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------

/// An ApiRegistration for `audience`, no scopes, grant policy `Same` (the CRD's defaults).
pub fn api_registration(name: &str, audience: &str) -> ApiRegistration {
    ApiRegistration::new(
        name,
        ApiRegistrationSpec {
            audience: audience.to_owned(),
            ..Default::default()
        },
    )
}

/// An M2MApplication with an empty spec (every field at the CRD's default).
pub fn m2m_application(name: &str) -> M2MApplication {
    M2MApplication::new(name, M2MApplicationSpec::default())
}

/// An ApiGrant of application `app` for API `api` (both in the grant's namespace), no scopes.
pub fn api_grant(name: &str, app: &str, api: &str) -> ApiGrant {
    ApiGrant::new(
        name,
        ApiGrantSpec {
            application_ref: ApplicationReference {
                name: app.to_owned(),
            },
            api_ref: ApiReference {
                name: api.to_owned(),
                namespace: None,
            },
            scopes: Vec::new(),
        },
    )
}

/// Metadata of the three kinds, with the crate's annotation keys.
pub trait Meta: Resource + Sized {
    /// Sets annotation `key` to `value`.
    fn with_annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations_mut()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// [`PAUSED_ANNOTATION`] `"true"`: no Kinde writes until removed.
    fn paused(self) -> Self {
        self.with_annotation(PAUSED_ANNOTATION, "true")
    }

    /// [`EXTERNAL_ID_ANNOTATION`]: adopt the Kinde object `id` instead of creating one.
    fn adopting(self, id: &str) -> Self {
        self.with_annotation(EXTERNAL_ID_ANNOTATION, id)
    }
}

impl Meta for ApiRegistration {}
impl Meta for M2MApplication {}
impl Meta for ApiGrant {}

/// ApiRegistration spec fields.
pub trait ApiFixture: Sized {
    /// Adds a scope with a description (empty: none).
    fn with_scope(self, key: &str, description: &str) -> Self;
    /// Adds scopes described by their own key.
    fn with_scopes(self, keys: &[&str]) -> Self;
    fn with_display_name(self, name: &str) -> Self;
    fn with_grant_from(self, from: GrantFrom) -> Self;
    /// `grantPolicy` `Selector` matching the namespaces labelled with all of `labels`.
    fn with_grant_selector(self, labels: &[(&str, &str)]) -> Self;
    fn with_deletion_policy(self, policy: DeletionPolicy) -> Self;
}

impl ApiFixture for ApiRegistration {
    fn with_scope(mut self, key: &str, description: &str) -> Self {
        self.spec.scopes.push(ApiScope {
            key: key.to_owned(),
            description: description.to_owned(),
        });
        self
    }

    fn with_scopes(self, keys: &[&str]) -> Self {
        keys.iter().fold(self, |api, key| api.with_scope(key, key))
    }

    fn with_display_name(mut self, name: &str) -> Self {
        self.spec.display_name = Some(name.to_owned());
        self
    }

    fn with_grant_from(mut self, from: GrantFrom) -> Self {
        self.spec.grant_policy = GrantPolicy {
            from,
            namespace_selector: None,
        };
        self
    }

    fn with_grant_selector(mut self, labels: &[(&str, &str)]) -> Self {
        self.spec.grant_policy = GrantPolicy {
            from: GrantFrom::Selector,
            namespace_selector: Some(LabelSelector {
                match_labels: Some(string_map(labels)),
                ..Default::default()
            }),
        };
        self
    }

    fn with_deletion_policy(mut self, policy: DeletionPolicy) -> Self {
        self.spec.deletion_policy = Some(policy);
        self
    }
}

/// M2MApplication spec fields (and its rotation annotation).
pub trait AppFixture: Sized {
    fn with_display_name(self, name: &str) -> Self;
    fn with_organization_code(self, code: &str) -> Self;
    fn with_deletion_policy(self, policy: DeletionPolicy) -> Self;
    /// `spec.rotation.overlap` (Go duration).
    fn with_overlap(self, overlap: &str) -> Self;
    /// `spec.rotation.every` (Go duration): scheduled rotation.
    fn with_rotation_every(self, every: &str) -> Self;
    /// A label of the credentials Secret (`spec.secret.labels`).
    fn with_secret_label(self, key: &str, value: &str) -> Self;
    /// [`ROTATE_REQUESTED_AT_ANNOTATION`]: a rotation request.
    fn rotate_requested(self, value: &str) -> Self;
}

impl AppFixture for M2MApplication {
    fn with_display_name(mut self, name: &str) -> Self {
        self.spec.display_name = Some(name.to_owned());
        self
    }

    fn with_organization_code(mut self, code: &str) -> Self {
        self.spec.organization_code = Some(code.to_owned());
        self
    }

    fn with_deletion_policy(mut self, policy: DeletionPolicy) -> Self {
        self.spec.deletion_policy = Some(policy);
        self
    }

    fn with_overlap(mut self, overlap: &str) -> Self {
        self.spec.rotation.overlap = overlap.to_owned();
        self
    }

    fn with_rotation_every(mut self, every: &str) -> Self {
        self.spec.rotation.every = Some(every.to_owned());
        self
    }

    fn with_secret_label(mut self, key: &str, value: &str) -> Self {
        self.spec
            .secret
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    fn rotate_requested(self, value: &str) -> Self {
        self.with_annotation(ROTATE_REQUESTED_AT_ANNOTATION, value)
    }
}

/// ApiGrant spec fields.
pub trait GrantFixture: Sized {
    fn with_scopes(self, scopes: &[&str]) -> Self;
    /// `spec.apiRef.namespace`: the API lives in another namespace.
    fn with_api_namespace(self, namespace: &str) -> Self;
}

impl GrantFixture for ApiGrant {
    fn with_scopes(mut self, scopes: &[&str]) -> Self {
        self.spec
            .scopes
            .extend(scopes.iter().map(|s| (*s).to_owned()));
        self
    }

    fn with_api_namespace(mut self, namespace: &str) -> Self {
        self.spec.api_ref.namespace = Some(namespace.to_owned());
        self
    }
}

fn string_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Applying
// ---------------------------------------------------------------------------------------

/// A fixture that can be applied; lets one [`apply`] take objects of different kinds.
pub trait Apply: Sync {
    /// Server-side applies the object into `namespace`.
    fn apply_to<'a>(
        &'a self,
        client: &'a kube::Client,
        namespace: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}

impl<K: Kind> Apply for K {
    fn apply_to<'a>(
        &'a self,
        client: &'a kube::Client,
        namespace: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let name = self.name_any();
            // Forced: a test that re-applies an object it (or the operator's user, in a
            // merge patch) changed since takes the fields back, as `kubectl apply` would.
            Api::<K>::namespaced(client.clone(), namespace)
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(self),
                )
                .await
                .map_err(|e| {
                    anyhow::anyhow!("applying {} {namespace}/{name}: {e}", K::kind(&()))
                })?;
            Ok(())
        })
    }
}

/// Applies `objects` into `namespace`, one after the other in the order given (an object
/// a later one references is created first, as one `kubectl apply -f` of them would).
pub async fn apply(
    client: &kube::Client,
    namespace: &str,
    objects: &[&dyn Apply],
) -> anyhow::Result<()> {
    for object in objects {
        object.apply_to(client, namespace).await?;
    }
    Ok(())
}

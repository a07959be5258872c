//! The credentials Secret of an M2MApplication (SPEC section 3), built as a pure value so the
//! controller only compares and applies it.
//!
//! Keys: `KINDE_DOMAIN`, `KINDE_CLIENT_ID`, `KINDE_CLIENT_SECRET`, `KINDE_TOKEN_URL`,
//! `KINDE_AUDIENCE` (space-separated audiences of the app's Ready grants): `envFrom` works
//! as is. `spec.secret.keys` renames them ([`KeyNames`]) and may leave the last two out.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use secrecy::{ExposeSecret, SecretString};

use crate::crd::{
    DEFAULT_KEY_AUDIENCE, DEFAULT_KEY_CLIENT_ID, DEFAULT_KEY_CLIENT_SECRET, DEFAULT_KEY_DOMAIN,
    DEFAULT_KEY_TOKEN_URL, OptionalKey, SecretKeys,
};
/// The label every Secret we write carries (user labels cannot override it).
pub use crate::crd::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
/// Kinde application id behind the Secret, for people and tools looking at the Secret alone
/// (which app to look up in the Kinde dashboard, which one a leaked secret belongs to).
const APPLICATION_ID_ANNOTATION: &str = "m2m.kinde-operator.io/application-id";

/// The names of the Secret's keys, resolved from `spec.secret.keys`; `None` = left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyNames {
    pub domain: String,
    pub client_id: String,
    pub client_secret: String,
    pub token_url: Option<String>,
    pub audience: Option<String>,
}

impl Default for KeyNames {
    fn default() -> Self {
        Self::from_spec(&SecretKeys::default())
    }
}

impl KeyNames {
    /// The names `spec.secret.keys` asks for, defaults filled in.
    pub fn from_spec(keys: &SecretKeys) -> Self {
        let name =
            |set: &Option<String>, default: &str| set.clone().unwrap_or_else(|| default.to_owned());
        let unless_omitted = |key: OptionalKey, set: &Option<String>, default: &str| {
            (!keys.omit.contains(&key)).then(|| name(set, default))
        };
        Self {
            domain: name(&keys.domain, DEFAULT_KEY_DOMAIN),
            client_id: name(&keys.client_id, DEFAULT_KEY_CLIENT_ID),
            client_secret: name(&keys.client_secret, DEFAULT_KEY_CLIENT_SECRET),
            token_url: unless_omitted(
                OptionalKey::TokenUrl,
                &keys.token_url,
                DEFAULT_KEY_TOKEN_URL,
            ),
            audience: unless_omitted(OptionalKey::Audience, &keys.audience, DEFAULT_KEY_AUDIENCE),
        }
    }

    /// Every key the Secret carries, with the spec field that names it.
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        let mut all = vec![
            ("spec.secret.keys.domain", self.domain.as_str()),
            ("spec.secret.keys.clientId", self.client_id.as_str()),
            ("spec.secret.keys.clientSecret", self.client_secret.as_str()),
        ];
        all.extend(
            self.token_url
                .as_deref()
                .map(|k| ("spec.secret.keys.tokenUrl", k)),
        );
        all.extend(
            self.audience
                .as_deref()
                .map(|k| ("spec.secret.keys.audience", k)),
        );
        all
    }

    /// What is wrong with these names for a Secret, naming the field: a key the API server
    /// would refuse, two keys with one name.
    pub fn problem(&self) -> Option<String> {
        let fields = self.fields();
        for (field, key) in &fields {
            if !crate::validation::is_secret_key(key) {
                return Some(format!(
                    "{field}: {key:?} is not a valid Secret key (1-253 characters of [-._a-zA-Z0-9], not \".\", not starting with \"..\")"
                ));
            }
        }
        for (i, (field, key)) in fields.iter().enumerate() {
            if let Some((other, _)) = fields[..i].iter().find(|(_, k)| k == key) {
                return Some(format!(
                    "{field} and {other} both name the Secret key {key:?}; each key needs its own name"
                ));
            }
        }
        None
    }
}

/// Everything that goes into the Secret.
pub struct Credentials<'a> {
    pub domain: &'a str,
    pub token_url: &'a str,
    pub application_id: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a SecretString,
    /// Audiences of the app's Ready grants; sorted and de-duplicated here.
    pub audiences: Vec<String>,
}

/// Where the Secret goes and what it carries besides the credentials.
pub struct Placement<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    /// Controller reference to the M2MApplication: garbage collection and ownership check.
    pub owner: OwnerReference,
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub annotations: Option<&'a BTreeMap<String, String>>,
    /// Names of the data keys.
    pub keys: &'a KeyNames,
}

/// Builds the desired Secret.
pub fn build(place: &Placement<'_>, creds: &Credentials<'_>) -> Secret {
    let mut labels = place.labels.cloned().unwrap_or_default();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    let mut annotations = place.annotations.cloned().unwrap_or_default();
    annotations.insert(
        APPLICATION_ID_ANNOTATION.into(),
        creds.application_id.into(),
    );

    let mut audiences = creds.audiences.clone();
    audiences.sort();
    audiences.dedup();
    let keys = place.keys;
    let mut data = BTreeMap::from([
        (keys.domain.clone(), bytes(creds.domain)),
        (keys.client_id.clone(), bytes(creds.client_id)),
        (
            keys.client_secret.clone(),
            bytes(creds.client_secret.expose_secret()),
        ),
    ]);
    if let Some(key) = &keys.token_url {
        data.insert(key.clone(), bytes(creds.token_url));
    }
    if let Some(key) = &keys.audience {
        data.insert(key.clone(), bytes(&audiences.join(" ")));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(place.name.to_owned()),
            namespace: Some(place.namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![place.owner.clone()]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The Secret the operator creates first (metadata only: owner and label), so that a
/// Secret someone else creates at the same moment makes the create fail instead of being
/// taken over by a server-side apply; the content follows in an apply that is conditional
/// on the placeholder's resourceVersion.
pub(crate) fn placeholder(desired: &Secret) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: desired.metadata.name.clone(),
            namespace: desired.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY_VALUE.to_owned(),
            )])),
            owner_references: desired.metadata.owner_references.clone(),
            ..ObjectMeta::default()
        },
        type_: desired.type_.clone(),
        ..Secret::default()
    }
}

/// True when the object with `existing` metadata is controlled by `owner` (same UID,
/// controller flag set).
pub(crate) fn is_owned_by(existing: &ObjectMeta, owner: &OwnerReference) -> bool {
    existing
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == owner.uid && r.controller == Some(true))
}

/// True when the object with `existing` metadata is controlled by an earlier object of
/// `owner`'s kind and name (same API group, another UID): a Secret restored from a backup
/// before its M2MApplication was, or kept while the M2MApplication was re-created from the
/// same manifest. Only an object of that name in the Secret's own namespace could have set
/// that reference, so taking such a Secret back reaches nothing another tenant owns; a
/// Secret with any other controller, or none, stays foreign.
pub(crate) fn left_by_earlier_incarnation(existing: &ObjectMeta, owner: &OwnerReference) -> bool {
    let group = |api_version: &str| api_version.split('/').next().map(str::to_owned);
    existing.owner_references.iter().flatten().any(|r| {
        r.controller == Some(true)
            && r.uid != owner.uid
            && r.kind == owner.kind
            && r.name == owner.name
            && group(&r.api_version) == group(&owner.api_version)
    })
}

/// True when `existing` lacks something `desired` sets: a data key or value, a label or
/// annotation we own, the type. Extra labels and annotations others added are left alone.
pub(crate) fn needs_update(existing: &Secret, desired: &Secret) -> bool {
    let subset = |want: &Option<BTreeMap<String, String>>,
                  have: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    existing.data != desired.data
        || existing.type_ != desired.type_
        || !subset(&desired.metadata.labels, &existing.metadata.labels)
        || !subset(
            &desired.metadata.annotations,
            &existing.metadata.annotations,
        )
        || desired
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| !is_owned_by(&existing.metadata, o))
}

/// Reads a key of a Secret as text (the client secret stays wrapped).
pub(crate) fn read_key(secret: &Secret, key: &str) -> Option<String> {
    let value = secret.data.as_ref()?.get(key)?;
    String::from_utf8(value.0.clone()).ok()
}

/// Whether a key of a Secret holds exactly `value` (compares bytes; copies nothing).
pub(crate) fn key_is(secret: &Secret, key: &str, value: &str) -> bool {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .is_some_and(|v| v.0 == value.as_bytes())
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "m2m.kinde-operator.io/v1alpha1".into(),
            kind: "M2MApplication".into(),
            name: "acme".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn only_a_secret_left_by_an_earlier_object_of_the_same_name_is_taken_back() {
        let meta_with = |r: OwnerReference| ObjectMeta {
            owner_references: Some(vec![r]),
            ..ObjectMeta::default()
        };
        let earlier = OwnerReference {
            uid: "uid-0".into(),
            api_version: "m2m.kinde-operator.io/v1beta1".into(),
            ..owner()
        };
        assert!(left_by_earlier_incarnation(
            &meta_with(earlier.clone()),
            &owner()
        ));
        assert!(
            !left_by_earlier_incarnation(&meta_with(owner()), &owner()),
            "the current owner is not an earlier one"
        );
        for (what, other) in [
            (
                "another name",
                OwnerReference {
                    name: "globex".into(),
                    ..earlier.clone()
                },
            ),
            (
                "another kind",
                OwnerReference {
                    kind: "ApiGrant".into(),
                    ..earlier.clone()
                },
            ),
            (
                "another group",
                OwnerReference {
                    api_version: "example.com/v1".into(),
                    ..earlier.clone()
                },
            ),
            (
                "not the controller",
                OwnerReference {
                    controller: None,
                    ..earlier.clone()
                },
            ),
        ] {
            assert!(
                !left_by_earlier_incarnation(&meta_with(other), &owner()),
                "{what}"
            );
        }
        assert!(
            !left_by_earlier_incarnation(&ObjectMeta::default(), &owner()),
            "no owner"
        );
    }

    fn desired(secret: &SecretString, audiences: Vec<String>) -> Secret {
        desired_with(secret, audiences, &KeyNames::default())
    }

    fn desired_with(secret: &SecretString, audiences: Vec<String>, keys: &KeyNames) -> Secret {
        let user_labels = BTreeMap::from([
            ("team".to_owned(), "acme".to_owned()),
            (MANAGED_BY_LABEL.to_owned(), "someone-else".to_owned()),
        ]);
        build(
            &Placement {
                name: "acme-credentials",
                namespace: "acme",
                owner: owner(),
                labels: Some(&user_labels),
                annotations: None,
                keys,
            },
            &Credentials {
                domain: "https://biz.kinde.com",
                token_url: "https://biz.kinde.com/oauth2/token",
                application_id: "app1",
                client_id: "app1",
                client_secret: secret,
                audiences,
            },
        )
    }

    #[test]
    fn has_the_documented_keys_labels_and_owner() {
        let secret = SecretString::from("s3cret");
        let s = desired(
            &secret,
            vec!["https://b".into(), "https://a".into(), "https://b".into()],
        );
        assert_eq!(
            read_key(&s, DEFAULT_KEY_DOMAIN).as_deref(),
            Some("https://biz.kinde.com")
        );
        assert_eq!(read_key(&s, DEFAULT_KEY_CLIENT_ID).as_deref(), Some("app1"));
        assert_eq!(
            read_key(&s, DEFAULT_KEY_CLIENT_SECRET).as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            read_key(&s, DEFAULT_KEY_TOKEN_URL).as_deref(),
            Some("https://biz.kinde.com/oauth2/token")
        );
        assert_eq!(
            read_key(&s, DEFAULT_KEY_AUDIENCE).as_deref(),
            Some("https://a https://b")
        );
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        let labels = s.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY_VALUE)
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("acme"));
        assert!(is_owned_by(&s.metadata, &owner()));
    }

    #[test]
    fn no_audience_is_an_empty_value() {
        let secret = SecretString::from("x");
        assert_eq!(
            read_key(&desired(&secret, vec![]), DEFAULT_KEY_AUDIENCE).as_deref(),
            Some("")
        );
    }

    #[test]
    fn detects_edits_but_tolerates_foreign_metadata() {
        let secret = SecretString::from("s3cret");
        let want = desired(&secret, vec!["https://a".into()]);
        let mut have = want.clone();
        assert!(!needs_update(&have, &want));

        have.metadata
            .labels
            .get_or_insert_default()
            .insert("extra".into(), "1".into());
        have.metadata
            .annotations
            .get_or_insert_default()
            .insert("reloader".into(), "x".into());
        assert!(
            !needs_update(&have, &want),
            "others' labels are not ours to remove"
        );

        let mut edited = have.clone();
        edited
            .data
            .get_or_insert_default()
            .insert(DEFAULT_KEY_CLIENT_SECRET.into(), bytes("tampered"));
        assert!(needs_update(&edited, &want));

        let mut extra_key = have.clone();
        extra_key
            .data
            .get_or_insert_default()
            .insert("NEW".into(), bytes("x"));
        assert!(needs_update(&extra_key, &want), "data is ours entirely");

        let mut unlabelled = have.clone();
        unlabelled.metadata.labels = None;
        assert!(needs_update(&unlabelled, &want));

        let mut orphaned = have;
        orphaned.metadata.owner_references = None;
        assert!(needs_update(&orphaned, &want));
    }

    #[test]
    fn foreign_secret_is_not_owned() {
        let secret = SecretString::from("x");
        let mut s = desired(&secret, vec![]);
        s.metadata.owner_references.get_or_insert_default()[0].uid = "other".into();
        assert!(!is_owned_by(&s.metadata, &owner()));
    }

    fn keys(spec: serde_json::Value) -> KeyNames {
        KeyNames::from_spec(&serde_json::from_value(spec).expect("keys"))
    }

    #[test]
    fn keys_are_renamed_and_optional_ones_left_out() {
        let secret = SecretString::from("s3cret");
        // Envoy Gateway / oauth2-proxy style.
        let names = keys(serde_json::json!({
            "clientId": "client-id", "clientSecret": "client-secret",
            "omit": ["audience", "tokenUrl"]
        }));
        let s = desired_with(&secret, vec!["https://a".into()], &names);
        let data: Vec<&str> = s.data.iter().flatten().map(|(k, _)| k.as_str()).collect();
        assert_eq!(data, ["KINDE_DOMAIN", "client-id", "client-secret"]);
        assert_eq!(read_key(&s, "client-id").as_deref(), Some("app1"));
        assert_eq!(read_key(&s, "client-secret").as_deref(), Some("s3cret"));
        assert_eq!(names.problem(), None);

        let renamed = keys(serde_json::json!({"audience": "aud", "tokenUrl": "token_url"}));
        let s = desired_with(&secret, vec!["https://a".into()], &renamed);
        assert_eq!(read_key(&s, "aud").as_deref(), Some("https://a"));
        assert_eq!(
            read_key(&s, "token_url").as_deref(),
            Some("https://biz.kinde.com/oauth2/token")
        );
        assert_eq!(read_key(&s, DEFAULT_KEY_AUDIENCE), None);
    }

    #[test]
    fn key_problems_name_the_field() {
        let clash = keys(serde_json::json!({"clientSecret": "KINDE_CLIENT_ID"}));
        let problem = clash.problem().unwrap_or_default();
        assert!(
            problem.contains("spec.secret.keys.clientSecret")
                && problem.contains("spec.secret.keys.clientId"),
            "{problem}"
        );
        // An omitted key frees its default name.
        let freed = keys(serde_json::json!({"clientId": "KINDE_AUDIENCE", "omit": ["audience"]}));
        assert_eq!(freed.problem(), None);
        for bad in ["a b", ".", "..", "..x", "k/v", ""] {
            let names = keys(serde_json::json!({"domain": bad}));
            let problem = names.problem().unwrap_or_default();
            assert!(
                problem.contains("spec.secret.keys.domain"),
                "{bad:?}: {problem}"
            );
        }
        let long = keys(serde_json::json!({"audience": "a".repeat(254)}));
        assert!(long.problem().is_some());
        assert_eq!(
            keys(serde_json::json!({"domain": ".dotfile"})).problem(),
            None
        );
    }
}

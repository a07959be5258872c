//! The credentials Secret of an M2MApplication (SPEC section 3), built as a pure value so the
//! controller only compares and applies it.
//!
//! Keys: `KINDE_DOMAIN`, `KINDE_CLIENT_ID`, `KINDE_CLIENT_SECRET`, `KINDE_TOKEN_URL`,
//! `KINDE_AUDIENCE` (space-separated audiences of the app's Ready grants): `envFrom` works
//! as is.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use secrecy::{ExposeSecret, SecretString};

/// The label every Secret we write carries (user labels cannot override it).
pub use crate::crd::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
/// Kinde application id behind the Secret, for people and tools looking at the Secret alone
/// (which app to look up in the Kinde dashboard, which one a leaked secret belongs to).
const APPLICATION_ID_ANNOTATION: &str = "m2m.kinde-operator.io/application-id";

const KEY_DOMAIN: &str = "KINDE_DOMAIN";
pub(crate) const KEY_CLIENT_ID: &str = "KINDE_CLIENT_ID";
pub(crate) const KEY_CLIENT_SECRET: &str = "KINDE_CLIENT_SECRET";
const KEY_TOKEN_URL: &str = "KINDE_TOKEN_URL";
pub(crate) const KEY_AUDIENCE: &str = "KINDE_AUDIENCE";

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
    let data = BTreeMap::from([
        (KEY_DOMAIN.to_owned(), bytes(creds.domain)),
        (KEY_CLIENT_ID.to_owned(), bytes(creds.client_id)),
        (
            KEY_CLIENT_SECRET.to_owned(),
            bytes(creds.client_secret.expose_secret()),
        ),
        (KEY_TOKEN_URL.to_owned(), bytes(creds.token_url)),
        (KEY_AUDIENCE.to_owned(), bytes(&audiences.join(" "))),
    ]);
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

    fn desired(secret: &SecretString, audiences: Vec<String>) -> Secret {
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
            read_key(&s, KEY_DOMAIN).as_deref(),
            Some("https://biz.kinde.com")
        );
        assert_eq!(read_key(&s, KEY_CLIENT_ID).as_deref(), Some("app1"));
        assert_eq!(read_key(&s, KEY_CLIENT_SECRET).as_deref(), Some("s3cret"));
        assert_eq!(
            read_key(&s, KEY_TOKEN_URL).as_deref(),
            Some("https://biz.kinde.com/oauth2/token")
        );
        assert_eq!(
            read_key(&s, KEY_AUDIENCE).as_deref(),
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
            read_key(&desired(&secret, vec![]), KEY_AUDIENCE).as_deref(),
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
            .insert(KEY_CLIENT_SECRET.into(), bytes("tampered"));
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
}

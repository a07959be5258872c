//! ApiRegistration decisions, pure: what a spec may be, which refusal an audience gets,
//! whether a failed create certainly made nothing, and how Kinde's scopes must change to
//! match the spec. Unit-tested with plain values; the effects are in `mod.rs`.

use crate::conditions::reasons;
use crate::controller::kernel::Outcome;
use crate::crd::{ApiRegistration, ApiRegistrationStatus};
use crate::kinde::types::ApiScope as KindeScope;

/// Checks what the schema may not have (servers without CEL, or edits bypassing it).
pub(super) fn validate(obj: &ApiRegistration, status: &ApiRegistrationStatus) -> Option<String> {
    let len = |s: &str| s.chars().count();
    let audience = &obj.spec.audience;
    if audience.trim().is_empty() || len(audience) > 64 {
        return Some(format!(
            "spec.audience must be 1-64 characters, got {}",
            len(audience)
        ));
    }
    let display = obj.display_name();
    if display.is_empty() || len(&display) > 64 {
        return Some("spec.displayName must be 1-64 characters".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in &obj.spec.scopes {
        if s.key.is_empty() || len(&s.key) > 64 || s.key.chars().any(char::is_whitespace) {
            return Some(format!(
                "spec.scopes key {:?} must be 1-64 characters without whitespace",
                s.key
            ));
        }
        if !seen.insert(s.key.as_str()) {
            return Some(format!("spec.scopes key {:?} appears twice", s.key));
        }
    }
    if status.api_id.is_some()
        && let Some(was) = &status.audience
        && was != audience
    {
        return Some(format!(
            "spec.audience is immutable (Kinde cannot change an API's audience): the Kinde API was registered for {was:?}; re-create the ApiRegistration to change it"
        ));
    }
    None
}

pub(super) fn refuse_management(audience: &str) -> Outcome {
    Outcome::not_ready(
        reasons::MANAGEMENT_API_REFUSED,
        format!(
            "audience {audience} is the Kinde Management API's; the operator never manages or grants it"
        ),
    )
}

pub(super) fn audience_in_use(audience: &str, id: &str) -> Outcome {
    Outcome::not_ready(
        reasons::AUDIENCE_IN_USE,
        format!(
            "audience {audience} is already registered in Kinde as API {id}; to manage that API, annotate this object with m2m.kinde-operator.io/external-id: {id}, or, if this object created it before its cluster was rebuilt, with m2m.kinde-operator.io/adoption-policy: adopt-or-create (where the cluster's adoption policy allows it)"
        ),
    )
}

/// How Kinde's scopes of an API must change to match the spec.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ScopeChanges {
    /// `(key, description)` to create.
    pub add: Vec<(String, String)>,
    /// `(scope id, key, description)` whose description must change.
    pub describe: Vec<(String, String, String)>,
    /// `(scope id, key)` to delete: in Kinde, not in the spec.
    pub remove: Vec<(String, String)>,
}

impl ScopeChanges {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.describe.is_empty() && self.remove.is_empty()
    }
}

/// The scope changes that make `kinde` match the spec's scopes (by key; a missing
/// description counts as empty).
pub(crate) fn scope_changes(spec: &[crate::crd::ApiScope], kinde: &[KindeScope]) -> ScopeChanges {
    let mut changes = ScopeChanges::default();
    for want in spec {
        match kinde.iter().find(|s| s.key == want.key) {
            None => changes
                .add
                .push((want.key.clone(), want.description.clone())),
            Some(have) if have.description.as_deref().unwrap_or_default() != want.description => {
                changes
                    .describe
                    .push((have.id.clone(), want.key.clone(), want.description.clone()))
            }
            Some(_) => {}
        }
    }
    changes.remove = kinde
        .iter()
        .filter(|s| !spec.iter().any(|w| w.key == s.key))
        .map(|s| (s.id.clone(), s.key.clone()))
        .collect();
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinde::{KindeError, KindeErrorBody, Transient};

    #[test]
    fn only_a_refusal_clears_the_intent_record() {
        let body = KindeErrorBody::default();
        let refused = KindeError::Invalid {
            operation: "addAPIs",
            status: 400,
            body,
        };
        assert!(refused.created_nothing());
        let unknown = KindeError::OutcomeUnknown {
            operation: "addAPIs",
            reason: Transient::Timeout,
        };
        assert!(!unknown.created_nothing());
        let garbled = KindeError::Decode {
            operation: "addAPIs",
            detail: "not JSON".into(),
        };
        assert!(!garbled.created_nothing());
    }

    fn spec(pairs: &[(&str, &str)]) -> Vec<crate::crd::ApiScope> {
        pairs
            .iter()
            .map(|(k, d)| crate::crd::ApiScope {
                key: (*k).to_owned(),
                description: (*d).to_owned(),
            })
            .collect()
    }

    fn kinde(triples: &[(&str, &str, Option<&str>)]) -> Vec<KindeScope> {
        triples
            .iter()
            .map(|(id, k, d)| KindeScope {
                id: (*id).to_owned(),
                key: (*k).to_owned(),
                description: d.map(str::to_owned),
            })
            .collect()
    }

    #[test]
    fn scope_diff_adds_describes_and_removes() {
        let changes = scope_changes(
            &spec(&[("read", "Read"), ("write", "Write all"), ("new", "")]),
            &kinde(&[
                ("s1", "read", Some("Read")),
                ("s2", "write", Some("Write")),
                ("s3", "foreign", None),
            ]),
        );
        assert_eq!(changes.add, [("new".to_owned(), String::new())]);
        assert_eq!(
            changes.describe,
            [("s2".to_owned(), "write".to_owned(), "Write all".to_owned())]
        );
        assert_eq!(changes.remove, [("s3".to_owned(), "foreign".to_owned())]);
    }

    #[test]
    fn a_missing_description_matches_an_empty_one() {
        let changes = scope_changes(&spec(&[("read", "")]), &kinde(&[("s1", "read", None)]));
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn immutable_audience_and_spec_checks() {
        let api = |audience: &str, scopes: Vec<crate::crd::ApiScope>| {
            let mut a = ApiRegistration::new(
                "orders",
                crate::crd::ApiRegistrationSpec {
                    audience: audience.to_owned(),
                    scopes,
                    ..Default::default()
                },
            );
            a.metadata.namespace = Some("platform".into());
            a
        };
        let fresh = ApiRegistrationStatus::default();
        assert_eq!(validate(&api("https://a", vec![]), &fresh), None);
        let created = ApiRegistrationStatus {
            api_id: Some("api1".into()),
            audience: Some("https://a".into()),
            ..ApiRegistrationStatus::default()
        };
        assert!(
            validate(&api("https://b", vec![]), &created)
                .unwrap_or_default()
                .contains("spec.audience is immutable")
        );
        let twice = spec(&[("read", "a"), ("read", "b")]);
        assert!(
            validate(&api("https://a", twice), &fresh)
                .unwrap_or_default()
                .contains("appears twice")
        );
        assert!(validate(&api(&"x".repeat(65), vec![]), &fresh).is_some());
        assert!(validate(&api("https://a", spec(&[("a b", "")])), &fresh).is_some());
    }

    #[test]
    fn refusals_name_what_to_do() {
        match audience_in_use("https://a", "api7") {
            Outcome::NotReady {
                reason, message, ..
            } => {
                assert_eq!(reason, reasons::AUDIENCE_IN_USE);
                assert!(message.contains("external-id: api7"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match refuse_management("https://biz.kinde.com/api") {
            Outcome::NotReady { reason, .. } => assert_eq!(reason, reasons::MANAGEMENT_API_REFUSED),
            other => panic!("{other:?}"),
        }
    }
}

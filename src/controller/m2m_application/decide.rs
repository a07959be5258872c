//! M2MApplication decisions, pure: what a spec may be, which Kinde applications the object
//! uses, its markers, when a rotation is due or must wait, what an update of its Secret is
//! called. Unit-tested with plain values; the effects around them are in the sibling
//! modules.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};
use secrecy::ExposeSecret;

use crate::conditions::reasons;
pub(crate) use crate::controller::kernel::KindeApp;
use crate::controller::kernel::rules::stable_hash;
use crate::controller::kernel::{Error, Outcome, Result};
use crate::crd::{AppliedTokens, M2MApplication, M2MApplicationStatus};
use crate::secret;
use crate::validation;

/// The object's UID, compacted: the stable part of every marker.
pub(super) fn uid_marker_body(obj: &M2MApplication) -> Result<String> {
    let uid = obj.uid().ok_or(Error::MissingMetadata("uid"))?;
    Ok(uid.chars().filter(|c| *c != '-').take(16).collect())
}

/// The name suffix that identifies the application first created for this object.
pub(super) fn creation_marker(obj: &M2MApplication) -> Result<String> {
    Ok(format!("[kmo:{}]", uid_marker_body(obj)?))
}

/// Whether a name still carries an operator marker (creation or rotation).
pub(super) fn is_marked(name: &str) -> bool {
    name.trim_end().ends_with(']') && name.contains(" [kmo:")
}

/// Most predecessors retiring at once; a rotation requested beyond that waits for the
/// oldest to retire (`status.retiring` must stay small, and every entry is a live app).
pub(super) const MAX_RETIRING: usize = 5;

/// Checks everything about the spec that can be checked before the first Kinde write (what
/// the schema says, for servers without CEL, and what only the API server would refuse
/// later: the Secret's name, labels and annotations, the object name's length for Events).
///
/// A schedule mints a new authorized Kinde application each time, so `spec.rotation.every`
/// must be at least `min_every` (`--min-rotation-interval`, default 1h) and at least twice
/// the overlap: a tiny interval would fill Kinde (and `status.retiring`) within minutes.
pub(super) fn validate(
    obj: &M2MApplication,
    status: &M2MApplicationStatus,
    min_every: Duration,
) -> Option<String> {
    let display = obj.display_name();
    if display.trim().is_empty() || display.chars().count() > 64 {
        return Some(format!(
            "the display name {display:?} must be 1-64 characters (spec.displayName, or <namespace>/<name> by default)"
        ));
    }
    let name = obj.name_any();
    if name.len() > validation::MAX_NAME_FOR_EVENTS {
        return Some(format!(
            "metadata.name is {} characters; at most {} are supported (its Events are named <name>.<timestamp>)",
            name.len(),
            validation::MAX_NAME_FOR_EVENTS
        ));
    }
    let overlap = match obj.spec.rotation.overlap() {
        Ok(d) => d,
        Err(e) => return Some(format!("{e:#}")),
    };
    match obj.spec.rotation.every() {
        Err(e) => return Some(format!("{e:#}")),
        Ok(Some(every)) if every < min_every || every < overlap.saturating_mul(2) => {
            return Some(format!(
                "spec.rotation.every must be at least {} and at least twice spec.rotation.overlap ({}), got {}",
                humantime::format_duration(min_every),
                humantime::format_duration(overlap),
                humantime::format_duration(every)
            ));
        }
        Ok(_) => {}
    }
    let secret = obj.secret_name();
    if !validation::is_dns1123_subdomain(&secret) {
        return Some(format!(
            "the Secret name {secret:?} (spec.secret.name, or <name>-credentials by default) is not a valid Kubernetes name (DNS-1123 subdomain, at most 253 characters)"
        ));
    }
    // Label values have a syntax; annotation values are free text.
    for (field, map, values_are_labels) in [
        ("spec.secret.labels", &obj.spec.secret.labels, true),
        (
            "spec.secret.annotations",
            &obj.spec.secret.annotations,
            false,
        ),
    ] {
        for (k, v) in map.iter().flatten() {
            if !validation::is_qualified_name(k) {
                return Some(format!("{field}: {k:?} is not a valid key"));
            }
            if values_are_labels && !validation::is_label_value(v) {
                return Some(format!(
                    "{field}: the value of {k:?} is not a valid label value"
                ));
            }
        }
    }
    if let Some(problem) = secret::KeyNames::from_spec(&obj.spec.secret.keys).problem() {
        return Some(problem);
    }
    if let Some(tokens) = &obj.spec.tokens
        && let Err(e) = tokens.access_token_lifetime()
    {
        return Some(format!("{e:#}"));
    }
    if status.application_id.is_some()
        && let Some(was) = &status.organization_code
        && obj.spec.organization_code.as_ref() != Some(was)
    {
        return Some(format!(
            "spec.organizationCode is immutable: the Kinde application was created in organization {was:?}; re-create the M2MApplication to change it"
        ));
    }
    None
}

/// The adopted application, while it is still the current one (a rotation replaces it
/// with an application of the operator's own).
pub(super) fn current_adopted(status: &M2MApplicationStatus) -> Option<String> {
    status
        .adopted_id
        .clone()
        .filter(|a| status.application_id.as_deref() == Some(a.as_str()))
}

/// How long after a create with an unknown outcome the operator keeps looking for a copy
/// that Kinde made late (a request it processed after the client gave up).
pub(super) const UNCONFIRMED_CREATE_WATCH: Duration = Duration::from_secs(15 * 60);

/// How often it looks meanwhile.
pub(super) const UNCONFIRMED_CREATE_POLL: Duration = Duration::from_secs(60);

/// Time left of the watch that began at `since`, `None` once it is over.
pub(super) fn unconfirmed_watch_left(since: &Time, now: Timestamp) -> Option<Duration> {
    let elapsed = Duration::try_from(now.duration_since(since.0)).unwrap_or_default();
    UNCONFIRMED_CREATE_WATCH
        .checked_sub(elapsed)
        .filter(|d| !d.is_zero())
}

/// Every Kinde application the object currently uses.
pub(super) fn used_application_ids(
    status: &M2MApplicationStatus,
) -> std::collections::BTreeSet<String> {
    status
        .application_id
        .iter()
        .cloned()
        .chain(status.retiring.iter().map(|r| r.application_id.clone()))
        .chain(
            status
                .pending_successor
                .iter()
                .map(|p| p.application_id.clone()),
        )
        .collect()
}

pub(super) fn external_gone(id: &str) -> Outcome {
    Outcome::not_ready(
        reasons::EXTERNAL_NOT_FOUND,
        format!(
            "no Kinde application with id {id:?} (adopted with the external-id annotation); it is not re-created"
        ),
    )
}

/// The Event for an update of an existing Secret: what changed, without any secret value.
pub(super) fn change_note(
    existing: &Secret,
    desired: &Secret,
    app: &KindeApp,
    name: &str,
    keys: &secret::KeyNames,
) -> (&'static str, String) {
    let restored = || {
        (
            "SecretRestored",
            format!("Secret {name} was edited, incomplete or had other keys; restored"),
        )
    };
    // Keys renamed (spec.secret.keys): the old content is under other names.
    if secret::read_key(existing, &keys.client_id).is_none() {
        return restored();
    }
    let same_client = secret::key_is(existing, &keys.client_id, &app.client_id);
    let same_secret = secret::key_is(existing, &keys.client_secret, app.secret.expose_secret());
    let audience_change = keys.audience.as_deref().and_then(|key| {
        let want = secret::read_key(desired, key).unwrap_or_default();
        (!secret::key_is(existing, key, &want)).then(|| (key.to_owned(), want))
    });
    if same_client && !same_secret {
        (
            "CredentialsUpdated",
            format!(
                "client secret of Kinde application {} changed; Secret {name} updated",
                app.id
            ),
        )
    } else if !same_client {
        (
            "CredentialsUpdated",
            format!(
                "Secret {name} now holds the credentials of Kinde application {}",
                app.id
            ),
        )
    } else if let Some((key, want)) = audience_change {
        (
            "AudienceUpdated",
            format!("Secret {name}: {key} is now {want:?}"),
        )
    } else {
        restored()
    }
}

/// A rotation to perform now: why, and the key that names its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// What goes into `status.lastHandledRotateRequest` (the annotation's value), if any.
    pub request: Option<String>,
    /// Stable key of this rotation (request value, or the scheduled time).
    pub key: String,
}

/// Whether a rotation is due: a new `rotate-requested-at` value, or the schedule.
pub fn due(obj: &M2MApplication, status: &M2MApplicationStatus, now: Timestamp) -> Option<Due> {
    if let Some(request) = obj.pending_rotate_request() {
        return Some(Due {
            request: Some(request.to_owned()),
            key: format!("request:{request}"),
        });
    }
    let next = status.next_rotation_time.as_ref()?;
    (next.0 <= now).then(|| Due {
        request: None,
        key: format!("schedule:{}", next.0),
    })
}

/// When the next scheduled rotation is, counted from the last one (or from now).
pub fn next_scheduled(
    every: Option<Duration>,
    last: Option<&Time>,
    now: Timestamp,
) -> Option<Time> {
    let every = jiff::SignedDuration::try_from(every?).ok()?;
    let base = last.map_or(now, |t| t.0);
    base.checked_add(every).ok().map(Time)
}

/// The credential gauges of an application: issued at the last rotation, else at creation
/// (only once there is an application), the next scheduled rotation, predecessors retiring.
pub(super) fn credential_gauges(
    obj: &M2MApplication,
    status: &M2MApplicationStatus,
) -> crate::metrics::CredentialGauges {
    let issued = status.application_id.as_ref().and_then(|_| {
        status
            .last_rotation_time
            .as_ref()
            .or(obj.meta().creation_timestamp.as_ref())
            .map(|t| t.0.as_second())
    });
    crate::metrics::CredentialGauges {
        issued,
        next_rotation: status.next_rotation_time.as_ref().map(|t| t.0.as_second()),
        retiring: status.retiring.len(),
    }
}

/// The name marker of the successor for `due`.
pub fn successor_marker(uid_marker_body: &str, due: &Due) -> String {
    format!(
        "[kmo:{uid_marker_body}:{:08x}]",
        stable_hash(&due.key) as u32
    )
}

/// A rotation that must wait because [`MAX_RETIRING`] predecessors are still in their
/// overlap: `NotReady` until the oldest retires (the credentials in use keep working).
pub fn deferred(status: &M2MApplicationStatus, now: Timestamp) -> Option<Outcome> {
    if status.retiring.len() < MAX_RETIRING {
        return None;
    }
    let first = status.retiring.iter().map(|r| r.retire_at.0).min()?;
    let requeue = Duration::try_from(first.duration_since(now))
        .unwrap_or_default()
        .max(Duration::from_secs(1));
    Some(Outcome::NotReady {
        reason: reasons::ROTATION_DEFERRED,
        message: format!(
            "{} earlier credentials are still in their overlap (at most {MAX_RETIRING}); the rotation runs when the first retires at {first}",
            status.retiring.len()
        ),
        requeue,
    })
}

/// Seconds until the next scheduled rotation, if any.
pub fn until_next(status: &M2MApplicationStatus, now: Timestamp) -> Option<Duration> {
    let next = status.next_rotation_time.as_ref()?;
    Duration::try_from(next.0.duration_since(now)).ok()
}

/// The access-token lifetime to send to Kinde now, if any: the spec's (`desired`), unless
/// it is already in place. Kinde's `getApplication` does not document the lifetime, so
/// where Kinde reports it that is the truth (a dashboard edit is drift and is corrected);
/// where it does not, the record of what was applied to this very application stands in
/// (a new application: re-created, a rotation's successor, adopted, gets it again).
pub(super) fn token_lifetime_to_apply(
    desired: Option<u64>,
    app: &KindeApp,
    applied: Option<&AppliedTokens>,
) -> Option<u64> {
    let desired = desired?;
    let in_place = match app.access_token_lifetime {
        Some(observed) => observed == desired,
        None => applied.is_some_and(|a| {
            a.application_id == app.id && a.access_token_lifetime_seconds == desired
        }),
    };
    (!in_place).then_some(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RetiringCredentials;
    use secrecy::SecretString;

    use crate::crd::M2MApplicationSpec;

    const HOUR: Duration = Duration::from_secs(3600);

    fn app(name: &str, spec: serde_json::Value) -> M2MApplication {
        let mut app = M2MApplication::new(
            name,
            serde_json::from_value::<M2MApplicationSpec>(spec).expect("spec"),
        );
        app.metadata.namespace = Some("acme".into());
        app
    }

    fn problem(app: &M2MApplication) -> String {
        validate(app, &M2MApplicationStatus::default(), HOUR).unwrap_or_default()
    }

    #[test]
    fn a_valid_spec_passes() {
        let a = app(
            "shop",
            serde_json::json!({"rotation": {"every": "720h", "overlap": "1h"},
                               "secret": {"labels": {"team": "a"}, "annotations": {"x.io/y": "any value"}}}),
        );
        assert_eq!(validate(&a, &M2MApplicationStatus::default(), HOUR), None);
    }

    #[test]
    fn rotation_interval_is_bounded() {
        for every in ["1s", "59m", "1h30m"] {
            let a = app(
                "shop",
                serde_json::json!({"rotation": {"every": every, "overlap": "1h"}}),
            );
            assert!(
                problem(&a).contains("spec.rotation.every"),
                "{every}: {}",
                problem(&a)
            );
        }
        let a = app(
            "shop",
            serde_json::json!({"rotation": {"every": "2h", "overlap": "1h"}}),
        );
        assert_eq!(problem(&a), "");
        let a = app(
            "shop",
            serde_json::json!({"rotation": {"every": "1h", "overlap": "0s"}}),
        );
        assert_eq!(problem(&a), "");
        // A lower floor (`--min-rotation-interval`) still wants twice the overlap.
        let a = app(
            "shop",
            serde_json::json!({"rotation": {"every": "20s", "overlap": "3s"}}),
        );
        assert_eq!(
            validate(
                &a,
                &M2MApplicationStatus::default(),
                Duration::from_secs(10)
            ),
            None
        );
        let a = app(
            "shop",
            serde_json::json!({"rotation": {"every": "20s", "overlap": "15s"}}),
        );
        assert!(
            validate(
                &a,
                &M2MApplicationStatus::default(),
                Duration::from_secs(10)
            )
            .is_some()
        );
    }

    #[test]
    fn kubernetes_names_are_checked_before_any_kinde_write() {
        let long = "a".repeat(validation::MAX_NAME_FOR_EVENTS + 1);
        let a = app(&long, serde_json::json!({"displayName": "Shop"}));
        assert!(problem(&a).contains("metadata.name"), "{}", problem(&a));
        let ok = "a".repeat(validation::MAX_NAME_FOR_EVENTS);
        assert_eq!(
            problem(&app(&ok, serde_json::json!({"displayName": "Shop"}))),
            ""
        );
        let a = app(
            "shop",
            serde_json::json!({"secret": {"name": "Not_A_Name"}}),
        );
        assert!(problem(&a).contains("Secret name"), "{}", problem(&a));
        let a = app(
            "shop",
            serde_json::json!({"secret": {"labels": {"team": "a b"}}}),
        );
        assert!(
            problem(&a).contains("spec.secret.labels"),
            "{}",
            problem(&a)
        );
        let a = app(
            "shop",
            serde_json::json!({"secret": {"annotations": {"bad key": "v"}}}),
        );
        assert!(
            problem(&a).contains("spec.secret.annotations"),
            "{}",
            problem(&a)
        );
    }

    #[test]
    fn organization_code_is_immutable_once_created() {
        let a = app("shop", serde_json::json!({"organizationCode": "org_b"}));
        let created = M2MApplicationStatus {
            application_id: Some("app1".into()),
            organization_code: Some("org_a".into()),
            ..M2MApplicationStatus::default()
        };
        assert!(
            validate(&a, &created, HOUR)
                .unwrap_or_default()
                .contains("spec.organizationCode is immutable")
        );
        let same = app("shop", serde_json::json!({"organizationCode": "org_a"}));
        assert_eq!(validate(&same, &created, HOUR), None);
        // Before the application exists the code may still change.
        let fresh = M2MApplicationStatus {
            organization_code: Some("org_a".into()),
            ..M2MApplicationStatus::default()
        };
        assert_eq!(validate(&a, &fresh, HOUR), None);
    }

    #[test]
    fn unconfirmed_create_watch_ends() {
        let since = Timestamp::from_second(1_000_000).expect("ts");
        let at = |s| Timestamp::from_second(s).expect("ts");
        assert_eq!(
            unconfirmed_watch_left(&Time(since), at(1_000_000)),
            Some(UNCONFIRMED_CREATE_WATCH)
        );
        assert_eq!(
            unconfirmed_watch_left(&Time(since), at(1_000_060)),
            Some(UNCONFIRMED_CREATE_WATCH - Duration::from_secs(60))
        );
        assert_eq!(unconfirmed_watch_left(&Time(since), at(1_000_900)), None);
        assert_eq!(unconfirmed_watch_left(&Time(since), at(2_000_000)), None);
        // A clock that went backwards keeps watching rather than panicking.
        assert_eq!(
            unconfirmed_watch_left(&Time(since), at(999_000)),
            Some(UNCONFIRMED_CREATE_WATCH)
        );
    }

    #[test]
    fn used_applications_include_retiring_and_pending() {
        let status = M2MApplicationStatus {
            application_id: Some("cur".into()),
            retiring: vec![crate::crd::RetiringCredentials {
                application_id: "old".into(),
                client_id: "old".into(),
                retire_at: Time(Timestamp::from_second(1).expect("ts")),
            }],
            pending_successor: Some(crate::crd::PendingSuccessor {
                application_id: "next".into(),
                client_id: "next".into(),
                rotation: "request:1".into(),
            }),
            ..M2MApplicationStatus::default()
        };
        let ids: Vec<String> = used_application_ids(&status).into_iter().collect();
        assert_eq!(ids, ["cur", "next", "old"]);
    }

    #[test]
    fn adopted_application_is_current_until_rotated() {
        let mut status = M2MApplicationStatus {
            application_id: Some("legacy".into()),
            adopted_id: Some("legacy".into()),
            ..M2MApplicationStatus::default()
        };
        assert_eq!(current_adopted(&status).as_deref(), Some("legacy"));
        status.application_id = Some("successor".into());
        assert_eq!(current_adopted(&status), None);
    }

    #[test]
    fn marker_is_stable_and_distinct_per_request() {
        let a = Due {
            request: Some("1".into()),
            key: "request:1".into(),
        };
        let b = Due {
            request: Some("2".into()),
            key: "request:2".into(),
        };
        assert_eq!(successor_marker("abc", &a), successor_marker("abc", &a));
        assert_ne!(successor_marker("abc", &a), successor_marker("abc", &b));
        // FNV-1a of "" is its offset basis: pins the algorithm across releases.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn rotation_waits_while_too_many_predecessors_retire() {
        let now = Timestamp::from_second(1_000_000).expect("ts");
        let retiring = |n: usize| M2MApplicationStatus {
            retiring: (0..n)
                .map(|i| RetiringCredentials {
                    application_id: format!("a{i}"),
                    client_id: format!("a{i}"),
                    retire_at: Time(
                        Timestamp::from_second(1_000_100 + i64::try_from(i).expect("i"))
                            .expect("ts"),
                    ),
                })
                .collect(),
            ..M2MApplicationStatus::default()
        };
        assert!(deferred(&retiring(MAX_RETIRING - 1), now).is_none());
        match deferred(&retiring(MAX_RETIRING), now) {
            Some(Outcome::NotReady {
                reason, requeue, ..
            }) => {
                assert_eq!(reason, reasons::ROTATION_DEFERRED);
                assert_eq!(requeue, Duration::from_secs(100));
            }
            other => panic!("expected a deferral, got {other:?}"),
        }
    }

    #[test]
    fn schedule() {
        let now = Timestamp::from_second(1_000_000).expect("ts");
        let every = Some(Duration::from_secs(3600));
        assert_eq!(
            next_scheduled(every, None, now).map(|t| t.0.as_second()),
            Some(1_003_600)
        );
        let last = Time(Timestamp::from_second(999_000).expect("ts"));
        assert_eq!(
            next_scheduled(every, Some(&last), now).map(|t| t.0.as_second()),
            Some(1_002_600)
        );
        assert_eq!(next_scheduled(None, None, now), None);
    }

    fn built(client_id: &str, secret: &str, audiences: &[&str]) -> Secret {
        secret::build(
            &secret::Placement {
                name: "shop-credentials",
                namespace: "acme",
                owner: Default::default(),
                labels: None,
                annotations: None,
                keys: &secret::KeyNames::default(),
            },
            &secret::Credentials {
                domain: "https://biz.kinde.com",
                token_url: "https://biz.kinde.com/oauth2/token",
                application_id: client_id,
                client_id,
                client_secret: &SecretString::from(secret.to_owned()),
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            },
        )
    }

    fn kinde_app(id: &str, secret: &str) -> KindeApp {
        KindeApp {
            id: id.into(),
            client_id: id.into(),
            name: "Shop".into(),
            secret: SecretString::from(secret.to_owned()),
            app_type: Some("m2m".into()),
            access_token_lifetime: None,
            fresh: false,
        }
    }

    #[test]
    fn token_lifetime_is_applied_once_per_application_and_on_observed_drift() {
        let app = kinde_app("app1", "s");
        let applied = |id: &str, secs| AppliedTokens {
            application_id: id.into(),
            access_token_lifetime_seconds: secs,
        };
        assert_eq!(token_lifetime_to_apply(None, &app, None), None);
        assert_eq!(token_lifetime_to_apply(Some(600), &app, None), Some(600));
        assert_eq!(
            token_lifetime_to_apply(Some(600), &app, Some(&applied("app1", 600))),
            None
        );
        // Another value, or the record is of another application (a rotation's predecessor).
        assert_eq!(
            token_lifetime_to_apply(Some(900), &app, Some(&applied("app1", 600))),
            Some(900)
        );
        assert_eq!(
            token_lifetime_to_apply(Some(600), &app, Some(&applied("app0", 600))),
            Some(600)
        );
        // Where Kinde reports the lifetime, it decides.
        let observed = |secs| KindeApp {
            access_token_lifetime: Some(secs),
            ..kinde_app("app1", "s")
        };
        assert_eq!(
            token_lifetime_to_apply(Some(600), &observed(3600), Some(&applied("app1", 600))),
            Some(600),
            "changed in the dashboard"
        );
        assert_eq!(
            token_lifetime_to_apply(Some(600), &observed(600), None),
            None
        );
    }

    #[test]
    fn secret_change_notes_say_what_changed_and_never_the_secret() {
        let old = built("app1", "s3cret-old", &["https://a"]);
        let cases = [
            (
                kinde_app("app1", "s3cret-new"),
                vec!["https://a"],
                "CredentialsUpdated",
                "client secret",
            ),
            (
                kinde_app("app2", "s3cret-2"),
                vec!["https://a"],
                "CredentialsUpdated",
                "now holds",
            ),
            (
                kinde_app("app1", "s3cret-old"),
                vec!["https://a", "https://b"],
                "AudienceUpdated",
                "https://b",
            ),
            (
                kinde_app("app1", "s3cret-old"),
                vec!["https://a"],
                "SecretRestored",
                "restored",
            ),
        ];
        for (app, audiences, reason, says) in cases {
            let desired = built(&app.client_id, app.secret.expose_secret(), &audiences);
            let (r, note) = change_note(
                &old,
                &desired,
                &app,
                "shop-credentials",
                &secret::KeyNames::default(),
            );
            assert_eq!(r, reason, "{note}");
            assert!(note.contains(says), "{note}");
            assert!(!note.contains("s3cret"), "a secret in an Event: {note}");
        }
    }

    #[test]
    fn renamed_or_omitted_keys_are_noted_truthfully() {
        let old = built("app1", "s3cret", &["https://a"]);
        let app = kinde_app("app1", "s3cret");
        let renamed = secret::KeyNames::from_spec(
            &serde_json::from_value(serde_json::json!({"clientId": "client-id"})).expect("keys"),
        );
        let (reason, note) = change_note(&old, &old, &app, "shop-credentials", &renamed);
        assert_eq!(reason, "SecretRestored", "{note}");
        // Without an audience key, a new grant is no audience change.
        let no_audience = secret::KeyNames::from_spec(
            &serde_json::from_value(serde_json::json!({"omit": ["audience"]})).expect("keys"),
        );
        let desired = built("app1", "s3cret", &["https://a", "https://b"]);
        let (reason, _) = change_note(&old, &desired, &app, "shop-credentials", &no_audience);
        assert_eq!(reason, "SecretRestored");
    }

    #[test]
    fn secret_keys_and_token_lifetime_are_checked() {
        let clash = app(
            "shop",
            serde_json::json!({"secret": {"keys": {"clientId": "same", "clientSecret": "same"}}}),
        );
        assert!(
            problem(&clash).contains("spec.secret.keys.clientSecret"),
            "{}",
            problem(&clash)
        );
        let bad_key = app(
            "shop",
            serde_json::json!({"secret": {"keys": {"domain": "a b"}}}),
        );
        assert!(problem(&bad_key).contains("spec.secret.keys.domain"));
        let envoy = app(
            "shop",
            serde_json::json!({"secret": {"keys": {"clientId": "client-id", "clientSecret": "client-secret", "omit": ["audience", "tokenUrl"]}}}),
        );
        assert_eq!(problem(&envoy), "");
        for (lifetime, ok) in [
            ("1m", true),
            ("24h", true),
            ("90m", true),
            ("59s", false),
            ("25h", false),
            ("1.5s", false),
            ("1d", false),
        ] {
            let a = app(
                "shop",
                serde_json::json!({"tokens": {"accessTokenLifetime": lifetime}}),
            );
            assert_eq!(problem(&a).is_empty(), ok, "{lifetime}: {}", problem(&a));
            if !ok {
                assert!(
                    problem(&a).contains("spec.tokens.accessTokenLifetime"),
                    "{}",
                    problem(&a)
                );
            }
        }
    }

    #[test]
    fn credential_gauges_only_once_credentials_exist() {
        let mut a = app("shop", serde_json::json!({}));
        let created = Timestamp::from_second(1_000).expect("ts");
        a.metadata.creation_timestamp = Some(Time(created));
        let none = credential_gauges(&a, &M2MApplicationStatus::default());
        assert_eq!(none, crate::metrics::CredentialGauges::default());
        let rotated = M2MApplicationStatus {
            application_id: Some("app2".into()),
            last_rotation_time: Some(Time(Timestamp::from_second(2_000).expect("ts"))),
            next_rotation_time: Some(Time(Timestamp::from_second(9_000).expect("ts"))),
            retiring: vec![RetiringCredentials {
                application_id: "app1".into(),
                client_id: "app1".into(),
                retire_at: Time(Timestamp::from_second(5_600).expect("ts")),
            }],
            ..M2MApplicationStatus::default()
        };
        assert_eq!(
            credential_gauges(&a, &rotated),
            crate::metrics::CredentialGauges {
                issued: Some(2_000),
                next_rotation: Some(9_000),
                retiring: 1,
            }
        );
        let fresh = M2MApplicationStatus {
            application_id: Some("app1".into()),
            ..M2MApplicationStatus::default()
        };
        assert_eq!(credential_gauges(&a, &fresh).issued, Some(1_000));
    }
}

//! ApiGrant decisions, pure: which scopes to grant and withdraw, which of two grants for
//! the same pair wins. Unit-tested with plain values; the effects are in `mod.rs`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::{Resource, ResourceExt};

use crate::conditions::{self, reasons};
use crate::controller::kernel::{Outcome, is_older};
use crate::crd::{ApiGrant, ApiGrantStatus, ApiRegistration, M2MApplication, connection_label};

/// The granted keys whose Kinde scope is still the one granted. A scope deleted and
/// re-created in Kinde (a new id) lost the application's grant with it and must be granted
/// again. Keys no longer wanted stay in (they are withdrawn); a status from before scope ids
/// were recorded is trusted by key.
pub(super) fn still_granted(
    status: &ApiGrantStatus,
    scopes: &[(String, String)],
) -> BTreeSet<String> {
    status
        .granted_scopes
        .iter()
        .filter(|key| {
            status.granted_scope_ids.is_empty()
                || scopes
                    .iter()
                    .find(|(k, _)| k == *key)
                    .is_none_or(|(_, id)| status.granted_scope_ids.contains(id))
        })
        .cloned()
        .collect()
}

/// Per-app scopes to grant (`(key, id)`) and to withdraw (keys), given the scopes wanted
/// (`(key, id)`), those granted and still valid, and whether Kinde's authorization of this
/// application holds (without it, nothing counts as granted: Kinde dropped the scopes).
pub(super) fn scope_plan<'a>(
    wanted: &'a [(String, String)],
    granted: &'a BTreeSet<String>,
) -> (Vec<&'a (String, String)>, Vec<&'a String>) {
    let desired: BTreeSet<&str> = wanted.iter().map(|(k, _)| k.as_str()).collect();
    let to_add = wanted
        .iter()
        .filter(|(k, _)| !granted.contains(k))
        .collect();
    let to_remove = granted
        .iter()
        .filter(|k| !desired.contains(k.as_str()))
        .collect();
    (to_add, to_remove)
}

/// The grant that wins over `grant` for the same application and API: the oldest of the
/// others, if any is older (creation time, then name).
pub(super) fn winner_over<'a>(
    grant: &ApiGrant,
    others: &'a [Arc<ApiGrant>],
) -> Option<&'a ApiGrant> {
    others
        .iter()
        .map(Arc::as_ref)
        .filter(|g| is_older(*g, grant))
        .min_by(|a, b| {
            if is_older(*a, *b) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        })
}

/// How long a grant that has never reported holds its wait quietly on a neighbour that has
/// not reported either ([`Outcome::Pending`]). A neighbour in the cache that has not
/// reported is only queued (once reconciled it reports, failure included, and the grant
/// tells its wait at once), so this bounds a broken operator, not a slow fleet: an hour,
/// longer than a fleet of 10,000 takes to onboard at 50 calls/s. It was 10 minutes; at
/// 10,000 customers every grant whose application was still queued after 10 minutes wrote a
/// third status and a fourth Event (2.49 status writes per grant, 3.49 Events per customer).
pub(super) const QUIET_WAIT_GRACE: Duration = Duration::from_secs(3600);
/// The same for a reference not in the cache yet: objects applied together arrive within
/// moments of each other, a typo shows after this.
pub(super) const QUIET_MISSING_GRACE: Duration = Duration::from_secs(10);

/// How long ago a grant that has never reported (no Ready condition) was created; `None`
/// once it has reported (its waits are then told at once).
pub(super) fn unreported_age(grant: &ApiGrant, now: Timestamp) -> Option<Duration> {
    let reported = grant
        .status
        .as_ref()
        .is_some_and(|s| conditions::find_condition(&s.conditions, conditions::READY).is_some());
    if reported {
        return None;
    }
    let created = grant.meta().creation_timestamp.as_ref()?;
    Some(Duration::try_from(now.duration_since(created.0)).unwrap_or_default())
}

/// The quiet wait of a grant of `age` (see [`unreported_age`]) within `grace`.
fn quiet_wait(age: Option<Duration>, grace: Duration, requeue: Duration) -> Option<Outcome> {
    age.filter(|a| *a < grace)
        .map(|_| Outcome::Pending { requeue })
}

/// Why a grant's references do not resolve: the application or the API is missing (or in a
/// namespace the operator does not watch). A new grant whose neighbour may just not be in
/// the cache yet waits quietly for a moment first.
pub(super) fn missing_reference(
    grant: &ApiGrant,
    app_seen: bool,
    api_ns_watched: bool,
    age: Option<Duration>,
) -> Outcome {
    let ns = grant.namespace().unwrap_or_default();
    if api_ns_watched
        && let Some(quiet) = quiet_wait(age, QUIET_MISSING_GRACE, Duration::from_secs(2))
    {
        return quiet;
    }
    if !app_seen {
        return Outcome::not_ready(
            reasons::APPLICATION_NOT_FOUND,
            format!(
                "M2MApplication {ns}/{} (spec.applicationRef.name) does not exist",
                grant.spec.application_ref.name
            ),
        );
    }
    let api_ns = grant.api_namespace().unwrap_or(ns);
    let watched = if api_ns_watched {
        ""
    } else {
        " (the operator does not watch that namespace)"
    };
    Outcome::not_ready(
        reasons::API_NOT_FOUND,
        format!(
            "ApiRegistration {api_ns}/{} (spec.apiRef) does not exist{watched}",
            grant.spec.api_ref.name
        ),
    )
}

/// What the effects found out about a grant's references beyond the objects themselves.
pub(super) struct ReferenceFacts {
    /// The API's `grantPolicy` admits the grant's namespace.
    pub permitted: bool,
    /// An older grant for the same application and API.
    pub winner: Option<String>,
    /// The grant's [`unreported_age`].
    pub unreported_age: Option<Duration>,
}

/// What a grant resolves to: the Kinde ids it joins and the scope ids to grant.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct References {
    pub app_id: String,
    pub api_id: String,
    pub audience: String,
    /// `(key, Kinde scope id)` per scope of the spec.
    pub scopes: Vec<(String, String)>,
}

/// Decides, in this order, whether the grant may act: the policy admits it, every scope is
/// declared, no older grant holds the pair, the application and the API are Ready and every
/// scope exists in Kinde. Each refusal or wait is a condition reason with its message.
pub(super) fn references(
    grant: &ApiGrant,
    app: &M2MApplication,
    api: &ApiRegistration,
    facts: &ReferenceFacts,
) -> Result<References, Outcome> {
    let ns = grant.namespace().unwrap_or_default();
    let app_name = &grant.spec.application_ref.name;
    let api_ns = api.namespace().unwrap_or_default();
    let api_name = api.name_any();
    if !facts.permitted {
        return Err(Outcome::not_ready(
            reasons::REF_NOT_PERMITTED,
            format!(
                "the grantPolicy of ApiRegistration {api_ns}/{api_name} does not admit ApiGrants from namespace {ns}"
            ),
        ));
    }
    let missing: Vec<&str> = grant
        .spec
        .scopes
        .iter()
        .filter(|k| !api.has_scope(k))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Outcome::not_ready(
            reasons::SCOPE_NOT_FOUND,
            format!(
                "ApiRegistration {api_ns}/{api_name} declares no scope {}",
                missing.join(", ")
            ),
        ));
    }
    if let Some(winner) = &facts.winner {
        return Err(Outcome::not_ready(
            reasons::CONFLICT,
            format!(
                "ApiGrant {ns}/{winner} already grants {app_name} access to {api_ns}/{api_name}; delete one of them"
            ),
        ));
    }
    let (app_on, api_on) = (app.connection(), api.connection());
    if app_on != api_on {
        return Err(Outcome::not_ready(
            reasons::CONNECTION_MISMATCH,
            format!(
                "M2MApplication {ns}/{app_name} is on {} and ApiRegistration {api_ns}/{api_name} on {}: a grant joins an application and an API of one Kinde business",
                connection_label(app_on.as_ref()),
                connection_label(api_on.as_ref())
            ),
        ));
    }
    let app_status = app.status.clone().unwrap_or_default();
    let (Some(app_id), true) = (
        app_status.client_id.clone(),
        conditions::is_true(&app_status.conditions, conditions::READY),
    ) else {
        return Err(wait_on_neighbour(
            &app_status.conditions,
            facts,
            Outcome::not_ready(
                reasons::WAITING_FOR_APPLICATION,
                format!("M2MApplication {ns}/{app_name} is not Ready yet"),
            ),
        ));
    };
    let api_status = api.status.clone().unwrap_or_default();
    let ready = conditions::is_true(&api_status.conditions, conditions::READY);
    let (Some(api_id), Some(audience), true) = (
        api_status.api_id.clone(),
        api_status.audience.clone(),
        ready,
    ) else {
        return Err(wait_on_neighbour(
            &api_status.conditions,
            facts,
            Outcome::not_ready(
                reasons::WAITING_FOR_API,
                format!("ApiRegistration {api_ns}/{api_name} is not Ready yet"),
            ),
        ));
    };
    let mut scopes = Vec::new();
    for key in &grant.spec.scopes {
        match api_status.scopes.iter().find(|s| &s.key == key) {
            Some(s) => scopes.push((key.clone(), s.id.clone())),
            None => {
                return Err(Outcome::not_ready(
                    reasons::WAITING_FOR_API,
                    format!(
                        "scope {key} is not in Kinde yet (ApiRegistration {api_ns}/{api_name})"
                    ),
                ));
            }
        }
    }
    Ok(References {
        app_id,
        api_id,
        audience,
        scopes,
    })
}

/// The wait on a neighbour that is not Ready: quiet while neither it nor the grant has
/// reported (within [`QUIET_WAIT_GRACE`]), else `told`.
fn wait_on_neighbour(
    neighbour: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    facts: &ReferenceFacts,
    told: Outcome,
) -> Outcome {
    unreported(neighbour)
        .then(|| {
            quiet_wait(
                facts.unreported_age,
                QUIET_WAIT_GRACE,
                Duration::from_secs(30),
            )
        })
        .flatten()
        .unwrap_or(told)
}

/// Whether an object has never reported (no Ready condition at all).
fn unreported(conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> bool {
    conditions::find_condition(conds, conditions::READY).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::ResourceExt;

    fn status(keys: &[&str], ids: &[&str]) -> ApiGrantStatus {
        ApiGrantStatus {
            granted_scopes: keys.iter().map(|s| (*s).to_owned()).collect(),
            granted_scope_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            ..ApiGrantStatus::default()
        }
    }

    fn scopes(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, i)| ((*k).to_owned(), (*i).to_owned()))
            .collect()
    }

    #[test]
    fn a_scope_recreated_in_kinde_is_granted_again() {
        let s = status(&["read", "write"], &["id-r", "id-w"]);
        let now = scopes(&[("read", "id-r"), ("write", "id-w2")]);
        let kept: Vec<String> = still_granted(&s, &now).into_iter().collect();
        assert_eq!(kept, ["read"], "write has a new id: not granted any more");
    }

    #[test]
    fn unchanged_and_unwanted_scopes_count_as_granted() {
        let s = status(&["read", "old"], &["id-r", "id-o"]);
        let now = scopes(&[("read", "id-r")]);
        let kept: Vec<String> = still_granted(&s, &now).into_iter().collect();
        assert_eq!(
            kept,
            ["old", "read"],
            "old stays in so that it is withdrawn"
        );
    }

    #[test]
    fn a_status_without_ids_is_trusted_by_key() {
        let s = status(&["read"], &[]);
        let now = scopes(&[("read", "id-new")]);
        assert_eq!(still_granted(&s, &now).len(), 1);
    }

    #[test]
    fn scopes_to_grant_and_withdraw() {
        let wanted = vec![
            ("read".to_owned(), "id-r".to_owned()),
            ("write".to_owned(), "id-w".to_owned()),
        ];
        let granted: BTreeSet<String> = ["read".to_owned(), "old".to_owned()].into();
        let (add, remove) = scope_plan(&wanted, &granted);
        assert_eq!(add, [&wanted[1]]);
        assert_eq!(remove, [&"old".to_owned()]);
        let none = BTreeSet::new();
        let (add, remove) = scope_plan(&wanted, &none);
        assert_eq!(
            add.len(),
            2,
            "nothing counts as granted without the authorization"
        );
        assert!(remove.is_empty());
    }

    fn grant(name: &str, created: i64) -> Arc<ApiGrant> {
        let mut g = ApiGrant::new(
            name,
            serde_json::from_value(serde_json::json!({
                "applicationRef": {"name": "app"}, "apiRef": {"name": "api"}, "scopes": []
            }))
            .expect("spec"),
        );
        g.metadata.namespace = Some("acme".into());
        g.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).expect("ts")));
        Arc::new(g)
    }

    #[test]
    fn the_oldest_grant_wins_a_conflict() {
        let me = grant("b", 200);
        let others = [grant("c", 300), grant("a", 100), grant("z", 100)];
        assert_eq!(
            winner_over(&me, &others).map(|g| g.name_any()).as_deref(),
            Some("a")
        );
        let oldest = grant("a0", 50);
        assert!(
            winner_over(&oldest, &others).is_none(),
            "the oldest wins itself"
        );
        // Same creation time: the name decides.
        let tie = grant("y", 100);
        assert_eq!(
            winner_over(&tie, &others).map(|g| g.name_any()).as_deref(),
            Some("a")
        );
    }

    fn reason(r: Result<References, Outcome>) -> &'static str {
        match r {
            Err(Outcome::NotReady { reason, .. }) => reason,
            Ok(_) => "Resolved",
            Err(other) => panic!("{other:?}"),
        }
    }

    fn ready_conditions() -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        vec![conditions::new_condition(
            conditions::READY,
            true,
            reasons::RECONCILED,
            "ready",
            Some(1),
            Time(Timestamp::from_second(1).expect("ts")),
        )]
    }

    fn app_obj(ready: bool) -> M2MApplication {
        let mut a = M2MApplication::new("app", Default::default());
        a.metadata.namespace = Some("acme".into());
        if ready {
            a.status = Some(crate::crd::M2MApplicationStatus {
                client_id: Some("client1".into()),
                conditions: ready_conditions(),
                ..Default::default()
            });
        }
        a
    }

    fn api_obj(ready: bool, kinde_scopes: &[&str]) -> ApiRegistration {
        let mut a: ApiRegistration = ApiRegistration::new(
            "api",
            serde_json::from_value(serde_json::json!({
                "audience": "https://api.example.com",
                "scopes": [{"key": "read", "description": "Read"}, {"key": "write", "description": "Write"}]
            }))
            .expect("spec"),
        );
        a.metadata.namespace = Some("platform".into());
        if ready {
            a.status = Some(crate::crd::ApiRegistrationStatus {
                api_id: Some("api1".into()),
                audience: Some("https://api.example.com".into()),
                scopes: kinde_scopes
                    .iter()
                    .map(|k| crate::crd::ScopeStatus {
                        key: (*k).into(),
                        id: format!("id-{k}"),
                    })
                    .collect(),
                conditions: ready_conditions(),
                ..Default::default()
            });
        }
        a
    }

    fn grant_for(scopes: &[&str]) -> ApiGrant {
        let mut g = ApiGrant::new(
            "g",
            serde_json::from_value(serde_json::json!({
                "applicationRef": {"name": "app"},
                "apiRef": {"name": "api", "namespace": "platform"},
                "scopes": scopes
            }))
            .expect("spec"),
        );
        g.metadata.namespace = Some("acme".into());
        g
    }

    #[test]
    fn every_reason_a_grant_can_wait_or_be_refused_for() {
        let ok = ReferenceFacts {
            permitted: true,
            winner: None,
            unreported_age: None,
        };
        let g = grant_for(&["read"]);
        let all = &["read", "write"];
        let mut app_on_staging = app_obj(true);
        app_on_staging.spec.connection_ref = Some(crate::crd::ConnectionRef {
            kind: crate::crd::ConnectionKind::KindeConnection,
            name: "staging".into(),
        });
        if let Some(s) = app_on_staging.status.as_mut() {
            s.connection = Some("KindeConnection/staging".into());
        }
        let cases: Vec<(&str, Result<References, Outcome>)> = vec![
            (
                "ApplicationNotFound",
                Err(missing_reference(&g, false, true, None)),
            ),
            ("ApiNotFound", Err(missing_reference(&g, true, true, None))),
            (
                "RefNotPermitted",
                references(
                    &g,
                    &app_obj(true),
                    &api_obj(true, all),
                    &ReferenceFacts {
                        permitted: false,
                        winner: None,
                        unreported_age: None,
                    },
                ),
            ),
            (
                "ScopeNotFound",
                references(
                    &grant_for(&["admin"]),
                    &app_obj(true),
                    &api_obj(true, all),
                    &ok,
                ),
            ),
            (
                "Conflict",
                references(
                    &g,
                    &app_obj(true),
                    &api_obj(true, all),
                    &ReferenceFacts {
                        permitted: true,
                        winner: Some("older".into()),
                        unreported_age: None,
                    },
                ),
            ),
            (
                "ConnectionMismatch",
                references(&g, &app_on_staging, &api_obj(true, all), &ok),
            ),
            (
                "WaitingForApplication",
                references(&g, &app_obj(false), &api_obj(true, all), &ok),
            ),
            (
                "WaitingForApi",
                references(&g, &app_obj(true), &api_obj(false, all), &ok),
            ),
            (
                "WaitingForApi",
                references(&g, &app_obj(true), &api_obj(true, &["write"]), &ok),
            ),
            (
                "Resolved",
                references(&g, &app_obj(true), &api_obj(true, all), &ok),
            ),
        ];
        for (want, got) in cases {
            assert_eq!(reason(got), want);
        }
        let refs = references(&g, &app_obj(true), &api_obj(true, all), &ok).expect("resolved");
        assert_eq!(refs.scopes, [("read".to_owned(), "id-read".to_owned())]);
        assert_eq!(
            (refs.app_id.as_str(), refs.api_id.as_str()),
            ("client1", "api1")
        );
        match missing_reference(&g, true, false, None) {
            Outcome::NotReady { message, .. } => {
                assert!(message.contains("does not watch"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A new grant applied with its application waits without a word while the
    /// application has not reported; once either has reported, or the grant is old, the
    /// wait is told.
    #[test]
    fn a_new_grant_waits_quietly_on_a_neighbour_that_has_not_reported() {
        let g = grant_for(&["read"]);
        let all = &["read", "write"];
        let facts = |age: Option<u64>| ReferenceFacts {
            permitted: true,
            winner: None,
            unreported_age: age.map(Duration::from_secs),
        };
        let quiet = |r: Result<References, Outcome>| matches!(r, Err(Outcome::Pending { .. }));
        // Neither has reported: quiet.
        assert!(quiet(references(
            &g,
            &app_obj(false),
            &api_obj(true, all),
            &facts(Some(5))
        )));
        assert!(quiet(references(
            &g,
            &app_obj(true),
            &api_obj(false, all),
            &facts(Some(5))
        )));
        // The grant reported before, or waited past the grace: told.
        for told in [facts(None), facts(Some(QUIET_WAIT_GRACE.as_secs()))] {
            let r = references(&g, &app_obj(false), &api_obj(true, all), &told);
            assert_eq!(reason(r), "WaitingForApplication");
        }
        // The application reported a problem (a Ready condition, False): told at once.
        let mut failing = app_obj(false);
        failing.status = Some(crate::crd::M2MApplicationStatus {
            conditions: vec![conditions::new_condition(
                conditions::READY,
                false,
                reasons::SECRET_CONFLICT,
                "Secret exists",
                Some(1),
                Time(Timestamp::from_second(1).expect("ts")),
            )],
            ..Default::default()
        });
        let r = references(&g, &failing, &api_obj(true, all), &facts(Some(5)));
        assert_eq!(reason(r), "WaitingForApplication");
        // A reference not in the cache: quiet for a moment, then ApplicationNotFound.
        assert!(matches!(
            missing_reference(&g, false, true, Some(Duration::from_secs(1))),
            Outcome::Pending { .. }
        ));
        let told = missing_reference(&g, false, true, Some(QUIET_MISSING_GRACE));
        assert!(matches!(
            told,
            Outcome::NotReady {
                reason: "ApplicationNotFound",
                ..
            }
        ));
        // In a namespace the operator does not watch it never turns up: told at once.
        let unwatched = missing_reference(&g, true, false, Some(Duration::from_secs(1)));
        assert!(matches!(
            unwatched,
            Outcome::NotReady {
                reason: "ApiNotFound",
                ..
            }
        ));
    }

    #[test]
    fn a_grant_is_unreported_until_it_has_a_ready_condition() {
        let now = Timestamp::from_second(1_000).expect("ts");
        let mut g = grant_for(&["read"]);
        g.metadata.creation_timestamp = Some(Time(Timestamp::from_second(990).expect("ts")));
        assert_eq!(unreported_age(&g, now), Some(Duration::from_secs(10)));
        g.status = Some(ApiGrantStatus {
            conditions: ready_conditions(),
            ..Default::default()
        });
        assert_eq!(unreported_age(&g, now), None);
    }
}

//! The kernel's pure rules: which conditions an outcome or an error gets, when a failed
//! object is retried, which Event a deletion that cannot finish publishes, who wins a
//! contest, which deletion policy applies. No I/O here: unit-tested with plain values.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;
use kube::runtime::events::EventType;

use super::error::{Error, Result};
use super::outcome::Outcome;
use crate::conditions::{self, HasConditions, Progress, reasons};
use crate::crd::{KindeAnnotations, PAUSED_ANNOTATION};

/// Deletion waits while the object is paused: no Kinde writes, as for any other change.
pub fn wait_if_paused(obj: &impl KindeAnnotations) -> Result<()> {
    if obj.is_paused() {
        return Err(Error::Blocked {
            reason: reasons::PAUSED,
            message: "deletion waits until the paused annotation is removed".into(),
        });
    }
    Ok(())
}

/// The condition message and Event type of a deletion that cannot finish.
pub(super) fn deletion_report(err: &Error) -> (String, EventType) {
    if err.is_wait() {
        (error_note(err), EventType::Normal)
    } else {
        (
            format!("deletion cannot finish: {}", error_note(err)),
            EventType::Warning,
        )
    }
}

/// How often a deletion that waits (paused, in use) looks again.
pub(super) const WAIT_RECHECK: Duration = Duration::from_secs(30);

/// First retry after a failure; doubled per consecutive failure of the same object.
pub(super) const FAILURE_BACKOFF_BASE: Duration = Duration::from_secs(10);

/// Longest retry interval after failures (never longer than a resync either).
pub(super) const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The retry interval after the `failures`-th consecutive failure: 10 s doubling up to
/// 5 min (or the resync period, if shorter), never earlier than Kinde's own reset hint.
pub(super) fn failure_backoff(
    failures: u32,
    retry_after: Option<Duration>,
    resync: Duration,
) -> Duration {
    let doubling = FAILURE_BACKOFF_BASE
        .checked_mul(1u32 << failures.saturating_sub(1).min(16))
        .unwrap_or(FAILURE_BACKOFF_MAX);
    let backoff = doubling.min(FAILURE_BACKOFF_MAX).min(resync);
    retry_after.map_or(backoff, |hint| hint.max(backoff))
}

/// The message of an error for Events and conditions: its chain, without the finalizer
/// wrapper, at most 1 KiB (the Events API limit).
pub fn error_note(e: &Error) -> String {
    let inner: &Error = match e {
        Error::Finalizer(f) => match f.as_ref() {
            kube::runtime::finalizer::Error::ApplyFailed(i)
            | kube::runtime::finalizer::Error::CleanupFailed(i) => i,
            _ => e,
        },
        _ => e,
    };
    let mut note = inner.to_string();
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push('…');
    }
    note
}

/// The resync period for a fleet: the configured one, stretched so that the drift reads of
/// one period (`reads`, about one Kinde read per object) take at most `read_share` of the
/// Kinde rate. 1,000 applications at 10 calls/s and a share of one half need 200 s; the
/// default 10 minutes holds 3,000. Unlimited rate (or a share of 0): the configured period.
pub fn resync_period(
    configured: Duration,
    reads: usize,
    rate: Option<f64>,
    read_share: f64,
) -> Duration {
    let Some(budget) = rate
        .map(|r| r * read_share)
        .filter(|b| b.is_finite() && *b > 0.0)
    else {
        return configured;
    };
    let needed = reads as f64 / budget;
    if needed.is_finite() && needed > configured.as_secs_f64() {
        Duration::try_from_secs_f64(needed).unwrap_or(configured)
    } else {
        configured
    }
}

/// How long until the object's own slot in the resync cycle: each object's slot is fixed
/// by a hash of `key` (stable across restarts), so a fleet's drift reads spread evenly over
/// the period instead of coming all at once after a fleet was applied together (which drew
/// 134 429s per period at 1,000 applications). Never sooner than a second.
pub fn until_resync_slot(key: &str, period: Duration, now_unix: Duration) -> Duration {
    let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
    let slot = stable_hash(key) % period_ms;
    let position = u64::try_from(now_unix.as_millis()).unwrap_or(0) % period_ms;
    let wait = (slot + period_ms - position) % period_ms;
    let wait = Duration::from_millis(wait);
    if wait < Duration::from_secs(1) {
        wait + period
    } else {
        wait
    }
}

pub use crate::identity::stable_hash;

pub(super) fn with_jitter(d: Duration) -> Duration {
    d + d.mul_f64(fastrand::f64() * 0.1)
}

/// Sets Ready and Synced for `generation` (and kstatus's pair from Ready, see
/// [`set_progress_conditions`]); keeps lastTransitionTime where status holds.
pub fn set_conditions(
    conds: &mut Vec<Condition>,
    generation: Option<i64>,
    ready: (bool, &str, String),
    synced: (bool, &str, String),
) {
    let now = Time(jiff::Timestamp::now());
    conditions::set_condition(
        conds,
        conditions::new_condition(
            conditions::READY,
            ready.0,
            ready.1,
            ready.2,
            generation,
            now.clone(),
        ),
    );
    conditions::set_condition(
        conds,
        conditions::new_condition(
            conditions::SYNCED,
            synced.0,
            synced.1,
            synced.2,
            generation,
            now.clone(),
        ),
    );
    set_progress_conditions(conds, generation, &now);
}

/// Sets kstatus's `Reconciling` and `Stalled` from `Ready` as just set: both False while
/// Ready is True; otherwise the one [`conditions::progress`] picks for Ready's reason is
/// True. Both always carry Ready's reason and message (kstatus reports the message of the
/// one that holds) and are always present, so their `lastTransitionTime` says since when
/// an object stalls, or stopped stalling.
fn set_progress_conditions(conds: &mut Vec<Condition>, generation: Option<i64>, now: &Time) {
    let Some(ready) = conditions::find_condition(conds, conditions::READY).cloned() else {
        return;
    };
    let not_ready = !conditions::is_true(conds, conditions::READY);
    let progress = conditions::progress(&ready.reason);
    for (type_, class) in [
        (conditions::RECONCILING, Progress::Reconciling),
        (conditions::STALLED, Progress::Stalled),
    ] {
        conditions::set_condition(
            conds,
            conditions::new_condition(
                type_,
                not_ready && progress == class,
                &ready.reason,
                ready.message.clone(),
                generation,
                now.clone(),
            ),
        );
    }
}

/// Conditions for a reconcile that could not finish: Synced says why; Ready keeps its
/// status unless `not_ready` (the object is not usable, e.g. its Kinde object is gone).
pub fn set_failure(
    conds: &mut Vec<Condition>,
    generation: Option<i64>,
    err: &Error,
    not_ready: bool,
) {
    let now = Time(jiff::Timestamp::now());
    let note = error_note(err);
    let ready_now = conditions::is_true(conds, conditions::READY) && !not_ready;
    if !ready_now {
        conditions::set_condition(
            conds,
            conditions::new_condition(
                conditions::READY,
                false,
                err.reason(),
                note.clone(),
                generation,
                now.clone(),
            ),
        );
    }
    conditions::set_condition(
        conds,
        conditions::new_condition(
            conditions::SYNCED,
            false,
            err.reason(),
            note,
            generation,
            now.clone(),
        ),
    );
    set_progress_conditions(conds, generation, &now);
}

/// The status message for a paused object.
pub fn paused_conditions(conds: &mut Vec<Condition>, generation: Option<i64>, ready: bool) {
    let msg = format!("{PAUSED_ANNOTATION} is set: no Kinde writes until it is removed");
    let ready_reason = if ready {
        reasons::RECONCILED
    } else {
        reasons::PAUSED
    };
    set_conditions(
        conds,
        generation,
        (
            ready,
            ready_reason,
            if ready { "ready".into() } else { msg.clone() },
        ),
        (false, reasons::PAUSED, msg),
    );
}

/// Older objects win a contest (two grants for one pair, two adoptions of one Kinde
/// object): creation time, then namespace and name.
pub fn is_older(a: &impl Resource, b: &impl Resource) -> bool {
    let key = |m: &kube::api::ObjectMeta| {
        (
            m.creation_timestamp.clone().map(|t| t.0),
            m.namespace.clone(),
            m.name.clone(),
        )
    };
    key(a.meta()) < key(b.meta())
}

/// The deletion policy in force: the spec's, else `Delete` for objects the operator
/// created and `Orphan` for adopted ones (annotated, or adopted before).
pub fn effective_deletion_policy(
    spec: Option<crate::crd::DeletionPolicy>,
    adopted: bool,
) -> crate::crd::DeletionPolicy {
    spec.unwrap_or(if adopted {
        crate::crd::DeletionPolicy::Orphan
    } else {
        crate::crd::DeletionPolicy::Delete
    })
}

/// Records how a reconcile of a `kind` ended in its status: the conditions
/// ([`set_outcome_conditions`]) and `observedGeneration`, both for `generation`.
pub fn record_outcome(
    status: &mut impl HasConditions,
    generation: Option<i64>,
    kind: &str,
    outcome: &Result<Outcome>,
) {
    if matches!(outcome, Ok(Outcome::Pending { .. })) {
        // Nothing observed yet: neither conditions nor observedGeneration move.
        return;
    }
    set_outcome_conditions(status.conditions_mut(), generation, kind, outcome);
    status.set_observed_generation(generation);
}

/// Sets Ready and Synced for how a reconcile of a `kind` ended: converged (both True,
/// `Reconciled`), paused (Synced False `Paused`; Ready says whether the object is usable),
/// not ready (both False with the reason), or failed (Synced False with the error's reason;
/// Ready keeps its status, an object that worked keeps working while Kinde fails).
pub(super) fn set_outcome_conditions(
    conds: &mut Vec<Condition>,
    generation: Option<i64>,
    kind: &str,
    outcome: &Result<Outcome>,
) {
    match outcome {
        Ok(Outcome::Ready | Outcome::ReadyFor(_)) => set_conditions(
            conds,
            generation,
            (
                true,
                reasons::RECONCILED,
                format!("{kind} is in sync with Kinde"),
            ),
            (true, reasons::RECONCILED, "last reconcile converged".into()),
        ),
        Ok(Outcome::Paused { ready }) => paused_conditions(conds, generation, *ready),
        Ok(Outcome::NotReady {
            reason, message, ..
        }) => set_conditions(
            conds,
            generation,
            (false, reason, message.clone()),
            (false, reason, message.clone()),
        ),
        Ok(Outcome::Pending { .. }) => {}
        Err(e) => set_failure(conds, generation, e, false),
    }
}

/// The Warning Event of a not-Ready outcome, `(reason, message)`: only when Ready was not
/// already False for that reason (no Event storm while an object waits or is refused).
pub(super) fn outcome_event<'a>(
    old_ready: Option<&(String, String)>,
    outcome: &'a Result<Outcome>,
) -> Option<(&'a str, &'a str, EventType)> {
    match outcome {
        Ok(Outcome::NotReady {
            reason, message, ..
        }) if old_ready != Some(&(conditions::FALSE.to_owned(), (*reason).to_owned())) => {
            // A wait converges by itself (Normal); what stalls needs someone (Warning).
            let kind = match conditions::progress(reason) {
                conditions::Progress::Reconciling => EventType::Normal,
                conditions::Progress::Stalled => EventType::Warning,
            };
            Some((reason, message, kind))
        }
        _ => None,
    }
}

/// When to look again after an outcome; `None`: at the next (jittered) resync. Work due
/// sooner than a resync (retiring credentials, a scheduled rotation) is looked at a second
/// past its time; a not-Ready object never later than a resync (what it waits on without
/// watching it, such as a namespace's labels, is re-read at least as often as drift is).
pub(super) fn requeue_after(outcome: &Outcome, resync: Duration) -> Option<Duration> {
    match outcome {
        Outcome::Ready | Outcome::Paused { .. } => None,
        Outcome::ReadyFor(d) if *d < resync => Some(d.saturating_add(Duration::from_secs(1))),
        Outcome::ReadyFor(_) => None,
        Outcome::NotReady { requeue, .. } | Outcome::Pending { requeue } => {
            Some(with_jitter((*requeue).min(resync)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resync_period_stretches_to_hold_drift_reads_to_their_share() {
        let ten_min = Duration::from_secs(600);
        // 1,000 reads at 10/s, half for reads: 200 s needed, the 10 minutes stand.
        assert_eq!(resync_period(ten_min, 1_000, Some(10.0), 0.5), ten_min);
        // 10,000 at 10/s, half: 2,000 s.
        assert_eq!(
            resync_period(ten_min, 10_000, Some(10.0), 0.5),
            Duration::from_secs(2_000)
        );
        // Unlimited or no share: as configured.
        assert_eq!(resync_period(ten_min, 10_000, None, 0.5), ten_min);
        assert_eq!(resync_period(ten_min, 10_000, Some(10.0), 0.0), ten_min);
        assert_eq!(
            resync_period(ten_min, usize::MAX, Some(1e-300), 1.0),
            ten_min
        );
    }

    #[test]
    fn resync_slots_spread_evenly_and_stay_put() {
        let period = Duration::from_secs(100);
        let now = Duration::from_secs(1_000_000);
        let waits: Vec<Duration> = (0..1_000)
            .map(|i| until_resync_slot(&format!("M2MApplication/customer-{i}/app"), period, now))
            .collect();
        assert!(
            waits
                .iter()
                .all(|w| *w >= Duration::from_secs(1) && *w <= period + Duration::from_secs(1))
        );
        // Ten buckets of 10 s each hold about a tenth each.
        let mut buckets = [0usize; 11];
        for w in &waits {
            buckets[usize::try_from(w.as_secs() / 10).unwrap_or(10).min(10)] += 1;
        }
        assert!(
            buckets[..10].iter().all(|n| (60..=140).contains(n)),
            "{buckets:?}"
        );
        // The same object lands on the same slot a period later.
        let key = "ApiGrant/customer-7/grant";
        let first = until_resync_slot(key, period, now);
        let next = until_resync_slot(key, period, now + first);
        assert_eq!(next, period);
    }

    #[test]
    fn failures_back_off_exponentially_per_object() {
        let resync = Duration::from_secs(600);
        let secs = |n| failure_backoff(n, None, resync).as_secs();
        assert_eq!(
            [secs(1), secs(2), secs(3), secs(4), secs(5)],
            [10, 20, 40, 80, 160]
        );
        assert_eq!(secs(6), 300);
        assert_eq!(secs(u32::MAX), 300, "no overflow, capped");
        assert_eq!(secs(0), 10);
        // Never longer than a resync, never sooner than Kinde's hint.
        assert_eq!(
            failure_backoff(9, None, Duration::from_secs(60)).as_secs(),
            60
        );
        assert_eq!(
            failure_backoff(1, Some(Duration::from_secs(45)), resync).as_secs(),
            45
        );
        assert_eq!(
            failure_backoff(5, Some(Duration::from_secs(45)), resync).as_secs(),
            160
        );
    }

    #[test]
    fn unfinished_deletions_are_normal_when_waiting_and_warnings_when_failing() {
        let wait = Error::Blocked {
            reason: reasons::IN_USE,
            message: "deletion waits: 1 ApiGrant(s) still grant access".into(),
        };
        let (message, kind) = deletion_report(&wait);
        assert_eq!(kind, EventType::Normal);
        assert!(message.starts_with("deletion waits"), "{message}");
        assert!(wait.is_wait());
        let failed = Error::InvalidSpec("x".into());
        let (message, kind) = deletion_report(&failed);
        assert_eq!(kind, EventType::Warning);
        assert!(message.starts_with("deletion cannot finish"), "{message}");
        assert!(!failed.is_wait());
    }

    /// `(status, reason)` of the conditions `a` and `b`.
    fn two_conditions(
        conds: &[Condition],
        a: &str,
        b: &str,
    ) -> ((String, String), (String, String)) {
        let get = |t: &str| {
            conditions::find_condition(conds, t)
                .map(|c| (c.status.clone(), c.reason.clone()))
                .unwrap_or_default()
        };
        (get(a), get(b))
    }

    fn ready_and_synced(conds: &[Condition]) -> ((String, String), (String, String)) {
        two_conditions(conds, conditions::READY, conditions::SYNCED)
    }

    fn pair(status: &str, reason: &str) -> (String, String) {
        (status.to_owned(), reason.to_owned())
    }

    #[test]
    fn ready_and_synced_per_outcome() {
        let not_ready = |r: &'static str| Outcome::not_ready(r, "why");
        type StatusReason = (String, String);
        let cases: Vec<(Result<Outcome>, StatusReason, StatusReason)> = vec![
            (
                Ok(Outcome::Ready),
                pair("True", "Reconciled"),
                pair("True", "Reconciled"),
            ),
            (
                Ok(Outcome::ReadyFor(Duration::from_secs(5))),
                pair("True", "Reconciled"),
                pair("True", "Reconciled"),
            ),
            (
                Ok(Outcome::Paused { ready: true }),
                pair("True", "Reconciled"),
                pair("False", "Paused"),
            ),
            (
                Ok(Outcome::Paused { ready: false }),
                pair("False", "Paused"),
                pair("False", "Paused"),
            ),
            (
                Ok(not_ready(reasons::SECRET_CONFLICT)),
                pair("False", "SecretConflict"),
                pair("False", "SecretConflict"),
            ),
            (
                Err(Error::InvalidSpec("bad".into())),
                pair("False", "InvalidSpec"),
                pair("False", "InvalidSpec"),
            ),
        ];
        for (outcome, ready, synced) in cases {
            let mut conds = Vec::new();
            set_outcome_conditions(&mut conds, Some(3), "M2MApplication", &outcome);
            assert_eq!(ready_and_synced(&conds), (ready, synced), "{outcome:?}");
            assert!(conds.iter().all(|c| c.observed_generation == Some(3)));
        }
    }

    /// `(status, reason)` of Reconciling and of Stalled.
    fn kstatus_pair(conds: &[Condition]) -> ((String, String), (String, String)) {
        two_conditions(conds, conditions::RECONCILING, conditions::STALLED)
    }

    #[test]
    fn reconciling_or_stalled_per_outcome_neither_when_ready() {
        type Pair = (&'static str, &'static str);
        let cases: Vec<(Result<Outcome>, Pair, Pair)> = vec![
            (
                Ok(Outcome::Ready),
                ("False", "Reconciled"),
                ("False", "Reconciled"),
            ),
            (
                Ok(Outcome::Paused { ready: true }),
                ("False", "Reconciled"),
                ("False", "Reconciled"),
            ),
            (
                Ok(Outcome::Paused { ready: false }),
                ("False", "Paused"),
                ("True", "Paused"),
            ),
            (
                Ok(Outcome::not_ready(reasons::WAITING_FOR_API, "why")),
                ("True", "WaitingForApi"),
                ("False", "WaitingForApi"),
            ),
            (
                Ok(Outcome::not_ready(reasons::SCOPE_NOT_FOUND, "why")),
                ("False", "ScopeNotFound"),
                ("True", "ScopeNotFound"),
            ),
            (
                Err(Error::InvalidSpec("bad".into())),
                ("False", "InvalidSpec"),
                ("True", "InvalidSpec"),
            ),
            (
                Err(Error::Blocked {
                    reason: "KindeUnavailable",
                    message: "Kinde is down".into(),
                }),
                ("True", "KindeUnavailable"),
                ("False", "KindeUnavailable"),
            ),
        ];
        for (outcome, reconciling, stalled) in cases {
            let mut conds = Vec::new();
            set_outcome_conditions(&mut conds, Some(4), "ApiGrant", &outcome);
            assert_eq!(
                kstatus_pair(&conds),
                (
                    pair(reconciling.0, reconciling.1),
                    pair(stalled.0, stalled.1)
                ),
                "{outcome:?}"
            );
            let ready = conditions::find_condition(&conds, conditions::READY).map(|c| &c.message);
            for c in &conds {
                assert_eq!(c.observed_generation, Some(4));
                if [conditions::RECONCILING, conditions::STALLED].contains(&c.type_.as_str()) {
                    assert_eq!(
                        Some(&c.message),
                        ready,
                        "{} repeats Ready's message",
                        c.type_
                    );
                }
            }
        }
    }

    #[test]
    fn kstatus_conditions_keep_their_transition_time_until_their_status_flips() {
        let long_ago = Time(jiff::Timestamp::from_second(1_000).expect("a time"));
        let at = |conds: &[Condition], t: &str| {
            conditions::find_condition(conds, t).map(|c| c.last_transition_time.clone())
        };
        let mut conds = Vec::new();
        set_outcome_conditions(
            &mut conds,
            Some(1),
            "ApiGrant",
            &Ok(Outcome::not_ready(reasons::APPLICATION_NOT_FOUND, "no app")),
        );
        for c in &mut conds {
            c.last_transition_time = long_ago.clone();
        }
        // Another wait: Reconciling stays True, Stalled False; both keep their times.
        set_outcome_conditions(
            &mut conds,
            Some(1),
            "ApiGrant",
            &Ok(Outcome::not_ready(
                reasons::WAITING_FOR_APPLICATION,
                "app not Ready",
            )),
        );
        assert_eq!(at(&conds, conditions::RECONCILING), Some(long_ago.clone()));
        assert_eq!(at(&conds, conditions::STALLED), Some(long_ago.clone()));
        // A refusal: both flip, so both get a new time.
        set_outcome_conditions(
            &mut conds,
            Some(2),
            "ApiGrant",
            &Ok(Outcome::not_ready(reasons::SCOPE_NOT_FOUND, "no scope")),
        );
        assert_eq!(
            kstatus_pair(&conds),
            (
                pair("False", "ScopeNotFound"),
                pair("True", "ScopeNotFound")
            )
        );
        assert_ne!(at(&conds, conditions::RECONCILING), Some(long_ago.clone()));
        assert_ne!(at(&conds, conditions::STALLED), Some(long_ago));
        assert_eq!(conds.len(), 4, "{conds:?}");
    }

    #[test]
    fn a_failure_keeps_ready_of_an_object_that_worked() {
        let mut conds = Vec::new();
        set_outcome_conditions(&mut conds, Some(1), "ApiGrant", &Ok(Outcome::Ready));
        let since = conditions::find_condition(&conds, conditions::READY)
            .map(|c| c.last_transition_time.clone());
        let err = Error::Blocked {
            reason: "KindeUnavailable",
            message: "Kinde is down".into(),
        };
        set_outcome_conditions(&mut conds, Some(1), "ApiGrant", &Err(err));
        let (ready, synced) = ready_and_synced(&conds);
        assert_eq!(ready, pair("True", "Reconciled"));
        assert_eq!(synced, pair("False", "KindeUnavailable"));
        assert_eq!(
            conditions::find_condition(&conds, conditions::READY)
                .map(|c| c.last_transition_time.clone()),
            since,
            "lastTransitionTime kept while Ready holds"
        );
    }

    #[test]
    fn not_ready_events_once_per_reason() {
        let outcome = Ok(Outcome::not_ready(reasons::CONFLICT, "older grant wins"));
        assert_eq!(
            outcome_event(None, &outcome),
            Some((reasons::CONFLICT, "older grant wins", EventType::Warning))
        );
        // A wait is Normal (README: waiting reasons are Normal Events).
        let waiting = Ok(Outcome::not_ready(
            reasons::WAITING_FOR_API,
            "the API is not Ready",
        ));
        assert_eq!(
            outcome_event(None, &waiting).map(|e| e.2),
            Some(EventType::Normal)
        );
        assert_eq!(
            outcome_event(Some(&pair("True", "Reconciled")), &outcome).map(|e| e.0),
            Some("Conflict")
        );
        assert_eq!(
            outcome_event(Some(&pair("False", "Conflict")), &outcome),
            None
        );
        assert_eq!(outcome_event(None, &Ok(Outcome::Ready)), None);
    }

    #[test]
    fn requeues() {
        let resync = Duration::from_secs(600);
        assert_eq!(requeue_after(&Outcome::Ready, resync), None);
        assert_eq!(
            requeue_after(&Outcome::ReadyFor(Duration::from_secs(30)), resync),
            Some(Duration::from_secs(31))
        );
        assert_eq!(
            requeue_after(&Outcome::ReadyFor(Duration::from_secs(3600)), resync),
            None
        );
        let waiting = Outcome::NotReady {
            reason: reasons::WAITING_FOR_API,
            message: String::new(),
            requeue: Duration::from_secs(3600),
        };
        let after = requeue_after(&waiting, resync).expect("requeued");
        assert!(after >= resync && after <= resync.mul_f64(1.1), "{after:?}");
    }

    #[test]
    fn deletion_policy_defaults() {
        use crate::crd::DeletionPolicy;
        assert_eq!(
            effective_deletion_policy(None, false),
            DeletionPolicy::Delete
        );
        assert_eq!(
            effective_deletion_policy(None, true),
            DeletionPolicy::Orphan
        );
        assert_eq!(
            effective_deletion_policy(Some(DeletionPolicy::Delete), true),
            DeletionPolicy::Delete
        );
        assert_eq!(
            effective_deletion_policy(Some(DeletionPolicy::Orphan), false),
            DeletionPolicy::Orphan
        );
    }
}

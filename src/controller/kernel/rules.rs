//! The kernel's pure rules: which conditions an outcome or an error gets, when a failed
//! object is retried, which Event a deletion that cannot finish publishes, who wins a
//! contest, which deletion policy applies. No I/O here: unit-tested with plain values.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;
use kube::runtime::events::EventType;

use super::error::{Error, Result};
use crate::conditions::{self, reasons};
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

pub(super) fn with_jitter(d: Duration) -> Duration {
    d + d.mul_f64(fastrand::f64() * 0.1)
}

/// Sets Ready and Synced for `generation`; keeps lastTransitionTime where status holds.
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
            now,
        ),
    );
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
            now,
        ),
    );
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! How a reconcile ended, short of an error.

use std::time::Duration;

/// How a reconcile ended, short of an error.
#[derive(Debug)]
pub enum Outcome {
    /// Converged: Kinde matches the spec.
    Ready,
    /// Converged, with work due within this long (retiring credentials, a scheduled
    /// rotation): requeue then at the latest.
    ReadyFor(Duration),
    /// Paused by annotation; `ready` tells whether the object is usable as it stands.
    Paused { ready: bool },
    /// Cannot converge now: waiting on another object, or refused (bad input); the
    /// reason is a condition reason, the message tells the user what to do.
    NotReady {
        reason: &'static str,
        message: String,
        requeue: Duration,
    },
}

impl Outcome {
    pub fn not_ready(reason: &'static str, message: impl Into<String>) -> Self {
        Outcome::NotReady {
            reason,
            message: message.into(),
            requeue: Duration::from_secs(60),
        }
    }

    /// An adoption the cluster's policy refuses.
    pub fn refused(refusal: crate::adoption::Refusal) -> Self {
        Outcome::not_ready(refusal.reason, refusal.message)
    }
}

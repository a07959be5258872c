//! How a reconcile ended, short of an error.

use std::time::Duration;

use super::error::{Error, Result};

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
    /// Nothing to report yet: a new object waits on a neighbour that has not reported
    /// either (applied together, its first reconcile has not finished). The conditions are
    /// left as they are, no Event goes out; the neighbour's status wakes the object, or
    /// `requeue` does. Saves a fleet applied at once a status write and a Warning per
    /// object for a wait that is over in seconds.
    Pending { requeue: Duration },
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

/// Why a step of a reconcile stopped early: an outcome to report (waiting on another object,
/// refused, paused) or a failure. The one early-return type of every step, so a step's
/// `?` carries either.
#[derive(Debug)]
pub enum Stop {
    Outcome(Outcome),
    Failed(Error),
}

/// What a step of a reconcile returns.
pub type Step<T> = std::result::Result<T, Stop>;

impl Stop {
    /// How a converge that stopped here ends.
    pub fn into_result(self) -> Result<Outcome> {
        match self {
            Stop::Outcome(o) => Ok(o),
            Stop::Failed(e) => Err(e),
        }
    }
}

impl From<Outcome> for Stop {
    fn from(o: Outcome) -> Self {
        Stop::Outcome(o)
    }
}

impl<E: Into<Error>> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Failed(e.into())
    }
}

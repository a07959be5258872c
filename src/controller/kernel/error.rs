//! Reconcile errors. Each has a stable name, used as the Warning Event reason, the metric
//! label and (where the condition has none of its own) the condition reason.

use crate::conditions::reasons;
use crate::kinde::KindeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kinde(#[from] KindeError),

    /// A Kinde error shared by the reconciles of one batched call.
    #[error(transparent)]
    KindeBatch(std::sync::Arc<KindeError>),

    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// The spec cannot be acted on; fixing the spec is the way out.
    #[error("{0}")]
    InvalidSpec(String),

    /// Progress waits on something outside this object (a reason constant and a message).
    #[error("{message}")]
    Blocked {
        reason: &'static str,
        message: String,
    },

    /// The object lacks something Kubernetes always sets (namespace, uid).
    #[error("object has no {0}")]
    MissingMetadata(&'static str),
}

impl From<std::sync::Arc<KindeError>> for Error {
    fn from(e: std::sync::Arc<KindeError>) -> Self {
        Error::KindeBatch(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The stable name of this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kinde(e) => e.kind().as_str(),
            Error::KindeBatch(e) => e.kind().as_str(),
            Error::Kube(_) => reasons::KUBERNETES_ERROR,
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => reasons::FINALIZER_ERROR,
            },
            Error::InvalidSpec(_) => reasons::INVALID_SPEC,
            Error::Blocked { reason, .. } => reason,
            Error::MissingMetadata(_) => reasons::MISSING_METADATA,
        }
    }

    /// The error inside the finalizer wrapper (what apply or cleanup returned).
    pub fn inner(&self) -> &Error {
        match self {
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            _ => self,
        }
    }

    /// Whether this is a wait (deletion paused, or held by users), not a failure.
    pub(crate) fn is_wait(&self) -> bool {
        matches!(self.inner(), Error::Blocked { .. })
    }

    /// Seconds until a retry makes sense, when the error says so.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Kinde(e) => e.retry_after(),
            Error::KindeBatch(e) => e.retry_after(),
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.retry_after(),
                _ => None,
            },
            _ => None,
        }
    }
}

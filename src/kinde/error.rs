//! Errors of the Kinde client, classified so callers can act on them.
//!
//! Messages carry the operation, HTTP status and Kinde's own `code`/`message` (truncated),
//! never a request or response body: bodies can hold secrets and tokens.

use std::time::Duration;

use serde::Deserialize;

/// Declares [`ErrorKind`] and its [`ErrorKind::ALL`] from one list, so no kind is missing
/// from ALL (the tests that cover every condition reason iterate it).
macro_rules! error_kinds {
    ($($kind:ident),* $(,)?) => {
        /// Stable names for error kinds: used as metric labels and Event reasons.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $($kind),*
        }

        impl ErrorKind {
            /// Every kind, in declaration order.
            pub const ALL: &[ErrorKind] = &[$(ErrorKind::$kind),*];
        }
    };
}

error_kinds!(
    NotFound,
    Unauthorized,
    Forbidden,
    RateLimited,
    Retryable,
    OutcomeUnknown,
    Invalid,
    Decode,
    Config,
    Fenced,
);

impl ErrorKind {
    /// The kind whose stable name is `name` (a condition reason read back), if any.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        Self::ALL.iter().copied().find(|k| k.as_str() == name)
    }

    /// The stable name (`KindeNotFound`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "KindeNotFound",
            ErrorKind::Unauthorized => "KindeUnauthorized",
            ErrorKind::Forbidden => "KindeForbidden",
            ErrorKind::RateLimited => "KindeRateLimited",
            ErrorKind::Retryable => "KindeUnavailable",
            ErrorKind::OutcomeUnknown => "KindeOutcomeUnknown",
            ErrorKind::Invalid => "KindeRejected",
            ErrorKind::Decode => "KindeBadResponse",
            ErrorKind::Config => "KindeConfig",
            ErrorKind::Fenced => "NotLeader",
        }
    }
}

/// Kinde's `code` and `message` from an error body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindeErrorBody {
    pub code: Option<String>,
    pub message: Option<String>,
}

impl std::fmt::Display for KindeErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.code, &self.message) {
            (Some(c), Some(m)) => write!(f, "{c}: {m}"),
            (Some(c), None) => f.write_str(c),
            (None, Some(m)) => f.write_str(m),
            (None, None) => f.write_str("no error details"),
        }
    }
}

/// Longest Kinde message copied into an error; Kinde's are short, this stops a
/// misbehaving server from flooding conditions and logs.
const MAX_MESSAGE_CHARS: usize = 200;

impl KindeErrorBody {
    /// Parses the three error shapes Kinde uses: `{"errors":[{code,message}]}`,
    /// `{"errors":{code,message}}`, a bare `{code,message}`, plus OAuth2's
    /// `{error, error_description}`. Anything else yields an empty body.
    pub fn parse(body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Item {
            code: Option<String>,
            message: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Errors {
            List(Vec<Item>),
            One(Item),
        }
        #[derive(Deserialize)]
        struct Shape {
            errors: Option<Errors>,
            code: Option<String>,
            message: Option<String>,
            error: Option<String>,
            error_description: Option<String>,
        }
        let Ok(shape) = serde_json::from_slice::<Shape>(body) else {
            return Self::default();
        };
        let (code, message) = match shape.errors {
            Some(Errors::List(items)) => match items.into_iter().next() {
                Some(i) => (i.code, i.message),
                None => (None, None),
            },
            Some(Errors::One(i)) => (i.code, i.message),
            None => (
                shape.code.or(shape.error),
                shape.message.or(shape.error_description),
            ),
        };
        Self {
            code: code.map(|c| truncate(&c)),
            message: message.map(|m| truncate(&m)),
        }
    }

    /// Kinde reports some missing objects as 400 with a `*_NOT_FOUND` code
    /// (`ROUTE_NOT_FOUND` excepted, see [`Self::is_route_not_found`]).
    pub(crate) fn is_not_found_code(&self) -> bool {
        self.code
            .as_deref()
            .is_some_and(|c| c.ends_with("_NOT_FOUND"))
            && !self.is_route_not_found()
    }

    /// `ROUTE_NOT_FOUND`: the URL is wrong (domain, path, API version), which says nothing
    /// about the object. Counting it as "gone" would let a delete succeed against a
    /// misconfigured domain and orphan the Kinde object.
    pub(crate) fn is_route_not_found(&self) -> bool {
        self.code.as_deref() == Some("ROUTE_NOT_FOUND")
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_MESSAGE_CHARS {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_MESSAGE_CHARS).collect();
        t.push('…');
        t
    }
}

/// Why a call that may be retried failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transient {
    /// Kinde answered 5xx.
    Server(u16),
    /// Connection failed or broke.
    Transport,
    /// No answer within the request timeout.
    Timeout,
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transient::Server(s) => write!(f, "HTTP {s}"),
            Transient::Transport => f.write_str("connection error"),
            Transient::Timeout => f.write_str("timed out"),
        }
    }
}

/// Every way a Kinde call can fail.
#[derive(Debug, thiserror::Error)]
pub enum KindeError {
    /// The object does not exist (404, or 400 with a `*_NOT_FOUND` code).
    #[error("{operation}: not found in Kinde ({body})")]
    NotFound {
        operation: &'static str,
        body: KindeErrorBody,
    },

    /// The management credentials were refused (token endpoint, or a token Kinde rejects
    /// even after a fresh one was fetched).
    #[error("{operation}: Kinde refused the management credentials (HTTP {status}, {body})")]
    Unauthorized {
        operation: &'static str,
        status: u16,
        body: KindeErrorBody,
    },

    /// Authenticated, but the management app lacks the scope this call needs.
    #[error(
        "{operation}: forbidden by Kinde, the management application probably lacks the scope `{scope}` ({body})"
    )]
    Forbidden {
        operation: &'static str,
        scope: &'static str,
        body: KindeErrorBody,
    },

    /// 429 after every retry; `retry_after` is Kinde's reset hint.
    #[error("{operation}: rate limited by Kinde{}", retry_after.map(|d| format!(", reset in {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        operation: &'static str,
        retry_after: Option<Duration>,
    },

    /// 5xx, transport error or timeout after every retry.
    #[error("{operation}: Kinde unavailable ({reason}) after {attempts} attempt(s)")]
    Retryable {
        operation: &'static str,
        reason: Transient,
        attempts: u32,
    },

    /// A create whose response was lost: Kinde may or may not have made the object.
    /// Never retried blindly; the caller must look the object up before creating again.
    #[error(
        "{operation}: the outcome is unknown ({reason}): Kinde may have created the object; look it up before retrying"
    )]
    OutcomeUnknown {
        operation: &'static str,
        reason: Transient,
    },

    /// Kinde rejected the request (4xx other than the above).
    #[error("{operation}: Kinde rejected the request (HTTP {status}, {body})")]
    Invalid {
        operation: &'static str,
        status: u16,
        body: KindeErrorBody,
    },

    /// A 2xx whose body is not what the contract says.
    #[error("{operation}: unexpected response from Kinde: {detail}")]
    Decode {
        operation: &'static str,
        detail: String,
    },

    /// An id that is not a plain Kinde id (e.g. from an `external-id` annotation).
    #[error("{operation}: `{id}` is not a valid Kinde id (letters, digits, `_` and `-` only)")]
    InvalidId { operation: &'static str, id: String },

    /// A write not sent because this replica's leadership term has ended.
    #[error("{operation}: not sent: this replica is no longer the leader")]
    Fenced { operation: &'static str },

    /// The client was configured with something unusable.
    #[error("Kinde client configuration: {0}")]
    Config(String),
}

impl KindeError {
    /// Whether a create that failed so surely made nothing in Kinde: Kinde refused it before
    /// doing anything (throttled, unauthorized, forbidden, invalid), or it was never sent.
    /// Anything else (a timeout, a server error, a lost or unreadable success) may have
    /// created the object.
    pub fn created_nothing(&self) -> bool {
        matches!(
            self,
            KindeError::RateLimited { .. }
                | KindeError::Unauthorized { .. }
                | KindeError::Forbidden { .. }
                | KindeError::Invalid { .. }
                | KindeError::Fenced { .. }
                | KindeError::Config(_)
        )
    }

    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            KindeError::NotFound { .. } => ErrorKind::NotFound,
            KindeError::Unauthorized { .. } => ErrorKind::Unauthorized,
            KindeError::Forbidden { .. } => ErrorKind::Forbidden,
            KindeError::RateLimited { .. } => ErrorKind::RateLimited,
            KindeError::Retryable { .. } => ErrorKind::Retryable,
            KindeError::OutcomeUnknown { .. } => ErrorKind::OutcomeUnknown,
            KindeError::Invalid { .. } | KindeError::InvalidId { .. } => ErrorKind::Invalid,
            KindeError::Decode { .. } => ErrorKind::Decode,
            KindeError::Config(_) => ErrorKind::Config,
            KindeError::Fenced { .. } => ErrorKind::Fenced,
        }
    }

    /// True when the object is gone; deletes treat this as done.
    pub fn is_not_found(&self) -> bool {
        matches!(self, KindeError::NotFound { .. })
    }

    /// True when trying again later may succeed without a change of input.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            KindeError::RateLimited { .. }
                | KindeError::Retryable { .. }
                | KindeError::OutcomeUnknown { .. }
        )
    }

    /// Kinde's hint for when to try again, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            KindeError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_distinct_and_round_trip() {
        let names: std::collections::BTreeSet<&str> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(kind.as_str()), Some(*kind));
        }
        assert_eq!(ErrorKind::from_name("InvalidSpec"), None);
    }

    #[test]
    fn parses_the_three_kinde_shapes_and_oauth() {
        let list = KindeErrorBody::parse(
            br#"{"errors":[{"code":"APPLICATION_NOT_FOUND","message":"gone"}]}"#,
        );
        assert_eq!(list.code.as_deref(), Some("APPLICATION_NOT_FOUND"));
        assert_eq!(list.message.as_deref(), Some("gone"));
        assert!(list.is_not_found_code());

        let object =
            KindeErrorBody::parse(br#"{"errors":{"code":"ROUTE_NOT_FOUND","message":"no route"}}"#);
        assert_eq!(object.code.as_deref(), Some("ROUTE_NOT_FOUND"));
        assert!(object.is_route_not_found() && !object.is_not_found_code());

        let bare = KindeErrorBody::parse(br#"{"code":"INVALID","message":"bad"}"#);
        assert_eq!(bare.code.as_deref(), Some("INVALID"));
        assert!(!bare.is_not_found_code());

        let oauth =
            KindeErrorBody::parse(br#"{"error":"invalid_client","error_description":"nope"}"#);
        assert_eq!(oauth.code.as_deref(), Some("invalid_client"));
        assert_eq!(oauth.message.as_deref(), Some("nope"));
    }

    #[test]
    fn garbage_and_empty_bodies_give_no_details() {
        assert_eq!(KindeErrorBody::parse(b"<html>"), KindeErrorBody::default());
        assert_eq!(KindeErrorBody::parse(b""), KindeErrorBody::default());
        assert_eq!(
            KindeErrorBody::parse(br#"{"errors":[]}"#),
            KindeErrorBody::default()
        );
        assert_eq!(KindeErrorBody::default().to_string(), "no error details");
    }

    #[test]
    fn long_messages_are_truncated() {
        let long = "x".repeat(5000);
        let body =
            KindeErrorBody::parse(format!(r#"{{"code":"C","message":"{long}"}}"#).as_bytes());
        assert_eq!(
            body.message.map(|m| m.chars().count()),
            Some(MAX_MESSAGE_CHARS + 1)
        );
    }

    #[test]
    fn kinds_have_stable_names() {
        let e = KindeError::OutcomeUnknown {
            operation: "createApplication",
            reason: Transient::Timeout,
        };
        assert_eq!(e.kind().as_str(), "KindeOutcomeUnknown");
        assert!(e.is_transient());
        assert!(e.to_string().contains("look it up"));
    }
}

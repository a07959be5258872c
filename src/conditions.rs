//! Status conditions: types, reasons and a pure updater.
//!
//! Every kind reports two conditions (SPEC section 2):
//! - [`READY`]: the Kinde object exists and matches the spec (for a grant: access works).
//! - [`SYNCED`]: the last reconcile reached Kinde and converged, or says why not.
//!
//! Both carry a reason from [`reasons`], a human message and `observedGeneration`.
//!
//! Beside them, kstatus's [`RECONCILING`] and [`STALLED`] (what Flux, kpt and Config Sync
//! read, <https://github.com/kubernetes-sigs/cli-utils/tree/master/pkg/kstatus>): while
//! Ready is False, exactly one of them is True, chosen by [`progress`] from Ready's reason.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition type: the object is usable.
pub const READY: &str = "Ready";
/// Condition type: the last reconcile converged with Kinde.
pub const SYNCED: &str = "Synced";
/// Condition type (kstatus): the object is not Ready yet and gets there by itself.
pub const RECONCILING: &str = "Reconciling";
/// Condition type (kstatus): the object is not Ready and will not be until something
/// changes (its spec, a neighbour, the operator's configuration or credentials).
pub const STALLED: &str = "Stalled";

/// `status` of a condition that holds.
const TRUE: &str = "True";
/// `status` of a condition that does not hold.
pub(crate) const FALSE: &str = "False";

/// Condition reasons (UpperCamelCase, stable: users and alerts match on them).
pub mod reasons {
    /// Everything converged.
    pub(crate) const RECONCILED: &str = "Reconciled";
    /// The `m2m.kinde-operator.io/paused` annotation stops Kinde writes.
    pub const PAUSED: &str = "Paused";
    /// The spec cannot be acted on (checked again by the operator, e.g. on servers without CEL).
    pub(crate) const INVALID_SPEC: &str = "InvalidSpec";
    /// An adopted (`external-id`) Kinde object does not exist in Kinde.
    pub(crate) const EXTERNAL_NOT_FOUND: &str = "ExternalNotFound";
    /// The `external-id` annotation is set in a namespace the cluster's adoption policy
    /// does not admit (see `src/adoption.rs`).
    pub(crate) const ADOPTION_NOT_PERMITTED: &str = "AdoptionNotPermitted";
    /// The `external-id` annotation names an object that is never adopted: the operator's
    /// management application, another resource's object, or one the adoption policy keeps
    /// from deletion while the spec would delete it.
    pub(crate) const ADOPTION_REFUSED: &str = "AdoptionRefused";

    // ApiRegistration
    /// The audience already exists in Kinde and the API is not adopted; the message names
    /// the Kinde API id to adopt.
    pub(crate) const AUDIENCE_IN_USE: &str = "AudienceInUse";
    /// The audience is the Kinde Management API's (or a Kinde API flagged
    /// `is_management_api`): refused without any Kinde write.
    pub(crate) const MANAGEMENT_API_REFUSED: &str = "ManagementApiRefused";
    /// Deletion (policy `Delete`) waits while ApiGrants still reference the API.
    pub(crate) const IN_USE: &str = "InUse";

    // M2MApplication
    /// The credentials Secret exists and is not owned by this M2MApplication.
    pub(crate) const SECRET_CONFLICT: &str = "SecretConflict";
    /// A requested rotation waits: too many earlier credentials are still in their overlap.
    pub(crate) const ROTATION_DEFERRED: &str = "RotationDeferred";

    // ApiGrant
    /// `spec.applicationRef` names no M2MApplication.
    pub const APPLICATION_NOT_FOUND: &str = "ApplicationNotFound";
    /// `spec.apiRef` names no ApiRegistration.
    pub const API_NOT_FOUND: &str = "ApiNotFound";
    /// A scope of `spec.scopes` is not declared on the ApiRegistration.
    pub(crate) const SCOPE_NOT_FOUND: &str = "ScopeNotFound";
    /// The ApiRegistration's `grantPolicy` does not admit the grant's namespace.
    pub(crate) const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    /// An older ApiGrant already grants the same application access to the same API.
    pub const CONFLICT: &str = "Conflict";
    /// The referenced M2MApplication is not Ready yet.
    pub(crate) const WAITING_FOR_APPLICATION: &str = "WaitingForApplication";
    /// The referenced ApiRegistration is not Ready yet.
    pub(crate) const WAITING_FOR_API: &str = "WaitingForApi";

    // Connections (ApiRegistration, M2MApplication, and an ApiGrant through its API)
    /// `spec.connectionRef` names no connection (of the object's namespace, for a
    /// KindeConnection).
    pub const CONNECTION_NOT_FOUND: &str = "ConnectionNotFound";
    /// The connection exists but cannot reach its business (its own status says why).
    pub const CONNECTION_NOT_READY: &str = "ConnectionNotReady";
    /// The ClusterKindeConnection's `namespaceSelector` does not admit the namespace.
    pub const CONNECTION_NOT_PERMITTED: &str = "ConnectionNotPermitted";
    /// `spec.connectionRef` was edited after the Kinde object was made through another
    /// connection.
    pub const CONNECTION_CHANGED: &str = "ConnectionChanged";
    /// An ApiGrant's application and API live in different businesses.
    pub const CONNECTION_MISMATCH: &str = "ConnectionMismatch";

    // KindeConnection, ClusterKindeConnection
    /// A management token was obtained and carries every scope the operator needs.
    pub const CONNECTED: &str = "Connected";
    /// The connection's first check has not run yet.
    pub const CONNECTING: &str = "Connecting";
    /// The credentials Secret does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// The credentials Secret lacks the client ID or secret key (or it is empty).
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// The management token lacks scopes the operator needs (`status.missingScopes`).
    pub const MISSING_SCOPES: &str = "MissingScopes";
    /// Kinde refused the management credentials.
    pub const CREDENTIALS_REFUSED: &str = "CredentialsRefused";
    /// A KindeConnection's domain matches none of the operator's
    /// `--kinde-connection-domain` patterns.
    pub const DOMAIN_NOT_ALLOWED: &str = "DomainNotAllowed";
    /// The business could not be reached (the message says how it failed).
    pub const BUSINESS_UNREACHABLE: &str = "BusinessUnreachable";

    // Reconcile errors outside Kinde (see `controller::kernel::Error::reason`); Kinde's
    // are named by `kinde::ErrorKind::as_str`.
    /// A Kubernetes API call failed.
    pub(crate) const KUBERNETES_ERROR: &str = "KubernetesError";
    /// The finalizer could not be added or removed.
    pub(crate) const FINALIZER_ERROR: &str = "FinalizerError";
    /// The object lacks something Kubernetes always sets (namespace, uid).
    pub(crate) const MISSING_METADATA: &str = "MissingMetadata";

    /// Every constant above, for the tests that must cover each reason.
    #[cfg(test)]
    pub(crate) const ALL: &[&str] = &[
        RECONCILED,
        PAUSED,
        INVALID_SPEC,
        EXTERNAL_NOT_FOUND,
        ADOPTION_NOT_PERMITTED,
        ADOPTION_REFUSED,
        AUDIENCE_IN_USE,
        MANAGEMENT_API_REFUSED,
        IN_USE,
        SECRET_CONFLICT,
        ROTATION_DEFERRED,
        APPLICATION_NOT_FOUND,
        API_NOT_FOUND,
        SCOPE_NOT_FOUND,
        REF_NOT_PERMITTED,
        CONFLICT,
        WAITING_FOR_APPLICATION,
        WAITING_FOR_API,
        CONNECTION_NOT_FOUND,
        CONNECTION_NOT_READY,
        CONNECTION_NOT_PERMITTED,
        CONNECTION_CHANGED,
        CONNECTION_MISMATCH,
        CONNECTED,
        CONNECTING,
        SECRET_NOT_FOUND,
        SECRET_KEY_MISSING,
        MISSING_SCOPES,
        CREDENTIALS_REFUSED,
        DOMAIN_NOT_ALLOWED,
        BUSINESS_UNREACHABLE,
        KUBERNETES_ERROR,
        FINALIZER_ERROR,
        MISSING_METADATA,
    ];
}

/// What a not-Ready object's reason says about the way out, in kstatus's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// It gets there by itself: it waits on another object (which converges, or is
    /// created a moment later by the same `kubectl apply` or GitOps sync), or a failure
    /// is retried with backoff. `Reconciling=True`; kstatus says InProgress.
    Reconciling,
    /// Nothing happens until someone changes something: the spec, a neighbour (the
    /// ApiRegistration's scopes or grantPolicy, an older grant, a foreign Secret), the
    /// adoption policy, the operator's management credentials or scopes, or the paused
    /// annotation. `Stalled=True`; kstatus says Failed, so `flux ... wait` and kpt fail
    /// at once with the message instead of timing out.
    Stalled,
}

/// The [`Progress`] of an object whose `Ready` is False for `reason`. A reason not known
/// to stall counts as progress: kstatus then reports InProgress, as it would from
/// `Ready=False` alone, so a new transient reason can never fail a GitOps rollout.
pub fn progress(reason: &str) -> Progress {
    use reasons::*;
    if let Some(kind) = crate::kinde::ErrorKind::from_name(reason) {
        return kinde_error_progress(kind);
    }
    match reason {
        INVALID_SPEC
        | EXTERNAL_NOT_FOUND
        | ADOPTION_NOT_PERMITTED
        | ADOPTION_REFUSED
        | AUDIENCE_IN_USE
        | MANAGEMENT_API_REFUSED
        | SECRET_CONFLICT
        | SCOPE_NOT_FOUND
        | REF_NOT_PERMITTED
        | CONFLICT
        | CONNECTION_NOT_PERMITTED
        | CONNECTION_CHANGED
        | CONNECTION_MISMATCH
        | SECRET_NOT_FOUND
        | SECRET_KEY_MISSING
        | MISSING_SCOPES
        | CREDENTIALS_REFUSED
        | DOMAIN_NOT_ALLOWED
        | PAUSED
        | MISSING_METADATA => Progress::Stalled,
        // Waits that end by themselves: the referenced object appears (GitOps tools apply
        // a folder in no guaranteed order) or turns Ready, the grants holding an API go,
        // a retiring credential retires; Kubernetes errors are retried.
        _ => Progress::Reconciling,
    }
}

/// Kinde errors: the ones a retry cannot cure (the management application lacks a scope
/// or its credentials are refused, Kinde rejects the request as invalid, the client is
/// misconfigured) stall; outages, rate limits, unknown outcomes, odd answers and a lost
/// leadership are retried. Exhaustive, so a new kind must be placed here.
fn kinde_error_progress(kind: crate::kinde::ErrorKind) -> Progress {
    use crate::kinde::ErrorKind::*;
    match kind {
        Forbidden | Unauthorized | Invalid | Config => Progress::Stalled,
        NotFound | RateLimited | Retryable | OutcomeUnknown | Decode | Fenced => {
            Progress::Reconciling
        }
    }
}

/// Status types with conditions (all three kinds').
pub trait HasConditions {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn set_observed_generation(&mut self, generation: Option<i64>);
}

/// Build a condition stamped `now`. `status` true maps to `"True"`, false to `"False"`.
///
/// An empty `message` is replaced by `reason`: the message is for humans, and the project's
/// v1.20 test apiserver (built with a swapped `reflect2`) decodes `""` inside custom
/// resources as `null`, refusing the whole status write ("must be of type string").
pub(crate) fn new_condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    let message = message.into();
    Condition {
        type_: type_.to_owned(),
        status: if status { TRUE } else { FALSE }.to_owned(),
        reason: reason.to_owned(),
        message: if message.is_empty() {
            reason.to_owned()
        } else {
            message
        },
        observed_generation,
        last_transition_time: now,
    }
}

/// Insert or replace the condition of `new.type_`.
///
/// `lastTransitionTime` is the time the *status* last changed: when a condition of the same
/// type with the same `status` is present, its timestamp is kept (reason, message and
/// observedGeneration are still updated). Returns whether anything other than the timestamp
/// changed, so a caller can skip a no-op status write. Order of existing conditions is kept;
/// a new type is appended.
pub(crate) fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            let changed = *existing != new;
            *existing = new;
            changed
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// The condition of this type, if present.
pub(crate) fn find_condition<'a>(
    conditions: &'a [Condition],
    type_: &str,
) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type is present with status `"True"`.
pub(crate) fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == TRUE)
}

/// Whether the `Ready` condition is `"True"` and was computed for `generation` (a Ready
/// condition for an older spec does not count).
pub fn is_ready_for(conditions: &[Condition], generation: Option<i64>) -> bool {
    find_condition(conditions, READY).is_some_and(|c| {
        c.status == TRUE && (generation.is_none() || c.observed_generation == generation)
    })
}

/// The class of every reason, written out by hand: what the README's table says, and what
/// the tests of [`progress`] and of the status GitOps tools read hold the code to.
#[cfg(test)]
pub(crate) const EXPECTED_PROGRESS: &[(&str, Progress)] = {
    use Progress::{Reconciling, Stalled};
    use reasons::*;
    &[
        // Never the reason of Ready=False (Ready is True): listed for completeness.
        (RECONCILED, Reconciling),
        (PAUSED, Stalled),
        (INVALID_SPEC, Stalled),
        (EXTERNAL_NOT_FOUND, Stalled),
        (ADOPTION_NOT_PERMITTED, Stalled),
        (ADOPTION_REFUSED, Stalled),
        (AUDIENCE_IN_USE, Stalled),
        (MANAGEMENT_API_REFUSED, Stalled),
        (IN_USE, Reconciling),
        (SECRET_CONFLICT, Stalled),
        (ROTATION_DEFERRED, Reconciling),
        (APPLICATION_NOT_FOUND, Reconciling),
        (API_NOT_FOUND, Reconciling),
        (SCOPE_NOT_FOUND, Stalled),
        (REF_NOT_PERMITTED, Stalled),
        (CONFLICT, Stalled),
        (WAITING_FOR_APPLICATION, Reconciling),
        (WAITING_FOR_API, Reconciling),
        (KUBERNETES_ERROR, Reconciling),
        (FINALIZER_ERROR, Reconciling),
        (MISSING_METADATA, Stalled),
        (CONNECTION_NOT_FOUND, Reconciling),
        (CONNECTION_NOT_READY, Reconciling),
        (CONNECTION_NOT_PERMITTED, Stalled),
        (CONNECTION_CHANGED, Stalled),
        (CONNECTION_MISMATCH, Stalled),
        // Never the reason of Ready=False, like `Reconciled`.
        (CONNECTED, Reconciling),
        (CONNECTING, Reconciling),
        (SECRET_NOT_FOUND, Stalled),
        (SECRET_KEY_MISSING, Stalled),
        (MISSING_SCOPES, Stalled),
        (CREDENTIALS_REFUSED, Stalled),
        (DOMAIN_NOT_ALLOWED, Stalled),
        (BUSINESS_UNREACHABLE, Reconciling),
        ("KindeNotFound", Reconciling),
        ("KindeUnauthorized", Stalled),
        ("KindeForbidden", Stalled),
        ("KindeRateLimited", Reconciling),
        ("KindeUnavailable", Reconciling),
        ("KindeOutcomeUnknown", Reconciling),
        ("KindeRejected", Stalled),
        ("KindeBadResponse", Reconciling),
        ("KindeConfig", Stalled),
        ("NotLeader", Reconciling),
    ]
};

/// Every reason a condition can carry: [`reasons::ALL`] and the Kinde error names.
#[cfg(test)]
pub(crate) fn all_reasons() -> Vec<&'static str> {
    let kinde = crate::kinde::ErrorKind::ALL.iter().map(|k| k.as_str());
    reasons::ALL.iter().copied().chain(kinde).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn all_lists_every_reason_constant() {
        // Every `const NAME: &str = "Value";` of `mod reasons` in this file is in ALL.
        let source = include_str!("conditions.rs");
        let body = source
            .split("pub mod reasons {")
            .nth(1)
            .and_then(|rest| rest.split("\n}\n").next())
            .unwrap();
        let declared: BTreeSet<&str> = body
            .lines()
            .filter(|l| l.contains(" const ") && l.contains(": &str = \""))
            .filter_map(|l| l.split("= \"").nth(1)?.strip_suffix("\";"))
            .collect();
        assert!(declared.len() > 15, "parsed too few: {declared:?}");
        assert_eq!(declared, reasons::ALL.iter().copied().collect());
    }

    #[test]
    fn the_readme_table_says_which_reasons_stall() {
        let readme = include_str!("../README.md");
        let table = readme
            .split("### Conditions and what to do about them")
            .nth(1)
            .and_then(|rest| rest.split("\n\n|").nth(1))
            .and_then(|rest| rest.split("\n\n").next())
            .unwrap();
        let mut documented = BTreeSet::new();
        for row in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split(" | ").collect();
            let class = match cells[2] {
                "Stalled" => Some(Progress::Stalled),
                "Reconciling" => Some(Progress::Reconciling),
                "—" => None,
                other => panic!("unknown class {other} in {row}"),
            };
            for reason in cells[0].split('`').skip(1).step_by(2) {
                let want = EXPECTED_PROGRESS.iter().find(|(r, _)| *r == reason);
                let (_, expected) = want.unwrap_or_else(|| panic!("{reason} is no reason"));
                match class {
                    Some(class) => assert_eq!(class, *expected, "README on {reason}"),
                    None => assert!(
                        [reasons::RECONCILED, reasons::CONNECTED].contains(&reason),
                        "{reason} is never the reason of Ready=False"
                    ),
                }
                documented.insert(reason);
            }
        }
        assert_eq!(documented, all_reasons().into_iter().collect());
    }

    #[test]
    fn every_reason_has_its_class() {
        let expected = EXPECTED_PROGRESS;
        let listed: BTreeSet<&str> = expected.iter().map(|(r, _)| *r).collect();
        assert_eq!(listed.len(), expected.len(), "a reason listed twice");
        assert_eq!(listed, all_reasons().into_iter().collect());
        for (reason, class) in expected {
            assert_eq!(progress(reason), *class, "{reason}");
        }
        assert_eq!(progress("SomeFutureWait"), Progress::Reconciling);
    }

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn appends_new_type() {
        let mut conds = vec![];
        assert!(set_condition(
            &mut conds,
            new_condition(READY, false, reasons::PAUSED, "paused", Some(1), at(10))
        ));
        assert!(set_condition(
            &mut conds,
            new_condition(SYNCED, true, reasons::RECONCILED, "", Some(1), at(10))
        ));
        assert_eq!(conds.len(), 2);
        assert_eq!(conds[0].type_, READY);
        assert_eq!(conds[1].type_, SYNCED);
    }

    #[test]
    fn keeps_transition_time_when_status_unchanged() {
        let mut conds = vec![new_condition(
            READY,
            false,
            reasons::PAUSED,
            "paused",
            Some(1),
            at(10),
        )];
        let changed = set_condition(
            &mut conds,
            new_condition(
                READY,
                false,
                reasons::WAITING_FOR_API,
                "waiting for platform/example-api",
                Some(2),
                at(20),
            ),
        );
        assert!(changed);
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, at(10));
        assert_eq!(conds[0].reason, reasons::WAITING_FOR_API);
        assert_eq!(conds[0].message, "waiting for platform/example-api");
        assert_eq!(conds[0].observed_generation, Some(2));
    }

    #[test]
    fn bumps_transition_time_when_status_flips() {
        let mut conds = vec![new_condition(
            READY,
            false,
            reasons::PAUSED,
            "paused",
            Some(1),
            at(10),
        )];
        assert!(set_condition(
            &mut conds,
            new_condition(READY, true, reasons::RECONCILED, "", Some(1), at(20))
        ));
        assert_eq!(conds[0].status, TRUE);
        assert_eq!(conds[0].last_transition_time, at(20));
    }

    #[test]
    fn identical_condition_is_not_a_change() {
        let mut conds = vec![new_condition(
            READY,
            true,
            reasons::RECONCILED,
            "ok",
            Some(3),
            at(10),
        )];
        let before = conds.clone();
        assert!(!set_condition(
            &mut conds,
            new_condition(READY, true, reasons::RECONCILED, "ok", Some(3), at(99))
        ));
        assert_eq!(conds, before);
    }

    #[test]
    fn empty_message_becomes_reason() {
        let c = new_condition(SYNCED, true, reasons::RECONCILED, "", None, at(1));
        assert_eq!(c.message, reasons::RECONCILED);
        assert_eq!(c.status, TRUE);
    }

    #[test]
    fn readiness_helpers() {
        let mut conds = vec![];
        assert!(!is_true(&conds, READY));
        assert!(!is_ready_for(&conds, Some(1)));
        set_condition(
            &mut conds,
            new_condition(READY, true, reasons::RECONCILED, "", Some(1), at(1)),
        );
        assert!(is_true(&conds, READY));
        assert!(is_ready_for(&conds, Some(1)));
        assert!(!is_ready_for(&conds, Some(2)));
        assert!(is_ready_for(&conds, None));
        assert_eq!(find_condition(&conds, SYNCED), None);
    }
}

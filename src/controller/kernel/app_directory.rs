//! The Kinde applications by name (the marked ones, whose names carry an operator marker
//! `[kmo:...]`, and the rest), from one listing shared by every reconcile instead of a
//! listing per create.
//!
//! Before it creates an application, the operator must know whether one with the same
//! marker exists already (created before a crash or by a create whose response was lost):
//! Kinde names are not unique and a create is not idempotent. Listing every application
//! for every create cost 1.1 list pages per app at 100 customers and 100 at 10,000. The
//! directory lists once and keeps the marked applications; what this process does itself
//! (creates, renames that drop the marker, deletes) is noted on top of the listing.
//!
//! When a listing is good enough: an application created by an earlier process (or an
//! earlier leader) existed before this process listed, so any listing it made will do.
//! One this process tried to create with an unknown outcome may have appeared after the
//! listing: a lookup for that marker waits for a listing started after the attempt
//! ([`AppDirectory::attempting`]). A sweep for late copies asks for a listing started now.

use std::collections::HashMap;

use tokio::time::Instant;

use crate::adoption;
use secrecy::SecretString;

use crate::kinde::{KindeClient, KindeError};

/// What the operator knows of a Kinde application it found or created (defined here, below
/// the kinds, because the world's cache of recent reads holds them too).
#[derive(Clone)]
pub struct KindeApp {
    pub id: String,
    pub client_id: String,
    pub name: String,
    pub secret: SecretString,
    /// Kinde's type (`m2m`, `reg`, ...) when known; adoption refuses anything but `m2m`.
    pub app_type: Option<String>,
    /// The access-token lifetime (seconds) if Kinde's read reported one (the spec's
    /// `getApplication` does not: then `status.appliedTokens` is what is known).
    pub access_token_lifetime: Option<u64>,
    /// Created (or found after a create whose outcome was lost) by this reconcile, not yet
    /// announced: its Event goes out once, with the Secret's when that is written too.
    pub fresh: bool,
}

/// A listed application: id and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedApp {
    pub id: String,
    pub name: String,
}

struct Listing {
    started: Instant,
    apps: Vec<ListedApp>,
}

#[derive(Default)]
struct Notes {
    /// Created by this process, with the name and when.
    created: HashMap<String, (String, Instant)>,
    /// Renamed by this process, with the new name and when.
    renamed: HashMap<String, (String, Instant)>,
    /// Deleted by this process, with when.
    gone: HashMap<String, Instant>,
    /// Creates under a marker whose outcome is not known yet, with when they were sent.
    attempts: HashMap<String, Instant>,
}

/// The directory; one per process, shared by all reconciles.
pub struct AppDirectory {
    kinde: KindeClient,
    listing: tokio::sync::Mutex<Option<Listing>>,
    notes: std::sync::Mutex<Notes>,
}

impl AppDirectory {
    pub fn new(kinde: KindeClient) -> Self {
        Self {
            kinde,
            listing: tokio::sync::Mutex::new(None),
            notes: std::sync::Mutex::default(),
        }
    }

    fn notes(&self) -> std::sync::MutexGuard<'_, Notes> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ids of applications whose name ends with `marker`.
    pub async fn find(&self, marker: &str) -> Result<Vec<String>, KindeError> {
        let not_before = self.notes().attempts.get(marker).copied();
        self.ids(not_before, |name| {
            adoption::marker_body(name).is_some() && name.ends_with(marker)
        })
        .await
    }

    /// The ids of applications carrying any marker of the object whose marker body is
    /// `body` (its creation marker or a rotation's), from a listing started no earlier than
    /// `not_before` (and after every create of its with an unknown outcome).
    pub async fn find_all(
        &self,
        body: &str,
        not_before: Option<Instant>,
    ) -> Result<Vec<String>, KindeError> {
        let attempted = {
            let notes = self.notes();
            notes
                .attempts
                .iter()
                .filter(|(marker, _)| marker_of(marker, body))
                .map(|(_, at)| *at)
                .max()
        };
        self.ids(not_before.max(attempted), |name| {
            adoption::carries_marker_of(name, body)
        })
        .await
    }

    /// A create under `marker` is about to be sent.
    pub fn attempting(&self, marker: &str) {
        self.notes()
            .attempts
            .insert(marker.to_owned(), Instant::now());
    }

    /// The create under `marker` failed with `error`: when Kinde surely made nothing, the
    /// attempt is forgotten; otherwise the next lookup reads Kinde again.
    pub fn create_failed(&self, marker: &str, error: &KindeError) {
        if error.created_nothing() {
            self.notes().attempts.remove(marker);
        }
    }

    /// The create under `marker` made application `id` named `name`.
    pub fn created(&self, marker: &str, id: &str, name: &str) {
        let mut notes = self.notes();
        notes.attempts.remove(marker);
        notes.gone.remove(id);
        notes
            .created
            .insert(id.to_owned(), (name.to_owned(), Instant::now()));
    }

    /// Application `id` was deleted.
    pub fn gone(&self, id: &str) {
        let mut notes = self.notes();
        notes.created.remove(id);
        notes.renamed.remove(id);
        notes.gone.insert(id.to_owned(), Instant::now());
    }

    /// Application `id` was renamed to `name`.
    pub fn renamed(&self, id: &str, name: &str) {
        let mut notes = self.notes();
        if let Some((created_name, _)) = notes.created.get_mut(id) {
            name.clone_into(created_name);
        } else {
            notes
                .renamed
                .insert(id.to_owned(), (name.to_owned(), Instant::now()));
        }
    }

    /// The ids of applications named exactly `name` (those a previous owner of the same
    /// object may have made, see [`crate::identity`]).
    pub async fn find_named(&self, name: &str) -> Result<Vec<String>, KindeError> {
        self.ids(None, |n| n == name).await
    }

    /// The ids of the applications whose name passes `keep`, as of a listing started no
    /// earlier than `not_before`, with this process's own changes applied. Concurrent
    /// callers share one listing.
    async fn ids(
        &self,
        not_before: Option<Instant>,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, KindeError> {
        let mut listing = self.listing.lock().await;
        let fresh_enough = listing
            .as_ref()
            .is_some_and(|l| not_before.is_none_or(|t| l.started >= t));
        if !fresh_enough {
            let started = Instant::now();
            let apps = self
                .kinde
                .list_applications()
                .await?
                .into_iter()
                .map(|a| ListedApp {
                    id: a.id,
                    name: a.name,
                })
                .collect();
            *listing = Some(Listing { started, apps });
        }
        let Some(listing) = listing.as_ref() else {
            return Ok(Vec::new());
        };
        let mut notes = self.notes();
        Ok(merge(listing, &mut notes, keep)
            .into_iter()
            .map(|a| a.id)
            .collect())
    }
}

/// The listing with this process's notes applied; notes the listing already reflects
/// (made before it started) are dropped, so the notes stay as small as the work in flight.
/// Only the applications whose (current) name passes `keep` are copied: a lookup runs for
/// every create, and copying a listing of 10,000 applications each time would make a fleet's
/// onboarding quadratic.
fn merge(listing: &Listing, notes: &mut Notes, keep: impl Fn(&str) -> bool) -> Vec<ListedApp> {
    notes.created.retain(|_, (_, at)| *at >= listing.started);
    notes.renamed.retain(|_, (_, at)| *at >= listing.started);
    notes.gone.retain(|_, at| *at >= listing.started);
    let listed = listing
        .apps
        .iter()
        .filter(|a| !notes.gone.contains_key(&a.id) && !notes.created.contains_key(&a.id))
        .map(|a| {
            let name = notes.renamed.get(&a.id).map_or(a.name.as_str(), |(n, _)| n);
            (a.id.as_str(), name)
        });
    let created = notes
        .created
        .iter()
        .map(|(id, (name, _))| (id.as_str(), name.as_str()));
    listed
        .chain(created)
        .filter(|(_, name)| keep(name))
        .map(|(id, name)| ListedApp {
            id: id.to_owned(),
            name: name.to_owned(),
        })
        .collect()
}

/// Whether `marker` (`[kmo:<body>...]`) belongs to the object whose marker body is `body`.
fn marker_of(marker: &str, body: &str) -> bool {
    adoption::carries_marker_of(&format!(" {marker}"), body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::kinde::Transient;

    fn app(id: &str, name: &str) -> ListedApp {
        ListedApp {
            id: id.into(),
            name: name.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn own_changes_apply_on_top_of_the_listing_until_a_later_listing_has_them() {
        let t0 = Instant::now();
        let listing = Listing {
            started: t0,
            apps: vec![app("a", "A [kmo:aa]"), app("b", "B [kmo:bb]")],
        };
        let mut notes = Notes::default();
        tokio::time::advance(Duration::from_secs(1)).await;
        notes.gone.insert("a".into(), Instant::now());
        notes
            .created
            .insert("c".into(), ("C [kmo:cc]".into(), Instant::now()));
        notes
            .renamed
            .insert("b".into(), ("B".into(), Instant::now()));
        let apps = merge(&listing, &mut notes, |_| true);
        assert_eq!(apps, vec![app("b", "B"), app("c", "C [kmo:cc]")]);
        // A listing started after those changes reflects them: the notes go.
        tokio::time::advance(Duration::from_secs(1)).await;
        let later = Listing {
            started: Instant::now(),
            apps: vec![app("b", "B"), app("c", "C [kmo:cc]")],
        };
        assert_eq!(merge(&later, &mut notes, |_| true), later.apps);
        assert!(notes.created.is_empty() && notes.gone.is_empty() && notes.renamed.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_noted_while_a_listing_ran_is_not_counted_twice() {
        let t0 = Instant::now();
        let mut notes = Notes::default();
        notes.created.insert("c".into(), ("C [kmo:cc]".into(), t0));
        let listing = Listing {
            started: t0,
            apps: vec![app("c", "C [kmo:cc]")],
        };
        assert_eq!(
            merge(&listing, &mut notes, |_| true),
            vec![app("c", "C [kmo:cc]")]
        );
    }

    #[test]
    fn only_refusals_before_any_work_prove_nothing_was_created() {
        assert!(
            (KindeError::RateLimited {
                operation: "createApplication",
                retry_after: None,
            })
            .created_nothing()
        );
        assert!(
            (KindeError::Fenced {
                operation: "createApplication",
            })
            .created_nothing()
        );
        assert!(
            !(KindeError::OutcomeUnknown {
                operation: "createApplication",
                reason: Transient::Timeout,
            })
            .created_nothing()
        );
        assert!(
            !(KindeError::Decode {
                operation: "createApplication",
                detail: "no id".into(),
            })
            .created_nothing()
        );
        assert!(
            !(KindeError::Retryable {
                operation: "createApplication",
                reason: Transient::Server(502),
                attempts: 1,
            })
            .created_nothing()
        );
    }

    #[test]
    fn a_rotation_marker_belongs_to_its_object() {
        assert!(marker_of("[kmo:abc:0000beef]", "abc"));
        assert!(marker_of("[kmo:abc]", "abc"));
        assert!(!marker_of("[kmo:abcd]", "abc"));
    }
}

//! Recent Kinde reads per object, reused by reconciles that cannot have anything new to
//! learn from Kinde.
//!
//! Most reconciles of an object are woken by the operator's own writes next door (its
//! Secret, a grant's status): at a fleet of 100 customers they cost 2.25 `getApplication`
//! per application while it was being onboarded, a third of all Kinde calls. Such a
//! reconcile reuses the last read while it is young and the object is unchanged since
//! (same generation, same annotations: a spec edit or a poke annotation reads Kinde again).
//! Drift made in Kinde is seen by the resync: an object's resyncs are a period apart and
//! the lifetime is 0.9 of it, so every resync reads Kinde, except the first after the
//! object was created or changed, which is served from the read that change made (a fleet
//! just onboarded is not read again at once; its first drift check comes one period
//! later).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::Resource;
use tokio::time::Instant;

use super::rules::stable_hash;

struct Entry<T> {
    object: String,
    read_at: Instant,
    value: T,
}

/// The reads, keyed by object UID.
pub struct Recent<T> {
    lifetime: Duration,
    entries: Mutex<HashMap<String, Entry<T>>>,
}

impl<T: Clone> Recent<T> {
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            entries: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<T>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value read for `obj`, if it is younger than the lifetime and `obj` has not
    /// changed since.
    pub fn get(&self, obj: &impl Resource) -> Option<T> {
        let uid = obj.meta().uid.as_deref()?;
        let entries = self.lock();
        let entry = entries.get(uid)?;
        (entry.object == object_version(obj) && entry.read_at.elapsed() < self.lifetime)
            .then(|| entry.value.clone())
    }

    /// Records `value`, read from Kinde at `read_at`, for `obj` as it is now.
    pub fn put(&self, obj: &impl Resource, read_at: Instant, value: T) {
        let Some(uid) = obj.meta().uid.clone() else {
            return;
        };
        self.lock().insert(
            uid,
            Entry {
                object: object_version(obj),
                read_at,
                value,
            },
        );
    }

    /// Brings what is known of `obj` in line with a change the operator just made in
    /// Kinde (such as a rename), keeping the time of the read.
    pub fn update(&self, obj: &impl Resource, change: impl FnOnce(&mut T)) {
        if let Some(uid) = obj.meta().uid.as_deref()
            && let Some(entry) = self.lock().get_mut(uid)
        {
            change(&mut entry.value);
        }
    }

    /// Drops what is known of `obj` (it changed Kinde, or it is gone).
    pub fn forget(&self, obj: &impl Resource) {
        if let Some(uid) = obj.meta().uid.as_deref() {
            self.lock().remove(uid);
        }
    }
}

/// What of an object decides whether a read is still good for it: its generation (the
/// spec) and its annotations (where a poke or an adoption is asked for). The status, which
/// the operator writes itself, does not count.
fn object_version(obj: &impl Resource) -> String {
    let meta = obj.meta();
    let annotations = meta
        .annotations
        .as_ref()
        .map(|a| {
            a.iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect::<String>()
        })
        .unwrap_or_default();
    format!(
        "{}/{:016x}",
        meta.generation.unwrap_or_default(),
        stable_hash(&annotations)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn object(generation: i64, poke: &str) -> ConfigMap {
        let mut o = ConfigMap::default();
        o.metadata.uid = Some("u1".into());
        o.metadata.generation = Some(generation);
        o.metadata.annotations = Some([("poke".to_owned(), poke.to_owned())].into());
        o
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_serves_the_unchanged_object_until_it_is_old() {
        let recent = Recent::new(Duration::from_secs(30));
        let obj = object(1, "a");
        recent.put(&obj, Instant::now(), 7);
        assert_eq!(recent.get(&obj), Some(7));
        // A status write changes neither generation nor annotations.
        let mut written = obj.clone();
        written.metadata.resource_version = Some("99".into());
        assert_eq!(recent.get(&written), Some(7));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(recent.get(&obj), None, "too old");
    }

    #[test]
    fn a_spec_edit_or_a_poke_reads_again() {
        let recent = Recent::new(Duration::from_secs(30));
        recent.put(&object(1, "a"), Instant::now(), 7);
        assert_eq!(recent.get(&object(2, "a")), None);
        assert_eq!(recent.get(&object(1, "b")), None);
        recent.forget(&object(1, "a"));
        assert_eq!(recent.get(&object(1, "a")), None);
    }
}

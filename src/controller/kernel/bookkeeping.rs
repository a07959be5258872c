//! Per-object bookkeeping of the reconcile shell: consecutive failures (the backoff) and the
//! status versions this operator wrote, so a reconcile never decides on a cached copy that
//! lags behind its own last write.

use std::sync::Arc;

use kube::api::Api;
use kube::{Client, Resource, ResourceExt};

use super::Managed;
use super::error::{Error, Result};

/// The key of an object in the per-object bookkeeping (failures, written versions).
pub(super) fn object_key<K: Resource<DynamicType = ()>>(ns: &str, name: &str) -> String {
    format!("{}/{ns}/{name}", K::kind(&()))
}

/// The copy of the object to reconcile: the reflector's, unless it lags behind a status this
/// operator wrote itself (status writes are not worth a reconcile, so a reconcile woken by
/// something else, such as the Secret or a dependant just written, can start before the
/// watch delivers that status). Deciding on such a stale copy redoes work already done (a
/// rotation already handled, scopes already granted) and overwrites the newer status
/// (dropping a predecessor from `status.retiring`); then the object is read from the API
/// server (a `list` by name: a quorum read, with the verb the operator already has).
pub(super) async fn current_copy<K: Managed>(
    client: &Client,
    written_versions: &WrittenVersions,
    cached: Arc<K>,
    key: &str,
) -> Result<Arc<K>> {
    let Some(written) = written_versions.get(key) else {
        return Ok(cached);
    };
    if cached.resource_version().as_deref() == Some(written.as_str()) {
        // The watch has caught up with our write.
        written_versions.forget(key);
        return Ok(cached);
    }
    let ns = cached
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let params =
        kube::api::ListParams::default().fields(&format!("metadata.name={}", cached.name_any()));
    let Some(fresh) = api.list(&params).await?.items.into_iter().next() else {
        written_versions.forget(key);
        return Ok(cached);
    };
    tracing::debug!(
        cached = ?cached.resource_version(),
        current = ?fresh.resource_version(),
        "the cached copy lags behind our own status write; reconciling the current one"
    );
    // Until the watch delivers this version (or ours), the cache is known to be behind.
    if let Some(rv) = fresh.resource_version() {
        written_versions.record(key, rv);
    }
    Ok(Arc::new(fresh))
}

/// The resourceVersion of each object's last status written by this operator, until the
/// reflector has caught up with it (see [`current_copy`]).
#[derive(Default)]
pub struct WrittenVersions(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl WrittenVersions {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn record(&self, key: &str, resource_version: String) {
        self.lock().insert(key.to_owned(), resource_version);
    }

    pub(super) fn get(&self, key: &str) -> Option<String> {
        self.lock().get(key).cloned()
    }

    pub(super) fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// When each object's next resync is due (see [`super::resync`]): a reconcile that starts
/// then is the resync's, and its Kinde reads are drift checks that may wait for other work
/// ([`crate::kinde::in_background`]).
#[derive(Default)]
pub struct ResyncsDue(std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>);

/// A resync counts as due from this long before its time (the scheduler's jitter).
const DUE_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

impl ResyncsDue {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, tokio::time::Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn schedule(&self, key: &str, at: tokio::time::Instant) {
        self.lock().insert(key.to_owned(), at);
    }

    /// Whether the reconcile of `key` starting now is its resync (and takes the entry).
    pub(super) fn take_due(&self, key: &str) -> bool {
        let mut due = self.lock();
        let now = tokio::time::Instant::now();
        if due.get(key).is_some_and(|at| *at <= now + DUE_SLACK) {
            due.remove(key);
            return true;
        }
        false
    }

    pub(super) fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// Consecutive failures per object, for the backoff; cleared by a success.
#[derive(Default)]
pub struct FailureCounts(std::sync::Mutex<std::collections::HashMap<String, u32>>);

impl FailureCounts {
    pub(super) fn bump(&self, key: &str) -> u32 {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.to_owned()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    pub(super) fn clear(&self, key: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_copy_behind_our_own_write_is_read_again() {
        use crate::crd::{M2MApplication, M2MApplicationSpec};
        let list = serde_json::json!({
            "apiVersion": "m2m.kinde-operator.io/v1alpha1", "kind": "M2MApplicationList",
            "metadata": {"resourceVersion": "9"},
            "items": [{"apiVersion": "m2m.kinde-operator.io/v1alpha1", "kind": "M2MApplication",
                       "metadata": {"name": "shop", "namespace": "acme", "resourceVersion": "7"},
                       "spec": {}, "status": {"lastHandledRotateRequest": "B"}}]
        });
        let (client, server) = crate::controller::kernel::mock_api::serve(vec![(200, list)]);
        let written = WrittenVersions::default();
        let mut stale = M2MApplication::new("shop", M2MApplicationSpec::default());
        stale.metadata.namespace = Some("acme".into());
        stale.metadata.resource_version = Some("5".into());
        let key = object_key::<M2MApplication>("acme", "shop");

        // Nothing written: the cache is trusted, no request.
        let same = current_copy(&client, &written, Arc::new(stale.clone()), &key)
            .await
            .expect("copy");
        assert_eq!(same.resource_version().as_deref(), Some("5"));

        written.record(&key, "7".into());
        let fresh = current_copy(&client, &written, Arc::new(stale.clone()), &key)
            .await
            .expect("copy");
        assert_eq!(fresh.resource_version().as_deref(), Some("7"));
        assert_eq!(
            fresh
                .status
                .as_ref()
                .and_then(|s| s.last_handled_rotate_request.as_deref()),
            Some("B")
        );

        // The watch delivers version 7: trusted again, and forgotten.
        let mut caught_up = stale;
        caught_up.metadata.resource_version = Some("7".into());
        current_copy(&client, &written, Arc::new(caught_up), &key)
            .await
            .expect("copy");
        assert_eq!(written.get(&key), None);
        drop(client);
        let seen = server.await.expect("server");
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].method == "GET"
                && seen[0].uri.starts_with(
                    "/apis/m2m.kinde-operator.io/v1alpha1/namespaces/acme/m2mapplications?"
                )
                && seen[0].uri.contains("fieldSelector=metadata.name%3Dshop"),
            "{seen:?}"
        );
    }

    #[test]
    fn failure_counts_are_per_object_and_cleared_by_success() {
        let counts = FailureCounts::default();
        assert_eq!(counts.bump("a"), 1);
        assert_eq!(counts.bump("a"), 2);
        assert_eq!(counts.bump("b"), 1);
        counts.clear("a");
        assert_eq!(counts.bump("a"), 1);
    }
}

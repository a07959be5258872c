//! Kinde state shared between reconciles: a short-lived cache of `GET /apis/{id}` (which
//! applications are authorized) and the batcher that folds authorizations for one API
//! arriving together into one `PATCH /apis/{id}/applications`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::kinde::types::{Api, Authorization};
use crate::kinde::{KindeClient, KindeError};

type Slot = Arc<tokio::sync::Mutex<Option<(Instant, Arc<Api>)>>>;

/// Cache of Kinde APIs with their authorized applications. A resync of N grants on one API
/// costs one read instead of N; our own writes update the cached copy.
pub struct ApiSnapshots {
    kinde: KindeClient,
    ttl: Duration,
    slots: Mutex<HashMap<String, Slot>>,
}

impl ApiSnapshots {
    pub fn new(kinde: KindeClient, ttl: Duration) -> Self {
        Self {
            kinde,
            ttl,
            slots: Mutex::default(),
        }
    }

    fn slot(&self, api_id: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(api_id.to_owned()).or_default().clone()
    }

    /// The API, from cache when younger than the TTL. Concurrent callers share one read.
    pub async fn get(&self, api_id: &str) -> Result<Arc<Api>, KindeError> {
        let slot = self.slot(api_id);
        let mut entry = slot.lock().await;
        if let Some((at, api)) = entry.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(api.clone());
        }
        let api = Arc::new(self.kinde.get_api(api_id).await?);
        *entry = Some((Instant::now(), api.clone()));
        Ok(api)
    }

    /// Reads the API now and caches it.
    pub async fn refresh(&self, api_id: &str) -> Result<Arc<Api>, KindeError> {
        self.forget(api_id).await;
        self.get(api_id).await
    }

    /// Drops the cached copy (the API was deleted or changed behind our back).
    pub async fn forget(&self, api_id: &str) {
        *self.slot(api_id).lock().await = None;
    }

    /// Records our own (de)authorization in the cached copy.
    pub async fn note(&self, api_id: &str, client_id: &str, change: Authorization) {
        let slot = self.slot(api_id);
        let mut entry = slot.lock().await;
        if let Some((_, api)) = entry.as_mut() {
            let api = Arc::make_mut(api);
            let active = Some(change == Authorization::Authorize);
            match api.applications.iter_mut().find(|a| a.id == client_id) {
                Some(a) => a.is_active = active,
                None => api.applications.push(crate::kinde::types::ApiApplication {
                    id: client_id.to_owned(),
                    name: String::new(),
                    app_type: None,
                    is_active: active,
                }),
            }
        }
    }
}

struct Pending {
    client_id: String,
    change: Authorization,
    done: oneshot::Sender<Result<(), Arc<KindeError>>>,
}

/// Applications Kinde takes in one `PATCH /apis/{id}/applications`: a queue this long is
/// sent at once.
pub const FULL_BATCH: usize = 100;

/// Requests queued for one API, and when the queue last grew.
struct Queue {
    requests: Vec<Pending>,
    last: Instant,
    /// Rung when the queue is full, so the flusher sends it without waiting further.
    full: Arc<tokio::sync::Notify>,
    /// Which submitter flushes this queue (see [`QueueGuard`]).
    flusher: u64,
}

/// Discards a queue whose flushing submitter went away before taking the batch: its
/// other submitters then learn that their request was dropped (and retry) instead of
/// waiting for a flush that never comes, and the next submitter starts a new queue.
struct QueueGuard {
    pending: Arc<Mutex<HashMap<String, Queue>>>,
    api_id: String,
    flusher: u64,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // Once the batch was taken the entry is gone or belongs to a later flusher.
        if pending
            .get(&self.api_id)
            .is_some_and(|q| q.flusher == self.flusher)
        {
            pending.remove(&self.api_id);
        }
    }
}

/// Folds (de)authorizations for the same API arriving together into one Kinde call (at
/// most [`FULL_BATCH`] applications each, as Kinde allows). The call waits until no request
/// has arrived for a quiet window, the queue is full, or `max_wait` (20 s) has passed since
/// the first: grants created together become authorizable as their applications turn
/// Ready one by one, paced by the Kinde rate (at 20 calls/s about 4 a second, in bursts),
/// so a short window caught a handful of them and a fleet of 1,000 took 107 calls where 10
/// would do (81 with a 1 s window). The window is `quiet` (1 s) for a lone request, so a
/// single new grant waits only that, and `quiet_busy` (5 s) once others have joined.
#[derive(Clone)]
pub struct AuthorizeBatcher {
    kinde: KindeClient,
    quiet: Duration,
    quiet_busy: Duration,
    max_wait: Duration,
    pending: Arc<Mutex<HashMap<String, Queue>>>,
}

impl AuthorizeBatcher {
    pub fn new(kinde: KindeClient) -> Self {
        Self {
            kinde,
            quiet: Duration::from_millis(1000),
            quiet_busy: Duration::from_secs(5),
            max_wait: Duration::from_secs(20),
            pending: Arc::default(),
        }
    }

    /// (De)authorizes `client_id` for `api_id`, sharing the Kinde call with others
    /// submitted for the same API meanwhile.
    pub(crate) async fn submit(
        &self,
        api_id: &str,
        client_id: &str,
        change: Authorization,
    ) -> Result<(), Arc<KindeError>> {
        static FLUSHERS: AtomicU64 = AtomicU64::new(0);
        let (done, result) = oneshot::channel();
        let me = FLUSHERS.fetch_add(1, Ordering::Relaxed);
        let (first, full) = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let queue = pending.entry(api_id.to_owned()).or_insert_with(|| Queue {
                requests: Vec::new(),
                last: Instant::now(),
                full: Arc::default(),
                flusher: me,
            });
            queue.requests.push(Pending {
                client_id: client_id.to_owned(),
                change,
                done,
            });
            queue.last = Instant::now();
            if queue.requests.len() >= FULL_BATCH {
                queue.full.notify_one();
            }
            (queue.flusher == me, queue.full.clone())
        };
        if first {
            // Flushed in this submitter's own future, not in a detached task: whatever
            // ends the reconciles ends the flush with them. A graceful shutdown waits
            // for the reconciles and only then releases the Lease, so no batch of this
            // process can reach Kinde after a successor may have started.
            let _guard = QueueGuard {
                pending: self.pending.clone(),
                api_id: api_id.to_owned(),
                flusher: me,
            };
            self.flush(api_id.to_owned(), &full).await;
        }
        result.await.unwrap_or_else(|_| {
            Err(Arc::new(KindeError::Config(
                "authorization batch was dropped".into(),
            )))
        })
    }

    async fn flush(&self, api_id: String, full: &tokio::sync::Notify) {
        let deadline = Instant::now() + self.max_wait;
        let batch = loop {
            let wake = {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                let queue = pending.get(&api_id).map(|q| (q.last, q.requests.len()));
                let quiet = |len: usize| if len > 1 { self.quiet_busy } else { self.quiet };
                match queue {
                    Some((last, len))
                        if len < FULL_BATCH
                            && last + quiet(len) > Instant::now()
                            && Instant::now() < deadline =>
                    {
                        (last + quiet(len)).min(deadline)
                    }
                    _ => {
                        break pending
                            .remove(&api_id)
                            .map(|q| q.requests)
                            .unwrap_or_default();
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = full.notified() => {}
            }
        };
        // The last request per application wins.
        let mut changes: Vec<(&str, Authorization)> = Vec::new();
        for p in &batch {
            changes.retain(|(id, _)| *id != p.client_id);
            changes.push((p.client_id.as_str(), p.change));
        }
        tracing::debug!(
            api_id,
            applications = changes.len(),
            "updating API authorizations"
        );
        let result = self
            .kinde
            .update_api_applications(&api_id, &changes)
            .await
            .map(drop)
            .map_err(Arc::new);
        match result {
            Err(e) if changes.len() > 1 && !e.is_transient() => {
                // Kinde refuses the whole batch when one application is unknown (e.g. a
                // predecessor already deleted) or otherwise bad: that answer is about one
                // of them only.
                // Taken for all, a revoke would count as done and an authorization as
                // failed. Apply each alone to learn its own outcome.
                let mut outcomes: HashMap<String, Result<(), Arc<KindeError>>> = HashMap::new();
                for (client_id, change) in &changes {
                    let single = self
                        .kinde
                        .update_api_applications(&api_id, &[(client_id, *change)])
                        .await
                        .map(drop)
                        .map_err(Arc::new);
                    outcomes.insert((*client_id).to_owned(), single);
                }
                for p in batch {
                    let outcome = outcomes
                        .get(&p.client_id)
                        .cloned()
                        .unwrap_or_else(|| Err(e.clone()));
                    // Only the last request per application was applied; earlier ones for
                    // the same application share its outcome.
                    let _ = p.done.send(outcome);
                }
            }
            result => {
                for p in batch {
                    let _ = p.done.send(result.clone());
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::kinde::{KindeConfig, KindeMetrics};

    fn batcher() -> AuthorizeBatcher {
        // Nothing here reaches Kinde: the batches are abandoned before they are flushed.
        let config = KindeConfig::new(
            "http://127.0.0.1:9".parse().unwrap(),
            "id".into(),
            secrecy::SecretString::from("secret"),
        );
        let mut registry = prometheus_client::registry::Registry::default();
        let kinde = KindeClient::new(config, KindeMetrics::register(&mut registry)).unwrap();
        AuthorizeBatcher::new(kinde)
    }

    /// The flush lives in the first submitter's future: dropping that future (its
    /// reconcile cancelled) abandons the batch, and nothing of it runs afterwards.
    #[tokio::test(start_paused = true)]
    async fn dropping_the_flushing_submitter_abandons_the_batch() {
        let b = batcher();
        let mut first = Box::pin(b.submit("api", "a", Authorization::Authorize));
        let mut second = Box::pin(b.submit("api", "b", Authorization::Deauthorize));
        assert!(futures::poll!(first.as_mut()).is_pending());
        assert!(futures::poll!(second.as_mut()).is_pending());
        drop(first);
        let outcome = second.await;
        assert!(
            matches!(outcome.as_ref().map_err(|e| e.as_ref()), Err(KindeError::Config(m)) if m.contains("dropped")),
            "{outcome:?}"
        );
        let pending = b.pending.lock().unwrap();
        assert!(
            pending.is_empty(),
            "a queue without a flusher was left behind"
        );
    }

    /// A later submitter starts a fresh queue (and flushes it) once the old one is gone.
    #[tokio::test(start_paused = true)]
    async fn a_new_submitter_flushes_after_an_abandoned_batch() {
        let b = batcher();
        let mut first = Box::pin(b.submit("api", "a", Authorization::Authorize));
        assert!(futures::poll!(first.as_mut()).is_pending());
        drop(first);
        let mut next = Box::pin(b.submit("api", "c", Authorization::Authorize));
        assert!(futures::poll!(next.as_mut()).is_pending());
        let pending = b.pending.lock().unwrap();
        let queue = pending.get("api").expect("a new queue");
        assert_eq!(queue.requests.len(), 1);
        assert_eq!(queue.requests[0].client_id, "c");
    }

    /// A full queue goes at once: the 100th request does not wait out the quiet window.
    #[tokio::test(start_paused = true)]
    async fn a_full_queue_is_taken_without_waiting() {
        let b = batcher();
        let ids: Vec<String> = (0..FULL_BATCH).map(|i| format!("app-{i}")).collect();
        let mut submits: Vec<_> = ids
            .iter()
            .map(|id| Box::pin(b.submit("api", id, Authorization::Authorize)))
            .collect();
        for submit in &mut submits {
            assert!(futures::poll!(submit.as_mut()).is_pending());
        }
        // The first submitter flushes: no time has passed, yet once woken it takes the
        // batch at once (and is now sending it to the unreachable Kinde).
        assert!(futures::poll!(submits[0].as_mut()).is_pending());
        assert!(
            !b.pending.lock().unwrap().contains_key("api"),
            "a full queue must be taken at once"
        );
    }

    #[test]
    fn the_guard_leaves_a_later_flushers_queue_alone() {
        let pending: Arc<Mutex<HashMap<String, Queue>>> = Arc::default();
        pending.lock().unwrap().insert(
            "api".into(),
            Queue {
                requests: Vec::new(),
                last: Instant::now(),
                full: Arc::default(),
                flusher: 2,
            },
        );
        drop(QueueGuard {
            pending: pending.clone(),
            api_id: "api".into(),
            flusher: 1,
        });
        assert!(pending.lock().unwrap().contains_key("api"));
        drop(QueueGuard {
            pending: pending.clone(),
            api_id: "api".into(),
            flusher: 2,
        });
        assert!(!pending.lock().unwrap().contains_key("api"));
    }
}

//! The management access token, cached and refreshed shortly before expiry.
//!
//! Every `/oauth2/token` call mints a billable M2M token at Kinde, so the cache is shared by
//! the whole process and at most one refresh runs at a time: callers queue on the lock and
//! find the fresh token when they get it.

use std::future::Future;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Refresh this long before expiry at most (a tenth of the lifetime for short tokens).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    slot: Mutex<Option<Cached>>,
}

#[derive(Debug)]
struct Cached {
    token: SecretString,
    refresh_at: Instant,
    generation: u64,
}

/// A token and the generation it belongs to, for `invalidate`.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub token: SecretString,
    pub generation: u64,
}

impl TokenCache {
    /// The cached token, or a new one from `fetch` (token, lifetime) when missing or due.
    pub async fn get<F, Fut, E>(&self, fetch: F) -> Result<Lease, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(SecretString, Duration), E>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| Instant::now() < c.refresh_at) {
            return Ok(Lease {
                token: c.token.clone(),
                generation: c.generation,
            });
        }
        let (token, lifetime) = fetch().await?;
        let margin = REFRESH_MARGIN.min(lifetime / 10);
        let generation = slot.as_ref().map_or(1, |c| c.generation + 1);
        *slot = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + lifetime.saturating_sub(margin),
            generation,
        });
        Ok(Lease { token, generation })
    }

    /// Drops the token Kinde refused, unless another task already replaced it.
    pub async fn invalidate(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if let Some(c) = slot.as_mut().filter(|c| c.generation == generation) {
            c.refresh_at = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use secrecy::ExposeSecret;

    use super::*;

    type Fetch =
        std::pin::Pin<Box<dyn Future<Output = Result<(SecretString, Duration), ()>> + Send>>;

    fn fetcher(count: Arc<AtomicU32>, lifetime: Duration) -> impl FnOnce() -> Fetch {
        move || {
            Box::pin(async move {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok((SecretString::from(format!("token-{n}")), lifetime))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_refresh() {
        let cache = Arc::new(TokenCache::default());
        let count = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, count) = (cache.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                cache.get(fetcher(count, Duration::from_secs(3600))).await
            }));
        }
        for t in tasks {
            let lease = t.await.expect("join").expect("token");
            assert_eq!(lease.token.expose_secret(), "token-1");
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_shortly_before_expiry() {
        let cache = TokenCache::default();
        let count = Arc::new(AtomicU32::new(0));
        let ttl = Duration::from_secs(3600);
        cache.get(fetcher(count.clone(), ttl)).await.expect("token");
        tokio::time::advance(Duration::from_secs(3500)).await;
        cache.get(fetcher(count.clone(), ttl)).await.expect("token");
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "still valid for 100s: reused"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        let lease = cache.get(fetcher(count.clone(), ttl)).await.expect("token");
        assert_eq!(
            lease.token.expose_secret(),
            "token-2",
            "within 60s of expiry: refreshed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_only_drops_the_refused_generation() {
        let cache = TokenCache::default();
        let count = Arc::new(AtomicU32::new(0));
        let ttl = Duration::from_secs(3600);
        let first = cache.get(fetcher(count.clone(), ttl)).await.expect("token");
        cache.invalidate(first.generation).await;
        let second = cache.get(fetcher(count.clone(), ttl)).await.expect("token");
        assert_eq!(second.generation, first.generation + 1);
        // A late invalidate of the old generation must not drop the new token.
        cache.invalidate(first.generation).await;
        let third = cache.get(fetcher(count.clone(), ttl)).await.expect("token");
        assert_eq!(third.generation, second.generation);
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}

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

/// Shortest lifetime believed: a token said to live `0` s would be fetched (and billed)
/// for every call.
const MIN_LIFETIME: Duration = Duration::from_secs(1);
/// Longest lifetime believed: a day, Kinde's default M2M token lifetime. A longer claim
/// (`expires_in` near `u64::MAX` overflowed `Instant + Duration` and panicked) costs
/// nothing but one fetch a day; a token Kinde stops accepting earlier is refreshed on the
/// 401/403 anyway.
const MAX_LIFETIME: Duration = Duration::from_secs(86_400);

/// The lifetime to cache a token for, from the token endpoint's `expires_in` (seconds;
/// one hour when absent, the OAuth2 default Kinde documents), clamped to
/// [`MIN_LIFETIME`]..=[`MAX_LIFETIME`].
pub(crate) fn lifetime(expires_in: Option<u64>) -> Duration {
    Duration::from_secs(expires_in.unwrap_or(3600)).clamp(MIN_LIFETIME, MAX_LIFETIME)
}

/// When to refresh a token of `lifetime` received at `now`. Total: a lifetime beyond
/// [`MAX_LIFETIME`] is clamped again here because the cache is generic over its fetcher.
fn refresh_at(now: Instant, lifetime: Duration) -> Instant {
    let lifetime = lifetime.min(MAX_LIFETIME);
    let margin = REFRESH_MARGIN.min(lifetime / 10);
    // `checked_add` only fails past the platform's Instant range; refreshing on the next
    // call is then the safe answer.
    now.checked_add(lifetime.saturating_sub(margin))
        .unwrap_or(now)
}

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
        let generation = slot.as_ref().map_or(1, |c| c.generation.wrapping_add(1));
        *slot = Some(Cached {
            token: token.clone(),
            refresh_at: refresh_at(Instant::now(), lifetime),
            generation,
        });
        Ok(Lease { token, generation })
    }

    /// The cached token if it is still good, without waiting: `None` when there is none,
    /// it is due, or a refresh is running right now (the lock is held through it).
    pub fn current(&self) -> Option<Lease> {
        let slot = self.slot.try_lock().ok()?;
        slot.as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| Lease {
                token: c.token.clone(),
                generation: c.generation,
            })
    }

    /// Drops the cached token, whichever it is (the credentials changed).
    pub(crate) async fn expire(&self) {
        if let Some(c) = self.slot.lock().await.as_mut() {
            c.refresh_at = Instant::now();
        }
    }

    /// Drops the token Kinde refused, unless another task already replaced it.
    pub(crate) async fn invalidate(&self, generation: u64) {
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

    #[test]
    fn lifetimes_are_clamped() {
        assert_eq!(lifetime(None), Duration::from_secs(3600));
        assert_eq!(lifetime(Some(0)), MIN_LIFETIME);
        assert_eq!(lifetime(Some(120)), Duration::from_secs(120));
        assert_eq!(lifetime(Some(u64::MAX)), MAX_LIFETIME);
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_lifetime_does_not_overflow() {
        let cache = TokenCache::default();
        let count = Arc::new(AtomicU32::new(0));
        // What a fetcher that forgot to clamp would hand over.
        cache
            .get(fetcher(count.clone(), Duration::from_secs(u64::MAX)))
            .await
            .expect("token");
        assert!(cache.current().is_some());
        tokio::time::advance(MAX_LIFETIME).await;
        assert!(cache.current().is_none(), "refreshed within a day");
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn current_never_waits_for_a_refresh() {
        let cache = Arc::new(TokenCache::default());
        assert!(cache.current().is_none());
        let count = Arc::new(AtomicU32::new(0));
        let c = cache.clone();
        let fetch = fetcher(count.clone(), Duration::from_secs(3600));
        let refreshing = tokio::spawn(async move { c.get(fetch).await });
        tokio::task::yield_now().await;
        assert!(cache.current().is_none(), "refresh in progress");
        refreshing.await.expect("join").expect("token");
        let lease = cache.current().expect("fresh token");
        assert_eq!(lease.token.expose_secret(), "token-1");
    }
}

//! Process-wide throttle for Kinde calls: a token bucket (requests per second with a
//! burst), a cap on calls in flight, and a shared pause when Kinde answers 429.
//!
//! Kinde publishes no numbers, only that it has a rate limiter and a concurrency limiter
//! and that clients should throttle themselves; one pause for everyone after a 429 keeps
//! the other tasks from running into the same wall.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Shared limiter; cheap to call from many tasks.
#[derive(Debug)]
pub struct Limiter {
    in_flight: Semaphore,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Tokens per second; `None` = unlimited.
    rate: Option<f64>,
    burst: f64,
    /// May go negative: a negative balance is a queue of reservations.
    tokens: f64,
    refilled_at: Instant,
    paused_until: Option<Instant>,
}

impl Limiter {
    /// `requests_per_second <= 0` disables the rate limit; `max_in_flight` is at least 1.
    pub fn new(requests_per_second: f64, burst: u32, max_in_flight: usize) -> Self {
        let rate = (requests_per_second > 0.0).then_some(requests_per_second);
        let burst = f64::from(burst.max(1));
        Self {
            in_flight: Semaphore::new(max_in_flight.max(1)),
            state: Mutex::new(State {
                rate,
                burst,
                tokens: burst,
                refilled_at: Instant::now(),
                paused_until: None,
            }),
        }
    }

    /// Waits for a token and a free slot; returns the slot and how long the caller waited.
    pub async fn acquire(&self) -> (SemaphorePermit<'_>, Duration) {
        let started = Instant::now();
        let wait = self.reserve(started);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        // A permit is only refused when the semaphore is closed, which this type never does.
        let permit = loop {
            if let Ok(p) = self.in_flight.acquire().await {
                break p;
            }
        };
        (permit, started.elapsed())
    }

    /// Makes every caller wait until `until` (a 429's reset time); never shortens a pause.
    pub fn pause_until(&self, until: Instant) {
        let mut s = self.lock();
        if s.paused_until.is_none_or(|p| p < until) {
            s.paused_until = Some(until);
        }
    }

    fn reserve(&self, now: Instant) -> Duration {
        let mut s = self.lock();
        let pause = s
            .paused_until
            .filter(|p| *p > now)
            .map(|p| p - now)
            .unwrap_or_default();
        let Some(rate) = s.rate else { return pause };
        let elapsed = now.saturating_duration_since(s.refilled_at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * rate).min(s.burst);
        s.refilled_at = now;
        s.tokens -= 1.0;
        let bucket = if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / rate)
        };
        pause.max(bucket)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: recover it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let limiter = Limiter::new(10.0, 3, 10);
        let start = Instant::now();
        for _ in 0..3 {
            let (_p, waited) = limiter.acquire().await;
            assert!(waited.is_zero(), "burst should not wait");
        }
        let (_p, waited) = limiter.acquire().await;
        assert!(
            waited >= Duration::from_millis(99),
            "4th call waited only {waited:?}"
        );
        for _ in 0..10 {
            drop(limiter.acquire().await);
        }
        // 3 free + 11 at 10/s
        assert!(start.elapsed() >= Duration::from_millis(1090));
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_rate_never_waits() {
        let limiter = Limiter::new(0.0, 1, 10);
        for _ in 0..100 {
            let (_p, waited) = limiter.acquire().await;
            assert!(waited.is_zero());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pause_delays_everyone_and_never_shrinks() {
        let limiter = Limiter::new(0.0, 1, 10);
        let now = Instant::now();
        limiter.pause_until(now + Duration::from_secs(5));
        limiter.pause_until(now + Duration::from_secs(1));
        let (_p, waited) = limiter.acquire().await;
        assert!(waited >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn caps_calls_in_flight() {
        let limiter = Limiter::new(0.0, 1, 2);
        let (a, _) = limiter.acquire().await;
        let (_b, _) = limiter.acquire().await;
        let third = tokio::time::timeout(Duration::from_secs(1), limiter.acquire()).await;
        assert!(third.is_err(), "a third call must wait for a slot");
        drop(a);
        let third = tokio::time::timeout(Duration::from_secs(1), limiter.acquire()).await;
        assert!(third.is_ok());
    }
}

//! Process-wide throttle for Kinde calls: a token bucket (requests per second with a
//! burst), a cap on calls in flight, a shared pause when Kinde answers 429, and a pace that
//! learns from those 429s.
//!
//! Kinde publishes no numbers, only that it has a rate limiter and a concurrency limiter
//! and that clients should throttle themselves; one pause for everyone after a 429 keeps
//! the other tasks from running into the same wall.
//!
//! After a pause the callers are released at the configured rate, not all at once: a
//! 429 says the budget is spent, so the bucket restarts empty (one call at the reset, then
//! one per `1/rate`). Releasing the whole queue at the reset would spend the new window in
//! one burst and draw a 429 for every caller beyond it (observed: 103 429s for 90
//! successes). Reservations made before a pause are void: their holders queue again
//! behind it, even if they were already waiting for a slot or an in-flight permit.
//!
//! The pace learns (additive increase, multiplicative decrease, as TCP does): the
//! configured rate is a ceiling, a 429 cuts the current pace to [`DECREASE`] of itself (at
//! most once per [`DECREASE_EVERY`], since the 429s of one window all tell the same news),
//! and every successful call raises it by [`INCREASE_SHARE`] of the ceiling. Against a Kinde
//! allowing less than the ceiling, the pace settles just under Kinde's rate instead of
//! drawing a 429 whenever the bucket refills.
//!
//! The pace that drew the last 429 is remembered (as CUBIC remembers its `W_max`): the
//! recovery is fast up to [`HOLD_SHARE`] of it and slow through the band just below it
//! ([`PROBE_SHARE`] per call, about 1,000 calls to cross it), then fast again once past it
//! (the limit moved). Without that band, a ceiling equal to Kinde's own rate gets back to
//! it within 100 calls and the jitter of arrival times draws the next 429 there: each one
//! pauses every caller until the window resets (a second, as Kinde's `RateLimit-Reset`
//! counts whole seconds). Measured at 1,000 customers: 39 429s and a fifth of the run's
//! time lost to them with plain AIMD.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Shared limiter; cheap to call from many tasks.
#[derive(Debug)]
pub struct Limiter {
    in_flight: Semaphore,
    state: Mutex<State>,
    /// Callers inside [`Limiter::acquire`] (for the metric).
    waiting: std::sync::atomic::AtomicUsize,
    /// Foreground callers inside [`Limiter::acquire`] (background ones yield to them).
    foreground_waiting: std::sync::atomic::AtomicUsize,
}

tokio::task_local! {
    /// Set for the Kinde calls of a background task (a resync's drift reads): how long each
    /// may yield to foreground calls.
    static BACKGROUND: Duration;
}

/// Runs `work` with its Kinde calls in the background: each waits while calls of foreground
/// work (creates, grants, whatever a change asked for) are waiting, for at most
/// `max_yield`. A fleet's drift reads then do not slow an onboarding down, and cannot
/// starve either.
pub async fn in_background<F: std::future::Future>(max_yield: Duration, work: F) -> F::Output {
    BACKGROUND.scope(max_yield, work).await
}
/// How often a yielding background call looks again.
const BACKGROUND_POLL: Duration = Duration::from_millis(100);

/// A 429 leaves this share of the current pace.
pub const DECREASE: f64 = 0.8;
/// The pace never falls below this share of the ceiling.
pub const FLOOR_SHARE: f64 = 0.05;
/// Each successful call raises the pace by this share of the ceiling (from the floor of a
/// decrease back to the ceiling in about 100 calls: 5 s at 20 calls/s).
pub const INCREASE_SHARE: f64 = 0.002;
/// 429s closer together than this count as one signal.
pub const DECREASE_EVERY: Duration = Duration::from_secs(1);
/// The fast recovery stops at this share of the pace that drew the last 429 (5% under
/// it: 20 calls then span 1.05 s, so a 50 ms jitter still fits a one-second window).
pub const HOLD_SHARE: f64 = 0.95;
/// Below the pace that drew the last 429, each success raises the pace by this share of
/// that pace (from [`HOLD_SHARE`] of it back to it in about 1,000 calls).
pub const PROBE_SHARE: f64 = 0.000_05;

#[derive(Debug)]
struct State {
    /// The current pace, tokens per second; `None` = unlimited.
    rate: Option<f64>,
    /// The configured rate: the pace never goes above it.
    ceiling: Option<f64>,
    last_decrease: Option<Instant>,
    /// The pace at which the last 429 came back.
    throttled_at_pace: Option<f64>,
    burst: f64,
    /// May go negative: a negative balance is a queue of reservations.
    tokens: f64,
    /// When `tokens` was last brought up to date; in the future while paused (the bucket
    /// starts refilling when the pause ends).
    refilled_at: Instant,
    paused_until: Option<Instant>,
    /// Bumped by every pause that extends the current one: a reservation taken under an
    /// older epoch is void.
    epoch: u64,
}

impl Limiter {
    /// `requests_per_second <= 0` (or not finite) disables the rate limit; `max_in_flight`
    /// is at least 1.
    pub fn new(requests_per_second: f64, burst: u32, max_in_flight: usize) -> Self {
        let rate = (requests_per_second.is_finite() && requests_per_second > 0.0)
            .then_some(requests_per_second);
        let burst = f64::from(burst.max(1));
        Self {
            in_flight: Semaphore::new(max_in_flight.clamp(1, Semaphore::MAX_PERMITS)),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            foreground_waiting: std::sync::atomic::AtomicUsize::new(0),
            state: Mutex::new(State {
                rate,
                ceiling: rate,
                last_decrease: None,
                throttled_at_pace: None,
                burst,
                tokens: burst,
                refilled_at: Instant::now(),
                paused_until: None,
                epoch: 0,
            }),
        }
    }

    /// Waits for a token and a free slot; returns the slot and how long the caller waited.
    pub(crate) async fn acquire(&self) -> (SemaphorePermit<'_>, Duration) {
        let started = Instant::now();
        let _waiting = Waiting::enter(&self.waiting);
        let max_yield = BACKGROUND.try_with(|d| *d).ok();
        let _foreground = max_yield
            .is_none()
            .then(|| Waiting::enter(&self.foreground_waiting));
        if let Some(max_yield) = max_yield {
            while self
                .foreground_waiting
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
                && started.elapsed() < max_yield
            {
                tokio::time::sleep(BACKGROUND_POLL).await;
            }
        }
        loop {
            let (wait, epoch) = self.reserve(Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            // A permit is only refused when the semaphore is closed, which this type never
            // does.
            let permit = loop {
                if let Ok(p) = self.in_flight.acquire().await {
                    break p;
                }
            };
            if self.lock().epoch == epoch {
                return (permit, started.elapsed());
            }
            // A 429 arrived while this caller waited: its slot was planned against a
            // budget Kinde says is spent. Queue again behind the pause.
        }
    }

    /// Makes every caller wait until `until` (a 429's reset time); never shortens a pause.
    /// The bucket restarts empty at `until`, so the queue drains at the configured rate.
    pub(crate) fn pause_until(&self, until: Instant) {
        let mut s = self.lock();
        if s.paused_until.is_some_and(|p| p >= until) {
            return;
        }
        s.paused_until = Some(until);
        s.epoch = s.epoch.wrapping_add(1);
        // One call may go at the reset (the probe); the rest follow at the rate.
        s.tokens = 1.0_f64.min(s.burst);
        s.refilled_at = until;
    }

    /// Kinde said 429: slow the pace down (see the module docs).
    pub(crate) fn throttled(&self, now: Instant) {
        let mut s = self.lock();
        let (Some(rate), Some(ceiling)) = (s.rate, s.ceiling) else {
            return;
        };
        if s.last_decrease
            .is_some_and(|at| now.saturating_duration_since(at) < DECREASE_EVERY)
        {
            return;
        }
        s.last_decrease = Some(now);
        s.throttled_at_pace = Some(rate);
        s.rate = Some((rate * DECREASE).max(ceiling * FLOOR_SHARE));
    }

    /// A call went through without a 429: speed the pace up, up to the ceiling.
    pub(crate) fn succeeded(&self) {
        let mut s = self.lock();
        if let (Some(rate), Some(ceiling)) = (s.rate, s.ceiling) {
            s.rate = Some(recovered_pace(rate, ceiling, s.throttled_at_pace).min(ceiling));
        }
    }

    /// The current pace (requests per second), `None` when unlimited.
    pub fn pace(&self) -> Option<f64> {
        self.lock().rate
    }

    /// Callers waiting for a slot right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes a slot: how long to wait for it, and the epoch it belongs to.
    fn reserve(&self, now: Instant) -> (Duration, u64) {
        let mut s = self.lock();
        let epoch = s.epoch;
        let pause = s
            .paused_until
            .map(|p| p.saturating_duration_since(now))
            .unwrap_or_default();
        let Some(rate) = s.rate else {
            return (pause, epoch);
        };
        if now > s.refilled_at {
            let elapsed = now.saturating_duration_since(s.refilled_at).as_secs_f64();
            s.tokens = (s.tokens + elapsed * rate).min(s.burst);
            s.refilled_at = now;
        }
        s.tokens -= 1.0;
        // The slot is `refilled_at` (now, or the end of a pause) plus the queue ahead.
        let start = s.refilled_at.saturating_duration_since(now);
        let queue = if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            secs(-s.tokens / rate)
        };
        (pause.max(start.saturating_add(queue)), epoch)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: recover it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pace after one more successful call at `rate`: fast, except in the band just below
/// the pace that drew the last 429 (see the module docs).
fn recovered_pace(rate: f64, ceiling: f64, throttled_at: Option<f64>) -> f64 {
    let fast = rate + ceiling * INCREASE_SHARE;
    let Some(throttled_at) = throttled_at else {
        return fast;
    };
    let hold = throttled_at * HOLD_SHARE;
    if rate < hold {
        fast.min(hold)
    } else if rate < throttled_at {
        rate + throttled_at * PROBE_SHARE
    } else {
        fast
    }
}

/// Counts a caller inside `acquire` for as long as it is there (also when its future is
/// dropped while waiting).
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Longest wait the limiter computes: a day. Only a nonsensical configuration (a rate of
/// one call per century) comes near it; this keeps the arithmetic total.
const MAX_WAIT: Duration = Duration::from_secs(86_400);

/// `Duration::from_secs_f64` without its panics (negative, NaN, overflow).
fn secs(s: f64) -> Duration {
    if s.is_nan() || s <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(s).map_or(MAX_WAIT, |d| d.min(MAX_WAIT))
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

    /// Acquires on `limiter` from `n` tasks; each bumps `done` once it holds a slot.
    fn spawn_acquirers(
        limiter: &std::sync::Arc<Limiter>,
        n: usize,
        done: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..n)
            .map(|_| {
                let (limiter, done) = (limiter.clone(), done.clone());
                tokio::spawn(async move {
                    let _slot = limiter.acquire().await;
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect()
    }

    fn count(done: &std::sync::atomic::AtomicUsize) -> usize {
        done.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lets the spawned tasks run until they block again (the clock is paused).
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_pause_callers_drain_at_the_rate() {
        use std::sync::Arc;
        let limiter = Arc::new(Limiter::new(10.0, 10, 100));
        limiter.pause_until(Instant::now() + Duration::from_secs(5));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks = spawn_acquirers(&limiter, 20, &done);
        settle().await;
        tokio::time::advance(Duration::from_millis(4990)).await;
        settle().await;
        assert_eq!(count(&done), 0, "nobody goes before the reset");
        tokio::time::advance(Duration::from_millis(15)).await;
        settle().await;
        let at_reset = count(&done);
        // Without pacing all 20 go at the reset and spend the new window at once.
        assert_eq!(at_reset, 1, "one probe at the reset, not the whole queue");
        // One more per 100 ms after that.
        tokio::time::advance(Duration::from_millis(500)).await;
        settle().await;
        assert_eq!(count(&done), 6);
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(count(&done), 20);
        for t in tasks {
            t.await.expect("join");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_voids_slots_reserved_before_it() {
        use std::sync::Arc;
        // Burst 1 at 1/s: the second caller is given a slot 1 s from now.
        let limiter = Arc::new(Limiter::new(1.0, 1, 100));
        drop(limiter.acquire().await);
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks = spawn_acquirers(&limiter, 1, &done);
        settle().await;
        // A 429 for a call in flight: pause 10 s.
        limiter.pause_until(Instant::now() + Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(
            count(&done),
            0,
            "a slot taken before the 429 must not be used"
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        settle().await;
        assert_eq!(count(&done), 1);
        for t in tasks {
            t.await.expect("join");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_also_holds_callers_waiting_for_a_permit() {
        use std::sync::Arc;
        let limiter = Arc::new(Limiter::new(0.0, 1, 1));
        let (held, _) = limiter.acquire().await;
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks = spawn_acquirers(&limiter, 1, &done);
        settle().await;
        limiter.pause_until(Instant::now() + Duration::from_secs(10));
        drop(held);
        settle().await;
        assert_eq!(count(&done), 0, "the waiter must honour the pause");
        tokio::time::advance(Duration::from_secs(11)).await;
        settle().await;
        assert_eq!(count(&done), 1);
        for t in tasks {
            t.await.expect("join");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_pace_backs_off_on_429_and_recovers_on_success() {
        let limiter = Limiter::new(20.0, 1, 4);
        let t0 = Instant::now();
        limiter.throttled(t0);
        assert_eq!(limiter.pace(), Some(16.0));
        // The other 429s of the same window are the same signal.
        limiter.throttled(t0 + Duration::from_millis(500));
        assert_eq!(limiter.pace(), Some(16.0));
        limiter.throttled(t0 + Duration::from_secs(1));
        let after_two = limiter.pace().expect("limited");
        assert!((after_two - 12.8).abs() < 1e-9, "{after_two}");
        // Never below the floor, however many 429s.
        for i in 2..100 {
            limiter.throttled(t0 + Duration::from_secs(i));
        }
        assert_eq!(limiter.pace(), Some(20.0 * FLOOR_SHARE));
        // Each success adds 0.2% of the ceiling (the floor is past the band below the last
        // 429's pace, which was the floor too); never above the ceiling.
        limiter.succeeded();
        let up = limiter.pace().expect("limited");
        assert!((up - (1.0 + 0.04)).abs() < 1e-9, "{up}");
        for _ in 0..10_000 {
            limiter.succeeded();
        }
        assert_eq!(limiter.pace(), Some(20.0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_pace_recovers_fast_to_just_under_the_last_429_then_probes_slowly() {
        let limiter = Limiter::new(20.0, 1, 4);
        limiter.throttled(Instant::now());
        assert_eq!(limiter.pace(), Some(16.0));
        // Fast: 0.04 per call up to 95% of 20 (19.0), in 75 calls, and not past it.
        for _ in 0..75 {
            limiter.succeeded();
        }
        let held = limiter.pace().expect("limited");
        assert!((held - 19.0).abs() < 1e-9, "{held}");
        // Slow through the band: 0.001 per call, so 500 calls gain half a call per second
        // (give or take the one call that rounding may spend reaching 19.0 exactly).
        for _ in 0..500 {
            limiter.succeeded();
        }
        let probing = limiter.pace().expect("limited");
        assert!((probing - 19.5).abs() < 1.5e-3, "{probing}");
        // Past the pace that drew the 429, the limit has moved: fast again.
        for _ in 0..510 {
            limiter.succeeded();
        }
        assert_eq!(limiter.pace(), Some(20.0));
    }

    #[test]
    fn recovery_without_a_429_is_fast_and_a_pace_above_the_band_stays_fast() {
        assert!((recovered_pace(10.0, 20.0, None) - 10.04).abs() < 1e-9);
        // 19.99 is below 20 (the 429's pace) but above 19: the band.
        assert!((recovered_pace(19.99, 20.0, Some(20.0)) - 19.991).abs() < 1e-9);
        // 15 is above 12 (the 429's pace): fast.
        assert!((recovered_pace(15.0, 20.0, Some(12.0)) - 15.04).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slower_pace_spaces_the_slots() {
        let limiter = Limiter::new(10.0, 1, 4);
        drop(limiter.acquire().await);
        limiter.throttled(Instant::now());
        // 8/s now: the next slot is 1/8 s away, not 1/10.
        let (_p, waited) = limiter.acquire().await;
        assert!(waited >= Duration::from_millis(125), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unlimited_limiter_stays_unlimited_and_counts_its_waiters() {
        let limiter = std::sync::Arc::new(Limiter::new(0.0, 1, 1));
        limiter.throttled(Instant::now());
        assert_eq!(limiter.pace(), None);
        let (held, _) = limiter.acquire().await;
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { drop(limiter.acquire().await) })
        };
        settle().await;
        assert_eq!(limiter.waiting(), 1);
        drop(held);
        waiter.await.expect("join");
        assert_eq!(limiter.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn background_calls_yield_to_foreground_ones_for_a_while() {
        use std::sync::Arc;
        let limiter = Arc::new(Limiter::new(0.0, 1, 1));
        let (held, _) = limiter.acquire().await;
        // A foreground caller waits for the permit.
        let foreground = {
            let limiter = limiter.clone();
            tokio::spawn(async move { drop(limiter.acquire().await) })
        };
        settle().await;
        let max_yield = Duration::from_secs(60);
        let background = {
            let limiter = limiter.clone();
            tokio::spawn(in_background(max_yield, async move {
                let (_p, waited) = limiter.acquire().await;
                waited
            }))
        };
        settle().await;
        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        assert!(!background.is_finished(), "a background call must yield");
        drop(held);
        foreground.await.expect("join");
        let waited = background.await.expect("join");
        assert!(waited >= Duration::from_secs(5), "{waited:?}");

        // Foreground work that never ends does not starve it.
        let (held, _) = limiter.acquire().await;
        let stuck = {
            let limiter = limiter.clone();
            tokio::spawn(async move { drop(limiter.acquire().await) })
        };
        settle().await;
        let late = {
            let limiter = limiter.clone();
            tokio::spawn(in_background(max_yield, async move {
                limiter.acquire().await.1
            }))
        };
        settle().await;
        for _ in 0..62 {
            tokio::time::advance(Duration::from_secs(1)).await;
            settle().await;
        }
        drop(held);
        stuck.await.expect("join");
        assert!(late.await.expect("join") >= max_yield);
    }

    #[test]
    fn wait_arithmetic_never_panics() {
        assert_eq!(secs(f64::NAN), Duration::ZERO);
        assert_eq!(secs(-1.0), Duration::ZERO);
        assert_eq!(secs(1e300), MAX_WAIT);
        assert_eq!(secs(f64::INFINITY), MAX_WAIT);
        assert_eq!(secs(0.5), Duration::from_millis(500));
        // A rate so small that one slot is centuries away.
        let limiter = Limiter::new(1e-300, 1, 1);
        let now = Instant::now();
        assert_eq!(limiter.reserve(now).0, Duration::ZERO);
        assert_eq!(limiter.reserve(now).0, MAX_WAIT);
        let limiter = Limiter::new(f64::INFINITY, 1, usize::MAX);
        assert_eq!(limiter.reserve(now).0, Duration::ZERO);
    }
}

//! Fencing of Kinde writes to the current leadership term.
//!
//! With leader election, the process stops all work the moment its leadership lapses (see
//! `leader.rs`), but a process that was paused (SIGSTOP, a frozen VM, a long GC-like stall
//! of the host) wakes up with requests already on their way to being sent. The fence closes
//! that gap: every Kinde write checks, right before it is sent, that the leadership is
//! still current by this process's own monotonic clock (the last successful renewal plus
//! the renew deadline, which is shorter than the lease a standby waits out). A write past
//! that instant is refused without being sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Until when Kinde writes may be sent. Without leader election the fence stays open.
#[derive(Debug)]
pub struct WriteFence {
    origin: Instant,
    /// Milliseconds after `origin` until which writes are allowed; `u64::MAX`: always.
    until_ms: AtomicU64,
}

impl WriteFence {
    /// A fence that never closes (no leader election).
    pub fn open() -> Self {
        Self {
            origin: Instant::now(),
            until_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// A fence that allows nothing until [`WriteFence::allow_until`] is called.
    pub fn closed() -> Self {
        Self {
            origin: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }

    /// Allows writes until `deadline` (the end of the current leadership term).
    pub fn allow_until(&self, deadline: Instant) {
        let ms = deadline
            .checked_duration_since(self.origin)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1));
        self.until_ms.store(ms, Ordering::SeqCst);
    }

    /// Allows no more writes (leadership lost).
    pub fn close(&self) {
        self.until_ms.store(0, Ordering::SeqCst);
    }

    /// Whether a write may be sent at `now`.
    pub fn allows(&self, now: Instant) -> bool {
        let until = self.until_ms.load(Ordering::SeqCst);
        if until == u64::MAX {
            return true;
        }
        let elapsed = now
            .checked_duration_since(self.origin)
            .unwrap_or(Duration::ZERO);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX) < until
    }
}

impl Default for WriteFence {
    fn default() -> Self {
        Self::open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_fence_always_allows() {
        let f = WriteFence::open();
        assert!(f.allows(Instant::now() + Duration::from_secs(86_400 * 365)));
    }

    #[test]
    fn writes_stop_at_the_end_of_the_term() {
        let f = WriteFence::closed();
        let now = Instant::now();
        assert!(!f.allows(now), "closed until the first term");
        f.allow_until(now + Duration::from_secs(10));
        assert!(f.allows(now + Duration::from_secs(9)));
        assert!(!f.allows(now + Duration::from_secs(10)));
        assert!(
            !f.allows(now + Duration::from_secs(3600)),
            "a process woken late writes nothing"
        );
        f.allow_until(now + Duration::from_secs(20));
        assert!(
            f.allows(now + Duration::from_secs(15)),
            "a renewal extends the term"
        );
        f.close();
        assert!(!f.allows(now + Duration::from_secs(15)));
        // A deadline before the fence existed allows nothing (no underflow).
        let g = WriteFence::closed();
        g.allow_until(now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
        assert!(!g.allows(Instant::now()));
    }
}

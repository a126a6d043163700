//! A circuit breaker per node: after `threshold` consecutive failed
//! requests (unreachable, or a 5xx) the node takes no requests for
//! `cool_down`; then one request is let through (half-open) and its
//! outcome closes or reopens the breaker. It catches a node that fails
//! requests while still answering its polls, which membership does not.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Breaker {
    failures: AtomicU32,
    /// Milliseconds since `epoch` when it opened; 0 when closed.
    opened_at: AtomicU64,
    /// A half-open trial is running.
    trial: AtomicU32,
    epoch: Instant,
    threshold: u32,
    cool_down: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl Breaker {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Breaker {
            failures: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            trial: AtomicU32::new(0),
            epoch: Instant::now(),
            threshold,
            cool_down,
        }
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.duration_since(self.epoch).as_millis() as u64 + 1
    }

    pub fn state(&self, now: Instant) -> State {
        let at = self.opened_at.load(Ordering::Acquire);
        if at == 0 {
            State::Closed
        } else if self.now_ms(now).saturating_sub(at) < self.cool_down.as_millis() as u64 {
            State::Open
        } else {
            State::HalfOpen
        }
    }

    /// Whether a request may go to the node now (taking the half-open
    /// trial if that is what is left).
    pub fn admit(&self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => self
                .trial
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok(),
        }
    }

    /// Whether routing may consider the node (no state change).
    pub fn available(&self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => self.trial.load(Ordering::Acquire) == 0,
        }
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.opened_at.store(0, Ordering::Release);
        self.trial.store(0, Ordering::Release);
    }

    pub fn failure(&self, now: Instant) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let half_open = self.state(now) == State::HalfOpen;
        if n >= self.threshold || half_open {
            self.opened_at.store(self.now_ms(now), Ordering::Release);
            self.trial.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_then_lets_one_trial_through() {
        let b = Breaker::new(3, Duration::from_secs(5));
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        b.failure(at(0));
        b.failure(at(1));
        b.success(); // a success in between resets the count
        b.failure(at(2));
        b.failure(at(3));
        assert_eq!(b.state(at(3)), State::Closed);
        b.failure(at(4));
        assert_eq!(b.state(at(5)), State::Open);
        assert!(!b.admit(at(4000)));
        // After the cool-down: exactly one trial.
        assert_eq!(b.state(at(5100)), State::HalfOpen);
        assert!(b.available(at(5100)));
        assert!(b.admit(at(5100)));
        assert!(!b.admit(at(5101)));
        assert!(!b.available(at(5101)));
        // The trial fails: open again for a whole cool-down.
        b.failure(at(5200));
        assert_eq!(b.state(at(9000)), State::Open);
        assert!(b.admit(at(10_300)));
        b.success();
        assert_eq!(b.state(at(10_301)), State::Closed);
        assert!(b.admit(at(10_302)) && b.admit(at(10_303)));
    }
}

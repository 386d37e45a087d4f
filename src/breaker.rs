//! Deadlines and the circuit breaker around every store call.
//!
//! The request path must never wait on a sick store for longer than its deadline. [`Guard::run`]
//! puts a deadline on a store future and counts the outcome; after a run of consecutive transient
//! failures the breaker opens and calls fail at once, without touching the store, until the
//! cool-down has passed. Then one call is let through as a probe: its success closes the breaker,
//! its failure opens it for another cool-down. All state is in atomics: no lock, nothing held
//! across an `.await`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{StoreError, StoreErrorKind};

/// The breaker's state, as reported in [`Stats`](crate::Stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls reach the store.
    Closed,
    /// Calls fail at once until the cool-down ends.
    Open,
    /// The cool-down has ended; the next call is a probe.
    HalfOpen,
}

#[derive(Debug)]
pub(crate) struct Guard {
    threshold: u32,
    cool_down: Duration,
    epoch: Instant,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
    probing: AtomicBool,
    opened: AtomicU64,
}

impl Guard {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        Guard {
            threshold: threshold.max(1),
            cool_down,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            opened: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn state(&self) -> BreakerState {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            BreakerState::Closed
        } else if self.now_ms() < until {
            BreakerState::Open
        } else {
            BreakerState::HalfOpen
        }
    }

    /// How many times the breaker has opened.
    pub(crate) fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Run a store call under `deadline`, unless the breaker is open.
    pub(crate) async fn run<T, F>(&self, deadline: Duration, call: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let probe = match self.state() {
            BreakerState::Closed => false,
            BreakerState::Open => return Err(breaker_open()),
            BreakerState::HalfOpen => {
                // Only one caller probes; the others keep skipping the store meanwhile.
                if self
                    .probing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    return Err(breaker_open());
                }
                true
            }
        };
        let outcome = match tokio::time::timeout(deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::timeout()),
        };
        match &outcome {
            Ok(_) => self.record_success(),
            // The store did not answer in time, or could not answer at all.
            Err(err)
                if matches!(
                    err.kind(),
                    StoreErrorKind::Unavailable | StoreErrorKind::Timeout | StoreErrorKind::Busy
                ) =>
            {
                self.record_failure()
            }
            // A full or read-only store still answers reads, a corrupt value or a refused
            // command says nothing about the store's health: none of these opens the breaker.
            Err(_) => self.record_success(),
        }
        if probe {
            self.probing.store(false, Ordering::Release);
        }
        outcome
    }

    fn record_success(&self) {
        // Loads first: on the hot path both are already 0, and a store on every call would
        // bounce their cache line between the cores for nothing.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until.load(Ordering::Relaxed) != 0 {
            self.open_until.store(0, Ordering::Release);
        }
    }

    fn record_failure(&self) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let half_open = self.state() == BreakerState::HalfOpen;
        if failures >= self.threshold || half_open {
            let cool_down = u64::try_from(self.cool_down.as_millis()).unwrap_or(u64::MAX);
            let until = self.now_ms().saturating_add(cool_down).max(1);
            if self.open_until.swap(until, Ordering::AcqRel) == 0 {
                self.opened.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: "tower_response_cache",
                    failures,
                    "store circuit breaker opened: requests bypass the cache"
                );
            }
        }
    }
}

fn breaker_open() -> StoreError {
    StoreError::new(StoreErrorKind::BreakerOpen, "circuit breaker open")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn failing() -> Result<(), StoreError> {
        Err(StoreError::new(StoreErrorKind::Unavailable, "down"))
    }

    #[tokio::test]
    async fn consecutive_failures_open_the_breaker_and_a_probe_closes_it() {
        let guard = Guard::new(3, Duration::from_millis(50));
        for _ in 0..3 {
            assert!(guard.run(Duration::from_secs(1), failing()).await.is_err());
        }
        assert_eq!(guard.state(), BreakerState::Open);
        let err = guard
            .run(Duration::from_secs(1), async { Ok(()) })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::BreakerOpen);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(guard.state(), BreakerState::HalfOpen);
        guard
            .run(Duration::from_secs(1), async { Ok(()) })
            .await
            .unwrap();
        assert_eq!(guard.state(), BreakerState::Closed);
        assert_eq!(guard.times_opened(), 1);
    }

    #[tokio::test]
    async fn a_failed_probe_opens_it_again() {
        let guard = Guard::new(1, Duration::from_millis(30));
        let _ = guard.run(Duration::from_secs(1), failing()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(guard.state(), BreakerState::HalfOpen);
        let _ = guard.run(Duration::from_secs(1), failing()).await;
        assert_eq!(guard.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_is_cut_at_its_deadline() {
        let guard = Guard::new(5, Duration::from_secs(1));
        let err = guard
            .run(Duration::from_millis(20), async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Timeout);
    }

    #[tokio::test]
    async fn a_full_or_read_only_store_keeps_the_breaker_closed() {
        let guard = Guard::new(1, Duration::from_secs(10));
        for kind in [StoreErrorKind::OutOfMemory, StoreErrorKind::ReadOnly] {
            let _ = guard
                .run(Duration::from_secs(1), async move {
                    Err::<(), _>(StoreError::new(kind, "refused"))
                })
                .await;
            assert_eq!(guard.state(), BreakerState::Closed);
        }
    }

    #[tokio::test]
    async fn corrupt_values_do_not_count_against_the_store() {
        let guard = Guard::new(1, Duration::from_secs(10));
        let _ = guard
            .run(Duration::from_secs(1), async {
                Err::<(), _>(StoreError::new(StoreErrorKind::Corrupt, "wrongtype"))
            })
            .await;
        assert_eq!(guard.state(), BreakerState::Closed);
    }
}

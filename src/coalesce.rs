//! Coalescing concurrent misses: one fill per key inside a process.
//!
//! The first request that misses on a key becomes the *leader*: it gets a [`FlightGuard`] and
//! runs the fill in a task of its own. Requests for the same key that arrive while the fill runs
//! are *followers*: they wait for the fill's [`FillOutcome`] instead of calling the inner service.
//!
//! # Concurrent requests
//!
//! Only requests with the same full key are coalesced (method class, host, path, query and, once
//! known, the values of the request headers the response varies on). A follower receives the
//! leader's *stored* response only: when the leader's response turns out not to be shareable
//! (not storable, too large, failed), every follower goes to the inner service on its own, and the
//! key is marked pass-through for a short while so that the next wave does not queue behind a
//! leader again.
//!
//! # Cancellation
//!
//! The fill does not belong to the leading request: the guard lives in the fill task, so a
//! leader whose client disconnects neither aborts the fill nor leaves its followers waiting. If
//! the fill task ends without an outcome (a panic in the inner service), dropping the guard tells
//! every follower [`FillOutcome::Failed`] and removes the key, so nobody hangs. Followers also
//! wait at most the configured lock wait.
//!
//! The map is guarded by a short, synchronous critical section; no lock is held across an
//! `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::entry::StoredResponse;

/// How a fill ended, as its followers see it.
#[derive(Debug, Clone)]
pub(crate) enum FillOutcome {
    /// The response was stored; followers may answer with it.
    Stored(Arc<StoredResponse>),
    /// The response may not be shared: followers call the inner service themselves.
    NotShareable,
    /// The fill failed: followers call the inner service themselves.
    Failed,
}

type Slot = watch::Receiver<Option<FillOutcome>>;

/// Pass-through marks are forgotten after this long.
const PASS_FOR: Duration = Duration::from_secs(5);
/// Above this many marks, expired ones are swept on the next insert.
const PASS_SWEEP_AT: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    in_flight: Mutex<HashMap<String, Slot>>,
    pass: Mutex<HashMap<String, Instant>>,
}

/// The result of joining a key's flight.
#[derive(Debug)]
pub(crate) enum Join {
    /// This request leads the fill.
    Leader(FlightGuard),
    /// Another request leads; wait on this.
    Follower(Slot),
}

impl Flights {
    /// Lead the fill of `key`, or follow the one in flight.
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Join {
        let mut map = match self.in_flight.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(slot) = map.get(key) {
            return Join::Follower(slot.clone());
        }
        let (sender, receiver) = watch::channel(None);
        map.insert(key.to_owned(), receiver);
        Join::Leader(FlightGuard {
            flights: Arc::clone(self),
            key: key.to_owned(),
            sender,
            finished: false,
        })
    }

    /// The fill of `key` in flight, if there is one (without starting one).
    pub(crate) fn in_flight(&self, key: &str) -> Option<Slot> {
        let map = match self.in_flight.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.get(key).cloned()
    }

    /// Number of fills in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match self.in_flight.lock() {
            Ok(map) => map.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }

    /// Remember that `key`'s latest response could not be shared.
    pub(crate) fn mark_pass(&self, key: &str) {
        let mut pass = match self.pass.lock() {
            Ok(pass) => pass,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        if pass.len() >= PASS_SWEEP_AT {
            pass.retain(|_, until| *until > now);
        }
        if pass.len() < PASS_SWEEP_AT {
            pass.insert(key.to_owned(), now + PASS_FOR);
        }
    }

    /// Whether `key` is marked pass-through now.
    pub(crate) fn is_pass(&self, key: &str) -> bool {
        let mut pass = match self.pass.lock() {
            Ok(pass) => pass,
            Err(poisoned) => poisoned.into_inner(),
        };
        match pass.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                pass.remove(key);
                false
            }
            None => false,
        }
    }

    /// Forget a pass-through mark (after a response for the key was stored).
    pub(crate) fn clear_pass(&self, key: &str) {
        let mut pass = match self.pass.lock() {
            Ok(pass) => pass,
            Err(poisoned) => poisoned.into_inner(),
        };
        pass.remove(key);
    }
}

/// Held by the fill of one key; tells the followers how it ended, even when dropped early.
#[derive(Debug)]
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: String,
    sender: watch::Sender<Option<FillOutcome>>,
    finished: bool,
}

impl FlightGuard {
    /// The key this flight fills.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// End the flight with `outcome`.
    pub(crate) fn finish(mut self, outcome: FillOutcome) {
        self.publish(outcome);
    }

    /// Tell the followers how the fill ended, but keep the key in flight until the guard is
    /// dropped: a request arriving while the entry is still being written follows the finished
    /// flight (and gets the outcome at once) instead of starting a second fill.
    pub(crate) fn publish(&mut self, outcome: FillOutcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        // No receivers left is fine: nobody was waiting.
        let _ = self.sender.send(Some(outcome));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.publish(FillOutcome::Failed);
        let mut map = match self.flights.in_flight.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.remove(&self.key);
    }
}

/// Wait for a followed flight to end, at most `limit`; `None` when it did not end in time.
pub(crate) async fn follow(mut slot: Slot, limit: Duration) -> Option<FillOutcome> {
    let waited = tokio::time::timeout(limit, slot.wait_for(|outcome| outcome.is_some())).await;
    match waited {
        Ok(Ok(outcome)) => Some(outcome.clone().unwrap_or(FillOutcome::Failed)),
        // The guard is gone without a word (cannot happen: its drop publishes `Failed`).
        Ok(Err(_)) => Some(FillOutcome::Failed),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_caller_leads_and_the_others_follow() {
        let flights = Arc::new(Flights::default());
        let leader = match flights.join("k") {
            Join::Leader(guard) => guard,
            Join::Follower(_) => panic!("the first caller must lead"),
        };
        let follower = match flights.join("k") {
            Join::Follower(slot) => slot,
            Join::Leader(_) => panic!("the second caller must follow"),
        };
        assert_eq!(flights.len(), 1);
        leader.finish(FillOutcome::NotShareable);
        assert_eq!(flights.len(), 0);
        let outcome = follow(follower, Duration::from_secs(1)).await;
        assert!(matches!(outcome, Some(FillOutcome::NotShareable)));
    }

    #[tokio::test]
    async fn a_dropped_leader_fails_its_followers_instead_of_hanging_them() {
        let flights = Arc::new(Flights::default());
        let leader = flights.join("k");
        let follower = match flights.join("k") {
            Join::Follower(slot) => slot,
            Join::Leader(_) => panic!("the second caller must follow"),
        };
        drop(leader);
        assert_eq!(flights.len(), 0);
        let outcome = follow(follower, Duration::from_secs(5)).await;
        assert!(matches!(outcome, Some(FillOutcome::Failed)));
        assert!(matches!(flights.join("k"), Join::Leader(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_stops_waiting_at_its_limit() {
        let flights = Arc::new(Flights::default());
        let _leader = flights.join("k");
        let follower = match flights.join("k") {
            Join::Follower(slot) => slot,
            Join::Leader(_) => panic!("the second caller must follow"),
        };
        let outcome = follow(follower, Duration::from_millis(100)).await;
        assert!(outcome.is_none());
    }

    #[test]
    fn pass_through_marks_are_set_and_cleared() {
        let flights = Flights::default();
        assert!(!flights.is_pass("k"));
        flights.mark_pass("k");
        assert!(flights.is_pass("k"));
        flights.clear_pass("k");
        assert!(!flights.is_pass("k"));
    }
}

//! Counters of what the cache did, and their snapshot.
//!
//! Counting is a relaxed atomic add per event; [`Stats`] is a copy taken when asked for, so
//! reading it never slows the request path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::breaker::BreakerState;
use crate::error::StoreErrorKind;
use crate::policy::{BypassReason, NotStorable};

const STORE_ERROR_KINDS: [StoreErrorKind; 9] = [
    StoreErrorKind::Unavailable,
    StoreErrorKind::Timeout,
    StoreErrorKind::Busy,
    StoreErrorKind::OutOfMemory,
    StoreErrorKind::ReadOnly,
    StoreErrorKind::Corrupt,
    StoreErrorKind::Misconfigured,
    StoreErrorKind::BreakerOpen,
    StoreErrorKind::Other,
];

/// Room for every bypass / not-stored reason (checked by a test).
const REASONS: usize = 32;

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) stale_hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) collapsed: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
    pub(crate) foreign_entries: AtomicU64,
    pub(crate) writes_dropped: AtomicU64,
    pub(crate) uri_rejected: AtomicU64,
    pub(crate) fills_in_flight: AtomicU64,
    pub(crate) locks_acquired: AtomicU64,
    pub(crate) locks_waited: AtomicU64,
    pub(crate) lock_timeouts: AtomicU64,
    pub(crate) locks_lost: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) fenced_writes: AtomicU64,
    bypassed: [AtomicU64; REASONS],
    not_stored: [AtomicU64; REASONS],
    store_errors: [AtomicU64; STORE_ERROR_KINDS.len()],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            hits: AtomicU64::new(0),
            stale_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            collapsed: AtomicU64::new(0),
            stores: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            foreign_entries: AtomicU64::new(0),
            writes_dropped: AtomicU64::new(0),
            uri_rejected: AtomicU64::new(0),
            fills_in_flight: AtomicU64::new(0),
            locks_acquired: AtomicU64::new(0),
            locks_waited: AtomicU64::new(0),
            lock_timeouts: AtomicU64::new(0),
            locks_lost: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            fenced_writes: AtomicU64::new(0),
            bypassed: std::array::from_fn(|_| AtomicU64::new(0)),
            not_stored: std::array::from_fn(|_| AtomicU64::new(0)),
            store_errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn bypassed(&self, reason: BypassReason) {
        if let Some(i) = BypassReason::ALL.iter().position(|r| *r == reason) {
            if let Some(counter) = self.bypassed.get(i) {
                bump(counter);
            }
        }
    }

    pub(crate) fn not_stored(&self, reason: NotStorable) {
        if let Some(i) = NotStorable::ALL.iter().position(|r| *r == reason) {
            if let Some(counter) = self.not_stored.get(i) {
                bump(counter);
            }
        }
    }

    pub(crate) fn store_error(&self, kind: StoreErrorKind) {
        if let Some(i) = STORE_ERROR_KINDS.iter().position(|k| *k == kind) {
            if let Some(counter) = self.store_errors.get(i) {
                bump(counter);
            }
        }
    }

    pub(crate) fn snapshot(&self, breaker: BreakerState, breaker_opened: u64) -> Stats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut bypassed_by = BTreeMap::new();
        for (reason, counter) in BypassReason::ALL.iter().zip(self.bypassed.iter()) {
            bypassed_by.insert(reason.as_str(), load(counter));
        }
        bypassed_by.insert("uri", load(&self.uri_rejected));
        let mut not_stored_by = BTreeMap::new();
        for (reason, counter) in NotStorable::ALL.iter().zip(self.not_stored.iter()) {
            not_stored_by.insert(reason.as_str(), load(counter));
        }
        let mut store_errors_by = BTreeMap::new();
        for (kind, counter) in STORE_ERROR_KINDS.iter().zip(self.store_errors.iter()) {
            store_errors_by.insert(kind.as_str(), load(counter));
        }
        Stats {
            hits: load(&self.hits),
            stale_hits: load(&self.stale_hits),
            misses: load(&self.misses),
            collapsed: load(&self.collapsed),
            bypasses: bypassed_by.values().sum(),
            stores: load(&self.stores),
            not_stored: not_stored_by.values().sum(),
            store_errors: store_errors_by.values().sum(),
            decode_errors: load(&self.decode_errors),
            foreign_entries: load(&self.foreign_entries),
            writes_dropped: load(&self.writes_dropped),
            fills_in_flight: load(&self.fills_in_flight),
            locks_acquired: load(&self.locks_acquired),
            locks_waited: load(&self.locks_waited),
            lock_timeouts: load(&self.lock_timeouts),
            locks_lost: load(&self.locks_lost),
            refreshes: load(&self.refreshes),
            fenced_writes: load(&self.fenced_writes),
            breaker,
            breaker_opened,
            bypassed_by,
            not_stored_by,
            store_errors_by,
        }
    }
}

/// A snapshot of the cache's counters, from [`CacheLayer::stats`](crate::CacheLayer::stats).
///
/// Counts start at zero when the layer is built and are shared by every service made from it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Requests answered from a fresh stored entry.
    pub hits: u64,
    /// Requests answered from a stale entry (stale-while-revalidate / stale-if-error).
    pub stale_hits: u64,
    /// Cacheable requests that found no usable entry.
    pub misses: u64,
    /// Misses answered with another request's fill instead of their own origin call.
    pub collapsed: u64,
    /// Requests that bypassed the cache, all reasons together.
    pub bypasses: u64,
    /// Entries written to the store.
    pub stores: u64,
    /// Responses that were not stored, all reasons together.
    pub not_stored: u64,
    /// Store calls that failed, all kinds together.
    pub store_errors: u64,
    /// Stored values that failed to decode (each was deleted).
    pub decode_errors: u64,
    /// Stored entries that decoded but belong to another request (each was a miss).
    pub foreign_entries: u64,
    /// Background writes dropped because the write queue was full.
    pub writes_dropped: u64,
    /// Fills running now.
    pub fills_in_flight: u64,
    /// Fill locks this process took in the shared store.
    pub locks_acquired: u64,
    /// Misses that found another instance's fill lock and waited for its fill.
    pub locks_waited: u64,
    /// Waits for another instance's fill that ended at the lock wait without an entry.
    pub lock_timeouts: u64,
    /// Fill locks that had expired (and maybe been taken by another) when released.
    pub locks_lost: u64,
    /// Background refreshes of stale entries (stale-while-revalidate).
    pub refreshes: u64,
    /// Writes refused because a purge happened while the fill ran.
    pub fenced_writes: u64,
    /// The circuit breaker's state.
    pub breaker: BreakerState,
    /// How many times the breaker has opened.
    pub breaker_opened: u64,
    /// Bypasses by reason (`"authorization"`, `"cookie"`, `"uri"`, ...).
    pub bypassed_by: BTreeMap<&'static str, u64>,
    /// Responses not stored, by reason (`"set-cookie"`, `"private"`, ...).
    pub not_stored_by: BTreeMap<&'static str, u64>,
    /// Store errors by kind (`"timeout"`, `"unavailable"`, ...).
    pub store_errors_by: BTreeMap<&'static str, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_is_a_counter_for_every_reason() {
        assert!(BypassReason::ALL.len() <= REASONS);
        assert!(NotStorable::ALL.len() <= REASONS);
    }

    #[test]
    fn each_reason_is_counted_under_its_own_name() {
        let counters = Counters::default();
        counters.bypassed(BypassReason::Cookie);
        counters.bypassed(BypassReason::Cookie);
        counters.not_stored(NotStorable::SetCookie);
        counters.store_error(StoreErrorKind::Timeout);
        let stats = counters.snapshot(BreakerState::Closed, 0);
        assert_eq!(stats.bypassed_by[BypassReason::Cookie.as_str()], 2);
        assert_eq!(stats.bypasses, 2);
        assert_eq!(stats.not_stored_by[NotStorable::SetCookie.as_str()], 1);
        assert_eq!(stats.store_errors_by["timeout"], 1);
        assert_eq!(stats.store_errors, 1);
    }
}

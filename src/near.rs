//! The optional near cache (L1): decoded entries kept in this process in front of the store.
//!
//! A hit in the near cache costs no store round trip and no decoding. Its entries never outlive
//! the remaining TTL of the stored entry they copy, and purges, from this instance or any other
//! (through the events channel), drop them. It is bounded by bytes and off unless
//! [`CacheLayer::near_cache`](crate::CacheLayer::near_cache) turns it on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use crate::entry::StoredEntry;

#[derive(Clone)]
struct Held {
    entry: Arc<StoredEntry>,
    ttl: Duration,
}

struct HeldTtl;

impl Expiry<String, Held> for HeldTtl {
    fn expire_after_create(&self, _key: &String, value: &Held, _at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Held,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub(crate) struct NearCache {
    cache: Cache<String, Held>,
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

fn weight(key: &str, entry: &StoredEntry) -> u32 {
    let size = match entry {
        StoredEntry::Response(response) => response
            .body
            .len()
            .saturating_add(response.headers.len().saturating_mul(64))
            .saturating_add(256),
        StoredEntry::Vary(marker) => marker.fields.len().saturating_mul(32).saturating_add(64),
    };
    u32::try_from(size.saturating_add(key.len())).unwrap_or(u32::MAX)
}

impl NearCache {
    pub(crate) fn new(bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(bytes)
            .weigher(|key: &String, held: &Held| weight(key, &held.entry))
            .expire_after(HeldTtl)
            .support_invalidation_closures()
            .build();
        NearCache { cache }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<StoredEntry>> {
        self.cache.get(key).map(|held| held.entry)
    }

    /// Keep `entry` for at most `ttl` (the stored entry's remaining lifetime).
    pub(crate) fn insert(&self, key: &str, entry: Arc<StoredEntry>, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        self.cache.insert(key.to_owned(), Held { entry, ttl });
    }

    fn drop_if(&self, predicate: impl Fn(&String, &Held) -> bool + Send + Sync + 'static) {
        if self.cache.invalidate_entries_if(predicate).is_err() {
            // Closures are enabled at construction; should that ever fail, drop everything.
            self.cache.invalidate_all();
        }
        self.cache.run_pending_tasks();
    }

    pub(crate) fn drop_prefix(&self, prefix: &str) {
        let prefix = prefix.to_owned();
        self.drop_if(move |key, _| key.starts_with(&prefix));
    }

    pub(crate) fn drop_target(&self, target: &[u8; 16]) {
        let target = *target;
        self.drop_if(move |_, held| {
            matches!(&*held.entry, StoredEntry::Response(r) if r.target_digest == target)
        });
    }

    pub(crate) fn drop_tag(&self, tag: &str) {
        let tag = tag.to_owned();
        self.drop_if(move |_, held| {
            matches!(&*held.entry, StoredEntry::Response(r) if r.tags.contains(&tag))
        });
    }

    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
    }
}

//! The in-process store: a moka cache bounded by bytes, with a TTL per value.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::sync::Cache;
use moka::Expiry;

use super::{Store, StoreFuture};

/// Default byte budget of a [`MemoryStore`]: 64 MiB.
const DEFAULT_CAPACITY: u64 = 64 * 1024 * 1024;

/// An in-process store bounded by the bytes it holds (keys and values), with a TTL per value.
///
/// It is the embedded default: the demo, tests and single-instance services use it when no Redis
/// URL is configured. Entries live in this process only; several instances each keep their own.
///
/// # Example
///
/// ```
/// use tower_response_cache::{CacheLayer, MemoryStore};
///
/// // At most 16 MiB of keys and entries.
/// let layer = CacheLayer::new(MemoryStore::with_capacity(16 * 1024 * 1024));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<String, Value>,
    capacity: u64,
    /// Path generations (for fenced writes), with their expiry. The lock is only ever held for
    /// a map operation and a cache insert, never across an `.await`.
    generations: Arc<RwLock<HashMap<String, (u64, Instant)>>>,
    /// Tag sets: members and the set's expiry.
    tags: Arc<Mutex<HashMap<String, TagSet>>>,
}

/// A tag set's members and its expiry.
type TagSet = (HashSet<String>, Instant);

/// Above this many generations, expired ones are swept on the next bump.
const GENERATION_SWEEP_AT: usize = 10_000;

#[derive(Clone)]
struct Value {
    bytes: Bytes,
    ttl: Duration,
}

/// Each value expires after its own TTL, counted from its latest write.
struct PerValueTtl;

impl Expiry<String, Value> for PerValueTtl {
    fn expire_after_create(&self, _key: &String, value: &Value, _at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Value,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

impl MemoryStore {
    /// A store holding at most 64 MiB.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A store holding at most `bytes` bytes of keys and values.
    pub fn with_capacity(bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(bytes)
            .weigher(|key: &String, value: &Value| {
                let size = key.len().saturating_add(value.bytes.len());
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .expire_after(PerValueTtl)
            .build();
        MemoryStore {
            cache,
            capacity: bytes,
            generations: Arc::default(),
            tags: Arc::default(),
        }
    }

    /// The generations for reading: hits and fenced writes share the lock, only a bump takes
    /// it alone (so a fenced write's check and insert still see no bump in between).
    fn generations(&self) -> RwLockReadGuard<'_, HashMap<String, (u64, Instant)>> {
        match self.generations.read() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn generations_mut(&self) -> RwLockWriteGuard<'_, HashMap<String, (u64, Instant)>> {
        match self.generations.write() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn generation_now(map: &HashMap<String, (u64, Instant)>, key: &str) -> u64 {
        match map.get(key) {
            Some((generation, until)) if *until > Instant::now() => *generation,
            _ => 0,
        }
    }

    /// The byte budget.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes currently held (after pending maintenance has run).
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Number of values currently held (after pending maintenance has run).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key currently held (for purges and tests; walks the whole store).
    pub fn keys(&self) -> Vec<String> {
        self.cache.iter().map(|(key, _)| (*key).clone()).collect()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.capacity)
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        let value = self.cache.get(key).map(|value| value.bytes);
        Box::pin(async move { Ok(value) })
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        let ttl = ttl.max(Duration::from_secs(1));
        self.cache
            .insert(key.to_owned(), Value { bytes: value, ttl });
        Box::pin(async { Ok(()) })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn get_with_generation<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
    ) -> StoreFuture<'a, (Option<Bytes>, u64)> {
        let generation = Self::generation_now(&self.generations(), generation_key);
        let value = self.cache.get(key).map(|value| value.bytes);
        Box::pin(async move { Ok((value, generation)) })
    }

    fn put_fenced<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        generation_key: &'a str,
        generation: u64,
    ) -> StoreFuture<'a, bool> {
        let generations = self.generations();
        let written = Self::generation_now(&generations, generation_key) == generation;
        if written {
            let ttl = ttl.max(Duration::from_secs(1));
            self.cache
                .insert(key.to_owned(), Value { bytes: value, ttl });
        }
        drop(generations);
        Box::pin(async move { Ok(written) })
    }

    fn scan_prefix<'a>(
        &'a self,
        prefix: &'a str,
        _cursor: u64,
        _count: usize,
    ) -> StoreFuture<'a, (u64, Vec<String>)> {
        // The whole store is in memory: one page holds every match.
        let keys = self
            .cache
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| (*key).clone())
            .collect();
        Box::pin(async move { Ok((0, keys)) })
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, u64> {
        let mut removed = 0;
        for key in keys {
            if self.cache.remove(key.as_str()).is_some() {
                removed += 1;
            }
        }
        Box::pin(async move { Ok(removed) })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        let values = keys
            .iter()
            .map(|key| self.cache.get(key.as_str()).map(|value| value.bytes))
            .collect();
        Box::pin(async move { Ok(values) })
    }

    fn tag_add<'a>(
        &'a self,
        tag_key: &'a str,
        member: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        let mut tags = match self.tags.lock() {
            Ok(tags) => tags,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        if tags.len() >= GENERATION_SWEEP_AT {
            tags.retain(|_, (_, until)| *until > now);
        }
        let until = now + ttl;
        let set = tags
            .entry(tag_key.to_owned())
            .or_insert_with(|| (HashSet::new(), until));
        if set.1 <= now {
            set.0.clear();
        }
        set.0.insert(member.to_owned());
        set.1 = set.1.max(until);
        drop(tags);
        Box::pin(async { Ok(()) })
    }

    fn tag_members<'a>(
        &'a self,
        tag_key: &'a str,
        _cursor: u64,
        _count: usize,
    ) -> StoreFuture<'a, (u64, Vec<String>)> {
        let mut tags = match self.tags.lock() {
            Ok(tags) => tags,
            Err(poisoned) => poisoned.into_inner(),
        };
        let members = match tags.get(tag_key) {
            Some((members, until)) if *until > Instant::now() => members.iter().cloned().collect(),
            Some(_) => {
                tags.remove(tag_key);
                Vec::new()
            }
            None => Vec::new(),
        };
        drop(tags);
        Box::pin(async move { Ok((0, members)) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        self.cache.invalidate(key);
        if let Ok(mut tags) = self.tags.lock() {
            tags.remove(key);
        }
        Box::pin(async { Ok(()) })
    }

    fn bump_generation<'a>(
        &'a self,
        generation_key: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, u64> {
        let mut generations = self.generations_mut();
        let now = Instant::now();
        if generations.len() >= GENERATION_SWEEP_AT {
            generations.retain(|_, (_, until)| *until > now);
        }
        let next = Self::generation_now(&generations, generation_key).saturating_add(1);
        generations.insert(generation_key.to_owned(), (next, now + ttl));
        drop(generations);
        Box::pin(async move { Ok(next) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_round_trip_and_delete() {
        let store = MemoryStore::new();
        store
            .put("k", Bytes::from_static(b"v"), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        store.delete("k").await.unwrap();
        assert_eq!(store.get("k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_store_stays_within_its_byte_budget() {
        let store = MemoryStore::with_capacity(10_000);
        for i in 0..100 {
            let key = format!("key-{i}");
            store
                .put(&key, Bytes::from(vec![0u8; 1000]), Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert!(store.weighted_size() <= 10_000, "{}", store.weighted_size());
        assert!(store.len() < 100);
    }

    #[tokio::test]
    async fn a_fenced_write_after_a_generation_bump_is_refused() {
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(60);
        let (_, generation) = store.get_with_generation("e", "g").await.unwrap();
        assert_eq!(generation, 0);
        assert_eq!(store.bump_generation("g", ttl).await.unwrap(), 1);
        let written = store
            .put_fenced("e", Bytes::from_static(b"old"), ttl, "g", generation)
            .await
            .unwrap();
        assert!(!written);
        assert_eq!(store.get("e").await.unwrap(), None);
        let written = store
            .put_fenced("e", Bytes::from_static(b"new"), ttl, "g", 1)
            .await
            .unwrap();
        assert!(written);
        let (value, generation) = store.get_with_generation("e", "g").await.unwrap();
        assert_eq!(value.as_deref(), Some(&b"new"[..]));
        assert_eq!(generation, 1);
    }

    #[tokio::test]
    async fn a_rewrite_takes_the_new_ttl_and_values_expire() {
        let store = MemoryStore::new();
        store
            .put("k", Bytes::from_static(b"a"), Duration::from_secs(3600))
            .await
            .unwrap();
        store
            .put("k", Bytes::from_static(b"b"), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"b"[..]));
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(store.get("k").await.unwrap(), None);
    }
}

//! Stores: where encoded entries live.
//!
//! A [`Store`] keeps opaque byte strings under string keys, each with a time to live. It knows
//! nothing about HTTP: the layer encodes entries itself (see [`entry`](crate::entry)) and treats
//! what comes back as untrusted bytes. Two stores ship with the crate:
//!
//! - [`RedisStore`] (feature `redis`, on by default): the production store, shared by every
//!   instance of a service;
//! - [`MemoryStore`] (feature `memory`, on by default): an in-process store bounded by bytes, for
//!   development, tests and single-instance services;
//! - `RedisClusterStore` (feature `cluster`): on a Redis Cluster, with every key of a path in one
//!   slot and bulk operations run on every primary;
//! - `RedisSentinelStore` (feature `sentinel`): on the primary of a Sentinel-managed set,
//!   following it through failovers.
//!
//! Every call of the request path is wrapped by the layer in its own deadline and a circuit
//! breaker, so a store does not need to enforce deadlines itself; it must only report failures
//! with the right [`StoreErrorKind`] (transient failures open the breaker, corrupt values are
//! deleted).
//!
//! # Implementing a store
//!
//! Implement [`Store::get`], [`Store::put`], [`Store::delete`] and [`Store::ping`]; the
//! coordination methods ([`Store::try_lock`], [`Store::put_fenced`], [`Store::publish`], ...)
//! have defaults that make the store work on its own (locks always granted, no generations, no
//! events), which is right for a store that only one process uses.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

pub use crate::error::{StoreError, StoreErrorKind};

#[cfg(feature = "cluster")]
mod cluster;
#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sentinel")]
mod sentinel;

#[cfg(feature = "cluster")]
pub use cluster::RedisClusterStore;
#[cfg(feature = "memory")]
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;
#[cfg(feature = "sentinel")]
pub use sentinel::RedisSentinelStore;

/// The future a [`Store`] method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A key-value store with per-value expiry, shared by all services built from one layer.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs ("redis", "memory").
    fn name(&self) -> &'static str;

    /// The value under `key`, or `None` when there is none (or it expired).
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>>;

    /// Store `value` under `key` for `ttl`, in one step: a value is never stored without its
    /// expiry. `ttl` is at least one second.
    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()>;

    /// Remove `key` (no error when it does not exist).
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;

    /// Check that the store answers (for readiness probes).
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// Whether other processes share this store, so that fill locks and events between
    /// instances mean something. The default is `false`.
    fn is_shared(&self) -> bool {
        false
    }

    /// Read the value under `key` and the generation under `generation_key` together (one
    /// round trip where the store allows it). An absent generation is 0.
    fn get_with_generation<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
    ) -> StoreFuture<'a, (Option<Bytes>, u64)> {
        let _ = generation_key;
        Box::pin(async move { Ok((self.get(key).await?, 0)) })
    }

    /// Store `value` under `key` for `ttl` only if `generation_key` still holds `generation`
    /// (absent counts as 0), atomically. Returns `false` when the generation moved on: a purge
    /// happened while the value was being made, and the value must not be written.
    fn put_fenced<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        generation_key: &'a str,
        generation: u64,
    ) -> StoreFuture<'a, bool> {
        let _ = (generation_key, generation);
        Box::pin(async move {
            self.put(key, value, ttl).await?;
            Ok(true)
        })
    }

    /// Increment the generation under `generation_key` (kept for `ttl`), fencing off every
    /// write that read the old one. Returns the new generation.
    fn bump_generation<'a>(
        &'a self,
        generation_key: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, u64> {
        let _ = (generation_key, ttl);
        Box::pin(async { Ok(0) })
    }

    /// Take the fill lock `key` with `token` unless someone holds it (`SET NX PX`). The default
    /// always grants it: without other processes there is nobody to wait for.
    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let _ = (key, token, ttl);
        Box::pin(async { Ok(true) })
    }

    /// Release the fill lock `key` if it still holds `token` (compare and delete). Returns
    /// whether it did.
    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, bool> {
        let _ = (key, token);
        Box::pin(async { Ok(true) })
    }

    /// Publish `message` on `channel` to every instance sharing the store.
    fn publish<'a>(&'a self, channel: &'a str, message: Bytes) -> StoreFuture<'a, ()> {
        let _ = (channel, message);
        Box::pin(async { Ok(()) })
    }

    /// One page of the keys that start with `prefix`: `(next cursor, keys)`, starting from
    /// cursor 0 and finished when the next cursor is 0. A page holds about `count` keys (never
    /// all keys at once: bulk purges walk the pages). The default finds nothing.
    fn scan_prefix<'a>(
        &'a self,
        prefix: &'a str,
        cursor: u64,
        count: usize,
    ) -> StoreFuture<'a, (u64, Vec<String>)> {
        let _ = (prefix, cursor, count);
        Box::pin(async { Ok((0, Vec::new())) })
    }

    /// Remove `keys`; returns how many existed.
    fn delete_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            for key in keys {
                self.delete(key).await?;
            }
            Ok(keys.len() as u64)
        })
    }

    /// Read several values at once, in the order of `keys`.
    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        Box::pin(async move {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                values.push(self.get(key).await?);
            }
            Ok(values)
        })
    }

    /// Add `member` (an entry key) to the tag set `tag_key`, whose TTL becomes at least `ttl`
    /// (a tag set lives as long as its longest-lived member).
    fn tag_add<'a>(
        &'a self,
        tag_key: &'a str,
        member: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        let _ = (tag_key, member, ttl);
        Box::pin(async { Ok(()) })
    }

    /// One page of the members of the tag set `tag_key`, like [`Store::scan_prefix`].
    fn tag_members<'a>(
        &'a self,
        tag_key: &'a str,
        cursor: u64,
        count: usize,
    ) -> StoreFuture<'a, (u64, Vec<String>)> {
        let _ = (tag_key, cursor, count);
        Box::pin(async { Ok((0, Vec::new())) })
    }

    /// Subscribe to `channel`: messages published by any instance arrive on the receiver, for
    /// as long as it is kept (the store reconnects by itself). `None` when the store has no
    /// events. Called once per layer, inside a Tokio runtime.
    fn subscribe(&self, channel: &str) -> Option<mpsc::Receiver<Bytes>> {
        let _ = channel;
        None
    }
}

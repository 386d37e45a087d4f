//! Stores: where encoded entries live.
//!
//! A [`Store`] keeps opaque byte strings under string keys, each with a time to live. It knows
//! nothing about HTTP: the layer encodes entries itself (see [`entry`](crate::entry)) and treats
//! what comes back as untrusted bytes. Two stores ship with the crate:
//!
//! - [`RedisStore`] (feature `redis`, on by default): the production store, shared by every
//!   instance of a service;
//! - [`MemoryStore`] (feature `memory`, on by default): an in-process store bounded by bytes, for
//!   development, tests and single-instance services.
//!
//! Every call of the request path is wrapped by the layer in its own deadline and a circuit
//! breaker, so a store does not need to enforce deadlines itself; it must only report failures
//! with the right [`StoreErrorKind`] (transient failures open the breaker, corrupt values are
//! deleted).
//!
//! # Implementing a store
//!
//! Implement [`Store::get`], [`Store::put`], [`Store::delete`] and [`Store::ping`]; the
//! coordination methods have defaults that make the store work on its own (locks always granted,
//! no generations, no events), which is right for a store that only one process uses.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

pub use crate::error::{StoreError, StoreErrorKind};

#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "memory")]
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;

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
}

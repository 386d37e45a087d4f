//! A shared HTTP response cache for Tower stacks (Axum, Tonic, plain hyper), backed by Redis or
//! an in-process memory store.
//!
//! [`CacheLayer`] wraps any Tower service that answers HTTP requests. For each cacheable request
//! it derives a key from the method class, the normalised host, path and sorted query, and the
//! request headers the response varies on; looks the key up in a [`Store`]; and on a hit answers
//! without calling the inner service. On a miss it calls the inner service once per key however
//! many requests wait, streams the response to its client while keeping a copy, and stores the
//! copy with a TTL in the background.
//!
//! The cache never makes a request fail: a store that errors, times out or is down means the
//! request is served by the inner service, the failure is counted and logged, and a circuit
//! breaker stops asking the store for a while.
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower_response_cache::{CacheLayer, MemoryStore, Route};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cache = CacheLayer::new(MemoryStore::new())
//!     .default_ttl(Duration::from_secs(60))
//!     .route(Route::template("/users/{id}").ttl(Duration::from_secs(300)))
//!     .route(Route::prefix("/admin").bypass());
//!
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "a user" }))
//!     .layer(cache.clone());
//! # let _ = app;
//! # }
//! ```
//!
//! With Redis, shared by every instance of the service:
//!
//! ```no_run
//! use tower_response_cache::{CacheLayer, RedisStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_response_cache::Error> {
//! let cache = CacheLayer::new(RedisStore::from_url("redis://127.0.0.1:6379/")?);
//! // or, twelve-factor style: CACHE_URL / REDIS_URL, CACHE_PREFIX, CACHE_TTL_DEFAULT, ...
//! let cache = CacheLayer::from_env()?;
//! # let _ = cache;
//! # Ok(())
//! # }
//! ```
//!
//! Around a plain Tower service:
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_response_cache::{CacheLayer, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(CacheLayer::new(MemoryStore::new()))
//!     .service(service_fn(|_req: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
//!     }));
//! let request = Request::get("http://example.com/greeting").body(()).unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! // 300 s by default, spread by the ± 10 % jitter.
//! let status = response.headers()["cache-status"].to_str().unwrap();
//! assert!(status.starts_with("trc; fwd=miss; stored; ttl="));
//! # }
//! ```
//!
//! # Which TTL applies
//!
//! From highest to lowest precedence: a [`NoStore`] response extension or the response's
//! `no-store` / `private` / `Set-Cookie` / `Vary: *` refuse storage; then a [`CacheTtl`] response
//! extension set by the handler; then the response's `s-maxage`, `max-age`, `Expires` − `Date`;
//! then the matching [`Route`]'s TTL; then the default TTL. In [`Mode::Shared`] the last two do
//! not apply: only explicit freshness from the response is stored. Every TTL is clamped into the
//! configured range (default 1 s ..= 24 h) and jittered (default ± 10 %).
//!
//! # What bypasses the cache
//!
//! Methods other than GET and HEAD; requests with `Authorization` or `Cookie` (unless the route
//! allows authenticated use); requests with a body; `Cache-Control: no-store`; headers from the
//! deny-list of unkeyed headers (`X-Forwarded-Host`, `X-Original-URL`, ...); Range and Upgrade
//! requests; and request targets that cannot be keyed safely (dot segments, encoded `/` or `\`,
//! NUL, invalid escapes). The response's `Cache-Status` header says which, and so does the
//! [`CacheStatus`] response extension.
//!
//! # Keys
//!
//! Keys are HMAC-SHA-256 digests under a secret ([`CacheLayer::secret`]), laid out as
//! `<namespace>:<version>:{<path digest>}:e:<request digest>`; nothing from the request appears
//! in them in readable form. Stored entries are authenticated with the same secret and checked
//! on read: an entry that fails to decode, or belongs to another request, is a miss and is
//! deleted.
//!
//! # Feature flags
//!
//! - `redis` (default): [`RedisStore`];
//! - `memory` (default): [`MemoryStore`];
//! - `axum`: the [`admin`] purge router for Axum;
//! - `tonic`: caching of opted-in unary gRPC methods of Tonic servers (see [`grpc`]);
//! - `cluster`: `RedisClusterStore`, on a Redis Cluster;
//! - `sentinel`: `RedisSentinelStore`, following the primary of a Sentinel-managed set;
//! - `tls`: `rediss://` URLs (rustls);
//! - `compression`: LZ4 for large stored bodies (`CacheLayer::compress_above`).
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::await_holding_lock
)]

#[cfg(feature = "axum")]
pub mod admin;
mod body;
mod breaker;
mod coalesce;
mod conditional;
pub mod entry;
mod error;
mod events;
pub mod grpc;
mod headers;
pub mod key;
mod layer;
mod near;
pub mod policy;
pub mod purge;
mod service;
mod stats;
pub mod store;

pub use body::CacheBody;
pub use breaker::BreakerState;
pub use error::{Error, StoreError, StoreErrorKind};
pub use headers::{CacheOutcome, CacheStatus};
pub use layer::{CacheLayer, DEFAULT_NAMESPACE, DEFAULT_VERSION};
pub use policy::{BypassReason, CacheTtl, Mode, NoStore, NotStorable, Policy, QueryShape, Route};
pub use purge::{CacheTags, PurgeReport, PurgeTarget, Purger};
pub use service::{CacheService, ResponseFuture};
pub use stats::Stats;
#[cfg(feature = "memory")]
pub use store::MemoryStore;
#[cfg(feature = "cluster")]
pub use store::RedisClusterStore;
#[cfg(feature = "sentinel")]
pub use store::RedisSentinelStore;
#[cfg(feature = "redis")]
pub use store::RedisStore;
pub use store::Store;

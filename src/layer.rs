//! [`CacheLayer`]: every setting, with its default, in one place.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio::sync::Semaphore;
use tower_layer::Layer;

use crate::breaker::Guard;
use crate::coalesce::Flights;
use crate::entry::EntryCodec;
use crate::error::Error;
use crate::events::{Events, PurgeHandler};
use crate::grpc::GrpcMethod;
use crate::headers::{is_valid_cache_name, CacheStatus};
use crate::key::KeyDeriver;
use crate::near::NearCache;
use crate::policy::{BypassReason, Mode, Policy, Route};
use crate::purge::{apply_event, Fences, Purger};
use crate::service::CacheService;
use crate::stats::{Counters, Stats};
use crate::store::Store;

/// Default namespace of every key (`CACHE_PREFIX`).
pub const DEFAULT_NAMESPACE: &str = "trc";
/// Default key version (`CACHE_VERSION`): change it to start from an empty cache.
pub const DEFAULT_VERSION: &str = "v1";
/// The secret used when none is configured. Set your own with [`CacheLayer::secret`] (or
/// `CACHE_SECRET`) so that keys cannot be computed by anyone who can read Redis.
const DEFAULT_SECRET: &[u8] = b"tower-response-cache default key secret";

/// Names the principal (user, tenant, API key) of a request for per-principal routes.
pub(crate) type PrincipalHook = Arc<dyn Fn(&http::HeaderMap) -> Option<String> + Send + Sync>;

/// Settings frozen when the layer wraps a service. Cloned only while building.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) policy: Policy,
    pub(crate) deriver: KeyDeriver,
    pub(crate) codec: EntryCodec,
    pub(crate) secret: Arc<[u8]>,
    pub(crate) namespace: String,
    pub(crate) version: String,
    pub(crate) max_body_size: usize,
    pub(crate) read_deadline: Duration,
    pub(crate) write_deadline: Duration,
    pub(crate) lock_wait: Duration,
    pub(crate) lock_ttl: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) cache_name: String,
    /// `<namespace>:events`.
    pub(crate) events_channel: String,
    pub(crate) tag_header: Option<HeaderName>,
    pub(crate) strip_tag_header: bool,
    pub(crate) invalidate_on_write: bool,
    pub(crate) grpc: Vec<GrpcMethod>,
    pub(crate) grpc_message_limit: usize,
    pub(crate) error_ttl: Duration,
    pub(crate) principal: Option<PrincipalHook>,
    /// `Cache-Status` of a bypass, one per [`BypassReason::ALL`] entry, built once.
    pub(crate) bypass_status: Vec<HeaderValue>,
}

impl Config {
    fn rebuild(&mut self) {
        self.deriver = KeyDeriver::new(&self.secret, &self.namespace, &self.version);
        self.codec = match self.codec.compression_threshold() {
            #[cfg(feature = "compression")]
            Some(threshold) => EntryCodec::new(&self.secret).compress_above(threshold),
            _ => EntryCodec::new(&self.secret),
        };
        self.events_channel = format!("{}:events", self.namespace);
        self.bypass_status = BypassReason::ALL
            .iter()
            .map(|reason| CacheStatus::bypass(reason.as_str()).header_value(&self.cache_name))
            .collect();
    }

    pub(crate) fn bypass_status(&self, reason: BypassReason) -> Option<&HeaderValue> {
        let i = BypassReason::ALL.iter().position(|r| *r == reason)?;
        self.bypass_status.get(i)
    }

    /// Largest stored value the decoder accepts: the body limit plus room for the head.
    pub(crate) fn max_entry_len(&self) -> usize {
        self.max_body_size.saturating_add(256 * 1024)
    }
}

/// Runtime state shared by every service made from one layer.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) counters: Counters,
    pub(crate) guard: Guard,
    pub(crate) flights: Arc<Flights>,
    pub(crate) writes: Arc<Semaphore>,
    pub(crate) events: Arc<Events>,
    pub(crate) fences: Fences,
    pub(crate) near: Option<NearCache>,
    /// This layer's name on the events channel (so it can ignore its own purges).
    pub(crate) instance: String,
    /// The distinct keys stored per capped route (by the route's position).
    route_keys: Mutex<HashMap<usize, HashSet<[u8; 16]>>>,
}

impl State {
    /// Whether a capped route may store the key `digest` (it already has it, or has room).
    pub(crate) fn admit_key(&self, route: usize, cap: usize, digest: &[u8; 16]) -> bool {
        let mut routes = match self.route_keys.lock() {
            Ok(routes) => routes,
            Err(poisoned) => poisoned.into_inner(),
        };
        let keys = routes.entry(route).or_default();
        if keys.contains(digest) {
            return true;
        }
        if keys.len() >= cap {
            return false;
        }
        keys.insert(*digest);
        true
    }
}

/// The settings [`State`] is built from.
#[derive(Debug, Clone, Copy)]
struct StateSettings {
    breaker: (u32, Duration),
    write_queue: usize,
    near_cache: Option<u64>,
}

impl State {
    fn new(settings: StateSettings) -> Self {
        let (threshold, cool_down) = settings.breaker;
        let write_queue = settings.write_queue;
        State {
            fences: Fences::default(),
            near: settings.near_cache.map(NearCache::new),
            instance: format!("{:016x}", fastrand::u64(..)),
            route_keys: Mutex::default(),
            counters: Counters::default(),
            guard: Guard::new(threshold, cool_down),
            flights: Arc::new(Flights::default()),
            writes: Arc::new(Semaphore::new(write_queue.max(1))),
            events: Arc::new(Events::default()),
        }
    }
}

/// A Tower layer that caches responses in a shared [`Store`].
///
/// Build it with [`CacheLayer::new`] and the builder methods below, then add it to any Tower
/// stack. Every service the layer makes (Axum applies a layer once per route) shares the same
/// store, statistics, circuit breaker and in-flight fills.
///
/// # Defaults
///
/// | setting | default |
/// |---|---|
/// | mode | [`Mode::Application`] |
/// | default TTL | 300 s |
/// | TTL range | 1 s ..= 24 h |
/// | TTL jitter | ± 10 % |
/// | largest stored body | 1 MiB |
/// | longest TTL of a stored error (404, 410, ...) | 60 s |
/// | deadline on a store read | 20 ms |
/// | deadline on a background write | 100 ms |
/// | longest wait behind another request's fill | 3 s |
/// | fill lock expiry | 10 s |
/// | stale-while-revalidate / stale-if-error windows | 0 (only what the origin allows) |
/// | circuit breaker | open after 5 consecutive failures, probe after 1 s |
/// | background write queue | 1024 writes |
/// | key namespace / version | `trc` / `v1` |
/// | `Cache-Status` cache name | `trc` |
/// | tag header | `Surrogate-Key`, stripped from responses |
/// | successful writes purge their path | yes |
/// | near cache | off |
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use tower_response_cache::{CacheLayer, MemoryStore, Route};
///
/// let app: Router = Router::new()
///     .route("/users/{id}", get(|| async { "a user" }))
///     .route("/health", get(|| async { "ok" }))
///     .layer(
///         CacheLayer::new(MemoryStore::new())
///             .default_ttl(Duration::from_secs(30))
///             .route(Route::template("/users/{id}").ttl(Duration::from_secs(120)))
///             .route(Route::exact("/health").bypass()),
///     );
/// # let _ = app;
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    pub(crate) config: Arc<Config>,
    pub(crate) state: Arc<State>,
    settings: StateSettings,
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("store", &self.config.store)
            .field("policy", &self.config.policy)
            .field("namespace", &self.config.namespace)
            .field("version", &self.config.version)
            .field("secret", &"set")
            .field("max_body_size", &self.config.max_body_size)
            .field("read_deadline", &self.config.read_deadline)
            .field("write_deadline", &self.config.write_deadline)
            .field("lock_wait", &self.config.lock_wait)
            .field("cache_name", &self.config.cache_name)
            .finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// A layer caching in `store`, with the defaults listed above.
    pub fn new<S: Store>(store: S) -> Self {
        Self::with_store(Arc::new(store))
    }

    /// A layer on a store that is already shared.
    pub fn with_store(store: Arc<dyn Store>) -> Self {
        let secret: Arc<[u8]> = Arc::from(DEFAULT_SECRET);
        let mut config = Config {
            store,
            policy: Policy::default(),
            deriver: KeyDeriver::new(&secret, DEFAULT_NAMESPACE, DEFAULT_VERSION),
            codec: EntryCodec::new(&secret),
            secret,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            version: DEFAULT_VERSION.to_owned(),
            max_body_size: 1024 * 1024,
            read_deadline: Duration::from_millis(20),
            write_deadline: Duration::from_millis(100),
            lock_wait: Duration::from_secs(3),
            lock_ttl: Duration::from_secs(10),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            cache_name: "trc".to_owned(),
            events_channel: String::new(),
            tag_header: Some(HeaderName::from_static("surrogate-key")),
            strip_tag_header: true,
            invalidate_on_write: true,
            grpc: Vec::new(),
            grpc_message_limit: 64 * 1024,
            error_ttl: Duration::from_secs(60),
            principal: None,
            bypass_status: Vec::new(),
        };
        config.rebuild();
        let settings = StateSettings {
            breaker: (5, Duration::from_secs(1)),
            write_queue: 1024,
            near_cache: None,
        };
        CacheLayer {
            config: Arc::new(config),
            state: Arc::new(State::new(settings)),
            settings,
        }
    }

    /// A layer configured from the environment, for twelve-factor apps.
    ///
    /// - `CACHE_URL` or `REDIS_URL` (the first that is set): a `redis://` (or `rediss://`) URL
    ///   selects the [`RedisStore`](crate::RedisStore); a comma-separated list of node URLs
    ///   (`redis://a:7000,redis://b:7001,...`) selects the `RedisClusterStore` (with the
    ///   `cluster` feature); `memory` or neither set selects the
    ///   [`MemoryStore`](crate::MemoryStore);
    /// - `CACHE_PREFIX`: the key namespace; `CACHE_VERSION`: the key version;
    /// - `CACHE_TTL_DEFAULT`: the default TTL, in seconds (`300`) or with a unit (`90s`, `5m`,
    ///   `2h`, `500ms`);
    /// - `CACHE_SECRET`: the secret keys and entries are authenticated with.
    ///
    /// A malformed value is an [`Error::InvalidEnv`] naming the variable. Must be called inside
    /// a Tokio runtime when it selects Redis.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`CacheLayer::from_env`] with a custom source of variables (for tests and for config
    /// systems that are not the process environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let url = lookup("CACHE_URL")
            .filter(|v| !v.trim().is_empty())
            .map(|v| ("CACHE_URL", v))
            .or_else(|| {
                lookup("REDIS_URL")
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| ("REDIS_URL", v))
            });
        let mut layer = match url {
            None => Self::default_memory()?,
            Some((_, url)) if url.trim() == "memory" => Self::default_memory()?,
            Some((name, url)) => Self::redis_from_env(name, url.trim())?,
        };
        if let Some(prefix) = lookup("CACHE_PREFIX") {
            check_key_part("CACHE_PREFIX", &prefix)?;
            layer = layer.namespace(&prefix);
        }
        if let Some(version) = lookup("CACHE_VERSION") {
            check_key_part("CACHE_VERSION", &version)?;
            layer = layer.version(&version);
        }
        if let Some(ttl) = lookup("CACHE_TTL_DEFAULT") {
            let ttl = parse_duration(&ttl).ok_or_else(|| Error::InvalidEnv {
                name: "CACHE_TTL_DEFAULT",
                reason: "expected seconds or a number with a unit (ms, s, m, h, d)".to_owned(),
            })?;
            layer = layer.default_ttl(ttl);
        }
        if let Some(secret) = lookup("CACHE_SECRET") {
            if secret.len() < 16 {
                return Err(Error::InvalidEnv {
                    name: "CACHE_SECRET",
                    reason: "must be at least 16 bytes long".to_owned(),
                });
            }
            layer = layer.secret(secret.as_bytes());
        }
        Ok(layer)
    }

    #[cfg(feature = "memory")]
    fn default_memory() -> Result<Self, Error> {
        Ok(Self::new(crate::MemoryStore::new()))
    }

    #[cfg(not(feature = "memory"))]
    fn default_memory() -> Result<Self, Error> {
        Err(Error::InvalidEnv {
            name: "CACHE_URL",
            reason: "no store URL is set and the `memory` feature is off".to_owned(),
        })
    }

    #[cfg(feature = "redis")]
    fn redis_from_env(name: &'static str, url: &str) -> Result<Self, Error> {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(Error::InvalidEnv {
                name,
                reason: "expected a redis:// URL or `memory`".to_owned(),
            });
        }
        if is_node_list(url) {
            return Self::cluster_from_env(name, url);
        }
        let store = crate::RedisStore::from_url(url).map_err(|err| Error::InvalidEnv {
            name,
            reason: err.to_string(),
        })?;
        Ok(Self::new(store))
    }

    /// A comma-separated list of node URLs: the nodes of a Redis Cluster.
    #[cfg(all(feature = "redis", feature = "cluster"))]
    fn cluster_from_env(name: &'static str, list: &str) -> Result<Self, Error> {
        let store =
            crate::RedisClusterStore::from_url_list(list).map_err(|err| Error::InvalidEnv {
                name,
                reason: err.to_string(),
            })?;
        Ok(Self::new(store))
    }

    #[cfg(all(feature = "redis", not(feature = "cluster")))]
    fn cluster_from_env(name: &'static str, _list: &str) -> Result<Self, Error> {
        Err(Error::InvalidEnv {
            name,
            reason: "a list of node URLs (a Redis Cluster) needs the `cluster` feature".to_owned(),
        })
    }

    #[cfg(not(feature = "redis"))]
    fn redis_from_env(name: &'static str, _url: &str) -> Result<Self, Error> {
        Err(Error::InvalidEnv {
            name,
            reason: "a Redis URL is set but the `redis` feature is off".to_owned(),
        })
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    fn with_policy(mut self, change: impl FnOnce(Policy) -> Policy) -> Self {
        let config = self.config_mut();
        let policy = std::mem::take(&mut config.policy);
        config.policy = change(policy);
        self
    }

    /// Replace the whole caching policy (routes, TTLs, mode, statuses, deny-list).
    pub fn policy(self, policy: Policy) -> Self {
        self.with_policy(|_| policy)
    }

    /// How freshness is decided: inside an application (default) or as a shared proxy cache.
    pub fn mode(self, mode: Mode) -> Self {
        self.with_policy(|p| p.mode(mode))
    }

    /// TTL of responses that match no route and say nothing themselves (default 300 s).
    pub fn default_ttl(self, ttl: Duration) -> Self {
        self.with_policy(|p| p.default_ttl(ttl))
    }

    /// Every TTL is clamped into `min ..= max` (default 1 s ..= 24 h).
    pub fn ttl_range(self, min: Duration, max: Duration) -> Self {
        self.with_policy(|p| p.ttl_range(min, max))
    }

    /// Spread TTLs by ± `fraction` (default 0.1) so that entries filled together do not expire
    /// together. `0.0` turns jitter off.
    pub fn jitter(self, fraction: f64) -> Self {
        self.with_policy(|p| p.jitter(fraction))
    }

    /// Add a route rule; rules are tried in the order they were added and the first match wins.
    pub fn route(self, route: Route) -> Self {
        self.with_policy(|p| p.route(route))
    }

    /// Bypass requests carrying this header (added to the deny-list of unkeyed headers).
    pub fn deny_header(self, name: HeaderName) -> Self {
        self.with_policy(|p| p.deny_header(name))
    }

    /// Whether a client's `Cache-Control: no-cache` / `max-age=0` forces an origin call
    /// (default: no, so clients cannot force origin load).
    pub fn honour_client_no_cache(self, yes: bool) -> Self {
        self.with_policy(|p| p.honour_client_no_cache(yes))
    }

    /// How to name the principal of a request on a [`Route::per_principal`] route: typically
    /// the subject of a verified token or a session id. The name is never stored: only its
    /// keyed digest goes into the key. Return `None` for requests that must bypass the cache.
    ///
    /// ```
    /// use tower_response_cache::{CacheLayer, MemoryStore, Route};
    ///
    /// let layer = CacheLayer::new(MemoryStore::new())
    ///     .route(Route::prefix("/me").per_principal())
    ///     .principal(|headers| {
    ///         let value = headers.get("authorization")?.to_str().ok()?;
    ///         // A real hook verifies the token and returns its subject.
    ///         value.strip_prefix("Bearer ").map(str::to_owned)
    ///     });
    /// # let _ = layer;
    /// ```
    pub fn principal(
        mut self,
        hook: impl Fn(&http::HeaderMap) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config_mut().principal = Some(Arc::new(hook));
        self
    }

    /// Longest TTL of a stored error answer (4xx/5xx statuses on the allow-list, such as 404;
    /// default 60 s), so that an error caused by one odd request (cache-poisoned denial of
    /// service) does not stay in the cache for long.
    pub fn error_ttl(mut self, ttl: Duration) -> Self {
        self.config_mut().error_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Largest body that is stored (default 1 MiB). Larger responses stream through untouched.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.config_mut().max_body_size = bytes;
        self
    }

    /// Deadline on each store read of the request path (default 20 ms). A read that takes
    /// longer is a bypass.
    pub fn read_deadline(mut self, deadline: Duration) -> Self {
        self.config_mut().read_deadline = deadline;
        self
    }

    /// Deadline on each background store write (default 100 ms).
    pub fn write_deadline(mut self, deadline: Duration) -> Self {
        self.config_mut().write_deadline = deadline;
        self
    }

    /// Longest time a request waits behind another request's fill before calling the inner
    /// service itself (default 3 s).
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.config_mut().lock_wait = wait;
        self
    }

    /// How long a fill lock is held at most before it expires by itself (default 10 s). Other
    /// instances wait for the fill (at most the lock wait) instead of calling the origin too.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.config_mut().lock_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// Serve an expired entry for up to `window` after its expiry while one background request
    /// refreshes it (default 0: only what the origin's `stale-while-revalidate` allows). The
    /// origin's `must-revalidate`, `proxy-revalidate`, `s-maxage` and `no-cache` turn it off.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.config_mut().stale_while_revalidate = window;
        self
    }

    /// When the inner service fails (an error or a 5xx), answer with an entry that expired less
    /// than `window` ago (default 0: only what the origin's `stale-if-error` allows). Turned off
    /// by the same directives as [`CacheLayer::stale_while_revalidate`].
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.config_mut().stale_if_error = window;
        self
    }

    /// Circuit breaker: open after `failures` consecutive store failures, probe again after
    /// `cool_down` (default 5 and 1 s).
    pub fn breaker(mut self, failures: u32, cool_down: Duration) -> Self {
        self.settings.breaker = (failures, cool_down);
        self.state = Arc::new(State::new(self.settings));
        self
    }

    /// How many background writes may be pending at once (default 1024); writes beyond it are
    /// dropped and counted.
    pub fn write_queue(mut self, writes: usize) -> Self {
        self.settings.write_queue = writes;
        self.state = Arc::new(State::new(self.settings));
        self
    }

    /// Keep up to `bytes` of decoded entries in this process in front of the store (the near
    /// cache, off by default). Near entries never outlive the stored entry's remaining TTL and
    /// are dropped by purges from any instance.
    pub fn near_cache(mut self, bytes: u64) -> Self {
        self.settings.near_cache = Some(bytes);
        self.state = Arc::new(State::new(self.settings));
        self
    }

    /// The response header whose space-separated values tag an entry for
    /// [`Purger::purge_tag`] (default `Surrogate-Key`); `None` reads no header (the
    /// [`CacheTags`](crate::CacheTags) extension still works).
    pub fn tag_header(mut self, name: Option<HeaderName>) -> Self {
        self.config_mut().tag_header = name;
        self
    }

    /// Whether the tag header is removed before the response reaches the client (default yes).
    pub fn strip_tag_header(mut self, strip: bool) -> Self {
        self.config_mut().strip_tag_header = strip;
        self
    }

    /// Whether a successful (2xx or 3xx) POST, PUT, PATCH or DELETE through the layer purges
    /// the entries of its path (RFC 9111 section 4.4; default yes).
    pub fn invalidate_on_write(mut self, yes: bool) -> Self {
        self.config_mut().invalidate_on_write = yes;
        self
    }

    /// Cache the calls of a gRPC method (or of every method of a service). Only unary methods
    /// should be opted in; see the [`grpc`](crate::grpc) module.
    pub fn grpc(mut self, method: GrpcMethod) -> Self {
        self.config_mut().grpc.push(method);
        self
    }

    /// Largest gRPC request message read into the key (default 64 KiB); calls with larger ones
    /// bypass the cache.
    pub fn grpc_message_limit(mut self, bytes: usize) -> Self {
        self.config_mut().grpc_message_limit = bytes;
        self
    }

    /// A handle that purges entries of this layer's namespace, here and on every instance.
    pub fn purger(&self) -> Purger {
        // Purges travel on the events channel; listen to it as soon as possible.
        self.state.events.start(
            &self.config.store,
            &self.config.events_channel,
            self.purge_handler(),
        );
        Purger {
            config: Arc::clone(&self.config),
            state: Arc::clone(&self.state),
        }
    }

    fn purge_handler(&self) -> PurgeHandler {
        let config = Arc::clone(&self.config);
        let state = Arc::downgrade(&self.state);
        Arc::new(move |target, source, raw| {
            if let Some(state) = state.upgrade() {
                let purger = Purger {
                    config: Arc::clone(&config),
                    state,
                };
                tokio::spawn(apply_event(purger, target, source, raw));
            }
        })
    }

    /// The namespace every key starts with (default `trc`).
    pub fn namespace(mut self, namespace: &str) -> Self {
        let config = self.config_mut();
        config.namespace = namespace.to_owned();
        config.rebuild();
        self
    }

    /// The key version (default `v1`); bump it to start from an empty cache.
    pub fn version(mut self, version: &str) -> Self {
        let config = self.config_mut();
        config.version = version.to_owned();
        config.rebuild();
        self
    }

    /// The secret keys are derived and entries authenticated with. Every instance sharing a
    /// store must use the same one. Printed as "set" in `Debug`.
    pub fn secret(mut self, secret: &[u8]) -> Self {
        let config = self.config_mut();
        config.secret = Arc::from(secret);
        config.rebuild();
        self
    }

    /// Store response bodies longer than `bytes` LZ4-compressed, where that makes them smaller
    /// (feature `compression`; off by default). Every instance reads both forms when built with
    /// the feature; one built without it takes a compressed entry for a miss (counted as a
    /// decode error) and stores the response again uncompressed, so mix the two only for the
    /// length of a rolling deploy. Compression costs CPU on every fill and saves some on every
    /// hit; see BENCHMARKS.md for its ratio and cost.
    #[cfg(feature = "compression")]
    pub fn compress_above(mut self, bytes: usize) -> Self {
        let config = self.config_mut();
        config.codec = config.codec.clone().compress_above(bytes);
        self
    }

    /// The cache's name in `Cache-Status` (default `trc`). A name that is not an RFC 8941 token
    /// is ignored with a warning.
    pub fn cache_name(mut self, name: &str) -> Self {
        if !is_valid_cache_name(name) {
            tracing::warn!(target: "tower_response_cache", "ignoring a cache name that is not a token");
            return self;
        }
        let config = self.config_mut();
        config.cache_name = name.to_owned();
        config.rebuild();
        self
    }

    /// A snapshot of the counters shared by every service made from this layer.
    pub fn stats(&self) -> Stats {
        self.state
            .counters
            .snapshot(self.state.guard.state(), self.state.guard.times_opened())
    }

    /// Check that the store answers, within the read deadline (for readiness probes).
    pub async fn ping(&self) -> Result<(), Error> {
        let deadline = self.config.read_deadline.max(Duration::from_millis(250));
        match tokio::time::timeout(deadline, self.config.store.ping()).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::Store(crate::StoreError::timeout())),
        }
    }

    /// The store this layer caches in.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.config.store)
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        // Subscribe to the events channel as soon as a runtime is there to run it.
        self.state.events.start(
            &self.config.store,
            &self.config.events_channel,
            self.purge_handler(),
        );
        CacheService::new(inner, Arc::clone(&self.config), Arc::clone(&self.state))
    }
}

/// Whether a store URL variable holds a list of node URLs (a Redis Cluster): at least two parts
/// between commas, each a `redis://` or `rediss://` URL. A single URL with a comma in it (in a
/// password, say) is not a list.
#[cfg(feature = "redis")]
fn is_node_list(value: &str) -> bool {
    let mut parts = value.split(',').map(str::trim);
    let urls = parts
        .clone()
        .all(|part| part.starts_with("redis://") || part.starts_with("rediss://"));
    urls && parts.nth(1).is_some()
}

fn check_key_part(name: &'static str, value: &str) -> Result<(), Error> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidEnv {
            name,
            reason: "use 1 to 64 characters from A-Z, a-z, 0-9, '-', '_' and '.'".to_owned(),
        })
    }
}

/// `300`, `300s`, `5m`, `2h`, `1d`, `500ms`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let seconds = |factor: u64| number.checked_mul(factor).map(Duration::from_secs);
    match unit.trim() {
        "" | "s" => seconds(1),
        "ms" => Some(Duration::from_millis(number)),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("300"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("-5"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration("99999999999999999999d"), None);
    }

    #[test]
    fn key_parts_reject_what_would_break_a_key() {
        assert!(check_key_part("CACHE_PREFIX", "app-1").is_ok());
        assert!(check_key_part("CACHE_PREFIX", "").is_err());
        assert!(check_key_part("CACHE_PREFIX", "a:b").is_err());
        assert!(check_key_part("CACHE_PREFIX", "a{b}").is_err());
        assert!(check_key_part("CACHE_PREFIX", "a b").is_err());
    }
}

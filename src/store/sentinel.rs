//! The Redis Sentinel store: a [`RedisStore`] on whichever server the sentinels name as the
//! primary, asked again and rebuilt when that server stops taking writes.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::sentinel::Sentinel;
use redis::{Client, IntoConnectionInfo, RedisError};
use tokio::sync::{mpsc, Notify};

use super::redis::{classify, relay, subscribe};
use super::{RedisStore, Store, StoreError, StoreErrorKind, StoreFuture};
use crate::Error;

/// The shortest time between two lookups of the primary.
const LOOKUP_INTERVAL: Duration = Duration::from_millis(500);
/// How long one lookup (asking the sentinels, then checking the named server's role) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A store on the primary of a Redis master set managed by Sentinel.
///
/// The store asks the listed sentinels which server is the primary of the named master and
/// runs every command on a [`RedisStore`] connected to it. When that server stops answering,
/// or answers writes with `READONLY` because a failover demoted it, the store asks the
/// sentinels again (at most once every 500 ms) and moves to the new primary. While the
/// failover runs, calls fail with a transient [`StoreError`], which the layer turns into a
/// bypass: requests keep reaching the origin, and caching resumes by itself on the new primary,
/// without restarting the service.
///
/// Nothing is connected at construction, so a service starts while the sentinels are down;
/// every request bypasses the cache until a primary is found. Fill and purge events follow the
/// primary as well.
///
/// # Example
///
/// ```no_run
/// use tower_response_cache::{CacheLayer, RedisSentinelStore};
///
/// # fn main() -> Result<(), tower_response_cache::Error> {
/// let store = RedisSentinelStore::new(
///     &["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"],
///     "mymaster",
/// )?;
/// let layer = CacheLayer::new(store);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisSentinelStore {
    shared: Arc<Shared>,
}

/// What every clone of a store shares.
struct Shared {
    sentinels: Vec<redis::ConnectionInfo>,
    master: String,
    state: Mutex<State>,
    /// Woken when a lookup ends.
    looked_up: Notify,
}

/// The store on the current primary, with its client (for pub/sub) and the number of the
/// lookup that built it.
#[derive(Clone)]
struct Current {
    store: RedisStore,
    client: Client,
    lookup: u64,
}

/// The primary in use and the lookups around it.
struct State {
    /// The store on the current primary.
    current: Option<Current>,
    /// The address of the current primary (to keep its store when a lookup finds it again).
    address: Option<String>,
    lookups: u64,
    running: bool,
    last_start: Option<Instant>,
    last_error: Option<StoreError>,
}

impl RedisSentinelStore {
    /// A store on the primary of the master named `master`, found through the sentinels at
    /// `sentinels` (`redis://host:26379` each; list several, any one that answers is enough).
    ///
    /// Only the URLs are checked here: nothing is connected until the first call.
    pub fn new(sentinels: &[&str], master: &str) -> Result<Self, Error> {
        if sentinels.is_empty() {
            return Err(Error::InvalidUrl(
                "Sentinel needs at least one sentinel URL".to_owned(),
            ));
        }
        if master.is_empty() {
            return Err(Error::InvalidUrl(
                "Sentinel needs the name of the master".to_owned(),
            ));
        }
        let sentinels = sentinels
            .iter()
            .map(|url| {
                url.into_connection_info()
                    .map_err(|err| Error::InvalidUrl(err.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RedisSentinelStore {
            shared: Arc::new(Shared {
                sentinels,
                master: master.to_owned(),
                state: Mutex::new(State {
                    current: None,
                    address: None,
                    lookups: 0,
                    running: false,
                    last_start: None,
                    last_error: None,
                }),
                looked_up: Notify::new(),
            }),
        })
    }

    /// The name of the master this store follows.
    pub fn master(&self) -> &str {
        &self.shared.master
    }
}

impl std::fmt::Debug for RedisSentinelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSentinelStore")
            .field("master", &self.shared.master)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Start a lookup in the background unless one runs or one started a moment ago.
    /// Returns whether a lookup is now running.
    fn start_lookup(self: &Arc<Self>, state: &mut State) -> bool {
        if state.running {
            return true;
        }
        if let Some(at) = state.last_start {
            if at.elapsed() < LOOKUP_INTERVAL {
                return false;
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        state.running = true;
        state.last_start = Some(Instant::now());
        // In a task of its own, so that a caller's deadline cannot abandon a lookup half way.
        runtime.spawn(look_up(Arc::clone(self)));
        true
    }

    /// The store on the current primary, looked up first if there is none yet.
    async fn current(self: &Arc<Self>) -> Result<Current, StoreError> {
        loop {
            let looked_up = self.looked_up.notified();
            let mut looked_up = std::pin::pin!(looked_up);
            // Registered before the state is read, so a lookup that ends in between still
            // wakes this call.
            looked_up.as_mut().enable();
            {
                let mut state = self.lock();
                if let Some(current) = &state.current {
                    return Ok(current.clone());
                }
                if !self.start_lookup(&mut state) {
                    return Err(state.last_error.clone().unwrap_or_else(|| {
                        StoreError::new(
                            StoreErrorKind::Unavailable,
                            "no primary found through Sentinel yet",
                        )
                    }));
                }
            }
            looked_up.await;
            let state = self.lock();
            if state.current.is_none() && !state.running {
                return Err(state.last_error.clone().unwrap_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Unavailable,
                        "no primary found through Sentinel",
                    )
                }));
            }
        }
    }

    /// After a call on the store of lookup `lookup`: ask the sentinels again when the error
    /// says the server is gone or no longer the primary.
    fn observe<T>(self: &Arc<Self>, lookup: u64, result: &Result<T, StoreError>) {
        if let Err(err) = result {
            self.failed(lookup, err.kind());
        }
    }

    /// After a call on the store of lookup `lookup` failed with `kind`.
    fn failed(self: &Arc<Self>, lookup: u64, kind: StoreErrorKind) {
        if !matches!(
            kind,
            StoreErrorKind::Unavailable | StoreErrorKind::Timeout | StoreErrorKind::ReadOnly
        ) {
            return;
        }
        let mut state = self.lock();
        if state.lookups == lookup {
            self.start_lookup(&mut state);
        }
    }
}

/// Ends a lookup when dropped, also when the lookup task panicked or was cancelled, so that no
/// call waits for a lookup that will never end.
struct LookupGuard {
    shared: Arc<Shared>,
}

impl Drop for LookupGuard {
    fn drop(&mut self) {
        self.shared.lock().running = false;
        self.shared.looked_up.notify_waiters();
    }
}

/// Ask the sentinels for the primary and put a store on it in place.
async fn look_up(shared: Arc<Shared>) {
    let _guard = LookupGuard {
        shared: Arc::clone(&shared),
    };
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, find_primary(&shared)).await;
    let outcome = match found {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => Err((lookup_error(&err), err.to_string())),
        Err(_) => Err((
            StoreError::new(
                StoreErrorKind::Timeout,
                "asking Sentinel for the primary timed out",
            ),
            "timed out".to_owned(),
        )),
    };
    let had_primary = shared.lock().current.is_some();
    match outcome {
        Ok(client) => {
            let address = client.get_connection_info().addr().to_string();
            let mut state = shared.lock();
            state.last_error = None;
            if state.current.is_some() && state.address.as_deref() == Some(address.as_str()) {
                // The same primary: its connection reconnects by itself.
                return;
            }
            match RedisStore::from_client(client.clone()) {
                Ok(store) => {
                    state.lookups = state.lookups.wrapping_add(1);
                    state.current = Some(Current {
                        store,
                        client,
                        lookup: state.lookups,
                    });
                    tracing::info!(target: "tower_response_cache", master = %shared.master, primary = %address, "using the primary named by Sentinel");
                    state.address = Some(address);
                }
                Err(err) => {
                    tracing::warn!(target: "tower_response_cache", error = %err, "cannot open the primary named by Sentinel");
                    state.last_error = Some(StoreError::new(
                        StoreErrorKind::Misconfigured,
                        "cannot open the primary named by Sentinel",
                    ));
                }
            }
        }
        Err((error, text)) => {
            if had_primary {
                tracing::debug!(target: "tower_response_cache", master = %shared.master, error = %text, "Sentinel names no usable primary yet");
            } else {
                tracing::warn!(target: "tower_response_cache", master = %shared.master, error = %text, "cannot find the primary through Sentinel; bypassing the cache until it answers");
            }
            shared.lock().last_error = Some(error);
        }
    }
}

/// The client of the server the sentinels name as the primary (which is checked to agree).
async fn find_primary(shared: &Shared) -> Result<Client, RedisError> {
    let mut sentinel = Sentinel::build(shared.sentinels.clone())?;
    sentinel.async_master_for(&shared.master, None).await
}

/// A failed lookup: the store is unavailable, unless the sentinels were misconfigured.
fn lookup_error(err: &RedisError) -> StoreError {
    let classified = classify(err);
    match classified.kind() {
        StoreErrorKind::Misconfigured | StoreErrorKind::Timeout => classified,
        _ => StoreError::new(StoreErrorKind::Unavailable, err.category().to_owned()),
    }
}

/// Counts a call that was abandoned before it finished (the layer's deadline passed: the
/// primary may hang) as a timeout of its primary.
struct CallGuard<'a> {
    shared: &'a Arc<Shared>,
    lookup: u64,
    finished: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.failed(self.lookup, StoreErrorKind::Timeout);
        }
    }
}

/// Run one call of the inner store and watch its outcome.
macro_rules! delegate {
    ($self:ident, |$store:ident| $call:expr) => {
        Box::pin(async move {
            let current = $self.shared.current().await?;
            let mut guard = CallGuard {
                shared: &$self.shared,
                lookup: current.lookup,
                finished: false,
            };
            let $store = &current.store;
            let result = $call.await;
            guard.finished = true;
            $self.shared.observe(current.lookup, &result);
            result
        })
    };
}

impl Store for RedisSentinelStore {
    fn name(&self) -> &'static str {
        "redis-sentinel"
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        delegate!(self, |store| store.get(key))
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        delegate!(self, |store| store.put(key, value, ttl))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        delegate!(self, |store| store.delete(key))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        delegate!(self, |store| store.ping())
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn get_with_generation<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
    ) -> StoreFuture<'a, (Option<Bytes>, u64)> {
        delegate!(self, |store| store.get_with_generation(key, generation_key))
    }

    fn put_fenced<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        generation_key: &'a str,
        generation: u64,
    ) -> StoreFuture<'a, bool> {
        delegate!(self, |store| store.put_fenced(
            key,
            value,
            ttl,
            generation_key,
            generation
        ))
    }

    fn bump_generation<'a>(
        &'a self,
        generation_key: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, u64> {
        delegate!(self, |store| store.bump_generation(generation_key, ttl))
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        delegate!(self, |store| store.try_lock(key, token, ttl))
    }

    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, bool> {
        delegate!(self, |store| store.unlock(key, token))
    }

    fn publish<'a>(&'a self, channel: &'a str, message: Bytes) -> StoreFuture<'a, ()> {
        delegate!(self, |store| store.publish(channel, message))
    }

    fn scan_prefix<'a>(
        &'a self,
        prefix: &'a str,
        cursor: u64,
        count: usize,
    ) -> StoreFuture<'a, (u64, Vec<String>)> {
        delegate!(self, |store| store.scan_prefix(prefix, cursor, count))
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, u64> {
        delegate!(self, |store| store.delete_many(keys))
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        delegate!(self, |store| store.get_many(keys))
    }

    fn tag_add<'a>(
        &'a self,
        tag_key: &'a str,
        member: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        delegate!(self, |store| store.tag_add(tag_key, member, ttl))
    }

    fn tag_members<'a>(
        &'a self,
        tag_key: &'a str,
        cursor: u64,
        count: usize,
    ) -> StoreFuture<'a, (u64, Vec<String>)> {
        delegate!(self, |store| store.tag_members(tag_key, cursor, count))
    }

    fn subscribe(&self, channel: &str) -> Option<mpsc::Receiver<Bytes>> {
        let (sender, receiver) = mpsc::channel(1024);
        tokio::spawn(listen(Arc::clone(&self.shared), channel.to_owned(), sender));
        Some(receiver)
    }
}

/// Keep a subscription to `channel` open on the current primary, moving it when a lookup
/// puts another primary in place, until the receiving side is dropped.
async fn listen(shared: Arc<Shared>, channel: String, sender: mpsc::Sender<Bytes>) {
    let mut delay = Duration::from_millis(50);
    loop {
        if sender.is_closed() {
            return;
        }
        if let Ok(Current { client, lookup, .. }) = shared.current().await {
            if let Some(pubsub) = subscribe(&client, &channel).await {
                delay = Duration::from_millis(50);
                // Moved when a lookup puts another primary in place.
                let moved = async {
                    let mut check = tokio::time::interval(LOOKUP_INTERVAL);
                    loop {
                        check.tick().await;
                        if shared.lock().lookups != lookup {
                            return;
                        }
                    }
                };
                if !relay(pubsub, &sender, moved).await {
                    return;
                }
                tracing::debug!(target: "tower_response_cache", "event subscription lost or moved; resubscribing");
            }
            // A subscription that fails or ends may mean a lost primary.
            shared.failed(lookup, StoreErrorKind::Unavailable);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

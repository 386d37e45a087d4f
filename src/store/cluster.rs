//! The Redis Cluster store: the redis crate's async cluster connection, opened lazily and
//! rebuilt when it stays broken.
//!
//! Every key the layer uses for one path carries the path digest as its hash tag (`{P}`), so an
//! entry, its lock, its generation and its Vary list live in one slot: the two-key read and the
//! fenced write script never cross slots. Only bulk purges touch many slots at once, and they
//! are split here: deletes and reads by slot, key scans node by node over every primary.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use redis::aio::ConnectionLike;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Client, Cmd, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::{mpsc, Notify};

use super::redis::{classify, command, glob_escape, parse_generation, relay, subscribe, TAG_ADD};
use super::{Store, StoreError, StoreErrorKind, StoreFuture};
use crate::Error;

/// How long one node may take to accept a connection.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one node may take to answer one attempt of a command.
const NODE_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a command may take in all, across MOVED / ASK redirects, retries and reconnects.
/// The request path puts its own, much shorter, deadline on top; this bounds background work.
const OVERALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Retries of one command after a redirect or a transient failure (within
/// [`OVERALL_TIMEOUT`]).
const RETRIES: u32 = 3;
/// How long building the cluster connection (every node's connection and the slot map) may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after a failed build the next one may start; calls in between fail at once.
const REBUILD_DELAY: Duration = Duration::from_millis(250);
/// A connection that has not completed a command for this long, while its commands keep
/// failing to reach the cluster, is dropped and built again from the listed nodes.
const STALE_AFTER: Duration = Duration::from_secs(5);
/// Bits of a [`Store::scan_prefix`] cursor that hold one node's own `SCAN` cursor; the bits
/// above them hold the first slot of the primary being walked.
const NODE_CURSOR_BITS: u32 = 48;
const NODE_CURSOR_MASK: u64 = (1 << NODE_CURSOR_BITS) - 1;
/// Hash slots in a cluster.
const SLOTS: u16 = 16384;
/// Per-slot commands of one bulk call that run at the same time.
const SLOT_FAN_OUT: usize = 16;

/// A store on a Redis Cluster, through the redis crate's async cluster connection.
///
/// Select it with the list of node URLs (`redis://host:7000`, `rediss://user:password@host:7000`
/// for TLS and ACL users): any reachable node is enough to discover the others. Like
/// [`RedisStore`](crate::RedisStore), it connects lazily, so a service starts while the cluster
/// is down and every request bypasses the cache until it answers.
///
/// - Commands follow `MOVED` and `ASK` redirects and retry transient failures, within a one
///   second overall bound; the layer's own deadlines are shorter still.
/// - `CLUSTERDOWN`, `TRYAGAIN` and `MASTERDOWN` (a failover or a slot migration in progress)
///   are transient failures: requests bypass the cache, the circuit breaker counts them, and
///   nothing waits for the cluster to heal.
/// - Purges by path and namespace scan every primary; tag purges delete their members slot by
///   slot, wherever the members live.
/// - Fill and purge events use classic pub/sub, which a cluster delivers to every node: the
///   store listens on one listed node at a time and moves to the next when it fails, so list
///   more than one.
///
/// # Example
///
/// ```no_run
/// use tower_response_cache::{CacheLayer, RedisClusterStore};
///
/// # fn main() -> Result<(), tower_response_cache::Error> {
/// let store = RedisClusterStore::from_url_list(
///     "redis://10.0.0.1:7000,redis://10.0.0.2:7000,redis://10.0.0.3:7000",
/// )?;
/// let layer = CacheLayer::new(store);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisClusterStore {
    shared: Arc<Shared>,
}

/// What every clone of a store shares.
struct Shared {
    client: ClusterClient,
    /// One plain client per listed node, for the pub/sub connection.
    event_clients: Vec<Client>,
    connection: Mutex<Connection>,
    /// Wakes the calls waiting for a build to finish.
    built: Notify,
    builds: AtomicU64,
    /// When a command last completed, in milliseconds since `started`.
    last_success_ms: AtomicU64,
    started: Instant,
}

/// Where the cluster connection is.
enum Connection {
    /// None yet, or the last one was dropped; with the last failed build, if any.
    Idle {
        failed: Option<(Instant, StoreError)>,
    },
    /// A build is running in the background.
    Building,
    /// Ready for commands.
    Ready {
        connection: ClusterConnection,
        build: u64,
        since: Instant,
    },
}

impl RedisClusterStore {
    /// A store on the cluster the listed nodes belong to, each URL being
    /// `redis://[user:password@]host:port` (or `rediss://` with the `tls` feature).
    ///
    /// No connection is made yet: the first call opens it. The URLs must agree on the user,
    /// password and TLS. With `rediss://`, the nodes' certificates are checked against the
    /// system's root certificates (see [`RedisClusterStore::from_urls_with_tls`] for others).
    pub fn from_urls(urls: &[&str]) -> Result<Self, Error> {
        Self::assemble(urls, |builder| builder, |url| Client::open(url))
    }

    /// Like [`RedisClusterStore::from_urls`] for `rediss://` nodes whose certificates are
    /// signed by the root in `certificates` (and with a client certificate for mutual TLS, if
    /// it has one).
    #[cfg(feature = "tls")]
    pub fn from_urls_with_tls(
        urls: &[&str],
        certificates: redis::TlsCertificates,
    ) -> Result<Self, Error> {
        Self::assemble(
            urls,
            |builder| builder.certs(certificates.clone()),
            |url| Client::build_with_tls(url, certificates.clone()),
        )
    }

    fn assemble(
        urls: &[&str],
        configure: impl FnOnce(ClusterClientBuilder) -> ClusterClientBuilder,
        open: impl Fn(&str) -> redis::RedisResult<Client>,
    ) -> Result<Self, Error> {
        if urls.is_empty() {
            return Err(Error::InvalidUrl(
                "a cluster needs at least one node URL".to_owned(),
            ));
        }
        let mut event_clients = Vec::with_capacity(urls.len());
        for url in urls {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(Error::InvalidUrl(
                    "a cluster node URL starts with redis:// or rediss://".to_owned(),
                ));
            }
            event_clients.push(open(url).map_err(|err| invalid_url(&err))?);
        }
        let builder = ClusterClientBuilder::new(urls.iter().copied())
            .connection_timeout(NODE_CONNECT_TIMEOUT)
            .response_timeout(NODE_RESPONSE_TIMEOUT)
            .overall_response_timeout(Some(OVERALL_TIMEOUT))
            .retries(RETRIES)
            .min_retry_wait(10)
            .max_retry_wait(100);
        let client = configure(builder)
            .build()
            .map_err(|err| invalid_url(&err))?;
        Ok(RedisClusterStore {
            shared: Arc::new(Shared {
                client,
                event_clients,
                connection: Mutex::new(Connection::Idle { failed: None }),
                built: Notify::new(),
                builds: AtomicU64::new(0),
                last_success_ms: AtomicU64::new(0),
                started: Instant::now(),
            }),
        })
    }

    /// A store on the nodes of a comma-separated list,
    /// `redis://a:7000,redis://b:7001,...` (spaces around the commas are ignored), as
    /// [`RedisClusterStore::from_urls`].
    pub fn from_url_list(list: &str) -> Result<Self, Error> {
        let urls: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect();
        Self::from_urls(&urls)
    }

    /// The cluster connection, built first if there is none. Waits for a build in progress; a
    /// build that failed a moment ago fails the call at once.
    async fn connection(&self) -> Result<(ClusterConnection, u64), StoreError> {
        let shared = &self.shared;
        loop {
            let built = shared.built.notified();
            let mut built = std::pin::pin!(built);
            // Registered before the state is read, so a build that ends in between still wakes
            // this call.
            built.as_mut().enable();
            {
                let mut state = shared.lock();
                match &*state {
                    Connection::Ready {
                        connection, build, ..
                    } => return Ok((connection.clone(), *build)),
                    Connection::Building => {}
                    Connection::Idle { failed } => {
                        if let Some((at, err)) = failed {
                            if at.elapsed() < REBUILD_DELAY {
                                return Err(err.clone());
                            }
                        }
                        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                            StoreError::new(
                                StoreErrorKind::Misconfigured,
                                "the cluster store is used outside a Tokio runtime",
                            )
                        })?;
                        let first = failed.is_none();
                        *state = Connection::Building;
                        // In a task of its own, so that a caller's deadline cannot abandon a
                        // build half way.
                        runtime.spawn(build(Arc::clone(shared), first));
                    }
                }
            }
            built.await;
        }
    }

    /// Run `call` on the cluster connection, keeping track of whether it still works.
    fn run<'a, T, F, Fut>(&'a self, call: F) -> StoreFuture<'a, T>
    where
        T: Send + 'a,
        F: FnOnce(ClusterConnection) -> Fut + Send + 'a,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'a,
    {
        Box::pin(async move {
            let (connection, build) = self.connection().await?;
            let result = call(connection).await;
            match &result {
                Ok(_) => self.shared.succeeded(),
                Err(err) => self.shared.failed(build, err.kind()),
            }
            result
        })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn succeeded(&self) {
        self.last_success_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// After a failed command: drop connection `build` if nothing has got through it for a
    /// while, so that the next call builds a fresh one from the listed nodes.
    fn failed(&self, build: u64, kind: StoreErrorKind) {
        if !matches!(kind, StoreErrorKind::Unavailable | StoreErrorKind::Timeout) {
            return;
        }
        let quiet_ms = self
            .now_ms()
            .saturating_sub(self.last_success_ms.load(Ordering::Relaxed));
        if u128::from(quiet_ms) < STALE_AFTER.as_millis() {
            return;
        }
        let mut state = self.lock();
        if let Connection::Ready {
            build: current,
            since,
            ..
        } = &*state
        {
            if *current == build && since.elapsed() >= STALE_AFTER {
                tracing::warn!(
                    target: "tower_response_cache",
                    "the Redis Cluster has not answered for {STALE_AFTER:?}; reconnecting from the listed nodes"
                );
                *state = Connection::Idle { failed: None };
            }
        }
    }
}

/// Publishes the outcome of a build when dropped, also when the build task panicked or was
/// cancelled (then as a failure), so that no call waits for a build that will never end.
struct BuildOutcome {
    shared: Arc<Shared>,
    next: Option<Connection>,
}

impl Drop for BuildOutcome {
    fn drop(&mut self) {
        let next = self.next.take().unwrap_or_else(|| Connection::Idle {
            failed: Some((
                Instant::now(),
                StoreError::new(
                    StoreErrorKind::Unavailable,
                    "building the cluster connection was abandoned",
                ),
            )),
        });
        *self.shared.lock() = next;
        self.shared.built.notify_waiters();
    }
}

/// Build the cluster connection and publish the outcome to the waiting calls.
async fn build(shared: Arc<Shared>, first_failure_is_news: bool) {
    let mut outcome_guard = BuildOutcome {
        shared: Arc::clone(&shared),
        next: None,
    };
    let outcome = tokio::time::timeout(BUILD_TIMEOUT, shared.client.get_async_connection()).await;
    let next = match outcome {
        Ok(Ok(connection)) => {
            let build = shared
                .builds
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            shared.succeeded();
            tracing::debug!(target: "tower_response_cache", "connected to the Redis Cluster");
            Connection::Ready {
                connection,
                build,
                since: Instant::now(),
            }
        }
        Ok(Err(err)) => {
            let error = cluster_error(&err);
            if first_failure_is_news {
                tracing::warn!(target: "tower_response_cache", error = %err, "cannot connect to the Redis Cluster; bypassing the cache until it answers");
            } else {
                tracing::debug!(target: "tower_response_cache", error = %err, "still cannot connect to the Redis Cluster");
            }
            Connection::Idle {
                failed: Some((Instant::now(), error)),
            }
        }
        Err(_) => {
            if first_failure_is_news {
                tracing::warn!(target: "tower_response_cache", "connecting to the Redis Cluster timed out; bypassing the cache until it answers");
            }
            Connection::Idle {
                failed: Some((
                    Instant::now(),
                    StoreError::new(
                        StoreErrorKind::Timeout,
                        "connecting to the cluster timed out",
                    ),
                )),
            }
        }
    };
    outcome_guard.next = Some(next);
}

fn invalid_url(err: &RedisError) -> Error {
    Error::InvalidUrl(err.to_string())
}

/// [`classify`], plus the failures only a cluster connection reports.
fn cluster_error(err: &RedisError) -> StoreError {
    match err.kind() {
        // No connection to the node that owns the slot (it is down or being replaced).
        redis::ErrorKind::ClusterConnectionNotFound => {
            StoreError::new(StoreErrorKind::Unavailable, err.category().to_owned())
        }
        _ => match err.code() {
            // Redirects left over when the retries ran out: the slot is moving.
            Some("MOVED" | "ASK") => StoreError::new(StoreErrorKind::Busy, "slot moving"),
            _ => classify(err),
        },
    }
}

fn not_a_reply(what: &'static str) -> StoreError {
    StoreError::new(StoreErrorKind::Corrupt, what)
}

/// A view of the cluster connection that sends every command to the primary of one slot:
/// scripts run there, and when the node does not know a script yet it is loaded there too
/// (`SCRIPT LOAD` would otherwise go to every node, and fail while any one of them is down).
struct OneSlot {
    connection: ClusterConnection,
    route: Route,
}

impl OneSlot {
    fn new(connection: ClusterConnection, key: &str) -> Self {
        OneSlot {
            connection,
            route: Route::with_key(key.as_bytes(), SlotAddr::Master),
        }
    }
}

impl ConnectionLike for OneSlot {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(self.route));
        Box::pin(self.connection.route_command(cmd.clone(), routing))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.connection.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// The indices of one slot's keys in a bulk read, and the values read for them.
type SlotValues = (Vec<usize>, Vec<Option<Vec<u8>>>);

/// The indices of `keys` grouped by hash slot, in order of first appearance.
fn slot_groups(keys: &[String]) -> Vec<Vec<usize>> {
    let mut group_of: HashMap<Route, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
        let group = *group_of.entry(route).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        if let Some(members) = groups.get_mut(group) {
            members.push(index);
        }
    }
    groups
}

/// The lowest slot of each primary in a `CLUSTER SLOTS` reply, sorted: each one names a
/// primary for as long as it owns that slot, also after a failover hands it to a replica.
fn primaries_first_slots(reply: &Value) -> Option<Vec<u16>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut first_slot: HashMap<Vec<u8>, u16> = HashMap::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let start = match fields.first()? {
            Value::Int(start) => u16::try_from(*start).ok()?,
            _ => return None,
        };
        let Value::Array(primary) = fields.get(2)? else {
            return None;
        };
        // host, port and (when the server sends it) node id.
        let mut identity = Vec::new();
        for part in primary.iter().take(3) {
            match part {
                Value::BulkString(bytes) => identity.extend_from_slice(bytes),
                Value::SimpleString(text) => identity.extend_from_slice(text.as_bytes()),
                Value::Int(n) => identity.extend_from_slice(n.to_string().as_bytes()),
                _ => {}
            }
            identity.push(b'/');
        }
        first_slot
            .entry(identity)
            .and_modify(|slot| *slot = (*slot).min(start))
            .or_insert(start);
    }
    let mut slots: Vec<u16> = first_slot.into_values().collect();
    slots.sort_unstable();
    slots.dedup();
    Some(slots)
}

/// The first slots of the cluster's primaries, from any node's view of the slot map.
async fn primaries(connection: &mut ClusterConnection) -> Result<Vec<u16>, StoreError> {
    let reply = connection
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await
        .map_err(|err| cluster_error(&err))?;
    primaries_first_slots(&reply).ok_or_else(|| not_a_reply("unexpected CLUSTER SLOTS reply"))
}

fn encode_cursor(slot: u16, node_cursor: u64) -> u64 {
    (u64::from(slot) << NODE_CURSOR_BITS) | node_cursor
}

fn decode_cursor(cursor: u64) -> (u16, u64) {
    let slot = u16::try_from(cursor >> NODE_CURSOR_BITS).unwrap_or(u16::MAX);
    (slot, cursor & NODE_CURSOR_MASK)
}

impl std::fmt::Debug for RedisClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may carry a password: never print them.
        f.debug_struct("RedisClusterStore")
            .field("nodes", &self.shared.event_clients.len())
            .finish_non_exhaustive()
    }
}

impl Store for RedisClusterStore {
    fn name(&self) -> &'static str {
        "redis-cluster"
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        self.run(move |mut connection| async move {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
                .map_err(|err| cluster_error(&err))?;
            Ok(value.map(Bytes::from))
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        let seconds = ttl.as_secs().max(1);
        self.run(move |mut connection| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value.as_ref())
                .arg("EX")
                .arg(seconds)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|err| cluster_error(&err))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        self.run(move |mut connection| async move {
            redis::cmd("UNLINK")
                .arg(key)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|err| cluster_error(&err))
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        // Routed to every primary: the cache answers only if all its slots do.
        self.run(move |mut connection| async move {
            redis::cmd("PING")
                .query_async::<()>(&mut connection)
                .await
                .map_err(|err| cluster_error(&err))
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn get_with_generation<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
    ) -> StoreFuture<'a, (Option<Bytes>, u64)> {
        self.run(move |connection| async move {
            // Two single-key reads sent together (one round trip), not one `MGET`: while a slot
            // migrates, a multi-key command whose keys are not all on one node (and the
            // generation key usually does not exist at all) gets `TRYAGAIN` until the move
            // ends, where a single-key read simply follows the `ASK` redirect.
            let (mut first, mut second) = (connection.clone(), connection);
            let (entry_get, generation_get) = (
                redis::cmd("GET").arg(key).to_owned(),
                redis::cmd("GET").arg(generation_key).to_owned(),
            );
            let entry = entry_get.query_async::<Option<Vec<u8>>>(&mut first);
            let generation = generation_get.query_async::<Option<Vec<u8>>>(&mut second);
            let (value, generation) = tokio::join!(entry, generation);
            let value = value.map_err(|err| cluster_error(&err))?;
            let generation = generation.map_err(|err| cluster_error(&err))?;
            Ok((value.map(Bytes::from), parse_generation(generation)))
        })
    }

    fn put_fenced<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        generation_key: &'a str,
        generation: u64,
    ) -> StoreFuture<'a, bool> {
        self.run(move |connection| async move {
            let mut slot = OneSlot::new(connection, key);
            command::fenced_put(&mut slot, key, generation_key, &value, generation, ttl)
                .await
                .map_err(|err| cluster_error(&err))
        })
    }

    fn bump_generation<'a>(
        &'a self,
        generation_key: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, u64> {
        self.run(move |connection| async move {
            let mut slot = OneSlot::new(connection, generation_key);
            command::bump_generation(&mut slot, generation_key, ttl)
                .await
                .map_err(|err| cluster_error(&err))
        })
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.run(move |mut connection| async move {
            command::try_lock(&mut connection, key, token, ttl)
                .await
                .map_err(|err| cluster_error(&err))
        })
    }

    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, bool> {
        self.run(move |connection| async move {
            command::unlock(&mut OneSlot::new(connection, key), key, token)
                .await
                .map_err(|err| cluster_error(&err))
        })
    }

    fn publish<'a>(&'a self, channel: &'a str, message: Bytes) -> StoreFuture<'a, ()> {
        // Classic pub/sub: the node that takes the message passes it to every other node.
        self.run(move |mut connection| async move {
            command::publish(&mut connection, channel, &message)
                .await
                .map_err(|err| cluster_error(&err))
        })
    }

    fn scan_prefix<'a>(
        &'a self,
        prefix: &'a str,
        cursor: u64,
        count: usize,
    ) -> StoreFuture<'a, (u64, Vec<String>)> {
        // The cursor says which primary is being walked (by its first slot) and where that
        // primary's own SCAN is; the primaries are walked in the order of their first slots.
        self.run(move |mut connection| async move {
            let (slot, node_cursor) = if cursor == 0 {
                match primaries(&mut connection).await?.first() {
                    Some(first) => (*first, 0),
                    None => return Ok((0, Vec::new())),
                }
            } else {
                match decode_cursor(cursor) {
                    (slot, node_cursor) if slot < SLOTS => (slot, node_cursor),
                    _ => {
                        return Err(StoreError::new(
                            StoreErrorKind::Other,
                            "not a scan cursor of this store",
                        ))
                    }
                }
            };
            let pattern = format!("{}*", glob_escape(prefix));
            let mut scan = redis::cmd("SCAN");
            scan.arg(node_cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count.max(1));
            let reply = connection
                .route_command(
                    scan,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                        slot,
                        SlotAddr::Master,
                    ))),
                )
                .await
                .map_err(|err| cluster_error(&err))?;
            let (next, keys): (u64, Vec<String>) =
                redis::from_redis_value(reply).map_err(|_| not_a_reply("unexpected SCAN reply"))?;
            if next != 0 {
                if next > NODE_CURSOR_MASK {
                    return Err(StoreError::new(
                        StoreErrorKind::Other,
                        "a node's SCAN cursor does not fit the store's cursor",
                    ));
                }
                return Ok((encode_cursor(slot, next), keys));
            }
            // This primary is done: on to the next one, if any. Its first slot is above this
            // one's, so the cursor is never 0 and the walk always ends.
            let next_primary = primaries(&mut connection)
                .await?
                .into_iter()
                .find(|first| *first > slot);
            Ok((
                next_primary.map_or(0, |first| encode_cursor(first, 0)),
                keys,
            ))
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, u64> {
        self.run(move |connection| async move {
            if keys.is_empty() {
                return Ok(0);
            }
            // One UNLINK per slot: a multi-key command must stay within one slot.
            let removed: Vec<u64> = futures_util::stream::iter(slot_groups(keys))
                .map(|group| {
                    let mut connection = connection.clone();
                    async move {
                        let mut unlink = redis::cmd("UNLINK");
                        for index in group {
                            if let Some(key) = keys.get(index) {
                                unlink.arg(key);
                            }
                        }
                        unlink
                            .query_async::<u64>(&mut connection)
                            .await
                            .map_err(|err| cluster_error(&err))
                    }
                })
                .buffer_unordered(SLOT_FAN_OUT)
                .try_collect()
                .await?;
            Ok(removed.into_iter().fold(0, u64::saturating_add))
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        self.run(move |connection| async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            // One MGET per slot, put back in the order of `keys`.
            let groups: Vec<SlotValues> = futures_util::stream::iter(slot_groups(keys))
                .map(|group| {
                    let mut connection = connection.clone();
                    async move {
                        let mut mget = redis::cmd("MGET");
                        for index in &group {
                            if let Some(key) = keys.get(*index) {
                                mget.arg(key);
                            }
                        }
                        let values: Vec<Option<Vec<u8>>> = mget
                            .query_async(&mut connection)
                            .await
                            .map_err(|err| cluster_error(&err))?;
                        Ok::<_, StoreError>((group, values))
                    }
                })
                .buffer_unordered(SLOT_FAN_OUT)
                .try_collect()
                .await?;
            let mut values: Vec<Option<Bytes>> = vec![None; keys.len()];
            for (group, found) in groups {
                if group.len() != found.len() {
                    return Err(not_a_reply("MGET answered a different number of values"));
                }
                for (index, value) in group.into_iter().zip(found) {
                    if let Some(slot) = values.get_mut(index) {
                        *slot = value.map(Bytes::from);
                    }
                }
            }
            Ok(values)
        })
    }

    fn tag_add<'a>(
        &'a self,
        tag_key: &'a str,
        member: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        let seconds = ttl.as_secs().max(1);
        // The member is an argument, not a key: it may live in any slot.
        self.run(move |connection| async move {
            TAG_ADD
                .key(tag_key)
                .arg(member)
                .arg(seconds)
                .invoke_async::<()>(&mut OneSlot::new(connection, tag_key))
                .await
                .map_err(|err| cluster_error(&err))
        })
    }

    fn tag_members<'a>(
        &'a self,
        tag_key: &'a str,
        cursor: u64,
        count: usize,
    ) -> StoreFuture<'a, (u64, Vec<String>)> {
        self.run(move |mut connection| async move {
            redis::cmd("SSCAN")
                .arg(tag_key)
                .arg(cursor)
                .arg("COUNT")
                .arg(count.max(1))
                .query_async(&mut connection)
                .await
                .map_err(|err| cluster_error(&err))
        })
    }

    fn subscribe(&self, channel: &str) -> Option<mpsc::Receiver<Bytes>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (sender, receiver) = mpsc::channel(1024);
        runtime.spawn(listen(
            self.shared.event_clients.clone(),
            channel.to_owned(),
            sender,
        ));
        Some(receiver)
    }
}

/// Keep a subscription to `channel` open on one of the nodes, moving to the next node when it
/// fails and backing off once every node has failed, until the receiving side is dropped.
async fn listen(clients: Vec<Client>, channel: String, sender: mpsc::Sender<Bytes>) {
    let mut delay = Duration::from_millis(50);
    let mut failures = 0usize;
    let mut next = 0usize;
    loop {
        if sender.is_closed() {
            return;
        }
        let Some(client) = clients.get(next % clients.len().max(1)) else {
            return;
        };
        next = next.wrapping_add(1);
        match subscribe(client, &channel).await {
            Some(pubsub) => {
                failures = 0;
                delay = Duration::from_millis(50);
                if !relay(pubsub, &sender, std::future::pending()).await {
                    return;
                }
                tracing::debug!(target: "tower_response_cache", "event subscription lost; moving to another cluster node");
            }
            None => {
                failures = failures.saturating_add(1);
                if failures >= clients.len() {
                    failures = 0;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn node(port: i64, id: &str) -> Value {
        Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk(id)])
    }

    #[test]
    fn cursors_round_trip_a_slot_and_a_node_cursor() {
        for (slot, node_cursor) in [(0, 1), (5461, 0), (16383, NODE_CURSOR_MASK), (42, 12345)] {
            assert_eq!(
                decode_cursor(encode_cursor(slot, node_cursor)),
                (slot, node_cursor)
            );
        }
        // Only the very start of a walk is cursor 0.
        assert_ne!(encode_cursor(1, 0), 0);
    }

    #[test]
    fn each_primary_is_named_by_its_lowest_slot() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node(7002, "c"),
                node(7005, "f"),
            ]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node(7000, "a")]),
            // A primary with two ranges counts once, by the lower one.
            Value::Array(vec![Value::Int(6000), Value::Int(10922), node(7001, "b")]),
            Value::Array(vec![Value::Int(5461), Value::Int(5999), node(7001, "b")]),
        ]);
        assert_eq!(primaries_first_slots(&reply), Some(vec![0, 5461, 10923]));
        assert_eq!(
            primaries_first_slots(&Value::Array(Vec::new())),
            Some(Vec::new())
        );
        assert_eq!(primaries_first_slots(&Value::Int(1)), None);
        let bad_slot = Value::Array(vec![Value::Array(vec![
            Value::Int(-1),
            Value::Int(3),
            node(7000, "a"),
        ])]);
        assert_eq!(primaries_first_slots(&bad_slot), None);
        let truncated = Value::Array(vec![Value::Array(vec![Value::Int(0)])]);
        assert_eq!(primaries_first_slots(&truncated), None);
    }

    #[test]
    fn keys_with_the_same_hash_tag_share_a_group_and_order_is_kept() {
        let keys: Vec<String> = [
            "trc:v1:{aaaa}:e:1",
            "trc:v1:{bbbb}:e:1",
            "trc:v1:{aaaa}:e:2",
            "trc:v1:{aaaa}:g",
            "trc:v1:{bbbb}:e:2",
        ]
        .iter()
        .map(|key| (*key).to_owned())
        .collect();
        assert_eq!(slot_groups(&keys), vec![vec![0, 2, 3], vec![1, 4]]);
        assert!(slot_groups(&[]).is_empty());
    }

    #[test]
    fn node_lists_are_checked_when_the_store_is_made() {
        assert!(RedisClusterStore::from_urls(&[]).is_err());
        assert!(RedisClusterStore::from_url_list(" , ").is_err());
        assert!(RedisClusterStore::from_url_list("memcached://a:1").is_err());
        assert!(RedisClusterStore::from_url_list("redis://a:1,http://b:2").is_err());
        let store = RedisClusterStore::from_url_list("redis://127.0.0.1:1, redis://127.0.0.1:2")
            .expect("two node URLs");
        assert_eq!(store.shared.event_clients.len(), 2);
        assert!(!format!("{store:?}").contains("127.0.0.1"));
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_an_unavailable_store_not_a_hang() {
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = unused.local_addr().unwrap().port();
        drop(unused);
        let store = RedisClusterStore::from_urls(&[&format!("redis://127.0.0.1:{port}")]).unwrap();
        let err = store.get("k").await.unwrap_err();
        assert!(err.kind().is_transient(), "{err:?}");
        // The next call fails the same way (at once while the failed build is recent).
        let again = store.ping().await.unwrap_err();
        assert_eq!(again.kind(), err.kind());
    }
}

//! The Redis store: one multiplexed, self-reconnecting connection shared by every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Script};
use std::sync::LazyLock;
use tokio::sync::mpsc;

use super::{Store, StoreError, StoreErrorKind, StoreFuture};
use crate::Error;

/// A store on a Redis server (standalone), through the redis crate's [`ConnectionManager`].
///
/// The connection is multiplexed: cloning it is cheap and every request uses its own clone, so
/// no lock is ever held around it. It is opened lazily, so a service whose Redis is down at
/// start-up still starts (every request bypasses the cache until Redis answers), and it reconnects
/// in the background after the server restarts.
///
/// Values are written with `SET key value EX seconds`: never a value without its expiry.
///
/// The connection reconnects after I/O errors, and when its server has been demoted to a
/// replica: such a server keeps the connection open and answers every write with `READONLY`
/// (a [`StoreErrorKind::ReadOnly`] error, a transient failure the layer bypasses), so the store
/// then closes the connection, at most once a second, and the next one is opened to wherever the
/// URL's host name points now (a managed service moves its primary endpoint on failover). With a
/// fixed address, that is the same server again, and writes keep failing while it stays a
/// replica. Behind Redis Sentinel, use `RedisSentinelStore` (feature `sentinel`) instead: it asks
/// the sentinels for the new primary and moves there.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use tower_response_cache::{CacheLayer, RedisStore};
///
/// # fn main() -> Result<(), tower_response_cache::Error> {
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # let _guard = rt.enter();
/// let store = RedisStore::from_url("redis://127.0.0.1:6379/")?;
/// let layer = CacheLayer::new(store).default_ttl(Duration::from_secs(60));
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    /// Kept for the pub/sub connection, which cannot share the multiplexed one.
    client: Option<Client>,
    /// When the connection was last closed because its server had become a replica.
    demoted: Arc<Demoted>,
}

/// How often a store whose server was demoted closes its connection to find the new primary.
const REOPEN_AFTER_READONLY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Demoted {
    since: Instant,
    /// Milliseconds after `since` of the last close; `u64::MAX` before the first.
    last_close_ms: AtomicU64,
}

impl Default for Demoted {
    fn default() -> Self {
        Demoted {
            since: Instant::now(),
            last_close_ms: AtomicU64::new(u64::MAX),
        }
    }
}

/// Write the entry only if the path's generation is still the one the fill started under.
pub(crate) static FENCED_PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('GET', KEYS[2])
if current == false then current = '0' end
if current == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  return 1
end
return 0
",
    )
});

/// Increment a generation and keep it for a while (both in one step).
pub(crate) static BUMP_GENERATION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
",
    )
});

/// Add a member to a tag set and make the set live at least as long as the member.
pub(crate) static TAG_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = redis.call('TTL', KEYS[1])
if ttl < tonumber(ARGV[2]) then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
",
    )
});

/// Delete a lock only if it still holds our token.
pub(crate) static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

impl RedisStore {
    /// A store on the server at `url` (`redis://[user:password@]host:port/db`).
    ///
    /// No connection is made yet: the first request opens it. Must be called inside a Tokio
    /// runtime.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let client = Client::open(url).map_err(|err| Error::InvalidUrl(err.to_string()))?;
        Self::from_client(client)
    }

    /// A store on the server a [`Client`] points at (opened lazily, like [`RedisStore::from_url`]).
    pub fn from_client(client: Client) -> Result<Self, Error> {
        let config = ConnectionManagerConfig::new()
            // The layer puts its own, much shorter, deadline on every call of the request path;
            // these bound the background work (reconnects and writes) only.
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|err| Error::InvalidUrl(err.to_string()))?;
        Ok(RedisStore {
            connection,
            client: Some(client),
            demoted: Arc::default(),
        })
    }

    /// A store on an existing connection manager (its own settings are kept).
    ///
    /// Such a store cannot open a pub/sub connection of its own, so fill and purge events
    /// between instances need [`RedisStore::with_events_client`].
    pub fn from_connection_manager(connection: ConnectionManager) -> Self {
        RedisStore {
            connection,
            client: None,
            demoted: Arc::default(),
        }
    }

    /// The client the store opens its pub/sub connection with (for fill and purge events).
    pub fn with_events_client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// A clone of the underlying connection, for commands of your own.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }
}

impl RedisStore {
    /// The store error for `err`. A `READONLY` reply means the server was demoted to a replica
    /// while the connection stayed open: the connection is closed (at most once a second), so
    /// that the next request opens a new one, which finds the new primary wherever the URL's
    /// name now points (a managed service's endpoint moves on failover). Reads meanwhile go on
    /// against the replica.
    fn failed(&self, err: &RedisError) -> StoreError {
        let error = classify(err);
        if error.kind() == StoreErrorKind::ReadOnly {
            self.reopen_after_demotion();
        }
        error
    }

    fn reopen_after_demotion(&self) {
        let demoted = &self.demoted;
        let now = u64::try_from(demoted.since.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = demoted.last_close_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX
            || now.saturating_sub(last) >= REOPEN_AFTER_READONLY.as_millis() as u64;
        if !due
            || demoted
                .last_close_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        tracing::warn!(
            target: "tower_response_cache",
            "the Redis server answered READONLY (demoted to a replica): reconnecting to find the primary"
        );
        let mut connection = self.connection.clone();
        tokio::spawn(async move {
            // The server answers and closes the connection; the manager then opens a new one.
            let _ = redis::cmd("QUIT")
                .query_async::<redis::Value>(&mut connection)
                .await;
        });
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

/// Sort a redis error into the kinds the request path acts on, using the crate's own
/// predicates and the server's error code (never the message text).
pub(crate) fn classify(err: &RedisError) -> StoreError {
    let kind = if err.is_timeout() {
        StoreErrorKind::Timeout
    } else if err.is_io_error() || err.is_connection_refusal() || err.is_connection_dropped() {
        StoreErrorKind::Unavailable
    } else {
        match err.code() {
            Some("LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "BUSY") => {
                StoreErrorKind::Busy
            }
            Some("OOM") => StoreErrorKind::OutOfMemory,
            Some("READONLY") => StoreErrorKind::ReadOnly,
            Some("WRONGTYPE") => StoreErrorKind::Corrupt,
            Some("NOAUTH" | "NOPERM" | "WRONGPASS" | "CROSSSLOT") => StoreErrorKind::Misconfigured,
            _ => match err.kind() {
                redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig => {
                    StoreErrorKind::Misconfigured
                }
                redis::ErrorKind::UnexpectedReturnType => StoreErrorKind::Corrupt,
                _ => StoreErrorKind::Other,
            },
        }
    };
    StoreError::new(kind, err.category().to_owned())
}

impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
                .map_err(|err| self.failed(&err))?;
            Ok(value.map(Bytes::from))
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        let mut connection = self.connection.clone();
        let seconds = ttl.as_secs().max(1);
        Box::pin(async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value.as_ref())
                .arg("EX")
                .arg(seconds)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|err| self.failed(&err))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            redis::cmd("UNLINK")
                .arg(key)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|err| self.failed(&err))
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            redis::cmd("PING")
                .query_async::<()>(&mut connection)
                .await
                .map_err(|err| self.failed(&err))
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
        let mut connection = self.connection.clone();
        Box::pin(async move {
            // Both keys carry the path's hash tag, so this is one slot even on a cluster.
            let (value, generation): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("MGET")
                .arg(key)
                .arg(generation_key)
                .query_async(&mut connection)
                .await
                .map_err(|err| self.failed(&err))?;
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
        let mut connection = self.connection.clone();
        let seconds = ttl.as_secs().max(1);
        Box::pin(async move {
            let written: i64 = FENCED_PUT
                .key(key)
                .key(generation_key)
                .arg(value.as_ref())
                .arg(generation.to_string())
                .arg(seconds)
                .invoke_async(&mut connection)
                .await
                .map_err(|err| self.failed(&err))?;
            Ok(written == 1)
        })
    }

    fn bump_generation<'a>(
        &'a self,
        generation_key: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, u64> {
        let mut connection = self.connection.clone();
        let seconds = ttl.as_secs().max(1);
        Box::pin(async move {
            let next: u64 = BUMP_GENERATION
                .key(generation_key)
                .arg(seconds)
                .invoke_async(&mut connection)
                .await
                .map_err(|err| self.failed(&err))?;
            Ok(next)
        })
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let mut connection = self.connection.clone();
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Box::pin(async move {
            let taken: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(millis)
                .query_async(&mut connection)
                .await
                .map_err(|err| self.failed(&err))?;
            Ok(taken.is_some())
        })
    }

    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, bool> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            let deleted: i64 = UNLOCK
                .key(key)
                .arg(token)
                .invoke_async(&mut connection)
                .await
                .map_err(|err| self.failed(&err))?;
            Ok(deleted == 1)
        })
    }

    fn publish<'a>(&'a self, channel: &'a str, message: Bytes) -> StoreFuture<'a, ()> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message.as_ref())
                .query_async::<()>(&mut connection)
                .await
                .map_err(|err| self.failed(&err))
        })
    }

    fn scan_prefix<'a>(
        &'a self,
        prefix: &'a str,
        cursor: u64,
        count: usize,
    ) -> StoreFuture<'a, (u64, Vec<String>)> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            let pattern = format!("{}*", glob_escape(prefix));
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count.max(1))
                .query_async(&mut connection)
                .await
                .map_err(|err| self.failed(&err))
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, u64> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(0);
            }
            redis::cmd("UNLINK")
                .arg(keys)
                .query_async(&mut connection)
                .await
                .map_err(|err| self.failed(&err))
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(keys)
                .query_async(&mut connection)
                .await
                .map_err(|err| self.failed(&err))?;
            Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
        })
    }

    fn tag_add<'a>(
        &'a self,
        tag_key: &'a str,
        member: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        let mut connection = self.connection.clone();
        let seconds = ttl.as_secs().max(1);
        Box::pin(async move {
            TAG_ADD
                .key(tag_key)
                .arg(member)
                .arg(seconds)
                .invoke_async::<()>(&mut connection)
                .await
                .map_err(|err| self.failed(&err))
        })
    }

    fn tag_members<'a>(
        &'a self,
        tag_key: &'a str,
        cursor: u64,
        count: usize,
    ) -> StoreFuture<'a, (u64, Vec<String>)> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            redis::cmd("SSCAN")
                .arg(tag_key)
                .arg(cursor)
                .arg("COUNT")
                .arg(count.max(1))
                .query_async(&mut connection)
                .await
                .map_err(|err| self.failed(&err))
        })
    }

    fn subscribe(&self, channel: &str) -> Option<mpsc::Receiver<Bytes>> {
        let client = self.client.clone()?;
        let (sender, receiver) = mpsc::channel(1024);
        tokio::spawn(listen(client, channel.to_owned(), sender));
        Some(receiver)
    }
}

/// A path generation as read from the store: absent is 0; a value that is not a number was not
/// written by this crate, so it fences every write (`u64::MAX` never matches).
pub(crate) fn parse_generation(raw: Option<Vec<u8>>) -> u64 {
    match raw {
        None => 0,
        Some(raw) => std::str::from_utf8(&raw)
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(u64::MAX),
    }
}

/// Escape the glob characters of a key prefix for `SCAN MATCH`.
pub(crate) fn glob_escape(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Keep a subscription to `channel` open, reconnecting with a capped back-off, until the
/// receiving side is dropped.
async fn listen(client: Client, channel: String, sender: mpsc::Sender<Bytes>) {
    let mut delay = Duration::from_millis(50);
    loop {
        if sender.is_closed() {
            return;
        }
        if let Some(pubsub) = subscribe(&client, &channel).await {
            delay = Duration::from_millis(50);
            if !relay(pubsub, &sender, std::future::pending()).await {
                return;
            }
            tracing::debug!(target: "tower_response_cache", "event subscription lost; reconnecting");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// A subscription to `channel` on `client`, or `None` when it cannot be opened within two
/// seconds.
pub(crate) async fn subscribe(client: &Client, channel: &str) -> Option<redis::aio::PubSub> {
    let connected = tokio::time::timeout(Duration::from_secs(2), async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, RedisError>(pubsub)
    })
    .await;
    match connected {
        Ok(Ok(pubsub)) => Some(pubsub),
        _ => None,
    }
}

/// Pass the messages of `pubsub` on to `sender` until the subscription ends or `stop`
/// completes (`true`: subscribe again), or until the receiving side is gone (`false`).
pub(crate) async fn relay(
    mut pubsub: redis::aio::PubSub,
    sender: &mpsc::Sender<Bytes>,
    stop: impl std::future::Future<Output = ()>,
) -> bool {
    use futures_util::StreamExt;

    let mut messages = pubsub.on_message();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => {
                    let payload = Bytes::copy_from_slice(message.get_payload_bytes());
                    if sender.send(payload).await.is_err() {
                        return false;
                    }
                }
                None => return true,
            },
            () = sender.closed() => return false,
            () = &mut stop => return true,
        }
    }
}

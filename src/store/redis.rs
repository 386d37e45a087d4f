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
/// then closes the connection, and the next one is opened to wherever the URL's host name points
/// now (a managed service moves its primary endpoint on failover). With a fixed address, that is
/// the same server again: writes keep failing while it stays a replica, and the closes come
/// further apart (1 s, 2 s, 4 s, ... 30 s). A store made with
/// [`RedisStore::from_connection_manager`] never closes the application's connection. Behind Redis Sentinel, use `RedisSentinelStore` (feature `sentinel`) instead: it asks
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
    /// Whether the store opened the connection itself (and may close it).
    owns_connection: bool,
}

/// The first wait between two closes of a demoted server's connection, in milliseconds.
const REOPEN_FIRST_MS: u64 = 1000;
/// The longest wait between two closes.
const REOPEN_LONGEST_MS: u64 = 30_000;
/// A close this long after the previous one starts a new episode (back to the first wait).
const REOPEN_EPISODE_MS: u64 = 120_000;

/// When the connection was last closed because its server had become a replica.
#[derive(Debug)]
struct Demoted {
    since: Instant,
    /// Milliseconds after `since` of the last close; `u64::MAX` before the first.
    last_close_ms: AtomicU64,
    /// The wait before the next close may happen.
    interval_ms: AtomicU64,
}

impl Default for Demoted {
    fn default() -> Self {
        Demoted {
            since: Instant::now(),
            last_close_ms: AtomicU64::new(u64::MAX),
            interval_ms: AtomicU64::new(REOPEN_FIRST_MS),
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

/// The commands the Redis stores send, written once. Each store brings its connection (the
/// cluster store one routed to the key's slot, so that scripts run there) and maps the errors
/// its own way.
pub(crate) mod command {
    use std::time::Duration;

    use redis::aio::ConnectionLike;
    use redis::RedisResult;

    use super::{BUMP_GENERATION, FENCED_PUT, UNLOCK};

    /// Writes `value` under `key` for `ttl` if `generation_key` still holds `generation`.
    pub(crate) async fn fenced_put<C: ConnectionLike + Send>(
        connection: &mut C,
        key: &str,
        generation_key: &str,
        value: &[u8],
        generation: u64,
        ttl: Duration,
    ) -> RedisResult<bool> {
        let written: i64 = FENCED_PUT
            .key(key)
            .key(generation_key)
            .arg(value)
            .arg(generation.to_string())
            .arg(ttl.as_secs().max(1))
            .invoke_async(connection)
            .await?;
        Ok(written == 1)
    }

    /// Adds one to the generation under `generation_key` (kept for `ttl`); the new value.
    pub(crate) async fn bump_generation<C: ConnectionLike + Send>(
        connection: &mut C,
        generation_key: &str,
        ttl: Duration,
    ) -> RedisResult<u64> {
        BUMP_GENERATION
            .key(generation_key)
            .arg(ttl.as_secs().max(1))
            .invoke_async(connection)
            .await
    }

    /// `SET key token NX PX ttl`: whether the lock was taken.
    pub(crate) async fn try_lock<C: ConnectionLike + Send>(
        connection: &mut C,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> RedisResult<bool> {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let taken: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(millis)
            .query_async(connection)
            .await?;
        Ok(taken.is_some())
    }

    /// Deletes the lock under `key` if it still holds `token`: whether it did.
    pub(crate) async fn unlock<C: ConnectionLike + Send>(
        connection: &mut C,
        key: &str,
        token: &str,
    ) -> RedisResult<bool> {
        let deleted: i64 = UNLOCK.key(key).arg(token).invoke_async(connection).await?;
        Ok(deleted == 1)
    }

    /// `PUBLISH channel message`.
    pub(crate) async fn publish<C: ConnectionLike + Send>(
        connection: &mut C,
        channel: &str,
        message: &[u8],
    ) -> RedisResult<()> {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(message)
            .query_async(connection)
            .await
    }
}

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
            owns_connection: true,
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
            owns_connection: false,
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
    /// while the connection stayed open: the connection is closed, so that the next request
    /// opens a new one, which finds the new primary wherever the URL's name now points (a managed
    /// service's endpoint moves on failover). Reads meanwhile go on against the replica.
    ///
    /// The close cuts the commands in flight on the connection; their errors, in the second
    /// after it, are reported as `ReadOnly` too, so that they do not open the circuit breaker
    /// (they are the demotion's doing, not a sick store). While the server stays a replica the
    /// closes come further and further apart: 1 s, 2 s, 4 s, ... up to 30 s.
    fn failed(&self, err: &RedisError) -> StoreError {
        let error = classify(err);
        match error.kind() {
            StoreErrorKind::ReadOnly => self.reopen_after_demotion(),
            StoreErrorKind::Unavailable if self.demoted.just_closed() => {
                return StoreError::new(
                    StoreErrorKind::ReadOnly,
                    "connection closed for a demotion",
                );
            }
            _ => {}
        }
        error
    }

    fn reopen_after_demotion(&self) {
        if !self.owns_connection || tokio::runtime::Handle::try_current().is_err() {
            // A connection manager the application gave us is the application's to manage.
            return;
        }
        if !self.demoted.close_due() {
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

impl Demoted {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Whether the connection was closed for a demotion less than a second ago.
    fn just_closed(&self) -> bool {
        let last = self.last_close_ms.load(Ordering::Relaxed);
        last != u64::MAX && self.now_ms().saturating_sub(last) < 1000
    }

    /// Whether it is time to close the connection again (and if so, the close is booked: only
    /// one caller gets `true`).
    fn close_due(&self) -> bool {
        let now = self.now_ms();
        let last = self.last_close_ms.load(Ordering::Relaxed);
        let interval = self.interval_ms.load(Ordering::Relaxed);
        let since_last = now.saturating_sub(last);
        if last != u64::MAX && since_last < interval {
            return false;
        }
        if self
            .last_close_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // A new episode (or the first) starts from the shortest interval; within one, each
        // close waits twice as long as the one before.
        let next = if last == u64::MAX || since_last > REOPEN_EPISODE_MS {
            REOPEN_FIRST_MS
        } else {
            interval.saturating_mul(2).min(REOPEN_LONGEST_MS)
        };
        self.interval_ms.store(next, Ordering::Relaxed);
        true
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
        Box::pin(async move {
            command::fenced_put(
                &mut connection,
                key,
                generation_key,
                &value,
                generation,
                ttl,
            )
            .await
            .map_err(|err| self.failed(&err))
        })
    }

    fn bump_generation<'a>(
        &'a self,
        generation_key: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, u64> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            command::bump_generation(&mut connection, generation_key, ttl)
                .await
                .map_err(|err| self.failed(&err))
        })
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            command::try_lock(&mut connection, key, token, ttl)
                .await
                .map_err(|err| self.failed(&err))
        })
    }

    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, bool> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            command::unlock(&mut connection, key, token)
                .await
                .map_err(|err| self.failed(&err))
        })
    }

    fn publish<'a>(&'a self, channel: &'a str, message: Bytes) -> StoreFuture<'a, ()> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            command::publish(&mut connection, channel, &message)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn demoted_ten_minutes_ago() -> Demoted {
        Demoted {
            since: Instant::now() - Duration::from_secs(600),
            ..Demoted::default()
        }
    }

    #[test]
    fn closes_for_a_demotion_come_further_apart_and_start_over_later() {
        let demoted = demoted_ten_minutes_ago();
        assert!(!demoted.just_closed());
        assert!(demoted.close_due());
        assert!(demoted.just_closed());
        assert!(!demoted.close_due(), "a second close at once");
        let interval = |d: &Demoted| d.interval_ms.load(Ordering::Relaxed);
        assert_eq!(interval(&demoted), REOPEN_FIRST_MS);
        let mut expected = REOPEN_FIRST_MS;
        for _ in 0..8 {
            let ago = interval(&demoted);
            demoted
                .last_close_ms
                .store(demoted.now_ms() - ago, Ordering::Relaxed);
            assert!(demoted.close_due());
            expected = (expected * 2).min(REOPEN_LONGEST_MS);
            assert_eq!(interval(&demoted), expected);
        }
        assert_eq!(interval(&demoted), REOPEN_LONGEST_MS);
        // Long after the last close, a new episode starts from the first wait.
        demoted
            .last_close_ms
            .store(demoted.now_ms() - REOPEN_EPISODE_MS - 1, Ordering::Relaxed);
        assert!(demoted.close_due());
        assert_eq!(interval(&demoted), REOPEN_FIRST_MS);
    }
}

//! The Redis store: one multiplexed, self-reconnecting connection shared by every request.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};

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
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| Error::InvalidUrl(err.to_string()))?;
        Ok(RedisStore { connection })
    }

    /// A store on an existing connection manager (its own settings are kept).
    pub fn from_connection_manager(connection: ConnectionManager) -> Self {
        RedisStore { connection }
    }

    /// A clone of the underlying connection, for commands of your own.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
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
                .map_err(|err| classify(&err))?;
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
                .map_err(|err| classify(&err))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            redis::cmd("UNLINK")
                .arg(key)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|err| classify(&err))
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            redis::cmd("PING")
                .query_async::<()>(&mut connection)
                .await
                .map_err(|err| classify(&err))
        })
    }
}

//! The crate's error types.
//!
//! Two kinds of failure exist. [`Error`] is what the public API returns when something cannot be
//! built or configured (a malformed URL, a bad environment variable, an unreachable store during
//! an explicit health check). [`StoreError`] is what a [`Store`](crate::store::Store) returns; the
//! request path never shows it to a client: it becomes a bypass, a counter and a `tracing` event.

use std::fmt;

/// What went wrong when configuring or building the cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An environment variable holds a value that cannot be used.
    #[error("environment variable {name} is malformed: {reason}")]
    InvalidEnv {
        /// The variable's name.
        name: &'static str,
        /// Why its value was refused.
        reason: String,
    },
    /// A store URL cannot be used.
    #[error("invalid store URL: {0}")]
    InvalidUrl(String),
    /// A purge request cannot be carried out (a malformed URL, path or tag).
    #[error("invalid purge: {0}")]
    InvalidPurge(String),
    /// A route rule is malformed.
    #[error(transparent)]
    Route(#[from] crate::policy::RouteError),
    /// The store reported an error (for example during [`CacheLayer::ping`](crate::CacheLayer::ping)).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a store failed: each kind decides what the request path does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store could not be reached: connection refused, dropped or not yet established.
    Unavailable,
    /// The call did not finish within its deadline.
    Timeout,
    /// The store is temporarily unable to serve (loading, cluster down, try again).
    Busy,
    /// The store is out of memory and refuses writes.
    OutOfMemory,
    /// The node refuses writes because it is a replica.
    ReadOnly,
    /// The stored value has the wrong type or shape.
    Corrupt,
    /// The store refuses the client: authentication, permissions or key routing are wrong.
    Misconfigured,
    /// The circuit breaker is open: the store is skipped for a cool-down.
    BreakerOpen,
    /// Anything else.
    Other,
}

impl StoreErrorKind {
    /// A short, stable name for logs and counters.
    pub fn as_str(&self) -> &'static str {
        match self {
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::Busy => "busy",
            StoreErrorKind::OutOfMemory => "oom",
            StoreErrorKind::ReadOnly => "readonly",
            StoreErrorKind::Corrupt => "corrupt",
            StoreErrorKind::Misconfigured => "misconfigured",
            StoreErrorKind::BreakerOpen => "breaker-open",
            StoreErrorKind::Other => "other",
        }
    }

    /// Whether the failure is expected to pass by itself (the breaker counts these).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreErrorKind::Unavailable
                | StoreErrorKind::Timeout
                | StoreErrorKind::Busy
                | StoreErrorKind::OutOfMemory
                | StoreErrorKind::ReadOnly
        )
    }
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from a [`Store`](crate::store::Store).
#[derive(Debug, Clone, thiserror::Error)]
#[error("store error ({kind}): {message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    /// A new error of the given kind with a message (never include request data in it).
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    /// The error's kind.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The error's message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A timeout error.
    pub fn timeout() -> Self {
        StoreError::new(StoreErrorKind::Timeout, "deadline elapsed")
    }
}

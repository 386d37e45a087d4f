//! The purge router for Axum (feature `axum`): an authenticated `POST /purge` endpoint over a
//! [`Purger`].
//!
//! [`PurgeRouter`] turns a purger and a bearer token into an [`axum::Router`] with one route,
//! `POST /purge`. Its body is the public purge schema of the events channel (see the
//! [`purge`](crate::purge) module):
//!
//! ```text
//! {"purge":{"url":"/users/42?full=1"}}   one request's entries, every Vary variant
//! {"purge":{"path":"/users/42"}}         every query and variant of a path
//! {"purge":{"tag":"user:42"}}            every entry stored with the tag
//! {"purge":{"all":true}}                 everything in the namespace (only with allow_all)
//! ```
//!
//! # Answers
//!
//! | status | when |
//! |---|---|
//! | 200 | the purge ran; the body is `{"removed":N,"generation_bumped":bool,"complete":bool}` |
//! | 400 | the body is not JSON, not exactly `{"purge":{...}}` with one known kind, or too broad or malformed (an empty tag, a path that is empty, `/` or does not start with `/`, a URL that cannot be parsed) |
//! | 401 | no `Authorization: Bearer ...` credentials; the answer carries `WWW-Authenticate: Bearer` |
//! | 403 | a wrong token, or `{"all":true}` when [`PurgeRouter::allow_all`] is off |
//! | 413 | a body over [`MAX_BODY_SIZE`] (64 KiB) |
//! | 429 | over the rate limit ([`PurgeRouter::rate_limit`]); the answer carries `Retry-After` |
//!
//! A purge whose store steps partly failed (the store was down or slow for some of its batches)
//! is still a `200`, with `"complete":false`: this process's own state, and with it the fences
//! that stop in-flight fills, was purged, and any path purge that bumped its generation
//! (`"generation_bumped":true`) already hides the entries it could not delete. Repeating the
//! request is safe. Error answers carry `{"error":"..."}`; every answer carries
//! `Cache-Control: no-store`.
//!
//! Authentication comes first: requests without the right token learn nothing else and use no
//! part of the rate limit. Every authenticated request, valid or not, takes one purge from it.
//!
//! # Example
//!
//! The router is an ordinary [`axum::Router`]: nest it where the admin API lives. Add it *after*
//! the cache layer (a layer wraps only the routes added before it), so purges do not go through
//! the cache.
//!
//! ```
//! use axum::{body::Body, routing::get, Router};
//! use http::{Request, StatusCode};
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//! use tower_response_cache::admin::PurgeRouter;
//! use tower_response_cache::{CacheLayer, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cache = CacheLayer::new(MemoryStore::new());
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "a user" }))
//!     .layer(cache.clone())
//!     .nest("/admin", PurgeRouter::new(cache.purger(), "a-long-random-token").into_router());
//!
//! let request = Request::post("/admin/purge")
//!     .header("authorization", "Bearer a-long-random-token")
//!     .body(Body::from(r#"{"purge":{"tag":"user:42"}}"#))
//!     .unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(&body[..], br#"{"removed":0,"generation_bumped":false,"complete":true}"#);
//! # }
//! ```
//!
//! In an app whose router has a state, give it its state first and nest afterwards, or mount the
//! purge router with [`Router::nest_service`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::purge::{PurgeReport, PurgeTarget, Purger};

/// Largest request body the purge endpoint reads: 64 KiB. Larger bodies are answered with
/// `413 Payload Too Large`.
pub const MAX_BODY_SIZE: usize = 64 * 1024;

/// Purges per second allowed by default (see [`PurgeRouter::rate_limit`]).
pub const DEFAULT_RATE_LIMIT: u32 = 10;

/// Builds the authenticated purge endpoint; see the [module documentation](self) for the
/// protocol.
///
/// The token is kept only as a SHA-256 digest, and `Debug` does not print it.
#[derive(Clone)]
pub struct PurgeRouter {
    purger: Purger,
    token_digest: [u8; 32],
    allow_all: bool,
    per_second: u32,
}

impl std::fmt::Debug for PurgeRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PurgeRouter")
            .field("token", &"set")
            .field("allow_all", &self.allow_all)
            .field("rate_limit", &self.per_second)
            .finish_non_exhaustive()
    }
}

impl PurgeRouter {
    /// A purge endpoint that accepts `Authorization: Bearer <token>`, refuses `{"all":true}`
    /// and allows [`DEFAULT_RATE_LIMIT`] purges per second.
    ///
    /// # Panics
    ///
    /// If the token is unusable: see [`PurgeRouter::try_new`], which returns the error instead.
    pub fn new(purger: Purger, token: impl Into<String>) -> Self {
        match Self::try_new(purger, token) {
            Ok(router) => router,
            Err(err) => panic!("PurgeRouter::new: {err}"),
        }
    }

    /// Like [`PurgeRouter::new`], but an unusable token is an [`Error::InvalidPurge`] instead
    /// of a panic. A token must be non-empty and made only of visible ASCII characters (no
    /// spaces), so that it can travel in an `Authorization` header as it is.
    pub fn try_new(purger: Purger, token: impl Into<String>) -> Result<Self, Error> {
        let token = token.into();
        if token.is_empty() {
            return Err(Error::InvalidPurge("the purge token is empty".to_owned()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidPurge(
                "the purge token must be visible ASCII without spaces".to_owned(),
            ));
        }
        Ok(PurgeRouter {
            purger,
            token_digest: digest(token.as_bytes()),
            allow_all: false,
            per_second: DEFAULT_RATE_LIMIT,
        })
    }

    /// Whether `{"purge":{"all":true}}` is carried out (default `false`: it is refused with
    /// `403 Forbidden`, since one request would empty the whole namespace).
    pub fn allow_all(mut self, allow: bool) -> Self {
        self.allow_all = allow;
        self
    }

    /// How many purges per second the endpoint accepts (default [`DEFAULT_RATE_LIMIT`]); more
    /// are answered with `429 Too Many Requests`. It is a token bucket holding one second's
    /// worth, so bursts up to `per_second` pass at once. `0` counts as `1`. The limit belongs
    /// to the router made by [`PurgeRouter::into_router`], in this process: each instance of a
    /// service has its own.
    pub fn rate_limit(mut self, per_second: u32) -> Self {
        self.per_second = per_second.max(1);
        self
    }

    /// The router, with its one route `POST /purge`.
    pub fn into_router(self) -> Router {
        let shared = Arc::new(Shared {
            bucket: Mutex::new(Bucket::new(self.per_second, Instant::now())),
            purger: self.purger,
            token_digest: self.token_digest,
            allow_all: self.allow_all,
        });
        Router::new()
            .route("/purge", post(handle))
            .with_state(shared)
    }
}

/// What every request of one router shares.
struct Shared {
    purger: Purger,
    token_digest: [u8; 32],
    allow_all: bool,
    bucket: Mutex<Bucket>,
}

impl Shared {
    fn take_purge(&self) -> bool {
        let mut bucket = match self.bucket.lock() {
            Ok(bucket) => bucket,
            Err(poisoned) => poisoned.into_inner(),
        };
        bucket.try_take(Instant::now())
    }
}

/// Credit units per purge: the bucket counts in purge-nanoseconds so refills stay exact.
const CREDIT_PER_PURGE: u128 = 1_000_000_000;

/// A token bucket refilled continuously at `per_second` purges per second, holding at most
/// `per_second` purges.
#[derive(Debug)]
struct Bucket {
    per_second: u32,
    credit: u128,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    fn new(per_second: u32, now: Instant) -> Self {
        Bucket {
            per_second,
            credit: Self::capacity(per_second),
            last: now,
        }
    }

    fn capacity(per_second: u32) -> u128 {
        u128::from(per_second).saturating_mul(CREDIT_PER_PURGE)
    }

    /// Take one purge if there is one left at `now`.
    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = self.last.max(now);
        let refill = elapsed.saturating_mul(u128::from(self.per_second));
        self.credit = self
            .credit
            .saturating_add(refill)
            .min(Self::capacity(self.per_second));
        match self.credit.checked_sub(CREDIT_PER_PURGE) {
            Some(left) => {
                self.credit = left;
                true
            }
            None => false,
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compare two digests without stopping at the first difference.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the credentials of a request are worth.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    Missing,
    Wrong,
    Right,
}

fn check_credentials(headers: &HeaderMap, expected: &[u8; 32]) -> Credentials {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Credentials::Missing;
    };
    let Ok(text) = value.to_str() else {
        return Credentials::Missing;
    };
    let Some((scheme, token)) = text.trim().split_once(' ') else {
        return Credentials::Missing;
    };
    let token = token.trim_start_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Credentials::Missing;
    }
    if same_digest(&digest(token.as_bytes()), expected) {
        Credentials::Right
    } else {
        Credentials::Wrong
    }
}

/// A JSON answer that no cache keeps.
fn answer(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    answer(status, serde_json::json!({ "error": reason }).to_string())
}

fn done(report: &PurgeReport) -> Response {
    // Written out so the fields keep the documented order.
    answer(
        StatusCode::OK,
        format!(
            r#"{{"removed":{},"generation_bumped":{},"complete":{}}}"#,
            report.removed,
            report.generation_bumped,
            report.is_complete()
        ),
    )
}

/// The target of a request body, or why it is refused.
fn parse_target(body: &[u8]) -> Result<PurgeTarget, &'static str> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "the body is not valid JSON")?;
    let object = value
        .as_object()
        .filter(|object| object.len() == 1)
        .ok_or(r#"expected {"purge":{...}}"#)?;
    let inner = object.get("purge").ok_or(r#"expected {"purge":{...}}"#)?;
    let target = PurgeTarget::from_json(inner)
        .ok_or(r#"expected exactly one of "url", "path", "tag" (strings) or "all": true"#)?;
    match &target {
        PurgeTarget::Path(path) if path.is_empty() => Err("the path is empty"),
        PurgeTarget::Path(path) if !path.starts_with('/') => Err("the path must start with /"),
        PurgeTarget::Path(path) if path.bytes().all(|b| b == b'/') => Err(
            r#"a path purge of / is refused as too broad; purge the root page with {"url":"/"}"#,
        ),
        PurgeTarget::Tag(tag) if tag.is_empty() => Err("the tag is empty"),
        PurgeTarget::Url(url) if url.is_empty() => Err("the URL is empty"),
        _ => Ok(target),
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    match check_credentials(&parts.headers, &shared.token_digest) {
        Credentials::Right => {}
        Credentials::Missing => {
            let mut response = refuse(StatusCode::UNAUTHORIZED, "bearer token required");
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"purge\""),
            );
            return response;
        }
        Credentials::Wrong => {
            tracing::info!(target: "tower_response_cache", "purge request with a wrong token refused");
            return refuse(StatusCode::FORBIDDEN, "wrong token");
        }
    }
    if !shared.take_purge() {
        let mut response = refuse(StatusCode::TOO_MANY_REQUESTS, "purge rate limit exceeded");
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_SIZE as u64) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the body is over 64 KiB");
    }
    let bytes = match Limited::new(body, MAX_BODY_SIZE).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the body is over 64 KiB");
        }
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "the body could not be read"),
    };
    let target = match parse_target(&bytes) {
        Ok(target) => target,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    if target == PurgeTarget::All && !shared.allow_all {
        return refuse(
            StatusCode::FORBIDDEN,
            "purging everything is not allowed on this endpoint",
        );
    }
    match shared.purger.purge(target).await {
        Ok(report) => {
            tracing::info!(
                target: "tower_response_cache",
                removed = report.removed,
                complete = report.is_complete(),
                "purge request carried out"
            );
            done(&report)
        }
        Err(Error::InvalidPurge(reason)) => refuse(StatusCode::BAD_REQUEST, &reason),
        Err(err) => {
            tracing::warn!(target: "tower_response_cache", error = %err, "purge request failed");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, "the purge failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_refills_at_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(2, start);
        assert!(bucket.try_take(start));
        assert!(bucket.try_take(start));
        assert!(!bucket.try_take(start));
        // Half a second at 2 per second is one purge.
        let later = start + Duration::from_millis(500);
        assert!(bucket.try_take(later));
        assert!(!bucket.try_take(later));
        // A long pause refills only up to the burst size.
        let much_later = later + Duration::from_secs(3600);
        assert!(bucket.try_take(much_later));
        assert!(bucket.try_take(much_later));
        assert!(!bucket.try_take(much_later));
        // A clock that seems to go backwards adds nothing.
        assert!(!bucket.try_take(start));
    }

    #[test]
    fn only_the_configured_bearer_token_is_right() {
        let expected = digest(b"t0ken");
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            check_credentials(&headers, &expected)
        };
        assert_eq!(
            check_credentials(&HeaderMap::new(), &expected),
            Credentials::Missing
        );
        assert_eq!(with("Bearer t0ken"), Credentials::Right);
        assert_eq!(with("bearer   t0ken"), Credentials::Right);
        assert_eq!(with("Bearer t0ke"), Credentials::Wrong);
        assert_eq!(with("Bearer t0ken2"), Credentials::Wrong);
        assert_eq!(with("Basic dDBrZW4="), Credentials::Missing);
        assert_eq!(with("Bearer"), Credentials::Missing);
        assert_eq!(with("Bearer "), Credentials::Missing);
    }

    #[test]
    fn request_bodies_follow_the_public_schema_and_broad_ones_are_refused() {
        assert_eq!(
            parse_target(br#"{"purge":{"tag":"user:42"}}"#),
            Ok(PurgeTarget::Tag("user:42".into()))
        );
        assert_eq!(
            parse_target(br#"{"purge":{"path":"/users/42"}}"#),
            Ok(PurgeTarget::Path("/users/42".into()))
        );
        assert_eq!(
            parse_target(br#"{"purge":{"url":"/"}}"#),
            Ok(PurgeTarget::Url("/".into()))
        );
        assert_eq!(
            parse_target(br#"{"purge":{"all":true}}"#),
            Ok(PurgeTarget::All)
        );
        for bad in [
            &br#"{"purge":{"path":""}}"#[..],
            br#"{"purge":{"path":"/"}}"#,
            br#"{"purge":{"path":"//"}}"#,
            br#"{"purge":{"path":"users/42"}}"#,
            br#"{"purge":{"tag":""}}"#,
            br#"{"purge":{"url":""}}"#,
            br#"{"purge":{"everything":true}}"#,
            br#"{"purge":{"tag":"a"},"source":"x"}"#,
            br#"{"purge":"/users/42"}"#,
            br#"{"tag":"a"}"#,
            br#"[]"#,
            b"{not json",
            b"",
        ] {
            assert!(
                parse_target(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[cfg(feature = "memory")]
    #[test]
    fn tokens_that_cannot_travel_in_a_header_are_refused() {
        let purger = crate::CacheLayer::new(crate::MemoryStore::new()).purger();
        assert!(PurgeRouter::try_new(purger.clone(), "").is_err());
        assert!(PurgeRouter::try_new(purger.clone(), "two words").is_err());
        assert!(PurgeRouter::try_new(purger.clone(), "line\nbreak").is_err());
        let router = PurgeRouter::try_new(purger, "s3cret-token").unwrap();
        assert!(!format!("{router:?}").contains("s3cret"));
    }
}

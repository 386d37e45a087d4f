//! gRPC specifics: opted-in unary methods, keys from the request message, and `grpc-status`.
//!
//! gRPC calls are POSTs whose answer lives partly in trailers, and whose errors usually arrive
//! as HTTP 200 with a non-zero `grpc-status`. The layer caches a gRPC call only when its method
//! was opted in with [`CacheLayer::grpc`](crate::CacheLayer::grpc):
//!
//! - the request message is read (up to the message limit, 64 KiB by default) and handed on to
//!   the inner service unchanged; a keyed digest of it goes into the key, so different messages
//!   get different entries; a larger message, or a request body type the layer cannot rebuild,
//!   bypasses the cache;
//! - request metadata named with [`GrpcMethod::key_metadata`] goes into the key too; calls with
//!   `authorization` metadata bypass unless [`GrpcMethod::allow_authorization`];
//! - only responses whose trailers say `grpc-status: 0` are stored; trailers-only responses
//!   (the status in the headers) and error statuses never are; a hit replays the headers, the
//!   body and the trailers exactly.
//!
//! Opt in unary methods only: a streaming method's response would be stored as one body.
//!
//! The request body types the layer can rebuild are `tonic::body::Body` (feature `tonic`),
//! `axum::body::Body` (feature `axum`) and `http_body_util::Full<Bytes>`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_response_cache::{grpc::GrpcMethod, CacheLayer, MemoryStore};
//!
//! let layer = CacheLayer::new(MemoryStore::new())
//!     .grpc(GrpcMethod::exact("/shop.Catalog/GetProduct").ttl(Duration::from_secs(30)))
//!     .grpc(GrpcMethod::service("shop.Prices").key_metadata("x-currency".parse().unwrap()));
//! // Server::builder().layer(layer).add_service(...)
//! # let _ = layer;
//! ```

use std::any::Any;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Request};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

/// Which calls of a gRPC method are cached, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMethod {
    pattern: Pattern,
    ttl: Option<Duration>,
    key_metadata: Vec<HeaderName>,
    allow_authorization: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Service(String),
}

impl GrpcMethod {
    fn new(pattern: Pattern) -> Self {
        GrpcMethod {
            pattern,
            ttl: None,
            key_metadata: Vec::new(),
            allow_authorization: false,
        }
    }

    /// One method, by its path: `/package.Service/Method`.
    pub fn exact(path: &str) -> Self {
        Self::new(Pattern::Exact(path.to_owned()))
    }

    /// Every method of a service: `package.Service`.
    pub fn service(name: &str) -> Self {
        Self::new(Pattern::Service(format!("/{}/", name.trim_matches('/'))))
    }

    /// How long answers live (clamped like every TTL); the layer's default TTL otherwise.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Request metadata that changes the answer and so goes into the key (like `Vary`).
    pub fn key_metadata(mut self, name: HeaderName) -> Self {
        self.key_metadata.push(name);
        self
    }

    /// Cache calls that carry `authorization` metadata too (the answer is then shared by every
    /// caller: add the caller to the key with [`GrpcMethod::key_metadata`] where it matters).
    pub fn allow_authorization(mut self) -> Self {
        self.allow_authorization = true;
        self
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        match &self.pattern {
            Pattern::Exact(exact) => path == exact,
            Pattern::Service(prefix) => path
                .strip_prefix(prefix.as_str())
                .is_some_and(|method| !method.is_empty() && !method.contains('/')),
        }
    }

    pub(crate) fn get_ttl(&self) -> Option<Duration> {
        self.ttl
    }

    pub(crate) fn metadata(&self) -> &[HeaderName] {
        &self.key_metadata
    }

    pub(crate) fn allows_authorization(&self) -> bool {
        self.allow_authorization
    }
}

/// Whether a request or response is gRPC (`application/grpc`, `application/grpc+proto`, ...).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v == "application/grpc"
                || v.starts_with("application/grpc+")
                || v.starts_with("application/grpc;")
        })
}

/// The status of a gRPC response, from its headers (a trailers-only response) or trailers.
fn grpc_status(headers: Option<&HeaderMap>) -> Option<&str> {
    headers?.get("grpc-status").and_then(|v| v.to_str().ok())
}

/// A trailers-only response: the status is in the headers (always an error, or an empty
/// answer that is not worth storing).
pub(crate) fn is_trailers_only(headers: &HeaderMap) -> bool {
    headers.contains_key("grpc-status")
}

/// Whether the trailers say the call succeeded.
pub(crate) fn succeeded(trailers: Option<&HeaderMap>) -> bool {
    grpc_status(trailers).is_some_and(|status| status.trim() == "0")
}

/// Whether a response body is exactly one length-prefixed gRPC message (a unary answer; a
/// streaming method's answer holds several, and is never stored).
pub(crate) fn is_single_message(body: &[u8]) -> bool {
    match body.get(1..5) {
        Some(&[a, b, c, d]) => {
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            body.len().checked_sub(5) == Some(len)
        }
        _ => false,
    }
}

/// A request after its message was read.
pub(crate) enum Captured<B> {
    /// The whole message, and the request rebuilt around it.
    Message(Request<B>, Bytes),
    /// The message is too large, failed, or the body type cannot be rebuilt: the request as it
    /// was (its body replays what was read).
    Uncacheable(Request<B>),
}

/// A body that replays the frames read so far, then the rest of the original.
#[cfg_attr(not(any(feature = "tonic", feature = "axum")), allow(dead_code))]
struct Replay<B> {
    read: VecDeque<Frame<Bytes>>,
    failed: Option<Box<dyn std::error::Error + Send + Sync>>,
    rest: Option<Pin<Box<B>>>,
}

impl<B> Body for Replay<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(frame) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(err) = self.failed.take() {
            return Poll::Ready(Some(Err(err)));
        }
        match self.rest.as_mut() {
            None => Poll::Ready(None),
            Some(rest) => rest.as_mut().poll_frame(cx).map_err(Into::into),
        }
    }
}

/// Read a body up to `limit` bytes of data: the complete data, or `None` (too large, trailers,
/// or an error), and a body that replays exactly what the original would have produced.
#[cfg_attr(not(any(feature = "tonic", feature = "axum")), allow(dead_code))]
async fn read_up_to<B>(body: B, limit: usize) -> (Option<Bytes>, Replay<B>)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = Box::pin(body);
    let mut read: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut size = 0usize;
    loop {
        match body.frame().await {
            None => {
                let mut data = BytesMut::with_capacity(size);
                for frame in &read {
                    if let Some(chunk) = frame.data_ref() {
                        data.extend_from_slice(chunk);
                    }
                }
                let replay = Replay {
                    read,
                    failed: None,
                    rest: None,
                };
                return (Some(data.freeze()), replay);
            }
            Some(Ok(frame)) => {
                let stop = match frame.data_ref() {
                    Some(chunk) => {
                        size = size.saturating_add(chunk.len());
                        size > limit
                    }
                    // Request trailers: unusual for gRPC; not keyed, so not cached.
                    None => true,
                };
                read.push_back(frame);
                if stop {
                    let replay = Replay {
                        read,
                        failed: None,
                        rest: Some(body),
                    };
                    return (None, replay);
                }
            }
            Some(Err(err)) => {
                let replay = Replay {
                    read,
                    failed: Some(err.into()),
                    rest: None,
                };
                return (None, replay);
            }
        }
    }
}

/// Take the value out of `slot` if it holds a `T`.
fn take_as<T: 'static, B: 'static>(slot: &mut Option<B>) -> Option<T> {
    (slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
}

/// `value` as a `B`, if `T` is `B`.
fn give_as<T: 'static, B: 'static>(value: T) -> Option<B> {
    let mut value = Some(value);
    (&mut value as &mut dyn Any)
        .downcast_mut::<Option<B>>()
        .and_then(Option::take)
}

/// Read the request message (at most `limit` bytes) of a request whose body type the layer can
/// rebuild.
pub(crate) async fn capture<B>(request: Request<B>, limit: usize) -> Captured<B>
where
    B: Send + 'static,
{
    let (parts, body) = request.into_parts();
    let mut slot = Some(body);
    #[cfg(feature = "tonic")]
    if let Some(body) = take_as::<tonic::body::Body, B>(&mut slot) {
        let (message, replay) = read_up_to(body, limit).await;
        return rebuilt(parts, message, tonic::body::Body::new(replay));
    }
    #[cfg(feature = "axum")]
    if let Some(body) = take_as::<axum::body::Body, B>(&mut slot) {
        let (message, replay) = read_up_to(body, limit).await;
        return rebuilt(parts, message, axum::body::Body::new(replay));
    }
    if let Some(body) = take_as::<http_body_util::Full<Bytes>, B>(&mut slot) {
        let data = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let message = (data.len() <= limit).then(|| data.clone());
        return rebuilt(parts, message, http_body_util::Full::new(data));
    }
    match slot {
        Some(body) => Captured::Uncacheable(Request::from_parts(parts, body)),
        // Unreachable: every branch that took the body returned.
        None => unreachable_body(),
    }
}

fn rebuilt<T: 'static, B: 'static>(
    parts: http::request::Parts,
    message: Option<Bytes>,
    body: T,
) -> Captured<B> {
    match give_as::<T, B>(body) {
        Some(body) => {
            let request = Request::from_parts(parts, body);
            match message {
                Some(message) => Captured::Message(request, message),
                None => Captured::Uncacheable(request),
            }
        }
        None => unreachable_body(),
    }
}

#[cold]
fn unreachable_body() -> ! {
    // `take_as` and `give_as` are only ever paired on the same type.
    unreachable!("a request body was taken as one type and given back as another")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_match_exactly_or_by_service() {
        let exact = GrpcMethod::exact("/shop.Catalog/Get");
        assert!(exact.matches("/shop.Catalog/Get"));
        assert!(!exact.matches("/shop.Catalog/GetAll"));
        let service = GrpcMethod::service("shop.Catalog");
        assert!(service.matches("/shop.Catalog/Get"));
        assert!(!service.matches("/shop.Catalog/"));
        assert!(!service.matches("/shop.Catalog/a/b"));
        assert!(!service.matches("/shop.CatalogX/Get"));
    }

    #[test]
    fn only_status_zero_in_trailers_is_success() {
        let mut trailers = HeaderMap::new();
        assert!(!succeeded(Some(&trailers)));
        assert!(!succeeded(None));
        trailers.insert("grpc-status", "0".parse().unwrap());
        assert!(succeeded(Some(&trailers)));
        trailers.insert("grpc-status", "14".parse().unwrap());
        assert!(!succeeded(Some(&trailers)));
    }

    #[test]
    fn only_one_whole_message_counts_as_a_unary_answer() {
        assert!(is_single_message(&[0, 0, 0, 0, 2, 7, 7]));
        assert!(is_single_message(&[0, 0, 0, 0, 0]));
        assert!(!is_single_message(&[0, 0, 0, 0, 2, 7]));
        assert!(!is_single_message(&[0, 0, 0, 0, 1, 7, 0, 0, 0, 0, 1, 7]));
        assert!(!is_single_message(&[0, 0, 0]));
        assert!(!is_single_message(&[]));
    }

    #[test]
    fn grpc_content_types_are_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        for value in ["application/grpc", "application/grpc+proto"] {
            headers.insert(http::header::CONTENT_TYPE, value.parse().unwrap());
            assert!(is_grpc(&headers), "{value}");
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/grpcx".parse().unwrap(),
        );
        assert!(!is_grpc(&headers));
    }

    #[tokio::test]
    async fn a_full_body_is_read_and_rebuilt_unchanged() {
        let request = Request::new(http_body_util::Full::new(Bytes::from_static(b"message")));
        match capture(request, 64).await {
            Captured::Message(request, message) => {
                assert_eq!(message, Bytes::from_static(b"message"));
                let body = request.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, Bytes::from_static(b"message"));
            }
            Captured::Uncacheable(_) => panic!("the message fits the limit"),
        }
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_passed_on_whole() {
        let request = Request::new(http_body_util::Full::new(Bytes::from(vec![7u8; 100])));
        match capture(request, 10).await {
            Captured::Uncacheable(request) => {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.len(), 100);
            }
            Captured::Message(..) => panic!("the message is over the limit"),
        }
    }

    #[tokio::test]
    async fn a_body_type_that_cannot_be_rebuilt_is_left_alone() {
        let request = Request::new(String::from("text"));
        assert!(matches!(
            capture(request, 64).await,
            Captured::Uncacheable(_)
        ));
    }

    #[tokio::test]
    async fn a_streamed_body_over_the_limit_replays_every_byte() {
        let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..5)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; 10]))))
            .collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        let (message, replay) = read_up_to(body, 25).await;
        assert!(message.is_none());
        let all = replay.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 50);
        assert_eq!(all[49], 4);
    }
}

//! The response body type, and the teeing, size-limited collector that fills entries.
//!
//! [`CacheBody`] is what the layer's service answers with: the inner service's own body (on a
//! bypass, or for a response that will not be stored), the bytes of a stored entry (on a hit), or
//! the frames of a fill being forwarded as they arrive.
//!
//! A fill reads the inner body in a task of its own ([`pump`]), sends each frame on to the client
//! at once and keeps a copy until the copy would pass the size limit. The client therefore sees
//! the origin's bytes as they come, however large the body is; a body that outgrows the limit is
//! still delivered whole and is simply not stored. If the client goes away, the pump keeps
//! reading (while the body is still worth storing), so a cancelled request never aborts a fill
//! that other requests wait for.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::mpsc;

pin_project! {
    /// The body of every response that passes through the cache layer.
    ///
    /// Its data type is [`Bytes`]; its error type is the inner body's, so the layer never
    /// introduces an error of its own.
    pub struct CacheBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Forwarded {
            frames: mpsc::Receiver<Result<Frame<Bytes>, B::Error>>,
            hint: SizeHint,
            done: bool,
        },
    }
}

impl<B: Body> CacheBody<B> {
    /// The inner service's own body, passed through untouched.
    pub(crate) fn inner(body: B) -> Self {
        CacheBody {
            kind: Kind::Inner { body },
        }
    }

    /// A body made of stored bytes and trailers.
    pub(crate) fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let data = if data.is_empty() { None } else { Some(data) };
        CacheBody {
            kind: Kind::Full { data, trailers },
        }
    }

    /// An empty body (HEAD, 304, locally generated answers).
    pub(crate) fn empty() -> Self {
        CacheBody {
            kind: Kind::Full {
                data: None,
                trailers: None,
            },
        }
    }

    pub(crate) fn forwarded(
        frames: mpsc::Receiver<Result<Frame<Bytes>, B::Error>>,
        hint: SizeHint,
    ) -> Self {
        CacheBody {
            kind: Kind::Forwarded {
                frames,
                hint,
                done: false,
            },
        }
    }
}

impl<B: Body> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Full { .. } => "stored",
            Kind::Forwarded { .. } => "forwarded",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}

fn to_bytes<D: Buf>(mut data: D) -> Bytes {
    data.copy_to_bytes(data.remaining())
}

impl<B> Body for CacheBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame.map_data(to_bytes)))),
                Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            KindProj::Full { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Forwarded { frames, done, .. } => {
                if *done {
                    return Poll::Ready(None);
                }
                match frames.poll_recv(cx) {
                    Poll::Ready(Some(frame)) => Poll::Ready(Some(frame)),
                    Poll::Ready(None) => {
                        *done = true;
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Forwarded { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Forwarded { hint, .. } => *hint,
        }
    }
}

/// What a [`pump`] collected.
#[derive(Debug)]
pub(crate) enum Collected {
    /// The whole body, within the limit.
    Complete {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// The body passed the size limit: it was forwarded but not kept.
    TooLarge,
    /// The body failed mid-way, or it was abandoned: nothing may be stored from it.
    Incomplete,
}

/// Read `body` to its end, forwarding every frame to `to_client` and keeping a copy of up to
/// `limit` bytes. Stops early only when nothing is left to do: the client has gone and the copy
/// is already over the limit.
pub(crate) async fn pump<B>(
    body: B,
    to_client: mpsc::Sender<Result<Frame<Bytes>, B::Error>>,
    limit: usize,
) -> Collected
where
    B: Body,
{
    let mut body = std::pin::pin!(body);
    let mut client = Some(to_client);
    let mut kept = Some(BytesMut::new());
    let mut trailers = None;
    loop {
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(err)) => {
                if let Some(client) = client.take() {
                    let _ = client.send(Err(err)).await;
                }
                return Collected::Incomplete;
            }
        };
        let frame = frame.map_data(to_bytes);
        if let Some(data) = frame.data_ref() {
            if let Some(buffer) = kept.as_mut() {
                if buffer.len().saturating_add(data.len()) > limit {
                    kept = None;
                } else {
                    buffer.extend_from_slice(data);
                }
            }
        } else if let Some(t) = frame.trailers_ref() {
            trailers = Some(t.clone());
        }
        if let Some(sender) = client.as_ref() {
            if sender.send(Ok(frame)).await.is_err() {
                // The client left; keep reading only while the copy can still become an entry.
                client = None;
            }
        }
        if client.is_none() && kept.is_none() {
            return Collected::TooLarge;
        }
    }
    match kept {
        Some(buffer) => Collected::Complete {
            data: buffer.freeze(),
            trailers,
        },
        None => Collected::TooLarge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn a_stored_body_replays_data_then_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body: CacheBody<Full<Bytes>> =
            CacheBody::full(Bytes::from_static(b"hello"), Some(trailers.clone()));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello"));
    }

    #[tokio::test]
    async fn the_pump_forwards_everything_and_keeps_a_copy_within_the_limit() {
        let (tx, rx) = mpsc::channel(4);
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let client = CacheBody::<Full<Bytes>>::forwarded(rx, SizeHint::new());
        let (collected, received) = tokio::join!(pump(body, tx, 10), client.collect());
        assert_eq!(
            received.unwrap().to_bytes(),
            Bytes::from_static(b"0123456789")
        );
        match collected {
            Collected::Complete { data, .. } => assert_eq!(data, Bytes::from_static(b"0123456789")),
            other => panic!("expected a complete copy, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_delivered_whole_but_not_kept() {
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..10)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; 100]))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let (tx, rx) = mpsc::channel(2);
        let client = CacheBody::<Full<Bytes>>::forwarded(rx, SizeHint::new());
        let (collected, received) = tokio::join!(pump(body, tx, 550), client.collect());
        let received = received.unwrap().to_bytes();
        assert_eq!(received.len(), 1000);
        assert_eq!(received[999], 9);
        assert!(matches!(collected, Collected::TooLarge));
    }

    #[tokio::test]
    async fn the_pump_keeps_filling_after_the_client_leaves() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let body = Full::new(Bytes::from_static(b"abc"));
        match pump(body, tx, 10).await {
            Collected::Complete { data, .. } => assert_eq!(data, Bytes::from_static(b"abc")),
            other => panic!("expected a complete copy, got {other:?}"),
        }
    }
}

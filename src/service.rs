//! [`CacheService`], the Tower service: glue between the policy, keys, entries, store and fills.
//!
//! The request path, in order:
//!
//! 1. [`Policy::classify`](crate::policy::Policy::classify) on the request head. A bypass calls the
//!    inner service straight away; its future is a state of [`ResponseFuture`], unboxed, and
//!    costs no store I/O and no allocation.
//! 2. The request target is canonicalised ([`key`](crate::key)); a target that cannot be keyed
//!    safely is a bypass too.
//! 3. The store is read under the read deadline and the circuit breaker. A store error is a
//!    bypass. A hit that decodes, belongs to this request and is fresh answers the request; the
//!    readied inner service is dropped unused.
//! 4. A miss joins the key's fill ([`coalesce`](crate::coalesce)): the leader's fill runs in a
//!    task of its own, forwards the body to its client as it arrives and stores a copy in the
//!    background; followers answer with the stored copy, or call the inner service themselves
//!    when it could not be shared.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{AGE, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt;
use tower_service::Service;

use crate::body::{pump, CacheBody, Collected};
use crate::coalesce::{follow, FillOutcome, FlightGuard, Join};
use crate::conditional::{add_validators, freshen, is_not_modified, not_modified_headers};
use crate::entry::{StoredEntry, StoredResponse, VaryMarker};
use crate::events::Event;
use crate::grpc::GrpcMethod;
use crate::grpc::{
    capture, is_grpc, is_single_message, is_trailers_only, succeeded as grpc_succeeded, Captured,
};
use crate::headers::{CacheOutcome, CacheStatus};
use crate::key::{vary_values, CanonicalTarget, RequestKey};
use crate::layer::{Config, State};
use crate::policy::{
    is_hop_by_hop, vary_list, BypassReason, CacheControl, CacheTtl, Freshness, NotStorable,
    RequestDecision, RequestInfo, VaryList,
};
use crate::purge::{response_tags, Purger};
use crate::stats::bump;

/// Header name of RFC 9211's `Cache-Status`.
pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Frames a fill may run ahead of a slow client.
const FORWARD_BUFFER: usize = 16;

/// The service made by [`CacheLayer`](crate::CacheLayer): caches the responses of `S`.
///
/// Cloning is cheap (the inner service's clone and one `Arc`). `poll_ready` is the inner
/// service's; a request that is answered from the cache drops the readied inner service unused.
pub struct CacheService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for CacheService<S> {
    fn clone(&self) -> Self {
        CacheService {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> std::fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService").finish_non_exhaustive()
    }
}

impl<S> CacheService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>, state: Arc<State>) -> Self {
        CacheService {
            inner,
            shared: Arc::new(Shared { config, state }),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

type BoxedResponse<B, E> = Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

pin_project! {
    /// The future of [`CacheService`]: either the inner service's own future (a bypass) or the
    /// cache path.
    pub struct ResponseFuture<F, B: Body, E> {
        #[pin]
        kind: FutureKind<F, B, E>,
    }
}

pin_project! {
    #[project = FutureKindProj]
    enum FutureKind<F, B: Body, E> {
        Bypass {
            #[pin] future: F,
            status: Option<HeaderValue>,
            detail: &'static str,
            strip: Option<HeaderName>,
        },
        Cached { future: BoxedResponse<B, E> },
    }
}

impl<F, B: Body, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutureKindProj::Bypass {
                future,
                status,
                detail,
                strip,
            } => {
                let response = match future.poll(cx) {
                    Poll::Ready(Ok(response)) => response,
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                    Poll::Pending => return Poll::Pending,
                };
                let mut response = response.map(CacheBody::inner);
                if let Some(name) = strip.take() {
                    response.headers_mut().remove(name);
                }
                if let Some(status) = status.take() {
                    response.headers_mut().insert(CACHE_STATUS.clone(), status);
                }
                response
                    .extensions_mut()
                    .insert(CacheStatus::bypass(detail));
                Poll::Ready(Ok(response))
            }
            FutureKindProj::Cached { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Send + 'static,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !self.shared.config.grpc.is_empty()
            && request.method() == Method::POST
            && is_grpc(request.headers())
        {
            let path = request.uri().path();
            if let Some(method) = self
                .shared
                .config
                .grpc
                .iter()
                .find(|m| m.matches(path))
                .cloned()
            {
                return self.grpc_call(request, method);
            }
        }
        let config = &self.shared.config;
        let decision =
            config
                .policy
                .classify(request.method(), request.uri().path(), request.headers());
        let info = match decision {
            RequestDecision::Bypass(reason) => {
                self.shared.state.counters.bypassed(reason);
                tracing::trace!(target: "tower_response_cache", outcome = "bypass", reason = reason.as_str());
                let status = config.bypass_status(reason).cloned();
                // gRPC calls are all POSTs: they are not writes to a resource.
                if reason == BypassReason::Method
                    && config.invalidate_on_write
                    && is_write(request.method())
                    && !is_grpc(request.headers())
                {
                    return self.write_through(request, status);
                }
                return self.bypass(request, status, reason.as_str());
            }
            RequestDecision::Cache(info) => info,
        };
        let target = match config.deriver.canonicalize(
            request.method(),
            request.uri(),
            request.headers(),
        ) {
            Ok(target) => target,
            Err(rejection) => {
                bump(&self.shared.state.counters.uri_rejected);
                tracing::debug!(target: "tower_response_cache", outcome = "bypass", reason = rejection.as_str());
                let status =
                    CacheStatus::bypass(rejection.as_str()).header_value(&config.cache_name);
                return self.bypass(request, Some(status), rejection.as_str());
            }
        };
        let target = match &info.shape {
            None => target,
            Some(shape) => {
                if shape.drops_parameters()
                    && request.uri().query().is_some_and(|q| q.contains(';'))
                {
                    let reason = BypassReason::QuerySeparator;
                    self.shared.state.counters.bypassed(reason);
                    let status = config.bypass_status(reason).cloned();
                    return self.bypass(request, status, reason.as_str());
                }
                target.shape_query(|name| shape.keeps(name), |name| shape.normalises(name))
            }
        };
        // On a per-principal route the principal goes into the key, as a keyed digest.
        let extra = if info.per_principal {
            match config
                .principal
                .as_ref()
                .and_then(|hook| hook(request.headers()))
            {
                Some(principal) => Some(Arc::from(vec![(
                    HeaderName::from_static("principal"),
                    Some(principal.into_bytes()),
                )])),
                None => {
                    let reason = BypassReason::Authorization;
                    self.shared.state.counters.bypassed(reason);
                    let status = config.bypass_status(reason).cloned();
                    return self.bypass(request, status, reason.as_str());
                }
            }
        } else {
            None
        };
        // The readied service is the one that must be called: take it, leave a clone behind.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let job = Job {
            shared: Arc::clone(&self.shared),
            info,
            target,
            generation: 0,
            conditional: conditional_headers(request.headers()),
            revalidate: None,
            extra,
            grpc: false,
        };
        ResponseFuture {
            kind: FutureKind::Cached {
                future: Box::pin(job.run(ready, request)),
            },
        }
    }
}

impl<S> CacheService<S> {
    /// An opted-in gRPC call: read its message into the key, then the usual cache path.
    fn grpc_call<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
        method: GrpcMethod,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Origin<ReqBody, ResBody>,
        ReqBody: Send + 'static,
        ResBody: OriginBody,
    {
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        let config = Arc::clone(&shared.config);
        let state = Arc::clone(&shared.state);
        let future = async move {
            let bypass = |detail: &'static str| CacheStatus::bypass(detail);
            let mark = |mut response: Response<CacheBody<ResBody>>, status: CacheStatus| {
                response.headers_mut().insert(
                    CACHE_STATUS.clone(),
                    status.header_value(&config.cache_name),
                );
                response.extensions_mut().insert(status);
                response
            };
            if !method.allows_authorization()
                && request.headers().contains_key(http::header::AUTHORIZATION)
            {
                state.counters.bypassed(BypassReason::Authorization);
                let response = ready.oneshot(request).await?;
                return Ok(mark(
                    response.map(CacheBody::inner),
                    bypass("authorization"),
                ));
            }
            let (request, message) = match capture(request, config.grpc_message_limit).await {
                Captured::Message(request, message) => (request, message),
                Captured::Uncacheable(request) => {
                    let response = ready.oneshot(request).await?;
                    return Ok(mark(response.map(CacheBody::inner), bypass("grpc-message")));
                }
            };
            let target = match config.deriver.canonicalize(
                request.method(),
                request.uri(),
                request.headers(),
            ) {
                Ok(target) => target,
                Err(rejection) => {
                    bump(&state.counters.uri_rejected);
                    let response = ready.oneshot(request).await?;
                    return Ok(mark(
                        response.map(CacheBody::inner),
                        bypass(rejection.as_str()),
                    ));
                }
            };
            let mut extra: Vec<VaryValue> = vec![(
                HeaderName::from_static("grpc-message"),
                Some(message.to_vec()),
            )];
            extra.extend(vary_values(method.metadata(), request.headers()));
            let job = Job {
                shared,
                info: RequestInfo {
                    route_ttl: method.get_ttl(),
                    ..RequestInfo::default()
                },
                target,
                generation: 0,
                conditional: None,
                revalidate: None,
                extra: Some(Arc::from(extra)),
                grpc: true,
            };
            job.run(ready, request).await
        };
        ResponseFuture {
            kind: FutureKind::Cached {
                future: Box::pin(future),
            },
        }
    }

    /// A write (POST, PUT, PATCH, DELETE): passed through, and once it has succeeded (2xx or
    /// 3xx) its path is purged before the response is handed back, so the writer's next read
    /// sees the new state (RFC 9111 section 4.4).
    fn write_through<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
        status: Option<HeaderValue>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        S::Future: Send + 'static,
        ResBody: Body + Send + 'static,
    {
        let purger = Purger {
            config: Arc::clone(&self.shared.config),
            state: Arc::clone(&self.shared.state),
        };
        let path = request.uri().path().to_owned();
        let future = self.inner.call(request);
        let strip = self
            .shared
            .config
            .strip_tag_header
            .then(|| self.shared.config.tag_header.clone())
            .flatten();
        ResponseFuture {
            kind: FutureKind::Cached {
                future: Box::pin(async move {
                    let mut response = future.await?;
                    let code = response.status();
                    if code.is_success() || code.is_redirection() {
                        if let Err(err) = purger.purge_path(&path).await {
                            tracing::debug!(target: "tower_response_cache", error = %err, "invalidation after a write failed");
                        }
                    }
                    if let Some(name) = strip {
                        response.headers_mut().remove(name);
                    }
                    if let Some(status) = status {
                        response.headers_mut().insert(CACHE_STATUS.clone(), status);
                    }
                    let mut response = response.map(CacheBody::inner);
                    response
                        .extensions_mut()
                        .insert(CacheStatus::bypass(BypassReason::Method.as_str()));
                    Ok(response)
                }),
            },
        }
    }

    fn bypass<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
        status: Option<HeaderValue>,
        detail: &'static str,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body,
    {
        let strip = self
            .shared
            .config
            .strip_tag_header
            .then(|| self.shared.config.tag_header.clone())
            .flatten();
        ResponseFuture {
            kind: FutureKind::Bypass {
                future: self.inner.call(request),
                status,
                detail,
                strip,
            },
        }
    }
}

fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The inner services the cache path drives: the bounds that every generic function on that path
/// needs, written once (the public `Service` impl spells them out).
trait Origin<ReqBody, ResBody>:
    Service<
        Request<ReqBody>,
        Response = Response<ResBody>,
        Future: Send + 'static,
        Error: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<T, ReqBody, ResBody> Origin<ReqBody, ResBody> for T where
    T: Service<
            Request<ReqBody>,
            Response = Response<ResBody>,
            Future: Send + 'static,
            Error: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// The response bodies the cache path can forward and keep.
trait OriginBody: Body<Data: Send, Error: Send + 'static> + Send + 'static {}

impl<B> OriginBody for B where B: Body<Data: Send, Error: Send + 'static> + Send + 'static {}

/// The layer's configuration and state, behind one `Arc` so that a service clone and a request's
/// job each count one reference, not two.
struct Shared {
    config: Arc<Config>,
    state: Arc<State>,
}

/// Everything the cache path of one request needs.
#[derive(Clone)]
struct Job {
    shared: Arc<Shared>,
    info: RequestInfo,
    target: CanonicalTarget,
    /// The path's purge generation when the lookup ran: fills are fenced with it.
    generation: u64,
    /// The request's conditional headers, when it has any (answered from stored entries).
    conditional: Option<Arc<HeaderMap>>,
    /// An expired entry the fill revalidates with the origin (with its validators).
    revalidate: Option<Arc<StoredResponse>>,
    /// Key components beyond the target (a gRPC call's message and metadata).
    extra: Option<Arc<[VaryValue]>>,
    /// The request is an opted-in gRPC call.
    grpc: bool,
}

type VaryValue = (HeaderName, Option<Vec<u8>>);

/// What a store lookup found.
enum Lookup {
    /// A fresh entry for this request.
    Fresh(Box<StoredResponse>, u64),
    /// An expired entry still inside one of its stale windows, and the key to refill.
    Stale(Box<StoredResponse>, u64, RequestKey),
    /// An expired entry past its stale windows: a miss, revalidated with its validators.
    Expired(Box<StoredResponse>, RequestKey),
    /// Nothing usable; fill under this key.
    Miss(RequestKey),
    /// The store failed: behave as if there were no cache.
    Unavailable(&'static str),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Seconds an entry has been expired for, given its time in the cache.
fn stale_by(entry: &StoredResponse, resident: u64) -> u64 {
    resident.saturating_sub(u64::from(entry.ttl_secs))
}

impl Job {
    /// The keys of this request for the given Vary values (plus any extra key components).
    fn key_for(&self, method: &Method, vary: &[VaryValue]) -> RequestKey {
        match &self.extra {
            None => self
                .shared
                .config
                .deriver
                .request_key(method, &self.target, vary),
            Some(extra) => {
                let mut all = extra.to_vec();
                all.extend_from_slice(vary);
                self.shared
                    .config
                    .deriver
                    .request_key(method, &self.target, &all)
            }
        }
    }

    async fn run<S, ReqBody, ResBody>(
        mut self,
        mut ready: S,
        request: Request<ReqBody>,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Origin<ReqBody, ResBody>,
        ReqBody: Send + 'static,
        ResBody: OriginBody,
    {
        let base = self.key_for(request.method(), &[]);
        let (key, stale) = match self
            .lookup(&base, request.method(), request.headers())
            .await
        {
            Lookup::Fresh(entry, resident) => {
                drop(ready);
                bump(&self.shared.state.counters.hits);
                tracing::trace!(target: "tower_response_cache", outcome = "hit");
                return Ok(self.answer_owned(*entry, resident, CacheOutcome::Hit, None));
            }
            Lookup::Unavailable(kind) => {
                // A slow store must not multiply origin calls: a fill of this key already
                // running here (its leader read the store in time) answers this request too.
                // Fills run under the variant's key, which needs the stored Vary list: only
                // responses that do not vary are found this way (`shares` checks the rest).
                if let Some(slot) = self.shared.state.flights.in_flight(base.entry_key()) {
                    let spare = ready.clone();
                    drop(ready);
                    if let Some(FillOutcome::Stored(entry)) =
                        Box::pin(follow(slot, self.shared.config.lock_wait)).await
                    {
                        if self.shares(&entry, &request) {
                            bump(&self.shared.state.counters.collapsed);
                            return Ok(self.answer(&entry, 0, CacheOutcome::Collapsed, None));
                        }
                    }
                    ready = spare;
                }
                tracing::debug!(target: "tower_response_cache", outcome = "bypass", reason = "store-error", kind);
                let status = CacheStatus::bypass("store-unavailable");
                // Cold paths are boxed, so the hit path's future stays small.
                let response = Box::pin(ready.oneshot(request)).await?;
                return Ok(self.mark(response.map(CacheBody::inner), status));
            }
            Lookup::Stale(entry, resident, key) => {
                if stale_by(&entry, resident) < u64::from(entry.stale_while_revalidate_secs) {
                    bump(&self.shared.state.counters.stale_hits);
                    let answer = self.answer(
                        &entry,
                        resident,
                        CacheOutcome::Stale,
                        Some("stale-while-revalidate"),
                    );
                    // A HEAD's response has no body to store: the next GET refreshes.
                    if self.info.is_head {
                        drop(ready);
                    } else {
                        self.refresh(ready, request, key);
                    }
                    return Ok(answer);
                }
                self.revalidate = Some(Arc::new((*entry).clone()));
                (key, Some((entry, resident)))
            }
            Lookup::Expired(entry, key) => {
                self.revalidate = Some(Arc::from(entry));
                (key, None)
            }
            Lookup::Miss(key) => (key, None),
        };
        bump(&self.shared.state.counters.misses);
        if self.info.only_if_cached {
            drop(ready);
            return Ok(gateway_timeout());
        }
        // A stored HEAD response must never answer a GET: HEAD misses are passed through.
        if self.info.is_head {
            let status = CacheStatus {
                outcome: CacheOutcome::Miss,
                stored: false,
                ttl: None,
                detail: Some("head"),
            };
            let response = Box::pin(ready.oneshot(request)).await;
            let response = response.map(|r| self.mark(r.map(CacheBody::inner), status));
            return self.or_stale(response, stale);
        }
        let filled = Box::pin(self.coalesced_fill(ready, request, &base, &key)).await;
        self.or_stale(filled, stale)
    }

    /// The miss path: lead the fill (taking the shared fill lock where the store is shared) or
    /// follow the one in flight.
    async fn coalesced_fill<S, ReqBody, ResBody>(
        &self,
        ready: S,
        request: Request<ReqBody>,
        base: &RequestKey,
        key: &RequestKey,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Origin<ReqBody, ResBody>,
        ReqBody: Send + 'static,
        ResBody: OriginBody,
    {
        if self.shared.state.flights.is_pass(key.entry_key()) {
            return self.clone().fill(ready, request, None, None).await;
        }
        let mut guard = match self.shared.state.flights.join(key.entry_key()) {
            Join::Leader(guard) => guard,
            Join::Follower(slot) => {
                // Waiting costs no capacity of the inner service: give the readied one back.
                let spare = ready.clone();
                drop(ready);
                match follow(slot, self.shared.config.lock_wait).await {
                    Some(FillOutcome::Stored(entry)) if self.shares(&entry, &request) => {
                        bump(&self.shared.state.counters.collapsed);
                        return Ok(self.answer(&entry, 0, CacheOutcome::Collapsed, None));
                    }
                    // Not shareable or failed: each follower asks the origin on its own.
                    Some(_) => return self.clone().fill(spare, request, None, None).await,
                    None => {}
                }
                // We stopped waiting, but the entry may have landed anyway (another instance's
                // fill, whose event was missed): look once more before calling the origin.
                let (method, headers) = (request.method().clone(), request.headers().clone());
                let mut probe = self.clone();
                if let Lookup::Fresh(entry, resident) = probe.lookup(base, &method, &headers).await
                {
                    bump(&self.shared.state.counters.collapsed);
                    return Ok(self.answer(&entry, resident, CacheOutcome::Collapsed, None));
                }
                return self.clone().fill(spare, request, None, None).await;
            }
        };
        if !self.shared.config.store.is_shared() {
            return self.clone().fill(ready, request, Some(guard), None).await;
        }
        let (lock, taken) = self.try_lock(key).await;
        match taken {
            Ok(true) => {
                bump(&self.shared.state.counters.locks_acquired);
                // Another instance's fill may have landed (and released the lock) between our
                // read and our lock: read once more before calling the origin.
                let mut probe = self.clone();
                let found = probe
                    .lookup(base, request.method(), request.headers())
                    .await;
                if let Lookup::Fresh(entry, resident) = found {
                    drop(ready);
                    // Releasing the lock also announces the entry to anyone still waiting.
                    drop(lock);
                    bump(&self.shared.state.counters.collapsed);
                    guard.publish(FillOutcome::Stored(Arc::new((*entry).clone())));
                    drop(guard);
                    return Ok(self.answer_owned(*entry, resident, CacheOutcome::Collapsed, None));
                }
                self.clone()
                    .fill(ready, request, Some(guard), Some(lock))
                    .await
            }
            Ok(false) => {
                lock.disarm();
                bump(&self.shared.state.counters.locks_waited);
                let spare = ready.clone();
                drop(ready);
                let (method, headers) = (request.method().clone(), request.headers().clone());
                match self
                    .wait_for_remote_fill(base, key, &method, &headers)
                    .await
                {
                    Some((entry, resident)) => {
                        bump(&self.shared.state.counters.collapsed);
                        let shared = Arc::new((*entry).clone());
                        guard.publish(FillOutcome::Stored(shared));
                        drop(guard);
                        Ok(self.answer(&entry, resident, CacheOutcome::Collapsed, None))
                    }
                    None => {
                        bump(&self.shared.state.counters.lock_timeouts);
                        self.clone().fill(spare, request, Some(guard), None).await
                    }
                }
            }
            Err(err) => {
                // The lock is an efficiency lock: without it, local coalescing still holds.
                lock.disarm();
                self.shared.state.counters.store_error(err.kind());
                self.clone().fill(ready, request, Some(guard), None).await
            }
        }
    }

    /// Try to take the shared fill lock of `key`, under the read deadline.
    async fn try_lock(&self, key: &RequestKey) -> (HeldLock, Result<bool, crate::StoreError>) {
        let lock = HeldLock::new(self, key);
        let config = &self.shared.config;
        let taken = self
            .shared
            .state
            .guard
            .run(
                config.read_deadline,
                config
                    .store
                    .try_lock(&lock.lock_key, &lock.token, config.lock_ttl),
            )
            .await;
        (lock, taken)
    }

    /// Wait (at most the lock wait) for another instance's fill of `key`, woken by its fill
    /// event, then read the entry again.
    async fn wait_for_remote_fill(
        &self,
        base: &RequestKey,
        key: &RequestKey,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<(Box<StoredResponse>, u64)> {
        let events = &self.shared.state.events;
        // Lookups record the path's generation; this one must not change the fill's.
        let mut probe = self.clone();
        let notify = events.waiter(key.entry_key());
        let found = {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // The fill may have ended between our lock attempt and the subscription above.
            match probe.lookup(base, method, headers).await {
                Lookup::Fresh(entry, resident) => Some((entry, resident)),
                _ => {
                    let _ = tokio::time::timeout(self.shared.config.lock_wait, notified).await;
                    match probe.lookup(base, method, headers).await {
                        Lookup::Fresh(entry, resident) => Some((entry, resident)),
                        _ => None,
                    }
                }
            }
        };
        events.forget(key.entry_key(), notify);
        found
    }

    /// Refresh a stale entry in the background: one refresher per key in this process, and
    /// one across instances where the store is shared.
    fn refresh<S, ReqBody, ResBody>(self, ready: S, request: Request<ReqBody>, key: RequestKey)
    where
        S: Origin<ReqBody, ResBody>,
        ReqBody: Send + 'static,
        ResBody: OriginBody,
    {
        let guard = match self.shared.state.flights.join(key.entry_key()) {
            Join::Leader(guard) => guard,
            // A refresh (or fill) of this key is already running.
            Join::Follower(_) => return,
        };
        tokio::spawn(async move {
            let lock = if self.shared.config.store.is_shared() {
                let (lock, taken) = self.try_lock(&key).await;
                if !matches!(taken, Ok(true)) {
                    // Another instance refreshes it, or the store is unwell: skip.
                    lock.disarm();
                    return;
                }
                Some(lock)
            } else {
                None
            };
            bump(&self.shared.state.counters.refreshes);
            // Nobody reads the answer: the fill stores it.
            let _ = self.fill(ready, request, Some(guard), lock).await;
        });
    }

    /// Stale-if-error: answer with the stale entry when the inner service failed.
    fn or_stale<B: Body, E>(
        &self,
        result: Result<Response<CacheBody<B>>, E>,
        stale: Option<(Box<StoredResponse>, u64)>,
    ) -> Result<Response<CacheBody<B>>, E> {
        let Some((entry, resident)) = stale else {
            return result;
        };
        let failed = match &result {
            Ok(response) => response.status().is_server_error(),
            Err(_) => true,
        };
        if failed && stale_by(&entry, resident) < u64::from(entry.stale_if_error_secs) {
            bump(&self.shared.state.counters.stale_hits);
            return Ok(self.answer_owned(
                *entry,
                resident,
                CacheOutcome::Stale,
                Some("stale-if-error"),
            ));
        }
        result
    }

    /// Read the entry for this request (following a Vary marker to the variant's entry), and
    /// remember the path's generation for the fill.
    async fn lookup(&mut self, base: &RequestKey, method: &Method, headers: &HeaderMap) -> Lookup {
        if let Some(found) = self.near_lookup(base, method, headers) {
            return found;
        }
        let entry = match self.read(base, true).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return Lookup::Miss(base.clone()),
            Err(kind) => return Lookup::Unavailable(kind),
        };
        let (entry, key) = match entry {
            StoredEntry::Response(response) => (response, base.clone()),
            StoredEntry::Vary(marker) => {
                let values = vary_values(&marker.fields, headers);
                let variant = self.key_for(method, &values);
                // Boxed: few entries vary, and the hit path's future stays small.
                match Box::pin(self.read(&variant, false)).await {
                    Ok(Some(StoredEntry::Response(response))) => (response, variant),
                    Ok(Some(StoredEntry::Vary(_))) | Ok(None) => return Lookup::Miss(variant),
                    Err(kind) => return Lookup::Unavailable(kind),
                }
            }
        };
        if entry.generation != self.generation {
            // Made before the path's latest purge: as good as deleted.
            return Lookup::Miss(key);
        }
        if !self.may_serve(&entry) {
            return Lookup::Miss(key);
        }
        let resident = now_ms().saturating_sub(entry.stored_at_ms) / 1000;
        if self.info.no_cache {
            return Lookup::Miss(key);
        }
        if resident < u64::from(entry.ttl_secs) {
            if let Some(near) = &self.shared.state.near {
                let left = Duration::from_secs(u64::from(entry.ttl_secs) - resident);
                near.insert(
                    key.entry_key(),
                    Arc::new(StoredEntry::Response(entry.clone())),
                    left,
                );
            }
            return Lookup::Fresh(Box::new(entry), resident);
        }
        let window = entry
            .stale_while_revalidate_secs
            .max(entry.stale_if_error_secs);
        if stale_by(&entry, resident) < u64::from(window) {
            Lookup::Stale(Box::new(entry), resident, key)
        } else {
            Lookup::Expired(Box::new(entry), key)
        }
    }

    /// A fresh hit in the near cache, if there is one.
    fn near_lookup(
        &self,
        base: &RequestKey,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<Lookup> {
        let near = self.shared.state.near.as_ref()?;
        if self.info.no_cache {
            return None;
        }
        let mut found = near.get(base.entry_key())?;
        if let StoredEntry::Vary(marker) = &*found {
            let values = vary_values(&marker.fields, headers);
            let variant = self.key_for(method, &values);
            found = near.get(variant.entry_key())?;
        }
        let StoredEntry::Response(entry) = &*found else {
            return None;
        };
        if !self.may_serve(entry) {
            return None;
        }
        let resident = now_ms().saturating_sub(entry.stored_at_ms) / 1000;
        if resident >= u64::from(entry.ttl_secs) {
            return None;
        }
        Some(Lookup::Fresh(Box::new(entry.clone()), resident))
    }

    /// Read and decode one entry (with the path's generation when `with_generation`). Anything
    /// wrong with the bytes is a miss, and the value is deleted in the background.
    async fn read(
        &mut self,
        key: &RequestKey,
        with_generation: bool,
    ) -> Result<Option<StoredEntry>, &'static str> {
        let config = &self.shared.config;
        let counters = &self.shared.state.counters;
        let generation_key;
        let read = if with_generation {
            generation_key = key.generation_key();
            self.shared
                .state
                .guard
                .run(
                    config.read_deadline,
                    config
                        .store
                        .get_with_generation(key.entry_key(), &generation_key),
                )
                .await
        } else {
            let generation = self.generation;
            self.shared
                .state
                .guard
                .run(config.read_deadline, async {
                    Ok((config.store.get(key.entry_key()).await?, generation))
                })
                .await
        };
        let bytes = match read {
            Ok((bytes, generation)) => {
                self.generation = generation;
                match bytes {
                    Some(bytes) => bytes,
                    None => return Ok(None),
                }
            }
            Err(err) if err.kind() == crate::StoreErrorKind::Corrupt => {
                counters.store_error(err.kind());
                bump(&counters.decode_errors);
                self.delete_in_background(key.entry_key().to_owned());
                return Ok(None);
            }
            Err(err) => {
                counters.store_error(err.kind());
                return Err(err.kind().as_str());
            }
        };
        // A value nobody else holds (fresh from a socket) is sliced, not copied; one the store
        // goes on sharing (the memory store's) is copied, so that concurrent hits do not all
        // count references on the same allocation from different cores.
        let decoded = if bytes.is_unique() {
            config.codec.decode_shared(&bytes, config.max_entry_len())
        } else {
            config.codec.decode(&bytes, config.max_entry_len())
        };
        match decoded {
            Ok(entry) if entry.request_digest() == key.request_digest().as_bytes() => {
                Ok(Some(entry))
            }
            Ok(_) => {
                bump(&counters.foreign_entries);
                tracing::warn!(target: "tower_response_cache", "a stored entry belongs to another request; treated as a miss");
                self.delete_in_background(key.entry_key().to_owned());
                Ok(None)
            }
            Err(err) => {
                bump(&counters.decode_errors);
                tracing::warn!(target: "tower_response_cache", error = err.as_str(), "a stored entry failed to decode; deleted");
                self.delete_in_background(key.entry_key().to_owned());
                Ok(None)
            }
        }
    }

    fn delete_in_background(&self, key: String) {
        let config = Arc::clone(&self.shared.config);
        let state = Arc::clone(&self.shared.state);
        spawn_write(&self.shared.state, async move {
            let _ = state
                .guard
                .run(config.write_deadline, config.store.delete(&key))
                .await;
        });
    }

    /// Whether a stored response may answer this request: a request with credentials (on a
    /// route that allows them) only gets responses that say they may be shared (R3).
    fn may_serve(&self, entry: &StoredResponse) -> bool {
        if !self.info.authenticated {
            return true;
        }
        let directives = CacheControl::parse(&entry.headers);
        directives.public || directives.s_maxage.is_some()
    }

    /// Whether a fill's stored response may answer this request too (same variant).
    fn shares<B>(&self, entry: &StoredResponse, request: &Request<B>) -> bool {
        if !self.may_serve(entry) {
            return false;
        }
        let fields = match vary_list(&entry.headers) {
            VaryList::Star => return false,
            VaryList::Fields(fields) => fields,
        };
        let values = vary_values(&fields, request.headers());
        let key = self.key_for(request.method(), &values);
        key.request_digest().as_bytes() == &entry.request_digest
    }

    /// A response built from a stored entry that is shared (with followers or the near cache).
    fn answer<B: Body>(
        &self,
        entry: &StoredResponse,
        resident: u64,
        outcome: CacheOutcome,
        detail: Option<&'static str>,
    ) -> Response<CacheBody<B>> {
        self.respond(entry, entry.headers.clone(), resident, outcome, detail)
    }

    /// [`Job::answer`] for an entry this request owns: its headers move into the response.
    fn answer_owned<B: Body>(
        &self,
        mut entry: StoredResponse,
        resident: u64,
        outcome: CacheOutcome,
        detail: Option<&'static str>,
    ) -> Response<CacheBody<B>> {
        let headers = std::mem::take(&mut entry.headers);
        self.respond(&entry, headers, resident, outcome, detail)
    }

    /// The response for `entry`, whose stored header fields are `headers`.
    fn respond<B: Body>(
        &self,
        entry: &StoredResponse,
        headers: HeaderMap,
        resident: u64,
        outcome: CacheOutcome,
        detail: Option<&'static str>,
    ) -> Response<CacheBody<B>> {
        let not_modified = entry.status == StatusCode::OK
            && self
                .conditional
                .as_ref()
                .is_some_and(|request| is_not_modified(request, &headers));
        let mut response = if not_modified {
            let mut response = Response::new(CacheBody::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            *response.headers_mut() = not_modified_headers(&headers);
            response
        } else {
            let body = if self.info.is_head {
                CacheBody::empty()
            } else {
                CacheBody::full(entry.body.clone(), entry.trailers.clone())
            };
            let mut response = Response::new(body);
            *response.status_mut() = entry.status;
            *response.headers_mut() = headers;
            response
        };
        let age = u64::from(entry.initial_age_secs).saturating_add(resident);
        response.headers_mut().insert(AGE, HeaderValue::from(age));
        let ttl = i64::from(entry.ttl_secs) - i64::try_from(resident).unwrap_or(i64::MAX);
        let status = CacheStatus {
            outcome,
            stored: outcome == CacheOutcome::Collapsed,
            ttl: Some(ttl),
            detail,
        };
        self.mark(response, status)
    }

    fn mark<B>(&self, mut response: Response<B>, status: CacheStatus) -> Response<B> {
        response.headers_mut().insert(
            CACHE_STATUS.clone(),
            status.header_value(&self.shared.config.cache_name),
        );
        response.extensions_mut().insert(status);
        response
    }

    /// Call the inner service in a task of its own and store what it answers, if it may be
    /// stored. `guard` is the flight this fill leads and `lock` the shared fill lock it holds,
    /// if any.
    async fn fill<S, ReqBody, ResBody>(
        self,
        service: S,
        request: Request<ReqBody>,
        guard: Option<FlightGuard>,
        lock: Option<HeldLock>,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Origin<ReqBody, ResBody>,
        ReqBody: Send + 'static,
        ResBody: OriginBody,
    {
        let method = request.method().clone();
        let request_headers = request.headers().clone();
        let (reply, answer) = oneshot::channel();
        let fill = Fill {
            job: self,
            method,
            request_headers,
            guard,
            lock,
        };
        let task = tokio::spawn(fill.run(service, request, reply));
        match answer.await {
            Ok(result) => result,
            Err(_) => match task.await {
                // The inner service panicked: the request fails as it would without the cache.
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                _ => panic!(
                    "the cache fill task was cancelled before it answered (runtime shutting down)"
                ),
            },
        }
    }
}

/// A shared fill lock this process holds. Dropping it releases the lock (compare-and-delete on
/// its token) and publishes the fill event that wakes the instances waiting on it, in the
/// background; it is moved into the entry's write, so both happen after the write has landed.
pub(crate) struct HeldLock {
    config: Arc<Config>,
    state: Arc<State>,
    lock_key: String,
    token: String,
    event_key: String,
    armed: bool,
}

impl HeldLock {
    fn new(job: &Job, key: &RequestKey) -> Self {
        HeldLock {
            config: Arc::clone(&job.shared.config),
            state: Arc::clone(&job.shared.state),
            lock_key: key.lock_key(),
            token: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            event_key: key.entry_key().to_owned(),
            armed: true,
        }
    }

    /// Forget the lock without releasing it (it was never taken).
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if !self.armed || tokio::runtime::Handle::try_current().is_err() {
            // Without a runtime the lock simply expires after its TTL.
            return;
        }
        let config = Arc::clone(&self.config);
        let state = Arc::clone(&self.state);
        let lock_key = std::mem::take(&mut self.lock_key);
        let token = std::mem::take(&mut self.token);
        let event = Event::Fill {
            key: std::mem::take(&mut self.event_key),
        }
        .encode();
        tokio::spawn(async move {
            let store = &config.store;
            match state
                .guard
                .run(config.write_deadline, store.unlock(&lock_key, &token))
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    // It expired mid-fill (and may be another instance's now): left alone.
                    bump(&state.counters.locks_lost);
                }
                Err(err) => state.counters.store_error(err.kind()),
            }
            let channel = &config.events_channel;
            if let Err(err) = state
                .guard
                .run(config.write_deadline, store.publish(channel, event))
                .await
            {
                state.counters.store_error(err.kind());
            }
        });
    }
}

/// A fill in its own task: the inner call, the storability decision, the body pump and the write.
struct Fill {
    job: Job,
    method: Method,
    request_headers: HeaderMap,
    guard: Option<FlightGuard>,
    lock: Option<HeldLock>,
}

type Reply<B, E> = oneshot::Sender<Result<Response<CacheBody<B>>, E>>;

impl Fill {
    async fn run<S, ReqBody, ResBody>(
        mut self,
        service: S,
        request: Request<ReqBody>,
        reply: Reply<ResBody, S::Error>,
    ) where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
        S::Future: Send + 'static,
        ReqBody: Send + 'static,
        ResBody: Body + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        let counters = &self.job.shared.state.counters;
        bump(&counters.fills_in_flight);
        let _in_flight = InFlight(Arc::clone(&self.job.shared.state));
        let mut request = request;
        let revalidating = match &self.job.revalidate {
            Some(entry) => add_validators(request.headers_mut(), &entry.headers),
            None => false,
        };
        let request_time = SystemTime::now();
        let response = match service.oneshot(request).await {
            Ok(response) => response,
            Err(err) => {
                self.end(FillOutcome::Failed);
                let _ = reply.send(Err(err));
                return;
            }
        };
        let started = Instant::now() - request_time.elapsed().unwrap_or_default();
        let response_time = SystemTime::now();
        if let (true, StatusCode::NOT_MODIFIED, Some(old)) =
            (revalidating, response.status(), self.job.revalidate.clone())
        {
            self.freshen(old, response, request_time, response_time, started, reply);
            return;
        }
        let mut response = response;
        let config = Arc::clone(&self.job.shared.config);
        let tags = response_tags(
            response.headers(),
            response.extensions(),
            config.tag_header.as_ref(),
        );
        if config.strip_tag_header {
            if let Some(name) = &config.tag_header {
                response.headers_mut().remove(name);
            }
        }
        if self.job.grpc {
            let ttl = self
                .job
                .info
                .route_ttl
                .unwrap_or_else(|| config.policy.get_default_ttl());
            response.extensions_mut().insert(CacheTtl(ttl));
        }
        let decision = if self.job.grpc && is_trailers_only(response.headers()) {
            Err(NotStorable::Status)
        } else {
            self.storability(&response, request_time, response_time)
        };
        // Error answers that may be stored are kept briefly: a poisoned one (CPDoS) fades fast.
        let decision = decision.map(|(key, mut freshness)| {
            if response.status().is_client_error() || response.status().is_server_error() {
                freshness.ttl = freshness
                    .ttl
                    .min(config.error_ttl)
                    .max(Duration::from_secs(1));
            }
            (key, freshness)
        });
        let (key, freshness) = match decision {
            Ok(decided) => decided,
            Err(reason) => {
                self.job.shared.state.counters.not_stored(reason);
                tracing::debug!(target: "tower_response_cache", outcome = "miss", not_stored = reason.as_str());
                if let Some(guard) = &self.guard {
                    self.job.shared.state.flights.mark_pass(guard.key());
                }
                self.end(FillOutcome::NotShareable);
                let status = CacheStatus {
                    outcome: CacheOutcome::Miss,
                    stored: false,
                    ttl: None,
                    detail: Some(reason.as_str()),
                };
                let _ = reply.send(Ok(self.job.mark(response.map(CacheBody::inner), status)));
                return;
            }
        };
        let (parts, body) = response.into_parts();
        let stored_headers = storable_headers(&parts.headers);
        let (frames, forwarded) = mpsc::channel(FORWARD_BUFFER);
        let mut client =
            Response::from_parts(parts, CacheBody::forwarded(forwarded, body.size_hint()));
        let status = CacheStatus {
            outcome: CacheOutcome::Miss,
            stored: true,
            ttl: Some(i64::try_from(freshness.ttl.as_secs()).unwrap_or(i64::MAX)),
            detail: None,
        };
        client = self.job.mark(client, status);
        let status_code = client.status();
        let _ = reply.send(Ok(client));

        let collected = pump(body, frames, self.job.shared.config.max_body_size).await;
        let (data, trailers) = match collected {
            Collected::Complete { data, trailers }
                if self.job.grpc
                    && (!grpc_succeeded(trailers.as_ref()) || !is_single_message(&data)) =>
            {
                // A gRPC error in the trailers, or a stream of messages: never stored.
                self.job
                    .shared
                    .state
                    .counters
                    .not_stored(NotStorable::Status);
                let _ = data;
                self.end(FillOutcome::NotShareable);
                return;
            }
            // A body that ended before its Content-Length is a broken answer: never stored.
            Collected::Complete { data, .. }
                if content_length(&stored_headers).is_some_and(|len| len != data.len() as u64) =>
            {
                self.job
                    .shared
                    .state
                    .counters
                    .not_stored(NotStorable::Incomplete);
                self.end(FillOutcome::NotShareable);
                return;
            }
            Collected::Complete { data, trailers } => (data, trailers),
            Collected::TooLarge | Collected::Incomplete => {
                let reason = if matches!(collected, Collected::TooLarge) {
                    NotStorable::TooLarge
                } else {
                    NotStorable::Incomplete
                };
                self.job.shared.state.counters.not_stored(reason);
                self.job.shared.state.flights.mark_pass(key.entry_key());
                self.end(FillOutcome::NotShareable);
                return;
            }
        };
        let (stale_while_revalidate, stale_if_error) =
            self.stale_windows(&stored_headers, &freshness);
        let entry = StoredResponse {
            request_digest: *key.request_digest().as_bytes(),
            target_digest: *key.target_digest().as_bytes(),
            stored_at_ms: now_ms(),
            generation: self.job.generation,
            ttl_secs: secs_u32(freshness.ttl),
            initial_age_secs: secs_u32(freshness.initial_age),
            stale_while_revalidate_secs: secs_u32(stale_while_revalidate),
            stale_if_error_secs: secs_u32(stale_if_error),
            status: status_code,
            headers: stored_headers,
            body: data,
            trailers,
            tags,
        };
        self.job.shared.state.flights.clear_pass(key.entry_key());
        let flight = self.guard.take();
        let lock = self.lock.take();
        // Followers learn the outcome once the (fenced) write has decided it; the flight and
        // the lock stay held until then.
        self.store(&key, Arc::new(entry), started, flight, lock);
    }

    fn end(&mut self, outcome: FillOutcome) {
        if let Some(guard) = self.guard.take() {
            guard.finish(outcome);
        }
    }

    /// The origin confirmed an expired entry (304): refresh its headers and freshness, keep
    /// its body, store it again and answer with it.
    fn freshen<B: Body, E>(
        mut self,
        old: Arc<StoredResponse>,
        not_modified: Response<B>,
        request_time: SystemTime,
        response_time: SystemTime,
        started: Instant,
        reply: Reply<B, E>,
    ) {
        let config = Arc::clone(&self.job.shared.config);
        let headers = storable_headers(&freshen(&old.headers, not_modified.headers()));
        let decided = config.policy.storability(
            &self.job.info,
            old.status,
            &headers,
            not_modified.extensions(),
            request_time,
            response_time,
        );
        let mut entry = StoredResponse::clone(&old);
        entry.headers = headers;
        entry.stored_at_ms = now_ms();
        entry.generation = self.job.generation;
        let status = match decided {
            Ok(freshness) => {
                entry.ttl_secs = secs_u32(freshness.ttl);
                entry.initial_age_secs = secs_u32(freshness.initial_age);
                let (swr, sie) = self.stale_windows(&entry.headers, &freshness);
                entry.stale_while_revalidate_secs = secs_u32(swr);
                entry.stale_if_error_secs = secs_u32(sie);
                CacheStatus {
                    outcome: CacheOutcome::Miss,
                    stored: true,
                    ttl: Some(i64::from(entry.ttl_secs)),
                    detail: Some("revalidated"),
                }
            }
            Err(reason) => {
                self.job.shared.state.counters.not_stored(reason);
                entry.ttl_secs = 0;
                CacheStatus {
                    outcome: CacheOutcome::Miss,
                    stored: false,
                    ttl: None,
                    detail: Some(reason.as_str()),
                }
            }
        };
        let mut answer = self.job.answer(&entry, 0, CacheOutcome::Miss, None);
        answer.headers_mut().remove(AGE);
        let answer = self.job.mark(answer, status);
        let _ = reply.send(Ok(answer));
        if !status.stored {
            self.end(FillOutcome::NotShareable);
            return;
        }
        let key = self
            .job
            .key_for(&self.method, &self.vary_values_of(&entry.headers));
        let flight = self.guard.take();
        let lock = self.lock.take();
        self.store(&key, Arc::new(entry), started, flight, lock);
    }

    fn vary_values_of(&self, headers: &HeaderMap) -> Vec<(HeaderName, Option<Vec<u8>>)> {
        match vary_list(headers) {
            VaryList::Fields(fields) => vary_values(&fields, &self.request_headers),
            VaryList::Star => Vec::new(),
        }
    }

    /// The stale windows of a new entry: the origin's or the layer's, whichever is longer,
    /// unless the response forbids serving it stale.
    fn stale_windows(&self, headers: &HeaderMap, freshness: &Freshness) -> (Duration, Duration) {
        let directives = CacheControl::parse(headers);
        let forbidden = directives.must_revalidate
            || directives.proxy_revalidate
            || directives.no_cache
            || directives.s_maxage.is_some();
        if forbidden {
            return (Duration::ZERO, Duration::ZERO);
        }
        let config = &self.job.shared.config;
        let (_, max) = config.policy.get_ttl_range();
        (
            freshness
                .stale_while_revalidate
                .max(config.stale_while_revalidate)
                .min(max),
            freshness.stale_if_error.max(config.stale_if_error).min(max),
        )
    }

    /// Whether the response may be stored, under which key and for how long.
    fn storability<B: Body>(
        &self,
        response: &Response<B>,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Result<(RequestKey, Freshness), NotStorable> {
        let config = &self.job.shared.config;
        let headers = response.headers();
        let freshness = config.policy.storability(
            &self.job.info,
            response.status(),
            headers,
            response.extensions(),
            request_time,
            response_time,
        )?;
        if is_event_stream(headers) {
            return Err(NotStorable::EventStream);
        }
        let too_large = content_length(headers)
            .map(|len| len > config.max_body_size as u64)
            .unwrap_or(false)
            || response
                .body()
                .size_hint()
                .exact()
                .is_some_and(|len| len > config.max_body_size as u64);
        if too_large {
            return Err(NotStorable::TooLarge);
        }
        let fields = match vary_list(headers) {
            VaryList::Star => return Err(NotStorable::VaryStar),
            VaryList::Fields(fields) => fields,
        };
        let values = vary_values(&fields, &self.request_headers);
        let key = self.job.key_for(&self.method, &values);
        if let Some((route, cap)) = self.job.info.max_keys {
            if !self
                .job
                .shared
                .state
                .admit_key(route, cap, key.request_digest().as_bytes())
            {
                return Err(NotStorable::KeyCap);
            }
        }
        Ok((key, freshness))
    }

    /// Write the entry (and its Vary marker) in the background, fenced by the generation the
    /// lookup saw and bounded by the write queue; then tell the followers and release the lock.
    fn store(
        &self,
        key: &RequestKey,
        entry: Arc<StoredResponse>,
        started: Instant,
        flight: Option<FlightGuard>,
        lock: Option<HeldLock>,
    ) {
        let config = Arc::clone(&self.job.shared.config);
        let state = Arc::clone(&self.job.shared.state);
        let generation = self.job.generation;
        // Entries outlive their freshness by their stale windows, so stale copies can be used,
        // and those with a validator as long again, so they can be revalidated (a 304 costs
        // the origin less than a full answer).
        let mut linger = entry
            .stale_while_revalidate_secs
            .max(entry.stale_if_error_secs);
        if entry.headers.contains_key(http::header::ETAG)
            || entry.headers.contains_key(http::header::LAST_MODIFIED)
        {
            let (_, max) = config.policy.get_ttl_range();
            linger = linger.max(entry.ttl_secs.min(secs_u32(max)));
        }
        let ttl = Duration::from_secs(u64::from(entry.ttl_secs).saturating_add(u64::from(linger)))
            .max(Duration::from_secs(1));
        let fields = match vary_list(&entry.headers) {
            VaryList::Fields(fields) => fields,
            VaryList::Star => return,
        };
        let base = self.job.key_for(&self.method, &[]);
        let marker = if fields.is_empty() {
            None
        } else {
            let marker = StoredEntry::Vary(VaryMarker {
                request_digest: *base.request_digest().as_bytes(),
                stored_at_ms: entry.stored_at_ms,
                ttl_secs: secs_u32(ttl),
                fields,
            });
            let encoded = config.codec.encode(&marker);
            Some((base.entry_key().to_owned(), marker, encoded))
        };
        let near_marker = marker
            .as_ref()
            .map(|(key, marker, _)| (key.clone(), Arc::new(marker.clone())));
        let marker = marker.map(|(key, _, encoded)| (key, encoded));
        let value = config
            .codec
            .encode(&StoredEntry::Response(StoredResponse::clone(&entry)));
        let entry_key = key.entry_key().to_owned();
        let generation_key = base.generation_key();
        spawn_write(&self.job.shared.state, async move {
            let mut flight = flight;
            let _lock = lock;
            let store = &config.store;
            let deadline = config.write_deadline;
            // A URL, tag or namespace purge since the fill started fences it off, like a
            // path purge does through the generation.
            let mut written = Ok(!state.fences.blocks(started, &entry));
            if let (Ok(true), Some((marker_key, marker))) = (&written, marker) {
                written = state
                    .guard
                    .run(
                        deadline,
                        store.put_fenced(&marker_key, marker, ttl, &generation_key, generation),
                    )
                    .await;
            }
            if matches!(written, Ok(true)) {
                written = state
                    .guard
                    .run(
                        deadline,
                        store.put_fenced(&entry_key, value, ttl, &generation_key, generation),
                    )
                    .await;
            }
            let outcome = match written {
                Ok(true) => {
                    bump(&state.counters.stores);
                    for tag in &entry.tags {
                        let tag_key = config.deriver.tag_key(tag);
                        let added = state
                            .guard
                            .run(deadline, store.tag_add(&tag_key, &entry_key, ttl))
                            .await;
                        if let Err(err) = added {
                            state.counters.store_error(err.kind());
                        }
                    }
                    if let Some(near) = &state.near {
                        near.insert(
                            &entry_key,
                            Arc::new(StoredEntry::Response(StoredResponse::clone(&entry))),
                            Duration::from_secs(u64::from(entry.ttl_secs)),
                        );
                        if let Some((marker_key, marker)) = &near_marker {
                            near.insert(marker_key, Arc::clone(marker), ttl);
                        }
                    }
                    FillOutcome::Stored(entry)
                }
                Ok(false) => {
                    // A purge happened while this fill ran: its content must not be served.
                    bump(&state.counters.fenced_writes);
                    FillOutcome::NotShareable
                }
                Err(err) => {
                    state.counters.store_error(err.kind());
                    tracing::debug!(target: "tower_response_cache", kind = err.kind().as_str(), "store write failed");
                    // The response is still whole and valid: the followers may have it.
                    FillOutcome::Stored(entry)
                }
            };
            if let Some(flight) = flight.as_mut() {
                flight.publish(outcome);
            }
        });
    }
}

/// A copy of the request's conditional headers, when it has any.
fn conditional_headers(headers: &HeaderMap) -> Option<Arc<HeaderMap>> {
    let conditional = headers.contains_key(http::header::IF_NONE_MATCH)
        || headers.contains_key(http::header::IF_MODIFIED_SINCE);
    conditional.then(|| Arc::new(headers.clone()))
}

/// Counts a fill as in flight for as long as it lives.
struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .counters
            .fills_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Run a background store call if the write queue has room; count it as dropped otherwise.
fn spawn_write<F>(state: &Arc<State>, write: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match Arc::clone(&state.writes).try_acquire_owned() {
        Ok(permit) => {
            tokio::spawn(async move {
                write.await;
                drop(permit);
            });
        }
        Err(_) => bump(&state.counters.writes_dropped),
    }
}

fn secs_u32(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// The response headers worth storing: all but hop-by-hop fields and the cache's own.
fn storable_headers(headers: &HeaderMap) -> HeaderMap {
    let mut stored = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if is_hop_by_hop(name, headers) || name == CACHE_STATUS || name == AGE {
            continue;
        }
        stored.append(name.clone(), value.clone());
    }
    stored
}

/// `only-if-cached` on a miss (RFC 9111 5.2.1.7): generated here, so no `Cache-Status`.
fn gateway_timeout<B: Body>() -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

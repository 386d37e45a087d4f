//! gRPC end to end: a real Tonic server behind the layer and a real Tonic client over TCP, with
//! the memory store and with a private redis-server.
//!
//! The server, client and messages are the ones of `examples/grpc.rs`. Every behaviour runs
//! against both stores: `<behaviour>::in_memory` and `<behaviour>::in_redis`.

mod support;

#[path = "../examples/grpc.rs"]
#[allow(dead_code)]
mod grpc_example;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use grpc_example::{
    metadata_text, serve, server_router, stored, Catalog, CatalogClient, ListRequest, Product,
    ProductRequest, StockRequest, GET_PRODUCT, SERVED_BY, SERVICE, TENANT,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use prost::Message;
use support::origin::eventually;
use support::redis_server::RedisServer;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::transport::Endpoint;
use tonic::Code;
use tower::ServiceExt;
use tower_response_cache::grpc::GrpcMethod;
use tower_response_cache::{CacheLayer, MemoryStore, RedisStore};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn memory_layer() -> CacheLayer {
    CacheLayer::new(MemoryStore::new()).jitter(0.0)
}

fn redis_layer(redis: &RedisServer) -> CacheLayer {
    CacheLayer::new(RedisStore::from_url(&redis.url()).unwrap())
        .jitter(0.0)
        // A loaded machine's slow Redis must not turn into bypasses or dropped writes.
        .read_deadline(Duration::from_secs(2))
        .write_deadline(Duration::from_secs(2))
}

/// Run `$behaviour(layer)` once with the memory store and once with a private redis-server.
macro_rules! on_both_stores {
    ($($behaviour:ident),* $(,)?) => {
        $(
            mod $behaviour {
                #[tokio::test]
                async fn in_memory() {
                    super::$behaviour(super::memory_layer()).await;
                }

                #[tokio::test]
                async fn in_redis() {
                    let redis = super::RedisServer::start();
                    super::$behaviour(super::redis_layer(&redis)).await;
                }
            }
        )*
    };
}

/// A running server: its address, its catalog (call counters), a client, and the layer.
struct Running {
    addr: SocketAddr,
    catalog: Catalog,
    unreliable: Unreliable,
    client: CatalogClient,
    layer: CacheLayer,
}

/// `layer` in front of the catalog (and of the unreliable service), on a free loopback port.
async fn start(layer: CacheLayer) -> Running {
    let catalog = Catalog::new("catalog-1");
    let unreliable = Unreliable::default();
    let router = server_router(layer.clone(), catalog.clone()).add_service(unreliable.clone());
    let addr = serve(router).await.unwrap();
    let client = CatalogClient::connect(addr).await.unwrap();
    Running {
        addr,
        catalog,
        unreliable,
        client,
        layer,
    }
}

fn cached_product(layer: CacheLayer) -> CacheLayer {
    layer.grpc(GrpcMethod::exact(GET_PRODUCT))
}

fn product_request(id: u32) -> tonic::Request<ProductRequest> {
    tonic::Request::new(ProductRequest { id })
}

fn with_metadata(
    mut request: tonic::Request<ProductRequest>,
    name: &'static str,
    value: &str,
) -> tonic::Request<ProductRequest> {
    request.metadata_mut().insert(name, value.parse().unwrap());
    request
}

/// A successful answer: its message and its metadata (headers and trailers together).
struct Answer {
    product: Product,
    metadata: MetadataMap,
}

impl Answer {
    fn cache_status(&self) -> String {
        metadata_text(&self.metadata, "cache-status")
    }

    fn is_hit(&self) -> bool {
        self.cache_status().starts_with("trc; hit")
    }

    fn served_by(&self) -> String {
        metadata_text(&self.metadata, SERVED_BY)
    }

    /// The metadata that must be the same on a replay: everything but what the cache and the
    /// HTTP server set per answer (`cache-status`, `age`, `date`, and `content-length`, which
    /// hyper adds when the body's length is known up front, as a replayed body's is).
    fn replayed_metadata(&self) -> BTreeMap<String, Vec<u8>> {
        self.metadata
            .clone()
            .into_headers()
            .iter()
            .filter(|(name, _)| {
                !matches!(
                    name.as_str(),
                    "cache-status" | "age" | "date" | "content-length"
                )
            })
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect()
    }
}

async fn get_product(client: &CatalogClient, request: tonic::Request<ProductRequest>) -> Answer {
    let response = client.clone().get_product(request).await.unwrap();
    let metadata = response.metadata().clone();
    Answer {
        product: response.into_inner(),
        metadata,
    }
}

/// The gRPC framing of one uncompressed message.
fn frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut framed = BytesMut::with_capacity(encoded.len() + 5);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(encoded.len()).unwrap());
    framed.put_slice(&encoded);
    framed.freeze()
}

/// An answer as it came over the wire: head, body bytes and trailers.
struct Raw {
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// One call at the HTTP level, to see the answer's form (trailers-only or not).
async fn raw_call(addr: SocketAddr, path: &str, message: &impl Message) -> Raw {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Body::new(Full::new(frame(message))))
        .unwrap();
    let response = channel.oneshot(request).await.unwrap();
    let (head, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    Raw {
        headers: head.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    }
}

/// The path of the unreliable service's one method.
const UNRELIABLE: &str = "/demo.Unreliable/GetProduct";

/// A raw gRPC route that answers HTTP 200 with a whole message, then fails in its trailers
/// (`grpc-status: 14`, unavailable): the form of an error that Tonic's handlers do not produce
/// for unary calls, but proxies and other servers do.
#[derive(Debug, Clone, Default)]
struct Unreliable {
    calls: Arc<AtomicU64>,
}

impl Unreliable {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl NamedService for Unreliable {
    const NAME: &'static str = "demo.Unreliable";
}

impl tower::Service<http::Request<Body>> for Unreliable {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let calls = Arc::clone(&self.calls);
        Box::pin(async move {
            let _ = request.into_body().collect().await;
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let message = Product {
                id: 1,
                name: "half an answer".to_owned(),
                price_cents: 0,
                tenant: String::new(),
                call,
            };
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("14"));
            trailers.insert("grpc-message", HeaderValue::from_static("backend%20down"));
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                Ok(Frame::data(frame(&message))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = StreamBody::new(futures_util::stream::iter(frames));
            let response = http::Response::builder()
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .body(Body::new(body))
                .unwrap_or_default();
            Ok(response)
        })
    }
}

/// Wait until the layer has refused to store `n` answers for their gRPC status.
async fn refused_for_status(layer: &CacheLayer, n: u64) {
    assert!(
        eventually(|| layer
            .stats()
            .not_stored_by
            .get("status")
            .copied()
            .unwrap_or(0)
            >= n)
        .await,
        "expected {n} answers refused for their status, stats: {:?}",
        layer.stats()
    );
}

// ---------------------------------------------------------------------------------------------
// Hits replay the message, the metadata and the trailers
// ---------------------------------------------------------------------------------------------

on_both_stores!(a_repeated_call_is_answered_from_the_cache_with_its_trailers);

async fn a_repeated_call_is_answered_from_the_cache_with_its_trailers(layer: CacheLayer) {
    let app = start(cached_product(layer)).await;
    let first = get_product(&app.client, product_request(7)).await;
    assert!(
        first.cache_status().starts_with("trc; fwd=miss; stored"),
        "{}",
        first.cache_status()
    );
    assert!(
        stored(&app.layer, 1).await,
        "stats: {:?}",
        app.layer.stats()
    );

    let second = get_product(&app.client, product_request(7)).await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!(app.catalog.product_calls(), 1);
    assert_eq!(second.product, first.product);
    assert_eq!(second.product.call, 1);
    assert_eq!(second.product.name, "product 7");
    assert_eq!(first.served_by(), "catalog-1#1");
    assert_eq!(second.served_by(), "catalog-1#1");
    assert_eq!(second.replayed_metadata(), first.replayed_metadata());
    assert_eq!(app.layer.stats().hits, 1);
}

on_both_stores!(a_hit_is_the_same_answer_on_the_wire);

async fn a_hit_is_the_same_answer_on_the_wire(layer: CacheLayer) {
    let app = start(cached_product(layer)).await;
    let request = ProductRequest { id: 3 };
    let first = raw_call(app.addr, GET_PRODUCT, &request).await;
    assert!(
        stored(&app.layer, 1).await,
        "stats: {:?}",
        app.layer.stats()
    );
    let second = raw_call(app.addr, GET_PRODUCT, &request).await;
    assert_eq!(app.catalog.product_calls(), 1);
    let status = second
        .headers
        .get("cache-status")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(status.starts_with("trc; hit"), "{status}");
    assert_eq!(second.body, first.body);
    assert!(!second.body.is_empty());
    assert_eq!(second.trailers, first.trailers);
    let trailers = second.trailers.unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers[SERVED_BY], "catalog-1#1");
    assert_eq!(
        second.headers.get(http::header::CONTENT_TYPE),
        first.headers.get(http::header::CONTENT_TYPE)
    );
}

// ---------------------------------------------------------------------------------------------
// Keys: the request message and the opted-in metadata
// ---------------------------------------------------------------------------------------------

on_both_stores!(different_request_messages_get_different_entries);

async fn different_request_messages_get_different_entries(layer: CacheLayer) {
    let app = start(cached_product(layer)).await;
    let seven = get_product(&app.client, product_request(7)).await;
    assert!(stored(&app.layer, 1).await);
    let eight = get_product(&app.client, product_request(8)).await;
    assert!(!eight.is_hit(), "{}", eight.cache_status());
    assert_eq!(app.catalog.product_calls(), 2);
    assert_eq!(eight.product.id, 8);
    assert!(stored(&app.layer, 2).await);

    let seven_again = get_product(&app.client, product_request(7)).await;
    let eight_again = get_product(&app.client, product_request(8)).await;
    assert!(seven_again.is_hit() && eight_again.is_hit());
    assert_eq!(app.catalog.product_calls(), 2);
    assert_eq!(seven_again.product, seven.product);
    assert_eq!(eight_again.product, eight.product);
}

on_both_stores!(the_same_message_with_other_opted_in_metadata_gets_its_own_entry);

async fn the_same_message_with_other_opted_in_metadata_gets_its_own_entry(layer: CacheLayer) {
    let layer =
        layer.grpc(GrpcMethod::exact(GET_PRODUCT).key_metadata(HeaderName::from_static(TENANT)));
    let app = start(layer).await;
    let acme = get_product(
        &app.client,
        with_metadata(product_request(7), TENANT, "acme"),
    )
    .await;
    assert_eq!(acme.product.tenant, "acme");
    assert!(stored(&app.layer, 1).await);

    let globex = get_product(
        &app.client,
        with_metadata(product_request(7), TENANT, "globex"),
    )
    .await;
    assert!(!globex.is_hit(), "{}", globex.cache_status());
    assert_eq!(globex.product.tenant, "globex");
    assert_eq!(app.catalog.product_calls(), 2);
    assert!(stored(&app.layer, 2).await);

    let nobody = get_product(&app.client, product_request(7)).await;
    assert!(!nobody.is_hit(), "{}", nobody.cache_status());
    assert_eq!(nobody.product.tenant, "");
    assert_eq!(app.catalog.product_calls(), 3);

    let acme_again = get_product(
        &app.client,
        with_metadata(product_request(7), TENANT, "acme"),
    )
    .await;
    assert!(acme_again.is_hit(), "{}", acme_again.cache_status());
    assert_eq!(acme_again.product, acme.product);
    assert_eq!(app.catalog.product_calls(), 3);
}

on_both_stores!(metadata_that_is_not_opted_in_shares_the_entry);

async fn metadata_that_is_not_opted_in_shares_the_entry(layer: CacheLayer) {
    let app = start(cached_product(layer)).await;
    let first = get_product(
        &app.client,
        with_metadata(product_request(7), TENANT, "acme"),
    )
    .await;
    assert!(stored(&app.layer, 1).await);
    let second = get_product(
        &app.client,
        with_metadata(product_request(7), TENANT, "globex"),
    )
    .await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!(second.product.tenant, "acme");
    assert_eq!(second.product, first.product);
    assert_eq!(app.catalog.product_calls(), 1);
}

on_both_stores!(a_message_over_the_limit_bypasses_the_cache);

async fn a_message_over_the_limit_bypasses_the_cache(layer: CacheLayer) {
    // One `ProductRequest { id: 7 }` is 7 bytes on the wire (5 of framing).
    let app = start(cached_product(layer).grpc_message_limit(6)).await;
    let first = get_product(&app.client, product_request(7)).await;
    let second = get_product(&app.client, product_request(7)).await;
    assert_eq!(app.catalog.product_calls(), 2);
    assert_eq!(second.product.id, 7);
    assert_eq!(second.product.call, 2);
    assert_eq!(first.cache_status(), "trc; fwd=bypass; detail=grpc-message");
    assert_eq!(app.layer.stats().stores, 0);
}

// ---------------------------------------------------------------------------------------------
// Errors are never stored
// ---------------------------------------------------------------------------------------------

on_both_stores!(a_trailers_only_error_is_never_stored);

async fn a_trailers_only_error_is_never_stored(layer: CacheLayer) {
    let app = start(cached_product(layer)).await;
    // Tonic sends a handler's error trailers-only: the status is in the headers, no body.
    let raw = raw_call(app.addr, GET_PRODUCT, &ProductRequest { id: 0 }).await;
    assert_eq!(raw.headers["grpc-status"], "5");
    assert!(raw.body.is_empty());
    assert!(raw.trailers.is_none());
    assert_eq!(app.catalog.product_calls(), 1);

    for call in 2..=3 {
        let err = app
            .client
            .clone()
            .get_product(product_request(0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "no product 0");
        assert_eq!(app.catalog.product_calls(), call);
    }
    refused_for_status(&app.layer, 3).await;
    let stats = app.layer.stats();
    assert_eq!(stats.stores, 0, "stats: {stats:?}");
    assert_eq!(stats.hits, 0, "stats: {stats:?}");

    // The method is still cached once it succeeds.
    get_product(&app.client, product_request(1)).await;
    assert!(stored(&app.layer, 1).await);
    assert!(get_product(&app.client, product_request(1)).await.is_hit());
}

on_both_stores!(an_error_status_in_the_trailers_is_never_stored);

async fn an_error_status_in_the_trailers_is_never_stored(layer: CacheLayer) {
    let app = start(layer.grpc(GrpcMethod::exact(UNRELIABLE))).await;
    // The form: HTTP 200, a whole message, then `grpc-status: 14` in the trailers.
    let raw = raw_call(app.addr, UNRELIABLE, &ProductRequest { id: 1 }).await;
    assert_eq!(app.unreliable.calls(), 1);
    assert!(!raw.headers.contains_key("grpc-status"));
    assert!(!raw.body.is_empty());
    assert_eq!(raw.trailers.as_ref().unwrap()["grpc-status"], "14");
    refused_for_status(&app.layer, 1).await;

    for call in 2..=3 {
        let err = app
            .client
            .clone()
            .unary::<ProductRequest, Product>(UNRELIABLE, ProductRequest { id: 1 })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "backend down");
        assert_eq!(app.unreliable.calls(), call);
        refused_for_status(&app.layer, call).await;
    }
    let stats = app.layer.stats();
    assert_eq!(stats.stores, 0, "stats: {stats:?}");
    assert_eq!(stats.hits, 0, "stats: {stats:?}");
}

// ---------------------------------------------------------------------------------------------
// What the cache leaves alone
// ---------------------------------------------------------------------------------------------

on_both_stores!(a_method_that_is_not_opted_in_reaches_the_server_every_time);

async fn a_method_that_is_not_opted_in_reaches_the_server_every_time(layer: CacheLayer) {
    let app = start(cached_product(layer)).await;
    for call in 1..=3 {
        let stock = app
            .client
            .clone()
            .get_stock(StockRequest { id: 7 })
            .await
            .unwrap();
        assert_eq!(stock.get_ref().call, call);
        assert_eq!(
            metadata_text(stock.metadata(), SERVED_BY),
            format!("catalog-1#{call}")
        );
    }
    assert_eq!(app.catalog.stock_calls(), 3);
    assert_eq!(app.layer.stats().stores, 0);
}

on_both_stores!(a_streaming_method_passes_through_untouched);

async fn a_streaming_method_passes_through_untouched(layer: CacheLayer) {
    let app = start(cached_product(layer)).await;
    for call in 1..=2 {
        let (products, headers, trailers) = app
            .client
            .clone()
            .list_products(ListRequest { count: 3 })
            .await
            .unwrap();
        assert_eq!(products.len(), 3);
        assert_eq!(
            products.iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(products.iter().all(|p| p.call == call));
        assert_eq!(
            metadata_text(&trailers, SERVED_BY),
            format!("catalog-1#{call}")
        );
        assert!(
            !metadata_text(&headers, "cache-status").contains("hit"),
            "{}",
            metadata_text(&headers, "cache-status")
        );
    }
    assert_eq!(app.catalog.list_calls(), 2);
    assert_eq!(app.layer.stats().stores, 0);
}

on_both_stores!(a_streaming_method_opted_in_by_its_service_still_delivers_every_message);

/// Opting a whole service in opts in its streaming methods too (the layer cannot tell them from
/// unary ones by the request). Whether or not the layer stores such an answer, every call must
/// decode to every message, in order, with the trailers of the call that produced them.
async fn a_streaming_method_opted_in_by_its_service_still_delivers_every_message(
    layer: CacheLayer,
) {
    let app = start(layer.grpc(GrpcMethod::service(SERVICE))).await;
    for _ in 1..=2 {
        let (products, _, trailers) = app
            .client
            .clone()
            .list_products(ListRequest { count: 3 })
            .await
            .unwrap();
        assert_eq!(
            products.iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let call = products[0].call;
        assert!(products.iter().all(|p| p.call == call));
        assert_eq!(
            metadata_text(&trailers, SERVED_BY),
            format!("catalog-1#{call}")
        );
        // Let a store, if there is one, land before the next call.
        let _ = eventually(|| app.layer.stats().fills_in_flight == 0).await;
    }
    // A stream of messages is never stored, even on a method opted in by its service.
    assert_eq!(app.catalog.list_calls(), 2);
}

// ---------------------------------------------------------------------------------------------
// Authorization
// ---------------------------------------------------------------------------------------------

on_both_stores!(authorization_metadata_bypasses_by_default);

async fn authorization_metadata_bypasses_by_default(layer: CacheLayer) {
    let app = start(cached_product(layer)).await;
    for call in 1..=2 {
        let answer = get_product(
            &app.client,
            with_metadata(product_request(7), "authorization", "Bearer alice"),
        )
        .await;
        assert_eq!(
            answer.cache_status(),
            "trc; fwd=bypass; detail=authorization"
        );
        assert_eq!(answer.product.call, call);
    }
    assert_eq!(app.catalog.product_calls(), 2);
    let stats = app.layer.stats();
    assert_eq!(stats.bypassed_by.get("authorization").copied(), Some(2));
    assert_eq!(stats.stores, 0);
}

on_both_stores!(allow_authorization_caches_calls_that_carry_it);

async fn allow_authorization_caches_calls_that_carry_it(layer: CacheLayer) {
    let layer = layer.grpc(GrpcMethod::exact(GET_PRODUCT).allow_authorization());
    let app = start(layer).await;
    let bearer = |request| with_metadata(request, "authorization", "Bearer alice");
    let first = get_product(&app.client, bearer(product_request(7))).await;
    assert!(stored(&app.layer, 1).await);
    let second = get_product(&app.client, bearer(product_request(7))).await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!(second.product, first.product);
    assert_eq!(app.catalog.product_calls(), 1);
}

// ---------------------------------------------------------------------------------------------
// Coalescing and purging
// ---------------------------------------------------------------------------------------------

on_both_stores!(concurrent_identical_calls_coalesce_into_one_server_call);

async fn concurrent_identical_calls_coalesce_into_one_server_call(layer: CacheLayer) {
    const CALLS: usize = 50;
    let app = start(cached_product(layer)).await;
    // The server answers only once every call has missed, so all of them wait behind one fill.
    let counted = app.layer.clone();
    app.catalog
        .hold_until(Arc::new(move || counted.stats().misses >= CALLS as u64));

    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let client = app.client.clone();
            tokio::spawn(async move { get_product(&client, product_request(7)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }

    assert_eq!(
        app.catalog.product_calls(),
        1,
        "stats: {:?}",
        app.layer.stats()
    );
    let first = &answers[0];
    for answer in &answers {
        assert_eq!(answer.product, first.product);
        assert_eq!(answer.product.call, 1);
        assert_eq!(
            answer.served_by(),
            "catalog-1#1",
            "{}",
            answer.cache_status()
        );
    }
    let collapsed = answers
        .iter()
        .filter(|a| a.cache_status().contains("; collapsed"))
        .count();
    assert_eq!(collapsed, CALLS - 1, "stats: {:?}", app.layer.stats());
    assert_eq!(app.layer.stats().collapsed, CALLS as u64 - 1);

    assert!(stored(&app.layer, 1).await);
    assert!(get_product(&app.client, product_request(7)).await.is_hit());
    assert_eq!(app.catalog.product_calls(), 1);
}

on_both_stores!(purging_a_method_path_drops_its_entries);

async fn purging_a_method_path_drops_its_entries(layer: CacheLayer) {
    let app = start(cached_product(layer)).await;
    get_product(&app.client, product_request(7)).await;
    get_product(&app.client, product_request(8)).await;
    assert!(stored(&app.layer, 2).await);
    app.layer.purger().purge_path(GET_PRODUCT).await.unwrap();

    let seven = get_product(&app.client, product_request(7)).await;
    assert!(!seven.is_hit(), "{}", seven.cache_status());
    assert_eq!(seven.product.call, 3);
    assert_eq!(app.catalog.product_calls(), 3);
}

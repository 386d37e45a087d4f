//! A Tonic server behind the cache layer, with one cached unary method and one that is not, and
//! a client that shows the second identical call answered from the cache.
//!
//! Run with: cargo run --example grpc --features tonic
//!
//! The `demo.Catalog` service has three methods:
//!
//! - `GetProduct` (unary) is opted in with [`GrpcMethod::exact`]: its answers are cached for a
//!   minute, keyed on the request message and on the `x-tenant` metadata;
//! - `GetStock` (unary) is not opted in: every call reaches the server;
//! - `ListProducts` (server streaming) is not opted in either.
//!
//! The messages are written by hand with `prost`'s derive, and the server and client glue is
//! what `tonic-build` would generate for them, so no `protoc` is needed. The example prints one
//! line per call (the answer, the server's call counter, the `cache-status` response metadata
//! and the `x-served-by` trailer) and exits with status 1 if a call did not behave as described.
//!
//! The integration tests (`tests/grpc.rs`) reuse this file's server, client and messages.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use http::HeaderValue;
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{IntoRequest, Status};
use tonic_prost::ProstCodec;
use tower::layer::util::{Identity, Stack};
use tower_response_cache::grpc::GrpcMethod;
use tower_response_cache::{CacheLayer, MemoryStore};

// ---------------------------------------------------------------------------------------------
// Messages (what `prost-build` would generate from a `demo.proto`)
// ---------------------------------------------------------------------------------------------

/// Asks for one product.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProductRequest {
    /// The product's id (1 ..= 99 exist).
    #[prost(uint32, tag = "1")]
    pub id: u32,
}

/// One product, as the server knows it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Product {
    /// The product's id.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// Its name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Its price, in cents.
    #[prost(uint32, tag = "3")]
    pub price_cents: u32,
    /// The `x-tenant` metadata of the call that produced this answer (empty without one).
    #[prost(string, tag = "4")]
    pub tenant: String,
    /// Which call of the method produced this answer (1 for the first).
    #[prost(uint64, tag = "5")]
    pub call: u64,
}

/// Asks for the stock of one product.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StockRequest {
    /// The product's id.
    #[prost(uint32, tag = "1")]
    pub id: u32,
}

/// How many units of a product are in stock.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stock {
    /// The product's id.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// Units in stock (it changes on every call).
    #[prost(uint64, tag = "2")]
    pub units: u64,
    /// Which call of the method produced this answer (1 for the first).
    #[prost(uint64, tag = "3")]
    pub call: u64,
}

/// Asks for the first `count` products, one message each.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListRequest {
    /// How many products to stream (at most 99).
    #[prost(uint32, tag = "1")]
    pub count: u32,
}

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

/// The gRPC service name.
pub const SERVICE: &str = "demo.Catalog";
/// The path of the cached unary method.
pub const GET_PRODUCT: &str = "/demo.Catalog/GetProduct";
/// The path of the unary method that is not cached.
pub const GET_STOCK: &str = "/demo.Catalog/GetStock";
/// The path of the server-streaming method.
pub const LIST_PRODUCTS: &str = "/demo.Catalog/ListProducts";

/// The trailing metadata the server adds to every answer that has trailers: the server's name
/// and the call number, e.g. `catalog-1#3`.
pub const SERVED_BY: &str = "x-served-by";
/// The request metadata that `GetProduct` answers depend on.
pub const TENANT: &str = "x-tenant";

/// Held back answers: a handler waits until the gate says yes (or 10 s have passed).
pub type Gate = Arc<dyn Fn() -> bool + Send + Sync>;

/// The catalog's state and call counters, shared by every clone.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<CatalogInner>,
}

struct CatalogInner {
    name: String,
    product_calls: AtomicU64,
    stock_calls: AtomicU64,
    list_calls: AtomicU64,
    gate: Mutex<Option<Gate>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("name", &self.inner.name)
            .field("product_calls", &self.product_calls())
            .field("stock_calls", &self.stock_calls())
            .field("list_calls", &self.list_calls())
            .finish()
    }
}

/// The call number a handler put on its answer, for the `x-served-by` trailer.
#[derive(Debug, Clone, Copy)]
struct CallNumber(u64);

impl Catalog {
    /// A catalog whose answers say they were served by `name`.
    pub fn new(name: &str) -> Self {
        Catalog {
            inner: Arc::new(CatalogInner {
                name: name.to_owned(),
                product_calls: AtomicU64::new(0),
                stock_calls: AtomicU64::new(0),
                list_calls: AtomicU64::new(0),
                gate: Mutex::new(None),
            }),
        }
    }

    /// Hold every `GetProduct` answer back until `gate` says yes.
    pub fn hold_until(&self, gate: Gate) {
        *self
            .inner
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(gate);
    }

    /// How many `GetProduct` calls reached the server.
    pub fn product_calls(&self) -> u64 {
        self.inner.product_calls.load(Ordering::SeqCst)
    }

    /// How many `GetStock` calls reached the server.
    pub fn stock_calls(&self) -> u64 {
        self.inner.stock_calls.load(Ordering::SeqCst)
    }

    /// How many `ListProducts` calls reached the server.
    pub fn list_calls(&self) -> u64 {
        self.inner.list_calls.load(Ordering::SeqCst)
    }

    async fn wait_for_gate(&self) {
        let gate = self
            .inner
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(gate) = gate {
            for _ in 0..2000 {
                if gate() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    async fn get_product(
        self,
        request: tonic::Request<ProductRequest>,
    ) -> Result<tonic::Response<Product>, Status> {
        let call = self
            .inner
            .product_calls
            .fetch_add(1, Ordering::SeqCst)
            .saturating_add(1);
        self.wait_for_gate().await;
        let tenant = request
            .metadata()
            .get(TENANT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let id = request.into_inner().id;
        if !(1..=99).contains(&id) {
            return Err(Status::not_found(format!("no product {id}")));
        }
        let mut response = tonic::Response::new(product(id, tenant, call));
        response.extensions_mut().insert(CallNumber(call));
        Ok(response)
    }

    async fn get_stock(
        self,
        request: tonic::Request<StockRequest>,
    ) -> Result<tonic::Response<Stock>, Status> {
        let call = self
            .inner
            .stock_calls
            .fetch_add(1, Ordering::SeqCst)
            .saturating_add(1);
        let id = request.into_inner().id;
        let mut response = tonic::Response::new(Stock {
            id,
            units: 1000u64.saturating_sub(call),
            call,
        });
        response.extensions_mut().insert(CallNumber(call));
        Ok(response)
    }

    async fn list_products(
        self,
        request: tonic::Request<ListRequest>,
    ) -> Result<tonic::Response<ProductStream>, Status> {
        let call = self
            .inner
            .list_calls
            .fetch_add(1, Ordering::SeqCst)
            .saturating_add(1);
        let count = request.into_inner().count.min(99);
        let items: Vec<Result<Product, Status>> = (1..=count)
            .map(|id| Ok(product(id, String::new(), call)))
            .collect();
        let mut response = tonic::Response::new(futures_util::stream::iter(items));
        response.extensions_mut().insert(CallNumber(call));
        Ok(response)
    }
}

type ProductStream = futures_util::stream::Iter<std::vec::IntoIter<Result<Product, Status>>>;

fn product(id: u32, tenant: String, call: u64) -> Product {
    Product {
        id,
        name: format!("product {id}"),
        price_cents: id.saturating_mul(250),
        tenant,
        call,
    }
}

/// The `demo.Catalog` server: routes a call by its path to its handler, as generated code does.
#[derive(Debug, Clone)]
pub struct CatalogServer {
    catalog: Catalog,
}

impl CatalogServer {
    /// A server answering from `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        CatalogServer { catalog }
    }
}

impl NamedService for CatalogServer {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl tower::Service<http::Request<Body>> for CatalogServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let catalog = self.catalog.clone();
        let name = catalog.inner.name.clone();
        match request.uri().path() {
            GET_PRODUCT => Box::pin(async move {
                let handler = tower::service_fn(move |r| catalog.clone().get_product(r));
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(served_by(grpc.unary(handler, request).await, name))
            }),
            GET_STOCK => Box::pin(async move {
                let handler = tower::service_fn(move |r| catalog.clone().get_stock(r));
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(served_by(grpc.unary(handler, request).await, name))
            }),
            LIST_PRODUCTS => Box::pin(async move {
                let handler = tower::service_fn(move |r| catalog.clone().list_products(r));
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(served_by(
                    grpc.server_streaming(handler, request).await,
                    name,
                ))
            }),
            _ => Box::pin(async move {
                let status = Status::unimplemented("no such method");
                Ok(status.into_http())
            }),
        }
    }
}

/// Add the `x-served-by` trailer (server name and call number) to an answer that has trailers.
fn served_by(response: http::Response<Body>, name: String) -> http::Response<Body> {
    let call = response.extensions().get::<CallNumber>().map_or(0, |c| c.0);
    let value = HeaderValue::try_from(format!("{name}#{call}")).ok();
    response.map(|body| {
        Body::new(body.map_frame(move |frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                if let Some(value) = value.clone() {
                    trailers.insert(SERVED_BY, value);
                }
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        }))
    })
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// A `demo.Catalog` client over one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct CatalogClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl CatalogClient {
    /// Connect to a server at `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(CatalogClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// Call a unary method by its path.
    pub async fn unary<Req, Res>(
        &mut self,
        path: &'static str,
        request: impl IntoRequest<Req>,
    ) -> Result<tonic::Response<Res>, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Res: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|err| Status::unavailable(format!("the channel is not ready: {err}")))?;
        self.grpc
            .unary(
                request.into_request(),
                PathAndQuery::from_static(path),
                ProstCodec::default(),
            )
            .await
    }

    /// `GetProduct`.
    pub async fn get_product(
        &mut self,
        request: impl IntoRequest<ProductRequest>,
    ) -> Result<tonic::Response<Product>, Status> {
        self.unary(GET_PRODUCT, request).await
    }

    /// `GetStock`.
    pub async fn get_stock(
        &mut self,
        request: impl IntoRequest<StockRequest>,
    ) -> Result<tonic::Response<Stock>, Status> {
        self.unary(GET_STOCK, request).await
    }

    /// `ListProducts`, read to the end: the messages, the response's header metadata and its
    /// trailing metadata.
    pub async fn list_products(
        &mut self,
        request: impl IntoRequest<ListRequest>,
    ) -> Result<(Vec<Product>, MetadataMap, MetadataMap), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|err| Status::unavailable(format!("the channel is not ready: {err}")))?;
        let response = self
            .grpc
            .server_streaming(
                request.into_request(),
                PathAndQuery::from_static(LIST_PRODUCTS),
                ProstCodec::<ListRequest, Product>::default(),
            )
            .await?;
        let (metadata, mut stream, _) = response.into_parts();
        let mut products = Vec::new();
        while let Some(product) = stream.message().await? {
            products.push(product);
        }
        let trailers = stream.trailers().await?.unwrap_or_default();
        Ok((products, metadata, trailers))
    }
}

/// A metadata value as text ("" when it is missing).
pub fn metadata_text(metadata: &MetadataMap, name: &str) -> String {
    metadata
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// A Tonic router with `layer` in front of every service added to it.
pub type CachedRouter = Router<Stack<CacheLayer, Identity>>;

/// The example's cache: `GetProduct` only, for a minute, per tenant.
pub fn demo_layer() -> CacheLayer {
    CacheLayer::new(MemoryStore::new()).grpc(
        GrpcMethod::exact(GET_PRODUCT)
            .ttl(Duration::from_secs(60))
            .key_metadata(http::HeaderName::from_static(TENANT)),
    )
}

/// The Tonic server: `layer` in front of the catalog.
pub fn server_router(layer: CacheLayer, catalog: Catalog) -> CachedRouter {
    Server::builder()
        .layer(layer)
        .add_service(CatalogServer::new(catalog))
}

/// Serve `router` on a free loopback port, in the background.
pub async fn serve(router: CachedRouter) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let incoming = TcpIncoming::from(listener);
    tokio::spawn(async move {
        if let Err(err) = router.serve_with_incoming(incoming).await {
            eprintln!("the gRPC server stopped: {err}");
        }
    });
    Ok(addr)
}

/// Wait until `layer` has written `n` entries (writes happen in the background), at most 5 s.
pub async fn stored(layer: &CacheLayer, n: u64) -> bool {
    for _ in 0..500 {
        if layer.stats().stores >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    layer.stats().stores >= n
}

// ---------------------------------------------------------------------------------------------
// The walk-through
// ---------------------------------------------------------------------------------------------

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn check(ok: bool, what: &str) -> Result<(), Failure> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected: {what}").into())
    }
}

async fn walk_through() -> Result<(), Failure> {
    let catalog = Catalog::new("catalog-1");
    let layer = demo_layer();
    let addr = serve(server_router(layer.clone(), catalog.clone())).await?;
    let mut client = CatalogClient::connect(addr).await?;
    println!("gRPC server on {addr}; GetProduct is cached, GetStock is not\n");

    let mut answers = Vec::new();
    for round in 1..=2 {
        let response = client.get_product(ProductRequest { id: 7 }).await?;
        let metadata = response.metadata().clone();
        let product = response.into_inner();
        println!(
            "GetProduct(7) #{round}: {:?} at {} cents (answer of call {}); server calls: {}; \
             cache-status: {}; x-served-by: {}",
            product.name,
            product.price_cents,
            product.call,
            catalog.product_calls(),
            metadata_text(&metadata, "cache-status"),
            metadata_text(&metadata, SERVED_BY),
        );
        answers.push((product, metadata_text(&metadata, SERVED_BY)));
        if round == 1 {
            // The entry is written in the background once the answer has streamed.
            check(stored(&layer, 1).await, "the first answer was not stored")?;
        }
    }
    check(
        catalog.product_calls() == 1,
        "the second GetProduct reached the server",
    )?;
    check(
        answers.first() == answers.get(1),
        "the cached answer differs from the first",
    )?;

    for round in 1..=2 {
        let response = client.get_stock(StockRequest { id: 7 }).await?;
        let metadata = response.metadata().clone();
        let stock = response.into_inner();
        println!(
            "GetStock(7) #{round}: {} units (answer of call {}); server calls: {}; \
             cache-status: {}",
            stock.units,
            stock.call,
            catalog.stock_calls(),
            metadata_text(&metadata, "cache-status"),
        );
    }
    check(
        catalog.stock_calls() == 2,
        "a GetStock call was answered without the server",
    )?;

    let stats = layer.stats();
    println!(
        "\ncache: {} hit(s), {} miss(es), {} stored, {} bypassed",
        stats.hits, stats.misses, stats.stores, stats.bypasses
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match walk_through().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

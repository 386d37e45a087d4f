//! The load benchmark: every configuration side by side over loopback HTTP, driven by `wrk`.
//!
//! Run it through `./scripts/bench.sh`, which builds this example in release mode, starts a
//! private `redis-server` and calls `loadbench run`. The modes are:
//!
//! ```text
//! loadbench run --redis URL [--seconds 10] [--warmup 2] [--connections 64,256] [--threads 2]
//!               [--only NAME,NAME] [--stampede-rounds 3] [--md BENCHMARKS.md]
//!               [--svg docs/bench-chart.svg] [--command TEXT]
//! loadbench serve CONFIG --redis URL          (one configuration's server; a child of `run`)
//! loadbench node --redis URL --origin URL [--deadline-ms N]
//!                                             (one stampede instance; a child of `run`)
//! ```
//!
//! `run` starts one child process per configuration, so no configuration inherits another's
//! background tasks, connections or heap. Each child serves the same Axum origin (a 1 KiB JSON
//! body, at once or after 20 ms) with or without a cache in front, prints `listening PORT`, and
//! answers `stats` (and finally `stop`) on its stdin with a JSON line of its counters. For each
//! connection count `run` drives the child with `wrk` for the warm-up, then for the measured
//! run, and reads the result from one line that a small Lua `done` hook prints.
//!
//! Then it runs the stampede (four `node` processes sharing the Redis store, in front of one
//! slow origin that counts its calls, and 250 concurrent requests to each for one cold key),
//! measures what one entry costs in Redis (`MEMORY USAGE`) and in the memory store, and writes
//! the tables, the targets of the performance issue and the chart.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::error_handling::HandleError;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST};
use http::{HeaderValue, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{Layer, Service, ServiceExt};
use tower_response_cache::{CacheLayer, MemoryStore, RedisStore, Route};

/// The body every origin answers: 1 KiB of JSON.
const BODY_LEN: usize = 1024;
/// TTL given to every cache (longer than any run).
const TTL: Duration = Duration::from_secs(300);
/// The slow origin's latency (misses, stampede).
const SLOW_ORIGIN: Duration = Duration::from_millis(20);
/// The near cache's budget.
const NEAR_BYTES: u64 = 64 * 1024 * 1024;
/// The floor's Redis key.
const FLOOR_KEY: &str = "loadbench:floor";
/// Instances and requests per instance in the stampede.
const STAMPEDE_NODES: usize = 4;
const STAMPEDE_REQUESTS: usize = 250;
/// The namespace the stampede nodes share.
const STAMPEDE_NAMESPACE: &str = "stampede";

// ---------------------------------------------------------------------------------------------
// Configurations
// ---------------------------------------------------------------------------------------------

/// One row of the table: what serves the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    NoCache,
    Floor,
    TrcMemory,
    TrcRedis,
    TrcRedisLongDeadline,
    TrcNear,
    TrcBypass,
    NoCacheSlow,
    TrcMiss,
    ThcRedis,
    ThcMemory,
    AxumResponseCache,
}

/// Which target path the load generator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `/items/42` on every request.
    Item,
    /// `/nocache/items/42` on every request (the bypassed route).
    NoCacheItem,
    /// A new `/items/...` path on every request.
    Unique,
}

impl Config {
    const ALL: [Config; 12] = [
        Config::NoCache,
        Config::Floor,
        Config::TrcMemory,
        Config::TrcRedis,
        Config::TrcRedisLongDeadline,
        Config::TrcNear,
        Config::TrcBypass,
        Config::NoCacheSlow,
        Config::TrcMiss,
        Config::ThcRedis,
        Config::ThcMemory,
        Config::AxumResponseCache,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::NoCache => "no-cache",
            Config::Floor => "floor",
            Config::TrcMemory => "memory-hit",
            Config::TrcRedis => "redis-hit",
            Config::TrcRedisLongDeadline => "redis-hit-1s",
            Config::TrcNear => "near-hit",
            Config::TrcBypass => "bypass",
            Config::NoCacheSlow => "no-cache-20ms",
            Config::TrcMiss => "miss-20ms",
            Config::ThcRedis => "thc-redis",
            Config::ThcMemory => "thc-memory",
            Config::AxumResponseCache => "axum-response-cache",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Config::NoCache => "no cache (Axum handler, 0 ms origin)",
            Config::Floor => "floor: handler doing one Redis GET",
            Config::TrcMemory => "this crate: memory store, hits",
            Config::TrcRedis => "this crate: Redis store, hits",
            Config::TrcRedisLongDeadline => "this crate: Redis store, hits, 1 s read deadline",
            Config::TrcNear => "this crate: near cache + Redis, hits",
            Config::TrcBypass => "this crate: bypass route",
            Config::NoCacheSlow => "no cache, 20 ms origin",
            Config::TrcMiss => "this crate: misses, Redis store, 20 ms origin",
            Config::ThcRedis => "tower-http-cache 0.6: Redis backend, hits",
            Config::ThcMemory => "tower-http-cache 0.6: memory backend, hits",
            Config::AxumResponseCache => "axum-response-cache 0.5: hits",
        }
    }

    fn from_name(name: &str) -> Option<Config> {
        Config::ALL.into_iter().find(|config| config.name() == name)
    }

    fn target(self) -> Target {
        match self {
            Config::TrcBypass => Target::NoCacheItem,
            Config::TrcMiss => Target::Unique,
            _ => Target::Item,
        }
    }

    fn origin_delay(self) -> Duration {
        match self {
            Config::NoCacheSlow | Config::TrcMiss => SLOW_ORIGIN,
            _ => Duration::ZERO,
        }
    }

    /// The row the "× no cache" ratio divides by: the plain handler with the same origin.
    fn baseline(self) -> Config {
        match self {
            Config::NoCacheSlow | Config::TrcMiss => Config::NoCacheSlow,
            _ => Config::NoCache,
        }
    }

    /// Whether the "× floor" ratio means anything (rows with the 0 ms origin).
    fn compares_to_floor(self) -> bool {
        self.origin_delay().is_zero()
    }
}

// ---------------------------------------------------------------------------------------------
// The origin, the floor and the peers' wiring
// ---------------------------------------------------------------------------------------------

/// A JSON document of `len` bytes.
fn json_body(len: usize) -> Bytes {
    let head = r#"{"id":42,"name":"item 42","tags":["bench","load"],"padding":""#;
    let tail = "\"}";
    let fill = len.saturating_sub(head.len().saturating_add(tail.len()));
    let mut text = String::with_capacity(len.max(head.len() + tail.len()));
    text.push_str(head);
    text.extend(std::iter::repeat_n('x', fill));
    text.push_str(tail);
    Bytes::from(text)
}

fn json_response(body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}

/// The origin shared by every configuration: one body, an optional delay, a call counter.
#[derive(Clone, Debug)]
struct Origin {
    body: Bytes,
    delay: Duration,
    calls: Arc<AtomicU64>,
}

impl Origin {
    fn new(len: usize, delay: Duration) -> Self {
        Origin {
            body: json_body(len),
            delay,
            calls: Arc::new(AtomicU64::new(0)),
        }
    }
}

async fn item(State(origin): State<Origin>) -> Response {
    origin.calls.fetch_add(1, Ordering::Relaxed);
    if !origin.delay.is_zero() {
        tokio::time::sleep(origin.delay).await;
    }
    json_response(origin.body.clone())
}

/// The plain Axum app: the cached route and the bypassed one answer the same thing.
fn origin_router(origin: Origin) -> Router {
    Router::new()
        .route("/items/{id}", get(item))
        .route("/nocache/items/{id}", get(item))
        .with_state(origin)
}

/// The floor: every request reads its body from Redis with one `GET`.
#[derive(Clone)]
struct Floor {
    redis: redis::aio::ConnectionManager,
    calls: Arc<AtomicU64>,
}

async fn floor_item(State(floor): State<Floor>) -> Response {
    floor.calls.fetch_add(1, Ordering::Relaxed);
    let mut connection = floor.redis.clone();
    let value: Result<Option<Vec<u8>>, _> = redis::cmd("GET")
        .arg(FLOOR_KEY)
        .query_async(&mut connection)
        .await;
    match value {
        Ok(Some(body)) => json_response(Bytes::from(body)),
        Ok(None) => plain(StatusCode::NOT_FOUND, "floor key missing"),
        Err(_) => plain(StatusCode::BAD_GATEWAY, "redis failed"),
    }
}

/// An Axum body made `Sync` (tower-http-cache wants a `Sync` inner body; Axum's is not). The
/// mutex is never contended: polling goes through `get_mut`, which takes no lock.
struct SyncBody(Mutex<Body>);

impl http_body::Body for SyncBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let body = match self.get_mut().0.get_mut() {
            Ok(body) => body,
            Err(poisoned) => poisoned.into_inner(),
        };
        Pin::new(body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        match self.0.lock() {
            Ok(body) => body.is_end_stream(),
            Err(poisoned) => poisoned.into_inner().is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.lock() {
            Ok(body) => body.size_hint(),
            Err(poisoned) => poisoned.into_inner().size_hint(),
        }
    }
}

fn sync_response(response: Response) -> http::Response<SyncBody> {
    response.map(|body| SyncBody(Mutex::new(body)))
}

async fn peer_error(err: tower::BoxError) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
}

type SyncRouter = tower::util::MapResponse<Router, fn(Response) -> http::Response<SyncBody>>;

/// The origin behind a tower-http-cache layer, mounted as the fallback of an empty Router so
/// that `axum::serve` serves it like every other row.
fn thc_app<L, R>(layer: L, origin: Router) -> Router
where
    L: Layer<SyncRouter>,
    L::Service: Service<Request, Response = http::Response<R>, Error = tower::BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as Service<Request>>::Future: Send + 'static,
    R: http_body::Body<Data = Bytes> + Send + 'static,
    R::Error: Into<tower::BoxError>,
{
    let to_sync: fn(Response) -> http::Response<SyncBody> = sync_response;
    let inner: SyncRouter = tower::util::MapResponse::new(origin, to_sync);
    let cached = layer.layer(inner);
    Router::new().fallback_service(HandleError::new(cached, peer_error))
}

fn redis_layer(url: &str) -> Result<CacheLayer, String> {
    RedisStore::from_url(url)
        .map(CacheLayer::new)
        .map_err(|err| format!("redis store: {err}"))
}

/// What a configuration's server is made of.
struct App {
    router: Router,
    layer: Option<CacheLayer>,
    calls: Arc<AtomicU64>,
}

async fn build_app(config: Config, redis_url: &str) -> Result<App, String> {
    let origin = Origin::new(BODY_LEN, config.origin_delay());
    let calls = Arc::clone(&origin.calls);
    let cached = |layer: CacheLayer, origin: Origin| App {
        router: origin_router(origin).layer(layer.clone()),
        layer: Some(layer),
        calls: Arc::clone(&calls),
    };
    let app = match config {
        Config::NoCache | Config::NoCacheSlow => App {
            router: origin_router(origin),
            layer: None,
            calls: Arc::clone(&calls),
        },
        Config::Floor => {
            let client = redis::Client::open(redis_url).map_err(|err| err.to_string())?;
            let mut redis = client
                .get_connection_manager()
                .await
                .map_err(|err| format!("floor connection: {err}"))?;
            redis::cmd("SET")
                .arg(FLOOR_KEY)
                .arg(origin.body.as_ref())
                .query_async::<()>(&mut redis)
                .await
                .map_err(|err| format!("floor SET: {err}"))?;
            let floor = Floor {
                redis,
                calls: Arc::clone(&calls),
            };
            App {
                router: Router::new()
                    .route("/items/{id}", get(floor_item))
                    .with_state(floor),
                layer: None,
                calls: Arc::clone(&calls),
            }
        }
        Config::TrcMemory => cached(CacheLayer::new(MemoryStore::new()), origin),
        Config::TrcRedis | Config::TrcMiss => cached(redis_layer(redis_url)?, origin),
        Config::TrcRedisLongDeadline => cached(
            redis_layer(redis_url)?.read_deadline(Duration::from_secs(1)),
            origin,
        ),
        Config::TrcNear => cached(redis_layer(redis_url)?.near_cache(NEAR_BYTES), origin),
        Config::TrcBypass => cached(
            redis_layer(redis_url)?.route(Route::prefix("/nocache").bypass()),
            origin,
        ),
        Config::ThcRedis => {
            use tower_http_cache::prelude::{CacheLayer as ThcLayer, RedisBackend};
            // As the crate's README sets up its Redis backend.
            let client = redis::Client::open(redis_url).map_err(|err| err.to_string())?;
            let settings = redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10)))
                .set_connection_timeout(Some(Duration::from_secs(5)));
            let manager = client
                .get_connection_manager_with_config(settings)
                .await
                .map_err(|err| format!("tower-http-cache connection: {err}"))?;
            let layer = ThcLayer::builder(RedisBackend::new(manager))
                .ttl(TTL)
                .build();
            App {
                router: thc_app(layer, origin_router(origin)),
                layer: None,
                calls: Arc::clone(&calls),
            }
        }
        Config::ThcMemory => {
            use tower_http_cache::prelude::{CacheLayer as ThcLayer, InMemoryBackend};
            // As the crate's quick start: a moka backend bounded to 10 000 entries.
            let layer = ThcLayer::builder(InMemoryBackend::new(10_000))
                .ttl(TTL)
                .build();
            App {
                router: thc_app(layer, origin_router(origin)),
                layer: None,
                calls: Arc::clone(&calls),
            }
        }
        Config::AxumResponseCache => {
            // As the crate's README: the layer on the route's method router.
            let route = get(item).layer(axum_response_cache::CacheLayer::with_lifespan(TTL));
            App {
                router: Router::new().route("/items/{id}", route).with_state(origin),
                layer: None,
                calls: Arc::clone(&calls),
            }
        }
    };
    Ok(app)
}

// ---------------------------------------------------------------------------------------------
// Child processes: `serve` and `node`
// ---------------------------------------------------------------------------------------------

/// Read stdin on a thread of its own; every line (and the end of input, as `stop`) goes to the
/// returned channel.
fn stdin_commands() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_owned()).is_err() {
                return;
            }
        }
        let _ = tx.send("stop".to_owned());
    });
    rx
}

fn stats_json(calls: &AtomicU64, layer: Option<&CacheLayer>) -> serde_json::Value {
    let cache = layer.map(|layer| {
        let stats = layer.stats();
        serde_json::json!({
            "hits": stats.hits,
            "misses": stats.misses,
            "collapsed": stats.collapsed,
            "bypasses": stats.bypasses,
            "stores": stats.stores,
            "store_errors": stats.store_errors,
            "writes_dropped": stats.writes_dropped,
            "locks_acquired": stats.locks_acquired,
            "locks_waited": stats.locks_waited,
            "lock_timeouts": stats.lock_timeouts,
        })
    });
    serde_json::json!({ "origin_calls": calls.load(Ordering::Relaxed), "cache": cache })
}

/// Serve `router` on a free loopback port; print `listening PORT`; answer `stats` lines; on
/// `stop` print the last stats and leave the process.
async fn serve_until_stopped(
    router: Router,
    calls: Arc<AtomicU64>,
    layer: Option<CacheLayer>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|err| format!("bind: {err}"))?;
    let port = listener.local_addr().map_err(|err| err.to_string())?.port();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            eprintln!("loadbench: server failed: {err}");
        }
    });
    let mut commands = stdin_commands();
    let mut out = std::io::stdout();
    writeln!(out, "listening {port}").map_err(|err| err.to_string())?;
    out.flush().map_err(|err| err.to_string())?;
    while let Some(command) = commands.recv().await {
        let stats = stats_json(&calls, layer.as_ref());
        writeln!(out, "stats {stats}").map_err(|err| err.to_string())?;
        out.flush().map_err(|err| err.to_string())?;
        if command == "stop" {
            break;
        }
    }
    Ok(())
}

async fn serve_config(config: Config, redis_url: &str) -> Result<(), String> {
    let app = build_app(config, redis_url).await?;
    if let Some(layer) = &app.layer {
        layer
            .ping()
            .await
            .map_err(|err| format!("store not answering: {err}"))?;
    }
    serve_until_stopped(app.router, app.calls, app.layer).await
}

/// The stampede instance's inner service: fetches every request from the shared origin.
#[derive(Clone)]
struct Forwarder {
    client: Client<HttpConnector, Empty<Bytes>>,
    origin: Arc<str>,
    calls: Arc<AtomicU64>,
}

async fn forward(State(forwarder): State<Forwarder>, request: Request) -> Response {
    forwarder.calls.fetch_add(1, Ordering::Relaxed);
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let upstream = match format!("{}{target}", forwarder.origin).parse() {
        Ok(uri) => forwarder.client.get(uri).await,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "bad target"),
    };
    let Ok(upstream) = upstream else {
        return plain(StatusCode::BAD_GATEWAY, "origin unreachable");
    };
    let status = upstream.status();
    let cache_control = upstream.headers().get(CACHE_CONTROL).cloned();
    let Ok(body) = upstream.into_body().collect().await else {
        return plain(StatusCode::BAD_GATEWAY, "origin body broken");
    };
    let mut response = json_response(body.to_bytes());
    *response.status_mut() = status;
    if let Some(value) = cache_control {
        response.headers_mut().insert(CACHE_CONTROL, value);
    }
    response
}

/// Wait until a message published on the layer's events channel comes back to a subscription
/// of our own (the layer subscribed before us, so fills from other instances reach it).
async fn events_ready(layer: &CacheLayer) -> Result<(), String> {
    let store = layer.store();
    let channel = format!("{STAMPEDE_NAMESPACE}:events");
    let mut messages = store
        .subscribe(&channel)
        .ok_or("the store has no events channel")?;
    // A well-formed fill event for a key nobody waits on.
    let probe = Bytes::from_static(br#"{"fill":{"key":"loadbench-probe"}}"#);
    for _ in 0..250 {
        store
            .publish(&channel, probe.clone())
            .await
            .map_err(|err| err.to_string())?;
        let heard = tokio::time::timeout(Duration::from_millis(20), messages.recv()).await;
        if matches!(heard, Ok(Some(_))) {
            return Ok(());
        }
    }
    Err("no message came back on the events channel".to_owned())
}

async fn serve_node(
    redis_url: &str,
    origin: &str,
    deadline: Option<Duration>,
) -> Result<(), String> {
    let store = RedisStore::from_url(redis_url).map_err(|err| err.to_string())?;
    let mut layer = CacheLayer::new(store).namespace(STAMPEDE_NAMESPACE);
    if let Some(deadline) = deadline {
        layer = layer.read_deadline(deadline).write_deadline(deadline);
    }
    let calls = Arc::new(AtomicU64::new(0));
    let forwarder = Forwarder {
        client: Client::builder(TokioExecutor::new()).build_http(),
        origin: Arc::from(origin.trim_end_matches('/')),
        calls: Arc::clone(&calls),
    };
    let router = Router::new()
        .fallback(forward)
        .with_state(forwarder)
        .layer(layer.clone());
    layer.ping().await.map_err(|err| err.to_string())?;
    events_ready(&layer).await?;
    serve_until_stopped(router, calls, Some(layer)).await
}

// ---------------------------------------------------------------------------------------------
// The driver side: child handles and wrk
// ---------------------------------------------------------------------------------------------

/// A child process of ours that serves HTTP, with its control pipes.
struct ChildServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl ChildServer {
    fn spawn(args: &[&str]) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|err| err.to_string())?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| format!("cannot start {args:?}: {err}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("child pipes missing".to_owned());
        };
        let mut server = ChildServer {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            port: 0,
        };
        let line = server.read_line()?;
        server.port = line
            .strip_prefix("listening ")
            .and_then(|port| port.trim().parse().ok())
            .ok_or_else(|| format!("{args:?} did not start: {line:?}"))?;
        Ok(server)
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err("child exited".to_owned()),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(err) => Err(err.to_string()),
        }
    }

    fn command(&mut self, command: &str) -> Result<serde_json::Value, String> {
        writeln!(self.stdin, "{command}").map_err(|err| err.to_string())?;
        self.stdin.flush().map_err(|err| err.to_string())?;
        let line = self.read_line()?;
        let json = line
            .strip_prefix("stats ")
            .ok_or_else(|| format!("unexpected answer {line:?}"))?;
        serde_json::from_str(json).map_err(|err| err.to_string())
    }

    fn stats(&mut self) -> Result<serde_json::Value, String> {
        self.command("stats")
    }

    fn stop(&mut self) -> Result<serde_json::Value, String> {
        let stats = self.command("stop");
        let _ = self.child.wait();
        stats
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        // Our own child, by its handle; a no-op once it has been waited for.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn origin_calls(stats: &serde_json::Value) -> u64 {
    stats["origin_calls"].as_u64().unwrap_or(0)
}

/// One `wrk` run's numbers.
#[derive(Debug, Clone, Default)]
struct WrkResult {
    requests: u64,
    duration_us: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    /// Socket errors and non-2xx/3xx answers, summed.
    errors: u64,
    error_detail: String,
}

impl WrkResult {
    fn rps(&self) -> f64 {
        if self.duration_us == 0 {
            return 0.0;
        }
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
}

const REPORT_LUA: &str = r#"-- loadbench: one machine-readable line at the end of the run
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "LOADBENCH requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f max_us=%.0f connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50.0), latency:percentile(99.0),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"#;

const UNIQUE_LUA: &str = r#"-- loadbench: a new path on every request
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
local prefix = "x"
local counter = 0
function init(args)
  prefix = (args[1] or "run") .. "-" .. tostring(tid) .. "-"
end
function request()
  counter = counter + 1
  return wrk.format("GET", "/items/" .. prefix .. counter)
end
"#;

/// How the load generator is run.
#[derive(Debug, Clone)]
struct Load {
    threads: usize,
    scripts: PathBuf,
}

impl Load {
    fn new(threads: usize) -> Result<Self, String> {
        let scripts = std::env::temp_dir().join(format!("loadbench-{}", std::process::id()));
        std::fs::create_dir_all(&scripts).map_err(|err| err.to_string())?;
        std::fs::write(scripts.join("report.lua"), REPORT_LUA).map_err(|err| err.to_string())?;
        let unique = format!("{UNIQUE_LUA}\n{REPORT_LUA}");
        std::fs::write(scripts.join("unique.lua"), unique).map_err(|err| err.to_string())?;
        Ok(Load { threads, scripts })
    }

    fn run(
        &self,
        port: u16,
        target: Target,
        connections: usize,
        seconds: u64,
        nonce: &str,
    ) -> Result<WrkResult, String> {
        let (path, script) = match target {
            Target::Item => ("/items/42", "report.lua"),
            Target::NoCacheItem => ("/nocache/items/42", "report.lua"),
            Target::Unique => ("/items/", "unique.lua"),
        };
        let threads = self.threads.clamp(1, connections.max(1));
        let output = Command::new("wrk")
            .arg(format!("-t{threads}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{seconds}s"))
            .arg("--timeout")
            .arg("5s")
            .arg("-s")
            .arg(self.scripts.join(script))
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .arg("--")
            .arg(nonce)
            .output()
            .map_err(|err| format!("cannot run wrk: {err}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .find_map(|line| line.strip_prefix("LOADBENCH "))
            .ok_or_else(|| {
                format!(
                    "wrk printed no result: {}{}",
                    stdout,
                    String::from_utf8_lossy(&output.stderr)
                )
            })?;
        let fields: HashMap<&str, f64> = line
            .split_whitespace()
            .filter_map(|field| {
                let (name, value) = field.split_once('=')?;
                Some((name, value.parse().ok()?))
            })
            .collect();
        let field = |name: &str| fields.get(name).copied().unwrap_or(0.0);
        let mut result = WrkResult {
            requests: field("requests") as u64,
            duration_us: field("duration_us") as u64,
            p50_us: field("p50_us"),
            p99_us: field("p99_us"),
            max_us: field("max_us"),
            ..WrkResult::default()
        };
        let mut details = Vec::new();
        for name in ["connect", "read", "write", "status", "timeout"] {
            let count = field(name) as u64;
            if count > 0 {
                result.errors = result.errors.saturating_add(count);
                details.push(format!("{name} {count}"));
            }
        }
        result.error_detail = details.join(", ");
        Ok(result)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scripts);
    }
}

/// One request over a fresh connection; the value of its `Cache-Status` header.
fn probe(port: u16, path: &str) -> String {
    let answer = (|| -> std::io::Result<String> {
        let mut stream = StdTcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })();
    let Ok(text) = answer else {
        return "(probe failed)".to_owned();
    };
    let status_line = text.lines().next().unwrap_or("").to_owned();
    let cache_status = text
        .lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("cache-status")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "-".to_owned());
    format!("{status_line} / cache-status: {cache_status}")
}

fn flush_redis(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|err| err.to_string())?;
    let mut connection = client.get_connection().map_err(|err| err.to_string())?;
    redis::cmd("FLUSHALL")
        .query::<()>(&mut connection)
        .map_err(|err| format!("FLUSHALL: {err}"))
}

fn redis_version(url: &str) -> String {
    let info = (|| -> Result<String, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let mut connection = client.get_connection()?;
        redis::cmd("INFO").arg("server").query(&mut connection)
    })();
    info.ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("redis_version:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// CPU time, to tell how much of the machine other work took during a run.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSample {
    /// Busy seconds of the whole machine (user, nice, system, irq, softirq, steal).
    machine: f64,
    /// Seconds used by our server child.
    server: f64,
    /// Seconds used by our children already waited for (the `wrk` runs).
    waited: f64,
    /// Seconds used by redis-server (its `INFO cpu`).
    redis: f64,
    at: Option<Instant>,
}

/// Clock ticks per second of `/proc` times (USER_HZ; 100 on Linux unless `getconf` says so).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        command_line("getconf", &["CLK_TCK"])
            .parse::<f64>()
            .ok()
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Fields of a `/proc/<pid>/stat` line after the command name, numbered from 3 (the state).
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')?.checked_add(2)?..)?;
    Some(
        rest.split_whitespace()
            .map(|field| field.parse().unwrap_or(0))
            .collect(),
    )
}

fn cpu_sample(server_pid: u32, redis_url: &str) -> CpuSample {
    let ticks = clock_ticks();
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| {
            let line = text.lines().next()?.strip_prefix("cpu ")?.to_owned();
            let v: Vec<u64> = line
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            // user nice system idle iowait irq softirq steal
            let busy = [0usize, 1, 2, 5, 6, 7]
                .iter()
                .map(|&i| v.get(i).copied().unwrap_or(0))
                .sum::<u64>();
            Some(busy as f64 / ticks)
        })
        .unwrap_or(0.0);
    // Field 14/15 are utime/stime, 16/17 cutime/cstime; index 0 here is field 3.
    let pick = |fields: &Option<Vec<u64>>, a: usize, b: usize| {
        fields.as_ref().map_or(0.0, |f| {
            (f.get(a - 3).copied().unwrap_or(0) + f.get(b - 3).copied().unwrap_or(0)) as f64 / ticks
        })
    };
    let own = stat_fields("self");
    let server = stat_fields(&server_pid.to_string());
    let redis = (|| -> Option<f64> {
        let client = redis::Client::open(redis_url).ok()?;
        let mut connection = client.get_connection().ok()?;
        let info: String = redis::cmd("INFO").arg("cpu").query(&mut connection).ok()?;
        let value = |name: &str| -> f64 {
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        Some(value("used_cpu_sys:") + value("used_cpu_user:"))
    })()
    .unwrap_or(0.0);
    CpuSample {
        machine,
        server: pick(&server, 14, 15),
        waited: pick(&own, 16, 17),
        redis,
        at: Some(Instant::now()),
    }
}

/// Share of the machine (all cores) that processes other than ours used between two samples.
fn other_cpu(before: &CpuSample, after: &CpuSample) -> Option<f64> {
    let wall = after.at?.checked_duration_since(before.at?)?.as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if wall <= 0.0 {
        return None;
    }
    let ours = (after.server - before.server)
        + (after.waited - before.waited)
        + (after.redis - before.redis);
    let other = (after.machine - before.machine) - ours;
    Some((other / (wall * cores) * 100.0).clamp(0.0, 100.0))
}

// ---------------------------------------------------------------------------------------------
// The throughput rows
// ---------------------------------------------------------------------------------------------

/// One measured row: a configuration at one connection count.
#[derive(Debug, Clone)]
struct Row {
    config: Config,
    connections: usize,
    result: WrkResult,
    origin_calls: u64,
    /// Percent of the machine used by other processes during the measured run.
    other_cpu: Option<f64>,
    /// CPU microseconds per request of the server process, and of redis-server.
    server_us: f64,
    redis_us: f64,
}

fn run_config(config: Config, options: &Options, load: &Load) -> Result<Vec<Row>, String> {
    flush_redis(&options.redis)?;
    let mut server = ChildServer::spawn(&["serve", config.name(), "--redis", &options.redis])?;
    let mut rows = Vec::new();
    for (round, &connections) in options.connections.iter().enumerate() {
        let nonce = format!("{}-{round}-{}", config.name(), std::process::id());
        if options.warmup > 0 {
            load.run(
                server.port,
                config.target(),
                connections,
                options.warmup,
                &format!("{nonce}-warm"),
            )?;
        }
        let before = origin_calls(&server.stats()?);
        let cpu_before = cpu_sample(server.child.id(), &options.redis);
        let result = load.run(
            server.port,
            config.target(),
            connections,
            options.seconds,
            &nonce,
        )?;
        let cpu_after = cpu_sample(server.child.id(), &options.redis);
        let other_cpu = other_cpu(&cpu_before, &cpu_after);
        let per_request = |seconds: f64| seconds.max(0.0) * 1e6 / result.requests.max(1) as f64;
        let server_us = per_request(cpu_after.server - cpu_before.server);
        let redis_us = per_request(cpu_after.redis - cpu_before.redis);
        let after = origin_calls(&server.stats()?);
        let path = match config.target() {
            Target::NoCacheItem => "/nocache/items/42",
            _ => "/items/42",
        };
        let probe = probe(server.port, path);
        let line = format!(
            "{:<22} c={connections:<4} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  origin calls {}  errors {}  other CPU {:.0} %  server {:.1} µs/req  redis {:.1} µs/req  probe: {probe}",
            config.name(),
            result.rps(),
            result.p50_us / 1000.0,
            result.p99_us / 1000.0,
            result.max_us / 1000.0,
            after.saturating_sub(before),
            result.errors,
            other_cpu.unwrap_or(f64::NAN),
            server_us,
            redis_us,
        );
        eprintln!("{line}");
        rows.push(Row {
            config,
            connections,
            result,
            origin_calls: after.saturating_sub(before),
            other_cpu,
            server_us,
            redis_us,
        });
    }
    let stats = server.stop()?;
    if !stats["cache"].is_null() {
        eprintln!("{:<22} layer stats: {}", config.name(), stats["cache"]);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Stampede
// ---------------------------------------------------------------------------------------------

/// One stampede round's outcome.
#[derive(Debug, Clone, Default)]
struct StampedeRound {
    origin_calls: u64,
    requests: usize,
    failed: usize,
    p50: Duration,
    max: Duration,
    /// From the release of all requests to the last answer.
    all_done: Duration,
    outcomes: BTreeMap<String, usize>,
    node_stats: Vec<serde_json::Value>,
    settings: &'static str,
}

impl StampedeRound {
    /// The instances' layer counters that explain origin calls, summed.
    fn counters(&self) -> String {
        let keys = [
            "locks_acquired",
            "locks_waited",
            "lock_timeouts",
            "store_errors",
        ];
        keys.iter()
            .map(|key| {
                let total: u64 = self
                    .node_stats
                    .iter()
                    .map(|node| node["cache"][*key].as_u64().unwrap_or(0))
                    .sum();
                format!("{key} {total}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The slow origin of the stampede: counts its calls per path.
#[derive(Clone, Debug, Default)]
struct CountingOrigin {
    calls: Arc<Mutex<HashMap<String, u64>>>,
    body: Bytes,
}

async fn counting_item(State(origin): State<CountingOrigin>, request: Request) -> Response {
    {
        let mut calls = match origin.calls.lock() {
            Ok(calls) => calls,
            Err(poisoned) => poisoned.into_inner(),
        };
        *calls.entry(request.uri().path().to_owned()).or_default() += 1;
    }
    tokio::time::sleep(SLOW_ORIGIN).await;
    json_response(origin.body.clone())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
        .unwrap_or_default()
}

/// A `Cache-Status` value without its `ttl=` part (which differs from one response to the next).
fn outcome_of(cache_status: &str) -> String {
    if cache_status.is_empty() {
        return "(none)".to_owned();
    }
    cache_status
        .split(';')
        .map(str::trim)
        .filter(|part| !part.starts_with("ttl="))
        .collect::<Vec<_>>()
        .join("; ")
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn open_connection(port: u16) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|err| err.to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| err.to_string())?;
    tokio::spawn(connection);
    sender.ready().await.map_err(|err| err.to_string())?;
    Ok(sender)
}

async fn stampede_round(
    ports: &[u16],
    origin: &CountingOrigin,
    path: &str,
) -> Result<StampedeRound, String> {
    // Every connection is open before the first request goes.
    let mut opening = Vec::new();
    for &port in ports {
        for _ in 0..STAMPEDE_REQUESTS {
            opening.push(tokio::spawn(open_connection(port)));
        }
    }
    let mut senders = Vec::with_capacity(opening.len());
    for task in opening {
        senders.push(task.await.map_err(|err| err.to_string())??);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(senders.len() + 1));
    let mut tasks = Vec::with_capacity(senders.len());
    for mut sender in senders {
        let barrier = Arc::clone(&barrier);
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let request = http::Request::get(path)
                .header(HOST, "stampede.test")
                .body(Empty::<Bytes>::new())
                .ok()?;
            barrier.wait().await;
            let started = Instant::now();
            let response = sender.send_request(request).await.ok()?;
            let status = response.status();
            let cache_status = response
                .headers()
                .get("cache-status")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("")
                .to_owned();
            response.into_body().collect().await.ok()?;
            Some((started.elapsed(), status, cache_status, Instant::now()))
        }));
    }
    barrier.wait().await;
    let released = Instant::now();
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut round = StampedeRound {
        requests: tasks.len(),
        ..StampedeRound::default()
    };
    let mut last = released;
    for task in tasks {
        match task.await {
            Ok(Some((latency, status, cache_status, finished))) if status.is_success() => {
                latencies.push(latency);
                last = last.max(finished);
                *round.outcomes.entry(outcome_of(&cache_status)).or_default() += 1;
            }
            _ => round.failed += 1,
        }
    }
    latencies.sort();
    round.p50 = percentile(&latencies, 50.0);
    round.max = latencies.last().copied().unwrap_or_default();
    round.all_done = last.saturating_duration_since(released);
    round.origin_calls = {
        let calls = match origin.calls.lock() {
            Ok(calls) => calls,
            Err(poisoned) => poisoned.into_inner(),
        };
        calls.get(path).copied().unwrap_or(0)
    };
    Ok(round)
}

/// The settings the stampede instances run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeSettings {
    /// `CacheLayer::new(store)` as it comes (20 ms read deadline).
    Defaults,
    /// Read and write deadlines of 1 s, so that a slow store on a loaded machine is not a
    /// bypass: what is left is the coalescing itself.
    LongDeadlines,
}

impl NodeSettings {
    fn label(self) -> &'static str {
        match self {
            NodeSettings::Defaults => "default settings",
            NodeSettings::LongDeadlines => "read/write deadline 1 s",
        }
    }

    fn deadline_ms(self) -> Option<&'static str> {
        match self {
            NodeSettings::Defaults => None,
            NodeSettings::LongDeadlines => Some("1000"),
        }
    }
}

fn spawn_nodes(
    redis: &str,
    origin_url: &str,
    settings: NodeSettings,
) -> Result<Vec<ChildServer>, String> {
    (0..STAMPEDE_NODES)
        .map(|_| {
            let mut args = vec!["node", "--redis", redis, "--origin", origin_url];
            if let Some(ms) = settings.deadline_ms() {
                args.extend(["--deadline-ms", ms]);
            }
            ChildServer::spawn(&args)
        })
        .collect()
}

async fn run_stampede(options: &Options) -> Result<Vec<StampedeRound>, String> {
    flush_redis(&options.redis)?;
    let origin = CountingOrigin {
        calls: Arc::default(),
        body: json_body(BODY_LEN),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|err| err.to_string())?;
    let origin_port = listener.local_addr().map_err(|err| err.to_string())?.port();
    let router = Router::new()
        .fallback(counting_item)
        .with_state(origin.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let origin_url = format!("http://127.0.0.1:{origin_port}");
    let mut rounds = Vec::new();
    for settings in [NodeSettings::Defaults, NodeSettings::LongDeadlines] {
        for round in 0..options.stampede_rounds {
            // Fresh instances every round: no breaker state or warm connection carries over.
            let (redis, url) = (options.redis.clone(), origin_url.clone());
            let nodes = tokio::task::spawn_blocking(move || spawn_nodes(&redis, &url, settings))
                .await
                .map_err(|err| err.to_string())??;
            let ports: Vec<u16> = nodes.iter().map(|node| node.port).collect();
            let path = format!(
                "/items/stampede-{}-{settings:?}-{round}",
                std::process::id()
            );
            let mut result = stampede_round(&ports, &origin, &path).await?;
            result.settings = settings.label();
            result.node_stats = tokio::task::spawn_blocking(move || {
                let mut nodes = nodes;
                nodes
                    .iter_mut()
                    .map(|node| node.stop().unwrap_or(serde_json::Value::Null))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|err| err.to_string())?;
            eprintln!(
                "stampede ({}) round {round}: origin calls {}, p50 {:.1} ms, max {:.1} ms, all answered after {:.1} ms, outcomes {:?}, failed {}, layer {}",
                result.settings,
                result.origin_calls,
                result.p50.as_secs_f64() * 1e3,
                result.max.as_secs_f64() * 1e3,
                result.all_done.as_secs_f64() * 1e3,
                result.outcomes,
                result.failed,
                result.counters(),
            );
            rounds.push(result);
        }
    }
    server.abort();
    Ok(rounds)
}

// ---------------------------------------------------------------------------------------------
// Memory per entry
// ---------------------------------------------------------------------------------------------

/// Bytes one entry costs in Redis.
#[derive(Debug, Clone, Default)]
struct RedisEntry {
    body: usize,
    /// `MEMORY USAGE` of the entry key.
    memory_usage: u64,
    /// `STRLEN`: the stored envelope.
    value_len: u64,
    key_len: usize,
    /// Every key the fill left in the namespace, and their `MEMORY USAGE` summed.
    keys: usize,
    all_keys_usage: u64,
    /// `MEMORY USAGE` of the bare body stored under a key of the same length.
    bare_usage: u64,
}

/// Bytes per entry in the memory store.
#[derive(Debug, Clone, Default)]
struct MemoryEntry {
    body: usize,
    entries: u64,
    weighted: u64,
}

async fn send_through(app: &Router, path: &str) -> Result<(), String> {
    let request = http::Request::get(format!("http://bench.test{path}"))
        .body(Body::empty())
        .map_err(|err| err.to_string())?;
    let response = app
        .clone()
        .oneshot(request)
        .await
        .map_err(|err| err.to_string())?;
    response
        .into_body()
        .collect()
        .await
        .map_err(|err| err.to_string())?;
    Ok(())
}

async fn memory_usage(
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Result<u64, String> {
    redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async::<Option<u64>>(redis)
        .await
        .map(Option::unwrap_or_default)
        .map_err(|err| err.to_string())
}

async fn redis_entry(url: &str, body: usize) -> Result<RedisEntry, String> {
    let namespace = format!("mem{body}");
    let layer = redis_layer(url)?.namespace(&namespace);
    let app = origin_router(Origin::new(body, Duration::ZERO)).layer(layer.clone());
    send_through(&app, "/items/1").await?;
    let client = redis::Client::open(url).map_err(|err| err.to_string())?;
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|err| err.to_string())?;
    let pattern = format!("{namespace}:*");
    let mut keys: Vec<String> = Vec::new();
    for _ in 0..200 {
        keys = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut redis)
            .await
            .map_err(|err| err.to_string())?;
        if keys.iter().any(|key| key.contains(":e:")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let entry_key = keys
        .iter()
        .find(|key| key.contains(":e:"))
        .cloned()
        .ok_or("the entry was not stored")?;
    // Let the fill finish (its lock is deleted after the write), then count what is left.
    tokio::time::sleep(Duration::from_millis(300)).await;
    keys = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut redis)
        .await
        .map_err(|err| err.to_string())?;
    let mut entry = RedisEntry {
        body,
        memory_usage: memory_usage(&mut redis, &entry_key).await?,
        key_len: entry_key.len(),
        keys: keys.len(),
        ..RedisEntry::default()
    };
    entry.value_len = redis::cmd("STRLEN")
        .arg(&entry_key)
        .query_async(&mut redis)
        .await
        .map_err(|err| err.to_string())?;
    for key in &keys {
        entry.all_keys_usage = entry
            .all_keys_usage
            .saturating_add(memory_usage(&mut redis, key).await?);
    }
    let bare_key: String = std::iter::repeat_n('b', entry_key.len()).collect();
    redis::cmd("SET")
        .arg(&bare_key)
        .arg(json_body(body).as_ref())
        .query_async::<()>(&mut redis)
        .await
        .map_err(|err| err.to_string())?;
    entry.bare_usage = memory_usage(&mut redis, &bare_key).await?;
    Ok(entry)
}

async fn memory_entry(body: usize, entries: u64) -> Result<MemoryEntry, String> {
    let store = MemoryStore::new();
    let layer = CacheLayer::new(store.clone());
    let app = origin_router(Origin::new(body, Duration::ZERO)).layer(layer);
    for i in 0..entries {
        send_through(&app, &format!("/items/{i}")).await?;
    }
    for _ in 0..500 {
        if store.len() >= entries {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(MemoryEntry {
        body,
        entries: store.len(),
        weighted: store.weighted_size(),
    })
}

async fn run_memory(url: &str) -> Result<(Vec<RedisEntry>, Vec<MemoryEntry>), String> {
    flush_redis(url)?;
    let mut redis = Vec::new();
    for body in [1024, 32 * 1024] {
        let entry = redis_entry(url, body).await?;
        eprintln!("redis entry: {entry:?}");
        redis.push(entry);
    }
    let mut memory = Vec::new();
    for (body, entries) in [(1024, 1000), (32 * 1024, 200)] {
        let entry = memory_entry(body, entries).await?;
        eprintln!("memory store: {entry:?}");
        memory.push(entry);
    }
    Ok((redis, memory))
}

// ---------------------------------------------------------------------------------------------
// The report: markdown and SVG
// ---------------------------------------------------------------------------------------------

/// What the machine looked like.
#[derive(Debug, Clone, Default)]
struct Machine {
    date: String,
    nproc: usize,
    cpu: String,
    load_before: String,
    load_after: String,
    rustc: String,
    wrk: String,
    redis: String,
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// Everything one run measured.
#[derive(Debug, Default)]
struct Report {
    machine: Machine,
    rows: Vec<Row>,
    stampede: Vec<StampedeRound>,
    redis_entries: Vec<RedisEntry>,
    memory_entries: Vec<MemoryEntry>,
    /// Parts that could not be measured, with the reason.
    failures: Vec<String>,
}

impl Report {
    fn row(&self, config: Config, connections: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|row| row.config == config && row.connections == connections)
    }

    fn ratio(&self, config: Config, other: Config, connections: usize) -> Option<f64> {
        let a = self.row(config, connections)?.result.rps();
        let b = self.row(other, connections)?.result.rps();
        (b > 0.0).then(|| a / b)
    }

    fn p99_ratio(&self, config: Config, other: Config, connections: usize) -> Option<f64> {
        let a = self.row(config, connections)?.result.p99_us;
        let b = self.row(other, connections)?.result.p99_us;
        (b > 0.0).then(|| a / b)
    }
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

fn ratio_cell(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}"))
}

/// One target of the issue and whether this run met it.
struct TargetCheck {
    target: &'static str,
    measured: String,
    held: Option<bool>,
}

fn all_held(checks: &[(f64, f64, bool)]) -> Option<bool> {
    if checks.is_empty() {
        None
    } else {
        Some(checks.iter().all(|&(value, bound, at_least)| {
            if at_least {
                value >= bound
            } else {
                value <= bound
            }
        }))
    }
}

fn targets(report: &Report, connections: &[usize]) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let ratio_target =
        |target: &'static str, config: Config, other: Config, bound: f64, only: Option<usize>| {
            let mut checks = Vec::new();
            let mut parts = Vec::new();
            for &c in connections {
                if only.is_some_and(|o| o != c) {
                    continue;
                }
                if let Some(r) = report.ratio(config, other, c) {
                    checks.push((r, bound, true));
                    parts.push(format!("{r:.2}× at {c}"));
                }
            }
            TargetCheck {
                target,
                measured: if parts.is_empty() {
                    "not measured".to_owned()
                } else {
                    parts.join(", ")
                },
                held: all_held(&checks),
            }
        };
    let mut check = ratio_target(
        "Redis-store hits ≥ 0.9× the one-GET floor",
        Config::TrcRedis,
        Config::Floor,
        0.9,
        None,
    );
    let variant = ratio_target("", Config::TrcRedisLongDeadline, Config::Floor, 0.9, None);
    check.measured = format!(
        "{}; with a 1 s read deadline: {}",
        check.measured, variant.measured
    );
    out.push(check);
    {
        let mut checks = Vec::new();
        let mut parts = Vec::new();
        let mut variant = Vec::new();
        for &c in connections {
            if let Some(r) = report.p99_ratio(Config::TrcRedis, Config::Floor, c) {
                checks.push((r, 1.2, false));
                parts.push(format!("{r:.2}× at {c}"));
            }
            if let Some(r) = report.p99_ratio(Config::TrcRedisLongDeadline, Config::Floor, c) {
                variant.push(format!("{r:.2}× at {c}"));
            }
        }
        let join = |parts: &[String]| {
            if parts.is_empty() {
                "not measured".to_owned()
            } else {
                parts.join(", ")
            }
        };
        out.push(TargetCheck {
            target: "Redis-store hits p99 ≤ 1.2× the floor's",
            measured: format!(
                "{}; with a 1 s read deadline: {}",
                join(&parts),
                join(&variant)
            ),
            held: all_held(&checks),
        });
    }
    out.push(ratio_target(
        "near-cache hits ≥ 0.9× no cache",
        Config::TrcNear,
        Config::NoCache,
        0.9,
        None,
    ));
    out.push(ratio_target(
        "bypass ≥ 0.97× no cache",
        Config::TrcBypass,
        Config::NoCache,
        0.97,
        None,
    ));
    out.push(ratio_target(
        "Redis-store hits ≥ 1.2× tower-http-cache Redis (64 conns)",
        Config::TrcRedis,
        Config::ThcRedis,
        1.2,
        Some(64),
    ));
    out.push(ratio_target(
        "memory-store hits ≥ 1.3× tower-http-cache memory (64 conns)",
        Config::TrcMemory,
        Config::ThcMemory,
        1.3,
        Some(64),
    ));
    {
        let variant = |settings: NodeSettings| -> Vec<&StampedeRound> {
            report
                .stampede
                .iter()
                .filter(|round| round.settings == settings.label())
                .collect()
        };
        let defaults = variant(NodeSettings::Defaults);
        let relaxed = variant(NodeSettings::LongDeadlines);
        let describe = |show: &dyn Fn(&StampedeRound) -> String| {
            let part = |name: &str, rounds: &[&StampedeRound]| {
                let values: Vec<String> = rounds.iter().map(|r| show(r)).collect();
                format!("{name}: {}", values.join(", "))
            };
            if defaults.is_empty() && relaxed.is_empty() {
                "not measured".to_owned()
            } else {
                format!(
                    "{}; {} (per round)",
                    part("defaults", &defaults),
                    part("1 s deadlines", &relaxed)
                )
            }
        };
        out.push(TargetCheck {
            target: "stampede: 1 origin call across the 4 instances (verdict on the defaults)",
            measured: describe(&|r| r.origin_calls.to_string()),
            held: (!defaults.is_empty()).then(|| defaults.iter().all(|r| r.origin_calls == 1)),
        });
        let bound = SLOW_ORIGIN + Duration::from_millis(10);
        out.push(TargetCheck {
            target:
                "stampede: client p50 ≤ origin latency + 10 ms = 30 ms (verdict on the defaults)",
            measured: describe(&|r| format!("{:.1} ms", r.p50.as_secs_f64() * 1e3)),
            held: (!defaults.is_empty()).then(|| defaults.iter().all(|r| r.p50 <= bound)),
        });
    }
    {
        let entry = report.redis_entries.iter().find(|e| e.body == 1024);
        out.push(TargetCheck {
            target: "Redis bytes per 1 KiB entry ≤ 1.15 KiB",
            measured: entry.map_or_else(
                || "not measured".to_owned(),
                |e| {
                    format!(
                        "{} B = {:.2} KiB",
                        e.memory_usage,
                        e.memory_usage as f64 / 1024.0
                    )
                },
            ),
            held: entry.map(|e| e.memory_usage as f64 <= 1.15 * 1024.0),
        });
    }
    out
}

fn markdown(report: &Report, options: &Options) -> String {
    let m = &report.machine;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "<!-- loadbench:begin (written by scripts/bench.sh; edits up to loadbench:end are lost) -->"
    );
    let _ = writeln!(md, "Command:\n\n```sh\n{}\n```\n", options.command);
    let _ = writeln!(md, "- Date: `{}`", m.date);
    let _ = writeln!(
        md,
        "- Machine: `nproc` = {}, CPU `{}`; load average (1, 5, 15 min) `{}` at the start, `{}` at the end",
        m.nproc, m.cpu, m.load_before, m.load_after
    );
    let _ = writeln!(
        md,
        "- {}; redis-server {} (private, free loopback port, `--save \"\" --appendonly no`); {}",
        m.rustc, m.redis, m.wrk
    );
    let _ = writeln!(
        md,
        "- Load: `wrk -t{} -c<conns> -d{}s` after a {} s warm-up at the same connection count, \
         on the same cores as the server and redis-server; one server process per configuration, \
         Tokio multi-thread runtime with its default worker count; Redis flushed before each \
         configuration",
        options.threads, options.seconds, options.warmup
    );
    let _ = writeln!(
        md,
        "- Workload: `GET /items/42` answered by the same Axum handler everywhere: a 1 KiB JSON \
         body (`Content-Type: application/json`, no `Cache-Control`), every cache with a 300 s \
         TTL; the bypass row asks for `/nocache/items/42` under \
         `.route(Route::prefix(\"/nocache\").bypass())`; the miss rows ask for a new path on \
         every request from a handler that sleeps 20 ms first"
    );
    let _ = writeln!(
        md,
        "- “× no cache” divides by the plain handler with the same origin (0 ms, or 20 ms for \
         the miss rows); “× floor” by the one-GET handler at the same connection count; \
         “origin calls” counts the handler's calls during the measured run: about 0 for hits; on a \
         hit row, more means requests that went to the origin because the store read missed its \
         deadline (and then the circuit breaker skipped the store for a while); “other CPU” is the \
         share of the machine (all cores) that processes other than the server, wrk and \
         redis-server used during the measured run: a row with much of it was measured on a \
         busier machine than the others; “server CPU / req” and “redis CPU / req” are the CPU \
         time the server process and redis-server spent per request during the measured run \
         (less sensitive to other work on the machine than req/s)\n"
    );
    let _ = writeln!(
        md,
        "| configuration | conns | req/s | p50 | p99 | × no cache | × floor | server CPU / req | redis CPU / req | origin calls | errors | other CPU |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
    );
    for config in Config::ALL {
        for &c in &options.connections {
            let Some(row) = report.row(config, c) else {
                continue;
            };
            let vs_base = report.ratio(config, config.baseline(), c);
            let vs_floor = config
                .compares_to_floor()
                .then(|| report.ratio(config, Config::Floor, c))
                .flatten();
            let errors = if row.result.errors == 0 {
                "0".to_owned()
            } else {
                format!("{} ({})", row.result.errors, row.result.error_detail)
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {:.1} µs | {:.1} µs | {} | {} | {} |",
                config.label(),
                c,
                row.result.rps(),
                ms(row.result.p50_us),
                ms(row.result.p99_us),
                ratio_cell(vs_base),
                ratio_cell(vs_floor),
                row.server_us,
                row.redis_us,
                row.origin_calls,
                errors,
                row.other_cpu
                    .map_or_else(|| "?".to_owned(), |p| format!("{p:.0} %"))
            );
        }
    }
    let _ = writeln!(
        md,
        "\n![req/s by configuration and connection count](docs/bench-chart.svg)\n"
    );

    if !report.stampede.is_empty() {
        let _ = writeln!(md, "### Stampede\n");
        let _ = writeln!(
            md,
            "{STAMPEDE_NODES} processes (`loadbench node`), each a `CacheLayer` on a `RedisStore` \
             (namespace `{STAMPEDE_NAMESPACE}`) in front of a forwarder to one shared origin \
             that sleeps 20 ms and counts its calls; fresh processes for every round. \
             {STAMPEDE_REQUESTS} connections per instance are opened first, then all {} \
             requests for one cold path are released at once (the same `Host` everywhere, so \
             one key). Latency is per request, from its send to the end of its body. The \
             instances run first with the default settings, then with 1 s read and write \
             deadlines instead of 20 ms, which tells store reads that were too slow on this \
             machine (bypassed, so they call the origin) apart from the coalescing itself. \
             Outcomes are the responses' `Cache-Status` without `ttl=`.\n",
            STAMPEDE_NODES * STAMPEDE_REQUESTS
        );
        let _ = writeln!(
            md,
            "| settings | round | requests | origin calls | client p50 | client max | all answered after | outcomes | failed | layer counters (sum of the 4) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---|---:|---|");
        let mut numbers: HashMap<&str, usize> = HashMap::new();
        for round in &report.stampede {
            let number = numbers.entry(round.settings).or_default();
            *number += 1;
            let outcomes: Vec<String> = round
                .outcomes
                .iter()
                .map(|(name, count)| format!("`{name}` {count}"))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {} |",
                round.settings,
                number,
                round.requests,
                round.origin_calls,
                round.p50.as_secs_f64() * 1e3,
                round.max.as_secs_f64() * 1e3,
                round.all_done.as_secs_f64() * 1e3,
                outcomes.join(", "),
                round.failed,
                round.counters()
            );
        }
        let _ = writeln!(md);
    }

    if !report.redis_entries.is_empty() || !report.memory_entries.is_empty() {
        let _ = writeln!(md, "### Memory per entry\n");
        let _ = writeln!(
            md,
            "Redis: one response stored through the layer (same handler, 2 response headers), \
             then `MEMORY USAGE <key> SAMPLES 0` of its entry key; for comparison, the bare body \
             `SET` under a key of the same length.\n"
        );
        let _ = writeln!(
            md,
            "| body | entry `MEMORY USAGE` | ÷ body | stored value (`STRLEN`) | ÷ body | key length | keys left by the fill (their usage) | bare body `MEMORY USAGE` |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---|---:|");
        for e in &report.redis_entries {
            let _ = writeln!(
                md,
                "| {} B | {} B | {:.3} | {} B | {:.3} | {} | {} ({} B) | {} B |",
                e.body,
                e.memory_usage,
                e.memory_usage as f64 / e.body.max(1) as f64,
                e.value_len,
                e.value_len as f64 / e.body.max(1) as f64,
                e.key_len,
                e.keys,
                e.all_keys_usage,
                e.bare_usage
            );
        }
        let _ = writeln!(
            md,
            "\nMemory store: `MemoryStore::weighted_size()` ÷ `len()` after filling it through the \
             layer (the weigher counts key and value bytes, not the allocator's overhead).\n"
        );
        let _ = writeln!(
            md,
            "| body | entries | weighted size | bytes per entry | ÷ body |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|");
        for e in &report.memory_entries {
            let per = e.weighted as f64 / e.entries.max(1) as f64;
            let _ = writeln!(
                md,
                "| {} B | {} | {} B | {:.0} B | {:.3} |",
                e.body,
                e.entries,
                e.weighted,
                per,
                per / e.body.max(1) as f64
            );
        }
        let _ = writeln!(md);
    }

    let _ = writeln!(md, "### Targets in this run\n");
    let _ = writeln!(md, "| target (issue 6) | this run | held |");
    let _ = writeln!(md, "|---|---|---|");
    for check in targets(report, &options.connections) {
        let held = match check.held {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(md, "| {} | {} | {} |", check.target, check.measured, held);
    }
    if !report.failures.is_empty() {
        let _ = writeln!(md, "\nNot measured in this run:\n");
        for failure in &report.failures {
            let _ = writeln!(md, "- {failure}");
        }
    }
    let _ = writeln!(md, "<!-- loadbench:end -->");
    md
}

/// Put the generated part into the document's "Load" section.
fn splice(document: &str, generated: &str) -> String {
    const BEGIN: &str = "<!-- loadbench:begin";
    const END: &str = "<!-- loadbench:end -->";
    if let (Some(begin), Some(end)) = (document.find(BEGIN), document.find(END)) {
        if begin < end {
            let after = end + END.len();
            let rest = document.get(after..).unwrap_or("");
            let rest = rest.strip_prefix('\n').unwrap_or(rest);
            return format!(
                "{}{generated}{rest}",
                document.get(..begin).unwrap_or(document)
            );
        }
    }
    if let Some(header) = document.find("\n## Load\n") {
        let at = header + "\n## Load\n".len();
        return format!(
            "{}\n{generated}{}",
            document.get(..at).unwrap_or(document),
            document.get(at..).unwrap_or("")
        );
    }
    let mut out = document.trim_end().to_owned();
    out.push_str("\n\n## Load\n\n");
    out.push_str(generated);
    out
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step for an axis that reaches `max`.
fn nice_step(max: f64) -> f64 {
    let rough = (max / 5.0).max(1.0);
    let magnitude = 10f64.powf(rough.log10().floor());
    let scaled = rough / magnitude;
    let nice = if scaled <= 1.0 {
        1.0
    } else if scaled <= 2.0 {
        2.0
    } else if scaled <= 2.5 {
        2.5
    } else if scaled <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Horizontal grouped bars: req/s by configuration, one bar per connection count.
fn chart(report: &Report, options: &Options) -> String {
    const COLOURS: [&str; 4] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"];
    let configs: Vec<Config> = Config::ALL
        .into_iter()
        .filter(|&config| report.rows.iter().any(|row| row.config == config))
        .collect();
    let conns = &options.connections;
    let (label_w, plot_w, right, top, bar_h, bar_gap, group_gap) =
        (330.0, 500.0, 80.0, 70.0, 13.0, 2.0, 12.0);
    let group_h = conns.len() as f64 * (bar_h + bar_gap) + group_gap;
    let height = top + configs.len() as f64 * group_h + 40.0;
    let width = label_w + plot_w + right;
    let max = report
        .rows
        .iter()
        .map(|row| row.result.rps())
        .fold(0.0, f64::max)
        .max(1.0);
    let step = nice_step(max);
    let axis_max = (max / step).ceil() * step;
    let x = |value: f64| label_w + value / axis_max * plot_w;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">Requests per second on loopback (1 KiB JSON, wrk, {} s runs)</text>"#,
        options.seconds
    );
    let _ = writeln!(
        svg,
        r##"<text x="10" y="40" fill="#555555">{} · nproc {} · {}</text>"##,
        xml_escape(&report.machine.date),
        report.machine.nproc,
        xml_escape(&report.machine.cpu)
    );
    for (i, c) in conns.iter().enumerate() {
        let lx = label_w + i as f64 * 130.0;
        let colour = COLOURS.get(i % COLOURS.len()).unwrap_or(&"#888888");
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.0}" y="48" width="12" height="12" fill="{colour}"/><text x="{:.0}" y="58">{c} connections</text>"#,
            lx + 16.0
        );
    }
    let bottom = height - 30.0;
    let mut tick = 0.0;
    while tick <= axis_max + 0.5 {
        let tx = x(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{tx:.1}" y1="{top:.0}" x2="{tx:.1}" y2="{bottom:.0}" stroke="#dddddd"/><text x="{tx:.1}" y="{:.0}" text-anchor="middle" fill="#555555">{}</text>"##,
            bottom + 14.0,
            if tick >= 1000.0 {
                format!("{:.0}k", tick / 1000.0)
            } else {
                format!("{tick:.0}")
            }
        );
        tick += step;
    }
    for (g, config) in configs.iter().enumerate() {
        let gy = top + g as f64 * group_h;
        let label_y = gy + (conns.len() as f64 * (bar_h + bar_gap)) / 2.0 + 4.0;
        let _ = writeln!(
            svg,
            r#"<text x="{:.0}" y="{label_y:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            xml_escape(config.label())
        );
        for (i, &c) in conns.iter().enumerate() {
            let Some(row) = report.row(*config, c) else {
                continue;
            };
            let rps = row.result.rps();
            let by = gy + i as f64 * (bar_h + bar_gap);
            let colour = COLOURS.get(i % COLOURS.len()).unwrap_or(&"#888888");
            let _ = writeln!(
                svg,
                r#"<rect x="{label_w:.0}" y="{by:.1}" width="{:.1}" height="{bar_h:.0}" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="11">{rps:.0}</text>"#,
                (x(rps) - label_w).max(0.5),
                x(rps) + 4.0,
                by + bar_h - 2.5
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{label_w:.0}" y1="{top:.0}" x2="{label_w:.0}" y2="{bottom:.0}" stroke="#333333"/>"##
    );
    let _ = writeln!(svg, "</svg>");
    svg
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// Options of `loadbench run`.
#[derive(Debug, Clone)]
struct Options {
    redis: String,
    seconds: u64,
    warmup: u64,
    connections: Vec<usize>,
    threads: usize,
    only: Option<Vec<Config>>,
    stampede_rounds: usize,
    /// Whether to measure the bytes per entry.
    memory: bool,
    md: Option<PathBuf>,
    svg: Option<PathBuf>,
    command: String,
}

const USAGE: &str = "usage:
  loadbench run --redis URL [--seconds N] [--warmup N] [--connections 64,256] [--threads N]
                [--only NAME,...] [--stampede-rounds N] [--md FILE] [--svg FILE] [--command TEXT]
  loadbench serve CONFIG --redis URL
  loadbench node --redis URL --origin URL [--deadline-ms N]
names for --only: every configuration's name, and `stampede`, `memory`";

fn parse_run(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        redis: String::new(),
        seconds: 10,
        warmup: 2,
        connections: vec![64, 256],
        threads: 2,
        only: None,
        stampede_rounds: 3,
        memory: true,
        md: None,
        svg: None,
        command: "./scripts/bench.sh".to_owned(),
    };
    let mut only_extra = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        let number = |text: String| {
            text.trim()
                .parse::<u64>()
                .map_err(|_| format!("{arg}: not a number: {text:?}"))
        };
        match arg.as_str() {
            "--redis" => options.redis = value()?,
            "--seconds" => options.seconds = number(value()?)?.max(1),
            "--warmup" => options.warmup = number(value()?)?,
            "--threads" => options.threads = number(value()?)?.max(1) as usize,
            "--stampede-rounds" => options.stampede_rounds = number(value()?)? as usize,
            "--connections" => {
                options.connections = value()?
                    .split(',')
                    .filter(|part| !part.trim().is_empty())
                    .map(|part| {
                        part.trim()
                            .parse::<usize>()
                            .map_err(|_| format!("--connections: not a number: {part:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--only" => {
                let mut configs = Vec::new();
                for name in value()?.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    match (Config::from_name(name), name) {
                        (Some(config), _) => configs.push(config),
                        (None, "stampede" | "memory") => only_extra.push(name.to_owned()),
                        (None, _) => return Err(format!("--only: unknown name {name:?}")),
                    }
                }
                options.only = Some(configs);
            }
            "--md" => options.md = Some(PathBuf::from(value()?)),
            "--svg" => options.svg = Some(PathBuf::from(value()?)),
            "--command" => options.command = value()?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.redis.is_empty() {
        return Err("--redis is required".to_owned());
    }
    if options.connections.is_empty() {
        return Err("--connections needs at least one count".to_owned());
    }
    if options.only.is_some() {
        if !only_extra.iter().any(|name| name == "stampede") {
            options.stampede_rounds = 0;
        }
        options.memory = only_extra.iter().any(|name| name == "memory");
    }
    Ok(options)
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|err| err.to_string())?;
        }
    }
    std::fs::write(path, text).map_err(|err| format!("{}: {err}", path.display()))
}

fn run(options: &Options) -> Result<(), String> {
    let mut report = Report {
        machine: Machine {
            date: command_line("date", &["-u"]),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu: cpu_model(),
            load_before: load_average(),
            rustc: command_line("rustc", &["--version"]),
            wrk: command_line("wrk", &["--version"])
                .split(" Copyright")
                .next()
                .unwrap_or("wrk")
                .to_owned(),
            redis: redis_version(&options.redis),
            ..Machine::default()
        },
        ..Report::default()
    };
    let load = Load::new(options.threads)?;
    let configs: Vec<Config> = match &options.only {
        Some(only) => Config::ALL
            .into_iter()
            .filter(|config| only.contains(config))
            .collect(),
        None => Config::ALL.to_vec(),
    };
    for config in configs {
        match run_config(config, options, &load) {
            Ok(rows) => report.rows.extend(rows),
            Err(err) => {
                eprintln!("loadbench: {} failed: {err}", config.name());
                report.failures.push(format!("{}: {err}", config.label()));
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    if options.stampede_rounds > 0 {
        match runtime.block_on(run_stampede(options)) {
            Ok(rounds) => report.stampede = rounds,
            Err(err) => report.failures.push(format!("stampede: {err}")),
        }
    }
    if options.memory {
        match runtime.block_on(run_memory(&options.redis)) {
            Ok((redis, memory)) => {
                report.redis_entries = redis;
                report.memory_entries = memory;
            }
            Err(err) => report.failures.push(format!("memory: {err}")),
        }
    }
    for failure in &report.failures {
        eprintln!("loadbench: failed: {failure}");
    }
    report.machine.load_after = load_average();
    let generated = markdown(&report, options);
    println!("{generated}");
    if let Some(path) = &options.md {
        let document = std::fs::read_to_string(path).unwrap_or_default();
        write_file(path, &splice(&document, &generated))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &options.svg {
        if !report.rows.is_empty() {
            write_file(path, &chart(&report, options))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn child_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())
}

fn flag(args: &[String], name: &str) -> Result<String, String> {
    args.iter()
        .position(|arg| arg == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| format!("{name} is required"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => parse_run(args.get(1..).unwrap_or(&[])).and_then(|options| run(&options)),
        Some("serve") => (|| {
            let name = args.get(1).ok_or("serve needs a configuration name")?;
            let config =
                Config::from_name(name).ok_or_else(|| format!("unknown configuration {name:?}"))?;
            let redis = flag(&args, "--redis")?;
            child_runtime()?.block_on(serve_config(config, &redis))
        })(),
        Some("node") => (|| {
            let redis = flag(&args, "--redis")?;
            let origin = flag(&args, "--origin")?;
            let deadline = match flag(&args, "--deadline-ms") {
                Ok(ms) => Some(Duration::from_millis(
                    ms.parse().map_err(|_| "--deadline-ms needs a number")?,
                )),
                Err(_) => None,
            };
            child_runtime()?.block_on(serve_node(&redis, &origin, deadline))
        })(),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => {
            // The children leave here with tasks still running; do not wait for them.
            let _ = std::io::stdout().flush();
            std::process::exit(0);
        }
        Err(err) => {
            eprintln!("loadbench: {err}");
            ExitCode::FAILURE
        }
    }
}

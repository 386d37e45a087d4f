//! The fault, integrity and metadata tests of the reliability plan (RELIABILITY.md part (c)):
//! Redis refused at boot, killed and restarted, black-holed, slow, stripped of its scripts and
//! keys, out of memory, and demoted to a replica (F1-F7); TTLs on every key, corrupted entries
//! and aborted origin bodies (D1-D3); huge and streamed bodies (B3); and request data kept out
//! of key names, `Cache-Status` and logs (S8).
//!
//! Every test runs a real Axum origin behind the layer over real TCP, with a private
//! redis-server, reached directly or through the in-process [`FaultProxy`]. A small ledger sits
//! between the layer and the origin and records, per request id, the status the origin sent and,
//! per URL, every body it sent. Each client response is judged against it:
//!
//! - a **cache-caused 5xx** is a status >= 500 whose origin response was not a 5xx (or that
//!   never reached the origin): there must be none;
//! - a **foreign body** is a body the origin never sent for that URL: there must be none;
//! - a **transport error** (the request failed, or its body broke off) must not happen either.
//!
//! Waits are bounded polls of a condition, never assertions on elapsed time.

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::fault_proxy::FaultProxy;
use support::origin::{app, serve, Calls};
use support::redis_server::{RedisServer, Reply};
use tokio::task::JoinSet;
use tower_response_cache::entry::EntryCodec;
use tower_response_cache::key::KeyDeriver;
use tower_response_cache::{BreakerState, CacheLayer, RedisStore};

// ---------------------------------------------------------------------------------------------
// The rig: origin, ledger, layer and client
// ---------------------------------------------------------------------------------------------

/// The secret every layer here uses, so tests can derive and decode what the layer wrote.
const SECRET: &[u8] = b"the fault tests' key secret, 32 bytes+";

/// The header carrying each request's id from the client to the ledger.
const REQUEST_ID: &str = "x-request-id";

/// Longest a bounded wait polls its condition (the assertion after it then fails).
const WAIT_POLLS: usize = 1000;

/// Poll `condition` every 10 ms, at most [`WAIT_POLLS`] times.
async fn until(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..WAIT_POLLS {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// What the origin answered: the status per request id, and every body per URL.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<LedgerInner>>);

#[derive(Default)]
struct LedgerInner {
    statuses: HashMap<u64, u16>,
    bodies: HashMap<String, HashSet<Bytes>>,
}

/// Middleware between the layer and the origin: records what the origin sent.
async fn record(State(ledger): State<Ledger>, request: Request, next: Next) -> Response {
    let id: Option<u64> = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let url = request.uri().to_string();
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    {
        let mut inner = ledger.0.lock().unwrap();
        if let Some(id) = id {
            inner.statuses.insert(id, parts.status.as_u16());
        }
        inner.bodies.entry(url).or_default().insert(bytes.clone());
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// One response as the client saw it.
#[derive(Debug, Clone)]
struct Seen {
    status: StatusCode,
    cache_status: String,
    body: Bytes,
}

impl Seen {
    fn is_hit(&self) -> bool {
        self.cache_status.contains("; hit")
    }
}

/// Counts over every request a rig sent.
#[derive(Debug, Default, Clone)]
struct Tally {
    requests: u64,
    hits: u64,
    store_bypasses: u64,
    cache_caused_5xx: u64,
    foreign_bodies: u64,
    transport_errors: u64,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Rig {
    calls: Calls,
    ledger: Ledger,
    client: HttpClient,
    base: String,
    host: String,
    next_id: AtomicU64,
    tally: Mutex<Tally>,
    statuses: Mutex<Vec<String>>,
}

impl Rig {
    /// The scripted origin (`support::origin::app`) behind the ledger and `layer`.
    async fn start(layer: CacheLayer) -> Arc<Rig> {
        let calls = Calls::default();
        let ledger = Ledger::default();
        let router = app(calls.clone())
            .layer(middleware::from_fn_with_state(ledger.clone(), record))
            .layer(layer);
        let addr = serve(router).await;
        Arc::new(Rig {
            calls,
            ledger,
            client: http_client(),
            base: format!("http://{addr}"),
            host: addr.to_string(),
            next_id: AtomicU64::new(1),
            tally: Mutex::new(Tally::default()),
            statuses: Mutex::new(Vec::new()),
        })
    }

    async fn get(&self, path: &str) -> Option<Seen> {
        self.send(Method::GET, path, &[]).await
    }

    /// Send one request with a fresh id, judge the answer against the ledger and return it
    /// (`None` on a transport error, which is counted).
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Option<Seen> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(REQUEST_ID, id);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).unwrap();
        let result = async {
            let response = self.client.request(request).await.ok()?;
            let status = response.status();
            let cache_status = response
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some(Seen {
                status,
                cache_status,
                body,
            })
        }
        .await;
        self.judge(id, path, result.as_ref());
        result
    }

    fn judge(&self, id: u64, path: &str, seen: Option<&Seen>) {
        let mut tally = self.tally.lock().unwrap();
        tally.requests += 1;
        let Some(seen) = seen else {
            tally.transport_errors += 1;
            return;
        };
        self.statuses
            .lock()
            .unwrap()
            .push(seen.cache_status.clone());
        let ledger = self.ledger.0.lock().unwrap();
        let origin_5xx = ledger.statuses.get(&id).is_some_and(|s| *s >= 500);
        if seen.status.is_server_error() && !origin_5xx {
            tally.cache_caused_5xx += 1;
        }
        if !ledger
            .bodies
            .get(path)
            .is_some_and(|bodies| bodies.contains(&seen.body))
        {
            tally.foreign_bodies += 1;
        }
        if seen.is_hit() {
            tally.hits += 1;
        }
        if seen.cache_status.contains("fwd=bypass")
            && seen.cache_status.contains("detail=store-unavailable")
        {
            tally.store_bypasses += 1;
        }
    }

    fn tally(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    /// No cache-caused 5xx, no foreign body, no failed request.
    fn assert_clean(&self) {
        let tally = self.tally();
        assert_eq!(tally.cache_caused_5xx, 0, "cache-caused 5xx: {tally:?}");
        assert_eq!(
            tally.foreign_bodies, 0,
            "bodies the origin never sent: {tally:?}"
        );
        assert_eq!(tally.transport_errors, 0, "failed requests: {tally:?}");
    }

    /// Send every path (each once), `workers` at a time; the answers in no particular order.
    async fn drive(self: &Arc<Self>, paths: &[String], workers: usize) -> Vec<Seen> {
        let paths = Arc::new(paths.to_vec());
        let next = Arc::new(AtomicUsize::new(0));
        let mut set = JoinSet::new();
        for _ in 0..workers.max(1) {
            let (rig, paths, next) = (Arc::clone(self), Arc::clone(&paths), Arc::clone(&next));
            set.spawn(async move {
                let mut seen = Vec::new();
                while let Some(path) = paths.get(next.fetch_add(1, Ordering::SeqCst)) {
                    if let Some(answer) = rig.get(path).await {
                        seen.push(answer);
                    }
                }
                seen
            });
        }
        let mut all = Vec::new();
        while let Some(done) = set.join_next().await {
            all.extend(done.unwrap());
        }
        all
    }

    /// The entry key the layer uses for a plain GET of `path` on this rig.
    fn entry_key(&self, path: &str) -> String {
        let keys = KeyDeriver::new(SECRET, "trc", "v1");
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_str(&self.host).unwrap(),
        );
        let uri: Uri = path.parse().unwrap();
        let target = keys.canonicalize(&Method::GET, &uri, &headers).unwrap();
        keys.request_key(&Method::GET, &target, &[])
            .entry_key()
            .to_owned()
    }
}

/// A layer on `url`; deadlines generous enough for a loaded machine unless a test sets its own.
fn layer_on(url: &str) -> CacheLayer {
    CacheLayer::new(RedisStore::from_url(url).unwrap())
        .secret(SECRET)
        .jitter(0.0)
        .read_deadline(Duration::from_millis(500))
        .write_deadline(Duration::from_secs(2))
}

fn paths(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}/{i}")).collect()
}

fn hits(seen: &[Seen]) -> usize {
    seen.iter().filter(|s| s.is_hit()).count()
}

/// Whether, within a bounded number of rounds, one round over `urls` is answered entirely from
/// the cache (a read cut by its deadline on a busy machine makes one round miss a key).
async fn all_hits(rig: &Arc<Rig>, urls: &[String], workers: usize) -> bool {
    for _ in 0..50 {
        if hits(&rig.drive(urls, workers).await) == urls.len() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn wait_for_stores(layer: &CacheLayer, n: u64) {
    assert!(
        until(|| layer.stats().stores >= n).await,
        "expected {n} stores: {:?}",
        layer.stats()
    );
}

/// Wait until no fill runs, then for longer than any background write may take (they are cut
/// at the write deadline, 100 ms by default).
async fn settle(layer: &CacheLayer) {
    assert!(
        until(|| layer.stats().fills_in_flight == 0).await,
        "fills still running: {:?}",
        layer.stats()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
}

// ---------------------------------------------------------------------------------------------
// F1-F6: faults
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_with_no_redis_at_boot_every_request_is_answered_by_the_origin_as_a_bypass() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let layer = layer_on(&url);
    let rig = Rig::start(layer.clone()).await;

    let urls = paths("/f1", 100);
    let requests: Vec<String> = (0..10_000).map(|i| urls[i % 100].clone()).collect();
    let seen = rig.drive(&requests, 50).await;

    assert_eq!(seen.len(), 10_000);
    assert!(seen.iter().all(|s| s.status == StatusCode::OK));
    let tally = rig.tally();
    assert_eq!(tally.store_bypasses, 10_000, "{tally:?}");
    assert_eq!(tally.hits, 0);
    assert_eq!(rig.calls.total(), 10_000);
    let stats = layer.stats();
    assert!(stats.breaker_opened >= 1, "{stats:?}");
    assert_eq!(stats.stores, 0);
    rig.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_redis_killed_and_restarted_empty_costs_no_error_and_caching_comes_back() {
    let mut redis = RedisServer::start();
    // A read deadline above the default so that the warm-up is not cut short on a busy machine.
    let layer = layer_on(&redis.url())
        .read_deadline(Duration::from_millis(200))
        .breaker(3, Duration::from_millis(200));
    let rig = Rig::start(layer.clone()).await;
    let urls = paths("/f2", 100);

    rig.drive(&urls, 20).await;
    wait_for_stores(&layer, 100).await;
    assert!(
        all_hits(&rig, &urls, 20).await,
        "the warm cache must answer every key: {:?}",
        layer.stats()
    );
    let before = urls.len();

    redis.kill();
    for _ in 0..3 {
        let seen = rig.drive(&urls, 20).await;
        assert_eq!(seen.len(), 100);
        assert!(seen
            .iter()
            .all(|s| s.status == StatusCode::OK && !s.is_hit()));
    }

    redis.restart();
    // The same layer (no app restart) fills the empty server again and serves from it.
    let mut recovered = false;
    for _ in 0..200 {
        if hits(&rig.drive(&urls, 20).await) * 10 >= before * 9 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        recovered,
        "the hit ratio did not come back: {:?}",
        layer.stats()
    );
    assert!(layer.stats().breaker_opened >= 1);
    rig.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_connections_to_redis_cut_under_load_are_reopened_without_a_failed_request() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr()).await;
    // Background writes through the proxy get time enough on a busy machine: the warm-up
    // must store every key.
    let layer = layer_on(&proxy.url())
        .read_deadline(Duration::from_millis(200))
        .write_deadline(Duration::from_secs(2))
        .breaker(3, Duration::from_millis(200));
    let rig = Rig::start(layer.clone()).await;
    let urls = paths("/f2-cut", 50);
    rig.drive(&urls, 10).await;
    wait_for_stores(&layer, 50).await;
    let accepted = proxy.accepted();

    for _ in 0..10 {
        proxy.cut_all();
        let seen = rig.drive(&urls, 10).await;
        assert_eq!(seen.len(), urls.len());
        assert!(seen.iter().all(|s| s.status == StatusCode::OK));
    }
    assert!(proxy.accepted() > accepted, "the layer never reconnected");
    let mut recovered = false;
    for _ in 0..200 {
        if hits(&rig.drive(&urls, 10).await) == urls.len() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(recovered, "caching did not recover: {:?}", layer.stats());
    rig.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_a_black_holed_redis_is_bypassed_the_breaker_opens_and_caching_recovers() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr()).await;
    let layer = layer_on(&proxy.url())
        .read_deadline(Duration::from_millis(100))
        .write_deadline(Duration::from_secs(1))
        .breaker(3, Duration::from_millis(300));
    let rig = Rig::start(layer.clone()).await;
    let urls = paths("/f3", 20);
    rig.drive(&urls, 5).await;
    wait_for_stores(&layer, 20).await;
    assert!(all_hits(&rig, &urls, 5).await, "{:?}", layer.stats());

    proxy.black_hole();
    let mut opened = false;
    for _ in 0..100 {
        let seen = rig.drive(&urls, 5).await;
        assert!(seen.iter().all(|s| s.status == StatusCode::OK));
        if layer.stats().breaker == BreakerState::Open {
            opened = true;
            break;
        }
    }
    assert!(opened, "the breaker never opened: {:?}", layer.stats());
    let during = rig.drive(&urls, 5).await;
    assert_eq!(during.len(), 20);
    assert!(during.iter().all(|s| !s.is_hit()));
    assert!(layer.stats().store_errors_by["timeout"] > 0);

    proxy.pass_through();
    let mut recovered = false;
    for _ in 0..200 {
        let seen = rig.drive(&urls, 5).await;
        if hits(&seen) == urls.len() && layer.stats().breaker == BreakerState::Closed {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(recovered, "caching did not recover: {:?}", layer.stats());
    rig.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_with_slow_redis_misses_are_answered_and_the_write_queue_drops_instead_of_growing() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr()).await;
    // Deadlines above the latency, so lookups succeed and the writes are what piles up.
    let layer = layer_on(&proxy.url())
        .read_deadline(Duration::from_secs(3))
        .write_deadline(Duration::from_secs(5))
        .write_queue(4);
    let rig = Rig::start(layer.clone()).await;
    proxy.latency(Duration::from_millis(200));

    let urls = paths("/f4", 100);
    let seen = rig.drive(&urls, 100).await;
    assert_eq!(seen.len(), 100);
    assert!(seen.iter().all(|s| s.status == StatusCode::OK));
    let stats = layer.stats();
    assert_eq!(stats.misses, 100, "{stats:?}");
    assert!(stats.writes_dropped > 0, "{stats:?}");
    assert!(stats.stores <= 100 - stats.writes_dropped, "{stats:?}");
    rig.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_redis_slower_than_the_read_deadline_is_bypassed_until_it_is_fast_again() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr()).await;
    // Deadlines below the 200 ms latency that comes later, but not so tight that the warm-up
    // is cut short on a busy machine.
    let layer = layer_on(&proxy.url())
        .read_deadline(Duration::from_millis(100))
        .write_deadline(Duration::from_secs(1))
        .breaker(3, Duration::from_millis(200));
    let rig = Rig::start(layer.clone()).await;
    let urls = paths("/f4-slow", 20);
    rig.drive(&urls, 5).await;
    wait_for_stores(&layer, 20).await;

    proxy.latency(Duration::from_millis(200));
    for _ in 0..3 {
        let seen = rig.drive(&urls, 5).await;
        assert_eq!(seen.len(), 20);
        assert!(seen
            .iter()
            .all(|s| s.status == StatusCode::OK && !s.is_hit()));
    }
    assert!(layer.stats().breaker_opened >= 1, "{:?}", layer.stats());

    proxy.pass_through();
    let mut recovered = false;
    for _ in 0..200 {
        if hits(&rig.drive(&urls, 5).await) == urls.len() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(recovered, "caching did not recover: {:?}", layer.stats());
    rig.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_a_throttled_link_to_redis_turns_large_reads_into_bypasses_until_it_is_fast() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr()).await;
    let layer = layer_on(&proxy.url())
        .read_deadline(Duration::from_millis(500))
        .write_deadline(Duration::from_secs(2))
        .breaker(3, Duration::from_millis(200));
    let rig = Rig::start(layer.clone()).await;
    // 600 kB entries: about nine seconds each at 64 KiB/s, far past the read deadline.
    let urls: Vec<String> = (0..5).map(|i| format!("/f4-thr/{i}?size=600000")).collect();
    rig.drive(&urls, 5).await;
    wait_for_stores(&layer, 5).await;
    assert!(all_hits(&rig, &urls, 5).await, "{:?}", layer.stats());

    proxy.throttle(64 * 1024);
    for _ in 0..3 {
        let seen = rig.drive(&urls, 5).await;
        assert_eq!(seen.len(), 5);
        assert!(seen
            .iter()
            .all(|s| s.status == StatusCode::OK && !s.is_hit()));
    }
    assert!(layer.stats().store_errors_by["timeout"] > 0);

    proxy.pass_through();
    let mut recovered = false;
    for _ in 0..300 {
        if hits(&rig.drive(&urls, 5).await) == urls.len() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(recovered, "caching did not recover: {:?}", layer.stats());
    rig.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_script_flush_and_flushall_mid_fill_surface_no_error_and_leave_no_lock_without_ttl() {
    let redis = RedisServer::start();
    // Generous deadlines: this test is about lost scripts and keys, not a slow store (300
    // writes and 300 lock releases land at once, each reloading its script).
    let layer = layer_on(&redis.url())
        .read_deadline(Duration::from_millis(500))
        .write_deadline(Duration::from_secs(3));
    let rig = Rig::start(layer.clone()).await;
    // One complete fill first, so the server has the scripts cached before they are flushed.
    rig.get("/f5/warm").await;
    wait_for_stores(&layer, 1).await;

    const FILLS: usize = 300;
    let slow: Vec<String> = (0..FILLS)
        .flat_map(|i| {
            let path = format!("/f5/{i}?delay=1500");
            [path.clone(), path]
        })
        .collect();
    let driver = {
        let rig = Arc::clone(&rig);
        tokio::spawn(async move { rig.drive(&slow, 2 * FILLS).await })
    };
    assert!(
        until(|| layer.stats().locks_acquired > FILLS as u64).await,
        "the fills did not all take their locks: {:?}",
        layer.stats()
    );
    assert!(redis.cmd_str(&["SCRIPT", "FLUSH"]).is_ok());
    redis.flushall();

    let seen = driver.await.unwrap();
    assert_eq!(seen.len(), 2 * FILLS);
    assert!(seen.iter().all(|s| s.status == StatusCode::OK));
    wait_for_stores(&layer, 1 + FILLS as u64).await;
    settle(&layer).await;

    let stats = layer.stats();
    assert_eq!(stats.store_errors, 0, "{stats:?}");
    for i in 0..FILLS {
        assert_eq!(
            rig.calls.of(&format!("/f5/{i}")),
            1,
            "origin calls for /f5/{i}"
        );
    }
    for key in redis.keys("trc:*") {
        let ttl = redis.ttl(&key);
        assert!(ttl > 0 || ttl == -2, "{key} has TTL {ttl}");
    }
    assert!(
        redis.keys("trc:*:l:*").is_empty(),
        "fill locks outlived their fills"
    );
    rig.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f6_a_full_redis_with_noeviction_still_serves_hits_and_answers_new_misses() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let layer = layer_on(&redis.url());
    let rig = Rig::start(layer.clone()).await;
    let old = paths("/f6/old", 10);
    rig.drive(&old, 5).await;
    wait_for_stores(&layer, 10).await;
    settle(&layer).await;

    // Fill the server until it refuses writes, then lower the limit a little below what is in
    // use, so that buffers freed by closed connections cannot make room again.
    let filler = vec![b'x'; 1024];
    let mut full = false;
    for i in 0..10_000 {
        let key = format!("filler:{i}");
        match redis.cmd(&[b"SET", key.as_bytes(), &filler, b"EX", b"3600"]) {
            Reply::Error(e) if e.starts_with("OOM") => {
                full = true;
                break;
            }
            reply => assert!(reply.is_ok(), "{reply:?}"),
        }
    }
    assert!(full, "redis never ran out of memory");
    let used = used_memory(&redis);
    let limit = (used - 256 * 1024).to_string();
    assert!(redis
        .cmd_str(&["CONFIG", "SET", "maxmemory", &limit])
        .is_ok());

    // One request at a time: a new key, then an existing one.
    let mut new_misses = 0u64;
    for i in 0..50 {
        let miss = rig.get(&format!("/f6/new/{i}")).await.unwrap();
        assert_eq!(miss.status, StatusCode::OK);
        assert!(!miss.is_hit());
        new_misses += 1;
        let hit = rig.get(&old[i % old.len()]).await.unwrap();
        assert!(
            hit.is_hit(),
            "an existing key was not a hit: {}",
            hit.cache_status
        );
    }
    // And concurrently.
    let mixed: Vec<String> = (0..100)
        .map(|i| {
            if i % 2 == 0 {
                format!("/f6/burst/{i}")
            } else {
                old[i % old.len()].clone()
            }
        })
        .collect();
    let seen = rig.drive(&mixed, 10).await;
    assert_eq!(seen.len(), 100);
    assert!(seen.iter().all(|s| s.status == StatusCode::OK));
    new_misses += 50;
    assert_eq!(
        hits(&seen),
        50,
        "existing keys must stay hits: {:?}",
        layer.stats()
    );

    // When the lock cannot be taken, local coalescing still calls the origin once.
    let hot: Vec<String> = (0..20).map(|_| "/f6/hot?delay=300".to_owned()).collect();
    let seen = rig.drive(&hot, 20).await;
    assert!(seen.iter().all(|s| s.status == StatusCode::OK));
    assert_eq!(rig.calls.of("/f6/hot"), 1);
    new_misses += 1;
    settle(&layer).await;

    let stats = layer.stats();
    let oom = stats.store_errors_by["oom"];
    assert!(oom > 0, "{stats:?}");
    // One lock attempt and at most one write per miss: no retry loop.
    assert!(
        oom <= 2 * new_misses,
        "{oom} OOM errors for {new_misses} misses"
    );
    rig.assert_clean();
}

/// Whether `replica` reports a live link to its primary.
fn replica_link_up(replica: &RedisServer) -> bool {
    let info = replica.cmd_str(&["INFO", "replication"]);
    info.as_bytes()
        .is_some_and(|text| String::from_utf8_lossy(text).contains("master_link_status:up"))
}

/// A failover the layer is not told about: `other` takes a copy of `primary` and becomes the
/// primary, and `primary` is demoted to its replica.
async fn fail_over(primary: &RedisServer, other: &RedisServer) {
    let port = primary.port().to_string();
    assert!(other.cmd_str(&["REPLICAOF", "127.0.0.1", &port]).is_ok());
    assert!(
        until(|| replica_link_up(other)).await,
        "the copy never synced"
    );
    assert!(other.cmd_str(&["REPLICAOF", "NO", "ONE"]).is_ok());
    let port = other.port().to_string();
    assert!(primary.cmd_str(&["REPLICAOF", "127.0.0.1", &port]).is_ok());
    assert!(
        until(|| replica_link_up(primary)).await,
        "the demotion never synced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_a_primary_demoted_to_replica_keeps_serving_reads_and_counts_refused_writes() {
    let primary = RedisServer::start();
    let other = RedisServer::start();
    let layer = layer_on(&primary.url()).read_deadline(Duration::from_millis(200));
    let rig = Rig::start(layer.clone()).await;
    let old = paths("/f7/old", 10);
    rig.drive(&old, 5).await;
    wait_for_stores(&layer, 10).await;
    settle(&layer).await;

    // The other server takes a copy and becomes the primary; the layer's server is demoted to
    // its replica, as in a failover the layer is not told about.
    fail_over(&primary, &other).await;

    let stores = layer.stats().stores;
    let mut replica_hits = 0;
    for i in 0..20 {
        let miss = rig.get(&format!("/f7/new/{i}")).await.unwrap();
        assert_eq!(miss.status, StatusCode::OK);
        assert!(!miss.is_hit());
        let hit = rig.get(&old[i % old.len()]).await.unwrap();
        assert_eq!(hit.status, StatusCode::OK);
        if hit.is_hit() {
            replica_hits += 1;
        }
    }
    // Reads go on against the replica; the few that meet the store's reconnect (it reopens the
    // connection at most once a second, to look for a new primary) bypass. The breaker never
    // opens for them.
    assert!(replica_hits >= 15, "{replica_hits} of 20 reads hit");
    settle(&layer).await;
    let stats = layer.stats();
    assert!(stats.store_errors_by["readonly"] > 0, "{stats:?}");
    assert_eq!(stats.breaker_opened, 0, "{stats:?}");
    assert_eq!(
        stats.stores, stores,
        "a write reached the replica: {stats:?}"
    );
    rig.assert_clean();
}

/// F7 with a name that moves: the layer reaches Redis through an endpoint that a failover
/// points at the new primary (a managed service's primary endpoint; here a proxy whose new
/// connections go to the new primary, while the open one stays on the demoted server). Once
/// the demoted server answers `READONLY`, the store reopens its connection, and writes land on
/// the new primary without restarting the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_behind_an_endpoint_that_moves_writes_resume_on_the_new_primary() {
    let primary = RedisServer::start();
    let other = RedisServer::start();
    let endpoint = FaultProxy::start(primary.addr()).await;
    let layer = layer_on(&endpoint.url());
    let rig = Rig::start(layer.clone()).await;
    let old = paths("/f7m/old", 5);
    rig.drive(&old, 2).await;
    wait_for_stores(&layer, 5).await;
    settle(&layer).await;

    // The failover: the other server takes a copy and becomes the primary, the layer's server
    // is demoted, and the endpoint moves.
    fail_over(&primary, &other).await;
    endpoint.redirect(other.addr());

    // New paths: the first writes meet READONLY, then the store reconnects and they land.
    let stores = layer.stats().stores;
    let since = std::time::Instant::now();
    let mut i = 0;
    while layer.stats().stores <= stores {
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "writes never resumed: {:?}",
            layer.stats()
        );
        let got = rig.get(&format!("/f7m/new/{i}")).await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        layer.stats().store_errors_by["readonly"] > 0,
        "{:?}",
        layer.stats()
    );
    // And caching works as before, on the new primary.
    let fresh = vec!["/f7m/fresh".to_owned()];
    assert!(all_hits(&rig, &fresh, 1).await, "{:?}", layer.stats());
    let on_new = other.keys("*");
    assert!(on_new.len() > old.len(), "the new primary holds {on_new:?}");
    settle(&layer).await;
    rig.assert_clean();
}

/// `used_memory` from `INFO memory`.
fn used_memory(redis: &RedisServer) -> i64 {
    let info = redis.cmd_str(&["INFO", "memory"]);
    let text = String::from_utf8_lossy(info.as_bytes().unwrap()).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory reports used_memory")
}

// ---------------------------------------------------------------------------------------------
// D1-D3: data integrity
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_every_key_has_a_ttl_after_a_mixed_run() {
    let redis = RedisServer::start();
    let layer = layer_on(&redis.url())
        .read_deadline(Duration::from_millis(500))
        .stale_while_revalidate(Duration::from_secs(5));
    let purger = layer.purger();
    let rig = Rig::start(layer.clone()).await;

    let mut mixed = Vec::new();
    for i in 0..40 {
        mixed.push(format!("/d1/plain/{i}"));
        mixed.push(format!("/d1/tagged/{i}?tag=t{}+all", i % 4));
        mixed.push(format!("/d1/short/{i}?cc=max-age%3D2"));
        mixed.push(format!(
            "/d1/swr/{i}?cc=max-age%3D1,stale-while-revalidate%3D30"
        ));
        mixed.push(format!("/d1/slow/{}?delay=200", i % 10));
    }
    let twice: Vec<String> = mixed.iter().chain(mixed.iter()).cloned().collect();
    let driver = {
        let rig = Arc::clone(&rig);
        tokio::spawn(async move { rig.drive(&twice, 20).await })
    };
    // Variants, cancelled clients, purges and writes while the load runs.
    for i in 0..20 {
        let lang = if i % 2 == 0 { "en" } else { "fr" };
        rig.send(
            Method::GET,
            &format!("/d1/vary/{}?vary=accept-language", i % 5),
            &[("accept-language", lang)],
        )
        .await;
        let _ = tokio::time::timeout(
            Duration::from_millis(50),
            rig.get(&format!("/d1/cancelled/{i}?delay=300")),
        )
        .await;
    }
    purger.purge_tag("t1").await.unwrap();
    purger.purge_path("/d1/plain/4").await.unwrap();
    purger.purge_url("/d1/plain/5").await.unwrap();
    rig.send(Method::POST, "/d1/plain/6", &[]).await;
    driver.await.unwrap();
    settle(&layer).await;

    let keys = redis.keys("trc:*");
    assert!(
        keys.len() > 100,
        "the run stored too little: {}",
        keys.len()
    );
    let mut kinds = BTreeSet::new();
    for key in &keys {
        let ttl = redis.ttl(key);
        assert!(ttl != -1, "{key} has no TTL");
        assert!(ttl <= 2 * 86_400, "{key} has TTL {ttl}");
        kinds.insert(key_kind(key));
    }
    for kind in ["entry", "generation", "tag"] {
        assert!(kinds.contains(kind), "no {kind} key in {kinds:?}");
    }
    // A tag set lives at least as long as each of its members.
    for tag in keys.iter().filter(|k| key_kind(k) == "tag") {
        let tag_ttl = redis.ttl(tag);
        let members = redis.cmd_str(&["SMEMBERS", tag]);
        for member in members.as_array().unwrap_or_default() {
            let member = String::from_utf8_lossy(member.as_bytes().unwrap()).into_owned();
            let member_ttl = redis.ttl(&member);
            assert!(
                tag_ttl + 1 >= member_ttl,
                "{tag} ({tag_ttl} s) dies before {member} ({member_ttl} s)"
            );
        }
    }
    rig.assert_clean();
}

/// `entry`, `lock`, `generation`, `vary` or `tag`, from a key's layout.
fn key_kind(key: &str) -> &'static str {
    if key.starts_with("trc:v1:t:") {
        "tag"
    } else if key.contains("}:e:") {
        "entry"
    } else if key.contains("}:l:") {
        "lock"
    } else if key.ends_with("}:g") {
        "generation"
    } else if key.ends_with("}:v") {
        "vary"
    } else {
        "unknown"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_corrupted_entries_are_misses_and_are_replaced_by_good_ones() {
    let redis = RedisServer::start();
    // Generous, so that reading the 2 MiB plant is not cut by the deadline.
    let layer = layer_on(&redis.url()).read_deadline(Duration::from_millis(500));
    let rig = Rig::start(layer.clone()).await;
    let path = "/d2/victim";
    rig.get(path).await.unwrap();
    wait_for_stores(&layer, 1).await;
    let key = rig.entry_key(path);
    let codec = EntryCodec::new(SECRET);
    let good = redis
        .get(&key)
        .expect("the entry is stored under the derived key");
    let decoded = codec.decode(&good, 4 << 20).unwrap();
    let other_secret = EntryCodec::new(b"another deployment's secret").encode(&decoded);

    let flip = |at: usize| {
        let mut bytes = good.clone();
        bytes[at] ^= 0x01;
        bytes
    };
    let mut huge = vec![0u8; 2 << 20];
    for (i, b) in huge.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let plants: Vec<(&str, Vec<u8>)> = vec![
        ("truncated to half", good[..good.len() / 2].to_vec()),
        ("one byte short", good[..good.len() - 1].to_vec()),
        ("a flipped bit in the body", flip(good.len() / 2)),
        ("bad magic", flip(0)),
        ("unknown version", {
            let mut bytes = good.clone();
            bytes[4] = 9;
            bytes
        }),
        ("a bad checksum", flip(good.len() - 1)),
        ("another secret", other_secret.to_vec()),
        ("empty", Vec::new()),
        ("2 MiB of garbage", huge),
    ];
    for (name, plant) in &plants {
        redis.set_raw(&key, plant);
        let errors = layer.stats().decode_errors;
        let seen = rig.get(path).await.unwrap();
        assert_eq!(seen.status, StatusCode::OK, "{name}");
        assert!(!seen.is_hit(), "{name} was served: {}", seen.cache_status);
        // Counted once, or twice when the fill's second look (after winning the lock) comes
        // before the background delete of the bad value.
        let counted = layer.stats().decode_errors - errors;
        assert!(
            (1..=2).contains(&counted),
            "{name}: {counted} decode errors"
        );
        assert_replaced(&redis, &rig, &codec, &key, path, name).await;
    }
    for (name, command) in [
        ("a hash", ["HSET", key.as_str(), "a", "b"]),
        ("a list", ["RPUSH", key.as_str(), "a", "b"]),
    ] {
        redis.cmd_str(&["DEL", &key]);
        redis.cmd_str(&command);
        let seen = rig.get(path).await.unwrap();
        assert_eq!(seen.status, StatusCode::OK, "{name}");
        assert!(!seen.is_hit(), "{name} was served");
        assert_replaced(&redis, &rig, &codec, &key, path, name).await;
    }
    assert_eq!(rig.calls.of(path), 1 + plants.len() as u64 + 2);
    rig.assert_clean();
}

/// The plant at `key` gives way to a good entry, which the next request is answered from.
async fn assert_replaced(
    redis: &RedisServer,
    rig: &Rig,
    codec: &EntryCodec,
    key: &str,
    path: &str,
    name: &str,
) {
    let good = until(|| match redis.cmd(&[b"GET", key.as_bytes()]) {
        Reply::Bulk(Some(bytes)) => codec.decode(&bytes, 4 << 20).is_ok(),
        _ => false,
    })
    .await;
    assert!(good, "{name} was not replaced by a good entry");
    let again = rig.get(path).await.unwrap();
    assert!(again.is_hit(), "{name}: the new entry is not served");
}

/// An origin whose bodies break off: `/d3/chunked` errors after four chunks, `/d3/length`
/// declares more than it sends and errors, `/d3/short` declares more than it sends and ends.
fn aborting_origin(calls: Arc<AtomicU64>) -> Router {
    fn chunks(n: usize) -> Vec<Result<Bytes, std::io::Error>> {
        (0..n)
            .map(|i| Ok(Bytes::from(vec![b'a' + i as u8; 16 * 1024])))
            .collect()
    }
    // The chunks come 20 ms apart, so the head and the first chunks are on the wire before
    // the origin fails.
    fn slow(items: Vec<Result<Bytes, std::io::Error>>) -> Body {
        let stream = futures_util::stream::unfold(items.into_iter(), |mut items| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            items.next().map(|item| (item, items))
        });
        Body::from_stream(stream)
    }
    let broken = |n: usize| {
        let mut items = chunks(n);
        items.push(Err(std::io::Error::other("the origin died mid-body")));
        slow(items)
    };
    let count = move |calls: &AtomicU64| {
        calls.fetch_add(1, Ordering::SeqCst);
    };
    let (c1, c2, c3) = (Arc::clone(&calls), Arc::clone(&calls), calls);
    Router::new()
        .route(
            "/d3/chunked",
            get(move || async move {
                count(&c1);
                Response::new(broken(4))
            }),
        )
        .route(
            "/d3/length",
            get(move || async move {
                count(&c2);
                Response::builder()
                    .header("content-length", "262144")
                    .body(broken(3))
                    .unwrap()
            }),
        )
        .route(
            "/d3/short",
            get(move || async move {
                count(&c3);
                Response::builder()
                    .header("content-length", "100000")
                    .body(slow(chunks(3)))
                    .unwrap()
            }),
        )
}

/// GET `url`; the body as far as it arrived, and whether it broke off.
async fn get_partial(client: &HttpClient, url: &str) -> (StatusCode, usize, bool) {
    let request = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let Ok(response) = client.request(request).await else {
        return (StatusCode::BAD_GATEWAY, 0, true);
    };
    let status = response.status();
    let mut body = response.into_body();
    let mut received = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => received += frame.data_ref().map_or(0, Bytes::len),
            Err(_) => return (status, received, true),
        }
    }
    (status, received, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_a_body_the_origin_aborts_is_never_stored() {
    let redis = RedisServer::start();
    let layer = layer_on(&redis.url()).read_deadline(Duration::from_millis(500));
    let calls = Arc::new(AtomicU64::new(0));
    let addr = serve(aborting_origin(Arc::clone(&calls)).layer(layer.clone())).await;
    let client = http_client();

    for (round, path) in ["/d3/chunked", "/d3/length", "/d3/short"]
        .iter()
        .enumerate()
    {
        let url = format!("http://{addr}{path}");
        let (status, received, broke) = get_partial(&client, &url).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(broke, "{path}: the client must see the body break off");
        assert!(received < 100_000, "{path}: {received} bytes");
        settle(&layer).await;
        // Asked again, it goes to the origin again: nothing was stored.
        let (_, _, broke_again) = get_partial(&client, &url).await;
        assert!(broke_again, "{path}: a stored copy was served whole");
        settle(&layer).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2 * (round as u64 + 1),
            "{path}"
        );
    }
    let stats = layer.stats();
    assert_eq!(stats.stores, 0, "{stats:?}");
    assert!(stats.not_stored_by["incomplete"] >= 4, "{stats:?}");
    assert!(redis.keys("trc:*:e:*").is_empty(), "an entry was written");
}

// ---------------------------------------------------------------------------------------------
// B3: huge and streamed bodies
// ---------------------------------------------------------------------------------------------

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// An origin with `/b3/length` (5 MiB with a Content-Length) and `/b3/chunked` (20 MiB
/// streamed in 64 KiB chunks without one).
fn huge_origin(calls: Arc<AtomicU64>) -> Router {
    const LENGTH: usize = 5 << 20;
    const CHUNKED: usize = 20 << 20;
    let (c1, c2) = (Arc::clone(&calls), calls);
    Router::new()
        .route(
            "/b3/length",
            get(move || async move {
                c1.fetch_add(1, Ordering::SeqCst);
                let body: Vec<u8> = (0..LENGTH).map(pattern).collect();
                Response::new(Body::from(body))
            }),
        )
        .route(
            "/b3/chunked",
            get(move || async move {
                c2.fetch_add(1, Ordering::SeqCst);
                let chunk = 64 * 1024;
                let stream = futures_util::stream::iter((0..CHUNKED / chunk).map(move |n| {
                    let start = n * chunk;
                    Ok::<_, Infallible>(Bytes::from(
                        (start..start + chunk).map(pattern).collect::<Vec<u8>>(),
                    ))
                }));
                Response::new(Body::from_stream(stream))
            }),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_huge_and_streamed_bodies_arrive_byte_exact_and_are_never_stored() {
    let redis = RedisServer::start();
    let layer = layer_on(&redis.url()).read_deadline(Duration::from_millis(500));
    let calls = Arc::new(AtomicU64::new(0));
    let addr = serve(huge_origin(Arc::clone(&calls)).layer(layer.clone())).await;
    let client = http_client();

    let mut set = JoinSet::new();
    for (path, size) in [("/b3/length", 5usize << 20), ("/b3/chunked", 20 << 20)] {
        for _ in 0..4 {
            let (client, url) = (client.clone(), format!("http://{addr}{path}"));
            set.spawn(async move {
                let request = http::Request::get(&url)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let response = client.request(request).await.unwrap();
                let status = response.status();
                let cache_status = response.headers()["cache-status"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let mut body = response.into_body();
                let (mut at, mut exact) = (0usize, true);
                while let Some(frame) = body.frame().await {
                    let frame = frame.expect("the body must not break off");
                    if let Some(data) = frame.data_ref() {
                        exact &= data.iter().enumerate().all(|(i, b)| *b == pattern(at + i));
                        at += data.len();
                    }
                }
                (path, status, cache_status, at == size && exact)
            });
        }
    }
    while let Some(done) = set.join_next().await {
        let (path, status, cache_status, exact) = done.unwrap();
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(exact, "{path}: the body differs from the origin's");
        // A declared length over the limit is refused before the body; a stream is found too
        // large only after its head has gone out.
        let expected = if path == "/b3/length" {
            "detail=too-large"
        } else {
            "fwd=miss"
        };
        assert!(cache_status.contains(expected), "{path}: {cache_status}");
    }
    settle(&layer).await;
    let stats = layer.stats();
    assert_eq!(stats.stores, 0, "{stats:?}");
    assert_eq!(stats.not_stored_by["too-large"], 8, "{stats:?}");
    assert!(redis.keys("trc:*:e:*").is_empty());
    // Nothing was shareable, so every request reached the origin.
    assert_eq!(calls.load(Ordering::SeqCst), 8);
}

// ---------------------------------------------------------------------------------------------
// S8: no request data in key names, Cache-Status or logs
// ---------------------------------------------------------------------------------------------

/// A tracing subscriber that writes every field of every event and span of the crate to one
/// string.
struct Capture {
    text: Arc<Mutex<String>>,
    next_span: AtomicU64,
}

struct FieldWriter<'a>(&'a mut String);

impl tracing::field::Visit for FieldWriter<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl Capture {
    fn write(&self, record: impl FnOnce(&mut FieldWriter<'_>)) {
        let mut text = self.text.lock().unwrap();
        record(&mut FieldWriter(&mut text));
        text.push('\n');
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target().starts_with("tower_response_cache")
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.write(|w| span.record(w));
        tracing::span::Id::from_u64(self.next_span.fetch_add(1, Ordering::SeqCst) + 1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        self.write(|w| values.record(w));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        self.write(|w| {
            let _ = write!(w.0, "{} ", event.metadata().target());
            event.record(w);
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Whether `text` holds any marker, as written or in lower case or as hex.
fn leaks(text: &str, markers: &[&str]) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    markers.iter().find_map(|marker| {
        let forms = [
            marker.to_ascii_lowercase(),
            hex::encode(marker.as_bytes()),
            hex::encode(marker.to_ascii_lowercase().as_bytes()),
        ];
        forms
            .iter()
            .any(|form| lower.contains(form))
            .then(|| (*marker).to_owned())
    })
}

/// `trc:v1:{<hex>}:<kind>[:<hex>]` or `trc:v1:t:{<hex>}`.
fn is_opaque_key(key: &str) -> bool {
    let hex32 = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let Some(rest) = key.strip_prefix("trc:v1:") else {
        return false;
    };
    if let Some(tag) = rest.strip_prefix("t:{").and_then(|r| r.strip_suffix('}')) {
        return hex32(tag);
    }
    let Some((path, kind)) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) else {
        return false;
    };
    if !hex32(path) {
        return false;
    }
    match kind {
        ":g" | ":v" => true,
        _ => kind
            .strip_prefix(":e:")
            .or_else(|| kind.strip_prefix(":l:"))
            .is_some_and(hex32),
    }
}

#[tokio::test]
async fn s8_markers_in_requests_never_reach_key_names_cache_status_or_logs() {
    let text = Arc::new(Mutex::new(String::new()));
    let _logs = tracing::subscriber::set_default(Capture {
        text: Arc::clone(&text),
        next_span: AtomicU64::new(0),
    });
    let markers = [
        "MrkPath7731",
        "MrkQuery7732",
        "MrkAuth7733",
        "MrkFwd7734",
        "MrkTag7735",
        "MrkVary7736",
        "MrkCookie7737",
        "MrkDot7738",
        "MrkEsc7739",
    ];
    let redis = RedisServer::start();
    let layer = layer_on(&redis.url()).read_deadline(Duration::from_millis(500));
    let purger = layer.purger();
    let rig = Rig::start(layer.clone()).await;

    let cached = "/s8/MrkPath7731/item?q=MrkQuery7732";
    rig.get(cached).await;
    wait_for_stores(&layer, 1).await;
    assert!(rig.get(cached).await.unwrap().is_hit());
    rig.send(
        Method::GET,
        "/s8/auth",
        &[("authorization", "Bearer MrkAuth7733")],
    )
    .await;
    rig.send(
        Method::GET,
        "/s8/fwd",
        &[("x-forwarded-host", "MrkFwd7734")],
    )
    .await;
    rig.send(
        Method::GET,
        "/s8/cookie",
        &[("cookie", "session=MrkCookie7737")],
    )
    .await;
    rig.get("/s8/tagged?tag=MrkTag7735").await;
    rig.send(
        Method::GET,
        "/s8/vary?vary=x-user",
        &[("x-user", "MrkVary7736")],
    )
    .await;
    rig.get("/s8/MrkDot7738/../x").await;
    rig.get("/s8/MrkEsc7739%zz").await;
    wait_for_stores(&layer, 3).await;
    purger.purge_tag("MrkTag7735").await.unwrap();
    purger.purge_url(cached).await.unwrap();
    purger.purge_path("/s8/MrkPath7731/item").await.unwrap();
    rig.get(cached).await;
    settle(&layer).await;

    let keys = redis.keys("*");
    assert!(keys.len() >= 3, "{keys:?}");
    for key in &keys {
        assert_eq!(leaks(key, &markers), None, "in key {key}");
        assert!(is_opaque_key(key), "{key} is not in the documented layout");
    }
    let statuses = rig.statuses.lock().unwrap().clone();
    assert_eq!(statuses.len(), 10);
    for status in &statuses {
        assert!(status.starts_with("trc; "), "{status}");
        assert_eq!(leaks(status, &markers), None, "in Cache-Status {status}");
    }
    assert!(statuses.iter().any(|s| s.contains("detail=dot-segment")));
    assert!(statuses.iter().any(|s| s.contains("detail=authorization")));
    let logs = text.lock().unwrap().clone();
    assert!(logs.contains("outcome"), "nothing was logged: {logs}");
    assert_eq!(leaks(&logs, &markers), None, "in the logs:\n{logs}");
}

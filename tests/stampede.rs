//! Stampede protection end to end: one origin call per cold key however many requests wait (in
//! one process and across processes sharing a Redis), leaders that fail, panic or lose their
//! client, per-user responses that must never be shared, fill locks that expire mid-fill, purges
//! that race a fill, and serving stale (stale-while-revalidate, stale-if-error).
//!
//! Every test counts the origin's calls and checks the bodies clients received. Waits are bounded
//! polls of a condition (never assertions on elapsed time); where a test needs requests to pile up
//! behind a fill, the origin holds its answer until the layer's counters show they have.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::middleware::{self, Next};
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use support::origin::{app, serve, Calls, HttpClient};
use support::redis_server::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_response_cache::key::KeyDeriver;
use tower_response_cache::store::{Store, StoreFuture};
use tower_response_cache::{
    CacheLayer, CacheService, MemoryStore, RedisStore, DEFAULT_NAMESPACE, DEFAULT_VERSION,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The secret every layer here is built with, so that tests can derive the layer's keys.
const SECRET: &[u8] = b"the stampede tests' key secret";

/// Longest a bounded wait polls its condition before giving up (the assertion then fails).
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// Hang guard of the tests whose point is that nobody hangs.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// Poll `condition` every few milliseconds until it holds, at most [`WAIT_LIMIT`].
async fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Run `test`, failing (instead of hanging) if it does not end within [`HANG_GUARD`].
async fn no_hang<T>(test: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_GUARD, test).await {
        Ok(value) => value,
        Err(_) => panic!("the test did not finish within {HANG_GUARD:?}: something hangs"),
    }
}

fn memory_layer() -> CacheLayer {
    CacheLayer::new(MemoryStore::new())
        .jitter(0.0)
        .secret(SECRET)
}

fn redis_layer(redis: &RedisServer) -> CacheLayer {
    CacheLayer::new(RedisStore::from_url(&redis.url()).unwrap())
        .jitter(0.0)
        .secret(SECRET)
        // A loaded machine's slow Redis must not turn into bypasses or dropped writes.
        .read_deadline(Duration::from_secs(2))
        .write_deadline(Duration::from_secs(2))
}

/// Where a test's layer keeps its entries.
enum Backend {
    Memory,
    Redis(RedisServer),
}

impl Backend {
    fn redis() -> Self {
        Backend::Redis(RedisServer::start())
    }

    fn layer(&self) -> CacheLayer {
        match self {
            Backend::Memory => memory_layer(),
            Backend::Redis(redis) => redis_layer(redis),
        }
    }

    /// No fill lock is there without an expiry.
    fn assert_no_lock_left(&self) {
        if let Backend::Redis(redis) = self {
            for key in redis.keys("trc:*:l:*") {
                assert_ne!(redis.ttl(&key), -1, "lock {key} has no expiry");
            }
        }
    }

    /// No fill lock without an expiry, and soon none at all (once the fills are done).
    async fn assert_locks_released(&self) {
        if let Backend::Redis(redis) = self {
            self.assert_no_lock_left();
            assert!(
                wait_until(|| redis.keys("trc:*:l:*").is_empty()).await,
                "fill locks left behind: {:?}",
                redis.keys("trc:*:l:*")
            );
        }
    }
}

/// The key deriver of every layer built here.
fn deriver() -> KeyDeriver {
    KeyDeriver::new(SECRET, DEFAULT_NAMESPACE, DEFAULT_VERSION)
}

/// The base request key of `GET <uri>`, as the layer derives it.
fn request_key(uri: &str) -> tower_response_cache::key::RequestKey {
    let deriver = deriver();
    let uri: http::Uri = uri.parse().unwrap();
    let target = deriver
        .canonicalize(&Method::GET, &uri, &HeaderMap::new())
        .unwrap();
    deriver.request_key(&Method::GET, &target, &[])
}

/// What a client received, body read to the end.
#[derive(Debug, Clone)]
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn cache_status(&self) -> String {
        self.headers
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn is_collapsed(&self) -> bool {
        self.cache_status().contains("; collapsed")
    }

    fn is_fresh_hit(&self) -> bool {
        let status = self.cache_status();
        status.contains("; hit") && !status.contains("detail=")
    }
}

async fn read<B>(response: Response<B>) -> Got
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        headers,
        body,
    }
}

fn get(path: &str) -> Request<()> {
    Request::get(format!("http://stampede.test{path}"))
        .body(())
        .unwrap()
}

fn router_get(path: &str, headers: &[(&str, &str)]) -> Request<axum::body::Body> {
    let mut request = Request::get(format!("http://stampede.test{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(axum::body::Body::empty()).unwrap()
}

/// A condition the origin waits for before it answers.
type Gate = Arc<dyn Fn() -> bool + Send + Sync>;

/// The scripted origin of `support::origin`, holding every call until `open()` (at most
/// [`WAIT_LIMIT`]), behind `layer`.
fn gated_origin(calls: &Calls, open: Gate, layer: CacheLayer) -> Router {
    app(calls.clone())
        .layer(middleware::from_fn(
            move |request: axum::extract::Request, next: Next| {
                let open = Arc::clone(&open);
                async move {
                    wait_until(|| open()).await;
                    next.run(request).await
                }
            },
        ))
        .layer(layer)
}

/// Send `n` requests for `path` at once through `app`, the i-th with the headers `headers(i)`.
async fn burst(
    app: &Router,
    n: usize,
    path: &str,
    headers: impl Fn(usize) -> Vec<(String, String)>,
) -> Vec<Got> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let app = app.clone();
            let headers = headers(i);
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let request = router_get(path, &pairs);
            tokio::spawn(async move { read(app.oneshot(request).await.unwrap()).await })
        })
        .collect();
    let mut got = Vec::with_capacity(n);
    for task in tasks {
        got.push(task.await.unwrap());
    }
    got
}

fn no_headers(_: usize) -> Vec<(String, String)> {
    Vec::new()
}

// ---------------------------------------------------------------------------------------------
// A Tower origin of our own, for what an Axum handler cannot do (fail, panic, change its answer
// between calls, stream slowly).
// ---------------------------------------------------------------------------------------------

type OriginBody = BoxBody<Bytes, Infallible>;

/// The error of the origin service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OriginDown;

/// How an origin call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Answer 500.
    Status500,
    /// Return `Err` from the service.
    Error,
    /// Panic in the service.
    Panic,
}

/// Size of each part of a multi-part body.
const PART: usize = 8 * 1024;

/// The body of origin call `n` for `path`: one short line, or `parts` parts of [`PART`] bytes,
/// each naming the call and its position.
fn origin_body(n: u64, path: &str, parts: u64) -> Vec<Bytes> {
    if parts == 0 {
        return vec![Bytes::from(format!("{path} call={n}"))];
    }
    (0..parts)
        .map(|i| {
            let mut part = format!("[{path} call={n} part={i}]").into_bytes();
            part.resize(PART, b'.');
            Bytes::from(part)
        })
        .collect()
}

fn whole(parts: &[Bytes]) -> Bytes {
    Bytes::from(parts.concat())
}

/// The scripted Tower origin: counts its calls; answers `<path> call=N` (or a multi-part body)
/// with the configured `Cache-Control`, after the gate opens and the delay passes; fails as told.
#[derive(Default)]
struct Origin {
    calls: AtomicU64,
    delay_ms: AtomicU64,
    parts: AtomicU64,
    part_gap_ms: AtomicU64,
    cache_control: Mutex<Option<String>>,
    /// Applies to every call while set.
    failing: Mutex<Option<Failure>>,
    /// Applies to the next call only.
    fail_next: Mutex<Option<Failure>>,
    gate: Mutex<Option<Gate>>,
}

impl Origin {
    fn new() -> Arc<Self> {
        Arc::new(Origin::default())
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    fn set_parts(&self, parts: u64, gap: Duration) {
        self.parts.store(parts, Ordering::SeqCst);
        self.part_gap_ms
            .store(gap.as_millis() as u64, Ordering::SeqCst);
    }

    fn set_cache_control(&self, value: &str) {
        *self.cache_control.lock().unwrap() = Some(value.to_owned());
    }

    fn set_failing(&self, failure: Option<Failure>) {
        *self.failing.lock().unwrap() = failure;
    }

    fn fail_next(&self, failure: Failure) {
        *self.fail_next.lock().unwrap() = Some(failure);
    }

    fn set_gate(&self, gate: Option<Gate>) {
        *self.gate.lock().unwrap() = gate;
    }

    async fn answer(
        self: Arc<Self>,
        request: Request<()>,
    ) -> Result<Response<OriginBody>, OriginDown> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let failure = self
            .fail_next
            .lock()
            .unwrap()
            .take()
            .or(*self.failing.lock().unwrap());
        let gate = self.gate.lock().unwrap().clone();
        if let Some(open) = gate {
            wait_until(|| open()).await;
        }
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        match failure {
            Some(Failure::Panic) => panic!("the origin panics on call {n} (on purpose)"),
            Some(Failure::Error) => return Err(OriginDown),
            Some(Failure::Status500) => {
                let body = format!("origin failure on call {n}");
                let mut response = Response::new(
                    http_body_util::Full::new(Bytes::from(body))
                        .map_err(|never| match never {})
                        .boxed(),
                );
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return Ok(response);
            }
            None => {}
        }
        let parts = origin_body(n, request.uri().path(), self.parts.load(Ordering::SeqCst));
        let gap = Duration::from_millis(self.part_gap_ms.load(Ordering::SeqCst));
        let frames = futures_util::stream::unfold(parts.into_iter(), move |mut parts| async move {
            let part = parts.next()?;
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            Some((Ok::<_, Infallible>(Frame::data(part)), parts))
        });
        let mut response = Response::new(StreamBody::new(frames).boxed());
        if let Some(cc) = self.cache_control.lock().unwrap().clone() {
            response
                .headers_mut()
                .insert("cache-control", cc.parse().unwrap());
        }
        Ok(response)
    }
}

type Stack =
    BoxCloneService<Request<()>, Response<tower_response_cache::CacheBody<OriginBody>>, OriginDown>;

/// `layer` in front of `origin`.
fn stack(layer: &CacheLayer, origin: &Arc<Origin>) -> Stack {
    let origin = Arc::clone(origin);
    let inner = service_fn(move |request: Request<()>| Arc::clone(&origin).answer(request));
    let service: CacheService<_> = layer.layer(inner);
    BoxCloneService::new(service)
}

/// One request for `path` through a clone of `service`, body read to the end.
fn fetch(service: &Stack, path: &str) -> impl std::future::Future<Output = Got> + Send + 'static {
    let call = service.clone().oneshot(get(path));
    async move { read(call.await.unwrap()).await }
}

// ---------------------------------------------------------------------------------------------
// 1. Many concurrent requests for one cold key, in one process
// ---------------------------------------------------------------------------------------------

/// `n` requests for one cold key at once: the origin answers only once every request has missed
/// (so all of them are waiting behind the fill), and is called exactly once.
async fn one_cold_key(layer: CacheLayer, n: usize) {
    let calls = Calls::default();
    let counted = layer.clone();
    let all_missed: Gate = Arc::new(move || counted.stats().misses >= n as u64);
    let app = gated_origin(&calls, all_missed, layer.clone());

    let got = burst(&app, n, "/cold?delay=20", no_headers).await;

    assert_eq!(calls.of("/cold"), 1, "stats: {:?}", layer.stats());
    let expected = Bytes::from_static(b"path=/cold query=delay=20 call=1");
    assert!(got.iter().all(|g| g.status == StatusCode::OK));
    assert!(
        got.iter().all(|g| g.body == expected),
        "bodies differ: {:?}",
        got.iter().map(Got::text).collect::<BTreeSet<_>>()
    );
    let collapsed = got.iter().filter(|g| g.is_collapsed()).count();
    assert_eq!(collapsed, n - 1, "stats: {:?}", layer.stats());
    let leader: Vec<_> = got.iter().filter(|g| !g.is_collapsed()).collect();
    assert_eq!(leader.len(), 1);
    assert!(
        leader[0]
            .cache_status()
            .starts_with("trc; fwd=miss; stored"),
        "{}",
        leader[0].cache_status()
    );
    let stats = layer.stats();
    assert_eq!(stats.collapsed, n as u64 - 1);
    assert_eq!(stats.bypasses, 0);

    // And the entry is there for the next one.
    let again = burst(&app, 1, "/cold?delay=20", no_headers).await;
    assert!(again[0].is_fresh_hit(), "{}", again[0].cache_status());
    assert_eq!(again[0].body, expected);
    assert_eq!(calls.of("/cold"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_call_the_origin_once_on_the_memory_store() {
    one_cold_key(memory_layer(), 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_call_the_origin_once_on_redis() {
    let backend = Backend::redis();
    let layer = backend.layer();
    one_cold_key(layer.clone(), 1000).await;
    assert_eq!(layer.stats().locks_acquired, 1);
    assert_eq!(layer.stats().locks_waited, 0);
    backend.assert_locks_released().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_over_tcp_get_one_origin_call() {
    let backend = Backend::redis();
    let layer = backend.layer();
    let calls = Calls::default();
    let counted = layer.clone();
    let all_missed: Gate = Arc::new(move || counted.stats().misses >= 200);
    let addr = serve(gated_origin(&calls, all_missed, layer.clone())).await;
    let client = HttpClient::new(addr);

    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("/tcp-cold").await })
        })
        .collect();
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.unwrap());
    }

    assert_eq!(calls.of("/tcp-cold"), 1);
    let bodies: BTreeSet<_> = got.iter().map(|g| g.body.clone()).collect();
    assert_eq!(
        bodies.into_iter().collect::<Vec<_>>(),
        vec![Bytes::from_static(b"path=/tcp-cold query= call=1")]
    );
    let collapsed = got
        .iter()
        .filter(|g| g.cache_status().contains("; collapsed"))
        .count();
    assert_eq!(collapsed, 199);
    backend.assert_locks_released().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Several processes on one Redis
// ---------------------------------------------------------------------------------------------

/// The stampede node example's executable, built (or brought up to date) with the features and
/// target directory of this test binary: `cargo test` builds examples, `cargo test --test
/// stampede` does not, and building an up-to-date example is a no-op.
fn stampede_node_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/stampede-<hash>
            let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
            let target_dir = profile_dir.parent().unwrap();
            let profile = profile_dir
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or("debug");
            let mut features = Vec::new();
            if cfg!(feature = "redis") {
                features.push("redis");
            }
            if cfg!(feature = "memory") {
                features.push("memory");
            }
            if cfg!(feature = "axum") {
                features.push("axum");
            }
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = std::process::Command::new(cargo);
            build
                .args(["build", "--quiet", "--example", "stampede_node"])
                .arg("--no-default-features")
                .arg("--manifest-path")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
                .arg("--target-dir")
                .arg(target_dir);
            if !features.is_empty() {
                build.arg("--features").arg(features.join(","));
            }
            if profile != "debug" {
                build.args(["--profile", profile]);
            }
            let status = build.status().expect("cargo runs");
            assert!(
                status.success(),
                "building the stampede_node example failed"
            );
            let path = profile_dir
                .join("examples")
                .join(format!("stampede_node{}", std::env::consts::EXE_SUFFIX));
            assert!(path.is_file(), "no stampede_node at {}", path.display());
            path
        })
        .clone()
}

/// One stampede node process, fed paths on its stdin.
struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl NodeProcess {
    async fn start(redis: &RedisServer, origin: std::net::SocketAddr, requests: usize) -> Self {
        let mut child = Command::new(stampede_node_binary())
            .arg("--redis")
            .arg(redis.url())
            .arg("--origin")
            .arg(format!("http://{origin}"))
            .arg("--requests")
            .arg(requests.to_string())
            .arg("--stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the stampede node starts");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = stdout.next_line().await.unwrap();
        assert_eq!(
            ready.as_deref(),
            Some("ready"),
            "the node did not get ready"
        );
        NodeProcess {
            child,
            stdin,
            stdout,
        }
    }

    async fn send(&mut self, path: &str) {
        self.stdin
            .write_all(format!("{path}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn report(&mut self) -> serde_json::Value {
        let line = self
            .stdout
            .next_line()
            .await
            .unwrap()
            .expect("a report line");
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("bad report {line:?}: {err}"))
    }
}

fn count(report: &serde_json::Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_on_one_redis_call_the_origin_about_once_per_cold_key() {
    const NODES: usize = 4;
    const REQUESTS: usize = 250;
    const TRIALS: usize = 5;
    // Built (if needed) before anything is started or timed.
    stampede_node_binary();
    let redis = RedisServer::start();
    let calls = Calls::default();
    let origin = serve(app(calls.clone())).await;

    let trials = async {
        let mut nodes = Vec::new();
        for _ in 0..NODES {
            nodes.push(NodeProcess::start(&redis, origin, REQUESTS).await);
        }
        let mut calls_per_trial = Vec::new();
        for trial in 0..TRIALS {
            let path = format!("/cold-{trial}");
            let target = format!("{path}?delay=200");
            // Released together: each node fires its requests as soon as it reads the line.
            for node in &mut nodes {
                node.send(&target).await;
            }
            let mut reports = Vec::new();
            for node in &mut nodes {
                reports.push(node.report().await);
            }

            let origin_calls = calls.of(&path);
            let mut bodies = BTreeSet::new();
            let mut node_calls = 0;
            for report in &reports {
                assert_eq!(count(report, "failed"), 0, "{report}");
                assert_eq!(
                    count(&report["statuses"], "200"),
                    REQUESTS as u64,
                    "{report}"
                );
                assert_eq!(count(&report["stats"], "bypasses"), 0, "{report}");
                node_calls += count(report, "origin_calls");
                for body in report["bodies"].as_array().unwrap() {
                    bodies.insert(body.as_str().unwrap().to_owned());
                }
            }
            assert!(
                (1..=NODES as u64).contains(&origin_calls),
                "trial {trial}: {origin_calls} origin calls; reports: {reports:?}"
            );
            // Every origin call reached the origin from some node, and its answer went to at
            // least that node's own client; nobody got anything else.
            assert_eq!(node_calls, origin_calls, "{reports:?}");
            assert_eq!(bodies.len() as u64, origin_calls, "{bodies:?}");
            for body in &bodies {
                assert!(
                    body.starts_with(&format!("path={path} query=delay=200 call=")),
                    "{body}"
                );
            }
            for key in redis.keys("trc:*:l:*") {
                assert_ne!(redis.ttl(&key), -1, "lock {key} has no expiry");
            }
            calls_per_trial.push(origin_calls);
        }
        let single_call_trials = calls_per_trial.iter().filter(|&&n| n == 1).count();
        assert!(
            single_call_trials * 2 > TRIALS,
            "too few trials called the origin exactly once; origin calls per trial: \
             {calls_per_trial:?}"
        );
        // Closing stdin ends the nodes.
        for node in nodes {
            let NodeProcess {
                mut child, stdin, ..
            } = node;
            drop(stdin);
            let status = child.wait().await.unwrap();
            assert!(status.success(), "a node failed: {status}");
        }
    };
    // A hang guard only, generous for a loaded machine.
    let finished = tokio::time::timeout(Duration::from_secs(60), trials).await;
    assert!(
        finished.is_ok(),
        "the nodes did not finish: something hangs"
    );
    assert!(redis.keys("trc:*:l:*").is_empty());
}

// ---------------------------------------------------------------------------------------------
// 3. Leaders that fail
// ---------------------------------------------------------------------------------------------

/// A leader whose origin answers 500: nothing is stored or shared, each follower asks the
/// origin itself and gets its own answer.
async fn a_failing_leader_is_not_shared(backend: Backend) {
    const N: usize = 50;
    let layer = backend.layer();
    let calls = Calls::default();
    let counted = layer.clone();
    let all_missed: Gate = Arc::new(move || counted.stats().misses >= N as u64);
    let app = gated_origin(&calls, all_missed, layer.clone());

    let got = no_hang(burst(&app, N, "/broken?status=500", no_headers)).await;

    assert_eq!(calls.of("/broken"), N as u64);
    assert!(got
        .iter()
        .all(|g| g.status == StatusCode::INTERNAL_SERVER_ERROR));
    assert!(got.iter().all(|g| !g.is_collapsed()));
    let bodies: HashSet<_> = got.iter().map(|g| g.body.clone()).collect();
    assert_eq!(bodies.len(), N, "someone got another request's answer");
    for n in 1..=N {
        let body = format!("path=/broken query=status=500 call={n}");
        assert!(bodies.contains(body.as_bytes()), "missing {body}");
    }
    assert_eq!(layer.stats().stores, 0);
    assert_eq!(layer.stats().collapsed, 0);
    backend.assert_locks_released().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_500_is_never_stored_and_followers_get_their_own_answers_in_memory() {
    a_failing_leader_is_not_shared(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_500_is_never_stored_and_followers_get_their_own_answers_on_redis() {
    a_failing_leader_is_not_shared(Backend::redis()).await;
}

/// The leader's client goes away while the origin is still working: the fill goes on and the
/// followers get the stored entry.
async fn a_cancelled_leader_still_fills(backend: Backend) {
    const FOLLOWERS: usize = 20;
    let layer = backend.layer();
    let calls = Calls::default();
    let leader_gone = Arc::new(AtomicBool::new(false));
    let gone = Arc::clone(&leader_gone);
    let app = gated_origin(
        &calls,
        Arc::new(move || gone.load(Ordering::SeqCst)),
        layer.clone(),
    );

    no_hang(async {
        let leader = {
            let app = app.clone();
            tokio::spawn(
                async move { read(app.oneshot(router_get("/slow", &[])).await.unwrap()).await },
            )
        };
        // The fill is running (and held at the origin's door).
        let counted = layer.clone();
        assert!(wait_until(|| counted.stats().fills_in_flight == 1).await);
        let followers: Vec<_> = (0..FOLLOWERS)
            .map(|_| {
                let app = app.clone();
                tokio::spawn(async move {
                    read(app.oneshot(router_get("/slow", &[])).await.unwrap()).await
                })
            })
            .collect();
        assert!(wait_until(|| counted.stats().misses >= (FOLLOWERS + 1) as u64).await);
        leader.abort();
        let aborted = leader.await;
        assert!(
            aborted.as_ref().is_err_and(|err| err.is_cancelled()),
            "the leader was not cancelled: {aborted:?}"
        );
        leader_gone.store(true, Ordering::SeqCst);

        let expected = Bytes::from_static(b"path=/slow query= call=1");
        for follower in followers {
            let got = follower.await.unwrap();
            assert_eq!(got.status, StatusCode::OK);
            assert!(got.is_collapsed(), "{}", got.cache_status());
            assert_eq!(got.body, expected);
        }
        let later = read(app.clone().oneshot(router_get("/slow", &[])).await.unwrap()).await;
        assert!(later.is_fresh_hit(), "{}", later.cache_status());
        assert_eq!(later.body, expected);
    })
    .await;
    assert_eq!(calls.of("/slow"), 1);
    assert_eq!(layer.stats().collapsed, FOLLOWERS as u64);
    backend.assert_locks_released().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_does_not_abort_the_fill_in_memory() {
    a_cancelled_leader_still_fills(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_does_not_abort_the_fill_on_redis() {
    a_cancelled_leader_still_fills(Backend::redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_drops_its_body_half_way_still_fills_for_the_followers() {
    const FOLLOWERS: usize = 10;
    let layer = memory_layer();
    let origin = Origin::new();
    origin.set_parts(8, Duration::from_millis(30));
    let counted = layer.clone();
    origin.set_gate(Some(Arc::new(move || {
        counted.stats().misses >= (FOLLOWERS + 1) as u64
    })));
    let service = stack(&layer, &origin);

    no_hang(async {
        let leader = {
            let service = service.clone();
            tokio::spawn(async move {
                let response = service.oneshot(get("/streamed")).await.unwrap();
                let mut body = response.into_body();
                let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
                // The client goes away with most of the body still to come.
                drop(body);
                first
            })
        };
        // The leader's fill is running (its origin holds the answer) before anyone follows.
        assert!(wait_until(|| layer.stats().fills_in_flight >= 1).await);
        let followers: Vec<_> = (0..FOLLOWERS)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move { fetch(&service, "/streamed").await })
            })
            .collect();
        let first = leader.await.unwrap();
        // Under load several parts may travel together; the body starts with the first one.
        assert!(first.starts_with(&origin_body(1, "/streamed", 8)[0]));

        let expected = whole(&origin_body(1, "/streamed", 8));
        for follower in followers {
            let got = follower.await.unwrap();
            assert!(got.is_collapsed(), "{}", got.cache_status());
            assert_eq!(got.body, expected, "a follower got a cut or foreign body");
        }
        let later = fetch(&service, "/streamed").await;
        assert!(later.is_fresh_hit());
        assert_eq!(later.body, expected);
    })
    .await;
    assert_eq!(origin.calls(), 1);
}

/// The leader's origin call panics: the leader's request fails like it would without the cache,
/// and every follower calls the origin itself instead of hanging.
async fn a_panicking_leader_fails_only_itself(backend: Backend) {
    const FOLLOWERS: usize = 20;
    let layer = backend.layer();
    let origin = Origin::new();
    origin.fail_next(Failure::Panic);
    let counted = layer.clone();
    origin.set_gate(Some(Arc::new(move || {
        counted.stats().misses >= (FOLLOWERS + 1) as u64
    })));
    let service = stack(&layer, &origin);

    no_hang(async {
        let leader = {
            let service = service.clone();
            tokio::spawn(async move { fetch(&service, "/panics").await })
        };
        assert!(wait_until(|| origin.calls() >= 1).await);
        let followers: Vec<_> = (0..FOLLOWERS)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move { fetch(&service, "/panics").await })
            })
            .collect();
        let failed = leader.await;
        assert!(
            failed.as_ref().is_err_and(|err| err.is_panic()),
            "the leader's request should fail with the origin's panic: {failed:?}"
        );
        let mut bodies = HashSet::new();
        for follower in followers {
            let got = follower.await.unwrap();
            assert_eq!(got.status, StatusCode::OK);
            assert!(!got.is_collapsed(), "{}", got.cache_status());
            bodies.insert(got.body);
        }
        // Each follower got the answer of its own origin call (calls 2 ..= FOLLOWERS + 1).
        let expected: HashSet<_> = (2..=1 + FOLLOWERS as u64)
            .map(|n| whole(&origin_body(n, "/panics", 0)))
            .collect();
        assert_eq!(bodies, expected);
    })
    .await;
    assert_eq!(origin.calls(), 1 + FOLLOWERS as u64);
    backend.assert_locks_released().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_leader_leaves_no_follower_hanging_in_memory() {
    a_panicking_leader_fails_only_itself(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_leader_leaves_no_follower_hanging_on_redis() {
    a_panicking_leader_fails_only_itself(Backend::redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_origin_errors_gets_the_error_and_followers_ask_themselves() {
    const FOLLOWERS: usize = 20;
    let layer = memory_layer();
    let origin = Origin::new();
    origin.fail_next(Failure::Error);
    let counted = layer.clone();
    origin.set_gate(Some(Arc::new(move || {
        counted.stats().misses >= (FOLLOWERS + 1) as u64
    })));
    let service = stack(&layer, &origin);

    no_hang(async {
        let leader = {
            let service = service.clone();
            tokio::spawn(async move { service.oneshot(get("/errors")).await.map(|_| ()) })
        };
        assert!(wait_until(|| origin.calls() >= 1).await);
        let followers: Vec<_> = (0..FOLLOWERS)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move { fetch(&service, "/errors").await })
            })
            .collect();
        assert_eq!(leader.await.unwrap(), Err(OriginDown));
        let mut bodies = HashSet::new();
        for follower in followers {
            let got = follower.await.unwrap();
            assert_eq!(got.status, StatusCode::OK);
            bodies.insert(got.body);
        }
        assert_eq!(bodies.len(), FOLLOWERS);
    })
    .await;
    assert_eq!(origin.calls(), 1 + FOLLOWERS as u64);
}

// ---------------------------------------------------------------------------------------------
// 4. Per-user responses
// ---------------------------------------------------------------------------------------------

/// 500 users at once on a route whose answer is personal: nobody gets anybody else's.
async fn personal_answers_are_never_shared(backend: Backend, query: &str) {
    const USERS: usize = 500;
    let layer = backend.layer();
    let calls = Calls::default();
    let counted = layer.clone();
    // Everyone is waiting behind the first fill before it answers.
    let all_missed: Gate = Arc::new(move || counted.stats().misses >= USERS as u64);
    let app = gated_origin(&calls, all_missed, layer.clone());
    let path = format!("/me?{query}&reflect=x-user");

    let got = no_hang(burst(&app, USERS, &path, |i| {
        vec![("x-user".to_owned(), format!("u{i}"))]
    }))
    .await;

    assert_eq!(calls.of("/me"), USERS as u64);
    let mut cookies = HashSet::new();
    for (i, got) in got.iter().enumerate() {
        assert_eq!(got.status, StatusCode::OK);
        let text = got.text();
        assert!(
            text.ends_with(&format!(" x-user=u{i}")),
            "user u{i} got {text:?}"
        );
        assert!(!got.is_collapsed());
        for cookie in got.headers.get_all("set-cookie") {
            assert!(
                cookies.insert(cookie.clone()),
                "Set-Cookie {cookie:?} went to two clients"
            );
        }
    }
    if query.contains("cookie") {
        assert_eq!(cookies.len(), USERS);
    }
    let stats = layer.stats();
    assert_eq!(stats.stores, 0);
    assert_eq!(stats.collapsed, 0);
    backend.assert_locks_released().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_answers_reach_only_their_own_client() {
    personal_answers_are_never_shared(Backend::Memory, "cookie=1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_answers_reach_only_their_own_client() {
    personal_answers_are_never_shared(Backend::Memory, "cc=private").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_answers_reach_only_their_own_client_on_redis() {
    personal_answers_are_never_shared(Backend::redis(), "cookie=1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_varies_on_the_user_is_shared_only_with_the_same_user() {
    const USERS: usize = 50;
    const EACH: usize = 4;
    const N: usize = USERS * EACH;
    let layer = memory_layer();
    let calls = Calls::default();
    let counted = layer.clone();
    let all_missed: Gate = Arc::new(move || counted.stats().misses >= N as u64);
    let app = gated_origin(&calls, all_missed, layer.clone());
    let path = "/mine?vary=x-user&reflect=x-user";
    let user = |i: usize| vec![("x-user".to_owned(), format!("u{}", i % USERS))];

    let first = no_hang(burst(&app, N, path, user)).await;
    let after_first = calls.of("/mine");
    assert!(
        (USERS as u64..=N as u64).contains(&after_first),
        "{after_first} origin calls"
    );
    for (i, got) in first.iter().enumerate() {
        let text = got.text();
        assert!(
            text.ends_with(&format!(" x-user=u{}", i % USERS)),
            "request {i} got {text:?}"
        );
    }
    // Only the leader's own user can have shared its answer.
    assert!(layer.stats().collapsed < EACH as u64);

    // Once stored, every user is served their own variant from the cache.
    assert!(wait_until(|| layer.stats().stores >= USERS as u64).await);
    let second = no_hang(burst(&app, N, path, user)).await;
    for (i, got) in second.iter().enumerate() {
        assert!(got.is_fresh_hit(), "{}", got.cache_status());
        assert!(got.text().ends_with(&format!(" x-user=u{}", i % USERS)));
    }
    assert_eq!(calls.of("/mine"), after_first);
}

// ---------------------------------------------------------------------------------------------
// 5. A fill lock that expires mid-fill
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_lock_that_expires_mid_fill_is_not_released_from_under_the_next_holder() {
    let redis = RedisServer::start();
    // Instance A's lock expires long before its origin answers. Instance B keeps its lock for
    // the default 10 s, so it is still held (and must survive) when A releases.
    let a = redis_layer(&redis).lock_ttl(Duration::from_millis(300));
    let b = redis_layer(&redis);
    let origin = Origin::new();
    origin.set_parts(4, Duration::ZERO);
    let (service_a, service_b) = (stack(&a, &origin), stack(&b, &origin));
    let lock_key = request_key("http://stampede.test/expiring").lock_key();

    no_hang(async {
        origin.set_delay(Duration::from_millis(1000));
        let first = {
            let service = service_a.clone();
            tokio::spawn(async move { fetch(&service, "/expiring").await })
        };
        assert!(wait_until(|| origin.calls() == 1).await);
        assert_eq!(a.stats().locks_acquired, 1);
        // Well past A's lock TTL: the lock is gone although A's fill is still running.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(redis.ttl(&lock_key), -2, "A's lock should have expired");

        origin.set_delay(Duration::from_millis(2500));
        let second = {
            let service = service_b.clone();
            tokio::spawn(async move { fetch(&service, "/expiring").await })
        };
        assert!(wait_until(|| origin.calls() == 2).await);
        assert_eq!(
            b.stats().locks_acquired,
            1,
            "B should take the expired lock"
        );
        assert_eq!(b.stats().locks_waited, 0);

        let from_a = first.await.unwrap();
        assert_eq!(from_a.body, whole(&origin_body(1, "/expiring", 4)));
        assert!(
            wait_until(|| a.stats().locks_lost >= 1).await,
            "A's release should find the lock gone: {:?}",
            a.stats()
        );
        // Right after A's release, B's fill is still running and B's lock is still there.
        assert!(!second.is_finished());
        assert!(redis.ttl(&lock_key) > 0, "A's release deleted B's lock");
        assert!(wait_until(|| a.stats().stores == 1).await);

        let from_b = second.await.unwrap();
        assert_eq!(from_b.body, whole(&origin_body(2, "/expiring", 4)));
        assert!(wait_until(|| b.stats().stores == 1).await);
        assert!(
            wait_until(|| redis.ttl(&lock_key) == -2).await,
            "B's lock was not released"
        );
        assert_eq!(b.stats().locks_lost, 0);

        // The stored value is one whole response: a third instance hits and gets all of it.
        let c = redis_layer(&redis);
        let later = fetch(&stack(&c, &origin), "/expiring").await;
        assert!(later.is_fresh_hit(), "{}", later.cache_status());
        assert!(
            later.body == from_a.body || later.body == from_b.body,
            "the stored body is not one whole response ({} bytes)",
            later.body.len()
        );
    })
    .await;
    assert_eq!(origin.calls(), 2);
}

// ---------------------------------------------------------------------------------------------
// 6. A purge during a slow fill
// ---------------------------------------------------------------------------------------------

/// The path's generation moves on (a purge) while a fill runs: the fill's write is refused, and
/// the next request misses.
async fn a_purge_during_a_fill_wins(backend: Backend) {
    let layer = backend.layer();
    let origin = Origin::new();
    let purged = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&purged);
    origin.set_gate(Some(Arc::new(move || seen.load(Ordering::SeqCst))));
    let service = stack(&layer, &origin);
    let generation_key = request_key("http://stampede.test/purged").generation_key();

    no_hang(async {
        let first = {
            let service = service.clone();
            tokio::spawn(async move { fetch(&service, "/purged").await })
        };
        assert!(wait_until(|| origin.calls() == 1).await);
        let generation = layer
            .store()
            .bump_generation(&generation_key, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(generation, 1);
        if let Backend::Redis(redis) = &backend {
            assert_eq!(redis.get(&generation_key).as_deref(), Some(&b"1"[..]));
        }
        purged.store(true, Ordering::SeqCst);

        // The client of the fill still gets its answer.
        let got = first.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, whole(&origin_body(1, "/purged", 0)));
        assert!(
            wait_until(|| layer.stats().fenced_writes == 1).await,
            "the fill's write was not fenced: {:?}",
            layer.stats()
        );
        assert_eq!(layer.stats().stores, 0);

        let next = fetch(&service, "/purged").await;
        assert!(
            next.cache_status().starts_with("trc; fwd=miss"),
            "{}",
            next.cache_status()
        );
        assert_eq!(next.body, whole(&origin_body(2, "/purged", 0)));
        assert_eq!(origin.calls(), 2);

        // Filled under the new generation, that one is kept.
        assert!(wait_until(|| layer.stats().stores == 1).await);
        let hit = fetch(&service, "/purged").await;
        assert!(hit.is_fresh_hit(), "{}", hit.cache_status());
        assert_eq!(hit.body, next.body);
    })
    .await;
    assert_eq!(origin.calls(), 2);
    assert_eq!(layer.stats().fenced_writes, 1);
    backend.assert_locks_released().await;
}

/// Requests waiting behind a fill whose write is fenced off by a purge never receive the
/// pre-purge answer: they get answers made after the purge.
async fn followers_of_a_fenced_fill_get_post_purge_answers(backend: Backend) {
    const FOLLOWERS: usize = 10;
    let layer = backend.layer();
    let origin = Origin::new();
    let purged = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&purged);
    origin.set_gate(Some(Arc::new(move || seen.load(Ordering::SeqCst))));
    let service = stack(&layer, &origin);
    let generation_key = request_key("http://stampede.test/purged-busy").generation_key();

    no_hang(async {
        let leader = tokio::spawn(fetch(&service, "/purged-busy"));
        assert!(wait_until(|| origin.calls() == 1).await);
        let followers: Vec<_> = (0..FOLLOWERS)
            .map(|_| tokio::spawn(fetch(&service, "/purged-busy")))
            .collect();
        let counted = layer.clone();
        assert!(wait_until(|| counted.stats().misses >= (FOLLOWERS + 1) as u64).await);
        layer
            .store()
            .bump_generation(&generation_key, Duration::from_secs(60))
            .await
            .unwrap();
        purged.store(true, Ordering::SeqCst);

        let pre_purge = whole(&origin_body(1, "/purged-busy", 0));
        assert_eq!(leader.await.unwrap().body, pre_purge);
        for follower in followers {
            let got = follower.await.unwrap();
            assert_eq!(got.status, StatusCode::OK);
            assert_ne!(
                got.body, pre_purge,
                "a follower got the fenced, pre-purge answer"
            );
        }
        assert!(wait_until(|| layer.stats().fenced_writes >= 1).await);
        let later = fetch(&service, "/purged-busy").await;
        assert_ne!(later.body, pre_purge);
    })
    .await;
    assert!(origin.calls() >= 2);
    backend.assert_locks_released().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_fenced_fill_never_get_the_pre_purge_answer_in_memory() {
    followers_of_a_fenced_fill_get_post_purge_answers(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_fenced_fill_never_get_the_pre_purge_answer_on_redis() {
    followers_of_a_fenced_fill_get_post_purge_answers(Backend::redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_slow_fill_fences_its_write_in_memory() {
    a_purge_during_a_fill_wins(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_slow_fill_fences_its_write_on_redis() {
    a_purge_during_a_fill_wins(Backend::redis()).await;
}

// ---------------------------------------------------------------------------------------------
// 7. Stale-while-revalidate
// ---------------------------------------------------------------------------------------------

/// After expiry, ten concurrent requests are answered from the stale entry while exactly one
/// background call refreshes it; then the new entry is served fresh.
async fn stale_while_revalidate(layer: CacheLayer, first_cache_control: &str, path: &str) {
    const STALE: u64 = 10;
    let origin = Origin::new();
    origin.set_cache_control(first_cache_control);
    let service = stack(&layer, &origin);

    let first = fetch(&service, path).await;
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    assert!(wait_until(|| layer.stats().stores == 1).await);
    // The refreshed entry stays fresh for a while.
    origin.set_cache_control("max-age=60, stale-while-revalidate=30");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The refresh is held until every stale answer has gone out.
    let counted = layer.clone();
    origin.set_gate(Some(Arc::new(move || counted.stats().stale_hits >= STALE)));
    let stale: Vec<_> = (0..STALE)
        .map(|_| {
            let service = service.clone();
            let path = path.to_owned();
            tokio::spawn(async move { fetch(&service, &path).await })
        })
        .collect();
    for request in stale {
        let got = request.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        let status = got.cache_status();
        assert!(status.contains("; hit"), "{status}");
        assert!(status.contains("detail=stale-while-revalidate"), "{status}");
        assert_eq!(got.body, first.body);
    }
    assert!(
        wait_until(|| layer.stats().stores == 2).await,
        "{:?}",
        layer.stats()
    );
    assert_eq!(origin.calls(), 2, "exactly one background refresh");
    let stats = layer.stats();
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.stale_hits, STALE);

    origin.set_gate(None);
    for _ in 0..3 {
        let fresh = fetch(&service, path).await;
        assert!(fresh.is_fresh_hit(), "{}", fresh.cache_status());
        assert_eq!(fresh.body, whole(&origin_body(2, path, 0)));
    }
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_memory() {
    stale_while_revalidate(
        memory_layer(),
        "max-age=1, stale-while-revalidate=30",
        "/swr",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_on_redis() {
    let backend = Backend::redis();
    stale_while_revalidate(
        backend.layer(),
        "max-age=1, stale-while-revalidate=30",
        "/swr",
    )
    .await;
    backend.assert_locks_released().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layers_stale_while_revalidate_window_works_without_the_origin_asking() {
    let layer = memory_layer().stale_while_revalidate(Duration::from_secs(30));
    stale_while_revalidate(layer, "max-age=1", "/swr-layer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_revalidate_turns_the_layers_stale_while_revalidate_off() {
    let layer = memory_layer().stale_while_revalidate(Duration::from_secs(30));
    let origin = Origin::new();
    origin.set_cache_control("max-age=1, must-revalidate");
    let service = stack(&layer, &origin);
    fetch(&service, "/strict").await;
    assert!(wait_until(|| layer.stats().stores == 1).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let expired = fetch(&service, "/strict").await;
    assert!(
        expired.cache_status().starts_with("trc; fwd=miss"),
        "{}",
        expired.cache_status()
    );
    assert_eq!(expired.body, whole(&origin_body(2, "/strict", 0)));
    assert_eq!(origin.calls(), 2);
    assert_eq!(layer.stats().stale_hits, 0);
}

// ---------------------------------------------------------------------------------------------
// 8. Stale-if-error
// ---------------------------------------------------------------------------------------------

async fn stale_if_error(backend: Backend) {
    let layer = backend.layer();
    let origin = Origin::new();
    let service = stack(&layer, &origin);
    origin.set_cache_control("max-age=1, stale-if-error=30");
    let lenient = fetch(&service, "/lenient").await;
    origin.set_cache_control("max-age=1, stale-if-error=30, must-revalidate");
    let strict = fetch(&service, "/strict").await;
    assert!(wait_until(|| layer.stats().stores == 2).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The origin now answers 500.
    origin.set_failing(Some(Failure::Status500));
    let got = fetch(&service, "/lenient").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        got.cache_status().contains("detail=stale-if-error"),
        "{}",
        got.cache_status()
    );
    assert_eq!(got.body, lenient.body);
    assert_eq!(origin.calls(), 3, "the origin is asked first");

    // must-revalidate: the 500 passes through.
    let got = fetch(&service, "/strict").await;
    assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !got.cache_status().contains("stale"),
        "{}",
        got.cache_status()
    );
    assert_eq!(got.text(), "origin failure on call 4");
    assert_ne!(got.body, strict.body);

    // The origin now fails outright: the same, with the error instead of a 500.
    origin.set_failing(Some(Failure::Error));
    let got = fetch(&service, "/lenient").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.cache_status().contains("detail=stale-if-error"));
    assert_eq!(got.body, lenient.body);
    let failed = service.clone().oneshot(get("/strict")).await;
    assert_eq!(failed.err(), Some(OriginDown));
    assert_eq!(origin.calls(), 6);
    assert_eq!(layer.stats().stale_hits, 2);
    backend.assert_locks_released().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_answers_a_500_with_the_stale_entry_unless_it_must_revalidate_in_memory() {
    stale_if_error(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_answers_a_500_with_the_stale_entry_unless_it_must_revalidate_on_redis() {
    stale_if_error(Backend::redis()).await;
}

// ---------------------------------------------------------------------------------------------
// 9. Waiting on another instance's fill lock
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_left_by_a_dead_instance_holds_requests_only_until_the_lock_wait() {
    const N: usize = 20;
    let redis = RedisServer::start();
    let layer = redis_layer(&redis).lock_wait(Duration::from_millis(500));
    let origin = Origin::new();
    let service = stack(&layer, &origin);
    // An instance took the lock and died: nobody will fill, nobody will publish.
    let lock_key = request_key("http://stampede.test/orphaned").lock_key();
    let taken = redis.cmd_str(&["SET", &lock_key, "dead-instance", "NX", "PX", "10000"]);
    assert!(taken.is_ok());

    let got = no_hang(async {
        let tasks: Vec<_> = (0..N)
            .map(|_| tokio::spawn(fetch(&service, "/orphaned")))
            .collect();
        let mut got = Vec::new();
        for task in tasks {
            got.push(task.await.unwrap());
        }
        got
    })
    .await;

    // Everyone is answered by the origin once the wait is over; nobody fails.
    assert!((1..=N as u64).contains(&origin.calls()));
    let answers: HashSet<_> = (1..=origin.calls())
        .map(|n| whole(&origin_body(n, "/orphaned", 0)))
        .collect();
    for got in &got {
        assert_eq!(got.status, StatusCode::OK);
        assert!(answers.contains(&got.body), "{}", got.text());
    }
    let stats = layer.stats();
    assert_eq!(
        stats.locks_waited, 1,
        "one request per instance waits on the lock"
    );
    assert_eq!(stats.lock_timeouts, 1);
    // The dead instance's lock is left to expire by itself.
    assert_eq!(redis.get(&lock_key).as_deref(), Some(&b"dead-instance"[..]));
}

/// A Redis store whose fill events never reach anybody (as when they are published while the
/// other instances' subscriptions are reconnecting after a Redis restart); everything else,
/// fill locks included, goes to Redis.
///
/// With `held_locks`, its lock attempts also wait for a permit of the semaphore (counting
/// themselves in the counter while they wait), so that a test can let another instance fill a
/// key between this instance's read and its lock.
#[derive(Debug)]
struct LostEvents {
    redis: RedisStore,
    held_locks: Option<(Arc<AtomicU64>, Arc<tokio::sync::Semaphore>)>,
}

impl LostEvents {
    fn new(redis: &RedisServer) -> Self {
        LostEvents {
            redis: RedisStore::from_url(&redis.url()).unwrap(),
            held_locks: None,
        }
    }
}

impl Store for LostEvents {
    fn name(&self) -> &'static str {
        "redis without events"
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        self.redis.get(key)
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        self.redis.put(key, value, ttl)
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        self.redis.delete(key)
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.redis.ping()
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn get_with_generation<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
    ) -> StoreFuture<'a, (Option<Bytes>, u64)> {
        self.redis.get_with_generation(key, generation_key)
    }

    fn put_fenced<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        generation_key: &'a str,
        generation: u64,
    ) -> StoreFuture<'a, bool> {
        self.redis
            .put_fenced(key, value, ttl, generation_key, generation)
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            if let Some((waiting, release)) = &self.held_locks {
                waiting.fetch_add(1, Ordering::SeqCst);
                if let Ok(permit) = release.acquire().await {
                    permit.forget();
                }
            }
            self.redis.try_lock(key, token, ttl).await
        })
    }

    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, bool> {
        self.redis.unlock(key, token)
    }
}

/// Instance A fills a key under the shared lock, but its fill event is lost. Instance B's
/// requests wait on the lock; when B's wait ends the entry has long been in Redis, so at most
/// one more origin call (one per instance, RELIABILITY F5/L2) may happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_fill_event_does_not_send_the_waiting_followers_to_the_origin() {
    const N: usize = 20;
    let redis = RedisServer::start();
    let a = CacheLayer::new(LostEvents::new(&redis))
        .jitter(0.0)
        .secret(SECRET)
        .read_deadline(Duration::from_secs(2))
        .write_deadline(Duration::from_secs(2));
    let b = redis_layer(&redis).lock_wait(Duration::from_millis(1000));
    let origin = Origin::new();
    origin.set_delay(Duration::from_millis(300));
    let (service_a, service_b) = (stack(&a, &origin), stack(&b, &origin));

    let got = no_hang(async {
        let filling = tokio::spawn(fetch(&service_a, "/lost-event"));
        assert!(wait_until(|| origin.calls() == 1).await);
        let waiting: Vec<_> = (0..N)
            .map(|_| tokio::spawn(fetch(&service_b, "/lost-event")))
            .collect();
        let filled = filling.await.unwrap();
        assert!(wait_until(|| a.stats().stores == 1).await);
        let mut got = vec![filled];
        for request in waiting {
            got.push(request.await.unwrap());
        }
        got
    })
    .await;

    assert!(got.iter().all(|g| g.status == StatusCode::OK));
    assert_eq!(b.stats().locks_waited, 1);
    assert!(
        origin.calls() <= 2,
        "{} origin calls for one key on two instances, although the entry was stored while \
         instance B waited; B's Cache-Status values: {:?}",
        origin.calls(),
        got.iter()
            .skip(1)
            .map(Got::cache_status)
            .collect::<BTreeSet<_>>()
    );
}

/// Instance B reads a miss; before its lock attempt reaches Redis, instance A fills the key and
/// releases the lock. B then wins the lock, but reads the store once more and answers from A's
/// entry instead of calling the origin a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_won_after_another_instance_filled_the_key_answers_from_the_entry() {
    let redis = RedisServer::start();
    let a = redis_layer(&redis);
    let waiting = Arc::new(AtomicU64::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let b = CacheLayer::new(LostEvents {
        held_locks: Some((Arc::clone(&waiting), Arc::clone(&release))),
        ..LostEvents::new(&redis)
    })
    .jitter(0.0)
    .secret(SECRET)
    .read_deadline(Duration::from_secs(2))
    .write_deadline(Duration::from_secs(2));
    let origin = Origin::new();
    let (service_a, service_b) = (stack(&a, &origin), stack(&b, &origin));

    let (from_a, from_b) = no_hang(async {
        // B has read its miss and holds at its lock attempt.
        let late = tokio::spawn(fetch(&service_b, "/late-lock"));
        assert!(wait_until(|| waiting.load(Ordering::SeqCst) == 1).await);
        // A fills the key and lets its lock go.
        let from_a = fetch(&service_a, "/late-lock").await;
        assert!(wait_until(|| a.stats().stores == 1).await);
        assert!(wait_until(|| redis.keys("trc:*:l:*").is_empty()).await);
        release.add_permits(1);
        (from_a, late.await.unwrap())
    })
    .await;

    assert_eq!(from_a.status, StatusCode::OK);
    assert_eq!(from_b.status, StatusCode::OK);
    assert_eq!(
        origin.calls(),
        1,
        "B called the origin: {}",
        from_b.cache_status()
    );
    assert_eq!(from_b.body, from_a.body);
    assert_eq!(b.stats().locks_acquired, 1);
    assert_eq!(b.stats().collapsed, 1);
}

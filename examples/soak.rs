//! A soak run of the cache: mixed load through the layer on a private Redis for a fixed time,
//! with Redis killed and restarted on a schedule and about 1 % of the clients giving up
//! mid-request. Driven by `scripts/soak.sh`; see TESTING.md for recorded runs.
//!
//! ```text
//! cargo run --release --example soak -- [seconds (600)] [restart every N seconds]
//! ```
//!
//! The origin answers every URL with a body computed from the URL alone, so the driver knows
//! the exact bytes every response must carry, whether it came from the origin or the cache:
//!
//! - `/s/<n>`: a small cacheable body; `/v/<n>`: the same, varying on `Accept-Language`;
//! - `/slow/<n>`: cacheable, after 50 ms; `/big/<n>`: 1.5 MiB, too large to store;
//! - `/private/<n>`: `Cache-Control: private`; `/err/<n>`: a 500 from the origin itself.
//!
//! At the end it prints the request counts, the cache-caused 5xx (a 5xx on a URL whose origin
//! answer is not one), the bodies that differ from the origin's, the resident memory, task and
//! file-descriptor counts at start and end, and the fills still in flight once the load has
//! stopped. It exits with status 1 if any cache-caused 5xx, wrong body or failed request was
//! seen, or if fills were still in flight at idle.

#[allow(dead_code)]
#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis_server::RedisServer;
use tower_response_cache::{CacheLayer, RedisStore};

/// Concurrent client loops.
const WORKERS: usize = 32;
/// Distinct keys per route family.
const KEYS: u64 = 2000;
/// How long Redis stays down at each kill.
const DOWNTIME: Duration = Duration::from_secs(5);

/// The status and the exact body the origin gives `path` (for `lang`, on `/v/`).
fn expected(path: &str, lang: &str) -> (StatusCode, Bytes) {
    let family = path.split('/').nth(1).unwrap_or_default();
    let seed = format!("{path}|{lang}|");
    let size = match family {
        "big" => 1536 * 1024,
        "v" | "s" | "slow" | "private" | "err" => 512 + path.len() * 37 % 3072,
        _ => 16,
    };
    let body: Vec<u8> = seed.bytes().cycle().take(size).collect();
    let status = if family == "err" {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    (status, Bytes::from(body))
}

async fn origin(request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let family = path.split('/').nth(1).unwrap_or_default().to_owned();
    let lang = request
        .headers()
        .get("accept-language")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    if family == "slow" {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lang = if family == "v" { lang } else { "-".to_owned() };
    let (status, body) = expected(&path, &lang);
    let mut response = Response::builder().status(status);
    response = match family.as_str() {
        "v" => response.header("vary", "accept-language"),
        "private" => response.header("cache-control", "private"),
        "err" => response.header("cache-control", "max-age=60"),
        _ => response,
    };
    if family == "big" {
        // Streamed, without a length, in 64 KiB chunks.
        let chunks: Vec<Result<Bytes, std::io::Error>> = body
            .chunks(64 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        return response
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .unwrap_or_default();
    }
    response.body(Body::from(body)).unwrap_or_default()
}

/// A path from the mix: mostly small entries with a hot set, some of everything else.
fn pick() -> (String, &'static str) {
    let hot = fastrand::u8(..) < 200;
    let n = if hot {
        fastrand::u64(..KEYS / 10)
    } else {
        fastrand::u64(..KEYS)
    };
    let roll = fastrand::u8(..100);
    let family = match roll {
        0..=59 => "s",
        60..=74 => "v",
        75..=84 => "slow",
        85..=89 => "private",
        90..=94 => "err",
        _ => "big",
    };
    let family = if family == "big" && fastrand::u8(..4) != 0 {
        "s"
    } else {
        family
    };
    let lang = ["en", "fr", "de"][fastrand::usize(..3)];
    (format!("/{family}/{n}"), lang)
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    hits: AtomicU64,
    origin_5xx: AtomicU64,
    cache_caused_5xx: AtomicU64,
    wrong_bodies: AtomicU64,
    failed: AtomicU64,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let seconds = arg(1, 600).max(10);
    // Every 2 minutes, or three times in a shorter run.
    let restart_every = arg(2, (seconds / 3).clamp(10, 120)).max(10);
    let mut redis = RedisServer::start();
    let layer = CacheLayer::new(RedisStore::from_url(&redis.url()).expect("a redis URL"))
        .default_ttl(Duration::from_secs(20));
    let app = Router::new().fallback(origin).layer(layer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("the local address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();

    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let rss_start = rss_kib();
    let (tasks_start, fds_start) = (alive_tasks(), open_fds());

    // Redis is killed and restarted on a schedule, from a thread of its own (the fixture blocks).
    let stop = Arc::new(AtomicBool::new(false));
    let restarts = Arc::new(AtomicU64::new(0));
    let chaos = {
        let (stop, restarts) = (Arc::clone(&stop), Arc::clone(&restarts));
        std::thread::spawn(move || {
            let mut next = Instant::now() + Duration::from_secs(restart_every);
            while !stop.load(Ordering::SeqCst) {
                if Instant::now() >= next && Instant::now() + DOWNTIME < end {
                    redis.kill();
                    std::thread::sleep(DOWNTIME);
                    redis.restart();
                    restarts.fetch_add(1, Ordering::SeqCst);
                    next += Duration::from_secs(restart_every);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            redis
        })
    };

    let counts = Arc::new(Counts::default());
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (client, counts) = (client.clone(), Arc::clone(&counts));
        workers.push(tokio::spawn(async move {
            while Instant::now() < end {
                let (path, lang) = pick();
                counts.requests.fetch_add(1, Ordering::Relaxed);
                let request = http::Request::get(format!("http://{addr}{path}"))
                    .header("accept-language", lang)
                    .body(Full::new(Bytes::new()))
                    .expect("a valid request");
                let exchange = async {
                    let response = client.request(request).await.ok()?;
                    let status = response.status();
                    let hit = response
                        .headers()
                        .get("cache-status")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.contains("; hit"));
                    let body = response.into_body().collect().await.ok()?.to_bytes();
                    Some((status, hit, body))
                };
                let outcome = if fastrand::u8(..100) == 0 {
                    // A client that gives up after a few milliseconds.
                    let patience = Duration::from_millis(fastrand::u64(1..30));
                    match tokio::time::timeout(patience, exchange).await {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            counts.cancelled.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                } else {
                    exchange.await
                };
                let Some((status, hit, body)) = outcome else {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                counts.completed.fetch_add(1, Ordering::Relaxed);
                let lang = if path.starts_with("/v/") { lang } else { "-" };
                let (want_status, want_body) = expected(&path, lang);
                if status.is_server_error() {
                    if want_status.is_server_error() {
                        counts.origin_5xx.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counts.cache_caused_5xx.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if status != want_status || body != want_body {
                    counts.wrong_bodies.fetch_add(1, Ordering::Relaxed);
                }
                if hit {
                    counts.hits.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut rss_warm = None;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if rss_warm.is_none() && start.elapsed() >= Duration::from_secs(seconds / 10) {
            rss_warm = Some(rss_kib());
        }
    }
    for worker in workers {
        let _ = worker.await;
    }
    let load_secs = start.elapsed().as_secs_f64();
    // Close the client's pooled connections, so the counts at the end are those of an idle
    // server.
    drop(client);

    // Idle: every fill must finish by itself.
    let idle_start = Instant::now();
    while layer.stats().fills_in_flight > 0 && idle_start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let redis = chaos.join().expect("the chaos thread");
    let stats = layer.stats();
    let rss_end = rss_kib();
    let (tasks_end, fds_end) = (alive_tasks(), open_fds());
    drop(redis);

    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let requests = load(&counts.requests);
    let completed = load(&counts.completed);
    let cache_caused = load(&counts.cache_caused_5xx);
    let wrong = load(&counts.wrong_bodies);
    let failed = load(&counts.failed);
    println!("duration_s: {seconds}");
    println!("redis_restarts: {}", load(&restarts));
    println!("requests: {requests}");
    println!("requests_per_s: {:.0}", requests as f64 / load_secs);
    println!("completed: {completed}");
    println!("cancelled_by_client: {}", load(&counts.cancelled));
    println!("failed_requests: {failed}");
    println!("hits: {}", load(&counts.hits));
    println!(
        "hit_ratio: {:.3}",
        load(&counts.hits) as f64 / completed.max(1) as f64
    );
    println!("origin_5xx: {}", load(&counts.origin_5xx));
    println!("cache_caused_5xx: {cache_caused}");
    println!("bodies_differing_from_origin: {wrong}");
    println!("rss_kib_start: {rss_start}");
    println!("rss_kib_after_warmup: {}", rss_warm.unwrap_or(rss_start));
    println!("rss_kib_end: {rss_end}");
    println!("tokio_tasks_start: {tasks_start}");
    println!("tokio_tasks_end: {tasks_end}");
    println!("open_fds_start: {fds_start}");
    println!("open_fds_end: {fds_end}");
    println!("fills_in_flight_at_idle: {}", stats.fills_in_flight);
    println!(
        "layer: stores={} misses={} collapsed={} store_errors={:?} breaker_opened={} writes_dropped={}",
        stats.stores,
        stats.misses,
        stats.collapsed,
        stats.store_errors_by,
        stats.breaker_opened,
        stats.writes_dropped
    );
    let ok = cache_caused == 0 && wrong == 0 && failed == 0 && stats.fills_in_flight == 0;
    println!("result: {}", if ok { "PASS" } else { "FAIL" });
    if !ok {
        std::process::exit(1);
    }
}

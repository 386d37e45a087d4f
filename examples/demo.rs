//! The demo: an Axum app with slow routes behind the cache layer, driven over real HTTP.
//!
//! Run with:
//!
//! ```text
//! cargo run --release --example demo                        # scripted workload, memory store
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --release --example demo   # the same on Redis
//! cargo run --release --example demo -- --serve 127.0.0.1:3000          # keep serving for curl
//! ```
//!
//! Without arguments it starts the app twice on loopback (once without the cache, once with it),
//! runs the same workload against both (cold misses, repeated hits, many concurrent requests for
//! one cold key, a query-order variant that must hit the same entry), prints a table and exits.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_response_cache::{CacheLayer, Route};

/// How long the demo's origin takes to answer.
const ORIGIN_DELAY: Duration = Duration::from_millis(50);

#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicU64>,
}

fn app(origin: Origin) -> Router {
    Router::new()
        .route("/products/{id}", get(product))
        .route("/search", get(search))
        .route("/health", get(|| async { "ok" }))
        .with_state(origin)
}

async fn product(State(origin): State<Origin>, Path(id): Path<u32>) -> String {
    origin.calls.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(ORIGIN_DELAY).await;
    format!(
        "{{\"id\":{id},\"name\":\"product {id}\",\"price\":{}}}\n",
        id * 3 + 7
    )
}

async fn search(
    State(origin): State<Origin>,
    Query(params): Query<Vec<(String, String)>>,
) -> String {
    origin.calls.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(ORIGIN_DELAY).await;
    let mut params = params;
    params.sort();
    format!("{{\"query\":{params:?}}}\n")
}

fn cache() -> Result<CacheLayer, tower_response_cache::Error> {
    Ok(CacheLayer::from_env()?
        .default_ttl(Duration::from_secs(60))
        .route(Route::template("/products/{id}").ttl(Duration::from_secs(300)))
        .route(Route::exact("/health").bypass()))
}

async fn serve(router: Router, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(local)
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

struct Run {
    latencies: Vec<Duration>,
    hits: u64,
}

async fn fetch(client: &HttpClient, url: String) -> (Duration, bool) {
    let started = Instant::now();
    let uri: hyper::Uri = match url.parse() {
        Ok(uri) => uri,
        Err(_) => return (started.elapsed(), false),
    };
    match client.get(uri).await {
        Ok(response) => {
            let hit = response
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("; hit") || v.contains("collapsed"));
            let _ = response.into_body().collect().await;
            (started.elapsed(), hit)
        }
        Err(_) => (started.elapsed(), false),
    }
}

/// The scripted workload against one server; returns per-phase runs.
async fn workload(client: &HttpClient, base: &str) -> Vec<(&'static str, Run)> {
    let mut phases = Vec::new();

    let mut run = Run {
        latencies: Vec::new(),
        hits: 0,
    };
    for id in 0..20 {
        let (took, hit) = fetch(client, format!("{base}/products/{id}")).await;
        run.latencies.push(took);
        run.hits += u64::from(hit);
    }
    phases.push(("cold misses (20 keys)", run));

    let mut run = Run {
        latencies: Vec::new(),
        hits: 0,
    };
    for round in 0..10 {
        for id in 0..20 {
            let _ = round;
            let (took, hit) = fetch(client, format!("{base}/products/{id}")).await;
            run.latencies.push(took);
            run.hits += u64::from(hit);
        }
    }
    phases.push(("repeated requests (200)", run));

    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let client = client.clone();
            let url = format!("{base}/products/999");
            tokio::spawn(async move { fetch(&client, url).await })
        })
        .collect();
    let mut run = Run {
        latencies: Vec::new(),
        hits: 0,
    };
    for task in tasks {
        if let Ok((took, hit)) = task.await {
            run.latencies.push(took);
            run.hits += u64::from(hit);
        }
    }
    phases.push(("200 concurrent, one cold key", run));

    let mut run = Run {
        latencies: Vec::new(),
        hits: 0,
    };
    for url in ["/search?q=shoes&size=42", "/search?size=42&q=shoes"] {
        let (took, hit) = fetch(client, format!("{base}{url}")).await;
        run.latencies.push(took);
        run.hits += u64::from(hit);
    }
    phases.push(("query-order variant (2)", run));
    phases
}

fn percentile(latencies: &[Duration], p: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cache = cache()?;
    match args.as_slice() {
        [] => {}
        [flag, addr] if flag == "--serve" => {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| format!("not an address: {addr}"))?;
            let local = serve(app(Origin::default()).layer(cache), addr).await?;
            println!("serving on http://{local} (try: curl -i http://{local}/products/1)");
            tokio::signal::ctrl_c().await?;
            return Ok(());
        }
        _ => {
            eprintln!("usage: demo [--serve ADDR]");
            std::process::exit(2);
        }
    }
    let store_name = cache.store().name();
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let plain_origin = Origin::default();
    let cached_origin = Origin::default();
    let plain = serve(app(plain_origin.clone()), loopback).await?;
    let cached = serve(app(cached_origin.clone()).layer(cache.clone()), loopback).await?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    let without = workload(&client, &format!("http://{plain}")).await;
    let with = workload(&client, &format!("http://{cached}")).await;

    println!(
        "tower-response-cache demo ({store_name} store, origin delay {} ms)",
        ORIGIN_DELAY.as_millis()
    );
    println!();
    println!(
        "{:<30} {:>8} {:>10} {:>10} {:>9} {:>9} {:>12} {:>12}",
        "phase",
        "requests",
        "hits",
        "hit ratio",
        "p50 ms",
        "p99 ms",
        "p50 no cache",
        "p99 no cache"
    );
    for ((name, run), (_, base)) in with.iter().zip(without.iter()) {
        let requests = run.latencies.len() as u64;
        println!(
            "{:<30} {:>8} {:>10} {:>9.0}% {:>9} {:>9} {:>12} {:>12}",
            name,
            requests,
            run.hits,
            if requests == 0 {
                0.0
            } else {
                run.hits as f64 * 100.0 / requests as f64
            },
            ms(percentile(&run.latencies, 0.5)),
            ms(percentile(&run.latencies, 0.99)),
            ms(percentile(&base.latencies, 0.5)),
            ms(percentile(&base.latencies, 0.99)),
        );
    }
    let total: usize = with.iter().map(|(_, r)| r.latencies.len()).sum();
    println!();
    println!(
        "origin calls: {} with the cache, {} without, for {} requests each",
        cached_origin.calls.load(Ordering::Relaxed),
        plain_origin.calls.load(Ordering::Relaxed),
        total
    );
    let stats = cache.stats();
    println!(
        "cache stats: hits {}, misses {}, collapsed {}, stores {}, bypasses {}, store errors {}",
        stats.hits, stats.misses, stats.collapsed, stats.stores, stats.bypasses, stats.store_errors
    );
    Ok(())
}

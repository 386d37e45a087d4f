//! Micro-benchmarks of the cache's hot paths.
//!
//! - `key`: canonicalising a request target and deriving its keys;
//! - `entry`: encoding and decoding stored responses;
//! - `layer`: one request through the whole layer, in process, against the same Axum router
//!   without the layer, and against a plain Redis `GET` (the floor of any Redis-backed hit).
//!
//! Run with `cargo bench --bench core`. The Redis benchmarks start a private `redis-server` on
//! a free loopback port and stop it when they are done; they never touch a server on 6379.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, HOST, LAST_MODIFIED,
    SERVER, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use tower_response_cache::entry::{EntryCodec, StoredEntry, StoredResponse};
use tower_response_cache::key::{vary_values, KeyDeriver};

const SECRET: &[u8] = b"benchmark secret, 32 bytes or more of it";

/// Short runs so that the whole suite finishes in a few minutes on a small machine.
fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}

// ---------------------------------------------------------------------------------------------
// key
// ---------------------------------------------------------------------------------------------

/// One request head to key: its target, its headers and the Vary fields its response names.
struct KeyCase {
    name: &'static str,
    uri: Uri,
    headers: HeaderMap,
    vary: Vec<HeaderName>,
}

fn key_cases() -> Vec<KeyCase> {
    let host = |headers: &mut HeaderMap| {
        headers.insert(HOST, HeaderValue::from_static("shop.example.com"));
    };
    let mut short = HeaderMap::new();
    host(&mut short);
    let mut vary = short.clone();
    vary.insert(
        ACCEPT_ENCODING,
        HeaderValue::from_static("gzip, deflate, br"),
    );
    vec![
        KeyCase {
            name: "short",
            uri: Uri::from_static("/items/42"),
            headers: short.clone(),
            vary: Vec::new(),
        },
        KeyCase {
            name: "query-10",
            uri: Uri::from_static(
                "/search?q=red%20shoes&page=2&sort=price&order=asc&size=20\
                 &colour=red&brand=acme&min=10&max=99&in_stock=1",
            ),
            headers: short,
            vary: Vec::new(),
        },
        KeyCase {
            name: "vary",
            uri: Uri::from_static("/items/42"),
            headers: vary,
            vary: vec![ACCEPT_ENCODING],
        },
    ]
}

fn key(c: &mut Criterion) {
    let keys = KeyDeriver::new(SECRET, "trc", "v1");
    let mut group = c.benchmark_group("key");
    for case in key_cases() {
        // Every case must be keyable, or the benchmark would time the rejection path.
        let target = keys
            .canonicalize(&Method::GET, &case.uri, &case.headers)
            .unwrap_or_else(|err| panic!("{}: {err}", case.name));
        if case.name == "query-10" {
            assert!(target.query().is_some_and(|q| q.starts_with("brand=acme&")));
        }

        group.bench_with_input(
            BenchmarkId::new("canonicalize", case.name),
            &case,
            |b, case| {
                b.iter(|| {
                    keys.canonicalize(
                        black_box(&Method::GET),
                        black_box(&case.uri),
                        black_box(&case.headers),
                    )
                })
            },
        );
        // What the layer does per cacheable request: canonicalise, read the Vary values (when
        // the path varies), derive the key.
        group.bench_with_input(
            BenchmarkId::new("canonicalize+request_key", case.name),
            &case,
            |b, case| {
                b.iter(|| {
                    let method = black_box(&Method::GET);
                    let headers = black_box(&case.headers);
                    let target = keys.canonicalize(method, black_box(&case.uri), headers);
                    target.map(|target| {
                        let values = if case.vary.is_empty() {
                            Vec::new()
                        } else {
                            vary_values(&case.vary, headers)
                        };
                        keys.request_key(method, &target, &values)
                    })
                })
            },
        );
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// entry
// ---------------------------------------------------------------------------------------------

/// A stored 200 response with eight header fields, one tag and a body of `body_len` bytes.
fn stored_response(body_len: usize) -> StoredEntry {
    let mut headers = HeaderMap::new();
    let mut put = |name: HeaderName, value: &str| {
        let value = HeaderValue::from_str(value).unwrap_or_else(|err| panic!("{name}: {err}"));
        headers.append(name, value);
    };
    put(CONTENT_TYPE, "application/json; charset=utf-8");
    put(CONTENT_LENGTH, &body_len.to_string());
    put(CACHE_CONTROL, "public, max-age=300");
    put(ETAG, "\"5f3a9c2e-1b7d-4e60-9a41-2c8f0d6b7e13\"");
    put(LAST_MODIFIED, "Tue, 14 Nov 2023 22:13:20 GMT");
    put(VARY, "accept-encoding");
    put(SERVER, "origin/1.0");
    put(
        HeaderName::from_static("x-request-id"),
        "0b5e8f2a-6c1d-4a97-b3e4-7d2f9c0a1e58",
    );
    let body: Vec<u8> = (0..body_len)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
        .collect();
    StoredEntry::Response(StoredResponse {
        request_digest: [0x11; 16],
        target_digest: [0x22; 16],
        stored_at_ms: 1_700_000_000_000,
        generation: 0,
        ttl_secs: 300,
        initial_age_secs: 0,
        stale_while_revalidate_secs: 30,
        stale_if_error_secs: 0,
        status: StatusCode::OK,
        headers,
        body: Bytes::from(body),
        trailers: None,
        tags: vec!["product-42".to_owned()],
    })
}

fn entry(c: &mut Criterion) {
    /// The decode cap the layer uses with its default 1 MiB body limit.
    const MAX_LEN: usize = 1024 * 1024 + 256 * 1024;
    let codec = EntryCodec::new(SECRET);
    let mut group = c.benchmark_group("entry");
    for (name, body_len) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let entry = stored_response(body_len);
        let bytes = codec.encode(&entry);
        assert_eq!(codec.decode(&bytes, MAX_LEN).as_ref(), Ok(&entry));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", name), &entry, |b, entry| {
            b.iter(|| codec.encode(black_box(entry)))
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &bytes, |b, bytes| {
            b.iter(|| codec.decode(black_box(bytes), MAX_LEN))
        });
    }
    #[cfg(feature = "compression")]
    compressed_entries(&mut group, MAX_LEN);
    group.finish();
}

/// A JSON body of about `len` bytes: a list of items that differ in their ids and prices, the
/// way an API's list responses do.
#[cfg(feature = "compression")]
fn json_body(len: usize) -> Vec<u8> {
    let mut body = b"[".to_vec();
    let mut id = 0u64;
    while body.len() < len {
        id += 1;
        let item = format!(
            r#"{{"id":{},"sku":"SKU-{:08}","name":"Item number {}","price":{}.{:02},"in_stock":{},"tags":["shop","item","{}"]}},"#,
            id * 7919,
            id * 104_729 % 100_000_000,
            id,
            id * 37 % 500,
            id * 13 % 100,
            id % 3 == 0,
            id % 17
        );
        body.extend_from_slice(item.as_bytes());
    }
    body.truncate(len);
    body
}

/// Encode and decode with LZ4 compression (`--features compression`), on JSON bodies; prints
/// the stored sizes.
#[cfg(feature = "compression")]
fn compressed_entries(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    max_len: usize,
) {
    let plain = EntryCodec::new(SECRET);
    let codec = EntryCodec::new(SECRET).compress_above(1024);
    for (name, body_len) in [("json-4KiB", 4 * 1024), ("json-64KiB", 64 * 1024)] {
        let StoredEntry::Response(mut response) = stored_response(body_len) else {
            unreachable!("stored_response makes a response");
        };
        response.body = Bytes::from(json_body(body_len));
        let entry = StoredEntry::Response(response);
        let bytes = codec.encode(&entry);
        let uncompressed = plain.encode(&entry);
        assert_eq!(codec.decode(&bytes, max_len).as_ref(), Ok(&entry));
        eprintln!(
            "entry/{name}: {} bytes stored uncompressed, {} with lz4 ({:.3})",
            uncompressed.len(),
            bytes.len(),
            bytes.len() as f64 / uncompressed.len() as f64
        );
        group.throughput(Throughput::Bytes(uncompressed.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", name), &entry, |b, entry| {
            b.iter(|| plain.encode(black_box(entry)))
        });
        group.bench_with_input(
            BenchmarkId::new("decode", name),
            &uncompressed,
            |b, bytes| b.iter(|| plain.decode(black_box(bytes), max_len)),
        );
        group.bench_with_input(BenchmarkId::new("encode-lz4", name), &entry, |b, entry| {
            b.iter(|| codec.encode(black_box(entry)))
        });
        group.bench_with_input(BenchmarkId::new("decode-lz4", name), &bytes, |b, bytes| {
            b.iter(|| codec.decode(black_box(bytes), max_len))
        });
    }
}

// ---------------------------------------------------------------------------------------------
// layer
// ---------------------------------------------------------------------------------------------

mod layer {
    use std::convert::Infallible;
    use std::future::Future;

    use axum::body::Body;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Router;
    use criterion::measurement::WallTime;
    use criterion::BenchmarkGroup;
    use http::Request;
    use http_body_util::BodyExt;
    use tokio::runtime::Runtime;
    use tower::ServiceExt;

    use super::*;

    /// The origin's answer: a 1 KiB body sent as JSON, with no freshness of its own (so the layer's
    /// default TTL applies).
    static BODY: [u8; 1024] = [b'x'; 1024];

    /// The `Cache-Status` every layer response carries.
    const CACHE_STATUS: &str = "cache-status";

    pub(super) fn origin() -> Router {
        Router::new().route(
            "/items/{id}",
            get(|| async {
                (
                    [(CONTENT_TYPE, "application/json")],
                    Bytes::from_static(&BODY),
                )
                    .into_response()
            }),
        )
    }

    pub(super) fn request(path: &str) -> Request<Body> {
        Request::get(path)
            .header(HOST, "shop.example.com")
            .body(Body::empty())
            .unwrap_or_else(|err| panic!("{path}: {err}"))
    }

    /// Sends one request through `service` and reads the whole body; returns the
    /// `Cache-Status` (empty without the layer) and the body length.
    pub(super) async fn send<S, B>(service: S, request: Request<Body>) -> (String, usize)
    where
        S: tower::Service<Request<Body>, Response = http::Response<B>, Error = Infallible>,
        B: http_body::Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        let Ok(response) = service.oneshot(request).await;
        let status = response
            .headers()
            .get(CACHE_STATUS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|err| panic!("body: {err:?}"))
            .to_bytes();
        (status, body.len())
    }

    /// Waits (bounded) until the layer has written `n` entries: writes happen in the background.
    #[cfg(any(feature = "memory", feature = "redis"))]
    pub(super) async fn stored(layer: &tower_response_cache::CacheLayer, n: u64) {
        for _ in 0..5000 {
            if layer.stats().stores >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the layer never stored {n} entries: {:?}", layer.stats());
    }

    /// Runs one request before the measurement and checks that it takes the intended path.
    pub(super) fn check<F: Future<Output = (String, usize)>>(rt: &Runtime, what: &str, f: F) {
        let (status, len) = rt.block_on(f);
        assert_eq!(len, BODY.len(), "{what}: body length");
        let want = match what {
            "hit" | "hit-redis" => "trc; hit",
            "bypass" => "trc; fwd=bypass; detail=authorization",
            "miss" => "trc; fwd=miss; stored",
            _ => "",
        };
        assert!(status.starts_with(want), "{what}: cache-status {status:?}");
    }

    pub(super) fn no_cache(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, app: &Router) {
        check(rt, "no-cache", send(app.clone(), request("/items/1")));
        group.bench_function("no-cache", |b| {
            b.to_async(rt)
                .iter(|| send(app.clone(), request("/items/1")))
        });
    }

    #[cfg(feature = "memory")]
    pub(super) fn memory(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, app: &Router) {
        use futures_util::future::join_all;
        use http::header::AUTHORIZATION;
        use tower::Layer;
        use tower_response_cache::{CacheLayer, MemoryStore};

        let layer = CacheLayer::new(MemoryStore::new());
        let cached = layer.layer(app.clone());
        let cached = &cached;

        // (a) hit: warm the entry, then read it again and again.
        rt.block_on(async {
            send(cached.clone(), request("/items/1")).await;
            stored(&layer, 1).await;
        });
        check(rt, "hit", send(cached.clone(), request("/items/1")));
        group.bench_function("hit", |b| {
            b.to_async(rt)
                .iter(|| send(cached.clone(), request("/items/1")))
        });

        // (b) bypass: an authenticated request goes straight to the origin.
        let authorized = || {
            let mut request = request("/items/1");
            request
                .headers_mut()
                .insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
            request
        };
        check(rt, "bypass", send(cached.clone(), authorized()));
        group.bench_function("bypass", |b| {
            b.to_async(rt).iter(|| send(cached.clone(), authorized()))
        });

        // (d) miss: a new path every time, so a cold lookup, the flight (as its leader), the fill
        // task, the forwarded body and the background write.
        check(
            rt,
            "miss",
            send(cached.clone(), request("/items/first-miss")),
        );
        let mut n = 0u64;
        group.bench_function("miss", |b| {
            b.to_async(rt).iter(|| {
                n += 1;
                send(cached.clone(), request(&format!("/items/m{n}")))
            })
        });

        // (d') eight concurrent misses on one new path: one leader fills, seven followers are
        // answered from its stored copy.
        let batch = |n: u64| {
            let path = format!("/items/c{n}");
            join_all((0..8).map(move |_| send(cached.clone(), request(&path))))
        };
        let before = layer.stats().collapsed;
        let statuses = rt.block_on(batch(0));
        assert!(
            statuses.iter().all(|(_, len)| *len == BODY.len()),
            "{statuses:?}"
        );
        assert_eq!(layer.stats().collapsed - before, 7, "{statuses:?}");
        let mut n = 0u64;
        group.bench_function("miss-coalesced-8", |b| {
            b.to_async(rt).iter(|| {
                n += 1;
                batch(n)
            })
        });

        let stats = layer.stats();
        assert_eq!(stats.store_errors, 0, "{stats:?}");
    }

    #[cfg(feature = "redis")]
    pub(super) fn redis_store(
        group: &mut BenchmarkGroup<'_, WallTime>,
        rt: &Runtime,
        app: &Router,
    ) {
        use redis::aio::ConnectionManager;
        use tower::Layer;
        use tower_response_cache::{CacheLayer, RedisStore};

        let server = super::redis_server::RedisServer::start();

        // (e) hit-redis.
        let layer = rt.block_on(async {
            let store = RedisStore::from_url(&server.url())
                .unwrap_or_else(|err| panic!("redis store: {err}"));
            // Deadlines a loaded machine (or a run under valgrind) still meets: a timed-out
            // read would measure a bypass instead of a hit.
            CacheLayer::new(store)
                .read_deadline(std::time::Duration::from_secs(1))
                .write_deadline(std::time::Duration::from_secs(1))
        });
        let cached = layer.layer(app.clone());
        let cached = &cached;
        rt.block_on(async {
            send(cached.clone(), request("/items/1")).await;
            stored(&layer, 1).await;
        });
        check(rt, "hit-redis", send(cached.clone(), request("/items/1")));
        group.bench_function("hit-redis", |b| {
            b.to_async(rt)
                .iter(|| send(cached.clone(), request("/items/1")))
        });
        // A store error would have turned hits into bypasses and made the numbers meaningless.
        let stats = layer.stats();
        assert_eq!(stats.store_errors, 0, "{stats:?}");

        // (f) redis-get-floor: what the store itself does per hit, a GET of about the same size.
        let connection = rt.block_on(async {
            let client = redis::Client::open(server.url())
                .unwrap_or_else(|err| panic!("redis client: {err}"));
            let mut connection = ConnectionManager::new(client)
                .await
                .unwrap_or_else(|err| panic!("redis connection: {err}"));
            redis::cmd("SET")
                .arg("bench:floor")
                .arg(&BODY[..])
                .query_async::<()>(&mut connection)
                .await
                .unwrap_or_else(|err| panic!("SET: {err}"));
            connection
        });
        let connection = &connection;
        let get = || async move {
            let mut connection = connection.clone();
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg("bench:floor")
                .query_async(&mut connection)
                .await
                .unwrap_or_else(|err| panic!("GET: {err}"));
            value.map(Bytes::from)
        };
        assert_eq!(
            rt.block_on(get()).as_deref(),
            Some(&BODY[..]),
            "floor value"
        );
        group.bench_function("redis-get-floor", |b| b.to_async(rt).iter(get));

        drop(server);
    }
}

#[cfg(feature = "redis")]
mod redis_server {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A throw-away redis-server on a free loopback port, killed when dropped.
    pub(super) struct RedisServer {
        child: Child,
        port: u16,
    }

    impl RedisServer {
        pub(super) fn start() -> Self {
            // The free port can be taken between probing and binding: try a few.
            for _ in 0..5 {
                let port = free_port();
                let mut child = match Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                {
                    Ok(child) => child,
                    Err(err) if err.kind() == ErrorKind::NotFound => panic!(
                        "redis-server is not installed; the Redis benchmarks need it: \
                         apt-get install -y redis-server"
                    ),
                    Err(err) => panic!("cannot start redis-server: {err}"),
                };
                if answers_ping(&mut child, port) {
                    return RedisServer { child, port };
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!("redis-server did not answer PING on a free port after 5 attempts");
        }

        pub(super) fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .unwrap_or_else(|err| panic!("no free loopback port: {err}"))
    }

    /// Polls the server for up to 10 s; false if it exits or never answers `+PONG`.
    fn answers_ping(child: &mut Child, port: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if ping(port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn ping(port: u16) -> bool {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

fn layer(c: &mut Criterion) {
    // One thread drives the request, the fill task, the background writes and the Redis
    // connection, so the numbers are CPU cost plus (for Redis) loopback round trips, without
    // cross-thread wake-ups.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("tokio runtime: {err}"));
    let app = layer::origin();
    let mut group = c.benchmark_group("layer");
    #[cfg(feature = "memory")]
    layer::memory(&mut group, &rt, &app);
    layer::no_cache(&mut group, &rt, &app);
    #[cfg(feature = "redis")]
    layer::redis_store(&mut group, &rt, &app);
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = key, entry, layer
}
criterion_main!(benches);

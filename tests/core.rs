//! The core behaviour end to end: a real Axum app behind the layer, real HTTP over TCP, and a
//! private redis-server per test.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::origin::{app, eventually, serve, sized_body, Calls, HttpClient};
use support::redis_server::RedisServer;
use tower_response_cache::{CacheLayer, MemoryStore, RedisStore, Route};

async fn start(layer: CacheLayer) -> (HttpClient, Calls) {
    let calls = Calls::default();
    let addr = serve(app(calls.clone()).layer(layer)).await;
    (HttpClient::new(addr), calls)
}

/// A layer on `redis` with deadlines generous enough for a loaded machine, so that a slow
/// store never looks like a bypass; the tests about deadlines set their own.
fn redis_layer(redis: &RedisServer) -> CacheLayer {
    CacheLayer::new(RedisStore::from_url(&redis.url()).unwrap())
        .jitter(0.0)
        .read_deadline(Duration::from_secs(2))
        .write_deadline(Duration::from_secs(2))
}

fn memory_layer() -> CacheLayer {
    CacheLayer::new(MemoryStore::new()).jitter(0.0)
}

/// Wait until the layer has written `n` entries (writes happen in the background).
async fn stored(layer: &CacheLayer, n: u64) {
    assert!(
        eventually(|| layer.stats().stores >= n).await,
        "expected {n} stores, stats: {:?}",
        layer.stats()
    );
}

#[tokio::test]
async fn a_miss_then_a_hit_calls_the_origin_once_on_redis() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis);
    let (client, calls) = start(layer.clone()).await;
    let first = client.get("/items/1").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache_status(), "trc; fwd=miss; stored; ttl=300");
    stored(&layer, 1).await;
    let second = client.get("/items/1").await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!(second.body, first.body);
    assert_eq!(calls.of("/items/1"), 1);
    assert_eq!(layer.stats().hits, 1);
    assert_eq!(layer.stats().misses, 1);
}

#[tokio::test]
async fn the_memory_store_caches_the_same_way() {
    let layer = memory_layer();
    let (client, calls) = start(layer.clone()).await;
    let first = client.get("/items/1").await;
    stored(&layer, 1).await;
    let second = client.get("/items/1").await;
    assert!(second.is_hit());
    assert_eq!(second.body, first.body);
    assert_eq!(calls.of("/items/1"), 1);
}

#[tokio::test]
async fn query_order_variants_share_an_entry_and_path_case_variants_do_not() {
    let layer = memory_layer();
    let (client, calls) = start(layer.clone()).await;
    let first = client.get("/search?a=1&b=2").await;
    stored(&layer, 1).await;
    let reordered = client.get("/search?b=2&a=1").await;
    assert!(reordered.is_hit(), "{}", reordered.cache_status());
    assert_eq!(reordered.body, first.body);
    assert_eq!(calls.of("/search"), 1);

    // Repeated names keep their order; different order is a different request.
    client.get("/search?a=1&a=2").await;
    let swapped = client.get("/search?a=2&a=1").await;
    assert!(!swapped.is_hit());
    assert_eq!(calls.of("/search"), 3);

    client.get("/Search").await;
    client.get("/search").await;
    assert_eq!(calls.of("/Search"), 1);
    assert_eq!(calls.of("/search"), 4);
    stored(&layer, 5).await;
    let upper = client.get("/Search").await;
    assert!(upper.is_hit());
    assert!(upper.text().contains("path=/Search"), "{}", upper.text());
}

#[tokio::test]
async fn every_bypass_reason_goes_to_the_origin_every_time() {
    let layer = memory_layer().route(Route::prefix("/private").bypass());
    let (client, calls) = start(layer.clone()).await;
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/auth",
            vec![("authorization", "Bearer x")],
            "",
            "authorization",
        ),
        (
            "GET",
            "/cookie",
            vec![("cookie", "session=1")],
            "",
            "cookie",
        ),
        ("POST", "/post", vec![], "", "method"),
        ("DELETE", "/delete", vec![], "", "method"),
        ("GET", "/fat", vec![], "body", "request-body"),
        (
            "GET",
            "/nostore",
            vec![("cache-control", "no-store")],
            "",
            "request-no-store",
        ),
        (
            "GET",
            "/xfh",
            vec![("x-forwarded-host", "evil.example")],
            "",
            "unkeyed-header",
        ),
        (
            "GET",
            "/xou",
            vec![("x-original-url", "/admin")],
            "",
            "unkeyed-header",
        ),
        (
            "GET",
            "/hmo",
            vec![("x-http-method-override", "DELETE")],
            "",
            "unkeyed-header",
        ),
        ("GET", "/range", vec![("range", "bytes=0-1")], "", "range"),
        ("GET", "/private/x", vec![], "", "route"),
        ("GET", "/a/%2e%2e/b", vec![], "", "dot-segment"),
        ("GET", "/a%2Fb", vec![], "", "encoded-slash"),
        ("GET", "/a%00", vec![], "", "nul"),
        ("GET", "/a%zz", vec![], "", "invalid-escape"),
    ];
    for (method, path, headers, body, detail) in &cases {
        for _ in 0..2 {
            let got = client
                .send(method, path, headers, Bytes::from(body.to_string()))
                .await;
            let status = got.cache_status();
            assert!(
                status.starts_with("trc; fwd=bypass"),
                "{method} {path}: {status}"
            );
            assert!(
                status.ends_with(&format!("detail={detail}")),
                "{method} {path}: {status}"
            );
        }
    }
    assert_eq!(calls.total(), 2 * cases.len() as u64);
    let stats = layer.stats();
    assert_eq!(stats.hits, 0);
    assert_eq!(stats.stores, 0);
    assert_eq!(stats.bypasses, 2 * cases.len() as u64);
}

#[tokio::test]
async fn responses_that_must_not_be_shared_are_never_stored() {
    let layer = memory_layer().max_body_size(64 * 1024);
    let (client, calls) = start(layer.clone()).await;
    let cases = [
        ("/cookie?cookie=1", "set-cookie"),
        ("/private?cc=private", "private"),
        ("/qprivate?cc=private%3D%22x%22", "private"),
        ("/nostore?cc=no-store", "no-store"),
        ("/error?status=500", "status"),
        ("/unavailable?status=503&cc=max-age%3D60", "status"),
        ("/toomany?status=429&cc=max-age%3D60", "status"),
        ("/vary?vary=*", "vary-star"),
        ("/sse?sse=1", "event-stream"),
    ];
    for (path, detail) in cases {
        for _ in 0..2 {
            let got = client.get(path).await;
            let status = got.cache_status();
            assert!(status.starts_with("trc; fwd=miss"), "{path}: {status}");
            assert!(status.contains(detail), "{path}: {status} (want {detail})");
        }
    }
    // Too large: streamed whole to the client, never stored.
    for _ in 0..2 {
        let got = client.get("/big?size=200000").await;
        assert_eq!(got.body.as_ref(), sized_body(200_000).as_slice());
        assert!(!got.is_hit());
    }
    assert_eq!(calls.total(), 2 * cases.len() as u64 + 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(layer.stats().stores, 0);
    assert_eq!(layer.stats().hits, 0);
}

#[tokio::test]
async fn a_body_within_the_limit_streamed_without_length_is_stored_byte_exact() {
    let layer = memory_layer();
    let (client, calls) = start(layer.clone()).await;
    let first = client.get("/blob?size=300000").await;
    assert_eq!(first.body.as_ref(), sized_body(300_000).as_slice());
    stored(&layer, 1).await;
    let second = client.get("/blob?size=300000").await;
    assert!(second.is_hit());
    assert_eq!(second.body, first.body);
    assert_eq!(calls.total(), 1);
}

#[tokio::test]
async fn age_counts_time_in_the_cache_and_cache_status_tells_the_ttl() {
    let layer = memory_layer();
    let (client, _calls) = start(layer.clone()).await;
    let miss = client.get("/aged?cc=max-age%3D60").await;
    assert_eq!(miss.cache_status(), "trc; fwd=miss; stored; ttl=60");
    assert!(miss.headers.get("age").is_none());
    stored(&layer, 1).await;
    let hit = client.get("/aged?cc=max-age%3D60").await;
    assert_eq!(hit.headers["age"], "0");
    assert_eq!(hit.cache_status(), "trc; hit; ttl=60");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = client.get("/aged?cc=max-age%3D60").await;
    let age: u64 = later.headers["age"].to_str().unwrap().parse().unwrap();
    assert!((2..=3).contains(&age), "age {age}");
    assert!(later.cache_status().starts_with("trc; hit; ttl=5"));
}

#[tokio::test]
async fn ttl_comes_from_headers_then_route_then_default() {
    let layer = memory_layer()
        .default_ttl(Duration::from_secs(30))
        .route(Route::template("/users/{id}").ttl(Duration::from_secs(120)));
    let (client, _calls) = start(layer).await;
    let default = client.get("/other").await;
    assert!(
        default.cache_status().ends_with("ttl=30"),
        "{}",
        default.cache_status()
    );
    let route = client.get("/users/7").await;
    assert!(
        route.cache_status().ends_with("ttl=120"),
        "{}",
        route.cache_status()
    );
    let header = client
        .get("/users/8?cc=s-maxage%3D45%2C%20max-age%3D10")
        .await;
    assert!(
        header.cache_status().ends_with("ttl=45"),
        "{}",
        header.cache_status()
    );
    let clamped = client.get("/users/9?cc=max-age%3D999999").await;
    assert!(
        clamped.cache_status().ends_with("ttl=86400"),
        "{}",
        clamped.cache_status()
    );
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get_without_a_body() {
    let layer = memory_layer();
    let (client, calls) = start(layer.clone()).await;
    let get = client.get("/page").await;
    stored(&layer, 1).await;
    let head = client.send("HEAD", "/page", &[], Bytes::new()).await;
    assert!(head.is_hit(), "{}", head.cache_status());
    assert!(head.body.is_empty());
    assert_eq!(head.headers["content-length"], get.body.len().to_string());
    assert_eq!(calls.of("/page"), 1);
    // A HEAD miss is passed through and never answers a later GET.
    let head_first = client.send("HEAD", "/fresh", &[], Bytes::new()).await;
    assert!(!head_first.is_hit());
    let get_after = client.get("/fresh").await;
    assert!(!get_after.is_hit());
    assert!(!get_after.body.is_empty());
    assert_eq!(calls.of("/fresh"), 2);
}

/// A stale HEAD is answered from the entry but never refreshes it: its response has no body to
/// store, and a body-less entry must never answer a GET.
#[tokio::test]
async fn a_stale_head_is_answered_without_a_refresh_and_the_next_get_refreshes() {
    let layer = memory_layer();
    let (client, calls) = start(layer.clone()).await;
    let url = "/swr?cc=max-age%3D1%2C+stale-while-revalidate%3D60";
    let get = client.get(url).await;
    stored(&layer, 1).await;
    // Past its freshness, inside the stale-while-revalidate window.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let head = client.send("HEAD", url, &[], Bytes::new()).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(
        head.cache_status().contains("stale-while-revalidate"),
        "{}",
        head.cache_status()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls.of("/swr"), 1, "the HEAD started a refresh");
    let stale_get = client.get(url).await;
    assert_eq!(stale_get.body, get.body);
    assert!(
        eventually(|| calls.of("/swr") == 2).await,
        "the GET did not refresh"
    );
    let fresh = client.get(url).await;
    assert!(!fresh.body.is_empty());
    assert!(fresh.text().contains("path=/swr"), "{}", fresh.text());
}

#[tokio::test]
async fn only_if_cached_gets_504_on_a_miss_and_the_entry_on_a_hit() {
    let layer = memory_layer();
    let (client, calls) = start(layer.clone()).await;
    let miss = client
        .get_with("/oic", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(miss.status, 504);
    assert_eq!(calls.of("/oic"), 0);
    client.get("/oic").await;
    stored(&layer, 1).await;
    let hit = client
        .get_with("/oic", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(hit.status, 200);
    assert!(hit.is_hit());
}

#[tokio::test]
async fn client_no_cache_is_ignored_unless_configured() {
    let layer = memory_layer();
    let (client, calls) = start(layer.clone()).await;
    client.get("/nc").await;
    stored(&layer, 1).await;
    let ignored = client
        .get_with("/nc", &[("cache-control", "no-cache")])
        .await;
    assert!(ignored.is_hit());
    assert_eq!(calls.of("/nc"), 1);

    let honouring = memory_layer().honour_client_no_cache(true);
    let (client, calls) = start(honouring.clone()).await;
    client.get("/nc").await;
    stored(&honouring, 1).await;
    let forced = client
        .get_with("/nc", &[("cache-control", "no-cache")])
        .await;
    assert!(!forced.is_hit());
    assert_eq!(calls.of("/nc"), 2);
}

#[tokio::test]
async fn responses_are_stored_per_variant_of_their_vary_headers() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis);
    let (client, calls) = start(layer.clone()).await;
    let path = "/greeting?vary=accept-language&reflect=accept-language";
    let en = client.get_with(path, &[("accept-language", "en")]).await;
    stored(&layer, 1).await;
    let fr = client.get_with(path, &[("accept-language", "fr")]).await;
    assert!(!fr.is_hit());
    stored(&layer, 2).await;
    let none = client.get(path).await;
    assert!(!none.is_hit());
    stored(&layer, 3).await;
    let en_again = client.get_with(path, &[("accept-language", "en")]).await;
    let fr_again = client.get_with(path, &[("accept-language", "fr")]).await;
    let none_again = client.get(path).await;
    assert!(en_again.is_hit() && fr_again.is_hit() && none_again.is_hit());
    assert!(en_again.text().contains("accept-language=en"));
    assert!(fr_again.text().contains("accept-language=fr"));
    assert!(none_again.text().contains("accept-language=-"));
    assert_eq!(en_again.body, en.body);
    assert_eq!(calls.of("/greeting"), 3);
}

#[tokio::test]
async fn every_key_in_redis_has_a_ttl_and_no_readable_request_data() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis);
    let (client, _calls) = start(layer.clone()).await;
    client
        .get("/secret-marker-path?token=secret-marker-query")
        .await;
    client
        .get_with("/v?vary=x-marker", &[("x-marker", "secret-marker-header")])
        .await;
    client.get("/plain").await;
    stored(&layer, 3).await;
    let keys = redis.keys("*");
    assert!(keys.len() >= 4, "{keys:?}");
    for key in &keys {
        assert!(!key.contains("secret-marker"), "{key}");
        assert!(key.starts_with("trc:v1:{"), "{key}");
        let ttl = redis.ttl(key);
        assert!(ttl > 0 && ttl <= 86_400, "{key} has ttl {ttl}");
    }
}

#[tokio::test]
async fn planted_bad_entries_are_misses_and_are_deleted() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis);
    let (client, calls) = start(layer.clone()).await;
    client.get("/victim").await;
    client.get("/other").await;
    stored(&layer, 2).await;
    // The entries (the fills' locks may still be on their way out).
    let keys: Vec<String> = redis
        .keys("trc:*")
        .into_iter()
        .filter(|key| key.contains(":e:"))
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let victim_key = keys
        .iter()
        .find(|k| {
            redis
                .get(k)
                .is_some_and(|v| String::from_utf8_lossy(&v).contains("path=/victim"))
        })
        .unwrap()
        .clone();
    let other_key = keys.iter().find(|k| **k != victim_key).unwrap().clone();
    let good = redis.get(&victim_key).unwrap();
    let foreign = redis.get(&other_key).unwrap();

    let plants: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        good[..good.len() / 2].to_vec(),
        {
            let mut flipped = good.clone();
            let middle = flipped.len() / 2;
            flipped[middle] ^= 0x01;
            flipped
        },
        foreign,
    ];
    for (i, plant) in plants.iter().enumerate() {
        redis.set_raw(&victim_key, plant);
        let got = client.get("/victim").await;
        assert!(!got.is_hit(), "plant {i} was served");
        assert!(
            got.text().contains("path=/victim"),
            "plant {i}: {}",
            got.text()
        );
        assert_eq!(calls.of("/victim"), 2 + i as u64);
        // The bad value is deleted, then the fill writes a good one again.
        assert!(
            eventually(|| redis.get(&victim_key).is_some_and(|v| v != *plant)).await,
            "plant {i} was not replaced"
        );
    }
    // A value of the wrong type is a miss too.
    redis.cmd_str(&["DEL", &victim_key]);
    redis.cmd_str(&["HSET", &victim_key, "a", "b"]);
    let got = client.get("/victim").await;
    assert!(!got.is_hit());
    assert_eq!(got.status, 200);
    let stats = layer.stats();
    assert!(stats.decode_errors >= 3, "{stats:?}");
    assert!(stats.foreign_entries >= 1, "{stats:?}");
}

#[tokio::test]
async fn redis_killed_mid_test_is_invisible_and_caching_resumes_after_restart() {
    let mut redis = RedisServer::start();
    let layer = redis_layer(&redis).breaker(3, Duration::from_millis(200));
    let (client, calls) = start(layer.clone()).await;
    client.get("/k").await;
    stored(&layer, 1).await;
    assert!(client.get("/k").await.is_hit());

    redis.kill();
    for i in 0..20 {
        let got = client.get(&format!("/down/{i}")).await;
        assert_eq!(got.status, 200);
        assert!(got.text().contains(&format!("path=/down/{i}")));
    }
    assert_eq!(calls.total(), 21);
    assert!(layer.stats().store_errors > 0);

    redis.restart();
    // Caching resumes, driven by requests: keep asking until one is stored and then served.
    let mut hit = false;
    for _ in 0..100 {
        client.get("/after").await;
        if client.get("/after").await.is_hit() {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hit, "caching did not resume: {:?}", layer.stats());
}

#[tokio::test]
async fn a_paused_redis_costs_at_most_the_deadline_and_is_bypassed() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis).read_deadline(Duration::from_millis(20));
    let (client, calls) = start(layer.clone()).await;
    client.get("/warm").await;
    stored(&layer, 1).await;
    redis.pause();
    for i in 0..10 {
        let got = client.get(&format!("/paused/{i}")).await;
        assert_eq!(got.status, 200);
        assert!(got.text().contains(&format!("path=/paused/{i}")));
    }
    redis.resume();
    assert_eq!(calls.total(), 11);
    let stats = layer.stats();
    assert!(
        stats.store_errors_by["timeout"] + stats.store_errors_by["breaker-open"] >= 10,
        "{stats:?}"
    );
}

/// Redis stalls while a fill is running: the requests whose reads then miss the deadline do not
/// each call the origin, they follow the fill in flight and get its response.
#[tokio::test]
async fn requests_whose_reads_time_out_follow_the_fill_in_flight() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis)
        .read_deadline(Duration::from_millis(100))
        .lock_wait(Duration::from_secs(20));
    let (client, calls) = start(layer.clone()).await;
    let url = "/stall?delay=1500";
    let leader = {
        let client = client.clone();
        tokio::spawn(async move { client.get(url).await })
    };
    // The leader has read the store, taken the fill lock and is in its origin call.
    assert!(
        eventually(|| calls.total() == 1).await,
        "{:?}",
        layer.stats()
    );
    redis.pause();
    let followers: Vec<_> = (0..5)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get(url).await })
        })
        .collect();
    let mut answers = Vec::new();
    for follower in followers {
        answers.push(follower.await.unwrap());
    }
    redis.resume();
    let leader = leader.await.unwrap();
    assert_eq!(leader.status, 200);
    assert_eq!(calls.total(), 1, "{:?}", layer.stats());
    for got in answers {
        assert_eq!(got.status, 200);
        assert_eq!(got.body, leader.body);
        assert!(
            got.cache_status().contains("collapsed"),
            "{}",
            got.cache_status()
        );
    }
    let stats = layer.stats();
    assert!(stats.collapsed >= 5, "{stats:?}");
    assert!(stats.store_errors >= 5, "{stats:?}");
}

/// With compression on, a large body is kept compressed in Redis and comes back byte-exact.
#[cfg(feature = "compression")]
#[tokio::test]
async fn large_bodies_are_stored_compressed_and_served_byte_exact() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis).compress_above(1024);
    let (client, calls) = start(layer.clone()).await;
    let miss = client.get("/big?size=65536").await;
    assert_eq!(miss.body.len(), 65536);
    stored(&layer, 1).await;
    let hit = client.get("/big?size=65536").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.body, miss.body);
    assert_eq!(calls.total(), 1);
    let entries: Vec<String> = redis
        .keys("trc:*")
        .into_iter()
        .filter(|key| key.contains(":e:"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let stored = redis.get(&entries[0]).unwrap();
    assert!(stored.len() < 65536 / 4, "{} bytes stored", stored.len());
}

#[tokio::test]
async fn the_app_starts_and_serves_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let layer = CacheLayer::new(RedisStore::from_url(&url).unwrap());
    let (client, calls) = start(layer.clone()).await;
    for _ in 0..3 {
        let got = client.get("/up").await;
        assert_eq!(got.status, 200);
        assert!(got.cache_status().contains("detail=store-unavailable") || !got.is_hit());
    }
    assert_eq!(calls.of("/up"), 3);
    assert!(layer.ping().await.is_err());
}

#[tokio::test]
async fn ping_reports_a_healthy_store() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis);
    layer.ping().await.unwrap();
    memory_layer().ping().await.unwrap();
}

#[tokio::test]
async fn concurrent_misses_for_one_key_call_the_origin_once() {
    let redis = RedisServer::start();
    // A generous read deadline: this test is about coalescing, not about a slow store.
    for layer in [memory_layer(), redis_layer(&redis)] {
        let layer = layer.read_deadline(Duration::from_secs(2));
        let (client, calls) = start(layer.clone()).await;
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.get("/slow?delay=300").await })
            })
            .collect();
        let mut bodies = Vec::new();
        for task in tasks {
            bodies.push(task.await.unwrap());
        }
        assert_eq!(calls.of("/slow"), 1, "{:?}", layer.stats());
        assert!(bodies.iter().all(|b| b.body == bodies[0].body));
        let collapsed = bodies
            .iter()
            .filter(|b| b.cache_status().contains("collapsed"))
            .count();
        assert_eq!(collapsed, 99);
        assert_eq!(layer.stats().collapsed, 99);
    }
}

#[tokio::test]
async fn namespace_and_version_shape_the_keys() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis).namespace("shop").version("v7");
    let (client, _calls) = start(layer.clone()).await;
    client.get("/x").await;
    stored(&layer, 1).await;
    let keys = redis.keys("*");
    assert_eq!(keys.len(), 1);
    assert!(keys[0].starts_with("shop:v7:{"), "{keys:?}");
    assert!(keys[0].contains("}:e:"), "{keys:?}");
}

#[tokio::test]
async fn query_shaping_shares_entries_and_key_caps_stop_new_variants() {
    let layer = memory_layer()
        .route(Route::prefix("/articles").query_drop(&["utm_*"]))
        .route(Route::exact("/faq").normalise_param("q"))
        .route(Route::exact("/search").max_keys(2));
    let (client, calls) = start(layer.clone()).await;

    client.get("/articles/1?id=7&utm_source=news").await;
    stored(&layer, 1).await;
    let shaped = client.get("/articles/1?utm_campaign=x&id=7").await;
    assert!(shaped.is_hit(), "{}", shaped.cache_status());
    assert!(!client.get("/articles/1?id=8").await.is_hit());
    // Dropping parameters makes `;` ambiguous: such queries are not keyed at all.
    let cloaked = client.get("/articles/1?id=7;utm_source=x").await;
    assert!(cloaked.cache_status().ends_with("detail=query-separator"));

    client
        .get("/faq?q=How%20do%20I%20open%20an%20account%3F")
        .await;
    stored(&layer, 3).await;
    let folded = client.get("/faq?q=how+do+i++open+an+account%3F").await;
    assert!(folded.is_hit(), "{}", folded.cache_status());
    assert_eq!(calls.of("/faq"), 1);

    for q in ["a", "b", "c"] {
        client.get(&format!("/search?q={q}")).await;
    }
    let capped = client.get("/search?q=c").await;
    assert!(!capped.is_hit());
    assert!(
        capped.cache_status().contains("detail=key-cap"),
        "{}",
        capped.cache_status()
    );
    assert!(client.get("/search?q=a").await.is_hit());
    assert_eq!(layer.stats().not_stored_by["key-cap"], 2);
}

#[tokio::test]
async fn per_principal_routes_keep_one_entry_per_principal() {
    let layer = memory_layer()
        .route(Route::prefix("/me").per_principal())
        .principal(|headers| {
            let value = headers.get("authorization")?.to_str().ok()?;
            value.strip_prefix("Bearer ").map(str::to_owned)
        });
    let (client, calls) = start(layer.clone()).await;
    let path = "/me/profile?cc=private%2C%20max-age%3D60&reflect=authorization";
    let alice = client
        .get_with(path, &[("authorization", "Bearer alice")])
        .await;
    stored(&layer, 1).await;
    let bob = client
        .get_with(path, &[("authorization", "Bearer bob")])
        .await;
    assert!(!bob.is_hit());
    assert!(bob.text().contains("Bearer bob"));
    stored(&layer, 2).await;
    let alice_again = client
        .get_with(path, &[("authorization", "Bearer alice")])
        .await;
    assert!(alice_again.is_hit(), "{}", alice_again.cache_status());
    assert_eq!(alice_again.body, alice.body);
    // No principal the hook can name: bypass. Anonymous requests have their own entry.
    let basic = client
        .get_with(path, &[("authorization", "Basic eA==")])
        .await;
    assert!(basic.cache_status().contains("fwd=bypass"));
    let anonymous = client.get(path).await;
    assert!(!anonymous.is_hit());
    assert!(anonymous.cache_status().contains("detail=private"));
    assert_eq!(calls.of("/me/profile"), 4);
}

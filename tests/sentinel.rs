//! The cache on a Sentinel-managed Redis (a primary, a replica and three sentinels, started by
//! the test): hits and misses on the primary the sentinels name, and a failover under load
//! that no client notices, after which caching resumes on the new primary by itself.
#![cfg(feature = "sentinel")]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::origin::{app, eventually, serve, Calls, Got, HttpClient};
use support::redis_sentinel::{RedisSentinelSet, MASTER};
use tower_response_cache::key::KeyDeriver;
use tower_response_cache::{CacheLayer, RedisSentinelStore, DEFAULT_NAMESPACE};

const SECRET: &[u8] = b"the sentinel tests' own key secret, long enough";

/// How long the failover and the return of caching may take on a loaded machine.
const RECOVERY: Duration = Duration::from_secs(20);

/// Run the fixture's blocking calls without stalling the runtime's other tasks.
fn blocking<T>(call: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(call)
}

/// The key prefix `<ns>:v1:{P}` of `path`'s keys.
fn path_prefix(path: &str) -> String {
    KeyDeriver::new(SECRET, DEFAULT_NAMESPACE, "v1")
        .path_key_prefix(path)
        .unwrap()
}

/// How the primary goes away.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// `SENTINEL FAILOVER`: the old primary is demoted and answers writes with `READONLY`.
    Failover,
    /// The primary crashes; the sentinels notice and promote the replica.
    Crash,
}

fn sentinel_layer(set: &RedisSentinelSet) -> CacheLayer {
    let urls = set.sentinel_urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisSentinelStore::new(&urls, MASTER).unwrap();
    CacheLayer::new(store)
        .secret(SECRET)
        .jitter(0.0)
        .read_deadline(Duration::from_secs(2))
        .write_deadline(Duration::from_secs(2))
}

/// Asks for `path` until the answer is a hit (the entry is written in the background). A hit
/// must be one of the answers the origin gave for `path` before it.
async fn hit_after_store(client: &HttpClient, path: &str, first: &Got) -> bool {
    let mut given = vec![first.body.clone()];
    for _ in 0..200 {
        let again = client.get(path).await;
        assert_eq!(again.status, 200);
        if again.is_hit() {
            assert!(
                given.contains(&again.body),
                "a cached answer is one the origin gave: {}",
                again.text()
            );
            return true;
        }
        given.push(again.body);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[test]
fn a_sentinel_store_is_built_without_any_sentinel_running() {
    let store = RedisSentinelStore::new(&["redis://127.0.0.1:1"], MASTER).unwrap();
    assert_eq!(store.master(), MASTER);
    assert!(RedisSentinelStore::new(&[], MASTER).is_err());
    assert!(RedisSentinelStore::new(&["not a url"], MASTER).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_bypass_while_no_sentinel_answers() {
    // Nothing listens on the sentinel's port: every request reaches the origin.
    let store = RedisSentinelStore::new(&["redis://127.0.0.1:1"], MASTER).unwrap();
    let layer = CacheLayer::new(store).secret(SECRET);
    let calls = Calls::default();
    let client = HttpClient::new(serve(app(calls.clone()).layer(layer)).await);
    for n in 1..=3 {
        let got = client.get("/nobody?cc=max-age=60").await;
        assert_eq!(got.status, 200);
        assert!(!got.is_hit(), "{}", got.cache_status());
        assert!(got.text().ends_with(&format!("call={n}")), "{}", got.text());
    }
    assert_eq!(calls.of("/nobody"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_follows_the_primary_through_a_sentinel_failover() {
    survive(Outage::Failover).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_follows_the_primary_after_it_crashes() {
    survive(Outage::Crash).await;
}

/// Miss and hit, then `outage` under a request loop: no request fails or gets a wrong body,
/// and caching resumes on the new primary with the same app.
async fn survive(outage: Outage) {
    let mut set = blocking(RedisSentinelSet::start);
    let layer = sentinel_layer(&set);
    let calls = Calls::default();
    let client = HttpClient::new(serve(app(calls.clone()).layer(layer.clone())).await);

    // Miss, then hit, on the primary the sentinels name.
    let first = client.get("/before?cc=max-age=60").await;
    assert_eq!(first.status, 200);
    assert!(!first.is_hit(), "{}", first.cache_status());
    assert!(
        hit_after_store(&client, "/before?cc=max-age=60", &first).await,
        "the first primary never served a hit"
    );
    assert_eq!(calls.of("/before"), 1);
    let old = blocking(|| set.primary_port()).expect("the sentinels name a primary");
    assert!(
        !blocking(|| set
            .server(old)
            .keys(&format!("{}*", path_prefix("/before"))))
        .is_empty(),
        "the entry is on the primary"
    );

    // A client loop of hits and misses runs through the failover.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn({
        let client = client.clone();
        let stop = Arc::clone(&stop);
        let sent = Arc::clone(&sent);
        let before = first.body.clone();
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let hit = client.get("/before?cc=max-age=60").await;
                assert_eq!(hit.status, 200, "{}", hit.cache_status());
                // Served from the cache or, while it is away, by the origin: never wrong.
                assert!(
                    hit.body == before || hit.text().starts_with("path=/before "),
                    "{}",
                    hit.text()
                );
                let path = format!("/during?cc=max-age=60&n={n}");
                let miss = client.get(&path).await;
                assert_eq!(miss.status, 200, "{}", miss.cache_status());
                assert!(
                    miss.text()
                        .starts_with(&format!("path=/during query=cc=max-age=60&n={n} ")),
                    "{}",
                    miss.text()
                );
                sent.fetch_add(2, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    match outage {
        Outage::Failover => blocking(|| set.failover()),
        Outage::Crash => blocking(|| set.kill(old)),
    }
    let new = blocking(|| set.wait_for_new_primary(old, RECOVERY))
        .expect("the sentinels promoted the replica");
    assert_ne!(new, old);
    if let Outage::Failover = outage {
        // Until the sentinels demote it, the old primary still takes writes.
        assert!(
            blocking(|| set.wait_for_role(old, "slave", RECOVERY)),
            "the sentinels demoted the old primary"
        );
    }

    // Caching resumes on the new primary, with the same app and layer: a fresh path is
    // stored and then served as a hit.
    let deadline = Instant::now() + RECOVERY;
    let mut resumed = false;
    let mut k = 0u32;
    let mut written = String::new();
    while !resumed && Instant::now() < deadline {
        k += 1;
        written = format!("/after-{k}");
        let path = format!("{written}?cc=max-age=60");
        let fresh = client.get(&path).await;
        assert_eq!(fresh.status, 200);
        resumed = hit_after_store(&client, &path, &fresh).await;
        if !resumed {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(resumed, "caching never resumed after the failover");

    stop.store(true, Ordering::SeqCst);
    load.await
        .expect("every request of the loop got the origin's answer");
    assert!(sent.load(Ordering::SeqCst) > 0, "the loop sent requests");

    // What was written after the failover is on the new primary, and nothing lacks an expiry.
    let server = set.server(new);
    let after = blocking(|| server.keys(&format!("{}*", path_prefix(&written))));
    assert!(!after.is_empty(), "{written} is stored on the new primary");
    let keys = blocking(|| server.keys(&format!("{DEFAULT_NAMESPACE}:*")));
    for key in &keys {
        assert!(blocking(|| server.ttl(key)) > 0, "{key} has no expiry");
    }
    assert!(
        eventually(|| layer.stats().stores >= 2).await,
        "{:?}",
        layer.stats()
    );
}

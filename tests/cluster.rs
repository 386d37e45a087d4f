//! The cache on a real Redis Cluster (three primaries, three replicas, started by the test):
//! hits and misses, purges that reach every primary and every slot, events between instances,
//! coalescing across instances, a primary that crashes under load, slots that migrate under
//! load, and the proxy example on a list of node URLs.
#![cfg(feature = "cluster")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::origin::{app, eventually, serve, Calls, Got, HttpClient};
use support::proxy_support::{upstream_app, ProxyProcess, Recorder};
use support::redis_cluster::RedisCluster;
use support::redis_server::Reply;
use tower_response_cache::key::KeyDeriver;
use tower_response_cache::{CacheLayer, RedisClusterStore};

const SECRET: &[u8] = b"the cluster tests' own key secret, long enough";

async fn start_cluster() -> RedisCluster {
    tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("the cluster fixture started")
}

/// A layer on its own connection to `cluster`, in `namespace`, with deadlines generous enough
/// for a loaded machine (so that slowness never looks like a bypass).
fn layer(cluster: &RedisCluster, namespace: &str) -> CacheLayer {
    let store = RedisClusterStore::from_url_list(&cluster.url_list()).unwrap();
    CacheLayer::new(store)
        .secret(SECRET)
        .namespace(namespace)
        .jitter(0.0)
        .read_deadline(Duration::from_secs(2))
        .write_deadline(Duration::from_secs(2))
}

/// The key prefix `<ns>:v1:{P}` of `path`'s keys.
fn path_prefix(namespace: &str, path: &str) -> String {
    KeyDeriver::new(SECRET, namespace, "v1")
        .path_key_prefix(path)
        .unwrap()
}

/// One layer in front of the scripted origin, reached over real HTTP.
struct Site {
    layer: CacheLayer,
    client: HttpClient,
    calls: Calls,
}

async fn site(layer: CacheLayer) -> Site {
    site_with(layer, Calls::default()).await
}

async fn site_with(layer: CacheLayer, calls: Calls) -> Site {
    let addr = serve(app(calls.clone()).layer(layer.clone())).await;
    Site {
        layer,
        client: HttpClient::new(addr),
        calls,
    }
}

fn path_of(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

fn is_miss(got: &Got) -> bool {
    got.cache_status().contains("fwd=miss")
}

impl Site {
    async fn stored(&self, n: u64) {
        assert!(
            eventually(|| self.layer.stats().stores >= n).await,
            "expected {n} stores, stats: {:?}",
            self.layer.stats()
        );
    }

    async fn expect_hit_with(&self, url: &str, headers: &[(&str, &str)]) -> Got {
        let before = self.calls.of(path_of(url));
        let got = self.client.get_with(url, headers).await;
        assert!(
            got.is_hit(),
            "{url} should be a hit: {:?} ({})",
            got.cache_status(),
            got.text()
        );
        assert_eq!(self.calls.of(path_of(url)), before, "{url}: origin called");
        got
    }

    async fn expect_hit(&self, url: &str) -> Got {
        self.expect_hit_with(url, &[]).await
    }

    async fn expect_miss_with(&self, url: &str, headers: &[(&str, &str)]) -> Got {
        let before = self.calls.of(path_of(url));
        let got = self.client.get_with(url, headers).await;
        assert!(
            is_miss(&got),
            "{url} should be a miss: {:?} ({})",
            got.cache_status(),
            got.text()
        );
        assert_eq!(got.status, 200, "{url}");
        assert_eq!(
            self.calls.of(path_of(url)),
            before + 1,
            "{url}: origin not called"
        );
        got
    }

    async fn expect_miss(&self, url: &str) -> Got {
        self.expect_miss_with(url, &[]).await
    }

    /// GET `url` until it is a miss (at most 10 s), every answer before that being `old`.
    async fn poll_until_miss(&self, url: &str, old: &Got) -> Got {
        let since = Instant::now();
        loop {
            let got = self.client.get(url).await;
            if is_miss(&got) {
                return got;
            }
            assert_eq!(
                got.body, old.body,
                "{url}: neither the old entry nor a miss"
            );
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "{url} was still served from the cache 10 s after the purge"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Wait until no fill lock is left (they are released in the background, after the write).
async fn settled(cluster: &RedisCluster) {
    assert!(
        eventually(|| cluster.keys("*:l:*").is_empty()).await,
        "fill locks left behind: {:?}",
        cluster.keys("*:l:*")
    );
}

/// Every key matching `pattern` on every live primary has an expiry.
fn assert_every_key_expires(cluster: &RedisCluster, pattern: &str) {
    for (port, keys) in cluster.keys_by_primary(pattern) {
        for key in keys {
            match cluster.cmd(port, &["TTL", &key]) {
                Reply::Int(ttl) if ttl > 0 || ttl == -2 => {}
                other => panic!("{key} on {port} has no expiry: TTL {other:?}"),
            }
        }
    }
}

/// How many live primaries hold at least one key matching `pattern`.
fn primaries_holding(cluster: &RedisCluster, pattern: &str) -> usize {
    cluster
        .keys_by_primary(pattern)
        .iter()
        .filter(|(_, keys)| !keys.is_empty())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_hits_vary_tags_and_every_purge_work_without_a_single_store_error() {
    let cluster = start_cluster().await;
    let s = site(layer(&cluster, "trc")).await;
    let urls = [
        "/users/1",
        "/users/1?full=1",
        "/users/2",
        "/docs/a?tag=docs+doc:a",
        "/docs/b?tag=docs",
        "/items/7?tag=items",
    ];
    for url in urls {
        s.expect_miss(url).await;
    }
    // One path, two variants of the same request.
    let vary = "/negotiated?vary=accept-language&reflect=accept-language";
    let en = s.expect_miss_with(vary, &[("accept-language", "en")]).await;
    let de = s.expect_miss_with(vary, &[("accept-language", "de")]).await;
    s.stored(urls.len() as u64 + 2).await;
    for url in urls {
        s.expect_hit(url).await;
    }
    let en_again = s.expect_hit_with(vary, &[("accept-language", "en")]).await;
    let de_again = s.expect_hit_with(vary, &[("accept-language", "de")]).await;
    assert_eq!(en_again.body, en.body);
    assert_eq!(de_again.body, de.body);
    assert_ne!(en.body, de.body);
    settled(&cluster).await;
    assert!(
        primaries_holding(&cluster, "trc:v1:*") >= 2,
        "the entries should spread over the primaries: {:?}",
        cluster.keys_by_primary("trc:v1:*")
    );
    assert_every_key_expires(&cluster, "trc:v1:*");

    let purger = s.layer.purger();
    let report = purger.purge_path("/users/1").await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.removed, 2, "{report:?}");
    s.expect_miss("/users/1").await;
    s.expect_miss("/users/1?full=1").await;
    s.expect_hit("/users/2").await;

    let report = purger.purge_tag("docs").await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.removed, 2, "{report:?}");
    s.expect_miss("/docs/a?tag=docs+doc:a").await;
    s.expect_miss("/docs/b?tag=docs").await;
    s.expect_hit("/items/7?tag=items").await;

    let report = purger.purge_url(vary).await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.removed, 2, "{report:?}");
    s.expect_miss_with(vary, &[("accept-language", "en")]).await;

    let report = purger.purge_all().await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    for url in ["/users/2", "/items/7?tag=items"] {
        s.expect_miss(url).await;
    }
    assert!(s.layer.ping().await.is_ok());

    let stats = s.layer.stats();
    assert_eq!(stats.store_errors, 0, "{stats:?}");
    assert_eq!(stats.bypasses, 0, "{stats:?}");
    assert_eq!(s.layer.store().name(), "redis-cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_namespace_purges_reach_every_primary() {
    let cluster = start_cluster().await;
    let s = site(layer(&cluster, "wide")).await;
    let other = site(layer(&cluster, "other")).await;
    let paths: Vec<String> = (0..24).map(|i| format!("/p/{i}")).collect();
    for path in &paths {
        s.expect_miss(path).await;
        s.expect_miss(&format!("{path}?page=2")).await;
    }
    other.expect_miss("/p/0").await;
    s.stored(paths.len() as u64 * 2).await;
    other.stored(1).await;
    settled(&cluster).await;
    assert_eq!(
        primaries_holding(&cluster, "wide:v1:*"),
        3,
        "24 paths should land on every primary: {:?}",
        cluster.keys_by_primary("wide:v1:*")
    );

    let purged = path_prefix("wide", "/p/5");
    let report = s.layer.purger().purge_path("/p/5").await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.removed, 2, "{report:?}");
    assert!(
        cluster.keys(&format!("{purged}:e:*")).is_empty(),
        "entries of the purged path survived: {:?}",
        cluster.keys(&format!("{purged}:e:*"))
    );
    s.expect_miss("/p/5?page=2").await;
    s.expect_hit("/p/6?page=2").await;
    settled(&cluster).await;

    let before: usize = cluster.keys("wide:v1:*").len();
    let report = s.layer.purger().purge_all().await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.removed, before as u64, "{report:?}");
    for (port, keys) in cluster.keys_by_primary("wide:v1:*") {
        assert!(keys.is_empty(), "primary {port} still holds {keys:?}");
    }
    // Another namespace on the same cluster is untouched.
    other.expect_hit("/p/0").await;
    assert!(!cluster.keys("other:v1:*").is_empty());
    assert_eq!(s.layer.stats().store_errors, 0, "{:?}", s.layer.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_removes_members_that_live_in_different_slots() {
    let cluster = start_cluster().await;
    let s = site(layer(&cluster, "tags")).await;
    let tagged: Vec<String> = (0..30).map(|i| format!("/t/{i}?tag=group")).collect();
    for url in &tagged {
        s.expect_miss(url).await;
    }
    s.expect_miss("/untagged").await;
    s.stored(tagged.len() as u64 + 1).await;
    settled(&cluster).await;
    let slots: BTreeSet<u16> = tagged
        .iter()
        .map(|url| cluster.slot_of(&path_prefix("tags", path_of(url))))
        .collect();
    assert!(slots.len() >= 10, "members in only {} slots", slots.len());
    assert!(primaries_holding(&cluster, "tags:v1:{*}:e:*") >= 2);

    let report = s.layer.purger().purge_tag("group").await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.removed, tagged.len() as u64, "{report:?}");
    assert!(
        cluster.keys("tags:v1:t:*").is_empty(),
        "the tag set survived: {:?}",
        cluster.keys("tags:v1:t:*")
    );
    for url in &tagged {
        s.expect_miss(url).await;
    }
    s.expect_hit("/untagged").await;
    assert_eq!(s.layer.stats().store_errors, 0, "{:?}", s.layer.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_instance_reaches_the_near_cache_of_another_through_the_cluster() {
    let cluster = start_cluster().await;
    let near = |cluster: &RedisCluster| layer(cluster, "trc").near_cache(8 * 1024 * 1024);
    let a = site(near(&cluster)).await;
    let b = site(near(&cluster)).await;
    assert!(
        eventually(|| cluster.subscribers("trc:events") == 2).await,
        "both instances should listen to the events channel"
    );
    let url = "/users/42?tag=user:42";
    let from_a = a.expect_miss(url).await;
    let from_b = b.expect_miss(url).await;
    a.stored(1).await;
    b.stored(1).await;
    assert_eq!(a.expect_hit(url).await.body, from_a.body);
    assert_eq!(b.expect_hit(url).await.body, from_b.body);
    let other_b = b.expect_miss("/users/43").await;
    b.stored(2).await;

    let report = a.layer.purger().purge_path("/users/42").await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    let fresh_b = b.poll_until_miss(url, &from_b).await;
    assert_ne!(fresh_b.body, from_b.body);
    assert_ne!(a.expect_miss(url).await.body, from_a.body);
    assert_eq!(b.expect_hit("/users/43").await.body, other_b.body);

    // A tag purge from A reaches B too.
    b.stored(3).await;
    let refilled = b.expect_hit(url).await;
    a.layer.purger().purge_tag("user:42").await.unwrap();
    b.poll_until_miss(url, &refilled).await;
    for site in [&a, &b] {
        assert_eq!(
            site.layer.stats().store_errors,
            0,
            "{:?}",
            site.layer.stats()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_cold_requests_over_two_instances_call_the_origin_once() {
    let cluster = start_cluster().await;
    let calls = Calls::default();
    let a = site_with(layer(&cluster, "herd"), calls.clone()).await;
    let b = site_with(layer(&cluster, "herd"), calls.clone()).await;
    assert!(eventually(|| cluster.subscribers("herd:events") == 2).await);
    let url = "/hot?delay=300";
    let mut requests = Vec::new();
    for i in 0..100 {
        let client = if i % 2 == 0 {
            a.client.clone()
        } else {
            b.client.clone()
        };
        // Both instances key on their own host: send the same Host to both.
        requests.push(tokio::spawn(async move {
            client.get_with(url, &[("host", "shop.example")]).await
        }));
    }
    let mut bodies = BTreeSet::new();
    for request in requests {
        let got = request.await.unwrap();
        assert_eq!(got.status, 200);
        bodies.insert(got.body);
    }
    assert_eq!(calls.of("/hot"), 1, "the origin was called more than once");
    assert_eq!(bodies.len(), 1, "different bodies: {bodies:?}");
    for site in [&a, &b] {
        assert_eq!(
            site.layer.stats().store_errors,
            0,
            "{:?}",
            site.layer.stats()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_primary_dies_requests_keep_their_bodies_and_caching_resumes_after_failover() {
    let cluster = start_cluster().await;
    assert!(
        cluster.wait_until_replicas_in_sync(Duration::from_secs(20)),
        "the replicas never caught up"
    );
    // Request-path deadlines close to production ones: the failover must not slow requests to
    // a crawl, only turn them into bypasses.
    let s = Arc::new(
        site(
            layer(&cluster, "fo")
                .read_deadline(Duration::from_millis(200))
                .write_deadline(Duration::from_millis(500)),
        )
        .await,
    );
    let paths: Vec<String> = (0..20).map(|i| format!("/f/{i}")).collect();
    for path in &paths {
        s.expect_miss(path).await;
    }
    s.stored(paths.len() as u64).await;
    settled(&cluster).await;

    // The victim: the primary that holds /f/0.
    let prefix = path_prefix("fo", "/f/0");
    let victim = cluster
        .keys_by_primary(&format!("{prefix}:e:*"))
        .into_iter()
        .find(|(_, keys)| !keys.is_empty())
        .map(|(port, _)| port)
        .expect("/f/0 is stored on some primary");
    let replica = match cluster.replicas_of(victim)[..] {
        [replica] => replica,
        ref other => panic!("expected one replica of {victim}, found {other:?}"),
    };

    // A client loop of mixed hits and misses (a fresh query now and then), checking every body.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let looping = {
        let (s, stop, served, paths) = (
            Arc::clone(&s),
            Arc::clone(&stop),
            Arc::clone(&served),
            paths.clone(),
        );
        tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::SeqCst) {
                for (i, path) in paths.iter().enumerate() {
                    let url = if i % 5 == 0 {
                        format!("{path}?round={round}")
                    } else {
                        path.clone()
                    };
                    let got = s.client.get(&url).await;
                    assert_eq!(got.status, 200, "{url}: {}", got.text());
                    assert!(
                        got.text().starts_with(&format!("path={path} ")),
                        "{url} got the body {:?}",
                        got.text()
                    );
                    served.fetch_add(1, Ordering::SeqCst);
                }
                round += 1;
            }
        })
    };
    assert!(eventually(|| served.load(Ordering::SeqCst) >= 40).await);
    cluster.kill(victim);
    let cluster = Arc::new(cluster);
    let healed = {
        let cluster = Arc::clone(&cluster);
        tokio::task::spawn_blocking(move || {
            // The replica is promoted once the others agree the primary failed.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !cluster.primaries().contains(&replica) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            cluster.primaries().contains(&replica) && cluster.wait_until_ok(Duration::from_secs(30))
        })
        .await
        .unwrap()
    };
    assert!(healed, "the cluster did not fail over");
    assert!(!cluster.primaries().contains(&victim));

    // Caching resumes on the slots the dead primary had: a new request of /f/0 is stored and
    // then served from the cache.
    let url = "/f/0?after=failover";
    let since = Instant::now();
    let mut resumed = false;
    while since.elapsed() < Duration::from_secs(20) {
        let got = s.client.get(url).await;
        assert_eq!(got.status, 200);
        if got.is_hit() {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    looping
        .await
        .expect("every request of the loop got its own body");
    assert!(resumed, "caching did not resume: {:?}", s.layer.stats());
    let hits_before = s.layer.stats().hits;
    for path in &paths {
        s.client.get(path).await;
    }
    assert!(
        s.layer.stats().hits > hits_before,
        "no hit after the failover: {:?}",
        s.layer.stats()
    );
    eprintln!(
        "{} requests served during the failover; stats {:?}",
        served.load(Ordering::SeqCst),
        s.layer.stats()
    );
    settled(&cluster).await;
    assert_every_key_expires(&cluster, "fo:v1:*");
}

/// Waits until `served` reaches `count`, at most `timeout`; returns whether it did.
async fn served_at_least(served: &AtomicU64, count: u64, timeout: Duration) -> bool {
    let since = Instant::now();
    while served.load(Ordering::SeqCst) < count {
        if since.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// F8, cluster-reshard-moved-ask: the slots of twenty warm paths move to other primaries under
/// load, the way a reshard moves them (`SETSLOT IMPORTING` / `MIGRATING`, the keys in a few
/// `MIGRATE` batches with pauses in between, so that for a while a slot's keys are split between
/// two nodes, then `SETSLOT NODE` everywhere), while two client loops keep asking for those
/// paths (hits) and for new queries of them (misses in the moving slots).
///
/// Every request gets a 200 and the body of its own path and query; no node ever answers
/// `CROSSSLOT` and the store reports no error of that class (`misconfigured`), nor a corrupt,
/// foreign or unclassified one: the commands that meet a moving slot follow `MOVED` / `ASK`
/// (the nodes did send both) or, at worst, give up as a transient error and the request
/// bypasses the cache, which fewer than 5 % of the requests do. Afterwards the keys live on their new primaries, every warm path is a
/// hit again and every key still has an expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_slots_migrate_under_load_no_request_fails_and_no_command_crosses_slots() {
    let cluster = Arc::new(start_cluster().await);
    let formed = {
        let cluster = Arc::clone(&cluster);
        tokio::task::spawn_blocking(move || {
            cluster.wait_until_primaries(3, Duration::from_secs(30))
                && cluster.wait_until_replicas_in_sync(Duration::from_secs(30))
        })
        .await
        .unwrap()
    };
    assert!(
        formed,
        "the cluster never settled on three primaries with their replicas"
    );
    let s = Arc::new(site(layer(&cluster, "mv")).await);
    let paths: Vec<String> = (0..20).map(|i| format!("/mv/{i}")).collect();
    for path in &paths {
        s.expect_miss(path).await;
    }
    s.stored(paths.len() as u64).await;
    settled(&cluster).await;

    // Each warm path's slot moves from its primary to the next primary in port order, so that
    // every primary gives slots away and takes others in.
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    let mut moves: BTreeMap<u16, (u16, u16)> = BTreeMap::new();
    for path in &paths {
        let prefix = path_prefix("mv", path);
        let slot = cluster.slot_of(&prefix);
        let from = cluster.owner_of(slot).expect("every slot has an owner");
        let next = primaries.iter().position(|port| *port == from).unwrap() + 1;
        let to = primaries[next % primaries.len()];
        assert!(
            !cluster.keys_on(from, &format!("{prefix}:e:*")).is_empty(),
            "{path}'s entry is not on {from}, the owner of its slot {slot}"
        );
        moves.insert(slot, (from, to));
    }
    let errors_before = cluster.error_replies();

    // Two client loops of hits and misses (a new query of a warm path now and then, so the
    // misses fall into the moving slots too), checking every status and body.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let bypassed = Arc::new(AtomicU64::new(0));
    let slowest_ms = Arc::new(AtomicU64::new(0));
    let problems = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let loops: Vec<_> = (0..2u64)
        .map(|worker| {
            let (s, stop, served, failed, wrong, bypassed, slowest_ms, problems, paths) = (
                Arc::clone(&s),
                Arc::clone(&stop),
                Arc::clone(&served),
                Arc::clone(&failed),
                Arc::clone(&wrong),
                Arc::clone(&bypassed),
                Arc::clone(&slowest_ms),
                Arc::clone(&problems),
                paths.clone(),
            );
            tokio::spawn(async move {
                let mut round = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    for (i, path) in paths.iter().enumerate() {
                        let query = if (i as u64 + round + worker) % 4 == 0 {
                            format!("w={worker}&round={round}")
                        } else {
                            String::new()
                        };
                        let url = if query.is_empty() {
                            path.clone()
                        } else {
                            format!("{path}?{query}")
                        };
                        let since = Instant::now();
                        let got = s.client.get(&url).await;
                        let took = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
                        slowest_ms.fetch_max(took, Ordering::SeqCst);
                        if got.cache_status().contains("fwd=bypass") {
                            bypassed.fetch_add(1, Ordering::SeqCst);
                        }
                        let problem = if got.status != 200 {
                            failed.fetch_add(1, Ordering::SeqCst);
                            Some(format!("{url}: status {} ({})", got.status, got.text()))
                        } else if !got
                            .text()
                            .starts_with(&format!("path={path} query={query} call="))
                        {
                            wrong.fetch_add(1, Ordering::SeqCst);
                            Some(format!("{url} got the body {:?}", got.text()))
                        } else {
                            None
                        };
                        if let Some(problem) = problem {
                            let mut problems = problems.lock().unwrap();
                            if problems.len() < 10 {
                                problems.push(problem);
                            }
                        }
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    round += 1;
                }
            })
        })
        .collect();
    assert!(
        served_at_least(&served, 40, Duration::from_secs(30)).await,
        "the client loop did not get going"
    );

    let (moved, moving) = {
        let (cluster, moves) = (Arc::clone(&cluster), moves.clone());
        tokio::task::spawn_blocking(move || {
            let since = Instant::now();
            let moved: usize = moves
                .iter()
                .map(|(slot, (from, to))| {
                    cluster.migrate_slot(*slot, *from, *to, 3, Duration::from_millis(150))
                })
                .sum();
            (moved, since.elapsed())
        })
        .await
        .expect("every slot was migrated")
    };
    let served_while_moving = served.load(Ordering::SeqCst);
    let agreed = {
        let (cluster, moves) = (Arc::clone(&cluster), moves.clone());
        tokio::task::spawn_blocking(move || {
            moves.iter().all(|(slot, (_, to))| {
                cluster.wait_until_slot_owned_by(*slot, *to, Duration::from_secs(30))
            }) && cluster.wait_until_ok(Duration::from_secs(30))
        })
        .await
        .unwrap()
    };
    assert!(
        agreed,
        "the nodes do not agree on the new owners of {moves:?}"
    );
    // A few more rounds on the settled cluster, so that the client meets every moved slot.
    let settle_until = served.load(Ordering::SeqCst) + 4 * paths.len() as u64;
    served_at_least(&served, settle_until, Duration::from_secs(30)).await;
    stop.store(true, Ordering::SeqCst);
    for looping in loops {
        looping.await.expect("the client loop ran to its end");
    }
    let errors_after = cluster.error_replies();
    let stats_after_loop = s.layer.stats();
    let problems = problems.lock().unwrap().clone();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests: {problems:?}"
    );
    assert_eq!(
        wrong.load(Ordering::SeqCst),
        0,
        "wrong bodies: {problems:?}"
    );
    assert!(
        served.load(Ordering::SeqCst) >= settle_until,
        "the client loop stalled after the migration: {} requests served",
        served.load(Ordering::SeqCst)
    );

    // No command crossed slots, at the nodes or in the store's view; the requests that met a
    // moving slot were redirected (or bypassed the cache on a transient error), nothing else.
    let replied =
        |errors: &BTreeMap<String, u64>, code: &str| errors.get(code).copied().unwrap_or(0);
    let redirects = ["MOVED", "ASK"]
        .map(|code| replied(&errors_after, code).saturating_sub(replied(&errors_before, code)));
    assert_eq!(replied(&errors_after, "CROSSSLOT"), 0, "{errors_after:?}");
    // ASK while a slot moves, MOVED to a client whose slot map is older than the move.
    assert!(
        redirects.iter().all(|count| *count > 0),
        "the nodes did not send both MOVED and ASK redirects: {errors_after:?}"
    );
    // F8: the hit ratio dips by less than 5 %. Reads are single-key commands, so they follow
    // the redirects; only a few meet a slot in the instant its owner changes.
    let (all, skipped) = (
        served.load(Ordering::SeqCst),
        bypassed.load(Ordering::SeqCst),
    );
    assert!(
        skipped * 20 < all,
        "{skipped} of {all} requests bypassed the cache while the slots moved"
    );
    let stats = s.layer.stats();
    for kind in ["misconfigured", "corrupt", "other", "oom", "readonly"] {
        assert_eq!(stats.store_errors_by[kind], 0, "{kind}: {stats:?}");
    }
    assert_eq!(stats.decode_errors, 0, "{stats:?}");
    assert_eq!(stats.foreign_entries, 0, "{stats:?}");

    // The keys live on their new primaries: the source of each slot holds none of them.
    for (slot, (from, to)) in &moves {
        assert_eq!(
            cluster.count_keys_in_slot(*from, *slot),
            0,
            "slot {slot} still has keys on {from}"
        );
        assert!(
            cluster.count_keys_in_slot(*to, *slot) > 0,
            "slot {slot} has no keys on {to}"
        );
    }
    for path in &paths {
        let prefix = path_prefix("mv", path);
        let (_, to) = moves[&cluster.slot_of(&prefix)];
        assert!(
            !cluster.keys_on(to, &format!("{prefix}:e:*")).is_empty(),
            "{path}'s entries are not on {to}"
        );
    }

    // Hits resume on every moved path (after a breaker cool-down, if the migration opened it).
    let hits_before = s.layer.stats().hits;
    for path in &paths {
        let since = Instant::now();
        loop {
            let got = s.client.get(path).await;
            assert_eq!(got.status, 200, "{path}: {}", got.text());
            assert!(
                got.text().starts_with(&format!("path={path} query= call=")),
                "{path} got the body {:?}",
                got.text()
            );
            if got.is_hit() {
                break;
            }
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "{path} is still not a hit 20 s after the migration: {:?} {:?}",
                got.cache_status(),
                s.layer.stats()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(s.layer.stats().hits >= hits_before + paths.len() as u64);
    eprintln!(
        "{moved} keys of {} slots moved in {moving:?}; {served_while_moving} requests served \
         by then, {} in all ({} bypassed the cache), the slowest in {} ms; redirects (MOVED, ASK) {redirects:?}; \
         node errors before {errors_before:?}, after {errors_after:?}; stats {stats_after_loop:?}",
        moves.len(),
        served.load(Ordering::SeqCst),
        bypassed.load(Ordering::SeqCst),
        slowest_ms.load(Ordering::SeqCst),
    );
    // An unlock that met a slot mid-move may have given up: that lock goes with its TTL (10 s),
    // never later. Every other key expires too.
    let since = Instant::now();
    while !cluster.keys("mv:v1:*:l:*").is_empty() {
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "fill locks outlived their TTL: {:?}",
            cluster.keys("mv:v1:*:l:*")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_every_key_expires(&cluster, "mv:v1:*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_example_runs_on_a_list_of_node_urls() {
    let cluster = start_cluster().await;
    let calls = Calls::default();
    let upstream = serve(upstream_app(calls.clone(), Recorder::default())).await;
    let upstream_url = format!("http://{upstream}");
    let list = cluster.url_list();
    let process = ProxyProcess::start(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream_url,
        "--redis",
        &list,
    ])
    .await;
    assert!(
        process.ready_line.ends_with("store redis-cluster)"),
        "{}",
        process.ready_line
    );
    let client = HttpClient::new(process.addr);
    let first = client.get("/fresh?cc=max-age=60").await;
    assert_eq!(first.status, 200);
    assert!(
        first.cache_status().starts_with("trc; fwd=miss; stored"),
        "{}",
        first.cache_status()
    );
    // The entry is written in the background: ask until it is there.
    let mut hit = None;
    for _ in 0..500 {
        let again = client.get("/fresh?cc=max-age=60").await;
        assert_eq!(again.body, first.body);
        if again.is_hit() {
            hit = Some(again);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hit.is_some(), "the proxy never answered from the cluster");
    assert_eq!(calls.of("/fresh"), 1);
    assert!(
        !cluster.keys("trc:v1:{*}:e:*").is_empty(),
        "the entry is in the cluster"
    );
    process.stop().await;
}

// ---------------------------------------------------------------------------------------------
// TLS (`rediss://`) and ACL users
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use support::redis_cluster::TestCertificates;
    use support::redis_server::RedisServer;
    use tower_response_cache::RedisStore;

    /// A standalone server that also serves TLS on a port of its own, with the ACL user
    /// `alice` (password `s3cret`); returns it with its TLS port.
    fn tls_server(certificates: &TestCertificates) -> (RedisServer, u16) {
        let tls_port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut args = vec!["--tls-port".to_owned(), tls_port.to_string()];
        args.extend(certificates.server_args());
        for word in ["--user", "alice", "on", ">s3cret", "~*", "&*", "+@all"] {
            args.push(word.to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (RedisServer::start_with(&args), tls_port)
    }

    fn trusting(certificates: &TestCertificates) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(certificates.ca_pem()),
        }
    }

    fn tls_store(url: &str, roots: Option<redis::TlsCertificates>) -> RedisStore {
        let client = match roots {
            Some(roots) => redis::Client::build_with_tls(url, roots).unwrap(),
            None => redis::Client::open(url).unwrap(),
        };
        RedisStore::from_client(client).unwrap()
    }

    fn tls_layer(store: RedisStore) -> CacheLayer {
        CacheLayer::new(store)
            .secret(SECRET)
            .jitter(0.0)
            .read_deadline(Duration::from_secs(2))
            .write_deadline(Duration::from_secs(2))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_tls_an_acl_user_gets_misses_then_hits() {
        let certificates = TestCertificates::generate();
        let (server, tls_port) = tls_server(&certificates);
        let url = format!("rediss://alice:s3cret@127.0.0.1:{tls_port}/");
        let s = site(tls_layer(tls_store(&url, Some(trusting(&certificates))))).await;
        let first = s.expect_miss("/secure/1").await;
        s.stored(1).await;
        assert_eq!(s.expect_hit("/secure/1").await.body, first.body);
        assert_eq!(server.keys("trc:v1:*").len(), 1, "{:?}", server.keys("*"));
        // The connection is alice's, on the TLS port.
        let clients = server.cmd_str(&["CLIENT", "LIST"]);
        let clients = String::from_utf8_lossy(clients.as_bytes().unwrap()).into_owned();
        assert!(
            clients.lines().any(|line| line.contains("user=alice")
                && line.contains(&format!("laddr=127.0.0.1:{tls_port} "))),
            "{clients}"
        );
        assert!(s.layer.ping().await.is_ok());
        assert_eq!(s.layer.stats().store_errors, 0, "{:?}", s.layer.stats());
    }

    /// GET `url` twice: both answered by the origin with 200, never from the cache.
    async fn served_without_the_cache(s: &Site, url: &str) {
        for call in 1..=2 {
            let got = s.client.get(url).await;
            assert_eq!(got.status, 200);
            assert!(!got.is_hit(), "{}", got.cache_status());
            assert!(
                got.text().ends_with(&format!("call={call}")),
                "{}",
                got.text()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_password_or_an_unknown_certificate_means_bypass_not_failure() {
        let certificates = TestCertificates::generate();
        let (server, tls_port) = tls_server(&certificates);

        let wrong_password = format!("rediss://alice:nope@127.0.0.1:{tls_port}/");
        let s = site(tls_layer(tls_store(
            &wrong_password,
            Some(trusting(&certificates)),
        )))
        .await;
        served_without_the_cache(&s, "/secure/1").await;
        assert!(s.layer.ping().await.is_err());
        let stats = s.layer.stats();
        assert!(stats.store_errors_by["misconfigured"] > 0, "{stats:?}");

        // The server's certificate is signed by an authority the system does not know.
        let right_password = format!("rediss://alice:s3cret@127.0.0.1:{tls_port}/");
        let s = site(tls_layer(tls_store(&right_password, None))).await;
        served_without_the_cache(&s, "/secure/2").await;
        assert!(s.layer.ping().await.is_err());
        assert!(s.layer.stats().store_errors > 0, "{:?}", s.layer.stats());

        // The cluster store refuses the unknown certificate the same way.
        let cluster_store = RedisClusterStore::from_urls(&[&right_password]).unwrap();
        let s = site(
            CacheLayer::new(cluster_store)
                .secret(SECRET)
                .read_deadline(Duration::from_secs(2)),
        )
        .await;
        served_without_the_cache(&s, "/secure/3").await;
        assert!(s.layer.stats().store_errors > 0, "{:?}", s.layer.stats());
        assert!(server.keys("*").is_empty(), "{:?}", server.keys("*"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tls_cluster_caches_coalesces_and_purges_over_rediss() {
        let certificates = TestCertificates::generate();
        let cluster = {
            let certificates = &certificates;
            std::thread::scope(|scope| {
                scope
                    .spawn(|| RedisCluster::start_tls(certificates))
                    .join()
                    .expect("the TLS cluster started")
            })
        };
        let urls = cluster.tls_urls();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let tls_layer = || {
            let store =
                RedisClusterStore::from_urls_with_tls(&urls, trusting(&certificates)).unwrap();
            CacheLayer::new(store)
                .secret(SECRET)
                .jitter(0.0)
                .read_deadline(Duration::from_secs(2))
                .write_deadline(Duration::from_secs(2))
                .near_cache(1024 * 1024)
        };
        let a = site(tls_layer()).await;
        let b = site(tls_layer()).await;
        assert!(eventually(|| cluster.subscribers("trc:events") == 2).await);
        let paths: Vec<String> = (0..12).map(|i| format!("/s/{i}?tag=secure")).collect();
        for path in &paths {
            a.expect_miss(path).await;
        }
        a.stored(paths.len() as u64).await;
        for path in &paths {
            a.expect_hit(path).await;
        }
        let from_b = b.expect_miss(&paths[0]).await;
        b.stored(1).await;
        b.expect_hit(&paths[0]).await;
        assert!(primaries_holding(&cluster, "trc:v1:*") >= 2);

        let report = a.layer.purger().purge_tag("secure").await.unwrap();
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(report.removed, paths.len() as u64 + 1, "{report:?}");
        b.poll_until_miss(&paths[0], &from_b).await;
        a.expect_miss(&paths[1]).await;
        for site in [&a, &b] {
            assert_eq!(
                site.layer.stats().store_errors,
                0,
                "{:?}",
                site.layer.stats()
            );
        }
    }
}

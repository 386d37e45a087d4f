//! Purging end to end, with a private redis-server per test and real HTTP over TCP: every purge
//! kind on both stores, tags, purges across instances (events and near caches), purges racing
//! slow fills, writes that invalidate their path, expiry on every key, and bulk purges of 100k
//! keys that never block Redis.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use support::origin::{app, eventually, serve, Calls, Got, HttpClient};
use support::redis_server::{RedisServer, Reply};
use tower_response_cache::key::KeyDeriver;
use tower_response_cache::{CacheLayer, CacheTags, MemoryStore, PurgeReport, RedisStore};

const SECRET: &[u8] = b"the purge tests' own key secret, long enough";

/// The entries every purge-kind test starts from: two queries of one path, another path, and
/// two tagged entries (`user:1 users` and `users`).
const URLS: [&str; 5] = [
    "/users/1?full=1",
    "/users/1?full=0",
    "/users/2",
    "/tagged/1?tag=user:1+users",
    "/tagged/2?tag=users",
];

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// Where a test's layers keep their entries.
enum Backend {
    Redis(RedisServer),
    Memory(MemoryStore),
}

impl Backend {
    fn redis() -> Self {
        Backend::Redis(RedisServer::start())
    }

    fn memory() -> Self {
        Backend::Memory(MemoryStore::new())
    }

    /// A layer on this backend's store (its own connection for Redis, the shared store for
    /// memory) in `namespace`.
    fn layer(&self, namespace: &str) -> CacheLayer {
        let layer = match self {
            Backend::Redis(redis) => CacheLayer::new(RedisStore::from_url(&redis.url()).unwrap()),
            Backend::Memory(store) => CacheLayer::new(store.clone()),
        };
        layer
            .secret(SECRET)
            .namespace(namespace)
            .jitter(0.0)
            // A loaded machine's slow Redis must not turn into bypasses or dropped writes.
            .read_deadline(Duration::from_secs(2))
            .write_deadline(Duration::from_secs(2))
    }

    fn redis_server(&self) -> Option<&RedisServer> {
        match self {
            Backend::Redis(redis) => Some(redis),
            Backend::Memory(_) => None,
        }
    }

    /// Every key of `namespace` in the store, sorted.
    fn keys(&self, namespace: &str) -> Vec<String> {
        let prefix = format!("{namespace}:v1:");
        match self {
            Backend::Redis(redis) => redis.keys(&format!("{prefix}*")),
            Backend::Memory(store) => {
                let mut keys: Vec<String> = store
                    .keys()
                    .into_iter()
                    .filter(|key| key.starts_with(&prefix))
                    .collect();
                keys.sort();
                keys
            }
        }
    }

    /// Wait until no fill lock is held any more (they are released in the background, after
    /// the write), so that key counts are stable.
    async fn settled(&self) {
        if let Some(redis) = self.redis_server() {
            no_fill_locks(redis).await;
        }
    }
}

/// One layer in front of the scripted origin, reached over real HTTP.
struct Site {
    layer: CacheLayer,
    client: HttpClient,
    calls: Calls,
}

async fn site(layer: CacheLayer) -> Site {
    let calls = Calls::default();
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
    /// Wait until the layer has written `n` entries (writes land in the background).
    async fn stored(&self, n: u64) {
        assert!(
            eventually(|| self.layer.stats().stores >= n).await,
            "expected {n} stores, stats: {:?}",
            self.layer.stats()
        );
    }

    /// GET `url`: it must be answered from the cache, without calling the origin.
    async fn expect_hit(&self, url: &str) -> Got {
        let before = self.calls.of(path_of(url));
        let got = self.client.get(url).await;
        assert!(
            got.is_hit(),
            "{url} should be a hit: {:?} ({})",
            got.cache_status(),
            got.text()
        );
        assert_eq!(
            self.calls.of(path_of(url)),
            before,
            "{url}: the origin was called"
        );
        got
    }

    /// GET `url`: it must be a miss that the origin answers.
    async fn expect_miss(&self, url: &str) -> Got {
        let before = self.calls.of(path_of(url));
        let got = self.client.get(url).await;
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
            "{url}: the origin was not called"
        );
        got
    }

    /// GET `url` until it is a miss (at most 5 s), checking that every answer before that is
    /// still `old`. Returns the fresh answer and how long it took to get it.
    async fn poll_until_miss(&self, url: &str, old: &Got) -> (Got, Duration) {
        let since = Instant::now();
        loop {
            let got = self.client.get(url).await;
            if is_miss(&got) {
                return (got, since.elapsed());
            }
            assert_eq!(
                got.body, old.body,
                "{url}: neither the old entry nor a miss"
            );
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "{url} was still served from the cache 5 s after the purge: {}",
                got.cache_status()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The four purge kinds, for tests that run each.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Path,
    Tag,
    Url,
    All,
}

fn assert_removed(report: &PurgeReport, removed: u64) {
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.removed, removed, "{report:?}");
}

/// Two namespaces on one store, every URL of [`URLS`] filled in both and checked to hit.
struct Namespaces {
    backend: Backend,
    main: Site,
    other: Site,
}

async fn filled(backend: Backend) -> Namespaces {
    let main = site(backend.layer("trc")).await;
    let other = site(backend.layer("other")).await;
    for site in [&main, &other] {
        for url in URLS {
            site.expect_miss(url).await;
        }
        site.stored(URLS.len() as u64).await;
        for url in URLS {
            site.expect_hit(url).await;
        }
    }
    backend.settled().await;
    Namespaces {
        backend,
        main,
        other,
    }
}

impl Namespaces {
    /// Every URL but those in `purged` still hits in the main namespace, and every URL hits in
    /// the other one; the purged ones are misses.
    async fn check(&self, purged: &[&str]) {
        for url in URLS.iter().filter(|url| !purged.contains(url)) {
            self.main.expect_hit(url).await;
        }
        for url in URLS {
            self.other.expect_hit(url).await;
        }
        for url in purged {
            self.main.expect_miss(url).await;
        }
    }
}

/// Wait until no fill lock is held. A fill releases its lock only once its write, tag sets
/// included, is done: afterwards the store holds everything the fill wrote.
async fn no_fill_locks(redis: &RedisServer) {
    assert!(
        eventually(|| redis.keys("*:l:*").is_empty()).await,
        "fill locks left behind: {:?}",
        redis.keys("*:l:*")
    );
}

/// How many connections listen to `channel`.
fn subscribers(redis: &RedisServer, channel: &str) -> i64 {
    match redis.cmd_str(&["PUBSUB", "NUMSUB", channel]).as_array() {
        Some([_, Reply::Int(n)]) => *n,
        other => panic!("unexpected PUBSUB NUMSUB reply: {other:?}"),
    }
}

/// The members of a set.
fn members(redis: &RedisServer, key: &str) -> Vec<String> {
    redis
        .cmd_str(&["SMEMBERS", key])
        .as_array()
        .unwrap_or_default()
        .iter()
        .filter_map(Reply::as_bytes)
        .map(|member| String::from_utf8_lossy(member).into_owned())
        .collect()
}

fn exists(redis: &RedisServer, key: &str) -> bool {
    redis.cmd_str(&["EXISTS", key]).as_int() == Some(1)
}

/// Publish `message` on the default namespace's events channel, as an outside tool would.
fn publish(redis: &RedisServer, message: &str) {
    let reply = redis.cmd_str(&["PUBLISH", "trc:events", message]);
    assert!(reply.as_int().is_some(), "{reply:?}");
}

// ---------------------------------------------------------------------------------------------
// 1. Each purge kind removes exactly what it should, on both stores
// ---------------------------------------------------------------------------------------------

async fn a_url_purge_removes_that_request_only(backend: Backend) {
    let n = filled(backend).await;
    let purger = n.main.layer.purger();
    let report = purger.purge_url("/users/1?full=1").await.unwrap();
    assert_removed(&report, 1);
    assert!(!report.generation_bumped);
    n.check(&["/users/1?full=1"]).await;

    // With a scheme and a host, which does not narrow the purge.
    let report = purger
        .purge_url("http://elsewhere.example/users/1?full=0")
        .await
        .unwrap();
    assert_removed(&report, 1);
    n.check(&["/users/1?full=0"]).await;
}

#[tokio::test]
async fn a_url_purge_removes_that_request_only_on_redis() {
    a_url_purge_removes_that_request_only(Backend::redis()).await;
}

#[tokio::test]
async fn a_url_purge_removes_that_request_only_in_memory() {
    a_url_purge_removes_that_request_only(Backend::memory()).await;
}

async fn a_path_purge_removes_every_query_of_that_path_only(backend: Backend) {
    let n = filled(backend).await;
    let report = n.main.layer.purger().purge_path("/users/1").await.unwrap();
    assert_removed(&report, 2);
    assert!(report.generation_bumped);
    n.check(&["/users/1?full=1", "/users/1?full=0"]).await;

    // The path is canonicalised like a request's: `%32` is `2`, and a query is ignored.
    let report = n
        .main
        .layer
        .purger()
        .purge_path("/users/%32?ignored=1")
        .await
        .unwrap();
    assert_removed(&report, 1);
    n.check(&["/users/2"]).await;
}

#[tokio::test]
async fn a_path_purge_removes_every_query_of_that_path_only_on_redis() {
    a_path_purge_removes_every_query_of_that_path_only(Backend::redis()).await;
}

#[tokio::test]
async fn a_path_purge_removes_every_query_of_that_path_only_in_memory() {
    a_path_purge_removes_every_query_of_that_path_only(Backend::memory()).await;
}

async fn a_tag_purge_removes_the_tagged_entries_only(backend: Backend) {
    let n = filled(backend).await;
    let purger = n.main.layer.purger();
    let deriver = KeyDeriver::new(SECRET, "trc", "v1");
    if let Some(redis) = n.backend.redis_server() {
        assert_eq!(members(redis, &deriver.tag_key("user:1")).len(), 1);
        assert_eq!(members(redis, &deriver.tag_key("users")).len(), 2);
    }

    let report = purger.purge_tag("user:1").await.unwrap();
    assert_removed(&report, 1);
    if let Some(redis) = n.backend.redis_server() {
        assert!(!exists(redis, &deriver.tag_key("user:1")), "tag set kept");
        // The other namespace's set of the same tag is its own.
        let other = KeyDeriver::new(SECRET, "other", "v1");
        assert_eq!(members(redis, &other.tag_key("user:1")).len(), 1);
    }
    n.check(&["/tagged/1?tag=user:1+users"]).await;
    // The miss above stored /tagged/1 again, with both of its tags.
    n.main.stored(URLS.len() as u64 + 1).await;
    n.backend.settled().await;

    let report = purger.purge_tag("users").await.unwrap();
    assert_removed(&report, 2);
    n.check(&["/tagged/1?tag=user:1+users", "/tagged/2?tag=users"])
        .await;

    // A tag that nothing carries removes nothing.
    let report = purger.purge_tag("no-such-tag").await.unwrap();
    assert_removed(&report, 0);
}

#[tokio::test]
async fn a_tag_purge_removes_the_tagged_entries_only_on_redis() {
    a_tag_purge_removes_the_tagged_entries_only(Backend::redis()).await;
}

#[tokio::test]
async fn a_tag_purge_removes_the_tagged_entries_only_in_memory() {
    a_tag_purge_removes_the_tagged_entries_only(Backend::memory()).await;
}

async fn purging_everything_empties_this_namespace_only(backend: Backend) {
    let n = filled(backend).await;
    let ours = n.backend.keys("trc");
    let theirs = n.backend.keys("other");
    assert!(ours.len() >= URLS.len(), "{ours:?}");
    assert_eq!(theirs.len(), ours.len());

    let report = n.main.layer.purger().purge_all().await.unwrap();
    // Every key of the namespace: the entries, and on Redis the tag sets too.
    assert_removed(&report, ours.len() as u64);
    assert_eq!(n.backend.keys("trc"), Vec::<String>::new());
    assert_eq!(n.backend.keys("other"), theirs);
    n.check(&URLS).await;
}

#[tokio::test]
async fn purging_everything_empties_this_namespace_only_on_redis() {
    purging_everything_empties_this_namespace_only(Backend::redis()).await;
}

#[tokio::test]
async fn purging_everything_empties_this_namespace_only_in_memory() {
    purging_everything_empties_this_namespace_only(Backend::memory()).await;
}

#[tokio::test]
async fn purges_that_cannot_name_anything_are_refused() {
    let layer = Backend::memory().layer("trc");
    let purger = layer.purger();
    assert!(purger.purge_url("no path").await.is_err());
    assert!(purger.purge_tag("").await.is_err());
    assert!(purger.purge_tag("bell\u{7}").await.is_err());
    assert!(purger.purge_path("/a%2Fb").await.is_err());
}

// ---------------------------------------------------------------------------------------------
// 2. Tags: the header, the extension, and how long tag sets live
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_tag_header_is_stripped_from_every_response_by_default() {
    let backend = Backend::memory();
    let s = site(backend.layer("trc")).await;
    let url = "/tagged/1?tag=user:1+users";
    let miss = s.expect_miss(url).await;
    assert_eq!(miss.headers.get("surrogate-key"), None);
    s.stored(1).await;
    let hit = s.expect_hit(url).await;
    assert_eq!(hit.headers.get("surrogate-key"), None);
    let bypass = s
        .client
        .get_with(url, &[("authorization", "Bearer x")])
        .await;
    assert!(bypass.cache_status().contains("fwd=bypass"));
    assert_eq!(bypass.headers.get("surrogate-key"), None);
    let write = s.client.send("POST", url, &[], Bytes::new()).await;
    assert_eq!(write.status, 200);
    assert_eq!(write.headers.get("surrogate-key"), None);

    // Stripped, but recorded: the tag still purges the entry.
    s.expect_miss(url).await;
    s.stored(2).await;
    s.expect_hit(url).await;
    let report = s.layer.purger().purge_tag("user:1").await.unwrap();
    assert_removed(&report, 1);
    s.expect_miss(url).await;
}

#[tokio::test]
async fn the_tag_header_is_kept_when_stripping_is_off() {
    let backend = Backend::redis();
    let s = site(backend.layer("trc").strip_tag_header(false)).await;
    let url = "/tagged/1?tag=user:1+users";
    let miss = s.expect_miss(url).await;
    assert_eq!(miss.headers["surrogate-key"], "user:1 users");
    s.stored(1).await;
    let hit = s.expect_hit(url).await;
    assert_eq!(hit.headers["surrogate-key"], "user:1 users");
    backend.settled().await;
    let report = s.layer.purger().purge_tag("users").await.unwrap();
    assert_removed(&report, 1);
    s.expect_miss(url).await;
}

#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

/// A handler that tags its response with the `CacheTags` extension only (no header).
async fn tagged_by_extension(State(counter): State<Counter>, Path(id): Path<String>) -> Response {
    let n = counter.0.fetch_add(1, Ordering::SeqCst) + 1;
    let mut response = format!("user {id} call={n}").into_response();
    response
        .extensions_mut()
        .insert(CacheTags(vec![format!("user:{id}"), "ext".to_owned()]));
    response
}

async fn tags_from_a_handler_extension_purge_like_header_tags(backend: Backend) {
    let layer = backend.layer("trc");
    let counter = Counter::default();
    let router = Router::new()
        .route("/ext/{id}", get(tagged_by_extension))
        .with_state(counter.clone())
        .layer(layer.clone());
    let client = HttpClient::new(serve(router).await);

    let seven = client.get("/ext/7").await;
    let eight = client.get("/ext/8").await;
    assert!(is_miss(&seven) && is_miss(&eight));
    assert!(eventually(|| layer.stats().stores >= 2).await);
    assert!(client.get("/ext/7").await.is_hit());
    assert!(client.get("/ext/8").await.is_hit());
    assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    backend.settled().await;
    if let Some(redis) = backend.redis_server() {
        let deriver = KeyDeriver::new(SECRET, "trc", "v1");
        let seven_members = members(redis, &deriver.tag_key("user:7"));
        assert_eq!(seven_members.len(), 1);
        assert!(seven_members[0].starts_with(&deriver.path_key_prefix("/ext/7").unwrap()));
        assert_eq!(members(redis, &deriver.tag_key("ext")).len(), 2);
    }

    let report = layer.purger().purge_tag("user:7").await.unwrap();
    assert_removed(&report, 1);
    let again = client.get("/ext/7").await;
    assert!(is_miss(&again), "{}", again.cache_status());
    assert_eq!(again.text(), "user 7 call=3");
    let other = client.get("/ext/8").await;
    assert!(other.is_hit(), "{}", other.cache_status());
    assert_eq!(other.body, eight.body);
}

#[tokio::test]
async fn tags_from_a_handler_extension_purge_like_header_tags_on_redis() {
    tags_from_a_handler_extension_purge_like_header_tags(Backend::redis()).await;
}

#[tokio::test]
async fn tags_from_a_handler_extension_purge_like_header_tags_in_memory() {
    tags_from_a_handler_extension_purge_like_header_tags(Backend::memory()).await;
}

#[tokio::test]
async fn a_tag_set_lives_at_least_as_long_as_each_of_its_members() {
    let backend = Backend::redis();
    let redis = backend.redis_server().unwrap();
    let s = site(backend.layer("trc")).await;
    // `shrink`: the long-lived member comes first, a shorter one must not cut the set's TTL.
    // `grow`: a short-lived member first, then longer ones (one through its stale window).
    let urls = [
        "/ttl/a?tag=shrink+long&cc=max-age%3D1000",
        "/ttl/b?tag=shrink&cc=max-age%3D100",
        "/ttl/c?tag=grow&cc=max-age%3D100",
        "/ttl/d?tag=grow&cc=max-age%3D2000",
        "/ttl/e?tag=grow&cc=max-age%3D100,+stale-while-revalidate%3D5000",
        "/ttl/f?tag=grow+shrink",
    ];
    for (i, url) in urls.iter().enumerate() {
        s.expect_miss(url).await;
        s.stored(i as u64 + 1).await;
        backend.settled().await;
    }
    let deriver = KeyDeriver::new(SECRET, "trc", "v1");
    let tag_keys = redis.keys("trc:v1:t:*");
    assert_eq!(tag_keys.len(), 3, "{tag_keys:?}");
    for tag_key in &tag_keys {
        assert!(tag_key.starts_with("trc:v1:t:{") && tag_key.ends_with('}'));
        let set_ttl = redis.ttl(tag_key);
        let set_members = members(redis, tag_key);
        assert!(!set_members.is_empty());
        for member in &set_members {
            let member_ttl = redis.ttl(member);
            assert!(member_ttl > 0, "{member} has no TTL ({member_ttl})");
            assert!(
                set_ttl >= member_ttl,
                "tag set {tag_key} (TTL {set_ttl}) expires before its member {member} (TTL {member_ttl})"
            );
        }
    }
    // The stale window counts: `grow` must outlive the 100 + 5000 s entry.
    assert!(redis.ttl(&deriver.tag_key("grow")) > 5000);
    assert!(redis.ttl(&deriver.tag_key("shrink")) > 900);
}

// ---------------------------------------------------------------------------------------------
// 3. Across instances: events and near caches
// ---------------------------------------------------------------------------------------------

/// Two instances with near caches on one Redis, each with its own origin (so each fills its own
/// entries), both listening to the events channel.
async fn two_instances(redis: &RedisServer) -> (Site, Site) {
    let instance = || {
        CacheLayer::new(RedisStore::from_url(&redis.url()).unwrap())
            .secret(SECRET)
            .jitter(0.0)
            .read_deadline(Duration::from_secs(2))
            .write_deadline(Duration::from_secs(2))
            .near_cache(8 * 1024 * 1024)
    };
    let a = site(instance()).await;
    let b = site(instance()).await;
    assert!(
        eventually(|| subscribers(redis, "trc:events") == 2).await,
        "both instances should listen to the events channel"
    );
    (a, b)
}

/// Fill `url` on both instances and check that each then hits (from its near cache).
async fn fill_both(redis: &RedisServer, a: &Site, b: &Site, url: &str) -> (Got, Got) {
    let (stores_a, stores_b) = (a.layer.stats().stores, b.layer.stats().stores);
    let from_a = a.expect_miss(url).await;
    let from_b = b.expect_miss(url).await;
    a.stored(stores_a + 1).await;
    b.stored(stores_b + 1).await;
    assert_eq!(a.expect_hit(url).await.body, from_a.body);
    assert_eq!(b.expect_hit(url).await.body, from_b.body);
    no_fill_locks(redis).await;
    (from_a, from_b)
}

/// A purge made through instance A's purger removes the entries of both instances from Redis
/// and, through the events channel, from instance B's near cache; the time it takes is printed.
async fn a_purge_on_one_instance_reaches_the_near_cache_of_another(kind: Kind) {
    let redis = RedisServer::start();
    let (a, b) = two_instances(&redis).await;
    let url = "/users/42?tag=user:42";
    let (old_a, old_b) = fill_both(&redis, &a, &b, url).await;
    let (other_a, other_b) = fill_both(&redis, &a, &b, "/users/43").await;
    let in_namespace = redis.keys("trc:v1:*").len() as u64;

    let purger = a.layer.purger();
    let report = match kind {
        Kind::Path => purger.purge_path("/users/42").await,
        Kind::Url => purger.purge_url(url).await,
        Kind::Tag => purger.purge_tag("user:42").await,
        Kind::All => purger.purge_all().await,
    }
    .unwrap();
    // One entry per instance (their hosts differ), or the whole namespace.
    let removed = if matches!(kind, Kind::All) {
        in_namespace
    } else {
        2
    };
    assert_removed(&report, removed);
    let (fresh_b, took) = b.poll_until_miss(url, &old_b).await;
    eprintln!("purge by {kind:?} on instance A reached instance B's near cache in {took:?}");
    assert_ne!(fresh_b.body, old_b.body);
    // Instance A dropped its own copy before the purge returned.
    let fresh_a = a.expect_miss(url).await;
    assert_ne!(fresh_a.body, old_a.body);
    if matches!(kind, Kind::All) {
        b.poll_until_miss("/users/43", &other_b).await;
        a.expect_miss("/users/43").await;
    } else {
        assert_eq!(a.expect_hit("/users/43").await.body, other_a.body);
        assert_eq!(b.expect_hit("/users/43").await.body, other_b.body);
    }
}

#[tokio::test]
async fn a_path_purge_on_one_instance_reaches_the_near_cache_of_another() {
    a_purge_on_one_instance_reaches_the_near_cache_of_another(Kind::Path).await;
}

#[tokio::test]
async fn a_url_purge_on_one_instance_reaches_the_near_cache_of_another() {
    a_purge_on_one_instance_reaches_the_near_cache_of_another(Kind::Url).await;
}

#[tokio::test]
async fn a_tag_purge_on_one_instance_reaches_the_near_cache_of_another() {
    a_purge_on_one_instance_reaches_the_near_cache_of_another(Kind::Tag).await;
}

#[tokio::test]
async fn purging_everything_on_one_instance_reaches_the_near_cache_of_another() {
    a_purge_on_one_instance_reaches_the_near_cache_of_another(Kind::All).await;
}

#[tokio::test]
async fn an_event_published_from_outside_purges_redis_and_every_near_cache() {
    let redis = RedisServer::start();
    let (a, b) = two_instances(&redis).await;
    let tagged = "/tagged/42?tag=user:42+users";
    let (old_a, old_b) = fill_both(&redis, &a, &b, tagged).await;
    let (plain_a, plain_b) = fill_both(&redis, &a, &b, "/users/43?tag=user:43").await;
    let tag_key = KeyDeriver::new(SECRET, "trc", "v1").tag_key("user:42");
    let tagged_keys = members(&redis, &tag_key);
    assert_eq!(tagged_keys.len(), 2, "one entry per instance (host)");

    let published = Instant::now();
    publish(&redis, r#"{"purge":{"tag":"user:42"}}"#);
    assert!(
        eventually(|| !exists(&redis, &tag_key) && !tagged_keys.iter().any(|k| exists(&redis, k)))
            .await,
        "the tagged entries are still in Redis: {:?}",
        redis.keys("trc:v1:*")
    );
    let in_store = published.elapsed();
    let (_, took_a) = a.poll_until_miss(tagged, &old_a).await;
    let (_, took_b) = b.poll_until_miss(tagged, &old_b).await;
    eprintln!(
        "an outside tag purge left Redis after {in_store:?}; instance A served fresh content \
         {took_a:?} and instance B {took_b:?} after that"
    );
    assert_eq!(
        a.expect_hit("/users/43?tag=user:43").await.body,
        plain_a.body
    );
    assert_eq!(
        b.expect_hit("/users/43?tag=user:43").await.body,
        plain_b.body
    );
}

#[tokio::test]
async fn malformed_events_change_nothing() {
    let redis = RedisServer::start();
    let (a, b) = two_instances(&redis).await;
    let urls = ["/tagged/42?tag=user:42", "/users/42"];
    let mut before = Vec::new();
    for url in urls {
        before.push(fill_both(&redis, &a, &b, url).await);
    }
    let (sentinel_a, sentinel_b) = fill_both(&redis, &a, &b, "/sentinel?tag=sentinel").await;
    let sentinel_tag = KeyDeriver::new(SECRET, "trc", "v1").tag_key("sentinel");
    let sentinel_keys = members(&redis, &sentinel_tag);
    assert_eq!(sentinel_keys.len(), 2);
    // Every entry and tag set but the sentinel's (fill locks come and go).
    let kept: Vec<String> = redis
        .keys("trc:v1:*")
        .into_iter()
        .filter(|key| !sentinel_keys.contains(key) && *key != sentinel_tag && !key.contains(":l:"))
        .collect();
    assert_eq!(kept.len(), 4 + 1, "{kept:?}");

    for message in [
        "not json",
        r#"{"purge":{"all":false}}"#,
        r#"{"purge":"all"}"#,
        r#"{"purge":{"all":true},"extra":1}"#,
        r#"{"purge":{"tag":"user:42"},"source":7}"#,
        r#"{"purge":{"tag":"user:42","path":"/users/42"}}"#,
        r#"{"purge":{"tag":""}}"#,
        r#"{"purge":{"url":"no path"}}"#,
        r#"{"purge":{"path":"/users/42"}"#,
        r#"{"fill":{}}"#,
    ] {
        publish(&redis, message);
    }
    // Messages are handled in order: once this one has taken effect everywhere, the malformed
    // ones before it have been seen (and ignored).
    publish(&redis, r#"{"purge":{"tag":"sentinel"}}"#);
    a.poll_until_miss("/sentinel?tag=sentinel", &sentinel_a)
        .await;
    b.poll_until_miss("/sentinel?tag=sentinel", &sentinel_b)
        .await;

    for (url, (old_a, old_b)) in urls.iter().zip(&before) {
        assert_eq!(a.expect_hit(url).await.body, old_a.body);
        assert_eq!(b.expect_hit(url).await.body, old_b.body);
    }
    for key in &kept {
        assert!(exists(&redis, key), "{key} was removed");
    }
}

/// An outside tool publishes the same purge again (the content changed again since the first):
/// the second one must reach Redis too, not only the near caches.
#[tokio::test]
async fn the_same_outside_event_published_twice_purges_twice() {
    let redis = RedisServer::start();
    let (a, b) = two_instances(&redis).await;
    let url = "/tagged/42?tag=user:42";
    let tag_key = KeyDeriver::new(SECRET, "trc", "v1").tag_key("user:42");
    let event = r#"{"purge":{"tag":"user:42"}}"#;

    let (old_a, _) = fill_both(&redis, &a, &b, url).await;
    publish(&redis, event);
    assert!(eventually(|| !exists(&redis, &tag_key)).await);
    a.poll_until_miss(url, &old_a).await;
    a.stored(2).await;
    let refilled = a.expect_hit(url).await;
    no_fill_locks(&redis).await;
    assert_eq!(members(&redis, &tag_key).len(), 1);

    // The content changed again: the same purge, published again, must remove the new entry.
    publish(&redis, event);
    assert!(
        eventually(|| !exists(&redis, &tag_key)).await,
        "the second, identical event did not purge Redis: {:?} still holds {:?}",
        tag_key,
        members(&redis, &tag_key)
    );
    a.poll_until_miss(url, &refilled).await;
}

// ---------------------------------------------------------------------------------------------
// 4. A purge during a slow fill wins
// ---------------------------------------------------------------------------------------------

/// A purge lands while the origin is still answering a fill: the fill's client gets its
/// answer, but the write is fenced off and the next request is a miss.
async fn a_purge_during_a_slow_fill_wins(backend: Backend, kind: Kind) {
    let s = site(backend.layer("trc")).await;
    let url = "/slow/1?delay=800&tag=slow:1";
    let pending = {
        let client = s.client.clone();
        tokio::spawn(async move { client.get(url).await })
    };
    assert!(eventually(|| s.calls.of("/slow/1") == 1).await);
    assert!(!pending.is_finished());

    let purger = s.layer.purger();
    let report = match kind {
        Kind::Path => purger.purge_path("/slow/1").await,
        Kind::Tag => purger.purge_tag("slow:1").await,
        Kind::Url => purger.purge_url(url).await,
        Kind::All => purger.purge_all().await,
    }
    .unwrap();
    assert!(report.is_complete(), "{kind:?}: {report:?}");
    if !matches!(kind, Kind::All) {
        // (A namespace purge also removes the fill's lock.)
        assert_eq!(report.removed, 0, "{kind:?}: nothing was stored yet");
    }

    // The fill still answers its own client, but its write is refused.
    let first = pending.await.unwrap();
    assert_eq!(first.status, 200);
    assert!(first.text().contains("call=1"), "{}", first.text());
    assert!(
        eventually(|| s.layer.stats().fenced_writes >= 1).await,
        "{kind:?}: {:?}",
        s.layer.stats()
    );
    assert_eq!(s.layer.stats().stores, 0, "{kind:?}");
    assert_eq!(
        backend
            .keys("trc")
            .iter()
            .filter(|k| k.contains(":e:"))
            .count(),
        0
    );

    // The old content never comes back: the next request fills again, and that one is kept.
    let second = s.expect_miss(url).await;
    assert!(second.text().contains("call=2"), "{}", second.text());
    s.stored(1).await;
    let third = s.expect_hit(url).await;
    assert_eq!(third.body, second.body);
}

#[tokio::test]
async fn a_path_purge_during_a_slow_fill_wins_on_redis() {
    a_purge_during_a_slow_fill_wins(Backend::redis(), Kind::Path).await;
}

#[tokio::test]
async fn a_path_purge_during_a_slow_fill_wins_in_memory() {
    a_purge_during_a_slow_fill_wins(Backend::memory(), Kind::Path).await;
}

#[tokio::test]
async fn a_tag_purge_during_a_slow_fill_wins_on_redis() {
    a_purge_during_a_slow_fill_wins(Backend::redis(), Kind::Tag).await;
}

#[tokio::test]
async fn a_tag_purge_during_a_slow_fill_wins_in_memory() {
    a_purge_during_a_slow_fill_wins(Backend::memory(), Kind::Tag).await;
}

#[tokio::test]
async fn a_url_purge_during_a_slow_fill_wins_on_redis() {
    a_purge_during_a_slow_fill_wins(Backend::redis(), Kind::Url).await;
}

#[tokio::test]
async fn a_url_purge_during_a_slow_fill_wins_in_memory() {
    a_purge_during_a_slow_fill_wins(Backend::memory(), Kind::Url).await;
}

#[tokio::test]
async fn purging_everything_during_a_slow_fill_wins_on_redis() {
    a_purge_during_a_slow_fill_wins(Backend::redis(), Kind::All).await;
}

#[tokio::test]
async fn purging_everything_during_a_slow_fill_wins_in_memory() {
    a_purge_during_a_slow_fill_wins(Backend::memory(), Kind::All).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Writes through the layer invalidate their path
// ---------------------------------------------------------------------------------------------

const ITEM_URLS: [&str; 3] = ["/items/5", "/items/5?page=2", "/items/6"];

async fn items_site(layer: CacheLayer) -> Site {
    let s = site(layer).await;
    for url in ITEM_URLS {
        s.expect_miss(url).await;
    }
    s.stored(ITEM_URLS.len() as u64).await;
    for url in ITEM_URLS {
        s.expect_hit(url).await;
    }
    s
}

async fn a_successful_write_invalidates_the_entries_of_its_path(backend: Backend) {
    let s = items_site(backend.layer("trc")).await;
    let mut stores = ITEM_URLS.len() as u64;
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        // Writes usually carry credentials and a body: they still invalidate.
        let write = s
            .client
            .send(
                method,
                "/items/5",
                &[
                    ("cookie", "session=1"),
                    ("content-type", "application/json"),
                ],
                Bytes::from_static(b"{\"name\":\"new\"}"),
            )
            .await;
        assert_eq!(write.status, 200, "{method}");
        assert!(write.cache_status().contains("fwd=bypass"), "{method}");
        // The purge is done before the write's response is handed back: no waiting.
        s.expect_miss("/items/5").await;
        s.expect_miss("/items/5?page=2").await;
        s.expect_hit("/items/6").await;
        stores += 2;
        s.stored(stores).await;
        s.expect_hit("/items/5").await;
    }
    // A redirect is a success too.
    let write = s
        .client
        .send("POST", "/items/5?status=303", &[], Bytes::new())
        .await;
    assert_eq!(write.status, 303);
    s.expect_miss("/items/5").await;
    s.expect_hit("/items/6").await;
}

#[tokio::test]
async fn a_successful_write_invalidates_the_entries_of_its_path_on_redis() {
    a_successful_write_invalidates_the_entries_of_its_path(Backend::redis()).await;
}

#[tokio::test]
async fn a_successful_write_invalidates_the_entries_of_its_path_in_memory() {
    a_successful_write_invalidates_the_entries_of_its_path(Backend::memory()).await;
}

async fn a_failed_write_invalidates_nothing(backend: Backend) {
    let s = items_site(backend.layer("trc")).await;
    for status in ["500", "503", "404", "409"] {
        let write = s
            .client
            .send(
                "POST",
                &format!("/items/5?status={status}"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(write.status.as_str(), status);
        for url in ITEM_URLS {
            s.expect_hit(url).await;
        }
    }
}

#[tokio::test]
async fn a_failed_write_invalidates_nothing_on_redis() {
    a_failed_write_invalidates_nothing(Backend::redis()).await;
}

#[tokio::test]
async fn a_failed_write_invalidates_nothing_in_memory() {
    a_failed_write_invalidates_nothing(Backend::memory()).await;
}

#[tokio::test]
async fn writes_invalidate_nothing_when_invalidation_is_off() {
    let backend = Backend::redis();
    let s = items_site(backend.layer("trc").invalidate_on_write(false)).await;
    for method in ["POST", "PUT", "DELETE"] {
        let write = s.client.send(method, "/items/5", &[], Bytes::new()).await;
        assert_eq!(write.status, 200);
        for url in ITEM_URLS {
            s.expect_hit(url).await;
        }
    }
    let redis = backend.redis_server().unwrap();
    assert_eq!(redis.keys("trc:v1:*:g"), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// 6. Every key the crate writes expires
// ---------------------------------------------------------------------------------------------

/// Every key on the server has a positive TTL; returns the keys.
fn assert_every_key_expires(redis: &RedisServer) -> Vec<String> {
    let keys = redis.keys("*");
    for key in &keys {
        let ttl = redis.ttl(key);
        assert!(ttl > 0, "{key} has no expiry (TTL {ttl})");
    }
    keys
}

#[tokio::test]
async fn every_key_the_crate_writes_has_a_ttl() {
    let backend = Backend::redis();
    let redis = backend.redis_server().unwrap();
    let s = site(backend.layer("trc")).await;
    let other = site(backend.layer("other").near_cache(1024 * 1024)).await;
    assert!(eventually(|| subscribers(redis, "trc:events") == 1).await);

    let urls = [
        "/plain/1",
        "/tagged/1?tag=a+b",
        "/swr/1?cc=max-age%3D60,+stale-while-revalidate%3D30,+stale-if-error%3D30",
    ];
    let vary = "/vary/1?vary=accept-language";
    for site in [&s, &other] {
        for url in urls {
            site.expect_miss(url).await;
        }
        for language in ["en", "de"] {
            let got = site
                .client
                .get_with(vary, &[("accept-language", language)])
                .await;
            assert!(is_miss(&got), "{}", got.cache_status());
        }
        site.stored(urls.len() as u64 + 2).await;
    }
    // Entries, Vary markers and tag sets.
    let keys = assert_every_key_expires(redis);
    assert!(keys.iter().any(|k| k.contains(":t:")), "{keys:?}");

    // A fill lock, while a slow fill holds it.
    let slow = {
        let client = s.client.clone();
        tokio::spawn(async move { client.get("/slow/1?delay=800").await })
    };
    assert!(eventually(|| s.calls.of("/slow/1") == 1).await);
    let keys = assert_every_key_expires(redis);
    assert!(keys.iter().any(|k| k.contains(":l:")), "{keys:?}");
    assert!(is_miss(&slow.await.unwrap()));
    s.stored(urls.len() as u64 + 3).await;

    // Purges of every kind (path purges write generations), a write that invalidates, and an
    // outside event (whose election lock is a key too).
    let purger = s.layer.purger();
    assert!(purger.purge_path("/plain/1").await.unwrap().is_complete());
    let report = purger.purge_url(vary).await.unwrap();
    assert_removed(&report, 2);
    assert!(purger.purge_tag("b").await.unwrap().is_complete());
    let write = s.client.send("POST", "/swr/1", &[], Bytes::new()).await;
    assert_eq!(write.status, 200);
    let report = other.layer.purger().purge_path("/plain/1").await.unwrap();
    assert!(report.is_complete());
    publish(redis, r#"{"purge":{"path":"/tagged/1"}}"#);
    assert!(
        eventually(|| redis.keys("trc:v1:*:g").len() == 3).await,
        "{:?}",
        redis.keys("*")
    );
    // The election lock is released once the event is applied (and expires anyway).
    let keys = assert_every_key_expires(redis);
    assert!(!keys.iter().any(|k| k.contains(":x:")), "{keys:?}");
    // Refill under the new generations.
    for url in urls {
        s.expect_miss(url).await;
    }
    s.stored(2 * urls.len() as u64 + 3).await;
    backend.settled().await;

    let keys = assert_every_key_expires(redis);
    for part in [":e:", ":g", ":t:"] {
        assert!(
            keys.iter().any(|k| k.contains(part)),
            "no {part} key in {keys:?}"
        );
    }
    assert!(keys.iter().any(|k| k.starts_with("other:v1:")));
}

// ---------------------------------------------------------------------------------------------
// 7. Bulk purges never block Redis
// ---------------------------------------------------------------------------------------------

const BULK: usize = 100_000;

/// The two tests that write 100k keys run one after the other: on a small machine, one's load
/// would show up in the other's slow log.
static BULK_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Write `keys` straight to Redis (pipelined), each with an expiry; the values are junk.
async fn write_keys(connection: &mut redis::aio::MultiplexedConnection, keys: &[String]) {
    for chunk in keys.chunks(5_000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("SET")
                .arg(key)
                .arg(&b"not an entry"[..])
                .arg("EX")
                .arg(3600)
                .ignore();
        }
        pipe.query_async::<()>(connection).await.unwrap();
    }
}

fn dbsize(redis: &RedisServer) -> i64 {
    redis.cmd_str(&["DBSIZE"]).as_int().unwrap()
}

/// One entry of the slow log.
#[derive(Debug)]
struct SlowCommand {
    name: String,
    /// Arguments, the command's name included (the slow log shows 32 and counts the rest).
    arguments: usize,
    micros: i64,
}

impl std::fmt::Display for SlowCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, arguments, micros) = (&self.name, self.arguments, self.micros);
        write!(f, "{name} with {arguments} arguments ran {micros} us")
    }
}

fn describe(commands: &[SlowCommand]) -> String {
    let lines: Vec<String> = commands.iter().map(ToString::to_string).collect();
    lines.join("; ")
}

fn slow_commands(redis: &RedisServer) -> Vec<SlowCommand> {
    let reply = redis.cmd_str(&["SLOWLOG", "GET", "128"]);
    reply
        .as_array()
        .unwrap_or_default()
        .iter()
        .map(|entry| {
            let fields = entry.as_array().unwrap_or_default();
            let shown: Vec<String> = fields
                .get(3)
                .and_then(Reply::as_array)
                .unwrap_or_default()
                .iter()
                .filter_map(Reply::as_bytes)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            // The last shown argument may be "... (N more arguments)".
            let more = shown
                .last()
                .and_then(|last| last.strip_prefix("... ("))
                .and_then(|rest| rest.strip_suffix(" more arguments)"))
                .and_then(|n| n.parse::<usize>().ok());
            let arguments = match more {
                Some(more) => shown.len() - 1 + more,
                None => shown.len(),
            };
            SlowCommand {
                name: shown.first().cloned().unwrap_or_default().to_uppercase(),
                arguments,
                micros: fields.get(2).and_then(Reply::as_int).unwrap_or(-1),
            }
        })
        .collect()
}

/// Whatever the slow log says, no command of a bulk purge may be unbounded: no `KEYS`, no
/// script, no command with thousands of keys.
fn assert_bounded(commands: &[SlowCommand]) {
    for command in commands {
        assert!(
            matches!(command.name.as_str(), "SCAN" | "SSCAN" | "UNLINK" | "MGET")
                && command.arguments <= 1_001,
            "an unbounded command during a bulk purge: {command}"
        );
    }
}

fn reset_slowlog(redis: &RedisServer) {
    assert!(redis
        .cmd_str(&["CONFIG", "SET", "slowlog-log-slower-than", "10000"])
        .is_ok());
    assert!(redis.cmd_str(&["SLOWLOG", "RESET"]).is_ok());
    assert_eq!(redis.cmd_str(&["SLOWLOG", "LEN"]).as_int(), Some(0));
}

/// A command that is slow because of how much it does is slow every time; one that a busy
/// machine preempted is not. So a bulk purge gets a few tries to leave the slow log empty.
const SLOWLOG_TRIES: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_100k_entries_by_path_and_by_namespace_never_blocks_redis() {
    let _one_at_a_time = BULK_TESTS.lock().await;
    let backend = Backend::redis();
    let redis = backend.redis_server().unwrap();
    let s = site(backend.layer("trc")).await;
    let purger = s.layer.purger();
    let deriver = KeyDeriver::new(SECRET, "trc", "v1");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();

    // Keys of another namespace that nothing may touch.
    let theirs: Vec<String> = (0..1_000)
        .map(|i| format!("other:v1:{{x}}:e:{i}"))
        .collect();
    write_keys(&mut connection, &theirs).await;

    // 100k entries of one path.
    let prefix = deriver.path_key_prefix("/bulk").unwrap();
    let ours: Vec<String> = (0..BULK).map(|i| format!("{prefix}:e:{i:032x}")).collect();
    let mut slow = Vec::new();
    for attempt in 0..SLOWLOG_TRIES {
        write_keys(&mut connection, &ours).await;
        // After the first purge, the path's generation is there too.
        let generation = usize::from(attempt > 0);
        assert_eq!(dbsize(redis), (BULK + theirs.len() + generation) as i64);
        reset_slowlog(redis);
        let started = Instant::now();
        let report = purger.purge_path("/bulk").await.unwrap();
        eprintln!(
            "purging {BULK} entries of one path took {:?}",
            started.elapsed()
        );
        assert_removed(&report, BULK as u64);
        assert!(report.generation_bumped);
        // Only the path's generation is left of it.
        assert_eq!(dbsize(redis), (theirs.len() + 1) as i64);
        let commands = slow_commands(redis);
        assert_bounded(&commands);
        if commands.is_empty() {
            break;
        }
        eprintln!(
            "slow commands during the path purge: {}",
            describe(&commands)
        );
        slow.push(describe(&commands));
    }
    assert!(
        slow.len() < SLOWLOG_TRIES,
        "every path purge ran commands slower than 10 ms: {slow:?}"
    );

    // 100k entries over 1000 paths.
    let ours: Vec<String> = (0..BULK)
        .map(|i| {
            let prefix = deriver
                .path_key_prefix(&format!("/bulk/{}", i % 1_000))
                .unwrap();
            format!("{prefix}:e:{i:032x}")
        })
        .collect();
    let mut slow = Vec::new();
    for attempt in 0..SLOWLOG_TRIES {
        write_keys(&mut connection, &ours).await;
        let in_namespace = dbsize(redis) - theirs.len() as i64;
        // The first time, the generation of `/bulk` goes too.
        let generation = i64::from(attempt == 0);
        assert_eq!(in_namespace, BULK as i64 + generation);
        reset_slowlog(redis);
        let started = Instant::now();
        let report = purger.purge_all().await.unwrap();
        eprintln!(
            "purging a namespace of {in_namespace} keys took {:?}",
            started.elapsed()
        );
        assert_removed(&report, in_namespace as u64);
        assert_eq!(dbsize(redis), theirs.len() as i64);
        let commands = slow_commands(redis);
        assert_bounded(&commands);
        if commands.is_empty() {
            break;
        }
        eprintln!(
            "slow commands during the namespace purge: {}",
            describe(&commands)
        );
        slow.push(describe(&commands));
    }
    assert!(
        slow.len() < SLOWLOG_TRIES,
        "every namespace purge ran commands slower than 10 ms: {slow:?}"
    );
    assert_eq!(redis.keys("other:v1:*"), {
        let mut theirs = theirs.clone();
        theirs.sort();
        theirs
    });

    // The layer's connection still works: a request is stored and hit, and purged again.
    s.expect_miss("/after").await;
    s.stored(1).await;
    s.expect_hit("/after").await;
    let report = purger.purge_path("/after").await.unwrap();
    assert_removed(&report, 1);
    s.expect_miss("/after").await;
}

// ---------------------------------------------------------------------------------------------
// 8. Requests during a long purge
// ---------------------------------------------------------------------------------------------

/// A request that reads the entry from Redis while a purge walks the namespace must not put
/// the purged content back into the near cache: once the purge has returned, the next request
/// must not see the old content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_a_long_purge_do_not_bring_the_old_entry_back_into_the_near_cache() {
    let _one_at_a_time = BULK_TESTS.lock().await;
    let backend = Backend::redis();
    let redis = backend.redis_server().unwrap();
    let s = site(backend.layer("trc").near_cache(8 * 1024 * 1024)).await;
    let purger = s.layer.purger();
    let deriver = KeyDeriver::new(SECRET, "trc", "v1");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let junk: Vec<String> = (0..BULK)
        .map(|i| {
            let prefix = deriver
                .path_key_prefix(&format!("/junk/{}", i % 1_000))
                .unwrap();
            format!("{prefix}:e:{i:032x}")
        })
        .collect();
    write_keys(&mut connection, &junk).await;

    let old = s.expect_miss("/hot").await;
    s.stored(1).await;
    s.expect_hit("/hot").await;

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let client = s.client.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut requests = 0_u64;
            while !stop.load(Ordering::SeqCst) {
                client.get("/hot").await;
                requests += 1;
            }
            requests
        })
    };
    let report = purger.purge_all().await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let requests = reader.await.unwrap();
    eprintln!("{requests} requests of /hot ran during the namespace purge");
    assert!(report.is_complete());
    assert!(report.removed >= BULK as u64);

    let after = s.client.get("/hot").await;
    assert_ne!(
        after.body,
        old.body,
        "the purged entry was served after the purge returned: {}",
        after.cache_status()
    );
}

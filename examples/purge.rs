//! Purging, end to end: tagged responses, writes that invalidate their own path, the
//! authenticated purge endpoint, and a second instance of the service on the same store.
//!
//! Run with:
//!
//! ```text
//! cargo run --example purge --features axum
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example purge --features axum
//! cargo run --example purge --features axum -- --serve 127.0.0.1:3000
//! ```
//!
//! Without arguments it starts two instances of a small users API on loopback, drives a scripted
//! walk-through over real HTTP, prints one line per step and exits (with status 1 if a step did
//! not behave as described). With `REDIS_URL` set both instances cache in Redis (in the
//! `purge-demo` namespace, emptied first) and keep a near cache in process; purges reach the
//! other instance's near cache over Redis pub/sub. Without it they share one in-process memory
//! store: that works here only because both live in one process.
//!
//! `--serve ADDR` runs one instance on ADDR until interrupted. The purge token is `PURGE_TOKEN`
//! (default `demo-token`):
//!
//! ```text
//! curl -i http://127.0.0.1:3000/users/1
//! curl -i -X PUT --data 'Ada Lovelace' http://127.0.0.1:3000/users/1
//! curl -i -H 'Authorization: Bearer demo-token' \
//!     --data '{"purge":{"tag":"user:1"}}' http://127.0.0.1:3000/admin/purge
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_response_cache::admin::PurgeRouter;
use tower_response_cache::{CacheLayer, CacheTags, MemoryStore, Route};

/// The users "database" both instances serve from.
type Db = Arc<Mutex<BTreeMap<u32, String>>>;

fn seed() -> Db {
    let users = [(1, "Ada"), (2, "Grace")];
    Arc::new(Mutex::new(
        users
            .into_iter()
            .map(|(id, name)| (id, name.to_owned()))
            .collect(),
    ))
}

fn names(db: &Db) -> BTreeMap<u32, String> {
    match db.lock() {
        Ok(users) => users.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// One user, tagged `user:{id}` through the `Surrogate-Key` header (which the layer strips).
async fn user(State(db): State<Db>, Path(id): Path<u32>) -> Response {
    match names(&db).get(&id) {
        Some(name) => (
            [("surrogate-key", format!("user:{id} users"))],
            format!("{{\"id\":{id},\"name\":\"{name}\"}}"),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Rename a user. The cache layer purges `/users/{id}` by itself once this has succeeded.
async fn rename(State(db): State<Db>, Path(id): Path<u32>, name: String) -> Response {
    let name: String = name
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ')
        .take(64)
        .collect();
    let mut users = match db.lock() {
        Ok(users) => users,
        Err(poisoned) => poisoned.into_inner(),
    };
    match users.get_mut(&id) {
        Some(slot) => {
            *slot = name.clone();
            format!("{{\"id\":{id},\"name\":\"{name}\"}}").into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The list, tagged with every user's tag through the [`CacheTags`] extension.
async fn list(State(db): State<Db>) -> Response {
    let users = names(&db);
    let body = users
        .iter()
        .map(|(id, name)| format!("{{\"id\":{id},\"name\":\"{name}\"}}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut response = format!("[{body}]").into_response();
    let mut tags: Vec<String> = users.keys().map(|id| format!("user:{id}")).collect();
    tags.push("users".to_owned());
    response.extensions_mut().insert(CacheTags(tags));
    response
}

/// One instance: the cached API, with the purge endpoint nested at `/admin` after the cache
/// layer (so purges do not go through the cache).
fn app(db: Db, cache: &CacheLayer, token: &str) -> Result<Router, tower_response_cache::Error> {
    let admin = PurgeRouter::try_new(cache.purger(), token)?.into_router();
    Ok(Router::new()
        .route("/users", get(list))
        .route("/users/{id}", get(user).put(rename))
        .with_state(db)
        .layer(cache.clone())
        .nest("/admin", admin))
}

/// The two instances' cache layers, and whether they cache in Redis.
async fn layers() -> Result<(CacheLayer, CacheLayer, bool), tower_response_cache::Error> {
    let configure = |layer: CacheLayer| {
        layer
            .default_ttl(Duration::from_secs(60))
            .route(Route::template("/users/{id}").ttl(Duration::from_secs(300)))
    };
    match std::env::var("REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty())
    {
        Some(url) => {
            // Each instance with its own connections, as two processes would have.
            let lookup = |name: &str| match name {
                "REDIS_URL" => Some(url.clone()),
                "CACHE_PREFIX" => Some("purge-demo".to_owned()),
                _ => None,
            };
            let a = configure(CacheLayer::from_lookup(lookup)?.near_cache(1 << 20));
            let b = configure(CacheLayer::from_lookup(lookup)?.near_cache(1 << 20));
            a.ping().await?;
            a.purger().purge_all().await?;
            Ok((a, b, true))
        }
        None => {
            let store = Arc::new(MemoryStore::new());
            let a = configure(CacheLayer::with_store(store.clone()));
            let b = configure(CacheLayer::with_store(store));
            Ok((a, b, false))
        }
    }
}

/// What the instances share, for the first line of output.
fn store_note(redis: bool) -> &'static str {
    if redis {
        "store: Redis (namespace purge-demo, emptied first); each instance also has a near \
         cache, and purges reach the other instance's over Redis pub/sub"
    } else {
        "store: memory. A memory store is per process: the two instances share it only because \
         they run in this one process (set REDIS_URL for instances in separate processes)"
    }
}

async fn serve(router: Router, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            eprintln!("server error: {err}");
        }
    });
    Ok(local)
}

/// One instance as the walk-through sees it.
struct Instance {
    name: &'static str,
    base: String,
    cache: CacheLayer,
}

/// What one request got.
struct Got {
    status: u16,
    outcome: &'static str,
    body: String,
}

struct Walk {
    client: Client<HttpConnector, Full<Bytes>>,
    token: String,
    /// Whether the instances cache in Redis (with near caches).
    redis: bool,
    step: u32,
    failures: u32,
}

/// One request of the walk-through.
struct Call<'a> {
    method: &'static str,
    path: &'a str,
    with_token: bool,
    body: &'a str,
}

impl Walk {
    async fn send(&self, on: &Instance, call: &Call<'_>) -> Result<Got, String> {
        let mut request = http::Request::builder()
            .method(call.method)
            .uri(format!("{}{}", on.base, call.path))
            // Keys include the host: send the one name both instances serve, as clients of a
            // load-balanced service do.
            .header("host", "users.example");
        if call.with_token {
            request = request.header("authorization", format!("Bearer {}", self.token));
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(call.body.as_bytes())))
            .map_err(|err| err.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| err.to_string())?;
        let status = response.status().as_u16();
        let cache_status = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let outcome = if cache_status.contains("; hit") {
            "hit"
        } else if cache_status.contains("fwd=miss") {
            "miss"
        } else if cache_status.contains("fwd=bypass") {
            "bypass"
        } else {
            "-"
        };
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| err.to_string())?
            .to_bytes();
        Ok(Got {
            status,
            outcome,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Send a request, check what it got, and print it as one step. With `settle`, on Redis, a
    /// hit that is not the expected answer yet is repeated for up to 2 s first: a purge reaches
    /// the other instance's near cache asynchronously (and repeating a near-cache hit changes
    /// nothing).
    async fn step(
        &mut self,
        on: &Instance,
        call: Call<'_>,
        expect: impl Fn(&Got) -> bool,
        settle: bool,
        comment: &str,
    ) {
        self.step += 1;
        let mut tries = if settle && self.redis { 200 } else { 1 };
        let (got, ok) = loop {
            let got = self.send(on, &call).await.unwrap_or_else(|err| Got {
                status: 0,
                outcome: "-",
                body: format!("request failed: {err}"),
            });
            let ok = expect(&got);
            tries -= 1;
            // Only a hit can be an old near-cache copy; anything else is the answer.
            if ok || tries == 0 || got.outcome != "hit" {
                break (got, ok);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if !ok {
            self.failures += 1;
        }
        let request = match call.body {
            "" => format!("{} {}", call.method, call.path),
            body => format!("{} {} {body}", call.method, call.path),
        };
        println!(
            "{:>2}. {} {request:<44} -> {} {:<6} {}  # {comment}{}",
            self.step,
            on.name,
            got.status,
            got.outcome,
            got.body,
            if ok { "" } else { "  [UNEXPECTED]" }
        );
    }

    async fn get(
        &mut self,
        on: &Instance,
        path: &str,
        expect: impl Fn(&Got) -> bool,
        comment: &str,
    ) {
        let call = Call {
            method: "GET",
            path,
            with_token: false,
            body: "",
        };
        self.step(on, call, expect, false, comment).await;
    }
}

/// Wait (at most 5 s) until the instance's background writes have stored `count` responses.
async fn stored(on: &Instance, count: u64) {
    for _ in 0..500 {
        if on.cache.stats().stores >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is(status: u16, outcome: &'static str, text: &'static str) -> impl Fn(&Got) -> bool {
    move |got| got.status == status && got.outcome == outcome && got.body.contains(text)
}

fn status(status: u16) -> impl Fn(&Got) -> bool {
    move |got| got.status == status
}

fn purge<'a>(with_token: bool, body: &'a str) -> Call<'a> {
    Call {
        method: "POST",
        path: "/admin/purge",
        with_token,
        body,
    }
}

async fn walk_through(token: String) -> Result<u32, Box<dyn std::error::Error>> {
    let db = seed();
    let (cache_a, cache_b, redis) = layers().await?;
    let localhost: SocketAddr = ([127, 0, 0, 1], 0).into();
    let addr_a = serve(app(db.clone(), &cache_a, &token)?, localhost).await?;
    let addr_b = serve(app(db, &cache_b, &token)?, localhost).await?;
    println!("{}", store_note(redis));
    println!("instance A on http://{addr_a}, instance B on http://{addr_b}");
    let a = Instance {
        name: "A",
        base: format!("http://{addr_a}"),
        cache: cache_a,
    };
    let b = Instance {
        name: "B",
        base: format!("http://{addr_b}"),
        cache: cache_b,
    };
    let mut walk = Walk {
        client: Client::builder(TokioExecutor::new()).build_http(),
        token,
        redis,
        step: 0,
        failures: 0,
    };

    walk.get(
        &a,
        "/users/1",
        is(200, "miss", "Ada"),
        "cold: the handler answers, the layer stores it",
    )
    .await;
    stored(&a, 1).await;
    walk.get(
        &a,
        "/users/1",
        is(200, "hit", "Ada"),
        "answered from the cache",
    )
    .await;
    walk.get(
        &b,
        "/users/1",
        is(200, "hit", "Ada"),
        "the other instance finds it in the shared store",
    )
    .await;
    walk.get(
        &a,
        "/users",
        is(200, "miss", "Ada"),
        "the list, tagged user:1 user:2 users by CacheTags",
    )
    .await;
    stored(&a, 2).await;
    let put = Call {
        method: "PUT",
        path: "/users/1",
        with_token: false,
        body: "Ada Lovelace",
    };
    walk.step(
        &a,
        put,
        is(200, "bypass", "Lovelace"),
        false,
        "a write: once it succeeds the layer purges /users/1",
    )
    .await;
    walk.get(
        &a,
        "/users/1",
        is(200, "miss", "Lovelace"),
        "the writer reads its own write",
    )
    .await;
    stored(&a, 3).await;
    let read = Call {
        method: "GET",
        path: "/users/1",
        with_token: false,
        body: "",
    };
    walk.step(
        &b,
        read,
        is(200, "hit", "Lovelace"),
        true,
        "the other instance sees the new name too",
    )
    .await;
    walk.get(
        &a,
        "/users",
        is(200, "hit", "\"Ada\""),
        "the list is still old: the write purged only its own path",
    )
    .await;
    let tag = r#"{"purge":{"tag":"user:1"}}"#;
    walk.step(
        &a,
        purge(false, tag),
        status(401),
        false,
        "no token: refused",
    )
    .await;
    let purged = |got: &Got| got.status == 200 && got.body.contains("\"complete\":true");
    walk.step(
        &a,
        purge(true, tag),
        purged,
        false,
        "purge every entry tagged user:1",
    )
    .await;
    walk.get(
        &a,
        "/users",
        is(200, "miss", "Lovelace"),
        "the list is fresh again",
    )
    .await;
    let read = Call {
        method: "GET",
        path: "/users/1",
        with_token: false,
        body: "",
    };
    walk.step(
        &b,
        read,
        is(200, "miss", "Lovelace"),
        true,
        "the tag purge reached B too",
    )
    .await;
    walk.step(
        &a,
        purge(true, r#"{"purge":{"path":"/"}}"#),
        status(400),
        false,
        "too broad: refused",
    )
    .await;
    walk.step(
        &a,
        purge(true, r#"{"purge":{"all":true}}"#),
        status(403),
        false,
        "everything: only with allow_all(true)",
    )
    .await;
    Ok(walk.failures)
}

async fn serve_forever(addr: &str, token: String) -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = addr.parse()?;
    let (cache, _, redis) = layers().await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("{}", store_note(redis));
    println!("serving on http://{local} (purge token from PURGE_TOKEN); stop with Ctrl-C");
    axum::serve(listener, app(seed(), &cache, &token)?).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let token = std::env::var("PURGE_TOKEN").unwrap_or_else(|_| "demo-token".to_owned());
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => match walk_through(token).await {
            Ok(0) => {
                println!("every step behaved as described");
                ExitCode::SUCCESS
            }
            Ok(failures) => {
                eprintln!("{failures} step(s) did not behave as described");
                ExitCode::FAILURE
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
        [flag, addr] if flag == "--serve" => match serve_forever(addr, token).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: purge [--serve ADDR]");
            ExitCode::from(2)
        }
    }
}

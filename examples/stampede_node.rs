//! One instance of a cached service on a shared Redis, for the multi-process stampede test.
//!
//! Run with:
//!
//! ```text
//! cargo run --example stampede_node -- --redis redis://127.0.0.1:6379/ \
//!     --origin http://127.0.0.1:9000 --requests 250 --path '/cold?delay=200'
//! ```
//!
//! The node puts a [`CacheLayer`] on a [`RedisStore`] in front of a small in-process service
//! that fetches every request it is asked from the shared origin over HTTP (`GET <origin><path>`,
//! copying the status, `Cache-Control` and body back), so the origin sees every origin call of
//! every node. It then fires `--requests` concurrent requests for one path through the layer,
//! waits for all of them and prints one JSON line:
//!
//! ```text
//! {"path":"/cold?delay=200","requests":250,"statuses":{"200":250},"miss":1,"collapsed":249,
//!  "hit":0,"other":0,"origin_calls":1,"bodies":["path=/cold ... call=1"],"stats":{...}}
//! ```
//!
//! With `--stdin` instead of `--path`, the node first prints `ready` (once its Redis connection
//! and its subscription to the cache's events channel work), then reads one path per line from
//! stdin, fires the requests for each and prints its JSON line, until stdin ends. Several nodes
//! started this way can be released at the same moment by writing the same line to each.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http::header::CACHE_CONTROL;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tower::ServiceExt;
use tower_response_cache::{CacheLayer, RedisStore, DEFAULT_NAMESPACE};

/// What the node was asked to do.
#[derive(Debug)]
struct Args {
    redis: String,
    origin: String,
    requests: usize,
    /// `None`: read paths from stdin.
    path: Option<String>,
}

const USAGE: &str = "usage: stampede_node --redis URL --origin http://HOST:PORT --requests N \
                     (--path PATH | --stdin)";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut redis, mut origin, mut requests, mut path, mut stdin) = (None, None, 250, None, false);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--redis" => redis = Some(value()?),
            "--origin" => origin = Some(value()?.trim_end_matches('/').to_owned()),
            "--requests" => {
                requests = value()?
                    .parse()
                    .map_err(|_| "--requests needs a number".to_owned())?;
            }
            "--path" => path = Some(value()?),
            "--stdin" => stdin = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if path.is_some() == stdin {
        return Err("give exactly one of --path and --stdin".to_owned());
    }
    Ok(Args {
        redis: redis.ok_or("--redis is required")?,
        origin: origin.ok_or("--origin is required")?,
        requests,
        path,
    })
}

/// The in-process service behind the layer: forwards to the shared origin and counts its calls.
#[derive(Clone)]
struct Forwarder {
    client: Client<HttpConnector, Empty<Bytes>>,
    origin: Arc<str>,
    calls: Arc<AtomicU64>,
}

async fn forward(State(forwarder): State<Forwarder>, request: Request) -> Response {
    forwarder.calls.fetch_add(1, Ordering::SeqCst);
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let upstream = match format!("{}{target}", forwarder.origin).parse() {
        Ok(uri) => forwarder.client.get(uri).await,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "bad target"),
    };
    let upstream = match upstream {
        Ok(response) => response,
        Err(_) => return plain(StatusCode::BAD_GATEWAY, "origin unreachable"),
    };
    let status = upstream.status();
    let cache_control = upstream.headers().get(CACHE_CONTROL).cloned();
    let body = match upstream.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return plain(StatusCode::BAD_GATEWAY, "origin body broken"),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    if let Some(value) = cache_control {
        response.headers_mut().insert(CACHE_CONTROL, value);
    }
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}

/// One node: its layer and the layered app.
struct Node {
    layer: CacheLayer,
    app: Router,
    calls: Arc<AtomicU64>,
    requests: usize,
}

impl Node {
    fn new(args: &Args) -> Result<Self, String> {
        let store = RedisStore::from_url(&args.redis).map_err(|err| err.to_string())?;
        let layer = CacheLayer::new(store)
            .jitter(0.0)
            // A loaded machine's slow Redis must not turn into bypasses.
            .read_deadline(Duration::from_secs(2))
            .write_deadline(Duration::from_secs(2));
        let calls = Arc::new(AtomicU64::new(0));
        let forwarder = Forwarder {
            client: Client::builder(TokioExecutor::new()).build_http(),
            origin: Arc::from(args.origin.as_str()),
            calls: Arc::clone(&calls),
        };
        let app = Router::new()
            .fallback(forward)
            .with_state(forwarder)
            .layer(layer.clone());
        Ok(Node {
            layer,
            app,
            calls,
            requests: args.requests,
        })
    }

    /// Wait until Redis answers and a message published on the events channel comes back on a
    /// subscription of our own (the layer subscribed before us, so its subscription is up too).
    async fn warm_up(&self) -> Result<(), String> {
        self.layer.ping().await.map_err(|err| err.to_string())?;
        let store = self.layer.store();
        let channel = format!("{DEFAULT_NAMESPACE}:events");
        let mut messages = store
            .subscribe(&channel)
            .ok_or("the store has no events channel")?;
        // A well-formed fill event for a key nobody waits on: harmless to every instance.
        let probe = Bytes::from_static(br#"{"fill":{"key":"stampede-node-probe"}}"#);
        for _ in 0..250 {
            store
                .publish(&channel, probe.clone())
                .await
                .map_err(|err| err.to_string())?;
            let heard = tokio::time::timeout(Duration::from_millis(20), messages.recv()).await;
            if matches!(heard, Ok(Some(_))) {
                return Ok(());
            }
        }
        Err("no message came back on the events channel".to_owned())
    }

    /// Fire the requests for `path` at once and summarise what came back as one JSON line.
    async fn run(&self, path: &str) -> String {
        let before = self.calls.load(Ordering::SeqCst);
        let tasks: Vec<_> = (0..self.requests)
            .map(|_| {
                let app = self.app.clone();
                let request =
                    http::Request::get(format!("http://stampede.test{path}")).body(Body::empty());
                tokio::spawn(async move {
                    let response = app.oneshot(request.ok()?).await.ok()?;
                    let status = response.status().as_u16();
                    let cache_status = response
                        .headers()
                        .get("cache-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let body = response.into_body().collect().await.ok()?.to_bytes();
                    Some((status, cache_status, body))
                })
            })
            .collect();
        let mut statuses = BTreeMap::<String, u64>::new();
        let (mut miss, mut collapsed, mut hit, mut other, mut failed) = (0, 0, 0, 0, 0);
        let mut bodies = BTreeSet::new();
        for task in tasks {
            let Ok(Some((status, cache_status, body))) = task.await else {
                failed += 1;
                continue;
            };
            *statuses.entry(status.to_string()).or_default() += 1;
            if cache_status.contains("; collapsed") {
                collapsed += 1;
            } else if cache_status.contains("; hit") {
                hit += 1;
            } else if cache_status.contains("; fwd=miss") {
                miss += 1;
            } else {
                other += 1;
            }
            bodies.insert(String::from_utf8_lossy(&body).into_owned());
        }
        let stats = self.layer.stats();
        serde_json::json!({
            "path": path,
            "requests": self.requests,
            "failed": failed,
            "statuses": statuses,
            "miss": miss,
            "collapsed": collapsed,
            "hit": hit,
            "other": other,
            "origin_calls": self.calls.load(Ordering::SeqCst).saturating_sub(before),
            "bodies": bodies,
            "stats": {
                "locks_acquired": stats.locks_acquired,
                "locks_waited": stats.locks_waited,
                "lock_timeouts": stats.lock_timeouts,
                "locks_lost": stats.locks_lost,
                "collapsed": stats.collapsed,
                "stores": stats.stores,
                "store_errors": stats.store_errors,
                "bypasses": stats.bypasses,
            },
        })
        .to_string()
    }
}

async fn run(args: Args) -> Result<(), String> {
    let node = Node::new(&args)?;
    node.warm_up().await?;
    if let Some(path) = &args.path {
        println!("{}", node.run(path).await);
        return Ok(());
    }
    println!("ready");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.map_err(|err| err.to_string())? {
        let path = line.trim();
        if !path.is_empty() {
            println!("{}", node.run(path).await);
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("stampede_node: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stampede_node: {err}");
            ExitCode::FAILURE
        }
    }
}

//! A caching reverse proxy: [`CacheLayer`] in front of an HTTP/1.1 client that forwards every
//! request to one upstream.
//!
//! Run with:
//!
//! ```text
//! cargo run --release --example proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:9000
//! cargo run --release --example proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:9000 \
//!     --redis redis://127.0.0.1:6379 --mode app
//! cargo run --release --features cluster --example proxy -- --listen 127.0.0.1:8080 \
//!     --upstream http://127.0.0.1:9000 --redis redis://127.0.0.1:7000,redis://127.0.0.1:7001
//! ```
//!
//! `--redis` with one URL caches in that Redis server; with a comma-separated list of node URLs
//! (and the `cluster` feature) it caches in the Redis Cluster those nodes belong to.
//!
//! When it is ready it prints one line to stdout,
//! `proxy listening on http://ADDR (upstream http://..., mode shared, store memory)`, where ADDR
//! is the address it is bound to (so `--listen 127.0.0.1:0` picks a free port and says which).
//!
//! What the proxy does with a request:
//!
//! - the cache layer looks it up first; a hit is answered without contacting the upstream;
//! - otherwise the request target is rewritten to the upstream (its scheme and authority, the
//!   request's own path and query) and sent with every method, every end-to-end header and the
//!   body streamed as it arrives; the response streams back the same way;
//! - hop-by-hop headers (`Connection` and the fields it names, `Keep-Alive`,
//!   `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`,
//!   `Proxy-Authentication-Info`, `Proxy-Authorization`) are dropped in both directions, so
//!   connection upgrades (WebSocket) are not proxied;
//! - the client's `Host` header is kept, as reverse proxies usually do: the upstream sees the
//!   name the client asked for (and the cache keys on it), not the upstream's address. A request
//!   without `Host` gets the upstream authority from the HTTP client. No `Forwarded` or
//!   `X-Forwarded-*` fields are added;
//! - an upstream that is down, refuses or breaks the connection before answering is a
//!   `502 Bad Gateway` with a short text body, never a dropped connection.
//!
//! `--mode shared` (the default) stores only responses that state their freshness (`s-maxage`,
//! `max-age`, `Expires`); `--mode app` also stores responses that say nothing, for the layer's
//! default TTL (300 s).
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

use std::convert::Infallible;
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Layer, Service};
use tower_response_cache::policy::is_hop_by_hop;
#[cfg(feature = "cluster")]
use tower_response_cache::RedisClusterStore;
use tower_response_cache::{CacheLayer, MemoryStore, Mode, RedisStore};

/// The command-line help, printed by `--help` and after an argument error.
pub const USAGE: &str = "\
usage: proxy --listen ADDR --upstream URL [--redis URL] [--mode shared|app]

A caching reverse proxy in front of one HTTP/1.1 upstream.

  --listen ADDR    address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port)
  --upstream URL   the upstream, http://HOST[:PORT] (no path, no query)
  --redis URL      cache in Redis at URL (redis://HOST[:PORT][/DB]), or in the Redis
                   Cluster of a comma-separated list of node URLs
                   (redis://HOST:PORT,redis://HOST:PORT,..., feature `cluster`);
                   default: an in-process memory store
  --mode MODE      shared (default): store only responses that state their freshness;
                   app: also store the others, for the default TTL (300 s)
  --help           print this help and exit
";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the proxy with this configuration.
    Run(Config),
    /// Print [`USAGE`] and exit successfully.
    Help,
}

/// The proxy's configuration, as parsed from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where to forward requests.
    pub upstream: Upstream,
    /// Where to cache.
    pub store: StoreChoice,
    /// How freshness is decided.
    pub mode: Mode,
}

/// The cache store selected on the command line.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// The in-process [`MemoryStore`] (the default).
    Memory,
    /// A [`RedisStore`] on the server at this URL.
    Redis(String),
    /// A `RedisClusterStore` on the cluster of these comma-separated node URLs.
    #[cfg(feature = "cluster")]
    Cluster(String),
}

impl fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: never print it.
        match self {
            StoreChoice::Memory => f.write_str("Memory"),
            StoreChoice::Redis(_) => f.write_str("Redis(..)"),
            #[cfg(feature = "cluster")]
            StoreChoice::Cluster(_) => f.write_str("Cluster(..)"),
        }
    }
}

impl StoreChoice {
    /// The store's name in the ready line.
    pub fn name(&self) -> &'static str {
        match self {
            StoreChoice::Memory => "memory",
            StoreChoice::Redis(_) => "redis",
            #[cfg(feature = "cluster")]
            StoreChoice::Cluster(_) => "redis-cluster",
        }
    }
}

/// The scheme and authority every request is forwarded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
}

impl Upstream {
    /// Parses `http://HOST[:PORT]` (a trailing `/` is accepted; any other path, a query, user
    /// information or another scheme is refused).
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: Uri = text
            .parse()
            .map_err(|_| format!("--upstream: not a URL: {text}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "--upstream: https is not supported (the client speaks plain HTTP)".to_owned(),
                )
            }
            _ => {
                return Err(format!(
                    "--upstream: expected http://HOST[:PORT], got {text}"
                ))
            }
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("--upstream: no host in {text}"))?;
        if authority.as_str().contains('@') {
            return Err("--upstream: user information is not supported".to_owned());
        }
        if authority.host().is_empty() {
            return Err(format!("--upstream: no host in {text}"));
        }
        let path_is_root = matches!(uri.path(), "" | "/");
        if !path_is_root || uri.query().is_some() {
            return Err(format!(
                "--upstream: expected http://HOST[:PORT] without a path or query, got {text}"
            ));
        }
        Ok(Upstream {
            scheme: Scheme::HTTP,
            authority,
        })
    }

    /// The upstream URI for a request target: this scheme and authority, the target's path
    /// and query.
    fn target(&self, original: &Uri) -> Result<Uri, http::Error> {
        let path_and_query = original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// Parses the arguments that follow the program name.
///
/// Each option is `--name VALUE` or `--name=VALUE`; `--listen` and `--upstream` are required,
/// an option given twice is an error. `--help` anywhere wins.
pub fn parse_args<I, S>(args: I) -> Result<Command, String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut listen = None;
    let mut upstream = None;
    let mut redis = None;
    let mut mode = None;
    let mut args = args.into_iter().map(Into::into);
    let mut pending: Vec<(String, String)> = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            return Ok(Command::Help);
        }
        let (name, value) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_owned(), value.to_owned()),
            _ if arg.starts_with("--") => {
                let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                (arg, value)
            }
            _ => return Err(format!("unexpected argument: {arg}")),
        };
        pending.push((name, value));
    }
    for (name, value) in pending {
        let slot = match name.as_str() {
            "--listen" => &mut listen,
            "--upstream" => &mut upstream,
            "--redis" => &mut redis,
            "--mode" => &mut mode,
            _ => return Err(format!("unknown option: {name}")),
        };
        if slot.is_some() {
            return Err(format!("{name} is given more than once"));
        }
        *slot = Some(value);
    }

    let listen = listen.ok_or("--listen is required")?;
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| format!("--listen: not an IP address and port: {listen}"))?;
    let upstream = Upstream::parse(&upstream.ok_or("--upstream is required")?)?;
    let store = match redis {
        None => StoreChoice::Memory,
        Some(list) if list.contains(',') => cluster_choice(list)?,
        Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
            StoreChoice::Redis(url)
        }
        Some(_) => return Err("--redis: expected a redis:// or rediss:// URL".to_owned()),
    };
    let mode = match mode.as_deref() {
        None | Some("shared") => Mode::Shared,
        Some("app") => Mode::Application,
        Some(other) => return Err(format!("--mode: expected shared or app, got {other}")),
    };
    Ok(Command::Run(Config {
        listen,
        upstream,
        store,
        mode,
    }))
}

/// The store for a comma-separated list of node URLs: Redis Cluster.
#[cfg(feature = "cluster")]
fn cluster_choice(list: String) -> Result<StoreChoice, String> {
    let valid = list.split(',').map(str::trim).all(|url| {
        url.strip_prefix("redis://")
            .or_else(|| url.strip_prefix("rediss://"))
            .is_some_and(|rest| !rest.is_empty())
    });
    if !valid {
        return Err(
            "--redis: expected a comma-separated list of redis:// or rediss:// node URLs"
                .to_owned(),
        );
    }
    Ok(StoreChoice::Cluster(list))
}

/// Without the `cluster` feature, a list of URLs is refused.
#[cfg(not(feature = "cluster"))]
fn cluster_choice(_list: String) -> Result<StoreChoice, String> {
    Err(
        "--redis: a list of URLs selects Redis Cluster, and cluster support needs the \
         `cluster` feature"
            .to_owned(),
    )
}

/// The name of a mode on the command line and in the ready line.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Shared => "shared",
        _ => "app",
    }
}

/// The line printed when the proxy is ready, for a proxy bound to `addr`.
pub fn ready_line(config: &Config, addr: SocketAddr) -> String {
    format!(
        "proxy listening on http://{addr} (upstream {}, mode {}, store {})",
        config.upstream,
        mode_name(config.mode),
        config.store.name()
    )
}

/// The cache layer the configuration describes. Must be called inside a Tokio runtime (the
/// Redis store needs one); a Redis URL the client refuses is an error.
pub fn build_layer(config: &Config) -> Result<CacheLayer, String> {
    let layer = match &config.store {
        StoreChoice::Memory => CacheLayer::new(MemoryStore::new()),
        StoreChoice::Redis(url) => {
            let store = RedisStore::from_url(url).map_err(|err| format!("--redis: {err}"))?;
            CacheLayer::new(store)
        }
        #[cfg(feature = "cluster")]
        StoreChoice::Cluster(list) => {
            let store =
                RedisClusterStore::from_url_list(list).map_err(|err| format!("--redis: {err}"))?;
            CacheLayer::new(store)
        }
    };
    Ok(layer.mode(config.mode))
}

/// The body of every response the forwarding service returns: the upstream's own body, or a
/// short text of the proxy's.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// The forwarding service: sends each request to `upstream` and answers with its response, or
/// with a 502 when the upstream cannot be reached. It never fails.
pub fn upstream_service(
    upstream: Upstream,
) -> impl Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let upstream = Arc::new(upstream);
    tower::service_fn(move |request| forward(client.clone(), Arc::clone(&upstream), request))
}

async fn forward(
    client: Client<HttpConnector, Incoming>,
    upstream: Arc<Upstream>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (mut parts, body) = request.into_parts();
    parts.uri = match upstream.target(&parts.uri) {
        Ok(uri) => uri,
        Err(_) => {
            return Ok(text_response(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: the request target cannot be forwarded\n",
            ))
        }
    };
    // The upstream connection is HTTP/1.1 whatever the client spoke.
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    strip_hop_by_hop(&mut parts.headers);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Either::Left(body)))
        }
        Err(err) => {
            eprintln!("proxy: upstream {upstream}: {}", error_chain(&err));
            Ok(text_response(
                StatusCode::BAD_GATEWAY,
                "502 Bad Gateway: the upstream did not answer\n",
            ))
        }
    }
}

/// Removes the hop-by-hop fields, including those the message's own `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name, headers))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

fn text_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Serves the proxy on `listener` forever: `layer` in front of [`upstream_service`], HTTP/1.1,
/// one task per connection.
pub async fn serve(listener: TcpListener, layer: CacheLayer, upstream: Upstream) {
    let service = layer.layer(upstream_service(upstream));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, or a connection reset before it was accepted: wait a
                // moment rather than spin, and keep serving.
                eprintln!("proxy: accept: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            // Errors here are clients going away mid-message, or an upstream body that broke
            // off: nothing the proxy can still answer.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Builds the layer, prints the ready line and serves `listener` until the process ends.
pub async fn run(config: Config, listener: TcpListener) -> Result<(), String> {
    let layer = build_layer(&config)?;
    let addr = listener
        .local_addr()
        .map_err(|err| format!("cannot read the listening address: {err}"))?;
    if config.store != StoreChoice::Memory {
        if let Err(err) = layer.ping().await {
            eprintln!(
                "proxy: Redis does not answer yet ({err}); serving from the upstream until it does"
            );
        }
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", ready_line(&config, addr))
        .and_then(|()| stdout.flush())
        .map_err(|err| format!("cannot write to stdout: {err}"))?;
    drop(stdout);
    serve(listener, layer, config.upstream).await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{USAGE}");
            let _ = std::io::stdout().flush();
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("proxy: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("proxy: cannot listen on {}: {err}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        result = run(config, listener) => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("proxy: {message}");
                ExitCode::from(2)
            }
        },
        () = interrupted() => ExitCode::SUCCESS,
    }
}

/// Resolves on Ctrl-C; never, if the signal cannot be listened for.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

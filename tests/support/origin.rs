//! A scripted origin for the integration tests: an Axum app with per-route call counters, and
//! helpers to serve an app on loopback and talk to it over real TCP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Per-path call counters shared with the test.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<HashMap<String, u64>>>, Arc<AtomicU64>);

impl Calls {
    pub fn of(&self, path: &str) -> u64 {
        self.0.lock().unwrap().get(path).copied().unwrap_or(0)
    }
    pub fn total(&self) -> u64 {
        self.1.load(Ordering::SeqCst)
    }
    fn count(&self, path: &str) -> u64 {
        self.1.fetch_add(1, Ordering::SeqCst);
        let mut map = self.0.lock().unwrap();
        let n = map.entry(path.to_owned()).or_insert(0);
        *n += 1;
        *n
    }
}

/// The scripted origin. Every response body names the path, the query and the call number, so
/// a test can tell which origin call produced what a client received.
///
/// Query switches (all optional):
/// - `status=N`: answer with status N;
/// - `cc=...`: a Cache-Control value; `vary=...`: a Vary value; `cookie=1`: a Set-Cookie;
/// - `size=N`: a body of N bytes (streamed in 16 KiB chunks, no Content-Length);
/// - `delay=MS`: wait before answering;
/// - `reflect=NAME`: copy request header NAME into the body;
/// - `sse=1`: `text/event-stream`;
/// - `tag=...`: a `Surrogate-Key` value (space-separated tags, `+` for a space).
pub fn app(calls: Calls) -> Router {
    Router::new().fallback(any(handler)).with_state(calls)
}

async fn handler(State(calls): State<Calls>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let n = calls.count(&path);
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), percent_decode(v)),
            None => (p.to_owned(), String::new()),
        })
        .collect();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if let Some(delay) = get("delay").and_then(|d| d.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut text = format!("path={path} query={query} call={n}");
    if let Some(name) = get("reflect") {
        let value = request
            .headers()
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        text.push_str(&format!(" {name}={value}"));
    }
    let mut builder = Response::builder();
    if let Some(status) = get("status").and_then(|s| s.parse::<u16>().ok()) {
        builder = builder.status(StatusCode::from_u16(status).unwrap());
    }
    if let Some(cc) = get("cc") {
        builder = builder.header("cache-control", cc);
    }
    if let Some(vary) = get("vary") {
        builder = builder.header("vary", vary);
    }
    if get("cookie").is_some() {
        builder = builder.header("set-cookie", format!("session=s{n}"));
    }
    if let Some(tags) = get("tag") {
        builder = builder.header("surrogate-key", tags);
    }
    if get("sse").is_some() {
        builder = builder.header("content-type", "text/event-stream");
    }
    if let Some(size) = get("size").and_then(|s| s.parse::<usize>().ok()) {
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..size)
            .step_by(16 * 1024)
            .map(|start| {
                let len = (size - start).min(16 * 1024);
                Ok(Bytes::from(
                    (start..start + len)
                        .map(|i| (i % 251) as u8)
                        .collect::<Vec<u8>>(),
                ))
            })
            .collect();
        let stream = futures_util::stream::iter(chunks);
        return builder.body(Body::from_stream(stream)).unwrap();
    }
    builder.body(Body::from(text)).unwrap()
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The expected body of a streamed `size=N` response.
pub fn sized_body(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// Serve `router` on a free loopback port.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

/// A real HTTP/1.1 client over TCP.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    base: String,
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn cache_status(&self) -> String {
        self.headers
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
    pub fn is_hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> Self {
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    pub async fn get(&self, path: &str) -> Got {
        self.send("GET", path, &[], Bytes::new()).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        self.send("GET", path, headers, Bytes::new()).await
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Got {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (name, value) in headers {
            request = request.header(*name, HeaderValue::from_str(value).unwrap());
        }
        let request = request.body(Full::new(body)).unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Got {
            status,
            headers,
            body,
        }
    }
}

/// Wait until `check` holds (background writes land asynchronously), at most 5 s.
pub async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

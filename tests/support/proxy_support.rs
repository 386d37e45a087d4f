//! Helpers for the reverse proxy tests: an upstream that records what reached it, a client that
//! uploads streamed (chunked) bodies, and the proxy example run as a real process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use super::origin::{self, Calls, Got};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Every request that reached the recording routes, in order.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.all().pop().expect("no request reached the upstream")
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn push(&self, seen: Seen) {
        self.0.lock().unwrap().push(seen);
    }
}

/// The upstream of the proxy tests: the scripted origin (`support::origin::app`) plus
///
/// - `/echo` (any method): records the request and answers with its body, with a
///   `Content-Length` and `Cache-Control: max-age=60` (so only the method can keep it out of
///   the cache);
/// - `/hop`: records the request and answers with hop-by-hop fields (`Connection: x-resp-hop`,
///   `X-Resp-Hop`, `Keep-Alive`, `Proxy-Authenticate`) next to an end-to-end `X-End-Resp`.
pub fn upstream_app(calls: Calls, recorder: Recorder) -> Router {
    origin::app(calls)
        .route("/echo", any(echo).with_state(recorder.clone()))
        .route("/hop", any(hop).with_state(recorder))
}

async fn record(recorder: &Recorder, request: Request) -> Seen {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("the request body arrived whole");
    let seen = Seen {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
    };
    recorder.push(seen.clone());
    seen
}

async fn echo(State(recorder): State<Recorder>, request: Request) -> Response {
    let seen = record(&recorder, request).await;
    Response::builder()
        .header("cache-control", "max-age=60")
        .header("x-seen-method", seen.method.as_str())
        .body(Body::from(seen.body))
        .unwrap()
}

async fn hop(State(recorder): State<Recorder>, request: Request) -> Response {
    record(&recorder, request).await;
    Response::builder()
        .header("connection", "x-resp-hop")
        .header("x-resp-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authenticate", "Basic realm=\"upstream\"")
        .header("x-end-resp", "kept")
        .body(Body::from("hop"))
        .unwrap()
}

/// A deterministic, non-repeating-looking body of `len` bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let mixed = i.wrapping_mul(31).wrapping_add(i >> 9);
            (mixed as u8).wrapping_add(seed)
        })
        .collect()
}

/// Sends `chunks` as a streamed request body: no `Content-Length`, so it goes out chunked.
pub async fn send_streamed(addr: SocketAddr, method: &str, path: &str, chunks: Vec<Bytes>) -> Got {
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let frames = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))),
    );
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(StreamBody::new(frames))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        headers,
        body,
    }
}

/// A loopback address nothing listens on (a port that was free a moment ago).
pub fn unused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The proxy example's executable, built (or brought up to date) with the features and target
/// directory of the running test binary.
///
/// `cargo test` builds the examples, but `cargo test --test proxy` does not, so this asks
/// Cargo to build it; that is a no-op when it is already current.
pub fn example_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_example).clone()
}

fn build_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/proxy-<hash>
    let deps = exe.parent().expect("the test binary is in a directory");
    let profile_dir = deps.parent().expect("the deps directory has a parent");
    let target_dir = profile_dir
        .parent()
        .expect("the profile directory has a parent");
    let profile = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("debug");
    let mut features = Vec::new();
    if cfg!(feature = "redis") {
        features.push("redis");
    }
    if cfg!(feature = "memory") {
        features.push("memory");
    }
    if cfg!(feature = "axum") {
        features.push("axum");
    }
    if cfg!(feature = "cluster") {
        features.push("cluster");
    }
    if cfg!(feature = "tls") {
        features.push("tls");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args([
            "build",
            "--quiet",
            "--example",
            "proxy",
            "--no-default-features",
        ])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    if !features.is_empty() {
        build.arg("--features").arg(features.join(","));
    }
    if profile != "debug" {
        build.args(["--profile", profile]);
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building the proxy example failed");
    let path = profile_dir
        .join("examples")
        .join(format!("proxy{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "no proxy example at {}", path.display());
    path
}

/// The proxy example running as a child process; killed when dropped.
pub struct ProxyProcess {
    child: Child,
    pub addr: SocketAddr,
    pub ready_line: String,
}

impl ProxyProcess {
    /// Starts the example with `args` and waits for its ready line.
    pub async fn start(args: &[&str]) -> ProxyProcess {
        let mut child = Command::new(example_binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the proxy example starts");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take();
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).await.unwrap();
        if read == 0 {
            let mut errors = String::new();
            if let Some(stderr) = stderr.as_mut() {
                let _ = stderr.read_to_string(&mut errors).await;
            }
            panic!("the proxy exited before it was ready: {errors}");
        }
        // Keep draining stderr so that the child never blocks on a full pipe.
        if let Some(mut stderr) = stderr {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
            });
        }
        let ready_line = line.trim_end().to_owned();
        let addr = ready_line
            .strip_prefix("proxy listening on http://")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("not a ready line: {ready_line:?}"));
        ProxyProcess {
            child,
            addr,
            ready_line,
        }
    }

    /// Kills the process and waits for it.
    pub async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Runs the example with `args` to completion: exit code, stdout, stderr.
pub async fn run_example(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(example_binary())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("the proxy example runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

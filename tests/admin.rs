//! The purge router over real TCP: authentication, the request schema, refusals of broad or
//! malformed purges, the rate limit and the body limit, and that a purge really empties the
//! cache of the app it is mounted in.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use support::origin::{serve, Got, HttpClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_response_cache::admin::{PurgeRouter, MAX_BODY_SIZE};
use tower_response_cache::{CacheLayer, MemoryStore};

const TOKEN: &str = "test-purge-token-0123456789";

/// A cached app with the purge router nested at `/admin`, on a free port.
struct App {
    client: HttpClient,
    addr: std::net::SocketAddr,
    store: MemoryStore,
    calls: Arc<AtomicU64>,
}

/// `/users/{id}` answers `user {id} call {n}`, tagged `user:{id}` and `users`.
async fn user(State(calls): State<Arc<AtomicU64>>, Path(id): Path<u32>) -> impl IntoResponse {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    (
        [("surrogate-key", format!("user:{id} users"))],
        format!("user {id} call {n}"),
    )
}

async fn start(configure: impl FnOnce(PurgeRouter) -> PurgeRouter) -> App {
    let store = MemoryStore::new();
    let layer = CacheLayer::new(store.clone());
    let calls = Arc::new(AtomicU64::new(0));
    let admin = configure(PurgeRouter::new(layer.purger(), TOKEN)).into_router();
    let router = Router::new()
        .route("/users/{id}", get(user))
        .with_state(Arc::clone(&calls))
        .layer(layer.clone())
        .nest("/admin", admin);
    let addr = serve(router).await;
    App {
        client: HttpClient::new(addr),
        addr,
        store,
        calls,
    }
}

impl App {
    /// A purge request with these credentials (`None`: no `Authorization` header).
    async fn purge_as(&self, authorization: Option<&str>, body: &str) -> Got {
        let headers: Vec<(&str, &str)> = authorization
            .map(|value| vec![("authorization", value)])
            .unwrap_or_default();
        self.client
            .send(
                "POST",
                "/admin/purge",
                &headers,
                Bytes::copy_from_slice(body.as_bytes()),
            )
            .await
    }

    async fn purge(&self, body: &str) -> Got {
        let bearer = format!("Bearer {TOKEN}");
        self.purge_as(Some(&bearer), body).await
    }

    /// Fetch `path` until it is answered from the cache (its store lands in the background).
    async fn cache(&self, path: &str) {
        for _ in 0..500 {
            let got = self.client.get(path).await;
            assert_eq!(got.status, StatusCode::OK, "{path}");
            if got.is_hit() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{path} was never answered from the cache");
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

fn json(got: &Got) -> serde_json::Value {
    serde_json::from_slice(&got.body).unwrap_or_else(|_| panic!("not JSON: {}", got.text()))
}

#[tokio::test]
async fn a_purge_without_credentials_is_401_with_a_bearer_challenge() {
    let app = start(|r| r).await;
    app.cache("/users/1").await;
    for authorization in [None, Some("Basic dXNlcjpwYXNz"), Some("Bearer")] {
        let got = app
            .purge_as(authorization, r#"{"purge":{"tag":"user:1"}}"#)
            .await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        let challenge = got.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        assert_eq!(got.headers["cache-control"], "no-store");
    }
    assert!(app.client.get("/users/1").await.is_hit());
}

#[tokio::test]
async fn a_purge_with_a_wrong_token_is_403_and_purges_nothing() {
    let app = start(|r| r).await;
    app.cache("/users/1").await;
    let wrong = format!("Bearer {TOKEN}x");
    for authorization in ["Bearer nope", &wrong, "Bearer test-purge-token-012345678"] {
        let got = app
            .purge_as(Some(authorization), r#"{"purge":{"tag":"user:1"}}"#)
            .await;
        assert_eq!(got.status, StatusCode::FORBIDDEN, "{authorization}");
        assert!(!got.headers.contains_key("www-authenticate"));
    }
    assert!(app.client.get("/users/1").await.is_hit());
}

#[tokio::test]
async fn a_purge_with_the_token_removes_the_entry_so_the_next_read_is_a_miss() {
    let app = start(|r| r.rate_limit(100)).await;
    let bodies = [
        r#"{"purge":{"tag":"user:1"}}"#,
        r#"{"purge":{"path":"/users/1"}}"#,
        r#"{"purge":{"url":"/users/1"}}"#,
    ];
    for body in bodies {
        app.cache("/users/1").await;
        let calls = app.calls();
        let got = app.purge(body).await;
        assert_eq!(got.status, StatusCode::OK, "{body}: {}", got.text());
        assert_eq!(got.headers["content-type"], "application/json");
        let report = json(&got);
        assert_eq!(report["complete"], true, "{body}");
        assert!(report["removed"].as_u64().unwrap() >= 1, "{body}: {report}");
        assert!(report["generation_bumped"].is_boolean());
        let next = app.client.get("/users/1").await;
        assert!(!next.is_hit(), "{body}: {}", next.cache_status());
        assert_eq!(app.calls(), calls + 1, "{body}");
        assert_eq!(next.text(), format!("user 1 call {}", calls + 1));
    }
}

#[tokio::test]
async fn a_tag_purge_leaves_entries_without_the_tag() {
    let app = start(|r| r).await;
    app.cache("/users/1").await;
    app.cache("/users/2").await;
    let got = app.purge(r#"{"purge":{"tag":"user:2"}}"#).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(app.client.get("/users/1").await.is_hit());
    assert!(!app.client.get("/users/2").await.is_hit());
}

#[tokio::test]
async fn broad_malformed_and_unknown_purges_are_400_and_purge_nothing() {
    let app = start(|r| r.rate_limit(100)).await;
    app.cache("/users/1").await;
    for body in [
        r#"{"purge":{"path":""}}"#,
        r#"{"purge":{"path":"/"}}"#,
        r#"{"purge":{"path":"users/1"}}"#,
        r#"{"purge":{"tag":""}}"#,
        r#"{"purge":{"url":""}}"#,
        r#"{"purge":{"everything":true}}"#,
        r#"{"purge":{"all":false}}"#,
        r#"{"purge":{"tag":"a","path":"/users/1"}}"#,
        r#"{"purge":{"tag":7}}"#,
        r#"{"tag":"user:1"}"#,
        r#"{"purge":{"tag":"user:1"},"also":1}"#,
        r#"{"purge":{"tag":"user:1""#,
        "purge everything",
        "",
    ] {
        let got = app.purge(body).await;
        assert_eq!(
            got.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            got.text()
        );
        assert!(json(&got)["error"].is_string(), "{body}");
    }
    assert!(app.client.get("/users/1").await.is_hit());
}

#[tokio::test]
async fn purging_everything_is_403_unless_allowed() {
    let refused = start(|r| r).await;
    refused.cache("/users/1").await;
    let got = refused.purge(r#"{"purge":{"all":true}}"#).await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert!(refused.client.get("/users/1").await.is_hit());

    let allowed = start(|r| r.allow_all(true)).await;
    allowed.cache("/users/1").await;
    allowed.cache("/users/2").await;
    let got = allowed.purge(r#"{"purge":{"all":true}}"#).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert!(allowed.store.is_empty(), "{:?}", allowed.store.keys());
    assert!(!allowed.client.get("/users/1").await.is_hit());
    assert!(!allowed.client.get("/users/2").await.is_hit());
}

#[tokio::test]
async fn purges_over_the_rate_limit_are_429() {
    let app = start(|r| r.rate_limit(2)).await;
    // Requests that fail authentication do not use up the limit.
    for _ in 0..5 {
        let got = app
            .purge_as(Some("Bearer nope"), r#"{"purge":{"tag":"users"}}"#)
            .await;
        assert_eq!(got.status, StatusCode::FORBIDDEN);
    }
    let first = app.purge(r#"{"purge":{"tag":"users"}}"#).await;
    let second = app.purge(r#"{"purge":{"tag":"users"}}"#).await;
    let third = app.purge(r#"{"purge":{"tag":"users"}}"#).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn a_body_over_64_kib_is_413() {
    let app = start(|r| r.rate_limit(100)).await;
    app.cache("/users/1").await;
    // Valid JSON, padded with whitespace past the limit.
    let body = format!(
        r#"{{"purge":{{"tag":"user:1"}}}}{}"#,
        " ".repeat(MAX_BODY_SIZE)
    );
    let got = app.purge(&body).await;
    assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE);

    // The same without a Content-Length: the limit applies while reading.
    let status = chunked_purge(app.addr, body.as_bytes()).await;
    assert_eq!(status, "413");
    assert!(app.client.get("/users/1").await.is_hit());

    // At the limit it is read and carried out.
    let body = r#"{"purge":{"tag":"user:1"}}"#;
    let padded = format!("{body}{}", " ".repeat(MAX_BODY_SIZE - body.len()));
    let got = app.purge(&padded).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert!(!app.client.get("/users/1").await.is_hit());
}

/// Send `body` as a chunked purge request on a raw connection; the answer's status code.
async fn chunked_purge(addr: std::net::SocketAddr, body: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST /admin/purge HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(8 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before it has read everything: that is its right.
    let _ = stream.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
        .to_owned()
}

#[tokio::test]
async fn only_post_is_routed() {
    let app = start(|r| r).await;
    let bearer = format!("Bearer {TOKEN}");
    let got = app
        .client
        .get_with("/admin/purge", &[("authorization", &bearer)])
        .await;
    assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED);
}

//! Writes the seed corpora of the fuzz targets into `corpus/<target>/` (next to this crate's
//! `Cargo.toml`): real entries as the layer stores them, the S2/S3 URL pairs of the test plan,
//! and the hostile cache headers of B4.
//!
//! Run from the `fuzz` directory: `cargo run --example seeds`. The output is deterministic, so
//! running it again rewrites the same files.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{service_fn, Layer, ServiceExt};
use tower_response_cache::entry::{EntryCodec, StoredEntry, StoredResponse, VaryMarker};
use tower_response_cache::{CacheLayer, MemoryStore};
use tower_response_cache_fuzz::SECRET;

type Frame = Result<http_body::Frame<Bytes>, Infallible>;
type Frames = Vec<Frame>;

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

/// One response the scripted inner service gives, chosen by the request path.
fn respond(
    path: &str,
) -> Response<StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Frame>>>> {
    let mut frames: Frames = Vec::new();
    let mut response = Response::builder();
    match path {
        "/plain" => frames.push(Ok(http_body::Frame::data(Bytes::from_static(b"hello")))),
        "/headers" => {
            response = response
                .header("content-type", "application/json")
                .header("etag", "\"v1\"")
                .header("last-modified", "Tue, 15 Nov 1994 12:45:26 GMT")
                .header("link", "</a>; rel=preload")
                .header("link", "</b>; rel=preload")
                .header(
                    "cache-control",
                    "public, max-age=60, stale-while-revalidate=30",
                );
            frames.push(Ok(http_body::Frame::data(Bytes::from_static(b"{\"a\":1}"))));
        }
        "/vary" => {
            response = response.header("vary", "accept-encoding, accept-language");
            frames.push(Ok(http_body::Frame::data(Bytes::from_static(b"varied"))));
        }
        "/tags" => {
            response = response.header("surrogate-key", "users user-42 list");
            frames.push(Ok(http_body::Frame::data(Bytes::from_static(b"tagged"))));
        }
        "/trailers" => {
            frames.push(Ok(http_body::Frame::data(Bytes::from_static(
                b"with trailers",
            ))));
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            frames.push(Ok(http_body::Frame::trailers(trailers)));
        }
        "/missing" => {
            response = response.status(StatusCode::NOT_FOUND);
            frames.push(Ok(http_body::Frame::data(Bytes::from_static(b"not here"))));
        }
        "/empty" => response = response.status(StatusCode::NO_CONTENT),
        "/big" => {
            let body: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
            frames.push(Ok(http_body::Frame::data(Bytes::from(body))));
        }
        _ => frames.push(Ok(http_body::Frame::data(Bytes::from_static(b"other")))),
    }
    response
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .expect("a valid response")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let entries = corpus("entry_decoder");
    let layer = CacheLayer::new(MemoryStore::new())
        .secret(SECRET)
        .jitter(0.0);
    let service = layer.layer(service_fn(|request: Request<Full<Bytes>>| async move {
        Ok::<_, Infallible>(respond(request.uri().path()))
    }));
    let paths = [
        "/plain",
        "/headers",
        "/vary",
        "/tags",
        "/trailers",
        "/missing",
        "/empty",
        "/big",
    ];
    for path in paths {
        let request = Request::get(format!("http://seeds.example{path}?q=1"))
            .header("accept-encoding", "gzip")
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        let response = service.clone().oneshot(request).await.expect("infallible");
        let _ = response.into_body().collect().await;
    }
    let store = layer.store();
    for _ in 0..200 {
        if layer.stats().stores >= paths.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, keys) = store.scan_prefix("trc:", 0, 1000).await.expect("scan");
    let mut values = Vec::new();
    for key in keys {
        if let Ok(Some(value)) = store.get(&key).await {
            values.push(value);
        }
    }
    values.sort();
    for (i, value) in values.iter().enumerate() {
        write(&entries, &format!("layer-{i:02}"), value);
    }

    // Hand-made entries at the decoder's limits.
    let codec = EntryCodec::new(SECRET);
    let marker = StoredEntry::Vary(VaryMarker {
        request_digest: [3; 16],
        stored_at_ms: 1_700_000_000_000,
        ttl_secs: 60,
        fields: vec![http::header::ACCEPT_ENCODING, http::header::ACCEPT_LANGUAGE],
    });
    write(&entries, "vary-marker", &codec.encode(&marker));
    let mut headers = HeaderMap::new();
    for i in 0..40 {
        headers.append("x-many", HeaderValue::from(i));
    }
    let response = StoredEntry::Response(StoredResponse {
        request_digest: [1; 16],
        target_digest: [2; 16],
        stored_at_ms: 1_700_000_000_000,
        generation: 7,
        ttl_secs: 300,
        initial_age_secs: 5,
        stale_while_revalidate_secs: 30,
        stale_if_error_secs: 60,
        status: StatusCode::OK,
        headers,
        body: Bytes::from_static(b"many headers"),
        trailers: Some(HeaderMap::new()),
        tags: vec![String::new(), "t".repeat(256)],
    });
    write(&entries, "many-headers", &codec.encode(&response));
    write(
        &entries,
        "garbage",
        b"TRCE\x01\x01\xff\xff\xff\xffnot an entry",
    );

    let keys = corpus("key_normaliser");
    // The S2 and S3 pairs of the test plan, as `host\ntarget\ntarget`.
    let pairs: [(&str, &str, &str); 24] = [
        ("s2-repeated-order", "/q?a=1&a=2", "/q?a=2&a=1"),
        ("s2-semicolon", "/q?a=1;b=2", "/q?a=1&b=2"),
        ("s2-encoded-ampersand", "/q?a=1%26b=2", "/q?a=1&b=2"),
        ("s2-bare-name", "/q?a", "/q?a="),
        ("s2-plus-space", "/q?a=b+c", "/q?a=b%20c"),
        (
            "s2-callback",
            "/q?cb=1&utm_content=x;callback=evil",
            "/q?cb=1",
        ),
        ("s2-distinct-order", "/q?b=2&a=1", "/q?a=1&b=2"),
        ("s3-dot-dot", "/a/../b", "/b"),
        ("s3-dot", "/a/./b", "/a/b"),
        ("s3-case", "/A", "/a"),
        ("s3-trailing-slash", "/a/", "/a"),
        ("s3-double-slash", "//a", "/a"),
        ("s3-encoded-slash", "/a%2Fb", "/a/b"),
        ("s3-tilde", "/%7Ea", "/~a"),
        ("s3-hex-case", "/%7ea", "/%7Ea"),
        ("s3-nfc-nfd", "/caf%C3%A9", "/cafe%CC%81"),
        ("s3-params", "/a;x", "/a"),
        ("s3-nul", "/a%00", "/a"),
        ("s3-backslash", "/a\\b", "/a/b"),
        ("s4-deception", "/account/x.css", "/account;x.css"),
        ("s4-encoded-hash", "/account%23.css", "/account%2Fx.css"),
        (
            "s4-traversal",
            "/account/..%2Fstatic/x.css",
            "/static/x.css",
        ),
        ("absolute-form", "http://Example.COM:80/a?b=1", "/a?b=1"),
        ("empty-pairs", "/q?&a=1&&", "/q?a=1"),
    ];
    for (name, a, b) in pairs {
        write(&keys, name, format!("example.com\n{a}\n{b}").as_bytes());
    }
    write(&keys, "no-host", b"\n/a\n/b");
    write(&keys, "odd-host", b"EXAMPLE.com.:8080\n/a?x=%zz\n/a");
    write(&keys, "ipv6-host", b"[::1]:443\nhttps://[::1]/a\n/a");

    let headers = corpus("cache_control");
    // The hostile cache headers of B4 (the first byte picks status, mode and credentials).
    let rows: [(&str, &[u8]); 24] = [
        ("max-age", b"\x00max-age=60"),
        ("duplicate", b"\x00max-age=60\nmax-age=10"),
        ("conflicting", b"\x00max-age=60, no-cache\npublic"),
        ("negative", b"\x00max-age=-1"),
        ("exponent", b"\x00max-age=1e30"),
        ("quoted-s-maxage", b"\x10s-maxage=\"10\""),
        ("huge", b"\x00max-age=99999999999999999999999"),
        ("expires-zero", b"\x00expires: 0"),
        ("expires-garbage", b"\x00expires: soon"),
        (
            "expires-not-gmt",
            b"\x00expires: Tue, 15 Nov 1994 12:45:26 PST",
        ),
        (
            "date-future",
            b"\x00date: Sun, 15 Nov 2054 12:45:26 GMT\nmax-age=60",
        ),
        (
            "date-past",
            b"\x00date: Mon, 15 Nov 2004 12:45:26 GMT\nexpires: Tue, 15 Nov 2005 12:45:26 GMT",
        ),
        ("age-text", b"\x00age: abc\nmax-age=60"),
        ("age-list", b"\x00age: 1, 2\nmax-age=60"),
        ("age-huge", b"\x00age: 9223372036854775808\nmax-age=60"),
        ("vary-star", b"\x00vary: *\nmax-age=60"),
        (
            "vary-list",
            b"\x00vary: a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p\nmax-age=60",
        ),
        ("obs-text", b"\x00max-age=60, x=\"\xe9\""),
        ("unterminated-quote", b"\x00max-age=\"60, private"),
        ("private-field", b"\x00private=\"set-cookie\", max-age=60"),
        ("set-cookie", b"\x40set-cookie: a=b\npublic, max-age=60"),
        ("authenticated-public", b"\x40public, max-age=60"),
        (
            "stale",
            b"\x00max-age=1, stale-while-revalidate=99999999, stale-if-error=x",
        ),
        (
            "heuristic",
            b"\x30last-modified: Tue, 15 Nov 1994 12:45:26 GMT",
        ),
    ];
    for (name, bytes) in rows {
        write(&headers, name, bytes);
    }
    println!("seed corpora written under {}", corpus("").display());
}

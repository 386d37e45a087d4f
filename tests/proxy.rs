//! The caching reverse proxy example end to end: a scripted upstream and the proxy on real TCP,
//! in process (built by the example's own functions) and as the example's real executable.

mod support;

#[path = "../examples/proxy.rs"]
#[allow(dead_code)]
mod proxy;

use std::net::SocketAddr;

use bytes::Bytes;
use proxy::{Command, StoreChoice};
use support::origin::{eventually, serve, sized_body, Calls, Got, HttpClient};
use support::proxy_support::{
    pattern, run_example, send_streamed, unused_addr, upstream_app, ProxyProcess, Recorder,
};
use support::redis_server::RedisServer;
use tower_response_cache::{CacheLayer, Mode};

/// The scripted upstream on a free port.
struct Upstream {
    addr: SocketAddr,
    calls: Calls,
    recorder: Recorder,
}

async fn start_upstream() -> Upstream {
    let calls = Calls::default();
    let recorder = Recorder::default();
    let addr = serve(upstream_app(calls.clone(), recorder.clone())).await;
    Upstream {
        addr,
        calls,
        recorder,
    }
}

/// The proxy, in process, configured from `extra` command-line arguments after `--listen` and
/// `--upstream`.
struct Proxy {
    client: HttpClient,
    addr: SocketAddr,
    layer: CacheLayer,
}

async fn start_proxy(upstream: SocketAddr, extra: &[&str]) -> Proxy {
    let upstream_url = format!("http://{upstream}");
    let mut args = vec!["--listen", "127.0.0.1:0", "--upstream", &upstream_url];
    args.extend_from_slice(extra);
    let config = match proxy::parse_args(args) {
        Ok(Command::Run(config)) => config,
        other => panic!("not a run configuration: {other:?}"),
    };
    let layer = proxy::build_layer(&config).unwrap();
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy::serve(listener, layer.clone(), config.upstream));
    Proxy {
        client: HttpClient::new(addr),
        addr,
        layer,
    }
}

/// Wait until the layer has written `n` entries (writes happen in the background).
async fn stored(layer: &CacheLayer, n: u64) {
    assert!(
        eventually(|| layer.stats().stores >= n).await,
        "expected {n} stores, stats: {:?}",
        layer.stats()
    );
}

/// The `ttl=` of a `Cache-Status`.
fn ttl_of(got: &Got) -> u64 {
    let status = got.cache_status();
    status
        .split("; ")
        .find_map(|part| part.strip_prefix("ttl="))
        .and_then(|ttl| ttl.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {status:?}"))
}

#[tokio::test]
async fn a_max_age_response_is_a_miss_then_a_hit_and_the_upstream_is_called_once() {
    let upstream = start_upstream().await;
    let proxy = start_proxy(upstream.addr, &[]).await;

    let first = proxy.client.get("/fresh?cc=max-age=60").await;
    assert_eq!(first.status, 200);
    assert!(
        first
            .cache_status()
            .starts_with("trc; fwd=miss; stored; ttl="),
        "{}",
        first.cache_status()
    );
    // A stated lifetime is only ever shortened by the jitter.
    assert!(
        (54..=60).contains(&ttl_of(&first)),
        "{}",
        first.cache_status()
    );
    assert!(first.text().contains("path=/fresh"), "{}", first.text());
    stored(&proxy.layer, 1).await;

    let second = proxy.client.get("/fresh?cc=max-age=60").await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert!(second.cache_status().starts_with("trc; hit; ttl="));
    assert_eq!(second.body, first.body);
    assert_eq!(second.headers["cache-control"], "max-age=60");
    assert_eq!(upstream.calls.of("/fresh"), 1);
    assert_eq!(proxy.layer.stats().hits, 1);
}

#[tokio::test]
async fn in_shared_mode_a_response_without_freshness_is_never_stored() {
    let upstream = start_upstream().await;
    let proxy = start_proxy(upstream.addr, &[]).await;

    let first = proxy.client.get("/plain").await;
    assert_eq!(first.status, 200);
    assert!(first.cache_status().starts_with("trc; fwd=miss"));
    assert!(
        !first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    let second = proxy.client.get("/plain").await;
    assert!(!second.is_hit(), "{}", second.cache_status());
    assert!(second.text().contains("call=2"), "{}", second.text());
    assert_eq!(upstream.calls.of("/plain"), 2);
    assert_eq!(proxy.layer.stats().stores, 0);
}

#[tokio::test]
async fn in_app_mode_a_response_without_freshness_is_stored_for_the_default_ttl() {
    let upstream = start_upstream().await;
    let proxy = start_proxy(upstream.addr, &["--mode", "app"]).await;

    let first = proxy.client.get("/plain").await;
    assert!(
        first
            .cache_status()
            .starts_with("trc; fwd=miss; stored; ttl="),
        "{}",
        first.cache_status()
    );
    // 300 s, spread by the ± 10 % jitter.
    assert!(
        (270..=330).contains(&ttl_of(&first)),
        "{}",
        first.cache_status()
    );
    stored(&proxy.layer, 1).await;

    let second = proxy.client.get("/plain").await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!(second.body, first.body);
    assert_eq!(upstream.calls.of("/plain"), 1);
}

#[tokio::test]
async fn unsafe_methods_reach_the_upstream_with_their_bodies_and_are_never_cached() {
    let upstream = start_upstream().await;
    let proxy = start_proxy(upstream.addr, &[]).await;

    let mut sent = Vec::new();
    for round in 0..2 {
        for method in ["PUT", "POST", "DELETE"] {
            let body = format!("{method} body, round {round}");
            let got = proxy
                .client
                .send(method, "/echo", &[], Bytes::from(body.clone()))
                .await;
            assert_eq!(got.status, 200);
            assert_eq!(got.text(), body);
            assert_eq!(got.headers["x-seen-method"], method);
            assert_eq!(
                got.cache_status(),
                "trc; fwd=bypass; detail=method",
                "{method}"
            );
            sent.push((method, body));
        }
    }
    let seen = upstream.recorder.all();
    assert_eq!(seen.len(), sent.len(), "every request reached the upstream");
    for ((method, body), seen) in sent.iter().zip(&seen) {
        assert_eq!(seen.method.as_str(), *method);
        assert_eq!(seen.body, body.as_bytes());
    }

    // The route's responses are cacheable (max-age=60): the first GET is still a miss, so no
    // response to another method was stored for it.
    let get = proxy.client.get("/echo").await;
    assert!(
        get.cache_status().starts_with("trc; fwd=miss; stored"),
        "{}",
        get.cache_status()
    );
    assert_eq!(upstream.recorder.count(), sent.len() + 1);
}

#[tokio::test]
async fn a_3_mib_upload_with_a_length_arrives_byte_exact_both_ways() {
    let upstream = start_upstream().await;
    let proxy = start_proxy(upstream.addr, &[]).await;
    let body = Bytes::from(pattern(3 * 1024 * 1024, 7));

    let got = proxy.client.send("PUT", "/echo", &[], body.clone()).await;
    assert_eq!(got.status, 200);
    let seen = upstream.recorder.last();
    assert_eq!(seen.headers["content-length"], "3145728");
    assert!(seen.body == body, "the upstream received different bytes");
    assert_eq!(got.headers["content-length"], "3145728");
    assert!(got.body == body, "the client received different bytes");
}

#[tokio::test]
async fn a_chunked_upload_stays_chunked_and_arrives_byte_exact_both_ways() {
    let upstream = start_upstream().await;
    let proxy = start_proxy(upstream.addr, &[]).await;
    let whole = pattern(3 * 1024 * 1024 + 12_345, 3);
    // Uneven chunk sizes, so that no boundary lines up with a power of two.
    let chunks: Vec<Bytes> = whole.chunks(70_001).map(Bytes::copy_from_slice).collect();

    let got = send_streamed(proxy.addr, "POST", "/echo", chunks).await;
    assert_eq!(got.status, 200);
    let seen = upstream.recorder.last();
    assert_eq!(seen.headers["transfer-encoding"], "chunked");
    assert!(!seen.headers.contains_key("content-length"));
    assert!(seen.body == whole, "the upstream received different bytes");
    assert!(got.body == whole, "the client received different bytes");
}

#[tokio::test]
async fn a_streamed_download_arrives_byte_exact_even_when_too_large_to_store() {
    let upstream = start_upstream().await;
    let proxy = start_proxy(upstream.addr, &[]).await;
    let size = 3 * 1024 * 1024;

    let plain = proxy.client.get(&format!("/big?size={size}")).await;
    assert_eq!(plain.status, 200);
    assert!(!plain.headers.contains_key("content-length"));
    assert!(plain.body == sized_body(size), "different bytes arrived");

    // Cacheable, but larger than the 1 MiB the store accepts: delivered whole both times.
    for _ in 0..2 {
        let got = proxy
            .client
            .get(&format!("/large?size={size}&cc=max-age=60"))
            .await;
        assert!(!got.is_hit(), "{}", got.cache_status());
        assert!(got.body == sized_body(size), "different bytes arrived");
    }
    assert_eq!(upstream.calls.of("/large"), 2);
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_cross_the_proxy_in_either_direction() {
    let upstream = start_upstream().await;
    let proxy = start_proxy(upstream.addr, &[]).await;

    let got = proxy
        .client
        .get_with(
            "/hop",
            &[
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic eDp5"),
                ("te", "trailers"),
                ("x-end", "kept"),
            ],
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "hop");

    let seen = upstream.recorder.last();
    for name in [
        "x-hop",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "te",
    ] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream"
        );
    }
    assert_eq!(seen.headers["x-end"], "kept");
    // The client's Host is kept, not replaced by the upstream's address.
    assert_eq!(seen.headers["host"], proxy.addr.to_string());

    for name in [
        "x-resp-hop",
        "connection",
        "keep-alive",
        "proxy-authenticate",
    ] {
        assert!(!got.headers.contains_key(name), "{name} reached the client");
    }
    assert_eq!(got.headers["x-end-resp"], "kept");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_and_the_proxy_serves_again_once_it_is_back() {
    let addr = unused_addr();
    let proxy = start_proxy(addr, &[]).await;

    let down = proxy.client.get("/item?cc=max-age=60").await;
    assert_eq!(down.status, 502);
    assert!(down.text().contains("Bad Gateway"), "{}", down.text());
    assert_eq!(down.headers["content-type"], "text/plain; charset=utf-8");
    let refused = proxy.client.send("POST", "/echo", &[], "x".into()).await;
    assert_eq!(refused.status, 502);

    let calls = Calls::default();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = upstream_app(calls.clone(), Recorder::default());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let back = proxy.client.get("/item?cc=max-age=60").await;
    assert_eq!(back.status, 200);
    assert!(back.text().contains("path=/item"), "{}", back.text());
    assert_eq!(calls.of("/item"), 1);
}

#[tokio::test]
async fn with_redis_a_max_age_response_is_a_miss_then_a_hit() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let proxy = start_proxy(upstream.addr, &["--redis", &redis.url()]).await;

    let first = proxy.client.get("/fresh?cc=max-age=60").await;
    assert!(
        first
            .cache_status()
            .starts_with("trc; fwd=miss; stored; ttl="),
        "{}",
        first.cache_status()
    );
    stored(&proxy.layer, 1).await;
    let second = proxy.client.get("/fresh?cc=max-age=60").await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!(second.body, first.body);
    assert_eq!(upstream.calls.of("/fresh"), 1);
    assert_eq!(proxy.layer.store().name(), "redis");
}

#[test]
fn arguments_parse_into_a_configuration_with_shared_mode_and_memory_by_default() {
    let config = match proxy::parse_args([
        "--listen",
        "127.0.0.1:8080",
        "--upstream",
        "http://127.0.0.1:9000",
    ]) {
        Ok(Command::Run(config)) => config,
        other => panic!("{other:?}"),
    };
    assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.upstream.to_string(), "http://127.0.0.1:9000");
    assert_eq!(config.store, StoreChoice::Memory);
    assert_eq!(config.mode, Mode::Shared);
    assert_eq!(
        proxy::ready_line(&config, "127.0.0.1:8080".parse().unwrap()),
        "proxy listening on http://127.0.0.1:8080 (upstream http://127.0.0.1:9000, mode shared, \
         store memory)"
    );

    let config = match proxy::parse_args([
        "--mode=app",
        "--redis",
        "redis://127.0.0.1:6379",
        "--upstream=http://origin.internal:81/",
        "--listen=[::1]:0",
    ]) {
        Ok(Command::Run(config)) => config,
        other => panic!("{other:?}"),
    };
    assert_eq!(config.mode, Mode::Application);
    assert_eq!(
        config.store,
        StoreChoice::Redis("redis://127.0.0.1:6379".to_owned())
    );
    assert_eq!(config.upstream.to_string(), "http://origin.internal:81");
    assert_eq!(
        proxy::parse_args(["--listen", "nope", "--help"]),
        Ok(Command::Help)
    );
}

#[test]
fn bad_arguments_are_errors_that_say_what_is_wrong() {
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
    ];
    let with = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        proxy::parse_args(args).unwrap_err()
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "--listen is required"),
        (vec!["--listen", "127.0.0.1:0"], "--upstream is required"),
        (
            vec!["--listen", "localhost", "--upstream", "http://a"],
            "--listen",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--upstream", "https://a"],
            "https",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--upstream", "http://a/base"],
            "without a path",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--upstream", "http://u@a"],
            "user information",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--upstream", "a:80"],
            "--upstream",
        ),
        (vec!["--listen"], "needs a value"),
        (vec!["stray"], "unexpected argument"),
    ];
    for (args, expected) in cases {
        let message = proxy::parse_args(args.clone()).unwrap_err();
        assert!(message.contains(expected), "{args:?}: {message}");
    }
    assert!(with(&["--mode", "private"]).contains("--mode"));
    assert!(with(&["--verbose", "1"]).contains("unknown option: --verbose"));
    assert!(with(&["--listen", "127.0.0.1:1"]).contains("more than once"));
    assert!(with(&["--redis", "memcached://x"]).contains("redis://"));
    #[cfg(not(feature = "cluster"))]
    assert!(with(&["--redis", "redis://a:1,redis://b:2"]).contains("`cluster` feature"));
    #[cfg(feature = "cluster")]
    for list in [
        "redis://a:1,",
        "redis://a:1,memcached://b:2",
        "redis://a:1,redis://",
    ] {
        assert!(
            with(&["--redis", list]).contains("comma-separated list"),
            "{list}"
        );
    }
}

#[cfg(feature = "cluster")]
#[test]
fn a_list_of_node_urls_selects_the_cluster_store() {
    let config = match proxy::parse_args([
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
        "--redis",
        "redis://a:7000, redis://b:7001,rediss://c:7002",
    ]) {
        Ok(Command::Run(config)) => config,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        config.store,
        StoreChoice::Cluster("redis://a:7000, redis://b:7001,rediss://c:7002".to_owned())
    );
    assert_eq!(config.store.name(), "redis-cluster");
    // The URLs may carry passwords: the configuration never prints them.
    assert_eq!(format!("{:?}", config.store), "Cluster(..)");
}

#[tokio::test]
async fn the_documented_command_line_runs_the_proxy_as_a_process() {
    let upstream = start_upstream().await;
    let upstream_url = format!("http://{}", upstream.addr);
    let process = ProxyProcess::start(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream_url,
        "--mode",
        "shared",
    ])
    .await;
    assert_ne!(
        process.addr.port(),
        0,
        "the ready line names the bound port"
    );
    assert_eq!(
        process.ready_line,
        format!(
            "proxy listening on http://{} (upstream {upstream_url}, mode shared, store memory)",
            process.addr
        )
    );

    let client = HttpClient::new(process.addr);
    let first = client.get("/fresh?cc=max-age=60").await;
    assert_eq!(first.status, 200);
    assert!(first.text().contains("path=/fresh"), "{}", first.text());
    assert!(first.cache_status().starts_with("trc; fwd=miss; stored"));
    // The entry is written in the background: ask until it is there.
    let mut hit = None;
    for _ in 0..500 {
        let again = client.get("/fresh?cc=max-age=60").await;
        assert_eq!(again.body, first.body);
        if again.is_hit() {
            hit = Some(again);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let hit = hit.expect("the process never answered from its cache");
    assert!(hit.cache_status().starts_with("trc; hit; ttl="));
    let calls = upstream.calls.of("/fresh");
    let again = client.get("/fresh?cc=max-age=60").await;
    assert!(again.is_hit(), "{}", again.cache_status());
    assert_eq!(
        upstream.calls.of("/fresh"),
        calls,
        "a hit does not reach the upstream"
    );
    process.stop().await;
}

#[tokio::test]
async fn help_exits_0_and_bad_arguments_exit_2() {
    let (code, stdout, _) = run_example(&["--help"]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("usage: proxy --listen ADDR --upstream URL"));

    // Without the `cluster` feature a list of node URLs is an argument error too.
    let refused_list: &[&str] = &[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
        "--redis",
        if cfg!(feature = "cluster") {
            "redis://a:1,memcached://b:2"
        } else {
            "redis://a:1,redis://b:2"
        },
    ];
    for args in [
        &[][..],
        &["--listen", "127.0.0.1:0"][..],
        &["--listen", "127.0.0.1:0", "--upstream", "ftp://x"][..],
        refused_list,
    ] {
        let (code, stdout, stderr) = run_example(args).await;
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(stderr.contains("usage: proxy"), "{args:?}: {stderr}");
    }
    let (_, _, stderr) = run_example(refused_list).await;
    if cfg!(feature = "cluster") {
        assert!(stderr.contains("comma-separated list"), "{stderr}");
    } else {
        assert!(stderr.contains("`cluster` feature"), "{stderr}");
    }
}

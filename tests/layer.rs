//! The public surface of `CacheLayer` / `CacheService` around plain Tower services: the Tower
//! contract (readiness, hits that spare the inner service, `Clone`), the `CacheStatus`
//! extension, configuration from environment-style variables, route templates, `Debug`, the
//! reasons given for responses that are not stored, and the cache's name in `Cache-Status`.

mod support;

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_RANGE, EXPIRES, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use support::origin::eventually;
use tower::util::ServiceFn;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_response_cache::{
    CacheBody, CacheLayer, CacheOutcome, CacheService, CacheStatus, Error, MemoryStore, NoStore,
    NotStorable, Route,
};
use tower_test::mock::{self, Mock};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What a response looked like once its body was read.
#[derive(Debug)]
struct Fetched {
    status: StatusCode,
    cache_status: String,
    extension: CacheStatus,
    body: Bytes,
}

impl Fetched {
    /// The `ttl=` parameter of the `Cache-Status` header.
    fn ttl(&self) -> Option<i64> {
        self.cache_status
            .split("; ")
            .find_map(|part| part.strip_prefix("ttl="))
            .and_then(|ttl| ttl.parse().ok())
    }
}

fn get(path: &str) -> Request<()> {
    Request::get(format!("http://example.com{path}"))
        .body(())
        .unwrap()
}

fn memory_layer() -> CacheLayer {
    CacheLayer::new(MemoryStore::new()).jitter(0.0)
}

/// Send one request through a clone of `service` and read the whole response.
async fn fetch<S, B, E>(service: &S, request: Request<B>) -> Fetched
where
    S: Service<Request<B>, Response = Response<CacheBody<Full<Bytes>>>, Error = E> + Clone,
    E: std::fmt::Debug,
{
    let response = service.clone().oneshot(request).await.unwrap();
    read(response).await
}

async fn read(response: Response<CacheBody<Full<Bytes>>>) -> Fetched {
    let status = response.status();
    let cache_status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let extension = *response
        .extensions()
        .get::<CacheStatus>()
        .expect("every response carries a CacheStatus extension");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Fetched {
        status,
        cache_status,
        extension,
        body,
    }
}

/// Wait until the layer has written `n` entries (writes land in the background).
async fn stored(layer: &CacheLayer, n: u64) {
    assert!(
        eventually(|| layer.stats().stores >= n).await,
        "expected {n} stores, stats: {:?}",
        layer.stats()
    );
}

/// What the plain origins below answer with.
type OriginReply = Ready<Result<Response<Full<Bytes>>, Infallible>>;

/// A plain Tower service behind the layer, counting its calls; it answers with `respond`.
fn stack(
    layer: CacheLayer,
    calls: &Arc<AtomicUsize>,
    respond: fn(&Request<()>) -> Response<Full<Bytes>>,
) -> CacheService<ServiceFn<impl Fn(Request<()>) -> OriginReply + Clone>> {
    let calls = Arc::clone(calls);
    ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |request: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            ready(Ok::<_, Infallible>(respond(&request)))
        }))
}

fn hello(request: &Request<()>) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from(format!(
        "hello from {}",
        request.uri().path()
    ))))
}

type MockInner = Mock<Request<()>, Response<Full<Bytes>>>;
type MockHandle = mock::Handle<Request<()>, Response<Full<Bytes>>>;

/// Answer the next request the mock sees with `body`, checking its path.
async fn answer_next(handle: &mut MockHandle, path: &str, body: &'static [u8]) {
    let (request, reply) = handle
        .next_request()
        .await
        .expect("the request reaches the inner service");
    assert_eq!(request.uri().path(), path);
    reply.send_response(Response::new(Full::new(Bytes::from_static(body))));
}

/// Fill the cache for `path` through `service`, answering the mock's request with `body`.
async fn fill(
    layer: &CacheLayer,
    service: &mut CacheService<MockInner>,
    handle: &mut MockHandle,
    path: &str,
    body: &'static [u8],
) -> Fetched {
    let response = service.ready().await.unwrap().call(get(path));
    let (response, ()) = tokio::join!(response, answer_next(handle, path, body));
    let fetched = read(response.unwrap()).await;
    stored(layer, 1).await;
    fetched
}

// ---------------------------------------------------------------------------------------------
// 1. The Tower contract, with tower-test's mock service
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn poll_ready_is_pending_while_the_inner_service_is_not_ready() {
    let (mut service, mut handle) =
        mock::spawn_layer::<Request<()>, Response<Full<Bytes>>, _>(memory_layer());
    handle.allow(0);
    assert!(service.poll_ready().is_pending());
    assert!(!service.is_woken());
    handle.allow(1);
    assert!(
        service.is_woken(),
        "the inner service's wake-up reaches the caller"
    );
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
}

#[tokio::test]
async fn poll_ready_passes_the_inner_services_error_through() {
    let (mut service, mut handle) =
        mock::spawn_layer::<Request<()>, Response<Full<Bytes>>, _>(memory_layer());
    handle.send_error("inner service is broken");
    match service.poll_ready() {
        Poll::Ready(Err(err)) => assert_eq!(err.to_string(), "inner service is broken"),
        other => panic!("expected the inner error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hit_does_not_call_the_inner_service() {
    let layer = memory_layer();
    let (inner, mut handle) = mock::pair::<Request<()>, Response<Full<Bytes>>>();
    let mut service = layer.layer(inner);
    let miss = fill(&layer, &mut service, &mut handle, "/hit", b"from origin").await;
    assert_eq!(miss.extension.outcome, CacheOutcome::Miss);
    assert_eq!(miss.body.as_ref(), b"from origin");

    let hit = fetch(&service, get("/hit")).await;
    assert_eq!(hit.extension.outcome, CacheOutcome::Hit);
    assert_eq!(hit.cache_status, "trc; hit; ttl=300");
    assert_eq!(hit.body, miss.body);
    assert!(
        handle.poll_request().is_pending(),
        "the inner service saw a request for a hit"
    );
    assert_eq!(layer.stats().hits, 1);
    assert_eq!(layer.stats().misses, 1);
}

#[tokio::test]
async fn a_clone_of_the_service_shares_the_cache_of_its_original() {
    let layer = memory_layer();
    let (inner, mut handle) = mock::pair::<Request<()>, Response<Full<Bytes>>>();
    let mut original = layer.layer(inner);
    let copy = original.clone();
    fill(
        &layer,
        &mut original,
        &mut handle,
        "/shared",
        b"filled once",
    )
    .await;
    drop(original);

    let hit = fetch(&copy, get("/shared")).await;
    assert!(hit.extension.is_hit(), "{}", hit.cache_status);
    assert_eq!(hit.body.as_ref(), b"filled once");
    assert!(handle.poll_request().is_pending());

    // The clone still reaches the inner service on a miss of its own.
    let mut copy = copy;
    let response = copy.ready().await.unwrap().call(get("/other"));
    let (response, ()) = tokio::join!(response, answer_next(&mut handle, "/other", b"other"));
    let other = read(response.unwrap()).await;
    assert_eq!(other.extension.outcome, CacheOutcome::Miss);
    assert_eq!(other.body.as_ref(), b"other");
}

// ---------------------------------------------------------------------------------------------
// 2. A plain tower::service_fn behind ServiceBuilder
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_service_fn_is_called_once_for_a_miss_then_a_hit() {
    let layer = memory_layer();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = stack(layer.clone(), &calls, hello);

    let miss = fetch(&service, get("/greeting")).await;
    assert_eq!(miss.status, StatusCode::OK);
    assert_eq!(
        miss.extension,
        CacheStatus {
            outcome: CacheOutcome::Miss,
            stored: true,
            ttl: Some(300),
            detail: None,
        }
    );
    assert_eq!(miss.cache_status, "trc; fwd=miss; stored; ttl=300");
    assert_eq!(miss.body.as_ref(), b"hello from /greeting");
    stored(&layer, 1).await;

    let hit = fetch(&service, get("/greeting")).await;
    assert_eq!(hit.extension.outcome, CacheOutcome::Hit);
    assert!(hit.extension.is_hit());
    assert!(!hit.extension.stored);
    assert_eq!(hit.body, miss.body);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_service_taking_a_full_request_body_is_cached_too() {
    let layer = memory_layer();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(move |request: Request<Full<Bytes>>| {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = Bytes::from(request.uri().path().to_owned());
            ready(Ok::<_, Infallible>(Response::new(Full::new(body))))
        }));
    let request = || {
        Request::get("http://example.com/with-body-type")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let miss = fetch(&service, request()).await;
    assert_eq!(miss.extension.outcome, CacheOutcome::Miss);
    stored(&layer, 1).await;
    let hit = fetch(&service, request()).await;
    assert_eq!(hit.extension.outcome, CacheOutcome::Hit);
    assert_eq!(hit.body.as_ref(), b"/with-body-type");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_bypassed_request_carries_a_bypass_extension() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = stack(memory_layer(), &calls, hello);
    let request = Request::post("http://example.com/greeting")
        .body(())
        .unwrap();
    let bypass = fetch(&service, request).await;
    assert_eq!(bypass.extension.outcome, CacheOutcome::Bypass);
    assert_eq!(bypass.extension.detail, Some("method"));
    assert_eq!(bypass.cache_status, "trc; fwd=bypass; detail=method");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// 3. CacheLayer::from_lookup
// ---------------------------------------------------------------------------------------------

/// A lookup over fixed variables; anything not listed is unset.
fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    }
}

fn store_name(pairs: &[(&str, &str)]) -> &'static str {
    let layer = CacheLayer::from_lookup(vars(pairs)).unwrap();
    layer.store().name()
}

/// The variable named by the `InvalidEnv` error these settings give.
fn refused_variable(pairs: &[(&str, &str)]) -> &'static str {
    match CacheLayer::from_lookup(vars(pairs)) {
        Err(Error::InvalidEnv { name, .. }) => name,
        other => panic!("expected InvalidEnv for {pairs:?}, got {other:?}"),
    }
}

#[test]
fn no_store_url_selects_the_memory_store() {
    assert_eq!(store_name(&[]), "memory");
}

#[test]
fn cache_url_memory_selects_the_memory_store() {
    assert_eq!(store_name(&[("CACHE_URL", "memory")]), "memory");
    assert_eq!(store_name(&[("REDIS_URL", "memory")]), "memory");
}

#[tokio::test]
async fn a_redis_url_selects_a_lazy_redis_store_even_when_nothing_listens() {
    assert_eq!(
        store_name(&[("REDIS_URL", "redis://127.0.0.1:1/")]),
        "redis"
    );
    assert_eq!(
        store_name(&[("CACHE_URL", "redis://127.0.0.1:1/")]),
        "redis"
    );
}

#[cfg(feature = "cluster")]
#[tokio::test]
async fn a_list_of_node_urls_selects_the_cluster_store() {
    let list = "redis://127.0.0.1:1/, redis://127.0.0.1:2/,redis://127.0.0.1:3/";
    assert_eq!(store_name(&[("REDIS_URL", list)]), "redis-cluster");
    assert_eq!(store_name(&[("CACHE_URL", list)]), "redis-cluster");
    // A comma inside one URL (a password) does not make a list.
    assert_eq!(
        store_name(&[("REDIS_URL", "redis://:pass,word@127.0.0.1:1/")]),
        "redis"
    );
    assert_eq!(
        refused_variable(&[("CACHE_URL", "redis://127.0.0.1:1/,ftp://x")]),
        "CACHE_URL"
    );
}

#[tokio::test]
async fn cache_url_wins_over_redis_url() {
    assert_eq!(
        store_name(&[
            ("CACHE_URL", "memory"),
            ("REDIS_URL", "redis://127.0.0.1:1/")
        ]),
        "memory"
    );
    assert_eq!(
        store_name(&[
            ("CACHE_URL", "redis://127.0.0.1:1/"),
            ("REDIS_URL", "memory")
        ]),
        "redis"
    );
    assert_eq!(
        refused_variable(&[
            ("CACHE_URL", "ftp://x"),
            ("REDIS_URL", "redis://127.0.0.1:1/")
        ]),
        "CACHE_URL"
    );
}

#[test]
fn malformed_variables_are_refused_by_name() {
    let cases: [(&str, &str); 7] = [
        ("CACHE_URL", "ftp://x"),
        ("REDIS_URL", "ftp://x"),
        ("CACHE_TTL_DEFAULT", "soon"),
        ("CACHE_PREFIX", "a:b"),
        ("CACHE_VERSION", ""),
        ("CACHE_VERSION", "v{1}"),
        ("CACHE_SECRET", "short"),
    ];
    for (name, value) in cases {
        assert_eq!(refused_variable(&[(name, value)]), name, "{name}={value:?}");
        let message = CacheLayer::from_lookup(vars(&[(name, value)]))
            .unwrap_err()
            .to_string();
        assert!(message.contains(name), "{message}");
    }
}

#[test]
fn a_refused_secret_is_not_echoed_in_the_error() {
    let message = CacheLayer::from_lookup(vars(&[("CACHE_SECRET", "tiny-secret")]))
        .unwrap_err()
        .to_string();
    assert!(message.contains("CACHE_SECRET"), "{message}");
    assert!(!message.contains("tiny-secret"), "{message}");
}

#[test]
fn well_formed_key_settings_are_accepted() {
    let layer = CacheLayer::from_lookup(vars(&[
        ("CACHE_PREFIX", "shop-1"),
        ("CACHE_VERSION", "v7"),
        ("CACHE_SECRET", "a secret of sixteen bytes or more"),
    ]));
    assert!(layer.is_ok(), "{layer:?}");
}

/// The TTL a miss announces under these settings.
async fn announced_ttl(pairs: &[(&str, &str)]) -> i64 {
    let layer = CacheLayer::from_lookup(vars(pairs)).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = stack(layer, &calls, hello);
    let miss = fetch(&service, get("/ttl")).await;
    assert!(
        miss.cache_status.starts_with("trc; fwd=miss; stored; ttl="),
        "{}",
        miss.cache_status
    );
    let ttl = miss.ttl().expect("a stored miss names its ttl");
    assert_eq!(miss.extension.ttl, Some(ttl));
    ttl
}

#[tokio::test]
async fn the_default_ttl_from_the_environment_shows_in_cache_status() {
    // Jitter (± 10 %) cannot be turned off from the environment.
    let five_minutes = announced_ttl(&[("CACHE_TTL_DEFAULT", "5m")]).await;
    assert!((270..=330).contains(&five_minutes), "ttl={five_minutes}");
    // 5m is also the built-in default; values that differ from it prove the variable is read.
    let ninety = announced_ttl(&[("CACHE_TTL_DEFAULT", "90s")]).await;
    assert!((81..=99).contains(&ninety), "ttl={ninety}");
    let two_hours = announced_ttl(&[("CACHE_TTL_DEFAULT", "2h")]).await;
    assert!((6480..=7920).contains(&two_hours), "ttl={two_hours}");
    let bare_seconds = announced_ttl(&[("CACHE_TTL_DEFAULT", "40")]).await;
    assert!((36..=44).contains(&bare_seconds), "ttl={bare_seconds}");
}

// ---------------------------------------------------------------------------------------------
// 4. Route templates
// ---------------------------------------------------------------------------------------------

#[test]
#[should_panic(expected = "/users/{id")]
fn a_malformed_route_template_panics_at_start_up() {
    let _ = CacheLayer::new(MemoryStore::new()).route(Route::template("/users/{id"));
}

#[test]
fn try_template_returns_the_error_instead() {
    let err = Route::try_template("/users/{id").unwrap_err();
    assert_eq!(err.pattern(), "/users/{id");
    assert!(!err.reason().is_empty());
    assert!(err.to_string().contains("/users/{id"), "{err}");
    // The error converts into the crate's error type.
    let err: Error = err.into();
    assert!(matches!(err, Error::Route(_)), "{err:?}");
    assert!(Route::try_template("/users/{id}").is_ok());
}

// ---------------------------------------------------------------------------------------------
// 5. Debug
// ---------------------------------------------------------------------------------------------

#[test]
fn debug_of_the_layer_does_not_show_the_secret() {
    let secret = b"super-secret-value-1234";
    let layer = CacheLayer::new(MemoryStore::new()).secret(secret);
    let debug = format!("{layer:?}");
    let pretty = format!("{layer:#?}");
    let as_numbers = format!("{:?}", &secret[..]);
    let as_numbers = as_numbers.trim_start_matches('[').trim_end_matches(']');
    let as_hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    for shown in [&debug, &pretty] {
        assert!(shown.starts_with("CacheLayer"), "{shown}");
        assert!(!shown.contains("super-secret-value-1234"), "{shown}");
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(!shown.contains(as_numbers), "{shown}");
        assert!(!shown.contains(&as_hex), "{shown}");
    }
    let from_env =
        CacheLayer::from_lookup(vars(&[("CACHE_SECRET", "super-secret-value-1234")])).unwrap();
    assert!(!format!("{from_env:?}").contains("super-secret"));
}

// ---------------------------------------------------------------------------------------------
// 6. Why a response was not stored
// ---------------------------------------------------------------------------------------------

fn refusing(request: &Request<()>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(&[b'x'; 64])));
    let headers = response.headers_mut();
    match request.uri().path() {
        "/set-cookie" => {
            headers.insert(SET_COOKIE, HeaderValue::from_static("session=1"));
        }
        "/no-cache" => {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        "/zero" => {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
        }
        "/bad-expires" => {
            headers.insert(EXPIRES, HeaderValue::from_static("whenever"));
        }
        "/content-range" => {
            headers.insert(CONTENT_RANGE, HeaderValue::from_static("bytes 0-63/100"));
        }
        "/partial" => *response.status_mut() = StatusCode::PARTIAL_CONTENT,
        "/handler" => {
            response.extensions_mut().insert(NoStore);
        }
        "/authenticated/me" => {}
        "/too-large" => {}
        _ => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
    }
    response
}

#[tokio::test]
async fn a_set_cookie_response_says_why_it_was_not_stored() {
    let layer = memory_layer();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = stack(layer.clone(), &calls, refusing);
    let reason = NotStorable::SetCookie.as_str();
    for _ in 0..2 {
        let got = fetch(&service, get("/set-cookie")).await;
        assert_eq!(got.cache_status, format!("trc; fwd=miss; detail={reason}"));
        assert!(got.cache_status.contains("detail=set-cookie"));
        assert_eq!(
            got.extension,
            CacheStatus {
                outcome: CacheOutcome::Miss,
                stored: false,
                ttl: None,
                detail: Some(reason),
            }
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let stats = layer.stats();
    assert_eq!(stats.not_stored_by[reason], 2);
    assert_eq!(stats.stores, 0);
    assert_eq!(stats.hits, 0);
}

#[tokio::test]
async fn every_refused_response_names_its_reason() {
    let layer = memory_layer()
        .max_body_size(16)
        .route(Route::prefix("/authenticated").allow_authenticated());
    let calls = Arc::new(AtomicUsize::new(0));
    let service = stack(layer.clone(), &calls, refusing);
    let cases = [
        ("/set-cookie", NotStorable::SetCookie),
        ("/no-cache", NotStorable::NoCacheDirective),
        ("/zero", NotStorable::NoFreshness),
        ("/bad-expires", NotStorable::NoFreshness),
        ("/content-range", NotStorable::ContentRange),
        ("/partial", NotStorable::ContentRange),
        ("/handler", NotStorable::HandlerNoStore),
        ("/authenticated/me", NotStorable::Authenticated),
        ("/too-large", NotStorable::TooLarge),
        ("/error", NotStorable::Status),
    ];
    for (path, reason) in cases {
        for _ in 0..2 {
            let mut request = get(path);
            // Only the route that allows credentials may carry them without a bypass.
            if path.starts_with("/authenticated") {
                request
                    .headers_mut()
                    .insert(AUTHORIZATION, HeaderValue::from_static("Bearer token"));
            }
            let got = fetch(&service, request).await;
            let want = format!("trc; fwd=miss; detail={}", reason.as_str());
            assert_eq!(got.cache_status, want, "{path}");
            assert_eq!(got.extension.outcome, CacheOutcome::Miss, "{path}");
            assert!(!got.extension.stored, "{path}");
            assert_eq!(got.extension.detail, Some(reason.as_str()), "{path}");
            assert_eq!(
                got.body.len(),
                64,
                "{path}: the body reaches the client whole"
            );
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2 * cases.len());
    let stats = layer.stats();
    assert_eq!(stats.not_stored, 2 * cases.len() as u64, "{stats:?}");
    assert_eq!(stats.stores, 0);
    assert_eq!(stats.hits, 0);
}

// ---------------------------------------------------------------------------------------------
// 7. The cache's name in Cache-Status
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cache_name_changes_the_cache_status_prefix() {
    let layer = memory_layer().cache_name("edge");
    let calls = Arc::new(AtomicUsize::new(0));
    let service = stack(layer.clone(), &calls, hello);
    let miss = fetch(&service, get("/named")).await;
    assert_eq!(miss.cache_status, "edge; fwd=miss; stored; ttl=300");
    stored(&layer, 1).await;
    let hit = fetch(&service, get("/named")).await;
    assert_eq!(hit.cache_status, "edge; hit; ttl=300");
    let post = Request::builder()
        .method(Method::POST)
        .uri("http://example.com/named")
        .body(())
        .unwrap();
    let bypass = fetch(&service, post).await;
    assert_eq!(bypass.cache_status, "edge; fwd=bypass; detail=method");
}

#[tokio::test]
async fn an_invalid_cache_name_is_ignored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let unnamed = stack(memory_layer().cache_name("a b"), &calls, hello);
    let miss = fetch(&unnamed, get("/unnamed")).await;
    assert_eq!(miss.cache_status, "trc; fwd=miss; stored; ttl=300");

    // An invalid name after a valid one keeps the valid one.
    let named = stack(
        memory_layer().cache_name("edge").cache_name("a b"),
        &calls,
        hello,
    );
    let miss = fetch(&named, get("/named")).await;
    assert_eq!(miss.cache_status, "edge; fwd=miss; stored; ttl=300");
}

//! A table-driven HTTP caching conformance suite: RFC 9111 as this crate applies it, plus the
//! attacks a shared cache has to survive.
//!
//! Every case builds its own stack: an Axum router whose only handler (the fallback) answers
//! from the case's script, wrapped by a fresh `CacheLayer` on a `MemoryStore` with jitter off.
//! The case then sends its requests one after the other with `oneshot` on clones of the layered
//! router and checks, after each one, the cache outcome (hit / miss / bypass, stored or not), the
//! status, body markers, headers, and how often the origin has been called so far. Background
//! writes are waited for by polling the layer's `stores` counter, never by timing anything.
//!
//! The script's header values and bodies are templates: `{call}` is the origin call number,
//! `{method}` the request method, `{h:NAME}` the request's `NAME` header (or `-`), and `{now}`,
//! `{now+N}`, `{now-N}` an HTTP date relative to the moment the origin answers.
//!
//! Each test function runs one table and reports every failing case at once, with the step and
//! what differed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_response_cache::{CacheLayer, MemoryStore, Mode, Route};

// ---------------------------------------------------------------------------------------------
// The origin's script
// ---------------------------------------------------------------------------------------------

/// One scripted origin response.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

/// A 200 whose body names the origin call that produced it (`call=N.`).
fn ok() -> Reply {
    status(200)
}

fn status(code: u16) -> Reply {
    Reply {
        status: code,
        headers: Vec::new(),
        body: "call={call}.".to_owned(),
    }
}

impl Reply {
    /// Adds a header line (repeated names give repeated lines).
    fn h(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn cc(self, value: &str) -> Self {
        self.h("cache-control", value)
    }

    fn body(mut self, template: impl Into<String>) -> Self {
        self.body = template.into();
        self
    }
}

/// What makes a rule's reply replace the call's scripted one.
#[derive(Debug, Clone)]
enum Match {
    /// The request has this header, and its value contains the text (if one is given).
    Header(&'static str, Option<&'static str>),
    /// The request has this method.
    Method(&'static str),
}

/// The origin's behaviour: a reply per call number (the last one repeats), overridden by the
/// first rule that matches the request.
#[derive(Debug, Clone)]
struct Origin {
    replies: Vec<Reply>,
    rules: Vec<(Match, Reply)>,
}

fn origin(first: Reply) -> Origin {
    Origin {
        replies: vec![first],
        rules: Vec::new(),
    }
}

impl Origin {
    /// The reply of the next origin call (and of every later one, unless followed by another).
    fn then(mut self, reply: Reply) -> Self {
        self.replies.push(reply);
        self
    }

    /// Answer requests with this header (containing `contains`, if given) with `reply`.
    fn when(mut self, header: &'static str, contains: Option<&'static str>, reply: Reply) -> Self {
        self.rules.push((Match::Header(header, contains), reply));
        self
    }

    /// Answer requests with this method with `reply`.
    fn when_method(mut self, method: &'static str, reply: Reply) -> Self {
        self.rules.push((Match::Method(method), reply));
        self
    }

    fn reply_for(&self, call: u64, method: &Method, headers: &HeaderMap) -> &Reply {
        let matched = self.rules.iter().find(|(rule, _)| match rule {
            Match::Header(name, contains) => headers.get_all(*name).iter().any(|value| {
                contains.is_none_or(|text| String::from_utf8_lossy(value.as_bytes()).contains(text))
            }),
            Match::Method(wanted) => method.as_str() == *wanted,
        });
        if let Some((_, reply)) = matched {
            return reply;
        }
        let index = usize::try_from(call.saturating_sub(1)).unwrap_or(usize::MAX);
        self.replies
            .get(index)
            .or(self.replies.last())
            .expect("an origin has at least one reply")
    }
}

/// A request the origin received.
struct Seen {
    method: Method,
    headers: HeaderMap,
}

struct OriginState {
    script: Origin,
    calls: AtomicU64,
    seen: Mutex<Vec<Seen>>,
}

impl OriginState {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn last_seen<T>(&self, read: impl FnOnce(Option<&Seen>) -> T) -> T {
        let seen = self
            .seen
            .lock()
            .expect("the origin's log is never poisoned");
        read(seen.last())
    }
}

async fn origin_handler(State(state): State<Arc<OriginState>>, request: Request) -> Response {
    let call = state.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let (parts, _body) = request.into_parts();
    let reply = state
        .script
        .reply_for(call, &parts.method, &parts.headers)
        .clone();
    state
        .seen
        .lock()
        .expect("the origin's log is never poisoned")
        .push(Seen {
            method: parts.method.clone(),
            headers: parts.headers.clone(),
        });
    let mut builder = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(*name, expand(value, call, &parts.method, &parts.headers));
    }
    let body = expand(&reply.body, call, &parts.method, &parts.headers);
    builder
        .body(Body::from(body))
        .expect("the script's replies are valid responses")
}

/// Fills in the `{...}` placeholders of a template (see the module docs).
fn expand(template: &str, call: u64, method: &Method, headers: &HeaderMap) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let (before, from_brace) = rest.split_at(start);
        out.push_str(before);
        let inner = &from_brace[1..];
        match inner.find('}') {
            Some(end) => {
                let token = &inner[..end];
                match placeholder(token, call, method, headers) {
                    Some(value) => out.push_str(&value),
                    None => {
                        out.push('{');
                        out.push_str(token);
                        out.push('}');
                    }
                }
                rest = &inner[end + 1..];
            }
            None => {
                out.push_str(from_brace);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn placeholder(token: &str, call: u64, method: &Method, headers: &HeaderMap) -> Option<String> {
    if token == "call" {
        return Some(call.to_string());
    }
    if token == "method" {
        return Some(method.to_string());
    }
    if let Some(name) = token.strip_prefix("h:") {
        return Some(
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_else(|| "-".to_owned()),
        );
    }
    let offset = token.strip_prefix("now")?;
    let now = SystemTime::now();
    let when = if offset.is_empty() {
        now
    } else if let Some(secs) = offset.strip_prefix('+') {
        now + Duration::from_secs(secs.parse().ok()?)
    } else {
        now - Duration::from_secs(offset.strip_prefix('-')?.parse().ok()?)
    };
    Some(httpdate::fmt_http_date(when))
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
    /// How long to wait before sending (to let an entry expire).
    after: Duration,
}

fn req(method: &'static str, path: &str) -> Req {
    Req {
        method,
        path: path.to_owned(),
        headers: Vec::new(),
        body: Bytes::new(),
        after: Duration::ZERO,
    }
}

fn get(path: &str) -> Req {
    req("GET", path)
}

fn head(path: &str) -> Req {
    req("HEAD", path)
}

impl Req {
    fn h(self, name: &str, value: &str) -> Self {
        self.h_bytes(name, value.as_bytes())
    }

    fn h_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.headers.push((name.to_owned(), value.to_vec()));
        self
    }

    /// A request body, announced with its `Content-Length`.
    fn with_body(mut self, body: &[u8]) -> Self {
        let len = body.len().to_string();
        self.body = Bytes::copy_from_slice(body);
        self.h("content-length", &len)
    }

    fn after_ms(mut self, ms: u64) -> Self {
        self.after = Duration::from_millis(ms);
        self
    }

    fn build(&self) -> Request {
        let mut request = http::Request::builder()
            .method(self.method)
            .uri(format!("http://example.com{}", self.path));
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid header name");
            let value = HeaderValue::from_bytes(value).expect("a valid header value");
            request = request.header(name, value);
        }
        request
            .body(Body::from(self.body.clone()))
            .expect("a valid request")
    }
}

// ---------------------------------------------------------------------------------------------
// Expectations
// ---------------------------------------------------------------------------------------------

/// What `Cache-Status` says the cache did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Hit,
    Miss,
    Bypass,
    /// No `Cache-Status` at all: an answer the layer generated itself (only-if-cached).
    Local,
    Unknown,
}

#[derive(Debug, Clone)]
enum Check {
    Ttl(i64, i64),
    Detail(&'static str),
    BodyHas(String),
    BodyLacks(String),
    EmptyBody,
    Has(&'static str),
    Lacks(&'static str),
    HeaderIs(&'static str, &'static str),
    HeaderLacksText(&'static str, String),
    /// The header has exactly one field line.
    Once(&'static str),
    AgeAtLeast(u64),
    AgeAtMost(u64),
    /// The origin's latest request had this header, containing this text.
    OriginSaw(&'static str, &'static str),
    /// The origin's latest request did not have this header.
    OriginLacked(&'static str),
    OriginMethod(&'static str),
}

#[derive(Debug, Clone)]
struct Expect {
    outcome: Outcome,
    stored: bool,
    status: u16,
    /// Origin calls so far, this request included.
    calls: u64,
    checks: Vec<Check>,
}

fn expect(outcome: Outcome, calls: u64) -> Expect {
    Expect {
        outcome,
        stored: false,
        status: 200,
        calls,
        checks: Vec::new(),
    }
}

fn hit(calls: u64) -> Expect {
    expect(Outcome::Hit, calls)
}

fn miss(calls: u64) -> Expect {
    expect(Outcome::Miss, calls)
}

fn bypass(calls: u64) -> Expect {
    expect(Outcome::Bypass, calls)
}

fn local(calls: u64) -> Expect {
    expect(Outcome::Local, calls)
}

impl Expect {
    fn stored(mut self) -> Self {
        self.stored = true;
        self
    }

    fn status(mut self, code: u16) -> Self {
        self.status = code;
        self
    }

    fn check(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    fn ttl(self, secs: i64) -> Self {
        self.check(Check::Ttl(secs, secs))
    }

    fn ttl_in(self, low: i64, high: i64) -> Self {
        self.check(Check::Ttl(low, high))
    }

    fn detail(self, detail: &'static str) -> Self {
        self.check(Check::Detail(detail))
    }

    fn body(self, marker: &str) -> Self {
        self.check(Check::BodyHas(marker.to_owned()))
    }

    fn body_lacks(self, marker: &str) -> Self {
        self.check(Check::BodyLacks(marker.to_owned()))
    }

    fn empty_body(self) -> Self {
        self.check(Check::EmptyBody)
    }

    fn has(self, name: &'static str) -> Self {
        self.check(Check::Has(name))
    }

    fn lacks(self, name: &'static str) -> Self {
        self.check(Check::Lacks(name))
    }

    fn header(self, name: &'static str, value: &'static str) -> Self {
        self.check(Check::HeaderIs(name, value))
    }

    fn header_lacks(self, name: &'static str, text: &str) -> Self {
        self.check(Check::HeaderLacksText(name, text.to_owned()))
    }

    fn once(self, name: &'static str) -> Self {
        self.check(Check::Once(name))
    }

    fn age_in(self, low: u64, high: u64) -> Self {
        self.check(Check::AgeAtLeast(low))
            .check(Check::AgeAtMost(high))
    }

    fn origin_saw(self, name: &'static str, text: &'static str) -> Self {
        self.check(Check::OriginSaw(name, text))
    }

    fn origin_lacked(self, name: &'static str) -> Self {
        self.check(Check::OriginLacked(name))
    }

    fn origin_method(self, method: &'static str) -> Self {
        self.check(Check::OriginMethod(method))
    }

    fn verify(&self, got: &Got, origin: &OriginState, problems: &mut Vec<String>) {
        let outcome = got.outcome();
        if outcome != self.outcome {
            problems.push(format!(
                "expected outcome {:?}, got {outcome:?}",
                self.outcome
            ));
        }
        if got.stored() != self.stored {
            problems.push(format!(
                "expected stored={}, got stored={}",
                self.stored,
                got.stored()
            ));
        }
        if got.status != self.status {
            problems.push(format!(
                "expected status {}, got {}",
                self.status, got.status
            ));
        }
        let calls = origin.calls();
        if calls != self.calls {
            problems.push(format!(
                "expected {} origin call(s) so far, got {calls}",
                self.calls
            ));
        }
        for check in &self.checks {
            if let Err(problem) = check.holds(got, origin) {
                problems.push(problem);
            }
        }
    }
}

impl Check {
    fn holds(&self, got: &Got, origin: &OriginState) -> Result<(), String> {
        let fail = |what: String| Err(what);
        match self {
            Check::Ttl(low, high) => match got.param("ttl").and_then(|t| t.parse::<i64>().ok()) {
                Some(ttl) if (*low..=*high).contains(&ttl) => Ok(()),
                other => fail(format!("expected ttl in {low}..={high}, got {other:?}")),
            },
            Check::Detail(detail) => match got.param("detail") {
                Some(found) if found == *detail => Ok(()),
                other => fail(format!("expected detail={detail}, got {other:?}")),
            },
            Check::BodyHas(marker) if got.text().contains(marker.as_str()) => Ok(()),
            Check::BodyHas(marker) => fail(format!(
                "expected the body to contain {marker:?}, got {:?}",
                got.text()
            )),
            Check::BodyLacks(marker) if !got.text().contains(marker.as_str()) => Ok(()),
            Check::BodyLacks(marker) => fail(format!(
                "expected the body NOT to contain {marker:?}, got {:?}",
                got.text()
            )),
            Check::EmptyBody if got.body.is_empty() => Ok(()),
            Check::EmptyBody => fail(format!("expected no body, got {:?}", got.text())),
            Check::Has(name) if got.headers.contains_key(*name) => Ok(()),
            Check::Has(name) => fail(format!("expected a {name} header, got none")),
            Check::Lacks(name) => match got.headers.get(*name) {
                None => Ok(()),
                Some(value) => fail(format!("expected no {name} header, got {value:?}")),
            },
            Check::HeaderIs(name, wanted) => match got.headers.get(*name) {
                Some(value) if value.as_bytes() == wanted.as_bytes() => Ok(()),
                other => fail(format!("expected {name}: {wanted}, got {other:?}")),
            },
            Check::HeaderLacksText(name, text) => {
                let bad = got
                    .headers
                    .get_all(*name)
                    .iter()
                    .find(|v| String::from_utf8_lossy(v.as_bytes()).contains(text.as_str()));
                match bad {
                    None => Ok(()),
                    Some(value) => fail(format!(
                        "expected no {name} value containing {text:?}, got {value:?}"
                    )),
                }
            }
            Check::Once(name) => match got.headers.get_all(*name).iter().count() {
                1 => Ok(()),
                n => fail(format!("expected exactly one {name} line, got {n}")),
            },
            Check::AgeAtLeast(low) => match got.age() {
                Some(age) if age >= *low => Ok(()),
                other => fail(format!("expected Age >= {low}, got {other:?}")),
            },
            Check::AgeAtMost(high) => match got.age() {
                Some(age) if age <= *high => Ok(()),
                other => fail(format!("expected Age <= {high}, got {other:?}")),
            },
            Check::OriginSaw(name, text) => origin.last_seen(|seen| {
                let value = seen
                    .and_then(|s| s.headers.get(*name))
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                match value {
                    Some(value) if value.contains(text) => Ok(()),
                    other => fail(format!(
                        "expected the origin to see {name} containing {text:?}, it saw {other:?}"
                    )),
                }
            }),
            Check::OriginLacked(name) => {
                origin.last_seen(|seen| match seen.and_then(|s| s.headers.get(*name)) {
                    None => Ok(()),
                    Some(value) => fail(format!(
                        "expected the origin not to see {name}, it saw {value:?}"
                    )),
                })
            }
            Check::OriginMethod(method) => origin.last_seen(|seen| match seen {
                Some(seen) if seen.method.as_str() == *method => Ok(()),
                other => fail(format!(
                    "expected the origin to see a {method}, it saw {:?}",
                    other.map(|s| s.method.clone())
                )),
            }),
        }
    }
}

/// A response as the client saw it.
struct Got {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn cache_status(&self) -> Option<String> {
        self.headers
            .get("cache-status")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    fn outcome(&self) -> Outcome {
        match self.cache_status() {
            None => Outcome::Local,
            Some(s) if s.contains("; hit") => Outcome::Hit,
            Some(s) if s.contains("; fwd=miss") => Outcome::Miss,
            Some(s) if s.contains("; fwd=bypass") => Outcome::Bypass,
            Some(_) => Outcome::Unknown,
        }
    }

    fn stored(&self) -> bool {
        self.cache_status()
            .is_some_and(|s| s.split("; ").any(|p| p == "stored"))
    }

    /// A `name=value` parameter of `Cache-Status`.
    fn param(&self, name: &str) -> Option<String> {
        let status = self.cache_status()?;
        status
            .split("; ")
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    }

    fn age(&self) -> Option<u64> {
        self.headers.get("age")?.to_str().ok()?.parse().ok()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Cases and the runner
// ---------------------------------------------------------------------------------------------

/// How the layer of a case is configured (beyond the memory store and jitter off).
#[derive(Debug, Clone, Copy)]
struct Setup {
    mode: Mode,
    honour_client_no_cache: bool,
    /// Every path allows authenticated use (`Route::prefix("/").allow_authenticated()`).
    opt_in_auth: bool,
    /// An extra header on the deny-list.
    deny: Option<&'static str>,
}

const APP: Setup = Setup {
    mode: Mode::Application,
    honour_client_no_cache: false,
    opt_in_auth: false,
    deny: None,
};
const SHARED: Setup = Setup {
    mode: Mode::Shared,
    ..APP
};
const APP_OPT_IN: Setup = Setup {
    opt_in_auth: true,
    ..APP
};
const SHARED_OPT_IN: Setup = Setup {
    opt_in_auth: true,
    ..SHARED
};

impl Setup {
    fn layer(&self) -> CacheLayer {
        let mut layer = CacheLayer::new(MemoryStore::new())
            .jitter(0.0)
            .mode(self.mode)
            .honour_client_no_cache(self.honour_client_no_cache);
        if self.opt_in_auth {
            layer = layer.route(Route::prefix("/").allow_authenticated());
        }
        if let Some(name) = self.deny {
            layer = layer.deny_header(HeaderName::from_static(name));
        }
        layer
    }
}

struct Case {
    name: String,
    setup: Setup,
    origin: Origin,
    steps: Vec<(Req, Expect)>,
}

fn case(name: impl Into<String>, setup: Setup, origin: Origin, steps: Vec<(Req, Expect)>) -> Case {
    Case {
        name: name.into(),
        setup,
        origin,
        steps,
    }
}

/// Wait until the layer has written at least `n` entries, for at most 5 s.
async fn stores_reach(layer: &CacheLayer, n: u64) -> bool {
    for _ in 0..500 {
        if layer.stats().stores >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    layer.stats().stores >= n
}

async fn send(app: &Router, request: &Req) -> Got {
    let response = match app.clone().oneshot(request.build()).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .expect("the body reads to its end");
    Got {
        status,
        headers,
        body,
    }
}

/// Run one case on a fresh stack; the failures, one line each.
async fn run_case(case: &Case) -> Vec<String> {
    let state = Arc::new(OriginState {
        script: case.origin.clone(),
        calls: AtomicU64::new(0),
        seen: Mutex::new(Vec::new()),
    });
    let layer = case.setup.layer();
    let app: Router = Router::new()
        .fallback(origin_handler)
        .with_state(Arc::clone(&state))
        .layer(layer.clone());
    let mut failures = Vec::new();
    let mut expected_stores = 0;
    for (i, (request, expected)) in case.steps.iter().enumerate() {
        if !request.after.is_zero() {
            tokio::time::sleep(request.after).await;
        }
        let before = layer.stats().stores;
        let got = send(&app, request).await;
        let mut problems = Vec::new();
        expected.verify(&got, &state, &mut problems);
        if expected.stored {
            expected_stores += 1;
            if !stores_reach(&layer, before + 1).await {
                problems.push(format!(
                    "expected the entry to be written, stats.stores stayed at {}",
                    layer.stats().stores
                ));
            }
        }
        for problem in problems {
            failures.push(format!(
                "[{}] step {} ({} {}): {problem} (cache-status: {:?})",
                case.name,
                i + 1,
                request.method,
                request.path,
                got.cache_status()
            ));
        }
    }
    // Let a write that should not have happened land before counting.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stores = layer.stats().stores;
    if stores != expected_stores {
        failures.push(format!(
            "[{}] expected {expected_stores} entries written in all, got {stores}",
            case.name
        ));
    }
    failures
}

async fn run_table(cases: Vec<Case>) {
    assert!(!cases.is_empty(), "a table has cases");
    let mut failures = Vec::new();
    let mut failed_cases = 0;
    for case in &cases {
        let found = run_case(case).await;
        if !found.is_empty() {
            failed_cases += 1;
        }
        failures.extend(found);
    }
    assert!(
        failures.is_empty(),
        "{failed_cases} of {} cases failed:\n{}",
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

/// Store with `cc`, then expect a hit: the common shape of a storable response.
fn stored_then_hit(name: &str, setup: Setup, reply: Reply, ttl: i64) -> Case {
    case(
        name,
        setup,
        origin(reply),
        vec![
            (get("/r"), miss(1).stored().ttl(ttl)),
            (get("/r"), hit(1).body("call=1.")),
        ],
    )
}

/// Not stored (with this detail), so the next request goes to the origin again.
fn never_stored(name: &str, setup: Setup, reply: Reply, detail: &'static str) -> Case {
    let code = reply.status;
    case(
        name,
        setup,
        origin(reply),
        vec![
            (get("/r"), miss(1).status(code).detail(detail)),
            (
                get("/r"),
                miss(2).status(code).detail(detail).body("call=2."),
            ),
        ],
    )
}

fn freshness_cases() -> Vec<Case> {
    vec![
        stored_then_hit(
            "app mode: a response without freshness is stored for the default TTL",
            APP,
            ok(),
            300,
        ),
        never_stored(
            "shared mode: a response without explicit freshness is not stored",
            SHARED,
            ok(),
            "no-freshness",
        ),
        stored_then_hit(
            "max-age=60 gives a TTL of 60",
            SHARED,
            ok().cc("max-age=60"),
            60,
        ),
        stored_then_hit(
            "app mode: max-age outranks the default TTL",
            APP,
            ok().cc("max-age=30"),
            30,
        ),
        stored_then_hit(
            "s-maxage outranks max-age in a shared cache",
            SHARED,
            ok().cc("max-age=60, s-maxage=120"),
            120,
        ),
        stored_then_hit(
            "s-maxage outranks max-age and Expires",
            SHARED,
            ok().cc("s-maxage=120, max-age=60")
                .h("date", "{now}")
                .h("expires", "{now+30}"),
            120,
        ),
        stored_then_hit(
            "max-age outranks a later Expires",
            SHARED,
            ok().cc("max-age=60")
                .h("date", "{now}")
                .h("expires", "{now+3600}"),
            60,
        ),
        stored_then_hit(
            "max-age outranks an Expires in the past",
            SHARED,
            ok().cc("max-age=60")
                .h("date", "{now}")
                .h("expires", "{now-3600}"),
            60,
        ),
        never_stored(
            "max-age=0 is not stored",
            SHARED,
            ok().cc("max-age=0"),
            "no-freshness",
        ),
        never_stored(
            "app mode: max-age=0 is not stored either",
            APP,
            ok().cc("max-age=0"),
            "no-freshness",
        ),
        never_stored(
            "s-maxage=0 overrides max-age=60 in a shared cache",
            SHARED,
            ok().cc("max-age=60, s-maxage=0"),
            "no-freshness",
        ),
        never_stored(
            "a negative max-age is stale",
            SHARED,
            ok().cc("max-age=-1"),
            "no-freshness",
        ),
        never_stored(
            "a max-age that is not an integer (1e30) is stale",
            SHARED,
            ok().cc("max-age=1e30"),
            "no-freshness",
        ),
        never_stored(
            "an unterminated quoted max-age is stale",
            SHARED,
            ok().cc("max-age=\"60"),
            "no-freshness",
        ),
        stored_then_hit(
            "a quoted max-age counts like a token",
            SHARED,
            ok().cc("max-age=\"30\""),
            30,
        ),
        stored_then_hit(
            "a repeated max-age takes the most restrictive value",
            SHARED,
            ok().cc("max-age=60, max-age=10"),
            10,
        ),
        stored_then_hit(
            "directive names are case-insensitive",
            SHARED,
            ok().cc("MAX-AGE=45"),
            45,
        ),
        stored_then_hit(
            "Cache-Control field lines are combined",
            SHARED,
            ok().cc("public").cc("max-age=50"),
            50,
        ),
        stored_then_hit(
            "a comma inside a quoted extension does not split directives",
            SHARED,
            ok().cc("ext=\"a, max-age=0\", max-age=40"),
            40,
        ),
        stored_then_hit(
            "a huge max-age is clamped to the 24 h maximum TTL",
            SHARED,
            ok().cc("max-age=99999999999"),
            86_400,
        ),
        never_stored(
            "no-store is never stored",
            SHARED,
            ok().cc("max-age=60, no-store"),
            "no-store",
        ),
        never_stored(
            "no-store on a second field line is never stored",
            APP,
            ok().cc("max-age=60").cc("no-store"),
            "no-store",
        ),
        never_stored(
            "private is not stored by a shared cache",
            SHARED,
            ok().cc("private, max-age=60"),
            "private",
        ),
        never_stored(
            "private with field names counts as private",
            SHARED,
            ok().cc("private=\"x-user\", max-age=60"),
            "private",
        ),
        never_stored(
            "no-cache is not stored (this layer does not store what must be revalidated)",
            SHARED,
            ok().cc("no-cache, max-age=60"),
            "no-cache",
        ),
        never_stored(
            "no-cache with a quoted list containing a comma counts as no-cache",
            SHARED,
            ok().cc("no-cache=\"set-cookie, x-a\", max-age=60"),
            "no-cache",
        ),
        never_stored(
            "Set-Cookie is never stored, even when public",
            SHARED,
            ok().cc("public, max-age=60")
                .h("set-cookie", "session=s{call}"),
            "set-cookie",
        ),
        never_stored(
            "shared mode: public without a lifetime is not stored (heuristics are off)",
            SHARED,
            ok().cc("public").h("last-modified", "{now-86400}"),
            "no-freshness",
        ),
        case(
            "a 404 with max-age is stored and replayed as a 404",
            SHARED,
            origin(status(404).cc("max-age=60")),
            vec![
                (get("/r"), miss(1).status(404).stored().ttl(60)),
                (get("/r"), hit(1).status(404).body("call=1.")),
            ],
        ),
        case(
            "a 204 with max-age is stored",
            SHARED,
            origin(status(204).cc("max-age=60").body("")),
            vec![
                (get("/r"), miss(1).status(204).stored().ttl(60)),
                (get("/r"), hit(1).status(204).empty_body()),
            ],
        ),
        never_stored(
            "a 302 is not on the allow-list, even with max-age",
            SHARED,
            status(302).cc("max-age=60").h("location", "/elsewhere"),
            "status",
        ),
        case(
            "a 301 with max-age is stored",
            SHARED,
            origin(status(301).cc("max-age=60").h("location", "/new")),
            vec![
                (get("/r"), miss(1).status(301).stored().ttl(60)),
                (get("/r"), hit(1).status(301).header("location", "/new")),
            ],
        ),
    ]
}

fn expires_cases() -> Vec<Case> {
    vec![
        case(
            "Expires minus Date gives the lifetime",
            SHARED,
            origin(ok().h("date", "{now}").h("expires", "{now+60}")),
            vec![
                (get("/r"), miss(1).stored().ttl_in(58, 60)),
                (get("/r"), hit(1).body("call=1.")),
            ],
        ),
        case(
            "app mode: Expires minus Date outranks the default TTL",
            APP,
            origin(ok().h("date", "{now}").h("expires", "{now+90}")),
            vec![
                (get("/r"), miss(1).stored().ttl_in(88, 90)),
                (get("/r"), hit(1)),
            ],
        ),
        case(
            "without Date, the receive time stands in for it",
            SHARED,
            origin(ok().h("expires", "{now+120}")),
            vec![
                (get("/r"), miss(1).stored().ttl_in(118, 120)),
                (get("/r"), hit(1)),
            ],
        ),
        case(
            "an invalid Date is replaced by the receive time",
            SHARED,
            origin(ok().h("date", "yesterday").h("expires", "{now+60}")),
            vec![
                (get("/r"), miss(1).stored().ttl_in(58, 60)),
                (get("/r"), hit(1)),
            ],
        ),
        never_stored(
            "Expires: 0 means already expired",
            SHARED,
            ok().h("date", "{now}").h("expires", "0"),
            "no-freshness",
        ),
        never_stored(
            "app mode: Expires: 0 is not stored despite the default TTL",
            APP,
            ok().h("expires", "0"),
            "no-freshness",
        ),
        never_stored(
            "a garbage Expires means already expired",
            SHARED,
            ok().h("expires", "soon, probably"),
            "no-freshness",
        ),
        never_stored(
            "an Expires in a zone other than GMT is invalid",
            SHARED,
            ok().h("expires", "Thu, 01 Dec 2044 16:00:00 PST"),
            "no-freshness",
        ),
        never_stored(
            "two Expires lines are invalid",
            SHARED,
            ok().h("expires", "{now+60}").h("expires", "{now+120}"),
            "no-freshness",
        ),
        never_stored(
            "an Expires in the past is not stored",
            SHARED,
            ok().h("date", "{now}").h("expires", "{now-60}"),
            "no-freshness",
        ),
        never_stored(
            "an Expires equal to Date is not stored",
            SHARED,
            ok().h("date", "Sun, 06 Nov 1994 08:49:37 GMT")
                .h("expires", "Sun, 06 Nov 1994 08:49:37 GMT"),
            "no-freshness",
        ),
        never_stored(
            "a Date ten years old uses up an Expires one minute after it",
            SHARED,
            ok().h("date", "{now-315360000}")
                .h("expires", "{now-315359940}"),
            "no-freshness",
        ),
        never_stored(
            "max-age=0 outranks a future Expires",
            SHARED,
            ok().cc("max-age=0").h("expires", "{now+3600}"),
            "no-freshness",
        ),
        stored_then_hit(
            "an Expires in the year 9999 is clamped to the 24 h maximum TTL",
            SHARED,
            ok().h("expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
            86_400,
        ),
    ]
}

fn age_cases() -> Vec<Case> {
    vec![
        case(
            "an upstream Age is taken off the lifetime and replaced, not duplicated, on a hit",
            SHARED,
            origin(ok().cc("max-age=60").h("age", "30")),
            vec![
                (get("/r"), miss(1).stored().ttl(30)),
                (get("/r"), hit(1).once("age").age_in(30, 60).ttl(30)),
            ],
        ),
        never_stored(
            "an upstream Age beyond max-age is not stored",
            SHARED,
            ok().cc("max-age=60").h("age", "100"),
            "no-freshness",
        ),
        case(
            "an invalid Age is ignored",
            SHARED,
            origin(ok().cc("max-age=60").h("age", "abc")),
            vec![
                (get("/r"), miss(1).stored().ttl(60)),
                (get("/r"), hit(1).once("age").age_in(0, 1)),
            ],
        ),
        case(
            "a negative Age is ignored",
            SHARED,
            origin(ok().cc("max-age=60").h("age", "-5")),
            vec![
                (get("/r"), miss(1).stored().ttl(60)),
                (get("/r"), hit(1).once("age").age_in(0, 1)),
            ],
        ),
        case(
            "an Age list uses its first member",
            SHARED,
            origin(ok().cc("max-age=60").h("age", "10, 20")),
            vec![
                (get("/r"), miss(1).stored().ttl(50)),
                (get("/r"), hit(1).once("age").age_in(10, 11)),
            ],
        ),
        never_stored(
            "an Age of 2^63 saturates and is not stored",
            SHARED,
            ok().cc("max-age=60").h("age", "9223372036854775808"),
            "no-freshness",
        ),
        case(
            "a hit carries Age even when the origin sent none; the miss has none",
            SHARED,
            origin(ok().cc("max-age=60")),
            vec![
                (get("/r"), miss(1).stored().lacks("age")),
                (get("/r"), hit(1).once("age").age_in(0, 1)),
            ],
        ),
        case(
            "a Date 20 s old counts as age (apparent age)",
            SHARED,
            origin(ok().cc("max-age=60").h("date", "{now-20}")),
            vec![
                (get("/r"), miss(1).stored().ttl_in(39, 40)),
                (get("/r"), hit(1).once("age").age_in(20, 21)),
            ],
        ),
        case(
            "a Date in the future (clock skew) never gives a negative Age",
            SHARED,
            origin(ok().cc("max-age=60").h("date", "{now+3600}")),
            vec![
                (get("/r"), miss(1).stored().ttl(60)),
                (get("/r"), hit(1).once("age").age_in(0, 1)),
            ],
        ),
        case(
            "app mode: an upstream Age is replaced on a hit too",
            APP,
            origin(ok().h("age", "5")),
            vec![
                (get("/r"), miss(1).stored().ttl(295)),
                (get("/r"), hit(1).once("age").age_in(5, 6)),
            ],
        ),
    ]
}

fn vary_cases() -> Vec<Case> {
    let many_fields: Vec<String> = (0..=64).map(|i| format!("x-f{i}")).collect();
    vec![
        case(
            "Vary: Accept-Language keeps one entry per language",
            SHARED,
            origin(
                ok().cc("max-age=60")
                    .h("vary", "Accept-Language")
                    .body("lang={h:accept-language} call={call}."),
            ),
            vec![
                (get("/r").h("accept-language", "en"), miss(1).stored()),
                (get("/r").h("accept-language", "fr"), miss(2).stored()),
                (
                    get("/r").h("accept-language", "en"),
                    hit(2).body("lang=en call=1."),
                ),
                (
                    get("/r").h("accept-language", "fr"),
                    hit(2).body("lang=fr call=2."),
                ),
            ],
        ),
        case(
            "a field absent from the request differs from one present but empty",
            SHARED,
            origin(ok().cc("max-age=60").h("vary", "X-Flavor")),
            vec![
                (get("/r"), miss(1).stored()),
                (get("/r").h("x-flavor", ""), miss(2).stored()),
                (get("/r"), hit(2).body("call=1.")),
                (get("/r").h("x-flavor", ""), hit(2).body("call=2.")),
            ],
        ),
        never_stored(
            "Vary: * is never stored",
            SHARED,
            ok().cc("max-age=60").h("vary", "*"),
            "vary-star",
        ),
        never_stored(
            "Vary: * among other names is never stored",
            APP,
            ok().h("vary", "accept-language, *"),
            "vary-star",
        ),
        never_stored(
            "a Vary with more than 64 names is treated like Vary: *",
            SHARED,
            ok().cc("max-age=60").h("vary", many_fields.join(", ")),
            "vary-star",
        ),
        case(
            "a later response without Vary replaces the variants",
            SHARED,
            origin(ok().cc("max-age=60").h("vary", "X-V")).then(ok().cc("max-age=60")),
            vec![
                (get("/r").h("x-v", "a"), miss(1).stored()),
                (get("/r").h("x-v", "b"), miss(2).stored()),
                (get("/r").h("x-v", "a"), hit(2).body("call=2.")),
                (get("/r"), hit(2).body("call=2.")),
            ],
        ),
        case(
            "list values match after combining field lines and trimming spaces",
            SHARED,
            origin(ok().cc("max-age=60").h("vary", "Accept-Language")),
            vec![
                (get("/r").h("accept-language", "en,fr"), miss(1).stored()),
                (get("/r").h("accept-language", "en, fr"), hit(1)),
                (
                    get("/r")
                        .h("accept-language", "en")
                        .h("accept-language", "fr"),
                    hit(1),
                ),
                (get("/r").h("accept-language", "fr, en"), miss(2).stored()),
            ],
        ),
        case(
            "Vary names are case-insensitive, values are compared as sent",
            SHARED,
            origin(ok().cc("max-age=60").h("vary", "ACCEPT-LANGUAGE")),
            vec![
                (get("/r").h("accept-language", "en"), miss(1).stored()),
                (get("/r").h("Accept-Language", "en"), hit(1)),
                (get("/r").h("accept-language", "EN"), miss(2).stored()),
            ],
        ),
        case(
            "every field a response varies on must match",
            SHARED,
            origin(
                ok().cc("max-age=60")
                    .h("vary", "accept-language")
                    .h("vary", "x-theme"),
            ),
            vec![
                (
                    get("/r").h("accept-language", "en").h("x-theme", "dark"),
                    miss(1).stored(),
                ),
                (
                    get("/r").h("accept-language", "en").h("x-theme", "light"),
                    miss(2).stored(),
                ),
                (get("/r").h("accept-language", "en"), miss(3).stored()),
                (
                    get("/r").h("accept-language", "en").h("x-theme", "dark"),
                    hit(3).body("call=1."),
                ),
            ],
        ),
        case(
            "B7: Vary: Accept-Encoding keeps gzip and identity apart",
            SHARED,
            origin(
                ok().cc("max-age=60")
                    .h("vary", "Accept-Encoding")
                    .body("identity call={call}."),
            )
            .when(
                "accept-encoding",
                Some("gzip"),
                ok().cc("max-age=60")
                    .h("vary", "Accept-Encoding")
                    .h("content-encoding", "gzip")
                    .body("gzip call={call}."),
            ),
            vec![
                (
                    get("/r").h("accept-encoding", "gzip"),
                    miss(1).stored().header("content-encoding", "gzip"),
                ),
                (get("/r"), miss(2).stored().lacks("content-encoding")),
                (
                    get("/r").h("accept-encoding", "gzip"),
                    hit(2)
                        .header("content-encoding", "gzip")
                        .body("gzip call=1."),
                ),
                (
                    get("/r"),
                    hit(2).lacks("content-encoding").body("identity call=2."),
                ),
                (
                    get("/r").h("accept-encoding", "br"),
                    miss(3).stored().lacks("content-encoding"),
                ),
            ],
        ),
        case(
            "B7: gzip without Vary is never served to a client that did not accept gzip",
            SHARED,
            origin(ok().cc("max-age=60").body("identity call={call}.")).when(
                "accept-encoding",
                Some("gzip"),
                ok().cc("max-age=60")
                    .h("content-encoding", "gzip")
                    .body("gzip call={call}."),
            ),
            vec![
                (
                    get("/r").h("accept-encoding", "gzip"),
                    miss(1).stored().header("content-encoding", "gzip"),
                ),
                (
                    get("/r"),
                    miss(2)
                        .stored()
                        .lacks("content-encoding")
                        .body("identity call=2."),
                ),
                // The identity response has no Vary: it replaces the gzip variant for everyone.
                (
                    get("/r"),
                    hit(2).lacks("content-encoding").body("identity call=2."),
                ),
                (
                    get("/r").h("accept-encoding", "gzip"),
                    hit(2).lacks("content-encoding").body("identity call=2."),
                ),
            ],
        ),
        case(
            "B7: a stored gzip variant is not served to an identity-only client",
            SHARED,
            origin(
                ok().cc("max-age=60")
                    .h("content-encoding", "gzip")
                    .body("gzip call={call}."),
            ),
            vec![
                (
                    get("/r").h("accept-encoding", "gzip, br"),
                    miss(1).stored().header("content-encoding", "gzip"),
                ),
                (
                    get("/r").h("accept-encoding", "identity"),
                    miss(2).stored().body("call=2."),
                ),
                (
                    get("/r").h("accept-encoding", "gzip, br"),
                    hit(2).body("gzip call=1."),
                ),
            ],
        ),
    ]
}

fn head_cases() -> Vec<Case> {
    let sized = || {
        ok().cc("max-age=60")
            .h("etag", "\"v1\"")
            .h("content-length", "11")
            .body("hello world")
    };
    vec![
        case(
            "HEAD is answered from a stored GET, without a body, keeping Content-Length",
            SHARED,
            origin(sized()),
            vec![
                (get("/r"), miss(1).stored().body("hello world")),
                (
                    head("/r"),
                    hit(1)
                        .empty_body()
                        .header("content-length", "11")
                        .header("etag", "\"v1\"")
                        .has("age"),
                ),
                (get("/r"), hit(1).body("hello world")),
            ],
        ),
        case(
            "a GET is never answered from a HEAD",
            SHARED,
            origin(ok().cc("max-age=60")),
            vec![
                (head("/r"), miss(1).detail("head").origin_method("HEAD")),
                (
                    get("/r"),
                    miss(2).stored().origin_method("GET").body("call=2."),
                ),
                (get("/r"), hit(2).body("call=2.")),
                (head("/r"), hit(2).empty_body()),
            ],
        ),
        case(
            "a HEAD miss is never stored, so the next HEAD goes to the origin too",
            SHARED,
            origin(ok().cc("max-age=60")),
            vec![
                (head("/r"), miss(1).detail("head")),
                (head("/r"), miss(2).detail("head")),
            ],
        ),
        case(
            "HEAD follows the Vary variant of the stored GET",
            SHARED,
            origin(ok().cc("max-age=60").h("vary", "accept-language")),
            vec![
                (get("/r").h("accept-language", "en"), miss(1).stored()),
                (head("/r").h("accept-language", "en"), hit(1).empty_body()),
                (
                    head("/r").h("accept-language", "fr"),
                    miss(2).detail("head"),
                ),
            ],
        ),
        case(
            "HEAD with only-if-cached on a miss is a 504",
            SHARED,
            origin(ok().cc("max-age=60")),
            vec![(
                head("/r").h("cache-control", "only-if-cached"),
                local(0).status(504).lacks("cache-status"),
            )],
        ),
    ]
}

fn conditional_cases() -> Vec<Case> {
    let tagged = || ok().cc("max-age=60").h("etag", "\"v1\"");
    let modified = || {
        ok().cc("max-age=60")
            .h("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")
    };
    let not_modified = || status(304).cc("max-age=60").h("etag", "\"v1\"").body("");
    vec![
        case(
            "If-None-Match on a fresh hit is a 304 with ETag and Cache-Control and no body",
            SHARED,
            origin(tagged()),
            vec![
                (get("/r"), miss(1).stored()),
                (
                    get("/r").h("if-none-match", "\"v1\""),
                    hit(1)
                        .status(304)
                        .empty_body()
                        .header("etag", "\"v1\"")
                        .header("cache-control", "max-age=60"),
                ),
            ],
        ),
        case(
            "an If-None-Match that does not match gets the full stored 200",
            SHARED,
            origin(tagged()),
            vec![
                (get("/r"), miss(1).stored()),
                (
                    get("/r").h("if-none-match", "\"v0\""),
                    hit(1).body("call=1."),
                ),
            ],
        ),
        case(
            "If-None-Match: * matches any stored ETag",
            SHARED,
            origin(tagged()),
            vec![
                (get("/r"), miss(1).stored()),
                (
                    get("/r").h("if-none-match", "*"),
                    hit(1).status(304).empty_body(),
                ),
            ],
        ),
        case(
            "If-None-Match uses the weak comparison",
            SHARED,
            origin(ok().cc("max-age=60").h("etag", "W/\"v1\"")),
            vec![
                (get("/r"), miss(1).stored()),
                (
                    get("/r").h("if-none-match", "\"v0\", \"v1\""),
                    hit(1).status(304).header("etag", "W/\"v1\""),
                ),
            ],
        ),
        case(
            "a fresh entry without an ETag never answers If-None-Match with 304",
            SHARED,
            origin(ok().cc("max-age=60")),
            vec![
                (get("/r"), miss(1).stored()),
                (get("/r").h("if-none-match", "*"), hit(1).body("call=1.")),
            ],
        ),
        case(
            "If-Modified-Since at or after Last-Modified is a 304",
            SHARED,
            origin(modified()),
            vec![
                (get("/r"), miss(1).stored()),
                (
                    get("/r").h("if-modified-since", "Tue, 01 Dec 2026 10:00:00 GMT"),
                    hit(1)
                        .status(304)
                        .empty_body()
                        .header("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
                ),
            ],
        ),
        case(
            "If-Modified-Since before Last-Modified gets the full stored 200",
            SHARED,
            origin(modified()),
            vec![
                (get("/r"), miss(1).stored()),
                (
                    get("/r").h("if-modified-since", "Tue, 01 Dec 2026 09:00:00 GMT"),
                    hit(1).body("call=1."),
                ),
            ],
        ),
        case(
            "an If-None-Match that does not match wins over a matching If-Modified-Since",
            SHARED,
            origin(tagged().h("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")),
            vec![
                (get("/r"), miss(1).stored()),
                (
                    get("/r")
                        .h("if-none-match", "\"v0\"")
                        .h("if-modified-since", "Tue, 01 Dec 2026 11:00:00 GMT"),
                    hit(1).body("call=1."),
                ),
            ],
        ),
        case(
            "the origin's 304 to a client's own conditional miss is passed on, not stored",
            SHARED,
            origin(tagged()).when("if-none-match", Some("\"v1\""), not_modified()),
            vec![
                (
                    get("/r").h("if-none-match", "\"v1\""),
                    miss(1).status(304).detail("status"),
                ),
                (get("/r"), miss(2).stored().body("call=2.")),
                (get("/r"), hit(2)),
            ],
        ),
        case(
            "an expired entry with an ETag is revalidated and a 304 refreshes it",
            SHARED,
            origin(ok().cc("max-age=1").h("etag", "\"v1\"")).when(
                "if-none-match",
                Some("\"v1\""),
                not_modified(),
            ),
            vec![
                (get("/r"), miss(1).stored().ttl(1)),
                (
                    get("/r").after_ms(1_200),
                    miss(2)
                        .stored()
                        .ttl(60)
                        .detail("revalidated")
                        .origin_saw("if-none-match", "\"v1\"")
                        .body("call=1."),
                ),
                (get("/r"), hit(2).body("call=1.")),
            ],
        ),
        case(
            "an expired entry inside its stale-if-error window is revalidated with its ETag",
            SHARED,
            origin(ok().cc("max-age=1, stale-if-error=60").h("etag", "\"v1\"")).when(
                "if-none-match",
                Some("\"v1\""),
                not_modified(),
            ),
            vec![
                (get("/r"), miss(1).stored().ttl(1)),
                (
                    get("/r").after_ms(1_200),
                    miss(2)
                        .stored()
                        .ttl(60)
                        .detail("revalidated")
                        .origin_saw("if-none-match", "\"v1\"")
                        .body("call=1."),
                ),
                (get("/r"), hit(2).body("call=1.")),
            ],
        ),
        case(
            "an expired entry with only Last-Modified is revalidated with If-Modified-Since",
            SHARED,
            origin(
                ok().cc("max-age=1, stale-if-error=60")
                    .h("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
            )
            .when(
                "if-modified-since",
                None,
                status(304).cc("max-age=60").body(""),
            ),
            vec![
                (get("/r"), miss(1).stored().ttl(1)),
                (
                    get("/r").after_ms(1_200),
                    miss(2)
                        .stored()
                        .detail("revalidated")
                        .origin_saw("if-modified-since", "Tue, 01 Dec 2026 10:00:00 GMT")
                        .origin_lacked("if-none-match")
                        .body("call=1."),
                ),
                (get("/r"), hit(2).body("call=1.")),
            ],
        ),
        case(
            "a revalidation answered with a new 200 replaces the entry",
            SHARED,
            origin(ok().cc("max-age=1, stale-if-error=60").h("etag", "\"v1\""))
                .then(ok().cc("max-age=60").h("etag", "\"v2\"")),
            vec![
                (get("/r"), miss(1).stored()),
                (
                    get("/r").after_ms(1_200),
                    miss(2)
                        .stored()
                        .ttl(60)
                        .origin_saw("if-none-match", "\"v1\"")
                        .header("etag", "\"v2\"")
                        .body("call=2."),
                ),
                (get("/r"), hit(2).body("call=2.")),
            ],
        ),
    ]
}

fn request_directive_cases() -> Vec<Case> {
    let fresh = || origin(ok().cc("max-age=60"));
    let honouring = Setup {
        honour_client_no_cache: true,
        ..SHARED
    };
    let with_request = |name: &str, header: &'static str, value: &'static str| {
        case(
            name,
            SHARED,
            fresh(),
            vec![
                (get("/r"), miss(1).stored()),
                (get("/r").h(header, value), hit(1).body("call=1.")),
            ],
        )
    };
    vec![
        case(
            "request no-store bypasses the cache and stores nothing",
            SHARED,
            fresh(),
            vec![
                (
                    get("/r").h("cache-control", "no-store"),
                    bypass(1).detail("request-no-store"),
                ),
                (get("/r"), miss(2).stored().body("call=2.")),
                (get("/r"), hit(2)),
            ],
        ),
        case(
            "request no-store neither uses nor replaces a stored entry",
            SHARED,
            fresh(),
            vec![
                (get("/r"), miss(1).stored()),
                (
                    get("/r").h("cache-control", "no-store"),
                    bypass(2).body("call=2."),
                ),
                (get("/r"), hit(2).body("call=1.")),
            ],
        ),
        with_request(
            "client no-cache is ignored by default",
            "cache-control",
            "no-cache",
        ),
        with_request(
            "client max-age=0 is ignored by default",
            "cache-control",
            "max-age=0",
        ),
        with_request(
            "Pragma: no-cache is ignored by default",
            "pragma",
            "no-cache",
        ),
        with_request(
            "min-fresh and max-stale are ignored",
            "cache-control",
            "min-fresh=3600, max-stale=10",
        ),
        with_request(
            "only-if-cached on a hit is answered from the cache",
            "cache-control",
            "only-if-cached",
        ),
        case(
            "honour_client_no_cache: client no-cache goes to the origin and refreshes the entry",
            honouring,
            fresh(),
            vec![
                (get("/r"), miss(1).stored()),
                (
                    get("/r").h("cache-control", "no-cache"),
                    miss(2).stored().body("call=2."),
                ),
                (get("/r"), hit(2).body("call=2.")),
            ],
        ),
        case(
            "honour_client_no_cache: client max-age=0 goes to the origin",
            honouring,
            fresh(),
            vec![
                (get("/r"), miss(1).stored()),
                (
                    get("/r").h("cache-control", "max-age=0"),
                    miss(2).stored().body("call=2."),
                ),
            ],
        ),
        case(
            "only-if-cached on a miss is a 504 and the origin is not called",
            SHARED,
            fresh(),
            vec![(
                get("/r").h("cache-control", "only-if-cached"),
                local(0).status(504).lacks("cache-status").empty_body(),
            )],
        ),
        case(
            "a Range request bypasses the cache",
            SHARED,
            fresh(),
            vec![
                (get("/r").h("range", "bytes=0-3"), bypass(1).detail("range")),
                (get("/r"), miss(2).stored()),
            ],
        ),
        case(
            "B4: a GET with a body bypasses the cache",
            SHARED,
            fresh(),
            vec![
                (
                    get("/r").with_body(b"callback=evil"),
                    bypass(1).detail("request-body"),
                ),
                (get("/r"), miss(2).stored().body("call=2.")),
                (get("/r").with_body(b"callback=evil"), bypass(3)),
                (get("/r"), hit(3).body("call=2.")),
            ],
        ),
        case(
            "B4: a HEAD with Transfer-Encoding bypasses the cache",
            SHARED,
            fresh(),
            vec![
                (get("/r"), miss(1).stored()),
                (
                    head("/r").h("transfer-encoding", "chunked"),
                    bypass(2).detail("request-body"),
                ),
            ],
        ),
        case(
            "a successful POST invalidates the stored GET",
            SHARED,
            fresh(),
            vec![
                (get("/r"), miss(1).stored()),
                (req("POST", "/r"), bypass(2).detail("method")),
                (get("/r"), miss(3).stored().body("call=3.")),
            ],
        ),
        case(
            "a failed POST leaves the stored GET alone",
            SHARED,
            fresh().when_method("POST", status(500)),
            vec![
                (get("/r"), miss(1).stored()),
                (req("POST", "/r"), bypass(2).status(500)),
                (get("/r"), hit(2).body("call=1.")),
            ],
        ),
        case(
            "a successful DELETE invalidates the stored GET",
            SHARED,
            fresh().when_method("DELETE", status(204).body("")),
            vec![
                (get("/r"), miss(1).stored()),
                (req("DELETE", "/r"), bypass(2).status(204)),
                (get("/r"), miss(3).stored()),
            ],
        ),
        case(
            "other methods are written through and never stored",
            SHARED,
            fresh(),
            vec![
                (req("OPTIONS", "/r"), bypass(1).detail("method")),
                (req("OPTIONS", "/r"), bypass(2)),
            ],
        ),
    ]
}

// ---- S5: the Authorization / Cookie / private matrix ----------------------------------------

/// Who sends a request of a matrix row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anon,
    /// Anonymous, with `Cache-Control: no-store`.
    AnonNoStore,
    Auth,
    /// With `Authorization` and `Cache-Control: no-store`.
    AuthNoStore,
    Cookie,
    AuthCookie,
    ProxyAuth,
}

impl Who {
    fn request(self, user: &str) -> Req {
        let bearer = format!("Bearer {user}");
        let cookie = format!("sid={user}");
        let r = get("/m");
        match self {
            Who::Anon => r,
            Who::AnonNoStore => r.h("cache-control", "no-store"),
            Who::Auth => r.h("authorization", &bearer),
            Who::AuthNoStore => r.h("authorization", &bearer).h("cache-control", "no-store"),
            Who::Cookie => r.h("cookie", &cookie),
            Who::AuthCookie => r.h("authorization", &bearer).h("cookie", &cookie),
            Who::ProxyAuth => r.h("proxy-authorization", &format!("Basic {user}")),
        }
    }

    fn has_credentials(self) -> bool {
        !matches!(self, Who::Anon | Who::AnonNoStore)
    }
}

/// What the layer does with one request of a matrix row.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Bypassed, with this detail.
    Bypass(&'static str),
    /// A miss that is not stored, with this detail.
    NotStored(&'static str),
    /// A miss that is stored.
    Stored,
    /// A hit on the first request's entry.
    Hit,
}

impl Fate {
    fn expect(self, calls: u64) -> Expect {
        match self {
            Fate::Bypass(detail) => bypass(calls).detail(detail),
            Fate::NotStored(detail) => miss(calls).detail(detail),
            Fate::Stored => miss(calls).stored(),
            Fate::Hit => hit(calls),
        }
    }
}

/// One S5 row: alice sends the first request, bob the second, each as `who` says; the origin
/// answers with `cc` (and a `Set-Cookie` when `set_cookie`) and reflects both users' credentials.
fn row(
    name: &str,
    setup: Setup,
    who: (Who, Who),
    cc: &str,
    set_cookie: bool,
    fates: (Fate, Fate),
) -> Case {
    let mut reply = ok().body(
        "auth={h:authorization} cookie={h:cookie} proxy={h:proxy-authorization} call={call}.",
    );
    if !cc.is_empty() {
        reply = reply.cc(cc);
    }
    if set_cookie {
        reply = reply.h("set-cookie", "session=s{call}");
    }
    let (first, second) = who;
    let (first_fate, second_fate) = fates;
    let mut first_expect = first_fate.expect(1);
    if first.has_credentials() {
        first_expect = first_expect.body("alice");
    }
    let second_hits = matches!(second_fate, Fate::Hit);
    let mut second_expect = second_fate
        .expect(if second_hits { 1 } else { 2 })
        .header_lacks("set-cookie", "session=s1");
    if second_hits {
        second_expect = second_expect.body("call=1.");
    } else {
        second_expect = second_expect.body_lacks("alice").body("call=2.");
    }
    case(
        format!("S5 {name}"),
        setup,
        origin(reply),
        vec![
            (first.request("alice"), first_expect),
            (second.request("bob"), second_expect),
        ],
    )
}

fn matrix_cases() -> Vec<Case> {
    use Fate::{Bypass, Hit, NotStored, Stored};
    use Who::{Anon, AnonNoStore, Auth, AuthCookie, AuthNoStore, Cookie, ProxyAuth};
    let auth_bypass = (Bypass("authorization"), Bypass("authorization"));
    let cookie_bypass = (Bypass("cookie"), Bypass("cookie"));
    let twice = |reason| (NotStored(reason), NotStored(reason));
    vec![
        // Anonymous requests: the response's directives decide.
        row("anonymous, no directive, app mode: stored", APP, (Anon, Anon), "", false, (Stored, Hit)),
        row("anonymous, no directive, shared mode: not stored", SHARED, (Anon, Anon), "", false, twice("no-freshness")),
        row("anonymous, public alone, shared mode: not stored", SHARED, (Anon, Anon), "public", false, twice("no-freshness")),
        row("anonymous, public max-age: stored", SHARED, (Anon, Anon), "public, max-age=60", false, (Stored, Hit)),
        row("anonymous, private: not stored", APP, (Anon, Anon), "private", false, twice("private")),
        row("anonymous, private=\"x\": not stored", SHARED, (Anon, Anon), "private=\"x-user\", max-age=60", false, twice("private")),
        row("anonymous, no-store: not stored", APP, (Anon, Anon), "no-store", false, twice("no-store")),
        row("anonymous, no-cache: not stored", SHARED, (Anon, Anon), "no-cache, max-age=60", false, twice("no-cache")),
        row("anonymous, s-maxage: stored", SHARED, (Anon, Anon), "s-maxage=60", false, (Stored, Hit)),
        row("anonymous, must-revalidate max-age: stored", SHARED, (Anon, Anon), "must-revalidate, max-age=60", false, (Stored, Hit)),
        row("anonymous, max-age: stored", SHARED, (Anon, Anon), "max-age=60", false, (Stored, Hit)),
        row("anonymous, Set-Cookie max-age: not stored", SHARED, (Anon, Anon), "max-age=60", true, twice("set-cookie")),
        row("anonymous, Set-Cookie public s-maxage: not stored", APP, (Anon, Anon), "public, s-maxage=60", true, twice("set-cookie")),
        row("anonymous with request no-store: bypassed, the next one stores", SHARED, (AnonNoStore, Anon), "max-age=60", false, (Bypass("request-no-store"), Stored)),
        // Credentials on a route that did not opt in: always bypassed.
        row("Authorization, max-age: bypassed", SHARED, (Auth, Auth), "max-age=60", false, auth_bypass),
        row("Authorization, public: bypassed (route did not opt in)", SHARED, (Auth, Auth), "public, max-age=60", false, auth_bypass),
        row("Authorization, s-maxage: bypassed (route did not opt in)", SHARED, (Auth, Auth), "s-maxage=60", false, auth_bypass),
        row("Authorization, must-revalidate: bypassed", SHARED, (Auth, Auth), "must-revalidate, max-age=60", false, auth_bypass),
        row("Cookie, max-age, app mode: bypassed", APP, (Cookie, Cookie), "max-age=60", false, cookie_bypass),
        row("Cookie, public max-age: bypassed", APP, (Cookie, Cookie), "public, max-age=60", false, cookie_bypass),
        row("Authorization and Cookie, Set-Cookie public: bypassed", APP, (AuthCookie, AuthCookie), "public, max-age=60", true, auth_bypass),
        row("Authorization then anonymous: the anonymous one is stored on its own", SHARED, (Auth, Anon), "max-age=60", false, (Bypass("authorization"), Stored)),
        row("Proxy-Authorization, public: bypassed", SHARED, (ProxyAuth, ProxyAuth), "public, max-age=60", false, auth_bypass),
        row("Authorization with request no-store: bypassed for no-store first", SHARED, (AuthNoStore, Auth), "public, max-age=60", false, (Bypass("request-no-store"), Bypass("authorization"))),
        // Credentials on a route that opted in: only public or s-maxage may be stored or reused.
        row("opt-in, Authorization, max-age alone: not stored", SHARED_OPT_IN, (Auth, Auth), "max-age=60", false, twice("authenticated")),
        row("opt-in, Authorization, public: stored and shared", SHARED_OPT_IN, (Auth, Auth), "public, max-age=60", false, (Stored, Hit)),
        row("opt-in, Authorization, s-maxage: stored and shared", SHARED_OPT_IN, (Auth, Auth), "s-maxage=60", false, (Stored, Hit)),
        row("opt-in, Authorization, must-revalidate: not stored (policy asks for public or s-maxage)", SHARED_OPT_IN, (Auth, Auth), "must-revalidate, max-age=60", false, twice("authenticated")),
        row("opt-in, Authorization, private: not stored", SHARED_OPT_IN, (Auth, Auth), "private, s-maxage=60", false, twice("private")),
        row("opt-in, Authorization, public with no-cache=\"set-cookie\": not stored", SHARED_OPT_IN, (Auth, Auth), "public, no-cache=\"set-cookie\", max-age=60", false, twice("no-cache")),
        row("opt-in, Authorization, public with Set-Cookie: not stored", SHARED_OPT_IN, (Auth, Auth), "public, max-age=60", true, twice("set-cookie")),
        row("opt-in, Authorization, public no-store: not stored", SHARED_OPT_IN, (Auth, Auth), "public, no-store, max-age=60", false, twice("no-store")),
        row("opt-in, Cookie, public, app mode: stored and shared", APP_OPT_IN, (Cookie, Cookie), "public, max-age=60", false, (Stored, Hit)),
        row("opt-in, Cookie, no directive, app mode: not stored", APP_OPT_IN, (Cookie, Cookie), "", false, twice("authenticated")),
        row("opt-in, Authorization with request no-store: bypassed, the next one stores", SHARED_OPT_IN, (AuthNoStore, Auth), "public, max-age=60", false, (Bypass("request-no-store"), Stored)),
        row("opt-in, anonymous public then Authorization: reused", SHARED_OPT_IN, (Anon, Auth), "public, max-age=60", false, (Stored, Hit)),
        row("opt-in, Authorization public then anonymous: reused", SHARED_OPT_IN, (Auth, Anon), "public, max-age=60", false, (Stored, Hit)),
        row("opt-in, anonymous without public then Authorization: not served to the authenticated request", APP_OPT_IN, (Anon, Auth), "", false, (Stored, NotStored("authenticated"))),
    ]
}

// ---- S1: unkeyed header poisoning ---------------------------------------------------------------

/// The origin reflects `header` into the body and a Location; an attacker sends it, a victim
/// does not.
fn poisoning_case(header: &'static str, value: &'static str, setup: Setup) -> Case {
    let reply = ok()
        .cc("public, max-age=3600")
        .h("location", format!("https://{{h:{header}}}/next"))
        .body(format!("page via {{h:{header}}} call={{call}}."));
    let attacker = || get("/home").h(header, value);
    case(
        format!(
            "S1 {header} on the attacker's request never reaches a victim ({:?} mode)",
            setup.mode
        ),
        setup,
        origin(reply),
        vec![
            (attacker(), bypass(1).detail("unkeyed-header").body(value)),
            (
                get("/home"),
                miss(2)
                    .stored()
                    .body_lacks(value)
                    .header_lacks("location", value),
            ),
            (attacker(), bypass(3).body(value)),
            (
                get("/home"),
                hit(3)
                    .body("call=2.")
                    .body_lacks(value)
                    .header_lacks("location", value),
            ),
        ],
    )
}

fn poisoning_cases() -> Vec<Case> {
    let custom = Setup {
        deny: Some("x-poison-me"),
        ..APP
    };
    vec![
        poisoning_case("x-forwarded-host", "evil.example", APP),
        poisoning_case("x-host", "evil-host.example", APP),
        poisoning_case("x-forwarded-scheme", "evilscheme", APP),
        poisoning_case("x-forwarded-proto", "evilproto", APP),
        poisoning_case("forwarded", "for=192.0.2.1;host=evil-fwd.example", APP),
        poisoning_case("x-original-url", "/evil-admin", APP),
        poisoning_case("x-rewrite-url", "/evil-rewrite", APP),
        poisoning_case("x-http-method-override", "DELETE", APP),
        poisoning_case("x-forwarded-host", "evil-shared.example", SHARED),
        poisoning_case("x-poison-me", "evil-custom", custom),
        case(
            "S1 a header the origin varies on is part of the key, so it cannot poison",
            APP,
            origin(
                ok().cc("public, max-age=3600")
                    .h("vary", "x-campaign")
                    .body("campaign {h:x-campaign} call={call}."),
            ),
            vec![
                (
                    get("/home").h("x-campaign", "evil-campaign"),
                    miss(1).stored().body("evil-campaign"),
                ),
                (get("/home"), miss(2).stored().body_lacks("evil-campaign")),
                (
                    get("/home"),
                    hit(2).body("call=2.").body_lacks("evil-campaign"),
                ),
                (
                    get("/home").h("x-campaign", "evil-campaign"),
                    hit(2).body("call=1."),
                ),
            ],
        ),
    ]
}

// ---- S4: web cache deception --------------------------------------------------------------------

/// A lenient origin serves the account page for any path under `/account`, personalised by the
/// cookie. The victim sends credentials, then an anonymous attacker fetches the same URL.
fn deception_case(path: &'static str, keyable: bool, variant: u8) -> Case {
    let page = ok().body("account of {h:cookie} call={call}.");
    let (label, setup, reply, victim) = match variant {
        0 => (
            "no Cache-Control, Cookie and Authorization",
            APP,
            page,
            get(path)
                .h("cookie", "sid=victim-secret")
                .h("authorization", "Bearer victim-token"),
        ),
        _ => (
            "public max-age=3600, Cookie only, shared mode",
            SHARED,
            page.cc("public, max-age=3600"),
            get(path).h("cookie", "sid=victim-secret"),
        ),
    };
    let detail = if victim.headers.iter().any(|(n, _)| n == "authorization") {
        "authorization"
    } else {
        "cookie"
    };
    let attacker = |calls: u64, again: bool| {
        let expected = match (keyable, again) {
            (true, false) => miss(calls).stored(),
            (true, true) => hit(calls),
            (false, _) => bypass(calls),
        };
        expected.body_lacks("victim-secret")
    };
    let (first_attack, second_attack) = if keyable { (2, 2) } else { (2, 3) };
    case(
        format!("S4 {path} ({label}) never serves the victim's page to the attacker"),
        setup,
        origin(reply),
        vec![
            (
                victim.clone(),
                bypass(1).detail(detail).body("victim-secret"),
            ),
            (get(path), attacker(first_attack, false)),
            (get(path), attacker(second_attack, true)),
            (
                victim,
                bypass(second_attack + 1)
                    .detail(detail)
                    .body("victim-secret"),
            ),
        ],
    )
}

fn deception_cases() -> Vec<Case> {
    let paths = [
        ("/account/x.css", true),
        ("/account;x.css", true),
        ("/account%2Fx.css", false),
        ("/account%23.css", true),
        ("/account/..%2Fstatic/x.css", false),
    ];
    let mut cases = Vec::new();
    for variant in 0..2 {
        for (path, keyable) in paths {
            cases.push(deception_case(path, keyable, variant));
        }
    }
    cases
}

// ---- S7: cache-poisoned denial of service -------------------------------------------------------

/// The origin answers `error` to requests matching the trigger, 200 otherwise, both with
/// `max-age=3600`; the attack comes first, then clean requests.
fn cpdos_case(
    name: &str,
    setup: Setup,
    trigger: &'static str,
    error: u16,
    attack: Req,
    attacked: Expect,
) -> Case {
    let clean = ok().cc("public, max-age=3600").body("clean call={call}.");
    let poison = status(error)
        .cc("public, max-age=3600")
        .body("error call={call}.");
    case(
        format!("S7 {name}"),
        setup,
        origin(clean).when(trigger, None, poison),
        vec![
            (attack, attacked.status(error)),
            (get("/page"), miss(2).stored().body("clean call=2.")),
            (get("/page"), hit(2).body("clean call=2.")),
            (get("/page"), hit(2).body("clean call=2.")),
        ],
    )
}

fn cpdos_cases() -> Vec<Case> {
    let oversized = "a".repeat(20 * 1024);
    vec![
        cpdos_case(
            "HHO: a 431 for an oversized header is not stored",
            APP,
            "x-oversized",
            431,
            get("/page").h("x-oversized", &oversized),
            miss(1).detail("status"),
        ),
        cpdos_case(
            "HMC: a 400 for an odd byte in a header is not stored",
            APP,
            "x-meta",
            400,
            get("/page").h_bytes("x-meta", b"a\xffb"),
            miss(1).detail("status"),
        ),
        cpdos_case(
            "HMC: a 400 is not stored in shared mode either",
            SHARED,
            "x-meta",
            400,
            get("/page").h_bytes("x-meta", b"a\xffb"),
            miss(1).detail("status"),
        ),
        cpdos_case(
            "HMO: a 405 for X-HTTP-Method-Override is bypassed and not stored",
            APP,
            "x-http-method-override",
            405,
            get("/page").h("x-http-method-override", "DELETE"),
            bypass(1).detail("unkeyed-header"),
        ),
        cpdos_case(
            "a 413 for a GET with a body is bypassed and not stored",
            APP,
            "content-length",
            413,
            get("/page").with_body(&[b'x'; 20_000]),
            bypass(1).detail("request-body"),
        ),
        cpdos_case(
            "a 500 with max-age is not stored",
            APP,
            "x-crash",
            500,
            get("/page").h("x-crash", "1"),
            miss(1).detail("status"),
        ),
        cpdos_case(
            "a 503 with max-age is not stored",
            SHARED,
            "x-crash",
            503,
            get("/page").h("x-crash", "1"),
            miss(1).detail("status"),
        ),
        cpdos_case(
            "a 429 with max-age is never stored",
            APP,
            "x-flood",
            429,
            get("/page").h("x-flood", "1"),
            miss(1).detail("status"),
        ),
        cpdos_case(
            "a 404 routed by X-Original-URL is bypassed and not stored",
            APP,
            "x-original-url",
            404,
            get("/page").h("x-original-url", "/nowhere"),
            bypass(1).detail("unkeyed-header"),
        ),
        case(
            "S7 an attack after a clean entry is stored is answered from the clean entry",
            APP,
            origin(ok().cc("public, max-age=3600").body("clean call={call}.")).when(
                "x-oversized",
                None,
                status(431).cc("public, max-age=3600"),
            ),
            vec![
                (get("/page"), miss(1).stored()),
                (
                    get("/page").h("x-oversized", &oversized),
                    hit(1).body("clean call=1."),
                ),
                (get("/page"), hit(1).body("clean call=1.")),
            ],
        ),
        // Documented behaviour, not an RFC deviation: 405 is heuristically cacheable and on the
        // default allow-list, so a 405 with explicit freshness from a trigger that is not on the
        // deny-list is stored, and clean requests then get it too -- but only for the error TTL
        // cap (60 s by default), whatever the response's max-age. The deny-list, the allow-list
        // and the cap are the defences; this case pins what they do not cover.
        case(
            "S7 a 405 with max-age from a trigger off the deny-list is stored (405 is allow-listed)",
            APP,
            origin(ok().cc("public, max-age=3600").body("clean call={call}.")).when(
                "x-odd",
                None,
                status(405).cc("public, max-age=3600"),
            ),
            vec![
                (get("/page").h("x-odd", "1"), miss(1).status(405).stored().ttl(60)),
                (get("/page"), hit(1).status(405)),
            ],
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn freshness_lifetime() {
    run_table(freshness_cases()).await;
}

#[tokio::test]
async fn expires_and_date() {
    run_table(expires_cases()).await;
}

#[tokio::test]
async fn age() {
    run_table(age_cases()).await;
}

#[tokio::test]
async fn vary() {
    run_table(vary_cases()).await;
}

#[tokio::test]
async fn head_and_get() {
    run_table(head_cases()).await;
}

#[tokio::test]
async fn conditional_requests_and_revalidation() {
    run_table(conditional_cases()).await;
}

#[tokio::test]
async fn request_directives() {
    run_table(request_directive_cases()).await;
}

#[tokio::test]
async fn authorization_cookie_private_matrix() {
    run_table(matrix_cases()).await;
}

#[tokio::test]
async fn unkeyed_header_poisoning() {
    run_table(poisoning_cases()).await;
}

#[tokio::test]
async fn cache_deception() {
    run_table(deception_cases()).await;
}

#[tokio::test]
async fn cpdos() {
    run_table(cpdos_cases()).await;
}

#[test]
fn the_tables_hold_at_least_sixty_cases() {
    let tables = [
        freshness_cases(),
        expires_cases(),
        age_cases(),
        vary_cases(),
        head_cases(),
        conditional_cases(),
        request_directive_cases(),
        matrix_cases(),
        poisoning_cases(),
        deception_cases(),
        cpdos_cases(),
    ];
    let total: usize = tables.iter().map(Vec::len).sum();
    assert!(total >= 60, "only {total} cases");
    assert!(matrix_cases().len() >= 24, "S5 needs at least 24 rows");
    let mut names = HashSet::new();
    for case in tables.iter().flatten() {
        assert!(!case.steps.is_empty(), "{} has no steps", case.name);
        assert!(
            names.insert(case.name.clone()),
            "duplicate case name {}",
            case.name
        );
    }
}

#[test]
fn templates_expand_calls_headers_and_dates() {
    let mut headers = HeaderMap::new();
    headers.insert("x-a", HeaderValue::from_static("va"));
    let text = expand(
        "n={call} m={method} a={h:x-a} b={h:x-b} {odd}",
        7,
        &Method::GET,
        &headers,
    );
    assert_eq!(text, "n=7 m=GET a=va b=- {odd}");
    let date = expand("{now+60}", 1, &Method::GET, &headers);
    let parsed = httpdate::parse_http_date(&date).expect("an HTTP date");
    assert!(parsed > SystemTime::now());
    assert_eq!(
        expand("open {brace", 1, &Method::GET, &headers),
        "open {brace"
    );
}

//! The caching policy: which requests may use the cache, which responses may be stored, and for
//! how long.
//!
//! Everything here is a pure function of a request or response head and the [`Policy`] settings,
//! so it can be tested without a runtime or a store. The service asks two questions:
//!
//! 1. [`Policy::classify`]: given a request head, should the cache be consulted at all? The
//!    answer is either a [`BypassReason`] (go straight to the inner service, store nothing) or a
//!    [`RequestInfo`] carrying what the second question needs.
//! 2. [`Policy::storability`]: given the response head, may it be stored, and with which
//!    [`Freshness`]? The answer is either the TTL to store with, or a [`NotStorable`] reason.
//!
//! The rules follow RFC 9111 for a *shared* cache (one store serving many users), made stricter
//! where deployed caches are stricter: a response with `Set-Cookie` is never stored, requests with
//! credentials bypass the cache unless a route opts in, and error statuses are stored only when
//! allow-listed.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::{HeaderMap, Method, StatusCode, Extensions};
//! use tower_response_cache::policy::{Policy, Route, RequestDecision};
//!
//! let policy = Policy::default()
//!     .route(Route::prefix("/admin").bypass())
//!     .route(Route::template("/users/{id}").ttl(Duration::from_secs(30)));
//!
//! let request = HeaderMap::new();
//! let RequestDecision::Cache(info) = policy.classify(&Method::GET, "/users/7", &request) else {
//!     panic!("a plain GET is cacheable");
//! };
//! assert_eq!(info.route_ttl, Some(Duration::from_secs(30)));
//!
//! let now = SystemTime::now();
//! let response = HeaderMap::new();
//! let freshness = policy
//!     .storability(&info, StatusCode::OK, &response, &Extensions::new(), now, now)
//!     .expect("a silent 200 on a route with a TTL is stored");
//! // The route TTL, jittered by at most ±10 %.
//! assert!(freshness.ttl >= Duration::from_secs(27) && freshness.ttl <= Duration::from_secs(33));
//!
//! assert!(matches!(
//!     policy.classify(&Method::GET, "/admin/users", &request),
//!     RequestDecision::Bypass(_)
//! ));
//! ```

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Extensions, Method, StatusCode};

/// The largest number of distinct field names a `Vary` header may list before the response is
/// treated like `Vary: *` and not stored.
pub const MAX_VARY_FIELDS: usize = 64;

/// The value every delta-seconds number (`max-age`, `s-maxage`, `Age`, ...) saturates at:
/// 2^31 seconds, as RFC 9111 §1.2.2 recommends for values too large to represent.
pub const DELTA_SECONDS_CAP: u64 = 2_147_483_648;

/// The longest lifetime a heuristic may give a response: one day.
const HEURISTIC_CAP_SECS: u64 = 86_400;

/// Statuses RFC 9110 §15.1 calls heuristically cacheable.
const HEURISTIC_STATUSES: &[u16] = &[200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// The statuses stored by default.
const DEFAULT_STATUSES: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The request headers whose presence makes a request bypass the cache by default.
const DEFAULT_DENY_HEADERS: &[&str] = &[
    "x-forwarded-host",
    "x-host",
    "x-forwarded-scheme",
    "x-forwarded-proto",
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
];

// ---------------------------------------------------------------------------------------------
// Modes and routes
// ---------------------------------------------------------------------------------------------

/// How the freshness lifetime of a response is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// The cache sits inside the application that produces the responses (the default).
    ///
    /// A response that says nothing about its freshness is stored for the matching route's TTL,
    /// or else for the default TTL. What the response does say still wins: `no-store`,
    /// `private`, `s-maxage`, `max-age` and `Expires` are honoured as in [`Mode::Shared`].
    #[default]
    Application,
    /// The cache sits in front of an origin it does not control.
    ///
    /// Freshness comes only from the response: `s-maxage`, then `max-age`, then
    /// `Expires - Date`. Route and default TTLs are ignored, so a response without explicit
    /// freshness is not stored, unless [`Policy::heuristic_freshness`] is on: then a response with
    /// a heuristically cacheable status (or `public`) and a `Last-Modified` lives for 10 % of
    /// `Date - Last-Modified`, at most one day.
    Shared,
}

/// The path pattern of a [`Route`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathPattern {
    /// Matches exactly this path.
    Exact(String),
    /// Matches this path and everything below it, segment by segment (see [`Route::prefix`]).
    Prefix(String),
    /// Matches a template with named segments (see [`Route::template`]).
    Template(Template),
}

impl PathPattern {
    /// Whether `path` matches this pattern. Anything from the first `?` on is ignored, and the path
    /// is compared as received: no decoding, no case folding, no trailing-slash games.
    pub fn matches(&self, path: &str) -> bool {
        let path = path.split_once('?').map_or(path, |(before, _)| before);
        match self {
            PathPattern::Exact(exact) => path == exact,
            PathPattern::Prefix(prefix) => {
                if prefix.is_empty() || prefix.ends_with('/') {
                    path.starts_with(prefix.as_str())
                } else {
                    path.strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                }
            }
            PathPattern::Template(template) => template.matches(path),
        }
    }
}

/// A parsed path template such as `/users/{id}/files/{*rest}`, made by [`Route::try_template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    CatchAll,
}

impl Template {
    /// Parses a template; see [`Route::template`] for the syntax.
    pub fn parse(pattern: &str) -> Result<Self, RouteError> {
        let error = |reason: String| RouteError {
            pattern: pattern.to_owned(),
            reason,
        };
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(error("a template must start with '/'".to_owned()));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let last = parts.len().saturating_sub(1);
        let mut names: HashSet<&str> = HashSet::new();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            if !part.contains(['{', '}']) {
                segments.push(Segment::Literal((*part).to_owned()));
                continue;
            }
            let inner = part
                .strip_prefix('{')
                .and_then(|p| p.strip_suffix('}'))
                .filter(|inner| !inner.contains(['{', '}']));
            let Some(inner) = inner else {
                return Err(error(format!(
                    "segment `{part}` has unbalanced braces or a parameter that does not fill the whole segment"
                )));
            };
            let (name, catch_all) = match inner.strip_prefix('*') {
                Some(name) => (name, true),
                None => (inner, false),
            };
            if name.is_empty() {
                return Err(error(format!(
                    "segment `{part}` has an empty parameter name"
                )));
            }
            if !names.insert(name) {
                return Err(error(format!("parameter `{name}` is used twice")));
            }
            if catch_all {
                if index != last {
                    return Err(error(format!(
                        "the catch-all `{part}` must be the last segment"
                    )));
                }
                segments.push(Segment::CatchAll);
            } else {
                segments.push(Segment::Param);
            }
        }
        Ok(Template {
            source: pattern.to_owned(),
            segments,
        })
    }

    /// The template as it was written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `path` (without its query) matches the template.
    fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match segment {
                Segment::Literal(literal) => match parts.next() {
                    Some(part) if part == literal => {}
                    _ => return false,
                },
                Segment::Param => match parts.next() {
                    Some(part) if !part.is_empty() => {}
                    _ => return false,
                },
                // "One or more segments": whatever is left must hold at least one non-empty one.
                Segment::CatchAll => return parts.any(|part| !part.is_empty()),
            }
        }
        parts.next().is_none()
    }
}

/// A malformed route template: which pattern, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid route template {pattern:?}: {reason}")]
pub struct RouteError {
    pattern: String,
    reason: String,
}

impl RouteError {
    /// The pattern that was rejected.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// What is wrong with it, in words.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A per-route rule: which paths it matches and how the cache treats them.
///
/// Rules are added with [`Policy::route`] and tried in the order they were added; the first one
/// whose pattern matches decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pattern: PathPattern,
    ttl: Option<Duration>,
    bypass: bool,
    allow_authenticated: bool,
    shape: Option<Arc<QueryShape>>,
    max_keys: Option<usize>,
    per_principal: bool,
}

/// How a route shapes the query part of its keys (see [`Route::query_keep`],
/// [`Route::query_drop`] and [`Route::normalise_param`]). By default every parameter and every
/// byte is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryShape {
    keep: Option<Vec<String>>,
    drop: Vec<String>,
    normalise: Vec<String>,
}

/// `utm_*` matches every name starting with `utm_`; anything else matches exactly.
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

impl QueryShape {
    /// Whether the parameter `name` stays in the key.
    pub fn keeps(&self, name: &str) -> bool {
        let allowed = self
            .keep
            .as_ref()
            .is_none_or(|keep| keep.iter().any(|p| name_matches(p, name)));
        allowed && !self.drop.iter().any(|p| name_matches(p, name))
    }

    /// Whether the value of `name` is folded before it goes into the key.
    pub fn normalises(&self, name: &str) -> bool {
        self.normalise.iter().any(|p| name_matches(p, name))
    }

    /// Whether the shape may drop parameters (then a query with `;` is not keyed, since an
    /// origin that also splits on `;` would see parameters the key does not: cloaking).
    pub fn drops_parameters(&self) -> bool {
        self.keep.is_some() || !self.drop.is_empty()
    }
}

impl Route {
    fn new(pattern: PathPattern) -> Self {
        Route {
            pattern,
            ttl: None,
            bypass: false,
            allow_authenticated: false,
            shape: None,
            max_keys: None,
            per_principal: false,
        }
    }

    /// Cache this route per principal: requests with `Authorization` or `Cookie` use the cache,
    /// each principal with entries of its own. The layer's principal hook
    /// ([`CacheLayer::principal`](crate::CacheLayer::principal)) names the principal of a
    /// request; its keyed digest goes into the key, and `private` responses may be stored
    /// (they are only ever served to the same principal). A request whose principal the hook
    /// cannot name bypasses the cache. `Set-Cookie` and `no-store` still refuse storage.
    pub fn per_principal(mut self) -> Self {
        self.per_principal = true;
        self
    }

    fn shape_mut(&mut self) -> &mut QueryShape {
        Arc::make_mut(self.shape.get_or_insert_with(Arc::default))
    }

    /// Key this route's requests on these query parameters only (an allow-list; `name*`
    /// matches a prefix). Requests whose query contains `;` then bypass the cache.
    pub fn query_keep(mut self, names: &[&str]) -> Self {
        self.shape_mut().keep = Some(names.iter().map(|n| (*n).to_owned()).collect());
        self
    }

    /// Leave these query parameters out of this route's keys (a deny-list, for example
    /// `utm_*`). Requests whose query contains `;` then bypass the cache.
    pub fn query_drop(mut self, names: &[&str]) -> Self {
        self.shape_mut()
            .drop
            .extend(names.iter().map(|n| (*n).to_owned()));
        self
    }

    /// Fold the value of this query parameter before it goes into the key: case, surrounding
    /// and repeated white space do not count, so `?q=How do I` and `?q=how  do i` share an
    /// entry. Only for parameters the origin itself treats that way.
    pub fn normalise_param(mut self, name: &str) -> Self {
        self.shape_mut().normalise.push(name.to_owned());
        self
    }

    /// Store at most `keys` distinct keys for this route in each process; further variants are
    /// served but not stored (counted as `key-cap`), which stops a flood of random queries from
    /// filling the store.
    pub fn max_keys(mut self, keys: usize) -> Self {
        self.max_keys = Some(keys);
        self
    }

    /// A rule for exactly this path.
    pub fn exact(path: &str) -> Self {
        Self::new(PathPattern::Exact(path.to_owned()))
    }

    /// A rule for a path and everything below it.
    ///
    /// Matching is segment-aware: `"/api"` matches `/api` and `/api/x` but not `/apix`. A prefix
    /// that ends in `/` matches every path that starts with it, so `"/static/"` matches
    /// `/static/a.css` but not `/static`. An empty prefix matches every path.
    pub fn prefix(prefix: &str) -> Self {
        Self::new(PathPattern::Prefix(prefix.to_owned()))
    }

    /// A rule for a path template, such as `/users/{id}/posts/{post}`.
    ///
    /// `{name}` matches exactly one non-empty segment; `{*name}`, allowed only as the last
    /// segment, matches one or more segments. Every other segment must match literally.
    ///
    /// # Panics
    ///
    /// Panics with a message naming the pattern and the problem when the template is malformed
    /// (no leading `/`, unbalanced braces, a parameter that is only part of a segment, an empty or
    /// repeated name, a catch-all that is not last). Like a router, this is meant to fail at
    /// start-up; use [`Route::try_template`] to handle the error instead.
    pub fn template(pattern: &str) -> Self {
        match Self::try_template(pattern) {
            Ok(route) => route,
            Err(error) => panic!("{error}"),
        }
    }

    /// Like [`Route::template`], but returns the error instead of panicking.
    pub fn try_template(pattern: &str) -> Result<Self, RouteError> {
        Template::parse(pattern).map(|t| Self::new(PathPattern::Template(t)))
    }

    /// Entries of this route live this long, unless the response (or the handler, through
    /// [`CacheTtl`]) says otherwise. Only used in [`Mode::Application`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Never use the cache for this route.
    pub fn bypass(mut self) -> Self {
        self.bypass = true;
        self
    }

    /// Let requests with `Authorization` or `Cookie` use the cache on this route. Their responses
    /// are stored (and stored responses reused for them) only when the response carries `public`
    /// or `s-maxage`, the response's explicit statement that it may be shared.
    pub fn allow_authenticated(mut self) -> Self {
        self.allow_authenticated = true;
        self
    }

    /// The rule's path pattern.
    pub fn pattern(&self) -> &PathPattern {
        &self.pattern
    }

    /// The rule's TTL, if one was set.
    pub fn get_ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// Whether the rule turns the cache off.
    pub fn is_bypass(&self) -> bool {
        self.bypass
    }

    /// Whether the rule lets authenticated requests use the cache.
    pub fn allows_authenticated(&self) -> bool {
        self.allow_authenticated
    }

    /// Whether the rule matches `path`.
    pub fn matches(&self, path: &str) -> bool {
        self.pattern.matches(path)
    }
}

// ---------------------------------------------------------------------------------------------
// Handler extensions
// ---------------------------------------------------------------------------------------------

/// A response extension with which a handler chooses its response's TTL.
///
/// It outranks every header and setting (still subject to the refusals listed on [`Policy`],
/// to the TTL clamp and to jitter). Below one second means "do not store"
/// ([`NotStorable::NoFreshness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTtl(pub Duration);

/// A response extension with which a handler forbids storing its response
/// ([`NotStorable::HandlerNoStore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NoStore;

// ---------------------------------------------------------------------------------------------
// Reasons
// ---------------------------------------------------------------------------------------------

/// Why a request does not use the cache at all (no lookup, no store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BypassReason {
    /// The method is neither GET nor HEAD.
    Method,
    /// The request carries `Authorization` (or `Proxy-Authorization`) and the route did not opt in.
    Authorization,
    /// The request carries `Cookie` and the route did not opt in.
    Cookie,
    /// The request has a body: `Content-Length` other than 0 (or unreadable), or any
    /// `Transfer-Encoding`.
    RequestBody,
    /// The request's `Cache-Control` has `no-store`.
    RequestNoStore,
    /// The request carries a header on the deny-list (see [`Policy::deny_header`]).
    UnkeyedHeader,
    /// The matching route is marked [`Route::bypass`].
    Route,
    /// The request asks for a protocol upgrade (`Upgrade`, `Connection: upgrade`, WebSocket).
    Upgrade,
    /// The request asks for a range (`Range`); this cache does not serve partial content.
    Range,
    /// The route drops query parameters from its keys and the query contains `;`, which some
    /// origins also treat as a separator (parameter cloaking).
    QuerySeparator,
}

impl BypassReason {
    /// Every reason, in declaration order.
    pub const ALL: &'static [BypassReason] = &[
        BypassReason::Method,
        BypassReason::Authorization,
        BypassReason::Cookie,
        BypassReason::RequestBody,
        BypassReason::RequestNoStore,
        BypassReason::UnkeyedHeader,
        BypassReason::Route,
        BypassReason::Upgrade,
        BypassReason::Range,
        BypassReason::QuerySeparator,
    ];

    /// A stable kebab-case name, for `Cache-Status` details and statistics.
    pub fn as_str(&self) -> &'static str {
        match self {
            BypassReason::Method => "method",
            BypassReason::Authorization => "authorization",
            BypassReason::Cookie => "cookie",
            BypassReason::RequestBody => "request-body",
            BypassReason::RequestNoStore => "request-no-store",
            BypassReason::UnkeyedHeader => "unkeyed-header",
            BypassReason::Route => "route",
            BypassReason::Upgrade => "upgrade",
            BypassReason::Range => "range",
            BypassReason::QuerySeparator => "query-separator",
        }
    }
}

impl fmt::Display for BypassReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotStorable {
    /// The status is not on the allow-list, or is one that is never stored.
    Status,
    /// The response's `Cache-Control` has `no-store`.
    NoStore,
    /// The response's `Cache-Control` has `private` (with or without field names).
    Private,
    /// The response sets a cookie.
    SetCookie,
    /// The response has `Vary: *`, an unreadable `Vary`, or more than [`MAX_VARY_FIELDS`] names.
    VaryStar,
    /// No usable freshness lifetime: zero or invalid `max-age`/`s-maxage`, an invalid or past
    /// `Expires`, a lifetime used up by the response's age, a zero TTL, or (in
    /// [`Mode::Shared`]) no explicit freshness at all.
    NoFreshness,
    /// The response's `Cache-Control` has `no-cache` (with or without field names). This layer
    /// does not revalidate, so such a response is not stored.
    NoCacheDirective,
    /// The request carried credentials and the response has neither `public` nor `s-maxage`.
    Authenticated,
    /// The handler set the [`NoStore`] extension.
    HandlerNoStore,
    /// The body is larger than the store accepts. Reported by the body collector, never by
    /// [`Policy::storability`].
    TooLarge,
    /// The response is a server-sent event stream (`Content-Type: text/event-stream`).
    EventStream,
    /// The body ended early or with an error. Reported by the body collector, never by
    /// [`Policy::storability`].
    Incomplete,
    /// The response is partial: status 206, or a `Content-Range` header.
    ContentRange,
    /// The route already stores as many distinct keys as [`Route::max_keys`] allows.
    KeyCap,
}

impl NotStorable {
    /// Every reason, in declaration order.
    pub const ALL: &'static [NotStorable] = &[
        NotStorable::Status,
        NotStorable::NoStore,
        NotStorable::Private,
        NotStorable::SetCookie,
        NotStorable::VaryStar,
        NotStorable::NoFreshness,
        NotStorable::NoCacheDirective,
        NotStorable::Authenticated,
        NotStorable::HandlerNoStore,
        NotStorable::TooLarge,
        NotStorable::EventStream,
        NotStorable::Incomplete,
        NotStorable::ContentRange,
        NotStorable::KeyCap,
    ];

    /// A stable kebab-case name, for `Cache-Status` details and statistics.
    pub fn as_str(&self) -> &'static str {
        match self {
            NotStorable::Status => "status",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::VaryStar => "vary-star",
            NotStorable::NoFreshness => "no-freshness",
            NotStorable::NoCacheDirective => "no-cache",
            NotStorable::Authenticated => "authenticated",
            NotStorable::HandlerNoStore => "handler-no-store",
            NotStorable::TooLarge => "too-large",
            NotStorable::EventStream => "event-stream",
            NotStorable::Incomplete => "incomplete",
            NotStorable::ContentRange => "content-range",
            NotStorable::KeyCap => "key-cap",
        }
    }
}

impl fmt::Display for NotStorable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

/// What the policy says about a request head.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestDecision {
    /// Do not look up, do not store: send the request to the inner service untouched.
    Bypass(BypassReason),
    /// The cache may be used; the details are needed again for [`Policy::storability`].
    Cache(RequestInfo),
}

/// What [`Policy::classify`] learned about a cacheable request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestInfo {
    /// The TTL of the matching route, if it has one.
    pub route_ttl: Option<Duration>,
    /// The matching route's query shaping, if it has any.
    pub shape: Option<Arc<QueryShape>>,
    /// The matching route's key cap: (the route's position among the rules, the cap).
    pub max_keys: Option<(usize, usize)>,
    /// The request has credentials on a [`Route::per_principal`] route: it is keyed on its
    /// principal, and `private` responses may be stored for it.
    pub per_principal: bool,
    /// The request carried `Authorization` or `Cookie` on a route that allows it; only responses
    /// with `public` or `s-maxage` may be stored for it or served to it.
    pub authenticated: bool,
    /// The request's `Cache-Control` has `only-if-cached`.
    pub only_if_cached: bool,
    /// The request asked for an end-to-end answer (`no-cache`, `max-age=0` or an invalid
    /// `max-age`, or `Pragma: no-cache` without `Cache-Control`) and the policy honours that
    /// (see [`Policy::honour_client_no_cache`]). Always false otherwise.
    pub no_cache: bool,
    /// The method is HEAD.
    pub is_head: bool,
}

/// How long a storable response may be stored and served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// The freshness left at store time (lifetime minus current age), clamped into the TTL
    /// range and jittered. Whole seconds, at least one second.
    pub ttl: Duration,
    /// The corrected initial age of RFC 9111 §4.2.3: the larger of the apparent age
    /// (response time − `Date`) and `Age` plus the response delay. Whole seconds.
    pub initial_age: Duration,
    /// The response's `stale-while-revalidate`, capped at the maximum TTL; zero when absent or
    /// invalid, or when `must-revalidate`, `proxy-revalidate`, `s-maxage` or `no-cache` is present.
    pub stale_while_revalidate: Duration,
    /// The response's `stale-if-error`, with the same caps and exceptions.
    pub stale_if_error: Duration,
}

// ---------------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------------

/// All policy settings, built with chained methods.
///
/// # Defaults
///
/// | setting | default |
/// |---|---|
/// | [`mode`](Policy::mode) | [`Mode::Application`] |
/// | [`default_ttl`](Policy::default_ttl) | 300 s |
/// | [`ttl_range`](Policy::ttl_range) | 1 s ..= 24 h |
/// | [`jitter`](Policy::jitter) | 0.10 (±10 %) |
/// | [`cacheable_statuses`](Policy::cacheable_statuses) | 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501 |
/// | [`deny_headers`](Policy::deny_headers) | `X-Forwarded-Host`, `X-Host`, `X-Forwarded-Scheme`, `X-Forwarded-Proto`, `Forwarded`, `X-Original-URL`, `X-Rewrite-URL`, `X-HTTP-Method-Override` |
/// | [`honour_client_no_cache`](Policy::honour_client_no_cache) | false |
/// | [`heuristic_freshness`](Policy::heuristic_freshness) | false |
/// | routes | none |
///
/// # Requests
///
/// See [`Policy::classify`] for the order of the bypass checks.
///
/// # Responses
///
/// [`Policy::storability`] first refuses, in this order (the first that applies is reported):
///
/// 1. the [`NoStore`] extension ([`NotStorable::HandlerNoStore`]);
/// 2. status 206 ([`NotStorable::ContentRange`]); a status that is not allow-listed or is never
///    stored ([`NotStorable::Status`]);
/// 3. a `Content-Range` header ([`NotStorable::ContentRange`]);
/// 4. `Content-Type: text/event-stream` ([`NotStorable::EventStream`]);
/// 5. `Cache-Control: no-store` ([`NotStorable::NoStore`]);
/// 6. `Cache-Control: private` ([`NotStorable::Private`]);
/// 7. `Cache-Control: no-cache` ([`NotStorable::NoCacheDirective`]);
/// 8. `Set-Cookie` ([`NotStorable::SetCookie`]);
/// 9. `Vary: *`, or a `Vary` that cannot be used ([`NotStorable::VaryStar`]);
/// 10. a request with credentials ([`RequestInfo::authenticated`]) answered without `public` or
///     `s-maxage` ([`NotStorable::Authenticated`]).
///
/// Then the freshness lifetime is taken from the first of these that is present:
///
/// 1. the [`CacheTtl`] extension (any mode);
/// 2. `s-maxage`;
/// 3. `max-age`;
/// 4. `Expires - Date` (the response time stands in for a missing, repeated or invalid `Date`);
/// 5. the matching route's TTL ([`Mode::Application`] only);
/// 6. the default TTL ([`Mode::Application`] only);
/// 7. the heuristic ([`Mode::Shared`] with [`Policy::heuristic_freshness`] on);
/// 8. otherwise [`NotStorable::NoFreshness`].
///
/// The first rule present decides, even when its value is useless: an invalid `max-age` or
/// an unparsable or repeated `Expires` (such as `0`, or a zone other than GMT) means "already
/// stale" and gives [`NotStorable::NoFreshness`]; it does not fall through to the next rule.
///
/// The TTL is the lifetime minus the corrected initial age (RFC 9111 §4.2.3), in whole seconds;
/// zero or less gives [`NotStorable::NoFreshness`]. A positive TTL is clamped into the TTL range,
/// jittered, clamped again and rounded to whole seconds. The jitter band is ±fraction for
/// lifetimes the policy chose (extension, route, default, heuristic) and −fraction..0 for
/// lifetimes the response stated (`s-maxage`, `max-age`, `Expires`), so a cached copy is never
/// served as fresh past the lifetime its origin gave it (unless the minimum TTL forces it).
///
/// # Statuses
///
/// Whatever the allow-list says, these are never stored: 206 (this cache does not handle ranges),
/// 1xx, the RFC 6585 statuses 428, 429, 431 and 511, and every 5xx except 501. 501 Not
/// Implemented describes the resource rather than a passing failure, and is heuristically
/// cacheable per RFC 9110 §15.1, so it stays storable when listed (it is in the default list).
#[derive(Debug, Clone)]
pub struct Policy {
    mode: Mode,
    routes: Vec<Route>,
    default_ttl: Duration,
    min_ttl: Duration,
    max_ttl: Duration,
    jitter: f64,
    statuses: Vec<u16>,
    deny: Vec<HeaderName>,
    honour_client_no_cache: bool,
    heuristic_freshness: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Application,
            routes: Vec::new(),
            default_ttl: Duration::from_secs(300),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(24 * 60 * 60),
            jitter: 0.10,
            statuses: DEFAULT_STATUSES.to_vec(),
            deny: DEFAULT_DENY_HEADERS
                .iter()
                .map(|name| HeaderName::from_static(name))
                .collect(),
            honour_client_no_cache: false,
            heuristic_freshness: false,
        }
    }
}

/// Where a lifetime came from; decides the jitter band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Chosen by this side: handler extension, route, default, heuristic.
    Chosen,
    /// Stated by the response: s-maxage, max-age, Expires.
    Stated,
}

impl Policy {
    /// Sets how freshness is decided (see [`Mode`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Adds a route rule. Rules are tried in the order they were added; the first match wins.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Sets the TTL of responses that say nothing about their freshness ([`Mode::Application`]
    /// only). Rounded down to whole seconds; zero means such responses are not stored.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Sets the range every stored TTL is clamped into.
    ///
    /// Both bounds are rounded down to whole seconds. If `min` is greater than `max` they are
    /// swapped. The minimum is raised to one second, and the maximum to the minimum.
    pub fn ttl_range(mut self, min: Duration, max: Duration) -> Self {
        let (low, high) = if min > max { (max, min) } else { (min, max) };
        let low = low.as_secs().max(1);
        let high = high.as_secs().max(low);
        self.min_ttl = Duration::from_secs(low);
        self.max_ttl = Duration::from_secs(high);
        self
    }

    /// Sets the TTL jitter as a fraction of the TTL: 0.1 spreads TTLs over ±10 %, so that
    /// entries filled together do not all expire together. Clamped to `[0, 0.5]`; NaN means 0.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 0.5)
        };
        self
    }

    /// Replaces the list of statuses that may be stored.
    ///
    /// Some statuses are refused even when listed: 206, 1xx, 428, 429, 431, 511 and every 5xx
    /// but 501 (see the [`Policy`] docs).
    pub fn cacheable_statuses(mut self, statuses: &[u16]) -> Self {
        self.statuses = statuses.to_vec();
        self
    }

    /// Adds a header to the deny-list: a request carrying it bypasses the cache
    /// ([`BypassReason::UnkeyedHeader`]).
    pub fn deny_header(mut self, name: HeaderName) -> Self {
        if !self.deny.contains(&name) {
            self.deny.push(name);
        }
        self
    }

    /// Replaces the deny-list (see [`Policy::deny_header`]).
    pub fn deny_headers(mut self, names: Vec<HeaderName>) -> Self {
        self.deny = Vec::with_capacity(names.len());
        for name in names {
            self = self.deny_header(name);
        }
        self
    }

    /// Whether a client's `Cache-Control: no-cache` (or `max-age=0`, or `Pragma: no-cache`) is
    /// passed on as [`RequestInfo::no_cache`]. Off by default: otherwise any client can force
    /// origin load at will.
    pub fn honour_client_no_cache(mut self, yes: bool) -> Self {
        self.honour_client_no_cache = yes;
        self
    }

    /// Whether [`Mode::Shared`] may give a heuristic lifetime to responses without explicit
    /// freshness (10 % of `Date - Last-Modified`, at most one day). Off by default.
    pub fn heuristic_freshness(mut self, yes: bool) -> Self {
        self.heuristic_freshness = yes;
        self
    }

    /// The mode.
    pub fn get_mode(&self) -> Mode {
        self.mode
    }

    /// The default TTL.
    pub fn get_default_ttl(&self) -> Duration {
        self.default_ttl
    }

    /// The TTL range, `(min, max)`, as normalised by [`Policy::ttl_range`].
    pub fn get_ttl_range(&self) -> (Duration, Duration) {
        (self.min_ttl, self.max_ttl)
    }

    /// The jitter fraction.
    pub fn get_jitter(&self) -> f64 {
        self.jitter
    }

    /// The route rules, in the order they are tried.
    pub fn get_routes(&self) -> &[Route] {
        &self.routes
    }

    /// The allow-listed statuses, as configured (before the statuses that are always refused
    /// are taken out).
    pub fn get_cacheable_statuses(&self) -> &[u16] {
        &self.statuses
    }

    /// The deny-listed request headers.
    pub fn get_deny_headers(&self) -> &[HeaderName] {
        &self.deny
    }

    /// Whether client `no-cache` is honoured.
    pub fn get_honour_client_no_cache(&self) -> bool {
        self.honour_client_no_cache
    }

    /// Whether heuristic freshness is on.
    pub fn get_heuristic_freshness(&self) -> bool {
        self.heuristic_freshness
    }

    /// The first route rule that matches `path`, if any.
    pub fn route_for(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|route| route.matches(path))
    }

    /// Whether a response with this status may be stored (allow-listed and not always refused).
    pub fn is_storable_status(&self, status: StatusCode) -> bool {
        let code = status.as_u16();
        !always_refused(code) && self.statuses.contains(&code)
    }

    /// Decides from the request head alone whether the cache may be used.
    ///
    /// The checks run in this order, and the first that applies is the reason reported:
    /// [`Method`](BypassReason::Method) (only GET and HEAD use the cache) →
    /// [`Route`](BypassReason::Route) → [`Upgrade`](BypassReason::Upgrade) →
    /// [`Range`](BypassReason::Range) → [`RequestBody`](BypassReason::RequestBody) →
    /// [`UnkeyedHeader`](BypassReason::UnkeyedHeader) →
    /// [`RequestNoStore`](BypassReason::RequestNoStore) →
    /// [`Authorization`](BypassReason::Authorization) → [`Cookie`](BypassReason::Cookie).
    /// On a route with [`Route::allow_authenticated`] the last two are skipped and
    /// [`RequestInfo::authenticated`] is set instead.
    ///
    /// `path` is the request target's path; a query after `?` is ignored.
    pub fn classify(&self, method: &Method, path: &str, headers: &HeaderMap) -> RequestDecision {
        if method != Method::GET && method != Method::HEAD {
            return RequestDecision::Bypass(BypassReason::Method);
        }
        let route = self.route_for(path);
        if route.is_some_and(Route::is_bypass) {
            return RequestDecision::Bypass(BypassReason::Route);
        }
        let present = Present::scan(headers, &self.deny);
        if present.upgrade
            || (present.connection && has_token(headers, &header::CONNECTION, "upgrade"))
        {
            return RequestDecision::Bypass(BypassReason::Upgrade);
        }
        if present.range {
            return RequestDecision::Bypass(BypassReason::Range);
        }
        if present.transfer_encoding || (present.content_length && has_body(headers)) {
            return RequestDecision::Bypass(BypassReason::RequestBody);
        }
        if present.denied {
            return RequestDecision::Bypass(BypassReason::UnkeyedHeader);
        }
        let cc = if present.cache_control {
            CacheControl::parse(headers)
        } else {
            CacheControl::default()
        };
        if cc.no_store {
            return RequestDecision::Bypass(BypassReason::RequestNoStore);
        }
        let has_authorization = present.authorization;
        let has_cookie = present.cookie;
        let per_principal = route.is_some_and(|route| route.per_principal);
        let allow_authenticated = route.is_some_and(Route::allows_authenticated) || per_principal;
        if !allow_authenticated {
            if has_authorization {
                return RequestDecision::Bypass(BypassReason::Authorization);
            }
            if has_cookie {
                return RequestDecision::Bypass(BypassReason::Cookie);
            }
        }
        let wants_end_to_end = cc.no_cache
            || matches!(cc.max_age, Some(Directive::Seconds(0) | Directive::Invalid))
            || (!present.cache_control
                && present.pragma
                && has_token(headers, &header::PRAGMA, "no-cache"));
        let max_keys = route.and_then(|route| {
            let cap = route.max_keys?;
            let index = self.routes.iter().position(|r| std::ptr::eq(r, route))?;
            Some((index, cap))
        });
        RequestDecision::Cache(RequestInfo {
            route_ttl: route.and_then(Route::get_ttl),
            shape: route.and_then(|route| route.shape.clone()),
            max_keys,
            authenticated: allow_authenticated
                && !per_principal
                && (has_authorization || has_cookie),
            per_principal: per_principal && (has_authorization || has_cookie),
            only_if_cached: cc.only_if_cached,
            no_cache: self.honour_client_no_cache && wants_end_to_end,
            is_head: method == Method::HEAD,
        })
    }

    /// Decides whether a response may be stored, and with which [`Freshness`].
    ///
    /// `info` is what [`Policy::classify`] returned for the request; `extensions` are the
    /// response's extensions (read for [`CacheTtl`] and [`NoStore`]); `request_time` is when the
    /// request was sent to the inner service and `response_time` when its response head arrived
    /// (both feed the age calculation). The refusals and the precedence of lifetimes are listed on
    /// [`Policy`].
    ///
    /// This does not look at the method: the service must never store a body-less HEAD
    /// response where a GET response belongs.
    pub fn storability(
        &self,
        info: &RequestInfo,
        status: StatusCode,
        headers: &HeaderMap,
        extensions: &Extensions,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Result<Freshness, NotStorable> {
        if extensions.get::<NoStore>().is_some() {
            return Err(NotStorable::HandlerNoStore);
        }
        if status == StatusCode::PARTIAL_CONTENT {
            return Err(NotStorable::ContentRange);
        }
        if !self.is_storable_status(status) {
            return Err(NotStorable::Status);
        }
        if headers.contains_key(header::CONTENT_RANGE) {
            return Err(NotStorable::ContentRange);
        }
        if is_event_stream(headers) {
            return Err(NotStorable::EventStream);
        }
        let cc = CacheControl::parse(headers);
        if cc.no_store {
            return Err(NotStorable::NoStore);
        }
        // On a per-principal route every entry is keyed on its principal: `private` is what
        // such a response is expected to say.
        if cc.private && !info.per_principal {
            return Err(NotStorable::Private);
        }
        if cc.no_cache {
            return Err(NotStorable::NoCacheDirective);
        }
        if headers.contains_key(header::SET_COOKIE) {
            return Err(NotStorable::SetCookie);
        }
        if vary_list(headers) == VaryList::Star {
            return Err(NotStorable::VaryStar);
        }
        if info.authenticated && !cc.public && cc.s_maxage.is_none() {
            return Err(NotStorable::Authenticated);
        }

        let date = match date_field(headers, &header::DATE) {
            DateField::Valid(date) => Some(date),
            DateField::Absent | DateField::Invalid => None,
        };
        let age = initial_age_secs(headers, date, request_time, response_time);
        let (lifetime, source) =
            self.lifetime(info, status, headers, extensions, &cc, date, response_time)?;
        let ttl = lifetime.saturating_sub(age);
        if ttl == 0 {
            return Err(NotStorable::NoFreshness);
        }

        let max = self.max_ttl.as_secs();
        let no_stale = cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some();
        let stale = |directive: Option<Directive>| match directive {
            Some(Directive::Seconds(secs)) if !no_stale => Duration::from_secs(secs.min(max)),
            _ => Duration::ZERO,
        };
        Ok(Freshness {
            ttl: self.finish_ttl(ttl, source),
            initial_age: Duration::from_secs(age),
            stale_while_revalidate: stale(cc.stale_while_revalidate),
            stale_if_error: stale(cc.stale_if_error),
        })
    }

    /// The freshness lifetime in whole seconds, by the precedence documented on [`Policy`].
    #[allow(clippy::too_many_arguments)]
    fn lifetime(
        &self,
        info: &RequestInfo,
        status: StatusCode,
        headers: &HeaderMap,
        extensions: &Extensions,
        cc: &CacheControl,
        date: Option<SystemTime>,
        response_time: SystemTime,
    ) -> Result<(u64, Source), NotStorable> {
        let stated = |directive: Directive| match directive {
            Directive::Seconds(secs) => Ok((secs, Source::Stated)),
            Directive::Invalid => Err(NotStorable::NoFreshness),
        };
        if let Some(CacheTtl(ttl)) = extensions.get::<CacheTtl>() {
            return Ok((ttl.as_secs(), Source::Chosen));
        }
        if let Some(s_maxage) = cc.s_maxage {
            return stated(s_maxage);
        }
        if let Some(max_age) = cc.max_age {
            return stated(max_age);
        }
        let date_or_now = date.unwrap_or(response_time);
        match date_field(headers, &header::EXPIRES) {
            DateField::Absent => {}
            DateField::Invalid => return Err(NotStorable::NoFreshness),
            DateField::Valid(expires) => {
                let lifetime = expires
                    .duration_since(date_or_now)
                    .map_or(0, |d| d.as_secs());
                return Ok((lifetime, Source::Stated));
            }
        }
        match self.mode {
            Mode::Application => {
                let ttl = info.route_ttl.unwrap_or(self.default_ttl);
                Ok((ttl.as_secs(), Source::Chosen))
            }
            Mode::Shared => {
                if !self.heuristic_freshness {
                    return Err(NotStorable::NoFreshness);
                }
                heuristic_lifetime(status, cc, headers, date_or_now)
                    .map(|secs| (secs, Source::Chosen))
                    .ok_or(NotStorable::NoFreshness)
            }
        }
    }

    /// Clamps, jitters and clamps again a positive TTL in whole seconds.
    fn finish_ttl(&self, ttl: u64, source: Source) -> Duration {
        let min = self.min_ttl.as_secs();
        let max = self.max_ttl.as_secs().max(min);
        let clamped = ttl.clamp(min, max);
        let spread = match source {
            Source::Chosen => self.jitter * (2.0 * fastrand::f64() - 1.0),
            Source::Stated => -self.jitter * fastrand::f64(),
        };
        let jittered = (clamped as f64 * (1.0 + spread)).round();
        // `as` saturates for floats (NaN becomes 0); the clamp below restores the range anyway.
        let secs = if jittered.is_finite() {
            jittered as u64
        } else {
            clamped
        };
        Duration::from_secs(secs.clamp(min, max))
    }
}

/// Statuses never stored, whatever the allow-list says.
fn always_refused(code: u16) -> bool {
    code < 200
        || code == 206
        || matches!(code, 428 | 429 | 431 | 511)
        || (code >= 500 && code != 501)
}

/// 10 % of `Date - Last-Modified`, at most a day, for heuristically cacheable responses.
fn heuristic_lifetime(
    status: StatusCode,
    cc: &CacheControl,
    headers: &HeaderMap,
    date: SystemTime,
) -> Option<u64> {
    if !cc.public && !HEURISTIC_STATUSES.contains(&status.as_u16()) {
        return None;
    }
    let DateField::Valid(last_modified) = date_field(headers, &header::LAST_MODIFIED) else {
        return None;
    };
    let span = date.duration_since(last_modified).ok()?.as_secs();
    Some((span / 10).min(HEURISTIC_CAP_SECS))
}

/// The corrected initial age of RFC 9111 §4.2.3, in whole seconds (rounded down).
fn initial_age_secs(
    headers: &HeaderMap,
    date: Option<SystemTime>,
    request_time: SystemTime,
    response_time: SystemTime,
) -> u64 {
    let apparent = date
        .and_then(|date| response_time.duration_since(date).ok())
        .map_or(0, |d| d.as_secs());
    let delay = response_time
        .duration_since(request_time)
        .map_or(0, |d| d.as_secs());
    let corrected = parse_age(headers).unwrap_or(0).saturating_add(delay);
    apparent.max(corrected)
}

enum DateField {
    Absent,
    Invalid,
    Valid(SystemTime),
}

/// Reads a date header. More than one field line, non-ASCII text, a zone other than GMT or any
/// other unparsable value is `Invalid`.
fn date_field(headers: &HeaderMap, name: &HeaderName) -> DateField {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return DateField::Absent;
    };
    if values.next().is_some() {
        return DateField::Invalid;
    }
    match first
        .to_str()
        .ok()
        .and_then(|text| httpdate::parse_http_date(text.trim()).ok())
    {
        Some(date) => DateField::Valid(date),
        None => DateField::Invalid,
    }
}

/// Which of the request fields that decide a request's fate it has: one pass over the names the
/// request carries (usually a handful) instead of one map lookup per field of interest.
#[derive(Debug, Default)]
struct Present {
    /// `Upgrade` or `Sec-WebSocket-Key`.
    upgrade: bool,
    connection: bool,
    range: bool,
    transfer_encoding: bool,
    content_length: bool,
    /// A deny-listed field.
    denied: bool,
    cache_control: bool,
    pragma: bool,
    /// `Authorization` or `Proxy-Authorization`.
    authorization: bool,
    cookie: bool,
}

impl Present {
    fn scan(headers: &HeaderMap, deny: &[HeaderName]) -> Self {
        let mut present = Present::default();
        for name in headers.keys() {
            if name == header::UPGRADE || name == header::SEC_WEBSOCKET_KEY {
                present.upgrade = true;
            } else if name == header::CONNECTION {
                present.connection = true;
            } else if name == header::RANGE {
                present.range = true;
            } else if name == header::TRANSFER_ENCODING {
                present.transfer_encoding = true;
            } else if name == header::CONTENT_LENGTH {
                present.content_length = true;
            } else if name == header::CACHE_CONTROL {
                present.cache_control = true;
            } else if name == header::PRAGMA {
                present.pragma = true;
            } else if name == header::AUTHORIZATION || name == header::PROXY_AUTHORIZATION {
                present.authorization = true;
            } else if name == header::COOKIE {
                present.cookie = true;
            }
            // Checked for every name: a deny-list may name any field, standard ones included.
            if deny.contains(name) {
                present.denied = true;
            }
        }
        present
    }
}

/// Whether the request has (or may have) a body: any `Transfer-Encoding`, or a `Content-Length`
/// that is not a clean zero.
fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers.get_all(header::CONTENT_LENGTH).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|member| trim_ows(member).parse_u64() != Some(0))
    })
}

/// Whether the response is a server-sent event stream.
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_TYPE).iter().any(|value| {
        let bytes = value.as_bytes();
        let essence = bytes.split(|&b| b == b';').next().unwrap_or(bytes);
        trim_ows(essence).eq_ignore_ascii_case(b"text/event-stream")
    })
}

/// Whether any comma-separated member of any `name` field line equals `token`, ignoring case.
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|member| trim_ows(member).eq_ignore_ascii_case(token.as_bytes()))
    })
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_ows(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| !is_ows(b))
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// `1*DIGIT` parsing of byte slices.
trait ParseDigits {
    /// The number, or `None` when empty, not all digits, or too big for a `u64`.
    fn parse_u64(&self) -> Option<u64>;
}

impl ParseDigits for [u8] {
    fn parse_u64(&self) -> Option<u64> {
        if self.is_empty() {
            return None;
        }
        self.iter().try_fold(0u64, |acc, &b| {
            if b.is_ascii_digit() {
                acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
            } else {
                None
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Cache-Control
// ---------------------------------------------------------------------------------------------

/// The value of a delta-seconds directive such as `max-age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// A valid number of seconds, saturated at [`DELTA_SECONDS_CAP`].
    Seconds(u64),
    /// Present but unusable: missing, empty, negative, fractional, not a number, or followed by
    /// junk. Treated as "already stale".
    Invalid,
}

impl Directive {
    /// The number of seconds, if valid.
    pub fn seconds(self) -> Option<u64> {
        match self {
            Directive::Seconds(secs) => Some(secs),
            Directive::Invalid => None,
        }
    }

    /// The more restrictive of two values of the same directive: `Invalid` beats any number,
    /// and the smaller number beats the larger.
    fn most_restrictive(self, other: Directive) -> Directive {
        match (self, other) {
            (Directive::Seconds(a), Directive::Seconds(b)) => Directive::Seconds(a.min(b)),
            _ => Directive::Invalid,
        }
    }
}

/// The directives of the `Cache-Control` field lines of a request or a response.
///
/// # Parsing rules
///
/// - All field lines are read; each is split at commas that are not inside a quoted string.
/// - Directive names are case-insensitive; unknown directives are ignored.
/// - Values may be tokens or quoted strings: `max-age=10` and `max-age="10"` are the same.
/// - A repeated delta-seconds directive takes its **most restrictive** value: an invalid value
///   beats every number, and otherwise the smallest number wins (`max-age=60, max-age=10` is 10).
/// - `private="x"` counts as `private`, and `no-cache="x"` as `no-cache`. `public` counts only
///   without a value, since a malformed `public` must not loosen anything.
/// - A directive that cannot be parsed (for instance `max-age =10`, `max-age=10 junk`, or an
///   unterminated quote) is recorded as [`Directive::Invalid`] for delta-seconds directives, and
///   still sets the restrictive flags (`no-store`, `no-cache`, `private`, `must-revalidate`,
///   `proxy-revalidate`).
/// - Garbage, including non-ASCII bytes, never panics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`, with or without field names.
    pub no_cache: bool,
    /// `private`, with or without field names.
    pub private: bool,
    /// `public` (without a value).
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `only-if-cached` (a request directive).
    pub only_if_cached: bool,
    /// `max-age`.
    pub max_age: Option<Directive>,
    /// `s-maxage`.
    pub s_maxage: Option<Directive>,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Option<Directive>,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<Directive>,
}

/// The argument of one parsed directive.
#[derive(Debug, Clone, Copy)]
enum Arg<'a> {
    /// No `=`.
    None,
    /// `=token` (possibly empty).
    Token(&'a [u8]),
    /// `="..."`: the raw bytes between the quotes, escapes not yet removed.
    Quoted(&'a [u8]),
    /// Something that is not valid directive syntax.
    Malformed,
}

impl CacheControl {
    /// Parses every `Cache-Control` field line of `headers` (see the type docs for the rules).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            for_each_directive(value.as_bytes(), |name, arg| cc.apply(name, arg));
        }
        cc
    }

    fn apply(&mut self, name: &[u8], arg: Arg<'_>) {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        let merge = |slot: &mut Option<Directive>| {
            let value = delta_seconds(arg);
            *slot = Some(match *slot {
                Some(old) => old.most_restrictive(value),
                None => value,
            });
        };
        if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            self.no_cache = true;
        } else if is("private") {
            self.private = true;
        } else if is("public") {
            if matches!(arg, Arg::None) {
                self.public = true;
            }
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("only-if-cached") {
            self.only_if_cached = true;
        } else if is("max-age") {
            merge(&mut self.max_age);
        } else if is("s-maxage") {
            merge(&mut self.s_maxage);
        } else if is("stale-while-revalidate") {
            merge(&mut self.stale_while_revalidate);
        } else if is("stale-if-error") {
            merge(&mut self.stale_if_error);
        }
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads `1*DIGIT` from a directive argument, removing quoted-pair escapes from quoted strings.
fn delta_seconds(arg: Arg<'_>) -> Directive {
    let (bytes, quoted) = match arg {
        Arg::Token(bytes) => (bytes, false),
        Arg::Quoted(bytes) => (bytes, true),
        Arg::None | Arg::Malformed => return Directive::Invalid,
    };
    let mut value: u64 = 0;
    let mut digits = 0usize;
    let mut escaped = false;
    for &b in bytes {
        if quoted && !escaped && b == b'\\' {
            escaped = true;
            continue;
        }
        escaped = false;
        if !b.is_ascii_digit() {
            return Directive::Invalid;
        }
        value = value.saturating_mul(10).saturating_add(u64::from(b - b'0'));
        digits += 1;
    }
    if digits == 0 {
        return Directive::Invalid;
    }
    Directive::Seconds(value.min(DELTA_SECONDS_CAP))
}

/// A cursor over the bytes of one field line.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn at_separator(&self) -> bool {
        matches!(self.peek(), None | Some(b','))
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        self.bytes.get(start..self.pos).unwrap_or_default()
    }

    fn skip_ows(&mut self) {
        self.take_while(is_ows);
    }

    /// Moves to the next comma that is not inside a quoted string (or to the end).
    fn skip_to_separator(&mut self) {
        let mut in_quotes = false;
        while let Some(b) = self.peek() {
            match b {
                b',' if !in_quotes => return,
                b'"' => in_quotes = !in_quotes,
                b'\\' if in_quotes => self.pos += 1,
                _ => {}
            }
            self.pos += 1;
        }
    }

    /// After a value: optional whitespace, then a comma or the end; anything else is malformed.
    fn finish(&mut self, arg: Arg<'a>) -> Arg<'a> {
        self.skip_ows();
        if self.at_separator() {
            arg
        } else {
            self.skip_to_separator();
            Arg::Malformed
        }
    }

    /// Reads a quoted string; the cursor is on the opening quote.
    fn quoted(&mut self) -> Arg<'a> {
        self.pos += 1;
        let start = self.pos;
        while let Some(b) = self.peek() {
            match b {
                b'\\' => self.pos += 2,
                b'"' => {
                    let inner = self.bytes.get(start..self.pos).unwrap_or_default();
                    self.pos += 1;
                    return self.finish(Arg::Quoted(inner));
                }
                _ => self.pos += 1,
            }
        }
        // Unterminated: the rest of the line belongs to this directive.
        self.pos = self.bytes.len();
        Arg::Malformed
    }
}

/// Calls `f(name, argument)` for every directive of one field line, in order.
fn for_each_directive<'a>(bytes: &'a [u8], mut f: impl FnMut(&'a [u8], Arg<'a>)) {
    let mut cursor = Cursor { bytes, pos: 0 };
    loop {
        cursor.take_while(|b| b == b',' || is_ows(b));
        if cursor.peek().is_none() {
            return;
        }
        let name = cursor.take_while(is_tchar);
        if name.is_empty() {
            cursor.skip_to_separator();
            continue;
        }
        let arg = match cursor.peek() {
            None | Some(b',') => Arg::None,
            Some(b'=') => {
                cursor.pos += 1;
                if cursor.peek() == Some(b'"') {
                    cursor.quoted()
                } else {
                    let token = cursor.take_while(is_tchar);
                    cursor.finish(Arg::Token(token))
                }
            }
            Some(b) if is_ows(b) => cursor.finish(Arg::None),
            Some(_) => {
                cursor.skip_to_separator();
                Arg::Malformed
            }
        };
        f(name, arg);
    }
}

// ---------------------------------------------------------------------------------------------
// Age, hop-by-hop fields, Vary
// ---------------------------------------------------------------------------------------------

/// The value of the `Age` header: the first member of the first field line, in seconds,
/// saturated at [`DELTA_SECONDS_CAP`]. `None` when absent or not a non-negative integer.
pub fn parse_age(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::AGE)?;
    let bytes = value.as_bytes();
    let first = trim_ows(bytes.split(|&b| b == b',').next().unwrap_or(bytes));
    if first.is_empty() || !first.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        first
            .parse_u64()
            .map_or(DELTA_SECONDS_CAP, |age| age.min(DELTA_SECONDS_CAP)),
    )
}

/// Whether a response header must not be stored because it is hop-by-hop (RFC 9111 §3.1):
/// `Connection` and every field it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`, `Proxy-Authentication-Info` and
/// `Proxy-Authorization`. `headers` are the response's headers, read for `Connection`.
pub fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    const FIXED: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authentication-info",
        "proxy-authorization",
    ];
    FIXED.contains(&name.as_str()) || has_token(headers, &header::CONNECTION, name.as_str())
}

/// The request fields a response varies on (see [`vary_list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaryList {
    /// `Vary: *`, or a `Vary` that cannot be honoured: never store.
    Star,
    /// The field names, lower-cased, without duplicates, in order of first appearance.
    Fields(Vec<HeaderName>),
}

/// The `Vary` field names of a response.
///
/// All field lines are read and split at commas; empty members are skipped. The result is
/// [`VaryList::Star`] for a `*` member, for a member that is not a valid field name, and for more
/// than [`MAX_VARY_FIELDS`] distinct names. When the response has a `Content-Encoding` other than
/// `identity` and `Accept-Encoding` is not listed, `accept-encoding` is added at the end, so a
/// client is never served an encoding it did not accept.
pub fn vary_list(headers: &HeaderMap) -> VaryList {
    let mut fields: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::VARY) {
        for member in value.as_bytes().split(|&b| b == b',') {
            let member = trim_ows(member);
            if member.is_empty() {
                continue;
            }
            if member == b"*" {
                return VaryList::Star;
            }
            let Ok(name) = HeaderName::from_bytes(member) else {
                return VaryList::Star;
            };
            if !fields.contains(&name) {
                if fields.len() >= MAX_VARY_FIELDS {
                    return VaryList::Star;
                }
                fields.push(name);
            }
        }
    }
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|value| {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .map(trim_ows)
                .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"))
        });
    if encoded && !fields.contains(&header::ACCEPT_ENCODING) {
        if fields.len() >= MAX_VARY_FIELDS {
            return VaryList::Star;
        }
        fields.push(header::ACCEPT_ENCODING);
    }
    VaryList::Fields(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    // ---- helpers ---------------------------------------------------------------------------

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn http_date(offset_secs: i64) -> String {
        let time = if offset_secs >= 0 {
            t0() + Duration::from_secs(offset_secs.unsigned_abs())
        } else {
            t0() - Duration::from_secs(offset_secs.unsigned_abs())
        };
        httpdate::fmt_http_date(time)
    }

    const TEN_YEARS: i64 = 10 * 365 * 24 * 60 * 60;

    fn steady() -> Policy {
        Policy::default().jitter(0.0)
    }

    fn store_with(
        policy: &Policy,
        info: &RequestInfo,
        status: u16,
        map: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<Freshness, NotStorable> {
        policy.storability(
            info,
            StatusCode::from_u16(status).unwrap(),
            map,
            extensions,
            t0(),
            t0(),
        )
    }

    fn store(
        policy: &Policy,
        status: u16,
        pairs: &[(&str, &str)],
    ) -> Result<Freshness, NotStorable> {
        store_with(
            policy,
            &RequestInfo::default(),
            status,
            &headers(pairs),
            &Extensions::new(),
        )
    }

    fn ttl(result: Result<Freshness, NotStorable>) -> u64 {
        result
            .expect("expected the response to be stored")
            .ttl
            .as_secs()
    }

    fn decide(
        policy: &Policy,
        method: Method,
        path: &str,
        pairs: &[(&str, &str)],
    ) -> RequestDecision {
        policy.classify(&method, path, &headers(pairs))
    }

    fn bypass(policy: &Policy, pairs: &[(&str, &str)]) -> Option<BypassReason> {
        match decide(policy, Method::GET, "/", pairs) {
            RequestDecision::Bypass(reason) => Some(reason),
            RequestDecision::Cache(_) => None,
        }
    }

    fn info_for(policy: &Policy, path: &str, pairs: &[(&str, &str)]) -> RequestInfo {
        match decide(policy, Method::GET, path, pairs) {
            RequestDecision::Cache(info) => info,
            RequestDecision::Bypass(reason) => panic!("unexpected bypass: {reason}"),
        }
    }

    fn with_ext<T: Clone + Send + Sync + 'static>(value: T) -> Extensions {
        let mut extensions = Extensions::new();
        extensions.insert(value);
        extensions
    }

    // ---- routes ----------------------------------------------------------------------------

    #[test]
    fn an_exact_route_matches_only_the_same_path() {
        let route = Route::exact("/a");
        assert!(route.matches("/a"));
        assert!(route.matches("/a?x=1"));
        for other in ["/a/", "/A", "/ab", "/", "a"] {
            assert!(!route.matches(other), "{other}");
        }
    }

    #[test]
    fn a_prefix_route_is_segment_aware() {
        let route = Route::prefix("/api");
        for path in ["/api", "/api/", "/api/x", "/api/x/y?z"] {
            assert!(route.matches(path), "{path}");
        }
        for path in ["/apix", "/ap", "/API", "/", "/x/api"] {
            assert!(!route.matches(path), "{path}");
        }
    }

    #[test]
    fn a_prefix_ending_in_a_slash_matches_everything_under_it_but_not_itself_without_slash() {
        let route = Route::prefix("/static/");
        assert!(route.matches("/static/"));
        assert!(route.matches("/static/a.css"));
        assert!(!route.matches("/static"));
        assert!(!route.matches("/staticx/a"));
        assert!(Route::prefix("/").matches("/anything/at/all"));
        assert!(Route::prefix("").matches("/anything"));
    }

    #[test]
    fn a_template_parameter_matches_exactly_one_non_empty_segment() {
        let route = Route::template("/users/{id}/posts/{post}");
        assert!(route.matches("/users/1/posts/2"));
        assert!(route.matches("/users/1/posts/2?page=3"));
        for path in [
            "/users//posts/2",
            "/users/1/posts",
            "/users/1/posts/",
            "/users/1/posts/2/",
            "/users/1/posts/2/x",
            "/users/1/2/posts/3",
            "users/1/posts/2",
            "",
        ] {
            assert!(!route.matches(path), "{path}");
        }
    }

    #[test]
    fn a_template_catch_all_matches_one_or_more_segments() {
        let route = Route::template("/files/{*rest}");
        for path in ["/files/a", "/files/a/b/c", "/files/a/"] {
            assert!(route.matches(path), "{path}");
        }
        for path in ["/files", "/files/", "/files//", "/other/a"] {
            assert!(!route.matches(path), "{path}");
        }
    }

    #[test]
    fn a_root_template_matches_only_the_root() {
        let route = Route::template("/");
        assert!(route.matches("/"));
        assert!(!route.matches("/a"));
    }

    #[test]
    fn malformed_templates_are_reported_with_pattern_and_reason() {
        for pattern in [
            "users/{id}",
            "/users/{id",
            "/users/id}",
            "/users/{}",
            "/users/{*}",
            "/users/{*rest}/x",
            "/users/a{id}",
            "/users/{id}b",
            "/users/{{id}}",
            "/a/{id}/b/{id}",
            "/a/{id}/{*id}",
        ] {
            let error = Route::try_template(pattern).expect_err(pattern);
            assert_eq!(error.pattern(), pattern);
            assert!(!error.reason().is_empty());
            assert!(error.to_string().contains(pattern), "{error}");
        }
        assert!(Route::try_template("/users/{id}/files/{*rest}").is_ok());
    }

    #[test]
    #[should_panic(expected = "invalid route template")]
    fn a_malformed_template_panics_at_construction() {
        let _ = Route::template("/users/{id");
    }

    #[test]
    fn the_first_matching_route_wins() {
        let policy = Policy::default()
            .route(Route::exact("/a").ttl(Duration::from_secs(10)))
            .route(Route::prefix("/").ttl(Duration::from_secs(20)))
            .route(Route::exact("/b").bypass());
        assert_eq!(
            info_for(&policy, "/a", &[]).route_ttl,
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            info_for(&policy, "/b", &[]).route_ttl,
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            policy.route_for("/b").and_then(Route::get_ttl),
            Some(Duration::from_secs(20))
        );
        assert!(Policy::default().route_for("/a").is_none());
    }

    // ---- classify --------------------------------------------------------------------------

    #[test]
    fn only_get_and_head_use_the_cache() {
        let policy = Policy::default();
        for method in [
            "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PURGE",
        ] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(
                decide(&policy, method, "/", &[]),
                RequestDecision::Bypass(BypassReason::Method)
            );
        }
        assert!(matches!(
            decide(&policy, Method::GET, "/", &[]),
            RequestDecision::Cache(_)
        ));
        let RequestDecision::Cache(info) = decide(&policy, Method::HEAD, "/", &[]) else {
            panic!("HEAD is cacheable");
        };
        assert!(info.is_head);
        assert!(!info_for(&policy, "/", &[]).is_head);
    }

    #[test]
    fn a_bypass_route_never_uses_the_cache() {
        let policy = Policy::default().route(Route::prefix("/admin").bypass());
        assert_eq!(
            decide(&policy, Method::GET, "/admin/x", &[]),
            RequestDecision::Bypass(BypassReason::Route)
        );
        assert!(matches!(
            decide(&policy, Method::GET, "/public", &[]),
            RequestDecision::Cache(_)
        ));
    }

    #[test]
    fn upgrade_and_websocket_requests_bypass() {
        let policy = Policy::default();
        for pairs in [
            vec![("upgrade", "websocket")],
            vec![("connection", "keep-alive, Upgrade")],
            vec![("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")],
        ] {
            assert_eq!(
                bypass(&policy, &pairs),
                Some(BypassReason::Upgrade),
                "{pairs:?}"
            );
        }
        assert_eq!(bypass(&policy, &[("connection", "keep-alive")]), None);
    }

    #[test]
    fn range_requests_bypass() {
        assert_eq!(
            bypass(&Policy::default(), &[("range", "bytes=0-10")]),
            Some(BypassReason::Range)
        );
    }

    #[test]
    fn a_fat_get_or_head_bypasses() {
        let policy = Policy::default();
        for pairs in [
            vec![("content-length", "5")],
            vec![("transfer-encoding", "chunked")],
            vec![("transfer-encoding", "identity")],
            vec![("content-length", "abc")],
            vec![("content-length", "")],
            vec![("content-length", "0, 5")],
            vec![("content-length", "0"), ("content-length", "1")],
            vec![("content-length", "-0")],
            vec![("content-length", "99999999999999999999999")],
        ] {
            assert_eq!(
                bypass(&policy, &pairs),
                Some(BypassReason::RequestBody),
                "{pairs:?}"
            );
            let RequestDecision::Bypass(reason) = decide(&policy, Method::HEAD, "/", &pairs) else {
                panic!("fat HEAD must bypass: {pairs:?}");
            };
            assert_eq!(reason, BypassReason::RequestBody);
        }
        assert_eq!(bypass(&policy, &[("content-length", "0")]), None);
        assert_eq!(bypass(&policy, &[("content-length", " 0 , 0")]), None);
    }

    #[test]
    fn every_default_deny_listed_header_bypasses() {
        let policy = Policy::default();
        for name in [
            "X-Forwarded-Host",
            "X-Host",
            "X-Forwarded-Scheme",
            "X-Forwarded-Proto",
            "Forwarded",
            "X-Original-URL",
            "X-Rewrite-URL",
            "X-HTTP-Method-Override",
        ] {
            assert_eq!(
                bypass(&policy, &[(name, "evil")]),
                Some(BypassReason::UnkeyedHeader),
                "{name}"
            );
            assert_eq!(
                bypass(&policy, &[(name, "")]),
                Some(BypassReason::UnkeyedHeader),
                "{name}"
            );
        }
        assert_eq!(policy.get_deny_headers().len(), 8);
    }

    #[test]
    fn the_deny_list_can_be_extended_and_replaced() {
        let custom = HeaderName::from_static("x-tenant");
        let extended = Policy::default()
            .deny_header(custom.clone())
            .deny_header(custom.clone());
        assert_eq!(
            bypass(&extended, &[("x-tenant", "a")]),
            Some(BypassReason::UnkeyedHeader)
        );
        assert_eq!(extended.get_deny_headers().len(), 9);

        let replaced = Policy::default().deny_headers(vec![custom.clone(), custom]);
        assert_eq!(replaced.get_deny_headers().len(), 1);
        assert_eq!(bypass(&replaced, &[("x-forwarded-host", "a")]), None);
        assert_eq!(
            bypass(&replaced, &[("x-tenant", "a")]),
            Some(BypassReason::UnkeyedHeader)
        );
    }

    #[test]
    fn a_request_no_store_bypasses() {
        let policy = Policy::default();
        assert_eq!(
            bypass(&policy, &[("cache-control", "no-store")]),
            Some(BypassReason::RequestNoStore)
        );
        assert_eq!(
            bypass(&policy, &[("cache-control", "max-age=0, NO-STORE")]),
            Some(BypassReason::RequestNoStore)
        );
    }

    #[test]
    fn credentials_bypass_unless_the_route_opts_in() {
        let policy = Policy::default().route(Route::prefix("/shared").allow_authenticated());
        assert_eq!(
            bypass(&policy, &[("authorization", "Bearer x")]),
            Some(BypassReason::Authorization)
        );
        assert_eq!(
            bypass(&policy, &[("proxy-authorization", "Basic x")]),
            Some(BypassReason::Authorization)
        );
        assert_eq!(
            bypass(&policy, &[("cookie", "session=1")]),
            Some(BypassReason::Cookie)
        );
        assert_eq!(
            bypass(&policy, &[("cookie", "")]),
            Some(BypassReason::Cookie)
        );

        assert!(info_for(&policy, "/shared/a", &[("authorization", "Bearer x")]).authenticated);
        assert!(info_for(&policy, "/shared/a", &[("cookie", "s=1")]).authenticated);
        assert!(!info_for(&policy, "/shared/a", &[]).authenticated);
        assert!(!info_for(&policy, "/other", &[]).authenticated);
    }

    #[test]
    fn the_bypass_checks_run_in_the_documented_order() {
        let policy = Policy::default().route(Route::prefix("/off").bypass());
        let all: Vec<(&str, &str)> = vec![
            ("upgrade", "websocket"),
            ("range", "bytes=0-1"),
            ("content-length", "3"),
            ("x-forwarded-host", "evil"),
            ("cache-control", "no-store"),
            ("authorization", "Bearer x"),
            ("cookie", "a=1"),
        ];
        assert_eq!(
            decide(&policy, Method::POST, "/off", &all),
            RequestDecision::Bypass(BypassReason::Method)
        );
        assert_eq!(
            decide(&policy, Method::GET, "/off", &all),
            RequestDecision::Bypass(BypassReason::Route)
        );
        let expected = [
            BypassReason::Upgrade,
            BypassReason::Range,
            BypassReason::RequestBody,
            BypassReason::UnkeyedHeader,
            BypassReason::RequestNoStore,
            BypassReason::Authorization,
            BypassReason::Cookie,
        ];
        for (skip, reason) in expected.iter().enumerate() {
            let rest = all.get(skip..).unwrap();
            assert_eq!(bypass(&policy, rest), Some(*reason), "{rest:?}");
        }
    }

    #[test]
    fn an_opted_in_route_still_honours_the_other_bypass_checks() {
        let policy = Policy::default().route(Route::prefix("/").allow_authenticated());
        assert_eq!(
            bypass(
                &policy,
                &[("authorization", "x"), ("cache-control", "no-store")]
            ),
            Some(BypassReason::RequestNoStore)
        );
        assert_eq!(
            bypass(
                &policy,
                &[("authorization", "x"), ("x-original-url", "/admin")]
            ),
            Some(BypassReason::UnkeyedHeader)
        );
    }

    #[test]
    fn client_no_cache_is_ignored_unless_honoured() {
        let ignoring = Policy::default();
        let honouring = Policy::default().honour_client_no_cache(true);
        for pairs in [
            vec![("cache-control", "no-cache")],
            vec![("cache-control", "max-age=0")],
            vec![("cache-control", "max-age=abc")],
            vec![("pragma", "no-cache")],
        ] {
            assert!(!info_for(&ignoring, "/", &pairs).no_cache, "{pairs:?}");
            assert!(info_for(&honouring, "/", &pairs).no_cache, "{pairs:?}");
        }
        let pragma_with_cc = [("pragma", "no-cache"), ("cache-control", "max-age=10")];
        assert!(!info_for(&honouring, "/", &pragma_with_cc).no_cache);
        assert!(!info_for(&honouring, "/", &[("cache-control", "max-age=5")]).no_cache);
    }

    #[test]
    fn only_if_cached_and_the_route_ttl_are_passed_on() {
        let policy = Policy::default().route(Route::exact("/a").ttl(Duration::from_secs(42)));
        let info = info_for(&policy, "/a", &[("cache-control", "only-if-cached")]);
        assert!(info.only_if_cached);
        assert_eq!(info.route_ttl, Some(Duration::from_secs(42)));
        assert_eq!(info_for(&policy, "/b", &[]), RequestInfo::default());
    }

    #[test]
    fn bypass_reasons_have_stable_distinct_names_and_all_lists_every_one() {
        fn position(reason: BypassReason) -> usize {
            match reason {
                BypassReason::Method => 0,
                BypassReason::Authorization => 1,
                BypassReason::Cookie => 2,
                BypassReason::RequestBody => 3,
                BypassReason::RequestNoStore => 4,
                BypassReason::UnkeyedHeader => 5,
                BypassReason::Route => 6,
                BypassReason::Upgrade => 7,
                BypassReason::Range => 8,
                BypassReason::QuerySeparator => 9,
            }
        }
        let names: HashSet<&str> = BypassReason::ALL.iter().map(BypassReason::as_str).collect();
        assert_eq!(names.len(), BypassReason::ALL.len());
        for (index, reason) in BypassReason::ALL.iter().enumerate() {
            assert_eq!(position(*reason), index);
            assert_eq!(reason.to_string(), reason.as_str());
            assert!(reason
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-'));
        }
        assert_eq!(BypassReason::RequestNoStore.as_str(), "request-no-store");
        assert_eq!(BypassReason::ALL.len(), 10);
    }

    #[test]
    fn not_storable_reasons_have_stable_distinct_names_and_all_lists_every_one() {
        fn position(reason: NotStorable) -> usize {
            match reason {
                NotStorable::Status => 0,
                NotStorable::NoStore => 1,
                NotStorable::Private => 2,
                NotStorable::SetCookie => 3,
                NotStorable::VaryStar => 4,
                NotStorable::NoFreshness => 5,
                NotStorable::NoCacheDirective => 6,
                NotStorable::Authenticated => 7,
                NotStorable::HandlerNoStore => 8,
                NotStorable::TooLarge => 9,
                NotStorable::EventStream => 10,
                NotStorable::Incomplete => 11,
                NotStorable::ContentRange => 12,
                NotStorable::KeyCap => 13,
            }
        }
        let names: HashSet<&str> = NotStorable::ALL.iter().map(NotStorable::as_str).collect();
        assert_eq!(names.len(), NotStorable::ALL.len());
        for (index, reason) in NotStorable::ALL.iter().enumerate() {
            assert_eq!(position(*reason), index);
            assert_eq!(reason.to_string(), reason.as_str());
            assert!(reason
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-'));
        }
        assert_eq!(NotStorable::SetCookie.as_str(), "set-cookie");
        assert_eq!(NotStorable::ALL.len(), 14);
    }

    // ---- settings --------------------------------------------------------------------------

    #[test]
    fn the_defaults_are_as_documented() {
        let policy = Policy::default();
        assert_eq!(policy.get_mode(), Mode::Application);
        assert_eq!(policy.get_default_ttl(), Duration::from_secs(300));
        assert_eq!(
            policy.get_ttl_range(),
            (Duration::from_secs(1), Duration::from_secs(86_400))
        );
        assert!((policy.get_jitter() - 0.10).abs() < f64::EPSILON);
        assert_eq!(
            policy.get_cacheable_statuses(),
            &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501]
        );
        assert!(!policy.get_honour_client_no_cache());
        assert!(!policy.get_heuristic_freshness());
        assert!(policy.get_routes().is_empty());
    }

    #[test]
    fn the_ttl_range_is_swapped_rounded_and_kept_at_least_one_second() {
        let s = Duration::from_secs;
        assert_eq!(
            Policy::default().ttl_range(s(100), s(10)).get_ttl_range(),
            (s(10), s(100))
        );
        assert_eq!(
            Policy::default().ttl_range(s(0), s(0)).get_ttl_range(),
            (s(1), s(1))
        );
        assert_eq!(
            Policy::default()
                .ttl_range(Duration::from_millis(2500), Duration::from_millis(9900))
                .get_ttl_range(),
            (s(2), s(9))
        );
    }

    #[test]
    fn jitter_is_clamped_into_zero_to_one_half() {
        assert!((Policy::default().jitter(0.9).get_jitter() - 0.5).abs() < f64::EPSILON);
        assert_eq!(Policy::default().jitter(-1.0).get_jitter(), 0.0);
        assert_eq!(Policy::default().jitter(f64::NAN).get_jitter(), 0.0);
        assert_eq!(Policy::default().jitter(f64::INFINITY).get_jitter(), 0.5);
    }

    // ---- storability: refusals -------------------------------------------------------------

    #[test]
    fn statuses_off_the_allow_list_are_not_stored() {
        let policy = steady();
        for status in [
            100, 201, 202, 302, 303, 307, 400, 401, 403, 413, 418, 500, 502, 503, 504,
        ] {
            assert_eq!(
                store(&policy, status, &[("cache-control", "max-age=60")]),
                Err(NotStorable::Status),
                "{status}"
            );
        }
        for status in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
            assert!(
                store(&policy, status, &[("cache-control", "max-age=60")]).is_ok(),
                "{status}"
            );
        }
    }

    #[test]
    fn some_statuses_are_refused_even_when_allow_listed() {
        let policy =
            steady().cacheable_statuses(&[200, 206, 428, 429, 431, 511, 500, 503, 501, 101]);
        let cc = [("cache-control", "max-age=60")];
        for status in [428, 429, 431, 511, 500, 503, 101] {
            assert_eq!(
                store(&policy, status, &cc),
                Err(NotStorable::Status),
                "{status}"
            );
        }
        assert_eq!(store(&policy, 206, &cc), Err(NotStorable::ContentRange));
        assert!(store(&policy, 501, &cc).is_ok());
        assert_eq!(
            store(&policy, 404, &cc),
            Err(NotStorable::Status),
            "404 is no longer listed"
        );
        assert!(!policy.is_storable_status(StatusCode::TOO_MANY_REQUESTS));
    }

    #[test]
    fn cpdos_error_responses_are_never_stored() {
        // HHO, HMC: the origin answers the attack with an error that claims to be cacheable.
        let policy = Policy::default();
        for status in [400, 413, 431, 500] {
            assert_eq!(
                store(
                    &policy,
                    status,
                    &[("cache-control", "public, max-age=3600")]
                ),
                Err(NotStorable::Status),
                "{status}"
            );
        }
        // HMO: the override request itself never reaches the store.
        assert_eq!(
            bypass(&policy, &[("x-http-method-override", "DELETE")]),
            Some(BypassReason::UnkeyedHeader)
        );
    }

    #[test]
    fn a_handler_no_store_extension_refuses_first() {
        let result = store_with(
            &steady(),
            &RequestInfo::default(),
            200,
            &headers(&[("cache-control", "public, max-age=60")]),
            &with_ext(NoStore),
        );
        assert_eq!(result, Err(NotStorable::HandlerNoStore));
        let both = store_with(
            &steady(),
            &RequestInfo::default(),
            500,
            &HeaderMap::new(),
            &with_ext(NoStore),
        );
        assert_eq!(both, Err(NotStorable::HandlerNoStore));
    }

    #[test]
    fn partial_responses_are_not_stored() {
        let policy = steady();
        assert_eq!(store(&policy, 206, &[]), Err(NotStorable::ContentRange));
        assert_eq!(
            store(
                &policy,
                200,
                &[
                    ("content-range", "bytes 0-9/100"),
                    ("cache-control", "max-age=60")
                ]
            ),
            Err(NotStorable::ContentRange)
        );
    }

    #[test]
    fn an_event_stream_is_not_stored() {
        for content_type in [
            "text/event-stream",
            "Text/Event-Stream; charset=utf-8",
            " text/event-stream ",
        ] {
            assert_eq!(
                store(
                    &steady(),
                    200,
                    &[
                        ("content-type", content_type),
                        ("cache-control", "max-age=60")
                    ]
                ),
                Err(NotStorable::EventStream),
                "{content_type}"
            );
        }
        assert!(store(&steady(), 200, &[("content-type", "text/html")]).is_ok());
    }

    #[test]
    fn a_no_store_response_is_never_stored() {
        assert_eq!(
            store(&steady(), 200, &[("cache-control", "max-age=60, no-store")]),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            store_with(
                &steady(),
                &RequestInfo::default(),
                200,
                &headers(&[("cache-control", "no-store")]),
                &with_ext(CacheTtl(Duration::from_secs(60)))
            ),
            Err(NotStorable::NoStore),
            "a handler TTL does not override no-store"
        );
    }

    #[test]
    fn a_private_response_is_never_stored_with_or_without_field_names() {
        for cc in [
            "private",
            "PRIVATE, max-age=60",
            "private=\"set-cookie\", max-age=60",
            "private=\"a, b\"",
        ] {
            assert_eq!(
                store(&steady(), 200, &[("cache-control", cc)]),
                Err(NotStorable::Private),
                "{cc}"
            );
        }
    }

    #[test]
    fn a_no_cache_response_is_not_stored_with_or_without_field_names() {
        for cc in [
            "no-cache",
            "max-age=60, no-cache",
            "no-cache=\"set-cookie\"",
            "no-cache=\"a, b\", public",
        ] {
            assert_eq!(
                store(&steady(), 200, &[("cache-control", cc)]),
                Err(NotStorable::NoCacheDirective),
                "{cc}"
            );
        }
    }

    #[test]
    fn a_set_cookie_response_is_never_stored() {
        let pairs = [
            ("set-cookie", "session=abc"),
            ("cache-control", "public, s-maxage=600"),
        ];
        assert_eq!(store(&steady(), 200, &pairs), Err(NotStorable::SetCookie));
        let shared = steady().mode(Mode::Shared);
        assert_eq!(store(&shared, 200, &pairs), Err(NotStorable::SetCookie));
        let handler = store_with(
            &steady(),
            &RequestInfo::default(),
            200,
            &headers(&pairs),
            &with_ext(CacheTtl(Duration::from_secs(60))),
        );
        assert_eq!(handler, Err(NotStorable::SetCookie));
    }

    #[test]
    fn a_vary_star_response_is_never_stored() {
        for vary in ["*", "accept-encoding, *", " * "] {
            assert_eq!(
                store(&steady(), 200, &[("vary", vary)]),
                Err(NotStorable::VaryStar),
                "{vary}"
            );
        }
        assert!(store(&steady(), 200, &[("vary", "accept-encoding")]).is_ok());
    }

    #[test]
    fn the_refusals_are_reported_in_the_documented_order() {
        let mut pairs = vec![
            ("content-range", "bytes 0-1/2"),
            ("content-type", "text/event-stream"),
            ("cache-control", "no-store"),
            ("cache-control", "private"),
            ("cache-control", "no-cache"),
            ("set-cookie", "a=1"),
            ("vary", "*"),
        ];
        let authenticated = RequestInfo {
            authenticated: true,
            ..RequestInfo::default()
        };
        let expected = [
            NotStorable::ContentRange,
            NotStorable::EventStream,
            NotStorable::NoStore,
            NotStorable::Private,
            NotStorable::NoCacheDirective,
            NotStorable::SetCookie,
            NotStorable::VaryStar,
            NotStorable::Authenticated,
        ];
        assert_eq!(
            store_with(
                &steady(),
                &authenticated,
                500,
                &headers(&pairs),
                &Extensions::new()
            ),
            Err(NotStorable::Status)
        );
        for reason in expected {
            assert_eq!(
                store_with(
                    &steady(),
                    &authenticated,
                    200,
                    &headers(&pairs),
                    &Extensions::new()
                ),
                Err(reason),
                "{pairs:?}"
            );
            if !pairs.is_empty() {
                pairs.remove(0);
            }
        }
    }

    // ---- storability: authenticated requests (S5 of the test plan) ---------------------------

    /// Path, request headers, response headers, expected outcome.
    type MatrixRow<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        Vec<(&'a str, &'a str)>,
        Outcome,
    );

    #[derive(Debug, PartialEq)]
    enum Outcome {
        Bypass(BypassReason),
        Refused(NotStorable),
        Stored,
    }

    fn outcome(
        policy: &Policy,
        path: &str,
        request: &[(&str, &str)],
        response: &[(&str, &str)],
    ) -> Outcome {
        match decide(policy, Method::GET, path, request) {
            RequestDecision::Bypass(reason) => Outcome::Bypass(reason),
            RequestDecision::Cache(info) => {
                match store_with(policy, &info, 200, &headers(response), &Extensions::new()) {
                    Ok(_) => Outcome::Stored,
                    Err(reason) => Outcome::Refused(reason),
                }
            }
        }
    }

    #[test]
    fn the_authorization_cookie_private_matrix_matches_the_rules() {
        use BypassReason as B;
        use NotStorable as N;
        use Outcome::{Bypass, Refused, Stored};
        let policy = steady().route(Route::prefix("/shared").allow_authenticated());
        let auth = ("authorization", "Bearer alice");
        let cookie = ("cookie", "session=alice");
        let req_no_store = ("cache-control", "no-store");
        let set_cookie = ("set-cookie", "session=new");
        let cc = |value| ("cache-control", value);
        #[rustfmt::skip]
        let rows: Vec<MatrixRow> = vec![
            ("/p", vec![], vec![], Stored),
            ("/p", vec![], vec![cc("public")], Stored),
            ("/p", vec![], vec![cc("private")], Refused(N::Private)),
            ("/p", vec![], vec![cc("private=\"x\"")], Refused(N::Private)),
            ("/p", vec![], vec![cc("no-store")], Refused(N::NoStore)),
            ("/p", vec![], vec![cc("no-cache")], Refused(N::NoCacheDirective)),
            ("/p", vec![], vec![cc("s-maxage=60")], Stored),
            ("/p", vec![], vec![cc("must-revalidate")], Stored),
            ("/p", vec![], vec![cc("max-age=60")], Stored),
            ("/p", vec![], vec![cc("public"), set_cookie], Refused(N::SetCookie)),
            ("/p", vec![req_no_store], vec![cc("public")], Bypass(B::RequestNoStore)),
            ("/p", vec![auth], vec![cc("public")], Bypass(B::Authorization)),
            ("/p", vec![cookie], vec![cc("s-maxage=60")], Bypass(B::Cookie)),
            ("/p", vec![auth, cookie], vec![cc("public")], Bypass(B::Authorization)),
            ("/p", vec![auth, req_no_store], vec![], Bypass(B::RequestNoStore)),
            ("/shared/a", vec![auth], vec![], Refused(N::Authenticated)),
            ("/shared/a", vec![auth], vec![cc("max-age=60")], Refused(N::Authenticated)),
            ("/shared/a", vec![auth], vec![cc("must-revalidate, max-age=60")], Refused(N::Authenticated)),
            ("/shared/a", vec![auth], vec![cc("public")], Stored),
            ("/shared/a", vec![auth], vec![cc("s-maxage=60")], Stored),
            ("/shared/a", vec![auth], vec![cc("public, private")], Refused(N::Private)),
            ("/shared/a", vec![auth], vec![cc("public"), set_cookie], Refused(N::SetCookie)),
            ("/shared/a", vec![cookie], vec![cc("public, max-age=60")], Stored),
            ("/shared/a", vec![cookie], vec![], Refused(N::Authenticated)),
            ("/shared/a", vec![auth, req_no_store], vec![cc("public")], Bypass(B::RequestNoStore)),
            ("/shared/a", vec![auth], vec![cc("public, no-store")], Refused(N::NoStore)),
            ("/shared/a", vec![cookie], vec![cc("public, no-cache")], Refused(N::NoCacheDirective)),
            ("/shared/a", vec![auth], vec![cc("private=\"x\", s-maxage=60")], Refused(N::Private)),
            ("/shared/a", vec![], vec![], Stored),
        ];
        assert!(rows.len() >= 24);
        for (path, request, response, expected) in rows {
            let got = outcome(&policy, path, &request, &response);
            assert_eq!(
                got, expected,
                "path {path}, request {request:?}, response {response:?}"
            );
        }
    }

    #[test]
    fn no_combination_of_credentials_and_directives_stores_a_set_cookie_response() {
        let policy = steady().route(Route::prefix("/shared").allow_authenticated());
        let directives = [
            "",
            "public",
            "private",
            "private=\"x\"",
            "no-store",
            "no-cache",
            "s-maxage=60",
            "must-revalidate",
            "max-age=60",
        ];
        for path in ["/p", "/shared/a"] {
            for auth in [false, true] {
                for cookie in [false, true] {
                    for no_store in [false, true] {
                        for directive in directives {
                            let mut request = vec![];
                            if auth {
                                request.push(("authorization", "Bearer x"));
                            }
                            if cookie {
                                request.push(("cookie", "a=1"));
                            }
                            if no_store {
                                request.push(("cache-control", "no-store"));
                            }
                            let mut response = vec![("set-cookie", "s=1")];
                            if !directive.is_empty() {
                                response.push(("cache-control", directive));
                            }
                            let got = outcome(&policy, path, &request, &response);
                            assert!(
                                !matches!(got, Outcome::Stored),
                                "{path} {request:?} {response:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    // ---- storability: lifetimes ------------------------------------------------------------

    #[test]
    fn a_handler_ttl_outranks_every_header() {
        let map = headers(&[
            ("cache-control", "s-maxage=10, max-age=20"),
            ("expires", &http_date(30)),
        ]);
        let info = RequestInfo {
            route_ttl: Some(Duration::from_secs(40)),
            ..RequestInfo::default()
        };
        let result = store_with(
            &steady(),
            &info,
            200,
            &map,
            &with_ext(CacheTtl(Duration::from_secs(77))),
        );
        assert_eq!(ttl(result), 77);
        let shared = store_with(
            &steady().mode(Mode::Shared),
            &RequestInfo::default(),
            200,
            &HeaderMap::new(),
            &with_ext(CacheTtl(Duration::from_secs(77))),
        );
        assert_eq!(ttl(shared), 77, "the extension also works in shared mode");
    }

    #[test]
    fn a_zero_or_sub_second_handler_ttl_is_not_stored() {
        for handler in [Duration::ZERO, Duration::from_millis(999)] {
            let result = store_with(
                &steady(),
                &RequestInfo::default(),
                200,
                &headers(&[("cache-control", "max-age=60")]),
                &with_ext(CacheTtl(handler)),
            );
            assert_eq!(result, Err(NotStorable::NoFreshness), "{handler:?}");
        }
    }

    #[test]
    fn s_maxage_outranks_max_age_and_expires() {
        let expires = http_date(30);
        let pairs = [
            ("cache-control", "max-age=20, s-maxage=10"),
            ("expires", expires.as_str()),
        ];
        assert_eq!(ttl(store(&steady(), 200, &pairs)), 10);
        assert_eq!(ttl(store(&steady().mode(Mode::Shared), 200, &pairs)), 10);
    }

    #[test]
    fn max_age_outranks_expires() {
        let expires = http_date(30);
        assert_eq!(
            ttl(store(
                &steady(),
                200,
                &[("cache-control", "max-age=20"), ("expires", &expires)]
            )),
            20
        );
        assert_eq!(
            ttl(store(
                &steady(),
                200,
                &[("cache-control", "max-age=20"), ("expires", "0")]
            )),
            20
        );
    }

    #[test]
    fn expires_minus_date_outranks_route_and_default_ttls() {
        let date = http_date(0);
        let expires = http_date(30);
        let info = RequestInfo {
            route_ttl: Some(Duration::from_secs(40)),
            ..RequestInfo::default()
        };
        let map = headers(&[("date", &date), ("expires", &expires)]);
        assert_eq!(
            ttl(store_with(&steady(), &info, 200, &map, &Extensions::new())),
            30
        );
    }

    #[test]
    fn expires_is_measured_from_the_response_time_without_a_usable_date() {
        let expires = http_date(45);
        assert_eq!(ttl(store(&steady(), 200, &[("expires", &expires)])), 45);
        assert_eq!(
            ttl(store(
                &steady(),
                200,
                &[("expires", &expires), ("date", "yesterday")]
            )),
            45
        );
    }

    #[test]
    fn the_route_ttl_outranks_the_default_ttl_in_application_mode() {
        let info = RequestInfo {
            route_ttl: Some(Duration::from_secs(40)),
            ..RequestInfo::default()
        };
        assert_eq!(
            ttl(store_with(
                &steady(),
                &info,
                200,
                &HeaderMap::new(),
                &Extensions::new()
            )),
            40
        );
        assert_eq!(ttl(store(&steady(), 200, &[])), 300);
        assert_eq!(
            ttl(store(
                &steady().default_ttl(Duration::from_secs(12)),
                200,
                &[]
            )),
            12
        );
        assert_eq!(
            ttl(store(&steady(), 200, &[("cache-control", "public")])),
            300
        );
    }

    #[test]
    fn a_zero_route_or_default_ttl_means_do_not_store() {
        let info = RequestInfo {
            route_ttl: Some(Duration::ZERO),
            ..RequestInfo::default()
        };
        assert_eq!(
            store_with(&steady(), &info, 200, &HeaderMap::new(), &Extensions::new()),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            store(&steady().default_ttl(Duration::ZERO), 200, &[]),
            Err(NotStorable::NoFreshness)
        );
    }

    #[test]
    fn shared_mode_stores_nothing_without_explicit_freshness() {
        let shared = steady().mode(Mode::Shared);
        let info = RequestInfo {
            route_ttl: Some(Duration::from_secs(40)),
            ..RequestInfo::default()
        };
        let last_modified = http_date(-100_000);
        let silent = headers(&[("last-modified", &last_modified)]);
        assert_eq!(
            store_with(&shared, &info, 200, &silent, &Extensions::new()),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            store(&shared, 200, &[("cache-control", "public")]),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            ttl(store(&shared, 200, &[("cache-control", "max-age=60")])),
            60
        );
    }

    #[test]
    fn shared_mode_heuristics_use_ten_percent_of_the_last_modified_age_capped_at_a_day() {
        let shared = steady().mode(Mode::Shared).heuristic_freshness(true);
        let date = http_date(0);
        let modified_1000s_ago = http_date(-1000);
        let modified_long_ago = http_date(-TEN_YEARS);
        let modified_later = http_date(100);
        assert_eq!(
            ttl(store(
                &shared,
                200,
                &[("date", &date), ("last-modified", &modified_1000s_ago)]
            )),
            100
        );
        assert_eq!(
            ttl(store(
                &shared,
                200,
                &[("last-modified", &modified_1000s_ago)]
            )),
            100
        );
        assert_eq!(
            ttl(store(
                &shared,
                200,
                &[("date", &date), ("last-modified", &modified_long_ago)]
            )),
            86_400
        );
        assert_eq!(
            store(
                &shared,
                200,
                &[("date", &date), ("last-modified", &modified_later)]
            ),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            store(&shared, 200, &[("date", &date)]),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            store(&shared, 200, &[("last-modified", "garbage")]),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            store(&shared, 200, &[("last-modified", &http_date(-5))]),
            Err(NotStorable::NoFreshness),
            "10 % of 5 s rounds down to nothing"
        );
    }

    #[test]
    fn heuristics_apply_only_to_heuristically_cacheable_statuses_or_public() {
        let shared = steady()
            .mode(Mode::Shared)
            .heuristic_freshness(true)
            .cacheable_statuses(&[200, 302]);
        let modified = http_date(-1000);
        assert_eq!(
            store(&shared, 302, &[("last-modified", &modified)]),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            ttl(store(
                &shared,
                302,
                &[("last-modified", &modified), ("cache-control", "public")]
            )),
            100
        );
    }

    #[test]
    fn invalid_freshness_directives_mean_already_stale() {
        for cc in [
            "max-age=abc",
            "max-age=-1",
            "max-age",
            "max-age=",
            "s-maxage=x, max-age=60",
            "max-age=0",
        ] {
            assert_eq!(
                store(&steady(), 200, &[("cache-control", cc)]),
                Err(NotStorable::NoFreshness),
                "{cc}"
            );
        }
        for expires in [
            "0",
            "-1",
            "garbage",
            "Tue, 14 Nov 2023 22:13:20 +0000",
            "Tue, 14 Nov 2023 22:13:20 PST",
        ] {
            assert_eq!(
                store(&steady(), 200, &[("expires", expires)]),
                Err(NotStorable::NoFreshness),
                "{expires}"
            );
        }
    }

    #[test]
    fn the_age_of_the_response_is_subtracted_from_its_lifetime() {
        let result = store(
            &steady(),
            200,
            &[("cache-control", "max-age=300"), ("age", "100")],
        );
        let freshness = result.unwrap();
        assert_eq!(freshness.ttl, Duration::from_secs(200));
        assert_eq!(freshness.initial_age, Duration::from_secs(100));
        assert_eq!(
            store(
                &steady(),
                200,
                &[("cache-control", "max-age=60"), ("age", "60")]
            ),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            ttl(store(&steady(), 200, &[("age", "100")])),
            200,
            "default TTLs age too"
        );
    }

    #[test]
    fn the_initial_age_is_the_larger_of_apparent_and_corrected_age() {
        let policy = steady();
        let map = headers(&[
            ("cache-control", "max-age=300"),
            ("date", &http_date(-50)),
            ("age", "5"),
        ]);
        let request_time = t0() - Duration::from_secs(10);
        let apparent = policy
            .storability(
                &RequestInfo::default(),
                StatusCode::OK,
                &map,
                &Extensions::new(),
                request_time,
                t0(),
            )
            .unwrap();
        assert_eq!(apparent.initial_age, Duration::from_secs(50));
        assert_eq!(apparent.ttl, Duration::from_secs(250));

        let map = headers(&[
            ("cache-control", "max-age=300"),
            ("date", &http_date(-1)),
            ("age", "5"),
        ]);
        let corrected = policy
            .storability(
                &RequestInfo::default(),
                StatusCode::OK,
                &map,
                &Extensions::new(),
                request_time,
                t0(),
            )
            .unwrap();
        assert_eq!(
            corrected.initial_age,
            Duration::from_secs(15),
            "Age plus the 10 s response delay"
        );

        let backwards = policy
            .storability(
                &RequestInfo::default(),
                StatusCode::OK,
                &headers(&[("cache-control", "max-age=300")]),
                &Extensions::new(),
                t0() + Duration::from_secs(99),
                t0(),
            )
            .unwrap();
        assert_eq!(
            backwards.initial_age,
            Duration::ZERO,
            "a clock going backwards adds no age"
        );
    }

    #[test]
    fn ttls_are_clamped_into_the_configured_range() {
        assert_eq!(
            ttl(store(
                &steady(),
                200,
                &[("cache-control", "max-age=31536000")]
            )),
            86_400
        );
        let narrow = steady().ttl_range(Duration::from_secs(10), Duration::from_secs(100));
        assert_eq!(
            ttl(store(&narrow, 200, &[("cache-control", "max-age=3")])),
            10
        );
        assert_eq!(
            ttl(store(&narrow, 200, &[("cache-control", "max-age=1000")])),
            100
        );
        assert_eq!(ttl(store(&narrow, 200, &[])), 100);
    }

    #[test]
    fn policy_chosen_ttls_are_jittered_within_plus_or_minus_the_fraction() {
        let policy = Policy::default();
        let mut seen = HashSet::new();
        for _ in 0..500 {
            let freshness = store(&policy, 200, &[]).unwrap();
            let secs = freshness.ttl.as_secs();
            assert!((270..=330).contains(&secs), "{secs}");
            assert_eq!(freshness.ttl.subsec_nanos(), 0);
            seen.insert(secs);
        }
        assert!(seen.len() > 1, "jitter spreads the TTLs");
    }

    #[test]
    fn response_stated_ttls_are_jittered_only_downwards() {
        let policy = Policy::default().jitter(0.5);
        for _ in 0..500 {
            let secs = ttl(store(&policy, 200, &[("cache-control", "max-age=100")]));
            assert!((50..=100).contains(&secs), "{secs}");
        }
    }

    #[test]
    fn jitter_never_leaves_the_ttl_range() {
        let policy = Policy::default()
            .jitter(0.5)
            .ttl_range(Duration::from_secs(90), Duration::from_secs(110));
        for _ in 0..500 {
            let secs = ttl(store(&policy, 200, &[("cache-control", "max-age=100")]));
            assert!((90..=110).contains(&secs), "{secs}");
            let secs = ttl(store(&policy, 200, &[]));
            assert!((90..=110).contains(&secs), "{secs}");
        }
        let tiny = Policy::default().jitter(0.5);
        for _ in 0..200 {
            assert_eq!(ttl(store(&tiny, 200, &[("cache-control", "max-age=1")])), 1);
        }
    }

    #[test]
    fn stale_windows_come_from_the_response() {
        let freshness = store(
            &steady(),
            200,
            &[(
                "cache-control",
                "max-age=60, stale-while-revalidate=30, stale-if-error=100",
            )],
        )
        .unwrap();
        assert_eq!(freshness.stale_while_revalidate, Duration::from_secs(30));
        assert_eq!(freshness.stale_if_error, Duration::from_secs(100));
        let none = store(&steady(), 200, &[("cache-control", "max-age=60")]).unwrap();
        assert_eq!(none.stale_while_revalidate, Duration::ZERO);
        assert_eq!(none.stale_if_error, Duration::ZERO);
    }

    #[test]
    fn revalidation_directives_and_s_maxage_switch_off_serving_stale() {
        for cc in [
            "max-age=60, must-revalidate, stale-while-revalidate=30, stale-if-error=30",
            "max-age=60, proxy-revalidate, stale-while-revalidate=30, stale-if-error=30",
            "s-maxage=60, stale-while-revalidate=30, stale-if-error=30",
        ] {
            let freshness = store(&steady(), 200, &[("cache-control", cc)]).unwrap();
            assert_eq!(freshness.stale_while_revalidate, Duration::ZERO, "{cc}");
            assert_eq!(freshness.stale_if_error, Duration::ZERO, "{cc}");
        }
    }

    #[test]
    fn invalid_or_huge_stale_windows_are_zero_or_capped() {
        let freshness = store(
            &steady(),
            200,
            &[(
                "cache-control",
                "max-age=60, stale-while-revalidate=abc, stale-if-error=99999999999",
            )],
        )
        .unwrap();
        assert_eq!(freshness.stale_while_revalidate, Duration::ZERO);
        assert_eq!(freshness.stale_if_error, Duration::from_secs(86_400));
    }

    // ---- hostile response headers (B4 of the test plan) ---------------------------------

    /// Name, status, response headers, expected outcome.
    type HostileRow<'a> = (&'a str, u16, Vec<(&'a str, Vec<u8>)>, Expect);

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Expect {
        Ttl(u64),
        Refused(NotStorable),
    }

    #[test]
    fn hostile_cache_headers_get_their_rfc_outcome() {
        use Expect::{Refused, Ttl};
        use NotStorable::*;
        let date_now = http_date(0);
        let in_2_minutes = http_date(120);
        let past = http_date(-120);
        let ten_years_ago = http_date(-TEN_YEARS);
        let in_ten_years = http_date(TEN_YEARS);
        let five_hundred_names = (0..500)
            .map(|i| format!("x-h{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let cc = |value: &'static str| ("cache-control", value.as_bytes().to_vec());
        let hv = |name: &'static str, value: &str| (name, value.as_bytes().to_vec());

        #[rustfmt::skip]
        let rows: Vec<HostileRow> = vec![
            ("plain max-age", 200, vec![cc("max-age=60")], Ttl(60)),
            ("duplicate max-age: most restrictive", 200, vec![cc("max-age=60, max-age=10")], Ttl(10)),
            ("duplicate max-age across lines", 200, vec![cc("max-age=10"), cc("max-age=60")], Ttl(10)),
            ("duplicate with an invalid value", 200, vec![cc("max-age=10, max-age=abc")], Refused(NoFreshness)),
            ("negative max-age", 200, vec![cc("max-age=-1")], Refused(NoFreshness)),
            ("exponent max-age", 200, vec![cc("max-age=1e30")], Refused(NoFreshness)),
            ("fractional max-age", 200, vec![cc("max-age=1.5")], Refused(NoFreshness)),
            ("enormous max-age saturates then clamps", 200, vec![cc("max-age=99999999999999999999999999")], Ttl(86_400)),
            ("quoted s-maxage", 200, vec![cc("s-maxage=\"30\"")], Ttl(30)),
            ("quoted s-maxage beats max-age", 200, vec![cc("s-maxage=\"30\", max-age=600")], Ttl(30)),
            ("zero s-maxage beats max-age", 200, vec![cc("max-age=600, s-maxage=0")], Refused(NoFreshness)),
            ("invalid s-maxage is stale", 200, vec![cc("s-maxage=x, max-age=600")], Refused(NoFreshness)),
            ("quoted value with a space", 200, vec![cc("max-age=\" 10\"")], Refused(NoFreshness)),
            ("unterminated quote", 200, vec![cc("max-age=\"60")], Refused(NoFreshness)),
            ("space before equals", 200, vec![cc("max-age =60")], Refused(NoFreshness)),
            ("junk after the value", 200, vec![cc("max-age=60 junk")], Refused(NoFreshness)),
            ("upper-case directive", 200, vec![cc("MAX-AGE=20")], Ttl(20)),
            ("max-age=0", 200, vec![cc("max-age=0")], Refused(NoFreshness)),
            ("obs-text garbage beside max-age", 200, vec![("cache-control", b"max-age=60, \xff\xfe=\x80".to_vec())], Ttl(60)),
            ("obs-text inside the name", 200, vec![("cache-control", b"max-age\xff=60".to_vec())], Refused(NoFreshness)),
            ("Expires: 0", 200, vec![hv("expires", "0")], Refused(NoFreshness)),
            ("Expires garbage", 200, vec![hv("expires", "next tuesday")], Refused(NoFreshness)),
            ("Expires not in GMT", 200, vec![hv("expires", "Tue, 14 Nov 2023 22:15:20 +0000")], Refused(NoFreshness)),
            ("Expires twice", 200, vec![hv("expires", &in_2_minutes), hv("expires", &in_2_minutes)], Refused(NoFreshness)),
            ("Expires in the past", 200, vec![hv("date", &date_now), hv("expires", &past)], Refused(NoFreshness)),
            ("Expires minus Date", 200, vec![hv("date", &date_now), hv("expires", &in_2_minutes)], Ttl(120)),
            ("Expires without Date", 200, vec![hv("expires", &in_2_minutes)], Ttl(120)),
            ("Expires year 9999", 200, vec![hv("expires", "Fri, 31 Dec 9999 23:59:59 GMT")], Ttl(86_400)),
            ("max-age beats Expires", 200, vec![cc("max-age=30"), hv("expires", &in_2_minutes)], Ttl(30)),
            ("invalid Expires ignored beside max-age", 200, vec![cc("max-age=30"), hv("expires", "0")], Ttl(30)),
            ("Date ten years ago", 200, vec![cc("max-age=60"), hv("date", &ten_years_ago)], Refused(NoFreshness)),
            ("Date ten years ahead", 200, vec![cc("max-age=60"), hv("date", &in_ten_years)], Ttl(60)),
            ("Date ahead makes Expires negative", 200, vec![hv("date", &in_ten_years), hv("expires", &in_2_minutes)], Refused(NoFreshness)),
            ("Date garbage", 200, vec![cc("max-age=60"), hv("date", "garbage")], Ttl(60)),
            ("Age abc is ignored", 200, vec![cc("max-age=60"), hv("age", "abc")], Ttl(60)),
            ("Age list uses the first member", 200, vec![cc("max-age=60"), hv("age", "1, 2")], Ttl(59)),
            ("Age 2^63", 200, vec![cc("max-age=60"), hv("age", "9223372036854775808")], Refused(NoFreshness)),
            ("Age beyond u64", 200, vec![cc("max-age=60"), hv("age", "99999999999999999999999")], Refused(NoFreshness)),
            ("Age negative is ignored", 200, vec![cc("max-age=60"), hv("age", "-5")], Ttl(60)),
            ("Vary with 500 names", 200, vec![cc("max-age=60"), hv("vary", &five_hundred_names)], Refused(VaryStar)),
            ("Vary star", 200, vec![cc("max-age=60"), hv("vary", "*")], Refused(VaryStar)),
            ("Vary star in a list", 200, vec![cc("max-age=60"), hv("vary", "accept, *")], Refused(VaryStar)),
            ("Vary with an invalid name", 200, vec![cc("max-age=60"), hv("vary", "a b")], Refused(VaryStar)),
            ("no-store beside max-age", 200, vec![cc("max-age=60, no-store")], Refused(NoStore)),
            ("qualified private", 200, vec![cc("private=\"set-cookie\", max-age=60")], Refused(Private)),
            ("qualified no-cache with a quoted comma", 200, vec![cc("max-age=60, no-cache=\"a, b\"")], Refused(NoCacheDirective)),
            ("public alone has no freshness", 200, vec![cc("public")], Refused(NoFreshness)),
            ("silent response", 200, vec![], Refused(NoFreshness)),
            ("431 claiming freshness", 431, vec![cc("max-age=3600")], Refused(Status)),
            ("500 claiming freshness", 500, vec![cc("max-age=3600")], Refused(Status)),
            ("400 claiming freshness", 400, vec![cc("max-age=3600")], Refused(Status)),
            ("206", 206, vec![cc("max-age=3600")], Refused(ContentRange)),
            ("Set-Cookie with public", 200, vec![cc("public, max-age=60"), hv("set-cookie", "a=1")], Refused(SetCookie)),
            ("event stream", 200, vec![cc("max-age=60"), hv("content-type", "text/event-stream")], Refused(EventStream)),
            ("unknown stale window value", 200, vec![cc("max-age=60, stale-while-revalidate=abc")], Ttl(60)),
            ("unknown directives ignored", 200, vec![cc("foo, bar=\"baz,qux\", max-age=60, x=")], Ttl(60)),
        ];
        assert!(rows.len() >= 30);
        let policy = steady().mode(Mode::Shared);
        let (min, max) = policy.get_ttl_range();
        for (name, status, pairs, expected) in rows {
            let mut map = HeaderMap::new();
            for (header, value) in &pairs {
                map.append(*header, HeaderValue::from_bytes(value).unwrap());
            }
            let result = store_with(
                &policy,
                &RequestInfo::default(),
                status,
                &map,
                &Extensions::new(),
            );
            let got = match result {
                Ok(freshness) => {
                    assert!(freshness.ttl >= min && freshness.ttl <= max, "{name}");
                    Ttl(freshness.ttl.as_secs())
                }
                Err(reason) => Refused(reason),
            };
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn application_mode_falls_back_to_the_default_only_when_the_response_is_silent() {
        let policy = steady();
        assert_eq!(
            ttl(store(&policy, 200, &[("cache-control", "public")])),
            300
        );
        assert_eq!(
            ttl(store(&policy, 200, &[("cache-control", "must-revalidate")])),
            300
        );
        assert_eq!(
            store(&policy, 200, &[("expires", "0")]),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            store(&policy, 200, &[("cache-control", "max-age=0")]),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(ttl(store(&policy, 404, &[])), 300);
    }

    // ---- Cache-Control parsing -------------------------------------------------------------

    fn cc(lines: &[&str]) -> CacheControl {
        let pairs: Vec<(&str, &str)> = lines.iter().map(|line| ("cache-control", *line)).collect();
        CacheControl::parse(&headers(&pairs))
    }

    #[test]
    fn cache_control_reads_every_flag_and_value() {
        let parsed = cc(&[
            "no-store, no-cache, private, public, must-revalidate, proxy-revalidate, only-if-cached",
            "max-age=1, s-maxage=2, stale-while-revalidate=3, stale-if-error=4",
        ]);
        assert_eq!(
            parsed,
            CacheControl {
                no_store: true,
                no_cache: true,
                private: true,
                public: true,
                must_revalidate: true,
                proxy_revalidate: true,
                only_if_cached: true,
                max_age: Some(Directive::Seconds(1)),
                s_maxage: Some(Directive::Seconds(2)),
                stale_while_revalidate: Some(Directive::Seconds(3)),
                stale_if_error: Some(Directive::Seconds(4)),
            }
        );
        assert_eq!(cc(&[]), CacheControl::default());
    }

    #[test]
    fn cache_control_names_are_case_insensitive_and_unknown_ones_ignored() {
        let parsed = cc(&["No-Store, MAX-AGE=5, x-unknown=1, community=\"UCI\""]);
        assert!(parsed.no_store);
        assert_eq!(parsed.max_age, Some(Directive::Seconds(5)));
        assert!(!parsed.public && !parsed.private);
    }

    #[test]
    fn a_comma_inside_quotes_does_not_split_directives() {
        let parsed = cc(&["private=\"set-cookie, max-age\", s-maxage=7"]);
        assert!(parsed.private);
        assert_eq!(parsed.max_age, None);
        assert_eq!(parsed.s_maxage, Some(Directive::Seconds(7)));
        let escaped = cc(&["no-cache=\"a\\\", max-age=1\", s-maxage=8"]);
        assert!(escaped.no_cache);
        assert_eq!(escaped.max_age, None);
        assert_eq!(escaped.s_maxage, Some(Directive::Seconds(8)));
    }

    #[test]
    fn quoted_numbers_are_accepted() {
        assert_eq!(
            cc(&["max-age=\"10\""]).max_age,
            Some(Directive::Seconds(10))
        );
        assert_eq!(
            cc(&["max-age=\"1\\0\""]).max_age,
            Some(Directive::Seconds(10))
        );
        assert_eq!(cc(&["max-age=\"\""]).max_age, Some(Directive::Invalid));
    }

    #[test]
    fn repeated_values_take_the_most_restrictive() {
        assert_eq!(
            cc(&["max-age=60, max-age=10"]).max_age,
            Some(Directive::Seconds(10))
        );
        assert_eq!(
            cc(&["max-age=10, max-age=60"]).max_age,
            Some(Directive::Seconds(10))
        );
        assert_eq!(
            cc(&["max-age=10", "max-age=5"]).max_age,
            Some(Directive::Seconds(5))
        );
        assert_eq!(
            cc(&["max-age=10, max-age=x"]).max_age,
            Some(Directive::Invalid)
        );
        assert_eq!(
            cc(&["max-age=x, max-age=10"]).max_age,
            Some(Directive::Invalid)
        );
        assert_eq!(
            cc(&["stale-if-error=100, stale-if-error=20"]).stale_if_error,
            Some(Directive::Seconds(20))
        );
    }

    #[test]
    fn malformed_values_are_invalid() {
        for line in [
            "max-age",
            "max-age=",
            "max-age=-1",
            "max-age=+1",
            "max-age=1e30",
            "max-age=1.0",
            "max-age =1",
            "max-age= 1",
            "max-age=1 2",
            "max-age=\"1",
            "max-age;x=1",
        ] {
            assert_eq!(cc(&[line]).max_age, Some(Directive::Invalid), "{line}");
        }
        assert_eq!(
            cc(&["max-age=1 , s-maxage=2"]).max_age,
            Some(Directive::Seconds(1))
        );
        assert_eq!(
            cc(&["max-age=18446744073709551616123"]).max_age,
            Some(Directive::Seconds(DELTA_SECONDS_CAP))
        );
        assert_eq!(Directive::Seconds(3).seconds(), Some(3));
        assert_eq!(Directive::Invalid.seconds(), None);
    }

    #[test]
    fn qualified_and_malformed_restrictive_flags_still_count() {
        assert!(cc(&["private=\"x\""]).private);
        assert!(cc(&["no-cache=\"set-cookie\""]).no_cache);
        assert!(cc(&["no-store=1"]).no_store);
        assert!(cc(&["private =junk"]).private);
        assert!(cc(&["must-revalidate=\"x"]).must_revalidate);
    }

    #[test]
    fn public_with_a_value_does_not_count() {
        assert!(cc(&["public"]).public);
        assert!(cc(&[" public "]).public);
        assert!(!cc(&["public=1"]).public);
        assert!(!cc(&["public=\"x\""]).public);
    }

    #[test]
    fn garbage_cache_control_never_panics_and_keeps_what_it_can() {
        let mut map = HeaderMap::new();
        map.append(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"\xff\xfe, ,,,=,\"\"\", max-age=5").unwrap(),
        );
        map.append(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"\"unterminated, no-store").unwrap(),
        );
        map.append(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"\\").unwrap(),
        );
        let parsed = CacheControl::parse(&map);
        assert_eq!(
            parsed.max_age, None,
            "the max-age sits inside a quoted string"
        );
        assert!(
            !parsed.no_store,
            "the no-store sits inside an unterminated quoted string"
        );
        let mut map = HeaderMap::new();
        map.append(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"\x80garbage, max-age=5").unwrap(),
        );
        assert_eq!(
            CacheControl::parse(&map).max_age,
            Some(Directive::Seconds(5))
        );
    }

    // ---- Age, hop-by-hop, Vary -------------------------------------------------------------

    #[test]
    fn age_is_the_first_member_and_invalid_values_are_none() {
        let age = |pairs: &[(&str, &str)]| parse_age(&headers(pairs));
        assert_eq!(age(&[]), None);
        assert_eq!(age(&[("age", "10")]), Some(10));
        assert_eq!(age(&[("age", " 7 ")]), Some(7));
        assert_eq!(age(&[("age", "1, 2")]), Some(1));
        assert_eq!(age(&[("age", "3"), ("age", "9")]), Some(3));
        for bad in ["abc", "", "-1", "1.5", "+3", "0x10", ", 2"] {
            assert_eq!(age(&[("age", bad)]), None, "{bad}");
        }
        assert_eq!(
            age(&[("age", "9223372036854775808")]),
            Some(DELTA_SECONDS_CAP)
        );
        assert_eq!(
            age(&[("age", "99999999999999999999999")]),
            Some(DELTA_SECONDS_CAP)
        );
    }

    #[test]
    fn hop_by_hop_fields_are_recognised() {
        let plain = HeaderMap::new();
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authenticate",
            "proxy-authentication-info",
            "proxy-authorization",
        ] {
            assert!(
                is_hop_by_hop(&HeaderName::from_static(name), &plain),
                "{name}"
            );
        }
        for name in ["content-type", "cache-control", "x-custom", "trailers"] {
            assert!(
                !is_hop_by_hop(&HeaderName::from_static(name), &plain),
                "{name}"
            );
        }
        let listed = headers(&[("connection", "close, X-Custom"), ("connection", "x-other")]);
        assert!(is_hop_by_hop(&HeaderName::from_static("x-custom"), &listed));
        assert!(is_hop_by_hop(&HeaderName::from_static("x-other"), &listed));
        assert!(!is_hop_by_hop(&HeaderName::from_static("x-third"), &listed));
    }

    fn names(list: &[&str]) -> VaryList {
        VaryList::Fields(
            list.iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
                .collect(),
        )
    }

    #[test]
    fn vary_names_are_lower_cased_deduplicated_and_in_order() {
        let map = headers(&[
            ("vary", "Accept-Language, ACCEPT, ,accept-language"),
            ("vary", "X-Tenant"),
        ]);
        assert_eq!(
            vary_list(&map),
            names(&["accept-language", "accept", "x-tenant"])
        );
        assert_eq!(vary_list(&HeaderMap::new()), names(&[]));
    }

    #[test]
    fn vary_star_or_unusable_vary_never_matches() {
        assert_eq!(vary_list(&headers(&[("vary", "*")])), VaryList::Star);
        assert_eq!(
            vary_list(&headers(&[("vary", "accept"), ("vary", "*")])),
            VaryList::Star
        );
        assert_eq!(vary_list(&headers(&[("vary", "bad name")])), VaryList::Star);
        let mut map = HeaderMap::new();
        map.append(
            header::VARY,
            HeaderValue::from_bytes(b"accept, \xff").unwrap(),
        );
        assert_eq!(vary_list(&map), VaryList::Star);
    }

    #[test]
    fn vary_with_too_many_names_is_treated_as_star() {
        let make = |count: usize| {
            (0..count)
                .map(|i| format!("x-{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let at_limit = headers(&[("vary", &make(MAX_VARY_FIELDS))]);
        assert!(matches!(vary_list(&at_limit), VaryList::Fields(f) if f.len() == MAX_VARY_FIELDS));
        assert_eq!(
            vary_list(&headers(&[("vary", &make(MAX_VARY_FIELDS + 1))])),
            VaryList::Star
        );
        assert_eq!(vary_list(&headers(&[("vary", &make(500))])), VaryList::Star);
        let repeated = vec!["accept"; 500].join(",");
        assert_eq!(
            vary_list(&headers(&[("vary", &repeated)])),
            names(&["accept"])
        );
        let full_and_encoded = headers(&[
            ("vary", &make(MAX_VARY_FIELDS)),
            ("content-encoding", "gzip"),
        ]);
        assert_eq!(vary_list(&full_and_encoded), VaryList::Star);
    }

    #[test]
    fn an_encoded_response_varies_on_accept_encoding_implicitly() {
        assert_eq!(
            vary_list(&headers(&[
                ("content-encoding", "gzip"),
                ("vary", "accept-language")
            ])),
            names(&["accept-language", "accept-encoding"])
        );
        assert_eq!(
            vary_list(&headers(&[("content-encoding", "br")])),
            names(&["accept-encoding"])
        );
        assert_eq!(
            vary_list(&headers(&[
                ("content-encoding", "gzip"),
                ("vary", "Accept-Encoding, accept")
            ])),
            names(&["accept-encoding", "accept"])
        );
        assert_eq!(
            vary_list(&headers(&[("content-encoding", "identity")])),
            names(&[])
        );
    }

    // ---- properties ------------------------------------------------------------------------

    fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..48),
            "[a-zA-Z*=\", ;\\\\0-9-]{0,40}".prop_map(String::into_bytes),
            "((max-age|s-maxage|stale-if-error|private|no-cache|public)(=\"?[0-9a-z-]{0,22}\"?)?, ?){0,4}"
                .prop_map(String::into_bytes),
            (0u64..253_402_300_799u64).prop_map(|secs| {
                httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs)).into_bytes()
            }),
        ]
    }

    const NAMES: &[&str] = &[
        "cache-control",
        "expires",
        "date",
        "age",
        "vary",
        "last-modified",
        "set-cookie",
        "content-encoding",
        "content-type",
        "content-range",
        "content-length",
        "transfer-encoding",
        "authorization",
        "cookie",
        "connection",
        "upgrade",
        "range",
        "pragma",
        "x-forwarded-host",
    ];

    fn header_map() -> impl Strategy<Value = HeaderMap> {
        prop::collection::vec((0..NAMES.len(), header_bytes()), 0..10).prop_map(|pairs| {
            let mut map = HeaderMap::new();
            for (index, bytes) in pairs {
                if let (Some(name), Ok(value)) = (NAMES.get(index), HeaderValue::from_bytes(&bytes))
                {
                    map.append(HeaderName::from_static(name), value);
                }
            }
            map
        })
    }

    fn any_policy() -> impl Strategy<Value = Policy> {
        (
            any::<bool>(),
            any::<bool>(),
            any::<f64>(),
            0u64..200_000,
            0u64..200_000,
            0u64..200_000,
        )
            .prop_map(|(shared, heuristic, jitter, min, max, default)| {
                Policy::default()
                    .mode(if shared {
                        Mode::Shared
                    } else {
                        Mode::Application
                    })
                    .heuristic_freshness(heuristic)
                    .jitter(jitter)
                    .ttl_range(Duration::from_secs(min), Duration::from_secs(max))
                    .default_ttl(Duration::from_secs(default))
                    .route(Route::template("/u/{id}/{*rest}").ttl(Duration::from_secs(max / 2)))
                    .route(Route::prefix("/a").allow_authenticated())
            })
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_arbitrary_header_bytes(map in header_map(), name in "[a-z-]{1,20}") {
            let parsed = CacheControl::parse(&map);
            if let Some(Directive::Seconds(secs)) = parsed.max_age {
                prop_assert!(secs <= DELTA_SECONDS_CAP);
            }
            if let Some(age) = parse_age(&map) {
                prop_assert!(age <= DELTA_SECONDS_CAP);
            }
            if let VaryList::Fields(fields) = vary_list(&map) {
                prop_assert!(fields.len() <= MAX_VARY_FIELDS);
            }
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            let _ = is_hop_by_hop(&name, &map);
        }

        #[test]
        fn classify_never_panics(policy in any_policy(), map in header_map(), path in "[/a-z{}*?%.]{0,30}", head in any::<bool>()) {
            let method = if head { Method::HEAD } else { Method::GET };
            if let RequestDecision::Cache(info) = policy.classify(&method, &path, &map) {
                prop_assert_eq!(info.is_head, head);
            }
        }

        #[test]
        fn every_stored_ttl_is_within_the_configured_range(
            policy in any_policy(),
            map in header_map(),
            status in 100u16..1000,
            authenticated in any::<bool>(),
            route_ttl in prop::option::of(0u64..u64::MAX),
            handler_ttl in prop::option::of(0u64..u64::MAX),
            request_secs in 0u64..400_000_000_000u64,
            response_secs in 0u64..400_000_000_000u64,
        ) {
            let info = RequestInfo {
                route_ttl: route_ttl.map(Duration::from_secs),
                authenticated,
                ..RequestInfo::default()
            };
            let mut extensions = Extensions::new();
            if let Some(secs) = handler_ttl {
                extensions.insert(CacheTtl(Duration::from_secs(secs)));
            }
            let result = policy.storability(
                &info,
                StatusCode::from_u16(status).unwrap(),
                &map,
                &extensions,
                UNIX_EPOCH + Duration::from_secs(request_secs),
                UNIX_EPOCH + Duration::from_secs(response_secs),
            );
            let (min, max) = policy.get_ttl_range();
            if let Ok(freshness) = result {
                prop_assert!(freshness.ttl >= min && freshness.ttl <= max, "{:?} not in {:?}..{:?}", freshness.ttl, min, max);
                prop_assert!(freshness.ttl >= Duration::from_secs(1));
                prop_assert_eq!(freshness.ttl.subsec_nanos(), 0);
                prop_assert!(freshness.stale_while_revalidate <= max);
                prop_assert!(freshness.stale_if_error <= max);
                prop_assert!(!map.contains_key(header::SET_COOKIE));
                prop_assert!(policy.is_storable_status(StatusCode::from_u16(status).unwrap()));
            }
        }
    }
}

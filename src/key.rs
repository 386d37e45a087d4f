//! Request keys: the canonical form of a request target, the keyed digests taken over it, and the
//! names of the Redis keys built from those digests.
//!
//! The cache must never treat two requests as the same unless the origin is bound to answer them
//! the same way. So canonicalisation here applies only the equivalences RFC 9110 §4.2.3 allows
//! (host case, default port, empty path, percent-encoded unreserved characters, percent-escape hex
//! case) plus one that is about list order rather than content: query parameters with *distinct*
//! names may appear in any order. Everything else that is ambiguous (dot segments, encoded
//! slashes, backslashes, NUL, broken escapes, a host that could be read two ways) is not repaired:
//! [`KeyDeriver::canonicalize`] returns a [`KeyRejection`] and the caller bypasses the cache for
//! that request, so it reaches the origin uncached instead of sharing an entry with another URL.
//!
//! Keys never carry anything readable from the request. Each digest is HMAC-SHA-256 under a
//! server secret, taken over a length-prefixed encoding (so components cannot run into each
//! other), truncated to 128 bits and printed as hex:
//!
//! | key | holds |
//! |---|---|
//! | `<ns>:<ver>:{<P>}:e:<R>` | an entry ([`RequestKey::entry_key`]) |
//! | `<ns>:<ver>:{<P>}:l:<R>` | a fill lock ([`RequestKey::lock_key`]) |
//! | `<ns>:<ver>:{<P>}:g` | the path's purge generation ([`RequestKey::generation_key`]) |
//! | `<ns>:<ver>:{<P>}:v` | the path's Vary field list ([`RequestKey::vary_key`]) |
//! | `<ns>:<ver>:t:{<T>}` | a tag's member set ([`KeyDeriver::tag_key`]) |
//!
//! `P` digests the canonical path alone, so every host, query and variant of one path shares the
//! Redis Cluster hash tag `{<P>}` and lands in one slot. `R` digests everything that selects one
//! stored response: the method class, host, path, query and the Vary values.
//!
//! # Example
//!
//! ```
//! use http::{header::HOST, HeaderMap, HeaderValue, Method, Uri};
//! use tower_response_cache::key::{KeyDeriver, KeyRejection};
//!
//! let keys = KeyDeriver::new(b"at least 32 random bytes of server secret", "trc", "v1");
//! let mut headers = HeaderMap::new();
//! headers.insert(HOST, HeaderValue::from_static("Example.COM:80"));
//!
//! let uri: Uri = "/docs/%7eintro?b=2&a=1".parse()?;
//! let target = keys.canonicalize(&Method::GET, &uri, &headers)?;
//! assert_eq!(target.host(), "example.com");
//! assert_eq!(target.path(), "/docs/~intro");
//! assert_eq!(target.query(), Some("a=1&b=2"));
//!
//! // HEAD is looked up under the GET entry.
//! let get = keys.request_key(&Method::GET, &target, &[]);
//! let head = keys.request_key(&Method::HEAD, &target, &[]);
//! assert_eq!(get.entry_key(), head.entry_key());
//! assert!(get.entry_key().starts_with("trc:v1:{"));
//!
//! // Ambiguous targets are bypassed, not repaired.
//! let uri: Uri = "/static/..%2Fadmin".parse()?;
//! assert_eq!(
//!     keys.canonicalize(&Method::GET, &uri, &headers),
//!     Err(KeyRejection::EncodedSlash)
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::Arc;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Uri};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest path plus query (in bytes) that is keyed; longer targets are bypassed.
const MAX_TARGET_LEN: usize = 8 * 1024;
/// Most query parameters that are keyed; more are bypassed.
const MAX_QUERY_PARAMS: usize = 256;
/// Version of the digest input encoding. Bump it when the encoding changes.
const FORMAT_VERSION: u8 = 1;

/// Domain labels, one per digest kind, so a digest of one kind can never equal one of another.
const LABEL_PATH: u8 = b'P';
const LABEL_TARGET: u8 = b'Q';
const LABEL_REQUEST: u8 = b'R';
const LABEL_TAG: u8 = b'T';

// ---------------------------------------------------------------------------------------------
// Rejections
// ---------------------------------------------------------------------------------------------

/// Why a request target cannot be keyed.
///
/// A rejected request is bypassed (sent to the origin, never stored or served from the cache);
/// it is never rewritten into some other request's key. [`KeyRejection::as_str`] gives a stable
/// name for the `detail` parameter of `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyRejection {
    /// The path has a `.` or `..` segment, written plainly or with `%2E` escapes (also when
    /// followed by `;params`, as in `/..;/`).
    DotSegment,
    /// The path has an encoded slash or backslash (`%2F` or `%5C`, in either case).
    EncodedSlash,
    /// The path has a raw backslash.
    Backslash,
    /// The path or query has a NUL, raw or as `%00`.
    Nul,
    /// A `%` is not followed by two hex digits.
    InvalidEscape,
    /// The host could be read more than one way: an absolute-form authority that differs from
    /// the `Host` header, several `Host` headers, userinfo, or a host that is not a plain
    /// authority (bad characters, trailing dot, empty label, malformed or non-canonical port).
    AmbiguousHost,
    /// Neither the request target nor a `Host` header names a host.
    MissingHost,
    /// Path plus query exceed 8 KiB, or the query has more than 256 parameters.
    TooLong,
    /// The target is neither origin-form (`/path`) nor absolute-form (`http://host/path`):
    /// asterisk-form (`*`), authority-form (`host:port`), or a path that does not start
    /// with `/`.
    UnsupportedForm,
}

impl KeyRejection {
    /// A stable, lower-case, hyphenated name for the reason, such as `"dot-segment"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::DotSegment => "dot-segment",
            Self::EncodedSlash => "encoded-slash",
            Self::Backslash => "backslash",
            Self::Nul => "nul",
            Self::InvalidEscape => "invalid-escape",
            Self::AmbiguousHost => "ambiguous-host",
            Self::MissingHost => "missing-host",
            Self::TooLong => "too-long",
            Self::UnsupportedForm => "unsupported-form",
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Self::DotSegment => "the path has a dot segment",
            Self::EncodedSlash => "the path has an encoded slash or backslash",
            Self::Backslash => "the path has a backslash",
            Self::Nul => "the target has a NUL byte",
            Self::InvalidEscape => "the target has a malformed percent-escape",
            Self::AmbiguousHost => "the host is ambiguous",
            Self::MissingHost => "the request names no host",
            Self::TooLong => "the target is too long or has too many query parameters",
            Self::UnsupportedForm => "the target is not in origin-form or absolute-form",
        }
    }
}

impl fmt::Display for KeyRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request not keyed: {}", self.message())
    }
}

impl std::error::Error for KeyRejection {}

// ---------------------------------------------------------------------------------------------
// Canonical target
// ---------------------------------------------------------------------------------------------

/// The canonical form of a request target, from which its keys are derived.
///
/// Built by [`KeyDeriver::canonicalize`]. Canonicalising the canonical form again (as
/// `path?query` with the host in `Host`) gives the same value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalTarget {
    host: String,
    path: String,
    query: Option<String>,
}

impl CanonicalTarget {
    /// The host in lower case, with its port unless it is the scheme's default.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The path, never empty, with percent-escapes normalised and nothing else changed.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query: `None` when the target has no `?`, `Some("")` for a bare `?`. Parameters are
    /// sorted by name, keeping the order of repeated names.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The same target with its query reshaped: parameters whose (canonical) name `keep`
    /// refuses are dropped, and the values of those `normalise` names are folded (see
    /// [`fold_query_value`]). The order of what is kept does not change. Parameters are split on
    /// `&` only, as everywhere in this module.
    pub fn shape_query(
        &self,
        keep: impl Fn(&str) -> bool,
        normalise: impl Fn(&str) -> bool,
    ) -> CanonicalTarget {
        let Some(query) = &self.query else {
            return self.clone();
        };
        let mut shaped = String::with_capacity(query.len());
        for pair in query.split('&') {
            let (name, value) = match pair.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (pair, None),
            };
            if !keep(name) {
                continue;
            }
            if !shaped.is_empty() {
                shaped.push('&');
            }
            shaped.push_str(name);
            if let Some(value) = value {
                shaped.push('=');
                if normalise(name) {
                    shaped.push_str(&fold_query_value(value));
                } else {
                    shaped.push_str(value);
                }
            }
        }
        CanonicalTarget {
            host: self.host.clone(),
            path: self.path.clone(),
            query: Some(shaped),
        }
    }
}

/// Fold a canonical query value for keys where the route opted in: decode it, lower-case it,
/// collapse runs of white space (`+` counts as a space) into one space, trim it, and encode it
/// again, so `How%20do%20I` and `how+do++i` share one key.
pub fn fold_query_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => decoded.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        decoded.push(byte);
                        i += 2;
                    }
                    Err(_) => decoded.push(b'%'),
                }
            }
            other => decoded.push(other),
        }
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded).to_lowercase();
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut encoded = String::with_capacity(folded.len());
    for byte in folded.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

// ---------------------------------------------------------------------------------------------
// Digests and keys
// ---------------------------------------------------------------------------------------------

/// A 128-bit keyed digest; it prints as 32 lower-case hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub(crate) [u8; 16]);

impl Digest {
    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Wraps raw digest bytes (for example, ones read back from a store).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The digest as 32 lower-case hex characters.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        push_hex(&mut out, self);
        out
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The keys of one stored variant of one request.
///
/// Built by [`KeyDeriver::request_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    path: Digest,
    target: Digest,
    request: Digest,
    /// `<ns>:<ver>:{<P>}:e:<R>`.
    entry_key: String,
    /// Length of the `<ns>:<ver>:{<P>}` head of `entry_key`.
    head_len: usize,
}

impl RequestKey {
    /// `P`: the digest of the canonical path alone. Every host, query and variant of a path
    /// shares it, which puts all of them in one Redis Cluster slot.
    pub fn path_digest(&self) -> Digest {
        self.path
    }

    /// `Q`: the digest of the canonical path and query (no host, method or Vary values).
    pub fn target_digest(&self) -> Digest {
        self.target
    }

    /// `R`: the digest of everything that selects one stored response: method class, host,
    /// path, query and the Vary field names with this request's values.
    pub fn request_digest(&self) -> Digest {
        self.request
    }

    /// The entry key, `<ns>:<ver>:{<P>}:e:<R>`.
    pub fn entry_key(&self) -> &str {
        &self.entry_key
    }

    /// The fill-lock key, `<ns>:<ver>:{<P>}:l:<R>`.
    pub fn lock_key(&self) -> String {
        let mut out = String::with_capacity(self.entry_key.len());
        out.push_str(self.head());
        out.push_str(":l:");
        push_hex(&mut out, &self.request);
        out
    }

    /// The key of the path's purge generation, `<ns>:<ver>:{<P>}:g`.
    pub fn generation_key(&self) -> String {
        self.head_with_suffix(":g")
    }

    /// The key of the path's Vary field list, `<ns>:<ver>:{<P>}:v`.
    pub fn vary_key(&self) -> String {
        self.head_with_suffix(":v")
    }

    /// `<ns>:<ver>:{<P>}`, the part every key of this path starts with.
    fn head(&self) -> &str {
        self.entry_key.get(..self.head_len).unwrap_or_default()
    }

    fn head_with_suffix(&self, suffix: &str) -> String {
        let head = self.head();
        let mut out = String::with_capacity(head.len() + suffix.len());
        out.push_str(head);
        out.push_str(suffix);
        out
    }
}

/// Derives canonical targets and keys under one secret, namespace and version.
///
/// Cheap to clone: the keyed HMAC state and the names are shared. Its `Debug` output shows the
/// secret only as `set`.
#[derive(Clone)]
pub struct KeyDeriver {
    inner: Arc<DeriverInner>,
}

struct DeriverInner {
    /// HMAC state with the secret already absorbed; cloned for each digest.
    mac: HmacSha256,
    namespace: String,
    version: String,
    /// `<ns>:<ver>`.
    prefix: String,
}

impl fmt::Debug for KeyDeriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyDeriver")
            .field("secret", &format_args!("set"))
            .field("namespace", &self.inner.namespace)
            .field("version", &self.inner.version)
            .finish()
    }
}

impl KeyDeriver {
    /// A deriver keyed by `secret` (use at least 32 random bytes, the same on every process that
    /// shares the store) whose keys start with `<namespace>:<version>`.
    ///
    /// The namespace and version are used verbatim; they should not contain `:`, `{` or `}`,
    /// which would blur the key layout and the Redis Cluster hash tag.
    pub fn new(secret: &[u8], namespace: &str, version: &str) -> Self {
        let mac = match <HmacSha256 as Mac>::new_from_slice(secret) {
            Ok(mac) => mac,
            // HMAC takes keys of any length, so this arm is not reached; if it were, key with
            // the secret's hash rather than panic or fall back to a public key.
            Err(_) => {
                let mut key = hmac::digest::Key::<HmacSha256>::default();
                let hashed = <Sha256 as sha2::Digest>::digest(secret);
                for (slot, byte) in key.iter_mut().zip(hashed) {
                    *slot = byte;
                }
                <HmacSha256 as KeyInit>::new(&key)
            }
        };
        let mut prefix = String::with_capacity(namespace.len() + 1 + version.len());
        prefix.push_str(namespace);
        prefix.push(':');
        prefix.push_str(version);
        Self {
            inner: Arc::new(DeriverInner {
                mac,
                namespace: namespace.to_owned(),
                version: version.to_owned(),
                prefix,
            }),
        }
    }

    /// The namespace keys start with.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The key-format version that follows the namespace (bump it to drop everything at once).
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// `<ns>:<ver>`, the start of every key.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Canonicalises a request's target and host, or says why it must not be keyed.
    ///
    /// - Host: from the URI authority in absolute-form (a `Host` header, if present, must name
    ///   the same host), else from the single `Host` header. Lower-cased; `:80` is dropped when
    ///   the scheme is `http` or absent, `:443` when it is `https`.
    /// - Path: never lower-cased, no slashes collapsed, added or removed, `;params` kept.
    ///   Percent-escape hex is upper-cased and escapes of unreserved characters
    ///   (`A-Z a-z 0-9 - . _ ~`) are decoded; nothing else is decoded.
    /// - Query: split on `&` only, normalised like the path, then sorted stably by parameter
    ///   name, so repeated names keep the order of their values.
    ///
    /// The method does not change the canonical target; its class (HEAD shares GET's) enters
    /// the key in [`KeyDeriver::request_key`].
    ///
    /// # Errors
    ///
    /// A [`KeyRejection`] when the target is ambiguous, malformed or too large to key.
    pub fn canonicalize(
        &self,
        _method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<CanonicalTarget, KeyRejection> {
        let raw_path = uri.path();
        let raw_query = uri.query();

        // Bound the work before doing any of it.
        let query_len = raw_query.map_or(0, str::len);
        if raw_path.len().saturating_add(query_len) > MAX_TARGET_LEN {
            return Err(KeyRejection::TooLong);
        }
        if let Some(query) = raw_query {
            let params = query
                .bytes()
                .filter(|&b| b == b'&')
                .count()
                .saturating_add(1);
            if params > MAX_QUERY_PARAMS {
                return Err(KeyRejection::TooLong);
            }
        }

        // Authority-form (`host:port`, no scheme, no path) names no resource path.
        if uri.scheme().is_none() && uri.authority().is_some() {
            return Err(KeyRejection::UnsupportedForm);
        }

        let host = request_host(uri, headers)?;
        let path = canonical_path(raw_path)?;
        let query = match raw_query {
            Some(query) => Some(canonical_query(query)?),
            None => None,
        };
        Ok(CanonicalTarget { host, path, query })
    }

    /// The keys of one variant of a request.
    ///
    /// `vary` holds the response's Vary field names paired with this request's normalised
    /// values, as [`vary_values`] returns them, in the order of the stored Vary list; an empty
    /// slice gives the base (non-varying) entry. HEAD and GET share one method class; every
    /// other method is its own class, named exactly as the method (method names are
    /// case-sensitive).
    pub fn request_key(
        &self,
        method: &Method,
        target: &CanonicalTarget,
        vary: &[(HeaderName, Option<Vec<u8>>)],
    ) -> RequestKey {
        let path = self.path_digest(&target.path);

        let mut input = self.digest_input(LABEL_TARGET);
        input.bytes(target.path.as_bytes());
        input.optional(target.query.as_deref().map(str::as_bytes));
        let query_digest = input.finish();

        let mut input = self.digest_input(LABEL_REQUEST);
        input.bytes(method_class(method).as_bytes());
        input.bytes(target.host.as_bytes());
        input.bytes(target.path.as_bytes());
        input.optional(target.query.as_deref().map(str::as_bytes));
        input.count(vary.len());
        for (name, value) in vary {
            input.bytes(name.as_str().as_bytes());
            input.optional(value.as_deref());
        }
        let request = input.finish();

        let mut entry_key = String::with_capacity(self.inner.prefix.len() + 2 + 32 + 1 + 3 + 32);
        self.push_path_head(&mut entry_key, &path);
        let head_len = entry_key.len();
        entry_key.push_str(":e:");
        push_hex(&mut entry_key, &request);

        RequestKey {
            path,
            target: query_digest,
            request,
            entry_key,
            head_len,
        }
    }

    /// `<ns>:<ver>:{<P>}`, the start of every key of one path, for purging by path.
    ///
    /// `path` is a raw request path, canonicalised as in [`KeyDeriver::canonicalize`]; an empty
    /// path means `/`. Anything from a `?` or `#` on is ignored, since every query of a path
    /// shares its `P`.
    ///
    /// # Errors
    ///
    /// The [`KeyRejection`] a request with this path would get.
    pub fn path_key_prefix(&self, path: &str) -> Result<String, KeyRejection> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        if path.len() > MAX_TARGET_LEN {
            return Err(KeyRejection::TooLong);
        }
        let path = canonical_path(path)?;
        let digest = self.path_digest(&path);
        let mut out = String::with_capacity(self.inner.prefix.len() + 2 + 32 + 1);
        self.push_path_head(&mut out, &digest);
        Ok(out)
    }

    /// `<ns>:<ver>:t:{<T>}`, the key of a tag's member set; `T` is the keyed digest of the tag.
    pub fn tag_key(&self, tag: &str) -> String {
        let mut input = self.digest_input(LABEL_TAG);
        input.bytes(tag.as_bytes());
        let digest = input.finish();
        let mut out = String::with_capacity(self.inner.prefix.len() + 5 + 32 + 1);
        out.push_str(&self.inner.prefix);
        out.push_str(":t:{");
        push_hex(&mut out, &digest);
        out.push('}');
        out
    }

    fn path_digest(&self, canonical_path: &str) -> Digest {
        let mut input = self.digest_input(LABEL_PATH);
        input.bytes(canonical_path.as_bytes());
        input.finish()
    }

    fn push_path_head(&self, out: &mut String, path: &Digest) {
        out.push_str(&self.inner.prefix);
        out.push_str(":{");
        push_hex(out, path);
        out.push('}');
    }

    fn digest_input(&self, label: u8) -> DigestInput {
        let mut mac = self.inner.mac.clone();
        mac.update(&[label, FORMAT_VERSION]);
        DigestInput { mac }
    }
}

/// The HMAC input of one digest, written with an injective encoding: a label and format byte
/// (written by [`KeyDeriver::digest_input`]), then components each with a length or flag.
struct DigestInput {
    mac: HmacSha256,
}

impl DigestInput {
    /// A byte string: u32 big-endian length, then the bytes. (Lengths past `u32::MAX` would
    /// saturate; no component can be that long in a request.)
    fn bytes(&mut self, bytes: &[u8]) {
        self.count(bytes.len());
        self.mac.update(bytes);
    }

    /// An optional byte string: `0`, or `1` followed by the string.
    fn optional(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => self.mac.update(&[0]),
            Some(bytes) => {
                self.mac.update(&[1]);
                self.bytes(bytes);
            }
        }
    }

    /// A count or length as u32 big-endian.
    fn count(&mut self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.mac.update(&n.to_be_bytes());
    }

    fn finish(self) -> Digest {
        let full = self.mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        for (slot, byte) in out.iter_mut().zip(full) {
            *slot = byte;
        }
        Digest(out)
    }
}

fn method_class(method: &Method) -> &str {
    if method == Method::HEAD {
        Method::GET.as_str()
    } else {
        method.as_str()
    }
}

fn push_hex(out: &mut String, digest: &Digest) {
    for byte in digest.0 {
        out.push(char::from(hex_digit_lower(byte >> 4)));
        out.push(char::from(hex_digit_lower(byte & 0x0F)));
    }
}

fn hex_digit_lower(nibble: u8) -> u8 {
    match nibble {
        0..=9 => b'0' + nibble,
        _ => b'a' + (nibble & 0x0F).saturating_sub(10),
    }
}

fn hex_digit_upper(nibble: u8) -> u8 {
    match nibble {
        0..=9 => b'0' + nibble,
        _ => b'A' + (nibble & 0x0F).saturating_sub(10),
    }
}

// ---------------------------------------------------------------------------------------------
// Vary values
// ---------------------------------------------------------------------------------------------

/// This request's normalised values for the given Vary field names, in the given order.
///
/// All field lines of a name are combined into one list: elements are split on commas outside
/// quoted strings, trimmed of surrounding spaces and tabs, and joined with `", "`. Nothing else
/// (case, empty elements, order) is changed. An absent field gives `None`, which is distinct from
/// a field that is present but empty (`Some` of an empty vector).
pub fn vary_values(
    fields: &[HeaderName],
    headers: &HeaderMap,
) -> Vec<(HeaderName, Option<Vec<u8>>)> {
    fields
        .iter()
        .map(|name| {
            (
                name.clone(),
                combined_field_value(headers.get_all(name).iter()),
            )
        })
        .collect()
}

fn combined_field_value<'a>(lines: impl Iterator<Item = &'a HeaderValue>) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut first = true;
    for line in lines {
        let out = out.get_or_insert_with(Vec::new);
        for element in ListElements::new(line.as_bytes()) {
            if !first {
                out.extend_from_slice(b", ");
            }
            first = false;
            out.extend_from_slice(element);
        }
    }
    out
}

/// Splits a field line on commas that are not inside a quoted string.
struct ListElements<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> ListElements<'a> {
    fn new(line: &'a [u8]) -> Self {
        Self { rest: Some(line) }
    }
}

impl<'a> Iterator for ListElements<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest?;
        let mut in_quotes = false;
        let mut escaped = false;
        let mut split_at = None;
        for (i, &b) in rest.iter().enumerate() {
            if in_quotes {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_quotes = false;
                }
            } else if b == b'"' {
                in_quotes = true;
            } else if b == b',' {
                split_at = Some(i);
                break;
            }
        }
        let (element, next) = match split_at {
            Some(i) => (
                rest.get(..i).unwrap_or_default(),
                rest.get(i.saturating_add(1)..),
            ),
            None => (rest, None),
        };
        self.rest = next;
        Some(trim_ows(element))
    }
}

fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// Host
// ---------------------------------------------------------------------------------------------

/// The canonical host of a request: the absolute-form authority (checked against any `Host`
/// header) or the single `Host` header.
fn request_host(uri: &Uri, headers: &HeaderMap) -> Result<String, KeyRejection> {
    let default_port = match uri.scheme_str() {
        None => Some("80"),
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => Some("80"),
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => Some("443"),
        Some(_) => None,
    };

    let mut host_headers = headers.get_all(header::HOST).iter();
    let host_header = host_headers.next();
    if host_headers.next().is_some() {
        return Err(KeyRejection::AmbiguousHost);
    }

    match uri.authority() {
        Some(authority) => {
            let host = canonical_host(authority.as_str().as_bytes(), default_port)?;
            if let Some(value) = host_header {
                let header_host = canonical_host(value.as_bytes(), default_port)
                    .map_err(|_| KeyRejection::AmbiguousHost)?;
                if header_host != host {
                    return Err(KeyRejection::AmbiguousHost);
                }
            }
            Ok(host)
        }
        None => match host_header {
            Some(value) => canonical_host(value.as_bytes(), default_port),
            None => Err(KeyRejection::MissingHost),
        },
    }
}

/// Validates an authority (`host[:port]`, no userinfo) and gives its canonical form.
fn canonical_host(raw: &[u8], default_port: Option<&str>) -> Result<String, KeyRejection> {
    if raw.is_empty() {
        return Err(KeyRejection::MissingHost);
    }
    let (host, port) = split_host_port(raw)?;
    let valid_host = match host {
        [b'[', inner @ .., b']'] => is_ipv6_literal(inner),
        _ => is_reg_name(host),
    };
    if !valid_host {
        return Err(KeyRejection::AmbiguousHost);
    }
    let port = match port {
        None => None,
        Some(port) => Some(canonical_port(port).ok_or(KeyRejection::AmbiguousHost)?),
    };

    let mut out = String::with_capacity(raw.len());
    out.extend(host.iter().map(|&b| char::from(b.to_ascii_lowercase())));
    if let Some(port) = port {
        if Some(port) != default_port {
            out.push(':');
            out.push_str(port);
        }
    }
    Ok(out)
}

/// Splits `host[:port]`; an IPv6 literal keeps its brackets.
fn split_host_port(raw: &[u8]) -> Result<(&[u8], Option<&[u8]>), KeyRejection> {
    let (host, rest) = if raw.first() == Some(&b'[') {
        let close = raw
            .iter()
            .position(|&b| b == b']')
            .ok_or(KeyRejection::AmbiguousHost)?;
        raw.split_at_checked(close.saturating_add(1))
            .ok_or(KeyRejection::AmbiguousHost)?
    } else {
        match raw.iter().position(|&b| b == b':') {
            Some(colon) => raw
                .split_at_checked(colon)
                .ok_or(KeyRejection::AmbiguousHost)?,
            None => (raw, &[][..]),
        }
    };
    match rest {
        [] => Ok((host, None)),
        [b':', port @ ..] => Ok((host, Some(port))),
        _ => Err(KeyRejection::AmbiguousHost),
    }
}

/// A DNS-style name or IPv4 address: non-empty labels of letters, digits, `-` and `_`,
/// separated by single dots, without a trailing dot.
fn is_reg_name(host: &[u8]) -> bool {
    !host.is_empty()
        && host.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The inside of `[...]`: hex digits, colons and dots (an IPv6 address, possibly with an
/// embedded IPv4 part); no zone identifiers, no IPvFuture.
fn is_ipv6_literal(inner: &[u8]) -> bool {
    inner.contains(&b':')
        && inner
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
}

/// A port written canonically: 1 to 5 digits, no leading zero, 1..=65535.
fn canonical_port(port: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(port).ok()?;
    if text.is_empty() || text.len() > 5 || text.starts_with('0') {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u32 = text.parse().ok()?;
    (value <= u32::from(u16::MAX)).then_some(text)
}

// ---------------------------------------------------------------------------------------------
// Path and query
// ---------------------------------------------------------------------------------------------

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte encoded by the escape starting at `raw[i] == b'%'`.
fn read_escape(raw: &[u8], i: usize) -> Result<u8, KeyRejection> {
    let high = raw.get(i.saturating_add(1)).copied().and_then(hex_value);
    let low = raw.get(i.saturating_add(2)).copied().and_then(hex_value);
    match (high, low) {
        (Some(high), Some(low)) => Ok((high << 4) | low),
        _ => Err(KeyRejection::InvalidEscape),
    }
}

/// Writes a decoded escape back: unreserved characters plainly, everything else as `%XX`.
fn push_escape(out: &mut Vec<u8>, byte: u8) {
    if is_unreserved(byte) {
        out.push(byte);
    } else {
        out.extend_from_slice(&[
            b'%',
            hex_digit_upper(byte >> 4),
            hex_digit_upper(byte & 0x0F),
        ]);
    }
}

/// Turns bytes that came from a `&str`, changed only in ASCII runs, back into a `String`.
fn into_string(bytes: Vec<u8>) -> Result<String, KeyRejection> {
    // Only ASCII escapes are rewritten, so the bytes stay valid UTF-8; the error arm is not
    // reached.
    String::from_utf8(bytes).map_err(|_| KeyRejection::InvalidEscape)
}

fn canonical_path(raw: &str) -> Result<String, KeyRejection> {
    let raw = raw.as_bytes();
    if raw.is_empty() {
        return Ok("/".to_owned());
    }
    if raw.first() != Some(&b'/') {
        return Err(KeyRejection::UnsupportedForm);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut segment_start = 0;
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'%' => {
                match read_escape(raw, i)? {
                    0 => return Err(KeyRejection::Nul),
                    b'/' | b'\\' => return Err(KeyRejection::EncodedSlash),
                    byte => push_escape(&mut out, byte),
                }
                i = i.saturating_add(3);
                continue;
            }
            b'/' => {
                reject_dot_segment(out.get(segment_start..).unwrap_or_default())?;
                out.push(b'/');
                segment_start = out.len();
            }
            b'\\' => return Err(KeyRejection::Backslash),
            0 => return Err(KeyRejection::Nul),
            _ => out.push(b),
        }
        i = i.saturating_add(1);
    }
    reject_dot_segment(out.get(segment_start..).unwrap_or_default())?;
    into_string(out)
}

/// Rejects `.` and `..` segments (already escape-decoded), also before `;params`, which some
/// servers strip before resolving dot segments (`/..;/`).
fn reject_dot_segment(segment: &[u8]) -> Result<(), KeyRejection> {
    let name = segment.split(|&b| b == b';').next().unwrap_or_default();
    if name == b"." || name == b".." {
        Err(KeyRejection::DotSegment)
    } else {
        Ok(())
    }
}

/// Where one query parameter sits in the normalised query.
#[derive(Clone, Copy, Default)]
struct Param {
    start: usize,
    name_end: usize,
    end: usize,
}

fn canonical_query(raw: &str) -> Result<String, KeyRejection> {
    let raw = raw.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut params = [Param::default(); MAX_QUERY_PARAMS];
    let mut count = 0;
    let mut current = Param::default();
    let mut saw_equals = false;

    let mut close_param = |current: &mut Param, saw_equals: bool, end: usize| {
        current.end = end;
        if !saw_equals {
            current.name_end = end;
        }
        let slot = params.get_mut(count).ok_or(KeyRejection::TooLong)?;
        *slot = *current;
        count += 1;
        Ok::<(), KeyRejection>(())
    };

    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'%' => {
                match read_escape(raw, i)? {
                    0 => return Err(KeyRejection::Nul),
                    byte => push_escape(&mut out, byte),
                }
                i = i.saturating_add(3);
                continue;
            }
            b'&' => {
                close_param(&mut current, saw_equals, out.len())?;
                out.push(b'&');
                current = Param {
                    start: out.len(),
                    ..Param::default()
                };
                saw_equals = false;
            }
            b'=' if !saw_equals => {
                current.name_end = out.len();
                saw_equals = true;
                out.push(b'=');
            }
            0 => return Err(KeyRejection::Nul),
            _ => out.push(b),
        }
        i = i.saturating_add(1);
    }
    close_param(&mut current, saw_equals, out.len())?;

    let params = params.get_mut(..count).unwrap_or_default();
    let name = |param: &Param| out.get(param.start..param.name_end).unwrap_or_default();
    let sorted = params.windows(2).all(|pair| match pair {
        [a, b] => name(a) <= name(b),
        _ => true,
    });
    if sorted {
        return into_string(out);
    }

    // A stable sort by name keeps the order of values within a repeated name.
    params.sort_by(|a, b| name(a).cmp(name(b)));
    let mut sorted_out = Vec::with_capacity(out.len());
    for (n, param) in params.iter().enumerate() {
        if n > 0 {
            sorted_out.push(b'&');
        }
        sorted_out.extend_from_slice(out.get(param.start..param.end).unwrap_or_default());
    }
    into_string(sorted_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{ACCEPT, ACCEPT_ENCODING, HOST};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const SECRET: &[u8] = b"test secret, not for production use";

    fn deriver() -> KeyDeriver {
        KeyDeriver::new(SECRET, "trc", "v1")
    }

    fn headers_with_host(host: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static(host));
        headers
    }

    fn canon_with(uri: &str, headers: &HeaderMap) -> Result<CanonicalTarget, KeyRejection> {
        let uri: Uri = uri.parse().expect("test URI parses");
        deriver().canonicalize(&Method::GET, &uri, headers)
    }

    fn canon(uri: &str) -> Result<CanonicalTarget, KeyRejection> {
        canon_with(uri, &headers_with_host("example.com"))
    }

    fn entry_key(uri: &str) -> String {
        let target = canon(uri).expect("test URI is keyed");
        deriver()
            .request_key(&Method::GET, &target, &[])
            .entry_key()
            .to_owned()
    }

    fn assert_keys_differ(a: &str, b: &str) {
        assert_ne!(
            entry_key(a),
            entry_key(b),
            "{a} and {b} must not share a key"
        );
    }

    fn assert_keys_equal(a: &str, b: &str) {
        assert_eq!(entry_key(a), entry_key(b), "{a} and {b} must share a key");
    }

    fn refed(target: &CanonicalTarget) -> Result<CanonicalTarget, KeyRejection> {
        let mut pq = target.path().to_owned();
        if let Some(query) = target.query() {
            pq.push('?');
            pq.push_str(query);
        }
        let uri: Uri = pq.parse().expect("a canonical target parses as a URI");
        let mut headers = HeaderMap::new();
        headers.insert(
            HOST,
            HeaderValue::from_str(target.host()).expect("a canonical host is a header value"),
        );
        deriver().canonicalize(&Method::GET, &uri, &headers)
    }

    // --- S2: query pairs -------------------------------------------------------------------

    #[test]
    fn repeated_parameter_values_keep_their_order() {
        assert_keys_differ("/p?a=1&a=2", "/p?a=2&a=1");
    }

    #[test]
    fn a_semicolon_is_data_not_a_parameter_separator() {
        assert_keys_differ("/p?a=1;b=2", "/p?a=1&b=2");
        assert_eq!(canon("/p?b=2;a=1").unwrap().query(), Some("b=2;a=1"));
    }

    #[test]
    fn an_encoded_ampersand_is_not_a_separator() {
        assert_keys_differ("/p?a=1%26b=2", "/p?a=1&b=2");
    }

    #[test]
    fn a_name_without_equals_differs_from_an_empty_value() {
        assert_keys_differ("/p?a", "/p?a=");
    }

    #[test]
    fn plus_differs_from_an_encoded_space() {
        assert_keys_differ("/p?a=b+c", "/p?a=b%20c");
    }

    #[test]
    fn a_smuggled_callback_parameter_gets_its_own_key() {
        assert_keys_differ("/p?cb=1&utm_content=x;callback=evil", "/p?cb=1");
    }

    #[test]
    fn only_the_order_of_distinct_names_is_ignored() {
        assert_keys_equal("/p?b=1&a=2", "/p?a=2&b=1");
        assert_eq!(
            canon("/p?b=1&a=2&b=0").unwrap().query(),
            Some("a=2&b=1&b=0")
        );
    }

    #[test]
    fn no_query_bare_question_mark_and_empty_pairs_are_all_distinct() {
        assert_eq!(canon("/p").unwrap().query(), None);
        assert_eq!(canon("/p?").unwrap().query(), Some(""));
        assert_keys_differ("/p", "/p?");
        assert_keys_differ("/p?", "/p?&");
        assert_keys_differ("/p?a=1", "/p?a=1&&");
        assert_eq!(canon("/p?b=1&&a=2").unwrap().query(), Some("&a=2&b=1"));
    }

    #[test]
    fn query_escapes_are_normalised_but_reserved_characters_stay_encoded() {
        let target = canon("/p?q=%7e%2f%3d%41").unwrap();
        assert_eq!(target.query(), Some("q=~%2F%3DA"));
        assert_keys_equal("/p?q=%7e", "/p?q=~");
        assert_keys_differ("/p?q=%2F", "/p?q=/");
        assert_keys_differ("/p?a%3D1", "/p?a=1");
    }

    #[test]
    fn broken_escapes_and_nul_in_the_query_are_rejected() {
        assert_eq!(canon("/p?a=%zz"), Err(KeyRejection::InvalidEscape));
        assert_eq!(canon("/p?a=%4"), Err(KeyRejection::InvalidEscape));
        assert_eq!(canon("/p?a=%"), Err(KeyRejection::InvalidEscape));
        assert_eq!(canon("/p?a=%00"), Err(KeyRejection::Nul));
    }

    #[test]
    fn a_raw_backslash_in_the_query_is_kept_as_data() {
        assert_eq!(canon("/p?a=\\").unwrap().query(), Some("a=\\"));
    }

    // --- S3: path pairs --------------------------------------------------------------------

    #[test]
    fn dot_segments_are_rejected_in_every_spelling() {
        for uri in [
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/a/.",
            "/..",
            "/.",
            "/a/%2e%2E/b",
            "/a/%2e/b",
            "/a/.%2e",
            "/a/..;/b",
            "/a/.;x",
        ] {
            assert_eq!(canon(uri), Err(KeyRejection::DotSegment), "{uri}");
        }
    }

    #[test]
    fn dots_inside_a_segment_are_ordinary() {
        for uri in ["/.well-known/x", "/a/.../b", "/a/..b", "/a/b.", "/a;./b"] {
            assert_eq!(canon(uri).unwrap().path(), uri);
        }
    }

    #[test]
    fn path_case_is_significant() {
        assert_keys_differ("/A", "/a");
    }

    #[test]
    fn a_trailing_slash_is_significant() {
        assert_keys_differ("/a/", "/a");
    }

    #[test]
    fn double_slashes_are_not_collapsed() {
        assert_keys_differ("//a", "/a");
        assert_eq!(canon("/a//b").unwrap().path(), "/a//b");
    }

    #[test]
    fn encoded_slashes_and_backslashes_are_rejected() {
        for uri in ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a%5cb"] {
            assert_eq!(canon(uri), Err(KeyRejection::EncodedSlash), "{uri}");
        }
    }

    #[test]
    fn an_encoded_unreserved_character_equals_the_plain_one() {
        assert_keys_equal("/%7Ea", "/~a");
        assert_eq!(canon("/%41%62%2D%5F%2E%30").unwrap().path(), "/Ab-_.0");
    }

    #[test]
    fn escape_hex_case_is_ignored() {
        assert_keys_equal("/%7ea", "/%7Ea");
        assert_keys_equal("/caf%c3%a9", "/caf%C3%A9");
        assert_eq!(canon("/a%3bb").unwrap().path(), "/a%3Bb");
    }

    #[test]
    fn unicode_is_not_normalised() {
        assert_keys_differ("/caf%C3%A9", "/cafe%CC%81");
        assert_keys_differ("/caf\u{e9}", "/cafe\u{301}");
        // Raw UTF-8 is kept as sent, not percent-encoded into another request's key.
        assert_keys_differ("/caf\u{e9}", "/caf%C3%A9");
    }

    #[test]
    fn path_parameters_are_kept() {
        assert_keys_differ("/a;x", "/a");
        assert_eq!(canon("/a;x=1/b").unwrap().path(), "/a;x=1/b");
    }

    #[test]
    fn nul_in_the_path_is_rejected() {
        assert_eq!(canon("/a%00"), Err(KeyRejection::Nul));
    }

    #[test]
    fn a_raw_backslash_in_the_path_is_rejected() {
        // http::Uri accepts a raw backslash in the path, so the canonicaliser must catch it.
        assert_eq!(canon("/a\\b"), Err(KeyRejection::Backslash));
    }

    #[test]
    fn broken_escapes_in_the_path_are_rejected() {
        for uri in ["/a%", "/a%4", "/a%g0", "/a%0g"] {
            assert_eq!(canon(uri), Err(KeyRejection::InvalidEscape), "{uri}");
        }
    }

    #[test]
    fn reserved_escapes_in_the_path_are_not_decoded() {
        assert_keys_differ("/a%3Bx", "/a;x");
        assert_keys_differ("/a%3Fx", "/a?x");
        assert_keys_differ("/a%25", "/a%2525");
    }

    #[test]
    fn an_absolute_uri_without_a_path_means_slash() {
        let target = canon_with("http://example.com", &HeaderMap::new()).unwrap();
        assert_eq!(target.path(), "/");
        assert_eq!(target, canon("/").unwrap());
    }

    #[test]
    fn asterisk_and_authority_forms_are_not_keyed() {
        assert_eq!(canon("*"), Err(KeyRejection::UnsupportedForm));
        assert_eq!(canon("example.com:443"), Err(KeyRejection::UnsupportedForm));
    }

    #[test]
    fn oversized_targets_are_bypassed() {
        let long = format!("/{}", "a".repeat(MAX_TARGET_LEN));
        assert_eq!(canon(&long), Err(KeyRejection::TooLong));
        let limit = format!("/{}", "a".repeat(MAX_TARGET_LEN - 1));
        assert!(canon(&limit).is_ok());
        let long_query = format!("/?{}", "a".repeat(MAX_TARGET_LEN));
        assert_eq!(canon(&long_query), Err(KeyRejection::TooLong));
    }

    #[test]
    fn too_many_query_parameters_are_bypassed() {
        let many = vec!["a=1"; MAX_QUERY_PARAMS + 1].join("&");
        assert_eq!(canon(&format!("/p?{many}")), Err(KeyRejection::TooLong));
        let most: Vec<String> = (0..MAX_QUERY_PARAMS)
            .rev()
            .map(|n| format!("p{n}"))
            .collect();
        let target = canon(&format!("/p?{}", most.join("&"))).unwrap();
        assert_eq!(target.query().unwrap().split('&').count(), MAX_QUERY_PARAMS);
    }

    // --- Host --------------------------------------------------------------------------------

    #[test]
    fn host_case_and_default_port_are_ignored() {
        let plain = canon_with("/a", &headers_with_host("example.com")).unwrap();
        for host in ["Example.COM", "example.com:80", "EXAMPLE.com:80"] {
            let headers = headers_with_host(host);
            assert_eq!(canon_with("/a", &headers).unwrap(), plain, "{host}");
        }
        let https = canon_with("https://Example.com:443/a", &HeaderMap::new()).unwrap();
        assert_eq!(https.host(), "example.com");
        let http = canon_with("http://example.com:80/a", &HeaderMap::new()).unwrap();
        assert_eq!(http.host(), "example.com");
    }

    #[test]
    fn a_non_default_port_is_kept() {
        let headers = headers_with_host("example.com:443");
        assert_eq!(
            canon_with("/a", &headers).unwrap().host(),
            "example.com:443"
        );
        let http = canon_with("http://example.com:443/a", &HeaderMap::new()).unwrap();
        assert_eq!(http.host(), "example.com:443");
        let https = canon_with("https://example.com:80/a", &HeaderMap::new()).unwrap();
        assert_eq!(https.host(), "example.com:80");
        let headers = headers_with_host("example.com:8080");
        assert_keys_differ_with_hosts(&headers, &headers_with_host("example.com"));
    }

    fn assert_keys_differ_with_hosts(a: &HeaderMap, b: &HeaderMap) {
        let keys = deriver();
        let a = keys.request_key(&Method::GET, &canon_with("/a", a).unwrap(), &[]);
        let b = keys.request_key(&Method::GET, &canon_with("/a", b).unwrap(), &[]);
        assert_ne!(a.entry_key(), b.entry_key());
        assert_eq!(a.path_digest(), b.path_digest());
        assert_eq!(a.target_digest(), b.target_digest());
    }

    #[test]
    fn ipv6_literals_are_accepted_and_lower_cased() {
        let headers = headers_with_host("[::1]:80");
        assert_eq!(canon_with("/a", &headers).unwrap().host(), "[::1]");
        let headers = headers_with_host("[2001:DB8::1]:8080");
        assert_eq!(
            canon_with("/a", &headers).unwrap().host(),
            "[2001:db8::1]:8080"
        );
    }

    #[test]
    fn malformed_hosts_are_ambiguous() {
        for host in [
            "example.com.",
            "a..b",
            ".example.com",
            "exa mple.com",
            "example.com:",
            "example.com:080",
            "example.com:99999",
            "example.com:0",
            "example.com:8x",
            "example.com:80:80",
            "user@example.com",
            "ex%41mple.com",
            ":80",
            "[::1",
            "[::1]x",
            "[fe80::1%25eth0]",
            "[v1.x]",
            "exa/mple.com",
        ] {
            let headers = headers_with_host(host);
            assert_eq!(
                canon_with("/a", &headers),
                Err(KeyRejection::AmbiguousHost),
                "{host}"
            );
        }
    }

    #[test]
    fn userinfo_in_an_absolute_uri_is_ambiguous() {
        assert_eq!(
            canon_with("http://user@example.com/a", &HeaderMap::new()),
            Err(KeyRejection::AmbiguousHost)
        );
    }

    #[test]
    fn an_absolute_uri_must_agree_with_the_host_header() {
        let other = headers_with_host("evil.example");
        assert_eq!(
            canon_with("http://example.com/a", &other),
            Err(KeyRejection::AmbiguousHost)
        );
        let same = headers_with_host("EXAMPLE.com:80");
        assert_eq!(
            canon_with("http://example.com/a", &same).unwrap().host(),
            "example.com"
        );
        let invalid = headers_with_host("");
        assert_eq!(
            canon_with("http://example.com/a", &invalid),
            Err(KeyRejection::AmbiguousHost)
        );
    }

    #[test]
    fn several_host_headers_are_ambiguous() {
        let mut headers = headers_with_host("example.com");
        headers.append(HOST, HeaderValue::from_static("example.com"));
        assert_eq!(canon_with("/a", &headers), Err(KeyRejection::AmbiguousHost));
    }

    #[test]
    fn a_request_without_a_host_is_not_keyed() {
        assert_eq!(
            canon_with("/a", &HeaderMap::new()),
            Err(KeyRejection::MissingHost)
        );
        let empty = headers_with_host("");
        assert_eq!(canon_with("/a", &empty), Err(KeyRejection::MissingHost));
    }

    #[test]
    fn a_host_header_with_non_ascii_bytes_is_ambiguous() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_bytes(b"ex\xe9mple.com").unwrap());
        assert_eq!(canon_with("/a", &headers), Err(KeyRejection::AmbiguousHost));
    }

    // --- Methods, Vary and digests ------------------------------------------------------------

    #[test]
    fn head_and_get_share_a_key_but_other_methods_do_not() {
        let keys = deriver();
        let target = canon("/a").unwrap();
        let get = keys.request_key(&Method::GET, &target, &[]);
        let head = keys.request_key(&Method::HEAD, &target, &[]);
        let post = keys.request_key(&Method::POST, &target, &[]);
        let lower_get = keys.request_key(&Method::from_bytes(b"get").unwrap(), &target, &[]);
        assert_eq!(get, head);
        assert_ne!(get.request_digest(), post.request_digest());
        assert_ne!(get.request_digest(), lower_get.request_digest());
        assert_eq!(get.path_digest(), post.path_digest());
    }

    fn vary_entry(name: &'static str, value: Option<&[u8]>) -> (HeaderName, Option<Vec<u8>>) {
        (HeaderName::from_static(name), value.map(<[u8]>::to_vec))
    }

    fn request_digest_with(vary: &[(HeaderName, Option<Vec<u8>>)]) -> Digest {
        deriver()
            .request_key(&Method::GET, &canon("/a").unwrap(), vary)
            .request_digest()
    }

    #[test]
    fn an_absent_vary_header_differs_from_an_empty_one() {
        let absent = request_digest_with(&[vary_entry("accept", None)]);
        let empty = request_digest_with(&[vary_entry("accept", Some(b""))]);
        assert_ne!(absent, empty);
    }

    #[test]
    fn vary_names_and_values_cannot_run_together() {
        let a = request_digest_with(&[vary_entry("a", Some(b"bc"))]);
        let b = request_digest_with(&[vary_entry("ab", Some(b"c"))]);
        assert_ne!(a, b);
        let two = request_digest_with(&[vary_entry("a", Some(b"b")), vary_entry("c", None)]);
        let one = request_digest_with(&[vary_entry("a", Some(b"bc"))]);
        assert_ne!(two, one);
    }

    #[test]
    fn the_base_entry_differs_from_every_variant() {
        let base = request_digest_with(&[]);
        let absent = request_digest_with(&[vary_entry("accept", None)]);
        assert_ne!(base, absent);
    }

    #[test]
    fn variants_share_the_path_and_target_digests() {
        let keys = deriver();
        let target = canon("/a?x=1").unwrap();
        let base = keys.request_key(&Method::GET, &target, &[]);
        let gzip = keys.request_key(
            &Method::GET,
            &target,
            &[vary_entry("accept-encoding", Some(b"gzip"))],
        );
        assert_ne!(base.entry_key(), gzip.entry_key());
        assert_eq!(base.path_digest(), gzip.path_digest());
        assert_eq!(base.target_digest(), gzip.target_digest());
        assert_eq!(base.generation_key(), gzip.generation_key());
    }

    #[test]
    fn every_query_of_a_path_shares_the_path_digest_only() {
        let keys = deriver();
        let a = keys.request_key(&Method::GET, &canon("/a?x=1").unwrap(), &[]);
        let b = keys.request_key(&Method::GET, &canon("/a?x=2").unwrap(), &[]);
        let c = keys.request_key(&Method::GET, &canon("/a").unwrap(), &[]);
        assert_eq!(a.path_digest(), b.path_digest());
        assert_eq!(a.path_digest(), c.path_digest());
        assert_ne!(a.target_digest(), b.target_digest());
        assert_ne!(a.target_digest(), c.target_digest());
        assert_ne!(a.request_digest(), b.request_digest());
    }

    #[test]
    fn a_different_secret_gives_different_digests() {
        let target = canon("/a?x=1").unwrap();
        let one = deriver().request_key(&Method::GET, &target, &[]);
        let two =
            KeyDeriver::new(b"another secret", "trc", "v1").request_key(&Method::GET, &target, &[]);
        assert_ne!(one.path_digest(), two.path_digest());
        assert_ne!(one.target_digest(), two.target_digest());
        assert_ne!(one.request_digest(), two.request_digest());
        assert_ne!(
            deriver().tag_key("t"),
            KeyDeriver::new(b"x", "trc", "v1").tag_key("t")
        );
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let keys = KeyDeriver::new(b"hunter2-super-secret", "trc", "v1");
        let debug = format!("{keys:?}");
        assert!(debug.contains("secret: set"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("104"), "{debug}"); // no byte list either
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let keys = deriver();
        assert_eq!(keys.namespace(), "trc");
        assert_eq!(keys.version(), "v1");
        assert_eq!(keys.prefix(), "trc:v1");

        let key = keys.request_key(&Method::GET, &canon("/a?x=1").unwrap(), &[]);
        let p = key.path_digest().to_hex();
        let r = key.request_digest().to_hex();
        assert_eq!(key.entry_key(), format!("trc:v1:{{{p}}}:e:{r}"));
        assert_eq!(key.lock_key(), format!("trc:v1:{{{p}}}:l:{r}"));
        assert_eq!(key.generation_key(), format!("trc:v1:{{{p}}}:g"));
        assert_eq!(key.vary_key(), format!("trc:v1:{{{p}}}:v"));
        assert_eq!(
            keys.path_key_prefix("/a").unwrap(),
            format!("trc:v1:{{{p}}}")
        );

        let tag = keys.tag_key("product-42");
        let digest = tag
            .strip_prefix("trc:v1:t:{")
            .and_then(|rest| rest.strip_suffix('}'))
            .expect("tag key layout");
        assert_eq!(digest.len(), 32);
        assert!(digest
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(keys.tag_key("product-42"), keys.tag_key("product-43"));
    }

    #[test]
    fn keys_reveal_nothing_from_the_request() {
        let keys = deriver();
        let target = canon("/account/secret-token?email=alice").unwrap();
        let vary = [vary_entry("authorization", Some(b"Bearer alice"))];
        let key = keys.request_key(&Method::GET, &target, &vary);
        for text in [
            key.entry_key().to_owned(),
            key.lock_key(),
            key.generation_key(),
            keys.tag_key("alice@example.com"),
        ] {
            for word in [
                "account",
                "secret",
                "email",
                "alice",
                "example",
                "authorization",
            ] {
                assert!(!text.contains(word), "{text} contains {word}");
            }
        }
    }

    #[test]
    fn path_key_prefix_canonicalises_like_requests() {
        let keys = deriver();
        let key = keys.request_key(&Method::GET, &canon("/~a?x=1").unwrap(), &[]);
        let head = key.generation_key();
        let head = head.strip_suffix(":g").unwrap();
        assert_eq!(keys.path_key_prefix("/%7ea").unwrap(), head);
        assert_eq!(keys.path_key_prefix("/%7Ea?y=2").unwrap(), head);
        assert_eq!(
            keys.path_key_prefix("").unwrap(),
            keys.path_key_prefix("/").unwrap()
        );
        assert_eq!(
            keys.path_key_prefix("/a/../b"),
            Err(KeyRejection::DotSegment)
        );
        assert_eq!(
            keys.path_key_prefix("a/b"),
            Err(KeyRejection::UnsupportedForm)
        );
        let long = format!("/{}", "a".repeat(MAX_TARGET_LEN));
        assert_eq!(keys.path_key_prefix(&long), Err(KeyRejection::TooLong));
    }

    #[test]
    fn digests_print_as_lower_case_hex_and_round_trip() {
        let bytes = [0xAB; 16];
        let digest = Digest::from_bytes(bytes);
        assert_eq!(digest.as_bytes(), &bytes);
        assert_eq!(digest.to_hex(), "ab".repeat(16));
        assert_eq!(digest.to_string(), digest.to_hex());
        let mixed = Digest::from_bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 255]);
        assert_eq!(mixed.to_hex(), "000102030405060708090a0b0c0d0eff");
    }

    #[test]
    fn rejection_names_are_stable() {
        let all = [
            (KeyRejection::DotSegment, "dot-segment"),
            (KeyRejection::EncodedSlash, "encoded-slash"),
            (KeyRejection::Backslash, "backslash"),
            (KeyRejection::Nul, "nul"),
            (KeyRejection::InvalidEscape, "invalid-escape"),
            (KeyRejection::AmbiguousHost, "ambiguous-host"),
            (KeyRejection::MissingHost, "missing-host"),
            (KeyRejection::TooLong, "too-long"),
            (KeyRejection::UnsupportedForm, "unsupported-form"),
        ];
        for (rejection, name) in all {
            assert_eq!(rejection.as_str(), name);
            assert!(rejection.to_string().starts_with("request not keyed: "));
        }
    }

    #[test]
    fn vary_values_combine_lines_and_trim_whitespace() {
        let mut headers = HeaderMap::new();
        headers.append(ACCEPT_ENCODING, HeaderValue::from_static(" gzip ,br\t"));
        headers.append(ACCEPT_ENCODING, HeaderValue::from_static("zstd"));
        let one_line = {
            let mut h = HeaderMap::new();
            h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip, br, zstd"));
            h
        };
        let fields = [ACCEPT_ENCODING, ACCEPT];
        let values = vary_values(&fields, &headers);
        assert_eq!(
            values,
            vec![
                (ACCEPT_ENCODING, Some(b"gzip, br, zstd".to_vec())),
                (ACCEPT, None)
            ]
        );
        assert_eq!(vary_values(&fields, &one_line), values);
    }

    #[test]
    fn vary_values_keep_empty_and_quoted_elements() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(""));
        assert_eq!(
            vary_values(&[ACCEPT], &headers),
            vec![(ACCEPT, Some(Vec::new()))]
        );

        headers.insert(ACCEPT, HeaderValue::from_static("a;q=\"x,  y\" ,b"));
        assert_eq!(
            vary_values(&[ACCEPT], &headers),
            vec![(ACCEPT, Some(b"a;q=\"x,  y\", b".to_vec()))]
        );

        headers.insert(ACCEPT, HeaderValue::from_static("a,,b"));
        headers.append(ACCEPT, HeaderValue::from_static(""));
        assert_eq!(
            vary_values(&[ACCEPT], &headers),
            vec![(ACCEPT, Some(b"a, , b, ".to_vec()))]
        );
    }

    #[test]
    fn vary_values_do_not_change_case_or_order() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("Text/HTML, a"));
        let mut swapped = HeaderMap::new();
        swapped.insert(ACCEPT, HeaderValue::from_static("a, Text/HTML"));
        assert_eq!(
            vary_values(&[ACCEPT], &headers),
            vec![(ACCEPT, Some(b"Text/HTML, a".to_vec()))]
        );
        assert_ne!(
            vary_values(&[ACCEPT], &headers),
            vary_values(&[ACCEPT], &swapped)
        );
    }

    #[test]
    fn canonicalising_twice_is_canonicalising_once() {
        for uri in [
            "/%7ea/%c3%a9?b=%2f&a=1&a=0",
            "/p?",
            "/p?&&",
            "/caf\u{e9}?x=\u{e9}",
        ] {
            let once = canon(uri).unwrap();
            assert_eq!(refed(&once), Ok(once.clone()), "{uri}");
        }
    }

    // --- Properties ---------------------------------------------------------------------------

    fn query_of(params: &[(String, Option<String>)]) -> String {
        params
            .iter()
            .map(|(name, value)| match value {
                Some(value) => format!("{name}={value}"),
                None => name.clone(),
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Short names and values from a tiny alphabet (so collisions are common), with `%61` as a
    /// second spelling of `a` and `%2b`/`%2B` as an escape that must stay distinct from `+`.
    fn query_token() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "%61", "%2b", "%2B", "+"]),
            0..3,
        )
        .prop_map(|parts: Vec<&str>| parts.concat())
    }

    /// A parsed query as a list of (name, optional value).
    type Params = Vec<(String, Option<String>)>;

    fn params() -> impl Strategy<Value = Params> {
        prop::collection::vec((query_token(), prop::option::of(query_token())), 1..6)
    }

    /// Two parameter lists: either unrelated, or the second a shuffle of the first with some
    /// `%61` escapes written plainly (so equal multimaps are generated often, not by luck).
    fn query_pair() -> impl Strategy<Value = (Params, Params)> {
        let unrelated = (params(), params());
        let related = params().prop_flat_map(|a| {
            let len = a.len();
            (
                Just(a.clone()),
                Just(a).prop_shuffle(),
                prop::collection::vec(any::<bool>(), len),
            )
                .prop_map(|(a, shuffled, respell)| {
                    let b = shuffled
                        .into_iter()
                        .zip(respell)
                        .map(|((name, value), respell)| {
                            if respell {
                                (
                                    name.replace("%61", "a"),
                                    value.map(|v| v.replace("%61", "a")),
                                )
                            } else {
                                (name, value)
                            }
                        })
                        .collect();
                    (a, b)
                })
        });
        prop_oneof![unrelated, related]
    }

    /// What a parser that percent-decodes sees, as name -> values in order.
    fn multimap(params: &[(String, Option<String>)]) -> BTreeMap<String, Vec<Option<String>>> {
        let decode = |text: &str| text.replace("%61", "a").replace("%2b", "%2B");
        let mut map: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
        for (name, value) in params {
            map.entry(decode(name))
                .or_default()
                .push(value.as_deref().map(decode));
        }
        map
    }

    proptest! {
        #[test]
        fn canonicalize_never_panics_and_is_idempotent(
            raw in "[/a-zA-Z0-9%._~;=&+?,:@!$'()*\\[\\]\\\\|{}\"-]{0,48}|/[\\PC]{0,16}"
        ) {
            let text = if raw.starts_with('/') { raw } else { format!("/{raw}") };
            if let Ok(uri) = text.parse::<Uri>() {
                let headers = headers_with_host("Example.com:80");
                if let Ok(once) = deriver().canonicalize(&Method::GET, &uri, &headers) {
                    prop_assert_eq!(refed(&once), Ok(once.clone()));
                }
            }
        }

        #[test]
        fn canonicalize_never_panics_on_any_accepted_uri(raw in any::<String>()) {
            if let Ok(uri) = raw.parse::<Uri>() {
                let _ = deriver().canonicalize(&Method::GET, &uri, &HeaderMap::new());
                let _ = deriver().canonicalize(&Method::GET, &uri, &headers_with_host("a.b"));
            }
            let _ = deriver().path_key_prefix(&raw);
        }

        #[test]
        fn the_order_of_distinct_names_does_not_change_the_key(
            (params, shuffled) in prop::collection::btree_map(
                "[a-zA-Z0-9._~%]{1,5}",
                prop::option::of("[a-zA-Z0-9._~+%=]{0,5}"),
                1..8,
            )
            .prop_map(|map| map.into_iter().collect::<Vec<_>>())
            .prop_flat_map(|params| (Just(params.clone()), Just(params).prop_shuffle()))
        ) {
            let a = canon(&format!("/p?{}", query_of(&params)));
            let b = canon(&format!("/p?{}", query_of(&shuffled)));
            prop_assert_eq!(a.clone(), b);
            if let Ok(target) = a {
                let keys = deriver();
                let key_a = keys.request_key(&Method::GET, &target, &[]);
                let target_b = canon(&format!("/p?{}", query_of(&shuffled))).unwrap();
                prop_assert_eq!(key_a, keys.request_key(&Method::GET, &target_b, &[]));
            }
        }

        #[test]
        fn swapping_the_values_of_a_repeated_name_changes_the_key(
            name in "[a-z]{1,4}",
            first in "[a-z0-9]{0,4}",
            second in "[a-z0-9]{0,4}",
            other in "[a-z]{1,4}=[0-9]{1,2}",
        ) {
            prop_assume!(first != second);
            let a = entry_key(&format!("/p?{other}&{name}={first}&{name}={second}"));
            let b = entry_key(&format!("/p?{name}={second}&{other}&{name}={first}"));
            prop_assert_ne!(a, b);
        }

        #[test]
        fn keys_are_equal_exactly_when_the_parameter_multimaps_are(
            (a, b) in query_pair(),
        ) {
            let key_a = entry_key(&format!("/p?{}", query_of(&a)));
            let key_b = entry_key(&format!("/p?{}", query_of(&b)));
            prop_assert_eq!(key_a == key_b, multimap(&a) == multimap(&b));
        }
    }
}

//! The entry points of the fuzz targets, shared with the corpus replay test of the main crate
//! (`tests/corpus_replay.rs` includes this file as a module), so that CI runs every corpus file
//! through exactly the code the fuzzer runs, without needing cargo-fuzz.
//!
//! Each entry point takes arbitrary bytes, feeds them to the crate's public API and checks the
//! properties that must hold for every input; a violated property panics, which the fuzzer
//! reports as a crash.
//!
//! - [`key_normaliser`]: `host\ntarget[\ntarget]`. Each target that parses as an [`Uri`] is
//!   canonicalised; an accepted target must canonicalise to itself again (idempotence), must
//!   mean the same as the raw target (same percent-decoded path, same multimap of decoded query
//!   parameters), and must give a key in the documented layout. When two targets get the same
//!   key, they must mean the same.
//! - [`entry_decoder`]: the bytes as a stored value, and again re-signed with the fuzz secret
//!   (length field fixed, MAC recomputed) so that the payload parser is reached. Whatever
//!   decodes must encode and decode back to the same entry.
//! - [`cache_control`]: `selector byte` then header lines (`name: value`, or a bare line as a
//!   `Cache-Control` value). Parsing must be deterministic, and a response the policy stores
//!   must have a TTL within the configured range and none of the directives or fields that
//!   forbid storing it.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use http::{header, Extensions, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use sha2::Sha256;
use tower_response_cache::entry::EntryCodec;
use tower_response_cache::key::{CanonicalTarget, KeyDeriver};
use tower_response_cache::policy::{parse_age, vary_list, CacheControl, RequestInfo, VaryList};
use tower_response_cache::{Mode, Policy};

/// The secret keys and entries are made with, here and in the seed corpus.
pub const SECRET: &[u8] = b"the fuzz targets' secret, not for production";

/// The namespace of the keys made here.
pub const NAMESPACE: &str = "fz";

/// The largest envelope decoded: the layer's default (1 MiB of body plus 256 KiB of head).
pub const MAX_ENTRY: usize = 1024 * 1024 + 256 * 1024;

/// Length of the fixed envelope prefix (magic, version, kind, total length).
const PREFIX_LEN: usize = 10;
/// Length of the truncated MAC that ends an envelope.
const MAC_LEN: usize = 16;

fn deriver() -> &'static KeyDeriver {
    static DERIVER: OnceLock<KeyDeriver> = OnceLock::new();
    DERIVER.get_or_init(|| KeyDeriver::new(SECRET, NAMESPACE, "v1"))
}

fn codec() -> &'static EntryCodec {
    static CODEC: OnceLock<EntryCodec> = OnceLock::new();
    CODEC.get_or_init(|| EntryCodec::new(SECRET))
}

// ---------------------------------------------------------------------------------------------
// Key normaliser
// ---------------------------------------------------------------------------------------------

/// Decoded query parameters grouped by decoded name: the values in order, `None` for a name
/// without `=`.
type Params = BTreeMap<Vec<u8>, Vec<Option<Vec<u8>>>>;

/// What a target means to an origin that percent-decodes: the decoded path and parameters.
#[derive(Debug, PartialEq, Eq)]
struct Meaning {
    path: Vec<u8>,
    query: Option<Params>,
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `%XX` decoding only (`+` stays `+`); a broken escape is kept as it is.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let high = bytes.get(i + 1).copied().and_then(hex_value);
            let low = bytes.get(i + 2).copied().and_then(hex_value);
            if let (Some(high), Some(low)) = (high, low) {
                out.push(high * 16 + low);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

fn meaning(path: &str, query: Option<&str>) -> Meaning {
    let path = if path.is_empty() { "/" } else { path };
    let query = query.map(|query| {
        let mut params = Params::new();
        for pair in query.split('&') {
            let (name, value) = match pair.split_once('=') {
                Some((name, value)) => (name, Some(percent_decode(value.as_bytes()))),
                None => (pair, None),
            };
            params
                .entry(percent_decode(name.as_bytes()))
                .or_default()
                .push(value);
        }
        params
    });
    Meaning {
        path: percent_decode(path.as_bytes()),
        query,
    }
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `fz:v1:{<32 hex>}:e:<32 hex>`.
fn assert_key_layout(key: &str) {
    let rest = key
        .strip_prefix("fz:v1:{")
        .unwrap_or_else(|| panic!("key {key:?} does not start with the namespace"));
    let (path, rest) = rest
        .split_once("}:e:")
        .unwrap_or_else(|| panic!("key {key:?} has no entry marker"));
    assert!(is_lower_hex(path, 32), "path digest of {key:?}");
    assert!(is_lower_hex(rest, 32), "request digest of {key:?}");
}

/// The canonical target as a request target again: origin-form, or absolute-form in the
/// original scheme when there was one (the scheme decides which port is the default).
fn canonical_uri(target: &CanonicalTarget, scheme: Option<&str>) -> Uri {
    let mut text = match scheme {
        Some(scheme) => format!("{scheme}://{}{}", target.host(), target.path()),
        None => target.path().to_owned(),
    };
    if let Some(query) = target.query() {
        text.push('?');
        text.push_str(query);
    }
    Uri::try_from(text.as_str())
        .unwrap_or_else(|err| panic!("the canonical target {text:?} does not parse: {err}"))
}

/// Canonicalise one raw target and check it; `None` when it does not parse or is refused.
fn check_target(raw: &[u8], headers: &HeaderMap) -> Option<(String, Meaning)> {
    let uri = Uri::try_from(raw).ok()?;
    let keys = deriver();
    let target = keys.canonicalize(&Method::GET, &uri, headers).ok()?;

    // Idempotence: the canonical form, sent again with its host (and in the same scheme), is
    // itself.
    let mut host = HeaderMap::new();
    let value = HeaderValue::from_str(target.host())
        .unwrap_or_else(|err| panic!("canonical host {:?}: {err}", target.host()));
    host.insert(header::HOST, value);
    let again = keys
        .canonicalize(
            &Method::GET,
            &canonical_uri(&target, uri.scheme_str()),
            &host,
        )
        .unwrap_or_else(|err| panic!("the canonical form of {uri} is refused: {err}"));
    assert_eq!(again, target, "canonicalising twice differs from once");

    // Canonicalisation never changes what the target means.
    let canonical = meaning(target.path(), target.query());
    assert_eq!(
        canonical,
        meaning(uri.path(), uri.query()),
        "canonicalising {uri} changed its meaning"
    );

    let get = keys.request_key(&Method::GET, &target, &[]);
    let head = keys.request_key(&Method::HEAD, &target, &[]);
    assert_eq!(get.entry_key(), head.entry_key(), "HEAD and GET must share");
    assert_key_layout(get.entry_key());
    Some((get.entry_key().to_owned(), canonical))
}

/// Fuzz the key normaliser with `host\ntarget[\ntarget]` (see the module docs).
pub fn key_normaliser(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let host = parts.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    if !host.is_empty() {
        if let Ok(value) = HeaderValue::from_bytes(host) {
            headers.insert(header::HOST, value);
        }
    }
    let first = parts.next().and_then(|raw| check_target(raw, &headers));
    let second = parts.next().and_then(|raw| check_target(raw, &headers));
    if let (Some((key_a, meaning_a)), Some((key_b, meaning_b))) = (first, second) {
        if key_a == key_b {
            assert_eq!(meaning_a, meaning_b, "two different targets share a key");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entry decoder
// ---------------------------------------------------------------------------------------------

/// `data` with its last 16 bytes replaced by a valid MAC under [`SECRET`] and its length field
/// set to match, so that decoding gets past authentication. Inputs shorter than the prefix are
/// returned unchanged.
pub fn resign(data: &[u8]) -> Vec<u8> {
    if data.len() < PREFIX_LEN {
        return data.to_vec();
    }
    let signed_len = data.len().saturating_sub(MAC_LEN).max(PREFIX_LEN);
    let mut out = data.get(..signed_len).unwrap_or(data).to_vec();
    let total = u32::try_from(out.len().saturating_add(MAC_LEN)).unwrap_or(u32::MAX);
    if let Some(field) = out.get_mut(6..PREFIX_LEN) {
        field.copy_from_slice(&total.to_be_bytes());
    }
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(SECRET) else {
        return out;
    };
    mac.update(&out);
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(tag.get(..MAC_LEN).unwrap_or_default());
    out
}

fn decode_and_round_trip(bytes: &[u8]) {
    let codec = codec();
    if let Ok(entry) = codec.decode(bytes, MAX_ENTRY) {
        let encoded = codec.encode(&entry);
        assert_eq!(
            EntryCodec::declared_len(&encoded),
            Ok(encoded.len()),
            "the declared length of a re-encoded entry"
        );
        assert_eq!(
            codec.decode(&encoded, MAX_ENTRY).as_ref(),
            Ok(&entry),
            "a decoded entry does not survive encode and decode"
        );
    }
}

/// Fuzz the entry decoder with the bytes as stored, and re-signed (see the module docs).
pub fn entry_decoder(data: &[u8]) {
    if let Ok(declared) = EntryCodec::declared_len(data) {
        assert!(
            declared >= PREFIX_LEN + MAC_LEN,
            "declared length {declared}"
        );
    }
    decode_and_round_trip(data);
    decode_and_round_trip(&resign(data));
    // A cap below the value's size refuses it without reading it.
    let cap = data.len() / 2;
    if !data.is_empty() {
        assert!(codec().decode(data, cap.min(data.len() - 1)).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Cache-Control and the storability decision
// ---------------------------------------------------------------------------------------------

const STATUSES: [u16; 16] = [
    200, 203, 204, 206, 301, 304, 308, 404, 405, 410, 428, 429, 431, 500, 503, 511,
];

fn header_map(lines: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let name = line.get(..colon).unwrap_or_default();
                let value = line.get(colon + 1..).unwrap_or_default();
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
                {
                    headers.append(name, value);
                }
            }
            None => {
                if let Ok(value) = HeaderValue::from_bytes(line) {
                    headers.append(header::CACHE_CONTROL, value);
                }
            }
        }
    }
    headers
}

/// Fuzz the Cache-Control parser and [`Policy::storability`] (see the module docs).
pub fn cache_control(data: &[u8]) {
    let Some((&selector, lines)) = data.split_first() else {
        return;
    };
    let headers = header_map(lines);
    let cc = CacheControl::parse(&headers);
    assert_eq!(
        CacheControl::parse(&headers),
        cc,
        "parsing is not deterministic"
    );
    let _ = parse_age(&headers);

    let status = STATUSES
        .get(usize::from(selector) % STATUSES.len())
        .and_then(|code| StatusCode::from_u16(*code).ok())
        .unwrap_or(StatusCode::OK);
    let mode = if selector & 0x10 == 0 {
        Mode::Application
    } else {
        Mode::Shared
    };
    let policy = Policy::default()
        .mode(mode)
        .heuristic_freshness(selector & 0x20 != 0);
    let info = RequestInfo {
        authenticated: selector & 0x40 != 0,
        ..RequestInfo::default()
    };
    let response_time = SystemTime::now();
    let request_time = response_time
        .checked_sub(Duration::from_secs(1))
        .unwrap_or(response_time);
    let decided = policy.storability(
        &info,
        status,
        &headers,
        &Extensions::new(),
        request_time,
        response_time,
    );
    if let Ok(freshness) = decided {
        let (min, max) = policy.get_ttl_range();
        assert!(
            freshness.ttl >= min && freshness.ttl <= max,
            "TTL {:?} outside {min:?}..={max:?}",
            freshness.ttl
        );
        assert!(freshness.stale_while_revalidate <= max);
        assert!(freshness.stale_if_error <= max);
        assert!(
            !cc.no_store && !cc.private && !cc.no_cache,
            "{cc:?} was stored"
        );
        assert!(
            !headers.contains_key(header::SET_COOKIE),
            "Set-Cookie stored"
        );
        assert!(vary_list(&headers) != VaryList::Star, "Vary: * stored");
        assert!(policy.is_storable_status(status), "status {status} stored");
        if info.authenticated {
            assert!(
                cc.public || cc.s_maxage.is_some(),
                "authenticated answer stored"
            );
        }
    }
    // The same bytes as request headers.
    let _ = policy.classify(&Method::GET, "/", &headers);
}

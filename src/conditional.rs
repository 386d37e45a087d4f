//! Conditional requests: answering `If-None-Match` / `If-Modified-Since` with 304 from a stored
//! entry, and the validators the cache sends when it revalidates a stale entry.

use http::header::{
    CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, VARY,
};
use http::{HeaderMap, HeaderName};

/// The fields a 304 carries over from the stored response (RFC 9110 section 15.4.5).
const NOT_MODIFIED_FIELDS: [HeaderName; 7] = [
    CACHE_CONTROL,
    CONTENT_LOCATION,
    DATE,
    ETAG,
    EXPIRES,
    VARY,
    LAST_MODIFIED,
];

/// An entity tag's opaque part and whether it is weak.
fn parse_etag(tag: &str) -> Option<(bool, &str)> {
    let tag = tag.trim();
    let (weak, rest) = match tag.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, tag),
    };
    let opaque = rest.strip_prefix('"')?.strip_suffix('"')?;
    if opaque.contains('"') {
        return None;
    }
    Some((weak, opaque))
}

/// Whether an `If-None-Match` list matches `etag` (weak comparison, RFC 9110 section 8.8.3.2).
fn none_match_matches(list: &str, etag: &str) -> bool {
    let Some((_, stored)) = parse_etag(etag) else {
        return false;
    };
    list.split(',').any(|candidate| {
        let candidate = candidate.trim();
        candidate == "*" || parse_etag(candidate).is_some_and(|(_, opaque)| opaque == stored)
    })
}

/// Whether a request with these headers may be answered with 304 from a stored response with
/// `stored` headers (RFC 9110 section 13.2.2: If-None-Match first, If-Modified-Since only
/// without it).
pub(crate) fn is_not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let none_match: Vec<&str> = request
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !none_match.is_empty() {
        let Some(etag) = stored.get(ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        return none_match.iter().any(|list| none_match_matches(list, etag));
    }
    let Some(since) = request
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    let modified = stored
        .get(LAST_MODIFIED)
        .or_else(|| stored.get(DATE))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    modified.is_some_and(|modified| modified <= since)
}

/// The header fields of a 304 answered from `stored`.
pub(crate) fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in &NOT_MODIFIED_FIELDS {
        for value in stored.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Add the stored response's validators to a revalidation request that has none of its own.
/// Returns whether any was added.
pub(crate) fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) -> bool {
    if request.contains_key(IF_NONE_MATCH) || request.contains_key(IF_MODIFIED_SINCE) {
        return false;
    }
    let mut added = false;
    if let Some(etag) = stored.get(ETAG) {
        request.insert(IF_NONE_MATCH, etag.clone());
        added = true;
    }
    if let Some(modified) = stored.get(LAST_MODIFIED) {
        request.insert(IF_MODIFIED_SINCE, modified.clone());
        added = true;
    }
    added
}

/// The stored headers updated with those of a 304 (RFC 9111 section 3.2): every field the 304
/// carries replaces the stored one, except the framing fields of the stored body.
pub(crate) fn freshen(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    let keep = [
        http::header::CONTENT_LENGTH,
        http::header::CONTENT_ENCODING,
        http::header::CONTENT_TYPE,
        http::header::CONTENT_RANGE,
        http::header::TRANSFER_ENCODING,
    ];
    let mut replaced: Vec<&HeaderName> = Vec::new();
    for (name, value) in not_modified {
        if keep.contains(name) {
            continue;
        }
        if !replaced.contains(&name) {
            merged.remove(name);
            replaced.push(name);
        }
        merged.append(name.clone(), value.clone());
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_star() {
        let stored = headers(&[("etag", "W/\"v1\"")]);
        assert!(is_not_modified(
            &headers(&[("if-none-match", "\"v1\"")]),
            &stored
        ));
        assert!(is_not_modified(
            &headers(&[("if-none-match", "\"x\", W/\"v1\"")]),
            &stored
        ));
        assert!(is_not_modified(
            &headers(&[("if-none-match", "*")]),
            &stored
        ));
        assert!(!is_not_modified(
            &headers(&[("if-none-match", "\"v2\"")]),
            &stored
        ));
        assert!(!is_not_modified(
            &headers(&[("if-none-match", "v1")]),
            &stored
        ));
        // No stored ETag: an If-None-Match never matches.
        assert!(!is_not_modified(
            &headers(&[("if-none-match", "*")]),
            &HeaderMap::new()
        ));
    }

    #[test]
    fn if_modified_since_applies_only_without_if_none_match() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ]);
        let later = headers(&[("if-modified-since", "Tue, 01 Dec 2026 11:00:00 GMT")]);
        let earlier = headers(&[("if-modified-since", "Tue, 01 Dec 2026 09:00:00 GMT")]);
        assert!(is_not_modified(&later, &stored));
        assert!(!is_not_modified(&earlier, &stored));
        let mut both = later.clone();
        both.insert(IF_NONE_MATCH, "\"v2\"".parse().unwrap());
        assert!(!is_not_modified(&both, &stored));
        let garbage = headers(&[("if-modified-since", "yesterday")]);
        assert!(!is_not_modified(&garbage, &stored));
    }

    #[test]
    fn a_304_keeps_only_the_fields_it_must_carry() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
            ("content-length", "5"),
            ("x-custom", "1"),
        ]);
        let kept = not_modified_headers(&stored);
        assert_eq!(kept.len(), 2);
        assert!(kept.contains_key(ETAG) && kept.contains_key(CACHE_CONTROL));
    }

    #[test]
    fn validators_are_added_only_when_the_client_sent_none() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ]);
        let mut request = HeaderMap::new();
        assert!(add_validators(&mut request, &stored));
        assert_eq!(request[IF_NONE_MATCH], "\"v1\"");
        let mut own = headers(&[("if-none-match", "\"mine\"")]);
        assert!(!add_validators(&mut own, &stored));
        assert_eq!(own[IF_NONE_MATCH], "\"mine\"");
    }

    #[test]
    fn freshening_replaces_fields_but_keeps_the_body_framing() {
        let stored = headers(&[
            ("cache-control", "max-age=1"),
            ("content-length", "5"),
            ("x-a", "old"),
            ("x-a", "older"),
        ]);
        let update = headers(&[
            ("cache-control", "max-age=60"),
            ("content-length", "0"),
            ("x-a", "new"),
        ]);
        let merged = freshen(&stored, &update);
        assert_eq!(merged[CACHE_CONTROL], "max-age=60");
        assert_eq!(merged[http::header::CONTENT_LENGTH], "5");
        assert_eq!(merged.get_all("x-a").iter().count(), 1);
        assert_eq!(merged["x-a"], "new");
    }
}

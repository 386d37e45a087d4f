//! The headers the cache adds to responses: `Age` and `Cache-Status` (RFC 9211).
//!
//! Every response that passes through the layer carries its outcome twice: as a `Cache-Status`
//! header for clients and proxies, and as a [`CacheStatus`] value in the response extensions for
//! handlers, logs and tests. The key is never echoed: it would help an attacker probe the cache.

use std::fmt::Write as _;

use http::HeaderValue;

/// What the cache did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheOutcome {
    /// Answered from a fresh stored entry; the inner service was not called.
    Hit,
    /// Answered from a stale stored entry (stale-while-revalidate or stale-if-error).
    Stale,
    /// No usable entry: the inner service answered.
    Miss,
    /// No usable entry, but another request's fill answered this one too.
    Collapsed,
    /// The cache was not used for this request.
    Bypass,
}

/// The cache outcome of one response, in its extensions and its `Cache-Status` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStatus {
    /// What happened.
    pub outcome: CacheOutcome,
    /// Whether the response was (or is being) stored.
    pub stored: bool,
    /// Remaining freshness in seconds (negative when stale), when known.
    pub ttl: Option<i64>,
    /// Why the cache was bypassed or the response not stored, when it was.
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub(crate) fn bypass(detail: &'static str) -> Self {
        CacheStatus {
            outcome: CacheOutcome::Bypass,
            stored: false,
            ttl: None,
            detail: Some(detail),
        }
    }

    /// Whether the inner service was spared (a hit or a stale hit).
    pub fn is_hit(&self) -> bool {
        matches!(self.outcome, CacheOutcome::Hit | CacheOutcome::Stale)
    }

    /// The `Cache-Status` field value for a cache named `cache_name`.
    pub fn header_value(&self, cache_name: &str) -> HeaderValue {
        let mut value = String::with_capacity(cache_name.len() + 48);
        value.push_str(cache_name);
        value.push_str(match self.outcome {
            CacheOutcome::Hit | CacheOutcome::Stale => "; hit",
            CacheOutcome::Miss | CacheOutcome::Collapsed => "; fwd=miss",
            CacheOutcome::Bypass => "; fwd=bypass",
        });
        if self.stored {
            value.push_str("; stored");
        }
        if self.outcome == CacheOutcome::Collapsed {
            value.push_str("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(value, "; ttl={ttl}");
        }
        if let Some(detail) = self.detail {
            value.push_str("; detail=");
            value.push_str(detail);
        }
        // The cache name is checked when it is configured and the rest is ASCII tokens.
        HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static("cache"))
    }
}

/// Whether `name` can stand as the cache's name in `Cache-Status` (an RFC 8941 token).
pub(crate) fn is_valid_cache_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '*' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_its_rfc_9211_form() {
        let hit = CacheStatus {
            outcome: CacheOutcome::Hit,
            stored: false,
            ttl: Some(42),
            detail: None,
        };
        assert_eq!(hit.header_value("trc"), "trc; hit; ttl=42");
        let miss = CacheStatus {
            outcome: CacheOutcome::Miss,
            stored: true,
            ttl: Some(300),
            detail: None,
        };
        assert_eq!(miss.header_value("trc"), "trc; fwd=miss; stored; ttl=300");
        let collapsed = CacheStatus {
            outcome: CacheOutcome::Collapsed,
            ..miss
        };
        assert_eq!(
            collapsed.header_value("edge"),
            "edge; fwd=miss; stored; collapsed; ttl=300"
        );
        assert_eq!(
            CacheStatus::bypass("authorization").header_value("trc"),
            "trc; fwd=bypass; detail=authorization"
        );
    }

    #[test]
    fn cache_names_must_be_tokens() {
        assert!(is_valid_cache_name("trc"));
        assert!(is_valid_cache_name("edge-1.example"));
        assert!(!is_valid_cache_name(""));
        assert!(!is_valid_cache_name("1abc"));
        assert!(!is_valid_cache_name("a b"));
        assert!(!is_valid_cache_name("a;b"));
    }
}

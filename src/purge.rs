//! Purging: the [`Purger`] handle, tags, and the fences that make a purge beat in-flight fills.
//!
//! A purge removes entries by request URL (every Vary variant), by path (every query and variant
//! of one path), by tag (every entry stored with that tag), or everything in the namespace. Each
//! kind works on the store in bounded batches (`SCAN`/`SSCAN` + `UNLINK`, never `KEYS`), is
//! applied to this process's in-memory state, and is published on the events channel
//! (`<namespace>:events`) so every other instance applies it too.
//!
//! # The events schema
//!
//! Purge events are JSON, and anyone can publish them without linking this crate:
//!
//! ```text
//! {"purge":{"url":"/users/42?full=1"}}   one request's entries, all variants (a URL without a
//!                                        host means every host)
//! {"purge":{"path":"/users/42"}}         every query and variant of a path
//! {"purge":{"tag":"user:42"}}            every entry stored with the tag
//! {"purge":{"all":true}}                 everything in the namespace
//! ```
//!
//! for example `redis-cli PUBLISH trc:events '{"purge":{"tag":"user:42"}}'`. An event from
//! outside is applied to the store by one instance (they elect it with a short lock) and to the
//! in-memory state of all. Malformed events are logged and ignored.
//!
//! # Purges and fills
//!
//! A purge always wins over a fill that was running when it happened. Path purges bump the
//! path's generation in the store: fills write with a script that checks the generation they
//! started under, and entries carry their generation, so older ones read as misses. URL, tag and
//! namespace purges are also remembered for a while by every instance (the *fences*): a fill that
//! started before such a purge and would store a matching entry does not store it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, Method, Uri};
use serde_json::Value;

use crate::entry::{StoredEntry, StoredResponse};
use crate::error::Error;
use crate::layer::{Config, State};

/// Keys handled per store round trip in bulk purges.
const BATCH: usize = 500;

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PurgeTarget {
    /// One request's entries (all Vary variants): a path with its query, with or without a
    /// scheme and host (the host does not narrow the purge).
    Url(String),
    /// Every query and Vary variant of one path.
    Path(String),
    /// Every entry stored with this tag.
    Tag(String),
    /// Everything in the namespace.
    All,
}

impl PurgeTarget {
    /// The event published for this purge (the public schema above).
    pub fn to_json(&self) -> String {
        let inner = match self {
            PurgeTarget::Url(url) => serde_json::json!({ "url": url }),
            PurgeTarget::Path(path) => serde_json::json!({ "path": path }),
            PurgeTarget::Tag(tag) => serde_json::json!({ "tag": tag }),
            PurgeTarget::All => serde_json::json!({ "all": true }),
        };
        serde_json::json!({ "purge": inner }).to_string()
    }

    /// Read a purge from the `purge` object of an event or an admin request:
    /// `{"url": ...}`, `{"path": ...}`, `{"tag": ...}` or `{"all": true}`, exactly one of them.
    pub fn from_json(value: &Value) -> Option<Self> {
        let object = value.as_object()?;
        if object.len() != 1 {
            return None;
        }
        let (kind, value) = object.iter().next()?;
        match (kind.as_str(), value) {
            ("url", Value::String(url)) => Some(PurgeTarget::Url(url.clone())),
            ("path", Value::String(path)) => Some(PurgeTarget::Path(path.clone())),
            ("tag", Value::String(tag)) => Some(PurgeTarget::Tag(tag.clone())),
            ("all", Value::Bool(true)) => Some(PurgeTarget::All),
            _ => None,
        }
    }
}

/// What a purge did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PurgeReport {
    /// Entries (and tag sets) removed from the store.
    pub removed: u64,
    /// Whether a path generation was bumped (so older entries read as misses even where they
    /// could not be removed).
    pub generation_bumped: bool,
    /// Store steps that failed; `0` means the purge is complete.
    pub failed_steps: u64,
}

impl PurgeReport {
    /// Whether every step of the purge succeeded.
    pub fn is_complete(&self) -> bool {
        self.failed_steps == 0
    }
}

/// Tags a handler sets on its response (a response extension), in addition to any from the
/// tag header (`Surrogate-Key` by default).
///
/// ```
/// use axum::response::IntoResponse;
/// use tower_response_cache::purge::CacheTags;
///
/// async fn user() -> impl IntoResponse {
///     let mut response = "a user".into_response();
///     response
///         .extensions_mut()
///         .insert(CacheTags(vec!["user:42".into(), "users".into()]));
///     response
/// }
/// # let _ = user;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheTags(pub Vec<String>);

/// The tags of a response: its extension's and those in its tag header, valid ones only.
pub(crate) fn response_tags(
    headers: &HeaderMap,
    extensions: &http::Extensions,
    header: Option<&HeaderName>,
) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    if let Some(CacheTags(extra)) = extensions.get::<CacheTags>() {
        tags.extend(extra.iter().filter(|t| is_valid_tag(t)).cloned());
    }
    if let Some(header) = header {
        for value in headers.get_all(header) {
            if let Ok(text) = value.to_str() {
                tags.extend(
                    text.split_ascii_whitespace()
                        .filter(|t| is_valid_tag(t))
                        .map(str::to_owned),
                );
            }
        }
    }
    tags.sort();
    tags.dedup();
    tags.truncate(256);
    tags
}

fn is_valid_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.len() <= 256 && !tag.chars().any(char::is_control)
}

/// A purge that in-flight fills must respect.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fence {
    Target([u8; 16]),
    Tag(String),
    All,
}

/// Recent purges, remembered long enough to outlive any fill that started before them.
#[derive(Debug, Default)]
pub(crate) struct Fences {
    recent: Mutex<VecDeque<(Instant, Fence)>>,
}

impl Fences {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, Fence)>> {
        match self.recent.lock() {
            Ok(recent) => recent,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn add(&self, fence: Fence, keep: Duration) {
        let now = Instant::now();
        let mut recent = self.lock();
        while recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > keep)
        {
            recent.pop_front();
        }
        if recent.len() < 100_000 {
            recent.push_back((now, fence));
        }
    }

    /// Whether a fill that started at `started` must not store `entry`.
    pub(crate) fn blocks(&self, started: Instant, entry: &StoredResponse) -> bool {
        let recent = self.lock();
        recent
            .iter()
            .rev()
            .take_while(|(at, _)| *at >= started)
            .any(|(_, fence)| match fence {
                Fence::All => true,
                Fence::Target(target) => *target == entry.target_digest,
                Fence::Tag(tag) => entry.tags.iter().any(|t| t == tag),
            })
    }
}

/// Removes entries: by request, by path, by tag, or everything. Cheap to clone; get one from
/// [`CacheLayer::purger`](crate::CacheLayer::purger) and use it from any handler or task.
///
/// # Example
///
/// ```
/// use tower_response_cache::{CacheLayer, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_response_cache::Error> {
/// let layer = CacheLayer::new(MemoryStore::new());
/// let purger = layer.purger();
/// let report = purger.purge_path("/users/42").await?;
/// assert!(report.is_complete());
/// purger.purge_tag("user:42").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Purger {
    pub(crate) config: Arc<Config>,
    pub(crate) state: Arc<State>,
}

impl std::fmt::Debug for Purger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Purger").finish_non_exhaustive()
    }
}

impl Purger {
    /// Remove one request's entries (every Vary variant): `"/users/42?full=1"`, or with a
    /// scheme and host (which does not narrow the purge).
    pub async fn purge_url(&self, url: &str) -> Result<PurgeReport, Error> {
        self.purge(PurgeTarget::Url(url.to_owned())).await
    }

    /// Remove every query and Vary variant of a path.
    pub async fn purge_path(&self, path: &str) -> Result<PurgeReport, Error> {
        self.purge(PurgeTarget::Path(path.to_owned())).await
    }

    /// Remove every entry stored with `tag`.
    pub async fn purge_tag(&self, tag: &str) -> Result<PurgeReport, Error> {
        self.purge(PurgeTarget::Tag(tag.to_owned())).await
    }

    /// Remove everything in the namespace.
    pub async fn purge_all(&self) -> Result<PurgeReport, Error> {
        self.purge(PurgeTarget::All).await
    }

    /// Apply `target` here and in the store, then tell every other instance.
    pub async fn purge(&self, target: PurgeTarget) -> Result<PurgeReport, Error> {
        let report = self.apply(&target, true).await?;
        let message = Event::purge(&target, &self.state.instance);
        let published = self
            .state
            .guard
            .run(
                self.config.write_deadline,
                self.config
                    .store
                    .publish(&self.config.events_channel, message),
            )
            .await;
        let mut report = report;
        if let Err(err) = published {
            self.state.counters.store_error(err.kind());
            report.failed_steps += 1;
        }
        Ok(report)
    }

    /// Apply a purge to this process's state and, when `to_store`, to the store.
    pub(crate) async fn apply(
        &self,
        target: &PurgeTarget,
        to_store: bool,
    ) -> Result<PurgeReport, Error> {
        let config = &self.config;
        let keep = config.lock_ttl.max(Duration::from_secs(1)) * 2;
        let mut report = PurgeReport::default();
        match target {
            PurgeTarget::Url(url) => {
                let (prefix, target_digest) = self.url_keys(url)?;
                self.state.fences.add(Fence::Target(target_digest), keep);
                if let Some(near) = &self.state.near {
                    near.drop_target(&target_digest);
                }
                if to_store {
                    self.purge_url_in_store(&prefix, &target_digest, &mut report)
                        .await;
                }
            }
            PurgeTarget::Path(path) => {
                let prefix = config
                    .deriver
                    .path_key_prefix(path)
                    .map_err(|err| Error::InvalidPurge(err.to_string()))?;
                if let Some(near) = &self.state.near {
                    near.drop_prefix(&prefix);
                }
                if to_store {
                    let (_, max) = config.policy.get_ttl_range();
                    let generation_key = format!("{prefix}:g");
                    match self
                        .run(config.store.bump_generation(&generation_key, max + keep))
                        .await
                    {
                        Ok(_) => report.generation_bumped = true,
                        Err(()) => report.failed_steps += 1,
                    }
                    self.delete_prefix(&format!("{prefix}:e:"), &mut report)
                        .await;
                }
            }
            PurgeTarget::Tag(tag) => {
                if !is_valid_tag(tag) {
                    return Err(Error::InvalidPurge("not a valid tag".to_owned()));
                }
                self.state.fences.add(Fence::Tag(tag.clone()), keep);
                if let Some(near) = &self.state.near {
                    near.drop_tag(tag);
                }
                if to_store {
                    self.purge_tag_in_store(tag, &mut report).await;
                }
            }
            PurgeTarget::All => {
                self.state.fences.add(Fence::All, keep);
                if let Some(near) = &self.state.near {
                    near.clear();
                }
                if to_store {
                    let prefix = format!("{}:", config.deriver.prefix());
                    self.delete_prefix(&prefix, &mut report).await;
                }
            }
        }
        if to_store {
            // Requests that read the store while it was being purged may have put what they
            // found back into the near cache: drop it again now that the store is clean.
            self.drop_near(target);
        }
        tracing::debug!(target: "tower_response_cache", removed = report.removed, failed = report.failed_steps, "purge applied");
        Ok(report)
    }

    /// Drop what `target` covers from the near cache.
    fn drop_near(&self, target: &PurgeTarget) {
        let Some(near) = &self.state.near else {
            return;
        };
        match target {
            PurgeTarget::Url(url) => {
                if let Ok((_, digest)) = self.url_keys(url) {
                    near.drop_target(&digest);
                }
            }
            PurgeTarget::Path(path) => {
                if let Ok(prefix) = self.config.deriver.path_key_prefix(path) {
                    near.drop_prefix(&prefix);
                }
            }
            PurgeTarget::Tag(tag) => near.drop_tag(tag),
            PurgeTarget::All => near.clear(),
        }
    }

    async fn run<T>(&self, call: crate::store::StoreFuture<'_, T>) -> Result<T, ()> {
        // Bulk steps get the write deadline, several times over: they are not on a request path.
        let deadline = self.config.write_deadline.max(Duration::from_millis(500));
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                self.state.counters.store_error(err.kind());
                Err(())
            }
            Err(_) => {
                self.state
                    .counters
                    .store_error(crate::StoreErrorKind::Timeout);
                Err(())
            }
        }
    }

    /// The path's key prefix and the target digest of a purge URL.
    fn url_keys(&self, url: &str) -> Result<(String, [u8; 16]), Error> {
        let invalid = |reason: &str| Error::InvalidPurge(reason.to_owned());
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        if uri.path_and_query().is_none() || !uri.path().starts_with('/') {
            return Err(invalid("the URL needs a path"));
        }
        let mut headers = HeaderMap::new();
        if uri.authority().is_none() {
            // The host is not part of the target digest; any valid one will do.
            headers.insert(
                http::header::HOST,
                http::HeaderValue::from_static("purge.invalid"),
            );
        }
        let config = &self.config;
        let target = config
            .deriver
            .canonicalize(&Method::GET, &uri, &headers)
            .map_err(|err| invalid(err.as_str()))?;
        let key = config.deriver.request_key(&Method::GET, &target, &[]);
        let prefix = config
            .deriver
            .path_key_prefix(uri.path())
            .map_err(|err| invalid(err.as_str()))?;
        Ok((prefix, *key.target_digest().as_bytes()))
    }

    /// Walk `prefix`'s keys page by page and unlink each page.
    async fn delete_prefix(&self, prefix: &str, report: &mut PurgeReport) {
        let store = &self.config.store;
        let mut cursor = 0;
        loop {
            let Ok((next, keys)) = self.run(store.scan_prefix(prefix, cursor, BATCH)).await else {
                report.failed_steps += 1;
                return;
            };
            for chunk in keys.chunks(BATCH) {
                match self.run(store.delete_many(chunk)).await {
                    Ok(removed) => report.removed += removed,
                    Err(()) => report.failed_steps += 1,
                }
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }

    /// Remove the path's entries whose target digest is `target`.
    async fn purge_url_in_store(&self, prefix: &str, target: &[u8; 16], report: &mut PurgeReport) {
        let store = &self.config.store;
        let entries_prefix = format!("{prefix}:e:");
        let mut cursor = 0;
        loop {
            let Ok((next, keys)) = self
                .run(store.scan_prefix(&entries_prefix, cursor, BATCH))
                .await
            else {
                report.failed_steps += 1;
                return;
            };
            for chunk in keys.chunks(BATCH) {
                let Ok(values) = self.run(store.get_many(chunk)).await else {
                    report.failed_steps += 1;
                    continue;
                };
                let matching: Vec<String> = chunk
                    .iter()
                    .zip(values)
                    .filter(|(_, value)| {
                        value.as_ref().is_some_and(|bytes| {
                            matches!(
                                self.config.codec.decode(bytes, self.config.max_entry_len()),
                                Ok(StoredEntry::Response(entry)) if entry.target_digest == *target
                            )
                        })
                    })
                    .map(|(key, _)| key.clone())
                    .collect();
                match self.run(store.delete_many(&matching)).await {
                    Ok(removed) => report.removed += removed,
                    Err(()) => report.failed_steps += 1,
                }
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }

    /// Remove every member of the tag's set, then the set.
    async fn purge_tag_in_store(&self, tag: &str, report: &mut PurgeReport) {
        let store = &self.config.store;
        let tag_key = self.config.deriver.tag_key(tag);
        let mut cursor = 0;
        loop {
            let Ok((next, members)) = self.run(store.tag_members(&tag_key, cursor, BATCH)).await
            else {
                report.failed_steps += 1;
                return;
            };
            for chunk in members.chunks(BATCH) {
                match self.run(store.delete_many(chunk)).await {
                    Ok(removed) => report.removed += removed,
                    Err(()) => report.failed_steps += 1,
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if self.run(store.delete(&tag_key)).await.is_err() {
            report.failed_steps += 1;
        }
    }
}

/// Purge events on the wire.
pub(crate) struct Event;

impl Event {
    /// The event for a purge made by instance `source`.
    pub(crate) fn purge(target: &PurgeTarget, source: &str) -> bytes::Bytes {
        let mut value: Value = serde_json::from_str(&target.to_json()).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.insert("source".to_owned(), Value::String(source.to_owned()));
        }
        bytes::Bytes::from(value.to_string())
    }
}

/// Apply a purge event that arrived on the channel.
pub(crate) async fn apply_event(
    purger: Purger,
    target: PurgeTarget,
    source: Option<String>,
    raw: bytes::Bytes,
) {
    let own = source.as_deref() == Some(purger.state.instance.as_str());
    if own {
        return;
    }
    // An instance of this crate already purged the store; an event from outside is applied to
    // the store by the one instance that wins a short election lock.
    let mut to_store = false;
    if source.is_none() {
        let digest = {
            use sha2::{Digest, Sha256};
            hex::encode(&Sha256::digest(&raw)[..16])
        };
        let lock_key = format!("{}:x:{digest}", purger.config.deriver.prefix());
        let won = purger
            .run(purger.config.store.try_lock(
                &lock_key,
                &purger.state.instance,
                Duration::from_secs(5),
            ))
            .await;
        to_store = matches!(won, Ok(true));
        if let Err(err) = purger.apply(&target, to_store).await {
            tracing::debug!(target: "tower_response_cache", error = %err, "ignoring a purge event that cannot be applied");
        }
        if to_store {
            // Purges are idempotent: release the election at once, so the same event published
            // again later is applied to the store again.
            let _ = purger
                .run(
                    purger
                        .config
                        .store
                        .unlock(&lock_key, &purger.state.instance),
                )
                .await;
            // The other instances dropped their near entries when the event arrived, maybe
            // before the store was clean; say it again now that it is.
            let message = Event::purge(&target, &purger.state.instance);
            let _ = purger
                .run(
                    purger
                        .config
                        .store
                        .publish(&purger.config.events_channel, message),
                )
                .await;
        }
        return;
    }
    if let Err(err) = purger.apply(&target, to_store).await {
        tracing::debug!(target: "tower_response_cache", error = %err, "ignoring a purge event that cannot be applied");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_targets_follow_the_public_schema() {
        let cases = [
            (
                PurgeTarget::Url("/users/42?full=1".into()),
                r#"{"purge":{"url":"/users/42?full=1"}}"#,
            ),
            (
                PurgeTarget::Path("/users/42".into()),
                r#"{"purge":{"path":"/users/42"}}"#,
            ),
            (
                PurgeTarget::Tag("user:42".into()),
                r#"{"purge":{"tag":"user:42"}}"#,
            ),
            (PurgeTarget::All, r#"{"purge":{"all":true}}"#),
        ];
        for (target, json) in cases {
            assert_eq!(target.to_json(), json);
            let value: Value = serde_json::from_str(json).unwrap();
            assert_eq!(PurgeTarget::from_json(&value["purge"]), Some(target));
        }
        for bad in [
            r#"{"all":false}"#,
            r#"{"tag":1}"#,
            r#"{"tag":"a","path":"/b"}"#,
            r#"{}"#,
            r#"[]"#,
            r#"{"everything":true}"#,
        ] {
            let value: Value = serde_json::from_str(bad).unwrap();
            assert_eq!(PurgeTarget::from_json(&value), None, "{bad}");
        }
    }

    #[test]
    fn tags_come_from_the_header_and_the_extension_and_bad_ones_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("surrogate-key", "user:1  users\tlist".parse().unwrap());
        let mut extensions = http::Extensions::new();
        extensions.insert(CacheTags(vec![
            "users".into(),
            String::new(),
            "x\u{7}".into(),
        ]));
        let name = HeaderName::from_static("surrogate-key");
        let tags = response_tags(&headers, &extensions, Some(&name));
        assert_eq!(tags, vec!["list", "user:1", "users"]);
        assert!(response_tags(&headers, &http::Extensions::new(), None).is_empty());
    }

    #[test]
    fn fences_block_only_fills_that_started_before_a_matching_purge() {
        let fences = Fences::default();
        let entry = StoredResponse {
            request_digest: [1; 16],
            target_digest: [2; 16],
            stored_at_ms: 0,
            generation: 0,
            ttl_secs: 60,
            initial_age_secs: 0,
            stale_while_revalidate_secs: 0,
            stale_if_error_secs: 0,
            status: http::StatusCode::OK,
            headers: HeaderMap::new(),
            body: bytes::Bytes::new(),
            trailers: None,
            tags: vec!["a".into()],
        };
        let before = Instant::now();
        fences.add(Fence::Tag("b".into()), Duration::from_secs(10));
        assert!(!fences.blocks(before, &entry));
        fences.add(Fence::Tag("a".into()), Duration::from_secs(10));
        assert!(fences.blocks(before, &entry));
        let after = Instant::now() + Duration::from_millis(1);
        assert!(!fences.blocks(after, &entry));
        fences.add(Fence::Target([2; 16]), Duration::from_secs(10));
        assert!(fences.blocks(before, &entry));
    }
}

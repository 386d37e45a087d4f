//! The events channel shared by every instance: fill notifications now, purges too.
//!
//! Each layer keeps one subscription to `<namespace>:events` (see
//! [`Store::subscribe`](crate::store::Store::subscribe)) and fans the messages out inside the
//! process. Messages are small JSON objects:
//!
//! - `{"fill":{"key":"<entry key>"}}`: a fill of that key ended (stored or not); instances waiting
//!   on the key's fill lock wake up and read the store again instead of polling it.
//! - `{"purge":{...}}` (optionally with `"source":"<instance>"`): the public purge schema, see
//!   the `purge` module.
//!
//! Anything that does not parse is logged and ignored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::purge::PurgeTarget;
use crate::store::Store;

/// What the layer does with a purge event: (target, the publishing instance if any, the raw
/// message).
pub(crate) type PurgeHandler = Arc<dyn Fn(PurgeTarget, Option<String>, Bytes) + Send + Sync>;

/// One message on the events channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Event {
    /// A fill ended.
    Fill {
        /// The entry key the fill was for.
        key: String,
    },
}

impl Event {
    pub(crate) fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// A purge event: `{"purge":{...}}` with an optional `"source"`.
fn parse_purge(message: &[u8]) -> Option<(PurgeTarget, Option<String>)> {
    let value: serde_json::Value = serde_json::from_slice(message).ok()?;
    let object = value.as_object()?;
    let target = PurgeTarget::from_json(object.get("purge")?)?;
    let source = match object.get("source") {
        None => None,
        Some(serde_json::Value::String(source)) => Some(source.clone()),
        Some(_) => return None,
    };
    if object.len() > 2 || (object.len() == 2 && source.is_none()) {
        return None;
    }
    Some((target, source))
}

/// The process side of the events channel: one subscription, many waiters.
#[derive(Debug, Default)]
pub(crate) struct Events {
    started: OnceLock<()>,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Events {
    /// Subscribe to `channel` once (needs a Tokio runtime; does nothing without one, or for a
    /// store without events).
    pub(crate) fn start(
        self: &Arc<Self>,
        store: &Arc<dyn Store>,
        channel: &str,
        on_purge: PurgeHandler,
    ) {
        if self.started.get().is_some() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.started.set(()).is_err() {
            return;
        }
        let Some(mut messages) = store.subscribe(channel) else {
            return;
        };
        let events: Weak<Events> = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(message) = messages.recv().await {
                let Some(events) = events.upgrade() else {
                    return;
                };
                if let Some(event) = Event::parse(&message) {
                    events.dispatch(event);
                } else if let Some((target, source)) = parse_purge(&message) {
                    on_purge(target, source, message);
                } else {
                    tracing::warn!(
                        target: "tower_response_cache",
                        "ignoring a malformed message on the events channel"
                    );
                }
            }
        });
    }

    fn dispatch(&self, event: Event) {
        match event {
            Event::Fill { key } => self.wake(&key),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        match self.waiters.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The notifier woken when `key`'s fill ends anywhere.
    pub(crate) fn waiter(&self, key: &str) -> Arc<Notify> {
        Arc::clone(self.lock().entry(key.to_owned()).or_default())
    }

    /// Wake everyone waiting on `key`.
    pub(crate) fn wake(&self, key: &str) {
        if let Some(notify) = self.lock().remove(key) {
            notify.notify_waiters();
        }
    }

    /// Drop the notifier of `key` if nobody else waits on it.
    pub(crate) fn forget(&self, key: &str, notify: Arc<Notify>) {
        let mut map = self.lock();
        // One count in the map, one here: nobody else holds it.
        if map.get(key).is_some_and(|n| Arc::ptr_eq(n, &notify)) && Arc::strong_count(&notify) <= 2
        {
            map.remove(key);
        }
    }

    #[cfg(test)]
    pub(crate) fn waiting_keys(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_events_round_trip_as_json() {
        let event = Event::Fill {
            key: "trc:v1:{ab}:e:cd".to_owned(),
        };
        let bytes = event.encode();
        assert_eq!(&bytes[..], br#"{"fill":{"key":"trc:v1:{ab}:e:cd"}}"#);
        assert_eq!(Event::parse(&bytes), Some(event));
        assert_eq!(Event::parse(b"{\"fill\":{}}"), None);
        assert_eq!(Event::parse(b"not json"), None);
    }

    #[test]
    fn purge_events_parse_with_and_without_a_source() {
        assert_eq!(
            parse_purge(br#"{"purge":{"tag":"user:42"}}"#),
            Some((PurgeTarget::Tag("user:42".into()), None))
        );
        assert_eq!(
            parse_purge(br#"{"purge":{"all":true},"source":"abc"}"#),
            Some((PurgeTarget::All, Some("abc".into())))
        );
        assert_eq!(parse_purge(br#"{"purge":{"all":true},"extra":1}"#), None);
        assert_eq!(parse_purge(br#"{"purge":"all"}"#), None);
        assert_eq!(parse_purge(b"garbage"), None);
    }

    #[tokio::test]
    async fn waking_a_key_wakes_its_waiters_and_forgets_it() {
        let events = Events::default();
        let notify = events.waiter("k");
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        events.wake("k");
        notified.await;
        assert_eq!(events.waiting_keys(), 0);
        let notify = events.waiter("j");
        events.forget("j", notify);
        assert_eq!(events.waiting_keys(), 0);
    }
}

//! Watches reflected into stores, shared by the controllers.

use std::fmt::Debug;

use futures::{Stream, StreamExt};
use kube::{
    Resource, ResourceExt,
    runtime::{
        WatchStreamExt, reflector,
        reflector::Store,
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// Reflects watch `events` into a store and passes on the objects they touch, calling
/// `on_change` with each (the store already holds the change then). The receiver turns true
/// once the watch has listed: kube's own store readiness wakes only one of several waiters, and
/// a controller built on the store is one already.
///
/// The watch retries by itself ([`WatchBackoff`](crate::backoff::WatchBackoff)); its errors are
/// logged here and never passed on. A kube `Controller` merges its watches into one stream and
/// backs that whole stream off (up to a minute) at any error, so one failing watch, or all of
/// them just after an apiserver restart, would leave every other watch unread for that long.
///
/// The stored objects carry no managedFields: nothing reads them, and dropping them halves the
/// memory and what every drift check serialises. Writing a stored object back whole must
/// leave `managedFields` unset, which keeps the server's.
pub fn reflect<K>(
    events: impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
    on_change: impl Fn(&K) + Send + 'static,
) -> (Store<K>, watch::Receiver<bool>, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let (listed_tx, listed) = watch::channel(false);
    let events = reflector(writer, events.modify(|object: &mut K| object.managed_fields_mut().clear()))
        .backoff(crate::backoff::WatchBackoff::default())
        .inspect(move |event| {
            if matches!(event, Ok(Event::InitDone)) {
                listed_tx.send_replace(true);
            }
        })
        .touched_objects()
        .filter_map(|object| {
            futures::future::ready(match object {
                Ok(object) => Some(Ok(object)),
                Err(error) => {
                    tracing::warn!(kind = %K::kind(&()), %error, "watch failed; it retries by itself");
                    None
                }
            })
        })
        .inspect(move |object: &Result<K, watcher::Error>| {
            if let Ok(object) = object {
                on_change(object);
            }
        });
    (reader, listed, events)
}

/// Waits until every watch has listed; `false` if one stopped first.
pub async fn all_listed(listed: &[watch::Receiver<bool>]) -> bool {
    for receiver in listed {
        if receiver.clone().wait_for(|listed| *listed).await.is_err() {
            return false;
        }
    }
    true
}

/// How long a reconcile waits for the watches to list (or the first plan) before it gives up
/// and is retried: waiting for ever would also hold up a graceful shutdown.
pub const SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// [`all_listed`] for at most [`SYNC_WAIT`]; `false` when that ran out.
pub async fn listed_soon(listed: &[watch::Receiver<bool>]) -> bool {
    tokio::time::timeout(SYNC_WAIT, all_listed(listed)).await.unwrap_or(false)
}

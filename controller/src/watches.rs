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
/// `on_change` after each (the store already holds the change then). The receiver turns true
/// once the watch has listed: kube's own store readiness wakes only one of several waiters, and
/// a controller built on the store is one already.
///
/// The stored objects carry no managedFields: nothing reads them, and dropping them halves the
/// memory and what every drift check serialises. Writing a stored object back whole must
/// leave `managedFields` unset, which keeps the server's.
pub fn reflect<K>(
    events: impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
    on_change: impl Fn() + Send + 'static,
) -> (Store<K>, watch::Receiver<bool>, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let (listed_tx, listed) = watch::channel(false);
    let events = reflector(writer, events.modify(|object: &mut K| object.managed_fields_mut().clear()))
        .default_backoff()
        .inspect(move |event| {
            if matches!(event, Ok(Event::InitDone)) {
                listed_tx.send_replace(true);
            }
        })
        .touched_objects()
        .inspect(move |_| on_change());
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

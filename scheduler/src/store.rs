//! Objects of a kind as the scheduler keeps them from a watch.

use std::collections::{HashMap, HashSet};

use kube::{Resource, runtime::watcher};

/// Objects of one kind by `namespace/name` (or name), kept from a watch: a relist forgets what
/// it no longer lists.
pub struct Store<K> {
    objects: HashMap<String, K>,
    relisting: Option<HashSet<String>>,
    pub synced: bool,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Store { objects: HashMap::new(), relisting: None, synced: false }
    }
}

fn store_key<K: Resource>(object: &K) -> String {
    match object.meta().namespace.as_deref() {
        Some(namespace) => format!("{namespace}/{}", object.meta().name.as_deref().unwrap_or_default()),
        None => object.meta().name.clone().unwrap_or_default(),
    }
}

impl<K: Resource> Store<K> {
    /// Applies a watch event; returns the keys that changed.
    pub fn apply(&mut self, event: watcher::Event<K>) -> Vec<String> {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(object) | watcher::Event::Apply(object) => {
                let key = store_key(&object);
                if let Some(seen) = &mut self.relisting {
                    seen.insert(key.clone());
                }
                self.objects.insert(key.clone(), object);
                vec![key]
            }
            watcher::Event::Delete(object) => {
                let key = store_key(&object);
                self.objects.remove(&key);
                vec![key]
            }
            watcher::Event::InitDone => {
                self.synced = true;
                let Some(seen) = self.relisting.take() else { return Vec::new() };
                let gone: Vec<String> =
                    self.objects.keys().filter(|key| !seen.contains(*key)).cloned().collect();
                for key in &gone {
                    self.objects.remove(key);
                }
                gone
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&K> {
        self.objects.get(key)
    }

    pub fn values(&self) -> impl Iterator<Item = &K> {
        self.objects.values()
    }
}

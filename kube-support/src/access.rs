//! Who a caller is and what they may do, asked of the apiserver: a bearer token is reviewed
//! (TokenReview: ServiceAccount tokens and whatever else the apiserver accepts) and each action
//! is a SubjectAccessReview, so admins grant access with ordinary Roles and RoleBindings. Both
//! answers are cached for a short time: a token revoked, or a binding removed, stops working
//! within `ttl`. An answer past half its time is still served while it is asked again in the
//! background, so a steady caller never waits for the apiserver.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};
use prometheus_client::metrics::{counter::Counter, family::Family};

/// Cache lookups by what was looked up (`token`, `access`) and the result (`hit`, `miss`).
pub type CacheLookups = Family<Vec<(&'static str, &'static str)>, Counter>;

/// A caller as the apiserver knows them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub uid: Option<String>,
}

/// What a caller wants to do, as a SubjectAccessReview asks it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Action {
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub verb: String,
    /// `None` for a cluster-scoped resource or every namespace.
    pub namespace: Option<String>,
    /// `None` for every object (or one not named yet, as in `create`).
    pub name: Option<String>,
}

/// The apiserver's answer to an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Refused, with the apiserver's reason (or "no role allows it").
    Denied(String),
}

/// What a [`TtlCache`] holds for a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<V> {
    Fresh(V),
    /// Valid, but past half its time to live: use it and ask again (only this caller is told
    /// to, until the new answer is put or the old one expires).
    Refresh(V),
    Missing,
}

/// Entries of a time-limited cache; what is older than the time to live is asked again.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    /// Each value, when it was put, and whether someone is asking for it again.
    entries: Mutex<HashMap<K, (V, Instant, bool)>>,
    /// Entries beyond this are dropped (oldest first would cost a heap; dropping expired ones
    /// first and then clearing keeps memory bounded under a flood of distinct tokens).
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> TtlCache<K, V> {
        TtlCache { ttl, entries: Mutex::new(HashMap::new()), capacity }
    }

    /// The value of `key` if it was put less than the time to live before `now`.
    pub fn lookup(&self, key: &K, now: Instant) -> Lookup<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match entries.get_mut(key) {
            Some((value, at, refreshing)) if now.duration_since(*at) < self.ttl => {
                if now.duration_since(*at) >= self.ttl / 2 && !*refreshing {
                    *refreshing = true;
                    Lookup::Refresh(value.clone())
                } else {
                    Lookup::Fresh(value.clone())
                }
            }
            _ => Lookup::Missing,
        }
    }

    pub fn put(&self, key: K, value: V, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, (_, at, _)| now.duration_since(*at) < self.ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, now, false));
    }
}

/// Reviews tokens and actions with the apiserver, caching answers for `ttl`.
pub struct Access {
    client: Client,
    /// Keyed by the token's SHA-256: no token is kept in memory longer than a request.
    tokens: Arc<TtlCache<[u8; 32], Option<User>>>,
    decisions: Arc<TtlCache<(User, Action), Decision>>,
    lookups: CacheLookups,
}

/// Distinct tokens and decisions kept at most.
const CAPACITY: usize = 100_000;

impl Access {
    pub fn new(client: Client, ttl: Duration) -> Access {
        Access {
            client,
            tokens: Arc::new(TtlCache::new(ttl, CAPACITY)),
            decisions: Arc::new(TtlCache::new(ttl, CAPACITY)),
            lookups: CacheLookups::default(),
        }
    }

    /// The cache lookups so far, for a component's metrics (a handle on the same counters).
    pub fn cache_lookups(&self) -> CacheLookups {
        self.lookups.clone()
    }

    /// The cached answer, or `review`'s; an answer due for a refresh is served and asked again
    /// in the background (a failed refresh leaves it to expire).
    async fn cached<K, V, F>(
        &self,
        what: &'static str,
        cache: &Arc<TtlCache<K, V>>,
        key: K,
        review: impl FnOnce() -> F,
    ) -> Result<V, kube::Error>
    where
        K: Eq + Hash + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        F: Future<Output = Result<V, kube::Error>> + Send + 'static,
    {
        let lookup = cache.lookup(&key, Instant::now());
        let result = if matches!(lookup, Lookup::Missing) { "miss" } else { "hit" };
        self.lookups.get_or_create(&vec![("kind", what), ("result", result)]).inc();
        match lookup {
            Lookup::Fresh(value) => Ok(value),
            Lookup::Refresh(value) => {
                let (cache, review) = (cache.clone(), review());
                tokio::spawn(async move {
                    match review.await {
                        Ok(fresh) => cache.put(key, fresh, Instant::now()),
                        Err(err) => tracing::debug!(%err, "refreshing a cached review failed; it expires"),
                    }
                });
                Ok(value)
            }
            Lookup::Missing => {
                let value = review().await?;
                cache.put(key, value.clone(), Instant::now());
                Ok(value)
            }
        }
    }

    /// The user of `token`; `None` when the apiserver does not accept it.
    pub async fn authenticate(&self, token: &str) -> Result<Option<User>, kube::Error> {
        let mut key = [0u8; 32];
        key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
        self.cached("token", &self.tokens, key, || review_token(self.client.clone(), token.to_string())).await
    }

    /// Whether `user` may do `action`.
    pub async fn authorize(&self, user: &User, action: &Action) -> Result<Decision, kube::Error> {
        let key = (user.clone(), action.clone());
        let review = || review_access(self.client.clone(), user.clone(), action.clone());
        self.cached("access", &self.decisions, key, review).await
    }
}

/// The apiserver's TokenReview of `token`.
async fn review_token(client: Client, token: String) -> Result<Option<User>, kube::Error> {
    let review = TokenReview { spec: TokenReviewSpec { token, ..Default::default() }, ..Default::default() };
    let reviewed = Api::<TokenReview>::all(client).create(&PostParams::default(), &review).await?;
    let status = reviewed.status.unwrap_or_default();
    Ok(status.user.filter(|_| status.authenticated == Some(true)).and_then(|user| {
        user.username.map(|name| User { name, groups: user.groups.unwrap_or_default(), uid: user.uid })
    }))
}

/// The apiserver's SubjectAccessReview of `user` doing `action`.
async fn review_access(client: Client, user: User, action: Action) -> Result<Decision, kube::Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name),
            groups: Some(user.groups),
            uid: user.uid,
            resource_attributes: Some(ResourceAttributes {
                group: Some(action.group),
                resource: Some(action.resource),
                subresource: action.subresource,
                verb: Some(action.verb),
                namespace: action.namespace,
                name: action.name,
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let reviewed = Api::<SubjectAccessReview>::all(client).create(&PostParams::default(), &review).await?;
    let status = reviewed.status.unwrap_or_default();
    Ok(if status.allowed {
        Decision::Allowed
    } else {
        Decision::Denied(
            status.reason.filter(|r| !r.is_empty()).unwrap_or_else(|| "no role allows it".into()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_time_to_live() {
        let cache: TtlCache<&str, u32> = TtlCache::new(Duration::from_secs(10), 10);
        let start = Instant::now();
        cache.put("token", 1, start);
        assert_eq!(cache.lookup(&"token", start + Duration::from_secs(4)), Lookup::Fresh(1));
        assert_eq!(cache.lookup(&"token", start + Duration::from_secs(10)), Lookup::Missing, "stale");
        assert_eq!(cache.lookup(&"other", start), Lookup::Missing);
    }

    #[test]
    fn past_half_its_time_an_entry_is_served_and_one_caller_refreshes_it() {
        let cache: TtlCache<&str, u32> = TtlCache::new(Duration::from_secs(10), 10);
        let start = Instant::now();
        cache.put("token", 1, start);
        let later = start + Duration::from_secs(6);
        assert_eq!(cache.lookup(&"token", later), Lookup::Refresh(1));
        assert_eq!(cache.lookup(&"token", later), Lookup::Fresh(1), "one refresh at a time");
        cache.put("token", 2, later);
        assert_eq!(cache.lookup(&"token", later + Duration::from_secs(1)), Lookup::Fresh(2));
        // A refresh that never answers leaves the old entry to expire: never served past its time.
        assert_eq!(cache.lookup(&"token", later + Duration::from_secs(5)), Lookup::Refresh(2));
        assert_eq!(cache.lookup(&"token", later + Duration::from_secs(10)), Lookup::Missing);
    }

    #[test]
    fn a_full_cache_drops_stale_entries_first_and_never_grows_past_its_capacity() {
        let cache: TtlCache<u32, u32> = TtlCache::new(Duration::from_secs(10), 3);
        let start = Instant::now();
        cache.put(1, 1, start);
        cache.put(2, 2, start + Duration::from_secs(5));
        cache.put(3, 3, start + Duration::from_secs(6));
        cache.put(4, 4, start + Duration::from_secs(11));
        let later = start + Duration::from_secs(11);
        assert_eq!(
            (cache.lookup(&1, later), cache.lookup(&2, later), cache.lookup(&4, later)),
            (Lookup::Missing, Lookup::Refresh(2), Lookup::Fresh(4))
        );
        cache.put(5, 5, later);
        cache.put(6, 6, later);
        assert!(cache.entries.lock().unwrap().len() <= 3);
        assert_eq!(cache.lookup(&6, later), Lookup::Fresh(6));
    }
}

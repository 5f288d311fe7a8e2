//! Who a caller is and what they may do, asked of the apiserver: a bearer token is reviewed
//! (TokenReview: ServiceAccount tokens and whatever else the apiserver accepts) and each action
//! is a SubjectAccessReview, so admins grant access with ordinary Roles and RoleBindings. Both
//! answers are cached for a short time: a token revoked, or a binding removed, stops working
//! within `ttl`.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
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

/// Entries of a time-limited cache; what is older than the time to live is asked again.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (V, Instant)>>,
    /// Entries beyond this are dropped (oldest first would cost a heap; dropping expired ones
    /// first and then clearing keeps memory bounded under a flood of distinct tokens).
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> TtlCache<K, V> {
        TtlCache { ttl, entries: Mutex::new(HashMap::new()), capacity }
    }

    /// The value of `key` if it was put less than the time to live before `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.get(key).filter(|(_, at)| now.duration_since(*at) < self.ttl).map(|(value, _)| value.clone())
    }

    pub fn put(&self, key: K, value: V, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, now));
    }
}

/// Reviews tokens and actions with the apiserver, caching answers for `ttl`.
pub struct Access {
    client: Client,
    /// Keyed by the token's SHA-256: no token is kept in memory longer than a request.
    tokens: TtlCache<[u8; 32], Option<User>>,
    decisions: TtlCache<(User, Action), Decision>,
    lookups: CacheLookups,
}

/// Distinct tokens and decisions kept at most.
const CAPACITY: usize = 100_000;

impl Access {
    pub fn new(client: Client, ttl: Duration) -> Access {
        Access {
            client,
            tokens: TtlCache::new(ttl, CAPACITY),
            decisions: TtlCache::new(ttl, CAPACITY),
            lookups: CacheLookups::default(),
        }
    }

    /// The cache lookups so far, for a component's metrics (a handle on the same counters).
    pub fn cache_lookups(&self) -> CacheLookups {
        self.lookups.clone()
    }

    fn counted<T>(&self, what: &'static str, cached: Option<T>) -> Option<T> {
        let result = if cached.is_some() { "hit" } else { "miss" };
        self.lookups.get_or_create(&vec![("kind", what), ("result", result)]).inc();
        cached
    }

    /// The user of `token`; `None` when the apiserver does not accept it.
    pub async fn authenticate(&self, token: &str) -> Result<Option<User>, kube::Error> {
        let mut key = [0u8; 32];
        key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
        if let Some(user) = self.counted("token", self.tokens.get(&key, Instant::now())) {
            return Ok(user);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_string(), ..Default::default() },
            ..Default::default()
        };
        let reviewed =
            Api::<TokenReview>::all(self.client.clone()).create(&PostParams::default(), &review).await?;
        let status = reviewed.status.unwrap_or_default();
        let user = status.user.filter(|_| status.authenticated == Some(true)).and_then(|user| {
            user.username.map(|name| User { name, groups: user.groups.unwrap_or_default(), uid: user.uid })
        });
        self.tokens.put(key, user.clone(), Instant::now());
        Ok(user)
    }

    /// Whether `user` may do `action`.
    pub async fn authorize(&self, user: &User, action: &Action) -> Result<Decision, kube::Error> {
        let key = (user.clone(), action.clone());
        if let Some(decision) = self.counted("access", self.decisions.get(&key, Instant::now())) {
            return Ok(decision);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                uid: user.uid.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(action.group.clone()),
                    resource: Some(action.resource.clone()),
                    subresource: action.subresource.clone(),
                    verb: Some(action.verb.clone()),
                    namespace: action.namespace.clone(),
                    name: action.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let decision = if status.allowed {
            Decision::Allowed
        } else {
            Decision::Denied(
                status.reason.filter(|r| !r.is_empty()).unwrap_or_else(|| "no role allows it".into()),
            )
        };
        self.decisions.put(key, decision.clone(), Instant::now());
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_time_to_live() {
        let cache: TtlCache<&str, u32> = TtlCache::new(Duration::from_secs(10), 10);
        let start = Instant::now();
        cache.put("token", 1, start);
        assert_eq!(cache.get(&"token", start + Duration::from_secs(9)), Some(1));
        assert_eq!(cache.get(&"token", start + Duration::from_secs(10)), None, "asked again once stale");
        assert_eq!(cache.get(&"other", start), None);
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
            (cache.get(&1, later), cache.get(&2, later), cache.get(&4, later)),
            (None, Some(2), Some(4))
        );
        cache.put(5, 5, later);
        cache.put(6, 6, later);
        assert!(cache.entries.lock().unwrap().len() <= 3);
        assert_eq!(cache.get(&6, later), Some(6));
    }
}

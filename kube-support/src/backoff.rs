//! Retries that back off: exponential, capped, with jitter so that many retries (every tenant
//! after an apiserver restart, every bind refused by a dead apiserver) do not come back at once.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash},
    sync::Mutex,
    time::Duration,
};

/// Exponential backoff from `base` doubling up to `cap`, each delay drawn from its upper half
/// ("equal jitter": never less than half the step, so a retry storm still thins out).
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap }
    }

    /// The delay after `failures` failures in a row (1 for the first), with `unit` in [0, 1)
    /// choosing the point in the step's upper half.
    pub fn delay_with(&self, failures: u32, unit: f64) -> Duration {
        let doubling = 2u32.saturating_pow(failures.saturating_sub(1).min(30));
        let step = self.base.saturating_mul(doubling).min(self.cap);
        step / 2 + step.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }

    /// [`delay_with`](Self::delay_with) a random point.
    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_with(failures, random_unit())
    }
}

/// A random number in [0, 1): the standard library's randomly keyed hasher, hashing nothing.
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(0u8);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// How a watch retries: from half a second to at most 5 s, starting over at the first event
/// that arrives. kube's default waits up to 30 s (and up to twice that with its jitter) and
/// forgets failures only after two quiet minutes, so after an apiserver outage a watch could stay
/// blind for a minute or more: one wait for the reconnection, another after the 410 Gone that
/// sends it to relist.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    policy: Backoff,
    failures: u32,
}

/// [`WatchBackoff`]'s schedule.
pub const WATCH_RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { policy: WATCH_RETRY, failures: 0 }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        Some(self.policy.delay(self.failures))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Failures in a row per key (a pod, a Tenant), each failure answered with the next delay and a
/// success forgetting the key. Shared between a controller's reconcile and its error policy.
#[derive(Debug)]
pub struct Retries<K> {
    backoff: Backoff,
    failures: Mutex<HashMap<K, u32>>,
}

impl<K: Hash + Eq> Retries<K> {
    pub fn new(backoff: Backoff) -> Self {
        Retries { backoff, failures: Mutex::new(HashMap::new()) }
    }

    /// One more failure of `key`: how long to wait before trying it again.
    pub fn failed(&self, key: K) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        self.backoff.delay(*count)
    }

    /// `key` went through: its next failure starts from the base delay again.
    pub fn succeeded(&self, key: &K) {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(key);
    }

    /// Keys whose last try failed: they wait for their retry.
    pub fn failing(&self) -> usize {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));

    #[test]
    fn delays_double_from_the_base_up_to_the_cap_within_the_upper_half() {
        let low = |failures| BACKOFF.delay_with(failures, 0.0);
        let high = |failures| BACKOFF.delay_with(failures, 0.999_999);
        assert_eq!(low(1), Duration::from_millis(250));
        assert!(high(1) <= Duration::from_millis(500));
        assert_eq!(low(2), Duration::from_millis(500));
        assert_eq!(low(5), Duration::from_secs(4));
        assert_eq!(low(40), Duration::from_secs(30), "capped, however many failures");
        assert!(high(u32::MAX) <= Duration::from_secs(60));
    }

    #[test]
    fn a_watch_retries_within_seconds_and_starts_over_after_an_event() {
        use kube::runtime::utils::Backoff as _;
        let mut watch = WatchBackoff::default();
        let delays: Vec<Duration> = watch.by_ref().take(20).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(5)), "{delays:?}");
        watch.reset();
        assert!(watch.next().is_some_and(|d| d <= Duration::from_millis(500)));
    }

    #[test]
    fn jitter_spreads_retries_and_a_success_starts_over() {
        let delays: std::collections::BTreeSet<Duration> = (0..20).map(|_| BACKOFF.delay(6)).collect();
        assert!(delays.len() > 10, "retries come back at different times: {delays:?}");
        let retries = Retries::new(BACKOFF);
        let first = retries.failed("pod");
        for _ in 0..10 {
            retries.failed("pod");
        }
        assert!(retries.failed("pod") >= Duration::from_secs(30));
        retries.failed("node");
        assert_eq!(retries.failing(), 2);
        retries.succeeded(&"pod");
        assert_eq!(retries.failing(), 1, "a success is no longer waiting for a retry");
        assert!(retries.failed("pod") <= Duration::from_millis(500));
        assert!(first <= Duration::from_millis(500));
    }
}

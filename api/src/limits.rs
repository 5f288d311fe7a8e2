//! Per-caller rate limits: each user has a bucket of `burst` calls that refills at `per_second`;
//! a call that finds it empty is refused with the time until the next call is allowed.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by caller.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Callers tracked at most; past it, buckets that are full again are forgotten (a full bucket
/// is what a new caller gets anyway), and if that is not enough, all of them.
const CALLERS: usize = 100_000;

impl RateLimiter {
    /// `per_second` calls a second with bursts of `burst`; 0 calls a second turns limits off.
    pub fn new(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one call from `caller`'s bucket at `now`, or says how long until one is allowed.
    pub fn admit(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= CALLERS && !buckets.contains_key(caller) {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < burst);
            if buckets.len() >= CALLERS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(caller.to_string()).or_insert(Bucket { tokens: self.burst, updated: now });
        let refilled = now.saturating_duration_since(bucket.updated).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refilled).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_calls_wait_for_the_refill() {
        let limiter = RateLimiter::new(10, 3);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.admit("dept", start), Ok(()));
        }
        let wait = limiter.admit("dept", start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "one call's worth at 10 a second");
        assert_eq!(limiter.admit("other", start), Ok(()), "each caller has a bucket of their own");
        assert_eq!(limiter.admit("dept", start + Duration::from_millis(100)), Ok(()));
        assert!(limiter.admit("dept", start + Duration::from_millis(150)).is_err());
    }

    #[test]
    fn a_bucket_refills_only_up_to_the_burst() {
        let limiter = RateLimiter::new(10, 2);
        let start = Instant::now();
        let later = start + Duration::from_secs(60);
        assert_eq!(limiter.admit("dept", start), Ok(()));
        for _ in 0..2 {
            assert_eq!(limiter.admit("dept", later), Ok(()));
        }
        assert!(limiter.admit("dept", later).is_err(), "a minute idle is still a burst of two");
    }

    #[test]
    fn zero_calls_a_second_turns_limits_off() {
        let limiter = RateLimiter::new(0, 1);
        let now = Instant::now();
        assert!((0..1000).all(|_| limiter.admit("dept", now).is_ok()));
    }
}

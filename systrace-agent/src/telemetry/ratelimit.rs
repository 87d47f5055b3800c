//! Per-cgroup token buckets: one confined process that fails at full speed must
//! not drown the events of every other cgroup in the sinks. What a bucket holds
//! back is counted and reported once per interval as a `rate_limited` record.
//!
//! A confined process may make cgroups of its own (they stay under its
//! policy), so each policy also has a bucket of [`POLICY_FACTOR`] times the
//! cgroup's, which every cgroup under it draws from as well; and cgroups beyond
//! [`MAX_BUCKETS`] share an overflow bucket of their own policy, never another's.
//! Making cgroups buys a flooder nothing over the limits of its own policy.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::config::RateLimit;

/// Cgroups tracked at once; beyond that, a policy's new cgroups share one bucket.
pub const MAX_BUCKETS: usize = 16_384;
/// A policy's rate and burst, in cgroup rates and bursts.
pub const POLICY_FACTOR: u32 = 10;
/// The high bit marks a policy's overflow bucket (its low bits: the policy id);
/// cgroup ids are inode numbers and never have it.
const OVERFLOW: u64 = 1 << 63;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last_ns: u64,
    suppressed: u64,
    policy: String,
}

impl Bucket {
    fn full(tokens: f64, now_ns: u64, policy: &str) -> Bucket {
        Bucket { tokens, last_ns: now_ns, suppressed: 0, policy: policy.to_string() }
    }

    fn refill(&mut self, now_ns: u64, rate: f64, burst: f64) {
        let elapsed = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last_ns = now_ns;
    }
}

#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: HashMap<u64, Bucket>,
    policies: HashMap<u32, Bucket>,
    /// Events held back since start.
    pub suppressed_total: u64,
    /// When the last summaries were made.
    last_summary_ns: u64,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter { limit, buckets: HashMap::new(), policies: HashMap::new(), suppressed_total: 0, last_summary_ns: 0 }
    }

    /// Whether an event of this cgroup (confined by `policy_id`) may go to the
    /// sinks now (`now_ns`: any monotonic clock).
    pub fn admit(&mut self, cgroup_id: u64, policy_id: u32, policy: &str, now_ns: u64) -> bool {
        let key = if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&cgroup_id) {
            OVERFLOW | u64::from(policy_id)
        } else {
            cgroup_id & !OVERFLOW
        };
        let (rate, burst) = (f64::from(self.limit.events_per_second), f64::from(self.limit.burst));
        let (policy_rate, policy_burst) = (rate * f64::from(POLICY_FACTOR), burst * f64::from(POLICY_FACTOR));
        let shared = self.policies.entry(policy_id).or_insert_with(|| Bucket::full(policy_burst, now_ns, policy));
        shared.refill(now_ns, policy_rate, policy_burst);
        let bucket = self.buckets.entry(key).or_insert_with(|| Bucket::full(burst, now_ns, policy));
        bucket.refill(now_ns, rate, burst);
        if bucket.tokens >= 1.0 && shared.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            shared.tokens -= 1.0;
            true
        } else {
            bucket.suppressed += 1;
            self.suppressed_total += 1;
            false
        }
    }

    /// One `rate_limited` record per cgroup that had events held back since the
    /// last call; forgets buckets that have refilled (idle cgroups, removed ones).
    pub fn summaries(&mut self, now_ns: u64, time: &str) -> Vec<Value> {
        let interval_s = (now_ns.saturating_sub(self.last_summary_ns) as f64 / 1e9).round() as u64;
        self.last_summary_ns = now_ns;
        let rate = f64::from(self.limit.events_per_second);
        let burst = f64::from(self.limit.burst);
        let mut out = Vec::new();
        self.buckets.retain(|&cgroup, b| {
            if b.suppressed > 0 {
                out.push(json!({
                    "type": "rate_limited",
                    "time": time,
                    // Null: the policy's cgroups beyond the ones tracked one by one.
                    "cgroup_id": if cgroup & OVERFLOW != 0 { Value::Null } else { cgroup.into() },
                    "policy": b.policy,
                    "suppressed": b.suppressed,
                    "interval_s": interval_s,
                    "events_per_second": rate as u64,
                    "burst": burst as u64,
                }));
                b.suppressed = 0;
                return true;
            }
            let refilled = b.tokens + now_ns.saturating_sub(b.last_ns) as f64 / 1e9 * rate >= burst;
            !refilled
        });
        let (policy_rate, policy_burst) = (rate * f64::from(POLICY_FACTOR), burst * f64::from(POLICY_FACTOR));
        self.policies.retain(|_, b| b.tokens + now_ns.saturating_sub(b.last_ns) as f64 / 1e9 * policy_rate < policy_burst);
        out.sort_by_key(|v| v["cgroup_id"].as_u64());
        out
    }

    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_rate_per_cgroup() {
        let mut r = RateLimiter::new(RateLimit { events_per_second: 10, burst: 5 });
        let passed = (0..100).filter(|_| r.admit(1, 1, "flood", 0)).count();
        assert_eq!(passed, 5);
        // Another cgroup is not affected.
        assert!(r.admit(2, 2, "quiet", 0));
        // One second later, ten more (capped at the burst of five).
        let passed = (0..100).filter(|_| r.admit(1, 1, "flood", S)).count();
        assert_eq!(passed, 5);
        assert_eq!(r.suppressed_total, 190);
        let s = r.summaries(S, "t");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0]["cgroup_id"], 1);
        assert_eq!(s[0]["suppressed"], 190);
        assert_eq!(s[0]["policy"], "flood");
        // Nothing held back since: no record; refilled buckets are forgotten.
        assert!(r.summaries(10 * S, "t").is_empty());
        assert_eq!(r.buckets(), 0);
    }

    #[test]
    fn making_cgroups_buys_nothing_over_the_policy_limit() {
        let mut r = RateLimiter::new(RateLimit { events_per_second: 1, burst: 1 });
        // One event from each of many cgroups of policy 1: ten get through.
        let passed = (0..1000u64).filter(|&cg| r.admit(100 + cg, 1, "flood", 0)).count();
        assert_eq!(passed, POLICY_FACTOR as usize);
        // Another policy's cgroup is not affected.
        assert!(r.admit(5, 2, "quiet", 0));
    }

    #[test]
    fn overflow_buckets_are_per_policy() {
        let mut r = RateLimiter::new(RateLimit { events_per_second: 1, burst: 1 });
        // Fill the table with policy 1's cgroups (over seconds: the policy's
        // own bucket refills).
        for cg in 0..MAX_BUCKETS as u64 {
            r.admit(1000 + cg, 1, "flood", cg * S);
        }
        let now = MAX_BUCKETS as u64 * S;
        // Policy 1's next cgroups share its overflow bucket...
        assert!(r.admit(1 << 40, 1, "flood", now));
        assert!(!r.admit((1 << 40) + 1, 1, "flood", now));
        // ...and policy 2's new cgroup has an overflow bucket of its own.
        assert!(r.admit((1 << 40) + 2, 2, "quiet", now));
        let s = r.summaries(now, "t");
        assert!(s.iter().any(|v| v["cgroup_id"].is_null() && v["policy"] == "flood"));
    }
}

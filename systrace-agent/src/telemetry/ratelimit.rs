//! Per-cgroup token buckets: one confined process that fails at full speed must
//! not drown the events of every other cgroup in the sinks. What a bucket holds
//! back is counted and reported once per interval as a `rate_limited` record.
//!
//! A confined process may make cgroups of its own (they stay under its
//! policy), so each policy also has a bucket of [`POLICY_FACTOR`] times the
//! cgroup's, which every cgroup under it draws from as well; and cgroups beyond
//! [`MAX_BUCKETS`] (or beyond [`MAX_PER_POLICY`] of one policy) share an
//! overflow bucket of their own policy, never another's. The summaries are
//! bounded too: at most [`RECORDS_PER_POLICY`] cgroups by name per policy and
//! interval, the rest in one record. Making cgroups buys a flooder nothing over
//! the limits of its own policy.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::config::RateLimit;

/// Cgroups tracked at once; beyond that, a policy's new cgroups share one bucket.
pub const MAX_BUCKETS: usize = 16_384;
/// Cgroups of one policy tracked at once, so one policy cannot take the table.
pub const MAX_PER_POLICY: usize = 4096;
/// `rate_limited` records naming a cgroup, per policy and interval.
pub const RECORDS_PER_POLICY: usize = 8;
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
    policy_id: u32,
    policy: String,
}

impl Bucket {
    fn full(tokens: f64, now_ns: u64, policy_id: u32, policy: &str) -> Bucket {
        Bucket { tokens, last_ns: now_ns, suppressed: 0, policy_id, policy: policy.to_string() }
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
    /// Cgroup buckets (not overflow ones) per policy.
    tracked: HashMap<u32, usize>,
    /// Events held back since start.
    pub suppressed_total: u64,
    /// When the last summaries were made.
    last_summary_ns: u64,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: HashMap::new(),
            policies: HashMap::new(),
            tracked: HashMap::new(),
            suppressed_total: 0,
            last_summary_ns: 0,
        }
    }

    /// Whether an event of this cgroup (confined by `policy_id`) may go to the
    /// sinks now (`now_ns`: any monotonic clock).
    pub fn admit(&mut self, cgroup_id: u64, policy_id: u32, policy: &str, now_ns: u64) -> bool {
        if self.last_summary_ns == 0 {
            self.last_summary_ns = now_ns;
        }
        let cgroup_id = cgroup_id & !OVERFLOW;
        let tracked = self.tracked.get(&policy_id).copied().unwrap_or(0);
        let key = if self.buckets.contains_key(&cgroup_id) {
            cgroup_id
        } else if self.buckets.len() >= MAX_BUCKETS || tracked >= MAX_PER_POLICY {
            OVERFLOW | u64::from(policy_id)
        } else {
            *self.tracked.entry(policy_id).or_default() += 1;
            cgroup_id
        };
        let (rate, burst) = (f64::from(self.limit.events_per_second), f64::from(self.limit.burst));
        let (policy_rate, policy_burst) = (rate * f64::from(POLICY_FACTOR), burst * f64::from(POLICY_FACTOR));
        let shared =
            self.policies.entry(policy_id).or_insert_with(|| Bucket::full(policy_burst, now_ns, policy_id, policy));
        shared.refill(now_ns, policy_rate, policy_burst);
        let bucket = self.buckets.entry(key).or_insert_with(|| Bucket::full(burst, now_ns, policy_id, policy));
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

    /// The `rate_limited` records for what was held back since the last call:
    /// per policy, its [`RECORDS_PER_POLICY`] cgroups that lost most by name,
    /// and one record (`cgroup_id` null) for the rest and the overflow bucket.
    /// Forgets buckets that have refilled (idle cgroups, removed ones).
    pub fn summaries(&mut self, now_ns: u64, time: &str) -> Vec<Value> {
        let interval_s = (now_ns.saturating_sub(self.last_summary_ns) as f64 / 1e9).round() as u64;
        self.last_summary_ns = now_ns;
        let rate = f64::from(self.limit.events_per_second);
        let burst = f64::from(self.limit.burst);
        // policy id -> (name, [(suppressed, cgroup)]) for buckets that held back.
        let mut held: HashMap<u32, (String, Vec<(u64, u64)>)> = HashMap::new();
        let tracked = &mut self.tracked;
        self.buckets.retain(|&cgroup, b| {
            if b.suppressed > 0 {
                held.entry(b.policy_id)
                    .or_insert_with(|| (b.policy.clone(), Vec::new()))
                    .1
                    .push((b.suppressed, cgroup));
                b.suppressed = 0;
                return true;
            }
            let refilled = b.tokens + now_ns.saturating_sub(b.last_ns) as f64 / 1e9 * rate >= burst;
            if refilled && cgroup & OVERFLOW == 0 {
                if let Some(n) = tracked.get_mut(&b.policy_id) {
                    *n = n.saturating_sub(1);
                }
            }
            !refilled
        });
        self.tracked.retain(|_, n| *n > 0);
        let (policy_rate, policy_burst) = (rate * f64::from(POLICY_FACTOR), burst * f64::from(POLICY_FACTOR));
        self.policies
            .retain(|_, b| b.tokens + now_ns.saturating_sub(b.last_ns) as f64 / 1e9 * policy_rate < policy_burst);
        let record = |policy: &str, cgroup: Value, cgroups: usize, suppressed: u64| {
            json!({
                "type": "rate_limited",
                "time": time,
                "cgroup_id": cgroup,
                "cgroups": cgroups,
                "policy": policy,
                "suppressed": suppressed,
                "interval_s": interval_s,
                "events_per_second": rate as u64,
                "burst": burst as u64,
            })
        };
        let mut policies: Vec<_> = held.into_iter().collect();
        policies.sort_by_key(|(id, _)| *id);
        let mut out = Vec::new();
        for (_, (policy, mut lost)) in policies {
            // Named: the cgroups that lost most; the overflow bucket never is.
            lost.sort_by_key(|&(n, cgroup)| (cgroup & OVERFLOW != 0, std::cmp::Reverse(n), cgroup));
            let named = lost.iter().take_while(|(_, c)| c & OVERFLOW == 0).take(RECORDS_PER_POLICY).count();
            for &(n, cgroup) in &lost[..named] {
                out.push(record(&policy, cgroup.into(), 1, n));
            }
            let rest = &lost[named..];
            if !rest.is_empty() {
                // The overflow bucket stands for cgroups not counted one by one.
                let cgroups = rest.iter().filter(|(_, c)| c & OVERFLOW == 0).count();
                out.push(record(&policy, Value::Null, cgroups, rest.iter().map(|(n, _)| n).sum()));
            }
        }
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
    fn summaries_are_bounded_per_policy() {
        let mut r = RateLimiter::new(RateLimit { events_per_second: 1, burst: 1 });
        // 100 cgroups of one policy, each held back once or more.
        for cg in 0..100u64 {
            r.admit(10 + cg, 1, "flood", S);
            for _ in 0..=cg {
                r.admit(10 + cg, 1, "flood", S);
            }
        }
        let total = r.suppressed_total;
        let s = r.summaries(2 * S, "t");
        assert_eq!(s.len(), RECORDS_PER_POLICY + 1);
        // Named first: the cgroups that lost most.
        assert_eq!(s[0]["cgroup_id"], 109);
        let rest = &s[RECORDS_PER_POLICY];
        assert!(rest["cgroup_id"].is_null());
        assert_eq!(rest["cgroups"], 100 - RECORDS_PER_POLICY);
        // Every held-back event is in exactly one record.
        assert_eq!(s.iter().map(|v| v["suppressed"].as_u64().unwrap()).sum::<u64>(), total);
        assert_eq!(s[0]["interval_s"], 1);
    }

    #[test]
    fn one_policy_cannot_take_the_table() {
        let mut r = RateLimiter::new(RateLimit { events_per_second: 1, burst: 1 });
        for cg in 0..(2 * MAX_PER_POLICY as u64) {
            r.admit(1000 + cg, 1, "flood", cg * S);
        }
        assert_eq!(r.buckets(), MAX_PER_POLICY + 1);
        // Another policy's new cgroups still get buckets of their own.
        let now = 2 * MAX_PER_POLICY as u64 * S;
        assert!(r.admit(1 << 40, 2, "quiet", now));
        assert!(r.admit((1 << 40) + 1, 2, "quiet", now));
    }

    #[test]
    fn overflow_buckets_are_per_policy() {
        let mut r = RateLimiter::new(RateLimit { events_per_second: 1, burst: 1 });
        // More cgroups of policy 1 than one policy may track (over seconds: the policy's
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

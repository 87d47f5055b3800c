//! Where events go besides standard output: a JSON-lines file, syslog (local,
//! TCP, TLS), Prometheus metrics; and the per-cgroup rate limit in front of them.
//!
//! The event loop hands each record to [`Telemetry`], which never blocks: sinks
//! are tasks behind bounded queues ([`sink`]), and a record a sink cannot take is
//! counted as dropped, by cause. The verdict was given in the kernel long before.

pub mod api;
pub mod config;
pub mod http;
pub mod metrics;
pub mod otlp;
pub mod ratelimit;
pub mod sink;
pub mod syslog;
mod tls;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Result;
use serde_json::{json, Map, Value};

use self::{config::Config, metrics::Metrics, ratelimit::RateLimiter, sink::Sink};

/// One record as every sink sees it: its JSON line, its fields, and what
/// syslog needs to classify it.
#[derive(Debug)]
pub struct Item {
    /// The record's `type` (`event`, `status`, `rate_limited`, ...).
    pub kind: String,
    /// Syslog severity (RFC 5424): 3 error, 4 warning, 5 notice, 6 informational.
    pub severity: u8,
    pub fields: Map<String, Value>,
    /// The JSON line, without its newline.
    pub line: String,
}

impl Item {
    pub fn new(value: Value) -> Arc<Item> {
        let line = value.to_string();
        let fields = match value {
            Value::Object(m) => m,
            other => Map::from_iter([("value".to_string(), other)]),
        };
        let kind = fields.get("type").and_then(Value::as_str).unwrap_or("record").to_string();
        let text = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or_default();
        let severity = match kind.as_str() {
            "event" => match text("verdict") {
                "denied" => 4,
                "audit" | "audit-rule" => 5,
                _ => 6,
            },
            "rate_limited" => 4,
            "status" => match text("state") {
                "reload-failed" => 3,
                "telemetry-gap" => 4,
                _ => 6,
            },
            _ => 6,
        };
        Arc::new(Item { kind, severity, fields, line })
    }
}

/// The sinks, the rate limit and the metrics of one agent.
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    limiter: Option<RateLimiter>,
    sinks: Vec<Sink>,
    reopen: Arc<AtomicBool>,
    summaries: u64,
    /// The HTTP servers' thread (it ends with the process).
    servers: Option<std::thread::JoinHandle<()>>,
    /// The monitoring API's view, when it is configured.
    pub api: Option<Arc<api::ApiState>>,
}

impl Telemetry {
    /// No sinks, no limit: `run` without a configuration file.
    pub fn none(kernel_release: String) -> Self {
        Telemetry {
            metrics: Arc::new(Metrics::new(kernel_release)),
            limiter: None,
            sinks: Vec::new(),
            reopen: Arc::new(AtomicBool::new(false)),
            summaries: 0,
            servers: None,
            api: None,
        }
    }

    /// Opens every configured sink. A file that cannot be opened, a TLS file
    /// that cannot be read, or a token that is unsafe is an error now; a port
    /// someone holds is not (the server tries again), nor is a remote receiver
    /// that is down (its sink connects when it can, counting what it loses).
    pub async fn start(config: &Config, kernel_release: String) -> Result<Self> {
        let mut t = Telemetry::none(kernel_release);
        t.limiter = config.rate_limit.map(RateLimiter::new);
        if let Some(json) = &config.json {
            t.sinks.push(sink::json_file(json, t.reopen.clone())?);
        }
        let origin = syslog::Origin::this_process();
        for s in &config.syslog {
            t.sinks.push(sink::syslog(s, origin.clone())?);
        }
        for o in &config.otlp {
            t.sinks.push(sink::otlp(o, syslog::hostname())?);
        }
        for s in &t.sinks {
            t.metrics.add_sink(s.kind, s.destination.clone(), s.stats.clone());
        }
        let mut servers = Vec::new();
        if let Some(p) = &config.prometheus {
            servers.push(http::Server {
                what: "metrics",
                listen: p.listen,
                tls: None,
                router: http::metrics_router(t.metrics.clone()),
            });
        }
        if let Some(a) = &config.api {
            let token = a.token_file.as_deref().map(api::read_token).transpose()?;
            let acceptor = api::acceptor(a)?;
            let state = Arc::new(api::ApiState::new());
            servers.push(http::Server {
                what: "the API",
                listen: a.listen,
                tls: acceptor,
                router: api::router(state.clone(), token),
            });
            t.api = Some(state);
        }
        if !servers.is_empty() {
            t.servers = Some(http::spawn(servers)?);
        }
        Ok(t)
    }

    /// Whether records go anywhere but standard output.
    pub fn has_sinks(&self) -> bool {
        !self.sinks.is_empty() || self.api.is_some()
    }

    /// The counters the API shows.
    pub fn set_counters(&self, counters: Value) {
        if let Some(api) = &self.api {
            *api.counters.lock().unwrap() = counters;
        }
    }

    /// Counts a decision (`read_here`: read from this agent's ring buffer, not
    /// recovered from a previous agent's); whether its event goes on to the
    /// outputs, or is held back by its cgroup's rate limit.
    #[allow(clippy::too_many_arguments)]
    pub fn admit_event(
        &mut self,
        cgroup_id: u64,
        policy_id: u32,
        policy: &str,
        hook: &'static str,
        verdict: &'static str,
        now_ns: u64,
        read_here: bool,
    ) -> bool {
        self.metrics.decision(policy, hook, verdict);
        if read_here {
            self.metrics.events_read.fetch_add(1, Ordering::Relaxed);
        }
        let admitted = self.limiter.as_mut().is_none_or(|l| l.admit(cgroup_id, policy_id, policy, now_ns));
        if !admitted {
            self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Hands a record to every sink.
    pub fn offer(&self, value: Value) {
        if !self.has_sinks() {
            return;
        }
        if let Some(api) = &self.api {
            // The agent's own state; a telemetry-gap record is about the past.
            if value["type"] == "status" && value["state"] != "telemetry-gap" {
                let mut status = json!({
                    "pid": std::process::id(),
                    "version": env!("CARGO_PKG_VERSION"),
                    "kernel": self.metrics.kernel_release,
                });
                for key in ["state", "generation", "time", "pinned", "hooks_not_in_this_kernel", "errors"] {
                    if let Some(v) = value.get(key) {
                        status[key] = v.clone();
                    }
                }
                *api.status.lock().unwrap() = status;
                if let Some(p) = value.get("policies") {
                    *api.policies.lock().unwrap() = p.clone();
                }
            }
        }
        let item = Item::new(value);
        for s in &self.sinks {
            s.offer(&item);
        }
        if let Some(api) = &self.api {
            // No one listening is not an error.
            let _ = api.events.send(item);
        }
    }

    /// The `rate_limited` records due now (see [`RateLimiter::summaries`]).
    pub fn summaries(&mut self, now_ns: u64, time: &str) -> Vec<Value> {
        let out = self.limiter.as_mut().map(|l| l.summaries(now_ns, time)).unwrap_or_default();
        self.summaries += out.len() as u64;
        out
    }

    /// The JSON file is opened by its name again before its next write.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// The account for the stats record: what was read, held back and, per
    /// sink, delivered or dropped by cause.
    pub fn stats_json(&self) -> Value {
        let sinks: Vec<_> = self
            .sinks
            .iter()
            .map(|s| {
                let mut v = s.stats.json();
                v["sink"] = s.kind.into();
                v["destination"] = s.destination.clone().into();
                v
            })
            .collect();
        json!({
            "events_read": self.metrics.events_read.load(Ordering::Relaxed),
            "rate_limited": self.metrics.rate_limited.load(Ordering::Relaxed),
            "rate_limited_records": self.summaries,
            "sinks": sinks,
        })
    }

    /// Lets each sink write what it holds, for at most `grace` in all.
    pub async fn finish(&mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for s in &mut self.sinks {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            s.finish(left).await;
        }
        // The servers' thread is left to end with the process.
        self.servers.take();
    }
}

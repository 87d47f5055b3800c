//! Prometheus metrics, in the text exposition format (0.0.4).
//!
//! Labels are bounded by the configuration, never by the workload: policy (one
//! per policy file), hook, verdict, sink, cause. No pid, comm, path or cgroup id:
//! a label per process or file is a new time series per process or file.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use super::sink::{Loss, SinkStats};

/// A kernel-side counter as the event loop last read it.
#[derive(Debug, Clone)]
pub struct KernelCounter {
    pub name: &'static str,
    pub help: &'static str,
    pub value: u64,
}

/// (hook, verdict) -> decisions, for one policy.
type Counts = BTreeMap<(&'static str, &'static str), u64>;

#[derive(Debug, Default)]
pub struct Metrics {
    /// policy -> (hook, verdict) -> count: looked up by the policy's `&str`,
    /// so counting a decision allocates only the first time.
    decisions: Mutex<BTreeMap<String, Counts>>,
    kernel: Mutex<Vec<KernelCounter>>,
    /// Bytes waiting in the ring buffer, and its size.
    ring: Mutex<Option<(u64, u64)>>,
    /// Per map: entries, capacity.
    maps: Mutex<Vec<(&'static str, u64, u32)>>,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub events_read: AtomicU64,
    pub rate_limited: AtomicU64,
    sinks: Mutex<Vec<(&'static str, String, Arc<SinkStats>)>>,
    pub kernel_release: String,
}

impl Metrics {
    pub fn new(kernel_release: String) -> Self {
        Metrics { kernel_release, ..Default::default() }
    }

    pub fn decision(&self, policy: &str, hook: &'static str, verdict: &'static str) {
        let mut d = self.decisions.lock().unwrap();
        let by_policy = match d.get_mut(policy) {
            Some(m) => m,
            None => d.entry(policy.to_string()).or_default(),
        };
        *by_policy.entry((hook, verdict)).or_default() += 1;
    }

    pub fn decisions(&self, policy: &str, verdict: &str) -> u64 {
        let d = self.decisions.lock().unwrap();
        d.get(policy).map_or(0, |m| m.iter().filter(|((_, v), _)| *v == verdict).map(|(_, n)| n).sum())
    }

    pub fn set_kernel(&self, counters: Vec<KernelCounter>) {
        *self.kernel.lock().unwrap() = counters;
    }

    pub fn set_ring(&self, used: u64, size: u64) {
        *self.ring.lock().unwrap() = Some((used, size));
    }

    pub fn set_maps(&self, maps: Vec<(&'static str, u64, u32)>) {
        *self.maps.lock().unwrap() = maps;
    }

    pub fn add_sink(&self, kind: &'static str, destination: String, stats: Arc<SinkStats>) {
        self.sinks.lock().unwrap().push((kind, destination, stats));
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        header(&mut out, "systrace_build_info", "gauge", "The agent's version and the kernel it runs on.");
        let _ = writeln!(
            out,
            "systrace_build_info{{version=\"{}\",kernel=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            escape(&self.kernel_release)
        );
        header(
            &mut out,
            "systrace_decisions_total",
            "counter",
            "Decisions the kernel reported (denied, audited, learned), by policy, hook and verdict.",
        );
        for (policy, counts) in self.decisions.lock().unwrap().iter() {
            for ((hook, verdict), n) in counts {
                let _ = writeln!(
                    out,
                    "systrace_decisions_total{{policy=\"{}\",hook=\"{hook}\",verdict=\"{verdict}\"}} {n}",
                    escape(policy)
                );
            }
        }
        for c in self.kernel.lock().unwrap().iter() {
            header(&mut out, c.name, "counter", c.help);
            let _ = writeln!(out, "{} {}", c.name, c.value);
        }
        let simple = [
            ("systrace_events_read_total", "Events the agent read from the ring buffer.", &self.events_read),
            (
                "systrace_events_rate_limited_total",
                "Events held back by the per-cgroup rate limit (counted in rate_limited records).",
                &self.rate_limited,
            ),
            ("systrace_reloads_total", "Policy reloads that put a new set in force.", &self.reloads),
            (
                "systrace_reload_failures_total",
                "Policy reloads refused; the set in force stayed.",
                &self.reload_failures,
            ),
        ];
        for (name, help, v) in simple {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        if let Some((used, size)) = *self.ring.lock().unwrap() {
            header(&mut out, "systrace_ring_buffer_used_bytes", "gauge", "Bytes of events waiting in the ring buffer.");
            let _ = writeln!(out, "systrace_ring_buffer_used_bytes {used}");
            header(&mut out, "systrace_ring_buffer_size_bytes", "gauge", "The ring buffer's size.");
            let _ = writeln!(out, "systrace_ring_buffer_size_bytes {size}");
        }
        let maps = self.maps.lock().unwrap();
        if !maps.is_empty() {
            header(&mut out, "systrace_map_entries", "gauge", "Entries in a BPF map (rule tables, cgroup bindings).");
            for (name, entries, _) in maps.iter() {
                let _ = writeln!(out, "systrace_map_entries{{map=\"{name}\"}} {entries}");
            }
            header(&mut out, "systrace_map_capacity", "gauge", "The most entries a BPF map can hold.");
            for (name, _, max) in maps.iter() {
                let _ = writeln!(out, "systrace_map_capacity{{map=\"{name}\"}} {max}");
            }
        }
        let sinks = self.sinks.lock().unwrap();
        if !sinks.is_empty() {
            let label = |kind: &str, dest: &str| format!("sink=\"{kind}\",destination=\"{}\"", escape(dest));
            header(&mut out, "systrace_sink_offered_total", "counter", "Records offered to a sink.");
            for (k, d, s) in sinks.iter() {
                let _ = writeln!(
                    out,
                    "systrace_sink_offered_total{{{}}} {}",
                    label(k, d),
                    s.offered.load(Ordering::Relaxed)
                );
            }
            header(
                &mut out,
                "systrace_sink_delivered_total",
                "counter",
                "Records a sink wrote (to its socket or file).",
            );
            for (k, d, s) in sinks.iter() {
                let _ = writeln!(
                    out,
                    "systrace_sink_delivered_total{{{}}} {}",
                    label(k, d),
                    s.delivered.load(Ordering::Relaxed)
                );
            }
            header(&mut out, "systrace_sink_dropped_total", "counter", "Records a sink lost, by cause.");
            for (k, d, s) in sinks.iter() {
                for cause in Loss::ALL {
                    let _ = writeln!(
                        out,
                        "systrace_sink_dropped_total{{{},cause=\"{}\"}} {}",
                        label(k, d),
                        cause.name(),
                        s.dropped(cause)
                    );
                }
            }
            header(&mut out, "systrace_sink_up", "gauge", "1 while a sink is connected (or its file open).");
            for (k, d, s) in sinks.iter() {
                let _ = writeln!(out, "systrace_sink_up{{{}}} {}", label(k, d), u8::from(s.up.load(Ordering::Relaxed)));
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Label values: backslash, quote and newline escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::new("6.1.0".into());
        m.decision("victim", "file_open", "denied");
        m.decision("victim", "file_open", "denied");
        m.decision("we\"ird", "capable", "audit");
        m.set_kernel(vec![KernelCounter { name: "systrace_kernel_denied_total", help: "h", value: 5 }]);
        let text = m.render();
        assert!(
            text.contains("systrace_decisions_total{policy=\"victim\",hook=\"file_open\",verdict=\"denied\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("policy=\"we\\\"ird\""), "{text}");
        assert!(text.contains("systrace_kernel_denied_total 5\n"));
        assert!(text.contains("systrace_build_info{version="));
        assert_eq!(m.decisions("victim", "denied"), 2);
        // Every family is declared once.
        let types: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len());
    }
}

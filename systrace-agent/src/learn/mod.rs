//! Policy generation: what a learning run saw, turned into rules.
//!
//! `learn` writes the agent's own event lines (verdict `learned`) after a
//! header line saying what was learned; [`Observations::read`] folds them into
//! one entry per distinct access, [`generate::generate`] generalizes those into
//! a policy and [`merge::merge`] adds what an edited policy does not allow yet.
//! [`replay`] answers the other question: which recorded accesses would a
//! policy deny. Pure code: event lines in, TOML out.

pub mod generate;
pub mod merge;
pub mod replay;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use systrace_common::access;

/// The first line of a learning run's output: what was learned, and the facts
/// generalization needs (whose home directory `${HOME}` stands for).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    #[serde(rename = "type")]
    pub kind: String,
    /// The command learned (`learn -- CMD ARGS`), if any.
    #[serde(default)]
    pub command: Vec<String>,
    /// `cgroup = ...`, `unit = ...`: the target learned, as a policy line.
    #[serde(default)]
    pub target: Option<String>,
    /// `$HOME` of the learned command.
    #[serde(default)]
    pub home: Option<String>,
}

/// One distinct thing a learning run saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seen {
    /// A file or directory, by the path the process used.
    File(String),
    /// A bind or connect: (operation, protocol or "", address, port).
    Net {
        op: &'static str,
        protocol: String,
        address: String,
        port: u16,
    },
    /// A unix socket peer: (operation, path or `@abstract`).
    Unix {
        op: &'static str,
        name: String,
    },
    Capability(String),
    /// Socket creation: family, type, protocol names.
    Socket {
        family: String,
        sock_type: String,
        protocol: String,
    },
    /// What a self-protection would refuse: no rule can allow it.
    Protection {
        protection: String,
        hook: String,
        detail: String,
    },
}

/// What was seen of one [`Seen`]: how often, first when, by which programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// File access bits (`systrace_common::access`).
    pub access: u32,
    pub count: u64,
    /// RFC 3339; the earliest event's time.
    pub first: String,
    pub programs: BTreeSet<String>,
}

impl Evidence {
    pub fn absorb(&mut self, other: &Evidence) {
        self.access |= other.access;
        self.count += other.count;
        if self.first.is_empty() || (!other.first.is_empty() && other.first < self.first) {
            self.first = other.first.clone();
        }
        self.programs.extend(other.programs.iter().cloned());
    }
}

/// Everything learned, merged over any number of runs.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    pub headers: Vec<Header>,
    pub seen: BTreeMap<Seen, Evidence>,
    /// Event lines that were not learned accesses (status lines, allowed rules
    /// reporting, unreadable lines), counted so the user can see them.
    pub skipped: u64,
    /// Take denials as accesses to allow too (generating from an enforcing
    /// agent's events). Off for learning runs, whose denials come from deny
    /// rules the policy meant.
    pub include_denied: bool,
}

pub fn access_bits(names: &[Value]) -> u32 {
    names
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|n| access::NAMES.iter().find(|(name, _)| *name == n).map(|(_, b)| *b))
        .fold(0, |a, b| a | b)
}

impl Observations {
    /// Reads event lines (one JSON object per line) into observations.
    pub fn read(&mut self, text: &str) {
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                if !line.trim().is_empty() {
                    self.skipped += 1;
                }
                continue;
            };
            match v.get("type").and_then(Value::as_str) {
                Some("learn") => {
                    if let Ok(h) = serde_json::from_value::<Header>(v) {
                        self.headers.push(h);
                    }
                }
                Some("event") if !self.add_event(&v) => {
                    self.skipped += 1;
                }
                _ => {}
            }
        }
    }

    /// Adds one event; false when it is not a learned access.
    pub fn add_event(&mut self, v: &Value) -> bool {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let wanted = |v: String| v == "learned" || v == "audit" || (self.include_denied && v == "denied");
        if !text("verdict").is_some_and(wanted) {
            return false;
        }
        let Some(seen) = seen_of(v) else { return false };
        let evidence = Evidence {
            access: if matches!(seen, Seen::File(_)) {
                access_bits(v.get("requested").and_then(Value::as_array).map_or(&[][..], Vec::as_slice))
            } else {
                0
            },
            count: 1,
            first: text("time").unwrap_or_default(),
            programs: text("comm").into_iter().collect(),
        };
        self.seen.entry(seen).or_default().absorb(&evidence);
        true
    }

    /// `$HOME` of the learned commands: the first header's.
    pub fn home(&self) -> Option<&str> {
        self.headers.iter().find_map(|h| h.home.as_deref()).filter(|h| h.len() > 1)
    }
}

/// What an event line is about.
fn seen_of(v: &Value) -> Option<Seen> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let hook = text("hook").unwrap_or_default();
    if let Some(protection) = text("protection") {
        let detail = text("path").or_else(|| v.get("target_pid").map(|p| format!("pid {p}"))).unwrap_or_default();
        return Some(Seen::Protection { protection, hook, detail });
    }
    if let Some(cap) = text("capability") {
        return Some(Seen::Capability(cap));
    }
    if let Some(family) = text("socket_family") {
        return Some(Seen::Socket {
            family,
            sock_type: text("socket_type").unwrap_or_default(),
            protocol: text("socket_protocol").unwrap_or_default(),
        });
    }
    let op = if hook == "socket_bind" { "bind" } else { "connect" };
    match text("family").as_deref() {
        Some("unix") => return Some(Seen::Unix { op, name: text("address")? }),
        Some(_) => {
            return Some(Seen::Net {
                op,
                protocol: text("protocol").unwrap_or_default(),
                address: text("address")?,
                port: v.get("port").and_then(Value::as_u64).unwrap_or(0) as u16,
            })
        }
        None => {}
    }
    let path = text("path")?;
    // A path the kernel could only give the end of cannot be a rule.
    if !path.starts_with('/') {
        return None;
    }
    Some(Seen::File(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_repeats_and_keeps_the_earliest_time() {
        let mut o = Observations::default();
        o.read(concat!(
            r#"{"type":"learn","command":["httpd"],"home":"/home/a"}"#, "\n",
            r#"{"type":"event","verdict":"learned","hook":"file_open","time":"2026-01-02T00:00:00Z","comm":"httpd","path":"/srv/www/a.html","requested":["read"]}"#, "\n",
            r#"{"type":"event","verdict":"learned","hook":"file_open","time":"2026-01-01T00:00:00Z","comm":"cgi","path":"/srv/www/a.html","requested":["write"]}"#, "\n",
            r#"{"type":"event","verdict":"allowed","hook":"file_open","path":"/x","requested":["read"]}"#, "\n",
            r#"{"type":"status","state":"enforcing"}"#, "\n",
        ));
        assert_eq!(o.home(), Some("/home/a"));
        let e = &o.seen[&Seen::File("/srv/www/a.html".into())];
        assert_eq!(e.count, 2);
        assert_eq!(e.access, access::READ | access::WRITE);
        assert_eq!(e.first, "2026-01-01T00:00:00Z");
        assert_eq!(e.programs.iter().cloned().collect::<Vec<_>>(), ["cgi", "httpd"]);
        assert_eq!(o.skipped, 1);
    }
}

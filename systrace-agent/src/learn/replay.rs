//! Which recorded accesses a policy would refuse, before it is switched on.
//!
//! The same precedence as the kernel side, in user space: for a file, per
//! access bit, the most specific rule naming the bit (the file, then its
//! directory's `/*`, then each ancestor's `/**`; deny first at equal
//! specificity); for an address, the longest prefix, then the narrower port
//! range; what no rule decides gets the default. What it cannot know — a
//! path that is another name for a file a deny rule follows by identity,
//! where a wildcard destination is routed — it does not guess: it answers for
//! the names and addresses as recorded.

use std::{net::IpAddr, path::Path};

use systrace_common::{net, protect, socket, SocketKey};

use super::{Evidence, Seen};
use crate::policy::{capability_number, DefaultVerdict, Policy, RuleVerdict, Scope};

/// What a policy does with one recorded access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Refused by the policy's default (or a missing grant), and why.
    Refused(String),
    /// Refused by a deny rule (or a self-protection), and which.
    Denied(String),
}

impl Decision {
    pub fn why(&self) -> Option<&str> {
        match self {
            Decision::Allowed => None,
            Decision::Refused(w) | Decision::Denied(w) => Some(w),
        }
    }
}

fn by_default(policy: &Policy) -> Decision {
    match policy.default {
        DefaultVerdict::Allow => Decision::Allowed,
        DefaultVerdict::Deny => Decision::Refused("no rule allows it (default deny)".into()),
    }
}

fn verdict_decision(v: RuleVerdict, what: impl FnOnce() -> String) -> Decision {
    match v {
        RuleVerdict::Deny => Decision::Denied(format!("denied by {}", what())),
        _ => Decision::Allowed,
    }
}

/// How specific a file rule is for `path`, higher first; `None` when it does not apply.
fn specificity(anchor: &Path, scope: Scope, path: &Path) -> Option<usize> {
    let depth = anchor.components().count();
    match scope {
        Scope::Exact => (anchor == path).then_some(3 * depth + 2),
        Scope::Children => (path.parent() == Some(anchor)).then_some(3 * depth + 1),
        Scope::Subtree => (path != anchor && path.starts_with(anchor)).then_some(3 * depth),
    }
}

/// The bits of `bits` that no rule of the policy decides for `path`: its
/// default does (what `exec --ask` asks a person about).
pub fn undecided(policy: &Policy, path: &str, bits: u32) -> u32 {
    let path = Path::new(path);
    let mut out = 0;
    let mut bit = 1u32;
    while bit != 0 && bit <= bits {
        if bits & bit != 0
            && !policy.files.iter().any(|r| r.access & bit != 0 && specificity(&r.path, r.scope, path).is_some())
        {
            out |= bit;
        }
        bit <<= 1;
    }
    out
}

/// The bits of `bits` a deny rule refuses for `path` (the most specific rule
/// naming the bit is a deny).
pub fn file_denied_by_rule(policy: &Policy, path: &str, bits: u32) -> u32 {
    let path = Path::new(path);
    let mut out = 0;
    let mut bit = 1u32;
    while bit != 0 && bit <= bits {
        if bits & bit != 0 {
            let mut best: Option<(usize, bool)> = None;
            for r in policy.files.iter().filter(|r| r.access & bit != 0) {
                let Some(s) = specificity(&r.path, r.scope, path) else { continue };
                let deny = r.verdict == RuleVerdict::Deny;
                if best.is_none_or(|(bs, bd)| s > bs || (s == bs && deny && !bd)) {
                    best = Some((s, deny));
                }
            }
            if best.is_some_and(|(_, deny)| deny) {
                out |= bit;
            }
        }
        bit <<= 1;
    }
    out
}

/// The access bits of `bits` the policy refuses for `path`, and one reason.
pub fn file_refused(policy: &Policy, path: &str, bits: u32) -> (u32, String) {
    let path = Path::new(path);
    let mut refused = 0;
    let mut reason = String::new();
    let mut bit = 1u32;
    while bit != 0 && bit <= bits {
        if bits & bit != 0 {
            let mut best: Option<(usize, bool, &crate::policy::FileRuleSpec)> = None;
            for r in policy.files.iter().filter(|r| r.access & bit != 0) {
                let Some(s) = specificity(&r.path, r.scope, path) else { continue };
                let deny = r.verdict == RuleVerdict::Deny;
                if best.is_none_or(|(bs, bd, _)| s > bs || (s == bs && deny && !bd)) {
                    best = Some((s, deny, r));
                }
            }
            let denied = match best {
                Some((_, deny, r)) => {
                    if deny && reason.is_empty() {
                        reason = format!("denied by the rule at {}:{}", r.location.line, r.location.column);
                    }
                    deny
                }
                None => {
                    if policy.default == DefaultVerdict::Deny && reason.is_empty() {
                        reason = "no rule allows it (default deny)".into();
                    }
                    policy.default == DefaultVerdict::Deny
                }
            };
            if denied {
                refused |= bit;
            }
        }
        bit <<= 1;
    }
    (refused, reason)
}

fn address_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            (net::AF_INET, b)
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => address_bytes(IpAddr::V4(v4)),
            None => (net::AF_INET6, a.octets()),
        },
    }
}

fn prefix_matches(rule: &[u8; 16], addr: &[u8; 16], bits: u32) -> bool {
    (0..bits as usize).all(|i| (rule[i / 8] >> (7 - i % 8)) & 1 == (addr[i / 8] >> (7 - i % 8)) & 1)
}

/// What the policy does with one recorded access (its bits, for files).
pub fn decide(policy: &Policy, seen: &Seen, evidence: &Evidence) -> Decision {
    match seen {
        Seen::File(path) => match file_refused(policy, path, evidence.access) {
            (0, _) => Decision::Allowed,
            (bits, why) if file_denied_by_rule(policy, path, bits) != 0 => {
                Decision::Denied(format!("{} {why}", crate::policy::access_names(bits).join(",")))
            }
            (bits, why) => Decision::Refused(format!("{} {why}", crate::policy::access_names(bits).join(","))),
        },
        Seen::Net { op, protocol, address, port } => {
            let Ok(ip) = address.parse::<IpAddr>() else { return by_default(policy) };
            let (family, addr) = address_bytes(ip);
            let op = if *op == "bind" { net::OP_BIND } else { net::OP_CONNECT };
            let proto = match protocol.as_str() {
                "tcp" => net::IPPROTO_TCP,
                "udp" => net::IPPROTO_UDP,
                "sctp" => net::IPPROTO_SCTP,
                _ => net::PROTO_ANY,
            };
            let best = policy
                .net
                .iter()
                .filter(|r| r.op == op && r.family == family && (r.proto == proto || r.proto == net::PROTO_ANY))
                .filter(|r| prefix_matches(&r.addr, &addr, r.prefix) && (r.ports.0..=r.ports.1).contains(port))
                .max_by_key(|r| {
                    let rank = match r.verdict {
                        RuleVerdict::Deny => 2,
                        RuleVerdict::Audit => 1,
                        RuleVerdict::Allow => 0,
                    };
                    (r.prefix, u16::MAX - (r.ports.1 - r.ports.0), rank)
                });
            match best {
                Some(r) => verdict_decision(r.verdict, || "a network rule".into()),
                None => by_default(policy),
            }
        }
        Seen::Unix { op, name } => {
            let op = if *op == "bind" { net::OP_BIND } else { net::OP_CONNECT };
            let bytes: Vec<u8> = match name.strip_prefix('@') {
                Some(abs) => std::iter::once(0).chain(abs.bytes()).collect(),
                None => name.as_bytes().to_vec(),
            };
            let exact = policy.unix.iter().find(|r| r.op == op && r.name == bytes);
            let any = policy.unix.iter().find(|r| r.op == op && r.name.is_empty());
            match exact.or(any) {
                Some(r) => verdict_decision(r.verdict, || "a unix rule".into()),
                None => by_default(policy),
            }
        }
        Seen::Capability(name) => match (capability_number(name), policy.capabilities) {
            (Ok(n), Some(set)) if set & (1 << n) != 0 => Decision::Allowed,
            (_, Some(_)) => Decision::Refused("not in capabilities".into()),
            (_, None) => by_default(policy),
        },
        Seen::Socket { family, sock_type, protocol } => {
            let number = |table: &[(&str, u16)], name: &str| {
                table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).or_else(|| name.parse().ok())
            };
            let f = number(&socket::FAMILIES, family).unwrap_or(u16::MAX - 1);
            let t = number(&socket::TYPES, sock_type).unwrap_or(u16::MAX - 1);
            let p = if protocol == "mptcp" { Some(socket::IPPROTO_MPTCP) } else { number(&socket::PROTOCOLS, protocol) }
                .unwrap_or(0);
            let best = policy
                .sockets
                .iter()
                .filter(|r| r.family == f)
                .filter(|r| r.sock_type == SocketKey::ANY || r.sock_type == t)
                .filter(|r| r.protocol == SocketKey::ANY || r.protocol == p)
                .max_by_key(|r| (r.sock_type != SocketKey::ANY, r.protocol != SocketKey::ANY));
            match best {
                Some(r) => verdict_decision(r.verdict, || "a socket rule".into()),
                None => by_default(policy),
            }
        }
        Seen::Protection { protection, .. } => {
            let on = protect::NAMES.iter().find(|(n, _)| n == protection).is_none_or(|(_, b)| policy.protections & b != 0);
            if on {
                Decision::Denied(format!("the {protection} protection"))
            } else {
                Decision::Allowed
            }
        }
    }
}

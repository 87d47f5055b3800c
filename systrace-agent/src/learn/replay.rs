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
use crate::policy::{capability_number, DefaultVerdict, FileRuleSpec, Policy, RuleVerdict, Scope};

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
    let child = path.parent() == Some(anchor);
    match scope {
        Scope::Exact => (anchor == path).then_some(4 * depth + 3),
        Scope::Extension(ext) => {
            (child && path.file_name().is_some_and(|n| ext.matches(n.as_encoded_bytes()))).then_some(4 * depth + 2)
        }
        Scope::Children => child.then_some(4 * depth + 1),
        Scope::Subtree => (path != anchor && path.starts_with(anchor)).then_some(4 * depth),
    }
}

/// What a policy's file rules say about `bits` on `path`, one bit at a time
/// as the kernel decides them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileOutcome {
    /// Refused, by a deny rule or by a default of deny.
    pub refused: u32,
    /// Refused by a deny rule (the most specific rule naming the bit denies).
    pub by_rule: u32,
    /// No rule names the bit: the default decides (what `exec --ask` asks about).
    pub undecided: u32,
    /// Why the first refused bit is refused.
    pub reason: String,
}

/// The rule that decides `bit` for `path`: the most specific one naming it,
/// a deny before an allow at equal specificity.
fn deciding_rule<'a>(policy: &'a Policy, path: &Path, bit: u32) -> Option<&'a FileRuleSpec> {
    let mut best: Option<(usize, &FileRuleSpec)> = None;
    for r in policy.files.iter().filter(|r| r.access & bit != 0) {
        let Some(s) = specificity(&r.path, r.scope, path) else { continue };
        let deny = r.verdict == RuleVerdict::Deny;
        if best.is_none_or(|(bs, b)| s > bs || (s == bs && deny && b.verdict != RuleVerdict::Deny)) {
            best = Some((s, r));
        }
    }
    best.map(|(_, r)| r)
}

pub fn file_outcome(policy: &Policy, path: &str, bits: u32) -> FileOutcome {
    let path = Path::new(path);
    let default_denies = policy.default == DefaultVerdict::Deny;
    let mut out = FileOutcome::default();
    let mut bit = 1u32;
    while bit != 0 && bit <= bits {
        if bits & bit != 0 {
            match deciding_rule(policy, path, bit) {
                Some(r) if r.verdict == RuleVerdict::Deny => {
                    if out.reason.is_empty() {
                        out.reason = format!("denied by the rule at {}:{}", r.location.line, r.location.column);
                    }
                    out.refused |= bit;
                    out.by_rule |= bit;
                }
                Some(_) => {}
                None => {
                    out.undecided |= bit;
                    if default_denies {
                        if out.reason.is_empty() {
                            out.reason = "no rule allows it (default deny)".into();
                        }
                        out.refused |= bit;
                    }
                }
            }
        }
        bit <<= 1;
    }
    out
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
        Seen::File(path) => {
            let o = file_outcome(policy, path, evidence.access);
            let why = || format!("{} {}", crate::policy::access_names(o.refused).join(","), o.reason);
            if o.refused == 0 {
                Decision::Allowed
            } else if o.by_rule != 0 {
                Decision::Denied(why())
            } else {
                Decision::Refused(why())
            }
        }
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
            let p =
                if protocol == "mptcp" { Some(socket::IPPROTO_MPTCP) } else { number(&socket::PROTOCOLS, protocol) }
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
            let on =
                protect::NAMES.iter().find(|(n, _)| n == protection).is_none_or(|(_, b)| policy.protections & b != 0);
            if on {
                Decision::Denied(format!("the {protection} protection"))
            } else {
                Decision::Allowed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use systrace_common::access;

    use super::*;
    use crate::policy::{parse, Host, Target};

    fn policy(text: &str) -> Policy {
        let host = Host { default_target: Some(Target::Cgroup("/t".into())), ..Host::default() };
        parse(Path::new("p.toml"), text, &host).unwrap()
    }

    #[test]
    fn most_specific_rule_per_bit_then_deny_then_default() {
        let p = policy(
            "mode = \"enforce\"\ndefault = \"deny\"\n\
             [[file]]\npath = \"/srv/**\"\naccess = [\"read\"]\n\
             [[file]]\npath = \"/srv/secret/**\"\naccess = [\"read\"]\nverdict = \"deny\"\n\
             [[file]]\npath = \"/srv/secret/ok\"\naccess = [\"read\"]\n\
             [[file]]\npath = \"/srv/x\"\naccess = [\"read\"]\n\
             [[file]]\npath = \"/srv/x\"\naccess = [\"read\"]\nverdict = \"deny\"\n",
        );
        let rw = access::READ | access::WRITE;
        let o = file_outcome(&p, "/srv/a", rw);
        assert_eq!((o.refused, o.by_rule, o.undecided), (access::WRITE, 0, access::WRITE));
        let o = file_outcome(&p, "/srv/secret/k", access::READ);
        assert_eq!((o.refused, o.by_rule, o.undecided), (access::READ, access::READ, 0));
        assert!(o.reason.starts_with("denied by the rule at 7:"), "{}", o.reason);
        assert_eq!(file_outcome(&p, "/srv/secret/ok", access::READ).refused, 0);
        // Equal specificity: the deny wins.
        assert_eq!(file_outcome(&p, "/srv/x", access::READ).by_rule, access::READ);
    }

    #[test]
    fn extension_rules_sit_between_the_directory_and_the_name() {
        let p = policy(
            "mode = \"enforce\"\ndefault = \"allow\"\n\
             [[file]]\npath = \"/srv/**\"\naccess = [\"read\"]\n\
             [[file]]\npath = \"/srv/keys/*.pem\"\naccess = [\"read\"]\nverdict = \"deny\"\n\
             [[file]]\npath = \"/srv/keys/public.pem\"\naccess = [\"read\"]\n\
             [[file]]\npath = \"/srv/keys/sub/**\"\naccess = [\"read\"]\n",
        );
        assert_eq!(file_outcome(&p, "/srv/keys/host.pem", access::READ).by_rule, access::READ);
        assert_eq!(file_outcome(&p, "/srv/keys/public.pem", access::READ).refused, 0);
        assert_eq!(file_outcome(&p, "/srv/keys/host.pem.bak", access::READ).refused, 0);
        assert_eq!(file_outcome(&p, "/srv/keys/pem", access::READ).refused, 0);
        assert_eq!(file_outcome(&p, "/srv/keys/.pem", access::READ).by_rule, access::READ);
        // Only names directly in the directory.
        assert_eq!(file_outcome(&p, "/srv/keys/sub/x.pem", access::READ).refused, 0);
        assert_eq!(file_outcome(&p, "/srv/keys/other/x.pem", access::READ).refused, 0);
    }
}

//! Network rules: addresses, ports, protocols, socket kinds and unix peers,
//! compiled into the entries of `NET_RULES`, `SOCKET_RULES` and `UNIX_RULES`.

use std::collections::BTreeMap;

use systrace_common::{net, policy_flags, rule_verdict, socket, NetRule, PortRule, SocketKey};

use super::RuleVerdict;

/// One network rule, expanded to a single operation, family and protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRuleSpec {
    pub op: u8,
    pub family: u8,
    pub proto: u8,
    /// Address bytes (IPv4 in the first 4) and prefix length in bits.
    pub addr: [u8; 16],
    pub prefix: u32,
    pub ports: (u16, u16),
    pub verdict: RuleVerdict,
}

/// An address a rule names: (family, address bytes, prefix bits).
pub type Cidr = (u8, [u8; 16], u32);

/// Parses `ADDRESS` or `ADDRESS/BITS`; IPv4-mapped IPv6 becomes IPv4.
pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (ip, bits) = match text.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits.parse::<u32>().map_err(|_| format!("bad prefix length in {text:?}"))?)),
        None => (text, None),
    };
    let ip: std::net::IpAddr =
        ip.parse().map_err(|_| format!("{ip:?} is not an IP address (or one of the words loopback, local)"))?;
    let mut addr = [0u8; 16];
    let (family, max, bits) = match ip {
        std::net::IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            (net::AF_INET, 32, bits)
        }
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                addr[..4].copy_from_slice(&v4.octets());
                (net::AF_INET, 32, bits.map(|b| b.saturating_sub(96)))
            }
            None => {
                addr = v6.octets();
                (net::AF_INET6, 128, bits)
            }
        },
    };
    let bits = bits.unwrap_or(max);
    if bits > max {
        return Err(format!("prefix length {bits} is longer than the address ({max} bits)"));
    }
    // Clear host bits so equal prefixes compare equal.
    for (i, byte) in addr.iter_mut().enumerate() {
        let keep = bits.saturating_sub(8 * i as u32).min(8);
        *byte &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    Ok((family, addr, bits))
}

/// What an `address` means: a CIDR, `loopback` (127.0.0.0/8 and ::1: every
/// address the kernel delivers to this host without a network, and where a
/// connect to a wildcard address goes), or `local` (loopback and every address
/// of this host's interfaces, as they are when the policy loads).
pub fn parse_address(text: &str, local: &[std::net::IpAddr]) -> Result<Vec<Cidr>, String> {
    let loopback = || -> Vec<Cidr> {
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        vec![(net::AF_INET, [127, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8), (net::AF_INET6, v6, 128)]
    };
    match text {
        "loopback" => Ok(loopback()),
        "local" => {
            let mut all = loopback();
            for ip in local {
                let cidr = parse_cidr(&ip.to_string())?;
                if !all.contains(&cidr) {
                    all.push(cidr);
                }
            }
            Ok(all)
        }
        _ => Ok(vec![parse_cidr(text)?]),
    }
}

/// `80`, or `"8000-8099"`.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let parse = |t: &str| t.trim().parse::<u16>().map_err(|_| format!("bad port {t:?} in {text:?}"));
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (parse(lo)?, parse(hi)?),
        None => (parse(text)?, parse(text)?),
    };
    if lo > hi {
        return Err(format!("port range {text:?} runs backwards"));
    }
    Ok((lo, hi))
}

pub fn rule_verdict_value(v: RuleVerdict) -> u8 {
    match v {
        RuleVerdict::Allow => rule_verdict::ALLOW,
        RuleVerdict::Deny => rule_verdict::DENY,
        RuleVerdict::Audit => rule_verdict::AUDIT,
    }
}

fn rank(v: u8) -> u8 {
    match v {
        rule_verdict::DENY => 2,
        rule_verdict::AUDIT => 1,
        _ => 0,
    }
}

/// One unix socket rule: a peer's name as the kernel keeps it (a path with its
/// terminating NUL, an abstract name after a leading NUL; empty for every
/// named peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixRuleSpec {
    /// `net::OP_CONNECT` or `net::OP_BIND` (abstract names only).
    pub op: u8,
    pub name: Vec<u8>,
    pub verdict: RuleVerdict,
}

/// Unix rule entries: (operation, name) -> verdict; when two rules name the same
/// socket, deny wins over audit, audit over allow.
pub fn compile_unix(rules: &[UnixRuleSpec]) -> BTreeMap<(u8, Vec<u8>), u8> {
    let mut out: BTreeMap<(u8, Vec<u8>), u8> = BTreeMap::new();
    for r in rules {
        let v = rule_verdict_value(r.verdict);
        let slot = out.entry((r.op, r.name.clone())).or_insert(v);
        if rank(v) > rank(*slot) {
            *slot = v;
        }
    }
    out
}

/// Key of a compiled network entry: (op, family, proto, address, prefix bits).
pub type NetEntryKey = (u8, u8, u8, [u8; 16], u32);

fn covers(outer: &NetRuleSpec, op: u8, family: u8, proto: u8, addr: &[u8; 16], prefix: u32) -> bool {
    if (outer.op, outer.family, outer.proto) != (op, family, proto) || outer.prefix > prefix {
        return false;
    }
    (0..16).all(|i| {
        let keep = outer.prefix.saturating_sub(8 * i as u32).min(8);
        let mask = if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        addr[i] & mask == outer.addr[i]
    })
}

/// One LPM entry per distinct (operation, family, protocol, prefix); each holds
/// the port ranges of every rule covering its prefix, most specific first: longer
/// prefix, then narrower range, then deny before audit before allow.
pub fn compile_net(rules: &[NetRuleSpec]) -> Result<BTreeMap<NetEntryKey, NetRule>, String> {
    let mut out = BTreeMap::new();
    for r in rules {
        let key = (r.op, r.family, r.proto, r.addr, r.prefix);
        if out.contains_key(&key) {
            continue;
        }
        let mut ranges: Vec<&NetRuleSpec> =
            rules.iter().filter(|o| covers(o, r.op, r.family, r.proto, &r.addr, r.prefix)).collect();
        let order = |v: RuleVerdict| match v {
            RuleVerdict::Deny => 0,
            RuleVerdict::Audit => 1,
            RuleVerdict::Allow => 2,
        };
        ranges.sort_by_key(|o| (std::cmp::Reverse(o.prefix), o.ports.1 - o.ports.0, order(o.verdict)));
        if ranges.len() > net::MAX_PORT_RULES {
            return Err(format!(
                "{} network rules apply to one address prefix; at most {} can",
                ranges.len(),
                net::MAX_PORT_RULES
            ));
        }
        let mut value = NetRule { count: ranges.len() as u32, ..NetRule::default() };
        for (slot, o) in value.ports.iter_mut().zip(&ranges) {
            *slot = PortRule { lo: o.ports.0, hi: o.ports.1, verdict: rule_verdict_value(o.verdict), _pad: [0; 3] };
        }
        out.insert(key, value);
    }
    Ok(out)
}

/// `policy_flags::RAW_CONNECT` and `RAW_BIND`: whether the rules for each
/// operation let a socket reach every address on every port (a raw socket can
/// write any destination): no deny rule, and the default or, for both
/// families, a rule naming no address, port or protocol allows.
pub fn raw_flags(rules: &[NetRuleSpec], default_allows: bool) -> u32 {
    let open = |op: u8| {
        let denies = rules.iter().any(|r| r.op == op && r.verdict == RuleVerdict::Deny);
        let everything = |family: u8| {
            rules.iter().any(|r| {
                r.op == op
                    && r.family == family
                    && r.proto == net::PROTO_ANY
                    && r.prefix == 0
                    && r.ports == (0, u16::MAX)
            })
        };
        !denies && (default_allows || (everything(net::AF_INET) && everything(net::AF_INET6)))
    };
    let mut flags = 0;
    if open(net::OP_CONNECT) {
        flags |= policy_flags::RAW_CONNECT;
    }
    if open(net::OP_BIND) {
        flags |= policy_flags::RAW_BIND;
    }
    flags
}

/// One socket rule: a family, a type or every type, a protocol or every protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRuleSpec {
    pub family: u16,
    /// [`SocketKey::ANY`] for every type of the family.
    pub sock_type: u16,
    /// [`SocketKey::ANY`] for every protocol.
    pub protocol: u16,
    pub verdict: RuleVerdict,
}

/// Socket entries: (family, type, protocol) -> verdict. The explicit rules, plus
/// the sockets that network rules allowing a protocol need (a `connect` over
/// tcp allows making a TCP socket of that family, and an MPTCP one, decided as
/// tcp) where no explicit rule speaks of that type.
pub fn compile_sockets(
    explicit: &[SocketRuleSpec],
    net_rules: &[NetRuleSpec],
    unix: &[UnixRuleSpec],
) -> BTreeMap<(u16, u16, u16), u8> {
    let mut out: BTreeMap<(u16, u16, u16), u8> = BTreeMap::new();
    for r in explicit {
        let v = rule_verdict_value(r.verdict);
        let slot = out.entry((r.family, r.sock_type, r.protocol)).or_insert(v);
        if rank(v) > rank(*slot) {
            *slot = v;
        }
    }
    let decided = |out: &BTreeMap<(u16, u16, u16), u8>, family: u16, sock_type: u16, protocol: u16| {
        out.contains_key(&(family, SocketKey::ANY, SocketKey::ANY))
            || out.contains_key(&(family, sock_type, SocketKey::ANY))
            || explicit.iter().any(|r| (r.family, r.sock_type, r.protocol) == (family, sock_type, protocol))
    };
    // A rule naming no protocol is also written under sctp when some rule
    // names sctp; only rules that name sctp themselves imply SCTP sockets.
    let expanded = |r: &NetRuleSpec| {
        r.proto == net::IPPROTO_SCTP
            && net_rules.iter().any(|o| o.proto == net::PROTO_ANY && NetRuleSpec { proto: r.proto, ..o.clone() } == *r)
    };
    for rule in net_rules.iter().filter(|r| r.verdict != RuleVerdict::Deny && !expanded(r)) {
        let mut families = vec![rule.family as u16];
        // An IPv6 socket reaches IPv4-mapped addresses, which IPv4 rules decide.
        if rule.family == net::AF_INET {
            families.push(net::AF_INET6 as u16);
        }
        let kinds: &[(u16, u16)] = match rule.proto {
            net::IPPROTO_TCP => &[(socket::SOCK_STREAM, 6), (socket::SOCK_STREAM, socket::IPPROTO_MPTCP)],
            net::IPPROTO_UDP => &[(socket::SOCK_DGRAM, 17)],
            net::IPPROTO_SCTP => &[(socket::SOCK_STREAM, 132), (socket::SOCK_SEQPACKET, 132)],
            _ => &[],
        };
        for &family in &families {
            for &(sock_type, protocol) in kinds {
                if !decided(&out, family, sock_type, protocol) {
                    out.entry((family, sock_type, protocol)).or_insert(rule_verdict::ALLOW);
                }
            }
        }
    }
    let family = net::AF_UNIX as u16;
    if unix.iter().any(|r| r.verdict != RuleVerdict::Deny) && !explicit.iter().any(|r| r.family == family) {
        out.entry((family, SocketKey::ANY, SocketKey::ANY)).or_insert(rule_verdict::ALLOW);
    }
    out
}

/// The types a rule that names a protocol but no type stands for.
pub const TYPES_OF_A_PROTOCOL: [u16; 4] = [socket::SOCK_STREAM, socket::SOCK_DGRAM, 3, socket::SOCK_SEQPACKET];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().2, 8);
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().1[..4], [10, 0, 0, 0]);
        let (f, a, b) = parse_cidr("::ffff:10.0.0.1").unwrap();
        assert_eq!((f, &a[..4], b), (net::AF_INET, &[10u8, 0, 0, 1][..], 32));
        assert_eq!(parse_cidr("::1").unwrap().0, net::AF_INET6);
        assert!(parse_cidr("10.0.0.1/33").is_err());
        assert!(parse_cidr("example.com").is_err());
    }

    #[test]
    fn address_words() {
        let lo = parse_address("loopback", &[]).unwrap();
        assert_eq!(lo.len(), 2);
        assert_eq!(lo[0], (net::AF_INET, parse_cidr("127.0.0.0/8").unwrap().1, 8));
        assert_eq!(lo[1], parse_cidr("::1").unwrap());
        let local = parse_address("local", &["10.0.2.15".parse().unwrap(), "127.0.0.1".parse().unwrap()]).unwrap();
        assert_eq!(local.len(), 4);
        assert!(local.contains(&parse_cidr("10.0.2.15").unwrap()));
    }

    /// A rule for every address and port, of no protocol.
    fn any(op: u8, family: u8, verdict: RuleVerdict) -> NetRuleSpec {
        NetRuleSpec { op, family, proto: net::PROTO_ANY, addr: [0; 16], prefix: 0, ports: (0, u16::MAX), verdict }
    }

    #[test]
    fn raw_sockets_need_every_address_allowed() {
        assert_eq!(raw_flags(&[], true), policy_flags::RAW_CONNECT | policy_flags::RAW_BIND);
        assert_eq!(raw_flags(&[], false), 0);
        let open = [
            any(net::OP_CONNECT, net::AF_INET, RuleVerdict::Allow),
            any(net::OP_CONNECT, net::AF_INET6, RuleVerdict::Allow),
        ];
        assert_eq!(raw_flags(&open, false), policy_flags::RAW_CONNECT);
        let one_deny = NetRuleSpec {
            addr: [127, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            prefix: 32,
            ..any(net::OP_CONNECT, net::AF_INET, RuleVerdict::Deny)
        };
        assert_eq!(raw_flags(&[one_deny], true), policy_flags::RAW_BIND, "one deny rule closes raw connects");
        let only_v4 = [any(net::OP_CONNECT, net::AF_INET, RuleVerdict::Allow)];
        assert_eq!(raw_flags(&only_v4, false), 0);
    }

    #[test]
    fn sctp_sockets_come_only_from_rules_that_name_sctp() {
        let every = any(net::OP_CONNECT, net::AF_INET, RuleVerdict::Allow);
        let expanded = NetRuleSpec { proto: net::IPPROTO_SCTP, ..every.clone() };
        let s = compile_sockets(&[], &[every, expanded], &[]);
        assert!(!s.contains_key(&(2, 1, 132)) && !s.contains_key(&(2, 5, 132)));
    }

    #[test]
    fn mptcp_and_sctp_sockets_follow_their_protocols() {
        let tcp = NetRuleSpec {
            op: net::OP_CONNECT,
            family: net::AF_INET,
            proto: net::IPPROTO_TCP,
            addr: [0; 16],
            prefix: 0,
            ports: (0, 65535),
            verdict: RuleVerdict::Allow,
        };
        let sctp = NetRuleSpec { proto: net::IPPROTO_SCTP, family: net::AF_INET6, ..tcp.clone() };
        let s = compile_sockets(&[], &[tcp, sctp], &[]);
        assert_eq!(s[&(2, 1, 6)], rule_verdict::ALLOW);
        assert_eq!(s[&(2, 1, 262)], rule_verdict::ALLOW);
        assert_eq!(s[&(10, 1, 6)], rule_verdict::ALLOW);
        assert_eq!(s[&(10, 5, 132)], rule_verdict::ALLOW);
        assert!(!s.contains_key(&(2, 1, 132)), "a tcp rule allows no SCTP socket");
        let deny_sctp = SocketRuleSpec { family: 10, sock_type: 5, protocol: 132, verdict: RuleVerdict::Deny };
        let s = compile_sockets(
            &[deny_sctp],
            &[NetRuleSpec {
                proto: net::IPPROTO_SCTP,
                family: net::AF_INET6,
                ..NetRuleSpec {
                    op: net::OP_CONNECT,
                    family: 0,
                    proto: 0,
                    addr: [0; 16],
                    prefix: 0,
                    ports: (0, 1),
                    verdict: RuleVerdict::Allow,
                }
            }],
            &[],
        );
        assert_eq!(s[&(10, 5, 132)], rule_verdict::DENY);
    }
}

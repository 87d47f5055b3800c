//! The policy file as written (TOML with spans), and its validation into a [`Policy`].

use std::{
    collections::BTreeMap,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use systrace_common::{access, capability, net, protect, socket, SocketKey, CGROUP_PATH_LEN, UNIT_NAME_LEN};
use toml::Spanned;

use super::*;

/// `user = 1000` or `user = "1000"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawUid {
    Number(u32),
    Text(String),
}

/// The file as written, with spans for diagnostics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
    unit: Option<Spanned<String>>,
    user_unit: Option<Spanned<String>>,
    /// With `user_unit`: only this user's manager.
    user: Option<Spanned<RawUid>>,
    mode: Mode,
    default: DefaultVerdict,
    /// Rule sets shipped with the agent (see [`INCLUDES`]).
    include: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    file: Vec<RawFileRule>,
    #[serde(default)]
    exec: Vec<RawExecRule>,
    #[serde(default)]
    net: Vec<RawNetRule>,
    /// Capabilities allowed; absent: the policy's default decides every one.
    capabilities: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    socket: Vec<RawSocketRule>,
    /// Self-protections switched off: name -> the reason, which is required.
    #[serde(default)]
    protection_off: BTreeMap<Spanned<String>, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSocketRule {
    family: Spanned<String>,
    #[serde(rename = "type")]
    sock_type: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    verdict: RuleVerdict,
}

/// `ports = 80` or `ports = "8000-8080"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawPorts {
    One(u16),
    Range(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetRule {
    operations: Spanned<Vec<NetOp>>,
    family: Option<Family>,
    protocol: Option<Protocol>,
    address: Option<Spanned<String>>,
    ports: Option<Spanned<RawPorts>>,
    /// Unix sockets: the peer's path, or its abstract name (without the NUL).
    path: Option<Spanned<String>>,
    #[serde(rename = "abstract")]
    abstract_name: Option<Spanned<String>>,
    #[serde(default)]
    verdict: RuleVerdict,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileRule {
    path: Spanned<String>,
    access: Spanned<Vec<Access>>,
    #[serde(default)]
    verdict: RuleVerdict,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecRule {
    path: Spanned<String>,
    #[serde(default)]
    verdict: RuleVerdict,
}

/// A name from a table, or a number.
fn named_number(text: &str, table: &[(&str, u16)], what: &str) -> Result<u16, String> {
    let lower = text.to_ascii_lowercase();
    if let Some((_, n)) = table.iter().find(|(name, _)| *name == lower) {
        return Ok(*n);
    }
    lower.parse::<u16>().map_err(|_| {
        let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
        format!("unknown {what} {text:?}: use one of {} or a number", names.join(", "))
    })
}

/// `net_bind_service` or `CAP_NET_BIND_SERVICE` to its number.
pub fn capability_number(text: &str) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    let name = lower.strip_prefix("cap_").unwrap_or(&lower);
    capability::NAMES.iter().position(|n| *n == name).map(|i| i as u32).ok_or_else(|| {
        format!("unknown capability {text:?} (capability names are those of capabilities(7), such as net_bind_service)")
    })
}

fn parse_ports(ports: &RawPorts) -> Result<(u16, u16), String> {
    match ports {
        RawPorts::One(p) => Ok((*p, *p)),
        RawPorts::Range(text) => network::parse_port_range(text),
    }
}

/// In a rule's path, every home directory ([`Host::homes`]).
pub const HOME_VARIABLE: &str = "${HOME}";

/// Parses and validates one policy file's text.
pub fn parse(file: &Path, text: &str, host: &Host) -> Result<Policy, Diagnostic> {
    let map = SourceMap::new(file, text);
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        map.diagnostic(Severity::Error, span, e.message().trim().to_string())
    })?;

    let name = match &raw.name {
        Some(name) => {
            let valid = !name.get_ref().is_empty()
                && name.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
            if !valid {
                return Err(map.diagnostic(
                    Severity::Error,
                    name.span(),
                    "a policy name is letters, digits and - _ . @ only",
                ));
            }
            name.get_ref().clone()
        }
        None => file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
    };

    let (target, target_span) = parse_target(&map, &raw, host)?;

    let mut files = Vec::with_capacity(raw.file.len() + raw.exec.len());
    let mut add = |path: &str, span: Range<usize>, access: u32, verdict: RuleVerdict| -> Result<(), Diagnostic> {
        // +1 skips the opening quote; exact for paths without escapes.
        let expanded: Vec<String> = match path.strip_prefix(HOME_VARIABLE) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                host.homes.iter().map(|home| format!("{}{rest}", home.display())).collect()
            }
            _ if path.contains('$') => {
                let at = path.find('$').unwrap_or(0);
                return Err(map.diagnostic(
                    Severity::Error,
                    span.start + 1 + at..span.end,
                    format!("the only variable is {HOME_VARIABLE}, at the start of a path"),
                ));
            }
            _ => vec![path.to_string()],
        };
        let written = !path.starts_with(HOME_VARIABLE);
        for path in expanded {
            // An offset into an expanded ${HOME} path is not one into the text.
            let (anchor, scope) = parse_pattern(&path).map_err(|(at, msg)| {
                let at = if written { at } else { 0 };
                map.diagnostic(Severity::Error, span.start + 1 + at..span.end, msg)
            })?;
            files.push(FileRuleSpec { path: anchor, scope, access, verdict, location: map.locate(span.start) });
        }
        Ok(())
    };
    for name in raw.include.iter().flatten() {
        let Some(set) = include(name.get_ref()) else {
            let known: Vec<&str> = INCLUDES.iter().map(|i| i.name).collect();
            return Err(map.diagnostic(
                Severity::Error,
                name.span(),
                format!("unknown include {:?}: the includes are {}", name.get_ref(), known.join(", ")),
            ));
        };
        for (path, bits) in set.rules {
            add(path, name.span(), *bits, RuleVerdict::Allow)?;
        }
    }
    for rule in &raw.file {
        if rule.access.get_ref().is_empty() {
            let kinds: Vec<&str> = access::NAMES.iter().map(|(n, _)| *n).collect();
            return Err(map.diagnostic(
                Severity::Error,
                rule.access.span(),
                format!("access is empty: list at least one of {}", kinds.join(", ")),
            ));
        }
        let bits = rule.access.get_ref().iter().fold(0, |bits, a| bits | a.bits());
        add(rule.path.get_ref(), rule.path.span(), bits, rule.verdict)?;
    }
    for rule in &raw.exec {
        add(rule.path.get_ref(), rule.path.span(), Access::Exec.bits(), rule.verdict)?;
    }

    let mut net_rules = Vec::new();
    let names_sctp = raw.net.iter().any(|r| matches!(r.protocol, Some(Protocol::Sctp)));
    let mut unix = Vec::new();
    for rule in &raw.net {
        if rule.operations.get_ref().is_empty() {
            return Err(map.diagnostic(
                Severity::Error,
                rule.operations.span(),
                "operations is empty: list bind, connect or both",
            ));
        }
        let named = rule.path.as_ref().or(rule.abstract_name.as_ref());
        if rule.family == Some(Family::Unix) || named.is_some() {
            unix.extend(parse_unix_rule(&map, rule)?);
            continue;
        }
        let addresses: Vec<network::Cidr> = match &rule.address {
            Some(a) => parse_address(a.get_ref(), &host.local_addresses)
                .map_err(|m| map.diagnostic(Severity::Error, a.span(), m))?,
            None => vec![],
        };
        let wanted = |f: u8| match rule.family {
            Some(Family::Inet) => f == net::AF_INET,
            Some(Family::Inet6) => f == net::AF_INET6,
            _ => true,
        };
        let targets: Vec<network::Cidr> = if addresses.is_empty() {
            [net::AF_INET, net::AF_INET6].into_iter().filter(|f| wanted(*f)).map(|f| (f, [0; 16], 0)).collect()
        } else {
            let kept: Vec<network::Cidr> = addresses.iter().copied().filter(|(f, _, _)| wanted(*f)).collect();
            if kept.is_empty() {
                let span = rule.address.as_ref().map_or(0..0, |a| a.span());
                return Err(map.diagnostic(Severity::Error, span, "the address is not of the rule's family"));
            }
            kept
        };
        let protos = match rule.protocol {
            Some(Protocol::Tcp) => vec![net::IPPROTO_TCP],
            Some(Protocol::Udp) => vec![net::IPPROTO_UDP],
            Some(Protocol::Sctp) => vec![net::IPPROTO_SCTP],
            // Every protocol: under its own key (see `net::PROTO_ANY`) and
            // next to the rules of tcp, udp and any protocol a rule names.
            None if names_sctp => vec![net::PROTO_ANY, net::IPPROTO_TCP, net::IPPROTO_UDP, net::IPPROTO_SCTP],
            None => vec![net::PROTO_ANY, net::IPPROTO_TCP, net::IPPROTO_UDP],
        };
        let ports = match &rule.ports {
            Some(p) => parse_ports(p.get_ref()).map_err(|m| map.diagnostic(Severity::Error, p.span(), m))?,
            None => (0, u16::MAX),
        };
        for op in rule.operations.get_ref() {
            let op = match op {
                NetOp::Bind => net::OP_BIND,
                NetOp::Connect => net::OP_CONNECT,
            };
            for &(family, addr, prefix) in &targets {
                for &proto in &protos {
                    net_rules.push(NetRuleSpec { op, family, proto, addr, prefix, ports, verdict: rule.verdict });
                }
            }
        }
    }

    let capabilities = match &raw.capabilities {
        Some(list) => {
            let mut bits = 0u64;
            for cap in list.get_ref() {
                let n = capability_number(cap.get_ref()).map_err(|m| map.diagnostic(Severity::Error, cap.span(), m))?;
                bits |= 1 << n;
            }
            Some(bits)
        }
        None => None,
    };

    let mut sockets: Vec<SocketRuleSpec> = Vec::new();
    for rule in &raw.socket {
        let family = named_number(rule.family.get_ref(), &socket::FAMILIES, "socket family")
            .map_err(|m| map.diagnostic(Severity::Error, rule.family.span(), m))?;
        let sock_type = match &rule.sock_type {
            Some(t) => Some(
                named_number(t.get_ref(), &socket::TYPES, "socket type")
                    .map_err(|m| map.diagnostic(Severity::Error, t.span(), m))?,
            ),
            None => None,
        };
        let protocol = match &rule.protocol {
            Some(p) => {
                let mut table: Vec<(&str, u16)> = socket::PROTOCOLS.to_vec();
                table.push(("mptcp", socket::IPPROTO_MPTCP));
                let n = named_number(p.get_ref(), &table, "protocol")
                    .map_err(|m| map.diagnostic(Severity::Error, p.span(), m))?;
                if family != net::AF_INET as u16 && family != net::AF_INET6 as u16 {
                    return Err(map.diagnostic(Severity::Error, p.span(), "a protocol is for inet and inet6 sockets"));
                }
                Some(n)
            }
            None => None,
        };
        let kinds: Vec<(u16, u16)> = match (sock_type, protocol) {
            (Some(t), Some(p)) => vec![(t, p)],
            (Some(t), None) => vec![(t, SocketKey::ANY)],
            (None, Some(p)) => network::TYPES_OF_A_PROTOCOL.iter().map(|t| (*t, p)).collect(),
            (None, None) => vec![(SocketKey::ANY, SocketKey::ANY)],
        };
        for (sock_type, protocol) in kinds {
            if let Some(other) =
                sockets.iter().find(|o| (o.family, o.sock_type, o.protocol) == (family, sock_type, protocol))
            {
                if other.verdict != rule.verdict {
                    return Err(map.diagnostic(
                        Severity::Error,
                        rule.family.span(),
                        "another socket rule names the same family, type and protocol with a different verdict",
                    ));
                }
            }
            sockets.push(SocketRuleSpec { family, sock_type, protocol, verdict: rule.verdict });
        }
    }

    let mut protections = protect::ALL;
    let mut protections_off = Vec::new();
    for (name, reason) in &raw.protection_off {
        let Some((_, bit)) = protect::NAMES.iter().find(|(n, _)| n == name.get_ref()) else {
            let names: Vec<&str> = protect::NAMES.iter().map(|(n, _)| *n).collect();
            return Err(map.diagnostic(
                Severity::Error,
                name.span(),
                format!("unknown protection {:?}: the protections are {}", name.get_ref(), names.join(", ")),
            ));
        };
        if reason.get_ref().trim().is_empty() {
            return Err(map.diagnostic(
                Severity::Error,
                reason.span(),
                "say why this protection is off: the reason is kept in the agent's status output",
            ));
        }
        protections &= !bit;
        protections_off.push((name.get_ref().clone(), reason.get_ref().clone()));
    }

    Ok(Policy {
        name,
        source: file.to_path_buf(),
        target,
        target_location: map.locate(target_span.start),
        mode: raw.mode,
        default: raw.default,
        files,
        net: net_rules,
        capabilities,
        sockets,
        unix,
        protections,
        protections_off,
    })
}

/// The cgroup or unit a policy confines.
fn parse_target(map: &SourceMap, raw: &RawPolicy, host: &Host) -> Result<(Target, Range<usize>), Diagnostic> {
    let cgroup_root = &host.cgroup_root;
    let given: Vec<&Spanned<String>> = [&raw.cgroup, &raw.unit, &raw.user_unit].into_iter().flatten().collect();
    if let (true, Some(target)) = (given.is_empty(), &host.default_target) {
        return Ok((target.clone(), 0..0));
    }
    if given.is_empty() {
        return Err(map.diagnostic(
            Severity::Error,
            0..0,
            "missing target: add cgroup = \"PATH\", unit = \"NAME.service\" or user_unit = \"NAME.service\"",
        ));
    }
    if given.len() > 1 {
        return Err(map.diagnostic(
            Severity::Error,
            given[1].span(),
            "give one of cgroup, unit or user_unit, not several",
        ));
    }
    if let Some(user) = &raw.user {
        if raw.user_unit.is_none() {
            return Err(map.diagnostic(Severity::Error, user.span(), "user goes with user_unit"));
        }
    }
    let unit_name = |u: &Spanned<String>| -> Result<String, Diagnostic> {
        let name = u.get_ref();
        let valid = name.contains('.')
            && !name.contains('/')
            && name.len() < UNIT_NAME_LEN
            && name.chars().all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
        if !valid {
            return Err(map.diagnostic(
                Severity::Error,
                u.span(),
                "a unit is a systemd unit name such as nginx.service or machine.slice, without '/'",
            ));
        }
        Ok(name.clone())
    };
    if let Some(unit) = &raw.unit {
        return Ok((Target::Unit { name: unit_name(unit)?, user: None }, unit.span()));
    }
    if let Some(unit) = &raw.user_unit {
        let uid = match &raw.user {
            None => None,
            Some(u) => Some(match u.get_ref() {
                RawUid::Number(n) => *n,
                RawUid::Text(t) => {
                    t.parse().map_err(|_| map.diagnostic(Severity::Error, u.span(), "user is a numeric user id"))?
                }
            }),
        };
        return Ok((Target::Unit { name: unit_name(unit)?, user: Some(uid) }, unit.span()));
    }
    let cgroup = raw.cgroup.as_ref().expect("one target given");
    let text = cgroup.get_ref();
    if text.is_empty() || text.split('/').any(|c| c == ".." || c == ".") {
        return Err(map.diagnostic(
            Severity::Error,
            cgroup.span(),
            "cgroup must be a path below the cgroup2 mount, without '.' or '..'",
        ));
    }
    let absolute = if text.starts_with('/') { PathBuf::from(text) } else { cgroup_root.join(text) };
    let relative = absolute.strip_prefix(cgroup_root).ok().filter(|r| !r.as_os_str().is_empty());
    let Some(relative) = relative else {
        return Err(map.diagnostic(
            Severity::Error,
            cgroup.span(),
            format!(
                "cgroup {} is not below the cgroup2 mount {} (confining the root cgroup would confine the whole system)",
                absolute.display(),
                cgroup_root.display()
            ),
        ));
    };
    let path = format!("/{}", relative.to_string_lossy().trim_end_matches('/'));
    if path.len() >= CGROUP_PATH_LEN - 1 {
        return Err(map.diagnostic(Severity::Error, cgroup.span(), "the cgroup path is too long (at most 254 bytes)"));
    }
    Ok((Target::Cgroup(path), cgroup.span()))
}

/// Validates a `family = "unix"` network rule; one spec per operation.
fn parse_unix_rule(map: &SourceMap, rule: &RawNetRule) -> Result<Vec<UnixRuleSpec>, Diagnostic> {
    let err = |span: Range<usize>, msg: &str| map.diagnostic(Severity::Error, span, msg.to_string());
    if let Some(path) = rule.path.as_ref().or(rule.abstract_name.as_ref()) {
        if rule.family.is_some_and(|f| f != Family::Unix) {
            return Err(err(
                path.span(),
                "a path or abstract name is for unix sockets: the rule's family must be unix",
            ));
        }
    }
    if rule.path.is_some() && rule.operations.get_ref().contains(&NetOp::Bind) {
        return Err(err(
            rule.operations.span(),
            "binding a unix path socket creates a file, which [[file]] rules with create decide; bind rules name abstract sockets",
        ));
    }
    if let Some(a) = &rule.address {
        return Err(err(a.span(), "a unix rule names a path or an abstract name, not an address"));
    }
    if let Some(p) = &rule.ports {
        return Err(err(p.span(), "unix sockets have no ports"));
    }
    if rule.protocol.is_some() {
        return Err(err(rule.operations.span(), "unix rules take no protocol"));
    }
    let name = match (&rule.path, &rule.abstract_name) {
        (Some(_), Some(a)) => return Err(err(a.span(), "give either path or abstract, not both")),
        (Some(path), None) => {
            if !path.get_ref().starts_with('/') {
                return Err(err(path.span(), "a unix socket path must be absolute"));
            }
            let mut bytes = path.get_ref().as_bytes().to_vec();
            bytes.push(0);
            bytes
        }
        (None, Some(name)) => {
            if name.get_ref().is_empty() {
                return Err(err(name.span(), "an abstract name cannot be empty"));
            }
            let mut bytes = vec![0];
            bytes.extend_from_slice(name.get_ref().as_bytes());
            bytes
        }
        (None, None) => Vec::new(),
    };
    if name.len() > systrace_common::UNIX_PATH_MAX {
        let span = rule.path.as_ref().or(rule.abstract_name.as_ref()).map_or(0..0, |s| s.span());
        return Err(err(span, "a unix socket name has at most 107 bytes"));
    }
    Ok(rule
        .operations
        .get_ref()
        .iter()
        .map(|op| UnixRuleSpec {
            op: if *op == NetOp::Bind { net::OP_BIND } else { net::OP_CONNECT },
            name: name.clone(),
            verdict: rule.verdict,
        })
        .collect())
}

/// Errors for policies that cannot be loaded together: two naming the same
/// target, or using the same name. Points at the later one.
pub fn check_conflicts(policies: &[Policy]) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        if let Some(first) = policies[..i].iter().find(|q| q.target == p.target) {
            errors.push(Diagnostic {
                severity: Severity::Error,
                location: p.target_location.clone(),
                message: format!(
                    "duplicate target: {} is already confined by policy {} ({}:{})",
                    p.target,
                    first.name,
                    first.source.display(),
                    first.target_location.line
                ),
            });
        } else if let Some(first) = policies[..i].iter().find(|q| q.name == p.name) {
            errors.push(Diagnostic {
                severity: Severity::Error,
                location: Location { file: p.source.clone(), line: 1, column: 1 },
                message: format!("duplicate policy name {} (also in {})", p.name, first.source.display()),
            });
        }
    }
    errors
}

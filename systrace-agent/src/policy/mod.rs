//! The policy model: parse a policy file, validate it, compile it to map entries.
//!
//! Pure code apart from the [`Resolver`] that canonicalizes paths and the
//! [`Host`] facts parsing needs, so the whole pipeline is tested on the host
//! with fakes. Every error carries file, line and column ([`Diagnostic`]). The
//! language is described in the README.

mod files;
mod network;

use std::{
    collections::BTreeMap,
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

pub use files::{components, include, parse_pattern, NameTree, Scope, INCLUDES};
pub use network::{
    compile_net, compile_sockets, compile_unix, parse_address, parse_cidr, NetEntryKey, NetRuleSpec, SocketRuleSpec,
    UnixRuleSpec,
};
use serde::Deserialize;
use systrace_common::{
    access, capability, net, policy_flags, protect, socket, unit_kind, FileRule, NetRule, PolicyInfo, SocketKey,
    CGROUP_PATH_LEN, UNIT_NAME_LEN,
};
use toml::Spanned;

/// Where a diagnostic points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// An error or warning about a policy file, printed as `file:line:col: severity: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}: {}",
            self.location.file.display(),
            self.location.line,
            self.location.column,
            self.message
        )
    }
}

impl std::error::Error for Diagnostic {}

/// Maps byte offsets of one source text to 1-based line and column (in characters).
/// Line starts are found once: policies with 100,000 rules locate every rule.
struct SourceMap<'a> {
    file: &'a Path,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceMap<'a> {
    fn new(file: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        SourceMap { file, text, line_starts }
    }

    fn locate(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        // The last line start at or before offset.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line - 1];
        let column = self.text[line_start..offset].chars().count() + 1;
        Location { file: self.file.to_path_buf(), line, column }
    }

    fn diagnostic(&self, severity: Severity, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity, location: self.locate(span.start), message: message.into() }
    }
}


#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultVerdict {
    Deny,
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Append,
    Exec,
    Create,
    Delete,
    Rename,
    Map,
    Chmod,
    Chown,
}

impl Access {
    /// Kernel access bits. Write implies append, as in AppArmor: a file that may be
    /// overwritten may also be appended to. Exec implies map: a program that may
    /// run may be mapped as code.
    pub fn bits(self) -> u32 {
        match self {
            Access::Read => access::READ,
            Access::Write => access::WRITE | access::APPEND,
            Access::Append => access::APPEND,
            Access::Exec => access::EXEC | access::MAP,
            Access::Create => access::CREATE,
            Access::Delete => access::DELETE,
            Access::Rename => access::RENAME,
            Access::Map => access::MAP,
            Access::Chmod => access::CHMOD,
            Access::Chown => access::CHOWN,
        }
    }
}

/// What a rule does with the access it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuleVerdict {
    #[default]
    Allow,
    Deny,
    /// Allow, and report every use.
    Audit,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetOp {
    Bind,
    Connect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Inet,
    Inet6,
    Unix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
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

/// Which cgroups a policy confines.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// One cgroup path, relative to the cgroup2 root, with a leading `/`
    /// (`/system.slice/nginx.service`), as the kernel's cgroup tracepoints name it.
    Cgroup(String),
    /// A systemd unit's cgroup, wherever its slice puts it: named after the
    /// unit, outside every user manager (`user: None`), or below one
    /// (`Some(None)`: any user; `Some(Some(uid))`: that user's `user@UID.service`).
    Unit { name: String, user: Option<Option<u32>> },
}

impl Target {
    /// The user manager's cgroup name a user unit is bound below.
    pub fn manager(&self) -> Option<String> {
        match self {
            Target::Unit { user: Some(Some(uid)), .. } => Some(format!("user@{uid}.service")),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Cgroup(path) => write!(f, "cgroup {path}"),
            Target::Unit { name, user: None } => write!(f, "unit {name}"),
            Target::Unit { name, user: Some(None) } => write!(f, "user unit {name} (every user)"),
            Target::Unit { name, user: Some(Some(uid)) } => write!(f, "user unit {name} (user {uid})"),
        }
    }
}

/// Facts about the host that parsing needs.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// Where the cgroup2 hierarchy is mounted.
    pub cgroup_root: PathBuf,
    /// This host's interface addresses, for `address = "local"`.
    pub local_addresses: Vec<std::net::IpAddr>,
}

/// A validated policy, not yet tied to the file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub source: PathBuf,
    pub target: Target,
    /// Where the target (cgroup or unit) is written, for duplicate-target errors.
    pub target_location: Location,
    pub mode: Mode,
    pub default: DefaultVerdict,
    pub files: Vec<FileRuleSpec>,
    pub net: Vec<NetRuleSpec>,
    /// Allowed capabilities as a bit set; `None` when the policy lists none and
    /// its default decides.
    pub capabilities: Option<u64>,
    pub sockets: Vec<SocketRuleSpec>,
    pub unix: Vec<UnixRuleSpec>,
    /// [`protect`] bits that stay on.
    pub protections: u32,
    /// Protections switched off, with the reason the policy gives.
    pub protections_off: Vec<(String, String)>,
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
    capability::NAMES
        .iter()
        .position(|n| *n == name)
        .map(|i| i as u32)
        .ok_or_else(|| format!("unknown capability {text:?} (capability names are those of capabilities(7), such as net_bind_service)"))
}

fn parse_ports(ports: &RawPorts) -> Result<(u16, u16), String> {
    match ports {
        RawPorts::One(p) => Ok((*p, *p)),
        RawPorts::Range(text) => network::parse_port_range(text),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRuleSpec {
    /// The anchor: the file itself for [`Scope::Exact`], else the directory.
    pub path: PathBuf,
    pub scope: Scope,
    pub access: u32,
    pub verdict: RuleVerdict,
    pub location: Location,
}

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

    let (target, target_span) = parse_target(&map, &raw, &host.cgroup_root)?;

    let mut files = Vec::with_capacity(raw.file.len() + raw.exec.len());
    let mut add = |path: &str, span: Range<usize>, access: u32, verdict: RuleVerdict| -> Result<(), Diagnostic> {
        // +1 skips the opening quote; exact for paths without escapes.
        let (anchor, scope) = parse_pattern(path)
            .map_err(|(at, msg)| map.diagnostic(Severity::Error, span.start + 1 + at..span.end, msg))?;
        files.push(FileRuleSpec { path: anchor, scope, access, verdict, location: map.locate(span.start) });
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
            return Err(map.diagnostic(Severity::Error, rule.operations.span(), "operations is empty: list bind, connect or both"));
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
                let n = named_number(p.get_ref(), &table, "protocol").map_err(|m| map.diagnostic(Severity::Error, p.span(), m))?;
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
            if let Some(other) = sockets.iter().find(|o| (o.family, o.sock_type, o.protocol) == (family, sock_type, protocol)) {
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
fn parse_target(map: &SourceMap, raw: &RawPolicy, cgroup_root: &Path) -> Result<(Target, Range<usize>), Diagnostic> {
    let given: Vec<&Spanned<String>> = [&raw.cgroup, &raw.unit, &raw.user_unit].into_iter().flatten().collect();
    if given.is_empty() {
        return Err(map.diagnostic(
            Severity::Error,
            0..0,
            "missing target: add cgroup = \"PATH\", unit = \"NAME.service\" or user_unit = \"NAME.service\"",
        ));
    }
    if given.len() > 1 {
        return Err(map.diagnostic(Severity::Error, given[1].span(), "give one of cgroup, unit or user_unit, not several"));
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
                RawUid::Text(t) => t
                    .parse()
                    .map_err(|_| map.diagnostic(Severity::Error, u.span(), "user is a numeric user id"))?,
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
            return Err(err(path.span(), "a path or abstract name is for unix sockets: the rule's family must be unix"));
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

/// Turns rule paths into the names the kernel will see.
pub trait Resolver {
    /// The path with the symlinks of its existing part resolved: the kernel
    /// matches the path of the file actually opened (`/lib` is `/usr/lib` on
    /// merged-/usr systems).
    fn canonical(&self, path: &Path) -> PathBuf;
}

/// A policy ready to be written to the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub name: String,
    pub source: PathBuf,
    pub target: Target,
    pub info: PolicyInfo,
    /// The file rules by name.
    pub tree: NameTree,
    /// Deny rules that also follow the inode of the path they name, when it exists.
    pub inode_anchors: BTreeMap<PathBuf, FileRule>,
    /// Network LPM entries.
    pub net: BTreeMap<NetEntryKey, NetRule>,
    /// Socket rules: (family, type, protocol; [`SocketKey::ANY`] for every) -> verdict.
    pub sockets: BTreeMap<(u16, u16, u16), u8>,
    /// Unix sockets: (operation, name; empty: every name) -> verdict.
    pub unix: BTreeMap<(u8, Vec<u8>), u8>,
    /// Protections the policy switched off, with its reasons.
    pub protections_off: Vec<(String, String)>,
    pub warnings: Vec<Diagnostic>,
}

/// Names of the capabilities in a bit set; `["all"]` for every one.
pub fn capability_names(bits: u64) -> Vec<&'static str> {
    if bits == u64::MAX {
        return vec!["all"];
    }
    capability::NAMES.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, n)| *n).collect()
}

/// Resolves a validated policy against the file system. `key` keys the hash
/// of path components the kernel will compute too.
pub fn compile(policy: &Policy, resolver: &dyn Resolver, key: [u64; 2]) -> Result<Compiled, Diagnostic> {
    let rules: Vec<(PathBuf, Scope, u32, RuleVerdict)> = policy
        .files
        .iter()
        .map(|spec| (resolver.canonical(&spec.path), spec.scope, spec.access, spec.verdict))
        .collect();
    let error = |message: String| Diagnostic { severity: Severity::Error, location: policy.target_location.clone(), message };
    for (spec, (canonical, _, _, _)) in policy.files.iter().zip(&rules) {
        if files::components(canonical).len() > systrace_common::MAX_RULE_DEPTH {
            return Err(Diagnostic {
                severity: Severity::Error,
                location: spec.location.clone(),
                message: format!(
                    "{} is {} once its symlinks are resolved: more than {} components",
                    spec.path.display(),
                    canonical.display(),
                    systrace_common::MAX_RULE_DEPTH
                ),
            });
        }
    }
    let tree = NameTree::build(&rules, key).map_err(error)?;
    let inode_anchors = files::inode_anchors(&rules);
    let info = PolicyInfo {
        mode: match policy.mode {
            Mode::Enforce => systrace_common::Mode::Enforce as u8,
            Mode::Audit => systrace_common::Mode::Audit as u8,
        },
        default: match policy.default {
            DefaultVerdict::Deny => systrace_common::Default::Deny as u8,
            DefaultVerdict::Allow => systrace_common::Default::Allow as u8,
        },
        _pad: [0; 2],
        protections: policy.protections,
        capabilities: policy.capabilities.unwrap_or(match policy.default {
            DefaultVerdict::Deny => 0,
            DefaultVerdict::Allow => u64::MAX,
        }),
        denied_somewhere: files::denied_somewhere(&policy.files),
        // INODE_RULES is set once the anchors are found on the file system.
        flags: network::raw_flags(&policy.net, policy.default == DefaultVerdict::Allow),
    };
    let net = compile_net(&policy.net).map_err(error)?;
    Ok(Compiled {
        name: policy.name.clone(),
        source: policy.source.clone(),
        target: policy.target.clone(),
        info,
        tree,
        inode_anchors,
        net,
        sockets: compile_sockets(&policy.sockets, &policy.net, &policy.unix),
        unix: compile_unix(&policy.unix),
        protections_off: policy.protections_off.clone(),
        warnings: Vec::new(),
    })
}

impl Compiled {
    /// Marks that inode rules were installed for this policy.
    pub fn with_inode_rules(mut self, any: bool) -> Self {
        if any {
            self.info.flags |= policy_flags::INODE_RULES;
        } else {
            self.info.flags &= !policy_flags::INODE_RULES;
        }
        self
    }
}

/// The resolver for the running system.
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn canonical(&self, path: &Path) -> PathBuf {
        canonical_prefix(path, |p| std::fs::canonicalize(p).ok())
    }
}

/// `path` with its longest existing prefix canonicalized by `canon` and the
/// rest appended as written.
pub fn canonical_prefix(path: &Path, canon: impl Fn(&Path) -> Option<PathBuf>) -> PathBuf {
    let mut rest = Vec::new();
    let mut prefix = path.to_path_buf();
    loop {
        if let Some(mut real) = canon(&prefix) {
            for part in rest.iter().rev() {
                real.push(part);
            }
            return real;
        }
        match (prefix.parent(), prefix.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                prefix = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Converts `stat()`'s device number to the kernel's internal `dev_t`
/// (`major << 20 | minor`), which is what `super_block.s_dev` holds.
pub fn kernel_dev(user_dev: u64) -> u64 {
    let major = libc::major(user_dev) as u64;
    let minor = libc::minor(user_dev) as u64;
    (major << 20) | minor
}

/// Formats a kernel `dev_t` as `major:minor`.
pub fn format_kernel_dev(dev: u64) -> String {
    format!("{}:{}", dev >> 20, dev & 0xfffff)
}

/// Names of the access bits in `bits`, in a fixed order.
pub fn access_names(bits: u32) -> Vec<&'static str> {
    access::NAMES.iter().filter(|(_, bit)| bits & bit != 0).map(|(name, _)| *name).collect()
}

/// The unit target's fields as the kernel's `UNITS` map holds them.
pub fn unit_entry(target: &Target) -> Option<(String, u8, String)> {
    match target {
        Target::Unit { name, user: None } => Some((name.clone(), unit_kind::SYSTEM, String::new())),
        Target::Unit { name, user: Some(_) } => {
            Some((name.clone(), unit_kind::USER, target.manager().unwrap_or_default()))
        }
        Target::Cgroup(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use systrace_common::{name_hash, rule_verdict, RuleSet};

    use super::*;

    const ROOT: &str = "/sys/fs/cgroup";

    fn host() -> Host {
        Host { cgroup_root: PathBuf::from(ROOT), local_addresses: vec!["10.0.2.15".parse().unwrap()] }
    }

    fn parse_str(text: &str) -> Result<Policy, Diagnostic> {
        parse(Path::new("p.toml"), text, &host())
    }

    fn error_at(text: &str) -> (usize, usize, String) {
        let d = parse_str(text).unwrap_err();
        assert_eq!(d.severity, Severity::Error);
        (d.location.line, d.location.column, d.message)
    }

    const GOOD: &str = r#"
name = "web"
cgroup = "system.slice/nginx.service"
mode = "enforce"
default = "deny"

[[file]]
path = "/etc/nginx/nginx.conf"
access = ["read"]

[[file]]
path = "/var/log/nginx/*"
access = ["append", "create"]
verdict = "audit"

[[file]]
path = "/var/www/**"
access = ["read"]

[[file]]
path = "/var/www/private/**"
access = ["read"]
verdict = "deny"

[[exec]]
path = "/usr/sbin/nginx"
"#;

    #[test]
    fn parses_a_valid_policy() {
        let p = parse_str(GOOD).unwrap();
        assert_eq!(p.name, "web");
        assert_eq!(p.target, Target::Cgroup("/system.slice/nginx.service".into()));
        assert_eq!((p.target_location.line, p.target_location.column), (3, 10));
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.default, DefaultVerdict::Deny);
        assert_eq!(p.files.len(), 5);
        assert_eq!((p.files[0].scope, p.files[0].access), (Scope::Exact, access::READ));
        assert_eq!(p.files[1].path, PathBuf::from("/var/log/nginx"));
        assert_eq!((p.files[1].scope, p.files[1].verdict), (Scope::Children, RuleVerdict::Audit));
        assert_eq!(p.files[1].access, access::APPEND | access::CREATE);
        assert_eq!((p.files[1].location.line, p.files[1].location.column), (12, 8));
        assert_eq!((p.files[2].scope, p.files[2].path.as_path()), (Scope::Subtree, Path::new("/var/www")));
        assert_eq!(p.files[3].verdict, RuleVerdict::Deny);
        assert_eq!((p.files[4].access, p.files[4].scope), (access::EXEC | access::MAP, Scope::Exact));
    }

    #[test]
    fn units_are_named_not_placed() {
        let p = parse_str("unit = \"nginx.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n").unwrap();
        assert_eq!(p.target, Target::Unit { name: "nginx.service".into(), user: None });
        let p = parse_str("unit = \"machine.slice\"\nmode = \"enforce\"\ndefault = \"deny\"\n").unwrap();
        assert_eq!(p.target, Target::Unit { name: "machine.slice".into(), user: None });
        let p = parse_str("user_unit = \"app.service\"\nuser = 1000\nmode = \"enforce\"\ndefault = \"deny\"\n").unwrap();
        assert_eq!(p.target, Target::Unit { name: "app.service".into(), user: Some(Some(1000)) });
        assert_eq!(p.target.manager().as_deref(), Some("user@1000.service"));
        let p = parse_str("user_unit = \"app.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n").unwrap();
        assert_eq!(p.target, Target::Unit { name: "app.service".into(), user: Some(None) });
        let (line, col, msg) = error_at("unit = \"a/b.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert_eq!((line, col), (1, 8));
        assert!(msg.contains("unit"), "{msg}");
        let (_, _, msg) = error_at("cgroup = \"a\"\nunit = \"x.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert!(msg.contains("not several"), "{msg}");
        let (_, _, msg) = error_at("unit = \"x.service\"\nuser = 5\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert!(msg.contains("user_unit"), "{msg}");
        let (_, _, msg) = error_at("mode = \"enforce\"\ndefault = \"deny\"\n");
        assert!(msg.contains("missing target"), "{msg}");
    }

    #[test]
    fn bad_glob_points_at_the_wildcard() {
        let (line, col, msg) = error_at(
            "cgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\n[[file]]\npath = \"/var/*.log\"\naccess = [\"read\"]\n",
        );
        assert_eq!((line, col), (5, 14));
        assert!(msg.starts_with("bad glob"), "{msg}");
    }

    #[test]
    fn duplicate_targets_point_at_the_second_file() {
        let h = host();
        let a = parse(Path::new("a.toml"), "cgroup = \"x\"\nmode = \"enforce\"\ndefault = \"deny\"\n", &h).unwrap();
        let b = parse(Path::new("b.toml"), "# again\nmode = \"audit\"\ndefault = \"deny\"\ncgroup = \"/sys/fs/cgroup/x\"\n", &h).unwrap();
        let errors = check_conflicts(&[a.clone(), b]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].location, Location { file: "b.toml".into(), line: 4, column: 10 });
        assert!(errors[0].message.contains("duplicate target"), "{}", errors[0].message);
        let c = parse(Path::new("c/a.toml"), "cgroup = \"y\"\nmode = \"enforce\"\ndefault = \"deny\"\n", &h).unwrap();
        let errors = check_conflicts(&[a, c]);
        assert!(errors[0].message.contains("duplicate policy name"), "{}", errors[0].message);
        let u1 = parse(Path::new("u1.toml"), "unit = \"w.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n", &h).unwrap();
        let u2 = parse(Path::new("u2.toml"), "unit = \"w.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n", &h).unwrap();
        assert!(check_conflicts(&[u1, u2])[0].message.contains("duplicate target"));
    }

    #[test]
    fn name_defaults_to_file_stem() {
        let p = parse(Path::new("/etc/systrace/sshd.toml"), "cgroup = \"a\"\nmode = \"audit\"\ndefault = \"allow\"\n", &host())
            .unwrap();
        assert_eq!(p.name, "sshd");
    }

    #[test]
    fn unknown_key_points_at_the_key() {
        let (line, col, msg) = error_at("cgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\ncolour = 1\n");
        assert_eq!((line, col), (4, 1));
        assert!(msg.contains("unknown field `colour`"), "{msg}");
    }

    #[test]
    fn bad_access_kind_points_at_the_value() {
        let (line, col, msg) = error_at(
            "cgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\n[[file]]\npath = \"/x\"\naccess = [\"read\", \"chmodd\"]\n",
        );
        assert_eq!((line, col), (6, 19));
        assert!(msg.contains("chmodd"), "{msg}");
    }

    #[test]
    fn metadata_access_kinds() {
        let p = parse_str(&format!("{HEAD}[[file]]\npath = \"/x\"\naccess = [\"chmod\", \"chown\", \"map\"]\n")).unwrap();
        assert_eq!(p.files[0].access, access::CHMOD | access::CHOWN | access::MAP);
    }

    #[test]
    fn includes_expand_and_unknown_ones_are_located() {
        let p = parse_str(&format!("{HEAD}include = [\"libraries\"]\n")).unwrap();
        assert!(p.files.iter().any(|f| f.path == Path::new("/usr/lib") && f.scope == Scope::Subtree
            && f.access == access::READ | access::MAP));
        assert!(p.files.iter().all(|f| f.access & access::EXEC == 0), "libraries must not grant exec");
        let (line, col, msg) = error_at(&format!("{HEAD}include = [\"libraries\", \"kitchen-sink\"]\n"));
        assert_eq!((line, col), (4, 25));
        assert!(msg.contains("unknown include"), "{msg}");
    }

    #[test]
    fn bad_mode_and_wrong_type_are_located() {
        let (line, col, msg) = error_at("cgroup = \"a\"\nmode = \"enforcing\"\ndefault = \"deny\"\n");
        assert_eq!((line, col), (2, 8));
        assert!(msg.contains("enforcing"), "{msg}");
        let (line, col, _) = error_at("cgroup = 7\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert_eq!((line, col), (1, 10));
    }

    #[test]
    fn missing_field_is_an_error() {
        let (_, _, msg) = error_at("cgroup = \"a\"\nmode = \"enforce\"\n");
        assert!(msg.contains("default"), "{msg}");
    }

    #[test]
    fn relative_file_path_and_root_cgroup_are_refused() {
        let (line, col, msg) =
            error_at("cgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\n[[file]]\npath = \"etc/x\"\naccess = [\"read\"]\n");
        assert_eq!((line, col), (5, 9));
        assert!(msg.contains("absolute"));
        let (line, _, msg) = error_at("cgroup = \"/sys/fs/cgroup\"\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert_eq!(line, 1);
        assert!(msg.contains("whole system"), "{msg}");
        let (_, _, msg) = error_at("cgroup = \"a/../..\"\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert!(msg.contains(".."), "{msg}");
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let (line, col, _) = error_at("# é\ncgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\n é = 1\n");
        assert_eq!((line, col), (5, 2));
    }

    /// Canonicalizes by a table of symlinked prefixes.
    struct Links(Vec<(PathBuf, PathBuf)>);

    impl Resolver for Links {
        fn canonical(&self, path: &Path) -> PathBuf {
            for (from, to) in &self.0 {
                if let Ok(rest) = path.strip_prefix(from) {
                    return to.join(rest);
                }
            }
            path.to_path_buf()
        }
    }

    const KEY: [u64; 2] = [3, 4];

    #[test]
    fn compile_builds_the_name_tree_and_inode_anchors() {
        let text = r#"
cgroup = "c"
mode = "audit"
default = "allow"
[[file]]
path = "/a"
access = ["read"]
[[file]]
path = "/lib/x/**"
access = ["read"]
[[file]]
path = "/d/**"
access = ["read", "create"]
[[file]]
path = "/d/**"
access = ["create"]
verdict = "deny"
[[file]]
path = "/d/*"
access = ["delete"]
[[exec]]
path = "/a"
verdict = "deny"
"#;
        let policy = parse_str(text).unwrap();
        let links = Links(vec![(PathBuf::from("/lib"), PathBuf::from("/usr/lib"))]);
        let c = compile(&policy, &links, KEY).unwrap();
        assert_eq!(c.info.mode, systrace_common::Mode::Audit as u8);
        assert_eq!(c.info.default, systrace_common::Default::Allow as u8);
        assert_eq!(c.info.denied_somewhere, access::CREATE | access::EXEC | access::MAP);
        let root = c.tree.entries[&(0, 0)].node;
        let a = c.tree.entries[&(root, name_hash(KEY, b"a"))].rule;
        assert_eq!(a.exact, RuleSet { allow: access::READ, deny: access::EXEC | access::MAP, audit: 0 });
        let d = c.tree.entries[&(root, name_hash(KEY, b"d"))].rule;
        // Both rules on /d/** merge; the kernel lets deny win for create.
        assert_eq!(d.subtree, RuleSet { allow: access::READ | access::CREATE, deny: access::CREATE, audit: 0 });
        assert_eq!(d.children, RuleSet { allow: access::DELETE, deny: 0, audit: 0 });
        // The symlinked /lib is matched as the path the kernel sees.
        let usr = c.tree.entries[&(root, name_hash(KEY, b"usr"))].node;
        let lib = c.tree.entries[&(usr, name_hash(KEY, b"lib"))].node;
        assert!(c.tree.entries.contains_key(&(lib, name_hash(KEY, b"x"))));
        assert!(!c.tree.entries.contains_key(&(root, name_hash(KEY, b"lib"))));
        // Deny rules follow the inode too.
        assert_eq!(c.inode_anchors.len(), 2);
        assert_eq!(c.inode_anchors[Path::new("/a")].exact.deny, access::EXEC | access::MAP);
        assert_eq!(c.inode_anchors[Path::new("/d")].subtree.deny, access::CREATE);
    }

    #[test]
    fn net_rules_parse_expand_and_order() {
        let text = r#"
cgroup = "c"
mode = "enforce"
default = "deny"
[[net]]
operations = ["connect"]
address = "127.0.0.0/8"
ports = "8000-8099"
[[net]]
operations = ["connect"]
protocol = "tcp"
address = "127.0.0.1"
ports = 8080
verdict = "deny"
[[net]]
operations = ["bind", "connect"]
family = "inet6"
ports = 443
"#;
        let p = parse_str(text).unwrap();
        // Rule 1: any+tcp+udp; rule 2: tcp; rule 3: 2 operations x any+tcp+udp.
        assert_eq!(p.net.len(), 3 + 1 + 6);
        let c = compile_net(&p.net).unwrap();
        let host = c[&(net::OP_CONNECT, net::AF_INET, net::IPPROTO_TCP, [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 32)];
        // The /32 entry carries its own deny first, then the covering /8 allow.
        assert_eq!(host.count, 2);
        assert_eq!((host.ports[0].lo, host.ports[0].hi, host.ports[0].verdict), (8080, 8080, rule_verdict::DENY));
        assert_eq!((host.ports[1].lo, host.ports[1].hi, host.ports[1].verdict), (8000, 8099, rule_verdict::ALLOW));
        let v6 = c.keys().filter(|k| k.1 == net::AF_INET6).count();
        assert_eq!(v6, 6);
        // ICMP, raw sockets: the rules that name no protocol, under their own key.
        let any = c[&(net::OP_CONNECT, net::AF_INET, net::PROTO_ANY, [127, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8)];
        assert_eq!((any.count, any.ports[0].verdict), (1, rule_verdict::ALLOW));
    }

    #[test]
    fn loopback_and_local_addresses() {
        let p = parse_str(&format!("{HEAD}[[net]]\noperations = [\"connect\"]\nprotocol = \"tcp\"\naddress = \"loopback\"\nverdict = \"deny\"\n")).unwrap();
        assert_eq!(p.net.len(), 2);
        assert!(p.net.iter().any(|r| r.family == net::AF_INET && r.prefix == 8));
        assert!(p.net.iter().any(|r| r.family == net::AF_INET6 && r.prefix == 128));
        let p = parse_str(&format!("{HEAD}[[net]]\noperations = [\"connect\"]\nprotocol = \"tcp\"\naddress = \"local\"\nfamily = \"inet\"\n")).unwrap();
        assert_eq!(p.net.len(), 2, "127.0.0.0/8 and 10.0.2.15: {:?}", p.net);
        let (_, _, msg) = error_at(&format!("{HEAD}[[net]]\noperations = [\"connect\"]\naddress = \"::1\"\nfamily = \"inet\"\n"));
        assert!(msg.contains("not of the rule's family"), "{msg}");
    }

    const HEAD: &str = "cgroup = \"c\"\nmode = \"enforce\"\ndefault = \"deny\"\n";

    #[test]
    fn capabilities_list_or_follow_the_default() {
        let p = parse_str(&format!("{HEAD}capabilities = [\"net_bind_service\", \"CAP_CHOWN\"]\n")).unwrap();
        assert_eq!(p.capabilities, Some((1 << 10) | 1));
        assert_eq!(parse_str(HEAD).unwrap().capabilities, None);
        let (line, col, msg) = error_at(&format!("{HEAD}capabilities = [\"chown\", \"fly\"]\n"));
        assert_eq!((line, col), (4, 26));
        assert!(msg.contains("unknown capability"), "{msg}");
        let links = Links(vec![]);
        let deny = compile(&parse_str(HEAD).unwrap(), &links, KEY).unwrap();
        assert_eq!(deny.info.capabilities, 0);
        let allow = compile(&parse_str(&HEAD.replace("deny", "allow")).unwrap(), &links, KEY).unwrap();
        assert_eq!(allow.info.capabilities, u64::MAX);
        assert_eq!(capability_names(allow.info.capabilities), vec!["all"]);
    }

    #[test]
    fn protections_are_on_unless_switched_off_with_a_reason() {
        let p = parse_str(HEAD).unwrap();
        assert_eq!(p.protections, protect::ALL);
        let p = parse_str(&format!("{HEAD}[protection_off]\nmount = \"runs containers\"\n")).unwrap();
        assert_eq!(p.protections, protect::ALL & !protect::MOUNT);
        assert_eq!(p.protections_off, vec![("mount".to_string(), "runs containers".to_string())]);
        let (line, col, msg) = error_at(&format!("{HEAD}[protection_off]\nmount = \" \"\n"));
        assert_eq!((line, col), (5, 9));
        assert!(msg.contains("say why"), "{msg}");
        let (line, col, msg) = error_at(&format!("{HEAD}[protection_off]\nselinux = \"x\"\n"));
        assert_eq!((line, col), (5, 1));
        assert!(msg.contains("unknown protection"), "{msg}");
    }

    #[test]
    fn socket_rules_explicit_and_implied() {
        let text = format!(
            "{HEAD}[[socket]]\nfamily = \"packet\"\nverdict = \"deny\"\n\
             [[socket]]\nfamily = \"inet\"\ntype = \"raw\"\nverdict = \"deny\"\n\
             [[socket]]\nfamily = \"inet6\"\nprotocol = \"sctp\"\nverdict = \"deny\"\n\
             [[net]]\noperations = [\"connect\"]\nprotocol = \"tcp\"\naddress = \"10.0.0.0/8\"\n\
             [[net]]\noperations = [\"connect\"]\nfamily = \"unix\"\npath = \"/run/x.sock\"\n"
        );
        let p = parse_str(&text).unwrap();
        let s = compile_sockets(&p.sockets, &p.net, &p.unix);
        let any = SocketKey::ANY;
        assert_eq!(s[&(17, any, any)], rule_verdict::DENY);
        assert_eq!(s[&(2, 3, any)], rule_verdict::DENY);
        assert_eq!(s[&(10, 1, 132)], rule_verdict::DENY);
        assert_eq!(s[&(10, 5, 132)], rule_verdict::DENY);
        // tcp to an IPv4 net: TCP (and MPTCP) stream sockets of inet, and of inet6 for mapped addresses.
        assert_eq!(s[&(2, 1, 6)], rule_verdict::ALLOW);
        assert_eq!(s[&(2, 1, 262)], rule_verdict::ALLOW);
        assert_eq!(s[&(10, 1, 6)], rule_verdict::ALLOW);
        assert!(!s.contains_key(&(2, 2, 17)));
        assert_eq!(s[&(1, any, any)], rule_verdict::ALLOW);
        let (_, _, msg) = error_at(&format!("{HEAD}[[socket]]\nfamily = \"appletalk\"\n"));
        assert!(msg.contains("unknown socket family"), "{msg}");
        let (_, _, msg) = error_at(&format!("{HEAD}[[socket]]\nfamily = \"unix\"\nprotocol = \"tcp\"\n"));
        assert!(msg.contains("inet and inet6"), "{msg}");
    }

    #[test]
    fn unix_rules_name_paths_and_abstract_names() {
        let text = format!(
            "{HEAD}[[net]]\noperations = [\"connect\"]\nfamily = \"unix\"\npath = \"/run/a.sock\"\n\
             [[net]]\noperations = [\"connect\"]\nabstract = \"bus\"\nverdict = \"deny\"\n\
             [[net]]\noperations = [\"connect\"]\nfamily = \"unix\"\nverdict = \"audit\"\n"
        );
        let p = parse_str(&text).unwrap();
        let u = compile_unix(&p.unix);
        let c = net::OP_CONNECT;
        assert_eq!(u[&(c, b"/run/a.sock\0".to_vec())], rule_verdict::ALLOW);
        assert_eq!(u[&(c, b"\0bus".to_vec())], rule_verdict::DENY);
        assert_eq!(u[&(c, Vec::new())], rule_verdict::AUDIT);
        let p = parse_str(&format!("{HEAD}[[net]]\noperations = [\"bind\", \"connect\"]\nabstract = \"me\"\n")).unwrap();
        let u = compile_unix(&p.unix);
        assert_eq!(u.len(), 2);
        assert_eq!(u[&(net::OP_BIND, b"\0me".to_vec())], rule_verdict::ALLOW);
        assert!(p.net.is_empty());
        let (line, _, msg) =
            error_at(&format!("{HEAD}[[net]]\noperations = [\"bind\"]\nfamily = \"unix\"\npath = \"/run/a\"\n"));
        assert_eq!(line, 5);
        assert!(msg.contains("[[file]] rules with create"), "{msg}");
        let (_, _, msg) = error_at(&format!("{HEAD}[[net]]\noperations = [\"connect\"]\nfamily = \"unix\"\npath = \"run/a\"\n"));
        assert!(msg.contains("absolute"), "{msg}");
        let (_, _, msg) =
            error_at(&format!("{HEAD}[[net]]\noperations = [\"connect\"]\nfamily = \"inet\"\npath = \"/run/a\"\n"));
        assert!(msg.contains("family must be unix"), "{msg}");
    }

    #[test]
    fn port_range_errors_are_located() {
        let (line, col, msg) = error_at("cgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\n[[net]]\noperations = [\"connect\"]\nports = \"90-80\"\n");
        assert_eq!((line, col), (6, 9));
        assert!(msg.contains("backwards"), "{msg}");
    }

    #[test]
    fn canonical_prefix_keeps_what_does_not_exist() {
        let canon = |p: &Path| (p == Path::new("/lib")).then(|| PathBuf::from("/usr/lib"));
        assert_eq!(canonical_prefix(Path::new("/lib/x/y"), canon), PathBuf::from("/usr/lib/x/y"));
        assert_eq!(canonical_prefix(Path::new("/none/x"), |_| None), PathBuf::from("/none/x"));
    }

    #[test]
    fn device_numbers_convert_to_the_kernel_encoding() {
        let user = libc::makedev(8, 1);
        assert_eq!(kernel_dev(user), (8 << 20) | 1);
        assert_eq!(format_kernel_dev(kernel_dev(libc::makedev(259, 70000))), "259:70000");
    }

    #[test]
    fn access_names_follow_bits() {
        assert_eq!(access_names(access::READ | access::EXEC), vec!["read", "exec"]);
        assert_eq!(access_names(access::CREATE | access::RENAME | access::CHMOD), vec!["create", "rename", "chmod"]);
        assert!(access_names(0).is_empty());
    }
}

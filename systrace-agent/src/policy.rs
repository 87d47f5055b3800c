//! The policy model: parse a policy file, validate it, compile it to map entries.
//!
//! Pure code apart from the [`Resolver`] that turns paths into identities, so the
//! whole pipeline is tested on the host with a fake resolver. Every error carries
//! file, line and column ([`Diagnostic`]). The language is described in the README.

use std::{
    collections::BTreeMap,
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use systrace_common::{
    access, capability, net, protect, rule_verdict, socket, FileRule, NetRule, PolicyInfo, PortRule, RuleSet, SocketKey,
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
}

impl Access {
    /// Kernel access bits. Write implies append, as in AppArmor: a file that may be
    /// overwritten may also be appended to.
    pub fn bits(self) -> u32 {
        match self {
            Access::Read => access::READ,
            Access::Write => access::WRITE | access::APPEND,
            Access::Append => access::APPEND,
            Access::Exec => access::EXEC,
            Access::Create => access::CREATE,
            Access::Delete => access::DELETE,
            Access::Rename => access::RENAME,
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

/// The file as written, with spans for diagnostics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
    unit: Option<Spanned<String>>,
    mode: Mode,
    default: DefaultVerdict,
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

/// Which names a rule's path matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// The file or directory itself.
    Exact,
    /// `/dir/*`: the names directly in the directory.
    Children,
    /// `/dir/**`: everything below the directory.
    Subtree,
}

/// A validated policy, not yet tied to any inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub source: PathBuf,
    pub cgroup: PathBuf,
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

/// One socket creation rule: a family and a type, or every type of the family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRuleSpec {
    pub family: u16,
    /// [`SocketKey::ANY_TYPE`] for the whole family.
    pub sock_type: u16,
    pub verdict: RuleVerdict,
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

/// Parses `ADDRESS` or `ADDRESS/BITS`; IPv4-mapped IPv6 becomes IPv4.
pub fn parse_cidr(text: &str) -> Result<(u8, [u8; 16], u32), String> {
    let (ip, bits) = match text.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits.parse::<u32>().map_err(|_| format!("bad prefix length in {text:?}"))?)),
        None => (text, None),
    };
    let ip: std::net::IpAddr = ip.parse().map_err(|_| format!("{ip:?} is not an IP address"))?;
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

fn parse_ports(ports: &RawPorts) -> Result<(u16, u16), String> {
    match ports {
        RawPorts::One(p) => Ok((*p, *p)),
        RawPorts::Range(text) => {
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

/// Splits a rule path into its anchor and scope, or says what is wrong and where
/// (a byte offset into the path).
pub fn parse_pattern(path: &str) -> Result<(PathBuf, Scope), (usize, String)> {
    if !path.starts_with('/') {
        return Err((0, "a path must be absolute".into()));
    }
    let (anchor, scope) = if let Some(dir) = path.strip_suffix("/**") {
        (dir, Scope::Subtree)
    } else if let Some(dir) = path.strip_suffix("/*") {
        (dir, Scope::Children)
    } else {
        (path, Scope::Exact)
    };
    if let Some(i) = anchor.find(['*', '?', '[', ']', '{', '}']) {
        return Err((
            i,
            format!("bad glob {path:?}: wildcards are allowed only as a final /* (direct children) or /** (whole subtree)"),
        ));
    }
    if anchor.split('/').any(|c| c == ".." || c == ".") {
        return Err((0, format!("path {path:?} has a . or .. component; write it in canonical form")));
    }
    let anchor = if anchor.is_empty() { "/" } else { anchor };
    Ok((PathBuf::from(anchor), scope))
}

/// Parses and validates one policy file's text. `cgroup_root` is the cgroup2 mount
/// that relative cgroup paths hang from.
pub fn parse(file: &Path, text: &str, cgroup_root: &Path) -> Result<Policy, Diagnostic> {
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

    let (cgroup_text, target_span) = match (&raw.cgroup, &raw.unit) {
        (Some(_), Some(unit)) => {
            return Err(map.diagnostic(Severity::Error, unit.span(), "give either cgroup or unit, not both"))
        }
        (None, None) => {
            return Err(map.diagnostic(
                Severity::Error,
                0..0,
                "missing target: add cgroup = \"PATH\" or unit = \"NAME.service\"",
            ))
        }
        (Some(cgroup), None) => (cgroup.get_ref().clone(), cgroup.span()),
        (None, Some(unit)) => {
            let u = unit.get_ref();
            if u.is_empty() || u.contains('/') || !u.contains('.') {
                return Err(map.diagnostic(
                    Severity::Error,
                    unit.span(),
                    "a unit is a systemd unit name such as nginx.service, without '/'",
                ));
            }
            // systemd puts system services under system.slice; a slice is its own cgroup.
            let rel = if u.ends_with(".slice") { u.clone() } else { format!("system.slice/{u}") };
            (rel, unit.span())
        }
    };
    if cgroup_text.is_empty() || cgroup_text.split('/').any(|c| c == "..") {
        return Err(map.diagnostic(
            Severity::Error,
            target_span,
            "cgroup must be a path below the cgroup2 mount, without '..'",
        ));
    }
    let cgroup = if cgroup_text.starts_with('/') {
        PathBuf::from(&cgroup_text)
    } else {
        cgroup_root.join(&cgroup_text)
    };
    if !cgroup.starts_with(cgroup_root) || cgroup == cgroup_root {
        return Err(map.diagnostic(
            Severity::Error,
            target_span,
            format!(
                "cgroup {} is not below the cgroup2 mount {} (confining the root cgroup would confine the whole system)",
                cgroup.display(),
                cgroup_root.display()
            ),
        ));
    }

    let mut files = Vec::with_capacity(raw.file.len() + raw.exec.len());
    let mut add = |path: &Spanned<String>, access: u32, verdict: RuleVerdict| -> Result<(), Diagnostic> {
        // +1 skips the opening quote; exact for paths without escapes.
        let (anchor, scope) = parse_pattern(path.get_ref())
            .map_err(|(at, msg)| map.diagnostic(Severity::Error, path.span().start + 1 + at..path.span().end, msg))?;
        files.push(FileRuleSpec { path: anchor, scope, access, verdict, location: map.locate(path.span().start) });
        Ok(())
    };
    for rule in &raw.file {
        if rule.access.get_ref().is_empty() {
            return Err(map.diagnostic(
                Severity::Error,
                rule.access.span(),
                "access is empty: list at least one of read, write, append, exec, create, delete, rename",
            ));
        }
        add(&rule.path, rule.access.get_ref().iter().fold(0, |bits, a| bits | a.bits()), rule.verdict)?;
    }
    for rule in &raw.exec {
        add(&rule.path, access::EXEC, rule.verdict)?;
    }

    let mut net_rules = Vec::new();
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
        let (addr_family, addr, prefix) = match &rule.address {
            Some(a) => {
                let (f, addr, bits) =
                    parse_cidr(a.get_ref()).map_err(|m| map.diagnostic(Severity::Error, a.span(), m))?;
                (Some(f), addr, bits)
            }
            None => (None, [0; 16], 0),
        };
        let families: Vec<u8> = match (rule.family, addr_family) {
            (Some(Family::Inet), Some(net::AF_INET6)) | (Some(Family::Inet6), Some(net::AF_INET)) => {
                let span = rule.address.as_ref().map_or(0..0, |a| a.span());
                return Err(map.diagnostic(Severity::Error, span, "the address is not of the rule's family"));
            }
            (_, Some(f)) => vec![f],
            (Some(Family::Inet), None) => vec![net::AF_INET],
            (Some(Family::Inet6), None) => vec![net::AF_INET6],
            (None, None) => vec![net::AF_INET, net::AF_INET6],
            (Some(Family::Unix), None) => unreachable!("unix rules are parsed by parse_unix_rule"),
        };
        let protos = match rule.protocol {
            Some(Protocol::Tcp) => vec![net::IPPROTO_TCP],
            Some(Protocol::Udp) => vec![net::IPPROTO_UDP],
            None => vec![net::IPPROTO_TCP, net::IPPROTO_UDP],
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
            for &family in &families {
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

    let mut sockets = Vec::new();
    for rule in &raw.socket {
        let family = named_number(rule.family.get_ref(), &socket::FAMILIES, "socket family")
            .map_err(|m| map.diagnostic(Severity::Error, rule.family.span(), m))?;
        let sock_type = match &rule.sock_type {
            Some(t) => named_number(t.get_ref(), &socket::TYPES, "socket type")
                .map_err(|m| map.diagnostic(Severity::Error, t.span(), m))?,
            None => SocketKey::ANY_TYPE,
        };
        if let Some(other) = sockets.iter().find(|o: &&SocketRuleSpec| (o.family, o.sock_type) == (family, sock_type)) {
            if other.verdict != rule.verdict {
                return Err(map.diagnostic(
                    Severity::Error,
                    rule.family.span(),
                    "another socket rule names the same family and type with a different verdict",
                ));
            }
        }
        sockets.push(SocketRuleSpec { family, sock_type, verdict: rule.verdict });
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
        cgroup,
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

/// Unix rule entries: (operation, name) -> verdict; when two rules name the same
/// socket, deny wins over audit, audit over allow.
pub fn compile_unix(rules: &[UnixRuleSpec]) -> BTreeMap<(u8, Vec<u8>), u8> {
    let rank = |v: u8| match v {
        rule_verdict::DENY => 2,
        rule_verdict::AUDIT => 1,
        _ => 0,
    };
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
        let rank = |v: RuleVerdict| match v {
            RuleVerdict::Deny => 0,
            RuleVerdict::Audit => 1,
            RuleVerdict::Allow => 2,
        };
        ranges.sort_by_key(|o| (std::cmp::Reverse(o.prefix), o.ports.1 - o.ports.0, rank(o.verdict)));
        if ranges.len() > net::MAX_PORT_RULES {
            return Err(format!(
                "{} network rules apply to one address prefix; at most {} can",
                ranges.len(),
                net::MAX_PORT_RULES
            ));
        }
        let mut value = NetRule { count: ranges.len() as u32, ..NetRule::default() };
        for (slot, o) in value.ports.iter_mut().zip(&ranges) {
            *slot = PortRule {
                lo: o.ports.0,
                hi: o.ports.1,
                verdict: match o.verdict {
                    RuleVerdict::Allow => rule_verdict::ALLOW,
                    RuleVerdict::Deny => rule_verdict::DENY,
                    RuleVerdict::Audit => rule_verdict::AUDIT,
                },
                _pad: [0; 3],
            };
        }
        out.insert(key, value);
    }
    Ok(out)
}

/// Errors for policies that cannot be loaded together: two naming the same
/// target cgroup, or using the same name. Points at the later one.
pub fn check_conflicts(policies: &[Policy]) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        if let Some(first) = policies[..i].iter().find(|q| q.cgroup == p.cgroup) {
            errors.push(Diagnostic {
                severity: Severity::Error,
                location: p.target_location.clone(),
                message: format!(
                    "duplicate target: cgroup {} is already confined by policy {} ({}:{})",
                    p.cgroup.display(),
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

/// Turns paths into the identities the kernel sees. The real one uses `stat()`;
/// tests use a table.
pub trait Resolver {
    /// (device in the kernel's encoding, inode) of the file a path names, after symlinks.
    fn file_id(&self, path: &Path) -> std::io::Result<(u64, u64)>;
    /// The cgroup id of a cgroup directory.
    fn cgroup_id(&self, path: &Path) -> std::io::Result<u64>;
}

/// A policy ready to be written to the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub name: String,
    pub source: PathBuf,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub info: PolicyInfo,
    /// (dev, ino) of each anchor -> its rules. Several paths naming one inode (hard
    /// links, bind mounts) merge here, as the kernel sees one inode.
    pub rules: BTreeMap<(u64, u64), FileRule>,
    /// (dev, ino) -> the first path a rule gave it, to name files in events.
    pub paths: BTreeMap<(u64, u64), PathBuf>,
    /// Network LPM entries.
    pub net: BTreeMap<NetEntryKey, NetRule>,
    /// Socket creation: (family, type or [`SocketKey::ANY_TYPE`]) -> verdict.
    pub sockets: BTreeMap<(u16, u16), u8>,
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

fn rule_verdict_value(v: RuleVerdict) -> u8 {
    match v {
        RuleVerdict::Allow => rule_verdict::ALLOW,
        RuleVerdict::Deny => rule_verdict::DENY,
        RuleVerdict::Audit => rule_verdict::AUDIT,
    }
}

/// Socket creation entries: the explicit rules, plus the sockets that network
/// rules allowing tcp or udp need (a `connect` over tcp allows making a stream
/// socket of that family) where no explicit rule speaks of them.
pub fn compile_sockets(policy: &Policy) -> BTreeMap<(u16, u16), u8> {
    let mut out: BTreeMap<(u16, u16), u8> =
        policy.sockets.iter().map(|r| ((r.family, r.sock_type), rule_verdict_value(r.verdict))).collect();
    for rule in policy.net.iter().filter(|r| r.verdict != RuleVerdict::Deny) {
        let family = rule.family as u16;
        let sock_type = if rule.proto == net::IPPROTO_TCP { socket::SOCK_STREAM } else { socket::SOCK_DGRAM };
        if out.contains_key(&(family, SocketKey::ANY_TYPE)) {
            continue;
        }
        out.entry((family, sock_type)).or_insert(rule_verdict::ALLOW);
        // An IPv6 socket reaches IPv4-mapped addresses, which IPv4 rules decide.
        if family == net::AF_INET as u16 && !out.contains_key(&(net::AF_INET6 as u16, SocketKey::ANY_TYPE)) {
            out.entry((net::AF_INET6 as u16, sock_type)).or_insert(rule_verdict::ALLOW);
        }
    }
    let unix = (net::AF_UNIX as u16, SocketKey::ANY_TYPE);
    if policy.unix.iter().any(|r| r.verdict != RuleVerdict::Deny) && !policy.sockets.iter().any(|r| r.family == unix.0) {
        out.entry(unix).or_insert(rule_verdict::ALLOW);
    }
    out
}

/// Adds a rule to a rule set. Within one set deny wins over allow at run time, and
/// audit is an allow that reports.
fn merge(set: &mut RuleSet, access: u32, verdict: RuleVerdict) {
    match verdict {
        RuleVerdict::Allow => set.allow |= access,
        RuleVerdict::Deny => set.deny |= access,
        RuleVerdict::Audit => {
            set.allow |= access;
            set.audit |= access;
        }
    }
}

/// Resolves a validated policy against the file system and the cgroup tree.
pub fn compile(policy: &Policy, resolver: &dyn Resolver) -> Result<Compiled, Diagnostic> {
    let cgroup_id = resolver.cgroup_id(&policy.cgroup).map_err(|e| Diagnostic {
        severity: Severity::Error,
        location: policy.target_location.clone(),
        message: format!("cgroup {}: {e}", policy.cgroup.display()),
    })?;
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
        cgroup_id,
    };
    let mut rules: BTreeMap<(u64, u64), FileRule> = BTreeMap::new();
    let mut paths = BTreeMap::new();
    let mut warnings = Vec::new();
    for spec in &policy.files {
        match resolver.file_id(&spec.path) {
            Ok(id) => {
                let rule = rules.entry(id).or_default();
                let set = match spec.scope {
                    Scope::Exact => &mut rule.exact,
                    Scope::Children => &mut rule.children,
                    Scope::Subtree => &mut rule.subtree,
                };
                merge(set, spec.access, spec.verdict);
                paths.entry(id).or_insert_with(|| spec.path.clone());
            }
            Err(e) => warnings.push(Diagnostic {
                severity: Severity::Warning,
                location: spec.location.clone(),
                message: format!("{}: {e}; the rule is skipped until the policy is reloaded", spec.path.display()),
            }),
        }
    }
    let net = compile_net(&policy.net).map_err(|message| Diagnostic {
        severity: Severity::Error,
        location: policy.target_location.clone(),
        message,
    })?;
    Ok(Compiled {
        name: policy.name.clone(),
        source: policy.source.clone(),
        cgroup: policy.cgroup.clone(),
        cgroup_id,
        info,
        rules,
        paths,
        net,
        sockets: compile_sockets(policy),
        unix: compile_unix(&policy.unix),
        protections_off: policy.protections_off.clone(),
        warnings,
    })
}

/// The resolver for the running system.
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn file_id(&self, path: &Path) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok((kernel_dev(meta.dev()), meta.ino()))
    }

    fn cgroup_id(&self, path: &Path) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        if !meta.is_dir() {
            return Err(std::io::Error::other("not a cgroup directory"));
        }
        // On cgroup2 the directory's inode number is the cgroup id the kernel reports.
        Ok(meta.ino())
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const ROOT: &str = "/sys/fs/cgroup";

    fn parse_str(text: &str) -> Result<Policy, Diagnostic> {
        parse(Path::new("p.toml"), text, Path::new(ROOT))
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
        assert_eq!(p.cgroup, PathBuf::from("/sys/fs/cgroup/system.slice/nginx.service"));
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
        assert_eq!((p.files[4].access, p.files[4].scope), (access::EXEC, Scope::Exact));
    }

    #[test]
    fn unit_maps_to_its_system_slice_cgroup() {
        let p = parse_str("unit = \"nginx.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n").unwrap();
        assert_eq!(p.cgroup, PathBuf::from("/sys/fs/cgroup/system.slice/nginx.service"));
        let p = parse_str("unit = \"machine.slice\"\nmode = \"enforce\"\ndefault = \"deny\"\n").unwrap();
        assert_eq!(p.cgroup, PathBuf::from("/sys/fs/cgroup/machine.slice"));
        let (line, col, msg) = error_at("unit = \"a/b.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert_eq!((line, col), (1, 8));
        assert!(msg.contains("unit"), "{msg}");
        let (_, _, msg) = error_at("cgroup = \"a\"\nunit = \"x.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert!(msg.contains("not both"), "{msg}");
        let (_, _, msg) = error_at("mode = \"enforce\"\ndefault = \"deny\"\n");
        assert!(msg.contains("missing target"), "{msg}");
    }

    #[test]
    fn patterns() {
        assert_eq!(parse_pattern("/a/b").unwrap(), (PathBuf::from("/a/b"), Scope::Exact));
        assert_eq!(parse_pattern("/a/*").unwrap(), (PathBuf::from("/a"), Scope::Children));
        assert_eq!(parse_pattern("/a/**").unwrap(), (PathBuf::from("/a"), Scope::Subtree));
        assert_eq!(parse_pattern("/**").unwrap(), (PathBuf::from("/"), Scope::Subtree));
        assert_eq!(parse_pattern("/a/**/b").unwrap_err().0, 3);
        assert_eq!(parse_pattern("/a/*.log").unwrap_err().0, 3);
        assert!(parse_pattern("/a/../b").is_err());
        assert!(parse_pattern("a/b").is_err());
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
        let a = parse(Path::new("a.toml"), "cgroup = \"x\"\nmode = \"enforce\"\ndefault = \"deny\"\n", Path::new(ROOT)).unwrap();
        let b = parse(Path::new("b.toml"), "# again\nmode = \"audit\"\ndefault = \"deny\"\nunit = \"x\"\n", Path::new(ROOT));
        // `unit = "x"` is not a unit name; use a cgroup path that collides instead.
        assert!(b.is_err());
        let b = parse(Path::new("b.toml"), "# again\nmode = \"audit\"\ndefault = \"deny\"\ncgroup = \"/sys/fs/cgroup/x\"\n", Path::new(ROOT)).unwrap();
        let errors = check_conflicts(&[a.clone(), b]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].location, Location { file: "b.toml".into(), line: 4, column: 10 });
        assert!(errors[0].message.contains("duplicate target"), "{}", errors[0].message);
        let c = parse(Path::new("c/a.toml"), "cgroup = \"y\"\nmode = \"enforce\"\ndefault = \"deny\"\n", Path::new(ROOT)).unwrap();
        let errors = check_conflicts(&[a, c]);
        assert!(errors[0].message.contains("duplicate policy name"), "{}", errors[0].message);
    }

    #[test]
    fn name_defaults_to_file_stem() {
        let p = parse(
            Path::new("/etc/systrace/sshd.toml"),
            "cgroup = \"a\"\nmode = \"audit\"\ndefault = \"allow\"\n",
            Path::new(ROOT),
        )
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
            "cgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\n[[file]]\npath = \"/x\"\naccess = [\"read\", \"chmod\"]\n",
        );
        assert_eq!((line, col), (6, 19));
        assert!(msg.contains("chmod"), "{msg}");
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

    struct Table(HashMap<PathBuf, (u64, u64)>);

    impl Resolver for Table {
        fn file_id(&self, path: &Path) -> std::io::Result<(u64, u64)> {
            self.0.get(path).copied().ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
        fn cgroup_id(&self, _: &Path) -> std::io::Result<u64> {
            Ok(4242)
        }
    }

    #[test]
    fn compile_merges_rules_per_inode_and_scope() {
        let text = r#"
cgroup = "c"
mode = "audit"
default = "allow"
[[file]]
path = "/a"
access = ["read"]
[[file]]
path = "/a-hardlink"
access = ["write"]
verdict = "audit"
[[file]]
path = "/missing"
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
        let table = Table(HashMap::from([
            (PathBuf::from("/a"), (1, 10)),
            (PathBuf::from("/a-hardlink"), (1, 10)),
            (PathBuf::from("/d"), (1, 20)),
        ]));
        let c = compile(&policy, &table).unwrap();
        assert_eq!(c.cgroup_id, 4242);
        assert_eq!(c.info.mode, systrace_common::Mode::Audit as u8);
        assert_eq!(c.info.default, systrace_common::Default::Allow as u8);
        assert_eq!(c.rules.len(), 2);
        let file = c.rules[&(1, 10)];
        assert_eq!(file.exact.allow, access::READ | access::WRITE | access::APPEND);
        assert_eq!(file.exact.audit, access::WRITE | access::APPEND);
        assert_eq!(file.exact.deny, access::EXEC);
        assert_eq!(file.subtree, RuleSet::default());
        let dir = c.rules[&(1, 20)];
        // Both rules on /d/** merge; the kernel lets deny win for create.
        assert_eq!(dir.subtree, RuleSet { allow: access::READ | access::CREATE, deny: access::CREATE, audit: 0 });
        assert_eq!(dir.children, RuleSet { allow: access::DELETE, deny: 0, audit: 0 });
        assert_eq!(dir.exact, RuleSet::default());
        assert_eq!(c.paths[&(1, 10)], PathBuf::from("/a"));
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].location.line, 13);
        assert!(c.warnings[0].to_string().starts_with("p.toml:13:8: warning: /missing"));
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
        // Rule 1: tcp+udp; rule 2: tcp; rule 3: 2 operations x tcp+udp.
        assert_eq!(p.net.len(), 2 + 1 + 4);
        let c = compile_net(&p.net).unwrap();
        let host = c[&(net::OP_CONNECT, net::AF_INET, net::IPPROTO_TCP, [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 32)];
        // The /32 entry carries its own deny first, then the covering /8 allow.
        assert_eq!(host.count, 2);
        assert_eq!((host.ports[0].lo, host.ports[0].hi, host.ports[0].verdict), (8080, 8080, rule_verdict::DENY));
        assert_eq!((host.ports[1].lo, host.ports[1].hi, host.ports[1].verdict), (8000, 8099, rule_verdict::ALLOW));
        let v6 = c.keys().filter(|k| k.1 == net::AF_INET6).count();
        assert_eq!(v6, 4);
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
        let table = Table(HashMap::new());
        let deny = compile(&parse_str(HEAD).unwrap(), &table).unwrap();
        assert_eq!(deny.info.capabilities, 0);
        let allow = compile(&parse_str(&HEAD.replace("deny", "allow")).unwrap(), &table).unwrap();
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
             [[net]]\noperations = [\"connect\"]\nprotocol = \"tcp\"\naddress = \"10.0.0.0/8\"\n\
             [[net]]\noperations = [\"connect\"]\nfamily = \"unix\"\npath = \"/run/x.sock\"\n"
        );
        let p = parse_str(&text).unwrap();
        let s = compile_sockets(&p);
        assert_eq!(s[&(17, SocketKey::ANY_TYPE)], rule_verdict::DENY);
        assert_eq!(s[&(2, 3)], rule_verdict::DENY);
        // tcp to an IPv4 net: stream sockets of inet, and of inet6 for mapped addresses.
        assert_eq!(s[&(2, 1)], rule_verdict::ALLOW);
        assert_eq!(s[&(10, 1)], rule_verdict::ALLOW);
        assert!(!s.contains_key(&(2, 2)));
        assert_eq!(s[&(1, SocketKey::ANY_TYPE)], rule_verdict::ALLOW);
        let (_, _, msg) = error_at(&format!("{HEAD}[[socket]]\nfamily = \"bluetooth\"\n"));
        assert!(msg.contains("unknown socket family"), "{msg}");
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
    fn cidr_parsing() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().2, 8);
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().1[..4], [10, 0, 0, 0]);
        let (f, a, b) = parse_cidr("::ffff:10.0.0.1").unwrap();
        assert_eq!((f, &a[..4], b), (net::AF_INET, &[10u8, 0, 0, 1][..], 32));
        assert_eq!(parse_cidr("::1").unwrap().0, net::AF_INET6);
        assert!(parse_cidr("10.0.0.1/33").is_err());
        assert!(parse_cidr("example.com").is_err());
        let (line, col, msg) = error_at("cgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\n[[net]]\noperations = [\"connect\"]\nports = \"90-80\"\n");
        assert_eq!((line, col), (6, 9));
        assert!(msg.contains("backwards"), "{msg}");
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
        assert_eq!(access_names(access::CREATE | access::RENAME), vec!["create", "rename"]);
        assert!(access_names(0).is_empty());
    }
}

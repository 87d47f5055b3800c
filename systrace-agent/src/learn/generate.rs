//! From observations to a policy: allow exactly what was seen, generalized
//! where a person would generalize.
//!
//! File paths climb AppArmor's ladder, separately for each access kind so that
//! reading a tree never grants running it: the exact name, then `DIR/*` (the
//! names in one directory), then `DIR/**` (the tree). A directory climbs when
//! it holds at least [`Options::collapse`] distinct names that were used, or a
//! name that looks random (a pid, a hex id, a `mkstemp` suffix), which the
//! next run will not repeat. Paths below the learned command's home become
//! `${HOME}/...`. No glob is made over a sensitive path ([`SENSITIVE`]) or at
//! the top two levels of the tree (`/etc/*`, `/usr/**`), so the ladder stops
//! at exact names there. Output is deterministic: the same observations give
//! the same bytes.

use std::collections::{BTreeMap, BTreeSet};

use systrace_common::access;

use super::{Evidence, Observations, Seen};
use crate::policy::{include, HOME_VARIABLE};

/// Paths no generated glob may cover: a rule that names one exactly is made
/// only when the run really used it. `${HOME}/...` entries apply to every home.
pub const SENSITIVE: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh",
    "/etc/systrace",
    "/root",
    "/home",
    "${HOME}/.ssh",
    "${HOME}/.gnupg",
    "/sys/fs/bpf",
    "/var/lib/systrace",
    "/usr/bin/systrace-agent",
    "/usr/local/bin/systrace-agent",
    "/boot",
];

#[derive(Debug, Clone)]
pub struct Options {
    /// Distinct names in a directory that make it a glob.
    pub collapse: usize,
    pub name: String,
    /// The target as a policy line (`unit = "x.service"`), if known.
    pub target: Option<String>,
    /// More paths to keep out of globs (the agent's own binary, say).
    pub sensitive: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options { collapse: 3, name: "learned".into(), target: None, sensitive: Vec::new() }
    }
}

/// A generated rule and what it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The TOML lines of the rule's body (`path = ...`, `access = ...`).
    pub body: Vec<(String, String)>,
    pub evidence: Evidence,
    /// Distinct observations behind it, and one of them.
    pub names: usize,
    pub example: String,
    /// Said instead of the evidence (an answer given while asked, say).
    pub comment: Option<String>,
}

/// A generated policy, before it is written.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub libraries: bool,
    pub capabilities: BTreeMap<String, Evidence>,
    pub files: Vec<Rule>,
    pub net: Vec<Rule>,
    pub sockets: Vec<Rule>,
    /// Seen, but only switching a self-protection off would allow it.
    pub not_allowed: Vec<(String, Evidence)>,
}

impl Generated {
    pub fn is_empty(&self) -> bool {
        !self.libraries
            && self.capabilities.is_empty()
            && self.files.is_empty()
            && self.net.is_empty()
            && self.sockets.is_empty()
            && self.not_allowed.is_empty()
    }
}

/// Components of a path or pattern node, `${HOME}` kept as one.
fn parts(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// A name the next run will not repeat: a number (pid), a hex id, a temporary
/// file's random suffix.
pub fn is_random(name: &str) -> bool {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    // mkstemp and mktemp: tmpXXXXXXXX (Python), tmp.XXXXXX (mktemp(1)).
    if let Some(rest) = name.strip_prefix("tmp") {
        let rest = rest.strip_prefix(['.', '_', '-']).unwrap_or(rest);
        if rest.len() >= 6 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return true;
        }
    }
    name.split(['.', '-', '_']).any(|token| {
        let hex = token.len() >= 8
            && token.bytes().all(|b| b.is_ascii_hexdigit())
            && token.bytes().any(|b| b.is_ascii_digit())
            && token.bytes().any(|b| b.is_ascii_alphabetic());
        hex || (token.len() >= 6 && class_changes(token) >= 4)
    })
}

/// How often adjacent characters change between lower case, upper case and digits.
fn class_changes(token: &str) -> usize {
    let class = |b: u8| {
        if b.is_ascii_digit() {
            0
        } else if b.is_ascii_uppercase() {
            1
        } else {
            2
        }
    };
    token.as_bytes().windows(2).filter(|w| class(w[0]) != class(w[1])).count()
}

/// `/home/alice/x` -> `${HOME}/x` when `/home/alice` is the learned home.
pub fn with_home(path: &str, home: Option<&str>) -> String {
    match home {
        Some(h) if h != "/" => match path.strip_prefix(h.trim_end_matches('/')) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{HOME_VARIABLE}{rest}"),
            _ => path.to_string(),
        },
        _ => path.to_string(),
    }
}

/// Bits a rule needs: write covers append, exec covers map (as in the language).
pub fn smallest(bits: u32) -> u32 {
    let mut bits = bits;
    if bits & access::WRITE != 0 {
        bits &= !access::APPEND;
    }
    if bits & access::EXEC != 0 {
        bits &= !access::MAP;
    }
    bits
}

/// The node a pattern stands on and its scope: `/a/*` -> (`/a`, 1), `/a/**` -> (`/a`, 2), `/a` -> (`/a`, 0).
fn node(pattern: &str) -> (&str, u8) {
    if let Some(d) = pattern.strip_suffix("/**") {
        (if d.is_empty() { "/" } else { d }, 2)
    } else if let Some(d) = pattern.strip_suffix("/*") {
        (if d.is_empty() { "/" } else { d }, 1)
    } else {
        (pattern, 0)
    }
}

/// The directory and extension of a pattern by extension: `/a/*.log` -> (`/a`, `log`).
pub fn extension_pattern(pattern: &str) -> Option<(&str, &str)> {
    let (dir, ext) = pattern.rsplit_once("/*.")?;
    (!ext.contains('/')).then_some((if dir.is_empty() { "/" } else { dir }, ext))
}

/// `/a/b/name.ext` -> `/a/b/*.ext`, for a name with an extension rules can name.
pub fn extension_glob(path: &str) -> Option<String> {
    let name = &path[path.rfind('/')? + 1..];
    // The path is text, so the extension is too: a rule can name it as it is.
    let ext = std::str::from_utf8(systrace_common::extension(name.as_bytes())?).ok()?;
    // A name that was not UTF-8 in the kernel's report: no rule can spell it.
    if ext.contains(char::REPLACEMENT_CHARACTER) {
        return None;
    }
    crate::policy::Extension::new(ext.as_bytes())?;
    Some(format!("{}/*.{ext}", parent(path).trim_end_matches('/')))
}

/// Whether `pattern` covers `path` (both with `${HOME}` unexpanded).
pub fn covers(pattern: &str, path: &str) -> bool {
    if let Some((dir, ext)) = extension_pattern(pattern) {
        let name = &path[path.rfind('/').map_or(0, |i| i + 1)..];
        return parent(path) == dir
            && path != dir
            && systrace_common::extension(name.as_bytes()) == Some(ext.as_bytes());
    }
    match node(pattern) {
        (n, 0) => n == path,
        (d, 1) => parent(path) == d && path != d,
        (d, _) => path.strip_prefix(d).is_some_and(|r| r.starts_with('/') || d == "/") && path != d,
    }
}

/// Directories whose names are made up by whoever creates them: every name
/// directly in one is taken as random (Python's tempfile, for one, probes
/// /tmp with a random name of eight plain letters before it makes its file).
pub const TEMPORARY: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

struct Ladder<'a> {
    collapse: usize,
    sensitive: &'a [String],
}

impl Ladder<'_> {
    /// Whether a glob on directory `dir` may be made: not at the top two levels
    /// (random names may still make `/tmp/*`), not over a sensitive path.
    fn may_glob(&self, dir: &str, scope: u8, for_random: bool) -> bool {
        let comps = parts(dir);
        let depth = comps.len();
        // Random names may make `/tmp/*`; nothing else globs at the top two levels.
        let deep_enough = depth >= 2 || (for_random && TEMPORARY.contains(&dir));
        // No glob over a home, or in or above anyone's keys.
        let home_root = dir == HOME_VARIABLE || dir == "/root" || (depth == 2 && comps[0] == "home");
        let keys = comps.iter().any(|c| matches!(*c, ".ssh" | ".gnupg"));
        deep_enough
            && !home_root
            && !keys
            && !self.sensitive.iter().any(|s| {
                let s = s.as_str();
                s == dir || if scope == 1 { parent(s) == dir } else { covers(&format!("{dir}/**"), s) }
            })
    }

    /// Generalizes the paths that used one access kind (`bit`).
    fn climb(&self, paths: &BTreeSet<String>, bit: u32) -> BTreeSet<String> {
        // Random names first. A random last component makes `DIR/*` (not for
        // what is run or mapped as code); a random component higher up only
        // for `/proc/PID/...` reads (`/proc/**`, where the ptrace protection
        // still keeps other processes' files out); elsewhere the name stays.
        let mut items: BTreeSet<String> = BTreeSet::new();
        for p in paths {
            let comps = parts(p);
            let Some(last) = comps.len().checked_sub(1) else {
                items.insert(p.clone());
                continue;
            };
            let dir = parent(p).to_string();
            let item = if (is_random(comps[last]) || TEMPORARY.contains(&dir.as_str()))
                && bit & (access::EXEC | access::MAP) == 0
                && self.may_glob(&dir, 1, true)
            {
                format!("{}/*", dir.trim_end_matches('/'))
            } else if comps.len() > 2 && comps[0] == "proc" && is_random(comps[1]) && bit == access::READ {
                "/proc/**".to_string()
            } else {
                p.clone()
            };
            items.insert(item);
        }
        // Then the ladder, deepest directories first.
        let max_depth = items.iter().map(|i| parts(node(i).0).len()).max().unwrap_or(0);
        for depth in (1..=max_depth).rev() {
            // dir at depth - 1 -> its children at `depth` that lead to items, and those items.
            let mut by_dir: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
            for item in &items {
                let n = node(item).0;
                let comps = parts(n);
                if comps.len() < depth {
                    continue;
                }
                let child =
                    format!("/{}", comps[..depth].join("/")).replacen(&format!("/{HOME_VARIABLE}"), HOME_VARIABLE, 1);
                let entry = by_dir.entry(parent(&child).to_string()).or_default();
                entry.0.insert(child);
                entry.1.insert(item.clone());
            }
            for (dir, (names, children)) in by_dir {
                if names.len() < self.collapse {
                    continue;
                }
                let only_files = children.iter().all(|c| node(c).1 == 0 && parent(c) == dir);
                let scope = if only_files { 1 } else { 2 };
                if !self.may_glob(&dir, scope, false) {
                    continue;
                }
                let glob = format!("{}/{}", dir.trim_end_matches('/'), if scope == 1 { "*" } else { "**" });
                // What the glob covers goes, and so does a glob on `dir` itself (`dir/*` under `dir/**`).
                let absorbed =
                    |i: &String| covers(&glob, node(i).0) || (scope == 2 && node(i).0 == dir && node(i).1 > 0);
                items.retain(|i| !absorbed(i));
                items.insert(glob);
            }
        }
        // Drop what a wider item already covers.
        let all: Vec<String> = items.iter().cloned().collect();
        items.retain(|i| !all.iter().any(|o| o != i && covers(o, node(i).0) && (node(o).1 == 2 || node(i).1 == 0)));
        items
    }
}

/// Access names of a bit set, in the language's order.
pub fn access_list(bits: u32) -> String {
    let names: Vec<String> =
        access::NAMES.iter().filter(|(_, b)| bits & b != 0).map(|(n, _)| format!("\"{n}\"")).collect();
    format!("[{}]", names.join(", "))
}

pub fn quoted(s: &str) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Generalizes observations into rules.
pub fn generalize(obs: &Observations, opts: &Options) -> Generated {
    let home = obs.home();
    let mut sensitive: Vec<String> = SENSITIVE.iter().map(|s| s.to_string()).collect();
    sensitive.extend(opts.sensitive.iter().cloned());
    let ladder = Ladder { collapse: opts.collapse.max(1), sensitive: &sensitive };
    let libraries = include("libraries").map(|i| i.rules).unwrap_or(&[]);
    let by_libraries = |path: &str| -> u32 {
        libraries.iter().filter(|(p, _)| covers(p, path) || *p == path).fold(0, |a, (_, b)| a | b)
    };
    let mut out = Generated::default();
    // path (with ${HOME}) -> bits and evidence
    let mut files: BTreeMap<String, Evidence> = BTreeMap::new();
    for (seen, ev) in &obs.seen {
        match seen {
            Seen::File(path) => {
                let mut bits = ev.access;
                let lib = by_libraries(path);
                if bits & access::MAP != 0 && lib & access::MAP != 0 {
                    out.libraries = true;
                }
                if lib != 0 && bits & access::MAP != 0 {
                    bits &= !lib;
                }
                if bits == 0 {
                    continue;
                }
                let e = files.entry(with_home(path, home)).or_default();
                e.absorb(&Evidence { access: bits, ..ev.clone() });
            }
            Seen::Capability(c) => out.capabilities.entry(c.clone()).or_default().absorb(ev),
            Seen::Protection { protection, hook, detail } => out
                .not_allowed
                .push((format!("{hook} ({protection} protection) {detail}").trim_end().to_string(), ev.clone())),
            _ => {}
        }
    }
    // With the libraries included, a file they allow needs no rule of its own.
    if out.libraries {
        for (path, e) in files.iter_mut() {
            e.access &= !by_libraries(path);
        }
        files.retain(|_, e| e.access != 0);
    }
    // The ladder, one access kind at a time; then one rule per pattern.
    let mut patterns: BTreeMap<String, u32> = BTreeMap::new();
    for (_, bit) in access::NAMES {
        let used: BTreeSet<String> =
            files.iter().filter(|(_, e)| smallest(e.access) & bit != 0).map(|(p, _)| p.clone()).collect();
        for pattern in ladder.climb(&used, bit) {
            *patterns.entry(pattern).or_default() |= bit;
        }
    }
    for (pattern, bits) in patterns {
        let mut evidence = Evidence::default();
        let mut names = 0;
        let mut example = String::new();
        for (path, e) in &files {
            if (covers(&pattern, path) || pattern == *path) && e.access & bits != 0 {
                evidence.absorb(&Evidence { access: 0, ..e.clone() });
                names += 1;
                if example.is_empty() {
                    example = path.clone();
                }
            }
        }
        out.files.push(Rule {
            body: vec![("path".into(), quoted(&pattern)), ("access".into(), access_list(bits))],
            evidence,
            names,
            example,
            comment: None,
        });
    }
    out.net = network_rules(obs, opts.collapse.max(1));
    out.sockets = socket_rules(obs);
    out
}

/// Ports the kernel hands out for autobinds and outgoing connections (Linux's
/// default `ip_local_port_range`).
const EPHEMERAL: (u16, u16) = (32768, 60999);

fn network_rules(obs: &Observations, collapse: usize) -> Vec<Rule> {
    // (op, protocol, address, ports) -> evidence, with ephemeral ports as one range
    // and, for connects, a port reached at many addresses as any address.
    // (operation, protocol, address, ports) of a rule -> (evidence, observations, example).
    type RuleKey = (String, String, String, String);
    let mut rules: BTreeMap<RuleKey, (Evidence, usize, String)> = BTreeMap::new();
    let mut peers: BTreeMap<(&str, &str, u16), BTreeSet<&str>> = BTreeMap::new();
    for seen in obs.seen.keys() {
        if let Seen::Net { op: "connect", protocol, address, port } = seen {
            peers.entry(("connect", protocol, *port)).or_default().insert(address);
        }
    }
    for (seen, ev) in &obs.seen {
        let (op, proto, address, ports) = match seen {
            Seen::Net { op, protocol, address, port } => {
                let ports = if (EPHEMERAL.0..=EPHEMERAL.1).contains(port) {
                    format!("\"{}-{}\"", EPHEMERAL.0, EPHEMERAL.1)
                } else {
                    port.to_string()
                };
                let many = peers.get(&(*op, protocol.as_str(), *port)).is_some_and(|p| p.len() >= collapse);
                let address = if many { String::new() } else { quoted(address) };
                (op.to_string(), protocol.clone(), address, ports)
            }
            Seen::Unix { op, name } => {
                let key = match name.strip_prefix('@') {
                    Some(abs) => format!("abstract = {}", quoted(abs)),
                    None => format!("path = {}", quoted(name)),
                };
                (op.to_string(), "unix".into(), key, String::new())
            }
            _ => continue,
        };
        let entry = rules.entry((op, proto, address, ports)).or_insert_with(|| (Evidence::default(), 0, String::new()));
        entry.0.absorb(&Evidence { access: 0, ..ev.clone() });
        entry.1 += 1;
        if entry.2.is_empty() {
            entry.2 = match seen {
                Seen::Net { address, port, .. } => format!("{address} port {port}"),
                Seen::Unix { name, .. } => name.clone(),
                _ => String::new(),
            };
        }
    }
    rules
        .into_iter()
        .map(|((op, proto, address, ports), (evidence, names, example))| {
            let mut body = vec![("operations".to_string(), format!("[\"{op}\"]"))];
            if proto == "unix" {
                body.push(("family".into(), "\"unix\"".into()));
                if let Some((k, v)) = address.split_once(" = ") {
                    body.push((k.to_string(), v.to_string()));
                }
            } else {
                if matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                    body.push(("protocol".into(), quoted(&proto)));
                }
                if !address.is_empty() {
                    body.push(("address".into(), address));
                }
                body.push(("ports".into(), ports));
            }
            Rule { body, evidence, names, example, comment: None }
        })
        .collect()
}

fn socket_rules(obs: &Observations) -> Vec<Rule> {
    obs.seen
        .iter()
        .filter_map(|(seen, ev)| match seen {
            Seen::Socket { family, sock_type, protocol } => {
                let mut body = vec![("family".to_string(), quoted(family))];
                if !sock_type.is_empty() {
                    body.push(("type".into(), quoted(sock_type)));
                }
                // Only inet sockets have protocols in the language (0 is "ip").
                if !protocol.is_empty() && matches!(family.as_str(), "inet" | "inet6") {
                    body.push(("protocol".into(), quoted(protocol)));
                }
                Some(Rule { body, evidence: ev.clone(), names: 1, example: String::new(), comment: None })
            }
            _ => None,
        })
        .collect()
}

/// `text` on one line, with control characters escaped: names a process
/// chose (its comm, a file name with a newline) cannot start a new line in a
/// policy file or rewrite a terminal.
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// The sensitive path a pattern would cover, if any: one of [`SENSITIVE`],
/// or a home directory's keys (a `.ssh` or `.gnupg` in the directory it names).
pub fn covers_sensitive(pattern: &str) -> Option<String> {
    if let Some(s) = SENSITIVE
        .iter()
        .find(|s| covers(pattern, s) || (pattern.ends_with("/**") && covers(pattern, &format!("{s}/x"))))
    {
        return Some(s.to_string());
    }
    let dir = pattern
        .strip_suffix("/**")
        .or_else(|| pattern.strip_suffix("/*"))
        .or_else(|| extension_pattern(pattern).map(|(dir, _)| dir))?;
    // A glob inside a sensitive directory (its keys); homes are judged by their keys.
    if let Some(s) = SENSITIVE
        .iter()
        .find(|s| !matches!(**s, "/home" | "/root") && (dir == **s || dir.starts_with(&format!("{s}/"))))
    {
        return Some(s.to_string());
    }
    if parts(dir).iter().any(|c| matches!(*c, ".ssh" | ".gnupg")) {
        return Some(format!("{dir} (keys)"));
    }
    [".ssh", ".gnupg"].iter().map(|k| format!("{dir}/{k}")).find(|p| std::path::Path::new(p).exists())
}

/// The comment line that says what a rule was made from.
pub fn evidence_comment(rule: &Rule) -> String {
    if let Some(c) = &rule.comment {
        return format!("# {}", printable(c));
    }
    let e = &rule.evidence;
    let programs: Vec<&str> = e.programs.iter().map(String::as_str).collect();
    let mut text = format!(
        "# seen {} time{} by {}, first {}",
        e.count,
        if e.count == 1 { "" } else { "s" },
        if programs.is_empty() { "?".to_string() } else { printable(&programs.join(", ")) },
        if e.first.is_empty() { "?".to_string() } else { printable(&e.first) }
    );
    if rule.names > 1 {
        text.push_str(&format!("; {} names, such as {}", rule.names, printable(&rule.example)));
    }
    text
}

/// Writes a table of rules as TOML.
pub fn write_rules(out: &mut String, table: &str, rules: &[Rule]) {
    for rule in rules {
        out.push('\n');
        out.push_str(&evidence_comment(rule));
        out.push_str(&format!("\n[[{table}]]\n"));
        for (k, v) in &rule.body {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
}

pub fn capability_line(caps: &BTreeMap<String, Evidence>) -> String {
    let names: Vec<String> = caps.keys().map(|c| quoted(c)).collect();
    format!("capabilities = [{}]", names.join(", "))
}

/// An argument as one word on one comment line: quoted (JSON escapes) when
/// it holds anything but plain characters.
fn shell_word(arg: &str) -> String {
    if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "_./:=@%+,-".contains(c)) {
        arg.to_string()
    } else {
        quoted(arg)
    }
}

/// The whole policy file.
pub fn render(g: &Generated, obs: &Observations, opts: &Options) -> String {
    let mut out = String::new();
    out.push_str("# Generated by `systrace-agent generate` from what a learning run saw");
    let commands: BTreeSet<String> = obs
        .headers
        .iter()
        .filter(|h| !h.command.is_empty())
        .map(|h| h.command.iter().map(|a| shell_word(a)).collect::<Vec<_>>().join(" "))
        .collect();
    for c in &commands {
        out.push_str(&format!("\n#   {c}"));
    }
    out.push_str(
        "\n# Each rule says what it was made from; review them before enforcing.\n\
         # Learning again merges what is new and keeps edits and comments.\n",
    );
    out.push_str(&format!("name = {}\n", quoted(&opts.name)));
    let target = opts.target.clone().or_else(|| obs.headers.iter().find_map(|h| h.target.clone()));
    match target {
        Some(t) => out.push_str(&format!("{t}\n")),
        None => out.push_str("# No target: `systrace-agent exec POLICY -- CMD` runs a command under it;\n# add unit = \"NAME.service\" or cgroup = \"PATH\" for `run`.\n"),
    }
    out.push_str("mode = \"enforce\"\ndefault = \"deny\"\n");
    if g.libraries {
        out.push_str("# the shared libraries, read and mapped by ld.so\ninclude = [\"libraries\"]\n");
    }
    if !g.capabilities.is_empty() {
        out.push_str(&capability_line(&g.capabilities));
        out.push('\n');
    }
    for (what, ev) in &g.not_allowed {
        out.push_str(&format!(
            "# seen {} time(s), refused when enforcing (self-protection): {}\n",
            ev.count,
            printable(what)
        ));
    }
    write_rules(&mut out, "file", &g.files);
    write_rules(&mut out, "net", &g.net);
    write_rules(&mut out, "socket", &g.sockets);
    out
}

pub fn generate(obs: &Observations, opts: &Options) -> String {
    render(&generalize(obs, opts), obs, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str, access: &str, comm: &str) -> String {
        format!(
            r#"{{"type":"event","verdict":"learned","hook":"file_open","time":"2026-11-27T10:00:00Z","comm":"{comm}","path":"{path}","requested":["{access}"]}}"#
        )
    }

    fn observe(lines: &[String]) -> Observations {
        let mut o = Observations::default();
        o.read(&lines.join("\n"));
        o
    }

    fn patterns(g: &Generated) -> Vec<String> {
        g.files.iter().map(|r| format!("{} {}", r.body[0].1, r.body[1].1)).collect()
    }

    #[test]
    fn random_names() {
        for r in ["12345", "tmpk3j2_8ab", "tmpabcdefgh", "tmp.aB3xYz", "cache-9f86d081884c7d65", "a1B2c3D4.tmp"] {
            assert!(is_random(r), "{r}");
        }
        for n in [
            "python3.11",
            "index.html",
            "x86_64-linux-gnu",
            "libc.so.6",
            "ISO8859-1.py",
            "UTF-8",
            "site-packages",
            "tmp",
        ] {
            assert!(!is_random(n), "{n}");
        }
    }

    #[test]
    fn document_root_becomes_one_subtree_rule_and_exec_stays_exact() {
        let o = observe(&[
            event("/srv/www/index.html", "read", "httpd"),
            event("/srv/www/about.html", "read", "httpd"),
            event("/srv/www/docs/a.html", "read", "httpd"),
            event("/srv/www/img/logo.png", "read", "httpd"),
            event("/srv/www/cgi-bin/probe", "exec", "httpd"),
            event("/etc/passwd", "read", "httpd"),
            event("/etc/group", "read", "httpd"),
            event("/etc/hosts", "read", "httpd"),
        ]);
        let g = generalize(&o, &Options::default());
        assert_eq!(
            patterns(&g),
            [
                r#""/etc/group" ["read"]"#,
                r#""/etc/hosts" ["read"]"#,
                r#""/etc/passwd" ["read"]"#,
                r#""/srv/www/**" ["read"]"#,
                r#""/srv/www/cgi-bin/probe" ["exec"]"#,
            ]
        );
    }

    #[test]
    fn home_pids_and_temporary_names_generalize() {
        let mut lines = vec![
            r#"{"type":"learn","command":["python3"],"home":"/home/alice"}"#.to_string(),
            event("/home/alice/site/index.html", "read", "python3"),
            event("/home/alice/.cache/tmpq8x_2kz1", "create", "python3"),
            event("/tmp/tmpa9b8c7d6", "write", "python3"),
            event("/proc/4242/status", "read", "python3"),
        ];
        lines.push(event("/home/alice/.ssh/id_rsa", "read", "python3"));
        let g = generalize(&observe(&lines), &Options::default());
        assert_eq!(
            patterns(&g),
            [
                r#""${HOME}/.cache/*" ["create"]"#,
                r#""${HOME}/.ssh/id_rsa" ["read"]"#,
                r#""${HOME}/site/index.html" ["read"]"#,
                r#""/proc/**" ["read"]"#,
                r#""/tmp/*" ["write"]"#,
            ]
        );
    }

    #[test]
    fn names_a_process_chose_cannot_break_out_of_a_comment() {
        let evil = "/srv/a/\\n[[file]]\\npath = \\\"/**\\\"\\naccess = [\\\"write\\\"]\\n#";
        let mut lines: Vec<String> = ["/srv/a/x", "/srv/a/y"].iter().map(|p| event(p, "read", "web")).collect();
        lines.push(event(evil, "read", "w\\neb"));
        let text = generate(&observe(&lines), &Options::default());
        let rules = text.lines().filter(|l| l.starts_with("[[file]]")).count();
        assert_eq!(rules, 1, "{text}");
        assert!(!text.lines().any(|l| l.starts_with("path = \"/**")), "{text}");
        assert!(text.contains("path = \"/srv/a/"), "{text}");
    }

    #[test]
    fn random_names_never_widen_far() {
        let o = observe(&[
            event("/usr/lib/deadbeef01/x", "write", "a"),
            event("/opt/a1B2c3D4/x", "write", "a"),
            event("/home/bob/12345/x", "read", "a"),
            event("/root/.ssh/a1B2c3D4", "read", "a"),
            event("/srv/cache/a1B2c3D4.bin", "exec", "a"),
        ]);
        let g = generalize(&o, &Options::default());
        assert!(patterns(&g).iter().all(|p| !p.contains('*')), "{:?}", patterns(&g));
    }

    #[test]
    fn never_globs_over_sensitive_paths_or_the_top() {
        let o = observe(&[
            event("/etc/passwd", "read", "a"),
            event("/etc/group", "read", "a"),
            event("/etc/hosts", "read", "a"),
            event("/etc/ssh/ssh_config", "read", "a"),
            event("/usr/share/a", "read", "a"),
            event("/usr/lib/b", "read", "a"),
            event("/usr/bin/c", "read", "a"),
        ]);
        let g = generalize(&o, &Options::default());
        assert!(patterns(&g).iter().all(|p| !p.contains('*')), "{:?}", patterns(&g));
    }

    #[test]
    fn collapse_threshold_is_configurable_and_output_is_stable() {
        let o = observe(&[event("/var/www/a", "read", "x"), event("/var/www/b", "read", "x")]);
        assert_eq!(patterns(&generalize(&o, &Options::default())).len(), 2);
        let two = Options { collapse: 2, ..Options::default() };
        assert_eq!(patterns(&generalize(&o, &two)), [r#""/var/www/*" ["read"]"#]);
        assert_eq!(generate(&o, &two), generate(&o, &two));
        let text = generate(&o, &two);
        assert!(text.contains("# seen 2 times by x, first 2026-11-27T10:00:00Z; 2 names, such as /var/www/a\n[[file]]\npath = \"/var/www/*\"\naccess = [\"read\"]\n"), "{text}");
    }

    #[test]
    fn networks_and_capabilities() {
        let o = observe(&[
            r#"{"type":"event","verdict":"learned","hook":"socket_bind","time":"t","comm":"h","family":"inet6","protocol":"tcp","address":"::","port":8080}"#.into(),
            r#"{"type":"event","verdict":"learned","hook":"socket_connect","time":"t","comm":"h","family":"inet","protocol":"udp","address":"10.0.0.1","port":40000}"#.into(),
            r#"{"type":"event","verdict":"learned","hook":"capable","time":"t","comm":"h","capability":"net_bind_service"}"#.into(),
            r#"{"type":"event","verdict":"learned","hook":"socket_create","time":"t","comm":"h","socket_family":"inet6","socket_type":"stream","socket_protocol":"tcp"}"#.into(),
        ]);
        let text = generate(&o, &Options::default());
        assert!(text.contains("capabilities = [\"net_bind_service\"]\n"), "{text}");
        assert!(
            text.contains("[[net]]\noperations = [\"bind\"]\nprotocol = \"tcp\"\naddress = \"::\"\nports = 8080\n"),
            "{text}"
        );
        assert!(text.contains("ports = \"32768-60999\"\n"), "{text}");
        assert!(text.contains("[[socket]]\nfamily = \"inet6\"\ntype = \"stream\"\nprotocol = \"tcp\"\n"), "{text}");
    }
}

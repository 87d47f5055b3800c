//! The policy model: parse a policy file, validate it, compile it to map entries.
//!
//! Pure code apart from the [`Resolver`] that turns paths into identities, so the
//! whole pipeline is tested on the host with a fake resolver. Every error carries
//! file, line and column ([`Diagnostic`]).
//!
//! A policy file (TOML):
//! ```toml
//! name = "demo"                 # optional; defaults to the file stem
//! cgroup = "systrace/demo"      # relative to the cgroup2 mount, or absolute
//! mode = "enforce"              # or "audit"
//! default = "deny"              # or "allow": the verdict for files no rule names
//!
//! [[file]]
//! path = "/etc/hostname"
//! access = ["read"]             # read, write, append, exec
//! audit = false                 # true: allowed, and reported
//! ```

use std::{
    collections::BTreeMap,
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use systrace_common::{access, FileRule, PolicyInfo};
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
struct SourceMap<'a> {
    file: &'a Path,
    text: &'a str,
}

impl SourceMap<'_> {
    fn locate(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
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
        }
    }
}

/// The file as written, with spans for diagnostics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Option<Spanned<String>>,
    cgroup: Spanned<String>,
    mode: Mode,
    default: DefaultVerdict,
    #[serde(default)]
    file: Vec<RawFileRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileRule {
    path: Spanned<String>,
    access: Spanned<Vec<Access>>,
    #[serde(default)]
    audit: bool,
}

/// A validated policy, not yet tied to any inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub source: PathBuf,
    pub cgroup: PathBuf,
    pub mode: Mode,
    pub default: DefaultVerdict,
    pub files: Vec<FileRuleSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRuleSpec {
    pub path: PathBuf,
    pub allow: u32,
    pub audit: bool,
    pub location: Location,
}

/// Parses and validates one policy file's text. `cgroup_root` is the cgroup2 mount
/// that relative cgroup paths hang from.
pub fn parse(file: &Path, text: &str, cgroup_root: &Path) -> Result<Policy, Diagnostic> {
    let map = SourceMap { file, text };
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

    let cgroup_text = raw.cgroup.get_ref();
    if cgroup_text.is_empty() || cgroup_text.split('/').any(|c| c == "..") {
        return Err(map.diagnostic(
            Severity::Error,
            raw.cgroup.span(),
            "cgroup must be a path below the cgroup2 mount, without '..'",
        ));
    }
    let cgroup = if cgroup_text.starts_with('/') {
        PathBuf::from(cgroup_text)
    } else {
        cgroup_root.join(cgroup_text)
    };
    if !cgroup.starts_with(cgroup_root) || cgroup == cgroup_root {
        return Err(map.diagnostic(
            Severity::Error,
            raw.cgroup.span(),
            format!(
                "cgroup {} is not below the cgroup2 mount {} (confining the root cgroup would confine the whole system)",
                cgroup.display(),
                cgroup_root.display()
            ),
        ));
    }

    let mut files = Vec::with_capacity(raw.file.len());
    for rule in &raw.file {
        let path = rule.path.get_ref();
        if !path.starts_with('/') {
            return Err(map.diagnostic(Severity::Error, rule.path.span(), "a file path must be absolute"));
        }
        if rule.access.get_ref().is_empty() {
            return Err(map.diagnostic(
                Severity::Error,
                rule.access.span(),
                "access is empty: list at least one of read, write, append, exec",
            ));
        }
        files.push(FileRuleSpec {
            path: PathBuf::from(path),
            allow: rule.access.get_ref().iter().fold(0, |bits, a| bits | a.bits()),
            audit: rule.audit,
            location: map.locate(rule.path.span().start),
        });
    }

    Ok(Policy { name, source: file.to_path_buf(), cgroup, mode: raw.mode, default: raw.default, files })
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
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub info: PolicyInfo,
    /// (dev, ino) -> rule; several paths naming one inode merge here.
    pub rules: BTreeMap<(u64, u64), FileRule>,
    /// (dev, ino) -> the first path a rule gave it, to name files in events.
    pub paths: BTreeMap<(u64, u64), PathBuf>,
    pub warnings: Vec<Diagnostic>,
}

/// Resolves a validated policy against the file system and the cgroup tree.
pub fn compile(policy: &Policy, resolver: &dyn Resolver) -> Result<Compiled, Diagnostic> {
    let cgroup_id = resolver.cgroup_id(&policy.cgroup).map_err(|e| Diagnostic {
        severity: Severity::Error,
        location: Location { file: policy.source.clone(), line: 1, column: 1 },
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
        _pad: [0; 6],
    };
    let mut rules: BTreeMap<(u64, u64), FileRule> = BTreeMap::new();
    let mut paths = BTreeMap::new();
    let mut warnings = Vec::new();
    for spec in &policy.files {
        match resolver.file_id(&spec.path) {
            Ok(id) => {
                let rule = rules.entry(id).or_default();
                rule.allow |= spec.allow;
                if spec.audit {
                    rule.audit |= spec.allow;
                }
                paths.entry(id).or_insert_with(|| spec.path.clone());
            }
            Err(e) => warnings.push(Diagnostic {
                severity: Severity::Warning,
                location: spec.location.clone(),
                message: format!("{}: {e}; the rule is skipped", spec.path.display()),
            }),
        }
    }
    Ok(Compiled { name: policy.name.clone(), cgroup: policy.cgroup.clone(), cgroup_id, info, rules, paths, warnings })
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
path = "/var/log/nginx/access.log"
access = ["append"]
audit = true
"#;

    #[test]
    fn parses_a_valid_policy() {
        let p = parse_str(GOOD).unwrap();
        assert_eq!(p.name, "web");
        assert_eq!(p.cgroup, PathBuf::from("/sys/fs/cgroup/system.slice/nginx.service"));
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.default, DefaultVerdict::Deny);
        assert_eq!(p.files.len(), 2);
        assert_eq!(p.files[0].allow, access::READ);
        assert_eq!(p.files[1].allow, access::APPEND);
        assert!(p.files[1].audit);
        assert_eq!((p.files[1].location.line, p.files[1].location.column), (12, 8));
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
        assert_eq!((line, col), (5, 8));
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
    fn compile_merges_hardlinks_and_warns_on_missing_paths() {
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
audit = true
[[file]]
path = "/missing"
access = ["read"]
"#;
        let policy = parse_str(text).unwrap();
        let table = Table(HashMap::from([
            (PathBuf::from("/a"), (1, 10)),
            (PathBuf::from("/a-hardlink"), (1, 10)),
        ]));
        let c = compile(&policy, &table).unwrap();
        assert_eq!(c.cgroup_id, 4242);
        assert_eq!(c.info.mode, systrace_common::Mode::Audit as u8);
        assert_eq!(c.info.default, systrace_common::Default::Allow as u8);
        assert_eq!(c.rules.len(), 1);
        let rule = c.rules[&(1, 10)];
        assert_eq!(rule.allow, access::READ | access::WRITE | access::APPEND);
        assert_eq!(rule.audit, access::WRITE | access::APPEND);
        assert_eq!(c.paths[&(1, 10)], PathBuf::from("/a"));
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].location.line, 13);
        assert!(c.warnings[0].to_string().starts_with("p.toml:13:8: warning: /missing"));
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
        assert!(access_names(0).is_empty());
    }
}

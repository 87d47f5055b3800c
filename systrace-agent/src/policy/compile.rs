//! A validated policy resolved against the file system, as map entries.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use systrace_common::{access, capability, policy_flags, unit_kind, FileRule, NetRule, PolicyInfo};

use super::*;

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
    pub inode_anchors: BTreeMap<Anchor, FileRule>,
    /// Deny rules by extension: the files they cover are followed too.
    pub extension_denies: Vec<ExtensionDeny>,
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
    let error =
        |message: String| Diagnostic { severity: Severity::Error, location: policy.target_location.clone(), message };
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
    let (inode_anchors, extension_denies) = files::inode_anchors(&rules, key);
    let info = PolicyInfo {
        mode: match policy.mode {
            Mode::Enforce => systrace_common::Mode::Enforce as u8,
            Mode::Audit => systrace_common::Mode::Audit as u8,
            Mode::Learn => systrace_common::Mode::Learn as u8,
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
        extension_denies,
        net,
        sockets: compile_sockets(&policy.sockets, &policy.net, &policy.unix),
        unix: compile_unix(&policy.unix),
        protections_off: policy.protections_off.clone(),
        warnings: Vec::new(),
    })
}

impl Compiled {
    /// Whether this policy's processes could ever write a cgroup v2
    /// `cgroup.procs` or `cgroup.threads` and have the kernel move a process,
    /// so the move check on `inode_permission` must be attached from before it
    /// is in force. That program runs once per path component of every lookup on
    /// the system (a tenth of an open's cost on 6.12), so it is attached only
    /// when some policy needs it.
    ///
    /// Every write to an open file passes `file_permission` first, which decides
    /// it by the file rules (descriptors inherited from before confinement and
    /// received ones too), and CLONE_INTO_CGROUP is refused at `task_alloc`. So
    /// a policy that enforces and grants `write` or `append` to no path, by
    /// default or by any rule, never reaches the kernel's move. Where
    /// cgroupfs is mounted does not matter then; for a policy that writes
    /// somewhere it would (cgroupfs can be mounted anywhere), so any write
    /// grant keeps the check.
    ///
    /// With the `cgroup` protection off the check refuses nothing now, but a
    /// write this policy lets through may still be on its way when a reload
    /// puts one in force that switches it on: the protection does not count.
    pub fn needs_move_check(&self) -> bool {
        const WRITES: u32 = access::WRITE | access::APPEND;
        let enforces = self.info.mode == systrace_common::Mode::Enforce as u8;
        let by_default = self.info.default == systrace_common::Default::Allow as u8;
        let by_rule =
            self.tree.entries.values().any(|n| {
                [n.rule.exact, n.rule.children, n.rule.subtree].iter().any(|s| (s.allow | s.audit) & WRITES != 0)
            });
        !enforces || by_default || by_rule
    }

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

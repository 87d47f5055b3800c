//! The validated policy: what it confines and the rules it holds, free of syntax.

use std::{fmt, path::PathBuf};

use serde::Deserialize;
use systrace_common::access;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
    /// Complain mode: deny rules deny, and what the rest of the policy would
    /// refuse is allowed and recorded once per distinct access (`learn`).
    Learn,
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
    /// What `${HOME}` in a rule's path stands for: every home directory, as
    /// AppArmor's `@{HOME}` does (see [`crate::homes`]).
    pub homes: Vec<PathBuf>,
    /// The target of a policy that names none: the transient cgroup of
    /// `exec` and `learn`. `None` for `run`, where a policy must name one.
    pub default_target: Option<Target>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRuleSpec {
    /// The anchor: the file itself for [`Scope::Exact`], else the directory.
    pub path: PathBuf,
    pub scope: Scope,
    pub access: u32,
    pub verdict: RuleVerdict,
    pub location: Location,
}

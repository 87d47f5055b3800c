//! Types shared by the kernel programs (`systrace-ebpf`) and the agent.
//!
//! Everything here crosses the user/kernel boundary through BPF maps or the ring
//! buffer, so every struct is `#[repr(C)]`, has explicit padding and no pointers.
//! Changing a layout means rebuilding both sides; the agent checks the event size
//! it reads against `size_of::<Event>()`.
#![no_std]

/// Names of the maps and globals, written once so both sides agree.
pub mod names {
    /// cgroup id (u64) -> policy slot (u32). Which policy confines a cgroup.
    pub const CGROUP_POLICY: &str = "CGROUP_POLICY";
    /// policy slot (u32) -> [`crate::PolicyInfo`].
    pub const POLICIES: &str = "POLICIES";
    /// [`crate::FileKey`] -> [`crate::FileRule`].
    pub const FILE_RULES: &str = "FILE_RULES";
    /// Ring buffer of [`crate::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU array of u64 counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
}

/// Access kinds, as bits. A rule holds the set it allows; an operation requests a set.
pub mod access {
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const APPEND: u32 = 1 << 2;
    pub const EXEC: u32 = 1 << 3;
    pub const ALL: u32 = READ | WRITE | APPEND | EXEC;

    /// Names in the order of the bits, for policy files and events.
    pub const NAMES: [(&str, u32); 4] = [("read", READ), ("write", WRITE), ("append", APPEND), ("exec", EXEC)];
}

/// What a policy does with an operation its rules do not allow.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Deny with -EPERM and report.
    Enforce = 0,
    /// Allow, but report what would have been denied.
    Audit = 1,
}

/// Verdict applied to a file no rule names.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Default {
    Deny = 0,
    Allow = 1,
}

/// Outcome carried by an event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed = 0,
    /// Denied with -EPERM (enforce mode).
    Denied = 1,
    /// Would have been denied; allowed because the policy is in audit mode.
    Audited = 2,
    /// Allowed by a rule that asks for a report.
    AuditRule = 3,
}

impl Verdict {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Allowed,
            1 => Self::Denied,
            2 => Self::Audited,
            3 => Self::AuditRule,
            _ => return None,
        })
    }
}

/// The LSM hook that produced an event.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    FileOpen = 1,
}

impl Hook {
    pub fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::FileOpen),
            _ => None,
        }
    }
}

/// Per-policy settings, value of the `POLICIES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyInfo {
    /// [`Mode`] as u8.
    pub mode: u8,
    /// [`Default`] as u8.
    pub default: u8,
    pub _pad: [u8; 6],
}

/// Key of the `FILE_RULES` map: one file (by device and inode) under one policy.
///
/// `dev` uses the kernel's internal encoding (`major << 20 | minor`), which is what
/// `super_block.s_dev` holds; the agent converts from `stat()`'s encoding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub policy: u32,
    pub _pad: u32,
    pub dev: u64,
    pub ino: u64,
}

/// Value of the `FILE_RULES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FileRule {
    /// Access bits allowed on this file; any other requested bit is a violation.
    pub allow: u32,
    /// Allowed access bits that are still reported (verdict [`Verdict::AuditRule`]).
    pub audit: u32,
}

/// Counters kept per CPU by the kernel side and summed by the agent.
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    /// Events lost because the ring buffer was full. The verdict was applied anyway.
    RingFull = 0,
    /// Operations denied.
    Denied = 1,
    /// Operations reported (denied, audited or audit rules).
    Reported = 2,
}

pub const COUNTER_SLOTS: u32 = 4;

pub const COMM_LEN: usize = 16;
pub const PATH_LEN: usize = 256;

/// Event flags.
pub mod event_flags {
    /// The kernel could not give the path; `path` is empty.
    pub const NO_PATH: u8 = 1 << 0;
}

/// One violation or audit report, written to the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns()`: nanoseconds since boot, suspend included.
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub dev: u64,
    pub ino: u64,
    /// Thread id (the kernel's pid).
    pub pid: u32,
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub policy: u32,
    /// Access bits the operation asked for.
    pub requested: u32,
    /// [`Hook`] as u16.
    pub hook: u16,
    /// [`Verdict`] as u8.
    pub verdict: u8,
    /// [`event_flags`].
    pub flags: u8,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
    /// NUL-terminated.
    pub path: [u8; PATH_LEN],
}

/// Kernel struct field offsets read from the running kernel's BTF by the agent and
/// handed to the programs as read-only globals. rustc emits no CO-RE relocations, so
/// compiled-in offsets would be right for one kernel only.
pub mod offsets {
    /// Global names in the eBPF object; each is a `u64` byte offset.
    pub const FILE_F_INODE: &str = "OFF_FILE_F_INODE";
    pub const FILE_F_MODE: &str = "OFF_FILE_F_MODE";
    pub const FILE_F_FLAGS: &str = "OFF_FILE_F_FLAGS";
    pub const FILE_F_PATH: &str = "OFF_FILE_F_PATH";
    pub const INODE_I_INO: &str = "OFF_INODE_I_INO";
    pub const INODE_I_SB: &str = "OFF_INODE_I_SB";
    pub const SUPER_BLOCK_S_DEV: &str = "OFF_SUPER_BLOCK_S_DEV";

    /// (global, struct, field path) for every offset the programs need. A dotted
    /// field path walks nested members.
    pub const ALL: [(&str, &str, &str); 7] = [
        (FILE_F_INODE, "file", "f_inode"),
        (FILE_F_MODE, "file", "f_mode"),
        (FILE_F_FLAGS, "file", "f_flags"),
        (FILE_F_PATH, "file", "f_path"),
        (INODE_I_INO, "inode", "i_ino"),
        (INODE_I_SB, "inode", "i_sb"),
        (SUPER_BLOCK_S_DEV, "super_block", "s_dev"),
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, hold no pointers, and every bit pattern
    // is valid for them (enums are stored as plain integers).
    unsafe impl aya::Pod for super::PolicyInfo {}
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::FileRule {}
}

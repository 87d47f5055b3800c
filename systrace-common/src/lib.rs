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
    /// LPM trie: [`crate::NetKey`] (longest address prefix) -> [`crate::NetRule`].
    pub const NET_RULES: &str = "NET_RULES";
    /// [`crate::SocketKey`] -> one of [`crate::rule_verdict`]: socket creation rules.
    pub const SOCKET_RULES: &str = "SOCKET_RULES";
    /// [`crate::UnixKey`] -> one of [`crate::rule_verdict`]: unix socket peers.
    pub const UNIX_RULES: &str = "UNIX_RULES";
    /// One u32: the agent's process id, which no SIGIO may reach.
    pub const AGENT: &str = "AGENT";
}

/// Access kinds, as bits. A rule holds the set it allows; an operation requests a set.
pub mod access {
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const APPEND: u32 = 1 << 2;
    pub const EXEC: u32 = 1 << 3;
    /// Make a new name in a directory: create, mkdir, mknod, symlink, link, rename's target.
    pub const CREATE: u32 = 1 << 4;
    /// Remove a name: unlink, rmdir.
    pub const DELETE: u32 = 1 << 5;
    /// Move a name away (the source of a rename).
    pub const RENAME: u32 = 1 << 6;
    pub const ALL: u32 = READ | WRITE | APPEND | EXEC | CREATE | DELETE | RENAME;

    /// Names in the order of the bits, for policy files and events.
    pub const NAMES: [(&str, u32); 7] = [
        ("read", READ),
        ("write", WRITE),
        ("append", APPEND),
        ("exec", EXEC),
        ("create", CREATE),
        ("delete", DELETE),
        ("rename", RENAME),
    ];
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
    BprmCheckSecurity = 2,
    PathMknod = 3,
    PathMkdir = 4,
    PathSymlink = 5,
    PathLink = 6,
    PathUnlink = 7,
    PathRmdir = 8,
    PathRename = 9,
    PathTruncate = 10,
    SocketBind = 11,
    SocketConnect = 12,
    SocketSendmsg = 13,
    SocketCreate = 14,
    Capable = 15,
    PtraceAccessCheck = 16,
    TaskKill = 17,
    Bpf = 18,
    SbMount = 19,
    MoveMount = 20,
    SbUmount = 21,
    KernelModuleRequest = 22,
    KernelLoadData = 23,
    KernelReadFile = 24,
    TaskAlloc = 25,
    UsernsCreate = 26,
    UnixStreamConnect = 27,
    UnixMaySend = 28,
    FileSendSigiotask = 29,
    TaskSetnice = 30,
    TaskSetscheduler = 31,
    TaskPrlimit = 32,
}

impl Hook {
    pub const ALL: [Hook; 32] = [
        Hook::FileOpen,
        Hook::BprmCheckSecurity,
        Hook::PathMknod,
        Hook::PathMkdir,
        Hook::PathSymlink,
        Hook::PathLink,
        Hook::PathUnlink,
        Hook::PathRmdir,
        Hook::PathRename,
        Hook::PathTruncate,
        Hook::SocketBind,
        Hook::SocketConnect,
        Hook::SocketSendmsg,
        Hook::SocketCreate,
        Hook::Capable,
        Hook::PtraceAccessCheck,
        Hook::TaskKill,
        Hook::Bpf,
        Hook::SbMount,
        Hook::MoveMount,
        Hook::SbUmount,
        Hook::KernelModuleRequest,
        Hook::KernelLoadData,
        Hook::KernelReadFile,
        Hook::TaskAlloc,
        Hook::UsernsCreate,
        Hook::UnixStreamConnect,
        Hook::UnixMaySend,
        Hook::FileSendSigiotask,
        Hook::TaskSetnice,
        Hook::TaskSetscheduler,
        Hook::TaskPrlimit,
    ];

    /// The LSM hook name, which is also the program's name in the object.
    pub fn name(self) -> &'static str {
        match self {
            Hook::FileOpen => "file_open",
            Hook::BprmCheckSecurity => "bprm_check_security",
            Hook::PathMknod => "path_mknod",
            Hook::PathMkdir => "path_mkdir",
            Hook::PathSymlink => "path_symlink",
            Hook::PathLink => "path_link",
            Hook::PathUnlink => "path_unlink",
            Hook::PathRmdir => "path_rmdir",
            Hook::PathRename => "path_rename",
            Hook::PathTruncate => "path_truncate",
            Hook::SocketBind => "socket_bind",
            Hook::SocketConnect => "socket_connect",
            Hook::SocketSendmsg => "socket_sendmsg",
            Hook::SocketCreate => "socket_create",
            Hook::Capable => "capable",
            Hook::PtraceAccessCheck => "ptrace_access_check",
            Hook::TaskKill => "task_kill",
            Hook::Bpf => "bpf",
            Hook::SbMount => "sb_mount",
            Hook::MoveMount => "move_mount",
            Hook::SbUmount => "sb_umount",
            Hook::KernelModuleRequest => "kernel_module_request",
            Hook::KernelLoadData => "kernel_load_data",
            Hook::KernelReadFile => "kernel_read_file",
            Hook::TaskAlloc => "task_alloc",
            Hook::UsernsCreate => "userns_create",
            Hook::UnixStreamConnect => "unix_stream_connect",
            Hook::UnixMaySend => "unix_may_send",
            Hook::FileSendSigiotask => "file_send_sigiotask",
            Hook::TaskSetnice => "task_setnice",
            Hook::TaskSetscheduler => "task_setscheduler",
            Hook::TaskPrlimit => "task_prlimit",
        }
    }

    /// Global holding the index of the previous program's return value in this
    /// hook's context; see [`offsets::ret_arg_global`].
    pub fn ret_global(self) -> &'static str {
        match self {
            Hook::FileOpen => "RET_FILE_OPEN",
            Hook::BprmCheckSecurity => "RET_BPRM_CHECK_SECURITY",
            Hook::PathMknod => "RET_PATH_MKNOD",
            Hook::PathMkdir => "RET_PATH_MKDIR",
            Hook::PathSymlink => "RET_PATH_SYMLINK",
            Hook::PathLink => "RET_PATH_LINK",
            Hook::PathUnlink => "RET_PATH_UNLINK",
            Hook::PathRmdir => "RET_PATH_RMDIR",
            Hook::PathRename => "RET_PATH_RENAME",
            Hook::PathTruncate => "RET_PATH_TRUNCATE",
            Hook::SocketBind => "RET_SOCKET_BIND",
            Hook::SocketConnect => "RET_SOCKET_CONNECT",
            Hook::SocketSendmsg => "RET_SOCKET_SENDMSG",
            Hook::SocketCreate => "RET_SOCKET_CREATE",
            Hook::Capable => "RET_CAPABLE",
            Hook::PtraceAccessCheck => "RET_PTRACE_ACCESS_CHECK",
            Hook::TaskKill => "RET_TASK_KILL",
            Hook::Bpf => "RET_BPF",
            Hook::SbMount => "RET_SB_MOUNT",
            Hook::MoveMount => "RET_MOVE_MOUNT",
            Hook::SbUmount => "RET_SB_UMOUNT",
            Hook::KernelModuleRequest => "RET_KERNEL_MODULE_REQUEST",
            Hook::KernelLoadData => "RET_KERNEL_LOAD_DATA",
            Hook::KernelReadFile => "RET_KERNEL_READ_FILE",
            Hook::TaskAlloc => "RET_TASK_ALLOC",
            Hook::UsernsCreate => "RET_USERNS_CREATE",
            Hook::UnixStreamConnect => "RET_UNIX_STREAM_CONNECT",
            Hook::UnixMaySend => "RET_UNIX_MAY_SEND",
            Hook::FileSendSigiotask => "RET_FILE_SEND_SIGIOTASK",
            Hook::TaskSetnice => "RET_TASK_SETNICE",
            Hook::TaskSetscheduler => "RET_TASK_SETSCHEDULER",
            Hook::TaskPrlimit => "RET_TASK_PRLIMIT",
        }
    }

    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|h| *h as u16 == v)
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
    pub _pad: [u8; 2],
    /// [`protect`] bits that are on.
    pub protections: u32,
    /// Capabilities (bit n = capability n) the policy allows.
    pub capabilities: u64,
    /// The cgroup the policy names. Processes in it or below it are "inside":
    /// signals and ptrace reads stay allowed there.
    pub cgroup_id: u64,
}

/// Self-protection a policy applies to its processes, as bits of
/// [`PolicyInfo::protections`]. All are on unless the policy switches one off.
pub mod protect {
    /// No ptrace attach to any other process; no ptrace reads of processes outside.
    pub const PTRACE: u32 = 1 << 0;
    /// No signals to processes outside the policy's cgroup (the agent above all),
    /// and no changing their priority, scheduling or resource limits.
    pub const SIGNAL: u32 = 1 << 1;
    /// No bpf() calls, and no unlinking or renaming on bpffs (the agent's pins).
    pub const BPF: u32 = 1 << 2;
    /// No mount, umount or move_mount.
    pub const MOUNT: u32 = 1 << 3;
    /// No kernel module loading, explicit or on demand, and no kexec images.
    pub const MODULE: u32 = 1 << 4;
    /// No writes to cgroup.procs, cgroup.threads or tasks, no CLONE_INTO_CGROUP.
    pub const CGROUP: u32 = 1 << 5;
    /// No new user namespaces, no clone into new user or mount namespaces.
    pub const NAMESPACE: u32 = 1 << 6;
    pub const ALL: u32 = PTRACE | SIGNAL | BPF | MOUNT | MODULE | CGROUP | NAMESPACE;

    pub const NAMES: [(&str, u32); 7] = [
        ("ptrace", PTRACE),
        ("signal", SIGNAL),
        ("bpf", BPF),
        ("mount", MOUNT),
        ("module", MODULE),
        ("cgroup", CGROUP),
        ("namespace", NAMESPACE),
    ];

    pub fn name(bit: u32) -> &'static str {
        NAMES.iter().find(|(_, b)| *b == bit).map_or("unknown", |(n, _)| n)
    }
}

/// Capability numbers, as `linux/capability.h` has them.
pub mod capability {
    /// Names without the `CAP_` prefix, lower case, indexed by number.
    pub const NAMES: [&str; 41] = [
        "chown",
        "dac_override",
        "dac_read_search",
        "fowner",
        "fsetid",
        "kill",
        "setgid",
        "setuid",
        "setpcap",
        "linux_immutable",
        "net_bind_service",
        "net_broadcast",
        "net_admin",
        "net_raw",
        "ipc_lock",
        "ipc_owner",
        "sys_module",
        "sys_rawio",
        "sys_chroot",
        "sys_ptrace",
        "sys_pacct",
        "sys_admin",
        "sys_boot",
        "sys_nice",
        "sys_resource",
        "sys_time",
        "sys_tty_config",
        "mknod",
        "lease",
        "audit_write",
        "audit_control",
        "setfcap",
        "mac_override",
        "mac_admin",
        "syslog",
        "wake_alarm",
        "block_suspend",
        "audit_read",
        "perfmon",
        "bpf",
        "checkpoint_restore",
    ];
}

/// Socket families and types by name, for socket creation rules and events.
pub mod socket {
    pub const FAMILIES: [(&str, u16); 5] = [("unix", 1), ("inet", 2), ("inet6", 10), ("netlink", 16), ("packet", 17)];
    pub const TYPES: [(&str, u16); 5] = [("stream", 1), ("dgram", 2), ("raw", 3), ("seqpacket", 5), ("packet", 10)];
    pub const SOCK_STREAM: u16 = 1;
    pub const SOCK_DGRAM: u16 = 2;
}

/// Bytes of `sun_path` in a `struct sockaddr_un`.
pub const UNIX_PATH_MAX: usize = 108;

/// Key of `UNIX_RULES`: the name a unix socket peer was bound to, exactly as
/// the kernel keeps it: a path with its terminating NUL, or an abstract name
/// with its leading NUL. `len` 0 (and an empty name) matches every named peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnixKey {
    pub policy: u32,
    pub op: u8,
    pub _pad: u8,
    pub len: u16,
    pub name: [u8; UNIX_PATH_MAX],
}

/// Key of `SOCKET_RULES`: which sockets a policy lets its processes create.
/// `sock_type` [`SocketKey::ANY_TYPE`] matches every type of the family.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketKey {
    pub policy: u32,
    pub family: u16,
    pub sock_type: u16,
}

impl SocketKey {
    pub const ANY_TYPE: u16 = u16::MAX;
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

/// What one rule says about access bits. At one level of specificity a bit in
/// `deny` wins over the same bit in `allow`; `audit` bits are allowed and reported.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleSet {
    pub allow: u32,
    pub deny: u32,
    pub audit: u32,
}

impl RuleSet {
    /// The bits this set decides.
    pub const fn covers(&self) -> u32 {
        self.allow | self.deny | self.audit
    }
}

/// Value of the `FILE_RULES` map: every rule anchored at one inode.
///
/// `exact` applies to the inode itself, `children` to names directly in it (a
/// directory; `/dir/*`), `subtree` to everything below it (`/dir/**`). The kernel
/// walks from a file up through its parents, so the nearest anchor decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FileRule {
    pub exact: RuleSet,
    pub children: RuleSet,
    pub subtree: RuleSet,
}

/// Network operations, families and protocols, as the kernel numbers them.
pub mod net {
    pub const OP_BIND: u8 = 1;
    /// Also decides datagrams sent to an explicit address (sendto, sendmsg).
    pub const OP_CONNECT: u8 = 2;
    pub const AF_UNIX: u8 = 1;
    pub const AF_INET: u8 = 2;
    pub const AF_INET6: u8 = 10;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
    /// Bits of [`crate::NetKey`] before the address: every rule matches them fully.
    pub const FIXED_PREFIX_BITS: u32 = 64;
    /// Port ranges one [`crate::NetRule`] holds.
    pub const MAX_PORT_RULES: usize = 16;
}

/// Data of a `NET_RULES` key; the LPM prefix length is 64 plus the address's
/// prefix. IPv4 addresses fill the first 4 bytes of `addr`; IPv4-mapped IPv6
/// addresses are matched as IPv4.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetKey {
    pub policy: u32,
    pub op: u8,
    pub family: u8,
    pub proto: u8,
    pub _pad: u8,
    pub addr: [u8; 16],
}

/// One port range and what it decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortRule {
    pub lo: u16,
    pub hi: u16,
    /// One of [`rule_verdict`].
    pub verdict: u8,
    pub _pad: [u8; 3],
}

/// Verdicts of network rules.
pub mod rule_verdict {
    pub const ALLOW: u8 = 0;
    pub const DENY: u8 = 1;
    pub const AUDIT: u8 = 2;
}

/// Value of `NET_RULES`: the port ranges of every rule whose address prefix covers
/// this entry's, most specific first; the first range holding the port decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetRule {
    pub count: u32,
    pub _pad: u32,
    pub ports: [PortRule; net::MAX_PORT_RULES],
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
    /// Decisions where the parent walk hit its bound and the default applied.
    WalkBound = 3,
}

pub const COUNTER_SLOTS: u32 = 4;

pub const COMM_LEN: usize = 16;
/// Bytes of path components an event carries (see [`Event::path`]).
pub const PATH_LEN: usize = 256;
/// The event's path buffer is twice [`PATH_LEN`] so the kernel side can prove to the
/// verifier that a name copied at any offset below `PATH_LEN` stays inside it.
pub const PATH_BUF: usize = 2 * PATH_LEN;

/// How many directory levels the kernel climbs looking for a rule. Deeper files get
/// the policy's default for whatever no rule below the bound decided.
pub const MAX_WALK_DEPTH: u32 = 32;

/// Event flags.
pub mod event_flags {
    /// The kernel could not give the path; `path` is empty.
    pub const NO_PATH: u8 = 1 << 0;
    /// The parent walk hit [`crate::MAX_WALK_DEPTH`]; the default verdict applied.
    pub const WALK_BOUND: u8 = 1 << 1;
    /// The path did not fit; `path` holds its last components only.
    pub const PATH_TRUNCATED: u8 = 1 << 2;
    /// The event is about a process, a capability or a socket, not a file.
    pub const NOT_FILE: u8 = 1 << 3;
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
    /// Network operations: the peer or local address (IPv4 in the first 4 bytes),
    /// port (host order), family and protocol; zero otherwise. For unix sockets
    /// the peer's name is in `path` and `net_port` holds its length.
    pub net_addr: [u8; 16],
    pub net_port: u16,
    pub net_family: u8,
    pub net_proto: u8,
    /// Hook-specific: the capability (capable), signal (task_kill), ptrace mode,
    /// socket family (socket_create), clone flags' low half (task_alloc), bpf
    /// command, kernel read/load id.
    pub detail: u32,
    /// Hook-specific: the target process (task_kill, ptrace), socket type
    /// (socket_create).
    pub target: u32,
    /// The [`protect`] bit that decided, 0 for rule decisions.
    pub protection: u32,
    pub comm: [u8; COMM_LEN],
    /// The path's components, leaf first, each NUL-terminated, in the first
    /// [`PATH_LEN`] bytes (`new.txt\0www\0srv\0` for `/srv/www/new.txt`). The
    /// kernel builds it while climbing the parents, which works on every hook
    /// (`bpf_d_path` is allowed on a few only).
    pub path: [u8; PATH_BUF],
}

/// Kernel struct field offsets read from the running kernel's BTF by the agent and
/// handed to the programs as read-only globals. rustc emits no CO-RE relocations, so
/// compiled-in offsets would be right for one kernel only.
pub mod offsets {
    /// (global, struct, field) for every offset the programs need. Each global is a
    /// `u64` byte offset in the eBPF object.
    pub const ALL: [(&str, &str, &str); 30] = [
        ("OFF_FILE_F_MODE", "file", "f_mode"),
        ("OFF_FILE_F_FLAGS", "file", "f_flags"),
        ("OFF_FILE_F_PATH", "file", "f_path"),
        ("OFF_INODE_I_INO", "inode", "i_ino"),
        ("OFF_INODE_I_SB", "inode", "i_sb"),
        ("OFF_SUPER_BLOCK_S_DEV", "super_block", "s_dev"),
        ("OFF_PATH_MNT", "path", "mnt"),
        ("OFF_PATH_DENTRY", "path", "dentry"),
        ("OFF_DENTRY_D_PARENT", "dentry", "d_parent"),
        ("OFF_DENTRY_D_INODE", "dentry", "d_inode"),
        ("OFF_DENTRY_D_NAME_NAME", "dentry", "d_name.name"),
        ("OFF_MOUNT_MNT", "mount", "mnt"),
        ("OFF_MOUNT_MNT_PARENT", "mount", "mnt_parent"),
        ("OFF_MOUNT_MNT_MOUNTPOINT", "mount", "mnt_mountpoint"),
        ("OFF_LINUX_BINPRM_FILE", "linux_binprm", "file"),
        ("OFF_SOCKET_SK", "socket", "sk"),
        ("OFF_SOCK_SK_PROTOCOL", "sock", "sk_protocol"),
        ("OFF_MSGHDR_MSG_NAME", "msghdr", "msg_name"),
        ("OFF_MSGHDR_MSG_NAMELEN", "msghdr", "msg_namelen"),
        ("OFF_TASK_STRUCT_TGID", "task_struct", "tgid"),
        ("OFF_TASK_STRUCT_CGROUPS", "task_struct", "cgroups"),
        ("OFF_CSS_SET_DFL_CGRP", "css_set", "dfl_cgrp"),
        ("OFF_CGROUP_KN", "cgroup", "kn"),
        // Called __parent in newer kernels (6.18 has it), where it is RCU-protected.
        ("OFF_KERNFS_NODE_PARENT", "kernfs_node", "parent|__parent"),
        ("OFF_KERNFS_NODE_ID", "kernfs_node", "id"),
        ("OFF_SUPER_BLOCK_S_MAGIC", "super_block", "s_magic"),
        ("OFF_VFSMOUNT_MNT_ROOT", "vfsmount", "mnt_root"),
        ("OFF_UNIX_SOCK_ADDR", "unix_sock", "addr"),
        ("OFF_UNIX_ADDRESS_LEN", "unix_address", "len"),
        ("OFF_UNIX_ADDRESS_NAME", "unix_address", "name"),
    ];

    /// Global holding, per hook, the index of the previous program's return value in
    /// the hook's context (the number of hook arguments), read from the BTF of
    /// `bpf_lsm_<hook>`: it differs between kernels for some hooks.
    pub fn ret_arg_global(hook: crate::Hook) -> &'static str {
        hook.ret_global()
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, hold no pointers, and every bit pattern
    // is valid for them (enums are stored as plain integers).
    unsafe impl aya::Pod for super::PolicyInfo {}
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::FileRule {}
    unsafe impl aya::Pod for super::RuleSet {}
    unsafe impl aya::Pod for super::NetKey {}
    unsafe impl aya::Pod for super::NetRule {}
    unsafe impl aya::Pod for super::SocketKey {}
    unsafe impl aya::Pod for super::UnixKey {}
}

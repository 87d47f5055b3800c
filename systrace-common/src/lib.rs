//! Types shared by the kernel programs (`systrace-ebpf`) and the agent.
//!
//! Everything here crosses the user/kernel boundary through BPF maps, the ring
//! buffer or read-only globals, so every struct is `#[repr(C)]`, has explicit
//! padding and no pointers. Changing a layout means rebuilding both sides; the
//! agent checks the event size it reads against `size_of::<Event>()`.
//!
//! Two tables drive both sides: [`Hook`] (every LSM hook a program attaches to,
//! with the arguments it reads by name) and [`Off`] (every kernel struct field
//! the programs read). Adding a hook or a field is one line in one of them.
#![no_std]

mod hooks;
mod siphash;

pub use hooks::{Hook, HOOK_ARG_SLOTS, HOOK_SLOTS};
pub use siphash::{
    extension, extension_hash, extension_hash_words, extension_words, name_hash, SipHasher13, MAX_EXTENSION,
};

/// Names of the maps and globals, written once so both sides agree.
pub mod names {
    /// [`crate::BindingKey`] -> policy slot (u32): which policy confines a cgroup,
    /// in each of the two halves the agent switches between.
    pub const BINDINGS: &str = "BINDINGS";
    /// One u32: the half of the binding tables in force (0 or 1).
    pub const ACTIVE: &str = "ACTIVE";
    /// Array: [`crate::policy_index`] of a policy slot -> [`crate::PolicyEntry`].
    pub const POLICIES: &str = "POLICIES";
    /// [`crate::NameKey`] -> [`crate::NameNode`]: file rules by path name.
    pub const NAME_RULES: &str = "NAME_RULES";
    /// [`crate::InodeKey`] -> [`crate::FileRule`]: deny rules that also follow the file.
    pub const INODE_RULES: &str = "INODE_RULES";
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
    /// [`crate::TargetKey`] -> policy slot: cgroup paths policies name.
    pub const TARGETS: &str = "TARGETS";
    /// [`crate::UnitKey`] -> [`crate::UnitTarget`]: systemd units policies name.
    pub const UNITS: &str = "UNITS";
    /// One u32: the agent's process id, which no SIGIO may reach.
    pub const AGENT: &str = "AGENT";
    /// [`crate::ProbeRequest`] in, [`crate::ProbeResult`] out: how the agent learns
    /// the identity the kernel gives a file.
    pub const PROBE: &str = "PROBE";
    pub const PROBE_RESULT: &str = "PROBE_RESULT";
    /// Read-only globals.
    pub const OFFSETS: &str = "OFFSETS";
    pub const OFFSET_FORMS: &str = "OFFSET_FORMS";
    pub const HOOK_ARGS: &str = "HOOK_ARGS";
    pub const NAME_KEY: &str = "NAME_KEY";
    /// [`crate::RAW_DEVICE_SLOTS`] character devices (kernel `dev_t`s; a minor of
    /// [`crate::ANY_MINOR`] stands for the whole major) that no confined process opens.
    pub const RAW_DEVICES: &str = "RAW_DEVICES";
    /// Two kernel addresses: `rename_lock` and `mount_lock`, whose sequences
    /// version the walk cache's answers (0: the cache is off).
    pub const SEQLOCKS: &str = "SEQLOCKS";
    /// u64s indexed by [`crate::generation`]: bumped after a change that
    /// makes what a cache holds stale.
    pub const CACHE_GENERATION: &str = "CACHE_GENERATION";
    /// [`crate::AskKey`] -> [`crate::AskGrant`]: answers "permit once" given
    /// while `exec --ask` held a confined process's system call.
    pub const ASK_GRANTS: &str = "ASK_GRANTS";
}

/// Slots of [`names::CACHE_GENERATION`].
pub mod generation {
    /// The walk cache: bumped by the agent after it changes the rules of a
    /// policy slot in force.
    pub const WALK: u32 = 0;
    /// The subject cache (cgroup -> policy), the kernel's part: bumped by the
    /// cgroup tracepoints after they bind a cgroup (atomically).
    pub const SUBJECTS: u32 = 1;
    /// The subject cache, the agent's part: bumped around a switch of the
    /// bindings in force. A slot of its own, as the agent's read-modify-write
    /// could otherwise undo a tracepoint's bump made in between; the programs
    /// use the sum of the two, which grows with either.
    pub const SUBJECTS_AGENT: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Key of `ASK_GRANTS`: one process's access to one file, under one policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AskKey {
    pub policy: u32,
    /// The process that asked (the kernel's tgid): no other may use the answer.
    pub tgid: u32,
    /// The file, as the kernel identifies it (see `InodeKey`).
    pub dev: u64,
    pub ino: u64,
}

/// A person's "permit once": the access bits, until `expires_ns`
/// (`bpf_ktime_get_boot_ns`), for the system call that was held and the
/// reads and writes of the descriptor it opens.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AskGrant {
    pub expires_ns: u64,
    pub access: u32,
    pub _pad: u32,
}

/// Entries of the `RAW_DEVICES` global.
pub const RAW_DEVICE_SLOTS: usize = 24;
/// The minor of a `RAW_DEVICES` entry that covers every device of its major.
pub const ANY_MINOR: u32 = 0xf_ffff;

/// A kernel `dev_t` (`MKDEV`): 12 bits of major above 20 bits of minor.
pub const fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & ANY_MINOR)
}

/// Access kinds, as bits. A rule holds the set it allows; an operation requests a set.
pub mod access {
    pub const READ: u32 = 1 << 0;
    /// Change content: write, truncate, timestamps, `user.` extended attributes.
    pub const WRITE: u32 = 1 << 1;
    pub const APPEND: u32 = 1 << 2;
    /// Run as a program (execve). Implies [`MAP`].
    pub const EXEC: u32 = 1 << 3;
    /// Make a new name in a directory: create, mkdir, mknod, symlink, link, rename's target.
    pub const CREATE: u32 = 1 << 4;
    /// Remove a name: unlink, rmdir.
    pub const DELETE: u32 = 1 << 5;
    /// Move a name away (the source of a rename).
    pub const RENAME: u32 = 1 << 6;
    /// Map as code: mmap or mprotect with PROT_EXEC (shared libraries, ld.so).
    pub const MAP: u32 = 1 << 7;
    /// Change permissions: mode bits (setuid included), ACLs, file flags,
    /// security and trusted extended attributes.
    pub const CHMOD: u32 = 1 << 8;
    /// Change owner or group.
    pub const CHOWN: u32 = 1 << 9;
    pub const ALL: u32 = READ | WRITE | APPEND | EXEC | CREATE | DELETE | RENAME | MAP | CHMOD | CHOWN;
    /// What follows a file's content, for rename and link: a new name may not
    /// give a file access its current names do not have.
    pub const CONTENT: u32 = READ | WRITE | APPEND | EXEC | MAP | CHMOD | CHOWN;

    /// Names in the order of the bits, for policy files and events.
    pub const NAMES: [(&str, u32); 10] = [
        ("read", READ),
        ("write", WRITE),
        ("append", APPEND),
        ("exec", EXEC),
        ("create", CREATE),
        ("delete", DELETE),
        ("rename", RENAME),
        ("map", MAP),
        ("chmod", CHMOD),
        ("chown", CHOWN),
    ];
}

/// What a policy does with an operation its rules do not allow.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Deny (EACCES for file operations, EPERM for the rest) and report.
    Enforce = 0,
    /// Allow, but report what would have been denied.
    Audit = 1,
    /// Learning (complain mode): deny rules still deny; what the policy's
    /// default or a missing grant would refuse is allowed and reported once
    /// per distinct (policy, hook, object, access) ([`Verdict::Learned`]).
    Learn = 2,
}

/// Verdict applied to an access no rule decides.
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
    /// Denied (enforce mode).
    Denied = 1,
    /// Would have been denied; allowed because the policy is in audit mode.
    Audited = 2,
    /// Allowed by a rule that asks for a report.
    AuditRule = 3,
    /// Allowed and recorded while learning ([`Mode::Learn`]).
    Learned = 4,
}

impl Verdict {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Allowed,
            1 => Self::Denied,
            2 => Self::Audited,
            3 => Self::AuditRule,
            4 => Self::Learned,
            _ => return None,
        })
    }
}

/// Event sources that are not LSM hooks, numbered above every [`Hook`].
pub mod source {
    /// A cgroup a policy names appeared (or was renamed into place) and was bound
    /// by the kernel before any process could run in it.
    pub const CGROUP_BOUND: u16 = 200;
}

/// Key of `BINDINGS`. The agent fills the half that is not in force, then
/// switches `ACTIVE` in one write: a reload changes every binding at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingKey {
    pub half: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
}

/// Bytes of a cgroup path a [`TargetKey`] holds (relative to the cgroup2 root,
/// with a leading `/`, as the kernel's cgroup tracepoints print it).
pub const CGROUP_PATH_LEN: usize = 256;

/// Key of `TARGETS`: a cgroup path a policy names, NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TargetKey {
    pub half: u32,
    pub path: [u8; CGROUP_PATH_LEN],
}

/// Bytes of a unit name a [`UnitKey`] holds.
pub const UNIT_NAME_LEN: usize = 64;

/// Key of `UNITS`: the leaf name of the cgroup systemd makes for a unit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnitKey {
    pub half: u32,
    pub name: [u8; UNIT_NAME_LEN],
}

/// Which systemd manager a unit policy means.
pub mod unit_kind {
    /// The system manager: a cgroup with the unit's name outside every `user@*.service`.
    pub const SYSTEM: u8 = 0;
    /// A user manager: a cgroup with the unit's name below `user@*.service`
    /// ([`crate::UnitTarget::manager`] names one, or is empty for every user).
    pub const USER: u8 = 1;
}

/// Value of `UNITS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitTarget {
    pub slot: u32,
    /// One of [`unit_kind`].
    pub kind: u8,
    pub _pad: [u8; 3],
    /// `user@UID.service`, NUL-padded; empty: any user.
    pub manager: [u8; 32],
}

/// Entries of the `POLICIES` array: a power of two. Policy slots are never
/// reused, so a slot's entry is at [`policy_index`] and says which slot it
/// holds; the agent gives a new slot an index no slot in force has.
pub const POLICY_INDEXES: u32 = 4096;

/// Where slot `slot`'s settings are in the `POLICIES` array.
#[inline(always)]
pub const fn policy_index(slot: u32) -> u32 {
    slot & (POLICY_INDEXES - 1)
}

/// A value of the `POLICIES` array: an array, not a hash map, because every
/// decision of a confined process reads it, and the kernel inlines an array
/// lookup into the program (a hash lookup is a call that hashes the key and
/// walks a bucket).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyEntry {
    /// The slot whose settings these are; 0 (never a slot): none.
    pub slot: u32,
    pub _pad: u32,
    pub info: PolicyInfo,
}

/// Per-policy settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
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
    /// Access bits some deny rule of the policy names (any path). When the
    /// path of a file cannot be known, an access the policy allows by default is
    /// still allowed only if no deny rule could have been about it.
    pub denied_somewhere: u32,
    /// [`policy_flags`].
    pub flags: u32,
}

/// Bits of [`PolicyInfo::flags`].
pub mod policy_flags {
    /// The policy has deny rules that follow inodes: look them up.
    pub const INODE_RULES: u32 = 1 << 0;
    /// The policy's connect rules allow every address and port (no deny rule,
    /// and the default or a rule naming no address, port or protocol allows):
    /// raw sockets, which can write any destination, may send.
    pub const RAW_CONNECT: u32 = 1 << 1;
    /// The same for bind rules.
    pub const RAW_BIND: u32 = 1 << 2;
}

/// Self-protection a policy applies to its processes, as bits of
/// [`PolicyInfo::protections`]. All are on unless the policy switches one off.
pub mod protect {
    /// No ptrace attach to any other process; no ptrace reads of processes outside.
    pub const PTRACE: u32 = 1 << 0;
    /// Nothing done to processes outside the policy's cgroup (the agent above
    /// all): signals, priority, scheduling, I/O priority, memory placement,
    /// resource limits, writes to their /proc files, exit signals through
    /// CLONE_PARENT, input pushed into a terminal (TIOCSTI).
    pub const SIGNAL: u32 = 1 << 1;
    /// No bpf() calls, and no unlinking or renaming on bpffs (the agent's pins).
    pub const BPF: u32 = 1 << 2;
    /// No mount, umount, move_mount or pivot_root.
    pub const MOUNT: u32 = 1 << 3;
    /// No kernel module loading, explicit or on demand, and no kexec images.
    pub const MODULE: u32 = 1 << 4;
    /// No moving processes between cgroups (cgroup.procs, cgroup.threads, tasks,
    /// CLONE_INTO_CGROUP); no writes to the files of, and no mkdir, rmdir or
    /// rename in, cgroups outside the policy's own.
    pub const CGROUP: u32 = 1 << 5;
    /// No new user namespaces, no clone into new user or mount namespaces.
    pub const NAMESPACE: u32 = 1 << 6;
    /// No writes to the kernel's own interfaces: /proc/sys, global /proc files
    /// (sysrq-trigger), sysfs, debugfs, tracefs, securityfs, configfs,
    /// efivarfs; no opening block devices (a raw disk is every file at once); no
    /// io_uring rings whose submission thread runs outside the cgroup.
    pub const SYSTEM: u32 = 1 << 7;
    pub const ALL: u32 = PTRACE | SIGNAL | BPF | MOUNT | MODULE | CGROUP | NAMESPACE | SYSTEM;

    pub const NAMES: [(&str, u32); 8] = [
        ("ptrace", PTRACE),
        ("signal", SIGNAL),
        ("bpf", BPF),
        ("mount", MOUNT),
        ("module", MODULE),
        ("cgroup", CGROUP),
        ("namespace", NAMESPACE),
        ("system", SYSTEM),
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

/// Socket families, types and protocols by name, for socket rules and events.
pub mod socket {
    pub const FAMILIES: [(&str, u16); 9] = [
        ("unix", 1),
        ("inet", 2),
        ("inet6", 10),
        ("netlink", 16),
        ("packet", 17),
        ("bluetooth", 31),
        ("vsock", 40),
        ("xdp", 44),
        ("mctp", 45),
    ];
    pub const TYPES: [(&str, u16); 5] = [("stream", 1), ("dgram", 2), ("raw", 3), ("seqpacket", 5), ("packet", 10)];
    /// IP protocols a `[[socket]]` or `[[net]]` rule can name. MPTCP is decided as
    /// tcp: an MPTCP connection falls back to plain TCP and reaches TCP listeners.
    pub const PROTOCOLS: [(&str, u16); 7] =
        [("ip", 0), ("icmp", 1), ("tcp", 6), ("udp", 17), ("icmpv6", 58), ("sctp", 132), ("udplite", 136)];
    pub const SOCK_STREAM: u16 = 1;
    pub const SOCK_DGRAM: u16 = 2;
    pub const SOCK_RAW: u16 = 3;
    pub const SOCK_SEQPACKET: u16 = 5;
    pub const IPPROTO_MPTCP: u16 = 262;
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

/// Key of `SOCKET_RULES`: which sockets a policy lets its processes create (and
/// use, when they come from elsewhere). [`SocketKey::ANY`] in `sock_type` or
/// `protocol` matches every value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketKey {
    pub policy: u32,
    pub family: u16,
    pub sock_type: u16,
    pub protocol: u16,
    pub _pad: u16,
}

impl SocketKey {
    pub const ANY: u16 = u16::MAX;
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

/// Every rule anchored at one path (or, for [`InodeKey`], one file).
///
/// `exact` applies to the path itself, `children` to names directly in it (a
/// directory; `/dir/*`), `subtree` to everything below it (`/dir/**`). The
/// deepest anchor on an object's path decides each bit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FileRule {
    pub exact: RuleSet,
    pub children: RuleSet,
    pub subtree: RuleSet,
}

/// Key of `NAME_RULES`: one component of a rule's path under its parent's node.
/// The root of the tree is `{parent: 0, hash: 0}`. `hash` is [`name_hash`] of
/// the component with the key the agent chose at start ([`names::NAME_KEY`]),
/// so names are matched without storing them and no one can aim at a collision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey {
    pub policy: u32,
    pub parent: u32,
    pub hash: u64,
}

/// Value of `NAME_RULES`: the node's id (the parent of its children's keys)
/// and the rules anchored at its path.
///
/// Rules by extension (`DIR/*.log`) are an entry under DIR's node keyed by
/// [`extension_hash`] instead of a name's hash, with the rules in `children`;
/// DIR's node then carries [`node_flags::EXTENSIONS`], so the kernel hashes a
/// file's extension only in directories that have such rules.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NameNode {
    pub node: u32,
    pub flags: u32,
    pub rule: FileRule,
}

/// Bits of [`NameNode::flags`].
pub mod node_flags {
    /// Rules by extension hang under this node.
    pub const EXTENSIONS: u32 = 1 << 0;
}

/// Path components a rule may have. The kernel remembers this many levels at the
/// top of a file's path while it climbs to the root.
pub const MAX_RULE_DEPTH: usize = 16;

/// Key of `INODE_RULES`: a file as the kernel identifies it (`i_sb->s_dev`,
/// `i_ino`, `i_generation`), learned from the kernel itself (see
/// [`ProbeRequest`]) because `stat()` reports other numbers on btrfs subvolumes
/// and overlayfs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeKey {
    pub policy: u32,
    pub generation: u32,
    pub dev: u64,
    pub ino: u64,
}

impl InodeKey {
    /// The key of the deny rules by extension (`DIR/*.log`) of the directory
    /// whose key is `self`: they follow the directory, as its own rules do, so
    /// a bind mount of it elsewhere is no way around them. `ext_hash` is
    /// [`extension_hash`]; a real inode number matching is as likely as
    /// guessing the agent's key.
    pub fn for_extension(self, ext_hash: u64) -> InodeKey {
        InodeKey { ino: self.ino ^ ext_hash, ..self }
    }
}

/// The identity the kernel gives a file.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub generation: u32,
    pub _pad: u32,
}

/// Slot 0 of `PROBE`: while `tgid` is the agent's and `nonce` is new, the next
/// stat() the agent makes has the kernel write the file's identity to
/// `PROBE_RESULT` with the same nonce.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProbeRequest {
    pub tgid: u32,
    pub _pad: u32,
    pub nonce: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProbeResult {
    pub nonce: u64,
    pub id: FileId,
}

/// Network operations, families and protocols, as the kernel numbers them.
pub mod net {
    pub const OP_BIND: u8 = 1;
    /// Also decides datagrams sent to an explicit address (sendto, sendmsg).
    pub const OP_CONNECT: u8 = 2;
    pub const AF_UNSPEC: u8 = 0;
    pub const AF_UNIX: u8 = 1;
    pub const AF_INET: u8 = 2;
    pub const AF_INET6: u8 = 10;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
    pub const IPPROTO_SCTP: u8 = 132;
    pub const IPPROTO_UDPLITE: u8 = 136;
    pub const IPPROTO_DCCP: u8 = 33;
    /// The `proto` of [`crate::NetKey`]s for rules that name no protocol: they
    /// decide every protocol (ICMP, UDP-Lite, raw sockets...) that no rule of the
    /// policy names. They are also written under tcp, udp and every protocol
    /// some rule names, so one lookup sees them together with those rules.
    pub const PROTO_ANY: u8 = 0;
    /// Whether a protocol has ports; for the others a sockaddr's port is
    /// ignored by the kernel, and decided as 0.
    pub const fn has_ports(proto: u8) -> bool {
        matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP | IPPROTO_DCCP)
    }
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
    /// Decisions where the file's path could not be known (a disconnected
    /// dentry, a mount outside the caller's namespace, a tree deeper than the
    /// walk's bound): deny rules were assumed to apply.
    WalkUndecided = 3,
    /// Events lost because the per-CPU scratch space was in use by a program
    /// that was preempted on the same CPU. The verdict was applied anyway.
    ScratchBusy = 4,
    /// Cgroups the kernel bound to a policy as they appeared.
    CgroupsBound = 5,
    /// Cgroups a policy names that could not be bound as they appeared (the
    /// binding table was full): their processes are confined by an
    /// ancestor's policy, if any, until the next reload binds them.
    BindFailed = 6,
    /// Learned accesses not reported again: the kernel had already reported
    /// the same policy, hook, object and access ([`Mode::Learn`]).
    LearnRepeats = 7,
    /// Written by the agent, not the kernel: events it has read from the ring
    /// buffer so far. The map is pinned, so the agent that takes over after a
    /// crash knows where this one stopped reading (the telemetry gap).
    AgentRead = 8,
    /// File decisions answered from the walk cache (see the eBPF crate's `cache`).
    WalkCacheHits = 9,
    /// File decisions that walked the path: nothing valid was remembered.
    WalkCacheMisses = 10,
}

pub const COUNTER_SLOTS: u32 = 11;

pub const COMM_LEN: usize = 16;
/// Bytes of path components an event carries (see [`Event::path`]).
pub const PATH_LEN: usize = 256;
/// The event's path buffer is twice [`PATH_LEN`] so the kernel side can prove to the
/// verifier that a name copied at any offset below `PATH_LEN` stays inside it.
pub const PATH_BUF: usize = 2 * PATH_LEN;

/// How many directory levels the kernel climbs to reach the root of the
/// caller's mount namespace. PATH_MAX allows about 2,000; deeper trees exist
/// only when made with relative paths. Past the bound the path is unknown and
/// deny rules are assumed to apply ([`Counter::WalkUndecided`]).
pub const MAX_WALK_DEPTH: u32 = 8192;

/// Event flags.
pub mod event_flags {
    /// The kernel could not give the path; `path` is empty.
    pub const NO_PATH: u8 = 1 << 0;
    /// The object's path could not be known; see [`crate::Counter::WalkUndecided`].
    pub const WALK_UNDECIDED: u8 = 1 << 1;
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
    /// [`Hook`] as u16, or one of [`source`].
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
    /// command, kernel read/load id, ioctl command.
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

/// Kernel struct fields the programs read, at offsets the agent finds in the
/// running kernel's BTF and hands over in the read-only `OFFSETS` array. rustc
/// emits no CO-RE relocations, so compiled-in offsets would be right for one
/// kernel only (`struct file` puts `f_inode` at 32 on 6.1 and 40 on 6.12).
macro_rules! kernel_offsets {
    ($($(#[doc = $doc:literal])* $variant:ident => $strukt:literal, $field:literal;)*) => {
        /// Index into `OFFSETS` of each field.
        #[repr(usize)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(non_camel_case_types)]
        pub enum Off {
            $($(#[doc = $doc])* $variant,)*
        }

        /// (struct, field) for each [`Off`], in order. `a.b` names a nested
        /// member; `a|b` a member a later kernel renamed or replaced (the first
        /// that exists wins, and the programs are told which in `OFFSET_FORMS`).
        /// A struct written `?s` may be missing (its offset is then
        /// [`OFFSET_ABSENT`]); `?module:s` is looked for in that module's BTF
        /// when the kernel has it as a module.
        pub const OFFSET_FIELDS: &[(&str, &str)] = &[$(($strukt, $field),)*];
    };
}

kernel_offsets! {
    FILE_F_MODE => "file", "f_mode";
    FILE_F_FLAGS => "file", "f_flags";
    FILE_F_PATH => "file", "f_path";
    FILE_F_INODE => "file", "f_inode";
    FILE_PRIVATE_DATA => "file", "private_data";
    INODE_I_MODE => "inode", "i_mode";
    INODE_I_INO => "inode", "i_ino";
    INODE_I_SB => "inode", "i_sb";
    INODE_I_GENERATION => "inode", "i_generation";
    INODE_I_PRIVATE => "inode", "i_private";
    INODE_I_RDEV => "inode", "i_rdev";
    SUPER_BLOCK_S_DEV => "super_block", "s_dev";
    SUPER_BLOCK_S_MAGIC => "super_block", "s_magic";
    /// Read as a u32: the low half of an `unsigned long` (little endian).
    SUPER_BLOCK_S_FLAGS => "super_block", "s_flags";
    SUPER_BLOCK_S_ROOT => "super_block", "s_root";
    /// A `list_head` of `mount.mnt_instance` nodes; since 6.17 the first
    /// `struct mount`, chained by `mnt_next_for_sb` (the second form).
    SUPER_BLOCK_S_MOUNTS => "super_block", "s_mounts";
    PATH_MNT => "path", "mnt";
    PATH_DENTRY => "path", "dentry";
    DENTRY_D_PARENT => "dentry", "d_parent";
    /// The sequence of a `seqlock_t` (`rename_lock`, `mount_lock`).
    SEQLOCK_SEQUENCE => "seqlock_t", "seqcount.seqcount.sequence";
    DENTRY_D_INODE => "dentry", "d_inode";
    DENTRY_D_SB => "dentry", "d_sb";
    /// `d_name.len` sits in an anonymous union with the hash: read as a u32.
    DENTRY_D_NAME_LEN => "dentry", "d_name.len";
    DENTRY_D_NAME_NAME => "dentry", "d_name.name";
    MOUNT_MNT => "mount", "mnt";
    MOUNT_MNT_PARENT => "mount", "mnt_parent";
    MOUNT_MNT_MOUNTPOINT => "mount", "mnt_mountpoint";
    MOUNT_MNT_INSTANCE => "mount", "mnt_instance|mnt_next_for_sb";
    MOUNT_MNT_NS => "mount", "mnt_ns";
    MNT_NAMESPACE_ROOT => "mnt_namespace", "root";
    VFSMOUNT_MNT_ROOT => "vfsmount", "mnt_root";
    LINUX_BINPRM_FILE => "linux_binprm", "file";
    SOCKET_SK => "socket", "sk";
    SOCKET_TYPE => "socket", "type";
    SOCK_SK_PROTOCOL => "sock", "sk_protocol";
    SOCK_SK_TYPE => "sock", "sk_type";
    SOCK_SKC_FAMILY => "sock", "__sk_common.skc_family";
    SOCK_SKC_RCV_SADDR => "sock", "__sk_common.skc_rcv_saddr";
    SOCK_SKC_V6_RCV_SADDR => "sock", "__sk_common.skc_v6_rcv_saddr";
    MSGHDR_MSG_NAME => "msghdr", "msg_name";
    MSGHDR_MSG_NAMELEN => "msghdr", "msg_namelen";
    TASK_STRUCT_TGID => "task_struct", "tgid";
    TASK_STRUCT_CGROUPS => "task_struct", "cgroups";
    TASK_STRUCT_REAL_PARENT => "task_struct", "real_parent";
    TASK_STRUCT_NSPROXY => "task_struct", "nsproxy";
    TASK_STRUCT_CRED => "task_struct", "cred";
    TASK_STRUCT_REAL_CRED => "task_struct", "real_cred";
    TASK_STRUCT_PID_LINKS => "task_struct", "pid_links";
    NSPROXY_MNT_NS => "nsproxy", "mnt_ns";
    PID_TASKS => "pid", "tasks";
    PROC_INODE_PID => "proc_inode", "pid";
    PROC_INODE_VFS_INODE => "proc_inode", "vfs_inode";
    CSS_SET_DFL_CGRP => "css_set", "dfl_cgrp";
    CGROUP_KN => "cgroup", "kn";
    CGROUP_ROOT => "cgroup", "root";
    CGROUP_ROOT_HIERARCHY_ID => "cgroup_root", "hierarchy_id";
    /// Called __parent in newer kernels (6.18 has it), where it is RCU-protected.
    KERNFS_NODE_PARENT => "kernfs_node", "parent|__parent";
    KERNFS_NODE_NAME => "kernfs_node", "name";
    KERNFS_NODE_ID => "kernfs_node", "id";
    UNIX_SOCK_ADDR => "unix_sock", "addr";
    UNIX_ADDRESS_LEN => "unix_address", "len";
    UNIX_ADDRESS_NAME => "unix_address", "name";
    IATTR_IA_VALID => "iattr", "ia_valid";
    VM_AREA_STRUCT_VM_FILE => "vm_area_struct", "vm_file";
    IO_RING_CTX_SQ_DATA => "io_ring_ctx", "sq_data";
    IO_SQ_DATA_THREAD => "io_sq_data", "thread";
    FILE_F_CRED => "file", "f_cred";
    SUPER_BLOCK_S_FS_INFO => "super_block", "s_fs_info";
    /// Since 6.6 overlayfs opens the files of its layers as backing files
    /// whose `f_path` is the layer's path; `user_path` is the overlay's.
    BACKING_FILE_USER_PATH => "?backing_file", "user_path";
    /// The credentials overlayfs works under on its layers (its mounter's).
    OVL_FS_CREATOR_CRED => "?overlay:ovl_fs", "creator_cred";
}

/// The offset of a field this kernel does not have (see [`OFFSET_FIELDS`]).
pub const OFFSET_ABSENT: u64 = u64::MAX;

/// `s_magic` of overlayfs (uapi `OVERLAYFS_SUPER_MAGIC`).
pub const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// Number of [`Off`] entries: the length of the `OFFSETS` global.
pub const OFFSET_COUNT: usize = OFFSET_FIELDS.len();

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, hold no pointers, and every bit pattern
    // is valid for them (enums are stored as plain integers).
    unsafe impl aya::Pod for super::PolicyInfo {}
    unsafe impl aya::Pod for super::PolicyEntry {}
    unsafe impl aya::Pod for super::AskKey {}
    unsafe impl aya::Pod for super::AskGrant {}
    unsafe impl aya::Pod for super::BindingKey {}
    unsafe impl aya::Pod for super::TargetKey {}
    unsafe impl aya::Pod for super::UnitKey {}
    unsafe impl aya::Pod for super::UnitTarget {}
    unsafe impl aya::Pod for super::NameKey {}
    unsafe impl aya::Pod for super::NameNode {}
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::FileRule {}
    unsafe impl aya::Pod for super::RuleSet {}
    unsafe impl aya::Pod for super::NetKey {}
    unsafe impl aya::Pod for super::NetRule {}
    unsafe impl aya::Pod for super::SocketKey {}
    unsafe impl aya::Pod for super::UnixKey {}
    unsafe impl aya::Pod for super::ProbeRequest {}
    unsafe impl aya::Pod for super::ProbeResult {}
}

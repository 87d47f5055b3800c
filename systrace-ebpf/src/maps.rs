//! The maps shared with the agent. Names and value types come from `systrace_common`.

use core::intrinsics::{atomic_xadd, atomic_xchg, AtomicOrdering};

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use systrace_common::{
    AskGrant, AskKey, BindingKey, Event, FileRule, InodeKey, NameKey, NameNode, NetKey, NetRule, PolicyEntry,
    ProbeRequest, ProbeResult, SocketKey, TargetKey, UnitKey, UnitTarget, UnixKey, COUNTER_SLOTS,
};

/// Upper bounds; the agent refuses policies that would not fit. Tables the
/// agent fills for a reload hold both halves while it switches.
pub const MAX_CGROUPS: u32 = 8192;
pub const MAX_NAME_RULES: u32 = 524_288;
pub const MAX_INODE_RULES: u32 = 65_536;
pub const MAX_TARGETS: u32 = 2048;
/// The event ring's size in the object; the agent sets the size it loads
/// with from the number of CPUs (`enforcer::ring_bytes`).
pub const EVENTS_BYTES: u32 = 4 << 20;
const NO_PREALLOC: u32 = 1;

#[map(name = "BINDINGS")]
pub static BINDINGS: HashMap<BindingKey, u32> = HashMap::with_max_entries(MAX_CGROUPS, 0);

#[map(name = "ACTIVE")]
pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "POLICIES")]
pub static POLICIES: Array<PolicyEntry> = Array::with_max_entries(systrace_common::POLICY_INDEXES, 0);

/// BPF_F_NO_PREALLOC: 100,000-rule policies should not cost memory for slots never used.
#[map(name = "NAME_RULES")]
pub static NAME_RULES: HashMap<NameKey, NameNode> = HashMap::with_max_entries(MAX_NAME_RULES, NO_PREALLOC);

#[map(name = "INODE_RULES")]
pub static INODE_RULES: HashMap<InodeKey, FileRule> = HashMap::with_max_entries(MAX_INODE_RULES, NO_PREALLOC);

#[map(name = "TARGETS")]
pub static TARGETS: HashMap<TargetKey, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map(name = "UNITS")]
pub static UNITS: HashMap<UnitKey, UnitTarget> = HashMap::with_max_entries(MAX_TARGETS, 0);

pub const MAX_NET_RULES: u32 = 16_384;

#[map(name = "NET_RULES")]
pub static NET_RULES: LpmTrie<NetKey, NetRule> = LpmTrie::with_max_entries(MAX_NET_RULES, 0);

pub const MAX_SOCKET_RULES: u32 = 4096;

/// Socket rules; the value is one of `systrace_common::rule_verdict`.
#[map(name = "SOCKET_RULES")]
pub static SOCKET_RULES: HashMap<SocketKey, u8> = HashMap::with_max_entries(MAX_SOCKET_RULES, 0);

pub const MAX_UNIX_RULES: u32 = 4096;

/// Unix socket peers by name; the value is one of `systrace_common::rule_verdict`.
#[map(name = "UNIX_RULES")]
pub static UNIX_RULES: HashMap<UnixKey, u8> = HashMap::with_max_entries(MAX_UNIX_RULES, 0);

/// The agent's process id (slot 0), set by the agent at start.
#[map(name = "AGENT")]
pub static AGENT: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "PROBE")]
pub static PROBE: Array<ProbeRequest> = Array::with_max_entries(1, 0);

#[map(name = "PROBE_RESULT")]
pub static PROBE_RESULT: Array<ProbeResult> = Array::with_max_entries(1, 0);

/// What a confined process may do with an open file, remembered per `struct
/// file` so that read() and write() cost one lookup (see `files::file_permission`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileCacheKey {
    pub file: u64,
    pub policy: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileCacheEntry {
    /// The file's dentry when the entry was made: a `struct file` freed and
    /// reused for another file does not inherit the entry.
    pub dentry: u64,
    /// Access bits allowed.
    pub granted: u32,
    pub _pad: u32,
}

#[map(name = "FILE_CACHE")]
pub static FILE_CACHE: LruHashMap<FileCacheKey, FileCacheEntry> = LruHashMap::with_max_entries(65_536, 0);

/// Creator credentials of overlays confined processes touched, and the
/// overlay's superblock (see `overlay`).
#[map(name = "OVERLAY_CREDS")]
pub static OVERLAY_CREDS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// "Permit once" answers (`exec --ask`), written by the agent for a held
/// system call; they expire by themselves.
#[map(name = "ASK_GRANTS")]
pub static ASK_GRANTS: HashMap<AskKey, AskGrant> = HashMap::with_max_entries(1024, 0);

/// Keys of what learning already reported ([`systrace_common::Mode::Learn`]):
/// a busy daemon repeats the same few accesses, and the ring carries each once.
/// An evicted key only costs a repeated report, which the agent drops.
#[map(name = "LEARNED")]
pub static LEARNED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16_384, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Per-CPU space to build an event in before copying it to the ring: too big for
/// the stack, and unlike a ring reservation it can be written from a loop callback.
/// A program preempted on this CPU may still hold it: `busy` says so.
#[repr(C)]
pub struct Scratch {
    pub busy: u64,
    pub event: Event,
}

#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[inline(always)]
pub fn count(counter: systrace_common::Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Atomic: a program preempted between a load and a store on this CPU
        // would otherwise lose the other's increment.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1) };
    }
}

/// The per-CPU scratch event, if no other program on this CPU holds it.
/// [`release_scratch`] gives it back.
#[inline(always)]
pub fn acquire_scratch() -> Option<*mut Event> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // An atomic exchange: a program preempted between a test and a set would
    // let two programs fill the same event.
    if unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(&raw mut (*scratch).busy, 1) } != 0 {
        count(systrace_common::Counter::ScratchBusy);
        return None;
    }
    Some(unsafe { &raw mut (*scratch).event })
}

#[inline(always)]
pub fn release_scratch() {
    if let Some(scratch) = SCRATCH.get_ptr_mut(0) {
        // A plain store: the program that set the flag is the only writer of 0,
        // and the JIT's stores are not reordered before the ring output.
        unsafe { core::ptr::write_volatile(&raw mut (*scratch).busy, 0) };
    }
}

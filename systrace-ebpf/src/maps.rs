//! The maps shared with the agent. Names and value types come from `systrace_common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
};
use systrace_common::{Event, FileKey, FileRule, NetKey, NetRule, PolicyInfo, SocketKey, UnixKey, COUNTER_SLOTS};

/// Upper bounds; the agent refuses policies that would not fit.
pub const MAX_CGROUPS: u32 = 4096;
pub const MAX_POLICIES: u32 = 4096;
pub const MAX_FILE_RULES: u32 = 262_144;
/// 8 MiB: about 24,000 events before the agent must drain.
pub const EVENTS_BYTES: u32 = 8 << 20;

#[map(name = "CGROUP_POLICY")]
pub static CGROUP_POLICY: HashMap<u64, u32> = HashMap::with_max_entries(MAX_CGROUPS, 0);

#[map(name = "POLICIES")]
pub static POLICIES: HashMap<u32, PolicyInfo> = HashMap::with_max_entries(MAX_POLICIES, 0);

/// BPF_F_NO_PREALLOC: 100,000-rule policies should not cost memory for slots never used.
#[map(name = "FILE_RULES")]
pub static FILE_RULES: HashMap<FileKey, FileRule> = HashMap::with_max_entries(MAX_FILE_RULES, 1);

pub const MAX_NET_RULES: u32 = 16_384;

#[map(name = "NET_RULES")]
pub static NET_RULES: LpmTrie<NetKey, NetRule> = LpmTrie::with_max_entries(MAX_NET_RULES, 0);

pub const MAX_SOCKET_RULES: u32 = 4096;

/// Socket creation rules; the value is one of `systrace_common::rule_verdict`.
#[map(name = "SOCKET_RULES")]
pub static SOCKET_RULES: HashMap<SocketKey, u8> = HashMap::with_max_entries(MAX_SOCKET_RULES, 0);

pub const MAX_UNIX_RULES: u32 = 4096;

/// Unix socket peers by name; the value is one of `systrace_common::rule_verdict`.
#[map(name = "UNIX_RULES")]
pub static UNIX_RULES: HashMap<UnixKey, u8> = HashMap::with_max_entries(MAX_UNIX_RULES, 0);

/// Room to build a [`UnixKey`] in: one per CPU, as it is large for the stack.
#[map(name = "UNIX_KEY")]
pub static UNIX_KEY: PerCpuArray<UnixKey> = PerCpuArray::with_max_entries(1, 0);

/// The agent's process id (slot 0), set by the agent at start.
#[map(name = "AGENT")]
pub static AGENT: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Per-CPU space to build an event in before copying it to the ring: too big for
/// the stack, and unlike a ring reservation it can be written from a loop callback.
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[inline(always)]
pub fn count(counter: systrace_common::Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot, and LSM programs do not nest on one CPU for one slot in a way
        // that matters for a statistic: a plain increment is enough.
        unsafe { *slot += 1 };
    }
}

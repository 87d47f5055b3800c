//! Which policy confines the current process: the binding of its cgroup, or of
//! its nearest ancestor cgroup that has one, in the half of the binding table
//! the agent has put in force.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::map,
    maps::PerCpuArray,
};
use systrace_common::{generation, policy_index, BindingKey, PolicyInfo};

use crate::{
    cache::{self, barrier},
    kernel::{self, TaskPtr},
    maps::{ACTIVE, BINDINGS, POLICIES},
    overlay,
};

/// Deeper cgroup trees than this are not searched for an ancestor's policy.
/// systemd nests services 3 to 5 levels deep.
pub const MAX_CGROUP_DEPTH: i32 = 32;

/// A process under a policy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Subject {
    pub cgroup_id: u64,
    /// The bound cgroup the policy was found at: the process's own or an
    /// ancestor. "Inside" for signals and ptrace means this cgroup or below.
    pub anchor: u64,
    pub policy: u32,
    pub info: PolicyInfo,
}

/// The half of the binding tables in force.
#[inline(always)]
pub fn active_half() -> u32 {
    ACTIVE.get(0).copied().unwrap_or(0) & 1
}

/// The policy of the current cgroup, or of its nearest ancestor that has one;
/// none while overlayfs works on its layers for an operation already decided
/// (see [`crate::overlay`]).
///
/// Every hook of every process asks this first, most of them unconfined, so
/// which binding applies to a cgroup is remembered per CPU for the cgroups
/// whose processes ran there last ([`SUBJECTS`]): one helper call and one slot
/// read instead of a hash lookup per cgroup level. That answer changes only
/// when the bindings in force change, and whatever changes them bumps the
/// subject generation afterwards (the agent around a switch of halves; the
/// rename tracepoint, which binds and unbinds cgroups that may hold
/// processes): an answer is used
/// only under the generation and half read before it was looked up. Cgroup
/// ids are never reused. The policy's settings are still read from
/// `POLICIES` (an array lookup the kernel inlines; confined processes only).
///
/// All of it inline, in scalars: a call of its own would make the subject
/// live in the caller's stack frame for the whole program, and the deepest
/// programs have no bytes to spare under 6.1's 512-byte bound.
#[inline(always)]
pub fn current_subject() -> Option<Subject> {
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // Read before the lookups whose answer they will stamp: a change made
    // after these reads bumps the generation past the stamp.
    let half = active_half();
    let generation = cache::generation_of(generation::SUBJECTS)
        .wrapping_add(cache::generation_of(generation::SUBJECTS_AGENT))
        ^ (half as u64) << 63;
    let (mut anchor, mut policy) = recall(cgroup_id, generation);
    if policy == MISSED {
        (anchor, policy) = match unsafe { BINDINGS.get(&BindingKey { half, _pad: 0, cgroup_id }) } {
            Some(policy) => (cgroup_id, *policy as u64),
            None => nearest_ancestor_binding(half, cgroup_id),
        };
        remember(cgroup_id, generation, anchor, policy);
    }
    if policy == NO_POLICY {
        return None;
    }
    let policy = policy as u32;
    // Before the settings are read: the call would make them be kept across
    // it, copied once more on the stack.
    if overlay::acting_for_overlay() {
        return None;
    }
    let entry = POLICIES.get(policy_index(policy))?;
    if entry.slot != policy {
        // Removed (a program that looked its binding up before a reload).
        return None;
    }
    Some(Subject { cgroup_id, anchor, policy, info: entry.info })
}

/// Slots per CPU: a power of two.
const SUBJECT_SLOTS: u32 = 64;

/// Which binding applies to one cgroup, and the subject generation it was
/// looked up under.
#[repr(C)]
pub struct SubjectSlot {
    busy: u64,
    /// Odd while a writer fills the slot.
    seq: u64,
    cgroup_id: u64,
    /// The subject generation (the sum of the kernel's and the agent's parts,
    /// 64 bits: no wrap in this machine's lifetime, though every cgroup rename
    /// anywhere bumps it), and the half of the bindings in force at bit 63.
    generation: u64,
    anchor: u64,
    /// The policy slot, or [`NO_POLICY`] for an unconfined cgroup.
    policy: u64,
}

#[map(name = "SUBJECTS")]
static SUBJECTS: PerCpuArray<SubjectSlot> = PerCpuArray::with_max_entries(SUBJECT_SLOTS, 0);

/// What [`recall`] returns for a cgroup it holds no answer for.
const MISSED: u64 = u64::MAX - 1;

#[inline(always)]
fn subject_index(cgroup_id: u64) -> u32 {
    (cgroup_id ^ (cgroup_id >> 6) ^ (cgroup_id >> 12)) as u32 & (SUBJECT_SLOTS - 1)
}

/// The remembered (anchor, policy) of `cgroup_id` under `generation`; the
/// policy is [`MISSED`] when there is none. Per CPU, so only a program
/// preempted on this CPU can write the slot meanwhile: the slot's sequence
/// must be even and the same before and after the copy (as in the walk cache).
#[inline(always)]
fn recall(cgroup_id: u64, generation: u64) -> (u64, u64) {
    let Some(slot) = SUBJECTS.get_ptr_mut(subject_index(cgroup_id)) else {
        return (0, MISSED);
    };
    unsafe {
        let before = core::ptr::read_volatile(&raw const (*slot).seq);
        barrier();
        if before & 1 != 0
            || core::ptr::read_volatile(&raw const (*slot).cgroup_id) != cgroup_id
            || core::ptr::read_volatile(&raw const (*slot).generation) != generation
        {
            return (0, MISSED);
        }
        let anchor = core::ptr::read_volatile(&raw const (*slot).anchor);
        let policy = core::ptr::read_volatile(&raw const (*slot).policy);
        barrier();
        if core::ptr::read_volatile(&raw const (*slot).seq) != before {
            return (0, MISSED);
        }
        (anchor, policy)
    }
}

/// Remembers (anchor, policy) for `cgroup_id`, looked up under `generation`,
/// unless another program on this CPU is writing the slot.
#[inline(always)]
fn remember(cgroup_id: u64, generation: u64, anchor: u64, policy: u64) {
    let Some(slot) = SUBJECTS.get_ptr_mut(subject_index(cgroup_id)) else {
        return;
    };
    unsafe {
        cache::write_slot(&raw mut (*slot).busy, &raw mut (*slot).seq, || {
            core::ptr::write_volatile(&raw mut (*slot).cgroup_id, cgroup_id);
            core::ptr::write_volatile(&raw mut (*slot).generation, generation);
            core::ptr::write_volatile(&raw mut (*slot).anchor, anchor);
            core::ptr::write_volatile(&raw mut (*slot).policy, policy);
        });
    }
}

/// After a cgroup tracepoint bound a cgroup (made with processes in it, by a
/// rename): remembered answers are stale.
#[inline(always)]
pub fn bindings_changed() {
    cache::bump_generation(generation::SUBJECTS);
}

/// Walks from the top down to the parent of `current`; the last hit is the
/// nearest: (anchor, policy), the policy [`NO_POLICY`] when none is bound.
/// Level 0, the root cgroup, is skipped: the agent refuses policies for it.
#[inline(always)]
fn nearest_ancestor_binding(half: u32, current: u64) -> (u64, u64) {
    // Plain integers, not an Option carried through the loop: a `None` has an
    // undefined payload, which LLVM may spill from whatever register is at hand,
    // and the verifier refuses to let a program read an uninitialized register.
    let mut found: u64 = NO_POLICY;
    let mut anchor: u64 = 0;
    for level in 1..MAX_CGROUP_DEPTH {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 || id == current {
            break;
        }
        if let Some(policy) = unsafe { BINDINGS.get(&BindingKey { half, _pad: 0, cgroup_id: id }) } {
            found = *policy as u64;
            anchor = id;
        }
    }
    (anchor, found)
}

/// Above every policy slot (a u32): no policy binds the cgroup.
const NO_POLICY: u64 = u64::MAX;

/// Whether the cgroup whose kernfs node is `kn` is `anchor` or below it.
#[inline(always)]
pub fn cgroup_inside(anchor: u64, mut kn: *const u8) -> Result<bool, i64> {
    for _ in 0..MAX_CGROUP_DEPTH {
        if kn.is_null() {
            return Ok(false);
        }
        let (id, parent) = unsafe { kernel::kernfs_node(kn)? };
        if id == anchor {
            return Ok(true);
        }
        kn = parent;
    }
    Ok(false)
}

/// Whether `task` runs in the subject's bound cgroup or below it.
#[inline(always)]
pub fn task_inside(subject: &Subject, task: TaskPtr) -> Result<bool, i64> {
    cgroup_inside(subject.anchor, unsafe { kernel::task_cgroup_node(task)? })
}

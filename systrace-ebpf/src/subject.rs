//! Which policy confines the current process: the binding of its cgroup, or of
//! its nearest ancestor cgroup that has one, in the half of the binding table
//! the agent has put in force.

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id};
use systrace_common::{BindingKey, PolicyInfo};

use crate::{
    kernel::{self, TaskPtr},
    overlay,
    maps::{ACTIVE, BINDINGS, POLICIES},
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
#[inline(always)]
pub fn current_subject() -> Option<Subject> {
    let half = active_half();
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let (anchor, policy) = match unsafe { BINDINGS.get(&BindingKey { half, _pad: 0, cgroup_id }) } {
        Some(policy) => (cgroup_id, *policy),
        None => nearest_ancestor_binding(half, cgroup_id)?,
    };
    let info = *unsafe { POLICIES.get(&policy) }?;
    if overlay::acting_for_overlay() {
        return None;
    }
    Some(Subject { cgroup_id, anchor, policy, info })
}

/// Walks from the top down to the parent of `current`; the last hit is the nearest.
/// Level 0, the root cgroup, is skipped: the agent refuses policies for it.
#[inline(always)]
fn nearest_ancestor_binding(half: u32, current: u64) -> Option<(u64, u32)> {
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
    if found == NO_POLICY {
        None
    } else {
        Some((anchor, found as u32))
    }
}

/// Above every policy slot (a u32).
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

//! Binding cgroups to policies as they appear, before any process can run in
//! them: a systemd unit's cgroup is removed and made anew on every restart, with
//! a new id. BTF tracepoints on cgroup creation, renaming and removal look the
//! new path up among the targets the agent wrote (`TARGETS` by path, `UNITS` by
//! the unit's name wherever its slice puts it) in both halves of the binding
//! table. The tracepoint fires before the new directory is made visible
//! (`kernfs_activate`), so no process can be moved in before the binding exists.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use systrace_common::{unit_kind, BindingKey, Counter, TargetKey, UnitKey, CGROUP_PATH_LEN, UNIT_NAME_LEN};

use crate::{
    decision::report_bound,
    kernel,
    maps::{count, BINDINGS, TARGETS, UNITS},
    subject::active_half,
};

/// Levels above a unit's cgroup searched for its manager (`user@UID.service`).
const MANAGER_DEPTH: u32 = 16;
/// Above every policy slot.
const NONE: u64 = u64::MAX;

#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    let cgrp: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    let _ = unsafe { appeared(cgrp, path) };
    0
}

#[btf_tracepoint(function = "cgroup_rename")]
pub fn cgroup_rename(ctx: BtfTracePointContext) -> i32 {
    let cgrp: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    // Bindings follow the path: the old name's go, the new name's come.
    if let Ok(Some((id, _))) = unsafe { v2_cgroup(cgrp) } {
        unbind(id);
    }
    let _ = unsafe { appeared(cgrp, path) };
    0
}

#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    let cgrp: *const u8 = ctx.arg(0);
    if let Ok(Some((id, _))) = unsafe { v2_cgroup(cgrp) } {
        unbind(id);
    }
    0
}

/// (id, kernfs node) of a cgroup of the v2 hierarchy; `None` for v1 ones.
#[inline(always)]
unsafe fn v2_cgroup(cgrp: *const u8) -> Result<Option<(u64, *const u8)>, i64> {
    let (kn, hierarchy) = kernel::cgroup_kn_and_hierarchy(cgrp)?;
    if hierarchy != 0 {
        return Ok(None);
    }
    Ok(Some((kernel::kernfs_node(kn)?.0, kn)))
}

#[inline(always)]
fn unbind(id: u64) {
    for half in 0..2u32 {
        let _ = BINDINGS.remove(&BindingKey { half, _pad: 0, cgroup_id: id });
    }
}

#[inline(always)]
unsafe fn appeared(cgrp: *const u8, path: *const u8) -> Result<(), i64> {
    let Some((id, kn)) = v2_cgroup(cgrp)? else {
        return Ok(());
    };
    let active = active_half();
    let mut bound_active = NONE;
    for half in 0..2u32 {
        let mut slot = target_slot(half, path);
        if slot == NONE {
            slot = unit_slot(half, kn);
        }
        if slot != NONE {
            let _ = BINDINGS.insert(&BindingKey { half, _pad: 0, cgroup_id: id }, &(slot as u32), 0);
            if half == active {
                bound_active = slot;
            }
        }
    }
    if bound_active != NONE {
        count(Counter::CgroupsBound);
        report_bound(bound_active as u32, id);
    }
    Ok(())
}

/// The slot of the policy naming this cgroup path in `half`, or [`NONE`].
#[inline(never)]
fn target_slot(half: u32, path: *const u8) -> u64 {
    let mut key = TargetKey { half, path: [0; CGROUP_PATH_LEN] };
    match unsafe { bpf_probe_read_kernel_str_bytes(path, &mut key.path) } {
        // A path that filled the buffer may be longer than any target.
        Ok(read) if read.len() < CGROUP_PATH_LEN - 1 => {}
        _ => return NONE,
    }
    match unsafe { TARGETS.get(&key) } {
        Some(slot) => *slot as u64,
        None => NONE,
    }
}

/// The slot of the unit policy naming this cgroup's leaf in `half`, or [`NONE`].
#[inline(never)]
fn unit_slot(half: u32, kn: *const u8) -> u64 {
    let mut key = UnitKey { half, name: [0; UNIT_NAME_LEN] };
    let Ok(name) = (unsafe { kernel::kernfs_name(kn) }) else {
        return NONE;
    };
    match unsafe { bpf_probe_read_kernel_str_bytes(name, &mut key.name) } {
        Ok(read) if read.len() < UNIT_NAME_LEN - 1 => {}
        _ => return NONE,
    }
    let Some(target) = (unsafe { UNITS.get(&key) }) else {
        return NONE;
    };
    let (slot, kind, manager) = (target.slot, target.kind, target.manager);
    let found = unsafe { manager_above(kn, &manager) };
    let wanted = match kind {
        unit_kind::SYSTEM => found == MANAGER_NONE,
        _ => found == MANAGER_MATCH,
    };
    if wanted {
        slot as u64
    } else {
        NONE
    }
}

const MANAGER_NONE: u32 = 0;
const MANAGER_MATCH: u32 = 1;
const MANAGER_OTHER: u32 = 2;

/// Looks above `kn` for a user manager's cgroup (`user@*.service`): none, the
/// one `manager` names (any, if `manager` is empty), or another.
#[inline(always)]
unsafe fn manager_above(kn: *const u8, manager: &[u8; 32]) -> u32 {
    let Ok((_, mut node)) = kernel::kernfs_node(kn) else {
        return MANAGER_OTHER;
    };
    for _ in 0..MANAGER_DEPTH {
        if node.is_null() {
            return MANAGER_NONE;
        }
        let mut name = [0u8; 32];
        let Ok(n) = kernel::kernfs_name(node) else {
            return MANAGER_OTHER;
        };
        if bpf_probe_read_kernel_str_bytes(n, &mut name).is_err() {
            return MANAGER_OTHER;
        }
        if name[..5] == *b"user@" {
            return if manager[0] == 0 || name == *manager { MANAGER_MATCH } else { MANAGER_OTHER };
        }
        node = match kernel::kernfs_node(node) {
            Ok((_, parent)) => parent,
            Err(_) => return MANAGER_OTHER,
        };
    }
    MANAGER_NONE
}

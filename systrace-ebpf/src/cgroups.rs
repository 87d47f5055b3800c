//! Binding cgroups to policies as they appear, before any process can run in
//! them: a systemd unit's cgroup is removed and made anew on every restart, with
//! a new id. BTF tracepoints on cgroup creation, renaming and removal look the
//! new path up among the targets the agent wrote (`TARGETS` by path, `UNITS` by
//! the unit's name wherever its slice puts it) in both halves of the binding
//! table. The tracepoint fires before the new directory is made visible
//! (`kernfs_activate`), so no process can be moved in before the binding exists.
//! Cgroups made by confined processes are never bound: they stay under their
//! maker's policy.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel_str_bytes},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use systrace_common::{unit_kind, BindingKey, Counter, TargetKey, UnitKey, CGROUP_PATH_LEN, UNIT_NAME_LEN};

use crate::{
    decision::report_bound,
    kernel,
    maps::{count, BINDINGS, TARGETS, UNITS},
    subject::{active_half, bindings_changed, current_subject},
};

/// Levels above a unit's cgroup searched for its manager (`user@UID.service`).
const MANAGER_DEPTH: u32 = 16;
/// Above every policy slot.
const NONE: u64 = u64::MAX;

#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    let cgrp: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    // A new cgroup's id was never looked up; no other answer changes.
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
    bindings_changed();
    0
}

#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    let cgrp: *const u8 = ctx.arg(0);
    if let Ok(Some((id, _))) = unsafe { v2_cgroup(cgrp) } {
        unbind(id);
    }
    // An empty cgroup whose id is never used again: no answer to forget.
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
    if current_subject().is_some() && !user_manager() {
        // Made (or renamed) by a confined process, inside its own cgroup (the
        // cgroup protection refuses anywhere else): it stays under the policy
        // that confines its maker. Binding it by its name would let the
        // process pick a laxer policy, or fill the table with decoys. A
        // user's systemd, confined with the user's session, still makes the
        // user's units.
        return Ok(());
    }
    let active = active_half();
    let mut bound_active = NONE;
    let mut failed = false;
    for half in 0..2u32 {
        let mut slot = target_slot(half, path);
        if slot == NONE {
            slot = unit_slot(half, kn);
        }
        if slot != NONE {
            if BINDINGS.insert(&BindingKey { half, _pad: 0, cgroup_id: id }, &(slot as u32), 0).is_err() {
                failed = true;
            } else if half == active {
                bound_active = slot;
            }
        }
    }
    if failed {
        count(Counter::BindFailed);
    }
    if bound_active != NONE {
        count(Counter::CgroupsBound);
        report_bound(bound_active as u32, id);
    }
    Ok(())
}

/// Whether the current process is a user's systemd: it runs in
/// `user@UID.service/init.scope`, where nothing else runs.
#[inline(never)]
fn user_manager() -> bool {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Ok(kn) = (unsafe { kernel::task_cgroup_node(task) }) else {
        return false;
    };
    let mut name = [0u8; 16];
    match unsafe { kernel::kernfs_name(kn) } {
        Ok(n) if unsafe { bpf_probe_read_kernel_str_bytes(n, &mut name) }.is_ok() => {}
        _ => return false,
    }
    if name[..11] != *b"init.scope\0" {
        return false;
    }
    let Ok((_, parent)) = (unsafe { kernel::kernfs_node(kn) }) else {
        return false;
    };
    if parent.is_null() {
        return false;
    }
    let mut above = [0u8; 8];
    match unsafe { kernel::kernfs_name(parent) } {
        Ok(n) => unsafe { bpf_probe_read_kernel_str_bytes(n, &mut above) }.is_ok() && above[..5] == *b"user@",
        Err(_) => false,
    }
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

/// Whether the `len` bytes at the start of `name` end in `.slice`.
#[inline(always)]
fn is_slice(name: &[u8; 64], len: usize) -> bool {
    if !(6..64).contains(&len) {
        return false;
    }
    // Gathered into one word and compared once: a branch per byte would
    // multiply the states the verifier walks through.
    let at = len - 6;
    let mut tail: u64 = 0;
    for i in 0..6 {
        tail |= (name[(at + i) & 63] as u64) << (8 * i);
    }
    tail == u64::from_le_bytes(*b".slice\0\0")
}

/// Whether the first 32 bytes of `name` are `manager` (NUL-padded, so a
/// longer name differs at the padding).
#[inline(always)]
fn same_manager(name: &[u8; 64], manager: &[u8; 32]) -> bool {
    let mut diff: u64 = 0;
    for i in 0..4 {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&name[i * 8..i * 8 + 8]);
        b.copy_from_slice(&manager[i * 8..i * 8 + 8]);
        diff |= u64::from_ne_bytes(a) ^ u64::from_ne_bytes(b);
    }
    diff == 0
}

/// Looks above `kn` for a user manager's cgroup (`user@*.service`): none, the
/// one `manager` names (any, if `manager` is empty), or another. systemd puts
/// units directly in slices (or in a user manager's tree): a unit name found
/// below anything else (a directory a delegated service made inside itself)
/// counts as another manager's, and is not bound.
#[inline(always)]
unsafe fn manager_above(kn: *const u8, manager: &[u8; 32]) -> u32 {
    let Ok((_, mut node)) = kernel::kernfs_node(kn) else {
        return MANAGER_OTHER;
    };
    for _ in 0..MANAGER_DEPTH {
        if node.is_null() {
            return MANAGER_NONE;
        }
        let mut name = [0u8; 64];
        let Ok(n) = kernel::kernfs_name(node) else {
            return MANAGER_OTHER;
        };
        let Ok(read) = bpf_probe_read_kernel_str_bytes(n, &mut name) else {
            return MANAGER_OTHER;
        };
        let len = read.len();
        if name[..5] == *b"user@" {
            return if manager[0] == 0 || same_manager(&name, manager) { MANAGER_MATCH } else { MANAGER_OTHER };
        }
        let root = match kernel::kernfs_node(node) {
            Ok((_, parent)) => parent.is_null(),
            Err(_) => return MANAGER_OTHER,
        };
        if !root && !is_slice(&name, len) {
            return MANAGER_OTHER;
        }
        node = match kernel::kernfs_node(node) {
            Ok((_, parent)) => parent,
            Err(_) => return MANAGER_OTHER,
        };
    }
    MANAGER_NONE
}

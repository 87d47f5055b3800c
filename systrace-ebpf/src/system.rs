//! System-wide hooks a confined process has no business calling: bpf(), mounts
//! and kernel module loading. Each is one self-protection bit a policy can
//! switch off (a container runtime under confinement needs mounts, say).

use systrace_common::{protect, Hook};

use crate::{
    decision::forbid_current,
    hook::{arg, lsm_program},
};

/// `kernel_read_file_id` / `kernel_load_data_id` value for firmware, which
/// drivers load on behalf of whatever process touched the device.
const FIRMWARE: u32 = 1;

lsm_program!(
    /// Any bpf() command: a confined process could otherwise find the agent's
    /// links and detach them, or read its maps.
    bpf = "bpf", Hook::Bpf, |ctx| {
    let cmd: i32 = arg(&ctx, Hook::Bpf, 0);
    forbid_current(Hook::Bpf, protect::BPF, cmd as u32)
});

lsm_program!(
    /// mount(2), including bind mounts and remounts: a bind mount could show a
    /// denied tree under an allowed name, or cover the agent's pins.
    sb_mount = "sb_mount", Hook::SbMount, |ctx| {
    let flags: u64 = arg(&ctx, Hook::SbMount, 0);
    forbid_current(Hook::SbMount, protect::MOUNT, flags as u32)
});

lsm_program!(
    /// The new mount API's attach step (fsmount, open_tree then move_mount).
    move_mount = "move_mount", Hook::MoveMount, |_ctx| forbid_current(Hook::MoveMount, protect::MOUNT, 0));

lsm_program!(sb_umount = "sb_umount", Hook::SbUmount, |ctx| {
    let flags: i32 = arg(&ctx, Hook::SbUmount, 0);
    forbid_current(Hook::SbUmount, protect::MOUNT, flags as u32)
});

lsm_program!(
    /// pivot_root(2) changes what the root of the namespace is, and with it every
    /// path the rules match.
    sb_pivotroot = "sb_pivotroot", Hook::SbPivotroot, |_ctx| {
    forbid_current(Hook::SbPivotroot, protect::MOUNT, 0)
});

lsm_program!(
    /// On-demand loading (`request_module`), e.g. by socket() of a family whose
    /// module is not loaded yet: the socket call then fails as unsupported.
    kernel_module_request = "kernel_module_request", Hook::KernelModuleRequest, |_ctx| {
    forbid_current(Hook::KernelModuleRequest, protect::MODULE, 0)
});

lsm_program!(
    /// init_module(2) and kexec_load(2) hand the kernel a buffer.
    kernel_load_data = "kernel_load_data", Hook::KernelLoadData, |ctx| {
    let id: u32 = arg(&ctx, Hook::KernelLoadData, 0);
    if id == FIRMWARE {
        return 0;
    }
    forbid_current(Hook::KernelLoadData, protect::MODULE, id)
});

lsm_program!(
    /// finit_module(2) and kexec_file_load(2) hand the kernel a file.
    kernel_read_file = "kernel_read_file", Hook::KernelReadFile, |ctx| {
    let id: u32 = arg(&ctx, Hook::KernelReadFile, 0);
    if id == FIRMWARE {
        return 0;
    }
    forbid_current(Hook::KernelReadFile, protect::MODULE, id)
});

//! System-wide hooks a confined process has no business calling: bpf(), mounts
//! and kernel module loading. Each is one self-protection bit a policy can
//! switch off (a container runtime under confinement needs mounts, say).

use aya_ebpf::{macros::lsm, programs::LsmContext};
use systrace_common::{protect, Hook};

use crate::{
    decision::forbid_current,
    hook::previous_verdict,
};

/// `kernel_read_file_id` / `kernel_load_data_id` value for firmware, which
/// drivers load on behalf of whatever process touched the device.
const FIRMWARE: u32 = 1;

/// Any bpf() command: a confined process could otherwise find the agent's
/// links and detach them, or read its maps.
#[lsm(hook = "bpf")]
#[inline(always)]
pub fn bpf(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_BPF) {
        0 => {
            let cmd: i32 = ctx.arg(0);
            forbid_current(Hook::Bpf, protect::BPF, cmd as u32)
        }
        previous => previous,
    }
}

/// mount(2), including bind mounts and remounts: a bind mount could hide a
/// denied tree under an allowed one's name, or cover the agent's pins.
#[lsm(hook = "sb_mount")]
#[inline(always)]
pub fn sb_mount(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_SB_MOUNT) {
        0 => {
            let flags: u64 = ctx.arg(3);
            forbid_current(Hook::SbMount, protect::MOUNT, flags as u32)
        }
        previous => previous,
    }
}

/// The new mount API's attach step (fsmount, open_tree then move_mount).
#[lsm(hook = "move_mount")]
#[inline(always)]
pub fn move_mount(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_MOVE_MOUNT) {
        0 => forbid_current(Hook::MoveMount, protect::MOUNT, 0),
        previous => previous,
    }
}

#[lsm(hook = "sb_umount")]
#[inline(always)]
pub fn sb_umount(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_SB_UMOUNT) {
        0 => {
            let flags: i32 = ctx.arg(1);
            forbid_current(Hook::SbUmount, protect::MOUNT, flags as u32)
        }
        previous => previous,
    }
}

/// On-demand loading (`request_module`), e.g. by socket() of a family whose
/// module is not loaded yet: the socket call then fails as unsupported.
#[lsm(hook = "kernel_module_request")]
#[inline(always)]
pub fn kernel_module_request(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_KERNEL_MODULE_REQUEST) {
        0 => forbid_current(Hook::KernelModuleRequest, protect::MODULE, 0),
        previous => previous,
    }
}

/// init_module(2) and kexec_load(2) hand the kernel a buffer.
#[lsm(hook = "kernel_load_data")]
#[inline(always)]
pub fn kernel_load_data(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_KERNEL_LOAD_DATA) {
        0 => {
            let id: u32 = ctx.arg(0);
            if id == FIRMWARE {
                return 0;
            }
            forbid_current(Hook::KernelLoadData, protect::MODULE, id)
        }
        previous => previous,
    }
}

/// finit_module(2) and kexec_file_load(2) hand the kernel a file.
#[lsm(hook = "kernel_read_file")]
#[inline(always)]
pub fn kernel_read_file(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_KERNEL_READ_FILE) {
        0 => {
            let id: u32 = ctx.arg(1);
            if id == FIRMWARE {
                return 0;
            }
            forbid_current(Hook::KernelReadFile, protect::MODULE, id)
        }
        previous => previous,
    }
}

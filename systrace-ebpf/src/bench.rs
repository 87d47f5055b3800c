//! Programs that do nothing, attached by the benchmark in place of the real
//! ones to measure the floor: what any BPF LSM program on `file_open`, on
//! `file_permission` (every read and write) and on `inode_permission` (every
//! path component looked up) costs (the trampoline, entering and leaving the
//! program). The agent never attaches them otherwise.

use aya_ebpf::{macros::lsm, programs::LsmContext};

#[lsm(hook = "file_open")]
#[inline(always)]
pub fn bench_noop_file_open(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "file_permission")]
#[inline(always)]
pub fn bench_noop_file_permission(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_permission")]
#[inline(always)]
pub fn bench_noop_inode_permission(_ctx: LsmContext) -> i32 {
    0
}

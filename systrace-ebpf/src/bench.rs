//! A program that does nothing, attached by the benchmark in place of the real
//! ones to measure the floor: what any BPF LSM program on `file_open` costs
//! (the trampoline, entering and leaving the program). The agent never attaches
//! it otherwise.

use aya_ebpf::{macros::lsm, programs::LsmContext};

#[lsm(hook = "file_open")]
#[inline(always)]
pub fn bench_noop_file_open(_ctx: LsmContext) -> i32 {
    0
}

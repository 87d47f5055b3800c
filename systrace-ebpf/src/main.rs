//! systrace's BPF LSM programs.
//!
//! Each hook family lives in its own module; they share the subject lookup
//! ([`subject`]), the file rules' walk ([`walk`]) and the verdict and report
//! ([`decision`]). Struct offsets and argument positions come from the running
//! kernel's BTF through [`kernel`], never from compiled-in layouts.
#![no_std]
#![no_main]
// Atomic read-modify-write on map memory: the bpf target offers no atomic types.
#![allow(internal_features)]
#![feature(core_intrinsics, asm_experimental_arch)]

mod attrs;
mod bench;
mod cache;
mod cgroups;
mod decision;
mod dirs;
mod exec;
mod files;
mod guard;
mod hook;
mod kernel;
mod maps;
mod network;
mod overlay;
mod probe;
mod process;
mod subject;
mod system;
mod unix;
mod walk;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

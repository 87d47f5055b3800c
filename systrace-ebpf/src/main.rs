//! systrace's BPF LSM programs.
//!
//! Each hook family lives in its own module and calls the one decision path in
//! [`decision`]: find the policy that confines the current cgroup, look up the rule,
//! apply the verdict, report. Struct offsets come from the running kernel's BTF
//! through [`kernel`], never from compiled-in layouts.
#![no_std]
#![no_main]

mod bench;
mod decision;
mod dirs;
mod exec;
mod files;
mod guard;
mod hook;
mod kernel;
mod maps;
mod network;
mod process;
mod system;
mod unix;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

//! Functions the verifier checks once, on their own, instead of at every call
//! site (BPF "global functions"): bpf-linker keeps them global only when told.
fn main() {
    for symbol in [
        "systrace_walk",
        "systrace_check_file",
        "systrace_report_file",
        "systrace_guard_open",
        "systrace_guard_dir",
        "systrace_new_name",
        "systrace_permission",
    ] {
        println!("cargo:rustc-link-arg-bins=--export={symbol}");
    }
}

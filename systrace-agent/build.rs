//! Builds the eBPF object (`systrace-ebpf`, for bpfel-unknown-none, with the nightly
//! toolchain and bpf-linker) so the agent can embed it. `cargo xtask` installs that
//! toolchain first; see the README.
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let workspace = std::path::Path::new(&manifest_dir).parent().expect("agent lives in the workspace");
    let ebpf_dir = workspace.join("systrace-ebpf");
    // The eBPF crate also compiles the shared types: rebuild when they change.
    println!("cargo:rerun-if-changed={}", workspace.join("systrace-common").display());
    let ebpf_dir = ebpf_dir.to_str().expect("workspace path is UTF-8");
    aya_build::build_ebpf(
        [aya_build::Package { name: "systrace-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}

//! Builds the eBPF object (`systrace-ebpf`, for bpfel-unknown-none, with the nightly
//! toolchain and bpf-linker) so the agent can embed it. `cargo xtask` installs that
//! toolchain first and says when it builds; see the README.
//!
//! The nested cargo's output is kept back: a build script can show it only as
//! `warning:` lines, and a newcomer's first build would show some fifty of them
//! for crates compiling normally. What is shown is what needs reading: compiler
//! diagnostics, and on failure everything.

use std::{env, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

const PACKAGE: &str = "systrace-ebpf";
const TARGET: &str = "bpfel-unknown-none";
/// The program file the eBPF crate builds, which the agent embeds from `OUT_DIR`.
const OBJECT: &str = "systrace";

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("the agent lives in the workspace")?;
    for dir in [PACKAGE, "systrace-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // aya-ebpf reads the architecture of the kernel the programs run on.
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let rustflags = [format!("--cfg=bpf_target_arch=\"{arch}\""), "-Cdebuginfo=2".into(), "-Clink-arg=--btf".into()];
    // Apart from OUT_DIR's own files, and apart from the outer cargo's target
    // directory (which the outer cargo holds locked).
    let target_dir = out_dir.join("aya-build").join("target").join(PACKAGE);
    let output = cargo_nightly()
        .current_dir(workspace)
        .args(["build", "--package", PACKAGE, "--bins", "--release", "--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        // The outer build's compiler is not the nightly one.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .context("running cargo for the eBPF programs (is rustup installed? `cargo xtask setup` installs it)")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        for line in stderr.lines() {
            println!("cargo:warning={line}");
        }
        bail!("building {PACKAGE} for {TARGET} failed ({}); its output is above", output.status);
    }
    for line in diagnostics(&stderr) {
        println!("cargo:warning={line}");
    }
    let built = target_dir.join(TARGET).join("release").join(OBJECT);
    std::fs::copy(&built, out_dir.join(OBJECT)).with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}

/// cargo run under rustup's nightly toolchain (bpf-linker and `-Z build-std` need it).
fn cargo_nightly() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]);
    cmd
}

/// The lines of cargo's output that are not its progress (`Compiling x`,
/// `Finished ...`, downloads, locks): the compiler's diagnostics.
fn diagnostics(stderr: &str) -> impl Iterator<Item = &str> {
    const PROGRESS: &[&str] = &[
        "Compiling",
        "Finished",
        "Updating",
        "Downloading",
        "Downloaded",
        "Blocking",
        "Locking",
        "Adding",
        "Fresh",
        "Checking",
    ];
    stderr.lines().filter(|line| {
        let first = line.split_whitespace().next().unwrap_or("");
        !line.trim().is_empty() && !PROGRESS.contains(&first)
    })
}

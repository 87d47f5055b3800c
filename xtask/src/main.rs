//! `cargo xtask`: every build, run and test step of systrace.
//!
//! - `cargo xtask demo`: installs what is missing, builds, boots the Debian 6.12
//!   kernel in QEMU, and shows the agent confining a workload.
//! - `cargo xtask test`: host unit tests, then the VM suite on every kernel of
//!   the matrix (Debian 12's 6.1, Debian 13's 6.12, Debian unstable's and
//!   trixie-backports' newest).
//! - `cargo xtask setup` / `build`: the first steps of the above, on their own.

mod bench;
mod matrix;
mod plan;
mod setup;
mod vm;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the Debian packages, rust-src and bpf-linker this project needs.
    Setup,
    /// Build the agent (with its embedded eBPF object) and the VM test binary, release.
    Build,
    /// Host unit tests, then the end-to-end suite in a VM on each kernel.
    Test {
        /// Only this kernel (6.1, 6.12, unstable, backports); default: all four.
        #[arg(long)]
        kernel: Option<String>,
        /// Skip the host unit tests.
        #[arg(long)]
        vm_only: bool,
        /// Only this VM scenario (suite, lang, bypass, living, learning, refusal, systemd).
        #[arg(long)]
        scenario: Option<String>,
        /// Minutes the whole run may take, setup and build included: boots
        /// run in the order of what they prove (see xtask/src/plan.rs) and one
        /// expected to end past the budget is skipped and reported; 0: none.
        #[arg(long, default_value_t = 75)]
        budget: u64,
    },
    /// Enforcement overhead, measured side by side in one VM run per kernel.
    Bench {
        /// Only this kernel (6.1, 6.12, unstable, backports); default: all four.
        #[arg(long)]
        kernel: Option<String>,
    },
    /// Run a shell command in a VM that has the agent and systrace-vmtest installed.
    Vm {
        /// Kernel to boot (6.1, 6.12, unstable, backports).
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// One vCPU in QEMU's icount mode, as the benchmark runs: guest time
        /// counts instructions (for profiling with `kernel.bpf_stats_enabled`).
        #[arg(long)]
        counted: bool,
        /// Shell command, run by busybox sh as root after the mounts.
        command: String,
    },
    /// Show the agent confining a workload, in a VM.
    Demo {
        /// Kernel to boot (6.1, 6.12, unstable, backports).
        #[arg(long, default_value = "6.12")]
        kernel: String,
    },
}

pub fn say(msg: &str) {
    eprintln!("xtask: {msg}");
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Downloads (kernels, package lists) that survive `cargo clean` and fresh clones.
pub fn cache_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(base.join("systrace"))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::all(),
        Cmd::Build => setup::all().and_then(|()| build().map(|_| ())),
        Cmd::Test { kernel, vm_only, scenario, budget } => {
            matrix::test(kernel.as_deref(), vm_only, scenario.as_deref(), Some(budget))
        }
        Cmd::Demo { kernel } => demo(&kernel),
        Cmd::Vm { kernel, counted, command } => vm_command(&kernel, counted, &command),
        Cmd::Bench { kernel } => bench::bench(kernel.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Binaries {
    agent: PathBuf,
    vmtest: PathBuf,
    /// The bypass cases' 32-bit program (tests/i386/attack.c).
    i386: PathBuf,
}

fn build() -> Result<Binaries> {
    say("building systrace-agent (and its eBPF programs, with nightly and bpf-linker) and systrace-vmtest");
    run(Command::new(env!("CARGO")).current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "systrace-agent",
        "-p",
        "systrace-tests",
    ]))?;
    let release = workspace_root().join("target/release");
    let i386 = release.join("systrace-i386");
    run(Command::new("gcc")
        .args(["-m32", "-static", "-O2", "-Wall", "-o"])
        .arg(&i386)
        .arg(workspace_root().join("tests/i386/attack.c")))?;
    Ok(Binaries { agent: release.join("systrace-agent"), vmtest: release.join("systrace-vmtest"), i386 })
}

/// Counts from one test run.
#[derive(Default, Clone, Copy)]
struct Tally {
    passed: usize,
    failed: usize,
    /// Scenarios run again after the guest kernel locked up in its own code patching.
    reruns: usize,
}

/// Runs the host unit tests, echoing cargo's output and adding up its result lines.
fn host_tests() -> Result<Tally> {
    say("running host unit tests");
    let mut child = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(["test", "--release", "--workspace", "--exclude", "systrace-ebpf"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut tally = Tally::default();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| -> usize {
                rest.split(';')
                    .find_map(|p| p.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            };
            tally.passed += num(" passed");
            tally.failed += num(" failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && tally.failed == 0 {
        // A build failure runs no test; count it as one failure so it cannot pass.
        tally.failed += 1;
    }
    Ok(tally)
}

fn vm_payload(bins: &Binaries, kernel: &setup::Kernel, script: String) -> vm::Payload {
    let mut files = vec![
        (bins.agent.clone(), "/usr/bin/systrace-agent".into()),
        (bins.vmtest.clone(), "/usr/bin/systrace-vmtest".into()),
        (bins.i386.clone(), "/usr/bin/systrace-i386".into()),
        (workspace_root().join("policies/demo.toml"), "/etc/systrace/demo.toml".into()),
        // The living-system cases put rules on ext4 and btrfs file systems.
        (setup::MKFS_EXT4.into(), "/usr/bin/mkfs.ext4".into()),
        (setup::MKFS_BTRFS.into(), "/usr/bin/mkfs.btrfs".into()),
    ];
    files.extend(vm::module_files(kernel));
    vm::Payload { files, script }
}

fn vm_command(kernel: &str, counted: bool, command: &str) -> Result<()> {
    let spec = setup::kernel_spec(kernel)?;
    setup::all()?;
    let bins = build()?;
    let kernel = setup::kernel(spec)?;
    let initrd = vm::initramfs("command", &vm_payload(&bins, &kernel, command.to_string()))?;
    let cpu = if counted { vm::Cpu::Counted } else { vm::Cpu::Fast };
    if !vm::boot(&kernel, spec.cmdline, &initrd, cpu, Duration::from_secs(1800), |line| println!("{line}"))? {
        bail!("the VM did not finish");
    }
    Ok(())
}

/// The `systemd` scenario's initramfs: the cached Debian system, with the
/// agent installed as a service from the shipped unit, a unit to confine and
/// its policy, and the checks as a unit that runs last.
fn systemd_initrd(bins: &Binaries) -> Result<PathBuf> {
    let rootfs = setup::rootfs()?;
    let rotel = setup::rotel()?;
    let ws = workspace_root();
    let files = vec![
        (rotel, "/usr/local/bin/rotel-agent".to_string()),
        (ws.join("packaging/systrace.toml"), "/etc/systrace/systrace.toml".to_string()),
        (bins.agent.clone(), "/usr/bin/systrace-agent".to_string()),
        (bins.vmtest.clone(), "/usr/bin/systrace-vmtest".to_string()),
        (ws.join("packaging/systrace.service"), "/usr/lib/systemd/system/systrace.service".to_string()),
        (ws.join("tests/systemd/victim.service"), "/usr/lib/systemd/system/victim.service".to_string()),
        (ws.join("tests/systemd/systrace-e2e.service"), "/usr/lib/systemd/system/systrace-e2e.service".to_string()),
        (ws.join("tests/systemd/victim.toml"), "/etc/systrace/policies/victim.toml".to_string()),
        (ws.join("tests/systemd/secret"), "/etc/victim/secret".to_string()),
        // Put in force by the checks, after nginx has been learned without it.
        (ws.join("policies/nginx.toml"), "/usr/share/systrace/policies/nginx.toml".to_string()),
    ];
    let links = [
        ("/etc/systemd/system/sysinit.target.wants/systrace.service", "/usr/lib/systemd/system/systrace.service"),
        ("/etc/systemd/system/multi-user.target.wants/victim.service", "/usr/lib/systemd/system/victim.service"),
        (
            "/etc/systemd/system/multi-user.target.wants/systrace-e2e.service",
            "/usr/lib/systemd/system/systrace-e2e.service",
        ),
        // The serial console is the checks' output: no login prompt on it.
        ("/etc/systemd/system/serial-getty@ttyS0.service", "/dev/null"),
        // The telemetry cases start their own receivers, configured for the test.
        ("/etc/systemd/system/rsyslog.service", "/dev/null"),
        ("/etc/systemd/system/prometheus.service", "/dev/null"),
        ("/etc/systemd/system/prometheus-node-exporter.service", "/dev/null"),
    ];
    vm::system_initramfs("systemd", &rootfs, &files, &links)
}

const DEMO_SCRIPT: &str = r#"
mkdir -p /srv/demo /sys/fs/cgroup/systrace-demo
echo '<h1>hello from a confined web server</h1>' > /srv/demo/index.html
echo 'the root password is hunter2' > /srv/demo/secret.txt
: > /srv/demo/access.log
echo "demo: systrace-agent run /etc/systrace/demo.toml (JSON lines below are its output)"
systrace-agent run /etc/systrace/demo.toml | tee /tmp/agent.out &
for i in $(seq 1 300); do grep -q '"enforcing"' /tmp/agent.out && break; sleep 0.1; done
# Runs $1 in a shell that first moves itself into the confined cgroup. Its
# output comes back through a pipe: a file opened outside would be written
# through a descriptor the policy has not allowed, and be refused.
try() {
  if out=$(sh -c 'echo $$ > /sys/fs/cgroup/systrace-demo/cgroup.procs && eval "$1"' demo "$1" 2>&1); then
    echo "demo: allowed | $1"
  else
    echo "demo: DENIED  | $1 -> $out"
  fi
  sleep 0.3
}
AGENT=$(pidof systrace-agent)
echo "demo: --- inside cgroup systrace-demo ---"
try 'cat /srv/demo/index.html'
try 'echo "GET /" >> /srv/demo/access.log'
try 'cat /srv/demo/secret.txt'
try 'echo defaced > /srv/demo/index.html'
try 'echo "<?php system(\$_GET[c]);" > /srv/demo/shell.php'
try 'cat /srv/demo/access.log'
try "kill -9 $AGENT   # the agent's pid"
echo "demo: --- outside the cgroup, the same reads are untouched ---"
if cat /srv/demo/secret.txt > /dev/null; then echo "demo: allowed | cat /srv/demo/secret.txt (unconfined)"; fi
echo "demo: stopping the agent (Ctrl-C)"
killall -INT systrace-agent
for i in $(seq 1 100); do pidof systrace-agent > /dev/null || break; sleep 0.1; done
sleep 0.5
"#;

fn demo(kernel: &str) -> Result<()> {
    let spec = setup::kernel_spec(kernel)?;
    setup::all()?;
    let bins = build()?;
    let kernel = setup::kernel(spec)?;
    let payload = vm::Payload {
        files: vec![
            (bins.agent.clone(), "/usr/bin/systrace-agent".into()),
            (workspace_root().join("policies/demo.toml"), "/etc/systrace/demo.toml".into()),
        ],
        script: DEMO_SCRIPT.into(),
    };
    let initrd = vm::initramfs("demo", &payload)?;
    let mut denied = 0;
    let mut events = 0;
    let finished = vm::boot(&kernel, spec.cmdline, &initrd, vm::Cpu::Fast, Duration::from_secs(600), |line| {
        if line.contains("demo: DENIED") {
            denied += 1;
        }
        if line.contains("\"type\":\"event\"") {
            events += 1;
        }
        println!("{line}");
    })?;
    if !finished {
        bail!("the demo VM did not finish");
    }
    say(&format!("demo done: {denied} operations denied, {events} violation events streamed"));
    if denied == 0 || events == 0 {
        bail!("the demo showed no enforcement");
    }
    Ok(())
}

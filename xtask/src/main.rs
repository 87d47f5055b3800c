//! `cargo xtask`: every build, run and test step of systrace.
//!
//! - `cargo xtask demo`: installs what is missing, builds, boots the Debian 6.12
//!   kernel in QEMU, and shows the agent confining a workload.
//! - `cargo xtask test`: host unit tests, then the VM suite on every kernel of
//!   the matrix (Debian 12's 6.1, Debian 13's 6.12, Debian unstable's and
//!   trixie-backports' newest).
//! - `cargo xtask setup` / `build`: the first steps of the above, on their own.

mod plan;
mod setup;
mod vm;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
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
            test(kernel.as_deref(), vm_only, scenario.as_deref(), Some(budget))
        }
        Cmd::Demo { kernel } => demo(&kernel),
        Cmd::Vm { kernel, counted, command } => vm_command(&kernel, counted, &command),
        Cmd::Bench { kernel } => bench(kernel.as_deref()),
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

/// One kernel's results: its name, the tally of TEST lines, the bypass
/// table's (case, policy style, outcome) rows, and each boot's time.
struct KernelRun {
    name: String,
    tally: Tally,
    bypass: Vec<BypassRow>,
    times: Vec<ScenarioTime>,
}

/// One scenario's row of the time table.
struct ScenarioTime {
    scenario: String,
    elapsed: Duration,
    /// Boots of it, counting the ones repeated after the guest kernel stopped
    /// on its own code patching; 0: skipped for the time budget.
    boots: usize,
    passed: usize,
    failed: usize,
}

/// The longest a boot may go without finishing a case before it counts as
/// hung: the slowest single case (a learning case starting the agent several
/// times on 6.1 under emulation) takes about 5 minutes.
const QUIET_LIMIT: Duration = Duration::from_secs(900);

/// Whether a console line shows the guest stopped on its own live code
/// patching under TCG: an int3 oops, or a vCPU found spinning (soft lockup,
/// RCU stall) on the first byte of a `bpf_lsm_*` stub, the call site a BPF
/// trampoline attach or detach had just re-patched (seen on 6.1 as
/// `RIP: 0010:bpf_lsm_mmap_file+0x0/0x10` while systemd restarted the agent).
/// Anywhere else in a function, a lockup is ours and counts as a failure.
fn is_code_patching_stop(line: &str) -> bool {
    if line.contains("RIP: 0010:asm_exc_int3") || line.contains("Oops: int3") {
        return true;
    }
    line.split_once("RIP: 0010:bpf_lsm_")
        .is_some_and(|(_, rest)| rest.split_once('+').is_some_and(|(_, offset)| offset.starts_with("0x0/")))
}

/// What one boot of one scenario adds to its kernel's results.
struct ScenarioRun {
    row: ScenarioTime,
    tally: Tally,
    bypass: Vec<BypassRow>,
    rerun_skipped: bool,
}

/// Boots `kernel` for `scenario` (`again`: the second systemd boot, which
/// checks boot, restarts, kill and reload only) and tallies its TEST lines.
/// `may_rerun` says whether a rerun still fits the time budget; when it does
/// not, the boot that stopped on the kernel's code patching is reported as
/// skipped (`rerun_skipped`), neither passed nor failed.
fn boot_scenario(
    kernel: &setup::Kernel,
    scenario: &'static str,
    bins: &Binaries,
    may_rerun: &dyn Fn() -> bool,
) -> Result<ScenarioRun> {
    let scenario_started = Instant::now();
    let spec = kernel.spec;
    let scenario_name = if scenario == "again" { "systemd" } else { scenario };
    let mut bypass = Vec::new();
    let mut tally = Tally::default();
    let mut cmdline = match scenario {
        "refusal" => spec.cmdline_without_bpf_lsm.to_string(),
        "again" => format!("{} systrace.e2e=boot-only", spec.cmdline),
        _ => spec.cmdline.to_string(),
    };
    let mut payload = vm_payload(bins, kernel, format!("systrace-vmtest {scenario_name} /usr/bin/systrace-agent"));
    let mut memory = "1G";
    if scenario_name == "systemd" {
        // A Debian system with systemd as PID 1, not the busybox /init.
        cmdline.push_str(" rdinit=/sbin/init systemd.show_status=error");
        memory = "2G";
    }
    if scenario == "learning" {
        payload.files.extend(vm::python_files()?);
        // tmux plays the person answering `exec --ask`.
        payload.files.push(("/usr/bin/tmux".into(), "/usr/bin/tmux".into()));
        payload.files.push(("/lib/terminfo/s/screen".into(), "/lib/terminfo/s/screen".into()));
        // tmux insists on a UTF-8 locale: glibc's C.UTF-8.
        payload.files.extend(vm::tree_files(std::path::Path::new("/usr/lib/locale/C.utf8"))?);
    }
    let initrd = if scenario_name == "systemd" { systemd_initrd(bins)? } else { vm::initramfs(scenario, &payload)? };
    // Judged by progress, not by a wall-clock guess: the boot goes on as
    // long as cases keep finishing (a case may take QUIET_LIMIT); the
    // total is a safety net far beyond what a slow host needs.
    let limits = vm::Limits { quiet: QUIET_LIMIT, total: Duration::from_secs(3600) };
    // The guest kernel sometimes trips over its own live code patching under
    // two TCG vCPUs: an oops at boot (int3 in sched_clock_cpu, before init
    // has run), or a vCPU running into the int3 that patching a hook's BPF
    // trampoline plants (a program attached or detached while another vCPU
    // runs the hook: the agent handover does 64 of these under load) after
    // the patch is done ("Oops: int3"), or both vCPUs spinning on it until
    // the soft-lockup watchdog panics (6.1). None is a test result: the
    // scenario runs again from a fresh boot (twice at most), and each rerun
    // is reported. Any other stop counts as it is.
    let mut rerun_skipped = false;
    let mut row =
        ScenarioTime { scenario: scenario.to_string(), elapsed: Duration::ZERO, boots: 0, passed: 0, failed: 0 };
    for attempt in 1..=3 {
        bypass.clear();
        row.boots += 1;
        let mut run = Tally::default();
        let mut summary = None;
        let mut panicked = false;
        let mut patching_lockup = false;
        let finished = vm::boot_with(kernel, &cmdline, &initrd, vm::Cpu::Fast, memory, limits, |line| {
            println!("[{} {scenario}] {line}", spec.label);
            panicked |= line.contains("Kernel panic");
            patching_lockup |= is_code_patching_stop(line);
            let mut progress = false;
            if line.starts_with("TEST ") {
                progress = true;
                if line.ends_with(" ok") {
                    run.passed += 1;
                } else {
                    run.failed += 1;
                }
            }
            if let Some(rest) = line.strip_prefix("VMTEST ") {
                summary = Some(rest.to_string());
            }
            if let Some(rest) = line.strip_prefix("BYPASS ") {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                if let [case, style, word] = parts[..] {
                    bypass.push((case.to_string(), style.to_string(), word.to_string()));
                }
            }
            progress
        })?;
        let tested_nothing = run.passed + run.failed == 0;
        if !finished && panicked && tested_nothing && attempt == 1 {
            say(&format!(
                "kernel {} ({scenario}): the kernel panicked while booting, before any test ran; booting again",
                kernel.release
            ));
            continue;
        }
        if !finished && panicked && patching_lockup && attempt < 3 && !may_rerun() {
            say(&format!(
                "kernel {} ({scenario}): the guest kernel stopped on an int3 of its own code patching; \
                 no time left in the budget to run it again: skipped",
                kernel.release
            ));
            bypass.clear();
            rerun_skipped = true;
            break;
        }
        if !finished && panicked && patching_lockup && attempt < 3 {
            say(&format!(
                "kernel {} ({scenario}): the guest kernel stopped on an int3 of its own code patching (see above); \
                 running the scenario again from a fresh boot, its {} results so far discarded",
                kernel.release,
                run.passed + run.failed
            ));
            tally.reruns += 1;
            continue;
        }
        if !finished || summary.is_none() {
            say(&format!("kernel {} ({scenario}): the VM stopped before the tests finished", kernel.release));
            run.failed += 1;
        }
        tally.passed += run.passed;
        tally.failed += run.failed;
        (row.passed, row.failed) = (run.passed, run.failed);
        break;
    }
    row.elapsed = scenario_started.elapsed();
    say(&format!("kernel {} ({scenario}) took {:.0?}", kernel.release, row.elapsed));
    Ok(ScenarioRun { row, tally, bypass, rerun_skipped })
}

/// Prints the per-kernel, per-scenario time table.
fn time_table(runs: &[(String, Vec<ScenarioTime>)], setup: Duration, build: Duration, host: Duration) {
    println!("time table (wall clock; boots counts reruns after the guest stopped on its own code patching):");
    println!("  {:<34} {:<10} {:>8} {:>6} {:>7} {:>7}", "kernel", "scenario", "seconds", "boots", "passed", "failed");
    println!("  {:<34} {:<10} {:>8.0}", "(host)", "setup", setup.as_secs_f64());
    println!("  {:<34} {:<10} {:>8.0}", "(host)", "unit tests", host.as_secs_f64());
    println!("  {:<34} {:<10} {:>8.0}", "(host)", "build", build.as_secs_f64());
    let mut all = setup + build + host;
    for (kernel, rows) in runs {
        let mut sum = Duration::ZERO;
        for r in rows {
            if r.boots == 0 {
                println!("  {:<34} {:<10} {:>8} (skipped for the time budget)", kernel, r.scenario, "-");
                continue;
            }
            println!(
                "  {:<34} {:<10} {:>8.0} {:>6} {:>7} {:>7}",
                kernel,
                r.scenario,
                r.elapsed.as_secs_f64(),
                r.boots,
                r.passed,
                r.failed
            );
            sum += r.elapsed;
        }
        println!("  {:<34} {:<10} {:>8.0}", kernel, "(all)", sum.as_secs_f64());
        all += sum;
    }
    println!("  {:<34} {:<10} {:>8.0}  ({:.1} minutes)", "total", "", all.as_secs_f64(), all.as_secs_f64() / 60.0);
}

/// Prints the bypass suite as a case × (kernel, policy style) table and returns
/// its own tally: a cell passes when the attack was denied; BYPASSED or a
/// missing cell (the VM stopped before the case ran) fails.
/// (case, policy style, outcome) of one bypass case run.
type BypassRow = (String, String, String);

fn bypass_table(kernels: &[(String, Vec<BypassRow>)]) -> Tally {
    let mut cases: Vec<&str> = Vec::new();
    let mut columns: Vec<(String, String)> = Vec::new();
    for (kernel, rows) in kernels {
        for (case, style, _) in rows {
            if !cases.contains(&case.as_str()) {
                cases.push(case);
            }
            if !columns.contains(&(kernel.clone(), style.clone())) {
                columns.push((kernel.clone(), style.clone()));
            }
        }
    }
    let width = cases.iter().map(|c| c.len()).max().unwrap_or(4).max(4);
    let mut header = format!("{:width$}", "case");
    for (kernel, style) in &columns {
        header.push_str(&format!("  {:<11}", format!("{kernel}/{style}")));
    }
    println!("{}", header.trim_end());
    let mut tally = Tally::default();
    for case in &cases {
        let mut line = format!("{case:width$}");
        for (kernel, style) in &columns {
            let rows = &kernels.iter().find(|(k, _)| k == kernel).expect("a kernel of the table").1;
            let cell = rows.iter().find(|(c, s, _)| c == case && s == style).map_or("missing", |(_, _, w)| w.as_str());
            // `absent`: this kernel has no such door (a newer system call).
            if cell == "denied" || cell == "absent" {
                tally.passed += 1;
            } else {
                tally.failed += 1;
            }
            line.push_str(&format!("  {cell:<11}"));
        }
        println!("{}", line.trim_end());
    }
    if cases.is_empty() {
        println!("(no bypass case ran)");
        tally.failed += 1;
    }
    tally
}

fn test(only: Option<&str>, vm_only: bool, scenario: Option<&str>, budget: Option<u64>) -> Result<()> {
    let specs = match only {
        Some(label) => vec![setup::kernel_spec(label)?],
        None => setup::KERNELS.to_vec(),
    };
    let budget = budget.filter(|&m| m > 0);
    let budget_limit = budget.map(|minutes| Duration::from_secs(minutes.saturating_mul(60)));
    let started = Instant::now();
    let clock = Instant::now();
    setup::all()?;
    // Every kernel is fetched before the first boot, so a kernel Debian no
    // longer has fails the run at once, not an hour in.
    // One that cannot be fetched (a mirror mid-sync, a package Debian
    // dropped) fails the run but not the other kernels.
    let mut releases = Vec::new();
    let mut unfetched: Vec<(String, Tally)> = Vec::new();
    let specs: Vec<setup::KernelSpec> = specs
        .into_iter()
        .filter(|&spec| match setup::kernel(spec) {
            Ok(kernel) => {
                releases.push(kernel.release);
                true
            }
            Err(e) => {
                say(&format!("kernel {} ({}) could not be fetched: {e:#}", spec.label, spec.debian));
                unfetched.push((
                    format!("kernel {} ({}): not fetched", spec.label, spec.debian),
                    Tally { failed: 1, ..Tally::default() },
                ));
                false
            }
        })
        .collect();
    let by_version = |a: &&String, b: &&String| setup::version_cmp(a, b);
    let oldest = releases.iter().enumerate().min_by(|a, b| by_version(&a.1, &b.1)).map_or(0, |(i, _)| i);
    let newest = releases.iter().enumerate().max_by(|a, b| by_version(&a.1, &b.1)).map_or(0, |(i, _)| i);
    for (i, (spec, release)) in specs.iter().zip(&releases).enumerate() {
        let role = if i == oldest || i == newest { "every scenario" } else { "the core set (suite, bypass, living)" };
        say(&format!("kernel {}: {release} ({}): {role}", spec.label, spec.debian));
    }
    let setup_time = clock.elapsed();
    let mut lines: Vec<(String, Tally)> = unfetched;
    let clock = Instant::now();
    if !vm_only {
        lines.push(("host unit tests".into(), host_tests()?));
    }
    let host_time = clock.elapsed();
    let clock = Instant::now();
    let bins = build()?;
    let build_time = clock.elapsed();
    let kernels: Vec<setup::Kernel> = specs.iter().map(|&spec| setup::kernel(spec)).collect::<Result<_>>()?;
    let mut runs: Vec<KernelRun> = kernels
        .iter()
        .map(|k| KernelRun {
            name: format!("kernel {} ({}, {})", k.release, k.spec.debian, k.spec.label),
            tally: Tally::default(),
            bypass: Vec::new(),
            times: Vec::new(),
        })
        .collect();
    let plan = if kernels.is_empty() { Vec::new() } else { plan::boots(kernels.len(), oldest, newest, scenario) };
    let mut pace = plan::Budget::new(budget_limit);
    let mut skipped = Vec::new();
    // Bypass boots that ran to an end: with none, there is no table to judge.
    let mut bypass_boots = 0;
    for (k, scenario) in plan {
        let elapsed = started.elapsed();
        if !pace.fits(elapsed, scenario) {
            say(&format!(
                "skipping {scenario} on kernel {} ({}): expected to take {:.0?} at this run's pace, \
                 {:.0?} into a budget of {:.0?}",
                kernels[k].release,
                kernels[k].spec.label,
                pace.expect(scenario),
                elapsed,
                budget_limit.unwrap_or_default()
            ));
            skipped.push(format!("{} on {}", scenario, kernels[k].spec.label));
            let row = ScenarioTime {
                scenario: scenario.to_string(),
                elapsed: Duration::ZERO,
                boots: 0,
                passed: 0,
                failed: 0,
            };
            runs[k].times.push(row);
            continue;
        }
        let run = boot_scenario(&kernels[k], scenario, &bins, &|| pace.fits(started.elapsed(), scenario))?;
        if scenario == "bypass" && !run.rerun_skipped {
            bypass_boots += 1;
        }
        pace.record(scenario, run.row.elapsed);
        if run.rerun_skipped {
            skipped.push(format!("{} on {} (stopped on the kernel's code patching)", scenario, kernels[k].spec.label));
        }
        let r = &mut runs[k];
        r.tally.passed += run.tally.passed;
        r.tally.failed += run.tally.failed;
        r.tally.reruns += run.tally.reruns;
        r.bypass.extend(run.bypass);
        r.times.push(run.row);
    }
    let mut bypass = Vec::new();
    let mut times = Vec::new();
    for (run, kernel) in runs.into_iter().zip(&kernels) {
        lines.push((run.name.clone(), run.tally));
        bypass.push((kernel.spec.label.to_string(), run.bypass));
        times.push((run.name, run.times));
    }
    println!();
    time_table(&times, setup_time, build_time, host_time);
    println!();
    let bypass_tally = if bypass_boots == 0 {
        Tally::default()
    } else if scenario.is_none_or(|s| s == "bypass") {
        println!(
            "bypass suite (case x kernel/policy style: deny = default deny, allow = default allow with deny rules):"
        );
        let t = bypass_table(&bypass);
        println!("bypass suite: {} passed, {} failed", t.passed, t.failed);
        t
    } else {
        Tally::default()
    };
    println!();
    if !skipped.is_empty() {
        println!(
            "{} boots skipped for the time budget ({} minutes; --budget 0 runs every one): {}",
            skipped.len(),
            budget.unwrap_or_default(),
            skipped.join(", ")
        );
    }
    let mut total = Tally::default();
    for (name, t) in &lines {
        let reruns = if t.reruns > 0 {
            format!(
                " ({} scenario runs repeated after the guest kernel stopped on its own code patching, reported above)",
                t.reruns
            )
        } else {
            String::new()
        };
        println!("{name}: {} passed, {} failed{reruns}", t.passed, t.failed);
        total.passed += t.passed;
        total.failed += t.failed;
    }
    // Each bypass case is also a TEST line in its kernel's tally; a missing
    // cell is not, so it is added here.
    let missing = bypass_tally
        .failed
        .saturating_sub(bypass.iter().flat_map(|(_, rows)| rows).filter(|(_, _, w)| w == "BYPASSED").count());
    total.failed += missing;
    if skipped.is_empty() {
        println!("{} passed, {} failed", total.passed, total.failed);
    } else {
        println!("{} passed, {} failed, {} skipped", total.passed, total.failed, skipped.len());
    }
    if total.failed > 0 {
        bail!("{} failed", total.failed);
    }
    Ok(())
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

/// Boots each kernel with the benchmark, prints the table and writes
/// target/bench/results.json.
fn bench(only: Option<&str>) -> Result<()> {
    let specs = match only {
        Some(label) => vec![setup::kernel_spec(label)?],
        None => setup::KERNELS.to_vec(),
    };
    setup::all()?;
    let bins = build()?;
    let mut results: Vec<serde_json::Value> = Vec::new();
    for spec in specs {
        let kernel = setup::kernel(spec)?;
        let mut payload = vm_payload(&bins, &kernel, "systrace-vmtest bench /usr/bin/systrace-agent".into());
        payload.files.push((setup::APPARMOR_PARSER.into(), setup::APPARMOR_PARSER.into()));
        let initrd = vm::initramfs("bench", &payload)?;
        let mut done = false;
        let mut failure = None;
        // Instruction-counted time: with wall-clock time, host scheduling made the
        // same variant vary by 2.5x between rounds.
        let finished =
            vm::boot(&kernel, spec.bench_cmdline, &initrd, vm::Cpu::Counted, Duration::from_secs(1800), |line| {
                if let Some(json) = line.strip_prefix("BENCH ") {
                    match serde_json::from_str::<serde_json::Value>(json) {
                        Ok(v) => results.push(v),
                        Err(e) => say(&format!("unreadable bench line ({e}): {line}")),
                    }
                } else if line == "BENCH-DONE" {
                    done = true;
                } else if let Some(why) = line.strip_prefix("BENCH-FAILED ") {
                    failure = Some(why.to_string());
                } else if line.starts_with("bench:") {
                    say(&format!("[{}] {line}", spec.label));
                }
            })?;
        if let Some(why) = failure {
            bail!("benchmark on {} failed: {why}", kernel.release);
        }
        if !finished || !done {
            bail!("the benchmark VM for {} stopped before it finished", kernel.release);
        }
    }
    print_bench_table(&results);
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("results.json");
    std::fs::write(&file, serde_json::to_string_pretty(&results)?)?;
    say(&format!("wrote {}", file.display()));
    Ok(())
}

fn print_bench_table(results: &[serde_json::Value]) {
    let mut kernels: Vec<&str> = results.iter().filter_map(|r| r["kernel"].as_str()).collect();
    kernels.dedup();
    println!();
    println!("systrace benchmark: QEMU software emulation in icount mode, where 1 ns of guest time is one");
    println!("guest instruction, so the costs below are instruction counts: compare ratios, not times.");
    for kernel in kernels {
        let of = |case: &'static str| results.iter().filter(move |r| r["kernel"] == kernel && r["case"] == case);
        println!();
        println!("kernel {kernel}");
        for case in ["open_close", "read_4k", "connect", "fork_exec"] {
            for r in of(case) {
                println!(
                    "  {:<10} {:<24} {:>10.0} ns/op  {:>6.3}x  ({} iterations, median of {} interleaved rounds)",
                    case,
                    r["name"].as_str().unwrap_or("?"),
                    r["ns_per_op"].as_f64().unwrap_or(f64::NAN),
                    r["ratio_vs_baseline"].as_f64().unwrap_or(f64::NAN),
                    r["iterations"],
                    r["rounds"]
                );
            }
        }
        for r in of("violation_throughput") {
            println!(
                "  violations {} attempts in {} s: produced {} ({:.0}/s), delivered {}, dropped {}, {}",
                r["attempts"],
                r["seconds"],
                r["produced"],
                r["produced_per_s"].as_f64().unwrap_or(0.0),
                r["delivered"],
                r["dropped"],
                if r["accounted"] == true { "all accounted for" } else { "NOT ACCOUNTED" }
            );
        }
        for variant in ["b_agent_unconfined", "c_confined_10_rules"] {
            let costs: Vec<String> = of("program_cost")
                .filter(|r| r["variant"] == variant)
                .map(|r| {
                    format!(
                        "{} {:.0} x{:.1}",
                        r["name"].as_str().unwrap_or("?"),
                        r["ns_per_run"].as_f64().unwrap_or(f64::NAN),
                        r["runs_per_op"].as_f64().unwrap_or(f64::NAN)
                    )
                })
                .collect();
            if !costs.is_empty() {
                println!("  programs in one open+close, {variant}: instructions per run x runs: {}", costs.join(", "));
            }
        }
        let ratio = |name: &str| {
            of("open_close")
                .find(|r| r["name"] == name)
                .and_then(|r| r["ratio_vs_baseline"].as_f64())
                .unwrap_or(f64::NAN)
        };
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let (floor, floor_all, b, c, e) = (
            ratio("a0_noop_program_floor"),
            ratio("a1_noop_programs_on_every_hook_an_open_passes"),
            ratio("b_agent_unconfined"),
            ratio("c_confined_10_rules"),
            ratio("e_confined_100k_rules"),
        );
        let (landlock, apparmor) = (ratio("landlock_confined"), ratio("apparmor_confined"));
        println!(
            "  open+close side by side: systrace {c:.3}x, Landlock {landlock:.3}x, AppArmor {apparmor:.3}x (floor: {floor:.3}x one program, {floor_all:.3}x on every hook an open passes)"
        );
        println!(
            "  targets: (b) <= floor + 0.005: {b:.3}x vs {:.3}x {}; (c) <= 1.08x: {c:.3}x {}; (e) <= 1.01x (c): {:.3}x {}; (c) <= best peer: {}",
            floor + 0.005,
            verdict(b <= floor + 0.005),
            verdict(c <= 1.08),
            e / c,
            verdict(e / c <= 1.01),
            verdict(c <= landlock.min(apparmor))
        );
        println!(
            "  against the floor of every hook an open passes ({floor_all:.3}x): (b) +{:.3}, (c) +{:.3}",
            b - floor_all,
            c - floor_all
        );
        for r in of("agent_memory") {
            let mib = r["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0;
            println!("  target: agent RSS with {} rules < 24 MiB: {mib:.1} MiB {}", r["rules"], verdict(mib < 24.0));
        }
        let read = |name: &str| of("read_4k").find(|r| r["name"] == name).and_then(|r| r["ratio_vs_baseline"].as_f64());
        if let (Some(c), Some(floor)) = (read("c_confined_10_rules"), read("a0_noop_program_floor")) {
            println!(
                "  read() of 4 KiB, confined: {c:.3}x (a do-nothing program on file_permission alone: {floor:.3}x)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_code_patching_stop;

    #[test]
    fn code_patching_stops_are_told_from_other_lockups() {
        assert!(is_code_patching_stop("[6.1 systemd] [  160.109500] RIP: 0010:bpf_lsm_mmap_file+0x0/0x10"));
        assert!(is_code_patching_stop("[  161.026473] RIP: 0010:bpf_lsm_inode_permission+0x0/0x10"));
        assert!(is_code_patching_stop("[   12.1] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"));
        assert!(!is_code_patching_stop("[  161.0] RIP: 0010:bpf_lsm_inode_permission+0x4/0x10"));
        assert!(!is_code_patching_stop("[  189.0] RIP: 0010:read_hpet+0x91/0xf0"));
        assert!(!is_code_patching_stop("[  189.0] RIP: 0033:0x461857"));
    }
}

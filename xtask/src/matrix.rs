//! `cargo xtask test`: boots each scenario of the plan (see `plan.rs`) on its
//! kernel, tallies the TEST lines, and prints the time table, the bypass table
//! and the totals.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::{build, host_tests, plan, say, setup, systemd_initrd, vm, vm_payload, Binaries, Tally};

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

pub fn test(only: Option<&str>, vm_only: bool, scenario: Option<&str>, budget: Option<u64>) -> Result<()> {
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
    let mut kernels: Vec<setup::Kernel> = Vec::new();
    let mut unfetched: Vec<(String, Tally)> = Vec::new();
    for spec in specs {
        match setup::kernel(spec) {
            Ok(kernel) => kernels.push(kernel),
            Err(e) => {
                say(&format!("kernel {} ({}) could not be fetched: {e:#}", spec.label, spec.debian));
                unfetched.push((
                    format!("kernel {} ({}): not fetched", spec.label, spec.debian),
                    Tally { failed: 1, ..Tally::default() },
                ));
            }
        }
    }
    let by_version = |a: &&setup::Kernel, b: &&setup::Kernel| setup::version_cmp(&a.release, &b.release);
    let oldest = kernels.iter().enumerate().min_by(|a, b| by_version(&a.1, &b.1)).map_or(0, |(i, _)| i);
    let newest = kernels.iter().enumerate().max_by(|a, b| by_version(&a.1, &b.1)).map_or(0, |(i, _)| i);
    for (i, k) in kernels.iter().enumerate() {
        let role = if i == oldest || i == newest { "every scenario" } else { "the core set (suite, bypass, living)" };
        say(&format!("kernel {}: {} ({}): {role}", k.spec.label, k.release, k.spec.debian));
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

//! `cargo xtask bench`: the benchmark VM on each kernel, its table, and
//! target/bench/results.json.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::{build, say, setup, vm, vm_payload, workspace_root};

/// Boots each kernel with the benchmark, prints the table and writes
/// target/bench/results.json.
pub fn bench(only: Option<&str>) -> Result<()> {
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

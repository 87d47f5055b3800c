//! `systrace-agent`: confines cgroups with BPF LSM programs and streams violations.
//!
//! Standard output carries JSON lines only (`"type"`: `status`, `event`, `stats`);
//! human-readable messages go to standard error.

mod enforcer;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::json;
use systrace_agent::{
    events::{self, Clock, PolicyNames, SlotInfo},
    offsets,
    policy::{self, Compiled, Diagnostic, Severity, SystemResolver},
};
use systrace_common::Counter;
use tokio::{io::unix::AsyncFd, signal::unix::{signal, SignalKind}};

use crate::enforcer::{Enforcer, LoadFailure};

/// Exit status when this kernel or sandbox cannot run the enforcement programs.
const EXIT_CANNOT_ENFORCE: u8 = 3;

#[derive(Parser)]
#[command(name = "systrace-agent", version, about = "BPF LSM enforcement of per-cgroup policies")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load policies, enforce them, and stream events as JSON lines until Ctrl-C or SIGTERM.
    Run {
        /// Policy files (TOML).
        #[arg(required = true)]
        policies: Vec<PathBuf>,
        /// Print a stats line this often (seconds; 0: only at exit).
        #[arg(long, default_value_t = 0)]
        stats_interval: u64,
        /// Print the verifier's log when a program fails to load.
        #[arg(long)]
        verifier_log: bool,
    },
    /// Validate policy files without loading anything.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Say whether this kernel can enforce, and print the struct offsets read from its BTF.
    Probe,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Probe => probe(),
        Command::Run { policies, stats_interval, verifier_log } => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("systrace-agent: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(&policies, stats_interval, verifier_log))
        }
    }
}

/// The mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo.
fn cgroup2_root() -> PathBuf {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let mount_point = left.split(' ').nth(4)?;
                (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
            })
        })
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

fn read_and_parse(file: &Path, cgroup_root: &Path) -> Result<policy::Policy, Diagnostic> {
    let text = std::fs::read_to_string(file).map_err(|e| Diagnostic {
        severity: Severity::Error,
        location: policy::Location { file: file.to_path_buf(), line: 1, column: 1 },
        message: format!("cannot read: {e}"),
    })?;
    policy::parse(file, &text, cgroup_root)
}

fn check(files: &[PathBuf]) -> ExitCode {
    let root = cgroup2_root();
    let mut errors = 0;
    for file in files {
        match read_and_parse(file, &root) {
            Ok(policy) => {
                // Resolution problems are warnings for `check`: a path may appear later,
                // and the cgroup may be created when its service starts.
                for spec in &policy.files {
                    if let Err(e) = std::fs::metadata(&spec.path) {
                        let d = Diagnostic {
                            severity: Severity::Warning,
                            location: spec.location.clone(),
                            message: format!("{}: {e}", spec.path.display()),
                        };
                        eprintln!("{d}");
                    }
                }
                if !policy.cgroup.is_dir() {
                    eprintln!("{}:1:1: warning: cgroup {} does not exist (yet)", file.display(), policy.cgroup.display());
                }
                println!("{}: ok ({} file rules)", file.display(), policy.files.len());
            }
            Err(d) => {
                eprintln!("{d}");
                errors += 1;
            }
        }
    }
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Reasons a host cannot enforce that are visible before loading anything.
fn preflight() -> Result<(), String> {
    if !Path::new(offsets::VMLINUX_BTF).exists() {
        return Err(format!(
            "the kernel exposes no BTF ({} is missing; it needs CONFIG_DEBUG_INFO_BTF=y)",
            offsets::VMLINUX_BTF
        ));
    }
    if let Ok(lsms) = std::fs::read_to_string("/sys/kernel/security/lsm") {
        let lsms = lsms.trim();
        if !lsms.split(',').any(|l| l == "bpf") {
            return Err(format!(
                "the BPF LSM is not active (active: {lsms}); boot with lsm={lsms},bpf on the kernel command line"
            ));
        }
    }
    Ok(())
}

/// One line saying why the programs could not be loaded.
fn explain(failure: &LoadFailure) -> String {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match failure.errno {
        Some(libc::EPERM) if !root => {
            "not running as root: loading BPF LSM programs needs root (CAP_BPF, CAP_PERFMON, CAP_MAC_ADMIN)".into()
        }
        Some(libc::EPERM) => "the kernel refused to load a BPF LSM program (EPERM) although running as root \
             with the BPF LSM active: this kernel or sandbox forbids BPF LSM programs"
            .into(),
        Some(libc::EINVAL) if failure.verifier_log.is_some() => format!(
            "the verifier rejected a program ({:#}); run with --verifier-log for details",
            failure.error
        ),
        _ => format!("{:#}", failure.error),
    }
}

fn load_enforcer(verifier_log: bool) -> Result<Enforcer, String> {
    preflight()?;
    let offsets = offsets::resolve(Path::new(offsets::VMLINUX_BTF)).map_err(|e| format!("{e:#}"))?;
    Enforcer::load(&offsets).map_err(|failure| {
        if verifier_log {
            if let Some(log) = &failure.verifier_log {
                eprintln!("{log}");
            }
        }
        explain(&failure)
    })
}

fn probe() -> ExitCode {
    match offsets::resolve(Path::new(offsets::VMLINUX_BTF)) {
        Ok(offsets) => {
            for o in &offsets {
                println!("{} = {}", o.global, o.bytes);
            }
        }
        Err(e) => println!("offsets: {e:#}"),
    }
    match load_enforcer(true) {
        Ok(_) => {
            println!("can enforce: yes");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("systrace-agent: cannot enforce: {why}");
            ExitCode::from(EXIT_CANNOT_ENFORCE)
        }
    }
}

fn print_json(value: &impl serde::Serialize) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (the reader went away) must not stop enforcement.
    let _ = serde_json::to_writer(&mut out, value);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

async fn run(files: &[PathBuf], stats_interval: u64, verifier_log: bool) -> ExitCode {
    // Validate everything before touching the kernel: a bad file loads nothing.
    let root = cgroup2_root();
    let mut compiled: Vec<Compiled> = Vec::new();
    for file in files {
        let result = read_and_parse(file, &root).and_then(|p| policy::compile(&p, &SystemResolver));
        match result {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("{w}");
                }
                if let Some(other) = compiled.iter().find(|o| o.cgroup_id == c.cgroup_id || o.name == c.name) {
                    eprintln!(
                        "{}:1:1: error: policy {} targets the same cgroup or name as policy {}",
                        file.display(),
                        c.name,
                        other.name
                    );
                    return ExitCode::FAILURE;
                }
                compiled.push(c);
            }
            Err(d) => {
                eprintln!("{d}");
                return ExitCode::FAILURE;
            }
        }
    }

    let mut enforcer = match load_enforcer(verifier_log) {
        Ok(e) => e,
        Err(why) => {
            eprintln!("systrace-agent: cannot enforce: {why}");
            return ExitCode::from(EXIT_CANNOT_ENFORCE);
        }
    };
    match serve(&mut enforcer, &compiled, stats_interval).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("systrace-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
    // Dropping the enforcer detaches the programs and frees the maps.
}

async fn serve(enforcer: &mut Enforcer, compiled: &[Compiled], stats_interval: u64) -> Result<()> {
    let mut names = PolicyNames::default();
    for c in compiled {
        let slot = enforcer.install(c)?;
        names.by_slot.insert(
            slot,
            SlotInfo { name: c.name.clone(), paths: c.paths.iter().map(|(k, v)| (*k, v.clone())).collect() },
        );
        eprintln!(
            "systrace-agent: policy {} confines {} (cgroup id {}): {} file rules",
            c.name,
            c.cgroup.display(),
            c.cgroup_id,
            c.rules.len()
        );
    }
    // SAFETY: the ring buffer owns its file descriptor, and AsyncFd owns the ring
    // buffer, so the descriptor stays open for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register(enforcer.take_events()?) }
        .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
    let clock = Clock::now();
    let mut delivered: u64 = 0;
    print_json(&json!({
        "type": "status",
        "state": "enforcing",
        "policies": compiled.iter().map(|c| json!({"name": c.name, "cgroup": c.cgroup, "cgroup_id": c.cgroup_id})).collect::<Vec<_>>(),
    }));

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let period = if stats_interval == 0 { Duration::from_secs(3600 * 24 * 365) } else { Duration::from_secs(stats_interval) };
    let mut stats_timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let stats = |enforcer: &Enforcer, delivered: u64| -> Result<serde_json::Value> {
        Ok(json!({
            "type": "stats",
            "events_delivered": delivered,
            "events_reported": enforcer.counter(Counter::Reported)?,
            "ring_full_drops": enforcer.counter(Counter::RingFull)?,
            "denied": enforcer.counter(Counter::Denied)?,
        }))
    };
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(record) = ring.next() {
                    match events::decode(&record) {
                        Some(event) => {
                            print_json(&events::to_json(&event, &clock, &names));
                            delivered += 1;
                        }
                        None => eprintln!("systrace-agent: skipped a ring record of {} bytes", record.len()),
                    }
                }
                guard.clear_ready();
            }
            _ = stats_timer.tick() => print_json(&stats(enforcer, delivered)?),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    // Drain what is left so the final counts add up.
    let ring = ring.get_mut();
    while let Some(record) = ring.next() {
        if let Some(event) = events::decode(&record) {
            print_json(&events::to_json(&event, &clock, &names));
            delivered += 1;
        }
    }
    print_json(&stats(enforcer, delivered)?);
    eprintln!("systrace-agent: detaching");
    Ok(())
}

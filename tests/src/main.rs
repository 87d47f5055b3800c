//! `systrace-vmtest`: the end-to-end suite, run inside a QEMU VM by `cargo xtask test`.
//!
//! `systrace-vmtest suite AGENT` runs every case against the real agent binary and
//! prints `TEST name ok|FAILED: why` lines and a closing `VMTEST passed=N failed=M`.
//! `systrace-vmtest op ...` is the workload: it joins a cgroup, performs one
//! operation, and prints what happened as JSON. Running the workload as its own
//! process is what puts it, and only it, in the confined cgroup.

mod agent;
mod attack;
mod bench;
mod bypass;
mod lang;
mod learning;
mod living;
mod op;
mod otlp_debug;
mod protect;
mod refusal;
mod service;
mod suite;
mod telemetry;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Under the name `probe`, this binary is the learning suite's CGI program.
    if std::env::args().next().is_some_and(|a| a.ends_with("/probe") || a == "probe") {
        return learning::cgi_main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("op") => op::main(&args[1..]),
        Some("suite") => suite::main(&args[1..]),
        Some("refusal") => refusal::main(&args[1..]),
        Some("lang") => lang::main(&args[1..]),
        Some("bench") => bench::main(&args[1..]),
        Some("bypass") => bypass::main(&args[1..]),
        Some("living") => living::main(&args[1..]),
        Some("learning") => learning::main(&args[1..]),
        Some("systemd") => service::main(&args[1..]),
        Some("opener") => learning::opener(),
        _ => {
            eprintln!(
                "usage: systrace-vmtest suite|lang|bypass|refusal|bench AGENT | op [--cgroup DIR] open PATH r|w|a"
            );
            ExitCode::from(2)
        }
    }
}

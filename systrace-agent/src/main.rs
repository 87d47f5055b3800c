//! `systrace-agent`: confines cgroups with BPF LSM programs and streams violations.
//!
//! Standard output carries JSON lines only (`"type"`: `status`, `event`, `stats`);
//! human-readable messages go to standard error.

mod ask;
mod authoring;
mod enforcer;
mod gap;
mod notify;
mod pins;
mod prompt;
mod session;
mod watch;

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
    cgroups::cgroup2_root,
    events::{self, Clock, PolicyNames, Record},
    offsets,
    policy::{self, Compiled, Diagnostic, Host, Policy, Severity, SystemResolver},
    telemetry::{self, config::Config, Telemetry},
};
use systrace_common::Counter;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

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
    /// Load policies, enforce them, and stream events as JSON lines until Ctrl-C or
    /// SIGTERM. SIGHUP, or a changed .toml file in a watched directory, reloads.
    Run {
        /// Policy files (TOML).
        #[arg(required_unless_present_any = ["policy_dir", "config"])]
        policies: Vec<PathBuf>,
        /// A directory whose *.toml files are all policies.
        #[arg(long)]
        policy_dir: Option<PathBuf>,
        /// The agent's configuration (policy directory, sinks, limits); the
        /// service uses /etc/systrace/systrace.toml. Options given here win.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print a stats line this often (seconds; 0: only at exit).
        #[arg(long, default_value_t = 0)]
        stats_interval: u64,
        /// Print the verifier's log when a program fails to load.
        #[arg(long)]
        verifier_log: bool,
        /// On SIGTERM, leave the programs pinned and enforcing for the next agent,
        /// which takes them over (a restart or an upgrade); SIGINT still detaches.
        #[arg(long)]
        handover: bool,
        /// Benchmarks only: SIGUSR2 cycles attached -> detached -> a no-op program -> attached.
        #[arg(long, hide = true)]
        bench_detach_signal: bool,
    },
    /// Validate policy files without loading anything.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a command confined by a policy from its first instruction, in a
    /// cgroup of its own, and exit with its status. Denials are printed on
    /// standard error; --events writes every event as a JSON line.
    Exec {
        policy: PathBuf,
        /// Write every event (JSON lines) here.
        #[arg(long)]
        events: Option<PathBuf>,
        #[arg(long)]
        verifier_log: bool,
        /// Hold each open or exec no rule decides until someone answers with
        /// `systrace-agent prompt` (systrace's dialog); unanswered, it is denied.
        #[arg(long)]
        ask: bool,
        /// With --ask: seconds to wait for an answer.
        #[arg(long, default_value_t = 30)]
        ask_timeout: u64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Answer the questions of `exec --ask` agents, in the terminal.
    Prompt {
        /// The agent's socket; default: the newest in /run/systrace.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Observe a command (`-- CMD ARGS`, from its first instruction), a cgroup or
    /// a unit, recording every access the policy (by default an empty one) does
    /// not allow, once per distinct access; deny rules still deny. Writes the
    /// observations for `generate` and `replay`.
    Learn {
        /// Start from this policy: its rules apply, the rest is recorded.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Where the observations go (JSON lines).
        #[arg(short, long, default_value = "learned.jsonl")]
        output: PathBuf,
        /// A cgroup to observe (relative to the cgroup2 mount).
        #[arg(long, conflicts_with_all = ["unit", "command"])]
        cgroup: Option<String>,
        /// A systemd unit to observe, from its next start.
        #[arg(long, conflicts_with = "command")]
        unit: Option<String>,
        /// With --cgroup or --unit: stop after this many seconds (else at Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        #[arg(long)]
        verifier_log: bool,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Write a policy that allows what learning runs saw, generalized; or, when
    /// the output exists, add to it what it does not allow yet, keeping its edits.
    Generate {
        /// Observation files (from `learn`, or any agent's event lines).
        #[arg(required = true)]
        observations: Vec<PathBuf>,
        /// The policy to write, or to merge into.
        #[arg(short, long)]
        output: PathBuf,
        /// The policy's name (a new file only); defaults to the output's file name.
        #[arg(long)]
        name: Option<String>,
        /// A directory with this many distinct names used becomes a glob.
        #[arg(long, default_value_t = 3)]
        collapse: usize,
        /// Also allow what was denied (the events of an enforcing agent).
        #[arg(long)]
        from_denials: bool,
    },
    /// Decide, in a terminal UI, the rules learning (or a running agent's
    /// denials) suggest: allow, deny, widen, edit, with a preview of what each
    /// allows; writes them into the policy, which a running agent then reloads.
    Review {
        /// Observation or event files.
        #[arg(required = true)]
        observations: Vec<PathBuf>,
        /// The policy to add the decided rules to (made if missing).
        #[arg(short, long)]
        output: PathBuf,
        /// A directory with this many distinct names used is proposed as a glob.
        #[arg(long, default_value_t = 3)]
        collapse: usize,
        /// Also propose what was denied (an enforcing agent's events).
        #[arg(long)]
        from_denials: bool,
    },
    /// Say which recorded accesses a policy would refuse.
    Replay {
        policy: PathBuf,
        #[arg(required = true)]
        observations: Vec<PathBuf>,
    },
    /// Say whether this kernel can enforce, and print the struct offsets read from its BTF.
    Probe,
    /// Stop the enforcement a killed agent left behind: remove its pinned programs
    /// (those of a running agent are left alone) and wait until they are detached.
    Detach,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Probe => probe(),
        Command::Exec { policy, events, verifier_log, ask, ask_timeout, command } => session::main(session::Session {
            policy: Some(policy),
            subject: session::Subject::Command(command),
            learn: false,
            events,
            duration: None,
            verifier_log,
            ask: ask.then(|| Duration::from_secs(ask_timeout)),
        }),
        Command::Prompt { socket } => prompt::main(socket),
        Command::Learn { policy, output, cgroup, unit, duration, verifier_log, command } => {
            let subject = match (cgroup, unit) {
                (Some(c), _) => {
                    session::Subject::Target(policy::Target::Cgroup(format!("/{}", c.trim_start_matches('/'))))
                }
                (None, Some(u)) => session::Subject::Target(policy::Target::Unit { name: u, user: None }),
                (None, None) if !command.is_empty() => session::Subject::Command(command),
                (None, None) => {
                    eprintln!("systrace-agent: learn what? give -- CMD ARGS, --cgroup PATH or --unit NAME");
                    return ExitCode::from(2);
                }
            };
            session::main(session::Session {
                policy,
                subject,
                learn: true,
                events: Some(output),
                duration: duration.map(Duration::from_secs),
                verifier_log,
                ask: None,
            })
        }
        Command::Generate { observations, output, name, collapse, from_denials } => {
            authoring::generate(&observations, &output, name, collapse, from_denials)
        }
        Command::Replay { policy, observations } => authoring::replay(&policy, &observations),
        Command::Review { observations, output, collapse, from_denials } => {
            authoring::review(&observations, &output, collapse, from_denials)
        }
        Command::Detach => detach(),
        Command::Run { policies, policy_dir, config, stats_interval, verifier_log, handover, bench_detach_signal } => {
            // A bad configuration is refused before anything is loaded.
            let config = match config.as_deref().map(Config::load).transpose() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("systrace-agent: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let from_file = config.as_ref();
            let dir = policy_dir.or_else(|| from_file.filter(|_| policies.is_empty()).map(|c| c.policy_dir.clone()));
            let sources = Sources { files: policies, dir };
            let options = Options {
                stats_interval: if stats_interval > 0 {
                    stats_interval
                } else {
                    from_file.map_or(0, |c| c.stats_interval)
                },
                verifier_log,
                handover: handover || from_file.is_some_and(|c| c.handover),
                bench_detach_signal,
                config: config.unwrap_or_default(),
            };
            runtime.block_on(run(&sources, &options))
        }
    }
}

fn detach() -> ExitCode {
    let dirs = pins::others(Path::new(pins::PIN_ROOT), None);
    if dirs.is_empty() {
        eprintln!("systrace-agent: nothing pinned under {}", pins::PIN_ROOT);
    }
    let mut failed = false;
    let mut ids = Vec::new();
    for dir in dirs {
        if pins::owner_alive(&dir) {
            // Its programs stay attached through its descriptors anyway; stopping
            // it (SIGTERM) is how its enforcement ends.
            eprintln!(
                "systrace-agent: {} belongs to a running agent; left alone (stop it with SIGTERM)",
                dir.display()
            );
            continue;
        }
        ids.extend(pins::program_ids(&dir));
        pins::end_session(&dir, &cgroup2_root());
        match pins::remove_dir(&dir) {
            Ok(n) => eprintln!("systrace-agent: removed {n} pinned programs in {}", dir.display()),
            Err(e) => {
                eprintln!("systrace-agent: {e:#}");
                failed = true;
            }
        }
    }
    if !ids.is_empty() {
        eprintln!("systrace-agent: waiting for the kernel to detach {} programs", ids.len());
        let started = std::time::Instant::now();
        if pins::wait_released(&ids, Duration::from_secs(120)) {
            eprintln!("systrace-agent: detached after {:.1?}", started.elapsed());
        } else {
            eprintln!("systrace-agent: some programs are still attached after 120 s");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What parsing needs to know about this host.
fn host() -> Host {
    host_for(None, None)
}

/// As [`host`], with a command's `$HOME` among the homes and the target of
/// policies that name none (`exec`, `learn`).
pub(crate) fn host_for(home: Option<PathBuf>, default_target: Option<policy::Target>) -> Host {
    Host {
        cgroup_root: cgroup2_root(),
        local_addresses: local_addresses(),
        homes: systrace_agent::homes::system_homes(home),
        default_target,
    }
}

/// This host's interface addresses, for `address = "local"`.
fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, which freeifaddrs releases below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            match unsafe { (*entry.ifa_addr).sa_family } as i32 {
                libc::AF_INET => {
                    let sa = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                    out.push(std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    let sa = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(std::net::IpAddr::V6(std::net::Ipv6Addr::from(sa.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: the list came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    out.sort();
    out.dedup();
    out
}

pub(crate) fn read_and_parse(file: &Path, host: &Host) -> Result<Policy, Diagnostic> {
    let text = std::fs::read_to_string(file).map_err(|e| Diagnostic {
        severity: Severity::Error,
        location: policy::Location { file: file.to_path_buf(), line: 1, column: 1 },
        message: format!("cannot read: {e}"),
    })?;
    policy::parse(file, &text, host)
}

/// The target `check` gives a policy that names none: such a policy is for
/// `exec` and `learn`, which bind it to a command's own cgroup.
pub(crate) const NO_TARGET: &str = "/systrace.exec/<command>";

fn check(files: &[PathBuf]) -> ExitCode {
    let host = host_for(None, Some(policy::Target::Cgroup(NO_TARGET.into())));
    let mut errors = 0;
    let mut parsed = Vec::new();
    for file in files {
        match read_and_parse(file, &host) {
            Ok(policy) => {
                // Not errors: rules follow names, and a path or a cgroup may
                // appear later (the rule and the binding apply as it does).
                for spec in &policy.files {
                    if let Err(e) = std::fs::metadata(&spec.path) {
                        let d = Diagnostic {
                            severity: Severity::Warning,
                            location: spec.location.clone(),
                            message: format!("{}: {e}; the rule applies once it exists", spec.path.display()),
                        };
                        eprintln!("{d}");
                    }
                }
                if policy.target == policy::Target::Cgroup(NO_TARGET.into()) {
                    println!(
                        "{}: ok ({} file rules; no target: for `exec` and `learn` only)",
                        file.display(),
                        policy.files.len()
                    );
                    continue;
                }
                if let policy::Target::Cgroup(path) = &policy.target {
                    if !host.cgroup_root.join(path.trim_start_matches('/')).is_dir() {
                        let l = &policy.target_location;
                        eprintln!(
                            "{}:{}:{}: warning: cgroup {path} does not exist (yet); it is confined as soon as it is made",
                            l.file.display(),
                            l.line,
                            l.column,
                        );
                    }
                }
                println!("{}: ok ({} file rules)", file.display(), policy.files.len());
                parsed.push(policy);
            }
            Err(d) => {
                eprintln!("{d}");
                errors += 1;
            }
        }
    }
    for d in policy::check_conflicts(&parsed) {
        eprintln!("{d}");
        errors += 1;
    }
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Where the policies come from: files named on the command line and the *.toml
/// files of a directory, read again on every reload.
struct Sources {
    files: Vec<PathBuf>,
    dir: Option<PathBuf>,
}

impl Sources {
    /// The policy files. A directory that cannot be read is an error, not an
    /// empty set: a renamed or unreadable directory must not unconfine anything.
    fn list(&self) -> Result<Vec<PathBuf>, Diagnostic> {
        let mut all = self.files.clone();
        if let Some(dir) = &self.dir {
            let entries = std::fs::read_dir(dir).map_err(|e| Diagnostic {
                severity: Severity::Error,
                location: policy::Location { file: dir.clone(), line: 1, column: 1 },
                message: format!("cannot read the policy directory: {e}"),
            })?;
            let mut found = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| Diagnostic {
                    severity: Severity::Error,
                    location: policy::Location { file: dir.clone(), line: 1, column: 1 },
                    message: format!("cannot read the policy directory: {e}"),
                })?;
                let path = entry.path();
                if path.extension().is_some_and(|x| x == "toml") {
                    found.push(path);
                }
            }
            found.sort();
            all.extend(found);
        }
        Ok(all)
    }

    /// Directories to watch for changes.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .files
            .iter()
            .map(|f| f.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf())
            .chain(self.dir.clone())
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// Parses and checks every policy; all of them or none.
fn parse_all(sources: &Sources) -> Result<Vec<Policy>, Vec<Diagnostic>> {
    let host = host();
    let files = sources.list().map_err(|d| vec![d])?;
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match read_and_parse(&file, &host) {
            Ok(p) => parsed.push(p),
            Err(d) => errors.push(d),
        }
    }
    errors.extend(policy::check_conflicts(&parsed));
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

/// Compiles parsed policies for the running programs (whose hash key they need).
fn compile_all(parsed: &[Policy], key: [u64; 2]) -> Result<Vec<Compiled>, Vec<Diagnostic>> {
    let mut compiled = Vec::new();
    let mut errors = Vec::new();
    for p in parsed {
        match policy::compile(p, &SystemResolver, key) {
            Ok(c) => compiled.push(c),
            Err(d) => errors.push(d),
        }
    }
    if errors.is_empty() {
        Ok(compiled)
    } else {
        Err(errors)
    }
}

/// Reasons a host cannot enforce that are visible before loading anything.
fn preflight() -> Result<(), String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if let Some(note) = systrace_agent::kernels::judge(release.trim())? {
        eprintln!("systrace-agent: note: {note}");
    }
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
        Some(libc::EINVAL) if failure.verifier_log.is_some() => {
            format!("the verifier rejected a program ({:#}); run with --verifier-log for details", failure.error)
        }
        _ => format!("{:#}", failure.error),
    }
}

fn load_enforcer(verifier_log: bool) -> Result<Enforcer, String> {
    preflight()?;
    offsets::load_modules();
    let layout = offsets::resolve(Path::new(offsets::VMLINUX_BTF)).map_err(|e| format!("{e:#}"))?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let missing: Vec<(&str, Option<&str>)> = layout.missing_hooks.iter().map(|h| (h.name(), h.since())).collect();
    systrace_agent::kernels::check_missing_hooks(release.trim(), &missing)?;
    Enforcer::load(&layout).map_err(|failure| {
        if verifier_log {
            if let Some(log) = &failure.verifier_log {
                eprintln!("{log}");
            }
        }
        explain(&failure)
    })
}

fn probe() -> ExitCode {
    offsets::load_modules();
    match offsets::resolve(Path::new(offsets::VMLINUX_BTF)) {
        Ok(layout) => {
            for (&o, &(strukt, field)) in layout.offsets.iter().zip(systrace_common::OFFSET_FIELDS) {
                let strukt = strukt.trim_start_matches('?');
                if o == systrace_common::OFFSET_ABSENT {
                    println!("{strukt}.{field}: not in this kernel");
                } else {
                    println!("{strukt}.{field} = {o}");
                }
            }
            for &hook in systrace_common::Hook::ALL {
                if !layout.has(hook) {
                    println!("hook {}: not in this kernel (since {})", hook.name(), hook.since().unwrap_or("?"));
                    continue;
                }
                let slot = &layout.hook_args[hook.slot()..hook.slot() + systrace_common::HOOK_ARG_SLOTS];
                let args: Vec<String> =
                    hook.args().iter().enumerate().map(|(k, a)| format!("{a}@{}", slot[1 + k])).collect();
                println!("hook {}: {} arguments; reads {}", hook.name(), slot[0], args.join(" "));
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

/// Every record the agent emits: JSON lines on standard output (buffered: a
/// flood of events costs one write per batch, not one per event), and the
/// configured sinks.
struct Output {
    stdout: Option<std::io::BufWriter<std::io::Stdout>>,
    telemetry: Telemetry,
}

impl Output {
    fn new(stdout: bool, telemetry: Telemetry) -> Self {
        Output { stdout: stdout.then(|| std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout())), telemetry }
    }

    fn emit(&mut self, value: &impl serde::Serialize) {
        if !self.telemetry.has_sinks() {
            if let Some(out) = &mut self.stdout {
                // A closed stdout (the reader went away) must not stop enforcement.
                let _ = serde_json::to_writer(&mut *out, value);
                let _ = out.write_all(b"\n");
            }
            return;
        }
        let Ok(value) = serde_json::to_value(value) else {
            return;
        };
        if let Some(out) = &mut self.stdout {
            let _ = serde_json::to_writer(&mut *out, &value);
            let _ = out.write_all(b"\n");
        }
        self.telemetry.offer(value);
    }

    fn flush(&mut self) {
        if let Some(out) = &mut self.stdout {
            let _ = out.flush();
        }
    }
}

/// Ring records handled per wake-up before the other sources (signals, reloads,
/// the stats timer) get a turn: a flood of violations must not starve a reload.
pub(crate) const EVENT_BATCH: usize = 512;

struct Options {
    stats_interval: u64,
    verifier_log: bool,
    handover: bool,
    bench_detach_signal: bool,
    /// Sinks and limits (the defaults without --config: standard output only).
    config: Config,
}

async fn run(sources: &Sources, options: &Options) -> ExitCode {
    let started = std::time::Instant::now();
    // Validate everything before touching the kernel: a bad file loads nothing.
    let parsed = match parse_all(sources) {
        Ok(p) => p,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let mut enforcer = match load_enforcer(options.verifier_log) {
        Ok(e) => e,
        Err(why) => {
            eprintln!("systrace-agent: cannot enforce: {why}");
            return ExitCode::from(EXIT_CANNOT_ENFORCE);
        }
    };
    let compiled = match compile_all(&parsed, enforcer.name_key()) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    drop(parsed);
    // Sinks open before anything is put in force or taken over: a file that
    // cannot be written stops here, leaving the programs of an agent before
    // this one enforcing.
    let telemetry = match Telemetry::start(&options.config, kernel_release()).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("systrace-agent: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = serve(&mut enforcer, sources, compiled, options, started, telemetry).await;
    let handed_over = matches!(result, Ok(Stop::Handover));
    if handed_over {
        // The pins stay: the programs keep enforcing the policies in force until
        // the next agent takes them over.
        eprintln!("systrace-agent: leaving the programs pinned for the next agent");
        std::mem::forget(enforcer);
        return ExitCode::SUCCESS;
    }
    // A clean stop ends enforcement: the pins go, and dropping the enforcer
    // detaches the programs and frees the maps. Only a killed agent leaves them.
    enforcer.unpin();
    let own = Path::new(pins::PIN_ROOT).join(std::process::id().to_string());
    let _ = std::fs::remove_dir(own);
    let ids = enforcer.pinned_ids().to_vec();
    drop(enforcer);
    // The kernel releases links in the background; return once it has, so that
    // "the agent exited" means "nothing is enforced any more".
    if !ids.is_empty() && !pins::wait_released(&ids, Duration::from_secs(60)) {
        eprintln!("systrace-agent: some programs were still attached 60 s after detaching");
    }
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("systrace-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How the agent stopped.
enum Stop {
    /// SIGINT or SIGTERM: detach.
    Detach,
    /// SIGTERM with `--handover`: leave the programs enforcing.
    Handover,
}

/// Puts a compiled set in force, replacing the set in force; returns the
/// policies for the status line.
fn apply(enforcer: &mut Enforcer, compiled: &[Compiled], names: &mut PolicyNames) -> Result<serde_json::Value> {
    for c in compiled {
        for w in &c.warnings {
            eprintln!("{w}");
        }
    }
    let installed = enforcer.install(compiled, &cgroup2_root())?;
    let mut paths_by_name = std::collections::HashMap::new();
    for (i, c) in compiled.iter().enumerate() {
        names.by_slot.insert(installed.slots[i], c.name.clone());
        let paths = installed.inode_paths[i].iter().map(|(id, p)| ((id.dev, id.ino), p.clone())).collect();
        paths_by_name.insert(c.name.clone(), paths);
        let bound: Vec<String> = installed
            .bound
            .iter()
            .filter(|(p, _, _)| *p == i)
            .map(|(_, id, path)| format!("{path} (id {id})"))
            .collect();
        eprintln!(
            "systrace-agent: policy {} confines {}: {} path nodes, {} inode rules; bound now: {}",
            c.name,
            c.target,
            c.tree.entries.len(),
            installed.inode_paths[i].len(),
            if bound.is_empty() { "none yet (bound as it appears)".to_string() } else { bound.join(", ") }
        );
        for (protection, reason) in &c.protections_off {
            eprintln!("systrace-agent: policy {}: {protection} protection is off: {reason}", c.name);
        }
    }
    names.paths = paths_by_name;
    Ok(policies_json(compiled, &installed))
}

/// Has the deny rules in force follow the files that bear their names now
/// (see [`Enforcer::refresh_identities`]), and reports each one added as a
/// `follow` line.
fn follow_new_files(enforcer: &mut Enforcer, names: &mut PolicyNames, out: &mut Output) {
    match enforcer.refresh_identities() {
        Ok(added) => {
            for (slot, id, path) in added {
                let policy = names.by_slot.get(&slot).cloned().unwrap_or_default();
                out.emit(&json!({
                    "type": "follow",
                    "policy": policy,
                    "path": path,
                    "dev": policy::format_kernel_dev(id.dev),
                    "ino": id.ino,
                }));
                names.paths.entry(policy).or_default().insert((id.dev, id.ino), path);
            }
            out.flush();
        }
        Err(e) => eprintln!("systrace-agent: following the files deny rules name: {e:#}"),
    }
}

/// Gives freed heap back to the system. Parsing a large policy builds a document
/// many times the file's size; glibc keeps those pages after it is dropped (233 MiB
/// resident with 100,000 rules before this).
fn release_memory() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

fn policies_json(compiled: &[Compiled], installed: &enforcer::Installed) -> serde_json::Value {
    serde_json::Value::Array(
        compiled
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let off: Vec<_> =
                    c.protections_off.iter().map(|(n, why)| json!({"protection": n, "reason": why})).collect();
                let bound: Vec<_> = installed
                    .bound
                    .iter()
                    .filter(|(p, _, _)| *p == i)
                    .map(|(_, id, path)| json!({"cgroup": path, "cgroup_id": id}))
                    .collect();
                json!({
                    "name": c.name,
                    "policy_id": installed.slots[i],
                    "target": c.target.to_string(),
                    "bound": bound,
                    "path_nodes": c.tree.entries.len(),
                    "inode_rules": installed.inode_paths[i].len(),
                    // Whether its processes could write a cgroup's process
                    // list, which keeps inode_permission attached.
                    "move_check": c.needs_move_check(),
                    "capabilities": systrace_agent::policy::capability_names(c.info.capabilities),
                    "protections_off": off,
                })
            })
            .collect(),
    )
}

/// Whether `dir` is the pin directory of an `exec` or `learn` agent.
fn is_session(dir: &Path) -> bool {
    dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(pins::SESSION_PREFIX))
}

/// Pins this agent's links, then removes the pins earlier agents left: their
/// programs enforced until this moment, and ours already do. Without a bpffs
/// the agent still enforces, but only for as long as it lives.
fn pin(enforcer: &mut Enforcer) -> Result<(Option<PathBuf>, Vec<gap::Previous>)> {
    let root = Path::new(pins::PIN_ROOT);
    let own = match pins::prepare(root) {
        Ok(own) => own,
        Err(e) => {
            eprintln!("systrace-agent: warning: not pinned, enforcement ends with this process: {e:#}");
            return Ok((None, Vec::new()));
        }
    };
    let mut previous = Vec::new();
    // A failure here has taken links out of the program: fatal, not a warning.
    enforcer.pin(&own)?;
    let others: Vec<PathBuf> =
        pins::others(root, Some(&own)).into_iter().filter(|dir| !(is_session(dir) && pins::owner_alive(dir))).collect();
    // Before any of their pins goes: a write their policies allowed may still
    // be on its way to the kernel's move check (see `Enforcer::keep_move_check`).
    if others.iter().any(|dir| dir.join(systrace_common::Hook::InodePermission.name()).exists()) {
        enforcer.keep_move_check()?;
    }
    for dir in others {
        let session = is_session(&dir);
        pins::end_session(&dir, &cgroup2_root());
        if !session {
            // Its ring buffer stays open here after its pins go, to be read.
            previous.push(gap::Previous::open(&dir));
        }
        match pins::remove_dir(&dir) {
            Ok(n) => eprintln!("systrace-agent: took over from {}: {n} pinned programs detached", dir.display()),
            Err(e) => eprintln!("systrace-agent: taking over from {}: {e:#}", dir.display()),
        }
    }
    Ok((Some(own), previous))
}

/// `started`: when the agent began reading policies, for the load time it reports.
async fn serve(
    enforcer: &mut Enforcer,
    sources: &Sources,
    compiled: Vec<Compiled>,
    options: &Options,
    started: std::time::Instant,
    telemetry: Telemetry,
) -> Result<Stop> {
    let stats_interval = options.stats_interval;
    let mut names = PolicyNames::default();
    // Events a previous agent's programs reported before this instant were
    // reported by them alone (see gap.rs).
    let attach_started = events::boot_ns();
    let policies = apply(enforcer, &compiled, &mut names)?;
    let (pinned, mut previous) = if options.bench_detach_signal { (None, Vec::new()) } else { pin(enforcer)? };
    drop(compiled);
    release_memory();
    // SAFETY: the ring buffer owns its file descriptor, and AsyncFd owns the ring
    // buffer, so the descriptor stays open for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register(enforcer.take_events()?) }
        .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
    let new_watcher = || -> Result<AsyncFd<watch::DirWatcher>> {
        let watcher = watch::DirWatcher::new(sources.dirs().iter().map(PathBuf::as_path))?;
        // SAFETY: as above, the watcher owns its descriptor.
        unsafe { AsyncFd::register(watcher) }.map_err(|e| anyhow::anyhow!("watching the policy files: {e}"))
    };
    let mut watcher = new_watcher()?;
    // The names deny rules follow: a new file there is followed too.
    let new_anchor_watcher = |enforcer: &Enforcer| -> Result<AsyncFd<watch::DirWatcher>> {
        let names = enforcer.anchor_names();
        let watcher = watch::DirWatcher::names(names.iter().map(|(dir, names)| (dir.as_path(), names)))?;
        // SAFETY: as above, the watcher owns its descriptor.
        unsafe { AsyncFd::register(watcher) }.map_err(|e| anyhow::anyhow!("watching the files deny rules name: {e}"))
    };
    let mut anchors = new_anchor_watcher(enforcer)?;
    let clock = Clock::now();
    let mut out = Output::new(options.config.stdout, telemetry);
    let ring_fill = RingFill::new(ring.get_ref());
    let mut delivered: u64 = 0;
    let mut generation: u64 = 0;
    // Handlers before the "enforcing" line: whoever reads it may signal at
    // once (logrotate's SIGUSR1), and the default action of SIGUSR1 is to exit.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // SIGUSR1: a stats line now. SIGUSR2 (benchmarks only): detach / re-attach.
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    let mut sigusr2 = signal(SignalKind::user_defined2())?;
    let missing: Vec<_> =
        enforcer.missing_hooks().iter().map(|h| json!({"hook": h.name(), "since": h.since()})).collect();
    out.emit(&json!({
        "type": "status",
        "state": "enforcing",
        "generation": generation,
        "load_ms": started.elapsed().as_millis() as u64,
        "pinned": pinned,
        "hooks_not_in_this_kernel": missing,
        // Without the layout, what overlayfs does on its layers for a confined
        // process (copy-up, reads through its backing files) is decided as that
        // process's own access to the layers' paths.
        "overlayfs_layout_known": enforcer.knows(systrace_common::Off::OVL_FS_CREATOR_CRED),
        // Without rename_lock and mount_lock in /proc/kallsyms, every file
        // decision walks the path (see the README's Performance section).
        "walk_cache": enforcer.walk_cache(),
        "move_check_attached": enforcer.move_check(),
        "policies": policies,
    }));
    out.flush();
    // A file replaced between the identities' probe and the watch.
    follow_new_files(enforcer, &mut names, &mut out);
    // Only now, enforcing, may systemd start what is ordered after the agent.
    let notifier = notify::Notifier::from_env();
    notifier.ready(&format!("enforcing, generation {generation}"));
    let watchdog_period = notifier.watchdog_period().unwrap_or(Duration::from_secs(3600 * 24 * 365));
    let mut watchdog = tokio::time::interval(watchdog_period);

    let mut attachment = enforcer::Attachment::Enforcing;
    let period =
        if stats_interval == 0 { Duration::from_secs(3600 * 24 * 365) } else { Duration::from_secs(stats_interval) };
    let mut stats_timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let stats = |enforcer: &Enforcer, delivered: u64, telemetry: &Telemetry| -> Result<serde_json::Value> {
        let mut line = json!({
            "telemetry": telemetry.stats_json(),
            "type": "stats",
            "events_delivered": delivered,
            "move_check_attached": enforcer.move_check(),
        });
        for (counter, key, _) in KERNEL_COUNTERS {
            line[key] = enforcer.counter(counter)?.into();
        }
        if options.bench_detach_signal {
            line["programs"] = enforcer.program_stats().into();
        }
        Ok(line)
    };
    // `read_here`: from this agent's ring buffer, not a previous agent's
    // recovered after a takeover (those go out the same way, not counted as read).
    let emit_record = |out: &mut Output, record: Record, read_here: bool| match record {
        Record::Event(e) => {
            if out.telemetry.admit_event(
                e.cgroup_id,
                e.policy_id,
                &e.policy,
                e.hook,
                e.verdict,
                events::boot_ns(),
                read_here,
            ) {
                out.emit(&e);
            }
        }
        Record::Bound(b) => out.emit(&b),
    };
    // Once a second: rate-limit summaries, the metrics' and the API's view of
    // the kernel's counters, how far this agent has read (for the next one),
    // and the previous agent's unread events once its programs are gone.
    let mut telemetry_timer = tokio::time::interval(Duration::from_secs(1));
    // The maps' fill is counted key by key: at start, after reloads, once a minute.
    let mut maps_counted_at: Option<std::time::Instant> = None;
    // A change notification starts this timer; the reload runs when it fires, so
    // an editor's several writes make one reload.
    let debounce = Duration::from_millis(50);
    let mut reload_at: Option<tokio::time::Instant> = None;
    let stop = loop {
        let reload_timer = async {
            match reload_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut reload = false;
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                let mut handled = 0;
                while handled < EVENT_BATCH {
                    let Some(record) = ring.next() else { break };
                    handled += 1;
                    match events::decode(&record) {
                        Some(event) => {
                            emit_record(&mut out, events::render(&event, &clock, &names), true);
                            delivered += 1;
                        }
                        None => eprintln!("systrace-agent: skipped a ring record of {} bytes", record.len()),
                    }
                }
                // A full batch means more may be waiting: stay ready, so the next
                // turn of the loop comes back here after the other sources.
                if handled < EVENT_BATCH {
                    guard.clear_ready();
                }
                out.flush();
                // Where this agent stopped reading, for the one that may have
                // to take over after a crash (one map update per batch).
                if handled > 0 {
                    let read = out.telemetry.metrics.events_read.load(std::sync::atomic::Ordering::Relaxed);
                    if let Err(e) = enforcer.record_read(read) {
                        eprintln!("systrace-agent: recording the events read: {e:#}");
                    }
                }
            }
            guard = watcher.readable() => {
                let mut guard = guard?;
                if guard.get_inner().drain() {
                    reload_at = Some(tokio::time::Instant::now() + debounce);
                }
                guard.clear_ready();
            }
            guard = anchors.readable() => {
                let mut guard = guard?;
                if guard.get_inner().drain() {
                    follow_new_files(enforcer, &mut names, &mut out);
                }
                guard.clear_ready();
            }
            _ = reload_timer => reload = true,
            _ = sighup.recv() => reload = true,
            _ = stats_timer.tick() => {
                let line = stats(enforcer, delivered, &out.telemetry)?;
                out.emit(&line);
                out.flush();
            }
            _ = sigusr1.recv() => {
                // logrotate's signal: the JSON file is opened by its name again.
                out.telemetry.reopen();
                let line = stats(enforcer, delivered, &out.telemetry)?;
                out.emit(&line);
                out.flush();
            }
            _ = telemetry_timer.tick() => {
                for summary in out.telemetry.summaries(events::boot_ns(), &events::now_rfc3339()) {
                    out.emit(&summary);
                }
                out.flush();
                // A batch a second, so the sinks' queues empty in between.
                if let Some(i) = previous.iter().position(gap::Previous::settled) {
                    let done = previous[i].drain(attach_started, 4 * EVENT_BATCH, |event| {
                        emit_record(&mut out, events::render(event, &clock, &names), false);
                    });
                    if let Some(gap) = done {
                        previous.swap_remove(i);
                        eprintln!("systrace-agent: telemetry gap after agent {}: {gap}", gap["previous_agent"]);
                        out.emit(&gap);
                    }
                }
                out.telemetry.metrics.set_kernel(kernel_counters(enforcer));
                if maps_counted_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    out.telemetry.metrics.set_maps(enforcer.map_fill());
                    maps_counted_at = Some(std::time::Instant::now());
                }
                if out.telemetry.api.is_some() {
                    let counters = stats(enforcer, delivered, &out.telemetry)?;
                    out.telemetry.set_counters(counters);
                }
                if let Some(fill) = &ring_fill {
                    out.telemetry.metrics.set_ring(fill.used(), fill.size);
                }
            }
            _ = sigusr2.recv(), if options.bench_detach_signal => {
                attachment = attachment.next();
                enforcer.set_attachment(attachment)?;
                out.emit(&json!({"type": "status", "state": attachment.name()}));
                out.flush();
            }
            _ = watchdog.tick() => notifier.send("WATCHDOG=1"),
            _ = sigterm.recv() => break if options.handover { Stop::Handover } else { Stop::Detach },
            _ = sigint.recv() => break Stop::Detach,
        }
        if reload {
            reload_at = None;
            generation += 1;
            notifier.reloading();
            // Watch anew before reading: a renamed or recreated directory is
            // watched under its name again, and a change made while this
            // reload runs starts the next one.
            match new_watcher() {
                Ok(w) => watcher = w,
                Err(e) => eprintln!("systrace-agent: watching the policy files again: {e:#}"),
            }
            let started = std::time::Instant::now();
            let result = parse_all(sources)
                .and_then(|parsed| compile_all(&parsed, enforcer.name_key()))
                .map_err(|errors| errors.iter().map(|e| e.to_string()).collect::<Vec<_>>());
            release_memory();
            match result {
                Ok(compiled) => match apply(enforcer, &compiled, &mut names) {
                    Ok(policies) => {
                        out.telemetry.metrics.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        maps_counted_at = None;
                        match new_anchor_watcher(enforcer) {
                            Ok(w) => anchors = w,
                            Err(e) => eprintln!("systrace-agent: {e:#}"),
                        }
                        // A file replaced between the identities' probe and the
                        // new watch.
                        follow_new_files(enforcer, &mut names, &mut out);
                        out.emit(&json!({
                            "type": "status",
                            "state": "reloaded",
                            "generation": generation,
                            "load_ms": started.elapsed().as_millis() as u64,
                            "move_check_attached": enforcer.move_check(),
                            "policies": policies,
                        }))
                    }
                    Err(e) => {
                        eprintln!("systrace-agent: reload failed while installing, the policies in force stay in force: {e:#}");
                        out.telemetry.metrics.reload_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        out.emit(&json!({"type": "status", "state": "reload-failed", "generation": generation, "errors": [format!("{e:#}")]}));
                    }
                },
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    eprintln!("systrace-agent: reload refused; the policies in force stay in force");
                    out.telemetry.metrics.reload_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    out.emit(&json!({"type": "status", "state": "reload-failed", "generation": generation, "errors": errors}));
                }
            }
            out.flush();
            // Enforcing either way: the new policies, or those in force before.
            notifier.ready(&format!("enforcing, generation {generation}"));
        }
    };
    notifier.stopping();
    // A previous agent's ring buffer not drained yet: as much as a moment
    // allows, then its account, marked incomplete when something is left.
    for mut prev in previous {
        let done = prev.drain(attach_started, 64 * EVENT_BATCH, |event| {
            emit_record(&mut out, events::render(event, &clock, &names), false);
        });
        out.emit(&done.unwrap_or_else(|| prev.abandon()));
    }
    // Drain what is left so the final counts add up.
    let ring = ring.get_mut();
    while let Some(record) = ring.next() {
        if let Some(event) = events::decode(&record) {
            emit_record(&mut out, events::render(&event, &clock, &names), true);
            delivered += 1;
        }
    }
    out.flush();
    // The next agent counts from here.
    let _ = enforcer.record_read(out.telemetry.metrics.events_read.load(std::sync::atomic::Ordering::Relaxed));
    // The sinks write what they hold (2 s at most), so the last account is final.
    out.telemetry.finish(Duration::from_secs(2)).await;
    let last = stats(enforcer, delivered, &out.telemetry)?;
    match &mut out.stdout {
        Some(stdout) => {
            let _ = serde_json::to_writer(&mut *stdout, &last);
            let _ = stdout.write_all(b"\n");
        }
        None => eprintln!("{last}"),
    }
    out.flush();
    match stop {
        Stop::Detach => eprintln!("systrace-agent: detaching"),
        Stop::Handover => {}
    }
    Ok(stop)
}

/// The kernel's release (`uname -r`), for the build-info metric.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The kernel's counters as metrics.
/// The kernel side's counters, once for both places they show: the `stats`
/// record's key, and the metric's name and help (none: not a metric).
type Metric = Option<(&'static str, &'static str)>;
const KERNEL_COUNTERS: [(Counter, &str, Metric); 10] = [
    (
        Counter::Reported,
        "events_reported",
        Some(("systrace_events_reported_total", "Events the programs produced (denials, audits, learned accesses).")),
    ),
    (
        Counter::RingFull,
        "ring_full_drops",
        Some((
            "systrace_events_ring_full_total",
            "Events lost in the kernel: the ring buffer was full (the verdict stood).",
        )),
    ),
    (
        Counter::ScratchBusy,
        "scratch_busy_drops",
        Some((
            "systrace_events_scratch_busy_total",
            "Events lost in the kernel: the per-CPU scratch space was busy (the verdict stood).",
        )),
    ),
    (Counter::Denied, "denied", Some(("systrace_kernel_denied_total", "Operations the programs denied."))),
    (
        Counter::WalkUndecided,
        "walk_undecided",
        Some((
            "systrace_walk_undecided_total",
            "Decisions made without the file's path (deny rules assumed to apply).",
        )),
    ),
    (
        Counter::CgroupsBound,
        "cgroups_bound",
        Some(("systrace_cgroups_bound_total", "Cgroups bound to a policy as they appeared.")),
    ),
    (
        Counter::BindFailed,
        "cgroups_bind_failed",
        Some((
            "systrace_cgroups_bind_failed_total",
            "Cgroups a policy names that could not be bound as they appeared.",
        )),
    ),
    (Counter::LearnRepeats, "learn_repeats", None),
    (
        Counter::WalkCacheHits,
        "walk_cache_hits",
        Some(("systrace_walk_cache_hits_total", "File decisions answered from the walk cache.")),
    ),
    (
        Counter::WalkCacheMisses,
        "walk_cache_misses",
        Some(("systrace_walk_cache_misses_total", "File decisions that walked the path (nothing valid remembered).")),
    ),
];

fn kernel_counters(enforcer: &Enforcer) -> Vec<telemetry::metrics::KernelCounter> {
    KERNEL_COUNTERS
        .into_iter()
        .filter_map(|(counter, _, metric)| {
            let (name, help) = metric?;
            Some(telemetry::metrics::KernelCounter { name, help, value: enforcer.counter(counter).ok()? })
        })
        .collect()
}

/// How full the ring buffer is: its producer and consumer positions, read from
/// the two pages the kernel shares with user space (mapped read-only here).
struct RingFill {
    consumer: *const u64,
    producer: *const u64,
    page: usize,
    size: u64,
}

impl RingFill {
    fn new(ring: &impl std::os::fd::AsRawFd) -> Option<RingFill> {
        let fd = ring.as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        let size = info.lines().find_map(|l| l.strip_prefix("max_entries:"))?.trim().parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let map = |offset: usize| {
            // SAFETY: a fresh read-only shared mapping of one page of the ring
            // buffer's descriptor; the kernel allows it for both positions' pages.
            let p = unsafe {
                libc::mmap(std::ptr::null_mut(), page, libc::PROT_READ, libc::MAP_SHARED, fd, offset as libc::off_t)
            };
            (p != libc::MAP_FAILED).then_some(p as *const u64)
        };
        let consumer = map(0)?;
        let Some(producer) = map(page) else {
            // SAFETY: consumer was mapped above with this length.
            unsafe { libc::munmap(consumer as *mut _, page) };
            return None;
        };
        Some(RingFill { consumer, producer, page, size })
    }

    fn used(&self) -> u64 {
        // SAFETY: both pages stay mapped for the life of self; the kernel updates
        // the positions atomically, and a volatile read sees the current value.
        let (c, p) = unsafe { (std::ptr::read_volatile(self.consumer), std::ptr::read_volatile(self.producer)) };
        p.saturating_sub(c)
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: both were mapped in new() with this length.
        unsafe {
            libc::munmap(self.consumer as *mut _, self.page);
            libc::munmap(self.producer as *mut _, self.page);
        }
    }
}

//! `exec` and `learn`: one command confined from its first instruction, in a
//! cgroup of its own (systrace's `systrace -a cmd`), or one cgroup or unit
//! observed while it runs.
//!
//! The command's cgroup (`<cgroup2>/systrace.exec/<agent pid>`) is made and
//! bound to the policy before the command exists; the child joins it between
//! fork and exec, so the program's first instruction already runs confined.
//! This agent loads its own programs beside any service agent (two sets of
//! BPF LSM programs: an operation must pass both) and pins them under
//! `exec-<pid>`, which a service agent starting meanwhile leaves alone. If
//! this agent is killed, the pins keep the command confined (fail closed) and
//! the child, which asked for SIGKILL when its parent dies, goes with it;
//! `systrace-agent detach` removes what is left. On exit the cgroup's last
//! processes are killed (`cgroup.kill`) and the cgroup removed.

use std::{
    collections::HashSet,
    ffi::CString,
    io::{IsTerminal, Write as _},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::json;
use systrace_agent::{
    cgroups::{self, cgroup2_root},
    events::{self, Clock, PolicyNames, Record},
    learn,
    policy::{self, Mode, Policy, Target},
};
use systrace_common::Counter;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    apply,
    ask::{self, Answer, Desk, Reply},
    compile_all, host_for, load_enforcer, pins, EVENT_BATCH, EXIT_CANNOT_ENFORCE,
};

/// What `learn` observes.
pub enum Subject {
    /// A command, started in a transient cgroup.
    Command(Vec<String>),
    /// An existing (or future) cgroup or unit: a policy target line.
    Target(Target),
}

pub struct Session {
    /// The policy file; `learn` without one starts from an empty policy.
    pub policy: Option<PathBuf>,
    pub subject: Subject,
    /// `learn`: record what the policy does not allow (complain mode).
    pub learn: bool,
    /// Where event lines go (`learn`: the observations).
    pub events: Option<PathBuf>,
    /// `learn` on a target: stop after this long (otherwise at SIGINT/SIGTERM).
    pub duration: Option<Duration>,
    pub verifier_log: bool,
    /// `exec --ask`: hold what no rule decides until a person answers, or this long.
    pub ask: Option<Duration>,
}

/// A cgroup made for one command and removed after it.
struct Transient {
    dir: PathBuf,
    /// Relative to the cgroup2 root, with a leading '/'.
    relative: String,
}

impl Transient {
    fn create(root: &Path) -> Result<Self> {
        let relative = cgroups::session_cgroup(&std::process::id().to_string());
        let dir = root.join(relative.trim_start_matches('/'));
        if dir.exists() {
            // A previous agent with our pid died and left it: empty it first.
            cgroups::kill_and_remove(&dir);
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating the cgroup {}", dir.display()))?;
        Ok(Transient { dir, relative })
    }

    /// Kills what is left in the cgroup and removes it.
    fn remove(&self) {
        if !cgroups::kill_and_remove(&self.dir) {
            eprintln!("systrace-agent: could not remove the cgroup {}", self.dir.display());
        }
    }
}

/// The policy to load: the file's, or an empty one for `learn`, bound to `target`.
fn read_policy(session: &Session, target: &Target, home: Option<PathBuf>) -> Result<Policy, String> {
    let host = host_for(home, Some(target.clone()));
    let mut policy = match &session.policy {
        Some(file) => crate::read_and_parse(file, &host).map_err(|d| d.to_string())?,
        None => {
            let name = match &session.subject {
                Subject::Command(cmd) => {
                    Path::new(&cmd[0]).file_name().map_or("learned".into(), |n| n.to_string_lossy().into_owned())
                }
                Subject::Target(t) => t.to_string(),
            };
            let name = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
                .collect::<String>();
            let text = format!(
                "name = {}\nmode = \"learn\"\ndefault = \"deny\"\n",
                serde_json::to_string(&name).unwrap_or_default()
            );
            policy::parse(Path::new("<learn>"), &text, &host).map_err(|d| d.to_string())?
        }
    };
    if policy.target != *target {
        if session.policy.is_some() && matches!(session.subject, Subject::Command(_)) {
            eprintln!(
                "systrace-agent: the policy names {}; this command is confined in its own cgroup instead",
                policy.target
            );
        }
        policy.target = target.clone();
    }
    if session.learn {
        policy.mode = Mode::Learn;
    }
    Ok(policy)
}

/// Exit status of a child as a shell reports it.
fn status_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => 128u8.wrapping_add(s as u8),
        _ => 1,
    }
}

pub fn main(session: Session) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("systrace-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(session))
}

async fn run(session: Session) -> ExitCode {
    let root = cgroup2_root();
    // A command's $HOME is what ${HOME} rules mean for it; a unit's or a
    // cgroup's processes are not ours, and our $HOME says nothing about them.
    let home = match &session.subject {
        Subject::Command(_) => std::env::var_os("HOME").map(PathBuf::from),
        Subject::Target(_) => None,
    };
    // Validate before touching the kernel or the cgroups.
    let probe_target = Target::Cgroup("/systrace.exec/check".into());
    let target_for_check = match &session.subject {
        Subject::Command(_) => probe_target,
        Subject::Target(t) => t.clone(),
    };
    if let Err(e) = read_policy(&session, &target_for_check, home.clone()) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let mut enforcer = match load_enforcer(session.verifier_log) {
        Ok(e) => e,
        Err(why) => {
            eprintln!("systrace-agent: cannot enforce: {why}");
            return ExitCode::from(EXIT_CANNOT_ENFORCE);
        }
    };
    let transient = match &session.subject {
        Subject::Command(_) => match Transient::create(&root) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("systrace-agent: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        Subject::Target(_) => None,
    };
    let target = match (&transient, &session.subject) {
        (Some(t), _) => Target::Cgroup(t.relative.clone()),
        (None, Subject::Target(t)) => t.clone(),
        (None, Subject::Command(_)) => unreachable!("a command always has a transient cgroup"),
    };
    let result = async {
        let policy = read_policy(&session, &target, home.clone()).map_err(|e| anyhow::anyhow!(e))?;
        let compiled = compile_all(std::slice::from_ref(&policy), enforcer.name_key())
            .map_err(|errors| anyhow::anyhow!(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))?;
        let mut names = PolicyNames::default();
        if session.ask.is_some() {
            enforcer.keep_move_check()?;
        }
        let installed = apply(&mut enforcer, &compiled, &mut names)?;
        let slot = installed[0]["policy_id"].as_u64().unwrap_or(0) as u32;
        let pinned = match pins::prepare_named(
            Path::new(pins::PIN_ROOT),
            &format!("{}{}", pins::SESSION_PREFIX, std::process::id()),
        ) {
            Ok(own) => {
                enforcer.pin(&own)?;
                Some(own)
            }
            // Unpinned, whatever the command left behind would run on unconfined
            // should this agent be killed: refuse instead.
            Err(e) => {
                return Err(e.context("cannot pin the programs, which keep the command confined if this agent dies"))
            }
        };
        // Whatever happens from here, the pins go at the end (a clean stop).
        let code = async {
            let asking = match session.ask {
                Some(timeout) => Some(start_asking(policy.clone(), timeout, &target)?),
                None => None,
            };
            let mut state = State { names, slot, session_rules: Vec::new() };
            observe(&mut enforcer, &session, &mut state, transient.as_ref(), &target, home.as_deref(), asking).await
        }
        .await;
        if let Some(own) = pinned {
            enforcer.unpin();
            let _ = std::fs::remove_dir(own);
        }
        code
    }
    .await;
    if let Some(t) = &transient {
        t.remove();
    }
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("systrace-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the command in `cgroup` (after `fork`, before `exec`) and asks for
/// SIGKILL should this agent die first.
/// The program `name` runs, found on `$PATH` here (one execve in the child:
/// a search there would try, and under `--ask` ask about, every candidate).
fn program(name: &str) -> PathBuf {
    if name.contains('/') {
        return PathBuf::from(name);
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn spawn(command: &[String], cgroup: &Path, ask: Option<RawFd>) -> Result<tokio::process::Child> {
    let procs = CString::new(cgroup.join("cgroup.procs").into_os_string().into_encoded_bytes())?;
    let mut cmd = tokio::process::Command::new(program(&command[0]));
    cmd.arg0(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: only async-signal-safe calls (prctl, open, write, close) run
    // between fork and exec, on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if !ok {
                return Err(err);
            }
            // Last: from here on this process's opens and execs are held for
            // the agent, the execve that follows first.
            if let Some(sock) = ask {
                // Confined already: the policy may deny CAP_SYS_ADMIN, which
                // a filter needs without no_new_privs. It also keeps setuid
                // programs from lifting the command's privileges.
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let listener = crate::ask::install_filter()?;
                crate::ask::send_fd(sock, listener)?;
                libc::close(listener);
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {}", command[0]))
}

/// Streams events until the command exits (or the agent is told to stop), and
/// returns the exit status to give.
async fn observe(
    enforcer: &mut crate::enforcer::Enforcer,
    session: &Session,
    state: &mut State,
    transient: Option<&Transient>,
    target: &Target,
    home: Option<&Path>,
    asking: Option<(Desk, OwnedFd)>,
) -> Result<u8> {
    let (mut desk, child_sock) = match asking {
        Some((d, s)) => (Some(d), Some(s)),
        None => (None, None),
    };
    let mut questions = desk.as_mut().and_then(|d| d.questions.take());
    let mut answers = desk.as_mut().and_then(|d| d.answers.take());
    let listener = desk.as_mut().and_then(|d| d.listener.take());
    // SAFETY: the ring buffer owns its descriptor and AsyncFd owns the ring
    // buffer, so the descriptor stays open for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register(enforcer.take_events()?) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let mut out: Option<std::io::BufWriter<std::fs::File>> = match &session.events {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let write = |out: &mut Option<std::io::BufWriter<std::fs::File>>, value: &serde_json::Value| {
        if let Some(o) = out {
            let _ = serde_json::to_writer(&mut *o, value);
            let _ = o.write_all(b"\n");
        }
    };
    if session.learn {
        let header = learn::Header {
            kind: "learn".into(),
            command: match &session.subject {
                Subject::Command(c) => c.clone(),
                Subject::Target(_) => Vec::new(),
            },
            target: match (&session.subject, target) {
                (Subject::Target(Target::Unit { name, user: None }), _) => {
                    Some(format!("unit = {}", serde_json::to_string(name)?))
                }
                // Relative to the cgroup2 mount, as a policy names it.
                (Subject::Target(Target::Cgroup(c)), _) => {
                    Some(format!("cgroup = {}", serde_json::to_string(c.trim_start_matches('/'))?))
                }
                _ => None,
            },
            home: home.map(|h| h.display().to_string()),
        };
        write(&mut out, &serde_json::to_value(&header)?);
    }
    let mut child = match (&session.subject, transient) {
        (Subject::Command(cmd), Some(t)) => match spawn(cmd, &t.dir, child_sock.as_ref().map(|s| s.as_raw_fd())) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("systrace-agent: {e:#}");
                return Ok(127);
            }
        },
        _ => None,
    };
    // The command has its end; ours closing lets the notification thread see
    // the end of the socket should the command never send its listener.
    drop(child_sock);
    if let Some(d) = &desk {
        eprintln!("systrace-agent: questions go to {} (answer with `systrace-agent prompt`)", d.socket.display());
    }
    let child_pid = child.as_ref().and_then(|c| c.id());
    let what = if session.learn { "learning" } else { "confining" };
    eprintln!(
        "systrace-agent: {what} {}",
        match (&session.subject, child_pid) {
            (Subject::Command(cmd), Some(pid)) => format!("{} (pid {pid}) in {}", cmd.join(" "), target),
            _ => target.to_string(),
        }
    );
    let clock = Clock::now();
    let mut tally = Tally { distinct: HashSet::new(), last_new: Instant::now(), delivered: 0, denied: 0 };
    let tty = std::io::stderr().is_terminal();
    let mut progress = tokio::time::interval(Duration::from_secs(if tty { 1 } else { 10 }));
    progress.tick().await;
    let deadline = async {
        match session.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let handle =
        |record: &[u8], out: &mut Option<std::io::BufWriter<std::fs::File>>, tally: &mut Tally, names: &PolicyNames| {
            let Some(event) = events::decode(record) else { return };
            let Record::Event(e) = events::render(&event, &clock, names) else { return };
            tally.delivered += 1;
            let value = serde_json::to_value(&*e).unwrap_or_default();
            if e.verdict == "denied" {
                tally.denied += 1;
                eprintln!(
                    "systrace-agent: denied {} {} ({}, pid {})",
                    e.hook,
                    learn::generate::printable(
                        &e.path
                            .clone()
                            .or_else(|| e.address.clone().map(|a| format!("{a} port {}", e.port.unwrap_or(0))))
                            .unwrap_or_default()
                    ),
                    learn::generate::printable(&e.comm),
                    e.tgid
                );
            }
            if session.learn {
                let mut one = learn::Observations::default();
                if one.add_event(&value) {
                    for seen in one.seen.into_keys() {
                        if tally.distinct.insert(seen) {
                            tally.last_new = Instant::now();
                        }
                    }
                }
            }
            write(out, &value);
        };
    let status: Option<std::process::ExitStatus> = loop {
        let ask_deadline = desk.as_ref().and_then(|d| d.pending.as_ref().map(|(_, at)| *at));
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                let mut handled = 0;
                while handled < EVENT_BATCH {
                    let Some(record) = ring.next() else { break };
                    handled += 1;
                    handle(&record, &mut out, &mut tally, &state.names);
                }
                if handled < EVENT_BATCH {
                    guard.clear_ready();
                }
            }
            status = async { child.as_mut().expect("guarded").wait().await }, if child.is_some() => {
                break Some(status?);
            }
            _ = progress.tick(), if session.learn => {
                let line = format!("learn: {} distinct accesses, the last new one {:.0?} ago", tally.distinct.len(), tally.last_new.elapsed());
                if tty { eprint!("\r{line}   ") } else { eprintln!("{line}") }
            }
            _ = &mut deadline => break None,
            held = recv_opt(questions.as_mut()) => {
                if let (Some(d), Some(held)) = (desk.as_mut(), held) {
                    d.ask(held).await;
                }
            }
            stream = accept_opt(listener.as_ref()) => {
                if let (Some(d), Ok(stream)) = (desk.as_mut(), stream) {
                    d.welcome(stream).await;
                }
            }
            answer = recv_opt(answers.as_mut()) => {
                if let (Some(d), Some(answer)) = (desk.as_mut(), answer) {
                    on_answer(d, answer, enforcer, session, state, target, home).await;
                }
            }
            _ = sleep_opt(ask_deadline) => {
                if let Some(d) = desk.as_mut() {
                    d.close(Reply::Fail(libc::EACCES), "timeout").await;
                }
            }
            _ = sigterm.recv() => {
                forward(child_pid, libc::SIGTERM);
                if child.is_none() { break None }
            }
            _ = sigint.recv() => {
                forward(child_pid, libc::SIGINT);
                if child.is_none() { break None }
            }
        }
    };
    let ring = ring.get_mut();
    while let Some(record) = ring.next() {
        handle(&record, &mut out, &mut tally, &state.names);
    }
    let stats = json!({
        "type": "stats",
        "events_delivered": tally.delivered,
        "events_reported": enforcer.counter(Counter::Reported)?,
        "learn_repeats": enforcer.counter(Counter::LearnRepeats)?,
        "ring_full_drops": enforcer.counter(Counter::RingFull)?,
        "scratch_busy_drops": enforcer.counter(Counter::ScratchBusy)?,
        "denied": enforcer.counter(Counter::Denied)?,
    });
    write(&mut out, &stats);
    if let Some(o) = &mut out {
        o.flush()?;
    }
    if tty && session.learn {
        eprintln!();
    }
    if session.learn {
        eprintln!("systrace-agent: learned {} distinct accesses ({} events)", tally.distinct.len(), tally.delivered);
    } else if tally.denied > 0 {
        eprintln!("systrace-agent: {} operations denied", tally.denied);
    }
    Ok(status.map_or(0, status_code))
}

/// What the event stream has shown so far.
struct Tally {
    distinct: HashSet<learn::Seen>,
    last_new: Instant,
    delivered: u64,
    denied: u64,
}

/// What changes while a session runs.
struct State {
    names: PolicyNames,
    /// The policy's slot in the kernel now (it changes when an answer reinstalls it).
    slot: u32,
    /// "Permit once" answers about files that do not exist yet: they cannot be
    /// granted by identity, so they are rules for the rest of the session.
    session_rules: Vec<policy::FileRuleSpec>,
}

async fn recv_opt<T>(rx: Option<&mut tokio::sync::mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn accept_opt(l: Option<&tokio::net::UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Opens the desk and starts the thread that receives held calls; returns
/// the desk and the socket end the command sends its listener on.
fn start_asking(policy: Policy, timeout: Duration, target: &Target) -> Result<(Desk, OwnedFd)> {
    let policy = Arc::new(Mutex::new(policy));
    let confined = match target {
        Target::Cgroup(c) => c.clone(),
        Target::Unit { .. } => String::new(),
    };
    let (desk, questions) = Desk::open(policy.clone(), timeout, confined).context("opening the question socket")?;
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two descriptors.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("socketpair");
    }
    // SAFETY: both descriptors were just made and are owned here.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    std::thread::spawn(move || ask::serve(ours, policy, questions, timeout));
    Ok((desk, theirs))
}

/// Installs the policy file again, with the session's rules.
fn reinstall(
    enforcer: &mut crate::enforcer::Enforcer,
    session: &Session,
    state: &mut State,
    target: &Target,
    home: Option<&Path>,
) -> Result<Policy> {
    let mut policy = read_policy(session, target, home.map(Path::to_path_buf)).map_err(|e| anyhow::anyhow!(e))?;
    policy.files.extend(state.session_rules.iter().cloned());
    let compiled = compile_all(std::slice::from_ref(&policy), enforcer.name_key())
        .map_err(|errors| anyhow::anyhow!(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))?;
    let installed = apply(enforcer, &compiled, &mut state.names)?;
    state.slot = installed[0]["policy_id"].as_u64().unwrap_or(0) as u32;
    Ok(policy)
}

/// Adds an answer's rule to the policy file, keeping everything in it.
fn write_rule(file: &Path, rule: learn::generate::Rule) -> Result<()> {
    let text = std::fs::read_to_string(file)?;
    let generated = learn::generate::Generated { files: vec![rule], ..Default::default() };
    let merged = learn::merge::merge(&text, &generated).map_err(|e| anyhow::anyhow!(e))?;
    learn::merge::write_policy(file, &merged)?;
    Ok(())
}

/// Applies a person's answer to the held call.
async fn on_answer(
    desk: &mut Desk,
    answer: Answer,
    enforcer: &mut crate::enforcer::Enforcer,
    session: &Session,
    state: &mut State,
    target: &Target,
    home: Option<&Path>,
) {
    let Some((held, _)) = &desk.pending else { return };
    if held.question.id != answer.id {
        return;
    }
    let q = held.question.clone();
    let bits = held.access;
    let undecided = held.undecided;
    let tgid = held.tgid;
    // The file as it was when asked (see `Held::object`).
    let object = held.object.as_ref().map(|fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())));
    let pattern = answer.path.clone().unwrap_or_else(|| q.path.clone());
    if answer.answer.ends_with("-always") && !ask::offered(&q, &pattern) {
        eprintln!("systrace-agent: an answer named {pattern}, which was not offered; ignored");
        return;
    }
    let when = events::now_rfc3339();
    let reply = match answer.answer.as_str() {
        "deny-once" => Reply::Fail(libc::EACCES),
        "permit-once" => match &object {
            Some(o) => match enforcer.grant_once(state.slot, tgid, o, bits, ask::ONCE) {
                Ok(true) => Reply::Continue,
                Ok(false) => Reply::Fail(libc::EACCES),
                Err(e) => {
                    eprintln!("systrace-agent: granting: {e:#}");
                    Reply::Fail(libc::EACCES)
                }
            },
            None => {
                // Nothing to grant by identity yet (a file to create): a rule for this session.
                state.session_rules.push(policy::FileRuleSpec {
                    path: PathBuf::from(&q.path),
                    scope: policy::Scope::Exact,
                    access: undecided,
                    verdict: policy::RuleVerdict::Allow,
                    location: policy::Location { file: PathBuf::from("<answered>"), line: 1, column: 1 },
                });
                match reinstall(enforcer, session, state, target, home) {
                    Ok(p) => {
                        *desk.policy.lock().unwrap_or_else(|e| e.into_inner()) = p;
                        Reply::Continue
                    }
                    Err(e) => {
                        eprintln!("systrace-agent: {e:#}");
                        Reply::Fail(libc::EACCES)
                    }
                }
            }
        },
        "permit-always" | "deny-always" => {
            let deny = answer.answer == "deny-always";
            let Some(file) = &session.policy else { return };
            let rule = ask::answer_rule(&q, undecided, &pattern, deny, &when);
            match write_rule(file, rule).and_then(|_| reinstall(enforcer, session, state, target, home)) {
                Ok(p) => {
                    *desk.policy.lock().unwrap_or_else(|e| e.into_inner()) = p;
                    if deny {
                        Reply::Fail(libc::EACCES)
                    } else {
                        Reply::Continue
                    }
                }
                Err(e) => {
                    eprintln!("systrace-agent: the answer could not be kept ({e:#}); this call is denied");
                    Reply::Fail(libc::EACCES)
                }
            }
        }
        _ => return,
    };
    desk.close(reply, &answer.answer).await;
}

fn forward(pid: Option<u32>, sig: i32) {
    if let Some(pid) = pid {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid as i32, sig) };
    }
}

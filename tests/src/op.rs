//! The workload side: one operation, from inside a cgroup, reported as JSON.

use std::{
    ffi::{CString, OsStr},
    io::Read,
    os::unix::ffi::OsStrExt,
    path::Path,
    process::{Child, Command, ExitCode, Stdio},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What the workload process knows about itself and what the operation returned.
#[derive(Debug, Serialize, Deserialize)]
pub struct Outcome {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    /// 0 on success.
    pub errno: i32,
    /// `loop`: rounds run, and rounds where a verdict was not the expected one.
    #[serde(default)]
    pub rounds: u64,
    #[serde(default)]
    pub wrong: u64,
    /// `bench-open`, `bench-exec`: mean CPU time of one operation (this process's,
    /// system and user: the hooks run in its context).
    #[serde(default)]
    pub ns_per_op: f64,
}

fn command(cgroup: Option<&Path>, args: &[&OsStr]) -> anyhow::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("op");
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    cmd.args(args);
    Ok(cmd)
}

/// Runs `systrace-vmtest op ARGS...` in `cgroup` and returns its outcome.
pub fn run_args(cgroup: Option<&Path>, args: &[&OsStr]) -> anyhow::Result<Outcome> {
    let out = command(cgroup, args)?.output()?;
    if args.first().is_some_and(|a| *a == "exec") && out.stdout.is_empty() && out.status.success() {
        // The exec succeeded: the program ran (busybox `true`) and printed nothing.
        return Ok(Outcome { pid: 0, tgid: 0, comm: String::new(), errno: 0, rounds: 0, wrong: 0, ns_per_op: 0.0 });
    }
    if !out.status.success() {
        anyhow::bail!("workload {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("workload output: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Like [`run_args`], with `fd` (a descriptor of ours) handed to the workload
/// as its descriptor 3, as a process inherits one across exec.
pub fn run_args_inherit(cgroup: Option<&Path>, args: &[&OsStr], fd: i32) -> anyhow::Result<Outcome> {
    use std::os::unix::process::CommandExt;
    let mut cmd = command(cgroup, args)?;
    // SAFETY: dup2 is async-signal-safe; the descriptor is ours and open.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!("workload {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("workload output: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `open PATH r|w|a` in `cgroup`.
pub fn run(cgroup: Option<&Path>, path: &Path, mode: &str) -> anyhow::Result<Outcome> {
    run_args(cgroup, &["open".as_ref(), path.as_os_str(), mode.as_ref()])
}

/// Starts `loop ALLOWED DENIED` in `cgroup`; it runs until its stdin is closed.
pub fn start_loop(cgroup: &Path, allowed: &Path, denied: &Path) -> anyhow::Result<Child> {
    Ok(command(Some(cgroup), &["loop".as_ref(), allowed.as_os_str(), denied.as_os_str()])?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?)
}

/// Opens a socket of the address's family and binds or connects it.
fn socket_op(verb: &str, addr: &str, port: u16, udp: bool) -> std::io::Result<()> {
    let ty = if udp { libc::SOCK_DGRAM } else { libc::SOCK_STREAM };
    // SAFETY: bind and connect on a descriptor with_socket owns, with a sockaddr
    // it initialised and its size.
    with_socket(addr, port, ty, |fd, sa, len| unsafe {
        if verb == "bind" {
            libc::bind(fd, sa, len)
        } else {
            libc::connect(fd, sa, len)
        }
    })
}

/// Sends one datagram to ADDRESS:PORT from a fresh, unbound UDP socket.
fn sendto(addr: &str, port: u16) -> std::io::Result<()> {
    // SAFETY: as in socket_op; the one-byte buffer outlives the call.
    with_socket(addr, port, libc::SOCK_DGRAM, |fd, sa, len| unsafe {
        libc::sendto(fd, b"x".as_ptr().cast(), 1, 0, sa, len) as libc::c_int
    })
}

/// Opens a socket of type `ty` in the family of `addr`, calls `call` with it and
/// the `sockaddr` for ADDRESS:PORT, and closes it.
fn with_socket(
    addr: &str,
    port: u16,
    ty: libc::c_int,
    call: impl FnOnce(libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::c_int,
) -> std::io::Result<()> {
    let ip: std::net::IpAddr = addr.parse().map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let family = if ip.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: a descriptor we own, closed once; zeroed sockaddr structs are valid.
    unsafe {
        let fd = libc::socket(family, ty | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let rc = match ip {
            std::net::IpAddr::V4(v4) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_port = port.to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
                call(fd, &sa as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sa) as libc::socklen_t)
            }
            std::net::IpAddr::V6(v6) => {
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_port = port.to_be();
                sa.sin6_addr.s6_addr = v6.octets();
                call(fd, &sa as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sa) as libc::socklen_t)
            }
        };
        let result = if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
        libc::close(fd);
        result
    }
}

/// CPU time this process has used, in ns. Unlike wall time, it does not count
/// time other processes had the CPU.
fn cpu_ns() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

fn c(path: &str) -> CString {
    CString::new(Path::new(path).as_os_str().as_bytes()).expect("path without NUL")
}

fn errno_of(rc: libc::c_int) -> i32 {
    if rc < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

/// Starts a child straight in the cgroup at `dir` (clone3 with
/// CLONE_INTO_CGROUP) that runs `child` and exits with what it returns:
/// (the child's pid, its exit status), or the errno of the open or the clone.
pub fn clone_into_cgroup(dir: &CString, child: impl FnOnce() -> i32) -> Result<(i32, i32), i32> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    // SAFETY: a valid C string and a clone3 argument block of its own size;
    // the child only runs `child` and exits.
    unsafe {
        let fd = libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno_of(fd));
        }
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: fd as u64,
            ..CloneArgs::default()
        };
        let pid = libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>());
        if pid == 0 {
            libc::_exit(child());
        }
        let e = errno_of(pid as libc::c_int);
        libc::close(fd);
        if pid < 0 {
            return Err(e);
        }
        let mut status = 0;
        libc::waitpid(pid as libc::pid_t, &mut status, 0);
        Ok((pid as i32, libc::WEXITSTATUS(status)))
    }
}

/// Opens `path` with `flags`; 0 or the errno.
fn open_errno(path: &CString, flags: libc::c_int) -> i32 {
    // SAFETY: path is a valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd >= 0 {
        // SAFETY: fd was just opened by us.
        unsafe { libc::close(fd) };
    }
    errno_of(fd)
}

/// Restricts this process with Landlock: every file system access the
/// kernel's newest ABI knows is handled, and only reading (files and
/// directories) under `dir` is allowed.
fn landlock_read_only(dir: &str) -> anyhow::Result<()> {
    use landlock::{
        Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, ABI,
    };
    let abi = ABI::V5;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rule(PathBeneath::new(PathFd::new(dir)?, AccessFs::from_read(abi)))?
        .restrict_self()?;
    anyhow::ensure!(status.ruleset != RulesetStatus::NotEnforced, "Landlock is not enforced on this kernel");
    Ok(())
}

/// Asks AppArmor to confine this process with `profile` from its next exec,
/// then execs this program as `op ARGS`; returns only on error.
fn apparmor_exec(profile: &str, args: &[String]) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let request = format!("exec {profile}");
    if let Err(e) = std::fs::write("/proc/self/attr/apparmor/exec", &request)
        .or_else(|_| std::fs::write("/proc/self/attr/exec", &request))
    {
        return anyhow::Error::from(e).context("asking AppArmor for the profile");
    }
    Command::new("/proc/self/exe").arg("op").args(args).exec().into()
}

pub fn main(args: &[String]) -> ExitCode {
    // Leading options: the cgroup to join, and what to hold before joining it.
    let mut cgroup = None;
    // The benchmark's peers, applied once in the cgroup (see below).
    let (mut landlock, mut apparmor) = (None, None);
    let mut pre = crate::attack::Prepared::default();
    let mut rest = args;
    loop {
        match rest {
            [flag, value, tail @ ..] if flag == "--cgroup" => {
                cgroup = Some(value.as_str());
                rest = tail;
            }
            [flag, value, tail @ ..] if flag == "--pre-open" => {
                let (path, mode) = value.rsplit_once(':').unwrap_or((value, "r"));
                let flags = match mode {
                    "w" => libc::O_WRONLY,
                    "rw" => libc::O_RDWR,
                    _ => libc::O_RDONLY,
                };
                // SAFETY: a valid C string.
                let fd = unsafe { libc::open(c(path).as_ptr(), flags) };
                if fd < 0 {
                    eprintln!("op: --pre-open {path}: {}", std::io::Error::last_os_error());
                    return ExitCode::FAILURE;
                }
                pre.fd = Some(fd);
                rest = tail;
            }
            [flag, value, tail @ ..] if flag == "--landlock" => {
                landlock = Some(value.as_str());
                rest = tail;
            }
            [flag, value, tail @ ..] if flag == "--apparmor" => {
                apparmor = Some(value.as_str());
                rest = tail;
            }
            [flag, value, tail @ ..] if flag == "--inherited-fd" => {
                pre.fd = value.parse().ok();
                rest = tail;
            }
            [flag, value, tail @ ..] if flag == "--pre-dir" => {
                // SAFETY: a valid C string.
                let fd = unsafe { libc::open(c(value).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
                if fd < 0 {
                    eprintln!("op: --pre-dir {value}: {}", std::io::Error::last_os_error());
                    return ExitCode::FAILURE;
                }
                pre.dir = Some(fd);
                rest = tail;
            }
            [flag, value, tail @ ..] if flag == "--pre-read" => {
                match std::fs::read(value) {
                    Ok(bytes) => pre.bytes = Some(bytes),
                    Err(e) => {
                        eprintln!("op: --pre-read {value}: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                rest = tail;
            }
            _ => break,
        }
    }
    let Some((verb, operands)) = rest.split_first() else {
        eprintln!("op: expected an operation");
        return ExitCode::from(2);
    };
    let arg = |i: usize| operands.get(i).map(|s| c(s));
    // Everything this process needs from the file system is read before it joins
    // the cgroup: once inside, a default-deny policy refuses it.
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default().trim().to_string();
    // SAFETY: plain syscalls without arguments.
    let (pid, tgid) = unsafe { (libc::gettid() as u32, libc::getpid() as u32) };
    // memfd-exec needs the program's bytes, which a confined process may not read.
    let preloaded = match (verb.as_str(), operands.first()) {
        ("memfd-exec", Some(src)) => std::fs::read(src).ok(),
        _ => None,
    };
    if let Some(cg) = cgroup {
        if let Err(e) = std::fs::write(Path::new(cg).join("cgroup.procs"), tgid.to_string()) {
            eprintln!("op: joining {cg}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(dir) = landlock {
        // The benchmark's peer: this process restricts itself to reading the
        // tree at `dir`, nothing else, with the newest Landlock ABI the kernel offers.
        if let Err(e) = landlock_read_only(dir) {
            eprintln!("op: --landlock {dir}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(profile) = apparmor {
        // The benchmark's other peer: confined by the AppArmor profile from
        // the next exec on, which is this program again, in the same cgroup.
        let e = apparmor_exec(profile, rest);
        eprintln!("op: --apparmor {profile}: {e:#}");
        return ExitCode::FAILURE;
    }
    let (Some(a), b) = (arg(0), arg(1)) else {
        eprintln!("op: {verb}: missing operand");
        return ExitCode::from(2);
    };
    let need_b = || b.clone().expect("second operand");
    let mut outcome = Outcome { pid, tgid, comm, errno: 0, rounds: 0, wrong: 0, ns_per_op: 0.0 };
    if let Some(errno) = crate::attack::run(verb, operands, &mut pre, &mut outcome) {
        outcome.errno = errno;
        println!("{}", serde_json::to_string(&outcome).expect("serializable"));
        return ExitCode::SUCCESS;
    }
    let count = |i: usize| operands.get(i).and_then(|n| n.parse::<u64>().ok()).unwrap_or(1);
    // SAFETY (all arms): the arguments are valid C strings.
    outcome.errno = match verb.as_str() {
        "open" => {
            let flags = match operands.get(1).map(String::as_str) {
                Some("r") => libc::O_RDONLY,
                Some("w") => libc::O_WRONLY,
                Some("a") => libc::O_WRONLY | libc::O_APPEND,
                other => {
                    eprintln!("op: open: unknown mode {other:?}");
                    return ExitCode::from(2);
                }
            };
            open_errno(&a, flags)
        }
        "create" => open_errno(&a, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL),
        "mkdir" => errno_of(unsafe { libc::mkdir(a.as_ptr(), 0o755) }),
        "unlink" => errno_of(unsafe { libc::unlink(a.as_ptr()) }),
        "rmdir" => errno_of(unsafe { libc::rmdir(a.as_ptr()) }),
        "rename" => errno_of(unsafe { libc::rename(a.as_ptr(), need_b().as_ptr()) }),
        "link" => errno_of(unsafe { libc::link(a.as_ptr(), need_b().as_ptr()) }),
        "symlink" => errno_of(unsafe { libc::symlink(a.as_ptr(), need_b().as_ptr()) }),
        "truncate" => errno_of(unsafe { libc::truncate(a.as_ptr(), 0) }),
        "exec" => {
            // argv[0] "true" makes a busybox copy run its `true` applet.
            let argv0 = c("true");
            let ptrs = [argv0.as_ptr(), std::ptr::null()];
            unsafe { libc::execv(a.as_ptr(), ptrs.as_ptr()) };
            errno_of(-1)
        }
        "loop" => {
            // One allowed and one denied open per round until stdin closes.
            let denied = need_b();
            // SAFETY: fd 0 is ours.
            unsafe { libc::fcntl(0, libc::F_SETFL, libc::O_NONBLOCK) };
            let mut byte = [0u8; 1];
            loop {
                if matches!(std::io::stdin().read(&mut byte), Ok(0)) {
                    break;
                }
                outcome.rounds += 1;
                if open_errno(&a, libc::O_RDONLY) != 0 {
                    outcome.wrong += 1;
                }
                if open_errno(&denied, libc::O_RDONLY) != libc::EACCES {
                    outcome.wrong += 1;
                }
                // Paced, so the denials' events leave the VM's two CPUs to the
                // agent's reloads rather than to the event stream.
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
            0
        }
        "connect" | "bind" => {
            // connect|bind ADDRESS PORT tcp|udp
            let (Some(addr), Some(port), Some(proto)) = (operands.first(), operands.get(1), operands.get(2)) else {
                eprintln!("op: {verb} ADDRESS PORT tcp|udp");
                return ExitCode::from(2);
            };
            match socket_op(verb, addr, port.parse().unwrap_or(0), proto == "udp") {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(-1),
            }
        }
        "bench-connect" => {
            // bench-connect ADDRESS PORT N: N tcp connects (and closes) to a listener.
            let (Some(addr), Some(port)) = (operands.first(), operands.get(1)) else {
                eprintln!("op: bench-connect ADDRESS PORT N");
                return ExitCode::from(2);
            };
            let n = count(2);
            let port = port.parse().unwrap_or(0);
            let started = cpu_ns();
            let mut errno = 0;
            for _ in 0..n {
                if let Err(e) = socket_op("connect", addr, port, false) {
                    errno = e.raw_os_error().unwrap_or(-1);
                    break;
                }
            }
            outcome.ns_per_op = (cpu_ns() - started) / n as f64;
            errno
        }
        "bench-open" => {
            // N opens and closes of one file; the first error stops the run.
            let n = count(1);
            let started = cpu_ns();
            let mut errno = 0;
            for _ in 0..n {
                errno = open_errno(&a, libc::O_RDONLY);
                if errno != 0 {
                    break;
                }
            }
            outcome.ns_per_op = (cpu_ns() - started) / n as f64;
            errno
        }
        "bench-read" => {
            // One open, then N reads of the file's first 4 KiB (from the page
            // cache): what a confined process pays per read() on a descriptor.
            let n = count(1);
            // SAFETY: a valid C string; the buffer outlives every pread.
            let fd = unsafe { libc::open(a.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                errno_of(fd)
            } else {
                let mut buf = vec![0u8; 4096];
                let started = cpu_ns();
                let mut errno = 0;
                for _ in 0..n {
                    // SAFETY: buf holds 4096 bytes.
                    if unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), 4096, 0) } < 0 {
                        errno = errno_of(-1);
                        break;
                    }
                }
                outcome.ns_per_op = (cpu_ns() - started) / n as f64;
                // SAFETY: fd is ours.
                unsafe { libc::close(fd) };
                errno
            }
        }
        "bench-exec" => {
            // N times: fork, exec the binary (as `true`), wait.
            let n = count(1);
            let argv0 = c("true");
            let ptrs = [argv0.as_ptr(), std::ptr::null()];
            // Children's CPU time counts once they are waited for.
            let children_cpu = || {
                let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
                // SAFETY: ru is a valid out-pointer.
                unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
                (ru.ru_utime.tv_sec as f64 + ru.ru_stime.tv_sec as f64) * 1e9
                    + (ru.ru_utime.tv_usec as f64 + ru.ru_stime.tv_usec as f64) * 1e3
            };
            let started = cpu_ns() + children_cpu();
            let mut errno = 0;
            for _ in 0..n {
                // SAFETY: the child only calls execv and _exit, both async-signal-safe.
                let child = unsafe { libc::fork() };
                if child == 0 {
                    unsafe {
                        libc::execv(a.as_ptr(), ptrs.as_ptr());
                        libc::_exit(126);
                    }
                }
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
                if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                    errno = -1;
                    break;
                }
            }
            outcome.ns_per_op = (cpu_ns() + children_cpu() - started) / n as f64;
            errno
        }
        "flood" => {
            // Denied opens as fast as possible for N seconds; every one must be EACCES.
            let until = std::time::Instant::now() + std::time::Duration::from_secs(count(1));
            let mut errno = 0;
            while std::time::Instant::now() < until {
                for _ in 0..64 {
                    outcome.rounds += 1;
                    let e = open_errno(&a, libc::O_RDONLY);
                    if e != libc::EACCES {
                        errno = if e == 0 { -1 } else { e };
                    }
                }
            }
            errno
        }
        "sendto" => {
            // sendto ADDRESS PORT: one datagram from an unconnected UDP socket that
            // was never bound (the kernel picks the source port).
            let (Some(addr), Some(port)) = (operands.first(), operands.get(1)) else {
                eprintln!("op: sendto ADDRESS PORT");
                return ExitCode::from(2);
            };
            match sendto(addr, port.parse().unwrap_or(0)) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(-1),
            }
        }
        "unix-bind" => {
            // unix-bind @ABSTRACT
            use std::os::linux::net::SocketAddrExt;
            use std::os::unix::net::{SocketAddr, UnixListener};
            let name = operands[0].trim_start_matches('@');
            match SocketAddr::from_abstract_name(name.as_bytes()).and_then(|a| UnixListener::bind_addr(&a)) {
                Ok(_) => 0,
                Err(e) => e.raw_os_error().unwrap_or(-1),
            }
        }
        "prlimit-cpu" => {
            // prlimit-cpu PID: a CPU-time limit of one second on PID, which has
            // the kernel kill PID once it has used that much.
            let pid = operands.first().and_then(|v| v.parse::<i32>().ok()).unwrap_or(0);
            let limit = libc::rlimit64 { rlim_cur: 1, rlim_max: 1 };
            errno_of(unsafe { libc::prlimit64(pid, libc::RLIMIT_CPU, &limit, std::ptr::null_mut()) })
        }
        "renice" => {
            // renice PID: the lowest priority for PID.
            let pid = operands.first().and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
            errno_of(unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, 19) })
        }
        "unix-connect" | "unix-send" => {
            // unix-connect|unix-send PATH|@ABSTRACT: a stream connect, or one
            // datagram from an unbound socket.
            use std::os::linux::net::SocketAddrExt;
            use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
            let name = operands[0].as_str();
            let addr = match name.strip_prefix('@') {
                Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
                None => SocketAddr::from_pathname(name),
            };
            let result = addr.and_then(|addr| {
                if verb == "unix-connect" {
                    UnixStream::connect_addr(&addr).map(drop)
                } else {
                    UnixDatagram::unbound()?.send_to_addr(b"x", &addr).map(drop)
                }
            });
            match result {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(-1),
            }
        }
        "sigio-kill" => {
            // sigio-kill PID: arm a pipe so that data arriving sends SIGKILL to
            // PID (F_SETOWN, F_SETSIG, O_ASYNC), then write to it. The write
            // succeeds either way; whether PID survived is the result.
            const F_SETSIG: libc::c_int = 10;
            let pid = operands.first().and_then(|v| v.parse::<i32>().ok()).unwrap_or(0);
            let mut fds = [0; 2];
            unsafe {
                libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC);
                let armed = libc::fcntl(fds[0], libc::F_SETOWN, pid) == 0
                    && libc::fcntl(fds[0], F_SETSIG, libc::SIGKILL) == 0
                    && libc::fcntl(fds[0], libc::F_SETFL, libc::O_ASYNC | libc::O_NONBLOCK) == 0;
                if !armed {
                    errno_of(-1)
                } else {
                    outcome.rounds = 1;
                    errno_of(libc::write(fds[1], b"x".as_ptr().cast(), 1) as libc::c_int)
                }
            }
        }
        "clone-into" => {
            // clone-into CGROUP_DIR: clone3 with CLONE_INTO_CGROUP, starting the
            // child in another cgroup; the child exits at once.
            match clone_into_cgroup(&a, || 0) {
                Ok(_) => {
                    outcome.rounds = 1;
                    0
                }
                Err(e) => e,
            }
        }
        "socket" => {
            // socket FAMILY TYPE (numbers)
            let n = |i: usize| operands.get(i).and_then(|v| v.parse::<i32>().ok()).unwrap_or(-1);
            let protocol = operands.get(2).and_then(|v| v.parse::<i32>().ok()).unwrap_or(0);
            let fd = unsafe { libc::socket(n(0), n(1) | libc::SOCK_CLOEXEC, protocol) };
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
            errno_of(fd)
        }
        "kill" => {
            // kill PID SIGNAL
            let n = |i: usize| operands.get(i).and_then(|v| v.parse::<i32>().ok()).unwrap_or(0);
            errno_of(unsafe { libc::kill(n(0), n(1)) })
        }
        "ptrace" => {
            // ptrace PID: attach (PTRACE_SEIZE, which does not stop it), then detach.
            let pid = operands.first().and_then(|v| v.parse::<i32>().ok()).unwrap_or(0);
            let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) };
            let errno = errno_of(rc as libc::c_int);
            if rc == 0 {
                unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
            }
            errno
        }
        "bpf-next-link" => {
            // bpf(BPF_LINK_GET_NEXT_ID): the first step to finding and detaching
            // the agent's links.
            const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
            let mut attr = [0u32; 32];
            let rc = unsafe {
                libc::syscall(libc::SYS_bpf, BPF_LINK_GET_NEXT_ID, attr.as_mut_ptr(), std::mem::size_of_val(&attr))
            };
            errno_of(rc as libc::c_int)
        }
        "mount-tmpfs" => {
            errno_of(unsafe { libc::mount(c"none".as_ptr(), a.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) })
        }
        "bind-mount" => errno_of(unsafe {
            libc::mount(a.as_ptr(), need_b().as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
        }),
        "init-module" => {
            // init_module of a buffer that is no module: the kernel refuses it as
            // malformed, unless an LSM refuses the load first.
            let junk = [0u8; 64];
            let rc = unsafe { libc::syscall(libc::SYS_init_module, junk.as_ptr(), junk.len(), c"".as_ptr()) };
            errno_of(rc as libc::c_int)
        }
        "unshare-open" => {
            // unshare-open PATH: new user and mount namespaces, then read PATH.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) };
            if rc != 0 {
                errno_of(rc)
            } else {
                // Namespaces made: the open decides.
                outcome.rounds = 1;
                open_errno(&a, libc::O_RDONLY)
            }
        }
        "join" => {
            // join CGROUP_DIR: write our own pid to another cgroup's cgroup.procs.
            match std::fs::write(Path::new(&operands[0]).join("cgroup.procs"), tgid.to_string()) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(-1),
            }
        }
        "reopen" => {
            // reopen PATH: open it for reading, then open /proc/self/fd/N for writing.
            let fd = unsafe { libc::open(a.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                errno_of(fd)
            } else {
                outcome.rounds = 1;
                open_errno(&c(&format!("/proc/self/fd/{fd}")), libc::O_WRONLY)
            }
        }
        "opath-reopen" => {
            // opath-reopen PATH: an O_PATH descriptor needs no permission; reading
            // through /proc/self/fd/N is a real open.
            let fd = unsafe { libc::open(a.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            if fd < 0 {
                errno_of(fd)
            } else {
                outcome.rounds = 1;
                open_errno(&c(&format!("/proc/self/fd/{fd}")), libc::O_RDONLY)
            }
        }
        "openat2" => {
            // openat2 PATH with RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS.
            #[repr(C)]
            struct OpenHow {
                flags: u64,
                mode: u64,
                resolve: u64,
            }
            const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
            const RESOLVE_NO_SYMLINKS: u64 = 0x04;
            let how =
                OpenHow { flags: libc::O_RDONLY as u64, mode: 0, resolve: RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS };
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    &how as *const OpenHow,
                    std::mem::size_of::<OpenHow>(),
                )
            } as libc::c_int;
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
            errno_of(fd)
        }
        "uring-open" => uring_open(&a),
        "memfd-exec" => {
            // memfd-exec PROGRAM: copy the program into an anonymous file and
            // execute that (fexecve), as fileless malware does.
            let Some(bytes) = preloaded else {
                eprintln!("op: memfd-exec: cannot read the program");
                return ExitCode::from(2);
            };
            let fd = unsafe { libc::memfd_create(c"payload".as_ptr(), 0) };
            if fd < 0 {
                errno_of(fd)
            } else {
                let written = unsafe { libc::write(fd, bytes.as_ptr() as *const libc::c_void, bytes.len()) };
                if written != bytes.len() as isize {
                    errno_of(-1)
                } else {
                    let argv0 = c("true");
                    let argv = [argv0.as_ptr(), std::ptr::null()];
                    let envp = [std::ptr::null()];
                    unsafe { libc::fexecve(fd, argv.as_ptr(), envp.as_ptr()) };
                    errno_of(-1)
                }
            }
        }
        "pull" => {
            // pull PID PROCS: write PID to PROCS, the cgroup.procs of our own
            // cgroup, moving that process in with us.
            match std::fs::write(operands.get(1).map(String::as_str).unwrap_or(""), a.to_string_lossy().as_bytes()) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(-1),
            }
        }
        "daemonize-open" => {
            // daemonize-open PATH: fork, setsid, fork again; the grandchild opens
            // PATH and sends the errno back.
            errno_from_fork(|report| unsafe {
                libc::setsid();
                if libc::fork() == 0 {
                    send_errno(report, open_errno(&a, libc::O_RDONLY));
                }
            })
        }
        other => {
            eprintln!("op: unknown operation {other}");
            return ExitCode::from(2);
        }
    };
    println!("{}", serde_json::to_string(&outcome).expect("serializable"));
    ExitCode::SUCCESS
}

/// Runs `child` in a forked process, which sends an errno to the descriptor
/// it is given ([`send_errno`]), perhaps from a process it forks in turn; the
/// errno, or -1 when none came.
fn errno_from_fork(child: impl FnOnce(i32)) -> i32 {
    let mut pipe = [0; 2];
    unsafe { libc::pipe(pipe.as_mut_ptr()) };
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        child(pipe[1]);
        unsafe { libc::_exit(0) };
    }
    unsafe { libc::close(pipe[1]) };
    let mut e: i32 = -1;
    let n = unsafe { libc::read(pipe[0], &mut e as *mut i32 as *mut libc::c_void, 4) };
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if n == 4 {
        e
    } else {
        -1
    }
}

fn send_errno(fd: i32, e: i32) {
    unsafe { libc::write(fd, &e as *const i32 as *const libc::c_void, 4) };
}

/// See `uring-personality-setxattr` in the attacks.
pub fn uring_personality_setxattr(path: &CString) -> i32 {
    let last = || std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
    let mut ring = match io_uring::IoUring::new(4) {
        Ok(ring) => ring,
        Err(e) => return e.raw_os_error().unwrap_or(-1),
    };
    let personality = match ring.submitter().register_personality() {
        Ok(id) => id,
        Err(e) => return e.raw_os_error().unwrap_or(-1),
    };
    // New credentials: CAP_SYS_BOOT (22) leaves the effective set.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header { version: 0x2008_0522, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget and capset with a version 3 header and two data blocks.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return last();
        }
        data[0].effective &= !(1 << 22);
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return last();
        }
    }
    let name = c("user.systrace");
    let value = b"x";
    let entry =
        io_uring::opcode::SetXattr::new(name.as_ptr(), value.as_ptr().cast(), path.as_ptr(), value.len() as u32)
            .build()
            .personality(personality);
    // SAFETY: the name, value and path outlive the call.
    uring_errno(unsafe { uring_once(&mut ring, &entry) })
}

/// Submits `entry` on `ring` and waits for its completion: the completion's
/// result (a negative errno when the operation failed), or the errno of
/// submitting it.
///
/// # Safety
/// Whatever `entry` points at must stay valid until this returns.
pub unsafe fn uring_once(ring: &mut io_uring::IoUring, entry: &io_uring::squeue::Entry) -> Result<i32, i32> {
    if ring.submission().push(entry).is_err() {
        return Err(libc::EBUSY);
    }
    ring.submit_and_wait(1).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    ring.completion().next().map(|cqe| cqe.result()).ok_or(libc::EIO)
}

/// A [`uring_once`] outcome as 0 or an errno.
pub fn uring_errno(outcome: Result<i32, i32>) -> i32 {
    match outcome {
        Ok(r) if r < 0 => -r,
        Ok(_) => 0,
        Err(e) => e,
    }
}

/// Opens `path` for reading through io_uring (IORING_OP_OPENAT); 0 or the errno.
fn uring_open(path: &CString) -> i32 {
    let mut ring = match io_uring::IoUring::new(4) {
        Ok(r) => r,
        Err(e) => return e.raw_os_error().unwrap_or(-1),
    };
    let entry = io_uring::opcode::OpenAt::new(io_uring::types::Fd(libc::AT_FDCWD), path.as_ptr())
        .flags(libc::O_RDONLY | libc::O_CLOEXEC)
        .build();
    // SAFETY: the path outlives the call.
    match unsafe { uring_once(&mut ring, &entry) } {
        Ok(fd) if fd >= 0 => {
            // SAFETY: the descriptor io_uring opened for us.
            unsafe { libc::close(fd) };
            0
        }
        outcome => uring_errno(outcome),
    }
}

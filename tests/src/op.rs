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
    serde_json::from_slice(&out.stdout).with_context(|| format!("workload output: {}", String::from_utf8_lossy(&out.stdout)))
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
    let ip: std::net::IpAddr = addr.parse().map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let ty = if udp { libc::SOCK_DGRAM } else { libc::SOCK_STREAM };
    let family = if ip.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket syscalls on a descriptor we own; the sockaddr structs
    // are initialised and passed with their sizes.
    unsafe {
        let fd = libc::socket(family, ty | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let call = |sa: *const libc::sockaddr, len: libc::socklen_t| {
            if verb == "bind" {
                libc::bind(fd, sa, len)
            } else {
                libc::connect(fd, sa, len)
            }
        };
        let rc = match ip {
            std::net::IpAddr::V4(v4) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_port = port.to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
                call(&sa as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sa) as libc::socklen_t)
            }
            std::net::IpAddr::V6(v6) => {
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_port = port.to_be();
                sa.sin6_addr.s6_addr = v6.octets();
                call(&sa as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sa) as libc::socklen_t)
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

pub fn main(args: &[String]) -> ExitCode {
    let (cgroup, rest) = match args {
        [flag, cg, rest @ ..] if flag == "--cgroup" => (Some(cg.as_str()), rest),
        rest => (None, rest),
    };
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
    if let Some(cg) = cgroup {
        if let Err(e) = std::fs::write(Path::new(cg).join("cgroup.procs"), tgid.to_string()) {
            eprintln!("op: joining {cg}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let (Some(a), b) = (arg(0), arg(1)) else {
        eprintln!("op: {verb}: missing operand");
        return ExitCode::from(2);
    };
    let need_b = || b.clone().expect("second operand");
    let mut outcome = Outcome { pid, tgid, comm, errno: 0, rounds: 0, wrong: 0, ns_per_op: 0.0 };
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
                if open_errno(&denied, libc::O_RDONLY) != libc::EPERM {
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
            // Denied opens as fast as possible for N seconds; every one must be EPERM.
            let until = std::time::Instant::now() + std::time::Duration::from_secs(count(1));
            let mut errno = 0;
            while std::time::Instant::now() < until {
                for _ in 0..64 {
                    outcome.rounds += 1;
                    let e = open_errno(&a, libc::O_RDONLY);
                    if e != libc::EPERM {
                        errno = if e == 0 { -1 } else { e };
                    }
                }
            }
            errno
        }
        other => {
            eprintln!("op: unknown operation {other}");
            return ExitCode::from(2);
        }
    };
    println!("{}", serde_json::to_string(&outcome).expect("serializable"));
    ExitCode::SUCCESS
}

//! The workload side: one operation, from inside a cgroup, reported as JSON.

use std::{ffi::CString, path::Path, process::Command, process::ExitCode};

use serde::{Deserialize, Serialize};

/// What the workload process knows about itself and what the operation returned.
#[derive(Debug, Serialize, Deserialize)]
pub struct Outcome {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    /// 0 on success.
    pub errno: i32,
}

/// Runs `systrace-vmtest op` as a child and returns its outcome.
pub fn run(cgroup: Option<&Path>, path: &Path, mode: &str) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("op");
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    cmd.arg("open").arg(path).arg(mode);
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!("workload failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

pub fn main(args: &[String]) -> ExitCode {
    let (cgroup, rest) = match args {
        [flag, cg, rest @ ..] if flag == "--cgroup" => (Some(cg.as_str()), rest),
        rest => (None, rest),
    };
    let [verb, path, mode] = rest else {
        eprintln!("op: expected: open PATH r|w|a");
        return ExitCode::from(2);
    };
    if verb != "open" {
        eprintln!("op: unknown operation {verb}");
        return ExitCode::from(2);
    }
    let flags = match mode.as_str() {
        "r" => libc::O_RDONLY,
        "w" => libc::O_WRONLY,
        "a" => libc::O_WRONLY | libc::O_APPEND,
        other => {
            eprintln!("op: unknown mode {other}");
            return ExitCode::from(2);
        }
    };
    // Everything this process needs from the file system is read before it joins
    // the cgroup: once inside, a default-deny policy refuses it.
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default().trim().to_string();
    let c_path = CString::new(path.as_str()).expect("path without NUL");
    // SAFETY: plain syscalls with valid arguments.
    let (pid, tgid) = unsafe { (libc::gettid() as u32, libc::getpid() as u32) };
    if let Some(cg) = cgroup {
        if let Err(e) = std::fs::write(Path::new(cg).join("cgroup.procs"), tgid.to_string()) {
            eprintln!("op: joining {cg}: {e}");
            return ExitCode::FAILURE;
        }
    }
    // SAFETY: c_path is a valid C string.
    let fd = unsafe { libc::open(c_path.as_ptr(), flags | libc::O_CLOEXEC) };
    let errno = if fd < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) } else { 0 };
    if fd >= 0 {
        // SAFETY: fd was just opened by us.
        unsafe { libc::close(fd) };
    }
    let outcome = Outcome { pid, tgid, comm, errno };
    println!("{}", serde_json::to_string(&outcome).expect("serializable"));
    ExitCode::SUCCESS
}

//! The agent on kernels and users that cannot enforce: it must exit 3 with one line
//! on standard error naming the cause, and confine nothing.

use std::{
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, ExitCode},
};

use anyhow::{ensure, Result};

use crate::suite::Runner;

/// Exit status the agent uses when it cannot enforce.
pub const EXIT_CANNOT_ENFORCE: i32 = 3;

/// Runs `agent run POLICY`, optionally as another user, and checks the refusal.
pub fn expect_refusal(agent: &Path, policy: &Path, uid: Option<u32>, cause: &str) -> Result<()> {
    let mut cmd = Command::new(agent);
    cmd.arg("run").arg(policy);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    ensure!(
        out.status.code() == Some(EXIT_CANNOT_ENFORCE),
        "exit status {:?}, expected {EXIT_CANNOT_ENFORCE}; stderr: {stderr}",
        out.status.code()
    );
    ensure!(lines.len() == 1, "expected one line on stderr, got {}: {stderr}", lines.len());
    ensure!(lines[0].starts_with("systrace-agent: cannot enforce: "), "line: {}", lines[0]);
    ensure!(lines[0].contains(cause), "line does not name the cause ({cause}): {}", lines[0]);
    ensure!(out.stdout.is_empty(), "stdout not empty: {}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

/// `systrace-vmtest refusal AGENT`: run on a kernel booted without bpf in lsm=.
pub fn main(args: &[String]) -> ExitCode {
    let Some(agent) = args.first() else {
        eprintln!("refusal: expected the agent binary's path");
        return ExitCode::from(2);
    };
    let mut r = Runner::default();
    r.case("refuses_with_one_line_when_bpf_lsm_is_inactive", || {
        let dir = Path::new("/tmp/systrace-refusal");
        std::fs::create_dir_all("/sys/fs/cgroup/systrace-refusal")?;
        std::fs::create_dir_all(dir)?;
        let policy = dir.join("p.toml");
        std::fs::write(&policy, "cgroup = \"systrace-refusal\"\nmode = \"enforce\"\ndefault = \"deny\"\n")?;
        expect_refusal(Path::new(agent), &policy, None, "BPF LSM is not active")?;
        // Nothing was confined: the cgroup still opens files freely.
        std::fs::write("/sys/fs/cgroup/systrace-refusal/cgroup.procs", std::process::id().to_string())?;
        let readable = std::fs::read_to_string(&policy);
        std::fs::write("/sys/fs/cgroup/cgroup.procs", std::process::id().to_string())?;
        ensure!(readable.is_ok(), "a file read failed after the refusal: {readable:?}");
        Ok(())
    });
    r.finish()
}

//! Runs the real agent binary and reads its JSON lines.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{channel, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Result};
use serde_json::Value;

pub struct Agent {
    child: Child,
    lines: Receiver<Value>,
    /// The latest lines read, for waits that look back (bounded: an event flood
    /// must not exhaust the VM's memory).
    pub seen: VecDeque<Value>,
}

impl Agent {
    /// Starts `agent run POLICIES...` and waits until it says it is enforcing.
    pub fn start(agent: &Path, policies: &[&Path]) -> Result<Agent> {
        let args: Vec<&std::ffi::OsStr> = policies.iter().map(|p| p.as_os_str()).collect();
        Self::start_args(agent, &args)
    }

    /// Starts `agent run ARGS...` and waits until it says it is enforcing.
    pub fn start_args(agent: &Path, args: &[&std::ffi::OsStr]) -> Result<Agent> {
        Self::spawn(Command::new(agent).arg("run").args(args))
    }

    /// Starts `agent run ARGS...` in the cgroup `cgroup` (made if missing).
    pub fn start_in_cgroup(agent: &Path, cgroup: &Path, args: &[&std::ffi::OsStr]) -> Result<Agent> {
        use std::os::unix::process::CommandExt;
        std::fs::create_dir_all(cgroup)?;
        let procs = cgroup.join("cgroup.procs");
        let mut cmd = Command::new(agent);
        cmd.arg("run").args(args);
        // SAFETY: the closure only writes to a file, which is fine between fork and exec.
        unsafe {
            cmd.pre_exec(move || std::fs::write(&procs, "0"));
        }
        Self::spawn(&mut cmd)
    }

    fn spawn(cmd: &mut Command) -> Result<Agent> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("agent printed a line that is not JSON ({e}): {line}"),
                }
            }
        });
        let mut agent = Agent { child, lines, seen: VecDeque::new() };
        agent.wait_for(Duration::from_secs(300), |v| v["type"] == "status" && v["state"] == "enforcing")?;
        Ok(agent)
    }

    /// Waits for a line matching `pred`, looking at lines already seen first.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return Ok(v.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.remember(v.clone());
                    if pred(&v) {
                        return Ok(v);
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!("no matching agent line within {timeout:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait()?;
                    bail!("agent output ended (exit status {status:?}) before a matching line")
                }
            }
        }
    }

    fn remember(&mut self, v: Value) {
        const KEEP: usize = 20_000;
        if self.seen.len() == KEEP {
            self.seen.pop_front();
        }
        self.seen.push_back(v);
    }

    /// Reads what is already waiting, without blocking.
    pub fn drain(&mut self) {
        while let Ok(v) = self.lines.try_recv() {
            self.remember(v);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the agent process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, as a crash or an attacker would; returns once the process is gone.
    pub fn kill_hard(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends a signal to the agent.
    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Forgets the lines seen so far, so later waits only match new ones.
    pub fn forget(&mut self) {
        self.drain();
        self.seen.clear();
    }

    /// SIGTERM, as systemd stops a service; returns once the agent has exited.
    pub fn terminate(mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        ensure!(status.success(), "agent exit status {status:?} after SIGTERM");
        Ok(())
    }

    /// Ctrl-C, as a user would; returns the exit code and the final stats line.
    pub fn stop(mut self) -> Result<(i32, Value)> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let stats = self.wait_for(Duration::from_secs(30), |v| v["type"] == "stats")?;
        let status = self.child.wait()?;
        let code = status.code().ok_or_else(|| anyhow!("agent killed by a signal: {status:?}"))?;
        Ok((code, stats))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

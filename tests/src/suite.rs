//! The end-to-end cases. Each runs real workloads against the real agent in the
//! VM's kernel and asserts on what the kernel returned and what the agent printed.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::{agent::Agent, op};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const EACCES: i32 = 13;
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// The files and cgroups the cases use.
struct World {
    agent: PathBuf,
    readable: PathBuf,
    writable: PathBuf,
    unlisted: PathBuf,
    confined: PathBuf,
    child: PathBuf,
    audited: PathBuf,
    enforce_policy: PathBuf,
    audit_policy: PathBuf,
}

impl World {
    fn create(agent: &Path) -> Result<World> {
        let dir = Path::new("/tmp/systrace-test");
        fs::create_dir_all(dir)?;
        let file = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            fs::write(&p, format!("{name}\n"))?;
            Ok(p)
        };
        let cgroup = |rel: &str| -> Result<PathBuf> {
            let p = Path::new(CGROUP_ROOT).join(rel);
            fs::create_dir_all(&p).with_context(|| format!("mkdir {}", p.display()))?;
            Ok(p)
        };
        let world = World {
            agent: agent.to_path_buf(),
            readable: file("readable")?,
            writable: file("writable")?,
            unlisted: file("unlisted")?,
            confined: cgroup("systrace-test")?,
            child: cgroup("systrace-test/child")?,
            audited: cgroup("systrace-audit")?,
            enforce_policy: dir.join("enforce.toml"),
            audit_policy: dir.join("audit.toml"),
        };
        fs::write(
            &world.enforce_policy,
            format!(
                "name = \"test-enforce\"\ncgroup = \"systrace-test\"\nmode = \"enforce\"\ndefault = \"deny\"\n\n\
                 [[file]]\npath = \"{}\"\naccess = [\"read\"]\n\n\
                 [[file]]\npath = \"{}\"\naccess = [\"read\", \"write\"]\n",
                world.readable.display(),
                world.writable.display()
            ),
        )?;
        fs::write(
            &world.audit_policy,
            format!(
                "name = \"test-audit\"\ncgroup = \"systrace-audit\"\nmode = \"audit\"\ndefault = \"deny\"\n\n\
                 [[file]]\npath = \"{}\"\naccess = [\"read\"]\n",
                world.readable.display()
            ),
        )?;
        Ok(world)
    }
}

fn ino(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path).with_context(|| path.display().to_string())?.ino())
}

fn expect_errno(outcome: &op::Outcome, errno: i32, what: &str) -> Result<()> {
    ensure!(outcome.errno == errno, "{what}: errno {} (expected {errno})", outcome.errno);
    Ok(())
}

/// Waits for the event the workload `outcome` caused on `path`.
fn event_for(agent: &mut Agent, outcome: &op::Outcome, path: &Path) -> Result<Value> {
    let inode = ino(path)?;
    let pid = outcome.pid;
    agent
        .wait_for(EVENT_WAIT, |v| v["type"] == "event" && v["pid"] == pid && v["ino"] == inode)
        .with_context(|| format!("event for pid {pid} on {}", path.display()))
}

#[derive(Default)]
pub struct Runner {
    passed: usize,
    failed: usize,
}

impl Runner {
    pub fn case(&mut self, name: &str, body: impl FnOnce() -> Result<()>) {
        match body() {
            Ok(()) => {
                self.passed += 1;
                println!("TEST {name} ok");
            }
            Err(e) => {
                self.failed += 1;
                println!("TEST {name} FAILED: {e:#}");
            }
        }
    }

    /// Records a failure that happened outside any case (a setup step).
    pub fn fail(&mut self, name: &str, e: anyhow::Error) {
        self.failed += 1;
        println!("TEST {name} FAILED: {e:#}");
    }

    /// Prints the closing line the xtask looks for.
    pub fn finish(self) -> ExitCode {
        println!("VMTEST passed={} failed={}", self.passed, self.failed);
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// Number of BPF objects of one kind (programs or links) the kernel holds.
fn count_bpf_ids(get_next_id_cmd: libc::c_long) -> Result<usize> {
    #[repr(C)]
    struct GetNextId {
        start_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = GetNextId { start_id: 0, next_id: 0, open_flags: 0 };
    let mut n = 0;
    loop {
        // SAFETY: attr is a valid bpf_attr prefix for BPF_*_GET_NEXT_ID of the size passed.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, get_next_id_cmd, &mut attr as *mut GetNextId, std::mem::size_of::<GetNextId>())
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                return Ok(n);
            }
            bail!("bpf(GET_NEXT_ID): {err}");
        }
        n += 1;
        attr.start_id = attr.next_id;
    }
}
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;

pub fn main(args: &[String]) -> ExitCode {
    let Some(agent) = args.first() else {
        eprintln!("suite: expected the agent binary's path");
        return ExitCode::from(2);
    };
    let mut r = Runner::default();
    if let Err(e) = run(Path::new(agent), &mut r) {
        r.fail("setup", e);
    }
    r.finish()
}

fn run(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    let w = World::create(agent_bin)?;
    let before = (count_bpf_ids(BPF_PROG_GET_NEXT_ID)?, count_bpf_ids(BPF_LINK_GET_NEXT_ID)?);

    // Sanity: without the agent, everything is allowed, so the denials below are the agent's.
    r.case("baseline_without_agent_all_allowed", || {
        for (path, mode) in [(&w.readable, "w"), (&w.unlisted, "r")] {
            expect_errno(&op::run(Some(&w.confined), path, mode)?, 0, &format!("{} {mode}", path.display()))?;
        }
        Ok(())
    });

    r.case("refuses_with_one_line_when_not_root", || {
        crate::refusal::expect_refusal(&w.agent, &w.enforce_policy, Some(65534), "not running as root")
    });

    let mut agent = Agent::start(&w.agent, &[&w.enforce_policy, &w.audit_policy])?;

    r.case("allowed_read_succeeds", || {
        expect_errno(&op::run(Some(&w.confined), &w.readable, "r")?, 0, "read of a read rule")?;
        expect_errno(&op::run(Some(&w.confined), &w.writable, "w")?, 0, "write of a write rule")?;
        expect_errno(&op::run(Some(&w.confined), &w.writable, "a")?, 0, "append under a write rule")
    });

    r.case("write_to_read_only_rule_is_eperm", || {
        let out = op::run(Some(&w.confined), &w.readable, "w")?;
        expect_errno(&out, EACCES, "write of a read-only file")?;
        let ev = event_for(&mut agent, &out, &w.readable)?;
        ensure!(ev["verdict"] == "denied", "verdict {}", ev["verdict"]);
        ensure!(ev["requested"] == serde_json::json!(["write"]), "requested {}", ev["requested"]);
        let out = op::run(Some(&w.confined), &w.readable, "a")?;
        expect_errno(&out, EACCES, "append to a read-only file")
    });

    r.case("unlisted_file_under_default_deny_is_eperm", || {
        expect_errno(&op::run(Some(&w.confined), &w.unlisted, "r")?, EACCES, "read of an unlisted file")
    });

    r.case("denial_event_names_inode_cgroup_pid_comm", || {
        let out = op::run(Some(&w.confined), &w.unlisted, "r")?;
        expect_errno(&out, EACCES, "read of an unlisted file")?;
        let ev = event_for(&mut agent, &out, &w.unlisted)?;
        let checks: [(&str, Value); 10] = [
            ("hook", "file_open".into()),
            ("verdict", "denied".into()),
            ("policy", "test-enforce".into()),
            ("ino", ino(&w.unlisted)?.into()),
            ("cgroup_id", ino(&w.confined)?.into()),
            ("pid", out.pid.into()),
            ("tgid", out.tgid.into()),
            ("comm", out.comm.clone().into()),
            ("uid", 0.into()),
            ("path", w.unlisted.display().to_string().into()),
        ];
        for (field, want) in checks {
            ensure!(ev[field] == want, "event {field} = {} (expected {want}); event: {ev}", ev[field]);
        }
        ensure!(ev["requested"] == serde_json::json!(["read"]), "requested {}", ev["requested"]);
        ensure!(ev["time"].as_str().is_some_and(|t| t.ends_with('Z')), "time {}", ev["time"]);
        Ok(())
    });

    r.case("same_operations_outside_the_cgroup_succeed", || {
        for (path, mode) in [(&w.readable, "w"), (&w.unlisted, "r"), (&w.readable, "r")] {
            expect_errno(&op::run(None, path, mode)?, 0, &format!("{} {mode} outside", path.display()))?;
        }
        Ok(())
    });

    r.case("child_cgroup_inherits_policy", || {
        expect_errno(&op::run(Some(&w.child), &w.readable, "r")?, 0, "read of a read rule from the child")?;
        let out = op::run(Some(&w.child), &w.unlisted, "r")?;
        expect_errno(&out, EACCES, "unlisted file from the child")?;
        let ev = event_for(&mut agent, &out, &w.unlisted)?;
        ensure!(ev["cgroup_id"] == ino(&w.child)?, "event cgroup_id {} is not the child's", ev["cgroup_id"]);
        ensure!(ev["policy"] == "test-enforce", "policy {}", ev["policy"]);
        Ok(())
    });

    r.case("audit_mode_allows_and_reports", || {
        let out = op::run(Some(&w.audited), &w.unlisted, "r")?;
        expect_errno(&out, 0, "audited read of an unlisted file")?;
        let ev = event_for(&mut agent, &out, &w.unlisted)?;
        ensure!(ev["verdict"] == "audit", "verdict {}", ev["verdict"]);
        ensure!(ev["policy"] == "test-audit", "policy {}", ev["policy"]);
        ensure!(ev["cgroup_id"] == ino(&w.audited)?, "cgroup_id {}", ev["cgroup_id"]);
        // A request the audit policy's rule allows is silent.
        let out = op::run(Some(&w.audited), &w.readable, "r")?;
        expect_errno(&out, 0, "allowed read under audit")?;
        std::thread::sleep(Duration::from_millis(300));
        agent.drain();
        let pid = out.pid;
        ensure!(!agent.seen.iter().any(|v| v["type"] == "event" && v["pid"] == pid), "an allowed read was reported");
        Ok(())
    });

    r.case("agent_exit_detaches_everything", || {
        let (code, stats) = agent.stop()?;
        ensure!(code == 0, "agent exit code {code}");
        ensure!(stats["ring_full_drops"] == 0, "drops {}", stats["ring_full_drops"]);
        ensure!(
            stats["events_delivered"] == stats["events_reported"],
            "delivered {} != reported {}",
            stats["events_delivered"],
            stats["events_reported"]
        );
        let after = (count_bpf_ids(BPF_PROG_GET_NEXT_ID)?, count_bpf_ids(BPF_LINK_GET_NEXT_ID)?);
        ensure!(after == before, "BPF (programs, links) before {before:?}, after exit {after:?}");
        expect_errno(&op::run(Some(&w.confined), &w.unlisted, "r")?, 0, "unlisted read after the agent left")?;
        expect_errno(&op::run(Some(&w.confined), &w.readable, "w")?, 0, "write after the agent left")
    });
    Ok(())
}

/// Polls `done` until it holds; how long that took, or an error naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if done()? {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what}: not within {timeout:?}")
}

/// Nanoseconds since boot, as the kernel stamps events.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

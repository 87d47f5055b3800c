//! The bypass suite: each case is an attack a confined process makes against a
//! policy that forbids what the attack is after. A case passes when the kernel
//! refused the attack *and* systrace's program is the one that refused it (the
//! agent reported a denial from the expected hook for that process); a refusal
//! that came from somewhere else (file permissions, a missing capability) would
//! prove nothing about systrace.
//!
//! Every case prints `BYPASS <case> denied|BYPASSED|out-of-scope` for the table
//! `cargo xtask test` draws across kernels, and a `TEST` line for the tally.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::{agent::Agent, op, suite::Runner};

const EPERM: i32 = 1;
const ROOT: &str = "/tmp/bp";
const CGROUP: &str = "/sys/fs/cgroup/systrace-bypass";
const ELSEWHERE: &str = "/sys/fs/cgroup/systrace-elsewhere";
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// Reads what it is given under allowed/, may not exec anything but busybox, may
/// reach 127.0.0.1:5000 over udp, and holds the capabilities these attacks
/// would need, so that the protections, not missing capabilities, are tested.
const POLICY: &str = r#"
name = "bypass"
cgroup = "systrace-bypass"
mode = "enforce"
default = "deny"
capabilities = ["sys_admin", "sys_ptrace", "kill", "bpf", "sys_module", "dac_override", "net_admin"]

[[file]]
path = "/tmp/bp/allowed/**"
access = ["read", "write", "create", "delete", "rename"]

[[file]]
path = "/tmp/bp/readonly.txt"
access = ["read"]

[[exec]]
path = "/bin/busybox"

# Reading the cgroup tree lets clone3 reach the point where it would move the child.
[[file]]
path = "/sys/fs/cgroup/**"
access = ["read"]

[[net]]
operations = ["connect"]
protocol = "udp"
address = "127.0.0.1"
ports = 5000
"#;

fn p(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

/// How a case ended.
enum Outcome {
    Denied,
    Bypassed(String),
}

struct Bypass<'a> {
    agent: &'a mut Agent,
    cg: PathBuf,
}

impl Bypass<'_> {
    fn op(&self, args: &[&str]) -> Result<op::Outcome> {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        op::run_args(Some(&self.cg), &args)
    }

    /// The denial event for `pid` (or, when the attack ran in another process,
    /// for the inode `ino`) from `hook`.
    fn denial(&mut self, hook: &str, pid: Option<u32>, ino: Option<u64>) -> Result<Value> {
        self.agent
            .wait_for(EVENT_WAIT, |v| {
                v["type"] == "event"
                    && v["hook"] == hook
                    && v["verdict"] == "denied"
                    && pid.is_none_or(|pid| v["pid"] == pid || v["tgid"] == pid)
                    && ino.is_none_or(|ino| v["ino"] == ino)
            })
            .with_context(|| format!("no denial from {hook} for pid {pid:?} inode {ino:?}"))
    }

    /// Runs the attack `args`; denied when it fails with `errno` and the agent
    /// reports `hook` refusing that process.
    fn attack(&mut self, args: &[&str], errno: i32, hook: &str) -> Result<Outcome> {
        self.attack_on(args, errno, hook, None)
    }

    /// Like [`Bypass::attack`], for attacks whose refused operation may run in
    /// another process (a grandchild, an io_uring worker): the report is matched
    /// by the inode it names.
    fn attack_on(&mut self, args: &[&str], errno: i32, hook: &str, ino: Option<u64>) -> Result<Outcome> {
        let out = self.op(args)?;
        if out.errno == 0 {
            return Ok(Outcome::Bypassed(format!("{args:?} succeeded")));
        }
        ensure!(out.errno == errno, "{args:?}: errno {} (expected {errno})", out.errno);
        self.denial(hook, if ino.is_some() { None } else { Some(out.pid) }, ino)?;
        Ok(Outcome::Denied)
    }
}

fn ino(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata(path).with_context(|| path.display().to_string())?.ino())
}

fn setup() -> Result<PathBuf> {
    // Left over from an earlier run, if any.
    let _ = Command::new("umount").arg(p("allowed/alias")).stderr(std::process::Stdio::null()).status();
    let _ = fs::remove_dir_all(ROOT);
    for dir in ["allowed", "secret"] {
        fs::create_dir_all(p(dir))?;
    }
    fs::write(p("secret/secret.txt"), "the secret\n")?;
    fs::write(p("readonly.txt"), "read me\n")?;
    fs::write(p("allowed/script.sh"), "#!/bin/sh\ncat /tmp/bp/secret/secret.txt\n")?;
    fs::set_permissions(p("allowed/script.sh"), fs::Permissions::from_mode(0o755))?;
    fs::create_dir_all(CGROUP)?;
    fs::create_dir_all(ELSEWHERE)?;
    let policy = p("bypass.toml");
    fs::write(&policy, POLICY)?;
    Ok(policy)
}

/// A process that sleeps in the confined cgroup, for attacks on a sibling.
fn sibling() -> Result<Child> {
    let child = Command::new("/bin/busybox")
        .args(["sh", "-c", &format!("echo $$ > {CGROUP}/cgroup.procs && exec /bin/busybox sleep 60")])
        .spawn()?;
    // Wait until it has moved itself in.
    for _ in 0..100 {
        let procs = fs::read_to_string(format!("{CGROUP}/cgroup.procs"))?;
        if procs.lines().any(|l| l.trim() == child.id().to_string()) {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the sibling did not join {CGROUP}")
}

pub fn main(args: &[String]) -> ExitCode {
    let Some(agent) = args.first() else {
        eprintln!("bypass: expected the agent binary's path");
        return ExitCode::from(2);
    };
    let agent_bin = Path::new(agent);
    let mut r = Runner::default();
    if let Err(e) = bypass_suite(agent_bin, &mut r) {
        r.fail("bypass_setup", e);
    }
    if let Err(e) = crate::protect::run(agent_bin, &mut r) {
        r.fail("protect_setup", e);
    }
    r.finish()
}

fn bypass_suite(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    let policy = setup()?;
    let secret = p("secret/secret.txt");
    let secret_ino = ino(&secret)?;
    let secret_s = secret.to_str().unwrap().to_string();
    let udp_listener = std::net::UdpSocket::bind("127.0.0.1:5000")?;
    let mut agent = Agent::start(agent_bin, &[&policy])?;
    let agent_pid = agent.pid();
    let mut sibling = sibling()?;
    let sibling_pid = sibling.id().to_string();
    let mut b = Bypass { agent: &mut agent, cg: PathBuf::from(CGROUP) };

    type Case<'c> = (&'static str, Box<dyn FnOnce(&mut Bypass) -> Result<Outcome> + 'c>);
    let s = secret_s.as_str();
    let cases: Vec<Case> = vec![
        ("hardlink", Box::new(|b: &mut Bypass| b.attack(&["link", s, "/tmp/bp/allowed/hardlink"], EPERM, "path_link"))),
        (
            "symlink",
            Box::new(|b: &mut Bypass| {
                // Making the link is allowed (a name in allowed/); reading through it is not.
                let made = b.op(&["symlink", s, "/tmp/bp/allowed/symlink"])?;
                ensure!(made.errno == 0, "symlink in allowed/: errno {}", made.errno);
                b.attack(&["open", "/tmp/bp/allowed/symlink", "r"], EPERM, "file_open")
            }),
        ),
        (
            "rename_into_allowed_tree",
            Box::new(|b: &mut Bypass| b.attack(&["rename", s, "/tmp/bp/allowed/moved"], EPERM, "path_rename")),
        ),
        (
            "bind_mount_alias",
            Box::new(|b: &mut Bypass| {
                fs::create_dir_all(p("allowed/mnt"))?;
                if let Outcome::Bypassed(why) = b.attack(&["bind-mount", "/tmp/bp/secret", "/tmp/bp/allowed/mnt"], EPERM, "sb_mount")? {
                    return Ok(Outcome::Bypassed(why));
                }
                // An alias someone else made: rules follow the inode, not the name.
                fs::create_dir_all(p("allowed/alias"))?;
                let status = Command::new("mount").args(["--bind", "/tmp/bp/secret"]).arg(p("allowed/alias")).status()?;
                ensure!(status.success(), "unconfined bind mount failed");
                let result = b.attack(&["open", "/tmp/bp/allowed/alias/secret.txt", "r"], EPERM, "file_open");
                let _ = Command::new("umount").arg(p("allowed/alias")).status();
                result
            }),
        ),
        ("proc_self_fd_reopen", Box::new(|b: &mut Bypass| b.attack(&["reopen", "/tmp/bp/readonly.txt"], EPERM, "file_open"))),
        (
            "o_path_reopen",
            Box::new(|b: &mut Bypass| b.attack_on(&["opath-reopen", s], EPERM, "file_open", Some(secret_ino))),
        ),
        ("openat2_resolve", Box::new(|b: &mut Bypass| b.attack(&["openat2", s], EPERM, "file_open"))),
        // The open may run in an io-wq worker thread.
        ("io_uring_open", Box::new(|b: &mut Bypass| b.attack_on(&["uring-open", s], EPERM, "file_open", Some(secret_ino)))),
        (
            "memfd_fexecve",
            Box::new(|b: &mut Bypass| {
                let out = b.op(&["memfd-exec", "/bin/busybox"])?;
                if out.errno == 0 {
                    return Ok(Outcome::Bypassed("a copy of busybox in a memfd ran".into()));
                }
                ensure!(out.errno == EPERM, "fexecve errno {}", out.errno);
                let pid = out.pid;
                b.agent.wait_for(EVENT_WAIT, |v| {
                    v["type"] == "event"
                        && v["pid"] == pid
                        && v["verdict"] == "denied"
                        && v["requested"].as_array().is_some_and(|r| r.iter().any(|a| a == "exec"))
                })?;
                Ok(Outcome::Denied)
            }),
        ),
        ("script_with_allowed_interpreter", Box::new(|b: &mut Bypass| b.attack(&["exec", "/tmp/bp/allowed/script.sh"], EPERM, "file_open"))),
        (
            "fork_double_fork_setsid",
            Box::new(|b: &mut Bypass| b.attack_on(&["daemonize-open", s], EPERM, "file_open", Some(secret_ino))),
        ),
        ("write_pid_to_other_cgroup", Box::new(|b: &mut Bypass| b.attack(&["join", ELSEWHERE], EPERM, "file_open"))),
        ("unshare_then_access", Box::new(|b: &mut Bypass| b.attack(&["unshare-open", s], EPERM, "userns_create"))),
        (
            "ptrace_sibling",
            Box::new(|b: &mut Bypass| b.attack(&["ptrace", &sibling_pid], EPERM, "ptrace_access_check")),
        ),
        (
            "kill_agent",
            Box::new(|b: &mut Bypass| {
                let pid = agent_pid.to_string();
                let outcome = b.attack(&["kill", &pid, "9"], EPERM, "task_kill")?;
                ensure!(b.agent.alive(), "the agent is gone");
                Ok(outcome)
            }),
        ),
        (
            "sigio_kill_agent",
            Box::new(|b: &mut Bypass| {
                // A signal the kernel sends on its own when a file the attacker
                // armed becomes ready: no kill() call for task_kill to see.
                let pid = agent_pid.to_string();
                let out = b.op(&["sigio-kill", &pid])?;
                ensure!(out.rounds == 1, "arming the pipe failed: errno {}", out.errno);
                std::thread::sleep(Duration::from_millis(300));
                if !b.agent.alive() {
                    return Ok(Outcome::Bypassed("SIGIO killed the agent".into()));
                }
                b.denial("file_send_sigiotask", Some(out.pid), None)?;
                Ok(Outcome::Denied)
            }),
        ),
        (
            "prlimit_cpu_agent",
            Box::new(|b: &mut Bypass| {
                let pid = agent_pid.to_string();
                b.attack(&["prlimit-cpu", &pid], EPERM, "task_prlimit")
            }),
        ),
        (
            "renice_agent",
            Box::new(|b: &mut Bypass| {
                let pid = agent_pid.to_string();
                b.attack(&["renice", &pid], EPERM, "task_setnice")
            }),
        ),
        ("clone_into_cgroup", Box::new(|b: &mut Bypass| b.attack(&["clone-into", ELSEWHERE], EPERM, "task_alloc"))),
        ("bpf_detach", Box::new(|b: &mut Bypass| b.attack(&["bpf-next-link", "-"], EPERM, "bpf"))),
        (
            "udp_sendto",
            Box::new(|b: &mut Bypass| {
                let allowed = b.op(&["sendto", "127.0.0.1", "5000"])?;
                ensure!(allowed.errno == 0, "sendto the allowed peer: errno {}", allowed.errno);
                b.attack(&["sendto", "127.0.0.2", "6000"], EPERM, "socket_sendmsg")
            }),
        ),
        (
            "ipv4_mapped_ipv6",
            Box::new(|b: &mut Bypass| b.attack(&["sendto", "::ffff:127.0.0.2", "6000"], EPERM, "socket_sendmsg")),
        ),
    ];
    for (name, case) in cases {
        let result = case(&mut b);
        let (word, test) = match &result {
            Ok(Outcome::Denied) => ("denied", Ok(())),
            Ok(Outcome::Bypassed(why)) => ("BYPASSED", Err(anyhow::anyhow!("BYPASSED: {why}"))),
            Err(e) => ("BYPASSED", Err(anyhow::anyhow!("not shown denied: {e:#}"))),
        };
        println!("BYPASS {name} {word}");
        r.case(&format!("bypass_{name}"), || test);
    }
    let _ = sibling.kill();
    let _ = sibling.wait();
    drop(udp_listener);
    let (code, _) = agent.stop()?;
    ensure!(code == 0, "bypass agent exit code {code}");
    Ok(())
}

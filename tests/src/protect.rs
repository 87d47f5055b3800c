//! Capabilities, socket creation rules, self-protection switched off with a
//! reason, signals that stay inside the cgroup, and pinned programs that outlive
//! the agent.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};

use crate::{agent::Agent, op, suite::Runner};

const EPERM: i32 = 1;
const EACCES: i32 = 13;
const EVENT_WAIT: Duration = Duration::from_secs(10);
const PIN_ROOT: &str = "/sys/fs/bpf/systrace";

/// Lists the capabilities it needs and switches three protections off.
const OPEN_POLICY: &str = r#"
name = "protect-open"
cgroup = "systrace-protect-open"
mode = "enforce"
default = "deny"
capabilities = ["net_bind_service", "sys_admin", "sys_ptrace", "sys_module"]

[[exec]]
path = "/bin/busybox"

[[net]]
operations = ["bind"]
protocol = "tcp"
address = "127.0.0.1"
ports = 80

[[socket]]
family = "unix"

[[socket]]
family = "inet"
type = "raw"
verdict = "deny"

[[net]]
operations = ["connect"]
family = "unix"
path = "/tmp/protect/allowed.sock"

[[net]]
operations = ["connect"]
family = "unix"
abstract = "systrace-allowed"

[[net]]
operations = ["bind"]
family = "unix"
abstract = "systrace-mine"

[protection_off]
ptrace = "the test attaches to a sibling"
mount = "the test mounts a tmpfs"
module = "the test shows init_module reaching the kernel"
"#;

/// Keeps every protection on. It lists sys_module so that the module protection,
/// not a missing capability, is what refuses a module load.
const CLOSED_POLICY: &str = r#"
name = "protect-closed"
cgroup = "systrace-protect-closed"
mode = "enforce"
default = "deny"
capabilities = ["sys_module"]

[[exec]]
path = "/bin/busybox"

[[net]]
operations = ["bind"]
protocol = "tcp"
address = "127.0.0.1"
ports = 80

[[socket]]
family = "packet"
verdict = "deny"
"#;

/// Audit mode: what the closed policy refuses is allowed here, and reported.
const AUDIT_POLICY: &str = r#"
name = "protect-audit"
cgroup = "systrace-protect-audit"
mode = "audit"
default = "deny"

[[exec]]
path = "/bin/busybox"
"#;

fn cgroup(name: &str) -> Result<PathBuf> {
    let path = Path::new("/sys/fs/cgroup").join(name);
    fs::create_dir_all(&path)?;
    Ok(path)
}

fn run_op(cg: &Path, args: &[&str]) -> Result<op::Outcome> {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    op::run_args(Some(cg), &args)
}

fn expect(cg: &Path, args: &[&str], errno: i32) -> Result<op::Outcome> {
    let out = run_op(cg, args)?;
    ensure!(out.errno == errno, "{args:?} in {}: errno {} (expected {errno})", cg.display(), out.errno);
    Ok(out)
}

/// A process sleeping in `cg` (or outside any confined cgroup for `None`).
fn sleeper(cg: Option<&Path>) -> Result<Child> {
    let join = cg.map_or(String::new(), |cg| format!("echo $$ > {}/cgroup.procs && ", cg.display()));
    let child =
        Command::new("/bin/busybox").args(["sh", "-c", &format!("{join}exec /bin/busybox sleep 60")]).spawn()?;
    if let Some(cg) = cg {
        for _ in 0..100 {
            if fs::read_to_string(cg.join("cgroup.procs"))?.lines().any(|l| l.trim() == child.id().to_string()) {
                return Ok(child);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the sleeper did not join {}", cg.display());
    }
    Ok(child)
}

pub fn run(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    let dir = Path::new("/tmp/protect");
    fs::create_dir_all(dir.join("mnt"))?;
    let open_cg = cgroup("systrace-protect-open")?;
    let closed_cg = cgroup("systrace-protect-closed")?;
    let audit_cg = cgroup("systrace-protect-audit")?;
    let (open_policy, closed_policy) = (dir.join("open.toml"), dir.join("closed.toml"));
    let audit_policy = dir.join("audit.toml");
    fs::write(&open_policy, OPEN_POLICY)?;
    fs::write(&closed_policy, CLOSED_POLICY)?;
    fs::write(&audit_policy, AUDIT_POLICY)?;
    let mut agent = Agent::start(agent_bin, &[&open_policy, &closed_policy, &audit_policy])?;

    r.case("capabilities_listed_are_allowed_others_denied", || {
        expect(&open_cg, &["bind", "127.0.0.1", "80", "tcp"], 0)?;
        // Without CAP_NET_BIND_SERVICE the kernel answers EACCES for a low port.
        let out = expect(&closed_cg, &["bind", "127.0.0.1", "80", "tcp"], EACCES)?;
        let pid = out.pid;
        let ev = agent.wait_for(EVENT_WAIT, |v| v["type"] == "event" && v["pid"] == pid && v["hook"] == "capable")?;
        ensure!(ev["capability"] == "net_bind_service" && ev["verdict"] == "denied", "capable event: {ev}");
        Ok(())
    });

    r.case("socket_creation_by_family_and_type", || {
        let (unix, inet, inet6, packet) = ("1", "2", "10", "17");
        let (stream, raw) = ("1", "3");
        let out = expect(&closed_cg, &["socket", packet, raw], EPERM)?;
        let pid = out.pid;
        let ev =
            agent.wait_for(EVENT_WAIT, |v| v["type"] == "event" && v["pid"] == pid && v["hook"] == "socket_create")?;
        ensure!(ev["socket_family"] == "packet" && ev["socket_type"] == "raw", "socket_create event: {ev}");
        // Explicit family rule; stream sockets the tcp bind rule implies; a raw
        // inet socket an explicit rule denies; nothing else under a deny default.
        expect(&open_cg, &["socket", unix, stream], 0)?;
        expect(&open_cg, &["socket", inet, stream], 0)?;
        expect(&open_cg, &["socket", inet6, stream], 0)?;
        expect(&open_cg, &["socket", inet, raw], EPERM)?;
        expect(&closed_cg, &["socket", unix, stream], EPERM)?;
        Ok(())
    });

    r.case("unix_sockets_by_path_and_abstract_name", || unix_sockets(&mut agent, &open_cg, dir));

    r.case("protections_switched_off_with_a_reason", || {
        let status = agent.wait_for(EVENT_WAIT, |v| v["type"] == "status" && v["state"] == "enforcing")?;
        let open =
            status["policies"].as_array().and_then(|ps| ps.iter().find(|p| p["name"] == "protect-open")).cloned();
        let off = open.context("protect-open in the status line")?["protections_off"].clone();
        ensure!(
            off.as_array().is_some_and(|o| o.len() == 3
                && o.iter().any(|p| p["protection"] == "mount" && p["reason"] == "the test mounts a tmpfs")),
            "protections_off in status: {off}"
        );
        // Switched off: allowed.
        let mut sibling = sleeper(Some(&open_cg))?;
        let traced = expect(&open_cg, &["ptrace", &sibling.id().to_string()], 0);
        let _ = sibling.kill();
        let _ = sibling.wait();
        traced?;
        let mnt = dir.join("mnt");
        let mnt = mnt.to_str().unwrap();
        expect(&open_cg, &["mount-tmpfs", mnt], 0)?;
        let _ = Command::new("umount").arg(mnt).status();
        let loaded = run_op(&open_cg, &["init-module", "-"])?;
        ensure!(
            loaded.errno != EPERM && loaded.errno != 0,
            "init_module of junk with the module protection off: errno {}",
            loaded.errno
        );
        // On: refused, with the protection named.
        let out = expect(&closed_cg, &["mount-tmpfs", mnt], EPERM)?;
        let pid = out.pid;
        let ev = agent.wait_for(EVENT_WAIT, |v| v["type"] == "event" && v["pid"] == pid && v["hook"] == "sb_mount")?;
        ensure!(ev["protection"] == "mount", "sb_mount event: {ev}");
        Ok(())
    });

    r.case("module_loading_refused", || {
        // CAP_SYS_MODULE held, the protection on.
        let out = expect(&closed_cg, &["init-module", "-"], EPERM)?;
        let pid = out.pid;
        let ev = agent
            .wait_for(EVENT_WAIT, |v| v["type"] == "event" && v["pid"] == pid && v["hook"] == "kernel_load_data")?;
        ensure!(ev["protection"] == "module", "kernel_load_data event: {ev}");
        Ok(())
    });

    r.case("audit_mode_allows_and_reports_the_new_hooks", || {
        // Unlisted capability, no bind rule, no socket rule, mount protection on:
        // all allowed in audit mode, each reported with verdict "audit".
        let out = expect(&audit_cg, &["bind", "127.0.0.1", "80", "tcp"], 0)?;
        let pid = out.pid;
        for hook in ["capable", "socket_create", "socket_bind"] {
            let ev = agent.wait_for(EVENT_WAIT, |v| v["type"] == "event" && v["pid"] == pid && v["hook"] == hook)?;
            ensure!(ev["verdict"] == "audit", "{hook} event in audit mode: {ev}");
        }
        let mnt = dir.join("mnt");
        let out = expect(&audit_cg, &["mount-tmpfs", mnt.to_str().unwrap()], 0)?;
        let _ = Command::new("umount").arg(&mnt).status();
        let pid = out.pid;
        let ev = agent.wait_for(EVENT_WAIT, |v| v["type"] == "event" && v["pid"] == pid && v["hook"] == "sb_mount")?;
        ensure!(ev["verdict"] == "audit" && ev["protection"] == "mount", "sb_mount event in audit mode: {ev}");
        Ok(())
    });

    r.case("signals_stay_inside_the_cgroup", || {
        let mut inside = sleeper(Some(&closed_cg))?;
        let mut outside = sleeper(None)?;
        let to_inside = expect(&closed_cg, &["kill", &inside.id().to_string(), "15"], 0);
        let to_outside = expect(&closed_cg, &["kill", &outside.id().to_string(), "15"], EPERM);
        let probe = expect(&closed_cg, &["kill", &outside.id().to_string(), "0"], 0);
        let outside_alive = matches!(outside.try_wait(), Ok(None));
        for c in [&mut inside, &mut outside] {
            let _ = c.kill();
            let _ = c.wait();
        }
        to_inside?;
        to_outside?;
        probe?;
        ensure!(outside_alive, "the process outside the cgroup was signalled");
        Ok(())
    });

    r.case("pins_cannot_be_removed_from_inside", || {
        let own = Path::new(PIN_ROOT).join(agent.pid().to_string()).join("file_open");
        ensure!(own.exists(), "{} is not pinned", own.display());
        let out = expect(&closed_cg, &["unlink", own.to_str().unwrap()], EPERM)?;
        let pid = out.pid;
        let ev =
            agent.wait_for(EVENT_WAIT, |v| v["type"] == "event" && v["pid"] == pid && v["hook"] == "path_unlink")?;
        ensure!(ev["protection"] == "bpf", "path_unlink event: {ev}");
        Ok(())
    });

    let agent_pid = agent.pid();
    let (code, _) = agent.stop()?;
    ensure!(code == 0, "protect agent exit code {code}");
    ensure!(!Path::new(PIN_ROOT).join(agent_pid.to_string()).exists(), "pins left after a clean stop");

    r.case("pinned_programs_outlive_a_killed_agent", || pins_outlive(agent_bin, &closed_policy, &closed_cg));
    Ok(())
}

/// SIGKILL the agent: the pinned programs keep denying. A new agent takes over
/// without a gap; `systrace-agent detach` ends what a dead agent left.
fn pins_outlive(agent_bin: &Path, policy: &Path, cg: &Path) -> Result<()> {
    let target = Path::new("/tmp/protect/unlisted");
    fs::write(target, "x")?;
    let t = target.to_str().unwrap();
    let pinned_dirs = || -> Vec<PathBuf> {
        fs::read_dir(PIN_ROOT).map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect()).unwrap_or_default()
    };

    let first = Agent::start(agent_bin, &[policy])?;
    let first_pid = first.pid();
    expect(cg, &["open", t, "r"], EACCES)?;
    first.kill_hard()?;
    expect(cg, &["open", t, "r"], EACCES).context("after SIGKILL of the agent")?;
    ensure!(Path::new(PIN_ROOT).join(first_pid.to_string()).exists(), "the killed agent's pins are gone");

    let second = Agent::start(agent_bin, &[policy])?;
    ensure!(
        !Path::new(PIN_ROOT).join(first_pid.to_string()).exists(),
        "the new agent left the dead one's pins: {:?}",
        pinned_dirs()
    );
    expect(cg, &["open", t, "r"], EACCES).context("after the take-over")?;
    let (code, _) = second.stop()?;
    ensure!(code == 0, "second agent exit code {code}");
    ensure!(pinned_dirs().is_empty(), "pins after a clean stop: {:?}", pinned_dirs());
    expect(cg, &["open", t, "r"], 0).context("after a clean stop nothing is enforced")?;

    let third = Agent::start(agent_bin, &[policy])?;
    // A running agent's pins are not detach's to remove.
    let status = Command::new(agent_bin).arg("detach").status()?;
    ensure!(status.success(), "systrace-agent detach with an agent running: {status}");
    ensure!(Path::new(PIN_ROOT).join(third.pid().to_string()).exists(), "detach removed a running agent's pins");
    expect(cg, &["open", t, "r"], EACCES).context("detach with an agent running")?;
    third.kill_hard()?;
    expect(cg, &["open", t, "r"], EACCES)?;
    let status = Command::new(agent_bin).arg("detach").status()?;
    ensure!(status.success(), "systrace-agent detach: {status}");
    ensure!(pinned_dirs().is_empty(), "pins after detach: {:?}", pinned_dirs());
    expect(cg, &["open", t, "r"], 0).context("after detach, which waits for the kernel to release the links")?;
    Ok(())
}

/// Unix peers by the name they are bound to, path or abstract, for stream
/// connects and datagrams; the listeners run outside any confined cgroup.
fn unix_sockets(agent: &mut Agent, cg: &Path, dir: &Path) -> Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
    for name in ["allowed.sock", "denied.sock", "dgram.sock"] {
        let _ = fs::remove_file(dir.join(name));
    }
    let _allowed = UnixListener::bind(dir.join("allowed.sock"))?;
    let _denied = UnixListener::bind(dir.join("denied.sock"))?;
    let _dgram = UnixDatagram::bind(dir.join("dgram.sock"))?;
    let _abstract_allowed = UnixListener::bind_addr(&SocketAddr::from_abstract_name(b"systrace-allowed")?)?;
    let _abstract_denied = UnixListener::bind_addr(&SocketAddr::from_abstract_name(b"systrace-denied")?)?;
    expect(cg, &["unix-connect", "/tmp/protect/allowed.sock"], 0)?;
    let out = expect(cg, &["unix-connect", "/tmp/protect/denied.sock"], EPERM)?;
    let pid = out.pid;
    let ev = agent.wait_for(EVENT_WAIT, |v| v["type"] == "event" && v["pid"] == pid)?;
    ensure!(
        ev["hook"] == "unix_stream_connect" && ev["address"] == "/tmp/protect/denied.sock" && ev["family"] == "unix",
        "unix connect event: {ev}"
    );
    expect(cg, &["unix-connect", "@systrace-allowed"], 0)?;
    let out = expect(cg, &["unix-connect", "@systrace-denied"], EPERM)?;
    let pid = out.pid;
    let ev = agent.wait_for(EVENT_WAIT, |v| v["type"] == "event" && v["pid"] == pid)?;
    ensure!(ev["address"] == "@systrace-denied", "abstract connect event: {ev}");
    let out = expect(cg, &["unix-send", "/tmp/protect/dgram.sock"], EPERM)?;
    let pid = out.pid;
    let ev = agent.wait_for(EVENT_WAIT, |v| v["type"] == "event" && v["pid"] == pid)?;
    ensure!(ev["hook"] == "unix_may_send", "unix datagram event: {ev}");
    // Abstract names may be bound only as the policy says: no squatting.
    expect(cg, &["unix-bind", "@systrace-mine"], 0)?;
    let out = expect(cg, &["unix-bind", "@systrace-squatted"], EPERM)?;
    let pid = out.pid;
    let ev = agent.wait_for(EVENT_WAIT, |v| v["type"] == "event" && v["pid"] == pid)?;
    ensure!(ev["hook"] == "socket_bind" && ev["address"] == "@systrace-squatted", "abstract bind event: {ev}");
    Ok(())
}

//! The agent as a system service, in a Debian system booted with systemd as
//! PID 1 (`cargo xtask test --scenario systemd`). This program runs last, as
//! `systrace-e2e.service`, on the serial console, and powers the VM off.
//!
//! `systrace.service` (the shipped unit) enforces before ordinary services
//! start; `victim.service`, whose very first action is an open its policy
//! forbids (`policy unit = "victim.service"`), is refused at boot and on every
//! start after it (each start a new cgroup), also while the agent is killed
//! and restarted by systemd.

use std::{process::Command, process::ExitCode, time::Duration};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::suite::{boot_ns, wait_until, Runner};

const SECRET: &str = "/etc/victim/secret";
/// How long an agent start (or a reload) may take before the case fails: a
/// start verifies about 50 programs, about a minute on 6.1 under emulation
/// and more on a slower or busier host; the unit's TimeoutStartSec is 5
/// minutes. The waits end as soon as the condition holds, so this bounds only
/// a failure: a case is judged by what happens, not by a guess at the speed.
const AGENT_START: Duration = Duration::from_secs(300);
/// The most `systemd-analyze security` may score the shipped unit.
const MAX_EXPOSURE: f64 = 5.5;

/// `systemctl show -p PROP --value UNIT`.
pub(crate) fn show(unit: &str, prop: &str) -> Result<String> {
    let out = Command::new("systemctl").args(["show", "-p", prop, "--value", unit]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(crate) fn systemctl(args: &[&str]) -> Result<bool> {
    Ok(Command::new("systemctl").args(args).status()?.success())
}

/// The agent's JSON lines so far, from the journal (its stdout).
fn agent_lines() -> Result<Vec<Value>> {
    let out = Command::new("journalctl").args(["-u", "systrace.service", "-o", "cat", "--no-pager"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// Waits for the agent to report a denial of the secret's open for `pid`.
fn denial_for(pid: u64) -> Result<Value> {
    let mut found = None;
    wait_until(&format!("a denial of {SECRET} reported for pid {pid}"), Duration::from_secs(20), || {
        found = agent_lines()?.into_iter().find(|v| {
            v["type"] == "event" && v["verdict"] == "denied" && v["path"] == SECRET && v["tgid"].as_u64() == Some(pid)
        });
        Ok(found.is_some())
    })?;
    found.context("no denial")
}

/// Waits for an agent line that `pred` accepts.
fn wait_for_agent(what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<()> {
    wait_until(what, timeout, || Ok(agent_lines()?.iter().any(&pred))).map(|_| ())
}

/// Starts victim.service once; its main pid and exit status.
pub(crate) fn start_victim() -> Result<(u64, String)> {
    let before = show("victim.service", "ExecMainPID")?;
    // A oneshot that failed stays failed until started again: start returns
    // non-zero for it, which is the point.
    let _ = systemctl(&["start", "victim.service"])?;
    let now = show("victim.service", "ExecMainPID")?;
    ensure!(now != before, "victim.service did not start again (main pid still {before})");
    let pid: u64 = now.parse().context("victim's main pid")?;
    Ok((pid, show("victim.service", "ExecMainStatus")?))
}

pub fn main(_args: &[String]) -> ExitCode {
    let mut r = Runner::default();
    r.case("service_is_ready_before_the_services_it_confines", || {
        ensure!(
            show("systrace.service", "ActiveState")? == "active",
            "systrace.service is {}",
            show("systrace.service", "ActiveState")?
        );
        ensure!(show("systrace.service", "Type")? == "notify", "not a notify unit");
        let ready: u64 = show("systrace.service", "ActiveEnterTimestampMonotonic")?.parse()?;
        let victim: u64 = show("victim.service", "ExecMainStartTimestampMonotonic")?.parse()?;
        ensure!(ready > 0 && victim > ready, "victim started at {victim} us, systrace ready at {ready} us");
        let lines = agent_lines()?;
        ensure!(
            lines.iter().any(|v| v["type"] == "status" && v["state"] == "enforcing"),
            "no enforcing status in the journal"
        );
        Ok(())
    });
    r.case("unit_denied_from_its_first_instruction_at_boot", || {
        let pid: u64 = show("victim.service", "ExecMainPID")?.parse()?;
        let status = show("victim.service", "ExecMainStatus")?;
        if status != "1" {
            let journal = Command::new("journalctl").args(["-b", "-u", "victim.service", "--no-pager"]).output()?;
            let refusals: Vec<Value> = agent_lines()?
                .into_iter()
                .filter(|v| v["type"] == "event" && v["policy"] == "victim")
                .take(8)
                .collect();
            anyhow::bail!(
                "cat exited {status}; the unit's journal: {}; the agent's events for it: {refusals:?}",
                String::from_utf8_lossy(&journal.stdout)
            );
        }
        let denial = denial_for(pid)?;
        ensure!(denial["hook"] == "file_open" && denial["policy"] == "victim", "{denial}");
        Ok(())
    });
    r.case("unit_denied_on_every_restart", || {
        let mut cgroups = Vec::new();
        for start in 1..=3 {
            let (pid, status) = start_victim()?;
            ensure!(status == "1", "start {start}: cat exited {status}");
            let denial = denial_for(pid).with_context(|| format!("start {start}"))?;
            cgroups.push(denial["cgroup_id"].clone());
        }
        cgroups.dedup();
        ensure!(cgroups.len() == 3, "the starts shared cgroups: {cgroups:?}");
        // systemd moves each spawned process into the unit's cgroup from both
        // sides; the child's own write, when it comes second, is its to make.
        let moves: Vec<Value> = agent_lines()?
            .into_iter()
            .filter(|v| v["type"] == "event" && v["protection"] == "cgroup" && v["policy"] == "victim")
            .collect();
        ensure!(moves.is_empty(), "systemd's own moves were refused: {moves:?}");
        Ok(())
    });
    r.case("enforcement_survives_killing_the_agent", || {
        let before: u64 = show("systrace.service", "MainPID")?.parse()?;
        ensure!(systemctl(&["kill", "-s", "KILL", "systrace.service"])?, "systemctl kill failed");
        // At once, before systemd restarts the agent: the pinned programs refuse.
        let (in_gap, status) = start_victim()?;
        ensure!(status == "1", "with the agent killed, cat exited {status}");
        // systemd restarts it; the new agent takes the pins over.
        wait_until("systemd to restart the agent", AGENT_START, || {
            let now: u64 = show("systrace.service", "MainPID")?.parse().unwrap_or(0);
            Ok(now != 0 && now != before && show("systrace.service", "ActiveState")? == "active")
        })?;
        let (pid, status) = start_victim()?;
        ensure!(status == "1", "after the restart, cat exited {status}");
        denial_for(pid)?;
        ensure!(show("systrace.service", "NRestarts")? != "0", "NRestarts is 0");
        // The denial made while no agent ran is delivered, once, and the new
        // agent accounts for the gap: nothing read by the dead agent unwritten.
        // Delivered once the old programs are off their hooks (seconds under
        // emulation), from the dead agent's ring buffer.
        wait_until("the denial made in the gap", AGENT_START, || {
            Ok(agent_lines()?.iter().any(|v| v["type"] == "event" && v["tgid"].as_u64() == Some(in_gap)))
        })?;
        let mut gap = None;
        wait_until("the new agent's telemetry-gap status", AGENT_START, || {
            gap = agent_lines()?.into_iter().find(|v| {
                v["state"] == "telemetry-gap" && v["previous_agent"].as_str() == Some(before.to_string().as_str())
            });
            Ok(gap.is_some())
        })?;
        let gap = gap.context("no gap record")?;
        println!("telemetry gap: {gap}");
        ensure!(gap["known"] == true && gap["unaccounted"] == 0, "{gap}");
        let copies = agent_lines()?
            .iter()
            .filter(|v| v["type"] == "event" && v["tgid"].as_u64() == Some(in_gap) && v["path"] == SECRET)
            .count();
        ensure!(copies == 1, "the denial made in the gap was reported {copies} times");
        Ok(())
    });
    r.case("reload_through_systemctl", || {
        ensure!(systemctl(&["reload", "systrace.service"])?, "systemctl reload failed");
        wait_for_agent("a reloaded status", AGENT_START, |v| v["type"] == "status" && v["state"] == "reloaded")?;
        ensure!(show("systrace.service", "ActiveState")? == "active", "not active after the reload");
        let (pid, _) = start_victim()?;
        denial_for(pid)?;
        Ok(())
    });
    // The second boot of a run checks what must hold on every boot; the rest
    // ran on the first.
    let boot_only = std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.contains("systrace.e2e=boot-only"));
    if boot_only {
        return r.finish();
    }
    r.case("unit_hardening_measured_by_systemd_analyze", || {
        let out = Command::new("systemd-analyze").args(["security", "--no-pager", "systrace.service"]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "→ Overall exposure level for systrace.service: 4.6 OK 🙂"
        let line = text.lines().find(|l| l.contains("Overall exposure level")).context("no exposure level")?;
        println!("systemd-analyze: {}", line.trim());
        let score: f64 = line
            .split(':')
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .context("unreadable exposure level")?;
        // 10 is a unit with no hardening at all; what a BPF LSM agent must keep
        // (CAP_SYS_ADMIN, CAP_BPF, the host's PID and network namespaces, the
        // cgroup tree) costs about half of that.
        ensure!(
            score <= MAX_EXPOSURE,
            "exposure {score} above {MAX_EXPOSURE}: {}",
            text.lines().filter(|l| l.contains('✗')).take(12).collect::<Vec<_>>().join("; ")
        );
        Ok(())
    });
    r.case("learn_nginx_through_its_unit", learn_nginx);
    r.case("nginx_serves_pages_under_the_shipped_policy", nginx_serves);
    r.case("nginx_cgroup_forbidden_actions_denied", nginx_forbidden);
    r.case("user_unit_denied_under_a_real_user_manager", user_unit);
    crate::telemetry::cases(&mut r);
    r.finish()
}

const USER_SECRET: &str = "/etc/victim/user-secret";

/// A user unit (`user_unit = "victim3.service"`, `user = 1000`) under a real
/// `systemd --user` (user@1000.service): its first action, a read of a file
/// its user may read, is refused on every start; the same read by the same
/// user outside the unit is not.
fn user_unit() -> Result<()> {
    let sh = |cmd: &str| crate::telemetry::sh(cmd).map(|out| out.trim().to_string());
    sh("id -u alice >/dev/null 2>&1 || useradd -m -u 1000 alice")?;
    std::fs::write(USER_SECRET, "alice may read this, but not from victim3.service\n")?;
    sh(&format!("chmod 644 {USER_SECRET}"))?;
    sh("install -d -o alice /home/alice/.config /home/alice/.config/systemd /home/alice/.config/systemd/user")?;
    std::fs::write(
        "/home/alice/.config/systemd/user/victim3.service",
        format!("[Unit]\nStartLimitIntervalSec=0\n[Service]\nType=oneshot\nExecStart=/bin/cat {USER_SECRET}\n"),
    )?;
    std::fs::write(
        "/etc/systrace/policies/user-victim.toml",
        format!(
            "name = \"user-victim\"\nuser_unit = \"victim3.service\"\nuser = 1000\nmode = \"enforce\"\ndefault = \"allow\"\n\n\
             [[file]]\npath = \"{USER_SECRET}\"\naccess = [\"read\"]\nverdict = \"deny\"\n"
        ),
    )?;
    wait_for_agent("the agent to load the user unit's policy", Duration::from_secs(30), |v| {
        v["type"] == "status" && v["policies"].as_array().is_some_and(|p| p.iter().any(|p| p["name"] == "user-victim"))
    })?;
    if !systemctl(&["start", "user@1000.service"])? {
        let log = Command::new("sh")
            .args([
                "-c",
                "journalctl -b --no-pager -o cat -u user@1000.service -u user-runtime-dir@1000.service | tail -25",
            ])
            .output()?;
        anyhow::bail!("user@1000.service did not start: {}", String::from_utf8_lossy(&log.stdout).replace('\n', " | "));
    }
    let user = |args: &str| format!("runuser -u alice -- env XDG_RUNTIME_DIR=/run/user/1000 systemctl --user {args}");
    sh(&user("daemon-reload"))?;
    // The same read, by alice, outside the unit: allowed.
    sh(&format!("runuser -u alice -- cat {USER_SECRET}"))?;
    let mut pids = Vec::new();
    for start in 1..=2 {
        let before = sh(&user("show -p ExecMainPID --value victim3.service"))?;
        let _ = Command::new("sh").args(["-c", &user("start victim3.service")]).status()?;
        let pid = sh(&user("show -p ExecMainPID --value victim3.service"))?;
        let status = sh(&user("show -p ExecMainStatus --value victim3.service"))?;
        ensure!(pid != before, "start {start}: victim3.service did not start again");
        ensure!(status == "1", "start {start}: cat in the user unit exited {status}");
        let pid: u64 = pid.parse()?;
        wait_for_agent(&format!("a denial for the user unit's pid {pid}"), Duration::from_secs(20), |v| {
            v["type"] == "event"
                && v["policy"] == "user-victim"
                && v["tgid"].as_u64() == Some(pid)
                && v["path"] == USER_SECRET
        })?;
        pids.push(pid);
    }
    Ok(())
}

const NGINX_CGROUP: &str = "/sys/fs/cgroup/system.slice/nginx.service";
/// The pages the checks fetch: Debian's default site and a missing page.
const PAGES: &[(&str, &str)] = &[("/", "200"), ("/index.nginx-debian.html", "200"), ("/missing", "404")];

/// `busybox wget` of `path` on the VM's own nginx: the body, or the error.
fn fetch(path: &str) -> Result<String> {
    let out = Command::new("busybox").args(["wget", "-q", "-O", "-", &format!("http://127.0.0.1{path}")]).output()?;
    ensure!(out.status.success(), "GET {path}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fetches [`PAGES`]: the 200s must succeed, the 404 must fail.
fn traffic() -> Result<()> {
    for (path, status) in PAGES {
        match (fetch(path), *status) {
            (Ok(body), "200") => ensure!(body.contains("nginx"), "GET {path}: {body}"),
            (Err(e), "200") => return Err(e),
            (Ok(_), _) => anyhow::bail!("GET {path} found a page"),
            (Err(_), _) => {}
        }
    }
    Ok(())
}

/// `learn --unit nginx.service` with the real systemd restarting the unit:
/// what the shipped policy was made from (it prints the generated policy).
fn learn_nginx() -> Result<()> {
    let out = "/tmp/nginx.jsonl";
    let err = std::fs::File::create("/tmp/learn-nginx.err")?;
    let mut learn = Command::new("/usr/bin/systrace-agent")
        .args(["learn", "--unit", "nginx.service", "--duration", "40", "-o", out])
        .stderr(err)
        .spawn()?;
    wait_until("learning to start", Duration::from_secs(60), || {
        Ok(std::fs::read_to_string("/tmp/learn-nginx.err").unwrap_or_default().contains("learning"))
    })?;
    let restarted = systemctl(&["restart", "nginx.service"]);
    let fetched = traffic();
    let status = learn.wait()?;
    ensure!(restarted?, "nginx did not restart under learning");
    fetched?;
    ensure!(status.success(), "learn exited {status}: {}", std::fs::read_to_string("/tmp/learn-nginx.err")?);
    let policy = "/tmp/nginx-learned.toml";
    let generated =
        Command::new("/usr/bin/systrace-agent").args(["generate", out, "-o", policy, "--name", "nginx"]).output()?;
    ensure!(generated.status.success(), "generate: {}", String::from_utf8_lossy(&generated.stderr));
    let text = std::fs::read_to_string(policy)?;
    for line in text.lines() {
        println!("nginx-learned: {line}");
    }
    let checked = Command::new("/usr/bin/systrace-agent").args(["check", policy]).output()?;
    ensure!(checked.status.success(), "check: {}", String::from_utf8_lossy(&checked.stderr));
    ensure!(text.contains("unit = \"nginx.service\""), "no unit target in the learned policy");
    ensure!(text.contains("/var/www/html"), "the document root is not in the learned policy");
    Ok(())
}

/// Puts the shipped nginx policy in force (the agent reloads the directory
/// by itself), restarts nginx under it and fetches the pages: 0 denials.
fn nginx_serves() -> Result<()> {
    std::fs::copy("/usr/share/systrace/policies/nginx.toml", "/etc/systrace/policies/nginx.toml")?;
    wait_for_agent("the agent to load the nginx policy", Duration::from_secs(30), |v| {
        v["type"] == "status"
            && v["state"] == "reloaded"
            && v["policies"].as_array().is_some_and(|p| p.iter().any(|p| p["name"] == "nginx"))
    })?;
    let since = boot_ns();
    ensure!(systemctl(&["restart", "nginx.service"])?, "nginx did not start under its policy");
    traffic()?;
    std::thread::sleep(Duration::from_secs(1));
    let denials: Vec<Value> = agent_lines()?
        .into_iter()
        .filter(|v| {
            v["type"] == "event"
                && v["policy"] == "nginx"
                && v["verdict"] == "denied"
                && v["boot_ns"].as_u64().is_some_and(|t| t >= since)
        })
        .collect();
    ensure!(
        denials.is_empty(),
        "{} denials serving pages: {:?}",
        denials.len(),
        denials.iter().take(5).collect::<Vec<_>>()
    );
    Ok(())
}

/// What an attacker who took over nginx would try, from inside its cgroup:
/// each refused by our hook, for that process.
fn nginx_forbidden() -> Result<()> {
    let cg = std::path::Path::new(NGINX_CGROUP);
    ensure!(cg.exists(), "nginx has no cgroup");
    // (operation, the errno our refusal gives: EACCES for files, EPERM else)
    let attacks: &[(&[&str], i32)] = &[
        (&["open", "/etc/shadow", "r"], 13),
        (&["open", "/var/www/html/index.nginx-debian.html", "w"], 13),
        (&["exec", "/bin/sh"], 13),
        (&["connect", "127.0.0.1", "22", "tcp"], 1),
        (&["bind", "0.0.0.0", "8080", "tcp"], 1),
    ];
    for (args, errno) in attacks {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let out = crate::op::run_args(Some(cg), &args)?;
        ensure!(out.errno == *errno, "{args:?} in nginx's cgroup: errno {} (expected {errno})", out.errno);
        wait_for_agent(&format!("{args:?}: a denial reported for pid {}", out.tgid), Duration::from_secs(20), |v| {
            v["type"] == "event"
                && v["verdict"] == "denied"
                && v["policy"] == "nginx"
                && v["tgid"].as_u64() == Some(out.tgid as u64)
        })?;
    }
    Ok(())
}

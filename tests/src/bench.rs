//! `systrace-vmtest bench AGENT`: enforcement overhead, measured side by side in
//! one VM run. Every case prints a `BENCH {json}` line; `cargo xtask bench`
//! collects them into a table and `target/bench/results.json`.
//!
//! Costs are the workload process's CPU time (system + user; the hooks run in its
//! context), in a one-vCPU VM. Variants of open+close on an allowed file are
//! interleaved round by round so drift (TCG, caches) hits all of them alike; the
//! median over rounds is reported:
//!   (a) no programs attached (the agent idle, its programs detached),
//!   (a0) the floor: only a program that returns 0 at once, on file_open,
//!   (b) programs attached, the process in a cgroup without a policy,
//!   (c) confined by a 10-rule policy, (d) 1,000 rules, (e) 100,000 rules.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

const ROOT: &str = "/tmp/bench";
const ROUNDS: usize = 15;
const OPEN_ITERATIONS: u64 = 10_000;
const EXEC_ITERATIONS: u64 = 60;
const CONNECT_ITERATIONS: u64 = 2_000;
const READ_ITERATIONS: u64 = 10_000;
const LISTEN_PORT: u16 = 8080;
const FLOOD_SECONDS: u64 = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The agent, its output going to a file (the JSON sink), driven by signals.
struct BenchAgent {
    child: Child,
    sink: PathBuf,
}

impl BenchAgent {
    fn start(agent: &Path, policies: &[PathBuf]) -> Result<BenchAgent> {
        let sink = Path::new(ROOT).join("agent.jsonl");
        let child = Command::new(agent)
            .arg("run")
            .arg("--bench-detach-signal")
            .args(policies)
            .stdout(fs::File::create(&sink)?)
            .stderr(Stdio::null())
            .spawn()?;
        let a = BenchAgent { child, sink };
        a.wait_line(Duration::from_secs(600), |v| v["state"] == "enforcing")?;
        Ok(a)
    }

    fn lines(&self) -> Vec<Value> {
        let Ok(f) = fs::File::open(&self.sink) else { return vec![] };
        BufReader::new(f).lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect()
    }

    /// Waits for a line matching `pred` that is newer than the `skip` lines already there.
    fn wait_line_after(&self, skip: usize, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.lines().into_iter().skip(skip).find(|v| pred(v)) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("no matching agent line within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_line(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        self.wait_line_after(0, timeout, pred)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Asks for a stats line and returns it.
    fn stats(&self) -> Result<Value> {
        let skip = self.lines().len();
        self.signal(libc::SIGUSR1);
        self.wait_line_after(skip, Duration::from_secs(30), |v| v["type"] == "stats")
    }

    /// Cycles the agent's programs (attached -> detached -> no-op -> attached)
    /// until they are in state `want`.
    fn set_state(&self, want: &str) -> Result<()> {
        for _ in 0..4 {
            let skip = self.lines().len();
            self.signal(libc::SIGUSR2);
            let line = self.wait_line_after(skip, Duration::from_secs(60), |v| {
                v["type"] == "status"
                    && ["attached", "detached", "noop", "noop_lookup"].iter().any(|s| v["state"] == *s)
            })?;
            if line["state"] == want {
                return Ok(());
            }
        }
        bail!("the agent never reached state {want}")
    }

    fn rss_kib(&self) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        self.signal(libc::SIGINT);
        let _ = self.child.wait();
    }
}

/// Runs one timed workload (`op bench-open` / `bench-exec` / `flood`) and returns its JSON.
fn workload(cgroup: Option<&Path>, args: &[&str]) -> Result<Value> {
    workload_with(cgroup, &[], args)
}

/// [`workload`] with leading options of `op` (`--landlock DIR`, `--apparmor PROFILE`).
fn workload_with(cgroup: Option<&Path>, options: &[&str], args: &[&str]) -> Result<Value> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("op");
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    let out = cmd.args(options).args(args).output()?;
    ensure!(out.status.success(), "workload {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).context("workload output")?;
    ensure!(v["errno"] == 0, "workload {args:?} failed: {v}");
    Ok(v)
}

fn policy(name: &str, cgroup: &str, rules: usize, allowed: &Path, exec: &Path) -> Result<PathBuf> {
    let dir = Path::new(ROOT).join(format!("files-{name}"));
    let mut text = format!("name = \"{name}\"\ncgroup = \"{cgroup}\"\nmode = \"enforce\"\ndefault = \"deny\"\n");
    text.push_str(&format!(
        "[[net]]\noperations = [\"connect\"]\nprotocol = \"tcp\"\naddress = \"127.0.0.1\"\nports = {LISTEN_PORT}\n"
    ));
    text.push_str(&format!("[[file]]\npath = \"{}\"\naccess = [\"read\"]\n", allowed.display()));
    text.push_str(&format!("[[exec]]\npath = \"{}\"\n", exec.display()));
    for i in 0..rules.saturating_sub(2) {
        let sub = dir.join(format!("d{:03}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir_all(&sub)?;
        }
        let path = sub.join(format!("f{:03}", i % 1000));
        fs::File::create(&path)?;
        text.push_str(&format!("[[file]]\npath = \"{}\"\naccess = [\"read\"]\n", path.display()));
    }
    let file = Path::new(ROOT).join(format!("{name}.toml"));
    fs::write(&file, text)?;
    fs::create_dir_all(Path::new("/sys/fs/cgroup").join(cgroup))?;
    Ok(file)
}

/// The AppArmor profile of the benchmark's AppArmor rows: reading the
/// benchmark's tree, as policy (c) allows, plus what the workload program
/// needs to start (its binary, the loader and libraries, its own /proc entries).
const APPARMOR_PROFILE: &str = "systrace-bench";

/// Loads [`APPARMOR_PROFILE`] with Debian's `apparmor_parser`.
fn load_apparmor_profile() -> Result<()> {
    ensure!(Path::new("/sys/kernel/security/apparmor").exists(), "AppArmor is not active on this kernel");
    let profile = format!(
        "profile {APPARMOR_PROFILE} flags=(attach_disconnected) {{\n\
         \x20 /usr/bin/systrace-vmtest mr,\n\
         \x20 /{{,usr/}}lib{{,32,64,x32}}/** mr,\n\
         \x20 /etc/ld.so.cache r,\n\
         \x20 /proc/*/comm r,\n\
         \x20 {ROOT}/ r,\n\
         \x20 {ROOT}/** r,\n\
         }}\n"
    );
    let file = Path::new(ROOT).join("apparmor.profile");
    fs::write(&file, profile)?;
    // -r: load (or replace); -K: no cache to write.
    let out = Command::new("/sbin/apparmor_parser")
        .args(["-r", "-K"])
        .arg(&file)
        .output()
        .context("running apparmor_parser")?;
    ensure!(out.status.success(), "apparmor_parser: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

fn emit(v: Value) {
    println!("BENCH {v}");
}

const PROFILE_ITERATIONS: u64 = 5_000;

/// Which programs one open+close runs, and what each costs, for an
/// unconfined and a confined process: the kernel's run statistics
/// (`kernel.bpf_stats_enabled`), on only for this phase since they add two
/// clock reads to every program run. In icount mode a nanosecond is an
/// instruction. Also each program's size after the verifier.
fn profile(agent: &BenchAgent, cg: &dyn Fn(&str) -> PathBuf, allowed: &Path, kernel: &str) -> Result<()> {
    eprintln!("bench: per-program costs (kernel run statistics)");
    let by_name = |v: &Value| -> std::collections::BTreeMap<String, (u64, u64)> {
        v["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["name"].as_str()?.to_string(), (p["run_count"].as_u64()?, p["run_ns"].as_u64()?))))
            .collect()
    };
    let sizes = agent.stats()?;
    for p in sizes["programs"].as_array().into_iter().flatten() {
        emit(json!({"case": "program_size", "name": p["name"], "kernel": kernel,
            "xlated_insns": p["xlated_insns"], "verified_insns": p["verified_insns"]}));
    }
    fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("enabling BPF run statistics")?;
    let result = (|| -> Result<()> {
        for (variant, cgroup) in [("b_agent_unconfined", "bench-none"), ("c_confined_10_rules", "bench-r10")] {
            workload(Some(&cg(cgroup)), &["bench-open", &allowed.display().to_string(), "500"])?;
            let before = by_name(&agent.stats()?);
            workload(
                Some(&cg(cgroup)),
                &["bench-open", &allowed.display().to_string(), &PROFILE_ITERATIONS.to_string()],
            )?;
            let after = by_name(&agent.stats()?);
            for (name, (count, ns)) in &after {
                let (count0, ns0) = before.get(name).copied().unwrap_or((0, 0));
                let runs = count - count0;
                // Programs the workload's own start and the agent's replies ran
                // a few times are not per-operation costs.
                if runs < PROFILE_ITERATIONS / 2 {
                    continue;
                }
                emit(json!({"case": "program_cost", "name": name, "variant": variant, "kernel": kernel,
                    "runs_per_op": runs as f64 / PROFILE_ITERATIONS as f64,
                    "ns_per_run": (ns - ns0) as f64 / runs as f64}));
            }
        }
        Ok(())
    })();
    fs::write("/proc/sys/kernel/bpf_stats_enabled", "0").context("disabling BPF run statistics")?;
    result
}

pub fn main(args: &[String]) -> ExitCode {
    let Some(agent) = args.first() else {
        eprintln!("bench: expected the agent binary's path");
        return ExitCode::from(2);
    };
    match run(Path::new(agent)) {
        Ok(()) => {
            println!("BENCH-DONE");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("BENCH-FAILED {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(agent_bin: &Path) -> Result<()> {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_string();
    fs::create_dir_all(ROOT)?;
    let allowed = Path::new(ROOT).join("allowed");
    // 4 KiB: the read case reads it whole.
    fs::write(&allowed, vec![b'x'; 4096])?;
    let denied = Path::new(ROOT).join("denied");
    fs::write(&denied, "x")?;
    let exec = Path::new(ROOT).join("true");
    fs::copy("/bin/busybox", &exec)?;
    let cg = |name: &str| Path::new("/sys/fs/cgroup").join(name);
    eprintln!("bench: writing policies with 10, 1,000 and 100,000 rules");
    let policies = vec![
        policy("r10", "bench-r10", 10, &allowed, &exec)?,
        policy("r1k", "bench-r1k", 1_000, &allowed, &exec)?,
        policy("r100k", "bench-r100k", 100_000, &allowed, &exec)?,
    ];
    fs::create_dir_all(cg("bench-none"))?;
    eprintln!("bench: loading the AppArmor profile for the AppArmor rows");
    load_apparmor_profile()?;
    eprintln!("bench: starting the agent with all three policies");
    let agent = BenchAgent::start(agent_bin, &policies)?;
    let rss = agent.rss_kib()?;

    // `options`: the peers' (`--landlock DIR`, `--apparmor PROFILE`), run with
    // the agent's programs detached.
    let open_with = |cgroup: &str, options: &[&str]| -> Result<f64> {
        // A short untimed run first: the first opens after a switch pay for
        // TCG translating the code path afresh.
        workload_with(Some(&cg(cgroup)), options, &["bench-open", &allowed.display().to_string(), "500"])?;
        let v = workload_with(
            Some(&cg(cgroup)),
            options,
            &["bench-open", &allowed.display().to_string(), &OPEN_ITERATIONS.to_string()],
        )?;
        v["ns_per_op"].as_f64().context("ns_per_op")
    };
    let open = |cgroup: &str| open_with(cgroup, &[]);
    let bench_dir = ROOT.to_string();
    // A listener that accepts and drops every connection, outside any policy.
    let listener = std::net::TcpListener::bind(("127.0.0.1", LISTEN_PORT))?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let connect = |cgroup: &str| -> Result<f64> {
        let v = workload(
            Some(&cg(cgroup)),
            &["bench-connect", "127.0.0.1", &LISTEN_PORT.to_string(), &CONNECT_ITERATIONS.to_string()],
        )?;
        v["ns_per_op"].as_f64().context("ns_per_op")
    };
    let read = |cgroup: &str| -> Result<f64> {
        workload(Some(&cg(cgroup)), &["bench-read", &allowed.display().to_string(), "500"])?;
        let v =
            workload(Some(&cg(cgroup)), &["bench-read", &allowed.display().to_string(), &READ_ITERATIONS.to_string()])?;
        v["ns_per_op"].as_f64().context("ns_per_op")
    };
    let fork_exec = |cgroup: &str| -> Result<f64> {
        let v =
            workload(Some(&cg(cgroup)), &["bench-exec", &exec.display().to_string(), &EXEC_ITERATIONS.to_string()])?;
        v["ns_per_op"].as_f64().context("ns_per_op")
    };

    // Interleaved rounds: each round measures every variant once.
    let names = [
        "a_no_agent",
        "a0_noop_program_floor",
        "a1_noop_programs_on_every_hook_an_open_passes",
        "b_agent_unconfined",
        "c_confined_10_rules",
        "d_confined_1k_rules",
        "e_confined_100k_rules",
        "landlock_confined",
        "apparmor_confined",
    ];
    let mut open_ns: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut exec_ns: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut connect_ns: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut read_ns: Vec<Vec<f64>> = vec![Vec::new(); 4];
    for round in 0..ROUNDS {
        eprintln!("bench: round {}/{ROUNDS}", round + 1);
        agent.set_state("detached")?;
        open_ns[0].push(open("bench-none")?);
        open_ns[7].push(open_with("bench-none", &["--landlock", &bench_dir])?);
        open_ns[8].push(open_with("bench-none", &["--apparmor", APPARMOR_PROFILE])?);
        exec_ns[0].push(fork_exec("bench-none")?);
        connect_ns[0].push(connect("bench-none")?);
        read_ns[0].push(read("bench-none")?);
        agent.set_state("noop")?;
        open_ns[1].push(open("bench-none")?);
        read_ns[1].push(read("bench-none")?);
        agent.set_state("noop_lookup")?;
        open_ns[2].push(open("bench-none")?);
        agent.set_state("attached")?;
        open_ns[3].push(open("bench-none")?);
        read_ns[2].push(read("bench-none")?);
        open_ns[4].push(open("bench-r10")?);
        read_ns[3].push(read("bench-r10")?);
        exec_ns[1].push(fork_exec("bench-r10")?);
        connect_ns[1].push(connect("bench-r10")?);
        open_ns[5].push(open("bench-r1k")?);
        open_ns[6].push(open("bench-r100k")?);
    }
    let base = median(open_ns[0].clone());
    for (name, samples) in names.iter().zip(&open_ns) {
        let ns = median(samples.clone());
        emit(json!({"case": "open_close", "name": name, "kernel": kernel, "iterations": OPEN_ITERATIONS,
            "rounds": ROUNDS, "ns_per_op": ns, "ratio_vs_baseline": ns / base, "samples_ns": samples}));
    }
    let connect_base = median(connect_ns[0].clone());
    for (name, samples) in ["a_no_agent", "c_confined_10_rules"].iter().zip(&connect_ns) {
        let ns = median(samples.clone());
        emit(json!({"case": "connect", "name": name, "kernel": kernel, "iterations": CONNECT_ITERATIONS,
            "rounds": ROUNDS, "ns_per_op": ns, "ratio_vs_baseline": ns / connect_base, "samples_ns": samples}));
    }
    let read_base = median(read_ns[0].clone());
    for (name, samples) in
        ["a_no_agent", "a0_noop_program_floor", "b_agent_unconfined", "c_confined_10_rules"].iter().zip(&read_ns)
    {
        let ns = median(samples.clone());
        emit(json!({"case": "read_4k", "name": name, "kernel": kernel, "iterations": READ_ITERATIONS,
            "rounds": ROUNDS, "ns_per_op": ns, "ratio_vs_baseline": ns / read_base, "samples_ns": samples}));
    }
    let exec_base = median(exec_ns[0].clone());
    for (name, samples) in ["a_no_agent", "c_confined_10_rules"].iter().zip(&exec_ns) {
        let ns = median(samples.clone());
        emit(json!({"case": "fork_exec", "name": name, "kernel": kernel, "iterations": EXEC_ITERATIONS,
            "rounds": ROUNDS, "ns_per_op": ns, "ratio_vs_baseline": ns / exec_base, "samples_ns": samples}));
    }

    profile(&agent, &cg, &allowed, &kernel)?;

    // Violation throughput: denials as fast as a confined process can make them.
    eprintln!("bench: violation flood for {FLOOD_SECONDS} s");
    let before = agent.stats()?;
    let flood =
        workload(Some(&cg("bench-r10")), &["flood", &denied.display().to_string(), &FLOOD_SECONDS.to_string()])?;
    // Wait until the agent has drained the ring: every report written or dropped.
    let deadline = Instant::now() + Duration::from_secs(120);
    let after = loop {
        let s = agent.stats()?;
        let settled = s["events_reported"].as_u64()
            == Some(s["events_delivered"].as_u64().unwrap_or(0) + s["ring_full_drops"].as_u64().unwrap_or(0));
        if settled || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    let (produced, delivered, dropped) =
        (delta("events_reported"), delta("events_delivered"), delta("ring_full_drops"));
    let attempts = flood["rounds"].as_u64().unwrap_or(0);
    emit(json!({"case": "violation_throughput", "name": "denials", "kernel": kernel, "seconds": FLOOD_SECONDS,
        "attempts": attempts, "produced": produced, "delivered": delivered, "dropped": dropped,
        "produced_per_s": produced as f64 / FLOOD_SECONDS as f64,
        "accounted": produced == delivered + dropped && produced == attempts}));
    ensure!(produced == delivered + dropped, "produced {produced} != delivered {delivered} + dropped {dropped}");
    ensure!(produced == attempts, "the workload made {attempts} denied opens but {produced} events were produced");

    emit(json!({"case": "agent_memory", "name": "rss_with_100k_rules", "kernel": kernel, "rss_kib": rss,
        "rules": 100_000 + 1_000 + 10}));
    Ok(())
}

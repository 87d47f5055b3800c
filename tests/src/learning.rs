//! Policy generation on programs no one here wrote: busybox httpd with a CGI
//! program, and Python's http.server. Each is learned from its first
//! instruction (`learn -- CMD`), a policy generated, and the same traffic run
//! again under `exec` with that policy: no denial. Then what the policy does
//! not allow is tried from inside (a CGI reading /etc/shadow, running a shell,
//! connecting out, binding another port): each must be refused by our hook,
//! reported for that CGI process, after the case began.
//!
//! `systrace-vmtest learning AGENT`. The CGI is this binary under the name
//! `probe` ([`cgi_main`]).

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::suite::{wait_until, Runner};

const HTTPD_PORT: u16 = 8080;
const PY_PORT: u16 = 8000;
const DOCROOT: &str = "/srv/www";
const HTTPD: &str = "/usr/local/sbin/httpd";
const WORK: &str = "/tmp/learning";

/// The CGI program: `QUERY_STRING` says what to try; prints what happened.
pub fn cgi_main() -> ExitCode {
    let query = std::env::var("QUERY_STRING").unwrap_or_default();
    let pid = std::process::id();
    let outcome = |r: std::io::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => "denied".to_string(),
        Err(e) => format!("error {e}"),
    };
    let result = match query.as_str() {
        "page" => "ok".to_string(),
        "shadow" => outcome(std::fs::read("/etc/shadow").map(drop)),
        // exec in this very process: the denial must name the CGI's own pid.
        "shell" => outcome(Err(Command::new("/bin/sh").args(["-c", "true"]).exec())),
        "connect" => outcome(TcpStream::connect(("127.0.0.1", 9)).map(drop).or_else(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                Ok(())
            } else {
                Err(e)
            }
        })),
        "bind" => outcome(std::net::TcpListener::bind(("127.0.0.1", 8081)).map(drop)),
        other => format!("unknown query {other:?}"),
    };
    print!("Content-Type: text/plain\r\n\r\npid={pid} {query}={result}\n");
    ExitCode::SUCCESS
}

/// `GET path` over HTTP/1.0; the status code and body.
fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

fn wait_port(port: u16, child: &mut Child) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the agent exited ({status}) before port {port} opened");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("port {port} did not open within 120 s")
}

/// An agent subcommand (`learn`, `exec`) running a server, its standard error in a file.
struct Session {
    child: Child,
    stderr: String,
}

impl Session {
    fn start(agent: &Path, args: &[&str], env: &[(&str, &str)], name: &str) -> Result<Session> {
        let stderr = format!("{WORK}/{name}.stderr");
        let mut cmd = Command::new(agent);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&stderr)?);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Its own process group: the test's signals are not the server's.
        cmd.process_group(0);
        Ok(Session { child: cmd.spawn()?, stderr })
    }

    /// SIGINT (the agent forwards it to the command) and the agent's exit status.
    fn stop(mut self) -> Result<(Option<i32>, String)> {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status.code(), std::fs::read_to_string(&self.stderr).unwrap_or_default()));
            }
            if start.elapsed() > Duration::from_secs(120) {
                let _ = self.child.kill();
                bail!("the agent did not stop within 120 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn lines(path: &str) -> Result<Vec<Value>> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn denials(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|v| v["type"] == "event" && v["verdict"] == "denied").collect()
}

fn run_agent(agent: &Path, args: &[&str]) -> Result<(i32, String)> {
    let out = Command::new(agent).args(args).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(-1), text))
}

fn setup_docroot() -> Result<()> {
    for dir in ["docs", "img", "cgi-bin"] {
        std::fs::create_dir_all(format!("{DOCROOT}/{dir}"))?;
    }
    std::fs::write(format!("{DOCROOT}/index.html"), "<h1>index</h1>\n")?;
    std::fs::write(format!("{DOCROOT}/about.html"), "<h1>about</h1>\n")?;
    std::fs::write(format!("{DOCROOT}/docs/a.html"), "<h1>a</h1>\n")?;
    std::fs::write(format!("{DOCROOT}/img/logo.png"), "PNG\n")?;
    std::fs::copy("/proc/self/exe", format!("{DOCROOT}/cgi-bin/probe"))?;
    std::fs::create_dir_all("/usr/local/sbin")?;
    std::fs::copy("/bin/busybox", HTTPD)?;
    std::fs::write("/etc/shadow", "root:*:19000:0:99999:7:::\n")?;
    Ok(())
}

const PAGES: [&str; 5] = ["/", "/index.html", "/about.html", "/docs/a.html", "/img/logo.png"];

/// The learned traffic; every page must come back whole.
fn traffic(port: u16) -> Result<()> {
    for page in PAGES {
        let (status, body) = get(port, page)?;
        ensure!(status == 200, "GET {page}: status {status}");
        let file = if page == "/" { "/index.html" } else { page };
        let want = std::fs::read_to_string(format!("{DOCROOT}{file}"))?;
        ensure!(body == want, "GET {page}: body {body:?}");
    }
    let (status, body) = get(port, "/cgi-bin/probe?page")?;
    ensure!(status == 200 && body.contains("page=ok"), "CGI: status {status}, body {body:?}");
    Ok(())
}

fn httpd_args() -> Vec<String> {
    vec![HTTPD.into(), "-f".into(), "-p".into(), format!("127.0.0.1:{HTTPD_PORT}"), "-h".into(), DOCROOT.into()]
}

/// busybox httpd: learn, generate, enforce, attack.
fn httpd(r: &mut Runner, agent: &Path) {
    let observations = format!("{WORK}/httpd.jsonl");
    let policy = format!("{WORK}/httpd.toml");
    r.case("httpd_learned_from_its_first_instruction", || {
        setup_docroot()?;
        let mut args = vec!["learn", "-o", observations.as_str(), "--"];
        let server = httpd_args();
        args.extend(server.iter().map(String::as_str));
        let mut s = Session::start(agent, &args, &[], "httpd-learn")?;
        wait_port(HTTPD_PORT, &mut s.child)?;
        traffic(HTTPD_PORT)?;
        let (_, stderr) = s.stop()?;
        ensure!(stderr.contains("learned "), "stderr: {stderr}");
        let seen = lines(&observations)?;
        ensure!(seen.first().is_some_and(|h| h["type"] == "learn"), "no header line");
        let learned: Vec<&Value> = seen.iter().filter(|v| v["verdict"] == "learned").collect();
        // The exec of httpd itself is the first thing its cgroup did.
        ensure!(
            learned.iter().any(|v| v["hook"] == "bprm_check_security" && v["path"] == HTTPD),
            "httpd's own exec was not recorded"
        );
        ensure!(learned.iter().any(|v| v["path"] == "/srv/www/about.html"), "a page read was not recorded");
        ensure!(
            learned.iter().any(|v| v["hook"] == "socket_bind" && v["port"] == HTTPD_PORT),
            "the bind was not recorded"
        );
        Ok(())
    });
    r.case("httpd_policy_generated_with_one_docroot_rule", || {
        let (code, out) = run_agent(agent, &["generate", &observations, "-o", &policy])?;
        ensure!(code == 0, "generate exited {code}: {out}");
        let text = std::fs::read_to_string(&policy)?;
        ensure!(
            text.contains("path = \"/srv/www/**\"\naccess = [\"read\"]"),
            "no subtree rule for the docroot:\n{text}"
        );
        for page in ["/srv/www/index.html", "/srv/www/about.html", "/srv/www/docs/a.html"] {
            ensure!(!text.contains(&format!("path = \"{page}\"")), "a rule per file ({page}):\n{text}");
        }
        ensure!(text.contains("# seen "), "rules carry no evidence:\n{text}");
        let (code, out) = run_agent(agent, &["check", &policy])?;
        ensure!(code == 0, "check refused the generated policy: {out}");
        // Generating again from the same observations gives the same bytes.
        let again = format!("{WORK}/httpd-again.toml");
        run_agent(agent, &["generate", &observations, "-o", &again, "--name", "httpd"])?;
        ensure!(std::fs::read(&again)? == std::fs::read(&policy)?, "a second generation differs");
        println!("generated policy:\n{text}");
        Ok(())
    });
    let events = format!("{WORK}/httpd-enforced.jsonl");
    let mut results: Vec<(&str, String)> = Vec::new();
    r.case("httpd_enforced_same_traffic_no_denials", || {
        let mut args = vec!["exec", policy.as_str(), "--events", events.as_str(), "--"];
        let server = httpd_args();
        args.extend(server.iter().map(String::as_str));
        let mut s = Session::start(agent, &args, &[], "httpd-exec")?;
        wait_port(HTTPD_PORT, &mut s.child)?;
        let outcome = traffic(HTTPD_PORT);
        // Now the attacks, from the CGI, inside the confined cgroup.
        for what in ["shadow", "shell", "connect", "bind"] {
            match get(HTTPD_PORT, &format!("/cgi-bin/probe?{what}")) {
                Ok((_, body)) => results.push((what, body)),
                Err(e) => results.push((what, format!("request failed: {e}"))),
            }
        }
        let (_, stderr) = s.stop()?;
        outcome?;
        let all = lines(&events)?;
        let before_attacks: Vec<&Value> = denials(&all)
            .into_iter()
            .filter(|d| !results.iter().any(|(_, body)| body.contains(&format!("pid={} ", d["tgid"]))))
            .collect();
        ensure!(before_attacks.is_empty(), "the learned traffic was denied: {before_attacks:?}\n{stderr}");
        Ok(())
    });
    let all = lines(&events).unwrap_or_default();
    for (what, hooks, detail) in [
        ("shadow", &["file_open"][..], "/etc/shadow"),
        // execve opens the program (file_open, FMODE_EXEC) before bprm_check_security.
        ("shell", &["file_open", "bprm_check_security"][..], "/bin/busybox"),
        ("connect", &["socket_connect"][..], "9"),
        ("bind", &["socket_bind"][..], "8081"),
    ] {
        r.case(&format!("httpd_cgi_{what}_denied_and_reported"), || {
            let body = results.iter().find(|(w, _)| *w == what).map(|(_, b)| b.clone()).unwrap_or_default();
            ensure!(body.contains(&format!("{what}=denied")), "the CGI says {body:?}");
            let pid: u64 = body
                .split_whitespace()
                .find_map(|w| w.strip_prefix("pid="))
                .and_then(|p| p.parse().ok())
                .context("no pid in the CGI's answer")?;
            let found = denials(&all).into_iter().any(|d| {
                d["tgid"] == pid
                    && hooks.iter().any(|h| d["hook"] == *h)
                    && (d["path"] == detail || d["port"].as_u64().map(|p| p.to_string()).as_deref() == Some(detail))
            });
            ensure!(found, "no {hooks:?} denial for the CGI (pid {pid}) on {detail} among {:?}", denials(&all));
            Ok(())
        });
    }
    r.case("replay_names_what_the_policy_refuses", || {
        // The learned accesses all pass; the four attacks are what it refuses.
        let (code, out) = run_agent(agent, &["replay", &policy, &observations])?;
        ensure!(code == 0 && out.contains("would refuse 0 of"), "replaying the learned run: {code} {out}");
        let (code, out) = run_agent(agent, &["replay", &policy, &events])?;
        ensure!(code == 1, "replaying the attacks exited {code}: {out}");
        for needle in ["/etc/shadow", "/bin/busybox", "port: 9", "port: 8081"] {
            ensure!(out.contains(needle), "replay does not name {needle}: {out}");
        }
        Ok(())
    });
}

/// Python's http.server, serving a home directory with random file names, and
/// making a temporary file of its own as it starts.
const PY_SERVER: &str = "import os, runpy, sys, tempfile\n\
fd, _ = tempfile.mkstemp()\n\
os.write(fd, b'scratch')\n\
os.close(fd)\n\
sys.argv = ['http.server', '--bind', '127.0.0.1', '--directory', os.path.expanduser('~/site'), '8000']\n\
runpy.run_module('http.server', run_name='__main__', alter_sys=True)\n";

/// A home with a site holding two fixed pages and two randomly named files.
fn python_home(user: &str) -> Result<(String, Vec<String>)> {
    let home = format!("/home/{user}");
    std::fs::create_dir_all(format!("{home}/site"))?;
    std::fs::write(format!("{home}/site/index.html"), format!("<h1>{user}</h1>\n"))?;
    std::fs::write(format!("{home}/site/notes.txt"), "notes\n")?;
    let mut random = Vec::new();
    for _ in 0..2 {
        let out = Command::new("mktemp").arg(format!("{home}/site/tmp.XXXXXXXX")).output()?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        ensure!(!path.is_empty(), "mktemp failed");
        std::fs::write(&path, "random\n")?;
        random.push(format!("/{}", Path::new(&path).file_name().unwrap().to_string_lossy()));
    }
    Ok((home, random))
}

fn python_traffic(random: &[String]) -> Result<()> {
    for page in ["/", "/index.html", "/notes.txt"].iter().map(|s| s.to_string()).chain(random.iter().cloned()) {
        let (status, _) = get(PY_PORT, &page)?;
        ensure!(status == 200, "GET {page}: status {status}");
    }
    Ok(())
}

fn python_learn(agent: &Path, user: &str, out: &str) -> Result<()> {
    let (home, random) = python_home(user)?;
    let args = ["learn", "-o", out, "--", "/usr/bin/python3", "-B", "-c", PY_SERVER];
    // One log file for every run: a server's inherited stderr is a file it writes.
    let mut s = Session::start(agent, &args, &[("HOME", &home), ("TMPDIR", "/tmp")], "python")?;
    wait_port(PY_PORT, &mut s.child)?;
    python_traffic(&random)?;
    s.stop()?;
    Ok(())
}

fn python(r: &mut Runner, agent: &Path) {
    let policy = format!("{WORK}/python.toml");
    r.case("python_learned_and_generated_with_home_and_random_names", || {
        let first = format!("{WORK}/py-alice.jsonl");
        python_learn(agent, "alice", &first)?;
        let (code, out) = run_agent(agent, &["generate", &first, "-o", &policy, "--name", "http-server"])?;
        ensure!(code == 0, "generate: {out}");
        let text = std::fs::read_to_string(&policy)?;
        ensure!(!text.contains("/home/alice"), "the home directory is spelled out:\n{text}");
        ensure!(text.contains("${HOME}/site/"), "no ${{HOME}} rule for the site:\n{text}");
        ensure!(text.contains("path = \"/tmp/*\""), "the temporary file did not become /tmp/*:\n{text}");
        // The standard library: the libraries include, or one subtree rule; never a rule per module.
        let per_module =
            text.lines().filter(|l| l.starts_with("path = \"/usr/lib/python3.") && !l.ends_with("/**\"")).count();
        ensure!(per_module == 0, "{per_module} rules for single modules:\n{text}");
        println!("generated policy:\n{text}");
        Ok(())
    });
    r.case("python_enforced_with_another_home_and_other_names_no_denials", || {
        let (home, random) = python_home("bob")?;
        let events = format!("{WORK}/py-bob-enforced.jsonl");
        let args =
            ["exec", policy.as_str(), "--events", events.as_str(), "--", "/usr/bin/python3", "-B", "-c", PY_SERVER];
        let mut s = Session::start(agent, &args, &[("HOME", &home), ("TMPDIR", "/tmp")], "python")?;
        wait_port(PY_PORT, &mut s.child)?;
        let outcome = python_traffic(&random);
        let (_, stderr) = s.stop()?;
        outcome.with_context(|| stderr.clone())?;
        let all = lines(&events)?;
        ensure!(denials(&all).is_empty(), "denied: {:?}", denials(&all));
        Ok(())
    });
    r.case("python_learned_again_leaves_the_edited_policy_byte_identical", || {
        let edited =
            std::fs::read_to_string(&policy)?.replacen("mode = ", "# checked by hand on the test VM\nmode = ", 1);
        std::fs::write(&policy, &edited)?;
        let again = format!("{WORK}/py-carol.jsonl");
        python_learn(agent, "carol", &again)?;
        let (code, out) = run_agent(agent, &["generate", &again, "-o", &policy])?;
        ensure!(code == 0, "generate: {out}");
        let after = std::fs::read_to_string(&policy)?;
        ensure!(after == edited, "the policy changed:\n--- before\n{edited}\n--- after\n{after}\n({out})");
        Ok(())
    });
}

/// `exec` on its own: the status, confinement from the first instruction, the
/// kernel's once-per-access learning, and a service agent alongside.
fn exec_basics(r: &mut Runner, agent: &Path) {
    r.case("exec_confines_from_the_first_instruction_and_returns_the_status", || {
        std::fs::create_dir_all(WORK)?;
        std::fs::write(format!("{WORK}/secret"), "secret\n")?;
        let policy = format!("{WORK}/exec.toml");
        std::fs::write(
            &policy,
            format!("mode = \"enforce\"\ndefault = \"allow\"\n[[file]]\npath = \"{WORK}/secret\"\naccess = [\"read\"]\nverdict = \"deny\"\n"),
        )?;
        let events = format!("{WORK}/exec-events.jsonl");
        // cat's first file operation after its libraries is the denied open.
        let out = Command::new(agent).args(["exec", &policy, "--events", &events, "--", "/bin/cat", &format!("{WORK}/secret")]).output()?;
        ensure!(out.status.code() == Some(1), "cat exited {:?}", out.status.code());
        ensure!(!String::from_utf8_lossy(&out.stdout).contains("secret"), "cat read the file");
        let denied = denials(&lines(&events)?).into_iter().any(|d| d["hook"] == "file_open" && d["path"] == format!("{WORK}/secret"));
        ensure!(denied, "no denial event");
        let out = Command::new(agent).args(["exec", &policy, "--", "/bin/sh", "-c", "exit 7"]).output()?;
        ensure!(out.status.code() == Some(7), "the status was {:?}", out.status.code());
        let left = Path::new("/sys/fs/cgroup/systrace.exec").read_dir()?.filter_map(Result::ok).filter(|e| e.path().is_dir()).count();
        ensure!(left == 0, "{left} transient cgroups were left behind");
        Ok(())
    });
    r.case("exec_beside_a_running_service_agent", || {
        std::fs::create_dir_all("/sys/fs/cgroup/svc")?;
        let svc = format!("{WORK}/svc.toml");
        std::fs::write(&svc, "cgroup = \"svc\"\nmode = \"enforce\"\ndefault = \"allow\"\n")?;
        let service = crate::agent::Agent::start(agent, &[Path::new(&svc)])?;
        let policy = format!("{WORK}/exec.toml");
        let events = format!("{WORK}/exec-beside.jsonl");
        let out = Command::new(agent)
            .args(["exec", &policy, "--events", &events, "--", "/bin/cat", &format!("{WORK}/secret")])
            .output()?;
        let service_pins = Path::new("/sys/fs/bpf/systrace").join(service.pid().to_string()).exists();
        let (code, _) = service.stop()?;
        ensure!(out.status.code() == Some(1), "cat under exec exited {:?}", out.status.code());
        let denied = denials(&lines(&events)?)
            .into_iter()
            .any(|d| d["hook"] == "file_open" && d["path"] == format!("{WORK}/secret"));
        ensure!(denied, "no denial by the exec agent beside the service agent");
        ensure!(service_pins, "the service agent's pins went away");
        ensure!(code == 0, "the service agent exited {code}");
        Ok(())
    });
    r.case("learn_a_cgroup_records_what_its_processes_do", || {
        let cg = Path::new("/sys/fs/cgroup/learned-service");
        let out = format!("{WORK}/cgroup.jsonl");
        let s = Session::start(
            agent,
            &["learn", "--cgroup", "learned-service", "--duration", "20", "-o", &out],
            &[],
            "learn-cgroup",
        )?;
        wait_until("learning to start", Duration::from_secs(120), || {
            Ok(std::fs::read_to_string(&s.stderr).unwrap_or_default().contains("learning"))
        })?;
        // The cgroup appears after learning began: bound as it appears.
        std::fs::create_dir_all(cg)?;
        let seen = crate::op::run_args(Some(cg), &["open".as_ref(), format!("{WORK}/secret").as_ref(), "r".as_ref()])?;
        ensure!(seen.errno == 0, "learning refused the open: errno {}", seen.errno);
        let (_, stderr) = s.stop()?;
        let all = lines(&out)?;
        ensure!(
            all.first().is_some_and(|h| h["type"] == "learn" && h["target"] == "cgroup = \"learned-service\""),
            "header: {:?}",
            all.first()
        );
        ensure!(all.first().is_some_and(|h| h["home"].is_null()), "a cgroup's learning took the agent's $HOME");
        let found = all
            .iter()
            .any(|v| v["verdict"] == "learned" && v["tgid"] == seen.tgid && v["path"] == format!("{WORK}/secret"));
        ensure!(found, "the open was not recorded: {stderr}");
        Ok(())
    });
    r.case("learn_a_unit_records_each_start", || {
        // A unit's cgroup as systemd makes it, below a slice, made and removed
        // again as a restart does (each start is a new cgroup id).
        let slice = Path::new("/sys/fs/cgroup/system.slice");
        let cg = slice.join("learnme.service");
        let out = format!("{WORK}/unit.jsonl");
        let s = Session::start(
            agent,
            &["learn", "--unit", "learnme.service", "--duration", "20", "-o", &out],
            &[],
            "learn-unit",
        )?;
        wait_until("learning to start", Duration::from_secs(120), || {
            Ok(std::fs::read_to_string(&s.stderr).unwrap_or_default().contains("learning"))
        })?;
        std::fs::write(format!("{WORK}/public"), "public\n")?;
        let mut tgids = Vec::new();
        for (start, file) in [(1, "secret"), (2, "public")] {
            std::fs::create_dir_all(&cg)?;
            let seen =
                crate::op::run_args(Some(&cg), &["open".as_ref(), format!("{WORK}/{file}").as_ref(), "r".as_ref()])?;
            ensure!(seen.errno == 0, "start {start}: learning refused the open: errno {}", seen.errno);
            tgids.push((seen.tgid, file));
            std::fs::remove_dir(&cg).with_context(|| format!("removing {} after start {start}", cg.display()))?;
        }
        let (_, stderr) = s.stop()?;
        let all = lines(&out)?;
        ensure!(
            all.first().is_some_and(|h| h["type"] == "learn" && h["target"] == "unit = \"learnme.service\""),
            "header: {:?}",
            all.first()
        );
        for (tgid, file) in tgids {
            let found = all
                .iter()
                .any(|v| v["verdict"] == "learned" && v["tgid"] == tgid && v["path"] == format!("{WORK}/{file}"));
            ensure!(found, "the open of {file} by {tgid} was not recorded: {stderr}");
        }
        Ok(())
    });
    r.case("learn_reports_each_distinct_access_once", || {
        let out = format!("{WORK}/repeat.jsonl");
        let script = format!("for i in $(seq 1 100); do cat {WORK}/secret > /dev/null; done");
        let (code, text) = run_agent(agent, &["learn", "-o", &out, "--", "/bin/sh", "-c", &script])?;
        ensure!(code == 0, "learn exited {code}: {text}");
        let all = lines(&out)?;
        let opens = all
            .iter()
            .filter(|v| v["verdict"] == "learned" && v["hook"] == "file_open" && v["path"] == format!("{WORK}/secret"))
            .count();
        ensure!(opens == 1, "{opens} records of the same open");
        let stats = all.iter().find(|v| v["type"] == "stats").context("no stats line")?;
        let repeats = stats["learn_repeats"].as_u64().unwrap_or(0);
        ensure!(repeats >= 99, "the kernel counted {repeats} repeats");
        Ok(())
    });
}

/// `systrace-vmtest opener`: the program `exec --ask` confines. Each line
/// `open PATH` on standard input is tried, and `PATH ok|denied|error ...`
/// printed (standard input is a pipe: reading it opens nothing).
pub fn opener() -> ExitCode {
    let stdin = std::io::stdin();
    let mut line = String::new();
    while stdin.read_line(&mut line).is_ok_and(|n| n > 0) {
        if let Some(path) = line.trim().strip_prefix("open ") {
            // Each open in a child of ours: should the agent die (and this
            // process with it, by PDEATHSIG), that child still reports.
            // SAFETY: fork in a single-threaded process; the child only
            // opens, prints and exits.
            match unsafe { libc::fork() } {
                0 => {
                    let result = match std::fs::read(path) {
                        Ok(_) => "ok".to_string(),
                        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => "denied".to_string(),
                        Err(e) => format!("error {}", e.raw_os_error().unwrap_or(0)),
                    };
                    println!("{path} {result}");
                    let _ = std::io::stdout().flush();
                    // SAFETY: ends the child without running the parent's destructors.
                    unsafe { libc::_exit(0) };
                }
                pid if pid > 0 => {
                    // SAFETY: waits for our own child.
                    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
                }
                _ => println!("{path} error fork"),
            }
        }
        line.clear();
    }
    ExitCode::SUCCESS
}

/// tmux, as a person at a terminal: the prompt runs in a detached session.
fn tmux(args: &[&str]) -> Result<String> {
    let out = Command::new("tmux").args(args).env("TERM", "screen").env("LC_ALL", "C.UTF-8").output()?;
    ensure!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `exec --ask`, answered through `prompt` in tmux.
fn asking(r: &mut Runner, agent: &Path) {
    let out_file = format!("{WORK}/opener.out");
    let policy = format!("{WORK}/ask.toml");
    let setup = || -> Result<()> {
        for d in ["/srv/ask/sub", "/srv/other"] {
            std::fs::create_dir_all(d)?;
        }
        for f in [
            "/srv/ask/a.txt",
            "/srv/ask/b.txt",
            "/srv/ask/c.txt",
            "/srv/ask/sub/d.txt",
            "/srv/other/x.txt",
            "/srv/other/y.txt",
            "/srv/other/z.txt",
        ] {
            std::fs::write(f, "content\n")?;
        }
        std::fs::write(
            &policy,
            format!(
                "name = \"asked\"\nmode = \"enforce\"\ndefault = \"deny\"\ninclude = [\"libraries\"]\n\n\
                 [[exec]]\npath = \"/usr/bin/systrace-vmtest\"\n\n\
                 [[exec]]\npath = \"/lib64/ld-linux-x86-64.so.2\"\n\n\
                 [[file]]\npath = \"/proc/**\"\naccess = [\"read\"]\n\n\
                 [[file]]\npath = \"{out_file}\"\naccess = [\"write\"]\n"
            ),
        )?;
        Ok(())
    };
    if let Err(e) = setup() {
        r.fail("ask_setup", e);
        return;
    }
    let stderr_file = format!("{WORK}/ask-agent.stderr");
    let spawned = Command::new(agent)
        .args(["exec", "--ask", "--ask-timeout", "4", &policy, "--", "/usr/bin/systrace-vmtest", "opener"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out_file).expect("opener output"))
        .stderr(std::fs::File::create(&stderr_file).expect("agent stderr"))
        .spawn();
    let mut exec = match spawned {
        Ok(c) => c,
        Err(e) => {
            r.fail("ask_start", e.into());
            return;
        }
    };
    let agent_pid = exec.id();
    let mut stdin = exec.stdin.take().expect("piped");
    let socket = format!("/run/systrace/ask-{agent_pid}.sock");
    let results = |path: &str| -> Vec<String> {
        std::fs::read_to_string(&out_file)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("{path} ")))
            .map(|l| l[path.len() + 1..].to_string())
            .collect()
    };
    let screen = || tmux(&["capture-pane", "-p", "-t", "ask", "-S", "-200"]).unwrap_or_default();
    let mut ask = |path: &str| -> Result<()> {
        writeln!(stdin, "open {path}")?;
        stdin.flush()?;
        Ok(())
    };
    r.case("ask_open_blocks_until_permit_always_with_a_glob", || {
        wait_until("the agent's socket", Duration::from_secs(120), || Ok(Path::new(&socket).exists()))
            .with_context(|| format!("agent: {}", std::fs::read_to_string(&stderr_file).unwrap_or_default()))?;
        let _ = tmux(&["kill-server"]);
        tmux(&["new-session", "-d", "-s", "ask", "-x", "200", "-y", "50", &format!("{} prompt", agent.display())])?;
        ask("/srv/ask/a.txt")?;
        wait_until("the question on screen", Duration::from_secs(30), || {
            Ok(screen().contains("wants to open /srv/ask/a.txt"))
        })
        .with_context(|| {
            format!(
                "agent: {}\nopener: {}\nscreen: {}",
                std::fs::read_to_string(&stderr_file).unwrap_or_default(),
                std::fs::read_to_string(&out_file).unwrap_or_default(),
                screen()
            )
        })?;
        std::thread::sleep(Duration::from_millis(1500));
        ensure!(
            results("/srv/ask/a.txt").is_empty(),
            "the open went on before an answer: {:?}",
            results("/srv/ask/a.txt")
        );
        ensure!(screen().contains("permit always: /srv/ask/*"), "no glob offered:\n{}", screen());
        tmux(&["send-keys", "-t", "ask", "g", "Enter"])?;
        wait_until("the open's result", Duration::from_secs(30), || Ok(!results("/srv/ask/a.txt").is_empty()))?;
        ensure!(results("/srv/ask/a.txt") == ["ok"], "after permit always: {:?}", results("/srv/ask/a.txt"));
        let text = std::fs::read_to_string(&policy)?;
        ensure!(
            text.contains("# permitted when asked") && text.contains("path = \"/srv/ask/*\"\naccess = [\"read\"]"),
            "no commented rule in the policy:\n{text}"
        );
        // The rule is in force: a sibling opens without a question.
        ask("/srv/ask/b.txt")?;
        wait_until("the sibling's result", Duration::from_secs(30), || Ok(!results("/srv/ask/b.txt").is_empty()))?;
        ensure!(results("/srv/ask/b.txt") == ["ok"], "sibling: {:?}", results("/srv/ask/b.txt"));
        ensure!(!screen().contains("wants to open /srv/ask/b.txt"), "asked about a file the new rule covers");
        Ok(())
    });
    r.case("ask_deny_once_fails_the_call_and_asks_again", || {
        let asked = |n: usize| screen().matches("wants to open /srv/other/x.txt").count() >= n;
        ask("/srv/other/x.txt")?;
        wait_until("the question", Duration::from_secs(30), || Ok(asked(1)))?;
        tmux(&["send-keys", "-t", "ask", "d", "Enter"])?;
        wait_until("the result", Duration::from_secs(30), || Ok(!results("/srv/other/x.txt").is_empty()))?;
        ensure!(results("/srv/other/x.txt") == ["denied"], "after deny once: {:?}", results("/srv/other/x.txt"));
        ask("/srv/other/x.txt")?;
        wait_until("the second question", Duration::from_secs(30), || Ok(asked(2)))?;
        tmux(&["send-keys", "-t", "ask", "o", "Enter"])?;
        wait_until("the second result", Duration::from_secs(30), || Ok(results("/srv/other/x.txt").len() == 2))?;
        ensure!(
            results("/srv/other/x.txt") == ["denied", "ok"],
            "after permit once: {:?}; agent: {}",
            results("/srv/other/x.txt"),
            std::fs::read_to_string(&stderr_file).unwrap_or_default()
        );
        ensure!(!std::fs::read_to_string(&policy)?.contains("/srv/other"), "a once answer was written to the policy");
        Ok(())
    });
    r.case("ask_permit_once_grants_the_file_asked_about_not_what_the_name_leads_to_later", || {
        std::fs::create_dir_all("/srv/swap")?;
        std::fs::write("/srv/swap/decoy", "decoy\n")?;
        std::fs::write("/srv/secret.txt", "secret\n")?;
        ask("/srv/swap/decoy")?;
        wait_until("the question", Duration::from_secs(30), || Ok(screen().contains("wants to open /srv/swap/decoy")))?;
        // Between the question and the answer the name is made to lead elsewhere.
        std::fs::remove_file("/srv/swap/decoy")?;
        std::os::unix::fs::symlink("/srv/secret.txt", "/srv/swap/decoy")?;
        tmux(&["send-keys", "-t", "ask", "o", "Enter"])?;
        wait_until("the result", Duration::from_secs(30), || Ok(!results("/srv/swap/decoy").is_empty()))?;
        ensure!(
            results("/srv/swap/decoy") == ["denied"],
            "the swapped name was opened: {:?}",
            results("/srv/swap/decoy")
        );
        Ok(())
    });
    r.case("ask_timeout_denies_within_its_bound", || {
        ask("/srv/other/y.txt")?;
        let took = wait_until("the timeout", Duration::from_secs(30), || Ok(!results("/srv/other/y.txt").is_empty()))?;
        ensure!(results("/srv/other/y.txt") == ["denied"], "unanswered: {:?}", results("/srv/other/y.txt"));
        ensure!(
            took >= Duration::from_millis(3500) && took <= Duration::from_secs(9),
            "denied after {took:?} with a 4 s timeout"
        );
        Ok(())
    });
    r.case("ask_agent_killed_mid_prompt_grants_nothing", || {
        ask("/srv/other/z.txt")?;
        wait_until(
            "the question",
            Duration::from_secs(30),
            || Ok(screen().contains("wants to open /srv/other/z.txt")),
        )?;
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(agent_pid as i32, libc::SIGKILL) };
        let _ = exec.wait();
        // The process holding the open is a grandchild: it outlives the agent and reports.
        wait_until("the held open's end", Duration::from_secs(30), || Ok(!results("/srv/other/z.txt").is_empty()))?;
        ensure!(
            results("/srv/other/z.txt") == [format!("error {}", libc::ENOSYS)],
            "the held open ended with {:?}, not ENOSYS",
            results("/srv/other/z.txt")
        );
        let pins = Path::new("/sys/fs/bpf/systrace").join(format!("exec-{agent_pid}"));
        ensure!(pins.exists(), "the killed agent's programs were not left pinned (fail closed)");
        // `detach` ends what the dead agent left: its command's cgroup, then its pins.
        let out = Command::new(agent).arg("detach").output()?;
        ensure!(out.status.success(), "detach: {}", String::from_utf8_lossy(&out.stderr));
        let cg = format!("/sys/fs/cgroup/systrace.exec/{agent_pid}");
        ensure!(!Path::new(&cg).exists(), "{cg} is still there after detach");
        ensure!(!pins.exists(), "the pins are still there after detach");
        Ok(())
    });
    let _ = tmux(&["kill-server"]);
    // Whatever a failed case left.
    let _ = Command::new(agent).arg("detach").output();
}

/// `review` in tmux over a running agent's denials: allowing one writes the
/// rule, the agent reloads the policy by itself, and the operation passes.
fn reviewing(r: &mut Runner, agent: &Path) {
    r.case("review_allows_a_denial_and_the_running_agent_reloads", || {
        let cg = Path::new("/sys/fs/cgroup/reviewed");
        std::fs::create_dir_all(cg)?;
        std::fs::create_dir_all("/srv/review")?;
        std::fs::write("/srv/review/page.html", "page\n")?;
        let dir = format!("{WORK}/review-policies");
        std::fs::create_dir_all(&dir)?;
        let policy = format!("{dir}/web.toml");
        std::fs::write(&policy, "cgroup = \"reviewed\"\nmode = \"enforce\"\ndefault = \"deny\"\n# kept by hand\n")?;
        let mut service = crate::agent::Agent::start_args(agent, &["--policy-dir".as_ref(), dir.as_ref()])?;
        let before = crate::op::run_args(Some(cg), &["open".as_ref(), "/srv/review/page.html".as_ref(), "r".as_ref()])?;
        ensure!(before.errno == libc::EACCES, "the open was not denied first: errno {}", before.errno);
        let event = service.wait_for(Duration::from_secs(30), |v| {
            v["type"] == "event"
                && v["verdict"] == "denied"
                && v["path"] == "/srv/review/page.html"
                && v["tgid"] == before.tgid
        })?;
        let events = format!("{WORK}/review-events.jsonl");
        std::fs::write(&events, format!("{event}\n"))?;
        let _ = tmux(&["kill-server"]);
        let cmd = format!("{} review {events} -o {policy} --from-denials", agent.display());
        tmux(&["new-session", "-d", "-s", "review", "-x", "160", "-y", "40", &cmd])?;
        let screen = || tmux(&["capture-pane", "-p", "-t", "review"]).unwrap_or_default();
        wait_until(
            "the proposal on screen",
            Duration::from_secs(30),
            || Ok(screen().contains("/srv/review/page.html")),
        )
        .with_context(screen)?;
        ensure!(screen().contains("would allow 1 existing names now"), "no preview:\n{}", screen());
        tmux(&["send-keys", "-t", "review", "a"])?;
        tmux(&["send-keys", "-t", "review", "w"])?;
        wait_until("the rule in the policy", Duration::from_secs(30), || {
            Ok(std::fs::read_to_string(&policy)?.contains("path = \"/srv/review/page.html\""))
        })?;
        let text = std::fs::read_to_string(&policy)?;
        ensure!(text.contains("# kept by hand"), "the hand-written comment is gone:\n{text}");
        service.wait_for(Duration::from_secs(60), |v| v["type"] == "status" && v["state"] == "reloaded")?;
        let after = crate::op::run_args(Some(cg), &["open".as_ref(), "/srv/review/page.html".as_ref(), "r".as_ref()])?;
        ensure!(after.errno == 0, "still refused after the review: errno {}", after.errno);
        let _ = tmux(&["kill-server"]);
        service.stop()?;
        Ok(())
    });
}

pub fn main(args: &[String]) -> ExitCode {
    let Some(agent) = args.first() else {
        eprintln!("learning: expected the agent binary's path");
        return ExitCode::from(2);
    };
    let agent = Path::new(agent);
    let _ = std::fs::create_dir_all(WORK);
    let mut r = Runner::default();
    exec_basics(&mut r, agent);
    asking(&mut r, agent);
    reviewing(&mut r, agent);
    httpd(&mut r, agent);
    if Path::new("/usr/bin/python3").exists() {
        python(&mut r, agent);
    } else {
        r.fail("python_in_the_vm", anyhow::anyhow!("/usr/bin/python3 is not in the VM"));
    }
    r.finish()
}

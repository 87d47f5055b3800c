//! Telemetry to real receivers, in the systemd VM: Debian's rsyslogd (local
//! socket, TCP with octet counting, TLS with client certificates), Debian's
//! Prometheus and promtool, and rotel's OTLP/HTTP receiver. The test starts
//! them on the VM's loopback, writes the agent's configuration file, restarts
//! the service (a takeover: enforcement never stops), and checks that each
//! denial arrives once, field by field, everywhere.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::{
    service::{show, systemctl},
    suite::{boot_ns, wait_until, Runner},
};

const E2E: &str = "/run/e2e";
const JSON_FILE: &str = "/var/log/systrace/events.jsonl";
const METRICS: &str = "http://127.0.0.1:9464/metrics";
const SECRET: &str = "/etc/victim/secret";
const NGINX_CGROUP: &str = "/sys/fs/cgroup/system.slice/nginx.service";
/// Per cgroup, in the test's configuration.
const RATE: u64 = 50;
const BURST: u64 = 200;

/// `sh -c CMD`: its output, or an error with what it printed.
pub(crate) fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").args(["-c", cmd]).output()?;
    ensure!(
        out.status.success(),
        "`{cmd}`: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn http_get(url: &str) -> Result<String> {
    let out = Command::new("busybox").args(["wget", "-q", "-O", "-", url]).output()?;
    ensure!(out.status.success(), "GET {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A CA, the receivers' certificate (localhost), the agent's client
/// certificate, and a second CA nobody trusts.
fn certificates(dir: &Path) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    std::fs::create_dir_all(dir)?;
    let ca = |name: &str| -> Result<(rcgen::Certificate, KeyPair)> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        Ok((p.self_signed(&key)?, key))
    };
    let (ca_cert, ca_key) = ca("systrace test CA")?;
    let (other_cert, other_key) = ca("someone else's CA")?;
    let leaf = |name: &str,
                purpose: ExtendedKeyUsagePurpose,
                issuer: &rcgen::Certificate,
                issuer_key: &KeyPair|
     -> Result<(String, String)> {
        let mut p = CertificateParams::new(vec![name.to_string()])?;
        if name == "localhost" {
            p.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse()?));
        }
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![purpose];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate()?;
        Ok((p.signed_by(&key, issuer, issuer_key)?.pem(), key.serialize_pem()))
    };
    let (server, server_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth, &ca_cert, &ca_key)?;
    let (agent, agent_key) = leaf("systrace-agent", ExtendedKeyUsagePurpose::ClientAuth, &ca_cert, &ca_key)?;
    let (stranger, stranger_key) =
        leaf("systrace-agent", ExtendedKeyUsagePurpose::ClientAuth, &other_cert, &other_key)?;
    for (name, text) in [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server),
        ("server.key", server_key),
        ("agent.pem", agent),
        ("agent.key", agent_key),
        ("stranger.pem", stranger),
        ("stranger.key", stranger_key),
        ("other-ca.pem", other_cert.pem()),
    ] {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

const RSYSLOG_CONF: &str = r#"
global(workDirectory="/run/e2e/rsyslog"
       maxMessageSize="64k"
       DefaultNetstreamDriverCAFile="/run/e2e/tls/ca.pem"
       DefaultNetstreamDriverCertFile="/run/e2e/tls/server.pem"
       DefaultNetstreamDriverKeyFile="/run/e2e/tls/server.key")
module(load="imuxsock" SysSock.Use="off")
module(load="imtcp" MaxSessions="20")
template(name="e2e" type="string"
         string="%pri%\t%timereported:::date-rfc3339%\t%hostname%\t%app-name%\t%procid%\t%msgid%\t%structured-data%\t%msg%\n")
ruleset(name="unix") { action(type="omfile" file="/run/e2e/syslog-unix.log" template="e2e") }
ruleset(name="tcp") { action(type="omfile" file="/run/e2e/syslog-tcp.log" template="e2e") }
ruleset(name="tls") { action(type="omfile" file="/run/e2e/syslog-tls.log" template="e2e") }
input(type="imuxsock" Socket="/run/e2e/log.sock" UseSpecialParser="off" UseSysTimeStamp="off" IgnoreTimestamp="off"
      RateLimit.Interval="0" Ruleset="unix")
input(type="imtcp" port="10514" address="127.0.0.1" Ruleset="tcp")
input(type="imtcp" port="6514" address="127.0.0.1" Ruleset="tls"
      StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/name"
      PermittedPeer=["systrace-agent"])
"#;

const PROMETHEUS_YML: &str = r#"
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: systrace
    static_configs:
      - targets: ["127.0.0.1:9464"]
"#;

fn agent_config() -> String {
    format!(
        r#"policy_dir = "/etc/systrace/policies"
handover = true
stdout = true
[rate_limit]
events_per_second = {RATE}
burst = {BURST}
[json]
path = "{JSON_FILE}"
max_bytes = 1048576
keep = 3
[[syslog]]
transport = "unix"
address = "{E2E}/log.sock"
[[syslog]]
transport = "tcp"
address = "127.0.0.1:10514"
[[syslog]]
transport = "tls"
address = "127.0.0.1:6514"
server_name = "localhost"
ca = "{E2E}/tls/ca.pem"
cert = "{E2E}/tls/agent.pem"
key = "{E2E}/tls/agent.key"
[prometheus]
listen = "127.0.0.1:9464"
[[otlp]]
endpoint = "http://127.0.0.1:4318/v1/logs"
[api]
listen = "0.0.0.0:9465"
tls_cert = "{E2E}/tls/server.pem"
tls_key = "{E2E}/tls/server.key"
client_ca = "{E2E}/tls/ca.pem"
token_file = "{E2E}/api-token"
"#
    )
}

fn start_rsyslogd() -> Result<()> {
    let _ = std::fs::remove_file(format!("{E2E}/rsyslog.pid"));
    let log = std::fs::File::create(format!("{E2E}/rsyslogd.err"))?;
    Command::new("rsyslogd")
        .args(["-n", "-f", &format!("{E2E}/rsyslog.conf"), "-i", &format!("{E2E}/rsyslog.pid")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting rsyslogd")?;
    wait_until("rsyslogd to listen", Duration::from_secs(30), || {
        Ok(listening(10514) && listening(6514) && Path::new(&format!("{E2E}/log.sock")).exists())
    })
    .with_context(|| std::fs::read_to_string(format!("{E2E}/rsyslogd.err")).unwrap_or_default())?;
    Ok(())
}

fn stop_rsyslogd() -> Result<()> {
    let pid: i32 = std::fs::read_to_string(format!("{E2E}/rsyslog.pid"))?.trim().parse()?;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("rsyslogd to exit", Duration::from_secs(10), || Ok(!listening(10514)))?;
    Ok(())
}

/// Starts rsyslogd, Prometheus and rotel, and restarts the agent with a
/// configuration that sends to all of them.
fn receivers_and_agent() -> Result<()> {
    std::fs::create_dir_all(format!("{E2E}/rsyslog"))?;
    certificates(Path::new(&format!("{E2E}/tls")))?;
    std::fs::write(format!("{E2E}/rsyslog.conf"), RSYSLOG_CONF)?;
    let check = Command::new("rsyslogd").args(["-N1", "-f", &format!("{E2E}/rsyslog.conf")]).output()?;
    ensure!(check.status.success(), "rsyslogd -N1: {}", String::from_utf8_lossy(&check.stderr));
    start_rsyslogd()?;

    std::fs::write(format!("{E2E}/prometheus.yml"), PROMETHEUS_YML)?;
    Command::new("prometheus")
        .args([
            &format!("--config.file={E2E}/prometheus.yml"),
            &format!("--storage.tsdb.path={E2E}/prometheus"),
            "--web.listen-address=127.0.0.1:9090",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(format!("{E2E}/prometheus.err"))?)
        .spawn()
        .context("starting prometheus")?;

    Command::new("/usr/local/bin/rotel-agent")
        .args([
            "start",
            "--otlp-http-endpoint",
            "127.0.0.1:4318",
            "--otlp-grpc-endpoint",
            "127.0.0.1:4317",
            "--exporter",
            "blackhole",
            "--debug-log",
            "logs",
            "--debug-log-verbosity",
            "detailed",
        ])
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(format!("{E2E}/rotel.out"))?)
        .stderr(std::fs::File::create(format!("{E2E}/rotel.err"))?)
        .spawn()
        .context("starting rotel")?;
    wait_until("prometheus and rotel to listen", Duration::from_secs(90), || Ok(listening(9090) && listening(4318)))
        .with_context(|| {
            format!(
                "prometheus: {}; rotel: {}",
                std::fs::read_to_string(format!("{E2E}/prometheus.err")).unwrap_or_default(),
                std::fs::read_to_string(format!("{E2E}/rotel.err")).unwrap_or_default()
            )
        })?;

    std::fs::write(format!("{E2E}/api-token"), API_TOKEN)?;
    // The agent refuses a token others can read.
    std::fs::set_permissions(format!("{E2E}/api-token"), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::fs::write("/etc/systrace/systrace.toml", agent_config())?;
    let before = show("systrace.service", "MainPID")?;
    ensure!(systemctl(&["restart", "systrace.service"])?, "systemctl restart systrace failed: {}", journal_tail(10));
    wait_until("the agent to come back with the new configuration", Duration::from_secs(60), || {
        Ok(show("systrace.service", "ActiveState")? == "active" && show("systrace.service", "MainPID")? != before)
    })?;
    // The agent's first record, its status, reaches every receiver.
    let pid: u64 = show("systrace.service", "MainPID")?.parse()?;
    wait_until("the agent's status in every receiver", Duration::from_secs(60), || {
        let in_syslog = ["unix", "tcp", "tls"].iter().all(|t| {
            syslog_records(t).unwrap_or_default().iter().any(|r| r.msgid == "status" && r.procid == pid.to_string())
        });
        Ok(in_syslog
            && json_records().unwrap_or_default().iter().any(|v| v["type"] == "status" && v["state"] == "enforcing"))
    })
    .with_context(|| format!("agent stderr: {}", journal_tail(40)))?;
    Ok(())
}

fn journal_tail(n: usize) -> String {
    let out = Command::new("journalctl")
        .args(["-u", "systrace.service", "-o", "cat", "--no-pager", "-n", &n.to_string()])
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.starts_with('{')).collect::<Vec<_>>().join(" | ")
    })
    .unwrap_or_default()
}

fn json_records() -> Result<Vec<Value>> {
    Ok(std::fs::read_to_string(JSON_FILE)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// One line of rsyslogd's output file, split by the test's template.
#[derive(Debug, Clone)]
struct SyslogRecord {
    pri: String,
    time: String,
    hostname: String,
    app: String,
    procid: String,
    msgid: String,
    sd: BTreeMap<String, String>,
    msg: String,
}

fn syslog_records(transport: &str) -> Result<Vec<SyslogRecord>> {
    let text = std::fs::read_to_string(format!("{E2E}/syslog-{transport}.log")).unwrap_or_default();
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.splitn(8, '\t').collect();
            ensure!(f.len() == 8, "a line rsyslogd wrote has {} fields: {line}", f.len());
            Ok(SyslogRecord {
                pri: f[0].into(),
                time: f[1].into(),
                hostname: f[2].into(),
                app: f[3].into(),
                procid: f[4].into(),
                msgid: f[5].into(),
                sd: parse_sd(f[6]).with_context(|| format!("structured data of: {line}"))?,
                msg: f[7].trim_start().into(),
            })
        })
        .collect()
}

/// `[systrace@32473 k="v" ...]` as rsyslogd gives it back.
fn parse_sd(text: &str) -> Result<BTreeMap<String, String>> {
    let inner =
        text.strip_prefix("[systrace@32473").and_then(|t| t.strip_suffix(']')).context("no systrace@32473 element")?;
    let mut out = BTreeMap::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let Some(_) = chars.peek() else { break };
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        ensure!(chars.next() == Some('"'), "no opening quote after {name}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some(c @ ('"' | '\\' | ']')) => value.push(c),
                    Some(c) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => bail!("dangling escape"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => bail!("unterminated value of {name}"),
            }
        }
        out.insert(name, value);
    }
    Ok(out)
}

/// A JSON field as the structured data renders it.
fn sd_text(v: &Value) -> Option<String> {
    match v {
        Value::Null | Value::Object(_) => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => Some(
            a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string)).collect::<Vec<_>>().join(","),
        ),
        other => Some(other.to_string()),
    }
}

/// The records rotel printed: each a map of attribute name to value.
fn otlp_records() -> Result<Vec<BTreeMap<String, String>>> {
    let text = std::fs::read_to_string(format!("{E2E}/rotel.out")).unwrap_or_default();
    Ok(crate::otlp_debug::records(&text))
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
}

fn agent_metric(name_and_labels: &str) -> Result<f64> {
    metric(&http_get(METRICS)?, name_and_labels).with_context(|| format!("{name_and_labels} not in /metrics"))
}

fn prometheus_query(query: &str) -> Result<Option<f64>> {
    let encoded: String = query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let body = http_get(&format!("http://127.0.0.1:9090/api/v1/query?query={encoded}"))?;
    let v: Value = serde_json::from_str(&body)?;
    Ok(v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse().ok()))
}

fn start_victim() -> Result<u64> {
    let (pid, status) = crate::service::start_victim()?;
    ensure!(status == "1", "victim's cat was not refused");
    Ok(pid)
}

fn denial_in_json(pid: u64) -> Result<Value> {
    let mut found = None;
    wait_until(&format!("the denial for pid {pid} in {JSON_FILE}"), Duration::from_secs(30), || {
        found = json_records()?
            .into_iter()
            .find(|v| v["type"] == "event" && v["tgid"].as_u64() == Some(pid) && v["path"] == SECRET);
        Ok(found.is_some())
    })?;
    found.context("none")
}

/// Five denials, each in the JSON file, in rsyslogd over each transport with
/// every field equal, in rotel, and counted by Prometheus.
fn each_denial_once_everywhere() -> Result<()> {
    let query = r#"sum(systrace_decisions_total{policy="victim",verdict="denied"})"#;
    let before =
        agent_metric(r#"systrace_decisions_total{policy="victim",hook="file_open",verdict="denied"}"#).unwrap_or(0.0);
    let mut events = Vec::new();
    for _ in 0..5 {
        let pid = start_victim()?;
        events.push(denial_in_json(pid)?);
    }
    let agent_pid = show("systrace.service", "MainPID")?;
    for transport in ["unix", "tcp", "tls"] {
        for ev in &events {
            let pid = ev["tgid"].to_string();
            let mut matching = Vec::new();
            wait_until(&format!("pid {pid}'s denial in rsyslogd over {transport}"), Duration::from_secs(30), || {
                matching = syslog_records(transport)?
                    .into_iter()
                    .filter(|r| {
                        r.msgid == "event"
                            && r.sd.get("tgid") == Some(&pid)
                            && r.sd.get("path").map(String::as_str) == Some(SECRET)
                    })
                    .collect();
                Ok(!matching.is_empty())
            })?;
            std::thread::sleep(Duration::from_millis(300));
            ensure!(matching.len() == 1, "{transport}: pid {pid}'s denial arrived {} times", matching.len());
            let r = &matching[0];
            // authpriv (10) * 8 + warning (4)
            ensure!(r.pri == "84" && r.app == "systrace" && r.procid == agent_pid, "{transport}: header {r:?}");
            ensure!(!r.hostname.is_empty() && r.hostname != "-", "{transport}: no hostname: {r:?}");
            let time = ev["time"].as_str().context("no time")?;
            ensure!(r.time.starts_with(&time[..26]), "{transport}: time {} for {time}", r.time);
            for (k, v) in ev.as_object().context("not an object")? {
                if k == "type" || k == "time" {
                    continue;
                }
                ensure!(
                    r.sd.get(k) == sd_text(v).as_ref(),
                    "{transport}: field {k}: {:?} in syslog, {v} in JSON",
                    r.sd.get(k)
                );
            }
            ensure!(
                r.sd.len()
                    == ev
                        .as_object()
                        .unwrap()
                        .iter()
                        .filter(|(k, v)| *k != "type" && *k != "time" && sd_text(v).is_some())
                        .count()
            );
            ensure!(
                r.msg.starts_with("denied user: 0, prog: cat, pid: ") && r.msg.ends_with(&format!("object: {SECRET}")),
                "{transport}: message {}",
                r.msg
            );
        }
    }
    for ev in &events {
        let pid = ev["tgid"].to_string();
        let mut matching = Vec::new();
        wait_until(&format!("pid {pid}'s denial in rotel"), Duration::from_secs(30), || {
            matching = otlp_records()?
                .into_iter()
                .filter(|r| {
                    r.get("systrace.tgid") == Some(&pid) && r.get("systrace.type").map(String::as_str) == Some("event")
                })
                .collect();
            Ok(!matching.is_empty())
        })
        .with_context(|| format!("rotel printed: {}", tail(&format!("{E2E}/rotel.out"), 30)))?;
        ensure!(matching.len() == 1, "otlp: pid {pid}'s denial arrived {} times", matching.len());
        let r = &matching[0];
        for (k, v) in ev.as_object().unwrap() {
            if k == "time" {
                continue;
            }
            let got = r.get(&format!("systrace.{k}"));
            ensure!(got == sd_text(v).as_ref(), "otlp: field {k}: {got:?}, {v} in JSON");
        }
        for key in ["host.name", "service.name"] {
            ensure!(r.get(key).is_some_and(|v| !v.is_empty()), "otlp: no resource attribute {key}: {r:?}");
        }
    }
    let want = before + 5.0;
    let mut seen = None;
    wait_until("Prometheus to count the five denials", Duration::from_secs(60), || {
        seen = prometheus_query(query)?;
        Ok(seen == Some(want))
    })
    .with_context(|| format!("Prometheus says {seen:?}, the agent {want}"))?;
    Ok(())
}

fn tail(path: &str, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn promtool_clean() -> Result<()> {
    let text = http_get(METRICS)?;
    for family in [
        "systrace_decisions_total",
        "systrace_events_reported_total",
        "systrace_events_ring_full_total",
        "systrace_sink_dropped_total",
        "systrace_events_rate_limited_total",
        "systrace_ring_buffer_used_bytes",
        "systrace_reloads_total",
        "systrace_map_entries",
        "systrace_build_info",
    ] {
        ensure!(text.contains(&format!("# TYPE {family} ")), "{family} is not exposed");
    }
    // Bounded labels: no pid, comm, path or cgroup.
    for label in ["pid=\"", "comm=\"", "path=\"", "cgroup_id=\"", "cgroup=\""] {
        ensure!(!text.contains(label), "a {label} label in /metrics");
    }
    std::fs::write(format!("{E2E}/metrics.txt"), &text)?;
    let out = sh(&format!("promtool check metrics < {E2E}/metrics.txt 2>&1"))?;
    ensure!(out.trim().is_empty(), "promtool check metrics: {out}");
    let up = prometheus_query(r#"up{job="systrace"}"#)?;
    ensure!(up == Some(1.0), "Prometheus's up for the agent: {up:?}");
    Ok(())
}

/// logrotate's way: move the file, SIGUSR1, and the agent writes a new one.
fn json_file_reopened_on_sigusr1() -> Result<()> {
    let moved = format!("{JSON_FILE}.moved");
    std::fs::rename(JSON_FILE, &moved)?;
    ensure!(systemctl(&["kill", "--kill-whom=main", "-s", "USR1", "systrace.service"])?, "kill -USR1 failed");
    // As with logrotate, what the agent writes before it handles the signal
    // goes to the moved file; the stats record it writes on SIGUSR1 is the
    // first line of the new one.
    wait_until("the agent to reopen the file", Duration::from_secs(30), || {
        Ok(json_records()?.first().is_some_and(|v| v["type"] == "stats"))
    })?;
    let pid = start_victim()?;
    denial_in_json(pid).with_context(|| {
        format!(
            "restarts: {}; journal: {}; processes: {}; pins: {}; agent: {}; files: {}; json sink: {}; in the journal: {}; new file ends: {}; moved file ends: {}",
            sh("systemctl show systrace -p NRestarts -p ExecMainStatus -p Result -p ExecMainPID").unwrap_or_default().replace('\n', " "),
            sh("journalctl -u systrace -o short-monotonic --no-pager | grep -v '{' | tail -25").unwrap_or_default().replace('\n', " | "),
            sh("ps -e -o pid,ppid,comm,cgroup | grep -i systrace").unwrap_or_default().replace('\n', " | "),
            sh("ls -R /sys/fs/bpf/systrace | tr '\\n' ' '").unwrap_or_default(),
            journal_tail(20),
            sh("ls -la /var/log/systrace").unwrap_or_default().replace('\n', " | "),
            http_get(METRICS).unwrap_or_default().lines().filter(|l| l.contains("sink=\"json\"")).collect::<Vec<_>>().join(" | "),
            sh("journalctl -u systrace -o cat --no-pager | grep -c secret").unwrap_or_default().trim(),
            tail(JSON_FILE, 2),
            tail(&moved, 2)
        )
    })?;
    ensure!(
        !std::fs::read_to_string(&moved)?.contains(&format!("\"tgid\":{pid},")),
        "the denial went to the moved file"
    );
    Ok(())
}

fn agent_rss_kib() -> Result<u64> {
    let pid = show("systrace.service", "MainPID")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// A confined process fails at full speed: its cgroup's events are held back
/// (and counted), another cgroup's denial still arrives, memory stays put, and
/// every event is accounted for.
fn flood_rate_limited_and_accounted() -> Result<()> {
    let cg = Path::new(NGINX_CGROUP);
    ensure!(cg.exists(), "nginx has no cgroup");
    let metrics_before = http_get(METRICS)?;
    let lost = |text: &str| -> f64 {
        metric(text, "systrace_events_ring_full_total").unwrap_or(0.0)
            + metric(text, "systrace_events_scratch_busy_total").unwrap_or(0.0)
    };
    let rss_before = agent_rss_kib()?;
    let since = boot_ns();
    let flood = std::thread::spawn(move || {
        crate::op::run_args(Some(Path::new(NGINX_CGROUP)), &["flood".as_ref(), "/etc/shadow".as_ref(), "4".as_ref()])
    });
    std::thread::sleep(Duration::from_secs(1));
    // Another cgroup's denial, in the middle of the flood.
    let pid = start_victim()?;
    let outcome = flood.join().map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
    // The workload's errno is 0 when every open was refused with EACCES.
    ensure!(outcome.errno == 0, "the flood's opens were not all refused: errno {}", outcome.errno);
    let produced = outcome.rounds as u64;
    denial_in_json(pid)?;
    wait_until("the victim's denial over TCP despite the flood", Duration::from_secs(30), || {
        Ok(syslog_records("tcp")?.iter().any(|r| r.sd.get("tgid") == Some(&pid.to_string())))
    })?;
    // The summaries come once a second.
    let cgroup_id = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(cg)?.ino()
    };
    let mut admitted = 0;
    let mut suppressed = 0;
    wait_until("the flood's events and summaries to add up", Duration::from_secs(60), || {
        let records = json_records()?;
        admitted = records
            .iter()
            .filter(|v| {
                v["type"] == "event"
                    && v["cgroup_id"].as_u64() == Some(cgroup_id)
                    && v["boot_ns"].as_u64().is_some_and(|t| t >= since)
            })
            .count() as u64;
        suppressed = records
            .iter()
            .filter(|v| v["type"] == "rate_limited" && v["cgroup_id"].as_u64() == Some(cgroup_id))
            .filter_map(|v| v["suppressed"].as_u64())
            .sum();
        let lost_now = lost(&http_get(METRICS)?) - lost(&metrics_before);
        Ok(admitted + suppressed + lost_now as u64 == produced)
    })
    .with_context(|| {
        format!("{produced} refused opens; {admitted} events in the file, {suppressed} in rate_limited records")
    })?;
    println!("flood: {produced} denials in 4 s: {admitted} sent, {suppressed} held back and summarized");
    ensure!(suppressed > 0, "nothing was held back");
    let limit = BURST + RATE * 6;
    ensure!(admitted <= limit, "{admitted} events sent, more than the limit allows ({limit})");
    let rss = agent_rss_kib()?;
    ensure!(rss < rss_before + 16 * 1024, "the agent grew from {rss_before} KiB to {rss} KiB");
    // The account: every record a sink was offered was delivered or dropped.
    ensure!(systemctl(&["kill", "--kill-whom=main", "-s", "USR1", "systrace.service"])?);
    wait_until("each sink's account to balance", Duration::from_secs(30), || {
        let text = http_get(METRICS)?;
        let sinks = ["json", "syslog-unix", "syslog-tcp", "syslog-tls", "otlp"];
        Ok(sinks.iter().all(|s| {
            let label = |name: &str| {
                text.lines()
                    .filter(|l| l.starts_with(name) && l.contains(&format!("sink=\"{s}\"")))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>()
            };
            let offered = label("systrace_sink_offered_total");
            offered > 0.0 && offered == label("systrace_sink_delivered_total") + label("systrace_sink_dropped_total")
        }))
    })?;
    let text = http_get(METRICS)?;
    let reported = metric(&text, "systrace_events_reported_total").context("reported")?;
    let read = metric(&text, "systrace_events_read_total").context("read")?;
    ensure!(
        reported == read + lost(&text),
        "the kernel reported {reported}, the agent read {read}, {} lost",
        lost(&text)
    );
    Ok(())
}

/// rsyslogd dies: its sinks count what they cannot send, the others carry on;
/// it comes back and the sinks reconnect.
fn dead_receiver_counted() -> Result<()> {
    stop_rsyslogd()?;
    let dropped = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("systrace_sink_dropped_total") && l.contains("sink=\"syslog-tcp\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = dropped(&http_get(METRICS)?);
    let mut pids = Vec::new();
    for _ in 0..3 {
        let pid = start_victim()?;
        denial_in_json(pid)?;
        pids.push(pid);
    }
    wait_until("the TCP sink to count its losses", Duration::from_secs(30), || {
        Ok(dropped(&http_get(METRICS)?) > before)
    })?;
    // The other sinks were not held up.
    for pid in &pids {
        let pid = pid.to_string();
        wait_until("the denial in rotel while rsyslogd is down", Duration::from_secs(30), || {
            Ok(otlp_records()?.iter().any(|r| r.get("systrace.tgid") == Some(&pid)))
        })?;
    }
    start_rsyslogd()?;
    // Back-off is at most 30 s; keep producing until one arrives.
    wait_until("the TCP sink to reconnect", Duration::from_secs(90), || {
        let pid = start_victim()?.to_string();
        std::thread::sleep(Duration::from_secs(2));
        Ok(syslog_records("tcp")?.iter().any(|r| r.sd.get("tgid") == Some(&pid)))
    })?;
    Ok(())
}

/// A configuration with a mistake: the agent systemd starts refuses it with
/// its file, line and column, and the programs of the agent before it go on
/// enforcing; the good file back, the service comes back.
fn bad_configuration_refused_enforcement_stays() -> Result<()> {
    let path = "/etc/systrace/systrace.toml";
    let good = std::fs::read_to_string(path)?;
    let lines = good.lines().count();
    std::fs::write(path, format!("{good}[rate_limit]\nevents_per_second = \"many\"\n"))?;
    // systemd keeps restarting it (Restart=always, no start limit); each start fails.
    let _ = systemctl(&["restart", "systrace.service"])?;
    let where_ = format!("{path}:{}:", lines + 1);
    let said = wait_until("the agent to name the mistake's line", Duration::from_secs(60), || {
        let out = Command::new("journalctl").args(["-u", "systrace.service", "-o", "cat", "--no-pager"]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with(&where_) && l.contains("error")))
    });
    // Whatever it said, the pinned programs refuse meanwhile.
    let refused = start_victim();
    std::fs::write(path, &good)?;
    ensure!(
        systemctl(&["restart", "systrace.service"])?,
        "with the good file back, systrace did not start: {}",
        journal_tail(10)
    );
    said.with_context(|| journal_tail(10))?;
    refused.context("while the configuration was bad")?;
    Ok(())
}

const API_TOKEN: &str = "e2e-0123456789abcdef";
const API: &str = "https://localhost:9465";

/// curl against the API with a certificate (or none) and a token (or none):
/// its exit status, the HTTP status and the body.
fn api_get(path: &str, cert: Option<&str>, token: Option<&str>) -> Result<(i32, String, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "--cacert", &format!("{E2E}/tls/ca.pem"), "-w", "\n%{http_code}"]);
    if let Some(name) = cert {
        cmd.args(["--cert", &format!("{E2E}/tls/{name}.pem"), "--key", &format!("{E2E}/tls/{name}.key")]);
    }
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(format!("{API}{path}")).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((out.status.code().unwrap_or(-1), code.to_string(), body.to_string()))
}

/// The API on all addresses: mutual TLS and a token. The right client gets
/// status, policies, counters and the live stream; no certificate, a
/// certificate from another authority, or no token, gets nothing.
fn monitoring_api() -> Result<()> {
    let (rc, code, body) = api_get("/v1/status", Some("agent"), Some(API_TOKEN))?;
    ensure!(rc == 0 && code == "200", "status with the right certificate and token: curl {rc}, HTTP {code}: {body}");
    let status: Value = serde_json::from_str(&body)?;
    ensure!(status["state"] == "enforcing" || status["state"] == "reloaded", "status: {status}");
    ensure!(
        status["pid"].as_u64().map(|p| p.to_string()) == Some(show("systrace.service", "MainPID")?),
        "status names another pid: {status}"
    );
    let (_, code, body) = api_get("/v1/policies", Some("agent"), Some(API_TOKEN))?;
    ensure!(code == "200" && body.contains("\"victim\""), "policies: HTTP {code}: {body}");
    let (_, code, body) = api_get("/v1/counters", Some("agent"), Some(API_TOKEN))?;
    let counters: Value = serde_json::from_str(&body).with_context(|| format!("counters: HTTP {code}: {body}"))?;
    ensure!(counters["denied"].as_u64().is_some_and(|n| n > 0), "counters: {counters}");
    ensure!(counters["telemetry"]["sinks"].as_array().is_some_and(|s| s.len() == 5), "counters: {counters}");
    // Refused: no client certificate, another authority's, and no token.
    let (rc, code, _) = api_get("/v1/status", None, Some(API_TOKEN))?;
    ensure!(rc != 0 && code != "200", "no client certificate: curl {rc}, HTTP {code}");
    let (rc, code, _) = api_get("/v1/status", Some("stranger"), Some(API_TOKEN))?;
    ensure!(rc != 0 && code != "200", "a certificate from another authority: curl {rc}, HTTP {code}");
    let (rc, code, body) = api_get("/v1/status", Some("agent"), None)?;
    ensure!(rc == 0 && code == "401", "no token: curl {rc}, HTTP {code}: {body}");
    let (_, code, _) = api_get("/v1/status", Some("agent"), Some("e2e-0123456789abcdeX"))?;
    ensure!(code == "401", "a wrong token: HTTP {code}");
    // The live stream: a denial made after subscribing shows up in it.
    let stream_file = format!("{E2E}/api-stream.jsonl");
    let mut stream = Command::new("curl")
        .args(["-sN", "--cacert", &format!("{E2E}/tls/ca.pem"), "--cert", &format!("{E2E}/tls/agent.pem")])
        .args(["--key", &format!("{E2E}/tls/agent.key"), "-H", &format!("Authorization: Bearer {API_TOKEN}")])
        .arg(format!("{API}/v1/events"))
        .stdout(std::fs::File::create(&stream_file)?)
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    let pid = start_victim()?;
    let seen = wait_until(&format!("pid {pid}'s denial in the live stream"), Duration::from_secs(30), || {
        Ok(std::fs::read_to_string(&stream_file)?
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["type"] == "event" && v["tgid"].as_u64() == Some(pid)))
    });
    let _ = stream.kill();
    let _ = stream.wait();
    seen?;
    // Without a certificate, the stream is refused like the rest.
    let (rc, _, _) = api_get("/v1/events", None, Some(API_TOKEN))?;
    ensure!(rc != 0, "the stream without a client certificate: curl {rc}");
    Ok(())
}

pub fn cases(r: &mut Runner) {
    let mut ready = false;
    r.case("telemetry_receivers_started_and_agent_restarted_with_sinks", || {
        receivers_and_agent()?;
        ready = true;
        Ok(())
    });
    if !ready {
        return;
    }
    r.case("each_denial_once_in_rsyslog_otlp_and_prometheus", each_denial_once_everywhere);
    r.case("metrics_pass_promtool_and_are_scraped", promtool_clean);
    r.case("json_file_reopened_on_sigusr1", json_file_reopened_on_sigusr1);
    r.case("monitoring_api_mutual_tls_and_token", monitoring_api);
    r.case("flood_rate_limited_and_accounted", flood_rate_limited_and_accounted);
    r.case("dead_receiver_counted_others_unaffected", dead_receiver_counted);
    r.case("bad_configuration_refused_enforcement_stays", bad_configuration_refused_enforcement_stays);
}

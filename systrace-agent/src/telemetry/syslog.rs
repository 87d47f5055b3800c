//! RFC 5424 records, framed for a stream by RFC 6587 octet counting.
//!
//! The header carries the time, host, `systrace`, the agent's pid and the record
//! type; one structured-data element (`systrace@32473`) carries every scalar field
//! of the JSON record, so a collector can filter on `policy` or `hook` without
//! parsing the message. The message itself is one line a person reads, after the
//! original systrace's: verdict, user, program, pid, policy, operation, object.

use serde_json::{Map, Value};

use super::Item;

/// The SD-ID: `name@PEN`. 32473 is the enterprise number RFC 5612 sets aside
/// for documentation and examples; a registered number replaces it when we have one.
pub const SD_ID: &str = "systrace@32473";

/// What the header says about the sender.
#[derive(Debug, Clone)]
pub struct Origin {
    pub hostname: String,
    pub procid: u32,
}

impl Origin {
    pub fn this_process() -> Origin {
        Origin { hostname: hostname(), procid: std::process::id() }
    }
}

/// The host's name as the kernel has it (`uname -n`), `-` when unknown.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its whole length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if rc != 0 || name.is_empty() {
        "-".into()
    } else {
        header_field(&name, 255)
    }
}

/// PRINTUSASCII only, no spaces, at most `max` characters; `-` when empty.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if f.is_empty() {
        "-".into()
    } else {
        f
    }
}

/// One RFC 5424 record, without framing.
pub fn format(facility: u8, item: &Item, origin: &Origin) -> String {
    let pri = u16::from(facility) * 8 + u16::from(item.severity);
    let time = item.fields.get("time").and_then(Value::as_str).map_or_else(|| "-".to_string(), micro_timestamp);
    let msgid = header_field(&item.kind, 32);
    let mut out = format!("<{pri}>1 {time} {} systrace {} {msgid} ", origin.hostname, origin.procid);
    structured_data(&item.fields, &mut out);
    out.push(' ');
    out.push_str(&message(item));
    out
}

/// RFC 6587 octet counting: `LEN SP MSG`.
pub fn octet_counted(record: &str) -> Vec<u8> {
    let mut framed = format!("{} ", record.len()).into_bytes();
    framed.extend_from_slice(record.as_bytes());
    framed
}

/// RFC 5424 allows at most six digits of seconds' fraction; events carry nine.
fn micro_timestamp(rfc3339: &str) -> String {
    match (rfc3339.find('.'), rfc3339.strip_suffix('Z')) {
        (Some(dot), Some(body)) if body.len() > dot + 7 => format!("{}Z", &body[..dot + 7]),
        _ => header_field(rfc3339, 64),
    }
}

fn structured_data(fields: &Map<String, Value>, out: &mut String) {
    out.push('[');
    out.push_str(SD_ID);
    for (key, value) in fields {
        if key == "type" || key == "time" {
            continue;
        }
        let text = match value {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            // Access lists and the like: comma-joined when every item is a scalar.
            Value::Array(items) if items.iter().all(|v| v.is_string() || v.is_number()) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            // Nested records (a status's policy list) are in the JSON sinks.
            _ => continue,
        };
        let name: String = key.chars().filter(|c| c.is_ascii_graphic() && !"=]\"".contains(*c)).take(32).collect();
        out.push(' ');
        out.push_str(&name);
        out.push_str("=\"");
        for c in text.chars() {
            if matches!(c, '"' | '\\' | ']') {
                out.push('\\');
            }
            // A record stays one line: control characters as Rust escapes them.
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        out.push('"');
    }
    out.push(']');
}

fn field(fields: &Map<String, Value>, key: &str) -> Option<String> {
    match fields.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(a) => Some(a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
        _ => None,
    }
}

/// The line a person reads. Control characters (a file named with a newline)
/// are shown escaped so one record stays one line.
pub fn message(item: &Item) -> String {
    let f = &item.fields;
    let get = |k: &str| field(f, k).unwrap_or_else(|| "-".into());
    let text = match item.kind.as_str() {
        "event" => {
            let mut operation = get("hook");
            if let Some(r) = field(f, "requested").filter(|r| !r.is_empty()) {
                operation = format!("{operation} {r}");
            }
            format!(
                "{} user: {}, prog: {}, pid: {}, policy: {}, operation: {operation}, object: {}",
                get("verdict"),
                get("uid"),
                get("comm"),
                get("tgid"),
                get("policy"),
                object(f),
            )
        }
        "rate_limited" => format!(
            "rate limited: {} events of cgroup {} (policy {}) not sent in the last {} s",
            get("suppressed"),
            get("cgroup_id"),
            get("policy"),
            get("interval_s")
        ),
        "status" => format!("agent {}", get("state")),
        other => other.to_string(),
    };
    // A backslash is escaped too, so `\n` in a name cannot pass for a newline.
    text.chars()
        .flat_map(|c| if c.is_control() || c == '\\' { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect()
}

/// What the operation was on: a file, a peer, a capability, a process.
fn object(f: &Map<String, Value>) -> String {
    if let Some(p) = field(f, "path") {
        return p;
    }
    if let Some(a) = field(f, "address") {
        return match field(f, "port") {
            Some(port) if a.contains(':') => format!("[{a}]:{port}"),
            Some(port) => format!("{a}:{port}"),
            None => a,
        };
    }
    if let Some(c) = field(f, "capability") {
        return format!("capability {c}");
    }
    if let Some(p) = field(f, "target_pid") {
        return format!("process {p}");
    }
    if let Some(fam) = field(f, "socket_family") {
        return format!("socket {fam} {}", field(f, "socket_type").unwrap_or_default());
    }
    match (field(f, "dev"), field(f, "ino")) {
        (Some(d), Some(i)) if i != "0" => format!("inode {d}:{i}"),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn origin() -> Origin {
        Origin { hostname: "vm".into(), procid: 42 }
    }

    #[test]
    fn denial_record() {
        let item = Item::new(json!({
            "type": "event", "time": "2026-11-27T14:47:30.123456789Z", "hook": "file_open",
            "verdict": "denied", "policy": "victim", "tgid": 7, "uid": 0, "comm": "cat",
            "path": "/etc/sh\"a]dow", "requested": ["read"], "walk_undecided": false, "port": null
        }));
        let r = format(10, &item, &origin());
        assert_eq!(
            r,
            "<84>1 2026-11-27T14:47:30.123456Z vm systrace 42 event [systrace@32473 comm=\"cat\" hook=\"file_open\" \
             path=\"/etc/sh\\\"a\\]dow\" policy=\"victim\" requested=\"read\" tgid=\"7\" uid=\"0\" \
             verdict=\"denied\" walk_undecided=\"false\"] denied user: 0, prog: cat, pid: 7, policy: victim, \
             operation: file_open read, object: /etc/sh\"a]dow"
        );
        assert_eq!(octet_counted("abc"), b"3 abc");
    }

    #[test]
    fn network_and_status() {
        let item = Item::new(json!({"type": "event", "hook": "socket_connect", "verdict": "denied",
            "address": "::1", "port": 22, "requested": []}));
        assert!(message(&item).ends_with("operation: socket_connect, object: [::1]:22"), "{}", message(&item));
        let status = Item::new(json!({"type": "status", "state": "reload-failed", "policies": [{"name": "x"}]}));
        let r = format(4, &status, &origin());
        assert!(
            r.starts_with("<35>1 - vm systrace 42 status [systrace@32473 state=\"reload-failed\"] agent reload-failed"),
            "{r}"
        );
    }

    #[test]
    fn one_line_always() {
        let item = Item::new(json!({"type": "event", "verdict": "denied", "hook": "file_open", "path": "/tmp/a\nb"}));
        assert!(!format(10, &item, &origin()).contains('\n'));
    }
}

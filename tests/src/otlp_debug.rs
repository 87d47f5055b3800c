//! Reads back what rotel's receiver printed (`--debug-log logs
//! --debug-log-verbosity detailed`): one map per log record, of its
//! attributes, its resource's attributes, and `body`, `severity`, `event_name`,
//! `timestamp`.

use std::collections::BTreeMap;

/// `Str(x)` -> x, `Int(1)` -> 1, `Slice(Str(a), Str(b))` -> "a,b".
fn value(text: &str) -> String {
    let text = text.trim();
    let Some(open) = text.find('(') else { return text.to_string() };
    let kind = &text[..open];
    let inner = text[open + 1..].strip_suffix(')').unwrap_or(&text[open + 1..]);
    match kind {
        "Slice" => inner.split(", ").map(value).collect::<Vec<_>>().join(","),
        _ => inner.to_string(),
    }
}

pub fn records(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut resource = BTreeMap::new();
    let mut current: Option<BTreeMap<String, String>> = None;
    let mut in_resource = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("ResourceLog #") {
            out.extend(current.take());
            resource.clear();
            in_resource = false;
        } else if trimmed == "Resource attributes:" {
            in_resource = true;
        } else if trimmed.starts_with("LogRecord #") {
            out.extend(current.take());
            in_resource = false;
            current = Some(resource.clone());
        } else if let Some(attr) = trimmed.strip_prefix("-> ") {
            let Some((k, v)) = attr.split_once(": ") else { continue };
            match (&mut current, in_resource) {
                (_, true) => {
                    resource.insert(k.to_string(), value(v));
                }
                (Some(r), false) => {
                    r.insert(k.to_string(), value(v));
                }
                _ => {}
            }
        } else if let Some(r) = &mut current {
            for (prefix, key) in [
                ("Body: ", "body"),
                ("SeverityText: ", "severity"),
                ("EventName: ", "event_name"),
                ("Timestamp: ", "timestamp"),
            ] {
                if let Some(v) = trimmed.strip_prefix(prefix) {
                    r.insert(key.to_string(), value(v));
                }
            }
        } else if trimmed.starts_with("ScopeLogs #") {
            in_resource = false;
        }
    }
    out.extend(current);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_rotels_output() {
        let text = "ResourceLog #0\nResource attributes:\n     -> host.name: Str(vm)\nScopeLogs #0\nLogRecord #0\n\
                    Timestamp: 1000\nSeverityText: WARN\nBody: Str(denied user: 0)\nAttributes:\n     -> systrace.tgid: Int(42)\n\
                    \x20    -> systrace.requested: Slice(Str(read), Str(write))\nLogRecord #1\nAttributes:\n     -> systrace.tgid: Int(43)\n";
        let r = super::records(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["host.name"], "vm");
        assert_eq!(r[0]["systrace.tgid"], "42");
        assert_eq!(r[0]["systrace.requested"], "read,write");
        assert_eq!(r[0]["body"], "denied user: 0");
        assert_eq!(r[1]["host.name"], "vm");
        assert_eq!(r[1]["systrace.tgid"], "43");
    }
}

//! OpenTelemetry logs over OTLP/HTTP with protobuf bodies (`POST /v1/logs`).
//!
//! The few messages a log export needs are encoded by hand: their field
//! numbers are fixed by the OTLP specification (opentelemetry-proto,
//! `collector/logs/v1` and `logs/v1`), and the encoder is forty lines where a
//! protobuf code generator would need protoc at build time.
//!
//! One request carries every record queued at that moment (up to
//! [`MAX_BATCH`]); a 2xx answer delivers them all, anything else drops them
//! all (counted), and the connection is made again with back-off.

use std::{sync::Arc, time::Duration};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
    sync::mpsc,
};

use super::{
    sink::{Loss, SinkStats},
    syslog, Item,
};

/// Records per request at most.
pub const MAX_BATCH: usize = 512;
const TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the resource says about this agent.
#[derive(Debug, Clone)]
pub struct Resource {
    pub host_name: String,
    pub service_name: String,
    pub service_version: String,
}

// Protobuf wire format: varints, and length-delimited fields.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 0);
    varint(out, v);
}

/// `AnyValue`: string 1, bool 2, int 3, double 4, array 5.
fn any_value(v: &Value) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match v {
        Value::Null | Value::Object(_) => return None,
        Value::String(s) => bytes_field(&mut out, 1, s.as_bytes()),
        Value::Bool(b) => varint_field(&mut out, 2, u64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => varint_field(&mut out, 3, i as u64),
            None => match n.as_u64() {
                // Beyond i64 (cgroup ids are not, but an inode number may be).
                Some(u) => bytes_field(&mut out, 1, u.to_string().as_bytes()),
                None => fixed64(&mut out, 4, n.as_f64().unwrap_or(0.0).to_bits()),
            },
        },
        Value::Array(items) => {
            let mut array = Vec::new();
            for item in items {
                if let Some(value) = any_value(item) {
                    bytes_field(&mut array, 1, &value);
                }
            }
            bytes_field(&mut out, 5, &array);
        }
    }
    Some(out)
}

/// `KeyValue`: key 1, value 2.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    let Some(value) = any_value(value) else { return };
    let mut kv = Vec::new();
    bytes_field(&mut kv, 1, key.as_bytes());
    bytes_field(&mut kv, 2, &value);
    bytes_field(out, field, &kv);
}

/// OTLP's SeverityNumber for a syslog severity.
fn severity_number(syslog_severity: u8) -> (u64, &'static str) {
    match syslog_severity {
        0..=3 => (17, "ERROR"),
        4 => (13, "WARN"),
        5 => (10, "INFO2"),
        _ => (9, "INFO"),
    }
}

/// The prefix of every record attribute: OpenTelemetry's attribute names are
/// namespaced, and these are ours.
pub const ATTRIBUTE_PREFIX: &str = "systrace.";

/// `LogRecord`: time 1, severity number 2 and text 3, body 5, attributes 6,
/// observed time 11, event name 12.
fn log_record(item: &Item, observed_ns: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let time = item.fields.get("time").and_then(Value::as_str).and_then(parse_rfc3339).unwrap_or(observed_ns);
    fixed64(&mut out, 1, time);
    let (number, text) = severity_number(item.severity);
    varint_field(&mut out, 2, number);
    bytes_field(&mut out, 3, text.as_bytes());
    let mut body = Vec::new();
    bytes_field(&mut body, 1, syslog::message(item).as_bytes());
    bytes_field(&mut out, 5, &body);
    for (key, value) in &item.fields {
        if key == "time" {
            continue;
        }
        key_value(&mut out, 6, &format!("{ATTRIBUTE_PREFIX}{key}"), value);
    }
    fixed64(&mut out, 11, observed_ns);
    bytes_field(&mut out, 12, format!("systrace.{}", item.kind).as_bytes());
    out
}

/// The `ExportLogsServiceRequest` for a batch: one resource, one scope.
pub fn export_request(resource: &Resource, items: &[Arc<Item>], observed_ns: u64) -> Vec<u8> {
    let mut res = Vec::new();
    for (k, v) in [
        ("host.name", &resource.host_name),
        ("service.name", &resource.service_name),
        ("service.version", &resource.service_version),
    ] {
        key_value(&mut res, 1, k, &Value::String(v.clone()));
    }
    let mut scope = Vec::new();
    bytes_field(&mut scope, 1, b"systrace-agent");
    bytes_field(&mut scope, 2, resource.service_version.as_bytes());
    let mut scope_logs = Vec::new();
    bytes_field(&mut scope_logs, 1, &scope);
    for item in items {
        bytes_field(&mut scope_logs, 2, &log_record(item, observed_ns));
    }
    let mut resource_logs = Vec::new();
    bytes_field(&mut resource_logs, 1, &res);
    bytes_field(&mut resource_logs, 2, &scope_logs);
    let mut request = Vec::new();
    bytes_field(&mut request, 1, &resource_logs);
    request
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` to Unix nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let nanos: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}")[..9].parse().ok()? };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1_000_000_000 + nanos).ok()
}

/// An `http://host:port/path` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint> {
        let rest =
            url.strip_prefix("http://").ok_or_else(|| anyhow!("`{url}`: only http:// endpoints are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/v1/logs"),
        };
        let (host, port) = match super::config::split_host_port(authority) {
            Some(hp) => hp,
            None if !authority.is_empty() && !authority.contains(':') => (authority.to_string(), 4318),
            None => bail!("`{url}`: no host"),
        };
        Ok(Endpoint { host, port, path: path.to_string() })
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A response line: at most [`MAX_LINE`] bytes, or an error (a collector, or
/// whoever holds its port, must not grow the agent's memory).
const MAX_LINE: u64 = 8192;
/// Response bodies are read and thrown away, this much at a time.
const MAX_BODY: usize = 1 << 20;

async fn bounded_line(conn: &mut BufReader<TcpStream>) -> Result<String> {
    let mut line = String::new();
    let n = (&mut *conn).take(MAX_LINE).read_line(&mut line).await?;
    if n == 0 {
        bail!("connection closed");
    }
    if !line.ends_with('\n') {
        bail!("a response line longer than {MAX_LINE} bytes");
    }
    Ok(line)
}

/// Reads and discards `n` bytes.
async fn skip(conn: &mut BufReader<TcpStream>, n: usize) -> Result<()> {
    if n > MAX_BODY {
        bail!("a response body of {n} bytes");
    }
    let copied = tokio::io::copy(&mut (&mut *conn).take(n as u64), &mut tokio::io::sink()).await?;
    if copied != n as u64 {
        bail!("connection closed in the body");
    }
    Ok(())
}

/// Posts one request on `conn`; the response's status code, and whether the
/// connection may carry the next request.
async fn post(conn: &mut BufReader<TcpStream>, endpoint: &Endpoint, body: &[u8]) -> Result<(u16, bool)> {
    let host = if endpoint.host.contains(':') { format!("[{}]", endpoint.host) } else { endpoint.host.clone() };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
        endpoint.path,
        endpoint.port,
        body.len()
    );
    let stream = conn.get_mut();
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let line = bounded_line(conn).await?;
    let status: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status line")?;
    let mut keep_alive = line.starts_with("HTTP/1.1");
    let mut length = None;
    let mut chunked = false;
    let mut headers = 0;
    loop {
        let header = bounded_line(conn).await?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        headers += 1;
        if headers > 100 {
            bail!("more than 100 response headers");
        }
        let lower = header.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = Some(v.trim().parse::<usize>().context("bad Content-Length")?);
        } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        } else if lower.starts_with("connection:") && lower.contains("close") {
            keep_alive = false;
        }
    }
    if chunked {
        let mut total = 0usize;
        loop {
            let size = bounded_line(conn).await?;
            let n =
                usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16).context("bad chunk size")?;
            total = total.saturating_add(n);
            if n == 0 {
                // Trailers, if any, up to the empty line.
                for _ in 0..100 {
                    if bounded_line(conn).await?.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            skip(conn, n.checked_add(2).context("bad chunk size")?).await?;
            if total > MAX_BODY {
                bail!("a response body over {MAX_BODY} bytes");
            }
        }
    } else if let Some(length) = length {
        skip(conn, length).await?;
    } else {
        // A body that ends when the connection does: this one cannot be reused.
        keep_alive = false;
    }
    Ok((status, keep_alive))
}

pub async fn run(endpoint: Endpoint, resource: Resource, mut rx: mpsc::Receiver<Arc<Item>>, stats: Arc<SinkStats>) {
    use std::sync::atomic::Ordering;
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut backoff = BACKOFF_MIN;
    let mut next_attempt = tokio::time::Instant::now();
    let dest = format!("{}:{}{}", endpoint.host, endpoint.port, endpoint.path);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let reused = conn.is_some();
        if conn.is_none() && tokio::time::Instant::now() >= next_attempt {
            match tokio::time::timeout(TIMEOUT, TcpStream::connect((endpoint.host.as_str(), endpoint.port))).await {
                Ok(Ok(c)) => {
                    let _ = c.set_nodelay(true);
                    conn = Some(BufReader::new(c));
                    backoff = BACKOFF_MIN;
                    if !stats.up.swap(true, Ordering::Relaxed) {
                        eprintln!("systrace-agent: otlp sink {dest}: connected");
                    }
                }
                result => {
                    let why = match result {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    eprintln!("systrace-agent: otlp sink {dest}: cannot connect ({why}); retrying in {backoff:?}");
                    next_attempt = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            stats.lose(Loss::Unavailable, n);
            continue;
        };
        let body = export_request(&resource, &batch, now_ns());
        let mut result = tokio::time::timeout(TIMEOUT, post(c, &endpoint, &body)).await;
        // A kept-alive connection the collector closed while idle: once more
        // on a new one, at once.
        if reused && !matches!(result, Ok(Ok(_))) {
            if let Ok(Ok(fresh)) =
                tokio::time::timeout(TIMEOUT, TcpStream::connect((endpoint.host.as_str(), endpoint.port))).await
            {
                let _ = fresh.set_nodelay(true);
                let c = conn.insert(BufReader::new(fresh));
                result = tokio::time::timeout(TIMEOUT, post(c, &endpoint, &body)).await;
            }
        }
        match result {
            Ok(Ok((status, keep_alive))) if (200..300).contains(&status) => {
                stats.delivered.fetch_add(n, Ordering::Relaxed);
                if !keep_alive {
                    conn = None;
                }
            }
            result => {
                stats.lose(Loss::WriteFailed, n);
                let why = match result {
                    Ok(Ok((status, _))) => format!("answered {status}"),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(_) => "timed out".into(),
                };
                eprintln!("systrace-agent: otlp sink {dest}: {why}; {n} records dropped, reconnecting");
                conn = None;
                stats.up.store(false, Ordering::Relaxed);
                next_attempt = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(parse_rfc3339("2026-11-27T14:47:30.5Z"), Some(1_795_790_850_500_000_000));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00.000000001Z"), Some(951_782_400_000_000_001));
        assert_eq!(parse_rfc3339("nope"), None);
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:4318/v1/logs").unwrap(),
            Endpoint { host: "127.0.0.1".into(), port: 4318, path: "/v1/logs".into() }
        );
        assert_eq!(Endpoint::parse("http://collector").unwrap().port, 4318);
        assert!(Endpoint::parse("https://x").is_err());
    }

    #[test]
    fn wire_format() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        // KeyValue{key:"a", value: AnyValue{int_value: 1}}
        let mut kv = Vec::new();
        key_value(&mut kv, 1, "a", &json!(1));
        assert_eq!(kv, [0x0a, 0x07, 0x0a, 0x01, b'a', 0x12, 0x02, 0x18, 0x01]);
        let r = Resource { host_name: "h".into(), service_name: "systrace".into(), service_version: "0.1.0".into() };
        let item =
            Item::new(json!({"type": "event", "time": "1970-01-01T00:00:01Z", "verdict": "denied", "path": "/x"}));
        let req = export_request(&r, &[item], 7);
        // The request is one ResourceLogs (field 1, length-delimited).
        assert_eq!(req[0], 0x0a);
        let text = String::from_utf8_lossy(&req);
        for needle in ["host.name", "service.name", "systrace.path", "/x", "systrace.event", "WARN"] {
            assert!(text.contains(needle), "{needle} not in the request");
        }
        // time_unix_nano: fixed64 field 1 (tag 0x09) = 1e9.
        let at = req.windows(9).position(|w| w[0] == 0x09 && w[1..] == 1_000_000_000u64.to_le_bytes()).is_some();
        assert!(at);
    }
}

#[cfg(test)]
mod wire_tests {
    use std::sync::atomic::Ordering;

    use serde_json::json;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Reads one request (headers and a Content-Length body).
    async fn read_request(c: &mut tokio::net::TcpStream) -> bool {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if c.read(&mut byte).await.unwrap_or(0) == 0 {
                return false;
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).unwrap().trim().parse().unwrap();
        let mut body = vec![0u8; len];
        c.read_exact(&mut body).await.is_ok()
    }

    #[tokio::test]
    async fn chunked_trailers_close_and_a_collector_that_hung_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            // First connection: a chunked answer with a trailer, then one that closes.
            let (mut c, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut c).await);
            c.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3 ;ext\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
            )
            .await
            .unwrap();
            assert!(read_request(&mut c).await);
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await.unwrap();
            drop(c);
            // Second connection: kept alive, then closed by the collector while idle.
            let (mut c, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut c).await);
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await.unwrap();
            drop(c);
            // Third: the agent comes back at once with the batch it could not send.
            let (mut c, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut c).await);
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
        });
        let config = crate::telemetry::config::Otlp {
            endpoint: format!("http://127.0.0.1:{port}/v1/logs"),
            service_name: "systrace".into(),
            queue: 16,
        };
        let mut sink = crate::telemetry::sink::otlp(&config, "h".into()).unwrap();
        for _ in 0..4 {
            sink.offer(&Item::new(json!({"type": "event", "verdict": "denied"})));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        sink.finish(Duration::from_secs(5)).await;
        server.await.unwrap();
        assert_eq!(sink.stats.delivered.load(Ordering::Relaxed), 4);
        assert_eq!(sink.stats.offered.load(Ordering::Relaxed), 4);
    }
}

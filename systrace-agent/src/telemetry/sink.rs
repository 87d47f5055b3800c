//! Sinks: each one a task behind a bounded queue, so a slow or dead receiver
//! costs its own events and nothing else. The event loop only ever `try_send`s:
//! enforcement never waits for telemetry. Every record offered to a sink ends in
//! exactly one of its counters: delivered, or dropped by cause.

use std::{
    io::Write as _,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    net::{TcpStream, UnixDatagram},
    sync::mpsc,
    task::JoinHandle,
};

use super::{
    config::{JsonFile, Syslog, Transport},
    syslog::{self, Origin},
    Item,
};

/// Why a record offered to a sink did not reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Its queue was full: the receiver is slower than the events.
    QueueFull,
    /// Not connected (the receiver is down; reconnecting with back-off).
    Unavailable,
    /// The write failed (the connection broke, the disk is full).
    WriteFailed,
    /// Still queued when the agent stopped and the sink could not finish in time.
    Shutdown,
}

impl Loss {
    pub const ALL: [Loss; 4] = [Loss::QueueFull, Loss::Unavailable, Loss::WriteFailed, Loss::Shutdown];

    pub fn name(self) -> &'static str {
        match self {
            Loss::QueueFull => "queue_full",
            Loss::Unavailable => "unavailable",
            Loss::WriteFailed => "write_failed",
            Loss::Shutdown => "shutdown",
        }
    }
}

/// One sink's account: offered = delivered + dropped (all causes) + queued.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub offered: AtomicU64,
    pub delivered: AtomicU64,
    dropped: [AtomicU64; 4],
    /// Whether the sink is connected (or, for a file, open) now.
    pub up: AtomicBool,
}

impl SinkStats {
    pub fn lose(&self, cause: Loss, n: u64) {
        self.dropped[cause as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn dropped(&self, cause: Loss) -> u64 {
        self.dropped[cause as usize].load(Ordering::Relaxed)
    }

    pub fn json(&self) -> Value {
        let dropped: serde_json::Map<_, _> =
            Loss::ALL.iter().map(|d| (d.name().to_string(), Value::from(self.dropped(*d)))).collect();
        json!({
            "offered": self.offered.load(Ordering::Relaxed),
            "delivered": self.delivered.load(Ordering::Relaxed),
            "dropped": dropped,
            "up": self.up.load(Ordering::Relaxed),
        })
    }
}

/// A running sink.
pub struct Sink {
    /// `json`, `syslog-unix`, `syslog-tcp`, `syslog-tls`: the metrics' label.
    pub kind: &'static str,
    /// Where it writes (a path or host:port).
    pub destination: String,
    pub stats: Arc<SinkStats>,
    tx: Option<mpsc::Sender<Arc<Item>>>,
    task: Option<JoinHandle<()>>,
}

impl Sink {
    /// Queues a record; never waits.
    pub fn offer(&self, item: &Arc<Item>) {
        self.stats.offered.fetch_add(1, Ordering::Relaxed);
        let Some(tx) = &self.tx else { return self.stats.lose(Loss::Shutdown, 1) };
        match tx.try_send(item.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.stats.lose(Loss::QueueFull, 1),
            Err(mpsc::error::TrySendError::Closed(_)) => self.stats.lose(Loss::Unavailable, 1),
        }
    }

    /// Closes the queue and gives the sink `grace` to write what it holds; what
    /// is left then is counted as dropped at shutdown.
    pub async fn finish(&mut self, grace: Duration) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(grace, task).await.is_err() {
                abort.abort();
            }
        }
        let s = &self.stats;
        let accounted = s.delivered.load(Ordering::Relaxed) + Loss::ALL.iter().map(|d| s.dropped(*d)).sum::<u64>();
        let offered = s.offered.load(Ordering::Relaxed);
        if offered > accounted {
            s.lose(Loss::Shutdown, offered - accounted);
        }
    }
}

/// The JSON-lines file: appended, rotated by size, reopened on request (SIGUSR1,
/// after logrotate moved it). Writes happen on a thread of its own: a slow disk
/// must not hold up the event loop.
pub fn json_file(config: &JsonFile, reopen: Arc<AtomicBool>) -> Result<Sink> {
    let stats = Arc::new(SinkStats::default());
    let mut file = RotatingFile::open(config.path.clone(), config.max_bytes, config.keep)?;
    stats.up.store(true, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Arc<Item>>(config.queue);
    let s = stats.clone();
    let thread = std::thread::Builder::new().name("systrace-json".into()).spawn(move || {
        while let Some(item) = rx.blocking_recv() {
            if reopen.swap(false, Ordering::Relaxed) {
                if let Err(e) = file.reopen() {
                    eprintln!("systrace-agent: json sink: reopening {}: {e:#}", file.path.display());
                }
            }
            let mut pending = 1u64;
            let mut result = file.write_line(item.line.as_bytes());
            // Whatever else is queued goes out in the same flush.
            while result.is_ok() {
                match rx.try_recv() {
                    Ok(item) => {
                        pending += 1;
                        result = file.write_line(item.line.as_bytes());
                    }
                    Err(_) => break,
                }
            }
            let result = result.and_then(|()| file.flush());
            match result {
                Ok(()) => {
                    s.delivered.fetch_add(pending, Ordering::Relaxed);
                    s.up.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    // What the buffer still holds is thrown away, so nothing
                    // counted as dropped is written later after all.
                    file.discard();
                    s.lose(Loss::WriteFailed, pending);
                    if s.up.swap(false, Ordering::Relaxed) {
                        eprintln!("systrace-agent: json sink: writing {}: {e:#}", file.path.display());
                    }
                }
            }
        }
    })?;
    let task = tokio::task::spawn_blocking(move || {
        let _ = thread.join();
    });
    Ok(Sink { kind: "json", destination: config.path.display().to_string(), stats, tx: Some(tx), task: Some(task) })
}

/// An append-only file that moves itself to `path.1` (and `.1` to `.2`, ...)
/// when the next line would take it past `max_bytes`.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    /// None after a failed write threw its buffer away: opened again by name
    /// before the next line.
    file: Option<std::io::BufWriter<std::fs::File>>,
    size: u64,
}

impl RotatingFile {
    pub fn open(path: PathBuf, max_bytes: u64, keep: u32) -> Result<Self> {
        let (file, size) = Self::append(&path)?;
        Ok(RotatingFile { path, max_bytes, keep, file: Some(file), size })
    }

    fn append(path: &PathBuf) -> Result<(std::io::BufWriter<std::fs::File>, u64)> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata()?.len();
        Ok((std::io::BufWriter::with_capacity(64 * 1024, file), size))
    }

    /// Opens the file by its name again (logrotate moved the old one away).
    pub fn reopen(&mut self) -> Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.flush()?;
        }
        let (file, size) = Self::append(&self.path)?;
        self.file = Some(file);
        self.size = size;
        Ok(())
    }

    pub fn write_line(&mut self, line: &[u8]) -> Result<()> {
        let len = line.len() as u64 + 1;
        if self.max_bytes > 0 && self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.reopen()?;
            // A line the failed write cut short is ended first.
            if self.size > 0 && !self.ends_with_newline() {
                self.file.as_mut().expect("just opened").write_all(b"\n")?;
                self.size += 1;
            }
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(line)?;
        file.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        match self.file.as_mut() {
            Some(f) => Ok(f.flush()?),
            None => Ok(()),
        }
    }

    /// Drops what is buffered and not yet written; the file is opened again,
    /// and its size read again, before the next line.
    pub fn discard(&mut self) {
        if let Some(old) = self.file.take() {
            let (_file, _unwritten) = old.into_parts();
        }
    }

    fn ends_with_newline(&self) -> bool {
        use std::os::unix::fs::FileExt as _;
        let mut last = [0u8; 1];
        std::fs::File::open(&self.path)
            .and_then(|f| f.read_at(&mut last, self.size - 1))
            .map_or(true, |n| n == 1 && last[0] == b'\n')
    }

    fn rotate(&mut self) -> Result<()> {
        self.flush()?;
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.reopen()
    }
}

/// An OpenTelemetry collector (OTLP/HTTP).
pub fn otlp(config: &super::config::Otlp, host_name: String) -> Result<Sink> {
    let endpoint = super::otlp::Endpoint::parse(&config.endpoint)?;
    let resource = super::otlp::Resource {
        host_name,
        service_name: config.service_name.clone(),
        service_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let stats = Arc::new(SinkStats::default());
    let (tx, rx) = mpsc::channel::<Arc<Item>>(config.queue);
    let task = tokio::spawn(super::otlp::run(endpoint, resource, rx, stats.clone()));
    Ok(Sink { kind: "otlp", destination: config.endpoint.clone(), stats, tx: Some(tx), task: Some(task) })
}

/// A syslog destination.
pub fn syslog(config: &Syslog, origin: Origin) -> Result<Sink> {
    let stats = Arc::new(SinkStats::default());
    let (tx, rx) = mpsc::channel::<Arc<Item>>(config.queue);
    let facility = config.facility_code();
    let destination = config.destination();
    let (kind, task) = match config.transport {
        Transport::Unix => {
            ("syslog-unix", tokio::spawn(unix_datagrams(destination.clone(), facility, origin, rx, stats.clone())))
        }
        Transport::Tcp => {
            let connect = Connector::Tcp(destination.clone());
            ("syslog-tcp", tokio::spawn(stream(connect, facility, origin, rx, stats.clone())))
        }
        Transport::Tls => {
            let (host, _) = super::config::split_host_port(&destination)
                .ok_or_else(|| anyhow!("{destination} is not host:port"))?;
            let name = super::tls::server_name(config.server_name.as_deref().unwrap_or(&host))?;
            let connect = Connector::Tls(destination.clone(), Arc::new(super::tls::client(config)?), name);
            ("syslog-tls", tokio::spawn(stream(connect, facility, origin, rx, stats.clone())))
        }
    };
    Ok(Sink { kind, destination, stats, tx: Some(tx), task: Some(task) })
}

async fn unix_datagrams(
    path: String,
    facility: u8,
    origin: Origin,
    mut rx: mpsc::Receiver<Arc<Item>>,
    stats: Arc<SinkStats>,
) {
    let socket = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("systrace-agent: syslog sink: {e}");
            while rx.recv().await.is_some() {
                stats.lose(Loss::Unavailable, 1);
            }
            return;
        }
    };
    stats.up.store(true, Ordering::Relaxed);
    while let Some(item) = rx.recv().await {
        let record = syslog::format(facility, &item, &origin);
        // A full receive queue (the daemon is slow): wait a little, never long.
        match tokio::time::timeout(Duration::from_secs(1), socket.send_to(record.as_bytes(), &path)).await {
            Ok(Ok(_)) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                stats.up.store(true, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                stats.lose(Loss::Unavailable, 1);
                if stats.up.swap(false, Ordering::Relaxed) {
                    eprintln!("systrace-agent: syslog sink {path}: {e}");
                }
            }
            Err(_) => stats.lose(Loss::WriteFailed, 1),
        }
    }
}

enum Connector {
    Tcp(String),
    Tls(String, Arc<tokio_rustls::TlsConnector>, tokio_rustls::rustls::pki_types::ServerName<'static>),
}

trait Stream: AsyncWrite + Unpin + Send {}
impl<T: AsyncWrite + Unpin + Send> Stream for T {}

impl Connector {
    fn destination(&self) -> &str {
        match self {
            Connector::Tcp(d) | Connector::Tls(d, _, _) => d,
        }
    }

    async fn connect(&self) -> Result<Box<dyn Stream>> {
        let (host, port) = super::config::split_host_port(self.destination())
            .ok_or_else(|| anyhow!("{} is not host:port", self.destination()))?;
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        match self {
            Connector::Tcp(_) => Ok(Box::new(tcp)),
            Connector::Tls(_, tls, name) => Ok(Box::new(tls.connect(name.clone(), tcp).await?)),
        }
    }
}

/// Back-off between connection attempts to a receiver that is down.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A write that takes longer than this counts as a broken connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

async fn stream(
    connector: Connector,
    facility: u8,
    origin: Origin,
    mut rx: mpsc::Receiver<Arc<Item>>,
    stats: Arc<SinkStats>,
) {
    let mut conn: Option<Box<dyn Stream>> = None;
    let mut backoff = BACKOFF_MIN;
    let mut next_attempt = tokio::time::Instant::now();
    let dest = connector.destination().to_string();
    while let Some(item) = rx.recv().await {
        if conn.is_none() && tokio::time::Instant::now() >= next_attempt {
            match tokio::time::timeout(WRITE_TIMEOUT, connector.connect()).await {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    backoff = BACKOFF_MIN;
                    if !stats.up.swap(true, Ordering::Relaxed) {
                        eprintln!("systrace-agent: syslog sink {dest}: connected");
                    }
                }
                result => {
                    let why = match result {
                        Ok(Err(e)) => format!("{e:#}"),
                        _ => "timed out".into(),
                    };
                    eprintln!("systrace-agent: syslog sink {dest}: cannot connect ({why}); retrying in {backoff:?}");
                    next_attempt = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            stats.lose(Loss::Unavailable, 1);
            continue;
        };
        // What is queued goes out in one write.
        let mut batch = syslog::octet_counted(&syslog::format(facility, &item, &origin));
        let mut pending = 1u64;
        while batch.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(item) => {
                    batch.extend(syslog::octet_counted(&syslog::format(facility, &item, &origin)));
                    pending += 1;
                }
                Err(_) => break,
            }
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            c.write_all(&batch).await?;
            c.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {
                stats.delivered.fetch_add(pending, Ordering::Relaxed);
            }
            result => {
                stats.lose(Loss::WriteFailed, pending);
                let why = match result {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                eprintln!("systrace-agent: syslog sink {dest}: {why}; reconnecting");
                conn = None;
                stats.up.store(false, Ordering::Relaxed);
                next_attempt = tokio::time::Instant::now() + backoff;
            }
        }
    }
    if let Some(mut c) = conn {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::io::AsyncReadExt as _;

    use super::*;
    use crate::telemetry::config::Syslog;

    fn tcp_config(address: String, queue: usize) -> Syslog {
        Syslog {
            transport: Transport::Tcp,
            address: Some(address),
            facility: "local0".into(),
            ca: None,
            cert: None,
            key: None,
            server_name: None,
            queue,
        }
    }

    fn origin() -> Origin {
        Origin { hostname: "h".into(), procid: 1 }
    }

    #[tokio::test]
    async fn tcp_frames_are_octet_counted_and_accounted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let reader = tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.unwrap();
            let mut all = Vec::new();
            c.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut sink = syslog(&tcp_config(addr, 64), origin()).unwrap();
        for i in 0..10 {
            sink.offer(&Item::new(
                json!({"type": "event", "verdict": "denied", "hook": "file_open", "path": format!("/f{i}")}),
            ));
        }
        sink.finish(Duration::from_secs(5)).await;
        let bytes = reader.await.unwrap();
        // Parse the frames back: LEN SP MSG, ten times.
        let mut rest = &bytes[..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let sp = rest.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
            frames.push(String::from_utf8(rest[sp + 1..sp + 1 + len].to_vec()).unwrap());
            rest = &rest[sp + 1 + len..];
        }
        assert_eq!(frames.len(), 10);
        assert!(frames[3].starts_with("<132>1 ") && frames[3].ends_with("object: /f3"), "{}", frames[3]);
        assert_eq!(sink.stats.delivered.load(Ordering::Relaxed), 10);
        assert_eq!(sink.stats.offered.load(Ordering::Relaxed), 10);
    }

    #[tokio::test]
    async fn a_dead_receiver_costs_only_counted_drops() {
        // A port nobody listens on.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let mut sink = syslog(&tcp_config(addr, 4), origin()).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            sink.offer(&Item::new(json!({"type": "event"})));
        }
        // Offering never waits for the receiver.
        assert!(started.elapsed() < Duration::from_secs(1));
        sink.finish(Duration::from_secs(2)).await;
        let s = &sink.stats;
        let dropped: u64 = Loss::ALL.iter().map(|d| s.dropped(*d)).sum();
        assert_eq!(s.delivered.load(Ordering::Relaxed), 0);
        assert_eq!(dropped, 1000);
        assert!(s.dropped(Loss::QueueFull) > 0);
        assert!(s.dropped(Loss::Unavailable) > 0);
    }

    #[test]
    fn a_discarded_buffer_is_never_written_and_a_cut_line_is_ended() {
        let dir = std::env::temp_dir().join(format!("systrace-discard-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let mut f = RotatingFile::open(path.clone(), 0, 1).unwrap();
        f.write_line(b"one").unwrap();
        f.flush().unwrap();
        f.write_line(b"counted as dropped").unwrap();
        // A failed write that left half a line on disk.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"hal").unwrap();
        f.discard();
        f.write_line(b"two").unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\nhal\ntwo\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_rotates_by_size_and_reopens() {
        let dir = std::env::temp_dir().join(format!("systrace-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let mut f = RotatingFile::open(path.clone(), 100, 2).unwrap();
        for i in 0..12 {
            f.write_line(format!("{{\"n\":{i:02}}}-padding-padding").as_bytes()).unwrap();
        }
        f.flush().unwrap();
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        // 25-byte lines, 100-byte files: 4 lines each.
        assert_eq!(read(&path).lines().count(), 4);
        assert!(read(&path).starts_with("{\"n\":08}"));
        assert!(read(&dir.join("events.jsonl.1")).starts_with("{\"n\":04}"));
        assert!(read(&dir.join("events.jsonl.2")).starts_with("{\"n\":00}"));
        f.write_line(b"next").unwrap();
        // The oldest beyond .2 are gone.
        assert!(read(&dir.join("events.jsonl.2")).starts_with("{\"n\":04}"));
        assert!(!dir.join("events.jsonl.3").exists());
        // logrotate moves the file away; the next write after reopen makes a new one.
        std::fs::rename(&path, dir.join("moved")).unwrap();
        f.reopen().unwrap();
        f.write_line(b"after").unwrap();
        f.flush().unwrap();
        assert_eq!(read(&path), "after\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

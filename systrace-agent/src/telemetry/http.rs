//! A small HTTP/1.1 server for `/metrics` and the monitoring API: one request
//! per connection, a bounded request size and time, a bounded number of
//! connections, plain or TLS (optionally requiring client certificates).
//! Answers are whole bodies, or a stream of JSON lines that lasts until the
//! client goes away.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
    sync::{broadcast, Semaphore},
};

use super::{metrics::Metrics, Item};

const MAX_REQUEST: usize = 8192;
const MAX_CONNECTIONS: usize = 16;
/// Live streams at once, apart from the request slots: streams last, requests do not.
const MAX_STREAMS: usize = 4;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a listener whose port was taken tries again.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// What the server needs from a request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The `Authorization` header, when there is one.
    pub authorization: Option<String>,
}

pub enum Response {
    Full {
        status: &'static str,
        content_type: &'static str,
        body: String,
        headers: &'static str,
    },
    /// JSON lines as records are offered, until the client closes.
    Stream(broadcast::Receiver<Arc<Item>>),
}

impl Response {
    pub fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response::Full { status, content_type: "text/plain; charset=utf-8", body: body.into(), headers: "" }
    }

    pub fn json(value: &serde_json::Value) -> Response {
        Response::Full { status: "200 OK", content_type: "application/json", body: format!("{value}\n"), headers: "" }
    }
}

pub type Router = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// One server: a name for messages, where it listens, TLS, and its answers.
pub struct Server {
    pub what: &'static str,
    pub listen: SocketAddr,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub router: Router,
}

/// Runs the servers on a thread and runtime of their own: TLS handshakes and
/// rendering never take the event loop's time. A port someone else holds is
/// reported and tried again every few seconds; the agent keeps enforcing.
pub fn spawn(servers: Vec<Server>) -> Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(std::thread::Builder::new().name("systrace-http".into()).spawn(move || {
        runtime.block_on(async move {
            let tasks: Vec<_> = servers.into_iter().map(|s| tokio::spawn(run(s))).collect();
            for t in tasks {
                let _ = t.await;
            }
        })
    })?)
}

async fn bind(what: &str, listen: SocketAddr) -> TcpListener {
    let mut complained = false;
    loop {
        match TcpListener::bind(listen).await.with_context(|| format!("{what} on {listen}")) {
            Ok(l) => {
                if complained {
                    eprintln!("systrace-agent: {what} on {listen}: listening now");
                }
                return l;
            }
            Err(e) => {
                if !complained {
                    eprintln!("systrace-agent: {e:#}; trying again every {}s", BIND_RETRY.as_secs());
                    complained = true;
                }
                tokio::time::sleep(BIND_RETRY).await;
            }
        }
    }
}

async fn run(server: Server) {
    let listener = bind(server.what, server.listen).await;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let streams = Arc::new(Semaphore::new(MAX_STREAMS));
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let router = server.router.clone();
        let tls = server.tls.clone();
        let streams = streams.clone();
        tokio::spawn(async move {
            let conn: Box<dyn Conn> = match tls {
                // A client without an acceptable certificate ends here.
                Some(tls) => match tokio::time::timeout(REQUEST_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(s)) => Box::new(s),
                    _ => return,
                },
                None => Box::new(tcp),
            };
            let _ = answer(conn, &router, permit, &streams).await;
        });
    }
}

/// `/metrics` for Prometheus, and 404 for everything else.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Arc::new(move |req: &Request| match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/metrics") => Response::Full {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.render(),
            headers: "",
        },
        ("GET", _) => Response::text("404 Not Found", "not found\n"),
        _ => Response::text("405 Method Not Allowed", "GET only\n"),
    })
}

async fn read_request(conn: &mut Box<dyn Conn>) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_string();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    Ok(Some(Request { method, path, authorization }))
}

async fn answer(
    mut conn: Box<dyn Conn>,
    router: &Router,
    permit: tokio::sync::OwnedSemaphorePermit,
    streams: &Arc<Semaphore>,
) -> std::io::Result<()> {
    let Ok(Ok(Some(request))) = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut conn)).await else {
        return Ok(());
    };
    let head_only = request.method == "HEAD";
    match router(&request) {
        Response::Full { status, content_type, body, headers } => {
            whole(conn, head_only, status, content_type, &body, headers).await
        }
        // A stream gives its request slot back and takes a stream slot.
        Response::Stream(rx) => match streams.clone().try_acquire_owned() {
            Ok(stream_permit) => {
                drop(permit);
                stream(conn, rx, stream_permit).await
            }
            Err(_) => {
                whole(
                    conn,
                    head_only,
                    "503 Service Unavailable",
                    "text/plain; charset=utf-8",
                    "too many live streams\n",
                    "",
                )
                .await
            }
        },
    }
}

/// A whole answer, then the end of the connection.
async fn whole(
    mut conn: Box<dyn Conn>,
    head_only: bool,
    status: &str,
    content_type: &str,
    body: &str,
    headers: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    );
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        conn.write_all(head.as_bytes()).await?;
        if !head_only {
            conn.write_all(body.as_bytes()).await?;
        }
        conn.shutdown().await
    })
    .await
    .unwrap_or(Ok(()))
}

async fn stream(
    mut conn: Box<dyn Conn>,
    mut rx: broadcast::Receiver<Arc<Item>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) -> std::io::Result<()> {
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
        .await?;
    conn.flush().await?;
    loop {
        let line = match rx.recv().await {
            Ok(item) => format!("{}\n", item.line),
            // A client slower than the events misses some, and is told how many.
            Err(broadcast::error::RecvError::Lagged(n)) => format!("{{\"type\":\"lagged\",\"missed\":{n}}}\n"),
            Err(broadcast::error::RecvError::Closed) => return conn.shutdown().await,
        };
        // A client that stops reading is dropped rather than waited for.
        let written = tokio::time::timeout(Duration::from_secs(10), async {
            conn.write_all(line.as_bytes()).await?;
            conn.flush().await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            return Ok(());
        }
    }
}

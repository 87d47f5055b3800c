//! The remote monitoring API (systrace's remote monitoring, over HTTP):
//!
//! - `GET /v1/status`: enforcing or not, generation, pid, version, kernel;
//! - `GET /v1/policies`: the policies in force and what they bind;
//! - `GET /v1/counters`: the kernel's counters and each sink's account;
//! - `GET /v1/events`: every record from now on, as JSON lines, live.
//!
//! Every client authenticates, on loopback too (a confined process can reach
//! loopback, and the events and policies would tell it what is watched and
//! where the holes are): a bearer token, or a client certificate from
//! `client_ca` over TLS. Anywhere but loopback, TLS is required as well (the
//! configuration refuses anything less).

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{anyhow, Context as _, Result};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_rustls::rustls::{self, server::WebPkiClientVerifier};

use super::{
    config::Api,
    http::{Request, Response, Router},
    tls, Item,
};

/// Records a live-stream client may fall behind by before it is told it missed some.
pub const STREAM_BACKLOG: usize = 1024;

/// What the API shows, kept current by the event loop.
#[derive(Debug)]
pub struct ApiState {
    pub status: Mutex<Value>,
    pub policies: Mutex<Value>,
    pub counters: Mutex<Value>,
    pub events: broadcast::Sender<Arc<Item>>,
}

impl ApiState {
    pub fn new() -> Self {
        ApiState {
            status: Mutex::new(json!({"state": "starting"})),
            policies: Mutex::new(json!([])),
            counters: Mutex::new(json!({})),
            events: broadcast::channel(STREAM_BACKLOG).0,
        }
    }
}

impl Default for ApiState {
    fn default() -> Self {
        Self::new()
    }
}

/// Compares without stopping at the first difference, so the time an answer
/// takes says nothing about how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn read_token(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).with_context(|| format!("reading the API token from {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(anyhow!(
            "{}: the API token file must not be readable by group or others (chmod 600)",
            path.display()
        ));
    }
    let token =
        std::fs::read_to_string(path).with_context(|| format!("reading the API token from {}", path.display()))?;
    let token = token.trim().to_string();
    if token.len() < 16 {
        return Err(anyhow!("{}: the API token must be at least 16 characters", path.display()));
    }
    Ok(token)
}

pub fn router(state: Arc<ApiState>, token: Option<String>) -> Router {
    Arc::new(move |req: &Request| {
        if let Some(token) = &token {
            let given = req.authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ")).unwrap_or_default();
            if !same(given.trim().as_bytes(), token.as_bytes()) {
                return Response::Full {
                    status: "401 Unauthorized",
                    content_type: "application/json",
                    body: "{\"error\":\"a bearer token is required\"}\n".into(),
                    headers: "WWW-Authenticate: Bearer realm=\"systrace\"\r\n",
                };
            }
        }
        if req.method != "GET" {
            return Response::text("405 Method Not Allowed", "GET only\n");
        }
        match req.path.as_str() {
            "/v1/status" => Response::json(&state.status.lock().unwrap()),
            "/v1/policies" => Response::json(&state.policies.lock().unwrap()),
            "/v1/counters" => Response::json(&state.counters.lock().unwrap()),
            "/v1/events" => Response::Stream(state.events.subscribe()),
            _ => Response::text("404 Not Found", "not found: /v1/status, /v1/policies, /v1/counters, /v1/events\n"),
        }
    })
}

/// The TLS side, when configured: the server's certificate, and the client
/// certificates' authority when clients must show one.
pub fn acceptor(config: &Api) -> Result<Option<tokio_rustls::TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return Ok(None) };
    let provider = tls::provider();
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &config.client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(tls::roots(ca)?), provider)
                .build()
                .map_err(|e| anyhow!("client certificate authority {}: {e}", ca.display()))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let server = builder.with_single_cert(tls::certificates(cert)?, tls::private_key(key)?)?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(router: &Router, path: &str, auth: Option<&str>) -> (String, String) {
        let req = Request { method: "GET".into(), path: path.into(), authorization: auth.map(str::to_string) };
        match router(&req) {
            Response::Full { status, body, .. } => (status.to_string(), body),
            Response::Stream(_) => ("stream".into(), String::new()),
        }
    }

    #[test]
    fn token_is_required_when_set() {
        let state = Arc::new(ApiState::new());
        *state.status.lock().unwrap() = json!({"state": "enforcing"});
        let open = router(state.clone(), None);
        assert_eq!(get(&open, "/v1/status", None), ("200 OK".into(), "{\"state\":\"enforcing\"}\n".into()));
        assert_eq!(get(&open, "/v1/events", None).0, "stream");
        assert_eq!(get(&open, "/nope", None).0, "404 Not Found");
        let closed = router(state, Some("0123456789abcdef".into()));
        assert_eq!(get(&closed, "/v1/status", None).0, "401 Unauthorized");
        assert_eq!(get(&closed, "/v1/status", Some("Bearer 0123456789abcdeX")).0, "401 Unauthorized");
        assert_eq!(get(&closed, "/v1/status", Some("Basic 0123456789abcdef")).0, "401 Unauthorized");
        assert_eq!(get(&closed, "/v1/events", None).0, "401 Unauthorized");
        assert_eq!(get(&closed, "/v1/status", Some("Bearer 0123456789abcdef")).0, "200 OK");
    }
}

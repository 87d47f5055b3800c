//! The agent's configuration file (`/etc/systrace/systrace.toml`): where the
//! policies are, where events go, and the limits that keep a flood in check.
//!
//! Read once at start-up. A bad file is refused with its file, line and column
//! before anything is loaded; a restart (not SIGHUP, which reloads policies)
//! takes a changed configuration.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::policy::{Diagnostic, Severity, SourceMap};

/// Where the service looks by default.
pub const DEFAULT_PATH: &str = "/etc/systrace/systrace.toml";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A directory whose `*.toml` files are all policies.
    #[serde(default = "default_policy_dir")]
    pub policy_dir: PathBuf,
    /// On SIGTERM, leave the programs pinned for the next agent (`run --handover`).
    #[serde(default)]
    pub handover: bool,
    /// Seconds between `stats` records (0: only at exit).
    #[serde(default)]
    pub stats_interval: u64,
    /// JSON lines on standard output (the journal, under systemd).
    #[serde(default = "yes")]
    pub stdout: bool,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub json: Option<JsonFile>,
    #[serde(default)]
    pub syslog: Vec<Syslog>,
    #[serde(default)]
    pub prometheus: Option<Prometheus>,
    #[serde(default)]
    pub otlp: Vec<Otlp>,
    #[serde(default)]
    pub api: Option<Api>,
}

fn default_policy_dir() -> PathBuf {
    PathBuf::from("/etc/systrace/policies")
}

fn yes() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policy_dir: default_policy_dir(),
            handover: false,
            stats_interval: 0,
            stdout: true,
            rate_limit: None,
            json: None,
            syslog: Vec::new(),
            prometheus: None,
            otlp: Vec::new(),
            api: None,
        }
    }
}

/// Per-cgroup token bucket applied to events before every sink.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained events per second per cgroup.
    pub events_per_second: u32,
    /// Events a cgroup may send at once before the rate applies.
    pub burst: u32,
}

/// JSON lines appended to a file, rotated by size.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonFile {
    pub path: PathBuf,
    /// Rotate when the file would grow past this many bytes (0: never).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` .. `path.N`).
    #[serde(default = "default_keep")]
    pub keep: u32,
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_max_bytes() -> u64 {
    100 << 20
}

fn default_keep() -> u32 {
    5
}

fn default_queue() -> usize {
    4096
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The local syslog socket (datagrams).
    Unix,
    /// RFC 6587 octet counting over TCP.
    Tcp,
    /// RFC 5425: octet counting over TLS.
    Tls,
}

/// One syslog destination; several may be configured.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Syslog {
    pub transport: Transport,
    /// A socket path (`unix`, default `/dev/log`) or `host:port` (`tcp`, `tls`).
    #[serde(default)]
    pub address: Option<String>,
    /// The facility every record carries.
    #[serde(default = "default_facility")]
    pub facility: String,
    /// TLS: the certificate authorities (PEM) the collector's certificate must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// TLS: the agent's certificate and key (PEM), when the collector asks for one.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// TLS: the name the collector's certificate must carry (default: the address's host).
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_facility() -> String {
    "authpriv".into()
}

/// The Prometheus exposition endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Prometheus {
    /// Where `/metrics` is served; loopback by default.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

/// The remote monitoring API. Clients always authenticate (token or client
/// certificate); off loopback, over TLS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// Loopback by default; anywhere else needs TLS and a client CA or a token.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// A file holding the bearer token clients must send (16 characters or more).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The server's certificate and key (PEM): HTTPS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Clients must show a certificate this authority signed (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9465))
}

/// OpenTelemetry logs over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// `http://host:port/v1/logs` (the path defaults to /v1/logs).
    pub endpoint: String,
    /// The resource's `service.name`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_service_name() -> String {
    "systrace".into()
}

/// Syslog facility names (RFC 5424, table 1) and their codes.
pub const FACILITIES: &[(&str, u8)] = &[
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

impl Syslog {
    pub fn facility_code(&self) -> u8 {
        FACILITIES.iter().find(|(n, _)| *n == self.facility).map_or(10, |(_, c)| *c)
    }

    /// Where it sends: the socket path or `host:port`.
    pub fn destination(&self) -> String {
        match (&self.address, self.transport) {
            (Some(a), _) => a.clone(),
            (None, Transport::Unix) => "/dev/log".into(),
            (None, Transport::Tcp) => "127.0.0.1:514".into(),
            (None, Transport::Tls) => "127.0.0.1:6514".into(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, Diagnostic> {
        let text = std::fs::read_to_string(file).map_err(|e| Diagnostic {
            severity: Severity::Error,
            location: crate::policy::Location { file: file.to_path_buf(), line: 1, column: 1 },
            message: format!("cannot read the configuration: {e}"),
        })?;
        Self::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Config, Diagnostic> {
        let map = SourceMap::new(file, text);
        let config: Config = toml::from_str(text).map_err(|e| {
            map.diagnostic(Severity::Error, e.span().unwrap_or(0..0), e.message().trim().replace('\n', "; "))
        })?;
        // Checks serde cannot express, located at the table they concern.
        let spans: Spans = toml::from_str(text).unwrap_or_default();
        for (i, s) in config.syslog.iter().enumerate() {
            let span = spans.syslog.get(i).map_or(0..0, toml::Spanned::span);
            if !FACILITIES.iter().any(|(n, _)| *n == s.facility) {
                let names: Vec<_> = FACILITIES.iter().map(|(n, _)| *n).collect();
                return Err(map.diagnostic(
                    Severity::Error,
                    span,
                    format!("unknown facility `{}`; one of: {}", s.facility, names.join(", ")),
                ));
            }
            if s.transport != Transport::Tls && (s.ca.is_some() || s.cert.is_some() || s.key.is_some()) {
                return Err(map.diagnostic(Severity::Error, span, "ca, cert and key are for transport = \"tls\""));
            }
            if s.cert.is_some() != s.key.is_some() {
                return Err(map.diagnostic(Severity::Error, span, "cert and key go together"));
            }
            if s.transport == Transport::Tls && s.ca.is_none() {
                return Err(map.diagnostic(
                    Severity::Error,
                    span,
                    "transport = \"tls\" needs `ca`: the collector's certificate is always checked",
                ));
            }
            if s.transport != Transport::Unix {
                let dest = s.destination();
                if split_host_port(&dest).is_none() {
                    return Err(map.diagnostic(Severity::Error, span, format!("address `{dest}` is not host:port")));
                }
            }
            if s.queue == 0 {
                return Err(map.diagnostic(Severity::Error, span, "queue must be at least 1"));
            }
        }
        if let Some(r) = &config.rate_limit {
            if r.events_per_second == 0 || r.burst == 0 {
                return Err(map.diagnostic(
                    Severity::Error,
                    spans.rate_limit.as_ref().map_or(0..0, toml::Spanned::span),
                    "events_per_second and burst must be at least 1 (leave [rate_limit] out for no limit)",
                ));
            }
        }
        for (i, o) in config.otlp.iter().enumerate() {
            let span = spans.otlp.get(i).map_or(0..0, toml::Spanned::span);
            if let Err(e) = super::otlp::Endpoint::parse(&o.endpoint) {
                return Err(map.diagnostic(Severity::Error, span, format!("{e:#}")));
            }
            if o.queue == 0 {
                return Err(map.diagnostic(Severity::Error, span, "queue must be at least 1"));
            }
        }
        if let Some(api) = &config.api {
            let span = spans.api.as_ref().map_or(0..0, toml::Spanned::span);
            if api.tls_cert.is_some() != api.tls_key.is_some() {
                return Err(map.diagnostic(Severity::Error, span, "tls_cert and tls_key go together"));
            }
            let tls = api.tls_cert.is_some();
            if api.client_ca.is_some() && !tls {
                return Err(map.diagnostic(Severity::Error, span, "client_ca needs tls_cert and tls_key"));
            }
            if api.client_ca.is_none() && api.token_file.is_none() {
                return Err(map.diagnostic(
                    Severity::Error,
                    span,
                    "the API needs token_file or client_ca: a confined process can reach loopback too",
                ));
            }
            if !api.listen.ip().is_loopback() && !tls {
                return Err(map.diagnostic(
                    Severity::Error,
                    span,
                    format!(
                        "the API on {} (not loopback) needs tls_cert and tls_key: its token or events \
                         would cross the network in the clear",
                        api.listen
                    ),
                ));
            }
        }
        if let Some(j) = &config.json {
            if j.queue == 0 {
                return Err(map.diagnostic(
                    Severity::Error,
                    spans.json.as_ref().map_or(0..0, toml::Spanned::span),
                    "queue must be at least 1",
                ));
            }
        }
        Ok(config)
    }
}

/// `host:port` split at the last colon (`[v6]:port` keeps its brackets off).
pub fn split_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// Where each table is, for errors about its contents.
#[derive(Default, Deserialize)]
struct Spans {
    #[serde(default)]
    syslog: Vec<toml::Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    rate_limit: Option<toml::Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    json: Option<toml::Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    otlp: Vec<toml::Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    api: Option<toml::Spanned<serde::de::IgnoredAny>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Diagnostic> {
        Config::parse(Path::new("systrace.toml"), text)
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn full_file() {
        let c = parse(
            r#"
policy_dir = "/etc/p"
handover = true
[rate_limit]
events_per_second = 10
burst = 100
[json]
path = "/var/log/systrace/events.jsonl"
max_bytes = 1000
[[syslog]]
transport = "tcp"
address = "127.0.0.1:514"
[[syslog]]
transport = "tls"
address = "logs.example:6514"
ca = "/etc/ca.pem"
facility = "local3"
[prometheus]
listen = "127.0.0.1:9100"
"#,
        )
        .unwrap();
        assert_eq!(c.policy_dir, PathBuf::from("/etc/p"));
        assert_eq!(c.rate_limit, Some(RateLimit { events_per_second: 10, burst: 100 }));
        assert_eq!(c.json.as_ref().unwrap().keep, 5);
        assert_eq!(c.syslog[1].facility_code(), 19);
        assert_eq!(c.syslog[0].facility_code(), 10);
        assert_eq!(c.prometheus.unwrap().listen, "127.0.0.1:9100".parse().unwrap());
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse("policy_dir = \"/p\"\n[json]\npath = \"/x\"\nmax_bytes = \"big\"\n").unwrap_err();
        assert_eq!((e.location.line, e.location.column), (4, 13), "{e}");
        let e = parse("[prometheus]\nlisten = \"localhost\"\n").unwrap_err();
        assert_eq!(e.location.line, 2, "{e}");
        let e = parse("\n\nunknown = 1\n").unwrap_err();
        assert_eq!((e.location.line, e.location.column), (3, 1), "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn semantic_errors() {
        for (text, needle) in [
            ("[[syslog]]\ntransport = \"tls\"\n", "needs `ca`"),
            ("[[syslog]]\ntransport = \"tcp\"\nca = \"/x\"\n", "for transport"),
            ("[[syslog]]\ntransport = \"tcp\"\naddress = \"nohost\"\n", "host:port"),
            ("[[syslog]]\ntransport = \"unix\"\nfacility = \"nope\"\n", "unknown facility"),
            ("[rate_limit]\nevents_per_second = 0\nburst = 1\n", "at least 1"),
            ("[[otlp]]\nendpoint = \"https://c:4318\"\n", "only http://"),
            ("[api]\nlisten = \"0.0.0.0:9465\"\n", "needs token_file"),
            ("[api]\n", "needs token_file"),
            ("[api]\nlisten = \"0.0.0.0:9465\"\ntoken_file = \"/t\"\n", "not loopback"),
            ("[api]\nclient_ca = \"/ca\"\n", "needs tls_cert"),
        ] {
            let e = parse(&format!("\n{text}")).unwrap_err();
            assert!(e.message.contains(needle), "{text}: {e}");
            assert_eq!(e.location.line, 2, "{text}: {e}");
        }
    }

    #[test]
    fn shipped_configuration_is_valid() {
        let c = parse(include_str!("../../../packaging/systrace.toml")).unwrap();
        assert!(c.handover);
        assert_eq!(c.policy_dir, PathBuf::from("/etc/systrace/policies"));
        assert!(c.rate_limit.is_some());
    }

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("a:1"), Some(("a".into(), 1)));
        assert_eq!(split_host_port("[::1]:6514"), Some(("::1".into(), 6514)));
        assert_eq!(split_host_port("a"), None);
        assert_eq!(split_host_port(":5"), None);
    }
}

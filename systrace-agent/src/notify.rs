//! systemd's readiness protocol (`sd_notify`), for `Type=notify` units: one
//! datagram of `KEY=VALUE` lines to the socket in `$NOTIFY_SOCKET`. Written out
//! rather than linked from libsystemd: it is a dozen lines, and the agent runs
//! on machines without systemd too, where it does nothing.

use std::{
    os::{linux::net::SocketAddrExt, unix::net::SocketAddr, unix::net::UnixDatagram},
    time::Duration,
};

/// Where to send notifications, if systemd asked for them.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` asks for (a path, or `@name` for an
    /// abstract socket); one that sends nothing when it is unset.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let bytes = path.as_encoded_bytes();
            let addr = match bytes.strip_prefix(b"@") {
                Some(name) => SocketAddr::from_abstract_name(name).ok()?,
                None => SocketAddr::from_pathname(&path).ok()?,
            };
            let socket = UnixDatagram::unbound().ok()?;
            // A PID 1 slow to read must not hold up the event loop.
            socket.set_nonblocking(true).ok()?;
            Some((socket, addr))
        });
        Notifier { target }
    }

    /// Sends `state` (`READY=1`, ...); failures are reported, never fatal: the
    /// agent enforces whether or not systemd hears of it.
    pub fn send(&self, state: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
                eprintln!("systrace-agent: telling systemd {:?}: {e}", state.lines().next().unwrap_or(""));
            }
        }
    }

    /// Enforcing (again): `READY=1`, with a status line for `systemctl status`.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload begins: `RELOADING=1` with the monotonic time systemd
    /// matches it against (`Type=notify-reload`'s protocol).
    pub fn reloading(&self) {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: ts is a valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when the
    /// watchdog is meant for this process.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.target.as_ref()?;
        if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
            if pid != std::process::id() {
                return None;
            }
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

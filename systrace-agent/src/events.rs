//! Ring-buffer records to JSON lines.
//!
//! The kernel writes [`systrace_common::Event`] records; this module checks their
//! size, decodes them without trusting their alignment, and renders the JSON object
//! the agent prints, one per line.

use std::{collections::HashMap, path::PathBuf};

use serde::Serialize;
use systrace_common::{capability, event_flags, net, protect, socket, Event, Hook, Verdict, COMM_LEN, PATH_LEN};

use crate::policy::{access_names, format_kernel_dev};

/// Reads an event from ring-buffer bytes. `None` when the size is not an Event's.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: the length is checked above, Event is plain old data for which every
    // bit pattern is valid, and read_unaligned makes no alignment assumption.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event) })
}

/// What the agent knows about loaded policies, to name things in events.
#[derive(Debug, Default, Clone)]
pub struct PolicyNames {
    /// Kernel slot -> policy name. Slots of replaced policies stay: their events
    /// may still be queued in the ring buffer.
    pub by_slot: HashMap<u32, String>,
    /// Policy name -> (dev, ino) -> path, for files its rules name (the kernel may
    /// not give a path).
    pub paths: HashMap<String, HashMap<(u64, u64), PathBuf>>,
}

/// Converts `bpf_ktime_get_boot_ns()` readings to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime - boottime, in ns, measured once at start-up.
    offset_ns: i128,
}

fn read_clock(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Now, on the kernel side's clock (`bpf_ktime_get_boot_ns()`).
pub fn boot_ns() -> u64 {
    read_clock(libc::CLOCK_BOOTTIME) as u64
}

/// Now, as an event's `time` says it.
pub fn now_rfc3339() -> String {
    rfc3339(read_clock(libc::CLOCK_REALTIME))
}

impl Clock {
    pub fn now() -> Self {
        let boot = read_clock(libc::CLOCK_BOOTTIME);
        let real = read_clock(libc::CLOCK_REALTIME);
        Clock { offset_ns: real - boot }
    }

    #[cfg(test)]
    pub fn with_offset(offset_ns: i128) -> Self {
        Clock { offset_ns }
    }

    pub fn unix_ns(&self, boot_ns: u64) -> i128 {
        boot_ns as i128 + self.offset_ns
    }
}

/// The JSON form of an event.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct EventJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    /// Nanoseconds since boot (`CLOCK_BOOTTIME`), as the kernel stamped it.
    pub boot_ns: u64,
    pub hook: &'static str,
    pub verdict: &'static str,
    pub policy: String,
    pub policy_id: u32,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub dev: String,
    pub ino: u64,
    pub path: Option<String>,
    pub requested: Vec<&'static str>,
    /// Network operations: peer or local address and port, family and protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// Present when the file's path could not be known (a disconnected dentry,
    /// a mount outside the caller's namespace, a tree deeper than the walk's
    /// bound): deny rules were assumed to apply.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub walk_undecided: bool,
    /// The self-protection that refused the operation (ptrace, signal, bpf, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protection: Option<&'static str>,
    /// `capable`: the capability asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// `task_kill`: the signal; `task_kill`, `ptrace_access_check`: the target process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_pid: Option<u32>,
    /// `ptrace_access_check`: "attach" or "read".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ptrace_mode: Option<&'static str>,
    /// `socket_create`: the family and type asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_family: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_protocol: Option<String>,
    /// `file_ioctl`: the command refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ioctl: Option<String>,
    /// `task_alloc`: the clone flags that were refused (hex); `bpf`: the command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clone_flags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_command: Option<u32>,
}

fn protocol_name(n: u32) -> String {
    if n == u32::from(socket::IPPROTO_MPTCP) {
        return "mptcp".into();
    }
    name_or_number(&socket::PROTOCOLS, n)
}

fn name_or_number(table: &[(&str, u16)], n: u32) -> String {
    table.iter().find(|(_, v)| u32::from(*v) == n).map_or_else(|| n.to_string(), |(name, _)| name.to_string())
}

pub fn verdict_name(v: u8) -> &'static str {
    match Verdict::from_u8(v) {
        Some(Verdict::Allowed) => "allowed",
        Some(Verdict::Denied) => "denied",
        Some(Verdict::Audited) => "audit",
        Some(Verdict::AuditRule) => "audit-rule",
        Some(Verdict::Learned) => "learned",
        None => "unknown",
    }
}

pub fn hook_name(h: u16) -> &'static str {
    Hook::from_u16(h).map_or("unknown", Hook::name)
}

/// A cgroup the kernel bound to a policy as it appeared.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct BoundJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    pub boot_ns: u64,
    pub policy: String,
    pub policy_id: u32,
    pub cgroup_id: u64,
    /// The process that made the cgroup (systemd, say).
    pub pid: u32,
    pub comm: String,
}

/// What a ring record becomes.
pub enum Record {
    /// Boxed: an event is five times the size of the other records.
    Event(Box<EventJson>),
    Bound(BoundJson),
}

pub fn render(event: &Event, clock: &Clock, names: &PolicyNames) -> Record {
    if event.hook == systrace_common::source::CGROUP_BOUND {
        return Record::Bound(BoundJson {
            kind: "bound",
            time: rfc3339(clock.unix_ns(event.boot_ns)),
            boot_ns: event.boot_ns,
            policy: names.by_slot.get(&event.policy).cloned().unwrap_or_default(),
            policy_id: event.policy,
            cgroup_id: event.cgroup_id,
            pid: event.tgid,
            comm: c_string(&event.comm[..COMM_LEN]),
        });
    }
    Record::Event(Box::new(to_json(event, clock, names)))
}

/// Joins the kernel's leaf-first, NUL-separated path components into a path.
pub fn join_components(buf: &[u8], flags: u8) -> Option<String> {
    if flags & event_flags::NO_PATH != 0 {
        return None;
    }
    let mut parts: Vec<String> = buf[..PATH_LEN.min(buf.len())]
        .split(|&b| b == 0)
        .take_while(|c| !c.is_empty())
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    parts.reverse();
    let prefix = if flags & event_flags::PATH_TRUNCATED != 0 { "…" } else { "" };
    Some(format!("{prefix}/{}", parts.join("/")))
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

pub fn to_json(event: &Event, clock: &Clock, names: &PolicyNames) -> EventJson {
    let policy = names.by_slot.get(&event.policy);
    // The kernel's path when it gave one; otherwise the path a rule names this inode by.
    let path = join_components(&event.path, event.flags).or_else(|| {
        let paths = names.paths.get(policy?)?;
        paths.get(&(event.dev, event.ino)).map(|p| p.display().to_string())
    });
    let hook = Hook::from_u16(event.hook);
    // Socket kinds: creation, or a socket received or used that no address rule decides.
    let socket_event = event.flags & event_flags::NOT_FILE != 0
        && event.protection == 0
        && event.net_family == 0
        && matches!(
            hook,
            Some(Hook::SocketCreate | Hook::FileReceive | Hook::SocketBind | Hook::SocketConnect | Hook::SocketSendmsg)
        );
    EventJson {
        kind: "event",
        time: rfc3339(clock.unix_ns(event.boot_ns)),
        boot_ns: event.boot_ns,
        hook: hook_name(event.hook),
        verdict: verdict_name(event.verdict),
        policy: policy.cloned().unwrap_or_default(),
        policy_id: event.policy,
        cgroup_id: event.cgroup_id,
        pid: event.pid,
        tgid: event.tgid,
        uid: event.uid,
        gid: event.gid,
        comm: c_string(&event.comm[..COMM_LEN]),
        dev: format_kernel_dev(event.dev),
        ino: event.ino,
        path,
        requested: access_names(event.requested),
        walk_undecided: event.flags & event_flags::WALK_UNDECIDED != 0,
        address: net_address(event),
        port: (event.net_family != 0 && event.net_family != net::AF_UNIX).then_some(event.net_port),
        family: match event.net_family {
            net::AF_UNIX => Some("unix"),
            net::AF_INET => Some("inet"),
            net::AF_INET6 => Some("inet6"),
            _ => None,
        },
        protocol: match (event.net_family, event.net_proto) {
            (0 | net::AF_UNIX, _) => None,
            (_, net::IPPROTO_TCP) => Some("tcp"),
            (_, net::IPPROTO_UDP) => Some("udp"),
            (_, net::IPPROTO_SCTP) => Some("sctp"),
            (_, net::IPPROTO_UDPLITE) => Some("udplite"),
            (_, 1) => Some("icmp"),
            (_, 58) => Some("icmpv6"),
            _ => Some("other"),
        },
        protection: (event.protection != 0).then(|| protect::name(event.protection)),
        capability: (hook == Some(Hook::Capable)).then(|| {
            capability::NAMES.get(event.detail as usize).map_or_else(|| event.detail.to_string(), |n| n.to_string())
        }),
        signal: matches!(hook, Some(Hook::TaskKill | Hook::FileSendSigiotask)).then_some(event.detail),
        target_pid: matches!(hook, Some(Hook::TaskKill | Hook::PtraceAccessCheck | Hook::FileSendSigiotask))
            .then_some(event.target),
        ptrace_mode: (hook == Some(Hook::PtraceAccessCheck)).then_some(if event.detail & 0x02 != 0 {
            "attach"
        } else {
            "read"
        }),
        socket_family: socket_event.then(|| name_or_number(&socket::FAMILIES, event.detail)),
        socket_type: socket_event.then(|| name_or_number(&socket::TYPES, event.target & 0xffff)),
        socket_protocol: socket_event.then(|| protocol_name(event.target >> 16)),
        ioctl: (matches!(hook, Some(Hook::FileIoctl | Hook::FileIoctlCompat)) && event.protection != 0)
            .then(|| format!("{:#x}", event.detail)),
        clone_flags: (hook == Some(Hook::TaskAlloc))
            .then(|| format!("{:#x}", (u64::from(event.target) << 32) | u64::from(event.detail))),
        bpf_command: (hook == Some(Hook::Bpf)).then_some(event.detail),
    }
}

/// A unix peer's name: its path, or `@name` for an abstract one (as ss prints it).
fn unix_name(event: &Event) -> String {
    let len = usize::from(event.net_port).min(systrace_common::UNIX_PATH_MAX);
    let name = &event.path[..len];
    match name.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => c_string(name),
    }
}

fn net_address(event: &Event) -> Option<String> {
    let a = event.net_addr;
    match event.net_family {
        net::AF_UNIX => Some(unix_name(event)),
        net::AF_INET => Some(std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()),
        net::AF_INET6 => Some(std::net::Ipv6Addr::from(a).to_string()),
        _ => None,
    }
}

/// Formats Unix nanoseconds as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub fn rfc3339(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let nanos = unix_ns.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.boot_ns = 5_000_000_123;
        e.cgroup_id = 77;
        e.dev = (254 << 20) | 1;
        e.ino = 1234;
        e.pid = 10;
        e.tgid = 9;
        e.uid = 1000;
        e.policy = 3;
        e.requested = systrace_common::access::WRITE;
        e.hook = Hook::FileOpen as u16;
        e.verdict = Verdict::Denied as u8;
        e.comm[..3].copy_from_slice(b"cat");
        e.path[..11].copy_from_slice(b"shadow\0etc\0");
        e
    }

    fn bytes(e: &Event) -> Vec<u8> {
        let p = e as *const Event as *const u8;
        unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<Event>()) }.to_vec()
    }

    #[test]
    fn decodes_and_renders_an_event() {
        let e = sample();
        let decoded = decode(&bytes(&e)).unwrap();
        let mut names = PolicyNames::default();
        names.by_slot.insert(3, "demo".into());
        let j = to_json(&decoded, &Clock::with_offset(1_700_000_000_000_000_000), &names);
        assert_eq!(j.time, "2023-11-14T22:13:25.000000123Z");
        assert_eq!(j.verdict, "denied");
        assert_eq!(j.hook, "file_open");
        assert_eq!(j.policy, "demo");
        assert_eq!(j.comm, "cat");
        assert_eq!(j.dev, "254:1");
        assert_eq!(j.path.as_deref(), Some("/etc/shadow"));
        assert_eq!(j.requested, vec!["write"]);
        let line = serde_json::to_string(&j).unwrap();
        assert!(line.contains("\"type\":\"event\""));
    }

    #[test]
    fn components_join_leaf_last() {
        assert_eq!(join_components(b"new.txt\0www\0srv\0\0", 0).as_deref(), Some("/srv/www/new.txt"));
        assert_eq!(join_components(b"\0", 0).as_deref(), Some("/"));
        assert_eq!(join_components(b"b\0a\0", event_flags::PATH_TRUNCATED).as_deref(), Some("…/a/b"));
        assert_eq!(join_components(b"x\0", event_flags::NO_PATH), None);
    }

    #[test]
    fn process_events_name_their_details() {
        let mut e = sample();
        e.flags = event_flags::NO_PATH | event_flags::NOT_FILE;
        e.hook = Hook::Capable as u16;
        e.detail = 21;
        let j = to_json(&e, &Clock::with_offset(0), &PolicyNames::default());
        assert_eq!(j.capability.as_deref(), Some("sys_admin"));
        assert_eq!((j.signal, j.protection), (None, None));
        e.hook = Hook::TaskKill as u16;
        e.detail = 9;
        e.target = 42;
        e.protection = protect::SIGNAL;
        let j = to_json(&e, &Clock::with_offset(0), &PolicyNames::default());
        assert_eq!((j.signal, j.target_pid, j.protection), (Some(9), Some(42), Some("signal")));
        e.hook = Hook::SocketCreate as u16;
        e.detail = 17;
        e.target = 3;
        e.protection = 0;
        let j = to_json(&e, &Clock::with_offset(0), &PolicyNames::default());
        assert_eq!((j.socket_family.as_deref(), j.socket_type.as_deref()), (Some("packet"), Some("raw")));
    }

    #[test]
    fn short_records_are_rejected() {
        assert!(decode(&[0u8; 10]).is_none());
    }

    #[test]
    fn path_falls_back_to_the_rule_path() {
        let mut e = sample();
        e.flags = event_flags::NO_PATH;
        let mut names = PolicyNames::default();
        names.by_slot.insert(3, "demo".into());
        names.paths.insert("demo".into(), HashMap::from([((e.dev, e.ino), PathBuf::from("/srv/x"))]));
        let j = to_json(&e, &Clock::with_offset(0), &names);
        assert_eq!(j.path.as_deref(), Some("/srv/x"));
        names.by_slot.clear();
        assert_eq!(to_json(&e, &Clock::with_offset(0), &names).path, None);
    }

    #[test]
    fn calendar_edges() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400 * 1_000_000_000), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
    }
}

//! `exec --ask`: systrace's dialog. The launched program waits on an access
//! no rule decides until a person answers.
//!
//! A BPF LSM program cannot wait for user space, so the waiting is done by
//! seccomp user notification: the child installs a filter, between fork and
//! exec, that hands `open`, `openat`, `openat2`, `creat`, `execve` and
//! `execveat` to this agent. The agent reads the path from the process, and
//! when the policy's rules decide it, lets the call go on at once (the LSM
//! decides as always). When only the default would decide, it asks over a
//! local socket ([`SOCKET_DIR`]) and holds the call until an answer or the
//! timeout:
//! - permit once: a grant for this process and this file (as the kernel
//!   identifies it), valid for seconds, is written to a map the LSM hook
//!   reads; the call continues; the hook checks the file the kernel actually
//!   resolved, so a path swapped after the question gains nothing.
//! - permit always (optionally widened to `DIR/*` or `DIR/**`), deny always:
//!   a rule is added to the policy file, with a comment, and the policy is
//!   installed again before the call continues (or fails).
//! - deny once, timeout: the call fails with EACCES.
//!
//! If the agent dies while a call is held, the kernel fails it (ENOSYS) and
//! every later notified call too; the pinned LSM programs keep enforcing the
//! policy: nothing is granted. 32-bit and x32 system calls are not notified;
//! the policy alone decides them.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use systrace_agent::{
    learn::{self, generate},
    policy::Policy,
};
use systrace_common::access;

/// Where `exec --ask` agents listen for people to answer (`ask-PID.sock`).
pub const SOCKET_DIR: &str = "/run/systrace";

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// x86_64 system call numbers that are notified.
const NOTIFIED: [u32; 6] = [
    2,   /* open */
    257, /* openat */
    437, /* openat2 */
    85,  /* creat */
    59,  /* execve */
    322, /* execveat */
];

/// Installs the notifying filter in the calling process (between fork and
/// exec) and returns the listener. Async-signal-safe: no allocation.
///
/// # Safety
/// Call only in a freshly forked child before exec.
pub unsafe fn install_filter() -> io::Result<RawFd> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let stmt = |code, k| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jeq = |k, jt, jf| libc::sock_filter { code: JEQ_K, jt, jf, k };
    // 0: arch; 1: not x86_64 -> allow (9); 2: nr; 3..8: notified -> notify (10); 9: allow; 10: notify.
    let filter: [libc::sock_filter; 11] = [
        stmt(LD_W_ABS, 4),
        jeq(AUDIT_ARCH_X86_64, 0, 7),
        stmt(LD_W_ABS, 0),
        jeq(NOTIFIED[0], 6, 0),
        jeq(NOTIFIED[1], 5, 0),
        jeq(NOTIFIED[2], 4, 0),
        jeq(NOTIFIED[3], 3, 0),
        jeq(NOTIFIED[4], 2, 0),
        jeq(NOTIFIED[5], 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF),
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut _ };
    let fd = libc::syscall(
        libc::SYS_seccomp,
        libc::SECCOMP_SET_MODE_FILTER,
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
        &prog as *const libc::sock_fprog,
    );
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd as RawFd)
}

/// Sends `fd` over the unix socket `sock` (SCM_RIGHTS). Async-signal-safe.
///
/// # Safety
/// `sock` and `fd` are open descriptors.
pub unsafe fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut control = [0u64; 4];
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
    let cmsg = libc::CMSG_FIRSTHDR(&msg);
    (*cmsg).cmsg_level = libc::SOL_SOCKET;
    (*cmsg).cmsg_type = libc::SCM_RIGHTS;
    (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
    if libc::sendmsg(sock, &msg, 0) < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv_fd(sock: RawFd) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut control = [0u64; 4];
    // SAFETY: a zeroed msghdr pointing at live buffers of the sizes given.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        if libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) <= 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the command sent no seccomp listener"));
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "no descriptor in the message"));
        }
        Ok(OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const RawFd)))
    }
}

/// One held system call, as asked about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Question {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    /// "open", "create" or "exec".
    pub operation: String,
    pub path: String,
    pub access: Vec<String>,
    /// The answers' rules to pick from: the path, `DIR/*`, `DIR/**`, each
    /// with what else it would allow today.
    pub choices: Vec<Choice>,
    pub timeout_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Choice {
    pub path: String,
    /// Existing names it covers (counted up to a bound), and a few of them.
    pub covers: usize,
    pub examples: Vec<String>,
}

/// A client's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Answer {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: u64,
    /// permit-once, permit-always, deny-once, deny-always.
    pub answer: String,
    /// For the "always" answers: the rule's path (one of the choices).
    #[serde(default)]
    pub path: Option<String>,
}

/// What the held call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Continue,
    Fail(i32),
}

/// A question on its way to the agent's main loop, with where to send the reply.
pub struct Held {
    pub question: Question,
    /// Everything the call asks for: what a "permit once" grants.
    pub access: u32,
    /// What no rule decides: what an "always" answer's rule names.
    pub undecided: u32,
    /// The file the question is about, opened (`O_PATH`) when it was asked:
    /// a "permit once" grants this file, whatever the name leads to by the
    /// time of the answer. `None` for a file still to be created.
    pub object: Option<OwnedFd>,
    /// The asking thread's process (grants are per process).
    pub tgid: u32,
    pub reply: mpsc::Sender<Reply>,
}

/// How long a "permit once" lets the process at the file: the held call and
/// what it opens (its descriptor keeps the access after that).
pub const ONCE: Duration = Duration::from_secs(5);

fn tgid_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Tgid:").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(pid)
}

/// Lexically normal: `.` and `..` folded, no trailing slash.
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn read_string(pid: u32, addr: u64) -> Option<String> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = vec![0u8; 4096];
    use std::os::unix::fs::FileExt;
    let n = mem.read_at(&mut buf, addr).ok()?;
    let end = buf[..n].iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn read_u64(pid: u32, addr: u64) -> Option<u64> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut b = [0u8; 8];
    use std::os::unix::fs::FileExt;
    mem.read_exact_at(&mut b, addr).ok()?;
    Some(u64::from_ne_bytes(b))
}

/// The absolute path a call names, resolved as the agent sees it.
fn resolve(pid: u32, dirfd: i64, name: &str) -> PathBuf {
    let path = if name.starts_with('/') {
        PathBuf::from(name)
    } else {
        let base = if dirfd as i32 == libc::AT_FDCWD {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
        } else {
            std::fs::read_link(format!("/proc/{pid}/fd/{}", dirfd as i32))
        };
        base.unwrap_or_else(|_| PathBuf::from("/")).join(name)
    };
    // The rules name what symlinks lead to; an existing file is named so.
    std::fs::canonicalize(&path).unwrap_or_else(|_| {
        let n = normal(&path);
        match (n.parent().and_then(|p| std::fs::canonicalize(p).ok()), n.file_name()) {
            (Some(dir), Some(leaf)) => dir.join(leaf),
            _ => n,
        }
    })
}

/// Access bits of open flags for an existing or a new file.
fn open_access(flags: u64, exists: bool) -> u32 {
    let flags = flags as i32;
    if flags & libc::O_PATH != 0 {
        return 0;
    }
    let mut bits = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => access::READ,
        libc::O_WRONLY => 0,
        _ => access::READ,
    };
    if flags & libc::O_ACCMODE != libc::O_RDONLY {
        bits |= if flags & libc::O_APPEND != 0 { access::APPEND } else { access::WRITE };
    }
    if flags & libc::O_TRUNC != 0 {
        bits |= access::WRITE;
    }
    if !exists && flags & libc::O_CREAT != 0 {
        bits |= access::CREATE;
    }
    bits
}

fn choices(path: &str) -> Vec<Choice> {
    let exact = Choice { path: path.to_string(), covers: 1, examples: vec![path.to_string()] };
    let Some(dir) = Path::new(path).parent().filter(|d| d.components().count() > 2) else {
        return vec![exact];
    };
    let d = dir.display();
    let wider = [format!("{d}/*"), format!("{d}/**")].map(|path| {
        // Bounded: the held call waits while this runs.
        let (covers, examples) = systrace_agent::review::covered_now(&path, 5, 10_000);
        Choice { path, covers, examples }
    });
    // Never offered: a glob over a sensitive path or anyone's keys.
    std::iter::once(exact).chain(wider.into_iter().filter(|c| generate::covers_sensitive(&c.path).is_none())).collect()
}

/// Reads held calls from the listener, answers what the policy decides, and
/// sends the rest to the main loop. Runs on its own thread: the first call
/// it sees (the command's own execve) comes while the main loop still waits
/// for the command to start, and is let through without asking.
pub fn serve(
    sock: OwnedFd,
    policy: Arc<Mutex<Policy>>,
    questions: tokio::sync::mpsc::UnboundedSender<Held>,
    timeout: Duration,
) {
    let listener = match recv_fd(sock.as_raw_fd()) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("systrace-agent: ask: {e}");
            return;
        }
    };
    drop(sock);
    let mut first = true;
    loop {
        // SAFETY: a zeroed seccomp_notif is what NOTIF_RECV expects.
        let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the listener is open and notif has the kernel's size.
        let rc = unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut notif) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) || e.raw_os_error() == Some(libc::ENOENT) {
                continue;
            }
            // Every process with the filter has exited.
            return;
        }
        let reply = |r: Reply| {
            let mut resp: libc::seccomp_notif_resp = unsafe { std::mem::zeroed() };
            resp.id = notif.id;
            match r {
                Reply::Continue => resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
                Reply::Fail(errno) => resp.error = -errno,
            }
            // SAFETY: as above. A call whose process died meanwhile is gone: ENOENT, ignored.
            unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
        };
        if first && matches!(notif.data.nr, 59 | 322) {
            first = false;
            reply(Reply::Continue);
            continue;
        }
        let pid = notif.pid;
        let args = notif.data.args;
        let (operation, name, dirfd, flags) = match notif.data.nr {
            2 => ("open", read_string(pid, args[0]), libc::AT_FDCWD as i64, args[1]),
            85 => (
                "open",
                read_string(pid, args[0]),
                libc::AT_FDCWD as i64,
                (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64,
            ),
            257 => ("open", read_string(pid, args[1]), args[0] as i64, args[2]),
            437 => ("open", read_string(pid, args[1]), args[0] as i64, read_u64(pid, args[2]).unwrap_or(0)),
            59 => ("exec", read_string(pid, args[0]), libc::AT_FDCWD as i64, 0),
            _ => ("exec", read_string(pid, args[1]), args[0] as i64, 0),
        };
        // The process may have gone and its pid been reused while we read.
        // SAFETY: as above.
        let valid = unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &notif.id) } == 0;
        let Some(name) = name.filter(|_| valid) else {
            reply(Reply::Continue);
            continue;
        };
        let resolved = resolve(pid, dirfd, &name);
        // The object now, and the name it really has: what the person sees is what a grant is for.
        let object = std::ffi::CString::new(resolved.as_os_str().as_encoded_bytes()).ok().and_then(|c| {
            // SAFETY: a valid C string; the descriptor is owned at once.
            let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        });
        let path = match &object {
            Some(fd) => std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or(resolved),
            None => resolved,
        };
        let exists = object.is_some();
        let bits = if operation == "exec" { access::EXEC | access::MAP } else { open_access(flags, exists) };
        let path_text = path.display().to_string();
        // Asked only when no rule decides and no deny rule refuses: an answer
        // never overrides a person's deny rule.
        let undecided = {
            let p = policy.lock().unwrap_or_else(|e| e.into_inner());
            let o = learn::replay::file_outcome(&p, &path_text, bits);
            if p.default != systrace_agent::policy::DefaultVerdict::Deny || o.by_rule != 0 {
                0
            } else {
                o.undecided
            }
        };
        if undecided == 0 {
            reply(Reply::Continue);
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
        let (tx, rx) = mpsc::channel();
        let question = Question {
            kind: "ask".into(),
            id: notif.id,
            pid,
            comm,
            operation: if bits & access::CREATE != 0 { "create".into() } else { operation.into() },
            path: path_text.clone(),
            access: systrace_agent::policy::access_names(undecided).into_iter().map(String::from).collect(),
            choices: choices(&path_text),
            timeout_s: timeout.as_secs(),
        };
        if questions.send(Held { question, access: bits, undecided, object, tgid: tgid_of(pid), reply: tx }).is_err() {
            reply(Reply::Fail(libc::EACCES));
            continue;
        }
        // The main loop answers, or times out; should it not, fail closed.
        let r = rx.recv_timeout(timeout + Duration::from_secs(10)).unwrap_or(Reply::Fail(libc::EACCES));
        reply(r);
    }
}

/// The rule an "always" answer adds, with its comment.
pub fn answer_rule(q: &Question, bits: u32, pattern: &str, deny: bool, when: &str) -> generate::Rule {
    let mut body = vec![
        ("path".to_string(), generate::quoted(pattern)),
        ("access".to_string(), generate::access_list(generate::smallest(bits))),
    ];
    if deny {
        body.push(("verdict".into(), "\"deny\"".into()));
    }
    generate::Rule {
        body,
        evidence: Default::default(),
        names: 1,
        example: q.path.clone(),
        comment: Some(format!(
            "{} when asked, {when}: {} (pid {}) {} {}",
            if deny { "denied" } else { "permitted" },
            q.comm,
            q.pid,
            q.operation,
            q.path
        )),
    }
}

/// Whether an answer's pattern is one of the question's choices (a client
/// cannot widen beyond what was offered).
pub fn offered(q: &Question, pattern: &str) -> bool {
    q.choices.iter().any(|c| c.path == pattern)
}

/// The main loop's side: the socket people answer on, and the call held now.
pub struct Desk {
    /// The command's cgroup (relative to the cgroup2 root): nothing in it may answer.
    confined: String,
    pub socket: PathBuf,
    /// Taken by the main loop, which waits on them beside its other sources.
    pub listener: Option<tokio::net::UnixListener>,
    clients: Vec<tokio::net::unix::OwnedWriteHalf>,
    answers_tx: tokio::sync::mpsc::UnboundedSender<Answer>,
    pub answers: Option<tokio::sync::mpsc::UnboundedReceiver<Answer>>,
    pub questions: Option<tokio::sync::mpsc::UnboundedReceiver<Held>>,
    pub pending: Option<(Held, tokio::time::Instant)>,
    pub timeout: Duration,
    /// The policy the held calls are checked against, kept current on reloads.
    pub policy: Arc<Mutex<Policy>>,
}

impl Desk {
    /// Listens on `SOCKET_DIR/ask-PID.sock` (root only); returns the desk and
    /// the sender the notification thread passes questions to.
    pub fn open(
        policy: Arc<Mutex<Policy>>,
        timeout: Duration,
        confined: String,
    ) -> io::Result<(Desk, tokio::sync::mpsc::UnboundedSender<Held>)> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        match std::fs::symlink_metadata(SOCKET_DIR) {
            Ok(m) if m.file_type().is_dir() => {
                std::fs::set_permissions(SOCKET_DIR, std::fs::Permissions::from_mode(0o700))?
            }
            Ok(_) => return Err(io::Error::other(format!("{SOCKET_DIR} is not a directory (a link?)"))),
            Err(_) => std::fs::DirBuilder::new().mode(0o700).create(SOCKET_DIR)?,
        }
        let socket = Path::new(SOCKET_DIR).join(format!("ask-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)?;
        let (questions_tx, questions) = tokio::sync::mpsc::unbounded_channel();
        let (answers_tx, answers) = tokio::sync::mpsc::unbounded_channel();
        let desk = Desk {
            confined,
            socket,
            listener: Some(listener),
            clients: Vec::new(),
            answers_tx,
            answers: Some(answers),
            questions: Some(questions),
            pending: None,
            timeout,
            policy,
        };
        Ok((desk, questions_tx))
    }

    /// A client connected: it reads questions and writes answers as JSON lines.
    pub async fn welcome(&mut self, stream: tokio::net::UnixStream) {
        use tokio::io::AsyncBufReadExt;
        // The confined command (or anything it started) answering its own questions.
        let peer = stream.peer_cred().ok().and_then(|c| c.pid());
        let inside = peer.is_none_or(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_or(true, |cg| {
                cg.lines()
                    .filter_map(|l| l.strip_prefix("0::"))
                    .any(|p| p == self.confined || p.starts_with(&format!("{}/", self.confined)))
            })
        });
        if inside {
            eprintln!("systrace-agent: refused a prompt connection from pid {peer:?}, inside the confined cgroup");
            return;
        }
        let (read, write) = stream.into_split();
        let tx = self.answers_tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(a) = serde_json::from_str::<Answer>(&line) {
                    let _ = tx.send(a);
                }
            }
        });
        self.clients.push(write);
        if let Some((held, _)) = &self.pending {
            let q = serde_json::to_value(&held.question).unwrap_or_default();
            self.broadcast(&q).await;
        }
    }

    pub async fn broadcast(&mut self, value: &serde_json::Value) {
        use tokio::io::AsyncWriteExt;
        let mut line = value.to_string();
        line.push('\n');
        let mut alive = Vec::new();
        for mut c in self.clients.drain(..) {
            if c.write_all(line.as_bytes()).await.is_ok() {
                alive.push(c);
            }
        }
        self.clients = alive;
    }

    /// A new held call: everyone connected is asked.
    pub async fn ask(&mut self, held: Held) {
        let q = serde_json::to_value(&held.question).unwrap_or_default();
        eprintln!(
            "systrace-agent: asking: {} (pid {}) {} {} [{}]",
            generate::printable(&held.question.comm),
            held.question.pid,
            held.question.operation,
            generate::printable(&held.question.path),
            held.question.access.join(",")
        );
        self.pending = Some((held, tokio::time::Instant::now() + self.timeout));
        self.broadcast(&q).await;
    }

    /// Ends the held call with `reply`, telling everyone how.
    pub async fn close(&mut self, reply: Reply, result: &str) {
        if let Some((held, _)) = self.pending.take() {
            let _ = held.reply.send(reply);
            eprintln!("systrace-agent: answered: {result} for {}", generate::printable(&held.question.path));
            self.broadcast(&serde_json::json!({"type": "done", "id": held.question.id, "result": result})).await;
        }
    }
}

impl Drop for Desk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

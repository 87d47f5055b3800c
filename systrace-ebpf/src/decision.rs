//! The decision path every hook shares: the verdict under the subject's mode and
//! default, what the hook returns, and the report. Hooks only find the subject
//! ([`crate::subject`]), turn their arguments into an [`Object`] and a set of
//! requested access bits, and let [`check_file`] (or a rule lookup of their own)
//! decide.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    bpf_probe_read_kernel_str_bytes, generated::bpf_loop,
};
use systrace_common::{
    event_flags, rule_verdict, AskKey, Counter, Default, Event, Hook, Mode, UnixKey, Verdict, PATH_LEN, UNIX_PATH_MAX,
};

use crate::{
    kernel,
    maps::{acquire_scratch, count, release_scratch, ASK_GRANTS, EVENTS, LEARNED},
    subject::{current_subject, Subject},
    walk::{opaque_zero, walk_with, Object, Request, Resolution},
};

/// Path components an event carries at most.
const MAX_PATH_COMPONENTS: u32 = 64;

pub const EPERM: i32 = 1;
/// File operations are refused with EACCES, as a file's mode bits would refuse
/// them: execvp and ld.so keep searching their paths on EACCES and stop on EPERM.
pub const EACCES: i32 = 13;

/// The verdict for something the policy does not allow: denied, or in audit mode
/// allowed and reported.
#[inline(always)]
pub fn violation(subject: &Subject) -> Verdict {
    if subject.info.mode == Mode::Audit as u8 {
        Verdict::Audited
    } else if subject.info.mode == Mode::Learn as u8 {
        Verdict::Learned
    } else {
        Verdict::Denied
    }
}

/// The verdict for an access a deny rule names, for a self-protection, and
/// for arguments that could not be read: learning records only what the
/// policy leaves open, so these refuse while learning as when enforcing
/// (audit mode still only reports them).
#[inline(always)]
pub fn denied_by_rule(subject: &Subject) -> Verdict {
    if subject.info.mode == Mode::Learn as u8 {
        Verdict::Denied
    } else {
        violation(subject)
    }
}

/// The verdict of a rule found in a map (one of `rule_verdict`), or of the
/// policy's default when no rule matched. For rules that decide an operation
/// as a whole: network, socket creation, unix names.
#[inline(always)]
pub fn rule_decision(subject: &Subject, rule: Option<u8>) -> Verdict {
    match rule {
        Some(rule_verdict::ALLOW) => Verdict::Allowed,
        Some(rule_verdict::AUDIT) => Verdict::AuditRule,
        Some(_) => denied_by_rule(subject),
        None if subject.info.default == Default::Allow as u8 => Verdict::Allowed,
        None => violation(subject),
    }
}

/// The verdict for a resolution under `subject`'s mode and default. Bits no rule
/// decided get the default; when the path could not be known, a bit the default
/// allows is still refused if some deny rule of the policy is about it.
#[inline(always)]
pub fn verdict(subject: &Subject, res: &Resolution) -> Verdict {
    let default_denies = subject.info.default == Default::Deny as u8;
    let undecided_denies = res.undecided && res.unresolved & subject.info.denied_somewhere != 0;
    if res.denied != 0 {
        denied_by_rule(subject)
    } else if res.unresolved != 0 && (default_denies || undecided_denies) {
        violation(subject)
    } else if res.audited != 0 {
        Verdict::AuditRule
    } else {
        Verdict::Allowed
    }
}

/// Access bits a resolution grants, the default included.
#[inline(always)]
pub fn granted(subject: &Subject, res: &Resolution) -> u32 {
    let by_default = if subject.info.default == Default::Allow as u8 {
        if res.undecided {
            res.unresolved & !subject.info.denied_somewhere
        } else {
            res.unresolved
        }
    } else {
        0
    };
    (res.allowed | by_default) & !res.denied
}

/// What the hook returns to the kernel for `verdict`.
#[inline(always)]
pub fn hook_return(verdict: Verdict, errno: i32) -> i32 {
    match verdict {
        Verdict::Denied => -errno,
        _ => 0,
    }
}

/// The decision when the hook's own arguments could not be read: the confined
/// process is refused (fail closed).
#[inline(always)]
pub fn check_unreadable(subject: &Subject, hook: Hook, requested: u32, errno: i32) -> i32 {
    let v = denied_by_rule(subject);
    if let Some(event) = begin_event(subject, hook as u16, v, requested) {
        unsafe { (*event).flags = event_flags::NO_PATH };
        send_event(event);
    }
    hook_return(v, errno)
}

/// Decides `requested` access to a file for a confined process, reports, and
/// returns what the hook returns. Hooks find the subject first and read their
/// arguments only for confined processes: unconfined ones, the common case, pay
/// for the cgroup lookup and nothing else.
#[inline(always)]
pub fn check_file(subject: &Subject, hook: Hook, object: Object, requested: u32) -> i32 {
    match decide_file(subject, hook, object, requested) {
        Ok((verdict, _)) => hook_return(verdict, EACCES),
        Err(rc) => rc,
    }
}

/// Like [`check_file`], returning the verdict and the bits granted; `Err` holds
/// what the hook returns when the object could not be read.
#[inline(always)]
pub fn decide_file(subject: &Subject, hook: Hook, object: Object, requested: u32) -> Result<(Verdict, u32), i32> {
    let mut check = FileCheck::new(subject, hook, object, requested);
    let unreadable = run_check(&mut check);
    // A global function's results are unknown to the verifier: turn them back
    // into the values a hook may return.
    let verdict = check.verdict();
    if unreadable {
        Err(hook_return(verdict, EACCES))
    } else {
        Ok((verdict, check.granted))
    }
}

/// Everything about one file decision and its report, passed by pointer to the
/// global functions below (which the verifier checks once per program, not at
/// every call site, and whose frames stay small).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileCheck {
    pub subject: Subject,
    pub dentry: u64,
    /// 0 when the hook does not say (inode hooks).
    pub mnt: u64,
    pub dev: u64,
    pub ino: u64,
    pub requested: u32,
    pub hook: u32,
    /// Out: the [`Verdict`], and the bits the rules grant.
    pub verdict: u32,
    pub granted: u32,
    pub undecided: u32,
    /// For protections: see [`Detail`].
    pub detail: u32,
    pub target: u32,
    pub protection: u32,
}

impl FileCheck {
    #[inline(always)]
    pub fn new(subject: &Subject, hook: Hook, object: Object, requested: u32) -> Self {
        FileCheck {
            subject: *subject,
            dentry: object.dentry as u64,
            mnt: object.mnt as u64,
            dev: 0,
            ino: 0,
            requested,
            hook: hook as u32,
            verdict: 0,
            granted: 0,
            undecided: 0,
            detail: 0,
            target: 0,
            protection: 0,
        }
    }

    /// The block for the current process, if it is confined.
    #[inline(always)]
    pub fn for_current(hook: Hook, object: Object, requested: u32) -> Option<Self> {
        current_subject().map(|subject| FileCheck::new(&subject, hook, object, requested))
    }

    #[inline(always)]
    pub fn verdict(&self) -> Verdict {
        Verdict::from_u8(self.verdict as u8).unwrap_or(Verdict::Denied)
    }

    #[inline(always)]
    pub fn object(&self) -> Object {
        Object { dentry: self.dentry as *const u8, mnt: self.mnt as *const u8 }
    }
}

/// Decides `check` and reports; whether the object could not be read.
/// The report comes after the decision, not from inside it: the two global
/// functions' stack frames then never add up.
#[inline(always)]
pub fn run_check(check: &mut FileCheck) -> bool {
    let rc = systrace_check_file(check);
    if rc & CHECK_REPORT != 0 {
        systrace_report_file(check);
    }
    rc & CHECK_UNREADABLE != 0
}

/// [`FileCheck::undecided`] when a "permit once" answer allowed the access.
pub const ANSWERED: u32 = 2;

/// Whether an unexpired "permit once" covers `requested` on the resolved file
/// for the current process.
#[inline(always)]
fn answered(subject: &Subject, res: &Resolution, requested: u32) -> bool {
    let key = AskKey {
        policy: subject.policy,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        dev: res.id.dev,
        ino: res.id.ino,
    };
    match unsafe { ASK_GRANTS.get(&key) } {
        Some(g) => g.access & requested == requested && unsafe { bpf_ktime_get_boot_ns() } < g.expires_ns,
        None => false,
    }
}

/// Bits of [`systrace_check_file`]'s result.
pub const CHECK_UNREADABLE: i32 = 1;
pub const CHECK_REPORT: i32 = 2;

/// Resolves and decides a file access: [`CHECK_UNREADABLE`] when the object
/// could not be read (`verdict` then says what the hook returns),
/// [`CHECK_REPORT`] when the decision is to be reported.
#[no_mangle]
#[inline(never)]
pub extern "C" fn systrace_check_file(check: *mut FileCheck) -> i32 {
    if check.is_null() {
        return CHECK_UNREADABLE;
    }
    let c = unsafe { &mut *check };
    let requested = c.requested;
    // The walk inline: a call to its global function would add its frame to
    // ours. Its answer is read where it lies, in the walk's slot.
    let request = Request::new(&c.subject, c.object(), requested, true);
    walk_with(&request, |answer| {
        let Some(res) = answer else {
            let v = denied_by_rule(&c.subject);
            c.verdict = v as u32;
            c.mnt = 0;
            return CHECK_UNREADABLE | CHECK_REPORT;
        };
        let mut v = verdict(&c.subject, res);
        if res.undecided {
            count(Counter::WalkUndecided);
        }
        if c.mnt == 0 {
            c.mnt = res.mnt;
        }
        c.granted = granted(&c.subject, res);
        c.undecided = res.undecided as u32;
        // A person answered "permit once" for this process and file: what only
        // the default refused is allowed, and reported as such (audit-rule).
        if v == Verdict::Denied && res.denied & requested == 0 && !res.undecided && answered(&c.subject, res, requested)
        {
            v = Verdict::AuditRule;
            c.granted |= requested;
            c.undecided = ANSWERED;
        }
        c.verdict = v as u32;
        c.dev = res.id.dev;
        c.ino = res.id.ino;
        if v != Verdict::Allowed {
            CHECK_REPORT
        } else {
            0
        }
    })
}

/// Counts a report and fills the parts of the event every hook shares, in the
/// per-CPU scratch slot. `None` for a silent allow, or when there is no slot;
/// otherwise the caller must [`send_event`].
#[inline(always)]
fn begin_event(subject: &Subject, hook: u16, verdict: Verdict, requested: u32) -> Option<*mut Event> {
    if verdict == Verdict::Allowed {
        return None;
    }
    if verdict == Verdict::Denied {
        count(Counter::Denied);
    }
    count(Counter::Reported);
    let Some(event) = acquire_scratch() else {
        return None;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    unsafe {
        (*event).boot_ns = bpf_ktime_get_boot_ns();
        (*event).cgroup_id = subject.cgroup_id;
        (*event).dev = 0;
        (*event).ino = 0;
        (*event).pid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).policy = subject.policy;
        (*event).requested = requested;
        (*event).hook = hook;
        (*event).verdict = verdict as u8;
        (*event).flags = 0;
        (*event)._pad = 0;
        (*event).net_addr = [0; 16];
        (*event).net_port = 0;
        (*event).net_family = 0;
        (*event).net_proto = 0;
        (*event).detail = 0;
        (*event).target = 0;
        (*event).protection = 0;
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*event).path[0] = 0;
    }
    Some(event)
}

/// Copies the scratch event to the ring and gives the scratch back. The verdict
/// has already been decided: a full ring buffer costs the report, never the decision.
#[inline(always)]
fn send_event(event: *mut Event) {
    let learned = unsafe { (*event).verdict } == Verdict::Learned as u8;
    let key = if learned { learned_key(unsafe { &*event }) } else { 0 };
    if learned && LEARNED.get_ptr(&key).is_some() {
        count(Counter::LearnRepeats);
        release_scratch();
        return;
    }
    if EVENTS.output::<Event>(unsafe { &*event }, 0).is_err() {
        count(Counter::RingFull);
    } else if learned {
        // Marked as seen only once it is on its way: a full ring loses this
        // report, not every later one.
        let _ = LEARNED.insert(&key, &1, 0);
    }
    release_scratch();
}

/// What makes a learned access distinct: policy, hook, access, object (the
/// inode, the address, the hook's detail) and the first bytes of its path,
/// leaf first, which tell apart the names created in one directory. Mixed into
/// 64 bits: two accesses sharing a key by chance lose one report, at odds of
/// about 2^-64 per pair.
#[inline(always)]
fn learned_key(e: &Event) -> u64 {
    let word = |b: &[u8], at: usize| -> u64 {
        let mut w = 0u64;
        let mut i = 0;
        while i < 8 {
            w |= (b[at + i] as u64) << (8 * i);
            i += 1;
        }
        w
    };
    let words = [
        (e.policy as u64) << 32 | (e.hook as u64) << 16 | (e.net_family as u64) << 8 | e.net_proto as u64,
        (e.requested as u64) << 32 | e.detail as u64,
        e.dev,
        e.ino,
        word(&e.net_addr, 0),
        word(&e.net_addr, 8),
        (e.net_port as u64) << 32 | e.target as u64,
        word(&e.path, 0),
        word(&e.path, 8),
        word(&e.path, 16),
        word(&e.path, 24),
    ];
    let mut h = 0x6a09_e667_f3bc_c908u64;
    let mut i = 0;
    while i < words.len() {
        h = (h ^ words[i]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
        i += 1;
    }
    h
}

/// Counts and writes the event a [`FileCheck`] describes: a rule's decision, or
/// a protection's (`protection` set).
#[no_mangle]
#[inline(never)]
pub extern "C" fn systrace_report_file(check: *mut FileCheck) -> i32 {
    if check.is_null() {
        return 0;
    }
    let c = unsafe { &*check };
    let Some(event) = begin_event(&c.subject, c.hook as u16, c.verdict(), c.requested) else {
        return 0;
    };
    let dentry = c.dentry as *const u8;
    unsafe {
        (*event).dev = c.dev;
        (*event).ino = c.ino;
        (*event).detail = c.detail;
        (*event).target = c.target;
        (*event).protection = c.protection;
        if c.dev == 0 && c.ino == 0 && !dentry.is_null() {
            if let Ok(inode) = kernel::dentry_inode(dentry) {
                if !inode.is_null() {
                    if let Ok(id) = kernel::inode_id(inode) {
                        (*event).dev = id.dev;
                        (*event).ino = id.ino;
                    }
                }
            }
        }
        (*event).flags = if c.undecided != 0 { event_flags::WALK_UNDECIDED } else { 0 };
        (*event).flags |= if !dentry.is_null() && c.mnt != 0 {
            write_path(event, Object { dentry, mnt: c.mnt as *const u8 })
        } else {
            event_flags::NO_PATH
        };
    }
    send_event(event);
    0
}

/// A network operation's peer or local address, for events.
pub struct NetTarget {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    /// The socket's protocol, as reported.
    pub proto: u8,
    /// The protocol the rules are looked up under (see [`rule_protocol`](crate::network)).
    pub rule_proto: u8,
}

/// Writes an event about a network operation for every verdict other than a silent allow.
#[inline(always)]
pub fn report_net(subject: &Subject, hook: Hook, verdict: Verdict, target: &NetTarget) {
    let Some(event) = begin_event(subject, hook as u16, verdict, 0) else {
        return;
    };
    unsafe {
        (*event).flags = event_flags::NO_PATH;
        (*event).net_addr = target.addr;
        (*event).net_port = target.port;
        (*event).net_family = target.family;
        (*event).net_proto = target.proto;
    }
    send_event(event);
}

/// What an event about a process, a capability or a socket carries besides the
/// subject: see [`Event::detail`], [`Event::target`], [`Event::protection`].
#[derive(Clone, Copy, Default)]
pub struct Detail {
    pub detail: u32,
    pub target: u32,
    pub protection: u32,
}

/// Writes an event that is not about a file, for every verdict other than a silent allow.
#[inline(always)]
pub fn report_other(subject: &Subject, hook: Hook, verdict: Verdict, detail: Detail) {
    let Some(event) = begin_event(subject, hook as u16, verdict, 0) else {
        return;
    };
    unsafe {
        (*event).flags = event_flags::NO_PATH | event_flags::NOT_FILE;
        (*event).detail = detail.detail;
        (*event).target = detail.target;
        (*event).protection = detail.protection;
    }
    send_event(event);
}

/// Writes an event about a protection that refused a file operation, naming the file.
#[inline(always)]
pub fn report_protected_file(subject: &Subject, hook: Hook, verdict: Verdict, detail: Detail, object: Object) {
    if verdict == Verdict::Allowed {
        return;
    }
    let mut c = FileCheck::new(subject, hook, object, detail.detail);
    c.verdict = verdict as u32;
    c.detail = detail.detail;
    c.target = detail.target;
    c.protection = detail.protection;
    systrace_report_file(&mut c);
}

/// Decides an operation that the self-protection bit `detail.protection`
/// forbids: allowed when the policy switched that protection off, a violation
/// otherwise. `quiet` skips the report (the kernel's own "noaudit" probes).
#[inline(always)]
pub fn check_protection(subject: &Subject, hook: Hook, detail: Detail, quiet: bool) -> i32 {
    if subject.info.protections & detail.protection == 0 {
        return 0;
    }
    let v = denied_by_rule(subject);
    if !quiet {
        report_other(subject, hook, v, detail);
    }
    hook_return(v, EPERM)
}

/// Like [`check_protection`] for an operation on a file, which the event names.
#[inline(always)]
pub fn check_file_protection(subject: &Subject, hook: Hook, detail: Detail, object: Object) -> i32 {
    if subject.info.protections & detail.protection == 0 {
        return 0;
    }
    let v = denied_by_rule(subject);
    report_protected_file(subject, hook, v, detail, object);
    hook_return(v, EPERM)
}

/// Refuses the operation for the current process if it is confined and
/// `protection` is on: for hooks whose mere call is what a protection forbids.
#[inline(always)]
pub fn forbid_current(hook: Hook, protection: u32, detail: u32) -> i32 {
    match current_subject() {
        Some(subject) => check_protection(&subject, hook, Detail { detail, target: 0, protection }, false),
        None => 0,
    }
}

/// Writes an event about a unix socket peer, named by `key`.
#[inline(always)]
pub fn report_unix(subject: &Subject, hook: Hook, verdict: Verdict, key: &UnixKey) {
    let Some(event) = begin_event(subject, hook as u16, verdict, 0) else {
        return;
    };
    unsafe {
        (*event).flags = event_flags::NO_PATH | event_flags::NOT_FILE;
        (*event).net_family = systrace_common::net::AF_UNIX;
        (*event).net_port = key.len;
        let name = &mut (*event).path;
        name[..UNIX_PATH_MAX].copy_from_slice(&key.name);
    }
    send_event(event);
}

/// Writes an event about a cgroup the kernel bound to a policy as it appeared.
#[inline(always)]
pub fn report_bound(policy: u32, cgroup_id: u64) {
    let Some(event) = acquire_scratch() else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    unsafe {
        (*event).boot_ns = bpf_ktime_get_boot_ns();
        (*event).cgroup_id = cgroup_id;
        (*event).dev = 0;
        (*event).ino = 0;
        (*event).pid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).uid = 0;
        (*event).gid = 0;
        (*event).policy = policy;
        (*event).requested = 0;
        (*event).hook = systrace_common::source::CGROUP_BOUND;
        (*event).verdict = Verdict::Allowed as u8;
        (*event).flags = event_flags::NO_PATH | event_flags::NOT_FILE;
        (*event)._pad = 0;
        (*event).net_addr = [0; 16];
        (*event).net_port = 0;
        (*event).net_family = 0;
        (*event).net_proto = 0;
        (*event).detail = 0;
        (*event).target = 0;
        (*event).protection = 0;
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*event).path[0] = 0;
    }
    send_event(event);
}

/// State of the path writer, shared with its `bpf_loop` callback.
#[repr(C)]
struct PathWalk {
    event: *mut Event,
    dentry: DentryPtrU64,
    mnt: u64,
    /// Where the next component goes in the event's path.
    pos: u64,
    flags: u32,
    finished: u32,
}

type DentryPtrU64 = u64;

/// Writes `object`'s path components, leaf first, into `event`.
#[inline(always)]
fn write_path(event: *mut Event, object: Object) -> u8 {
    let mut p = PathWalk {
        event,
        dentry: object.dentry as u64,
        mnt: object.mnt as u64,
        pos: opaque_zero(),
        flags: opaque_zero() as u32,
        finished: opaque_zero() as u32,
    };
    unsafe { bpf_loop(MAX_PATH_COMPONENTS, path_step as *mut c_void, &mut p as *mut PathWalk as *mut c_void, 0) };
    if p.finished == 0 && p.flags == 0 {
        p.flags = event_flags::PATH_TRUNCATED as u32;
    }
    p.flags as u8
}

#[inline(never)]
extern "C" fn path_step(_index: u64, ctx: *mut c_void) -> i64 {
    let p = unsafe { &mut *(ctx as *mut PathWalk) };
    let buf = unsafe { &mut (*p.event).path };
    // The mask bounds start below PATH_LEN and the slice is PATH_LEN long, so the
    // copy stays inside the PATH_BUF-sized buffer whatever pos is. black_box keeps
    // LLVM from dropping the mask on the strength of checks the verifier cannot
    // connect to this register.
    let start = (core::hint::black_box(p.pos) as usize) & (PATH_LEN - 1);
    // An empty component ends the list; the next write, if any, replaces it.
    buf[start] = 0;
    let dentry = p.dentry as *const u8;
    let Ok(parent) = (unsafe { kernel::dentry_parent(dentry) }) else {
        p.flags = event_flags::NO_PATH as u32;
        return 1;
    };
    // Events name the path the process used, as d_path does: at the root of
    // the mount (a bind mount's root included), continue at its mount point.
    let Ok(mount_root) = (unsafe { kernel::mount_root(p.mnt as *const u8) }) else {
        p.flags = event_flags::NO_PATH as u32;
        return 1;
    };
    if parent == dentry || mount_root == dentry {
        // The root of a mount has no name of its own in the path: continue with
        // the name it is mounted on, or stop at the root of the whole tree.
        let mount = unsafe { kernel::mount_of(p.mnt as *const u8) };
        return match unsafe { kernel::mount_parent(mount) } {
            Ok(parent_mount) if parent_mount == mount => {
                p.finished = 1;
                1
            }
            Ok(parent_mount) => match unsafe { kernel::mount_mountpoint(mount) } {
                Ok(point) => {
                    p.dentry = point as u64;
                    p.mnt = unsafe { kernel::vfsmount_of(parent_mount) } as u64;
                    0
                }
                Err(_) => {
                    p.flags = event_flags::NO_PATH as u32;
                    1
                }
            },
            Err(_) => {
                p.flags = event_flags::NO_PATH as u32;
                1
            }
        };
    }
    let Ok(name) = (unsafe { kernel::dentry_name(dentry) }) else {
        p.flags = event_flags::NO_PATH as u32;
        return 1;
    };
    let Ok(written) = (unsafe { bpf_probe_read_kernel_str_bytes(name, &mut buf[start..start + PATH_LEN]) }) else {
        p.flags = event_flags::NO_PATH as u32;
        return 1;
    };
    let next = start + written.len() + 1;
    if next >= PATH_LEN {
        buf[start] = 0;
        p.flags = event_flags::PATH_TRUNCATED as u32;
        return 1;
    }
    p.pos = next as u64;
    p.dentry = parent as u64;
    0
}

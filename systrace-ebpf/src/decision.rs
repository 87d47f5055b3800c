//! The decision path every hook shares: which policy confines the caller, what the
//! rules along the object's path say, the verdict, and the report. Hooks only turn
//! their arguments into an [`Object`] and a set of requested access bits.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
    bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes,
    generated::bpf_loop,
};
use systrace_common::{
    event_flags, rule_verdict, Counter, Default, Event, FileKey, Hook, Mode, PolicyInfo, RuleSet, UnixKey, Verdict, MAX_WALK_DEPTH,
    PATH_LEN, UNIX_PATH_MAX,
};

use crate::{
    kernel::{self, DentryPtr, VfsMountPtr},
    maps::{count, CGROUP_POLICY, EVENTS, FILE_RULES, POLICIES, SCRATCH},
};

/// Deeper cgroup trees than this are not searched for an ancestor's policy.
/// systemd nests services 3 to 5 levels deep.
const MAX_CGROUP_DEPTH: i32 = 32;
/// Path components an event carries at most.
const MAX_PATH_COMPONENTS: u32 = 64;
/// Loop steps for a walk: one per level, plus one per mount crossed.
const MAX_WALK_STEPS: u32 = 2 * MAX_WALK_DEPTH;

const EPERM: i32 = 1;

/// A zero the verifier cannot see through. Before Linux 6.8 the verifier checked a
/// `bpf_loop` callback as if it ran once, from the caller's initial values, then
/// hard-wired the branches that single pass never took: with `level` starting at
/// a known 0, `level == 0` was "always" true and directory rules never matched.
/// Loop state that starts from this writable global (.bss, not frozen) is unknown
/// to the verifier, so every branch stays.
#[no_mangle]
static mut OPAQUE_ZERO: u64 = 0;

#[inline(always)]
fn opaque_zero() -> u64 {
    unsafe { core::ptr::read_volatile(&raw const OPAQUE_ZERO) }
}

/// A process under a policy.
#[derive(Clone, Copy)]
pub struct Subject {
    pub cgroup_id: u64,
    pub policy: u32,
    pub info: PolicyInfo,
}

/// The policy of the current cgroup, or of its nearest ancestor that has one.
#[inline(always)]
pub fn current_subject() -> Option<Subject> {
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let policy = match unsafe { CGROUP_POLICY.get(&cgroup_id) } {
        Some(policy) => *policy,
        None => nearest_ancestor_policy(cgroup_id)?,
    };
    let info = *unsafe { POLICIES.get(&policy) }?;
    Some(Subject { cgroup_id, policy, info })
}

/// Walks from the top down to the parent of `current`; the last hit is the nearest.
/// Level 0, the root cgroup, is skipped: the agent refuses policies for it.
#[inline(always)]
fn nearest_ancestor_policy(current: u64) -> Option<u32> {
    // A plain integer, not an Option carried through the loop: a `None` has an
    // undefined payload, which LLVM may spill from whatever register is at hand,
    // and the verifier refuses to let a program read an uninitialized register.
    let mut found: u64 = NO_POLICY;
    for level in 1..MAX_CGROUP_DEPTH {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 || id == current {
            break;
        }
        if let Some(policy) = unsafe { CGROUP_POLICY.get(&id) } {
            found = *policy as u64;
        }
    }
    if found == NO_POLICY {
        None
    } else {
        Some(found as u32)
    }
}

/// Above every policy slot (a u32).
const NO_POLICY: u64 = u64::MAX;

/// What an operation is about: a name in the tree, seen through a mount.
#[derive(Clone, Copy)]
pub struct Object {
    /// The file's dentry; for a name being created, the new (negative) dentry.
    pub dentry: DentryPtr,
    pub mnt: VfsMountPtr,
}

/// The per-bit outcome of the rules along an object's path.
#[derive(Default)]
pub struct Resolution {
    pub allowed: u32,
    pub denied: u32,
    pub audited: u32,
    /// Bits no rule decided: the policy's default applies.
    pub unresolved: u32,
    pub walk_bound: bool,
    pub dev: u64,
    pub ino: u64,
}

/// State of a walk up the tree, shared with the `bpf_loop` callback.
#[repr(C)]
struct Walk {
    dentry: DentryPtr,
    mnt: VfsMountPtr,
    dev: u64,
    ino: u64,
    policy: u32,
    /// Directory levels above the object (0: the object itself).
    level: u32,
    allowed: u32,
    denied: u32,
    audited: u32,
    unresolved: u32,
    /// The current dentry is a mount point whose mounted root was just checked:
    /// same path, so not checked again and not a level of its own.
    mount_point: u32,
    /// 1: every bit decided or the root reached; 2: a kernel read failed.
    finished: u32,
}

impl Walk {
    /// Applies one rule set to the bits still undecided. Within one set, deny wins.
    #[inline(always)]
    fn apply(&mut self, set: &RuleSet) {
        let hit = self.unresolved & set.covers();
        self.denied |= hit & set.deny;
        self.allowed |= hit & !set.deny;
        self.audited |= hit & set.audit & !set.deny;
        self.unresolved &= !hit;
    }
}

const WALK_DONE: u32 = 1;
const WALK_FAILED: u32 = 2;

/// One step of [`resolve`]: check the current dentry's rules, then climb.
/// A `bpf_loop` callback, so the verifier checks this body once, not per level.
#[inline(never)]
extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *(ctx as *mut Walk) };
    match unsafe { walk_step_inner(w) } {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(_) => {
            w.finished = WALK_FAILED;
            1
        }
    }
}

/// Returns whether to continue.
#[inline(always)]
unsafe fn walk_step_inner(w: &mut Walk) -> Result<bool, i64> {
    if w.mount_point == 0 {
        let inode = kernel::dentry_inode(w.dentry)?;
        if !inode.is_null() {
            let (dev, ino) = kernel::inode_id(inode)?;
            if w.level == 0 {
                w.dev = dev;
                w.ino = ino;
            }
            let key = FileKey { policy: w.policy, _pad: 0, dev, ino };
            if let Some(rule) = FILE_RULES.get(&key) {
                if w.level == 0 {
                    w.apply(&rule.exact);
                } else {
                    if w.level == 1 {
                        w.apply(&rule.children);
                    }
                    w.apply(&rule.subtree);
                }
            }
        }
        if w.unresolved == 0 {
            w.finished = WALK_DONE;
            return Ok(false);
        }
    }
    w.mount_point = 0;
    let parent = kernel::dentry_parent(w.dentry)?;
    if parent != w.dentry {
        w.dentry = parent;
        w.level += 1;
        if w.level >= MAX_WALK_DEPTH {
            return Ok(false);
        }
        return Ok(true);
    }
    // The root of the file system. If the mount shows the whole file system,
    // continue from where it is mounted. A bind mount of a subdirectory is an
    // alias: its mount point says nothing about the file's real ancestors, and
    // climbing from it would let `mount --bind /secret /allowed/x` put a denied
    // file under an allowed tree. The walk ends here instead.
    if kernel::mount_root(w.mnt)? != w.dentry {
        w.finished = WALK_DONE;
        return Ok(false);
    }
    match kernel::mount_point(w.mnt)? {
        Some((dentry, mnt)) => {
            w.dentry = dentry;
            w.mnt = mnt;
            w.mount_point = 1;
            Ok(true)
        }
        None => {
            w.finished = WALK_DONE;
            Ok(false)
        }
    }
}

/// Climbs from `object` towards the root, letting the nearest rule decide each
/// requested bit: the object's own (exact) rule, then its directory's `/*` rule,
/// then `/**` rules of each ancestor. Files created or renamed after the policy
/// was loaded are covered because nothing here depends on when a name appeared.
#[inline(always)]
pub fn resolve(subject: &Subject, object: Object, requested: u32) -> Result<Resolution, i64> {
    let mut w = Walk {
        dentry: object.dentry,
        mnt: object.mnt,
        dev: 0,
        ino: 0,
        policy: subject.policy,
        level: opaque_zero() as u32,
        allowed: 0,
        denied: 0,
        audited: 0,
        unresolved: requested,
        mount_point: opaque_zero() as u32,
        finished: opaque_zero() as u32,
    };
    unsafe { bpf_loop(MAX_WALK_STEPS, walk_step as *mut c_void, &mut w as *mut Walk as *mut c_void, 0) };
    if w.finished == WALK_FAILED {
        return Err(-1);
    }
    Ok(Resolution {
        allowed: w.allowed,
        denied: w.denied,
        audited: w.audited,
        unresolved: w.unresolved,
        walk_bound: w.finished != WALK_DONE,
        dev: w.dev,
        ino: w.ino,
    })
}

/// The verdict for something the policy does not allow: denied, or in audit mode
/// allowed and reported.
#[inline(always)]
pub fn violation(subject: &Subject) -> Verdict {
    if subject.info.mode == Mode::Audit as u8 {
        Verdict::Audited
    } else {
        Verdict::Denied
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
        Some(_) => violation(subject),
        None if subject.info.default == Default::Allow as u8 => Verdict::Allowed,
        None => violation(subject),
    }
}

/// The verdict for a resolution under `subject`'s mode and default.
#[inline(always)]
pub fn verdict(subject: &Subject, res: &Resolution) -> Verdict {
    let default_denies = subject.info.default == Default::Deny as u8;
    if res.denied != 0 || (default_denies && res.unresolved != 0) {
        violation(subject)
    } else if res.audited != 0 {
        Verdict::AuditRule
    } else {
        Verdict::Allowed
    }
}

/// What the hook returns to the kernel for `verdict`.
#[inline(always)]
pub fn hook_return(verdict: Verdict) -> i32 {
    match verdict {
        Verdict::Denied => -EPERM,
        _ => 0,
    }
}

/// The decision when the hook's own arguments could not be read: the confined
/// process is refused (fail closed).
#[inline(always)]
pub fn check_unreadable(subject: &Subject, hook: Hook, requested: u32) -> i32 {
    let v = violation(subject);
    report(subject, hook, v, requested, &Resolution { unresolved: requested, ..Resolution::default() }, None);
    hook_return(v)
}

/// Decides `requested` access to `object` for a confined process, reports, and
/// returns what the hook returns. Hooks find the subject first and read their
/// arguments only for confined processes: unconfined ones, the common case, pay
/// for the cgroup lookup and nothing else.
#[inline(always)]
pub fn check_subject(subject: &Subject, hook: Hook, object: Object, requested: u32) -> i32 {
    let Ok(res) = resolve(subject, object, requested) else {
        return check_unreadable(subject, hook, requested);
    };
    let v = verdict(subject, &res);
    if res.walk_bound {
        count(Counter::WalkBound);
    }
    report(subject, hook, v, requested, &res, Some(object));
    hook_return(v)
}

/// Counts a report and fills the parts of the event every hook shares, in the
/// per-CPU scratch slot. `None` for a silent allow, or when there is no slot.
#[inline(always)]
fn begin_event(subject: &Subject, hook: Hook, verdict: Verdict, requested: u32) -> Option<*mut Event> {
    if verdict == Verdict::Allowed {
        return None;
    }
    if verdict == Verdict::Denied {
        count(Counter::Denied);
    }
    count(Counter::Reported);
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        count(Counter::RingFull);
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
        (*event).hook = hook as u16;
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

/// Copies the scratch event to the ring. The verdict has already been decided:
/// a full ring buffer costs the report, never the decision.
#[inline(always)]
fn send_event(event: *mut Event) {
    if EVENTS.output::<Event>(unsafe { &*event }, 0).is_err() {
        count(Counter::RingFull);
    }
}

/// Writes an event about a file for every verdict other than a silent allow.
#[inline(always)]
pub fn report(subject: &Subject, hook: Hook, verdict: Verdict, requested: u32, res: &Resolution, object: Option<Object>) {
    let Some(event) = begin_event(subject, hook, verdict, requested) else {
        return;
    };
    unsafe {
        (*event).dev = res.dev;
        (*event).ino = res.ino;
        (*event).flags = if res.walk_bound { event_flags::WALK_BOUND } else { 0 };
        (*event).flags |= match object {
            Some(object) => write_path(object),
            None => event_flags::NO_PATH,
        };
    }
    send_event(event);
}

/// A network operation's peer or local address, for events.
pub struct NetTarget {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub proto: u8,
}

/// Writes an event about a network operation for every verdict other than a silent allow.
#[inline(always)]
pub fn report_net(subject: &Subject, hook: Hook, verdict: Verdict, target: &NetTarget) {
    let Some(event) = begin_event(subject, hook, verdict, 0) else {
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
    let Some(event) = begin_event(subject, hook, verdict, 0) else {
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

/// Decides an operation that the self-protection bit `detail.protection`
/// forbids: allowed when the policy switched that protection off, a violation
/// otherwise. `quiet` skips the report (the kernel's own "noaudit" probes).
#[inline(always)]
pub fn check_protection(subject: &Subject, hook: Hook, detail: Detail, quiet: bool) -> i32 {
    if subject.info.protections & detail.protection == 0 {
        return 0;
    }
    let v = violation(subject);
    if !quiet {
        report_other(subject, hook, v, detail);
    }
    hook_return(v)
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

/// Whether `task` runs in the policy's cgroup or below it: climbs the task's
/// cgroup v2 ancestry looking for the cgroup the policy names.
#[inline(always)]
pub fn task_inside(subject: &Subject, task: *const u8) -> Result<bool, i64> {
    let mut node = unsafe { kernel::task_cgroup_node(task)? };
    for _ in 0..MAX_CGROUP_DEPTH {
        if node.is_null() {
            return Ok(false);
        }
        let (id, parent) = unsafe { kernel::cgroup_node(node)? };
        if id == subject.info.cgroup_id {
            return Ok(true);
        }
        node = parent;
    }
    Ok(false)
}

/// Writes an event about a unix socket peer, named by `key`.
#[inline(always)]
pub fn report_unix(subject: &Subject, hook: Hook, verdict: Verdict, key: &UnixKey) {
    let Some(event) = begin_event(subject, hook, verdict, 0) else {
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

/// State of the path writer, shared with its `bpf_loop` callback.
#[repr(C)]
struct PathWalk {
    dentry: DentryPtr,
    mnt: VfsMountPtr,
    /// Where the next component goes in the scratch event's path.
    pos: u64,
    flags: u32,
    finished: u32,
}

/// Writes `object`'s path components, leaf first, into the scratch event.
#[inline(always)]
fn write_path(object: Object) -> u8 {
    let mut p = PathWalk {
        dentry: object.dentry,
        mnt: object.mnt,
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
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        p.flags = event_flags::NO_PATH as u32;
        return 1;
    };
    let buf = unsafe { &mut (*event).path };
    // The mask bounds start below PATH_LEN and the slice is PATH_LEN long, so the
    // copy stays inside the PATH_BUF-sized buffer whatever pos is. black_box keeps
    // LLVM from dropping the mask on the strength of checks the verifier cannot
    // connect to this register.
    let start = (core::hint::black_box(p.pos) as usize) & (PATH_LEN - 1);
    // An empty component ends the list; the next write, if any, replaces it.
    buf[start] = 0;
    let Ok(parent) = (unsafe { kernel::dentry_parent(p.dentry) }) else {
        p.flags = event_flags::NO_PATH as u32;
        return 1;
    };
    // Events name the path the process used, as d_path does: at the root of
    // the mount (a bind mount's root included), continue at its mount point.
    let Ok(mount_root) = (unsafe { kernel::mount_root(p.mnt) }) else {
        p.flags = event_flags::NO_PATH as u32;
        return 1;
    };
    if parent == p.dentry || mount_root == p.dentry {
        // The root of a mount has no name of its own in the path: continue with
        // the name it is mounted on, or stop at the root of the whole tree.
        return match unsafe { kernel::mount_point(p.mnt) } {
            Ok(Some((dentry, mnt))) => {
                p.dentry = dentry;
                p.mnt = mnt;
                0
            }
            Ok(None) => {
                p.finished = 1;
                1
            }
            Err(_) => {
                p.flags = event_flags::NO_PATH as u32;
                1
            }
        };
    }
    let Ok(name) = (unsafe { kernel::dentry_name(p.dentry) }) else {
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
    p.dentry = parent;
    0
}

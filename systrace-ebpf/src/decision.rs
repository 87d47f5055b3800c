//! The decision path every hook shares: which policy confines the caller, what the
//! rule says, and the report. Hooks only translate their arguments into an object
//! identity and a set of requested access bits.

use aya_ebpf::{
    bindings::path,
    helpers::{
        bpf_d_path, bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id,
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns,
    },
};
use systrace_common::{
    event_flags, Counter, Default, Event, FileKey, Hook, Mode, PolicyInfo, Verdict, PATH_LEN,
};

use crate::maps::{count, CGROUP_POLICY, EVENTS, FILE_RULES, POLICIES};

/// Deeper cgroup trees than this are not searched for an ancestor's policy.
/// systemd nests services 3 to 5 levels deep.
const MAX_CGROUP_DEPTH: i32 = 32;

const EPERM: i32 = 1;

/// A process under a policy.
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

/// Walks from the root down to the parent of `current`; the last hit is the nearest.
#[inline(always)]
fn nearest_ancestor_policy(current: u64) -> Option<u32> {
    let mut found = None;
    for level in 0..MAX_CGROUP_DEPTH {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 || id == current {
            break;
        }
        if let Some(policy) = unsafe { CGROUP_POLICY.get(&id) } {
            found = Some(*policy);
        }
    }
    found
}

/// The verdict for `requested` access to the file (`dev`, `ino`) under `subject`.
#[inline(always)]
pub fn decide_file(subject: &Subject, dev: u64, ino: u64, requested: u32) -> Verdict {
    let key = FileKey { policy: subject.policy, _pad: 0, dev, ino };
    let (allowed, audit) = match unsafe { FILE_RULES.get(&key) } {
        // A rule names the file: it is authoritative for every access bit.
        Some(rule) => (requested & !rule.allow == 0, requested & rule.audit != 0),
        None => (subject.info.default == Default::Allow as u8, false),
    };
    violation_verdict(subject, allowed, audit)
}

/// The verdict when the object could not be identified (a failed kernel read):
/// a confined process is treated as asking for something no rule allows.
#[inline(always)]
pub fn decide_unknown(subject: &Subject) -> Verdict {
    violation_verdict(subject, false, false)
}

#[inline(always)]
fn violation_verdict(subject: &Subject, allowed: bool, audit: bool) -> Verdict {
    if allowed {
        if audit {
            Verdict::AuditRule
        } else {
            Verdict::Allowed
        }
    } else if subject.info.mode == Mode::Audit as u8 {
        Verdict::Audited
    } else {
        Verdict::Denied
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

/// The object an event is about.
pub struct Object {
    pub dev: u64,
    pub ino: u64,
    /// `struct path *` to resolve with `bpf_d_path`, when the hook has one.
    pub path: Option<*mut path>,
}

/// Writes an event for every verdict other than a silent allow. The verdict has
/// already been decided: a full ring buffer costs the report, never the decision.
#[inline(always)]
pub fn report(subject: &Subject, hook: Hook, verdict: Verdict, requested: u32, object: &Object) {
    if verdict == Verdict::Allowed {
        return;
    }
    if verdict == Verdict::Denied {
        count(Counter::Denied);
    }
    count(Counter::Reported);
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::RingFull);
        return;
    };
    let event = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    unsafe {
        (*event).boot_ns = bpf_ktime_get_boot_ns();
        (*event).cgroup_id = subject.cgroup_id;
        (*event).dev = object.dev;
        (*event).ino = object.ino;
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
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*event).path[0] = 0;
        let resolved = match object.path {
            Some(p) => bpf_d_path(p, (*event).path.as_mut_ptr() as *mut _, PATH_LEN as u32) > 0,
            None => false,
        };
        if !resolved {
            (*event).path[0] = 0;
            (*event).flags |= event_flags::NO_PATH;
        }
    }
    entry.submit(0);
}

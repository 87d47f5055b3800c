//! Process hooks: what a confined process may do to other processes and to its
//! own confinement. ptrace, signals, scheduling, clone flags, user namespaces,
//! capabilities.
//!
//! Each decision belongs to one self-protection bit (`systrace_common::protect`)
//! that a policy can switch off, except capabilities, which the policy lists.

use aya_ebpf::{helpers::bpf_get_current_task, programs::LsmContext};
use systrace_common::{protect, Hook};

use crate::{
    decision::{check_protection, denied_by_rule, forbid_current, hook_return, report_other, violation, Detail, EPERM},
    hook::{arg, lsm_program},
    kernel::{self, TaskPtr},
    maps::AGENT,
    subject::{current_subject, task_inside},
};

const PTRACE_MODE_ATTACH: u32 = 0x02;
const PTRACE_MODE_NOAUDIT: u32 = 0x04;
const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_PARENT: u64 = 0x0000_8000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// `capable()` callers that only probe (`ns_capable_noaudit`) pass this; their
/// refusals are applied but not reported, or every `ps` would flood the log.
const CAP_OPT_NOAUDIT: u32 = 1 << 1;
const CAP_LAST: i32 = 63;

lsm_program!(
    /// Attaching to any other process is refused; reading another process's state
    /// (/proc/PID/environ, /proc/PID/fd) only outside the policy's cgroup. The kernel
    /// does not ask about the caller's own threads.
    ptrace_access_check = "ptrace_access_check", Hook::PtraceAccessCheck, |ctx| {
    let Some(subject) = current_subject() else {
        return 0;
    };
    if subject.info.protections & protect::PTRACE == 0 {
        return 0;
    }
    let child: TaskPtr = arg(&ctx, Hook::PtraceAccessCheck, 0);
    let mode: u32 = arg(&ctx, Hook::PtraceAccessCheck, 1);
    if mode & PTRACE_MODE_ATTACH == 0 && matches!(task_inside(&subject, child), Ok(true)) {
        return 0;
    }
    let target = unsafe { kernel::task_tgid(child) }.unwrap_or(0);
    let detail = Detail { detail: mode, target, protection: protect::PTRACE };
    check_protection(&subject, Hook::PtraceAccessCheck, detail, mode & PTRACE_MODE_NOAUDIT != 0)
});

lsm_program!(
    /// Signals stay inside the policy's cgroup. Signal 0 delivers nothing (it only
    /// asks whether a process exists) and stays allowed.
    task_kill = "task_kill", Hook::TaskKill, |ctx| {
    let sig: i32 = arg(&ctx, Hook::TaskKill, 1);
    if sig == 0 {
        return 0;
    }
    outside_only(Hook::TaskKill, arg(&ctx, Hook::TaskKill, 0), sig as u32)
});

/// Refuses, under the signal protection, an action on `task` unless it runs in
/// the policy's cgroup or below.
#[inline(always)]
fn outside_only(hook: Hook, task: TaskPtr, detail: u32) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    if subject.info.protections & protect::SIGNAL == 0 || matches!(task_inside(&subject, task), Ok(true)) {
        return 0;
    }
    let target = unsafe { kernel::task_tgid(task) }.unwrap_or(0);
    check_protection(&subject, hook, Detail { detail, target, protection: protect::SIGNAL }, false)
}

lsm_program!(
    /// setpriority(2) on another process: the agent starved of CPU would stop
    /// reporting.
    task_setnice = "task_setnice", Hook::TaskSetnice, |ctx| {
    let nice: i32 = arg(&ctx, Hook::TaskSetnice, 1);
    outside_only(Hook::TaskSetnice, arg(&ctx, Hook::TaskSetnice, 0), nice as u32)
});

lsm_program!(
    /// sched_setscheduler, sched_setattr, sched_setaffinity on another process.
    task_setscheduler = "task_setscheduler", Hook::TaskSetscheduler, |ctx| {
    outside_only(Hook::TaskSetscheduler, arg(&ctx, Hook::TaskSetscheduler, 0), 0)
});

lsm_program!(
    /// ioprio_set(2) on another process: the agent starved of I/O.
    task_setioprio = "task_setioprio", Hook::TaskSetioprio, |ctx| {
    outside_only(Hook::TaskSetioprio, arg(&ctx, Hook::TaskSetioprio, 0), 0)
});

lsm_program!(
    /// migrate_pages(2) and move_pages(2) on another process.
    task_movememory = "task_movememory", Hook::TaskMovememory, |ctx| {
    outside_only(Hook::TaskMovememory, arg(&ctx, Hook::TaskMovememory, 0), 0)
});

lsm_program!(
    /// prlimit(2) on another process (the kernel asks only then). Setting a CPU
    /// limit is a way to have the kernel kill the agent; the hook names only the
    /// target's credentials, not the process, so every write to another process's
    /// limits is refused, inside the cgroup too. Reads stay allowed.
    task_prlimit = "task_prlimit", Hook::TaskPrlimit, |ctx| {
    const LSM_PRLIMIT_WRITE: u32 = 2;
    let flags: u32 = arg(&ctx, Hook::TaskPrlimit, 0);
    if flags & LSM_PRLIMIT_WRITE == 0 {
        return 0;
    }
    forbid_current(Hook::TaskPrlimit, protect::SIGNAL, flags)
});

lsm_program!(
    /// A signal delivered by SIGIO: a process makes itself (or another) the owner of
    /// a file with F_SETOWN, picks the signal with F_SETSIG, and the kernel sends it
    /// when the file becomes ready, without asking `task_kill`. The sender is
    /// whoever set the owner, not the current process, so the signal protection
    /// cannot tell which policy applies; the agent at least is never a target.
    file_send_sigiotask = "file_send_sigiotask", Hook::FileSendSigiotask, |ctx| sigio(&ctx));

#[inline(always)]
fn sigio(ctx: &LsmContext) -> i32 {
    let agent = match AGENT.get(0) {
        Some(&pid) if pid != 0 => pid,
        _ => return 0,
    };
    let task: TaskPtr = arg(ctx, Hook::FileSendSigiotask, 0);
    let Ok(target) = (unsafe { kernel::task_tgid(task) }) else {
        return 0;
    };
    if target != agent {
        return 0;
    }
    let sig: i32 = arg(ctx, Hook::FileSendSigiotask, 1);
    if let Some(subject) = current_subject() {
        // Most often the confined process that armed the file is also the one
        // that makes it ready (writes to the pipe); then the report names it.
        let detail = Detail { detail: sig as u32, target, protection: protect::SIGNAL };
        report_other(&subject, Hook::FileSendSigiotask, denied_by_rule(&subject), detail);
    }
    -EPERM
}

lsm_program!(
    /// clone3 can start the child in another cgroup, or in new user and mount
    /// namespaces; CLONE_PARENT makes the child a sibling, whose exit signal goes
    /// to the caller's parent: refused when that parent is outside the cgroup.
    /// Plain fork and threads pass.
    task_alloc = "task_alloc", Hook::TaskAlloc, |ctx| {
    let flags: u64 = arg(&ctx, Hook::TaskAlloc, 0);
    if flags & (CLONE_INTO_CGROUP | CLONE_NEWNS | CLONE_NEWUSER | CLONE_PARENT) == 0 {
        return 0;
    }
    let Some(subject) = current_subject() else {
        return 0;
    };
    let low = flags as u32;
    if flags & CLONE_INTO_CGROUP != 0 {
        let detail = Detail { detail: low, target: (flags >> 32) as u32, protection: protect::CGROUP };
        let verdict = check_protection(&subject, Hook::TaskAlloc, detail, false);
        if verdict != 0 {
            return verdict;
        }
    }
    if flags & (CLONE_NEWNS | CLONE_NEWUSER) != 0 {
        let detail = Detail { detail: low, target: 0, protection: protect::NAMESPACE };
        let verdict = check_protection(&subject, Hook::TaskAlloc, detail, false);
        if verdict != 0 {
            return verdict;
        }
    }
    if flags & CLONE_PARENT != 0 {
        let current = unsafe { bpf_get_current_task() } as TaskPtr;
        let parent = unsafe { kernel::task_real_parent(current) };
        let outside = match parent {
            Ok(parent) if !parent.is_null() => !matches!(task_inside(&subject, parent), Ok(true)),
            _ => true,
        };
        if outside {
            let target = parent.ok().and_then(|p| unsafe { kernel::task_tgid(p) }.ok()).unwrap_or(0);
            let detail = Detail { detail: low, target, protection: protect::SIGNAL };
            return check_protection(&subject, Hook::TaskAlloc, detail, false);
        }
    }
    0
});

lsm_program!(
    /// Every way to a new user namespace (unshare, clone, clone3) passes here. A
    /// user namespace is what turns an unprivileged process into root of its own
    /// mounts.
    userns_create = "userns_create", Hook::UsernsCreate, |_ctx| {
    forbid_current(Hook::UsernsCreate, protect::NAMESPACE, 0)
});

lsm_program!(
    /// A capability the policy does not list is refused, in whatever user
    /// namespace it is asked for: root of a new namespace is no way around it.
    capable = "capable", Hook::Capable, |ctx| {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let cap: i32 = arg(&ctx, Hook::Capable, 0);
    let opts: u32 = arg(&ctx, Hook::Capable, 1);
    if (0..=CAP_LAST).contains(&cap) && subject.info.capabilities & (1u64 << cap) != 0 {
        return 0;
    }
    let verdict = violation(&subject);
    if opts & CAP_OPT_NOAUDIT == 0 {
        report_other(&subject, Hook::Capable, verdict, Detail { detail: cap as u32, ..Detail::default() });
    }
    hook_return(verdict, EPERM)
});

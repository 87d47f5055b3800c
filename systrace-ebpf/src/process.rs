//! Process hooks: what a confined process may do to other processes and to its
//! own confinement. ptrace, signals, clone flags, user namespaces, capabilities.
//!
//! Each decision belongs to one self-protection bit (`systrace_common::protect`)
//! that a policy can switch off, except capabilities, which the policy lists.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use systrace_common::{protect, Hook};

use crate::{
    decision::{
        check_protection, current_subject, forbid_current, hook_return, report_other, task_inside, violation, Detail,
    },
    hook::previous_verdict,
    kernel,
    maps::AGENT,
};

const EPERM: i32 = 1;

const PTRACE_MODE_ATTACH: u32 = 0x02;
const PTRACE_MODE_NOAUDIT: u32 = 0x04;
const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// `capable()` callers that only probe (`ns_capable_noaudit`) pass this; their
/// refusals are applied but not reported, or every `ps` would flood the log.
const CAP_OPT_NOAUDIT: u32 = 1 << 1;
const CAP_LAST: i32 = 63;

#[lsm(hook = "ptrace_access_check")]
#[inline(always)]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_PTRACE_ACCESS_CHECK) {
        0 => ptrace(&ctx),
        previous => previous,
    }
}

/// Attaching to any other process is refused; reading another process's state
/// (/proc/PID/environ, /proc/PID/fd) only outside the policy's cgroup. The kernel
/// does not ask about the caller's own threads.
#[inline(always)]
fn ptrace(ctx: &LsmContext) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    if subject.info.protections & protect::PTRACE == 0 {
        return 0;
    }
    let child: *const u8 = ctx.arg(0);
    let mode: u32 = ctx.arg(1);
    if mode & PTRACE_MODE_ATTACH == 0 && matches!(task_inside(&subject, child), Ok(true)) {
        return 0;
    }
    let target = unsafe { kernel::task_tgid(child) }.unwrap_or(0);
    let detail = Detail { detail: mode, target, protection: protect::PTRACE };
    check_protection(&subject, Hook::PtraceAccessCheck, detail, mode & PTRACE_MODE_NOAUDIT != 0)
}

#[lsm(hook = "task_kill")]
#[inline(always)]
pub fn task_kill(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_TASK_KILL) {
        0 => kill(&ctx),
        previous => previous,
    }
}

/// Signals stay inside the policy's cgroup. Signal 0 delivers nothing (it only
/// asks whether a process exists) and stays allowed.
#[inline(always)]
fn kill(ctx: &LsmContext) -> i32 {
    let sig: i32 = ctx.arg(2);
    if sig == 0 {
        return 0;
    }
    outside_only(Hook::TaskKill, ctx.arg(0), sig as u32)
}

/// Refuses, under the signal protection, an action on `task` unless it runs in
/// the policy's cgroup or below.
#[inline(always)]
fn outside_only(hook: Hook, task: *const u8, detail: u32) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    if subject.info.protections & protect::SIGNAL == 0 || matches!(task_inside(&subject, task), Ok(true)) {
        return 0;
    }
    let target = unsafe { kernel::task_tgid(task) }.unwrap_or(0);
    check_protection(&subject, hook, Detail { detail, target, protection: protect::SIGNAL }, false)
}

/// setpriority(2) on another process: the agent starved of CPU would stop
/// reporting.
#[lsm(hook = "task_setnice")]
#[inline(always)]
pub fn task_setnice(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_TASK_SETNICE) {
        0 => {
            let nice: i32 = ctx.arg(1);
            outside_only(Hook::TaskSetnice, ctx.arg(0), nice as u32)
        }
        previous => previous,
    }
}

/// sched_setscheduler, sched_setattr, sched_setaffinity on another process.
#[lsm(hook = "task_setscheduler")]
#[inline(always)]
pub fn task_setscheduler(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_TASK_SETSCHEDULER) {
        0 => outside_only(Hook::TaskSetscheduler, ctx.arg(0), 0),
        previous => previous,
    }
}

/// prlimit(2) on another process (the kernel asks only then). Setting a CPU
/// limit is a way to have the kernel kill the agent; the hook names only the
/// target's credentials, not the process, so every write to another process's
/// limits is refused, inside the cgroup too. Reads stay allowed.
#[lsm(hook = "task_prlimit")]
#[inline(always)]
pub fn task_prlimit(ctx: LsmContext) -> i32 {
    const LSM_PRLIMIT_WRITE: u32 = 2;
    match previous_verdict!(ctx, RET_TASK_PRLIMIT) {
        0 => {
            let flags: u32 = ctx.arg(2);
            if flags & LSM_PRLIMIT_WRITE == 0 {
                return 0;
            }
            forbid_current(Hook::TaskPrlimit, protect::SIGNAL, flags)
        }
        previous => previous,
    }
}

/// A signal delivered by SIGIO: a process makes itself (or another) the owner of
/// a file with F_SETOWN, picks the signal with F_SETSIG, and the kernel sends it
/// when the file becomes ready, without asking `task_kill`. The sender is
/// whoever set the owner, not the current process, so the signal protection
/// cannot tell which policy applies; the agent at least is never a target.
#[lsm(hook = "file_send_sigiotask")]
#[inline(always)]
pub fn file_send_sigiotask(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_FILE_SEND_SIGIOTASK) {
        0 => sigio(&ctx),
        previous => previous,
    }
}

#[inline(always)]
fn sigio(ctx: &LsmContext) -> i32 {
    let agent = match AGENT.get(0) {
        Some(&pid) if pid != 0 => pid,
        _ => return 0,
    };
    let task: *const u8 = ctx.arg(0);
    let Ok(target) = (unsafe { kernel::task_tgid(task) }) else {
        return 0;
    };
    if target != agent {
        return 0;
    }
    let sig: i32 = ctx.arg(2);
    if let Some(subject) = current_subject() {
        // Most often the confined process that armed the file is also the one
        // that makes it ready (writes to the pipe); then the report names it.
        let detail = Detail { detail: sig as u32, target, protection: protect::SIGNAL };
        report_other(&subject, Hook::FileSendSigiotask, violation(&subject), detail);
    }
    -EPERM
}

#[lsm(hook = "task_alloc")]
#[inline(always)]
pub fn task_alloc(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_TASK_ALLOC) {
        0 => clone_flags(&ctx),
        previous => previous,
    }
}

/// clone3 can start the child in another cgroup, or in new user and mount
/// namespaces; plain fork and threads pass.
#[inline(always)]
fn clone_flags(ctx: &LsmContext) -> i32 {
    let flags: u64 = ctx.arg(1);
    if flags & (CLONE_INTO_CGROUP | CLONE_NEWNS | CLONE_NEWUSER) == 0 {
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
        return check_protection(&subject, Hook::TaskAlloc, detail, false);
    }
    0
}

/// Every way to a new user namespace (unshare, clone, clone3) passes here. A
/// user namespace is what turns an unprivileged process into root of its own
/// mounts.
#[lsm(hook = "userns_create")]
#[inline(always)]
pub fn userns_create(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_USERNS_CREATE) {
        0 => forbid_current(Hook::UsernsCreate, protect::NAMESPACE, 0),
        previous => previous,
    }
}

#[lsm(hook = "capable")]
#[inline(always)]
pub fn capable(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_CAPABLE) {
        0 => capability(&ctx),
        previous => previous,
    }
}

/// A capability the policy does not list is refused, in whatever user
/// namespace it is asked for: root of a new namespace is no way around it.
#[inline(always)]
fn capability(ctx: &LsmContext) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let cap: i32 = ctx.arg(2);
    let opts: u32 = ctx.arg(3);
    if (0..=CAP_LAST).contains(&cap) && subject.info.capabilities & (1u64 << cap) != 0 {
        return 0;
    }
    let verdict = violation(&subject);
    if opts & CAP_OPT_NOAUDIT == 0 {
        report_other(&subject, Hook::Capable, verdict, Detail { detail: cap as u32, ..Detail::default() });
    }
    hook_return(verdict)
}

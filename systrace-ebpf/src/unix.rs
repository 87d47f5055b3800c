//! Unix socket peers, by the name they are bound to: a path or an abstract name.
//!
//! The hooks run once the kernel has found the peer, so the name checked is the
//! one the peer really has (the server's bind), not a string the client passed:
//! a relative path, a symlink or /proc/self/cwd tricks change nothing. Stream
//! and seqpacket connects pass `unix_stream_connect`; datagram connects and
//! every datagram sent pass `unix_may_send`.

use aya_ebpf::{helpers::generated::bpf_probe_read_kernel, macros::lsm, programs::LsmContext};
use systrace_common::{net, rule_verdict, Default, Hook, UnixKey, Verdict, UNIX_PATH_MAX};

use crate::{
    decision::{check_unreadable, current_subject, hook_return, report_unix, violation, Subject},
    hook::previous_verdict,
    kernel,
    maps::{UNIX_KEY, UNIX_RULES},
};

#[lsm(hook = "unix_stream_connect")]
#[inline(always)]
pub fn unix_stream_connect(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_UNIX_STREAM_CONNECT) {
        0 => match current_subject() {
            // The listening peer's `struct sock`.
            Some(subject) => check_peer(&subject, Hook::UnixStreamConnect, ctx.arg(1)),
            None => 0,
        },
        previous => previous,
    }
}

#[lsm(hook = "unix_may_send")]
#[inline(always)]
pub fn unix_may_send(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_UNIX_MAY_SEND) {
        0 => match current_subject() {
            Some(subject) => {
                let other: *const u8 = ctx.arg(1);
                match unsafe { kernel::socket_sock(other) } {
                    Ok(sk) => check_peer(&subject, Hook::UnixMaySend, sk),
                    Err(_) => check_unreadable(&subject, Hook::UnixMaySend, 0),
                }
            }
            None => 0,
        },
        previous => previous,
    }
}

/// Decides reaching the peer `sk`: its exact name's rule, then a rule for every
/// named peer, then the policy's default. Unnamed peers (a socketpair's other
/// end) are not asked about: nothing names them in a policy.
#[inline(always)]
fn check_peer(subject: &Subject, hook: Hook, sk: *const u8) -> i32 {
    let (name, len) = match unsafe { kernel::unix_name(sk) } {
        Ok(Some(named)) => named,
        Ok(None) => return 0,
        Err(_) => return check_unreadable(subject, hook, 0),
    };
    let Some(key) = UNIX_KEY.get_ptr_mut(0) else {
        return check_unreadable(subject, hook, 0);
    };
    let key = unsafe { &mut *key };
    let size = if len as usize > UNIX_PATH_MAX { UNIX_PATH_MAX as u32 } else { len };
    key.policy = subject.policy;
    key.op = net::OP_CONNECT;
    key._pad = 0;
    key.len = size as u16;
    key.name = [0; UNIX_PATH_MAX];
    // A variable-length read, bounded by the buffer for the verifier.
    let read = unsafe { bpf_probe_read_kernel(key.name.as_mut_ptr() as *mut _, size & 0x7f, name as *const _) };
    if read != 0 {
        return check_unreadable(subject, hook, 0);
    }
    let mut rule = unsafe { UNIX_RULES.get(&*key) }.copied();
    if rule.is_none() {
        let any = UnixKey { policy: subject.policy, op: net::OP_CONNECT, _pad: 0, len: 0, name: [0; UNIX_PATH_MAX] };
        rule = unsafe { UNIX_RULES.get(&any) }.copied();
    }
    let verdict = match rule {
        Some(rule_verdict::ALLOW) => Verdict::Allowed,
        Some(rule_verdict::AUDIT) => Verdict::AuditRule,
        Some(_) => violation(subject),
        None if subject.info.default == Default::Allow as u8 => Verdict::Allowed,
        None => violation(subject),
    };
    report_unix(subject, hook, verdict, key);
    hook_return(verdict)
}

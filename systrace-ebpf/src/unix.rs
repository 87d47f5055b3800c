//! Unix socket peers, by the name they are bound to: a path or an abstract name.
//!
//! The hooks run once the kernel has found the peer, so the name checked is the
//! one the peer really has (the server's bind), not a string the client passed:
//! a relative path, a symlink or /proc/self/cwd tricks change nothing. Stream
//! and seqpacket connects pass `unix_stream_connect`; datagram connects and
//! every datagram sent pass `unix_may_send`. Binds of abstract names are decided
//! here too (from `socket_bind`), so a confined process cannot squat a name a
//! service outside expects to own; binding a path is making a file, which the
//! file hooks decide.

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use systrace_common::{net, Hook, UnixKey, UNIX_PATH_MAX};

use crate::{
    decision::{check_unreadable, hook_return, report_unix, rule_decision, EPERM},
    hook::{arg, lsm_program},
    kernel,
    maps::UNIX_RULES,
    subject::{current_subject, Subject},
};

lsm_program!(unix_stream_connect = "unix_stream_connect", Hook::UnixStreamConnect, |ctx| {
    match current_subject() {
        // The listening peer's `struct sock`.
        Some(subject) => check_peer(&subject, Hook::UnixStreamConnect, arg(&ctx, Hook::UnixStreamConnect, 0)),
        None => 0,
    }
});

lsm_program!(unix_may_send = "unix_may_send", Hook::UnixMaySend, |ctx| {
    match current_subject() {
        Some(subject) => {
            let other: *const u8 = arg(&ctx, Hook::UnixMaySend, 0);
            match unsafe { kernel::socket_sock(other) } {
                Ok(sk) => check_peer(&subject, Hook::UnixMaySend, sk),
                Err(_) => check_unreadable(&subject, Hook::UnixMaySend, 0, EPERM),
            }
        }
        None => 0,
    }
});

/// Reaching the peer `sk`. Unnamed peers (a socketpair's other end) are not
/// asked about: nothing names them in a policy.
#[inline(always)]
fn check_peer(subject: &Subject, hook: Hook, sk: *const u8) -> i32 {
    match unsafe { kernel::unix_name(sk) } {
        Ok(Some((name, len))) => check_name(subject, hook, net::OP_CONNECT, name, len),
        Ok(None) => 0,
        Err(_) => check_unreadable(subject, hook, 0, EPERM),
    }
}

/// `bind()` of a unix socket to `sockaddr` (the kernel's copy, `addrlen` bytes).
/// Abstract names only: a path bind creates a file, and an autobind (no name
/// given) lets the kernel pick a fresh one.
#[inline(always)]
pub fn check_bind(subject: &Subject, sockaddr: *const u8, addrlen: i32) -> i32 {
    if addrlen <= 2 {
        return 0;
    }
    let name = unsafe { sockaddr.add(2) };
    match unsafe { kernel::read_at::<u8>(name, 0) } {
        Ok(0) => check_name(subject, Hook::SocketBind, net::OP_BIND, name, (addrlen - 2) as u32),
        Ok(_) => 0,
        Err(_) => check_unreadable(subject, Hook::SocketBind, 0, EPERM),
    }
}

/// Decides `op` on the unix name at `name` (`len` bytes, kernel memory): its
/// exact name's rule, then a rule for every name, then the policy's default.
/// The key is built on the stack: nothing another program on this CPU could
/// overwrite meanwhile.
#[inline(always)]
fn check_name(subject: &Subject, hook: Hook, op: u8, name: *const u8, len: u32) -> i32 {
    let size = if len as usize > UNIX_PATH_MAX { UNIX_PATH_MAX as u32 } else { len };
    let mut key = UnixKey { policy: subject.policy, op, _pad: 0, len: size as u16, name: [0; UNIX_PATH_MAX] };
    // A variable-length read, bounded by the buffer for the verifier.
    let read = unsafe { bpf_probe_read_kernel(key.name.as_mut_ptr() as *mut _, size & 0x7f, name as *const _) };
    if read != 0 {
        return check_unreadable(subject, hook, 0, EPERM);
    }
    let mut rule = unsafe { UNIX_RULES.get(&key) }.copied();
    let verdict = if rule.is_some() {
        rule_decision(subject, rule)
    } else {
        // The rule for every name, looked up with the same key emptied; the
        // report names the peer, so the name comes back afterwards.
        let len = key.len;
        key.len = 0;
        let name = key.name;
        key.name = [0; UNIX_PATH_MAX];
        rule = unsafe { UNIX_RULES.get(&key) }.copied();
        key.len = len;
        key.name = name;
        rule_decision(subject, rule)
    };
    report_unix(subject, hook, verdict, &key);
    hook_return(verdict, EPERM)
}

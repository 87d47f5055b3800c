//! Network hooks: `socket_bind`, `socket_connect` and `socket_sendmsg` for IPv4
//! and IPv6, and `socket_create` for every family.
//!
//! Rules live in an LPM trie keyed by (policy, operation, family, protocol,
//! address prefix); the longest prefix holding the address returns the port
//! ranges of every rule that covers it, most specific first, and the first range
//! holding the port decides. IPv4-mapped IPv6 addresses are matched as the IPv4
//! address they carry, so `::ffff:10.0.0.1` is no way around a rule on 10.0.0.1.
//! A datagram sent to an explicit address (sendto, sendmsg) is decided by the
//! `connect` rules: both name the peer a process reaches, so an unconnected UDP
//! socket is no way around a connect rule.

use aya_ebpf::{macros::lsm, maps::lpm_trie::Key, programs::LsmContext};
use systrace_common::{net, Hook, NetKey, SocketKey, Verdict};

use crate::{
    decision::{
        check_unreadable, current_subject, hook_return, report_net, report_other, rule_decision, Detail, NetTarget,
        Subject,
    },
    hook::previous_verdict,
    kernel,
    maps::{NET_RULES, SOCKET_RULES},
    unix,
};

#[lsm(hook = "socket_bind")]
#[inline(always)]
pub fn socket_bind(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_SOCKET_BIND) {
        0 => check_bind(&ctx),
        previous => previous,
    }
}

#[inline(always)]
fn check_bind(ctx: &LsmContext) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let sockaddr: *const u8 = ctx.arg(1);
    let addrlen: i32 = ctx.arg(2);
    if addrlen >= 2 {
        match unsafe { kernel::read_at::<u16>(sockaddr, 0) } {
            Ok(family) if family == net::AF_UNIX as u16 => return unix::check_bind(&subject, sockaddr, addrlen),
            Ok(_) => {}
            Err(_) => return check_unreadable(&subject, Hook::SocketBind, 0),
        }
    }
    decide_address(&subject, Hook::SocketBind, net::OP_BIND, ctx.arg(0), sockaddr, addrlen)
}

#[lsm(hook = "socket_connect")]
#[inline(always)]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_SOCKET_CONNECT) {
        0 => check_address(&ctx, Hook::SocketConnect, net::OP_CONNECT),
        previous => previous,
    }
}

/// The address in a `struct sockaddr` the kernel copied in, normalized.
#[inline(always)]
unsafe fn target(sock: *const u8, sockaddr: *const u8, addrlen: i32) -> Result<Option<NetTarget>, i64> {
    if addrlen < 2 {
        return Ok(None);
    }
    let family: u16 = kernel::read_at(sockaddr, 0)?;
    let mut addr = [0u8; 16];
    let (family, port) = match family as u8 {
        net::AF_INET if addrlen >= 8 => {
            let ip: [u8; 4] = kernel::read_at(sockaddr, 4)?;
            addr[..4].copy_from_slice(&ip);
            (net::AF_INET, kernel::read_at::<u16>(sockaddr, 2)?)
        }
        net::AF_INET6 if addrlen >= 24 => {
            let ip: [u8; 16] = kernel::read_at(sockaddr, 8)?;
            let port = kernel::read_at::<u16>(sockaddr, 2)?;
            let v4_mapped = ip[..10] == [0; 10] && ip[10] == 0xff && ip[11] == 0xff;
            if v4_mapped {
                addr[..4].copy_from_slice(&ip[12..16]);
                (net::AF_INET, port)
            } else {
                addr = ip;
                (net::AF_INET6, port)
            }
        }
        _ => return Ok(None),
    };
    let proto = kernel::socket_protocol(sock)? as u8;
    Ok(Some(NetTarget { addr, port: u16::from_be(port), family, proto }))
}

#[lsm(hook = "socket_sendmsg")]
#[inline(always)]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_SOCKET_SENDMSG) {
        0 => check_send(&ctx),
        previous => previous,
    }
}

/// Sends that name a destination; sends on a connected socket name none and
/// were decided at connect.
#[inline(always)]
fn check_send(ctx: &LsmContext) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let sock: *const u8 = ctx.arg(0);
    let msg: *const u8 = ctx.arg(1);
    match unsafe { kernel::msghdr_name(msg) } {
        Ok((name, _)) if name.is_null() => 0,
        Ok((name, len)) => decide_address(&subject, Hook::SocketSendmsg, net::OP_CONNECT, sock, name, len),
        Err(_) => check_unreadable(&subject, Hook::SocketSendmsg, 0),
    }
}

#[inline(always)]
fn check_address(ctx: &LsmContext, hook: Hook, op: u8) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    decide_address(&subject, hook, op, ctx.arg(0), ctx.arg(1), ctx.arg(2))
}

#[inline(always)]
fn decide_address(subject: &Subject, hook: Hook, op: u8, sock: *const u8, sockaddr: *const u8, addrlen: i32) -> i32 {
    let target = match unsafe { target(sock, sockaddr, addrlen) } {
        Ok(Some(t)) => t,
        Ok(None) => return 0,
        Err(_) => return check_unreadable(subject, hook, 0),
    };
    let verdict = decide(subject, op, &target);
    report_net(subject, hook, verdict, &target);
    hook_return(verdict)
}

#[inline(always)]
fn decide(subject: &Subject, op: u8, target: &NetTarget) -> Verdict {
    let key = Key::new(
        net::FIXED_PREFIX_BITS + 128,
        NetKey { policy: subject.policy, op, family: target.family, proto: target.proto, _pad: 0, addr: target.addr },
    );
    let mut decided: Option<u8> = None;
    if let Some(rule) = NET_RULES.get(&key) {
        let count = rule.count as usize;
        for i in 0..net::MAX_PORT_RULES {
            if i >= count {
                break;
            }
            let range = &rule.ports[i];
            if range.lo <= target.port && target.port <= range.hi {
                decided = Some(range.verdict);
                break;
            }
        }
    }
    rule_decision(subject, decided)
}

#[lsm(hook = "socket_create")]
#[inline(always)]
pub fn socket_create(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_SOCKET_CREATE) {
        0 => check_create(&ctx),
        previous => previous,
    }
}

/// Which sockets a process may make, by family and type: a rule for the exact
/// type, then one for the whole family, then the policy's default. Sockets the
/// kernel makes for itself are not asked about.
#[inline(always)]
fn check_create(ctx: &LsmContext) -> i32 {
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        return 0;
    }
    let Some(subject) = current_subject() else {
        return 0;
    };
    let family: i32 = ctx.arg(0);
    let sock_type: i32 = ctx.arg(1);
    let mut key = SocketKey { policy: subject.policy, family: family as u16, sock_type: sock_type as u16 };
    let mut rule = unsafe { SOCKET_RULES.get(&key) }.copied();
    if rule.is_none() {
        key.sock_type = SocketKey::ANY_TYPE;
        rule = unsafe { SOCKET_RULES.get(&key) }.copied();
    }
    let verdict = rule_decision(&subject, rule);
    let detail = Detail { detail: family as u32, target: sock_type as u32, protection: 0 };
    report_other(&subject, Hook::SocketCreate, verdict, detail);
    hook_return(verdict)
}

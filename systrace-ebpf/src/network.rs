//! Network hooks: `socket_bind` and `socket_connect` for IPv4 and IPv6.
//!
//! Rules live in an LPM trie keyed by (policy, operation, family, protocol,
//! address prefix); the longest prefix holding the address returns the port
//! ranges of every rule that covers it, most specific first, and the first range
//! holding the port decides. IPv4-mapped IPv6 addresses are matched as the IPv4
//! address they carry, so `::ffff:10.0.0.1` is no way around a rule on 10.0.0.1.
//! Other families (unix, netlink, ...) are not decided here yet.

use aya_ebpf::{macros::lsm, maps::lpm_trie::Key, programs::LsmContext};
use systrace_common::{net, rule_verdict, Default, Hook, NetKey, Verdict};

use crate::{
    decision::{check_unreadable, current_subject, hook_return, report_net, violation, NetTarget, Subject},
    hook::previous_verdict,
    kernel,
    maps::NET_RULES,
};

#[lsm(hook = "socket_bind")]
#[inline(always)]
pub fn socket_bind(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_SOCKET_BIND) {
        0 => check_address(&ctx, Hook::SocketBind, net::OP_BIND),
        previous => previous,
    }
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

#[inline(always)]
fn check_address(ctx: &LsmContext, hook: Hook, op: u8) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let sock: *const u8 = ctx.arg(0);
    let sockaddr: *const u8 = ctx.arg(1);
    let addrlen: i32 = ctx.arg(2);
    let target = match unsafe { target(sock, sockaddr, addrlen) } {
        Ok(Some(t)) => t,
        Ok(None) => return 0,
        Err(_) => return check_unreadable(&subject, hook, 0),
    };
    let verdict = decide(&subject, op, &target);
    report_net(&subject, hook, verdict, &target);
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
    match decided {
        Some(rule_verdict::ALLOW) => Verdict::Allowed,
        Some(rule_verdict::AUDIT) => Verdict::AuditRule,
        Some(_) => violation(subject),
        None if subject.info.default == Default::Allow as u8 => Verdict::Allowed,
        None => violation(subject),
    }
}

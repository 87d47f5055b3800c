//! Network hooks: `socket_bind`, `socket_connect`, `socket_sendmsg` and
//! `sctp_bind_connect` for IPv4 and IPv6, `socket_create` for every family.
//!
//! Addresses are read the way the kernel will use them, by the **socket's**
//! family, never by the family the caller wrote in the `sockaddr`: an IPv4
//! socket takes `sin_family = AF_UNSPEC` as IPv4 for bind and for a datagram's
//! destination, and an IPv6 socket takes an `AF_INET` address as IPv4. A
//! wildcard destination (`0.0.0.0`, `::`, `::ffff:0.0.0.0`) is decided as the
//! address the kernel routes it to: the socket's bound source address, or
//! loopback. IPv4-mapped IPv6 addresses are matched as the IPv4 address they
//! carry. MPTCP is decided as tcp (it falls back to TCP and reaches TCP
//! listeners). Rules that name no protocol decide every protocol, ICMP
//! included ([`rule_protocol`]); a raw socket reaches every address ([`RAW`]). Sockets of other families have no address rules: what may
//! create them (`[[socket]]` rules) may also bind, connect and send with them.
//!
//! Rules live in an LPM trie keyed by (policy, operation, family, protocol,
//! address prefix); the longest prefix holding the address returns the port
//! ranges of every rule that covers it, most specific first, and the first
//! range holding the port decides. A datagram sent to an explicit address is
//! decided by the `connect` rules.

use aya_ebpf::{maps::lpm_trie::Key, programs::LsmContext};
use systrace_common::{net, policy_flags, socket, Hook, NetKey, SocketKey, Verdict};

use crate::{
    decision::{
        check_unreadable, denied_by_rule, hook_return, report_net, report_other, rule_decision, violation, Detail,
        NetTarget, EPERM,
    },
    hook::{arg, lsm_program},
    kernel,
    maps::{NET_RULES, SOCKET_RULES},
    subject::{current_subject, Subject},
    unix,
};

/// How a `sockaddr` is used.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Bind,
    Connect,
    /// A datagram's destination (sendto, sendmsg).
    Send,
}

/// What the kernel will do with a `sockaddr`.
enum Address {
    /// Nothing to decide: a disconnect (connect with AF_UNSPEC), or a send
    /// that will go to the connected peer.
    Nothing,
    /// This address.
    Inet(NetTarget),
    /// The kernel will refuse it anyway (too short): refused here too.
    Malformed,
}

const SCTP_SET_PEER_PRIMARY_ADDR: i32 = 5;
const SCTP_PRIMARY_ADDR: i32 = 6;
const SCTP_SOCKOPT_BINDX_ADD: i32 = 100;
const SCTP_SOCKOPT_CONNECTX: i32 = 110;
const SCTP_SENDMSG_CONNECT: i32 = 108;
const SCTP_PARAM_ADD_IP: i32 = 0xc001;
const SCTP_PARAM_SET_PRIMARY: i32 = 0xc004;
/// Addresses one bindx/connectx call is checked for at most; more are refused.
const SCTP_MAX_ADDRS: usize = 16;

lsm_program!(socket_bind = "socket_bind", Hook::SocketBind, |ctx| {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let sock: *const u8 = arg(&ctx, Hook::SocketBind, 0);
    let sockaddr: *const u8 = arg(&ctx, Hook::SocketBind, 1);
    let addrlen: i32 = arg(&ctx, Hook::SocketBind, 2);
    decide_socket_address(&subject, Hook::SocketBind, Use::Bind, sock, sockaddr, addrlen)
});

lsm_program!(socket_connect = "socket_connect", Hook::SocketConnect, |ctx| {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let sock: *const u8 = arg(&ctx, Hook::SocketConnect, 0);
    let sockaddr: *const u8 = arg(&ctx, Hook::SocketConnect, 1);
    let addrlen: i32 = arg(&ctx, Hook::SocketConnect, 2);
    decide_socket_address(&subject, Hook::SocketConnect, Use::Connect, sock, sockaddr, addrlen)
});

lsm_program!(
    /// Sends that name a destination; sends on a connected socket name none and
    /// were decided at connect.
    socket_sendmsg = "socket_sendmsg", Hook::SocketSendmsg, |ctx| {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let sock: *const u8 = arg(&ctx, Hook::SocketSendmsg, 0);
    let msg: *const u8 = arg(&ctx, Hook::SocketSendmsg, 1);
    match unsafe { kernel::msghdr_name(msg) } {
        Ok((name, _)) if name.is_null() => 0,
        Ok((name, len)) => decide_socket_address(&subject, Hook::SocketSendmsg, Use::Send, sock, name, len),
        Err(_) => check_unreadable(&subject, Hook::SocketSendmsg, 0, EPERM),
    }
});

/// Decides a bind, connect or send on the `struct socket` `sock`.
#[inline(always)]
fn decide_socket_address(
    subject: &Subject,
    hook: Hook,
    how: Use,
    sock: *const u8,
    sockaddr: *const u8,
    addrlen: i32,
) -> i32 {
    let Ok(sk) = (unsafe { kernel::socket_sock(sock) }) else {
        return check_unreadable(subject, hook, 0, EPERM);
    };
    let Ok((family, sock_type, protocol)) = (unsafe { kernel::sock_kind(sk) }) else {
        return check_unreadable(subject, hook, 0, EPERM);
    };
    match family as u8 {
        net::AF_UNIX => {
            // Peers are decided by unix_stream_connect and unix_may_send, once
            // the kernel has found them; binds name abstract sockets.
            if how == Use::Bind {
                unix::check_bind(subject, sockaddr, addrlen)
            } else {
                0
            }
        }
        net::AF_INET | net::AF_INET6 => {
            let op = if how == Use::Bind { net::OP_BIND } else { net::OP_CONNECT };
            match unsafe { inet_address(sk, family as u8, sock_type, protocol, how, sockaddr, addrlen) } {
                Ok(Address::Nothing) => 0,
                Ok(Address::Inet(target)) => decide_target(subject, hook, op, &target),
                Ok(Address::Malformed) | Err(_) => check_unreadable(subject, hook, 0, EPERM),
            }
        }
        _ => check_socket_kind(subject, hook, family, sock_type, protocol),
    }
}

/// The protocol address rules are looked up under ([`RAW`] for raw sockets).
#[inline(always)]
fn rule_protocol(sock_type: u16, protocol: u16) -> u8 {
    if sock_type == socket::SOCK_RAW {
        RAW
    } else if protocol == socket::IPPROTO_MPTCP {
        net::IPPROTO_TCP
    } else if protocol > 255 {
        // No IP protocol: decided as one no rule names.
        net::PROTO_ANY
    } else {
        protocol as u8
    }
}

/// Reads a `sockaddr` of `addrlen` bytes as a socket of `family` will use it.
#[inline(always)]
unsafe fn inet_address(
    sk: *const u8,
    family: u8,
    sock_type: u16,
    protocol: u16,
    how: Use,
    sockaddr: *const u8,
    addrlen: i32,
) -> Result<Address, i64> {
    if addrlen < 2 {
        return Ok(Address::Malformed);
    }
    let given: u16 = kernel::read_at(sockaddr, 0)?;
    let given = given as u8;
    if given == net::AF_UNSPEC && how == Use::Connect {
        // connect(AF_UNSPEC) dissolves an association; it reaches nobody.
        return Ok(Address::Nothing);
    }
    let proto = rule_protocol(sock_type, protocol);
    let v4 = family == net::AF_INET || given == net::AF_INET;
    if !v4
        && given == net::AF_UNSPEC
        && how == Use::Send
        && (proto == net::IPPROTO_UDP || proto == net::IPPROTO_UDPLITE)
    {
        // IPv6 UDP ignores an AF_UNSPEC destination and sends to the connected peer.
        return Ok(Address::Nothing);
    }
    let mut addr = [0u8; 16];
    let port: u16;
    let mut target_family = net::AF_INET;
    if v4 {
        if addrlen < 8 {
            return Ok(Address::Malformed);
        }
        let ip: [u8; 4] = kernel::read_at(sockaddr, 4)?;
        addr[..4].copy_from_slice(&ip);
        port = kernel::read_at(sockaddr, 2)?;
    } else {
        if addrlen < 24 {
            return Ok(Address::Malformed);
        }
        let ip: [u8; 16] = kernel::read_at(sockaddr, 8)?;
        port = kernel::read_at(sockaddr, 2)?;
        let v4_mapped = ip[..10] == [0; 10] && ip[10] == 0xff && ip[11] == 0xff;
        if v4_mapped {
            addr[..4].copy_from_slice(&ip[12..16]);
        } else {
            addr = ip;
            target_family = net::AF_INET6;
        }
    }
    if how != Use::Bind && addr == [0; 16] {
        // A wildcard destination: the kernel sends to the socket's own
        // address, or to loopback.
        if target_family == net::AF_INET {
            let saddr = kernel::sock_saddr4(sk)?;
            if saddr != [0; 4] {
                addr[..4].copy_from_slice(&saddr);
            } else {
                addr[..4].copy_from_slice(&[127, 0, 0, 1]);
            }
        } else {
            addr[15] = 1;
        }
    }
    let port = if net::has_ports(proto) { u16::from_be(port) } else { 0 };
    Ok(Address::Inet(NetTarget { addr, port, family: target_family, proto: protocol as u8, rule_proto: proto }))
}

#[inline(always)]
fn decide_target(subject: &Subject, hook: Hook, op: u8, target: &NetTarget) -> i32 {
    let verdict = decide(subject, op, target);
    report_net(subject, hook, verdict, target);
    hook_return(verdict, EPERM)
}

/// `rule_proto` of a raw socket. It writes whole packets, its own port
/// numbers included, and with `IP_HDRINCL` (which any raw socket can switch
/// on) its own destination address: it is decided as reaching every address
/// on every port, which a policy allows only if its rules for the operation
/// allow everything (`policy_flags::RAW_CONNECT`, `RAW_BIND`).
const RAW: u8 = 255;

#[inline(always)]
fn decide(subject: &Subject, op: u8, target: &NetTarget) -> Verdict {
    if target.rule_proto == RAW {
        let flag = if op == net::OP_BIND { policy_flags::RAW_BIND } else { policy_flags::RAW_CONNECT };
        return if subject.info.flags & flag != 0 { Verdict::Allowed } else { violation(subject) };
    }
    let mut key = Key::new(
        net::FIXED_PREFIX_BITS + 128,
        NetKey {
            policy: subject.policy,
            op,
            family: target.family,
            proto: target.rule_proto,
            _pad: 0,
            addr: target.addr,
        },
    );
    let mut found = NET_RULES.get(&key);
    if found.is_none() && target.rule_proto != net::PROTO_ANY {
        // No rule names this protocol (or none covers the address): the rules
        // that name no protocol decide.
        key.data.proto = net::PROTO_ANY;
        found = NET_RULES.get(&key);
    }
    let mut decided: u32 = NOT_DECIDED;
    if let Some(rule) = found {
        let count = rule.count as usize;
        for i in 0..net::MAX_PORT_RULES {
            if i >= count {
                break;
            }
            let range = &rule.ports[i];
            if range.lo <= target.port && target.port <= range.hi {
                decided = range.verdict as u32;
                break;
            }
        }
    }
    rule_decision(subject, if decided == NOT_DECIDED { None } else { Some(decided as u8) })
}

/// Above every rule verdict (a u8).
const NOT_DECIDED: u32 = u32::MAX;

lsm_program!(socket_create = "socket_create", Hook::SocketCreate, |ctx| {
    let kern: i32 = arg(&ctx, Hook::SocketCreate, 3);
    if kern != 0 {
        // Sockets the kernel makes for itself are not asked about.
        return 0;
    }
    let Some(subject) = current_subject() else {
        return 0;
    };
    let family: i32 = arg(&ctx, Hook::SocketCreate, 0);
    let sock_type: i32 = arg(&ctx, Hook::SocketCreate, 1);
    let protocol: i32 = arg(&ctx, Hook::SocketCreate, 2);
    let protocol = default_protocol(family as u16, sock_type as u16, protocol as u16);
    check_socket_kind(&subject, Hook::SocketCreate, family as u16, sock_type as u16, protocol)
});

/// The protocol the kernel picks for protocol 0: TCP for IP stream sockets,
/// UDP for IP datagram sockets.
#[inline(always)]
fn default_protocol(family: u16, sock_type: u16, protocol: u16) -> u16 {
    if protocol != 0 || (family != net::AF_INET as u16 && family != net::AF_INET6 as u16) {
        return protocol;
    }
    match sock_type {
        socket::SOCK_STREAM => net::IPPROTO_TCP as u16,
        socket::SOCK_DGRAM => net::IPPROTO_UDP as u16,
        _ => 0,
    }
}

/// Whether the policy lets its processes have a socket of this kind: a rule for
/// the exact type and protocol, then the type, then the family, then the default.
#[inline(always)]
pub fn check_socket_kind(subject: &Subject, hook: Hook, family: u16, sock_type: u16, protocol: u16) -> i32 {
    let verdict = socket_verdict(subject, family, sock_type, protocol);
    let detail =
        Detail { detail: family as u32, target: (sock_type as u32) | ((protocol as u32) << 16), protection: 0 };
    report_other(subject, hook, verdict, detail);
    hook_return(verdict, EPERM)
}

#[inline(always)]
fn socket_verdict(subject: &Subject, family: u16, sock_type: u16, protocol: u16) -> Verdict {
    let policy = subject.policy;
    let exact = SocketKey { policy, family, sock_type, protocol, _pad: 0 };
    let any_protocol = SocketKey { policy, family, sock_type, protocol: SocketKey::ANY, _pad: 0 };
    let any_type = SocketKey { policy, family, sock_type: SocketKey::ANY, protocol: SocketKey::ANY, _pad: 0 };
    let rule = unsafe { SOCKET_RULES.get(&exact) }
        .or_else(|| unsafe { SOCKET_RULES.get(&any_protocol) })
        .or_else(|| unsafe { SOCKET_RULES.get(&any_type) })
        .copied();
    rule_decision(subject, rule)
}

lsm_program!(
    /// SCTP's other ways to name addresses (bindx, connectx, sendmsg with an
    /// address, primary-address options): every address in the packed list is
    /// decided like a bind or a connect.
    sctp_bind_connect = "sctp_bind_connect", Hook::SctpBindConnect, |ctx| sctp(&ctx));

#[inline(always)]
fn sctp(ctx: &LsmContext) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let hook = Hook::SctpBindConnect;
    let sk: *const u8 = arg(ctx, hook, 0);
    let optname: i32 = arg(ctx, hook, 1);
    let address: *const u8 = arg(ctx, hook, 2);
    let addrlen: i32 = arg(ctx, hook, 3);
    let op = match optname {
        SCTP_SOCKOPT_BINDX_ADD | SCTP_PRIMARY_ADDR | SCTP_PARAM_ADD_IP | SCTP_PARAM_SET_PRIMARY => net::OP_BIND,
        SCTP_SOCKOPT_CONNECTX | SCTP_SENDMSG_CONNECT | SCTP_SET_PEER_PRIMARY_ADDR => net::OP_CONNECT,
        _ => return check_unreadable(&subject, hook, 0, EPERM),
    };
    let Ok((family, sock_type, protocol)) = (unsafe { kernel::sock_kind(sk) }) else {
        return check_unreadable(&subject, hook, 0, EPERM);
    };
    let mut walk = SctpAddresses {
        subject,
        sk: sk as u64,
        address: address as u64,
        addrlen: addrlen as u32,
        at: crate::walk::opaque_zero() as u32,
        op: op as u32,
        family: family as u32,
        sock_type: sock_type as u32,
        protocol: protocol as u32,
        verdict: crate::walk::opaque_zero() as u32,
        failed: crate::walk::opaque_zero() as u32,
    };
    unsafe {
        aya_ebpf::helpers::generated::bpf_loop(
            SCTP_MAX_ADDRS as u32,
            sctp_step as *mut core::ffi::c_void,
            &mut walk as *mut SctpAddresses as *mut core::ffi::c_void,
            0,
        )
    };
    if walk.failed != 0 {
        return check_unreadable(&subject, hook, 0, EPERM);
    }
    if walk.verdict == Verdict::Denied as u32 {
        return -EPERM;
    }
    if walk.at < walk.addrlen {
        // More addresses than are checked: refused rather than half decided.
        let v = denied_by_rule(&subject);
        report_other(&subject, hook, v, Detail { detail: optname as u32, ..Detail::default() });
        return hook_return(v, EPERM);
    }
    0
}

/// The packed addresses of one SCTP call, walked by [`sctp_step`].
#[repr(C)]
struct SctpAddresses {
    subject: Subject,
    sk: u64,
    address: u64,
    addrlen: u32,
    /// Offset of the next address.
    at: u32,
    op: u32,
    family: u32,
    sock_type: u32,
    protocol: u32,
    /// The first refusal's verdict, or 0.
    verdict: u32,
    failed: u32,
}

#[inline(never)]
extern "C" fn sctp_step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let w = unsafe { &mut *(ctx as *mut SctpAddresses) };
    if w.at >= w.addrlen || w.addrlen > 4096 {
        return 1;
    }
    let here = unsafe { (w.address as *const u8).add((w.at & 0xfff) as usize) };
    let Ok(given) = (unsafe { kernel::read_at::<u16>(here, 0) }) else {
        w.failed = 1;
        return 1;
    };
    let size: u32 = if given as u8 == net::AF_INET { 16 } else { 28 };
    let how = if w.op as u8 == net::OP_BIND { Use::Bind } else { Use::Connect };
    let rest = (w.addrlen - w.at) as i32;
    match unsafe {
        inet_address(w.sk as *const u8, w.family as u8, w.sock_type as u16, w.protocol as u16, how, here, rest)
    } {
        Ok(Address::Inet(target)) => {
            let verdict = decide(&w.subject, w.op as u8, &target);
            if verdict != Verdict::Allowed {
                report_net(&w.subject, Hook::SctpBindConnect, verdict, &target);
            }
            if verdict == Verdict::Denied {
                w.verdict = verdict as u32;
                return 1;
            }
        }
        Ok(Address::Nothing) => {}
        Ok(Address::Malformed) | Err(_) => {
            w.failed = 1;
            return 1;
        }
    }
    w.at += size;
    0
}

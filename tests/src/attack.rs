//! The bypass suite's attacks: one system call (or a short chain) each, made by
//! the `op` workload from inside its cgroup. Each returns 0 when the attack got
//! through, or the errno that stopped it.

use std::{ffi::CString, os::unix::ffi::OsStrExt, path::Path};

use crate::op::Outcome;

/// What the workload set up before it joined its cgroup: descriptors it held
/// already (as a process moved into a cgroup would), and bytes it read.
#[derive(Default)]
pub struct Prepared {
    /// `--pre-open PATH:MODE`: a descriptor opened outside the cgroup.
    pub fd: Option<i32>,
    /// `--pre-dir PATH`: a directory descriptor opened outside the cgroup.
    pub dir: Option<i32>,
    /// `--pre-read PATH`: a file's bytes, read outside the cgroup.
    pub bytes: Option<Vec<u8>>,
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// Writes `data` to `fd` through the system call `how` names (see `fd-pull`):
/// 0 or the errno. Each reaches the kernel's write by another way.
unsafe fn pull_with(fd: i32, data: &[u8], how: &[u8]) -> i32 {
    let iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    match how {
        b"write" => rc(libc::write(fd, data.as_ptr().cast(), data.len()) as libc::c_long),
        b"writev" => rc(libc::writev(fd, &iov, 1) as libc::c_long),
        // A positioned write (offset -1 would be writev's path again).
        b"pwritev2" => rc(libc::pwritev2(fd, &iov, 1, 0, 0) as libc::c_long),
        b"sendfile" => {
            let src = libc::memfd_create(c"pull".as_ptr(), 0);
            if src < 0 || libc::write(src, data.as_ptr().cast(), data.len()) != data.len() as isize {
                return libc::EIO;
            }
            let mut off: libc::off_t = 0;
            let result = rc(libc::sendfile(fd, src, &mut off, data.len()) as libc::c_long);
            libc::close(src);
            result
        }
        b"uring" => {
            let mut ring = match io_uring::IoUring::new(4) {
                Ok(r) => r,
                Err(e) => return e.raw_os_error().unwrap_or(-1),
            };
            let entry = io_uring::opcode::Write::new(io_uring::types::Fd(fd), data.as_ptr(), data.len() as u32)
                .offset(u64::MAX)
                .build();
            // SAFETY: `data` outlives the call.
            crate::op::uring_errno(crate::op::uring_once(&mut ring, &entry))
        }
        _ => libc::EINVAL,
    }
}

fn rc(r: libc::c_long) -> i32 {
    if r < 0 {
        errno()
    } else {
        0
    }
}

fn num<T: std::str::FromStr>(operands: &[String], i: usize) -> Option<T> {
    operands.get(i).and_then(|v| v.parse().ok())
}

/// A `sockaddr_in` for `ip:port` with the family the caller chooses (the
/// kernel may take AF_UNSPEC as AF_INET).
fn sockaddr_in(family: i32, ip: std::net::Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: zeroed is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = family as libc::sa_family_t;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
    sa
}

/// Room for one descriptor in a message's control data.
fn fd_space() -> usize {
    // SAFETY: a pure size computation.
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize }
}

/// A one-byte message with `control` as its control buffer, for passing one descriptor.
fn fd_message(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid; the pointers set are to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    msg
}

/// Sends `fd` over the connected unix socket `sock` (SCM_RIGHTS).
pub fn send_fd(sock: i32, fd: i32) -> std::io::Result<()> {
    let mut byte = [b'x'];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut control = vec![0u8; fd_space()];
    let msg = fd_message(&mut iov, &mut control);
    // SAFETY: msghdr points at live buffers of the sizes given.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut i32, fd);
        if libc::sendmsg(sock, &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one descriptor over `sock`; `None` if the message came without one
/// (the kernel drops descriptors an LSM refuses, and says MSG_CTRUNC).
fn recv_fd(sock: i32) -> std::io::Result<Option<i32>> {
    let mut byte = [0u8];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut control = vec![0u8; fd_space()];
    let mut msg = fd_message(&mut iov, &mut control);
    // SAFETY: as in send_fd.
    unsafe {
        if libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Ok(None);
        }
        Ok(Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const i32)))
    }
}

/// Connects to the unix socket at `path`.
fn unix_connect(path: &str) -> std::io::Result<i32> {
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    Ok(std::os::fd::IntoRawFd::into_raw_fd(stream))
}

/// Opens `path` read-only and maps its first page readable; the errno if either fails.
fn map_readable(path: &CString, flags: libc::c_int) -> Result<*mut libc::c_void, i32> {
    // SAFETY: a valid C string; the descriptor is closed once, the mapping outlives it.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let map = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, flags, fd, 0);
        let e = errno();
        libc::close(fd);
        if map == libc::MAP_FAILED {
            return Err(e);
        }
        Ok(map)
    }
}

/// Runs `verb`; `None` if it is not an attack of this module.
pub fn run(verb: &str, operands: &[String], pre: &mut Prepared, outcome: &mut Outcome) -> Option<i32> {
    let arg = |i: usize| operands.get(i).map(|s| c(s));
    // SAFETY (all arms): plain system calls on valid C strings and buffers of
    // the sizes given; descriptors are ours.
    Some(unsafe {
        match verb {
            "open-flags" => {
                // open-flags PATH FLAGS(decimal): an open with raw flags (O_TRUNC, access mode 3).
                let flags: i32 = num(operands, 1)?;
                let fd = libc::open(arg(0)?.as_ptr(), flags | libc::O_CLOEXEC);
                let e = if fd < 0 { errno() } else { 0 };
                if fd >= 0 {
                    libc::close(fd);
                }
                e
            }
            "renameat2" => {
                // renameat2 A B FLAGS
                let flags: u32 = num(operands, 2)?;
                rc(libc::syscall(
                    libc::SYS_renameat2,
                    libc::AT_FDCWD,
                    arg(0)?.as_ptr(),
                    libc::AT_FDCWD,
                    arg(1)?.as_ptr(),
                    flags,
                ))
            }
            "run" => {
                // run PATH ARGS...: fork, exec, wait; the child's exit status
                // (0: the program ran to its end).
                let args: Vec<CString> = operands.iter().map(|a| c(a)).collect();
                let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
                argv.push(std::ptr::null());
                let child = libc::fork();
                if child == 0 {
                    libc::execv(argv[0], argv.as_ptr());
                    libc::_exit(126);
                }
                let mut status = 0;
                libc::waitpid(child, &mut status, 0);
                outcome.rounds = child as u64;
                if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                }
            }
            "core-dump" => {
                // core-dump DIR: a child crashes with DIR as its working
                // directory and no limit on core files, so the kernel writes
                // "core" there, under credentials it borrows for the dump.
                // EACCES when no core file appeared; the child is reported.
                let dir = arg(0)?;
                let child = libc::fork();
                if child == 0 {
                    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
                    libc::setrlimit(libc::RLIMIT_CORE, &unlimited);
                    libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
                    if libc::chdir(dir.as_ptr()) != 0 {
                        libc::_exit(125);
                    }
                    libc::signal(libc::SIGABRT, libc::SIG_DFL);
                    libc::abort();
                }
                let mut status = 0;
                libc::waitpid(child, &mut status, 0);
                (outcome.pid, outcome.tgid) = (child as u32, child as u32);
                let dumped = std::fs::read_dir(Path::new(std::ffi::OsStr::from_bytes(dir.as_bytes())))
                    .map(|entries| entries.flatten().any(|e| e.file_name().as_bytes().starts_with(b"core")))
                    .unwrap_or(false);
                if dumped {
                    0
                } else {
                    libc::EACCES
                }
            }
            "uring-personality-setxattr" => {
                // uring-personality-setxattr PATH: register this process's
                // credentials with an io_uring ring, change credentials (drop a
                // capability), then set a user. attribute through the ring
                // under the registered ones: the kernel runs it with borrowed
                // credentials, which must not excuse it.
                crate::op::uring_personality_setxattr(&arg(0)?)
            }
            "mprotect-exec" => {
                // mprotect-exec PATH: map the file readable, then ask for execute.
                let map = match map_readable(&arg(0)?, libc::MAP_PRIVATE) {
                    Ok(map) => map,
                    Err(e) => return Some(e),
                };
                outcome.rounds = 1;
                let e = rc(libc::mprotect(map, 4096, libc::PROT_READ | libc::PROT_EXEC) as libc::c_long);
                libc::munmap(map, 4096);
                e
            }
            "map-files-write" => {
                // map-files-write PATH: map the file readable, then open the
                // mapping's /proc/self/map_files link for writing (the kernel
                // follows it to the file the mapping holds: for an overlay, the
                // layer's file on overlayfs's private mount) and write.
                let map = match map_readable(&arg(0)?, libc::MAP_SHARED) {
                    Ok(map) => map,
                    Err(e) => return Some(e),
                };
                outcome.rounds = 1;
                let start = map as usize;
                let link = c(&format!("/proc/self/map_files/{:x}-{:x}", start, start + 4096));
                let wfd = libc::open(link.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                let e = if wfd < 0 {
                    errno()
                } else {
                    let w = rc(libc::pwrite(wfd, b"X".as_ptr().cast(), 1, 0) as libc::c_long);
                    libc::close(wfd);
                    w
                };
                libc::munmap(map, 4096);
                e
            }
            "fd-write" => {
                // fd-write: write to the descriptor held from before the cgroup.
                let fd = pre.fd?;
                rc(libc::write(fd, b"x".as_ptr().cast(), 1) as libc::c_long)
            }
            "fd-pull" => {
                // fd-pull PID [HOW]: write PID to the descriptor held from
                // before the cgroup, a cgroup.procs: moves that process into
                // its cgroup. HOW is the system call: write (the default),
                // writev, pwritev2, sendfile (from a memfd) or uring
                // (IORING_OP_WRITE).
                let fd = pre.fd?;
                let pid = operands.first()?.as_bytes();
                let how = operands.get(1).map(|h| h.as_bytes()).unwrap_or(b"write");
                pull_with(fd, pid, how)
            }
            "fd-read" => {
                let fd = pre.fd?;
                let mut buf = [0u8; 16];
                rc(libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) as libc::c_long)
            }
            "fd-ftruncate" => {
                let fd = pre.fd?;
                rc(libc::ftruncate(fd, 0) as libc::c_long)
            }
            "recv-fd-read" => {
                // recv-fd-read SOCKPATH: take a descriptor a process outside
                // sends, and read it. EACCES when the kernel dropped it.
                let sock = match unix_connect(&operands[0]) {
                    Ok(s) => s,
                    Err(e) => return Some(e.raw_os_error().unwrap_or(-1)),
                };
                match recv_fd(sock) {
                    Ok(Some(fd)) => {
                        outcome.rounds = 1;
                        let mut buf = [0u8; 16];
                        rc(libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) as libc::c_long)
                    }
                    Ok(None) => libc::EACCES,
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                }
            }
            "fd-map" => {
                // fd-map: map the submission queue of the io_uring ring held
                // from before the cgroup (an inherited descriptor).
                let fd = pre.fd?;
                let map =
                    libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
                if map == libc::MAP_FAILED {
                    errno()
                } else {
                    0
                }
            }
            "pidfd-getfd" => {
                // pidfd-getfd PID FD: take another process's descriptor.
                let pid: i32 = num(operands, 0)?;
                let target: i32 = num(operands, 1)?;
                let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
                if pidfd < 0 {
                    return Some(errno());
                }
                rc(libc::syscall(libc::SYS_pidfd_getfd, pidfd as i32, target, 0))
            }
            "chmod" => rc(libc::chmod(arg(0)?.as_ptr(), u32::from_str_radix(&operands[1], 8).ok()?) as libc::c_long),
            "chown" => rc(libc::chown(arg(0)?.as_ptr(), num(operands, 1)?, num(operands, 2)?) as libc::c_long),
            "utimes" => rc(libc::utimensat(libc::AT_FDCWD, arg(0)?.as_ptr(), std::ptr::null(), 0) as libc::c_long),
            "setxattr" => {
                let value = operands.get(2).map_or(&b"v"[..], |v| v.as_bytes());
                rc(libc::setxattr(arg(0)?.as_ptr(), arg(1)?.as_ptr(), value.as_ptr().cast(), value.len(), 0)
                    as libc::c_long)
            }
            "removexattr" => rc(libc::removexattr(arg(0)?.as_ptr(), arg(1)?.as_ptr()) as libc::c_long),
            "setacl" => {
                // setacl PATH: a POSIX access ACL granting the owner, group and
                // others read, and user 1000 read-write.
                let mut acl: Vec<u8> = 2u32.to_le_bytes().to_vec();
                for (tag, perm, id) in [
                    (0x01u16, 6u16, u32::MAX),
                    (0x02, 6, 1000),
                    (0x04, 4, u32::MAX),
                    (0x10, 6, u32::MAX),
                    (0x20, 4, u32::MAX),
                ] {
                    acl.extend_from_slice(&tag.to_le_bytes());
                    acl.extend_from_slice(&perm.to_le_bytes());
                    acl.extend_from_slice(&id.to_le_bytes());
                }
                rc(libc::setxattr(
                    arg(0)?.as_ptr(),
                    c"system.posix_acl_access".as_ptr(),
                    acl.as_ptr().cast(),
                    acl.len(),
                    0,
                ) as libc::c_long)
            }
            "chattr" => {
                // chattr PATH: set FS_NODUMP_FL through FS_IOC_SETFLAGS.
                const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
                const FS_NODUMP_FL: libc::c_long = 0x40;
                let fd = libc::open(arg(0)?.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Some(errno());
                }
                outcome.rounds = 1;
                let flags: libc::c_long = FS_NODUMP_FL;
                let e = rc(libc::ioctl(fd, FS_IOC_SETFLAGS, &flags) as libc::c_long);
                libc::close(fd);
                e
            }
            "file-setattr" => {
                // file-setattr PATH: set FS_XFLAG_NODUMP through the
                // file_setattr system call (6.17+), which names the file by
                // path: no descriptor, no ioctl. ENOSYS on older kernels.
                const SYS_FILE_SETATTR: libc::c_long = 469;
                const FS_XFLAG_NODUMP: u64 = 0x80;
                // struct file_attr (FILE_ATTR_SIZE_VER0, 24 bytes): a u64
                // fa_xflags, then u32 extsize, nextents, projid, cowextsize.
                let attr: [u64; 3] = [FS_XFLAG_NODUMP, 0, 0];
                rc(libc::syscall(SYS_FILE_SETATTR, libc::AT_FDCWD, arg(0)?.as_ptr(), attr.as_ptr(), 24usize, 0u32))
            }
            "open-deep" => {
                // open-deep BASE LEVELS: walk down LEVELS directories named `d`
                // below BASE (deeper than PATH_MAX allows in one path), then open `f`.
                let levels: usize = num(operands, 1)?;
                if libc::chdir(arg(0)?.as_ptr()) != 0 {
                    return Some(errno());
                }
                for _ in 0..levels {
                    if libc::chdir(c"d".as_ptr()) != 0 {
                        return Some(errno());
                    }
                }
                outcome.rounds = levels as u64;
                let fd = libc::open(c"f".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                let e = if fd < 0 { errno() } else { 0 };
                if fd >= 0 {
                    libc::close(fd);
                }
                e
            }
            "tree-rename" => {
                // tree-rename DIR A B: a detached copy of the mount tree at DIR
                // (open_tree OPEN_TREE_CLONE: no LSM hook, and a path no walk can
                // place), and a rename of A to B inside it; the same directory
                // entries as through DIR itself.
                const OPEN_TREE_CLONE: libc::c_uint = 1;
                let tree = libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    arg(0)?.as_ptr(),
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
                );
                if tree < 0 {
                    return Some(errno());
                }
                outcome.rounds = 1;
                let e =
                    rc(libc::renameat(tree as i32, arg(1)?.as_ptr(), tree as i32, arg(2)?.as_ptr()) as libc::c_long);
                libc::close(tree as i32);
                e
            }
            "open-handle" => {
                // open-handle: open_by_handle_at with the handle read before the
                // cgroup (--pre-read) on the mount held open (--pre-dir).
                let bytes = pre.bytes.as_ref()?;
                let dir = pre.dir?;
                let fd =
                    libc::syscall(libc::SYS_open_by_handle_at, dir, bytes.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::close(fd as i32);
                }
                rc(fd)
            }
            "bind-unspec" => {
                // bind-unspec PORT: bind a TCP socket to 0.0.0.0:PORT, saying AF_UNSPEC.
                let port: u16 = num(operands, 0)?;
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    return Some(errno());
                }
                let sa = sockaddr_in(libc::AF_UNSPEC, std::net::Ipv4Addr::UNSPECIFIED, port);
                let e = rc(libc::bind(fd, &sa as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sa) as u32)
                    as libc::c_long);
                libc::close(fd);
                e
            }
            "sendto-unspec" => {
                // sendto-unspec ADDRESS PORT: a UDP datagram to an IPv4 address, saying AF_UNSPEC.
                let ip: std::net::Ipv4Addr = operands[0].parse().ok()?;
                let port: u16 = num(operands, 1)?;
                let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    return Some(errno());
                }
                let sa = sockaddr_in(libc::AF_UNSPEC, ip, port);
                let e = rc(libc::sendto(
                    fd,
                    b"x".as_ptr().cast(),
                    1,
                    0,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of_val(&sa) as u32,
                ) as libc::c_long);
                libc::close(fd);
                e
            }
            "raw-sendto" => {
                // raw-sendto PROTOCOL ADDRESS: one packet of that IP protocol
                // (ICMP: an echo request) from a raw socket to an IPv4 address.
                let protocol: i32 = num(operands, 0)?;
                let ip: std::net::Ipv4Addr = operands[1].parse().ok()?;
                let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol);
                if fd < 0 {
                    return Some(errno());
                }
                outcome.rounds = 1;
                // Type 8 (echo request), code 0, checksum of the rest, id 1, sequence 1.
                let packet: [u8; 8] = [8, 0, 0xf7, 0xfd, 0, 1, 0, 1];
                let sa = sockaddr_in(libc::AF_INET, ip, 0);
                let e = rc(libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of_val(&sa) as u32,
                ) as libc::c_long);
                libc::close(fd);
                e
            }
            "btrfs-snapshot" => {
                // btrfs-snapshot SOURCE DIR NAME: a snapshot of the subvolume at
                // SOURCE, made in DIR as NAME (BTRFS_IOC_SNAP_CREATE_V2).
                let source = libc::open(arg(0)?.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
                if source < 0 {
                    return Some(errno());
                }
                let dir = libc::open(arg(1)?.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
                if dir < 0 {
                    libc::close(source);
                    return Some(errno());
                }
                outcome.rounds = 1;
                // struct btrfs_ioctl_vol_args_v2: fd, transid, flags, 4 unused u64s, name[4040].
                let mut args = vec![0u8; 4096];
                args[..8].copy_from_slice(&(source as i64).to_ne_bytes());
                let name = operands.get(2)?.as_bytes();
                args[56..56 + name.len()].copy_from_slice(name);
                const BTRFS_IOC_SNAP_CREATE_V2: libc::c_ulong = 0x5000_9417;
                let e = rc(libc::ioctl(dir, BTRFS_IOC_SNAP_CREATE_V2, args.as_mut_ptr()) as libc::c_long);
                libc::close(dir);
                libc::close(source);
                e
            }
            "proto-connect" => {
                // proto-connect PROTOCOL ADDRESS PORT: a stream socket of that
                // protocol (MPTCP 262, SCTP 132), connected to an IPv4 address.
                let protocol: i32 = num(operands, 0)?;
                let ip: std::net::Ipv4Addr = operands[1].parse().ok()?;
                let port: u16 = num(operands, 2)?;
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, protocol);
                if fd < 0 {
                    return Some(errno());
                }
                outcome.rounds = 1;
                let sa = sockaddr_in(libc::AF_INET, ip, port);
                let e =
                    rc(libc::connect(fd, &sa as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sa) as u32)
                        as libc::c_long);
                libc::close(fd);
                e
            }
            "sctp-connectx" => {
                // sctp-connectx ADDRESS PORT: SCTP_SOCKOPT_CONNECTX on a one-to-many socket.
                const SOL_SCTP: i32 = 132;
                const SCTP_SOCKOPT_CONNECTX: i32 = 110;
                let ip: std::net::Ipv4Addr = operands[0].parse().ok()?;
                let port: u16 = num(operands, 1)?;
                let fd = libc::socket(libc::AF_INET, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 132);
                if fd < 0 {
                    return Some(errno());
                }
                outcome.rounds = 1;
                let sa = sockaddr_in(libc::AF_INET, ip, port);
                let e = rc(libc::setsockopt(
                    fd,
                    SOL_SCTP,
                    SCTP_SOCKOPT_CONNECTX,
                    &sa as *const _ as *const libc::c_void,
                    std::mem::size_of_val(&sa) as u32,
                ) as libc::c_long);
                libc::close(fd);
                e
            }
            "write" => {
                // write PATH TEXT: open for writing and write.
                let fd = libc::open(arg(0)?.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Some(errno());
                }
                outcome.rounds = 1;
                let text = operands.get(1).map_or("", String::as_str);
                let e = rc(libc::write(fd, text.as_ptr().cast(), text.len()) as libc::c_long);
                libc::close(fd);
                e
            }
            "ioprio" => {
                // ioprio PID: the idle I/O class for PID.
                const IOPRIO_WHO_PROCESS: i32 = 1;
                const IOPRIO_CLASS_IDLE: i32 = 3;
                let pid: i32 = num(operands, 0)?;
                rc(libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, pid, IOPRIO_CLASS_IDLE << 13))
            }
            "clone-parent" => {
                // clone-parent: a child that is our parent's, whose exit signal goes there.
                let child =
                    libc::syscall(libc::SYS_clone, (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong, 0, 0, 0, 0);
                if child == 0 {
                    libc::_exit(0);
                }
                rc(child)
            }
            "pivot-root" => {
                // pivot-root NEW PUT_OLD, in a mount namespace of our own.
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Some(errno());
                }
                outcome.rounds = 1;
                rc(libc::syscall(libc::SYS_pivot_root, arg(0)?.as_ptr(), arg(1)?.as_ptr()))
            }
            "spawn-into" => {
                // spawn-into CGROUP_DIR PATH: a child cloned straight into the
                // cgroup (clone3, CLONE_INTO_CGROUP), whose first act is to open
                // PATH; the errno it gets, as its exit status.
                let path = arg(1)?;
                let first_act = || {
                    let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
                    if fd < 0 {
                        *libc::__errno_location()
                    } else {
                        0
                    }
                };
                match crate::op::clone_into_cgroup(&arg(0)?, first_act) {
                    Ok((pid, status)) => {
                        outcome.rounds = pid as u64;
                        status
                    }
                    Err(e) => e,
                }
            }
            "tiocsti" => {
                // tiocsti: push a character into a terminal's input.
                let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
                if master < 0 {
                    return Some(errno());
                }
                libc::grantpt(master);
                libc::unlockpt(master);
                let name = libc::ptsname(master);
                if name.is_null() {
                    return Some(errno());
                }
                let slave = libc::open(name, libc::O_RDWR | libc::O_NOCTTY);
                if slave < 0 {
                    return Some(errno());
                }
                outcome.rounds = 1;
                let ch: u8 = b'x';
                rc(libc::ioctl(slave, libc::TIOCSTI, &ch) as libc::c_long)
            }
            _ => return None,
        }
    })
}

/// Reads a file handle for `path` (name_to_handle_at) as bytes `open-handle` takes.
pub fn file_handle(path: &Path) -> std::io::Result<Vec<u8>> {
    let cpath = CString::new(path.as_os_str().as_bytes())?;
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut buf = vec![0u8; 8 + 128];
    buf[..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id = 0i32;
    // SAFETY: buf holds a file_handle with room for 128 bytes of handle.
    let r = unsafe {
        libc::syscall(libc::SYS_name_to_handle_at, libc::AT_FDCWD, cpath.as_ptr(), buf.as_mut_ptr(), &mut mount_id, 0)
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let len = u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize;
    buf.truncate(8 + len);
    Ok(buf)
}

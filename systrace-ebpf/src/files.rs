//! File content: opening (`file_open`), truncation (`path_truncate`,
//! `file_truncate`), and the descriptors a process did not open under its
//! policy: received ones (`file_receive`: SCM_RIGHTS, pidfd_getfd) and ones
//! used for reading and writing (`file_permission`: inherited from before the
//! process joined its cgroup, handed over by other means). Also the ioctls
//! that change a file's flags or push input into a terminal (`file_ioctl`).

use aya_ebpf::programs::LsmContext;
use systrace_common::{access, protect, Counter, Hook, Verdict};

use crate::{
    cache,
    decision::{
        check_file, check_file_protection, check_unreadable, denied_by_rule, granted, hook_return, run_check,
        systrace_report_file, violation, Detail, FileCheck, ANSWERED, CHECK_REPORT, CHECK_UNREADABLE, EACCES, EPERM,
    },
    guard,
    guard::systrace_guard_open,
    hook::{arg, lsm_program},
    kernel::{self, FilePtr},
    maps::{count, FileCacheEntry, FileCacheKey, FILE_CACHE},
    network,
    subject::{current_subject, Subject},
    walk::{walk, Object, Request, Resolution},
};

const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
const FMODE_EXEC: u32 = 0x20;
/// The open flag execve passes; newer kernels keep it in f_flags only.
const __FMODE_EXEC: u32 = 0x20;
const O_ACCMODE: u32 = 0o3;
const O_TRUNC: u32 = 0o1000;
const O_APPEND: u32 = 0o2000;

const S_IFMT: u16 = 0o170_000;
const S_IFREG: u16 = 0o100_000;
const S_IFDIR: u16 = 0o040_000;
const S_IFLNK: u16 = 0o120_000;
const S_IFBLK: u16 = 0o060_000;
const S_IFCHR: u16 = 0o020_000;

const MAY_WRITE: i32 = 0x2;
const MAY_READ: i32 = 0x4;
const MAY_APPEND: i32 = 0x8;

const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541c;
const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
const FS_IOC32_SETFLAGS: u32 = 0x4004_6602;
const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;
const BTRFS_IOCTL_MAGIC: u32 = 0x94;
const BCACHEFS_IOCTL_MAGIC: u32 = 0xbc;

/// Access bits an open asks for, from the file's mode and flags.
#[inline(always)]
fn open_access(f_mode: u32, f_flags: u32) -> u32 {
    let mut requested = 0;
    if f_mode & FMODE_EXEC != 0 || f_flags & __FMODE_EXEC != 0 {
        // The open that execve (and uselib) makes of the binary; bprm_check_security
        // checks execution of it again once the exec is under way.
        requested |= access::EXEC;
    } else if f_mode & FMODE_READ != 0 {
        requested |= access::READ;
    }
    if f_mode & FMODE_WRITE != 0 {
        requested |= if f_flags & O_APPEND != 0 { access::APPEND } else { access::WRITE };
    }
    if f_flags & O_TRUNC != 0 {
        // Truncation changes content whatever the access mode says.
        requested |= access::WRITE;
    }
    if f_flags & O_ACCMODE == O_ACCMODE {
        // Access mode 3: neither read nor write, but the kernel checks both,
        // and the descriptor serves ioctls.
        requested |= access::READ | access::WRITE;
    }
    requested
}

/// The object a `struct file` refers to.
#[inline(always)]
pub unsafe fn file_object(file: FilePtr) -> Result<Object, i64> {
    path_object(kernel::file_path(file))
}

/// The object a `struct path` refers to.
#[inline(always)]
pub unsafe fn path_object(path: kernel::PathPtr) -> Result<Object, i64> {
    let (dentry, mnt) = kernel::path_parts(path)?;
    Ok(Object { dentry, mnt })
}

lsm_program!(file_open = "file_open", Hook::FileOpen, |ctx| open(&ctx));

#[inline(always)]
fn open(ctx: &LsmContext) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let file: FilePtr = arg(ctx, Hook::FileOpen, 0);
    if open_fast(&subject, file) {
        return 0;
    }
    let (Ok(object), Ok(mode), Ok(flags)) =
        (unsafe { file_object(file) }, unsafe { kernel::file_mode(file) }, unsafe { kernel::file_flags(file) })
    else {
        return check_unreadable(&subject, Hook::FileOpen, access::READ, EACCES);
    };
    let requested = open_access(mode, flags);
    if requested == 0 {
        return 0;
    }
    // One block on the stack for both the protections and the rules.
    let mut check = FileCheck::new(&subject, Hook::FileOpen, object, requested);
    if systrace_guard_open(&mut check) != 0 {
        return hook_return(check.verdict(), EPERM);
    }
    check.verdict = 0;
    check.protection = 0;
    check.detail = 0;
    run_check(&mut check);
    if check.undecided == ANSWERED {
        // The descriptor a "permit once" opened may be read and written as
        // asked after the answer expires: file_permission finds it here.
        let key = FileCacheKey { file: file as u64, policy: subject.policy, _pad: 0 };
        let entry = FileCacheEntry { dentry: object.dentry as u64, granted: requested, _pad: 0 };
        let _ = FILE_CACHE.insert(&key, &entry, 0);
    }
    hook_return(check.verdict(), EACCES)
}

/// The common case of a confined open, decided without a single helper call
/// for the file: an ordinary file whose walk answer the cache holds, and
/// which that answer allows. Every field is read with a BTF-typed load (see
/// [`kernel::btf_load`]), which is why this is a static function of the
/// program's own: the verifier still knows the types of the pointers passed
/// in. False sends the open down the full path, which decides and reports
/// exactly as it would have (a denial, an audit, a protection, a miss).
#[inline(never)]
fn open_fast(subject: &Subject, file: FilePtr) -> bool {
    use kernel::{btf_load, off};
    use systrace_common::Off;
    unsafe {
        let f_mode: u32 = btf_load(file, off(Off::FILE_F_MODE));
        let f_flags: u32 = btf_load(file, off(Off::FILE_F_FLAGS));
        let requested = open_access(f_mode, f_flags);
        if requested == 0 {
            return false;
        }
        let dentry: *const u8 = btf_load(file, off(Off::FILE_F_PATH) + off(Off::PATH_DENTRY));
        let mnt: *const u8 = btf_load(file, off(Off::FILE_F_PATH) + off(Off::PATH_MNT));
        let inode: *const u8 = btf_load(dentry, off(Off::DENTRY_D_INODE));
        if inode.is_null() {
            return false;
        }
        let i_mode: u16 = btf_load(inode, off(Off::INODE_I_MODE));
        let sb: *const u8 = btf_load(inode, off(Off::INODE_I_SB));
        let magic: u64 = btf_load(sb, off(Off::SUPER_BLOCK_S_MAGIC));
        if !guard::ordinary_for_open(magic, i_mode) {
            return false;
        }
        let task = aya_ebpf::helpers::bpf_get_current_task_btf() as *const u8;
        let nsproxy: *const u8 = btf_load(task, off(Off::TASK_STRUCT_NSPROXY));
        let ns: *const u8 = btf_load(nsproxy, off(Off::NSPROXY_MNT_NS));
        if ns.is_null() {
            return false;
        }
        let ino: u64 = btf_load(inode, off(Off::INODE_I_INO));
        let mut res = Resolution::default();
        let inode_rules = subject.info.flags & systrace_common::policy_flags::INODE_RULES != 0;
        if !cache::peek(
            dentry as u64,
            mnt as u64,
            ns as u64,
            inode as u64,
            ino,
            subject.policy,
            requested,
            inode_rules,
            &mut res,
        ) {
            return false;
        }
        let allowed = !res.undecided && crate::decision::verdict(subject, &res) == Verdict::Allowed;
        if allowed {
            // A hit this path decides; one it leaves to the full path is counted there.
            crate::maps::count(systrace_common::Counter::WalkCacheHits);
        }
        allowed
    }
}

lsm_program!(
    /// truncate(2) changes content without opening the file.
    path_truncate = "path_truncate", Hook::PathTruncate, |ctx| {
    match current_subject() {
        Some(subject) => {
            let path: kernel::PathPtr = arg(&ctx, Hook::PathTruncate, 0);
            match unsafe { path_object(path) } {
                Ok(object) => check_file(&subject, Hook::PathTruncate, object, access::WRITE),
                Err(_) => check_unreadable(&subject, Hook::PathTruncate, access::WRITE, EACCES),
            }
        }
        None => 0,
    }
});

lsm_program!(
    /// ftruncate(2) and open(O_TRUNC) on 6.2 and later.
    file_truncate = "file_truncate", Hook::FileTruncate, |ctx| {
    match current_subject() {
        Some(subject) => {
            let file: FilePtr = arg(&ctx, Hook::FileTruncate, 0);
            match unsafe { file_object(file) } {
                Ok(object) => check_file(&subject, Hook::FileTruncate, object, access::WRITE),
                Err(_) => check_unreadable(&subject, Hook::FileTruncate, access::WRITE, EACCES),
            }
        }
        None => 0,
    }
});

lsm_program!(
    /// Every read and write (and readdir, splice, fallocate) asks here. A
    /// descriptor the process opened itself was decided at `file_open`; one it
    /// got otherwise (inherited from before it joined its cgroup, received by
    /// means that bypass `file_receive`) was not. The decision for a `struct file`
    /// is remembered, so after the first use this costs one lookup.
    file_permission = "file_permission", Hook::FilePermission, |ctx| permission(&ctx));

#[inline(always)]
fn permission(ctx: &LsmContext) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let file: FilePtr = arg(ctx, Hook::FilePermission, 0);
    let mask: i32 = arg(ctx, Hook::FilePermission, 1);
    let key = FileCacheKey { file: file as u64, policy: subject.policy, _pad: 0 };
    // Looked up once, for the quick answer and, on a miss, the exact one below.
    let entry = unsafe { FILE_CACHE.get(&key) }.copied();
    if let Some(entry) = &entry {
        if cached(entry, file, mask) {
            return 0;
        }
    }
    let (Ok((dentry, mnt)), Ok(mode), Ok(flags)) =
        (unsafe { kernel::path_parts(kernel::file_path(file)) }, unsafe { kernel::file_mode(file) }, unsafe {
            kernel::file_flags(file)
        })
    else {
        return check_unreadable(&subject, Hook::FilePermission, access::READ, EACCES);
    };
    if mode & FMODE_EXEC != 0 || flags & __FMODE_EXEC != 0 {
        // The kernel reading a binary it is executing: exec was decided.
        return 0;
    }
    // Files and directories only. Pipes, sockets and terminals are not file
    // access (sockets are decided where they connect and send), and a
    // descriptor of the kernel's own (an eventfd) has no path.
    let Ok(inode) = (unsafe { kernel::file_inode(file) }) else {
        return check_unreadable(&subject, Hook::FilePermission, access::READ, EACCES);
    };
    match unsafe { kernel::inode_mode(inode) } {
        Ok(m) if matches!(m & S_IFMT, S_IFREG | S_IFDIR | S_IFLNK | S_IFBLK) => {}
        Ok(m) if m & S_IFMT == S_IFCHR => {
            // A raw device's descriptor from before confinement: as at open.
            return match unsafe { kernel::inode_rdev(inode) } {
                Ok(rdev) if !kernel::raw_device(rdev) => 0,
                _ => check_file_protection(
                    &subject,
                    Hook::FilePermission,
                    Detail { detail: 0, target: 0, protection: protect::SYSTEM },
                    Object { dentry, mnt },
                ),
            };
        }
        Ok(_) => return 0,
        Err(_) => return check_unreadable(&subject, Hook::FilePermission, access::READ, EACCES),
    }
    let mut needed = 0;
    if mask & MAY_READ != 0 {
        needed |= access::READ;
    }
    if mask & (MAY_WRITE | MAY_APPEND) != 0 {
        needed |= if flags & O_APPEND != 0 { access::APPEND } else { access::WRITE };
    }
    if needed == 0 {
        return 0;
    }
    if let Some(entry) = entry {
        if entry.dentry == dentry as u64 && needed & !entry.granted == 0 {
            return 0;
        }
    }
    // Decide what the descriptor can do at all, once.
    let mut requested = needed;
    if mode & FMODE_READ != 0 {
        requested |= access::READ;
    }
    if mode & FMODE_WRITE != 0 {
        requested |= if flags & O_APPEND != 0 { access::APPEND } else { access::WRITE };
    }
    let mut check = FileCheck::new(&subject, Hook::FilePermission, Object { dentry, mnt }, requested);
    check.detail = needed;
    let rc = systrace_permission(&mut check);
    if rc & CHECK_REPORT != 0 {
        systrace_report_file(&mut check);
    }
    let verdict = check.verdict();
    if rc & CHECK_UNREADABLE == 0 && verdict != Verdict::Denied {
        let entry = FileCacheEntry { dentry: dentry as u64, granted: check.granted & requested, _pad: 0 };
        let _ = FILE_CACHE.insert(&key, &entry, 0);
    }
    hook_return(verdict, EACCES)
}

/// The common case, in one lookup and one read: this descriptor was decided
/// before (it passed the checks for its kind then: a `struct file` never
/// changes its path) and what it asks for now is granted whatever its flags
/// say (a write needs `write` and `append`, as `fcntl` can switch `O_APPEND`).
#[inline(always)]
fn cached(entry: &FileCacheEntry, file: FilePtr, mask: i32) -> bool {
    let mut needed = 0;
    if mask & MAY_READ != 0 {
        needed |= access::READ;
    }
    if mask & (MAY_WRITE | MAY_APPEND) != 0 {
        needed |= access::WRITE | access::APPEND;
    }
    if needed & !entry.granted != 0 {
        return false;
    }
    // A `struct file` freed and reused for another file does not inherit the entry.
    matches!(unsafe { kernel::file_dentry(file) }, Ok(d) if d as u64 == entry.dentry)
}

/// Resolves what a descriptor may do (`requested`: everything its mode allows)
/// and decides the access in use (`detail`); the report then names only that
/// access. Returns [`CHECK_REPORT`] and [`CHECK_UNREADABLE`] bits.
#[no_mangle]
#[inline(never)]
pub extern "C" fn systrace_permission(check: *mut FileCheck) -> i32 {
    if check.is_null() {
        return CHECK_UNREADABLE;
    }
    let c = unsafe { &mut *check };
    let needed = c.detail;
    c.detail = 0;
    let request = Request::new(&c.subject, c.object(), c.requested, true);
    let mut res = Resolution::default();
    if walk(&request, &mut res) != 0 {
        c.verdict = violation(&c.subject) as u32;
        c.requested = needed;
        return CHECK_UNREADABLE | CHECK_REPORT;
    }
    let granted = granted(&c.subject, &res);
    let verdict = if needed & res.denied != 0 {
        denied_by_rule(&c.subject)
    } else if needed & !granted != 0 {
        violation(&c.subject)
    } else if res.audited & needed != 0 {
        Verdict::AuditRule
    } else {
        Verdict::Allowed
    };
    if res.undecided {
        count(Counter::WalkUndecided);
    }
    c.verdict = verdict as u32;
    c.granted = granted;
    c.requested = needed;
    c.dev = res.id.dev;
    c.ino = res.id.ino;
    c.undecided = res.undecided as u32;
    if verdict == Verdict::Allowed {
        0
    } else {
        CHECK_REPORT
    }
}

lsm_program!(
    /// A descriptor arriving from another process (SCM_RIGHTS, pidfd_getfd):
    /// decided as if the process opened it with the descriptor's access mode.
    file_receive = "file_receive", Hook::FileReceive, |ctx| receive(&ctx));

#[inline(always)]
fn receive(ctx: &LsmContext) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let file: FilePtr = arg(ctx, Hook::FileReceive, 0);
    match unsafe { received(&subject, file) } {
        Ok(rc) => rc,
        Err(_) => check_unreadable(&subject, Hook::FileReceive, access::READ, EACCES),
    }
}

#[inline(always)]
unsafe fn received(subject: &Subject, file: FilePtr) -> Result<i32, i64> {
    let object = file_object(file)?;
    let inode = kernel::file_inode(file)?;
    if !inode.is_null() && kernel::inode_mode(inode)? & 0o170_000 == guard::S_IFSOCK {
        // A socket: the rules for making one of its kind decide.
        let socket = kernel::file_private(file)?;
        let sk = kernel::socket_sock(socket)?;
        let (family, sock_type, protocol) = kernel::sock_kind(sk)?;
        return Ok(network::check_socket_kind(subject, Hook::FileReceive, family, sock_type, protocol));
    }
    if guard::foreign_io_uring(subject, file)? {
        let detail = Detail { detail: 0, target: 0, protection: protect::SYSTEM };
        return Ok(check_file_protection(subject, Hook::FileReceive, detail, object));
    }
    let requested = open_access(kernel::file_mode(file)?, kernel::file_flags(file)?) & !access::EXEC;
    if requested == 0 {
        return Ok(0);
    }
    let guarded = guard::file_open(subject, Hook::FileReceive, object, requested);
    if guarded != 0 {
        return Ok(guarded);
    }
    Ok(check_file(subject, Hook::FileReceive, object, requested))
}

lsm_program!(file_ioctl = "file_ioctl", Hook::FileIoctl, |ctx| ioctl(&ctx, Hook::FileIoctl));
lsm_program!(file_ioctl_compat = "file_ioctl_compat", Hook::FileIoctlCompat, |ctx| ioctl(&ctx, Hook::FileIoctlCompat));

/// Whether `cmd` copies, reads or replaces a whole tree without an open, a
/// mkdir or a rename to decide. btrfs (type 0x94): create, snapshot and
/// delete subvolumes (1, 14, 15, 23, 24, 63), send a stream of one (38),
/// search the raw trees, where small files live inline (17), resolve inodes
/// and extents to paths (35, 36, 59), mark a received subvolume (37), change a
/// subvolume's flags or the default one (26, 19), set the label (50), add,
/// remove or replace devices (10, 11, 53). bcachefs (type 0xbc): create and
/// destroy subvolumes and snapshots (16, 17). btrfs's other ioctls (space and
/// device information, sync, defragmentation, the generic reflink and dedupe
/// that share its type) stay allowed.
#[inline(always)]
fn copies_trees(cmd: u32) -> bool {
    match (cmd >> 8) & 0xff {
        BTRFS_IOCTL_MAGIC => {
            matches!(cmd & 0xff, 1 | 10 | 11 | 14 | 15 | 17 | 19 | 23 | 24 | 26 | 35 | 36 | 37 | 38 | 50 | 53 | 59 | 63)
        }
        BCACHEFS_IOCTL_MAGIC => matches!(cmd & 0xff, 16 | 17),
        _ => false,
    }
}

/// TIOCSTI and TIOCLINUX push input into a terminal, which a shell outside
/// the cgroup may be reading: refused under the signal protection. The
/// ioctls that copy whole trees ([`copies_trees`]) are refused under the
/// system protection.
/// Setting a file's flags (immutable, append-only, ...) needs `chmod` on it.
#[inline(always)]
fn ioctl(ctx: &LsmContext, hook: Hook) -> i32 {
    let cmd: u32 = arg(ctx, hook, 1);
    let chmod = matches!(cmd, FS_IOC_SETFLAGS | FS_IOC32_SETFLAGS | FS_IOC_FSSETXATTR);
    let btrfs = copies_trees(cmd);
    if !chmod && !btrfs && cmd != TIOCSTI && cmd != TIOCLINUX {
        return 0;
    }
    let Some(subject) = current_subject() else {
        return 0;
    };
    let file: FilePtr = arg(ctx, hook, 0);
    let Ok(object) = (unsafe { file_object(file) }) else {
        return check_unreadable(&subject, hook, access::CHMOD, EPERM);
    };
    if chmod {
        return check_file(&subject, hook, object, access::CHMOD);
    }
    let protection = if btrfs { protect::SYSTEM } else { protect::SIGNAL };
    check_file_protection(&subject, hook, Detail { detail: cmd, target: 0, protection }, object)
}

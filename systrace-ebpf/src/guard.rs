//! Self-protection that rides on file hooks, decided by where a file lives (its
//! file system's magic number) before any rule: rules name files, these protect
//! the confinement itself and the rest of the machine.
//!
//! - cgroupfs: no process moves but within the policy's own cgroup (a
//!   process moving itself; never pulling one in from outside, nor into a
//!   cgroup below bound to another policy; none under v1), and no writes to,
//!   mkdir, rmdir or rename in cgroups outside the policy's own (cgroup.kill,
//!   cgroup.freeze, memory.max of the agent's cgroup...).
//! - /proc: no writes to the files of processes outside the cgroup
//!   (oom_score_adj...), nor to global ones (/proc/sys, /proc/sysrq-trigger:
//!   core_pattern and modprobe run programs as root outside any policy).
//! - sysfs, debugfs, tracefs, securityfs, configfs, efivarfs: no writes.
//! - block devices: not opened at all (a raw disk is every file at once), nor
//!   the character devices that reach disks, memory or input directly
//!   (`RAW_DEVICES`: /dev/mem, /dev/sg*, /dev/bsg/*, NVMe, /dev/input,
//!   /dev/uinput, ...), nor /proc/kcore.
//! - binfmt_misc: no writes (a registered interpreter runs as root).
//! - io_uring rings whose submission thread runs outside the cgroup: not taken
//!   in, not mapped (their requests would run unconfined).
//! - bpffs: no unlinking or renaming (the agent's pinned links).

use aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes;
use systrace_common::{access, protect, BindingKey, Hook, Verdict};

use crate::{
    decision::{check_protection, denied_by_rule, hook_return, systrace_report_file, Detail, FileCheck, EPERM},
    hook::{arg, lsm_program},
    kernel::{self, DentryPtr, FilePtr, InodePtr},
    maps::BINDINGS,
    subject::{active_half, cgroup_inside, current_subject, task_inside, Subject, MAX_CGROUP_DEPTH},
    walk::Object,
};

const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
const SYSFS_MAGIC: u64 = 0x6265_6572;
const DEBUGFS_MAGIC: u64 = 0x6462_6720;
const TRACEFS_MAGIC: u64 = 0x7472_6163;
const SECURITYFS_MAGIC: u64 = 0x7363_6673;
const CONFIGFS_MAGIC: u64 = 0x6265_6570;
const EFIVARFS_MAGIC: u64 = 0xde5e_81e4;
const PSTOREFS_MAGIC: u64 = 0x6165_676c;
/// binfmt_misc: registering an interpreter runs it, as root, for whatever
/// file matches (the kernel's "credentials from the binary" flag included).
const BINFMTFS_MAGIC: u64 = 0x4249_4e4d;

const S_IFMT: u16 = 0o170_000;
const S_IFBLK: u16 = 0o060_000;
const S_IFCHR: u16 = 0o020_000;
const S_IFREG: u16 = 0o100_000;
pub const S_IFSOCK: u16 = 0o140_000;

/// Names whose writes move a process or thread into the file's cgroup: the v2
/// interface files and v1's `tasks`. NUL-padded to the buffer the name is read into.
const MOVING_FILES: [[u8; 16]; 3] = [*b"cgroup.procs\0\0\0\0", *b"cgroup.threads\0\0", *b"tasks\0\0\0\0\0\0\0\0\0\0\0"];

const WRITES: u32 = access::WRITE | access::APPEND;

/// The file system `dentry` lives on and its inode, (0, null) for a negative dentry.
#[inline(always)]
unsafe fn fs_of(dentry: DentryPtr) -> Result<(u64, InodePtr), i64> {
    let inode = kernel::dentry_inode(dentry)?;
    if inode.is_null() {
        return Ok((0, inode));
    }
    Ok((kernel::inode_fs_magic(inode)?, inode))
}

#[inline(always)]
unsafe fn is_kcore(dentry: DentryPtr) -> Result<bool, i64> {
    let mut name = [0u8; 8];
    bpf_probe_read_kernel_str_bytes(kernel::dentry_name(dentry)?, &mut name)?;
    Ok(name == *b"kcore\0\0\0")
}

#[inline(always)]
unsafe fn moves_processes(dentry: DentryPtr) -> Result<bool, i64> {
    let mut name = [0u8; 16];
    // A longer name is cut and so matches none of the short ones.
    bpf_probe_read_kernel_str_bytes(kernel::dentry_name(dentry)?, &mut name)?;
    Ok(MOVING_FILES.iter().any(|m| *m == name))
}

/// Whether the cgroupfs file or directory `inode` belongs to a cgroup inside
/// the subject's. A file's kernfs node's parent is its cgroup; a directory's
/// node is the cgroup itself.
#[inline(always)]
unsafe fn cgroup_file_inside(subject: &Subject, inode: InodePtr, is_dir: bool) -> Result<bool, i64> {
    let kn = kernel::inode_private(inode)?;
    if kn.is_null() {
        return Ok(false);
    }
    let cgroup = if is_dir { kn } else { kernel::kernfs_node(kn)?.1 };
    cgroup_inside(subject.anchor, cgroup)
}

/// Whether moving processes into the cgroup `cgroup` (its kernfs node) keeps
/// them under the subject's policy: the cgroup is inside the subject's and no
/// cgroup on the way down to it is bound to a policy of its own (moving there
/// would be changing policy).
#[inline(always)]
unsafe fn move_stays_confined(subject: &Subject, mut cgroup: *const u8) -> Result<bool, i64> {
    let half = active_half();
    for _ in 0..MAX_CGROUP_DEPTH {
        if cgroup.is_null() {
            return Ok(false);
        }
        let (id, parent) = kernel::kernfs_node(cgroup)?;
        if id == subject.anchor {
            return Ok(true);
        }
        if BINDINGS.get(&BindingKey { half, _pad: 0, cgroup_id: id }).is_some() {
            return Ok(false);
        }
        cgroup = parent;
    }
    Ok(false)
}

/// Whether `inode` is a cgroup v2 process-moving file (`cgroup.procs`,
/// `cgroup.threads`) whose cgroup a move may not reach; see
/// [`inode_permission`].
#[inline(always)]
unsafe fn move_refused(subject: &Subject, inode: InodePtr) -> Result<bool, i64> {
    if kernel::inode_fs_magic(inode)? != CGROUP2_SUPER_MAGIC || kernel::inode_mode(inode)? & S_IFMT != S_IFREG {
        return Ok(false);
    }
    let kn = kernel::inode_private(inode)?;
    if kn.is_null() {
        return Ok(true);
    }
    let mut name = [0u8; 16];
    bpf_probe_read_kernel_str_bytes(kernel::kernfs_name(kn)?, &mut name)?;
    if !MOVING_FILES.iter().any(|m| *m == name) {
        return Ok(false);
    }
    Ok(!move_stays_confined(subject, kernel::kernfs_node(kn)?.1)?)
}

/// Whether no protection can refuse opening a file of this type on this file
/// system, whatever is asked (a regular file, directory or symbolic link on
/// none of the file systems [`open_refused_by`] looks into): the fast path of
/// `file_open` is taken only then. Must stay in step with that function.
#[inline(always)]
pub fn ordinary_for_open(magic: u64, mode: u16) -> bool {
    const S_IFDIR: u16 = 0o040_000;
    const S_IFLNK: u16 = 0o120_000;
    matches!(mode & S_IFMT, S_IFREG | S_IFDIR | S_IFLNK)
        && !matches!(
            magic,
            CGROUP2_SUPER_MAGIC
                | CGROUP_SUPER_MAGIC
                | BPF_FS_MAGIC
                | PROC_SUPER_MAGIC
                | SYSFS_MAGIC
                | DEBUGFS_MAGIC
                | TRACEFS_MAGIC
                | SECURITYFS_MAGIC
                | CONFIGFS_MAGIC
                | EFIVARFS_MAGIC
                | PSTOREFS_MAGIC
                | BINFMTFS_MAGIC
        )
}

/// Which protection refuses opening this file with `requested`, if any.
#[inline(always)]
unsafe fn open_refused_by(subject: &Subject, dentry: DentryPtr, requested: u32) -> Result<u32, i64> {
    let (magic, inode) = fs_of(dentry)?;
    if inode.is_null() {
        return Ok(0);
    }
    match kernel::inode_mode(inode)? & S_IFMT {
        S_IFBLK => return Ok(protect::SYSTEM),
        S_IFCHR if kernel::raw_device(kernel::inode_rdev(inode)?) => return Ok(protect::SYSTEM),
        _ => {}
    }
    if magic == PROC_SUPER_MAGIC && kernel::proc_inode_pid(inode)?.is_null() && is_kcore(dentry)? {
        // The kernel's memory as an ELF core, read or written.
        return Ok(protect::SYSTEM);
    }
    if requested & WRITES == 0 {
        return Ok(0);
    }
    Ok(match magic {
        CGROUP2_SUPER_MAGIC | CGROUP_SUPER_MAGIC => {
            // Writing a process-moving file moves a process into the file's
            // cgroup; which process the kernel checks at the write, where
            // `inode_permission` below sees the cgroup that takes it out.
            let refused = if moves_processes(dentry)? {
                // cgroup v1 (`tasks`, its own `cgroup.procs`): no moves at all.
                magic == CGROUP_SUPER_MAGIC || move_refused(subject, inode)?
            } else {
                !cgroup_file_inside(subject, inode, false)?
            };
            if refused {
                protect::CGROUP
            } else {
                0
            }
        }
        PROC_SUPER_MAGIC => {
            let pid = kernel::proc_inode_pid(inode)?;
            if pid.is_null() {
                // /proc/sys, /proc/sysrq-trigger and the other global files.
                protect::SYSTEM
            } else {
                let task = kernel::pid_task(pid)?;
                if task.is_null() || task_inside(subject, task)? {
                    0
                } else {
                    protect::SIGNAL
                }
            }
        }
        SYSFS_MAGIC | DEBUGFS_MAGIC | TRACEFS_MAGIC | SECURITYFS_MAGIC | CONFIGFS_MAGIC | EFIVARFS_MAGIC
        | PSTOREFS_MAGIC | BINFMTFS_MAGIC => protect::SYSTEM,
        _ => 0,
    })
}

/// Protections on opening a file (file_open, file_receive): 0 or what the hook returns.
#[inline(always)]
pub fn file_open(subject: &Subject, hook: Hook, object: Object, requested: u32) -> i32 {
    let mut check = FileCheck::new(subject, hook, object, requested);
    if systrace_guard_open(&mut check) == 0 {
        return 0;
    }
    hook_return(check.verdict(), EPERM)
}

/// 0 when no protection refuses opening `check`'s file with its access; 1
/// when one does (reported, `verdict` set).
#[no_mangle]
#[inline(never)]
pub extern "C" fn systrace_guard_open(check: *mut FileCheck) -> i32 {
    if check.is_null() {
        return 1;
    }
    let c = unsafe { &mut *check };
    let protection = match unsafe { open_refused_by(&c.subject, c.dentry as DentryPtr, c.requested) } {
        Ok(0) => return 0,
        Ok(protection) => protection,
        // Unreadable: refused as if a protection said so.
        Err(_) => protect::SYSTEM,
    };
    if c.subject.info.protections & protection == 0 {
        return 0;
    }
    let v = denied_by_rule(&c.subject);
    c.verdict = v as u32;
    c.detail = c.requested;
    c.protection = protection;
    systrace_report_file(check);
    if v == Verdict::Denied {
        1
    } else {
        0
    }
}

/// Creating or removing a name in, or renaming from, the directory `check`
/// names: on bpffs (the agent's pins) and in cgroupfs outside the policy's
/// cgroup, refused. 0, or 1 when refused (reported).
#[no_mangle]
#[inline(never)]
pub extern "C" fn systrace_guard_dir(check: *mut FileCheck) -> i32 {
    if check.is_null() {
        return 1;
    }
    let c = unsafe { &mut *check };
    let refused = match unsafe { fs_of(c.dentry as DentryPtr) } {
        Ok((BPF_FS_MAGIC, _)) => protect::BPF,
        Ok((CGROUP2_SUPER_MAGIC | CGROUP_SUPER_MAGIC, inode)) => {
            match unsafe { cgroup_file_inside(&c.subject, inode, true) } {
                Ok(true) => 0,
                Ok(false) => protect::CGROUP,
                Err(_) => protect::CGROUP,
            }
        }
        Ok(_) => 0,
        Err(_) => protect::SYSTEM,
    };
    if refused == 0 || c.subject.info.protections & refused == 0 {
        return 0;
    }
    let v = denied_by_rule(&c.subject);
    c.verdict = v as u32;
    c.detail = 0;
    c.protection = refused;
    systrace_report_file(check);
    if v == Verdict::Denied {
        1
    } else {
        0
    }
}

/// Whether `file` is an io_uring ring whose submission-queue thread runs
/// outside the subject's cgroup: requests written to its ring would run there.
#[inline(always)]
pub fn foreign_io_uring(subject: &Subject, file: FilePtr) -> Result<bool, i64> {
    let (dentry, _) = unsafe { kernel::path_parts(kernel::file_path(file))? };
    let mut name = [0u8; 16];
    unsafe { bpf_probe_read_kernel_str_bytes(kernel::dentry_name(dentry)?, &mut name)? };
    if name != *b"[io_uring]\0\0\0\0\0\0" {
        return Ok(false);
    }
    match unsafe { kernel::io_uring_sq_thread(file)? } {
        None => Ok(false),
        // A ring set up for a thread that has gone, or not started yet.
        Some(thread) if thread.is_null() => Ok(true),
        Some(thread) => Ok(!task_inside(subject, thread)?),
    }
}

/// `MAY_WRITE` of `inode_permission`'s mask.
const MAY_WRITE: i32 = 0x2;

lsm_program!(
    /// Moving a process into a cgroup writes the destination's `cgroup.procs`,
    /// and the kernel then asks for write permission on the `cgroup.procs` of
    /// the cgroup that holds both the process and the destination. Here that
    /// second question is answered: a confined process moves itself or its
    /// own within its cgroup (systemd's spawned child joins the unit's cgroup
    /// itself even when PID 1 has put it there already), and cannot pull a
    /// process from outside in, which would make it "inside" for the signal,
    /// ptrace and /proc protections. Checked at every write, whoever opened
    /// the file and whenever.
    inode_permission = "inode_permission", Hook::InodePermission, |ctx| {
    let mask: i32 = arg(&ctx, Hook::InodePermission, 1);
    if mask & MAY_WRITE == 0 {
        return 0;
    }
    let Some(subject) = current_subject() else {
        return 0;
    };
    let inode: InodePtr = arg(&ctx, Hook::InodePermission, 0);
    match unsafe { move_refused(&subject, inode) } {
        Ok(false) => 0,
        _ => check_protection(&subject, Hook::InodePermission, Detail { detail: mask as u32, target: 0, protection: protect::CGROUP }, false),
    }
});

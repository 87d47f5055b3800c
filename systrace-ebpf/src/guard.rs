//! Self-protection that rides on file hooks: writes to cgroupfs files that move
//! processes between cgroups, and removal of the agent's pinned links on bpffs.
//! Both are decided by where the file lives (its file system's magic number),
//! before any rule: rules name files, these protect the confinement itself.

use aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes;
use systrace_common::{access, protect, Hook};

use crate::{
    decision::{check_protection, check_unreadable, Detail, Subject},
    kernel::{self, DentryPtr},
};

const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Names whose writes move a process or thread into the file's cgroup: the v2
/// interface files and v1's `tasks`. NUL-padded to the buffer the name is read into.
const MOVING_FILES: [[u8; 16]; 3] =
    [*b"cgroup.procs\0\0\0\0", *b"cgroup.threads\0\0", *b"tasks\0\0\0\0\0\0\0\0\0\0\0"];

/// The file system `dentry` lives on, 0 for a negative dentry.
#[inline(always)]
unsafe fn fs_magic(dentry: DentryPtr) -> Result<u64, i64> {
    let inode = kernel::dentry_inode(dentry)?;
    if inode.is_null() {
        return Ok(0);
    }
    kernel::inode_fs_magic(inode)
}

#[inline(always)]
unsafe fn moves_processes(dentry: DentryPtr) -> Result<bool, i64> {
    let magic = fs_magic(dentry)?;
    if magic != CGROUP2_SUPER_MAGIC && magic != CGROUP_SUPER_MAGIC {
        return Ok(false);
    }
    let mut name = [0u8; 16];
    // A longer name is cut and so matches none of the short ones.
    bpf_probe_read_kernel_str_bytes(kernel::dentry_name(dentry)?, &mut name)?;
    Ok(MOVING_FILES.iter().any(|m| *m == name))
}

/// An open for writing of cgroup.procs (or cgroup.threads, tasks): writing a pid
/// there would take a process out of the cgroup its policy is bound to.
#[inline(always)]
pub fn cgroup_write(subject: &Subject, dentry: DentryPtr, requested: u32) -> i32 {
    if requested & (access::WRITE | access::APPEND) == 0 || subject.info.protections & protect::CGROUP == 0 {
        return 0;
    }
    match unsafe { moves_processes(dentry) } {
        Ok(false) => 0,
        Ok(true) => {
            let detail = Detail { detail: requested, target: 0, protection: protect::CGROUP };
            check_protection(subject, Hook::FileOpen, detail, false)
        }
        Err(_) => check_unreadable(subject, Hook::FileOpen, requested),
    }
}

/// Removing or renaming a name in a bpffs directory: a pinned link whose last
/// reference goes away detaches the agent's program.
#[inline(always)]
pub fn pin_removal(subject: &Subject, hook: Hook, dir: DentryPtr) -> i32 {
    if subject.info.protections & protect::BPF == 0 {
        return 0;
    }
    match unsafe { fs_magic(dir) } {
        Ok(BPF_FS_MAGIC) => {
            check_protection(subject, hook, Detail { detail: 0, target: 0, protection: protect::BPF }, false)
        }
        Ok(_) => 0,
        Err(_) => check_unreadable(subject, hook, access::DELETE),
    }
}

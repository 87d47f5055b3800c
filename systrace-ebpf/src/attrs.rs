//! Metadata: mode (`path_chmod`, setuid bits included), owner
//! (`path_chown`), timestamps (`inode_setattr`), extended attributes and ACLs
//! (`inode_setxattr`, `inode_removexattr`, `inode_set_acl`,
//! `inode_remove_acl`), file attributes (`inode_file_setattr`, 6.17+).
//!
//! `chmod` covers what changes who may do what with a file: mode bits, ACLs,
//! file capabilities and every extended attribute outside `user.`; `chown`
//! its owner and group; `write` its content, which includes timestamps and
//! `user.` attributes. The inode hooks do not say through which mount the file
//! was reached: its file system's mount in the caller's namespace gives the
//! path. (What overlayfs does on its layers for an operation already decided
//! on the overlay is left alone: see [`crate::overlay`].)

use aya_ebpf::{helpers::bpf_probe_read_kernel_str_bytes, programs::LsmContext};
use systrace_common::{access, Hook};

use crate::{
    decision::{check_file, check_unreadable, EACCES},
    files::path_object,
    hook::{arg, lsm_program},
    kernel,
    subject::current_subject,
    walk::Object,
};

const ATTR_MODE: u32 = 1 << 0;
const ATTR_UID: u32 = 1 << 1;
const ATTR_GID: u32 = 1 << 2;
const ATTR_SIZE: u32 = 1 << 3;
const ATTR_ATIME: u32 = 1 << 4;
const ATTR_MTIME: u32 = 1 << 5;
const ATTR_CTIME: u32 = 1 << 6;
const ATTR_ATIME_SET: u32 = 1 << 7;
const ATTR_MTIME_SET: u32 = 1 << 8;
const ATTR_TIMES_SET: u32 = 1 << 16;
const ATTR_TOUCH: u32 = 1 << 17;
const TIMES: u32 = ATTR_ATIME | ATTR_MTIME | ATTR_CTIME | ATTR_ATIME_SET | ATTR_MTIME_SET | ATTR_TIMES_SET | ATTR_TOUCH;
/// Decided by path_chmod, path_chown and the truncate hooks.
const PATH_DECIDED: u32 = ATTR_MODE | ATTR_UID | ATTR_GID | ATTR_SIZE;

/// `requested` on the file at `path` (argument 0).
#[inline(always)]
fn on_path(ctx: &LsmContext, hook: Hook, requested: u32) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let path: kernel::PathPtr = arg(ctx, hook, 0);
    match unsafe { path_object(path) } {
        Ok(object) => check_file(&subject, hook, object, requested),
        Err(_) => check_unreadable(&subject, hook, requested, EACCES),
    }
}

lsm_program!(path_chmod = "path_chmod", Hook::PathChmod, |ctx| on_path(&ctx, Hook::PathChmod, access::CHMOD));
lsm_program!(path_chown = "path_chown", Hook::PathChown, |ctx| on_path(&ctx, Hook::PathChown, access::CHOWN));

/// `requested` on the inode hook's dentry (argument 0).
#[inline(always)]
fn on_dentry(ctx: &LsmContext, hook: Hook, requested: u32) -> i32 {
    let Some(subject) = current_subject() else {
        return 0;
    };
    let dentry: kernel::DentryPtr = arg(ctx, hook, 0);
    check_file(&subject, hook, Object { dentry, mnt: core::ptr::null() }, requested)
}

lsm_program!(inode_setattr = "inode_setattr", Hook::InodeSetattr, |ctx| {
    let attr: *const u8 = arg(&ctx, Hook::InodeSetattr, 1);
    let valid = match unsafe { kernel::iattr_valid(attr) } {
        Ok(valid) => valid,
        Err(_) => return on_dentry(&ctx, Hook::InodeSetattr, access::WRITE),
    };
    if valid & PATH_DECIDED != 0 || valid & TIMES == 0 {
        return 0;
    }
    on_dentry(&ctx, Hook::InodeSetattr, access::WRITE)
});

/// The access an extended attribute's name asks for: `user.` ones are content.
#[inline(always)]
fn xattr_access(ctx: &LsmContext, hook: Hook) -> u32 {
    let name: *const u8 = arg(ctx, hook, 1);
    let mut prefix = [0u8; 6];
    match unsafe { bpf_probe_read_kernel_str_bytes(name, &mut prefix) } {
        Ok(read) if read == b"user." => access::WRITE,
        _ => access::CHMOD,
    }
}

lsm_program!(inode_setxattr = "inode_setxattr", Hook::InodeSetxattr, |ctx| {
    let requested = xattr_access(&ctx, Hook::InodeSetxattr);
    on_dentry(&ctx, Hook::InodeSetxattr, requested)
});

lsm_program!(inode_removexattr = "inode_removexattr", Hook::InodeRemovexattr, |ctx| {
    let requested = xattr_access(&ctx, Hook::InodeRemovexattr);
    on_dentry(&ctx, Hook::InodeRemovexattr, requested)
});

lsm_program!(inode_set_acl = "inode_set_acl", Hook::InodeSetAcl, |ctx| {
    on_dentry(&ctx, Hook::InodeSetAcl, access::CHMOD)
});
lsm_program!(inode_remove_acl = "inode_remove_acl", Hook::InodeRemoveAcl, |ctx| {
    on_dentry(&ctx, Hook::InodeRemoveAcl, access::CHMOD)
});

// Flags and the project id, by ioctl or by the `file_setattr` system call
// (6.17+), which names the file by path: what `FS_IOC_FSSETXATTR` needs in
// `file_ioctl`, `chmod`.
lsm_program!(inode_file_setattr = "inode_file_setattr", Hook::InodeFileSetattr, |ctx| {
    on_dentry(&ctx, Hook::InodeFileSetattr, access::CHMOD)
});

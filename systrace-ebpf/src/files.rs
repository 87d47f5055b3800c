//! File content hooks: `file_open` and `path_truncate`.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use systrace_common::{access, Hook};

use crate::{
    decision::{check_subject, check_unreadable, current_subject, Object},
    guard,
    hook::previous_verdict,
    kernel,
};

const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
const FMODE_EXEC: u32 = 0x20;
/// The open flag execve passes; newer kernels keep it in f_flags only.
const __FMODE_EXEC: u32 = 0x20;
const O_APPEND: u32 = 0o2000;

/// Access bits an open asks for, from the file's mode and flags.
#[inline(always)]
fn requested_access(f_mode: u32, f_flags: u32) -> u32 {
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
    requested
}

#[lsm(hook = "file_open")]
#[inline(always)]
pub fn file_open(ctx: LsmContext) -> i32 {
    let previous = previous_verdict!(ctx, RET_FILE_OPEN);
    if previous != 0 {
        return previous;
    }
    let Some(subject) = current_subject() else {
        return 0;
    };
    let file: kernel::FilePtr = ctx.arg(0);
    let (Ok(object), Ok(mode), Ok(flags)) =
        (unsafe { file_object(file) }, unsafe { kernel::file_mode(file) }, unsafe { kernel::file_flags(file) })
    else {
        return check_unreadable(&subject, Hook::FileOpen, access::READ);
    };
    let requested = requested_access(mode, flags);
    if requested == 0 {
        return 0;
    }
    let guarded = guard::cgroup_write(&subject, object.dentry, requested);
    if guarded != 0 {
        return guarded;
    }
    check_subject(&subject, Hook::FileOpen, object, requested)
}

/// The object a `struct file` refers to.
#[inline(always)]
pub unsafe fn file_object(file: kernel::FilePtr) -> Result<Object, i64> {
    path_object(kernel::file_path(file))
}

/// The object a `struct path` refers to.
#[inline(always)]
pub unsafe fn path_object(path: kernel::PathPtr) -> Result<Object, i64> {
    let (dentry, mnt) = kernel::path_parts(path)?;
    Ok(Object { dentry, mnt })
}

/// truncate(2) changes content without opening the file.
#[lsm(hook = "path_truncate")]
#[inline(always)]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    let previous = previous_verdict!(ctx, RET_PATH_TRUNCATE);
    if previous != 0 {
        return previous;
    }
    let Some(subject) = current_subject() else {
        return 0;
    };
    let path: kernel::PathPtr = ctx.arg(0);
    match unsafe { path_object(path) } {
        Ok(object) => check_subject(&subject, Hook::PathTruncate, object, access::WRITE),
        Err(_) => check_unreadable(&subject, Hook::PathTruncate, access::WRITE),
    }
}

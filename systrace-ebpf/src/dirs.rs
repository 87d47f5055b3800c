//! Directory operations: names created, removed, linked and renamed.
//!
//! A name being created has no inode yet, so its rules are those of the directory
//! it is created in (`/dir/*`, `/dir/**` and the ancestors' `/**`): the walk starts
//! at the new, negative dentry, whose parent is that directory. Linking and
//! renaming must also not widen access: a file may not gain, through its new
//! name, access that its current name does not have.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use systrace_common::{access, Default, Hook};

use crate::{
    decision::{
        check_subject, check_unreadable, current_subject, hook_return, report, resolve, violation, Object, Resolution,
        Subject,
    },
    guard,
    hook::previous_verdict,
    kernel,
};

/// Access that follows a file's name.
const CONTENT: u32 = access::READ | access::WRITE | access::APPEND | access::EXEC;

/// An operation on the name `dentry` (argument 1) in the directory `dir`
/// (argument 0, a `struct path *`): creating it or removing it.
#[inline(always)]
fn dir_entry(ctx: &LsmContext, hook: Hook, requested: u32) -> i32 {
    let dir: kernel::PathPtr = ctx.arg(0);
    let dentry: kernel::DentryPtr = ctx.arg(1);
    let Some(subject) = current_subject() else {
        return 0;
    };
    match unsafe { kernel::path_parts(dir) } {
        Ok((dir_dentry, mnt)) => {
            if requested & access::DELETE != 0 {
                let guarded = guard::pin_removal(&subject, hook, dir_dentry);
                if guarded != 0 {
                    return guarded;
                }
            }
            check_subject(&subject, hook, Object { dentry, mnt }, requested)
        }
        Err(_) => check_unreadable(&subject, hook, requested),
    }
}

#[lsm(hook = "path_mknod")]
#[inline(always)]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_PATH_MKNOD) {
        0 => dir_entry(&ctx, Hook::PathMknod, access::CREATE),
        previous => previous,
    }
}

#[lsm(hook = "path_mkdir")]
#[inline(always)]
pub fn path_mkdir(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_PATH_MKDIR) {
        0 => dir_entry(&ctx, Hook::PathMkdir, access::CREATE),
        previous => previous,
    }
}

#[lsm(hook = "path_symlink")]
#[inline(always)]
pub fn path_symlink(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_PATH_SYMLINK) {
        0 => dir_entry(&ctx, Hook::PathSymlink, access::CREATE),
        previous => previous,
    }
}

#[lsm(hook = "path_unlink")]
#[inline(always)]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_PATH_UNLINK) {
        0 => dir_entry(&ctx, Hook::PathUnlink, access::DELETE),
        previous => previous,
    }
}

#[lsm(hook = "path_rmdir")]
#[inline(always)]
pub fn path_rmdir(ctx: LsmContext) -> i32 {
    match previous_verdict!(ctx, RET_PATH_RMDIR) {
        0 => dir_entry(&ctx, Hook::PathRmdir, access::DELETE),
        previous => previous,
    }
}

/// Content access a resolution grants, the default included.
#[inline(always)]
fn granted(subject: &Subject, res: &Resolution) -> u32 {
    let by_default = if subject.info.default == Default::Allow as u8 { res.unresolved } else { 0 };
    (res.allowed | by_default) & !res.denied
}

/// Checks that giving the file at `from` the name `to` neither needs access the
/// policy withholds (`requested` on the new name) nor widens content access.
#[inline(always)]
fn new_name(subject: &Subject, hook: Hook, from: Object, to: Object, requested: u32) -> i32 {
    let (Ok(old), Ok(new)) = (resolve(subject, from, CONTENT), resolve(subject, to, CONTENT)) else {
        return check_unreadable(subject, hook, requested);
    };
    let widened = granted(subject, &new) & !granted(subject, &old);
    if widened != 0 {
        let v = violation(subject);
        // Report the content access the new name would have gained, on the old name.
        report(subject, hook, v, widened, &old, Some(from));
        return hook_return(v);
    }
    check_subject(subject, hook, to, requested)
}

#[lsm(hook = "path_link")]
#[inline(always)]
pub fn path_link(ctx: LsmContext) -> i32 {
    let previous = previous_verdict!(ctx, RET_PATH_LINK);
    if previous != 0 {
        return previous;
    }
    let Some(subject) = current_subject() else {
        return 0;
    };
    let old_dentry: kernel::DentryPtr = ctx.arg(0);
    let new_dir: kernel::PathPtr = ctx.arg(1);
    let new_dentry: kernel::DentryPtr = ctx.arg(2);
    let Ok((_, mnt)) = (unsafe { kernel::path_parts(new_dir) }) else {
        return check_unreadable(&subject, Hook::PathLink, access::CREATE);
    };
    // Hard links never cross mounts, so the old name is seen through the same one.
    let from = Object { dentry: old_dentry, mnt };
    let to = Object { dentry: new_dentry, mnt };
    new_name(&subject, Hook::PathLink, from, to, access::CREATE)
}

#[lsm(hook = "path_rename")]
#[inline(always)]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let previous = previous_verdict!(ctx, RET_PATH_RENAME);
    if previous != 0 {
        return previous;
    }
    let Some(subject) = current_subject() else {
        return 0;
    };
    let old_dir: kernel::PathPtr = ctx.arg(0);
    let old_dentry: kernel::DentryPtr = ctx.arg(1);
    let new_dir: kernel::PathPtr = ctx.arg(2);
    let new_dentry: kernel::DentryPtr = ctx.arg(3);
    let (Ok((old_dir_dentry, old_mnt)), Ok((_, new_mnt))) =
        (unsafe { kernel::path_parts(old_dir) }, unsafe { kernel::path_parts(new_dir) })
    else {
        return check_unreadable(&subject, Hook::PathRename, access::RENAME);
    };
    let guarded = guard::pin_removal(&subject, Hook::PathRename, old_dir_dentry);
    if guarded != 0 {
        return guarded;
    }
    let from = Object { dentry: old_dentry, mnt: old_mnt };
    let to = Object { dentry: new_dentry, mnt: new_mnt };
    let moved = check_subject(&subject, Hook::PathRename, from, access::RENAME);
    if moved != 0 {
        return moved;
    }
    // Replacing an existing name also deletes it.
    let replaces = unsafe { kernel::dentry_inode(new_dentry) }.map(|i| !i.is_null()).unwrap_or(true);
    let requested = if replaces { access::CREATE | access::DELETE } else { access::CREATE };
    new_name(&subject, Hook::PathRename, from, to, requested)
}

//! Directory operations: names created, removed, linked and renamed.
//!
//! A name being created has no inode yet: its exact rule (rules follow names)
//! and the rules of the directories above it decide. Linking and renaming must
//! also not widen access: a file may not gain, through its new name, access its
//! current name does not have. `renameat2(RENAME_EXCHANGE)` moves both files,
//! and both moves are checked.
//!
//! The hooks keep one [`FileCheck`] on their stack and hand it to the global
//! functions in turn (protections, the widening check, the decision), so their
//! stack frames never pile up beyond what BPF allows.

use aya_ebpf::programs::LsmContext;
use systrace_common::{access, Hook, Verdict};

use crate::{
    decision::{denied_by_rule, hook_return, run_check, systrace_report_file, FileCheck, EACCES, EPERM},
    guard::systrace_guard_dir,
    hook::{arg, lsm_program},
    kernel,
    subject::current_subject,
    walk::{walk, Object, Request, Resolution, CHILD, OWN_INODE},
};

const RENAME_EXCHANGE: u32 = 1 << 1;
const S_IFMT: u16 = 0o170_000;
const S_IFDIR: u16 = 0o040_000;

/// Protections on changing names in the directory `dir`; 0 or what the hook returns.
#[inline(always)]
fn guard_dir(c: &mut FileCheck, dir: Object) -> i32 {
    let (dentry, mnt) = (c.dentry, c.mnt);
    c.dentry = dir.dentry as u64;
    c.mnt = dir.mnt as u64;
    let refused = systrace_guard_dir(c) != 0;
    c.dentry = dentry;
    c.mnt = mnt;
    c.verdict = if refused { Verdict::Denied as u32 } else { Verdict::Allowed as u32 };
    c.protection = 0;
    c.detail = 0;
    if refused {
        -EPERM
    } else {
        0
    }
}

/// Decides `requested` on `object` with `c`; what the hook returns.
#[inline(always)]
fn decide(c: &mut FileCheck, object: Object, requested: u32) -> i32 {
    c.dentry = object.dentry as u64;
    c.mnt = object.mnt as u64;
    c.requested = requested;
    c.verdict = 0;
    c.granted = 0;
    c.dev = 0;
    c.ino = 0;
    c.undecided = 0;
    run_check(c);
    hook_return(c.verdict(), EACCES)
}

/// An operation on the name `dentry` (argument 1) in the directory `dir`
/// (argument 0, a `struct path *`): creating it or removing it.
#[inline(always)]
fn dir_entry(ctx: &LsmContext, hook: Hook, requested: u32) -> i32 {
    let dir: kernel::PathPtr = arg(ctx, hook, 0);
    let dentry: kernel::DentryPtr = arg(ctx, hook, 1);
    let Ok((dir_dentry, mnt)) = (unsafe { kernel::path_parts(dir) }) else {
        return if current_subject().is_some() { -EACCES } else { 0 };
    };
    let object = Object { dentry, mnt };
    let Some(mut c) = FileCheck::for_current(hook, object, requested) else {
        return 0;
    };
    let guarded = guard_dir(&mut c, Object { dentry: dir_dentry, mnt });
    if guarded != 0 {
        return guarded;
    }
    decide(&mut c, object, requested)
}

lsm_program!(path_mknod = "path_mknod", Hook::PathMknod, |ctx| dir_entry(&ctx, Hook::PathMknod, access::CREATE));
lsm_program!(path_mkdir = "path_mkdir", Hook::PathMkdir, |ctx| dir_entry(&ctx, Hook::PathMkdir, access::CREATE));
lsm_program!(path_symlink = "path_symlink", Hook::PathSymlink, |ctx| dir_entry(
    &ctx,
    Hook::PathSymlink,
    access::CREATE
));
lsm_program!(path_unlink = "path_unlink", Hook::PathUnlink, |ctx| dir_entry(&ctx, Hook::PathUnlink, access::DELETE));
lsm_program!(path_rmdir = "path_rmdir", Hook::PathRmdir, |ctx| dir_entry(&ctx, Hook::PathRmdir, access::DELETE));

/// Whether the file at `from` may take the name `to`, then `requested` on the
/// new name; what the hook returns.
#[inline(always)]
fn new_name(c: &mut FileCheck, from: Object, to: Object, requested: u32) -> i32 {
    c.dentry = from.dentry as u64;
    c.mnt = from.mnt as u64;
    c.detail = 0;
    let mut widened = systrace_new_name(c, &to);
    if widened == 0 && is_directory(from.dentry) {
        c.detail = CHILDREN;
        widened = systrace_new_name(c, &to);
        c.detail = 0;
    }
    if widened != 0 {
        // Reported on the old name, with the content access the new name would
        // have gained (all of it when the names could not be read).
        let v = denied_by_rule(&c.subject);
        c.requested = if widened < 0 { requested } else { widened as u32 };
        c.verdict = v as u32;
        systrace_report_file(c);
        return hook_return(v, EACCES);
    }
    decide(c, to, requested)
}

/// Compares what the rules grant the file `check` is about with what they
/// grant the name `to` (leaving out the deny rules that follow whatever file
/// bears that name now: the file taking it brings its own). Returns the
/// content access the new name grants and the old one does not, or -1 when
/// the names could not be read; leaves the file's identity in `check` for the
/// report.
///
/// A directory takes its whole tree along, while the rules stay with the
/// names. With `check.detail` set to [`CHILDREN`] the comparison is for the
/// files inside a directory; and rules anchored at or below a directory's old
/// name would stop applying to the files it holds, as rules anchored at or
/// below its new name would start to: such a directory neither leaves nor
/// takes such a name. A name whose path cannot be known counts as widening.
///
/// A BPF global function: a rename checks up to four of these, one after the
/// other. The walks are inlined, one after the other, so no second global
/// frame sits on this one. The caller's frame, which the 6.1 verifier adds to
/// this one's, holds only the new name for it.
#[no_mangle]
#[inline(never)]
pub extern "C" fn systrace_new_name(check: *mut FileCheck, to: *const Object) -> i32 {
    if check.is_null() || to.is_null() {
        return -1;
    }
    let c = unsafe { &mut *check };
    let children = c.detail == CHILDREN;
    let to = unsafe { *to };
    // One request and one resolution, used twice: the frame stays small.
    let mut request = Request::new(&c.subject, c.object(), access::CONTENT, true);
    request.how = if children { CHILD } else { OWN_INODE };
    let mut res = Resolution::default();
    if walk(&request, &mut res) != 0 {
        return -1;
    }
    if (children && res.anchored) || (res.undecided && blind(c)) {
        return access::CONTENT as i32;
    }
    let old = crate::decision::granted(&c.subject, &res);
    c.dev = res.id.dev;
    c.ino = res.id.ino;
    request.dentry = to.dentry as u64;
    request.mnt = to.mnt as u64;
    request.how &= CHILD;
    res = Resolution::default();
    if walk(&request, &mut res) != 0 {
        return -1;
    }
    if (children && res.anchored) || (res.undecided && blind(c)) {
        return access::CONTENT as i32;
    }
    let new = crate::decision::granted(&c.subject, &res);
    ((new & !old) & 0x7fff_ffff) as i32
}

/// Whether a name whose path cannot be known (a detached mount, another
/// namespace's) hides what the rules would say of it: both names would look
/// alike, and the comparison would see no widening.
#[inline(always)]
fn blind(c: &FileCheck) -> bool {
    c.subject.info.denied_somewhere != 0 || c.subject.info.default == systrace_common::Default::Deny as u8
}

/// `FileCheck::detail` for [`systrace_new_name`]: compare the files inside.
const CHILDREN: u32 = 1;

/// Whether `dentry` is a directory; an unreadable one counts as one (the
/// stricter checks then run).
#[inline(always)]
fn is_directory(dentry: kernel::DentryPtr) -> bool {
    match unsafe { kernel::dentry_inode(dentry) } {
        Ok(inode) if inode.is_null() => false,
        Ok(inode) => unsafe { kernel::inode_mode(inode) }.map(|m| m & S_IFMT == S_IFDIR).unwrap_or(true),
        Err(_) => true,
    }
}

lsm_program!(path_link = "path_link", Hook::PathLink, |ctx| {
    let old_dentry: kernel::DentryPtr = arg(&ctx, Hook::PathLink, 0);
    let new_dir: kernel::PathPtr = arg(&ctx, Hook::PathLink, 1);
    let new_dentry: kernel::DentryPtr = arg(&ctx, Hook::PathLink, 2);
    // Asked once: each inlined copy of the lookup takes stack of its own.
    let Some(subject) = current_subject() else {
        return 0;
    };
    let Ok((new_dir_dentry, mnt)) = (unsafe { kernel::path_parts(new_dir) }) else {
        return -EACCES;
    };
    // Hard links never cross mounts, so the old name is seen through the same one.
    let from = Object { dentry: old_dentry, mnt };
    let to = Object { dentry: new_dentry, mnt };
    let mut c = FileCheck::new(&subject, Hook::PathLink, to, access::CREATE);
    let guarded = guard_dir(&mut c, Object { dentry: new_dir_dentry, mnt });
    if guarded != 0 {
        return guarded;
    }
    new_name(&mut c, from, to, access::CREATE)
});

lsm_program!(path_rename = "path_rename", Hook::PathRename, |ctx| rename(&ctx));

#[inline(always)]
fn rename(ctx: &LsmContext) -> i32 {
    let hook = Hook::PathRename;
    let old_dir: kernel::PathPtr = arg(ctx, hook, 0);
    let old_dentry: kernel::DentryPtr = arg(ctx, hook, 1);
    let new_dir: kernel::PathPtr = arg(ctx, hook, 2);
    let new_dentry: kernel::DentryPtr = arg(ctx, hook, 3);
    let flags: u32 = arg(ctx, hook, 4);
    // Asked once: each inlined copy of the lookup takes stack of its own.
    let Some(subject) = current_subject() else {
        return 0;
    };
    let (Ok((old_dir_dentry, old_mnt)), Ok((new_dir_dentry, new_mnt))) =
        (unsafe { kernel::path_parts(old_dir) }, unsafe { kernel::path_parts(new_dir) })
    else {
        return -EACCES;
    };
    let from = Object { dentry: old_dentry, mnt: old_mnt };
    let to = Object { dentry: new_dentry, mnt: new_mnt };
    let mut c = FileCheck::new(&subject, hook, from, access::RENAME);
    // Two calls, not a loop over an array of both: the array would take stack
    // space that the 6.1 verifier's 512-byte bound for the deepest chain of
    // calls does not have.
    let guarded = guard_dir(&mut c, Object { dentry: old_dir_dentry, mnt: old_mnt });
    if guarded != 0 {
        return guarded;
    }
    let guarded = guard_dir(&mut c, Object { dentry: new_dir_dentry, mnt: new_mnt });
    if guarded != 0 {
        return guarded;
    }
    if flags & RENAME_EXCHANGE != 0 {
        // Each file takes the other's name: both are moves, neither deletes.
        let moved = decide(&mut c, from, access::RENAME);
        if moved != 0 {
            return moved;
        }
        let moved = decide(&mut c, to, access::RENAME);
        if moved != 0 {
            return moved;
        }
        let first = new_name(&mut c, from, to, access::CREATE);
        if first != 0 {
            return first;
        }
        return new_name(&mut c, to, from, access::CREATE);
    }
    let moved = decide(&mut c, from, access::RENAME);
    if moved != 0 {
        return moved;
    }
    // Replacing an existing name also deletes it.
    let replaces = unsafe { kernel::dentry_inode(new_dentry) }.map(|i| !i.is_null()).unwrap_or(true);
    let requested = if replaces { access::CREATE | access::DELETE } else { access::CREATE };
    new_name(&mut c, from, to, requested)
}

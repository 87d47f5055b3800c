//! Overlayfs: what it does on its layers for a confined process.
//!
//! A process opening, writing or renaming a file on an overlay is decided at
//! the overlay's own hooks, by the overlay path it used. To carry that out,
//! overlayfs then works on its layers itself: it copies a lower file up
//! (opening both, creating in the work directory, copying extended attributes,
//! renaming into the upper directory), and on 6.6 and later it reads and
//! writes through "backing files" whose path is the layer's. All of that runs
//! in the process's context, under the overlay mounter's credentials
//! (`ovl_fs->creator_cred`), and would otherwise be decided as the process's
//! own access to layer paths it never named (and that a default-deny policy
//! does not allow).
//!
//! Borrowed credentials alone do not mark such work: a process can borrow
//! credentials of its own (an io_uring personality registered before a
//! `setresuid`; the kernel writing its core dump), and those operations stay
//! decided as the process's. So the programs note the creator credentials of
//! every overlay a confined process touches ([`note`], from the file rules'
//! walk, which every overlay operation reaches before overlayfs starts its
//! work), and let through only operations under exactly those credentials,
//! checked again against the overlay's superblock at each use ([`acting_for_overlay`]).
//!
//! A mapping of an overlay file is a mapping of its backing file: `mprotect`
//! (and `remap_file_pages`) see the layer's file, and are decided by the
//! overlay path it stands for ([`user_facing`]).

use systrace_common::Off;

use crate::{
    kernel::{self, DentryPtr, FilePtr},
    maps::OVERLAY_CREDS,
    walk::Object,
};

/// Remembers the creator credentials of the overlay `dentry` is on, if it is;
/// whether it is. A call of its own (not inlined): its frame then adds to the
/// walk's only while it runs, not to the deepest chain of calls the verifier adds up.
#[inline(never)]
pub fn note(dentry: DentryPtr) -> bool {
    let Ok(sb) = (unsafe { kernel::dentry_sb(dentry) }) else {
        return false;
    };
    let cred = match unsafe { kernel::overlay_creator(sb) } {
        Ok(cred) if !cred.is_null() => cred,
        _ => return false,
    };
    let key = cred as u64;
    if unsafe { OVERLAY_CREDS.get(&key) }.copied() != Some(sb as u64) {
        // Full, the least recently used overlay is forgotten; it is noted
        // again the next time a confined process touches it.
        let _ = OVERLAY_CREDS.insert(&key, &(sb as u64), 0);
    }
    true
}

/// Whether the current task runs under the credentials of an overlay that
/// is (still) mounted with them: overlayfs at work for it. Not inlined, so
/// that its frame does not add to every program's own.
#[inline(never)]
pub fn acting_for_overlay() -> bool {
    // BTF-typed loads (see `kernel::btf_load`): every confined decision
    // passes here, and two helper calls cost more than the rest of it.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task_btf() } as *const u8;
    let cred: *const u8 = unsafe { kernel::btf_load(task, kernel::off(Off::TASK_STRUCT_CRED)) };
    let real: *const u8 = unsafe { kernel::btf_load(task, kernel::off(Off::TASK_STRUCT_REAL_CRED)) };
    if cred == real || cred.is_null() {
        return false;
    }
    let Some(&sb) = (unsafe { OVERLAY_CREDS.get(&(cred as u64)) }) else {
        return false;
    };
    // The overlay may be gone and its credentials' memory reused: ask the
    // superblock noted with them.
    matches!(unsafe { kernel::overlay_creator(sb as *const u8) }, Ok(c) if c == cred)
}

/// The object a mapped file stands for: for an overlay's backing file, the
/// overlay path the process opened; otherwise the file's own path.
#[inline(always)]
pub fn user_facing(file: FilePtr, own: Object) -> Result<Object, i64> {
    let user_path = unsafe { kernel::backing_user_path(file) };
    if user_path.is_null() {
        return Ok(own);
    }
    // Only an overlay's backing files are opened with its creator credentials
    // and carry a user path on that overlay; anything else reads as garbage
    // here and fails one of the two checks.
    let cred = unsafe { kernel::file_cred(file)? };
    let Ok((dentry, mnt)) = (unsafe { kernel::path_parts(user_path) }) else {
        return Ok(own);
    };
    if dentry.is_null() || mnt.is_null() {
        return Ok(own);
    }
    let Ok(sb) = (unsafe { kernel::dentry_sb(dentry) }) else {
        return Ok(own);
    };
    match unsafe { kernel::overlay_creator(sb) } {
        Ok(creator) if !creator.is_null() && creator == cred => Ok(Object { dentry, mnt }),
        _ => Ok(own),
    }
}

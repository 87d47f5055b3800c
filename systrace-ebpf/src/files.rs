//! File hooks: `file_open`.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use systrace_common::{access, Hook};

use crate::{
    decision::{current_subject, decide_file, decide_unknown, hook_return, report, Object},
    kernel,
};

const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
const FMODE_EXEC: u32 = 0x20;
const O_APPEND: u32 = 0o2000;

/// Access bits an open asks for, from the file's mode and flags.
#[inline(always)]
fn requested_access(f_mode: u32, f_flags: u32) -> u32 {
    let mut requested = 0;
    if f_mode & FMODE_EXEC != 0 {
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
pub fn file_open(ctx: LsmContext) -> i32 {
    // An earlier BPF program on this hook already refused: keep its answer.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(subject) = current_subject() else {
        return 0;
    };
    let file: kernel::FilePtr = ctx.arg(0);
    let identified = unsafe {
        match (kernel::file_mode(file), kernel::file_flags(file), kernel::file_inode(file)) {
            (Ok(mode), Ok(flags), Ok(inode)) => {
                kernel::inode_id(inode).ok().map(|(dev, ino)| (requested_access(mode, flags), dev, ino))
            }
            _ => None,
        }
    };
    let path = Some(unsafe { kernel::file_path_ptr(file) });
    let (verdict, requested, object) = match identified {
        Some((0, _, _)) => return 0,
        Some((requested, dev, ino)) => {
            (decide_file(&subject, dev, ino, requested), requested, Object { dev, ino, path })
        }
        None => (decide_unknown(&subject), 0, Object { dev: 0, ino: 0, path }),
    };
    report(&subject, Hook::FileOpen, verdict, requested, &object);
    hook_return(verdict)
}

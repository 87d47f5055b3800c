//! Execution: `bprm_check_security`, on the file actually being executed (after
//! symlinks, and again for a script's interpreter), so neither a symlink nor a
//! renamed copy of a binary changes the answer.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use systrace_common::{access, Hook};

use crate::{
    decision::{check_subject, check_unreadable, current_subject},
    files::file_object,
    hook::previous_verdict,
    kernel,
};

#[lsm(hook = "bprm_check_security")]
#[inline(always)]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let previous = previous_verdict!(ctx, RET_BPRM_CHECK_SECURITY);
    if previous != 0 {
        return previous;
    }
    let Some(subject) = current_subject() else {
        return 0;
    };
    let bprm: *const u8 = ctx.arg(0);
    match unsafe { kernel::bprm_file(bprm).and_then(|file| file_object(file)) } {
        Ok(object) => check_subject(&subject, Hook::BprmCheckSecurity, object, access::EXEC),
        Err(_) => check_unreadable(&subject, Hook::BprmCheckSecurity, access::EXEC),
    }
}

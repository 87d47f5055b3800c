//! Code: execution (`bprm_check_security`, on the file actually being executed,
//! after symlinks, and again for a script's interpreter), and mapping a file as
//! code (`mmap_file`, `file_mprotect` with PROT_EXEC), which is how ld.so runs a
//! binary it is handed (`ld.so /path/binary`) and how libraries load. `exec`
//! grants both; `map` grants only the mapping.

use aya_ebpf::programs::LsmContext;
use systrace_common::{access, protect, Hook};

use crate::{
    decision::{check_file, check_file_protection, check_unreadable, Detail, EACCES},
    files::file_object,
    guard,
    hook::{arg, lsm_program},
    kernel::{self, FilePtr},
    overlay,
    subject::current_subject,
};

const PROT_EXEC: u64 = 0x4;

lsm_program!(bprm_check_security = "bprm_check_security", Hook::BprmCheckSecurity, |ctx| {
    match current_subject() {
        Some(subject) => {
            let bprm: *const u8 = arg(&ctx, Hook::BprmCheckSecurity, 0);
            match unsafe { kernel::bprm_file(bprm).and_then(|file| file_object(file)) } {
                Ok(object) => check_file(&subject, Hook::BprmCheckSecurity, object, access::EXEC),
                Err(_) => check_unreadable(&subject, Hook::BprmCheckSecurity, access::EXEC, EACCES),
            }
        }
        None => 0,
    }
});

lsm_program!(mmap_file = "mmap_file", Hook::MmapFile, |ctx| {
    let file: FilePtr = arg(&ctx, Hook::MmapFile, 0);
    let prot: u64 = arg(&ctx, Hook::MmapFile, 1);
    map_code(&ctx, Hook::MmapFile, file, prot)
});

lsm_program!(file_mprotect = "file_mprotect", Hook::FileMprotect, |ctx| {
    let prot: u64 = arg(&ctx, Hook::FileMprotect, 1);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let vma: *const u8 = arg(&ctx, Hook::FileMprotect, 0);
    match unsafe { kernel::vma_file(vma) } {
        Ok(file) => map_code(&ctx, Hook::FileMprotect, file, prot),
        Err(_) => match current_subject() {
            Some(subject) => check_unreadable(&subject, Hook::FileMprotect, access::MAP, EACCES),
            None => 0,
        },
    }
});

/// Mapping `file` with `prot`: PROT_EXEC needs `map` (or `exec`) on it, and no
/// io_uring ring of another cgroup may be mapped at all. Anonymous memory has
/// no file to decide by.
#[inline(always)]
fn map_code(_ctx: &LsmContext, hook: Hook, file: FilePtr, prot: u64) -> i32 {
    if file.is_null() {
        return 0;
    }
    let Some(subject) = current_subject() else {
        return 0;
    };
    let Ok(object) = (unsafe { file_object(file) }).and_then(|own| overlay::user_facing(file, own)) else {
        return check_unreadable(&subject, hook, access::MAP, EACCES);
    };
    match guard::foreign_io_uring(&subject, file) {
        Ok(false) => {}
        Ok(true) => {
            let detail = Detail { detail: 0, target: 0, protection: protect::SYSTEM };
            return check_file_protection(&subject, hook, detail, object);
        }
        Err(_) => return check_unreadable(&subject, hook, access::MAP, EACCES),
    }
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    check_file(&subject, hook, object, access::MAP)
}

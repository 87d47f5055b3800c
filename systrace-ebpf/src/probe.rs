//! How the agent learns the identity the kernel gives a file: `stat()` reports
//! other device numbers than `inode->i_sb->s_dev` on btrfs subvolumes and
//! overlayfs, and inode rules must match what the hooks see. While compiling,
//! the agent attaches this program, names itself and a nonce in `PROBE`, and
//! stats each path; the program answers in `PROBE_RESULT`, once per nonce.

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use systrace_common::{Hook, ProbeResult};

use crate::{
    hook::{arg, lsm_program},
    kernel,
    maps::{PROBE, PROBE_RESULT},
};

lsm_program!(inode_getattr = "inode_getattr", Hook::InodeGetattr, |ctx| {
    let Some(request) = PROBE.get(0) else {
        return 0;
    };
    let (tgid, nonce) = (request.tgid, request.nonce);
    if tgid == 0 || (bpf_get_current_pid_tgid() >> 32) as u32 != tgid {
        return 0;
    }
    let path: kernel::PathPtr = arg(&ctx, Hook::InodeGetattr, 0);
    let Ok((dentry, _)) = (unsafe { kernel::path_parts(path) }) else {
        return 0;
    };
    let Ok(inode) = (unsafe { kernel::dentry_inode(dentry) }) else {
        return 0;
    };
    if inode.is_null() {
        return 0;
    }
    let Some(result) = PROBE_RESULT.get_ptr_mut(0) else {
        return 0;
    };
    // The first answer is the file the agent named: overlayfs asks again for
    // the file on its layer, which is not what the hooks see.
    if unsafe { (*result).nonce } == nonce {
        return 0;
    }
    if let Ok(id) = unsafe { kernel::inode_id(inode) } {
        unsafe { *result = ProbeResult { nonce, id } };
    }
    0
});

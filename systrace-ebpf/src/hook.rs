//! What every hook does before deciding: respect an earlier program's refusal.

/// Index of the previous BPF LSM program's return value in each hook's context: the
/// hook's argument count, which the agent reads from the kernel's BTF (it changed
/// between kernels for some hooks). Names match `offsets::ret_arg_global`.
macro_rules! ret_globals {
    ($($name:ident),* $(,)?) => {
        $(
            #[no_mangle]
            pub static $name: u64 = 0;
        )*
    };
}
ret_globals!(
    RET_FILE_OPEN,
    RET_BPRM_CHECK_SECURITY,
    RET_PATH_MKNOD,
    RET_PATH_MKDIR,
    RET_PATH_SYMLINK,
    RET_PATH_LINK,
    RET_PATH_UNLINK,
    RET_PATH_RMDIR,
    RET_PATH_RENAME,
    RET_PATH_TRUNCATE,
    RET_SOCKET_BIND,
    RET_SOCKET_CONNECT,
    RET_SOCKET_SENDMSG,
    RET_SOCKET_CREATE,
    RET_CAPABLE,
    RET_PTRACE_ACCESS_CHECK,
    RET_TASK_KILL,
    RET_BPF,
    RET_SB_MOUNT,
    RET_MOVE_MOUNT,
    RET_SB_UMOUNT,
    RET_KERNEL_MODULE_REQUEST,
    RET_KERNEL_LOAD_DATA,
    RET_KERNEL_READ_FILE,
    RET_TASK_ALLOC,
    RET_USERNS_CREATE,
    RET_UNIX_STREAM_CONNECT,
    RET_UNIX_MAY_SEND,
    RET_FILE_SEND_SIGIOTASK,
    RET_TASK_SETNICE,
    RET_TASK_SETSCHEDULER,
    RET_TASK_PRLIMIT,
);

/// Reads context slot N. One function per slot, never inlined: with the slots as
/// arms of one `match`, LLVM merges them into a single load at a computed offset,
/// which the verifier refuses for context pointers.
macro_rules! slot_readers {
    ($($name:ident = $n:expr),* $(,)?) => {
        $(
            #[inline(never)]
            pub(crate) fn $name(args: *const u64) -> i32 {
                unsafe { *args.add($n) as i32 }
            }
        )*
    };
}
slot_readers!(slot1 = 1, slot2 = 2, slot3 = 3, slot4 = 4, slot5 = 5, slot6 = 6);

/// The return value of the BPF LSM program that ran before this one on the same
/// hook (0 when none refused). The slot index is a frozen read-only global, so the
/// verifier walks only the arm that is in bounds for this kernel's hook.
macro_rules! previous_verdict {
    ($ctx:expr, $global:ident) => {{
        use aya_ebpf::EbpfContext as _;
        let args = $ctx.as_ptr() as *const u64;
        match $crate::kernel::global(&$crate::hook::$global) {
            1 => $crate::hook::slot1(args),
            2 => $crate::hook::slot2(args),
            3 => $crate::hook::slot3(args),
            4 => $crate::hook::slot4(args),
            5 => $crate::hook::slot5(args),
            6 => $crate::hook::slot6(args),
            _ => 0,
        }
    }};
}
pub(crate) use previous_verdict;

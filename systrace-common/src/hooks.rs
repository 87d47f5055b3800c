//! The LSM hooks systrace attaches to, in one declarative table.
//!
//! Each line gives the hook's event number, its name (which is also the
//! program's name in the object and `bpf_lsm_<name>` in the kernel's BTF), the
//! arguments its program reads, by their names in the kernel's prototype, and,
//! for hooks that only newer kernels have, the first version with it. The agent
//! resolves every argument's position (and the position of the previous
//! program's verdict, after the last argument) from the running kernel's BTF,
//! so a hook whose arguments moved between kernels (`inode_setattr` gained an
//! idmap in 6.3) needs no code of its own.

/// Hooks with room for their slots in the `HOOK_ARGS` global: ids are below this.
pub const HOOK_SLOTS: usize = 64;
/// Per hook in `HOOK_ARGS`: slot 0 holds the argument count (the position of the
/// previous program's verdict), slot 1 + k the position of argument k.
pub const HOOK_ARG_SLOTS: usize = 8;

macro_rules! lsm_hooks {
    ($($(#[doc = $doc:literal])* $variant:ident = $id:literal => $name:literal [$($arg:literal),*] $(since $since:literal)? $(($when:ident))?;)*) => {
        /// An LSM hook a systrace program attaches to; also the `hook` of its events.
        #[repr(u16)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Hook {
            $($(#[doc = $doc])* $variant = $id,)*
        }

        impl Hook {
            /// Every hook, in table order.
            pub const ALL: &'static [Hook] = &[$(Hook::$variant,)*];

            /// The LSM hook's name, which is also its program's name.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Hook::$variant => $name,)*
                }
            }

            /// Names of the arguments the program reads, in the order it reads them.
            pub const fn args(self) -> &'static [&'static str] {
                match self {
                    $(Hook::$variant => &[$($arg),*],)*
                }
            }

            /// The first kernel version with this hook, for hooks older kernels lack.
            pub const fn since(self) -> Option<&'static str> {
                match self {
                    $(Hook::$variant => lsm_hooks!(@since $($since)?),)*
                }
            }

            /// Whether the agent attaches this hook's program for as long as it
            /// enforces; the others only while it needs them.
            pub const fn enforcing(self) -> bool {
                match self {
                    $(Hook::$variant => lsm_hooks!(@enforcing $($when)?),)*
                }
            }
        }
    };
    (@since) => { None };
    (@since $since:literal) => { Some($since) };
    (@enforcing) => { true };
    (@enforcing on_demand) => { false };
}

lsm_hooks! {
    FileOpen = 1 => "file_open" ["file"];
    BprmCheckSecurity = 2 => "bprm_check_security" ["bprm"];
    PathMknod = 3 => "path_mknod" ["dir", "dentry"];
    PathMkdir = 4 => "path_mkdir" ["dir", "dentry"];
    PathSymlink = 5 => "path_symlink" ["dir", "dentry"];
    PathLink = 6 => "path_link" ["old_dentry", "new_dir", "new_dentry"];
    PathUnlink = 7 => "path_unlink" ["dir", "dentry"];
    PathRmdir = 8 => "path_rmdir" ["dir", "dentry"];
    PathRename = 9 => "path_rename" ["old_dir", "old_dentry", "new_dir", "new_dentry", "flags"];
    PathTruncate = 10 => "path_truncate" ["path"];
    SocketBind = 11 => "socket_bind" ["sock", "address", "addrlen"];
    SocketConnect = 12 => "socket_connect" ["sock", "address", "addrlen"];
    SocketSendmsg = 13 => "socket_sendmsg" ["sock", "msg"];
    SocketCreate = 14 => "socket_create" ["family", "type", "protocol", "kern"];
    Capable = 15 => "capable" ["cap", "opts"];
    PtraceAccessCheck = 16 => "ptrace_access_check" ["child", "mode"];
    TaskKill = 17 => "task_kill" ["p", "sig"];
    Bpf = 18 => "bpf" ["cmd"];
    SbMount = 19 => "sb_mount" ["flags"];
    MoveMount = 20 => "move_mount" [];
    SbUmount = 21 => "sb_umount" ["flags"];
    KernelModuleRequest = 22 => "kernel_module_request" [];
    KernelLoadData = 23 => "kernel_load_data" ["id"];
    KernelReadFile = 24 => "kernel_read_file" ["id"];
    TaskAlloc = 25 => "task_alloc" ["clone_flags"];
    UsernsCreate = 26 => "userns_create" [];
    UnixStreamConnect = 27 => "unix_stream_connect" ["other"];
    UnixMaySend = 28 => "unix_may_send" ["other"];
    FileSendSigiotask = 29 => "file_send_sigiotask" ["tsk", "sig"];
    TaskSetnice = 30 => "task_setnice" ["p", "nice"];
    TaskSetscheduler = 31 => "task_setscheduler" ["p"];
    TaskPrlimit = 32 => "task_prlimit" ["flags"];
    /// Truncation through an open file (ftruncate, open with O_TRUNC); before
    /// 6.2 both went through path_truncate.
    FileTruncate = 33 => "file_truncate" ["file"] since "6.2";
    PathChmod = 34 => "path_chmod" ["path"];
    PathChown = 35 => "path_chown" ["path"];
    /// Timestamps (utimes); mode, owner and size have path hooks of their own.
    InodeSetattr = 36 => "inode_setattr" ["dentry", "attr"];
    InodeSetxattr = 37 => "inode_setxattr" ["dentry", "name"];
    InodeRemovexattr = 38 => "inode_removexattr" ["dentry", "name"];
    /// POSIX ACLs; before 6.2 they were extended attributes.
    InodeSetAcl = 39 => "inode_set_acl" ["dentry"] since "6.2";
    InodeRemoveAcl = 40 => "inode_remove_acl" ["dentry"] since "6.2";
    MmapFile = 41 => "mmap_file" ["file", "prot"];
    FileMprotect = 42 => "file_mprotect" ["vma", "prot"];
    FileReceive = 43 => "file_receive" ["file"];
    FilePermission = 44 => "file_permission" ["file", "mask"];
    FileIoctl = 45 => "file_ioctl" ["file", "cmd"];
    SctpBindConnect = 46 => "sctp_bind_connect" ["sk", "optname", "address", "addrlen"];
    TaskSetioprio = 47 => "task_setioprio" ["p"];
    TaskMovememory = 48 => "task_movememory" ["p"];
    SbPivotroot = 49 => "sb_pivotroot" [];
    /// ioctl from a 32-bit process (6.1 has it as a stable backport).
    FileIoctlCompat = 50 => "file_ioctl_compat" ["file", "cmd"];
    /// Not a decision: while the agent compiles a policy, the identity the
    /// kernel gives each file a deny rule names (see `ProbeRequest`).
    InodeGetattr = 51 => "inode_getattr" ["path"] (on_demand);
    /// Only write permission on cgroup v2 process-moving files: where a move
    /// would take a process from (see `guard.rs`). Attached only while a
    /// policy in force could write such a file (`Compiled::needs_move_check`).
    InodePermission = 52 => "inode_permission" ["inode", "mask"] (on_demand);
    /// Not a decision: a dentry gets an inode, and answers the walk cache
    /// remembered for its address are stale.
    DInstantiate = 53 => "d_instantiate" ["dentry", "inode"];
    /// File attributes (flags such as append-only, immutable, nodump; the
    /// project id) through `vfs_fileattr_set`: the `file_setattr` system call
    /// (6.17), which reaches a file by name without the ioctl
    /// (`FS_IOC_SETFLAGS`, `FS_IOC_FSSETXATTR`) `file_ioctl` decides.
    InodeFileSetattr = 54 => "inode_file_setattr" ["dentry"] since "6.17";
}

impl Hook {
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|h| *h as u16 == v)
    }

    /// Index of the hook's first slot in the `HOOK_ARGS` global.
    pub const fn slot(self) -> usize {
        self as usize * HOOK_ARG_SLOTS
    }
}

const _: () = {
    let mut i = 0;
    while i < Hook::ALL.len() {
        assert!((Hook::ALL[i] as usize) < HOOK_SLOTS, "hook id beyond HOOK_SLOTS");
        assert!(Hook::ALL[i].args().len() < HOOK_ARG_SLOTS, "too many arguments for HOOK_ARG_SLOTS");
        i += 1;
    }
};

//! Reads of kernel structs at offsets the agent found in the running kernel's BTF.
//!
//! The agent overrides these read-only globals at load time (`EbpfLoader::override_global`).
//! They live in `.rodata`, which the loader freezes, so the verifier sees them as
//! constants. Names match `systrace_common::offsets::ALL`.

use aya_ebpf::helpers::bpf_probe_read_kernel;

macro_rules! globals {
    ($($name:ident),* $(,)?) => {
        $(
            #[no_mangle]
            static $name: u64 = 0;
        )*
    };
}
globals!(
    OFF_FILE_F_MODE,
    OFF_FILE_F_FLAGS,
    OFF_FILE_F_PATH,
    OFF_INODE_I_INO,
    OFF_INODE_I_SB,
    OFF_SUPER_BLOCK_S_DEV,
    OFF_PATH_MNT,
    OFF_PATH_DENTRY,
    OFF_DENTRY_D_PARENT,
    OFF_DENTRY_D_INODE,
    OFF_DENTRY_D_NAME_NAME,
    OFF_MOUNT_MNT,
    OFF_MOUNT_MNT_PARENT,
    OFF_MOUNT_MNT_MOUNTPOINT,
    OFF_LINUX_BINPRM_FILE,
    OFF_SOCKET_SK,
    OFF_SOCK_SK_PROTOCOL,
    OFF_MSGHDR_MSG_NAME,
    OFF_MSGHDR_MSG_NAMELEN,
    OFF_TASK_STRUCT_TGID,
    OFF_TASK_STRUCT_CGROUPS,
    OFF_CSS_SET_DFL_CGRP,
    OFF_CGROUP_KN,
    OFF_KERNFS_NODE_PARENT,
    OFF_KERNFS_NODE_ID,
    OFF_SUPER_BLOCK_S_MAGIC,
    OFF_VFSMOUNT_MNT_ROOT,
    OFF_UNIX_SOCK_ADDR,
    OFF_UNIX_ADDRESS_LEN,
    OFF_UNIX_ADDRESS_NAME,
);

#[inline(always)]
pub fn global(value: &u64) -> u64 {
    // Volatile: without it the compiler folds the initial 0 into the code.
    unsafe { core::ptr::read_volatile(value) }
}

#[inline(always)]
fn off(value: &u64) -> usize {
    global(value) as usize
}

#[inline(always)]
unsafe fn read<T>(base: *const u8, offset: usize) -> Result<T, i64> {
    bpf_probe_read_kernel(base.add(offset) as *const T).map_err(|e| e as i64)
}

/// Opaque kernel object pointers.
pub type FilePtr = *const u8;
pub type InodePtr = *const u8;
pub type DentryPtr = *const u8;
/// `struct vfsmount *`.
pub type VfsMountPtr = *const u8;
/// `struct path *`.
pub type PathPtr = *const u8;

/// `file->f_mode` (FMODE_* bits).
#[inline(always)]
pub unsafe fn file_mode(file: FilePtr) -> Result<u32, i64> {
    read(file, off(&OFF_FILE_F_MODE))
}

/// `file->f_flags` (O_* bits).
#[inline(always)]
pub unsafe fn file_flags(file: FilePtr) -> Result<u32, i64> {
    read(file, off(&OFF_FILE_F_FLAGS))
}

/// `&file->f_path`.
#[inline(always)]
pub unsafe fn file_path(file: FilePtr) -> PathPtr {
    file.add(off(&OFF_FILE_F_PATH))
}

/// `bprm->file`.
#[inline(always)]
pub unsafe fn bprm_file(bprm: *const u8) -> Result<FilePtr, i64> {
    read(bprm, off(&OFF_LINUX_BINPRM_FILE))
}

/// (`path->dentry`, `path->mnt`).
#[inline(always)]
pub unsafe fn path_parts(p: PathPtr) -> Result<(DentryPtr, VfsMountPtr), i64> {
    Ok((read(p, off(&OFF_PATH_DENTRY))?, read(p, off(&OFF_PATH_MNT))?))
}

/// `dentry->d_inode`; null for a negative dentry (a name not created yet).
#[inline(always)]
pub unsafe fn dentry_inode(dentry: DentryPtr) -> Result<InodePtr, i64> {
    read(dentry, off(&OFF_DENTRY_D_INODE))
}

/// `dentry->d_parent`.
#[inline(always)]
pub unsafe fn dentry_parent(dentry: DentryPtr) -> Result<DentryPtr, i64> {
    read(dentry, off(&OFF_DENTRY_D_PARENT))
}

/// `dentry->d_name.name`.
#[inline(always)]
pub unsafe fn dentry_name(dentry: DentryPtr) -> Result<*const u8, i64> {
    read(dentry, off(&OFF_DENTRY_D_NAME_NAME))
}

/// For the root dentry of the mount `mnt`: the dentry it is mounted on and the
/// parent mount's vfsmount. `None` at the root of the whole tree.
#[inline(always)]
pub unsafe fn mount_point(mnt: VfsMountPtr) -> Result<Option<(DentryPtr, VfsMountPtr)>, i64> {
    // `struct mount` embeds the vfsmount at a BTF-given offset.
    let mount = mnt.sub(off(&OFF_MOUNT_MNT));
    let parent_mount: *const u8 = read(mount, off(&OFF_MOUNT_MNT_PARENT))?;
    if parent_mount == mount {
        return Ok(None);
    }
    let dentry = read(mount, off(&OFF_MOUNT_MNT_MOUNTPOINT))?;
    Ok(Some((dentry, parent_mount.add(off(&OFF_MOUNT_MNT)))))
}

/// `mnt->mnt_root`: the dentry a mount shows at its mount point. For a bind
/// mount of a subdirectory it is that directory, not the file system's root.
#[inline(always)]
pub unsafe fn mount_root(mnt: VfsMountPtr) -> Result<DentryPtr, i64> {
    read(mnt, off(&OFF_VFSMOUNT_MNT_ROOT))
}

/// (`inode->i_sb->s_dev`, `inode->i_ino`): the identity rules are keyed by.
#[inline(always)]
pub unsafe fn inode_id(inode: InodePtr) -> Result<(u64, u64), i64> {
    let ino: u64 = read(inode, off(&OFF_INODE_I_INO))?;
    let sb: *const u8 = read(inode, off(&OFF_INODE_I_SB))?;
    let dev: u32 = read(sb, off(&OFF_SUPER_BLOCK_S_DEV))?;
    Ok((dev as u64, ino))
}

/// `socket->sk`.
#[inline(always)]
pub unsafe fn socket_sock(socket: *const u8) -> Result<*const u8, i64> {
    read(socket, off(&OFF_SOCKET_SK))
}

/// The name a unix socket is bound to: (`&addr->name.sun_path`, bytes of it in
/// use), or `None` for an unnamed socket (socketpair, never bound). `sk` is the
/// `struct sock` a `struct unix_sock` starts with.
#[inline(always)]
pub unsafe fn unix_name(sk: *const u8) -> Result<Option<(*const u8, u32)>, i64> {
    let addr: *const u8 = read(sk, off(&OFF_UNIX_SOCK_ADDR))?;
    if addr.is_null() {
        return Ok(None);
    }
    let len: i32 = read(addr, off(&OFF_UNIX_ADDRESS_LEN))?;
    // len counts sun_family (2 bytes) too.
    if len <= 2 {
        return Ok(None);
    }
    Ok(Some((addr.add(off(&OFF_UNIX_ADDRESS_NAME) + 2), (len - 2) as u32)))
}

/// `sock->sk->sk_protocol` (IPPROTO_*).
#[inline(always)]
pub unsafe fn socket_protocol(socket: *const u8) -> Result<u16, i64> {
    read(socket_sock(socket)?, off(&OFF_SOCK_SK_PROTOCOL))
}

/// (`msg->msg_name`, `msg->msg_namelen`): the destination a send names, if any.
#[inline(always)]
pub unsafe fn msghdr_name(msg: *const u8) -> Result<(*const u8, i32), i64> {
    Ok((read(msg, off(&OFF_MSGHDR_MSG_NAME))?, read(msg, off(&OFF_MSGHDR_MSG_NAMELEN))?))
}

/// `task->tgid`: the process id of a thread.
#[inline(always)]
pub unsafe fn task_tgid(task: *const u8) -> Result<u32, i64> {
    read(task, off(&OFF_TASK_STRUCT_TGID))
}

/// `task->cgroups->dfl_cgrp->kn`: the kernfs node of the task's cgroup v2 cgroup.
#[inline(always)]
pub unsafe fn task_cgroup_node(task: *const u8) -> Result<*const u8, i64> {
    let css_set: *const u8 = read(task, off(&OFF_TASK_STRUCT_CGROUPS))?;
    let cgroup: *const u8 = read(css_set, off(&OFF_CSS_SET_DFL_CGRP))?;
    read(cgroup, off(&OFF_CGROUP_KN))
}

/// (`kn->id`, `kn->parent`): a cgroup's id (what bpf_get_current_cgroup_id
/// returns) and its parent's node, null at the root.
#[inline(always)]
pub unsafe fn cgroup_node(kn: *const u8) -> Result<(u64, *const u8), i64> {
    Ok((read(kn, off(&OFF_KERNFS_NODE_ID))?, read(kn, off(&OFF_KERNFS_NODE_PARENT))?))
}

/// `inode->i_sb->s_magic`: which file system an inode lives on.
#[inline(always)]
pub unsafe fn inode_fs_magic(inode: InodePtr) -> Result<u64, i64> {
    let sb: *const u8 = read(inode, off(&OFF_INODE_I_SB))?;
    read(sb, off(&OFF_SUPER_BLOCK_S_MAGIC))
}

/// Reads `T` at `offset` in a kernel buffer (a `struct sockaddr` the kernel copied in).
#[inline(always)]
pub unsafe fn read_at<T>(base: *const u8, offset: usize) -> Result<T, i64> {
    read(base, offset)
}

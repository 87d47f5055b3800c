//! Reads of kernel structs at offsets the agent found in the running kernel's BTF.
//!
//! The agent overrides the read-only globals below at load time
//! (`EbpfLoader::override_global`). They live in `.rodata`, which the loader
//! freezes, so the verifier sees every offset (and every argument position) as
//! a constant and prunes what a kernel does not need. Indices come from the
//! tables in `systrace_common` ([`Off`], [`Hook`]).

use aya_ebpf::helpers::bpf_probe_read_kernel;
use systrace_common::{
    Hook, Off, ANY_MINOR, HOOK_ARG_SLOTS, HOOK_SLOTS, OFFSET_ABSENT, OFFSET_COUNT, OVERLAYFS_SUPER_MAGIC,
    RAW_DEVICE_SLOTS,
};

/// Byte offsets of kernel struct fields, indexed by [`Off`].
#[no_mangle]
static OFFSETS: [u64; OFFSET_COUNT] = [0; OFFSET_COUNT];

/// Which alternative form of a field this kernel has (see `OFFSET_FIELDS`).
#[no_mangle]
static OFFSET_FORMS: [u8; OFFSET_COUNT] = [0; OFFSET_COUNT];

/// Per hook ([`Hook::slot`]): the argument count, then the position of each
/// argument the hook's program reads.
#[no_mangle]
static HOOK_ARGS: [u8; HOOK_SLOTS * HOOK_ARG_SLOTS] = [0; HOOK_SLOTS * HOOK_ARG_SLOTS];

/// Character devices that reach hardware or the kernel's memory directly
/// (see `names::RAW_DEVICES`); unused slots are 0.
#[no_mangle]
static RAW_DEVICES: [u32; RAW_DEVICE_SLOTS] = [0; RAW_DEVICE_SLOTS];

/// Whether the device `rdev` is one of [`RAW_DEVICES`].
#[inline(always)]
pub fn raw_device(rdev: u32) -> bool {
    let any = (rdev & !ANY_MINOR) | ANY_MINOR;
    for i in 0..RAW_DEVICE_SLOTS {
        let d = unsafe { core::ptr::read_volatile(&RAW_DEVICES[i]) };
        if d != 0 && (d == rdev || d == any) {
            return true;
        }
    }
    false
}

/// `inode->i_rdev`: the device a device file stands for.
#[inline(always)]
pub unsafe fn inode_rdev(inode: InodePtr) -> Result<u32, i64> {
    field(inode, Off::INODE_I_RDEV)
}

/// The key of the path-component hash ([`systrace_common::name_hash`]).
#[no_mangle]
static NAME_KEY: [u64; 2] = [0; 2];

#[inline(always)]
pub fn off(o: Off) -> usize {
    // Volatile: without it the compiler folds the initial 0 into the code.
    unsafe { core::ptr::read_volatile(&OFFSETS[o as usize]) as usize }
}

/// Whether this kernel has an optional field (see `OFFSET_FIELDS`).
#[inline(always)]
pub fn has(o: Off) -> bool {
    off(o) as u64 != OFFSET_ABSENT
}

#[inline(always)]
pub fn form(o: Off) -> u8 {
    unsafe { core::ptr::read_volatile(&OFFSET_FORMS[o as usize]) }
}

/// Position of argument `k` (as the hook table lists them) in `hook`'s context.
#[inline(always)]
pub fn arg_index(hook: Hook, k: usize) -> u8 {
    unsafe { core::ptr::read_volatile(&HOOK_ARGS[hook.slot() + 1 + k]) }
}

/// Position of the previous program's verdict in `hook`'s context.
#[inline(always)]
pub fn ret_index(hook: Hook) -> u8 {
    unsafe { core::ptr::read_volatile(&HOOK_ARGS[hook.slot()]) }
}

#[inline(always)]
pub fn name_key() -> (u64, u64) {
    unsafe { (core::ptr::read_volatile(&NAME_KEY[0]), core::ptr::read_volatile(&NAME_KEY[1])) }
}

#[inline(always)]
pub unsafe fn read<T>(base: *const u8, offset: usize) -> Result<T, i64> {
    bpf_probe_read_kernel(base.add(offset) as *const T).map_err(|e| e as i64)
}

/// A load the verifier checks against the kernel's BTF and the JIT makes one
/// instruction with a fault handler (a fault or a null pointer reads as 0):
/// about a hundredth of a `bpf_probe_read_kernel` call. Only for pointers the
/// verifier knows the type of (a hook's arguments, `bpf_get_current_task_btf`,
/// and what is loaded from them this way) and only in the program's own code
/// or a static function it calls: a pointer that went through map memory, the
/// stack of a global function or arithmetic is a number to the verifier,
/// which then refuses the program.
#[inline(always)]
pub unsafe fn btf_load<T: Copy>(base: *const u8, offset: usize) -> T {
    core::ptr::read_volatile(base.add(offset) as *const T)
}

#[inline(always)]
unsafe fn field<T>(base: *const u8, o: Off) -> Result<T, i64> {
    read(base, off(o))
}

/// Opaque kernel object pointers.
pub type FilePtr = *const u8;
pub type InodePtr = *const u8;
pub type DentryPtr = *const u8;
/// `struct vfsmount *`; null where a hook does not say which mount.
pub type VfsMountPtr = *const u8;
/// `struct path *`.
pub type PathPtr = *const u8;
pub type TaskPtr = *const u8;

/// `file->f_mode` (FMODE_* bits).
#[inline(always)]
pub unsafe fn file_mode(file: FilePtr) -> Result<u32, i64> {
    field(file, Off::FILE_F_MODE)
}

/// `file->f_flags` (O_* bits).
#[inline(always)]
pub unsafe fn file_flags(file: FilePtr) -> Result<u32, i64> {
    field(file, Off::FILE_F_FLAGS)
}

/// `&file->f_path`.
#[inline(always)]
pub unsafe fn file_path(file: FilePtr) -> PathPtr {
    file.add(off(Off::FILE_F_PATH))
}

/// `file->f_path.dentry`.
#[inline(always)]
pub unsafe fn file_dentry(file: FilePtr) -> Result<DentryPtr, i64> {
    read(file, off(Off::FILE_F_PATH) + off(Off::PATH_DENTRY))
}

/// `file->f_inode`.
#[inline(always)]
pub unsafe fn file_inode(file: FilePtr) -> Result<InodePtr, i64> {
    field(file, Off::FILE_F_INODE)
}

/// `file->private_data`.
#[inline(always)]
pub unsafe fn file_private(file: FilePtr) -> Result<*const u8, i64> {
    field(file, Off::FILE_PRIVATE_DATA)
}

/// `bprm->file`.
#[inline(always)]
pub unsafe fn bprm_file(bprm: *const u8) -> Result<FilePtr, i64> {
    field(bprm, Off::LINUX_BINPRM_FILE)
}

/// (`path->dentry`, `path->mnt`).
#[inline(always)]
pub unsafe fn path_parts(p: PathPtr) -> Result<(DentryPtr, VfsMountPtr), i64> {
    Ok((field(p, Off::PATH_DENTRY)?, field(p, Off::PATH_MNT)?))
}

/// `dentry->d_inode`; null for a negative dentry (a name not created yet).
#[inline(always)]
pub unsafe fn dentry_inode(dentry: DentryPtr) -> Result<InodePtr, i64> {
    field(dentry, Off::DENTRY_D_INODE)
}

/// `dentry->d_parent`.
#[inline(always)]
pub unsafe fn dentry_parent(dentry: DentryPtr) -> Result<DentryPtr, i64> {
    field(dentry, Off::DENTRY_D_PARENT)
}

/// `dentry->d_sb`.
#[inline(always)]
pub unsafe fn dentry_sb(dentry: DentryPtr) -> Result<*const u8, i64> {
    field(dentry, Off::DENTRY_D_SB)
}

/// `dentry->d_name.name`.
#[inline(always)]
pub unsafe fn dentry_name(dentry: DentryPtr) -> Result<*const u8, i64> {
    field(dentry, Off::DENTRY_D_NAME_NAME)
}

/// (`dentry->d_name.name`, `dentry->d_name.len`).
#[inline(always)]
pub unsafe fn dentry_qstr(dentry: DentryPtr) -> Result<(*const u8, u32), i64> {
    Ok((field(dentry, Off::DENTRY_D_NAME_NAME)?, field(dentry, Off::DENTRY_D_NAME_LEN)?))
}

/// `SB_KERNMOUNT`: a file system the kernel mounted for itself.
const SB_KERNMOUNT: u32 = 1 << 22;

/// Whether `sb` is one of the kernel's own file systems (pipes, sockets,
/// anonymous inodes, memfds, pidfds, message queues), mounted with
/// `kern_mount` and reachable by no path. A private clone of a real file
/// system's mount (overlayfs's layers) is not: its files have paths elsewhere.
#[inline(always)]
pub unsafe fn sb_kernel_internal(sb: *const u8) -> Result<bool, i64> {
    let flags: u32 = field(sb, Off::SUPER_BLOCK_S_FLAGS)?;
    Ok(flags & SB_KERNMOUNT != 0)
}

/// `sb->s_root`.
#[inline(always)]
pub unsafe fn sb_root(sb: *const u8) -> Result<DentryPtr, i64> {
    field(sb, Off::SUPER_BLOCK_S_ROOT)
}

/// The mounts of a file system, one after the other: (first, end). `end` is
/// what [`next_mount_node`] returns after the last.
#[inline(always)]
pub unsafe fn sb_first_mount_node(sb: *const u8) -> Result<(*const u8, *const u8), i64> {
    if form(Off::MOUNT_MNT_INSTANCE) == 0 {
        // A list_head: its first field is `next`; the list ends at the head.
        let head = sb.add(off(Off::SUPER_BLOCK_S_MOUNTS));
        Ok((read(head, 0)?, head))
    } else {
        // A `struct mount *`, chained by `mnt_next_for_sb`; the list ends at null.
        let first: *const u8 = field(sb, Off::SUPER_BLOCK_S_MOUNTS)?;
        let node = if first.is_null() { first } else { first.add(off(Off::MOUNT_MNT_INSTANCE)) };
        Ok((node, core::ptr::null()))
    }
}

/// The mount node after `node`.
#[inline(always)]
pub unsafe fn next_mount_node(node: *const u8) -> Result<*const u8, i64> {
    let next: *const u8 = read(node, 0)?;
    if form(Off::MOUNT_MNT_INSTANCE) == 0 || next.is_null() {
        Ok(next)
    } else {
        Ok(next.add(off(Off::MOUNT_MNT_INSTANCE)))
    }
}

/// The `struct mount` whose list node (`mnt_instance` or `mnt_next_for_sb`) is `node`.
#[inline(always)]
pub unsafe fn mount_of_instance(node: *const u8) -> *const u8 {
    node.sub(off(Off::MOUNT_MNT_INSTANCE))
}

/// The `struct mount` a `struct vfsmount` is embedded in.
#[inline(always)]
pub unsafe fn mount_of(mnt: VfsMountPtr) -> *const u8 {
    mnt.sub(off(Off::MOUNT_MNT))
}

/// The `struct vfsmount` embedded in a `struct mount`.
#[inline(always)]
pub unsafe fn vfsmount_of(mount: *const u8) -> VfsMountPtr {
    mount.add(off(Off::MOUNT_MNT))
}

/// `mount->mnt_parent`.
#[inline(always)]
pub unsafe fn mount_parent(mount: *const u8) -> Result<*const u8, i64> {
    field(mount, Off::MOUNT_MNT_PARENT)
}

/// `mount->mnt_mountpoint`.
#[inline(always)]
pub unsafe fn mount_mountpoint(mount: *const u8) -> Result<DentryPtr, i64> {
    field(mount, Off::MOUNT_MNT_MOUNTPOINT)
}

/// `mount->mnt_ns`.
#[inline(always)]
pub unsafe fn mount_ns(mount: *const u8) -> Result<*const u8, i64> {
    field(mount, Off::MOUNT_MNT_NS)
}

/// `mnt->mnt_root`: the dentry a mount shows at its mount point. For a bind
/// mount of a subdirectory it is that directory, not the file system's root.
#[inline(always)]
pub unsafe fn mount_root(mnt: VfsMountPtr) -> Result<DentryPtr, i64> {
    field(mnt, Off::VFSMOUNT_MNT_ROOT)
}

/// `ns->root`: the mount at the root of a mount namespace.
#[inline(always)]
pub unsafe fn ns_root(ns: *const u8) -> Result<*const u8, i64> {
    field(ns, Off::MNT_NAMESPACE_ROOT)
}

/// `task->nsproxy->mnt_ns`.
#[inline(always)]
pub unsafe fn task_mnt_ns(task: TaskPtr) -> Result<*const u8, i64> {
    let nsproxy: *const u8 = field(task, Off::TASK_STRUCT_NSPROXY)?;
    field(nsproxy, Off::NSPROXY_MNT_NS)
}

/// (`inode->i_sb->s_dev`, `i_ino`, `i_generation`): the identity inode rules are keyed by.
#[inline(always)]
pub unsafe fn inode_id(inode: InodePtr) -> Result<systrace_common::FileId, i64> {
    let ino: u64 = field(inode, Off::INODE_I_INO)?;
    let generation: u32 = field(inode, Off::INODE_I_GENERATION)?;
    let sb: *const u8 = field(inode, Off::INODE_I_SB)?;
    let dev: u32 = field(sb, Off::SUPER_BLOCK_S_DEV)?;
    Ok(systrace_common::FileId { dev: dev as u64, ino, generation, _pad: 0 })
}

/// `inode->i_mode` (S_IF* type and permission bits).
#[inline(always)]
pub unsafe fn inode_mode(inode: InodePtr) -> Result<u16, i64> {
    field(inode, Off::INODE_I_MODE)
}

/// `inode->i_private`: for cgroupfs (kernfs) files, their `kernfs_node`.
#[inline(always)]
pub unsafe fn inode_private(inode: InodePtr) -> Result<*const u8, i64> {
    field(inode, Off::INODE_I_PRIVATE)
}

/// `inode->i_sb->s_magic`: which file system an inode lives on.
#[inline(always)]
pub unsafe fn inode_fs_magic(inode: InodePtr) -> Result<u64, i64> {
    let sb: *const u8 = field(inode, Off::INODE_I_SB)?;
    field(sb, Off::SUPER_BLOCK_S_MAGIC)
}

/// For a /proc inode, the `struct pid` it is about (null for global files).
#[inline(always)]
pub unsafe fn proc_inode_pid(inode: InodePtr) -> Result<*const u8, i64> {
    let proc_inode = inode.sub(off(Off::PROC_INODE_VFS_INODE));
    field(proc_inode, Off::PROC_INODE_PID)
}

/// The task a `struct pid` names (its PIDTYPE_PID task), or null.
#[inline(always)]
pub unsafe fn pid_task(pid: *const u8) -> Result<TaskPtr, i64> {
    // pid->tasks[PIDTYPE_PID].first is the task's pid_links[PIDTYPE_PID] node.
    let node: *const u8 = field(pid, Off::PID_TASKS)?;
    if node.is_null() {
        return Ok(core::ptr::null());
    }
    Ok(node.sub(off(Off::TASK_STRUCT_PID_LINKS)))
}

/// `socket->sk`.
#[inline(always)]
pub unsafe fn socket_sock(socket: *const u8) -> Result<*const u8, i64> {
    field(socket, Off::SOCKET_SK)
}

/// (`sk->sk_family`, `sk->sk_type`, `sk->sk_protocol`) of a `struct sock`.
#[inline(always)]
pub unsafe fn sock_kind(sk: *const u8) -> Result<(u16, u16, u16), i64> {
    Ok((field(sk, Off::SOCK_SKC_FAMILY)?, field(sk, Off::SOCK_SK_TYPE)?, field(sk, Off::SOCK_SK_PROTOCOL)?))
}

/// The local IPv4 address a socket is bound to (network order), 0 for any.
#[inline(always)]
pub unsafe fn sock_saddr4(sk: *const u8) -> Result<[u8; 4], i64> {
    field(sk, Off::SOCK_SKC_RCV_SADDR)
}

/// The name a unix socket is bound to: (`&addr->name.sun_path`, bytes of it in
/// use), or `None` for an unnamed socket (socketpair, never bound). `sk` is the
/// `struct sock` a `struct unix_sock` starts with.
#[inline(always)]
pub unsafe fn unix_name(sk: *const u8) -> Result<Option<(*const u8, u32)>, i64> {
    let addr: *const u8 = field(sk, Off::UNIX_SOCK_ADDR)?;
    if addr.is_null() {
        return Ok(None);
    }
    let len: i32 = field(addr, Off::UNIX_ADDRESS_LEN)?;
    // len counts sun_family (2 bytes) too.
    if len <= 2 {
        return Ok(None);
    }
    Ok(Some((addr.add(off(Off::UNIX_ADDRESS_NAME) + 2), (len - 2) as u32)))
}

/// (`msg->msg_name`, `msg->msg_namelen`): the destination a send names, if any.
#[inline(always)]
pub unsafe fn msghdr_name(msg: *const u8) -> Result<(*const u8, i32), i64> {
    Ok((field(msg, Off::MSGHDR_MSG_NAME)?, field(msg, Off::MSGHDR_MSG_NAMELEN)?))
}

/// `task->tgid`: the process id of a thread.
#[inline(always)]
pub unsafe fn task_tgid(task: TaskPtr) -> Result<u32, i64> {
    field(task, Off::TASK_STRUCT_TGID)
}

/// `task->real_parent`.
#[inline(always)]
pub unsafe fn task_real_parent(task: TaskPtr) -> Result<TaskPtr, i64> {
    field(task, Off::TASK_STRUCT_REAL_PARENT)
}

/// `file->f_cred`: the credentials the file was opened with.
#[inline(always)]
pub unsafe fn file_cred(file: FilePtr) -> Result<*const u8, i64> {
    field(file, Off::FILE_F_CRED)
}

/// For an overlayfs superblock, the credentials overlayfs works on its layers
/// with (`ovl_fs->creator_cred`); null for any other file system, or when
/// this kernel's overlayfs layout is unknown.
#[inline(always)]
pub unsafe fn overlay_creator(sb: *const u8) -> Result<*const u8, i64> {
    if !has(Off::OVL_FS_CREATOR_CRED) {
        return Ok(core::ptr::null());
    }
    let magic: u64 = field(sb, Off::SUPER_BLOCK_S_MAGIC)?;
    if magic != OVERLAYFS_SUPER_MAGIC {
        return Ok(core::ptr::null());
    }
    let ofs: *const u8 = field(sb, Off::SUPER_BLOCK_S_FS_INFO)?;
    if ofs.is_null() {
        return Ok(core::ptr::null());
    }
    field(ofs, Off::OVL_FS_CREATOR_CRED)
}

/// `&container_of(file, struct backing_file, file)->user_path`, for a file
/// known to be a backing file; null on kernels without backing files.
#[inline(always)]
pub unsafe fn backing_user_path(file: FilePtr) -> PathPtr {
    if !has(Off::BACKING_FILE_USER_PATH) {
        return core::ptr::null();
    }
    file.add(off(Off::BACKING_FILE_USER_PATH))
}

/// `task->cgroups->dfl_cgrp->kn`: the kernfs node of the task's cgroup v2 cgroup.
#[inline(always)]
pub unsafe fn task_cgroup_node(task: TaskPtr) -> Result<*const u8, i64> {
    let css_set: *const u8 = field(task, Off::TASK_STRUCT_CGROUPS)?;
    let cgroup: *const u8 = field(css_set, Off::CSS_SET_DFL_CGRP)?;
    field(cgroup, Off::CGROUP_KN)
}

/// (`kn->id`, `kn->parent`): a cgroup's id (what bpf_get_current_cgroup_id
/// returns) and its parent's node, null at the root.
#[inline(always)]
pub unsafe fn kernfs_node(kn: *const u8) -> Result<(u64, *const u8), i64> {
    Ok((field(kn, Off::KERNFS_NODE_ID)?, field(kn, Off::KERNFS_NODE_PARENT)?))
}

/// `kn->name`.
#[inline(always)]
pub unsafe fn kernfs_name(kn: *const u8) -> Result<*const u8, i64> {
    field(kn, Off::KERNFS_NODE_NAME)
}

/// (`cgrp->kn`, `cgrp->root->hierarchy_id`): 0 is the cgroup v2 hierarchy.
#[inline(always)]
pub unsafe fn cgroup_kn_and_hierarchy(cgrp: *const u8) -> Result<(*const u8, i32), i64> {
    let root: *const u8 = field(cgrp, Off::CGROUP_ROOT)?;
    Ok((field(cgrp, Off::CGROUP_KN)?, field(root, Off::CGROUP_ROOT_HIERARCHY_ID)?))
}

/// `attr->ia_valid` (ATTR_* bits).
#[inline(always)]
pub unsafe fn iattr_valid(attr: *const u8) -> Result<u32, i64> {
    field(attr, Off::IATTR_IA_VALID)
}

/// `vma->vm_file`.
#[inline(always)]
pub unsafe fn vma_file(vma: *const u8) -> Result<FilePtr, i64> {
    field(vma, Off::VM_AREA_STRUCT_VM_FILE)
}

/// For an io_uring file: the submission-queue thread of its ring, if the ring
/// has one (IORING_SETUP_SQPOLL). `Ok(None)`: no such thread.
#[inline(always)]
pub unsafe fn io_uring_sq_thread(file: FilePtr) -> Result<Option<TaskPtr>, i64> {
    let ctx = file_private(file)?;
    if ctx.is_null() {
        return Ok(None);
    }
    let sqd: *const u8 = field(ctx, Off::IO_RING_CTX_SQ_DATA)?;
    if sqd.is_null() {
        return Ok(None);
    }
    Ok(Some(field(sqd, Off::IO_SQ_DATA_THREAD)?))
}

/// Reads `T` at `offset` in a kernel buffer (a `struct sockaddr` the kernel copied in).
#[inline(always)]
pub unsafe fn read_at<T>(base: *const u8, offset: usize) -> Result<T, i64> {
    read(base, offset)
}

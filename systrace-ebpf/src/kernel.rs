//! Reads of kernel structs at offsets the agent found in the running kernel's BTF.
//!
//! The agent overrides these read-only globals at load time (`EbpfLoader::override_global`).
//! They live in `.rodata`, which the loader freezes, so the verifier sees them as
//! constants: that is what lets [`file_path_ptr`] hand a BTF-typed pointer to
//! `bpf_d_path`.

use aya_ebpf::helpers::bpf_probe_read_kernel;

macro_rules! offset {
    ($name:ident) => {
        #[no_mangle]
        static $name: u64 = 0;
    };
}
offset!(OFF_FILE_F_INODE);
offset!(OFF_FILE_F_MODE);
offset!(OFF_FILE_F_FLAGS);
offset!(OFF_FILE_F_PATH);
offset!(OFF_INODE_I_INO);
offset!(OFF_INODE_I_SB);
offset!(OFF_SUPER_BLOCK_S_DEV);

#[inline(always)]
fn off(global: &u64) -> usize {
    // Volatile: without it the compiler folds the initial 0 into the code.
    unsafe { core::ptr::read_volatile(global) as usize }
}

#[inline(always)]
unsafe fn read<T>(base: *const u8, offset: usize) -> Result<T, i64> {
    bpf_probe_read_kernel(base.add(offset) as *const T).map_err(|e| e as i64)
}

/// Opaque kernel object pointers.
pub type FilePtr = *const u8;
pub type InodePtr = *const u8;

/// `file->f_inode`.
#[inline(always)]
pub unsafe fn file_inode(file: FilePtr) -> Result<InodePtr, i64> {
    read::<InodePtr>(file, off(&OFF_FILE_F_INODE))
}

/// `file->f_mode` (FMODE_* bits).
#[inline(always)]
pub unsafe fn file_mode(file: FilePtr) -> Result<u32, i64> {
    read::<u32>(file, off(&OFF_FILE_F_MODE))
}

/// `file->f_flags` (O_* bits).
#[inline(always)]
pub unsafe fn file_flags(file: FilePtr) -> Result<u32, i64> {
    read::<u32>(file, off(&OFF_FILE_F_FLAGS))
}

/// `&file->f_path`, still a BTF-typed pointer in the verifier's eyes.
#[inline(always)]
pub unsafe fn file_path_ptr(file: FilePtr) -> *mut aya_ebpf::bindings::path {
    (file as *mut u8).add(off(&OFF_FILE_F_PATH)) as *mut aya_ebpf::bindings::path
}

/// (`inode->i_sb->s_dev`, `inode->i_ino`): the identity rules are keyed by.
#[inline(always)]
pub unsafe fn inode_id(inode: InodePtr) -> Result<(u64, u64), i64> {
    let ino = read::<u64>(inode, off(&OFF_INODE_I_INO))?;
    let sb = read::<*const u8>(inode, off(&OFF_INODE_I_SB))?;
    let dev = read::<u32>(sb, off(&OFF_SUPER_BLOCK_S_DEV))?;
    Ok((dev as u64, ino))
}

//! The walk's answers, remembered per CPU.
//!
//! A confined process opens the same few files again and again, and every
//! time the walk climbs the path and descends the rule tree: about 40 kernel
//! reads and a dozen hash lookups for a file three levels deep. What the walk
//! answers depends only on things the kernel itself versions, so an answer is
//! kept until one of them moves:
//!
//! - the names and parents of dentries: every rename (and every other move of
//!   a dentry) happens under the kernel's `rename_lock` seqlock, whose
//!   sequence is read before and after the walk and again at each use;
//! - the mount tree (mounts, unmounts, moves, pivot_root, propagation, the
//!   mounts a new namespace copies): under `mount_lock`, read the same way;
//! - the object's dentry being freed and its memory reused for another name:
//!   every dentry that gets an inode passes `d_instantiate`, whose program
//!   bumps an epoch of the dentry's address bucket ([`DENTRY_EPOCHS`]);
//! - the object's inode (a name unlinked and made again): its pointer is kept
//!   and compared;
//! - the rules: a reload writes new policy slots, never reused, so the slot
//!   is part of the key; the agent bumps [`CACHE_GENERATION`] after the only
//!   change it makes to a slot in force (following a replaced file's inode).
//!
//! - age: an answer is trusted for about a second at most ([`MAX_AGE_JIFFIES`]).
//!
//! Names being created (negative dentries) are never remembered.
//!
//! The sequences are read as the kernel's own lockless readers do on x86
//! (loads are not reordered with other loads there); the programs are built
//! and tested for x86-64 only.
//!
//! The cache is per CPU, direct-mapped, so no other CPU writes a slot while
//! this one reads it. A program preempted on the same CPU can be: writers take
//! the slot's `busy` flag, and readers accept a slot only if its sequence was
//! even and unchanged around their copy. A slot that is busy, torn or stale
//! is a miss: the walk runs as it always did.
//!
//! The addresses of the two seqlocks come from /proc/kallsyms; without them
//! (a kernel without the symbols, addresses hidden) the cache is off.

use core::intrinsics::{atomic_xadd, atomic_xchg, AtomicOrdering};

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_task,
        generated::{bpf_jiffies64, bpf_probe_read_kernel},
    },
    macros::map,
    maps::{Array, PerCpuArray},
    programs::LsmContext,
};
use systrace_common::{generation, Counter, Hook, Off};

use crate::{
    hook::arg,
    kernel,
    maps::count,
    walk::{Request, Resolution},
};

/// Slots per CPU: a power of two.
const SLOTS: u32 = 1024;
/// How long an answer is trusted at most, in jiffies: a second with Debian's
/// HZ=250 (a quarter of one at HZ=1000, 2.5 s at HZ=100). The versions it is
/// checked against are 32-bit counters a process could wrap given hours; this
/// leaves no such room, and files opened often are opened again well within
/// it. Jiffies, not `bpf_ktime_get_ns`: one load instead of a clock read, on
/// every hit.
const MAX_AGE_JIFFIES: u64 = 250;
/// Buckets of dentry addresses, each with its own epoch: a power of two.
const EPOCH_BUCKETS: u32 = 4096;

/// Kernel addresses of `rename_lock` and `mount_lock` (0: the cache is off).
#[no_mangle]
static SEQLOCKS: [u64; 2] = [0; 2];

/// Bumped by [`d_instantiate`] for every dentry that gets an inode, in the
/// bucket of the inode's number.
#[map(name = "DENTRY_EPOCHS")]
static DENTRY_EPOCHS: Array<u32> = Array::with_max_entries(EPOCH_BUCKETS, 0);

/// Indexed by [`systrace_common::generation`]: the walk cache's and the
/// subject cache's (`subject.rs`).
#[map(name = "CACHE_GENERATION")]
static CACHE_GENERATION: Array<u64> = Array::with_max_entries(generation::COUNT, 0);

/// What an answer is for, and the versions it was made under.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Stamp {
    dentry: u64,
    mnt: u64,
    ns: u64,
    policy: u32,
    /// The requested bits, the request's `how` at bit 24 and whether the
    /// policy has inode rules at bit 28.
    asked: u32,
    inode: u64,
    /// The inode's number: the slot index and the epoch bucket come from it
    /// (the fast path of `file_open` may do no arithmetic on the pointers).
    ino: u64,
    rename_seq: u32,
    mount_seq: u32,
    epoch: u32,
    generation: u32,
    /// What [`answer`] found (not part of the comparison).
    found: i32,
    _pad: u32,
    /// The seqlocks' sequences after the walk (see [`remember`]).
    now: [u32; 2],
}

impl Stamp {
    /// The caller's mount namespace, read by [`answer`]; null if unreadable.
    #[inline(always)]
    pub fn ns(&self) -> u64 {
        self.ns
    }

    /// Whether [`answer`] looked and found nothing: the walk's answer may be remembered.
    #[inline(always)]
    pub fn missed(&self) -> bool {
        self.found == MISSED
    }
}

#[repr(C)]
pub struct CacheSlot {
    busy: u64,
    /// Odd while a writer fills the slot.
    seq: u64,
    stamp: Stamp,
    res: Resolution,
    /// The object is on an overlay: the walk noted its credentials, and a
    /// hit notes them again (see `overlay::note`).
    overlay: u64,
    /// `bpf_jiffies64` when the answer was stored (see [`MAX_AGE_JIFFIES`]).
    made: u64,
}

#[map(name = "WALK_CACHE")]
static WALK_CACHE: PerCpuArray<CacheSlot> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Keeps the compiler from moving memory accesses across it (the BPF
/// backend has no fence instruction; an empty `asm!` that may touch memory
/// is the barrier). The JIT does not reorder loads and stores.
#[inline(always)]
pub fn barrier() {
    unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
}

/// Reads the sequence of one of [`SEQLOCKS`] into `dst` (map memory: the
/// stack of the deepest call chains has no room to spare); false when unknown
/// or a writer holds it.
#[inline(always)]
fn seqlock(i: usize, dst: *mut u32) -> bool {
    let addr = unsafe { core::ptr::read_volatile(&SEQLOCKS[i]) };
    if addr == 0 {
        return false;
    }
    let src = unsafe { (addr as *const u8).add(kernel::off(Off::SEQLOCK_SEQUENCE)) };
    if unsafe { bpf_probe_read_kernel(dst as *mut c_void, 4, src as *const c_void) } != 0 {
        return false;
    }
    (unsafe { core::ptr::read_volatile(dst) } & 1) == 0
}

/// The epoch bucket of dentries whose inode has number `ino`. A dentry reused
/// for another name of the same inode passes `d_instantiate` with it; one
/// reused for another inode fails the comparison of the inode anyway.
#[inline(always)]
fn epoch_bucket(ino: u64) -> u32 {
    (ino ^ (ino >> 12) ^ (ino >> 24)) as u32 & (EPOCH_BUCKETS - 1)
}

#[inline(always)]
fn epoch(ino: u64) -> u32 {
    DENTRY_EPOCHS.get(epoch_bucket(ino)).map(|e| unsafe { core::ptr::read_volatile(e) }).unwrap_or(0)
}

/// The current generation of cache `which` ([`systrace_common::generation`]).
#[inline(always)]
pub fn generation_of(which: u32) -> u64 {
    CACHE_GENERATION.get(which).map(|g| unsafe { core::ptr::read_volatile(g) }).unwrap_or(0)
}

#[inline(always)]
fn generation() -> u32 {
    // The walk cache's answers also expire (MAX_AGE_JIFFIES): 32 bits do.
    generation_of(generation::WALK) as u32
}

/// Makes what cache `which` holds stale; called after the change it follows.
#[inline(always)]
pub fn bump_generation(which: u32) {
    if let Some(g) = CACHE_GENERATION.get_ptr_mut(which) {
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(g, 1) };
    }
}

#[inline(always)]
fn index(ino: u64, policy: u32, asked: u32) -> u32 {
    let mut h = ino ^ ((policy as u64) << 40) ^ ((asked as u64) << 20);
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 32;
    h as u32 & (SLOTS - 1)
}

/// What [`answer`] found.
pub const ANSWERED: i32 = 1;
pub const MISSED: i32 = 0;
/// The cache cannot be used now (off, or a rename or mount change under way).
pub const UNUSABLE: i32 = -1;
/// [`ANSWERED`], and the object is on an overlay.
pub const ANSWERED_OVERLAY: i32 = 2;

/// The remembered answer for `request`, copied to `res`; on a miss, `out`
/// holds the stamp to [`remember`] the walk's answer under. A call of its
/// own, not inlined: its frame adds to the deepest chain of calls (which 6.1
/// bounds at 512 bytes) no more than the walk's own callees do.
/// Also reads the caller's mount namespace into `out` (see [`Stamp::ns`]),
/// which the walk needs whatever the cache says.
#[inline(never)]
pub fn answer(request: &Request, out: &mut Stamp, res: &mut Resolution) -> i32 {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    out.ns = unsafe { kernel::task_mnt_ns(task) }.map(|ns| ns as u64).unwrap_or(0);
    out.found = if out.ns == 0 || !stamp(request, out) {
        UNUSABLE
    } else {
        match lookup(out, res) {
            Some(true) => ANSWERED_OVERLAY,
            Some(false) => ANSWERED,
            None => MISSED,
        }
    };
    // Counted here, once per decision that reached the full path; the fast
    // path counts the hits it decides itself (see `files::open_fast`).
    match out.found {
        MISSED => count(Counter::WalkCacheMisses),
        UNUSABLE => {}
        _ => count(Counter::WalkCacheHits),
    }
    out.found
}

/// The stamp an answer for `request` would carry now, written to `out`;
/// false when the cache cannot be used (off, or a rename or mount change
/// under way).
#[inline(always)]
fn stamp(request: &Request, out: &mut Stamp) -> bool {
    let d_inode = unsafe { (request.dentry as *const u8).add(kernel::off(Off::DENTRY_D_INODE)) };
    if unsafe { bpf_probe_read_kernel(&raw mut out.inode as *mut c_void, 8, d_inode as *const c_void) } != 0 {
        return false;
    }
    // A negative dentry (a name about to be created) is never remembered:
    // freed and allocated again for another name, it passes nothing the
    // stamp compares (no inode, no d_instantiate), so an answer for creating
    // a name where the policy allows it would be replayed for one where it
    // does not.
    if out.inode == 0 {
        return false;
    }
    let i_ino = unsafe { (out.inode as *const u8).add(kernel::off(Off::INODE_I_INO)) };
    if unsafe { bpf_probe_read_kernel(&raw mut out.ino as *mut c_void, 8, i_ino as *const c_void) } != 0 {
        return false;
    }
    // Field by field: a whole `Stamp` built first would take stack space
    // the deepest call chain (6.1 adds its frames up to 512 bytes) lacks.
    out.dentry = request.dentry;
    out.mnt = request.mnt;
    set_request(out, request.policy, request.requested, request.how, request.inode_rules != 0)
}

/// The rest of a stamp whose object part is set: what is asked, and the
/// versions as they are now; false when a seqlock is held by a writer (or
/// unknown). One place for the slow path's stamp and the fast path's key,
/// which must come out identical for the same decision.
#[inline(always)]
fn set_request(out: &mut Stamp, policy: u32, requested: u32, how: u32, inode_rules: bool) -> bool {
    if !seqlock(0, &raw mut out.rename_seq) || !seqlock(1, &raw mut out.mount_seq) {
        return false;
    }
    out.policy = policy;
    out.asked = asked(requested, how, inode_rules);
    out.epoch = epoch(out.ino);
    out.generation = generation();
    true
}

/// [`Stamp::asked`].
#[inline(always)]
fn asked(requested: u32, how: u32, inode_rules: bool) -> u32 {
    requested | (how << 24) | ((inode_rules as u32) << 28)
}

#[inline(always)]
fn same(a: &Stamp, b: &Stamp) -> bool {
    // Word by word, each loaded when compared: field-wise comparisons LLVM
    // hoists into registers and spills, on a stack with no room to spare.
    let (a, b) = (a as *const Stamp as *const u64, b as *const Stamp as *const u64);
    for i in 0..STAMP_WORDS {
        if unsafe { core::ptr::read_volatile(a.add(i)) != core::ptr::read_volatile(b.add(i)) } {
            return false;
        }
    }
    true
}

/// The words of a [`Stamp`] that are compared: everything before `found`.
const STAMP_WORDS: usize = 8;
const _: () = assert!(core::mem::offset_of!(Stamp, found) == STAMP_WORDS * 8);

/// The remembered answer for `stamp`, copied to `res`; whether there was one,
/// and whether its object is on an overlay.
#[inline(always)]
fn lookup(stamp: &Stamp, res: &mut Resolution) -> Option<bool> {
    let slot = WALK_CACHE.get_ptr_mut(index(stamp.ino, stamp.policy, stamp.asked))?;
    let before = unsafe { core::ptr::read_volatile(&raw const (*slot).seq) };
    barrier();
    let hit = before & 1 == 0
        && same(unsafe { &(*slot).stamp }, stamp)
        && unsafe { bpf_jiffies64().wrapping_sub(core::ptr::read_volatile(&raw const (*slot).made)) } < MAX_AGE_JIFFIES;
    if hit {
        unsafe {
            res.allowed = (*slot).res.allowed;
            res.denied = (*slot).res.denied;
            res.audited = (*slot).res.audited;
            res.unresolved = (*slot).res.unresolved;
            res.undecided = (*slot).res.undecided;
            res.anchored = (*slot).res.anchored;
            res.id = (*slot).res.id;
            res.mnt = (*slot).res.mnt;
        }
    }
    let overlay = unsafe { core::ptr::read_volatile(&raw const (*slot).overlay) } != 0;
    barrier();
    let after = unsafe { core::ptr::read_volatile(&raw const (*slot).seq) };
    if hit && after == before {
        return Some(overlay);
    }
    if hit {
        // Torn by a writer that preempted this program: not an answer.
        *res = Resolution::default();
    }
    None
}

/// Remembers `res`, the walk's answer for `stamp`, if neither seqlock moved
/// while the walk ran and no other program on this CPU is writing the slot.
/// A call of its own, like [`answer`].
#[inline(never)]
pub fn remember(stamp: &mut Stamp, res: &Resolution, overlay: bool) {
    if !seqlock(0, &raw mut stamp.now[0]) || !seqlock(1, &raw mut stamp.now[1]) {
        return;
    }
    if stamp.now[0] != stamp.rename_seq || stamp.now[1] != stamp.mount_seq {
        return;
    }
    let Some(slot) = WALK_CACHE.get_ptr_mut(index(stamp.ino, stamp.policy, stamp.asked)) else {
        return;
    };
    unsafe {
        write_slot(&raw mut (*slot).busy, &raw mut (*slot).seq, || {
            // Word by word, the words [`same`] compares: all of the key and versions.
            let (to, from) = (&raw mut (*slot).stamp as *mut u64, stamp as *const Stamp as *const u64);
            for i in 0..STAMP_WORDS {
                core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i)));
            }
            (*slot).res.allowed = res.allowed;
            (*slot).res.denied = res.denied;
            (*slot).res.audited = res.audited;
            (*slot).res.unresolved = res.unresolved;
            (*slot).res.undecided = res.undecided;
            (*slot).res.anchored = res.anchored;
            (*slot).res.id = res.id;
            (*slot).res.mnt = res.mnt;
            (*slot).overlay = overlay as u64;
            (*slot).made = bpf_jiffies64();
        });
    }
}

/// Fills a per-CPU slot with `fill` under its `busy` flag and sequence `seq`
/// (see the module's notes): nothing happens while another program on this
/// CPU writes it; readers see the sequence odd meanwhile, and changed after.
#[inline(always)]
pub unsafe fn write_slot(busy: *mut u64, seq: *mut u64, fill: impl FnOnce()) {
    if atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(busy, 1) != 0 {
        return;
    }
    let before = core::ptr::read_volatile(seq);
    core::ptr::write_volatile(seq, before | 1);
    barrier();
    fill();
    barrier();
    core::ptr::write_volatile(seq, (before | 1) + 1);
    core::ptr::write_volatile(busy, 0);
}

/// The fast path of `file_open` (see `files::open_fast`): the remembered
/// answer for an object given by the pointers the program read with BTF-typed
/// loads, copied to `res`. `key` is filled here but for `dentry`, `mnt`,
/// `ns`, `inode` and `ino`, which the caller set. Uses only comparisons on
/// those pointers: the verifier refuses arithmetic on them.
///
/// The key is built whole, each field from a value, as [`set_request`]
/// fills the slow path's stamp from the same functions: zeros stored field
/// by field would be merged into a call of the BPF target's `memset`, a loop
/// of one-byte stores costing a quarter of a confined open.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn peek(
    dentry: u64,
    mnt: u64,
    ns: u64,
    inode: u64,
    ino: u64,
    policy: u32,
    requested: u32,
    inode_rules: bool,
    res: &mut Resolution,
) -> bool {
    let mut seqs = [0u32; 2];
    if !seqlock(0, &raw mut seqs[0]) || !seqlock(1, &raw mut seqs[1]) {
        return false;
    }
    let key = Stamp {
        dentry,
        mnt,
        ns,
        policy,
        asked: asked(requested, crate::walk::OWN_INODE, inode_rules),
        inode,
        ino,
        rename_seq: seqs[0],
        mount_seq: seqs[1],
        epoch: epoch(ino),
        generation: generation(),
        found: MISSED,
        _pad: 0,
        now: seqs,
    };
    matches!(lookup(&key, res), Some(false))
}

/// Every dentry that gets an inode: a new name, or a dentry's memory reused
/// for another. Answers remembered for inodes whose numbers share its
/// inode's bucket are stale from here on. Not a decision; returns nothing to the kernel.
#[aya_ebpf::macros::lsm(hook = "d_instantiate")]
#[inline(always)]
pub fn d_instantiate(ctx: LsmContext) -> i32 {
    let inode: *const u8 = arg(&ctx, Hook::DInstantiate, 1);
    // A BTF-typed load (the verifier knows the argument's type): null, for a
    // negative dentry, reads as 0.
    let ino: u64 = unsafe { kernel::btf_load(inode, kernel::off(Off::INODE_I_INO)) };
    if let Some(e) = DENTRY_EPOCHS.get_ptr_mut(epoch_bucket(ino)) {
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(e, 1) };
    }
    0
}

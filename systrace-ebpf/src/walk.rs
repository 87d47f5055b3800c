//! What the file rules say about an object: the rules anchored on the names
//! along its path, and the deny rules that follow its inode.
//!
//! Rules match names, so a rule keeps deciding for whatever file bears its name
//! now (an editor's atomic replace, logrotate, a swapped directory), and the
//! kernel needs no word from the agent when files come and go. The path is the
//! one the process sees: the walk climbs from the object through its parents
//! and, at the root of each mount, to where that mount is attached, up to the
//! root of the caller's mount namespace (as `d_path` does, and as AppArmor and
//! Landlock decide). Two passes:
//!
//! 1. **Climb** from the object to the namespace root, remembering the last
//!    [`RING`] directories passed (the top of the path, where rules can be
//!    anchored: a rule has at most that many components). A file may sit at
//!    any depth up to [`MAX_WALK_DEPTH`]. At each mount root on the way the
//!    inode deny rules are looked up, so a bind mount of a denied tree is no
//!    way around them.
//! 2. **Descend** from the root through the rule tree (`NAME_RULES`, keyed by
//!    the parent's node and a keyed hash of the name), as far as it has nodes
//!    for this path. The deepest rule covering a bit decides it. At the
//!    object's directory, rules by extension (`DIR/*.log`) decide after the
//!    directory's own and before the object's exact rule.
//!
//! When the path cannot be known (a dentry cut off from its tree, a mount the
//! caller's namespace does not have, a tree deeper than the bound) the walk is
//! *undecided*: no allow rule is trusted and every deny rule is assumed to apply.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_kernel};
use systrace_common::{
    extension_hash_words, node_flags, FileId, FileRule, InodeKey, NameKey, RuleSet, SipHasher13, MAX_RULE_DEPTH,
    MAX_WALK_DEPTH,
};

use core::intrinsics::{atomic_xchg, AtomicOrdering};

use aya_ebpf::{macros::map, maps::PerCpuArray};
use systrace_common::Counter;

use crate::{
    cache,
    kernel::{self, DentryPtr, VfsMountPtr},
    maps::{count, INODE_RULES, NAME_RULES},
    subject::Subject,
};

/// Walks one CPU can have under way at once: one, and more only when a
/// program is preempted in the middle of one and another starts. Each walk
/// takes a slot of its own, so none can overwrite another's state.
const WALK_SLOTS: u32 = 4;

/// A walk's state and whether a program holds it. Too big for the 512-byte
/// BPF stack together with what the hooks keep there.
#[repr(C)]
pub struct WalkSlot {
    busy: u64,
    walk: Walk,
    /// The answer, for callers that read it in place ([`walk_with`]).
    res: Resolution,
}

#[map(name = "WALKS")]
static WALKS: PerCpuArray<WalkSlot> = PerCpuArray::with_max_entries(WALK_SLOTS, 0);

/// A free walk slot of this CPU, taken; `None` if all are held.
#[inline(always)]
fn take_slot() -> Option<(u32, *mut WalkSlot)> {
    for i in 0..WALK_SLOTS {
        if let Some(slot) = WALKS.get_ptr_mut(i) {
            if unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(&raw mut (*slot).busy, 1) } == 0 {
                return Some((i, slot));
            }
        }
    }
    None
}

#[inline(always)]
fn give_back(i: u32) {
    if let Some(slot) = WALKS.get_ptr_mut(i) {
        unsafe { core::ptr::write_volatile(&raw mut (*slot).busy, 0) };
    }
}

/// What the loop callbacks get: the walk's state, in its map slot.
#[repr(C)]
struct WalkRef {
    walk: *mut Walk,
}

/// Directories at the top of a path the climb remembers: a power of two.
const RING: usize = MAX_RULE_DEPTH;
/// Mounts of one file system looked at when searching for the one in the
/// caller's namespace.
const MOUNT_SCAN: u32 = 256;
/// Loop steps for the climb: one per level, plus one per mount crossed.
const CLIMB_STEPS: u32 = MAX_WALK_DEPTH + 256;
/// `mnt_ns` of the kernel's internal mounts (pipes, sockets, memfds): `MNT_NS_INTERNAL`.
const MNT_NS_INTERNAL: u64 = -22i64 as u64;
/// `policy_flags::INODE_RULES`.
const INODE_RULES_FLAG: u32 = systrace_common::policy_flags::INODE_RULES;

const RUNNING: u32 = 0;
/// The root of the caller's namespace was reached: the path is known.
const DONE: u32 = 1;
/// The path cannot be known.
const UNDECIDED: u32 = 2;
/// A kernel read failed.
const FAILED: u32 = 3;
/// At the root of a file system the walk has no mount for: find the one in
/// the caller's namespace.
const NEED_MOUNT: u32 = 4;
/// An object of the kernel's own (a memfd, a pipe): it has no path, no rule
/// can name it, the policy's default decides.
const PATHLESS: u32 = 5;

/// The state for a walk that reached the root of one of the kernel's internal
/// mounts at `dentry`: pathless if the file system is the kernel's own,
/// undecided for a real one (overlayfs's private clones of its layers).
#[inline(always)]
unsafe fn internal(dentry: DentryPtr) -> Result<u32, i64> {
    Ok(if kernel::sb_kernel_internal(kernel::dentry_sb(dentry)?)? { PATHLESS } else { UNDECIDED })
}

/// A zero the verifier cannot see through. Before Linux 6.8 the verifier checked a
/// `bpf_loop` callback as if it ran once, from the caller's initial values, then
/// hard-wired the branches that single pass never took. Loop state that starts
/// from this writable global (.bss, not frozen) is unknown to the verifier, so
/// every branch stays.
#[no_mangle]
static mut OPAQUE_ZERO: u64 = 0;

#[inline(always)]
pub fn opaque_zero() -> u64 {
    unsafe { core::ptr::read_volatile(&raw const OPAQUE_ZERO) }
}

/// What an operation is about: a name in the tree, seen through a mount.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Object {
    /// The file's dentry; for a name being created, the new (negative) dentry.
    pub dentry: DentryPtr,
    /// The mount the process reached it through; null when the hook does not
    /// say (inode hooks): the file system's mount in the caller's namespace is used.
    pub mnt: VfsMountPtr,
}

/// The per-bit outcome of the rules for an object.
#[repr(C)]
#[derive(Default)]
pub struct Resolution {
    pub allowed: u32,
    pub denied: u32,
    pub audited: u32,
    /// Bits no rule decided: the policy's default applies.
    pub unresolved: u32,
    /// The path could not be known; see the module's documentation.
    pub undecided: bool,
    /// Rules are anchored at the object's name or below it (the rule tree
    /// has a node for its full path): what they decide stays with the name.
    pub anchored: bool,
    pub id: FileId,
    /// The mount the walk found for an object that came without one.
    pub mnt: u64,
}

/// State of both passes, shared with the `bpf_loop` callbacks.
#[repr(C)]
struct Walk {
    dentry: u64,
    mnt: u64,
    mnt_root: u64,
    ns: u64,
    ns_root: u64,
    /// Components recorded (levels climbed): the object is level 0.
    levels: u32,
    /// 1 when deciding for a child of the object (see [`Request::child`]).
    child: u32,
    /// The descent reached the object's own name.
    anchored: u32,
    state: u32,
    policy: u32,
    inode_rules: u32,
    requested: u32,
    /// Deny bits of the object's own inode rules.
    inode_deny: u32,
    /// Deny bits of the inode rules of the mount roots passed on the way (a
    /// directory reached through a bind mount): the rules of the object's own
    /// name, more specific, still decide the bits they name.
    mount_deny: u32,
    /// The bits the object's own name's exact rule decides.
    exact: u32,
    /// Descent: the rule tree's node for the path so far, and the depth of the
    /// next component (1 is the top one).
    node: u32,
    depth: u32,
    decided: u32,
    allowed: u32,
    denied: u32,
    audited: u32,
    k0: u64,
    k1: u64,
    /// The search for a mount (see [`find_mount`]): the current list node,
    /// the value that ends the list, and what was found.
    scan_node: u64,
    scan_end: u64,
    scan_found: u64,
    /// The hasher of one name (see [`name_hash`]).
    hasher: SipHasher13,
    /// The object's dentry (the climb's [`RING`] may no longer hold it).
    leaf: u64,
    /// The last 16 bytes of the object's name (see [`extension_hash`]).
    window: [u64; 2],
    /// The keys the climb and the descent look up: here, not on the stack of
    /// their callbacks, which the 6.1 verifier adds to the hooks' frames.
    key: NameKey,
    inode_key: InodeKey,
    /// Dentries by level, modulo RING: the last RING levels climbed.
    ring: [u64; RING],
    /// What the answer is remembered under (see [`crate::cache`]).
    stamp: cache::Stamp,
    /// The request, copied here: read from the slot rather than kept in
    /// registers across the cache's calls, which LLVM would spill to the
    /// stack of hooks whose call chains 6.1 bounds at 512 bytes.
    req: Request,
}

impl Walk {
    /// Lets `set` decide the requested bits it covers, overriding what less
    /// specific rules said.
    #[inline(always)]
    fn set(&mut self, set: &RuleSet) {
        let c = set.covers() & self.requested;
        self.decided |= c;
        self.denied = (self.denied & !c) | (c & set.deny);
        self.allowed = (self.allowed & !c) | (c & !set.deny);
        self.audited = (self.audited & !c) | (c & set.audit & !set.deny);
    }

    /// The rules of a node `level` levels above the object (0: the object),
    /// or above the object's child when the walk decides for one.
    #[inline(always)]
    fn apply(&mut self, rule: &FileRule, level: u32) {
        let level = level + (self.child & 1);
        if level >= 1 {
            self.set(&rule.subtree);
        }
        if level == 1 {
            self.set(&rule.children);
        }
        if level == 0 {
            self.set(&rule.exact);
            self.exact = rule.exact.covers() & self.requested;
        }
    }

    /// Inode deny rules of the directory `level` levels above the object: its
    /// own, and, when it holds the object, those by the object's extension
    /// (keyed by the directory's identity with the extension's hash in `ino`,
    /// see [`systrace_common::InodeKey::for_extension`]).
    #[inline(always)]
    unsafe fn inode_rules_at(&mut self, dentry: DentryPtr, level: u32) -> Result<(), i64> {
        let inode = kernel::dentry_inode(dentry)?;
        if inode.is_null() {
            return Ok(());
        }
        let id = kernel::inode_id(inode)?;
        self.inode_key = InodeKey { policy: self.policy, generation: id.generation, dev: id.dev, ino: id.ino };
        if let Some(rule) = INODE_RULES.get_ptr(&self.inode_key) {
            let mut deny = (*rule).subtree.deny;
            if level == 1 {
                deny |= (*rule).children.deny;
            }
            self.mount_deny |= deny & self.requested;
        }
        // Deny rules by extension of this directory, for the object in it.
        if level == 1 && self.child == 0 {
            if let Some(hash) = extension_hash(self)? {
                self.inode_key.ino ^= hash;
                if let Some(rule) = INODE_RULES.get_ptr(&self.inode_key) {
                    self.mount_deny |= (*rule).children.deny & self.requested;
                }
            }
        }
        Ok(())
    }
}

#[inline(never)]
extern "C" fn climb_step(_index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *(*(ctx as *mut WalkRef)).walk };
    match unsafe { climb(w) } {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(_) => {
            w.state = FAILED;
            1
        }
    }
}

/// One step up. Returns whether to continue.
#[inline(always)]
unsafe fn climb(w: &mut Walk) -> Result<bool, i64> {
    if w.state != RUNNING {
        return Ok(false);
    }
    let dentry = w.dentry as DentryPtr;
    if w.mnt != 0 && w.dentry == w.mnt_root {
        // The root of a mount: continue where it is attached. A bind mount's
        // root is a directory of another tree; its inode's deny rules apply here.
        let mount = kernel::mount_of(w.mnt as VfsMountPtr);
        if w.inode_rules != 0 && w.levels + w.child > 0 {
            w.inode_rules_at(dentry, w.levels + (w.child & 1))?;
        }
        let parent = kernel::mount_parent(mount)?;
        if parent == mount {
            w.state = if mount as u64 == w.ns_root {
                DONE
            } else if kernel::mount_ns(mount)? as u64 == MNT_NS_INTERNAL {
                internal(dentry)?
            } else {
                // A mount of another namespace, or detached (open_tree, lazy umount).
                UNDECIDED
            };
            return Ok(false);
        }
        w.dentry = kernel::mount_mountpoint(mount)? as u64;
        let parent_mnt = kernel::vfsmount_of(parent);
        w.mnt = parent_mnt as u64;
        w.mnt_root = kernel::mount_root(parent_mnt)? as u64;
        return Ok(true);
    }
    let parent = kernel::dentry_parent(dentry)?;
    if parent == dentry {
        // A root without passing the mount's root: a pipe, socket or memfd
        // (whose dentries stand alone on the kernel's internal mounts), or the
        // hook gave no mount, or the file moved out from under a bind mount's
        // root, or the dentry is cut off from its tree (open_by_handle_at).
        // Internal mounts of real file systems (overlayfs's private clones of
        // its layers, which fanotify hands out descriptors on) are not
        // pathless: their files have names the rules speak of.
        if w.mnt != 0 && kernel::mount_ns(kernel::mount_of(w.mnt as VfsMountPtr))? as u64 == MNT_NS_INTERNAL {
            w.state = internal(dentry)?;
            return Ok(false);
        }
        let root = kernel::sb_root(kernel::dentry_sb(dentry)?)?;
        w.state = if root == dentry { NEED_MOUNT } else { UNDECIDED };
        return Ok(false);
    }
    if w.levels >= MAX_WALK_DEPTH {
        w.state = UNDECIDED;
        return Ok(false);
    }
    w.ring[(w.levels as usize) & (RING - 1)] = w.dentry;
    if w.levels == 0 {
        // The name the object is seen by (a file bind-mounted over a name is
        // seen by that name, not its own).
        w.leaf = w.dentry;
    }
    w.levels += 1;
    w.dentry = parent as u64;
    Ok(true)
}

#[inline(never)]
extern "C" fn scan_step(_index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *(*(ctx as *mut WalkRef)).walk };
    match unsafe { scan(w) } {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(_) => {
            w.state = FAILED;
            1
        }
    }
}

/// One mount of the file system: is it its whole mount in the caller's namespace?
#[inline(always)]
unsafe fn scan(w: &mut Walk) -> Result<bool, i64> {
    if w.scan_node == w.scan_end || w.scan_node == 0 {
        return Ok(false);
    }
    let mount = kernel::mount_of_instance(w.scan_node as *const u8);
    if kernel::mount_ns(mount)? as u64 == w.ns && kernel::mount_root(kernel::vfsmount_of(mount))? as u64 == w.dentry {
        w.scan_found = mount as u64;
        return Ok(false);
    }
    w.scan_node = kernel::next_mount_node(w.scan_node as *const u8)? as u64;
    Ok(true)
}

/// For a walk stopped at the root of a file system (`NEED_MOUNT`): the mount of
/// the whole file system in the caller's namespace, or 0.
#[inline(always)]
unsafe fn find_mount(w: &mut Walk, walk: *mut c_void) -> Result<u64, i64> {
    let sb = kernel::dentry_sb(w.dentry as DentryPtr)?;
    let (first, end) = kernel::sb_first_mount_node(sb)?;
    w.scan_node = first as u64;
    w.scan_end = end as u64;
    w.scan_found = opaque_zero();
    bpf_loop(MOUNT_SCAN, scan_step as *mut c_void, walk, 0);
    if w.state == FAILED {
        return Err(-1);
    }
    Ok(w.scan_found)
}

#[inline(never)]
extern "C" fn descend_step(_index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *(*(ctx as *mut WalkRef)).walk };
    match unsafe { descend(w) } {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(_) => {
            w.state = FAILED;
            1
        }
    }
}

/// One step down the rule tree. Returns whether to continue.
#[inline(always)]
unsafe fn descend(w: &mut Walk) -> Result<bool, i64> {
    if w.depth > w.levels || w.depth as usize > RING {
        return Ok(false);
    }
    let level = w.levels - w.depth;
    // Depth 0 is the root: `{parent: 0, hash: 0}`.
    let hash = if w.depth == 0 { 0 } else { name_hash(w, w.ring[(level as usize) & (RING - 1)] as DentryPtr)? };
    w.key = NameKey { policy: w.policy, parent: w.node, hash };
    let Some(node) = NAME_RULES.get_ptr(&w.key) else {
        return Ok(false);
    };
    w.apply(&(*node).rule, level);
    let (id, flags) = ((*node).node, (*node).flags);
    extension_rules(w, id, flags, level)?;
    w.node = id;
    w.depth += 1;
    Ok(true)
}

/// The rules by extension of the node `id` (with `flags`) `level` levels
/// above the object, when it is the object's directory and has any.
#[inline(always)]
unsafe fn extension_rules(w: &mut Walk, id: u32, flags: u32, level: u32) -> Result<(), i64> {
    if flags & node_flags::EXTENSIONS == 0 || level != 1 || w.child != 0 {
        return Ok(());
    }
    let Some(hash) = extension_hash(w)? else {
        return Ok(());
    };
    w.key = NameKey { policy: w.policy, parent: id, hash };
    if let Some(rules) = NAME_RULES.get_ptr(&w.key) {
        w.set(&(*rules).rule.children);
    }
    Ok(())
}

/// [`systrace_common::extension_hash`] of the object's extension, found in
/// the last 16 bytes of its name; `None` when it has none a rule can name.
#[inline(always)]
unsafe fn extension_hash(w: &mut Walk) -> Result<Option<u64>, i64> {
    let (name, len) = kernel::dentry_qstr(w.leaf as DentryPtr)?;
    if len > 255 {
        return Err(-1);
    }
    let n = if len >= 16 { 16 } else { len };
    w.window = [0, 0];
    if n == 16 {
        w.window[0] = kernel::read_at(name, (len - 16) as usize)?;
        w.window[1] = kernel::read_at(name, (len - 8) as usize)?;
    } else if n > 0 {
        let rc = bpf_probe_read_kernel(w.window.as_mut_ptr() as *mut c_void, n & 15, name as *const c_void);
        if rc != 0 {
            return Err(rc);
        }
    }
    let (lo, hi) = (w.window[0], w.window[1]);
    let mut dot = 16u32;
    for i in 0..16u32 {
        if i >= n {
            break;
        }
        let pos = (n - 1 - i) & 15;
        let byte = if pos < 8 { lo >> (8 * pos) } else { hi >> (8 * (pos - 8)) };
        if byte & 0xff == b'.' as u64 {
            dot = pos;
            break;
        }
    }
    // No dot, or a dot ending the name, or one too far back for a rule.
    if dot >= 15 || dot + 1 >= n {
        return Ok(None);
    }
    // The extension starts `start` bytes into the window: 1 to 15.
    let start = (dot + 1) & 15;
    let (ext_lo, ext_hi) = if start < 8 {
        ((lo >> (8 * start)) | (hi << (64 - 8 * start)), hi >> (8 * start))
    } else {
        (hi >> (8 * (start - 8)), 0)
    };
    let (k0, k1) = (w.k0, w.k1);
    Ok(Some(extension_hash_words(&mut w.hasher, k0, k1, ext_lo, ext_hi, (n - start) as usize)))
}

/// [`systrace_common::name_hash`] of a dentry's name, read from the kernel in
/// 8-byte blocks. The hasher lives in the walk's map slot, not on the stack.
#[inline(always)]
unsafe fn name_hash(w: &mut Walk, dentry: DentryPtr) -> Result<u64, i64> {
    let (name, len) = kernel::dentry_qstr(dentry)?;
    if len > 255 {
        return Err(-1);
    }
    let full = len / 8;
    w.hasher = SipHasher13::new(w.k0, w.k1);
    // A bounded loop, not another bpf_loop: a nested callback would add a
    // frame to the deepest chain of calls, which 6.1 bounds at 512 bytes.
    for i in 0..32usize {
        if i as u32 >= full {
            break;
        }
        let block: u64 = kernel::read_at(name, i * 8)?;
        w.hasher.block(block);
    }
    let rem = len & 7;
    let mut tail: u64 = 0;
    if rem != 0 {
        let rc = bpf_probe_read_kernel(
            &mut tail as *mut u64 as *mut c_void,
            rem,
            name.add((full * 8) as usize) as *const c_void,
        );
        if rc != 0 {
            return Err(rc);
        }
    }
    Ok(w.hasher.finish(tail, len as usize))
}

/// What a walk is asked.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Request {
    pub dentry: u64,
    pub mnt: u64,
    pub policy: u32,
    pub inode_rules: u32,
    pub requested: u32,
    /// [`OWN_INODE`] and [`CHILD`] (one field: the requests sit on the stack
    /// of hooks whose frames the 6.1 verifier adds up to its 512-byte bound).
    pub how: u32,
}

/// The object's own inode deny rules apply.
pub const OWN_INODE: u32 = 1;
/// Decide for a (hypothetical) child of the object rather than the object:
/// what a directory's rules and its ancestors' grant the files in it.
pub const CHILD: u32 = 2;

impl Request {
    #[inline(always)]
    pub fn new(subject: &Subject, object: Object, requested: u32, own_inode: bool) -> Self {
        Request {
            dentry: object.dentry as u64,
            mnt: object.mnt as u64,
            policy: subject.policy,
            inode_rules: subject.info.flags & INODE_RULES_FLAG,
            requested,
            how: if own_inode { OWN_INODE } else { 0 },
        }
    }
}

/// The walk, as a BPF global function: the verifier checks it once for each
/// program, on its own, rather than at every call site (a rename resolves six
/// times), which keeps loading fast and far below the verifier's limits.
#[no_mangle]
#[inline(never)]
pub extern "C" fn systrace_walk(request: *const Request, res: *mut Resolution) -> i64 {
    // A global function's pointer arguments may be null as far as the
    // verifier knows.
    if request.is_null() || res.is_null() {
        return -1;
    }
    walk(unsafe { &*request }, unsafe { &mut *res })
}

/// The walk itself, in a slot of its own. Inlined into the global functions
/// that call it.
#[inline(always)]
pub fn walk(request: &Request, res: &mut Resolution) -> i64 {
    walk_with(request, |answer| match answer {
        Some(found) => {
            res.allowed = found.allowed;
            res.denied = found.denied;
            res.audited = found.audited;
            res.unresolved = found.unresolved;
            res.undecided = found.undecided;
            res.anchored = found.anchored;
            res.id = found.id;
            res.mnt = found.mnt;
            0
        }
        None => -1,
    })
}

/// The walk, its answer handed to `then` where it lies, in the walk's slot
/// (`None`: the walk failed). For callers whose call chains have no stack to
/// spare for a copy: 6.1 bounds a chain at 512 bytes.
#[inline(always)]
pub fn walk_with<R>(request: &Request, then: impl FnOnce(Option<&Resolution>) -> R) -> R {
    let Some((i, slot)) = take_slot() else {
        // Four walks preempted on this CPU at once: refused rather than decided
        // with another walk's state.
        count(Counter::ScratchBusy);
        return then(None);
    };
    let (w, res) = unsafe { (&mut (*slot).walk, &mut (*slot).res) };
    w.req = *request;
    res.allowed = 0;
    res.denied = 0;
    res.audited = 0;
    res.unresolved = 0;
    res.undecided = false;
    res.anchored = false;
    res.id = FileId::default();
    res.mnt = 0;
    let out = match unsafe { cached_walk(w, res) } {
        Ok(()) => then(Some(res)),
        Err(_) => then(None),
    };
    give_back(i);
    out
}

/// The remembered answer if there is one still valid, else the walk (whose
/// answer is then remembered).
#[inline(always)]
unsafe fn cached_walk(w: &mut Walk, res: &mut Resolution) -> Result<(), i64> {
    // What the cache says stays in the walk's slot, not on the stack: this
    // is inlined into hooks whose call chains 6.1 bounds at 512 bytes.
    match cache::answer(&w.req, &mut w.stamp, res) {
        cache::ANSWERED => return Ok(()),
        cache::ANSWERED_OVERLAY => {
            crate::overlay::note(w.req.dentry as DentryPtr);
            return Ok(());
        }
        _ => {}
    }
    let overlay = walk_inner(w, res)?;
    if w.stamp.missed() {
        cache::remember(&mut w.stamp, res, overlay);
    }
    Ok(())
}

/// The walk itself; whether the object is on an overlay.
#[inline(always)]
unsafe fn walk_inner(w: &mut Walk, res: &mut Resolution) -> Result<bool, i64> {
    let object = Object { dentry: w.req.dentry as DentryPtr, mnt: w.req.mnt as VfsMountPtr };
    let (requested, own_inode) = (w.req.requested, w.req.how & OWN_INODE != 0);
    let ns = w.stamp.ns() as *const u8;
    if ns.is_null() {
        return Err(-1);
    }
    let ns_root = unsafe { kernel::ns_root(ns)? };
    let (k0, k1) = kernel::name_key();
    let mnt_root = if object.mnt.is_null() { 0 } else { (unsafe { kernel::mount_root(object.mnt)? }) as u64 };
    let zero = opaque_zero();
    w.dentry = object.dentry as u64;
    w.mnt = object.mnt as u64;
    w.mnt_root = mnt_root;
    w.ns = ns as u64;
    w.ns_root = ns_root as u64;
    w.levels = zero as u32;
    w.child = (w.req.how & CHILD) >> 1;
    w.anchored = zero as u32;
    w.state = zero as u32;
    w.policy = w.req.policy;
    w.inode_rules = w.req.inode_rules;
    w.requested = requested;
    w.inode_deny = zero as u32;
    w.mount_deny = zero as u32;
    w.exact = zero as u32;
    w.node = 0;
    w.depth = zero as u32;
    w.decided = zero as u32;
    w.allowed = zero as u32;
    w.denied = zero as u32;
    w.audited = zero as u32;
    w.k0 = k0;
    w.k1 = k1;
    w.leaf = object.dentry as u64;
    // Overlayfs is about to work on its layers for this operation.
    let overlay = crate::overlay::note(object.dentry);
    // The object's own identity: for events, and for exact inode rules.
    let inode = unsafe { kernel::dentry_inode(object.dentry)? };
    if !inode.is_null() {
        res.id = unsafe { kernel::inode_id(inode)? };
        if w.inode_rules != 0 && own_inode && w.child == 0 {
            let key = InodeKey { policy: w.policy, generation: res.id.generation, dev: res.id.dev, ino: res.id.ino };
            if let Some(rule) = unsafe { INODE_RULES.get(&key) } {
                w.inode_deny |= rule.exact.deny & requested;
            }
        }
    }

    let mut walk_ref = WalkRef { walk: w as *mut Walk };
    let walk = &mut walk_ref as *mut WalkRef as *mut c_void;
    unsafe { bpf_loop(CLIMB_STEPS, climb_step as *mut c_void, walk, 0) };
    if w.state == NEED_MOUNT {
        match unsafe { find_mount(w, walk)? } {
            0 => w.state = UNDECIDED,
            mount => {
                w.mnt = unsafe { kernel::vfsmount_of(mount as *const u8) } as u64;
                w.mnt_root = w.dentry;
                w.state = RUNNING;
                if res.mnt == 0 && object.mnt.is_null() {
                    res.mnt = w.mnt;
                }
                unsafe { bpf_loop(CLIMB_STEPS, climb_step as *mut c_void, walk, 0) };
                if w.state == NEED_MOUNT {
                    w.state = UNDECIDED;
                }
            }
        }
    }
    match w.state {
        FAILED => return Err(-1),
        DONE => {
            // From the root (depth 0) down, as far as the rule tree has nodes.
            w.node = 0;
            unsafe { bpf_loop(RING as u32 + 1, descend_step as *mut c_void, walk, 0) };
            if w.state == FAILED {
                return Err(-1);
            }
            // The descent matched every component, the object's own name
            // included: rules are anchored there or below.
            if w.depth == w.levels + 1 {
                w.anchored = 1;
            }
        }
        // An object of the kernel's own (a pipe, a socket, a pidfd, a memfd):
        // no rule can name it. Reading and writing it is not file access and
        // is allowed; running or mapping it as code is decided as if every
        // deny rule of the policy might be about it.
        PATHLESS => {
            let code = requested & (systrace_common::access::EXEC | systrace_common::access::MAP);
            w.decided = requested & !code;
            w.allowed = requested & !code;
            res.undecided = code != 0;
        }
        // UNDECIDED, or the climb ran out of steps.
        _ => res.undecided = true,
    }
    res.anchored = w.anchored != 0;
    let deny = w.inode_deny | (w.mount_deny & !w.exact);
    res.denied = (w.denied | deny) & requested;
    res.allowed = w.allowed & !deny & requested;
    res.audited = w.audited & !deny & requested;
    res.unresolved = requested & !w.decided & !deny;
    Ok(overlay)
}

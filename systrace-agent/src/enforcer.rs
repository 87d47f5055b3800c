//! Loads the embedded BPF programs, fills their maps from compiled policies, and
//! hands out the event ring buffer. Dropping the [`Enforcer`] detaches everything.
//!
//! Policies are installed as a whole set: every policy of the new set is written
//! under fresh slots, the targets and the bindings of existing cgroups go into
//! the half of the binding tables that is not in force, and one write to
//! `ACTIVE` puts the new set in force for every cgroup at once. The old set is
//! removed only after an RCU grace period, when no program can still be reading
//! it. If anything fails before the switch (a map fills up, say), what was
//! written is removed and the old set stays in force.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{
        lpm_trie::{Key as LpmKey, LpmTrie},
        Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf,
    },
    programs::{BtfTracePoint, Lsm},
    Btf, Ebpf, EbpfLoader,
};
use systrace_agent::{
    cgroups,
    offsets::KernelLayout,
    policy::{unit_entry, Anchor, Compiled, ExtensionDeny, Target, MAX_FOLLOWED},
};

use crate::watch::Names;
use systrace_common::{
    generation, kernel_dev, names, net, BindingKey, Counter, FileId, FileRule, Hook, InodeKey, NameKey, NameNode,
    NetKey, NetRule, PolicyEntry, PolicyInfo, ProbeRequest, ProbeResult, SocketKey, TargetKey, UnitKey, UnitTarget,
    UnixKey, ANY_MINOR, CGROUP_PATH_LEN, RAW_DEVICE_SLOTS, UNIT_NAME_LEN,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/systrace"));

/// The do-nothing programs the benchmark attaches to measure the floor:
/// (program, hook).
const BENCH_NOOP: [(&str, &str); 2] =
    [("bench_noop_file_open", "file_open"), ("bench_noop_file_permission", "file_permission")];
/// And on `inode_permission` as well, which every path component of an
/// open passes: the floor of the hooks the agent attaches, for an open.
const BENCH_NOOP_LOOKUP: (&str, &str) = ("bench_noop_inode_permission", "inode_permission");

/// Tracepoints that bind cgroups as they appear, go, and are renamed.
const CGROUP_TRACEPOINTS: [&str; 3] = ["cgroup_mkdir", "cgroup_rmdir", "cgroup_rename"];

/// What [`Enforcer::set_attachment`] attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Every enforcement program (the normal state).
    Enforcing,
    /// Nothing.
    Detached,
    /// Only a program that returns 0 at once, on file_open (and file_permission).
    Noop,
    /// Those, and one on inode_permission.
    NoopLookup,
}

impl Attachment {
    /// The state after this one when the benchmark cycles through them.
    pub fn next(self) -> Self {
        match self {
            Attachment::Enforcing => Attachment::Detached,
            Attachment::Detached => Attachment::Noop,
            Attachment::Noop => Attachment::NoopLookup,
            Attachment::NoopLookup => Attachment::Enforcing,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Attachment::Enforcing => "attached",
            Attachment::Detached => "detached",
            Attachment::Noop => "noop",
            Attachment::NoopLookup => "noop_lookup",
        }
    }
}

/// One policy as it sits in the maps.
struct Slot {
    slot: u32,
    /// What was written to `POLICIES` for it.
    info: PolicyInfo,
    /// Paths its deny rules name, whose files' identities it follows.
    anchors: BTreeMap<Anchor, FileRule>,
    /// Its deny rules by extension, whose files it follows.
    extension_denies: Vec<ExtensionDeny>,
    names: Vec<NameKey>,
    inodes: Vec<InodeKey>,
    net: Vec<LpmKey<NetKey>>,
    sockets: Vec<SocketKey>,
    unix: Vec<UnixKey>,
}

/// The first slot from `next` on whose `POLICIES` index none of the slots
/// `taken` has; `next` moves past it. Slots skipped for their index are used
/// up; none is when no index is free.
fn next_free_slot(next: &mut u32, taken: &[u32]) -> Result<u32> {
    use systrace_common::{policy_index, POLICY_INDEXES};
    let mut slot = *next;
    for _ in 0..POLICY_INDEXES {
        let after = slot.checked_add(1).context("policy slots exhausted")?;
        if !taken.iter().any(|&t| policy_index(t) == policy_index(slot)) {
            *next = after;
            return Ok(slot);
        }
        slot = after;
    }
    bail!("too many policies: {} in force or being loaded, at most {POLICY_INDEXES} in all", taken.len())
}

/// A set of policies written under its slots, not yet (or no longer) in force.
#[derive(Default)]
struct Written {
    slots: Vec<Slot>,
}

/// What an install put in force, per policy (in the order given).
pub struct Installed {
    pub slots: Vec<u32>,
    /// (policy index, cgroup id, path) of the cgroups bound now.
    pub bound: Vec<(usize, u64, String)>,
    /// Per policy: kernel identity -> path, for the deny rules that follow inodes.
    pub inode_paths: Vec<Vec<(FileId, PathBuf)>>,
}

pub struct Enforcer {
    bpf: Ebpf,
    layout: KernelLayout,
    /// Attached programs (name, link); see [`Enforcer::set_attachment`].
    links: Vec<(&'static str, aya::programs::lsm::LsmLinkId)>,
    tracepoints: Vec<(&'static str, aya::programs::tp_btf::BtfTracePointLinkId)>,
    /// Links moved out of `links` by [`Enforcer::pin`]: they outlive the agent.
    pinned: Vec<aya::programs::links::PinnedLink>,
    /// Kernel ids of the programs behind the pinned links.
    pinned_ids: Vec<u32>,
    /// The event ring buffer's and the counters' pins (see [`crate::pins::EVENTS_PIN`]).
    pinned_maps: Vec<PathBuf>,
    /// The half of the binding tables in force.
    active: u32,
    in_force: Written,
    /// The identity probe, attached the first time it is needed.
    probe: Option<aya::programs::lsm::LsmLinkId>,
    next_slot: u32,
    name_key: [u64; 2],
    walk_cache: bool,
    /// The cgroup move check on `inode_permission`, while attached.
    move_check: Option<MoveCheck>,
    /// Whether it is attached whenever every program is, from now until the
    /// agent stops: set by the first policy set that needs it (see
    /// [`Compiled::needs_move_check`]), by `exec --ask`, and by taking over
    /// from an agent that had it. Never cleared: a write that passed
    /// `file_permission` under a policy that allowed it may reach the
    /// kernel's move check any time later (its buffer can be made to fault
    /// for as long as the writer likes), after a reload to a policy that
    /// writes nothing.
    move_check_kept: bool,
    /// Whether every program is attached (the benchmark detaches them).
    all_attached: bool,
    /// Where [`Enforcer::pin`] pinned the links: links attached later go there too.
    pin_dir: Option<PathBuf>,
}

/// The link of the on-demand `inode_permission` program.
enum MoveCheck {
    Attached(aya::programs::lsm::LsmLinkId),
    Pinned(aya::programs::links::PinnedLink),
}

/// Why loading failed, with the kernel's errno when there was one.
#[derive(Debug)]
pub struct LoadFailure {
    pub errno: Option<i32>,
    pub error: anyhow::Error,
    pub verifier_log: Option<String>,
}

/// The event ring buffer's size for a machine with `cpus` possible CPUs: 1 MiB
/// each (events come from all of them at once), a power of two as the kernel
/// requires, at least 4 MiB (about 12,000 events before the agent must read)
/// and at most 64 MiB. The agent's resident memory counts it twice on kernels
/// that map every page of it up front (6.12: it is mapped twice, for reads
/// across the wrap-around), which is why it is not larger on small machines.
pub fn ring_bytes(cpus: usize) -> u32 {
    (cpus.next_power_of_two().clamp(4, 64) as u32) << 20
}

/// 128 bits from the kernel's random pool.
fn random_key() -> [u64; 2] {
    let mut key = [0u64; 2];
    // SAFETY: the buffer is valid for its size.
    let n = unsafe { libc::getrandom(key.as_mut_ptr().cast(), std::mem::size_of_val(&key), 0) };
    if n != std::mem::size_of_val(&key) as isize {
        // getrandom cannot fail for 16 bytes once the pool is ready; fall back to time and pid.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        key = [t, u64::from(std::process::id()) ^ t.rotate_left(17)];
    }
    key
}

/// Character devices whose majors are fixed (Documentation/admin-guide/devices.txt):
/// memory and I/O ports, hibernation images, device-mapper control (table
/// status shows dm-crypt keys), input event devices, uinput and uhid (typing
/// into a console outside the cgroup), SCSI generic (raw commands to disks),
/// I2C, raw flash, USB devices (usbfs can detach a disk's driver and talk to
/// it), model-specific registers.
const FIXED_RAW_DEVICES: [(u32, u32); 13] = [
    (1, 1),
    (1, 2),
    (1, 4),
    (10, 223),
    (10, 231),
    (10, 236),
    (10, 239),
    (13, ANY_MINOR),
    (21, ANY_MINOR),
    (89, ANY_MINOR),
    (90, ANY_MINOR),
    (189, ANY_MINOR),
    (202, ANY_MINOR),
];

/// Drivers whose majors the kernel hands out at boot, by their name in
/// /proc/devices: block SCSI generic, NVMe controllers and namespaces (both
/// take raw commands), DAX (persistent memory directly), raw HID, and ZFS's
/// control device (snapshots, like btrfs's ioctls).
const DYNAMIC_RAW_DEVICES: [&str; 6] = ["bsg", "nvme", "nvme-generic", "dax", "hidraw", "zfs"];

/// The `RAW_DEVICES` global from the text of /proc/devices: the fixed ones,
/// then the character majors of the drivers named above. Drivers loaded later
/// are not covered (documented in the README).
pub fn raw_devices(proc_devices: &str) -> [u32; RAW_DEVICE_SLOTS] {
    let mut out = [0u32; RAW_DEVICE_SLOTS];
    let mut n = 0;
    for (major, minor) in FIXED_RAW_DEVICES {
        out[n] = kernel_dev(major, minor);
        n += 1;
    }
    let character = proc_devices.split("Block devices:").next().unwrap_or("");
    for line in character.lines() {
        let mut words = line.split_whitespace();
        let (Some(major), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(major) = major.parse::<u32>() else {
            continue;
        };
        if DYNAMIC_RAW_DEVICES.contains(&name) && n < RAW_DEVICE_SLOTS {
            out[n] = kernel_dev(major, ANY_MINOR);
            n += 1;
        }
    }
    out
}

/// Loads (verifies) the LSM programs of `hooks`, on as many threads as there
/// are CPUs (at most four), without attaching them.
///
/// Verification is most of an agent's start (about 50 programs; a minute on
/// 6.1 under emulation, a second or two on hardware) and each load is one
/// independent `BPF_PROG_LOAD` the kernel verifies on the calling thread, so
/// loads on several threads verify on several CPUs at once. A failure is the
/// first in table order, whatever thread met it, so the message does not
/// depend on timing. `SYSTRACE_LOAD_STATS` prints each program's verification;
/// `SYSTRACE_LOAD_THREADS` sets the number of threads.
fn load_in_parallel(bpf: &mut Ebpf, hooks: &[Hook], btf: &Btf) -> Result<(), (anyhow::Error, Option<String>)> {
    let stats = std::env::var_os("SYSTRACE_LOAD_STATS").is_some();
    let mut programs: Vec<(usize, &'static str, &mut Lsm)> = Vec::with_capacity(hooks.len());
    for (name, program) in bpf.programs_mut() {
        let Some(index) = hooks.iter().position(|h| h.name() == name) else {
            continue;
        };
        let program: &mut Lsm = program.try_into().map_err(|e| (anyhow!("{name}: {e}"), None))?;
        programs.push((index, hooks[index].name(), program));
    }
    if let Some(missing) = hooks.iter().find(|h| !programs.iter().any(|(_, name, _)| *name == h.name())) {
        return Err((anyhow!("program {} missing from the object", missing.name()), None));
    }
    let threads = std::env::var("SYSTRACE_LOAD_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 4);
    let mut shares: Vec<Vec<(usize, &'static str, &mut Lsm)>> = (0..threads).map(|_| Vec::new()).collect();
    // Round-robin in table order: the costly file hooks come first and spread out.
    programs.sort_by_key(|(index, _, _)| *index);
    for (i, program) in programs.into_iter().enumerate() {
        shares[i % threads].push(program);
    }
    let mut failures: Vec<(usize, anyhow::Error, Option<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .into_iter()
            .map(|share| {
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    for (index, name, program) in share {
                        let started = std::time::Instant::now();
                        match program.load(name, btf) {
                            Ok(()) if stats => {
                                let info = program.info().ok();
                                eprintln!(
                                    "systrace-agent: loaded {name} in {:.0?}: {:?} instructions verified, {:?} translated",
                                    started.elapsed(),
                                    info.as_ref().and_then(|i| i.verified_instruction_count()),
                                    info.as_ref().map(|i| i.size_translated()),
                                );
                            }
                            Ok(()) => {}
                            Err(e) => {
                                let log = match &e {
                                    aya::programs::ProgramError::LoadError { verifier_log, .. } => Some(verifier_log.to_string()),
                                    _ => None,
                                };
                                failures.push((index, anyhow!(e).context(format!("loading LSM program {name}")), log));
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    failures.sort_by_key(|(index, _, _)| *index);
    match failures.into_iter().next() {
        Some((_, error, log)) => Err((error, log)),
        None => Ok(()),
    }
}

impl Enforcer {
    /// Loads and attaches every program. Nothing is confined until policies are installed.
    pub fn load(layout: &KernelLayout) -> Result<Self, LoadFailure> {
        let fail = |error: anyhow::Error, verifier_log: Option<String>| LoadFailure {
            errno: error.chain().find_map(|e| e.downcast_ref::<std::io::Error>()?.raw_os_error()),
            error,
            verifier_log,
        };
        let name_key = random_key();
        let mut loader = EbpfLoader::new();
        loader.override_global(names::OFFSETS, &layout.offsets, true);
        loader.override_global(names::OFFSET_FORMS, &layout.forms, true);
        loader.override_global(names::HOOK_ARGS, layout.hook_args.as_slice(), true);
        loader.override_global(names::NAME_KEY, &name_key, true);
        let raw = raw_devices(&std::fs::read_to_string("/proc/devices").unwrap_or_default());
        loader.override_global(names::RAW_DEVICES, &raw, true);
        let seqlocks =
            crate::offsets::seqlock_addresses(&std::fs::read_to_string("/proc/kallsyms").unwrap_or_default());
        let seqlock_global = seqlocks.unwrap_or([0; 2]);
        loader.override_global(names::SEQLOCKS, &seqlock_global, true);
        // Online, not possible: cloud machines list many hotplug slots.
        let cpus = aya::util::online_cpus().map(|c| c.len()).unwrap_or(1);
        loader.map_max_entries(names::EVENTS, ring_bytes(cpus));
        let mut bpf = loader.load(OBJECT).map_err(|e| fail(anyhow!(e).context("creating maps"), None))?;
        let btf = Btf::from_sys_fs().map_err(|e| fail(anyhow!(e).context("reading kernel BTF"), None))?;
        let hooks: Vec<Hook> = Hook::ALL.iter().copied().filter(|&h| layout.has(h)).collect();
        load_in_parallel(&mut bpf, &hooks, &btf).map_err(|(e, log)| fail(e, log))?;
        let mut links = Vec::new();
        for &hook in hooks.iter().filter(|h| h.enforcing()) {
            let name = hook.name();
            let program: &mut Lsm = bpf
                .program_mut(name)
                .ok_or_else(|| fail(anyhow!("program {name} missing from the object"), None))?
                .try_into()
                .map_err(|e| fail(anyhow!("{name}: {e}"), None))?;
            let link = program.attach().map_err(|e| fail(anyhow!(e).context(format!("attaching {name}")), None))?;
            links.push((name, link));
        }
        let mut tracepoints = Vec::new();
        for name in CGROUP_TRACEPOINTS {
            let program: &mut BtfTracePoint = bpf
                .program_mut(name)
                .ok_or_else(|| fail(anyhow!("program {name} missing from the object"), None))?
                .try_into()
                .map_err(|e| fail(anyhow!("{name}: {e}"), None))?;
            if let Err(e) = program.load(name, &btf) {
                let log = match &e {
                    aya::programs::ProgramError::LoadError { verifier_log, .. } => Some(verifier_log.to_string()),
                    _ => None,
                };
                return Err(fail(anyhow!(e).context(format!("loading tracepoint program {name}")), log));
            }
            let link = program.attach().map_err(|e| fail(anyhow!(e).context(format!("attaching {name}")), None))?;
            tracepoints.push((name, link));
        }
        // No SIGIO may reach the agent (see file_send_sigiotask).
        let agent = bpf.map_mut(names::AGENT).ok_or_else(|| fail(anyhow!("map {} missing", names::AGENT), None))?;
        Array::<_, u32>::try_from(agent)
            .and_then(|mut a| a.set(0, std::process::id(), 0))
            .map_err(|e| fail(anyhow!(e).context("recording the agent's pid"), None))?;
        Ok(Enforcer {
            bpf,
            layout: layout.clone(),
            links,
            tracepoints,
            pinned: Vec::new(),
            pinned_ids: Vec::new(),
            pinned_maps: Vec::new(),
            active: 0,
            in_force: Written::default(),
            probe: None,
            next_slot: 1,
            name_key,
            walk_cache: seqlocks.is_some(),
            move_check: None,
            move_check_kept: false,
            all_attached: true,
            pin_dir: None,
        })
    }

    /// Whether the walk cache is on: the kernel's `rename_lock` and
    /// `mount_lock` were found in /proc/kallsyms.
    pub fn walk_cache(&self) -> bool {
        self.walk_cache
    }

    /// Tells the programs that answers the walk cache holds are stale: after
    /// a change to the rules of a policy slot in force.
    fn invalidate_walk_cache(&mut self) -> Result<()> {
        self.bump_generation(generation::WALK)
    }

    /// Tells the programs that the subjects they remember per cgroup are
    /// stale: around a switch of the bindings in force.
    fn invalidate_subjects(&mut self) -> Result<()> {
        self.bump_generation(generation::SUBJECTS_AGENT)
    }

    fn bump_generation(&mut self, which: u32) -> Result<()> {
        let mut generations = Array::<_, u64>::try_from(
            self.bpf.map_mut(names::CACHE_GENERATION).context("map CACHE_GENERATION missing")?,
        )?;
        let next = generations.get(&which, 0)?.wrapping_add(1);
        generations.set(which, next, 0)?;
        Ok(())
    }

    /// The key of the path-component hash the programs were loaded with.
    pub fn name_key(&self) -> [u64; 2] {
        self.name_key
    }

    /// Hooks this kernel lacks (with the version that has them).
    pub fn missing_hooks(&self) -> &[Hook] {
        &self.layout.missing_hooks
    }

    /// Per loaded program: its size after the verifier (translated
    /// instructions, 8 bytes each), the instructions the verifier walked, and,
    /// while the kernel keeps run statistics (`kernel.bpf_stats_enabled`),
    /// how often it ran and for how long. The benchmark's per-hook costs.
    pub fn program_stats(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for (name, program) in self.bpf.programs() {
            let Ok(info) = program.info() else { continue };
            out.push(serde_json::json!({
                "name": name,
                "xlated_insns": info.size_translated().map(|b| b / 8),
                "verified_insns": info.verified_instruction_count(),
                "run_count": info.run_count(),
                "run_ns": info.run_time().as_nanos() as u64,
            }));
        }
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        out
    }

    /// Whether this kernel has the field (optional fields may be missing).
    pub fn knows(&self, field: systrace_common::Off) -> bool {
        self.layout.offsets[field as usize] != systrace_common::OFFSET_ABSENT
    }

    /// Pins every attached link in `dir`, one file per program, so the programs
    /// keep enforcing if this process dies. Pinned links are not detached when the
    /// enforcer is dropped; [`Enforcer::unpin`] does that.
    pub fn pin(&mut self, dir: &Path) -> Result<()> {
        self.pin_dir = Some(dir.to_path_buf());
        if let Some(MoveCheck::Attached(link)) = self.move_check.take() {
            self.move_check = Some(MoveCheck::Pinned(self.pin_move_check(link)?));
        }
        for (name, link) in self.links.drain(..) {
            let program: &mut Lsm =
                self.bpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
            let link = program.take_link(link)?;
            let fd_link = aya::programs::links::FdLink::from(link);
            if let Ok(info) = fd_link.info() {
                self.pinned_ids.push(info.program_id());
            }
            let pinned = fd_link.pin(dir.join(name)).with_context(|| format!("pinning {name} in {}", dir.display()))?;
            self.pinned.push(pinned);
        }
        for (name, link) in self.tracepoints.drain(..) {
            let program: &mut BtfTracePoint =
                self.bpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
            let link = program.take_link(link)?;
            let fd_link = aya::programs::links::FdLink::from(link);
            if let Ok(info) = fd_link.info() {
                self.pinned_ids.push(info.program_id());
            }
            let pinned = fd_link.pin(dir.join(name)).with_context(|| format!("pinning {name} in {}", dir.display()))?;
            self.pinned.push(pinned);
        }
        // The maps an agent taking over after a crash reads the gap from: what
        // these programs reported that no agent read.
        for (map, file) in [(names::EVENTS, crate::pins::EVENTS_PIN), (names::COUNTERS, crate::pins::COUNTERS_PIN)] {
            let path = dir.join(file);
            let map = self.bpf.map(map).ok_or_else(|| anyhow!("map {map} missing"))?;
            map.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
            self.pinned_maps.push(path);
        }
        Ok(())
    }

    /// Entries and capacity of the maps that can fill up: rule tables, the
    /// cgroup bindings (the kernel adds to them as cgroups appear), caches.
    /// Counted key by key (one system call each): call it rarely.
    pub fn map_fill(&self) -> Vec<(&'static str, u64, u32)> {
        const MAPS: [&str; 8] = [
            names::BINDINGS,
            names::NAME_RULES,
            names::INODE_RULES,
            names::NET_RULES,
            names::SOCKET_RULES,
            names::UNIX_RULES,
            names::TARGETS,
            names::UNITS,
        ];
        use std::os::fd::AsFd as _;
        MAPS.iter()
            .filter_map(|&name| {
                let data = match self.bpf.map(name)? {
                    aya::maps::Map::HashMap(d) | aya::maps::Map::LruHashMap(d) | aya::maps::Map::LpmTrie(d) => d,
                    _ => return None,
                };
                let info = data.info().ok()?;
                let max = info.max_entries();
                Some((name, count_keys(data.fd().as_fd(), info.key_size() as usize, u64::from(max) * 2), max))
            })
            // An array is always full: the slots in force are what it holds.
            .chain([(names::POLICIES, self.in_force.slots.len() as u64, systrace_common::POLICY_INDEXES)])
            .collect()
    }

    /// Tells a later agent how many events this one has read (see
    /// [`Counter::AgentRead`]).
    pub fn record_read(&mut self, read: u64) -> Result<()> {
        let map = self.bpf.map_mut(names::COUNTERS).ok_or_else(|| anyhow!("map {} missing", names::COUNTERS))?;
        let mut array: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        let mut values = vec![0u64; aya::util::nr_cpus().map_err(|(_, e)| anyhow!("counting CPUs: {e}"))?];
        values[0] = read;
        array.set(Counter::AgentRead as u32, aya::maps::PerCpuValues::try_from(values)?, 0)?;
        Ok(())
    }

    /// Kernel ids of the pinned programs, to wait for their release.
    pub fn pinned_ids(&self) -> &[u32] {
        &self.pinned_ids
    }

    /// Removes the pins; the links detach when their descriptors close.
    pub fn unpin(&mut self) {
        self.pin_dir = None;
        if let Some(MoveCheck::Pinned(pinned)) = self.move_check.take() {
            if let Err(e) = pinned.unpin() {
                eprintln!("systrace-agent: removing a pin: {e}");
            }
        }
        for pinned in self.pinned.drain(..) {
            if let Err(e) = pinned.unpin() {
                eprintln!("systrace-agent: removing a pin: {e}");
            }
        }
        for path in self.pinned_maps.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Benchmarks only: which programs are attached, keeping maps and policies.
    pub fn set_attachment(&mut self, attachment: Attachment) -> Result<()> {
        self.set_move_check(false)?;
        self.all_attached = false;
        for (name, link) in self.links.drain(..) {
            let program: &mut Lsm =
                self.bpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
            program.detach(link)?;
        }
        let names: Vec<(&'static str, &'static str)> = match attachment {
            Attachment::Enforcing => Hook::ALL
                .iter()
                .filter(|h| h.enforcing() && self.layout.has(**h))
                .map(|h| (h.name(), h.name()))
                .collect(),
            Attachment::Detached => vec![],
            Attachment::Noop => BENCH_NOOP.to_vec(),
            Attachment::NoopLookup => BENCH_NOOP.iter().copied().chain([BENCH_NOOP_LOOKUP]).collect(),
        };
        for (name, hook) in names {
            let program: &mut Lsm =
                self.bpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
            if program.fd().is_err() {
                let btf = Btf::from_sys_fs()?;
                program.load(hook, &btf)?;
            }
            self.links.push((name, program.attach()?));
        }
        if attachment == Attachment::Enforcing {
            self.all_attached = true;
            self.set_move_check(self.move_check_kept)?;
        }
        // While detached, no d_instantiate program marked reused dentries:
        // what the walk cache holds from before is stale.
        self.invalidate_walk_cache()?;
        Ok(())
    }

    /// Whether the cgroup move check (`inode_permission`) is attached now.
    pub fn move_check(&self) -> bool {
        self.move_check.is_some()
    }

    /// Attaches the cgroup move check now (when every program is) and keeps
    /// it until the agent stops, whatever later policies say: for a policy
    /// set that needs it (see [`Enforcer::install`]), for `exec --ask`, where
    /// a "permit once" can allow a write no rule grants, and when taking over
    /// from an agent that had it (see the `move_check_kept` field).
    pub fn keep_move_check(&mut self) -> Result<()> {
        self.move_check_kept = true;
        if self.all_attached {
            self.set_move_check(true).context("attaching the cgroup move check")?;
        }
        Ok(())
    }

    /// Attaches or detaches the cgroup move check; pinned with the other
    /// links once they are, so that it outlives the agent as they do.
    fn set_move_check(&mut self, on: bool) -> Result<()> {
        let hook = Hook::InodePermission;
        if on == self.move_check.is_some() || !self.layout.has(hook) {
            return Ok(());
        }
        let program: &mut Lsm =
            self.bpf.program_mut(hook.name()).context("the move check program is missing")?.try_into()?;
        if on {
            let link = program.attach()?;
            self.move_check = Some(match self.pin_dir {
                Some(_) => MoveCheck::Pinned(self.pin_move_check(link)?),
                None => MoveCheck::Attached(link),
            });
            return Ok(());
        }
        match self.move_check.take() {
            Some(MoveCheck::Attached(link)) => program.detach(link)?,
            // The link goes with its pin and its last descriptor.
            Some(MoveCheck::Pinned(pinned)) => drop(pinned.unpin()?),
            None => {}
        }
        Ok(())
    }

    /// Pins the move check's link next to the others.
    fn pin_move_check(&mut self, link: aya::programs::lsm::LsmLinkId) -> Result<aya::programs::links::PinnedLink> {
        let name = Hook::InodePermission.name();
        let dir = self.pin_dir.clone().context("no pin directory")?;
        let program: &mut Lsm = self.bpf.program_mut(name).context("the move check program is missing")?.try_into()?;
        let fd_link = aya::programs::links::FdLink::from(program.take_link(link)?);
        if let Ok(info) = fd_link.info() {
            self.pinned_ids.push(info.program_id());
        }
        fd_link.pin(dir.join(name)).with_context(|| format!("pinning {name} in {}", dir.display()))
    }

    fn map<'a, K: aya::Pod, V: aya::Pod>(&'a mut self, name: &str) -> Result<BpfHashMap<&'a mut MapData, K, V>> {
        let map = self.bpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing"))?;
        Ok(BpfHashMap::try_from(map)?)
    }

    fn net_map(&mut self) -> Result<LpmTrie<&mut MapData, NetKey, NetRule>> {
        let map = self.bpf.map_mut(names::NET_RULES).ok_or_else(|| anyhow!("map {} missing", names::NET_RULES))?;
        Ok(LpmTrie::try_from(map)?)
    }

    /// Puts `policies` in force as a whole, replacing the set in force. On
    /// error, the set in force stays.
    pub fn install(&mut self, policies: &[Compiled], cgroup_root: &Path) -> Result<Installed> {
        let half = 1 - self.active;
        let identities = self.probe_identities(policies)?;
        let mut written = Written::default();
        let result = self.write_set(policies, &identities, half, cgroup_root, &mut written).and_then(|bound| {
            // Attached before the new set is in force, and kept from then on.
            let move_check = policies.iter().any(Compiled::needs_move_check)
                || bound.iter().any(|(_, id, path)| self.newly_confined_with_processes(cgroup_root, *id, path));
            if move_check {
                self.keep_move_check()?;
            }
            Ok(bound)
        });
        let bound = match result {
            Ok(bound) => bound,
            Err(e) => {
                self.clear_half(half);
                self.remove_written(&written);
                return Err(e);
            }
        };
        // Before the switch too: an answer a program looked up in this half
        // before its last switch away (and stamped with the generation since)
        // must not match once it is in force again.
        if let Err(e) = self.invalidate_subjects() {
            self.clear_half(half);
            self.remove_written(&written);
            return Err(e.context("invalidating the subject cache"));
        }
        // The switch: one array write puts every binding of the new set in force.
        if let Err(e) = Array::<_, u32>::try_from(self.bpf.map_mut(names::ACTIVE).context("map ACTIVE missing")?)
            .and_then(|mut a| a.set(0, half, 0))
        {
            self.clear_half(half);
            self.remove_written(&written);
            return Err(anyhow!(e).context("switching to the new policies"));
        }
        // The subjects programs remember were looked up in the old half
        // (which they also compare, so this matters from the next switch on,
        // back to that half).
        if let Err(e) = self.invalidate_subjects() {
            eprintln!("systrace-agent: error: invalidating the subject cache: {e:#}");
        }
        let old_half = self.active;
        self.active = half;
        let old = std::mem::replace(&mut self.in_force, written);
        wait_for_readers();
        self.clear_half(old_half);
        self.remove_written(&old);
        Ok(Installed {
            slots: self.in_force.slots.iter().map(|s| s.slot).collect(),
            bound,
            inode_paths: identities
                .into_iter()
                .map(|ids| {
                    ids.into_iter().filter(|(_, a, _)| a.extension == 0).map(|(id, a, _)| (id, a.path)).collect()
                })
                .collect(),
        })
    }

    /// Whether the cgroup `id` at `path` (under `cgroup_root`) holds processes
    /// and is not confined by the bindings in force now, by itself or by an
    /// ancestor: its processes were free to start a write to a cgroup's
    /// process list that reaches the kernel's move check only after their
    /// policy applies (see [`Compiled::needs_move_check`]). Unreadable counts
    /// as yes.
    fn newly_confined_with_processes(&mut self, cgroup_root: &Path, id: u64, path: &str) -> bool {
        use std::os::unix::fs::MetadataExt;
        let dir = cgroup_root.join(path.trim_start_matches('/'));
        let populated = match std::fs::read_to_string(dir.join("cgroup.events")) {
            Ok(events) => events.lines().any(|l| l == "populated 1"),
            Err(_) => true,
        };
        if !populated {
            return false;
        }
        let half = self.active;
        let Ok(bindings) = self.map::<BindingKey, u32>(names::BINDINGS) else {
            return true;
        };
        let bound = |cgroup_id: u64| bindings.get(&BindingKey { half, _pad: 0, cgroup_id }, 0).is_ok();
        if bound(id) {
            return false;
        }
        let mut ancestor = dir.parent();
        while let Some(a) = ancestor.filter(|a| a.starts_with(cgroup_root) && *a != cgroup_root) {
            match std::fs::metadata(a) {
                Ok(meta) if bound(meta.ino()) => return false,
                Ok(_) => {}
                Err(_) => return true,
            }
            ancestor = a.parent();
        }
        true
    }

    /// Writes every policy under new slots and fills `half` of the binding
    /// tables; returns the cgroups bound.
    fn write_set(
        &mut self,
        policies: &[Compiled],
        identities: &[Vec<(FileId, Anchor, FileRule)>],
        half: u32,
        cgroup_root: &Path,
        written: &mut Written,
    ) -> Result<Vec<(usize, u64, String)>> {
        // A reload that failed after writing part of this half, or bindings
        // the kernel made there meanwhile: start clean.
        self.clear_half(half);
        let mut slots = Vec::new();
        for (policy, ids) in policies.iter().zip(identities) {
            let slot = self.new_slot(written)?;
            written.slots.push(Slot {
                slot,
                info: policy.info,
                anchors: policy.inode_anchors.clone(),
                extension_denies: policy.extension_denies.clone(),
                names: vec![],
                inodes: vec![],
                net: vec![],
                sockets: vec![],
                unix: vec![],
            });
            let record = written.slots.last_mut().expect("just pushed");
            self.write_policy(policy, ids, slot, record).with_context(|| format!("writing policy {}", policy.name))?;
            slots.push(slot);
        }
        for (policy, &slot) in policies.iter().zip(&slots) {
            match &policy.target {
                Target::Cgroup(path) => {
                    let mut key = TargetKey { half, path: [0; CGROUP_PATH_LEN] };
                    key.path[..path.len()].copy_from_slice(path.as_bytes());
                    self.map::<TargetKey, u32>(names::TARGETS)?.insert(key, slot, 0).context("cgroup target")?;
                }
                target => {
                    let (name, kind, manager) = unit_entry(target).expect("a unit target");
                    let mut key = UnitKey { half, name: [0; UNIT_NAME_LEN] };
                    key.name[..name.len()].copy_from_slice(name.as_bytes());
                    let mut value = UnitTarget { slot, kind, _pad: [0; 3], manager: [0; 32] };
                    value.manager[..manager.len()].copy_from_slice(manager.as_bytes());
                    self.map::<UnitKey, UnitTarget>(names::UNITS)?.insert(key, value, 0).context("unit target")?;
                }
            }
        }
        // Cgroups that exist now. Ones made from here on are bound by the
        // kernel from the targets just written.
        let targets: Vec<Target> = policies.iter().map(|p| p.target.clone()).collect();
        let found = cgroups::find(cgroup_root, &targets);
        let mut bindings = self.map::<BindingKey, u32>(names::BINDINGS)?;
        for &(i, id, _) in &found {
            bindings.insert(BindingKey { half, _pad: 0, cgroup_id: id }, slots[i], 0).context("binding a cgroup")?;
        }
        Ok(found)
    }

    /// A slot never used before whose `POLICIES` index no slot in force and
    /// none of `written` has: a reload writes its set beside the one in force.
    fn new_slot(&mut self, written: &Written) -> Result<u32> {
        let taken: Vec<u32> = self.in_force.slots.iter().chain(&written.slots).map(|s| s.slot).collect();
        next_free_slot(&mut self.next_slot, &taken)
    }

    /// The `POLICIES` array.
    fn policies(&mut self) -> Result<Array<&mut MapData, PolicyEntry>> {
        let map = self.bpf.map_mut(names::POLICIES).ok_or_else(|| anyhow!("map {} missing", names::POLICIES))?;
        Ok(Array::try_from(map)?)
    }

    /// Writes a slot's settings where the programs look for them.
    fn set_policy_info(&mut self, slot: u32, info: PolicyInfo) -> Result<()> {
        let entry = PolicyEntry { slot, _pad: 0, info };
        self.policies()?.set(systrace_common::policy_index(slot), entry, 0).context("policy settings")
    }

    fn write_policy(
        &mut self,
        policy: &Compiled,
        identities: &[(FileId, Anchor, FileRule)],
        slot: u32,
        record: &mut Slot,
    ) -> Result<()> {
        let info = PolicyInfo {
            flags: if identities.is_empty() {
                policy.info.flags & !systrace_common::policy_flags::INODE_RULES
            } else {
                policy.info.flags | systrace_common::policy_flags::INODE_RULES
            },
            ..policy.info
        };
        {
            let mut rules = self.map::<NameKey, NameNode>(names::NAME_RULES)?;
            for (&(parent, hash), node) in &policy.tree.entries {
                let key = NameKey { policy: slot, parent, hash };
                rules.insert(key, *node, 0).context("file rule")?;
                record.names.push(key);
            }
        }
        {
            // Two anchors may be one file (hard links): their rules add up.
            let mut merged: BTreeMap<InodeKey, FileRule> = BTreeMap::new();
            for (id, anchor, rule) in identities {
                add_rule(merged.entry(anchor.key(slot, *id)).or_default(), rule);
            }
            let mut rules = self.map::<InodeKey, FileRule>(names::INODE_RULES)?;
            for (key, rule) in merged {
                rules.insert(key, rule, 0).context("inode rule")?;
                record.inodes.push(key);
            }
        }
        {
            let mut trie = self.net_map()?;
            for (&(op, family, proto, addr, prefix), rule) in &policy.net {
                let key = LpmKey::new(
                    net::FIXED_PREFIX_BITS + prefix,
                    NetKey { policy: slot, op, family, proto, _pad: 0, addr },
                );
                trie.insert(&key, *rule, 0).context("network rule")?;
                record.net.push(key);
            }
        }
        {
            let mut sockets = self.map::<SocketKey, u8>(names::SOCKET_RULES)?;
            for (&(family, sock_type, protocol), verdict) in &policy.sockets {
                let key = SocketKey { policy: slot, family, sock_type, protocol, _pad: 0 };
                sockets.insert(key, *verdict, 0).context("socket rule")?;
                record.sockets.push(key);
            }
        }
        {
            let mut unix = self.map::<UnixKey, u8>(names::UNIX_RULES)?;
            for ((op, name), verdict) in &policy.unix {
                let mut key = UnixKey {
                    policy: slot,
                    op: *op,
                    _pad: 0,
                    len: name.len() as u16,
                    name: [0; systrace_common::UNIX_PATH_MAX],
                };
                key.name[..name.len()].copy_from_slice(name);
                unix.insert(key, *verdict, 0).context("unix socket rule")?;
                record.unix.push(key);
            }
        }
        // Last: a slot without its info is never looked at by the programs.
        self.set_policy_info(slot, info)?;
        record.info = info;
        Ok(())
    }

    /// (directory, names) of every path a deny rule in force names, and of
    /// the directories of its rules by extension: where a new file can come
    /// to bear such a name.
    pub fn anchor_names(&self) -> Vec<(PathBuf, Names)> {
        let mut out: Vec<(PathBuf, Names)> = Vec::new();
        let mut add = |entry: (PathBuf, Names)| {
            if !out.contains(&entry) {
                out.push(entry);
            }
        };
        for slot in &self.in_force.slots {
            for Anchor { path, .. } in slot.anchors.keys() {
                if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
                    add((dir.to_path_buf(), Names::Exact(name.to_os_string())));
                }
            }
            for deny in &slot.extension_denies {
                add((deny.dir.clone(), Names::Extension(deny.ext.as_bytes().to_vec())));
            }
        }
        out
    }

    /// Makes the deny rules in force also follow the files that bear their
    /// names now, as well as those they named at load: after an atomic replace,
    /// a hard link someone makes elsewhere to the new file stays denied too.
    /// (The names decide for the new file from the moment it bears the name;
    /// this only adds identities.) Returns what was added: (slot, identity, path).
    pub fn refresh_identities(&mut self) -> Result<Vec<(u32, FileId, PathBuf)>> {
        let wanted: Vec<(usize, Anchor, FileRule)> = self
            .in_force
            .slots
            .iter()
            .enumerate()
            .flat_map(|(i, slot)| {
                followed(&slot.anchors, &slot.extension_denies).into_iter().map(move |(a, r)| (i, a, r))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_probe()?;
        let mut added = Vec::new();
        let mut failure = None;
        let mut written = false;
        for (i, anchor, rule) in wanted {
            let path = anchor.path.clone();
            let id = match self.identity(&path) {
                Ok(Some(id)) => id,
                Ok(None) => continue,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let slot = self.in_force.slots[i].slot;
            let key = anchor.key(slot, id);
            let mut rule = rule;
            let known = self.in_force.slots[i].inodes.contains(&key);
            if known {
                // Another anchor of the same file (a hard link): add its bits.
                let old = self.map::<InodeKey, FileRule>(names::INODE_RULES)?.get(&key, 0).unwrap_or_default();
                let mut both = old;
                add_rule(&mut both, &rule);
                if both == old {
                    continue;
                }
                rule = both;
            }
            if let Err(e) = self.map::<InodeKey, FileRule>(names::INODE_RULES)?.insert(key, rule, 0) {
                failure = Some(anyhow!(e).context(format!("following the new file at {}", path.display())));
                break;
            }
            written = true;

            if !known {
                self.in_force.slots[i].inodes.push(key);
            }
            let info = self.in_force.slots[i].info;
            if info.flags & systrace_common::policy_flags::INODE_RULES == 0 {
                let info = PolicyInfo { flags: info.flags | systrace_common::policy_flags::INODE_RULES, ..info };
                self.set_policy_info(slot, info)?;
                self.in_force.slots[i].info = info;
            }
            // After both the rule and the flag that makes the walk look at it.
            if let Err(e) = self.invalidate_walk_cache() {
                failure = Some(e.context("invalidating the walk cache"));
                break;
            }
            // A directory's rules by extension are not a file to report.
            if !known && anchor.extension == 0 {
                added.push((slot, id, path));
            }
        }
        self.set_probe(ProbeRequest::default())?;
        // Once more after everything written, whatever failed on the way: a
        // rule written without its bump would leave stale answers in force.
        if written {
            if let Err(e) = self.invalidate_walk_cache() {
                failure.get_or_insert(e.context("invalidating the walk cache"));
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(added),
        }
    }

    /// Removes every binding, target and unit entry of `half`.
    fn clear_half(&mut self, half: u32) {
        fn clear<K: aya::Pod, V: aya::Pod>(enforcer: &mut Enforcer, name: &str, of_half: impl Fn(&K) -> bool) {
            if let Ok(mut map) = enforcer.map::<K, V>(name) {
                let keys: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| of_half(k)).collect();
                for key in keys {
                    let _ = map.remove(&key);
                }
            }
        }
        clear::<BindingKey, u32>(self, names::BINDINGS, |k| k.half == half);
        clear::<TargetKey, u32>(self, names::TARGETS, |k| k.half == half);
        clear::<UnitKey, UnitTarget>(self, names::UNITS, |k| k.half == half);
    }

    fn remove_written(&mut self, written: &Written) {
        for slot in &written.slots {
            if let Ok(mut policies) = self.policies() {
                let index = systrace_common::policy_index(slot.slot);
                if let Some(entry) = policies.get(&index, 0).ok().filter(|e| e.slot == slot.slot) {
                    // Only the slot changes: a program that compared the slot
                    // just before this write and copies the settings after
                    // it still gets the settings it matched, not zeros (which
                    // would turn every protection off).
                    let _ = policies.set(index, PolicyEntry { slot: 0, ..entry }, 0);
                }
            }
            if let Ok(mut map) = self.map::<NameKey, NameNode>(names::NAME_RULES) {
                for key in &slot.names {
                    let _ = map.remove(key);
                }
            }
            if let Ok(mut map) = self.map::<InodeKey, FileRule>(names::INODE_RULES) {
                for key in &slot.inodes {
                    let _ = map.remove(key);
                }
            }
            if let Ok(mut map) = self.map::<SocketKey, u8>(names::SOCKET_RULES) {
                for key in &slot.sockets {
                    let _ = map.remove(key);
                }
            }
            if let Ok(mut map) = self.map::<UnixKey, u8>(names::UNIX_RULES) {
                for key in &slot.unix {
                    let _ = map.remove(key);
                }
            }
            if let Ok(mut trie) = self.net_map() {
                for key in &slot.net {
                    let _ = trie.remove(key);
                }
            }
        }
    }

    /// For each policy, the identity the kernel gives each existing path its
    /// deny rules name, with the rule. Paths that do not exist have none (yet):
    /// their rules still apply by name.
    fn probe_identities(&mut self, policies: &[Compiled]) -> Result<Vec<Vec<(FileId, Anchor, FileRule)>>> {
        // What each policy follows: the paths its deny rules name, and the
        // files its rules by extension cover now.
        let wanted: Vec<Vec<(Anchor, FileRule)>> =
            policies.iter().map(|p| followed(&p.inode_anchors, &p.extension_denies)).collect();
        let mut paths: BTreeMap<PathBuf, Option<FileId>> = BTreeMap::new();
        for anchors in &wanted {
            for (anchor, _) in anchors {
                paths.insert(anchor.path.clone(), None);
            }
        }
        if !paths.is_empty() {
            self.ensure_probe()?;
            let result = (|| -> Result<()> {
                for (path, id) in paths.iter_mut() {
                    *id = self.identity(path)?;
                }
                Ok(())
            })();
            self.set_probe(ProbeRequest::default())?;
            result?;
        }
        Ok(wanted
            .into_iter()
            .map(|anchors| {
                anchors
                    .into_iter()
                    .filter_map(|(anchor, rule)| {
                        paths.get(&anchor.path).copied().flatten().map(|id| (id, anchor, rule))
                    })
                    .collect()
            })
            .collect())
    }

    /// Attaches the identity probe the first time it is needed. Kept attached
    /// from then on: it costs a stat() one array lookup, and attaching and
    /// detaching at every reload costs more.
    fn ensure_probe(&mut self) -> Result<()> {
        if self.probe.is_none() {
            let program: &mut Lsm = self
                .bpf
                .program_mut(Hook::InodeGetattr.name())
                .context("the identity probe program is missing")?
                .try_into()?;
            self.probe = Some(program.attach().context("attaching the identity probe")?);
        }
        Ok(())
    }

    fn set_probe(&mut self, request: ProbeRequest) -> Result<()> {
        let map = self.bpf.map_mut(names::PROBE).context("map PROBE missing")?;
        Array::<_, ProbeRequest>::try_from(map)?.set(0, request, 0)?;
        Ok(())
    }

    /// The kernel's identity of the file at `path`, or `None` if there is none.
    fn identity(&mut self, path: &Path) -> Result<Option<FileId>> {
        static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let nonce = NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.set_probe(ProbeRequest { tgid: std::process::id(), _pad: 0, nonce })?;
        if std::fs::metadata(path).is_err() {
            return Ok(None);
        }
        let map = self.bpf.map(names::PROBE_RESULT).context("map PROBE_RESULT missing")?;
        let result: ProbeResult = Array::<_, ProbeResult>::try_from(map)?.get(&0, 0)?;
        if result.nonce != nonce {
            bail!("the kernel did not report the identity of {}", path.display());
        }
        Ok(Some(result.id))
    }

    /// Lets process `tgid` have `access` to the file at `path` under policy
    /// `slot` for `ttl`: a person's "permit once". False when there is no such
    /// file (nothing to grant).
    pub fn grant_once(
        &mut self,
        slot: u32,
        tgid: u32,
        path: &Path,
        access: u32,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        self.ensure_probe()?;
        let Some(id) = self.identity(path)? else {
            return Ok(false);
        };
        let now = systrace_agent::events::boot_ns();
        let key = systrace_common::AskKey { policy: slot, tgid, dev: id.dev, ino: id.ino };
        let grant = systrace_common::AskGrant { expires_ns: now + ttl.as_nanos() as u64, access, _pad: 0 };
        let mut map = self.map::<systrace_common::AskKey, systrace_common::AskGrant>(names::ASK_GRANTS)?;
        // Expired answers go first: the map is small and they are no use.
        let stale: Vec<_> =
            map.iter().filter_map(Result::ok).filter(|(_, g)| g.expires_ns < now).map(|(k, _)| k).collect();
        for k in stale {
            let _ = map.remove(&k);
        }
        map.insert(key, grant, 0)?;
        Ok(true)
    }

    /// Takes the event ring buffer; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.bpf.take_map(names::EVENTS).ok_or_else(|| anyhow!("map {} missing", names::EVENTS))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// A counter summed over all CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64> {
        let map = self.bpf.map(names::COUNTERS).ok_or_else(|| anyhow!("map {} missing", names::COUNTERS))?;
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(array.get(&(counter as u32), 0)?.iter().sum())
    }
}

/// Keys in a map, walked with BPF_MAP_GET_NEXT_KEY; at most `limit` (a map
/// changing under the walk may send it back to the start).
fn count_keys(fd: std::os::fd::BorrowedFd<'_>, key_size: usize, limit: u64) -> u64 {
    use std::os::fd::AsRawFd as _;
    #[repr(C)]
    struct NextKeyAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let mut key = vec![0u8; key_size.max(1)];
    let mut next = vec![0u8; key_size.max(1)];
    let mut n = 0;
    while n < limit {
        let attr = NextKeyAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: if n == 0 { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: attr points to key_size-byte buffers that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const NextKeyAttr,
                std::mem::size_of::<NextKeyAttr>(),
            )
        };
        if rc != 0 {
            break;
        }
        n += 1;
        std::mem::swap(&mut key, &mut next);
    }
    n
}

/// Waits until every BPF program that started before now has returned. LSM
/// programs run inside an RCU read-side section, and MEMBARRIER_CMD_GLOBAL is
/// implemented with synchronize_rcu(), so one call is one grace period. Where
/// membarrier is refused, a pause far longer than any hook invocation stands in.
fn wait_for_readers() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes two integer arguments and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0) };
    // With one CPU online the kernel skips the grace period, yet a reader
    // preempted inside a program may still be running: give it time.
    let one_cpu = std::thread::available_parallelism().map_or(true, |n| n.get() == 1);
    if rc != 0 || one_cpu {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Adds the deny bits of `more` to `rule`.
fn add_rule(rule: &mut FileRule, more: &FileRule) {
    rule.exact.deny |= more.exact.deny;
    rule.children.deny |= more.children.deny;
    rule.subtree.deny |= more.subtree.deny;
}

/// What a policy's deny rules follow by identity now: the paths they name
/// (`anchors`) and the files its rules by extension cover.
fn followed(anchors: &BTreeMap<Anchor, FileRule>, denies: &[ExtensionDeny]) -> Vec<(Anchor, FileRule)> {
    let mut out: Vec<(Anchor, FileRule)> = anchors.iter().map(|(a, r)| (a.clone(), *r)).collect();
    out.extend(followed_files(denies));
    out
}

/// The files the deny rules by extension cover now, as anchors with their
/// rules (at most [`MAX_FOLLOWED`] per rule; the rest are refused by name only).
fn followed_files(denies: &[ExtensionDeny]) -> Vec<(Anchor, FileRule)> {
    let mut out = Vec::new();
    for deny in denies {
        let Ok(entries) = std::fs::read_dir(&deny.dir) else {
            continue;
        };
        let names = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_symlink()))
            .map(|e| e.file_name());
        let (files, left_out) = deny.followed(names);
        if left_out > 0 {
            eprintln!(
                "systrace-agent: {} more files match {}/*.{}: refused by their names, not followed by identity (at most {MAX_FOLLOWED} are)",
                left_out,
                deny.dir.display(),
                deny.ext
            );
        }
        for (path, bits) in files {
            let mut rule = FileRule::default();
            rule.exact.deny = bits;
            out.push((Anchor::file(path), rule));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffer_grows_with_the_cpus_within_bounds() {
        assert_eq!(ring_bytes(1), 4 << 20);
        assert_eq!(ring_bytes(2), 4 << 20);
        assert_eq!(ring_bytes(6), 8 << 20);
        assert_eq!(ring_bytes(64), 64 << 20);
        assert_eq!(ring_bytes(512), 64 << 20);
    }

    #[test]
    fn a_new_policy_slot_never_shares_an_index_with_one_in_force() {
        use systrace_common::{policy_index, POLICY_INDEXES};
        // Failed reloads burned slots until the next one wraps onto slot 5's index.
        let mut next = POLICY_INDEXES + 5;
        let slot = next_free_slot(&mut next, &[5, 6]).unwrap();
        assert_eq!(slot, POLICY_INDEXES + 7);
        assert_eq!(next, slot + 1);
        assert!(policy_index(slot) != policy_index(5) && policy_index(slot) != policy_index(6));
        // Every index taken: refused, not reused, and no slot used up.
        let all: Vec<u32> = (1..=POLICY_INDEXES).collect();
        let before = next;
        assert!(next_free_slot(&mut next, &all).is_err());
        assert_eq!(next, before);
    }

    #[test]
    fn raw_devices_take_dynamic_character_majors_only() {
        let text = "Character devices:\n  1 mem\n 13 input\n248 bsg\n239 nvme-generic\n240 nvme\n\nBlock devices:\n259 blkext\n 66 nvme\n";
        let raw = raw_devices(text);
        assert!(raw.contains(&kernel_dev(1, 1)));
        assert!(raw.contains(&kernel_dev(248, ANY_MINOR)));
        assert!(raw.contains(&kernel_dev(239, ANY_MINOR)));
        assert!(raw.contains(&kernel_dev(240, ANY_MINOR)));
        assert!(!raw.contains(&kernel_dev(66, ANY_MINOR)), "block majors are not character devices");
        assert!(!raw.contains(&kernel_dev(1, 3)), "/dev/null stays open");
    }
}

//! Loads the embedded BPF programs, fills their maps from compiled policies, and
//! hands out the event ring buffer. Dropping the [`Enforcer`] detaches everything.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{
        lpm_trie::{Key as LpmKey, LpmTrie},
        HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf,
    },
    programs::Lsm,
    Btf, Ebpf, EbpfLoader,
};
use systrace_agent::{offsets::Offset, policy::Compiled};
use systrace_common::{names, net, Counter, FileKey, FileRule, Hook, NetKey, NetRule, PolicyInfo, SocketKey, UnixKey};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/systrace"));

/// The do-nothing program the benchmark attaches to measure the floor.
const BENCH_NOOP: &str = "bench_noop_file_open";

/// What [`Enforcer::set_attachment`] attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Every enforcement program (the normal state).
    Enforcing,
    /// Nothing.
    Detached,
    /// Only a program that returns 0 at once, on file_open.
    Noop,
}

impl Attachment {
    /// The state after this one when the benchmark cycles through them.
    pub fn next(self) -> Self {
        match self {
            Attachment::Enforcing => Attachment::Detached,
            Attachment::Detached => Attachment::Noop,
            Attachment::Noop => Attachment::Enforcing,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Attachment::Enforcing => "attached",
            Attachment::Detached => "detached",
            Attachment::Noop => "noop",
        }
    }
}

/// A policy as it sits in the maps.
struct Installed {
    slot: u32,
    cgroup_id: u64,
    keys: Vec<FileKey>,
    net_keys: Vec<LpmKey<NetKey>>,
    socket_keys: Vec<SocketKey>,
    unix_keys: Vec<UnixKey>,
}

pub struct Enforcer {
    bpf: Ebpf,
    /// Attached programs (name, link); see [`Enforcer::set_attachment`].
    links: Vec<(&'static str, aya::programs::lsm::LsmLinkId)>,
    installed: HashMap<String, Installed>,
    next_slot: u32,
    /// Links moved out of `links` by [`Enforcer::pin`]: they outlive the agent.
    pinned: Vec<aya::programs::links::PinnedLink>,
    /// Kernel ids of the programs behind the pinned links.
    pinned_ids: Vec<u32>,
}

/// Why loading failed, with the kernel's errno when there was one.
#[derive(Debug)]
pub struct LoadFailure {
    pub errno: Option<i32>,
    pub error: anyhow::Error,
    pub verifier_log: Option<String>,
}

impl Enforcer {
    /// Loads and attaches every program. Nothing is confined until a policy is installed.
    pub fn load(offsets: &[Offset]) -> Result<Self, LoadFailure> {
        let fail = |error: anyhow::Error, verifier_log: Option<String>| LoadFailure {
            errno: error.chain().find_map(|e| e.downcast_ref::<std::io::Error>()?.raw_os_error()),
            error,
            verifier_log,
        };
        let values: Vec<(&'static str, u64)> = offsets.iter().map(|o| (o.global, o.bytes)).collect();
        let mut loader = EbpfLoader::new();
        for (global, bytes) in &values {
            loader.override_global(global, bytes, true);
        }
        let mut bpf = loader.load(OBJECT).map_err(|e| fail(anyhow!(e).context("creating maps"), None))?;
        let btf = Btf::from_sys_fs().map_err(|e| fail(anyhow!(e).context("reading kernel BTF"), None))?;
        let mut links = Vec::new();
        for hook in Hook::ALL {
            // Each program is named after the hook it attaches to.
            let (name, hook) = (hook.name(), hook.name());
            let program: &mut Lsm = bpf
                .program_mut(name)
                .ok_or_else(|| fail(anyhow!("program {name} missing from the object"), None))?
                .try_into()
                .map_err(|e| fail(anyhow!("{name}: {e}"), None))?;
            if let Err(e) = program.load(hook, &btf) {
                let log = match &e {
                    aya::programs::ProgramError::LoadError { verifier_log, .. } => Some(verifier_log.to_string()),
                    _ => None,
                };
                return Err(fail(anyhow!(e).context(format!("loading LSM program {name}")), log));
            }
            let link =
                program.attach().map_err(|e| fail(anyhow!(e).context(format!("attaching {name} to {hook}")), None))?;
            links.push((name, link));
        }
        // No SIGIO may reach the agent (see file_send_sigiotask).
        let agent = bpf.map_mut(names::AGENT).ok_or_else(|| fail(anyhow!("map {} missing", names::AGENT), None))?;
        aya::maps::Array::<_, u32>::try_from(agent)
            .and_then(|mut a| a.set(0, std::process::id(), 0))
            .map_err(|e| fail(anyhow!(e).context("recording the agent's pid"), None))?;
        Ok(Enforcer { bpf, links, installed: HashMap::new(), next_slot: 1, pinned: Vec::new(), pinned_ids: Vec::new() })
    }

    /// Pins every attached link in `dir`, one file per hook, so the programs keep
    /// enforcing if this process dies. Pinned links are not detached when the
    /// enforcer is dropped; [`Enforcer::unpin`] does that.
    pub fn pin(&mut self, dir: &std::path::Path) -> Result<()> {
        for (name, link) in self.links.drain(..) {
            let program: &mut Lsm = self.bpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
            let link = program.take_link(link)?;
            let fd_link = aya::programs::links::FdLink::from(link);
            if let Ok(info) = fd_link.info() {
                self.pinned_ids.push(info.program_id());
            }
            let pinned = fd_link.pin(dir.join(name)).with_context(|| format!("pinning {name} in {}", dir.display()))?;
            self.pinned.push(pinned);
        }
        Ok(())
    }

    /// Kernel ids of the pinned programs, to wait for their release.
    pub fn pinned_ids(&self) -> &[u32] {
        &self.pinned_ids
    }

    /// Removes the pins; the links detach when their descriptors close.
    pub fn unpin(&mut self) {
        for pinned in self.pinned.drain(..) {
            if let Err(e) = pinned.unpin() {
                eprintln!("systrace-agent: removing a pin: {e}");
            }
        }
    }

    /// Benchmarks only: which programs are attached, keeping maps and policies.
    pub fn set_attachment(&mut self, attachment: Attachment) -> Result<()> {
        for (name, link) in self.links.drain(..) {
            let program: &mut Lsm = self.bpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
            program.detach(link)?;
        }
        let names: Vec<(&'static str, &'static str)> = match attachment {
            Attachment::Enforcing => Hook::ALL.iter().map(|h| (h.name(), h.name())).collect(),
            Attachment::Detached => vec![],
            Attachment::Noop => vec![(BENCH_NOOP, "file_open")],
        };
        for (name, hook) in names {
            let program: &mut Lsm = self.bpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
            if program.fd().is_err() {
                let btf = Btf::from_sys_fs()?;
                program.load(hook, &btf)?;
            }
            self.links.push((name, program.attach()?));
        }
        Ok(())
    }

    fn map<'a, K: aya::Pod, V: aya::Pod>(&'a mut self, name: &str) -> Result<BpfHashMap<&'a mut MapData, K, V>> {
        let map = self.bpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing"))?;
        Ok(BpfHashMap::try_from(map)?)
    }

    /// Installs (or replaces) a policy. The rules go in under a fresh slot first and
    /// the cgroup is pointed at that slot last, in one map update: an operation sees
    /// either the old policy or the new one, never a half-written one. The old slot
    /// is freed only after an RCU grace period, when no program can still be
    /// reading it. Returns the slot.
    pub fn install(&mut self, policy: &Compiled) -> Result<u32> {
        let slot = self.next_slot;
        self.next_slot += 1;
        let mut keys = Vec::with_capacity(policy.rules.len());
        let mut net_keys = Vec::with_capacity(policy.net.len());
        let mut socket_keys = Vec::with_capacity(policy.sockets.len());
        let mut unix_keys = Vec::with_capacity(policy.unix.len());
        let written = (|| -> Result<()> {
            self.map::<u32, PolicyInfo>(names::POLICIES)?.insert(slot, policy.info, 0)?;
            let mut rules = self.map::<FileKey, FileRule>(names::FILE_RULES)?;
            for (&(dev, ino), rule) in &policy.rules {
                let key = FileKey { policy: slot, _pad: 0, dev, ino };
                rules.insert(key, *rule, 0).with_context(|| format!("file rule for inode {ino}"))?;
                keys.push(key);
            }
            let mut trie = self.net_map()?;
            for (&(op, family, proto, addr, prefix), rule) in &policy.net {
                let key = LpmKey::new(
                    net::FIXED_PREFIX_BITS + prefix,
                    NetKey { policy: slot, op, family, proto, _pad: 0, addr },
                );
                trie.insert(&key, *rule, 0).context("network rule")?;
                net_keys.push(key);
            }
            let mut sockets = self.map::<SocketKey, u8>(names::SOCKET_RULES)?;
            for (&(family, sock_type), verdict) in &policy.sockets {
                let key = SocketKey { policy: slot, family, sock_type };
                sockets.insert(key, *verdict, 0).context("socket rule")?;
                socket_keys.push(key);
            }
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
                unix_keys.push(key);
            }
            Ok(())
        })();
        if let Err(e) = written {
            self.remove_slot(slot, &keys, &net_keys, &socket_keys, &unix_keys);
            return Err(e.context(format!("writing policy {}", policy.name)));
        }
        let previous = self.installed.remove(&policy.name);
        if let Err(e) = self.map::<u64, u32>(names::CGROUP_POLICY).and_then(|mut m| Ok(m.insert(policy.cgroup_id, slot, 0)?)) {
            self.remove_slot(slot, &keys, &net_keys, &socket_keys, &unix_keys);
            if let Some(old) = previous {
                self.installed.insert(policy.name.clone(), old);
            }
            return Err(e.context(format!("binding policy {} to its cgroup", policy.name)));
        }
        self.installed.insert(policy.name.clone(), Installed { slot, cgroup_id: policy.cgroup_id, keys, net_keys, socket_keys, unix_keys });
        if let Some(old) = previous {
            self.retire(old, Some(policy.cgroup_id));
        }
        Ok(slot)
    }

    /// Stops confining a policy's cgroup and frees its rules.
    pub fn uninstall(&mut self, name: &str) {
        if let Some(old) = self.installed.remove(name) {
            self.retire(old, None);
        }
    }

    /// Names of the installed policies.
    pub fn installed(&self) -> impl Iterator<Item = &str> {
        self.installed.keys().map(String::as_str)
    }

    /// Unbinds `old`'s cgroup (unless `still_bound` now points elsewhere), waits
    /// for programs that may hold the old slot to finish, then deletes its entries.
    fn retire(&mut self, old: Installed, still_bound: Option<u64>) {
        if still_bound != Some(old.cgroup_id) {
            let _ = self.map::<u64, u32>(names::CGROUP_POLICY).and_then(|mut m| Ok(m.remove(&old.cgroup_id)?));
        }
        wait_for_readers();
        self.remove_slot(old.slot, &old.keys, &old.net_keys, &old.socket_keys, &old.unix_keys);
    }

    fn net_map(&mut self) -> Result<LpmTrie<&mut MapData, NetKey, NetRule>> {
        let map = self.bpf.map_mut(names::NET_RULES).ok_or_else(|| anyhow!("map {} missing", names::NET_RULES))?;
        Ok(LpmTrie::try_from(map)?)
    }

    fn remove_slot(&mut self, slot: u32, keys: &[FileKey], net_keys: &[LpmKey<NetKey>], socket_keys: &[SocketKey], unix_keys: &[UnixKey]) {
        if let Ok(mut unix) = self.map::<UnixKey, u8>(names::UNIX_RULES) {
            for key in unix_keys {
                let _ = unix.remove(key);
            }
        }
        if let Ok(mut sockets) = self.map::<SocketKey, u8>(names::SOCKET_RULES) {
            for key in socket_keys {
                let _ = sockets.remove(key);
            }
        }
        if let Ok(mut rules) = self.map::<FileKey, FileRule>(names::FILE_RULES) {
            for key in keys {
                let _ = rules.remove(key);
            }
        }
        if let Ok(mut trie) = self.net_map() {
            for key in net_keys {
                let _ = trie.remove(key);
            }
        }
        if let Ok(mut policies) = self.map::<u32, PolicyInfo>(names::POLICIES) {
            let _ = policies.remove(&slot);
        }
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

/// Waits until every BPF program that started before now has returned. LSM
/// programs run inside an RCU read-side section, and MEMBARRIER_CMD_GLOBAL is
/// implemented with synchronize_rcu(), so one call is one grace period. Where
/// membarrier is refused, a pause far longer than any hook invocation stands in.
fn wait_for_readers() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes two integer arguments and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0) };
    if rc != 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

//! Pinned links: what keeps the programs enforcing when the agent dies.
//!
//! Each agent pins its links under `/sys/fs/bpf/systrace/<pid>/<hook>`. A link
//! stays attached for as long as a pin or an open descriptor refers to it, so a
//! killed or crashed agent leaves its programs enforcing the last policy it
//! loaded (events are then counted as ring-full drops, since nobody reads them).
//! The next agent attaches its own programs, installs its policies, and only then
//! removes the old pins: there is no moment without enforcement. A clean stop
//! (SIGINT, SIGTERM) removes the agent's own pins, and `systrace-agent detach`
//! removes what a dead agent left.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use systrace_agent::cgroups;

/// Where agents pin their links.
pub const PIN_ROOT: &str = "/sys/fs/bpf/systrace";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string and an out-struct of the right type.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Makes sure `/sys/fs/bpf` is a bpffs (mounting one if not) and returns this
/// agent's own, empty pin directory.
pub fn prepare(root: &Path) -> Result<PathBuf> {
    prepare_named(root, &std::process::id().to_string())
}

/// Prefix of the pin directories of `exec` and `learn` agents: a service
/// agent that starts takes over what dead agents left, but not these while
/// their owner runs (they confine one command, not the services).
pub const SESSION_PREFIX: &str = "exec-";

/// Before a dead `exec` agent's pins go: kills what is left in its command's
/// cgroup, which would otherwise run on unconfined (its child died with it,
/// but a daemonized grandchild need not have), and removes the cgroup.
pub fn end_session(dir: &Path, cgroup_root: &Path) {
    let Some(pid) = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix(SESSION_PREFIX)) else {
        return;
    };
    let cgroup = cgroup_root.join(cgroups::session_cgroup(pid).trim_start_matches('/'));
    if cgroup.is_dir() && !cgroups::kill_and_remove(&cgroup) {
        eprintln!("systrace-agent: {} still holds processes after cgroup.kill", cgroup.display());
    }
}

/// As [`prepare`], for a directory named `name`.
pub fn prepare_named(root: &Path, name: &str) -> Result<PathBuf> {
    let bpffs = root.parent().context("pin root has no parent")?;
    if !is_bpffs(bpffs) {
        let target = std::ffi::CString::new(bpffs.as_os_str().as_encoded_bytes())?;
        // SAFETY: valid C strings; mounting bpffs takes no data.
        let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            bail!("{} is not a bpffs and mounting one failed: {}", bpffs.display(), std::io::Error::last_os_error());
        }
    }
    let own = root.join(name);
    if own.exists() {
        // A previous agent with our pid (the pid was reused) died: its pins are stale.
        remove_dir(&own)?;
    }
    std::fs::create_dir_all(&own).with_context(|| format!("creating {}", own.display()))?;
    Ok(own)
}

/// Pin directories other than `own`: those of agents that died, or of one still
/// running (whose programs stay attached through its descriptors anyway).
pub fn others(root: &Path, own: Option<&Path>) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| Some(p.as_path()) != own && p.is_dir()).collect()
}

/// The kernel ids of the programs whose links are pinned in `dir`.
pub fn program_ids(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    // Not the map pins: a map's descriptor would be read as a link's and give
    // a number that may be any program's id.
    entries
        .filter_map(Result::ok)
        .filter(|e| !is_map_pin(&e.path()))
        .filter_map(|e| aya::programs::links::PinnedLink::from_pin(e.path()).ok())
        .filter_map(|pinned| aya::programs::links::FdLink::from(pinned).info().ok())
        .map(|info| info.program_id())
        .collect()
}

/// Waits until none of the programs `ids` is loaded any more. A link whose
/// last reference is gone is released from a kernel work queue; its id goes
/// first, and the program is taken off the hook's trampoline after, seconds
/// later on a busy or emulated machine. A program's id goes only once nothing
/// can call it any more, so that is what this waits for. Returns whether they
/// all went within `timeout`.
pub fn wait_released(ids: &[u32], timeout: std::time::Duration) -> bool {
    let started = std::time::Instant::now();
    loop {
        if still_loaded(ids).is_empty() {
            return true;
        }
        if started.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The names of the programs among `ids` the kernel still has.
pub fn still_loaded(ids: &[u32]) -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .map(|p| p.name_as_str().unwrap_or("?").to_string())
        .collect()
}

/// Whether the agent that made the pin directory `dir` (named by its pid) is
/// still running.
pub fn owner_alive(dir: &Path) -> bool {
    let Some(pid) = dir.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let pid = pid.strip_prefix(SESSION_PREFIX).unwrap_or(pid);
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "systrace-agent")
}

/// Beside the links in a pin directory: the agent's event ring buffer and
/// counters, for the agent that takes over to account for the gap.
pub const EVENTS_PIN: &str = "map-events";
pub const COUNTERS_PIN: &str = "map-counters";

fn is_map_pin(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("map-"))
}

/// Removes a pin directory; each removed pin drops the link it held. Returns
/// how many links it held.
pub fn remove_dir(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        if !is_map_pin(&path) {
            removed += 1;
        }
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(removed)
}

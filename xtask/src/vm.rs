//! Boots a Debian kernel in QEMU with an initramfs holding busybox, the agent, the
//! test binary and their shared libraries, and streams the serial console back.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{say, setup::Kernel, workspace_root};

/// Printed by /init as the VM's last words, so a run that ends without it crashed.
pub const END_MARKER: &str = "SYSTRACE-VM-END";

/// Files that go into the initramfs: (source on the host, path in the VM).
pub struct Payload {
    pub files: Vec<(PathBuf, String)>,
    /// Shell commands /init runs after mounting everything.
    pub script: String,
}

const INIT_PRELUDE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t securityfs securityfs /sys/kernel/security
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
# A kernel that locks up stops the VM at once, with every CPU's stack on the
# console, rather than at the run's timeout with nothing to go on.
echo 1 > /proc/sys/kernel/softlockup_panic
echo 1 > /proc/sys/kernel/softlockup_all_cpu_backtrace
echo 1 > /proc/sys/kernel/hung_task_panic 2>/dev/null
echo 5 > /proc/sys/kernel/printk
if [ -f /lib/modules/systrace/order ]; then
  for m in $(cat /lib/modules/systrace/order); do
    insmod /lib/modules/systrace/$m.ko 2>/dev/null || echo "vm: module $m did not load"
  done
fi
echo "vm: kernel $(uname -r), LSMs $(cat /sys/kernel/security/lsm)"
"#;

fn shared_libraries(binary: &Path) -> Result<BTreeSet<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from)).collect())
}

/// The kernel's test modules and their load order, as payload files.
pub fn module_files(kernel: &Kernel) -> Vec<(PathBuf, String)> {
    let mut files: Vec<(PathBuf, String)> = kernel
        .modules
        .iter()
        .filter_map(|m| Some((m.clone(), format!("/lib/modules/systrace/{}", m.file_name()?.to_str()?))))
        .collect();
    if let Some(first) = kernel.modules.first() {
        files.push((first.with_file_name("order"), "/lib/modules/systrace/order".into()));
    }
    files
}

/// Every file below `dir`, at the same path in the VM.
pub fn tree_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                files.push((path.clone(), path.to_string_lossy().into_owned()));
            }
        }
    }
    Ok(files)
}

/// Debian's Python: the interpreter as /usr/bin/python3 and its standard
/// library, without the parts no test runs (tests, IDLE, Tk, the build
/// configuration: 40 MiB down to about 24).
pub fn python_files() -> Result<Vec<(PathBuf, String)>> {
    let exe = std::fs::canonicalize("/usr/bin/python3").context("finding Debian's python3")?;
    let version = exe.file_name().and_then(|n| n.to_str()).context("python3's name")?.to_string();
    let lib = Path::new("/usr/lib").join(&version);
    let skip = [
        "test",
        "idlelib",
        "tkinter",
        "lib2to3",
        "pydoc_data",
        "ensurepip",
        "distutils",
        "site-packages",
        "dist-packages",
        "turtledemo",
        "unittest",
    ];
    let mut files = vec![(exe.clone(), "/usr/bin/python3".to_string())];
    let mut stack = vec![lib.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if !skip.contains(&name) && !name.starts_with("config-") {
                    stack.push(path);
                }
            } else if path.is_file() {
                files.push((path.clone(), path.to_string_lossy().into_owned()));
            }
        }
    }
    Ok(files)
}

/// Writes the initramfs for `payload` and returns its path.
pub fn initramfs(name: &str, payload: &Payload) -> Result<PathBuf> {
    let root = workspace_root().join("target/vm").join(name);
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    let copy = |src: &Path, dst: &str| -> Result<()> {
        let target = root.join(dst.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap())?;
        std::fs::copy(src, &target).with_context(|| format!("copying {} into the initramfs", src.display()))?;
        // Python checks its cached bytecode against the source's mtime.
        if let Ok(modified) = std::fs::metadata(src).and_then(|m| m.modified()) {
            let _ = std::fs::File::options().write(true).open(&target).and_then(|f| f.set_modified(modified));
        }
        Ok(())
    };
    copy(Path::new("/bin/busybox"), "/bin/busybox")?;
    let mut libs = BTreeSet::new();
    for (src, dst) in &payload.files {
        copy(src, dst)?;
        if dst.starts_with("/usr/bin/") || dst.ends_with(".so") {
            libs.extend(shared_libraries(src)?);
        }
    }
    for lib in &libs {
        copy(lib, &lib.to_string_lossy())?;
    }
    let init = root.join("init");
    std::fs::write(&init, format!("{INIT_PRELUDE}{}\necho {END_MARKER}\npoweroff -f\n", payload.script))?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let image = workspace_root().join("target/vm").join(format!("{name}.cpio.gz"));
    pack(&root, &image, ".")?;
    Ok(image)
}

/// Packs the tree `dir` into `image`, a gzip-compressed cpio archive the
/// kernel unpacks as its initramfs; `find` lists what goes in (`.`, or
/// `. -mindepth 1` to leave the top directory itself out).
pub fn pack(dir: &Path, image: &Path, find: &str) -> Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find {find} | cpio -o -H newc --quiet | gzip -1 > '{}'",
            dir.display(),
            image.display()
        ))
        .status()?;
    if !status.success() {
        bail!("packing {} into {} failed", dir.display(), image.display());
    }
    Ok(())
}

/// A whole Debian system as the initramfs: the cached root file system
/// (`rootfs`, see `setup::rootfs`) and, unpacked over it, `files` and the
/// `links` (path in the VM, target) that enable units; paths go through no
/// symlink of the system (`/usr/lib`, not `/lib`). The kernel unpacks
/// concatenated archives in order, so the large one is never rebuilt.
pub fn system_initramfs(
    name: &str,
    rootfs: &Path,
    files: &[(PathBuf, String)],
    links: &[(&str, &str)],
) -> Result<PathBuf> {
    let root = workspace_root().join("target/vm").join(name);
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    for (src, dst) in files {
        let target = root.join(dst.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap())?;
        std::fs::copy(src, &target).with_context(|| format!("copying {} into the initramfs", src.display()))?;
    }
    for (path, target) in links {
        let link = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(link.parent().unwrap())?;
        std::os::unix::fs::symlink(target, &link)?;
    }
    let overlay = workspace_root().join("target/vm").join(format!("{name}-overlay.cpio.gz"));
    // Not `.`, and no top-level name that is a symlink in the system (merged
    // /usr: /lib, /bin, /sbin): the kernel would put a directory in its
    // place, and /sbin/init would be gone.
    pack(&root, &overlay, ". -mindepth 1")?;
    let image = workspace_root().join("target/vm").join(format!("{name}.cpio.gz"));
    let mut out = std::fs::File::create(&image)?;
    std::io::copy(&mut std::fs::File::open(rootfs)?, &mut out)?;
    std::io::copy(&mut std::fs::File::open(&overlay)?, &mut out)?;
    Ok(image)
}

/// Boots `kernel` with `initrd`; calls `on_line` for every console line. Returns
/// whether the VM reached the end marker within `timeout`.
/// How the VM's CPU runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cpu {
    /// Two vCPUs (MTTCG): fastest, for tests.
    Fast,
    /// One vCPU in QEMU's icount mode: guest time advances by one nanosecond per
    /// guest instruction, so timings inside the guest are instruction counts,
    /// repeatable whatever else the host is doing. For benchmarks.
    Counted,
}

pub fn boot(
    kernel: &Kernel,
    extra_cmdline: &str,
    initrd: &Path,
    cpu: Cpu,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<bool> {
    let limits = Limits { quiet: timeout, total: timeout };
    boot_with(kernel, extra_cmdline, initrd, cpu, "1G", limits, |line| {
        on_line(line);
        false
    })
}

/// When a VM that has not reached its end marker is stopped.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest time without progress (a line the caller counts as progress,
    /// such as a finished test case): a hung guest is stopped after this.
    pub quiet: Duration,
    /// Longest time in all, whatever the progress: a safety net only, far
    /// beyond what a slow machine needs, so that a scenario whose cases keep
    /// finishing is judged by its cases and not by a wall-clock guess.
    pub total: Duration,
}

/// [`boot`] with `memory` (QEMU's `-m`) for the guest, and [`Limits`]:
/// `on_line` returns whether the line was progress.
pub fn boot_with(
    kernel: &Kernel,
    extra_cmdline: &str,
    initrd: &Path,
    cpu: Cpu,
    memory: &str,
    limits: Limits,
    mut on_line: impl FnMut(&str) -> bool,
) -> Result<bool> {
    let cpu_args: &[&str] = match cpu {
        Cpu::Fast => &["-smp", "2"],
        Cpu::Counted => &["-smp", "1", "-icount", "shift=0,sleep=off,align=off"],
    };
    // A soft lockup stops the VM at once with every CPU's stack, as the
    // initramfs's /init also asks; on a systemd boot (rdinit=/sbin/init)
    // nothing else would, and the stacks need the console at level 5: they
    // are how a lockup in the kernel's own code patching is told apart (and
    // its scenario run again) from one of ours.
    let loglevel = if extra_cmdline.contains("rdinit=/sbin/init") { 5 } else { 3 };
    // SYSTRACE_VM_APPEND: more kernel parameters, for experiments by hand.
    let more = std::env::var("SYSTRACE_VM_APPEND").unwrap_or_default();
    let cmdline = format!(
        "console=ttyS0 panic=-1 softlockup_panic=1 softlockup_all_cpu_backtrace=1 quiet loglevel={loglevel} {extra_cmdline} {more}"
    );
    say(&format!(
        "booting Linux {} ({}) in QEMU [{}] (software emulation, {}, {memory} of memory; the boot takes about 10 s{})",
        kernel.release,
        kernel.spec.debian,
        extra_cmdline,
        if cpu == Cpu::Fast { "2 vCPUs" } else { "1 vCPU, instruction-counted time" },
        if extra_cmdline.contains("rdinit=/sbin/init") { ", a minute with systemd" } else { "" }
    ));
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", memory, "-no-reboot"])
        .args(cpu_args)
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(&cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
            if tx.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let started = Instant::now();
    let hard_deadline = started + limits.total;
    let mut quiet_deadline = started + limits.quiet;
    let mut finished = false;
    loop {
        let deadline = quiet_deadline.min(hard_deadline);
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if line.contains(END_MARKER) {
                    finished = true;
                }
                if on_line(&line) {
                    quiet_deadline = Instant::now() + limits.quiet;
                }
                // A guest flooding the console (lockup traces) never lets
                // recv_timeout time out: look at the clock on every line too.
                let now = Instant::now();
                if !finished && (now >= hard_deadline || now >= quiet_deadline) {
                    say(&format!("the VM went past its limits ({limits:?}) while printing; stopping it"));
                    let _ = child.kill();
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= hard_deadline {
                    say(&format!("the VM did not finish within {:?} in all; stopping it", limits.total));
                } else {
                    say(&format!("the VM made no progress for {:?}; stopping it", limits.quiet));
                }
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    Ok(finished)
}

//! Installs what a fresh machine lacks: Debian packages, nightly's rust-src,
//! bpf-linker built against nightly's own LLVM, and the two Debian kernels.
//! Each step checks first and says what it does when it has to do it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{cache_dir, run, say};

/// The file system makers the living-system cases run inside the VM.
pub const MKFS_EXT4: &str = "/usr/sbin/mke2fs";
pub const MKFS_BTRFS: &str = "/sbin/mkfs.btrfs";

const PACKAGES: [(&str, &str); 15] = [
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("busybox-static", "/bin/busybox"),
    ("cpio", "/usr/bin/cpio"),
    ("debian-archive-keyring", "/usr/share/keyrings/debian-archive-keyring.gpg"),
    ("xz-utils", "/usr/bin/xz"),
    // A static 32-bit program for the bypass cases through the compat system calls.
    ("gcc-multilib", "/usr/lib32/libc.a"),
    ("e2fsprogs", MKFS_EXT4),
    ("btrfs-progs", MKFS_BTRFS),
    // Debian's Python, whose http.server the policy-generation suite learns.
    ("python3", "/usr/bin/python3"),
    // tmux answers `exec --ask` prompts in the VM as a person would.
    ("tmux", "/usr/bin/tmux"),
    ("ncurses-base", "/lib/terminfo/s/screen"),
    // The root file system of the VM that boots systemd.
    ("debootstrap", "/usr/sbin/debootstrap"),
    // The benchmark's AppArmor rows load their profile with Debian's parser.
    ("apparmor", APPARMOR_PARSER),
    // The OpenTelemetry receiver of the systemd VM comes from PyPI as a wheel.
    ("curl", "/usr/bin/curl"),
    ("unzip", "/usr/bin/unzip"),
];

/// Kernel modules the VM tests load (with what they depend on): SCTP for the
/// network cases, loop, btrfs and overlay for the file systems file rules are
/// tested on, binfmt_misc for the bypass case that registers an interpreter.
/// The cloud kernels build them as modules.
pub const MODULES: [&str; 5] = ["sctp", "loop", "btrfs", "overlay", "binfmt_misc"];

pub fn all() -> Result<()> {
    packages()?;
    rust_src()?;
    bpf_linker()?;
    Ok(())
}

fn packages() -> Result<()> {
    let missing: Vec<&str> =
        PACKAGES.iter().filter(|(_, file)| !Path::new(file).exists()).map(|(pkg, _)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!("installing Debian packages: {}", missing.join(" ")));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]).output()?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    say("adding rust-src to the nightly toolchain (needed for -Z build-std=core)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    if Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    let sysroot = String::from_utf8(Command::new("rustc").args(["+nightly", "--print", "sysroot"]).output()?.stdout)?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    // The library's name carries the LLVM and rustc versions: read it, don't guess it.
    let llvm = std::fs::read_dir(&lib_dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*.so in {}", lib_dir.display()))?;
    let lib_name = llvm.trim_start_matches("lib").trim_end_matches(".so").to_string();
    let major = lib_name.trim_start_matches("LLVM-").split(['-', '.']).next().unwrap_or_default().to_string();
    say(&format!(
        "building bpf-linker against nightly's LLVM {major} ({lib_name}); this takes 2 to 6 minutes on 2 cores"
    ));
    let rustflags = format!("-L {0} -l dylib={lib_name} -C link-arg=-Wl,-rpath,{0}", lib_dir.display());
    run(Command::new("cargo")
        .args(["install", "--locked", "bpf-linker", "--no-default-features", "--features"])
        .arg(format!("llvm-{major},no-llvm-linking"))
        .env("RUSTFLAGS", rustflags))
    .or_else(|_| {
        // --locked can fail when the published lock file predates the toolchain.
        say("retrying the bpf-linker build without --locked");
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--no-default-features", "--features"])
            .arg(format!("llvm-{major},no-llvm-linking"))
            .env("RUSTFLAGS", format!("-L {0} -l dylib={lib_name} -C link-arg=-Wl,-rpath,{0}", lib_dir.display())))
    })
}

/// A Debian kernel the VM tests boot.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    /// Short name used on the command line (`--kernel 6.1`).
    pub label: &'static str,
    pub debian: &'static str,
    /// Debian suite whose package list has it; `None`: the machine's own sources.
    pub suite: Option<&'static str>,
    /// What the kernel's version starts with (`6.1.0-`, `6.12.`); empty: the
    /// newest version the suite has, whatever it is.
    pub version_prefix: &'static str,
    /// Extra kernel command line.
    pub cmdline: &'static str,
    /// A command line with the BPF LSM left out, for the refusal test.
    pub cmdline_without_bpf_lsm: &'static str,
    /// The benchmark's: AppArmor active too, for its rows (Debian 13 boots
    /// with it; Debian 12 leaves it out of the default list, as it does bpf).
    pub bench_cmdline: &'static str,
}

/// Debian's AppArmor profile compiler and loader.
pub const APPARMOR_PARSER: &str = "/sbin/apparmor_parser";

/// The LSM list of the 7.x kernels' configuration, without bpf.
const LSM_7_WITHOUT_BPF: &str = "lsm=landlock,lockdown,yama,loadpin,safesetid,integrity,apparmor";

/// The matrix. Whichever of them are the oldest and the newest once fetched
/// run every scenario; the kernels between them run the core set (see
/// `plan.rs` and the README, "Kernels").
pub const KERNELS: [KernelSpec; 4] = [
    KernelSpec {
        label: "6.1",
        debian: "Debian 12",
        suite: None,
        version_prefix: "6.1.0-",
        // Debian 12 leaves bpf out of the default LSM list.
        cmdline: "lsm=lockdown,capability,landlock,yama,bpf",
        cmdline_without_bpf_lsm: "lsm=lockdown,capability,landlock,yama",
        bench_cmdline: "lsm=lockdown,capability,landlock,yama,apparmor,bpf",
    },
    KernelSpec {
        label: "6.12",
        debian: "Debian 13",
        suite: Some("trixie"),
        version_prefix: "6.12.",
        cmdline: "",
        cmdline_without_bpf_lsm: "lsm=lockdown,capability,landlock,yama,apparmor",
        bench_cmdline: "",
    },
    KernelSpec {
        label: "unstable",
        debian: "Debian unstable",
        suite: Some("sid"),
        version_prefix: "",
        cmdline: "",
        cmdline_without_bpf_lsm: LSM_7_WITHOUT_BPF,
        bench_cmdline: "",
    },
    KernelSpec {
        label: "backports",
        debian: "Debian 13 backports",
        suite: Some("trixie-backports"),
        version_prefix: "",
        cmdline: "",
        cmdline_without_bpf_lsm: LSM_7_WITHOUT_BPF,
        bench_cmdline: "",
    },
];

pub fn kernel_spec(label: &str) -> Result<KernelSpec> {
    KERNELS
        .iter()
        .copied()
        .find(|k| k.label == label)
        .with_context(|| format!("unknown kernel {label}; known: {}", KERNELS.map(|k| k.label).join(", ")))
}

/// A downloaded kernel image and the modules the tests load, in load order.
pub struct Kernel {
    pub spec: KernelSpec,
    pub vmlinuz: PathBuf,
    pub release: String,
    pub modules: Vec<PathBuf>,
}

/// How Debian packages one kernel version.
#[derive(Debug, PartialEq, Eq)]
enum Packaging {
    /// Up to 6.12: `linux-image-V-unsigned` holds `/boot/vmlinuz-V` and the modules.
    Unsigned,
    /// From 7.x: `linux-binary-V` holds `/usr/lib/modules/V/vmlinuz`,
    /// `linux-modules-V` the modules, `linux-base-V` the configuration and
    /// the list of built-in modules; `linux-image-V` only depends on them.
    Split,
}

impl Packaging {
    fn packages(&self, version: &str) -> Vec<String> {
        match self {
            Packaging::Unsigned => vec![format!("linux-image-{version}-cloud-amd64-unsigned")],
            // linux-base-V has the configuration and modules.builtin.
            Packaging::Split => vec![
                format!("linux-binary-{version}-cloud-amd64"),
                format!("linux-modules-{version}-cloud-amd64"),
                format!("linux-base-{version}-cloud-amd64"),
            ],
        }
    }
}

/// The newest kernel version among package names (`linux-image-V-cloud-amd64`,
/// with or without `-unsigned`, or `linux-binary-V-cloud-amd64`) whose
/// version starts with `prefix`, and how it is packaged.
fn newest_kernel(names: &[&str], prefix: &str) -> Option<(String, Packaging)> {
    let version_of = |name: &str| -> Option<(String, bool)> {
        let rest = name.strip_prefix("linux-image-").or_else(|| name.strip_prefix("linux-binary-"))?;
        let (version, split) = match rest.strip_suffix("-cloud-amd64-unsigned") {
            Some(v) => (v, false),
            None => (rest.strip_suffix("-cloud-amd64")?, name.starts_with("linux-binary-")),
        };
        // A version starts with a digit (not `unsigned-`, not a meta-package).
        (version.starts_with(|c: char| c.is_ascii_digit()) && version.starts_with(prefix))
            .then(|| (version.to_string(), split))
    };
    let mut versions: Vec<(String, bool)> =
        names.iter().filter(|n| !n.contains("-dbg")).filter_map(|n| version_of(n)).collect();
    versions.sort_by(|a, b| version_cmp(&a.0, &b.0));
    let newest = versions.last()?.0.clone();
    let split = versions.iter().any(|(v, split)| *v == newest && *split);
    let unsigned = names.contains(&format!("linux-image-{newest}-cloud-amd64-unsigned").as_str());
    let packaging = if split || !unsigned { Packaging::Split } else { Packaging::Unsigned };
    Some((newest, packaging))
}

/// Returns the cached kernel, downloading it on first use.
pub fn kernel(spec: KernelSpec) -> Result<Kernel> {
    let dir = cache_dir()?.join("kernels").join(spec.label);
    if let Some(k) = find_vmlinuz(&dir, spec)? {
        return Ok(k);
    }
    std::fs::create_dir_all(&dir)?;
    let apt_opts = apt_options(spec)?;
    let list = Command::new("apt-cache")
        .args(&apt_opts)
        .args(["search", "--names-only", "^linux-(image|binary)-[0-9].*-cloud-amd64(-unsigned)?$"])
        .output()?;
    let text = String::from_utf8_lossy(&list.stdout);
    let names: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    let Some((version, packaging)) = newest_kernel(&names, spec.version_prefix) else {
        bail!("no linux-image-{}*-cloud-amd64 package found in the {} package list", spec.version_prefix, spec.debian);
    };
    let packages = packaging.packages(&version);
    say(&format!("downloading kernel {version} ({}, {}; about 25 to 40 MB)", spec.debian, packages.join(" and ")));
    let download = dir.join("download");
    if download.exists() {
        std::fs::remove_dir_all(&download)?;
    }
    std::fs::create_dir_all(&download)?;
    run(Command::new("apt-get").args(&apt_opts).args(["download", "-q"]).args(&packages).current_dir(&download))?;
    let unpacked = dir.join("unpacked");
    if unpacked.exists() {
        std::fs::remove_dir_all(&unpacked)?;
    }
    for deb in std::fs::read_dir(&download)?.filter_map(|e| e.ok().map(|e| e.path())) {
        if deb.extension().is_some_and(|x| x == "deb") {
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        }
    }
    let image = match packaging {
        Packaging::Unsigned => unpacked.join("boot").join(format!("vmlinuz-{version}-cloud-amd64")),
        Packaging::Split => unpacked.join("usr/lib/modules").join(format!("{version}-cloud-amd64")).join("vmlinuz"),
    };
    anyhow::ensure!(image.is_file(), "no kernel image at {} in {}", image.display(), packages.join(", "));
    say(&format!("extracting kernel modules {} and what they need", MODULES.join(", ")));
    extract_modules(&unpacked, &dir.join("modules"))?;
    // One image per cache: an older one left beside would be found first.
    for old in std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path())) {
        if old.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")) {
            std::fs::remove_file(&old)?;
        }
    }
    std::fs::copy(&image, dir.join(format!("vmlinuz-{version}-cloud-amd64")))?;
    std::fs::remove_dir_all(&unpacked)?;
    std::fs::remove_dir_all(&download)?;
    find_vmlinuz(&dir, spec)?.context("kernel vanished after download")
}

/// Copies [`MODULES`] and the modules they depend on (from each module's
/// `depends=` field) out of an unpacked kernel package into `out`,
/// decompressed, with an `order` file listing them dependencies first.
fn extract_modules(unpacked: &Path, out: &Path) -> Result<()> {
    let mut index = std::collections::BTreeMap::new();
    let mut builtin = std::collections::BTreeSet::new();
    let mut stack = vec![unpacked.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "modules.builtin") {
                // Lines such as kernel/fs/overlayfs/overlay.ko.
                for line in std::fs::read_to_string(&path)?.lines() {
                    let file = line.rsplit('/').next().unwrap_or(line);
                    if let Some(stem) = file.split(".ko").next().filter(|s| !s.is_empty()) {
                        builtin.insert(stem.replace('-', "_"));
                    }
                }
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = name.strip_suffix(".ko").or_else(|| name.strip_suffix(".ko.xz")) {
                    index.insert(stem.replace('-', "_"), path.clone());
                }
            }
        }
    }
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out)?;
    let mut order: Vec<String> = Vec::new();
    fn visit(
        name: &str,
        index: &std::collections::BTreeMap<String, PathBuf>,
        builtin: &std::collections::BTreeSet<String>,
        out: &Path,
        order: &mut Vec<String>,
        depth: usize,
    ) -> Result<()> {
        let name = name.replace('-', "_");
        if order.contains(&name) || depth > 16 {
            return Ok(());
        }
        let Some(source) = index.get(&name) else {
            // Built into this kernel, which its modules.builtin must say; a
            // module in a form not read here (.ko.zst) must not pass for one.
            if builtin.contains(&name) {
                return Ok(());
            }
            bail!("kernel module {name} is neither in the package (as .ko or .ko.xz) nor built in (modules.builtin)");
        };
        let bytes = if source.extension().is_some_and(|e| e == "xz") {
            let o = Command::new("xz").arg("-dc").arg(source).output()?;
            if !o.status.success() {
                bail!("xz -dc {} failed", source.display());
            }
            o.stdout
        } else {
            std::fs::read(source)?
        };
        let depends = bytes
            .windows(8)
            .position(|w| w == b"depends=")
            .map(|at| {
                let rest = &bytes[at + 8..];
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                String::from_utf8_lossy(&rest[..end]).into_owned()
            })
            .unwrap_or_default();
        for dep in depends.split(',').filter(|d| !d.is_empty()) {
            visit(dep, index, builtin, out, order, depth + 1)?;
        }
        std::fs::write(out.join(format!("{name}.ko")), &bytes)?;
        order.push(name);
        Ok(())
    }
    for m in MODULES {
        visit(m, &index, &builtin, out, &mut order, 0)?;
    }
    std::fs::write(out.join("order"), order.join("\n") + "\n")?;
    std::fs::write(out.join("wanted"), MODULES.join("\n"))?;
    Ok(())
}

fn find_vmlinuz(dir: &Path, spec: KernelSpec) -> Result<Option<Kernel>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    // A cache from before modules were kept is downloaded again.
    let Ok(order) = std::fs::read_to_string(dir.join("modules/order")) else {
        return Ok(None);
    };
    // A cache made for another list of modules is downloaded again.
    if std::fs::read_to_string(dir.join("modules/wanted")).ok().as_deref() != Some(MODULES.join("\n").as_str()) {
        return Ok(None);
    }
    let modules: Vec<PathBuf> =
        order.lines().filter(|l| !l.is_empty()).map(|m| dir.join("modules").join(format!("{m}.ko"))).collect();
    for e in entries {
        let path = e?.path();
        if let Some(release) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("vmlinuz-")) {
            return Ok(Some(Kernel { spec, release: release.to_string(), vmlinuz: path.clone(), modules }));
        }
    }
    Ok(None)
}

/// apt options that read a separate package list for another Debian suite, without
/// touching the machine's own sources.
fn apt_options(spec: KernelSpec) -> Result<Vec<String>> {
    let Some(suite) = spec.suite else {
        return Ok(vec![]);
    };
    let dir = cache_dir()?.join("apt").join(suite);
    std::fs::create_dir_all(dir.join("lists/partial"))?;
    let mirror = machine_mirror()?;
    let sources = dir.join("sources.list");
    std::fs::write(
        &sources,
        format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {suite} main\n"),
    )?;
    let opts = vec![
        format!("-o=Dir::Etc::SourceList={}", sources.display()),
        "-o=Dir::Etc::SourceParts=/nonexistent".to_string(),
        format!("-o=Dir::State::Lists={}", dir.join("lists").display()),
    ];
    say(&format!("reading the {suite} package list from {mirror}"));
    run(Command::new("apt-get").args(&opts).args(["update", "-q"]))?;
    Ok(opts)
}

/// The Debian mirror this machine already uses.
fn machine_mirror() -> Result<String> {
    let deb822 = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    if let Some(uri) = deb822.lines().find_map(|l| l.strip_prefix("URIs:")) {
        if let Some(first) = uri.split_whitespace().next() {
            return Ok(first.to_string());
        }
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    list.lines()
        .filter(|l| l.starts_with("deb "))
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("http")).map(str::to_string))
        .context("cannot find this machine's Debian mirror in /etc/apt")
}

/// Orders package names by their embedded numbers (6.12.9 < 6.12.117).
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).filter_map(|p| p.parse().ok()).collect()
    }
    parts(a).cmp(&parts(b))
}

/// Packages of the Debian system the `systemd` scenario boots, beyond
/// debootstrap's minimal base: systemd as PID 1, and the daemons confined there.
const ROOTFS_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "nginx",
    "busybox",
    "procps",
    // The receivers the telemetry cases send to: Debian's rsyslog (with TLS)
    // and Prometheus (with promtool); rotel's receiver links libpython3.11.
    "rsyslog",
    "rsyslog-gnutls",
    "prometheus",
    "libpython3.11",
    // A client of the monitoring API, with and without the right certificate.
    "curl",
    // The system bus and pam_systemd: logind makes a user's runtime directory
    // and session for user@UID.service, as on any Debian host.
    "dbus",
    "libpam-systemd",
];

/// rotel, an OpenTelemetry collector whose PyPI wheel ships a receiver that
/// prints what it gets: pinned by version and digest.
const ROTEL_WHEEL: &str = "https://files.pythonhosted.org/packages/95/6e/707655c5b3f6e42287a22b47fef2e9a9ae57ad33ac6cd3efb6f8c1cc1b8e/rotel-0.0.1a15-cp311-cp311-manylinux_2_34_x86_64.whl";
const ROTEL_SHA256: &str = "2f4117e58410c933e0dc042a268ef738dab2e3a5d63b5831209acdac2a6ddcb7";

/// The `rotel-agent` binary from [`ROTEL_WHEEL`], cached.
pub fn rotel() -> Result<PathBuf> {
    let dir = cache_dir()?.join("rotel");
    let binary = dir.join("rotel-agent-0.0.1a15");
    if binary.exists() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir)?;
    say("downloading rotel 0.0.1a15 (an OpenTelemetry receiver, 10 MB) from PyPI");
    let wheel = dir.join("rotel.whl");
    run(Command::new("curl").args(["-fsSL", "--retry", "3", "-o"]).arg(&wheel).arg(ROTEL_WHEEL))?;
    let out = Command::new("sha256sum").arg(&wheel).output()?;
    let digest = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string();
    if digest != ROTEL_SHA256 {
        let _ = std::fs::remove_file(&wheel);
        anyhow::bail!("rotel's wheel has digest {digest}, expected {ROTEL_SHA256}");
    }
    let out = Command::new("unzip").arg("-p").arg(&wheel).arg("rotel/rotel-agent").output()?;
    anyhow::ensure!(out.status.success() && !out.stdout.is_empty(), "unzip of rotel's wheel failed");
    let partial = dir.join("rotel-agent.tmp");
    std::fs::write(&partial, &out.stdout)?;
    std::fs::set_permissions(&partial, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::rename(&partial, &binary)?;
    let _ = std::fs::remove_file(&wheel);
    Ok(binary)
}

/// A Debian 12 root file system with systemd, as a compressed cpio archive the
/// kernel unpacks as its initramfs (no disk, no block driver module to load).
/// Made once with debootstrap from the machine's mirror and cached; a cache
/// made for another package list is made again.
pub fn rootfs() -> Result<PathBuf> {
    let dir = cache_dir()?.join("rootfs");
    let image = dir.join("bookworm.cpio.gz");
    let stamp = dir.join("packages");
    let wanted = ROOTFS_PACKAGES.join(",");
    if image.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(image);
    }
    let tree = dir.join("bookworm");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    std::fs::create_dir_all(&dir)?;
    let mirror = machine_mirror()?;
    say(&format!(
        "making a Debian 12 root file system with systemd ({wanted}) with debootstrap from {mirror}; \
         this downloads about 60 MB and takes 3 to 8 minutes, once"
    ));
    run(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={wanted}"), "bookworm"])
        .arg(&tree)
        .arg(&mirror))?;
    // What the VM does not need: apt's downloaded packages and lists, docs.
    for junk in ["var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"] {
        let path = tree.join(junk);
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
            std::fs::create_dir_all(&path)?;
        }
    }
    say("packing the root file system as an initramfs (cpio, gzip)");
    let partial = dir.join("bookworm.cpio.gz.tmp");
    crate::vm::pack(&tree, &partial, ".")?;
    std::fs::rename(&partial, &image)?;
    std::fs::remove_dir_all(&tree)?;
    std::fs::write(&stamp, &wanted)?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_package_sorts_last() {
        let mut v = [
            "linux-image-6.12.117+deb13-cloud-amd64-unsigned",
            "linux-image-6.12.9+deb13-cloud-amd64-unsigned",
            "linux-image-6.12.107+deb13-cloud-amd64-unsigned",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(v[2], "linux-image-6.12.117+deb13-cloud-amd64-unsigned");
    }

    #[test]
    fn picks_the_newest_kernel_in_either_packaging() {
        let bookworm = [
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
            "linux-image-6.1.0-57-cloud-amd64-unsigned",
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
        ];
        assert_eq!(newest_kernel(&bookworm, "6.1.0-"), Some(("6.1.0-57".into(), Packaging::Unsigned)));
        let backports = [
            "linux-image-6.12.9+deb13-cloud-amd64-unsigned",
            "linux-binary-7.2.12+deb13-cloud-amd64",
            "linux-image-7.2.12+deb13-cloud-amd64",
            "linux-binary-7.3.4+deb13-cloud-amd64",
            "linux-image-7.3.4+deb13-cloud-amd64",
            "linux-binary-unsigned-7.3.4+deb13-cloud-amd64",
            "linux-image-7.3.4+deb13-cloud-amd64-dbg",
        ];
        assert_eq!(newest_kernel(&backports, ""), Some(("7.3.4+deb13".into(), Packaging::Split)));
        assert_eq!(newest_kernel(&backports, "6.12."), Some(("6.12.9+deb13".into(), Packaging::Unsigned)));
        assert_eq!(newest_kernel(&backports, "5."), None);
    }
}

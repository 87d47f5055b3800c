//! The bypass suite: each case is an attack a confined process makes against a
//! policy that forbids what the attack is after, run under two policies: one
//! that denies by default (`deny`) and one that allows by default and names what
//! it forbids with deny rules (`allow`). Both grant the capabilities the attacks
//! need, so that systrace, not a missing capability, is what is tested.
//!
//! A case counts as denied only if the attack failed with the expected errno
//! *and* the agent reported the expected hook refusing it (with the expected
//! protection, for protections), for the attacking process (or, where the
//! refused operation runs in another process, for the file it names), in an
//! event stamped after the case began. A refusal from elsewhere (file modes,
//! a missing capability, an earlier case's event) proves nothing.
//!
//! Every case prints `BYPASS <case> <style> denied|BYPASSED` for the table
//! `cargo xtask test` draws, and a `TEST` line for the tally.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::{
    agent::Agent,
    attack, op,
    suite::{boot_ns, Runner},
};

const EPERM: i32 = 1;
const EACCES: i32 = 13;
const ENOSYS: i32 = 38;
const ROOT: &str = "/tmp/bp";
const ELSEWHERE: &str = "/sys/fs/cgroup/systrace-elsewhere";
/// The agent's own cgroup: its cgroup.kill is a target.
const AGENT_CGROUP: &str = "/sys/fs/cgroup/systrace-agent";
const EVENT_WAIT: Duration = Duration::from_secs(10);
/// A key whose extension is past the first 16 bytes of its name.
const LONG_KEY: &str = "a-host-key-name-longer-than-sixteen-bytes.key";
/// Levels of the tree deeper than PATH_MAX allows in one path.
const VERY_DEEP: usize = 2100;

/// Default deny: what the attacks need is allowed, the rest is not.
const POLICY_DENY: &str = r#"
name = "bypass-deny"
cgroup = "systrace-bypass-deny"
mode = "enforce"
default = "deny"
capabilities = ["sys_admin", "sys_ptrace", "kill", "bpf", "sys_module", "dac_override", "dac_read_search",
                "net_admin", "fowner", "chown", "fsetid", "linux_immutable", "mknod", "sys_resource",
                "sys_nice", "sys_chroot", "setuid", "setgid", "net_raw"]
include = ["libraries"]

[[file]]
path = "/tmp/bp/allowed/**"
access = ["read", "write", "create", "delete", "rename", "chmod", "chown"]

[[file]]
path = "/tmp/bp/readonly.txt"
access = ["read"]

[[file]]
path = "/tmp/bp/tool"
access = ["read"]

# A drop box: files may be put in and moved, not read.
[[file]]
path = "/tmp/bp/drop/**"
access = ["write", "create", "delete", "rename"]

# Denied by default anyway; named so that the deny also follows the directory
# itself (through a bind mount someone else makes).
[[file]]
path = "/tmp/bp/secret/**"
access = ["read", "write", "exec", "map", "create", "delete", "rename", "chmod", "chown"]
verdict = "deny"

[[file]]
path = "/tmp/bp/nest/inner/**"
access = ["read"]
verdict = "deny"

# Keys by extension, in a directory the process may otherwise work in.
[[file]]
path = "/tmp/bp/allowed/keys/*.key"
access = ["read", "write"]
verdict = "deny"

# Whatever lands in the inbox may be read: a rule anchored below a name
# that does not exist yet.
[[file]]
path = "/tmp/bp/landing/inbox/**"
access = ["read"]

[[file]]
path = "/tmp/bp/landing"
access = ["create", "delete", "rename"]

# An overlay the process may read and map, not write.
[[file]]
path = "/tmp/bp/ro-ovl/**"
access = ["read", "map"]

[[exec]]
path = "/bin/busybox"

[[exec]]
path = "/lib64/ld-linux-x86-64.so.2"

# A script that may run, under an interpreter that may run: what it reads is
# still decided.
[[exec]]
path = "/tmp/bp/allowed/script.sh"

[[file]]
path = "/sys/fs/cgroup/**"
access = ["read"]

# Its own cgroup.procs may be written (a process moving itself): the rules let
# the attack that pulls another process in reach the protection.
[[file]]
path = "/sys/fs/cgroup/systrace-bypass-deny/cgroup.procs"
access = ["write"]

[[file]]
path = "/dev/ptmx"
access = ["read", "write"]

[[file]]
path = "/dev/pts/**"
access = ["read", "write"]

[[net]]
operations = ["connect"]
protocol = "udp"
address = "127.0.0.1"
ports = 5000

[[net]]
operations = ["connect"]
protocol = "tcp"
address = "127.0.0.1"
ports = 7000

[[net]]
operations = ["connect"]
protocol = "sctp"
address = "127.0.0.1"
ports = 7000

[[net]]
operations = ["bind"]
protocol = "tcp"
address = "127.0.0.1"
ports = 9000

[[net]]
operations = ["connect"]
family = "unix"
path = "/tmp/bp/fd-secret.sock"
"#;

/// Default allow: everything but what the deny rules name.
const POLICY_ALLOW: &str = r#"
name = "bypass-allow"
cgroup = "systrace-bypass-allow"
mode = "enforce"
default = "allow"

[[file]]
path = "/tmp/bp/secret/**"
access = ["read", "write", "exec", "map", "create", "delete", "rename", "chmod", "chown"]
verdict = "deny"

[[file]]
path = "/tmp/bp/nest/inner/**"
access = ["read"]
verdict = "deny"

# Keys by extension, in a directory the process may otherwise work in.
[[file]]
path = "/tmp/bp/allowed/keys/*.key"
access = ["read", "write"]
verdict = "deny"

[[file]]
path = "/tmp/bp/readonly.txt"
access = ["write", "chmod", "chown", "delete", "rename"]
verdict = "deny"

[[file]]
path = "/tmp/bp/tool"
access = ["exec", "map"]
verdict = "deny"

[[file]]
path = "/tmp/bp/drop/**"
access = ["read"]
verdict = "deny"

[[file]]
path = "/tmp/bp/ro-ovl/**"
access = ["write"]
verdict = "deny"

[[net]]
operations = ["connect"]
protocol = "udp"
address = "127.0.0.2"
verdict = "deny"

[[net]]
operations = ["connect"]
protocol = "tcp"
address = "loopback"
ports = 7001
verdict = "deny"

[[net]]
operations = ["connect"]
protocol = "sctp"
address = "127.0.0.1"
ports = 7001
verdict = "deny"

[[net]]
operations = ["bind"]
protocol = "tcp"
ports = 9001
verdict = "deny"

[[socket]]
family = "inet"
protocol = "udplite"
verdict = "deny"

# No protocol: every protocol, raw sockets and ICMP included.
[[net]]
operations = ["connect"]
address = "127.0.0.3"
verdict = "deny"
"#;

fn p(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn ino(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata(path).with_context(|| path.display().to_string())?.ino())
}

/// How a case ended.
enum Outcome {
    Denied,
    Bypassed(String),
    /// The kernel has no such door (ENOSYS: a system call newer than it):
    /// nothing to refuse. Shown as `absent` in the table.
    Absent,
}

/// Whether the running kernel is older than `major.minor`.
fn kernel_older_than(major: u32, minor: u32) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) < (major, minor)
}

/// Who the refusal's report must name.
#[derive(Clone, Copy)]
enum By {
    /// The attacking process.
    Pid,
    /// The file (by inode): the refused operation ran in another process.
    Ino(u64),
}

/// What a denial must look like.
struct Expect {
    errno: i32,
    /// Any of these hooks (some attacks meet one hook on 6.1 and another on 6.12).
    hooks: Vec<&'static str>,
    /// For a protection, its name.
    protection: Option<&'static str>,
    by: By,
}

/// A file rule's refusal.
fn file(hook: &'static str) -> Expect {
    Expect { errno: EACCES, hooks: vec![hook], protection: None, by: By::Pid }
}

/// A self-protection's refusal.
fn protected(hook: &'static str, protection: &'static str) -> Expect {
    Expect { errno: EPERM, hooks: vec![hook], protection: Some(protection), by: By::Pid }
}

/// A network rule's refusal.
fn net(hook: &'static str) -> Expect {
    Expect { errno: EPERM, hooks: vec![hook], protection: None, by: By::Pid }
}

/// One run of one case: the agent, the cgroup of the style, when it began.
struct Ctx<'a> {
    agent: &'a mut Agent,
    cg: PathBuf,
    style: &'static str,
    since: u64,
}

impl Ctx<'_> {
    fn op(&self, args: &[&str]) -> Result<op::Outcome> {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        op::run_args(Some(&self.cg), &args)
    }

    /// Like [`Ctx::op`], with `pre` (`--pre-open`, ...) done before joining.
    fn op_pre(&self, pre: &[&str], args: &[&str]) -> Result<op::Outcome> {
        let mut all: Vec<&std::ffi::OsStr> = pre.iter().map(|a| a.as_ref()).collect();
        all.extend(args.iter().map(|a| -> &std::ffi::OsStr { a.as_ref() }));
        op::run_args(Some(&self.cg), &all)
    }

    /// The report that makes `out` a denial by systrace, or why there is none.
    fn reported(&mut self, out: &op::Outcome, expect: &Expect) -> Result<Value> {
        let since = self.since;
        let pid = out.pid;
        let tgid = out.tgid;
        self.agent
            .wait_for(EVENT_WAIT, |v| {
                v["type"] == "event"
                    && v["verdict"] == "denied"
                    && v["boot_ns"].as_u64().is_some_and(|t| t >= since)
                    && expect.hooks.iter().any(|h| v["hook"] == *h)
                    && expect.protection.is_none_or(|p| v["protection"] == p)
                    && match expect.by {
                        By::Pid => v["pid"] == pid || v["tgid"] == tgid,
                        By::Ino(ino) => v["ino"] == ino,
                    }
            })
            .with_context(|| {
                // What was reported meanwhile, to say what refused it instead.
                let recent: Vec<String> = self
                    .agent
                    .seen
                    .iter()
                    .filter(|v| v["type"] == "event" && v["boot_ns"].as_u64().is_some_and(|t| t >= since))
                    .take(4)
                    .map(|v| v.to_string())
                    .collect();
                format!(
                    "no denial from {:?} (protection {:?}) for pid {pid} after boot ns {since}; events since: {recent:?}",
                    expect.hooks, expect.protection
                )
            })
    }

    /// Runs `args`; denied when it fails with the expected errno and the agent
    /// reports the expected refusal.
    fn attack(&mut self, args: &[&str], expect: Expect) -> Result<Outcome> {
        let out = self.op(args)?;
        self.judge(args, out, expect)
    }

    fn attack_pre(&mut self, pre: &[&str], args: &[&str], expect: Expect) -> Result<Outcome> {
        let out = self.op_pre(pre, args)?;
        self.judge(args, out, expect)
    }

    /// Runs the 32-bit program with `args` in the cgroup.
    fn attack_i386(&mut self, args: &[&str], expect: Expect) -> Result<Outcome> {
        let out = Command::new("/usr/bin/systrace-i386").arg(&self.cg).args(args).output()?;
        ensure!(out.status.success(), "systrace-i386 {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        if out.stdout.is_empty() {
            // An exec that worked: the program it ran printed nothing.
            return Ok(Outcome::Bypassed(format!("i386 {args:?} succeeded")));
        }
        let outcome: op::Outcome = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("systrace-i386 output: {}", String::from_utf8_lossy(&out.stdout)))?;
        self.judge(args, outcome, expect)
    }

    fn judge(&mut self, args: &[&str], out: op::Outcome, expect: Expect) -> Result<Outcome> {
        if out.errno == 0 {
            return Ok(Outcome::Bypassed(format!("{args:?} succeeded")));
        }
        ensure!(out.errno == expect.errno, "{args:?}: errno {} (expected {})", out.errno, expect.errno);
        self.reported(&out, &expect)?;
        Ok(Outcome::Denied)
    }
}

/// The files, sockets and processes the cases use; made outside the cgroups.
struct Fixtures {
    agent_pid: u32,
    sibling: Child,
    secret_ino: u64,
    tool_ino: u64,
    sysfs_file: PathBuf,
    /// An io_uring ring with a submission-queue thread, made here (outside).
    ring_fd: i32,
    _ring: io_uring::IoUring,
    _listeners: Vec<std::net::TcpListener>,
    _udp: std::net::UdpSocket,
}

fn setup() -> Result<()> {
    // Left over from an earlier run, if any.
    for alias in ["allowed/alias", "allowed/keys-alias"] {
        let _ = Command::new("umount").arg(p(alias)).stderr(std::process::Stdio::null()).status();
    }
    for mount in ["allowed/btrfs", "ro-ovl"] {
        let _ = Command::new("umount").arg(p(mount)).stderr(std::process::Stdio::null()).status();
    }
    let _ = fs::remove_dir_all(ROOT);
    for dir in ["allowed/newroot/old", "secret", "drop", "nest/inner", "allowed/btrfs"] {
        fs::create_dir_all(p(dir))?;
    }
    fs::write(p("nest/inner/note.txt"), "denied below the directory being moved\n")?;
    fs::create_dir_all(p("allowed/keys"))?;
    for name in ["host.key", LONG_KEY, "decoy.txt"] {
        fs::write(p("allowed/keys").join(name), "key\n")?;
    }
    fs::write(p("secret/secret.txt"), "the secret\n")?;
    fs::write(p("readonly.txt"), "read me\n")?;
    fs::write(p("allowed/decoy"), "decoy\n")?;
    fs::write(p("drop/note.txt"), "a note nobody may read\n")?;
    fs::write(p("allowed/script.sh"), "#!/bin/sh\ncat /tmp/bp/secret/secret.txt\n")?;
    fs::set_permissions(p("allowed/script.sh"), fs::Permissions::from_mode(0o755))?;
    // A dynamic program the policies do not let run.
    fs::copy(std::env::current_exe()?, p("tool"))?;
    fs::set_permissions(p("tool"), fs::Permissions::from_mode(0o755))?;
    // A tree below the secret deeper than the old walk bound, and one deeper
    // than a path can name.
    let mut deep = p("secret/deep");
    for i in 0..100 {
        deep = deep.join(format!("d{i}"));
    }
    fs::create_dir_all(&deep)?;
    fs::write(deep.join("f"), "deep\n")?;
    let here = std::env::current_dir()?;
    fs::create_dir_all(p("secret/vdeep"))?;
    std::env::set_current_dir(p("secret/vdeep"))?;
    for _ in 0..VERY_DEEP {
        fs::create_dir("d")?;
        std::env::set_current_dir("d")?;
    }
    fs::write("f", "very deep\n")?;
    std::env::set_current_dir(here)?;
    // A file handle for the secret, for open_by_handle_at.
    fs::write(p("handle"), attack::file_handle(&p("secret/secret.txt"))?)?;
    // An extended attribute to remove.
    let name = std::ffi::CString::new("trusted.systrace")?;
    let path = std::ffi::CString::new(p("readonly.txt").as_os_str().as_encoded_bytes())?;
    // SAFETY: valid C strings and a one-byte value.
    if unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) } != 0 {
        bail!("setting trusted.systrace on readonly.txt: {}", std::io::Error::last_os_error());
    }
    // A block device node, and /dev/mem under another name.
    for (name, kind, major, minor) in [("blk", libc::S_IFBLK, 7, 0), ("mem", libc::S_IFCHR, 1, 1)] {
        let node = std::ffi::CString::new(p(name).as_os_str().as_encoded_bytes())?;
        // SAFETY: a valid C string.
        if unsafe { libc::mknod(node.as_ptr(), kind | 0o600, libc::makedev(major, minor)) } != 0 {
            bail!("mknod {name}: {}", std::io::Error::last_os_error());
        }
    }
    // btrfs where the policies let the process read and write: its own
    // ioctls would copy whole trees (snapshots) with no mkdir or open to decide.
    let img = p("btrfs.img");
    fs::File::create(&img)?.set_len(128 << 20)?;
    let made = Command::new("/usr/bin/mkfs.btrfs").args(["-q", "-f"]).arg(&img).status()?;
    ensure!(made.success(), "mkfs.btrfs failed");
    let mounted = Command::new("mount").args(["-o", "loop"]).arg(&img).arg(p("allowed/btrfs")).status()?;
    ensure!(mounted.success(), "mounting btrfs failed");
    // An overlay whose file sits in the upper layer (as after a copy-up).
    for d in ["ovl-lower", "ovl-upper", "ovl-work", "ro-ovl"] {
        fs::create_dir_all(p(d))?;
    }
    fs::write(p("ovl-upper/f.txt"), "overlay file\n")?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        p("ovl-lower").display(),
        p("ovl-upper").display(),
        p("ovl-work").display()
    );
    let mounted = Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(p("ro-ovl")).status()?;
    ensure!(mounted.success(), "mounting the overlay failed");
    // binfmt_misc, where interpreters are registered.
    if !Path::new("/proc/sys/fs/binfmt_misc/register").exists() {
        let status =
            Command::new("mount").args(["-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"]).status()?;
        ensure!(status.success(), "mounting binfmt_misc failed");
    }
    for cg in ["/sys/fs/cgroup/systrace-bypass-deny", "/sys/fs/cgroup/systrace-bypass-allow", ELSEWHERE, AGENT_CGROUP] {
        fs::create_dir_all(cg)?;
    }
    fs::write(p("deny.toml"), POLICY_DENY)?;
    fs::write(p("allow.toml"), POLICY_ALLOW)?;
    Ok(())
}

/// A process that sleeps outside the confined cgroups.
fn sleeper() -> Result<Child> {
    Ok(Command::new("/bin/busybox").args(["sleep", "600"]).spawn()?)
}

/// Serves a descriptor of the secret file over a unix socket, outside the cgroups.
fn serve_descriptors() -> Result<()> {
    use std::os::{fd::AsRawFd, unix::net::UnixListener};
    let secret_listener = UnixListener::bind(p("fd-secret.sock"))?;
    std::thread::spawn(move || {
        for stream in secret_listener.incoming().flatten() {
            if let Ok(file) = fs::File::open(p("secret/secret.txt")) {
                let _ = attack::send_fd(stream.as_raw_fd(), file.as_raw_fd());
            }
        }
    });
    Ok(())
}

pub fn main(args: &[String]) -> ExitCode {
    let Some(agent) = args.first() else {
        eprintln!("bypass: expected the agent binary's path");
        return ExitCode::from(2);
    };
    let agent_bin = Path::new(agent);
    let mut r = Runner::default();
    if let Err(e) = bypass_suite(agent_bin, &mut r) {
        r.fail("bypass_setup", e);
    }
    if let Err(e) = crate::protect::run(agent_bin, &mut r) {
        r.fail("protect_setup", e);
    }
    r.finish()
}

type Case = (&'static str, Box<dyn Fn(&mut Ctx, &Fixtures) -> Result<Outcome>>);

/// A rename that must be refused at `path_rename`; if it went through, the
/// directory goes back from `moved` to `home` for the cases after it.
fn rename_attack(c: &mut Ctx, args: &[&str], moved: &Path, home: &Path) -> Result<Outcome> {
    let outcome = c.attack(args, file("path_rename"));
    if moved.exists() {
        fs::rename(moved, home)?;
    }
    outcome
}

fn cases() -> Vec<Case> {
    let s = "/tmp/bp/secret/secret.txt";
    let mut v: Vec<Case> = Vec::new();
    macro_rules! case {
        ($name:literal, |$c:ident, $f:ident| $body:expr) => {
            v.push((
                $name,
                Box::new(move |$c: &mut Ctx, $f: &Fixtures| -> Result<Outcome> {
                    let _ = &$f;
                    $body
                }),
            ));
        };
    }

    // Other names for the same file.
    case!("hardlink", |c, f| {
        let link = format!("/tmp/bp/allowed/hardlink-{}", c.style);
        c.attack(&["link", s, &link], file("path_link"))
    });
    case!("symlink", |c, f| {
        // Making the link is allowed (a name in allowed/); reading through it is not.
        let link = format!("/tmp/bp/allowed/symlink-{}", c.style);
        let made = c.op(&["symlink", s, &link])?;
        ensure!(made.errno == 0, "symlink in allowed/: errno {}", made.errno);
        c.attack(&["open", &link, "r"], file("file_open"))
    });
    case!("rename_into_allowed_tree", |c, f| c.attack(&["rename", s, "/tmp/bp/allowed/moved"], file("path_rename")));
    case!("rename_exchange", |c, f| {
        // The note may be moved but not read; exchanged with a readable file, it
        // would be readable under that file's name.
        c.attack(&["renameat2", "/tmp/bp/allowed/decoy", "/tmp/bp/drop/note.txt", "2"], file("path_rename"))
    });
    case!("bind_mount_alias", |c, f| {
        fs::create_dir_all(p("allowed/mnt"))?;
        c.attack(&["bind-mount", "/tmp/bp/secret", "/tmp/bp/allowed/mnt"], protected("sb_mount", "mount"))
    });
    case!("alias_made_outside", |c, f| {
        // An alias root made outside: the deny rule follows the directory.
        fs::create_dir_all(p("allowed/alias"))?;
        let status = Command::new("mount").args(["--bind", "/tmp/bp/secret"]).arg(p("allowed/alias")).status()?;
        ensure!(status.success(), "unconfined bind mount failed");
        let result = c.attack(&["open", "/tmp/bp/allowed/alias/secret.txt", "r"], file("file_open"));
        let _ = Command::new("umount").arg(p("allowed/alias")).status();
        result
    });
    // Rules by extension (allowed/keys/*.key): other names for a key, and
    // its directory elsewhere.
    case!("extension_open", |c, f| {
        let long = format!("/tmp/bp/allowed/keys/{LONG_KEY}");
        if let Outcome::Bypassed(why) = c.attack(&["open", &long, "r"], file("file_open"))? {
            return Ok(Outcome::Bypassed(why));
        }
        c.attack(&["open", "/tmp/bp/allowed/keys/host.key", "w"], file("file_open"))
    });
    case!("extension_rename_away", |c, f| {
        let to = format!("/tmp/bp/allowed/keys/host-{}.txt", c.style);
        rename_attack(c, &["rename", "/tmp/bp/allowed/keys/host.key", &to], Path::new(&to), &p("allowed/keys/host.key"))
    });
    case!("extension_link_elsewhere", |c, f| {
        let to = format!("/tmp/bp/allowed/key-link-{}", c.style);
        c.attack(&["link", "/tmp/bp/allowed/keys/host.key", &to], file("path_link"))
    });
    case!("extension_exchange", |c, f| {
        // Exchanged with a plain file, the key would bear a name without .key.
        c.attack(
            &["renameat2", "/tmp/bp/allowed/keys/host.key", "/tmp/bp/allowed/keys/decoy.txt", "2"],
            file("path_rename"),
        )
    });
    case!("extension_directory_moved", |c, f| {
        let to = format!("/tmp/bp/allowed/keys-{}", c.style);
        rename_attack(c, &["rename", "/tmp/bp/allowed/keys", &to], Path::new(&to), &p("allowed/keys"))
    });
    case!("extension_directory_bound_outside", |c, f| {
        // Bound elsewhere by someone else after the policy loaded, and a key
        // made after that: the rule follows the directory.
        fs::create_dir_all(p("allowed/keys-alias"))?;
        let status =
            Command::new("mount").args(["--bind", "/tmp/bp/allowed/keys"]).arg(p("allowed/keys-alias")).status()?;
        ensure!(status.success(), "unconfined bind mount failed");
        let made = format!("made-after-{}.key", c.style);
        fs::write(p("allowed/keys").join(&made), "key\n")?;
        let result = c.attack(&["open", &format!("/tmp/bp/allowed/keys-alias/{made}"), "r"], file("file_open"));
        let _ = Command::new("umount").arg(p("allowed/keys-alias")).status();
        result
    });
    case!("rename_denied_dir_away", |c, f| {
        // The deny rule stays with the name; the directory would take its files along.
        let to = format!("/tmp/bp/allowed/secret-{}", c.style);
        rename_attack(c, &["rename", "/tmp/bp/secret", &to], Path::new(&to), &p("secret"))
    });
    case!("rename_in_a_detached_tree", |c, f| {
        // The same directory entries, renamed through a copy of the mount that
        // no walk can place: both names look alike to the rules.
        let to = format!("secret-{}", c.style);
        rename_attack(c, &["tree-rename", ROOT, "secret", &to], &p(&to), &p("secret"))
    });
    case!("rename_onto_rules_anchored_below", |c, f| {
        // A directory of unreadable files (in the drop box) taking a name
        // below which a rule lets everything be read.
        let from = p(&format!("drop/d-{}", c.style));
        fs::create_dir_all(from.join("inbox"))?;
        fs::write(from.join("inbox/n.txt"), "dropped, not for reading\n")?;
        rename_attack(c, &["rename", from.to_str().unwrap(), "/tmp/bp/landing"], &p("landing"), &from)
    });
    case!("rename_parent_of_denied_dir", |c, f| {
        let to = format!("/tmp/bp/allowed/nest-{}", c.style);
        rename_attack(c, &["rename", "/tmp/bp/nest", &to], Path::new(&to), &p("nest"))
    });
    case!("proc_self_fd_reopen", |c, f| c.attack(&["reopen", "/tmp/bp/readonly.txt"], file("file_open")));
    case!("o_path_reopen", |c, f| {
        let mut e = file("file_open");
        e.by = By::Ino(f.secret_ino);
        c.attack(&["opath-reopen", s], e)
    });
    case!("openat2_resolve", |c, f| c.attack(&["openat2", s], file("file_open")));
    case!("open_by_handle", |c, f| {
        c.attack_pre(&["--pre-dir", ROOT, "--pre-read", "/tmp/bp/handle"], &["open-handle", "-"], file("file_open"))
    });
    case!("deep_tree", |c, f| {
        let mut path = String::from("/tmp/bp/secret/deep");
        for i in 0..100 {
            path.push_str(&format!("/d{i}"));
        }
        path.push_str("/f");
        c.attack(&["open", &path, "r"], file("file_open"))
    });
    case!("deeper_than_path_max", |c, f| {
        let levels = VERY_DEEP.to_string();
        c.attack(&["open-deep", "/tmp/bp/secret/vdeep", &levels], file("file_open"))
    });
    // Other ways to the same content.
    case!("io_uring_open", |c, f| {
        // The open may run in an io-wq worker thread.
        let mut e = file("file_open");
        e.by = By::Ino(f.secret_ino);
        c.attack(&["uring-open", s], e)
    });
    // The kernel working under borrowed credentials: still this process's.
    case!("io_uring_personality_setxattr", |c, f| {
        let e = Expect { errno: EACCES, hooks: vec!["inode_setxattr"], protection: None, by: By::Pid };
        c.attack(&["uring-personality-setxattr", "/tmp/bp/readonly.txt"], e)
    });
    case!("core_dump_into_denied_dir", |c, f| {
        fs::write("/proc/sys/kernel/core_pattern", "core")?;
        c.attack(
            &["core-dump", "/tmp/bp/secret"],
            Expect { errno: EACCES, hooks: vec!["path_mknod", "file_open"], protection: None, by: By::Pid },
        )
    });
    case!("o_trunc_read_only", |c, f| {
        let before = fs::metadata(p("readonly.txt"))?.len();
        let flags = (libc::O_RDONLY | libc::O_TRUNC).to_string();
        let result = c.attack(&["open-flags", "/tmp/bp/readonly.txt", &flags], file("file_open"));
        ensure!(fs::metadata(p("readonly.txt"))?.len() == before, "readonly.txt was truncated");
        result
    });
    case!("access_mode_3", |c, f| c.attack(&["open-flags", "/tmp/bp/readonly.txt", "3"], file("file_open")));
    case!("inherited_fd_write", |c, f| {
        c.attack_pre(&["--pre-open", "/tmp/bp/readonly.txt:rw"], &["fd-write", "-"], file("file_permission"))
    });
    case!("inherited_fd_read", |c, f| c.attack_pre(
        &["--pre-open", "/tmp/bp/secret/secret.txt:r"],
        &["fd-read", "-"],
        file("file_permission")
    ));
    case!("inherited_fd_ftruncate", |c, f| {
        let e = Expect { errno: EACCES, hooks: vec!["file_truncate", "path_truncate"], protection: None, by: By::Pid };
        c.attack_pre(&["--pre-open", "/tmp/bp/readonly.txt:rw"], &["fd-ftruncate", "-"], e)
    });
    case!("scm_rights_receive", |c, f| c.attack(&["recv-fd-read", "/tmp/bp/fd-secret.sock"], file("file_receive")));
    case!("pidfd_getfd", |c, f| {
        let pid = f.sibling.id().to_string();
        c.attack(&["pidfd-getfd", &pid, "1"], protected("ptrace_access_check", "ptrace"))
    });
    // Metadata.
    case!("chmod_setuid", |c, f| c.attack(&["chmod", "/tmp/bp/readonly.txt", "4777"], file("path_chmod")));
    case!("chown", |c, f| c.attack(&["chown", "/tmp/bp/readonly.txt", "1000", "1000"], file("path_chown")));
    case!("timestamps", |c, f| c.attack(&["utimes", "/tmp/bp/readonly.txt"], file("inode_setattr")));
    case!("setxattr", |c, f| c
        .attack(&["setxattr", "/tmp/bp/readonly.txt", "trusted.evil", "x"], file("inode_setxattr")));
    case!("removexattr", |c, f| c
        .attack(&["removexattr", "/tmp/bp/readonly.txt", "trusted.systrace"], file("inode_removexattr")));
    case!("posix_acl", |c, f| {
        let e = Expect { errno: EACCES, hooks: vec!["inode_setxattr", "inode_set_acl"], protection: None, by: By::Pid };
        c.attack(&["setacl", "/tmp/bp/readonly.txt"], e)
    });
    case!("chattr", |c, f| c.attack(&["chattr", "/tmp/bp/readonly.txt"], file("file_ioctl")));
    // The same flags by path, without the ioctl (6.17+).
    case!("file_setattr", |c, f| {
        let out = c.op(&["file-setattr", "/tmp/bp/readonly.txt"])?;
        // Absent only where the kernel predates the system call: from 6.17
        // an ENOSYS would be something else hiding the door, not its absence.
        if out.errno == ENOSYS && kernel_older_than(6, 17) {
            return Ok(Outcome::Absent);
        }
        c.judge(&["file-setattr"], out, file("inode_file_setattr"))
    });
    // Code.
    case!("memfd_fexecve", |c, f| c.attack(&["memfd-exec", "/tmp/bp/tool"], file("file_open")));
    case!("script_with_allowed_interpreter", |c, f| {
        let mut e = file("file_open");
        e.by = By::Ino(f.secret_ino);
        let out = c.op(&["run", "/tmp/bp/allowed/script.sh"])?;
        if out.errno == 0 {
            return Ok(Outcome::Bypassed("the script read the secret".into()));
        }
        c.reported(&out, &e)?;
        Ok(Outcome::Denied)
    });
    case!("ld_so_runs_a_denied_binary", |c, f| {
        let out = c.op(&["run", "/lib64/ld-linux-x86-64.so.2", "/tmp/bp/tool", "--version"])?;
        if out.errno == 0 {
            return Ok(Outcome::Bypassed("ld.so ran the binary".into()));
        }
        let e = Expect { errno: 0, hooks: vec!["mmap_file"], protection: None, by: By::Ino(f.tool_ino) };
        c.reported(&out, &e)?;
        Ok(Outcome::Denied)
    });
    case!("overlay_layer_through_map_files", |c, f| {
        // The link leads to the layer's file on overlayfs's private mount, a
        // mount of the kernel's but a real tree: decided as the overlay's.
        let outcome = c.attack(&["map-files-write", "/tmp/bp/ro-ovl/f.txt"], file("file_open"));
        ensure!(fs::read_to_string(p("ovl-upper/f.txt"))? == "overlay file\n", "the layer's file was written");
        outcome
    });
    case!("mprotect_exec", |c, f| c.attack(&["mprotect-exec", "/tmp/bp/tool"], file("file_mprotect")));
    case!("fork_double_fork_setsid", |c, f| {
        let mut e = file("file_open");
        e.by = By::Ino(f.secret_ino);
        c.attack(&["daemonize-open", s], e)
    });
    // The confinement itself, and the processes outside it.
    case!("write_pid_to_other_cgroup", |c, f| {
        // Refused when the open asks for write permission on the file, or at the open.
        let mut e = protected("inode_permission", "cgroup");
        e.hooks.push("file_open");
        c.attack(&["join", ELSEWHERE], e)
    });
    case!("clone_into_cgroup", |c, f| c.attack(&["clone-into", ELSEWHERE], protected("task_alloc", "cgroup")));
    // Pulling a process from outside into one's own cgroup would make it
    // "inside" for the signal and ptrace protections. Opening one's own
    // cgroup.procs is allowed (systemd's spawned child joins its unit's cgroup
    // itself); the write that would move an outside process is refused where
    // the kernel asks for permission on the cgroup holding both.
    case!("pull_into_own_cgroup", |c, f| {
        let procs = c.cg.join("cgroup.procs").to_string_lossy().into_owned();
        c.attack(&["pull", &f.sibling.id().to_string(), &procs], protected("inode_permission", "cgroup"))
    });
    case!("cgroup_kill_agent", |c, f| {
        let kill = format!("{AGENT_CGROUP}/cgroup.kill");
        let outcome = c.attack(&["write", &kill, "1"], protected("file_open", "cgroup"))?;
        ensure!(c.agent.alive(), "the agent is gone");
        Ok(outcome)
    });
    case!("cgroup_freeze_elsewhere", |c, f| {
        let freeze = format!("{ELSEWHERE}/cgroup.freeze");
        c.attack(&["write", &freeze, "1"], protected("file_open", "cgroup"))
    });
    case!("oom_score_adj_agent", |c, f| {
        let path = format!("/proc/{}/oom_score_adj", f.agent_pid);
        c.attack(&["write", &path, "1000"], protected("file_open", "signal"))
    });
    case!("core_pattern", |c, f| {
        c.attack(&["write", "/proc/sys/kernel/core_pattern", "|/tmp/bp/tool"], protected("file_open", "system"))
    });
    case!("sysfs_write", |c, f| {
        let path = f.sysfs_file.to_str().unwrap().to_string();
        c.attack(&["write", &path, "never"], protected("file_open", "system"))
    });
    case!("block_device", |c, f| c.attack(&["open", "/tmp/bp/blk", "r"], protected("file_open", "system")));
    case!("dev_mem", |c, f| c.attack(&["open", "/tmp/bp/mem", "r"], protected("file_open", "system")));
    case!("proc_kcore", |c, f| c.attack(&["open", "/proc/kcore", "r"], protected("file_open", "system")));
    case!("btrfs_snapshot", |c, f| {
        let name = format!("snap-{}", c.style);
        c.attack(
            &["btrfs-snapshot", "/tmp/bp/allowed/btrfs", "/tmp/bp/allowed/btrfs", &name],
            protected("file_ioctl", "system"),
        )
    });
    case!("binfmt_misc_register", |c, f| {
        // An interpreter the kernel would run, as root, for every matching file.
        let rule = format!(":systrace-{}:E::systrace::/tmp/bp/tool:", c.style);
        c.attack(&["write", "/proc/sys/fs/binfmt_misc/register", &rule], protected("file_open", "system"))
    });
    case!("io_uring_sqpoll_handoff", |c, f| {
        // A ring made outside, whose submission thread runs outside, inherited
        // across exec: mapping it would let requests run unconfined. (io_uring
        // descriptors cannot travel over SCM_RIGHTS, and pidfd_getfd needs ptrace.)
        let args: Vec<&std::ffi::OsStr> = ["--inherited-fd", "3", "fd-map", "-"].iter().map(|a| a.as_ref()).collect();
        let out = op::run_args_inherit(Some(&c.cg), &args, f.ring_fd)?;
        c.judge(&["fd-map"], out, protected("mmap_file", "system"))
    });
    case!("unshare_then_access", |c, f| c.attack(&["unshare-open", s], protected("userns_create", "namespace")));
    case!("pivot_root", |c, f| {
        c.attack(
            &["pivot-root", "/tmp/bp/allowed/newroot", "/tmp/bp/allowed/newroot/old"],
            protected("sb_pivotroot", "mount"),
        )
    });
    case!("ptrace_sibling", |c, f| {
        let pid = f.sibling.id().to_string();
        c.attack(&["ptrace", &pid], protected("ptrace_access_check", "ptrace"))
    });
    case!("kill_agent", |c, f| {
        let pid = f.agent_pid.to_string();
        let outcome = c.attack(&["kill", &pid, "9"], protected("task_kill", "signal"))?;
        ensure!(c.agent.alive(), "the agent is gone");
        Ok(outcome)
    });
    case!("sigio_kill_agent", |c, f| {
        // A signal the kernel sends on its own when a file the attacker armed
        // becomes ready: no kill() call for task_kill to see.
        let pid = f.agent_pid.to_string();
        let out = c.op(&["sigio-kill", &pid])?;
        ensure!(out.rounds == 1, "arming the pipe failed: errno {}", out.errno);
        std::thread::sleep(Duration::from_millis(300));
        if !c.agent.alive() {
            return Ok(Outcome::Bypassed("SIGIO killed the agent".into()));
        }
        c.reported(&out, &protected("file_send_sigiotask", "signal"))?;
        Ok(Outcome::Denied)
    });
    case!("prlimit_cpu_agent", |c, f| {
        let pid = f.agent_pid.to_string();
        c.attack(&["prlimit-cpu", &pid], protected("task_prlimit", "signal"))
    });
    case!("renice_agent", |c, f| {
        let pid = f.agent_pid.to_string();
        c.attack(&["renice", &pid], protected("task_setnice", "signal"))
    });
    case!("ioprio_agent", |c, f| {
        let pid = f.agent_pid.to_string();
        c.attack(&["ioprio", &pid], protected("task_setioprio", "signal"))
    });
    case!("clone_parent_signal", |c, f| c.attack(&["clone-parent", "-"], protected("task_alloc", "signal")));
    case!("tiocsti", |c, f| c.attack(&["tiocsti", "-"], protected("file_ioctl", "signal")));
    case!("bpf_detach", |c, f| c.attack(&["bpf-next-link", "-"], protected("bpf", "bpf")));
    // The network.
    case!("udp_sendto", |c, f| c.attack(&["sendto", "127.0.0.2", "6000"], net("socket_sendmsg")));
    case!("ipv4_mapped_ipv6", |c, f| c.attack(&["sendto", "::ffff:127.0.0.2", "6000"], net("socket_sendmsg")));
    case!("sendto_af_unspec", |c, f| c.attack(&["sendto-unspec", "127.0.0.2", "6000"], net("socket_sendmsg")));
    case!("bind_af_unspec", |c, f| c.attack(&["bind-unspec", "9001"], net("socket_bind")));
    case!("connect_wildcard_v4", |c, f| c.attack(&["connect", "0.0.0.0", "7001", "tcp"], net("socket_connect")));
    case!("connect_wildcard_v6", |c, f| c.attack(&["connect", "::", "7001", "tcp"], net("socket_connect")));
    case!("connect_mapped_wildcard", |c, f| {
        c.attack(&["connect", "::ffff:0.0.0.0", "7001", "tcp"], net("socket_connect"))
    });
    case!("mptcp_connect", |c, f| c.attack(&["proto-connect", "262", "127.0.0.1", "7001"], net("socket_connect")));
    case!("sctp_connectx", |c, f| c.attack(&["sctp-connectx", "127.0.0.1", "7001"], net("sctp_bind_connect")));
    case!("udplite_socket", |c, f| c.attack(&["socket", "2", "2", "136"], net("socket_create")));
    case!("raw_icmp_to_denied_address", |c, f| {
        // Default deny: no rule lets the process make a raw socket. Default
        // allow: the rule naming no protocol covers ICMP too.
        let e = Expect { errno: EPERM, hooks: vec!["socket_create", "socket_sendmsg"], protection: None, by: By::Pid };
        c.attack(&["raw-sendto", "1", "127.0.0.3"], e)
    });
    // The same attacks from a 32-bit program, through the compat system calls.
    case!("i386_open", |c, f| c.attack_i386(&["open", s], file("file_open")));
    case!("i386_exec", |c, f| c.attack_i386(&["exec", "/tmp/bp/tool"], file("file_open")));
    case!("i386_connect", |c, f| c.attack_i386(&["connect", "127.0.0.1", "7001"], net("socket_connect")));
    v
}

fn bypass_suite(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    setup()?;
    serve_descriptors()?;
    let udp = std::net::UdpSocket::bind("127.0.0.1:5000")?;
    let listeners = vec![std::net::TcpListener::bind("127.0.0.1:7001")?, std::net::TcpListener::bind("[::1]:7001")?];
    let sysfs_file = ["/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/mm/ksm/run", "/sys/power/pm_async"]
        .iter()
        .map(PathBuf::from)
        .find(|f| f.exists())
        .context("no writable sysfs file to aim at")?;
    let mut agent = Agent::start_in_cgroup(
        agent_bin,
        Path::new(AGENT_CGROUP),
        &[p("deny.toml").as_os_str(), p("allow.toml").as_os_str()],
    )?;
    let ring = io_uring::IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
        .setup_sqpoll(60_000)
        .build(8)
        .context("making an SQPOLL ring")?;
    let mut fixtures = Fixtures {
        ring_fd: std::os::fd::AsRawFd::as_raw_fd(&ring),
        _ring: ring,
        agent_pid: agent.pid(),
        sibling: sleeper()?,
        secret_ino: ino(&p("secret/secret.txt"))?,
        tool_ino: ino(&p("tool"))?,
        sysfs_file,
        _listeners: listeners,
        _udp: udp,
    };
    for (name, case) in cases() {
        for style in ["deny", "allow"] {
            agent.forget();
            let mut ctx = Ctx {
                agent: &mut agent,
                cg: PathBuf::from(format!("/sys/fs/cgroup/systrace-bypass-{style}")),
                style,
                since: boot_ns(),
            };
            let result = case(&mut ctx, &fixtures);
            let (word, test) = match &result {
                Ok(Outcome::Denied) => ("denied", Ok(())),
                Ok(Outcome::Absent) => ("absent", Ok(())),
                Ok(Outcome::Bypassed(why)) => ("BYPASSED", Err(anyhow::anyhow!("BYPASSED: {why}"))),
                Err(e) => ("BYPASSED", Err(anyhow::anyhow!("not shown denied: {e:#}"))),
            };
            println!("BYPASS {name} {style} {word}");
            r.case(&format!("bypass_{name}_{style}"), || test);
        }
    }
    let _ = fixtures.sibling.kill();
    let _ = fixtures.sibling.wait();
    let (code, _) = agent.stop()?;
    ensure!(code == 0, "bypass agent exit code {code}");
    Ok(())
}

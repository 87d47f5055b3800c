//! Policies on a living system: files and directories replaced under the rules
//! (an editor's atomic save, rm and recreate, logrotate, a package upgrade, a
//! deploy swapping a directory), on tmpfs, ext4, a btrfs subvolume and
//! overlayfs; unit cgroups removed and made anew (a restart) and confined from
//! their first instruction; reloads that rename, swap and lose policies while
//! workloads check every verdict; an agent restart that hands over.

use std::{
    ffi::OsStr,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::{agent::Agent, op, suite::Runner};

const EACCES: i32 = 13;
const ROOT: &str = "/tmp/living";
const CYCLES: usize = 20;

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("running {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn cgroup(rel: &str) -> Result<PathBuf> {
    let path = Path::new("/sys/fs/cgroup").join(rel);
    fs::create_dir_all(&path)?;
    Ok(path)
}

/// Runs `op ARGS` in `cg`; the errno.
fn errno_of(cg: &Path, args: &[&str]) -> Result<i32> {
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
    Ok(op::run_args(Some(cg), &args)?.errno)
}

fn expect(cg: &Path, args: &[&str], errno: i32, what: &str) -> Result<()> {
    let got = errno_of(cg, args)?;
    ensure!(got == errno, "{what}: {args:?} gave errno {got}, expected {errno}");
    Ok(())
}

/// Writes `text` to `path` the way editors and package managers do: a new file
/// renamed over the old one.
fn atomic_replace(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("new");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

pub fn main(args: &[String]) -> ExitCode {
    let Some(agent) = args.first() else {
        eprintln!("living: expected the agent binary's path");
        return ExitCode::from(2);
    };
    let agent = Path::new(agent);
    let mut r = Runner::default();
    if let Err(e) = replaced_files(agent, &mut r) {
        r.fail("replaced_files_setup", e);
    }
    if let Err(e) = restarted_units(agent, &mut r) {
        r.fail("restarted_units_setup", e);
    }
    if let Err(e) = reloads(agent, &mut r) {
        r.fail("reloads_setup", e);
    }
    if let Err(e) = handover(agent, &mut r) {
        r.fail("handover_setup", e);
    }
    if let Err(e) = walk_cache(agent, &mut r) {
        r.fail("walk_cache_setup", e);
    }
    if let Err(e) = move_check(agent, &mut r) {
        r.fail("move_check_setup", e);
    }
    r.finish()
}

/// The file systems rules are tested on: (name, directory the tree lives in).
fn file_systems() -> Result<Vec<(&'static str, PathBuf)>> {
    let base = Path::new(ROOT);
    let _ = fs::remove_dir_all(base);
    fs::create_dir_all(base)?;
    let mut out = vec![("tmpfs", base.join("tmpfs"))];
    fs::create_dir_all(base.join("tmpfs"))?;

    // ext4 on a loop device.
    let img = base.join("ext4.img");
    fs::File::create(&img)?.set_len(64 << 20)?;
    run("/usr/bin/mkfs.ext4", &["-q", "-F", img.to_str().unwrap()])?;
    fs::create_dir_all(base.join("ext4"))?;
    run("mount", &["-o", "loop", img.to_str().unwrap(), base.join("ext4").to_str().unwrap()])?;
    out.push(("ext4", base.join("ext4")));

    // A btrfs subvolume: its files have other st_dev numbers than the file
    // system's superblock, which is what the kernel sees.
    let img = base.join("btrfs.img");
    fs::File::create(&img)?.set_len(128 << 20)?;
    run("/usr/bin/mkfs.btrfs", &["-q", "-f", img.to_str().unwrap()])?;
    fs::create_dir_all(base.join("btrfs"))?;
    run("mount", &["-o", "loop", img.to_str().unwrap(), base.join("btrfs").to_str().unwrap()])?;
    btrfs_subvolume(&base.join("btrfs"), "sv")?;
    out.push(("btrfs", base.join("btrfs/sv")));

    // overlayfs over tmpfs layers: the files are the overlay's inodes.
    for d in ["lower", "upper", "work", "overlay"] {
        fs::create_dir_all(base.join(d))?;
    }
    // redirect_dir lets a directory that came from the lower layer be renamed
    // (a deploy's swap) instead of failing with EXDEV.
    let options = format!(
        "redirect_dir=on,lowerdir={},upperdir={},workdir={}",
        base.join("lower").display(),
        base.join("upper").display(),
        base.join("work").display()
    );
    // The tree goes in the lower layer first, so replacements copy up.
    make_tree(&base.join("lower"))?;
    run("mount", &["-t", "overlay", "overlay", "-o", &options, base.join("overlay").to_str().unwrap()])?;
    out.push(("overlayfs", base.join("overlay")));
    Ok(out)
}

/// BTRFS_IOC_SUBVOL_CREATE in `dir`.
fn btrfs_subvolume(dir: &Path, name: &str) -> Result<()> {
    #[repr(C)]
    struct VolArgs {
        fd: i64,
        name: [u8; 4088],
    }
    const BTRFS_IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940e;
    let d = fs::File::open(dir)?;
    let mut args = VolArgs { fd: 0, name: [0; 4088] };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: the ioctl reads a vol_args struct of the size the number encodes.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&d), BTRFS_IOC_SUBVOL_CREATE, &args) };
    ensure!(rc == 0, "creating btrfs subvolume {name}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// What the rules name, below `root`.
fn make_tree(root: &Path) -> Result<()> {
    for d in ["etc", "log", "bin", "lib", "www/private"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::write(root.join("etc/shadow"), "root:hash\n")?;
    fs::write(root.join("etc/motd"), "hello\n")?;
    fs::write(root.join("lib/libx.so"), vec![0u8; 4096])?;
    fs::write(root.join("log/app.log"), "")?;
    fs::write(root.join("www/index.html"), "<h1>v1</h1>\n")?;
    fs::write(root.join("www/private/secret"), "v1 secret\n")?;
    fs::copy("/bin/busybox", root.join("bin/daemon"))?;
    fs::set_permissions(root.join("bin/daemon"), fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn replaced_files_policy(roots: &[(&str, PathBuf)]) -> String {
    let mut text =
        String::from("name = \"living\"\ncgroup = \"systrace-living\"\nmode = \"enforce\"\ndefault = \"deny\"\n");
    for (_, root) in roots {
        let r = root.display();
        text.push_str(&format!(
            r#"
[[file]]
path = "{r}/etc/**"
access = ["read"]

[[file]]
path = "{r}/etc/shadow"
access = ["read"]
verdict = "deny"

[[file]]
path = "{r}/log/app.log"
access = ["append"]

[[exec]]
path = "{r}/bin/daemon"

[[file]]
path = "{r}/lib/**"
access = ["read", "map"]

[[file]]
path = "{r}/www/**"
access = ["read"]

[[file]]
path = "{r}/www/private/**"
access = ["read"]
verdict = "deny"
"#
        ));
    }
    text
}

/// Rules survive atomic replace, rm and recreate, logrotate, an upgraded
/// binary and a swapped directory, for deny and allow rules, on every file
/// system; a hard link made elsewhere to a denied file stays denied.
fn replaced_files(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    let roots = file_systems()?;
    for (name, root) in &roots {
        if *name != "overlayfs" {
            make_tree(root)?;
        }
    }
    let policy = Path::new(ROOT).join("living.toml");
    fs::write(&policy, replaced_files_policy(&roots))?;
    let cg = cgroup("systrace-living")?;
    let mut agent = Agent::start(agent_bin, &[&policy])?;
    for (fs_name, root) in &roots {
        let at = |rel: &str| root.join(rel).to_str().unwrap().to_string();
        r.case(&format!("rules_as_loaded_{fs_name}"), || {
            expect(&cg, &["open", &at("etc/motd"), "r"], 0, "read of etc/motd")?;
            expect(&cg, &["open", &at("etc/shadow"), "r"], EACCES, "read of etc/shadow")?;
            expect(&cg, &["open", &at("log/app.log"), "a"], 0, "append to the log")?;
            expect(&cg, &["exec", &at("bin/daemon")], 0, "exec of the daemon")?;
            // Made executable after mapping: on overlayfs (6.6 and later) the
            // mapping is the layer's file, decided by the overlay path.
            expect(&cg, &["mprotect-exec", &at("lib/libx.so")], 0, "mprotect of a library")?;
            expect(&cg, &["mprotect-exec", &at("etc/motd")], EACCES, "mprotect of a readable file")?;
            expect(&cg, &["open", &at("www/index.html"), "r"], 0, "read of the index")?;
            expect(&cg, &["open", &at("www/private/secret"), "r"], EACCES, "read of the private file")?;
            Ok(())
        });
        r.case(&format!("deny_follows_a_hard_link_{fs_name}"), || {
            // Made outside, after the policy loaded, to the file a deny rule
            // named at load: still denied under a name that allows reading.
            fs::hard_link(root.join("etc/shadow"), root.join("www/shadow-link"))?;
            expect(&cg, &["open", &at("www/shadow-link"), "r"], EACCES, "read of a hard link to the shadow")
        });
        r.case(&format!("deny_survives_atomic_replace_{fs_name}"), || {
            atomic_replace(&root.join("etc/shadow"), "root:newhash\n")?;
            expect(&cg, &["open", &at("etc/shadow"), "r"], EACCES, "read of the replaced shadow")
        });
        r.case(&format!("deny_follows_a_hard_link_to_the_new_file_{fs_name}"), || {
            // The agent follows the file that bears the name now (a `follow`
            // line); a hard link made to it elsewhere afterwards stays denied.
            use std::os::unix::fs::MetadataExt;
            let shadow = root.join("etc/shadow");
            let ino = fs::metadata(&shadow)?.ino();
            agent
                .wait_for(Duration::from_secs(10), |v| {
                    v["type"] == "follow" && v["path"] == shadow.to_str().unwrap() && v["ino"] == ino
                })
                .context("the agent did not follow the replaced shadow")?;
            fs::hard_link(&shadow, root.join("www/shadow-link2"))?;
            expect(&cg, &["open", &at("www/shadow-link2"), "r"], EACCES, "read of a hard link to the replaced shadow")
        });
        r.case(&format!("deny_survives_rm_and_recreate_{fs_name}"), || {
            fs::remove_file(root.join("etc/shadow"))?;
            fs::write(root.join("etc/shadow"), "root:again\n")?;
            expect(&cg, &["open", &at("etc/shadow"), "r"], EACCES, "read of the recreated shadow")
        });
        r.case(&format!("allow_survives_logrotate_{fs_name}"), || {
            fs::rename(root.join("log/app.log"), root.join("log/app.log.1"))?;
            fs::write(root.join("log/app.log"), "")?;
            expect(&cg, &["open", &at("log/app.log"), "a"], 0, "append to the new log")?;
            // The rotated file bears another name now, which no rule allows.
            expect(&cg, &["open", &at("log/app.log.1"), "a"], EACCES, "append to the rotated log")
        });
        r.case(&format!("allow_survives_an_upgraded_binary_{fs_name}"), || {
            let new = root.join("bin/daemon.new");
            fs::copy("/bin/busybox", &new)?;
            fs::set_permissions(&new, fs::Permissions::from_mode(0o755))?;
            fs::rename(&new, root.join("bin/daemon"))?;
            expect(&cg, &["exec", &at("bin/daemon")], 0, "exec of the upgraded daemon")
        });
        r.case(&format!("rules_survive_a_swapped_directory_{fs_name}"), || {
            let next = root.join("www.next");
            fs::create_dir_all(next.join("private"))?;
            fs::write(next.join("index.html"), "<h1>v2</h1>\n")?;
            fs::write(next.join("private/secret"), "v2 secret\n")?;
            fs::rename(root.join("www"), root.join("www.old"))?;
            fs::rename(&next, root.join("www"))?;
            expect(&cg, &["open", &at("www/index.html"), "r"], 0, "read of the new index")?;
            expect(&cg, &["open", &at("www/private/secret"), "r"], EACCES, "read of the new private file")?;
            // The old tree bears no name a rule allows any more.
            expect(&cg, &["open", &at("www.old/index.html"), "r"], EACCES, "read of the old index")
        });
    }
    let (code, _) = agent.stop()?;
    ensure!(code == 0, "living agent exit code {code}");
    Ok(())
}

/// Waits for the kernel's report that `policy` bound a cgroup after `since`.
fn bound_after(agent: &mut Agent, policy: &str, cgroup_id: u64) -> Result<Value> {
    agent.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "bound" && v["policy"] == policy && v["cgroup_id"] == cgroup_id
    })
}

fn cgroup_id(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata(path)?.ino())
}

/// Unit cgroups removed and made anew 20 times: each new one is confined from
/// its first instruction (a child cloned straight into it tries a denied open
/// first thing). By path, by unit name under a slice, by user unit; and an
/// agent started before its target existed.
fn restarted_units(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    let dir = Path::new(ROOT).join("units");
    fs::create_dir_all(&dir)?;
    let secret = dir.join("secret");
    fs::write(&secret, "unit secret\n")?;
    for (name, text) in [
        ("by-path.toml", "name = \"by-path\"\ncgroup = \"systrace-units/victim.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n".to_string()),
        ("by-unit.toml", "name = \"by-unit\"\nunit = \"victim2.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n".to_string()),
        ("by-user-unit.toml", "name = \"by-user-unit\"\nuser_unit = \"victim3.service\"\nuser = 1000\nmode = \"enforce\"\ndefault = \"deny\"\n".to_string()),
    ] {
        fs::write(dir.join(name), text)?;
    }
    // Nothing exists yet: the agent starts anyway and binds what appears.
    let _ = fs::remove_dir_all("/sys/fs/cgroup/systrace-units/victim.service");
    let mut agent = Agent::start_args(agent_bin, &["--policy-dir".as_ref(), dir.as_os_str()])?;
    let targets = [
        ("by-path", "systrace-units/victim.service"),
        ("by-unit", "systrace.slice/systrace-units.slice/victim2.service"),
        ("by-user-unit", "user.slice/user-1000.slice/user@1000.service/app.slice/victim3.service"),
    ];
    for (policy, rel) in targets {
        let path = Path::new("/sys/fs/cgroup").join(rel);
        let result = (|| -> Result<()> {
            let mut wrong = 0;
            for cycle in 0..CYCLES {
                if path.exists() {
                    fs::remove_dir(&path).with_context(|| format!("rmdir {}", path.display()))?;
                }
                fs::create_dir_all(&path)?;
                let id = cgroup_id(&path)?;
                // The first thing the new cgroup's first process does.
                let out = op::run_args(None, &["spawn-into".as_ref(), path.as_os_str(), secret.as_os_str()])?;
                if out.errno != EACCES {
                    wrong += 1;
                    eprintln!(
                        "living: {policy} cycle {cycle}: the first open in the new cgroup gave errno {}",
                        out.errno
                    );
                }
                bound_after(&mut agent, policy, id)
                    .with_context(|| format!("cycle {cycle}: no bound event for {policy}"))?;
            }
            ensure!(wrong == 0, "{wrong} of {CYCLES} new cgroups were not confined from their first instruction");
            Ok(())
        })();
        r.case(&format!("new_cgroup_confined_from_first_instruction_{policy}"), || result);
    }
    r.case("user_unit_policy_skips_a_system_unit_of_that_name", || {
        let decoy = Path::new("/sys/fs/cgroup/system.slice/victim3.service");
        fs::create_dir_all(decoy)?;
        let out = op::run_args(None, &["spawn-into".as_ref(), decoy.as_os_str(), secret.as_os_str()])?;
        ensure!(out.errno == 0, "a system unit named like a user unit was confined: errno {}", out.errno);
        Ok(())
    });
    r.case("unit_name_inside_a_service_is_not_bound", || {
        // systemd puts units in slices: a directory named like a unit that a
        // delegated service makes inside its own cgroup is no unit (and a
        // flood of them must not fill the binding table).
        let decoy = Path::new("/sys/fs/cgroup/system.slice/delegated.service/victim2.service");
        fs::create_dir_all(decoy)?;
        let out = op::run_args(None, &["spawn-into".as_ref(), decoy.as_os_str(), secret.as_os_str()])?;
        let _ = fs::remove_dir(decoy);
        ensure!(out.errno == 0, "a unit-named directory inside a service was bound: errno {}", out.errno);
        Ok(())
    });
    r.case("removed_cgroups_leave_no_binding", || {
        // Bound cgroups come and go 60 times above: the binding table must not
        // fill up; removing the last ones and making more still binds.
        for (_, rel) in targets {
            let path = Path::new("/sys/fs/cgroup").join(rel);
            if path.exists() {
                fs::remove_dir(&path)?;
            }
        }
        let path = Path::new("/sys/fs/cgroup/systrace-units/victim.service");
        fs::create_dir_all(path)?;
        expect_spawn(path, &secret, EACCES)
    });
    let (code, _) = agent.stop()?;
    ensure!(code == 0, "units agent exit code {code}");
    Ok(())
}

fn expect_spawn(cg: &Path, file: &Path, errno: i32) -> Result<()> {
    let out = op::run_args(None, &["spawn-into".as_ref(), cg.as_os_str(), file.as_os_str()])?;
    ensure!(out.errno == errno, "spawn into {}: errno {} (expected {errno})", cg.display(), out.errno);
    Ok(())
}

fn reload_policy(name: &str, cg: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\ncgroup = \"{cg}\"\nmode = \"enforce\"\ndefault = \"deny\"\n\
         [[file]]\npath = \"/tmp/living/reload/allowed\"\naccess = [\"read\"]\n{extra}"
    )
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// 200 reloads that rename a policy, swap two policies' cgroups, take the
/// policy directory away and bring it back, and try a set too big for the
/// maps, while a workload in each cgroup checks every verdict: never a moment
/// without a policy.
fn reloads(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    let data = Path::new(ROOT).join("reload");
    fs::create_dir_all(&data)?;
    let allowed = data.join("allowed");
    let denied = data.join("denied");
    fs::write(&allowed, "a\n")?;
    fs::write(&denied, "d\n")?;
    let dir = Path::new(ROOT).join("reload-policies");
    let away = Path::new(ROOT).join("reload-policies.away");
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&away);
    fs::create_dir_all(&dir)?;
    let (x, y) = ("systrace-reload-x", "systrace-reload-y");
    fs::write(dir.join("a.toml"), reload_policy("a", x, ""))?;
    fs::write(dir.join("b.toml"), reload_policy("b", y, ""))?;
    let (cg_x, cg_y) = (cgroup(x)?, cgroup(y)?);
    let mut agent = Agent::start_args(agent_bin, &["--policy-dir".as_ref(), dir.as_os_str()])?;
    let mut workloads = vec![op::start_loop(&cg_x, &allowed, &denied)?, op::start_loop(&cg_y, &allowed, &denied)?];
    let reloads = 200;
    let mut last = 0u64;
    // Waits for a reload after the last one seen that ended in `state`;
    // reloads in between (a change seen half made) may end otherwise.
    let mut reached = |agent: &mut Agent, state: &str| -> Result<()> {
        let after = last;
        let status = agent.wait_for(Duration::from_secs(60), |v| {
            v["type"] == "status" && v["state"] == state && v["generation"].as_u64().is_some_and(|g| g > after)
        })?;
        last = status["generation"].as_u64().unwrap_or(after);
        agent.forget();
        Ok(())
    };
    let mut result = Ok(());
    for i in 0..reloads {
        let step = (|| -> Result<()> {
            let forward = (i / 5) % 2 == 0;
            match i % 5 {
                // Rename a policy.
                0 => {
                    write_atomically(
                        &dir.join("a.toml"),
                        &reload_policy(&format!("a{i}"), if forward { x } else { y }, ""),
                    )?;
                    reached(&mut agent, "reloaded")
                }
                // Swap the two policies' cgroups.
                1 => {
                    let (ax, bx) = if forward { (y, x) } else { (x, y) };
                    fs::write(dir.join("a.next"), reload_policy("a", ax, ""))?;
                    fs::write(dir.join("b.next"), reload_policy("b", bx, ""))?;
                    fs::rename(dir.join("a.next"), dir.join("a.toml"))?;
                    fs::rename(dir.join("b.next"), dir.join("b.toml"))?;
                    reached(&mut agent, "reloaded")
                }
                // The directory goes away: the policies in force stay; it
                // comes back under its name.
                2 => {
                    fs::rename(&dir, &away)?;
                    reached(&mut agent, "reload-failed")?;
                    fs::rename(&away, &dir)?;
                    reached(&mut agent, "reloaded")
                }
                // A set too big for the maps (5,000 unix rules; the map holds
                // 4,096): refused whole, in the middle of writing it.
                3 => {
                    let b_cgroup = if forward { x } else { y };
                    let mut extra = String::new();
                    for n in 0..5000 {
                        extra.push_str(&format!(
                            "[[net]]\noperations = [\"connect\"]\nfamily = \"unix\"\npath = \"/run/s{n}\"\n"
                        ));
                    }
                    write_atomically(&dir.join("b.toml"), &reload_policy("b", b_cgroup, &extra))?;
                    reached(&mut agent, "reload-failed")?;
                    write_atomically(&dir.join("b.toml"), &reload_policy("b", b_cgroup, ""))?;
                    reached(&mut agent, "reloaded")
                }
                _ => {
                    agent.signal(libc::SIGHUP);
                    reached(&mut agent, "reloaded")
                }
            }
        })();
        if let Err(e) = step {
            result = Err(e.context(format!("reload step {i}")));
            break;
        }
    }
    r.case("reloads_rename_swap_lose_and_overfill", || result);
    let mut total = (0u64, 0u64);
    for mut w in workloads.drain(..) {
        drop(w.stdin.take());
        let out = w.wait_with_output()?;
        let tally: op::Outcome = serde_json::from_slice(&out.stdout).context("workload tally")?;
        total.0 += tally.rounds;
        total.1 += tally.wrong;
    }
    r.case("reloads_never_leave_a_cgroup_without_its_policy", || {
        println!("living: {} rounds of checks in two cgroups through {reloads} reloads, {} wrong", total.0, total.1);
        ensure!(total.0 >= reloads as u64, "only {} rounds ran", total.0);
        ensure!(total.1 == 0, "{} wrong verdicts", total.1);
        Ok(())
    });
    let _ = agent.stop();
    Ok(())
}

/// `run --handover`: SIGTERM leaves the programs enforcing until the next
/// agent takes over; a workload sees no moment without enforcement.
fn handover(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    let data = Path::new(ROOT).join("handover");
    fs::create_dir_all(&data)?;
    let allowed = data.join("allowed");
    let denied = data.join("denied");
    fs::write(&allowed, "a\n")?;
    fs::write(&denied, "d\n")?;
    let policy = data.join("handover.toml");
    fs::write(
        &policy,
        "name = \"handover\"\ncgroup = \"systrace-handover\"\nmode = \"enforce\"\ndefault = \"deny\"\n\
         [[file]]\npath = \"/tmp/living/handover/allowed\"\naccess = [\"read\"]\n",
    )?;
    let cg = cgroup("systrace-handover")?;
    let first = Agent::start_args(agent_bin, &["--handover".as_ref(), policy.as_os_str()])?;
    let first_pid = first.pid();
    let mut workload = op::start_loop(&cg, &allowed, &denied)?;
    std::thread::sleep(Duration::from_millis(500));
    let result = (|| -> Result<Agent> {
        first.terminate()?;
        // Between the two agents: still enforced.
        std::thread::sleep(Duration::from_secs(2));
        let second = Agent::start_args(agent_bin, &[policy.as_os_str()])?;
        ensure!(
            !Path::new("/sys/fs/bpf/systrace").join(first_pid.to_string()).exists(),
            "the second agent left the first one's pins"
        );
        std::thread::sleep(Duration::from_millis(500));
        Ok(second)
    })();
    // The workload ends before the last agent stops (which ends enforcement).
    drop(workload.stdin.take());
    let out = workload.wait_with_output()?;
    let result = result.and_then(|second| {
        let (code, _) = second.stop()?;
        ensure!(code == 0, "second agent exit code {code}");
        Ok(())
    });
    r.case("handover_leaves_no_unenforced_moment", || {
        result?;
        let tally: op::Outcome = serde_json::from_slice(&out.stdout).context("workload tally")?;
        println!("living: handover: {} rounds, {} wrong", tally.rounds, tally.wrong);
        ensure!(tally.rounds > 0, "the workload did not run");
        ensure!(tally.wrong == 0, "{} wrong verdicts across the handover", tally.wrong);
        Ok(())
    });
    Ok(())
}

/// The kernel's counter `key` in a fresh stats line.
fn counter(agent: &mut Agent, key: &str) -> Result<u64> {
    agent.forget();
    agent.signal(libc::SIGUSR1);
    let stats = agent.wait_for(Duration::from_secs(30), |v| v["type"] == "stats")?;
    stats[key].as_u64().with_context(|| format!("no {key} in {stats}"))
}

/// MS_MOVE of the mount at `from` to `to`.
fn move_mount(from: &Path, to: &Path) -> Result<()> {
    let (f, t) = (
        std::ffi::CString::new(from.as_os_str().as_encoded_bytes())?,
        std::ffi::CString::new(to.as_os_str().as_encoded_bytes())?,
    );
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(f.as_ptr(), t.as_ptr(), std::ptr::null(), libc::MS_MOVE, std::ptr::null()) };
    ensure!(rc == 0, "moving the mount at {}: {}", from.display(), std::io::Error::last_os_error());
    Ok(())
}

/// The walk cache answers a confined process's repeated opens from what the
/// last walk found. Every way the answer can go stale under it is made here
/// while the answer is remembered (the cache's hit counter proves it was
/// used), and the next open must be decided for the file's new situation:
/// a rename of a directory above the file, a RENAME_EXCHANGE, a mount moved
/// to where no rule allows, a name removed and made again for a file a deny
/// rule follows, and a reload that takes the rule away. Each refusal must be
/// our policy's, for that process, with an event.
fn walk_cache(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    let base = Path::new(ROOT).join("cache");
    let _ = fs::remove_dir_all(&base);
    let allowed = base.join("allowed");
    let other = base.join("other");
    fs::create_dir_all(allowed.join("d"))?;
    fs::create_dir_all(other.join("e"))?;
    fs::write(allowed.join("d/f"), "x\n")?;
    fs::write(other.join("e/f"), "y\n")?;
    fs::write(allowed.join("secret"), "s\n")?;
    let policies = Path::new(ROOT).join("cache-policies");
    let _ = fs::remove_dir_all(&policies);
    fs::create_dir_all(&policies)?;
    let cg_name = "systrace-cache";
    let policy = |extra: &str| {
        format!(
            "name = \"cache\"\ncgroup = \"{cg_name}\"\nmode = \"enforce\"\ndefault = \"deny\"\n\
             [[file]]\npath = \"{}/**\"\naccess = [\"read\"]\n{extra}",
            allowed.display()
        )
    };
    let deny_secret =
        format!("[[file]]\npath = \"{}\"\naccess = [\"read\"]\nverdict = \"deny\"\n", allowed.join("secret").display());
    write_atomically(&policies.join("cache.toml"), &policy(&deny_secret))?;
    let cg = cgroup(cg_name)?;
    let mut agent = Agent::start_args(agent_bin, &["--policy-dir".as_ref(), policies.as_os_str()])?;
    let path = |p: &Path| p.display().to_string();

    // Warm: the same open ten times in one process, the cache's hits must
    // rise. The cache is per CPU: each CPU the process runs on misses once
    // (with separate processes, three opens on two vCPUs could hit once).
    let hits = counter(&mut agent, "walk_cache_hits")?;
    expect(&cg, &["bench-open", &path(&allowed.join("d/f")), "10"], 0, "warming the cache")?;
    let warmed = counter(&mut agent, "walk_cache_hits")?;
    r.case("walk_cache_answers_repeated_opens", || {
        ensure!(warmed >= hits + 8, "walk_cache_hits went from {hits} to {warmed} over ten opens of one file");
        Ok(())
    });

    // A refusal that counts: errno EACCES and our denial event for that pid
    // and path, made after the step began.
    let refused = |agent: &mut Agent, file: &Path, what: &str| -> Result<()> {
        agent.forget();
        let out = op::run(Some(&cg), file, "r")?;
        ensure!(out.errno == EACCES, "{what}: open of {} gave errno {}, expected EACCES", file.display(), out.errno);
        let pid = out.pid;
        let name = path(file);
        agent.wait_for(Duration::from_secs(30), |v| {
            v["type"] == "event"
                && v["policy"] == "cache"
                && v["verdict"] == "denied"
                && v["pid"] == pid
                && v["path"] == name.as_str()
        })?;
        Ok(())
    };

    r.case("walk_cache_rename_of_a_parent_takes_effect", || {
        expect(&cg, &["open", &path(&allowed.join("d/f")), "r"], 0, "before")?;
        fs::rename(allowed.join("d"), other.join("d"))?;
        let step = refused(&mut agent, &other.join("d/f"), "after moving the directory out of the allowed tree");
        fs::rename(other.join("d"), allowed.join("d"))?;
        step?;
        expect(&cg, &["open", &path(&allowed.join("d/f")), "r"], 0, "moved back")
    });

    r.case("walk_cache_rename_exchange_takes_effect", || {
        expect(&cg, &["open", &path(&allowed.join("d/f")), "r"], 0, "before")?;
        let (a, b) =
            (std::ffi::CString::new(path(&allowed.join("d")))?, std::ffi::CString::new(path(&other.join("e")))?);
        let exchange = |a: &std::ffi::CString, b: &std::ffi::CString| -> Result<()> {
            // SAFETY: valid C strings; renameat2 with RENAME_EXCHANGE (2).
            let rc = unsafe {
                libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), 2u32)
            };
            ensure!(rc == 0, "renameat2: {}", std::io::Error::last_os_error());
            Ok(())
        };
        exchange(&a, &b)?;
        // The file that was allowed/d/f is now other/e/f.
        let step = refused(&mut agent, &other.join("e/f"), "after RENAME_EXCHANGE");
        exchange(&a, &b)?;
        step
    });

    r.case("walk_cache_moved_mount_takes_effect", || {
        let m = allowed.join("m");
        fs::create_dir_all(&m)?;
        run("mount", &["-t", "tmpfs", "tmpfs", &path(&m)])?;
        fs::write(m.join("f"), "m\n")?;
        let step = (|| -> Result<()> {
            for _ in 0..2 {
                expect(&cg, &["open", &path(&m.join("f")), "r"], 0, "on the mount in the allowed tree")?;
            }
            let to = other.join("m");
            fs::create_dir_all(&to)?;
            move_mount(&m, &to)?;
            // Same dentry, same mount: only the mount tree changed.
            let moved = refused(&mut agent, &to.join("f"), "after moving the mount out of the allowed tree");
            let _ = run("umount", &[&path(&to)]);
            moved
        })();
        let _ = run("umount", &[&path(&m)]);
        step
    });

    r.case("walk_cache_replaced_file_under_a_deny_rule", || {
        refused(&mut agent, &allowed.join("secret"), "the denied file")?;
        // rm and make again: a new inode (and for the deny rule that follows
        // the file, a new identity) under the same name.
        fs::remove_file(allowed.join("secret"))?;
        fs::write(allowed.join("secret"), "s2\n")?;
        refused(&mut agent, &allowed.join("secret"), "the denied file made again")
    });

    r.case("walk_cache_reload_takes_effect", || {
        expect(&cg, &["open", &path(&allowed.join("d/f")), "r"], 0, "before")?;
        let deny_d = format!(
            "[[file]]\npath = \"{}/**\"\naccess = [\"read\"]\nverdict = \"deny\"\n",
            allowed.join("d").display()
        );
        write_atomically(&policies.join("cache.toml"), &policy(&deny_d))?;
        agent.wait_for(Duration::from_secs(60), |v| v["type"] == "status" && v["state"] == "reloaded")?;
        refused(&mut agent, &allowed.join("d/f"), "after a reload that denies it")
    });
    agent.stop()?;
    Ok(())
}

/// The cgroup of process `pid`, as /proc says (`0::/PATH`).
fn cgroup_of(pid: u32) -> Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string).context("no cgroup v2 line")
}

/// The cgroup move check (`inode_permission`) is attached only once a policy
/// in force could write a cgroup's process list. A policy that writes nothing
/// still cannot pull a process in from outside, even through a descriptor of
/// its cgroup.procs held from before it was confined: the write is refused at
/// `file_permission`. A reload that grants that write attaches the check
/// (pinned, like the others) before the policy is in force, and the same pull
/// is refused there. From then on it stays, across a reload that takes the
/// grant away and into the next agent after this one is killed: a write
/// allowed before may still be on its way to the kernel's check. For the
/// same reason a cgroup that holds processes when it is bound attaches it.
fn move_check(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    let policies = Path::new(ROOT).join("move-policies");
    let _ = fs::remove_dir_all(&policies);
    fs::create_dir_all(&policies)?;
    let cg_name = "systrace-moves";
    let cg = cgroup(cg_name)?;
    let outside = cgroup("systrace-moves-outside")?;
    let procs = cg.join("cgroup.procs");
    let policy = |extra: &str| {
        format!(
            "name = \"moves\"\ncgroup = \"{cg_name}\"\nmode = \"enforce\"\ndefault = \"deny\"\n\
             [[file]]\npath = \"/sys/fs/cgroup/**\"\naccess = [\"read\"]\n{extra}"
        )
    };
    let write_own_procs = format!("[[file]]\npath = \"{}\"\naccess = [\"write\"]\n", procs.display());
    write_atomically(&policies.join("moves.toml"), &policy(""))?;
    // The process a confined one would pull in: outside, in a cgroup of its own.
    let mut sibling = Command::new("sleep").arg("600").spawn()?;
    let sibling_pid = sibling.id();
    fs::write(outside.join("cgroup.procs"), sibling_pid.to_string())?;
    let outside_path = cgroup_of(sibling_pid)?;
    let mut agent = Agent::start_args(agent_bin, &["--policy-dir".as_ref(), policies.as_os_str()])?;
    let pin_of =
        |agent: &Agent| Path::new("/sys/fs/bpf/systrace").join(agent.pid().to_string()).join("inode_permission");
    let pin = pin_of(&agent);
    let attached = |agent: &mut Agent| -> Result<bool> {
        agent.forget();
        agent.signal(libc::SIGUSR1);
        let stats = agent.wait_for(Duration::from_secs(30), |v| v["type"] == "stats")?;
        stats["move_check_attached"].as_bool().with_context(|| format!("no move_check_attached in {stats}"))
    };
    // The pull through a descriptor of our cgroup.procs opened before joining:
    // refused with `errno`, reported by `hook` for that process, and the
    // sibling still outside.
    let pull_with = |agent: &mut Agent, errno: i32, hook: &str, how: &str| -> Result<()> {
        agent.forget();
        // Events from before this step do not count.
        let start = crate::suite::boot_ns();
        let pre = format!("{}:w", procs.display());
        let pid = sibling_pid.to_string();
        let args = ["--pre-open", pre.as_str(), "fd-pull", pid.as_str(), how];
        let out = op::run_args(Some(&cg), &args.map(std::ffi::OsStr::new))?;
        ensure!(out.errno == errno, "the pull by {how} gave errno {}, expected {errno}", out.errno);
        ensure!(cgroup_of(sibling_pid)? == outside_path, "the sibling was moved to {}", cgroup_of(sibling_pid)?);
        let (op_pid, tgid) = (out.pid, out.tgid);
        agent.wait_for(Duration::from_secs(30), |v| {
            v["type"] == "event"
                && v["policy"] == "moves"
                && v["verdict"] == "denied"
                && v["hook"] == hook
                && (v["pid"] == op_pid || v["tgid"] == tgid)
                && v["boot_ns"].as_u64().is_some_and(|t| t >= start)
                // The write to cgroup.procs itself, not to some other file on
                // the way (inode_permission's events name no path).
                && (hook != "file_permission" || v["path"].as_str().is_some_and(|p| p.ends_with("/cgroup.procs")))
        })?;
        Ok(())
    };
    let pull = |agent: &mut Agent, errno: i32, hook: &str| pull_with(agent, errno, hook, "write");
    let reload = |agent: &mut Agent, text: &str| -> Result<()> {
        agent.forget();
        write_atomically(&policies.join("moves.toml"), text)?;
        agent.wait_for(Duration::from_secs(60), |v| v["type"] == "status" && v["state"] == "reloaded")?;
        Ok(())
    };

    r.case("move_check_detached_while_no_policy_writes", || {
        ensure!(!attached(&mut agent)?, "attached for a policy that grants no write");
        ensure!(!pin.exists(), "{} is pinned", pin.display());
        pull(&mut agent, EACCES, "file_permission")
    });
    // Every way to write reaches `file_permission` (rw_verify_area) first:
    // the reason the move check may stay detached.
    for how in ["writev", "pwritev2", "sendfile", "uring"] {
        r.case(&format!("move_check_detached_and_a_pull_by_{how}_still_refused"), || {
            ensure!(!attached(&mut agent)?, "attached for a policy that grants no write");
            pull_with(&mut agent, EACCES, "file_permission", how)
        });
    }
    r.case("move_check_attached_by_a_reload_that_grants_a_write", || {
        reload(&mut agent, &policy(&write_own_procs))?;
        ensure!(attached(&mut agent)?, "not attached for a policy that may write its cgroup.procs");
        ensure!(pin.exists(), "{} is not pinned", pin.display());
        pull(&mut agent, libc::EPERM, "inode_permission")
    });
    r.case("move_check_kept_after_a_reload_that_takes_the_grant_away", || {
        reload(&mut agent, &policy(""))?;
        ensure!(attached(&mut agent)?, "detached");
        ensure!(pin.exists(), "{} is no longer pinned", pin.display());
        pull(&mut agent, EACCES, "file_permission")
    });
    // Killed, its pins stay; the next agent, whose policies write nothing,
    // takes the check over before it removes them.
    agent.kill_hard()?;
    let mut agent = Agent::start_args(agent_bin, &["--policy-dir".as_ref(), policies.as_os_str()])?;
    r.case("move_check_kept_by_the_next_agent", || {
        ensure!(attached(&mut agent)?, "the next agent did not attach it");
        let pin = pin_of(&agent);
        ensure!(pin.exists(), "{} is not pinned", pin.display());
        pull(&mut agent, EACCES, "file_permission")
    });
    agent.stop()?;
    // A cgroup that holds processes when its policy comes in force: they were
    // free to start such a write before. Stopped cleanly, the last agent left
    // no pins to inherit the check from.
    let mut resident = Command::new("sleep").arg("600").spawn()?;
    fs::write(cg.join("cgroup.procs"), resident.id().to_string())?;
    let step = (|| -> Result<()> {
        let mut agent = Agent::start_args(agent_bin, &["--policy-dir".as_ref(), policies.as_os_str()])?;
        r.case("move_check_attached_for_a_cgroup_confined_with_processes_in_it", || {
            ensure!(attached(&mut agent)?, "not attached although the cgroup held a process when it was bound");
            Ok(())
        });
        agent.stop()?;
        Ok(())
    })();
    let _ = resident.kill();
    let _ = resident.wait();
    let _ = sibling.kill();
    let _ = sibling.wait();
    step
}

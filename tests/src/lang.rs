//! The policy language end to end: every access kind, subtree rules over files
//! that appear or move after loading, hard links, precedence, exec, the walk
//! bound, reload under load, `check` diagnostics, and a 100,000-rule policy.

use std::{
    ffi::OsStr,
    fs,
    io::Write,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::{agent::Agent, op, suite::Runner};

const EPERM: i32 = 1;
const EACCES: i32 = 13;
const ROOT: &str = "/tmp/st3";

fn p(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn touch(rel: &str) -> Result<PathBuf> {
    let path = p(rel);
    fs::create_dir_all(path.parent().unwrap())?;
    fs::write(&path, format!("{rel}\n"))?;
    Ok(path)
}

fn cgroup(name: &str) -> Result<PathBuf> {
    let path = Path::new("/sys/fs/cgroup").join(name);
    fs::create_dir_all(&path)?;
    Ok(path)
}

/// Runs `op VERB ARGS` in `cg` and checks its errno.
fn expect(cg: &Path, verb: &str, args: &[&Path], errno: i32) -> Result<op::Outcome> {
    let mut all: Vec<&OsStr> = vec![verb.as_ref()];
    all.extend(args.iter().map(|a| a.as_os_str()));
    let out = op::run_args(Some(cg), &all)?;
    ensure!(out.errno == errno, "{verb} {args:?}: errno {} (expected {errno})", out.errno);
    Ok(out)
}

const LANG_POLICY: &str = r#"
name = "lang"
cgroup = "systrace-lang"
mode = "enforce"
default = "deny"

[[file]]
path = "/tmp/st3/www/**"
access = ["read", "create", "rename"]

[[file]]
path = "/tmp/st3/www/private/**"
access = ["read"]
verdict = "deny"

# An exact rule is more specific than the subtree deny around it.
[[file]]
path = "/tmp/st3/www/private/readme"
access = ["read"]

[[file]]
path = "/tmp/st3/uploads/*"
access = ["read", "write", "create", "delete"]

[[file]]
path = "/tmp/st3/logs/app.log"
access = ["append"]

[[file]]
path = "/tmp/st3/logs/watched.log"
access = ["read"]
verdict = "audit"

# Same path, same scope: deny beats allow.
[[file]]
path = "/tmp/st3/prec/*"
access = ["read"]

[[file]]
path = "/tmp/st3/prec/*"
access = ["read"]
verdict = "deny"

[[file]]
path = "/tmp/st3/secret.key"
access = ["read"]
verdict = "deny"

[[file]]
path = "/tmp/st3/linkable/**"
access = ["read", "create"]

[[exec]]
path = "/tmp/st3/bin/allowed"
"#;

pub fn main(args: &[String]) -> ExitCode {
    let Some(agent) = args.first() else {
        eprintln!("lang: expected the agent binary's path");
        return ExitCode::from(2);
    };
    let agent = Path::new(agent);
    let mut r = Runner::default();
    if let Err(e) = language(agent, &mut r) {
        r.fail("lang_setup", e);
    }
    if let Err(e) = extensions(agent, &mut r) {
        r.fail("extensions_setup", e);
    }
    if let Err(e) = network(agent, &mut r) {
        r.fail("network_setup", e);
    }
    r.case("check_reports_file_line_column", || check_diagnostics(agent));
    if let Err(e) = reload(agent, &mut r) {
        r.fail("reload_setup", e);
    }
    r.case("scale_100k_rules_compile_and_load", || scale(agent));
    r.finish()
}

fn language(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    for rel in [
        "www/index.html",
        "www/old.txt",
        "www/private/secret",
        "www/private/readme",
        "uploads/existing",
        "logs/app.log",
        "logs/watched.log",
        "prec/file",
        "outside/file",
        "secret.key",
        "linkable/.keep",
    ] {
        touch(rel)?;
    }
    fs::create_dir_all(p("www/sub"))?;
    fs::create_dir_all(p("bin"))?;
    fs::copy("/bin/busybox", p("bin/allowed"))?;
    fs::copy("/bin/busybox", p("bin/denied"))?;
    // A tree deeper than the walk bound, under the readable /www/**.
    let mut deep = p("www");
    for i in 0..40 {
        deep = deep.join(format!("d{i}"));
    }
    fs::create_dir_all(&deep)?;
    let deep_file = deep.join("f");
    fs::write(&deep_file, "deep\n")?;
    let mut deep = p("www/private");
    for i in 0..60 {
        deep = deep.join(format!("d{i}"));
    }
    fs::create_dir_all(&deep)?;
    let deep_private = deep.join("f");
    fs::write(&deep_private, "deep\n")?;
    let policy = p("lang.toml");
    fs::write(&policy, LANG_POLICY)?;
    let cg = cgroup("systrace-lang")?;
    let mut agent = Agent::start(agent_bin, &[&policy])?;

    r.case("read_allowed_and_denied", || {
        expect(&cg, "open", &[&p("www/index.html"), Path::new("r")], 0)?;
        expect(&cg, "open", &[&p("outside/file"), Path::new("r")], EACCES)?;
        Ok(())
    });
    r.case("write_allowed_and_denied", || {
        expect(&cg, "open", &[&p("uploads/existing"), Path::new("w")], 0)?;
        expect(&cg, "open", &[&p("www/index.html"), Path::new("w")], EACCES)?;
        expect(&cg, "truncate", &[&p("www/index.html")], EACCES)?;
        expect(&cg, "truncate", &[&p("uploads/existing")], 0)?;
        Ok(())
    });
    r.case("append_allowed_and_denied", || {
        expect(&cg, "open", &[&p("logs/app.log"), Path::new("a")], 0)?;
        expect(&cg, "open", &[&p("logs/app.log"), Path::new("w")], EACCES)?;
        expect(&cg, "open", &[&p("logs/app.log"), Path::new("r")], EACCES)?;
        Ok(())
    });
    r.case("create_allowed_and_denied", || {
        expect(&cg, "create", &[&p("uploads/new")], 0)?;
        expect(&cg, "mkdir", &[&p("uploads/newdir")], 0)?;
        expect(&cg, "symlink", &[Path::new("existing"), &p("uploads/sym")], 0)?;
        let out = expect(&cg, "create", &[&p("outside/new")], EACCES)?;
        let pid = out.pid;
        let ev = agent.wait_for(Duration::from_secs(10), |v| v["type"] == "event" && v["pid"] == pid)?;
        ensure!(ev["hook"] == "path_mknod", "hook {}", ev["hook"]);
        ensure!(ev["path"] == "/tmp/st3/outside/new", "path {}", ev["path"]);
        ensure!(ev["requested"] == serde_json::json!(["create"]), "requested {}", ev["requested"]);
        expect(&cg, "mkdir", &[&p("outside/dir")], EACCES)?;
        expect(&cg, "symlink", &[Path::new("x"), &p("outside/sym")], EACCES)?;
        ensure!(!p("outside/new").exists() && !p("outside/dir").exists(), "a denied create left a file");
        Ok(())
    });
    r.case("delete_allowed_and_denied", || {
        expect(&cg, "unlink", &[&p("uploads/new")], 0)?;
        expect(&cg, "rmdir", &[&p("uploads/newdir")], 0)?;
        expect(&cg, "unlink", &[&p("www/index.html")], EACCES)?;
        expect(&cg, "rmdir", &[&p("www/sub")], EACCES)?;
        ensure!(p("www/index.html").exists(), "a denied unlink removed the file");
        Ok(())
    });
    r.case("rename_allowed_and_denied", || {
        // www/** grants rename (source) and create (target).
        expect(&cg, "rename", &[&p("www/old.txt"), &p("www/sub/moved.txt")], 0)?;
        // uploads/* grants create and delete but not rename.
        expect(&cg, "rename", &[&p("uploads/existing"), &p("uploads/renamed")], EACCES)?;
        Ok(())
    });
    r.case("exec_allowed_copy_and_symlink_denied", || {
        let out = op::run_args(Some(&cg), &["exec".as_ref(), p("bin/allowed").as_os_str()])?;
        if out.errno != 0 {
            let pid = out.pid;
            let ev = agent.wait_for(Duration::from_secs(5), |v| v["type"] == "event" && v["pid"] == pid);
            anyhow::bail!("exec of the allowed binary: errno {}; event: {:?}", out.errno, ev.map(|v| v.to_string()));
        }
        expect(&cg, "exec", &[&p("bin/denied")], EACCES)?;
        fs::copy(p("bin/allowed"), p("outside/copy"))?;
        expect(&cg, "exec", &[&p("outside/copy")], EACCES)?;
        symlink(p("bin/denied"), p("outside/to-denied"))?;
        expect(&cg, "exec", &[&p("outside/to-denied")], EACCES)?;
        symlink(p("bin/allowed"), p("outside/to-allowed"))?;
        expect(&cg, "exec", &[&p("outside/to-allowed")], 0)?;
        Ok(())
    });
    r.case("subtree_covers_files_created_after_load", || {
        // Made by an unconfined process after the policy was loaded.
        touch("www/later.txt")?;
        touch("www/newdir/nested/later.txt")?;
        expect(&cg, "open", &[&p("www/later.txt"), Path::new("r")], 0)?;
        expect(&cg, "open", &[&p("www/newdir/nested/later.txt"), Path::new("r")], 0)?;
        touch("outside/later.txt")?;
        expect(&cg, "open", &[&p("outside/later.txt"), Path::new("r")], EACCES)?;
        Ok(())
    });
    r.case("subtree_covers_files_renamed_within_the_tree", || {
        expect(&cg, "open", &[&p("www/sub/moved.txt"), Path::new("r")], 0)?;
        // Moved into the denied part of the tree by an unconfined process: now denied.
        fs::rename(p("www/later.txt"), p("www/private/later.txt"))?;
        expect(&cg, "open", &[&p("www/private/later.txt"), Path::new("r")], EACCES)?;
        Ok(())
    });
    r.case("hardlink_to_a_denied_file_stays_denied", || {
        // Made outside the allowed tree by an unconfined process: the deny rule is on
        // the inode, so the new name does not help.
        fs::hard_link(p("secret.key"), p("outside/key-link"))?;
        expect(&cg, "open", &[&p("outside/key-link"), Path::new("r")], EACCES)?;
        fs::hard_link(p("secret.key"), p("linkable/preexisting-link"))?;
        expect(&cg, "open", &[&p("linkable/preexisting-link"), Path::new("r")], EACCES)?;
        // Made by the confined process into a tree it may create in and read: refused,
        // as the new name would grant read the old one does not.
        expect(&cg, "link", &[&p("www/private/secret"), &p("linkable/alias")], EACCES)?;
        ensure!(!p("linkable/alias").exists(), "the refused link exists");
        // Linking a readable file there widens nothing, and is allowed.
        expect(&cg, "link", &[&p("www/index.html"), &p("linkable/index-link")], 0)?;
        Ok(())
    });
    r.case("rename_of_a_denied_file_into_an_allowed_tree_is_refused", || {
        // www/** grants rename at the source and linkable/** grants create at the
        // target, but the file may not be read where it is: under its new name it
        // could be, so the rename is refused.
        expect(&cg, "rename", &[&p("www/private/secret"), &p("linkable/moved-secret")], EACCES)?;
        ensure!(
            p("www/private/secret").exists() && !p("linkable/moved-secret").exists(),
            "the refused rename moved the file"
        );
        Ok(())
    });
    r.case("precedence_most_specific_first_then_deny", || {
        // /www/private/** (deny) is nearer than /www/** (allow).
        expect(&cg, "open", &[&p("www/private/secret"), Path::new("r")], EACCES)?;
        // The exact rule beats the subtree deny around it.
        expect(&cg, "open", &[&p("www/private/readme"), Path::new("r")], 0)?;
        // Equal specificity: deny beats allow.
        expect(&cg, "open", &[&p("prec/file"), Path::new("r")], EACCES)?;
        Ok(())
    });
    r.case("audit_rule_allows_and_reports", || {
        let out = expect(&cg, "open", &[&p("logs/watched.log"), Path::new("r")], 0)?;
        let pid = out.pid;
        let ev = agent.wait_for(Duration::from_secs(10), |v| v["type"] == "event" && v["pid"] == pid)?;
        ensure!(ev["verdict"] == "audit-rule", "verdict {}", ev["verdict"]);
        ensure!(ev["path"] == "/tmp/st3/logs/watched.log", "path {}", ev["path"]);
        Ok(())
    });
    r.case("deep_trees_are_decided_by_their_whole_path", || {
        // 41 levels below www/** (readable): the old bound of 32 levels gave the
        // default, a denial; the climb now reaches the root.
        let out = op::run(Some(&cg), &deep_file, "r")?;
        ensure!(out.errno == 0, "a file 41 levels deep under www/**: errno {}", out.errno);
        // 60 levels below www/private/** (denied), and the event names it.
        let out = op::run(Some(&cg), &deep_private, "r")?;
        ensure!(out.errno == EACCES, "a file 60 levels deep under www/private/**: errno {}", out.errno);
        let pid = out.pid;
        let ev = agent.wait_for(Duration::from_secs(10), |v| v["type"] == "event" && v["pid"] == pid)?;
        ensure!(ev["walk_undecided"].is_null(), "the walk was undecided: {ev}");
        ensure!(ev["path"].as_str().is_some_and(|p| p.ends_with("/d59/f")), "path {}", ev["path"]);
        Ok(())
    });
    r.case("unconfined_processes_untouched", || {
        for path in [p("outside/file"), p("secret.key"), p("www/private/secret")] {
            let out = op::run(None, &path, "r")?;
            ensure!(out.errno == 0, "{} outside the cgroup: errno {}", path.display(), out.errno);
        }
        Ok(())
    });
    let (code, stats) = agent.stop()?;
    r.case("lang_agent_exit", || {
        ensure!(code == 0, "exit code {code}");
        ensure!(stats["events_delivered"] == stats["events_reported"], "stats {stats}");
        Ok(())
    });
    Ok(())
}

/// Rules by extension, in an allow-by-default policy with a deny rule and a
/// deny-by-default policy with an allow rule.
const EXT_DENY_POLICY: &str = r#"
name = "ext-deny"
cgroup = "systrace-ext-deny"
mode = "enforce"
default = "allow"

[[file]]
path = "/tmp/st3/keys/*.key"
access = ["read"]
verdict = "deny"

# An exact rule is more specific than the extension rule.
[[file]]
path = "/tmp/st3/keys/public.key"
access = ["read"]

# The same in a directory that is a mount of its own.
[[file]]
path = "/tmp/st3/mounted-keys/*.key"
access = ["read"]
verdict = "deny"

[[file]]
path = "/tmp/st3/mounted-keys/public.key"
access = ["read"]
"#;

const EXT_ALLOW_POLICY: &str = r#"
name = "ext-allow"
cgroup = "systrace-ext-allow"
mode = "enforce"
default = "deny"

[[file]]
path = "/tmp/st3/site/*.html"
access = ["read"]

[[file]]
path = "/tmp/st3/site/draft.html"
access = ["read"]
verdict = "deny"
"#;

/// A name longer than the 16 bytes the kernel looks for the dot in.
const LONG: &str = "a-name-much-longer-than-sixteen-bytes";

fn extensions(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    let long_key = format!("keys/{LONG}.key");
    let long_page = format!("site/{LONG}.html");
    for rel in [
        "keys/host.key",
        "keys/.key",
        long_key.as_str(),
        "keys/host.key.bak",
        "keys/host.KEY",
        "keys/key",
        "keys/sub/inner.key",
        "keys/public.key",
        "keys/plain.txt",
        "keys/linked-before-load.key",
        "site/index.html",
        long_page.as_str(),
        "site/page.htm",
        "site/page.html.orig",
        "site/html",
        "site/sub/inner.html",
        "site/draft.html",
        "ext-out/.keep",
    ] {
        touch(rel)?;
    }
    // A second name made before the policy loads, outside the rule's directory.
    let _ = fs::remove_file(p("ext-out/alias"));
    fs::hard_link(p("keys/linked-before-load.key"), p("ext-out/alias"))?;
    // A link named like a key, to a file the policy does not deny: not followed.
    let _ = fs::remove_file(p("keys/link.key"));
    symlink(p("keys/plain.txt"), p("keys/link.key"))?;
    let _ = fs::remove_file(p("site/evil.html"));
    symlink(p("outside/file"), p("site/evil.html"))?;
    // A directory that is the root of a mount: the rules its inode carries
    // (for bind mounts of it elsewhere) must not overrule its files' exact rules.
    fs::create_dir_all(p("mounted-keys"))?;
    let _ = Command::new("umount").arg(p("mounted-keys")).stderr(std::process::Stdio::null()).status();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(p("mounted-keys")).status()?;
    ensure!(mounted.success(), "mounting a tmpfs failed");
    for rel in ["mounted-keys/host.key", "mounted-keys/public.key"] {
        touch(rel)?;
    }
    let (deny_policy, allow_policy) = (p("ext-deny.toml"), p("ext-allow.toml"));
    fs::write(&deny_policy, EXT_DENY_POLICY)?;
    fs::write(&allow_policy, EXT_ALLOW_POLICY)?;
    let (deny_cg, allow_cg) = (cgroup("systrace-ext-deny")?, cgroup("systrace-ext-allow")?);
    let mut agent = Agent::start(agent_bin, &[&deny_policy, &allow_policy])?;
    let rd = Path::new("r");

    r.case("extension_deny_rule_by_name", || {
        for rel in ["keys/host.key", "keys/.key", long_key.as_str()] {
            let out = expect(&deny_cg, "open", &[&p(rel), rd], EACCES)?;
            let pid = out.pid;
            let ev = agent.wait_for(Duration::from_secs(10), |v| v["type"] == "event" && v["pid"] == pid)?;
            ensure!(ev["verdict"] == "denied" && ev["hook"] == "file_open", "{rel}: {ev}");
            ensure!(ev["path"] == p(rel).to_str().unwrap(), "{rel}: path {}", ev["path"]);
        }
        // Another extension, another case, no dot, a deeper directory, and the
        // exact rule that beats the extension rule.
        for rel in ["keys/host.key.bak", "keys/host.KEY", "keys/key", "keys/sub/inner.key", "keys/public.key"] {
            expect(&deny_cg, "open", &[&p(rel), rd], 0)?;
        }
        // io_uring reaches the same hook.
        expect(&deny_cg, "uring-open", &[&p("keys/host.key")], EACCES)?;
        // In a directory that is a mount root: the same verdicts.
        expect(&deny_cg, "open", &[&p("mounted-keys/host.key"), rd], EACCES)?;
        expect(&deny_cg, "open", &[&p("mounted-keys/public.key"), rd], 0)?;
        Ok(())
    });
    r.case("extension_deny_rule_follows_files_made_after_load", || {
        // A key made after the policy loaded, then a second name for it made
        // elsewhere by someone else: once the agent has followed the new file
        // (its `follow` line), the other name is refused too.
        touch("keys/followed-later.key")?;
        let path = p("keys/followed-later.key");
        agent.wait_for(Duration::from_secs(10), |v| v["type"] == "follow" && v["path"] == path.to_str().unwrap())?;
        let _ = fs::remove_file(p("ext-out/alias-later"));
        fs::hard_link(&path, p("ext-out/alias-later"))?;
        expect(&deny_cg, "open", &[&p("ext-out/alias-later"), rd], EACCES)?;
        // Symlinks in the directory are not followed to their targets.
        ensure!(
            !agent.seen.iter().any(|v| v["type"] == "follow" && v["path"] == p("keys/link.key").to_str().unwrap()),
            "the agent followed a symlink's target"
        );
        Ok(())
    });
    r.case("extension_deny_rule_covers_names_made_after_load", || {
        touch("keys/made-later.key")?;
        expect(&deny_cg, "open", &[&p("keys/made-later.key"), rd], EACCES)?;
        // Made by the confined process itself (the default allows creating).
        expect(&deny_cg, "create", &[&p("keys/made-by-it.key")], 0)?;
        expect(&deny_cg, "open", &[&p("keys/made-by-it.key"), rd], EACCES)?;
        Ok(())
    });
    r.case("extension_deny_rule_survives_renames_and_links", || {
        // Another name in the same directory, or elsewhere: refused, the new
        // name would grant the read the old one does not.
        expect(&deny_cg, "rename", &[&p("keys/host.key"), &p("keys/host.txt")], EACCES)?;
        expect(&deny_cg, "link", &[&p("keys/host.key"), &p("keys/host.txt")], EACCES)?;
        expect(&deny_cg, "link", &[&p("keys/host.key"), &p("ext-out/host")], EACCES)?;
        expect(&deny_cg, "rename", &[&p(&format!("keys/{LONG}.key")), &p(&format!("keys/{LONG}.txt"))], EACCES)?;
        ensure!(p("keys/host.key").exists() && !p("keys/host.txt").exists(), "a refused rename moved the file");
        // Moving the directory takes its files away from the rule: refused.
        expect(&deny_cg, "rename", &[&p("keys"), &p("ext-out/keys")], EACCES)?;
        // The name an unconfined process gave the file before the policy loaded:
        // the deny rule follows the inode.
        expect(&deny_cg, "open", &[&p("ext-out/alias"), rd], EACCES)?;
        // Narrowing is fine: a plain file may take a .key name.
        expect(&deny_cg, "rename", &[&p("keys/plain.txt"), &p("keys/plain.key")], 0)?;
        expect(&deny_cg, "open", &[&p("keys/plain.key"), rd], EACCES)?;
        Ok(())
    });
    r.case("extension_allow_rule_in_a_deny_by_default_policy", || {
        for rel in ["site/index.html", long_page.as_str()] {
            expect(&allow_cg, "open", &[&p(rel), rd], 0)?;
        }
        for rel in ["site/page.htm", "site/page.html.orig", "site/html", "site/sub/inner.html", "site/draft.html"] {
            expect(&allow_cg, "open", &[&p(rel), rd], EACCES)?;
        }
        // A symlink with an allowed name is decided by where it leads.
        expect(&allow_cg, "open", &[&p("site/evil.html"), rd], EACCES)?;
        // Unconfined processes are not affected.
        ensure!(op::run(None, &p("site/page.htm"), "r")?.errno == 0, "unconfined open refused");
        Ok(())
    });
    let (code, stats) = agent.stop()?;
    let _ = Command::new("umount").arg(p("mounted-keys")).status();
    r.case("extensions_agent_exit", || {
        ensure!(code == 0, "exit code {code}");
        ensure!(stats["events_delivered"] == stats["events_reported"], "stats {stats}");
        Ok(())
    });
    Ok(())
}

/// `check` on malformed files: each error names file, line and column.
fn check_diagnostics(agent: &Path) -> Result<()> {
    let dir = p("malformed");
    fs::create_dir_all(&dir)?;
    let head = "cgroup = \"systrace-lang\"\nmode = \"enforce\"\ndefault = \"deny\"\n";
    let cases: [(&str, String, &str); 6] = [
        ("unknown-key.toml", format!("{head}colour = \"blue\"\n"), "4:1: error: unknown field `colour`"),
        (
            "bad-access.toml",
            format!("{head}[[file]]\npath = \"/etc\"\naccess = [\"read\", \"chmodd\"]\n"),
            "6:19: error: unknown variant `chmodd`",
        ),
        (
            "bad-glob.toml",
            format!("{head}[[file]]\npath = \"/var/**/x\"\naccess = [\"read\"]\n"),
            "5:14: error: bad glob",
        ),
        (
            "wrong-type.toml",
            "cgroup = 42\nmode = \"enforce\"\ndefault = \"deny\"\n".into(),
            "1:10: error: invalid type",
        ),
        (
            "bad-mode.toml",
            "cgroup = \"x\"\nmode = \"enforcing\"\ndefault = \"deny\"\n".into(),
            "2:8: error: unknown variant `enforcing`",
        ),
        ("zz-duplicate.toml", format!("# same target as ok.toml\n{head}"), "2:10: error: duplicate target"),
    ];
    fs::write(dir.join("ok.toml"), head)?;
    for (name, text, _) in &cases {
        fs::write(dir.join(name), text)?;
    }
    let mut files: Vec<PathBuf> = vec![dir.join("ok.toml")];
    files.extend(cases.iter().map(|(n, _, _)| dir.join(n)));
    let out = Command::new(agent).arg("check").args(&files).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "check passed malformed files");
    for (name, _, want) in &cases {
        let expected = format!("{}:{want}", dir.join(name).display());
        ensure!(stderr.lines().any(|l| l.starts_with(&expected)), "missing `{expected}` in:\n{stderr}");
    }
    // A missing path is a warning and does not fail the check.
    let warn = dir.join("warn-only.toml");
    fs::write(&warn, format!("{head}[[file]]\npath = \"/nonexistent/file\"\naccess = [\"read\"]\n"))?;
    let out = Command::new(agent).arg("check").arg(&warn).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "a warning failed the check: {stderr}");
    ensure!(
        stderr.contains(&format!("{}:5:8: warning: /nonexistent/file", warn.display())),
        "warning missing: {stderr}"
    );
    Ok(())
}

const RELOAD_A: &str = r#"
name = "reload"
cgroup = "systrace-reload"
mode = "enforce"
default = "deny"

[[file]]
path = "/tmp/st3/reload-data/allowed"
access = ["read"]
"#;

/// The same policy written differently: rules reordered, a no-op rule added.
const RELOAD_B: &str = r#"
# variant B
default = "deny"
mode = "enforce"
cgroup = "systrace-reload"
name = "reload"

[[file]]
path = "/tmp/st3/reload-data/**"
access = ["append"]
verdict = "deny"

[[file]]
path = "/tmp/st3/reload-data/allowed"
access = ["read"]
"#;

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

fn reload(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    let dir = p("reload-policies");
    fs::create_dir_all(&dir)?;
    let allowed = touch("reload-data/allowed")?;
    let denied = touch("reload-data/denied")?;
    let policy = dir.join("reload.toml");
    fs::write(&policy, RELOAD_A)?;
    let cg = cgroup("systrace-reload")?;
    let mut agent = Agent::start_args(agent_bin, &["--policy-dir".as_ref(), dir.as_os_str()])?;
    let mut workload = op::start_loop(&cg, &allowed, &denied)?;
    let wait_generation = |agent: &mut Agent, generation: u64| -> Result<Value> {
        agent.wait_for(Duration::from_secs(30), |v| v["type"] == "status" && v["generation"] == generation)
    };

    let started = Instant::now();
    let reloads = 200;
    let mut generation = 0;
    let result = (|| -> Result<()> {
        for i in 0..reloads {
            write_atomically(&policy, if i % 2 == 0 { RELOAD_B } else { RELOAD_A })?;
            generation += 1;
            let status = wait_generation(&mut agent, generation)?;
            ensure!(status["state"] == "reloaded", "reload {generation}: {status}");
            agent.forget();
        }
        Ok(())
    })();
    let elapsed = started.elapsed();
    r.case("reload_200_times_under_load", || {
        result?;
        println!("reload: {reloads} reloads in {elapsed:.1?} ({:.1?} each)", elapsed / reloads);
        Ok(())
    });

    r.case("malformed_policy_mid_run_changes_nothing", || {
        write_atomically(&policy, "cgroup = \"systrace-reload\"\nmode = \"enforce\"\ndefault = \"deny\"\n[[file]]\npath = \"/x\"\naccess = [\"bogus\"]\n")?;
        generation += 1;
        let status = wait_generation(&mut agent, generation)?;
        ensure!(status["state"] == "reload-failed", "malformed policy: {status}");
        let errors = status["errors"].to_string();
        ensure!(errors.contains("reload.toml:6:"), "error does not name file and line: {errors}");
        // Still enforced: the old policy.
        expect(&cg, "open", &[&allowed, Path::new("r")], 0)?;
        expect(&cg, "open", &[&denied, Path::new("r")], EACCES)?;
        Ok(())
    });

    r.case("sighup_reloads", || {
        write_atomically(&policy, RELOAD_A)?;
        generation += 1;
        ensure!(wait_generation(&mut agent, generation)?["state"] == "reloaded");
        agent.signal(libc::SIGHUP);
        generation += 1;
        ensure!(wait_generation(&mut agent, generation)?["state"] == "reloaded");
        Ok(())
    });

    // Closing the workload's stdin ends its loop; it prints its tally.
    drop(workload.stdin.take());
    let out = workload.wait_with_output()?;
    r.case("reload_zero_wrong_verdicts", || {
        let tally: op::Outcome = serde_json::from_slice(&out.stdout).context("workload tally")?;
        println!("reload: {} rounds of one allowed and one denied open, {} wrong verdicts", tally.rounds, tally.wrong);
        ensure!(tally.rounds >= reloads as u64, "only {} rounds ran during {reloads} reloads", tally.rounds);
        ensure!(tally.wrong == 0, "{} wrong verdicts", tally.wrong);
        Ok(())
    });
    let _ = agent.stop();
    Ok(())
}

/// A policy with 100,000 file rules compiles and loads; prints how long it takes.
fn scale(agent_bin: &Path) -> Result<()> {
    const RULES: usize = 100_000;
    let dir = p("scale");
    let started = Instant::now();
    let mut text = String::with_capacity(RULES * 60);
    text.push_str("name = \"scale\"\ncgroup = \"systrace-scale\"\nmode = \"enforce\"\ndefault = \"deny\"\n");
    for d in 0..RULES / 1000 {
        let sub = dir.join(format!("d{d:03}"));
        fs::create_dir_all(&sub)?;
        for f in 0..1000 {
            let path = sub.join(format!("f{f:03}"));
            fs::File::create(&path)?;
            text.push_str(&format!("[[file]]\npath = \"{}\"\naccess = [\"read\"]\n", path.display()));
        }
    }
    let policy = p("scale.toml");
    fs::write(&policy, &text)?;
    println!("scale: made {RULES} files and the policy in {:.1?}", started.elapsed());
    let cg = cgroup("systrace-scale")?;
    let started = Instant::now();
    let mut agent = Agent::start(agent_bin, &[&policy])?;
    let wall = started.elapsed();
    let status = agent.wait_for(Duration::from_secs(1), |v| v["state"] == "enforcing")?;
    let anchors = status["policies"][0]["path_nodes"].as_u64().unwrap_or(0);
    println!(
        "scale: {RULES} rules: agent start to enforcing {wall:.1?} (parse, compile and map load: {} ms), {anchors} path nodes in the map",
        status["load_ms"]
    );
    ensure!(anchors > RULES as u64, "{anchors} path nodes for {RULES} rules");
    expect(&cg, "open", &[&dir.join("d042/f042"), Path::new("r")], 0)?;
    expect(&cg, "open", &[&dir.join("d042/f042"), Path::new("w")], EACCES)?;
    let (code, _) = agent.stop()?;
    ensure!(code == 0, "exit code {code}");
    Ok(())
}

const NET_POLICY: &str = r#"
name = "net"
cgroup = "systrace-net"
mode = "enforce"
default = "deny"

[[net]]
operations = ["connect"]
protocol = "tcp"
address = "127.0.0.1"
ports = 8080

[[net]]
operations = ["connect"]
protocol = "udp"
address = "127.0.0.0/8"
ports = "5000-5999"

# More specific than the /8 above: this one port is denied.
[[net]]
operations = ["connect"]
protocol = "udp"
address = "127.0.0.9"
ports = 5009
verdict = "deny"

[[net]]
operations = ["bind"]
protocol = "tcp"
address = "127.0.0.1"
ports = "9000-9099"

[[net]]
operations = ["connect"]
protocol = "tcp"
address = "::1"
ports = 8443
"#;

/// Network rules: bind and connect by protocol, address (CIDR) and port range,
/// IPv6, and IPv4-mapped IPv6 addresses matched as IPv4.
fn network(agent_bin: &Path, r: &mut Runner) -> Result<()> {
    let cg = cgroup("systrace-net")?;
    let policy = p("net.toml");
    fs::write(&policy, NET_POLICY)?;
    // Listeners outside the cgroup, so allowed connects complete.
    let v4 = std::net::TcpListener::bind("127.0.0.1:8080")?;
    let v6 = std::net::TcpListener::bind("[::1]:8443")?;
    let mut agent = Agent::start(agent_bin, &[&policy])?;
    let net = |verb: &str, addr: &str, port: u16, proto: &str| -> Result<op::Outcome> {
        let port = port.to_string();
        op::run_args(Some(&cg), &[verb.as_ref(), addr.as_ref(), port.as_str().as_ref(), proto.as_ref()])
    };
    let expect_net = |verb: &str, addr: &str, port: u16, proto: &str, errno: i32| -> Result<op::Outcome> {
        let out = net(verb, addr, port, proto)?;
        ensure!(out.errno == errno, "{verb} {addr} port {port} {proto}: errno {} (expected {errno})", out.errno);
        Ok(out)
    };
    r.case("net_connect_by_address_and_port", || {
        expect_net("connect", "127.0.0.1", 8080, "tcp", 0)?;
        let out = expect_net("connect", "127.0.0.1", 8081, "tcp", EPERM)?;
        expect_net("connect", "127.0.0.2", 8080, "tcp", EPERM)?;
        let pid = out.pid;
        let ev = agent.wait_for(Duration::from_secs(10), |v| v["type"] == "event" && v["pid"] == pid)?;
        for (k, want) in [("hook", "socket_connect"), ("address", "127.0.0.1"), ("protocol", "tcp"), ("family", "inet")]
        {
            ensure!(ev[k] == want, "event {k} = {} (expected {want}): {ev}", ev[k]);
        }
        ensure!(ev["port"] == 8081, "event port {}", ev["port"]);
        Ok(())
    });
    r.case("net_udp_cidr_range_and_specific_deny", || {
        expect_net("connect", "127.0.0.5", 5555, "udp", 0)?;
        expect_net("connect", "127.0.0.5", 6000, "udp", EPERM)?;
        expect_net("connect", "127.0.0.9", 5009, "udp", EPERM)?;
        expect_net("connect", "127.0.0.9", 5010, "udp", 0)?;
        // The udp rule does not open tcp.
        expect_net("connect", "127.0.0.5", 5555, "tcp", EPERM)?;
        Ok(())
    });
    r.case("net_bind_by_port_range", || {
        expect_net("bind", "127.0.0.1", 9050, "tcp", 0)?;
        expect_net("bind", "127.0.0.1", 9200, "tcp", EPERM)?;
        Ok(())
    });
    r.case("net_ipv6_and_ipv4_mapped", || {
        expect_net("connect", "::1", 8443, "tcp", 0)?;
        expect_net("connect", "::1", 8444, "tcp", EPERM)?;
        // An IPv4-mapped IPv6 address is matched as the IPv4 address it carries.
        expect_net("connect", "::ffff:127.0.0.1", 8080, "tcp", 0)?;
        let out = expect_net("connect", "::ffff:127.0.0.1", 8081, "tcp", EPERM)?;
        let pid = out.pid;
        let ev = agent.wait_for(Duration::from_secs(10), |v| v["type"] == "event" && v["pid"] == pid)?;
        ensure!(ev["address"] == "127.0.0.1" && ev["family"] == "inet", "mapped address in event: {ev}");
        Ok(())
    });
    r.case("net_unconfined_untouched", || {
        let out = op::run_args(None, &["connect".as_ref(), "127.0.0.1".as_ref(), "8081".as_ref(), "tcp".as_ref()])?;
        ensure!(out.errno == libc::ECONNREFUSED, "unconfined connect to a closed port: errno {}", out.errno);
        Ok(())
    });
    drop((v4, v6));
    let (code, _) = agent.stop()?;
    ensure!(code == 0, "net agent exit code {code}");
    Ok(())
}

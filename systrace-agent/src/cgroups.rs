//! Finding the cgroups that exist now for policy targets. Cgroups made later are
//! bound by the kernel itself as they appear (see the eBPF crate's `cgroups`);
//! this is for the ones already there when policies load.

use std::path::{Path, PathBuf};

use crate::policy::Target;

/// Levels of the cgroup tree searched for units. systemd nests user units
/// about six deep (user.slice/user-1000.slice/user@1000.service/app.slice/...).
const MAX_DEPTH: usize = 16;

/// The mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo.
/// Where `exec` and `learn` make a command's cgroup: `<root>/systrace.exec/<agent pid>`.
pub const SESSIONS: &str = "systrace.exec";

/// The cgroup of the `exec` or `learn` agent `pid`, relative to the cgroup2
/// mount with a leading '/', as a policy target names it.
pub fn session_cgroup(pid: &str) -> String {
    format!("/{SESSIONS}/{pid}")
}

/// Kills every process in the cgroup `dir` (`cgroup.kill`) and removes it,
/// waiting up to two seconds for the processes to go. False if it is still there.
pub fn kill_and_remove(dir: &Path) -> bool {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..200 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

pub fn cgroup2_root() -> PathBuf {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let mount_point = left.split(' ').nth(4)?;
                (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
            })
        })
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// Whether the cgroup at `relative` (components below the root) is what
/// `target` names.
pub fn matches(target: &Target, relative: &[String]) -> bool {
    match target {
        Target::Cgroup(path) => {
            let joined = format!("/{}", relative.join("/"));
            joined == *path
        }
        Target::Unit { name, user } => {
            let Some((leaf, above)) = relative.split_last() else {
                return false;
            };
            if leaf != name {
                return false;
            }
            // systemd puts units in slices (and user managers' trees); a unit's
            // name anywhere else is a directory some service made inside itself.
            // As the kernel side checks it: from the unit up to a user
            // manager (or the root), slices only, named in fewer than 64 bytes.
            for c in above.iter().rev() {
                if c.starts_with("user@") {
                    break;
                }
                if !c.ends_with(".slice") || c.len() >= 64 {
                    return false;
                }
            }
            let manager = above.iter().find(|c| c.starts_with("user@"));
            match (user, manager) {
                (None, None) => true,
                (None, Some(_)) => false,
                (Some(_), None) => false,
                (Some(None), Some(_)) => true,
                (Some(Some(uid)), Some(m)) => *m == format!("user@{uid}.service"),
            }
        }
    }
}

/// Every cgroup below `root` (as (id, components)) that one of `targets`
/// names, with the index of that target. A cgroup a path target names is not
/// also given to a unit target.
pub fn find(root: &Path, targets: &[Target]) -> Vec<(usize, u64, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let mut stack: Vec<(PathBuf, Vec<String>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, relative)) = stack.pop() {
        if !relative.is_empty() {
            let by_path = targets.iter().position(|t| matches!(t, Target::Cgroup(_)) && matches(t, &relative));
            let hit = by_path
                .or_else(|| targets.iter().position(|t| matches!(t, Target::Unit { .. }) && matches(t, &relative)));
            if let Some(i) = hit {
                // On cgroup2 the directory's inode number is the cgroup id.
                if let Ok(meta) = std::fs::metadata(&dir) {
                    found.push((i, meta.ino(), format!("/{}", relative.join("/"))));
                }
            }
        }
        if relative.len() >= MAX_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let mut child = relative.clone();
                child.push(entry.file_name().to_string_lossy().into_owned());
                stack.push((entry.path(), child));
            }
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(p: &str) -> Vec<String> {
        p.split('/').filter(|c| !c.is_empty()).map(str::to_string).collect()
    }

    #[test]
    fn units_match_wherever_their_slice_puts_them() {
        let system = Target::Unit { name: "web.service".into(), user: None };
        assert!(matches(&system, &parts("system.slice/web.service")));
        assert!(matches(&system, &parts("custom.slice/custom-web.slice/web.service")));
        assert!(!matches(&system, &parts("system.slice/web.service/child")));
        assert!(!matches(&system, &parts("system.slice/other.service/web.service")), "a decoy inside a service");
        assert!(!matches(&system, &parts("system.slice/other.service/x.slice/web.service")));
        assert!(!matches(&system, &parts("user.slice/user-1000.slice/user@1000.service/app.slice/web.service")));
        let any_user = Target::Unit { name: "web.service".into(), user: Some(None) };
        assert!(matches(&any_user, &parts("user.slice/user-1000.slice/user@1000.service/app.slice/web.service")));
        assert!(!matches(&any_user, &parts("system.slice/web.service")));
        let one_user = Target::Unit { name: "web.service".into(), user: Some(Some(1000)) };
        assert!(matches(&one_user, &parts("user.slice/user-1000.slice/user@1000.service/app.slice/web.service")));
        assert!(!matches(&one_user, &parts("user.slice/user-1001.slice/user@1001.service/app.slice/web.service")));
        let path = Target::Cgroup("/a/b".into());
        assert!(matches(&path, &parts("a/b")));
        assert!(!matches(&path, &parts("a/b/c")));
    }

    #[test]
    fn finds_existing_cgroups_in_a_tree() {
        let root = std::env::temp_dir().join(format!("systrace-cgroups-{}", std::process::id()));
        for d in ["system.slice/web.service", "other.slice/web.service/inner", "plain/x"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let targets = vec![Target::Unit { name: "web.service".into(), user: None }, Target::Cgroup("/plain/x".into())];
        let found = find(&root, &targets);
        let paths: Vec<&str> = found.iter().map(|(_, _, p)| p.as_str()).collect();
        assert_eq!(paths.len(), 3, "{paths:?}");
        assert!(paths.contains(&"/system.slice/web.service"));
        assert!(paths.contains(&"/other.slice/web.service"));
        assert!(found.iter().any(|(i, _, p)| *i == 1 && p == "/plain/x"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}

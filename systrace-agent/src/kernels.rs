//! Which kernels the agent supports, and what it says about the one it runs on.
//!
//! The floor is 6.1: the agent needs the `userns_create` hook (new in 6.1),
//! `path_rename`'s flags argument (5.19), `bpf_loop` (5.17),
//! `bpf_get_current_task_btf` (5.11), ring buffers (5.8) and BTF-typed
//! tracepoints on `cgroup_mkdir` (5.5). Older kernels are refused in one line
//! before anything is loaded. Kernels newer than the newest one the test
//! matrix boots are run, with a one-line note: the hooks, arguments and struct
//! fields are all looked up in the running kernel's BTF, and a change the agent
//! cannot follow refuses with the name of what is missing (a hook that only
//! newer kernels have is optional only on kernels older than the version that
//! added it).

/// The oldest kernel (major, minor) the agent runs on.
pub const MINIMUM: (u32, u32) = (6, 1);

/// The kernels `cargo xtask test` boots (Debian's 6.1, 6.12, and the newest of
/// unstable and trixie-backports when this list was last updated).
pub const TESTED: &[(u32, u32)] = &[(6, 1), (6, 12), (7, 2), (7, 3)];

/// (major, minor) of a kernel release string (`7.3.4+deb13-cloud-amd64`).
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// What the agent says about `release` before loading: `Err` refuses (a
/// kernel older than [`MINIMUM`]), `Ok(Some(note))` runs with a note (a
/// kernel newer than every tested one), `Ok(None)` runs quietly.
pub fn judge(release: &str) -> Result<Option<String>, String> {
    let Some(v) = version(release) else {
        return Ok(Some(format!("cannot read the version of kernel {release:?}; trying anyway")));
    };
    if v < MINIMUM {
        return Err(format!(
            "kernel {release} is older than {}.{}, the oldest systrace runs on (it needs the userns_create hook of 6.1, \
             bpf_loop of 5.17 and BTF-typed tracepoints)",
            MINIMUM.0, MINIMUM.1
        ));
    }
    let newest = TESTED.iter().max().copied().unwrap_or(MINIMUM);
    if v > newest {
        return Ok(Some(format!(
            "kernel {release} is newer than the newest kernel systrace was tested on ({}.{}); every hook, argument \
             and field was found in its BTF",
            newest.0, newest.1
        )));
    }
    Ok(None)
}

/// Refuses a kernel that lacks a hook it should have: one marked with the
/// version that added it (`since`) is optional only on kernels older than
/// that. On a kernel at or past that version, a missing hook means it was
/// renamed or removed, and the door it guards (`file_setattr(2)` for
/// `inode_file_setattr`) would be open: refuse, naming it.
pub fn check_missing_hooks(release: &str, missing: &[(&str, Option<&str>)]) -> Result<(), String> {
    let Some(running) = version(release) else {
        return Ok(());
    };
    for (hook, since) in missing {
        let added = since.and_then(version);
        if added.is_none_or(|added| running >= added) {
            return Err(format!(
                "kernel {release} has no LSM hook {hook} in its BTF (bpf_lsm_{hook}), which kernels since {} have; \
                 the operations it decides would go unchecked",
                since.unwrap_or("6.1")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_older_kernels_notes_newer_ones_and_runs_tested_ones_quietly() {
        assert_eq!(version("7.3.4+deb13-cloud-amd64"), Some((7, 3)));
        assert_eq!(version("6.1.0-57-cloud-amd64"), Some((6, 1)));
        assert!(judge("5.15.0-91-generic").unwrap_err().contains("older than 6.1"));
        assert_eq!(judge("6.1.0-57-cloud-amd64"), Ok(None));
        assert_eq!(judge("6.18.3"), Ok(None));
        assert!(judge("7.4.1").unwrap().unwrap().contains("newer than the newest"));
    }

    #[test]
    fn a_hook_is_optional_only_before_the_version_that_added_it() {
        let missing = [("inode_file_setattr", Some("6.17"))];
        assert_eq!(check_missing_hooks("6.12.117+deb13-cloud-amd64", &missing), Ok(()));
        assert!(check_missing_hooks("6.17.1", &missing).unwrap_err().contains("inode_file_setattr"));
        assert!(check_missing_hooks("7.3.4+deb13-cloud-amd64", &missing).is_err());
        assert!(check_missing_hooks("6.1.0-57-cloud-amd64", &[("file_open", None)]).is_err());
    }
}

//! Which kernels the agent supports, and what it says about the one it runs on.
//!
//! The floor is 6.1: the agent needs the `userns_create` hook (new in 6.1),
//! `path_rename`'s flags argument (5.19), `bpf_loop` (5.17),
//! `bpf_get_current_task_btf` (5.11), ring buffers (5.8) and BTF-typed
//! tracepoints on `cgroup_mkdir` (5.5). Older kernels are refused in one line
//! before anything is loaded. Kernels newer than the newest one the test
//! matrix boots are run, with a one-line note: the hooks, arguments and struct
//! fields are all looked up in the running kernel's BTF, and a change the agent
//! cannot follow refuses with the name of what is missing.

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
             and field is read from its BTF, and anything missing would have refused the start",
            newest.0, newest.1
        )));
    }
    Ok(None)
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
}

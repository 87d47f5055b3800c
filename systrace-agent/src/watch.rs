//! Change notification for policy files (inotify), so edits take effect without a
//! signal. Editors save in several steps; the caller debounces.
//!
//! Each policy directory is watched for `.toml` files coming, going and being
//! written, and its parent for the directory itself being renamed, removed or
//! made anew (the watch on a renamed directory follows it, so the caller makes a
//! new watcher after every reload).
//!
//! [`DirWatcher::names`] watches for files coming to bear given names (the
//! paths deny rules name), so that the rules can follow the new files too.

use std::{
    ffi::OsString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

use anyhow::{bail, Result};

/// The names in a directory a watch is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Names {
    /// Policy files: `*.toml`.
    Policies,
    Exact(OsString),
    /// Names with this extension (see [`systrace_common::extension`]).
    Extension(Vec<u8>),
}

impl Names {
    fn matches(&self, name: &[u8]) -> bool {
        match self {
            Names::Policies => name.ends_with(b".toml"),
            Names::Exact(only) => name == only.as_bytes(),
            Names::Extension(ext) => systrace_common::extension(name) == Some(ext.as_slice()),
        }
    }
}

/// An inotify instance watching directories.
pub struct DirWatcher {
    fd: OwnedFd,
    /// Watch descriptor -> the names that matter there.
    watches: Vec<(i32, Names)>,
}

impl DirWatcher {
    pub fn new<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            bail!("inotify_init1: {}", std::io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut watcher = DirWatcher { fd, watches: Vec::new() };
        let files = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_CREATE | libc::IN_DELETE;
        for dir in dirs {
            // A directory that is gone is noticed through its parent.
            let _ = watcher.add(dir, files | libc::IN_MOVE_SELF | libc::IN_DELETE_SELF, Names::Policies);
            if let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) {
                let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
                let _ = watcher.add(parent, files, Names::Exact(name.to_os_string()));
            }
        }
        if watcher.watches.is_empty() {
            bail!("none of the policy directories can be watched");
        }
        Ok(watcher)
    }

    /// Watches for a file coming to bear each (directory, names): created,
    /// linked or renamed there. Directories that do not exist are skipped.
    pub fn names<'a>(entries: impl IntoIterator<Item = (&'a Path, &'a Names)>) -> Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            bail!("inotify_init1: {}", std::io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut watcher = DirWatcher { fd, watches: Vec::new() };
        for (dir, names) in entries {
            let _ = watcher.add(dir, libc::IN_CREATE | libc::IN_MOVED_TO, names.clone());
        }
        Ok(watcher)
    }

    fn add(&mut self, dir: &Path, mask: u32, only: Names) -> Result<()> {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
        // SAFETY: c is a valid C string, fd a valid inotify descriptor.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            bail!("watching {}: {}", dir.display(), std::io::Error::last_os_error());
        }
        self.watches.push((wd, only));
        Ok(())
    }

    /// Reads every pending notification; true if any is about policies.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut relevant = false;
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return relevant;
            }
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // SAFETY: the kernel wrote a whole event header at `at`.
                let event: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let name = &buf[at + header..at + header + event.len as usize];
                let name = name.split(|&b| b == 0).next().unwrap_or_default();
                let self_event = event.mask & (libc::IN_MOVE_SELF | libc::IN_DELETE_SELF) != 0;
                relevant |= self_event
                    // One directory may be watched for several names (a watch
                    // descriptor is per directory).
                    || self.watches.iter().filter(|(wd, _)| *wd == event.wd).any(|(_, only)| only.matches(name));
                at += header + event.len as usize;
            }
        }
    }
}

impl AsRawFd for DirWatcher {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

//! Change notification for policy files (inotify), so edits take effect without a
//! signal. Editors save in several steps; the caller debounces.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use anyhow::{bail, Result};

/// An inotify instance watching directories for created, written, moved and
/// deleted entries.
pub struct DirWatcher {
    fd: OwnedFd,
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
        let mask = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_CREATE | libc::IN_DELETE;
        for dir in dirs {
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
            // SAFETY: c is a valid C string, fd a valid inotify descriptor.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
                bail!("watching {}: {}", dir.display(), std::io::Error::last_os_error());
            }
        }
        Ok(DirWatcher { fd })
    }

    /// Reads every pending notification; true if any named a `.toml` file.
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
                relevant |= name.ends_with(b".toml");
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

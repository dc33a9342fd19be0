//! Second confinement layer: the threads that serve the share see it as their `/`.
//!
//! The passthrough file system already resolves every guest name as one component relative
//! to an `O_PATH` fd, with `O_NOFOLLOW` (see `confined.rs` for the first layer). As defense in
//! depth, each serving thread unshares its file system context (`CLONE_FS`: root, cwd, umask
//! become per thread) and `chroot`s into the share through the already-open root fd. After
//! that, `..` walked from the share root stays at the share root and an absolute symlink,
//! were it ever followed, resolves inside the share. Only the serving thread changes; the rest
//! of the process keeps its root, cwd and umask.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use super::FsError;

/// Identity of a share root: (device, inode) of its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RootId {
    dev: u64,
    ino: u64,
}

impl RootId {
    /// Identity of the directory `root` refers to.
    pub(crate) fn of(root: &File) -> io::Result<Self> {
        let md = root.metadata()?;
        Ok(RootId {
            dev: md.dev(),
            ino: md.ino(),
        })
    }

    /// Whether `st_dev`/`st_ino` describe this root.
    pub(crate) fn matches(&self, dev: u64, ino: u64) -> bool {
        self.dev == dev && self.ino == ino
    }
}

thread_local! {
    // The share this thread is chrooted into, if any. A thread confined to one share must
    // never serve another: that share's fds would lie outside its root.
    static CONFINED_TO: Cell<Option<RootId>> = const { Cell::new(None) };
}

/// Gives the calling thread its own file system context with umask 0.
///
/// The passthrough file system applies the guest's umask itself, so the host umask must be 0;
/// unsharing first keeps that change away from the rest of the process.
pub(crate) fn unshare_fs_context() -> io::Result<()> {
    // SAFETY: plain syscalls on the calling thread, no memory handed to the kernel.
    unsafe {
        if libc::unshare(libc::CLONE_FS) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::umask(0);
    }
    Ok(())
}

/// Confines the calling thread to `root` (idempotent per thread).
///
/// Fails closed: on error the caller must not serve requests from this thread.
pub(crate) fn confine_current_thread(root: &File, id: RootId) -> Result<(), FsError> {
    match CONFINED_TO.with(Cell::get) {
        Some(current) if current == id => return Ok(()),
        Some(_) => return Err(FsError::ThreadConfinedElsewhere),
        None => {}
    }
    unshare_fs_context().map_err(FsError::ThreadSandbox)?;
    // SAFETY: `root` is an open directory fd; "." is a valid NUL-terminated string.
    unsafe {
        if libc::fchdir(root.as_raw_fd()) != 0 {
            return Err(FsError::ThreadSandbox(io::Error::last_os_error()));
        }
        if libc::chroot(c".".as_ptr()) != 0 {
            return Err(FsError::ThreadSandbox(io::Error::last_os_error()));
        }
    }
    CONFINED_TO.with(|c| c.set(Some(id)));
    tracing::debug!("virtio-fs serving thread confined to the share");
    Ok(())
}

//! The CLI sandbox process's own mount namespace, and the root it is
//! confined to once its VM is up (the jailer's idea).
//!
//! Three steps, each at the one moment it can happen:
//! 1. [`enter`], first thing in `husk sandbox-daemon` while the process has
//!    one thread (`CLONE_NEWNS` implies `CLONE_FS`): a new mount namespace
//!    whose whole tree is made a slave, so host mounts (the container's
//!    rootfs, its volumes) still reach in but nothing mounted inside leaks
//!    out. The share's binds then live only here, and the kernel drops them
//!    when the last process in the namespace (this one, and QEMU, its child)
//!    is gone: a killed sandbox process leaves no mount on the host.
//! 2. [`pin`], when the sandbox directory is made and before any device
//!    backend opens it: the directory is bound onto itself, so it is a mount
//!    of its own. The virtio-fs server holds the share by file descriptor;
//!    a mount (unlike the host's `/run` it would otherwise sit on) can be
//!    moved into the new root below with those descriptors still connected.
//! 3. [`confine`], once the container exists: a small tmpfs becomes the
//!    root, holding only the sandbox directory (moved, at the same absolute
//!    path, so every path the host's CLI uses to reach its sockets stays
//!    valid) and a `/proc` showing only processes; the old root is detached.
//!    QEMU's root moves with ours (`pivot_root` moves every process of the
//!    namespace rooted at the old root); past boot it opens nothing by path.
//!
//! The shim does none of this (docs/security.md says why).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where this process stands ([`enter`], [`confine`]).
static STATE: AtomicU8 = AtomicU8::new(HOST);
const HOST: u8 = 0;
const OWN: u8 = 1;
const CONFINED: u8 = 2;

/// `move_mount(2)`'s flag: the source is the descriptor itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Why the namespace could not be made or the root not changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// More than one thread: `unshare(CLONE_NEWNS)` would fail.
    #[error("the sandbox process has {0} threads before its own mount namespace")]
    Threads(usize),
    /// A step failed.
    #[error("mount namespace: {step}: {source}")]
    Step {
        /// What was being done.
        step: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn step(step: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let step = step.into();
    move |e| Error::Step {
        step,
        source: e.into(),
    }
}

fn io_step(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let step = step.into();
    move |source| Error::Step { step, source }
}

/// Moves the calling (only) thread's process into a mount namespace of its
/// own whose mounts are slaves of the host's.
pub fn enter() -> Result<(), Error> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads > 1 {
        return Err(Error::Threads(threads));
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(step("unshare"))?;
    // The host's `/run` is usually shared: without this, every bind made
    // here would appear on the host too.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(step("make / a slave"))?;
    // A working directory elsewhere than the root would stay in the old
    // tree after `confine` (pivot_root moves only those at the root), for
    // this process and QEMU, which inherits it.
    nix::unistd::chdir("/").map_err(step("chdir /"))?;
    STATE.store(OWN, Ordering::SeqCst);
    Ok(())
}

/// Whether this process runs in its own mount namespace ([`enter`]).
pub fn is_own() -> bool {
    STATE.load(Ordering::SeqCst) != HOST
}

/// Whether this process's root is its sandbox directory's ([`confine`]).
pub fn is_confined() -> bool {
    STATE.load(Ordering::SeqCst) == CONFINED
}

/// Binds `dir` onto itself (private) if this process has its own mount
/// namespace; nothing otherwise.
pub fn pin(dir: &Path) -> Result<(), Error> {
    if !is_own() {
        return Ok(());
    }
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(step(format!("bind {} onto itself", dir.display())))?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step(format!("make {} private", dir.display())))
}

/// Undoes [`pin`] before the directory is removed while the process still
/// sees the host's tree (a boot that failed); once confined the directory
/// is the process's only way to its files and stays (emptied) until
/// `delete` removes it from the host's side.
pub fn unpin(dir: &Path) {
    if STATE.load(Ordering::SeqCst) == OWN && is_mount_point(dir) {
        if let Err(e) = umount2(dir, MntFlags::MNT_DETACH) {
            tracing::warn!(dir = %dir.display(), "unbinding the sandbox directory: {e}");
        }
    }
}

/// Whether `dir` is the root of a mount in this namespace.
fn is_mount_point(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| super::share::unescape(point) == dir)
}

/// Makes a tmpfs holding only the (pinned) sandbox directory `dir`, at its
/// own path, and a `/proc`, this namespace's root, and detaches the old
/// root. Nothing if this process has no namespace of its own.
pub fn confine(dir: &Path) -> Result<(), Error> {
    if !is_own() {
        return Ok(());
    }
    let dir_fd = File::open(dir).map_err(io_step(format!("open {}", dir.display())))?;
    // The new root goes over the sandbox root (the directory's parent):
    // a path outside the directory, which exists, and which after this
    // hides the other sandboxes too. The directory itself is reached by
    // its descriptor, as its path is under the new mount.
    let base = match dir.parent() {
        Some(p) if p != Path::new("/") && dir.is_absolute() => p.to_owned(),
        _ => {
            return Err(Error::Step {
                step: format!("{} is not under a sandbox root", dir.display()),
                source: std::io::ErrorKind::InvalidInput.into(),
            })
        }
    };
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        &base,
        Some("tmpfs"),
        flags,
        Some("mode=0755,size=64k,nr_inodes=64"),
    )
    .map_err(step(format!("tmpfs on {}", base.display())))?;
    let inside = |path: &Path| -> PathBuf { base.join(path.strip_prefix("/").unwrap_or(path)) };
    let target = inside(dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&target)
        .map_err(io_step(format!("mkdir {}", target.display())))?;
    move_mount(&dir_fd, &target)?;
    let proc_dir = inside(Path::new("/proc"));
    std::fs::DirBuilder::new()
        .mode(0o555)
        .create(&proc_dir)
        .map_err(io_step("mkdir /proc"))?;
    mount_proc(&proc_dir)?;
    nix::unistd::chdir(&base).map_err(step("chdir to the new root"))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one,
    // where the lazy unmount below takes it (and everything under it) away.
    nix::unistd::pivot_root(".", ".").map_err(step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the old root"))?;
    nix::unistd::chdir("/").map_err(step("chdir /"))?;
    // Nothing is written to the root itself from now on.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | flags,
        None::<&str>,
    )
    .map_err(step("remount / read-only"))?;
    STATE.store(CONFINED, Ordering::SeqCst);
    tracing::info!(dir = %dir.display(), "sandbox process confined to its sandbox directory");
    Ok(())
}

/// Moves the mount whose root `from` is open on to `to`.
fn move_mount(from: &File, to: &Path) -> Result<(), Error> {
    let fail = io_step(format!("move the sandbox directory to {}", to.display()));
    let to = CString::new(to.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
        .map_err(io_step("path with NUL"))?;
    // SAFETY: move_mount(2) with an open fd, an empty and a NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A fresh procfs showing processes only (`subset=pid`, Linux 5.8+: no
/// `/proc/sys`, `/proc/kcore`, ...), or all of it where that is unknown.
fn mount_proc(at: &Path) -> Result<(), Error> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let subset = mount(Some("proc"), at, Some("proc"), flags, Some("subset=pid"));
    if subset.is_ok() {
        return Ok(());
    }
    mount(Some("proc"), at, Some("proc"), flags, None::<&str>).map_err(step("mount /proc"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// In a forked child (none of this can be undone, and `enter` needs a
    /// single thread): enters a namespace, pins `dir`, binds `source` under
    /// its share, opens the share as virtio-fs would, confines itself; then
    /// reports its mount points, what it can reach, and what it reads
    /// through the descriptor opened before the pivot.
    fn confined_view(dir: &Path, source: &Path) -> String {
        let (read, write) = nix::unistd::pipe().unwrap();
        let (mut read, write) = (File::from(read), File::from(write));
        // SAFETY: the child makes syscalls, writes to the pipe and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut write = write;
            let report = (|| -> Result<String, String> {
                enter().map_err(|e| e.to_string())?;
                pin(dir).map_err(|e| e.to_string())?;
                let target = dir.join("shared/c/rootfs");
                std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
                mount(
                    Some(source),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| e.to_string())?;
                let share = File::open(dir.join("shared")).map_err(|e| e.to_string())?;
                confine(dir).map_err(|e| e.to_string())?;
                let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
                    .collect();
                points.sort();
                let by_fd = nix::fcntl::openat(
                    Some(share.as_raw_fd()),
                    "c/rootfs/file",
                    nix::fcntl::OFlag::O_RDONLY,
                    nix::sys::stat::Mode::empty(),
                )
                .map(|fd| {
                    // SAFETY: a fresh fd from openat, owned here.
                    let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                    let mut s = String::new();
                    let _ = f.read_to_string(&mut s);
                    s
                })
                .unwrap_or_else(|e| format!("error {e}"));
                Ok(format!(
                    "points={}\npasswd={}\nsource={}\nby_path={}\nby_fd={}\n",
                    points.join(","),
                    Path::new("/etc/passwd").exists(),
                    source.exists(),
                    std::fs::read_to_string(target.join("file")).unwrap_or_default(),
                    by_fd
                ))
            })();
            let out = report.unwrap_or_else(|e| format!("error: {e}"));
            let _ = write.write_all(out.as_bytes());
            // SAFETY: ends the child without the parent's atexit handlers.
            unsafe { libc::_exit(0) };
        }
        drop(write);
        let mut out = String::new();
        read.read_to_string(&mut out).unwrap();
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        out
    }

    #[test]
    fn a_confined_process_sees_its_directory_and_binds_and_the_host_sees_none() {
        if !caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_ADMIN,
        )
        .unwrap_or(false)
        {
            eprintln!("skipped: needs CAP_SYS_ADMIN (run as root)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("volume");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("file"), "host file").unwrap();
        let dir = tmp.path().join("sandboxes").join("s1");
        std::fs::create_dir_all(dir.join("shared")).unwrap();

        let out = confined_view(&dir, &source);
        let d = dir.display();
        assert_eq!(
            out,
            format!(
                "points=/,/proc,{d},{d}/shared/c/rootfs\npasswd=false\nsource=false\n\
                 by_path=host file\nby_fd=host file\n"
            )
        );
        // Nothing of it on the host; the child's mounts died with it.
        let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!host.contains(tmp.path().to_str().unwrap()), "{host}");
        std::fs::remove_dir(dir.join("shared/c/rootfs")).unwrap();
        assert_eq!(
            std::fs::read_to_string(source.join("file")).unwrap(),
            "host file"
        );
    }
}

//! Moves the agent's root off the initramfs onto a tmpfs, as `switch_root`
//! does, so that containers can `pivot_root`.
//!
//! The kernel unpacks the initrd into `rootfs`, the root of the mount tree,
//! which has no parent mount and so can never be pivoted away from. A
//! container runtime on such a root must fall back to `MS_MOVE` + `chroot`,
//! which leaves the agent's whole tree in the container's mount namespace:
//! a workload with CAP_SYS_CHROOT escapes the chroot and reaches every
//! other container's files. With a tmpfs mounted over the old root (and the
//! initramfs emptied), the root is an ordinary mount, pivot_root works and
//! the container's mount namespace holds only its own mounts.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};

use crate::error::{AgentError, Result};

/// Where the new root is built before it is moved onto `/`.
const NEW_ROOT: &str = "/.husk-root";
/// The agent's own program: not copied (it is running; the kernel keeps
/// its pages while it does).
const SELF: &str = "init";

/// ramfs, which nix does not name (linux/magic.h).
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

/// Set once the agent's root is the tmpfs.
static LEFT: AtomicBool = AtomicBool::new(false);

/// Whether `/` looks like the initramfs the kernel unpacked (a ramfs or
/// tmpfs). Asked by PID 1 at boot, before it moves anywhere.
pub fn on_initramfs() -> bool {
    statfs("/").is_ok_and(|fs| {
        let kind = fs.filesystem_type();
        kind == RAMFS_MAGIC || kind == TMPFS_MAGIC
    })
}

/// Whether [`leave_initramfs`] moved this process's root.
pub fn left() -> bool {
    LEFT.load(Ordering::Relaxed)
}

/// Copies the initramfs (but the agent's program) to a new tmpfs, empties
/// the initramfs, moves the tmpfs onto `/` and enters it. Runs first
/// thing as PID 1, before any other mount: mounts already made are moved
/// along.
pub fn leave_initramfs() -> Result<()> {
    let new_root = Path::new(NEW_ROOT);
    fs::DirBuilder::new()
        .mode(0o755)
        .create(new_root)
        .map_err(|e| AgentError::io(format!("creating {NEW_ROOT}"), e))?;
    mount(
        Some("rootfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| AgentError::errno(format!("mounting a tmpfs on {NEW_ROOT}"), e))?;
    let root_dev = fs::metadata("/")
        .map_err(|e| AgentError::io("reading /", e))?
        .dev();
    for entry in fs::read_dir("/").map_err(|e| AgentError::io("reading /", e))? {
        let entry = entry.map_err(|e| AgentError::io("reading /", e))?;
        let name = entry.file_name();
        if name == OsStr::new(&NEW_ROOT[1..]) {
            continue;
        }
        let from = Path::new("/").join(&name);
        let to = new_root.join(&name);
        let meta = fs::symlink_metadata(&from)
            .map_err(|e| AgentError::io(format!("reading {}", from.display()), e))?;
        if meta.is_dir() && meta.dev() != root_dev {
            // A mount point (devtmpfs, if the kernel mounted it): moved.
            fs::DirBuilder::new()
                .mode(meta.mode() & 0o7777)
                .create(&to)
                .map_err(|e| AgentError::io(format!("creating {}", to.display()), e))?;
            mount(
                Some(&from),
                &to,
                None::<&str>,
                MsFlags::MS_MOVE,
                None::<&str>,
            )
            .map_err(|e| AgentError::errno(format!("moving {}", from.display()), e))?;
            continue;
        }
        if name != OsStr::new(SELF) {
            copy_tree(&from, &to)?;
        }
        remove_tree(&from, &meta)?;
    }
    nix::unistd::chdir(new_root).map_err(|e| AgentError::errno("entering the new root", e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| AgentError::errno("moving the new root onto /", e))?;
    nix::unistd::chroot(".").map_err(|e| AgentError::errno("entering the new root", e))?;
    nix::unistd::chdir("/").map_err(|e| AgentError::errno("entering the new root", e))?;
    LEFT.store(true, Ordering::Relaxed);
    Ok(())
}

/// Copies a file, symlink or directory tree, keeping modes (the initramfs
/// has no owners but root).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(from)
        .map_err(|e| AgentError::io(format!("reading {}", from.display()), e))?;
    let io = |what: &str, path: &Path, e| AgentError::io(format!("{what} {}", path.display()), e);
    if meta.file_type().is_symlink() {
        let target = fs::read_link(from).map_err(|e| io("reading", from, e))?;
        std::os::unix::fs::symlink(target, to).map_err(|e| io("creating", to, e))
    } else if meta.is_dir() {
        fs::DirBuilder::new()
            .mode(meta.mode() & 0o7777)
            .create(to)
            .map_err(|e| io("creating", to, e))?;
        // DirBuilder's mode is filtered by the umask; the sticky /tmp is not.
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| io("setting the mode of", to, e))?;
        for entry in fs::read_dir(from).map_err(|e| io("reading", from, e))? {
            let entry = entry.map_err(|e| io("reading", from, e))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else if meta.is_file() {
        fs::copy(from, to).map_err(|e| io("copying", from, e))?;
        Ok(())
    } else {
        // Device nodes and fifos: the initramfs has none the agent needs.
        Ok(())
    }
}

/// Removes what was copied, so the initramfs gives its memory back.
fn remove_tree(path: &Path, meta: &fs::Metadata) -> Result<()> {
    let removed = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.map_err(|e| AgentError::io(format!("removing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_copied_with_its_modes_and_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = dir.path().join("from");
        fs::create_dir_all(from.join("bin")).expect("mkdir");
        fs::write(from.join("bin/busybox"), b"elf").expect("write");
        fs::set_permissions(from.join("bin/busybox"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::os::unix::fs::symlink("busybox", from.join("bin/sh")).expect("symlink");
        fs::create_dir(from.join("tmp")).expect("mkdir");
        fs::set_permissions(from.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod");
        let to = dir.path().join("to");
        copy_tree(&from, &to).expect("copied");
        assert_eq!(fs::read(to.join("bin/busybox")).expect("read"), b"elf");
        let mode = |p: &str| fs::metadata(to.join(p)).expect("meta").mode() & 0o7777;
        assert_eq!(mode("bin/busybox"), 0o755);
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(
            fs::read_link(to.join("bin/sh")).expect("link"),
            Path::new("busybox")
        );
        remove_tree(&from, &fs::metadata(&from).expect("meta")).expect("removed");
        assert!(!from.exists());
    }
}

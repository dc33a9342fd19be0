//! A container's root file system from containerd's snapshot mounts
//! (usually one overlay), mounted on `<bundle>/rootfs` for the share, and
//! unmounted when the container is deleted.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{umount2, MntFlags};

/// Most mounts containerd may stack for one root file system.
const MAX_MOUNTS: usize = 16;

/// Errors mounting a root file system.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Too many mounts.
    #[error("{0} rootfs mounts; at most {MAX_MOUNTS}")]
    TooMany(usize),
    /// The mount point could not be made.
    #[error("creating {path}: {source}")]
    MountPoint {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A mount failed.
    #[error("mounting the rootfs ({kind} {source_path}) on {target}: {message}")]
    Mount {
        /// Its type.
        kind: String,
        /// Its source.
        source_path: String,
        /// The mount point.
        target: PathBuf,
        /// Why.
        message: String,
    },
}

/// A mounted root file system (or none, when containerd gave the bundle a
/// ready one). Dropping it unmounts what it mounted.
#[derive(Debug)]
pub struct Rootfs {
    mounted: Option<PathBuf>,
}

impl Rootfs {
    /// Mounts `mounts` on `target`, in order; with no mounts, the bundle's
    /// own rootfs directory is used as it is.
    pub fn mount(target: &Path, mounts: &[Mount]) -> Result<Self, Error> {
        if mounts.is_empty() {
            return Ok(Self { mounted: None });
        }
        if mounts.len() > MAX_MOUNTS {
            return Err(Error::TooMany(mounts.len()));
        }
        std::fs::create_dir_all(target).map_err(|source| Error::MountPoint {
            path: target.to_owned(),
            source,
        })?;
        let mut rootfs = Self { mounted: None };
        for (done, m) in mounts.iter().enumerate() {
            let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
            let (kind, source) = (some(&m.type_), some(&m.source));
            containerd_shim::mount::mount_rootfs(
                kind.as_deref(),
                source.as_deref(),
                &m.options,
                target,
            )
            .map_err(|e| Error::Mount {
                kind: m.type_.clone(),
                source_path: m.source.clone(),
                target: target.to_owned(),
                message: e.to_string(),
            })?;
            if done == 0 {
                rootfs.mounted = Some(target.to_owned());
            }
        }
        Ok(rootfs)
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        if let Some(target) = self.mounted.take() {
            unmount_all(&target);
        }
    }
}

/// Unmounts everything stacked on `target` (also what a killed shim left).
pub fn unmount_all(target: &Path) {
    for _ in 0..MAX_MOUNTS {
        if umount2(target, MntFlags::MNT_DETACH).is_err() {
            return;
        }
    }
}

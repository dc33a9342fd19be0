//! Bind mounts that put host paths (the rootfs, volumes) into the share.
//!
//! Each is bound under `<sandbox>/shared/` and made `nosuid,nodev` on the
//! host side: the guest decides what its files mean, but no host process
//! should execute a set-uid file or open a device node through the share.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::oci::guest_spec::ShareBind;

/// Errors setting up the share.
#[derive(Debug, thiserror::Error)]
#[error("sharing {source_path} with the guest: {message}")]
pub struct Error {
    /// The host path.
    pub source_path: PathBuf,
    /// What failed.
    pub message: String,
}

/// The binds made so far; [`Share::unmount`] undoes them (also on drop).
#[derive(Debug, Default)]
pub struct Share {
    mounted: Vec<PathBuf>,
}

impl Share {
    /// Binds each of `binds` under `shared`. On failure, undoes the ones made.
    pub fn mount(shared: &Path, binds: &[ShareBind]) -> Result<Self, Error> {
        let mut share = Self::default();
        for bind in binds {
            share.bind(shared, bind)?;
        }
        Ok(share)
    }

    fn bind(&mut self, shared: &Path, bind: &ShareBind) -> Result<(), Error> {
        let fail = |message: String| Error {
            source_path: bind.source.clone(),
            message,
        };
        let target = shared.join(&bind.target);
        let parent = target.parent().unwrap_or(shared);
        std::fs::create_dir_all(parent).map_err(|e| fail(format!("{}: {e}", parent.display())))?;
        let made = if bind.is_dir {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        };
        made.map_err(|e| fail(format!("{}: {e}", target.display())))?;
        mount(
            Some(&bind.source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| fail(format!("bind to {}: {e}", target.display())))?;
        self.mounted.push(target.clone());
        // A bind inherits its source's flags; remounting sets ours. Locked
        // flags (a read-only source) stay, which only adds restrictions.
        let mut flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if bind.readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
            .map_err(|e| fail(format!("remount {} nosuid,nodev: {e}", target.display())))?;
        // Keep the guest's view from being changed by mount events under
        // the source, and ours from leaking back.
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| fail(format!("make {} private: {e}", target.display())))?;
        Ok(())
    }

    /// Unmounts every bind (lazily: a file still open by the device backend
    /// must not keep the mount), most recent first.
    pub fn unmount(&mut self) {
        while let Some(target) = self.mounted.pop() {
            if let Err(e) = umount2(&target, MntFlags::MNT_DETACH) {
                tracing::warn!(target = %target.display(), "unmounting share bind: {e}");
            }
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Unmounts whatever is still mounted at or under `dir` (a crashed sandbox
/// process's leftovers), deepest first.
pub fn unmount_all_under(dir: &Path) {
    let mut targets = mounts_under(dir).unwrap_or_default();
    targets.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    targets.dedup();
    for target in targets {
        let _ = umount2(&target, MntFlags::MNT_DETACH);
    }
}

/// Whether anything is mounted at or under `dir`. Removing a directory
/// with a bind under it would delete the host files behind the bind.
/// Unknown (mountinfo unreadable) counts as yes.
pub fn has_mounts_under(dir: &Path) -> bool {
    mounts_under(dir).map_or(true, |m| !m.is_empty())
}

/// The mount points at or under `dir` (`None` if mountinfo is unreadable).
pub fn mounts_under(dir: &Path) -> Option<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    Some(
        info.lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(unescape)
            .filter(|p| p.starts_with(dir))
            .collect(),
    )
}

/// mountinfo escapes space, tab, newline and backslash as octal.
pub(crate) fn unescape(field: &str) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(v) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape("/end\\"), PathBuf::from("/end\\"));
    }
}

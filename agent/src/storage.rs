//! Mounting the file systems the host asks for (virtio-fs shares, tmpfs,
//! bind mounts) and unmounting them when the sandbox goes.

use std::path::{Component, Path, PathBuf};

use husk_protocol::agent::Storage;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{AgentError, Result};

/// Mounts one storage; returns its mount point.
pub fn mount_storage(storage: &Storage) -> Result<PathBuf> {
    let target = checked_mount_point(&storage.mount_point)?;
    let (flags, data) = parse_options(&storage.options);
    let (source, fstype, flags) = match storage.driver.as_str() {
        "virtiofs" => {
            if storage.source.is_empty() {
                return Err(AgentError::InvalidArgument(
                    "virtiofs storage needs its tag as source".into(),
                ));
            }
            (storage.source.as_str(), Some("virtiofs"), flags)
        }
        "tmpfs" => ("tmpfs", Some("tmpfs"), flags),
        "bind" => {
            if !Path::new(&storage.source).is_absolute() {
                return Err(AgentError::InvalidArgument(format!(
                    "bind storage source {:?} is not an absolute path",
                    storage.source
                )));
            }
            (storage.source.as_str(), None, flags | MsFlags::MS_BIND)
        }
        other => {
            return Err(AgentError::InvalidArgument(format!(
                "unknown storage driver {other:?} (virtiofs, tmpfs or bind)"
            )))
        }
    };
    std::fs::create_dir_all(&target)
        .map_err(|e| AgentError::io(format!("creating {}", target.display()), e))?;
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(source), &target, fstype, flags, data)
        .map_err(|e| AgentError::errno(format!("mounting {source} on {}", target.display()), e))?;
    // A read-only bind needs a second, remounting call.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|e| AgentError::errno(format!("remounting {} read-only", target.display()), e))?;
    }
    tracing::info!(driver = %storage.driver, source, target = %target.display(), "mounted storage");
    Ok(target)
}

/// Unmounts a storage mounted by [`mount_storage`], detaching it if busy.
pub fn unmount(target: &Path) {
    if let Err(err) = umount2(target, MntFlags::MNT_DETACH) {
        tracing::warn!(target = %target.display(), %err, "unmounting storage");
    }
}

/// A mount point must be absolute and must not climb with `..`.
fn checked_mount_point(path: &str) -> Result<PathBuf> {
    let path = Path::new(path);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(AgentError::InvalidArgument(format!(
            "mount point {path:?} must be an absolute path without '..'"
        )));
    }
    if path == Path::new("/") {
        return Err(AgentError::InvalidArgument(
            "mount point must not be /".into(),
        ));
    }
    Ok(path.to_owned())
}

/// Splits mount(8)-style options into flags and file-system data.
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "bind" => flags |= MsFlags::MS_BIND,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "nosuid", "size=64m", "mode=0755"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(data, "size=64m,mode=0755");
    }

    #[test]
    fn mount_points_must_be_absolute_and_not_climb() {
        assert!(checked_mount_point("/run/x").is_ok());
        for bad in ["run/x", "/run/../etc", "/", ""] {
            assert!(checked_mount_point(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_driver_is_refused() {
        let storage = Storage {
            driver: "nfs".into(),
            mount_point: "/mnt/x".into(),
            ..Default::default()
        };
        let err = mount_storage(&storage).unwrap_err().to_string();
        assert!(err.contains("unknown storage driver"), "{err}");
    }
}

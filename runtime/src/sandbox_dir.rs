//! A sandbox's directory, `<root>/<id>/`, and the files the VM uses in it.
//!
//! ```text
//! <root>/<id>/
//!   vsock.sock        hybrid vsock: host clients connect here (CONNECT <port>)
//!   vsock.sock_<P>    guest connections to host port P (created by whoever listens)
//!   vhost-vsock.sock  vhost-user socket of the vsock backend (QEMU connects)
//!   vhost-fs.sock     vhost-user socket of the virtio-fs backend (QEMU connects)
//!   shared/           the virtio-fs share (tag `husk`), container rootfs under it
//!   console.log       the guest's serial console
//!   qemu.log          the hypervisor's own stderr
//! ```

use std::io;
use std::path::{Path, PathBuf};

/// Longest sandbox id accepted. Unix socket paths are limited to 108 bytes,
/// so ids have to stay short for `<root>/<id>/vhost-vsock.sock` to fit.
pub const MAX_ID_LEN: usize = 64;

/// Errors creating or removing a sandbox directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The id is empty, too long, or has characters other than
    /// `[A-Za-z0-9_.-]` (or is `.`/`..`).
    #[error("invalid sandbox id {0:?}")]
    InvalidId(String),
    /// A sandbox with this id already has a directory.
    #[error("sandbox directory {0} already exists")]
    Exists(PathBuf),
    /// The directory could not be created or removed.
    #[error("sandbox directory {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// The directory of one sandbox. Holds a path only: creating and removing
/// the directory are explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDir {
    path: PathBuf,
}

impl SandboxDir {
    /// The directory of sandbox `id` under `root`, without touching the disk.
    pub fn new(root: &Path, id: &str) -> Result<Self, Error> {
        validate_id(id)?;
        Ok(Self {
            path: root.join(id),
        })
    }

    /// Creates the directory and `shared/` (mode 0700 for the directory,
    /// since the sockets in it give control of the VM). Fails if it exists.
    pub fn create(&self) -> Result<(), Error> {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(root) = self.path.parent() {
            std::fs::create_dir_all(root).map_err(|source| self.io(root, source))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    Error::Exists(self.path.clone())
                } else {
                    self.io(&self.path, source)
                }
            })?;
        let shared = self.shared_dir();
        std::fs::create_dir(&shared).map_err(|source| self.io(&shared, source))
    }

    /// Removes the directory and everything in it; a missing one is fine.
    ///
    /// A sandbox process confined to the directory
    /// ([`crate::service::mount_ns`]) can only empty it: there it is a mount
    /// point on a read-only root, which `delete` removes from the host's
    /// side afterwards.
    pub fn remove(&self) -> Result<(), Error> {
        crate::service::mount_ns::unpin(&self.path);
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EROFS))
                    && crate::service::mount_ns::is_confined()
                    && is_empty(&self.path) =>
            {
                Ok(())
            }
            Err(e) => Err(self.io(&self.path, e)),
            Ok(()) => Ok(()),
        }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The hybrid vsock Unix socket host clients connect to.
    pub fn vsock_socket(&self) -> PathBuf {
        vsock_socket_in(&self.path)
    }

    /// The vhost-user socket of the vsock backend.
    pub fn vhost_vsock_socket(&self) -> PathBuf {
        self.path.join("vhost-vsock.sock")
    }

    /// The vhost-user socket of the virtio-fs backend.
    pub fn vhost_fs_socket(&self) -> PathBuf {
        self.path.join("vhost-fs.sock")
    }

    /// The vhost-user socket of the `index`th guest NIC's virtio-net backend.
    pub fn vhost_net_socket(&self, index: usize) -> PathBuf {
        self.path.join(format!("vhost-net-{index}.sock"))
    }

    /// The directory shared with the guest over virtio-fs.
    pub fn shared_dir(&self) -> PathBuf {
        self.path.join("shared")
    }

    /// The guest's serial console output.
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// The hypervisor process's stderr.
    pub fn hypervisor_log(&self) -> PathBuf {
        self.path.join("qemu.log")
    }

    /// The end of the guest console (at most 4 KiB), where a
    /// failed boot says why; empty if there is none.
    pub fn console_tail(&self) -> String {
        read_tail(&self.console_log(), LOG_TAIL)
    }

    /// The end of the hypervisor process's stderr (at most 4 KiB), where
    /// QEMU names a bad option or device; empty if none.
    pub fn hypervisor_log_tail(&self) -> String {
        read_tail(&self.hypervisor_log(), LOG_TAIL)
    }

    fn io(&self, path: &Path, source: io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Checks a sandbox or container id. Ids become path components: only a
/// conservative character set, never `.`/`..`, and short enough for socket
/// paths.
pub fn validate_id(id: &str) -> Result<(), Error> {
    let charset_ok = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if id.is_empty() || id.len() > MAX_ID_LEN || !charset_ok || id == "." || id == ".." {
        return Err(Error::InvalidId(id.to_owned()));
    }
    Ok(())
}

/// The hybrid vsock socket of the sandbox directory at `dir`, for those
/// that know the directory only by its path (the container's record).
pub fn vsock_socket_in(dir: &Path) -> PathBuf {
    dir.join("vsock.sock")
}

/// Whether `dir` is a directory with nothing in it.
fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// How much of a log's end goes into an error message.
const LOG_TAIL: usize = 4096;

/// The last `max` bytes of `path`, lossily decoded and trimmed; only those
/// are read (a debug console log can be large).
fn read_tail(path: &Path, max: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut data = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let len = file.seek(SeekFrom::End(0)).unwrap_or(0);
        let start = len.saturating_sub(max as u64);
        if file.seek(SeekFrom::Start(start)).is_ok() {
            let _ = file.take(max as u64).read_to_end(&mut data);
        }
    }
    String::from_utf8_lossy(&data).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn layout_is_under_root_and_id() {
        let dir = SandboxDir::new(Path::new("/run/husk"), "abc-1").unwrap();
        assert_eq!(dir.path(), Path::new("/run/husk/abc-1"));
        assert_eq!(dir.vsock_socket(), Path::new("/run/husk/abc-1/vsock.sock"));
        assert_eq!(dir.shared_dir(), Path::new("/run/husk/abc-1/shared"));
        assert_eq!(dir.console_log(), Path::new("/run/husk/abc-1/console.log"));
    }

    #[test]
    fn bad_ids_are_refused() {
        let long = "a".repeat(MAX_ID_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a b",
            "a\0b",
            "é",
            long.as_str(),
        ] {
            assert!(
                matches!(
                    SandboxDir::new(Path::new("/r"), bad),
                    Err(Error::InvalidId(_))
                ),
                "{bad:?} accepted"
            );
        }
        assert!(SandboxDir::new(Path::new("/r"), &"a".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn create_makes_a_private_dir_with_shared_and_refuses_twice() {
        let root = tempfile::tempdir().unwrap();
        let dir = SandboxDir::new(&root.path().join("nested"), "s1").unwrap();
        dir.create().unwrap();
        assert!(dir.shared_dir().is_dir());
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(matches!(dir.create(), Err(Error::Exists(_))));
    }

    #[test]
    fn remove_deletes_everything_and_tolerates_absence() {
        let root = tempfile::tempdir().unwrap();
        let dir = SandboxDir::new(root.path(), "s2").unwrap();
        dir.create().unwrap();
        std::fs::write(dir.shared_dir().join("f"), b"x").unwrap();
        dir.remove().unwrap();
        assert!(!dir.path().exists());
        dir.remove().unwrap();
    }
}

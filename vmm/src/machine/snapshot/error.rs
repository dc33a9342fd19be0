//! Why a snapshot could not be written, or was refused on load.

use std::io;
use std::path::PathBuf;

/// A snapshot problem; every refusal on load says what did not match.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing a snapshot file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The state file does not start with the snapshot magic.
    #[error("{0} is not a husk snapshot state file")]
    NotASnapshot(PathBuf),
    /// The state file was written in another format version.
    #[error("state file format version {found}, this husk reads version {expected}")]
    FormatVersion {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// The state file is shorter or longer than its header says.
    #[error("state file {path} is {found} bytes, its header says {expected}")]
    Length {
        /// The file.
        path: PathBuf,
        /// Length the header announces.
        expected: u64,
        /// Actual length.
        found: u64,
    },
    /// The state file's body does not match its checksum.
    #[error("state file {0} is corrupted (checksum mismatch)")]
    Checksum(PathBuf),
    /// The state file parses but holds impossible values.
    #[error("state file is malformed: {0}")]
    Malformed(String),
    /// Another husk build wrote the snapshot.
    #[error("snapshot made by husk {found}, this is husk {expected}")]
    HuskVersion {
        /// Version that wrote it.
        found: String,
        /// This build.
        expected: String,
    },
    /// The host (CPU, KVM, kernel) differs from the one that made it.
    #[error("snapshot made on another host: {what} was {saved:?}, here it is {here:?}")]
    Host {
        /// What differs.
        what: &'static str,
        /// Value at snapshot time.
        saved: String,
        /// Value on this host.
        here: String,
    },
    /// The snapshot was made for another kernel, initrd or machine size.
    #[error("snapshot is for {saved:?}, {expected:?} was asked for")]
    Key {
        /// Key in the snapshot.
        saved: String,
        /// Key the caller expects.
        expected: String,
    },
    /// The memory file does not have the size of the saved guest RAM.
    #[error("memory file {path} is {found} bytes, the snapshot needs {expected}")]
    MemoryFile {
        /// The file.
        path: PathBuf,
        /// Guest RAM size.
        expected: u64,
        /// Actual size.
        found: u64,
    },
    /// The devices given for restore do not match the saved ones.
    #[error("virtio device {index}: {what}")]
    Device {
        /// The device's index in the configuration.
        index: usize,
        /// What does not match.
        what: String,
    },
    /// A snapshot needs paused vCPUs.
    #[error("the VM must be started and paused to take a snapshot")]
    NotPaused,
    /// Restoring needs memory the way the snapshot maps it.
    #[error("restore supports private (anonymous) guest memory without huge pages only")]
    Backing,
}

impl SnapshotError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

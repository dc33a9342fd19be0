//! VM snapshots: a paused machine saved to a directory (guest RAM plus a
//! versioned, checksummed state file) and restored into a new VM whose RAM
//! is mapped copy-on-write from the saved file.
//!
//! - [`format`]: the state file (header, checksum, the serde body) and
//!   every check made on load.
//! - [`cpu`], [`irqchip`]: capturing and setting vCPU and VM-wide KVM state.
//! - [`ram`]: writing guest RAM out (sparse) and mapping it back privately.
//! - [`host`]: what identifies the host a snapshot may be restored on.
//!
//! [`Vm::snapshot`](super::Vm::snapshot) and
//! [`Vm::restore`](super::Vm::restore) drive them; see
//! `docs/builtin-vmm.md` for the format and its limits.

mod cpu;
mod error;
mod format;
mod host;
mod irqchip;
mod pod;
mod ram;

use std::path::{Path, PathBuf};

pub(super) use cpu::{msr_list as cpu_msr_list, VcpuState};
pub use error::SnapshotError;
pub use format::FORMAT_VERSION;
pub(super) use format::{BootState, MachineState};
pub(super) use host::HostIdentity;
pub(super) use irqchip::VmState;
pub(super) use ram::{map_private, write_memory};

/// The files of one snapshot, inside one directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPaths {
    /// The directory holding both files.
    pub dir: PathBuf,
}

impl SnapshotPaths {
    /// The snapshot kept in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The state file: header, checksum and the machine state.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Guest RAM, byte for byte (a sparse file: zero pages are holes).
    pub fn memory(&self) -> PathBuf {
        self.dir.join("memory")
    }

    /// Whether both files exist (says nothing about their validity).
    pub fn exists(&self) -> bool {
        self.state().is_file() && self.memory().is_file()
    }
}

/// A temporary sibling of `path`, renamed over it once complete, so a
/// reader never sees a half-written file.
pub(super) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

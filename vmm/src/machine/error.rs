//! Errors of building and running a VM.

use std::io;
use std::path::PathBuf;

/// Why a VM could not be built or driven.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration asks for no vCPU.
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    /// More vCPUs than the machine model (MP table, APIC ids) supports.
    #[error("{requested} vCPUs requested, at most {max} supported")]
    TooManyVcpus {
        /// vCPUs asked for.
        requested: u32,
        /// The machine's limit.
        max: u32,
    },
    /// Guest memory cannot hold what must be loaded into it.
    #[error("{mib} MiB of guest memory is too small: {what}")]
    MemoryTooSmall {
        /// Configured memory.
        mib: u64,
        /// What did not fit.
        what: String,
    },
    /// Guest memory could not be allocated.
    #[error("cannot allocate guest memory: {0}")]
    Memory(String),
    /// The kernel file could not be opened or read.
    #[error("cannot read kernel {path}: {source}")]
    KernelRead {
        /// Kernel path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The kernel file is neither an ELF vmlinux nor a bzImage.
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage")]
    KernelFormat(PathBuf),
    /// The bzImage cannot be entered in 64-bit mode.
    #[error("bzImage {0} has no 64-bit entry point (boot protocol 2.12+ with XLF_KERNEL_64)")]
    KernelNo64BitEntry(PathBuf),
    /// linux-loader refused the kernel.
    #[error("cannot load kernel {path}: {source}")]
    KernelLoad {
        /// Kernel path.
        path: PathBuf,
        /// Cause.
        source: linux_loader::loader::Error,
    },
    /// The initrd file could not be opened or read.
    #[error("cannot read initrd {path}: {source}")]
    InitrdRead {
        /// Initrd path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The command line is invalid or too long.
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    /// The command line is longer than the bzImage accepts.
    #[error("kernel command line is {len} bytes, the kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Length of the command line.
        len: usize,
        /// The kernel's `cmdline_size`.
        max: usize,
    },
    /// More virtio devices than free interrupt lines.
    #[error("{0} virtio devices configured, at most {max} supported", max = super::layout::MAX_VIRTIO_DEVICES)]
    TooManyDevices(usize),
    /// A virtio device could not be wrapped in its transport.
    #[error("virtio device: {0}")]
    Device(#[source] io::Error),
    /// Writing boot structures into guest memory failed.
    #[error("cannot write boot structures into guest memory: {0}")]
    BootSetup(String),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// The seccomp filters could not be compiled.
    #[error(transparent)]
    Seccomp(crate::seccomp::Error),
    /// A vCPU thread could not be started.
    #[error("cannot start vCPU thread: {0}")]
    Thread(#[source] io::Error),
    /// `start` on a VM that was already started.
    #[error("the VM was already started")]
    AlreadyStarted,
    /// `pause`/`resume` on a VM that is not running.
    #[error("the VM is not running")]
    NotRunning,
    /// A snapshot could not be taken, or was refused on load.
    #[error("snapshot: {0}")]
    Snapshot(#[from] super::snapshot::SnapshotError),
}

/// Shorthand for KVM ioctl errors.
pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { op, source }
}

/// Result of machine operations.
pub type Result<T> = std::result::Result<T, Error>;

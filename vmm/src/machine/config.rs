//! The plain configuration a [`Vm`](super::Vm) is built from.

use std::io::Write;
use std::path::PathBuf;

use crate::virtio::VirtioDevice;

/// How guest RAM is backed on the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Private anonymous memory.
    #[default]
    Anonymous,
    /// A shared memfd, so another process (a vhost-user backend) can map it.
    Memfd,
}

/// Everything needed to build a VM.
pub struct VmConfig {
    /// Number of vCPUs (1 or more).
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Back guest RAM with 2 MiB huge pages (they must be reserved on the host).
    pub hugepages: bool,
    /// Host backing of guest RAM.
    pub memory_backing: MemoryBacking,
    /// Uncompressed ELF `vmlinux` or `bzImage`.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line; `virtio_mmio.device=` entries are appended.
    pub cmdline: String,
    /// Virtio devices, each behind its own virtio-mmio window and IRQ.
    pub devices: Vec<Box<dyn VirtioDevice>>,
    /// Where the guest's serial console output goes.
    pub console: Box<dyn Write + Send>,
}

impl VmConfig {
    /// A configuration with one vCPU, 128 MiB, no initrd, no devices and the
    /// console discarded.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            vcpus: 1,
            memory_mib: 128,
            hugepages: false,
            memory_backing: MemoryBacking::Anonymous,
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            devices: Vec::new(),
            console: Box::new(std::io::sink()),
        }
    }
}

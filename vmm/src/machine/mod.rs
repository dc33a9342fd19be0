//! The KVM machine: guest memory, vCPUs, Linux boot and legacy devices.
//!
//! [`Vm`] builds a microVM from a [`VmConfig`] and runs it in the calling
//! process, one thread per vCPU. See `docs/builtin-vmm.md` for the machine
//! layout and boot path.

mod boot;
mod bus;
mod cmos;
mod config;
mod cpuid;
mod error;
mod hostcheck;
mod i8042;
pub mod layout;
mod legacy;
mod lifecycle;
mod memory;
mod mptable;
mod pmu;
mod regs;
mod snapshot;
mod vcpu;
mod vm;

pub use boot::{kernel_format, BootLayout, KernelFormat};
pub use config::{MemoryBacking, VmConfig};
pub use error::{Error, Result};
pub use hostcheck::HostCheck;
pub use lifecycle::ExitReason;
pub use memory::{MAX_MEMORY_MIB, MIN_MEMORY_MIB};
pub use mptable::MAX_VCPUS;
pub use regs::EntryPoint;
pub use snapshot::{SnapshotError, SnapshotPaths, FORMAT_VERSION as SNAPSHOT_FORMAT_VERSION};
pub use vm::{RestoreConfig, Vm};

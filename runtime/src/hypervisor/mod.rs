//! The hypervisor seam: what the runtime needs from a VM backend.
//!
//! One trait, [`Hypervisor`], with one implementation per backend. The QEMU
//! backend ([`qemu::Qemu`]) runs `qemu-system-x86_64 -M microvm` with husk's
//! own device backends served to it over vhost-user from threads of the
//! calling process.

pub mod qemu;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::sandbox_dir::SandboxDir;

/// Most vCPUs a sandbox VM may have.
pub const MAX_VCPUS: u8 = 64;
/// Least guest memory that boots the guest kernel and agent.
pub const MIN_MEMORY_MIB: u32 = 64;
/// Most guest memory a sandbox VM may have (1 TiB).
pub const MAX_MEMORY_MIB: u32 = 1 << 20;

/// What to boot, and where its sockets and files live.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Number of vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpus: u8,
    /// Guest memory in MiB, [`MIN_MEMORY_MIB`]..=[`MAX_MEMORY_MIB`].
    pub memory_mib: u32,
    /// The guest kernel (vmlinux or bzImage).
    pub kernel: PathBuf,
    /// The guest initrd (agent as `/init`).
    pub initrd: PathBuf,
    /// Words appended to the backend's own kernel command line.
    pub kernel_args: Vec<String>,
    /// The sandbox directory; it must exist (see [`SandboxDir::create`]).
    pub sandbox: SandboxDir,
}

/// Errors from a hypervisor backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hypervisor program is not installed or not executable.
    #[error("hypervisor program {0} not found (install qemu-system-x86)")]
    MissingProgram(PathBuf),
    /// The kernel or initrd is missing.
    #[error("guest {what} {path} not found")]
    MissingFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The missing path.
        path: PathBuf,
    },
    /// The sandbox directory does not exist.
    #[error("sandbox directory {0} does not exist")]
    MissingSandbox(PathBuf),
    /// A spec value is out of range or malformed.
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    /// `start` was called on a backend that already runs a VM.
    #[error("a VM is already running")]
    AlreadyRunning,
    /// A device backend could not be served.
    #[error("cannot serve the {device} device: {message}")]
    Device {
        /// "vsock" or "fs".
        device: &'static str,
        /// The backend's error.
        message: String,
    },
    /// The hypervisor process could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The hypervisor exited during start-up.
    #[error("the hypervisor exited during start-up ({status}): {stderr}")]
    EarlyExit {
        /// Its exit status.
        status: ExitStatus,
        /// The end of its stderr.
        stderr: String,
    },
    /// Waiting for or signalling the hypervisor process failed.
    #[error("hypervisor process: {0}")]
    Process(std::io::Error),
}

/// How [`Hypervisor::stop`] ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// No VM was running.
    NotRunning,
    /// The VM ended by itself (normally: the guest powered off).
    Exited(ExitStatus),
    /// The VM was still running after the grace period and was killed.
    Killed,
}

/// A VM backend. One value runs at most one VM at a time.
pub trait Hypervisor: Send {
    /// Checks `spec`, then starts its VM. Returns once the VM is launched
    /// (not once the guest is up: connect to the agent for that).
    fn start(&mut self, spec: &VmSpec) -> Result<(), Error>;

    /// Waits up to `timeout` for the VM to end by itself; `None` if it is
    /// still running (or was never started).
    fn wait(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, Error>;

    /// Ends the VM: waits up to `grace` for it to end by itself (after the
    /// agent powered the guest off), kills it otherwise, then stops the
    /// device backends and removes their sockets. The sandbox directory is
    /// left to its owner. Does nothing if no VM runs.
    fn stop(&mut self, grace: Duration) -> Result<Stopped, Error>;

    /// The host process running the VM, if the backend has one.
    fn pid(&self) -> Option<u32>;
}

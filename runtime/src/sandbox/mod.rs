//! The host processes of a sandbox.
//!
//! - [`daemon`]: the sandbox process. Owns the VM (and through it the
//!   agent), the share's bind mounts and the sandbox directory, from
//!   `create` until `delete`.
//! - [`proxy`]: one per container process (init or exec): the host process
//!   whose pid Docker waits on. Carries the process's stdio, forwards the
//!   signals it receives, and exits with the guest process's status.
//! - [`share`]: the bind mounts that put host paths into the virtio-fs share.
//! - [`tty`]: host pseudo-terminals and `--console-socket`.
//! - [`host_cgroup`]: the init proxy's host memory cgroup, for OOM events.
//! - [`spawn`]: starting those processes detached, with a readiness pipe.

pub mod daemon;
pub mod host_cgroup;
pub mod proxy;
pub mod share;
pub mod spawn;
pub mod tty;

/// The small multi-threaded runtime the sandbox process and the proxies
/// run on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

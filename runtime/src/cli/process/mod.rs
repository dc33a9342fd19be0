//! The CLI's host processes: what `husk create` and `husk exec` leave
//! running, since a runc-style CLI exits after each verb.
//!
//! - [`daemon`]: the sandbox process. Owns the VM (and through it the
//!   agent), the share's bind mounts and the sandbox directory, from
//!   `create` until `delete`.
//! - [`proxy`]: one per container process (init or exec): the host process
//!   whose pid Docker waits on. Carries the process's stdio, forwards the
//!   signals it receives, and exits with the guest process's status.
//! - [`tty`]: host pseudo-terminals and `--console-socket`.
//! - [`host_cgroup`]: the init proxy's host memory cgroup, for OOM events.
//! - [`spawn`]: starting those processes detached, with a readiness pipe.

pub mod daemon;
pub mod host_cgroup;
pub mod jail;
pub mod proxy;
pub mod spawn;
pub mod tty;

pub use crate::service::runtime;

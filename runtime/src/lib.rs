//! husk's host side as a library: the `husk` binary is a thin CLI over it.
//!
//! - [`sandbox_dir`]: a sandbox's directory and the files in it.
//! - [`hypervisor`]: the [`hypervisor::Hypervisor`] trait and its backends.
//! - [`agent_client`]: the ttrpc connection to `husk-agent` over hybrid vsock.
//! - [`sandbox_vm`]: one sandbox VM from boot to teardown.

pub mod agent_client;
pub mod hypervisor;
pub mod sandbox_dir;
pub mod sandbox_vm;

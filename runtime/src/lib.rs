//! husk's host side as a library: the `husk` binary is a thin CLI over it.
//!
//! - [`sandbox_dir`]: a sandbox's directory and the files in it.
//! - [`hypervisor`]: the [`hypervisor::Hypervisor`] trait and its backends.
//! - [`agent_client`]: the ttrpc connection to `husk-agent` over hybrid vsock.
//! - [`sandbox_vm`]: one sandbox VM from boot to teardown.
//! - [`check`]: `husk check`, can this host run containers and how.
//! - [`config`]: the configuration file.
//! - [`oci`]: bundles, the state document, hooks, the guest's spec.
//! - [`store`]: containers' records under `--root`.
//! - [`host_process`]: host processes named by pid and start time.
//! - [`service`]: one sandbox VM holding N containers, under both faces.
//! - [`sandbox`]: the CLI's sandbox process and the process proxies.
//! - [`network`]: the host side of the guest's NICs and of its DNS relay.
//! - [`cli`]: the runc-compatible command line (one face).
//! - [`shim`]: containerd's shim v2 (the other face).
//! - [`logging`]: logs in runc's text and JSON shapes.

pub mod agent_client;
pub mod check;
pub mod cli;
pub mod config;
pub mod host_process;
pub mod hypervisor;
pub mod logging;
pub mod network;
pub mod oci;
pub mod sandbox;
pub mod sandbox_dir;
pub mod sandbox_vm;
pub mod service;
pub mod shim;
pub mod store;

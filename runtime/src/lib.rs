//! husk's host side as a library, in three layers:
//!
//! 1. **Two faces**, each thin:
//!    - [`cli`]: the runc-compatible command line (Docker, Podman, any
//!      OCI engine), with its host processes in [`cli::process`];
//!    - [`shim`]: containerd's shim v2 (`ctr`, Kubernetes through CRI).
//! 2. **The sandbox service** ([`service`]): one VM holding N containers,
//!    from boot to teardown; both faces drive it.
//! 3. **What it is built from:**
//!    - [`hypervisor`]: the [`hypervisor::Hypervisor`] trait, QEMU and the
//!      builtin VMM;
//!    - [`agent_client`]: the ttrpc connection to `husk-agent` over hybrid
//!      vsock;
//!    - [`network`]: the host side of the guest's NICs and DNS relay;
//!    - [`oci`]: bundles, the state document, hooks, the guest's spec;
//!    - [`sandbox_dir`]: a sandbox's directory and the files in it;
//!    - [`config`]: the configuration file;
//!    - [`store`]: the CLI's container records under `--root`;
//!    - [`host_process`]: host processes named by pid and start time;
//!    - [`check`]: `husk check`, can this host run containers and how;
//!    - [`logging`]: logs in runc's text and JSON shapes.

pub mod agent_client;
pub mod check;
pub mod cli;
pub mod config;
pub mod host_process;
pub mod hypervisor;
pub mod logging;
pub mod network;
pub mod oci;
pub mod sandbox_dir;
pub mod service;
pub mod shim;
pub mod store;
pub mod template;

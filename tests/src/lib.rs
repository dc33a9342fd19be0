//! Shared helpers for husk integration and end-to-end tests.
//!
//! - [`guest`]: the guest kernel and initrd, built or found by the project's scripts.
//! - [`rootfs`]: a busybox container root file system.
//! - [`containers`]: driving containers through the agent API.
//! - [`cli`]: running the `husk` CLI to completion, its output through files.
//! - [`docker`]: a private containerd + dockerd for Docker end-to-end tests.
//! - [`containerd`]: a private containerd with its CRI plugin, a CRI client
//!   and offline images for Kubernetes end-to-end tests.
//! - [`netns`]: a network namespace of the test's own for networked daemons.
//! - [`podman`]: a private Podman (root, runroot, storage, networks).
//! - [`bench`]: what the benchmarks share (medians, runc and crun beside husk).

pub mod bench;
pub mod budget;
pub mod cli;
pub mod containerd;
pub mod containers;
pub mod docker;
pub mod guest;
pub mod netns;
pub mod podman;
pub mod processes;
pub mod rootfs;

//! Shared helpers for husk integration and end-to-end tests.
//!
//! - [`guest`]: the guest kernel and initrd, built or found by the project's scripts.
//! - [`rootfs`]: a busybox container root file system.
//! - [`containers`]: driving containers through the agent API.
//! - [`docker`]: a private containerd + dockerd for Docker end-to-end tests.
//! - [`bench`]: what the benchmarks share (medians, runc and crun beside husk).

pub mod bench;
pub mod containers;
pub mod docker;
pub mod guest;
pub mod rootfs;

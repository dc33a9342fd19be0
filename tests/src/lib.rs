//! Shared helpers for husk integration and end-to-end tests.
//!
//! - [`guest`]: the guest kernel and initrd, built or found by the project's scripts.
//! - [`rootfs`]: a busybox container root file system.
//! - [`containers`]: driving containers through the agent API.

pub mod containers;
pub mod guest;
pub mod rootfs;

//! husk's embedded VMM.
//!
//! - [`devices`]: virtio device backends (vsock, fs), written once against
//!   `virtio-queue` and `vm-memory`, independent of the transport.
//! - [`vhost_user`]: serves those backends to QEMU over vhost-user.
//! - [`virtio`]: the virtio-mmio transport used by the builtin VMM.
//! - [`machine`]: the KVM machine (memory, vCPUs, boot, legacy devices).
//! - [`seccomp`]: the per-thread seccomp filters of all of the above.
//! - `test_support` (feature `test-support`): test payload builders shared
//!   by this crate's tests and the runtime's.

pub mod devices;
pub mod machine;
pub mod seccomp;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod vhost_user;
pub mod virtio;

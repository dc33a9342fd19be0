//! virtio-fs backend: fuse-backend-rs passthrough confined to the sandbox share.
//!
//! - [`FsDevice`] is the device core: it owns the FUSE server and answers the requests on a
//!   virtqueue against any guest memory, so the builtin VMM's virtio-mmio transport and the
//!   vhost-user server ([`serve_fs`], [`FsBackend`]) drive the same code; [`FsMmioDevice`]
//!   is its `VirtioDevice` face for virtio-mmio.
//! - `confined.rs` and `sandbox.rs` are the two confinement layers (name checks in front of
//!   `PassthroughFs`; per-thread `chroot` into the share). See `docs/devices/fs.md`.

mod confined;
mod device;
mod error;
mod mmio;
mod sandbox;
mod vhost_user;

#[cfg(test)]
mod tests;

pub use device::{
    FsConfig, FsDevice, CONFIG_SPACE_LEN, MAX_CHAIN_BYTES, MAX_QUEUE_SIZE, MAX_REQUEST_QUEUES,
    TAG_LEN,
};
pub use error::FsError;
pub use mmio::FsMmioDevice;
pub use vhost_user::{serve_fs, FsBackend};

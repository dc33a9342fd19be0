//! virtio-vsock backend: hybrid vsock over Unix sockets (Firecracker protocol).
//!
//! - `packet`: header values and the owned header copy.
//! - `connection`: one stream's state machine and credit flow control.
//! - `muxer`: the Unix-socket side (listener, CONNECT handshake, `<path>_<port>`).
//! - [`VsockDevice`]: the transport-independent device core.
//! - [`serve_vsock`]: the device served to QEMU over vhost-user.
//! - [`VsockMmioDevice`]: the device behind the builtin VMM's virtio-mmio transport.
//!
//! See `docs/devices/vsock.md` for the protocol, limits and hostile-input rules.

mod connection;
mod device;
mod mmio;
mod muxer;
mod packet;
mod vhost_user;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use device::{VsockDevice, EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE, VIRTIO_ID_VSOCK};
pub use mmio::VsockMmioDevice;
pub use packet::HOST_CID;
pub use vhost_user::{serve_vsock, VsockBackend};

/// Errors creating or serving the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest CID is reserved or out of range.
    #[error("invalid guest CID {0}")]
    InvalidCid(u64),
    /// The host-side Unix socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The vhost-user server could not start.
    #[error(transparent)]
    VhostUser(#[from] crate::vhost_user::Error),
    /// An eventfd could not be created.
    #[error("cannot create eventfd: {0}")]
    Event(io::Error),
}

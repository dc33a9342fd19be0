//! Virtio device backends, independent of the transport that carries them.

pub mod fs;
pub mod net;
pub mod vsock;

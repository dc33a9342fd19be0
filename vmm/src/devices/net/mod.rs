//! virtio-net backend: one RX/TX queue pair joined to a Linux tap device.
//!
//! - [`Tap`]: the host side, a non-persistent tap with virtio-net headers.
//! - [`NetDevice`]: the transport-independent device core (queue processing
//!   against guest memory; every descriptor and length from the guest checked).
//! - [`NetMmioDevice`]: the device behind the builtin VMM's virtio-mmio transport.
//! - [`serve_net`]: the device served to QEMU over vhost-user.
//!
//! Frames keep the virtio-net header from end to end: the tap speaks the same
//! 12-byte `virtio_net_hdr_v1` the driver does, so checksum and segmentation
//! offloads pass through without the device touching a byte of payload.

mod device;
mod mmio;
mod relay;
mod tap;
mod vhost_user;

#[cfg(test)]
mod tests;

use std::io;

pub use device::{
    NetDevice, NetStats, CONFIG_SPACE_LEN, MAX_FRAME_LEN, NUM_QUEUES, RX_QUEUE, TX_QUEUE,
};
pub use mmio::{NetMmioDevice, NetStatsHandle};
pub use tap::{Tap, VNET_HDR_LEN};
pub use vhost_user::{serve_net, NetBackend};

/// What the guest sees of its NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The NIC's MAC address.
    pub mac: [u8; 6],
    /// The link MTU (Ethernet payload bytes), 68..=65535.
    pub mtu: u16,
}

impl NetConfig {
    /// The least MTU an IPv4 link may have (RFC 791).
    pub const MIN_MTU: u16 = 68;

    fn validate(&self) -> Result<(), Error> {
        if self.mtu < Self::MIN_MTU {
            return Err(Error::InvalidConfig(format!("MTU {} below 68", self.mtu)));
        }
        // Multicast (group bit) or all-zero addresses cannot name one NIC.
        if self.mac[0] & 1 != 0 || self.mac == [0; 6] {
            return Err(Error::InvalidConfig(format!(
                "MAC {} is not a unicast address",
                format_mac(&self.mac)
            )));
        }
        Ok(())
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Errors creating or serving the net device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tap name is empty, too long (15 bytes at most) or has a NUL.
    #[error("invalid tap name {0:?}")]
    TapName(String),
    /// A tap operation failed.
    #[error("tap: {0}: {1}")]
    Tap(&'static str, #[source] io::Error),
    /// The MAC or MTU cannot be given to a guest.
    #[error("invalid NIC configuration: {0}")]
    InvalidConfig(String),
    /// The device's event set (epoll) could not be made or changed.
    #[error("net device event set: {0}")]
    Event(#[source] io::Error),
    /// The guest made a queue unusable (its rings point outside its memory,
    /// or it claims more buffers than the queue holds); the queue stays
    /// stopped until the driver resets the device.
    #[error("virtio-net queue unusable: {0}")]
    Queue(virtio_queue::Error),
    /// The relay in front of the vhost-user daemon could not start.
    #[error("vhost-user relay: {0}")]
    Relay(#[source] io::Error),
    /// The vhost-user server could not start.
    #[error(transparent)]
    VhostUser(#[from] crate::vhost_user::Error),
}

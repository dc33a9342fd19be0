//! The transport-independent virtio-vsock device: queue processing against
//! guest memory, plus the host-side event source a transport must poll.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::connection::MAX_PKT_DATA;
use super::muxer::Muxer;
use super::packet::{Header, HEADER_LEN};
use super::Error;

/// Index of the RX queue (device to driver).
pub const RX_QUEUE: usize = 0;
/// Index of the TX queue (driver to device).
pub const TX_QUEUE: usize = 1;
/// Index of the event queue (only used for transport resets, which husk never sends).
pub const EVENT_QUEUE: usize = 2;
/// Number of queues of a vsock device.
pub const NUM_QUEUES: usize = 3;
/// `VIRTIO_ID_VSOCK`.
pub const VIRTIO_ID_VSOCK: u32 = 19;

/// A virtio-vsock device backed by hybrid Unix sockets.
///
/// A transport drives it with three calls: [`process_tx`](Self::process_tx)
/// when the driver kicks the TX queue, [`process_host_events`](Self::process_host_events)
/// when [`host_event_fd`](Self::host_event_fd) is readable, and then
/// [`process_rx`](Self::process_rx) whenever either ran or the driver kicked
/// the RX queue. Each queue call returns whether the driver must be notified.
pub struct VsockDevice {
    guest_cid: u64,
    muxer: Muxer,
}

impl VsockDevice {
    /// Creates the device for `guest_cid`, listening for host clients on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, Error> {
        // 0, 1 and 2 are reserved; u32::MAX is VMADDR_CID_ANY in 32-bit guests.
        if guest_cid < 3 || guest_cid >= u64::from(u32::MAX) {
            return Err(Error::InvalidCid(guest_cid));
        }
        let muxer = Muxer::new(guest_cid, uds_path).map_err(|source| Error::Listen {
            path: uds_path.to_owned(),
            source,
        })?;
        Ok(VsockDevice { guest_cid, muxer })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The device configuration space: `guest_cid` as a little-endian u64.
    pub fn config_space(&self) -> [u8; 8] {
        self.guest_cid.to_le_bytes()
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Whether packets are waiting for RX buffers.
    pub fn has_pending_rx(&self) -> bool {
        self.muxer.has_rx()
    }

    /// The fd that is readable while host-side events are pending.
    pub fn host_event_fd(&self) -> RawFd {
        self.muxer.epoll_fd()
    }

    /// Handles pending host-side events (new clients, readable or writable
    /// streams, hang-ups) without blocking.
    pub fn process_host_events(&mut self) {
        self.muxer.process_events();
    }

    /// Drops every connection, as after a driver reset.
    pub fn reset(&mut self) {
        self.muxer.reset();
    }

    /// Consumes every available TX buffer. Malformed chains are returned to
    /// the driver unread. Returns whether the used ring changed.
    pub fn process_tx(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        let mut used = false;
        while let Some(mut chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let probe = chain.clone();
            match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let hdr = Header::read(&pkt);
                    self.muxer.handle_guest_packet(&hdr, pkt.data_slice());
                }
                Err(e) => {
                    tracing::debug!("dropping malformed vsock TX chain: {e}");
                    // A lost RW would silently corrupt its stream: reset it instead.
                    if let Some(hdr) = readable_header(mem, probe) {
                        self.muxer.reset_connection_of(&hdr);
                    }
                }
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                tracing::warn!("vsock TX used ring update failed: {e}");
                break;
            }
            used = true;
        }
        used
    }

    /// Fills RX buffers with pending packets. Returns whether the used ring changed.
    pub fn process_rx(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        let mut used = false;
        while self.muxer.has_rx() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => match self.muxer.fill_rx(&mut pkt) {
                    Some(len) => len,
                    None => {
                        queue.go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    tracing::debug!("dropping malformed vsock RX chain: {e}");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                tracing::warn!("vsock RX used ring update failed: {e}");
                break;
            }
            used = true;
        }
        used
    }
}

/// The header at the head of a TX chain, if it is readable at all.
fn readable_header<M>(mem: &GuestMemoryMmap, mut chain: DescriptorChain<M>) -> Option<Header>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let desc = chain.next()?;
    if desc.is_write_only() || desc.len() < HEADER_LEN {
        return None;
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut raw, desc.addr()).ok()?;
    Some(Header::from_bytes(&raw))
}

impl AsRawFd for VsockDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.host_event_fd()
    }
}

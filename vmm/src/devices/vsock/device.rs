//! The transport-independent virtio-vsock device: queue processing against
//! guest memory, plus the host-side event source a transport must poll.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::{Address, Bytes, GuestMemoryMmap};

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
    /// Scratch space for one TX payload (at most `MAX_PKT_DATA`).
    tx_data: Vec<u8>,
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
        Ok(VsockDevice {
            guest_cid,
            muxer,
            tx_data: Vec::new(),
        })
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
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match read_tx_packet(mem, chain, &mut self.tx_data) {
                Ok(hdr) => {
                    let data = (hdr.len > 0).then_some(&self.tx_data[..]);
                    self.muxer.handle_guest_packet(&hdr, data);
                }
                Err(TxError { header, reason }) => {
                    tracing::debug!("dropping malformed vsock TX chain: {reason}");
                    // A lost RW would silently corrupt its stream: reset it instead.
                    if let Some(hdr) = header {
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

/// Why a TX chain was refused, with its header when that was readable.
struct TxError {
    header: Option<Header>,
    reason: &'static str,
}

/// Reads a TX packet: the header from the head descriptor, then `len` bytes
/// of payload gathered from the rest of the head and the following
/// descriptors (Linux splits large payloads over several). The payload is
/// copied into `data`, never more than [`MAX_PKT_DATA`] bytes.
fn read_tx_packet<M>(
    mem: &GuestMemoryMmap,
    mut chain: DescriptorChain<M>,
    data: &mut Vec<u8>,
) -> Result<Header, TxError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let fail = |header, reason| TxError { header, reason };
    let head = chain.next().ok_or(fail(None, "empty chain"))?;
    if head.is_write_only() || head.len() < HEADER_LEN {
        return Err(fail(None, "bad header descriptor"));
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut raw, head.addr())
        .map_err(|_| fail(None, "header outside guest memory"))?;
    let hdr = Header::from_bytes(&raw);
    if hdr.len > MAX_PKT_DATA {
        return Err(fail(Some(hdr), "payload too long"));
    }
    data.clear();
    let want = hdr.len as usize;
    let mut segment = head
        .addr()
        .checked_add(u64::from(HEADER_LEN))
        .map(|addr| (addr, head.len() - HEADER_LEN));
    while data.len() < want {
        let (addr, len) = match segment.take() {
            Some(seg) => seg,
            None => {
                let desc = chain
                    .next()
                    .ok_or(fail(Some(hdr), "payload shorter than len"))?;
                if desc.is_write_only() {
                    return Err(fail(Some(hdr), "device-writable TX descriptor"));
                }
                (desc.addr(), desc.len())
            }
        };
        let take = (len as usize).min(want - data.len());
        let start = data.len();
        data.resize(start + take, 0);
        let dst = data.get_mut(start..).unwrap_or_default();
        mem.read_slice(dst, addr)
            .map_err(|_| fail(Some(hdr), "payload outside guest memory"))?;
    }
    Ok(hdr)
}

impl AsRawFd for VsockDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.host_event_fd()
    }
}

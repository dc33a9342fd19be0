//! The transport-independent virtio-net device: frames between one RX/TX
//! queue pair and a tap, against any guest memory.
//!
//! TX gathers each chain straight from guest memory into one `writev` on the
//! tap (only the 12-byte header is copied, to check it). RX reads each frame
//! from the tap into one preallocated buffer, then copies it into the guest's
//! buffers; with mergeable buffers a frame spreads over as many chains as it
//! needs and the header's `num_buffers` says how many. Nothing is allocated
//! per frame.
//!
//! Hostile-guest rules: every chain is walked with a bound (descriptor count,
//! segment count, total length); a TX chain with a device-writable
//! descriptor, an RX chain with a device-readable one, a range outside guest
//! memory, a chain cut short (a loop, a `next` out of range) or a frame
//! longer than [`MAX_FRAME_LEN`] is refused and returned to the driver with
//! used length 0. Every chain taken from a queue gets exactly one used entry,
//! or is put back untouched (TX when the tap is full, see below).
//!
//! Back-pressure: a TX chain the tap cannot take now (`EAGAIN`) is put back
//! on the queue and retried when the tap becomes writable, so it is never
//! lost. On RX a frame is only read from the tap once the guest has posted
//! a buffer; one read while the guest's buffers run short waits in the
//! device (with the chains it already holds) until the guest posts more. A
//! frame that cannot fit any guest buffer (smaller than the frame without
//! mergeable buffers) is dropped and counted in [`NetStats::rx_dropped`].

use std::io;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::tap::{Tap, VNET_HDR_LEN};
use super::{Error, NetConfig};

/// Index of the receive queue (device to driver).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (driver to device).
pub const TX_QUEUE: usize = 1;
/// One queue pair, no control queue.
pub const NUM_QUEUES: usize = 2;
/// Size of the configuration space: `mac`, `status`, `max_virtqueue_pairs`, `mtu`.
pub const CONFIG_SPACE_LEN: usize = 12;

/// Longest Ethernet frame (its own header included) either way: a 64 KiB
/// GSO frame plus an Ethernet header with one VLAN tag.
pub const MAX_FRAME_LEN: usize = 65_536 + ETH_HLEN + 4;
/// Shortest frame: an Ethernet header.
const ETH_HLEN: usize = 14;
/// Longest packet on a queue or the tap: header plus frame.
const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Most memory segments of one TX frame, header included. Linux uses one
/// descriptor per skb fragment (at most 17 by default, plus the linear part);
/// this leaves room for larger `MAX_SKB_FRAGS` and guest memory split over
/// regions.
const MAX_TX_SEGMENTS: usize = 128;
/// Most descriptors of one RX chain (Linux: one with mergeable buffers, 19
/// in "big packets" mode).
const MAX_RX_CHAIN_SEGMENTS: usize = 128;
/// Most segments the device holds for one RX frame over all its chains.
const MAX_RX_SEGMENTS: usize = 1024;
/// Frames handled per call before giving the other queue and the driver's
/// interrupt a turn; the tap stays readable, so the caller comes back.
const BATCH: usize = 256;

/// The feature bits the device offers.
const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_MTU
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_ECN
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_HOST_ECN
    | 1 << VIRTIO_NET_F_MRG_RXBUF;

/// Frame and error counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest sent that reached the tap.
    pub tx_frames: u64,
    /// Their bytes (frames only, headers not counted).
    pub tx_bytes: u64,
    /// Well-formed TX frames the tap refused (other than "full").
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes (frames only).
    pub rx_bytes: u64,
    /// Frames from the tap dropped: too short, too long, or larger than the
    /// guest's buffer without mergeable buffers.
    pub rx_dropped: u64,
    /// Chains refused as malformed (either queue), returned with length 0.
    pub bad_chains: u64,
}

/// One RX chain the device holds for the pending frame: its head and its
/// writable segments `segs[start..end]` in the device's segment list.
#[derive(Debug, Clone, Copy)]
struct RxChain {
    head: u16,
    start: usize,
    end: usize,
    capacity: usize,
}

/// The virtio-net device core.
///
/// A transport calls [`process_tx`](Self::process_tx) when the driver kicks
/// the TX queue and [`process_rx`](Self::process_rx) when it kicks the RX
/// queue, and both whenever [`host_event_fd`](Self::host_event_fd) is
/// readable (the tap has frames, or became writable after refusing one).
/// Each returns whether the driver must be interrupted for that queue.
/// [`set_acked_features`](Self::set_acked_features) comes first, with the
/// features the driver accepted.
pub struct NetDevice {
    tap: Tap,
    config: NetConfig,
    acked: u64,
    /// Level-triggered set holding the tap with the interest the device
    /// needs now, so the transport's wait wakes only for work it can do.
    epoll: Epoll,
    interest: EventSet,
    rx_buf: Box<[u8]>,
    /// Length of the frame (header included) in `rx_buf` not yet delivered.
    rx_pending: Option<usize>,
    rx_chains: Vec<RxChain>,
    rx_segs: Vec<(GuestAddress, usize)>,
    /// The transport runs the RX queue (it is set up and enabled).
    rx_enabled: bool,
    /// The guest has no RX buffer: stop reading the tap until it kicks.
    rx_waiting: bool,
    /// The tap refused a TX frame with EAGAIN: wait until it is writable.
    tx_blocked: bool,
    /// A TX batch ended with chains left on the queue.
    tx_more: bool,
    stats: NetStats,
}

impl std::fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("tap", &self.tap.name())
            .field("config", &self.config)
            .field("acked", &self.acked)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl NetDevice {
    /// The device for `tap`, showing the guest `config`.
    pub fn new(tap: Tap, config: NetConfig) -> Result<Self, Error> {
        config.validate()?;
        let epoll = Epoll::new().map_err(Error::Event)?;
        epoll
            .ctl(
                ControlOperation::Add,
                tap.as_raw_fd(),
                EpollEvent::new(EventSet::empty(), 0),
            )
            .map_err(Error::Event)?;
        Ok(NetDevice {
            tap,
            config,
            acked: 0,
            epoll,
            interest: EventSet::empty(),
            // One byte more than any packet, so a longer one shows as such.
            rx_buf: vec![0u8; MAX_PACKET_LEN + 1].into_boxed_slice(),
            rx_pending: None,
            rx_chains: Vec::with_capacity(64),
            rx_segs: Vec::with_capacity(MAX_RX_SEGMENTS),
            rx_enabled: false,
            rx_waiting: false,
            tx_blocked: false,
            tx_more: false,
            stats: NetStats::default(),
        })
    }

    /// The feature bits the device offers (`VIRTIO_F_VERSION_1` included).
    pub fn features(&self) -> u64 {
        FEATURES
    }

    /// The configuration space: MAC, link status (up), one queue pair, MTU.
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut space = [0u8; CONFIG_SPACE_LEN];
        space[..6].copy_from_slice(&self.config.mac);
        space[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        space[8..10].copy_from_slice(&1u16.to_le_bytes());
        space[10..12].copy_from_slice(&self.config.mtu.to_le_bytes());
        space
    }

    /// The NIC configuration.
    pub fn config(&self) -> NetConfig {
        self.config
    }

    /// The tap's interface name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// Frame and error counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Records the features the driver accepted (bits the device did not
    /// offer are ignored) and lets the tap hand us the offloads the guest
    /// can receive.
    pub fn set_acked_features(&mut self, features: u64) -> Result<(), Error> {
        self.acked = features & FEATURES;
        self.tap.set_offload(tap_offloads(self.acked))
    }

    /// Readable while the device has host-side work (see the type's docs).
    pub fn host_event_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Forgets everything queue-related, as after a driver reset: the
    /// pending frame is dropped, the held chains are forgotten (their queue
    /// goes with the reset) and the tap is no longer read.
    pub fn reset(&mut self) {
        if self.rx_pending.take().is_some() {
            self.stats.rx_dropped += 1;
        }
        self.rx_chains.clear();
        self.rx_segs.clear();
        self.rx_enabled = false;
        self.rx_waiting = false;
        self.tx_blocked = false;
        self.tx_more = false;
        self.acked = 0;
        if let Err(e) = self.tap.set_offload(0) {
            tracing::warn!("virtio-net reset: {e}");
        }
        self.update_interest();
    }

    /// Stops reading the tap because the transport cannot run the RX queue
    /// now (a vhost-user ring not yet enabled); the next
    /// [`process_rx`](Self::process_rx) resumes.
    pub fn pause_rx(&mut self) {
        self.rx_enabled = false;
        self.update_interest();
    }

    fn has(&self, feature: u32) -> bool {
        self.acked & (1 << feature) != 0
    }

    /// Re-registers the tap for what the device waits for now.
    fn update_interest(&mut self) {
        let mut want = EventSet::empty();
        if self.rx_enabled && !self.rx_waiting {
            want |= EventSet::IN;
        }
        if self.tx_blocked || self.tx_more {
            want |= EventSet::OUT;
        }
        if want == self.interest {
            return;
        }
        match self.epoll.ctl(
            ControlOperation::Modify,
            self.tap.as_raw_fd(),
            EpollEvent::new(want, 0),
        ) {
            Ok(()) => self.interest = want,
            Err(e) => tracing::error!("virtio-net: cannot watch the tap: {e}"),
        }
    }

    /// Runs `body` (the TX or RX loop) on `queue`, then returns whether the
    /// driver must be interrupted: buffers were used and the queue's
    /// notification suppression allows it. The tap interest is updated even
    /// when `body` failed: it must follow whatever state the loop left.
    fn run_queue<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
        body: fn(&mut Self, &M, &mut Queue, &mut bool) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        let mut used = false;
        let result = body(self, mem, queue, &mut used);
        self.update_interest();
        result?;
        Ok(used && queue.needs_notification(mem).map_err(Error::Queue)?)
    }

    /// Sends every frame the driver made available on the TX queue. Returns
    /// whether the driver must be interrupted.
    pub fn process_tx<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
    ) -> Result<bool, Error> {
        if !queue.ready() {
            return Ok(false);
        }
        self.tx_blocked = false;
        self.tx_more = false;
        self.run_queue(mem, queue, Self::tx_loop)
    }

    fn tx_loop<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
        used: &mut bool,
    ) -> Result<(), Error> {
        let mut frames = 0;
        loop {
            queue.disable_notification(mem).map_err(Error::Queue)?;
            check_avail_index(queue, mem)?;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                match self.send_chain(mem, chain) {
                    TxOutcome::Sent | TxOutcome::Dropped => {}
                    TxOutcome::Refused(reason) => {
                        tracing::debug!("virtio-net: bad TX chain: {reason}");
                        self.stats.bad_chains += 1;
                    }
                    TxOutcome::WouldBlock => {
                        // Not consumed: the same chain goes out once the
                        // tap is writable again.
                        queue.go_to_previous_position();
                        self.tx_blocked = true;
                        return Ok(());
                    }
                }
                add_used(queue, mem, head, 0)?;
                *used = true;
                frames += 1;
                if frames >= BATCH {
                    // Give RX and the driver's interrupt a turn. The
                    // driver will not kick for chains it already
                    // published, so the tap's (always ready) writability
                    // brings the transport back.
                    self.tx_more = true;
                    return Ok(());
                }
            }
            if !queue.enable_notification(mem).map_err(Error::Queue)? {
                return Ok(());
            }
        }
    }

    /// Checks one TX chain and writes its frame to the tap.
    fn send_chain<M: GuestMemory>(&mut self, mem: &M, chain: DescriptorChain<&M>) -> TxOutcome {
        let mut hdr = [0u8; VNET_HDR_LEN];
        let mut hdr_len = 0usize;
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iovs = [empty; MAX_TX_SEGMENTS];
        let mut n_iovs = 1usize;
        let mut total = 0usize;
        let mut last_has_next = false;
        for desc in chain {
            last_has_next = desc.has_next();
            if desc.is_write_only() {
                return TxOutcome::Refused("device-writable descriptor");
            }
            let len = desc.len() as usize;
            total = total.saturating_add(len);
            if total > MAX_PACKET_LEN {
                return TxOutcome::Refused("frame too long");
            }
            let mut addr = desc.addr();
            let mut left = len;
            if hdr_len < VNET_HDR_LEN && left > 0 {
                let take = left.min(VNET_HDR_LEN - hdr_len);
                let Some(dst) = hdr.get_mut(hdr_len..hdr_len + take) else {
                    return TxOutcome::Refused("header");
                };
                if mem.read_slice(dst, addr).is_err() {
                    return TxOutcome::Refused("header outside guest memory");
                }
                hdr_len += take;
                left -= take;
                match addr.checked_add(take as u64) {
                    Some(a) => addr = a,
                    None => return TxOutcome::Refused("address overflow"),
                }
            }
            if left == 0 {
                continue;
            }
            for slice in mem.get_slices(addr, left) {
                let Ok(slice) = slice else {
                    return TxOutcome::Refused("buffer outside guest memory");
                };
                let Some(iov) = iovs.get_mut(n_iovs) else {
                    return TxOutcome::Refused("too many segments");
                };
                *iov = libc::iovec {
                    iov_base: slice.ptr_guard().as_ptr() as *mut libc::c_void,
                    iov_len: slice.len(),
                };
                n_iovs += 1;
            }
        }
        if last_has_next {
            return TxOutcome::Refused("chain cut short (loop or bad next)");
        }
        if hdr_len < VNET_HDR_LEN || total < VNET_HDR_LEN + ETH_HLEN {
            return TxOutcome::Refused("shorter than a header and an Ethernet header");
        }
        if let Err(reason) = self.check_tx_header(&hdr) {
            return TxOutcome::Refused(reason);
        }
        iovs[0] = libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: VNET_HDR_LEN,
        };
        // SAFETY: iovs[0] is `hdr`, alive for the call; the rest point into
        // guest memory that `mem` keeps mapped for the call, each within one
        // region as `get_slices` cut them.
        match unsafe { self.tap.write_frame(&iovs[..n_iovs]) } {
            Ok(_) => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += (total - VNET_HDR_LEN) as u64;
                TxOutcome::Sent
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => TxOutcome::WouldBlock,
            Err(e) => {
                tracing::debug!("virtio-net: tap refused a frame: {e}");
                self.stats.tx_dropped += 1;
                TxOutcome::Dropped
            }
        }
    }

    /// Offloads in a TX header must be ones the driver negotiated; the
    /// kernel validates the rest of the header itself.
    fn check_tx_header(&self, hdr: &[u8; VNET_HDR_LEN]) -> Result<(), &'static str> {
        let flags = u32::from(hdr[0]);
        let gso = u32::from(hdr[1]);
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !self.has(VIRTIO_NET_F_CSUM) {
            return Err("checksum offload not negotiated");
        }
        if gso & VIRTIO_NET_HDR_GSO_ECN != 0 && !self.has(VIRTIO_NET_F_HOST_ECN) {
            return Err("ECN segmentation not negotiated");
        }
        let allowed = match gso & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => self.has(VIRTIO_NET_F_HOST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => self.has(VIRTIO_NET_F_HOST_TSO6),
            _ => false,
        };
        if !allowed {
            return Err("segmentation type not negotiated");
        }
        Ok(())
    }

    /// Delivers frames from the tap into the guest's RX buffers, up to a
    /// batch. Returns whether the driver must be interrupted.
    pub fn process_rx<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
    ) -> Result<bool, Error> {
        if !queue.ready() {
            return Ok(false);
        }
        self.rx_enabled = true;
        self.rx_waiting = false;
        self.run_queue(mem, queue, Self::rx_loop)
    }

    fn rx_loop<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
        used: &mut bool,
    ) -> Result<(), Error> {
        // Kicks are only wanted while waiting for buffers; the tap drives RX.
        queue.disable_notification(mem).map_err(Error::Queue)?;
        check_avail_index(queue, mem)?;
        for _ in 0..BATCH {
            if self.rx_pending.is_none() {
                // Read a frame only when the guest has somewhere to put it.
                if self.rx_chains.is_empty() && !has_available(queue, mem)? {
                    if queue.enable_notification(mem).map_err(Error::Queue)? {
                        queue.disable_notification(mem).map_err(Error::Queue)?;
                        continue;
                    }
                    self.rx_waiting = true;
                    return Ok(());
                }
                match self.tap.read_frame(&mut self.rx_buf) {
                    Ok(n) if (VNET_HDR_LEN + ETH_HLEN..=MAX_PACKET_LEN).contains(&n) => {
                        self.rx_pending = Some(n);
                    }
                    Ok(n) => {
                        tracing::debug!(len = n, "virtio-net: dropping a tap frame of bad length");
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // EBADFD (tap detached) and the like: nothing to read
                        // until something changes; do not spin on it.
                        tracing::warn!("virtio-net: tap read failed: {e}");
                        self.rx_waiting = true;
                        return Ok(());
                    }
                }
            }
            match self.deliver(mem, queue, used)? {
                Delivery::Done => {}
                Delivery::NeedBuffers => {
                    if queue.enable_notification(mem).map_err(Error::Queue)? {
                        queue.disable_notification(mem).map_err(Error::Queue)?;
                        continue;
                    }
                    self.rx_waiting = true;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Puts the pending frame into guest buffers, taking more chains from
    /// the queue as needed.
    fn deliver<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
        used: &mut bool,
    ) -> Result<Delivery, Error> {
        let Some(len) = self.rx_pending else {
            return Ok(Delivery::Done);
        };
        let mergeable = self.has(VIRTIO_NET_F_MRG_RXBUF);
        loop {
            let capacity: usize = self.rx_chains.iter().map(|c| c.capacity).sum();
            if (mergeable && capacity >= len) || (!mergeable && !self.rx_chains.is_empty()) {
                break;
            }
            if self.rx_chains.len() >= usize::from(queue.size()) {
                // More chains than the queue holds: the guest keeps posting
                // the same tiny buffers. Give them back, drop the frame.
                self.drop_rx_frame(mem, queue, used)?;
                return Ok(Delivery::Done);
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return Ok(Delivery::NeedBuffers);
            };
            let head = chain.head_index();
            match self.hold_rx_chain(mem, chain) {
                Ok(()) => {}
                Err(reason) => {
                    tracing::debug!("virtio-net: bad RX chain: {reason}");
                    self.stats.bad_chains += 1;
                    add_used(queue, mem, head, 0)?;
                    *used = true;
                }
            }
            if self.rx_segs.len() > MAX_RX_SEGMENTS {
                self.drop_rx_frame(mem, queue, used)?;
                return Ok(Delivery::Done);
            }
        }
        if !mergeable && self.rx_chains.first().is_some_and(|c| c.capacity < len) {
            // The guest's buffers are too small for this frame (a driver
            // without mergeable buffers posts MTU-sized ones): drop the
            // frame, keep the chain for the next one.
            tracing::debug!(len, "virtio-net: RX frame larger than the guest's buffer");
            self.stats.rx_dropped += 1;
            self.rx_pending = None;
            return Ok(Delivery::Done);
        }
        let count = self.rx_chains.len();
        let num_buffers = u16::try_from(count).unwrap_or(u16::MAX);
        if let Some(field) = self.rx_buf.get_mut(10..12) {
            field.copy_from_slice(&num_buffers.to_le_bytes());
        }
        let mut written = 0usize;
        let mut failed = false;
        for i in 0..count {
            let Some(chain) = self.rx_chains.get(i).copied() else {
                break;
            };
            let mut in_chain = 0usize;
            for &(addr, seg_len) in self.rx_segs.get(chain.start..chain.end).unwrap_or_default() {
                if written >= len || failed {
                    break;
                }
                let take = seg_len.min(len - written);
                let src = self.rx_buf.get(written..written + take).unwrap_or_default();
                if mem.write_slice(src, addr).is_err() {
                    // Guest memory changed under us (a vhost-user memory
                    // table update); the ranges were checked when taken.
                    failed = true;
                    break;
                }
                written += take;
                in_chain += take;
            }
            let used_len = if failed { 0 } else { in_chain as u32 };
            add_used(queue, mem, chain.head, used_len)?;
            *used = true;
        }
        self.rx_chains.clear();
        self.rx_segs.clear();
        self.rx_pending = None;
        if failed {
            self.stats.rx_dropped += 1;
        } else {
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
        }
        Ok(Delivery::Done)
    }

    /// Returns every held chain unused and drops the pending frame.
    fn drop_rx_frame<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
        used: &mut bool,
    ) -> Result<(), Error> {
        tracing::debug!("virtio-net: RX frame dropped, guest buffers unusable");
        for chain in std::mem::take(&mut self.rx_chains) {
            add_used(queue, mem, chain.head, 0)?;
            *used = true;
        }
        self.rx_segs.clear();
        self.rx_pending = None;
        self.stats.rx_dropped += 1;
        Ok(())
    }

    /// Checks an RX chain and holds its writable segments for the pending frame.
    fn hold_rx_chain<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: DescriptorChain<&M>,
    ) -> Result<(), &'static str> {
        let head = chain.head_index();
        let start = self.rx_segs.len();
        let mut capacity = 0usize;
        let mut last_has_next = false;
        let mut result = Ok(());
        for desc in chain {
            last_has_next = desc.has_next();
            if !desc.is_write_only() {
                result = Err("device-readable descriptor");
                break;
            }
            let len = desc.len() as usize;
            if len == 0 {
                continue;
            }
            if !mem.check_range(desc.addr(), len) {
                result = Err("buffer outside guest memory");
                break;
            }
            if self.rx_segs.len() - start >= MAX_RX_CHAIN_SEGMENTS {
                result = Err("too many descriptors");
                break;
            }
            self.rx_segs.push((desc.addr(), len));
            capacity = capacity.saturating_add(len);
        }
        if result.is_ok() && last_has_next {
            result = Err("chain cut short (loop or bad next)");
        }
        if result.is_ok() && capacity == 0 {
            result = Err("no writable bytes");
        }
        if let Err(reason) = result {
            self.rx_segs.truncate(start);
            return Err(reason);
        }
        self.rx_chains.push(RxChain {
            head,
            start,
            end: self.rx_segs.len(),
            capacity,
        });
        Ok(())
    }
}

/// What became of one TX chain.
enum TxOutcome {
    Sent,
    /// Well-formed, but the tap refused it (counted).
    Dropped,
    /// Malformed; the reason is logged.
    Refused(&'static str),
    /// The tap is full: the chain stays on the queue.
    WouldBlock,
}

enum Delivery {
    /// The pending frame went to the guest or was dropped.
    Done,
    /// The guest has too few buffers for it yet.
    NeedBuffers,
}

/// The `TUN_F_*` offloads a guest with `acked` features can receive.
fn tap_offloads(acked: u64) -> u32 {
    let has = |f: u32| acked & (1 << f) != 0;
    // Segmentation offloads only count together with checksum offload.
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    flags
}

/// Adds a used entry, skipping heads outside the queue (a hostile avail
/// entry: there is no descriptor to return).
fn add_used<M: GuestMemory>(queue: &mut Queue, mem: &M, head: u16, len: u32) -> Result<(), Error> {
    if head >= queue.size() {
        tracing::debug!(head, "virtio-net: avail entry names no descriptor");
        return Ok(());
    }
    queue.add_used(mem, head, len).map_err(Error::Queue)
}

/// Whether the driver has made a chain available that the device has not taken.
fn has_available<M: GuestMemory>(queue: &Queue, mem: &M) -> Result<bool, Error> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(Error::Queue)?;
    Ok(avail != Wrapping(queue.next_avail()))
}

/// Refuses an available index that claims more new entries than the queue
/// holds (the iterator would then yield nothing forever while kicks report
/// work).
fn check_avail_index<M: GuestMemory>(queue: &Queue, mem: &M) -> Result<(), Error> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(Error::Queue)?;
    if (avail - Wrapping(queue.next_avail())).0 > queue.size() {
        return Err(Error::Queue(virtio_queue::Error::InvalidAvailRingIndex));
    }
    Ok(())
}

#[cfg(test)]
pub(super) fn offloads_for(acked: u64) -> u32 {
    tap_offloads(acked)
}

//! The device side of a virtio transport: what a backend implements.

use std::io;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it; the same type `vhost-user-backend` hands
/// its backends, so one backend can serve both transports.
pub type VirtioMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Which interrupt a device raises towards the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// The device put buffers in the used ring of this queue.
    Queue(u16),
    /// The device changed its configuration space.
    Config,
}

/// How a device tells the driver something happened; implemented by each
/// transport (an irqfd behind an interrupt status register for virtio-mmio).
pub trait VirtioInterrupt: Send + Sync {
    /// Raises the interrupt of `kind`.
    fn notify(&self, kind: InterruptKind) -> io::Result<()>;
}

/// One queue the driver configured and marked ready.
pub struct ActiveQueue {
    /// The queue's index in the device.
    pub index: u16,
    /// The queue as the driver configured it (size, ring addresses, ready).
    pub queue: Queue,
    /// Becomes readable when the driver notifies this queue.
    pub notifier: EventFd,
}

/// Everything a device needs to start processing queues.
pub struct Activation {
    /// Guest memory the queues live in.
    pub mem: VirtioMemory,
    /// The features the driver accepted (a subset of the device's).
    pub acked_features: u64,
    /// The queues the driver marked ready, in index order.
    pub queues: Vec<ActiveQueue>,
    /// Raises interrupts towards the driver.
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

impl Activation {
    /// Turns `VIRTIO_RING_F_EVENT_IDX` handling on in every queue if the
    /// driver accepted it (off otherwise), for devices that offer it.
    pub fn apply_event_idx(&mut self) {
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for q in &mut self.queues {
            q.queue.set_event_idx(event_idx);
        }
    }

    /// Takes the queues at the indices `wanted` out of the activation, in
    /// that order, dropping any other. The driver decides which queues it
    /// sets up, so a missing one is an error, not a panic.
    pub fn take_queues<const N: usize>(
        &mut self,
        wanted: [usize; N],
    ) -> Result<[ActiveQueue; N], ActivateError> {
        let mut found: [Option<ActiveQueue>; N] = std::array::from_fn(|_| None);
        for q in self.queues.drain(..) {
            let at = wanted.iter().position(|&w| w == usize::from(q.index));
            if let Some(slot) = at.and_then(|at| found.get_mut(at)) {
                *slot = Some(q);
            }
        }
        if let Some((_, &missing)) = found.iter().zip(&wanted).find(|(q, _)| q.is_none()) {
            return Err(ActivateError::MissingQueue(missing as u16));
        }
        Ok(found.map(|q| q.expect("every queue was found above")))
    }
}

/// Serves a read of `data.len()` bytes at `offset` from a device's `config`
/// space; bytes beyond it read as zero, as the spec requires.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|at| config.get(at).copied())
            .unwrap_or(0);
    }
}

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not set up a queue the device cannot work without.
    #[error("queue {0} is required but was not set up by the driver")]
    MissingQueue(u16),
    /// The device could not start its worker (thread, sockets, files).
    #[error("device backend failed to start: {0}")]
    Backend(#[source] io::Error),
}

/// A virtio device backend, independent of the transport carrying it.
///
/// The transport owns the register file, feature negotiation and the queue
/// configuration; the device only describes itself, serves its configuration
/// space, and processes queues between [`activate`](Self::activate) and
/// [`reset`](Self::reset).
pub trait VirtioDevice: Send {
    /// The virtio device type (`VIRTIO_ID_*`, e.g. 19 for vsock, 26 for fs).
    fn device_type(&self) -> u32;

    /// The feature bits the device offers. The transport adds
    /// `VIRTIO_F_VERSION_1`, which every modern transport requires.
    fn features(&self) -> u64;

    /// The largest size of each queue; the slice's length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];

    /// Reads `data.len()` bytes of device configuration at `offset`. Bytes
    /// beyond the device's configuration must read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes device configuration at `offset`; most devices ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// Starts processing the queues after the driver set `DRIVER_OK`.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;

    /// Stops processing and drops the queues, after the driver wrote 0 to the
    /// status register; the device must be ready for a new activation.
    fn reset(&mut self);
}

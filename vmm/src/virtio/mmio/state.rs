//! Saving and restoring a transport: its registers, the queues the driver
//! configured (with their ring positions) and whether the device runs.
//!
//! A device is quiesced for a snapshot by stopping it (its `reset`, which
//! joins its worker). A stopped device holds no descriptor chain, so each
//! ready queue's position is the used index in guest memory: everything
//! the device took it gave back. Restoring (or resuming after the
//! snapshot) activates the device again from those positions, on this
//! VM's own device backend (sockets, shared directory).

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tracing::warn;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddressSpace;

use super::MmioTransport;

/// Bytes of device configuration space saved and compared on restore.
pub const CONFIG_SNAPSHOT_LEN: usize = 256;
/// More queues than any husk device has.
const MAX_QUEUES: usize = 64;

/// One queue as the driver configured it, with its ring positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// The device's largest size.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver marked it ready.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
    /// Next available entry the device will take.
    pub next_avail: u16,
    /// Next used entry the device will fill.
    pub next_used: u16,
}

impl QueueSnapshot {
    fn of(queue: &Queue) -> Self {
        let s = queue.state();
        Self {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
        }
    }

    /// The queue, if its values are ones a driver could have set.
    fn to_queue(self) -> Result<Queue, String> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: false,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .map_err(|e| format!("invalid queue: {e}"))
    }
}

/// A transport's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// The device type it carried.
    pub device_type: u32,
    /// The features the device offered (with `VIRTIO_F_VERSION_1`).
    pub device_features: u64,
    /// The first [`CONFIG_SNAPSHOT_LEN`] bytes of its configuration space,
    /// which the guest driver may have cached (vsock CID, fs tag).
    pub config: Vec<u8>,
    /// Device status.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Every queue, by index.
    pub queues: Vec<QueueSnapshot>,
}

impl TransportState {
    /// Checks sizes and queue values (the state comes from a file).
    pub fn validate(&self) -> Result<(), String> {
        if self.config.len() != CONFIG_SNAPSHOT_LEN {
            return Err(format!(
                "configuration space of {} bytes, expected {CONFIG_SNAPSHOT_LEN}",
                self.config.len()
            ));
        }
        if self.queues.len() > MAX_QUEUES {
            return Err(format!("{} queues", self.queues.len()));
        }
        for (index, queue) in self.queues.iter().enumerate() {
            queue
                .to_queue()
                .map_err(|e| format!("queue {index}: {e}"))?;
        }
        Ok(())
    }
}

impl MmioTransport {
    fn config_bytes(&self) -> Vec<u8> {
        let mut config = vec![0u8; CONFIG_SNAPSHOT_LEN];
        self.device.read_config(0, &mut config);
        config
    }

    /// Stops the device so nothing moves in guest memory or its queues,
    /// and takes each ready queue's position from its used ring.
    pub fn quiesce(&mut self) {
        if !self.active {
            return;
        }
        self.device.reset();
        self.active = false;
        let mem = self.mem.memory();
        for (index, slot) in self.queues.iter_mut().enumerate() {
            if !slot.queue.ready() {
                continue;
            }
            match slot.queue.used_idx(&*mem, Ordering::Acquire) {
                Ok(Wrapping(used)) => {
                    slot.queue.set_next_avail(used);
                    slot.queue.set_next_used(used);
                }
                Err(e) => warn!(index, "virtio-mmio: cannot read used index: {e}"),
            }
        }
    }

    /// The transport's state; call [`quiesce`](Self::quiesce) first so
    /// the queue positions are final.
    pub fn save_state(&self) -> TransportState {
        TransportState {
            device_type: self.device.device_type(),
            device_features: self.device_features(),
            config: self.config_bytes(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt.status.load(Ordering::SeqCst),
            config_generation: self.interrupt.config_generation.load(Ordering::SeqCst),
            queues: self
                .queues
                .iter()
                .map(|s| QueueSnapshot::of(&s.queue))
                .collect(),
        }
    }

    /// Starts a device stopped by [`quiesce`](Self::quiesce) (or restored)
    /// again if the driver had it running, and kicks every queue once: a
    /// notification that arrived while it was stopped is not lost.
    pub fn resume_device(&mut self) -> Result<(), String> {
        let running = self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET) == 0;
        if !running || self.active {
            return Ok(());
        }
        if !self.activate() {
            return Err("the device refused to start again".into());
        }
        for slot in &self.queues {
            if slot.queue.ready() {
                // A spurious kick only makes the device look at its queue.
                let _ = slot.notifier.write(1);
            }
        }
        Ok(())
    }

    /// Takes over `state` saved from a transport carrying the same kind of
    /// device, and starts the device if the driver had it running.
    pub fn restore_state(&mut self, state: &TransportState) -> Result<(), String> {
        state.validate()?;
        if state.device_type != self.device.device_type() {
            return Err(format!(
                "saved device type {}, restoring onto type {}",
                state.device_type,
                self.device.device_type()
            ));
        }
        if state.device_features != self.device_features() {
            return Err(format!(
                "saved device offered features {:#x}, this one offers {:#x}",
                state.device_features,
                self.device_features()
            ));
        }
        if state.config != self.config_bytes() {
            return Err(
                "configuration space differs from the saved one (the guest cached it)".into(),
            );
        }
        if state.queues.len() != self.queues.len() {
            return Err(format!(
                "{} queues saved, the device has {}",
                state.queues.len(),
                self.queues.len()
            ));
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (index, (saved, slot)) in state.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != slot.queue.max_size() {
                return Err(format!(
                    "queue {index}: saved maximum size {}, the device has {}",
                    saved.max_size,
                    slot.queue.max_size()
                ));
            }
            queues.push(
                saved
                    .to_queue()
                    .map_err(|e| format!("queue {index}: {e}"))?,
            );
        }
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for (slot, queue) in self.queues.iter_mut().zip(queues) {
            slot.queue = queue;
        }
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.interrupt
            .status
            .store(state.interrupt_status, Ordering::SeqCst);
        self.interrupt
            .config_generation
            .store(state.config_generation, Ordering::SeqCst);
        self.resume_device()
    }
}

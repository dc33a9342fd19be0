//! The virtio-mmio register file, version 2 (virtio 1.x, section 4.2.2).

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{
    Activation, ActiveQueue, InterruptKind, VirtioDevice, VirtioInterrupt, VirtioMemory,
};

/// "virt" in little endian: the value of the MagicValue register.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The transport version this register file implements (modern).
pub const MMIO_VERSION: u32 = 2;
/// Offset of the QueueNotify register; the machine puts an ioeventfd here.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// "husk" in little endian, reported as VendorID.
const VENDOR_ID: u32 = 0x6b73_7568;
/// Device configuration space starts here.
const CONFIG_OFFSET: u64 = 0x100;

// Register offsets (virtio 1.2, 4.2.2).
const MAGIC: u64 = 0x00;
const VERSION: u64 = 0x04;
const DEVICE_ID: u64 = 0x08;
const VENDOR: u64 = 0x0c;
const DEVICE_FEATURES: u64 = 0x10;
const DEVICE_FEATURES_SEL: u64 = 0x14;
const DRIVER_FEATURES: u64 = 0x20;
const DRIVER_FEATURES_SEL: u64 = 0x24;
const QUEUE_SEL: u64 = 0x30;
const QUEUE_NUM_MAX: u64 = 0x34;
const QUEUE_NUM: u64 = 0x38;
const QUEUE_READY: u64 = 0x44;
const INTERRUPT_STATUS: u64 = 0x60;
const INTERRUPT_ACK: u64 = 0x64;
const STATUS: u64 = 0x70;
const QUEUE_DESC_LOW: u64 = 0x80;
const QUEUE_DESC_HIGH: u64 = 0x84;
const QUEUE_DRIVER_LOW: u64 = 0x90;
const QUEUE_DRIVER_HIGH: u64 = 0x94;
const QUEUE_DEVICE_LOW: u64 = 0xa0;
const QUEUE_DEVICE_HIGH: u64 = 0xa4;
const SHM_LEN_LOW: u64 = 0xb0;
const SHM_LEN_HIGH: u64 = 0xb4;
const SHM_BASE_LOW: u64 = 0xb8;
const SHM_BASE_HIGH: u64 = 0xbc;
const CONFIG_GENERATION: u64 = 0xfc;

/// The virtio-mmio interrupt: an interrupt status register shared with the
/// transport, and an eventfd the machine registers as the device's irqfd.
pub struct MmioInterrupt {
    status: Arc<AtomicU32>,
    config_generation: Arc<AtomicU32>,
    irq: EventFd,
}

impl MmioInterrupt {
    /// The eventfd that is written each time the interrupt is raised.
    pub fn irq_eventfd(&self) -> &EventFd {
        &self.irq
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn notify(&self, kind: InterruptKind) -> io::Result<()> {
        let bit = match kind {
            InterruptKind::Queue(_) => VIRTIO_MMIO_INT_VRING,
            InterruptKind::Config => {
                // The driver re-reads the configuration until the generation
                // is stable, so it must move on every change.
                self.config_generation.fetch_add(1, Ordering::SeqCst);
                VIRTIO_MMIO_INT_CONFIG
            }
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }
}

/// Queue configuration the driver writes before `DRIVER_OK`.
struct QueueSlot {
    queue: Queue,
    notifier: EventFd,
}

/// A virtio device behind a virtio-mmio register window.
///
/// The machine routes guest accesses in the device's window to
/// [`read`](Self::read) and [`write`](Self::write), registers
/// [`queue_notifiers`](Self::queue_notifiers) as ioeventfds on the
/// QueueNotify register (datamatch = queue index) and
/// [`interrupt`](Self::interrupt)'s eventfd as the device's irqfd.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: VirtioMemory,
    interrupt: Arc<MmioInterrupt>,
    queues: Vec<QueueSlot>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    active: bool,
}

impl MmioTransport {
    /// Wraps `device`, whose queues will live in `mem`.
    pub fn new(device: Box<dyn VirtioDevice>, mem: VirtioMemory) -> io::Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| {
                let queue = Queue::new(max).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("bad queue size {max}: {e}"),
                    )
                })?;
                Ok(QueueSlot {
                    queue,
                    notifier: EventFd::new(EFD_NONBLOCK)?,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        if queues.len() > usize::from(u16::MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many queues",
            ));
        }
        let interrupt = Arc::new(MmioInterrupt {
            status: Arc::new(AtomicU32::new(0)),
            config_generation: Arc::new(AtomicU32::new(0)),
            irq: EventFd::new(EFD_NONBLOCK)?,
        });
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            active: false,
        })
    }

    /// The interrupt this transport raises; its eventfd is the irqfd.
    pub fn interrupt(&self) -> &Arc<MmioInterrupt> {
        &self.interrupt
    }

    /// Each queue's index and the eventfd a QueueNotify for it must signal.
    pub fn queue_notifiers(&self) -> impl Iterator<Item = (u16, &EventFd)> {
        // `new` bounds the queue count to u16, so the index always fits.
        self.queues
            .iter()
            .enumerate()
            .map(|(i, slot)| (i as u16, &slot.notifier))
    }

    /// The device status register as the driver last set it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The virtio device type of the wrapped device.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    fn device_features(&self) -> u64 {
        self.device.features() | (1u64 << VIRTIO_F_VERSION_1)
    }

    fn selected_queue(&self) -> Option<&QueueSlot> {
        self.queues.get(usize::try_from(self.queue_sel).ok()?)
    }

    /// Queue registers may only change between FEATURES_OK and DRIVER_OK
    /// (3.1.1); anything else is a driver bug we refuse to act on.
    fn selected_queue_mut(&mut self) -> Option<&mut Queue> {
        if self.active || self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            return None;
        }
        let idx = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(idx).map(|slot| &mut slot.queue)
    }

    /// Handles a guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            data.fill(0);
            self.device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 {
            warn!(
                offset,
                len = data.len(),
                "virtio-mmio: register read not 32-bit wide"
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            MAGIC => MMIO_MAGIC,
            VERSION => MMIO_VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR => VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self
                .selected_queue()
                .map_or(0, |slot| u32::from(slot.queue.max_size())),
            QUEUE_READY => self
                .selected_queue()
                .map_or(0, |slot| u32::from(slot.queue.ready())),
            INTERRUPT_STATUS => self.interrupt.status.load(Ordering::SeqCst),
            STATUS => self.status,
            // No shared memory regions: their length reads as -1 (4.2.2).
            SHM_LEN_LOW | SHM_LEN_HIGH => u32::MAX,
            SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
            CONFIG_GENERATION => self.interrupt.config_generation.load(Ordering::SeqCst),
            _ => {
                debug!(
                    offset,
                    "virtio-mmio: read of unknown or write-only register"
                );
                0
            }
        }
    }

    /// Handles a guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn!(
                offset,
                len = data.len(),
                "virtio-mmio: register write not 32-bit wide"
            );
            return;
        };
        self.write_register(offset, u32::from_le_bytes(bytes));
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES => self.write_driver_features(value),
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM => {
                if let Some(q) = self.selected_queue_mut() {
                    // Queue::set_size ignores sizes above max or not a power of two.
                    q.set_size(u16::try_from(value).unwrap_or(0));
                }
            }
            QUEUE_READY => {
                if let Some(q) = self.selected_queue_mut() {
                    q.set_ready(value == 1);
                }
            }
            QUEUE_DESC_LOW => self.set_queue_addr(|q| q.set_desc_table_address(Some(value), None)),
            QUEUE_DESC_HIGH => self.set_queue_addr(|q| q.set_desc_table_address(None, Some(value))),
            QUEUE_DRIVER_LOW => {
                self.set_queue_addr(|q| q.set_avail_ring_address(Some(value), None))
            }
            QUEUE_DRIVER_HIGH => {
                self.set_queue_addr(|q| q.set_avail_ring_address(None, Some(value)))
            }
            QUEUE_DEVICE_LOW => self.set_queue_addr(|q| q.set_used_ring_address(Some(value), None)),
            QUEUE_DEVICE_HIGH => {
                self.set_queue_addr(|q| q.set_used_ring_address(None, Some(value)))
            }
            QUEUE_NOTIFY_OFFSET => self.notify_queue(value),
            INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!value, Ordering::SeqCst);
            }
            STATUS => self.write_status(value),
            _ => debug!(
                offset,
                value, "virtio-mmio: write to unknown or read-only register"
            ),
        }
    }

    fn set_queue_addr(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue_mut() {
            f(q);
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are frozen once the driver set FEATURES_OK (3.1.1).
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            || self.status & VIRTIO_CONFIG_S_DRIVER == 0
        {
            warn!("virtio-mmio: driver features written outside negotiation");
            return;
        }
        let value = u64::from(value);
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            _ => {}
        }
    }

    /// A QueueNotify that reached us as an MMIO exit rather than through the
    /// ioeventfd (unit tests, or a machine without ioeventfd).
    fn notify_queue(&self, index: u32) {
        let slot = usize::try_from(index).ok().and_then(|i| self.queues.get(i));
        match slot {
            Some(slot) if self.active => {
                if let Err(e) = slot.notifier.write(1) {
                    warn!(index, "virtio-mmio: cannot signal queue notifier: {e}");
                }
            }
            _ => debug!(index, "virtio-mmio: notify for unknown or inactive queue"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits (3.1.1); anything else is ignored.
        if value & self.status != self.status {
            warn!(
                old = self.status,
                new = value,
                "virtio-mmio: status bits cleared without reset"
            );
            return;
        }
        let added = value & !self.status;
        let mut value = value;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable() {
            // Leaving FEATURES_OK clear tells the driver we refused (3.1.1).
            value &= !VIRTIO_CONFIG_S_FEATURES_OK;
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if value & VIRTIO_CONFIG_S_FEATURES_OK == 0 || value & VIRTIO_CONFIG_S_FAILED != 0 {
                warn!("virtio-mmio: DRIVER_OK without FEATURES_OK");
                value &= !VIRTIO_CONFIG_S_DRIVER_OK;
            } else if !self.activate() {
                value |= VIRTIO_CONFIG_S_NEEDS_RESET;
            }
        }
        self.status = value;
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device_features();
        self.status & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER != 0
            && self.driver_features & !offered == 0
            && self.driver_features & (1u64 << VIRTIO_F_VERSION_1) != 0
    }

    /// Hands the ready queues to the device; false if it refused them.
    fn activate(&mut self) -> bool {
        let mem = self.mem.memory();
        let mut queues = Vec::new();
        for (index, slot) in self.queues.iter().enumerate() {
            if !slot.queue.ready() {
                continue;
            }
            if !slot.queue.is_valid(&*mem) {
                warn!(index, "virtio-mmio: driver marked an invalid queue ready");
                return false;
            }
            let notifier = match slot.notifier.try_clone() {
                Ok(fd) => fd,
                Err(e) => {
                    warn!(index, "virtio-mmio: cannot clone queue notifier: {e}");
                    return false;
                }
            };
            // The transport keeps its copy so the driver can read the queue
            // registers back; the device gets its own.
            let queue = match Queue::try_from(slot.queue.state()) {
                Ok(q) => q,
                Err(e) => {
                    warn!(index, "virtio-mmio: cannot copy queue: {e}");
                    return false;
                }
            };
            queues.push(ActiveQueue {
                // `new` bounds the queue count to u16.
                index: index as u16,
                queue,
                notifier,
            });
        }
        let activation = Activation {
            mem: self.mem.clone(),
            acked_features: self.driver_features,
            queues,
            interrupt: self.interrupt.clone(),
        };
        match self.device.activate(activation) {
            Ok(()) => {
                self.active = true;
                true
            }
            Err(e) => {
                warn!(
                    device_type = self.device.device_type(),
                    "virtio-mmio: activation failed: {e}"
                );
                false
            }
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for slot in &mut self.queues {
            slot.queue.reset();
            // Drop notifications the old driver left behind.
            let _ = slot.notifier.read();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
    }
}

mod state;
#[cfg(test)]
mod tests;

pub use state::{QueueSnapshot, TransportState, CONFIG_SNAPSHOT_LEN};

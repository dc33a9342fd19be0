//! [`VsockDevice`] as a [`VirtioDevice`] for the builtin VMM's virtio-mmio transport.
//!
//! On activation one worker thread serves the device: it waits on the queue
//! notify eventfds, the device's host-side event fd and a stop eventfd, and
//! raises the queue interrupts the device asks for.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::EventFd;

use super::device::{VsockDevice, NUM_QUEUES, RX_QUEUE, TX_QUEUE, VIRTIO_ID_VSOCK};
use super::Error;
use crate::seccomp::{self, ThreadKind};
use crate::virtio::{
    notify_queue, read_config_bytes, wait_readable, ActivateError, Activation, ActiveQueue,
    VirtioDevice, VirtioInterrupt, VirtioMemory, Worker,
};

const QUEUE_SIZE: u16 = 256;

/// The vsock device, ready to be put behind an `MmioTransport`.
pub struct VsockMmioDevice {
    device: Arc<Mutex<VsockDevice>>,
    queue_sizes: [u16; NUM_QUEUES],
    worker: Option<Worker>,
}

impl VsockMmioDevice {
    /// Creates the device for `guest_cid` with its hybrid socket at `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, Error> {
        Ok(VsockMmioDevice {
            device: Arc::new(Mutex::new(VsockDevice::new(guest_cid, uds_path)?)),
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            worker: None,
        })
    }

    fn device(&self) -> std::sync::MutexGuard<'_, VsockDevice> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl VirtioDevice for VsockMmioDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.device().config_space(), offset, data);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        // The event queue only carries transport resets, which husk never sends.
        let [rx, tx] = activation.take_queues([RX_QUEUE, TX_QUEUE])?;
        let device = self.device.clone();
        let (mem, interrupt) = (activation.mem, activation.interrupt);
        self.worker = Some(Worker::spawn("vsock", move |stop| {
            serve(&device, rx, tx, &mem, interrupt.as_ref(), stop)
        })?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
        self.device().reset();
    }
}

impl Drop for VsockMmioDevice {
    fn drop(&mut self) {
        self.reset();
    }
}

/// The worker loop: until `stop` fires, run the device on every event.
fn serve(
    device: &Mutex<VsockDevice>,
    mut rx: ActiveQueue,
    mut tx: ActiveQueue,
    mem: &VirtioMemory,
    interrupt: &dyn VirtioInterrupt,
    stop: &EventFd,
) {
    if let Err(e) = seccomp::apply(ThreadKind::Vsock) {
        tracing::error!("virtio-vsock worker not started: {e}");
        return;
    }
    let host_fd = device
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .host_event_fd();
    loop {
        let fds = [
            stop.as_raw_fd(),
            rx.notifier.as_raw_fd(),
            tx.notifier.as_raw_fd(),
            host_fd,
        ];
        let [stopped, rx_kicked, tx_kicked, host_event] = match wait_readable(fds) {
            Ok(ready) => ready,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio-vsock worker poll failed: {e}");
                return;
            }
        };
        if stopped {
            return;
        }
        if rx_kicked {
            let _ = rx.notifier.read();
        }
        if tx_kicked {
            let _ = tx.notifier.read();
        }
        let mem = mem.memory();
        let mut dev = device.lock().unwrap_or_else(PoisonError::into_inner);
        if dev.process_tx(&mem, &mut tx.queue) {
            notify_queue(interrupt, "vsock", tx.index);
        }
        if host_event {
            dev.process_host_events();
        }
        if dev.process_rx(&mem, &mut rx.queue) {
            notify_queue(interrupt, "vsock", rx.index);
        }
    }
}

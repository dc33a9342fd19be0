//! [`NetDevice`] as a [`VirtioDevice`] for the builtin VMM's virtio-mmio transport.
//!
//! On activation one worker thread serves the queue pair: it waits on the two
//! queue notify eventfds, the device's host event fd (the tap) and a stop
//! eventfd, runs TX then RX on every wakeup and raises the queue interrupts
//! the device asks for.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::EventFd;

use super::device::{NetDevice, NetStats, CONFIG_SPACE_LEN, NUM_QUEUES, RX_QUEUE, TX_QUEUE};
use super::{Error, NetConfig, Tap};
use crate::seccomp::{self, ThreadKind};
use crate::virtio::{
    notify_queue, read_config_bytes, wait_readable, ActivateError, Activation, ActiveQueue,
    VirtioDevice, VirtioInterrupt, VirtioMemory, Worker,
};

/// Queue size offered to the driver (Linux takes the maximum).
const QUEUE_SIZE: u16 = 256;

/// The net device, ready to be put behind an `MmioTransport`.
pub struct NetMmioDevice {
    device: Arc<Mutex<NetDevice>>,
    config: [u8; CONFIG_SPACE_LEN],
    features: u64,
    queue_sizes: [u16; NUM_QUEUES],
    worker: Option<Worker>,
}

impl NetMmioDevice {
    /// The device for `tap`, showing the guest `config`.
    pub fn new(tap: Tap, config: NetConfig) -> Result<Self, Error> {
        let device = NetDevice::new(tap, config)?;
        Ok(NetMmioDevice {
            config: device.config_space(),
            features: device.features(),
            device: Arc::new(Mutex::new(device)),
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            worker: None,
        })
    }

    /// A handle that reads this device's frame and error counters, also
    /// after the device itself went into the VM (which owns it from then on).
    pub fn stats_handle(&self) -> NetStatsHandle {
        NetStatsHandle(self.device.clone())
    }

    fn device(&self) -> MutexGuard<'_, NetDevice> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads one [`NetMmioDevice`]'s counters from outside the VM.
#[derive(Clone)]
pub struct NetStatsHandle(Arc<Mutex<NetDevice>>);

impl NetStatsHandle {
    /// Frame and error counters so far.
    pub fn stats(&self) -> NetStats {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats()
    }
}

impl std::fmt::Debug for NetStatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NetStatsHandle")
            .field(&self.stats())
            .finish()
    }
}

impl VirtioDevice for NetMmioDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        activation.apply_event_idx();
        let [rx, tx] = activation.take_queues([RX_QUEUE, TX_QUEUE])?;
        self.device()
            .set_acked_features(activation.acked_features)
            .map_err(|e| ActivateError::Backend(io::Error::other(e.to_string())))?;
        let device = self.device.clone();
        let (mem, interrupt) = (activation.mem, activation.interrupt);
        self.worker = Some(Worker::spawn("net", move |stop| {
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

impl Drop for NetMmioDevice {
    fn drop(&mut self) {
        self.reset();
    }
}

/// The worker loop: until `stop` fires, run both queues on every event.
fn serve(
    device: &Mutex<NetDevice>,
    mut rx: ActiveQueue,
    mut tx: ActiveQueue,
    mem: &VirtioMemory,
    interrupt: &dyn VirtioInterrupt,
    stop: &EventFd,
) {
    if let Err(e) = seccomp::apply(ThreadKind::Net) {
        tracing::error!("virtio-net worker not started: {e}");
        return;
    }
    let host_fd = device
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .host_event_fd();
    // A queue the guest broke stays silent until the device is reset.
    let (mut rx_ok, mut tx_ok) = (true, true);
    loop {
        {
            let mem = mem.memory();
            let mut dev = device.lock().unwrap_or_else(PoisonError::into_inner);
            if tx_ok {
                match dev.process_tx(&*mem, &mut tx.queue) {
                    Ok(true) => notify_queue(interrupt, "net", tx.index),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!("virtio-net TX queue stopped: {e}");
                        tx_ok = false;
                    }
                }
            }
            if rx_ok {
                match dev.process_rx(&*mem, &mut rx.queue) {
                    Ok(true) => notify_queue(interrupt, "net", rx.index),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!("virtio-net RX queue stopped: {e}");
                        dev.pause_rx();
                        rx_ok = false;
                    }
                }
            }
        }
        let fds = [
            stop.as_raw_fd(),
            rx.notifier.as_raw_fd(),
            tx.notifier.as_raw_fd(),
            host_fd,
        ];
        let [stopped, rx_kicked, tx_kicked, _host_event] = match wait_readable(fds) {
            Ok(ready) => ready,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio-net worker poll failed: {e}");
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
    }
}

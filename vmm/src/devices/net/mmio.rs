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
use crate::virtio::{
    read_config_bytes, ActivateError, Activation, ActiveQueue, InterruptKind, VirtioDevice,
    VirtioInterrupt, VirtioMemory, Worker,
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

    /// Frame and error counters so far.
    pub fn stats(&self) -> NetStats {
        self.device().stats()
    }

    fn device(&self) -> MutexGuard<'_, NetDevice> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
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
                    Ok(true) => notify(interrupt, tx.index),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!("virtio-net TX queue stopped: {e}");
                        tx_ok = false;
                    }
                }
            }
            if rx_ok {
                match dev.process_rx(&*mem, &mut rx.queue) {
                    Ok(true) => notify(interrupt, rx.index),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!("virtio-net RX queue stopped: {e}");
                        dev.pause_rx();
                        rx_ok = false;
                    }
                }
            }
        }
        let mut fds = [
            stop.as_raw_fd(),
            rx.notifier.as_raw_fd(),
            tx.notifier.as_raw_fd(),
            host_fd,
        ]
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `fds` is a valid array of pollfds that outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("virtio-net worker poll failed: {err}");
            return;
        }
        let ready = |i: usize| fds.get(i).is_some_and(|p| p.revents != 0);
        if ready(0) {
            return;
        }
        if ready(1) {
            let _ = rx.notifier.read();
        }
        if ready(2) {
            let _ = tx.notifier.read();
        }
    }
}

fn notify(interrupt: &dyn VirtioInterrupt, queue: u16) {
    if let Err(e) = interrupt.notify(InterruptKind::Queue(queue)) {
        tracing::warn!("virtio-net: cannot interrupt the guest: {e}");
    }
}

//! [`NetDevice`] as a [`VirtioDevice`] for the builtin VMM's virtio-mmio transport.
//!
//! On activation one worker thread serves the queue pair: it waits on the two
//! queue notify eventfds, the device's host event fd (the tap) and a stop
//! eventfd, runs TX then RX on every wakeup and raises the queue interrupts
//! the device asks for.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{NetDevice, NetStats, CONFIG_SPACE_LEN, NUM_QUEUES, RX_QUEUE, TX_QUEUE};
use super::{Error, NetConfig, Tap};
use crate::virtio::{
    ActivateError, Activation, ActiveQueue, InterruptKind, VirtioDevice, VirtioInterrupt,
    VirtioMemory,
};

/// Queue size offered to the driver (Linux takes the maximum).
const QUEUE_SIZE: u16 = 256;

struct Worker {
    stop: EventFd,
    thread: JoinHandle<()>,
}

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
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let event_idx = activation.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut rx = None;
        let mut tx = None;
        for mut q in activation.queues {
            q.queue.set_event_idx(event_idx);
            match usize::from(q.index) {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                _ => {}
            }
        }
        let rx = rx.ok_or(ActivateError::MissingQueue(RX_QUEUE as u16))?;
        let tx = tx.ok_or(ActivateError::MissingQueue(TX_QUEUE as u16))?;
        self.device()
            .set_acked_features(activation.acked_features)
            .map_err(|e| ActivateError::Backend(io::Error::other(e.to_string())))?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Backend)?;
        let worker_stop = stop.try_clone().map_err(ActivateError::Backend)?;
        let device = self.device.clone();
        let (mem, interrupt) = (activation.mem, activation.interrupt);
        let thread = std::thread::Builder::new()
            .name("husk-net".into())
            .spawn(move || serve(&device, rx, tx, &mem, interrupt.as_ref(), &worker_stop))
            .map_err(ActivateError::Backend)?;
        self.worker = Some(Worker { stop, thread });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            let _ = worker.stop.write(1);
            if worker.thread.join().is_err() {
                tracing::error!("virtio-net worker panicked");
            }
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

//! [`VsockDevice`] as a [`VirtioDevice`] for the builtin VMM's virtio-mmio transport.
//!
//! On activation one worker thread serves the device: it waits on the queue
//! notify eventfds, the device's host-side event fd and a stop eventfd, and
//! raises the queue interrupts the device asks for.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{VsockDevice, NUM_QUEUES, RX_QUEUE, TX_QUEUE, VIRTIO_ID_VSOCK};
use super::Error;
use crate::virtio::{
    ActivateError, Activation, ActiveQueue, InterruptKind, VirtioDevice, VirtioInterrupt,
    VirtioMemory,
};

const QUEUE_SIZE: u16 = 256;

struct Worker {
    stop: EventFd,
    thread: JoinHandle<()>,
}

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
        let config = self.device().config_space();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let mut rx = None;
        let mut tx = None;
        for q in activation.queues {
            match usize::from(q.index) {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                // The event queue only carries transport resets, which husk never sends.
                _ => {}
            }
        }
        let rx = rx.ok_or(ActivateError::MissingQueue(RX_QUEUE as u16))?;
        let tx = tx.ok_or(ActivateError::MissingQueue(TX_QUEUE as u16))?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Backend)?;
        let worker_stop = stop.try_clone().map_err(ActivateError::Backend)?;
        let device = self.device.clone();
        let (mem, interrupt) = (activation.mem, activation.interrupt);
        let thread = std::thread::Builder::new()
            .name("husk-vsock".into())
            .spawn(move || serve(&device, rx, tx, &mem, interrupt.as_ref(), &worker_stop))
            .map_err(ActivateError::Backend)?;
        self.worker = Some(Worker { stop, thread });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            let _ = worker.stop.write(1);
            if worker.thread.join().is_err() {
                tracing::error!("virtio-vsock worker panicked");
            }
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
    let host_fd = device
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .host_event_fd();
    loop {
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
            tracing::error!("virtio-vsock worker poll failed: {err}");
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
        let mem = mem.memory();
        let mut dev = device.lock().unwrap_or_else(PoisonError::into_inner);
        if dev.process_tx(&mem, &mut tx.queue) {
            notify(interrupt, tx.index);
        }
        if ready(3) {
            dev.process_host_events();
        }
        if dev.process_rx(&mem, &mut rx.queue) {
            notify(interrupt, rx.index);
        }
    }
}

fn notify(interrupt: &dyn VirtioInterrupt, queue: u16) {
    if let Err(e) = interrupt.notify(InterruptKind::Queue(queue)) {
        tracing::warn!("virtio-vsock: cannot interrupt the guest: {e}");
    }
}

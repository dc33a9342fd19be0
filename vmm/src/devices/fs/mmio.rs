//! [`FsDevice`] as a [`VirtioDevice`] for the builtin VMM's virtio-mmio transport.
//!
//! On activation one worker thread takes every queue. It confines itself to the share
//! (layer 2 of the confinement, see `sandbox.rs`) before serving, waits on the queues'
//! notify eventfds and a stop eventfd, and raises the queue interrupt when
//! [`FsDevice::process_queue`] asks for it.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::MAX_QUEUE_SIZE;
use super::FsDevice;
use crate::virtio::{
    ActivateError, Activation, ActiveQueue, InterruptKind, VirtioDevice, VirtioInterrupt,
    VirtioMemory,
};

/// A running worker: its stop event and thread.
struct Worker {
    stop: EventFd,
    thread: JoinHandle<()>,
}

/// The virtio-fs device, ready to be put behind an `MmioTransport`.
pub struct FsMmioDevice {
    device: Arc<FsDevice>,
    queue_sizes: Vec<u16>,
    worker: Option<Worker>,
}

impl FsMmioDevice {
    /// Wraps a device core.
    pub fn new(device: FsDevice) -> Self {
        let queue_sizes = vec![MAX_QUEUE_SIZE; device.num_queues()];
        FsMmioDevice {
            device: Arc::new(device),
            queue_sizes,
            worker: None,
        }
    }
}

impl VirtioDevice for FsMmioDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn features(&self) -> u64 {
        self.device.features()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.device.config_space();
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
        // Without a request queue the device can do nothing.
        if !activation.queues.iter().any(|q| q.index >= 1) {
            return Err(ActivateError::MissingQueue(1));
        }
        let event_idx = activation.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = activation.queues;
        for q in &mut queues {
            q.queue.set_event_idx(event_idx);
        }
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Backend)?;
        let worker_stop = stop.try_clone().map_err(ActivateError::Backend)?;
        let device = self.device.clone();
        let (mem, interrupt) = (activation.mem, activation.interrupt);
        let thread = std::thread::Builder::new()
            .name("husk-fs".into())
            .spawn(move || serve(&device, queues, &mem, interrupt.as_ref(), &worker_stop))
            .map_err(ActivateError::Backend)?;
        self.worker = Some(Worker { stop, thread });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            let _ = worker.stop.write(1);
            if worker.thread.join().is_err() {
                tracing::error!("virtio-fs worker panicked");
            }
        }
    }
}

impl Drop for FsMmioDevice {
    fn drop(&mut self) {
        self.reset();
    }
}

/// The worker loop: until `stop` fires, serve each queue the driver notifies.
fn serve(
    device: &FsDevice,
    mut queues: Vec<ActiveQueue>,
    mem: &VirtioMemory,
    interrupt: &dyn VirtioInterrupt,
    stop: &EventFd,
) {
    if let Err(e) = device.enter_thread_sandbox() {
        tracing::error!("virtio-fs worker not started: {e}");
        return;
    }
    // Queues the guest broke stay silent until the device is reset.
    let mut broken = vec![false; queues.len()];
    loop {
        let mut fds: Vec<libc::pollfd> = std::iter::once(stop.as_raw_fd())
            .chain(queues.iter().map(|q| q.notifier.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfds that outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("virtio-fs worker poll failed: {err}");
            return;
        }
        if fds.first().is_some_and(|p| p.revents != 0) {
            return;
        }
        for ((pfd, q), dead) in fds.iter().skip(1).zip(&mut queues).zip(&mut broken) {
            if pfd.revents == 0 {
                continue;
            }
            let _ = q.notifier.read();
            if *dead {
                continue;
            }
            match device.process_queue(&mut q.queue, &*mem.memory()) {
                Ok(true) => {
                    if let Err(e) = interrupt.notify(InterruptKind::Queue(q.index)) {
                        tracing::warn!("virtio-fs: cannot interrupt the guest: {e}");
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(queue = q.index, "virtio-fs queue disabled: {e}");
                    *dead = true;
                }
            }
        }
    }
}

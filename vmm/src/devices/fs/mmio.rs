//! [`FsDevice`] as a [`VirtioDevice`] for the builtin VMM's virtio-mmio transport.
//!
//! On activation one worker thread takes every queue. It confines itself to the share
//! (layer 2 of the confinement, see `sandbox.rs`) before serving, waits on the queues'
//! notify eventfds and a stop eventfd, and raises the queue interrupt when
//! [`FsDevice::process_queue`] asks for it.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::EventFd;

use super::device::MAX_QUEUE_SIZE;
use super::FsDevice;
use crate::seccomp::{self, ThreadKind};
use crate::virtio::{
    notify_queue, read_config_bytes, ActivateError, Activation, ActiveQueue, VirtioDevice,
    VirtioInterrupt, VirtioMemory, Worker,
};

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
        read_config_bytes(&self.device.config_space(), offset, data);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        // Without a request queue the device can do nothing.
        if !activation.queues.iter().any(|q| q.index >= 1) {
            return Err(ActivateError::MissingQueue(1));
        }
        activation.apply_event_idx();
        let device = self.device.clone();
        let (queues, mem, interrupt) = (activation.queues, activation.mem, activation.interrupt);
        self.worker = Some(Worker::spawn("fs", move |stop| {
            serve(&device, queues, &mem, interrupt.as_ref(), stop)
        })?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
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
    // Confinement first: it needs `unshare` and `chroot`, which the filter then forbids.
    if let Err(e) = device.enter_thread_sandbox() {
        tracing::error!("virtio-fs worker not started: {e}");
        return;
    }
    if let Err(e) = seccomp::apply(ThreadKind::Fs) {
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
                Ok(true) => notify_queue(interrupt, "fs", q.index),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(queue = q.index, "virtio-fs queue disabled: {e}");
                    *dead = true;
                }
            }
        }
    }
}

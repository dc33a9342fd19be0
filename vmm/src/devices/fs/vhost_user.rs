//! Serves [`FsDevice`] to QEMU (`-device vhost-user-fs-device,chardev=...,tag=...`) through
//! the generic glue in `crate::vhost_user`.

use std::io;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::device::MAX_QUEUE_SIZE;
use super::{FsConfig, FsDevice, FsError};
use crate::seccomp::{self, ThreadKind};
use crate::vhost_user::{self, config_slice, ServeHandle, ServedBackend};

/// The virtio-fs device as a vhost-user backend. Cheap to clone (shared state).
#[derive(Clone)]
pub struct FsBackend {
    device: Arc<FsDevice>,
    mem: Arc<RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap>>>>,
}

impl FsBackend {
    /// Wraps a device core.
    pub fn new(device: FsDevice) -> Self {
        FsBackend {
            device: Arc::new(device),
            mem: Arc::new(RwLock::new(None)),
        }
    }
}

impl VhostUserBackend for FsBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.device.num_queues()
    }

    fn max_queue_size(&self) -> usize {
        usize::from(MAX_QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        self.device.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The daemon sets EVENT_IDX on each queue; `process_queue` honours the queue's state.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_slice(&self.device.config_space(), offset, size)
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(PoisonError::into_inner) = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Confinement (unshare, chroot) before the filter, which forbids both.
        self.device
            .enter_thread_sandbox()
            .map_err(|e| io::Error::other(e.to_string()))?;
        seccomp::apply_once(ThreadKind::Fs).map_err(io::Error::other)?;
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other(format!("unknown event {device_event}")))?;
        let mem = self
            .mem
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| io::Error::other("queue kicked before guest memory was set"))?;
        let signal = {
            let guard = mem.memory();
            let mut state = vring.get_mut();
            self.device
                .process_queue(state.get_queue_mut(), &*guard)
                .map_err(|e| io::Error::other(e.to_string()))?
        };
        if signal {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

impl ServedBackend for FsBackend {}

/// Serves `shared_dir` as virtio-fs with mount tag `tag` to one vhost-user frontend (QEMU) on
/// a new socket at `vhost_socket`, in threads of this process.
///
/// QEMU needs its guest RAM in a shared memfd (`memory-backend-memfd,share=on`). Stopping or
/// dropping the handle disconnects the frontend, joins the threads and removes the socket.
pub fn serve_fs(vhost_socket: &Path, shared_dir: &Path, tag: &str) -> Result<ServeHandle, FsError> {
    let device = FsDevice::new(FsConfig::new(shared_dir, tag))?;
    Ok(vhost_user::serve(
        "fs",
        FsBackend::new(device),
        vhost_socket,
    )?)
}

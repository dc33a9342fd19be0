//! The vsock device served to QEMU's `vhost-user-vsock-device` over vhost-user.

use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::device::{VsockDevice, NUM_QUEUES, RX_QUEUE, TX_QUEUE};
use super::Error;
use crate::seccomp::{self, ThreadKind};
use crate::vhost_user::{config_slice, is_live, serve, ExitEvent, ServeHandle, ServedBackend};

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;
/// The `handle_event` token of the device's host-side epoll fd.
const HOST_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// QEMU's virtio-mmio offers the driver queues of up to 1024 entries and
/// Linux takes the maximum; a smaller limit here fails SET_VRING_NUM.
const QUEUE_SIZE: usize = 1024;

/// [`VsockDevice`] as a `vhost-user-backend` backend.
pub struct VsockBackend {
    device: VsockDevice,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    exit: ExitEvent,
}

impl VsockBackend {
    /// Wraps `device`.
    pub fn new(device: VsockDevice) -> Result<Self, Error> {
        let exit = ExitEvent::new().map_err(Error::Event)?;
        Ok(VsockBackend {
            device,
            mem: None,
            exit,
        })
    }

    /// Runs TX, host events and RX, then signals the queues that changed.
    fn run(&mut self, host_event: bool, vrings: &[VringRwLock]) -> io::Result<()> {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            return Ok(());
        };
        let (Some(rx), Some(tx)) = (vrings.get(RX_QUEUE), vrings.get(TX_QUEUE)) else {
            return Ok(());
        };
        if is_live(tx) {
            let used = {
                let mut state = tx.get_mut();
                self.device.process_tx(&mem, state.get_queue_mut())
            };
            if used {
                tx.signal_used_queue()?;
            }
        }
        if host_event {
            self.device.process_host_events();
        }
        if is_live(rx) {
            let used = {
                let mut state = rx.get_mut();
                self.device.process_rx(&mem, state.get_queue_mut())
            };
            if used {
                rx.signal_used_queue()?;
            }
        }
        Ok(())
    }
}

impl VhostUserBackendMut for VsockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1 | 1 << VHOST_USER_F_PROTOCOL_FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&mut self, _enabled: bool) {}

    fn reset_device(&mut self) {
        self.device.reset();
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_slice(&self.device.config_space(), offset, size)
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit.pair()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        seccomp::apply_once(ThreadKind::Vsock).map_err(io::Error::other)?;
        self.run(device_event == HOST_EVENT, vrings)
    }
}

impl ServedBackend for Arc<RwLock<VsockBackend>> {
    fn watched_fds(&self) -> Vec<(RawFd, EventSet, u16)> {
        match self.read() {
            Ok(b) => vec![(b.device.host_event_fd(), EventSet::IN, HOST_EVENT)],
            Err(_) => Vec::new(),
        }
    }
}

/// Serves a vsock device for `guest_cid` to QEMU on `vhost_socket`, with its
/// hybrid Unix socket at `uds_path` (host clients connect there; guest
/// connections to port P go to `<uds_path>_P`). Both sockets are removed when
/// the returned handle stops.
pub fn serve_vsock(
    vhost_socket: &Path,
    uds_path: &Path,
    guest_cid: u64,
) -> Result<ServeHandle, Error> {
    let device = VsockDevice::new(guest_cid, uds_path)?;
    let backend = Arc::new(RwLock::new(VsockBackend::new(device)?));
    Ok(serve("vsock", backend, vhost_socket)?)
}
